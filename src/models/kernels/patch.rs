//! Convolutions whose kernel equals their stride, as what they are - a linear map per
//! non-overlapping patch, one [`FusedLinear`]:
//!
//! - [`PatchEmbedding`]: the ViT patch embedding, `nn.Conv2d(channels, d, kernel_size=patch,
//!   stride=patch)`: the patches are gathered into rows (a copy of the pixels, no im2col of
//!   overlapping windows) and projected with the conv's weight read as (d, channels * p * p);
//! - [`PatchExpansion`]: its transpose, `nn.ConvTranspose2d(c_in, c_out, kernel_size=k,
//!   stride=k)` (CLIPSeg's decoder head): every pixel's channels map to its own k x k block of
//!   output pixels.

use candle_core::{bail, Device, Result, Tensor};

use super::{transpose_items, written_in_parallel, Activation, Epilogue, FusedLinear};
use crate::models::ModelVars;

/// A conv of kernel and stride `patch`, without padding, over (b, channels, H, W).
#[derive(Debug, Clone)]
pub struct PatchEmbedding {
    proj: FusedLinear,
    channels: usize,
    patch: usize,
}

impl PatchEmbedding {
    /// Reads `weight` (d, channels, patch, patch) and, when `bias`, `bias` (d,) under `vb`
    /// (the conv's own names); without a bias the projection adds zeros.
    pub fn new(
        vb: ModelVars,
        channels: usize,
        dim: usize,
        patch: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb
            .get((dim, channels, patch, patch), "weight")?
            .reshape((dim, channels * patch * patch))?;
        let bias = if bias {
            vb.get(dim, "bias")?
        } else {
            Tensor::zeros(dim, vb.dtype(), vb.device())?
        };
        Ok(Self {
            proj: FusedLinear::new(weight, bias, vb.kernels())?,
            channels,
            patch,
        })
    }

    /// The patch grid (rows, columns) of an H x W image: partial patches at the right and
    /// bottom edges are dropped, as by the strided conv.
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        (height / self.patch, width / self.patch)
    }

    /// (b, channels, H, W) -> (b, rows * columns, d), patches in raster order (the conv's
    /// output flattened and transposed, as the towers use it).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixel_values.dims4()?;
        if c != self.channels {
            bail!(
                "pixel_values have {c} channels, the patch embedding takes {}",
                self.channels
            );
        }
        let (gh, gw) = self.grid(h, w);
        if gh == 0 || gw == 0 {
            bail!("a {h}x{w} image holds no {0}x{0} patch", self.patch);
        }
        let patches = self.patches(pixel_values, gh, gw)?;
        self.proj.forward(&patches, Epilogue::Bias)
    }

    /// The pixels of each patch as a row: (b, rows * columns, channels * patch * patch).
    fn patches(&self, pixel_values: &Tensor, gh: usize, gw: usize) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let p = self.patch;
        let row_len = c * p * p;
        let kernels = self.proj.kernels();
        let gathered = kernels.cpu_f32(&pixel_values.contiguous()?, |px| {
            // SAFETY: every piece is one row, written whole: `c` planes of `p` lines of `p`.
            unsafe {
                written_in_parallel(b * gh * gw * row_len, row_len, |index, row| {
                    let (item, gy, gx) = (index / (gh * gw), index / gw % gh, index % gw);
                    for (ci, channel) in row.chunks_exact_mut(p * p).enumerate() {
                        let plane = (item * c + ci) * h * w;
                        for (py, line) in channel.chunks_exact_mut(p).enumerate() {
                            let start = plane + (gy * p + py) * w + gx * p;
                            for (dst, &src) in line.iter_mut().zip(&px[start..start + p]) {
                                dst.write(src);
                            }
                        }
                    }
                })
            }
        });
        if let Some(rows) = gathered {
            return Tensor::from_vec(rows, (b, gh * gw, row_len), &Device::Cpu);
        }
        // other devices and dtypes, and the generic path: the same gather from candle ops
        pixel_values
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, row_len))
    }
}

/// `nn.ConvTranspose2d(c_in, c_out, kernel_size=k, stride=k)` (no padding), with an optional
/// activation fused after the bias.
#[derive(Debug, Clone)]
pub struct PatchExpansion {
    /// (c_in) -> (c_out * k * k) per pixel
    proj: FusedLinear,
    activation: Option<Activation>,
    out_channels: usize,
    kernel: usize,
}

impl PatchExpansion {
    /// Reads `weight` (c_in, c_out, k, k) and `bias` (c_out,) under `vb` (the module's names).
    pub fn new(
        vb: ModelVars,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        activation: Option<Activation>,
    ) -> Result<Self> {
        let block = out_channels * kernel * kernel;
        let weight = vb
            .get((in_channels, out_channels, kernel, kernel), "weight")?
            .reshape((in_channels, block))?
            .t()?;
        // every output pixel of channel c gets bias[c]
        let bias = vb
            .get(out_channels, "bias")?
            .reshape((out_channels, 1))?
            .broadcast_as((out_channels, kernel * kernel))?
            .reshape(block)?;
        Ok(Self {
            proj: FusedLinear::new(weight, bias, vb.kernels())?,
            activation,
            out_channels,
            kernel,
        })
    }

