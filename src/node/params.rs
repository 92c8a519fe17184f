//! The node's parameters: read once at startup from `--ros-args --params-file` / `-p`, validated
//! into [`NodeParams`]. Defaults here match `config/vlm_perception.yaml`; a value of the wrong
//! type or out of range stops startup with an error naming the parameter.

use std::collections::BTreeMap;
use std::time::Duration;

use vlm_perception::geometry::{CloudParams, GraspParams};
use vlm_perception::pipeline::{format_hypothesis, DEFAULT_HYPOTHESIS_TEMPLATE};
use vlm_perception::tracking::ByteTrackConfig;
use vlm_perception::vision::depth::DepthSampling;

pub mod cameras;
mod descriptions;
mod reader;
pub use cameras::CameraSpec;
pub use descriptions::DESCRIPTIONS;
use reader::Reader;

/// A parameter value as rcl parsed it (r2r's `ParameterValue`, without the ROS type).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    NotSet,
    Bool(bool),
    Integer(i64),
    Double(f64),
    String(String),
    StringArray(Vec<String>),
    /// Any other array type (bool, byte, integer, double arrays): never valid here.
    OtherArray(&'static str),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::NotSet => "not set",
            Value::Bool(_) => "bool",
            Value::Integer(_) => "integer",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::StringArray(_) => "string array",
            Value::OtherArray(t) => t,
        }
    }
}

/// The error that stops startup: which parameter, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid parameter `{name}`: {reason}")]
pub struct ParamError {
    pub name: String,
    pub reason: String,
}

