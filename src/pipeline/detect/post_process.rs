//! Post-processing of detection outputs on the host, as transformers' image processors do it
//! (`post_process_object_detection`, `post_process_image_guided_detection`), plus our options
//! (objectness gate, per-query NMS, the best box per query). Pure functions of one image's
//! [`RawDetections`]; no tensors.

use crate::error::{Error, Result};
use crate::pipeline::types::Detection;
use crate::vision::{
    boxes::{batched_nms, suppress_overlapping_scores, BBox},
    masks::sigmoid,
};

use super::DetectParams;

/// `post_process_image_guided_detection`: added to the best score before it scales the others.
const IMAGE_GUIDED_MAX_SCORE_EPS: f32 = 1e-6;
/// `post_process_image_guided_detection`: the fraction of the best score that maps to alpha 0
/// ("the best box for each query has alpha 1.0 and the worst box has alpha 0.1").
const IMAGE_GUIDED_ALPHA_FLOOR: f32 = 0.1;

/// How normalised (cx, cy, w, h) boxes are scaled to original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxScale {
    /// `OwlViTImageProcessor`: x by the width, y by the height.
    ImageSize,
    /// `Owlv2ImageProcessor` (`_scale_boxes`): both axes by max(H, W), the side of the padded
    /// square the model saw (transformers does so whether or not `do_pad` is set).
    PaddedSquare,
}

impl BoxScale {
    /// The (x, y) factors for an image of `width` x `height`.
    pub fn factors(self, width: u32, height: u32) -> (f32, f32) {
        match self {
            Self::ImageSize => (width as f32, height as f32),
            Self::PaddedSquare => {
                let side = width.max(height) as f32;
                (side, side)
            }
        }
    }
}

/// One image's raw outputs on the host: what post-processing reads.
#[derive(Debug, Clone, Default)]
pub struct RawDetections {
    /// (patches, queries) class logits.
    pub logits: Vec<Vec<f32>>,
    /// (patches, 4) normalized (cx, cy, w, h).
    pub boxes: Vec<Vec<f32>>,
    /// (patches,) objectness logits; OWLv2 only.
    pub objectness_logits: Option<Vec<f32>>,
}

/// transformers' `OwlViTImageProcessor.post_process_object_detection` for one image, plus
/// optional per-query NMS: per box the best query, its sigmoid score, (cx, cy, w, h) -> corners
/// scaled to the original `width` x `height` (not clamped); boxes with score > threshold, by
/// descending score.
pub fn post_process_object_detection(
    logits: &[Vec<f32>],
    boxes: &[Vec<f32>],
    labels: &[String],
    params: &DetectParams,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    let raw = RawDetections {
        logits: logits.to_vec(),
        boxes: boxes.to_vec(),
        objectness_logits: None,
    };
    post_process_raw_detections(
        &raw,
        labels,
        params,
        0.0,
        BoxScale::ImageSize,
        width,
        height,
    )
}

/// `post_process_object_detection` of either family for one image, plus our options: per box
/// the best query (the first maximum, as torch.max), its sigmoid score, (cx, cy, w, h) ->
/// corners scaled by `scale` (not clamped), the objectness sigmoid when the outputs have one;
/// boxes with score > `params.threshold` and, when `min_objectness > 0`, objectness >
/// `min_objectness`; then per-query NMS (`params.nms_iou`); by descending score.
pub fn post_process_raw_detections(
    raw: &RawDetections,
    labels: &[String],
    params: &DetectParams,
    min_objectness: f32,
    scale: BoxScale,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    check_rows(raw)?;
    let (sx, sy) = scale.factors(width, height);
    let mut candidates = Vec::new();
    for (i, (row, b)) in raw.logits.iter().zip(&raw.boxes).enumerate() {
        let Some((query_index, &logit)) = row
            .iter()
            .enumerate()
            // torch.max returns the first maximum.
            .reduce(|best, cur| if cur.1 > best.1 { cur } else { best })
        else {
            continue;
        };
        let score = sigmoid(logit);
        if score <= params.threshold {
            continue;
        }
        let objectness = raw.objectness_logits.as_ref().map(|o| sigmoid(o[i]));
        if min_objectness > 0.0 && objectness.is_some_and(|o| o <= min_objectness) {
            continue;
        }
        let label = labels
            .get(query_index)
            .ok_or_else(|| Error::InvalidInput(format!("query {query_index} has no label")))?;
        candidates.push(
            Detection::new(query_index, label.as_str(), score, corners(b, sx, sy)?)
                .with_objectness(objectness),
        );
    }
    let bboxes: Vec<BBox> = candidates.iter().map(|d| d.bbox).collect();
    let scores: Vec<f32> = candidates.iter().map(|d| d.score).collect();
    let classes: Vec<usize> = candidates.iter().map(|d| d.query_index).collect();
    let keep = batched_nms(&bboxes, &scores, &classes, params.nms_iou);
    Ok(keep.into_iter().map(|i| candidates[i].clone()).collect())
}

