//! Conversions between ROS messages and the library's plain types. The only module that builds
//! or reads ROS messages (besides the glue in `main.rs` that moves them between r2r and the
//! worker).
//!
//! - camera input: `sensor_msgs/Image` (rgb8, bgr8, rgba8, bgra8, mono8) and
//!   `sensor_msgs/CompressedImage` (jpeg, png) -> [`RawImage`] (a move, no copy) ->
//!   [`decode`] (on the worker thread) -> `RgbImage`, every malformed message a [`FrameError`];
//! - results: `DetectionResult` -> `DetectionArray`, `SegmentationResult` -> `SegmentationArray`,
//!   `VqaResult` -> `Answer`, worker [`Snapshot`] -> `DiagnosticArray`;
//! - r2r parameter values -> [`params::Value`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};
use r2r::builtin_interfaces::msg::Time;
use r2r::sensor_msgs::msg::{CompressedImage, Image};
use r2r::std_msgs::msg::Header;
use r2r::vlm_perception_msgs::msg as vmsg;
use r2r::{Parameter, ParameterValue};
use vlm_perception::pipeline::{Detection, DetectionResult};
use vlm_perception::vision::depth::Object3d;

use vlm_perception::pipeline::{
    ClassificationResult, GeneratedText, SegmentationResult, VqaResult,
};
use vlm_perception::vision::boxes::BBox;
use vlm_perception::vision::image_io::{check_size, decode_rgb, to_rgb};

use crate::params::Value;

mod diagnostics;
mod objects;
mod planner;
mod spatial;
#[cfg(feature = "vision_msgs")]
mod vision;
pub use diagnostics::diagnostics;
use diagnostics::kv;
pub use objects::{object_array, tracked_object};
pub use planner::{ground_target, phrase_scores};
pub use spatial::{
    camera_info, depth_image, markers, object_points, request_camera_info, request_depth,
    transform_stamped,
};
#[cfg(feature = "vision_msgs")]
pub use vision::{detection_2d_array, detection_3d_array};

/// `diagnostic_msgs/DiagnosticStatus` levels (DiagnosticStatus.msg: OK=0, WARN=1, ERROR=2,
/// STALE=3).
const LEVEL_OK: u8 = 0;
const LEVEL_WARN: u8 = 1;
const LEVEL_ERROR: u8 = 2;
const LEVEL_STALE: u8 = 3;

/// The parts of a `std_msgs/Header` the node carries from a source image to its results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameHeader {
    pub sec: i32,
    pub nanosec: u32,
    pub frame_id: String,
}

impl FrameHeader {
    pub fn from_msg(h: &Header) -> Self {
        Self {
            sec: h.stamp.sec,
            nanosec: h.stamp.nanosec,
            frame_id: h.frame_id.clone(),
        }
    }

    pub fn to_msg(&self) -> Header {
        Header {
            stamp: Time {
                sec: self.sec,
                nanosec: self.nanosec,
            },
            frame_id: self.frame_id.clone(),
        }
    }
}

/// An image as it arrived, not yet checked or decoded.
#[derive(Debug, Clone)]
pub enum RawImage {
    /// `sensor_msgs/Image`.
    Raw {
        encoding: String,
        width: u32,
        height: u32,
        step: u32,
        data: Vec<u8>,
    },
    /// `sensor_msgs/CompressedImage`.
    Compressed { format: String, data: Vec<u8> },
}

impl RawImage {
    /// Takes the pixels out of `msg` (no copy).
    pub fn from_image(msg: Image) -> (FrameHeader, Self) {
        let header = FrameHeader::from_msg(&msg.header);
        let raw = RawImage::Raw {
            encoding: msg.encoding,
            width: msg.width,
            height: msg.height,
            step: msg.step,
            data: msg.data,
        };
        (header, raw)
    }

    pub fn from_compressed(msg: CompressedImage) -> (FrameHeader, Self) {
        let header = FrameHeader::from_msg(&msg.header);
        let raw = RawImage::Compressed {
            format: msg.format,
            data: msg.data,
        };
        (header, raw)
    }

    /// A service request's image: `None` when it carries no data (use the latest frame).
    pub fn from_request(msg: &mut Image) -> Option<(FrameHeader, Self)> {
        if is_unset(msg) {
            return None;
        }
        Some(Self::from_image(std::mem::take(msg)))
    }
}

/// Whether an optional image field of a request was left empty ("use the latest frame").
pub(crate) fn is_unset(msg: &Image) -> bool {
    msg.data.is_empty() && msg.width == 0 && msg.height == 0
}

