//! 3D in and out: aligned depth images and CameraInfo in, RViz markers out
//! (`visualization_msgs/MarkerArray`, one box and one label per located detection).

use std::time::Duration;

use nalgebra::{Isometry3, Translation3, UnitQuaternion};
use r2r::builtin_interfaces::msg::Duration as DurationMsg;
use r2r::geometry_msgs::msg::{Point, Pose, Quaternion, TransformStamped, Vector3};
use r2r::sensor_msgs::msg::{CameraInfo, Image, PointCloud2, PointField};
use r2r::std_msgs::msg::ColorRGBA;
use r2r::visualization_msgs::msg::{Marker, MarkerArray};
use vlm_perception::geometry::{pack_cloud, CloudObject};
use vlm_perception::pipeline::DetectionResult;
use vlm_perception::transforms::Stamp;
use vlm_perception::vision::camera::PinholeCamera;
use vlm_perception::vision::depth::{DepthImage, Object3d};
use vlm_perception::vision::draw::palette_color;

use super::FrameHeader;

/// `visualization_msgs/Marker` constants (Marker.msg).
const MARKER_CUBE: i32 = 1;
const MARKER_TEXT_VIEW_FACING: i32 = 9;
const MARKER_ADD: i32 = 0;
const MARKER_DELETEALL: i32 = 3;
/// Markers fade this long after their frame unless the next frame replaces them first.
pub const MARKER_LIFETIME: Duration = Duration::from_secs(1);
/// Box opacity: the object stays visible inside it.
const BOX_ALPHA: f32 = 0.4;
/// Label text height, metres.
const LABEL_HEIGHT: f64 = 0.05;
const MARKER_NS: &str = "vlm_perception";

/// A `sensor_msgs/Image` depth image (16UC1 millimetres, 32FC1 metres) as metres.
pub fn depth_image(msg: &Image) -> Result<DepthImage, String> {
    DepthImage::from_raw(
        &msg.data,
        msg.width,
        msg.height,
        msg.step,
        &msg.encoding,
        msg.is_bigendian != 0,
    )
    .map_err(|e| e.to_string())
}

/// A request's optional depth image: `None` when it carries no data.
pub fn request_depth(msg: &Image) -> Option<Result<DepthImage, String>> {
    (!super::is_unset(msg)).then(|| depth_image(msg))
}

/// The calibration of a `sensor_msgs/CameraInfo` (rectified images assumed: D is not used).
pub fn camera_info(msg: &CameraInfo) -> Result<PinholeCamera, String> {
    let k: [f64; 9] = msg
        .k
        .as_slice()
        .try_into()
        .map_err(|_| format!("K has {} values, expected 9", msg.k.len()))?;
    PinholeCamera::from_k(&k, msg.width, msg.height).map_err(|e| e.to_string())
}

/// A request's optional CameraInfo: `None` when K is all zeros (not sent).
pub fn request_camera_info(msg: &CameraInfo) -> Option<Result<PinholeCamera, String>> {
    msg.k.iter().any(|v| *v != 0.0).then(|| camera_info(msg))
}

pub fn point(p: &nalgebra::Point3<f64>) -> Point {
    Point {
        x: p.x,
        y: p.y,
        z: p.z,
    }
}

pub fn vector(v: &nalgebra::Vector3<f64>) -> Vector3 {
    Vector3 {
        x: v.x,
        y: v.y,
        z: v.z,
    }
}

pub fn quaternion(q: &UnitQuaternion<f64>) -> Quaternion {
    Quaternion {
        x: q.i,
        y: q.j,
        z: q.k,
        w: q.w,
    }
}

/// The box's centre and axes.
pub fn object_pose(o: &Object3d) -> Pose {
    Pose {
        position: point(&o.centre),
        orientation: quaternion(&o.orientation),
    }
}

/// A rigid pose (e.g. a gripper's) as `geometry_msgs/Pose`.
pub fn pose(p: &Isometry3<f64>) -> Pose {
    Pose {
        position: point(&p.translation.vector.into()),
        orientation: quaternion(&p.rotation),
    }
}

