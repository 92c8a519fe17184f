//! What task planners ask of the perception, built from the models' outputs:
//! - SayCan-style affordances (Ahn et al. 2022, <https://say-can.github.io>): per object phrase,
//!   how likely the object is visible (the best detection score for that phrase) and the
//!   tabletop scene line its prompts use (`objects = [red block, blue bowl]`);
//! - CLIPort-style grounding (Shridhar et al. 2021, <https://cliport.github.io>): the pixel
//!   where to act on a phrase's object - the peak of its segmentation probability inside its
//!   best box - and, with an aligned depth image, the 3D point there.
//!
//! Plain numbers in, plain numbers out: the models run in [`super::Detector`] and
//! [`super::Segmenter`], the geometry is [`crate::vision::depth`].

use nalgebra::Point3;

use super::types::Detection;
use crate::error::{Error, Result};
use crate::vision::boxes::BBox;
use crate::vision::camera::{image_to_pixel, PinholeCamera};
use crate::vision::depth::{
    locate_object, robust_depth, DepthImage, DepthSampling, Object3d, ObjectRegion,
};
use crate::vision::peak::{smoothed_peak, DEFAULT_PEAK_RADIUS};

/// Half the side, in colour pixels, of the window whose median depth places a grounded pixel:
/// the same neighbourhood the probability peak was smoothed over.
pub const POINT_DEPTH_RADIUS: u32 = DEFAULT_PEAK_RADIUS;

/// An aligned depth image and the colour camera it is registered to.
pub struct DepthContext<'a> {
    pub camera: &'a PinholeCamera,
    pub depth: &'a DepthImage,
    pub sampling: &'a DepthSampling,
}

impl DepthContext<'_> {
    /// The object's 3D centre and extent: depth under `mask` (colour resolution) when given,
    /// else under the central part of the detection's box. `None` when too little valid depth.
    pub fn locate(
        &self,
        detection: &Detection,
        mask: Option<&image::GrayImage>,
    ) -> Result<Option<Object3d>> {
        let region = match mask {
            Some(m) => ObjectRegion::Mask(m),
            None => ObjectRegion::Box(detection.bbox),
        };
        locate_object(self.camera, self.depth, region, self.sampling)
    }

    /// The 3D point at colour-image coordinates `(x, y)` (pixel `i` spans `[i, i + 1)`): the
    /// median valid depth in a small window around it, back-projected.
    pub fn point_at(&self, x: f64, y: f64) -> Result<Option<Point3<f64>>> {
        let r = POINT_DEPTH_RADIUS as f32 + 0.5;
        let window = BBox {
            x_min: x as f32 - r,
            y_min: y as f32 - r,
            x_max: x as f32 + r,
            y_max: y as f32 + r,
        };
        let sampling = DepthSampling {
            box_centre_fraction: 1.0,
            ..*self.sampling
        };
        let colour = (self.camera.width, self.camera.height);
        let Some(stats) = robust_depth(self.depth, colour, ObjectRegion::Box(window), &sampling)?
        else {
            return Ok(None);
        };
        let (u, v) = image_to_pixel(x, y);
        Ok(Some(self.camera.back_project(u, v, stats.median)))
    }
}

/// One phrase's affordance.
#[derive(Debug, Clone, PartialEq)]
pub struct PhraseScore {
    pub phrase: String,
    /// The best detection score of the phrase, in [0, 1] (0 when the image has no boxes).
    pub score: f32,
    /// `score > threshold`.
    pub found: bool,
    /// The box that scored best for the phrase.
    pub detection: Option<Detection>,
}

/// Affordances from [`super::Detector::best_per_query`]'s detections (one per phrase, by
/// `query_index`).
pub fn phrase_scores(best: &[Detection], phrases: &[String], threshold: f32) -> Vec<PhraseScore> {
    phrases
        .iter()
        .enumerate()
        .map(|(i, phrase)| {
            let detection = best.iter().find(|d| d.query_index == i).cloned();
            let score = detection.as_ref().map_or(0.0, |d| d.score);
            PhraseScore {
                phrase: phrase.clone(),
                score,
                found: score > threshold,
                detection,
            }
        })
        .collect()
}

/// The found phrases in SayCan's tabletop prompt form, in request order:
/// `objects = [red block, blue bowl]`.
pub fn scene_description(scores: &[PhraseScore]) -> String {
    let found: Vec<&str> = scores
        .iter()
        .filter(|s| s.found)
        .map(|s| s.phrase.as_str())
        .collect();
    format!("objects = [{}]", found.join(", "))
}

/// Where to act on a detected object.
#[derive(Debug, Clone, PartialEq)]
pub struct ActPixel {
    /// Colour-image coordinates (pixel `i` spans `[i, i + 1)`).
    pub x: f64,
    pub y: f64,
    /// The smoothed segmentation probability there; `None` when no probability map was given
    /// (the pixel is then the box centre).
    pub probability: Option<f32>,
}

