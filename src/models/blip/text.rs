//! BLIP's BERT-style text side (transformers' `modeling_blip_text.py`): `BlipTextModel` (the
//! VQA question encoder, bidirectional) and `BlipTextLMHeadModel` (the caption / answer
//! decoder, causal, with a key/value cache). Every layer is post-norm BERT with a
//! cross-attention block between self-attention and the feed-forward block.
//!
//! The encoder states a text model attends to are those of one image (or one question): a
//! batch of one, shared by every row of the text batch (the beams). Their keys and values are
//! computed once per image ([`BlipTextModel::cross_kv`]) and the rows' queries are folded into
//! one product per head against them, so the beams never copy the image's keys.

use candle_core::{DType, IndexOp, Module, Result, Tensor};
use candle_nn::{embedding, ops::softmax_last_dim, Embedding};

use super::BlipTextConfig;
use crate::models::kernels::{layer_norm, Activation, Epilogue, FusedLinear, LayerNorm};
use crate::models::ModelVars;

/// (b, s, heads * hd) -> (b, heads, s, hd), contiguous.
fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, d) = xs.dims3()?;
    xs.reshape((b, s, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// One layer's cached self-attention keys and values, each (rows, heads, t, hd).
pub type KeyValues = (Tensor, Tensor);

/// transformers' `BlipTextEmbeddings`: word + absolute position (from the cache's length),
/// then LayerNorm (BLIP's text embeddings have no token types).
#[derive(Debug, Clone)]
struct BlipTextEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
    max_positions: usize,
}

impl BlipTextEmbeddings {
    fn new(vb: ModelVars, cfg: &BlipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, d, vb.pp("word_embeddings").var_builder())?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                d,
                vb.pp("position_embeddings").var_builder(),
            )?,
            layer_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// (b, s) ids at positions `past..past + s` -> (b, s, d)
    fn forward(&self, input_ids: &Tensor, past: usize) -> Result<Tensor> {
        let s = input_ids.dim(1)?;
        if past + s > self.max_positions {
            candle_core::bail!(
                "{} text positions, the model has {}",
                past + s,
                self.max_positions
            );
        }
        let positions = Tensor::arange(past as u32, (past + s) as u32, input_ids.device())?;
        let xs = self
            .word_embeddings
            .forward(input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        self.layer_norm.forward(&xs)
    }
}

/// `BlipTextSelfAttention` (not cross) + `BlipTextSelfOutput`: q/k/v fused, q pre-scaled.
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: FusedLinear,
    dense: FusedLinear,
    norm: LayerNorm,
    heads: usize,
}

