//! The object memory: every tracked object the robot has seen, where and when, for planners that
//! ask about objects out of view ("where did you see the sponge?").
//!
//! Fed with the stream's tracked detections (one [`Sighting`] per detection that has a track id),
//! it keeps per track its label, last and best score, last box, last 3D position (in the frame the
//! position was given in: the node's target frame) and when it was first and last seen. An
//! object out of view keeps its last position: in a fixed frame (odom, map) that is where it is.
//! Objects not seen for `forget_after` are dropped. Forgetting runs on a monotonic clock
//! ([`Instant`]), not on the images' stamps, so that objects are forgotten on schedule even when
//! the camera stops, and a ROS time jump (a looping bag) does not forget or keep them all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::transforms::Stamp;
use crate::vision::boxes::BBox;
use crate::vision::depth::Object3d;

/// The default `objects.forget_after`.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(60);

/// One tracked detection of a processed frame.
#[derive(Debug, Clone)]
pub struct Sighting<'a> {
    pub track_id: u64,
    pub label: &'a str,
    pub score: f32,
    /// In the image's pixels.
    pub bbox: BBox,
    /// The 3D box when depth located it, in `position_frame`.
    pub position: Option<Object3d>,
}

/// Where a frame was seen: its image's stamp and frame, and the frame of its 3D positions.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameInfo<'a> {
    pub stamp: Stamp,
    pub image_frame: &'a str,
    pub position_frame: &'a str,
}

/// What the memory knows of one object (one track).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRecord {
    pub id: u64,
    pub label: String,
    pub last_score: f32,
    pub best_score: f32,
    /// The box of the last sighting, in the pixels of the image `image_frame` at `last_seen`.
    pub bbox: BBox,
    pub image_frame: String,
    /// The last 3D position that was measured (kept when later sightings had no depth), and its
    /// frame and stamp.
    pub position: Option<Placed>,
    pub first_seen: Stamp,
    pub last_seen: Stamp,
    pub times_seen: u64,
    /// When it was last seen, on the monotonic clock (for forgetting).
    seen_at: Instant,
}

/// A remembered 3D position (the object's box: centre, size and orientation).
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub object: Object3d,
    pub frame_id: String,
    pub stamp: Stamp,
}

/// The memory. Keyed by track id; ids are unique across labels (the tracker's).
#[derive(Debug, Clone)]
pub struct ObjectMemory {
    objects: BTreeMap<u64, ObjectRecord>,
    forget_after: Duration,
}

impl Default for ObjectMemory {
    fn default() -> Self {
        Self::new(DEFAULT_FORGET_AFTER)
    }
}

impl ObjectMemory {
    pub fn new(forget_after: Duration) -> Self {
        Self {
            objects: BTreeMap::new(),
            forget_after,
        }
    }

    pub fn forget_after(&self) -> Duration {
        self.forget_after
    }

    /// `objects.forget_after` changed at run time: applies from the next [`Self::forget`].
    pub fn set_forget_after(&mut self, d: Duration) {
        self.forget_after = d;
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Takes a frame's tracked detections, seen at `now`. A track seen again keeps its first
    /// sighting and its best score; its label is the one it was created with (a track belongs
    /// to one label). Returns whether anything was recorded.
    pub fn observe(
        &mut self,
        frame: &FrameInfo<'_>,
        sightings: &[Sighting<'_>],
        now: Instant,
    ) -> bool {
        for s in sightings {
            let position = s.position.map(|object| Placed {
                object,
                frame_id: frame.position_frame.to_string(),
                stamp: frame.stamp,
            });
            match self.objects.get_mut(&s.track_id) {
                Some(o) => {
                    o.last_score = s.score;
                    o.best_score = o.best_score.max(s.score);
                    o.bbox = s.bbox;
                    o.image_frame = frame.image_frame.to_string();
                    if position.is_some() {
                        o.position = position;
                    }
                    o.last_seen = o.last_seen.max(frame.stamp);
                    o.times_seen += 1;
                    o.seen_at = now;
                }
                None => {
                    self.objects.insert(
                        s.track_id,
                        ObjectRecord {
                            id: s.track_id,
                            label: s.label.to_string(),
                            last_score: s.score,
                            best_score: s.score,
                            bbox: s.bbox,
                            image_frame: frame.image_frame.to_string(),
                            position,
                            first_seen: frame.stamp,
                            last_seen: frame.stamp,
                            times_seen: 1,
                            seen_at: now,
                        },
                    );
                }
            }
        }
        !sightings.is_empty()
    }

    /// Drops the objects not seen for `forget_after` before `now`; returns how many.
    pub fn forget(&mut self, now: Instant) -> usize {
        let before = self.objects.len();
        let keep = self.forget_after;
        self.objects
            .retain(|_, o| now.saturating_duration_since(o.seen_at) <= keep);
        before - self.objects.len()
    }

    /// The objects with one of `labels` (all when empty), by id.
    pub fn objects(&self, labels: &[String]) -> Vec<&ObjectRecord> {
        self.objects
            .values()
            .filter(|o| labels.is_empty() || labels.contains(&o.label))
            .collect()
    }

    /// Forgets the objects with one of `labels` (all when empty); returns how many.
    pub fn clear(&mut self, labels: &[String]) -> usize {
        let before = self.objects.len();
        self.objects
            .retain(|_, o| !(labels.is_empty() || labels.contains(&o.label)));
        before - self.objects.len()
    }

    /// The remembered object of `label` seen last (the best score among those seen at that
    /// stamp): what a planner asking for `label` out of view gets.
    pub fn latest(&self, label: &str) -> Option<&ObjectRecord> {
        self.objects
            .values()
            .filter(|o| o.label == label)
            .max_by(|a, b| {
                a.last_seen
                    .cmp(&b.last_seen)
                    .then(a.last_score.total_cmp(&b.last_score))
            })
    }
}

#[cfg(test)]
mod tests;
