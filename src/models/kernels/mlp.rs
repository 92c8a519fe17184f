//! [`FusedMlp`]: a transformer layer's MLP with its residual, `residual + fc2(act(fc1(x)))`.
//!
//! Where the weights are small next to the hidden activations (CLIPSeg's decoder: 64 -> 2048
//! -> 64 over ~2000 tokens, 1 MiB of weights against 16 MiB of hidden activations), f32 on
//! the CPU runs it in blocks of rows, one rayon task each: a block's hidden activations stay
//! in cache from fc1 through the activation into fc2 instead of making three passes over
//! memory. Elsewhere (the ViT towers' 768 -> 3072 MLP, whose 19 MiB of weights every block
//! would pack again) it is two threaded matmuls - over all the rows at once, or, where the
//! hidden activations would pass `MAX_HIDDEN` (32 MiB), over a few chunks of rows. With bf16
//! weights ([`crate::models::KernelPath::NativeBf16`]) it is the two products on the bf16
//! kernel, fc1's output activated and rounded to bf16 in cache for fc2.

use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::bf16_gemm::{self, Input};
use super::gemm::{matmul, MatRef};
use super::linear::{prefilled, product_bias_activation};
use super::{cpu_f32_slice, written, Activation, Epilogue, FusedLinear};
use crate::models::ModelVars;

/// Hidden activations per row block: 512 KiB of f32, which stay in a core's L2 cache beside
/// the block's packed weights.
const HIDDEN_BLOCK: usize = 1 << 17;
/// ... but at least this many rows, so that the weights packed per block serve enough rows.
const MIN_BLOCK_ROWS: usize = 16;
/// Row blocks only while both weight matrices together are at most this many floats (1 MiB):
/// every block packs them again.
const MAX_BLOCKED_WEIGHTS: usize = 1 << 18;

/// The threaded path keeps at most this many hidden activations (32 MiB of f32) alive, running
/// larger inputs in chunks of rows. OWLv2's 3601 tokens x 3072 would be 42 MiB, the frame's
/// largest buffer: above glibc's largest mmap threshold, so mapped afresh and zeroed by the
/// kernel at every layer (130 thousand page faults a frame), and the top of the frame's peak
/// memory. Each chunk packs the weights again, so inputs under the bound (OWL-ViT B/16's 2305
/// tokens, 27 MiB) stay whole.
const MAX_HIDDEN: usize = 1 << 23;

/// `nn.Linear(d, inner)`, an activation, `nn.Linear(inner, d)`, plus the residual.
#[derive(Debug, Clone)]
pub struct FusedMlp {
    fc1: FusedLinear,
    fc2: FusedLinear,
    activation: Activation,
}

impl FusedMlp {
    /// From the two linears; `fc2` must map back to `fc1`'s input width.
    pub fn new(fc1: FusedLinear, fc2: FusedLinear, activation: Activation) -> Result<Self> {
        let ((d, inner), (inner2, d2)) = (fc1.dims(), fc2.dims());
        if inner != inner2 || d != d2 {
            bail!("mlp: fc1 {d} -> {inner} and fc2 {inner2} -> {d2} do not chain back to {d}");
        }
        Ok(Self {
            fc1,
            fc2,
            activation,
        })
    }

    /// transformers' `CLIPMLP` layout: `fc1` (d -> inner) and `fc2` (inner -> d) under `vb`.
    pub fn load(vb: ModelVars, d: usize, inner: usize, activation: Activation) -> Result<Self> {
        Self::new(
            FusedLinear::load(d, inner, vb.pp("fc1"))?,
            FusedLinear::load(inner, d, vb.pp("fc2"))?,
            activation,
        )
    }

    /// `residual + fc2(act(fc1(xs)))`, (.., d) -> (.., d); `residual` has `xs`'s shape. `xs` is
    /// taken so that it is freed before `fc2` allocates its output.
    pub fn forward(&self, xs: Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(out) = self.forward_blocked(&xs, residual)? {
            return Ok(out);
        }
        if let Some(out) = self.forward_chunked(&xs, residual)? {
            return Ok(out);
        }
        if let Some(out) = self.forward_bf16_fused(&xs, residual)? {
            return Ok(out);
        }
        if let Some(out) = self.forward_bf16_chunked(&xs, residual)? {
            return Ok(out);
        }
        let hidden = self
            .fc1
            .forward(&xs, Epilogue::Activation(self.activation))?;
        drop(xs);
        self.fc2.forward(&hidden, Epilogue::Residual(residual))
    }

