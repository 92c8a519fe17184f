//! BLIP image captioning (`BlipForConditionalGeneration`) and generative visual question
//! answering (`BlipForQuestionAnswering`).
//!
//! - Paper: [BLIP: Bootstrapping Language-Image Pre-training for Unified Vision-Language
//!   Understanding and Generation](https://arxiv.org/abs/2201.12086)
//! - Model cards: [Salesforce/blip-image-captioning-base](https://huggingface.co/Salesforce/blip-image-captioning-base),
//!   [Salesforce/blip-vqa-base](https://huggingface.co/Salesforce/blip-vqa-base)
//! - Mirrors transformers v5.17.0 `models/blip/modeling_blip.py` and `modeling_blip_text.py`
//!   (<https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/blip/>).
//!
//! A ViT ([`vision`]) encodes the image once; a BERT-style decoder ([`text`]) with
//! cross-attention to those image tokens generates the text, one token per step against a
//! key/value cache (self-attention keys and values grow by one row a step; the cross-attention
//! ones are computed once per image and shared by every beam). For VQA the question first goes
//! through a BERT-style encoder with cross-attention to the image, and the answer decoder
//! attends to the question's tokens instead of the image's.

pub mod text;
pub mod vision;

use serde::Deserialize;

pub use crate::models::kernels::Activation;

/// config.json `architectures` of the two heads.
pub const CAPTION_ARCHITECTURES: &[&str] = &["BlipForConditionalGeneration"];
pub const VQA_ARCHITECTURES: &[&str] = &["BlipForQuestionAnswering"];

mod defaults {
    pub fn text_vocab() -> usize {
        30524
    }
    pub fn hidden() -> usize {
        768
    }
    pub fn intermediate() -> usize {
        3072
    }
    pub fn layers() -> usize {
        12
    }
    pub fn text_heads() -> usize {
        8
    }
    pub fn vision_heads() -> usize {
        12
    }
    pub fn max_positions() -> usize {
        512
    }
    pub fn act() -> String {
        "gelu".into()
    }
    pub fn text_eps() -> f64 {
        1e-12
    }
    pub fn vision_eps() -> f64 {
        1e-5
    }
    pub fn bos() -> u32 {
        30522
    }
    pub fn sep() -> u32 {
        102
    }
    pub fn image_size() -> usize {
        384
    }
    pub fn patch_size() -> usize {
        16
    }
}

/// transformers' `BlipTextConfig` (the fields the decoder and the question encoder read).
#[derive(Debug, Clone, Deserialize)]
pub struct BlipTextConfig {
    #[serde(default = "defaults::text_vocab")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::act")]
    pub hidden_act: String,
    #[serde(default = "defaults::text_eps")]
    pub layer_norm_eps: f64,
    /// `[DEC]`: generation starts from it (the prompt's `[CLS]` is replaced by it).
    #[serde(default = "defaults::bos")]
    pub bos_token_id: u32,
    /// `[SEP]`: BLIP's `generate` stops on it (not on `eos_token_id`).
    #[serde(default = "defaults::sep")]
    pub sep_token_id: u32,
    #[serde(default)]
    pub pad_token_id: u32,
}

/// transformers' `BlipVisionConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipVisionConfig {
    #[serde(default = "defaults::hidden")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::image_size")]
    pub image_size: usize,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::act")]
    pub hidden_act: String,
    #[serde(default = "defaults::vision_eps")]
    pub layer_norm_eps: f64,
}

/// transformers' `BlipConfig`: the two sections, each with transformers' defaults where
/// absent.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    #[serde(default = "default_text")]
    pub text_config: BlipTextConfig,
    #[serde(default = "default_vision")]
    pub vision_config: BlipVisionConfig,
}

fn default_text() -> BlipTextConfig {
    serde_json::from_str("{}").expect("every text field has a default")
}

fn default_vision() -> BlipVisionConfig {
    serde_json::from_str("{}").expect("every vision field has a default")
}

