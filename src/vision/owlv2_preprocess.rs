//! OWLv2's image preprocessing, as transformers 5.17's `Owlv2ImageProcessor` computes it with its
//! default (torchvision) backend: rescale -> pad to a square -> Gaussian anti-aliasing -> bilinear
//! resize -> normalize, all in float32.
//!
//! Mirrors transformers v5.17.0
//! [`models/owlv2/image_processing_owlv2.py`](https://github.com/huggingface/transformers/blob/v5.17.0/src/transformers/models/owlv2/image_processing_owlv2.py)
//! (`Owlv2ImageProcessor._preprocess`, `pad`, `resize`) and the torchvision 0.26 kernels it calls
//! ([`gaussian_blur_image`](https://github.com/pytorch/vision/blob/v0.26.0/torchvision/transforms/v2/functional/_misc.py),
//! `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`):
//!
//! 1. `x = f32(v) * f32(rescale_factor)`;
//! 2. pad at the bottom and right to a square of side `n = max(h, w)` with [`OWLV2_PAD_VALUE`]
//!    (0.0, black: transformers 5.17 pads after rescaling with 0.0 in both backends; the
//!    original OWLv2 code and transformers 4 padded with 0.5 grey);
//! 3. when `n > size`: a Gaussian blur with `sigma = (f32(n) / f32(size) - 1) / 2`, kernel size
//!    `2 * ceil(3 * sigma) + 1`, torchvision's float32 kernel and reflect padding (edge pixel not
//!    repeated); no blur when any sigma is 0;
//! 4. bilinear resize to `size x size` (half-pixel centres, source index clamped at 0, no
//!    antialiasing; the source index rounded once, as torch's FMA-contracted CPU kernel does);
//!    skipped when the padded image already has that size;
//! 5. `(x - mean) / std`.
//!
//! The `resample` field of preprocessor_config.json is ignored, as transformers ignores it
//! (always bilinear). The blur runs separably and only at the rows and columns the bilinear step
//! reads, rows in parallel. Torch sums the 2-D convolution in another order, so results differ
//! from transformers by float rounding: <= 4e-6 after normalization on the fixtures
//! (tests/owlv2_preprocess.rs) and <= 3e-6 at 960 x 960 for 640x480 .. 3000x2000 inputs.
//! transformers' PIL backend (`Owlv2ImageProcessorPil`: scipy `gaussian_filter`, truncated at
//! 4 sigma, and `ndimage.zoom`) gives other numbers: ~1e-3 apart under wide blurs and up to
//! ~0.08 on the borders of upscaled images.

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use super::preprocess::{
    PreprocessorConfig, SizeSpec, DEFAULT_RESCALE_FACTOR, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
use crate::error::{Error, Result};

/// `Owlv2ImageProcessor.size` default: `{"height": 960, "width": 960}`.
pub const OWLV2_DEFAULT_SIZE: usize = 960;
/// The value the padding gets, after rescaling (`Owlv2ImageProcessor._preprocess` calls
/// `self.pad(..., constant_value=0.0)` in transformers 5.17).
pub const OWLV2_PAD_VALUE: f32 = 0.0;
/// The `image_processor_type`s this module reproduces (transformers' class names; the PIL class
/// is accepted too, but the numbers are the torchvision backend's).
const PROCESSOR_TYPES: &[&str] = &[
    "Owlv2ImageProcessor",
    "Owlv2ImageProcessorFast",
    "Owlv2ImageProcessorPil",
];

/// A resolved `Owlv2ImageProcessor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Owlv2ImageProcessor {
    /// Output `(height, width)`; `None` when `do_resize` is false (the padded image is returned).
    pub size: Option<(usize, usize)>,
    pub do_pad: bool,
    pub rescale_factor: f32,
    /// `(mean, std)` per channel; `None` when `do_normalize` is false.
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

impl Owlv2ImageProcessor {
    /// The class defaults with a `size x size` output (960 for the released checkpoints).
    pub fn new(size: usize) -> Self {
        Self {
            size: Some((size, size)),
            do_pad: true,
            rescale_factor: DEFAULT_RESCALE_FACTOR as f32,
            mean_std: Some((OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)),
        }
    }

    /// Reads the fields of preprocessor_config.json; missing ones take the class defaults.
    pub fn from_config(cfg: &PreprocessorConfig) -> Result<Self> {
        if let Some(t) = cfg.image_processor_type.as_deref() {
            if !PROCESSOR_TYPES.contains(&t) {
                return Err(Error::InvalidInput(format!(
                    "image_processor_type `{t}` is not an OWLv2 image processor"
                )));
            }
        }
        if !cfg.do_rescale.unwrap_or(true) {
            // transformers would then blur and resize uint8 tensors (rounding after each step).
            return Err(Error::InvalidInput(
                "OWLv2 preprocessing with do_rescale=false is not supported".into(),
            ));
        }
        let size = if cfg.do_resize.unwrap_or(true) {
            Some(match cfg.size {
                None => (OWLV2_DEFAULT_SIZE, OWLV2_DEFAULT_SIZE),
                Some(SizeSpec::HeightWidth { height, width }) => (height, width),
                Some(SizeSpec::Square(s)) => (s, s),
                Some(SizeSpec::ShortestEdge { .. }) => {
                    return Err(Error::InvalidInput(
                        "OWLv2 preprocessing needs size {height, width}, not shortest_edge".into(),
                    ))
                }
            })
        } else {
            None
        };
        if matches!(size, Some((h, w)) if h == 0 || w == 0) {
            return Err(Error::InvalidInput("OWLv2 size must not be 0".into()));
        }
        let mean_std = if cfg.do_normalize.unwrap_or(true) {
            Some((
                rgb3(cfg.image_mean.as_deref(), OPENAI_CLIP_MEAN, "image_mean")?,
                rgb3(cfg.image_std.as_deref(), OPENAI_CLIP_STD, "image_std")?,
            ))
        } else {
            None
        };
        Ok(Self {
            size,
            do_pad: cfg.do_pad.unwrap_or(true),
            rescale_factor: cfg.rescale_factor.unwrap_or(DEFAULT_RESCALE_FACTOR) as f32,
            mean_std,
        })
    }

    /// `(height, width)` after padding: the square of the longer side (what post-processing
    /// scales boxes by), or the image itself without `do_pad`.
    pub fn padded_size(&self, height: usize, width: usize) -> (usize, usize) {
        if self.do_pad {
            let side = height.max(width);
            (side, side)
        } else {
            (height, width)
        }
    }

    /// `(height, width)` of the pixel values for an image of `height x width`.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        self.size.unwrap_or_else(|| self.padded_size(height, width))
    }

    /// Runs the pipeline; returns `(1, 3, H, W)` f32 pixel values on `device`.
    pub fn preprocess(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let (h, w) = self.output_size(img.height() as usize, img.width() as usize);
        let chw = self.preprocess_chw(img)?;
        Ok(Tensor::from_vec(chw, (1, 3, h, w), device)?)
    }

    /// Runs the pipeline into a channels-first buffer of [`Self::output_size`].
    pub fn preprocess_chw(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let (h, w) = (img.height() as usize, img.width() as usize);
        if h == 0 || w == 0 {
            return Err(Error::InvalidInput(format!(
                "cannot preprocess an empty {w}x{h} image"
            )));
        }
        let (ph, pw) = self.padded_size(h, w);
        let (oh, ow) = self.output_size(h, w);
        let scale = self.rescale_factor;
        let lut: [f32; 256] = std::array::from_fn(|v| v as f32 * scale);
        let norm = |c: usize, x: f32| match &self.mean_std {
            Some((mean, std)) => (x - mean[c]) / std[c],
            None => x,
        };
        let raw = img.as_raw();
        let plane = oh * ow;
        let mut out = vec![0f32; 3 * plane];

        if (ph, pw) == (oh, ow) {
            // torchvision returns the image untouched when the size does not change (and sigma is 0).
            out.par_chunks_mut(ow).enumerate().for_each(|(row, dst)| {
                let (c, y) = (row / oh, row % oh);
                for (x, d) in dst.iter_mut().enumerate() {
                    let v = if y < h && x < w {
                        lut[usize::from(raw[(y * w + x) * 3 + c])]
                    } else {
                        OWLV2_PAD_VALUE
                    };
                    *d = norm(c, v);
                }
            });
            return Ok(out);
        }

        // Owlv2ImageProcessor.resize hands the kernel sizes (H, W) to tvF.gaussian_blur, which
        // reads them as (x, y): the H-axis kernel runs along x. Same thing for a padded square.
        let (sigma_h, sigma_w) = (antialias_sigma(ph, oh), antialias_sigma(pw, ow));
        let (kx, ky) = if sigma_h > 0.0 && sigma_w > 0.0 {
            (
                gaussian_kernel1d(kernel_size(sigma_h), sigma_h),
                gaussian_kernel1d(kernel_size(sigma_w), sigma_w),
            )
        } else {
            (vec![1.0], vec![1.0])
        };
        let (rx, ry) = (kx.len() / 2, ky.len() / 2);
        if rx >= pw || ry >= ph {
            // torch's reflect padding refuses this too
            return Err(Error::InvalidInput(format!(
                "blur kernel {}x{} too large for a {pw}x{ph} image",
                kx.len(),
                ky.len()
            )));
        }
        let ytaps = bilinear_taps(ph, oh);
        let xtaps = bilinear_taps(pw, ow);
        let (rows, row_slot) = read_positions(&ytaps, ph);
        let (cols, col_slot) = read_positions(&xtaps, pw);
        let ncols = cols.len();

        // The blurred padded image at (rows x cols), per row: [c][col slot].
        let blurred: Vec<Vec<f32>> = rows
            .par_iter()
            .map(|&r| {
                // vertical pass over the whole row, RGB interleaved; padding rows add nothing
                let mut v = vec![0f32; 3 * pw];
                for (i, &k) in ky.iter().enumerate() {
                    let y = reflect(r + i, ry, ph);
                    if y >= h {
                        continue;
                    }
                    let src = &raw[y * w * 3..(y + 1) * w * 3];
                    for (a, &p) in v.iter_mut().zip(src) {
                        *a += k * lut[usize::from(p)];
                    }
                }
                // horizontal pass at the columns the resize reads (three channels at once)
                let mut b = vec![0f32; 3 * ncols];
                for (slot, &col) in cols.iter().enumerate() {
                    let mut acc = [0f32; 3];
                    if col >= rx && col + rx < pw {
                        let taps = v[(col - rx) * 3..(col + rx + 1) * 3].chunks_exact(3);
                        for (&k, p) in kx.iter().zip(taps) {
                            for c in 0..3 {
                                acc[c] += k * p[c];
                            }
                        }
                    } else {
                        for (j, &k) in kx.iter().enumerate() {
                            let x = reflect(col + j, rx, pw);
                            for c in 0..3 {
                                acc[c] += k * v[x * 3 + c];
                            }
                        }
                    }
                    for c in 0..3 {
                        b[c * ncols + slot] = acc[c];
                    }
                }
                b
            })
            .collect();

        // upsample_bilinear2d: (x00 wx0 + x01 wx1) wy0 + (x10 wx0 + x11 wx1) wy1
        out.par_chunks_mut(ow).enumerate().for_each(|(row, dst)| {
            let (c, oy) = (row / oh, row % oh);
            let t = ytaps[oy];
            let b0 = &blurred[row_slot[t.i0]][c * ncols..(c + 1) * ncols];
            let b1 = &blurred[row_slot[t.i1]][c * ncols..(c + 1) * ncols];
            for (d, s) in dst.iter_mut().zip(&xtaps) {
                let (j0, j1) = (col_slot[s.i0], col_slot[s.i1]);
                let top = b0[j0] * s.w0 + b0[j1] * s.w1;
                let bottom = b1[j0] * s.w0 + b1[j1] * s.w1;
                *d = norm(c, top * t.w0 + bottom * t.w1);
            }
        });
        Ok(out)
    }
}

