//! ViLT visual question answering (`ViltForQuestionAnswering`).
//!
//! - Paper: [ViLT: Vision-and-Language Transformer Without Convolution or Region
//!   Supervision](https://arxiv.org/abs/2102.03334)
//! - Model card: [dandelin/vilt-b32-finetuned-vqa](https://huggingface.co/dandelin/vilt-b32-finetuned-vqa)
//! - Mirrors transformers v5.17.0 `models/vilt/modeling_vilt.py`
//!   (<https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/vilt/modeling_vilt.py>).
//!
//! One pre-norm transformer over the concatenation of BERT-style text embeddings and ViT-style
//! patch embeddings, each tagged by a modality embedding; the pooled first token feeds the
//! answer classifier. candle-transformers' `vit::Encoder` has ViLT's key names but no attention
//! mask, so the layers are written here.
//!
//! `ViltEmbeddings.visual_embed` draws the order of the patch tokens with `torch.multinomial`
//! even when every patch is kept; the encoder is permutation-equivariant and only the first
//! (text) token is pooled, so raster order gives the same answer up to float rounding. When a
//! positive `max_image_length` would make transformers keep a random subset of patches, the
//! model refuses the input instead of answering differently.
//!
//! The pooler reads the first token alone, so the last layer computes that token's output
//! only (its attention still reads every token's key and value): about three quarters of one
//! layer's work that transformers spends on outputs nothing reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, IndexOp, Module, Result, Tensor};
use candle_nn::{embedding, Embedding};

use crate::models::ModelVars;
use serde::Deserialize;

use super::interpolate;
use super::kernels::{
    attention_of_first, layer_norm, Activation, AttentionMask, Epilogue, FusedLinear, LayerNorm,
    PatchEmbedding, TokenEmbedding,
};

/// `nn.LayerNorm`'s default epsilon, used by the classifier (`nn.LayerNorm(hidden_size * 2)`).
const CLASSIFIER_LAYER_NORM_EPS: f64 = 1e-5;
/// Modality ids of `ViltEmbeddings.token_type_embeddings`: text 0, image 1
/// (`image_token_type_idx` defaults to 1).
const TEXT_MODALITY: u32 = 0;
const IMAGE_MODALITY: u32 = 1;

