//! Image preprocessing as transformers' PIL image processors do it, in their fixed order:
//! convert to RGB -> resize -> center crop -> rescale -> normalize, read from
//! `preprocessor_config.json`.
//!
//! Resizing is a port of Pillow's own 8-bit resampler ([`super::resample`]): BICUBIC is the
//! antialiased Catmull-Rom cubic (a = -0.5), bit-exact with PIL.

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use serde::Deserialize;

use super::resample::{self, Filter};
use crate::error::{Error, Result};

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// transformers' `IMAGENET_STANDARD_MEAN` / `IMAGENET_STANDARD_STD`.
pub const IMAGENET_STANDARD_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
pub const IMAGENET_STANDARD_STD: [f32; 3] = [0.5, 0.5, 0.5];
/// 1/255, the default `rescale_factor`.
pub const DEFAULT_RESCALE_FACTOR: f64 = 1.0 / 255.0;

/// PIL's resampling filters, numbered as `PIL.Image.Resampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Resample {
    pub fn from_pil(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    /// The convolution filter (None for NEAREST, which samples instead).
    fn filter(self) -> Option<Filter> {
        match self {
            Self::Nearest => None,
            Self::Lanczos => Some(Filter::Lanczos),
            Self::Bilinear => Some(Filter::Bilinear),
            Self::Bicubic => Some(Filter::Bicubic),
            Self::Box => Some(Filter::Box),
            Self::Hamming => Some(Filter::Hamming),
        }
    }
}

/// `size` / `crop_size` as written in preprocessor_config.json.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeSpec {
    HeightWidth {
        height: usize,
        width: usize,
    },
    ShortestEdge {
        shortest_edge: usize,
        #[serde(default)]
        longest_edge: Option<usize>,
    },
    Square(usize),
}

/// The fields of preprocessor_config.json that image processors read. Missing fields take the
/// processor class's defaults ([`ProcessorDefaults`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PreprocessorConfig {
    pub image_processor_type: Option<String>,
    pub do_resize: Option<bool>,
    pub size: Option<SizeSpec>,
    pub resample: Option<u8>,
    pub do_center_crop: Option<bool>,
    pub crop_size: Option<SizeSpec>,
    pub do_rescale: Option<bool>,
    pub rescale_factor: Option<f64>,
    pub do_normalize: Option<bool>,
    pub image_mean: Option<Vec<f32>>,
    pub image_std: Option<Vec<f32>>,
    pub size_divisor: Option<usize>,
    pub do_pad: Option<bool>,
}

/// A processor class's defaults (the class attributes of e.g. `OwlViTImageProcessor`).
#[derive(Debug, Clone, Copy)]
pub struct ProcessorDefaults {
    pub size: SizeSpec,
    pub resample: Resample,
    pub do_center_crop: bool,
    pub crop_size: Option<SizeSpec>,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// What a `shortest_edge` size means for this class.
    pub shortest_edge: ShortestEdgeRule,
}

/// The two meanings transformers gives a `{"shortest_edge": n}` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortestEdgeRule {
    /// ViLT's own `get_resize_output_image_size`: the longer edge capped (default 1333/800 of
    /// the shorter), both sides rounded, then floored to `size_divisor`.
    Vilt,
    /// `image_transforms.get_resize_output_image_size(default_to_square=False)`, as
    /// `CLIPImageProcessor`: the shorter edge to n, the longer `int(n * long / short)`
    /// (truncated), no cap. A bare integer `size` means the same (`default_to_square=False`:
    /// the OpenAI checkpoints' files say `"size": 224`).
    KeepAspect,
}

/// How the input is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    None,
    /// To exactly `height` x `width`, ignoring the aspect ratio.
    Exact {
        height: usize,
        width: usize,
    },
    /// Shorter edge to `shortest`, keeping the aspect ratio; the longer edge capped at
    /// `longest`, both rounded down to a multiple of `divisor` (ViLT).
    ShortestEdge {
        shortest: usize,
        longest: Option<usize>,
        divisor: Option<usize>,
    },
    /// Shorter edge to `shortest`, the longer one `int(shortest * long / short)` (CLIP).
    ShortestEdgeKeepAspect {
        shortest: usize,
    },
}

