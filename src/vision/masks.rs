//! Segmentation post-processing on plain numbers: logits at the model's input resolution ->
//! probabilities at the original image size -> binary mask and its statistics.
//!
//! transformers ships no post-processing for CLIPSeg; its users write
//! `torch.sigmoid(logits)` and `F.interpolate(..., size=(H, W), mode="bilinear")`. Here that
//! is fixed as: sigmoid at the model resolution, then bilinear resizing of the probabilities
//! with `align_corners=False` and no antialiasing, exactly
//! `F.interpolate(torch.sigmoid(logits)[:, None], size=(H, W), mode="bilinear",
//! align_corners=False)[:, 0]`; then `mask = probabilities > threshold`.

use image::{GrayImage, Luma};

use super::boxes::BBox;
use crate::error::{Error, Result};
use crate::models::interpolate;

/// Mask pixel values: 0 outside, 255 inside.
pub const MASK_OFF: u8 = 0;
pub const MASK_ON: u8 = 255;

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Bilinear resize (align_corners=False, no antialias) of one `in_h x in_w` map to
/// `out_h x out_w`, row-major.
pub fn resize_probabilities(
    probs: &[f32],
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Result<Vec<f32>> {
    if probs.len() != in_h * in_w || in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::InvalidInput(format!(
            "cannot resize a {in_h}x{in_w} map of {} values to {out_h}x{out_w}",
            probs.len()
        )));
    }
    Ok(interpolate::bilinear(
        probs,
        1,
        (in_h, in_w),
        (out_h, out_w),
        false,
    ))
}

/// `probabilities > threshold` as a 0/255 image of `width x height`.
pub fn binary_mask(probs: &[f32], width: u32, height: u32, threshold: f32) -> Result<GrayImage> {
    if probs.len() != width as usize * height as usize {
        return Err(Error::InvalidInput(format!(
            "{} probabilities for a {width}x{height} mask",
            probs.len()
        )));
    }
    let mut mask = GrayImage::new(width, height);
    for (px, &p) in mask.pixels_mut().zip(probs) {
        *px = Luma([if p > threshold { MASK_ON } else { MASK_OFF }]);
    }
    Ok(mask)
}

/// Per-mask statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskStats {
    /// Mask pixels / image pixels, in [0, 1].
    pub area_fraction: f32,
    /// The tightest box around the mask in pixel-edge coordinates: `x_max`/`y_max` are one past
    /// the last mask column/row, so a single pixel at (x, y) is `[x, y, x + 1, y + 1]`.
    /// `None` for an empty mask.
    pub bbox: Option<BBox>,
    /// Mean probability over the mask pixels; 0 for an empty mask.
    pub mean_score: f32,
}

/// Statistics of `mask` (0/255) with the `probs` it was thresholded from (same size).
pub fn mask_stats(probs: &[f32], mask: &GrayImage) -> Result<MaskStats> {
    let (w, h) = mask.dimensions();
    if probs.len() != w as usize * h as usize {
        return Err(Error::InvalidInput(format!(
            "{} probabilities for a {w}x{h} mask",
            probs.len()
        )));
    }
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    let mut count = 0u64;
    let mut sum = 0f64;
    for ((x, y, px), &p) in mask.enumerate_pixels().zip(probs) {
        if px[0] != MASK_OFF {
            count += 1;
            sum += f64::from(p);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    let total = u64::from(w) * u64::from(h);
    Ok(MaskStats {
        area_fraction: if total == 0 {
            0.0
        } else {
            (count as f64 / total as f64) as f32
        },
        bbox: (count > 0).then(|| BBox::from([x0 as f32, y0 as f32, x1 as f32, y1 as f32])),
        mean_score: if count == 0 {
            0.0
        } else {
            (sum / count as f64) as f32
        },
    })
}

/// One prompt's post-processed mask.
#[derive(Debug, Clone)]
pub struct SegmentationMask {
    /// Probabilities at the original size, `height * width`, row-major.
    pub probabilities: Vec<f32>,
    /// 0/255 at the original size.
    pub mask: GrayImage,
    pub stats: MaskStats,
}

/// Post-processes one prompt's `logits` (`logits_hw`, row-major) for an original image of
/// `width x height`: sigmoid, bilinear resize, threshold, statistics (see the module docs).
pub fn post_process_segmentation(
    logits: &[f32],
    logits_hw: (usize, usize),
    width: u32,
    height: u32,
    threshold: f32,
) -> Result<SegmentationMask> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Error::InvalidInput(format!(
            "mask threshold must be in [0, 1], got {threshold}"
        )));
    }
    let probs: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
    let probabilities = resize_probabilities(&probs, logits_hw, (height as usize, width as usize))?;
    let mask = binary_mask(&probabilities, width, height, threshold)?;
    let stats = mask_stats(&probabilities, &mask)?;
    Ok(SegmentationMask {
        probabilities,
        mask,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_matches_torch_bilinear() {
        // torch 2.11: F.interpolate(torch.tensor([[[[0.1, 0.9], [0.4, 0.6]]]]), size=(3, 5),
        //             mode="bilinear", align_corners=False)
        let torch = [
            0.1, 0.18, 0.5, 0.82, 0.9, 0.25, 0.3, 0.5, 0.7, 0.75, 0.4, 0.42, 0.5, 0.58, 0.6,
        ];
        let ours = resize_probabilities(&[0.1, 0.9, 0.4, 0.6], (2, 2), (3, 5)).unwrap();
        for (a, b) in ours.iter().zip(torch) {
            assert!((a - b).abs() < 1e-6, "{ours:?}");
        }
    }

    #[test]
    fn stats_of_a_known_mask() {
        // 4x3 image; pixels (1,0), (2,0), (2,1) above 0.5.
        let probs = [
            0.1, 0.6, 0.9, 0.2, //
            0.0, 0.5, 0.7, 0.4, //
            0.3, 0.2, 0.1, 0.0,
        ];
        let mask = binary_mask(&probs, 4, 3, 0.5).unwrap();
        assert_eq!(mask.get_pixel(1, 0)[0], MASK_ON);
        assert_eq!(mask.get_pixel(1, 1)[0], MASK_OFF, "0.5 is not above 0.5");
        let s = mask_stats(&probs, &mask).unwrap();
        assert_eq!(s.area_fraction, 3.0 / 12.0);
        assert_eq!(s.bbox, Some(BBox::from([1.0, 0.0, 3.0, 2.0])));
        assert!((s.mean_score - (0.6 + 0.9 + 0.7) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn empty_mask_has_no_box() {
        let probs = [0.1f32; 6];
        let mask = binary_mask(&probs, 3, 2, 0.5).unwrap();
        let s = mask_stats(&probs, &mask).unwrap();
        assert_eq!(s.area_fraction, 0.0);
        assert_eq!(s.bbox, None);
        assert_eq!(s.mean_score, 0.0);
    }

    #[test]
    fn post_process_rejects_bad_thresholds_and_sizes() {
        assert!(post_process_segmentation(&[0.0; 4], (2, 2), 3, 3, 1.5).is_err());
        assert!(post_process_segmentation(&[0.0; 3], (2, 2), 3, 3, 0.5).is_err());
        let m = post_process_segmentation(&[10.0, -10.0, 10.0, -10.0], (2, 2), 4, 4, 0.5).unwrap();
        assert_eq!(m.mask.dimensions(), (4, 4));
        // The left half is on.
        let s = m.stats;
        assert_eq!(s.area_fraction, 0.5);
        assert_eq!(s.bbox, Some(BBox::from([0.0, 0.0, 2.0, 4.0])));
    }
}
