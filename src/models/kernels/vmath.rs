//! The elementwise f32 math of the kernels, written so that LLVM vectorises it: a branch-free
//! `exp` and `erf`, and row loops kept in lane-wise arrays (no float reductions for the
//! compiler to refuse to reorder). [`multiversion!`] compiles each loop for AVX-512 and for
//! AVX2+FMA besides the baseline, and picks one at run time; the polynomials use fused
//! multiply-adds ([`MulAdd`]) where the variant has them.

use std::mem::MaybeUninit;

/// Defines `fn $name(args)` that runs `$body` compiled for the best of AVX-512, AVX2+FMA and
/// the build's baseline that the CPU has (detected at run time, cached by std). In `$body`,
/// `M` is the variant's [`MulAdd`] (fused where the variant has FMA).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::extra_unused_type_parameters)] // loops without a polynomial
            fn imp<M: MulAdd>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { imp::<Fused>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { imp::<Fused>($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `v4` was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp::<BaselineMulAdd>($($arg),*)
        }
    };
}

/// `a * b + c` as the polynomials compute it.
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding (an FMA instruction): half the operations and half the dependency chain of
/// [`Unfused`], which bounds the `exp` loops (their chains outlast the scheduler's window).
pub struct Fused;

/// Two roundings, where FMA would be a library call (x86-64 without it).
pub struct Unfused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// What code compiled for the build's baseline uses: FMA where that baseline has it
/// (aarch64, or x86-64 built with `fma`).
#[cfg(any(not(target_arch = "x86_64"), target_feature = "fma"))]
pub type BaselineMulAdd = Fused;
#[cfg(all(target_arch = "x86_64", not(target_feature = "fma")))]
pub type BaselineMulAdd = Unfused;

/// Lanes of the lane-wise accumulators: one AVX-512 register of f32.
pub(super) const LANES: usize = 16;

// Cephes' `expf`: exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln 2 / 2, ln 2 split in two
// parts so that `x - n ln 2` is exact, and a degree-5 polynomial for exp(r) (about 1 ulp).
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Inputs are clamped here: above, exp overflows f32; below, 2^n leaves the normal range
/// (the results there, under 1.2e-38, vanish next to any other term they are used with).
const EXP_MAX: f32 = 88.376_26;
const EXP_MIN: f32 = -87.336_54;
/// 1.5 * 2^23: adding it rounds an f32 of magnitude < 2^22 to an integer, kept in the low
/// mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// `e^x` in f32, branch-free (vectorisable); within 2 ulp of `f32::exp` on [-87, 88].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<BaselineMulAdd>(x)
}

/// [`exp`] with the multiply-adds of `M`.
#[inline(always)]
pub fn exp_with<M: MulAdd>(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let t = M::mul_add(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = M::mul_add(n, -LN2_LO, M::mul_add(n, -LN2_HI, x));
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = M::mul_add(p, r, c);
    }
    let y = M::mul_add(p, r * r, r) + 1.0;
    // 2^n from the integer in t's low mantissa bits
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    y * f32::from_bits(((n + 127) << 23) as u32)
}

/// `erf(x)`, branch-free: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, plus f32
/// rounding), the formula PyTorch's vectorised CPU `erf` uses too.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_with::<BaselineMulAdd>(x)
}

/// [`erf`] with the multiply-adds of `M`.
#[inline(always)]
pub fn erf_with<M: MulAdd>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        1.061_405_4,
        -1.453_152_1,
        1.421_413_7,
        -0.284_496_74,
        0.254_829_6,
    ];
    let ax = x.abs();
    let t = 1.0 / M::mul_add(P, ax, 1.0);
    let mut poly = A[0];
    for &c in &A[1..] {
        poly = M::mul_add(poly, t, c);
    }
    let y = 1.0 - poly * t * exp_with::<M>(-ax * ax);
    y.copysign(x)
}

/// `tanh(x)` = 1 - 2 / (e^{2x} + 1), branch-free.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    tanh_with::<BaselineMulAdd>(x)
}

/// [`tanh`] with the multiply-adds of `M`.
#[inline(always)]
pub fn tanh_with<M: MulAdd>(x: f32) -> f32 {
    1.0 - 2.0 / (exp_with::<M>(2.0 * x) + 1.0)
}

/// Softmax terms `e^(x - max)` below `e^-64` (1.6e-28) are set to 0: next to the largest
/// term (1) they are far below f32 precision, and divided by the sum they would become
/// subnormal floats, which the matmul that reads the probabilities then processes through
/// microcode assists (tens of times slower: peaked attention, as with random weights, spent
/// most of its time there).
const SOFTMAX_NEGLIGIBLE: f32 = -64.0;