impl SelfAttention {
    fn new(vb: ModelVars, cfg: &BlipTextConfig) -> Result<Self> {
        let (d, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        Ok(Self {
            qkv: FusedLinear::load_qkv(
                vb.pp("self"),
                ["query", "key", "value"],
                d,
                d / heads,
                true,
            )?,
            dense: FusedLinear::load(d, d, vb.pp("output").pp("dense"))?,
            norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads,
        })
    }

    /// `LayerNorm(xs + dense(attention))`. With `cache`, the keys and values of `xs` are
    /// appended to it and the queries attend to all of them; `causal` masks keys after each
    /// query's own position.
    fn forward(
        &self,
        xs: &Tensor,
        cache: Option<&mut Option<KeyValues>>,
        causal: bool,
    ) -> Result<Tensor> {
        let (b, s, d) = xs.dims3()?;
        let qkv = self.qkv.forward(xs, Epilogue::Bias)?;
        let q = split_heads(&qkv.narrow(2, 0, d)?, self.heads)?;
        let mut k = split_heads(&qkv.narrow(2, d, d)?, self.heads)?;
        let mut v = split_heads(&qkv.narrow(2, 2 * d, d)?, self.heads)?;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = cache.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let t = k.dim(2)?;
        let mut scores = q.matmul(&k.t()?)?;
        if causal && s > 1 {
            let past = t - s;
            let mask: Vec<f32> = (0..s)
                .flat_map(|i| {
                    (0..t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (s, t), xs.device())?.to_dtype(scores.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let ctx = softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, s, d))?;
        let out = self.dense.forward(&ctx, Epilogue::Residual(xs))?;
        self.norm.forward(&out)
    }
}

/// `BlipTextSelfAttention` as cross-attention + `BlipTextSelfOutput`.
#[derive(Debug, Clone)]
struct CrossAttention {
    /// pre-scaled by `head_dim^-0.5`
    query: FusedLinear,
    /// `key` and `value` stacked: (2d, encoder_hidden_size)
    key_value: FusedLinear,
    dense: FusedLinear,
    norm: LayerNorm,
    heads: usize,
}

impl CrossAttention {
    fn new(vb: ModelVars, cfg: &BlipTextConfig, encoder_hidden: usize) -> Result<Self> {
        let (d, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let scale = ((d / heads) as f64).powf(-0.5);
        let sv = vb.pp("self");
        let q = sv.pp("query");
        let (k, v) = (sv.pp("key"), sv.pp("value"));
        Ok(Self {
            query: FusedLinear::new(
                (q.get((d, d), "weight")? * scale)?,
                (q.get(d, "bias")? * scale)?,
                vb.kernels(),
            )?,
            key_value: FusedLinear::new(
                Tensor::cat(
                    &[
                        k.get((d, encoder_hidden), "weight")?,
                        v.get((d, encoder_hidden), "weight")?,
                    ],
                    0,
                )?,
                Tensor::cat(&[k.get(d, "bias")?, v.get(d, "bias")?], 0)?,
                vb.kernels(),
            )?,
            dense: FusedLinear::load(d, d, vb.pp("output").pp("dense"))?,
            norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads,
        })
    }

    /// Keys and values of one item's encoder states (1, n, e): each (heads, n, hd).
    fn key_values(&self, encoder: &Tensor) -> Result<KeyValues> {
        let (_, d) = self.query.dims();
        let kv = self.key_value.forward(encoder, Epilogue::Bias)?;
        let k = split_heads(&kv.narrow(2, 0, d)?, self.heads)?.squeeze(0)?;
        let v = split_heads(&kv.narrow(2, d, d)?, self.heads)?.squeeze(0)?;
        Ok((k, v))
    }

    /// `LayerNorm(xs + dense(attention))`, every row of `xs` (b, s, d) attending to the same
    /// keys and values (no mask: BLIP's image / question attention masks are all ones).
    fn forward(&self, xs: &Tensor, kv: &KeyValues) -> Result<Tensor> {
        let (b, s, d) = xs.dims3()?;
        let hd = d / self.heads;
        // (b, s, d) -> (heads, b * s, hd): the rows' queries side by side, one product a head
        let q = self
            .query
            .forward(xs, Epilogue::Bias)?
            .reshape((b * s, self.heads, hd))?
            .transpose(0, 1)?
            .contiguous()?;
        let (k, v) = kv;
        let ctx = softmax_last_dim(&q.matmul(&k.t()?)?)?.matmul(v)?;
        let ctx = ctx.transpose(0, 1)?.reshape((b, s, d))?;
        let out = self.dense.forward(&ctx, Epilogue::Residual(xs))?;
        self.norm.forward(&out)
    }
}

/// transformers' `BlipTextLayer` (with cross-attention: BLIP's text configs are decoders).
#[derive(Debug, Clone)]
struct BlipTextLayer {
    attention: SelfAttention,
    crossattention: CrossAttention,
    intermediate: FusedLinear,
    output: FusedLinear,
    output_norm: LayerNorm,
    act: Activation,
}

impl BlipTextLayer {
    fn new(
        vb: ModelVars,
        cfg: &BlipTextConfig,
        encoder_hidden: usize,
        act: Activation,
    ) -> Result<Self> {
        let (d, inner) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: SelfAttention::new(vb.pp("attention"), cfg)?,
            crossattention: CrossAttention::new(vb.pp("crossattention"), cfg, encoder_hidden)?,
            intermediate: FusedLinear::load(d, inner, vb.pp("intermediate").pp("dense"))?,
            output: FusedLinear::load(inner, d, vb.pp("output").pp("dense"))?,
            output_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cache: Option<&mut Option<KeyValues>>,
        causal: bool,
        cross: &KeyValues,
    ) -> Result<Tensor> {
        let h = self.attention.forward(xs, cache, causal)?;
        let h = self.crossattention.forward(&h, cross)?;
        let inner = self
            .intermediate
            .forward(&h, Epilogue::Activation(self.act))?;
        let out = self.output.forward(&inner, Epilogue::Residual(&h))?;
        self.output_norm.forward(&out)
    }
}

/// transformers' `BlipTextModel` without the pooler (both heads build it so).
#[derive(Debug, Clone)]
pub struct BlipTextModel {
    embeddings: BlipTextEmbeddings,
    layers: Vec<BlipTextLayer>,
}

impl BlipTextModel {
    /// `encoder_hidden` is the width of the states it attends to (BlipConfig sets the text
    /// config's `encoder_hidden_size` to the vision tower's width).
    pub fn new(
        vb: ModelVars,
        cfg: &BlipTextConfig,
        encoder_hidden: usize,
        act: Activation,
    ) -> Result<Self> {
        let layers_vb = vb.pp("encoder").pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BlipTextLayer::new(layers_vb.pp(i), cfg, encoder_hidden, act))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: BlipTextEmbeddings::new(vb.pp("embeddings"), cfg)?,
            layers,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Each layer's cross-attention keys and values of one item's encoder states (1, n, e).
    pub fn cross_kv(&self, encoder: &Tensor) -> Result<Vec<KeyValues>> {
        if encoder.dim(0)? != 1 {
            candle_core::bail!(
                "cross-attention states of one item expected, got {:?}",
                encoder.dims()
            );
        }
        let encoder = encoder.to_dtype(self.embeddings.word_embeddings.embeddings().dtype())?;
        self.layers
            .iter()
            .map(|l| l.crossattention.key_values(&encoder))
            .collect()
    }

    /// `last_hidden_state` of `input_ids` (b, s). With `cache` (one entry a layer) the tokens
    /// continue the cached ones (positions and causal mask after them) and their keys and
    /// values are appended; `causal` for the decoder, bidirectional for the question encoder.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut [Option<KeyValues>]>,
        causal: bool,
        cross: &[KeyValues],
    ) -> Result<Tensor> {
        if cross.len() != self.layers.len() {
            candle_core::bail!(
                "{} cross-attention entries for {} layers",
                cross.len(),
                self.layers.len()
            );
        }
        let past = cache
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|kv| kv.as_ref())
            .map_or(Ok(0), |(k, _)| k.dim(2))?;
        let mut xs = self.embeddings.forward(input_ids, past)?;
        match cache {
            Some(cache) => {
                if cache.len() != self.layers.len() {
                    candle_core::bail!(
                        "a cache of {} layers for {}",
                        cache.len(),
                        self.layers.len()
                    );
                }
                for ((layer, kv), c) in self.layers.iter().zip(cache.iter_mut()).zip(cross) {
                    xs = layer.forward(&xs, Some(kv), causal, c)?;
                }
            }
            None => {
                for (layer, c) in self.layers.iter().zip(cross) {
                    xs = layer.forward(&xs, None, causal, c)?;
                }
            }
        }
        Ok(xs)
    }
}

/// transformers' `BlipTextLMHeadModel`: the decoder (`bert`) and `cls.predictions` (dense +
/// activation + LayerNorm, then the output projection tied to the word embeddings, with its
/// own bias).
#[derive(Debug, Clone)]
pub struct BlipTextLMHeadModel {
    bert: BlipTextModel,
    transform: FusedLinear,
    transform_norm: LayerNorm,
    act: Activation,
    /// (vocab, d): the word embeddings (tied).
    decoder_weight: Tensor,
    /// (vocab,)
    decoder_bias: Tensor,
}

impl BlipTextLMHeadModel {
    pub fn new(
        vb: ModelVars,
        cfg: &BlipTextConfig,
        encoder_hidden: usize,
        act: Activation,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let bert = BlipTextModel::new(vb.pp("bert"), cfg, encoder_hidden, act)?;
        let predictions = vb.pp("cls").pp("predictions");
        Ok(Self {
            decoder_weight: bert.embeddings.word_embeddings.embeddings().clone(),
            bert,
            transform: FusedLinear::load(d, d, predictions.pp("transform").pp("dense"))?,
            transform_norm: layer_norm(
                d,
                cfg.layer_norm_eps,
                predictions.pp("transform").pp("LayerNorm"),
            )?,
            act,
            decoder_bias: predictions.get(cfg.vocab_size, "bias")?,
        })
    }

    pub fn bert(&self) -> &BlipTextModel {
        &self.bert
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder_bias.dims1().unwrap_or(0)
    }

    /// The next-token logits after `input_ids` (b, s) continuing `cache`: (b, vocab) f32, of
    /// the last position only (generation reads no other).
    pub fn next_logits(
        &self,
        input_ids: &Tensor,
        cache: &mut [Option<KeyValues>],
        cross: &[KeyValues],
    ) -> Result<Tensor> {
        let hidden = self.bert.forward(input_ids, Some(cache), true, cross)?;
        let last = hidden.i((.., hidden.dim(1)? - 1, ..))?.contiguous()?;
        let h = self
            .transform
            .forward(&last, Epilogue::Activation(self.act))?;
        let h = self.transform_norm.forward(&h)?;
        h.matmul(&self.decoder_weight.t()?)?
            .broadcast_add(&self.decoder_bias)?
            .to_dtype(DType::F32)
    }
}

/// Keeps, for each new row `i`, the cached keys and values of row `rows[i]` (beam search's
/// cache reorder; also expands one prompt's cache to every beam).
pub fn select_rows(cache: &mut [Option<KeyValues>], rows: &[u32]) -> Result<()> {
    for kv in cache.iter_mut().flatten() {
        let idx = Tensor::new(rows, kv.0.device())?;
        *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
    }
    Ok(())
}