/// A resolved image processor.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub resize: ResizeMode,
    pub resample: Resample,
    pub center_crop: Option<(usize, usize)>,
    pub rescale_factor: Option<f64>,
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

fn hw(spec: SizeSpec) -> Option<(usize, usize)> {
    match spec {
        SizeSpec::HeightWidth { height, width } => Some((height, width)),
        SizeSpec::Square(s) => Some((s, s)),
        SizeSpec::ShortestEdge { .. } => None,
    }
}

fn rgb3(v: Option<Vec<f32>>, default: [f32; 3], what: &str) -> Result<[f32; 3]> {
    match v {
        None => Ok(default),
        Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        Some(v) if v.len() == 1 => Ok([v[0]; 3]),
        Some(v) => Err(Error::InvalidInput(format!(
            "{what} must have 1 or 3 values, got {}",
            v.len()
        ))),
    }
}

impl ImageProcessor {
    pub fn from_config(cfg: PreprocessorConfig, defaults: &ProcessorDefaults) -> Result<Self> {
        let resample = match cfg.resample {
            None => defaults.resample,
            Some(code) => Resample::from_pil(code)
                .ok_or_else(|| Error::InvalidInput(format!("unknown PIL resample code {code}")))?,
        };
        let resize = if cfg.do_resize.unwrap_or(true) {
            match cfg.size.unwrap_or(defaults.size) {
                SizeSpec::HeightWidth { height, width } => ResizeMode::Exact { height, width },
                SizeSpec::Square(s) if defaults.shortest_edge == ShortestEdgeRule::KeepAspect => {
                    ResizeMode::ShortestEdgeKeepAspect { shortest: s }
                }
                SizeSpec::Square(s) => ResizeMode::Exact {
                    height: s,
                    width: s,
                },
                SizeSpec::ShortestEdge {
                    shortest_edge,
                    longest_edge,
                } => match defaults.shortest_edge {
                    ShortestEdgeRule::Vilt => ResizeMode::ShortestEdge {
                        shortest: shortest_edge,
                        longest: longest_edge,
                        divisor: cfg.size_divisor,
                    },
                    // transformers 5 resizes `shortest_edge` + `longest_edge` sizes by
                    // another rule (`get_size_with_aspect_ratio`), which no CLIP checkpoint uses.
                    ShortestEdgeRule::KeepAspect if longest_edge.is_some() => {
                        return Err(Error::InvalidInput(
                            "a size with both shortest_edge and longest_edge is not supported \
                             for this processor"
                                .into(),
                        ))
                    }
                    ShortestEdgeRule::KeepAspect => ResizeMode::ShortestEdgeKeepAspect {
                        shortest: shortest_edge,
                    },
                },
            }
        } else {
            ResizeMode::None
        };
        let center_crop = if cfg.do_center_crop.unwrap_or(defaults.do_center_crop) {
            cfg.crop_size.or(defaults.crop_size).and_then(hw)
        } else {
            None
        };
        let rescale_factor = cfg
            .do_rescale
            .unwrap_or(true)
            .then(|| cfg.rescale_factor.unwrap_or(DEFAULT_RESCALE_FACTOR));
        let mean_std = if cfg.do_normalize.unwrap_or(true) {
            Some((
                rgb3(cfg.image_mean, defaults.image_mean, "image_mean")?,
                rgb3(cfg.image_std, defaults.image_std, "image_std")?,
            ))
        } else {
            None
        };
        Ok(Self {
            resize,
            resample,
            center_crop,
            rescale_factor,
            mean_std,
        })
    }