/// Why a camera frame or request image was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported encoding `{encoding}` on `{source_name}` (expected rgb8, bgr8, rgba8, bgra8 or mono8)")]
    Encoding {
        encoding: String,
        source_name: String,
    },
    #[error("unsupported compressed format `{format}` on `{source_name}` (expected jpeg or png)")]
    Format { format: String, source_name: String },
    #[error("image on `{source_name}` has size {width}x{height}: {reason}")]
    Size {
        width: u32,
        height: u32,
        source_name: String,
        reason: String,
    },
    #[error("image on `{source_name}`: step {step} is smaller than a row ({row} bytes for width {width} in {encoding})")]
    Step {
        step: u32,
        row: u64,
        width: u32,
        encoding: String,
        source_name: String,
    },
    #[error("image on `{source_name}`: {len} data bytes, but step {step} x height {height} = {expected}{hint}")]
    DataLength {
        len: usize,
        step: u32,
        height: u32,
        expected: u64,
        hint: &'static str,
        source_name: String,
    },
    #[error("cannot decode compressed image on `{source_name}`: {reason}")]
    Decode { source_name: String, reason: String },
}

impl FrameError {
    /// A short stable key per kind of fault (for rate-limited logging and diagnostics).
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Encoding { .. } => "encoding",
            FrameError::Format { .. } => "format",
            FrameError::Size { .. } => "size",
            FrameError::Step { .. } => "step",
            FrameError::DataLength { .. } => "data_length",
            FrameError::Decode { .. } => "decode",
        }
    }
}

/// Bytes per pixel of the raw encodings the node accepts (sensor_msgs/image_encodings.hpp).
fn channels(encoding: &str) -> Option<u32> {
    match encoding {
        "rgb8" | "bgr8" => Some(3),
        "rgba8" | "bgra8" => Some(4),
        "mono8" => Some(1),
        _ => None,
    }
}

