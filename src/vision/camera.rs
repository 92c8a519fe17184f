//! The pinhole camera model of a ROS `sensor_msgs/CameraInfo`, on plain numbers: intrinsics from
//! the row-major `K`, rescaling to another resolution, back-projection and projection in the
//! camera optical frame (REP 103: x right, y down, z forward).
//!
//! Two pixel conventions meet here:
//! - **Pixel coordinates** `(u, v)` (`K`, [`PinholeCamera::back_project`],
//!   [`PinholeCamera::project`]): ROS/OpenCV's, the centre of pixel column `i` is at `u = i`, so
//!   the image spans `[-0.5, width - 0.5]`.
//! - **Image coordinates** `(x, y)` (the crate's [`BBox`](super::boxes::BBox), masks, peaks): the
//!   image spans `[0, width]` and pixel `i` covers `[i, i + 1)`, as transformers' boxes scaled to
//!   the image. `u = x - PIXEL_CENTRE_OFFSET`; [`image_to_pixel`] converts.
//!
//! Images are assumed rectified: `D` (plumb_bob or other distortion) is not undone, so use the
//! `image_rect*` topics, or a camera whose `D` is zero (RealSense colour and aligned depth are).

use nalgebra::Point3;

use crate::error::{Error, Result};

/// Offset from image coordinates (pixel `i` covers `[i, i + 1)`) to ROS/OpenCV pixel coordinates
/// (pixel `i` is centred on `i`): `u = x - PIXEL_CENTRE_OFFSET`.
pub const PIXEL_CENTRE_OFFSET: f64 = 0.5;

/// Image coordinates (the crate's boxes and masks) to pixel coordinates (`K`'s).
pub fn image_to_pixel(x: f64, y: f64) -> (f64, f64) {
    (x - PIXEL_CENTRE_OFFSET, y - PIXEL_CENTRE_OFFSET)
}

/// The pixels of an `n`-pixel axis whose centres `i + 0.5` lie in `[a, b)` (image
/// coordinates), clipped to the image; empty for non-finite or far-off bounds.
pub(crate) fn centres_within(a: f64, b: f64, n: u32) -> std::ops::Range<u32> {
    // f64 -> u32 `as` saturates (and maps NaN to 0).
    let lo = ((a - PIXEL_CENTRE_OFFSET).ceil().max(0.0) as u32).min(n);
    let hi = ((b - PIXEL_CENTRE_OFFSET).ceil().max(0.0) as u32).min(n);
    lo..hi.max(lo)
}

/// Intrinsics of a rectified pinhole camera, in pixels, for images of `width x height`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PinholeCamera {
    pub fx: f64,
    pub fy: f64,
    pub cx: f64,
    pub cy: f64,
    pub width: u32,
    pub height: u32,
}

