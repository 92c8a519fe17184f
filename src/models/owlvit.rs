//! OWL-ViT open-vocabulary object detection (`OwlViTForObjectDetection`).
//!
//! - Paper: [Simple Open-Vocabulary Object Detection with Vision Transformers](https://arxiv.org/abs/2205.06230)
//! - Model card: [google/owlvit-base-patch32](https://huggingface.co/google/owlvit-base-patch32)
//! - Mirrors transformers v5.17.0 `models/owlvit/modeling_owlvit.py`
//!   (<https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/owlvit/modeling_owlvit.py>).
//!
//! The towers are CLIP's ([`super::clip`]: the shared encoder and text tower); the vision
//! embeddings and tower are written here, OWL-ViT spelling the vision pre-norm
//! `pre_layernorm`. Text queries are embedded once
//! ([`OwlVitForObjectDetection::get_text_features`]) and reused for every image; so are image
//! queries ([`OwlVitForObjectDetection::embed_image_query`], one-shot detection: the class
//! embedding of one box predicted on the query image).

use candle_core::{bail, DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear, linear_no_bias, LayerNormConfig, Linear};

use crate::models::ModelVars;
use serde::Deserialize;

use super::clip::encoder::{AttentionMask, ClipEncoder};
use super::clip::text::{
    argmax_position, input_ids_to_vec, ClipTextTowerConfig, ClipTextTransformer,
};
use super::clip::{clip_defaults, clip_tower_configs, Activation, ClipEncoderConfig};
use super::kernels::{layer_norm, Epilogue, FusedLinear, LayerNorm, PatchEmbedding};
use crate::vision::boxes::BBox;

/// Added to norms before dividing, as `OwlViTClassPredictionHead` does.
const NORM_EPS: f64 = 1e-6;
/// Offset inside the logits of `compute_box_bias`.
const BOX_BIAS_EPS: f32 = 1e-4;
/// `embed_image_query`'s adaptive threshold: query-image boxes whose IoU with the whole image
/// is at least this fraction of the best one are candidates for the query embedding.
const QUERY_BOX_IOU_FRACTION: f32 = 0.8;
/// `embed_image_query`'s reference box: the whole query image, normalized corners.
const WHOLE_IMAGE_BOX: BBox = BBox {
    x_min: 0.0,
    y_min: 0.0,
    x_max: 1.0,
    y_max: 1.0,
};
/// `OwlViTPreTrainedModel.base_model_prefix`: the checkpoint key of the towers.
pub const BASE_MODEL_PREFIX: &str = "owlvit";

fn default_text_max_positions() -> usize {
    16
}
fn default_pad_token_id() -> u32 {
    0
}
fn default_image_size() -> usize {
    768
}
fn default_logit_scale() -> f64 {
    2.6592
}

/// transformers' `OwlViTTextConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct OwlVitTextConfig {
    #[serde(default = "clip_defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "clip_defaults::text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "clip_defaults::text_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "clip_defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "clip_defaults::text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_text_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "clip_defaults::act")]
    pub hidden_act: String,
    #[serde(default = "clip_defaults::eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: u32,
}

/// transformers' `OwlViTVisionConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct OwlVitVisionConfig {
    #[serde(default = "clip_defaults::vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "clip_defaults::vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "clip_defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "clip_defaults::vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "clip_defaults::channels")]
    pub num_channels: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "clip_defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "clip_defaults::act")]
    pub hidden_act: String,
    #[serde(default = "clip_defaults::eps")]
    pub layer_norm_eps: f64,
}

/// transformers' `OwlViTConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct OwlVitConfig {
    pub text_config: OwlVitTextConfig,
    pub vision_config: OwlVitVisionConfig,
    #[serde(default = "clip_defaults::projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
}

impl OwlVitConfig {
    /// Patches per side of the (square) input.
    pub fn num_patches_side(&self) -> usize {
        self.vision_config.image_size / self.vision_config.patch_size
    }

    /// Checks what the architecture needs and returns the towers' configs (text, vision).
    fn towers(&self, model: &str) -> crate::Result<(ClipTextTowerConfig, ClipEncoderConfig)> {
        let t = &self.text_config;
        if self.projection_dim != t.hidden_size {
            // The class head compares projected query embeddings with image embeddings mapped
            // to text_config.hidden_size, so the two must agree (they do in every checkpoint).
            return Err(crate::Error::Unsupported {
                model: model.into(),
                reason: format!(
                    "projection_dim {} differs from text_config.hidden_size {}",
                    self.projection_dim, t.hidden_size
                ),
            });
        }
        Ok((
            self.text_config.clip_config(model)?,
            self.vision_config.encoder_config(model)?,
        ))
    }
}

