//! `vlm_perception_node`: the ROS 2 front end (feature `ros`), built with r2r.
//!
//! Subscribes a camera (`sensor_msgs/Image` and/or `CompressedImage`), runs open-vocabulary
//! detection (and segmentation when prompts are set) on the latest frame at up to `rate` Hz, and
//! answers Detect / Segment / Ask / SetQueries services. Inference runs on one worker thread
//! ([`worker`]); this file is the glue: parameters, publishers, subscriptions, services and the
//! one `spawn_blocking` loop that spins the node.
//!
//! Exit codes: 0 clean shutdown, 1 runtime error, 2 invalid parameters.

mod convert;
mod depth_sync;
mod lifecycle;
mod live_params;
mod params;
mod worker;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::sensor_msgs::msg::{CameraInfo, CompressedImage, Image};
use r2r::std_msgs::msg::String as StringMsg;
use r2r::visualization_msgs::msg::MarkerArray;
use r2r::vlm_perception_msgs::{msg as vmsg, srv};
use r2r::{QosProfile, ServiceRequest, WrappedServiceTypeSupport};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use vlm_perception::pipeline::{DetectionResult, LoadOptions};

use convert::{FrameHeader, RawImage};
use depth_sync::{stamp_ns, DepthSync};
use live_params::LiveParams;
use params::{split_texts, NodeParams, ParamError};
use vlm_perception::pipeline::{SegmentationResult, VqaResult};
use vlm_perception::vision::depth::Object3d;
use worker::{
    DepthArg, Frame, GroundArgs, Handle, ImageArg, Job, Level, Outcome, Reply, Request, Sink,
};

/// The node's default name (remappable with `-r __node:=...`).
const NODE_NAME: &str = "vlm_perception";
/// Depth of the reliable output topics.
const OUTPUT_DEPTH: usize = 10;
/// How often the executor thread wakes up when idle.
const SPIN_TIMEOUT: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    init_tracing();
    let kept = vlm_perception::pipeline::host_memory::keep_freed_memory();
    tracing::debug!(kept, "heap: freed memory kept for reuse");
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("[vlm_perception_node] error: {err:#}");
            if err.downcast_ref::<ParamError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// r2r's log macros panic on a NUL byte (CString); user text can contain one.
fn clean(msg: &str) -> String {
    msg.replace('\0', "\\0")
}

fn log(logger: &str, level: Level, msg: &str) {
    let msg = clean(msg);
    match level {
        Level::Info => r2r::log_info!(logger, "{msg}"),
        Level::Warn => r2r::log_warn!(logger, "{msg}"),
        Level::Error => r2r::log_error!(logger, "{msg}"),
    }
}

/// The worker's outputs: the result topics.
struct Publishers {
    logger: String,
    detections: r2r::Publisher<vmsg::DetectionArray>,
    segmentation: r2r::Publisher<vmsg::SegmentationArray>,
    answers: r2r::Publisher<vmsg::Answer>,
    overlay: Option<r2r::Publisher<Image>>,
    /// RViz boxes of the located detections (depth on).
    markers: Option<r2r::Publisher<MarkerArray>>,
    #[cfg(feature = "vision_msgs")]
    detections_2d: r2r::Publisher<r2r::vision_msgs::msg::Detection2DArray>,
    #[cfg(feature = "vision_msgs")]
    detections_3d: r2r::Publisher<r2r::vision_msgs::msg::Detection3DArray>,
}

impl Publishers {
    fn check(&self, what: &str, r: r2r::Result<()>) {
        if let Err(e) = r {
            log(
                &self.logger,
                Level::Error,
                &format!("cannot publish {what}: {e}"),
            );
        }
    }
}

