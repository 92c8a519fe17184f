//! Grasp and place poses for a parallel gripper, from an aligned depth image and a mask:
//! - the approach axis (z) is the negated normal of a least-squares plane fitted to the depth
//!   points in a window around the target pixel: it points from the camera into the surface;
//! - the closing axis (x) is the mask's minor principal axis: the mask's pixels inside the
//!   detection's box are laid onto that plane through their rays and their second moments taken
//!   within it (a tilted surface's foreshortening does not swap its sides), so the fingers close
//!   across the object's short side;
//! - y = z × x (right-handed).
//!
//! Where the depth or the mask cannot give an axis, the camera's axes stand in and the pose says
//! so ([`GraspPose::approach_from_fit`], [`GraspPose::closing_from_mask`], [`GraspPose::notes`]).

use image::GrayImage;
use nalgebra::{Isometry3, Point3, Rotation3, Translation3, UnitQuaternion, Vector3};

use super::drop_depth_outliers;
use super::fit::{camera_axis_across, mask_axis_on_plane, plane_fit, PlaneFit};
use crate::error::{Error, Result};
use crate::vision::boxes::BBox;
use crate::vision::camera::PinholeCamera;
use crate::vision::depth::{depth_pixels, DepthImage, DepthSampling};

/// Default side of the plane-fit window, colour pixels: ~3.5 cm at 1 m for a 600 px focal
/// length, small enough to stay on a graspable face, large enough to average depth noise.
pub const DEFAULT_WINDOW_PX: u32 = 21;

/// Default fewest depth points for a plane fit: 3 define a plane, a dozen average noise.
pub const DEFAULT_MIN_POINTS: usize = 12;

/// Default smallest ratio of the mask's principal lengths for a closing axis: rounder masks (a
/// disc is 1.0, a square too) have no short side, and their axis is pixel noise.
pub const DEFAULT_MIN_ELONGATION: f64 = 1.1;

/// How [`grasp_pose`] fits its axes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraspParams {
    /// Side, in colour pixels, of the square window around the target pixel whose depth points
    /// the plane is fitted to (at least 3).
    pub window: u32,
    /// Fewest valid depth points in the window for a fit (at least 3).
    pub min_points: usize,
    /// Smallest major/minor length ratio of the mask laid onto the plane (square roots of its
    /// second-moment eigenvalues) for a closing axis (at least 1).
    pub min_elongation: f64,
}

impl Default for GraspParams {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW_PX,
            min_points: DEFAULT_MIN_POINTS,
            min_elongation: DEFAULT_MIN_ELONGATION,
        }
    }
}

impl GraspParams {
    /// Checks the settings (for parameters read at startup or set live).
    pub fn validate(&self) -> Result<()> {
        if self.window < 3 {
            return Err(Error::InvalidInput(format!(
                "grasp plane window must be at least 3 pixels, got {}",
                self.window
            )));
        }
        if self.min_points < 3 {
            return Err(Error::InvalidInput(format!(
                "grasp plane fit needs at least 3 points (a plane), got min_points = {}",
                self.min_points
            )));
        }
        if !(self.min_elongation.is_finite() && self.min_elongation >= 1.0) {
            return Err(Error::InvalidInput(format!(
                "grasp mask elongation must be a finite ratio >= 1, got {}",
                self.min_elongation
            )));
        }
        Ok(())
    }
}

/// Where and on what to place a gripper frame.
#[derive(Debug, Clone, Copy)]
pub struct GraspTarget<'a> {
    /// The target pixel in colour image coordinates (e.g. the grounded act pixel).
    pub pixel: (f64, f64),
    /// The 3D point there, colour optical frame (the target's reported point): the pose's origin.
    pub position: Point3<f64>,
    /// The detection's box: the mask's pixels inside it are the object's.
    pub bbox: BBox,
    /// The phrase's mask at the colour resolution when the stream segments it; without one the
    /// closing axis falls back to the camera's x.
    pub mask: Option<&'a GrayImage>,
}

/// A gripper frame and how it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct GraspPose {
    /// The gripper frame in the frame of the target's position (the colour optical frame from
    /// [`grasp_pose`]): origin at the position, x = closing axis, y = z × x, z = approach axis.
    pub pose: Isometry3<f64>,
    /// Whether z is the fitted plane's (else the camera's optical axis).
    pub approach_from_fit: bool,
    /// Whether x is the mask's minor axis (else the camera's x, or y, made orthogonal to z).
    pub closing_from_mask: bool,
    /// The plane fit, when there was one (its rms tells how flat the surface was).
    pub plane: Option<PlaneFit>,
    /// The major/minor length ratio of the mask laid onto the plane, when it had pixels in the
    /// box.
    pub elongation: Option<f64>,
    /// Why an axis fell back, in words (empty when both came from the data).
    pub notes: Vec<String>,
}

