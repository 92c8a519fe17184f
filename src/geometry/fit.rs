//! The two fits behind a grasp pose: a least-squares plane through depth points, and the
//! principal axes of a mask from its second moments (in the image, or laid onto a plane).

use image::GrayImage;
use nalgebra::{Matrix3, Point3, Vector3};

use crate::vision::boxes::BBox;
use crate::vision::camera::{centres_within, image_to_pixel, PinholeCamera};
use crate::vision::masks::MASK_OFF;

/// A least-squares plane through 3D points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaneFit {
    /// The points' centroid (on the plane).
    pub centroid: Point3<f64>,
    /// Unit normal, oriented towards the camera (the frame's origin): `normal · centroid < 0`.
    pub normal: Vector3<f64>,
    /// Root mean square distance of the points from the plane, metres.
    pub rms: f64,
    pub points: usize,
}

/// The total-least-squares plane of `points`: the normal is the eigenvector of the smallest
/// eigenvalue of their covariance. `None` for fewer than 3 points or (nearly) collinear ones.
pub fn plane_fit(points: &[Point3<f64>]) -> Option<PlaneFit> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let centroid = Point3::from(points.iter().map(|p| p.coords).sum::<Vector3<f64>>() / n);
    let cov = points.iter().fold(Matrix3::zeros(), |acc, p| {
        let d = p - centroid;
        acc + d * d.transpose()
    }) / n;
    let eig = cov.symmetric_eigen();
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    let (lo, mid, hi) = (
        eig.eigenvalues[order[0]],
        eig.eigenvalues[order[1]],
        eig.eigenvalues[order[2]],
    );
    // Collinear points (a single depth row or column) span no plane.
    if !(hi > 0.0 && mid > 1e-9 * hi) {
        return None;
    }
    let mut normal = eig.eigenvectors.column(order[0]).normalize();
    if normal.dot(&centroid.coords) > 0.0 {
        normal = -normal;
    }
    Some(PlaneFit {
        centroid,
        normal,
        rms: lo.max(0.0).sqrt(),
        points: points.len(),
    })
}

/// The principal axes of a mask's pixels (from their second moments), in image coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskAxes {
    /// The pixels' centroid, image coordinates.
    pub centroid: (f64, f64),
    /// Unit directions (x right, y down) of the long and short sides; `minor` is `major` turned
    /// by +90° (towards y).
    pub major: (f64, f64),
    pub minor: (f64, f64),
    /// Standard deviations of the pixels along `major` and `minor`, pixels.
    pub major_sd: f64,
    pub minor_sd: f64,
    pub pixels: usize,
}

impl MaskAxes {
    /// `major_sd / minor_sd` (∞ for a one-pixel-wide line): 1 for a disc or a square, the side
    /// ratio for a rectangle.
    pub fn elongation(&self) -> f64 {
        if self.minor_sd > 0.0 {
            self.major_sd / self.minor_sd
        } else {
            f64::INFINITY
        }
    }

    /// The angle of `major` from the image's x axis towards its y axis, radians in (-π/2, π/2].
    pub fn major_angle(&self) -> f64 {
        self.major.1.atan2(self.major.0)
    }
}

/// The principal axes of `mask`'s pixels whose centres lie inside `bbox` (image coordinates; the
/// whole mask when `None`). `None` for fewer than 3 pixels.
pub fn mask_axes(mask: &GrayImage, bbox: Option<&BBox>) -> Option<MaskAxes> {
    let (w, h) = mask.dimensions();
    let (cols, rows) = match bbox {
        Some(b) => (
            centres_within(f64::from(b.x_min), f64::from(b.x_max), w),
            centres_within(f64::from(b.y_min), f64::from(b.y_max), h),
        ),
        None => (0..w, 0..h),
    };
    // Offsets from the window's corner keep the sums small for f64.
    let (x0, y0) = (f64::from(cols.start), f64::from(rows.start));
    let mut m = Moments2::default();
    for y in rows {
        for x in cols.clone() {
            if mask.get_pixel(x, y)[0] != MASK_OFF {
                m.add(f64::from(x) - x0, f64::from(y) - y0);
            }
        }
    }
    let (mean, major, major_sd, minor_sd) = m.axes()?;
    Some(MaskAxes {
        // Pixel x covers [x, x + 1): its centre is x + 0.5.
        centroid: (x0 + mean.0 + 0.5, y0 + mean.1 + 0.5),
        major,
        minor: (-major.1, major.0),
        major_sd,
        minor_sd,
        pixels: m.n,
    })
}

/// Running sums for the second moments of 2D points.
#[derive(Debug, Default)]
struct Moments2 {
    n: usize,
    sx: f64,
    sy: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
}

impl Moments2 {
    fn add(&mut self, x: f64, y: f64) {
        self.n += 1;
        self.sx += x;
        self.sy += y;
        self.sxx += x * x;
        self.syy += y * y;
        self.sxy += x * y;
    }

