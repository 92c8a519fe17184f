//! 3D object positions from a depth image aligned to the colour image, for task planners: raw
//! `16UC1`/`32FC1` depth -> metres -> a robust depth of a detected box or segmented mask -> the
//! object's 3D centre and extent in the colour camera's optical frame (REP 103).
//!
//! The depth image must be registered to the colour camera (same optical frame and field of view,
//! e.g. RealSense `aligned_depth_to_color`), at the colour resolution or another one: colour image
//! coordinates map to depth ones through the size ratio (see
//! [`PinholeCamera::scaled_to`] for the convention). Boxes and masks are in the crate's image
//! coordinates (see [`super::camera`]).

use image::GrayImage;
use nalgebra::{Isometry3, Point3, UnitQuaternion, Vector3};

use super::boxes::BBox;
use super::camera::{centres_within, image_to_pixel, PinholeCamera};
use super::masks::MASK_OFF;
use crate::error::{Error, Result};

/// `16UC1` depth is in millimetres (REP 118; depth_image_proc's `DepthTraits<uint16_t>`). Divided
/// by, not multiplied by its inverse, so that whole centimetres stay exact in f32.
pub const MILLIMETRES_PER_METRE: f32 = 1000.0;

/// Default nearest valid depth. A generous envelope, not one camera's spec: no common RGB-D
/// camera measures closer (RealSense D4xx min-Z is ~0.1-0.3 m, Azure Kinect's 0.25-0.5 m), so a
/// smaller value is noise.
pub const DEFAULT_MIN_DEPTH_M: f32 = 0.1;

/// Default farthest valid depth: stereo depth error grows with z², and beyond ~20 m it exceeds the
/// size of objects a manipulator or mobile robot acts on.
pub const DEFAULT_MAX_DEPTH_M: f32 = 20.0;

/// Fraction of a box's width and height, around its centre, whose depth is sampled: the central
/// 50% of each side (a quarter of the area). A detector's box is the object's bounding rectangle,
/// so its border holds background wherever the object is not a fronto-parallel rectangle filling
/// it (round, thin or tilted objects, and loose boxes); the centre is on the object for any convex
/// shape.
pub const BOX_CENTRE_FRACTION: f32 = 0.5;

/// Fewest valid depth pixels for a depth estimate: a 3x3 patch, whose median still tolerates 4
/// bad pixels; fewer (tiny or far objects, or an almost empty region) give no estimate.
pub const MIN_VALID_DEPTH_PIXELS: usize = 9;

/// Fewest valid depth pixels as a fraction of the sampled ones. When most of the region has no
/// return (transparent, specular or black objects, or closer than the camera's minimum range),
/// the few pixels that do return are often the background seen through or around the object, so
/// their median would put the object behind itself.
pub const MIN_VALID_DEPTH_FRACTION: f32 = 0.2;

/// Percentiles of the valid depths taken as the near and far faces of the object: the 10th/90th
/// ignore up to 10% stray pixels (flying pixels at edges, background under a mask's border) at
/// each end, which the minimum and maximum would not.
pub const NEAR_PERCENTILE: f64 = 10.0;
pub const FAR_PERCENTILE: f64 = 90.0;

/// The encodings of ROS depth images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthEncoding {
    /// `16UC1` (or `mono16`, which depth_image_proc accepts alike): millimetres, 0 = no data.
    Millimetres16,
    /// `32FC1`: metres; NaN, ±inf (REP 117) and non-positive values are no data.
    Metres32,
}

impl DepthEncoding {
    /// From `sensor_msgs/Image.encoding`.
    pub fn from_ros(encoding: &str) -> Result<Self> {
        match encoding {
            "16UC1" | "mono16" => Ok(Self::Millimetres16),
            "32FC1" => Ok(Self::Metres32),
            other => Err(Error::InvalidInput(format!(
                "unsupported depth encoding `{other}` (expected `16UC1`, `mono16` or `32FC1`)"
            ))),
        }
    }

    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Millimetres16 => 2,
            Self::Metres32 => 4,
        }
    }
}

/// A depth image in metres, row-major. Pixels without data are kept as they came (0, NaN, ±inf,
/// negative); sampling skips them (see [`DepthSampling`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthImage {
    width: u32,
    height: u32,
    metres: Vec<f32>,
}

impl DepthImage {
    /// From depth in metres, `width * height` values, row-major.
    pub fn from_metres(width: u32, height: u32, metres: Vec<f32>) -> Result<Self> {
        if width == 0 || height == 0 || metres.len() != width as usize * height as usize {
            return Err(Error::InvalidInput(format!(
                "{} depth values for a {width}x{height} depth image",
                metres.len()
            )));
        }
        Ok(Self {
            width,
            height,
            metres,
        })
    }

