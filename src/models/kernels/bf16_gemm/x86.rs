//! The kernels on a CPU with AVX512-BF16: the rounding of rows to pairs (`vcvtne2ps2bf16`),
//! the microkernel (`vdpbf16ps`) and the products' loops and tasks.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::{task_blocks, Out, PackedBf16, KC_PAIRS, MR, NR};
use crate::models::kernels::written;

/// Rows of a panel that run all their passes before the next rows: their tiles of `C` (24
/// KiB) stay in L1 from one pass to the next, where a panel's whole column of 2305 rows
/// (590 KiB) came back from L2. A sweep on a Zen 5, bf16 GFLOP/s (median of 40): 2305 x
/// 3072 x 768 (fc2) 704 -> 816, 2305 x 768 x 3072 859 -> 906, 2048^3 832 -> 859; 48, 60, 144
/// and 192 rows gave less or the same.
const CHUNK_ROWS: usize = 96;

/// `src` rounded to bf16 pairs (`src.len().div_ceil(2)` dwords into `dst`), 32 values per
/// `vcvtne2ps2bf16`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn round_row(src: &[f32], dst: &mut [MaybeUninit<u32>]) {
    for i in (0..src.len()).step_by(32) {
        // SAFETY: the CPU has the instructions; `i` lies in `src`.
        let packed = unsafe { rounded_pairs_at(src, i) };
        // dwords written: the pairs of the values left (the last one padded with zero)
        let dwords = (src.len() - i).min(32).div_ceil(2);
        // SAFETY: `dst` holds `src.len().div_ceil(2)` dwords; the written ones lie inside it.
        unsafe {
            _mm512_mask_storeu_epi32(
                dst.as_mut_ptr().wrapping_add(i / 2).cast::<i32>(),
                first_lanes(dwords),
                packed,
            )
        };
    }
}

/// The mask of the first `n` (at most 16) lanes.
#[inline(always)]
fn first_lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// `src[at..at + 32]` (the values past its end as zeros) rounded to 16 pairs by one
/// `vcvtne2ps2bf16`, the even value of each low.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn rounded_pairs_at(src: &[f32], at: usize) -> __m512i {
    let left = src.len() - at;
    // SAFETY: masked lanes are neither read nor faulted on; the others lie in `src`.
    unsafe {
        let lo = _mm512_maskz_loadu_ps(first_lanes(left), src.as_ptr().wrapping_add(at));
        let hi = _mm512_maskz_loadu_ps(
            first_lanes(left.saturating_sub(16)),
            src.as_ptr().wrapping_add(at + 16),
        );
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
    }
}

/// The 16 x 16 dwords of `r` transposed: row `c` of the result is column `c` of `r`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
    // dwords, then qwords, interleaved: u[4i + j]'s 128-bit lane L holds rows 4i..4i + 4 of
    // column 4L + j
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    let u: [__m512i; 16] = std::array::from_fn(|i| {
        let (base, j) = (i & !3, i % 4);
        let (a, b) = (t[base + j / 2], t[base + j / 2 + 2]);
        if j % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // then the lanes L of u[j], u[4 + j], u[8 + j], u[12 + j] gathered into row 4L + j
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let s0 = _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]);
        let s1 = _mm512_shuffle_i32x4::<0xee>(u[j], u[4 + j]);
        let s2 = _mm512_shuffle_i32x4::<0x44>(u[8 + j], u[12 + j]);
        let s3 = _mm512_shuffle_i32x4::<0xee>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_i32x4::<0x88>(s0, s2);
        out[4 + j] = _mm512_shuffle_i32x4::<0xdd>(s0, s2);
        out[8 + j] = _mm512_shuffle_i32x4::<0x88>(s1, s3);
        out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(s1, s3);
    }
    out
}

