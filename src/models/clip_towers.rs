//! Adapters from transformers' CLIP-style tower configs to candle-transformers' CLIP towers,
//! which OWL-ViT and CLIPSeg reuse. candle's towers hard-code what real checkpoints use
//! (quick_gelu, LayerNorm eps 1e-5); anything else is rejected here instead of silently
//! computing something different.

use candle_transformers::models::clip::{
    text_model::{Activation, ClipTextConfig},
    vision_model::ClipVisionConfig,
};

use crate::error::{Error, Result};

/// The LayerNorm epsilon candle-transformers' CLIP towers use.
pub const CLIP_LAYER_NORM_EPS: f64 = 1e-5;

/// Defaults of transformers' CLIP-style configs (`CLIPTextConfig` / `CLIPVisionConfig`), which
/// OWL-ViT's and CLIPSeg's config classes copy; used as `serde(default = ...)`. The values that
/// differ per model (max positions, image size, pad token) stay in each model's file.
pub mod clip_defaults {
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn text_hidden() -> usize {
        512
    }
    pub fn text_intermediate() -> usize {
        2048
    }
    pub fn text_heads() -> usize {
        8
    }
    pub fn layers() -> usize {
        12
    }
    pub fn act() -> String {
        "quick_gelu".into()
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn vision_hidden() -> usize {
        768
    }
    pub fn vision_intermediate() -> usize {
        3072
    }
    pub fn vision_heads() -> usize {
        12
    }
    pub fn channels() -> usize {
        3
    }
    pub fn patch_size() -> usize {
        32
    }
    pub fn projection_dim() -> usize {
        512
    }
}

/// The fields of a transformers CLIP-style text config that the tower needs.
pub struct TextTower<'a> {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: &'a str,
    pub layer_norm_eps: f64,
    pub projection_dim: usize,
}

/// The fields of a transformers CLIP-style vision config that the tower needs.
pub struct VisionTower<'a> {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: &'a str,
    pub layer_norm_eps: f64,
    pub projection_dim: usize,
}

fn check_common(
    model: &str,
    tower: &str,
    act: &str,
    eps: f64,
    hidden: usize,
    heads: usize,
) -> Result<Activation> {
    let unsupported = |reason: String| Error::Unsupported {
        model: model.to_string(),
        reason: format!("{tower}: {reason}"),
    };
    if act != "quick_gelu" {
        return Err(unsupported(format!("hidden_act `{act}` (only quick_gelu)")));
    }
    if (eps - CLIP_LAYER_NORM_EPS).abs() > 1e-12 {
        return Err(unsupported(format!(
            "layer_norm_eps {eps} (only {CLIP_LAYER_NORM_EPS})"
        )));
    }
    if heads == 0 || hidden % heads != 0 {
        return Err(unsupported(format!(
            "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )));
    }
    Ok(Activation::QuickGelu)
}

impl TextTower<'_> {
    pub fn to_candle(&self, model: &str) -> Result<ClipTextConfig> {
        let activation = check_common(
            model,
            "text_config",
            self.hidden_act,
            self.layer_norm_eps,
            self.hidden_size,
            self.num_attention_heads,
        )?;
        Ok(ClipTextConfig {
            vocab_size: self.vocab_size,
            embed_dim: self.hidden_size,
            activation,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
        })
    }
}

impl VisionTower<'_> {
    pub fn to_candle(&self, model: &str) -> Result<ClipVisionConfig> {
        let activation = check_common(
            model,
            "vision_config",
            self.hidden_act,
            self.layer_norm_eps,
            self.hidden_size,
            self.num_attention_heads,
        )?;
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return Err(Error::Unsupported {
                model: model.to_string(),
                reason: format!(
                    "vision_config: image_size {} is not a multiple of patch_size {}",
                    self.image_size, self.patch_size
                ),
            });
        }
        Ok(ClipVisionConfig {
            embed_dim: self.hidden_size,
            activation,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
            num_channels: self.num_channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
        })
    }
}