    /// From the fields of a `sensor_msgs/Image`: `data`, its size, `step` (bytes per row, at
    /// least `width` pixels; rows may be padded), `encoding` and `is_bigendian`.
    pub fn from_raw(
        data: &[u8],
        width: u32,
        height: u32,
        step: u32,
        encoding: &str,
        is_bigendian: bool,
    ) -> Result<Self> {
        let enc = DepthEncoding::from_ros(encoding)?;
        if width == 0 || height == 0 {
            return Err(Error::InvalidInput(format!(
                "`{encoding}` depth image is empty ({width}x{height})"
            )));
        }
        let bpp = enc.bytes_per_pixel();
        let (w, h, step) = (width as usize, height as usize, step as usize);
        let row_bytes = w * bpp;
        if step < row_bytes {
            return Err(Error::InvalidInput(format!(
                "`{encoding}` depth image of width {width} needs a step of at least {row_bytes} \
                 bytes, got {step}"
            )));
        }
        let expected = step.checked_mul(h).ok_or_else(|| {
            Error::InvalidInput(format!(
                "`{encoding}` depth image of {width}x{height} with step {step} is too large"
            ))
        })?;
        if data.len() != expected {
            return Err(Error::InvalidInput(format!(
                "`{encoding}` depth image of {width}x{height} with step {step} needs {expected} \
                 bytes (step * height), got {}",
                data.len()
            )));
        }
        let mut metres = Vec::with_capacity(w * h);
        for row in data.chunks_exact(step) {
            let row = &row[..row_bytes];
            match enc {
                DepthEncoding::Millimetres16 => {
                    metres.extend(row.chunks_exact(2).map(|b| {
                        let b = [b[0], b[1]];
                        let mm = if is_bigendian {
                            u16::from_be_bytes(b)
                        } else {
                            u16::from_le_bytes(b)
                        };
                        f32::from(mm) / MILLIMETRES_PER_METRE
                    }));
                }
                DepthEncoding::Metres32 => {
                    metres.extend(row.chunks_exact(4).map(|b| {
                        let b = [b[0], b[1], b[2], b[3]];
                        if is_bigendian {
                            f32::from_be_bytes(b)
                        } else {
                            f32::from_le_bytes(b)
                        }
                    }));
                }
            }
        }
        Self::from_metres(width, height, metres)
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Depth in metres, `height * width`, row-major, invalid pixels included.
    pub fn metres(&self) -> &[f32] {
        &self.metres
    }
}

/// How [`robust_depth`] samples a region; `Default` takes the named consts of this module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthSampling {
    /// Valid depths are in `[min_depth, max_depth]` metres.
    pub min_depth: f32,
    pub max_depth: f32,
    /// Fraction of a box's width and height sampled around its centre, in (0, 1].
    pub box_centre_fraction: f32,
    /// An estimate needs at least this many valid pixels...
    pub min_valid_pixels: usize,
    /// ...and at least this fraction of the sampled pixels, in [0, 1].
    pub min_valid_fraction: f32,
    /// Percentiles (0..=100) reported as the near and far depths.
    pub near_percentile: f64,
    pub far_percentile: f64,
}

impl Default for DepthSampling {
    fn default() -> Self {
        Self {
            min_depth: DEFAULT_MIN_DEPTH_M,
            max_depth: DEFAULT_MAX_DEPTH_M,
            box_centre_fraction: BOX_CENTRE_FRACTION,
            min_valid_pixels: MIN_VALID_DEPTH_PIXELS,
            min_valid_fraction: MIN_VALID_DEPTH_FRACTION,
            near_percentile: NEAR_PERCENTILE,
            far_percentile: FAR_PERCENTILE,
        }
    }
}

impl DepthSampling {
    /// Checks the settings (for parameters read once at startup).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(what));
        if !(self.min_depth.is_finite()
            && self.max_depth.is_finite()
            && 0.0 <= self.min_depth
            && self.min_depth < self.max_depth)
        {
            return bad(format!(
                "depth range must satisfy 0 <= min < max, got [{}, {}] m",
                self.min_depth, self.max_depth
            ));
        }
        if !(self.box_centre_fraction > 0.0 && self.box_centre_fraction <= 1.0) {
            return bad(format!(
                "box centre fraction must be in (0, 1], got {}",
                self.box_centre_fraction
            ));
        }
        if !(0.0..=1.0).contains(&self.min_valid_fraction) {
            return bad(format!(
                "minimum valid depth fraction must be in [0, 1], got {}",
                self.min_valid_fraction
            ));
        }
        if !(0.0 <= self.near_percentile
            && self.near_percentile <= self.far_percentile
            && self.far_percentile <= 100.0)
        {
            return bad(format!(
                "depth percentiles must satisfy 0 <= near <= far <= 100, got {} and {}",
                self.near_percentile, self.far_percentile
            ));
        }
        Ok(())
    }

    /// Whether `d` is a measured depth within range (false for 0, NaN, ±inf).
    fn accepts(&self, d: f32) -> bool {
        d > 0.0 && d >= self.min_depth && d <= self.max_depth
    }
}

