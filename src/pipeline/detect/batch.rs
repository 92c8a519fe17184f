//! Several images in one vision pass ([`Detector::detect_batch`]): a node serving several
//! cameras with one copy of the model runs the frames pending at once as one batch. Each image
//! keeps its own queries, parameters and post-processing; the single-image calls
//! ([`Detector::detect`], [`Detector::detect_image_guided`], [`Detector::best_per_query`])
//! are batches of one.

use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::{
    post_process_image_guided_detection, post_process_raw_detections, DetectParams, Detector,
    QueryEmbeddings, RawDetections,
};
use crate::error::{Error, Result};
use crate::pipeline::types::{Detection, DetectionResult, Timings};

/// How one image of a batch is detected and post-processed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DetectMode {
    /// [`Detector::detect_with_min_objectness`]: transformers' `post_process_object_detection`
    /// plus our options, keeping boxes whose objectness is above `min_objectness` (0 keeps
    /// all; above 0 needs an OWLv2 checkpoint).
    Text { min_objectness: f32 },
    /// [`Detector::detect_image_guided`]: transformers' `post_process_image_guided_detection`,
    /// by descending score.
    ImageGuided,
}

/// One image of a batch, with its own queries and parameters.
#[derive(Debug, Clone, Copy)]
pub struct DetectInput<'a> {
    pub image: &'a RgbImage,
    pub queries: &'a QueryEmbeddings,
    pub params: &'a DetectParams,
    pub mode: DetectMode,
}

impl Detector {
    /// Detects in several images, each with its own queries, parameters and mode: every image
    /// preprocessed (to the model's fixed size, so sizes may differ), ONE vision pass
    /// (`image_embedder`) for the stacked batch, the box (and objectness) heads on the whole
    /// batch, the class head once per distinct query tensor (images sharing the same, e.g.
    /// `Arc`'d, queries are scored together), then each image post-processed at its own size.
    /// Results in input order; an empty batch gives an empty Vec.
    ///
    /// Every input is checked first, as the single-image calls check theirs; the first invalid
    /// one fails the whole batch with that call's error. Each result's `timings.preprocess` and
    /// `timings.postprocess` are its own; `timings.forward` is the whole batch's forward pass
    /// (the same in every result).
    pub fn detect_batch(&self, inputs: &[DetectInput<'_>]) -> Result<Vec<DetectionResult>> {
        let _span =
            tracing::info_span!("detect_batch", model = %self.name, n = inputs.len()).entered();
        self.detect_inputs(inputs)
    }

    /// A batch of one, without the batch's span.
    pub(super) fn detect_one(&self, input: DetectInput<'_>) -> Result<DetectionResult> {
        self.detect_inputs(&[input])?
            .pop()
            .ok_or_else(|| Error::InvalidInput("no result for the image".into()))
    }

    fn detect_inputs(&self, inputs: &[DetectInput<'_>]) -> Result<Vec<DetectionResult>> {
        for input in inputs {
            self.check_input(input)?;
        }
        let items: Vec<(&RgbImage, &QueryEmbeddings)> =
            inputs.iter().map(|i| (i.image, i.queries)).collect();
        self.run_batch(&items, |i, raw, width, height| {
            self.post_process(&inputs[i], raw, width, height)
        })
    }

    /// What the single-image calls check before running the model.
    fn check_input(&self, input: &DetectInput<'_>) -> Result<()> {
        match input.mode {
            DetectMode::Text { min_objectness } => {
                if !(0.0..=1.0).contains(&min_objectness) {
                    return Err(Error::InvalidInput(format!(
                        "min_objectness must be in [0, 1], got {min_objectness}"
                    )));
                }
                if min_objectness > 0.0 && !self.has_objectness() {
                    return Err(Error::Unsupported {
                        model: self.name.clone(),
                        reason: format!(
                            "min_objectness needs an OWLv2 checkpoint ({} has no objectness head)",
                            self.family.name()
                        ),
                    });
                }
            }
            DetectMode::ImageGuided => {
                if input.queries.is_empty() {
                    return Err(Error::InvalidInput("no queries given".into()));
                }
                let params = input.params;
                if !params.threshold.is_finite() || params.nms_iou.is_nan() {
                    return Err(Error::InvalidInput(format!(
                        "invalid image-guided parameters: threshold {}, NMS IoU {}",
                        params.threshold, params.nms_iou
                    )));
                }
            }
        }
        Ok(())
    }

    /// One image's post-processing, as its mode says.
    fn post_process(
        &self,
        input: &DetectInput<'_>,
        raw: &RawDetections,
        width: u32,
        height: u32,
    ) -> Result<Vec<Detection>> {
        let labels = &input.queries.texts;
        let params = input.params;
        let scale = self.processor.box_scale();
        match input.mode {
            DetectMode::Text { min_objectness } => post_process_raw_detections(
                raw,
                labels,
                params,
                min_objectness,
                scale,
                width,
                height,
            ),
            DetectMode::ImageGuided => {
                let mut detections = post_process_image_guided_detection(
                    raw,
                    labels,
                    params.threshold,
                    params.nms_iou,
                    scale,
                    width,
                    height,
                )?;
                // transformers returns them in box order; ours are by descending score (stable).
                detections.sort_by(|a, b| b.score.total_cmp(&a.score));
                Ok(detections)
            }
        }
    }

    /// Preprocess every image, one batched forward pass ([`Self::forward_batch`]), then
    /// `post(index, raw, width, height)` per image on the host copies of its outputs.
    pub(super) fn run_batch(
        &self,
        items: &[(&RgbImage, &QueryEmbeddings)],
        post: impl Fn(usize, &RawDetections, u32, u32) -> Result<Vec<Detection>>,
    ) -> Result<Vec<DetectionResult>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut preprocess = Vec::with_capacity(items.len());
        let mut pixel_values = Vec::with_capacity(items.len());
        for (image, _) in items {
            let t = Instant::now();
            pixel_values.push(self.pixel_values(image)?);
            preprocess.push(t.elapsed());
        }
        let t = Instant::now();
        let queries: Vec<&QueryEmbeddings> = items.iter().map(|(_, q)| *q).collect();
        let raws = self.forward_batch(pixel_values, &queries)?;
        let forward = t.elapsed();
        items
            .iter()
            .zip(raws)
            .zip(preprocess)
            .enumerate()
            .map(|(i, (((image, _), raw), preprocess))| {
                let t = Instant::now();
                let (width, height) = image.dimensions();
                let detections = post(i, &raw, width, height)?;
                Ok(DetectionResult {
                    width,
                    height,
                    detections,
                    timings: Timings {
                        preprocess,
                        forward,
                        postprocess: t.elapsed(),
                    },
                })
            })
            .collect()
    }

    /// The raw outputs on the host of images preprocessed one by one ((1, 3, S, S) each), the
    /// i-th scored against `queries[i]`: the vision tower, box and objectness heads once on
    /// the stacked batch, the class head once per distinct query tensor.
    fn forward_batch(
        &self,
        pixel_values: Vec<Tensor>,
        queries: &[&QueryEmbeddings],
    ) -> Result<Vec<RawDetections>> {
        let pixel_values = Tensor::cat(&pixel_values, 0)?;
        // (b, patches_h, patches_w, d_vision)
        let feature_map = self.model.image_embedder(&pixel_values)?;
        drop(pixel_values);
        let (b, h, w, d) = feature_map.dims4()?;
        if b != queries.len() {
            return Err(Error::InvalidInput(format!(
                "{b} images but {} query lists",
                queries.len()
            )));
        }
        // (b, patches, d_vision)
        let image_feats = feature_map.reshape((b, h * w, d))?;
        drop(feature_map);
        // (b, patches, 4), (b, patches): on the host once.
        let boxes = self
            .model
            .box_predictor(&image_feats)?
            .to_dtype(DType::F32)?
            .to_vec3::<f32>()?;
        let mut objectness = match self.model.objectness_predictor(&image_feats)? {
            Some(o) => o
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None; b],
        };
        let mut logits: Vec<Option<Vec<Vec<f32>>>> = vec![None; b];
        for group in query_groups(queries) {
            let feats = gather_rows(&image_feats, &group)?;
            // (group, patches, queries)
            let group_logits = self
                .model
                .class_logits(&feats, &queries[group[0]].embeds)?
                .to_dtype(DType::F32)?
                .to_vec3::<f32>()?;
            for (&i, rows) in group.iter().zip(group_logits) {
                logits[i] = Some(rows);
            }
        }
        boxes
            .into_iter()
            .zip(logits)
            .zip(objectness.iter_mut())
            .map(|((boxes, logits), objectness)| {
                Ok(RawDetections {
                    logits: logits.ok_or_else(|| {
                        Error::InvalidInput("an image of the batch has no class logits".into())
                    })?,
                    boxes,
                    objectness_logits: objectness.take(),
                })
            })
            .collect()
    }
}

