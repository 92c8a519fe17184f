//! CLIP's vision tower: `CLIPVisionEmbeddings` (with `interpolate_pos_encoding`) in front of
//! the encoder ([`crate::models::clip::encoder`]), `pre_layrnorm` and `post_layernorm`
//! (`CLIPVisionTransformer` in transformers v5.17.0 `models/clip/modeling_clip.py`, which
//! `CLIPSegVisionTransformer` in `modeling_clipseg.py` copies). `CLIPModel` and CLIPSeg run it.
//!
//! Segmentation runs the encoder only up to the last layer the decoder extracts; image prompts
//! and CLIP's image features, which need the pooled output of the last layer, run all of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::models::ModelVars;
use candle_core::{DType, IndexOp, Module, Result, Tensor};

use super::ClipVisionConfig;
use crate::models::clip::encoder::{AttentionMask, ClipEncoder};
use crate::models::clip::ClipEncoderConfig;
use crate::models::interpolate;
use crate::models::kernels::{layer_norm, LayerNorm, PatchEmbedding};

/// transformers' `CLIPVisionEmbeddings` (`CLIPSegVisionEmbeddings`): class token + patch embeddings + a position table
/// interpolated bicubically (align_corners=False) to the input's patch grid. Interpolated
/// tables are computed on the host once per grid and cached on the device.
#[derive(Debug, Clone)]
pub struct ClipVisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: PatchEmbedding,
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

impl ClipVisionEmbeddings {
    pub fn new(vb: ModelVars, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let class_embedding = vb.get(d, "class_embedding")?;
        let patch_embedding = PatchEmbedding::new(
            vb.pp("patch_embedding"),
            cfg.num_channels,
            d,
            cfg.patch_size,
            false,
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
        // (b, patches, d)
        let patch_embeds = self.patch_embedding.forward(&pixel_values)?;
        let class_embeds = self
            .class_embedding
            .reshape((1, 1, self.embed_dim))?
            .broadcast_as((b, 1, self.embed_dim))?;
        let embeddings = Tensor::cat(&[&class_embeds, &patch_embeds], 1)?;
        embeddings.broadcast_add(&self.position_embeddings(h, w)?)
    }
}

/// transformers' `CLIPVisionTransformer` (`CLIPModel.vision_model`; CLIPSeg's copy is
/// `CLIPSegModel.vision_model`).
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    embeddings: ClipVisionEmbeddings,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
    /// Layers segmentation runs: 0..needed_layers.
    needed_layers: usize,
}

impl ClipVisionTransformer {
    /// `needed_layers`: how many encoder layers segmentation runs (last extracted layer + 1).
    pub fn new(
        vb: ModelVars,
        cfg: &ClipVisionConfig,
        encoder_cfg: &ClipEncoderConfig,
        needed_layers: usize,
    ) -> Result<Self> {
        let embeddings = ClipVisionEmbeddings::new(vb.pp("embeddings"), cfg)?;
        let pre_layrnorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?;
        let post_layernorm =
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("post_layernorm"))?;
        let encoder = ClipEncoder::new(vb.pp("encoder"), encoder_cfg)?;
        Ok(Self {
            embeddings,
            pre_layrnorm,
            needed_layers: needed_layers.clamp(1, encoder.num_layers().max(1)),
            encoder,
            post_layernorm,
        })
    }

    pub fn embeddings(&self) -> &ClipVisionEmbeddings {
        &self.embeddings
    }

    /// The encoder's input: embeddings through pre_layrnorm. (b, 1 + patches, d)
    fn encoder_input(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.pre_layrnorm
            .forward(&self.embeddings.forward(pixel_values)?)
    }

    /// Outputs of encoder layers 0..needed_layers, each (b, 1 + patches, d) (transformers'
    /// `hidden_states[1..]`, before post_layernorm).
    pub fn encoder_outputs(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        let layers: Vec<usize> = (0..self.needed_layers.min(self.encoder.num_layers())).collect();
        self.layer_outputs(pixel_values, &layers)
    }

    /// Outputs of the listed encoder layers, in that order, keeping no other layer's output
    /// (transformers' `hidden_states[l + 1]`). Each (b, 1 + patches, d).
    pub fn layer_outputs(&self, pixel_values: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        self.encoder.hidden_states(
            self.encoder_input(pixel_values)?,
            AttentionMask::None,
            layers,
        )
    }

    /// `pooler_output`: the last layer's class token through post_layernorm. (b, d)
    pub fn pooled_output(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let last = self
            .encoder
            .forward(self.encoder_input(pixel_values)?, AttentionMask::None)?;
        self.post_layernorm
            .forward(&last.i((.., 0, ..))?.contiguous()?)
    }
}
