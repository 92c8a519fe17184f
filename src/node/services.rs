//! The services: each call is one task that queues a job for the worker, waits for its answer
//! (at most `services.timeout`), and for the 3D answers (`~/score`, `~/ground`) waits for the
//! transform into the target frame (at most `tf.timeout`) before it responds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use r2r::sensor_msgs::msg::{CameraInfo, Image};
use r2r::vlm_perception_msgs::srv;
use r2r::{ServiceRequest, WrappedServiceTypeSupport};
use tokio::sync::oneshot;

use crate::convert::{self, RawImage};
use crate::memory::Memory;
use crate::params::CameraSpec;
use crate::tf::{Placement, Transforms};
use crate::worker::{
    self, DepthArg, GenerationArgs, GroundArgs, Handle, ImageArg, Job, Outcome, Reply, Request,
    ScoreAnswer,
};
use vlm_perception::geometry::transform_points;
use vlm_perception::pipeline::grounding::scene_description;
use vlm_perception::pipeline::Detection;

/// What every call needs: the worker, the transforms for the 3D answers, the object memory.
#[derive(Clone)]
pub struct Services {
    /// The node's cameras (the `camera` fields name them).
    pub cameras: Arc<Vec<CameraSpec>>,
    pub worker: Handle,
    pub tf: Arc<Transforms>,
    pub memory: Arc<Memory>,
}

/// Serves one service: each request gets its own task, which queues a job for the worker and
/// answers when the worker replies or the timeout passes, whichever comes first.
pub async fn serve<T, F, Fut>(
    mut requests: impl Stream<Item = ServiceRequest<T>> + Unpin,
    ctx: Services,
    timeout: ServiceTimeout,
    call: F,
) where
    T: WrappedServiceTypeSupport + 'static,
    F: Fn(Services, Duration, T::Request) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = (bool, T::Response)> + Send + 'static,
    T::Request: Default + Send + 'static,
    T::Response: Send + 'static,
{
    while let Some(mut req) = requests.next().await {
        let ctx = ctx.clone();
        let timeout = timeout.get();
        tokio::spawn(async move {
            let message = std::mem::take(&mut req.message);
            let (success, response) = call(ctx.clone(), timeout, message).await;
            ctx.worker.count_service(success);
            // The client may have gone away; nothing to do then.
            let _ = req.respond(response);
        });
    }
}

/// `services.timeout`, which can change at run time.
#[derive(Clone)]
pub struct ServiceTimeout(Arc<AtomicU64>);

impl ServiceTimeout {
    pub fn new(d: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(d.as_nanos() as u64)))
    }
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
    pub fn set(&self, d: Duration) {
        self.0.store(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Queues `request(reply)` and waits for the worker's answer, at most `timeout`.
pub async fn ask_worker<T>(
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

impl Services {
    /// A request's `camera` field as an index into `cameras` (empty: the first camera), or an
    /// error naming the cameras there are.
    fn camera(&self, name: &str) -> Result<usize, String> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(0);
        }
        self.cameras
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .cameras
                    .iter()
                    .filter(|c| !c.name.is_empty())
                    .map(|c| c.name.as_str())
                    .collect();
                if names.is_empty() {
                    format!(
                        "unknown camera `{name}`: this node serves one unnamed camera (parameter \
                         `cameras` is empty); leave `camera` empty"
                    )
                } else {
                    format!("unknown camera `{name}` (cameras: {})", names.join(", "))
                }
            })
    }

    /// A request's image: the one sent, or else the latest frame of its `camera`.
    fn image_arg(&self, camera: &str, image: &mut Image) -> Result<ImageArg, String> {
        Ok(ImageArg {
            camera: self.camera(camera)?,
            given: RawImage::from_request(image),
        })
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

pub async fn set_queries_call(
    ctx: Services,
    timeout: Duration,
    req: srv::SetQueries::Request,
) -> (bool, srv::SetQueries::Response) {
    let detection = (!req.keep_detection).then_some(req.detection_queries);
    let prompts = (!req.keep_segmentation).then_some(req.segmentation_prompts);
    let detection_images = query_images(req.detection_query_images);
    let prompt_images = query_images(req.segmentation_prompt_images);
    let camera = if req.camera.trim().is_empty() {
        None
    } else {
        match ctx.camera(&req.camera) {
            Ok(c) => Some(c),
            Err(message) => {
                return (
                    false,
                    srv::SetQueries::Response {
                        success: false,
                        message,
                    },
                )
            }
        }
    };
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::SetVocabulary {
        detection,
        detection_images,
        prompts,
        prompt_images,
        origin: "~/set_queries",
        camera,
        reply: Some(reply),
    })
    .await;
    let success = r.is_ok();
    let message = r.unwrap_or_else(|e| e);
    (success, srv::SetQueries::Response { success, message })
}

