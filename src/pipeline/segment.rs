//! Text-prompted segmentation with CLIPSeg: prompts are encoded once per list and cached; a
//! frame costs one vision pass plus the conditional decoder for all prompts in one batch.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use image::{GrayImage, RgbImage};
use rayon::prelude::*;
use serde::Serialize;

use super::{
    checkpoint::Checkpoint,
    device::LoadOptions,
    text_cache::{image_keys, TextCache},
    tokenizer::{Padding, TextTokenizer, TokenizerKind},
    types::Timings,
    validate_texts,
};
use crate::error::{Error, Result};
use crate::models::clipseg::{ClipSegConfig, ClipSegForImageSegmentation};
use crate::vision::{
    boxes::BBox,
    masks::post_process_segmentation,
    preprocess::{
        ImageProcessor, PreprocessorConfig, ProcessorDefaults, Resample, ResizeMode,
        ShortestEdgeRule, SizeSpec, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD,
    },
};

/// config.json `architectures` this task accepts.
pub const CLIPSEG_ARCHITECTURES: &[&str] = &["CLIPSegForImageSegmentation"];
/// Default probability above which a pixel belongs to a prompt's mask.
pub const DEFAULT_MASK_THRESHOLD: f32 = 0.5;

/// `ViTImageProcessor`'s class defaults (CLIPSeg's processor; CIDAS checkpoints override the
/// size to 352 and the mean/std to ImageNet's in preprocessor_config.json).
const VIT_PROCESSOR_DEFAULTS: ProcessorDefaults = ProcessorDefaults {
    size: SizeSpec::HeightWidth {
        height: 224,
        width: 224,
    },
    resample: Resample::Bilinear,
    do_center_crop: false,
    crop_size: None,
    image_mean: IMAGENET_STANDARD_MEAN,
    image_std: IMAGENET_STANDARD_STD,
    shortest_edge: ShortestEdgeRule::Vilt,
};

/// Post-processing parameters.
#[derive(Debug, Clone, Copy)]
pub struct SegmentParams {
    /// A pixel is in a prompt's mask when its probability is strictly greater than this.
    pub threshold: f32,
}

impl Default for SegmentParams {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_MASK_THRESHOLD,
        }
    }
}

/// Encoded prompts: compute once per prompt list, reuse for every frame.
#[derive(Debug, Clone)]
pub struct PromptEmbeddings {
    /// The prompt texts (for image prompts, the labels given).
    pub texts: Vec<String>,
    /// (prompts, projection_dim): CLIPSeg's conditional embeddings, on the model's device.
    pub embeds: Tensor,
    /// Whether each prompt was cut to the text tower's length.
    pub truncated: Vec<bool>,
}

impl PromptEmbeddings {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The prompts of `parts` in order, as one list (text and image prompts mixed in one call,
    /// each a prompt of its own). Parts of a different width or device are an error.
    pub fn concat(parts: &[&PromptEmbeddings]) -> Result<PromptEmbeddings> {
        let parts: Vec<&PromptEmbeddings> =
            parts.iter().copied().filter(|p| !p.is_empty()).collect();
        if let [only] = parts.as_slice() {
            return Ok((*only).clone());
        }
        if parts.is_empty() {
            return Err(Error::InvalidInput("no prompts given".into()));
        }
        let embeds: Vec<&Tensor> = parts.iter().map(|p| &p.embeds).collect();
        Ok(PromptEmbeddings {
            texts: parts.iter().flat_map(|p| p.texts.iter().cloned()).collect(),
            embeds: Tensor::cat(&embeds, 0)?,
            truncated: parts
                .iter()
                .flat_map(|p| p.truncated.iter().copied())
                .collect(),
        })
    }
}

/// One prompt's mask at the original image size.
#[derive(Debug, Clone, Serialize)]
pub struct PromptMask {
    pub prompt_index: usize,
    /// The prompt text.
    #[serde(rename = "prompt")]
    pub label: String,
    /// Probabilities, `height * width`, row-major.
    #[serde(skip)]
    pub probabilities: Vec<f32>,
    /// 0 or 255.
    #[serde(skip)]
    pub mask: GrayImage,
    /// Mask pixels / image pixels.
    pub area_fraction: f32,
    /// Tightest box around the mask in pixel-edge coordinates (`x_max`, `y_max` one past the
    /// last mask column and row); `None` for an empty mask.
    pub bbox: Option<BBox>,
    /// Mean probability inside the mask (0 when empty).
    pub mean_score: f32,
}

/// Raw logits of one call: before sigmoid, at the model's input resolution.
#[derive(Debug, Clone)]
pub struct SegmentationLogits {
    pub prompts: usize,
    pub height: usize,
    pub width: usize,
    /// `prompts * height * width`, C order.
    pub data: Vec<f32>,
}

impl SegmentationLogits {
    /// One prompt's `height * width` logits.
    pub fn prompt(&self, index: usize) -> Option<&[f32]> {
        let n = self.height * self.width;
        self.data.get(index * n..(index + 1) * n)
    }

