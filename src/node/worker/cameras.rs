//! The worker's cameras: per camera its depth pairing, tracks, schedule and (when it has one)
//! its own vocabulary; and which cameras' frames are due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vlm_perception::pipeline::QueryEmbeddings;

use super::image_queries::LabelledImages;
use super::tracks::StreamTracks;
use crate::depth_sync::DepthSync;
use crate::params::{CameraSpec, NodeParams};

/// A detection vocabulary: text queries, or query images in their place.
#[derive(Clone, Default)]
pub(super) struct DetectionVocab {
    pub(super) queries: Vec<String>,
    /// Query images as the vocabulary (set through `~/set_queries`), in place of the text.
    pub(super) images: Option<Arc<QueryEmbeddings>>,
}

/// Segmentation prompts: texts, then example images.
#[derive(Clone, Default)]
pub(super) struct SegmentationVocab {
    pub(super) prompts: Vec<String>,
    pub(super) images: Arc<LabelledImages>,
}

impl SegmentationVocab {
    pub(super) fn is_empty(&self) -> bool {
        self.prompts.is_empty() && self.images.is_empty()
    }
}

/// One camera as the worker sees it.
pub(super) struct CameraState {
    pub(super) spec: CameraSpec,
    /// Depth pairing, when `depth.enabled`.
    pub(super) depth: Option<Arc<DepthSync>>,
    /// ByteTrack on this camera's detections.
    pub(super) tracks: StreamTracks,
    /// Its next frame may be processed then (`rate`, per camera).
    pub(super) next_frame_at: Instant,
    /// Its next caption is due then (`caption.rate`, per camera).
    pub(super) next_caption_at: Instant,
    /// Its own vocabulary (`<name>.queries`, `~/set_queries` with `camera`); `None`: the shared.
    pub(super) detection: Option<DetectionVocab>,
    pub(super) segmentation: Option<SegmentationVocab>,
}

impl CameraState {
    /// The cameras of `params`; `depth` has one pairing per camera when depth is on.
    pub(super) fn all(params: &NodeParams, depth: Vec<Option<Arc<DepthSync>>>) -> Vec<Self> {
        let count = params.cameras.len();
        let now = Instant::now();
        params
            .cameras
            .iter()
            .zip(depth.into_iter().chain(std::iter::repeat(None)))
            .enumerate()
            .map(|(i, (spec, depth))| Self {
                spec: spec.clone(),
                depth,
                tracks: StreamTracks::new(&params.tracking.config, i as u64, count as u64),
                next_frame_at: now,
                next_caption_at: now,
                detection: spec.queries.clone().map(|queries| DetectionVocab {
                    queries,
                    images: None,
                }),
                segmentation: spec.prompts.clone().map(|prompts| SegmentationVocab {
                    prompts,
                    images: Arc::default(),
                }),
            })
            .collect()
    }

    /// Takes its next processing slot at `now` (`rate` per camera; 0: no limit).
    pub(super) fn schedule(&mut self, now: Instant, rate: f64) {
        if rate > 0.0 {
            self.next_frame_at = now + Duration::from_secs_f64(1.0 / rate);
        }
    }
}
