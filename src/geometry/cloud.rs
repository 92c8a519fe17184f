//! Per-object point clouds: the valid depth pixels under an object's region, depth outliers
//! dropped, back-projected into the colour camera's optical frame, voxel-downsampled and capped;
//! then all objects of a frame packed into the byte layout of one `sensor_msgs/PointCloud2`.

use std::collections::HashMap;

use nalgebra::{Isometry3, Point3, Vector3};

use super::drop_depth_outliers;
use crate::error::{Error, Result};
use crate::vision::camera::PinholeCamera;
use crate::vision::depth::{
    enough_depth, region_depth_pixels, DepthImage, DepthSampling, ObjectRegion,
};

/// `sensor_msgs/PointField` datatype codes used here (the message's constants).
pub const POINT_FIELD_UINT32: u8 = 6;
pub const POINT_FIELD_FLOAT32: u8 = 7;

/// Default voxel edge, metres: 5 mm keeps a small object's shape (a 5 cm cup stays 10 voxels
/// across) while thinning a 1 m object seen at 0.5 m by two orders of magnitude.
pub const DEFAULT_VOXEL_M: f32 = 0.005;

/// Default cap on one object's points: a bound on the message size however big the object.
pub const DEFAULT_MAX_POINTS: usize = 5000;

/// How [`object_points`] builds a cloud.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloudParams {
    /// Voxel edge in metres for [`voxel_downsample`]; 0 = off.
    pub voxel: f32,
    /// Most points in one object's cloud (evenly thinned beyond); 0 = no cap.
    pub max_points: usize,
}

impl Default for CloudParams {
    fn default() -> Self {
        Self {
            voxel: DEFAULT_VOXEL_M,
            max_points: DEFAULT_MAX_POINTS,
        }
    }
}

impl CloudParams {
    /// Checks the settings (for parameters read at startup or set live).
    pub fn validate(&self) -> Result<()> {
        if !(self.voxel.is_finite() && self.voxel >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "point cloud voxel size must be a finite number of metres >= 0 (0 = off), got {}",
                self.voxel
            )));
        }
        Ok(())
    }
}

/// The 3D points of the object in `region` (colour image coordinates, `camera` = the colour
/// camera), in the colour camera's optical frame, metres: every valid depth pixel under the mask
/// (or under the central part of the box, as for the object's position), each where its centre
/// falls in the colour image, back-projected with the depth image's own intrinsics (the colour
/// camera scaled to the depth resolution); depths outside the sampling's near..far percentiles
/// dropped (a tilted surface loses its nearest and farthest 10% too: set the percentiles to 0
/// and 100 to keep them); then [`voxel_downsample`]d and capped at `params.max_points`.
///
/// Empty when the region has too little valid depth for a position (the rule of
/// [`crate::vision::depth::robust_depth`]). `Err` for invalid settings, a non-finite box or a
/// mask that is not the camera's size.
pub fn object_points(
    camera: &PinholeCamera,
    depth: &DepthImage,
    region: ObjectRegion<'_>,
    sampling: &DepthSampling,
    params: &CloudParams,
) -> Result<Vec<Point3<f32>>> {
    sampling.validate()?;
    params.validate()?;
    let colour = (camera.width, camera.height);
    let (mut pixels, sampled) = region_depth_pixels(depth, colour, region, sampling)?;
    if !enough_depth(pixels.len(), sampled, sampling) {
        return Ok(Vec::new());
    }
    drop_depth_outliers(&mut pixels, sampling);
    let depth_camera = camera.scaled_to(depth.width(), depth.height())?;
    let points: Vec<Point3<f32>> = pixels
        .iter()
        .map(|p| {
            let q = depth_camera.back_project(f64::from(p.x), f64::from(p.y), f64::from(p.z));
            Point3::new(q.x as f32, q.y as f32, q.z as f32)
        })
        .collect();
    let points = voxel_downsample(&points, params.voxel)?;
    Ok(cap_points(points, params.max_points))
}