    /// Writes a little-endian float32 `.npy` of shape `[prompts, height, width]` (C order).
    pub fn write_npy(&self, path: &Path) -> Result<()> {
        let t = Tensor::from_slice(
            &self.data,
            (self.prompts, self.height, self.width),
            &candle_core::Device::Cpu,
        )?;
        t.write_npy(path).map_err(|e| Error::io(path, e))
    }
}

/// Masks for every prompt on one image, in prompt order.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentationResult {
    pub width: u32,
    pub height: u32,
    #[serde(rename = "prompts")]
    pub masks: Vec<PromptMask>,
    #[serde(skip)]
    pub logits: SegmentationLogits,
    #[serde(skip)]
    pub timings: Timings,
}

/// One label per image prompt, each a valid text.
fn check_image_prompts<S: AsRef<str>>(images: &[RgbImage], labels: &[S]) -> Result<()> {
    validate_texts(labels, "image prompt label")?;
    if images.len() != labels.len() {
        return Err(Error::InvalidInput(format!(
            "{} image prompts but {} labels",
            images.len(),
            labels.len()
        )));
    }
    Ok(())
}

/// CLIPSeg segmenter on one device.
pub struct Segmenter {
    name: String,
    model: ClipSegForImageSegmentation,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    options: LoadOptions,
    cache: TextCache<PromptEmbeddings>,
    /// Image prompts, keyed by label and content ([`image_key`]).
    image_cache: TextCache<PromptEmbeddings>,
}

