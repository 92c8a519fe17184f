//! The node's object memory: the library's [`ObjectMemory`] behind a lock, fed by the stream's
//! outputs (tracked detections, with their positions in the frame they were published in), read
//! and cleared by `~/get_objects` and `~/score`, and published on `~/objects` (latched) whenever
//! it changes: after each processed frame with tracked detections, and when objects are
//! forgotten (checked every second, so that they go on schedule without frames).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use r2r::vlm_perception_msgs::msg::ObjectArray;
use vlm_perception::objects::{FrameInfo, ObjectMemory, ObjectRecord, Sighting};
use vlm_perception::transforms::Stamp;

use crate::convert;
use crate::log;
use crate::tf::Placement;
use crate::worker::{FrameDetections, Level};

/// How often objects are checked for forgetting when no frame comes.
pub const FORGET_CHECK_PERIOD: Duration = Duration::from_secs(1);

pub struct Memory {
    /// The publisher sits under the memory's lock: r2r's publishers are not `Sync`.
    inner: Mutex<Inner>,
    logger: String,
}

struct Inner {
    memory: ObjectMemory,
    publisher: r2r::Publisher<ObjectArray>,
}

impl Memory {
    pub fn new(
        forget_after: Duration,
        publisher: r2r::Publisher<ObjectArray>,
        logger: String,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                memory: ObjectMemory::new(forget_after),
                publisher,
            }),
            logger,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    /// A published frame: its tracked detections, positions in `placement.frame_id`.
    pub fn record(&self, f: &FrameDetections, placement: &Placement) {
        let sightings: Vec<Sighting<'_>> = f
            .result
            .detections
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let track_id = convert::track_at(&f.tracks, i);
                (track_id != 0).then(|| Sighting {
                    track_id,
                    label: &d.label,
                    score: d.score,
                    bbox: d.bbox,
                    position: f.positions.get(i).copied().flatten(),
                })
            })
            .collect();
        let frame = FrameInfo {
            stamp: Stamp::from_ros(f.header.sec, f.header.nanosec),
            image_frame: &f.header.frame_id,
            position_frame: &placement.frame_id,
        };
        let now = Instant::now();
        let mut inner = self.lock();
        let seen = inner.memory.observe(&frame, &sightings, now);
        let forgotten = inner.memory.forget(now);
        if seen || forgotten > 0 {
            self.publish(&inner);
        }
    }

    /// Forgets what was not seen for `objects.forget_after`; publishes when that changed it.
    pub fn forget(&self) {
        let mut inner = self.lock();
        if inner.memory.forget(Instant::now()) > 0 {
            self.publish(&inner);
        }
    }

    pub fn set_forget_after(&self, d: Duration) {
        self.lock().memory.set_forget_after(d);
    }

    /// The objects with one of `labels` (all when empty), forgotten after reading with `clear`.
    pub fn read(&self, labels: &[String], clear: bool) -> Vec<ObjectRecord> {
        let mut inner = self.lock();
        let m = &mut inner.memory;
        let mut changed = m.forget(Instant::now()) > 0;
        let objects: Vec<ObjectRecord> = m.objects(labels).into_iter().cloned().collect();
        if clear {
            changed |= m.clear(labels) > 0;
        }
        if changed {
            self.publish(&inner);
        }
        objects
    }

    /// The remembered object of `label` seen last.
    pub fn latest(&self, label: &str) -> Option<ObjectRecord> {
        let mut inner = self.lock();
        inner.memory.forget(Instant::now());
        inner.memory.latest(label).cloned()
    }

    fn publish(&self, inner: &Inner) {
        let msg = convert::object_array(&inner.memory.objects(&[]));
        if let Err(e) = inner.publisher.publish(&msg) {
            log(
                &self.logger,
                Level::Error,
                &format!("cannot publish ~/objects: {e}"),
            );
        }
    }
}