/// transformers' OWLv2 preprocessing of `image` to `size x size` with the given mean/std (the
/// class defaults otherwise); channels-first.
pub fn owlv2_preprocess(
    image: &RgbImage,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<Vec<f32>> {
    if size == 0 {
        return Err(Error::InvalidInput("OWLv2 size must not be 0".into()));
    }
    let p = Owlv2ImageProcessor {
        mean_std: Some((mean, std)),
        ..Owlv2ImageProcessor::new(size)
    };
    p.preprocess_chw(image)
}

fn rgb3(v: Option<&[f32]>, default: [f32; 3], what: &str) -> Result<[f32; 3]> {
    match v {
        None => Ok(default),
        Some(&[a, b, c]) => Ok([a, b, c]),
        Some(&[a]) => Ok([a; 3]),
        Some(v) => Err(Error::InvalidInput(format!(
            "{what} must have 1 or 3 values, got {}",
            v.len()
        ))),
    }
}

/// `Owlv2ImageProcessor.resize`: `factor = f32(padded) / f32(out)`,
/// `sigma = clamp((factor - 1) / 2, min=0)`, all in float32.
fn antialias_sigma(padded: usize, out: usize) -> f32 {
    let factor = padded as f32 / out as f32;
    ((factor - 1.0) / 2.0).max(0.0)
}

/// `2 * ceil(3 * sigma) + 1` (float32 product, as the tensor op).
fn kernel_size(sigma: f32) -> usize {
    2 * (3.0f32 * sigma).ceil() as usize + 1
}

/// torchvision's `_get_gaussian_kernel1d` in float32: `softmax(-(x / sigma)^2)` over
/// `x = linspace(-lim, lim, ksize)`, `lim = (ksize - 1) / (2 sqrt 2)`, i.e. a Gaussian of std
/// `sigma` sampled at integer offsets and normalised to sum 1. The linspace follows ATen's
/// (start + i step for the first half, end - (n - 1 - i) step for the rest).
fn gaussian_kernel1d(ksize: usize, sigma: f32) -> Vec<f32> {
    let lim = (ksize as f64 - 1.0) / (2.0 * std::f64::consts::SQRT_2);
    let (start, end) = (-lim as f32, lim as f32);
    if ksize == 1 {
        return vec![1.0];
    }
    let step = (end - start) / (ksize - 1) as f32;
    let half = ksize / 2;
    let logits: Vec<f32> = (0..ksize)
        .map(|i| {
            let x = if i < half {
                start + step * i as f32
            } else {
                end - step * (ksize - 1 - i) as f32
            };
            let z = x / sigma;
            -(z * z)
        })
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|&e| e / sum).collect()
}