impl Sink for Publishers {
    fn detections(
        &mut self,
        header: &FrameHeader,
        model: &str,
        r: &DetectionResult,
        positions: &[Option<Object3d>],
        latency: Duration,
    ) {
        let msg = convert::detection_array(header, model, r, positions, latency);
        self.check("detections", self.detections.publish(&msg));
        if let Some(p) = &self.markers {
            let msg = convert::markers(header, r, positions);
            self.check("markers", p.publish(&msg));
        }
        #[cfg(feature = "vision_msgs")]
        {
            let msg = convert::detection_2d_array(header, r);
            self.check("detections_2d", self.detections_2d.publish(&msg));
            if let Some(msg) = convert::detection_3d_array(header, r, positions) {
                self.check("detections_3d", self.detections_3d.publish(&msg));
            }
        }
    }

    fn segmentation(
        &mut self,
        header: &FrameHeader,
        model: &str,
        r: &SegmentationResult,
        latency: Duration,
    ) {
        let msg = convert::segmentation_array(header, model, r, latency);
        self.check("segmentation", self.segmentation.publish(&msg));
    }

    fn overlay(&mut self, header: &FrameHeader, image: &image::RgbImage) {
        if let Some(p) = &self.overlay {
            let msg = convert::rgb_image_msg(header, image);
            self.check("overlay", p.publish(&msg));
        }
    }

    fn answer(&mut self, header: &FrameHeader, model: &str, r: &VqaResult, latency: Duration) {
        let msg = convert::answer(header, model, r, latency);
        self.check("answer", self.answers.publish(&msg));
    }

    fn log(&mut self, level: Level, message: &str) {
        log(&self.logger, level, message);
    }
}

fn output_qos() -> QosProfile {
    QosProfile::default().keep_last(OUTPUT_DEPTH)
}

