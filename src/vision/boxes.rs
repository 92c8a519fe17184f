//! Box formats and non-maximum suppression (the helpers of transformers' `image_transforms`
//! and torchvision's `batched_nms`), on plain numbers.

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
        let iw = (self.x_max.min(other.x_max) - self.x_min.max(other.x_min)).max(0.0);
        let ih = (self.y_max.min(other.y_max) - self.y_min.max(other.y_min)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
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
