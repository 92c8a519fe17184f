//! [`FusedLinear`]: `nn.Linear` (with bias) and what follows it, in one pass where the device
//! allows:
//!
//! - f32 on the CPU: the output is prefilled with the bias (plus the residual) and the `gemm`
//!   crate accumulates `x @ W^T` onto it, reading `W^T` transposed once at load; with an
//!   activation, the product is written first and the bias and the activation follow in one
//!   vectorised pass, row by row in cache; a linear fed by a LayerNorm that writes a column of
//!   ones after its output ([`FusedLinear::with_bias_row`], [`FusedLinear::forward_normed`])
//!   takes the bias as one more row of `W^T`, in the product itself;
//! - bf16 weights ([`KernelPath::NativeBf16`]: f32 tensors, `--dtype bf16` on a CPU): the
//!   weights rounded to bf16 and packed at load (the f32 copy dropped), the input rounded to
//!   bf16 at the product, [`bf16_gemm::matmul`] accumulating in f32 onto the f32 bias (plus
//!   residual), the activation in f32 after; no bias row (the bias stays f32);
//! - f16/bf16 on the CPU: candle's matmul, then bias (+ activation, or + residual) in one
//!   in-place pass;
//! - other devices, and the [`KernelPath::Generic`] path: the same from candle ops
//!   (`broadcast_add`, [`Activation`]'s module).

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Module, Result, Tensor,
};
use rayon::prelude::*;

use std::sync::Arc;

use super::bf16_gemm::{self, Input, PackedBf16};
use super::gemm::{matmul, product, MatRef};
use super::{
    cpu_f32_slice, span, span_mut, vmath, written, Activation, Elem, KernelPath, LayerNorm,
    TASKS_PER_THREAD,
};
use crate::models::ModelVars;

/// What follows the matmul of a [`FusedLinear`], in the same pass as its bias.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `x @ W^T + b`
    Bias,
    /// `act(x @ W^T + b)`
    Activation(Activation),
    /// `x @ W^T + b + residual` (the residual has the output's shape)
    Residual(&'a Tensor),
}

impl Epilogue<'_> {
    /// `act` after the bias, or the bias alone.
    pub fn activation_or_bias(act: Option<Activation>) -> Self {
        act.map_or(Self::Bias, Self::Activation)
    }
}

/// Elements per rayon task of the activation pass (enough to amortise the task).
const ACTIVATION_CHUNK: usize = 1 << 14;

/// Inputs of at most this many rows (a pooled vector, a classifier's input) take
/// [`few_rows_product`]: a matmul of them is a pass over the weights, bound by memory.
const FEW_ROWS: usize = 4;
/// ... whose weight rows it splits into tasks of at least this many.
const FEW_ROWS_TASK: usize = 64;

/// `x @ w` for an `x` of a few rows, (rows, k) x (k, n), as weighted sums of `w`'s rows: the
/// tasks stream disjoint, contiguous spans of `w` (whose rows a column-split matmul would
/// read in short strided pieces) into partial sums, added up at the end.
fn few_rows_product(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    let tasks = (k / FEW_ROWS_TASK).clamp(1, TASKS_PER_THREAD * super::pool_threads());
    let partials: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let mut acc = vec![0f32; rows * n];
            for i in task * k / tasks..(task + 1) * k / tasks {
                let w_row = &w[i * n..(i + 1) * n];
                for (r, acc) in acc.chunks_exact_mut(n).enumerate() {
                    vmath::axpy(acc, x[r * k + i], w_row);
                }
            }
            acc
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0f32; rows * n]);
    for partial in partials {
        vmath::add_row(&mut sum, &partial);
    }
    sum
}

/// `act(lhs @ rhs + bias)` as a fresh row-major buffer, threaded: the bias goes in with the
/// activation, row by row in cache, rather than through a pass of its own before the product.
pub(super) fn product_bias_activation(
    lhs: MatRef,
    rhs: MatRef,
    bias: &[f32],
    act: Activation,
) -> Vec<f32> {
    let out_dim = rhs.cols;
    let mut ys = product(lhs, rhs);
    let chunk = ACTIVATION_CHUNK.div_ceil(out_dim) * out_dim;
    ys.par_chunks_mut(chunk).for_each(|rows| {
        for row in rows.chunks_exact_mut(out_dim) {
            vmath::add_row(row, bias);
            act.apply_slice(row);
        }
    });
    ys
}