fn run() -> Result<()> {
    let ctx = r2r::Context::create().context("cannot create the ROS context")?;
    let mut node = r2r::Node::create(ctx, NODE_NAME, "").context("cannot create the node")?;
    let fqn = node.fully_qualified_name()?;
    let logger = node.logger().to_string();

    let map = {
        let p = node.params.lock().unwrap_or_else(|p| p.into_inner());
        convert::param_map(p.iter())
    };
    let params = NodeParams::from_map(&map)?;
    for name in NodeParams::unknown(&map) {
        log(
            &logger,
            Level::Warn,
            &format!("ignoring unknown parameter `{name}`"),
        );
    }
    let options = LoadOptions::parse(&params.device, &params.dtype).map_err(|e| {
        let name = if matches!(e, vlm_perception::Error::DType(_)) {
            "dtype"
        } else {
            "device"
        };
        ParamError {
            name: name.into(),
            reason: e.to_string(),
        }
    })?;

    // Outputs.
    let publishers = Publishers {
        logger: logger.clone(),
        detections: node.create_publisher("~/detections", output_qos())?,
        segmentation: node.create_publisher("~/segmentation", output_qos())?,
        answers: node.create_publisher("~/answers", output_qos())?,
        // always there: `overlay.enabled` can be switched on at run time
        overlay: Some(node.create_publisher("~/overlay", output_qos())?),
        markers: if params.depth.enabled {
            Some(node.create_publisher("~/markers", output_qos())?)
        } else {
            None
        },
        #[cfg(feature = "vision_msgs")]
        detections_2d: node.create_publisher("~/detections_2d", output_qos())?,
        #[cfg(feature = "vision_msgs")]
        detections_3d: node.create_publisher("~/detections_3d", output_qos())?,
    };
    let diagnostics = node.create_publisher::<DiagnosticArray>("/diagnostics", output_qos())?;

    // Inputs.
    let mut camera_qos = if params.camera.reliable {
        QosProfile::default()
    } else {
        QosProfile::sensor_data()
    };
    camera_qos = camera_qos.keep_last(params.camera.depth);
    let topic = params.camera.topic.clone();
    let raw_sub = if params.camera.transport.raw() {
        Some(node.subscribe::<Image>(&topic, camera_qos.clone())?)
    } else {
        None
    };
    let compressed_topic = format!("{}/compressed", topic.trim_end_matches('/'));
    let compressed_sub = if params.camera.transport.compressed() {
        Some(node.subscribe::<CompressedImage>(&compressed_topic, camera_qos.clone())?)
    } else {
        None
    };
    let depth_subs = if params.depth.enabled {
        Some((
            node.subscribe::<Image>(&params.depth.topic, camera_qos.clone())?,
            node.subscribe::<CameraInfo>(&params.depth.camera_info_topic, camera_qos.clone())?,
        ))
    } else {
        None
    };
    let depth_sync = params
        .depth
        .enabled
        .then(|| Arc::new(DepthSync::new(params.depth.slop)));
    let queries_sub = node.subscribe::<StringMsg>("~/queries", QosProfile::default())?;
    let prompts_sub = node.subscribe::<StringMsg>("~/prompts", QosProfile::default())?;

    let services = QosProfile::services_default();
    let set_queries =
        node.create_service::<srv::SetQueries::Service>("~/set_queries", services.clone())?;
    let detect = node.create_service::<srv::Detect::Service>("~/detect", services.clone())?;
    let segment = node.create_service::<srv::Segment::Service>("~/segment", services.clone())?;
    let ask = node.create_service::<srv::Ask::Service>("~/ask", services.clone())?;
    let score = node.create_service::<srv::Score::Service>("~/score", services.clone())?;
    let ground = node.create_service::<srv::Ground::Service>("~/ground", services)?;

    log(
        &logger,
        Level::Info,
        &format!(
            "{fqn}: camera `{topic}` ({:?}, {}), device {} {}, rate {} Hz, detection {}, \
             segmentation {}, vqa {}, overlay {}",
            params.camera.transport,
            if params.camera.reliable {
                "reliable"
            } else {
                "best effort"
            },
            params.device,
            params.dtype,
            params.rate,
            if params.owlvit.enabled {
                &params.owlvit.model
            } else {
                "off"
            },
            if params.clipseg.enabled {
                &params.clipseg.model
            } else {
                "off"
            },
            if params.vilt.enabled {
                &params.vilt.model
            } else {
                "off"
            },
            params.overlay
        ),
    );

    // The parameter services (`ros2 param ...`); accepted changes arrive on `param_events`.
    let live = Arc::new(Mutex::new(LiveParams {
        current: params.clone(),
    }));
    let (param_services, param_events) = node
        .make_derived_parameter_handler(live.clone())
        .context("cannot create the parameter services")?;
    let timeout = ServiceTimeout::new(params.service_timeout);

    let lifecycle_io = if params.lifecycle {
        Some((
            node.create_service::<r2r::lifecycle_msgs::srv::ChangeState::Service>(
                "~/change_state",
                QosProfile::services_default(),
            )?,
            node.create_service::<r2r::lifecycle_msgs::srv::GetState::Service>(
                "~/get_state",
                QosProfile::services_default(),
            )?,
            node.create_service::<r2r::lifecycle_msgs::srv::GetAvailableStates::Service>(
                "~/get_available_states",
                QosProfile::services_default(),
            )?,
            node.create_service::<r2r::lifecycle_msgs::srv::GetAvailableTransitions::Service>(
                "~/get_available_transitions",
                QosProfile::services_default(),
            )?,
            node.create_service::<r2r::lifecycle_msgs::srv::GetAvailableTransitions::Service>(
                "~/get_transition_graph",
                QosProfile::services_default(),
            )?,
            node.create_publisher::<r2r::lifecycle_msgs::msg::TransitionEvent>(
                "~/transition_event",
                output_qos(),
            )?,
        ))
    } else {
        None
    };

    let (handle, join) = worker::spawn(
        params.clone(),
        options,
        publishers,
        depth_sync.clone(),
        params.lifecycle,
    )
    .context("cannot start the inference thread")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .enable_io()
        .build()
        .context("cannot start the async runtime")?;
    let shutdown_logger = logger.clone();
    let result = runtime.block_on(async move {
        tokio::spawn(param_services);
        if let Some((change, get, states, transitions, graph, events)) = lifecycle_io {
            let lc = Arc::new(lifecycle::Lifecycle::new(
                handle.clone(),
                events,
                logger.clone(),
            ));
            tokio::spawn(lifecycle::serve(
                lc,
                change,
                get,
                states,
                transitions,
                graph,
            ));
        }
        tokio::spawn(parameter_changes(
            param_events,
            live,
            handle.clone(),
            timeout.clone(),
            logger.clone(),
        ));
        let source: Arc<str> = Arc::from(resolve(&fqn, &topic));
        if let Some(sub) = raw_sub {
            tokio::spawn(frames(
                sub,
                handle.clone(),
                source.clone(),
                RawImage::from_image,
            ));
        }
        if let Some(sub) = compressed_sub {
            let source: Arc<str> = Arc::from(resolve(&fqn, &compressed_topic));
            tokio::spawn(frames(
                sub,
                handle.clone(),
                source,
                RawImage::from_compressed,
            ));
        }
        if let (Some((depth_sub, info_sub)), Some(sync)) = (depth_subs, &depth_sync) {
            tokio::spawn(depth_frames(depth_sub, sync.clone()));
            tokio::spawn(camera_infos(info_sub, sync.clone()));
        }
        tokio::spawn(vocabulary_topic(queries_sub, handle.clone(), true));
        tokio::spawn(vocabulary_topic(prompts_sub, handle.clone(), false));
        tokio::spawn(serve(
            set_queries,
            handle.clone(),
            timeout.clone(),
            set_queries_call,
        ));
        tokio::spawn(serve(detect, handle.clone(), timeout.clone(), detect_call));
        tokio::spawn(serve(
            segment,
            handle.clone(),
            timeout.clone(),
            segment_call,
        ));
        tokio::spawn(serve(ask, handle.clone(), timeout.clone(), ask_call));
        tokio::spawn(serve(score, handle.clone(), timeout.clone(), score_call));
        tokio::spawn(serve(ground, handle.clone(), timeout.clone(), ground_call));
        tokio::spawn(publish_diagnostics(
            diagnostics,
            handle.clone(),
            depth_sync.clone(),
            fqn.clone(),
            params.diagnostics_period,
            logger.clone(),
        ));
        // The one thread that spins the node: it moves messages between rcl and the streams.
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = Arc::clone(&stop);
        let mut spinner = tokio::task::spawn_blocking(move || {
            while !spinning.load(Ordering::Relaxed) {
                node.spin_once(SPIN_TIMEOUT);
            }
        });
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let stopped = tokio::select! {
            r = &mut spinner => r.context("the executor thread stopped"),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = terminate.recv() => Ok(()),
        };
        log(&shutdown_logger, Level::Info, "shutting down");
        stop.store(true, Ordering::Relaxed);
        handle.shutdown();
        if !spinner.is_finished() {
            let _ = spinner.await;
        }
        stopped
    });
    // The worker finishes the frame or request in hand, then stops.
    let _ = join.join();
    result
}