fn default_vocab_size() -> usize {
    30522
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_modality_type_vocab_size() -> usize {
    2
}
fn default_max_position_embeddings() -> usize {
    40
}
fn default_hidden_size() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_intermediate() -> usize {
    3072
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_image_size() -> usize {
    384
}
fn default_patch_size() -> usize {
    32
}
fn default_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_max_image_length() -> i64 {
    -1
}

/// transformers' `ViltConfig` (plus `id2label` of `PreTrainedConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct ViltConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_modality_type_vocab_size")]
    pub modality_type_vocab_size: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    #[serde(default = "default_max_image_length")]
    pub max_image_length: i64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Answer vocabulary; keys are the class indices as strings.
    #[serde(default)]
    pub id2label: HashMap<String, String>,
}

impl ViltConfig {
    /// The answers by class index (`LABEL_i` where `id2label` has a gap, as transformers).
    pub fn labels(&self) -> Vec<String> {
        (0..self.num_labels())
            .map(|i| {
                self.id2label
                    .get(&i.to_string())
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// transformers derives `num_labels` from `id2label` (2 when absent).
    pub fn num_labels(&self) -> usize {
        if self.id2label.is_empty() {
            2
        } else {
            self.id2label.len()
        }
    }

    fn activation(&self, model: &str) -> crate::Result<Activation> {
        Activation::from_hf(&self.hidden_act, model, "config")
    }

    fn check(&self, model: &str) -> crate::Result<()> {
        let unsupported = |reason: String| crate::Error::Unsupported {
            model: model.to_string(),
            reason,
        };
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(unsupported(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(unsupported(format!(
                "image_size {} is smaller than patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if self.modality_type_vocab_size <= IMAGE_MODALITY as usize {
            return Err(unsupported(format!(
                "modality_type_vocab_size {} has no image modality",
                self.modality_type_vocab_size
            )));
        }
        Ok(())
    }
}

/// transformers' `TextEmbeddings` (BERT's): word + token type + position, then LayerNorm.
#[derive(Debug, Clone)]
#[allow(non_snake_case)] // `LayerNorm` is the checkpoint's spelling
pub struct TextEmbeddings {
    /// bf16 on the bf16-weights path
    word_embeddings: TokenEmbedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    LayerNorm: LayerNorm,
    max_position_embeddings: usize,
}

impl TextEmbeddings {
    pub fn new(vb: ModelVars, cfg: &ViltConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            word_embeddings: TokenEmbedding::new(
                &vb.pp("word_embeddings"),
                cfg.vocab_size,
                d,
                "weight",
            )?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                d,
                vb.pp("position_embeddings").var_builder(),
            )?,
            token_type_embeddings: embedding(
                cfg.type_vocab_size,
                d,
                vb.pp("token_type_embeddings").var_builder(),
            )?,
            LayerNorm: layer_norm(d, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            max_position_embeddings: cfg.max_position_embeddings,
        })
    }

    /// `input_ids`, `token_type_ids`: (b, seq) -> (b, seq, d)
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let seq = input_ids.dim(1)?;
        if seq > self.max_position_embeddings {
            candle_core::bail!(
                "{seq} text tokens, the model has {} positions",
                self.max_position_embeddings
            );
        }
        let position_ids = Tensor::arange(0u32, seq as u32, input_ids.device())?;
        let embeddings = (self.word_embeddings.forward(input_ids)?
            + self.token_type_embeddings.forward(token_type_ids)?)?
        .broadcast_add(&self.position_embeddings.forward(&position_ids)?)?;
        self.LayerNorm.forward(&embeddings)
    }
}

/// transformers' `ViltEmbeddings`.
#[derive(Debug, Clone)]
pub struct ViltEmbeddings {
    text_embeddings: TextEmbeddings,
    /// (1, 1, d)
    cls_token: Tensor,
    /// `patch_embeddings.projection`: a conv of kernel and stride `patch_size`
    /// (transformers' `ViltPatchEmbeddings`).
    patch_embeddings: PatchEmbedding,
    /// (1, 1 + side * side, d)
    position_embeddings: Tensor,
    /// The patch rows of the position table as `d` planes of `side x side`, f32, on the host.
    position_planes: Arc<Vec<f32>>,
    table_side: usize,
    token_type_embeddings: Embedding,
    hidden_size: usize,
    max_image_length: i64,
    /// Interpolated patch position tables by (valid rows, valid cols), each (h * w, d). The
    /// processor's size rule bounds the grids (one edge fixed, the other at most 1333/800 of
    /// it), so the cache holds a handful of entries.
    cache: Arc<Mutex<HashMap<(usize, usize), Tensor>>>,
}

impl ViltEmbeddings {
    pub fn new(vb: ModelVars, cfg: &ViltConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let side = cfg.image_size / cfg.patch_size;
        let position_embeddings = vb.get((1, side * side + 1, d), "position_embeddings")?;
        let patch_rows = position_embeddings
            .i((0, 1.., ..))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self {
            text_embeddings: TextEmbeddings::new(vb.pp("text_embeddings"), cfg)?,
            cls_token: vb.get((1, 1, d), "cls_token")?,
            patch_embeddings: PatchEmbedding::new(
                vb.pp("patch_embeddings").pp("projection"),
                cfg.num_channels,
                cfg.hidden_size,
                cfg.patch_size,
                true,
            )?,
            position_embeddings,
            position_planes: Arc::new(interpolate::tokens_to_planes(&patch_rows, d)),
            table_side: side,
            token_type_embeddings: embedding(
                cfg.modality_type_vocab_size,
                d,
                vb.pp("token_type_embeddings").var_builder(),
            )?,
            hidden_size: d,
            max_image_length: cfg.max_image_length,
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The position table interpolated bilinearly (align_corners=True) to `h x w` patches.
    /// (h * w, d)
    fn patch_positions(&self, h: usize, w: usize) -> Result<Tensor> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(&(h, w)) {
            return Ok(t.clone());
        }
        let d = self.hidden_size;
        let planes = interpolate::bilinear(
            &self.position_planes,
            d,
            (self.table_side, self.table_side),
            (h, w),
            true,
        );
        let tokens = interpolate::planes_to_tokens(&planes, d);
        let t = Tensor::from_vec(tokens, (h * w, d), self.position_embeddings.device())?
            .to_dtype(self.position_embeddings.dtype())?;
        cache.insert((h, w), t.clone());
        Ok(t)
    }

    /// `visual_embed` for a batch of images. `pixel_mask` (b, H, W) marks real pixels (1) and
    /// padding (0); `None` means all real. Returns the image tokens (b, 1 + kept, d) and their
    /// mask (b, 1 + kept) in u32.
    pub fn visual_embed(
        &self,
        pixel_values: &Tensor,
        pixel_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let pixel_values = pixel_values.to_dtype(self.cls_token.dtype())?;
        let (b, _, h, w) = pixel_values.dims4()?;
        // (b, gh * gw, d); an image without a whole patch is refused here
        let x = self.patch_embeddings.forward(&pixel_values)?;
        let (gh, gw) = self.patch_embeddings.grid(h, w);
        let d = x.dim(2)?;
        let device = x.device().clone();
        // Patch-level mask, as `F.interpolate(pixel_mask, size=(gh, gw))` (nearest).
        let masks: Vec<Vec<bool>> = match pixel_mask {
            None => vec![vec![true; gh * gw]; b],
            Some(m) => {
                let (mb, mh, mw) = m.dims3()?;
                if mb != b {
                    candle_core::bail!("pixel_mask has batch {mb}, pixel_values {b}");
                }
                let m = m.to_dtype(DType::F32)?.to_vec3::<f32>()?;
                m.iter()
                    .map(|plane| {
                        let flat: Vec<f32> = plane.concat();
                        interpolate::nearest(&flat, 1, (mh, mw), (gh, gw))
                            .into_iter()
                            .map(|v| v as i64 != 0)
                            .collect()
                    })
                    .collect()
            }
        };
        let class_pos = self.position_embeddings.i((0, 0..1, ..))?;
        let mut rows = Vec::with_capacity(b);
        let mut kept_counts = Vec::with_capacity(b);
        for (i, mask) in masks.iter().enumerate() {
            // Valid extent: the number of real rows in the first column, real columns in the
            // first row (`x_h`, `x_w`).
            let x_h = (0..gh).filter(|&r| mask[r * gw]).count();
            let x_w = (0..gw).filter(|&c| mask[c]).count();
            let valid: Vec<u32> = (0..gh * gw)
                .filter(|&p| mask[p])
                .map(|p| p as u32)
                .collect();
            if valid.is_empty() || x_h == 0 || x_w == 0 {
                candle_core::bail!("pixel_mask of image {i} marks no patch as real");
            }
            if valid.len() != x_h * x_w {
                // transformers pads such rows with randomly drawn padding patches.
                candle_core::bail!(
                    "pixel_mask of image {i} is not a top-left rectangle; transformers would pad \
                     it with randomly sampled patches"
                );
            }
            if self.max_image_length >= 0 && valid.len() > self.max_image_length as usize {
                candle_core::bail!(
                    "{} patches exceed max_image_length {}: transformers would keep a random \
                     subset",
                    valid.len(),
                    self.max_image_length
                );
            }
            // Positions: the table interpolated to the valid extent, zero-padded to the grid.
            let pos = self.patch_positions(x_h, x_w)?;
            let pos = if (x_h, x_w) == (gh, gw) {
                pos
            } else {
                pos.reshape((x_h, x_w, d))?
                    .pad_with_zeros(0, 0, gh - x_h)?
                    .pad_with_zeros(1, 0, gw - x_w)?
                    .reshape((gh * gw, d))?
            };
            let index = Tensor::from_vec(valid.clone(), valid.len(), &device)?;
            let tokens = x.i(i)?.index_select(&index, 0)?;
            let pos = pos.index_select(&index, 0)?;
            let tokens = Tensor::cat(&[&self.cls_token.i(0)?, &tokens], 0)?;
            let pos = Tensor::cat(&[&class_pos, &pos], 0)?;
            rows.push((tokens + pos)?);
            kept_counts.push(valid.len());
        }
        if kept_counts.iter().any(|&n| n != kept_counts[0]) {
            candle_core::bail!("images of one batch keep different numbers of patches");
        }
        let image_embeds = Tensor::stack(&rows, 0)?;
        let image_masks = Tensor::ones((b, 1 + kept_counts[0]), DType::U32, &device)?;
        Ok((image_embeds, image_masks))
    }

    /// `forward`: text and image tokens with their modality embeddings, concatenated, and the
    /// joint attention mask. Returns ((b, seq + 1 + kept, d), (b, seq + 1 + kept) u32).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        pixel_values: &Tensor,
        pixel_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let text_embeds = self.text_embeddings.forward(input_ids, token_type_ids)?;
        let (image_embeds, image_masks) = self.visual_embed(pixel_values, pixel_mask)?;
        let device = text_embeds.device();
        let text_type = self
            .token_type_embeddings
            .forward(&Tensor::new(&[TEXT_MODALITY], device)?)?;
        let image_type = self
            .token_type_embeddings
            .forward(&Tensor::new(&[IMAGE_MODALITY], device)?)?;
        let text_embeds = text_embeds.broadcast_add(&text_type)?;
        let image_embeds = image_embeds.broadcast_add(&image_type)?;
        let embeddings = Tensor::cat(&[&text_embeds, &image_embeds], 1)?;
        let masks = Tensor::cat(&[&attention_mask.to_dtype(DType::U32)?, &image_masks], 1)?;
        Ok((embeddings, masks))
    }
}

/// transformers' `ViltSelfAttention`, with `query`, `key` and `value` fused at load.
#[derive(Debug, Clone)]
pub struct ViltSelfAttention {
    /// `query` (scaled by `head_dim^-0.5`), `key`, `value` stacked: (3d, d).
    qkv: FusedLinear,
    num_heads: usize,
    head_dim: usize,
}

impl ViltSelfAttention {
    pub fn new(vb: ModelVars, cfg: &ViltConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let head_dim = d / cfg.num_attention_heads;
        Ok(Self {
            qkv: FusedLinear::load_qkv(vb, ["query", "key", "value"], d, head_dim, cfg.qkv_bias)?
                .with_bias_row()?,
            num_heads: cfg.num_attention_heads,
            head_dim,
        })
    }

    /// Attention over `norm(xs)`, `xs` (b, t, d); `mask` additive per key, (b, t) f32. Returns
    /// the first `queries` tokens' outputs, attending to all `t`: (b, queries, d). With every
    /// token a query, the q/k/v projection takes its bias in the product
    /// ([`FusedLinear::forward_normed`]).
    pub fn forward_normed(
        &self,
        norm: &LayerNorm,
        xs: &Tensor,
        mask: &Tensor,
        queries: usize,
    ) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let qkv = if queries < t {
            // the last layer: q for its first queries alone
            self.qkv
                .forward_first_columns(&norm.forward(xs)?, d, queries)?
        } else {
            self.qkv.forward_normed(norm, xs)?
        };
        let qkv = qkv.reshape((b, t, 3, self.num_heads, self.head_dim))?;
        let kernels = self.qkv.kernels();
        attention_of_first(&qkv, AttentionMask::KeyBias(mask), queries, kernels)
    }
}

/// transformers' `ViltAttention`: self-attention and its output projection (`output.dense`).
#[derive(Debug, Clone)]
pub struct ViltAttention {
    attention: ViltSelfAttention,
    output: FusedLinear,
}

impl ViltAttention {
    pub fn new(vb: ModelVars, cfg: &ViltConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            attention: ViltSelfAttention::new(vb.pp("attention"), cfg)?,
            output: FusedLinear::load(d, d, vb.pp("output").pp("dense"))?,
        })
    }

    /// `residual + output(attention(norm(xs)))`: the layer's first residual branch, for the
    /// first `residual.dim(1)` tokens.
    pub fn forward_normed(
        &self,
        norm: &LayerNorm,
        xs: &Tensor,
        mask: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let attended = self
            .attention
            .forward_normed(norm, xs, mask, residual.dim(1)?)?;
        self.output.forward(&attended, Epilogue::Residual(residual))
    }
}

/// transformers' `ViltLayer` (pre-norm): x + attn(LN(x)), then h + mlp(LN(h)).
#[derive(Debug, Clone)]
pub struct ViltLayer {
    attention: ViltAttention,
    /// `intermediate.dense`
    intermediate: FusedLinear,
    /// `output.dense`
    output: FusedLinear,
    layernorm_before: LayerNorm,
    layernorm_after: LayerNorm,
    activation: Activation,
}

impl ViltLayer {
    pub fn new(vb: ModelVars, cfg: &ViltConfig, activation: Activation) -> Result<Self> {
        let d = cfg.hidden_size;
        let inner = cfg.intermediate_size;
        Ok(Self {
            attention: ViltAttention::new(vb.pp("attention"), cfg)?,
            intermediate: FusedLinear::load(d, inner, vb.pp("intermediate").pp("dense"))?,
            output: FusedLinear::load(inner, d, vb.pp("output").pp("dense"))?,
            layernorm_before: layer_norm(d, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            layernorm_after: layer_norm(d, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            activation,
        })
    }

    /// (b, t, d) -> (b, t, d)
    pub fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.forward_first(xs, mask, xs.dim(1)?)
    }

    /// The outputs of the first `queries` tokens alone, which attend to all of `xs`:
    /// (b, t, d) -> (b, queries, d).
    pub fn forward_first(&self, xs: &Tensor, mask: &Tensor, queries: usize) -> Result<Tensor> {
        let residual = xs.narrow(1, 0, queries)?.contiguous()?;
        let hidden = self
            .attention
            .forward_normed(&self.layernorm_before, xs, mask, &residual)?;
        let mlp = self.intermediate.forward(
            &self.layernorm_after.forward(&hidden)?,
            Epilogue::Activation(self.activation),
        )?;
        self.output.forward(&mlp, Epilogue::Residual(&hidden))
    }
}

/// transformers' `ViltEncoder`.
#[derive(Debug, Clone)]
pub struct ViltEncoder {
    layer: Vec<ViltLayer>,
}

impl ViltEncoder {
    pub fn new(vb: ModelVars, cfg: &ViltConfig, activation: Activation) -> Result<Self> {
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| ViltLayer::new(vb.pp("layer").pp(i.to_string()), cfg, activation))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layer })
    }

    /// `last_hidden_state` of the first `queries` tokens: (b, t, d) -> (b, queries, d). The
    /// last layer computes those tokens alone (the others' outputs would feed nothing).
    pub fn forward(&self, xs: &Tensor, mask: &Tensor, queries: usize) -> Result<Tensor> {
        let Some((last, layers)) = self.layer.split_last() else {
            return xs.narrow(1, 0, queries);
        };
        let mut xs = xs.clone();
        for layer in layers {
            xs = layer.forward(&xs, mask)?;
        }
        last.forward_first(&xs, mask, queries)
    }
}

