//! The stream's tracks: ByteTrack, one tracker per label (the library's [`LabelledTracker`]), on
//! each processed frame's detections; and the track of a service answer's box when the call ran
//! on the frame the stream last tracked. Service calls never update the tracks.

use vlm_perception::pipeline::Detection;
use vlm_perception::tracking::{ByteTrackConfig, LabelledBox, LabelledTracker};

use crate::convert::FrameHeader;

/// A service box counts as a stream track's box from this IoU on (same frame, same label).
const SAME_BOX_IOU: f32 = 0.5;

/// Track id 0: no track.
pub const NO_TRACK: u64 = 0;

pub(super) struct StreamTracks {
    tracker: LabelledTracker,
    /// Ids unique across the node's cameras: camera `offset` of `stride` publishes tracker id
    /// `n` as `n * stride + offset` (one camera: the tracker's own ids).
    offset: u64,
    stride: u64,
    /// The last tracked frame and its tracked detections (label, box, id).
    last: Option<(FrameHeader, Vec<Detection>, Vec<u64>)>,
}

impl StreamTracks {
    /// Camera `offset` of `stride`; `config` was validated with the parameters.
    pub(super) fn new(config: &ByteTrackConfig, offset: u64, stride: u64) -> Self {
        Self {
            tracker: LabelledTracker::new(config.clone())
                .expect("tracking parameters are validated at startup and on change"),
            offset,
            stride: stride.max(1),
            last: None,
        }
    }

    /// New tracker parameters (`ros2 param set`): the tracks and the id counter stay.
    pub(super) fn set_config(&mut self, config: &ByteTrackConfig) {
        if self.tracker.config() != config {
            self.tracker
                .set_config(config.clone())
                .expect("tracking parameters are validated at startup and on change");
        }
    }

    /// One processed frame: per detection its track id, [`NO_TRACK`] for none.
    pub(super) fn update(&mut self, header: &FrameHeader, detections: &[Detection]) -> Vec<u64> {
        let boxes: Vec<LabelledBox<'_>> = detections.iter().map(Into::into).collect();
        let ids: Vec<u64> = self
            .tracker
            .update(&boxes)
            .into_iter()
            .map(|t| t.map_or(NO_TRACK, |t| t.track_id * self.stride + self.offset))
            .collect();
        self.last = Some((header.clone(), detections.to_vec(), ids.clone()));
        ids
    }

    /// The stream's track of `d` when it was found on the last tracked frame (`header`): the
    /// tracked box of the same label that overlaps it most, from IoU 0.5 on.
    pub(super) fn track_of(&self, header: &FrameHeader, d: &Detection) -> u64 {
        let Some((last, detections, ids)) = &self.last else {
            return NO_TRACK;
        };
        if last != header {
            return NO_TRACK;
        }
        detections
            .iter()
            .zip(ids)
            .filter(|(t, id)| **id != NO_TRACK && t.label == d.label)
            .map(|(t, id)| (t.bbox.iou(&d.bbox), *id))
            .filter(|(iou, _)| *iou >= SAME_BOX_IOU)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(NO_TRACK, |(_, id)| id)
    }
}
