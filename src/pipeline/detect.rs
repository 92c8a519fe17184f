//! Open-vocabulary detection with OWL-ViT: queries are encoded once per vocabulary and cached,
//! so a frame costs one vision pass.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::{
    checkpoint::Checkpoint,
    device::LoadOptions,
    text_cache::TextCache,
    tokenizer::{Padding, TextTokenizer, TokenizerKind},
    types::{Detection, DetectionResult, Timings},
    validate_texts,
};
use crate::error::{Error, Result};
use crate::models::owlvit::{OwlVitConfig, OwlVitForObjectDetection, OwlVitObjectDetectionOutput};
use crate::vision::{
    boxes::{batched_nms, BBox},
    preprocess::{
        ImageProcessor, PreprocessorConfig, ProcessorDefaults, Resample, SizeSpec,
        OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
    },
};

/// config.json `architectures` this task accepts.
pub const OWLVIT_ARCHITECTURES: &[&str] = &["OwlViTForObjectDetection"];
/// transformers' default `threshold` of `post_process_object_detection`.
pub const DEFAULT_THRESHOLD: f32 = 0.1;

/// Post-processing parameters.
#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    /// Keep boxes whose score is strictly greater than this.
    pub threshold: f32,
    /// IoU above which a lower-scored box of the same query is suppressed; `>= 1` disables NMS.
    pub nms_iou: f32,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
            nms_iou: 1.0,
        }
    }
}

/// Encoded text queries: compute once per vocabulary, reuse for every frame.
#[derive(Debug, Clone)]
pub struct QueryEmbeddings {
    pub texts: Vec<String>,
    /// (queries, projection_dim), L2-normalized, on the model's device.
    pub embeds: Tensor,
    /// Whether each query was cut to the text tower's length.
    pub truncated: Vec<bool>,
}

