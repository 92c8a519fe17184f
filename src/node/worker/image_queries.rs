//! Images as queries and prompts: image-guided, one-shot detection ("find more of this") and
//! CLIPSeg segmentation by example image ("segment things like this"), on `~/detect` and
//! `~/segment`, and for the stream through `~/set_queries`. Each image is embedded once (the
//! detector and the segmenter cache them by label and pixels), not per frame.

use std::sync::Arc;

use image::RgbImage;
use vlm_perception::pipeline::{DetectParams, DetectionResult, PromptEmbeddings, QueryEmbeddings};

use super::{ImageArg, Outcome, Sink, Task, Worker};
use crate::convert::{decode, RawImage};

/// A query image as received, with its label (the image's `header.frame_id`).
pub struct QueryImage {
    pub label: String,
    pub image: RawImage,
}

/// Decoded images with their labels (example images as segmentation prompts).
#[derive(Debug, Clone, Default)]
pub(super) struct LabelledImages {
    pub labels: Vec<String>,
    pub images: Vec<RgbImage>,
}

impl LabelledImages {
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

impl<S: Sink> Worker<S> {
    /// Decodes query or prompt images (`what`: "query image", "prompt image"); an image without
    /// a label is named by `what` and its index.
    pub(super) fn decode_images(
        &self,
        images: Vec<QueryImage>,
        what: &str,
    ) -> Result<LabelledImages, String> {
        let max = self.params.camera.max_pixels;
        let mut out = LabelledImages::default();
        for (i, q) in images.into_iter().enumerate() {
            let label = if q.label.trim().is_empty() {
                format!("{what} {i}")
            } else {
                q.label
            };
            let img = decode(&q.image, &format!("{what} {i} (`{label}`)"), max)
                .map_err(|e| e.to_string())?;
            out.labels.push(label);
            out.images.push(img);
        }
        Ok(out)
    }

    /// Decodes and embeds query images (cached by the detector).
    fn embed_query_images(
        &mut self,
        images: Vec<QueryImage>,
    ) -> Result<Arc<QueryEmbeddings>, String> {
        let decoded = self.decode_images(images, "query image")?;
        let d = self.loaded_detector()?;
        d.query_images(&decoded.images, &decoded.labels)
            .map_err(|e| e.to_string())
    }

    /// The embeddings of text prompts (cached as the stream's when `for_stream`) followed by
    /// example images (cached by the segmenter), as one prompt list.
    pub(super) fn mixed_prompt_embeddings(
        &mut self,
        texts: &[String],
        for_stream: bool,
        images: &LabelledImages,
    ) -> Result<Arc<PromptEmbeddings>, String> {
        let text = if texts.is_empty() {
            None
        } else {
            Some(self.prompt_embeddings(texts, for_stream)?)
        };
        let examples = if images.is_empty() {
            None
        } else {
            let s = self.loaded_segmenter()?;
            Some(
                s.image_prompts(&images.images, &images.labels)
                    .map_err(|e| e.to_string())?,
            )
        };
        match (text, examples) {
            (Some(t), None) => Ok(t),
            (None, Some(e)) => Ok(e),
            (Some(t), Some(e)) => PromptEmbeddings::concat(&[&t, &e])
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            (None, None) => Err("no prompts".into()),
        }
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

    /// Makes query images the stream's detection vocabulary (`camera`'s own, or the shared one).
    pub(super) fn set_image_vocabulary(
        &mut self,
        camera: Option<usize>,
        images: Vec<QueryImage>,
    ) -> Result<String, String> {
        if self.detector.is_none() {
            return Err(self.unavailable(Task::Detection));
        }
        let emb = self.embed_query_images(images)?;
        let n = emb.len();
        self.own_detection_vocab(camera).images = Some(emb);
        Ok(format!("{n} detection query image(s)"))
    }
}