/// transformers' `ViltModel` with its pooler (`tanh(dense(first token))`).
#[derive(Debug, Clone)]
pub struct ViltModel {
    embeddings: ViltEmbeddings,
    encoder: ViltEncoder,
    layernorm: LayerNorm,
    pooler: FusedLinear,
}

impl ViltModel {
    pub fn new(vb: ModelVars, cfg: &ViltConfig, activation: Activation) -> Result<Self> {
        Ok(Self {
            embeddings: ViltEmbeddings::new(vb.pp("embeddings"), cfg)?,
            encoder: ViltEncoder::new(vb.pp("encoder"), cfg, activation)?,
            layernorm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            pooler: FusedLinear::load(
                cfg.hidden_size,
                cfg.hidden_size,
                vb.pp("pooler").pp("dense"),
            )?,
        })
    }

    /// Returns `pooler_output` (b, d).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        pixel_values: &Tensor,
        pixel_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (embeddings, masks) = self.embeddings.forward(
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            pixel_mask,
        )?;
        let mask = additive_mask(&masks)?;
        // the pooler reads the first token alone: (b, 1, d)
        let first_token =
            self.layernorm
                .forward(&self.encoder.forward(&embeddings, &mask, 1)?)?;
        self.pooler
            .forward(&first_token.i((.., 0, ..))?, Epilogue::Bias)?
            .tanh()
    }
}