/// Checks and converts a received image into RGB, as the CLI sees the same picture: alpha is
/// composited onto white and grey replicated (transformers' `convert_to_rgb`). `source_name`
/// (the topic, or `request`) is named in errors; `max_pixels` bounds width x height.
pub fn decode(raw: &RawImage, source_name: &str, max_pixels: u64) -> Result<RgbImage, FrameError> {
    let size_error = |width: u32, height: u32, reason: String| FrameError::Size {
        width,
        height,
        source_name: source_name.to_string(),
        reason,
    };
    let check = |width: u32, height: u32| -> Result<(), FrameError> {
        check_size(width, height, source_name).map_err(|e| match e {
            vlm_perception::Error::Image { reason, .. } => size_error(width, height, reason),
            other => size_error(width, height, other.to_string()),
        })?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels > max_pixels {
            return Err(size_error(
                width,
                height,
                format!("{pixels} pixels is more than camera.max_pixels = {max_pixels}"),
            ));
        }
        Ok(())
    };
    match raw {
        RawImage::Raw {
            encoding,
            width,
            height,
            step,
            data,
        } => {
            let (width, height, step) = (*width, *height, *step);
            let Some(ch) = channels(encoding) else {
                return Err(FrameError::Encoding {
                    encoding: encoding.clone(),
                    source_name: source_name.to_string(),
                });
            };
            check(width, height)?;
            let row = u64::from(width) * u64::from(ch);
            if u64::from(step) < row {
                return Err(FrameError::Step {
                    step,
                    row,
                    width,
                    encoding: encoding.clone(),
                    source_name: source_name.to_string(),
                });
            }
            let expected = u64::from(step) * u64::from(height);
            if data.len() as u64 != expected {
                return Err(FrameError::DataLength {
                    len: data.len(),
                    step,
                    height,
                    expected,
                    hint: if (data.len() as u64) < expected {
                        " (truncated)"
                    } else {
                        ""
                    },
                    source_name: source_name.to_string(),
                });
            }
            let (w, h, step, row) = (width as usize, height as usize, step as usize, row as usize);
            let rows = data.chunks_exact(step).take(h).map(|r| &r[..row]);
            let mut packed = Vec::with_capacity(row * h);
            for r in rows {
                packed.extend_from_slice(r);
            }
            let img = match encoding.as_str() {
                "rgb8" => DynamicImage::ImageRgb8(rgb_from(w, h, packed)?),
                "bgr8" => {
                    for px in packed.chunks_exact_mut(3) {
                        px.swap(0, 2);
                    }
                    DynamicImage::ImageRgb8(rgb_from(w, h, packed)?)
                }
                "rgba8" => DynamicImage::ImageRgba8(rgba_from(w, h, packed)?),
                "bgra8" => {
                    for px in packed.chunks_exact_mut(4) {
                        px.swap(0, 2);
                    }
                    DynamicImage::ImageRgba8(rgba_from(w, h, packed)?)
                }
                _ => DynamicImage::ImageLuma8(
                    GrayImage::from_raw(width, height, packed).ok_or_else(|| {
                        size_error(width, height, "pixel buffer size mismatch".into())
                    })?,
                ),
            };
            Ok(to_rgb(img))
        }
        RawImage::Compressed { format, data } => {
            // image_transport writes e.g. "jpeg", "png" or "rgb8; jpeg compressed bgr8".
            let f = format.to_ascii_lowercase();
            if !(f.is_empty() || f.contains("jpeg") || f.contains("jpg") || f.contains("png")) {
                return Err(FrameError::Format {
                    format: format.clone(),
                    source_name: source_name.to_string(),
                });
            }
            let rgb = decode_rgb(data, source_name).map_err(|e| FrameError::Decode {
                source_name: source_name.to_string(),
                reason: match e {
                    vlm_perception::Error::Image { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
            check(rgb.width(), rgb.height())?;
            Ok(rgb)
        }
    }
}

fn rgb_from(w: usize, h: usize, data: Vec<u8>) -> Result<RgbImage, FrameError> {
    RgbImage::from_raw(w as u32, h as u32, data).ok_or_else(|| FrameError::Size {
        width: w as u32,
        height: h as u32,
        source_name: String::new(),
        reason: "pixel buffer size mismatch".into(),
    })
}

fn rgba_from(w: usize, h: usize, data: Vec<u8>) -> Result<RgbaImage, FrameError> {
    RgbaImage::from_raw(w as u32, h as u32, data).ok_or_else(|| FrameError::Size {
        width: w as u32,
        height: h as u32,
        source_name: String::new(),
        reason: "pixel buffer size mismatch".into(),
    })
}

/// An RGB image as `sensor_msgs/Image` rgb8 (the overlay).
pub fn rgb_image_msg(header: &FrameHeader, img: &RgbImage) -> Image {
    Image {
        header: header.to_msg(),
        height: img.height(),
        width: img.width(),
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: img.width() * 3,
        data: img.as_raw().clone(),
    }
}

/// A binary mask as `sensor_msgs/Image` mono8.
pub(crate) fn mono_image_msg(header: &FrameHeader, img: &GrayImage) -> Image {
    Image {
        header: header.to_msg(),
        height: img.height(),
        width: img.width(),
        encoding: "mono8".into(),
        is_bigendian: 0,
        step: img.width(),
        data: img.as_raw().clone(),
    }
}

/// Corners -> vision_msgs-style center + size.
pub(crate) fn bbox_msg(b: &BBox) -> vmsg::BoundingBox2D {
    let (cx, cy) = b.center();
    vmsg::BoundingBox2D {
        center: vmsg::Pose2D {
            position: vmsg::Point2D {
                x: f64::from(cx),
                y: f64::from(cy),
            },
            theta: 0.0,
        },
        size_x: f64::from(b.width()),
        size_y: f64::from(b.height()),
    }
}

fn millis(d: Duration) -> f32 {
    (d.as_secs_f64() * 1e3) as f32
}

/// One detection, with its 3D position and extent when located, and its track (0: none).
pub(crate) fn detection_msg(
    d: &Detection,
    position: Option<&Object3d>,
    track_id: u64,
) -> vmsg::Detection {
    vmsg::Detection {
        label: d.label.clone(),
        query_index: d.query_index as i32,
        score: d.score,
        objectness: d.objectness.unwrap_or(-1.0),
        bbox: bbox_msg(&d.bbox),
        track_id,
        has_position: position.is_some(),
        position: position
            .map(|o| spatial::point(&o.centre))
            .unwrap_or_default(),
        size: position
            .map(|o| spatial::vector(&o.size))
            .unwrap_or_default(),
        orientation: spatial::quaternion(
            &position.map_or_else(nalgebra::UnitQuaternion::identity, |o| o.orientation),
        ),
    }
}

/// One frame's detections; `positions` (per detection, when depth located it; may be empty: 2D
/// only) are in `position_frame_id`, `tracks` per detection its track id (may be empty).
pub fn detection_array(
    header: &FrameHeader,
    position_frame_id: &str,
    model: &str,
    result: &DetectionResult,
    positions: &[Option<Object3d>],
    tracks: &[u64],
    latency: Duration,
) -> vmsg::DetectionArray {
    vmsg::DetectionArray {
        header: header.to_msg(),
        detections: result
            .detections
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let position = positions.get(i).copied().flatten();
                detection_msg(d, position.as_ref(), track_at(tracks, i))
            })
            .collect(),
        model: model.to_string(),
        latency_ms: millis(latency),
        position_frame_id: position_frame_id.to_string(),
    }
}

/// The track id of detection `i` (0: none, or tracking off).
pub fn track_at(tracks: &[u64], i: usize) -> u64 {
    tracks.get(i).copied().unwrap_or(0)
}

pub fn segmentation_array(
    header: &FrameHeader,
    model: &str,
    result: &SegmentationResult,
    latency: Duration,
) -> vmsg::SegmentationArray {
    vmsg::SegmentationArray {
        header: header.to_msg(),
        segmentations: result
            .masks
            .iter()
            .map(|m| vmsg::Segmentation {
                label: m.label.clone(),
                prompt_index: m.prompt_index as i32,
                mask: mono_image_msg(header, &m.mask),
                score: m.mean_score,
                area_fraction: m.area_fraction,
                bbox: m.bbox.as_ref().map(bbox_msg).unwrap_or_default(),
            })
            .collect(),
        model: model.to_string(),
        latency_ms: millis(latency),
    }
}

pub fn answer(
    header: &FrameHeader,
    model: &str,
    result: &VqaResult,
    latency: Duration,
) -> vmsg::Answer {
    vmsg::Answer {
        header: header.to_msg(),
        question: result.question.clone(),
        answers: result
            .answers
            .iter()
            .map(|a| vmsg::AnswerCandidate {
                answer: a.answer.clone(),
                score: a.score,
            })
            .collect(),
        model: model.to_string(),
        latency_ms: millis(latency),
    }
}

pub fn caption(
    header: &FrameHeader,
    model: &str,
    result: &GeneratedText,
    latency: Duration,
) -> vmsg::Caption {
    vmsg::Caption {
        header: header.to_msg(),
        prompt: result.prompt.clone().unwrap_or_default(),
        text: result.text.clone(),
        num_tokens: u32::try_from(result.token_ids.len()).unwrap_or(u32::MAX),
        stop: crate::worker::stop_name(result.stop).to_string(),
        score: result.score.unwrap_or(0.0),
        model: model.to_string(),
        latency_ms: millis(latency),
    }
}

pub fn classification(
    header: &FrameHeader,
    model: &str,
    result: &ClassificationResult,
    latency: Duration,
) -> vmsg::Classification {
    vmsg::Classification {
        header: header.to_msg(),
        hypothesis_template: result.template.clone(),
        labels: result
            .labels
            .iter()
            .map(|l| vmsg::LabelScore {
                label: l.label.clone(),
                score: l.score,
                logit: l.logit,
            })
            .collect(),
        model: model.to_string(),
        latency_ms: millis(latency),
    }
}

pub fn now() -> Time {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Time {
        sec: i32::try_from(d.as_secs()).unwrap_or(i32::MAX),
        nanosec: d.subsec_nanos(),
    }
}
/// r2r's parameter map -> the plain map [`crate::params::NodeParams`] validates.
pub fn param_map<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a Parameter)>,
) -> BTreeMap<String, Value> {
    params
        .into_iter()
        .map(|(k, p)| (k.clone(), value_of(&p.value)))
        .collect()
}

