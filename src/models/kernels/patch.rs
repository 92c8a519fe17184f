//! [`PatchEmbedding`]: the ViT patch embedding, `nn.Conv2d(channels, d, kernel_size=patch,
//! stride=patch)`, as what it is - a linear map of each non-overlapping patch. The patches are
//! gathered into rows (a copy of the pixels, no im2col of overlapping windows) and projected
//! by one [`FusedLinear`] with the conv's weight read as (d, channels * patch * patch).

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::{cpu_f32_slice, Epilogue, FusedLinear};

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
        vb: VarBuilder,
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
            proj: FusedLinear::new(weight, bias)?,
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
        let gathered = cpu_f32_slice(&pixel_values.contiguous()?, |px| {
            let mut rows = vec![0f32; b * gh * gw * row_len];
            rows.par_chunks_mut(row_len)
                .enumerate()
                .for_each(|(index, row)| {
                    let (item, gy, gx) = (index / (gh * gw), index / gw % gh, index % gw);
                    for (ci, channel) in row.chunks_exact_mut(p * p).enumerate() {
                        let plane = (item * c + ci) * h * w;
                        for (py, line) in channel.chunks_exact_mut(p).enumerate() {
                            let start = plane + (gy * p + py) * w + gx * p;
                            line.copy_from_slice(&px[start..start + p]);
                        }
                    }
                });
            rows
        });
        if let Some(rows) = gathered {
            return Tensor::from_vec(rows, (b, gh * gw, row_len), &Device::Cpu);
        }
        // other devices and dtypes: the same gather from candle ops
        pixel_values
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, row_len))
    }

    /// The dtype of the weights (pixels are cast to it).
    pub fn dtype(&self) -> DType {
        self.proj.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_diff, randn};
    use super::*;
    use candle_core::Module;
    use std::collections::HashMap;

    #[test]
    fn matches_the_strided_conv() {
        let (c, d, p) = (3, 8, 4);
        let weight = randn(&[d, c, p, p]);
        let bias = randn(&[d]);
        let tensors = HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
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
            for dtype in [DType::F32, DType::F64] {
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
                    )
                    .unwrap(),
                    ..ours.clone()
                }
                .forward(&px.to_dtype(dtype).unwrap())
                .unwrap();
                assert_eq!(got.dims(), [2, 4 * 3, d]);
                assert!(max_diff(&got, &want) < 1e-5, "{dtype:?} bias {with_bias}");
            }
        }
        let ours = PatchEmbedding::new(vb, c, d, p, true).unwrap();
        assert!(ours.forward(&randn(&[1, 2, 8, 8])).is_err());
        assert!(ours.forward(&randn(&[1, 3, 3, 8])).is_err());
    }
}
