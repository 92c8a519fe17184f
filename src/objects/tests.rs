use super::*;
use nalgebra::{Point3, UnitQuaternion, Vector3};

fn bbox(x: f32) -> BBox {
    BBox {
        x_min: x,
        y_min: 10.0,
        x_max: x + 20.0,
        y_max: 40.0,
    }
}

fn frame(sec: i32) -> FrameInfo<'static> {
    FrameInfo {
        stamp: Stamp::from_ros(sec, 0),
        image_frame: "camera_color_optical_frame",
        position_frame: "odom",
    }
}

fn seen(id: u64, label: &str, score: f32, x: f32, position: Option<[f64; 3]>) -> Sighting<'_> {
    Sighting {
        track_id: id,
        label,
        score,
        bbox: bbox(x),
        position: position.map(|[x, y, z]| Object3d {
            centre: Point3::new(x, y, z),
            size: Vector3::new(0.1, 0.1, 0.05),
            orientation: UnitQuaternion::identity(),
        }),
    }
}

#[test]
fn an_object_keeps_its_first_sighting_best_score_and_last_position() {
    let t0 = Instant::now();
    let mut m = ObjectMemory::new(Duration::from_secs(60));
    assert!(m.observe(
        &frame(10),
        &[seen(1, "a cup", 0.4, 5.0, Some([1.0, 2.0, 0.5]))],
        t0
    ));
    assert!(m.observe(&frame(11), &[seen(1, "a cup", 0.7, 8.0, None)], t0));
    m.observe(&frame(12), &[seen(1, "a cup", 0.5, 9.0, None)], t0);
    let o = m.objects(&[])[0].clone();
    assert_eq!((o.id, o.label.as_str()), (1, "a cup"));
    assert_eq!((o.last_score, o.best_score), (0.5, 0.7));
    assert_eq!(o.bbox, bbox(9.0));
    assert_eq!(
        (o.first_seen, o.last_seen),
        (Stamp::from_ros(10, 0), Stamp::from_ros(12, 0))
    );
    assert_eq!(o.times_seen, 3);
    // The depth-less sightings keep the position measured at 10 s, in its frame.
    let p = o.position.unwrap();
    assert_eq!(p.object.centre, Point3::new(1.0, 2.0, 0.5));
    assert_eq!(
        (p.frame_id.as_str(), p.stamp),
        ("odom", Stamp::from_ros(10, 0))
    );
    assert!(
        !m.observe(&frame(13), &[], t0),
        "nothing seen: nothing changed"
    );
}

#[test]
fn objects_are_forgotten_after_the_period_on_the_monotonic_clock() {
    let t0 = Instant::now();
    let mut m = ObjectMemory::new(Duration::from_secs(5));
    m.observe(&frame(100), &[seen(1, "a cup", 0.4, 0.0, None)], t0);
    m.observe(
        &frame(1), // an older stamp (a bag loop) does not matter: the clock does
        &[seen(2, "a bowl", 0.4, 0.0, None)],
        t0 + Duration::from_secs(3),
    );
    assert_eq!(
        m.forget(t0 + Duration::from_secs(5)),
        0,
        "exactly the period: kept"
    );
    assert_eq!(m.forget(t0 + Duration::from_millis(5001)), 1);
    assert_eq!(m.objects(&[])[0].id, 2);
    m.set_forget_after(Duration::from_secs(1));
    assert_eq!(m.forget(t0 + Duration::from_millis(4001)), 1);
    assert!(m.is_empty());
}

#[test]
fn labels_filter_reads_and_clears() {
    let t0 = Instant::now();
    let mut m = ObjectMemory::default();
    m.observe(
        &frame(1),
        &[
            seen(1, "a cup", 0.4, 0.0, None),
            seen(2, "a cup", 0.6, 50.0, None),
            seen(3, "a sponge", 0.3, 90.0, None),
        ],
        t0,
    );
    let cups: Vec<u64> = m.objects(&["a cup".into()]).iter().map(|o| o.id).collect();
    assert_eq!(cups, [1, 2], "two objects of one label keep distinct ids");
    assert_eq!(m.objects(&["a bowl".into()]).len(), 0);
    assert_eq!(
        m.latest("a cup").unwrap().id,
        2,
        "same stamp: the better score"
    );
    m.observe(&frame(2), &[seen(1, "a cup", 0.2, 1.0, None)], t0);
    assert_eq!(m.latest("a cup").unwrap().id, 1, "seen later wins");
    assert_eq!(m.clear(&["a cup".into()]), 2);
    assert_eq!(m.len(), 1);
    assert_eq!(m.clear(&[]), 1);
    assert!(m.is_empty());
}
