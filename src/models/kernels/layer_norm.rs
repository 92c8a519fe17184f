//! [`LayerNorm`]: `nn.LayerNorm(d, eps)` with weight and bias, as candle-nn's (same checkpoint
//! keys, same constructor), with its own pass for contiguous f32 on the CPU: rows split over the
//! rayon pool, each normalised with vectorised sums, written into uninitialised memory.
//! candle's CPU op zero-fills its output on the calling thread first and sums each row in one
//! serial chain: 0.37 ms of OWL-ViT B/32's 577 x 768 activations, 24 times a frame. Other
//! dtypes, devices and layouts, and the generic path, run candle's op.

use std::mem::MaybeUninit;

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::LayerNormConfig;
use rayon::prelude::*;

use super::{cpu_f32_slice, vmath, written, KernelPath};
use crate::models::ModelVars;

/// Elements per rayon task (whole rows): enough to amortise the task.
const TASK_ELEMENTS: usize = 1 << 14;

/// transformers' `nn.LayerNorm`; see the module docs.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    kernels: KernelPath,
}

/// `nn.LayerNorm(size, eps)` read under `vb` (`weight` and `bias`), as [`candle_nn::layer_norm`].
pub fn layer_norm<C: Into<LayerNormConfig>>(
    size: usize,
    config: C,
    vb: ModelVars,
) -> Result<LayerNorm> {
    Ok(LayerNorm {
        inner: candle_nn::layer_norm(size, config, vb.var_builder())?,
        kernels: vb.kernels(),
    })
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64, kernels: KernelPath) -> Self {
        Self {
            inner: candle_nn::LayerNorm::new(weight, bias, eps),
            kernels,
        }
    }

    /// The f32 CPU pass, each output row followed by `extra` ones; `None` where it does not
    /// apply (candle's op then runs, and reports a size mismatch) or on the generic path.
    fn forward_f32_cpu(&self, xs: &Tensor, extra: usize) -> Result<Option<Tensor>> {
        let (weight, eps) = (self.inner.weight(), self.inner.eps() as f32);
        let Some(bias) = self.inner.bias() else {
            return Ok(None);
        };
        if !self.inner.remove_mean() || xs.rank() == 0 || xs.dim(D::Minus1)? != weight.dim(0)? {
            return Ok(None);
        }
        let normalized = self
            .kernels
            .cpu_f32(xs, |x| {
                cpu_f32_slice(weight, |w| {
                    cpu_f32_slice(bias, |b| normalize_rows(x, w, b, eps, extra)).flatten()
                })
                .flatten()
            })
            .flatten();
        let mut dims = xs.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last += extra;
        }
        normalized
            .map(|ys| Tensor::from_vec(ys, dims, &Device::Cpu))
            .transpose()
    }

    /// The normalised `xs` (.., d) with a last column of ones, (.., d + 1), for a linear that
    /// takes its bias in the product ([`super::FusedLinear::forward_normed`]). `None` where the
    /// f32 CPU pass does not apply (the caller normalises with [`Module::forward`]).
    pub(super) fn forward_with_ones(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        self.forward_f32_cpu(xs, 1)
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self.forward_f32_cpu(xs, 0)? {
            Some(ys) => Ok(ys),
            None => self.inner.forward(xs),
        }
    }
}

