//! CLIPSeg's vision tower: `CLIPSegVisionEmbeddings` (with `interpolate_pos_encoding`) in
//! front of candle-transformers' CLIP encoder, `pre_layrnorm` and `post_layernorm`
//! (`CLIPSegVisionModel` in transformers v5.17.0 `modeling_clipseg.py`).
//!
//! The encoder is loaded in two parts: the layers up to the last one the decoder extracts
//! (run for every segmentation) and the rest (run only for image prompts, which need the pooled
//! output of the last layer). Both parts read the checkpoint's own layer keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, IndexOp, Module, Result, Tensor};
use candle_nn::{conv2d_no_bias, layer_norm, Conv2d, Conv2dConfig, LayerNorm, VarBuilder};
use candle_transformers::models::clip::{
    text_model::ClipEncoder, vision_model::ClipVisionConfig, EncoderConfig,
};

use super::ClipSegVisionConfig;
use crate::models::interpolate;

/// Prefix of the encoder layer keys under `vision_model`.
const ENCODER_LAYERS_KEY: &str = "encoder.layers.";

/// `name` with the layer index after `encoder.layers.` shifted by `offset`, so that a
/// `ClipEncoder` built for layers 0..n reads the checkpoint's layers offset..offset + n.
fn shift_layer_key(name: &str, offset: usize) -> String {
    let Some(start) = name.find(ENCODER_LAYERS_KEY) else {
        return name.to_string();
    };
    let rest = &name[start + ENCODER_LAYERS_KEY.len()..];
    let Some((index, tail)) = rest.split_once('.') else {
        return name.to_string();
    };
    match index.parse::<usize>() {
        Ok(i) => format!(
            "{}{ENCODER_LAYERS_KEY}{}.{tail}",
            &name[..start],
            i + offset
        ),
        Err(_) => name.to_string(),
    }
}

/// transformers' `CLIPSegVisionEmbeddings`: class token + patch embeddings + a position table
/// interpolated bicubically (align_corners=False) to the input's patch grid. Interpolated
/// tables are computed on the host once per grid and cached on the device.
#[derive(Debug, Clone)]
pub struct ClipSegVisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    /// (1 + side * side, d) as stored in the checkpoint.
    position_embedding: Tensor,
    /// The same table on the host, f32, row-major.
    position_table: Arc<Vec<f32>>,
    /// Patches per side of the stored table.
    table_side: usize,
    patch_size: usize,
    embed_dim: usize,
    cache: Arc<Mutex<HashMap<(usize, usize), Tensor>>>,
}

