//! Open-vocabulary detection with OWL-ViT or OWLv2 (recognised from config.json): queries are
//! encoded once per vocabulary and cached, so a frame costs one vision pass.
//!
//! Queries are text ([`Detector::encode_queries`]) or images ([`Detector::encode_query_images`]:
//! image-guided, one-shot detection, transformers' `image_guided_detection`); both become
//! [`QueryEmbeddings`] scored by the same class head. Text detections are post-processed as
//! `post_process_object_detection` ([`Detector::detect`]), image-guided ones as
//! `post_process_image_guided_detection` ([`Detector::detect_image_guided`]).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::{
    checkpoint::{Checkpoint, PREPROCESSOR_FILE},
    device::LoadOptions,
    text_cache::{image_keys, TextCache},
    tokenizer::{Padding, TextTokenizer, TokenizerKind},
    types::{Detection, DetectionResult, Timings},
    validate_texts,
};
use crate::error::{Error, Result};
use crate::models::owlv2::{Owlv2Config, Owlv2ForObjectDetection, Owlv2ObjectDetectionOutput};
use crate::models::owlvit::{OwlVitConfig, OwlVitForObjectDetection, OwlVitObjectDetectionOutput};
use crate::vision::{
    boxes::{batched_nms, suppress_overlapping_scores, BBox},
    image_io::check_size,
    masks::sigmoid,
    owlv2_preprocess::Owlv2ImageProcessor,
    preprocess::{
        ImageProcessor, PreprocessorConfig, ProcessorDefaults, Resample, ShortestEdgeRule,
        SizeSpec, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
    },
};

/// config.json `architectures` of OWL-ViT checkpoints.
pub const OWLVIT_ARCHITECTURES: &[&str] = &["OwlViTForObjectDetection"];
/// config.json `architectures` of OWLv2 checkpoints.
pub const OWLV2_ARCHITECTURES: &[&str] = &["Owlv2ForObjectDetection"];
/// `Owlv2Config.model_type`, which identifies an OWLv2 checkpoint whose config.json lists no
/// `architectures`.
pub const OWLV2_MODEL_TYPE: &str = "owlv2";
/// The `image_processor_type` prefix of OWLv2's processors (`Owlv2ImageProcessor`, `...Fast`,
/// `...Pil`).
const OWLV2_PROCESSOR_PREFIX: &str = "Owlv2ImageProcessor";
/// transformers' default `threshold` of `post_process_object_detection`.
pub const DEFAULT_THRESHOLD: f32 = 0.1;
/// transformers' default `threshold` of `post_process_image_guided_detection`.
pub const DEFAULT_IMAGE_GUIDED_THRESHOLD: f32 = 0.0;
/// transformers' default `nms_threshold` of `post_process_image_guided_detection`.
pub const DEFAULT_IMAGE_GUIDED_NMS_IOU: f32 = 0.3;
/// `post_process_image_guided_detection`: added to the best score before it scales the others.
const IMAGE_GUIDED_MAX_SCORE_EPS: f32 = 1e-6;
/// `post_process_image_guided_detection`: the fraction of the best score that maps to alpha 0
/// ("the best box for each query has alpha 1.0 and the worst box has alpha 0.1").
const IMAGE_GUIDED_ALPHA_FLOOR: f32 = 0.1;

/// Post-processing parameters.
#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    /// Text queries: keep boxes whose score is strictly greater than this. Image-guided: zero
    /// the scores below this before computing alphas (transformers' `threshold`).
    pub threshold: f32,
    /// Text queries: IoU above which a lower-scored box of the same query is suppressed.
    /// Image-guided: transformers' `nms_threshold`, over all boxes whatever their query.
    /// `>= 1` disables NMS.
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

impl DetectParams {
    /// The defaults of `post_process_image_guided_detection` (threshold 0, NMS at IoU 0.3),
    /// for [`Detector::detect_image_guided`].
    pub fn image_guided() -> Self {
        Self {
            threshold: DEFAULT_IMAGE_GUIDED_THRESHOLD,
            nms_iou: DEFAULT_IMAGE_GUIDED_NMS_IOU,
        }
    }
}

/// Where query embeddings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKind {
    /// Text queries: projected, L2-normalized text embeddings.
    Text,
    /// Query images (`embed_image_query`): per image, the index (patch) of the box predicted
    /// on it whose class embedding is the query.
    Image { best_box_indices: Vec<usize> },
}

