//! Zero-shot image classification with CLIP, as transformers' `zero-shot-image-classification`
//! pipeline (v5.17.0 `pipelines/zero_shot_image_classification.py`): each label is put through
//! the hypothesis template (default `"This is a photo of {}."`), the label batch is tokenized
//! with `padding=True` and embedded once per label list (cached, as detection queries), and an
//! image costs one vision pass: `logits_per_image` = `logit_scale.exp()` times the cosine
//! similarities, softmax over the labels, sorted by score (ties keep the label order, as the
//! pipeline's stable sort).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use image::RgbImage;
use serde::Serialize;

use super::{
    checkpoint::Checkpoint,
    device::LoadOptions,
    text_cache::TextCache,
    tokenizer::{Padding, TextTokenizer, TokenizerKind},
    types::Timings,
    validate_texts,
};
use crate::error::{Error, Result};
use crate::models::clip::model::{normalize, ClipConfig, ClipModel};
use crate::vision::preprocess::{
    ImageProcessor, PreprocessorConfig, ProcessorDefaults, Resample, ResizeMode, ShortestEdgeRule,
    SizeSpec, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};

/// config.json `architectures` (or, without them, `model_type`) this task accepts.
pub const CLIP_ARCHITECTURES: &[&str] = &["CLIPModel", "clip"];
/// The pipeline's default `hypothesis_template`.
pub const DEFAULT_HYPOTHESIS_TEMPLATE: &str = "This is a photo of {}.";

/// `CLIPImageProcessor`'s class defaults (`image_processing_clip.py`): shortest edge 224
/// BICUBIC, centre crop 224, OpenAI CLIP mean/std.
const CLIP_PROCESSOR_DEFAULTS: ProcessorDefaults = ProcessorDefaults {
    size: SizeSpec::ShortestEdge {
        shortest_edge: 224,
        longest_edge: None,
    },
    resample: Resample::Bicubic,
    do_center_crop: true,
    crop_size: Some(SizeSpec::HeightWidth {
        height: 224,
        width: 224,
    }),
    image_mean: OPENAI_CLIP_MEAN,
    image_std: OPENAI_CLIP_STD,
    shortest_edge: ShortestEdgeRule::KeepAspect,
};

