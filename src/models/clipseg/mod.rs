//! CLIPSeg text- and image-prompted segmentation (`CLIPSegForImageSegmentation`).
//!
//! - Paper: [Image Segmentation Using Text and Image Prompts](https://arxiv.org/abs/2112.10003)
//! - Model card: [CIDAS/clipseg-rd64-refined](https://huggingface.co/CIDAS/clipseg-rd64-refined)
//! - Mirrors transformers v5.17.0 `models/clipseg/modeling_clipseg.py`
//!   (<https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/clipseg/modeling_clipseg.py>).
//!
//! The text tower is CLIP's ([`super::clip::text`], pooled here at the first EOS, as
//! transformers does); so is the vision tower ([`super::clip::vision`]: CLIP's encoder behind
//! embeddings whose position table is bicubically interpolated to the input size). The decoder
//! ([`decoder`]) reduces the `extract_layers` activations, applies FiLM with the prompt
//! embedding and upsamples with transposed convolutions.
//!
//! transformers repeats the whole image pass once per prompt. Here the image is encoded once
//! ([`ClipSegForImageSegmentation::encode_image`]: vision tower plus every prompt-independent
//! decoder step) and only the conditional part runs for the batch of prompts
//! ([`ClipSegForImageSegmentation::decode`]); each prompt's row is computed by the same
//! operations as in transformers, so the logits are equal up to float rounding.

pub mod decoder;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear_no_bias, Linear};

use crate::models::ModelVars;
use serde::Deserialize;

use self::decoder::{ClipSegDecoder, DecoderImageState};
use super::clip::text::{
    input_ids_to_vec, pooling_positions, ClipTextTowerConfig, ClipTextTransformer,
};
use super::clip::vision::ClipVisionTransformer;
use super::clip::{clip_defaults, ClipEncoderConfig, ClipTextConfig, ClipVisionConfig};

pub use super::clip::text::LEGACY_EOS_TOKEN_ID;

/// Prompts decoded together against one image: the decoder's MLP activations take
/// `prompts x tokens x decoder_intermediate_size` floats (~4 MB per prompt for
/// CIDAS/clipseg-rd64-refined), so long prompt lists run in batches of this size.
pub const MAX_PROMPTS_PER_DECODE: usize = 16;

fn default_extract_layers() -> Vec<usize> {
    vec![3, 6, 9]
}
fn default_reduce_dim() -> usize {
    64
}
fn default_decoder_heads() -> usize {
    4
}
fn default_decoder_intermediate() -> usize {
    2048
}

/// transformers' `CLIPSegTextConfig`: the fields and defaults of `CLIPTextConfig`.
pub type ClipSegTextConfig = ClipTextConfig;

/// transformers' `CLIPSegVisionConfig`: the fields and defaults of `CLIPVisionConfig`.
pub type ClipSegVisionConfig = ClipVisionConfig;

/// transformers' `CLIPSegConfig`. `decoder_hidden_act` is not read: transformers' decoder
/// layers always use ReLU (`decoder_config.hidden_act = "relu"`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipSegConfig {
    pub text_config: ClipSegTextConfig,
    pub vision_config: ClipSegVisionConfig,
    #[serde(default = "clip_defaults::projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_extract_layers")]
    pub extract_layers: Vec<usize>,
    #[serde(default = "default_reduce_dim")]
    pub reduce_dim: usize,
    #[serde(default = "default_decoder_heads")]
    pub decoder_num_attention_heads: usize,
    #[serde(default = "default_decoder_intermediate")]
    pub decoder_intermediate_size: usize,
    #[serde(default)]
    pub conditional_layer: usize,
    #[serde(default)]
    pub use_complex_transposed_convolution: bool,
}

