//! The transformer-layer kernels the models share (the CLIP towers of OWL-ViT, OWLv2 and
//! CLIPSeg, and ViLT's encoder):
//!
//! - [`linear::FusedLinear`]: `x @ W^T + b` with its epilogue (activation, or residual) fused;
//! - [`mlp::FusedMlp`]: the MLP with its residual, in row blocks where its weights are small;
//! - [`attention::attention`]: multi-head self-attention from a fused q/k/v projection
//!   (`attention_long`: an online softmax on AVX-512 for long sequences and small heads);
//! - [`layer_norm::LayerNorm`]: `nn.LayerNorm`, one parallel pass;
//! - [`patch::PatchEmbedding`], [`patch::PatchExpansion`]: convolutions whose kernel is their
//!   stride (the ViT patch embedding, CLIPSeg's transposed head) as one matmul each;
//! - [`conv::WindowConv2d`]: a stride-1 padded convolution (CLIPSeg's head 3x3) as one matmul
//!   over gathered windows;
//! - [`Activation`]: the `hidden_act` values they implement.
//!
//! On the CPU in f32 these run our own loops around the `gemm` crate's matmul ([`gemm`]):
//! weights pre-transposed at load, bias and residual prefilled so the matmul accumulates onto
//! them, attention computed per (head, block of queries) with the scores kept in cache, and
//! vectorised `exp`/`erf` ([`vmath`]). f16/bf16 on the CPU run candle's matmul and in-place
//! epilogues; other devices run the same computation from candle ops.
//!
//! Which of the two a layer takes is fixed at load by its [`KernelPath`]: [`KernelPath::Native`]
//! (our CPU kernels wherever the device and dtype have one) or [`KernelPath::Generic`] (candle
//! ops on every device: the code a GPU runs, which the parity tests run on the CPU too).
//! [`KernelPath::NativeBf16`] is the native path with the linear layers' weights in bf16
//! ([`bf16_gemm`]: `vdpbf16ps`, AVX512-BF16), activations in f32.

pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod attention_long;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub mod bf16_gemm;
pub mod conv;
pub mod embedding;
pub mod gemm;
pub mod layer_norm;
pub mod linear;
pub mod mlp;
pub mod patch;
pub mod vmath;

pub use attention::{attention, attention_of_first, AttentionMask};
pub use conv::WindowConv2d;
pub use embedding::TokenEmbedding;
pub use layer_norm::{layer_norm, LayerNorm};
pub use linear::{Epilogue, FusedLinear};
pub use mlp::FusedMlp;
pub use patch::{PatchEmbedding, PatchExpansion};

use std::mem::MaybeUninit;

use candle_core::{bail, DType, Layout, Module, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Threads of the rayon pool the CPU kernels run on. (candle's `get_num_threads` reads
/// `/proc/cpuinfo` at every call, some 16 us, and counts physical cores where the pool has
/// one thread per logical CPU.)
pub(crate) fn pool_threads() -> usize {
    rayon::current_num_threads()
}

/// Tasks per pool thread the parallel kernels split their work into (load balance: the pool
/// evens them out when a core is slowed), where the work allows that many.
pub(crate) const TASKS_PER_THREAD: usize = 4;

/// `ACT2FN["quick_gelu"]`: `x * sigmoid(1.702 * x)`.
pub const QUICK_GELU_ALPHA: f32 = 1.702;

/// The `hidden_act` values of transformers' `ACT2FN` that the layers implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `gelu`: the exact (erf) GELU, `nn.functional.gelu`.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Maps transformers' `hidden_act`; anything else is refused, naming `model` and the
    /// config section `section`.
    pub fn from_hf(name: &str, model: &str, section: &str) -> crate::Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(crate::Error::Unsupported {
                model: model.to_string(),
                reason: format!(
                    "{section}: hidden_act `{other}` (supported: quick_gelu, gelu, gelu_new, \
                     gelu_pytorch_tanh, relu)"
                ),
            }),
        }
    }

    /// The activation of one value, computed in f32 (the half-precision CPU epilogues).
    #[inline(always)]
    pub fn apply_f32(self, x: f32) -> f32 {
        match self {
            Self::QuickGelu => x / (1.0 + vmath::exp(-QUICK_GELU_ALPHA * x)),
            Self::Gelu => 0.5 * x * (1.0 + vmath::erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Self::GeluTanh => {
                0.5 * x * (1.0 + vmath::tanh(0.797_884_6 * (x + 0.044_715 * x * x * x)))
            }
            Self::Relu => x.max(0.0),
        }
    }

    /// The activation over `xs` in place, vectorised (the f32 CPU epilogue).
    pub fn apply_slice(self, xs: &mut [f32]) {
        match self {
            Self::QuickGelu => vmath::x_sigmoid(xs, QUICK_GELU_ALPHA),
            Self::Gelu => vmath::gelu_erf(xs),
            Self::GeluTanh => vmath::gelu_tanh(xs),
            Self::Relu => vmath::relu(xs),
        }
    }
}