/// For each query (column of the logits), the box with the highest logit for it (the first on
/// ties, as torch.max), scored by its sigmoid; corners scaled by `scale`, with the box's
/// objectness when the outputs have one. Queries in order; a query is absent only when there
/// are no boxes.
pub fn best_box_per_query(
    raw: &RawDetections,
    labels: &[String],
    scale: BoxScale,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    check_rows(raw)?;
    let (sx, sy) = scale.factors(width, height);
    let mut best = Vec::with_capacity(labels.len());
    for (query_index, label) in labels.iter().enumerate() {
        let mut top: Option<(usize, f32)> = None;
        for (i, row) in raw.logits.iter().enumerate() {
            let logit = *row.get(query_index).ok_or_else(|| {
                Error::InvalidInput(format!("logit row {i} has no query {query_index}"))
            })?;
            if top.is_none_or(|(_, t)| logit > t) {
                top = Some((i, logit));
            }
        }
        let Some((i, logit)) = top else { continue };
        let objectness = raw.objectness_logits.as_ref().map(|o| sigmoid(o[i]));
        best.push(
            Detection::new(
                query_index,
                label.as_str(),
                sigmoid(logit),
                corners(&raw.boxes[i], sx, sy)?,
            )
            .with_objectness(objectness),
        );
    }
    Ok(best)
}

/// transformers' `post_process_image_guided_detection(outputs, threshold, nms_threshold,
/// target_sizes)` for one image (OWL-ViT's and OWLv2's differ only in `scale`): per box the
/// best query (the first maximum) and its sigmoid score; a greedy NMS by descending score over
/// all boxes that zeroes the scores of boxes overlapping a kept one by IoU `> nms_threshold`
/// (on the normalized corners; none when `nms_threshold >= 1`); nothing when every score is
/// then 0; scores `< threshold` set to 0; then the display alphas `clip((s - 0.1 m) / (0.9 m),
/// 0, 1)` with `m` the best score + 1e-6, keeping boxes with alpha > 0. Returns them in box
/// (patch) order as transformers does, alpha as the score, `query_index` the best query,
/// corners scaled by `scale` to the `width` x `height` image (not clamped); no objectness.
pub fn post_process_image_guided_detection(
    raw: &RawDetections,
    labels: &[String],
    threshold: f32,
    nms_threshold: f32,
    scale: BoxScale,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    check_rows(raw)?;
    // probs = torch.max(logits, dim=-1): the first maximum.
    let best: Vec<(usize, f32)> = raw
        .logits
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .copied()
                .enumerate()
                .reduce(|best, cur| if cur.1 > best.1 { cur } else { best })
                .map(|(q, logit)| (q, sigmoid(logit)))
                .ok_or_else(|| Error::InvalidInput(format!("logit row {i} has no queries")))
        })
        .collect::<Result<_>>()?;
    let normalized: Vec<BBox> = raw
        .boxes
        .iter()
        .map(|b| corners(b, 1.0, 1.0))
        .collect::<Result<_>>()?;
    let mut scores: Vec<f32> = best.iter().map(|&(_, s)| s).collect();
    suppress_overlapping_scores(&normalized, &mut scores, nms_threshold);
    if scores.iter().all(|&s| s == 0.0) {
        return Ok(Vec::new());
    }
    for s in &mut scores {
        if *s < threshold {
            *s = 0.0;
        }
    }
    let max_score =
        scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) + IMAGE_GUIDED_MAX_SCORE_EPS;
    let floor = max_score * IMAGE_GUIDED_ALPHA_FLOOR;
    let span = max_score * (1.0 - IMAGE_GUIDED_ALPHA_FLOOR);
    let (sx, sy) = scale.factors(width, height);
    let mut detections = Vec::new();
    for (i, (&score, &(query_index, _))) in scores.iter().zip(&best).enumerate() {
        let alpha = ((score - floor) / span).clamp(0.0, 1.0);
        if alpha > 0.0 {
            let label = labels
                .get(query_index)
                .ok_or_else(|| Error::InvalidInput(format!("query {query_index} has no label")))?;
            detections.push(Detection::new(
                query_index,
                label.as_str(),
                alpha,
                corners(&raw.boxes[i], sx, sy)?,
            ));
        }
    }
    Ok(detections)
}

/// Checks that logits, boxes and objectness have one row per box.
fn check_rows(raw: &RawDetections) -> Result<()> {
    let n = raw.boxes.len();
    let objectness = raw.objectness_logits.as_ref().map_or(n, Vec::len);
    if raw.logits.len() != n || objectness != n {
        return Err(Error::InvalidInput(format!(
            "{} logit rows and {objectness} objectness values for {n} boxes",
            raw.logits.len()
        )));
    }
    Ok(())
}

