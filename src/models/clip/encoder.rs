//! transformers' `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer` and `CLIPEncoder`
//! (v5.17.0 `models/clip/modeling_clip.py`,
//! <https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/clip/modeling_clip.py>),
//! the pre-norm layer stack shared by the OWL-ViT and CLIPSeg towers.
//!
//! Same checkpoint keys (`layers.N.self_attn.{q,k,v,out}_proj`, `layer_norm1`, `mlp.{fc1,fc2}`,
//! `layer_norm2`), same computation, fewer tensors:
//! - q/k/v are one (3d, d) projection, concatenated at load, with q's rows pre-multiplied by
//!   `head_dim^-0.5` (transformers scales the scores `q k^T` by it; the product is the same);
//! - attention reads the heads from that projection's output in place
//!   ([`crate::models::kernels::attention`]: per head and block of queries on the CPU);
//! - bias + activation and bias + residual are fused into each projection
//!   ([`crate::models::kernels::FusedLinear`], [`crate::models::kernels::FusedMlp`]); the q/k/v
//!   projection takes its bias as one more row of its weights, against a column of ones that
//!   `layer_norm1` writes after its output;
//! - LayerNorm is [`crate::models::kernels::LayerNorm`] (one parallel pass) with the config's
//!   epsilon;
//! - each step frees its input as soon as it has read it (the layers take their inputs by
//!   value), so a layer's peak holds the fewest activations.

use candle_core::{Module, Result, Tensor};

pub use crate::models::kernels::AttentionMask;
use crate::models::kernels::{attention, layer_norm, Epilogue, FusedLinear, FusedMlp, LayerNorm};
use crate::models::ModelVars;

use super::ClipEncoderConfig;

/// transformers' `CLIPAttention`, with `q_proj`, `k_proj` and `v_proj` fused at load.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    /// `q_proj` (scaled by `head_dim^-0.5`), `k_proj`, `v_proj` stacked: (3d, d).
    qkv_proj: FusedLinear,
    out_proj: FusedLinear,
    num_heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    pub fn new(vb: ModelVars, cfg: &ClipEncoderConfig) -> Result<Self> {
        Self::with_dims(vb, cfg.hidden_size, cfg.num_attention_heads)
    }

    /// For attention outside a CLIP encoder config (CLIPSeg's decoder layers): `embed_dim`
    /// split into `num_heads` heads.
    pub fn with_dims(vb: ModelVars, embed_dim: usize, num_heads: usize) -> Result<Self> {
        if num_heads == 0 || !embed_dim.is_multiple_of(num_heads) {
            candle_core::bail!("embed_dim {embed_dim} is not divisible by {num_heads} heads");
        }
        let d = embed_dim;
        let head_dim = d / num_heads;
        Ok(Self {
            qkv_proj: FusedLinear::load_qkv(
                vb.clone(),
                ["q_proj", "k_proj", "v_proj"],
                d,
                head_dim,
                true,
            )?
            .with_bias_row()?,
            out_proj: FusedLinear::load(d, d, vb.pp("out_proj"))?,
            num_heads,
            head_dim,
        })
    }

    /// `residual + attention(xs)`: the layer's first residual branch. (b, n, d) -> (b, n, d)
    /// `xs` is taken so that it is freed once projected, before the attention allocates.
    pub fn forward(&self, xs: Tensor, mask: AttentionMask, residual: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(&xs, Epilogue::Bias)?;
        drop(xs);
        self.attend(qkv, mask, residual)
    }

    /// `xs + attention(norm(xs))`: the pre-norm layer's first residual branch, the q/k/v
    /// projection taking its bias in the product ([`FusedLinear::forward_normed`]).
    pub fn forward_normed(
        &self,
        norm: &LayerNorm,
        xs: &Tensor,
        mask: AttentionMask,
    ) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward_normed(norm, xs)?;
        self.attend(qkv, mask, xs)
    }

    /// `residual + out_proj(attention)` of the fused projection `qkv` (b, n, 3d).
    fn attend(&self, qkv: Tensor, mask: AttentionMask, residual: &Tensor) -> Result<Tensor> {
        let (b, n, _) = qkv.dims3()?;
        // (b, n, 3d) -> (b, n, 3, heads, head_dim)
        let qkv = qkv.reshape((b, n, 3, self.num_heads, self.head_dim))?;
        let merged = attention(&qkv, mask, self.qkv_proj.kernels())?;
        drop(qkv);
        self.out_proj.forward(&merged, Epilogue::Residual(residual))
    }
}

/// transformers' `CLIPMLP`: `fc1`, `hidden_act`, `fc2`, with the layer's residual added.
pub type ClipMlp = FusedMlp;

/// transformers' `CLIPEncoderLayer` (pre-norm).
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    pub fn new(vb: ModelVars, cfg: &ClipEncoderConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
            mlp: ClipMlp::load(vb.pp("mlp"), d, cfg.intermediate_size, cfg.hidden_act)?,
            layer_norm2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
        })
    }

    /// (b, n, d) -> (b, n, d). `xs` is taken so that it is freed once the attention has added
    /// it back as the residual: the MLP, the layer's largest step, runs beside one fewer
    /// activation.
    pub fn forward(&self, xs: Tensor, mask: AttentionMask) -> Result<Tensor> {
        let hidden = self
            .self_attn
            .forward_normed(&self.layer_norm1, &xs, mask)?;
        drop(xs);
        self.mlp
            .forward(self.layer_norm2.forward(&hidden)?, &hidden)
    }
}

