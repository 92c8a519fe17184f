//! The buffer against closed-form answers: rotations about each axis, chains, interpolation,
//! static and dynamic edges mixed, lookups across branches, time zero, pruning, lookup errors.

use std::f64::consts::FRAC_PI_2;
use std::time::Duration;

use nalgebra::{Isometry3, Point3, Quaternion, Translation3, UnitQuaternion, Vector3};

use super::{Stamp, TimeDirection, TransformBuffer, TransformError, DEFAULT_CACHE_TIME};

const TOL: f64 = 1e-9;

pub(super) fn s(secs: f64) -> Stamp {
    Stamp::from_secs_f64(secs)
}

pub(super) fn iso(t: [f64; 3], rotation: UnitQuaternion<f64>) -> Isometry3<f64> {
    Isometry3::from_parts(Translation3::new(t[0], t[1], t[2]), rotation)
}

pub(super) fn yaw(degrees: f64) -> UnitQuaternion<f64> {
    UnitQuaternion::from_axis_angle(&Vector3::z_axis(), degrees.to_radians())
}

/// REP 103's `camera_link -> camera_optical_frame` rotation, (x, y, z, w) = (-0.5, 0.5, -0.5,
/// 0.5): optical z (forward) is link x, optical x (right) is link -y, optical y (down) is -z.
fn optical() -> UnitQuaternion<f64> {
    UnitQuaternion::new_unchecked(Quaternion::new(0.5, -0.5, 0.5, -0.5))
}

fn assert_point(transform: &Isometry3<f64>, p: [f64; 3], expected: [f64; 3]) {
    let got = transform * Point3::from(p);
    let want = Point3::from(expected);
    assert!((got - want).norm() < TOL, "{p:?} -> {got}, expected {want}");
}

fn assert_iso(got: &Isometry3<f64>, want: &Isometry3<f64>) {
    let dt = (got.translation.vector - want.translation.vector).norm();
    // q and -q are the same rotation.
    let (a, b) = (got.rotation.coords, want.rotation.coords);
    let dq = (a - b).norm().min((a + b).norm());
    assert!(dt < TOL && dq < TOL, "got {got}, expected {want}");
}

pub(super) fn set(
    buf: &mut TransformBuffer,
    parent: &str,
    child: &str,
    t: f64,
    tf: Isometry3<f64>,
) {
    buf.set_transform(parent, child, s(t), tf, false).unwrap();
}

pub(super) fn set_static(buf: &mut TransformBuffer, parent: &str, child: &str, tf: Isometry3<f64>) {
    buf.set_transform(parent, child, Stamp::ZERO, tf, true)
        .unwrap();
}

#[test]
fn stamps_convert_and_print_exactly() {
    let t = Stamp::from_ros(12, 50_000_000);
    assert_eq!(t.nanos(), 12_050_000_000);
    assert_eq!(t, Stamp::from((12, 50_000_000)));
    assert_eq!(t, s(12.05));
    assert_eq!(t.to_string(), "12.050000000");
    assert_eq!(Stamp::from_ros(-1, 500_000_000).to_string(), "-0.500000000");
    assert_eq!(Stamp::from_nanos(1).to_string(), "0.000000001");
    assert!((t.secs_f64() - 12.05).abs() < TOL);
    assert!(Stamp::ZERO.is_zero() && Stamp::default().is_zero());
}