clip_tower_configs!(text: OwlVitTextConfig, vision: OwlVitVisionConfig);

/// transformers' `OwlViTVisionEmbeddings` at the config's image size (the detector never
/// interpolates the position table): class token + patch embeddings + positions.
#[derive(Debug, Clone)]
pub struct OwlVitVisionEmbeddings {
    /// (d,)
    class_embedding: Tensor,
    patch_embedding: PatchEmbedding,
    /// (1 + patches, d)
    position_embedding: Tensor,
    embed_dim: usize,
}

impl OwlVitVisionEmbeddings {
    pub fn new(vb: ModelVars, cfg: &OwlVitVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let patch_embedding = PatchEmbedding::new(
            vb.pp("patch_embedding"),
            cfg.num_channels,
            d,
            cfg.patch_size,
            false,
        )?;
        let side = cfg.image_size / cfg.patch_size;
        Ok(Self {
            class_embedding: vb.get(d, "class_embedding")?,
            patch_embedding,
            position_embedding: vb.get((side * side + 1, d), "position_embedding.weight")?,
            embed_dim: d,
        })
    }

    /// (b, channels, image_size, image_size) -> (b, 1 + patches, d)
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let b = pixel_values.dim(0)?;
        let pixel_values = pixel_values.to_dtype(self.class_embedding.dtype())?;
        // (b, patches, d)
        let patch_embeds = self.patch_embedding.forward(&pixel_values)?;
        let tokens = 1 + patch_embeds.dim(1)?;
        if tokens != self.position_embedding.dim(0)? {
            bail!(
                "pixel_values {:?} do not match the position table of {} tokens",
                pixel_values.dims(),
                self.position_embedding.dim(0)?
            );
        }
        let class_embeds = self
            .class_embedding
            .reshape((1, 1, self.embed_dim))?
            .broadcast_as((b, 1, self.embed_dim))?;
        Tensor::cat(&[&class_embeds, &patch_embeds], 1)?.broadcast_add(&self.position_embedding)
    }
}

/// transformers' `OwlViTVisionTransformer`.
#[derive(Debug, Clone)]
pub struct OwlVitVisionTransformer {
    embeddings: OwlVitVisionEmbeddings,
    pre_layernorm: LayerNorm,
    encoder: ClipEncoder,
    /// Applied by the detector to every token (and by `OwlViTVisionModel` to the class token).
    post_layernorm: LayerNorm,
}

impl OwlVitVisionTransformer {
    pub fn new(
        vb: ModelVars,
        cfg: &OwlVitVisionConfig,
        encoder_cfg: &ClipEncoderConfig,
    ) -> Result<Self> {
        let ln_cfg = LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        Ok(Self {
            embeddings: OwlVitVisionEmbeddings::new(vb.pp("embeddings"), cfg)?,
            pre_layernorm: layer_norm(cfg.hidden_size, ln_cfg, vb.pp("pre_layernorm"))?,
            encoder: ClipEncoder::new(vb.pp("encoder"), encoder_cfg)?,
            post_layernorm: layer_norm(cfg.hidden_size, ln_cfg, vb.pp("post_layernorm"))?,
        })
    }

    /// `last_hidden_state` (before post_layernorm). (b, 1 + patches, d)
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let hidden_states = self
            .pre_layernorm
            .forward(&self.embeddings.forward(pixel_values)?)?;
        self.encoder.forward(hidden_states, AttentionMask::None)
    }
}

/// transformers' `OwlViTClassPredictionHead`.
#[derive(Debug, Clone)]
pub struct OwlVitClassPredictionHead {
    dense0: Linear,
    logit_shift: Linear,
    logit_scale: Linear,
}

impl OwlVitClassPredictionHead {
    pub fn new(vb: ModelVars, cfg: &OwlVitConfig) -> Result<Self> {
        let query_dim = cfg.vision_config.hidden_size;
        let out_dim = cfg.text_config.hidden_size;
        Ok(Self {
            dense0: linear(query_dim, out_dim, vb.pp("dense0").var_builder())?,
            logit_shift: linear(query_dim, 1, vb.pp("logit_shift").var_builder())?,
            logit_scale: linear(query_dim, 1, vb.pp("logit_scale").var_builder())?,
        })
    }

