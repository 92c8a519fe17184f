//! Image queries (image-guided, one-shot detection: "find more of this"): on `~/detect`, and as
//! the stream's vocabulary through `~/set_queries`. Each query image is embedded once (the
//! detector caches them by label and pixels), not per frame.

use std::sync::Arc;

use image::RgbImage;
use vlm_perception::pipeline::{DetectParams, DetectionResult, QueryEmbeddings};

use super::{ImageArg, Outcome, Sink, Task, Worker};
use crate::convert::{decode, RawImage};

/// A query image as received, with its label (the image's `header.frame_id`).
pub struct QueryImage {
    pub label: String,
    pub image: RawImage,
}

impl<S: Sink> Worker<S> {
    /// Decodes and embeds query images (cached by the detector).
    fn embed_query_images(
        &mut self,
        images: Vec<QueryImage>,
    ) -> Result<Arc<QueryEmbeddings>, String> {
        let max = self.params.camera.max_pixels;
        let mut labels = Vec::with_capacity(images.len());
        let mut decoded: Vec<RgbImage> = Vec::with_capacity(images.len());
        for (i, q) in images.into_iter().enumerate() {
            let label = if q.label.trim().is_empty() {
                format!("query image {i}")
            } else {
                q.label
            };
            let img = decode(&q.image, &format!("query image {i} (`{label}`)"), max)
                .map_err(|e| e.to_string())?;
            labels.push(label);
            decoded.push(img);
        }
        let d = self.loaded_detector()?;
        d.query_images(&decoded, &labels).map_err(|e| e.to_string())
    }

    /// `~/detect` with query images: transformers' image-guided post-processing (its defaults:
    /// threshold 0, NMS 0.3; `threshold` overrides the first).
    pub(super) fn detect_images(
        &mut self,
        image: ImageArg,
        images: Vec<QueryImage>,
        threshold: Option<f32>,
    ) -> Result<Outcome<DetectionResult>, String> {
        let (header, img) = self.image_for(Task::Detection, image)?;
        let emb = self.embed_query_images(images)?;
        let mut params = DetectParams::image_guided();
        if let Some(t) = threshold {
            params.threshold = t;
        }
        let d = self.loaded_detector()?;
        let result = d
            .detect_image_guided(&img, &emb, &params)
            .map_err(|e| e.to_string())?;
        Ok(Outcome {
            header,
            model: d.name().to_string(),
            latency: result.timings.total(),
            result,
        })
    }

    /// Makes query images the stream's detection vocabulary.
    pub(super) fn set_image_vocabulary(
        &mut self,
        images: Vec<QueryImage>,
    ) -> Result<String, String> {
        if self.detector.is_none() {
            return Err(self.unavailable(Task::Detection));
        }
        let emb = self.embed_query_images(images)?;
        let n = emb.len();
        self.image_vocabulary = Some(emb);
        Ok(format!("{n} detection query image(s)"))
    }

    /// The stream's image vocabulary on one frame, when one is set.
    pub(super) fn detect_frame_images(
        &mut self,
        image: &RgbImage,
    ) -> Option<Result<DetectionResult, String>> {
        let emb = self.image_vocabulary.clone()?;
        let d = self.detector.as_ref()?;
        Some(
            d.detect_image_guided(image, &emb, &DetectParams::image_guided())
                .map_err(|e| e.to_string()),
        )
    }
}