/// A (rows, bias.len()) row-major buffer holding `bias` in every row, plus `residual`'s row
/// if given: the start value a matmul accumulates onto (written once, never zero-filled first).
/// `threaded`: filled by the rayon pool.
pub(super) fn prefilled(
    rows: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    threaded: bool,
) -> Vec<f32> {
    let len = rows * bias.len();
    assert!(
        residual.is_none_or(|r| r.len() == len),
        "prefilled: residual of {} values for {rows} rows of {}",
        residual.map_or(0, <[f32]>::len),
        bias.len()
    );
    if len == 0 {
        return Vec::new();
    }
    let chunk = ACTIVATION_CHUNK.div_ceil(bias.len()) * bias.len();
    // SAFETY: `fill_rows` writes every element: `len` is whole rows of `bias.len()`, and the
    // chunks are whole rows too.
    unsafe {
        written(len, |dst| match (residual, threaded) {
            (Some(r), true) => dst
                .par_chunks_mut(chunk)
                .zip(r.par_chunks(chunk))
                .for_each(|(d, r)| vmath::fill_rows(d, bias, Some(r))),
            (None, true) => dst
                .par_chunks_mut(chunk)
                .for_each(|d| vmath::fill_rows(d, bias, None)),
            (residual, false) => vmath::fill_rows(dst, bias, residual),
        })
    }
}

/// The weights of a [`FusedLinear`].
#[derive(Debug, Clone)]
enum Weights {
    /// `weight^T`: (in, out), contiguous (the matmul reads it row by row); with `bias_row`,
    /// (in + 1, out), the bias as its last row.
    Dense(Tensor),
    /// [`KernelPath::NativeBf16`]: `weight^T` rounded to bf16 and packed for
    /// [`bf16_gemm::matmul`]; the f32 copy is dropped at load.
    Bf16(Arc<PackedBf16>),
}

/// An `nn.Linear` with bias whose output gets an [`Epilogue`].
#[derive(Debug, Clone)]
pub struct FusedLinear {
    weights: Weights,
    /// (out,)
    bias: Tensor,
    /// Whether `weight_t` ends with the bias ([`Self::with_bias_row`]).
    bias_row: bool,
    kernels: KernelPath,
}

impl FusedLinear {
    /// From the checkpoint's `weight` (out, in) and `bias` (out,), run on `kernels`.
    pub fn new(weight: Tensor, bias: Tensor, kernels: KernelPath) -> Result<Self> {
        let (out_dim, _) = weight.dims2()?;
        if bias.dims() != [out_dim] {
            bail!(
                "linear bias {:?} does not match weight {:?}",
                bias.dims(),
                weight.dims()
            );
        }
        let weights = if kernels == KernelPath::NativeBf16
            && weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && bias.dtype() == DType::F32
        {
            let (out_dim, in_dim) = weight.dims2()?;
            let weight = weight.contiguous()?;
            let packed =
                cpu_f32_slice(&weight, |w| PackedBf16::from_transposed(w, out_dim, in_dim));
            match packed {
                Some(p) => Weights::Bf16(Arc::new(p)),
                None => bail!("linear: bf16 packing needs a contiguous f32 weight"),
            }
        } else {
            Weights::Dense(weight.t()?.contiguous()?)
        };
        Ok(Self {
            weights,
            bias,
            bias_row: false,
            kernels,
        })
    }

    /// Whether the weights are packed in bf16 ([`KernelPath::NativeBf16`]).
    pub fn is_bf16(&self) -> bool {
        matches!(self.weights, Weights::Bf16(_))
    }

    /// The same linear with the bias appended to `weight^T` as one more row, where the f32 CPU
    /// kernels run (elsewhere unchanged), for [`Self::forward_normed`]: an input whose last
    /// column is ones then takes the bias in the product itself, with no output prefilled with
    /// the bias to accumulate onto - 4-5% of a q/k/v projection (BENCHMARKS.md).
    /// (bf16 weights keep the bias in f32, apart: no bias row.)
    pub fn with_bias_row(self) -> Result<Self> {
        let Weights::Dense(weight_t) = &self.weights else {
            return Ok(self);
        };
        if self.bias_row
            || !self.kernels.native()
            || !weight_t.device().is_cpu()
            || weight_t.dtype() != DType::F32
        {
            return Ok(self);
        }
        let weight_t = Tensor::cat(&[weight_t, &self.bias.unsqueeze(0)?], 0)?;
        Ok(Self {
            weights: Weights::Dense(weight_t),
            bias_row: true,
            ..self
        })
    }

    /// An input of `in_dim` features is what the layer takes (the f32 kernels read the weights
    /// by the input's width).
    fn check_input(&self, in_dim: usize) -> Result<()> {
        let (want, _) = self.dims();
        if in_dim != want {
            bail!("linear: the input has {in_dim} features, the layer takes {want}");
        }
        Ok(())
    }

