//! Fused CPU kernels of the CLIP encoder. Each runs in place, in one pass, over a tensor that
//! was just computed and has no other owner (a matmul output, a score tensor):
//!
//! - [`FusedLinear`]: `x @ W^T`, then bias (+ activation, or + residual) in the same pass;
//! - [`softmax_last_dim_`]: the attention softmax (optionally causal) over the scores,
//!   overwriting them, computed in f32 as transformers' `softmax(..., dtype=torch.float32)`.
//!
//! On other devices, and for dtypes without a kernel here, the same functions fall back to the
//! equivalent candle ops (`broadcast_add`, [`Activation`]'s module, `softmax_last_dim`).

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, DType, InplaceOp1, InplaceOp2, InplaceOp3, Layout, Module, Result, Tensor,
};
use candle_nn::VarBuilder;
use half::{bf16, f16};
use rayon::prelude::*;

use super::Activation;

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

/// An `nn.Linear` with bias whose output gets an [`Epilogue`].
#[derive(Debug, Clone)]
pub struct FusedLinear {
    /// (out, in)
    weight: Tensor,
    /// (out,)
    bias: Tensor,
}

impl FusedLinear {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    /// Reads `weight` (out, in) and `bias` (out,) under `vb`, as `nn.Linear(in, out)`.
    pub fn load(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            vb.get(out_dim, "bias")?,
        ))
    }

    /// (.., in) -> (.., out)
    pub fn forward(&self, xs: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        let in_dim = dims.pop().unwrap_or(1);
        let rows = dims.iter().product::<usize>();
        let out_dim = self.bias.dim(0)?;
        dims.push(out_dim);
        // (rows, in) x (in, out): a fresh (rows, out) tensor owned here alone.
        let ys = xs
            .contiguous()?
            .reshape((rows, in_dim))?
            .matmul(&self.weight.t()?)?;
        let fused = has_kernel(&ys)
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
}

/// Softmax over the last dimension of `scores`, written over them on the CPU. `causal`: the
/// scores are (.., n, n) and query `i` only sees keys `0..=i`, as transformers' causal mask
/// (`finfo.min` added above the diagonal: those probabilities are exactly 0).
pub fn softmax_last_dim_(scores: Tensor, causal: bool) -> Result<Tensor> {
    let n = scores.dim(candle_core::D::Minus1)?;
    if causal && scores.dim(candle_core::D::Minus2)? != n {
        bail!(
            "causal softmax needs square scores, got {:?}",
            scores.shape()
        );
    }
    if has_kernel(&scores) && scores.is_contiguous() {
        scores.inplace_op1(&Softmax { causal })?;
        return Ok(scores);
    }
    let dtype = scores.dtype();
    let mut scores = scores.to_dtype(DType::F32)?;
    if causal {
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), scores.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)
}

/// Whether the in-place kernels here handle `t`.
fn has_kernel(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// The floats the kernels take, computed in f32.
trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;

    /// Softmax of `row[..valid]` in f32, zeros after it.
    fn softmax_row(row: &mut [Self], valid: usize) {
        let (seen, masked) = row.split_at_mut(valid);
        let max = seen
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x.to_f32()));
        let sum: f32 = seen.iter().map(|&x| (x.to_f32() - max).exp()).sum();
        for x in seen.iter_mut() {
            *x = Self::from_f32((x.to_f32() - max).exp() / sum);
        }
        masked.fill(Self::from_f32(0.0));
    }
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

    /// One exp per element: the exponentials are kept in the row itself.
    fn softmax_row(row: &mut [f32], valid: usize) {
        let (seen, masked) = row.split_at_mut(valid);
        let max = seen.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in seen.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        for x in seen.iter_mut() {
            *x /= sum;
        }
        masked.fill(0.0);
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
        "clip-bias-act"
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
        "clip-bias-residual"
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

/// Row-wise softmax over the last dimension, in place.
struct Softmax {
    causal: bool,
}

impl Softmax {
    fn run<T: Elem>(&self, data: &mut [T], layout: &Layout) {
        let dims = layout.dims();
        let n = dims[dims.len() - 1];
        let causal = self.causal;
        data.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            // rows of the (n, n) blocks are queries 0..n in turn
            let valid = if causal { r % n + 1 } else { n };
            T::softmax_row(row, valid);
        });
    }
}

