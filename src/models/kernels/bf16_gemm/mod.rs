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
//! serves the row tiles of a task from L1 and L2, 96 rows at a time (their tiles of `C` stay
//! in L1 between passes). A linear layer's product ([`linear`]) starts its first pass from
//! the bias (and residual), so its output is written and never read. Tasks are blocks of
//! panels (and of rows where there are too few panels to keep the pool busy), as
//! [`super::gemm`]'s.
//!
//! [`supported`] says whether the CPU has the instructions; elsewhere [`matmul`] runs
//! [`matmul_reference`], the scalar model of the same arithmetic (for tests; the pipeline
//! refuses bf16 on such CPUs at load).

use std::mem::MaybeUninit;

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

/// Whether this CPU runs the bf16 kernels (`avx512_bf16` in /proc/cpuinfo, with the
/// `avx512bw` every such CPU has, for the packing's `vpermw`).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
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
        for p in 0..pairs {
            let even = &row(2 * p)[..n];
            let odd = (2 * p + 1 < k).then(|| &row(2 * p + 1)[..n]);
            #[cfg(target_arch = "x86_64")]
            if supported() {
                // SAFETY: the CPU has the instructions; the panels hold pair `p` of every one.
                unsafe { x86::pack_pair_row(&mut packed.data, pairs, p, even, odd) };
                continue;
            }
            for (j, &e) in even.iter().enumerate() {
                let hi = odd.map_or(0, |odd| round_bf16(odd[j]) as u32);
                packed.data[((j / NR) * pairs + p) * NR + j % NR] = round_bf16(e) as u32 | hi << 16;
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
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // SAFETY: the CPU has the instructions; `dst` is the panel's pairs x NR dwords.
        unsafe { x86::pack_transposed_panel(dst, panel, n, k, &row) };
        return;
    }
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

/// The left operand `A` (m, k) of a product: f32 rows, rounded to bf16 at the product, or
/// rows already rounded to bf16 pairs ((m, k.div_ceil(2)) dwords, as [`round_pairs`] rounds:
/// what [`matmul_bias_act_rounded`] returns).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    F32(&'a [f32]),
    Pairs(&'a [u32]),
}

impl<'a> Input<'a> {
    /// Whether it holds (m, k).
    fn holds(&self, m: usize, k: usize) -> bool {
        match self {
            Self::F32(a) => a.len() >= m * k,
            Self::Pairs(a) => a.len() >= m * k.div_ceil(2),
        }
    }

    /// Its (m, k) values in f32 (pairs widened exactly: they are bf16 values).
    fn values(self, m: usize, k: usize) -> std::borrow::Cow<'a, [f32]> {
        match self {
            Self::F32(a) => a[..m * k].into(),
            Self::Pairs(a) => {
                let pairs = k.div_ceil(2);
                let value = |i: usize| {
                    let dword = a[(i / k) * pairs + (i % k) / 2];
                    bf16_to_f32((dword >> (16 * (i % k % 2))) as u16)
                };
                (0..m * k).map(value).collect::<Vec<_>>().into()
            }
        }
    }
}

/// `bias + residual + A @ B` into `out`, a linear layer's (m, n) row-major output: every
/// element written, none read, so that the output needs no prefill (a prefilled output's
/// tiles were loaded back from memory at the first pass, a tenth of the kernel's time).
/// `bias` (n values) in every row, plus `residual` ((m, n)) where given. On a CPU without
/// AVX512-BF16, the bias and residual are written first and [`matmul`] adds onto them.
///
/// # Panics
/// If an operand's length does not fit its shape.
pub fn linear(
    out: &mut [MaybeUninit<f32>],
    a: Input,
    m: usize,
    b: &PackedBf16,
    bias: &[f32],
    residual: Option<&[f32]>,
    threaded: bool,
) {
    let (k, n) = b.dims();
    check_linear(out, m, n, bias, residual);
    assert!(a.holds(m, k), "bf16 linear: input too short");
    #[cfg(target_arch = "x86_64")]
    if supported() && m > 0 && n > 0 && k > 0 {
        // SAFETY: the CPU has the instructions; the shapes were checked.
        unsafe {
            let rounded;
            let rows = match a {
                Input::F32(a) => {
                    rounded = x86::rounded_rows(a, m, k, threaded);
                    &rounded[..]
                }
                Input::Pairs(pairs) => pairs,
            };
            let start = start(bias, residual);
            x86::product(out.as_mut_ptr().cast(), rows, m, b, start, threaded)
        };
        return;
    }
    let c = start_values(out, bias, residual);
    matmul(c, &a.values(m, k), m, b, threaded);
}

/// The lengths [`linear`] needs: `out` (m, n), `bias` n, `residual` (m, n).
fn check_linear(
    out: &[MaybeUninit<f32>],
    m: usize,
    n: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
) {
    assert!(
        out.len() == m * n && bias.len() == n && residual.is_none_or(|r| r.len() == m * n),
        "bf16 linear: {} outputs, {} biases, {:?} residuals for ({m}, {n})",
        out.len(),
        bias.len(),
        residual.map(<[f32]>::len)
    );
}