/// `topic` as rcl resolves it without remapping (for messages).
fn resolve(fqn: &str, topic: &str) -> String {
    if topic.starts_with('/') {
        topic.to_string()
    } else if let Some(rest) = topic.strip_prefix("~/") {
        format!("{fqn}/{rest}")
    } else {
        let ns = fqn.rsplit_once('/').map_or("", |(ns, _)| ns);
        format!("{ns}/{topic}")
    }
}

/// Moves camera messages into the worker's mailbox (no decoding here).
async fn frames<M>(
    mut sub: impl Stream<Item = M> + Unpin,
    handle: Handle,
    source: Arc<str>,
    to_raw: fn(M) -> (FrameHeader, RawImage),
) {
    while let Some(msg) = sub.next().await {
        let received = Instant::now();
        let (header, image) = to_raw(msg);
        handle.push_frame(Frame {
            header,
            image,
            source: source.clone(),
            received,
        });
    }
}

/// Aligned depth images into the pairing buffer (decoded here: a copy into metres).
async fn depth_frames(mut sub: impl Stream<Item = Image> + Unpin, sync: Arc<DepthSync>) {
    while let Some(msg) = sub.next().await {
        let stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec);
        sync.push_depth(stamp, convert::depth_image(&msg));
    }
}

/// The colour camera's calibration (the latest one wins).
async fn camera_infos(mut sub: impl Stream<Item = CameraInfo> + Unpin, sync: Arc<DepthSync>) {
    while let Some(msg) = sub.next().await {
        sync.set_camera(convert::camera_info(&msg));
    }
}

