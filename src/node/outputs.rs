//! The stream's outputs: the worker's results onto the result topics, and the tracked
//! detections into the object memory. With a `target_frame`, each frame's detections pass
//! through one ordered stage on the async runtime that waits for the camera's transform at the
//! frame's stamp (up to `tf.timeout`, as a tf2 MessageFilter) and moves the 3D outputs into that
//! frame; the inference thread never waits for tf.

use std::sync::Arc;
use std::time::{Duration, Instant};

use r2r::sensor_msgs::msg::{Image, PointCloud2};
use r2r::visualization_msgs::msg::MarkerArray;
use r2r::vlm_perception_msgs::msg as vmsg;
use tokio::sync::mpsc;
use vlm_perception::pipeline::{
    ClassificationResult, GeneratedText, SegmentationResult, VqaResult,
};

use crate::convert::{self, FrameHeader};
use crate::log;
use crate::log_limiter::{suppressed_note, LogLimiter};
use crate::memory::Memory;
use crate::tf::{Placement, Transforms};
use crate::worker::{FrameDetections, Level, Sink};

/// Frames waiting for their transform; beyond this (a stalled tf stream at a high frame rate) a
/// frame's detections are published without 3D rather than queued.
const STAGE_DEPTH: usize = 16;
/// The same tf failure is logged at most this often (it is on /diagnostics every period).
const TF_LOG_PERIOD: Duration = Duration::from_secs(5);

/// The result topics: the answers of `~/ask`, and per camera its stream's topics.
#[derive(Clone)]
pub struct Outputs {
    pub logger: String,
    pub answers: r2r::Publisher<vmsg::Answer>,
    /// Per camera (an index into `cameras`).
    pub cameras: Vec<Publishers>,
}

impl Outputs {
    fn check(&self, what: &str, r: r2r::Result<()>) {
        check(&self.logger, what, r);
    }
}

fn check(logger: &str, what: &str, r: r2r::Result<()>) {
    if let Err(e) = r {
        log(logger, Level::Error, &format!("cannot publish {what}: {e}"));
    }
}

/// One camera's stream topics (`~/<topic>`, or `~/<camera>/<topic>` for a named camera).
#[derive(Clone)]
pub struct Publishers {
    pub logger: String,
    pub detections: r2r::Publisher<vmsg::DetectionArray>,
    pub segmentation: r2r::Publisher<vmsg::SegmentationArray>,
    /// The stream's captions (`caption.rate`).
    pub captions: r2r::Publisher<vmsg::Caption>,
    /// The stream's classification among `clip.labels`.
    pub classification: r2r::Publisher<vmsg::Classification>,
    pub overlay: Option<r2r::Publisher<Image>>,
    /// RViz boxes of the located detections (depth on).
    pub markers: Option<r2r::Publisher<MarkerArray>>,
    /// The located detections' points (depth on).
    pub object_points: Option<r2r::Publisher<PointCloud2>>,
    #[cfg(feature = "vision_msgs")]
    pub detections_2d: r2r::Publisher<r2r::vision_msgs::msg::Detection2DArray>,
    #[cfg(feature = "vision_msgs")]
    pub detections_3d: r2r::Publisher<r2r::vision_msgs::msg::Detection3DArray>,
}

impl Publishers {
    fn check(&self, what: &str, r: r2r::Result<()>) {
        check(&self.logger, what, r);
    }

    /// One frame's detections on every detection topic; its positions are already in
    /// `placement.frame_id`, the frame of the 3D-only topics' headers.
    fn detections(&self, f: &FrameDetections, placement: &Placement) {
        let msg = convert::detection_array(
            &f.header,
            &placement.frame_id,
            &f.model,
            &f.result,
            &f.positions,
            &f.tracks,
            f.latency,
        );
        self.check("detections", self.detections.publish(&msg));
        let header_3d = placement.header(&f.header);
        if let Some(p) = &self.markers {
            let msg = convert::markers(&header_3d, &f.result, &f.positions);
            self.check("markers", p.publish(&msg));
        }
        if let (Some(p), false) = (&self.object_points, f.clouds.is_empty()) {
            let msg = convert::object_points(&header_3d, &f.result, &f.clouds, &f.tracks);
            self.check("object points", p.publish(&msg));
        }
        #[cfg(feature = "vision_msgs")]
        {
            let msg = convert::detection_2d_array(&f.header, &f.result, &f.tracks);
            self.check("detections_2d", self.detections_2d.publish(&msg));
            let located =
                convert::detection_3d_array(&header_3d, &f.result, &f.positions, &f.tracks);
            if let Some(msg) = located {
                self.check("detections_3d", self.detections_3d.publish(&msg));
            }
        }
    }
}

