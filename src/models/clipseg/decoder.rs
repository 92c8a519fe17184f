//! CLIPSeg's decoder (`CLIPSegDecoder`, `CLIPSegDecoderLayer` in transformers v5.17.0
//! `modeling_clipseg.py`): per extracted activation (last first) a linear `reduce`, added to the
//! running state; FiLM with the prompt embedding at `conditional_layer`; a post-norm
//! transformer layer; then the patch tokens are upsampled to pixels by transposed convolutions.
//!
//! [`ClipSegDecoder::encode_image`] runs everything that does not depend on the prompt once
//! per image (the layers before `conditional_layer`, and every `reduce`);
//! [`ClipSegDecoder::decode`] runs the rest for a batch of prompts. Row for row these are the
//! operations transformers runs on the image repeated per prompt.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear};

use crate::models::ModelVars;

use super::ClipSegConfig;
use crate::models::clip::encoder::{AttentionMask, ClipAttention};
use crate::models::kernels::{
    layer_norm, Activation, Epilogue, FusedLinear, FusedMlp, LayerNorm, PatchExpansion,
    WindowConv2d,
};

/// The complex head splits the patch-size upsampling into two transposed convolutions of
/// kernel and stride `patch_size / 4` (`CLIPSegDecoder.__init__`).
pub const COMPLEX_UPSAMPLE_SPLIT: usize = 4;
/// The complex head's first convolution: 3x3, padding 1.
const COMPLEX_CONV_KERNEL: usize = 3;
const COMPLEX_CONV_PADDING: usize = 1;

/// transformers' `CLIPSegDecoderLayer`: the encoder layer with the norms after attention / MLP.
/// Its `CLIPSegAttention` is CLIP's, unmasked ([`ClipAttention`]).
#[derive(Debug, Clone)]
pub struct ClipSegDecoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    /// transformers' `CLIPSegMLP` with the decoder's ReLU
    mlp: FusedMlp,
    layer_norm2: LayerNorm,
}

impl ClipSegDecoderLayer {
    pub fn new(vb: ModelVars, cfg: &ClipSegConfig) -> Result<Self> {
        let d = cfg.reduce_dim;
        let eps = cfg.vision_config.layer_norm_eps;
        Ok(Self {
            self_attn: ClipAttention::with_dims(
                vb.pp("self_attn"),
                d,
                cfg.decoder_num_attention_heads,
            )?,
            layer_norm1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
            mlp: FusedMlp::load(
                vb.pp("mlp"),
                d,
                cfg.decoder_intermediate_size,
                Activation::Relu,
            )?,
            layer_norm2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
        })
    }
}

impl Module for ClipSegDecoderLayer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // residual + self_attn(xs)
        let xs = self
            .self_attn
            .forward(xs.clone(), AttentionMask::None, xs)?;
        let xs = self.layer_norm1.forward(&xs)?;
        let xs = self.mlp.forward(xs.clone(), &xs)?;
        self.layer_norm2.forward(&xs)
    }
}

/// The decoder's `transposed_convolution`: one transposed convolution of kernel and stride
/// `patch_size`, or (`use_complex_transposed_convolution`) conv3x3, ReLU, two transposed
/// convolutions of kernel and stride `patch_size / 4` with a ReLU between.
#[derive(Debug, Clone)]
pub enum TransposedConvolution {
    Simple(PatchExpansion),
    Complex {
        /// with the ReLU that follows it
        conv: WindowConv2d,
        /// with the ReLU that follows it
        up1: PatchExpansion,
        up2: PatchExpansion,
    },
}

impl TransposedConvolution {
    pub fn new(vb: ModelVars, cfg: &ClipSegConfig) -> Result<Self> {
        let patch = cfg.vision_config.patch_size;
        let d = cfg.reduce_dim;
        if cfg.use_complex_transposed_convolution {
            let k = patch / COMPLEX_UPSAMPLE_SPLIT;
            Ok(Self::Complex {
                conv: WindowConv2d::new(
                    vb.pp("0"),
                    d,
                    d,
                    COMPLEX_CONV_KERNEL,
                    COMPLEX_CONV_PADDING,
                    Some(Activation::Relu),
                )?,
                up1: PatchExpansion::new(vb.pp("2"), d, d / 2, k, Some(Activation::Relu))?,
                up2: PatchExpansion::new(vb.pp("4"), d / 2, 1, k, None)?,
            })
        } else {
            Ok(Self::Simple(PatchExpansion::new(vb, d, 1, patch, None)?))
        }
    }
}

impl Module for TransposedConvolution {
    /// (b, reduce_dim, gh, gw) -> (b, 1, H, W)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Simple(up) => up.forward(xs),
            Self::Complex { conv, up1, up2 } => up2.forward(&up1.forward(&conv.forward(xs)?)?),
        }
    }
}

/// The prompt-independent decoder state of a batch of images (usually one).
#[derive(Debug, Clone)]
pub struct DecoderImageState {
    /// The running state entering step `conditional_layer` (after its layer for every earlier
    /// step), `None` when `conditional_layer` is 0. (b, tokens, reduce_dim)
    before_film: Option<Tensor>,
    /// `reduce(activation)` of step `conditional_layer` and every later step.
    /// Each (b, tokens, reduce_dim).
    reduced: Vec<Tensor>,
    /// The finished state when `conditional_layer` is past the last step (no FiLM at all, as
    /// in transformers): then every prompt gets the same logits.
    unconditioned: Option<Tensor>,
    /// Patch grid (height, width).
    grid: (usize, usize),
}

impl DecoderImageState {
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// How many images the state holds.
    pub fn batch_size(&self) -> usize {
        self.reduced
            .first()
            .or(self.unconditioned.as_ref())
            .and_then(|t| t.dim(0).ok())
            .unwrap_or(1)
    }

