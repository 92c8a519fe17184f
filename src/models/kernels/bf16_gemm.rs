//! A bf16 matmul for the CPU with AVX512-BF16 (`vdpbf16ps`): `C (f32) += A @ B` where `A` is
//! f32 activations rounded to bf16 at the matmul's input (round to nearest even, as
//! `vcvtne2ps2bf16`) and `B` is a weight matrix rounded to bf16 once at load and packed in the
//! layout the instruction reads. Products accumulate in f32 (as oneDNN's bf16 matmuls do).
//!
//! Layout ([`PackedBf16`]): the columns of `B` (the layer's outputs) in panels of [`NR`] = 64;
//! in a panel, for each pair of rows `(2p, 2p + 1)` of `B` (inputs), 64 dwords, one per column,
//! each `bf16(B[2p][j]) | bf16(B[2p + 1][j]) << 16`: one `vdpbf16ps` per 16 columns takes a
//! pair of inputs. `A` is rounded row by row into bf16 rows of even length (a zero padding the
//! last pair), so that the pair `(A[r][2p], A[r][2p + 1])` is one dword to broadcast.
//!
//! The microkernel keeps an `MR` x 64 tile of `C` (MR <= 6: 24 accumulators of 32 registers)
//! and runs over [`KC_PAIRS`] pairs of inputs at a time, whose 64-column slice of `B` (64 KiB)
//! serves all the row tiles of a task from L1 and L2. Tasks are blocks of panels (and of rows
//! where there are too few panels to keep the pool busy), as [`super::gemm`]'s.
//!
//! [`supported`] says whether the CPU has the instructions; elsewhere [`matmul`] runs
//! [`matmul_reference`], the scalar model of the same arithmetic (for tests; the pipeline
//! refuses bf16 on such CPUs at load).

use rayon::prelude::*;

use super::TASKS_PER_THREAD;

/// Columns of a packed panel (4 registers of 16 f32).
pub const NR: usize = 64;
/// Rows of the largest microkernel tile.
const MR: usize = 6;
/// Pairs of inputs per pass of the microkernel over a tile (512 inputs: a 64 KiB slice of a
/// panel). Each pass loads and stores the tile of `C`: with 128 pairs (a 32 KiB slice, in L1)
/// that was a tenth of the kernel's time at 768 inputs, three passes. 256 pairs, A/B on a
/// Zen 5 in bf16: OWL-ViT B/32 1.040x, B/16 1.041x, OWLv2 1.064x, CLIPSeg 1.012x (384: B/16
/// 1.027x, CLIPSeg 0.998x).
const KC_PAIRS: usize = 256;
/// Row blocks of a task have at least this many rows (each block reads its panels again).
const MIN_TASK_ROWS: usize = 48;

/// Whether this CPU runs the bf16 instructions (`avx512_bf16` in /proc/cpuinfo).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16 as `vcvtne2ps2bf16` rounds it: to nearest, ties to even; subnormals
/// flushed to zero (keeping the sign); NaN stays NaN (quieted). Returns the bits.
pub fn round_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7f80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// A (k, n) matrix in bf16, packed for [`matmul`] (see the module's doc). The weights of a
/// layer `(out, in)` pack as `B = W^T`: k = in, n = out.
#[derive(Clone)]
pub struct PackedBf16 {
    k: usize,
    n: usize,
    /// `[panel][pair][NR]` dwords.
    data: Vec<u32>,
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBf16 {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl PackedBf16 {
    /// Packs `B = w^T` from `w`, an (n, k) row-major f32 matrix (a linear layer's weight).
    pub fn from_transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "bf16 pack: {} values for ({n}, {k})",
            w.len()
        );
        let mut packed = Self::zeros(k, n);
        let panel = packed.pairs() * NR;
        packed
            .data
            .par_chunks_mut(panel)
            .enumerate()
            .for_each(|(p, dst)| pack_transposed_panel(dst, p, n, k, |j| &w[j * k..][..k]));
        packed
    }