impl Segmenter {
    /// Loads a `CLIPSegForImageSegmentation` checkpoint (directory or hub id).
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::resolve(model)?, options)
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, options: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", model = %ckpt.name).entered();
        ckpt.expect_architecture(CLIPSEG_ARCHITECTURES)?;
        let config: ClipSegConfig = ckpt.config()?;
        let vb = ckpt.model_vars(options)?;
        let model = ClipSegForImageSegmentation::new(vb, &config, &ckpt.name)
            .map_err(|e| ckpt.load_error(e))?;
        let tokenizer = TextTokenizer::load(
            ckpt,
            TokenizerKind::ClipBpe,
            config.text_config.max_position_embeddings,
            config.text_config.pad_token_id,
        )?;
        let pre: PreprocessorConfig = ckpt.preprocessor_config()?;
        let processor = ImageProcessor::from_config(pre, &VIT_PROCESSOR_DEFAULTS)?;
        let patch_size = config.vision_config.patch_size;
        // The decoder reshapes the patch tokens to a square grid (`CLIPSegDecoder.forward`).
        let (h, w) = processor.center_crop.unwrap_or_else(|| {
            let side = config.vision_config.image_size;
            processor.resized_size(side, side)
        });
        if h != w || h < patch_size || !matches!(processor.resize, ResizeMode::Exact { .. }) {
            return Err(Error::Unsupported {
                model: ckpt.name.clone(),
                reason: format!(
                    "preprocessor_config.json must resize to a fixed square of at least one \
                     {patch_size} px patch (got {:?}, {w}x{h})",
                    processor.resize
                ),
            });
        }
        // Interpolate the position table for the processor's size now, not on the first frame.
        model
            .vision_model()
            .embeddings()
            .position_embeddings(h, w)?;
        super::host_memory::release_freed_memory();
        Ok(Self {
            name: ckpt.name.clone(),
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

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &ClipSegForImageSegmentation {
        &self.model
    }

    /// Tokenizes and embeds `prompts` (always computed; see [`Self::prompts`] for the cache).
    /// Padding to the longest prompt, as transformers' docs do; padding never changes a
    /// prompt's embedding (the causal mask hides it from the pooled EOS token).
    pub fn encode_prompts<S: AsRef<str>>(&self, prompts: &[S]) -> Result<PromptEmbeddings> {
        validate_texts(prompts, "prompt")?;
        let _span =
            tracing::info_span!("encode_prompts", model = %self.name, n = prompts.len()).entered();
        let batch = self.tokenizer.encode(prompts, Padding::Longest)?;
        let ids = Tensor::new(batch.ids.clone(), &self.options.device)?;
        let embeds = self.model.get_text_features(&ids)?;
        Ok(PromptEmbeddings {
            texts: prompts.iter().map(|p| p.as_ref().to_string()).collect(),
            embeds,
            truncated: batch.truncated,
        })
    }

    /// The embeddings of `prompts`, re-encoded only when the list changed since the last call.
    pub fn prompts<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Arc<PromptEmbeddings>> {
        self.cache
            .get_or_encode(prompts, || self.encode_prompts(prompts))
    }

    /// Image prompts (`conditional_pixel_values`): each image goes through the processor and
    /// the full vision tower; `labels` name them in results.
    pub fn encode_image_prompts<S: AsRef<str>>(
        &self,
        images: &[RgbImage],
        labels: &[S],
    ) -> Result<PromptEmbeddings> {
        check_image_prompts(images, labels)?;
        let pixels = images
            .iter()
            .map(|img| self.pixel_values(img))
            .collect::<Result<Vec<_>>>()?;
        let embeds = self.model.get_image_features(&Tensor::cat(&pixels, 0)?)?;
        Ok(PromptEmbeddings {
            texts: labels.iter().map(|l| l.as_ref().to_string()).collect(),
            embeds,
            truncated: vec![false; images.len()],
        })
    }

    /// The embeddings of image prompts (named by `labels`), re-encoded only when a label or an
    /// image's pixels changed since the last call: a stream segmenting by the same example
    /// images embeds them once.
    pub fn image_prompts<S: AsRef<str>>(
        &self,
        images: &[RgbImage],
        labels: &[S],
    ) -> Result<Arc<PromptEmbeddings>> {
        check_image_prompts(images, labels)?;
        self.image_cache
            .get_or_encode(&image_keys(images, labels), || {
                self.encode_image_prompts(images, labels)
            })
    }

    /// Preprocessed pixel values (1, 3, S, S) in the model's dtype. Any image size works: the
    /// processor resizes to its fixed size, as transformers' does (a 1x1 crop included).
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor> {
        Ok(self
            .processor
            .preprocess(image, &self.options.device)?
            .to_dtype(self.options.dtype)?)
    }

    /// Raw logits (prompts, S, S) in f32 for preprocessed pixel values (one image): one vision
    /// pass, then the conditional decoder for all prompts as one batch.
    pub fn forward(&self, pixel_values: &Tensor, prompts: &PromptEmbeddings) -> Result<Tensor> {
        check_prompts(prompts)?;
        let image = self.model.encode_image(pixel_values)?;
        Ok(self.model.decode(&image, &prompts.embeds)?)
    }

    /// Segments `image` for every prompt: preprocess, forward, per-prompt masks at the
    /// original size (see [`crate::vision::masks`]). A batch of one
    /// ([`Self::segment_batch`]).
    pub fn segment(
        &self,
        image: &RgbImage,
        prompts: &PromptEmbeddings,
        params: &SegmentParams,
    ) -> Result<SegmentationResult> {
        let _span = tracing::info_span!("segment", model = %self.name).entered();
        self.segment_inputs(&[SegmentInput {
            image,
            prompts,
            params,
        }])?
        .pop()
        .ok_or_else(|| Error::InvalidInput("no result for the image".into()))
    }

    /// Segments several images, each for its own prompts and parameters: every image
    /// preprocessed (to the processor's fixed size, so sizes may differ), ONE CLIPSeg vision
    /// pass (`encode_image`) for the stacked batch, then each image's prompts decoded against
    /// its own slice of the decoder state (in chunks of
    /// [`MAX_PROMPTS_PER_DECODE`](crate::models::clipseg::MAX_PROMPTS_PER_DECODE)) and its
    /// masks made at its own size. Results in input order; an empty batch gives an empty Vec.
    ///
    /// Every input is checked first, as [`Self::segment`] checks its own; the first invalid one
    /// fails the whole batch with that call's error. Each result's `timings.preprocess` and
    /// `timings.postprocess` are its own; `timings.forward` is the whole batch's forward pass
    /// (vision pass and every image's decoding; the same in every result).
    pub fn segment_batch(&self, inputs: &[SegmentInput<'_>]) -> Result<Vec<SegmentationResult>> {
        let _span =
            tracing::info_span!("segment_batch", model = %self.name, n = inputs.len()).entered();
        self.segment_inputs(inputs)
    }

    fn segment_inputs(&self, inputs: &[SegmentInput<'_>]) -> Result<Vec<SegmentationResult>> {
        for input in inputs {
            check_params(input.params)?;
            check_prompts(input.prompts)?;
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let mut preprocess = Vec::with_capacity(inputs.len());
        let mut pixel_values = Vec::with_capacity(inputs.len());
        for input in inputs {
            let t = Instant::now();
            pixel_values.push(self.pixel_values(input.image)?);
            preprocess.push(t.elapsed());
        }
        let t = Instant::now();
        let pixel_values = Tensor::cat(&pixel_values, 0)?;
        let state = self.model.encode_image(&pixel_values)?;
        drop(pixel_values);
        let logits = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let logits = self.model.decode(&state.image(i)?, &input.prompts.embeds)?;
                host_logits(&logits)
            })
            .collect::<Result<Vec<_>>>()?;
        drop(state);
        let forward = t.elapsed();
        inputs
            .iter()
            .zip(logits)
            .zip(preprocess)
            .map(|((input, logits), preprocess)| {
                let t = Instant::now();
                let (width, height) = input.image.dimensions();
                let masks = prompt_masks(
                    &input.prompts.texts,
                    &logits,
                    width,
                    height,
                    input.params.threshold,
                )?;
                Ok(SegmentationResult {
                    width,
                    height,
                    masks,
                    logits,
                    timings: Timings {
                        preprocess,
                        forward,
                        postprocess: t.elapsed(),
                    },
                })
            })
            .collect()
    }
}

/// One image of a batch ([`Segmenter::segment_batch`]), with its own prompts and parameters.
#[derive(Debug, Clone, Copy)]
pub struct SegmentInput<'a> {
    pub image: &'a RgbImage,
    pub prompts: &'a PromptEmbeddings,
    pub params: &'a SegmentParams,
}

/// What [`Segmenter::segment`] checks of its parameters.
fn check_params(params: &SegmentParams) -> Result<()> {
    if !(0.0..=1.0).contains(&params.threshold) {
        return Err(Error::InvalidInput(format!(
            "mask threshold must be in [0, 1], got {}",
            params.threshold
        )));
    }
    Ok(())
}

/// At least one prompt.
fn check_prompts(prompts: &PromptEmbeddings) -> Result<()> {
    if prompts.is_empty() {
        return Err(Error::InvalidInput("no prompts given".into()));
    }
    Ok(())
}

/// Logits (prompts, S, S) on the host, in f32.
fn host_logits(logits: &Tensor) -> Result<SegmentationLogits> {
    let (prompts, height, width) = logits.dims3()?;
    let data = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(SegmentationLogits {
        prompts,
        height,
        width,
        data,
    })
}

/// Each prompt's mask at the original `width` x `height`, in prompt order; one prompt per
/// rayon task (a few ms each at camera resolutions).
fn prompt_masks(
    labels: &[String],
    logits: &SegmentationLogits,
    width: u32,
    height: u32,
    threshold: f32,
) -> Result<Vec<PromptMask>> {
    labels
        .par_iter()
        .enumerate()
        .map(|(i, label)| {
            let prompt_logits = logits
                .prompt(i)
                .ok_or_else(|| Error::InvalidInput(format!("no logits for prompt {i}")))?;
            let m = post_process_segmentation(
                prompt_logits,
                (logits.height, logits.width),
                width,
                height,
                threshold,
            )?;
            Ok(PromptMask {
                prompt_index: i,
                label: label.clone(),
                probabilities: m.probabilities,
                mask: m.mask,
                area_fraction: m.stats.area_fraction,
                bbox: m.stats.bbox,
                mean_score: m.stats.mean_score,
            })
        })
        .collect()
}
