//! The object memory as messages (`~/objects`, `~/get_objects`).

use r2r::builtin_interfaces::msg::Time;
use r2r::std_msgs::msg::Header;
use r2r::vlm_perception_msgs::msg as vmsg;
use vlm_perception::objects::ObjectRecord;
use vlm_perception::transforms::Stamp;

use nalgebra::UnitQuaternion;

use super::spatial::{point, quaternion, vector};
use super::{bbox_msg, now};

fn time(s: Stamp) -> Time {
    let n = s.nanos();
    Time {
        sec: n.div_euclid(1_000_000_000) as i32,
        nanosec: n.rem_euclid(1_000_000_000) as u32,
    }
}

pub fn tracked_object(o: &ObjectRecord) -> vmsg::TrackedObject {
    vmsg::TrackedObject {
        id: o.id,
        label: o.label.clone(),
        last_score: o.last_score,
        best_score: o.best_score,
        bbox: bbox_msg(&o.bbox),
        image_frame_id: o.image_frame.clone(),
        has_position: o.position.is_some(),
        position: o
            .position
            .as_ref()
            .map(|p| point(&p.object.centre))
            .unwrap_or_default(),
        size: o
            .position
            .as_ref()
            .map(|p| vector(&p.object.size))
            .unwrap_or_default(),
        orientation: quaternion(
            &o.position
                .as_ref()
                .map_or_else(UnitQuaternion::identity, |p| p.object.orientation),
        ),
        position_frame_id: o
            .position
            .as_ref()
            .map(|p| p.frame_id.clone())
            .unwrap_or_default(),
        position_stamp: o
            .position
            .as_ref()
            .map(|p| time(p.stamp))
            .unwrap_or_default(),
        first_seen: time(o.first_seen),
        last_seen: time(o.last_seen),
        times_seen: o.times_seen,
    }
}

/// The whole memory, stamped now.
pub fn object_array(objects: &[&ObjectRecord]) -> vmsg::ObjectArray {
    vmsg::ObjectArray {
        header: Header {
            stamp: now(),
            frame_id: String::new(),
        },
        objects: objects.iter().map(|o| tracked_object(o)).collect(),
    }
}