    /// Packs `B = w^T` on this thread from the rows of `w` (n, k), row `j` being `row(j)` (k
    /// values, read in place: a strided source such as attention's keys).
    pub fn from_rows_of_transposed<'a>(
        n: usize,
        k: usize,
        row: impl Fn(usize) -> &'a [f32],
    ) -> Self {
        let mut packed = Self::zeros(k, n);
        let panel = packed.pairs() * NR;
        for (p, dst) in packed.data.chunks_mut(panel).enumerate() {
            pack_transposed_panel(dst, p, n, k, &row);
        }
        packed
    }

    /// Packs `B` (k, n) itself on this thread from its rows, row `i` being `row(i)` (n values:
    /// attention's values, the right operand of `p v` as it lies).
    pub fn from_rows<'a>(k: usize, n: usize, row: impl Fn(usize) -> &'a [f32]) -> Self {
        let mut packed = Self::zeros(k, n);
        let pairs = packed.pairs();
        // one row rounded: its values' bf16 bits two to a dword, the even one low
        let (mut even, mut odd) = (vec![0u32; n.div_ceil(2)], vec![0u32; n.div_ceil(2)]);
        let bits = |dwords: &[u32], j: usize| (dwords[j / 2] >> (16 * (j % 2))) & 0xffff;
        for p in 0..pairs {
            round_pairs(&row(2 * p)[..n], &mut even);
            if 2 * p + 1 < k {
                round_pairs(&row(2 * p + 1)[..n], &mut odd);
            } else {
                odd.fill(0);
            }
            for j in 0..n {
                packed.data[((j / NR) * pairs + p) * NR + j % NR] =
                    bits(&even, j) | bits(&odd, j) << 16;
            }
        }
        packed
    }

    /// A (k, n) matrix of zeros, packed.
    fn zeros(k: usize, n: usize) -> Self {
        Self {
            k,
            n,
            data: vec![0u32; n.div_ceil(NR) * k.div_ceil(2) * NR],
        }
    }

    /// `(k, n)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// The packed dwords, `[panel][pair][NR]` (for kernels that read the layout themselves).
    pub(super) fn dwords(&self) -> &[u32] {
        &self.data
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// `B` back in f32, (k, n) row-major (the values the kernel multiplies by).
    pub fn unpacked(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for i in 0..self.k {
            for j in 0..self.n {
                out[i * self.n + j] = self.get(i, j);
            }
        }
        out
    }

    /// `B[i][j]` as the kernel reads it.
    fn get(&self, i: usize, j: usize) -> f32 {
        let dword = self.data[((j / NR) * self.pairs() + i / 2) * NR + j % NR];
        bf16_to_f32((dword >> (16 * (i % 2))) as u16)
    }
}

/// Panel `panel` of `B = w^T` (its `pairs` x [`NR`] dwords, `dst`) from the rows of `w` (n, k):
/// each of its columns is a row of `w` rounded to pairs.
fn pack_transposed_panel<'a>(
    dst: &mut [u32],
    panel: usize,
    n: usize,
    k: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    let mut rounded = vec![0u32; k.div_ceil(2)];
    for c in 0..NR.min(n - panel * NR) {
        round_pairs(&row(panel * NR + c)[..k], &mut rounded);
        for (p, &dword) in rounded.iter().enumerate() {
            dst[p * NR + c] = dword;
        }
    }
}

/// `row` rounded to bf16 pairs, `row.len().div_ceil(2)` dwords into `dst` (the even value low,
/// the last pair zero-padded): 32 values an instruction where the CPU has AVX512-BF16.
pub(super) fn round_pairs(row: &[f32], dst: &mut [u32]) {
    assert_eq!(
        dst.len(),
        row.len().div_ceil(2),
        "bf16 pairs of {} values",
        row.len()
    );
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // SAFETY: the CPU has the instructions; `dst` holds the row's pairs, and the
        // `MaybeUninit` view of initialised dwords is only written with dwords.
        unsafe {
            x86::round_row(
                row,
                std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len()),
            )
        };
        return;
    }
    round_pairs_scalar(row, dst);
}

/// [`round_pairs`] one value at a time, by [`round_bf16`].
fn round_pairs_scalar(row: &[f32], dst: &mut [u32]) {
    for (p, d) in dst.iter_mut().enumerate() {
        let lo = round_bf16(row[2 * p]) as u32;
        let hi = row.get(2 * p + 1).map_or(0, |&v| round_bf16(v) as u32);
        *d = lo | (hi << 16);
    }
}