    /// The (height, width) the resize step produces for an input of `height` x `width`.
    pub fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        match self.resize {
            ResizeMode::None => (height, width),
            ResizeMode::Exact { height, width } => (height, width),
            ResizeMode::ShortestEdge {
                shortest,
                longest,
                divisor,
            } => shortest_edge_size(height, width, shortest, longest, divisor),
            ResizeMode::ShortestEdgeKeepAspect { shortest } => {
                shortest_edge_keep_aspect(height, width, shortest)
            }
        }
    }

    /// Resizes an RGB image as the processor's resize step does.
    pub fn resize_image(&self, img: &RgbImage) -> Result<RgbImage> {
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (nh, nw) = self.resized_size(h, w);
        resize_rgb(img, nh, nw, self.resample)
    }

    /// Runs the whole pipeline; returns `(1, 3, H, W)` f32 pixel values on `device`.
    pub fn preprocess(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let resized = self.resize_image(img)?;
        let cropped = match self.center_crop {
            Some((ch, cw)) => center_crop(&resized, ch, cw),
            None => resized,
        };
        let chw = self.normalize_chw(&cropped);
        let (h, w) = (cropped.height() as usize, cropped.width() as usize);
        Ok(Tensor::from_vec(chw, (1, 3, h, w), device)?)
    }

    /// Rescale and normalize into a channels-first buffer. The arithmetic is done in f64 and
    /// rounded once, as numpy does for the PIL processors.
    fn normalize_chw(&self, img: &RgbImage) -> Vec<f32> {
        let plane = img.width() as usize * img.height() as usize;
        let scale = self.rescale_factor.unwrap_or(1.0);
        // 8-bit inputs have 256 values per channel: compute each once.
        let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
            std::array::from_fn(|v| {
                let x = (v as f64 * scale) as f32;
                match &self.mean_std {
                    Some((mean, std)) => (x - mean[c]) / std[c],
                    None => x,
                }
            })
        });
        let mut out = vec![0f32; 3 * plane];
        out.par_chunks_mut(plane.max(1))
            .zip(lut.par_iter())
            .enumerate()
            .for_each(|(c, (dst, lut))| {
                for (d, px) in dst.iter_mut().zip(img.pixels()) {
                    *d = lut[usize::from(px[c])];
                }
            });
        out
    }
}

/// transformers' `get_resize_output_image_size(size=shortest, default_to_square=False)`
/// (`image_transforms.py`), as `CLIPImageProcessor` resizes: (height, width) with the shorter
/// edge `shortest` and the longer `int(shortest * long / short)`, computed in floats as Python.
pub fn shortest_edge_keep_aspect(height: usize, width: usize, shortest: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (shortest as f64 * long as f64 / short.max(1) as f64) as usize;
    if width <= height {
        (new_long, shortest)
    } else {
        (shortest, new_long)
    }
}

/// transformers' ViLT `get_resize_output_image_size`: shorter edge to `shortest`, longer edge
/// at most `longest` (default `shortest * 1333 / 800`), both floored to a multiple of `divisor`.
/// A side can come out 0 for extreme aspect ratios (1x500), where transformers fails too.
pub fn shortest_edge_size(
    height: usize,
    width: usize,
    shortest: usize,
    longest: Option<usize>,
    divisor: Option<usize>,
) -> (usize, usize) {
    // ViLT's processor caps the longer side at 1333/800 of the shorter (DETR-style sizes).
    const LONGER_TO_SHORTER: f64 = 1333.0 / 800.0;
    let (h, w) = (height as f64, width as f64);
    let (short, long) = if h < w { (h, w) } else { (w, h) };
    let size = shortest as f64;
    let scale = size / short;
    let (mut new_h, mut new_w) = if h < w {
        (size, scale * long)
    } else {
        (scale * long, size)
    };
    let max_size = longest.map_or((LONGER_TO_SHORTER * size).floor(), |l| l as f64);
    if new_h.max(new_w) > max_size {
        let s = max_size / new_h.max(new_w);
        new_h *= s;
        new_w *= s;
    }
    let (mut nh, mut nw) = (
        (new_h + 0.5).floor() as usize,
        (new_w + 0.5).floor() as usize,
    );
    if let Some(d) = divisor.filter(|d| *d > 0) {
        nh = nh / d * d;
        nw = nw / d * d;
    }
    (nh, nw)
}