/// Reflect padding's index (`torch.nn.functional.pad(mode="reflect")`, the edge not repeated):
/// `pos` counts from the start of the padded signal, `radius` samples before index 0.
fn reflect(pos: usize, radius: usize, n: usize) -> usize {
    let i = pos as isize - radius as isize;
    let last = n as isize - 1;
    let r = if i < 0 {
        -i
    } else if i > last {
        2 * last - i
    } else {
        i
    };
    r as usize
}

/// One output position of a linear resize: input taps `i0`, `i1` and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// ATen's `compute_indices_weights_linear` (align_corners=False), in float32:
/// `src = max(scale * (i + 0.5) - 0.5, 0)`, `scale = f32(in) / f32(out)`. torch's CPU kernels
/// are compiled with FMA contraction, so `scale * (i + 0.5) - 0.5` is rounded once: at 960
/// outputs a separately rounded product moves the source index by an ulp of ~6e-5 and the
/// pixels by up to 3e-5 (measured against torch 2.11 for 640 -> 960 and 1001 -> 960).
fn bilinear_taps(in_size: usize, out_size: usize) -> Vec<Tap> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            let src = scale.mul_add(i as f32 + 0.5, -0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_size - 1);
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                w0: 1.0 - lambda,
                w1: lambda,
            }
        })
        .collect()
}