impl QueryEmbeddings {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// OWL-ViT detector on one device.
pub struct Detector {
    name: String,
    model: OwlVitForObjectDetection,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    options: LoadOptions,
    cache: TextCache<QueryEmbeddings>,
}

/// `OwlViTImageProcessor`'s class defaults.
const OWLVIT_PROCESSOR_DEFAULTS: ProcessorDefaults = ProcessorDefaults {
    size: SizeSpec::HeightWidth {
        height: 768,
        width: 768,
    },
    resample: Resample::Bicubic,
    do_center_crop: false,
    crop_size: None,
    image_mean: OPENAI_CLIP_MEAN,
    image_std: OPENAI_CLIP_STD,
};

impl Detector {
    /// Loads an `OwlViTForObjectDetection` checkpoint (directory or hub id).
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::resolve(model)?, options)
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, options: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", model = %ckpt.name).entered();
        ckpt.expect_architecture(OWLVIT_ARCHITECTURES)?;
        let config: OwlVitConfig = ckpt.config()?;
        let vb = ckpt.var_builder(options.dtype, &options.device)?;
        let model = OwlVitForObjectDetection::new(vb, &config, &ckpt.name)
            .map_err(|e| ckpt.load_error(e))?;
        let tokenizer = TextTokenizer::load(
            ckpt,
            TokenizerKind::ClipBpe,
            config.text_config.max_position_embeddings,
            config.text_config.pad_token_id,
        )?;
        let pre: PreprocessorConfig = ckpt.preprocessor_config()?;
        let mut defaults = OWLVIT_PROCESSOR_DEFAULTS;
        let side = config.vision_config.image_size;
        defaults.size = SizeSpec::HeightWidth {
            height: side,
            width: side,
        };
        let processor = ImageProcessor::from_config(pre, &defaults)?;
        let expected = (side, side);
        let produced = processor
            .center_crop
            .unwrap_or_else(|| processor.resized_size(side, side));
        if produced != expected {
            return Err(Error::Unsupported {
                model: ckpt.name.clone(),
                reason: format!(
                    "preprocessor_config.json produces {}x{} inputs but the vision tower takes {side}x{side}",
                    produced.1, produced.0
                ),
            });
        }
        Ok(Self {
            name: ckpt.name.clone(),
            model,
            tokenizer,
            processor,
            options: options.clone(),
            cache: TextCache::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokenizes and embeds `queries` (always computed; see [`Self::queries`] for the cache).
    pub fn encode_queries<S: AsRef<str>>(&self, queries: &[S]) -> Result<QueryEmbeddings> {
        validate_texts(queries, "query")?;
        let _span =
            tracing::info_span!("encode_queries", model = %self.name, n = queries.len()).entered();
        let batch = self.tokenizer.encode(queries, Padding::MaxLength)?;
        let ids = Tensor::new(batch.ids.clone(), &self.options.device)?;
        let embeds = self.model.get_text_features(&ids)?;
        Ok(QueryEmbeddings {
            texts: queries.iter().map(|q| q.as_ref().to_string()).collect(),
            embeds,
            truncated: batch.truncated,
        })
    }

    /// The embeddings of `queries`, re-encoded only when the vocabulary changed since the last
    /// call.
    pub fn queries<S: AsRef<str>>(&self, queries: &[S]) -> Result<Arc<QueryEmbeddings>> {
        self.cache
            .get_or_encode(queries, || self.encode_queries(queries))
    }

    /// Preprocessed pixel values (1, 3, H, W) in the model's dtype.
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor> {
        Ok(self
            .processor
            .preprocess(image, &self.options.device)?
            .to_dtype(self.options.dtype)?)
    }

    /// Raw model outputs for preprocessed pixel values.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        queries: &QueryEmbeddings,
    ) -> Result<OwlVitObjectDetectionOutput> {
        Ok(self.model.detect(pixel_values, &queries.embeds)?)
    }

    /// Detects `queries` in `image`: preprocess, one vision pass, post-process.
    pub fn detect(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        params: &DetectParams,
    ) -> Result<DetectionResult> {
        let _span = tracing::info_span!("detect", model = %self.name).entered();
        self.run(image, queries, |logits, boxes, width, height| {
            post_process_object_detection(logits, boxes, &queries.texts, params, width, height)
        })
    }

    /// Per query, the box that scores best for that query (its own sigmoid score, whatever
    /// the other queries score there), in query order: what a planner asks when it wants to
    /// know whether each object is visible. No threshold, no NMS.
    pub fn best_per_query(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
    ) -> Result<DetectionResult> {
        let _span = tracing::info_span!("best_per_query", model = %self.name).entered();
        self.run(image, queries, |logits, boxes, width, height| {
            best_box_per_query(logits, boxes, &queries.texts, width, height)
        })
    }

    /// Preprocess, one vision pass, then `post` on the host copies of the outputs.
    fn run(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        post: impl FnOnce(&[Vec<f32>], &[Vec<f32>], u32, u32) -> Result<Vec<Detection>>,
    ) -> Result<DetectionResult> {
        let t0 = Instant::now();
        let pixel_values = self.pixel_values(image)?;
        let t1 = Instant::now();
        let out = self.forward(&pixel_values, queries)?;
        // (patches, queries), (patches, 4): bring them to the host once.
        let logits = out
            .logits
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let boxes = out
            .pred_boxes
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let t2 = Instant::now();
        let (width, height) = image.dimensions();
        let detections = post(&logits, &boxes, width, height)?;
        let t3 = Instant::now();
        Ok(DetectionResult {
            width,
            height,
            detections,
            timings: Timings {
                preprocess: t1 - t0,
                forward: t2 - t1,
                postprocess: t3 - t2,
            },
        })
    }
}

/// transformers' `post_process_object_detection` for one image, plus optional per-query NMS:
/// per box the best query, its sigmoid score, (cx, cy, w, h) -> corners scaled to the original
/// `width` x `height` (not clamped); boxes with score > threshold, by descending score.
pub fn post_process_object_detection(
    logits: &[Vec<f32>],
    boxes: &[Vec<f32>],
    labels: &[String],
    params: &DetectParams,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    if logits.len() != boxes.len() {
        return Err(Error::InvalidInput(format!(
            "{} logit rows for {} boxes",
            logits.len(),
            boxes.len()
        )));
    }
    let mut candidates = Vec::new();
    for (row, b) in logits.iter().zip(boxes) {
        let Some((query_index, &logit)) = row
            .iter()
            .enumerate()
            // torch.max returns the first maximum.
            .reduce(|best, cur| if cur.1 > best.1 { cur } else { best })
        else {
            continue;
        };
        let score = sigmoid(logit);
        if score <= params.threshold {
            continue;
        }
        let &[cx, cy, w, h] = b.as_slice() else {
            return Err(Error::InvalidInput(format!("box with {} values", b.len())));
        };
        let label = labels
            .get(query_index)
            .cloned()
            .ok_or_else(|| Error::InvalidInput(format!("query {query_index} has no label")))?;
        candidates.push(Detection {
            query_index,
            label,
            score,
            bbox: BBox::from_center_normalized([cx, cy, w, h], width as f32, height as f32),
        });
    }
    let bboxes: Vec<BBox> = candidates.iter().map(|d| d.bbox).collect();
    let scores: Vec<f32> = candidates.iter().map(|d| d.score).collect();
    let classes: Vec<usize> = candidates.iter().map(|d| d.query_index).collect();
    let keep = batched_nms(&bboxes, &scores, &classes, params.nms_iou);
    Ok(keep.into_iter().map(|i| candidates[i].clone()).collect())
}

/// For each query (column of `logits`), the box with the highest logit for it (the first on
/// ties, as torch.max), scored by its sigmoid; corners in original-image pixels. Queries in
/// order; a query is absent only when there are no boxes.
pub fn best_box_per_query(
    logits: &[Vec<f32>],
    boxes: &[Vec<f32>],
    labels: &[String],
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    if logits.len() != boxes.len() {
        return Err(Error::InvalidInput(format!(
            "{} logit rows for {} boxes",
            logits.len(),
            boxes.len()
        )));
    }
    let mut best = Vec::with_capacity(labels.len());
    for (query_index, label) in labels.iter().enumerate() {
        let mut top: Option<(usize, f32)> = None;
        for (i, row) in logits.iter().enumerate() {
            let logit = *row.get(query_index).ok_or_else(|| {
                Error::InvalidInput(format!("logit row {i} has no query {query_index}"))
            })?;
            if top.is_none_or(|(_, t)| logit > t) {
                top = Some((i, logit));
            }
        }
        let Some((i, logit)) = top else { continue };
        let &[cx, cy, w, h] = boxes[i].as_slice() else {
            return Err(Error::InvalidInput(format!(
                "box with {} values",
                boxes[i].len()
            )));
        };
        best.push(Detection {
            query_index,
            label: label.clone(),
            score: sigmoid(logit),
            bbox: BBox::from_center_normalized([cx, cy, w, h], width as f32, height as f32),
        });
    }
    Ok(best)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