    /// `forward(image_embeds, query_embeds=None)`: the class embeddings `dense0(image_embeds)`,
    /// not normalized (what `embed_image_query` picks a query from).
    /// (b, patches, d_vision) -> (b, patches, d_text)
    pub fn image_class_embeds(&self, image_embeds: &Tensor) -> Result<Tensor> {
        self.dense0.forward(image_embeds)
    }

    /// `image_embeds`: (b, patches, d_vision); `query_embeds`: (queries, d_text), shared by the
    /// batch, or (b, queries, d_text), per image (image-guided detection: one query image per
    /// target). Returns `(pred_logits (b, patches, queries), normalized image_class_embeds)`.
    pub fn forward(
        &self,
        image_embeds: &Tensor,
        query_embeds: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let image_norm = normalize(&self.image_class_embeds(image_embeds)?)?;
        let query_norm = normalize(query_embeds)?;
        // (b, p, d) x ([b,] d, q) -> (b, p, q)
        let pred_logits = image_norm.broadcast_matmul(&query_norm.t()?)?;
        let logit_shift = self.logit_shift.forward(image_embeds)?;
        let logit_scale = (self.logit_scale.forward(image_embeds)?.elu(1.0)? + 1.0)?;
        let pred_logits = pred_logits
            .broadcast_add(&logit_shift)?
            .broadcast_mul(&logit_scale)?;
        // transformers returns the normalized class embeddings.
        Ok((pred_logits, image_norm))
    }
}

/// `x / (||x|| + 1e-6)` over the last dimension.
fn normalize(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + NORM_EPS)?;
    x.broadcast_div(&norm)
}

/// transformers' `OwlViTBoxPredictionHead`.
#[derive(Debug, Clone)]
pub struct OwlVitBoxPredictionHead {
    dense0: FusedLinear,
    dense1: FusedLinear,
    dense2: FusedLinear,
}

impl OwlVitBoxPredictionHead {
    /// Predicts (cx, cy, w, h) offsets.
    const OUT_DIM: usize = 4;

    pub fn new(vb: ModelVars, cfg: &OwlVitConfig) -> Result<Self> {
        Self::with_out_dim(vb, cfg, Self::OUT_DIM)
    }

    /// The head with `out_dim` outputs (`OwlViTBoxPredictionHead(config, out_dim)`; OWLv2's
    /// objectness head is this MLP with one output).
    pub fn with_out_dim(vb: ModelVars, cfg: &OwlVitConfig, out_dim: usize) -> Result<Self> {
        let width = cfg.vision_config.hidden_size;
        Ok(Self {
            dense0: FusedLinear::load(width, width, vb.pp("dense0"))?,
            dense1: FusedLinear::load(width, width, vb.pp("dense1"))?,
            dense2: FusedLinear::load(width, out_dim, vb.pp("dense2"))?,
        })
    }
}

impl Module for OwlVitBoxPredictionHead {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // nn.GELU() is the exact (erf) GELU.
        let gelu = Epilogue::Activation(Activation::Gelu);
        let xs = self.dense0.forward(xs, gelu)?;
        let xs = self.dense1.forward(&xs, gelu)?;
        self.dense2.forward(&xs, Epilogue::Bias)
    }
}

/// The raw outputs of one detection pass.
#[derive(Debug, Clone)]
pub struct OwlVitObjectDetectionOutput {
    /// (b, patches, queries)
    pub logits: Tensor,
    /// (b, patches, 4), normalized (cx, cy, w, h)
    pub pred_boxes: Tensor,
    /// (b, patches_h, patches_w, d_vision)
    pub image_embeds: Tensor,
    /// (b, patches, d_text)
    pub class_embeds: Tensor,
}

/// What `embed_image_query` returns for a batch of query images.
#[derive(Debug, Clone)]
pub struct OwlVitImageQuery {
    /// (b, d_text): per query image, the class embedding (`dense0` output, not normalized) of
    /// the box chosen, in the model's dtype.
    pub query_embeds: Tensor,
    /// Per query image, the index (patch) of the box chosen.
    pub best_box_indices: Vec<usize>,
    /// (b, patches, 4) in f32: the boxes predicted on the query images, normalized
    /// (cx, cy, w, h).
    pub query_pred_boxes: Tensor,
}