/// Where an object is in the colour image.
#[derive(Debug, Clone, Copy)]
pub enum ObjectRegion<'a> {
    /// A detection box in colour image coordinates; only its central part is sampled for depth
    /// (see [`BOX_CENTRE_FRACTION`]).
    Box(BBox),
    /// A segmentation mask at the colour resolution, non-zero inside (e.g.
    /// [`SegmentationMask::mask`](super::masks::SegmentationMask)); all of it is sampled.
    Mask(&'a GrayImage),
}

/// The depth of an object, in metres along the optical axis, from its valid depth pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthStats {
    /// The median (the mean of the two middle values for an even count).
    pub median: f64,
    /// The near and far percentiles ([`DepthSampling::near_percentile`], `far_percentile`).
    pub near: f64,
    pub far: f64,
    /// Valid depth pixels, of `sampled_pixels` depth pixels under the region.
    pub valid_pixels: usize,
    pub sampled_pixels: usize,
}

/// A valid depth pixel: its column and row in the depth image, and its depth in metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DepthPixel {
    pub x: u32,
    pub y: u32,
    pub z: f32,
}

/// The valid depth pixels (as [`DepthSampling`] accepts them) whose centres fall inside `window`
/// (`[x_min, x_max, y_min, y_max]` in colour image coordinates; the whole image when `None`) and
/// on `mask` (colour resolution, when given), each depth pixel sampled once where its centre
/// falls in the colour image. Also returns how many depth pixels were sampled.
pub(crate) fn depth_pixels(
    depth: &DepthImage,
    colour_size: (u32, u32),
    window: Option<[f64; 4]>,
    mask: Option<&GrayImage>,
    sampling: &DepthSampling,
) -> Result<(Vec<DepthPixel>, usize)> {
    let (cw, ch) = colour_size;
    if cw == 0 || ch == 0 {
        return Err(Error::InvalidInput(format!(
            "colour image size must be non-zero, got {cw}x{ch}"
        )));
    }
    if let Some(m) = mask {
        if m.dimensions() != colour_size {
            return Err(Error::InvalidInput(format!(
                "a {}x{} mask for a {cw}x{ch} colour image",
                m.width(),
                m.height()
            )));
        }
    }
    let (dw, dh) = (depth.width, depth.height);
    let (cols, rows) = match window {
        Some([x0, x1, y0, y1]) => {
            // Image coordinates scale by the size ratio (no half-pixel shift).
            let sx = f64::from(dw) / f64::from(cw);
            let sy = f64::from(dh) / f64::from(ch);
            (
                centres_within(x0 * sx, x1 * sx, dw),
                centres_within(y0 * sy, y1 * sy, dh),
            )
        }
        None => (0..dw, 0..dh),
    };
    let mask_cols: Vec<u32> = cols.clone().map(|x| nearest_source(x, dw, cw)).collect();
    let mut out = Vec::new();
    let mut sampled = 0usize;
    for y in rows {
        let my = nearest_source(y, dh, ch);
        for (x, &mx) in cols.clone().zip(&mask_cols) {
            if mask.is_some_and(|m| m.get_pixel(mx, my)[0] == MASK_OFF) {
                continue;
            }
            sampled += 1;
            let z = depth.metres[y as usize * dw as usize + x as usize];
            if sampling.accepts(z) {
                out.push(DepthPixel { x, y, z });
            }
        }
    }
    Ok((out, sampled))
}

/// [`depth_pixels`] of an object: under its mask, or under the central part of its box
/// ([`DepthSampling::box_centre_fraction`]).
pub(crate) fn region_depth_pixels(
    depth: &DepthImage,
    colour_size: (u32, u32),
    region: ObjectRegion<'_>,
    sampling: &DepthSampling,
) -> Result<(Vec<DepthPixel>, usize)> {
    match region {
        ObjectRegion::Box(b) => {
            if !b.to_array().iter().all(|v| v.is_finite()) {
                return Err(Error::InvalidInput(format!(
                    "object box must be finite, got {:?}",
                    b.to_array()
                )));
            }
            let (cx, cy) = b.center();
            let f = f64::from(sampling.box_centre_fraction);
            let half_w = 0.5 * f * f64::from(b.width().max(0.0));
            let half_h = 0.5 * f * f64::from(b.height().max(0.0));
            let (cx, cy) = (f64::from(cx), f64::from(cy));
            let window = [cx - half_w, cx + half_w, cy - half_h, cy + half_h];
            depth_pixels(depth, colour_size, Some(window), None, sampling)
        }
        ObjectRegion::Mask(mask) => depth_pixels(depth, colour_size, None, Some(mask), sampling),
    }
}

/// Whether `valid` of `sampled` depth pixels are enough for an estimate: at least
/// [`DepthSampling::min_valid_pixels`] and [`DepthSampling::min_valid_fraction`] of them.
pub(crate) fn enough_depth(valid: usize, sampled: usize, sampling: &DepthSampling) -> bool {
    let needed = sampling
        .min_valid_pixels
        .max((f64::from(sampling.min_valid_fraction) * sampled as f64).ceil() as usize)
        .max(1);
    valid >= needed
}

