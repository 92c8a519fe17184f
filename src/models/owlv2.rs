//! OWLv2 open-vocabulary object detection (`Owlv2ForObjectDetection`).
//!
//! - Paper: [Scaling Open-Vocabulary Object Detection](https://arxiv.org/abs/2306.09683)
//! - Model card: [google/owlv2-base-patch16-ensemble](https://huggingface.co/google/owlv2-base-patch16-ensemble)
//! - Mirrors transformers v5.17.0 `models/owlv2/modeling_owlv2.py`
//!   (<https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/owlv2/modeling_owlv2.py>).
//!
//! Every module of `modeling_owlv2.py` but one is "Copied from" OWL-ViT (towers, class head, box
//! head, `layer_norm`, `compute_box_bias` on the config's `image_size // patch_size` grid), so
//! the detector is [`OwlVitForObjectDetection`] loaded under the `owlv2` prefix, plus the
//! objectness head: OWL-ViT's box MLP with one output, run on the same (detached) image
//! features. What else differs lives outside the model: the config's default patch size (16),
//! the image processor ([`crate::vision::owlv2_preprocess`]: pad to a square, blur, resize)
//! and post-processing, which scales boxes by the padded square's side
//! ([`crate::pipeline::detect`]).
//!
//! Image-guided (one-shot) detection is OWL-ViT's too (`embed_image_query` and
//! `image_guided_detection` are copied): the objectness head plays no part in choosing the
//! query box or in scoring, and `Owlv2ImageGuidedObjectDetectionOutput` has no objectness.

use crate::models::ModelVars;
use candle_core::{DType, Module, Result, Tensor, D};
use serde::{de::Error as _, Deserialize, Deserializer};

use super::owlvit::{
    OwlVitBoxPredictionHead, OwlVitConfig, OwlVitForObjectDetection,
    OwlVitImageGuidedObjectDetectionOutput, OwlVitImageQuery,
};

/// `Owlv2PreTrainedModel.base_model_prefix`: the checkpoint key of the towers.
pub const BASE_MODEL_PREFIX: &str = "owlv2";
/// `Owlv2VisionConfig.patch_size` default (google/owlv2-base-patch16); OWL-ViT's is 32.
pub const DEFAULT_PATCH_SIZE: usize = 16;
/// `Owlv2BoxPredictionHead(config, out_dim=1)`: one objectness logit per patch.
const OBJECTNESS_OUT_DIM: usize = 1;

/// transformers' `Owlv2Config`. Its text and vision configs have OWL-ViT's fields and defaults
/// except the vision `patch_size` (16), so it deserializes into [`OwlVitConfig`] with that one
/// default changed.
#[derive(Debug, Clone)]
pub struct Owlv2Config(pub OwlVitConfig);

impl<'de> Deserialize<'de> for Owlv2Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        if let Some(vision) = value
            .get_mut("vision_config")
            .and_then(serde_json::Value::as_object_mut)
        {
            vision
                .entry("patch_size")
                .or_insert_with(|| DEFAULT_PATCH_SIZE.into());
        }
        serde_json::from_value(value)
            .map(Self)
            .map_err(D::Error::custom)
    }
}

impl std::ops::Deref for Owlv2Config {
    type Target = OwlVitConfig;

    fn deref(&self) -> &OwlVitConfig {
        &self.0
    }
}

/// The raw outputs of one detection pass (`Owlv2ObjectDetectionOutput`).
#[derive(Debug, Clone)]
pub struct Owlv2ObjectDetectionOutput {
    /// (b, patches, queries)
    pub logits: Tensor,
    /// (b, patches)
    pub objectness_logits: Tensor,
    /// (b, patches, 4), normalized (cx, cy, w, h) of the padded square
    pub pred_boxes: Tensor,
    /// (b, patches_h, patches_w, d_vision)
    pub image_embeds: Tensor,
    /// (b, patches, d_text)
    pub class_embeds: Tensor,
}

/// transformers' `Owlv2ForObjectDetection`.
#[derive(Debug, Clone)]
pub struct Owlv2ForObjectDetection {
    /// `owlv2` (the towers), `class_head`, `box_head`, `layer_norm` and the box bias: OWL-ViT's
    /// detector under the `owlv2` prefix.
    base: OwlVitForObjectDetection,
    objectness_head: OwlVitBoxPredictionHead,
}

