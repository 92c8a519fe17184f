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
//!
//! Here: the requests, the worker thread and its loop. Beside it: [`handle`] (the executor's
//! side: mailbox and queue), `models` (loading, states, embeddings), `stream` (the camera
//! frames), `requests`, `image_queries`, `classify`, `generate` and `planner` (the services),
//! `control`
//! (lifecycle and parameters), `diagnostics`, and the small `embed_cache`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use nalgebra::Point3;
use tokio::sync::oneshot;
use vlm_perception::pipeline::{
    BlipGenerator, ClassificationResult, Classifier, DetectionResult, Detector, GeneratedText,
    LabelEmbeddings, LoadOptions, PromptEmbeddings, QueryEmbeddings, SegmentationResult, Segmenter,
    VqaResult,
};
use vlm_perception::vision::depth::Object3d;

use crate::convert::{FrameError, FrameHeader, RawImage};
use crate::depth_sync::DepthSync;
use crate::params::NodeParams;

mod cameras;
mod classify;
mod control;
mod diagnostics;
mod embed_cache;
mod generate;
mod handle;
mod image_queries;
mod models;
mod planner;
mod requests;
mod stream;
pub mod tracks;

use crate::log_limiter::{suppressed_note, LogLimiter};
use cameras::{CameraState, DetectionVocab, SegmentationVocab};
pub use diagnostics::{CameraSnapshot, Snapshot, TaskSnapshot};
use embed_cache::EmbedCache;
use generate::VqaBackend;
pub use generate::{stop_name, GenerationArgs};
use handle::Shared;
pub use handle::{Handle, MAX_QUEUED_REQUESTS};
use image_queries::LabelledImages;
pub use image_queries::QueryImage;
pub use planner::{DepthArg, GroundAnswer, GroundArgs, ScoreAnswer, Target};

use crate::lock;

/// A camera frame as received.
#[derive(Debug)]
pub struct Frame {
    /// Its camera: an index into `cameras`.
    pub camera: usize,
    pub header: FrameHeader,
    pub image: RawImage,
    /// The topic it came from (named in errors).
    pub source: Arc<str>,
    pub received: Instant,
}