/// `~/queries` (detection vocabulary) and `~/prompts` (segmentation prompts): comma-separated.
async fn vocabulary_topic(
    mut sub: impl Stream<Item = StringMsg> + Unpin,
    handle: Handle,
    detection: bool,
) {
    while let Some(msg) = sub.next().await {
        let texts = split_texts(&msg.data);
        let (detection, prompts, origin) = if detection {
            (Some(texts), None, "~/queries")
        } else {
            (None, Some(texts), "~/prompts")
        };
        let job = Job {
            request: Request::SetVocabulary {
                detection,
                detection_images: Vec::new(),
                prompts,
                origin,
                reply: None,
            },
            deadline: Instant::now() + Duration::from_secs(3600),
        };
        let _ = handle.submit(job);
    }
}

/// Serves one service: each request gets its own task, which queues a job for the worker and
/// answers when the worker replies or the timeout passes, whichever comes first.
async fn serve<T, F, Fut>(
    mut requests: impl Stream<Item = ServiceRequest<T>> + Unpin,
    handle: Handle,
    timeout: ServiceTimeout,
    call: F,
) where
    T: WrappedServiceTypeSupport + 'static,
    F: Fn(Handle, Duration, T::Request) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = (bool, T::Response)> + Send + 'static,
    T::Request: Default + Send + 'static,
    T::Response: Send + 'static,
{
    while let Some(mut req) = requests.next().await {
        let handle = handle.clone();
        let timeout = timeout.get();
        tokio::spawn(async move {
            let message = std::mem::take(&mut req.message);
            let (success, response) = call(handle.clone(), timeout, message).await;
            handle.count_service(success);
            // The client may have gone away; nothing to do then.
            let _ = req.respond(response);
        });
    }
}

/// `services.timeout`, which can change at run time.
#[derive(Clone)]
struct ServiceTimeout(Arc<AtomicU64>);