/// The robust depth of the object in `region` (colour image coordinates, for a colour image of
/// `colour_size` = (width, height)): the median and percentiles of the valid depth pixels under
/// the mask, or under the central part of the box. Each depth pixel is sampled once, where its
/// centre falls in the colour image. O(sampled pixels): the order statistics use
/// `select_nth_unstable`.
///
/// `Ok(None)` when too few valid pixels remain (see [`MIN_VALID_DEPTH_PIXELS`] and
/// [`MIN_VALID_DEPTH_FRACTION`]): a normal outcome for a frame. `Err` for invalid settings, a
/// non-finite box, or a mask that is not `colour_size`.
pub fn robust_depth(
    depth: &DepthImage,
    colour_size: (u32, u32),
    region: ObjectRegion<'_>,
    sampling: &DepthSampling,
) -> Result<Option<DepthStats>> {
    sampling.validate()?;
    let (pixels, sampled) = region_depth_pixels(depth, colour_size, region, sampling)?;
    if !enough_depth(pixels.len(), sampled, sampling) {
        return Ok(None);
    }
    let mut values: Vec<f32> = pixels.iter().map(|p| p.z).collect();
    Ok(Some(DepthStats {
        median: percentile(&mut values, 50.0),
        near: percentile(&mut values, sampling.near_percentile),
        far: percentile(&mut values, sampling.far_percentile),
        valid_pixels: values.len(),
        sampled_pixels: sampled,
    }))
}

/// The pixel of a `src_n`-pixel axis under the centre of pixel `i` of a `dst_n`-pixel axis
/// spanning the same extent: `floor((i + 0.5) src_n / dst_n)`, in exact integers.
pub(crate) fn nearest_source(i: u32, dst_n: u32, src_n: u32) -> u32 {
    let s = (2 * u64::from(i) + 1) * u64::from(src_n) / (2 * u64::from(dst_n));
    // `s < src_n` for `i < dst_n`; the min guards the cast.
    s.min(u64::from(src_n) - 1) as u32
}

/// The `q`-th percentile (0..=100) of `values` (non-empty, no NaN) with numpy.percentile's default
/// "linear" method: `values[k] + frac (values[k + 1] - values[k])` of the sorted values at position
/// `q / 100 (n - 1)`. Reorders `values`; O(n).
pub(crate) fn percentile(values: &mut [f32], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q / 100.0 * (n - 1) as f64;
    let k = (pos.floor().max(0.0) as usize).min(n - 1);
    let frac = pos - k as f64;
    let (_, lo, right) = values.select_nth_unstable_by(k, f32::total_cmp);
    let lo = f64::from(*lo);
    match right.iter().copied().min_by(f32::total_cmp) {
        Some(hi) if frac > 0.0 => lo + frac * (f64::from(hi) - lo),
        _ => lo,
    }
}

/// An object's position and extent, metres: measured in the colour camera's optical frame, and
/// [`transformed`](Self::transformed) into another frame as a rigid box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object3d {
    /// The centre of the object's visible surface: its image centre back-projected at the median
    /// depth. The camera does not see the back, so this is not the volumetric centre (that would
    /// be about `size.z / 2` farther).
    pub centre: Point3<f64>,
    /// Width (x) and height (y) at the median depth, and the near-to-far depth spread (z), along
    /// the box's own axes (the camera's optical axes). Under a box only the central part is
    /// sampled, so z then measures the central part only.
    pub size: Vector3<f64>,
    /// The box's axes in the frame of `centre`: the identity in the camera's optical frame.
    pub orientation: UnitQuaternion<f64>,
}

impl Object3d {
    /// The same box in another frame: `target_from_source` maps points of the frame this box is
    /// expressed in to the target frame (tf2's `lookupTransform(target, source)`). The centre
    /// moves, the axes rotate, the size (along the box's own axes) stays.
    pub fn transformed(&self, target_from_source: &Isometry3<f64>) -> Object3d {
        Object3d {
            centre: target_from_source * self.centre,
            size: self.size,
            orientation: target_from_source.rotation * self.orientation,
        }
    }

    /// The point `offset` (along the box's own axes) from the centre, in the box's frame.
    pub fn point_along_axes(&self, offset: Vector3<f64>) -> Point3<f64> {
        self.centre + self.orientation * offset
    }
}

/// The object seen around `centre` (colour image coordinates) spanning `size_px` (width, height)
/// colour pixels, at `depth` (from [`robust_depth`]). `camera` is the colour camera.
pub fn object_at(
    camera: &PinholeCamera,
    depth: &DepthStats,
    centre: (f64, f64),
    size_px: (f64, f64),
) -> Object3d {
    let z = depth.median;
    let (u, v) = image_to_pixel(centre.0, centre.1);
    Object3d {
        centre: camera.back_project(u, v, z),
        size: Vector3::new(
            size_px.0 * z / camera.fx,
            size_px.1 * z / camera.fy,
            depth.far - depth.near,
        ),
        orientation: UnitQuaternion::identity(),
    }
}