    /// The row-block path, or `None` where it does not apply (large weights, or operands that
    /// are not f32 on the CPU; mismatched shapes are left to the two-linear path's errors).
    fn forward_blocked(&self, xs: &Tensor, residual: &Tensor) -> Result<Option<Tensor>> {
        let (d, inner) = self.fc1.dims();
        if 2 * d * inner > MAX_BLOCKED_WEIGHTS {
            return Ok(None);
        }
        let block = (HIDDEN_BLOCK / inner.max(1)).max(MIN_BLOCK_ROWS);
        self.prefilled_output(xs, residual, |x, out, fc1, w2| {
            out.par_chunks_mut(block * d)
                .enumerate()
                .for_each(|(i, out)| {
                    let n = out.len() / d;
                    let x = &x[i * block * d..][..n * d];
                    self.block(x, out, n, fc1, w2);
                });
        })
    }

    /// The threaded path in chunks of rows, or `None` where the hidden activations fit
    /// [`MAX_HIDDEN`] whole or the operands are not f32 on the CPU (the two-linear path).
    fn forward_chunked(&self, xs: &Tensor, residual: &Tensor) -> Result<Option<Tensor>> {
        let (d, inner) = self.fc1.dims();
        let rows = xs.elem_count() / d.max(1);
        let chunks = (rows * inner).div_ceil(MAX_HIDDEN);
        if chunks <= 1 {
            return Ok(None);
        }
        let chunk_rows = rows.div_ceil(chunks);
        self.prefilled_output(xs, residual, |x, out, (w1, b1), w2| {
            for first in (0..rows).step_by(chunk_rows) {
                let n = chunk_rows.min(rows - first);
                let hidden = product_bias_activation(
                    MatRef::row_major(&x[first * d..], n, d),
                    MatRef::row_major(w1, d, inner),
                    b1,
                    self.activation,
                );
                matmul(
                    &mut out[first * d..],
                    d,
                    MatRef::row_major(&hidden, n, inner),
                    MatRef::row_major(w2, inner, d),
                    true,
                    true,
                );
            }
        })
    }

    /// bf16 weights on a CPU with AVX512-BF16: fc1's output activated and rounded to bf16 in
    /// cache, panel by panel ([`bf16_gemm::matmul_bias_act_rounded`]), and fc2 reading it as
    /// it is ([`bf16_gemm::linear`] on [`Input::Pairs`]) onto its bias and the residual
    /// (instead of fc1's f32 output written, activated in place and read again to round it:
    /// OWL-ViT B/16's frames 1.065x faster). The same values as the two linears; in chunks of
    /// rows where the hidden layer's pairs would pass [`MAX_HIDDEN`] dwords (32 MiB). `None`
    /// elsewhere.
    fn forward_bf16_fused(&self, xs: &Tensor, residual: &Tensor) -> Result<Option<Tensor>> {
        if !bf16_gemm::supported() {
            return Ok(None);
        }
        let (d, inner) = self.fc1.dims();
        let activation = self.activation;
        let act = move |y: &mut [f32]| activation.apply_slice(y);
        self.cpu_output(xs, residual, |x, r| {
            let rows = x.len() / d.max(1);
            let chunks = (rows * inner.div_ceil(2)).div_ceil(MAX_HIDDEN).max(1);
            let chunk = rows.div_ceil(chunks).max(1) * d;
            self.fc1
                .with_bf16(|w1, b1| {
                    self.fc2.with_bf16(|w2, b2| {
                        // SAFETY: `linear` writes every element of each chunk of rows, and
                        // the chunks tile the output.
                        unsafe {
                            written(rows * d, |out| {
                                // one chunk after the other: a chunk's hidden layer uses the pool
                                for (i, out) in out.chunks_mut(chunk).enumerate() {
                                    let n = out.len() / d;
                                    let (x, r) =
                                        (&x[i * chunk..][..n * d], &r[i * chunk..][..n * d]);
                                    let hidden = bf16_gemm::matmul_bias_act_rounded(
                                        x, n, w1, b1, &act, true,
                                    );
                                    let hidden = Input::Pairs(&hidden);
                                    bf16_gemm::linear(out, hidden, n, w2, b2, Some(r), true);
                                }
                            })
                        }
                    })
                })
                .flatten()
        })
    }