pub async fn detect_call(
    ctx: Services,
    timeout: Duration,
    mut req: srv::Detect::Request,
) -> (bool, srv::Detect::Response) {
    let image = match ctx.image_arg(&req.camera, &mut req.image) {
        Ok(image) => image,
        Err(e) => return failure!(srv::Detect::Response, e),
    };
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return failure!(srv::Detect::Response, e),
    };
    let query_images = query_images(std::mem::take(&mut req.query_images));
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::Detect {
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
                detections: convert::detection_array(
                    &header,
                    &header.frame_id,
                    &model,
                    &result,
                    &[],
                    &[],
                    latency,
                ),
            },
        ),
        Err(e) => failure!(srv::Detect::Response, e),
    }
}

pub async fn segment_call(
    ctx: Services,
    timeout: Duration,
    mut req: srv::Segment::Request,
) -> (bool, srv::Segment::Response) {
    let image = match ctx.image_arg(&req.camera, &mut req.image) {
        Ok(image) => image,
        Err(e) => return failure!(srv::Segment::Response, e),
    };
    let fail = |message: String| failure!(srv::Segment::Response, message);
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let prompt_images = query_images(std::mem::take(&mut req.prompt_images));
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::Segment {
        image,
        prompts: req.prompts,
        prompt_images,
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

pub async fn ask_call(
    ctx: Services,
    timeout: Duration,
    mut req: srv::Ask::Request,
) -> (bool, srv::Ask::Response) {
    let image = match ctx.image_arg(&req.camera, &mut req.image) {
        Ok(image) => image,
        Err(e) => return failure!(srv::Ask::Response, e),
    };
    let top_k = usize::try_from(req.top_k).ok().filter(|k| *k > 0);
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::Ask {
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

pub async fn caption_call(
    ctx: Services,
    timeout: Duration,
    mut req: srv::Caption::Request,
) -> (bool, srv::Caption::Response) {
    let image = match ctx.image_arg(&req.camera, &mut req.image) {
        Ok(image) => image,
        Err(e) => return failure!(srv::Caption::Response, e),
    };
    let prompt = (!req.prompt.is_empty()).then(|| std::mem::take(&mut req.prompt));
    // <= 0: the parameter; a positive value is checked against its range by the worker.
    let positive = |v: i32| usize::try_from(v).ok().filter(|v| *v > 0);
    let generation = GenerationArgs {
        num_beams: positive(req.num_beams),
        max_new_tokens: positive(req.max_new_tokens),
    };
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::Caption {
        image,
        prompt,
        generation,
        reply,
    })
    .await;
    match r {
        Ok(o) => (
            true,
            srv::Caption::Response {
                success: true,
                message: o.result.text.clone(),
                caption: convert::caption(&o.header, &o.model, &o.result, o.latency),
            },
        ),
        Err(message) => failure!(srv::Caption::Response, message),
    }
}

pub async fn classify_call(
    ctx: Services,
    timeout: Duration,
    mut req: srv::Classify::Request,
) -> (bool, srv::Classify::Response) {
    let image = match ctx.image_arg(&req.camera, &mut req.image) {
        Ok(image) => image,
        Err(e) => return failure!(srv::Classify::Response, e),
    };
    let template = req.hypothesis_template.trim();
    let template = (!template.is_empty()).then(|| template.to_string());
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::Classify {
        image,
        labels: req.labels,
        template,
        reply,
    })
    .await;
    match r {
        Ok(o) => (
            true,
            srv::Classify::Response {
                success: true,
                message: o
                    .result
                    .top()
                    .map_or_else(String::new, |t| format!("{} ({:.3})", t.label, t.score)),
                classification: convert::classification(&o.header, &o.model, &o.result, o.latency),
            },
        ),
        Err(message) => failure!(srv::Classify::Response, message),
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

pub async fn score_call(
    ctx: Services,
    timeout: Duration,
    mut req: srv::Score::Request,
) -> (bool, srv::Score::Response) {
    let fail = |message: String| failure!(srv::Score::Response, message);
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let depth = depth_arg(&req.depth, &req.camera_info);
    let image = match ctx.image_arg(&req.camera, &mut req.image) {
        Ok(image) => image,
        Err(e) => return failure!(srv::Score::Response, e),
    };
    let target_frame = std::mem::take(&mut req.target_frame);
    let from_memory = req.from_memory;
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::Score {
        image,
        depth,
        phrases: req.phrases,
        threshold,
        with_caption: req.with_caption,
        reply,
    })
    .await;
    match r {
        Ok(o) => {
            let mut a = o.result;
            let located = a.positions.iter().any(Option::is_some);
            let placement = ctx.tf.placement(&target_frame, &o.header, located).await;
            placement.place(&mut a.positions);
            let remembered = if from_memory {
                remember(&ctx.memory, &mut a, &placement)
            } else {
                0
            };
            let found = a.scores.iter().filter(|s| s.found).count();
            let mut message = format!("{found} of {} phrase(s) found", a.scores.len());
            if remembered > 0 {
                message.push_str(&format!(" ({remembered} from the object memory)"));
            }
            if let Some(note) = a.depth_note.as_deref().or(placement.error()) {
                message.push_str(&format!("; no 3D: {note}"));
            }
            let caption = match a.caption.take() {
                Some(Ok(text)) => {
                    // JSON-quoted, so that a planner's prompt parser can read it back
                    let quoted = serde_json::to_string(&text).unwrap_or_default();
                    a.scene.push_str(&format!("\ncaption = {quoted}"));
                    text
                }
                Some(Err(why)) => {
                    message.push_str(&format!("; no caption: {why}"));
                    String::new()
                }
                None => String::new(),
            };
            (
                true,
                srv::Score::Response {
                    success: true,
                    message,
                    header: o.header.to_msg(),
                    scores: convert::phrase_scores(&a.scores, &a.positions, &a.tracks),
                    scene: a.scene,
                    position_frame_id: placement.frame_id,
                    caption,
                },
            )
        }
        Err(e) => fail(e),
    }
}

pub async fn ground_call(
    ctx: Services,
    timeout: Duration,
    mut req: srv::Ground::Request,
) -> (bool, srv::Ground::Response) {
    let fail = |message: String| failure!(srv::Ground::Response, message);
    let threshold = match threshold_arg(req.threshold) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let depth = depth_arg(&req.depth, &req.camera_info);
    let image = match ctx.image_arg(&req.camera, &mut req.image) {
        Ok(image) => image,
        Err(e) => return failure!(srv::Ground::Response, e),
    };
    let place = Some(req.place.trim().to_string()).filter(|p| !p.is_empty());
    let target_frame = std::mem::take(&mut req.target_frame);
    let args = GroundArgs {
        pick: req.pick,
        place,
        threshold,
        masks: req.return_masks,
        points: req.return_points,
    };
    let r = ask_worker(&ctx.worker, timeout, |reply| Request::Ground {
        image,
        depth,
        args,
        reply,
    })
    .await;
    match r {
        Ok(mut o) => {
            let g = &mut o.result;
            let located =
                g.pick.point.is_some() || g.place.as_ref().is_some_and(|p| p.point.is_some());
            let placement = ctx.tf.placement(&target_frame, &o.header, located).await;
            place_target(&placement, &mut g.pick);
            if let Some(p) = &mut g.place {
                place_target(&placement, p);
            }
            let g = &o.result;
            let header_3d = placement.header(&o.header);
            let mut message = format!("pick `{}`", g.pick.detection.label);
            if let Some(p) = &g.place {
                message.push_str(&format!(", place `{}`", p.detection.label));
            }
            if let Some(note) = g.depth_note.as_deref().or(placement.error()) {
                message.push_str(&format!("; no 3D: {note}"));
            }
            (
                true,
                srv::Ground::Response {
                    success: true,
                    message,
                    header: o.header.to_msg(),
                    pick: convert::ground_target(&o.header, &header_3d, &g.pick),
                    has_place: g.place.is_some(),
                    place: g
                        .place
                        .as_ref()
                        .map(|p| convert::ground_target(&o.header, &header_3d, p))
                        .unwrap_or_default(),
                    position_frame_id: placement.frame_id,
                },
            )
        }
        Err(e) => fail(e),
    }
}

/// Moves a ground target's point, pose and points into the placement's frame.
fn place_target(placement: &Placement, t: &mut worker::Target) {
    placement.place_point(&mut t.point);
    placement.place_with(&mut t.grasp, |g, tf| g.transformed(tf));
    placement.place_with(&mut t.points, |p, tf| transform_points(p, tf));
}

/// `~/score` with `from_memory`: each phrase not found in the image but remembered under the
/// same label takes the remembered object (its last score, box, track and, when it is in the
/// answer's frame, its 3D box); the scene is written again. Returns how many phrases it added.
fn remember(memory: &Memory, a: &mut ScoreAnswer, placement: &Placement) -> usize {
    let mut added = 0;
    for (i, s) in a.scores.iter_mut().enumerate() {
        if s.found {
            continue;
        }
        let Some(o) = memory.latest(&s.phrase) else {
            continue;
        };
        s.found = true;
        s.score = o.last_score;
        s.detection = Some(Detection::new(i, o.label.clone(), o.last_score, o.bbox));
        a.positions[i] = o
            .position
            .filter(|p| p.frame_id == placement.frame_id)
            .map(|p| p.object);
        a.tracks[i] = o.id;
        added += 1;
    }
    if added > 0 {
        a.scene = scene_description(&a.scores);
    }
    added
}

/// `~/get_objects`: the object memory, filtered by label, cleared on request.
pub async fn get_objects_call(
    ctx: Services,
    _timeout: Duration,
    req: srv::GetObjects::Request,
) -> (bool, srv::GetObjects::Response) {
    let objects = ctx.memory.read(&req.labels, req.clear);
    let mut message = format!("{} object(s)", objects.len());
    if req.clear {
        message.push_str(", forgotten");
    }
    (
        true,
        srv::GetObjects::Response {
            success: true,
            message,
            objects: objects.iter().map(convert::tracked_object).collect(),
        },
    )
}