/// The raw outputs of image-guided (one-shot) detection
/// (`OwlViTImageGuidedObjectDetectionOutput`, plus `embed_image_query`'s choice).
#[derive(Debug, Clone)]
pub struct OwlVitImageGuidedObjectDetectionOutput {
    /// (b, patches, 1): each target scored against its query image's embedding.
    pub logits: Tensor,
    /// (b, patches_h, patches_w, d_vision): the targets' feature maps.
    pub image_embeds: Tensor,
    /// (b, patches_h, patches_w, d_vision): the query images' feature maps.
    pub query_image_embeds: Tensor,
    /// (b, patches, 4), normalized (cx, cy, w, h) on the targets.
    pub target_pred_boxes: Tensor,
    /// (b, patches, 4), normalized (cx, cy, w, h) on the query images.
    pub query_pred_boxes: Tensor,
    /// (b, patches, d_text): the targets' normalized class embeddings.
    pub class_embeds: Tensor,
    /// (b, d_text): the query embeddings (not in transformers' output).
    pub query_embeds: Tensor,
    /// Per query image, the box whose class embedding is the query (not in transformers'
    /// output).
    pub best_box_indices: Vec<usize>,
}

/// transformers' `OwlViTForObjectDetection`.
#[derive(Debug, Clone)]
pub struct OwlVitForObjectDetection {
    text_model: ClipTextTransformer,
    text_projection: Linear,
    vision_model: OwlVitVisionTransformer,
    class_head: OwlVitClassPredictionHead,
    box_head: OwlVitBoxPredictionHead,
    layer_norm: LayerNorm,
    /// (patches, 4)
    box_bias: Tensor,
    num_patches_side: usize,
}

impl OwlVitForObjectDetection {
    /// `model` names the checkpoint in configuration errors.
    pub fn new(vb: ModelVars, cfg: &OwlVitConfig, model: &str) -> crate::Result<Self> {
        Self::with_base_model_prefix(vb, cfg, model, BASE_MODEL_PREFIX)
    }

    /// The detector with its towers under `base_model_prefix` (`owlvit`; `owlv2` for the
    /// OWLv2 checkpoints, whose modules are all copied from OWL-ViT's).
    pub fn with_base_model_prefix(
        vb: ModelVars,
        cfg: &OwlVitConfig,
        model: &str,
        base_model_prefix: &str,
    ) -> crate::Result<Self> {
        let (text_cfg, vision_cfg) = cfg.towers(model)?;
        Ok(Self::build(
            vb,
            cfg,
            &text_cfg,
            &vision_cfg,
            base_model_prefix,
        )?)
    }

    fn build(
        vb: ModelVars,
        cfg: &OwlVitConfig,
        text_cfg: &ClipTextTowerConfig,
        vision_cfg: &ClipEncoderConfig,
        base_model_prefix: &str,
    ) -> Result<Self> {
        let owlvit = vb.pp(base_model_prefix);
        let text_model = ClipTextTransformer::new(owlvit.pp("text_model"), text_cfg)?;
        let text_projection = linear_no_bias(
            cfg.text_config.hidden_size,
            cfg.projection_dim,
            owlvit.pp("text_projection").var_builder(),
        )?;
        let v = &cfg.vision_config;
        let vision_model = OwlVitVisionTransformer::new(owlvit.pp("vision_model"), v, vision_cfg)?;
        let ln_cfg = LayerNormConfig {
            eps: v.layer_norm_eps,
            ..Default::default()
        };
        let class_head = OwlVitClassPredictionHead::new(vb.pp("class_head"), cfg)?;
        let box_head = OwlVitBoxPredictionHead::new(vb.pp("box_head"), cfg)?;
        let layer_norm = layer_norm(v.hidden_size, ln_cfg, vb.pp("layer_norm"))?;
        let side = cfg.num_patches_side();
        let box_bias = compute_box_bias(side, side, vb.device())?.to_dtype(vb.dtype())?;
        Ok(Self {
            text_model,
            text_projection,
            vision_model,
            class_head,
            box_head,
            layer_norm,
            box_bias,
            num_patches_side: side,
        })
    }

