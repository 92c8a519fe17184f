//! Multi-object tracking: ByteTrack, as ultralytics implements it, so that every detection can
//! carry a track id across frames. Plain types only (boxes as `[f32; 4]` corners, labels as
//! strings): no ROS, no tensors.
//!
//! A port of ultralytics 8.4.190's tracker (AGPL-3.0 reference, re-implemented here):
//! - [`kalman_filter`]: `ultralytics/trackers/utils/kalman_filter.py` (`KalmanFilterXYAH`);
//! - [`matching`]: `ultralytics/trackers/utils/matching.py` (`iou_distance`, `fuse_score`,
//!   `linear_assignment` with lap's `cost_limit` semantics);
//! - [`ByteTracker`]: `ultralytics/trackers/byte_tracker.py` (`BYTETracker`, `STrack`),
//!   `basetrack.py` and `utils/stracks.py` (the end-of-frame bookkeeping);
//! - [`LabelledTracker`]: one `ByteTracker` per label, ids unique across labels.
//!
//! Parameters keep ultralytics' names and `bytetrack.yaml`'s defaults ([`ByteTrackConfig`]).
//! `tests/tracking_parity.rs` replays sequences through ultralytics' `BYTETracker`
//! (`scripts/make_tracking_fixtures.py`) and requires the same ids (up to renaming) on the same
//! boxes, and the same track boxes to 1e-4 px, on every frame.
//!
//! Where this differs from ultralytics, and why:
//! - **Ids**: ultralytics 8.4 numbers ids per tracker from 1, as here; a [`LabelledTracker`]
//!   shares one counter between its labels' trackers, so ids are unique across labels.
//! - **`frame_rate`**: ultralytics 8.4 keeps a lost track `track_buffer` frames; older releases
//!   (and ByteTrack) scale it, `int(frame_rate / 30 * track_buffer)`. The scaled form is kept so a
//!   buffer can be set for a 30 fps stream and reused at another rate; at the default 30 fps both
//!   are `track_buffer`.
//! - **Non-finite boxes or scores** are dropped with the zero-size boxes ultralytics drops (it
//!   would carry NaN through its Kalman filter); a singular Kalman update (a zero-height state,
//!   where NumPy raises) restarts the track's state from the box.
//! - Only ultralytics' lap path is reproduced (its SciPy fallback matches differently, see
//!   [`matching::linear_assignment`]); no camera-motion compensation (BYTETracker has none) and
//!   no oriented boxes.

mod byte_tracker;
pub mod kalman_filter;
mod labelled;
pub mod matching;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use byte_tracker::ByteTracker;
pub use labelled::{LabelledBox, LabelledTracker};

/// ByteTrack's parameters, named and defaulted as ultralytics' `cfg/trackers/bytetrack.yaml`.
/// Thresholds are f64 as the YAML's (Python) floats; scores compare against them as float32, as
/// NumPy compares a float32 score array with a Python float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ByteTrackConfig {
    /// First association: boxes with score >= this are matched to tracks first, and may start
    /// tracks.
    pub track_high_thresh: f64,
    /// Second association: boxes with `track_low_thresh < score < track_high_thresh` may continue
    /// a tracked track (never start one); lower scores are ignored.
    pub track_low_thresh: f64,
    /// An unmatched high-score box starts a track when its score is >= this.
    pub new_track_thresh: f64,
    /// Frames a lost track is kept (at 30 fps; see `frame_rate`).
    pub track_buffer: u32,
    /// Cost limit of the first association (IoU distance, score-fused if `fuse_score`).
    pub match_thresh: f64,
    /// Fuse the box score into the IoU cost of the first and unconfirmed associations.
    pub fuse_score: bool,
    /// Stream rate: lost tracks are kept `int(frame_rate / 30 * track_buffer)` frames.
    pub frame_rate: f64,
}

impl Default for ByteTrackConfig {
    fn default() -> Self {
        Self {
            track_high_thresh: 0.25,
            track_low_thresh: 0.1,
            new_track_thresh: 0.25,
            track_buffer: 30,
            match_thresh: 0.8,
            fuse_score: true,
            frame_rate: 30.0,
        }
    }
}

impl ByteTrackConfig {
    /// Scores thresholds must be in [0, 1], `match_thresh` and `frame_rate` positive (all
    /// finite); the error names the parameter.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &str, value: f64, want: &str| {
            Err(Error::InvalidInput(format!(
                "tracker parameter `{name}` is {value}, expected {want}"
            )))
        };
        for (name, value) in [
            ("track_high_thresh", self.track_high_thresh),
            ("track_low_thresh", self.track_low_thresh),
            ("new_track_thresh", self.new_track_thresh),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(name, value, "a score in [0, 1]");
            }
        }
        if !(self.match_thresh.is_finite() && self.match_thresh > 0.0) {
            return invalid("match_thresh", self.match_thresh, "a positive cost limit");
        }
        if !(self.frame_rate.is_finite() && self.frame_rate > 0.0) {
            return invalid(
                "frame_rate",
                self.frame_rate,
                "a positive rate in frames per second",
            );
        }
        Ok(())
    }

    /// `max_time_lost`: frames a lost track is kept before it is removed.
    pub fn max_time_lost(&self) -> i64 {
        (self.frame_rate / 30.0 * f64::from(self.track_buffer)) as i64
    }
}

/// A box to track: corners (x1, y1, x2, y2) in pixels and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredBox {
    pub xyxy: [f32; 4],
    pub score: f32,
}

/// A track on this frame (a row of ultralytics' output: `[x1, y1, x2, y2, track_id, score, cls,
/// idx]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Track {
    /// From 1, unique within a tracker (within a [`LabelledTracker`], across its labels).
    pub track_id: u64,
    /// The track's box: its Kalman state after this frame's update, as float32 corners (not the
    /// input box).
    pub xyxy: [f32; 4],
    /// Score of the box matched on this frame.
    pub score: f32,
    /// Index of that box in this frame's input.
    pub index: usize,
}
