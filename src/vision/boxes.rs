//! Box formats, IoU and non-maximum suppression (the helpers of transformers'
//! `image_transforms` and `loss_for_object_detection`, torchvision's `batched_nms`, and the NMS
//! of OWL-ViT's `post_process_image_guided_detection`), on plain numbers.

use serde::{Deserialize, Serialize};

/// An axis-aligned box in (x_min, y_min, x_max, y_max) pixel coordinates; serialized as that
/// array.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "[f32; 4]", from = "[f32; 4]")]
pub struct BBox {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl From<BBox> for [f32; 4] {
    fn from(b: BBox) -> Self {
        b.to_array()
    }
}

impl From<[f32; 4]> for BBox {
    fn from([x_min, y_min, x_max, y_max]: [f32; 4]) -> Self {
        Self {
            x_min,
            y_min,
            x_max,
            y_max,
        }
    }
}

impl BBox {
    /// transformers' `center_to_corners_format` for one normalized (cx, cy, w, h) box, then
    /// scaled to an image of `width` x `height` (as `_scale_boxes`; not clamped).
    pub fn from_center_normalized(cxcywh: [f32; 4], width: f32, height: f32) -> Self {
        let [cx, cy, w, h] = cxcywh;
        Self {
            x_min: (cx - 0.5 * w) * width,
            y_min: (cy - 0.5 * h) * height,
            x_max: (cx + 0.5 * w) * width,
            y_max: (cy + 0.5 * h) * height,
        }
    }

    pub fn to_array(self) -> [f32; 4] {
        [self.x_min, self.y_min, self.x_max, self.y_max]
    }

    pub fn width(&self) -> f32 {
        self.x_max - self.x_min
    }

    pub fn height(&self) -> f32 {
        self.y_max - self.y_min
    }

    pub fn center(&self) -> (f32, f32) {
        (
            0.5 * (self.x_min + self.x_max),
            0.5 * (self.y_min + self.y_max),
        )
    }

    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Intersection over union; 0 for degenerate boxes.
    pub fn iou(&self, other: &Self) -> f32 {
        let (inter, union) = self.intersection_union(other);
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }

    /// Generalized IoU (<https://giou.stanford.edu/>, transformers' `generalized_box_iou`):
    /// the IoU minus the fraction of the smallest enclosing box that the union leaves empty, in
    /// [-1, 1]. 0 for degenerate boxes.
    pub fn generalized_iou(&self, other: &Self) -> f32 {
        let (inter, union) = self.intersection_union(other);
        let cw = (self.x_max.max(other.x_max) - self.x_min.min(other.x_min)).max(0.0);
        let ch = (self.y_max.max(other.y_max) - self.y_min.min(other.y_min)).max(0.0);
        let enclosing = cw * ch;
        if union > 0.0 && enclosing > 0.0 {
            inter / union - (enclosing - union) / enclosing
        } else {
            0.0
        }
    }