/// `create_bidirectional_mask`: 0 where a key is attended, the most negative f32 where it is
/// padding. (b, t) u32 -> (b, t) f32
fn additive_mask(mask: &Tensor) -> Result<Tensor> {
    let keep = mask.to_dtype(DType::F32)?;
    // (1 - keep) * f32::MIN
    (keep.ones_like()? - keep)? * f64::from(f32::MIN)
}

/// The raw output of [`ViltForQuestionAnswering::forward`].
#[derive(Debug, Clone)]
pub struct ViltQuestionAnsweringOutput {
    /// (b, num_labels), before sigmoid, f32.
    pub logits: Tensor,
}

/// transformers' `ViltForQuestionAnswering`: Linear(d, 2d), LayerNorm, GELU, Linear(2d,
/// labels) on the pooled output.
#[derive(Debug, Clone)]
pub struct ViltForQuestionAnswering {
    vilt: ViltModel,
    classifier_0: FusedLinear,
    classifier_1: LayerNorm,
    classifier_3: FusedLinear,
    num_labels: usize,
}

impl ViltForQuestionAnswering {
    /// `model` names the checkpoint in configuration errors.
    pub fn new(vb: ModelVars, cfg: &ViltConfig, model: &str) -> crate::Result<Self> {
        cfg.check(model)?;
        let activation = cfg.activation(model)?;
        Ok(Self::build(vb, cfg, activation)?)
    }