    /// `weight^T` without the bias row: (in, out). bf16 weights: unpacked to f32 for the
    /// call (the candle path, which an f32 CPU input never takes).
    fn weight_t(&self) -> Result<Tensor> {
        let (in_dim, out_dim) = self.dims();
        match &self.weights {
            Weights::Dense(w) => w.narrow(0, 0, in_dim),
            Weights::Bf16(p) => Tensor::from_vec(p.unpacked(), (in_dim, out_dim), &Device::Cpu),
        }
    }

    /// Reads `weight` (out, in) and `bias` (out,) under `vb`, as `nn.Linear(in, out)`.
    pub fn load(in_dim: usize, out_dim: usize, vb: ModelVars) -> Result<Self> {
        Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            vb.get(out_dim, "bias")?,
            vb.kernels(),
        )
    }

    /// An attention's `q`, `k` and `v` projections (`d` -> `d` each, read under `vb.pp(name)`
    /// for the three `names`) stacked into one (3d, d) linear, with q's rows scaled by
    /// `head_dim^-0.5`: transformers scales the scores `q k^T` by it, the product is the same.
    /// Without `bias` in the checkpoint the biases are zeros.
    pub fn load_qkv(
        vb: ModelVars,
        names: [&str; 3],
        d: usize,
        head_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let scale = (head_dim as f64).powf(-0.5);
        let mut weights = Vec::with_capacity(3);
        let mut biases = Vec::with_capacity(3);
        for (i, name) in names.into_iter().enumerate() {
            let vb = vb.pp(name);
            let (mut w, mut b) = (
                vb.get((d, d), "weight")?,
                if bias {
                    vb.get(d, "bias")?
                } else {
                    Tensor::zeros(d, vb.dtype(), vb.device())?
                },
            );
            if i == 0 {
                (w, b) = ((w * scale)?, (b * scale)?);
            }
            weights.push(w);
            biases.push(b);
        }
        Self::new(
            Tensor::cat(&weights, 0)?,
            Tensor::cat(&biases, 0)?,
            vb.kernels(),
        )
    }

    /// The path this layer runs.
    pub fn kernels(&self) -> KernelPath {
        self.kernels
    }

    /// `(in, out)`.
    pub fn dims(&self) -> (usize, usize) {
        match &self.weights {
            Weights::Dense(w) => {
                let (rows, out_dim) = w.dims2().unwrap_or_default();
                (rows - usize::from(self.bias_row), out_dim)
            }
            Weights::Bf16(p) => p.dims(),
        }
    }

    /// `f(weight^T (in, out) row-major, bias)` when both are contiguous f32 CPU tensors on the
    /// native path (the weights may go on with the bias row: `f` reads the first `in` rows).
    /// `None` for bf16 weights.
    pub(super) fn with_f32<R>(&self, f: impl FnOnce(&[f32], &[f32]) -> R) -> Option<R> {
        let Weights::Dense(w) = &self.weights else {
            return None;
        };
        self.kernels
            .cpu_f32(w, |w| cpu_f32_slice(&self.bias, |b| f(w, b)))
            .flatten()
    }

    /// `f(weights packed in bf16, bias)` for bf16 weights ([`KernelPath::NativeBf16`]) with
    /// an f32 CPU bias, as [`Self::with_f32`] for f32 weights (the kernels that chain two
    /// products, [`super::FusedMlp`]). `None` for f32 weights.
    pub(super) fn with_bf16<R>(&self, f: impl FnOnce(&PackedBf16, &[f32]) -> R) -> Option<R> {
        let Weights::Bf16(packed) = &self.weights else {
            return None;
        };
        cpu_f32_slice(&self.bias, |b| f(packed, b))
    }

    /// (.., in) -> (.., out)
    pub fn forward(&self, xs: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        let in_dim = dims.pop().unwrap_or(1);
        self.check_input(in_dim)?;
        let rows = dims.iter().product::<usize>();
        let out_dim = self.bias.dim(0)?;
        dims.push(out_dim);
        let xs = xs.contiguous()?.reshape((rows, in_dim))?;
        if let Some(ys) = self.forward_bf16_cpu(&xs, epilogue, &dims)? {
            return Tensor::from_vec(ys, dims, &Device::Cpu);
        }
        if let Some(ys) = self.forward_f32_cpu(&xs, epilogue, &dims)? {
            return Tensor::from_vec(ys, dims, &Device::Cpu);
        }
        // (rows, in) x (in, out): a fresh (rows, out) tensor owned here alone.
        let ys = xs.matmul(&self.weight_t()?)?;
        let fused = self.kernels.has_kernel(&ys)
            && self.bias.dtype() == ys.dtype()
            && self.bias.is_contiguous()
            && match epilogue {
                Epilogue::Residual(r) => {
                    r.dtype() == ys.dtype() && r.is_contiguous() && r.dims() == dims.as_slice()
                }
                _ => true,
            };
        if fused {
            match epilogue {
                Epilogue::Bias => ys.inplace_op2(&self.bias, &BiasAct(None))?,
                Epilogue::Activation(act) => ys.inplace_op2(&self.bias, &BiasAct(Some(act)))?,
                Epilogue::Residual(r) => ys.inplace_op3(&self.bias, r, &BiasResidual)?,
            }
            return ys.reshape(dims);
        }
        let ys = ys.broadcast_add(&self.bias)?.reshape(dims)?;
        match epilogue {
            Epilogue::Bias => Ok(ys),
            Epilogue::Activation(act) => act.forward(&ys),
            Epilogue::Residual(r) => ys + r,
        }
    }

    /// `norm(xs) @ W^T + b` ([`Epilogue::Bias`]) for the layer's input `xs`: with the bias row,
    /// where the f32 CPU kernels run, `norm` writes its output with a column of ones and the
    /// bias is taken in the product ([`Self::forward_with_ones`]); elsewhere `norm`, then
    /// [`Self::forward`].
    pub fn forward_normed(&self, norm: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
        if self.bias_row {
            if let Some(with_ones) = norm.forward_with_ones(xs)? {
                if let Some(ys) = self.forward_with_ones(&with_ones)? {
                    return Ok(ys);
                }
            }
        }
        self.forward(&norm.forward(xs)?, Epilogue::Bias)
    }

    /// `xs @ W^T + b` for `xs_with_ones` (.., in + 1), `xs` with a last column of ones
    /// ([`LayerNorm::forward_with_ones`]): one product with the bias row. `None` where that
    /// does not apply (no bias row, or not a contiguous f32 CPU input of that width).
    fn forward_with_ones(&self, xs_with_ones: &Tensor) -> Result<Option<Tensor>> {
        let (in_dim, out_dim) = self.dims();
        let mut dims = xs_with_ones.dims().to_vec();
        if !self.bias_row || dims.pop() != Some(in_dim + 1) {
            return Ok(None);
        }
        let rows = dims.iter().product::<usize>();
        dims.push(out_dim);
        let Weights::Dense(weight_t) = &self.weights else {
            return Ok(None);
        };
        let ys = cpu_f32_slice(xs_with_ones, |x| {
            cpu_f32_slice(weight_t, |w| {
                product(
                    MatRef::row_major(x, rows, in_dim + 1),
                    MatRef::row_major(w, in_dim + 1, out_dim),
                )
            })
        })
        .flatten();
        ys.map(|ys| Tensor::from_vec(ys, dims, &Device::Cpu))
            .transpose()
    }

    /// [`Self::forward`] with [`Epilogue::Bias`], except that the first `columns` outputs are
    /// computed for the rows of the first `rows` positions of dimension 1 alone; at the other
    /// rows those columns hold the bias only. (b, t, in) -> (b, t, out). A fused q/k/v
    /// projection whose attention reads the queries of the first tokens only needs no more.
    /// Devices and dtypes without the f32 CPU path compute every column.
    pub fn forward_first_columns(
        &self,
        xs: &Tensor,
        columns: usize,
        rows: usize,
    ) -> Result<Tensor> {
        let (b, t, in_dim) = xs.dims3()?;
        self.check_input(in_dim)?;
        let out_dim = self.bias.dim(0)?;
        if columns > out_dim || rows > t {
            bail!(
                "linear: the first {columns} of {out_dim} columns for the first {rows} of {t} rows"
            );
        }
        let xs = xs.contiguous()?;
        let computed = cpu_f32_slice(&xs, |x| {
            self.with_f32(|w, bias| {
                let mut ys = prefilled(b * t, bias, None, true);
                let lhs = |first: usize, count: usize| {
                    MatRef::row_major(&x[first * in_dim..], count, in_dim)
                };
                let rhs = |from: usize, to: usize| MatRef {
                    data: &w[from..],
                    rows: in_dim,
                    cols: to - from,
                    row_stride: out_dim,
                    col_stride: 1,
                };
                // the other columns for every row, in one product
                matmul(
                    &mut ys[columns..],
                    out_dim,
                    lhs(0, b * t),
                    rhs(columns, out_dim),
                    true,
                    true,
                );
                for item in 0..b {
                    matmul(
                        &mut ys[item * t * out_dim..],
                        out_dim,
                        lhs(item * t, rows),
                        rhs(0, columns),
                        true,
                        true,
                    );
                }
                ys
            })
        })
        .flatten();
        match computed {
            Some(ys) => Tensor::from_vec(ys, (b, t, out_dim), &Device::Cpu),
            None => self.forward(&xs, Epilogue::Bias),
        }
    }

    /// The bf16-weights path ([`KernelPath::NativeBf16`]): `xs` (rows, in), contiguous f32 on
    /// the CPU, rounded to bf16 at the product's input; the product accumulated in f32 onto
    /// the f32 bias (plus the residual) by [`bf16_gemm::linear`]; the activation in f32 after.
    /// `None` for f32 weights or an input that is not a contiguous f32 CPU tensor.
    fn forward_bf16_cpu(
        &self,
        xs: &Tensor,
        epilogue: Epilogue,
        out_dims: &[usize],
    ) -> Result<Option<Vec<f32>>> {
        let Weights::Bf16(packed) = &self.weights else {
            return Ok(None);
        };
        let (rows, _) = xs.dims2()?;
        let out_dim = self.bias.dim(0)?;
        let run = |x: &[f32], b: &[f32], residual: Option<&[f32]>| {
            // SAFETY: `linear` writes every element of its output.
            let mut ys = unsafe {
                written(rows * out_dim, |ys| {
                    bf16_gemm::linear(ys, Input::F32(x), rows, packed, b, residual, true)
                })
            };
            if let Epilogue::Activation(act) = epilogue {
                let chunk = ACTIVATION_CHUNK.div_ceil(out_dim) * out_dim;
                ys.par_chunks_mut(chunk).for_each(|y| act.apply_slice(y));
            }
            ys
        };
        let with_input = |residual: Option<&[f32]>| {
            cpu_f32_slice(xs, |x| cpu_f32_slice(&self.bias, |b| run(x, b, residual))).flatten()
        };
        Ok(match epilogue {
            Epilogue::Residual(r) => {
                if r.dims() != out_dims {
                    bail!(
                        "residual {:?} does not match the output {out_dims:?}",
                        r.dims()
                    );
                }
                let r = r.contiguous()?;
                cpu_f32_slice(&r, |r| with_input(Some(r))).flatten()
            }
            _ => with_input(None),
        })
    }

    /// The f32 CPU path: `xs` is (rows, in), contiguous. `None` when an operand is not a
    /// contiguous f32 CPU tensor (the caller takes the candle path).
    fn forward_f32_cpu(
        &self,
        xs: &Tensor,
        epilogue: Epilogue,
        out_dims: &[usize],
    ) -> Result<Option<Vec<f32>>> {
        let (rows, in_dim) = xs.dims2()?;
        let out_dim = self.bias.dim(0)?;
        let run = |x: &[f32], w: &[f32], b: &[f32], residual: Option<&[f32]>| {
            if rows <= FEW_ROWS {
                let mut ys = few_rows_product(x, w, rows, in_dim, out_dim);
                for (i, y) in ys.chunks_exact_mut(out_dim).enumerate() {
                    vmath::add_row(y, b);
                    if let Some(r) = residual {
                        vmath::add_row(y, &r[i * out_dim..(i + 1) * out_dim]);
                    }
                    if let Epilogue::Activation(act) = epilogue {
                        act.apply_slice(y);
                    }
                }
                return ys;
            }
            let lhs = MatRef::row_major(x, rows, in_dim);
            let rhs = MatRef::row_major(w, in_dim, out_dim);
            if let Epilogue::Activation(act) = epilogue {
                return product_bias_activation(lhs, rhs, b, act);
            }
            let mut ys = prefilled(rows, b, residual, true);
            matmul(&mut ys, out_dim, lhs, rhs, true, true);
            ys
        };
        let with_weights = |residual: Option<&[f32]>| {
            cpu_f32_slice(xs, |x| self.with_f32(|w, b| run(x, w, b, residual))).flatten()
        };
        Ok(match epilogue {
            Epilogue::Residual(r) => {
                if r.dims() != out_dims {
                    bail!(
                        "residual {:?} does not match the output {out_dims:?}",
                        r.dims()
                    );
                }
                cpu_f32_slice(r, |r| with_weights(Some(r))).flatten()
            }
            _ => with_weights(None),
        })
    }
}