/// Where a request's image comes from: the image sent with it, or else the latest frame of
/// `camera`, whose vocabulary, depth and tracks the request also uses.
pub struct ImageArg {
    /// An index into `cameras`.
    pub camera: usize,
    pub given: Option<(FrameHeader, RawImage)>,
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
        /// Example images as further stream prompts (with `prompts`: `None` keeps both).
        prompt_images: Vec<QueryImage>,
        /// `~/set_queries` or `~/queries`, for messages.
        origin: &'static str,
        /// The camera whose own vocabulary this sets; `None`: the shared one.
        camera: Option<usize>,
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
        /// Empty: the current prompts (unless there are prompt images).
        prompts: Vec<String>,
        /// Example images as further prompts, after the text ones.
        prompt_images: Vec<QueryImage>,
        threshold: Option<f32>,
        reply: Reply<Outcome<SegmentationResult>>,
    },
    Ask {
        image: ImageArg,
        question: String,
        top_k: Option<usize>,
        reply: Reply<Outcome<VqaResult>>,
    },
    /// A BLIP caption.
    Caption {
        image: ImageArg,
        prompt: Option<String>,
        generation: GenerationArgs,
        reply: Reply<Outcome<GeneratedText>>,
    },
    /// Zero-shot classification among labels.
    Classify {
        image: ImageArg,
        /// Empty: `clip.labels`.
        labels: Vec<String>,
        /// `None`: `clip.hypothesis_template`.
        template: Option<String>,
        reply: Reply<Outcome<ClassificationResult>>,
    },
    /// SayCan-style affordances of object phrases.
    Score {
        image: ImageArg,
        depth: DepthArg,
        phrases: Vec<String>,
        threshold: Option<f32>,
        /// Also caption the image.
        with_caption: bool,
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
            Request::Classify { reply, .. } => reply.is_closed(),
            Request::Caption { reply, .. } => reply.is_closed(),
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
            Request::Classify { reply, .. } => {
                let _ = reply.send(Err(message));
            }
            Request::Caption { reply, .. } => {
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

/// One processed frame's detections, for the sink.
#[derive(Debug, Clone)]
pub struct FrameDetections {
    /// The camera of the frame (an index into `cameras`).
    pub camera: usize,
    pub header: FrameHeader,
    pub model: String,
    pub result: DetectionResult,
    /// Per detection its 3D position in the camera optical frame, when depth was paired with
    /// the frame (empty when depth is off).
    pub positions: Vec<Option<Object3d>>,
    /// Per detection its track id ([`tracks::NO_TRACK`]: none; empty when tracking is off).
    pub tracks: Vec<u64>,
    /// Per detection its points in the camera optical frame (empty unless `pointcloud.enabled`
    /// and depth was paired with the frame; `None`: too little depth under it).
    pub clouds: Vec<Option<Vec<Point3<f32>>>>,
    pub latency: Duration,
}

/// Where the worker's results and log lines go (the ROS publishers, or a test double).
pub trait Sink: Send + 'static {
    fn detections(&mut self, frame: FrameDetections);
    fn segmentation(
        &mut self,
        camera: usize,
        header: &FrameHeader,
        model: &str,
        r: &SegmentationResult,
        latency: Duration,
    );
    fn overlay(&mut self, camera: usize, header: &FrameHeader, image: &RgbImage);
    fn answer(&mut self, header: &FrameHeader, model: &str, r: &VqaResult, latency: Duration);
    /// A stream frame's caption (`caption.rate`).
    fn caption(
        &mut self,
        camera: usize,
        header: &FrameHeader,
        model: &str,
        r: &GeneratedText,
        latency: Duration,
    );
    /// A processed frame's classification among `clip.labels`.
    fn classification(
        &mut self,
        camera: usize,
        header: &FrameHeader,
        model: &str,
        r: &ClassificationResult,
        latency: Duration,
    );
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
    Classification,
    Caption,
}

impl Task {
    const ALL: [Task; 5] = [
        Task::Detection,
        Task::Segmentation,
        Task::Vqa,
        Task::Classification,
        Task::Caption,
    ];

    fn label(self) -> &'static str {
        match self {
            Task::Detection => "detection (owlvit)",
            Task::Segmentation => "segmentation (clipseg)",
            Task::Vqa => "vqa (vilt)",
            Task::Classification => "classification (clip)",
            Task::Caption => "captioning (blip)",
        }
    }

    /// The parameter group of its model.
    fn group(self) -> &'static str {
        match self {
            Task::Detection => "owlvit",
            Task::Segmentation => "clipseg",
            Task::Vqa => "vilt",
            Task::Classification => "clip",
            Task::Caption => "blip",
        }
    }

    /// `(enabled, model)` of its parameter group.
    fn model(self, params: &NodeParams) -> (bool, &str) {
        match self {
            Task::Detection => (params.owlvit.enabled, &params.owlvit.model),
            Task::Segmentation => (params.clipseg.enabled, &params.clipseg.model),
            Task::Vqa => (params.vilt.enabled, &params.vilt.model),
            Task::Classification => (params.clip.enabled, &params.clip.model),
            Task::Caption => (params.blip.enabled, &params.blip.model),
        }
    }
}

/// Starts the worker thread: it loads the enabled models, then serves frames and requests
/// until [`Handle::shutdown`].
pub fn spawn<S: Sink>(
    params: NodeParams,
    options: LoadOptions,
    sink: S,
    depth: Vec<Option<Arc<DepthSync>>>,
    lifecycle: bool,
) -> std::io::Result<(Handle, std::thread::JoinHandle<()>)> {
    let tasks = Task::ALL
        .iter()
        .map(|&t| {
            let (enabled, model) = t.model(&params);
            TaskSnapshot {
                task: t.label(),
                model: model.to_string(),
                state: match (enabled, lifecycle) {
                    (false, _) => ModelState::Disabled,
                    (true, false) => ModelState::Loading,
                    (true, true) => ModelState::Unconfigured,
                },
            }
        })
        .collect();
    let shared = Arc::new(Shared::new(&params, tasks, lifecycle));
    let handle = Handle {
        shared: Arc::clone(&shared),
    };
    let worker = Worker {
        shared,
        detection_vocab: DetectionVocab {
            queries: params.owlvit.queries.clone(),
            images: None,
        },
        segmentation_vocab: SegmentationVocab {
            prompts: params.clipseg.prompts.clone(),
            images: Arc::default(),
        },
        cameras: CameraState::all(&params, depth),
        options,
        sink,
        detector: None,
        segmenter: None,
        vqa: None,
        classifier: None,
        captioner: None,
        query_cache: EmbedCache::default(),
        prompt_cache: EmbedCache::default(),
        label_cache: EmbedCache::default(),
        limiter: LogLimiter::default(),
        load_on_start: !lifecycle,
        params,
    };
    let join = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || worker.run())?;
    Ok((handle, join))
}