/// The pixel where to act on `detection`: the peak of the box-filtered `probabilities` (the
/// phrase's segmentation map at the image's `width` x `height`) inside its box - a smoothed
/// argmax, not a single noisy pixel - or the box centre (clamped to the image) without a map.
pub fn act_pixel(
    detection: &Detection,
    probabilities: Option<&[f32]>,
    width: u32,
    height: u32,
) -> Result<ActPixel> {
    let b = &detection.bbox;
    if let Some(probs) = probabilities {
        if let Some((x, y, p)) = smoothed_peak(probs, width, height, b, DEFAULT_PEAK_RADIUS)? {
            return Ok(ActPixel {
                x,
                y,
                probability: Some(p),
            });
        }
    }
    if width == 0 || height == 0 {
        return Err(Error::InvalidInput(format!(
            "image of {width}x{height} pixels"
        )));
    }
    let clamp = |v: f32, hi: u32| f64::from(v).clamp(0.0, f64::from(hi));
    Ok(ActPixel {
        x: clamp((b.x_min + b.x_max) / 2.0, width),
        y: clamp((b.y_min + b.y_max) / 2.0, height),
        probability: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(query_index: usize, score: f32, bbox: [f32; 4]) -> Detection {
        Detection::new(
            query_index,
            format!("q{query_index}"),
            score,
            BBox::from(bbox),
        )
    }

    #[test]
    fn scores_follow_the_request_order_and_the_threshold() {
        let phrases: Vec<String> = ["red block", "blue bowl", "green cup"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let best = vec![det(1, 0.7, [0.; 4]), det(0, 0.05, [0.; 4])];
        let s = phrase_scores(&best, &phrases, 0.1);
        assert_eq!(
            s.iter()
                .map(|p| (p.phrase.as_str(), p.score, p.found))
                .collect::<Vec<_>>(),
            [
                ("red block", 0.05, false),
                ("blue bowl", 0.7, true),
                ("green cup", 0.0, false)
            ]
        );
        assert!(s[2].detection.is_none());
        assert_eq!(scene_description(&s), "objects = [blue bowl]");
        assert_eq!(scene_description(&[]), "objects = []");
    }

    #[test]
    fn act_pixel_is_the_smoothed_peak_inside_the_box_else_its_centre() {
        let (w, h) = (40u32, 30u32);
        let mut probs = vec![0.1f32; (w * h) as usize];
        // a blob at (25, 12) inside the box, a brighter single pixel outside it
        for y in 10..15 {
            for x in 23..28 {
                probs[(y * w + x) as usize] = 0.9;
            }
        }
        probs[(2 * w + 2) as usize] = 1.0;
        let d = det(0, 0.8, [20.0, 5.0, 35.0, 20.0]);
        let p = act_pixel(&d, Some(&probs), w, h).unwrap();
        // the 7x7 window holds the whole 5x5 blob from three centres per axis: a plateau
        assert!(
            (p.x - 25.5).abs() <= 1.0 && (p.y - 12.5).abs() <= 1.0,
            "{p:?}"
        );
        let mean = (25.0 * 0.9 + 24.0 * 0.1) / 49.0;
        assert!((p.probability.unwrap() - mean).abs() < 1e-5, "{p:?}");
        let c = act_pixel(&d, None, w, h).unwrap();
        assert_eq!((c.x, c.y, c.probability), (27.5, 12.5, None));
        // a box hanging off the image: its centre is clamped onto it
        let off = det(0, 0.8, [30.0, 25.0, 60.0, 45.0]);
        let c = act_pixel(&off, None, w, h).unwrap();
        assert_eq!((c.x, c.y), (40.0, 30.0));
    }

    #[test]
    fn point_at_back_projects_the_median_depth_around_the_pixel() {
        // 64x48 colour camera, depth at half resolution, a plane at 1.5 m
        let camera = PinholeCamera::new(60.0, 60.0, 31.5, 23.5, 64, 48).unwrap();
        let mut metres = vec![1.5f32; 32 * 24];
        metres[5] = f32::NAN;
        let depth = DepthImage::from_metres(32, 24, metres).unwrap();
        let sampling = DepthSampling::default();
        let ctx = DepthContext {
            camera: &camera,
            depth: &depth,
            sampling: &sampling,
        };
        // image coordinates (32.0, 24.0) are pixel coordinates (31.5, 23.5): the optical axis
        let p = ctx.point_at(32.0, 24.0).unwrap().unwrap();
        assert!((p - Point3::new(0.0, 0.0, 1.5)).norm() < 1e-9, "{p}");
        let p = ctx.point_at(44.0, 24.0).unwrap().unwrap();
        assert!(
            (p.x - 12.0 * 1.5 / 60.0).abs() < 1e-9 && (p.z - 1.5).abs() < 1e-9,
            "{p}"
        );
        let d = det(0, 0.9, [20.0, 12.0, 44.0, 36.0]);
        let o = ctx.locate(&d, None).unwrap().unwrap();
        assert!((o.centre.z - 1.5).abs() < 1e-6 && (o.size.x - 24.0 * 1.5 / 60.0).abs() < 1e-6);
    }
}