impl Module for Activation {
    /// The same activation from candle ops (devices and dtypes without a fused kernel).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * QUICK_GELU_ALPHA as f64)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::Relu => xs.relu(),
        }
    }
}

/// Which code a layer runs, chosen at load (`LoadOptions::kernels` in the pipeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelPath {
    /// The CPU kernels of this module where the device and dtype have one (f32, f16 and bf16
    /// on the CPU), candle ops elsewhere: what every user runs.
    #[default]
    Native,
    /// [`Self::Native`] with the weights of the linear layers ([`FusedLinear`], and so
    /// [`FusedMlp`]) rounded to bf16 and packed at load for [`bf16_gemm`] (the f32 copy
    /// dropped: half the memory), their inputs rounded to bf16 at each product and the products
    /// accumulated in f32; the token embedding tables kept in bf16 ([`TokenEmbedding`]); the
    /// two products of attention (`q k^T`, `p v`) on `vdpbf16ps` as well, in both kernels
    /// (short sequences on [`bf16_gemm`], long ones in [`attention_long`]'s bf16 tiles); the
    /// MLP's hidden layer rounded to bf16 in cache for its second product. Everything else -
    /// the tensors between layers (the residual stream), scores, biases, epilogues, LayerNorm,
    /// the softmax, the patch embedding - stays f32, and the model's dtype is f32: what
    /// `--dtype bf16` selects on a CPU with AVX512-BF16.
    NativeBf16,
    /// candle ops on every device and dtype: the path a GPU takes. On the CPU it exists for the
    /// tests, which check that path against the same references as the native one; it is no
    /// user-facing option.
    Generic,
}

impl KernelPath {
    /// Whether the CPU kernels here may run.
    pub fn native(self) -> bool {
        matches!(self, Self::Native | Self::NativeBf16)
    }

    /// Whether the CPU kernels here handle `t` on this path (f32 fully; f16/bf16 through
    /// candle's matmul and in-place epilogues).
    fn has_kernel(self, t: &Tensor) -> bool {
        self.native()
            && t.device().is_cpu()
            && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16)
    }

    /// `f` of a contiguous f32 CPU tensor's values on the native path, else `None` (the
    /// caller runs candle ops).
    fn cpu_f32<R>(self, t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        if self.native() {
            cpu_f32_slice(t, f)
        } else {
            None
        }
    }
}

/// The floats the in-place kernels take, computed in f32.
trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// The contiguous span of a storage that `layout` covers.
fn span<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: operand is not contiguous"),
    }
}

fn span_mut<'a, T>(data: &'a mut [T], layout: &Layout, op: &str) -> Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!("{op}: operand is not contiguous"),
    }
}

/// A contiguous f32 CPU tensor's values, or `None` (other device, dtype or layout).
fn cpu_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => Some(f(&data[start..end])),
        _ => None,
    }
}