#[test]
fn rotation_about_each_axis_by_90_degrees() {
    // (axis, a point in the child frame, the same point rotated into the parent frame)
    let cases = [
        (Vector3::x_axis(), [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]),
        (Vector3::y_axis(), [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]),
        (Vector3::z_axis(), [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
    ];
    let t = [1.0, -2.0, 3.0];
    for (axis, p, rotated) in cases {
        for is_static in [true, false] {
            let mut buf = TransformBuffer::default();
            let q = UnitQuaternion::from_axis_angle(&axis, FRAC_PI_2);
            buf.set_transform("parent", "child", s(5.0), iso(t, q), is_static)
                .unwrap();
            let expected = [rotated[0] + t[0], rotated[1] + t[1], rotated[2] + t[2]];
            let forward = buf.lookup_transform("parent", "child", s(5.0)).unwrap();
            assert_point(&forward, p, expected);
            // The inverse direction undoes it.
            let back = buf.lookup_transform("child", "parent", s(5.0)).unwrap();
            assert_point(&back, expected, p);
            // The origin of the parent frame seen from the child: -R^T t.
            let origin = q.inverse() * -Vector3::from(t);
            assert_point(&back, [0.0; 3], origin.into());
        }
    }
}

#[test]
fn chain_of_three_edges() {
    // map -> odom (yaw 90, 10 m along x), odom -> base_link (1 m along x), base_link ->
    // camera_optical_frame (1 m up, REP 103 optical rotation).
    let mut buf = TransformBuffer::default();
    set(
        &mut buf,
        "map",
        "odom",
        1.0,
        iso([10.0, 0.0, 0.0], yaw(90.0)),
    );
    set(
        &mut buf,
        "odom",
        "base_link",
        1.0,
        iso([1.0, 0.0, 0.0], yaw(0.0)),
    );
    set_static(
        &mut buf,
        "base_link",
        "cam",
        iso([0.0, 0.0, 1.0], optical()),
    );

    let map_cam = buf.lookup_transform("map", "cam", s(1.0)).unwrap();
    // 2 m ahead of the camera: base (2, 0, 1), odom (3, 0, 1), map: yaw 90 then +10 x.
    assert_point(&map_cam, [0.0, 0.0, 2.0], [10.0, 3.0, 1.0]);
    // 1 m right of the camera: base (0, -1, 1), odom (1, -1, 1), map (11, 1, 1).
    assert_point(&map_cam, [1.0, 0.0, 0.0], [11.0, 1.0, 1.0]);
    // 1 m down from the camera: base (0, 0, 0), odom (1, 0, 0), map (10, 1, 0).
    assert_point(&map_cam, [0.0, 1.0, 0.0], [10.0, 1.0, 0.0]);

    let cam_map = buf.lookup_transform("cam", "map", s(1.0)).unwrap();
    assert_point(&cam_map, [10.0, 3.0, 1.0], [0.0, 0.0, 2.0]);
    assert_iso(&(cam_map * map_cam), &Isometry3::identity());
    // A sub-chain: odom from the camera.
    let odom_cam = buf.lookup_transform("odom", "cam", s(1.0)).unwrap();
    assert_point(&odom_cam, [0.0, 0.0, 2.0], [3.0, 0.0, 1.0]);
}

#[test]
fn interpolation_halfway_is_linear_and_slerp() {
    // odom -> base_link: from the origin at 10 s to (2, 4, 0) turned 90 degrees left at 12 s.
    let mut buf = TransformBuffer::default();
    set(&mut buf, "odom", "base_link", 10.0, iso([0.0; 3], yaw(0.0)));
    set(
        &mut buf,
        "odom",
        "base_link",
        12.0,
        iso([2.0, 4.0, 0.0], yaw(90.0)),
    );

    let half = buf.lookup_transform("odom", "base_link", s(11.0)).unwrap();
    // The slerp of a yaw is the yaw of the interpolated angle: 45 degrees, closed form.
    let (sin, cos) = (
        std::f64::consts::FRAC_PI_8.sin(),
        std::f64::consts::FRAC_PI_8.cos(),
    );
    let q45 = UnitQuaternion::new_unchecked(Quaternion::new(cos, 0.0, 0.0, sin));
    assert_iso(&half, &iso([1.0, 2.0, 0.0], q45));
    let r = std::f64::consts::FRAC_1_SQRT_2;
    assert_point(&half, [1.0, 0.0, 0.0], [1.0 + r, 2.0 + r, 0.0]);

    // A quarter of the way: 22.5 degrees.
    let quarter = buf.lookup_transform("odom", "base_link", s(10.5)).unwrap();
    assert_iso(&quarter, &iso([0.5, 1.0, 0.0], yaw(22.5)));
    // Exact hits are the samples.
    let end = buf.lookup_transform("odom", "base_link", s(12.0)).unwrap();
    assert_iso(&end, &iso([2.0, 4.0, 0.0], yaw(90.0)));
    // The other direction is the inverse of the interpolated transform.
    let back = buf.lookup_transform("base_link", "odom", s(11.0)).unwrap();
    assert_iso(&back, &half.inverse());
}

#[test]
fn static_and_dynamic_edges_mixed() {
    // The robot drives along x at 1 m/s (samples each second); the camera is mounted statically.
    let mut buf = TransformBuffer::default();
    for i in 0..=4 {
        let t = f64::from(i);
        set(
            &mut buf,
            "odom",
            "base_link",
            t,
            iso([t, 0.0, 0.0], yaw(0.0)),
        );
    }
    set_static(
        &mut buf,
        "base_link",
        "camera_link",
        iso([0.1, 0.0, 0.5], yaw(0.0)),
    );
    set_static(&mut buf, "camera_link", "optical", iso([0.0; 3], optical()));

    // 1 m ahead of the camera at 2.5 s: 2.5 + 0.1 + 1 along x, 0.5 up.
    let odom_optical = buf.lookup_transform("odom", "optical", s(2.5)).unwrap();
    assert_point(&odom_optical, [0.0, 0.0, 1.0], [3.6, 0.0, 0.5]);
    // The static part alone holds at any time, far from the dynamic samples.
    let base_optical = buf
        .lookup_transform("base_link", "optical", s(1000.0))
        .unwrap();
    assert_point(&base_optical, [0.0, 0.0, 1.0], [1.1, 0.0, 0.5]);
    // The dynamic edge still limits the whole chain.
    let err = buf.lookup_transform("odom", "optical", s(5.0)).unwrap_err();
    assert!(
        matches!(&err, TransformError::Extrapolation {
            into: TimeDirection::Future, parent, child, .. }
            if parent == "odom" && child == "base_link"),
        "{err}"
    );
}

#[test]
fn lookup_across_branches_through_the_common_ancestor() {
    // world -> base_link (one sample, at 5 s) with two cameras below base_link.
    let mut buf = TransformBuffer::default();
    set(
        &mut buf,
        "world",
        "base_link",
        5.0,
        iso([3.0, 0.0, 0.0], yaw(30.0)),
    );
    set_static(
        &mut buf,
        "base_link",
        "left",
        iso([0.0, 0.1, 0.0], yaw(90.0)),
    );
    set_static(
        &mut buf,
        "base_link",
        "right",
        iso([0.0, -0.1, 0.0], yaw(0.0)),
    );

    // The right camera's origin is base (0, -0.1, 0): 0.2 m along -y of base from the left
    // camera, whose x is base y, so -0.2 along the left camera's x.
    // The walk stops at base_link: the world edge's single sample does not limit it.
    let left_right = buf.lookup_transform("left", "right", s(7.0)).unwrap();
    assert_point(&left_right, [0.0; 3], [-0.2, 0.0, 0.0]);
    assert_point(&left_right, [1.0, 0.0, 0.0], [-0.2, -1.0, 0.0]);
    // The inverse direction: the left camera's origin is 0.2 m along the right camera's y.
    let right_left = buf.lookup_transform("right", "left", s(7.0)).unwrap();
    assert_point(&right_left, [0.0; 3], [0.0, 0.2, 0.0]);
    assert_iso(&(left_right * right_left), &Isometry3::identity());
    assert_eq!(buf.latest_common_time("left", "right").unwrap(), None);
    // Through the root it is limited to the sample's stamp.
    assert!(buf.lookup_transform("world", "left", s(5.0)).is_ok());
    assert!(!buf.can_transform("world", "left", s(7.0)));
}

#[test]
fn equal_frames_are_the_identity_even_unknown() {
    let buf = TransformBuffer::default();
    // As tf2's lookupTransform, which short-circuits before validating the frames.
    let tf = buf.lookup_transform("nowhere", "nowhere", s(1.0)).unwrap();
    assert_iso(&tf, &Isometry3::identity());
    assert!(buf.can_transform("/nowhere", "nowhere", Stamp::ZERO));
    assert_eq!(buf.latest_common_time("a", "a").unwrap(), None);
}

#[test]
fn time_zero_is_the_latest_common_time() {
    let mut buf = TransformBuffer::default();
    for i in 1..=5 {
        let t = f64::from(i);
        set(&mut buf, "map", "odom", t, iso([t, 0.0, 0.0], yaw(0.0)));
        if i <= 4 {
            set(
                &mut buf,
                "odom",
                "base_link",
                t,
                iso([0.0, t, 0.0], yaw(0.0)),
            );
        }
    }
    set_static(&mut buf, "base_link", "cam", iso([0.0, 0.0, 1.0], yaw(0.0)));

    // The newest of map -> odom is 5 s, of odom -> base_link 4 s; the static edge adds nothing.
    assert_eq!(buf.latest_common_time("map", "cam").unwrap(), Some(s(4.0)));
    assert_eq!(buf.latest_common_time("cam", "map").unwrap(), Some(s(4.0)));
    assert_eq!(buf.latest_common_time("map", "odom").unwrap(), Some(s(5.0)));
    assert_eq!(buf.latest_common_time("base_link", "cam").unwrap(), None);

    let latest = buf.lookup_transform("map", "cam", Stamp::ZERO).unwrap();
    assert_iso(&latest, &iso([4.0, 4.0, 1.0], yaw(0.0)));
    let at_four = buf.lookup_transform("map", "cam", s(4.0)).unwrap();
    assert_iso(&latest, &at_four);
    let map_odom = buf.lookup_transform("map", "odom", Stamp::ZERO).unwrap();
    assert_iso(&map_odom, &iso([5.0, 0.0, 0.0], yaw(0.0)));
    // An all-static chain answers time zero too.
    assert!(buf.can_transform("base_link", "cam", Stamp::ZERO));
    // Past the common time is the future for odom -> base_link.
    let err = buf.lookup_transform("map", "cam", s(4.5)).unwrap_err();
    assert!(
        matches!(
            err,
            TransformError::Extrapolation {
                into: TimeDirection::Future,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn cache_is_pruned_to_cache_time_behind_the_newest() {
    assert_eq!(TransformBuffer::default().cache_time(), DEFAULT_CACHE_TIME);
    assert_eq!(DEFAULT_CACHE_TIME, Duration::from_secs(10));
    let mut buf = TransformBuffer::new(Duration::from_secs(1));
    for i in 0..=30 {
        let t = Stamp::from_nanos(i * 100_000_000);
        buf.set_transform(
            "odom",
            "base_link",
            t,
            iso([t.secs_f64(), 0.0, 0.0], yaw(0.0)),
            false,
        )
        .unwrap();
    }
    // Newest 3.0 s: kept from 2.0 s.
    let err = buf
        .lookup_transform("odom", "base_link", s(1.95))
        .unwrap_err();
    assert!(
        matches!(err, TransformError::Extrapolation {
            into: TimeDirection::Past, oldest, newest, .. }
            if oldest == s(2.0) && newest == s(3.0)),
        "{err}"
    );
    let tf = buf.lookup_transform("odom", "base_link", s(2.05)).unwrap();
    assert!((tf.translation.x - 2.05).abs() < TOL);
    // A sample older than what the edge keeps is refused, and the buffer is unchanged.
    let err = buf
        .set_transform("odom", "base_link", s(1.5), Isometry3::identity(), false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "transform `odom` -> `base_link` at 1.500000000 s is older than the buffer keeps: the \
         edge's latest transform is at 3.000000000 s and the buffer keeps 1.000000000 s behind \
         it (back to 2.000000000 s)"
    );
    assert!(!buf.can_transform("odom", "base_link", s(1.5)));
}

#[test]
fn unknown_frame_lists_the_known_frames_sorted() {
    let mut buf = TransformBuffer::default();
    let err = buf
        .lookup_transform("base_link", "camera", s(1.0))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "frame `base_link` does not exist in the transform buffer; known frames: none, no \
         transform has been received yet"
    );
    set_static(&mut buf, "odom", "base_link", Isometry3::identity());
    set_static(&mut buf, "base_link", "camera", Isometry3::identity());
    assert_eq!(buf.frames(), ["base_link", "camera", "odom"]);
    let err = buf.lookup_transform("map", "camera", s(1.0)).unwrap_err();
    assert_eq!(
        err,
        TransformError::UnknownFrame {
            frame: "map".into(),
            known: vec!["base_link".into(), "camera".into(), "odom".into()],
        }
    );
    assert_eq!(
        err.to_string(),
        "frame `map` does not exist in the transform buffer; known frames: `base_link`, \
         `camera`, `odom`"
    );
    // The source frame is checked as well.
    let err = buf
        .lookup_transform("odom", "camera_link", s(1.0))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("frame `camera_link` does not exist"),
        "{err}"
    );
    assert!(matches!(
        buf.latest_common_time("map", "odom").unwrap_err(),
        TransformError::UnknownFrame { .. }
    ));
}

#[test]
fn frames_not_connected_name_both_roots() {
    let mut buf = TransformBuffer::default();
    set_static(&mut buf, "odom", "base_link", Isometry3::identity());
    set_static(&mut buf, "world", "marker", Isometry3::identity());
    let err = buf
        .lookup_transform("base_link", "marker", s(1.0))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot transform from `marker` to `base_link`: the frames are not connected, they are \
         in two separate trees (`marker` is under root `world`, `base_link` is under root `odom`)"
    );
    let err = buf.lookup_transform("odom", "marker", s(1.0)).unwrap_err();
    assert!(err.to_string().contains("`odom` is a root"), "{err}");
    assert!(matches!(
        buf.latest_common_time("odom", "marker").unwrap_err(),
        TransformError::NotConnected { .. }
    ));
}

#[test]
fn extrapolation_names_the_edge_and_the_available_times() {
    let mut buf = TransformBuffer::default();
    set(&mut buf, "odom", "base_link", 10.0, Isometry3::identity());
    set(&mut buf, "odom", "base_link", 10.5, Isometry3::identity());
    set_static(&mut buf, "base_link", "cam", Isometry3::identity());

    let err = buf.lookup_transform("odom", "cam", s(9.75)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "lookup from `cam` to `odom` would require extrapolation into the past: requested time \
         9.750000000 s is 0.250000000 s before the earliest transform `odom` -> `base_link`; it \
         has transforms from 10.000000000 s to 10.500000000 s"
    );
    let err = buf
        .lookup_transform("cam", "odom", Stamp::from_nanos(10_500_000_001))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "lookup from `odom` to `cam` would require extrapolation into the future: requested time \
         10.500000001 s is 0.000000001 s after the latest transform `odom` -> `base_link`; it \
         has transforms from 10.000000000 s to 10.500000000 s"
    );
    assert_eq!(
        err,
        TransformError::Extrapolation {
            into: TimeDirection::Future,
            target_frame: "cam".into(),
            source_frame: "odom".into(),
            parent: "odom".into(),
            child: "base_link".into(),
            requested: Stamp::from_nanos(10_500_000_001),
            oldest: s(10.0),
            newest: s(10.5),
        }
    );
}

#[test]
fn a_single_dynamic_sample_is_valid_at_its_stamp_only() {
    let mut buf = TransformBuffer::default();
    set(
        &mut buf,
        "odom",
        "base_link",
        3.0,
        iso([1.0, 0.0, 0.0], yaw(0.0)),
    );
    assert!(buf.can_transform("odom", "base_link", s(3.0)));
    assert!(buf.can_transform("odom", "base_link", Stamp::ZERO));
    let err = buf
        .lookup_transform("odom", "base_link", s(3.1))
        .unwrap_err();
    assert!(
        err.to_string().ends_with(
            "it has a single transform, at 3.000000000 s, which is valid at that stamp only \
             (interpolation needs two)"
        ),
        "{err}"
    );
    let err = buf
        .lookup_transform("odom", "base_link", s(2.9))
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransformError::Extrapolation {
                into: TimeDirection::Past,
                ..
            }
        ),
        "{err}"
    );
}