/// The batch's images grouped by query tensor (the same tensor, e.g. one `Arc`'d vocabulary or
/// its clones, is one group), each group in input order, groups in order of first appearance.
fn query_groups(queries: &[&QueryEmbeddings]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let id = q.embeds.id();
        match groups.iter_mut().find(|g| queries[g[0]].embeds.id() == id) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// Rows `indices` (ascending) of `xs` along dim 0: a narrowed view when they are consecutive,
/// a gathered copy otherwise.
fn gather_rows(xs: &Tensor, indices: &[usize]) -> candle_core::Result<Tensor> {
    let first = indices.first().copied().unwrap_or(0);
    if indices.iter().enumerate().all(|(k, &i)| i == first + k) {
        return xs.narrow(0, first, indices.len());
    }
    let ids: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    xs.index_select(&Tensor::new(ids, xs.device())?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::QueryKind;
    use candle_core::Device;

    fn queries(n: usize) -> QueryEmbeddings {
        QueryEmbeddings {
            texts: (0..n).map(|i| format!("q{i}")).collect(),
            embeds: Tensor::zeros((n, 2), DType::F32, &Device::Cpu).unwrap(),
            truncated: vec![false; n],
            kind: QueryKind::Text,
        }
    }

    #[test]
    fn images_sharing_a_query_tensor_form_one_group() {
        let (a, b) = (queries(1), queries(1));
        let a_clone = a.clone();
        let groups = query_groups(&[&a, &b, &a_clone, &b, &a]);
        assert_eq!(groups, vec![vec![0, 2, 4], vec![1, 3]]);
        assert!(query_groups(&[]).is_empty());
    }

    #[test]
    fn rows_are_narrowed_or_gathered() {
        let xs = Tensor::arange(0f32, 5.0, &Device::Cpu)
            .unwrap()
            .reshape((5, 1))
            .unwrap();
        let rows = |idx: &[usize]| {
            gather_rows(&xs, idx)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(rows(&[1, 2, 3]), vec![1.0, 2.0, 3.0]);
        assert_eq!(rows(&[0, 2, 4]), vec![0.0, 2.0, 4.0]);
        assert_eq!(rows(&[4]), vec![4.0]);
    }
}
