//! Open-vocabulary detection with OWL-ViT or OWLv2 (recognised from config.json): queries are
//! encoded once per vocabulary and cached, so a frame costs one vision pass.
//!
//! Queries are text ([`Detector::encode_queries`]) or images ([`Detector::encode_query_images`]:
//! image-guided, one-shot detection, transformers' `image_guided_detection`); both become
//! [`QueryEmbeddings`] scored by the same class head. Text detections are post-processed as
//! `post_process_object_detection` ([`Detector::detect`]), image-guided ones as
//! `post_process_image_guided_detection` ([`Detector::detect_image_guided`]).

mod batch;
mod post_process;

pub use batch::{DetectInput, DetectMode};
pub use post_process::{
    best_box_per_query, post_process_image_guided_detection, post_process_object_detection,
    post_process_raw_detections, BoxScale, RawDetections,
};

use std::sync::Arc;

use candle_core::Tensor;
use image::RgbImage;

use super::{
    checkpoint::{Checkpoint, PREPROCESSOR_FILE},
    device::LoadOptions,
    text_cache::{image_keys, TextCache},
    tokenizer::{Padding, TextTokenizer, TokenizerKind},
    types::DetectionResult,
    validate_texts,
};
use crate::error::{Error, Result};
use crate::models::owlv2::{Owlv2Config, Owlv2ForObjectDetection, Owlv2ObjectDetectionOutput};
use crate::models::owlvit::{OwlVitConfig, OwlVitForObjectDetection, OwlVitObjectDetectionOutput};
use crate::vision::{
    image_io::check_size,
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

    /// (b, 3, H, W) -> (b, patches_h, patches_w, d_vision)
    fn image_embedder(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::OwlVit(m) => m.image_embedder(pixel_values),
            Self::Owlv2(m) => m.image_embedder(pixel_values),
        }
    }

    /// (b, patches, d_vision) -> (b, patches, 4)
    fn box_predictor(&self, image_feats: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::OwlVit(m) => m.box_predictor(image_feats),
            Self::Owlv2(m) => m.box_predictor(image_feats),
        }
    }

    /// (b, patches, d_vision) -> (b, patches); `None` for OWL-ViT.
    fn objectness_predictor(&self, image_feats: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match self {
            Self::OwlVit(_) => Ok(None),
            Self::Owlv2(m) => m.objectness_predictor(image_feats).map(Some),
        }
    }

    /// (b, patches, d_vision) against (queries, d_text) -> (b, patches, queries) logits.
    fn class_logits(
        &self,
        image_feats: &Tensor,
        query_embeds: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (logits, _class_embeds) = match self {
            Self::OwlVit(m) => m.class_predictor(image_feats, query_embeds)?,
            Self::Owlv2(m) => m.class_predictor(image_feats, query_embeds)?,
        };
        Ok(logits)
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
    /// `min_objectness > 0` with an OWL-ViT checkpoint is an error. A batch of one
    /// ([`Self::detect_batch`], [`DetectMode::Text`]).
    pub fn detect_with_min_objectness(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        params: &DetectParams,
        min_objectness: f32,
    ) -> Result<DetectionResult> {
        let _span = tracing::info_span!("detect", model = %self.name).entered();
        self.detect_one(DetectInput {
            image,
            queries,
            params,
            mode: DetectMode::Text { min_objectness },
        })
    }

    /// Image-guided (one-shot) detection: `image` scored against query embeddings (from
    /// [`Self::encode_query_images`]; text queries work too), post-processed as transformers'
    /// `post_process_image_guided_detection` (see [`post_process_image_guided_detection`];
    /// [`DetectParams::image_guided`] has its defaults). Scores are its display alphas, by
    /// descending score; no objectness (transformers' image-guided outputs have none). A batch
    /// of one ([`Self::detect_batch`], [`DetectMode::ImageGuided`]).
    pub fn detect_image_guided(
        &self,
        image: &RgbImage,
        queries: &QueryEmbeddings,
        params: &DetectParams,
    ) -> Result<DetectionResult> {
        let _span = tracing::info_span!("detect_image_guided", model = %self.name).entered();
        self.detect_one(DetectInput {
            image,
            queries,
            params,
            mode: DetectMode::ImageGuided,
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
        let mut results = self.run_batch(&[(image, queries)], |_, raw, width, height| {
            best_box_per_query(raw, &queries.texts, scale, width, height)
        })?;
        results
            .pop()
            .ok_or_else(|| Error::InvalidInput("no result for the image".into()))
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
