//! One ByteTrack per label: a track belongs to one label, so boxes of different labels never
//! compete for a track, and ids are unique across labels (one counter for all).

use std::collections::BTreeMap;

use super::byte_tracker::{ByteTracker, TrackIds};
use super::{ByteTrackConfig, ScoredBox, Track};
use crate::error::Result;

/// A box to track under its label (e.g. a detection's query text).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelledBox<'a> {
    pub label: &'a str,
    /// Corners (x1, y1, x2, y2) in pixels.
    pub xyxy: [f32; 4],
    pub score: f32,
}

/// [`ByteTracker`]s keyed by label, sharing one id counter.
///
/// Equivalent to one ultralytics `BYTETracker` per label, all created before the first frame and
/// all updated on every frame (with no boxes where the label has none): a label's tracker is
/// created on the frame its label first has a box, counting the frames before as empty ones (so
/// only the stream's first frame confirms tracks at once), and dropped once it holds no track.
#[derive(Debug, Clone)]
pub struct LabelledTracker {
    config: ByteTrackConfig,
    trackers: BTreeMap<String, ByteTracker>,
    ids: TrackIds,
    frame_id: u64,
}

impl LabelledTracker {
    /// A tracker with no tracks; the parameters are checked ([`ByteTrackConfig::validate`]).
    pub fn new(config: ByteTrackConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            trackers: BTreeMap::new(),
            ids: TrackIds::default(),
            frame_id: 0,
        })
    }

    pub fn config(&self) -> &ByteTrackConfig {
        &self.config
    }

    /// New parameters for every label from the next frame on (see
    /// [`ByteTracker::set_config`]); tracks and the id counter stay. Invalid parameters change
    /// nothing.
    pub fn set_config(&mut self, config: ByteTrackConfig) -> Result<()> {
        config.validate()?;
        for tracker in self.trackers.values_mut() {
            tracker.set_config(config.clone())?;
        }
        self.config = config;
        Ok(())
    }

    /// Frames seen so far.
    pub fn frame_id(&self) -> u64 {
        self.frame_id
    }

    /// Labels that hold tracked or lost tracks.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.trackers.keys().map(String::as_str)
    }

    /// Forget every track; ids restart at 1.
    pub fn reset(&mut self) {
        self.trackers.clear();
        self.ids = TrackIds::default();
        self.frame_id = 0;
    }

    /// One frame: per input box, its track (id, the track's Kalman box, score) or `None`.
    ///
    /// A box gets a track when ByteTrack matched a confirmed track to it on this frame, or (on the
    /// first frame only) started one; boxes below `track_low_thresh`, low-score boxes no tracked
    /// track wanted, and boxes that start an unconfirmed track get `None`. The track's box is its
    /// Kalman state after the update, not the input box.
    pub fn update(&mut self, boxes: &[LabelledBox<'_>]) -> Vec<Option<Track>> {
        self.frame_id += 1;
        let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, b) in boxes.iter().enumerate() {
            by_label.entry(b.label).or_default().push(i);
        }
        // every label with boxes or with tracks, in label order (ids are handed out in it)
        let mut labels: Vec<String> = self.trackers.keys().cloned().collect();
        for label in by_label.keys() {
            if !self.trackers.contains_key(*label) {
                labels.push((*label).to_owned());
            }
        }
        labels.sort();

        let mut out = vec![None; boxes.len()];
        let mut subset: Vec<ScoredBox> = Vec::new();
        for label in labels {
            let index = by_label
                .get(label.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            subset.clear();
            subset.extend(index.iter().map(|&i| ScoredBox {
                xyxy: boxes[i].xyxy,
                score: boxes[i].score,
            }));
            let before = self.frame_id - 1;
            let tracker = self
                .trackers
                .entry(label)
                .or_insert_with(|| ByteTracker::with_frame(self.config.clone(), before));
            for mut track in tracker.update_with_ids(&subset, &mut self.ids) {
                track.index = index[track.index];
                out[track.index] = Some(track);
            }
        }
        self.trackers.retain(|_, t| !t.is_empty());
        out
    }
}