/// Panel `panel` of `B = w^T` (`dst`, its pairs x [`NR`] dwords) from the rows of `w` (n, k)
/// (`row(j)`): 16 rows of `w` rounded to 16 pairs each, transposed in registers into 16
/// pairs of 16 columns (the scalar packing wrote each dword alone, [`NR`] dwords apart:
/// attention's keys, packed for every head, took 2% of an OWL-ViT B/16 frame).
///
/// # Safety
/// The CPU has `avx512f` and `avx512bf16`; `dst` holds `k.div_ceil(2)` x [`NR`] dwords; each
/// row has `k` values.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_transposed_panel<'a>(
    dst: &mut [u32],
    panel: usize,
    n: usize,
    k: usize,
    row: &dyn Fn(usize) -> &'a [f32],
) {
    let pairs = k.div_ceil(2);
    assert!(dst.len() >= pairs * NR);
    let cols = NR.min(n - panel * NR);
    for c0 in (0..cols).step_by(16) {
        let keys = 16.min(cols - c0);
        let rows: [&[f32]; 16] = std::array::from_fn(|i| {
            if i < keys {
                &row(panel * NR + c0 + i)[..k]
            } else {
                &[]
            }
        });
        for p0 in (0..pairs).step_by(16) {
            let r = std::array::from_fn(|i| {
                if i < keys {
                    // SAFETY: the CPU has the instructions; `p0` pairs lie within the row.
                    unsafe { rounded_pairs_at(rows[i], 2 * p0) }
                } else {
                    _mm512_setzero_si512()
                }
            });
            for (p, line) in transpose_16x16(r).iter().enumerate().take(pairs - p0) {
                // SAFETY: pair p0 + p's columns c0.. lie in the panel; `keys` of them valid.
                unsafe {
                    _mm512_mask_storeu_epi32(
                        dst.as_mut_ptr().add((p0 + p) * NR + c0).cast(),
                        first_lanes(keys),
                        *line,
                    )
                };
            }
        }
    }
}

/// Pair `p` of every panel of a packed (k, n) `B` (`data`, `pairs` pairs a panel) from row
/// `2p` of `B` and row `2p + 1` (`None`: past k, zeros): 16 columns rounded at once and their
/// bf16 interleaved by one `vpermw` (the scalar packing took 2% of an OWL-ViT B/16 frame).
///
/// # Safety
/// The CPU has `avx512f`, `avx512bw` and `avx512bf16`; `data` is the packed `B`; `even` (and
/// `odd`) hold n values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_pair_row(
    data: &mut [u32],
    pairs: usize,
    p: usize,
    even: &[f32],
    odd: Option<&[f32]>,
) {
    let n = even.len();
    assert!(odd.is_none_or(|o| o.len() == n) && data.len() >= n.div_ceil(NR) * pairs * NR);
    // word 2i of the result: word i (even value i), word 2i + 1: word 16 + i (odd value i)
    let order: [u16; 32] = std::array::from_fn(|w| (w / 2 + 16 * (w % 2)) as u16);
    // SAFETY: 64 bytes.
    let order = unsafe { _mm512_loadu_si512(order.as_ptr().cast()) };
    for j0 in (0..n).step_by(16) {
        let lanes = first_lanes(n - j0);
        // SAFETY: masked lanes are neither read nor written; the others lie in the rows and
        // in pair p of column j0's panel.
        unsafe {
            let e = _mm512_maskz_loadu_ps(lanes, even.as_ptr().add(j0));
            let o = match odd {
                Some(odd) => _mm512_maskz_loadu_ps(lanes, odd.as_ptr().add(j0)),
                None => _mm512_setzero_ps(),
            };
            let words = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(o, e));
            let dwords = _mm512_permutexvar_epi16(order, words);
            let at = ((j0 / NR) * pairs + p) * NR + j0 % NR;
            _mm512_mask_storeu_epi32(data.as_mut_ptr().add(at).cast(), lanes, dwords);
        }
    }
}

/// Mask of the lanes of register `v` (of 4) that lie in the first `cols` columns.
#[inline(always)]
fn lane_mask(cols: usize, v: usize) -> __mmask16 {
    first_lanes(cols.saturating_sub(v * 16))
}