/// Encoded queries, text or images: compute once per vocabulary, reuse for every frame.
#[derive(Debug, Clone)]
pub struct QueryEmbeddings {
    /// The query texts; for query images, the labels given (e.g. file names).
    pub texts: Vec<String>,
    /// (queries, projection_dim) on the model's device: L2-normalized text embeddings, or the
    /// query images' chosen class embeddings (the class head normalizes both).
    pub embeds: Tensor,
    /// Whether each query was cut to the text tower's length (always false for images).
    pub truncated: Vec<bool>,
    pub kind: QueryKind,
}

impl QueryEmbeddings {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// The detection architectures this task loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorFamily {
    /// `OwlViTForObjectDetection`.
    OwlVit,
    /// `Owlv2ForObjectDetection`: OWL-ViT plus an objectness head.
    Owlv2,
}

impl DetectorFamily {
    /// Recognises the family from config.json's first `architectures` entry (or its
    /// `model_type` when there is none).
    pub fn of_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let found = ckpt.architecture()?;
        if OWLVIT_ARCHITECTURES.contains(&found.as_str()) {
            Ok(Self::OwlVit)
        } else if OWLV2_ARCHITECTURES.contains(&found.as_str()) || found == OWLV2_MODEL_TYPE {
            Ok(Self::Owlv2)
        } else {
            Err(Error::WrongArchitecture {
                model: ckpt.name.clone(),
                found,
                expected: [OWLVIT_ARCHITECTURES, OWLV2_ARCHITECTURES]
                    .concat()
                    .join(" or "),
            })
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::OwlVit => "OWL-ViT",
            Self::Owlv2 => "OWLv2",
        }
    }
}

/// The model of either family.
#[derive(Debug, Clone)]
enum DetectionModel {
    OwlVit(OwlVitForObjectDetection),
    Owlv2(Owlv2ForObjectDetection),
}

impl DetectionModel {
    fn get_text_features(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::OwlVit(m) => m.get_text_features(input_ids),
            Self::Owlv2(m) => m.get_text_features(input_ids),
        }
    }

    fn detect(&self, pixel_values: &Tensor, query_embeds: &Tensor) -> Result<DetectorOutput> {
        Ok(match self {
            Self::OwlVit(m) => m.detect(pixel_values, query_embeds)?.into(),
            Self::Owlv2(m) => m.detect(pixel_values, query_embeds)?.into(),
        })
    }

    /// The query images' feature maps, then `embed_image_query` on them.
    fn embed_query_images(&self, query_pixel_values: &Tensor) -> Result<ImageQueryOutput> {
        let (query_image_embeds, query) = match self {
            Self::OwlVit(m) => {
                let map = m.image_embedder(query_pixel_values)?;
                let query = m.embed_image_query(&map)?;
                (map, query)
            }
            Self::Owlv2(m) => {
                let map = m.image_embedder(query_pixel_values)?;
                let query = m.embed_image_query(&map)?;
                (map, query)
            }
        };
        Ok(ImageQueryOutput {
            query_embeds: query.query_embeds,
            best_box_indices: query.best_box_indices,
            query_pred_boxes: query.query_pred_boxes,
            query_image_embeds,
        })
    }
}

/// Raw outputs of embedding a batch of query images (`embed_image_query`).
#[derive(Debug, Clone)]
pub struct ImageQueryOutput {
    /// (b, d_text): per query image, the chosen box's class embedding (not normalized).
    pub query_embeds: Tensor,
    /// Per query image, the index (patch) of the chosen box.
    pub best_box_indices: Vec<usize>,
    /// (b, patches, 4) in f32, normalized (cx, cy, w, h) (of the padded square for OWLv2).
    pub query_pred_boxes: Tensor,
    /// (b, patches_h, patches_w, d_vision): the query images' feature maps.
    pub query_image_embeds: Tensor,
}

/// The image processor of a detection checkpoint, as its preprocessor_config.json's
/// `image_processor_type` names it (the architecture's own when the type is not given). It
/// also decides how boxes are scaled back, as each transformers processor's
/// `post_process_object_detection` does.
#[derive(Debug, Clone)]
pub enum DetectionProcessor {
    /// `OwlViTImageProcessor`: resize to the vision tower's size; boxes scale to (W, H).
    OwlVit(ImageProcessor),
    /// `Owlv2ImageProcessor`: pad to a square, blur, resize; boxes scale by max(H, W).
    Owlv2(Owlv2ImageProcessor),
}

impl DetectionProcessor {
    /// Preprocessed pixel values (1, 3, H, W) in f32.
    pub fn preprocess(&self, image: &RgbImage, device: &candle_core::Device) -> Result<Tensor> {
        match self {
            Self::OwlVit(p) => p.preprocess(image, device),
            Self::Owlv2(p) => p.preprocess(image, device),
        }
    }

