//! The CLIP transformer that OWL-ViT and CLIPSeg are built on: the encoder layer stack
//! ([`encoder`]) and the causal text tower ([`text`]). Each model keeps its own vision
//! embeddings and tower around [`encoder::ClipEncoder`]; CLIPSeg's decoder layers reuse
//! [`encoder::ClipAttention`].
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
pub mod text;

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
            ) -> $crate::Result<$crate::models::clip::text::ClipTextConfig> {
                let tower = $crate::models::clip::TEXT_TOWER;
                Ok($crate::models::clip::text::ClipTextConfig {
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
