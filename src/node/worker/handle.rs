//! The executor side of the worker: the frame mailbox and the request queue it fills, and the
//! state it shares with the worker thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::diagnostics::{CameraStats, Stats};
use super::{lock, Frame, Job, TaskSnapshot};
use crate::params::NodeParams;

/// Requests waiting for the worker beyond this are refused ("busy").
pub const MAX_QUEUED_REQUESTS: usize = 16;

pub(super) struct Inbox {
    /// Per camera a single-slot mailbox: its latest unprocessed frame.
    pub(super) frames: Vec<Option<Arc<Frame>>>,
    pub(super) jobs: VecDeque<Job>,
    pub(super) shutdown: bool,
}

pub(super) struct Shared {
    pub(super) inbox: Mutex<Inbox>,
    pub(super) wake: Condvar,
    /// Per camera its latest frame (what services use when no image is sent).
    pub(super) latest: Mutex<Vec<Option<Arc<Frame>>>>,
    pub(super) stats: Mutex<Stats>,
    pub(super) tasks: Mutex<Vec<TaskSnapshot>>,
    pub(super) loading: AtomicBool,
    /// Lifecycle: frames are processed and services served only while active.
    pub(super) active: AtomicBool,
    pub(super) started: Instant,
    /// `rate` (f64 bits): it changes at run time.
    pub(super) rate: AtomicU64,
    pub(super) device: String,
    pub(super) dtype: String,
}

impl Shared {
    /// The state of a worker that has not started yet: a lifecycle node's is inactive and not
    /// loading until `configure` (the models load on it), another's is active and loading.
    pub(super) fn new(params: &NodeParams, tasks: Vec<TaskSnapshot>, lifecycle: bool) -> Self {
        let cameras = params.cameras.len();
        Self {
            inbox: Mutex::new(Inbox {
                frames: vec![None; cameras],
                jobs: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            latest: Mutex::new(vec![None; cameras]),
            stats: Mutex::new(Stats {
                queries: params.owlvit.queries.clone(),
                prompts: params.clipseg.prompts.clone(),
                cameras: params
                    .cameras
                    .iter()
                    .map(|c| CameraStats {
                        name: c.name.clone(),
                        queries: c.queries.clone(),
                        prompts: c.prompts.clone(),
                        ..CameraStats::default()
                    })
                    .collect(),
                ..Stats::default()
            }),
            tasks: Mutex::new(tasks),
            loading: AtomicBool::new(!lifecycle),
            active: AtomicBool::new(!lifecycle),
            started: Instant::now(),
            rate: AtomicU64::new(params.rate.to_bits()),
            device: params.device.clone(),
            dtype: params.dtype.clone(),
        }
    }
}

/// [`Handle::submit`]'s refusal: the request queue is full.
#[derive(Debug)]
pub struct Busy;

/// The executor side's handle on the worker: cheap to clone, never blocks for long.
#[derive(Clone)]
pub struct Handle {
    pub(super) shared: Arc<Shared>,
}

impl Handle {
    /// Offers a camera frame: it replaces any frame of its camera still waiting (counted as
    /// dropped).
    pub fn push_frame(&self, frame: Frame) {
        if !self.active() {
            return; // an inactive lifecycle node ignores the camera
        }
        let camera = frame.camera;
        let frame = Arc::new(frame);
        if let Some(slot) = lock(&self.shared.latest).get_mut(camera) {
            *slot = Some(Arc::clone(&frame));
        }
        let replaced = match lock(&self.shared.inbox).frames.get_mut(camera) {
            Some(slot) => slot.replace(frame).is_some(),
            None => return, // not a camera of this node (the subscriptions make none)
        };
        {
            let mut s = lock(&self.shared.stats);
            if let Some(c) = s.cameras.get_mut(camera) {
                c.frames_received += 1;
                c.frames_dropped += u64::from(replaced);
            }
        }
        self.shared.wake.notify_one();
    }

    /// Queues a request; refuses it (dropping it) when [`MAX_QUEUED_REQUESTS`] are already
    /// waiting.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        {
            let mut inbox = lock(&self.shared.inbox);
            if inbox.shutdown || inbox.jobs.len() >= MAX_QUEUED_REQUESTS {
                return Err(Busy);
            }
            inbox.jobs.push_back(job);
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Counts a finished service call (for /diagnostics).
    pub fn count_service(&self, success: bool) {
        let mut s = lock(&self.shared.stats);
        s.service_calls += 1;
        if !success {
            s.service_failures += 1;
        }
    }

    /// Whether the node is active (always, unless it is a lifecycle node not activated).
    pub fn active(&self) -> bool {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Lifecycle `activate` / `deactivate`.
    pub fn set_active(&self, active: bool) {
        self.shared.active.store(active, Ordering::Relaxed);
        if !active {
            lock(&self.shared.inbox).frames.fill(None);
        }
    }

    /// Whether the worker is still loading models (for timeout messages).
    pub fn loading(&self) -> bool {
        self.shared.loading.load(Ordering::Relaxed)
    }

    pub fn shutdown(&self) {
        lock(&self.shared.inbox).shutdown = true;
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::convert::{FrameHeader, RawImage};
    use crate::worker::Request;

    #[test]
    fn mailbox_keeps_only_the_latest_frame_and_counts_drops() {
        let (handle, _) = test_handle();
        for i in 0..5 {
            handle.push_frame(Frame {
                camera: 0,
                header: FrameHeader {
                    sec: i,
                    ..Default::default()
                },
                image: RawImage::Compressed {
                    format: String::new(),
                    data: Vec::new(),
                },
                source: Arc::from("t"),
                received: Instant::now(),
            });
        }
        let s = handle.snapshot();
        assert_eq!((s.frames_received, s.frames_dropped), (5, 4));
        let c = &s.cameras[0];
        assert_eq!((c.frames_received, c.frames_dropped), (5, 4));
        let pending = lock(&handle.shared.inbox).frames[0].clone().unwrap();
        assert_eq!(pending.header.sec, 4);
    }

    #[test]
    fn request_queue_is_bounded() {
        let (handle, _) = test_handle();
        let mut receivers = Vec::new();
        for i in 0..=MAX_QUEUED_REQUESTS {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let r = handle.submit(Job {
                request: Request::SetVocabulary {
                    detection: None,
                    detection_images: Vec::new(),
                    prompts: None,
                    prompt_images: Vec::new(),
                    origin: "test",
                    camera: None,
                    reply: Some(tx),
                },
                deadline: Instant::now() + Duration::from_secs(1),
            });
            assert_eq!(r.is_ok(), i < MAX_QUEUED_REQUESTS);
        }
    }

    /// A handle whose worker never runs.
    fn test_handle() -> (Handle, ()) {
        let params = NodeParams::from_map(&Default::default()).unwrap();
        let shared = Arc::new(Shared::new(&params, Vec::new(), false));
        (Handle { shared }, ())
    }
}