    /// How post-processing maps normalised boxes to original-image pixels.
    pub fn box_scale(&self) -> BoxScale {
        match self {
            Self::OwlVit(_) => BoxScale::ImageSize,
            Self::Owlv2(_) => BoxScale::PaddedSquare,
        }
    }
}

/// How normalised (cx, cy, w, h) boxes are scaled to original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxScale {
    /// `OwlViTImageProcessor`: x by the width, y by the height.
    ImageSize,
    /// `Owlv2ImageProcessor` (`_scale_boxes`): both axes by max(H, W), the side of the padded
    /// square the model saw (transformers does so whether or not `do_pad` is set).
    PaddedSquare,
}

impl BoxScale {
    /// The (x, y) factors for an image of `width` x `height`.
    pub fn factors(self, width: u32, height: u32) -> (f32, f32) {
        match self {
            Self::ImageSize => (width as f32, height as f32),
            Self::PaddedSquare => {
                let side = width.max(height) as f32;
                (side, side)
            }
        }
    }
}

/// Raw outputs of either family for a batch of images: logits and boxes in f32.
#[derive(Debug, Clone)]
pub struct DetectorOutput {
    /// (b, patches, queries)
    pub logits: Tensor,
    /// (b, patches, 4), normalized (cx, cy, w, h) (of the padded square for OWLv2)
    pub pred_boxes: Tensor,
    /// (b, patches) in f32; OWLv2 only.
    pub objectness_logits: Option<Tensor>,
    /// (b, patches_h, patches_w, d_vision)
    pub image_embeds: Tensor,
    /// (b, patches, d_text)
    pub class_embeds: Tensor,
}

impl From<OwlVitObjectDetectionOutput> for DetectorOutput {
    fn from(o: OwlVitObjectDetectionOutput) -> Self {
        Self {
            logits: o.logits,
            pred_boxes: o.pred_boxes,
            objectness_logits: None,
            image_embeds: o.image_embeds,
            class_embeds: o.class_embeds,
        }
    }
}

impl From<Owlv2ObjectDetectionOutput> for DetectorOutput {
    fn from(o: Owlv2ObjectDetectionOutput) -> Self {
        Self {
            logits: o.logits,
            pred_boxes: o.pred_boxes,
            objectness_logits: Some(o.objectness_logits),
            image_embeds: o.image_embeds,
            class_embeds: o.class_embeds,
        }
    }
}

/// One image's raw outputs on the host: what post-processing reads.
#[derive(Debug, Clone, Default)]
pub struct RawDetections {
    /// (patches, queries) class logits.
    pub logits: Vec<Vec<f32>>,
    /// (patches, 4) normalized (cx, cy, w, h).
    pub boxes: Vec<Vec<f32>>,
    /// (patches,) objectness logits; OWLv2 only.
    pub objectness_logits: Option<Vec<f32>>,
}

/// OWL-ViT or OWLv2 detector on one device.
pub struct Detector {
    name: String,
    family: DetectorFamily,
    model: DetectionModel,
    tokenizer: TextTokenizer,
    processor: DetectionProcessor,
    options: LoadOptions,
    cache: TextCache<QueryEmbeddings>,
    /// Query images, keyed by label and content ([`image_key`]).
    image_cache: TextCache<QueryEmbeddings>,
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
    shortest_edge: ShortestEdgeRule::Vilt,
};

