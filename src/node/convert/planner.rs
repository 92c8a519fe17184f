//! `~/score` and `~/ground` answers as messages.

use r2r::vlm_perception_msgs::msg as vmsg;
use vlm_perception::pipeline::grounding::PhraseScore;
use vlm_perception::vision::depth::Object3d;

use super::spatial::point;
use super::{bbox_msg, detection_msg, mono_image_msg, FrameHeader};
use crate::worker::Target;

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

pub fn ground_target(header: &FrameHeader, t: &Target) -> vmsg::GroundTarget {
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
        mask: t
            .mask
            .as_ref()
            .map(|m| mono_image_msg(header, m))
            .unwrap_or_default(),
    }
}