/// Objects' points as one `sensor_msgs/PointCloud2` (the library's packed layout); an empty
/// cloud (width 0) when there are none or they cannot be packed.
pub fn point_cloud(header: &FrameHeader, objects: &[CloudObject<'_>]) -> PointCloud2 {
    let Ok(c) = pack_cloud(objects) else {
        return PointCloud2 {
            header: header.to_msg(),
            ..Default::default()
        };
    };
    PointCloud2 {
        header: header.to_msg(),
        height: c.height,
        width: c.width,
        fields: c
            .fields
            .iter()
            .map(|f| PointField {
                name: f.name.to_string(),
                offset: f.offset,
                datatype: f.datatype,
                count: f.count,
            })
            .collect(),
        is_bigendian: c.is_bigendian,
        point_step: c.point_step,
        row_step: c.row_step,
        data: c.data,
        is_dense: c.is_dense,
    }
}

/// A frame's object points as one cloud: each located detection's points, tied to it by its
/// track id (0: none), query index and index in the frame.
pub fn object_points(
    header: &FrameHeader,
    result: &DetectionResult,
    clouds: &[Option<Vec<nalgebra::Point3<f32>>>],
    tracks: &[u64],
) -> PointCloud2 {
    let objects: Vec<CloudObject<'_>> = clouds
        .iter()
        .zip(&result.detections)
        .enumerate()
        .filter_map(|(i, (c, d))| {
            Some(CloudObject {
                points: c.as_deref()?,
                track_id: Some(super::track_at(tracks, i)).filter(|&t| t != 0),
                query_index: d.query_index,
                detection_index: i,
            })
        })
        .collect();
    point_cloud(header, &objects)
}

/// One transform of a `tf2_msgs/TFMessage`, as the buffer takes it: parent (`header.frame_id`),
/// child, stamp and `parent_T_child`. The rotation is not normalised here: the buffer checks
/// its norm (and refuses NaN) as tf2 does.
pub fn transform_stamped(t: &TransformStamped) -> (&str, &str, Stamp, Isometry3<f64>) {
    let (v, r) = (&t.transform.translation, &t.transform.rotation);
    let rotation = UnitQuaternion::new_unchecked(nalgebra::Quaternion::new(r.w, r.x, r.y, r.z));
    (
        &t.header.frame_id,
        &t.child_frame_id,
        Stamp::from_ros(t.header.stamp.sec, t.header.stamp.nanosec),
        Isometry3::from_parts(Translation3::new(v.x, v.y, v.z), rotation),
    )
}

/// Boxes and labels of the located detections of one frame; `header`: the frame of the
/// positions (the target frame, else the camera optical frame) at the image's stamp. The array
/// starts with DELETEALL so that each frame replaces the previous one's markers.
pub fn markers(
    header: &FrameHeader,
    result: &DetectionResult,
    positions: &[Option<Object3d>],
) -> MarkerArray {
    let lifetime = DurationMsg {
        sec: MARKER_LIFETIME.as_secs() as i32,
        nanosec: MARKER_LIFETIME.subsec_nanos(),
    };
    let mut markers = vec![Marker {
        header: header.to_msg(),
        ns: MARKER_NS.into(),
        action: MARKER_DELETEALL,
        ..Default::default()
    }];
    for (i, (d, o)) in result.detections.iter().zip(positions).enumerate() {
        let Some(o) = o else { continue };
        let [r, g, b] = palette_color(d.query_index).0;
        let color = |a: f32| ColorRGBA {
            r: f32::from(r) / 255.0,
            g: f32::from(g) / 255.0,
            b: f32::from(b) / 255.0,
            a,
        };
        let id = 2 * i as i32;
        markers.push(Marker {
            header: header.to_msg(),
            ns: MARKER_NS.into(),
            id,
            type_: MARKER_CUBE,
            action: MARKER_ADD,
            pose: object_pose(o),
            // a flat object still gets a visible box
            scale: vector(&o.size.map(|v| v.max(0.01))),
            color: color(BOX_ALPHA),
            lifetime: lifetime.clone(),
            ..Default::default()
        });
        // above the box: -y along its own axes (the optical frame's y points down)
        let above = o.point_along_axes(nalgebra::Vector3::new(
            0.0,
            -(o.size.y / 2.0 + LABEL_HEIGHT),
            0.0,
        ));
        markers.push(Marker {
            header: header.to_msg(),
            ns: MARKER_NS.into(),
            id: id + 1,
            type_: MARKER_TEXT_VIEW_FACING,
            action: MARKER_ADD,
            pose: Pose {
                position: point(&above),
                orientation: quaternion(&UnitQuaternion::identity()),
            },
            scale: Vector3 {
                x: 0.0,
                y: 0.0,
                z: LABEL_HEIGHT,
            },
            color: color(1.0),
            lifetime: lifetime.clone(),
            text: format!("{} {:.2}", d.label, d.score),
            ..Default::default()
        });
    }
    MarkerArray { markers }
}

/// The depth pairing's status on /diagnostics: WARN while frames go without depth.
pub fn depth_status(
    node: &str,
    c: &crate::depth_sync::DepthCounters,
) -> r2r::diagnostic_msgs::msg::DiagnosticStatus {
    use super::{kv, LEVEL_OK, LEVEL_WARN};
    let total = c.frames_paired + c.frames_unpaired;
    let (level, message) = if c.depth_received == 0 {
        (LEVEL_WARN, "no depth image received yet".to_string())
    } else if c.frames_unpaired > 0 && !c.last_unpaired.is_empty() && c.frames_paired < total {
        (
            LEVEL_WARN,
            format!(
                "{} of {total} frames without depth (last: {})",
                c.frames_unpaired, c.last_unpaired
            ),
        )
    } else {
        (LEVEL_OK, format!("{} frames with depth", c.frames_paired))
    };
    r2r::diagnostic_msgs::msg::DiagnosticStatus {
        level,
        name: format!("{node}: depth"),
        message,
        hardware_id: String::new(),
        values: vec![
            kv("depth_received", c.depth_received),
            kv("depth_bad", c.depth_bad),
            kv("camera_info_bad", c.camera_info_bad),
            kv("frames_with_depth", c.frames_paired),
            kv("frames_without_depth", c.frames_unpaired),
            kv("last_without_depth", &c.last_unpaired),
        ],
    }
}

/// The tf status on /diagnostics: WARN while the latest lookup failed (the stream's or a
/// service's own `target_frame`), with its reason; else OK.
pub fn tf_status(
    node: &str,
    s: &crate::tf::TfStats,
) -> r2r::diagnostic_msgs::msg::DiagnosticStatus {
    use super::{kv, LEVEL_OK, LEVEL_WARN};
    let (level, message) = if s.lookups_failed > 0 && s.last_error_is_latest {
        (LEVEL_WARN, format!("3D outputs left out: {}", s.last_error))
    } else if s.target_frame.is_empty() {
        (
            LEVEL_OK,
            "target_frame is empty: 3D outputs in the camera optical frame".to_string(),
        )
    } else {
        (
            LEVEL_OK,
            format!(
                "3D outputs in `{}` ({} lookups)",
                s.target_frame, s.lookups_ok
            ),
        )
    };
    r2r::diagnostic_msgs::msg::DiagnosticStatus {
        level,
        name: format!("{node}: tf"),
        message,
        hardware_id: String::new(),
        values: vec![
            kv("target_frame", &s.target_frame),
            kv("lookups_ok", s.lookups_ok),
            kv("lookups_failed", s.lookups_failed),
            kv("last_error", &s.last_error),
            kv("transforms_received", s.received),
            kv("transforms_rejected", s.rejected),
            kv("last_rejected", &s.last_rejected),
        ],
    }
}
