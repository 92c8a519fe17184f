//! [`WindowConv2d`]: `nn.Conv2d(c_in, c_out, k, padding=p)` at stride 1 (CLIPSeg's decoder
//! head: 3x3, padding 1). f32 on the CPU: each output pixel's k x k window over every input
//! channel is gathered into a row (zeros outside the image) and the rows are projected with one
//! [`FusedLinear`] (the conv's weight read as (c_out, c_in * k * k)), the activation fused.
//! candle's conv2d does the same gathering and matmul, but with single-threaded layout copies
//! around it: 4.3 ms of CLIPSeg's 4-prompt head against 1-1.5 ms here. Other devices and dtypes,
//! and the generic path, run candle's conv2d.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};

use super::{
    cpu_f32_slice, transpose_items, written_in_parallel, Activation, Epilogue, FusedLinear,
};
use crate::models::ModelVars;

/// Output pixels per task of the window gather.
const PIXELS_PER_TASK: usize = 64;

/// A stride-1, zero-padded 2-D convolution with an optional activation after its bias.
#[derive(Debug, Clone)]
pub struct WindowConv2d {
    /// (c_in * k * k) -> c_out per output pixel
    proj: FusedLinear,
    /// candle's, for other devices and dtypes
    conv: Conv2d,
    activation: Option<Activation>,
    in_channels: usize,
    kernel: usize,
    padding: usize,
}

impl WindowConv2d {
    /// Reads `weight` (c_out, c_in, k, k) and `bias` (c_out,) under `vb` (the conv's names).
    pub fn new(
        vb: ModelVars,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        activation: Option<Activation>,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        let config = Conv2dConfig {
            padding,
            ..Default::default()
        };
        Ok(Self {
            proj: FusedLinear::new(
                weight.reshape((out_channels, in_channels * kernel * kernel))?,
                bias.clone(),
                vb.kernels(),
            )?,
            conv: Conv2d::new(weight, Some(bias), config),
            activation,
            in_channels,
            kernel,
            padding,
        })
    }

    /// (b, c_in, h, w) -> (b, c_out, h + 2p - k + 1, w + 2p - k + 1)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let (k, p) = (self.kernel, self.padding);
        let gathered = if c == self.in_channels && h + 2 * p >= k && w + 2 * p >= k {
            let kernels = self.proj.kernels();
            kernels.cpu_f32(&xs.contiguous()?, |x| self.windows(x, b, h, w))
        } else {
            None
        };
        let Some((rows, (oh, ow))) = gathered else {
            let ys = self.conv.forward(xs)?;
            return match self.activation {
                Some(act) => act.forward(&ys),
                None => Ok(ys),
            };
        };
        let rows = Tensor::from_vec(rows, (b, oh * ow, c * k * k), &Device::Cpu)?;
        let epilogue = Epilogue::activation_or_bias(self.activation);
        // (b, oh * ow, c_out), channels last
        let ys = self.proj.forward(&rows, epilogue)?;
        let c_out = ys.dim(2)?;
        match cpu_f32_slice(&ys, |ys| transpose_items(ys, b, oh * ow, c_out)) {
            Some(nchw) => Tensor::from_vec(nchw, (b, c_out, oh, ow), &Device::Cpu),
            None => ys.transpose(1, 2)?.reshape((b, c_out, oh, ow)),
        }
    }

    /// The (b, oh * ow, c_in * k * k) window rows of the NCHW pixels `x`, and (oh, ow).
    fn windows(&self, x: &[f32], b: usize, h: usize, w: usize) -> (Vec<f32>, (usize, usize)) {
        let (c, k, p) = (self.in_channels, self.kernel, self.padding);
        let (oh, ow) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
        let row_len = c * k * k;
        // SAFETY: every piece is whole rows, each element written.
        let rows = unsafe {
            written_in_parallel(
                b * oh * ow * row_len,
                PIXELS_PER_TASK * row_len,
                |task, dst| {
                    for (i, row) in dst.chunks_exact_mut(row_len).enumerate() {
                        let pixel = task * PIXELS_PER_TASK + i; // over b * oh * ow
                        let (item, oy, ox) = (pixel / (oh * ow), pixel / ow % oh, pixel % ow);
                        for (ci, window) in row.chunks_exact_mut(k * k).enumerate() {
                            let plane = &x[(item * c + ci) * h * w..][..h * w];
                            for (ky, line) in window.chunks_exact_mut(k).enumerate() {
                                // input row oy + ky - p, columns ox - p .. ox - p + k
                                let y = (oy + ky).checked_sub(p).filter(|&y| y < h);
                                for (kx, v) in line.iter_mut().enumerate() {
                                    let x = (ox + kx).checked_sub(p).filter(|&x| x < w);
                                    v.write(match (y, x) {
                                        (Some(y), Some(x)) => plane[y * w + x],
                                        _ => 0.0,
                                    });
                                }
                            }
                        }
                    }
                },
            )
        };
        (rows, (oh, ow))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_diff, randn};
    use super::*;
    use crate::models::KernelPath;
    use candle_core::DType;
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    #[test]
    fn matches_candles_conv2d() {
        let (c_in, c_out) = (5, 7);
        for (k, p, act) in [
            (3, 1, Some(Activation::Relu)),
            (3, 0, None),
            (1, 0, None),
            (5, 2, Some(Activation::Gelu)),
        ] {
            let weight = randn(&[c_out, c_in, k, k]);
            let bias = randn(&[c_out]);
            let tensors = HashMap::from([
                ("weight".to_string(), weight.clone()),
                ("bias".to_string(), bias.clone()),
            ]);
            let config = Conv2dConfig {
                padding: p,
                ..Default::default()
            };
            // 2 images of 9 x 6: windows across every edge
            let xs = randn(&[2, c_in, 9, 6]);
            let conv = Conv2d::new(weight, Some(bias), config)
                .forward(&xs)
                .unwrap();
            let want = match act {
                Some(act) => act.forward(&conv).unwrap(),
                None => conv,
            };
            // f32: the gathered windows; f32 on the generic path and f64: candle's conv2d
            for (dtype, kernels) in [
                (DType::F32, KernelPath::Native),
                (DType::F32, KernelPath::Generic),
                (DType::F64, KernelPath::Native),
            ] {
                let vb = VarBuilder::from_tensors(tensors.clone(), dtype, &Device::Cpu);
                let ours =
                    WindowConv2d::new(ModelVars::new(vb, kernels), c_in, c_out, k, p, act).unwrap();
                let got = ours.forward(&xs.to_dtype(dtype).unwrap()).unwrap();
                assert_eq!(got.dims(), want.dims(), "k {k} p {p}");
                assert_eq!(got.dtype(), dtype);
                assert!(
                    max_diff(&got, &want) < 1e-4,
                    "k {k} p {p} {dtype:?} {kernels:?}"
                );
            }
        }
        // the wrong number of channels is candle's error, not a panic
        let tensors = HashMap::from([
            ("weight".to_string(), randn(&[2, 3, 3, 3])),
            ("bias".to_string(), randn(&[2])),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let ours = WindowConv2d::new(vb.into(), 3, 2, 3, 1, None).unwrap();
        assert!(ours.forward(&randn(&[1, 4, 5, 5])).is_err());
    }
}