impl ClipSegConfig {
    /// Checks what the architecture needs and returns the towers' configs (text, vision).
    fn towers(&self, model: &str) -> crate::Result<(ClipTextTowerConfig, ClipEncoderConfig)> {
        let unsupported = |reason: String| crate::Error::Unsupported {
            model: model.to_string(),
            reason,
        };
        let v = &self.vision_config;
        if self.extract_layers.is_empty() {
            return Err(unsupported("extract_layers is empty".into()));
        }
        if let Some(&bad) = self
            .extract_layers
            .iter()
            .find(|&&l| l >= v.num_hidden_layers)
        {
            return Err(unsupported(format!(
                "extract_layers names layer {bad} but the vision tower has {} layers",
                v.num_hidden_layers
            )));
        }
        if self.decoder_num_attention_heads == 0
            || !self
                .reduce_dim
                .is_multiple_of(self.decoder_num_attention_heads)
        {
            return Err(unsupported(format!(
                "reduce_dim {} is not divisible by decoder_num_attention_heads {}",
                self.reduce_dim, self.decoder_num_attention_heads
            )));
        }
        if self.use_complex_transposed_convolution
            && (v.patch_size < decoder::COMPLEX_UPSAMPLE_SPLIT || self.reduce_dim < 2)
        {
            return Err(unsupported(format!(
                "the complex transposed convolution needs patch_size >= {} and reduce_dim >= 2 \
                 (got {} and {})",
                decoder::COMPLEX_UPSAMPLE_SPLIT,
                v.patch_size,
                self.reduce_dim
            )));
        }
        Ok((
            self.text_config.clip_config(model)?,
            self.vision_config.encoder_config(model)?,
        ))
    }
}

/// The raw outputs of [`ClipSegForImageSegmentation::forward`].
#[derive(Debug, Clone)]
pub struct ClipSegImageSegmentationOutput {
    /// (prompts, height, width), before sigmoid, at the input resolution.
    pub logits: Tensor,
    /// (prompts, projection_dim): the projected prompt features (not normalized).
    pub conditional_embeddings: Tensor,
}

/// A batch of images (usually one) encoded for segmentation: everything that does not depend
/// on the prompt.
#[derive(Debug, Clone)]
pub struct ClipSegImageState {
    decoder: DecoderImageState,
}

impl ClipSegImageState {
    /// How many images the state holds.
    pub fn batch_size(&self) -> usize {
        self.decoder.batch_size()
    }

    /// Image `i` of the batch alone ([`DecoderImageState::image`]): decode one image's own
    /// prompts against it with [`ClipSegForImageSegmentation::decode`].
    pub fn image(&self, i: usize) -> Result<Self> {
        Ok(Self {
            decoder: self.decoder.image(i)?,
        })
    }
}

/// transformers' `CLIPSegForImageSegmentation`.
#[derive(Debug, Clone)]
pub struct ClipSegForImageSegmentation {
    text_model: ClipTextTransformer,
    text_projection: Linear,
    vision_model: ClipVisionTransformer,
    visual_projection: Linear,
    decoder: ClipSegDecoder,
    extract_layers: Vec<usize>,
    eos_token_id: u32,
}

impl ClipSegForImageSegmentation {
    /// `model` names the checkpoint in configuration errors.
    pub fn new(vb: ModelVars, cfg: &ClipSegConfig, model: &str) -> crate::Result<Self> {
        let (text_cfg, vision_cfg) = cfg.towers(model)?;
        Ok(Self::build(vb, cfg, &text_cfg, &vision_cfg)?)
    }

    fn build(
        vb: ModelVars,
        cfg: &ClipSegConfig,
        text_cfg: &ClipTextTowerConfig,
        vision_cfg: &ClipEncoderConfig,
    ) -> Result<Self> {
        let clip = vb.pp("clip");
        let text_model = ClipTextTransformer::new(clip.pp("text_model"), text_cfg)?;
        let text_projection = linear_no_bias(
            cfg.text_config.hidden_size,
            cfg.projection_dim,
            clip.pp("text_projection").var_builder(),
        )?;
        // The encoder layers past the last extracted one only matter for image prompts.
        let needed_layers = cfg.extract_layers.iter().max().map_or(0, |&l| l + 1);
        let vision_model = ClipVisionTransformer::new(
            clip.pp("vision_model"),
            &cfg.vision_config,
            vision_cfg,
            needed_layers,
        )?;
        let visual_projection = linear_no_bias(
            cfg.vision_config.hidden_size,
            cfg.projection_dim,
            clip.pp("visual_projection").var_builder(),
        )?;
        let decoder = ClipSegDecoder::new(vb.pp("decoder"), cfg)?;
        Ok(Self {
            text_model,
            text_projection,
            vision_model,
            visual_projection,
            decoder,
            extract_layers: cfg.extract_layers.clone(),
            eos_token_id: cfg.text_config.eos_token_id,
        })
    }

    pub fn vision_model(&self) -> &ClipVisionTransformer {
        &self.vision_model
    }

    /// The token each row is pooled at, as `CLIPSegTextModel`: the first `eos_token_id`
    /// (0 when a row has none, as torch's argmax of an all-zero row), or with the legacy
    /// `eos_token_id == 2` the first maximum id.
    pub fn pooling_positions(&self, input_ids: &[Vec<u32>]) -> Vec<usize> {
        pooling_positions(input_ids, self.eos_token_id)
    }

