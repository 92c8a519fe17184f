//! The same arithmetic on AVX2 + FMA, for CPUs without AVX512-BF16 (the tests, and the
//! measurement of the path on such a CPU; the pipeline refuses bf16 there): each bf16 pair
//! widened to two f32 (a shift, a mask) and two FMAs, the odd input's first. A product of two
//! bf16 is exact in f32, so each FMA rounds as `vdpbf16ps`'s add does: bit for bit the scalar
//! model. At best the f32 FMA rate (no gain in speed), half the weights' memory.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{rounded_rows_reference, task_blocks, Out, PackedBf16, KC_PAIRS, NR};

/// Rows of a tile (16 registers: 8 accumulators, 4 widened weights, 2 broadcasts).
const MR2: usize = 4;
/// Columns of a tile.
const NR2: usize = 16;

/// `c[R x 16] += a[R rows, pairs] @ b[pairs, 16 columns of a panel]`: `c` rows of
/// `c_stride` floats, all 16 columns valid.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(
    a: *const u32,
    a_stride: usize,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    c_stride: usize,
) {
    // SAFETY (all of the body): the caller's promises on `a`, `b` and `c`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(c.add(r * c_stride + v * 8));
            }
        }
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        for p in 0..pairs {
            let bp = b.add(p * NR);
            let mut even = [_mm256_setzero_ps(); 2];
            let mut odd = [_mm256_setzero_ps(); 2];
            for v in 0..2 {
                let w = _mm256_loadu_si256(bp.add(v * 8).cast());
                even[v] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
                odd[v] = _mm256_castsi256_ps(_mm256_and_si256(w, high));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = *a.add(r * a_stride + p);
                let xe = _mm256_set1_ps(f32::from_bits(x << 16));
                let xo = _mm256_set1_ps(f32::from_bits(x & 0xffff_0000));
                for v in 0..2 {
                    acc[v] = _mm256_fmadd_ps(xo, odd[v], acc[v]);
                    acc[v] = _mm256_fmadd_ps(xe, even[v], acc[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * c_stride + v * 8), *acc);
            }
        }
    }
}

/// [`tile`] for `rows` (1..=MR2) rows and `cols` (1..=16) columns: partial columns through
/// a local copy.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_rows(
    rows: usize,
    a: *const u32,
    a_stride: usize,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    c_stride: usize,
    cols: usize,
) {
    let run = |c: *mut f32, c_stride: usize| {
        // SAFETY: the caller's promises, passed on (`c` full 16-column rows here).
        unsafe {
            match rows {
                4 => tile::<4>(a, a_stride, b, pairs, c, c_stride),
                3 => tile::<3>(a, a_stride, b, pairs, c, c_stride),
                2 => tile::<2>(a, a_stride, b, pairs, c, c_stride),
                1 => tile::<1>(a, a_stride, b, pairs, c, c_stride),
                _ => unreachable!("bf16 tile of {rows} rows"),
            }
        }
    };
    if cols == NR2 {
        run(c, c_stride);
        return;
    }
    let mut local = [0f32; MR2 * NR2];
    for r in 0..rows {
        // SAFETY: row r of the tile holds `cols` floats of `c`.
        unsafe {
            std::ptr::copy_nonoverlapping(c.add(r * c_stride), local[r * NR2..].as_mut_ptr(), cols)
        };
    }
    run(local.as_mut_ptr(), NR2);
    for r in 0..rows {
        // SAFETY: as above.
        unsafe {
            std::ptr::copy_nonoverlapping(local[r * NR2..].as_ptr(), c.add(r * c_stride), cols)
        };
    }
}

/// [`super::matmul`] on AVX2 + FMA.
///
/// # Safety
/// The CPU has `avx2` and `fma`; `a` holds (m, k), `c` (m, n).
pub(super) unsafe fn matmul(c: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, threaded: bool) {
    let (k, n) = b.dims();
    let pairs = b.pairs();
    let rows: Vec<u32> = if threaded && m > 16 {
        let chunk = m.div_ceil(4 * super::super::pool_threads()).max(1);
        (0..m)
            .into_par_iter()
            .step_by(chunk)
            .flat_map_iter(|r0| {
                let r1 = (r0 + chunk).min(m);
                rounded_rows_reference(&a[r0 * k..r1 * k], r1 - r0, k)
            })
            .collect()
    } else {
        rounded_rows_reference(a, m, k)
    };
    let panels = n.div_ceil(NR);
    let out = Out(c.as_mut_ptr());
    let run = |&(r0, r1, p0, p1): &(usize, usize, usize, usize)| {
        for panel in p0..p1 {
            let cols = NR.min(n - panel * NR);
            let b_panel = &b.data[panel * pairs * NR..][..pairs * NR];
            for q0 in (0..pairs).step_by(KC_PAIRS) {
                let q = KC_PAIRS.min(pairs - q0);
                for t0 in (r0..r1).step_by(MR2) {
                    let t = MR2.min(r1 - t0);
                    for s0 in (0..cols).step_by(NR2) {
                        // SAFETY: the tile lies in `c` and in this task's block alone;
                        // `rows` and the panel slice hold what it reads.
                        unsafe {
                            tile_rows(
                                t,
                                rows.as_ptr().add(t0 * pairs + q0),
                                pairs,
                                b_panel.as_ptr().add(q0 * NR + s0),
                                q,
                                out.ptr().add(t0 * n + panel * NR + s0),
                                n,
                                NR2.min(cols - s0),
                            )
                        };
                    }
                }
            }
        }
    };
    let tasks = task_blocks(m, panels, threaded);
    if tasks.len() > 1 {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}