    /// Query embeddings for `input_ids` (queries, seq): the EOS-pooled text output, projected
    /// and L2-normalized, as `OwlViTModel` returns `text_embeds`. (queries, projection_dim)
    pub fn get_text_features(&self, input_ids: &Tensor) -> Result<Tensor> {
        // OwlViTTextTransformer pools at argmax(input_ids), the EOS token; the causal mask
        // alone decides what EOS attends to, so padding needs no extra mask.
        let positions: Vec<usize> = input_ids_to_vec(input_ids)?
            .iter()
            .map(|row| argmax_position(row))
            .collect();
        let last_hidden_state = self.text_model.forward(input_ids)?;
        let pooled = self
            .text_model
            .pooled_output(&last_hidden_state, &positions)?;
        let text_embeds = self.text_projection.forward(&pooled)?;
        let norm = text_embeds.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        text_embeds.broadcast_div(&norm)
    }

    /// `image_embedder`: the vision tower, post_layernorm on every token, the class token merged
    /// into the patch tokens, then layer_norm. (b, patches_h, patches_w, d_vision)
    pub fn image_embedder(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let last_hidden_state = self.vision_model.forward(pixel_values)?;
        let image_embeds = self
            .vision_model
            .post_layernorm
            .forward(&last_hidden_state)?;
        drop(last_hidden_state);
        let (b, tokens, d) = image_embeds.dims3()?;
        let class_token_out = image_embeds.narrow(1, 0, 1)?;
        let image_embeds = image_embeds
            .narrow(1, 1, tokens - 1)?
            .broadcast_mul(&class_token_out)?;
        let image_embeds = self.layer_norm.forward(&image_embeds)?;
        image_embeds.reshape((b, self.num_patches_side, self.num_patches_side, d))
    }

    /// `box_predictor`: (b, patches, d_vision) -> (b, patches, 4) normalized (cx, cy, w, h).
    pub fn box_predictor(&self, image_feats: &Tensor) -> Result<Tensor> {
        let pred_boxes = self.box_head.forward(image_feats)?;
        candle_nn::ops::sigmoid(&pred_boxes.broadcast_add(&self.box_bias)?)
    }

    /// `class_predictor`: `image_feats` (b, patches, d_vision) against `query_embeds`
    /// (queries, d_text), shared by the batch, or (b, queries, d_text), per image. Returns
    /// `(pred_logits (b, patches, queries), normalized class embeddings (b, patches, d_text))`
    /// in the model's dtype.
    pub fn class_predictor(
        &self,
        image_feats: &Tensor,
        query_embeds: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.class_head.forward(image_feats, query_embeds)
    }

    /// Detection for a batch of images against cached query embeddings (from
    /// [`Self::get_text_features`]).
    pub fn detect(
        &self,
        pixel_values: &Tensor,
        query_embeds: &Tensor,
    ) -> Result<OwlVitObjectDetectionOutput> {
        let feature_map = self.image_embedder(pixel_values)?;
        let (b, h, w, d) = feature_map.dims4()?;
        let image_feats = feature_map.reshape((b, h * w, d))?;
        let (logits, class_embeds) = self.class_predictor(&image_feats, query_embeds)?;
        let pred_boxes = self.box_predictor(&image_feats)?;
        Ok(OwlVitObjectDetectionOutput {
            logits: logits.to_dtype(DType::F32)?,
            pred_boxes: pred_boxes.to_dtype(DType::F32)?,
            image_embeds: feature_map,
            class_embeds,
        })
    }