impl Detector {
    /// Loads an `OwlViTForObjectDetection` or `Owlv2ForObjectDetection` checkpoint (directory
    /// or hub id).
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::resolve(model)?, options)
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, options: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", model = %ckpt.name).entered();
        let family = DetectorFamily::of_checkpoint(ckpt)?;
        let vb = ckpt.model_vars(options)?;
        let (model, config) = match family {
            DetectorFamily::OwlVit => {
                let config: OwlVitConfig = ckpt.config()?;
                let model = OwlVitForObjectDetection::new(vb, &config, &ckpt.name)
                    .map_err(|e| ckpt.load_error(e))?;
                (DetectionModel::OwlVit(model), config)
            }
            DetectorFamily::Owlv2 => {
                let config: Owlv2Config = ckpt.config()?;
                let model = Owlv2ForObjectDetection::new(vb, &config, &ckpt.name)
                    .map_err(|e| ckpt.load_error(e))?;
                (DetectionModel::Owlv2(model), config.0)
            }
        };
        let tokenizer = TextTokenizer::load(
            ckpt,
            TokenizerKind::ClipBpe,
            config.text_config.max_position_embeddings,
            config.text_config.pad_token_id,
        )?;
        let processor = load_processor(ckpt, family, config.vision_config.image_size)?;
        tracing::debug!(model = %ckpt.name, family = family.name(), ?processor, "detector loaded");
        super::host_memory::release_freed_memory();
        Ok(Self {
            name: ckpt.name.clone(),
            family,
            model,
            tokenizer,
            processor,
            options: options.clone(),
            cache: TextCache::new(),
            image_cache: TextCache::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    pub fn family(&self) -> DetectorFamily {
        self.family
    }

    /// Whether detections carry an objectness score (OWLv2).
    pub fn has_objectness(&self) -> bool {
        self.family == DetectorFamily::Owlv2
    }

    pub fn processor(&self) -> &DetectionProcessor {
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
            kind: QueryKind::Text,
        })
    }

    /// The embeddings of `queries`, re-encoded only when the vocabulary changed since the last
    /// call.
    pub fn queries<S: AsRef<str>>(&self, queries: &[S]) -> Result<Arc<QueryEmbeddings>> {
        self.cache
            .get_or_encode(queries, || self.encode_queries(queries))
    }

    /// Embeds query images for image-guided (one-shot) detection, one query per image, named
    /// by `labels` in results: each image through the processor and the vision tower, then
    /// transformers' `embed_image_query` (always computed; see [`Self::query_images`] for the
    /// cache). Images are embedded one at a time, so memory does not grow with their number.
    pub fn encode_query_images<S: AsRef<str>>(
        &self,
        images: &[RgbImage],
        labels: &[S],
    ) -> Result<QueryEmbeddings> {
        check_query_images(images, labels)?;
        let _span =
            tracing::info_span!("encode_query_images", model = %self.name, n = images.len())
                .entered();
        let mut embeds = Vec::with_capacity(images.len());
        let mut best_box_indices = Vec::with_capacity(images.len());
        for (image, label) in images.iter().zip(labels) {
            let label = label.as_ref();
            check_size(image.width(), image.height(), label)?;
            let out = self
                .embed_query_pixel_values(&self.pixel_values(image)?)
                .map_err(|e| Error::Image {
                    name: label.to_string(),
                    reason: format!("cannot embed it as a query: {e}"),
                })?;
            embeds.push(out.query_embeds);
            best_box_indices.extend(out.best_box_indices);
        }
        Ok(QueryEmbeddings {
            texts: labels.iter().map(|l| l.as_ref().to_string()).collect(),
            embeds: Tensor::cat(&embeds, 0)?,
            truncated: vec![false; images.len()],
            kind: QueryKind::Image { best_box_indices },
        })
    }

    /// The embeddings of query `images` (named by `labels`), re-encoded only when a label or
    /// an image's pixels changed since the last call: a stream detecting the same query images
    /// embeds them once.
    pub fn query_images<S: AsRef<str>>(
        &self,
        images: &[RgbImage],
        labels: &[S],
    ) -> Result<Arc<QueryEmbeddings>> {
        check_query_images(images, labels)?;
        self.image_cache
            .get_or_encode(&image_keys(images, labels), || {
                self.encode_query_images(images, labels)
            })
    }

    /// `embed_image_query` on preprocessed query pixel values (b, 3, H, W): the raw outputs,
    /// one query per image.
    pub fn embed_query_pixel_values(
        &self,
        query_pixel_values: &Tensor,
    ) -> Result<ImageQueryOutput> {
        self.model.embed_query_images(query_pixel_values)
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
    ) -> Result<DetectorOutput> {
        self.model.detect(pixel_values, &queries.embeds)
    }

    /// Detects `queries` in `image`: preprocess, one vision pass, post-process.
    pub fn detect(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        params: &DetectParams,
    ) -> Result<DetectionResult> {
        self.detect_with_min_objectness(image, queries, params, 0.0)
    }

    /// [`Self::detect`], keeping only boxes whose objectness is above `min_objectness`
    /// (applied with the score threshold, before NMS; 0 keeps all). Objectness is OWLv2's:
    /// `min_objectness > 0` with an OWL-ViT checkpoint is an error.
    pub fn detect_with_min_objectness(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        params: &DetectParams,
        min_objectness: f32,
    ) -> Result<DetectionResult> {
        if !(0.0..=1.0).contains(&min_objectness) {
            return Err(Error::InvalidInput(format!(
                "min_objectness must be in [0, 1], got {min_objectness}"
            )));
        }
        if min_objectness > 0.0 && !self.has_objectness() {
            return Err(Error::Unsupported {
                model: self.name.clone(),
                reason: format!(
                    "min_objectness needs an OWLv2 checkpoint ({} has no objectness head)",
                    self.family.name()
                ),
            });
        }
        let _span = tracing::info_span!("detect", model = %self.name).entered();
        let scale = self.processor.box_scale();
        self.run(image, queries, |raw, width, height| {
            post_process_raw_detections(
                raw,
                &queries.texts,
                params,
                min_objectness,
                scale,
                width,
                height,
            )
        })
    }

    /// Image-guided (one-shot) detection: `image` scored against query embeddings (from
    /// [`Self::encode_query_images`]; text queries work too), post-processed as transformers'
    /// `post_process_image_guided_detection` (see [`post_process_image_guided_detection`];
    /// [`DetectParams::image_guided`] has its defaults). Scores are its display alphas, by
    /// descending score; no objectness (transformers' image-guided outputs have none).
    pub fn detect_image_guided(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        params: &DetectParams,
    ) -> Result<DetectionResult> {
        if queries.is_empty() {
            return Err(Error::InvalidInput("no queries given".into()));
        }
        if !params.threshold.is_finite() || params.nms_iou.is_nan() {
            return Err(Error::InvalidInput(format!(
                "invalid image-guided parameters: threshold {}, NMS IoU {}",
                params.threshold, params.nms_iou
            )));
        }
        let _span = tracing::info_span!("detect_image_guided", model = %self.name).entered();
        let scale = self.processor.box_scale();
        self.run(image, queries, |raw, width, height| {
            let mut detections = post_process_image_guided_detection(
                raw,
                &queries.texts,
                params.threshold,
                params.nms_iou,
                scale,
                width,
                height,
            )?;
            // transformers returns them in box order; ours are by descending score (stable).
            detections.sort_by(|a, b| b.score.total_cmp(&a.score));
            Ok(detections)
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
        let scale = self.processor.box_scale();
        self.run(image, queries, |raw, width, height| {
            best_box_per_query(raw, &queries.texts, scale, width, height)
        })
    }

    /// Preprocess, one vision pass, then `post` on the host copies of the outputs.
    fn run(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        post: impl FnOnce(&RawDetections, u32, u32) -> Result<Vec<Detection>>,
    ) -> Result<DetectionResult> {
        let t0 = Instant::now();
        let pixel_values = self.pixel_values(image)?;
        let t1 = Instant::now();
        let out = self.forward(&pixel_values, queries)?;
        // (patches, queries), (patches, 4), (patches,): bring them to the host once.
        let host2 = |t: &Tensor| t.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>();
        let raw = RawDetections {
            logits: host2(&out.logits)?,
            boxes: host2(&out.pred_boxes)?,
            objectness_logits: out
                .objectness_logits
                .as_ref()
                .map(|t| t.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>())
                .transpose()?,
        };
        let t2 = Instant::now();
        let (width, height) = image.dimensions();
        let detections = post(&raw, width, height)?;
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

/// The image processor for `family`'s checkpoint, checked against the vision tower's
/// `side` x `side` input.
fn load_processor(
    ckpt: &Checkpoint,
    family: DetectorFamily,
    side: usize,
) -> Result<DetectionProcessor> {
    let pre: PreprocessorConfig = ckpt.preprocessor_config()?;
    let owlv2 = match pre.image_processor_type.as_deref() {
        Some(t) => t.starts_with(OWLV2_PROCESSOR_PREFIX),
        None => family == DetectorFamily::Owlv2,
    };
    let produced = if owlv2 {
        let processor = Owlv2ImageProcessor::from_config(&pre).map_err(|e| match e {
            Error::InvalidInput(reason) => Error::Config {
                path: ckpt.dir.join(PREPROCESSOR_FILE),
                reason,
            },
            other => other,
        })?;
        let Some(size) = processor.size else {
            return Err(Error::Unsupported {
                model: ckpt.name.clone(),
                reason: format!(
                    "preprocessor_config.json has do_resize false (inputs of the padded image's \
                     size) but the vision tower takes {side}x{side}"
                ),
            });
        };
        (DetectionProcessor::Owlv2(processor), size)
    } else {
        let mut defaults = OWLVIT_PROCESSOR_DEFAULTS;
        defaults.size = SizeSpec::HeightWidth {
            height: side,
            width: side,
        };
        let processor = ImageProcessor::from_config(pre, &defaults)?;
        let size = processor
            .center_crop
            .unwrap_or_else(|| processor.resized_size(side, side));
        (DetectionProcessor::OwlVit(processor), size)
    };
    let (processor, (h, w)) = produced;
    if (h, w) != (side, side) {
        return Err(Error::Unsupported {
            model: ckpt.name.clone(),
            reason: format!(
                "preprocessor_config.json produces {w}x{h} inputs but the vision tower takes {side}x{side}"
            ),
        });
    }
    Ok(processor)
}

/// transformers' `OwlViTImageProcessor.post_process_object_detection` for one image, plus
/// optional per-query NMS: per box the best query, its sigmoid score, (cx, cy, w, h) -> corners
/// scaled to the original `width` x `height` (not clamped); boxes with score > threshold, by
/// descending score.
pub fn post_process_object_detection(
    logits: &[Vec<f32>],
    boxes: &[Vec<f32>],
    labels: &[String],
    params: &DetectParams,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    let raw = RawDetections {
        logits: logits.to_vec(),
        boxes: boxes.to_vec(),
        objectness_logits: None,
    };
    post_process_raw_detections(
        &raw,
        labels,
        params,
        0.0,
        BoxScale::ImageSize,
        width,
        height,
    )
}

/// `post_process_object_detection` of either family for one image, plus our options: per box
/// the best query (the first maximum, as torch.max), its sigmoid score, (cx, cy, w, h) ->
/// corners scaled by `scale` (not clamped), the objectness sigmoid when the outputs have one;
/// boxes with score > `params.threshold` and, when `min_objectness > 0`, objectness >
/// `min_objectness`; then per-query NMS (`params.nms_iou`); by descending score.
pub fn post_process_raw_detections(
    raw: &RawDetections,
    labels: &[String],
    params: &DetectParams,
    min_objectness: f32,
    scale: BoxScale,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    check_rows(raw)?;
    let (sx, sy) = scale.factors(width, height);
    let mut candidates = Vec::new();
    for (i, (row, b)) in raw.logits.iter().zip(&raw.boxes).enumerate() {
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
        let objectness = raw.objectness_logits.as_ref().map(|o| sigmoid(o[i]));
        if min_objectness > 0.0 && objectness.is_some_and(|o| o <= min_objectness) {
            continue;
        }
        let label = labels
            .get(query_index)
            .ok_or_else(|| Error::InvalidInput(format!("query {query_index} has no label")))?;
        candidates.push(
            Detection::new(query_index, label.as_str(), score, corners(b, sx, sy)?)
                .with_objectness(objectness),
        );
    }
    let bboxes: Vec<BBox> = candidates.iter().map(|d| d.bbox).collect();
    let scores: Vec<f32> = candidates.iter().map(|d| d.score).collect();
    let classes: Vec<usize> = candidates.iter().map(|d| d.query_index).collect();
    let keep = batched_nms(&bboxes, &scores, &classes, params.nms_iou);
    Ok(keep.into_iter().map(|i| candidates[i].clone()).collect())
}

/// For each query (column of the logits), the box with the highest logit for it (the first on
/// ties, as torch.max), scored by its sigmoid; corners scaled by `scale`, with the box's
/// objectness when the outputs have one. Queries in order; a query is absent only when there
/// are no boxes.
pub fn best_box_per_query(
    raw: &RawDetections,
    labels: &[String],
    scale: BoxScale,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    check_rows(raw)?;
    let (sx, sy) = scale.factors(width, height);
    let mut best = Vec::with_capacity(labels.len());
    for (query_index, label) in labels.iter().enumerate() {
        let mut top: Option<(usize, f32)> = None;
        for (i, row) in raw.logits.iter().enumerate() {
            let logit = *row.get(query_index).ok_or_else(|| {
                Error::InvalidInput(format!("logit row {i} has no query {query_index}"))
            })?;
            if top.is_none_or(|(_, t)| logit > t) {
                top = Some((i, logit));
            }
        }
        let Some((i, logit)) = top else { continue };
        let objectness = raw.objectness_logits.as_ref().map(|o| sigmoid(o[i]));
        best.push(
            Detection::new(
                query_index,
                label.as_str(),
                sigmoid(logit),
                corners(&raw.boxes[i], sx, sy)?,
            )
            .with_objectness(objectness),
        );
    }
    Ok(best)
}

/// transformers' `post_process_image_guided_detection(outputs, threshold, nms_threshold,
/// target_sizes)` for one image (OWL-ViT's and OWLv2's differ only in `scale`): per box the
/// best query (the first maximum) and its sigmoid score; a greedy NMS by descending score over
/// all boxes that zeroes the scores of boxes overlapping a kept one by IoU `> nms_threshold`
/// (on the normalized corners; none when `nms_threshold >= 1`); nothing when every score is
/// then 0; scores `< threshold` set to 0; then the display alphas `clip((s - 0.1 m) / (0.9 m),
/// 0, 1)` with `m` the best score + 1e-6, keeping boxes with alpha > 0. Returns them in box
/// (patch) order as transformers does, alpha as the score, `query_index` the best query,
/// corners scaled by `scale` to the `width` x `height` image (not clamped); no objectness.
pub fn post_process_image_guided_detection(
    raw: &RawDetections,
    labels: &[String],
    threshold: f32,
    nms_threshold: f32,
    scale: BoxScale,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    check_rows(raw)?;
    // probs = torch.max(logits, dim=-1): the first maximum.
    let best: Vec<(usize, f32)> = raw
        .logits
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .copied()
                .enumerate()
                .reduce(|best, cur| if cur.1 > best.1 { cur } else { best })
                .map(|(q, logit)| (q, sigmoid(logit)))
                .ok_or_else(|| Error::InvalidInput(format!("logit row {i} has no queries")))
        })
        .collect::<Result<_>>()?;
    let normalized: Vec<BBox> = raw
        .boxes
        .iter()
        .map(|b| corners(b, 1.0, 1.0))
        .collect::<Result<_>>()?;
    let mut scores: Vec<f32> = best.iter().map(|&(_, s)| s).collect();
    suppress_overlapping_scores(&normalized, &mut scores, nms_threshold);
    if scores.iter().all(|&s| s == 0.0) {
        return Ok(Vec::new());
    }
    for s in &mut scores {
        if *s < threshold {
            *s = 0.0;
        }
    }
    let max_score =
        scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) + IMAGE_GUIDED_MAX_SCORE_EPS;
    let floor = max_score * IMAGE_GUIDED_ALPHA_FLOOR;
    let span = max_score * (1.0 - IMAGE_GUIDED_ALPHA_FLOOR);
    let (sx, sy) = scale.factors(width, height);
    let mut detections = Vec::new();
    for (i, (&score, &(query_index, _))) in scores.iter().zip(&best).enumerate() {
        let alpha = ((score - floor) / span).clamp(0.0, 1.0);
        if alpha > 0.0 {
            let label = labels
                .get(query_index)
                .ok_or_else(|| Error::InvalidInput(format!("query {query_index} has no label")))?;
            detections.push(Detection::new(
                query_index,
                label.as_str(),
                alpha,
                corners(&raw.boxes[i], sx, sy)?,
            ));
        }
    }
    Ok(detections)
}