/// `dst = act(dst + bias)` per row.
struct BiasAct(Option<Activation>);

impl BiasAct {
    fn run<T: Elem>(&self, dst: &mut [T], bias: &[T]) {
        let act = self.0;
        dst.par_chunks_mut(bias.len()).for_each(|row| {
            for (x, &b) in row.iter_mut().zip(bias) {
                let v = x.to_f32() + b.to_f32();
                *x = T::from_f32(match act {
                    Some(act) => act.apply_f32(v),
                    None => v,
                });
            }
        });
    }
}

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "linear-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let op = InplaceOp2::name(self);
        match (s1, s2) {
            (CpuStorage::F32(d), CpuStorage::F32(b)) => {
                self.run(span_mut(d, l1, op)?, span(b, l2, op)?)
            }
            (CpuStorage::F16(d), CpuStorage::F16(b)) => {
                self.run(span_mut(d, l1, op)?, span(b, l2, op)?)
            }
            (CpuStorage::BF16(d), CpuStorage::BF16(b)) => {
                self.run(span_mut(d, l1, op)?, span(b, l2, op)?)
            }
            (d, b) => bail!("{op}: unsupported dtypes {:?}, {:?}", d.dtype(), b.dtype()),
        }
        Ok(())
    }
}

/// `dst = dst + bias + residual` per row.
struct BiasResidual;