/// Softmax of `row[..valid]` in place, zeros after it (keys a causal mask hides).
pub fn softmax_row(row: &mut [f32], valid: usize) {
    let valid = valid.min(row.len());
    let inv = 1.0 / exp_row(row, valid);
    scale(&mut row[..valid], inv);
}

multiversion! {
    /// `x * s` over `xs`, in place.
    pub fn scale(xs: &mut [f32], s: f32) {
        for x in xs.iter_mut() {
            *x *= s;
        }
    }
}

/// Independent running maxima of [`max_of`]: a compare-select has a few cycles of latency,
/// one chain through a single accumulator would wait on it every vector.
const MAX_CHAINS: usize = 4;

/// The largest of `xs` (-inf for none), vectorisable: compare-selects over lane-wise arrays
/// (`f32::max`'s NaN rule would add a blend per element; a NaN score makes the softmax NaN
/// through its exponential anyway).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [[f32::NEG_INFINITY; LANES]; MAX_CHAINS];
    let mut blocks = xs.chunks_exact(LANES * MAX_CHAINS);
    for block in &mut blocks {
        for (chain, c) in lanes.iter_mut().zip(block.chunks_exact(LANES)) {
            for (m, &x) in chain.iter_mut().zip(c) {
                *m = if x > *m { x } else { *m };
            }
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().flatten().chain(blocks.remainder()) {
        max = if x > max { x } else { max };
    }
    max
}

/// The numerators of a softmax: `row[j] = e^(row[j] - max)` over `row[..valid]` (max of that
/// span), zeros after it; returns their sum, the denominator.
pub fn exp_row(row: &mut [f32], valid: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { avx512::exp_row(row, valid) };
    }
    exp_row_portable(row, valid)
}

multiversion! {
    /// [`exp_row`] in the loops LLVM vectorises (CPUs without AVX-512, and the reference of
    /// the AVX-512 form's test).
    fn exp_row_portable(row: &mut [f32], valid: usize) -> f32 {
        let (seen, masked) = row.split_at_mut(valid.min(row.len()));
        let max = max_of(seen);
        let mut lanes = [0f32; LANES];
        let mut chunks = seen.chunks_exact_mut(LANES);
        let term = |x: f32| {
            let z = x - max;
            if z < SOFTMAX_NEGLIGIBLE {
                0.0
            } else {
                exp_with::<M>(z)
            }
        };
        for c in &mut chunks {
            for (s, x) in lanes.iter_mut().zip(c.iter_mut()) {
                *x = term(*x);
                *s += *x;
            }
        }
        let mut sum: f32 = lanes.iter().sum();
        for x in chunks.into_remainder() {
            *x = term(*x);
            sum += *x;
        }
        masked.fill(0.0);
        sum
    }
}