impl ClipSegVisionEmbeddings {
    pub fn new(vb: VarBuilder, cfg: &ClipSegVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let class_embedding = vb.get(d, "class_embedding")?;
        let patch_embedding = conv2d_no_bias(
            cfg.num_channels,
            d,
            cfg.patch_size,
            Conv2dConfig {
                stride: cfg.patch_size,
                ..Default::default()
            },
            vb.pp("patch_embedding"),
        )?;
        let table_side = cfg.image_size / cfg.patch_size;
        let num_positions = table_side * table_side + 1;
        let position_embedding = vb.get((num_positions, d), "position_embedding.weight")?;
        let position_table = position_embedding
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self {
            class_embedding,
            patch_embedding,
            position_embedding,
            position_table: Arc::new(position_table),
            table_side,
            patch_size: cfg.patch_size,
            embed_dim: d,
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// `interpolate_pos_encoding` for an input of `height` x `width` pixels:
    /// (1 + grid_h * grid_w, d). The stored table as is when the grid matches it and the input
    /// is square, as transformers.
    pub fn position_embeddings(&self, height: usize, width: usize) -> Result<Tensor> {
        let (gh, gw) = (height / self.patch_size, width / self.patch_size);
        if gh * gw == self.table_side * self.table_side && height == width {
            return Ok(self.position_embedding.clone());
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(&(gh, gw)) {
            return Ok(t.clone());
        }
        let d = self.embed_dim;
        let (class_pos, patch_pos) = self.position_table.split_at(d);
        // (side * side, d) tokens -> (d, side, side) planes -> bicubic -> (gh * gw, d) tokens
        let planes = interpolate::tokens_to_planes(patch_pos, d);
        let resized =
            interpolate::bicubic(&planes, d, (self.table_side, self.table_side), (gh, gw));
        let mut table = class_pos.to_vec();
        table.extend(interpolate::planes_to_tokens(&resized, d));
        let t = Tensor::from_vec(table, (1 + gh * gw, d), self.position_embedding.device())?
            .to_dtype(self.position_embedding.dtype())?;
        cache.insert((gh, gw), t.clone());
        Ok(t)
    }

    /// (b, 3, H, W) -> (b, 1 + patches, d)
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _c, h, w) = pixel_values.dims4()?;
        let pixel_values = pixel_values.to_dtype(self.class_embedding.dtype())?;
        // (b, d, gh, gw) -> (b, patches, d)
        let patch_embeds = self
            .patch_embedding
            .forward(&pixel_values)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let class_embeds = self
            .class_embedding
            .reshape((1, 1, self.embed_dim))?
            .broadcast_as((b, 1, self.embed_dim))?;
        let embeddings = Tensor::cat(&[&class_embeds, &patch_embeds], 1)?;
        embeddings.broadcast_add(&self.position_embeddings(h, w)?)
    }
}

/// transformers' `CLIPSegVisionModel` (the tower of `CLIPSegModel.vision_model`).
#[derive(Debug, Clone)]
pub struct ClipSegVisionTransformer {
    embeddings: ClipSegVisionEmbeddings,
    pre_layrnorm: LayerNorm,
    /// Layers 0..needed_layers.
    encoder_head: ClipEncoder,
    /// Layers needed_layers..num_hidden_layers, if any.
    encoder_tail: Option<ClipEncoder>,
    post_layernorm: LayerNorm,
}

impl ClipSegVisionTransformer {
    /// `needed_layers`: how many encoder layers segmentation runs (last extracted layer + 1).
    pub fn new(
        vb: VarBuilder,
        cfg: &ClipSegVisionConfig,
        candle_cfg: &ClipVisionConfig,
        needed_layers: usize,
    ) -> Result<Self> {
        let embeddings = ClipSegVisionEmbeddings::new(vb.pp("embeddings"), cfg)?;
        let pre_layrnorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?;
        let post_layernorm =
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("post_layernorm"))?;
        let total = cfg.num_hidden_layers;
        let head_layers = needed_layers.clamp(1, total);
        let head_cfg = ClipVisionConfig {
            num_hidden_layers: head_layers,
            ..candle_cfg.clone()
        };
        let encoder_head = ClipEncoder::new(vb.pp("encoder"), &EncoderConfig::Vision(head_cfg))?;
        let encoder_tail = if head_layers < total {
            let tail_cfg = ClipVisionConfig {
                num_hidden_layers: total - head_layers,
                ..candle_cfg.clone()
            };
            // candle's `rename_f` sees the full key path and hands the renamed path to the
            // builder it wraps, which prepends its own prefix again: wrap the root builder and
            // restore the prefix on top.
            let tail_vb = vb
                .root()
                .rename_f(move |name| shift_layer_key(name, head_layers))
                .set_prefix(vb.prefix());
            Some(ClipEncoder::new(
                tail_vb.pp("encoder"),
                &EncoderConfig::Vision(tail_cfg),
            )?)
        } else {
            None
        };
        Ok(Self {
            embeddings,
            pre_layrnorm,
            encoder_head,
            encoder_tail,
            post_layernorm,
        })
    }

    pub fn embeddings(&self) -> &ClipSegVisionEmbeddings {
        &self.embeddings
    }

    /// Outputs of encoder layers 0..needed_layers, each (b, 1 + patches, d) (transformers'
    /// `hidden_states[1..]`, before post_layernorm).
    pub fn encoder_outputs(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        let hidden_states = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(pixel_values)?)?;
        self.encoder_head.output_hidden_states(&hidden_states, None)
    }

    /// `pooler_output`: the last layer's class token through post_layernorm. (b, d)
    pub fn pooled_output(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let hidden_states = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(pixel_values)?)?;
        let mut last = self.encoder_head.forward(&hidden_states, None)?;
        if let Some(tail) = &self.encoder_tail {
            last = tail.forward(&last, None)?;
        }
        self.post_layernorm.forward(&last.i((.., 0, ..))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_shift_only_the_layer_index() {
        assert_eq!(
            shift_layer_key("clip.vision_model.encoder.layers.0.mlp.fc1.weight", 3),
            "clip.vision_model.encoder.layers.3.mlp.fc1.weight"
        );
        assert_eq!(
            shift_layer_key(
                "clip.vision_model.encoder.layers.12.self_attn.q_proj.bias",
                2
            ),
            "clip.vision_model.encoder.layers.14.self_attn.q_proj.bias"
        );
        assert_eq!(
            shift_layer_key("clip.vision_model.post_layernorm.weight", 3),
            "clip.vision_model.post_layernorm.weight"
        );
    }
}