    /// bf16 weights without AVX512-BF16 (the emulated path of the tests): the two linears
    /// over chunks of rows where the hidden activations would pass [`MAX_HIDDEN`] (as
    /// [`Self::forward_chunked`]), or `None`.
    fn forward_bf16_chunked(&self, xs: &Tensor, residual: &Tensor) -> Result<Option<Tensor>> {
        let (d, inner) = self.fc1.dims();
        let rows = xs.elem_count() / d.max(1);
        let chunks = (rows * inner).div_ceil(MAX_HIDDEN);
        if !self.fc1.is_bf16() || chunks <= 1 || xs.dims() != residual.dims() {
            return Ok(None);
        }
        let chunk_rows = rows.div_ceil(chunks);
        let (flat, flat_residual) = (xs.reshape((rows, d))?, residual.reshape((rows, d))?);
        let mut outs = Vec::with_capacity(chunks);
        for first in (0..rows).step_by(chunk_rows) {
            let n = chunk_rows.min(rows - first);
            let hidden = self.fc1.forward(
                &flat.narrow(0, first, n)?,
                Epilogue::Activation(self.activation),
            )?;
            let r = flat_residual.narrow(0, first, n)?;
            outs.push(self.fc2.forward(&hidden, Epilogue::Residual(&r))?);
        }
        Ok(Some(Tensor::cat(&outs, 0)?.reshape(xs.dims())?))
    }

    /// The output of the f32 CPU row paths: fc2's bias plus `residual` in every row, to which
    /// `accumulate(x, out, (w1, b1), w2)` adds `act(x @ W1^T + b1) @ W2^T`. `None` on the
    /// generic path, for bf16 weights, and where [`Self::cpu_output`] says so.
    fn prefilled_output(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        accumulate: impl FnOnce(&[f32], &mut [f32], (&[f32], &[f32]), &[f32]),
    ) -> Result<Option<Tensor>> {
        if !self.fc1.kernels().native() {
            return Ok(None);
        }
        let (d, _) = self.fc1.dims();
        self.cpu_output(xs, residual, |x, r| {
            self.fc1
                .with_f32(|w1, b1| {
                    self.fc2.with_f32(|w2, b2| {
                        let mut out = prefilled(x.len() / d.max(1), b2, Some(r), true);
                        accumulate(x, &mut out, (w1, b1), w2);
                        out
                    })
                })
                .flatten()
        })
    }

    /// The output of a CPU row path, `run(x, residual)` on `xs` and `residual` as contiguous
    /// f32 slices of whole rows, shaped as `xs`. `None` where `run` has no path for these
    /// weights, or the operands are not f32 on the CPU or their shapes do not match (the
    /// two-linear path, whose errors name the mismatch).
    fn cpu_output(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        run: impl FnOnce(&[f32], &[f32]) -> Option<Vec<f32>>,
    ) -> Result<Option<Tensor>> {
        let (d, _) = self.fc1.dims();
        if !xs.device().is_cpu()
            || xs.dtype() != DType::F32
            || xs.dims() != residual.dims()
            || xs.dims().last() != Some(&d)
        {
            return Ok(None);
        }
        let (xs, residual) = (xs.contiguous()?, residual.contiguous()?);
        let out = cpu_f32_slice(&xs, |x| cpu_f32_slice(&residual, |r| run(x, r)))
            .flatten()
            .flatten();
        out.map(|out| Tensor::from_vec(out, xs.dims(), &Device::Cpu))
            .transpose()
    }