/// Formats `label` into `template` as Python's `template.format(label)`: `{}` (or `{0}`) is the
/// label, `{{` and `}}` are literal braces; a template without a field gives the template
/// itself. A second `{}`, any other field or an unmatched brace is an error (Python raises).
pub fn format_hypothesis(template: &str, label: &str) -> Result<String> {
    let bad = |why: &str| Error::InvalidInput(format!("hypothesis template {template:?}: {why}"));
    let mut out = String::with_capacity(template.len() + label.len());
    let mut auto_fields = 0;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => field.push(c),
                        None => return Err(bad("a `{` is not closed (write `{{` for a brace)")),
                    }
                }
                match field.as_str() {
                    "" if auto_fields == 0 => auto_fields += 1,
                    "" => return Err(bad("more than one `{}` (the label goes in once)")),
                    "0" => {}
                    other => return Err(bad(&format!("unknown field `{{{other}}}`: use `{{}}`"))),
                }
                out.push_str(label);
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '}' => return Err(bad("a single `}` (write `}}` for a brace)")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Encoded labels: compute once per label list and template, reuse for every image.
#[derive(Debug, Clone)]
pub struct LabelEmbeddings {
    /// The candidate labels, as given.
    pub labels: Vec<String>,
    /// The template they went through.
    pub template: String,
    /// The texts embedded: each label through the template.
    pub sequences: Vec<String>,
    /// (labels, projection_dim), normalized, f32, on the model's device.
    pub embeds: Tensor,
    /// Whether each sequence was cut to the text tower's length (the pipeline does not
    /// truncate: transformers fails on such a label).
    pub truncated: Vec<bool>,
}

impl LabelEmbeddings {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// One candidate label's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    /// Index of the label in the list given.
    pub label_index: usize,
    pub label: String,
    /// softmax of `logits_per_image` over the labels, in [0, 1]; the scores sum to 1.
    pub score: f32,
    /// `logits_per_image` for this label: `logit_scale.exp()` times the cosine similarity.
    pub logit: f32,
}

/// The labels of one image, sorted by score, highest first (ties in label order).
#[derive(Debug, Clone, Serialize)]
pub struct ClassificationResult {
    pub width: u32,
    pub height: u32,
    pub template: String,
    pub labels: Vec<LabelScore>,
    #[serde(skip)]
    pub timings: Timings,
}

impl ClassificationResult {
    /// The best label.
    pub fn top(&self) -> Option<&LabelScore> {
        self.labels.first()
    }
}

/// softmax of one row of logits, then the labels sorted by score, highest first; a stable
/// sort, so equal scores keep the label order (as the pipeline's `sorted(key=-score)`).
pub fn rank_labels(labels: &[String], logits: &[f32]) -> Result<Vec<LabelScore>> {
    if labels.len() != logits.len() || labels.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} logits for {} labels",
            logits.len(),
            labels.len()
        )));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut ranked: Vec<LabelScore> = labels
        .iter()
        .zip(logits.iter().zip(&exps))
        .enumerate()
        .map(|(i, (label, (&logit, &e)))| LabelScore {
            label_index: i,
            label: label.clone(),
            score: e / sum,
            logit,
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(ranked)
}

/// CLIP zero-shot classifier on one device.
pub struct Classifier {
    name: String,
    model: ClipModel,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    options: LoadOptions,
    cache: TextCache<LabelEmbeddings>,
}

impl Classifier {
    /// Loads a `CLIPModel` checkpoint (directory or hub id).
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::resolve(model)?, options)
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, options: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", model = %ckpt.name).entered();
        ckpt.expect_architecture(CLIP_ARCHITECTURES)?;
        let config: ClipConfig = ckpt.config()?;
        let pre: PreprocessorConfig = ckpt.preprocessor_config()?;
        let processor = ImageProcessor::from_config(pre, &CLIP_PROCESSOR_DEFAULTS)?;
        // CLIPVisionEmbeddings refuses any other input size (no interpolate_pos_encoding).
        let side = config.vision_config.image_size;
        let input = processor
            .center_crop
            .or(match processor.resize {
                ResizeMode::Exact { height, width } => Some((height, width)),
                _ => None,
            })
            .filter(|&(h, w)| (h, w) == (side, side));
        if input.is_none() {
            return Err(Error::Unsupported {
                model: ckpt.name.clone(),
                reason: format!(
                    "preprocessor_config.json must produce {side}x{side} images (the vision \
                     tower's image_size): got resize {:?}, crop {:?}",
                    processor.resize, processor.center_crop
                ),
            });
        }
        if matches!(processor.resize, ResizeMode::ShortestEdgeKeepAspect { shortest } if shortest < side)
        {
            // transformers would pad the crop with zeros; no CLIP checkpoint does this.
            return Err(Error::Unsupported {
                model: ckpt.name.clone(),
                reason: format!("a shortest edge under the {side} px crop"),
            });
        }
        let vb = ckpt.model_vars(options)?;
        let model = ClipModel::new(vb, &config, &ckpt.name).map_err(|e| ckpt.load_error(e))?;
        let tokenizer = TextTokenizer::load(
            ckpt,
            TokenizerKind::ClipBpe,
            config.text_config.max_position_embeddings,
            config.text_config.pad_token_id,
        )?;
        super::host_memory::release_freed_memory();
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

    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// Puts `labels` through `template` ([`format_hypothesis`]), tokenizes them as one batch
    /// padded to the longest (`padding=True`) and embeds them: projected, normalized. Always
    /// computed; see [`Self::labels`] for the cache.
    pub fn encode_labels<S: AsRef<str>>(
        &self,
        labels: &[S],
        template: &str,
    ) -> Result<LabelEmbeddings> {
        validate_texts(labels, "label")?;
        let _span =
            tracing::info_span!("encode_labels", model = %self.name, n = labels.len()).entered();
        let sequences = labels
            .iter()
            .map(|l| format_hypothesis(template, l.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let batch = self.tokenizer.encode(&sequences, Padding::Longest)?;
        let ids = Tensor::new(batch.ids.clone(), &self.options.device)?;
        let embeds = normalize(&self.model.get_text_features(&ids)?)?;
        Ok(LabelEmbeddings {
            labels: labels.iter().map(|l| l.as_ref().to_string()).collect(),
            template: template.to_string(),
            sequences,
            embeds,
            truncated: batch.truncated,
        })
    }

    /// The embeddings of `labels` through `template`, re-encoded only when either changed since
    /// the last call.
    pub fn labels<S: AsRef<str>>(
        &self,
        labels: &[S],
        template: &str,
    ) -> Result<Arc<LabelEmbeddings>> {
        let key: Vec<&str> = std::iter::once(template)
            .chain(labels.iter().map(AsRef::as_ref))
            .collect();
        self.cache
            .get_or_encode(&key, || self.encode_labels(labels, template))
    }

    /// Preprocessed pixel values (1, 3, S, S) in the model's dtype (`CLIPImageProcessor`:
    /// resize, centre crop, rescale, normalize).
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor> {
        Ok(self
            .processor
            .preprocess(image, &self.options.device)?
            .to_dtype(self.options.dtype)?)
    }

    /// `logits_per_image` (images, labels) in f32 for preprocessed pixel values: one vision
    /// pass against the cached label embeddings.
    pub fn forward(&self, pixel_values: &Tensor, labels: &LabelEmbeddings) -> Result<Tensor> {
        if labels.is_empty() {
            return Err(Error::InvalidInput("no labels given".into()));
        }
        let image_embeds = normalize(&self.model.get_image_features(pixel_values)?)?;
        Ok(self.model.logits_per_image(&image_embeds, &labels.embeds)?)
    }

    /// Classifies `image` among `labels`: preprocess, forward, softmax over the labels, sorted.
    pub fn classify(
        &self,
        image: &RgbImage,
        labels: &LabelEmbeddings,
    ) -> Result<ClassificationResult> {
        let _span = tracing::info_span!("classify", model = %self.name).entered();
        let t0 = Instant::now();
        let pixel_values = self.pixel_values(image)?;
        let t1 = Instant::now();
        let logits = self.forward(&pixel_values, labels)?;
        let row = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let t2 = Instant::now();
        let ranked = rank_labels(&labels.labels, &row)?;
        let t3 = Instant::now();
        let (width, height) = image.dimensions();
        Ok(ClassificationResult {
            width,
            height,
            template: labels.template.clone(),
            labels: ranked,
            timings: Timings {
                preprocess: t1 - t0,
                forward: t2 - t1,
                postprocess: t3 - t2,
            },
        })
    }
}

/// softmax over the last dimension of `logits_per_image` (images, labels), in f32, as the
/// pipeline's `logits.softmax(dim=-1)`.
pub fn probabilities(logits_per_image: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(
        &logits_per_image.to_dtype(DType::F32)?,
        D::Minus1,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_format_as_python() {
        let f = |t: &str| format_hypothesis(t, "door open").unwrap();
        assert_eq!(
            f(DEFAULT_HYPOTHESIS_TEMPLATE),
            "This is a photo of door open."
        );
        assert_eq!(f("{}"), "door open");
        assert_eq!(f("{0}!"), "door open!");
        assert_eq!(f("{{{}}} {{x}}"), "{door open} {x}");
        assert_eq!(f("no field"), "no field");
        for bad in ["{} and {}", "{label}", "{", "}", "a {b"] {
            assert!(format_hypothesis(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn ranking_is_a_stable_softmax_sort() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let ranked = rank_labels(&labels, &[1.0, 3.0, 1.0]).unwrap();
        let order: Vec<usize> = ranked.iter().map(|l| l.label_index).collect();
        assert_eq!(order, [1, 0, 2]);
        let sum: f32 = ranked.iter().map(|l| l.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert_eq!(rank_labels(&labels[..1], &[-7.0]).unwrap()[0].score, 1.0);
        assert!(rank_labels(&labels, &[1.0]).is_err());
    }
}