/// Each `weight.len()`-wide row of `x`, normalised, then `extra` ones; `x` holds whole rows;
/// `None` for mismatched parameters.
fn normalize_rows(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    extra: usize,
) -> Option<Vec<f32>> {
    let d = weight.len();
    if d == 0 || bias.len() != d || !x.len().is_multiple_of(d) {
        return None;
    }
    let (rows, width) = (x.len() / d, d + extra);
    let rows_per_task = TASK_ELEMENTS.div_ceil(d);
    let normalize = |dst: &mut [MaybeUninit<f32>], x: &[f32]| {
        if extra == 0 {
            vmath::layer_norm_rows(dst, x, weight, bias, eps);
            return;
        }
        for (dst, x) in dst.chunks_exact_mut(width).zip(x.chunks_exact(d)) {
            let (normed, ones) = dst.split_at_mut(d);
            vmath::layer_norm_rows(normed, x, weight, bias, eps);
            ones.fill(MaybeUninit::new(1.0));
        }
    };
    // SAFETY: every row of `dst` is written: its `d` values by `layer_norm_rows`, then its
    // `extra` ones; the chunks are whole rows of both.
    let out = unsafe {
        written(rows * width, |dst| {
            if rows <= rows_per_task {
                normalize(dst, x);
            } else {
                dst.par_chunks_mut(rows_per_task * width)
                    .zip(x.par_chunks(rows_per_task * d))
                    .for_each(|(dst, x)| normalize(dst, x));
            }
        })
    };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_diff, randn};
    use super::*;
    use candle_core::DType;

    /// PyTorch's definition in f64: the biased variance of the centred values.
    fn reference(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Tensor {
        let xs = xs.to_dtype(DType::F64).unwrap();
        let mean = xs.mean_keepdim(D::Minus1).unwrap();
        let centred = xs.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centred
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        normed
            .broadcast_mul(&weight.to_dtype(DType::F64).unwrap())
            .unwrap()
            .broadcast_add(&bias.to_dtype(DType::F64).unwrap())
            .unwrap()
    }

    #[test]
    fn matches_pytorchs_definition_serial_and_threaded() {
        // d = 37: rows that are not whole vectors; 577 x 768: OWL-ViT B/32, split into tasks;
        // an offset of 300: the mean large against the spread
        for (shape, offset) in [
            (vec![2, 5, 37], 0.0),
            (vec![1, 577, 768], 0.0),
            (vec![3, 64], 300.0),
        ] {
            let d = *shape.last().unwrap();
            let xs = (randn(&shape) + offset).unwrap();
            let weight = (randn(&[d]) + 1.0).unwrap();
            let bias = randn(&[d]);
            let ln = LayerNorm::new(weight.clone(), bias.clone(), 1e-5, KernelPath::Native);
            let ours = ln.forward(&xs).unwrap();
            assert_eq!(ours.dims(), xs.dims());
            // with a column of ones: the same values, bit for bit, then a 1 per row
            let with_ones = ln.forward_with_ones(&xs).unwrap().unwrap();
            let mut wide = shape.clone();
            *wide.last_mut().unwrap() += 1;
            assert_eq!(with_ones.dims(), wide.as_slice());
            let rank = shape.len() - 1;
            assert_eq!(max_diff(&with_ones.narrow(rank, 0, d).unwrap(), &ours), 0.0);
            let ones = with_ones.narrow(rank, d, 1).unwrap().flatten_all().unwrap();
            assert!(ones.to_vec1::<f32>().unwrap().iter().all(|&v| v == 1.0));
            let want = reference(&xs, &weight, &bias, 1e-5);
            let diff = max_diff(&ours, &want);
            let candle = candle_nn::ops::layer_norm(&xs, &weight, &bias, 1e-5).unwrap();
            let candle_diff = max_diff(&candle, &want);
            if offset == 0.0 {
                assert!(diff < 2e-5, "{shape:?}: {diff}");
                assert!(max_diff(&ours, &candle) < 2e-5, "{shape:?} vs candle");
            } else {
                // the inputs' own rounding bounds ours (f32 values near 300 are 3e-5 apart,
                // times weights up to ~4); E[x^2] - mean^2 cancels most of the variance's
                // digits
                assert!(diff < 5e-4, "{shape:?} + {offset}: {diff}");
                assert!(candle_diff > 10.0 * diff, "{candle_diff} vs {diff}");
            }
        }
    }

    #[test]
    fn other_dtypes_and_layouts_take_candles_op() {
        let xs = randn(&[4, 6, 8]);
        let (weight, bias) = ((randn(&[8]) + 1.0).unwrap(), randn(&[8]));
        let ln = LayerNorm::new(weight.clone(), bias.clone(), 1e-5, KernelPath::Native);
        let want = reference(&xs, &weight, &bias, 1e-5);
        // a transposed view: not contiguous
        let strided = xs.transpose(0, 1).unwrap();
        let ours = ln.forward(&strided).unwrap().transpose(0, 1).unwrap();
        assert!(max_diff(&ours, &want) < 2e-5);
        let half = LayerNorm::new(
            weight.to_dtype(DType::BF16).unwrap(),
            bias.to_dtype(DType::BF16).unwrap(),
            1e-5,
            KernelPath::Native,
        );
        let ours = half.forward(&xs.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(ours.dtype(), DType::BF16);
        assert!(max_diff(&ours, &want) < 0.1);
        // a size mismatch is candle's error, not a panic
        assert!(ln.forward(&randn(&[2, 7])).is_err());
        // no column of ones where the f32 pass does not apply: the caller normalises instead
        assert!(ln.forward_with_ones(&strided).unwrap().is_none());
        assert!(half
            .forward_with_ones(&xs.to_dtype(DType::BF16).unwrap())
            .unwrap()
            .is_none());
        assert!(ln.forward_with_ones(&randn(&[2, 7])).unwrap().is_none());
        // the generic path: candle's op, and no column of ones
        let generic = LayerNorm::new(weight, bias, 1e-5, KernelPath::Generic);
        assert!(max_diff(&generic.forward(&xs).unwrap(), &want) < 2e-5);
        assert!(generic.forward_with_ones(&xs).unwrap().is_none());
    }
}