    /// transformers' `forward(input_ids, pixel_values)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        pixel_values: &Tensor,
    ) -> Result<OwlVitObjectDetectionOutput> {
        let query_embeds = self.get_text_features(input_ids)?;
        self.detect(pixel_values, &query_embeds)
    }

    /// `embed_image_query` on the query images' feature maps (b, patches_h, patches_w,
    /// d_vision) from [`Self::image_embedder`]: per query image, among its predicted boxes
    /// whose IoU with the whole image is at least 0.8 times the best (generalized IoU when no
    /// box overlaps it), the one whose class embedding is least similar to the image's mean
    /// class embedding; its class embedding is the query. Usable as `query_embeds` of
    /// [`Self::detect`] like text embeddings (the class head normalizes both).
    pub fn embed_image_query(&self, query_feature_map: &Tensor) -> Result<OwlVitImageQuery> {
        let (b, h, w, d) = query_feature_map.dims4()?;
        // (b, patches, d_vision)
        let query_image_feats = query_feature_map.reshape((b, h * w, d))?;
        // (b, patches, d_text)
        let class_embeds = self.class_head.image_class_embeds(&query_image_feats)?;
        // (b, patches, 4)
        let pred_boxes = self
            .box_predictor(&query_image_feats)?
            .to_dtype(DType::F32)?;
        // (b, patches): each box's class embedding against the mean one, in f32.
        let class_f32 = class_embeds.to_dtype(DType::F32)?;
        let mean_embeds = class_f32.mean_keepdim(1)?;
        let mean_sim = class_f32.matmul(&mean_embeds.t()?)?.squeeze(D::Minus1)?;
        let boxes = pred_boxes.to_vec3::<f32>()?;
        let sims = mean_sim.to_vec2::<f32>()?;
        let mut best_box_indices = Vec::with_capacity(b);
        let mut query_embeds = Vec::with_capacity(b);
        for (i, (boxes, sims)) in boxes.iter().zip(&sims).enumerate() {
            let corners: Vec<BBox> = boxes
                .iter()
                .map(|b| BBox::from_center_normalized([b[0], b[1], b[2], b[3]], 1.0, 1.0))
                .collect();
            let Some(best) = select_query_box(&corners, sims) else {
                // transformers silently drops such a query image (and with it the alignment
                // of queries and targets).
                bail!(
                    "query image {i}: no predicted box overlaps the image, so there is no box \
                     to take the query embedding from"
                );
            };
            best_box_indices.push(best);
            query_embeds.push(class_embeds.get(i)?.get(best)?);
        }
        Ok(OwlVitImageQuery {
            query_embeds: Tensor::stack(&query_embeds, 0)?,
            best_box_indices,
            query_pred_boxes: pred_boxes,
        })
    }

    /// transformers' `image_guided_detection(pixel_values, query_pixel_values)`: one query
    /// image per target image (the same batch size), each target scored against its own query
    /// image's embedding. To score one target against several query images, embed them once
    /// ([`Self::embed_image_query`]) and pass the stacked `query_embeds` to [`Self::detect`].
    pub fn image_guided_detection(
        &self,
        pixel_values: &Tensor,
        query_pixel_values: &Tensor,
    ) -> Result<OwlVitImageGuidedObjectDetectionOutput> {
        let (b, qb) = (pixel_values.dim(0)?, query_pixel_values.dim(0)?);
        if b != qb {
            bail!("{qb} query images for {b} target images: pass one query image per target");
        }
        let query_feature_map = self.image_embedder(query_pixel_values)?;
        let query = self.embed_image_query(&query_feature_map)?;
        // (b, 1, d_text): one query per target.
        let out = self.detect(pixel_values, &query.query_embeds.unsqueeze(1)?)?;
        Ok(OwlVitImageGuidedObjectDetectionOutput {
            logits: out.logits,
            image_embeds: out.image_embeds,
            query_image_embeds: query_feature_map,
            target_pred_boxes: out.pred_boxes,
            query_pred_boxes: query.query_pred_boxes,
            class_embeds: out.class_embeds,
            query_embeds: query.query_embeds,
            best_box_indices: query.best_box_indices,
        })
    }
}

/// `embed_image_query`'s choice for one query image, from its predicted boxes (normalized
/// corners) and each box's class-embedding similarity to the mean one: among the boxes whose
/// IoU with the whole image is at least 0.8 times the best IoU (generalized IoU when every IoU
/// is 0), the one least similar to the mean (the first on ties, as torch.argmin). `None` when
/// nothing qualifies: no boxes, non-finite IoUs, or no box overlapping the image (all
/// generalized IoUs are then negative but for boxes touching its edge, and 0.8 times a
/// negative best is above it).
pub fn select_query_box(boxes: &[BBox], mean_sim: &[f32]) -> Option<usize> {
    let mut ious: Vec<f32> = boxes.iter().map(|b| WHOLE_IMAGE_BOX.iou(b)).collect();
    if ious.iter().all(|&v| v == 0.0) {
        ious = boxes
            .iter()
            .map(|b| WHOLE_IMAGE_BOX.generalized_iou(b))
            .collect();
    }
    // torch.max propagates NaN: then nothing passes the threshold.
    let best = ious.iter().copied().reduce(|a, v| {
        if a.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            a.max(v)
        }
    })?;
    let iou_threshold = best * QUERY_BOX_IOU_FRACTION;
    ious.iter()
        .zip(mean_sim)
        .enumerate()
        .filter(|(_, (&iou, _))| iou >= iou_threshold)
        // torch.argmin: the first minimum.
        .reduce(|min, cur| if cur.1 .1 < min.1 .1 { cur } else { min })
        .map(|(i, _)| i)
}