/// `out` written with `bias` in every row plus `residual`, as the initialised floats they
/// now are (the start [`matmul`] adds onto where the kernel does not start from them itself).
fn start_values<'a>(
    out: &'a mut [MaybeUninit<f32>],
    bias: &[f32],
    residual: Option<&[f32]>,
) -> &'a mut [f32] {
    if !bias.is_empty() {
        super::vmath::fill_rows(out, bias, residual);
    }
    // SAFETY: `fill_rows` wrote every element (whole rows of `bias.len()`; with no columns,
    // there are no elements).
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The kernel's start for a bias and a residual.
#[cfg(target_arch = "x86_64")]
fn start(bias: &[f32], residual: Option<&[f32]>) -> x86::TileStart {
    x86::TileStart::Bias(
        bias.as_ptr(),
        residual.map_or(std::ptr::null(), <[f32]>::as_ptr),
    )
}

/// `act(bias + bf16(a) @ B)` per row, rounded to bf16 pairs for a next product ([`linear`]
/// on [`Input::Pairs`]): (m, n.div_ceil(2)) dwords. Each panel's block of rows is finished,
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
mod x86;

#[cfg(target_arch = "x86_64")]
mod emulation;

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
        packing_keeps_the_weights_of(n, k);
        // 2 panels of 5 pairs
        assert_eq!(
            PackedBf16::from_transposed(&values(&[n, k]), n, k).bytes(),
            2 * 5 * NR * 4
        );
        // several groups of 16 columns and of 16 pairs, partial ones, an even k
        packing_keeps_the_weights_of(130, 100);
        packing_keeps_the_weights_of(64, 64);
    }

    /// Each way of packing gives the same panels, and they hold every weight rounded.
    fn packing_keeps_the_weights_of(n: usize, k: usize) {
        let w = values(&[n, k]);
        let b = PackedBf16::from_transposed(&w, n, k);
        assert_eq!(b.dims(), (k, n));
        let u = b.unpacked();
        for j in 0..n {
            for i in 0..k {
                assert_eq!(u[i * n + j], bf16_to_f32(round_bf16(w[j * k + i])));
            }
        }
        // padding dwords (columns past n, the last pair's odd half) stay zero
        let pairs = k.div_ceil(2);
        for (d, &dword) in b.data.iter().enumerate() {
            let (panel, pair, col) = (d / (pairs * NR), d / NR % pairs, d % NR);
            if panel * NR + col >= n {
                assert_eq!(dword, 0, "column {} of {n}", panel * NR + col);
            } else if 2 * pair + 1 >= k {
                assert_eq!(dword >> 16, 0, "pair {pair} of {k} inputs");
            }
        }
        // the same from strided rows of w, and from the rows of B = w^T itself
        let strided: Vec<f32> = w
            .chunks(k)
            .flat_map(|r| r.iter().chain(&[7.0; 3]))
            .copied()
            .collect();
        let from_rows = PackedBf16::from_rows_of_transposed(n, k, |j| &strided[j * (k + 3)..]);
        assert_eq!((from_rows.dims(), &from_rows.data), ((k, n), &b.data));
        let w_t: Vec<f32> = (0..k)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| w[j * k + i])
            .collect();
        let from_b = PackedBf16::from_rows(k, n, |i| &w_t[i * n..]);
        assert_eq!((from_b.dims(), &from_b.data), ((k, n), &b.data));
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
    fn linear_writes_the_bias_residual_and_product_of_the_scalar_model() {
        // the kernel starts from the bias (and residual) at its first pass instead of a
        // prefilled output: the same values, bit for bit, every element written
        for (m, k, n) in [(1, 8, 16), (3, 601, 100), (13, 256, 130), (577, 96, 768)] {
            let (a, w) = (values(&[m, k]), values(&[n, k]));
            let b = PackedBf16::from_transposed(&w, n, k);
            let (bias, residual) = (values(&[n]), values(&[m, n]));
            for residual in [None, Some(&residual[..])] {
                let mut want: Vec<f32> = (0..m * n)
                    .map(|i| bias[i % n] + residual.map_or(0.0, |r| r[i]))
                    .collect();
                matmul_reference(&mut want, &a, m, &b);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let pairs = rounded_rows_reference(&a, m, k);
                // what the path without AVX512-BF16 multiplies: the pairs widened exactly
                let widened = Input::Pairs(&pairs).values(m, k);
                assert!(widened
                    .iter()
                    .zip(&a)
                    .all(|(w, &x)| *w == bf16_to_f32(round_bf16(x))));
                for threaded in [false, true] {
                    for input in [Input::F32(&a), Input::Pairs(&pairs)] {
                        // a garbage-filled output: every element must be written
                        let mut got = vec![MaybeUninit::new(f32::NAN); m * n];
                        linear(&mut got, input, m, &b, &bias, residual, threaded);
                        // SAFETY: initialised above
                        let got: Vec<f32> =
                            got.iter().map(|x| unsafe { x.assume_init() }).collect();
                        let case = format!(
                            "{m}x{k}x{n} {} residual {} threaded {threaded}",
                            matches!(input, Input::Pairs(_)),
                            residual.is_some()
                        );
                        assert_eq!(bits(&got), bits(&want), "linear {case}");
                    }
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