/// Resizes like Pillow's `Image.resize(size, resample)` (bit-exact, see [`super::resample`]).
/// Same-size input is returned as is (Pillow copies it).
pub fn resize_rgb(
    img: &RgbImage,
    height: usize,
    width: usize,
    resample: Resample,
) -> Result<RgbImage> {
    if height == 0 || width == 0 {
        return Err(Error::InvalidInput(format!(
            "cannot resize to {width}x{height}"
        )));
    }
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    if (h0, w0) == (height, width) {
        return Ok(img.clone());
    }
    let src = img.as_raw();
    let out = match resample.filter() {
        Some(filter) => resample::resize_rgb8(src, w0, h0, width, height, filter),
        None => resample::resize_rgb8_nearest(src, w0, h0, width, height),
    };
    RgbImage::from_raw(width as u32, height as u32, out)
        .ok_or_else(|| Error::InvalidInput("resize produced a short buffer".into()))
}

/// transformers' `center_crop` for images at least as large as the crop.
pub fn center_crop(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let top = h.saturating_sub(height) / 2;
    let left = w.saturating_sub(width) / 2;
    image::imageops::crop_imm(
        img,
        left as u32,
        top as u32,
        width.min(w) as u32,
        height.min(h) as u32,
    )
    .to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_spec_parses_every_layout() {
        let hw: SizeSpec = serde_json::from_str(r#"{"height": 768, "width": 768}"#).unwrap();
        assert_eq!(
            hw,
            SizeSpec::HeightWidth {
                height: 768,
                width: 768
            }
        );
        let se: SizeSpec = serde_json::from_str(r#"{"shortest_edge": 384}"#).unwrap();
        assert_eq!(
            se,
            SizeSpec::ShortestEdge {
                shortest_edge: 384,
                longest_edge: None
            }
        );
        let sq: SizeSpec = serde_json::from_str("352").unwrap();
        assert_eq!(sq, SizeSpec::Square(352));
    }

    #[test]
    fn vilt_sizes_follow_transformers() {
        // 480x640 (h, w) -> shorter edge 384, longer 512, multiples of 32.
        assert_eq!(
            shortest_edge_size(480, 640, 384, None, Some(32)),
            (384, 512)
        );
        // A very wide image is capped at 1333/800 of the shorter edge.
        assert_eq!(
            shortest_edge_size(100, 1000, 384, None, Some(32)),
            (64, 639 / 32 * 32)
        );
    }

    #[test]
    fn clip_sizes_keep_the_aspect_and_truncate() {
        // chelsea.png (300 x 451) -> 224 x int(336.77) = 336; a portrait 181 x 107 -> 378 x 224
        assert_eq!(shortest_edge_keep_aspect(300, 451, 224), (224, 336));
        assert_eq!(shortest_edge_keep_aspect(181, 107, 224), (378, 224));
        assert_eq!(shortest_edge_keep_aspect(33, 31, 64), (68, 64));
        assert_eq!(shortest_edge_keep_aspect(5, 5, 64), (64, 64));
    }

    #[test]
    fn an_integer_size_is_a_shortest_edge_where_not_square_by_default() {
        let cfg: PreprocessorConfig =
            serde_json::from_str(r#"{"size": 224, "crop_size": 224}"#).unwrap();
        let defaults = |shortest_edge| ProcessorDefaults {
            size: SizeSpec::Square(1),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: None,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            shortest_edge,
        };
        let clip =
            ImageProcessor::from_config(cfg.clone(), &defaults(ShortestEdgeRule::KeepAspect))
                .unwrap();
        assert_eq!(
            clip.resize,
            ResizeMode::ShortestEdgeKeepAspect { shortest: 224 }
        );
        assert_eq!(clip.center_crop, Some((224, 224)));
        let square = ImageProcessor::from_config(cfg, &defaults(ShortestEdgeRule::Vilt)).unwrap();
        assert_eq!(
            square.resize,
            ResizeMode::Exact {
                height: 224,
                width: 224
            }
        );
    }

    #[test]
    fn same_size_resize_is_identity() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let out = resize_rgb(&img, 4, 5, Resample::Bicubic).unwrap();
        assert_eq!(out, img);
    }
}
