//! `CLIPModel`: the text and vision towers with their projections and the learned temperature,
//! as zero-shot image classification uses them (transformers v5.17.0
//! `models/clip/modeling_clip.py`, `CLIPModel`,
//! <https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/clip/modeling_clip.py>;
//! the pipeline is `pipelines/zero_shot_image_classification.py`).
//!
//! - Paper: [Learning Transferable Visual Models From Natural Language Supervision](https://arxiv.org/abs/2103.00020)
//! - Model cards: [openai/clip-vit-base-patch32](https://huggingface.co/openai/clip-vit-base-patch32),
//!   [openai/clip-vit-large-patch14](https://huggingface.co/openai/clip-vit-large-patch14)
//!
//! The towers are the shared ones ([`super::text`], [`super::vision`]); the text tower pools at
//! the first `eos_token_id` or, for the legacy `eos_token_id == 2` of the OpenAI configs, at
//! argmax(input_ids) ([`super::text::pooling_positions`]). Labels are embedded once
//! ([`ClipModel::get_text_features`], normalized by [`normalize`]) and reused for every image.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{linear_no_bias, Linear};
use serde::Deserialize;

use super::text::{input_ids_to_vec, pooling_positions, ClipTextTransformer};
use super::vision::ClipVisionTransformer;
use super::{clip_defaults, ClipTextConfig, ClipVisionConfig};
use crate::models::ModelVars;

/// transformers' `CLIPConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "clip_defaults::projection_dim")]
    pub projection_dim: usize,
    /// The initial value of `logit_scale`; the checkpoint's trained value is what runs.
    #[serde(default = "clip_defaults::logit_scale_init_value")]
    pub logit_scale_init_value: f64,
}

/// The outputs of [`ClipModel::forward`] (`CLIPOutput`), in f32.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// (images, texts): `logit_scale.exp()` times the cosine similarities.
    pub logits_per_image: Tensor,
    /// (texts, images): the transpose.
    pub logits_per_text: Tensor,
    /// (texts, projection_dim), normalized.
    pub text_embeds: Tensor,
    /// (images, projection_dim), normalized.
    pub image_embeds: Tensor,
}

/// transformers' `CLIPModel`.
#[derive(Debug, Clone)]
pub struct ClipModel {
    text_model: ClipTextTransformer,
    vision_model: ClipVisionTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    /// `logit_scale.exp()`, read once from the checkpoint's scalar `logit_scale`.
    logit_scale_exp: f32,
    eos_token_id: u32,
}

impl ClipModel {
    /// `model` names the checkpoint in configuration errors.
    pub fn new(vb: ModelVars, cfg: &ClipConfig, model: &str) -> crate::Result<Self> {
        let text_cfg = cfg.text_config.clip_config(model)?;
        let vision_cfg = cfg.vision_config.encoder_config(model)?;
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        let text_model = ClipTextTransformer::new(vb.pp("text_model"), &text_cfg)?;
        let vision_model =
            ClipVisionTransformer::new(vb.pp("vision_model"), v, &vision_cfg, v.num_hidden_layers)?;
        let visual_projection = linear_no_bias(
            v.hidden_size,
            cfg.projection_dim,
            vb.pp("visual_projection").var_builder(),
        )?;
        let text_projection = linear_no_bias(
            t.hidden_size,
            cfg.projection_dim,
            vb.pp("text_projection").var_builder(),
        )?;
        // a 0-d tensor in the checkpoint
        let logit_scale = vb
            .get((), "logit_scale")?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(Self {
            text_model,
            vision_model,
            visual_projection,
            text_projection,
            logit_scale_exp: logit_scale.exp(),
            eos_token_id: t.eos_token_id,
        })
    }

    pub fn vision_model(&self) -> &ClipVisionTransformer {
        &self.vision_model
    }

    /// `logit_scale.exp()`: the temperature that scales the cosine similarities.
    pub fn logit_scale_exp(&self) -> f32 {
        self.logit_scale_exp
    }

    /// The token each row of `input_ids` is pooled at.
    pub fn pooling_positions(&self, input_ids: &[Vec<u32>]) -> Vec<usize> {
        pooling_positions(input_ids, self.eos_token_id)
    }

    /// `get_text_features`: the pooled text output, projected (not normalized). Padding after
    /// the EOS needs no mask: the causal mask alone decides what the pooled token sees.
    /// (texts, seq) -> (texts, projection_dim)
    pub fn get_text_features(&self, input_ids: &Tensor) -> Result<Tensor> {
        let positions = self.pooling_positions(&input_ids_to_vec(input_ids)?);
        // (texts, seq, d) after final_layer_norm
        let last_hidden_state = self.text_model.forward(input_ids)?;
        let pooled = self
            .text_model
            .pooled_output(&last_hidden_state, &positions)?;
        self.text_projection.forward(&pooled)
    }

    /// `get_image_features`: the class token of the last layer through post_layernorm,
    /// projected (not normalized). (b, 3, S, S) -> (b, projection_dim)
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pooled = self.vision_model.pooled_output(pixel_values)?;
        self.visual_projection.forward(&pooled)
    }

    /// `logits_per_image` of normalized embeddings, in f32: `logit_scale.exp()` times
    /// image (images, p) . text (texts, p)^T -> (images, texts).
    pub fn logits_per_image(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let image = image_embeds.to_dtype(DType::F32)?;
        let text = text_embeds.to_dtype(DType::F32)?;
        // transformers computes logits_per_text = text . image^T and transposes it; each entry
        // is the same dot product.
        image.matmul(&text.t()?)? * f64::from(self.logit_scale_exp)
    }

    /// transformers' `forward(input_ids, pixel_values)`.
    pub fn forward(&self, input_ids: &Tensor, pixel_values: &Tensor) -> Result<ClipOutput> {
        let text_embeds = normalize(&self.get_text_features(input_ids)?)?;
        let image_embeds = normalize(&self.get_image_features(pixel_values)?)?;
        let logits_per_image = self.logits_per_image(&image_embeds, &text_embeds)?;
        Ok(ClipOutput {
            logits_per_text: logits_per_image.t()?,
            logits_per_image,
            text_embeds,
            image_embeds,
        })
    }
}

/// transformers' `embeds / _get_vector_norm(embeds)` over the last dimension (no epsilon), in
/// f32. (n, p) -> (n, p)
pub fn normalize(embeds: &Tensor) -> Result<Tensor> {
    let x = embeds.to_dtype(DType::F32)?;
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn empty_config_takes_clip_vit_base_patch32_defaults() {
        let cfg: ClipConfig =
            serde_json::from_str(r#"{"text_config": {}, "vision_config": {}}"#).unwrap();
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        assert_eq!((t.hidden_size, t.max_position_embeddings), (512, 77));
        assert_eq!((t.eos_token_id, t.pad_token_id), (49407, 1));
        assert_eq!((v.hidden_size, v.image_size, v.patch_size), (768, 224, 32));
        assert_eq!(cfg.projection_dim, 512);
    }

    #[test]
    fn normalize_gives_unit_rows() {
        let x = Tensor::new(&[[3f32, 4.0], [0.0, -2.0]], &Device::Cpu).unwrap();
        let n = normalize(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(n, [[0.6, 0.8], [0.0, -1.0]]);
    }
}