    /// Image `i` of the batch alone (each tensor narrowed to it, no copy): to decode one
    /// image's own prompts against it.
    pub fn image(&self, i: usize) -> Result<Self> {
        let b = self.batch_size();
        if i >= b {
            candle_core::bail!("image {i} of a decoder state of {b} images");
        }
        let one = |t: &Tensor| t.narrow(0, i, 1);
        Ok(Self {
            before_film: self.before_film.as_ref().map(one).transpose()?,
            reduced: self.reduced.iter().map(one).collect::<Result<_>>()?,
            unconditioned: self.unconditioned.as_ref().map(one).transpose()?,
            grid: self.grid,
        })
    }
}

/// transformers' `CLIPSegDecoder`.
#[derive(Debug, Clone)]
pub struct ClipSegDecoder {
    film_mul: Linear,
    film_add: Linear,
    transposed_convolution: TransposedConvolution,
    reduces: Vec<FusedLinear>,
    layers: Vec<ClipSegDecoderLayer>,
    conditional_layer: usize,
}

impl ClipSegDecoder {
    pub fn new(vb: ModelVars, cfg: &ClipSegConfig) -> Result<Self> {
        let depth = cfg.extract_layers.len();
        let reduces = (0..depth)
            .map(|i| {
                FusedLinear::load(
                    cfg.vision_config.hidden_size,
                    cfg.reduce_dim,
                    vb.pp("reduces").pp(i.to_string()),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..depth)
            .map(|i| ClipSegDecoderLayer::new(vb.pp("layers").pp(i.to_string()), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            film_mul: linear(
                cfg.projection_dim,
                cfg.reduce_dim,
                vb.pp("film_mul").var_builder(),
            )?,
            film_add: linear(
                cfg.projection_dim,
                cfg.reduce_dim,
                vb.pp("film_add").var_builder(),
            )?,
            transposed_convolution: TransposedConvolution::new(
                vb.pp("transposed_convolution"),
                cfg,
            )?,
            reduces,
            layers,
            conditional_layer: cfg.conditional_layer,
        })
    }

    /// The prompt-independent steps for `activations` in `extract_layers` order (the decoder
    /// walks them last first), each (b, 1 + gh * gw, vision_hidden) with a square grid.
    pub fn encode_image(&self, activations: &[Tensor]) -> Result<DecoderImageState> {
        if activations.len() != self.reduces.len() {
            candle_core::bail!(
                "decoder expects {} activations, got {}",
                self.reduces.len(),
                activations.len()
            );
        }
        let tokens = activations[0].dim(1)?;
        let patches = tokens.saturating_sub(1);
        // `CLIPSegDecoder.forward`: size = int(sqrt(seq_len)), a square grid.
        let side = (patches as f64).sqrt().round() as usize;
        if side * side != patches || side == 0 {
            candle_core::bail!("decoder needs a square patch grid, got {patches} patches");
        }
        let mut state: Option<Tensor> = None;
        let mut reduced = Vec::new();
        for (i, activation) in activations.iter().rev().enumerate() {
            let r = self.reduces[i].forward(activation, Epilogue::Bias)?;
            if i < self.conditional_layer {
                let x = match state.take() {
                    Some(s) => (r + s)?,
                    None => r,
                };
                state = Some(self.layers[i].forward(&x)?);
            } else {
                reduced.push(r);
            }
        }
        let unconditioned = if reduced.is_empty() {
            state.clone()
        } else {
            None
        };
        Ok(DecoderImageState {
            before_film: state,
            reduced,
            unconditioned,
            grid: (side, side),
        })
    }

    /// The conditional steps for `conditional_embeddings` (prompts, projection_dim) against
    /// `image` (one image, or one per prompt). Returns the logits (prompts, H, W).
    pub fn decode(
        &self,
        image: &DecoderImageState,
        conditional_embeddings: &Tensor,
    ) -> Result<Tensor> {
        let prompts = conditional_embeddings.dim(0)?;
        let output = match &image.unconditioned {
            Some(done) => {
                let (b, t, d) = done.dims3()?;
                done.broadcast_as((prompts.max(b), t, d))?.contiguous()?
            }
            None => {
                let c = self.conditional_layer;
                let mut x = match &image.before_film {
                    Some(s) => (&image.reduced[0] + s)?,
                    None => image.reduced[0].clone(),
                };
                // FiLM: film_mul(cond) * x + film_add(cond), per prompt over every token;
                // (b_img, t, d) broadcast against (prompts, 1, d)
                let cond = conditional_embeddings.to_dtype(x.dtype())?;
                let mul = self.film_mul.forward(&cond)?.unsqueeze(1)?;
                let add = self.film_add.forward(&cond)?.unsqueeze(1)?;
                x = x.broadcast_mul(&mul)?.broadcast_add(&add)?;
                x = self.layers[c].forward(&x)?;
                for (step, r) in image.reduced.iter().enumerate().skip(1) {
                    x = r.broadcast_add(&x)?;
                    x = self.layers[c + step].forward(&x)?;
                }
                x
            }
        };
        let (b, tokens, d) = output.dims3()?;
        let (gh, gw) = image.grid;
        // Drop the class token: (b, d, gh, gw)
        let grid = output
            .narrow(1, 1, tokens - 1)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, d, gh, gw))?;
        self.transposed_convolution.forward(&grid)?.squeeze(1)
    }

    /// transformers' `forward(hidden_states, conditional_embeddings)` in one call.
    pub fn forward(
        &self,
        activations: &[Tensor],
        conditional_embeddings: &Tensor,
    ) -> Result<Tensor> {
        let state = self.encode_image(activations)?;
        self.decode(&state, conditional_embeddings)
    }
}
