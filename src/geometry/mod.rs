//! Geometry on an aligned depth image, beyond one point per object: per-object point clouds
//! ([`cloud`]) and grasp / place poses from a local plane fit and the mask's shape ([`grasp`]).
//!
//! Everything is in the colour camera's optical frame (REP 103: x right, y down, z forward),
//! metres; the caller transforms into its target frame. Boxes, masks and pixels are in the crate's
//! image coordinates (pixel `i` spans `[i, i + 1)`, see [`crate::vision::camera`]); the depth image
//! is registered to the colour camera, at its resolution or another (as in
//! [`crate::vision::depth`]).

pub mod cloud;
pub mod fit;
pub mod grasp;

pub use cloud::{
    object_points, pack_cloud, transform_points, voxel_downsample, CloudField, CloudObject,
    CloudParams, PackedCloud, POINT_FIELD_FLOAT32, POINT_FIELD_UINT32,
};
pub use fit::{mask_axes, plane_fit, MaskAxes, PlaneFit};
pub use grasp::{grasp_pose, GraspParams, GraspPose, GraspTarget};

use image::{GrayImage, Luma};

use crate::vision::boxes::BBox;
use crate::vision::camera::centres_within;
use crate::vision::depth::{percentile, DepthPixel, DepthSampling};
use crate::vision::masks::MASK_OFF;

/// `mask` with everything outside `bbox` cleared: a phrase's segmentation mask covers every
/// instance of the phrase, so one detection's pixels are those inside its box.
pub fn mask_in_box(mask: &GrayImage, bbox: &BBox) -> GrayImage {
    let (w, h) = mask.dimensions();
    let cols = centres_within(f64::from(bbox.x_min), f64::from(bbox.x_max), w);
    let rows = centres_within(f64::from(bbox.y_min), f64::from(bbox.y_max), h);
    GrayImage::from_fn(w, h, |x, y| {
        if cols.contains(&x) && rows.contains(&y) {
            *mask.get_pixel(x, y)
        } else {
            Luma([MASK_OFF])
        }
    })
}

/// Keeps the pixels whose depth lies between the sampling's near and far percentiles (the
/// 10th-90th by default): flying pixels at edges and background under a mask's border fall
/// outside, as they fall outside the near and far faces of [`crate::vision::depth::DepthStats`].
pub(crate) fn drop_depth_outliers(pixels: &mut Vec<DepthPixel>, sampling: &DepthSampling) {
    if pixels.is_empty() {
        return;
    }
    let mut zs: Vec<f32> = pixels.iter().map(|p| p.z).collect();
    let near = percentile(&mut zs, sampling.near_percentile);
    let far = percentile(&mut zs, sampling.far_percentile);
    pixels.retain(|p| (near..=far).contains(&f64::from(p.z)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::masks::MASK_ON;

    #[test]
    fn mask_in_box_keeps_one_instance() {
        let mask = GrayImage::from_pixel(8, 6, Luma([MASK_ON]));
        let one = mask_in_box(&mask, &BBox::from([2.0, 1.0, 5.0, 3.0]));
        let on: Vec<(u32, u32)> = one
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] != MASK_OFF)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert_eq!(on, [(2, 1), (3, 1), (4, 1), (2, 2), (3, 2), (4, 2)]);
    }

    #[test]
    fn outlier_rule_keeps_the_10th_to_90th_percentile() {
        // 0.90, 0.91, ..., 1.10 m: the 10th/90th percentiles are 0.92 and 1.08.
        let mut px: Vec<DepthPixel> = (0..21)
            .map(|i| DepthPixel {
                x: i,
                y: 0,
                z: 0.9 + 0.01 * i as f32,
            })
            .collect();
        drop_depth_outliers(&mut px, &DepthSampling::default());
        let xs: Vec<u32> = px.iter().map(|p| p.x).collect();
        assert_eq!(xs, (2..=18).collect::<Vec<_>>());
    }
}