/// `a` (m, k) row-major rounded to bf16 rows of `k.div_ceil(2)` dwords (the last pair
/// zero-padded), as [`round_bf16`] rounds.
fn rounded_rows_reference(a: &[f32], m: usize, k: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut out = vec![0u32; m * pairs];
    for (r, dst) in out.chunks_exact_mut(pairs.max(1)).enumerate().take(m) {
        round_pairs_scalar(&a[r * k..][..k], dst);
    }
    out
}

/// The scalar model of [`matmul`]: `c += bf16(a) @ B`, each dword of inputs added as
/// `vdpbf16ps` adds it (the odd input's product, then the even one's, each sum rounded to f32;
/// the products of two bf16 are exact in f32).
pub fn matmul_reference(c: &mut [f32], a: &[f32], m: usize, b: &PackedBf16) {
    let (k, n) = b.dims();
    assert!(
        a.len() >= m * k && c.len() >= m * n,
        "bf16 matmul: operand too short"
    );
    let pairs = b.pairs();
    let rows = rounded_rows_reference(a, m, k);
    for r in 0..m {
        for j in 0..n {
            let mut acc = c[r * n + j];
            for p in 0..pairs {
                let x = rows[r * pairs + p];
                let w = b.data[((j / NR) * pairs + p) * NR + j % NR];
                acc += bf16_to_f32((x >> 16) as u16) * bf16_to_f32((w >> 16) as u16);
                acc += bf16_to_f32(x as u16) * bf16_to_f32(w as u16);
            }
            c[r * n + j] = acc;
        }
    }
}

/// `c += bf16(a) @ B`: `a` (m, k) and `c` (m, n) row-major f32, split over the rayon pool where
/// `threaded`. On a CPU without AVX512-BF16, [`matmul_reference`].
///
/// # Panics
/// If an operand is shorter than its shape.
pub fn matmul(c: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, threaded: bool) {
    let (k, n) = b.dims();
    assert!(
        a.len() >= m * k && c.len() >= m * n,
        "bf16 matmul: operand too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if supported() {
            // SAFETY: the CPU has the instructions; the shapes were checked.
            unsafe { x86::matmul(c, a, m, b, threaded) };
            return;
        }
        if emulated() {
            // SAFETY: as above, for AVX2 and FMA.
            unsafe { emulation::matmul(c, a, m, b, threaded) };
            return;
        }
    }
    let _ = threaded;
    matmul_reference(c, a, m, b);
}

