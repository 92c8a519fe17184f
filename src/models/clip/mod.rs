//! The CLIP transformer that OWL-ViT and CLIPSeg are built on: the encoder layer stack
//! ([`encoder`]), the causal text tower ([`text`]) and the vision tower ([`vision`]), and
//! `CLIPModel` itself ([`model`]: zero-shot image classification). OWL-ViT keeps its own vision
//! embeddings and tower around [`encoder::ClipEncoder`]; CLIPSeg's vision tower is CLIP's, and
//! its decoder layers reuse [`encoder::ClipAttention`].
//!
//! - Paper: [Learning Transferable Visual Models From Natural Language Supervision](https://arxiv.org/abs/2103.00020)
//! - Model card: [openai/clip-vit-base-patch32](https://huggingface.co/openai/clip-vit-base-patch32)
//! - Mirrors transformers v5.17.0 `models/clip/modeling_clip.py` (`CLIPAttention`, `CLIPMLP`,
//!   `CLIPEncoderLayer`, `CLIPEncoder`, `CLIPTextEmbeddings`, `CLIPTextTransformer`;
//!   <https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/clip/modeling_clip.py>),
//!   which `modeling_owlvit.py` and `modeling_clipseg.py` copy.
//!
//! Written here rather than reusing candle-transformers' CLIP towers for memory and speed on
//! the CPU: q/k/v are one fused projection whose heads are read as strided views, the softmax
//! is computed per head and block of queries with the scores kept in cache (no score tensor of
//! every head), and bias, activation and residual are fused into each projection
//! ([`crate::models::kernels`], which ViLT shares). The towers also take `hidden_act` (`quick_gelu` or
//! `gelu`) and `layer_norm_eps` from the config.

pub mod encoder;
pub mod model;
pub mod text;
pub mod vision;

use serde::Deserialize;

pub use crate::models::kernels::Activation;

/// The config section names used in errors.
pub const TEXT_TOWER: &str = "text_config";
pub const VISION_TOWER: &str = "vision_config";

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
    pub fn text_max_positions() -> usize {
        77
    }
    pub fn pad_token_id() -> u32 {
        1
    }
    pub fn bos_token_id() -> u32 {
        49406
    }
    pub fn eos_token_id() -> u32 {
        49407
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn logit_scale_init_value() -> f64 {
        2.6592
    }
}

/// transformers' `CLIPTextConfig` (`CLIPSegTextConfig` copies it).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "clip_defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "clip_defaults::text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "clip_defaults::text_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "clip_defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "clip_defaults::text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "clip_defaults::text_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "clip_defaults::act")]
    pub hidden_act: String,
    #[serde(default = "clip_defaults::eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "clip_defaults::pad_token_id")]
    pub pad_token_id: u32,
    #[serde(default = "clip_defaults::bos_token_id")]
    pub bos_token_id: u32,
    #[serde(default = "clip_defaults::eos_token_id")]
    pub eos_token_id: u32,
}

/// transformers' `CLIPVisionConfig` (`CLIPSegVisionConfig` copies it).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "clip_defaults::vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "clip_defaults::vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "clip_defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "clip_defaults::vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "clip_defaults::channels")]
    pub num_channels: usize,
    #[serde(default = "clip_defaults::image_size")]
    pub image_size: usize,
    #[serde(default = "clip_defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "clip_defaults::act")]
    pub hidden_act: String,
    #[serde(default = "clip_defaults::eps")]
    pub layer_norm_eps: f64,
}

/// What the encoder needs from a transformers CLIP-style tower config.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipEncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl ClipEncoderConfig {
    /// Checks that the heads split the hidden size; `tower` names the config section.
    pub fn checked(self, model: &str, tower: &str) -> crate::Result<Self> {
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            return Err(crate::Error::Unsupported {
                model: model.to_string(),
                reason: format!(
                    "{tower}: hidden_size {} is not divisible by num_attention_heads {heads}",
                    self.hidden_size
                ),
            });
        }
        Ok(self)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The methods that turn a model's copies of transformers' `CLIPTextConfig` and
/// `CLIPVisionConfig` (OWL-ViT's and CLIPSeg's config classes repeat their fields) into the
/// towers' configs, checked: `clip_config` on the text config type, `encoder_config` on the
/// vision config type.
macro_rules! clip_tower_configs {
    (text: $text:ty, vision: $vision:ty) => {
        impl $text {
            /// The text tower's config, checked; `model` names the checkpoint in errors.
            pub fn clip_config(
                &self,
                model: &str,
            ) -> $crate::Result<$crate::models::clip::text::ClipTextTowerConfig> {
                let tower = $crate::models::clip::TEXT_TOWER;
                Ok($crate::models::clip::text::ClipTextTowerConfig {
                    vocab_size: self.vocab_size,
                    max_position_embeddings: self.max_position_embeddings,
                    encoder: $crate::models::clip::clip_tower_configs!(@encoder self, model, tower)?,
                })
            }
        }

        impl $vision {
            /// The vision encoder's config, checked; `model` names the checkpoint in errors.
            pub fn encoder_config(
                &self,
                model: &str,
            ) -> $crate::Result<$crate::models::clip::ClipEncoderConfig> {
                let tower = $crate::models::clip::VISION_TOWER;
                $crate::models::clip::check_patch_grid(model, self.image_size, self.patch_size)?;
                $crate::models::clip::clip_tower_configs!(@encoder self, model, tower)
            }
        }
    };
    (@encoder $config:ident, $model:ident, $tower:ident) => {
        $crate::models::clip::ClipEncoderConfig {
            hidden_size: $config.hidden_size,
            intermediate_size: $config.intermediate_size,
            num_hidden_layers: $config.num_hidden_layers,
            num_attention_heads: $config.num_attention_heads,
            hidden_act: $crate::models::clip::Activation::from_hf(
                &$config.hidden_act,
                $model,
                $tower,
            )?,
            layer_norm_eps: $config.layer_norm_eps,
        }
        .checked($model, $tower)
    };
}
pub(crate) use clip_tower_configs;

clip_tower_configs!(text: ClipTextConfig, vision: ClipVisionConfig);

/// Checks that the patches tile a vision config's (square) image.
pub fn check_patch_grid(model: &str, image_size: usize, patch_size: usize) -> crate::Result<()> {
    if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
        return Err(crate::Error::Unsupported {
            model: model.to_string(),
            reason: format!(
                "{VISION_TOWER}: image_size {image_size} is not a multiple of patch_size {patch_size}"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_heads_are_refused() {
        let cfg = ClipEncoderConfig {
            hidden_size: 10,
            intermediate_size: 20,
            num_hidden_layers: 1,
            num_attention_heads: 3,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
        };
        assert!(cfg.checked("m", VISION_TOWER).is_err());
    }
}