    /// (b, c_in, h, w) -> (b, c_out, h * k, w * k)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c_in, h, w) = xs.dims4()?;
        let (c, k) = (self.out_channels, self.kernel);
        let epilogue = Epilogue::activation_or_bias(self.activation);
        // per pixel: (b, h, w, c_in) -> (b, h, w, c_out * k * k)
        let kernels = self.proj.kernels();
        let pixels =
            match kernels.cpu_f32(&xs.contiguous()?, |x| transpose_items(x, b, c_in, h * w)) {
                Some(rows) => Tensor::from_vec(rows, (b, h, w, c_in), &Device::Cpu)?,
                None => xs.permute((0, 2, 3, 1))?,
            };
        let blocks = self.proj.forward(&pixels, epilogue)?;
        if let Some(out) = kernels.cpu_f32(&blocks, |blocks| spread_blocks(blocks, b, h, w, c, k)) {
            return Tensor::from_vec(out, (b, c, h * k, w * k), &Device::Cpu);
        }
        // (b, h, w, c_out, ky, kx) -> (b, c_out, h, ky, w, kx)
        blocks
            .reshape((b, h, w, c, k, k))?
            .permute((0, 3, 1, 4, 2, 5))?
            .contiguous()?
            .reshape((b, c, h * k, w * k))
    }
}

/// Each pixel's (c, k, k) block of a (b, h, w, c * k * k) product to its place in the
/// (b, c, h * k, w * k) image, k output rows (one patch row of one channel) per task.
fn spread_blocks(blocks: &[f32], b: usize, h: usize, w: usize, c: usize, k: usize) -> Vec<f32> {
    let row = w * k;
    // one piece per (item, channel, patch row): k output rows
    // SAFETY: every piece is k whole output rows, each written run by run.
    unsafe {
        written_in_parallel(b * c * h * k * row, k * row, |task, dst| {
            let (item, ch, y) = (task / (c * h), task / h % c, task % h);
            for (ky, line) in dst.chunks_exact_mut(row).enumerate() {
                for (x, run) in line.chunks_exact_mut(k).enumerate() {
                    let src = (((item * h + y) * w + x) * c + ch) * k * k + ky * k;
                    for (v, &s) in run.iter_mut().zip(&blocks[src..src + k]) {
                        v.write(s);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{randn, rel_diff};
    use super::*;
    use crate::models::KernelPath;
    use candle_core::{DType, Module};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// A module's `weight` and `bias`, as a checkpoint holds them, for layers on `kernels`.
    fn weight_and_bias(weight: &Tensor, bias: &Tensor, kernels: KernelPath) -> ModelVars<'static> {
        let tensors = HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ]);
        ModelVars::new(
            VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
            kernels,
        )
    }

    #[test]
    fn matches_the_strided_conv() {
        let (c, d, p) = (3, 8, 4);
        let weight = randn(&[d, c, p, p]);
        let bias = randn(&[d]);
        let vb = weight_and_bias(&weight, &bias, KernelPath::Native);
        let cfg = candle_nn::Conv2dConfig {
            stride: p,
            ..Default::default()
        };
        for with_bias in [false, true] {
            let ours = PatchEmbedding::new(vb.clone(), c, d, p, with_bias).unwrap();
            let conv = candle_nn::Conv2d::new(weight.clone(), with_bias.then(|| bias.clone()), cfg);
            // 18 x 13: partial patches at the edges are dropped
            let px = randn(&[2, c, 18, 13]);
            let want = conv
                .forward(&px)
                .unwrap()
                .flatten_from(2)
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            // f32: the gathered rows; f32 on the generic path and f64: candle ops
            for (dtype, kernels) in [
                (DType::F32, KernelPath::Native),
                (DType::F32, KernelPath::Generic),
                (DType::F64, KernelPath::Native),
            ] {
                let got = PatchEmbedding {
                    proj: FusedLinear::new(
                        weight
                            .reshape((d, c * p * p))
                            .unwrap()
                            .to_dtype(dtype)
                            .unwrap(),
                        if with_bias {
                            bias.clone()
                        } else {
                            bias.zeros_like().unwrap()
                        }
                        .to_dtype(dtype)
                        .unwrap(),
                        kernels,
                    )
                    .unwrap(),
                    ..ours.clone()
                }
                .forward(&px.to_dtype(dtype).unwrap())
                .unwrap();
                assert_eq!(got.dims(), [2, 4 * 3, d]);
                assert!(
                    rel_diff(&got, &want) < 1e-5,
                    "{dtype:?} {kernels:?} bias {with_bias}"
                );
            }
        }
        let ours = PatchEmbedding::new(vb, c, d, p, true).unwrap();
        assert!(ours.forward(&randn(&[1, 2, 8, 8])).is_err());
        assert!(ours.forward(&randn(&[1, 3, 3, 8])).is_err());
    }

    #[test]
    fn expansion_matches_the_strided_transposed_conv() {
        let (c_in, c_out, k) = (6, 3, 4);
        let weight = randn(&[c_in, c_out, k, k]);
        let bias = randn(&[c_out]);
        let cfg = candle_nn::ConvTranspose2dConfig {
            stride: k,
            ..Default::default()
        };
        let conv = candle_nn::ConvTranspose2d::new(weight.clone(), Some(bias.clone()), cfg);
        let xs = randn(&[2, c_in, 5, 7]);
        let want = conv.forward(&xs).unwrap();
        for kernels in [KernelPath::Native, KernelPath::Generic] {
            let vb = weight_and_bias(&weight, &bias, kernels);
            for act in [None, Some(Activation::Relu)] {
                let ours = PatchExpansion::new(vb.clone(), c_in, c_out, k, act).unwrap();
                let got = ours.forward(&xs).unwrap();
                assert_eq!(got.dims(), [2, c_out, 20, 28]);
                let want = match act {
                    Some(a) => a.forward(&want).unwrap(),
                    None => want.clone(),
                };
                assert!(rel_diff(&got, &want) < 1e-5, "{kernels:?} {act:?}");
            }
        }
    }
}
