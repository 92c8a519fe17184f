//! transformers' `CLIPTextEmbeddings` and `CLIPTextTransformer` (v5.17.0
//! `models/clip/modeling_clip.py`), which `OwlViTTextTransformer` and
//! `CLIPSegTextTransformer` copy: token + position embeddings, the encoder under a causal mask,
//! `final_layer_norm`. The models pool at different tokens, so pooling takes the positions
//! ([`ClipTextTransformer::pooled_output`]).
//!
//! No padding mask is applied: padding only follows the EOS token, and under the causal mask
//! no token at or before the EOS attends to it, so the pooled output is the same.

use crate::models::ModelVars;
use candle_core::{bail, DType, Module, Result, Tensor};

use super::encoder::{AttentionMask, ClipEncoder};
use super::ClipEncoderConfig;
use crate::models::kernels::{layer_norm, LayerNorm, TokenEmbedding};

/// What the text tower needs from a transformers CLIP-style text config.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextTowerConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub encoder: ClipEncoderConfig,
}

/// transformers' `CLIPTextEmbeddings` with the default `position_ids` (`0..seq`).
#[derive(Debug, Clone)]
pub struct ClipTextEmbeddings {
    /// (vocab_size, d), bf16 on the bf16-weights path
    token_embedding: TokenEmbedding,
    /// (max_position_embeddings, d)
    position_embedding: Tensor,
}

impl ClipTextEmbeddings {
    pub fn new(vb: ModelVars, cfg: &ClipTextTowerConfig) -> Result<Self> {
        let d = cfg.encoder.hidden_size;
        Ok(Self {
            token_embedding: TokenEmbedding::new(&vb, cfg.vocab_size, d, "token_embedding.weight")?,
            position_embedding: vb.get(
                (cfg.max_position_embeddings, d),
                "position_embedding.weight",
            )?,
        })
    }

    /// (b, seq) ids -> (b, seq, d)
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, seq) = input_ids.dims2()?;
        let max = self.position_embedding.dim(0)?;
        if seq > max {
            bail!("sequence length {seq} exceeds max_position_embeddings {max}");
        }
        let inputs_embeds = self.token_embedding.forward(input_ids)?;
        inputs_embeds.broadcast_add(&self.position_embedding.narrow(0, 0, seq)?)
    }
}

/// transformers' `CLIPTextTransformer`.
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    embeddings: ClipTextEmbeddings,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
}

impl ClipTextTransformer {
    pub fn new(vb: ModelVars, cfg: &ClipTextTowerConfig) -> Result<Self> {
        let enc = &cfg.encoder;
        Ok(Self {
            embeddings: ClipTextEmbeddings::new(vb.pp("embeddings"), cfg)?,
            encoder: ClipEncoder::new(vb.pp("encoder"), enc)?,
            final_layer_norm: layer_norm(
                enc.hidden_size,
                enc.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
        })
    }

    /// `last_hidden_state`, after `final_layer_norm`. (b, seq) ids -> (b, seq, d)
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let hidden_states = self.embeddings.forward(input_ids)?;
        let hidden_states = self.encoder.forward(hidden_states, AttentionMask::Causal)?;
        self.final_layer_norm.forward(&hidden_states)
    }

    /// `pooled_output`: row `i` of `last_hidden_state` (b, seq, d) at token `positions[i]`.
    /// (b, d)
    pub fn pooled_output(&self, last_hidden_state: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let (b, seq, d) = last_hidden_state.dims3()?;
        if positions.len() != b || positions.iter().any(|&p| p >= seq) {
            bail!("pooling positions {positions:?} do not index a ({b}, {seq}) batch");
        }
        let flat: Vec<u32> = positions
            .iter()
            .enumerate()
            .map(|(row, &pos)| (row * seq + pos) as u32)
            .collect();
        let index = Tensor::from_vec(flat, b, last_hidden_state.device())?;
        last_hidden_state
            .reshape((b * seq, d))?
            .index_select(&index, 0)
    }
}

/// The ids of a (b, seq) tensor, on the host.
pub fn input_ids_to_vec(input_ids: &Tensor) -> Result<Vec<Vec<u32>>> {
    input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()
}

/// transformers keeps the pre-#24773 pooling (argmax of the ids) for configs whose text
/// `eos_token_id` is this value (`CLIPTextTransformer.forward`; the OpenAI CLIP configs have it).
pub const LEGACY_EOS_TOKEN_ID: u32 = 2;

/// The token each row is pooled at, as `CLIPTextTransformer` (and CLIPSeg's copy): the first
/// `eos_token_id` (0 when a row has none, as torch's argmax of an all-zero row), or with the
/// legacy `eos_token_id == 2` the first maximum id.
pub fn pooling_positions(input_ids: &[Vec<u32>], eos_token_id: u32) -> Vec<usize> {
    input_ids
        .iter()
        .map(|row| {
            if eos_token_id == LEGACY_EOS_TOKEN_ID {
                argmax_position(row)
            } else {
                row.iter().position(|&id| id == eos_token_id).unwrap_or(0)
            }
        })
        .collect()
}

/// `input_ids.argmax(dim=-1)` of one row: the first maximum id, as torch (CLIP's EOS token,
/// whose id is the largest in its vocabulary).
pub fn argmax_position(row: &[u32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, 0),
            |best, (i, &id)| if id > best.1 { (i, id) } else { best },
        )
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax_position(&[49406, 320, 49407, 0, 0]), 2);
        assert_eq!(argmax_position(&[5, 9, 9, 1]), 1);
        assert_eq!(argmax_position(&[0, 0]), 0);
    }

    #[test]
    fn pooling_at_the_first_eos_or_the_legacy_argmax() {
        let ids = vec![vec![49406, 320, 49407, 49407], vec![5, 7, 6, 0]];
        assert_eq!(pooling_positions(&ids, 49407), [2, 0]);
        assert_eq!(pooling_positions(&ids, LEGACY_EOS_TOKEN_ID), [2, 1]);
    }
}