/// The object in `region` at `depth` (from [`robust_depth`] on the same region). A box gives its
/// centre and size; a mask its centroid and the size of its bounding box. `Err` for a mask that
/// is empty or not the camera's size.
pub fn object_position(
    camera: &PinholeCamera,
    depth: &DepthStats,
    region: ObjectRegion<'_>,
) -> Result<Object3d> {
    match region {
        ObjectRegion::Box(b) => {
            let (cx, cy) = b.center();
            Ok(object_at(
                camera,
                depth,
                (f64::from(cx), f64::from(cy)),
                (f64::from(b.width()), f64::from(b.height())),
            ))
        }
        ObjectRegion::Mask(mask) => {
            if mask.dimensions() != (camera.width, camera.height) {
                return Err(Error::InvalidInput(format!(
                    "a {}x{} mask for a {}x{} camera",
                    mask.width(),
                    mask.height(),
                    camera.width,
                    camera.height
                )));
            }
            let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
            let (mut sum_x, mut sum_y, mut count) = (0f64, 0f64, 0u64);
            for (x, y, px) in mask.enumerate_pixels() {
                if px[0] != MASK_OFF {
                    sum_x += f64::from(x);
                    sum_y += f64::from(y);
                    count += 1;
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
            if count == 0 {
                return Err(Error::InvalidInput("empty object mask".into()));
            }
            // Pixel x covers [x, x + 1) in image coordinates: its centre is x + 0.5.
            let n = count as f64;
            Ok(object_at(
                camera,
                depth,
                (sum_x / n + 0.5, sum_y / n + 0.5),
                (f64::from(x1 - x0), f64::from(y1 - y0)),
            ))
        }
    }
}

/// [`robust_depth`] then [`object_position`] for the colour `camera`: `Ok(None)` when the region
/// has too little valid depth.
pub fn locate_object(
    camera: &PinholeCamera,
    depth: &DepthImage,
    region: ObjectRegion<'_>,
    sampling: &DepthSampling,
) -> Result<Option<Object3d>> {
    match robust_depth(depth, (camera.width, camera.height), region, sampling)? {
        Some(stats) => object_position(camera, &stats, region).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    use crate::vision::masks::MASK_ON;

    // A colour camera with distinct fx/fy and an off-centre principal point, so that mix-ups
    // show.
    const K: [f64; 9] = [600.0, 0.0, 322.3, 0.0, 590.0, 236.9, 0.0, 0.0, 1.0];
    const COLOUR_SIZE: (u32, u32) = (640, 480);
    // The scene: a fronto-parallel wall at 1.5 m and, in front of it, a box whose 0.30 x 0.20 m
    // front face is at 1.0 m, centred on (0.10, -0.05) in the optical frame.
    const WALL_Z: f64 = 1.5;
    const FACE_Z: f64 = 1.0;
    const FACE_CENTRE: (f64, f64) = (0.10, -0.05);
    const FACE_SIZE: (f64, f64) = (0.30, 0.20);
    const TOLERANCE_M: f64 = 3e-3;

    fn colour_camera() -> PinholeCamera {
        PinholeCamera::from_k(&K, COLOUR_SIZE.0, COLOUR_SIZE.1).unwrap()
    }

    /// Whether the ray of pixel (u, v) of `cam` hits the face.
    fn hits_face(cam: &PinholeCamera, u: f64, v: f64) -> bool {
        let p = cam.back_project(u, v, FACE_Z);
        (p.x - FACE_CENTRE.0).abs() <= FACE_SIZE.0 / 2.0
            && (p.y - FACE_CENTRE.1).abs() <= FACE_SIZE.1 / 2.0
    }

    /// The scene's depth seen by `cam` (same optical frame as the colour camera).
    fn render(cam: &PinholeCamera) -> Vec<f32> {
        let mut out = Vec::with_capacity((cam.width * cam.height) as usize);
        for v in 0..cam.height {
            for u in 0..cam.width {
                let hit = hits_face(cam, f64::from(u), f64::from(v));
                out.push(if hit { FACE_Z } else { WALL_Z } as f32);
            }
        }
        out
    }

    /// The face's exact box in colour image coordinates.
    fn face_box(cam: &PinholeCamera) -> BBox {
        let corner = |sx: f64, sy: f64| {
            let p = Point3::new(
                FACE_CENTRE.0 + sx * FACE_SIZE.0 / 2.0,
                FACE_CENTRE.1 + sy * FACE_SIZE.1 / 2.0,
                FACE_Z,
            );
            let (u, v) = cam.project(&p).unwrap();
            (u + 0.5, v + 0.5)
        };
        let (x0, y0) = corner(-1.0, -1.0);
        let (x1, y1) = corner(1.0, 1.0);
        BBox::from([x0 as f32, y0 as f32, x1 as f32, y1 as f32])
    }

    fn face_mask(cam: &PinholeCamera) -> GrayImage {
        GrayImage::from_fn(cam.width, cam.height, |x, y| {
            let hit = hits_face(cam, f64::from(x), f64::from(y));
            Luma([if hit { MASK_ON } else { MASK_OFF }])
        })
    }

    fn depth_at(cam: &PinholeCamera) -> DepthImage {
        DepthImage::from_metres(cam.width, cam.height, render(cam)).unwrap()
    }

    fn assert_face(obj: &Object3d, depth_extent_max: f64) {
        let c = obj.centre;
        let s = obj.size;
        let close = |a: f64, b: f64| (a - b).abs() < TOLERANCE_M;
        assert!(
            close(c.x, FACE_CENTRE.0) && close(c.y, FACE_CENTRE.1) && close(c.z, FACE_Z),
            "centre {c}"
        );
        assert!(
            close(s.x, FACE_SIZE.0) && close(s.y, FACE_SIZE.1) && s.z.abs() <= depth_extent_max,
            "size {s}"
        );
    }

    fn le16(mm: &[u16], width: usize, pad: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for row in mm.chunks(width) {
            row.iter().for_each(|v| out.extend(v.to_le_bytes()));
            out.extend(std::iter::repeat_n(0xAB, pad));
        }
        out
    }

    #[test]
    fn box_on_a_face_at_full_and_half_resolution() {
        let colour = colour_camera();
        let bbox = face_box(&colour);
        for (dw, dh) in [(640, 480), (320, 240)] {
            let depth = depth_at(&colour.scaled_to(dw, dh).unwrap());
            let region = ObjectRegion::Box(bbox);
            let stats = robust_depth(&depth, COLOUR_SIZE, region, &DepthSampling::default())
                .unwrap()
                .unwrap();
            assert_eq!((stats.median, stats.near, stats.far), (1.0, 1.0, 1.0));
            assert_eq!(stats.valid_pixels, stats.sampled_pixels);
            // The central 50% of each side of a ~180 x 118 px box, at depth resolution.
            let expected = 0.25 * f64::from(bbox.area()) * f64::from(dw * dh) / (640.0 * 480.0);
            let ratio = stats.sampled_pixels as f64 / expected;
            assert!((0.9..1.1).contains(&ratio), "{stats:?} vs {expected}");
            assert_face(&object_position(&colour, &stats, region).unwrap(), 1e-9);
            let obj = locate_object(&colour, &depth, region, &DepthSampling::default()).unwrap();
            assert_face(&obj.unwrap(), 1e-9);
        }
    }

    #[test]
    fn loose_box_still_samples_the_object() {
        // 20 px of wall on every side of the face: the centre is still all face.
        let colour = colour_camera();
        let b = face_box(&colour);
        let loose = BBox::from([
            b.x_min - 20.0,
            b.y_min - 20.0,
            b.x_max + 20.0,
            b.y_max + 20.0,
        ]);
        let stats = robust_depth(
            &depth_at(&colour.scaled_to(320, 240).unwrap()),
            COLOUR_SIZE,
            ObjectRegion::Box(loose),
            &DepthSampling::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(stats.median, FACE_Z);
    }

    #[test]
    fn mask_on_a_face_at_full_and_half_resolution() {
        let colour = colour_camera();
        let mask = face_mask(&colour);
        for (dw, dh) in [(640, 480), (320, 240)] {
            let depth = depth_at(&colour.scaled_to(dw, dh).unwrap());
            let region = ObjectRegion::Mask(&mask);
            let stats = robust_depth(&depth, COLOUR_SIZE, region, &DepthSampling::default())
                .unwrap()
                .unwrap();
            assert_eq!(stats.median, FACE_Z);
            // Depth pixels straddling the mask border may see the wall; fewer than 10% do.
            assert_eq!(stats.far, FACE_Z, "{stats:?}");
            let obj = object_position(&colour, &stats, region).unwrap();
            // The mask's centroid and bounding box are within a pixel (~1.7 mm) of the face's.
            assert_face(&obj, 1e-9);
        }
    }

    #[test]
    fn raw_16uc1_and_32fc1_with_holes() {
        let colour = colour_camera();
        let depth_cam = colour.scaled_to(320, 240).unwrap();
        let metres = render(&depth_cam);
        let w = 320usize;
        // Every third pixel has no data; the rest in millimetres.
        let mm: Vec<u16> = metres
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                if i % 3 == 0 {
                    0
                } else {
                    (m * 1000.0).round() as u16
                }
            })
            .collect();
        let pad = 6;
        let step = (w * 2 + pad) as u32;
        let le = le16(&mm, w, pad);
        let be: Vec<u8> = le
            .chunks(step as usize)
            .flat_map(|row| {
                let mut row = row.to_vec();
                row[..w * 2].chunks_exact_mut(2).for_each(|p| p.swap(0, 1));
                row
            })
            .collect();
        // 32FC1 with every kind of no-data, and out-of-range values.
        let junk = [
            0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1.0,
            0.05,
            25.0,
        ];
        let f: Vec<u8> = metres
            .iter()
            .enumerate()
            .flat_map(|(i, &m)| {
                let v = if i % 3 == 0 {
                    junk[(i / 3) % junk.len()]
                } else {
                    m
                };
                v.to_le_bytes()
            })
            .collect();
        let images = [
            DepthImage::from_raw(&le, 320, 240, step, "16UC1", false).unwrap(),
            DepthImage::from_raw(&be, 320, 240, step, "16UC1", true).unwrap(),
            DepthImage::from_raw(&le, 320, 240, step, "mono16", false).unwrap(),
            DepthImage::from_raw(&f, 320, 240, (w * 4) as u32, "32FC1", false).unwrap(),
        ];
        assert_eq!(images[0], images[1]);
        assert_eq!(images[0].metres()[1], metres[1]);
        let bbox = face_box(&colour);
        for depth in &images {
            assert_eq!((depth.width(), depth.height()), (320, 240));
            let region = ObjectRegion::Box(bbox);
            let stats = robust_depth(depth, COLOUR_SIZE, region, &DepthSampling::default())
                .unwrap()
                .unwrap();
            let valid = stats.valid_pixels as f64 / stats.sampled_pixels as f64;
            assert!((valid - 2.0 / 3.0).abs() < 0.02, "{stats:?}");
            assert_face(&object_position(&colour, &stats, region).unwrap(), 1e-6);
        }
    }

    #[test]
    fn too_little_valid_depth_gives_none() {
        let colour = colour_camera();
        let bbox = ObjectRegion::Box(face_box(&colour));
        let sampling = DepthSampling::default();
        let empty = DepthImage::from_metres(64, 48, vec![f32::NAN; 64 * 48]).unwrap();
        assert_eq!(
            robust_depth(&empty, COLOUR_SIZE, bbox, &sampling).unwrap(),
            None
        );
        // All beyond range.
        let far = DepthImage::from_metres(64, 48, vec![30.0; 64 * 48]).unwrap();
        assert_eq!(
            robust_depth(&far, COLOUR_SIZE, bbox, &sampling).unwrap(),
            None
        );
        // 1 valid pixel in 10: plenty of pixels, but under the 20% floor.
        let sparse: Vec<f32> = (0..128 * 96)
            .map(|i| if i % 10 == 0 { 1.0 } else { 0.0 })
            .collect();
        let sparse = DepthImage::from_metres(128, 96, sparse).unwrap();
        assert_eq!(
            robust_depth(&sparse, COLOUR_SIZE, bbox, &sampling).unwrap(),
            None
        );
        let lenient = DepthSampling {
            min_valid_fraction: 0.05,
            ..sampling
        };
        let stats = robust_depth(&sparse, COLOUR_SIZE, bbox, &lenient).unwrap();
        assert_eq!(stats.map(|s| s.median), Some(1.0));
        // A box off the image samples nothing.
        let off = ObjectRegion::Box(BBox::from([700.0, 10.0, 800.0, 50.0]));
        let full = depth_at(&colour);
        assert_eq!(
            robust_depth(&full, COLOUR_SIZE, off, &sampling).unwrap(),
            None
        );
        // An empty mask likewise; object_position refuses it.
        let mask = GrayImage::new(640, 480);
        let region = ObjectRegion::Mask(&mask);
        assert_eq!(
            robust_depth(&full, COLOUR_SIZE, region, &sampling).unwrap(),
            None
        );
        let stats = DepthStats {
            median: 1.0,
            near: 1.0,
            far: 1.0,
            valid_pixels: 1,
            sampled_pixels: 1,
        };
        assert!(object_position(&colour, &stats, region).is_err());
    }

    #[test]
    fn range_is_overridable() {
        let colour = colour_camera();
        let bbox = ObjectRegion::Box(face_box(&colour));
        let depth = depth_at(&colour);
        let near_only = DepthSampling {
            max_depth: 0.8,
            ..DepthSampling::default()
        };
        assert_eq!(
            robust_depth(&depth, COLOUR_SIZE, bbox, &near_only).unwrap(),
            None
        );
        let bad = DepthSampling {
            min_depth: 2.0,
            max_depth: 1.0,
            ..DepthSampling::default()
        };
        assert!(robust_depth(&depth, COLOUR_SIZE, bbox, &bad).is_err());
    }

    #[test]
    fn raw_input_errors_name_the_problem() {
        let err = DepthImage::from_raw(&[0; 12], 2, 2, 6, "rgb8", false).unwrap_err();
        assert!(err.to_string().contains("`rgb8`"), "{err}");
        let err = DepthImage::from_raw(&[0; 7], 2, 2, 4, "16UC1", false).unwrap_err();
        assert!(err.to_string().contains("needs 8 bytes"), "{err}");
        let err = DepthImage::from_raw(&[0; 8], 2, 2, 2, "16UC1", false).unwrap_err();
        assert!(err.to_string().contains("step"), "{err}");
        assert!(DepthImage::from_raw(&[], 0, 2, 4, "32FC1", false).is_err());
        assert!(DepthImage::from_metres(2, 2, vec![1.0; 3]).is_err());
        let depth = DepthImage::from_metres(2, 2, vec![1.0; 4]).unwrap();
        let mask = GrayImage::new(3, 3);
        let region = ObjectRegion::Mask(&mask);
        let sampling = DepthSampling::default();
        assert!(robust_depth(&depth, (4, 4), region, &sampling).is_err());
        let nan_box = ObjectRegion::Box(BBox::from([f32::NAN, 0.0, 1.0, 1.0]));
        assert!(robust_depth(&depth, (4, 4), nan_box, &sampling).is_err());
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // np.percentile(np.arange(101), [10, 50, 90]) == [10, 50, 90];
        // np.percentile([4, 1, 3, 2], [50, 10]) == [2.5, 1.3].
        let mut v: Vec<f32> = (0..=100).map(|i| ((i * 37) % 101) as f32).collect();
        assert_eq!(percentile(&mut v, 10.0), 10.0);
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 90.0), 90.0);
        let mut v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&mut v, 50.0), 2.5);
        assert!((percentile(&mut v, 10.0) - 1.3).abs() < 1e-12);
        assert_eq!(percentile(&mut v, 100.0), 4.0);
        assert_eq!(percentile(&mut [7.0], 90.0), 7.0);
    }

    #[test]
    fn depth_spread_gives_the_depth_extent() {
        // A mask over a ramp 1.0 .. 1.1 m: the 10th..90th percentile spread is 80% of it.
        let (w, h) = (100u32, 1u32);
        let metres: Vec<f32> = (0..w).map(|i| 1.0 + 0.1 * i as f32 / 99.0).collect();
        let depth = DepthImage::from_metres(w, h, metres).unwrap();
        let mask = GrayImage::from_pixel(w, h, Luma([MASK_ON]));
        let cam = PinholeCamera::new(100.0, 100.0, 49.5, 0.0, w, h).unwrap();
        let obj = locate_object(
            &cam,
            &depth,
            ObjectRegion::Mask(&mask),
            &DepthSampling::default(),
        )
        .unwrap()
        .unwrap();
        assert!((obj.size.z - 0.08).abs() < 1e-6, "{}", obj.size);
        assert!((obj.centre.z - 1.05).abs() < 1e-6);
        // 100 px wide at 1.05 m with fx = 100.
        assert!((obj.size.x - 1.05).abs() < 1e-6);
    }

    #[test]
    fn a_transformed_box_keeps_its_size_and_turns_its_axes() {
        use nalgebra::{Translation3, Vector3};
        use std::f64::consts::FRAC_PI_2;
        // base_link <- camera optical frame, as a RealSense URDF has it: the optical frame's z
        // (forward) is base x, its x (right) is base -y, its y (down) is base -z; 0.1 m ahead
        // and 0.5 m up.
        let optical = UnitQuaternion::from_euler_angles(-FRAC_PI_2, 0.0, -FRAC_PI_2);
        let base_from_camera = Isometry3::from_parts(Translation3::new(0.1, 0.0, 0.5), optical);
        let obj = Object3d {
            centre: Point3::new(0.2, -0.1, 1.0),
            size: Vector3::new(0.3, 0.2, 0.05),
            orientation: UnitQuaternion::identity(),
        };
        let moved = obj.transformed(&base_from_camera);
        // 1 m ahead, 0.2 m to the right (-y), 0.1 m above the camera (up is -y optical).
        let expect = Point3::new(1.1, -0.2, 0.6);
        assert!((moved.centre - expect).norm() < 1e-12, "{}", moved.centre);
        assert_eq!(moved.size, obj.size);
        // The box's x axis (image right) points along base -y; its y (image down) along -z.
        let x = moved.orientation * Vector3::x();
        let y = moved.orientation * Vector3::y();
        assert!((x - Vector3::new(0.0, -1.0, 0.0)).norm() < 1e-12, "{x}");
        assert!((y - Vector3::new(0.0, 0.0, -1.0)).norm() < 1e-12, "{y}");
        // The box's top edge (image up, -y) sits above the centre in base_link.
        let top = moved.point_along_axes(Vector3::new(0.0, -0.1, 0.0));
        assert!((top - Point3::new(1.1, -0.2, 0.7)).norm() < 1e-12, "{top}");
        // And back: the inverse transform gives the original box.
        let back = moved.transformed(&base_from_camera.inverse());
        assert!((back.centre - obj.centre).norm() < 1e-12);
        assert!(back.orientation.angle_to(&obj.orientation) < 1e-12);
    }
}
