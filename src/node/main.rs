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
mod log_limiter;
mod memory;
mod outputs;
mod params;
mod services;
mod tf;
mod worker;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{FutureExt, Stream, StreamExt};
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::sensor_msgs::msg::{CameraInfo, CompressedImage, Image};
use r2r::std_msgs::msg::String as StringMsg;
use r2r::tf2_msgs::msg::TFMessage;
use r2r::vlm_perception_msgs::srv;
use r2r::QosProfile;
use tokio::signal::unix::{signal, SignalKind};
use vlm_perception::pipeline::LoadOptions;

use convert::{FrameHeader, RawImage};
use depth_sync::{stamp_ns, DepthSync};
use live_params::LiveParams;
use log_limiter::{suppressed_note, LogLimiter};
use memory::Memory;
use outputs::{Outputs, Publishers, StreamSink};
use params::{split_texts, CameraSpec, NodeParams, ParamError};
use services::{
    ask_call, caption_call, classify_call, detect_call, get_objects_call, ground_call, score_call,
    segment_call, serve, set_queries_call, ServiceTimeout, Services,
};
use tf::Transforms;
use worker::{Frame, Handle, Job, Level, Request};

/// The node's default name (remappable with `-r __node:=...`).
const NODE_NAME: &str = "vlm_perception";
/// Depth of the reliable output topics.
const OUTPUT_DEPTH: usize = 10;
/// tf2_ros's `TransformListener` QoS depth for `/tf` and `/tf_static`.
const TF_DEPTH: usize = 100;
/// A refused transform is logged at most this often per edge and reason.
const TF_LOG_PERIOD: Duration = Duration::from_secs(5);
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