/// A buffer of `len` values written by `fill`, not zero-filled first.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn written<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` elements (the caller's promise).
    unsafe { out.set_len(len) };
    out
}

/// A buffer of `len` floats written by `fill` in parallel: `fill(i, piece)` gets the `i`-th
/// `chunk`-long piece (the last may be shorter), not zero-filled first.
///
/// # Safety
/// `fill` must write every element of the piece it is given.
pub(crate) unsafe fn written_in_parallel(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    // SAFETY: the pieces cover `len`, and `fill` writes each of them whole (the caller's
    // promise).
    unsafe {
        written(len, |out| {
            out.par_chunks_mut(chunk.max(1))
                .enumerate()
                .for_each(|(i, piece)| fill(i, piece))
        })
    }
}

/// Each of `b` row-major (rows, cols) matrices in `x`, transposed: (b, cols, rows), in
/// parallel over blocks of output rows (candle's strided copy runs on one thread, element by
/// element). NCHW <-> channels-last for the convolutions.
pub(crate) fn transpose_items(x: &[f32], b: usize, rows: usize, cols: usize) -> Vec<f32> {
    /// Output rows per task.
    const ROWS_PER_TASK: usize = 256;
    // SAFETY: every piece is whole output rows, each written element by element.
    unsafe {
        written_in_parallel(b * rows * cols, ROWS_PER_TASK * rows, |task, dst| {
            let first = task * ROWS_PER_TASK; // over b * cols
            for (i, line) in dst.chunks_exact_mut(rows).enumerate() {
                let (item, col) = ((first + i) / cols, (first + i) % cols);
                let src = &x[item * rows * cols + col..];
                for (r, v) in line.iter_mut().enumerate() {
                    v.write(src[r * cols]);
                }
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// Largest absolute value (f32).
    pub(crate) fn max_abs(t: &Tensor) -> f32 {
        t.to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Largest absolute difference (f32), for the layers' tests.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
    }

    /// Largest absolute difference relative to the reference's largest magnitude (at least 1):
    /// f32 sums of many products round by an amount that grows with their size, and a CPU with
    /// other SIMD widths sums in another order.
    pub(crate) fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
        max_diff(got, want) / max_abs(want).max(1.0)
    }

    thread_local! {
        // Each test runs on a thread of its own, so each draws the same numbers on every run:
        // a tolerance that fails does so on every run, not one in a hundred.
        static RNG: std::cell::RefCell<rand::rngs::StdRng> =
            std::cell::RefCell::new(rand::SeedableRng::seed_from_u64(0x5eed));
    }

    /// Standard normal samples from the test thread's seeded generator.
    pub(crate) fn randn(shape: &[usize]) -> Tensor {
        use rand::Rng;
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = RNG.with(|rng| {
            let mut rng = rng.borrow_mut();
            (0..n)
                .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect()
        });
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn activations_match_candle_ops() {
        let xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.2).collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Relu,
        ] {
            let reference = act.forward(&t).unwrap().to_vec1::<f32>().unwrap();
            let mut vectorised = xs.clone();
            act.apply_slice(&mut vectorised);
            for ((x, r), v) in xs.iter().zip(&reference).zip(&vectorised) {
                let bound = 1e-6 * r.abs().max(1.0);
                assert!((act.apply_f32(*x) - r).abs() <= bound, "{act:?}({x})");
                assert!((v - r).abs() <= bound, "{act:?}({x}) vectorised");
            }
        }
    }

    #[test]
    fn unknown_activations_are_refused_by_name() {
        assert_eq!(
            Activation::from_hf("gelu_new", "m", "text_config").unwrap(),
            Activation::GeluTanh
        );
        let err = Activation::from_hf("mish", "m", "text_config").unwrap_err();
        assert!(err.to_string().contains("hidden_act `mish`"), "{err}");
    }
}
