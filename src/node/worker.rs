//! The inference worker: one thread that owns the models and runs everything that touches them,
//! in order, off the ROS executor.
//!
//! Inputs, all under one lock:
//! - a single-slot mailbox for camera frames: a frame arriving while the slot is full replaces
//!   the pending one (counted as dropped), so the worker only ever sees the latest frame;
//! - a bounded queue of requests (services, vocabulary changes), served before stream frames;
//!   a full queue is refused at once.
//!
//! The stream runs at most `rate` frames per second. Requests carry a deadline: the service side
//! stops waiting at the deadline and answers with a timeout, and the worker skips requests whose
//! caller has gone. Nothing here blocks on ROS; results leave through [`Sink`].

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use image::RgbImage;
use tokio::sync::oneshot;
use vlm_perception::pipeline::{
    DetectParams, DetectionResult, Detector, LoadOptions, QueryEmbeddings,
};
use vlm_perception::vision::draw::{draw_labelled_box, palette_color, tint_mask};

use crate::convert::{decode, FrameError, FrameHeader, RawImage};
use crate::depth_sync::{stamp_ns, DepthSync};
use crate::params::NodeParams;
use vlm_perception::vision::depth::Object3d;

mod control;
mod image_queries;
mod planner;
mod requests;
pub use image_queries::QueryImage;
pub use planner::{DepthArg, GroundAnswer, GroundArgs, ScoreAnswer, Target};
use vlm_perception::pipeline::{
    PromptEmbeddings, SegmentParams, SegmentationResult, Segmenter, VqaModel, VqaResult,
};

/// Requests waiting for the worker beyond this are refused ("busy").
pub const MAX_QUEUED_REQUESTS: usize = 16;
/// Latency percentiles and fps are computed over this many recent frames.
const STATS_WINDOW: usize = 100;
/// fps counts the frames processed in this trailing window.
const FPS_WINDOW: Duration = Duration::from_secs(5);
/// A repeated fault of the same kind is logged at most once per this period.
const LOG_PERIOD: Duration = Duration::from_secs(10);
/// Opacity of segmentation masks in the overlay.
const MASK_ALPHA: f32 = 0.45;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A camera frame as received.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub image: RawImage,
    /// The topic it came from (named in errors).
    pub source: Arc<str>,
    pub received: Instant,
}

/// Where a request's image comes from.
pub enum ImageArg {
    /// The latest frame received on the camera topic.
    Latest,
    /// The image sent with the request.
    Given(FrameHeader, RawImage),
}

/// A result with the header of the image it was computed on.
pub struct Outcome<R> {
    pub header: FrameHeader,
    pub model: String,
    pub result: R,
    /// Inference time (preprocess + forward + postprocess).
    pub latency: Duration,
}

pub type Reply<T> = oneshot::Sender<Result<T, String>>;

pub enum Request {
    /// Replace the detection vocabulary and/or the segmentation prompts (`None`: keep).
    SetVocabulary {
        detection: Option<Vec<String>>,
        /// Query images as the detection vocabulary instead (when not empty).
        detection_images: Vec<QueryImage>,
        prompts: Option<Vec<String>>,
        /// `~/set_queries` or `~/queries`, for messages.
        origin: &'static str,
        reply: Option<Reply<String>>,
    },
    Detect {
        image: ImageArg,
        /// Empty: the current vocabulary.
        queries: Vec<String>,
        /// Image-guided detection instead, when not empty.
        query_images: Vec<QueryImage>,
        threshold: Option<f32>,
        reply: Reply<Outcome<DetectionResult>>,
    },
    Segment {
        image: ImageArg,
        /// Empty: the current prompts.
        prompts: Vec<String>,
        threshold: Option<f32>,
        reply: Reply<Outcome<SegmentationResult>>,
    },
    Ask {
        image: ImageArg,
        question: String,
        top_k: Option<usize>,
        reply: Reply<Outcome<VqaResult>>,
    },
    /// SayCan-style affordances of object phrases.
    Score {
        image: ImageArg,
        depth: DepthArg,
        phrases: Vec<String>,
        threshold: Option<f32>,
        reply: Reply<Outcome<ScoreAnswer>>,
    },
    /// New parameter values (`ros2 param set`), already validated.
    Reconfigure(Box<NodeParams>),
    /// Lifecycle `configure`: load the enabled models (fails when none loads).
    Configure(Reply<String>),
    /// Lifecycle `cleanup` / `shutdown`: free the models and the embedding caches.
    Cleanup(Reply<String>),
    /// CLIPort-style pick/place targets.
    Ground {
        image: ImageArg,
        depth: DepthArg,
        args: GroundArgs,
        reply: Reply<Outcome<GroundAnswer>>,
    },
}