    /// `get_text_features(...).pooler_output`: the pooled text output, projected (not
    /// normalized). `input_ids`: (prompts, seq). Padding after the EOS needs no mask: the
    /// causal mask alone decides what the pooled token sees. (prompts, projection_dim)
    pub fn get_text_features(&self, input_ids: &Tensor) -> Result<Tensor> {
        let positions = self.pooling_positions(&input_ids_to_vec(input_ids)?);
        // (rows, seq, d) after final_layer_norm
        let last_hidden_state = self.text_model.forward(input_ids)?;
        let pooled = self
            .text_model
            .pooled_output(&last_hidden_state, &positions)?;
        self.text_projection.forward(&pooled)
    }

    /// `get_image_features(...).pooler_output` for image prompts: the full vision tower, the
    /// class token through post_layernorm, projected. (b, projection_dim)
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pooled = self.vision_model.pooled_output(pixel_values)?;
        self.visual_projection.forward(&pooled)
    }

    /// The vision activations the decoder reads: the outputs of the `extract_layers` encoder
    /// layers (transformers' `hidden_states[i + 1]`), in that order. Each (b, 1 + patches, d).
    pub fn image_activations(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        self.vision_model
            .layer_outputs(pixel_values, &self.extract_layers)
    }

    /// Step 1 of transformers' forward plus every decoder step that does not depend on the
    /// prompt, for a batch of images (usually one).
    pub fn encode_image(&self, pixel_values: &Tensor) -> Result<ClipSegImageState> {
        let activations = self.image_activations(pixel_values)?;
        Ok(ClipSegImageState {
            decoder: self.decoder.encode_image(&activations)?,
        })
    }

    /// The conditional part of the decoder for a batch of prompt embeddings
    /// (prompts, projection_dim) against one encoded image (or as many images as prompts).
    /// Returns the logits (prompts, height, width) in f32.
    ///
    /// Prompts against one image run in batches of at most [`MAX_PROMPTS_PER_DECODE`] (each
    /// row is computed independently, so this changes nothing but peak memory).
    pub fn decode(
        &self,
        image: &ClipSegImageState,
        conditional_embeddings: &Tensor,
    ) -> Result<Tensor> {
        let prompts = conditional_embeddings.dim(0)?;
        let per_prompt_images = image.decoder.batch_size() > 1;
        if per_prompt_images || prompts <= MAX_PROMPTS_PER_DECODE {
            return self
                .decoder
                .decode(&image.decoder, conditional_embeddings)?
                .to_dtype(DType::F32);
        }
        let mut chunks = Vec::with_capacity(prompts.div_ceil(MAX_PROMPTS_PER_DECODE));
        for start in (0..prompts).step_by(MAX_PROMPTS_PER_DECODE) {
            let n = MAX_PROMPTS_PER_DECODE.min(prompts - start);
            let chunk = conditional_embeddings.narrow(0, start, n)?;
            chunks.push(
                self.decoder
                    .decode(&image.decoder, &chunk)?
                    .to_dtype(DType::F32)?,
            );
        }
        Tensor::cat(&chunks, 0)
    }

    /// transformers' `forward(input_ids, pixel_values)`: `pixel_values` holds one image, or one
    /// per prompt. The image pass runs once per distinct image in the batch given.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        pixel_values: &Tensor,
    ) -> Result<ClipSegImageSegmentationOutput> {
        let conditional_embeddings = self.get_text_features(input_ids)?;
        let image = self.encode_image(pixel_values)?;
        let logits = self.decode(&image, &conditional_embeddings)?;
        Ok(ClipSegImageSegmentationOutput {
            logits,
            conditional_embeddings,
        })
    }

    /// transformers' `forward(pixel_values, conditional_pixel_values)`: the prompt is an image.
    pub fn forward_visual_prompt(
        &self,
        pixel_values: &Tensor,
        conditional_pixel_values: &Tensor,
    ) -> Result<ClipSegImageSegmentationOutput> {
        let conditional_embeddings = self.get_image_features(conditional_pixel_values)?;
        let image = self.encode_image(pixel_values)?;
        let logits = self.decode(&image, &conditional_embeddings)?;
        Ok(ClipSegImageSegmentationOutput {
            logits,
            conditional_embeddings,
        })
    }
}