impl BiasResidual {
    fn run<T: Elem>(dst: &mut [T], bias: &[T], residual: &[T]) {
        let cols = bias.len();
        dst.par_chunks_mut(cols)
            .zip(residual.par_chunks(cols))
            .for_each(|(row, res)| {
                for ((x, &b), &r) in row.iter_mut().zip(bias).zip(res) {
                    *x = T::from_f32(x.to_f32() + b.to_f32() + r.to_f32());
                }
            });
    }
}

impl InplaceOp3 for BiasResidual {
    fn name(&self) -> &'static str {
        "linear-bias-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let op = InplaceOp3::name(self);
        match (s1, s2, s3) {
            (CpuStorage::F32(d), CpuStorage::F32(b), CpuStorage::F32(r)) => {
                Self::run(span_mut(d, l1, op)?, span(b, l2, op)?, span(r, l3, op)?)
            }
            (CpuStorage::F16(d), CpuStorage::F16(b), CpuStorage::F16(r)) => {
                Self::run(span_mut(d, l1, op)?, span(b, l2, op)?, span(r, l3, op)?)
            }
            (CpuStorage::BF16(d), CpuStorage::BF16(b), CpuStorage::BF16(r)) => {
                Self::run(span_mut(d, l1, op)?, span(b, l2, op)?, span(r, l3, op)?)
            }
            (d, ..) => bail!("{op}: unsupported dtype {:?}", d.dtype()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_diff, randn};
    use super::*;
    use candle_core::DType;

    #[test]
    fn fused_epilogues_match_candle_ops() {
        // 10 rows: the threaded matmul; 3 rows of 200: the few-rows product, in 3 tasks
        for (b_, t, k) in [(2, 5, 8), (1, 3, 200)] {
            let xs = randn(&[b_, t, k]);
            let w = randn(&[6, k]);
            let b = randn(&[6]);
            let residual = randn(&[b_, t, 6]);
            let plain = candle_nn::Linear::new(w.clone(), Some(b.clone()))
                .forward(&xs)
                .unwrap();
            let cases = [
                (Epilogue::Bias, plain.clone()),
                (
                    Epilogue::Activation(Activation::QuickGelu),
                    Activation::QuickGelu.forward(&plain).unwrap(),
                ),
                (
                    Epilogue::Activation(Activation::Gelu),
                    plain.gelu_erf().unwrap(),
                ),
                (Epilogue::Residual(&residual), (&plain + &residual).unwrap()),
            ];
            // f32: our gemm path; bf16: candle's matmul + in-place epilogue; f64 and the
            // generic path: candle ops
            for (dtype, kernels) in [
                (DType::F32, KernelPath::Native),
                (DType::F32, KernelPath::Generic),
                (DType::BF16, KernelPath::Native),
                (DType::BF16, KernelPath::Generic),
                (DType::F64, KernelPath::Native),
            ] {
                let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
                let lin = FusedLinear::new(cast(&w), cast(&b), kernels).unwrap();
                let residual = cast(&residual);
                for (epilogue, reference) in &cases {
                    let epilogue = match epilogue {
                        Epilogue::Residual(_) => Epilogue::Residual(&residual),
                        e => *e,
                    };
                    let ours = lin.forward(&cast(&xs), epilogue).unwrap();
                    assert_eq!(ours.dims(), [b_, t, 6]);
                    assert_eq!(ours.dtype(), dtype);
                    let bound = match dtype {
                        DType::BF16 => 0.1 * (k as f32 / 8.0).sqrt(),
                        _ => 1e-5 * (k as f32 / 8.0).sqrt(),
                    };
                    let d = max_diff(&ours, reference);
                    assert!(d < bound, "{dtype:?} {kernels:?} {epilogue:?} k={k}: {d}");
                }
            }
            // the residual is read, not written
            assert_eq!(residual.dims(), [b_, t, 6]);
        }
    }

    #[test]
    fn first_columns_for_the_first_rows() {
        let (w, b) = (randn(&[9, 5]), randn(&[9]));
        let xs = randn(&[2, 6, 5]);
        let lin = FusedLinear::new(w.clone(), b.clone(), KernelPath::Native).unwrap();
        let full = lin.forward(&xs, Epilogue::Bias).unwrap();
        let part = lin.forward_first_columns(&xs, 3, 2).unwrap();
        assert_eq!(part.dims(), [2, 6, 9]);
        // columns 3.. everywhere, and columns ..3 of the first 2 rows of each item: computed
        assert!(
            max_diff(
                &part.narrow(2, 3, 6).unwrap(),
                &full.narrow(2, 3, 6).unwrap()
            ) < 1e-5
        );
        let first = |t: &Tensor| t.narrow(1, 0, 2).unwrap().narrow(2, 0, 3).unwrap();
        assert!(max_diff(&first(&part), &first(&full)) < 1e-5);
        // the rest of those columns: the bias
        let rest = part.narrow(1, 2, 4).unwrap().narrow(2, 0, 3).unwrap();
        let bias = b.narrow(0, 0, 3).unwrap().broadcast_as((2, 4, 3)).unwrap();
        assert_eq!(max_diff(&rest, &bias), 0.0);
        // f64 and the generic path: every column, as forward
        let lin64 = FusedLinear::new(
            w.to_dtype(DType::F64).unwrap(),
            b.to_dtype(DType::F64).unwrap(),
            KernelPath::Native,
        )
        .unwrap();
        let xs64 = xs.to_dtype(DType::F64).unwrap();
        let part64 = lin64.forward_first_columns(&xs64, 3, 2).unwrap();
        assert!(max_diff(&part64, &full) < 1e-5);
        let generic = FusedLinear::new(w.clone(), b.clone(), KernelPath::Generic).unwrap();
        let every_column = generic.forward_first_columns(&xs, 3, 2).unwrap();
        assert!(max_diff(&every_column, &full) < 1e-5);
        assert!(lin.forward_first_columns(&xs, 10, 2).is_err());
        assert!(lin.forward_first_columns(&xs, 3, 7).is_err());
    }

    #[test]
    fn strided_inputs_and_mismatched_shapes() {
        let w = randn(&[6, 8]);
        let b = randn(&[6]);
        let lin = FusedLinear::new(w.clone(), b.clone(), KernelPath::Native).unwrap();
        // a transposed (non-contiguous) input gives the same as its contiguous copy
        let xs = randn(&[8, 5]).t().unwrap();
        let ours = lin.forward(&xs, Epilogue::Bias).unwrap();
        let reference = lin
            .forward(&xs.contiguous().unwrap(), Epilogue::Bias)
            .unwrap();
        assert_eq!(max_diff(&ours, &reference), 0.0);
        let wrong = randn(&[5, 7]);
        assert!(lin.forward(&xs, Epilogue::Residual(&wrong)).is_err());
        assert!(FusedLinear::new(w.clone(), randn(&[5]), KernelPath::Native).is_err());
        // an input of the wrong width is an error on every path, not a read of other weights
        let generic = FusedLinear::new(w, b, KernelPath::Generic).unwrap();
        for lin in [lin.clone(), lin.with_bias_row().unwrap(), generic] {
            for xs in [randn(&[5, 9]), randn(&[5, 7]), randn(&[2, 9])] {
                let err = lin.forward(&xs, Epilogue::Bias).unwrap_err().to_string();
                assert!(err.contains("the layer takes 8"), "{err}");
            }
            let err = lin
                .forward_first_columns(&randn(&[1, 5, 9]), 2, 1)
                .unwrap_err()
                .to_string();
            assert!(err.contains("the layer takes 8"), "{err}");
        }
    }

    #[test]
    fn bias_row_takes_the_bias_from_a_column_of_ones() {
        let (w, b) = (randn(&[7, 12]), randn(&[7]));
        let plain = FusedLinear::new(w.clone(), b.clone(), KernelPath::Native).unwrap();
        let lin = plain.clone().with_bias_row().unwrap();
        // the generic path keeps the plain weights
        let generic = FusedLinear::new(w, b, KernelPath::Generic)
            .unwrap()
            .with_bias_row()
            .unwrap();
        assert!(!generic.bias_row);
        assert_eq!(lin.dims(), (12, 7));
        // 3 rows: the few-rows product; 40 rows: the threaded matmul
        for rows in [3, 40] {
            let xs = randn(&[2, rows / 2 + 1, 12]);
            let ones = Tensor::ones((2, rows / 2 + 1, 1), DType::F32, &Device::Cpu).unwrap();
            let with_ones = Tensor::cat(&[&xs, &ones], 2).unwrap();
            let want = plain.forward(&xs, Epilogue::Bias).unwrap();
            let got = lin.forward_with_ones(&with_ones).unwrap().unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 1e-5);
            // the bias row changes nothing for the other paths
            let epilogue = Epilogue::Activation(Activation::Gelu);
            let d = max_diff(
                &lin.forward(&xs, epilogue).unwrap(),
                &plain.forward(&xs, epilogue).unwrap(),
            );
            assert_eq!(d, 0.0);
            // without the ones column, or without the bias row: no such path
            assert!(lin.forward_with_ones(&xs).unwrap().is_none());
            assert!(plain.forward_with_ones(&with_ones).unwrap().is_none());
            // after a LayerNorm, which writes the ones column itself
            let (weight, bias) = ((randn(&[12]) + 1.0).unwrap(), randn(&[12]));
            let norm = LayerNorm::new(weight.clone(), bias.clone(), 1e-5, KernelPath::Native);
            let want = plain
                .forward(&norm.forward(&xs).unwrap(), Epilogue::Bias)
                .unwrap();
            for lin in [&lin, &plain] {
                let got = lin.forward_normed(&norm, &xs).unwrap();
                assert!(max_diff(&got, &want) < 1e-5);
            }
            let generic_norm = LayerNorm::new(weight, bias, 1e-5, KernelPath::Generic);
            let got = generic.forward_normed(&generic_norm, &xs).unwrap();
            assert!(max_diff(&got, &want) < 1e-5);
        }
        // other dtypes keep the plain weights, and take the plain path
        let half = FusedLinear::new(
            randn(&[3, 4]).to_dtype(DType::BF16).unwrap(),
            randn(&[3]).to_dtype(DType::BF16).unwrap(),
            KernelPath::Native,
        )
        .unwrap()
        .with_bias_row()
        .unwrap();
        assert_eq!(half.dims(), (4, 3));
        let xs = randn(&[2, 4]).to_dtype(DType::BF16).unwrap();
        assert_eq!(half.forward(&xs, Epilogue::Bias).unwrap().dims(), [2, 3]);
        assert!(half.forward_with_ones(&randn(&[2, 5])).unwrap().is_none());
    }

