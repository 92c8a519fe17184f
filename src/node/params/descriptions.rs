//! What `ros2 param describe` shows for each parameter, and which ones `ros2 param set` may
//! change while the node runs.

/// Each parameter's description (shown by `ros2 param describe`) and whether it can change
/// while the node runs (`ros2 param set`); the others need a restart (a model reload, new
/// subscriptions).
pub const DESCRIPTIONS: &[(&str, &str, bool)] = &[
    (
        "device",
        "Where the models run: cpu, cuda or cuda:N.",
        false,
    ),
    (
        "dtype",
        "Weights precision: f32, f16 or bf16 (on the CPU: bf16 linear weights, f32 \
         activations; needs AVX512-BF16).",
        false,
    ),
    (
        "rate",
        "Most camera frames processed per second; 0 = as fast as inference allows.",
        true,
    ),
    (
        "camera.topic",
        "Image topic, relative to the node's namespace.",
        false,
    ),
    (
        "camera.transport",
        "raw (sensor_msgs/Image), compressed (<topic>/compressed) or both.",
        false,
    ),
    (
        "camera.reliable",
        "false: sensor-data QoS (best effort); true: reliable.",
        false,
    ),
    (
        "camera.depth",
        "Camera subscription queue depth (keep last).",
        false,
    ),
    (
        "camera.max_pixels",
        "Frames with more pixels than this are rejected as bad input.",
        false,
    ),
    (
        "owlvit.enabled",
        "Open-vocabulary detection (OWL-ViT) on every processed frame.",
        false,
    ),
    (
        "owlvit.model",
        "Hugging Face hub id or local checkpoint directory.",
        false,
    ),
    (
        "owlvit.queries",
        "The detection vocabulary (re-encoded when set).",
        true,
    ),
    (
        "owlvit.score_threshold",
        "Keep boxes scoring above this, in [0, 1].",
        true,
    ),
    (
        "owlvit.nms_iou",
        "Per-query NMS IoU; 1.0 or more disables NMS.",
        true,
    ),
    (
        "owlvit.min_objectness",
        "OWLv2 only: drop detections whose objectness is below this, in [0, 1]; 0 = off.",
        true,
    ),
    (
        "clipseg.enabled",
        "Text-prompted segmentation (CLIPSeg).",
        false,
    ),
    (
        "clipseg.model",
        "Hugging Face hub id or local checkpoint directory.",
        false,
    ),
    (
        "clipseg.prompts",
        "Segmentation prompts on the stream; empty for none.",
        true,
    ),
    (
        "clipseg.mask_threshold",
        "Per-pixel probability above which a pixel is in the mask.",
        true,
    ),
    (
        "vilt.enabled",
        "Visual question answering (ViLT), through ~/ask.",
        false,
    ),
    (
        "vilt.model",
        "Hugging Face hub id or local checkpoint directory: ViLT (ranked answers) or BLIP VQA (a generated answer).",
        false,
    ),
    (
        "vilt.top_k",
        "Answers returned per question (1..100).",
        true,
    ),
    (
        "clip.enabled",
        "Zero-shot image classification (CLIP), through ~/classify and ~/classification.",
        false,
    ),
    (
        "clip.model",
        "Hugging Face hub id or local checkpoint directory (a CLIPModel).",
        false,
    ),
    (
        "clip.labels",
        "Labels classified on every processed frame, published on ~/classification; empty for none.",
        true,
    ),
    (
        "clip.hypothesis_template",
        "Each label goes through this template (one {}), as transformers' pipeline.",
        true,
    ),
    (
        "blip.enabled",
        "Image captioning (BLIP), through ~/caption.",
        false,
    ),
    (
        "blip.model",
        "Hugging Face hub id or local checkpoint directory (BlipForConditionalGeneration).",
        false,
    ),
    (
        "blip.num_beams",
        "Beams of caption and BLIP-answer generation (1..8; 1 = greedy).",
        true,
    ),
    (
        "blip.max_new_tokens",
        "Most generated tokens of a caption or BLIP answer (1..512).",
        true,
    ),
    (
        "caption.rate",
        "Most stream frames captioned per second, published on ~/captions (0 = off; needs blip.enabled).",
        true,
    ),
    (
        "depth.enabled",
        "3D positions from an aligned depth image and CameraInfo.",
        false,
    ),
    (
        "depth.topic",
        "Aligned depth image topic (16UC1 mm or 32FC1 m).",
        false,
    ),
    (
        "depth.camera_info_topic",
        "The colour camera's CameraInfo topic.",
        false,
    ),
    (
        "depth.slop",
        "Largest stamp difference between a frame and its depth image, seconds.",
        true,
    ),
    (
        "depth.min_range",
        "Depths below this (metres) are ignored.",
        true,
    ),
    (
        "depth.max_range",
        "Depths above this (metres) are ignored.",
        true,
    ),
    (
        "target_frame",
        "Frame of every 3D output (e.g. base_link, odom, map), transformed with tf2 at the \
         image's stamp; empty: the camera optical frame.",
        true,
    ),
    (
        "tf.timeout",
        "Seconds a frame or call waits for a transform that is not there yet, then goes 2D.",
        true,
    ),
    (
        "tracking.enabled",
        "ByteTrack on the stream: a persistent track_id on every detection, one tracker per label.",
        true,
    ),
    (
        "tracking.track_high_thresh",
        "ByteTrack: detections scoring at least this are associated first, in [0, 1].",
        true,
    ),
    (
        "tracking.track_low_thresh",
        "ByteTrack: lower-scoring detections above this may continue a track, in [0, 1].",
        true,
    ),
    (
        "tracking.new_track_thresh",
        "ByteTrack: an unmatched detection scoring at least this starts a track, in [0, 1].",
        true,
    ),
    (
        "tracking.track_buffer",
        "ByteTrack: processed frames a lost track is kept (it may return one frame later, as in \
         ultralytics).",
        true,
    ),
    (
        "tracking.match_thresh",
        "ByteTrack: IoU-distance cost limit of the first association.",
        true,
    ),
    (
        "tracking.fuse_score",
        "ByteTrack: fuse detection scores into the IoU cost.",
        true,
    ),
    (
        "pointcloud.enabled",
        "Publish each processed frame's object points (PointCloud2) on ~/objects/points (with depth).",
        true,
    ),
    (
        "pointcloud.voxel",
        "Voxel edge (metres) for object point clouds (~/objects/points, ~/ground return_points); 0 = off.",
        true,
    ),
    (
        "pointcloud.max_points",
        "Most points in one object's cloud (evenly thinned beyond); 0 = no cap.",
        true,
    ),
    (
        "grasp.window",
        "Side (colour pixels) of the window around a ~/ground target whose depth the approach plane is fitted to.",
        true,
    ),
    (
        "grasp.min_points",
        "Fewest valid depth points in that window for a plane fit (else the camera's axis).",
        true,
    ),
    (
        "grasp.min_elongation",
        "Smallest major/minor ratio of the mask for a closing axis (else the camera's x).",
        true,
    ),
    (
        "objects.forget_after",
        "Seconds an object of the memory (~/objects) is kept after it was last seen.",
        true,
    ),
    (
        "overlay.enabled",
        "Publish ~/overlay (boxes and masks drawn on the frame).",
        true,
    ),
    (
        "services.timeout",
        "Seconds a service call waits for the worker.",
        true,
    ),
    (
        "diagnostics.period",
        "Seconds between /diagnostics messages.",
        false,
    ),
    (
        "lifecycle",
        "A managed node: models load on configure, frames are processed while active.",
        false,
    ),
];