    /// The mean, the unit major axis and the standard deviations along the major and minor axes
    /// (the closed-form eigen-decomposition of the 2x2 covariance); `None` below 3 points.
    #[allow(clippy::type_complexity)]
    fn axes(&self) -> Option<((f64, f64), (f64, f64), f64, f64)> {
        if self.n < 3 {
            return None;
        }
        let n = self.n as f64;
        let (mx, my) = (self.sx / n, self.sy / n);
        let (mu20, mu02) = (self.sxx / n - mx * mx, self.syy / n - my * my);
        let mu11 = self.sxy / n - mx * my;
        let half_trace = 0.5 * (mu20 + mu02);
        let root = (0.25 * (mu20 - mu02).powi(2) + mu11 * mu11).sqrt();
        let theta = 0.5 * (2.0 * mu11).atan2(mu20 - mu02);
        Some((
            (mx, my),
            (theta.cos(), theta.sin()),
            (half_trace + root).max(0.0).sqrt(),
            (half_trace - root).max(0.0).sqrt(),
        ))
    }
}

/// The minor axis (unit, 3D) and elongation of `mask`'s pixels inside `bbox` laid onto the plane
/// through `origin` with normal `normal`: each pixel's ray meets the plane and the second moments
/// are taken within the plane, so foreshortening of a tilted surface and non-square pixels do not
/// bend the axis. `None` for fewer than 3 pixels whose rays meet the plane in front of the camera.
pub(crate) fn mask_axis_on_plane(
    camera: &PinholeCamera,
    mask: &GrayImage,
    bbox: &BBox,
    origin: &Point3<f64>,
    normal: &Vector3<f64>,
) -> Option<(Vector3<f64>, f64)> {
    let (w, h) = mask.dimensions();
    let cols = centres_within(f64::from(bbox.x_min), f64::from(bbox.x_max), w);
    let rows = centres_within(f64::from(bbox.y_min), f64::from(bbox.y_max), h);
    let e1 = camera_axis_across(normal);
    let e2 = normal.cross(&e1);
    let d = normal.dot(&origin.coords);
    let mut m = Moments2::default();
    for y in rows {
        for x in cols.clone() {
            if mask.get_pixel(x, y)[0] == MASK_OFF {
                continue;
            }
            let (u, v) = image_to_pixel(f64::from(x) + 0.5, f64::from(y) + 0.5);
            let ray = camera.back_project(u, v, 1.0).coords;
            let along = normal.dot(&ray);
            // A ray (nearly) along the plane, or meeting it behind the camera, has no point on it.
            if along.abs() <= 1e-3 * ray.norm() || d / along <= 0.0 {
                continue;
            }
            let q = ray * (d / along) - origin.coords;
            m.add(q.dot(&e1), q.dot(&e2));
        }
    }
    let (_, major, major_sd, minor_sd) = m.axes()?;
    let elongation = if minor_sd > 0.0 {
        major_sd / minor_sd
    } else {
        f64::INFINITY
    };
    let minor = e1 * -major.1 + e2 * major.0;
    Some((minor.normalize(), elongation))
}

/// The camera's x made orthogonal to `z` (its y where z is nearly along x).
pub(crate) fn camera_axis_across(z: &Vector3<f64>) -> Vector3<f64> {
    [Vector3::x(), Vector3::y()]
        .into_iter()
        .map(|a| a - z * z.dot(&a))
        .find(|a| a.norm() > 1e-3)
        .unwrap_or_else(Vector3::x)
        .normalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_fit_faces_the_camera_and_refuses_lines() {
        // 20 points on the plane z = 1 + 0.5 x, seen from the origin.
        let pts: Vec<Point3<f64>> = (0..5)
            .flat_map(|i| (0..4).map(move |j| (f64::from(i) * 0.01, f64::from(j) * 0.02)))
            .map(|(x, y)| Point3::new(x, y, 1.0 + 0.5 * x))
            .collect();
        let fit = plane_fit(&pts).unwrap();
        let n = Vector3::new(0.5, 0.0, -1.0).normalize();
        assert!((fit.normal - n).norm() < 1e-9, "{}", fit.normal);
        assert!(fit.rms < 1e-8 && fit.points == 20, "{fit:?}");
        let line: Vec<Point3<f64>> = (0..5)
            .map(|i| Point3::new(0.01 * f64::from(i), 0.0, 1.0))
            .collect();
        assert_eq!(plane_fit(&line), None);
        assert_eq!(plane_fit(&pts[..2]), None);
    }

    #[test]
    fn mask_axes_of_a_bar() {
        // A 3 x 9 px vertical bar: major along y, elongation sqrt((81 - 1) / (9 - 1)).
        let mask = GrayImage::from_fn(12, 12, |x, y| {
            let on = (4..7).contains(&x) && (1..10).contains(&y);
            image::Luma([if on { 255 } else { MASK_OFF }])
        });
        let a = mask_axes(&mask, None).unwrap();
        assert_eq!((a.pixels, a.centroid), (27, (5.5, 5.5)));
        assert!((a.major.1.abs() - 1.0).abs() < 1e-12, "{a:?}");
        assert!(
            (a.elongation() - (80f64 / 8.0).sqrt()).abs() < 1e-9,
            "{a:?}"
        );
        // Cut by a box to its top 3 rows: a 3 x 3 square, round.
        let top = mask_axes(&mask, Some(&BBox::from([0.0, 0.0, 12.0, 4.0]))).unwrap();
        assert!((top.elongation() - 1.0).abs() < 1e-9, "{top:?}");
        assert_eq!(mask_axes(&GrayImage::new(4, 4), None), None);
    }
}