/// `c[R x cols] = start + a[R rows, pairs] @ b[pairs, 64 columns]`: `a` rows of `a_stride`
/// dwords, `b` a panel slice (`pairs` x 64 dwords), `c` rows of `c_stride` floats; `start`
/// at the tile's first row and column ([`TileStart::Output`]: `c` itself).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const R: usize>(
    a: *const u32,
    a_stride: usize,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    c_stride: usize,
    cols: usize,
    start: TileStart,
) {
    let masks = [
        lane_mask(cols, 0),
        lane_mask(cols, 1),
        lane_mask(cols, 2),
        lane_mask(cols, 3),
    ];
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        for (v, acc) in acc.iter_mut().enumerate() {
            let at = r * c_stride + v * 16;
            // SAFETY: masked lanes are not read; the others lie in `c`, in the bias's panel
            // columns or in the residual (the caller's).
            *acc = unsafe {
                match start {
                    TileStart::Output => _mm512_maskz_loadu_ps(masks[v], c.wrapping_add(at)),
                    TileStart::Bias(bias, residual) => {
                        let bias = _mm512_maskz_loadu_ps(masks[v], bias.wrapping_add(v * 16));
                        if residual.is_null() {
                            bias
                        } else {
                            let r = _mm512_maskz_loadu_ps(masks[v], residual.wrapping_add(at));
                            _mm512_add_ps(bias, r)
                        }
                    }
                }
            };
        }
    }
    let bf16 = |x: __m512i| -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
    };
    for p in 0..pairs {
        // SAFETY: the panel slice holds `pairs` x 64 dwords; row r of `a` `pairs` dwords.
        unsafe {
            let bp = b.add(p * NR);
            let bv: [__m512bh; 4] = [
                bf16(_mm512_loadu_si512(bp.cast())),
                bf16(_mm512_loadu_si512(bp.add(16).cast())),
                bf16(_mm512_loadu_si512(bp.add(32).cast())),
                bf16(_mm512_loadu_si512(bp.add(48).cast())),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = bf16(_mm512_set1_epi32(*a.add(r * a_stride + p) as i32));
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, x, *bv);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: as the loads.
            unsafe { _mm512_mask_storeu_ps(c.wrapping_add(r * c_stride + v * 16), masks[v], *acc) };
        }
    }
}

/// What a tile's accumulators start from.
#[derive(Clone, Copy)]
pub(super) enum TileStart {
    /// The tile of `c` itself (`c += ...`).
    Output,
    /// A bias at the tile's first column (repeated in every row) plus, unless null, a
    /// residual at the tile's first element with `c`'s row stride: `c` is written, never read.
    Bias(*const f32, *const f32),
}

// SAFETY: the pointers are read only, by tasks that the caller's promises make disjoint.
unsafe impl Send for TileStart {}
unsafe impl Sync for TileStart {}

impl TileStart {
    /// The start of the tile `rows` rows (of `stride` floats) and `cols` columns on.
    fn at(self, rows: usize, stride: usize, cols: usize) -> Self {
        match self {
            Self::Output => Self::Output,
            Self::Bias(bias, residual) => Self::Bias(
                bias.wrapping_add(cols),
                if residual.is_null() {
                    residual
                } else {
                    residual.wrapping_add(rows * stride + cols)
                },
            ),
        }
    }
}

/// [`tile`] for `rows` (1..=MR) rows.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_rows(
    rows: usize,
    a: *const u32,
    a_stride: usize,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    c_stride: usize,
    cols: usize,
    start: TileStart,
) {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        match rows {
            6 => tile::<6>(a, a_stride, b, pairs, c, c_stride, cols, start),
            5 => tile::<5>(a, a_stride, b, pairs, c, c_stride, cols, start),
            4 => tile::<4>(a, a_stride, b, pairs, c, c_stride, cols, start),
            3 => tile::<3>(a, a_stride, b, pairs, c, c_stride, cols, start),
            2 => tile::<2>(a, a_stride, b, pairs, c, c_stride, cols, start),
            1 => tile::<1>(a, a_stride, b, pairs, c, c_stride, cols, start),
            _ => unreachable!("bf16 tile of {rows} rows"),
        }
    }
}