/// Checks a list of query images and their labels: as many of each, labels as text queries.
fn check_query_images<S: AsRef<str>>(images: &[RgbImage], labels: &[S]) -> Result<()> {
    validate_texts(labels, "query image label")?;
    if images.len() != labels.len() {
        return Err(Error::InvalidInput(format!(
            "{} query images but {} labels",
            images.len(),
            labels.len()
        )));
    }
    Ok(())
}

/// Checks that logits, boxes and objectness have one row per box.
fn check_rows(raw: &RawDetections) -> Result<()> {
    let n = raw.boxes.len();
    let objectness = raw.objectness_logits.as_ref().map_or(n, Vec::len);
    if raw.logits.len() != n || objectness != n {
        return Err(Error::InvalidInput(format!(
            "{} logit rows and {objectness} objectness values for {n} boxes",
            raw.logits.len()
        )));
    }
    Ok(())
}

/// `center_to_corners_format` of one normalized (cx, cy, w, h) box, scaled by (sx, sy).
fn corners(b: &[f32], sx: f32, sy: f32) -> Result<BBox> {
    let &[cx, cy, w, h] = b else {
        return Err(Error::InvalidInput(format!("box with {} values", b.len())));
    };
    Ok(BBox::from_center_normalized([cx, cy, w, h], sx, sy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn padded_square_scales_both_axes_by_the_longer_side() {
        assert_eq!(BoxScale::PaddedSquare.factors(20, 64), (64.0, 64.0));
        assert_eq!(BoxScale::PaddedSquare.factors(451, 300), (451.0, 451.0));
        assert_eq!(BoxScale::ImageSize.factors(451, 300), (451.0, 300.0));
    }

    #[test]
    fn min_objectness_gates_candidates_before_nms() {
        // Two overlapping boxes of query 0: the better-scored one is no object. Gated first, it
        // cannot suppress the other.
        let raw = RawDetections {
            logits: vec![vec![3.0, 0.0], vec![2.0, 0.0]],
            boxes: vec![vec![0.5, 0.5, 0.2, 0.2], vec![0.51, 0.5, 0.2, 0.2]],
            objectness_logits: Some(vec![-3.0, 3.0]),
        };
        let params = DetectParams {
            threshold: 0.0,
            nms_iou: 0.5,
        };
        let run = |min| {
            post_process_raw_detections(
                &raw,
                &labels(),
                &params,
                min,
                BoxScale::PaddedSquare,
                100,
                50,
            )
            .unwrap()
        };
        let all = run(0.0);
        assert_eq!(all.len(), 1, "NMS keeps the better box");
        assert_eq!(all[0].objectness, Some(sigmoid(-3.0)));
        // scaled by 100 on both axes
        for (a, b) in all[0].bbox.to_array().iter().zip([40.0, 40.0, 60.0, 60.0]) {
            assert!((a - b).abs() < 1e-4, "{:?}", all[0].bbox);
        }
        let kept = run(0.5);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].objectness, Some(sigmoid(3.0)));
        assert_eq!(kept[0].score, sigmoid(2.0));
    }

    #[test]
    fn owlvit_outputs_have_no_objectness() {
        let logits = vec![vec![1.0, 2.0]];
        let boxes = vec![vec![0.5, 0.5, 1.0, 1.0]];
        let d = post_process_object_detection(
            &logits,
            &boxes,
            &labels(),
            &DetectParams::default(),
            40,
            20,
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].query_index, d[0].objectness), (1, None));
        assert_eq!(d[0].bbox.to_array(), [0.0, 0.0, 40.0, 20.0]);
        let json = serde_json::to_string(&d[0]).unwrap();
        assert!(!json.contains("objectness"), "{json}");
    }

    #[test]
    fn image_guided_alphas_scale_by_the_best_score_after_nms() {
        // Box 1 (query 1) overlaps box 0 and beats it; box 2 stands apart; box 3 scores low.
        let raw = RawDetections {
            logits: vec![
                vec![1.0, 0.0],
                vec![0.0, 2.0],
                vec![0.5, 0.0],
                vec![-3.0, -4.0],
            ],
            boxes: vec![
                vec![0.5, 0.5, 0.2, 0.2],
                vec![0.51, 0.5, 0.2, 0.2],
                vec![0.1, 0.1, 0.1, 0.1],
                vec![0.9, 0.9, 0.1, 0.1],
            ],
            objectness_logits: None,
        };
        let run = |threshold, nms| {
            post_process_image_guided_detection(
                &raw,
                &labels(),
                threshold,
                nms,
                BoxScale::ImageSize,
                200,
                100,
            )
            .unwrap()
        };
        let alpha = |s: f32, best: f32| {
            let m = best + IMAGE_GUIDED_MAX_SCORE_EPS;
            ((s - 0.1 * m) / (0.9 * m)).clamp(0.0, 1.0)
        };
        let best = sigmoid(2.0);
        let kept = run(0.0, 0.3);
        // In box order: box 0 suppressed, box 3's alpha (sigmoid(-3) < 0.1 * best) is 0.
        let got: Vec<(usize, &str, f32)> = kept
            .iter()
            .map(|d| (d.query_index, d.label.as_str(), d.score))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].1), (1, "b"));
        assert!((got[0].2 - alpha(best, best)).abs() < 1e-6);
        assert_eq!((got[1].0, got[1].1), (0, "a"));
        assert!((got[1].2 - alpha(sigmoid(0.5), best)).abs() < 1e-6);
        // Boxes scale by (W, H), not clamped.
        for (a, b) in kept[1].bbox.to_array().iter().zip([10.0, 5.0, 30.0, 15.0]) {
            assert!((a - b).abs() < 1e-4, "{:?}", kept[1].bbox);
        }
        // Without NMS box 0 comes back; a threshold above its score zeroes it again.
        assert_eq!(run(0.0, 1.0).len(), 3);
        assert_eq!(run(sigmoid(1.0) + 1e-3, 1.0).len(), 1);
        // Every score zeroed by the threshold: no box has a positive alpha.
        assert!(run(0.99, 1.0).is_empty());
    }

    #[test]
    fn mismatched_rows_are_an_error() {
        let raw = RawDetections {
            logits: vec![vec![1.0]],
            boxes: vec![vec![0.5, 0.5, 1.0, 1.0]],
            objectness_logits: Some(vec![]),
        };
        let err = post_process_raw_detections(
            &raw,
            &labels(),
            &DetectParams::default(),
            0.0,
            BoxScale::PaddedSquare,
            1,
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("0 objectness values"), "{err}");
    }
}