    fn build(vb: ModelVars, cfg: &ViltConfig, activation: Activation) -> Result<Self> {
        let d = cfg.hidden_size;
        let num_labels = cfg.num_labels();
        let classifier = vb.pp("classifier");
        Ok(Self {
            vilt: ViltModel::new(vb.pp("vilt"), cfg, activation)?,
            classifier_0: FusedLinear::load(d, 2 * d, classifier.pp("0"))?,
            classifier_1: layer_norm(2 * d, CLASSIFIER_LAYER_NORM_EPS, classifier.pp("1"))?,
            classifier_3: FusedLinear::load(2 * d, num_labels, classifier.pp("3"))?,
            num_labels,
        })
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// transformers' `forward(input_ids, attention_mask, token_type_ids, pixel_values,
    /// pixel_mask)`; ids and masks (b, seq), pixel values (b, 3, H, W).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        pixel_values: &Tensor,
        pixel_mask: Option<&Tensor>,
    ) -> Result<ViltQuestionAnsweringOutput> {
        let pooled = self.vilt.forward(
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            pixel_mask,
        )?;
        let x = self.classifier_0.forward(&pooled, Epilogue::Bias)?;
        let x = self.classifier_1.forward(&x)?.gelu_erf()?;
        let logits = self
            .classifier_3
            .forward(&x, Epilogue::Bias)?
            .to_dtype(DType::F32)?;
        Ok(ViltQuestionAnsweringOutput { logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_id2label_with_gaps_named_like_transformers() {
        let cfg: ViltConfig =
            serde_json::from_str(r#"{"id2label": {"0": "yes", "2": "two", "1": "no"}}"#).unwrap();
        assert_eq!(cfg.labels(), ["yes", "no", "two"]);
        let cfg: ViltConfig =
            serde_json::from_str(r#"{"id2label": {"0": "yes", "2": "x"}}"#).unwrap();
        assert_eq!(cfg.labels(), ["yes", "LABEL_1"]);
        let cfg: ViltConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.num_labels(), 2);
        assert_eq!(cfg.max_image_length, -1);
        assert_eq!(cfg.layer_norm_eps, 1e-12);
    }

    #[test]
    fn additive_mask_blocks_padding_only() {
        let m = Tensor::new(&[[1u32, 1, 0]], &candle_core::Device::Cpu).unwrap();
        let a = additive_mask(&m)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a[..2], [0.0, 0.0]);
        assert_eq!(a[2], f32::MIN);
    }
}