/// [`super::matmul`] on a CPU with AVX512-BF16.
///
/// # Safety
/// The CPU has `avx512f` and `avx512bf16`; `a` holds (m, k), `c` (m, n).
pub(super) unsafe fn matmul(c: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, threaded: bool) {
    assert!(c.len() >= m * b.dims().1);
    // SAFETY: the caller's promises, passed on; `c` holds (m, n) initialised floats.
    unsafe {
        let rows = rounded_rows(a, m, b.dims().0, threaded);
        product(c.as_mut_ptr(), &rows, m, b, TileStart::Output, threaded)
    }
}

/// `a` (m, k) rounded to bf16 rows of `k.div_ceil(2)` dwords, over the pool where
/// `threaded`.
///
/// # Safety
/// The CPU has `avx512f` and `avx512bf16`; `a` holds (m, k).
pub(super) unsafe fn rounded_rows(a: &[f32], m: usize, k: usize, threaded: bool) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let round = |(r, d): (usize, &mut [MaybeUninit<u32>])| {
        // SAFETY: the CPU has the instructions (the caller's promise).
        unsafe { round_row(&a[r * k..][..k], d) }
    };
    // SAFETY: `round_row` writes every dword of every row.
    unsafe {
        written(m * pairs, |dst| {
            if threaded && m > 16 {
                dst.par_chunks_mut(pairs).enumerate().for_each(round);
            } else {
                dst.chunks_mut(pairs).enumerate().for_each(round);
            }
        })
    }
}

/// `c = start + A @ B` from `A`'s rows already rounded (`rows`, (m, k.div_ceil(2)) dwords),
/// `start` at `c`'s first element ([`TileStart::Output`]: `c += A @ B`).
///
/// # Safety
/// The CPU has `avx512f` and `avx512bf16`; `rows` holds (m, pairs); `c` (m, n) floats,
/// initialised where `start` is [`TileStart::Output`]; a bias start holds n values and its
/// residual (m, n). Inputs k > 0.
pub(super) unsafe fn product(
    c: *mut f32,
    rows: &[u32],
    m: usize,
    b: &PackedBf16,
    start: TileStart,
    threaded: bool,
) {
    let (_, n) = b.dims();
    assert!(rows.len() >= m * b.pairs() && b.pairs() > 0);
    let out = Out(c);
    for_each_task(m, n, threaded, |&(r0, r1, p0, p1)| {
        for panel in p0..p1 {
            // SAFETY: rows r0..r1 of the panel's columns lie in `c` and in this task's
            // block alone; `rows` and the start hold them.
            unsafe {
                panel_product(
                    rows,
                    b,
                    panel,
                    r0..r1,
                    out.ptr().add(r0 * n + panel * NR),
                    n,
                    start.at(r0, n, panel * NR),
                )
            };
        }
    });
}