impl BlipConfig {
    /// Refuses shapes the layers cannot split (naming `model`).
    pub fn check(&self, model: &str) -> crate::Result<()> {
        let unsupported = |reason: String| crate::Error::Unsupported {
            model: model.to_string(),
            reason,
        };
        for (section, d, heads) in [
            (
                "text_config",
                self.text_config.hidden_size,
                self.text_config.num_attention_heads,
            ),
            (
                "vision_config",
                self.vision_config.hidden_size,
                self.vision_config.num_attention_heads,
            ),
        ] {
            if heads == 0 || !d.is_multiple_of(heads) {
                return Err(unsupported(format!(
                    "{section}: hidden_size {d} is not divisible by num_attention_heads {heads}"
                )));
            }
        }
        let v = &self.vision_config;
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return Err(unsupported(format!(
                "vision_config: image_size {} is smaller than patch_size {}",
                v.image_size, v.patch_size
            )));
        }
        for id in [self.text_config.bos_token_id, self.text_config.sep_token_id] {
            if id as usize >= self.text_config.vocab_size {
                return Err(unsupported(format!(
                    "text_config: token id {id} is outside the vocabulary of {}",
                    self.text_config.vocab_size
                )));
            }
        }
        Ok(())
    }

    pub fn text_activation(&self, model: &str) -> crate::Result<Activation> {
        Activation::from_hf(&self.text_config.hidden_act, model, "text_config")
    }

    pub fn vision_activation(&self, model: &str) -> crate::Result<Activation> {
        Activation::from_hf(&self.vision_config.hidden_act, model, "vision_config")
    }
}

use candle_core::Tensor;

use crate::models::ModelVars;
use text::{BlipTextLMHeadModel, BlipTextModel, KeyValues};
use vision::BlipVisionModel;

/// Which head a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlipTask {
    /// `BlipForConditionalGeneration`: the decoder attends to the image.
    Caption,
    /// `BlipForQuestionAnswering`: the decoder attends to the question, encoded with the image.
    Vqa,
}

/// `BlipForConditionalGeneration` / `BlipForQuestionAnswering` for generation: the vision
/// tower, the VQA question encoder (`text_encoder`) and the decoder (`text_decoder`).
#[derive(Debug, Clone)]
pub struct BlipModel {
    pub vision: BlipVisionModel,
    pub question_encoder: Option<BlipTextModel>,
    pub decoder: BlipTextLMHeadModel,
    pub task: BlipTask,
}

impl BlipModel {
    pub fn new(
        vb: ModelVars,
        cfg: &BlipConfig,
        task: BlipTask,
        model: &str,
    ) -> crate::Result<Self> {
        cfg.check(model)?;
        let (vact, tact) = (cfg.vision_activation(model)?, cfg.text_activation(model)?);
        let vision = BlipVisionModel::new(vb.pp("vision_model"), &cfg.vision_config, vact)?;
        let (vision_d, text_d) = (cfg.vision_config.hidden_size, cfg.text_config.hidden_size);
        let question_encoder = match task {
            BlipTask::Caption => None,
            BlipTask::Vqa => Some(BlipTextModel::new(
                vb.pp("text_encoder"),
                &cfg.text_config,
                vision_d,
                tact,
            )?),
        };
        // the VQA decoder attends to the question encoder's states, of the text width
        let decoder_context = if task == BlipTask::Vqa {
            text_d
        } else {
            vision_d
        };
        let decoder = BlipTextLMHeadModel::new(
            vb.pp("text_decoder"),
            &cfg.text_config,
            decoder_context,
            tact,
        )?;
        Ok(Self {
            vision,
            question_encoder,
            decoder,
            task,
        })
    }

    /// The image's `image_embeds` (1, 1 + patches, d) for pixels (1, 3, S, S).
    pub fn image_embeds(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.vision.forward(pixel_values)
    }

    /// The decoder's cross-attention keys and values for one image: of its embeddings when
    /// captioning; of the question `question_ids` (1, s) encoded against them for VQA.
    pub fn decoder_context(
        &self,
        image_embeds: &Tensor,
        question_ids: Option<&Tensor>,
    ) -> candle_core::Result<Vec<KeyValues>> {
        match (&self.question_encoder, question_ids) {
            (None, None) => self.decoder.bert().cross_kv(image_embeds),
            (Some(encoder), Some(ids)) => {
                let image_kv = encoder.cross_kv(image_embeds)?;
                let question = encoder.forward(ids, None, false, &image_kv)?;
                self.decoder.bert().cross_kv(&question)
            }
            (None, Some(_)) => candle_core::bail!("a captioning model takes no question"),
            (Some(_), None) => candle_core::bail!("a VQA model needs a question"),
        }
    }
}