enum Next {
    Job(Box<Job>),
    /// The due frames of one or more cameras, processed as one batch.
    Frames(Vec<Arc<Frame>>),
}

struct Worker<S: Sink> {
    shared: Arc<Shared>,
    params: NodeParams,
    options: LoadOptions,
    sink: S,
    detector: Option<Detector>,
    segmenter: Option<Segmenter>,
    vqa: Option<VqaBackend>,
    classifier: Option<Classifier>,
    captioner: Option<BlipGenerator>,
    /// The shared stream vocabulary: the detection queries (or query images) and the
    /// segmentation prompts of every camera without its own.
    detection_vocab: DetectionVocab,
    segmentation_vocab: SegmentationVocab,
    /// Per camera its depth, tracks, schedule and own vocabulary.
    cameras: Vec<CameraState>,
    query_cache: EmbedCache<QueryEmbeddings>,
    prompt_cache: EmbedCache<PromptEmbeddings>,
    /// Label embeddings, keyed by the template followed by the labels.
    label_cache: EmbedCache<LabelEmbeddings>,
    limiter: LogLimiter,
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
                Next::Frames(frames) => self.process_frames(&frames),
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

    /// Waits for the next request, or the pending frames of the cameras whose rate allows one:
    /// every such camera's latest frame together, as one batch. A camera with no frame pending
    /// (one that stopped sending) is simply not in it.
    fn next(&mut self) -> Option<Next> {
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if inbox.shutdown {
                return None;
            }
            if let Some(job) = inbox.jobs.pop_front() {
                return Some(Next::Job(Box::new(job)));
            }
            let now = Instant::now();
            let mut due = Vec::new();
            let mut wait: Option<Duration> = None;
            for (slot, camera) in inbox.frames.iter_mut().zip(&mut self.cameras) {
                if slot.is_none() {
                    continue;
                }
                if now >= camera.next_frame_at {
                    camera.schedule(now, self.params.rate);
                    due.extend(slot.take());
                } else {
                    let w = camera.next_frame_at - now;
                    wait = Some(wait.map_or(w, |v| v.min(w)));
                }
            }
            if !due.is_empty() {
                return Some(Next::Frames(due));
            }
            if let Some(wait) = wait {
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
            let msg = format!("{message}{}", suppressed_note(suppressed));
            self.sink.log(level, &msg);
        }
    }

    fn bad_frame(&mut self, camera: usize, e: &FrameError) {
        let msg = e.to_string();
        {
            let mut s = lock(&self.shared.stats);
            s.last_bad_frame = msg.clone();
            if let Some(c) = s.cameras.get_mut(camera) {
                c.frames_bad += 1;
            }
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
                | Request::Classify { .. }
                | Request::Caption { .. }
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
                prompt_images,
                origin,
                camera,
                reply,
            } => {
                let r = if detection_images.is_empty() {
                    self.set_vocabulary(camera, detection, prompts, prompt_images, origin)
                } else {
                    self.set_image_vocabulary(camera, detection_images)
                        .and_then(|images| {
                            let rest =
                                self.set_vocabulary(camera, None, prompts, prompt_images, origin)?;
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
                prompt_images,
                threshold,
                reply,
            } => {
                let r = self.segment(image, prompts, prompt_images, threshold);
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
            Request::Classify {
                image,
                labels,
                template,
                reply,
            } => {
                let _ = reply.send(self.classify(image, labels, template));
            }
            Request::Caption {
                image,
                prompt,
                generation,
                reply,
            } => {
                let _ = reply.send(self.caption(image, prompt, generation));
            }
            Request::Score {
                image,
                depth,
                phrases,
                threshold,
                with_caption,
                reply,
            } => {
                let _ = reply.send(self.score(image, depth, phrases, threshold, with_caption));
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