/// One point per occupied cubic voxel of edge `voxel` metres (voxels aligned on the frame's
/// origin): the centroid of the voxel's points, as PCL's `VoxelGrid` and Open3D's
/// `voxel_down_sample`. Voxels come out in the order of their first point, so the result is
/// deterministic. `voxel == 0` returns the points unchanged.
///
/// Centroids sit inside their voxels, so a cloud's extent shrinks by up to one voxel (half at
/// each side).
pub fn voxel_downsample(points: &[Point3<f32>], voxel: f32) -> Result<Vec<Point3<f32>>> {
    CloudParams {
        voxel,
        max_points: 0,
    }
    .validate()?;
    if voxel == 0.0 {
        return Ok(points.to_vec());
    }
    let inv = 1.0 / f64::from(voxel);
    let mut index: HashMap<[i64; 3], usize> = HashMap::new();
    let mut sums: Vec<(Vector3<f64>, u32)> = Vec::new();
    for p in points {
        let v = p.coords.cast::<f64>();
        // Non-finite points have no voxel; `as` would put them all in one.
        if !v.iter().all(|c| c.is_finite()) {
            continue;
        }
        let key = [0, 1, 2].map(|i| (v[i] * inv).floor() as i64);
        let slot = *index.entry(key).or_insert_with(|| {
            sums.push((Vector3::zeros(), 0));
            sums.len() - 1
        });
        sums[slot].0 += v;
        sums[slot].1 += 1;
    }
    Ok(sums
        .into_iter()
        .map(|(s, n)| Point3::from((s / f64::from(n)).cast::<f32>()))
        .collect())
}

/// `points` moved into another frame: `target_from_source` maps points of their frame to the
/// target frame (tf2's `lookupTransform(target, source)`); computed in f64.
pub fn transform_points(
    points: &[Point3<f32>],
    target_from_source: &Isometry3<f64>,
) -> Vec<Point3<f32>> {
    points
        .iter()
        .map(|p| (target_from_source * p.cast::<f64>()).cast::<f32>())
        .collect()
}

/// At most `max_points` (0 = all) of `points`, evenly spaced in their order: points come in image
/// order, so the kept ones still cover the whole object.
fn cap_points(points: Vec<Point3<f32>>, max_points: usize) -> Vec<Point3<f32>> {
    let n = points.len();
    if max_points == 0 || n <= max_points {
        return points;
    }
    (0..max_points)
        .map(|i| points[i * n / max_points])
        .collect()
}

/// One object's points and what ties them to its detection.
#[derive(Debug, Clone, Copy)]
pub struct CloudObject<'a> {
    /// Points in the frame of the message (e.g. from [`object_points`], then transformed).
    pub points: &'a [Point3<f32>],
    /// The track id where the stream is tracked (ids start at 1); `None` packs 0.
    pub track_id: Option<u64>,
    /// The index of the detection's phrase in the stream's queries.
    pub query_index: usize,
    /// The detection's index in the frame's detections (ties points to a detection even without
    /// tracking, where two detections may share a phrase).
    pub detection_index: usize,
}

/// One `sensor_msgs/PointField`: `count` values of `datatype` at byte `offset` in each point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudField {
    pub name: &'static str,
    pub offset: u32,
    pub datatype: u8,
    pub count: u32,
}

/// The fields of a `sensor_msgs/PointCloud2`, little-endian, one row (`height` 1, `width` points,
/// `row_step = width * point_step`), dense (no NaN points): the node copies them into the message
/// as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedCloud {
    pub fields: Vec<CloudField>,
    pub point_step: u32,
    pub width: u32,
    pub height: u32,
    pub row_step: u32,
    pub is_bigendian: bool,
    pub is_dense: bool,
    pub data: Vec<u8>,
}

/// The per-point layout of [`pack_cloud`]: x, y, z float32 first, at 0/4/8 as PCL's `PointXYZ`
/// and every reader expects (RViz, `pcl::fromROSMsg` and Open3D's readers match fields by name
/// and ignore the others), then three uint32 labels; 24 bytes, so every field is aligned.
fn fields() -> Vec<CloudField> {
    let field = |name, offset, datatype| CloudField {
        name,
        offset,
        datatype,
        count: 1,
    };
    vec![
        field("x", 0, POINT_FIELD_FLOAT32),
        field("y", 4, POINT_FIELD_FLOAT32),
        field("z", 8, POINT_FIELD_FLOAT32),
        field("track_id", 12, POINT_FIELD_UINT32),
        field("query_index", 16, POINT_FIELD_UINT32),
        field("detection_index", 20, POINT_FIELD_UINT32),
    ]
}

/// Bytes per point of [`pack_cloud`]'s layout.
const POINT_STEP: u32 = 24;