    /// One block of `n` rows on the calling thread: `out += act(x @ W1^T + b1) @ W2^T`.
    fn block(&self, x: &[f32], out: &mut [f32], n: usize, fc1: (&[f32], &[f32]), w2: &[f32]) {
        let (w1, b1) = fc1;
        let (d, inner) = (x.len() / n, b1.len());
        let mut hidden = prefilled(n, b1, None, false);
        matmul(
            &mut hidden,
            inner,
            MatRef::row_major(x, n, d),
            MatRef::row_major(w1, d, inner),
            true,
            false,
        );
        self.activation.apply_slice(&mut hidden);
        matmul(
            out,
            d,
            MatRef::row_major(&hidden, n, inner),
            MatRef::row_major(w2, inner, d),
            true,
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_diff, randn};
    use super::*;
    use crate::models::KernelPath;

    /// The same random MLP on each of `paths`.
    fn mlps<const N: usize>(d: usize, inner: usize, paths: [KernelPath; N]) -> [FusedMlp; N] {
        let (w1, b1, w2, b2) = (
            randn(&[inner, d]),
            randn(&[inner]),
            randn(&[d, inner]),
            randn(&[d]),
        );
        paths.map(|kernels| {
            let fc = |w: &Tensor, b: &Tensor| FusedLinear::new(w.clone(), b.clone(), kernels);
            FusedMlp::new(
                fc(&w1, &b1).unwrap(),
                fc(&w2, &b2).unwrap(),
                Activation::Relu,
            )
            .unwrap()
        })
    }

    fn mlp(d: usize, inner: usize) -> FusedMlp {
        let [mlp] = mlps(d, inner, [KernelPath::Native]);
        mlp
    }

    /// The same MLP as its two linears, each over all the rows: the reference of the row
    /// paths. Asserts that `got` matches it.
    fn assert_matches_two_linears(mlp: &FusedMlp, xs: &Tensor, residual: &Tensor, got: &Tensor) {
        let hidden = mlp
            .fc1
            .forward(xs, Epilogue::Activation(Activation::Relu))
            .unwrap();
        let two = mlp
            .fc2
            .forward(&hidden, Epilogue::Residual(residual))
            .unwrap();
        assert_eq!(got.dims(), xs.dims());
        assert!(max_diff(got, &two) < 1e-3 * max_diff(&two, &two.zeros_like().unwrap()));
    }

    #[test]
    fn row_blocks_match_the_two_linears() {
        // small weights: row blocks of 64 rows, the last one partial (300 = 4 * 64 + 44)
        let mlp = mlp(8, 2048);
        let xs = randn(&[3, 100, 8]);
        let residual = randn(&[3, 100, 8]);
        let blocked = mlp.forward_blocked(&xs, &residual).unwrap().unwrap();
        assert_matches_two_linears(&mlp, &xs, &residual, &blocked);
        assert_eq!(
            max_diff(&mlp.forward(xs.clone(), &residual).unwrap(), &blocked),
            0.0
        );
    }

    #[test]
    fn row_chunks_match_the_two_linears() {
        // 2100 rows x 4096 hidden: 8.6 M hidden activations, two chunks of 1050 rows
        let mlp = mlp(8, 4096);
        let xs = randn(&[3, 700, 8]);
        let residual = randn(&[3, 700, 8]);
        let chunked = mlp.forward_chunked(&xs, &residual).unwrap().unwrap();
        assert_matches_two_linears(&mlp, &xs, &residual, &chunked);
        // under the bound: whole
        let (xs, residual) = (randn(&[2, 700, 8]), randn(&[2, 700, 8]));
        assert!(mlp.forward_chunked(&xs, &residual).unwrap().is_none());
    }

    #[test]
    fn large_weights_other_dtypes_and_bad_shapes_take_the_two_linears() {
        let xs = randn(&[5, 768]);
        assert!(mlp(768, 3072).forward_blocked(&xs, &xs).unwrap().is_none());
        let small = mlp(8, 32);
        let half = randn(&[5, 8]).to_dtype(DType::BF16).unwrap();
        assert!(small.forward_blocked(&half, &half).unwrap().is_none());
        let (xs, wrong) = (randn(&[5, 8]), randn(&[4, 8]));
        assert!(small.forward_blocked(&xs, &wrong).unwrap().is_none());
        // ... whose error names the mismatch
        let err = small.forward(xs.clone(), &wrong).unwrap_err().to_string();
        assert!(err.contains("residual"), "{err}");
        let fc = |i, o| FusedLinear::new(randn(&[o, i]), randn(&[o]), KernelPath::Native).unwrap();
        assert!(FusedMlp::new(fc(8, 32), fc(16, 8), Activation::Relu).is_err());
    }

    #[test]
    fn the_generic_path_takes_the_two_linears() {
        // the native MLP takes its row chunks here
        let [native, generic] = mlps(8, 4096, [KernelPath::Native, KernelPath::Generic]);
        let (xs, residual) = (randn(&[3, 700, 8]), randn(&[3, 700, 8]));
        assert!(generic.forward_blocked(&xs, &residual).unwrap().is_none());
        assert!(generic.forward_chunked(&xs, &residual).unwrap().is_none());
        let got = generic.forward(xs.clone(), &residual).unwrap();
        let chunked = native.forward_chunked(&xs, &residual).unwrap().unwrap();
        assert_matches_two_linears(&native, &xs, &residual, &chunked);
        assert!(max_diff(&got, &chunked) < 1e-3 * max_diff(&got, &got.zeros_like().unwrap()));
    }

    #[test]
    fn bf16_weights_take_the_two_linears_in_chunks_of_rows() {
        let [f32_mlp, bf16_mlp] = mlps(8, 4096, [KernelPath::Native, KernelPath::NativeBf16]);
        assert!(bf16_mlp.fc1.is_bf16() && bf16_mlp.fc2.is_bf16());
        // 2100 rows x 4096 hidden: two chunks
        let (xs, residual) = (randn(&[3, 700, 8]), randn(&[3, 700, 8]));
        let chunked = bf16_mlp
            .forward_bf16_chunked(&xs, &residual)
            .unwrap()
            .unwrap();
        let hidden = bf16_mlp
            .fc1
            .forward(&xs, Epilogue::Activation(Activation::Relu))
            .unwrap();
        let whole = bf16_mlp
            .fc2
            .forward(&hidden, Epilogue::Residual(&residual))
            .unwrap();
        // the same products, row by row
        assert_eq!(max_diff(&chunked, &whole), 0.0);
        assert_eq!(
            max_diff(&bf16_mlp.forward(xs.clone(), &residual).unwrap(), &whole),
            0.0
        );
        // near f32's: bf16 rounding of 8 + 4096 terms (values ~ 1e2)
        let f32_out = f32_mlp.forward(xs.clone(), &residual).unwrap();
        let d = max_diff(&chunked, &f32_out);
        let scale = max_diff(&f32_out, &f32_out.zeros_like().unwrap());
        assert!(d > 0.0 && d < 2e-2 * scale, "{d} of {scale}");
        // under the bound, and f32 weights: no such path
        let (small, small_r) = (randn(&[2, 700, 8]), randn(&[2, 700, 8]));
        assert!(bf16_mlp
            .forward_bf16_chunked(&small, &small_r)
            .unwrap()
            .is_none());
        assert!(f32_mlp
            .forward_bf16_chunked(&xs, &residual)
            .unwrap()
            .is_none());
    }

    #[test]
    fn bf16_fused_hidden_layer_gives_the_two_linears_values() {
        // where the CPU has AVX512-BF16: fc1's output activated and rounded in cache, bit for
        // bit what the two linears give; a partial last panel (100 = 64 + 36), an odd width
        // (77: a zero-padded last pair), rows that are no multiple of the tile's 6
        for (d, inner, rows, activation) in [
            (48, 100, 131, Activation::QuickGelu),
            (33, 77, 64, Activation::Gelu),
            (16, 256, 7, Activation::GeluTanh),
        ] {
            let (w1, b1) = (randn(&[inner, d]), randn(&[inner]));
            let (w2, b2) = (randn(&[d, inner]), randn(&[d]));
            let fc = |w: &Tensor, b: &Tensor| {
                FusedLinear::new(w.clone(), b.clone(), KernelPath::NativeBf16).unwrap()
            };
            let mlp = FusedMlp::new(fc(&w1, &b1), fc(&w2, &b2), activation).unwrap();
            let (xs, residual) = (randn(&[1, rows, d]), randn(&[1, rows, d]));
            let hidden = mlp
                .fc1
                .forward(&xs, Epilogue::Activation(activation))
                .unwrap();
            let two = mlp
                .fc2
                .forward(&hidden, Epilogue::Residual(&residual))
                .unwrap();
            let fused = mlp.forward_bf16_fused(&xs, &residual).unwrap();
            if !bf16_gemm::supported() {
                assert!(fused.is_none());
                continue;
            }
            let fused = fused.unwrap();
            assert_eq!(fused.dims(), [1, rows, d]);
            assert_eq!(max_diff(&fused, &two), 0.0, "{d} -> {inner}, {rows} rows");
            assert_eq!(
                max_diff(&mlp.forward(xs.clone(), &residual).unwrap(), &two),
                0.0
            );
        }
    }
}