/// [`exp_row`] written in AVX-512 intrinsics. The vectorised loops spend most of a short row's
/// time outside the polynomial: the maximum ends in 64 dependent compare-selects plus one per
/// tail element, `2^n` is built from exponent bits after a clamp, the negligible terms take a
/// compare and blend, and the tail runs one score at a time. Here the maximum stays in
/// registers to one reduction, `vscalefps` scales by `2^n`, the negligible terms are a zeroing
/// mask on it, and masked loads and stores take the tail in the same loop. One core, paired in
/// one process, rows in L2: 229 keys (ViLT) 1.02 -> 0.32 ns a score, 485 (CLIPSeg) 0.64 ->
/// 0.26, 577 (OWL-ViT B/32) 0.48 -> 0.24, 2305 (B/16) 0.32 -> 0.25. Same range reduction and
/// polynomial as [`exp_with`]: the same values.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    #[cfg(doc)]
    use super::max_of;
    use super::{EXP_P, LANES, LN2_HI, LN2_LO, LOG2E, ROUND, SOFTMAX_NEGLIGIBLE};

    /// `e^z` per lane for the softmax's `z <= 0`: 0 below [`SOFTMAX_NEGLIGIBLE`], NaN for NaN.
    #[inline(always)]
    pub(in crate::models::kernels) unsafe fn softmax_term(z: __m512) -> __m512 {
        // not-less-than, unordered: a NaN score is kept, and makes the softmax NaN
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(z, _mm512_set1_ps(SOFTMAX_NEGLIGIBLE));
        let round = _mm512_set1_ps(ROUND);
        let n = _mm512_sub_ps(_mm512_fmadd_ps(z, _mm512_set1_ps(LOG2E), round), round);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), z);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(
            _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        _mm512_maskz_scalef_ps(keep, y, n)
    }

    /// The lanes of a mask for the `len - i` elements left at `i` (all 16 when as many are).
    #[inline(always)]
    fn tail_lanes(len: usize, i: usize) -> __mmask16 {
        if len - i >= LANES {
            !0
        } else {
            (1 << (len - i)) - 1
        }
    }

    /// [`max_of`] over `len` floats at `ptr`, in registers: four running maxima, the tail
    /// masked, one reduction (the portable form ends in 64 dependent compare-selects plus one
    /// per tail element: most of its time on rows of a few hundred keys). As there, a NaN is
    /// never the maximum.
    #[inline(always)]
    unsafe fn row_max(ptr: *const f32, len: usize) -> f32 {
        let mut maxima = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let mut i = 0;
        while i + 4 * LANES <= len {
            for (k, m) in maxima.iter_mut().enumerate() {
                // `max(x, m)` returns `m` when `x` is NaN
                // SAFETY: `i + (k + 1) * LANES <= len`.
                *m = _mm512_max_ps(_mm512_loadu_ps(ptr.add(i + k * LANES)), *m);
            }
            i += 4 * LANES;
        }
        while i < len {
            let lanes = tail_lanes(len, i);
            // SAFETY: the mask covers the lanes below `len` alone.
            let x = _mm512_maskz_loadu_ps(lanes, ptr.add(i));
            maxima[0] = _mm512_mask_max_ps(maxima[0], lanes, x, maxima[0]);
            i += LANES;
        }
        _mm512_reduce_max_ps(_mm512_max_ps(
            _mm512_max_ps(maxima[0], maxima[1]),
            _mm512_max_ps(maxima[2], maxima[3]),
        ))
    }

    /// [`super::exp_row`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_row(row: &mut [f32], valid: usize) -> f32 {
        let (seen, masked) = row.split_at_mut(valid.min(row.len()));
        let len = seen.len();
        let ptr = seen.as_mut_ptr();
        let max = _mm512_set1_ps(row_max(ptr, len));
        // two vectors a step, two sums: the polynomial is one long chain per vector
        let mut sums = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i + 2 * LANES <= len {
            for (k, sum) in sums.iter_mut().enumerate() {
                // SAFETY: `i + (k + 1) * LANES <= len`: in `seen`.
                let p = ptr.add(i + k * LANES);
                let y = softmax_term(_mm512_sub_ps(_mm512_loadu_ps(p), max));
                _mm512_storeu_ps(p, y);
                *sum = _mm512_add_ps(*sum, y);
            }
            i += 2 * LANES;
        }
        while i < len {
            let lanes = tail_lanes(len, i);
            // SAFETY: the mask covers the lanes below `len` alone.
            let p = ptr.add(i);
            let y = softmax_term(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, p), max));
            _mm512_mask_storeu_ps(p, lanes, y);
            sums[0] = _mm512_add_ps(sums[0], _mm512_maskz_mov_ps(lanes, y));
            i += LANES;
        }
        masked.fill(0.0);
        _mm512_reduce_add_ps(_mm512_add_ps(sums[0], sums[1]))
    }
}

multiversion! {
    /// `row[j] += bias[j]` (an additive attention mask on one query's scores).
    pub fn add_row(row: &mut [f32], bias: &[f32]) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

multiversion! {
    /// `y += a * x`.
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = M::mul_add(a, x, *y);
        }
    }
}

multiversion! {
    /// Writes `bias` into each `cols`-wide row of `dst`, plus the same row of `residual` if
    /// given (the start value a matmul then accumulates into); `dst` need not be initialised.
    pub fn fill_rows(dst: &mut [MaybeUninit<f32>], bias: &[f32], residual: Option<&[f32]>) {
        let cols = bias.len();
        match residual {
            Some(residual) => {
                for (row, res) in dst.chunks_exact_mut(cols).zip(residual.chunks_exact(cols)) {
                    for ((x, &b), &r) in row.iter_mut().zip(bias).zip(res) {
                        x.write(b + r);
                    }
                }
            }
            None => {
                for row in dst.chunks_exact_mut(cols) {
                    for (x, &b) in row.iter_mut().zip(bias) {
                        x.write(b);
                    }
                }
            }
        }
    }
}

multiversion! {
    /// `x * sigmoid(alpha * x)` over `xs`, in place (quick GELU, SiLU).
    pub fn x_sigmoid(xs: &mut [f32], alpha: f32) {
        for x in xs.iter_mut() {
            *x /= 1.0 + exp_with::<M>(-alpha * *x);
        }
    }
}

