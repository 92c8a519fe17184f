//! Ports of `torch.nn.functional.interpolate` on planar host buffers (`channels` planes of
//! `height x width`, row-major), for what candle lacks: bicubic resizing (CLIPSeg's position
//! table) and the exact coordinate rules of torch's bilinear modes (ViLT's position table, CLIPSeg
//! masks). The models call these once per input size and cache the result on the device.
//!
//! Arithmetic is f64 and rounded to f32 once; torch computes in f32, so results agree to
//! float rounding (~1e-7 relative).

/// torch's cubic convolution coefficient (`upsample_bicubic2d`, `get_cubic_upsample_coefficients`).
pub const TORCH_CUBIC_A: f64 = -0.75;

/// The four cubic-convolution weights for the taps at offsets -1, 0, 1, 2 around a sample at
/// fractional position `t` in [0, 1).
fn cubic_weights(t: f64) -> [f64; 4] {
    let a = TORCH_CUBIC_A;
    // |x| <= 1: ((a + 2)|x| - (a + 3))|x|^2 + 1;  1 < |x| < 2: ((a|x| - 5a)|x| + 8a)|x| - 4a
    let near = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Source coordinate of output index `dst` for `align_corners=False` (torch's
/// `area_pixel_compute_source_index` with `scale = in / out`), not clamped.
fn half_pixel_source(dst: usize, in_size: usize, out_size: usize) -> f64 {
    let scale = in_size as f64 / out_size as f64;
    (dst as f64 + 0.5) * scale - 0.5
}

fn clamp_index(i: i64, size: usize) -> usize {
    i.clamp(0, size as i64 - 1) as usize
}

/// Per output index: the first of the four input taps (may be out of range; taps are clamped
/// on access, like torch's `upsample_get_value_bounded`) and their weights.
fn cubic_taps(in_size: usize, out_size: usize) -> Vec<(i64, [f64; 4])> {
    (0..out_size)
        .map(|dst| {
            let real = half_pixel_source(dst, in_size, out_size);
            let index = real.floor();
            ((index as i64) - 1, cubic_weights(real - index))
        })
        .collect()
}

/// `F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False)` for one image
/// of `channels` planes. Returns `channels * out_h * out_w` values.
pub fn bicubic(
    src: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    debug_assert_eq!(src.len(), channels * in_h * in_w);
    let ys = cubic_taps(in_h, out_h);
    let xs = cubic_taps(in_w, out_w);
    let mut out = Vec::with_capacity(channels * out_h * out_w);
    for plane in src.chunks_exact(in_h * in_w) {
        for (y0, wy) in &ys {
            for (x0, wx) in &xs {
                let mut acc = 0.0f64;
                for (dy, wy) in wy.iter().enumerate() {
                    let row = clamp_index(y0 + dy as i64, in_h) * in_w;
                    let mut row_acc = 0.0f64;
                    for (dx, wx) in wx.iter().enumerate() {
                        let x = clamp_index(x0 + dx as i64, in_w);
                        row_acc += wx * f64::from(plane[row + x]);
                    }
                    acc += wy * row_acc;
                }
                out.push(acc as f32);
            }
        }
    }
    out
}

/// Per output index: the two input taps and the weight of the second, for torch's bilinear
/// source-index rules.
fn linear_taps(in_size: usize, out_size: usize, align_corners: bool) -> Vec<(usize, usize, f64)> {
    (0..out_size)
        .map(|dst| {
            let real = if align_corners {
                if out_size > 1 {
                    dst as f64 * (in_size as f64 - 1.0) / (out_size as f64 - 1.0)
                } else {
                    0.0
                }
            } else {
                // Linear modes clamp negative source coordinates to 0.
                half_pixel_source(dst, in_size, out_size).max(0.0)
            };
            let i0 = (real.floor() as usize).min(in_size - 1);
            let i1 = (i0 + 1).min(in_size - 1);
            (i0, i1, real - i0 as f64)
        })
        .collect()
}

/// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=...)` (no antialias)
/// for one image of `channels` planes. Returns `channels * out_h * out_w` values.
pub fn bilinear(
    src: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    align_corners: bool,
) -> Vec<f32> {
    debug_assert_eq!(src.len(), channels * in_h * in_w);
    let ys = linear_taps(in_h, out_h, align_corners);
    let xs = linear_taps(in_w, out_w, align_corners);
    let mut out = Vec::with_capacity(channels * out_h * out_w);
    for plane in src.chunks_exact(in_h * in_w) {
        for &(y0, y1, ly) in &ys {
            for &(x0, x1, lx) in &xs {
                let v = |y: usize, x: usize| f64::from(plane[y * in_w + x]);
                let top = (1.0 - lx) * v(y0, x0) + lx * v(y0, x1);
                let bottom = (1.0 - lx) * v(y1, x0) + lx * v(y1, x1);
                out.push(((1.0 - ly) * top + ly * bottom) as f32);
            }
        }
    }
    out
}

/// `F.interpolate(x, size=(out_h, out_w))` with the default `mode="nearest"`: output index
/// `dst` reads input `floor(dst * in / out)`.
pub fn nearest(
    src: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    debug_assert_eq!(src.len(), channels * in_h * in_w);
    let index = |dst: usize, in_size: usize, out_size: usize| {
        (((dst as f64) * (in_size as f64 / out_size as f64)).floor() as usize).min(in_size - 1)
    };
    let mut out = Vec::with_capacity(channels * out_h * out_w);
    for plane in src.chunks_exact(in_h * in_w) {
        for y in 0..out_h {
            let row = index(y, in_h, out_h) * in_w;
            for x in 0..out_w {
                out.push(plane[row + index(x, in_w, out_w)]);
            }
        }
    }
    out
}

/// Converts `rows` tokens of `dim` features (row-major, one token per row, raster order over a
/// `height x width` grid) to `dim` planes of `height x width`, and back.
pub fn tokens_to_planes(tokens: &[f32], dim: usize) -> Vec<f32> {
    let n = tokens.len() / dim.max(1);
    let mut planes = vec![0f32; tokens.len()];
    for (t, token) in tokens.chunks_exact(dim).enumerate() {
        for (c, &v) in token.iter().enumerate() {
            planes[c * n + t] = v;
        }
    }
    planes
}

/// Inverse of [`tokens_to_planes`].
pub fn planes_to_tokens(planes: &[f32], dim: usize) -> Vec<f32> {
    let n = planes.len() / dim.max(1);
    let mut tokens = vec![0f32; planes.len()];
    for (c, plane) in planes.chunks_exact(n.max(1)).enumerate() {
        for (t, &v) in plane.iter().enumerate() {
            tokens[t * dim + c] = v;
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x3 plane with distinct values (x = torch.arange(9.).reshape(1, 1, 3, 3) ** 1.5).
    fn plane3() -> Vec<f32> {
        (0..9).map(|i| (i as f32).powf(1.5)).collect()
    }

    fn assert_close(ours: &[f32], torch: &[f32], tol: f32) {
        assert_eq!(ours.len(), torch.len());
        for (i, (a, b)) in ours.iter().zip(torch).enumerate() {
            assert!((a - b).abs() <= tol, "element {i}: ours {a}, torch {b}");
        }
    }

    #[test]
    fn bicubic_matches_torch() {
        // torch 2.11: F.interpolate(x, size=(4, 5), mode="bicubic", align_corners=False)
        let torch = [
            -0.456_536_35,
            -0.159_861_97,
            0.497_558_6,
            1.619_847_5,
            2.395_162_8,
            2.083_908,
            2.885_575,
            4.321_748_7,
            6.054_668,
            7.161_872_4,
            8.867_181,
            10.234_241,
            12.560_036,
            15.044_292,
            16.574_516,
            15.004_818,
            16.590_216,
            19.275_377,
            22.110_218,
            23.849_735,
        ];
        let ours = bicubic(&plane3(), 1, (3, 3), (4, 5));
        assert_close(&ours, &torch, 2e-5);
    }

    #[test]
    fn bicubic_to_same_size_is_identity() {
        let ours = bicubic(&plane3(), 1, (3, 3), (3, 3));
        assert_close(&ours, &plane3(), 1e-6);
    }

    #[test]
    fn bilinear_modes_match_torch() {
        // torch 2.11: F.interpolate(x, size=(2, 4), mode="bilinear", align_corners=True / False)
        let corners = [
            0.0,
            0.666_666_7,
            1.609_475_9,
            2.828_427,
            14.696_939,
            17.245_82,
            19.889_313,
            22.627_417,
        ];
        let half = [
            1.299_038,
            2.205_889_2,
            3.562_401_8,
            4.916_405,
            12.321_742,
            14.552_025,
            17.343_489,
            19.765_648,
        ];
        assert_close(
            &bilinear(&plane3(), 1, (3, 3), (2, 4), true),
            &corners,
            2e-5,
        );
        assert_close(&bilinear(&plane3(), 1, (3, 3), (2, 4), false), &half, 2e-5);
    }

    #[test]
    fn nearest_picks_floor_of_scaled_index() {
        let ours = nearest(&plane3(), 1, (3, 3), (2, 2));
        // rows/cols 0 and floor(1 * 1.5) = 1
        assert_eq!(
            ours,
            vec![plane3()[0], plane3()[1], plane3()[3], plane3()[4]]
        );
    }

    #[test]
    fn token_plane_round_trip() {
        let tokens: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let planes = tokens_to_planes(&tokens, 3);
        assert_eq!(planes[..4], [0.0, 3.0, 6.0, 9.0]);
        assert_eq!(planes_to_tokens(&planes, 3), tokens);
    }
}