impl PinholeCamera {
    /// Checked constructor: finite, positive focal lengths, a finite principal point and a
    /// non-empty image.
    pub fn new(fx: f64, fy: f64, cx: f64, cy: f64, width: u32, height: u32) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidInput(format!(
                "camera image size must be non-zero, got {width}x{height}"
            )));
        }
        if !(fx.is_finite() && fy.is_finite() && fx > 0.0 && fy > 0.0) {
            return Err(Error::InvalidInput(format!(
                "camera focal lengths must be finite and positive, got fx = {fx}, fy = {fy}"
            )));
        }
        if !(cx.is_finite() && cy.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "camera principal point must be finite, got ({cx}, {cy})"
            )));
        }
        Ok(Self {
            fx,
            fy,
            cx,
            cy,
            width,
            height,
        })
    }

    /// From `CameraInfo.k` (row-major 3x3 `[fx, 0, cx, 0, fy, cy, 0, 0, 1]`) and the image size
    /// (`CameraInfo.width`, `.height`). Rejects an all-zero `K` (ROS's marker for an
    /// uncalibrated camera), a non-zero skew (OpenCV and ROS's camera_calibration never write
    /// one, so it is more likely a column-major `K`) and a last row other than `(0, 0, 1)` (also
    /// a transposed `K`).
    pub fn from_k(k: &[f64; 9], width: u32, height: u32) -> Result<Self> {
        if k.iter().all(|&v| v == 0.0) {
            return Err(Error::InvalidInput(
                "camera is not calibrated: CameraInfo K is all zeros".into(),
            ));
        }
        if let Some(v) = k.iter().find(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "camera K has a non-finite entry {v}: {k:?}"
            )));
        }
        if k[1] != 0.0 || k[3] != 0.0 {
            return Err(Error::InvalidInput(format!(
                "camera K must be row-major [fx, 0, cx, 0, fy, cy, 0, 0, 1] without skew, got \
                 {k:?}"
            )));
        }
        if k[6] != 0.0 || k[7] != 0.0 || k[8] != 1.0 {
            return Err(Error::InvalidInput(format!(
                "camera K must end with the row (0, 0, 1) (row-major), got {k:?}"
            )));
        }
        Self::new(k[0], k[4], k[2], k[5], width, height)
    }

    /// The intrinsics of the same optical frame for images resized to `width x height` (e.g.
    /// aligned depth at half the colour resolution). Pixel-centre convention: image coordinates
    /// scale by `s = new / old`, so pixel coordinates map `u -> (u + 0.5) s - 0.5` (the mapping
    /// of OpenCV's `cv::resize`), giving `fx' = fx s` and `cx' = (cx + 0.5) s - 0.5`; x and y
    /// scale separately.
    pub fn scaled_to(&self, width: u32, height: u32) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidInput(format!(
                "cannot scale a camera to a {width}x{height} image"
            )));
        }
        let sx = f64::from(width) / f64::from(self.width);
        let sy = f64::from(height) / f64::from(self.height);
        Self::new(
            self.fx * sx,
            self.fy * sy,
            (self.cx + PIXEL_CENTRE_OFFSET) * sx - PIXEL_CENTRE_OFFSET,
            (self.cy + PIXEL_CENTRE_OFFSET) * sy - PIXEL_CENTRE_OFFSET,
            width,
            height,
        )
    }

    /// The point at depth `z` (metres along the optical axis, not along the ray) seen at pixel
    /// coordinates `(u, v)`, in the optical frame: `x = (u - cx) z / fx`, `y = (v - cy) z / fy`.
    pub fn back_project(&self, u: f64, v: f64, z: f64) -> Point3<f64> {
        Point3::new((u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z)
    }

    /// The pixel coordinates of `point` (optical frame), the inverse of
    /// [`back_project`](Self::back_project); `None` for points on or behind the image plane
    /// (`z <= 0`), which have no image. The result may lie outside the image.
    pub fn project(&self, point: &Point3<f64>) -> Option<(f64, f64)> {
        (point.z > 0.0).then(|| {
            (
                self.fx * point.x / point.z + self.cx,
                self.fy * point.y / point.z + self.cy,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [f64; 9] = [600.0, 0.0, 322.3, 0.0, 590.0, 236.9, 0.0, 0.0, 1.0];

    #[test]
    fn from_k_reads_row_major() {
        let cam = PinholeCamera::from_k(&K, 640, 480).unwrap();
        assert_eq!(
            (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height),
            (600.0, 590.0, 322.3, 236.9, 640, 480)
        );
    }

    #[test]
    fn from_k_rejects_bad_intrinsics() {
        let err = PinholeCamera::from_k(&[0.0; 9], 640, 480).unwrap_err();
        assert!(err.to_string().contains("all zeros"), "{err}");
        let mut k = K;
        k[0] = -600.0;
        assert!(PinholeCamera::from_k(&k, 640, 480).is_err());
        k[0] = f64::NAN;
        assert!(PinholeCamera::from_k(&k, 640, 480).is_err());
        k = K;
        k[4] = 0.0;
        assert!(PinholeCamera::from_k(&k, 640, 480).is_err());
        assert!(PinholeCamera::from_k(&K, 0, 480).is_err());
        assert!(PinholeCamera::from_k(&K, 640, 0).is_err());
        // Column-major K: cx, cy land in the last row.
        let transposed = [600.0, 0.0, 0.0, 0.0, 590.0, 0.0, 322.3, 236.9, 1.0];
        assert!(PinholeCamera::from_k(&transposed, 640, 480).is_err());
    }

    #[test]
    fn back_project_and_project_round_trip() {
        let cam = PinholeCamera::from_k(&K, 640, 480).unwrap();
        for (u, v, z) in [(0.0, 0.0, 0.5), (322.3, 236.9, 2.0), (639.0, 17.5, 7.25)] {
            let p = cam.back_project(u, v, z);
            assert_eq!(p.z, z);
            let (u2, v2) = cam.project(&p).unwrap();
            assert!((u2 - u).abs() < 1e-9 && (v2 - v).abs() < 1e-9, "{u2} {v2}");
        }
        // The principal point is on the optical axis; x grows right, y down.
        let p = cam.back_project(322.3 + 60.0, 236.9 - 59.0, 2.0);
        assert!(
            (p.x - 0.2).abs() < 1e-12 && (p.y + 0.2).abs() < 1e-12,
            "{p}"
        );
        assert_eq!(cam.project(&Point3::new(0.1, 0.1, 0.0)), None);
        assert_eq!(cam.project(&Point3::new(0.1, 0.1, -1.0)), None);
    }

    #[test]
    fn scaled_to_keeps_pixel_centres() {
        // The principal point at the exact image centre stays there at any size.
        let cam = PinholeCamera::new(600.0, 590.0, 319.5, 239.5, 640, 480).unwrap();
        let half = cam.scaled_to(320, 240).unwrap();
        assert_eq!(
            (half.fx, half.fy, half.cx, half.cy, half.width, half.height),
            (300.0, 295.0, 159.5, 119.5, 320, 240)
        );
        // Any 3D point lands where resizing the image moves its pixel: u' = (u + 0.5) s - 0.5.
        let cam = PinholeCamera::from_k(&K, 640, 480).unwrap();
        let scaled = cam.scaled_to(320, 120).unwrap();
        let p = Point3::new(0.3, -0.2, 1.7);
        let (u, v) = cam.project(&p).unwrap();
        let (u2, v2) = scaled.project(&p).unwrap();
        assert!((u2 - ((u + 0.5) * 0.5 - 0.5)).abs() < 1e-9);
        assert!((v2 - ((v + 0.5) * 0.25 - 0.5)).abs() < 1e-9);
        // Back up to the original size is the identity.
        let back = scaled.scaled_to(640, 480).unwrap();
        assert!((back.cx - cam.cx).abs() < 1e-9 && (back.fy - cam.fy).abs() < 1e-9);
        assert!(cam.scaled_to(0, 480).is_err());
    }

    #[test]
    fn image_coordinates_are_half_a_pixel_off() {
        // The centre of pixel (0, 0) is image point (0.5, 0.5) and pixel point (0, 0).
        assert_eq!(image_to_pixel(0.5, 0.5), (0.0, 0.0));
        // Pixels 1 and 2 have their centres (1.5, 2.5) in [1.2, 2.5).
        assert_eq!(centres_within(1.2, 2.5, 10), 1..2);
        assert_eq!(centres_within(1.2, 2.6, 10), 1..3);
        assert_eq!(centres_within(-5.0, 99.0, 10), 0..10);
        assert_eq!(centres_within(20.0, 30.0, 10), 10..10);
        assert!(centres_within(f64::NAN, f64::NAN, 10).is_empty());
    }
}
