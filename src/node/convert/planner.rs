//! `~/score` and `~/ground` answers as messages.

use r2r::vlm_perception_msgs::msg as vmsg;
use vlm_perception::pipeline::grounding::PhraseScore;
use vlm_perception::vision::depth::Object3d;

use super::spatial::{point, point_cloud, pose};
use super::{bbox_msg, detection_msg, mono_image_msg, FrameHeader};
use crate::worker::Target;
use vlm_perception::geometry::CloudObject;

/// Per phrase its score and best box, with the box's 3D position and track id when known.
pub fn phrase_scores(
    scores: &[PhraseScore],
    positions: &[Option<Object3d>],
    tracks: &[u64],
) -> Vec<vmsg::PhraseScore> {
    scores
        .iter()
        .enumerate()
        .map(|(i, s)| vmsg::PhraseScore {
            phrase: s.phrase.clone(),
            score: s.score,
            found: s.found,
            detection: s
                .detection
                .as_ref()
                .map(|d| {
                    let position = positions.get(i).copied().flatten();
                    detection_msg(d, position.as_ref(), super::track_at(tracks, i))
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// `header`: the image's; `header_3d`: the frame of the point, pose and points, with its stamp.
pub fn ground_target(
    header: &FrameHeader,
    header_3d: &FrameHeader,
    t: &Target,
) -> vmsg::GroundTarget {
    let grasp = t.grasp.as_ref();
    vmsg::GroundTarget {
        phrase: t.detection.label.clone(),
        score: t.detection.score,
        track_id: t.track_id,
        bbox: bbox_msg(&t.detection.bbox),
        pixel: vmsg::Point2D {
            x: t.pixel.x,
            y: t.pixel.y,
        },
        peak_probability: t.pixel.probability.unwrap_or(-1.0),
        has_point: t.point.is_some(),
        point: t.point.as_ref().map(point).unwrap_or_default(),
        has_pose: grasp.is_some(),
        pose: grasp.map(|g| pose(&g.pose)).unwrap_or_default(),
        approach_from_fit: grasp.is_some_and(|g| g.approach_from_fit),
        closing_from_mask: grasp.is_some_and(|g| g.closing_from_mask),
        pose_note: grasp.map(|g| g.notes.join("; ")).unwrap_or_default(),
        points: t
            .points
            .as_ref()
            .map(|p| {
                let object = CloudObject {
                    points: p,
                    track_id: (t.track_id != 0).then_some(t.track_id),
                    query_index: t.detection.query_index,
                    detection_index: 0,
                };
                point_cloud(header_3d, &[object])
            })
            .unwrap_or_default(),
        mask: t
            .mask
            .as_ref()
            .map(|m| mono_image_msg(header, m))
            .unwrap_or_default(),
    }
}