impl GraspPose {
    /// The approach axis (unit): from the gripper into the surface.
    pub fn approach(&self) -> Vector3<f64> {
        self.pose.rotation * Vector3::z()
    }

    /// The closing axis (unit): the direction the fingers close along.
    pub fn closing(&self) -> Vector3<f64> {
        self.pose.rotation * Vector3::x()
    }

    /// The same pose in another frame: `target_from_source` maps points of the pose's frame to
    /// the target frame (tf2's `lookupTransform(target, source)`).
    pub fn transformed(&self, target_from_source: &Isometry3<f64>) -> GraspPose {
        GraspPose {
            pose: target_from_source * self.pose,
            ..self.clone()
        }
    }
}

/// The grasp (or place: the same frame at the place point) pose at `target`, in the colour
/// camera's optical frame. `camera` is the colour camera, `depth` registered to it (any
/// resolution), `sampling` the depth range and outlier percentiles of the positions.
///
/// The plane is fitted to the valid depth points in a `params.window`-pixel square around the
/// pixel - only those on the mask when there is one, as the window may reach past the object's
/// edge - after the sampling's near..far percentile rule drops flying pixels.
///
/// `Err` only for invalid settings, a non-finite position or box, or a mask of the wrong size;
/// missing depth or a shapeless mask give a fallback axis, a `false` flag and a note.
pub fn grasp_pose(
    camera: &PinholeCamera,
    depth: &DepthImage,
    sampling: &DepthSampling,
    target: &GraspTarget<'_>,
    params: &GraspParams,
) -> Result<GraspPose> {
    params.validate()?;
    sampling.validate()?;
    let (px, py) = target.pixel;
    if !(px.is_finite() && py.is_finite() && target.position.iter().all(|c| c.is_finite())) {
        return Err(Error::InvalidInput(format!(
            "grasp target must be finite, got pixel ({px}, {py}) and point {}",
            target.position
        )));
    }
    let mut notes = Vec::new();

    // Approach: the plane around the pixel.
    let half = f64::from(params.window) / 2.0;
    let window = [px - half, px + half, py - half, py + half];
    let colour = (camera.width, camera.height);
    let (mut pixels, _) = depth_pixels(depth, colour, Some(window), target.mask, sampling)?;
    let found = pixels.len();
    let plane = if found < params.min_points {
        let on = if target.mask.is_some() {
            " on the mask"
        } else {
            ""
        };
        notes.push(format!(
            "approach: {found} valid depth points{on} in the {w}x{w} px window, fewer than \
             {min}; approach along the camera's optical axis",
            w = params.window,
            min = params.min_points
        ));
        None
    } else {
        drop_depth_outliers(&mut pixels, sampling);
        let depth_camera = camera.scaled_to(depth.width(), depth.height())?;
        let points: Vec<Point3<f64>> = pixels
            .iter()
            .map(|p| depth_camera.back_project(f64::from(p.x), f64::from(p.y), f64::from(p.z)))
            .collect();
        let fit = plane_fit(&points);
        if fit.is_none() {
            notes.push(format!(
                "approach: the {} depth points in the window are collinear; approach along the \
                 camera's optical axis",
                points.len()
            ));
        }
        fit
    };
    let approach = plane.map_or_else(Vector3::z, |p| -p.normal);

    // Closing: the mask's short side on the plane (depth_pixels checked the mask's size).
    let on_plane = target
        .mask
        .map(|m| mask_axis_on_plane(camera, m, &target.bbox, &target.position, &approach));
    let elongation = on_plane.flatten().map(|(_, e)| e);
    let from_mask = match on_plane {
        None => {
            notes.push("closing: no mask; closing along the camera's x".into());
            None
        }
        Some(None) => {
            notes.push(
                "closing: fewer than 3 mask pixels in the box meet the surface; closing along \
                 the camera's x"
                    .into(),
            );
            None
        }
        Some(Some((_, e))) if e < params.min_elongation => {
            notes.push(format!(
                "closing: the mask is round (axis ratio {e:.3} < {}); closing along the camera's x",
                params.min_elongation
            ));
            None
        }
        Some(Some((axis, _))) => Some(axis),
    };
    let closing_from_mask = from_mask.is_some();
    let closing = from_mask.unwrap_or_else(|| camera_axis_across(&approach));

    // One of ±x: the one towards the image's right (down for a vertical axis, where rounding
    // decides the sign of x), so the pose does not flip between frames.
    let towards = if closing.x.abs() > 1e-6 {
        closing.x
    } else {
        closing.y
    };
    let closing = if towards < 0.0 { -closing } else { closing };
    let y = approach.cross(&closing);
    let rotation = Rotation3::from_basis_unchecked(&[closing, y, approach]);
    Ok(GraspPose {
        pose: Isometry3::from_parts(
            Translation3::from(target.position.coords),
            UnitQuaternion::from_rotation_matrix(&rotation),
        ),
        approach_from_fit: plane.is_some(),
        closing_from_mask,
        plane,
        elongation,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;
    use nalgebra::Matrix3;

    use crate::geometry::fit::mask_axes;
    use crate::vision::masks::{MASK_OFF, MASK_ON};

    // A colour camera with square pixels, so that image angles are angles in a fronto-parallel
    // plane; depth at half its resolution.
    fn colour_camera() -> PinholeCamera {
        PinholeCamera::new(500.0, 500.0, 161.3, 118.7, 320, 240).unwrap()
    }

    /// The depth seen by `cam` of the plane through `p0` with normal `n`.
    fn plane_depth(cam: &PinholeCamera, p0: &Point3<f64>, n: &Vector3<f64>) -> DepthImage {
        let mut out = Vec::new();
        for v in 0..cam.height {
            for u in 0..cam.width {
                let ray = cam.back_project(f64::from(u), f64::from(v), 1.0).coords;
                out.push((n.dot(&p0.coords) / n.dot(&ray)) as f32);
            }
        }
        DepthImage::from_metres(cam.width, cam.height, out).unwrap()
    }

    /// The image coordinates of `p` in `cam`.
    fn image_xy(cam: &PinholeCamera, p: &Point3<f64>) -> (f64, f64) {
        let (u, v) = cam.project(p).unwrap();
        (u + 0.5, v + 0.5)
    }

    fn target<'a>(
        cam: &PinholeCamera,
        p: Point3<f64>,
        mask: Option<&'a GrayImage>,
    ) -> GraspTarget<'a> {
        GraspTarget {
            pixel: image_xy(cam, &p),
            position: p,
            bbox: BBox::from([0.0, 0.0, 320.0, 240.0]),
            mask,
        }
    }

    /// A right-handed orthonormal frame at the target's position.
    fn assert_frame(g: &GraspPose, position: &Point3<f64>) {
        let r = g.pose.rotation.to_rotation_matrix().into_inner();
        assert!((r.determinant() - 1.0).abs() < 1e-9, "{r}");
        assert!(
            (r.transpose() * r - Matrix3::identity()).norm() < 1e-9,
            "{r}"
        );
        assert!((g.pose.rotation.quaternion().norm() - 1.0).abs() < 1e-12);
        let x = r.column(0).into_owned();
        let y = r.column(1).into_owned();
        assert!((x.cross(&y) - g.approach()).norm() < 1e-9);
        assert!((g.closing() - x).norm() < 1e-12);
        assert!((g.pose.translation.vector - position.coords).norm() < 1e-12);
    }

    /// Angle in degrees between two axes, ignoring sign.
    fn axis_angle_deg(a: &Vector3<f64>, b: &Vector3<f64>) -> f64 {
        (a.normalize().dot(&b.normalize()).abs().min(1.0))
            .acos()
            .to_degrees()
    }

    #[test]
    fn a_tilted_plane_gives_its_normal() {
        let colour = colour_camera();
        let depth_cam = colour.scaled_to(160, 120).unwrap();
        let p0 = Point3::new(0.05, 0.02, 0.8);
        // Facing the camera (n · p0 < 0), tilted ~20° about both image axes.
        let n = Vector3::new(0.3, -0.2, -1.0).normalize();
        let depth = plane_depth(&depth_cam, &p0, &n);
        let g = grasp_pose(
            &colour,
            &depth,
            &DepthSampling::default(),
            &target(&colour, p0, None),
            &GraspParams::default(),
        )
        .unwrap();
        assert!(g.approach_from_fit, "{:?}", g.notes);
        assert!((g.approach() + n).norm() < 1e-3, "{}", g.approach());
        // The approach points away from the camera, into the surface.
        assert!(g.approach().dot(&p0.coords) > 0.0);
        let plane = g.plane.unwrap();
        assert!(plane.rms < 1e-5 && plane.points >= 12, "{plane:?}");
        // No mask: x is the camera's x, made orthogonal to the approach, flagged.
        assert!(!g.closing_from_mask);
        assert_eq!(g.notes.len(), 1, "{:?}", g.notes);
        assert!(g.notes[0].contains("no mask"));
        assert!(g.closing().dot(&Vector3::x()) > 0.9);
        assert_frame(&g, &p0);
        // Flying pixels in the window (a far and a near stray) fall to the percentile rule.
        let (u, v) = depth_cam.project(&p0).unwrap();
        let mut metres = depth.metres().to_vec();
        let at = |du: i64, dv: i64| {
            (v.round() as i64 + dv) as usize * 160 + (u.round() as i64 + du) as usize
        };
        metres[at(1, 0)] = 3.0;
        metres[at(-2, 2)] = 0.3;
        let noisy = DepthImage::from_metres(160, 120, metres).unwrap();
        let t = target(&colour, p0, None);
        let g2 = grasp_pose(
            &colour,
            &noisy,
            &DepthSampling::default(),
            &t,
            &GraspParams::default(),
        )
        .unwrap();
        assert!((g2.approach() + n).norm() < 1e-3, "{}", g2.approach());
        // The fit itself on exact points.
        let pts: Vec<Point3<f64>> = (0..5)
            .flat_map(|i| (0..4).map(move |j| (f64::from(i), f64::from(j))))
            .map(|(a, b)| {
                let e1 = n.cross(&Vector3::x()).normalize();
                let e2 = n.cross(&e1);
                p0 + e1 * (0.01 * a) + e2 * (0.02 * b)
            })
            .collect();
        let fit = plane_fit(&pts).unwrap();
        assert!((fit.normal - n).norm() < 1e-9, "{}", fit.normal);
    }

    /// A `len x wid` px rectangle turned by `deg` (x towards y), centred on `c`.
    fn rectangle(c: (f64, f64), len: f64, wid: f64, deg: f64) -> GrayImage {
        let (s, co) = deg.to_radians().sin_cos();
        GrayImage::from_fn(320, 240, |x, y| {
            let (dx, dy) = (f64::from(x) + 0.5 - c.0, f64::from(y) + 0.5 - c.1);
            let (a, b) = (co * dx + s * dy, -s * dx + co * dy);
            let on = a.abs() <= len / 2.0 && b.abs() <= wid / 2.0;
            Luma([if on { MASK_ON } else { MASK_OFF }])
        })
    }

    #[test]
    fn a_rotated_rectangle_closes_across_its_short_side() {
        let colour = colour_camera();
        let p0 = Point3::new(0.02, -0.01, 0.9);
        let depth = plane_depth(&colour.scaled_to(160, 120).unwrap(), &p0, &-Vector3::z());
        let c = image_xy(&colour, &p0);
        for deg in [0.0, 17.0, 45.0, -62.5, 90.0, 133.0] {
            let mask = rectangle(c, 120.0, 40.0, deg);
            let axes = mask_axes(&mask, None).unwrap();
            // The major axis is defined up to 180°.
            let err = (axes.major_angle().to_degrees() - deg).rem_euclid(180.0);
            assert!(err.min(180.0 - err) < 0.5, "{deg}: {axes:?}");
            assert!((axes.elongation() - 3.0).abs() < 0.1, "{axes:?}");
            let g = grasp_pose(
                &colour,
                &depth,
                &DepthSampling::default(),
                &target(&colour, p0, Some(&mask)),
                &GraspParams::default(),
            )
            .unwrap();
            assert!(g.approach_from_fit && g.closing_from_mask, "{:?}", g.notes);
            assert!(g.notes.is_empty());
            assert!((g.approach() - Vector3::z()).norm() < 1e-6);
            let (s, co) = deg.to_radians().sin_cos();
            let short_side = Vector3::new(-s, co, 0.0);
            let err = axis_angle_deg(&g.closing(), &short_side);
            assert!(err < 0.5, "{deg}: closing {} off by {err}°", g.closing());
            assert_frame(&g, &p0);
        }
    }

    #[test]
    fn the_closing_axis_lies_on_a_tilted_surface() {
        // A rectangle painted on a plane turned 40° about the camera's y: the image's short side
        // (vertical here) maps onto the plane, orthogonal to the approach.
        let colour = colour_camera();
        let p0 = Point3::new(0.0, 0.0, 1.0);
        let (s, c) = 40f64.to_radians().sin_cos();
        let n = Vector3::new(s, 0.0, -c);
        let depth = plane_depth(&colour.scaled_to(160, 120).unwrap(), &p0, &n);
        let mask = rectangle(image_xy(&colour, &p0), 100.0, 30.0, 0.0);
        let g = grasp_pose(
            &colour,
            &depth,
            &DepthSampling::default(),
            &target(&colour, p0, Some(&mask)),
            &GraspParams::default(),
        )
        .unwrap();
        assert!(g.approach_from_fit && g.closing_from_mask, "{:?}", g.notes);
        assert!((g.approach() + n).norm() < 1e-3);
        assert!(g.closing().dot(&g.approach()).abs() < 1e-9);
        // The plane contains the camera's y through p0, which the image's vertical maps to.
        assert!(
            axis_angle_deg(&g.closing(), &Vector3::y()) < 0.5,
            "{}",
            g.closing()
        );
        assert_frame(&g, &p0);
    }

    #[test]
    fn foreshortening_does_not_swap_the_sides() {
        // A 10 x 6 cm rectangle on a plane turned 60° about the camera's y: its long side, along
        // the tilt, is 25 px in the image against 30 px for the short one. The image's moments
        // would close along the long side; the plane's close along the short one (y).
        let colour = colour_camera();
        let p0 = Point3::new(0.0, 0.0, 1.0);
        let (s, c) = 60f64.to_radians().sin_cos();
        let n = Vector3::new(s, 0.0, -c);
        let along_tilt = Vector3::new(c, 0.0, s);
        let depth = plane_depth(&colour.scaled_to(160, 120).unwrap(), &p0, &n);
        let mask = GrayImage::from_fn(320, 240, |x, y| {
            let ray = colour.back_project(f64::from(x), f64::from(y), 1.0).coords;
            let q = ray * (n.dot(&p0.coords) / n.dot(&ray)) - p0.coords;
            let on = q.dot(&along_tilt).abs() <= 0.05 && q.y.abs() <= 0.03;
            Luma([if on { MASK_ON } else { MASK_OFF }])
        });
        let image = mask_axes(&mask, None).unwrap();
        assert!(image.major.1.abs() > 0.99, "{image:?}");
        let g = grasp_pose(
            &colour,
            &depth,
            &DepthSampling::default(),
            &target(&colour, p0, Some(&mask)),
            &GraspParams::default(),
        )
        .unwrap();
        assert!(g.approach_from_fit && g.closing_from_mask, "{:?}", g.notes);
        assert!((g.approach() + n).norm() < 1e-3);
        assert!(
            axis_angle_deg(&g.closing(), &Vector3::y()) < 0.5,
            "{}",
            g.closing()
        );
        assert!(
            (g.elongation.unwrap() - 10.0 / 6.0).abs() < 0.05,
            "{:?}",
            g.elongation
        );
        assert_frame(&g, &p0);
    }

    #[test]
    fn degenerate_cases_fall_back_to_the_camera_axes_with_flags() {
        let colour = colour_camera();
        let p0 = Point3::new(0.0, 0.0, 0.7);
        let flat = plane_depth(&colour.scaled_to(160, 120).unwrap(), &p0, &-Vector3::z());
        let c = image_xy(&colour, &p0);
        let params = GraspParams::default();
        let sampling = DepthSampling::default();

        // A round mask has no short side.
        let disc = GrayImage::from_fn(320, 240, |x, y| {
            let r = (f64::from(x) + 0.5 - c.0).hypot(f64::from(y) + 0.5 - c.1);
            Luma([if r <= 30.0 { MASK_ON } else { MASK_OFF }])
        });
        let g = grasp_pose(
            &colour,
            &flat,
            &sampling,
            &target(&colour, p0, Some(&disc)),
            &params,
        )
        .unwrap();
        assert!(g.approach_from_fit && !g.closing_from_mask);
        assert!(g.elongation.unwrap() < 1.02, "{:?}", g.elongation);
        assert!(g.notes[0].contains("round"), "{:?}", g.notes);
        assert!((g.closing() - Vector3::x()).norm() < 1e-9);
        assert_frame(&g, &p0);

        // A handful of depth pixels: no fit, the optical axis.
        let sparse: Vec<f32> = flat
            .metres()
            .iter()
            .enumerate()
            .map(|(i, &z)| if i % 37 == 0 { z } else { f32::NAN })
            .collect();
        let sparse = DepthImage::from_metres(160, 120, sparse).unwrap();
        let mask = rectangle(c, 80.0, 20.0, 30.0);
        let g = grasp_pose(
            &colour,
            &sparse,
            &sampling,
            &target(&colour, p0, Some(&mask)),
            &params,
        )
        .unwrap();
        assert!(!g.approach_from_fit && g.closing_from_mask && g.plane.is_none());
        assert!(g.notes[0].contains("fewer than 12"), "{:?}", g.notes);
        assert_eq!(g.approach(), Vector3::z());
        let short = Vector3::new(-(30f64.to_radians().sin()), 30f64.to_radians().cos(), 0.0);
        assert!(axis_angle_deg(&g.closing(), &short) < 0.5);
        assert_frame(&g, &p0);

        // Depth on a single row: collinear points.
        let row: Vec<f32> = flat
            .metres()
            .iter()
            .enumerate()
            .map(|(i, &z)| if i / 160 == 59 { z } else { f32::NAN })
            .collect();
        let row = DepthImage::from_metres(160, 120, row).unwrap();
        let lenient = GraspParams {
            min_points: 3,
            ..params
        };
        let g = grasp_pose(
            &colour,
            &row,
            &sampling,
            &target(&colour, p0, None),
            &lenient,
        )
        .unwrap();
        assert!(!g.approach_from_fit && !g.closing_from_mask);
        assert!(g.notes[0].contains("collinear"), "{:?}", g.notes);
        assert!(g.pose.rotation.angle() < 1e-12);

        // An empty mask in the box.
        let empty = GrayImage::new(320, 240);
        let g = grasp_pose(
            &colour,
            &flat,
            &sampling,
            &target(&colour, p0, Some(&empty)),
            &params,
        )
        .unwrap();
        assert!(
            !g.approach_from_fit && !g.closing_from_mask,
            "{:?}",
            g.notes
        );
        assert_eq!(g.notes.len(), 2);
    }

    #[test]
    fn a_pose_moves_with_its_frame() {
        use std::f64::consts::FRAC_PI_2;
        let colour = colour_camera();
        let p0 = Point3::new(0.1, 0.0, 1.0);
        let depth = plane_depth(&colour.scaled_to(160, 120).unwrap(), &p0, &-Vector3::z());
        let g = grasp_pose(
            &colour,
            &depth,
            &DepthSampling::default(),
            &target(&colour, p0, None),
            &GraspParams::default(),
        )
        .unwrap();
        // base_link <- optical frame: optical z is base x, optical x is base -y.
        let optical = UnitQuaternion::from_euler_angles(-FRAC_PI_2, 0.0, -FRAC_PI_2);
        let base = Isometry3::from_parts(Translation3::new(0.0, 0.0, 0.5), optical);
        let moved = g.transformed(&base);
        assert!((moved.approach() - Vector3::x()).norm() < 1e-9);
        assert!((moved.closing() + Vector3::y()).norm() < 1e-9);
        let t = moved.pose.translation.vector;
        assert!((t - Vector3::new(1.0, -0.1, 0.5)).norm() < 1e-9, "{t}");
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases = [
            (
                GraspParams {
                    window: 1,
                    ..Default::default()
                },
                "window",
            ),
            (
                GraspParams {
                    min_points: 2,
                    ..Default::default()
                },
                "min_points",
            ),
            (
                GraspParams {
                    min_elongation: 0.5,
                    ..Default::default()
                },
                "elongation",
            ),
            (
                GraspParams {
                    min_elongation: f64::NAN,
                    ..Default::default()
                },
                "elongation",
            ),
        ];
        for (p, word) in cases {
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
        let colour = colour_camera();
        let depth = DepthImage::from_metres(4, 3, vec![1.0; 12]).unwrap();
        let small = GrayImage::new(10, 10);
        let mut t = target(&colour, Point3::new(0.0, 0.0, 1.0), Some(&small));
        let s = DepthSampling::default();
        let p = GraspParams::default();
        assert!(grasp_pose(&colour, &depth, &s, &t, &p).is_err());
        t.mask = None;
        t.pixel.0 = f64::NAN;
        let err = grasp_pose(&colour, &depth, &s, &t, &p).unwrap_err();
        assert!(err.to_string().contains("finite"), "{err}");
    }
}