impl InplaceOp1 for Softmax {
    fn name(&self) -> &'static str {
        "clip-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let op = InplaceOp1::name(self);
        match storage {
            CpuStorage::F32(d) => self.run(span_mut(d, layout, op)?, layout),
            CpuStorage::F16(d) => self.run(span_mut(d, layout, op)?, layout),
            CpuStorage::BF16(d) => self.run(span_mut(d, layout, op)?, layout),
            d => bail!("{op}: unsupported dtype {:?}", d.dtype()),
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Largest absolute difference (f32), for the encoder's tests too.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
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

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_epilogues_match_candle_ops() {
        let xs = randn(&[2, 5, 8]);
        let w = randn(&[6, 8]);
        let b = randn(&[6]);
        let residual = randn(&[2, 5, 6]);
        let lin = FusedLinear::new(w.clone(), b.clone());
        let plain = candle_nn::Linear::new(w, Some(b)).forward(&xs).unwrap();
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
        for (epilogue, reference) in cases {
            let ours = lin.forward(&xs, epilogue).unwrap();
            assert_eq!(ours.dims(), [2, 5, 6]);
            let d = max_diff(&ours, &reference);
            assert!(d < 1e-5, "{epilogue:?}: {d}");
        }
        // the residual is read, not written
        assert_eq!(residual.dims(), [2, 5, 6]);
    }

    #[test]
    fn softmax_matches_candle_with_and_without_causal_mask() {
        let scores = randn(&[3, 7, 7]);
        let reference = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let ours = softmax_last_dim_(scores.copy().unwrap(), false).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);

        let mask: Vec<f32> = (0..7)
            .flat_map(|i| (0..7).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (7, 7), &Device::Cpu).unwrap();
        let reference =
            candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        let ours = softmax_last_dim_(scores.copy().unwrap(), true).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let row0 = ours
            .get(1)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(row0[0], 1.0);
        assert!(row0[1..].iter().all(|&p| p == 0.0));
    }

    #[test]
    fn candle_fallbacks_match_the_kernels() {
        // f64 has no kernel here: it takes the candle-op path that other devices take.
        let xs = randn(&[2, 5, 8]);
        let lin = FusedLinear::new(randn(&[6, 8]), randn(&[6]));
        let residual = randn(&[2, 5, 6]);
        let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let lin64 = FusedLinear::new(to64(&lin.weight), to64(&lin.bias));
        let residual64 = to64(&residual);
        for (e32, e64) in [
            (Epilogue::Bias, Epilogue::Bias),
            (
                Epilogue::Activation(Activation::QuickGelu),
                Epilogue::Activation(Activation::QuickGelu),
            ),
            (
                Epilogue::Residual(&residual),
                Epilogue::Residual(&residual64),
            ),
        ] {
            let ours = lin.forward(&xs, e32).unwrap();
            let fallback = lin64.forward(&to64(&xs), e64).unwrap();
            assert_eq!(fallback.dtype(), DType::F64);
            assert!(max_diff(&ours, &fallback) < 1e-5, "{e32:?}");
        }
        let scores = randn(&[2, 6, 6]);
        for causal in [false, true] {
            let ours = softmax_last_dim_(scores.copy().unwrap(), causal).unwrap();
            let fallback = softmax_last_dim_(to64(&scores), causal).unwrap();
            assert_eq!(fallback.dtype(), DType::F64);
            assert!(max_diff(&ours, &fallback) < 1e-6, "causal {causal}");
        }
    }

    #[test]
    fn half_softmax_is_computed_in_f32() {
        let scores = (randn(&[2, 4, 9]) * 4.0).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let ours = softmax_last_dim_(scores.to_dtype(DType::F16).unwrap(), false).unwrap();
        assert_eq!(ours.dtype(), DType::F16);
        // f16 inputs round the scores; the result is then one f16 rounding from the reference
        assert!(max_diff(&ours, &reference) < 5e-3);
        let sums = ours.to_dtype(DType::F32).unwrap().sum(D::Minus1).unwrap();
        let ones = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_diff(&sums, &ones) < 5e-3);
    }
}
