//! BLIP's vision tower, transformers' `BlipVisionModel`: class token + patch embeddings + a
//! learned position table, pre-norm ViT layers (`BlipEncoderLayer`: one fused `qkv`
//! projection, `projection`, `mlp.fc1/fc2`), then `post_layernorm`. The layers run on the
//! project's kernels, as CLIP's ([`crate::models::clip::encoder`]): q/k/v one projection with q
//! pre-scaled by `head_dim^-0.5`, bias + residual fused into each projection.

use candle_core::{Module, Result, Tensor};

use super::BlipVisionConfig;
use crate::models::kernels::{
    attention, layer_norm, Activation, AttentionMask, Epilogue, FusedLinear, FusedMlp, LayerNorm,
    PatchEmbedding,
};
use crate::models::ModelVars;

/// transformers' `BlipAttention`: `qkv` (3d, d), q rows first, and `projection`.
#[derive(Debug, Clone)]
struct BlipAttention {
    qkv: FusedLinear,
    projection: FusedLinear,
    num_heads: usize,
    head_dim: usize,
}

impl BlipAttention {
    fn new(vb: ModelVars, d: usize, num_heads: usize) -> Result<Self> {
        let head_dim = d / num_heads;
        let scale = (head_dim as f64).powf(-0.5);
        let qkv = vb.pp("qkv");
        let (w, b) = (qkv.get((3 * d, d), "weight")?, qkv.get(3 * d, "bias")?);
        // transformers scales the scores q k^T; scaling q's rows gives the same product
        let w = Tensor::cat(&[(w.narrow(0, 0, d)? * scale)?, w.narrow(0, d, 2 * d)?], 0)?;
        let b = Tensor::cat(&[(b.narrow(0, 0, d)? * scale)?, b.narrow(0, d, 2 * d)?], 0)?;
        Ok(Self {
            qkv: FusedLinear::new(w, b, vb.kernels())?.with_bias_row()?,
            projection: FusedLinear::load(d, d, vb.pp("projection"))?,
            num_heads,
            head_dim,
        })
    }

    /// `xs + projection(attention(norm(xs)))`, (b, n, d) -> (b, n, d).
    fn forward_normed(&self, norm: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let qkv =
            self.qkv
                .forward_normed(norm, xs)?
                .reshape((b, n, 3, self.num_heads, self.head_dim))?;
        let merged = attention(&qkv, AttentionMask::None, self.qkv.kernels())?;
        drop(qkv);
        self.projection.forward(&merged, Epilogue::Residual(xs))
    }
}

/// transformers' `BlipEncoderLayer` (pre-norm).
#[derive(Debug, Clone)]
struct BlipEncoderLayer {
    self_attn: BlipAttention,
    layer_norm1: LayerNorm,
    mlp: FusedMlp,
    layer_norm2: LayerNorm,
}

impl BlipEncoderLayer {
    fn new(vb: ModelVars, cfg: &BlipVisionConfig, act: Activation) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: BlipAttention::new(vb.pp("self_attn"), d, cfg.num_attention_heads)?,
            layer_norm1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
            mlp: FusedMlp::load(vb.pp("mlp"), d, cfg.intermediate_size, act)?,
            layer_norm2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
        })
    }

    fn forward(&self, xs: Tensor) -> Result<Tensor> {
        let hidden = self.self_attn.forward_normed(&self.layer_norm1, &xs)?;
        drop(xs);
        self.mlp
            .forward(self.layer_norm2.forward(&hidden)?, &hidden)
    }
}

/// transformers' `BlipVisionModel` (the `vision_model` of both heads).
#[derive(Debug, Clone)]
pub struct BlipVisionModel {
    /// (1, 1, d)
    class_embedding: Tensor,
    patch_embedding: PatchEmbedding,
    /// (1, 1 + side * side, d)
    position_embedding: Tensor,
    layers: Vec<BlipEncoderLayer>,
    post_layernorm: LayerNorm,
    image_size: usize,
    hidden_size: usize,
}

impl BlipVisionModel {
    pub fn new(vb: ModelVars, cfg: &BlipVisionConfig, act: Activation) -> Result<Self> {
        let d = cfg.hidden_size;
        let side = cfg.image_size / cfg.patch_size;
        let emb = vb.pp("embeddings");
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BlipEncoderLayer::new(layers_vb.pp(i), cfg, act))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            class_embedding: emb.get((1, 1, d), "class_embedding")?,
            patch_embedding: PatchEmbedding::new(
                emb.pp("patch_embedding"),
                3,
                d,
                cfg.patch_size,
                true,
            )?,
            position_embedding: emb.get((1, side * side + 1, d), "position_embedding")?,
            layers,
            post_layernorm: layer_norm(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            image_size: cfg.image_size,
            hidden_size: d,
        })
    }

    /// The input side the position table was trained for (the processor resizes to it;
    /// transformers' `interpolate_pos_encoding` is off in `generate`).
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// `last_hidden_state` after `post_layernorm` (the `image_embeds` the text side attends
    /// to): (b, 3, S, S) -> (b, 1 + patches, d).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = pixel_values.dims4()?;
        if (h, w) != (self.image_size, self.image_size) {
            candle_core::bail!(
                "BLIP's vision tower takes {0}x{0} pixels, got {h}x{w}",
                self.image_size
            );
        }
        let pixel_values = pixel_values.to_dtype(self.class_embedding.dtype())?;
        let patches = self.patch_embedding.forward(&pixel_values)?;
        let d = self.hidden_size;
        let class = self.class_embedding.broadcast_as((b, 1, d))?;
        let mut xs =
            Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        for layer in &self.layers {
            xs = layer.forward(xs)?;
        }
        self.post_layernorm.forward(&xs)
    }
}