multiversion! {
    /// The exact (erf) GELU over `xs`, in place.
    pub fn gelu_erf(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = 0.5 * *x * (1.0 + erf_with::<M>(*x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    /// The tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`) over `xs`, in place.
    pub fn gelu_tanh(xs: &mut [f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for x in xs.iter_mut() {
            let v = *x;
            *x = 0.5 * v * (1.0 + tanh_with::<M>(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v)));
        }
    }
}

/// The sum of `xs` in lane-wise partial sums (vectorisable; summed in a different order than
/// one running total, as PyTorch's own reductions are).
#[inline(always)]
fn sum_of(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += f(x);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|&x| f(x)).sum::<f32>()
}

multiversion! {
    /// `nn.LayerNorm` of each `weight.len()`-wide row of `src` into the same row of `dst`
    /// (which need not be initialised): `(x - mean) / sqrt(var + eps) * weight + bias`, with
    /// the biased variance taken from the centred values (PyTorch's; `E[x^2] - mean^2` loses
    /// digits when the mean is large against the spread). Two passes over a row in cache.
    pub fn layer_norm_rows(
        dst: &mut [MaybeUninit<f32>],
        src: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32,
    ) {
        let d = weight.len();
        for (out, x) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
            let mean = sum_of(x, |v| v) / d as f32;
            let var = sum_of(x, |v| (v - mean) * (v - mean)) / d as f32;
            let inv_std = 1.0 / (var + eps).sqrt();
            for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
                o.write(M::mul_add((v - mean) * inv_std, w, b));
            }
        }
    }
}

multiversion! {
    /// `max(x, 0)` over `xs`, in place.
    pub fn relu(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = x.max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32 - b.to_bits() as i32).unsigned_abs()
    }

    fn exp_within_two_ulp<M: MulAdd>() {
        let exp = exp_with::<M>;
        let mut worst = 0;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (ours, std) = (exp(x), x.exp());
            worst = worst.max(ulps(ours, std));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        // clamped, finite, and negligible far below
        assert!(exp(-1e30) < 1.2e-38 && exp(f32::MIN) >= 0.0);
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        // the vectorised loops' fused form and the two-rounding form (same bound; the fused
        // one is `f32::mul_add`, a library call where the test machine lacks FMA: slow, exact)
        exp_within_two_ulp::<Fused>();
        exp_within_two_ulp::<Unfused>();
        assert_eq!(exp(1.5), exp_with::<BaselineMulAdd>(1.5));
    }

    fn erf_and_tanh_close<M: MulAdd>() {
        for i in -600..=600 {
            let x = i as f32 * 0.01;
            let reference = candle_core::cpu::erf::erf_f64(x as f64) as f32;
            assert!((erf_with::<M>(x) - reference).abs() < 4e-7, "erf({x})");
            assert!((tanh_with::<M>(x) - x.tanh()).abs() < 3e-7, "tanh({x})");
        }
    }

    #[test]
    fn erf_and_tanh_match_reference_values() {
        erf_and_tanh_close::<Fused>();
        erf_and_tanh_close::<Unfused>();
    }

    #[test]
    fn exp_row_forms_agree() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // lengths around the 16- and 32-lane steps, masked tails, negligible terms
            for n in [1usize, 15, 16, 17, 31, 32, 33, 577] {
                let row: Vec<f32> = (0..n)
                    .map(|i| ((i * 37 % 23) as f32 - 11.0) * 7.0)
                    .collect();
                for valid in [1, n.div_ceil(2), n] {
                    let (mut ours, mut portable) = (row.clone(), row.clone());
                    // SAFETY: the CPU has AVX-512F (checked above).
                    let sum = unsafe { avx512::exp_row(&mut ours, valid) };
                    let want = exp_row_portable(&mut portable, valid);
                    // the same terms; the sums differ in their order of addition only
                    assert_eq!(ours, portable, "{n} {valid}");
                    assert!(
                        (sum - want).abs() <= 1e-6 * want,
                        "{n} {valid}: {sum} {want}"
                    );
                }
            }
            let mut row = vec![0f32, f32::NAN, -1.0];
            assert!(unsafe { avx512::exp_row(&mut row, 3) }.is_nan());
        }
    }

    #[test]
    fn softmax_row_matches_the_plain_formula() {
        for n in [1usize, 7, 16, 33, 577] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 1.3).collect();
            for valid in [1, n.div_ceil(2), n] {
                let mut ours = row.clone();
                softmax_row(&mut ours, valid);
                let max = row[..valid].iter().cloned().fold(f32::MIN, f32::max);
                let sum: f64 = row[..valid].iter().map(|&x| ((x - max) as f64).exp()).sum();
                for (j, &p) in ours.iter().enumerate() {
                    let want = if j < valid {
                        (((row[j] - max) as f64).exp() / sum) as f32
                    } else {
                        0.0
                    };
                    assert!((p - want).abs() <= 2e-7 * want.max(1e-3), "{n} {valid} {j}");
                }
            }
        }
        // a peaked row: the negligible terms are exact zeros, never subnormal
        let mut row = vec![0f32, -70.0, -90.0, -200.0, f32::MIN];
        softmax_row(&mut row, 5);
        assert_eq!(row, [1.0, 0.0, 0.0, 0.0, 0.0]);
        let mut row = vec![0f32, -20.0];
        softmax_row(&mut row, 2);
        assert!(row[1] > 2e-9 && row[1].is_normal());
    }
}