/// An r2r parameter value as the plain value.
pub fn value_of(v: &ParameterValue) -> Value {
    match v {
        ParameterValue::NotSet => Value::NotSet,
        ParameterValue::Bool(b) => Value::Bool(*b),
        ParameterValue::Integer(i) => Value::Integer(*i),
        ParameterValue::Double(d) => Value::Double(*d),
        ParameterValue::String(s) => Value::String(s.clone()),
        ParameterValue::StringArray(a) => Value::StringArray(a.clone()),
        ParameterValue::BoolArray(_) => Value::OtherArray("bool array"),
        ParameterValue::ByteArray(_) => Value::OtherArray("byte array"),
        ParameterValue::IntegerArray(_) => Value::OtherArray("integer array"),
        ParameterValue::DoubleArray(_) => Value::OtherArray("double array"),
    }
}

/// A plain value as an r2r parameter value (arrays other than strings never occur).
pub fn param_value(v: &Value) -> ParameterValue {
    match v {
        Value::NotSet | Value::OtherArray(_) => ParameterValue::NotSet,
        Value::Bool(b) => ParameterValue::Bool(*b),
        Value::Integer(i) => ParameterValue::Integer(*i),
        Value::Double(d) => ParameterValue::Double(*d),
        Value::String(s) => ParameterValue::String(s.clone()),
        Value::StringArray(a) => ParameterValue::StringArray(a.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(encoding: &str, width: u32, height: u32, step: u32, data: Vec<u8>) -> RawImage {
        RawImage::Raw {
            encoding: encoding.into(),
            width,
            height,
            step,
            data,
        }
    }

    const MAX: u64 = 1 << 24;

    #[test]
    fn decodes_each_encoding() {
        // 2x1, with one padding byte per row in the rgb8 case.
        let rgb = decode(&raw("rgb8", 2, 1, 7, vec![1, 2, 3, 4, 5, 6, 99]), "t", MAX).unwrap();
        assert_eq!(rgb.as_raw(), &[1, 2, 3, 4, 5, 6]);
        let bgr = decode(&raw("bgr8", 2, 1, 6, vec![1, 2, 3, 4, 5, 6]), "t", MAX).unwrap();
        assert_eq!(bgr.as_raw(), &[3, 2, 1, 6, 5, 4]);
        let mono = decode(&raw("mono8", 2, 1, 2, vec![7, 8]), "t", MAX).unwrap();
        assert_eq!(mono.as_raw(), &[7, 7, 7, 8, 8, 8]);
        // alpha 255 keeps the colour, alpha 0 becomes white
        let rgba = decode(
            &raw("rgba8", 2, 1, 8, vec![1, 2, 3, 255, 9, 9, 9, 0]),
            "t",
            MAX,
        )
        .unwrap();
        assert_eq!(rgba.as_raw(), &[1, 2, 3, 255, 255, 255]);
        let bgra = decode(&raw("bgra8", 1, 1, 4, vec![1, 2, 3, 255]), "t", MAX).unwrap();
        assert_eq!(bgra.as_raw(), &[3, 2, 1]);
    }

    #[test]
    fn rejects_bad_raw_images() {
        let cases = [
            (raw("yuv422", 2, 1, 4, vec![0; 4]), "encoding"),
            (raw("16UC1", 2, 1, 4, vec![0; 4]), "encoding"),
            (raw("rgb8", 0, 0, 0, vec![]), "size"),
            (raw("rgb8", 2, 1, 5, vec![0; 5]), "step"),
            (raw("rgb8", 2, 2, 6, vec![0; 7]), "data_length"),
            (raw("rgb8", 2, 2, 6, vec![0; 13]), "data_length"),
            (raw("mono8", 20_000, 1, 20_000, vec![0; 20_000]), "size"),
        ];
        for (img, kind) in cases {
            let err = decode(&img, "/cam", MAX).expect_err(kind);
            assert_eq!(err.kind(), kind, "{err}");
            assert!(err.to_string().contains("/cam"), "{err}");
        }
        let err = decode(&raw("mono8", 100, 100, 100, vec![0; 10_000]), "t", 9_999).unwrap_err();
        assert_eq!(err.kind(), "size");
    }

    #[test]
    fn decodes_png_and_rejects_corrupt_jpeg() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let ok = RawImage::Compressed {
            format: "png".into(),
            data: png.clone(),
        };
        assert_eq!(decode(&ok, "t", MAX).unwrap(), img);
        let corrupt = RawImage::Compressed {
            format: "jpeg".into(),
            data: vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3],
        };
        assert_eq!(decode(&corrupt, "t", MAX).unwrap_err().kind(), "decode");
        let other = RawImage::Compressed {
            format: "compressedDepth".into(),
            data: png,
        };
        assert_eq!(decode(&other, "t", MAX).unwrap_err().kind(), "format");
    }

    #[test]
    fn bbox_is_center_and_size() {
        let b = bbox_msg(&BBox {
            x_min: 10.0,
            y_min: 20.0,
            x_max: 30.0,
            y_max: 60.0,
        });
        assert_eq!(b.center.position.x, 20.0);
        assert_eq!(b.center.position.y, 40.0);
        assert_eq!((b.size_x, b.size_y), (20.0, 40.0));
    }
}
