//! Pillow's 8-bit resampling (`libImaging/Resample.c`), ported so that resized pixels are the
//! ones transformers' PIL image processors feed the models.
//!
//! Pillow resizes in two separable passes, horizontal first, with coefficients normalized per
//! output pixel and stored in 22-bit fixed point, rounding to 8 bits after each pass. General
//! convolution resizers (fast_image_resize's u8 path) choose other precisions and pass orders:
//! measured on the fixture photo, 10-15% of values then land one level away from Pillow. This
//! port is bit-exact, and each pass runs its rows in parallel.

use std::f64::consts::PI;

use rayon::prelude::*;

/// `PRECISION_BITS` of Resample.c: 32 bits minus 8 for the pixel, 2 for headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const CHANNELS: usize = 3;

/// Pillow's resampling filters (`PIL.Image.Resampling`), with their support radius.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Self::Bicubic => {
                // Keys' cubic with a = -0.5 (Catmull-Rom), as Pillow.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                let sinc = |x: f64| {
                    if x == 0.0 {
                        1.0
                    } else {
                        (x * PI).sin() / (x * PI)
                    }
                };
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per output position: the first input index, the tap count, and `ksize` fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc`.
fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// `clip8`: fixed point back to 8 bits.
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn horizontal(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    filter: Filter,
) -> Vec<u8> {
    let c = precompute(width, out_width, filter);
    let mut out = vec![0u8; out_width * height * CHANNELS];
    out.par_chunks_mut(out_width * CHANNELS)
        .zip(src.par_chunks(width * CHANNELS))
        .take(height)
        .for_each(|(dst, row)| {
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
                let mut ss = [HALF; CHANNELS];
                for (x, &w) in k.iter().enumerate() {
                    let p = &row[(xmin + x) * CHANNELS..(xmin + x + 1) * CHANNELS];
                    for ch in 0..CHANNELS {
                        ss[ch] += i32::from(p[ch]) * w;
                    }
                }
                for ch in 0..CHANNELS {
                    dst[xx * CHANNELS + ch] = clip8(ss[ch]);
                }
            }
        });
    out
}

fn vertical(src: &[u8], width: usize, height: usize, out_height: usize, filter: Filter) -> Vec<u8> {
    let c = precompute(height, out_height, filter);
    let stride = width * CHANNELS;
    let mut out = vec![0u8; stride * out_height];
    out.par_chunks_mut(stride)
        .enumerate()
        .for_each(|(yy, dst)| {
            let (ymin, n) = c.bounds[yy];
            let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
            let mut acc = vec![HALF; stride];
            for (y, &w) in k.iter().enumerate() {
                let row = &src[(ymin + y) * stride..(ymin + y + 1) * stride];
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += i32::from(p) * w;
                }
            }
            for (d, &a) in dst.iter_mut().zip(&acc) {
                *d = clip8(a);
            }
        });
    out
}

/// Resizes packed RGB8 `src` (`width` x `height`) like Pillow's `Image.resize(size, filter)`.
pub fn resize_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    filter: Filter,
) -> Vec<u8> {
    let mut buf = std::borrow::Cow::Borrowed(src);
    let mut w = width;
    if out_width != width {
        buf = horizontal(&buf, width, height, out_width, filter).into();
        w = out_width;
    }
    if out_height != height {
        buf = vertical(&buf, w, height, out_height, filter).into();
    }
    buf.into_owned()
}

/// Pillow's NEAREST resize: each output pixel takes the input pixel under its centre.
pub fn resize_rgb8_nearest(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let (sx, sy) = (
        width as f64 / out_width as f64,
        height as f64 / out_height as f64,
    );
    let xs: Vec<usize> = (0..out_width)
        .map(|x| (((x as f64 + 0.5) * sx) as usize).min(width - 1))
        .collect();
    let mut out = vec![0u8; out_width * out_height * CHANNELS];
    out.par_chunks_mut(out_width * CHANNELS)
        .enumerate()
        .for_each(|(y, dst)| {
            let yin = (((y as f64 + 0.5) * sy) as usize).min(height - 1);
            let row = &src[yin * width * CHANNELS..(yin + 1) * width * CHANNELS];
            for (x, &xin) in xs.iter().enumerate() {
                dst[x * CHANNELS..(x + 1) * CHANNELS]
                    .copy_from_slice(&row[xin * CHANNELS..(xin + 1) * CHANNELS]);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for filter in [
            Filter::Box,
            Filter::Bilinear,
            Filter::Hamming,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            for (a, b) in [(451, 768), (768, 451), (10, 3), (3, 10)] {
                let c = precompute(a, b, filter);
                for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                    let s: i64 = c.weights[xx * c.ksize..xx * c.ksize + n]
                        .iter()
                        .map(|&w| i64::from(w))
                        .sum();
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                        "{filter:?} {a}->{b}: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 13 * 7 * 3];
        let out = resize_rgb8(&src, 13, 7, 29, 5, Filter::Bicubic);
        assert!(out.iter().all(|&v| v == 77));
    }
}