/// `run` for each task of an (m, n) product ([`task_blocks`]), over the pool where there
/// is more than one.
fn for_each_task(
    m: usize,
    n: usize,
    threaded: bool,
    run: impl Fn(&(usize, usize, usize, usize)) + Sync + Send,
) {
    let tasks = task_blocks(m, n.div_ceil(NR), threaded);
    if tasks.len() > 1 {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// `C[r, panel's columns] = start + A[r] @ B[.., panel's columns]` for the rows `r` of
/// `rows_of`, in chunks of [`CHUNK_ROWS`] rows, each tile by tile in passes of [`KC_PAIRS`]
/// pairs: `c` and `start` at the first row's first column of the panel, rows `c_stride`
/// apart. The first pass starts from `start`, the others from `c` (so that a bias start
/// never reads `c`: its first pass used to load each tile of a prefilled output from
/// memory, a tenth of the kernel's time).
///
/// # Safety
/// The CPU has `avx512f` and `avx512bf16`; `rows` holds the rows' dwords; `c` the rows'
/// panel columns, written by the caller alone; `start` as [`product`]'s.
unsafe fn panel_product(
    rows: &[u32],
    b: &PackedBf16,
    panel: usize,
    rows_of: Range<usize>,
    c: *mut f32,
    c_stride: usize,
    start: TileStart,
) {
    let pairs = b.pairs();
    let cols = NR.min(b.dims().1 - panel * NR);
    let b_panel = &b.data[panel * pairs * NR..][..pairs * NR];
    let chunks = rows_of.clone().step_by(CHUNK_ROWS);
    let passes = |c0: usize| (0..pairs).step_by(KC_PAIRS).map(move |q0| (c0, q0));
    for (c0, q0) in chunks.flat_map(passes) {
        let q = KC_PAIRS.min(pairs - q0);
        let chunk_end = (c0 + CHUNK_ROWS).min(rows_of.end);
        for t0 in (c0..chunk_end).step_by(MR) {
            // SAFETY: the tile lies in `c` (rows t0.. of the caller's, the panel's `cols`
            // columns); `rows` and the panel slice hold what it reads.
            unsafe {
                tile_rows(
                    MR.min(chunk_end - t0),
                    rows.as_ptr().add(t0 * pairs + q0),
                    pairs,
                    b_panel.as_ptr().add(q0 * NR),
                    q,
                    c.add((t0 - rows_of.start) * c_stride),
                    c_stride,
                    cols,
                    if q0 == 0 {
                        start.at(t0 - rows_of.start, c_stride, 0)
                    } else {
                        TileStart::Output
                    },
                )
            };
        }
    }
}

thread_local! {
    /// Each pool thread's f32 block of a task's rows by one panel (fused epilogue).
    static PANEL_BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`super::matmul_bias_act_rounded`] on a CPU with AVX512-BF16: per task, each panel's
/// columns of its rows accumulate in a block of [`NR`]-float rows (in L2), from the bias,
/// over the same passes as [`product`]; then the block is activated and each row rounded
/// into the output.
///
/// # Safety
/// The CPU has `avx512f` and `avx512bf16`; `a` holds (m, k), `bias` n values.
pub(super) unsafe fn matmul_bias_act_rounded(
    a: &[f32],
    m: usize,
    b: &PackedBf16,
    bias: &[f32],
    act: &(dyn Fn(&mut [f32]) + Sync),
    threaded: bool,
) -> Vec<u32> {
    let (k, n) = b.dims();
    let out_pairs = n.div_ceil(2);
    // SAFETY: the caller's promises.
    let rows = unsafe { rounded_rows(a, m, k, threaded) };
    let mut out: Vec<u32> = Vec::with_capacity(m * out_pairs);
    let dst = Out(out.spare_capacity_mut().as_mut_ptr());
    for_each_task(m, n, threaded, |&(r0, r1, p0, p1)| {
        PANEL_BLOCK.with(|block| {
            let mut block = block.borrow_mut();
            block.resize((r1 - r0) * NR, 0.0);
            for panel in p0..p1 {
                let cols = NR.min(n - panel * NR);
                let start = TileStart::Bias(bias[panel * NR..].as_ptr(), std::ptr::null());
                // SAFETY: the block holds the task's rows, NR floats apart; the bias the
                // panel's columns.
                unsafe { panel_product(&rows, b, panel, r0..r1, block.as_mut_ptr(), NR, start) };
                // one call over the block (a call a row made B/16 frames 2% slower than
                // no fusion, one a block 6.5% faster); columns past `cols` hold stale
                // values, activated and never read
                act(&mut block);
                for (i, row) in block.chunks_exact(NR).enumerate() {
                    let row = &row[..cols];
                    // SAFETY: the row's dwords of this panel lie in `out` and in this
                    // task's block alone; the CPU has the instructions.
                    unsafe {
                        let at = dst.ptr().add((r0 + i) * out_pairs + panel * NR / 2);
                        round_row(row, std::slice::from_raw_parts_mut(at, cols.div_ceil(2)));
                    }
                }
            }
        })
    });
    // SAFETY: the tasks tile the output, and each wrote every dword of its rows' panels.
    unsafe { out.set_len(m * out_pairs) };
    out
}