    /// (intersection, union) areas, in transformers' `box_iou` operation order (so that IoUs
    /// compared with a threshold land on the same side as torch's).
    fn intersection_union(&self, other: &Self) -> (f32, f32) {
        let iw = (self.x_max.min(other.x_max) - self.x_min.max(other.x_min)).max(0.0);
        let ih = (self.y_max.min(other.y_max) - self.y_min.max(other.y_min)).max(0.0);
        let inter = iw * ih;
        (inter, self.area() + other.area() - inter)
    }
}

/// Greedy NMS within each class (torchvision's `batched_nms`): returns the indices of the kept
/// boxes, by descending score. `iou_threshold >= 1` keeps everything.
pub fn batched_nms(
    boxes: &[BBox],
    scores: &[f32],
    classes: &[usize],
    iou_threshold: f32,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    if iou_threshold >= 1.0 {
        return order;
    }
    let mut keep: Vec<usize> = Vec::with_capacity(order.len());
    for &i in &order {
        let suppressed = keep
            .iter()
            .any(|&k| classes[k] == classes[i] && boxes[k].iou(&boxes[i]) > iou_threshold);
        if !suppressed {
            keep.push(i);
        }
    }
    keep
}

/// The NMS of transformers' `post_process_image_guided_detection` (OWL-ViT and OWLv2), in
/// place: boxes are visited once by descending score (the order of the scores as given); a box
/// whose score is still non-zero zeroes the score of every other box overlapping it by IoU
/// `> iou_threshold`, whatever their query. `iou_threshold >= 1` does nothing, as transformers
/// skips the NMS for `nms_threshold >= 1`. The IoUs are those of `boxes` as given
/// (transformers: the normalized corners, before scaling to the image).
pub fn suppress_overlapping_scores(boxes: &[BBox], scores: &mut [f32], iou_threshold: f32) {
    if iou_threshold >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    for i in order {
        if scores[i] == 0.0 {
            continue;
        }
        for (j, other) in boxes.iter().enumerate() {
            if j != i && boxes[i].iou(other) > iou_threshold {
                scores[j] = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: f32, y0: f32, x1: f32, y1: f32) -> BBox {
        BBox {
            x_min: x0,
            y_min: y0,
            x_max: x1,
            y_max: y1,
        }
    }

    #[test]
    fn center_to_corners_scales_to_pixels() {
        let bb = BBox::from_center_normalized([0.5, 0.25, 0.2, 0.5], 200.0, 100.0);
        for (a, b) in bb.to_array().iter().zip([80.0, 0.0, 120.0, 50.0]) {
            assert!((a - b).abs() < 1e-4, "{:?}", bb);
        }
    }

    #[test]
    fn iou_of_half_overlapping_boxes() {
        let iou = b(0.0, 0.0, 2.0, 1.0).iou(&b(1.0, 0.0, 3.0, 1.0));
        assert!((iou - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(b(0.0, 0.0, 0.0, 0.0).iou(&b(0.0, 0.0, 0.0, 0.0)), 0.0);
    }

    #[test]
    fn generalized_iou_penalises_the_empty_enclosure() {
        let unit = b(0.0, 0.0, 1.0, 1.0);
        // Identical boxes: 1; disjoint boxes: negative, by the empty part of the enclosure.
        assert_eq!(unit.generalized_iou(&unit), 1.0);
        let g = unit.generalized_iou(&b(2.0, 0.0, 3.0, 1.0));
        assert!((g - (0.0 - (3.0 - 2.0) / 3.0)).abs() < 1e-6, "{g}");
        let half = b(0.0, 0.0, 2.0, 1.0).generalized_iou(&b(1.0, 0.0, 3.0, 1.0));
        assert!((half - 1.0 / 3.0).abs() < 1e-6, "{half}");
    }

    #[test]
    fn image_guided_nms_zeroes_overlaps_of_any_query() {
        let boxes = [
            b(0., 0., 10., 10.),
            b(1., 1., 10., 10.),
            b(50., 50., 60., 60.),
            b(0., 0., 9., 10.),
        ];
        let mut scores = [0.8, 0.9, 0.7, 0.0];
        suppress_overlapping_scores(&boxes, &mut scores, 0.3);
        // Box 1 (best) zeroes box 0; box 3 was already 0; box 2 overlaps nothing.
        assert_eq!(scores, [0.0, 0.9, 0.7, 0.0]);
        let mut kept = [0.8, 0.9, 0.7, 0.1];
        suppress_overlapping_scores(&boxes, &mut kept, 1.0);
        assert_eq!(kept, [0.8, 0.9, 0.7, 0.1]);
    }

    #[test]
    fn nms_suppresses_within_a_class_only() {
        let boxes = [
            b(0., 0., 10., 10.),
            b(1., 1., 10., 10.),
            b(0., 0., 10., 10.),
            b(50., 50., 60., 60.),
        ];
        let scores = [0.9, 0.8, 0.7, 0.6];
        let classes = [0, 0, 1, 0];
        assert_eq!(batched_nms(&boxes, &scores, &classes, 0.5), vec![0, 2, 3]);
        assert_eq!(
            batched_nms(&boxes, &scores, &classes, 1.0),
            vec![0, 1, 2, 3]
        );
    }
}
