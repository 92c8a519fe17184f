//! Where to act on a probability map (CLIPort-style grounding, e.g. CLIPSeg's map for "the red
//! mug's handle"): the maximum of the box-filtered map inside a region, rather than the argmax of
//! single, noisy pixels.

use super::boxes::BBox;
use super::camera::centres_within;
use crate::error::{Error, Result};

/// Default box-filter radius: a 7x7 px window, ~1.2 cm at 1 m for a 600 px focal length, about a
/// suction cup or a fingertip. The peak is then where a contact patch, not one pixel, is most
/// probable, and isolated noisy pixels weigh 1/49.
pub const DEFAULT_PEAK_RADIUS: u32 = 3;

/// The maximum of the mean of `prob` (`height * width`, row-major) over `(2 radius + 1)²` windows
/// (clipped to the image: the mean of the pixels inside), among the pixels whose centres lie in
/// `region` (image coordinates, clipped to the image). The window reaches outside `region`: the
/// region only limits where the peak may be. Non-finite probabilities count as 0.
///
/// Returns `(x, y, smoothed value)` with `(x, y)` the peak pixel's centre in image coordinates
/// (`column + 0.5`, `row + 0.5`, like the crate's boxes; subtract
/// [`PIXEL_CENTRE_OFFSET`](super::camera::PIXEL_CENTRE_OFFSET) before
/// [`PinholeCamera::back_project`](super::camera::PinholeCamera::back_project)); ties go to the
/// first pixel in row-major order. `Ok(None)` when no pixel centre is in the region. O(pixels in
/// the region expanded by `radius`), through a summed-area table.
pub fn smoothed_peak(
    prob: &[f32],
    width: u32,
    height: u32,
    region: &BBox,
    radius: u32,
) -> Result<Option<(f64, f64, f32)>> {
    if prob.len() != width as usize * height as usize {
        return Err(Error::InvalidInput(format!(
            "{} probabilities for a {width}x{height} map",
            prob.len()
        )));
    }
    if !region.to_array().iter().all(|v| v.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "peak region must be finite, got {:?}",
            region.to_array()
        )));
    }
    let cols = centres_within(f64::from(region.x_min), f64::from(region.x_max), width);
    let rows = centres_within(f64::from(region.y_min), f64::from(region.y_max), height);
    if cols.is_empty() || rows.is_empty() {
        return Ok(None);
    }
    // The summed-area table covers the region expanded by `radius`, clipped to the image:
    // `sat[(y - y0) * tw + (x - x0)]` is the sum of prob over [x0, x) x [y0, y).
    let x0 = cols.start.saturating_sub(radius);
    let y0 = rows.start.saturating_sub(radius);
    let x1 = cols.end.saturating_add(radius).min(width);
    let y1 = rows.end.saturating_add(radius).min(height);
    let tw = (x1 - x0) as usize + 1;
    let th = (y1 - y0) as usize + 1;
    let mut sat = vec![0f64; tw * th];
    for y in y0..y1 {
        let row = &prob[y as usize * width as usize..][x0 as usize..x1 as usize];
        let r = (y - y0) as usize + 1;
        let mut acc = 0f64;
        for (i, &p) in row.iter().enumerate() {
            acc += if p.is_finite() { f64::from(p) } else { 0.0 };
            sat[r * tw + i + 1] = sat[(r - 1) * tw + i + 1] + acc;
        }
    }
    let mut best: Option<(u32, u32, f64)> = None;
    for y in rows {
        let wy0 = y.saturating_sub(radius).max(y0);
        let wy1 = y.saturating_add(radius).saturating_add(1).min(y1);
        let (a, b) = ((wy0 - y0) as usize, (wy1 - y0) as usize);
        for x in cols.clone() {
            let wx0 = x.saturating_sub(radius).max(x0);
            let wx1 = x.saturating_add(radius).saturating_add(1).min(x1);
            let (c, d) = ((wx0 - x0) as usize, (wx1 - x0) as usize);
            let sum = sat[b * tw + d] - sat[a * tw + d] - sat[b * tw + c] + sat[a * tw + c];
            let mean = sum / ((b - a) * (d - c)) as f64;
            if best.is_none_or(|(_, _, m)| mean > m) {
                best = Some((x, y, mean));
            }
        }
    }
    Ok(best.map(|(x, y, m)| (f64::from(x) + 0.5, f64::from(y) + 0.5, m as f32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 96;
    const H: u32 = 64;

    /// xorshift64: deterministic noise without a rand dependency.
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Gaussian blobs `(column, row, peak, sigma)` with salt noise: `salt` of the pixels at 1.0.
    fn map(blobs: &[(f64, f64, f64, f64)], salt: f64) -> Vec<f32> {
        let mut rnd = noise(0x9E37_79B9_7F4A_7C15);
        let mut out = Vec::with_capacity((W * H) as usize);
        for y in 0..H {
            for x in 0..W {
                let mut p = 0f64;
                for &(bx, by, peak, sigma) in blobs {
                    let r2 = (f64::from(x) - bx).powi(2) + (f64::from(y) - by).powi(2);
                    p = p.max(peak * (-r2 / (2.0 * sigma * sigma)).exp());
                }
                out.push(if rnd() < salt { 1.0 } else { p as f32 });
            }
        }
        out
    }

    fn raw_argmax(prob: &[f32]) -> (u32, u32) {
        let (mut best, mut at) = (f32::MIN, 0);
        for (i, &p) in prob.iter().enumerate() {
            if p > best {
                (best, at) = (p, i);
            }
        }
        (at as u32 % W, at as u32 / W)
    }

    fn whole() -> BBox {
        BBox::from([0.0, 0.0, W as f32, H as f32])
    }

    #[test]
    fn finds_a_blob_under_salt_noise() {
        let prob = map(&[(60.0, 30.0, 0.8, 3.0)], 0.08);
        let (rx, ry) = raw_argmax(&prob);
        assert!(
            (f64::from(rx) - 60.0).abs() + (f64::from(ry) - 30.0).abs() > 10.0,
            "the raw argmax should be a noise pixel, got ({rx}, {ry})"
        );
        let (x, y, v) = smoothed_peak(&prob, W, H, &whole(), DEFAULT_PEAK_RADIUS)
            .unwrap()
            .unwrap();
        assert!(
            (x - 60.5).abs() <= 1.0 && (y - 30.5).abs() <= 1.0,
            "({x}, {y})"
        );
        assert!(v > 0.4 && v < 0.8, "{v}");
    }

    #[test]
    fn respects_and_clips_the_region() {
        // A stronger blob at (20, 40) outside the region [40, 10] .. [90, 55].
        let prob = map(&[(60.0, 30.0, 0.8, 3.0), (20.0, 40.0, 1.0, 3.0)], 0.05);
        let (x, y, _) = smoothed_peak(&prob, W, H, &whole(), DEFAULT_PEAK_RADIUS)
            .unwrap()
            .unwrap();
        assert!(
            (x - 20.5).abs() <= 1.0 && (y - 40.5).abs() <= 1.0,
            "({x}, {y})"
        );
        for region in [[40.0, 10.0, 90.0, 55.0], [40.0, -100.0, 500.0, 55.0]] {
            let (x, y, _) = smoothed_peak(&prob, W, H, &BBox::from(region), 3)
                .unwrap()
                .unwrap();
            assert!(
                (x - 60.5).abs() <= 1.0 && (y - 30.5).abs() <= 1.0,
                "({x}, {y})"
            );
        }
        // A region ending left of the blob peaks on its border.
        let clean = map(&[(60.0, 30.0, 0.8, 3.0)], 0.0);
        let left = BBox::from([40.0, 10.0, 50.0, 55.0]);
        let peak = smoothed_peak(&clean, W, H, &left, 3).unwrap().unwrap();
        assert_eq!((peak.0, peak.1), (49.5, 30.5));
        let off = BBox::from([200.0, 0.0, 300.0, 10.0]);
        assert_eq!(smoothed_peak(&prob, W, H, &off, 3).unwrap(), None);
        assert!(smoothed_peak(&prob[1..], W, H, &whole(), 3).is_err());
        let nan = BBox::from([f32::NAN, 0.0, 1.0, 1.0]);
        assert!(smoothed_peak(&prob, W, H, &nan, 3).is_err());
    }

    #[test]
    fn summed_area_table_matches_brute_force() {
        let mut rnd = noise(42);
        let prob: Vec<f32> = (0..W * H).map(|_| rnd() as f32).collect();
        let region = BBox::from([3.2, 0.0, 17.9, 9.4]);
        for radius in [0, 1, 2, 5] {
            let (x, y, v) = smoothed_peak(&prob, W, H, &region, radius)
                .unwrap()
                .unwrap();
            let mut best = (0, 0, f64::MIN);
            for py in 0..9u32 {
                for px in 3..18u32 {
                    let (mut sum, mut n) = (0f64, 0);
                    for wy in py.saturating_sub(radius)..(py + radius + 1).min(H) {
                        for wx in px.saturating_sub(radius)..(px + radius + 1).min(W) {
                            sum += f64::from(prob[(wy * W + wx) as usize]);
                            n += 1;
                        }
                    }
                    if sum / f64::from(n) > best.2 {
                        best = (px, py, sum / f64::from(n));
                    }
                }
            }
            assert_eq!((x, y), (f64::from(best.0) + 0.5, f64::from(best.1) + 0.5));
            assert!((f64::from(v) - best.2).abs() < 1e-6);
        }
    }
}