/// All objects' points in one cloud, in the objects' order: fields x, y, z (float32, metres),
/// track_id (uint32, 0 = untracked), query_index and detection_index (uint32). Non-finite points
/// are left out, so the cloud is dense. `Err` when a label does not fit in 32 bits or the cloud
/// is too large for the message's 32-bit sizes.
pub fn pack_cloud(objects: &[CloudObject<'_>]) -> Result<PackedCloud> {
    let to_u32 = |what: &str, v: u64| {
        u32::try_from(v).map_err(|_| {
            Error::InvalidInput(format!("point cloud {what} {v} does not fit in a uint32"))
        })
    };
    let total: usize = objects.iter().map(|o| o.points.len()).sum();
    let mut data = Vec::with_capacity(total * POINT_STEP as usize);
    let mut width = 0u64;
    for o in objects {
        let labels = [
            to_u32("track id", o.track_id.unwrap_or(0))?,
            to_u32("query index", o.query_index as u64)?,
            to_u32("detection index", o.detection_index as u64)?,
        ];
        for p in o.points.iter().filter(|p| p.iter().all(|c| c.is_finite())) {
            for c in p.iter() {
                data.extend_from_slice(&c.to_le_bytes());
            }
            for l in labels {
                data.extend_from_slice(&l.to_le_bytes());
            }
            width += 1;
        }
    }
    let width = to_u32("size (points)", width)?;
    let row_step = width.checked_mul(POINT_STEP).ok_or_else(|| {
        Error::InvalidInput(format!("a point cloud of {width} points is too large"))
    })?;
    Ok(PackedCloud {
        fields: fields(),
        point_step: POINT_STEP,
        width,
        height: 1,
        row_step,
        is_bigendian: false,
        is_dense: true,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    use crate::vision::boxes::BBox;
    use crate::vision::masks::{MASK_OFF, MASK_ON};

    // The scene of vision::depth's tests: a wall at 1.5 m and a box whose 0.30 x 0.20 m front
    // face is at 1.0 m, centred on (0.10, -0.05) in the optical frame.
    const K: [f64; 9] = [600.0, 0.0, 322.3, 0.0, 590.0, 236.9, 0.0, 0.0, 1.0];
    const FACE_Z: f64 = 1.0;
    const WALL_Z: f64 = 1.5;
    const FACE_CENTRE: (f64, f64) = (0.10, -0.05);
    const FACE_SIZE: (f64, f64) = (0.30, 0.20);

    fn colour_camera() -> PinholeCamera {
        PinholeCamera::from_k(&K, 640, 480).unwrap()
    }

    fn hits_face(cam: &PinholeCamera, u: f64, v: f64) -> bool {
        let p = cam.back_project(u, v, FACE_Z);
        (p.x - FACE_CENTRE.0).abs() <= FACE_SIZE.0 / 2.0
            && (p.y - FACE_CENTRE.1).abs() <= FACE_SIZE.1 / 2.0
    }

    fn render(cam: &PinholeCamera) -> DepthImage {
        let mut out = Vec::new();
        for v in 0..cam.height {
            for u in 0..cam.width {
                let z = if hits_face(cam, f64::from(u), f64::from(v)) {
                    FACE_Z
                } else {
                    WALL_Z
                };
                out.push(z as f32);
            }
        }
        DepthImage::from_metres(cam.width, cam.height, out).unwrap()
    }

    fn face_mask(cam: &PinholeCamera) -> GrayImage {
        GrayImage::from_fn(cam.width, cam.height, |x, y| {
            let hit = hits_face(cam, f64::from(x), f64::from(y));
            Luma([if hit { MASK_ON } else { MASK_OFF }])
        })
    }

    fn extent(points: &[Point3<f32>]) -> Vector3<f64> {
        let mut lo = Vector3::repeat(f64::INFINITY);
        let mut hi = Vector3::repeat(f64::NEG_INFINITY);
        for p in points {
            let v = p.coords.cast::<f64>();
            lo = lo.inf(&v);
            hi = hi.sup(&v);
        }
        hi - lo
    }

    #[test]
    fn a_box_face_keeps_its_extent_after_voxelisation() {
        let colour = colour_camera();
        let mask = face_mask(&colour);
        for (dw, dh) in [(640, 480), (320, 240)] {
            let mut depth = render(&colour.scaled_to(dw, dh).unwrap());
            // Stray returns under the mask (a flying pixel, a reflection): under 10% at each end.
            let (w, metres) = (dw as usize, depth.metres().to_vec());
            let mut metres = metres;
            let depth_cam = colour.scaled_to(dw, dh).unwrap();
            let (u0, v0) = depth_cam.project(&Point3::new(0.1, -0.05, 1.0)).unwrap();
            let at = |du: i64, dv: i64| ((v0 as i64 + dv) as usize) * w + (u0 as i64 + du) as usize;
            metres[at(0, 0)] = 0.4;
            metres[at(3, 2)] = 3.0;
            metres[at(-4, 1)] = f32::NAN;
            depth = DepthImage::from_metres(dw, dh, metres).unwrap();
            for voxel in [0.0, 0.005, 0.01, 0.02] {
                let params = CloudParams {
                    voxel,
                    max_points: 0,
                };
                let region = ObjectRegion::Mask(&mask);
                let pts =
                    object_points(&colour, &depth, region, &DepthSampling::default(), &params)
                        .unwrap();
                let e = extent(&pts);
                // Centroids sit up to half a voxel inside each edge: the extent is the face's to
                // 1 cm at the default 5 mm voxels, and shrinks by less than a voxel at any size
                // (plus a depth pixel, z / fx, at each edge).
                let pixel = 2.0 * FACE_Z / depth_cam.fx;
                let v = f64::from(voxel);
                for (got, want) in [(e.x, FACE_SIZE.0), (e.y, FACE_SIZE.1)] {
                    if voxel <= 0.005 {
                        assert!((got - want).abs() < 0.01, "{dw}x{dh} voxel {voxel}: {e}");
                    }
                    assert!(
                        got > want - v - pixel && got < want + pixel,
                        "{dw}x{dh} voxel {voxel}: extent {e}"
                    );
                }
                // The strays are gone: the face is flat.
                assert!(e.z < 1e-6, "{dw}x{dh} voxel {voxel}: extent {e}");
                if voxel > 0.0 {
                    // About one point per voxel of the face.
                    let cells = FACE_SIZE.0 * FACE_SIZE.1 / f64::from(voxel).powi(2);
                    let ratio = pts.len() as f64 / cells;
                    assert!((0.9..1.3).contains(&ratio), "{} points, {cells}", pts.len());
                }
                let c = pts
                    .iter()
                    .map(|p| p.coords.cast::<f64>())
                    .sum::<Vector3<f64>>()
                    / pts.len() as f64;
                assert!((c - Vector3::new(0.1, -0.05, 1.0)).norm() < 5e-3, "{c}");
            }
        }
    }

    #[test]
    fn a_box_region_samples_its_centre_and_the_cap_thins_evenly() {
        let colour = colour_camera();
        let depth = render(&colour);
        let (u0, v0) = colour.project(&Point3::new(0.1, -0.05, 1.0)).unwrap();
        // A box of the face's central 60 x 40 px, sampled in its central half: 30 x 20 pixels.
        let b = BBox::from([
            (u0 + 0.5 - 30.0) as f32,
            (v0 + 0.5 - 20.0) as f32,
            (u0 + 0.5 + 30.0) as f32,
            (v0 + 0.5 + 20.0) as f32,
        ]);
        let sampling = DepthSampling::default();
        let all = CloudParams {
            voxel: 0.0,
            max_points: 0,
        };
        let pts = object_points(&colour, &depth, ObjectRegion::Box(b), &sampling, &all).unwrap();
        assert_eq!(pts.len(), 600);
        let e = extent(&pts);
        assert!((e.x - 29.0 / 600.0).abs() < 1e-6, "{e}");
        let capped = CloudParams {
            voxel: 0.0,
            max_points: 100,
        };
        let few = object_points(&colour, &depth, ObjectRegion::Box(b), &sampling, &capped).unwrap();
        assert_eq!(few.len(), 100);
        assert_eq!(few[0], pts[0]);
        // Every 6th point: the thinned cloud still spans all rows.
        assert!((extent(&few).y - extent(&pts).y).abs() < 2.0 / 590.0);
        // No depth, no points.
        let empty = DepthImage::from_metres(64, 48, vec![f32::NAN; 64 * 48]).unwrap();
        let none = object_points(&colour, &empty, ObjectRegion::Box(b), &sampling, &all).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn voxels_average_their_points() {
        let p = |x, y, z| Point3::new(x, y, z);
        let pts = [
            p(0.01, 0.01, 1.01),
            p(0.03, 0.03, 1.03),
            p(0.11, 0.0, 1.0),
            p(-0.01, 0.0, 1.0),
            p(f32::NAN, 0.0, 1.0),
        ];
        let out = voxel_downsample(&pts, 0.1).unwrap();
        assert_eq!(out.len(), 3);
        assert!((out[0] - p(0.02, 0.02, 1.02)).norm() < 1e-6, "{}", out[0]);
        assert_eq!(out[1], pts[2]);
        assert_eq!(out[2], pts[3]);
        assert_eq!(voxel_downsample(&pts[..2], 0.0).unwrap(), pts[..2]);
    }

    #[test]
    fn points_move_into_the_target_frame() {
        use nalgebra::{Translation3, UnitQuaternion};
        use std::f64::consts::FRAC_PI_2;
        // base_link <- optical frame: optical z is base x, optical x is base -y, y is base -z.
        let optical = UnitQuaternion::from_euler_angles(-FRAC_PI_2, 0.0, -FRAC_PI_2);
        let base = Isometry3::from_parts(Translation3::new(0.1, 0.0, 0.5), optical);
        let moved = transform_points(&[Point3::new(0.2, -0.1, 1.0)], &base);
        assert!(
            (moved[0] - Point3::new(1.1, -0.2, 0.6)).norm() < 1e-6,
            "{}",
            moved[0]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for voxel in [-0.01, f32::NAN, f32::INFINITY] {
            let err = voxel_downsample(&[], voxel).unwrap_err();
            assert!(err.to_string().contains("voxel size"), "{err}");
        }
        let colour = colour_camera();
        let depth = render(&colour);
        let bad = CloudParams {
            voxel: -1.0,
            max_points: 0,
        };
        let mask = GrayImage::new(10, 10);
        let s = DepthSampling::default();
        assert!(object_points(&colour, &depth, ObjectRegion::Mask(&mask), &s, &bad).is_err());
        let ok = CloudParams::default();
        let err = object_points(&colour, &depth, ObjectRegion::Mask(&mask), &s, &ok).unwrap_err();
        assert!(err.to_string().contains("mask"), "{err}");
    }

    /// Reads field `name` of point `i` as the PointCloud2 consumer would.
    fn read(cloud: &PackedCloud, i: usize, name: &str) -> [u8; 4] {
        let f = cloud.fields.iter().find(|f| f.name == name).unwrap();
        let at = i * cloud.point_step as usize + f.offset as usize;
        cloud.data[at..at + 4].try_into().unwrap()
    }

    #[test]
    fn packed_bytes_decode_to_the_points_and_labels() {
        let a = [Point3::new(0.1f32, -0.2, 1.5), Point3::new(1e-3, 2.0, 0.25)];
        let b = [
            Point3::new(-3.0f32, 0.0, 7.0),
            Point3::new(f32::NAN, 0.0, 1.0),
        ];
        let cloud = pack_cloud(&[
            CloudObject {
                points: &a,
                track_id: Some(42),
                query_index: 1,
                detection_index: 0,
            },
            CloudObject {
                points: &b,
                track_id: None,
                query_index: 0,
                detection_index: 1,
            },
        ])
        .unwrap();
        assert_eq!((cloud.width, cloud.height, cloud.point_step), (3, 1, 24));
        assert_eq!(cloud.row_step, 72);
        assert_eq!(cloud.data.len(), 72);
        assert!(!cloud.is_bigendian && cloud.is_dense);
        let names: Vec<_> = cloud
            .fields
            .iter()
            .map(|f| (f.name, f.offset, f.datatype))
            .collect();
        assert_eq!(
            names,
            [
                ("x", 0, 7),
                ("y", 4, 7),
                ("z", 8, 7),
                ("track_id", 12, 6),
                ("query_index", 16, 6),
                ("detection_index", 20, 6)
            ]
        );
        let expect = [(a[0], 42, 1, 0), (a[1], 42, 1, 0), (b[0], 0, 0, 1)];
        for (i, (p, track, query, det)) in expect.into_iter().enumerate() {
            let f = |n| f32::from_le_bytes(read(&cloud, i, n));
            let u = |n| u32::from_le_bytes(read(&cloud, i, n));
            assert_eq!(Point3::new(f("x"), f("y"), f("z")), p);
            assert_eq!(
                (u("track_id"), u("query_index"), u("detection_index")),
                (track, query, det)
            );
        }
        let huge = pack_cloud(&[CloudObject {
            points: &a,
            track_id: Some(1 << 40),
            query_index: 0,
            detection_index: 0,
        }]);
        assert!(huge.unwrap_err().to_string().contains("track id"));
        assert_eq!(pack_cloud(&[]).unwrap().data.len(), 0);
    }
}
