//! Plain result types of the pipeline: numbers and strings, no tensors.

use std::time::Duration;

use serde::Serialize;

use crate::vision::boxes::BBox;

/// Time spent in each stage of one call.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    /// This image's preprocessing.
    pub preprocess: Duration,
    /// The model's forward pass. In a batched call (`Detector::detect_batch`,
    /// `Segmenter::segment_batch`) the whole batch's, the same in every image's result.
    pub forward: Duration,
    /// This image's post-processing.
    pub postprocess: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.preprocess + self.forward + self.postprocess
    }
}

/// One detected object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Index of the matching query in the vocabulary.
    pub query_index: usize,
    /// The query text.
    pub label: String,
    /// sigmoid of the best query logit, in [0, 1].
    pub score: f32,
    /// Corners in original-image pixels (not clamped to the image, as transformers).
    pub bbox: BBox,
    /// OWLv2: sigmoid of the box's objectness logit, in [0, 1] (whatever the queries); `None`
    /// for OWL-ViT, which has no objectness head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objectness: Option<f32>,
}

/// A detection as the tracker takes it (its label, corners and score).
impl<'a> From<&'a Detection> for crate::tracking::LabelledBox<'a> {
    fn from(d: &'a Detection) -> Self {
        Self {
            label: &d.label,
            xyxy: d.bbox.to_array(),
            score: d.score,
        }
    }
}

impl Detection {
    /// A detection without objectness (OWL-ViT); see [`Self::with_objectness`].
    pub fn new(query_index: usize, label: impl Into<String>, score: f32, bbox: BBox) -> Self {
        Self {
            query_index,
            label: label.into(),
            score,
            bbox,
            objectness: None,
        }
    }

    /// The same detection with an objectness score (OWLv2).
    pub fn with_objectness(self, objectness: Option<f32>) -> Self {
        Self { objectness, ..self }
    }
}

/// Detections on one image, by descending score.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionResult {
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
    #[serde(skip)]
    pub timings: Timings,
}