/// The worker's sink: results straight onto the topics, detections through the tf stage when a
/// target frame is set.
pub struct StreamSink {
    out: Outputs,
    tf: Arc<Transforms>,
    memory: Arc<Memory>,
    stage: mpsc::Sender<FrameDetections>,
}

impl StreamSink {
    /// The sink, and the receiving end of its tf stage (for [`tf_stage`]).
    pub fn new(
        out: Outputs,
        tf: Arc<Transforms>,
        memory: Arc<Memory>,
    ) -> (Self, mpsc::Receiver<FrameDetections>) {
        let (stage, rx) = mpsc::channel(STAGE_DEPTH);
        (
            Self {
                out,
                tf,
                memory,
                stage,
            },
            rx,
        )
    }
}

/// Moves a frame's 3D into `placement`'s frame (all left out when its transform failed),
/// publishes it and records it in the object memory.
fn publish_placed(out: &Outputs, memory: &Memory, mut f: FrameDetections, placement: &Placement) {
    placement.place(&mut f.positions);
    placement.place_clouds(&mut f.clouds);
    if let Some(p) = out.cameras.get(f.camera) {
        p.detections(&f, placement);
    }
    memory.record(&f, placement);
}

impl Sink for StreamSink {
    fn detections(&mut self, mut frame: FrameDetections) {
        let target = self.tf.params().target_frame;
        if target.is_empty() {
            let camera = Placement::camera(&frame.header);
            publish_placed(&self.out, &self.memory, frame, &camera);
            return;
        }
        // Every frame takes the stage while a target frame is set, so that frames stay in order.
        if let Err(e) = self.stage.try_send(frame) {
            frame = match e {
                mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f) => f,
            };
            let placement = Placement {
                frame_id: target,
                transform: Err(format!(
                    "{STAGE_DEPTH} frames are already waiting for their transforms"
                )),
            };
            publish_placed(&self.out, &self.memory, frame, &placement);
        }
    }

    fn segmentation(
        &mut self,
        camera: usize,
        header: &FrameHeader,
        model: &str,
        r: &SegmentationResult,
        latency: Duration,
    ) {
        if let Some(out) = self.out.cameras.get(camera) {
            let msg = convert::segmentation_array(header, model, r, latency);
            out.check("segmentation", out.segmentation.publish(&msg));
        }
    }

    fn overlay(&mut self, camera: usize, header: &FrameHeader, image: &image::RgbImage) {
        if let Some((out, Some(p))) = self.out.cameras.get(camera).map(|o| (o, &o.overlay)) {
            let msg = convert::rgb_image_msg(header, image);
            out.check("overlay", p.publish(&msg));
        }
    }

    fn answer(&mut self, header: &FrameHeader, model: &str, r: &VqaResult, latency: Duration) {
        let msg = convert::answer(header, model, r, latency);
        self.out.check("answer", self.out.answers.publish(&msg));
    }

    fn caption(
        &mut self,
        camera: usize,
        header: &FrameHeader,
        model: &str,
        r: &GeneratedText,
        latency: Duration,
    ) {
        if let Some(out) = self.out.cameras.get(camera) {
            let msg = convert::caption(header, model, r, latency);
            out.check("caption", out.captions.publish(&msg));
        }
    }

    fn classification(
        &mut self,
        camera: usize,
        header: &FrameHeader,
        model: &str,
        r: &ClassificationResult,
        latency: Duration,
    ) {
        if let Some(out) = self.out.cameras.get(camera) {
            let msg = convert::classification(header, model, r, latency);
            out.check("classification", out.classification.publish(&msg));
        }
    }

    fn log(&mut self, level: Level, message: &str) {
        log(&self.out.logger, level, message);
    }
}

/// The tf stage: each staged frame waits for its transform (when it has 3D positions), then is
/// published in the target frame, or without 3D and with the reason logged; the object memory
/// takes it in that frame.
pub async fn tf_stage(
    mut frames: mpsc::Receiver<FrameDetections>,
    out: Outputs,
    tf: Arc<Transforms>,
    memory: Arc<Memory>,
) {
    // One line per period whatever the reason: the reasons name stamps, so each frame's differs.
    let mut limiter = LogLimiter::with_period(TF_LOG_PERIOD);
    while let Some(f) = frames.recv().await {
        let located =
            f.positions.iter().any(Option::is_some) || f.clouds.iter().any(Option::is_some);
        let placement = tf.placement("", &f.header, located).await;
        if let Some(e) = placement.error() {
            if let Some(suppressed) = limiter.allow("tf", Instant::now()) {
                log(
                    &out.logger,
                    Level::Warn,
                    &format!(
                        "frame published without 3D positions: {e}{}",
                        suppressed_note(suppressed)
                    ),
                );
            }
        }
        publish_placed(&out, &memory, f, &placement);
    }
}