/// transformers' `CLIPEncoder`: `layers.0` .. `layers.{num_hidden_layers - 1}`.
#[derive(Debug, Clone)]
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    pub fn new(vb: ModelVars, cfg: &ClipEncoderConfig) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(vb.pp(i.to_string()), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `last_hidden_state`. (b, n, d) -> (b, n, d); `xs` is freed inside the first layer.
    pub fn forward(&self, mut xs: Tensor, mask: AttentionMask) -> Result<Tensor> {
        for layer in &self.layers {
            xs = layer.forward(xs, mask)?;
        }
        Ok(xs)
    }

    /// The outputs of the layers listed in `layers`, in that order (transformers'
    /// `hidden_states[l + 1]`); runs the layers up to the last one listed and keeps no other
    /// output. Each (b, n, d).
    pub fn hidden_states(
        &self,
        mut xs: Tensor,
        mask: AttentionMask,
        layers: &[usize],
    ) -> Result<Vec<Tensor>> {
        let Some(&last) = layers.iter().max() else {
            return Ok(Vec::new());
        };
        if last >= self.layers.len() {
            candle_core::bail!(
                "no encoder layer {last}: the encoder has {} layers",
                self.layers.len()
            );
        }
        let mut kept: Vec<Option<Tensor>> = vec![None; last + 1];
        for (i, layer) in self.layers[..=last].iter().enumerate() {
            xs = layer.forward(xs, mask)?;
            if layers.contains(&i) {
                kept[i] = Some(xs.clone());
            }
        }
        layers
            .iter()
            .map(|&l| {
                kept[l]
                    .clone()
                    .ok_or_else(|| candle_core::Error::Msg(format!("no output for layer {l}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kernels::{Activation, KernelPath};
    use candle_core::{DType, Device, D};
    use std::collections::HashMap;

    /// candle-transformers' unfused formulation of the same layer, from the same weights.
    fn reference_layer(
        w: &HashMap<String, Tensor>,
        xs: &Tensor,
        heads: usize,
        act: Activation,
        causal: bool,
    ) -> Tensor {
        let lin = |name: &str, x: &Tensor| {
            candle_nn::Linear::new(
                w[&format!("{name}.weight")].clone(),
                Some(w[&format!("{name}.bias")].clone()),
            )
            .forward(x)
            .unwrap()
        };
        let ln = |name: &str, x: &Tensor| {
            candle_nn::LayerNorm::new(
                w[&format!("{name}.weight")].clone(),
                w[&format!("{name}.bias")].clone(),
                1e-5,
            )
            .forward(x)
            .unwrap()
        };
        let (b, n, d) = xs.dims3().unwrap();
        let hd = d / heads;
        let split = |x: Tensor| {
            x.reshape((b, n, heads, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let h = ln("layer_norm1", xs);
        let q = split(lin("self_attn.q_proj", &h));
        let k = split(lin("self_attn.k_proj", &h));
        let v = split(lin("self_attn.v_proj", &h));
        let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * (hd as f64).powf(-0.5)).unwrap();
        if causal {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..n).map(move |j| if j > i { f32::MIN } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (n, n), &Device::Cpu).unwrap();
            scores = scores.broadcast_add(&mask).unwrap();
        }
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let attn = probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, n, d))
            .unwrap();
        let hidden = (lin("self_attn.out_proj", &attn) + xs).unwrap();
        let m = ln("layer_norm2", &hidden);
        let m = act.forward(&lin("mlp.fc1", &m)).unwrap();
        (lin("mlp.fc2", &m) + &hidden).unwrap()
    }

    #[test]
    fn fused_layer_matches_the_unfused_formulation() {
        use crate::models::kernels::tests::randn;
        let (d, inner, heads) = (16, 24, 4);
        let dev = Device::Cpu;
        let mut w = HashMap::new();
        for (name, shape) in [
            ("self_attn.q_proj", (d, d)),
            ("self_attn.k_proj", (d, d)),
            ("self_attn.v_proj", (d, d)),
            ("self_attn.out_proj", (d, d)),
            ("mlp.fc1", (inner, d)),
            ("mlp.fc2", (d, inner)),
        ] {
            let weight = (randn(&[shape.0, shape.1]) * 0.3).unwrap();
            let bias = randn(&[shape.0]);
            w.insert(format!("{name}.weight"), weight);
            w.insert(format!("{name}.bias"), bias);
        }
        for name in ["layer_norm1", "layer_norm2"] {
            let weight = (randn(&[d]) + 1.0).unwrap();
            w.insert(format!("{name}.weight"), weight);
            w.insert(format!("{name}.bias"), randn(&[d]));
        }
        let vb = candle_nn::VarBuilder::from_tensors(w.clone(), DType::F32, &dev);
        // 600 tokens: ten blocks of queries
        for (act, (b, n)) in [
            (Activation::QuickGelu, (3, 7)),
            (Activation::Gelu, (3, 7)),
            (Activation::QuickGelu, (2, 600)),
        ] {
            let xs = randn(&[b, n, d]);
            let cfg = ClipEncoderConfig {
                hidden_size: d,
                intermediate_size: inner,
                num_hidden_layers: 1,
                num_attention_heads: heads,
                hidden_act: act,
                layer_norm_eps: 1e-5,
            };
            for kernels in [KernelPath::Native, KernelPath::Generic] {
                let layer =
                    ClipEncoderLayer::new(ModelVars::new(vb.clone(), kernels), &cfg).unwrap();
                for (mask, causal) in [(AttentionMask::None, false), (AttentionMask::Causal, true)]
                {
                    let ours = layer.forward(xs.clone(), mask).unwrap();
                    let reference = reference_layer(&w, &xs, heads, act, causal);
                    let diff = crate::models::kernels::tests::max_diff(&ours, &reference);
                    assert!(diff < 1e-4, "{act:?} {kernels:?} {mask:?}: {diff}");
                }
            }
        }
    }
}