/// `center_to_corners_format` of one normalized (cx, cy, w, h) box, scaled by (sx, sy).
fn corners(b: &[f32], sx: f32, sy: f32) -> Result<BBox> {
    let &[cx, cy, w, h] = b else {
        return Err(Error::InvalidInput(format!("box with {} values", b.len())));
    };
    Ok(BBox::from_center_normalized([cx, cy, w, h], sx, sy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn padded_square_scales_both_axes_by_the_longer_side() {
        assert_eq!(BoxScale::PaddedSquare.factors(20, 64), (64.0, 64.0));
        assert_eq!(BoxScale::PaddedSquare.factors(451, 300), (451.0, 451.0));
        assert_eq!(BoxScale::ImageSize.factors(451, 300), (451.0, 300.0));
    }

    #[test]
    fn min_objectness_gates_candidates_before_nms() {
        // Two overlapping boxes of query 0: the better-scored one is no object. Gated first, it
        // cannot suppress the other.
        let raw = RawDetections {
            logits: vec![vec![3.0, 0.0], vec![2.0, 0.0]],
            boxes: vec![vec![0.5, 0.5, 0.2, 0.2], vec![0.51, 0.5, 0.2, 0.2]],
            objectness_logits: Some(vec![-3.0, 3.0]),
        };
        let params = DetectParams {
            threshold: 0.0,
            nms_iou: 0.5,
        };
        let run = |min| {
            post_process_raw_detections(
                &raw,
                &labels(),
                &params,
                min,
                BoxScale::PaddedSquare,
                100,
                50,
            )
            .unwrap()
        };
        let all = run(0.0);
        assert_eq!(all.len(), 1, "NMS keeps the better box");
        assert_eq!(all[0].objectness, Some(sigmoid(-3.0)));
        // scaled by 100 on both axes
        for (a, b) in all[0].bbox.to_array().iter().zip([40.0, 40.0, 60.0, 60.0]) {
            assert!((a - b).abs() < 1e-4, "{:?}", all[0].bbox);
        }
        let kept = run(0.5);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].objectness, Some(sigmoid(3.0)));
        assert_eq!(kept[0].score, sigmoid(2.0));
    }

    #[test]
    fn owlvit_outputs_have_no_objectness() {
        let logits = vec![vec![1.0, 2.0]];
        let boxes = vec![vec![0.5, 0.5, 1.0, 1.0]];
        let d = post_process_object_detection(
            &logits,
            &boxes,
            &labels(),
            &DetectParams::default(),
            40,
            20,
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].query_index, d[0].objectness), (1, None));
        assert_eq!(d[0].bbox.to_array(), [0.0, 0.0, 40.0, 20.0]);
        let json = serde_json::to_string(&d[0]).unwrap();
        assert!(!json.contains("objectness"), "{json}");
    }

    #[test]
    fn image_guided_alphas_scale_by_the_best_score_after_nms() {
        // Box 1 (query 1) overlaps box 0 and beats it; box 2 stands apart; box 3 scores low.
        let raw = RawDetections {
            logits: vec![
                vec![1.0, 0.0],
                vec![0.0, 2.0],
                vec![0.5, 0.0],
                vec![-3.0, -4.0],
            ],
            boxes: vec![
                vec![0.5, 0.5, 0.2, 0.2],
                vec![0.51, 0.5, 0.2, 0.2],
                vec![0.1, 0.1, 0.1, 0.1],
                vec![0.9, 0.9, 0.1, 0.1],
            ],
            objectness_logits: None,
        };
        let run = |threshold, nms| {
            post_process_image_guided_detection(
                &raw,
                &labels(),
                threshold,
                nms,
                BoxScale::ImageSize,
                200,
                100,
            )
            .unwrap()
        };
        let alpha = |s: f32, best: f32| {
            let m = best + IMAGE_GUIDED_MAX_SCORE_EPS;
            ((s - 0.1 * m) / (0.9 * m)).clamp(0.0, 1.0)
        };
        let best = sigmoid(2.0);
        let kept = run(0.0, 0.3);
        // In box order: box 0 suppressed, box 3's alpha (sigmoid(-3) < 0.1 * best) is 0.
        let got: Vec<(usize, &str, f32)> = kept
            .iter()
            .map(|d| (d.query_index, d.label.as_str(), d.score))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].1), (1, "b"));
        assert!((got[0].2 - alpha(best, best)).abs() < 1e-6);
        assert_eq!((got[1].0, got[1].1), (0, "a"));
        assert!((got[1].2 - alpha(sigmoid(0.5), best)).abs() < 1e-6);
        // Boxes scale by (W, H), not clamped.
        for (a, b) in kept[1].bbox.to_array().iter().zip([10.0, 5.0, 30.0, 15.0]) {
            assert!((a - b).abs() < 1e-4, "{:?}", kept[1].bbox);
        }
        // Without NMS box 0 comes back; a threshold above its score zeroes it again.
        assert_eq!(run(0.0, 1.0).len(), 3);
        assert_eq!(run(sigmoid(1.0) + 1e-3, 1.0).len(), 1);
        // Every score zeroed by the threshold: no box has a positive alpha.
        assert!(run(0.99, 1.0).is_empty());
    }

    #[test]
    fn mismatched_rows_are_an_error() {
        let raw = RawDetections {
            logits: vec![vec![1.0]],
            boxes: vec![vec![0.5, 0.5, 1.0, 1.0]],
            objectness_logits: Some(vec![]),
        };
        let err = post_process_raw_detections(
            &raw,
            &labels(),
            &DetectParams::default(),
            0.0,
            BoxScale::PaddedSquare,
            1,
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("0 objectness values"), "{err}");
    }
}