pub struct Job {
    pub request: Request,
    pub deadline: Instant,
}

impl Job {
    /// Whether nobody waits for the answer any more.
    fn abandoned(&self) -> bool {
        match &self.request {
            Request::SetVocabulary { reply, .. } => reply.as_ref().is_some_and(|r| r.is_closed()),
            Request::Detect { reply, .. } => reply.is_closed(),
            Request::Segment { reply, .. } => reply.is_closed(),
            Request::Ask { reply, .. } => reply.is_closed(),
            Request::Score { reply, .. } => reply.is_closed(),
            Request::Ground { reply, .. } => reply.is_closed(),
            Request::Reconfigure(_) => false,
            Request::Configure(reply) | Request::Cleanup(reply) => reply.is_closed(),
        }
    }

    /// Answers `message` without running the request.
    fn refuse(self, message: String) {
        match self.request {
            Request::SetVocabulary { reply, .. } => {
                if let Some(r) = reply {
                    let _ = r.send(Err(message));
                }
            }
            Request::Detect { reply, .. } => {
                let _ = reply.send(Err(message));
            }
            Request::Segment { reply, .. } => {
                let _ = reply.send(Err(message));
            }
            Request::Ask { reply, .. } => {
                let _ = reply.send(Err(message));
            }
            Request::Score { reply, .. } => {
                let _ = reply.send(Err(message));
            }
            Request::Ground { reply, .. } => {
                let _ = reply.send(Err(message));
            }
            Request::Reconfigure(_) => {}
            Request::Configure(reply) | Request::Cleanup(reply) => {
                let _ = reply.send(Err(message));
            }
        }
    }
}