/// `c += A @ B` from `a_pairs`, `A`'s rows already rounded to bf16 pairs ((m,
/// k.div_ceil(2)) dwords: what [`matmul_bias_act_rounded`] returns), split over the rayon
/// pool where `threaded`. Only where [`supported`].
///
/// # Panics
/// On a CPU without AVX512-BF16, or if an operand is shorter than its shape.
pub fn matmul_pairs(c: &mut [f32], a_pairs: &[u32], m: usize, b: &PackedBf16, threaded: bool) {
    let (k, n) = b.dims();
    assert!(supported(), "bf16 matmul_pairs without AVX512-BF16");
    assert!(
        a_pairs.len() >= m * k.div_ceil(2) && c.len() >= m * n,
        "bf16 matmul: operand too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the instructions; the shapes were checked.
    unsafe {
        x86::matmul_pairs(c, a_pairs, m, b, threaded)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = threaded;
}

/// `act(bias + bf16(a) @ B)` per row, rounded to bf16 pairs for a next product
/// ([`matmul_pairs`]): (m, n.div_ceil(2)) dwords. Each panel's block of rows is finished,
/// activated and rounded while it is in cache, so that no f32 output passes through memory
/// (a layer's MLP: fc1's output, 28 MiB at 2305 tokens, was written, activated in place, then
/// read again to round it for fc2). The values of [`matmul`] onto the bias, then `act`, then
/// [`round_pairs`]. Only where [`supported`].
///
/// # Panics
/// On a CPU without AVX512-BF16, for no inputs (k = 0), or if an operand is shorter than its
/// shape.
pub fn matmul_bias_act_rounded(
    a: &[f32],
    m: usize,
    b: &PackedBf16,
    bias: &[f32],
    act: &(dyn Fn(&mut [f32]) + Sync),
    threaded: bool,
) -> Vec<u32> {
    let (k, n) = b.dims();
    assert!(
        supported(),
        "bf16 matmul_bias_act_rounded without AVX512-BF16"
    );
    assert!(
        k > 0 && a.len() >= m * k && bias.len() == n,
        "bf16 matmul: operand too short"
    );
    if m == 0 || n == 0 {
        return Vec::new();
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the instructions; the shapes were checked.
    unsafe {
        x86::matmul_bias_act_rounded(a, m, b, bias, act, threaded)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (act, threaded);
        unreachable!("AVX512-BF16 off x86-64")
    }
}

/// Whether [`matmul`] runs [`emulation`]'s kernel here: AVX2 and FMA without AVX512-BF16.
pub fn emulated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !supported()
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The tasks of a product: (rows, panels) blocks.
fn task_blocks(m: usize, panels: usize, threaded: bool) -> Vec<(usize, usize, usize, usize)> {
    let threads = if threaded { super::pool_threads() } else { 1 };
    let target = if threaded {
        TASKS_PER_THREAD * threads
    } else {
        1
    };
    let col_block = super::gemm::balanced_block(panels, threads, target);
    let col_tasks = panels.div_ceil(col_block);
    let row_tasks = (target / col_tasks).clamp(1, m.div_ceil(MIN_TASK_ROWS).max(1));
    let row_block = m.div_ceil(row_tasks).div_ceil(MR) * MR;
    let mut tasks = Vec::new();
    for r0 in (0..m).step_by(row_block) {
        for p0 in (0..panels).step_by(col_block) {
            tasks.push((
                r0,
                (r0 + row_block).min(m),
                p0,
                (p0 + col_block).min(panels),
            ));
        }
    }
    tasks
}

/// A raw output shared by the tasks of the x86 kernels, which write disjoint blocks.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Out<T = f32>(*mut T);
// SAFETY: the tasks write disjoint blocks (task_blocks tiles the output).
#[cfg(target_arch = "x86_64")]
unsafe impl<T> Send for Out<T> {}
#[cfg(target_arch = "x86_64")]
unsafe impl<T> Sync for Out<T> {}

#[cfg(target_arch = "x86_64")]
impl<T> Out<T> {
    /// (a method, so that closures capture the whole `Out`, not its bare pointer)
    fn ptr(&self) -> *mut T {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    use rayon::prelude::*;

    use super::{task_blocks, Out, PackedBf16, KC_PAIRS, MR, NR};

    /// `a` rounded to bf16 rows of dwords, 32 values per `vcvtne2ps2bf16`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_row(src: &[f32], dst: &mut [MaybeUninit<u32>]) {
        let k = src.len();
        let mut i = 0;
        while i < k {
            let left = k - i;
            let lo_mask: __mmask16 = if left >= 16 {
                0xffff
            } else {
                ((1u32 << left) - 1) as u16
            };
            let hi_left = left.saturating_sub(16);
            let hi_mask: __mmask16 = if hi_left >= 16 {
                0xffff
            } else {
                ((1u32 << hi_left) - 1) as u16
            };
            // SAFETY: masked lanes are neither read nor faulted on; the others lie in `src`.
            let (lo, hi) = unsafe {
                (
                    _mm512_maskz_loadu_ps(lo_mask, src.as_ptr().wrapping_add(i)),
                    _mm512_maskz_loadu_ps(hi_mask, src.as_ptr().wrapping_add(i + 16)),
                )
            };
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            // dwords written: the pairs of the values left (the last one padded with zero)
            let dwords = left.min(32).div_ceil(2);
            let mask: __mmask16 = if dwords >= 16 {
                0xffff
            } else {
                ((1u32 << dwords) - 1) as u16
            };
            // SAFETY: `dst` holds `k.div_ceil(2)` dwords; the written ones lie inside it.
            unsafe {
                _mm512_mask_storeu_epi32(
                    dst.as_mut_ptr().wrapping_add(i / 2).cast::<i32>(),
                    mask,
                    packed,
                )
            };
            i += 32;
        }
    }

    /// Mask of the lanes of register `v` (of 4) that lie in the first `cols` columns.
    #[inline(always)]
    fn lane_mask(cols: usize, v: usize) -> __mmask16 {
        let valid = cols.saturating_sub(v * 16).min(16);
        ((1u32 << valid) - 1) as u16
    }

    /// `c[R x cols] += a[R rows, pairs] @ b[pairs, 64 columns]`: `a` rows of `a_stride` dwords,
    /// `b` a panel slice (`pairs` x 64 dwords), `c` rows of `c_stride` floats.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const R: usize>(
        a: *const u32,
        a_stride: usize,
        b: *const u32,
        pairs: usize,
        c: *mut f32,
        c_stride: usize,
        cols: usize,
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
                // SAFETY: masked lanes are not read; the others lie in `c` (the caller's).
                *acc = unsafe {
                    _mm512_maskz_loadu_ps(masks[v], c.wrapping_add(r * c_stride + v * 16))
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
                unsafe {
                    _mm512_mask_storeu_ps(c.wrapping_add(r * c_stride + v * 16), masks[v], *acc)
                };
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
    ) {
        // SAFETY: the caller's promises, passed on.
        unsafe {
            match rows {
                6 => tile::<6>(a, a_stride, b, pairs, c, c_stride, cols),
                5 => tile::<5>(a, a_stride, b, pairs, c, c_stride, cols),
                4 => tile::<4>(a, a_stride, b, pairs, c, c_stride, cols),
                3 => tile::<3>(a, a_stride, b, pairs, c, c_stride, cols),
                2 => tile::<2>(a, a_stride, b, pairs, c, c_stride, cols),
                1 => tile::<1>(a, a_stride, b, pairs, c, c_stride, cols),
                _ => unreachable!("bf16 tile of {rows} rows"),
            }
        }
    }

    /// [`super::matmul`] on a CPU with AVX512-BF16.
    ///
    /// # Safety
    /// The CPU has `avx512f` and `avx512bf16`; `a` holds (m, k), `c` (m, n).
    pub(super) unsafe fn matmul(
        c: &mut [f32],
        a: &[f32],
        m: usize,
        b: &PackedBf16,
        threaded: bool,
    ) {
        // SAFETY: the caller's promises, passed on.
        unsafe {
            let rows = rounded_rows(a, m, b.dims().0, threaded);
            matmul_pairs(c, &rows, m, b, threaded)
        }
    }

    /// `a` (m, k) rounded to bf16 rows of `k.div_ceil(2)` dwords, over the pool where
    /// `threaded`.
    ///
    /// # Safety
    /// The CPU has `avx512f` and `avx512bf16`; `a` holds (m, k).
    unsafe fn rounded_rows(a: &[f32], m: usize, k: usize, threaded: bool) -> Vec<u32> {
        let pairs = k.div_ceil(2);
        let mut rows: Vec<u32> = Vec::with_capacity(m * pairs);
        {
            let dst = &mut rows.spare_capacity_mut()[..m * pairs];
            let round = |(r, d): (usize, &mut [MaybeUninit<u32>])| {
                // SAFETY: the CPU has the instructions (the caller's promise).
                unsafe { round_row(&a[r * k..][..k], d) }
            };
            if threaded && m > 16 {
                dst.par_chunks_mut(pairs).enumerate().for_each(round);
            } else {
                dst.chunks_mut(pairs).enumerate().for_each(round);
            }
        }
        // SAFETY: `round_row` wrote every dword of every row.
        unsafe { rows.set_len(m * pairs) };
        rows
    }

    /// `c += A @ B` from `A`'s rows already rounded (`rows`, (m, k.div_ceil(2)) dwords).
    ///
    /// # Safety
    /// The CPU has `avx512f` and `avx512bf16`; `rows` holds (m, pairs), `c` (m, n).
    pub(super) unsafe fn matmul_pairs(
        c: &mut [f32],
        rows: &[u32],
        m: usize,
        b: &PackedBf16,
        threaded: bool,
    ) {
        let (_, n) = b.dims();
        let pairs = b.pairs();
        assert!(rows.len() >= m * pairs && c.len() >= m * n);
        let out = Out(c.as_mut_ptr());
        for_each_task(m, n, threaded, |&(r0, r1, p0, p1)| {
            for panel in p0..p1 {
                // SAFETY: rows r0..r1 of the panel's columns lie in `c` and in this task's
                // block alone; `rows` holds them.
                unsafe {
                    panel_product(
                        rows,
                        b,
                        panel,
                        r0..r1,
                        out.ptr().add(r0 * n + panel * NR),
                        n,
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

    /// `C[r, panel's columns] += A[r] @ B[.., panel's columns]` for the rows `r` of `rows_of`,
    /// tile by tile in passes of [`KC_PAIRS`] pairs: `c` at the first row's first column of
    /// the panel, rows `c_stride` apart.
    ///
    /// # Safety
    /// The CPU has `avx512f` and `avx512bf16`; `rows` holds the rows' dwords; `c` the rows'
    /// panel columns, written by the caller alone.
    unsafe fn panel_product(
        rows: &[u32],
        b: &PackedBf16,
        panel: usize,
        rows_of: Range<usize>,
        c: *mut f32,
        c_stride: usize,
    ) {
        let pairs = b.pairs();
        let cols = NR.min(b.dims().1 - panel * NR);
        let b_panel = &b.data[panel * pairs * NR..][..pairs * NR];
        for q0 in (0..pairs).step_by(KC_PAIRS) {
            let q = KC_PAIRS.min(pairs - q0);
            for t0 in rows_of.clone().step_by(MR) {
                // SAFETY: the tile lies in `c` (rows t0.. of the caller's, the panel's `cols`
                // columns); `rows` and the panel slice hold what it reads.
                unsafe {
                    tile_rows(
                        MR.min(rows_of.end - t0),
                        rows.as_ptr().add(t0 * pairs + q0),
                        pairs,
                        b_panel.as_ptr().add(q0 * NR),
                        q,
                        c.add((t0 - rows_of.start) * c_stride),
                        c_stride,
                        cols,
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
    /// columns of its rows accumulate in a block of [`NR`]-float rows (in L2), prefilled with
    /// the bias, over the same passes as [`matmul_pairs`]; then the block is activated and
    /// each row rounded into the output.
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
                    for row in block.chunks_exact_mut(NR) {
                        row[..cols].copy_from_slice(&bias[panel * NR..][..cols]);
                    }
                    // SAFETY: the block holds the task's rows, NR floats apart.
                    unsafe { panel_product(&rows, b, panel, r0..r1, block.as_mut_ptr(), NR) };
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
}

/// The same arithmetic on AVX2 + FMA, for CPUs without AVX512-BF16 (the tests, and the
/// measurement of the path on such a CPU; the pipeline refuses bf16 there): each bf16 pair
/// widened to two f32 (a shift, a mask) and two FMAs, the odd input's first. A product of two
/// bf16 is exact in f32, so each FMA rounds as `vdpbf16ps`'s add does: bit for bit the scalar
/// model. At best the f32 FMA rate (no gain in speed), half the weights' memory.
#[cfg(target_arch = "x86_64")]
mod emulation {
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
                std::ptr::copy_nonoverlapping(
                    c.add(r * c_stride),
                    local[r * NR2..].as_mut_ptr(),
                    cols,
                )
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
    pub(super) unsafe fn matmul(
        c: &mut [f32],
        a: &[f32],
        m: usize,
        b: &PackedBf16,
        threaded: bool,
    ) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kernels::tests::randn;

    fn values(shape: &[usize]) -> Vec<f32> {
        randn(shape)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1); 1 + 3 * 2^-8 to 1 + 2^-6
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(round_bf16(-2.5), half::bf16::from_f32(-2.5).to_bits());
        assert!(bf16_to_f32(round_bf16(f32::NAN)).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), 0x7f80);
        // subnormals: zero, signed
        assert_eq!(round_bf16(1e-39), 0);
        assert_eq!(round_bf16(-1e-39), 0x8000);
        // the largest finite f32 rounds up to infinity, as the instruction does
        assert_eq!(round_bf16(f32::MAX), 0x7f80);
        for x in values(&[1000]) {
            assert_eq!(round_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn packing_keeps_every_weight() {
        let (n, k) = (70, 9);
        let w = values(&[n, k]);
        let b = PackedBf16::from_transposed(&w, n, k);
        assert_eq!(b.dims(), (9, 70));
        let u = b.unpacked();
        for j in 0..n {
            for i in 0..k {
                assert_eq!(u[i * n + j], bf16_to_f32(round_bf16(w[j * k + i])));
            }
        }
        // 2 panels of 5 pairs
        assert_eq!(b.bytes(), 2 * 5 * NR * 4);
        // the same from strided rows of w, and from the rows of B = w^T itself
        let strided: Vec<f32> = w
            .chunks(k)
            .flat_map(|r| r.iter().chain(&[7.0; 3]))
            .copied()
            .collect();
        let from_rows = PackedBf16::from_rows_of_transposed(n, k, |j| &strided[j * (k + 3)..]);
        assert_eq!((from_rows.dims(), &from_rows.data), ((9, 70), &b.data));
        let w_t: Vec<f32> = (0..k)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| w[j * k + i])
            .collect();
        let from_b = PackedBf16::from_rows(k, n, |i| &w_t[i * n..]);
        assert_eq!((from_b.dims(), &from_b.data), ((9, 70), &b.data));
    }

    /// A kernel as the tests call it.
    type Kernel = fn(&mut [f32], &[f32], usize, &PackedBf16, bool);

    /// Every kernel this CPU runs, named: the AVX512-BF16 one and the AVX2 + FMA emulation
    /// (on a CPU with both, the one [`matmul`] does not pick is tested too), and [`matmul`].
    fn kernels_here() -> Vec<(&'static str, Kernel)> {
        let mut kernels: Vec<(&'static str, Kernel)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if supported() {
                // SAFETY: `supported()`; the tests' operands fit their shapes.
                kernels.push(("avx512_bf16", |c, a, m, b, t| unsafe {
                    x86::matmul(c, a, m, b, t)
                }));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA; the operands fit.
                kernels.push(("avx2 emulation", |c, a, m, b, t| unsafe {
                    emulation::matmul(c, a, m, b, t)
                }));
            }
        }
        kernels.push(("matmul", matmul));
        kernels
    }

    #[test]
    fn kernel_matches_the_scalar_model_exactly() {
        let kernels = kernels_here();
        let names: Vec<_> = kernels.iter().map(|k| k.0).collect();
        eprintln!("bf16 kernels here: {names:?}");
        // odd k, partial panels and tiles, several k blocks (k = 601: 301 pairs, 3 blocks),
        // few rows, one row, row and column splits
        for (m, k, n) in [
            (1, 8, 16),
            (3, 601, 100),
            (7, 33, 64),
            (13, 256, 130),
            (200, 77, 70),
            (577, 96, 768),
            (40, 300, 2304),
        ] {
            let a = values(&[m, k]);
            let w = values(&[n, k]);
            let b = PackedBf16::from_transposed(&w, n, k);
            let start = values(&[m, n]);
            let mut want = start.clone();
            matmul_reference(&mut want, &a, m, &b);
            for (name, kernel) in &kernels {
                for threaded in [false, true] {
                    let mut got = start.clone();
                    kernel(&mut got, &a, m, &b, threaded);
                    let same = got
                        .iter()
                        .zip(&want)
                        .filter(|(g, w)| g.to_bits() == w.to_bits())
                        .count();
                    assert_eq!(same, m * n, "{name}: {m}x{k}x{n} threaded {threaded}");
                }
            }
        }
    }

    #[test]
    fn reference_is_the_bf16_product() {
        // against an f64 product of the rounded operands: only f32 summation error
        let (m, k, n) = (5, 500, 40);
        let (a, w) = (values(&[m, k]), values(&[n, k]));
        let b = PackedBf16::from_transposed(&w, n, k);
        let mut got = vec![0f32; m * n];
        matmul_reference(&mut got, &a, m, &b);
        let r = |x: f32| bf16_to_f32(round_bf16(x)) as f64;
        let mut err_vs_f32 = 0f64;
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|p| r(a[i * k + p]) * r(w[j * k + p])).sum();
                assert!((got[i * n + j] as f64 - exact).abs() < 1e-4 * (k as f64).sqrt());
                let f32_product: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                err_vs_f32 = err_vs_f32.max((exact - f32_product).abs());
            }
        }
        // bf16 rounding does change the product: ~2^-9 relative per factor, sqrt(k) terms
        assert!(err_vs_f32 > 1e-3 && err_vs_f32 < 0.5, "{err_vs_f32}");
    }
}