impl Owlv2ForObjectDetection {
    /// `model` names the checkpoint in configuration errors.
    pub fn new(vb: ModelVars, cfg: &Owlv2Config, model: &str) -> crate::Result<Self> {
        let base = OwlVitForObjectDetection::with_base_model_prefix(
            vb.clone(),
            cfg,
            model,
            BASE_MODEL_PREFIX,
        )?;
        let objectness_head = OwlVitBoxPredictionHead::with_out_dim(
            vb.pp("objectness_head"),
            cfg,
            OBJECTNESS_OUT_DIM,
        )?;
        Ok(Self {
            base,
            objectness_head,
        })
    }

    /// Query embeddings: projected, L2-normalized. (queries, projection_dim)
    pub fn get_text_features(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.base.get_text_features(input_ids)
    }

    /// The feature map. (b, patches_h, patches_w, d_vision)
    pub fn image_embedder(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.base.image_embedder(pixel_values)
    }

    /// `box_predictor`: (b, patches, d_vision) -> (b, patches, 4) normalized (cx, cy, w, h)
    /// of the padded square, in the model's dtype.
    pub fn box_predictor(&self, image_feats: &Tensor) -> Result<Tensor> {
        self.base.box_predictor(image_feats)
    }

    /// `class_predictor`: OWL-ViT's ([`OwlVitForObjectDetection::class_predictor`]).
    pub fn class_predictor(
        &self,
        image_feats: &Tensor,
        query_embeds: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.base.class_predictor(image_feats, query_embeds)
    }

    /// `objectness_predictor`: (b, patches, d_vision) -> (b, patches) logits. transformers
    /// detaches the features first, which only matters for training.
    pub fn objectness_predictor(&self, image_feats: &Tensor) -> Result<Tensor> {
        self.objectness_head
            .forward(image_feats)?
            .squeeze(D::Minus1)
    }

    /// Detection for a batch of images against cached query embeddings (from
    /// [`Self::get_text_features`]).
    pub fn detect(
        &self,
        pixel_values: &Tensor,
        query_embeds: &Tensor,
    ) -> Result<Owlv2ObjectDetectionOutput> {
        let out = self.base.detect(pixel_values, query_embeds)?;
        let (b, h, w, d) = out.image_embeds.dims4()?;
        // (b, patches, d): the image_feats the class and box heads saw
        let image_feats = out.image_embeds.reshape((b, h * w, d))?;
        let objectness_logits = self.objectness_predictor(&image_feats)?;
        Ok(Owlv2ObjectDetectionOutput {
            logits: out.logits,
            objectness_logits: objectness_logits.to_dtype(DType::F32)?,
            pred_boxes: out.pred_boxes,
            image_embeds: out.image_embeds,
            class_embeds: out.class_embeds,
        })
    }

    /// transformers' `forward(input_ids, pixel_values)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        pixel_values: &Tensor,
    ) -> Result<Owlv2ObjectDetectionOutput> {
        let query_embeds = self.get_text_features(input_ids)?;
        self.detect(pixel_values, &query_embeds)
    }

    /// `embed_image_query`: OWL-ViT's ([`OwlVitForObjectDetection::embed_image_query`]; the
    /// query boxes are relative to the query image's padded square).
    pub fn embed_image_query(&self, query_feature_map: &Tensor) -> Result<OwlVitImageQuery> {
        self.base.embed_image_query(query_feature_map)
    }

    /// `image_guided_detection(pixel_values, query_pixel_values)`: OWL-ViT's, without
    /// objectness (as transformers).
    pub fn image_guided_detection(
        &self,
        pixel_values: &Tensor,
        query_pixel_values: &Tensor,
    ) -> Result<OwlVitImageGuidedObjectDetectionOutput> {
        self.base
            .image_guided_detection(pixel_values, query_pixel_values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vision_patch_size_defaults_to_16() {
        let cfg: Owlv2Config =
            serde_json::from_str(r#"{"text_config": {}, "vision_config": {"image_size": 960}}"#)
                .unwrap();
        assert_eq!(cfg.vision_config.patch_size, 16);
        assert_eq!(cfg.num_patches_side(), 60);
        let cfg: Owlv2Config = serde_json::from_str(
            r#"{"text_config": {}, "vision_config": {"image_size": 960, "patch_size": 14}}"#,
        )
        .unwrap();
        assert_eq!(cfg.vision_config.patch_size, 14);
    }

    #[test]
    fn bad_field_is_a_config_error() {
        let err = serde_json::from_str::<Owlv2Config>(
            r#"{"text_config": {}, "vision_config": {"hidden_size": "wide"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