fn invalid(name: &str, reason: impl Into<String>) -> ParamError {
    ParamError {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Defaults (keep in sync with config/vlm_perception.yaml and the README table).
pub mod defaults {
    pub const DEVICE: &str = "cpu";
    pub const DTYPE: &str = "f32";
    pub const RATE: f64 = 5.0;
    pub const CAMERA_TOPIC: &str = "image";
    pub const CAMERA_TRANSPORT: &str = "raw";
    pub const CAMERA_RELIABLE: bool = false;
    pub const CAMERA_DEPTH: i64 = 5;
    /// 4096 x 4096: larger frames are rejected as bad input.
    pub const CAMERA_MAX_PIXELS: i64 = 16_777_216;
    pub const OWLVIT_ENABLED: bool = true;
    pub const OWLVIT_MODEL: &str = "google/owlvit-base-patch32";
    pub const OWLVIT_QUERIES: &[&str] = &["a person", "a cup", "a bottle", "a chair"];
    /// transformers' `post_process_object_detection` default.
    pub const OWLVIT_SCORE_THRESHOLD: f64 = 0.1;
    pub const OWLVIT_NMS_IOU: f64 = 0.5;
    /// Off: OWLv2 detections are not filtered by objectness.
    pub const OWLVIT_MIN_OBJECTNESS: f64 = 0.0;
    pub const CLIPSEG_ENABLED: bool = true;
    pub const CLIPSEG_MODEL: &str = "CIDAS/clipseg-rd64-refined";
    pub const CLIPSEG_MASK_THRESHOLD: f64 = 0.4;
    pub const VILT_ENABLED: bool = true;
    pub const VILT_MODEL: &str = "dandelin/vilt-b32-finetuned-vqa";
    pub const VILT_TOP_K: i64 = 5;
    /// Off: one more model in memory, for those who classify.
    pub const CLIP_ENABLED: bool = false;
    pub const CLIP_MODEL: &str = "openai/clip-vit-base-patch32";
    /// Off: one more model in memory, for those who caption.
    pub const BLIP_ENABLED: bool = false;
    pub const BLIP_MODEL: &str = "Salesforce/blip-image-captioning-base";
    /// transformers' `generate` defaults for BLIP (its checkpoints carry no generation config).
    pub const BLIP_NUM_BEAMS: i64 = 1;
    pub const BLIP_MAX_NEW_TOKENS: i64 = 20;
    /// Off: a caption costs a vision pass and a decoder run; agents ask ~/caption instead.
    pub const CAPTION_RATE: f64 = 0.0;
    pub const DEPTH_ENABLED: bool = false;
    /// As the RealSense driver names its depth registered to the colour camera.
    pub const DEPTH_TOPIC: &str = "aligned_depth_to_color/image_raw";
    pub const DEPTH_CAMERA_INFO_TOPIC: &str = "color/camera_info";
    /// Half a frame period at 30 Hz: colour and depth of one RealSense frameset share a stamp.
    pub const DEPTH_SLOP: f64 = 0.05;
    pub const DEPTH_MIN_RANGE: f64 = vlm_perception::vision::depth::DEFAULT_MIN_DEPTH_M as f64;
    pub const DEPTH_MAX_RANGE: f64 = vlm_perception::vision::depth::DEFAULT_MAX_DEPTH_M as f64;
    /// Empty: 3D outputs stay in the colour camera's optical frame.
    pub const TARGET_FRAME: &str = "";
    /// What a tf2 MessageFilter gives a driver's late transforms.
    pub const TF_TIMEOUT: f64 = 0.1;
    /// Tracking is cheap next to inference: on by default.
    pub const TRACKING_ENABLED: bool = true;
    pub const OBJECTS_FORGET_AFTER: f64 = 60.0;
    /// Off: a frame does no extra work unless asked.
    pub const POINTCLOUD_ENABLED: bool = false;
    pub const OVERLAY_ENABLED: bool = false;
    pub const LIFECYCLE: bool = false;
    pub const SERVICE_TIMEOUT: f64 = 10.0;
    pub const DIAGNOSTICS_PERIOD: f64 = 1.0;
}

/// Most beams a caption or generated answer may search with.
pub const MAX_BEAMS: i64 = 8;
/// Most captions per second on the stream (a caption is a whole vision pass and a decoder run).
pub const MAX_CAPTION_RATE: f64 = 10.0;
/// Most tokens a caption or generated answer may have.
pub const MAX_NEW_TOKENS: i64 = 512;

/// Most answers a VQA call may return.
pub const MAX_TOP_K: i64 = 100;
/// Service timeouts are capped at this many seconds: a call that takes longer is a stuck call.
pub const MAX_SERVICE_TIMEOUT: f64 = 3600.0;

/// Which camera message types the node subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// sensor_msgs/Image on `camera.topic`.
    Raw,
    /// sensor_msgs/CompressedImage on `camera.topic` + `/compressed` (image_transport's name).
    Compressed,
    /// Both.
    Both,
}

impl Transport {
    pub fn raw(self) -> bool {
        matches!(self, Transport::Raw | Transport::Both)
    }
    pub fn compressed(self) -> bool {
        matches!(self, Transport::Compressed | Transport::Both)
    }
}

#[derive(Debug, Clone)]
pub struct CameraParams {
    pub topic: String,
    pub transport: Transport,
    pub reliable: bool,
    pub depth: usize,
    pub max_pixels: u64,
}

#[derive(Debug, Clone)]
pub struct DetectionParams {
    pub enabled: bool,
    pub model: String,
    pub queries: Vec<String>,
    pub score_threshold: f32,
    pub nms_iou: f32,
    /// OWLv2 only: drop detections with a lower objectness (0 = off).
    pub min_objectness: f32,
}

#[derive(Debug, Clone)]
pub struct SegmentationParams {
    pub enabled: bool,
    pub model: String,
    pub prompts: Vec<String>,
    pub mask_threshold: f32,
}

/// Captioning (BLIP): `~/caption`; its generation settings also serve a BLIP VQA `vilt.model`.
#[derive(Debug, Clone)]
pub struct CaptionParams {
    pub enabled: bool,
    pub model: String,
    pub num_beams: usize,
    pub max_new_tokens: usize,
    /// Most stream frames captioned per second on `~/captions`; 0 = none.
    pub stream_rate: f64,
}

/// Zero-shot classification (CLIP): `~/classify`, and the stream's labels.
#[derive(Debug, Clone)]
pub struct ClassificationParams {
    pub enabled: bool,
    pub model: String,
    /// Labels classified on every processed frame (`~/classification`); empty: none.
    pub labels: Vec<String>,
    pub hypothesis_template: String,
}

#[derive(Debug, Clone)]
pub struct VqaParams {
    pub enabled: bool,
    pub model: String,
    pub top_k: usize,
}

/// 3D positions from an aligned depth image.
#[derive(Debug, Clone)]
pub struct DepthParams {
    pub enabled: bool,
    pub topic: String,
    pub camera_info_topic: String,
    /// Largest stamp difference between a colour frame and its depth image.
    pub slop: Duration,
    pub sampling: DepthSampling,
}

/// The frame of the 3D outputs (tf2).
#[derive(Debug, Clone)]
pub struct TfParams {
    /// Empty: the colour camera's optical frame (no lookup).
    pub target_frame: String,
    /// How long a frame or call waits for a transform that is not there yet.
    pub timeout: Duration,
}

/// ByteTrack on the stream's detections (ultralytics' parameter names and defaults).
#[derive(Debug, Clone)]
pub struct TrackingParams {
    pub enabled: bool,
    pub config: ByteTrackConfig,
}

/// Everything the node reads at startup.
#[derive(Debug, Clone)]
pub struct NodeParams {
    /// The cameras served (one unnamed camera unless `cameras` names some).
    pub cameras: Vec<CameraSpec>,
    pub device: String,
    pub dtype: String,
    /// Most frames per second processed on the stream; 0 = as fast as inference allows.
    pub rate: f64,
    pub camera: CameraParams,
    pub owlvit: DetectionParams,
    pub clipseg: SegmentationParams,
    pub vilt: VqaParams,
    pub clip: ClassificationParams,
    pub blip: CaptionParams,
    pub depth: DepthParams,
    pub tf: TfParams,
    pub tracking: TrackingParams,
    /// Publish each processed frame's object points on `~/objects/points` (with depth).
    pub pointcloud_enabled: bool,
    /// Object point clouds (the stream's and `~/ground`'s `return_points`).
    pub pointcloud: CloudParams,
    /// `~/ground`'s gripper poses.
    pub grasp: GraspParams,
    /// Objects of the memory not seen for this long are dropped.
    pub objects_forget_after: Duration,
    pub overlay: bool,
    pub service_timeout: Duration,
    pub diagnostics_period: Duration,
    /// A managed (lifecycle) node.
    pub lifecycle: bool,
}

/// Every parameter the node knows; anything else in the params file is reported as unknown.
pub const KNOWN: &[&str] = &[
    "device",
    "dtype",
    "rate",
    "camera.topic",
    "camera.transport",
    "camera.reliable",
    "camera.depth",
    "camera.max_pixels",
    "owlvit.enabled",
    "owlvit.model",
    "owlvit.queries",
    "owlvit.score_threshold",
    "owlvit.nms_iou",
    "owlvit.min_objectness",
    "clipseg.enabled",
    "clipseg.model",
    "clipseg.prompts",
    "clipseg.mask_threshold",
    "vilt.enabled",
    "vilt.model",
    "vilt.top_k",
    "clip.enabled",
    "clip.model",
    "clip.labels",
    "clip.hypothesis_template",
    "blip.enabled",
    "blip.model",
    "blip.num_beams",
    "blip.max_new_tokens",
    "caption.rate",
    "depth.enabled",
    "depth.topic",
    "depth.camera_info_topic",
    "depth.slop",
    "depth.min_range",
    "depth.max_range",
    "target_frame",
    "tf.timeout",
    "tracking.enabled",
    "tracking.track_high_thresh",
    "tracking.track_low_thresh",
    "tracking.new_track_thresh",
    "tracking.track_buffer",
    "tracking.match_thresh",
    "tracking.fuse_score",
    "pointcloud.enabled",
    "pointcloud.voxel",
    "pointcloud.max_points",
    "grasp.window",
    "grasp.min_points",
    "grasp.min_elongation",
    "objects.forget_after",
    "overlay.enabled",
    "services.timeout",
    "diagnostics.period",
    "lifecycle",
    // set by ROS tooling, not ours
    "use_sim_time",
];

/// Splits a comma-separated vocabulary (`"a cup, a red block"`), dropping blanks.
pub fn split_texts(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

impl NodeParams {
    /// Validates the flat parameter map (nested YAML keys joined with `.`).
    pub fn from_map(map: &BTreeMap<String, Value>) -> Result<Self, ParamError> {
        use defaults as d;
        let r = Reader { map };

        let rate = r.float("rate", d::RATE)?;
        if rate < 0.0 {
            return Err(invalid(
                "rate",
                format!("must be >= 0 (0: no limit), got {rate}"),
            ));
        }

        let transport = match r.string("camera.transport", d::CAMERA_TRANSPORT)?.as_str() {
            "raw" => Transport::Raw,
            "compressed" => Transport::Compressed,
            "both" => Transport::Both,
            other => {
                return Err(invalid(
                    "camera.transport",
                    format!("expected `raw`, `compressed` or `both`, got `{other}`"),
                ))
            }
        };
        let depth = r.int("camera.depth", d::CAMERA_DEPTH)?;
        if !(1..=1000).contains(&depth) {
            return Err(invalid(
                "camera.depth",
                format!("must be in 1..=1000, got {depth}"),
            ));
        }
        let max_pixels = r.int("camera.max_pixels", d::CAMERA_MAX_PIXELS)?;
        if max_pixels < 1 {
            return Err(invalid(
                "camera.max_pixels",
                format!("must be positive, got {max_pixels}"),
            ));
        }
        let camera = CameraParams {
            topic: r.nonempty_string("camera.topic", d::CAMERA_TOPIC)?,
            transport,
            reliable: r.bool("camera.reliable", d::CAMERA_RELIABLE)?,
            depth: depth as usize,
            max_pixels: max_pixels as u64,
        };

        let nms_iou = r.float("owlvit.nms_iou", d::OWLVIT_NMS_IOU)?;
        if nms_iou <= 0.0 {
            return Err(invalid(
                "owlvit.nms_iou",
                format!("must be positive (1 or more disables NMS), got {nms_iou}"),
            ));
        }
        let owlvit = DetectionParams {
            enabled: r.bool("owlvit.enabled", d::OWLVIT_ENABLED)?,
            model: r.nonempty_string("owlvit.model", d::OWLVIT_MODEL)?,
            queries: r.texts("owlvit.queries", d::OWLVIT_QUERIES, "query")?,
            score_threshold: r.fraction("owlvit.score_threshold", d::OWLVIT_SCORE_THRESHOLD)?,
            nms_iou: nms_iou as f32,
            min_objectness: r.fraction("owlvit.min_objectness", d::OWLVIT_MIN_OBJECTNESS)?,
        };
        let clipseg = SegmentationParams {
            enabled: r.bool("clipseg.enabled", d::CLIPSEG_ENABLED)?,
            model: r.nonempty_string("clipseg.model", d::CLIPSEG_MODEL)?,
            prompts: r.texts("clipseg.prompts", &[], "prompt")?,
            mask_threshold: r.fraction("clipseg.mask_threshold", d::CLIPSEG_MASK_THRESHOLD)?,
        };
        let top_k = r.int("vilt.top_k", d::VILT_TOP_K)?;
        if !(1..=MAX_TOP_K).contains(&top_k) {
            return Err(invalid(
                "vilt.top_k",
                format!("must be in 1..={MAX_TOP_K}, got {top_k}"),
            ));
        }
        let vilt = VqaParams {
            enabled: r.bool("vilt.enabled", d::VILT_ENABLED)?,
            model: r.nonempty_string("vilt.model", d::VILT_MODEL)?,
            top_k: top_k as usize,
        };

        let hypothesis_template =
            r.string("clip.hypothesis_template", DEFAULT_HYPOTHESIS_TEMPLATE)?;
        format_hypothesis(&hypothesis_template, "label")
            .map_err(|e| invalid("clip.hypothesis_template", e.to_string()))?;
        let clip = ClassificationParams {
            enabled: r.bool("clip.enabled", d::CLIP_ENABLED)?,
            model: r.nonempty_string("clip.model", d::CLIP_MODEL)?,
            labels: r.texts("clip.labels", &[], "label")?,
            hypothesis_template,
        };

        let num_beams = r.int("blip.num_beams", d::BLIP_NUM_BEAMS)?;
        if !(1..=MAX_BEAMS).contains(&num_beams) {
            return Err(invalid(
                "blip.num_beams",
                format!("must be in 1..={MAX_BEAMS} (1: greedy), got {num_beams}"),
            ));
        }
        let max_new_tokens = r.int("blip.max_new_tokens", d::BLIP_MAX_NEW_TOKENS)?;
        if !(1..=MAX_NEW_TOKENS).contains(&max_new_tokens) {
            return Err(invalid(
                "blip.max_new_tokens",
                format!("must be in 1..={MAX_NEW_TOKENS}, got {max_new_tokens}"),
            ));
        }
        let caption_rate = r.float("caption.rate", d::CAPTION_RATE)?;
        if !(0.0..=MAX_CAPTION_RATE).contains(&caption_rate) {
            return Err(invalid(
                "caption.rate",
                format!("must be in [0, {MAX_CAPTION_RATE}] Hz (0: off), got {caption_rate}"),
            ));
        }
        let blip = CaptionParams {
            enabled: r.bool("blip.enabled", d::BLIP_ENABLED)?,
            model: r.nonempty_string("blip.model", d::BLIP_MODEL)?,
            num_beams: num_beams as usize,
            max_new_tokens: max_new_tokens as usize,
            stream_rate: caption_rate,
        };

        let slop = r.float("depth.slop", d::DEPTH_SLOP)?;
        if !(0.0..=10.0).contains(&slop) {
            return Err(invalid(
                "depth.slop",
                format!("must be in [0, 10] seconds, got {slop}"),
            ));
        }
        let min_range = r.float("depth.min_range", d::DEPTH_MIN_RANGE)?;
        let max_range = r.float("depth.max_range", d::DEPTH_MAX_RANGE)?;
        if !(min_range >= 0.0 && max_range > min_range) {
            return Err(invalid(
                "depth.max_range",
                format!(
                    "need 0 <= depth.min_range < depth.max_range, got {min_range} and {max_range}"
                ),
            ));
        }
        let depth = DepthParams {
            enabled: r.bool("depth.enabled", d::DEPTH_ENABLED)?,
            topic: r.nonempty_string("depth.topic", d::DEPTH_TOPIC)?,
            camera_info_topic: r
                .nonempty_string("depth.camera_info_topic", d::DEPTH_CAMERA_INFO_TOPIC)?,
            slop: Duration::from_secs_f64(slop),
            sampling: DepthSampling {
                min_depth: min_range as f32,
                max_depth: max_range as f32,
                ..DepthSampling::default()
            },
        };

        let tf_timeout = r.float("tf.timeout", d::TF_TIMEOUT)?;
        if !(0.0..=10.0).contains(&tf_timeout) {
            return Err(invalid(
                "tf.timeout",
                format!("must be in [0, 10] seconds, got {tf_timeout}"),
            ));
        }
        let target_frame = r.string("target_frame", d::TARGET_FRAME)?;
        if target_frame.chars().any(char::is_whitespace) {
            return Err(invalid(
                "target_frame",
                format!("a frame id has no whitespace, got `{target_frame}`"),
            ));
        }
        let tf = TfParams {
            target_frame,
            timeout: Duration::from_secs_f64(tf_timeout),
        };

        let bt = ByteTrackConfig::default();
        let track_buffer = r.int("tracking.track_buffer", i64::from(bt.track_buffer))?;
        if !(1..=100_000).contains(&track_buffer) {
            return Err(invalid(
                "tracking.track_buffer",
                format!("must be in 1..=100000 frames, got {track_buffer}"),
            ));
        }
        let match_thresh = r.float("tracking.match_thresh", bt.match_thresh)?;
        if match_thresh <= 0.0 {
            return Err(invalid(
                "tracking.match_thresh",
                format!("must be positive (an IoU-distance cost limit), got {match_thresh}"),
            ));
        }
        let config = ByteTrackConfig {
            track_high_thresh: r.fraction64("tracking.track_high_thresh", bt.track_high_thresh)?,
            track_low_thresh: r.fraction64("tracking.track_low_thresh", bt.track_low_thresh)?,
            new_track_thresh: r.fraction64("tracking.new_track_thresh", bt.new_track_thresh)?,
            track_buffer: track_buffer as u32,
            match_thresh,
            fuse_score: r.bool("tracking.fuse_score", bt.fuse_score)?,
            // lost tracks are kept track_buffer processed frames, whatever `rate` is
            frame_rate: bt.frame_rate,
        };
        if config.track_low_thresh > config.track_high_thresh {
            return Err(invalid(
                "tracking.track_low_thresh",
                format!(
                    "must not exceed tracking.track_high_thresh ({}), got {}",
                    config.track_high_thresh, config.track_low_thresh
                ),
            ));
        }
        let tracking = TrackingParams {
            enabled: r.bool("tracking.enabled", d::TRACKING_ENABLED)?,
            config,
        };
        let max_points = r.int(
            "pointcloud.max_points",
            CloudParams::default().max_points as i64,
        )?;
        if !(0..=1_000_000).contains(&max_points) {
            return Err(invalid(
                "pointcloud.max_points",
                format!("must be in 0..=1000000 (0: no cap), got {max_points}"),
            ));
        }
        let pointcloud = CloudParams {
            voxel: r.float("pointcloud.voxel", f64::from(CloudParams::default().voxel))? as f32,
            max_points: max_points as usize,
        };
        pointcloud
            .validate()
            .map_err(|e| invalid("pointcloud.voxel", e.to_string()))?;
        let g = GraspParams::default();
        let window = r.int("grasp.window", i64::from(g.window))?;
        let min_points = r.int("grasp.min_points", g.min_points as i64)?;
        let grasp = GraspParams {
            window: u32::try_from(window).unwrap_or(0).min(1001),
            min_points: usize::try_from(min_points).unwrap_or(0),
            min_elongation: r.float("grasp.min_elongation", g.min_elongation)?,
        };
        if !(3..=1001).contains(&window) {
            return Err(invalid(
                "grasp.window",
                format!("must be in 3..=1001 pixels, got {window}"),
            ));
        }
        if min_points < 3 {
            return Err(invalid(
                "grasp.min_points",
                format!("must be at least 3 (a plane), got {min_points}"),
            ));
        }
        grasp
            .validate()
            .map_err(|e| invalid("grasp.min_elongation", e.to_string()))?;

        let forget_after = r.float("objects.forget_after", d::OBJECTS_FORGET_AFTER)?;
        if !(forget_after > 0.0 && forget_after <= 1e6) {
            return Err(invalid(
                "objects.forget_after",
                format!("must be in (0, 1e6] seconds, got {forget_after}"),
            ));
        }

        let timeout = r.float("services.timeout", d::SERVICE_TIMEOUT)?;
        if !(timeout > 0.0 && timeout <= MAX_SERVICE_TIMEOUT) {
            return Err(invalid(
                "services.timeout",
                format!("must be in (0, {MAX_SERVICE_TIMEOUT}] seconds, got {timeout}"),
            ));
        }
        let period = r.float("diagnostics.period", d::DIAGNOSTICS_PERIOD)?;
        if !(0.05..=3600.0).contains(&period) {
            return Err(invalid(
                "diagnostics.period",
                format!("must be in [0.05, 3600] seconds, got {period}"),
            ));
        }

        Ok(Self {
            device: r.nonempty_string("device", d::DEVICE)?,
            dtype: r.nonempty_string("dtype", d::DTYPE)?,
            rate,
            camera,
            owlvit,
            clipseg,
            vilt,
            clip,
            blip,
            depth,
            tf,
            tracking,
            pointcloud_enabled: r.bool("pointcloud.enabled", d::POINTCLOUD_ENABLED)?,
            pointcloud,
            grasp,
            objects_forget_after: Duration::from_secs_f64(forget_after),
            overlay: r.bool("overlay.enabled", d::OVERLAY_ENABLED)?,
            service_timeout: Duration::from_secs_f64(timeout),
            diagnostics_period: Duration::from_secs_f64(period),
            lifecycle: r.bool("lifecycle", d::LIFECYCLE)?,
            cameras: cameras::read(&r)?,
        })
    }

    /// The values as a flat parameter map (the inverse of [`Self::from_map`]): what
    /// `ros2 param get/dump` shows.
    pub fn to_map(&self) -> BTreeMap<String, Value> {
        let texts = |v: &[String]| Value::StringArray(v.to_vec());
        let transport = match self.camera.transport {
            Transport::Raw => "raw",
            Transport::Compressed => "compressed",
            Transport::Both => "both",
        };
        let f = |v: f32| Value::Double(f64::from(v));
        let mut map: BTreeMap<String, Value> = [
            ("device", Value::String(self.device.clone())),
            ("dtype", Value::String(self.dtype.clone())),
            ("rate", Value::Double(self.rate)),
            ("camera.topic", Value::String(self.camera.topic.clone())),
            ("camera.transport", Value::String(transport.into())),
            ("camera.reliable", Value::Bool(self.camera.reliable)),
            ("camera.depth", Value::Integer(self.camera.depth as i64)),
            (
                "camera.max_pixels",
                Value::Integer(self.camera.max_pixels as i64),
            ),
            ("owlvit.enabled", Value::Bool(self.owlvit.enabled)),
            ("owlvit.model", Value::String(self.owlvit.model.clone())),
            ("owlvit.queries", texts(&self.owlvit.queries)),
            ("owlvit.score_threshold", f(self.owlvit.score_threshold)),
            ("owlvit.nms_iou", f(self.owlvit.nms_iou)),
            ("owlvit.min_objectness", f(self.owlvit.min_objectness)),
            ("clipseg.enabled", Value::Bool(self.clipseg.enabled)),
            ("clipseg.model", Value::String(self.clipseg.model.clone())),
            ("clipseg.prompts", texts(&self.clipseg.prompts)),
            ("clipseg.mask_threshold", f(self.clipseg.mask_threshold)),
            ("vilt.enabled", Value::Bool(self.vilt.enabled)),
            ("vilt.model", Value::String(self.vilt.model.clone())),
            ("vilt.top_k", Value::Integer(self.vilt.top_k as i64)),
            ("clip.enabled", Value::Bool(self.clip.enabled)),
            ("clip.model", Value::String(self.clip.model.clone())),
            ("clip.labels", texts(&self.clip.labels)),
            (
                "clip.hypothesis_template",
                Value::String(self.clip.hypothesis_template.clone()),
            ),
            ("blip.enabled", Value::Bool(self.blip.enabled)),
            ("blip.model", Value::String(self.blip.model.clone())),
            ("blip.num_beams", Value::Integer(self.blip.num_beams as i64)),
            (
                "blip.max_new_tokens",
                Value::Integer(self.blip.max_new_tokens as i64),
            ),
            ("caption.rate", Value::Double(self.blip.stream_rate)),
            ("depth.enabled", Value::Bool(self.depth.enabled)),
            ("depth.topic", Value::String(self.depth.topic.clone())),
            (
                "depth.camera_info_topic",
                Value::String(self.depth.camera_info_topic.clone()),
            ),
            ("depth.slop", Value::Double(self.depth.slop.as_secs_f64())),
            ("depth.min_range", f(self.depth.sampling.min_depth)),
            ("depth.max_range", f(self.depth.sampling.max_depth)),
            ("target_frame", Value::String(self.tf.target_frame.clone())),
            ("tf.timeout", Value::Double(self.tf.timeout.as_secs_f64())),
            ("tracking.enabled", Value::Bool(self.tracking.enabled)),
            (
                "tracking.track_high_thresh",
                Value::Double(self.tracking.config.track_high_thresh),
            ),
            (
                "tracking.track_low_thresh",
                Value::Double(self.tracking.config.track_low_thresh),
            ),
            (
                "tracking.new_track_thresh",
                Value::Double(self.tracking.config.new_track_thresh),
            ),
            (
                "tracking.track_buffer",
                Value::Integer(i64::from(self.tracking.config.track_buffer)),
            ),
            (
                "tracking.match_thresh",
                Value::Double(self.tracking.config.match_thresh),
            ),
            (
                "tracking.fuse_score",
                Value::Bool(self.tracking.config.fuse_score),
            ),
            ("pointcloud.enabled", Value::Bool(self.pointcloud_enabled)),
            ("pointcloud.voxel", f(self.pointcloud.voxel)),
            (
                "pointcloud.max_points",
                Value::Integer(self.pointcloud.max_points as i64),
            ),
            ("grasp.window", Value::Integer(i64::from(self.grasp.window))),
            (
                "grasp.min_points",
                Value::Integer(self.grasp.min_points as i64),
            ),
            (
                "grasp.min_elongation",
                Value::Double(self.grasp.min_elongation),
            ),
            (
                "objects.forget_after",
                Value::Double(self.objects_forget_after.as_secs_f64()),
            ),
            ("overlay.enabled", Value::Bool(self.overlay)),
            (
                "services.timeout",
                Value::Double(self.service_timeout.as_secs_f64()),
            ),
            (
                "diagnostics.period",
                Value::Double(self.diagnostics_period.as_secs_f64()),
            ),
            ("lifecycle", Value::Bool(self.lifecycle)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        cameras::to_map(&self.cameras, &mut map);
        map
    }

    /// Validates a change of `name` to `value` at run time: the new parameters, or why not
    /// (a read-only parameter, an unknown one, or an invalid value; the old ones then stay).
    pub fn with_change(&self, name: &str, value: Value) -> Result<Self, String> {
        if name == "cameras" || cameras::is_section_key(&self.to_map(), name) {
            return Err(format!(
                "`{name}` is read-only while the node runs (restart the node to change it; \
                 ~/set_queries with `camera` sets a camera's vocabulary at run time)"
            ));
        }
        match DESCRIPTIONS.iter().find(|(n, _, _)| *n == name) {
            None => return Err(format!("unknown parameter `{name}`")),
            Some((_, _, false)) => {
                return Err(format!(
                    "`{name}` is read-only while the node runs (restart the node to change it)"
                ))
            }
            Some(_) => {}
        }
        let mut map = self.to_map();
        map.insert(name.to_string(), value);
        Self::from_map(&map).map_err(|e| e.reason)
    }

    /// Parameter names in the map that the node does not know (typos in a params file).
    pub fn unknown(map: &BTreeMap<String, Value>) -> Vec<String> {
        map.keys()
            .filter(|k| {
                !KNOWN.contains(&k.as_str())
                    && !k.starts_with("qos_overrides.")
                    && k.as_str() != "cameras"
                    && !cameras::is_section_key(map, k)
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;