    #[test]
    fn bf16_weights_round_the_product_alone() {
        use super::super::bf16_gemm::{bf16_to_f32, round_bf16};
        let round = |t: &Tensor| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let v: Vec<f32> = v.into_iter().map(|x| bf16_to_f32(round_bf16(x))).collect();
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        };
        // 3 rows: few rows; 150 rows of 300 -> 130: row and column tasks, a partial panel
        for (rows, k, n) in [(3, 40, 6), (150, 300, 130)] {
            let (xs, w, b) = (randn(&[rows, k]), randn(&[n, k]), randn(&[n]));
            let residual = randn(&[rows, n]);
            let lin = FusedLinear::new(w.clone(), b.clone(), KernelPath::NativeBf16).unwrap();
            assert!(lin.is_bf16());
            assert_eq!(lin.dims(), (k, n));
            // no bias row: the bias stays f32
            let lin = lin.with_bias_row().unwrap();
            assert!(!lin.bias_row);
            // the reference: f32 ops on the rounded operands, the bias and residual in f32
            let plain = round(&xs)
                .matmul(&round(&w).t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let f32_plain = xs
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let act = Activation::Gelu;
            for (epilogue, want, f32_want) in [
                (Epilogue::Bias, plain.clone(), f32_plain.clone()),
                (
                    Epilogue::Activation(act),
                    act.forward(&plain).unwrap(),
                    act.forward(&f32_plain).unwrap(),
                ),
                (
                    Epilogue::Residual(&residual),
                    (&plain + &residual).unwrap(),
                    (&f32_plain + &residual).unwrap(),
                ),
            ] {
                let got = lin.forward(&xs, epilogue).unwrap();
                assert_eq!(got.dtype(), DType::F32);
                // f32 summation order alone
                let d = max_diff(&got, &want);
                assert!(
                    d < 2e-5 * (k as f32).sqrt(),
                    "{epilogue:?} {rows}x{k}x{n}: {d}"
                );
                // against f32 weights: bf16's rounding, 2^-9 relative per factor
                let d32 = max_diff(&got, &f32_want);
                assert!(
                    d32 > 1e-3 && d32 < 0.02 * (k as f32).sqrt(),
                    "{epilogue:?} {rows}x{k}x{n}: {d32} from f32"
                );
            }
            // the first-columns product computes every column, as forward
            let xs3 = xs.unsqueeze(0).unwrap();
            let part = lin.forward_first_columns(&xs3, 2, 1).unwrap();
            let full = lin.forward(&xs3, Epilogue::Bias).unwrap();
            assert_eq!(max_diff(&part, &full), 0.0);
        }
        // other dtypes and devices keep dense weights on that path
        let half = FusedLinear::new(
            randn(&[3, 4]).to_dtype(DType::BF16).unwrap(),
            randn(&[3]).to_dtype(DType::BF16).unwrap(),
            KernelPath::NativeBf16,
        )
        .unwrap();
        assert!(!half.is_bf16());
    }
}