/// The message of a request that was not served within its deadline.
pub fn timeout_message(timeout: Duration, loading: bool) -> String {
    format!(
        "timed out after {:.1} s{}",
        timeout.as_secs_f64(),
        if loading {
            " (models are still loading)"
        } else {
            ""
        }
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Where the worker's results and log lines go (the ROS publishers, or a test double).
pub trait Sink: Send + 'static {
    /// `positions`: per detection its 3D position, when depth was paired with the frame
    /// (empty when depth is off).
    fn detections(
        &mut self,
        header: &FrameHeader,
        model: &str,
        r: &DetectionResult,
        positions: &[Option<Object3d>],
        latency: Duration,
    );
    fn segmentation(
        &mut self,
        header: &FrameHeader,
        model: &str,
        r: &SegmentationResult,
        latency: Duration,
    );
    fn overlay(&mut self, header: &FrameHeader, image: &RgbImage);
    fn answer(&mut self, header: &FrameHeader, model: &str, r: &VqaResult, latency: Duration);
    fn log(&mut self, level: Level, message: &str);
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    Disabled,
    /// Lifecycle node not configured yet (or cleaned up): the model is not in memory.
    Unconfigured,
    Loading,
    Ready,
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Detection,
    Segmentation,
    Vqa,
}

impl Task {
    const ALL: [Task; 3] = [Task::Detection, Task::Segmentation, Task::Vqa];

    fn label(self) -> &'static str {
        match self {
            Task::Detection => "detection (owlvit)",
            Task::Segmentation => "segmentation (clipseg)",
            Task::Vqa => "vqa (vilt)",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Task::Detection => "owlvit",
            Task::Segmentation => "clipseg",
            Task::Vqa => "vilt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TaskSnapshot {
    pub task: &'static str,
    pub model: String,
    pub state: ModelState,
}

/// Counters and recent timings, for /diagnostics.
#[derive(Debug, Default)]
struct Stats {
    frames_received: u64,
    frames_processed: u64,
    frames_dropped: u64,
    frames_bad: u64,
    last_bad_frame: String,
    bad_queries: u64,
    inference_errors: u64,
    service_calls: u64,
    service_failures: u64,
    query_encodings: u64,
    prompt_encodings: u64,
    /// Receipt -> results published, ms.
    latencies: VecDeque<f64>,
    /// Decode + inference, ms.
    inference: VecDeque<f64>,
    processed_at: VecDeque<Instant>,
    queries: Vec<String>,
    prompts: Vec<String>,
}

/// A copy of the worker's state for /diagnostics.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub loading: bool,
    pub fps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub inference_p50_ms: Option<f64>,
    pub inference_p95_ms: Option<f64>,
    pub frames_received: u64,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub frames_bad: u64,
    pub last_bad_frame: String,
    pub bad_queries: u64,
    pub inference_errors: u64,
    pub service_calls: u64,
    pub service_failures: u64,
    pub query_encodings: u64,
    pub prompt_encodings: u64,
    pub queries: Vec<String>,
    pub prompts: Vec<String>,
    pub rate: f64,
    pub device: String,
    pub dtype: String,
    pub tasks: Vec<TaskSnapshot>,
}

fn percentile(values: &VecDeque<f64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    // nearest rank
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == STATS_WINDOW {
        q.pop_front();
    }
    q.push_back(v);
}

struct Inbox {
    /// The single-slot mailbox: the latest unprocessed camera frame.
    frame: Option<Arc<Frame>>,
    jobs: VecDeque<Job>,
    shutdown: bool,
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    latest: Mutex<Option<Arc<Frame>>>,
    stats: Mutex<Stats>,
    tasks: Mutex<Vec<TaskSnapshot>>,
    loading: AtomicBool,
    /// Lifecycle: frames are processed and services served only while active.
    active: AtomicBool,
    started: Instant,
    /// `rate` (f64 bits): it changes at run time.
    rate: AtomicU64,
    device: String,
    dtype: String,
}

/// [`Handle::submit`]'s refusal: the request queue is full.
#[derive(Debug)]
pub struct Busy;

/// The executor side's handle on the worker: cheap to clone, never blocks for long.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Offers a camera frame: it replaces any frame still waiting (counted as dropped).
    pub fn push_frame(&self, frame: Frame) {
        if !self.active() {
            return; // an inactive lifecycle node ignores the camera
        }
        let frame = Arc::new(frame);
        *lock(&self.shared.latest) = Some(Arc::clone(&frame));
        let replaced = lock(&self.shared.inbox).frame.replace(frame).is_some();
        {
            let mut s = lock(&self.shared.stats);
            s.frames_received += 1;
            if replaced {
                s.frames_dropped += 1;
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
            lock(&self.shared.inbox).frame = None;
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

    pub fn snapshot(&self) -> Snapshot {
        let tasks = lock(&self.shared.tasks).clone();
        let s = lock(&self.shared.stats);
        let now = Instant::now();
        let window = FPS_WINDOW.min(now - self.shared.started).as_secs_f64();
        let recent = s
            .processed_at
            .iter()
            .filter(|t| now.duration_since(**t) <= FPS_WINDOW)
            .count();
        Snapshot {
            loading: self.loading(),
            fps: if window > 0.0 {
                recent as f64 / window
            } else {
                0.0
            },
            latency_p50_ms: percentile(&s.latencies, 50.0),
            latency_p95_ms: percentile(&s.latencies, 95.0),
            inference_p50_ms: percentile(&s.inference, 50.0),
            inference_p95_ms: percentile(&s.inference, 95.0),
            frames_received: s.frames_received,
            frames_processed: s.frames_processed,
            frames_dropped: s.frames_dropped,
            frames_bad: s.frames_bad,
            last_bad_frame: s.last_bad_frame.clone(),
            bad_queries: s.bad_queries,
            inference_errors: s.inference_errors,
            service_calls: s.service_calls,
            service_failures: s.service_failures,
            query_encodings: s.query_encodings,
            prompt_encodings: s.prompt_encodings,
            queries: s.queries.clone(),
            prompts: s.prompts.clone(),
            rate: f64::from_bits(self.shared.rate.load(Ordering::Relaxed)),
            device: self.shared.device.clone(),
            dtype: self.shared.dtype.clone(),
            tasks,
        }
    }
}

/// Starts the worker thread: it loads the enabled models, then serves frames and requests
/// until [`Handle::shutdown`].
pub fn spawn<S: Sink>(
    params: NodeParams,
    options: LoadOptions,
    sink: S,
    depth: Option<Arc<DepthSync>>,
    lifecycle: bool,
) -> std::io::Result<(Handle, std::thread::JoinHandle<()>)> {
    let tasks = Task::ALL
        .iter()
        .map(|&t| {
            let (enabled, model) = match t {
                Task::Detection => (params.owlvit.enabled, &params.owlvit.model),
                Task::Segmentation => (params.clipseg.enabled, &params.clipseg.model),
                Task::Vqa => (params.vilt.enabled, &params.vilt.model),
            };
            TaskSnapshot {
                task: t.label(),
                model: model.clone(),
                state: match (enabled, lifecycle) {
                    (false, _) => ModelState::Disabled,
                    (true, false) => ModelState::Loading,
                    (true, true) => ModelState::Unconfigured,
                },
            }
        })
        .collect();
    let shared = Arc::new(Shared {
        inbox: Mutex::new(Inbox {
            frame: None,
            jobs: VecDeque::new(),
            shutdown: false,
        }),
        wake: Condvar::new(),
        latest: Mutex::new(None),
        stats: Mutex::new(Stats {
            queries: params.owlvit.queries.clone(),
            prompts: params.clipseg.prompts.clone(),
            ..Stats::default()
        }),
        tasks: Mutex::new(tasks),
        loading: AtomicBool::new(!lifecycle),
        active: AtomicBool::new(!lifecycle),
        started: Instant::now(),
        rate: AtomicU64::new(params.rate.to_bits()),
        device: params.device.clone(),
        dtype: params.dtype.clone(),
    });
    let handle = Handle {
        shared: Arc::clone(&shared),
    };
    let worker = Worker {
        shared,
        queries: params.owlvit.queries.clone(),
        prompts: params.clipseg.prompts.clone(),
        params,
        options,
        sink,
        detector: None,
        segmenter: None,
        vqa: None,
        depth,
        image_vocabulary: None,
        query_cache: EmbedCache::default(),
        prompt_cache: EmbedCache::default(),
        limiter: LogLimiter::default(),
        next_frame_at: Instant::now(),
        load_on_start: !lifecycle,
    };
    let join = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || worker.run())?;
    Ok((handle, join))
}

/// Embeddings of the stream's vocabulary, plus one slot for a service call's own queries, so
/// that neither evicts the other.
struct EmbedCache<E> {
    stream: Option<(Vec<String>, Arc<E>)>,
    adhoc: Option<(Vec<String>, Arc<E>)>,
}

impl<E> Default for EmbedCache<E> {
    fn default() -> Self {
        Self {
            stream: None,
            adhoc: None,
        }
    }
}

impl<E> EmbedCache<E> {
    /// The cached embeddings of `texts`, or `encode(texts)` (then `*encoded` is set).
    fn get(
        &mut self,
        texts: &[String],
        for_stream: bool,
        encoded: &mut bool,
        encode: impl FnOnce(&[String]) -> Result<Arc<E>, String>,
    ) -> Result<Arc<E>, String> {
        for (t, e) in [&self.stream, &self.adhoc].into_iter().flatten() {
            if t.as_slice() == texts {
                return Ok(Arc::clone(e));
            }
        }
        let fresh = encode(texts)?;
        *encoded = true;
        let slot = if for_stream {
            &mut self.stream
        } else {
            &mut self.adhoc
        };
        *slot = Some((texts.to_vec(), Arc::clone(&fresh)));
        Ok(fresh)
    }
}

/// Logs the first fault of each kind, then at most one per [`LOG_PERIOD`] with a count of the
/// ones left out.
#[derive(Default)]
struct LogLimiter {
    last: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    /// `Some(suppressed)` when a line for `key` may be logged now.
    fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_PERIOD => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

enum Next {
    Job(Box<Job>),
    Frame(Arc<Frame>),
}

struct Worker<S: Sink> {
    shared: Arc<Shared>,
    params: NodeParams,
    options: LoadOptions,
    sink: S,
    detector: Option<Detector>,
    segmenter: Option<Segmenter>,
    vqa: Option<VqaModel>,
    /// Depth pairing, when `depth.enabled`.
    depth: Option<Arc<DepthSync>>,
    /// Query images as the stream's vocabulary (set through `~/set_queries`), in place of text.
    image_vocabulary: Option<Arc<QueryEmbeddings>>,
    /// The stream's detection vocabulary and segmentation prompts.
    queries: Vec<String>,
    prompts: Vec<String>,
    query_cache: EmbedCache<QueryEmbeddings>,
    prompt_cache: EmbedCache<PromptEmbeddings>,
    limiter: LogLimiter,
    next_frame_at: Instant,
    /// false for a lifecycle node: models load on `configure`.
    load_on_start: bool,
}

impl<S: Sink> Worker<S> {
    fn run(mut self) {
        if self.load_on_start {
            self.load_models();
            self.shared.loading.store(false, Ordering::Relaxed);
        }
        while let Some(next) = self.next() {
            let outcome = catch_unwind(AssertUnwindSafe(|| match next {
                Next::Job(job) => self.serve(*job),
                Next::Frame(frame) => self.process_frame(&frame),
            }));
            if outcome.is_err() {
                lock(&self.shared.stats).inference_errors += 1;
                self.log_limited(
                    "panic",
                    Level::Error,
                    "inference panicked; the frame or request was dropped".into(),
                );
            }
        }
    }

    fn set_state(&self, task: Task, state: ModelState) {
        if let Some(t) = lock(&self.shared.tasks).get_mut(task as usize) {
            t.state = state;
        }
    }

    fn state(&self, task: Task) -> ModelState {
        lock(&self.shared.tasks)
            .get(task as usize)
            .map_or(ModelState::Disabled, |t| t.state.clone())
    }

    fn load_models(&mut self) {
        let p = self.params.clone();
        if p.owlvit.enabled {
            let t0 = Instant::now();
            match Detector::load(&p.owlvit.model, &self.options) {
                Ok(d) => {
                    self.detector = Some(d);
                    self.loaded(Task::Detection, &p.owlvit.model, t0);
                    if !self.queries.is_empty() {
                        // Encode the default vocabulary now rather than on the first frame.
                        let queries = self.queries.clone();
                        if let Err(e) = self.query_embeddings(&queries, true) {
                            self.sink
                                .log(Level::Error, &format!("cannot encode owlvit.queries: {e}"));
                        }
                    }
                }
                Err(e) => self.load_failed(Task::Detection, &p.owlvit.model, &e),
            }
        }
        if p.clipseg.enabled {
            let t0 = Instant::now();
            match Segmenter::load(&p.clipseg.model, &self.options) {
                Ok(s) => {
                    self.segmenter = Some(s);
                    self.loaded(Task::Segmentation, &p.clipseg.model, t0);
                }
                Err(e) => self.load_failed(Task::Segmentation, &p.clipseg.model, &e),
            }
        }
        if p.vilt.enabled {
            let t0 = Instant::now();
            match VqaModel::load(&p.vilt.model, &self.options) {
                Ok(v) => {
                    self.vqa = Some(v);
                    self.loaded(Task::Vqa, &p.vilt.model, t0);
                }
                Err(e) => self.load_failed(Task::Vqa, &p.vilt.model, &e),
            }
        }
    }

    fn loaded(&mut self, task: Task, model: &str, t0: Instant) {
        self.set_state(task, ModelState::Ready);
        self.sink.log(
            Level::Info,
            &format!(
                "{} model `{model}` loaded in {:.2} s",
                task.label(),
                t0.elapsed().as_secs_f64()
            ),
        );
    }

    fn load_failed(&mut self, task: Task, model: &str, e: &vlm_perception::Error) {
        let msg = format!("{e}");
        self.set_state(task, ModelState::Failed(msg.clone()));
        self.sink.log(
            Level::Error,
            &format!(
                "{} model `{model}` failed to load (the other tasks keep running): {msg}",
                task.label()
            ),
        );
    }

    /// Waits for the next request, or the pending frame once the rate allows it.
    fn next(&mut self) -> Option<Next> {
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if inbox.shutdown {
                return None;
            }
            if let Some(job) = inbox.jobs.pop_front() {
                return Some(Next::Job(Box::new(job)));
            }
            if inbox.frame.is_some() {
                let now = Instant::now();
                if now >= self.next_frame_at {
                    if self.params.rate > 0.0 {
                        self.next_frame_at = now + Duration::from_secs_f64(1.0 / self.params.rate);
                    }
                    return inbox.frame.take().map(Next::Frame);
                }
                let wait = self.next_frame_at - now;
                inbox = self
                    .shared
                    .wake
                    .wait_timeout(inbox, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            } else {
                inbox = self
                    .shared
                    .wake
                    .wait(inbox)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    fn log_limited(&mut self, key: &str, level: Level, message: String) {
        if let Some(suppressed) = self.limiter.allow(key, Instant::now()) {
            let msg = if suppressed > 0 {
                format!("{message} ({suppressed} similar message(s) suppressed)")
            } else {
                message
            };
            self.sink.log(level, &msg);
        }
    }

    fn bad_frame(&mut self, e: &FrameError) {
        let msg = e.to_string();
        {
            let mut s = lock(&self.shared.stats);
            s.frames_bad += 1;
            s.last_bad_frame = msg.clone();
        }
        self.log_limited(
            &format!("frame:{}", e.kind()),
            Level::Warn,
            format!("skipping frame: {msg}"),
        );
    }

    fn inference_error(&mut self, task: Task, e: &str) {
        lock(&self.shared.stats).inference_errors += 1;
        self.log_limited(
            &format!("inference:{}", task.group()),
            Level::Error,
            format!("{} failed on a frame: {e}", task.label()),
        );
    }

    /// Why `task` cannot serve a request right now.
    fn unavailable(&self, task: Task) -> String {
        let model = match task {
            Task::Detection => &self.params.owlvit.model,
            Task::Segmentation => &self.params.clipseg.model,
            Task::Vqa => &self.params.vilt.model,
        };
        match self.state(task) {
            ModelState::Disabled => format!(
                "{} is disabled (parameter `{}.enabled` is false)",
                task.label(),
                task.group()
            ),
            ModelState::Loading => format!("{} model `{model}` is still loading", task.label()),
            ModelState::Unconfigured => format!(
                "{} model `{model}` is not loaded: configure the lifecycle node first",
                task.label()
            ),
            ModelState::Failed(e) => {
                format!("{} model `{model}` failed to load: {e}", task.label())
            }
            ModelState::Ready => format!("{} model `{model}` is not available", task.label()),
        }
    }

    /// The loaded detector, or why there is none.
    fn loaded_detector(&self) -> Result<&Detector, String> {
        self.detector
            .as_ref()
            .ok_or_else(|| self.unavailable(Task::Detection))
    }

    /// The loaded segmenter, or why there is none.
    fn loaded_segmenter(&self) -> Result<&Segmenter, String> {
        self.segmenter
            .as_ref()
            .ok_or_else(|| self.unavailable(Task::Segmentation))
    }

    /// The loaded VQA model, or why there is none.
    fn loaded_vqa(&self) -> Result<&VqaModel, String> {
        self.vqa.as_ref().ok_or_else(|| self.unavailable(Task::Vqa))
    }

    fn query_embeddings(
        &mut self,
        queries: &[String],
        for_stream: bool,
    ) -> Result<Arc<QueryEmbeddings>, String> {
        let Some(detector) = self.detector.as_ref() else {
            return Err(self.unavailable(Task::Detection));
        };
        let mut encoded = false;
        let r = self
            .query_cache
            .get(queries, for_stream, &mut encoded, |q| {
                detector
                    .encode_queries(q)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            });
        if encoded {
            lock(&self.shared.stats).query_encodings += 1;
        }
        r
    }

    fn prompt_embeddings(
        &mut self,
        prompts: &[String],
        for_stream: bool,
    ) -> Result<Arc<PromptEmbeddings>, String> {
        let Some(segmenter) = self.segmenter.as_ref() else {
            return Err(self.unavailable(Task::Segmentation));
        };
        let mut encoded = false;
        let r = self
            .prompt_cache
            .get(prompts, for_stream, &mut encoded, |p| {
                segmenter.prompts(p).map_err(|e| e.to_string())
            });
        if encoded {
            lock(&self.shared.stats).prompt_encodings += 1;
        }
        r
    }

    // ---------------------------------------------------------------------------------------
    // The stream
    // ---------------------------------------------------------------------------------------

    fn process_frame(&mut self, frame: &Frame) {
        let t0 = Instant::now();
        let image = match decode(&frame.image, &frame.source, self.params.camera.max_pixels) {
            Ok(img) => img,
            Err(e) => return self.bad_frame(&e),
        };
        let mut overlay = self.params.overlay.then(|| image.clone());

        let detections = self.detector.is_some().then(|| self.detect_frame(&image));
        let segmentation = (self.segmenter.is_some() && !self.prompts.is_empty())
            .then(|| self.segment_frame(&image));

        if let Some(result) = detections {
            match result {
                Ok(r) => {
                    let positions = self.frame_positions(frame, &image, &r, &segmentation);
                    let model = self.detector.as_ref().map_or("", |d| d.name()).to_string();
                    self.sink
                        .detections(&frame.header, &model, &r, &positions, r.timings.total());
                    if let Some(canvas) = overlay.as_mut() {
                        for d in r.detections.iter().rev() {
                            let label = format!("{} {:.2}", d.label, d.score);
                            draw_labelled_box(
                                canvas,
                                &d.bbox,
                                &label,
                                palette_color(d.query_index),
                            );
                        }
                    }
                }
                Err(e) => self.inference_error(Task::Detection, &e),
            }
        }

        if let Some(result) = segmentation {
            match result {
                Ok(r) => {
                    let model = self.segmenter.as_ref().map_or("", |s| s.name()).to_string();
                    self.sink
                        .segmentation(&frame.header, &model, &r, r.timings.total());
                    if let Some(canvas) = overlay.as_mut() {
                        for m in &r.masks {
                            let on: Vec<bool> = m.mask.as_raw().iter().map(|&v| v > 0).collect();
                            if on.len() == (canvas.width() * canvas.height()) as usize {
                                tint_mask(canvas, &on, palette_color(m.prompt_index), MASK_ALPHA);
                            }
                        }
                    }
                }
                Err(e) => self.inference_error(Task::Segmentation, &e),
            }
        }

        if let Some(canvas) = overlay {
            self.sink.overlay(&frame.header, &canvas);
        }
        let done = Instant::now();
        let mut s = lock(&self.shared.stats);
        s.frames_processed += 1;
        push_bounded(&mut s.latencies, ms(done - frame.received));
        push_bounded(&mut s.inference, ms(done - t0));
        push_bounded(&mut s.processed_at, done);
    }

    /// The stream vocabulary on one frame.
    fn detect_frame(&mut self, image: &RgbImage) -> Result<DetectionResult, String> {
        if let Some(r) = self.detect_frame_images(image) {
            return r;
        }
        let queries = self.queries.clone();
        if queries.is_empty() {
            return Ok(DetectionResult {
                width: image.width(),
                height: image.height(),
                detections: Vec::new(),
                timings: Default::default(),
            });
        }
        let params = DetectParams {
            threshold: self.params.owlvit.score_threshold,
            nms_iou: self.params.owlvit.nms_iou,
        };
        let emb = self.query_embeddings(&queries, true)?;
        match &self.detector {
            Some(d) => d
                .detect_with_min_objectness(image, &emb, &params, self.min_objectness(d))
                .map_err(|e| e.to_string()),
            None => Err("no detection model".to_string()),
        }
    }

    /// `owlvit.min_objectness` for an OWLv2 checkpoint; OWL-ViT has no objectness (0: off).
    fn min_objectness(&self, d: &Detector) -> f32 {
        if d.has_objectness() {
            self.params.owlvit.min_objectness
        } else {
            0.0
        }
    }

    /// The stream prompts on one frame.
    fn segment_frame(&mut self, image: &RgbImage) -> Result<SegmentationResult, String> {
        let prompts = self.prompts.clone();
        let params = SegmentParams {
            threshold: self.params.clipseg.mask_threshold,
        };
        let emb = self.prompt_embeddings(&prompts, true)?;
        match &self.segmenter {
            Some(s) => s.segment(image, &emb, &params).map_err(|e| e.to_string()),
            None => Err("no segmentation model".to_string()),
        }
    }

    /// 3D positions of a frame's detections when depth is on (a frame without a depth pair is
    /// processed in 2D and counted).
    fn frame_positions(
        &self,
        frame: &Frame,
        image: &RgbImage,
        r: &DetectionResult,
        segmentation: &Option<Result<SegmentationResult, String>>,
    ) -> Vec<Option<Object3d>> {
        let Some(sync) = &self.depth else {
            return Vec::new();
        };
        let stamp = stamp_ns(frame.header.sec, frame.header.nanosec);
        let pair = sync.wait_pair(stamp, image.dimensions());
        sync.count(&pair);
        match pair {
            Ok(p) => self.positions(
                &p,
                &r.detections,
                segmentation.as_ref().and_then(|s| s.as_ref().ok()),
            ),
            Err(_) => vec![None; r.detections.len()],
        }
    }

    // ---------------------------------------------------------------------------------------
    // Requests
    // ---------------------------------------------------------------------------------------

    fn serve(&mut self, job: Job) {
        if job.abandoned() {
            return;
        }
        if Instant::now() > job.deadline {
            return job.refuse(timeout_message(self.params.service_timeout, false));
        }
        let inference = matches!(
            job.request,
            Request::Detect { .. }
                | Request::Segment { .. }
                | Request::Ask { .. }
                | Request::Score { .. }
                | Request::Ground { .. }
        );
        if inference && !self.shared.active.load(Ordering::Relaxed) {
            return job.refuse(
                "the node is not active (lifecycle): configure and activate it first".into(),
            );
        }
        match job.request {
            Request::SetVocabulary {
                detection,
                detection_images,
                prompts,
                origin,
                reply,
            } => {
                let r = if detection_images.is_empty() {
                    self.set_vocabulary(detection, prompts, origin)
                } else {
                    self.set_image_vocabulary(detection_images)
                        .and_then(|images| {
                            let rest = self.set_vocabulary(None, prompts, origin)?;
                            Ok(format!("{images}; {rest}"))
                        })
                };
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Request::Detect {
                image,
                queries,
                query_images,
                threshold,
                reply,
            } => {
                let r = if query_images.is_empty() {
                    self.detect(image, queries, threshold)
                } else {
                    self.detect_images(image, query_images, threshold)
                };
                let _ = reply.send(r);
            }
            Request::Segment {
                image,
                prompts,
                threshold,
                reply,
            } => {
                let r = self.segment(image, prompts, threshold);
                let _ = reply.send(r);
            }
            Request::Ask {
                image,
                question,
                top_k,
                reply,
            } => {
                let r = self.ask(image, question, top_k);
                if let Ok(o) = &r {
                    self.sink.answer(&o.header, &o.model, &o.result, o.latency);
                }
                let _ = reply.send(r);
            }
            Request::Score {
                image,
                depth,
                phrases,
                threshold,
                reply,
            } => {
                let _ = reply.send(self.score(image, depth, phrases, threshold));
            }
            Request::Ground {
                image,
                depth,
                args,
                reply,
            } => {
                let _ = reply.send(self.ground(image, depth, args));
            }
            Request::Reconfigure(params) => self.reconfigure(*params),
            Request::Configure(reply) => {
                let _ = reply.send(self.configure());
            }
            Request::Cleanup(reply) => {
                self.cleanup();
                let _ = reply.send(Ok("models freed".into()));
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: VecDeque<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&VecDeque::new(), 50.0), None);
        assert_eq!(percentile(&VecDeque::from(vec![3.0]), 95.0), Some(3.0));
    }

    #[test]
    fn log_limiter_suppresses_repeats() {
        let mut l = LogLimiter::default();
        let t = Instant::now();
        assert_eq!(l.allow("a", t), Some(0));
        assert_eq!(l.allow("a", t + Duration::from_secs(1)), None);
        assert_eq!(l.allow("a", t + Duration::from_secs(2)), None);
        assert_eq!(l.allow("b", t), Some(0));
        assert_eq!(
            l.allow("a", t + LOG_PERIOD + Duration::from_secs(1)),
            Some(2)
        );
    }

    #[test]
    fn embed_cache_keeps_stream_and_adhoc() {
        let mut c: EmbedCache<usize> = EmbedCache::default();
        let calls = std::cell::Cell::new(0);
        let mut enc = |t: &[String], stream: bool| {
            let mut e = false;
            let r = c
                .get(t, stream, &mut e, |t| {
                    calls.set(calls.get() + 1);
                    Ok(Arc::new(t.len()))
                })
                .unwrap();
            (*r, e)
        };
        let a = vec!["a".to_string()];
        let b = vec!["b".to_string(), "c".to_string()];
        assert_eq!(enc(&a, true), (1, true));
        assert_eq!(enc(&a, true), (1, false));
        assert_eq!(enc(&b, false), (2, true));
        // the service's vocabulary did not evict the stream's
        assert_eq!(enc(&a, true), (1, false));
        assert_eq!(enc(&b, false), (2, false));
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn mailbox_keeps_only_the_latest_frame_and_counts_drops() {
        let (handle, _) = test_handle();
        for i in 0..5 {
            handle.push_frame(Frame {
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
        let pending = lock(&handle.shared.inbox).frame.clone().unwrap();
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
                    origin: "test",
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
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox {
                frame: None,
                jobs: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            latest: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            tasks: Mutex::new(Vec::new()),
            loading: AtomicBool::new(false),
            active: AtomicBool::new(true),
            started: Instant::now(),
            rate: AtomicU64::new(params.rate.to_bits()),
            device: params.device,
            dtype: params.dtype,
        });
        (Handle { shared }, ())
    }
}