/// A lock whose holder panicked still guards consistent data here (counters, caches, the
/// buffer): take it rather than spread the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    let publishers = Outputs {
        logger: logger.clone(),
        answers: node.create_publisher("~/answers", output_qos())?,
        cameras: params
            .cameras
            .iter()
            .map(|c| camera_publishers(&mut node, c, &params, &logger))
            .collect::<Result<_>>()?,
    };
    let diagnostics = node.create_publisher::<DiagnosticArray>("/diagnostics", output_qos())?;
    let transforms = Arc::new(Transforms::new(&params.tf));
    // Latched, as a map: a planner that starts later gets the memory at once.
    let objects_qos = QosProfile::default()
        .reliable()
        .transient_local()
        .keep_last(1);
    let memory = Arc::new(Memory::new(
        params.objects_forget_after,
        node.create_publisher("~/objects", objects_qos)?,
        logger.clone(),
    ));
    let (sink, staged) = StreamSink::new(publishers.clone(), transforms.clone(), memory.clone());

    // Inputs.
    let inputs = params
        .cameras
        .iter()
        .enumerate()
        .map(|(i, c)| CameraInputs::subscribe(&mut node, &fqn, i, c, &params))
        .collect::<Result<Vec<_>>>()?;
    let depth_syncs: Vec<Option<Arc<DepthSync>>> = inputs.iter().map(|c| c.sync.clone()).collect();
    // As tf2_ros's TransformListener: /tf reliable and volatile, /tf_static reliable and
    // transient local (a late joiner still gets the static tree), both keep last 100.
    let tf_qos = QosProfile::default().reliable().keep_last(TF_DEPTH);
    let tf_sub = node.subscribe::<TFMessage>("/tf", tf_qos.clone().volatile())?;
    let tf_static_sub = node.subscribe::<TFMessage>("/tf_static", tf_qos.transient_local())?;
    let queries_sub = node.subscribe::<StringMsg>("~/queries", QosProfile::default())?;
    let prompts_sub = node.subscribe::<StringMsg>("~/prompts", QosProfile::default())?;

    let services = QosProfile::services_default();
    let set_queries =
        node.create_service::<srv::SetQueries::Service>("~/set_queries", services.clone())?;
    let detect = node.create_service::<srv::Detect::Service>("~/detect", services.clone())?;
    let segment = node.create_service::<srv::Segment::Service>("~/segment", services.clone())?;
    let ask = node.create_service::<srv::Ask::Service>("~/ask", services.clone())?;
    let classify = node.create_service::<srv::Classify::Service>("~/classify", services.clone())?;
    let caption = node.create_service::<srv::Caption::Service>("~/caption", services.clone())?;
    let score = node.create_service::<srv::Score::Service>("~/score", services.clone())?;
    let ground = node.create_service::<srv::Ground::Service>("~/ground", services.clone())?;
    let get_objects = node.create_service::<srv::GetObjects::Service>("~/get_objects", services)?;

    log(
        &logger,
        Level::Info,
        &format!(
            "{fqn}: {} ({:?}, {}), device {} {}, rate {} Hz, detection {}, \
             segmentation {}, vqa {}, classification {}, captioning {}, overlay {}",
            camera_summary(&params),
            params.camera.transport,
            if params.camera.reliable {
                "reliable"
            } else {
                "best effort"
            },
            params.device,
            params.dtype,
            params.rate,
            model_or_off(params.owlvit.enabled, &params.owlvit.model),
            model_or_off(params.clipseg.enabled, &params.clipseg.model),
            model_or_off(params.vilt.enabled, &params.vilt.model),
            model_or_off(params.clip.enabled, &params.clip.model),
            model_or_off(params.blip.enabled, &params.blip.model),
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
        sink,
        depth_syncs.clone(),
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
            transforms.clone(),
            memory.clone(),
            logger.clone(),
        ));
        let mut tf_listener = TfListener {
            tf: Box::new(tf_sub),
            tf_static: Box::new(tf_static_sub),
            transforms: transforms.clone(),
            logger: logger.clone(),
            limiter: LogLimiter::with_period(TF_LOG_PERIOD),
        };
        tokio::spawn(outputs::tf_stage(
            staged,
            publishers,
            transforms.clone(),
            memory.clone(),
        ));
        tokio::spawn(forget_objects(memory.clone()));
        for camera in inputs {
            camera.spawn(&handle);
        }
        tokio::spawn(vocabulary_topic(queries_sub, handle.clone(), true));
        tokio::spawn(vocabulary_topic(prompts_sub, handle.clone(), false));
        let calls = Services {
            cameras: Arc::new(params.cameras.clone()),
            worker: handle.clone(),
            tf: transforms.clone(),
            memory: memory.clone(),
        };
        let t = &timeout;
        tokio::spawn(serve(
            set_queries,
            calls.clone(),
            t.clone(),
            set_queries_call,
        ));
        tokio::spawn(serve(detect, calls.clone(), t.clone(), detect_call));
        tokio::spawn(serve(segment, calls.clone(), t.clone(), segment_call));
        tokio::spawn(serve(ask, calls.clone(), t.clone(), ask_call));
        tokio::spawn(serve(classify, calls.clone(), t.clone(), classify_call));
        tokio::spawn(serve(caption, calls.clone(), t.clone(), caption_call));
        tokio::spawn(serve(score, calls.clone(), t.clone(), score_call));
        tokio::spawn(serve(ground, calls.clone(), t.clone(), ground_call));
        tokio::spawn(serve(
            get_objects,
            calls.clone(),
            t.clone(),
            get_objects_call,
        ));
        tokio::spawn(publish_diagnostics(
            diagnostics,
            handle.clone(),
            depth_syncs,
            transforms.clone(),
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
                tf_listener.drain();
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
    camera: usize,
    source: Arc<str>,
    to_raw: fn(M) -> (FrameHeader, RawImage),
) {
    while let Some(msg) = sub.next().await {
        let received = Instant::now();
        let (header, image) = to_raw(msg);
        handle.push_frame(Frame {
            camera,
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
                prompt_images: Vec::new(),
                origin,
                camera: None,
                reply: None,
            },
            deadline: Instant::now() + Duration::from_secs(3600),
        };
        let _ = handle.submit(job);
    }
}

type TfStream = Box<dyn Stream<Item = TFMessage> + Unpin + Send>;

/// `/tf` and `/tf_static` into the transform buffer, drained on the executor thread right after
/// each `spin_once`: r2r hands a subscription's messages over through a channel of 10 and drops
/// the rest without a word, so a burst of transforms (a static tree from many broadcasters, a
/// busy machine) would be lost if an async task took them. A spin takes at most one message per
/// subscription, so draining after each one loses none. A refused transform (NaN, a loop, older
/// than the cache, ...) is logged, at most once per edge every few seconds, and counted on
/// /diagnostics.
struct TfListener {
    tf: TfStream,
    tf_static: TfStream,
    transforms: Arc<Transforms>,
    logger: String,
    /// Per edge.
    limiter: LogLimiter,
}

impl TfListener {
    fn drain(&mut self) {
        let mut any = false;
        while let Some(Some(msg)) = self.tf.next().now_or_never() {
            self.take(&msg, false);
            any = true;
        }
        while let Some(Some(msg)) = self.tf_static.next().now_or_never() {
            self.take(&msg, true);
            any = true;
        }
        if any {
            self.transforms.arrived();
        }
    }

    fn take(&mut self, msg: &TFMessage, is_static: bool) {
        for t in &msg.transforms {
            let (parent, child, stamp, transform) = convert::transform_stamped(t);
            if let Err(e) = self
                .transforms
                .add(parent, child, stamp, transform, is_static)
            {
                let key = format!("{parent}->{child}");
                if let Some(suppressed) = self.limiter.allow(&key, Instant::now()) {
                    let topic = if is_static { "/tf_static" } else { "/tf" };
                    log(
                        &self.logger,
                        Level::Warn,
                        &format!(
                            "{topic}: ignoring a transform: {e}{}",
                            suppressed_note(suppressed)
                        ),
                    );
                }
            }
        }
    }
}

/// Objects are forgotten on schedule even while no frame comes.
/// A task's model for the startup line, or "off".
fn model_or_off(enabled: bool, model: &str) -> &str {
    if enabled {
        model
    } else {
        "off"
    }
}

async fn forget_objects(memory: Arc<Memory>) {
    let mut tick = tokio::time::interval(memory::FORGET_CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        memory.forget();
    }
}

/// Accepted `ros2 param set` changes: the new values go to the worker (in order with the
/// requests), to the service timeout and to the transforms (target_frame, tf.timeout).
async fn parameter_changes(
    mut events: impl Stream<Item = (String, r2r::ParameterValue)> + Unpin,
    live: Arc<Mutex<LiveParams>>,
    handle: Handle,
    timeout: ServiceTimeout,
    transforms: Arc<Transforms>,
    memory: Arc<Memory>,
    logger: String,
) {
    while let Some((name, value)) = events.next().await {
        let params = live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone();
        timeout.set(params.service_timeout);
        transforms.set_params(&params.tf);
        memory.set_forget_after(params.objects_forget_after);
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

async fn publish_diagnostics(
    publisher: r2r::Publisher<DiagnosticArray>,
    handle: Handle,
    depth: Vec<Option<Arc<DepthSync>>>,
    transforms: Arc<Transforms>,
    fqn: String,
    period: Duration,
    logger: String,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut warned = false;
    loop {
        tick.tick().await;
        let counters: Vec<_> = depth
            .iter()
            .map(|d| d.as_ref().map(|d| d.counters()))
            .collect();
        let msg = convert::diagnostics(&fqn, &handle.snapshot(), &counters, &transforms.stats());
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

/// One camera's stream topics.
fn camera_publishers(
    node: &mut r2r::Node,
    camera: &CameraSpec,
    params: &NodeParams,
    logger: &str,
) -> Result<Publishers> {
    let topic = |base: &str| camera.output(base);
    Ok(Publishers {
        logger: logger.to_string(),
        detections: node.create_publisher(&topic("detections"), output_qos())?,
        segmentation: node.create_publisher(&topic("segmentation"), output_qos())?,
        classification: node.create_publisher(&topic("classification"), output_qos())?,
        captions: node.create_publisher(&topic("captions"), output_qos())?,
        // always there: `overlay.enabled` can be switched on at run time
        overlay: Some(node.create_publisher(&topic("overlay"), output_qos())?),
        markers: if params.depth.enabled {
            Some(node.create_publisher(&topic("markers"), output_qos())?)
        } else {
            None
        },
        // with depth, whether or not pointcloud.enabled (live) asks for clouds yet
        object_points: if params.depth.enabled {
            Some(node.create_publisher(&topic("objects/points"), output_qos())?)
        } else {
            None
        },
        #[cfg(feature = "vision_msgs")]
        detections_2d: node.create_publisher(&topic("detections_2d"), output_qos())?,
        #[cfg(feature = "vision_msgs")]
        detections_3d: node.create_publisher(&topic("detections_3d"), output_qos())?,
    })
}

/// The cameras for the startup line.
fn camera_summary(params: &NodeParams) -> String {
    let topics: Vec<String> = params
        .cameras
        .iter()
        .map(|c| format!("`{}`", c.input(&params.camera.topic)))
        .collect();
    match topics.as_slice() {
        [one] => format!("camera {one}"),
        many => format!("{} cameras {}", many.len(), many.join(", ")),
    }
}

type Sub<M> = Box<dyn Stream<Item = M> + Unpin + Send>;

/// One camera's subscriptions: its image (raw and/or compressed) and, with depth, its aligned
/// depth and calibration.
struct CameraInputs {
    index: usize,
    raw: Option<(Sub<Image>, Arc<str>)>,
    compressed: Option<(Sub<CompressedImage>, Arc<str>)>,
    depth: Option<(Sub<Image>, Sub<CameraInfo>)>,
    sync: Option<Arc<DepthSync>>,
}

impl CameraInputs {
    fn subscribe(
        node: &mut r2r::Node,
        fqn: &str,
        index: usize,
        camera: &CameraSpec,
        params: &NodeParams,
    ) -> Result<Self> {
        let mut qos = if params.camera.reliable {
            QosProfile::default()
        } else {
            QosProfile::sensor_data()
        };
        qos = qos.keep_last(params.camera.depth);
        let topic = camera.input(&params.camera.topic);
        let raw = if params.camera.transport.raw() {
            let sub: Sub<Image> = Box::new(node.subscribe::<Image>(&topic, qos.clone())?);
            Some((sub, Arc::from(resolve(fqn, &topic))))
        } else {
            None
        };
        let compressed_topic = format!("{}/compressed", topic.trim_end_matches('/'));
        let compressed = if params.camera.transport.compressed() {
            let sub: Sub<CompressedImage> =
                Box::new(node.subscribe::<CompressedImage>(&compressed_topic, qos.clone())?);
            Some((sub, Arc::from(resolve(fqn, &compressed_topic))))
        } else {
            None
        };
        let depth = if params.depth.enabled {
            let depth: Sub<Image> =
                Box::new(node.subscribe::<Image>(&camera.input(&params.depth.topic), qos.clone())?);
            let info: Sub<CameraInfo> = Box::new(
                node.subscribe::<CameraInfo>(&camera.input(&params.depth.camera_info_topic), qos)?,
            );
            Some((depth, info))
        } else {
            None
        };
        Ok(Self {
            index,
            raw,
            compressed,
            sync: depth
                .is_some()
                .then(|| Arc::new(DepthSync::new(params.depth.slop))),
            depth,
        })
    }

    /// Its tasks on the async runtime: frames into the worker's mailbox, depth into pairing.
    fn spawn(self, handle: &Handle) {
        if let Some((sub, source)) = self.raw {
            tokio::spawn(frames(
                sub,
                handle.clone(),
                self.index,
                source,
                RawImage::from_image,
            ));
        }
        if let Some((sub, source)) = self.compressed {
            tokio::spawn(frames(
                sub,
                handle.clone(),
                self.index,
                source,
                RawImage::from_compressed,
            ));
        }
        if let (Some((depth, info)), Some(sync)) = (self.depth, self.sync) {
            tokio::spawn(depth_frames(depth, sync.clone()));
            tokio::spawn(camera_infos(info, sync));
        }
    }
}