/// `compute_box_bias`: a patch's box centre is biased towards its grid cell's far corner
/// (transformers' `normalize_grid_corner_coordinates`) and its size towards one patch.
/// Returns (patches_h * patches_w, 4) in inverse-sigmoid space, computed in f32 as torch does.
pub fn compute_box_bias(patches_h: usize, patches_w: usize, device: &Device) -> Result<Tensor> {
    let inv_sigmoid = |x: f32| (x + BOX_BIAS_EPS).ln() - (-x + BOX_BIAS_EPS).ln_1p();
    let size_w = inv_sigmoid(1.0 / patches_w as f32);
    let size_h = inv_sigmoid(1.0 / patches_h as f32);
    let mut bias = Vec::with_capacity(patches_h * patches_w * 4);
    for y in 1..=patches_h {
        for x in 1..=patches_w {
            let cx = (x as f32 / patches_w as f32).clamp(0.0, 1.0);
            let cy = (y as f32 / patches_h as f32).clamp(0.0, 1.0);
            bias.extend([inv_sigmoid(cx), inv_sigmoid(cy), size_w, size_h]);
        }
    }
    Tensor::from_vec(bias, (patches_h * patches_w, 4), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_owlvit_base_patch32_defaults() {
        let cfg: OwlVitConfig =
            serde_json::from_str(r#"{"text_config": {}, "vision_config": {}}"#).unwrap();
        assert_eq!(
            (
                cfg.text_config.hidden_size,
                cfg.text_config.max_position_embeddings
            ),
            (512, 16)
        );
        assert_eq!(
            (cfg.vision_config.image_size, cfg.vision_config.patch_size),
            (768, 32)
        );
        assert_eq!(cfg.num_patches_side(), 24);
        assert_eq!(cfg.projection_dim, 512);
    }

    fn corners(b: [f32; 4]) -> BBox {
        BBox::from(b)
    }

    #[test]
    fn query_box_is_the_least_typical_of_the_near_whole_image_boxes() {
        // Boxes 0 and 2 cover most of the image (IoU 0.81 and 0.9, both >= 0.8 * 0.9); box 1
        // is small. Of the two, box 0 is less similar to the mean embedding.
        let boxes = [
            corners([0.0, 0.0, 0.9, 0.9]),
            corners([0.4, 0.4, 0.5, 0.5]),
            corners([0.0, 0.0, 1.0, 0.9]),
        ];
        assert_eq!(select_query_box(&boxes, &[0.2, -5.0, 0.3]), Some(0));
        assert_eq!(select_query_box(&boxes, &[0.4, -5.0, 0.3]), Some(2));
        // Ties: the first.
        assert_eq!(select_query_box(&boxes, &[0.3, -5.0, 0.3]), Some(0));
    }

    #[test]
    fn query_box_falls_back_to_generalized_iou() {
        // No box overlaps the image: generalized IoUs are <= 0, and the 0.8 * best threshold
        // then passes only a box whose GIoU is exactly 0 (one touching the image edge to edge).
        let far = corners([1.5, 1.5, 2.0, 2.0]);
        let touching = corners([1.0, 0.0, 2.0, 1.0]);
        assert_eq!(select_query_box(&[far, touching], &[0.0, 1.0]), Some(1));
        // Otherwise nothing qualifies (transformers then drops the query image).
        let near = corners([1.1, 0.0, 1.6, 1.0]);
        assert_eq!(select_query_box(&[far, near], &[0.0, 1.0]), None);
        assert_eq!(select_query_box(&[], &[]), None);
    }

    #[test]
    fn box_bias_matches_transformers_corners() {
        // For a 2x2 grid the first cell's centre bias is logit(0.5) = 0 and its size bias
        // logit(0.5) too; the last cell's centre is logit(1.0) with the 1e-4 offsets.
        let b = compute_box_bias(2, 2, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(b[0].iter().all(|v| v.abs() < 1e-4), "{:?}", b[0]);
        let edge = (1.0f32 + 1e-4).ln() - (1e-4f32 - 1.0).ln_1p();
        assert!((b[3][0] - edge).abs() < 1e-3 && (b[3][1] - edge).abs() < 1e-3);
    }
}