impl ServiceTimeout {
    fn new(d: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(d.as_nanos() as u64)))
    }
    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
    fn set(&self, d: Duration) {
        self.0.store(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Accepted `ros2 param set` changes: the new values go to the worker (in order with the
/// requests) and to the service timeout.
async fn parameter_changes(
    mut events: impl Stream<Item = (String, r2r::ParameterValue)> + Unpin,
    live: Arc<Mutex<LiveParams>>,
    handle: Handle,
    timeout: ServiceTimeout,
    logger: String,
) {
    while let Some((name, value)) = events.next().await {
        let params = live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone();
        timeout.set(params.service_timeout);
        log(
            &logger,
            Level::Info,
            &format!("parameter `{name}` set to {value:?}"),
        );
        let job = Job {
            request: Request::Reconfigure(Box::new(params)),
            deadline: Instant::now() + Duration::from_secs(3600),
        };
        if handle.submit(job).is_err() {
            log(
                &logger,
                Level::Error,
                &format!("parameter `{name}`: the worker's queue is full, change not applied"),
            );
        }
    }
}

/// Queues `request(reply)` and waits for the worker's answer, at most `timeout`.
async fn ask_worker<T>(
    handle: &Handle,
    timeout: Duration,
    request: impl FnOnce(Reply<T>) -> Request,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    let job = Job {
        request: request(tx),
        deadline: Instant::now() + timeout,
    };
    if handle.submit(job).is_err() {
        return Err(format!(
            "busy: {} requests are already waiting",
            worker::MAX_QUEUED_REQUESTS
        ));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("internal error: the request was dropped (see the node log)".into()),
        Err(_) => Err(worker::timeout_message(timeout, handle.loading())),
    }
}

fn image_arg(image: &mut Image) -> ImageArg {
    match RawImage::from_request(image) {
        Some((header, raw)) => ImageArg::Given(header, raw),
        None => ImageArg::Latest,
    }
}

/// A request's threshold: `<= 0` (or NaN) means the node's default; above 1 is refused.
fn threshold_arg(v: f32) -> Result<Option<f32>, String> {
    match v {
        v if v > 1.0 => Err(format!("threshold must be in [0, 1], got {v}")),
        v if v > 0.0 => Ok(Some(v)),
        _ => Ok(None),
    }
}

/// A failed service answer: `success=false`, the message, everything else default.
macro_rules! failure {
    ($($response:ident)::+, $message:expr) => {
        (
            false,
            $($response)::+ {
                success: false,
                message: $message,
                ..Default::default()
            },
        )
    };
}

async fn set_queries_call(
    handle: Handle,
    timeout: Duration,
    req: srv::SetQueries::Request,
) -> (bool, srv::SetQueries::Response) {
    let detection = (!req.keep_detection).then_some(req.detection_queries);
    let prompts = (!req.keep_segmentation).then_some(req.segmentation_prompts);
    let detection_images = query_images(req.detection_query_images);
    let r = ask_worker(&handle, timeout, |reply| Request::SetVocabulary {
        detection,
        detection_images,
        prompts,
        origin: "~/set_queries",
        reply: Some(reply),
    })
    .await;
    let success = r.is_ok();
    let message = r.unwrap_or_else(|e| e);
    (success, srv::SetQueries::Response { success, message })
}

async fn detect_call(
    handle: Handle,
    timeout: Duration,
    mut req: srv::Detect::Request,
) -> (bool, srv::Detect::Response) {
    let image = image_arg(&mut req.image);
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return failure!(srv::Detect::Response, e),
    };
    let query_images = query_images(std::mem::take(&mut req.query_images));
    let r = ask_worker(&handle, timeout, |reply| Request::Detect {
        image,
        queries: req.queries,
        query_images,
        threshold,
        reply,
    })
    .await;
    match r {
        Ok(Outcome {
            header,
            model,
            result,
            latency,
        }) => (
            true,
            srv::Detect::Response {
                success: true,
                message: format!("{} detection(s)", result.detections.len()),
                detections: convert::detection_array(&header, &model, &result, &[], latency),
            },
        ),
        Err(e) => failure!(srv::Detect::Response, e),
    }
}

async fn segment_call(
    handle: Handle,
    timeout: Duration,
    mut req: srv::Segment::Request,
) -> (bool, srv::Segment::Response) {
    let image = image_arg(&mut req.image);
    let fail = |message: String| failure!(srv::Segment::Response, message);
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let r = ask_worker(&handle, timeout, |reply| Request::Segment {
        image,
        prompts: req.prompts,
        threshold,
        reply,
    })
    .await;
    match r {
        Ok(o) => (
            true,
            srv::Segment::Response {
                success: true,
                message: format!("{} mask(s)", o.result.masks.len()),
                segmentations: convert::segmentation_array(
                    &o.header, &o.model, &o.result, o.latency,
                ),
            },
        ),
        Err(e) => fail(e),
    }
}

async fn ask_call(
    handle: Handle,
    timeout: Duration,
    mut req: srv::Ask::Request,
) -> (bool, srv::Ask::Response) {
    let image = image_arg(&mut req.image);
    let top_k = usize::try_from(req.top_k).ok().filter(|k| *k > 0);
    let r = ask_worker(&handle, timeout, |reply| Request::Ask {
        image,
        question: req.question,
        top_k,
        reply,
    })
    .await;
    match r {
        Ok(o) => (
            true,
            srv::Ask::Response {
                success: true,
                message: o
                    .result
                    .answers
                    .first()
                    .map_or_else(|| "no answer".to_string(), |a| a.answer.clone()),
                answer: convert::answer(&o.header, &o.model, &o.result, o.latency),
            },
        ),
        Err(message) => failure!(srv::Ask::Response, message),
    }
}

/// A request's query images, labelled by their `header.frame_id` (the pixels are moved).
fn query_images(images: Vec<Image>) -> Vec<worker::QueryImage> {
    images
        .into_iter()
        .map(|msg| {
            let (header, image) = RawImage::from_image(msg);
            worker::QueryImage {
                label: header.frame_id,
                image,
            }
        })
        .collect()
}

/// A request's depth: the one sent with it, else the stream's pairing by the image's stamp.
fn depth_arg(depth: &Image, camera_info: &CameraInfo) -> DepthArg {
    match convert::request_depth(depth) {
        Some(depth) => DepthArg::Given {
            depth,
            camera: convert::request_camera_info(camera_info),
        },
        None => DepthArg::Stream,
    }
}

async fn score_call(
    handle: Handle,
    timeout: Duration,
    mut req: srv::Score::Request,
) -> (bool, srv::Score::Response) {
    let fail = |message: String| failure!(srv::Score::Response, message);
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let depth = depth_arg(&req.depth, &req.camera_info);
    let image = image_arg(&mut req.image);
    let r = ask_worker(&handle, timeout, |reply| Request::Score {
        image,
        depth,
        phrases: req.phrases,
        threshold,
        reply,
    })
    .await;
    match r {
        Ok(o) => {
            let found = o.result.scores.iter().filter(|s| s.found).count();
            let mut message = format!("{found} of {} phrase(s) found", o.result.scores.len());
            if let Some(note) = &o.result.depth_note {
                message.push_str(&format!("; no 3D: {note}"));
            }
            (
                true,
                srv::Score::Response {
                    success: true,
                    message,
                    header: o.header.to_msg(),
                    scores: convert::phrase_scores(&o.result.scores, &o.result.positions),
                    scene: o.result.scene,
                },
            )
        }
        Err(e) => fail(e),
    }
}

async fn ground_call(
    handle: Handle,
    timeout: Duration,
    mut req: srv::Ground::Request,
) -> (bool, srv::Ground::Response) {
    let fail = |message: String| failure!(srv::Ground::Response, message);
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let depth = depth_arg(&req.depth, &req.camera_info);
    let image = image_arg(&mut req.image);
    let place = Some(req.place.trim().to_string()).filter(|p| !p.is_empty());
    let args = GroundArgs {
        pick: req.pick,
        place,
        threshold,
        masks: req.return_masks,
    };
    let r = ask_worker(&handle, timeout, |reply| Request::Ground {
        image,
        depth,
        args,
        reply,
    })
    .await;
    match r {
        Ok(o) => {
            let g = &o.result;
            let mut message = format!("pick `{}`", g.pick.detection.label);
            if let Some(p) = &g.place {
                message.push_str(&format!(", place `{}`", p.detection.label));
            }
            if let Some(note) = &g.depth_note {
                message.push_str(&format!("; no 3D: {note}"));
            }
            (
                true,
                srv::Ground::Response {
                    success: true,
                    message,
                    header: o.header.to_msg(),
                    pick: convert::ground_target(&o.header, &g.pick),
                    has_place: g.place.is_some(),
                    place: g
                        .place
                        .as_ref()
                        .map(|p| convert::ground_target(&o.header, p))
                        .unwrap_or_default(),
                },
            )
        }
        Err(e) => fail(e),
    }
}

async fn publish_diagnostics(
    publisher: r2r::Publisher<DiagnosticArray>,
    handle: Handle,
    depth: Option<Arc<DepthSync>>,
    fqn: String,
    period: Duration,
    logger: String,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut warned = false;
    loop {
        tick.tick().await;
        let counters = depth.as_ref().map(|d| d.counters());
        let msg = convert::diagnostics(&fqn, &handle.snapshot(), counters.as_ref());
        if let Err(e) = publisher.publish(&msg) {
            if !warned {
                log(
                    &logger,
                    Level::Error,
                    &format!("cannot publish /diagnostics: {e}"),
                );
                warned = true;
            }
        }
    }
}