/// The sorted input positions `taps` read, and a position -> slot table (`usize::MAX` = unused).
fn read_positions(taps: &[Tap], n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut used = vec![false; n];
    for t in taps {
        used[t.i0] = true;
        used[t.i1] = true;
    }
    let mut slot = vec![usize::MAX; n];
    let mut positions = Vec::new();
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        slot[i] = positions.len();
        positions.push(i);
    }
    (positions, slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(c: usize, x: f32) -> f32 {
        (x - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c]
    }

    #[test]
    fn sigma_and_kernel_size_follow_transformers() {
        // (padded side, size) -> (sigma, kernel size), printed by transformers 5.17 / torch 2.11.
        for (n, s, sigma, k) in [
            (451, 64, 3.023_437_5, 21),
            (640, 64, 4.5, 29),
            (181, 64, 0.914_062_5, 7),
            (1280, 960, 0.166_666_69, 3),
            (64, 48, 0.166_666_69, 3),
        ] {
            let got = antialias_sigma(n, s);
            assert_eq!(got, sigma, "{n} -> {s}");
            assert_eq!(kernel_size(got), k, "{n} -> {s}");
        }
        assert_eq!(antialias_sigma(960, 960), 0.0);
        assert_eq!(antialias_sigma(33, 48), 0.0);
    }

    #[test]
    fn gaussian_kernel_matches_torchvision() {
        // torchvision.transforms.v2.functional._misc._get_gaussian_kernel1d(21, 3.0234375, float32)
        let torch: [f32; 11] = [
            0.000_556_076_94,
            0.001_572_087_9,
            0.003_983_909_7,
            0.009_049_657,
            0.018_426_608,
            0.033_631_69,
            0.055_022_75,
            0.080_691_21,
            0.106_071_94,
            0.124_987_08,
            0.132_013_99,
        ];
        // Equal to a few float32 ulps (torch's vectorised exp and linspace round differently).
        let k = gaussian_kernel1d(21, 3.023_437_5);
        for i in 0..21 {
            let want = torch[i.min(20 - i)];
            assert!(
                (k[i] - want).abs() <= 5e-7 * want,
                "tap {i}: {} vs {want}",
                k[i]
            );
        }
        // (3, 1/6): practically no blur, as for a 1280-pixel photo going to 960.
        let k = gaussian_kernel1d(3, 0.166_666_69);
        assert_eq!(k[1], 1.0);
        assert!((k[0] - 1.523_001e-8).abs() < 1e-12);
    }

    #[test]
    fn bilinear_matches_torch_interpolate() {
        // F.interpolate(arange(5), size=3 / 8, mode="bilinear", align_corners=False)
        let line: Vec<f32> = (0..5).map(|v| v as f32).collect();
        let apply = |taps: &[Tap]| -> Vec<f32> {
            taps.iter()
                .map(|t| line[t.i0] * t.w0 + line[t.i1] * t.w1)
                .collect()
        };
        assert_eq!(apply(&bilinear_taps(5, 3)), [0.333_333_3, 2.0, 3.666_666_5]);
        assert_eq!(
            apply(&bilinear_taps(5, 8)),
            [0.0, 0.4375, 1.0625, 1.6875, 2.3125, 2.9375, 3.5625, 4.0]
        );
    }

    #[test]
    fn reflect_does_not_repeat_the_edge() {
        let idx: Vec<usize> = (0..9).map(|p| reflect(p, 2, 5)).collect();
        assert_eq!(idx, [2, 1, 0, 1, 2, 3, 4, 3, 2]);
    }

    #[test]
    fn image_at_input_size_is_only_normalized() {
        let img = RgbImage::from_fn(4, 4, |x, y| image::Rgb([(x * 60) as u8, (y * 70) as u8, 9]));
        let out = owlv2_preprocess(&img, 4, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).unwrap();
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                let want = normalized(c, f32::from(px[c]) * (1.0f64 / 255.0) as f32);
                assert_eq!(out[c * 16 + i], want);
            }
        }
    }

    #[test]
    fn padding_is_black_at_the_bottom_and_right() {
        // 4 wide, 2 tall: padded to 4 x 4 with rows 2 and 3 = 0.0 (not grey 0.5).
        let img = RgbImage::from_pixel(4, 2, image::Rgb([255, 255, 255]));
        let out = owlv2_preprocess(&img, 4, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).unwrap();
        for c in 0..3 {
            for y in 0..4 {
                for x in 0..4 {
                    let want = if y < 2 {
                        normalized(c, 1.0)
                    } else {
                        normalized(c, 0.0)
                    };
                    assert_eq!(out[c * 16 + y * 4 + x], want, "c {c} y {y} x {x}");
                }
            }
        }
        // 2 wide, 4 tall: padded on the right.
        let img = RgbImage::from_pixel(2, 4, image::Rgb([255, 255, 255]));
        let out = owlv2_preprocess(&img, 4, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).unwrap();
        assert_eq!(out[3], normalized(0, 0.0));
        assert_eq!(out[1], normalized(0, 1.0));
    }

    #[test]
    fn constant_square_stays_constant_through_blur_and_resize() {
        let img = RgbImage::from_pixel(301, 301, image::Rgb([128, 7, 250]));
        let out = owlv2_preprocess(&img, 64, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).unwrap();
        assert_eq!(out.len(), 3 * 64 * 64);
        for c in 0..3 {
            let want = normalized(c, f32::from([128u8, 7, 250][c]) * (1.0f64 / 255.0) as f32);
            for &v in &out[c * 4096..(c + 1) * 4096] {
                assert!((v - want).abs() < 1e-5, "{v} vs {want}");
            }
        }
    }

    #[test]
    fn config_of_the_released_checkpoints() {
        // google/owlv2-base-patch16-ensemble's preprocessor_config.json
        let cfg: PreprocessorConfig = serde_json::from_str(
            r#"{"do_normalize": true, "do_pad": true, "do_rescale": true, "do_resize": true,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_processor_type": "Owlv2ImageProcessor",
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "processor_class": "Owlv2Processor", "resample": 2,
                "rescale_factor": 0.00392156862745098, "size": {"height": 960, "width": 960}}"#,
        )
        .unwrap();
        let p = Owlv2ImageProcessor::from_config(&cfg).unwrap();
        assert_eq!(p, Owlv2ImageProcessor::new(960));
        assert_eq!(p.output_size(480, 640), (960, 960));
        assert_eq!(p.padded_size(480, 640), (640, 640));

        let other: PreprocessorConfig =
            serde_json::from_str(r#"{"image_processor_type": "OwlViTImageProcessor"}"#).unwrap();
        assert!(Owlv2ImageProcessor::from_config(&other).is_err());
        let shortest: PreprocessorConfig =
            serde_json::from_str(r#"{"size": {"shortest_edge": 960}}"#).unwrap();
        assert!(Owlv2ImageProcessor::from_config(&shortest).is_err());
    }

    #[test]
    fn empty_image_is_refused() {
        let img = RgbImage::new(0, 5);
        assert!(owlv2_preprocess(&img, 8, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).is_err());
    }
}
