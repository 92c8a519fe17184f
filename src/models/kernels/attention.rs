//! Multi-head self-attention from a fused q/k/v projection, `softmax(q k^T + mask) v` per head
//! (transformers' `eager_attention_forward` with the scaling folded into q at load).
//!
//! f32 on the CPU: with no mask, on AVX-512, heads of 64 over long sequences and heads of 16 or
//! 32 go to the online-softmax kernel ([`super::attention_long`]). Otherwise one rayon task
//! per (batch item, head, block of queries; [`query_blocks`]) computes the block's scores
//! against every key with the `gemm` crate, turns them into the softmax's exponentials in
//! place while they are in cache, multiplies by v and divides each output row by its sum - no
//! score tensor, no transposed copies of q, k or v. Both kernels lay out their tasks with
//! [`head_block_tasks`]. Elsewhere, and on the generic path ([`KernelPath::Generic`]), the same
//! computation runs from candle ops, a few heads at a time ([`MAX_SCORES_ALIVE`]) so that one
//! small score tensor is alive at once.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Device, IndexOp, InplaceOp1, Layout, Result, Tensor};
use rayon::prelude::*;

use super::bf16_gemm::{self, PackedBf16};
use super::gemm::{matmul, MatRef, SharedOut};
use super::{cpu_f32_slice, span_mut, vmath, Elem, KernelPath, TASKS_PER_THREAD};

/// At most this many scores (4 MiB in f32) per task of the CPU kernel: whole heads up to
/// 1024 tokens (OWL-ViT B/32: 577), blocks of 277 queries at OWLv2's 3601 tokens.
pub const MAX_TASK_SCORES: usize = 1 << 20;
/// Heads split for load balance ([`query_blocks`]) keep at least this many queries a block:
/// every block multiplies against all of k and v, which the matmul packs again per block
/// (small blocks were measured slower).
const MIN_QUERY_BLOCK: usize = 128;

/// How many blocks to split each head's `queries` into, for `heads` (item, head) pairs and
/// `keys` keys.
fn query_blocks(heads: usize, queries: usize, keys: usize) -> usize {
    let for_balance = (TASKS_PER_THREAD * super::pool_threads()).div_ceil(heads.max(1));
    let for_balance = for_balance.min(queries.div_ceil(MIN_QUERY_BLOCK));
    let for_memory = (queries * keys).div_ceil(MAX_TASK_SCORES);
    for_balance.max(for_memory).clamp(1, queries.max(1))
}

/// Block `block` of `n` queries split into `blocks` (at most `n`): its first query and its
/// length, `n / blocks` give or take one, so that no block is empty.
fn block_rows(block: usize, blocks: usize, n: usize) -> (usize, usize) {
    let first = block * n / blocks;
    (first, (block + 1) * n / blocks - first)
}

/// The candle-op path attends heads in chunks with at most this many scores alive (4 MiB in
/// f32); one head at a time past it.
pub const MAX_SCORES_ALIVE: usize = 1 << 20;

/// Which keys each query sees.
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Every key (vision towers).
    None,
    /// Query `i` sees keys `0..=i` (`_create_4d_causal_attention_mask`; the text towers).
    Causal,
    /// Added to every query's scores, per key: (b, n) f32, 0 for a key attended and a large
    /// negative value for padding (`create_bidirectional_mask`; ViLT).
    KeyBias(&'a Tensor),
}

/// Attention over `qkv` (b, n, 3, heads, head_dim): q (already scaled by `head_dim^-0.5`),
/// k and v of every token, on `kernels`. Returns the heads side by side, (b, n, heads *
/// head_dim).
pub fn attention(qkv: &Tensor, mask: AttentionMask, kernels: KernelPath) -> Result<Tensor> {
    attention_of_first(qkv, mask, qkv.dim(1)?, kernels)
}

/// [`attention`] for the first `queries` tokens only, against the keys and values of all of
/// them: (b, queries, heads * head_dim). A last layer whose model reads only its first token
/// (a pooler on `[CLS]`) needs no more.
pub fn attention_of_first(
    qkv: &Tensor,
    mask: AttentionMask,
    queries: usize,
    kernels: KernelPath,
) -> Result<Tensor> {
    let (b, n, three, heads, head_dim) = qkv.dims5()?;
    if three != 3 {
        bail!(
            "attention: expected q, k and v on dimension 2, got {:?}",
            qkv.dims()
        );
    }
    if queries > n {
        bail!("attention: {queries} queries asked of {n} tokens");
    }
    if let AttentionMask::KeyBias(bias) = mask {
        if bias.dims() != [b, n] {
            bail!(
                "attention: key mask {:?} for {b} items of {n} tokens",
                bias.dims()
            );
        }
    }
    if kernels.native() {
        let bf16 = kernels == KernelPath::NativeBf16;
        if let Some(out) = attention_f32_cpu(qkv, mask, queries, bf16)? {
            return Tensor::from_vec(out, (b, queries, heads * head_dim), &Device::Cpu);
        }
    }
    attention_candle(qkv, mask, queries, kernels)
}

thread_local! {
    /// Each worker thread's score block, reused across tasks and calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The CPU kernel; `None` when `qkv` is not a contiguous f32 CPU tensor. Output
/// (b, queries, d): every task writes its queries' columns of its head. `bf16`: its two
/// products on [`bf16_gemm`] (the bf16-weights path), q, k, v and the exponentials rounded to
/// bf16 at the products, which accumulate in f32; the online-softmax kernel
/// ([`super::attention_long`]) rounds the same where the CPU has AVX512-BF16 (elsewhere, in
/// the tests of the emulated path, it stays f32).
fn attention_f32_cpu(
    qkv: &Tensor,
    mask: AttentionMask,
    queries: usize,
    bf16: bool,
) -> Result<Option<Vec<f32>>> {
    let (b, n, _, heads, hd) = qkv.dims5()?;
    if !qkv.device().is_cpu() || qkv.dtype() != DType::F32 {
        return Ok(None);
    }
    let key_bias = match mask {
        AttentionMask::KeyBias(bias) => {
            Some(bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        }
        _ => None,
    };
    #[cfg(target_arch = "x86_64")]
    if matches!(mask, AttentionMask::None) && super::attention_long::applies(hd, n) {
        return Ok(cpu_f32_slice(qkv, |qkv| {
            let bf16 = bf16 && bf16_gemm::supported();
            super::attention_long::attention(qkv, b, n, heads, hd, queries, bf16)
        }));
    }
    let causal = matches!(mask, AttentionMask::Causal);
    let d = heads * hd;
    let token = 3 * d; // one token's q, k and v
    let blocks = query_blocks(b * heads, queries, n);
    Ok(cpu_f32_slice(qkv, |qkv| {
        let task = |shared: &SharedOut, _: &(), item: usize, head: usize, block: usize| {
            let (first, m) = block_rows(block, blocks, queries);
            let base = item * n * token + head * hd;
            let q = MatRef {
                data: &qkv[base + first * token..],
                rows: m,
                cols: hd,
                row_stride: token,
                col_stride: 1,
            };
            // k^T: (hd, n), read from k's rows
            let k_t = MatRef {
                data: &qkv[base + d..],
                rows: hd,
                cols: n,
                row_stride: 1,
                col_stride: token,
            };
            let v = MatRef {
                data: &qkv[base + 2 * d..],
                rows: n,
                cols: hd,
                row_stride: token,
                col_stride: 1,
            };
            let key_bias = key_bias.as_deref().map(|k| &k[item * n..(item + 1) * n]);
            SCORES.with(|scores| {
                let mut scores = scores.borrow_mut();
                scores.resize(m * n, 0.0);
                let scores = &mut scores[..m * n];
                matmul(scores, n, q, k_t, false, false);
                let inv_sums = exponentials(scores, n, key_bias, causal.then_some(first));
                let exps = MatRef::row_major(scores, m, n);
                // SAFETY: each task writes its own queries' columns of its own head, while
                // `out` is borrowed by `shared` alone.
                unsafe {
                    let row = item * queries + first;
                    shared.matmul_into(row, head * hd, exps, v, false);
                    shared.scale_rows(row, head * hd, hd, &inv_sums);
                }
            });
        };
        // q, k or v (`which` 0, 1, 2) of token `t` of (item, head)
        let row = |item: usize, head: usize, which: usize, t: usize| {
            &qkv[(item * n + t) * token + which * d + head * hd..][..hd]
        };
        // k^T (hd, n) and v (n, hd) of each (item, head), rounded and packed for the kernel once
        // for all of its blocks of queries
        let pack = |pairs: Range<usize>| -> Vec<(PackedBf16, PackedBf16)> {
            pairs
                .into_par_iter()
                .map(|pair| {
                    let (item, head) = (pair / heads, pair % heads);
                    (
                        PackedBf16::from_rows_of_transposed(n, hd, |t| row(item, head, 1, t)),
                        PackedBf16::from_rows(n, hd, |t| row(item, head, 2, t)),
                    )
                })
                .collect()
        };
        let task_bf16 = |shared: &SharedOut,
                         packed: &Vec<(PackedBf16, PackedBf16)>,
                         item: usize,
                         head: usize,
                         block: usize| {
            let (first, m) = block_rows(block, blocks, queries);
            // one group holds every (item, head) pair
            let (k_t, v) = &packed[item * heads + head];
            let key_bias = key_bias.as_deref().map(|k| &k[item * n..(item + 1) * n]);
            SCORES.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                // the block's queries (contiguous), its scores, its unnormalised outputs
                scratch.clear();
                scratch.resize(m * (n + 2 * hd), 0.0);
                let (q, rest) = scratch.split_at_mut(m * hd);
                let (scores, out) = rest.split_at_mut(m * n);
                for (i, q) in q.chunks_exact_mut(hd).enumerate() {
                    q.copy_from_slice(row(item, head, 0, first + i));
                }
                bf16_gemm::matmul(scores, q, m, k_t, false);
                let inv_sums = exponentials(scores, n, key_bias, causal.then_some(first));
                bf16_gemm::matmul(out, scores, m, v, false);
                for (i, (line, inv)) in out.chunks_exact_mut(hd).zip(inv_sums).enumerate() {
                    line.iter_mut().for_each(|x| *x *= inv);
                    // SAFETY: each task writes its own queries' columns of its own head, while
                    // `out` is borrowed by `shared` alone.
                    unsafe { shared.write_row(item * queries + first + i, head * hd, line) };
                }
            });
        };
        let (shape, out) = ((b, heads, blocks), (queries, d));
        // SAFETY: each product overwrites its block (`accumulate` false); each bf16 task
        // writes every row of its block.
        unsafe {
            if bf16 {
                head_block_tasks(shape, out, b * heads, pack, task_bf16)
            } else {
                head_block_tasks(shape, out, b * heads, |_| (), task)
            }
        }
    }))
}

/// The softmax's exponentials of a block's `scores` (rows of `n`), in place: the key bias
/// added, each row's keys past the causal limit (`first` + its index, when `causal_first` is
/// the block's first query) left out. Returns each row's `1 / sum`: the outputs are divided
/// by it after the product with v (m x head_dim divisions instead of m x n).
fn exponentials(
    scores: &mut [f32],
    n: usize,
    key_bias: Option<&[f32]>,
    causal_first: Option<usize>,
) -> Vec<f32> {
    scores
        .chunks_exact_mut(n)
        .enumerate()
        .map(|(i, row)| {
            if let Some(bias) = key_bias {
                vmath::add_row(row, bias);
            }
            let valid = causal_first.map_or(n, |first| first + i + 1);
            1.0 / vmath::exp_row(row, valid)
        })
        .collect()
}

/// The (b, queries, d) output of one task per (item, head, block of queries), in parallel:
/// `task(out, &state, item, head, block)` writes its block's rows of its head's columns
/// through `out`. The (item, head) pairs run in groups of `group`, in order, each group's
/// tasks in one parallel region after `prepare(pairs)` made the group's `state` (the pairs
/// numbered `item * heads + head`): what a kernel derives per head is alive for one group.
///
/// # Safety
/// The tasks must write every element of their blocks, and the blocks tile the output.
pub(super) unsafe fn head_block_tasks<S: Sync>(
    (b, heads, blocks): (usize, usize, usize),
    (queries, d): (usize, usize),
    group: usize,
    prepare: impl Fn(Range<usize>) -> S,
    task: impl Fn(&SharedOut, &S, usize, usize, usize) + Sync,
) -> Vec<f32> {
    let len = b * queries * d;
    let mut out = Vec::with_capacity(len);
    let shared = SharedOut::new_uninit(&mut out.spare_capacity_mut()[..len], d);
    let pairs = b * heads;
    let group = group.clamp(1, pairs.max(1));
    for first in (0..pairs).step_by(group) {
        let pairs = first..(first + group).min(pairs);
        let state = prepare(pairs.clone());
        (pairs.start * blocks..pairs.end * blocks)
            .into_par_iter()
            .for_each(|i| {
                let pair = i / blocks;
                task(&shared, &state, pair / heads, pair % heads, i % blocks)
            });
    }
    // SAFETY: the tasks wrote every element (the caller's promise).
    unsafe { out.set_len(len) };
    out
}

/// The same computation from candle ops (other devices and dtypes, and the generic path).
fn attention_candle(
    qkv: &Tensor,
    mask: AttentionMask,
    queries: usize,
    kernels: KernelPath,
) -> Result<Tensor> {
    let (b, n, _, heads, head_dim) = qkv.dims5()?;
    // candle's CPU matmul reads strided heads; other backends want them contiguous, and the
    // generic path does what they do.
    let strided = kernels.native() && qkv.device().is_cpu();
    let chunk = (MAX_SCORES_ALIVE / (n * n).max(1)).clamp(1, heads.max(1));
    let mut outputs = Vec::with_capacity(b);
    for item in 0..b {
        let item_qkv = qkv.narrow(0, item, 1)?;
        let key_bias = match mask {
            AttentionMask::KeyBias(bias) => Some(
                bias.narrow(0, item, 1)?
                    .reshape((1, 1, 1, n))?
                    .to_dtype(qkv.dtype())?,
            ),
            _ => None,
        };
        let mut parts = Vec::with_capacity(heads.div_ceil(chunk));
        for first in (0..heads).step_by(chunk) {
            let count = chunk.min(heads - first);
            // (1, count, tokens, head_dim): the first `queries` tokens of q, all of k and v
            let head = |which: usize, tokens: usize| -> Result<Tensor> {
                let t = item_qkv
                    .i((.., ..tokens, which))?
                    .narrow(2, first, count)?
                    .transpose(1, 2)?;
                if strided {
                    Ok(t)
                } else {
                    t.contiguous()
                }
            };
            let (q, k, v) = (head(0, queries)?, head(1, n)?, head(2, n)?);
            // (1, count, queries, n), scaled through q
            let mut scores = q.matmul(&k.t()?)?;
            if let Some(bias) = &key_bias {
                scores = scores.broadcast_add(bias)?;
            }
            let probs = softmax_last_dim_(scores, matches!(mask, AttentionMask::Causal), kernels)?;
            let out = probs.matmul(&v)?;
            drop(probs);
            parts.push(
                out.transpose(1, 2)?
                    .reshape((1, queries, count * head_dim))?,
            );
        }
        outputs.push(match parts.len() {
            1 => parts.swap_remove(0),
            // the heads side by side: (1, queries, heads * head_dim)
            _ => Tensor::cat(&parts, 2)?,
        });
    }
    match outputs.len() {
        1 => Ok(outputs.swap_remove(0)),
        _ => Tensor::cat(&outputs, 0),
    }
}

/// Softmax over the last dimension of `scores`, written over them on the CPU's native path
/// (candle's op, in f32, elsewhere). `causal`: the scores are (.., m, n), the first m of n
/// queries, and query `i` only sees keys `0..=i`, as transformers' causal mask (`finfo.min`
/// added above the diagonal: those probabilities are exactly 0).
pub fn softmax_last_dim_(scores: Tensor, causal: bool, kernels: KernelPath) -> Result<Tensor> {
    let n = scores.dim(candle_core::D::Minus1)?;
    let m = scores.dim(candle_core::D::Minus2)?;
    if causal && m > n {
        bail!(
            "causal softmax: {m} queries of {n} tokens, scores {:?}",
            scores.shape()
        );
    }
    if kernels.has_kernel(&scores) && scores.is_contiguous() {
        scores.inplace_op1(&Softmax { causal })?;
        return Ok(scores);
    }
    let dtype = scores.dtype();
    let mut scores = scores.to_dtype(DType::F32)?;
    if causal {
        let mask: Vec<f32> = (0..m)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (m, n), scores.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)
}

/// Row-wise softmax over the last dimension, in place.
struct Softmax {
    causal: bool,
}

impl Softmax {
    /// Keys row `r` of the scores sees: rows of the (m, n) blocks are queries 0..m in turn.
    fn valid_keys(&self, layout: &Layout, r: usize) -> usize {
        let dims = layout.dims();
        let (m, n) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if self.causal {
            r % m + 1
        } else {
            n
        }
    }

    fn run<T: Elem>(&self, data: &mut [T], layout: &Layout) {
        let dims = layout.dims();
        let n = dims[dims.len() - 1];
        data.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            let valid = self.valid_keys(layout, r);
            let mut f: Vec<f32> = row.iter().map(|x| x.to_f32()).collect();
            vmath::softmax_row(&mut f, valid);
            for (x, p) in row.iter_mut().zip(f) {
                *x = T::from_f32(p);
            }
        });
    }
}

impl InplaceOp1 for Softmax {
    fn name(&self) -> &'static str {
        "attention-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let op = InplaceOp1::name(self);
        match storage {
            CpuStorage::F32(d) => {
                let n = layout.dims()[layout.dims().len() - 1];
                span_mut(d, layout, op)?
                    .par_chunks_mut(n)
                    .enumerate()
                    .for_each(|(r, row)| vmath::softmax_row(row, self.valid_keys(layout, r)));
            }
            CpuStorage::F16(d) => self.run(span_mut(d, layout, op)?, layout),
            CpuStorage::BF16(d) => self.run(span_mut(d, layout, op)?, layout),
            d => bail!("{op}: unsupported dtype {:?}", d.dtype()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_diff, randn};
    use super::*;
    use candle_core::D;

    /// The textbook formulation, in f64: per item and head, softmax(q k^T + mask) v.
    fn reference(qkv: &Tensor, mask: AttentionMask) -> Tensor {
        let (b, n, _, heads, hd) = qkv.dims5().unwrap();
        let qkv = qkv.to_dtype(DType::F64).unwrap();
        let part = |which: usize| {
            qkv.i((.., .., which))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let mut scores = q.matmul(&k.t().unwrap()).unwrap();
        match mask {
            AttentionMask::None => {}
            AttentionMask::Causal => {
                let m: Vec<f64> = (0..n)
                    .flat_map(|i| (0..n).map(move |j| if j > i { -1e300 } else { 0.0 }))
                    .collect();
                let m = Tensor::from_vec(m, (n, n), &Device::Cpu).unwrap();
                scores = scores.broadcast_add(&m).unwrap();
            }
            AttentionMask::KeyBias(bias) => {
                let bias = bias
                    .to_dtype(DType::F64)
                    .unwrap()
                    .reshape((b, 1, 1, n))
                    .unwrap();
                scores = scores.broadcast_add(&bias).unwrap();
            }
        }
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, n, heads * hd))
            .unwrap()
    }

    #[test]
    fn kernel_and_candle_paths_match_the_textbook_formula() {
        // 1100 tokens: split into query blocks whatever the thread count (the scores of a
        // head exceed MAX_TASK_SCORES); 7 tokens: one block
        assert!(query_blocks(2, 1100, 1100) >= 2);
        for (b, n, heads, hd) in [(1, 1100, 2, 8), (2, 150, 3, 8), (3, 7, 2, 4)] {
            let qkv = randn(&[b, n, 3, heads, hd]);
            let pad: Vec<f32> = (0..b * n)
                .map(|i| if i % n >= n - 2 { f32::MIN } else { 0.0 })
                .collect();
            let pad = Tensor::from_vec(pad, (b, n), &Device::Cpu).unwrap();
            for mask in [
                AttentionMask::None,
                AttentionMask::Causal,
                AttentionMask::KeyBias(&pad),
            ] {
                let want = reference(&qkv, mask);
                let kernel = attention(&qkv, mask, KernelPath::Native).unwrap();
                assert_eq!(kernel.dims(), [b, n, heads * hd]);
                let d = max_diff(&kernel, &want);
                assert!(d < 2e-5, "kernel {mask:?} ({b}, {n}): {d}");
                // f64 takes the candle-op path (its softmax in f32)
                let fallback =
                    attention(&qkv.to_dtype(DType::F64).unwrap(), mask, KernelPath::Native)
                        .unwrap();
                let d = max_diff(&fallback, &want);
                assert!(d < 2e-5, "candle path {mask:?} ({b}, {n}): {d}");
                // f32 on the generic path: candle ops on contiguous heads, as a GPU runs them
                let generic = attention(&qkv, mask, KernelPath::Generic).unwrap();
                let d = max_diff(&generic, &want);
                assert!(d < 2e-5, "generic path {mask:?} ({b}, {n}): {d}");
                // bf16: candle's matmul with the in-place softmax, or candle's softmax
                for kernels in [KernelPath::Native, KernelPath::Generic] {
                    let half = attention(&qkv.to_dtype(DType::BF16).unwrap(), mask, kernels);
                    let d = max_diff(&half.unwrap(), &want);
                    assert!(d < 0.1, "bf16 {kernels:?} {mask:?}: {d}");
                }
                // the bf16-weights path: both products on the bf16 kernel (q, k, v and the
                // exponentials rounded to bf16, the sums in f32)
                let bf16 = attention(&qkv, mask, KernelPath::NativeBf16).unwrap();
                let d = max_diff(&bf16, &want);
                assert!(
                    d > 0.0 && d < 0.05,
                    "bf16 products {mask:?} ({b}, {n}): {d}"
                );
                // the first queries alone: the same rows, on every path
                for queries in [1, n / 2 + 1] {
                    let first =
                        attention_of_first(&qkv, mask, queries, KernelPath::NativeBf16).unwrap();
                    let rows = bf16.narrow(1, 0, queries).unwrap();
                    assert_eq!(
                        max_diff(&first, &rows),
                        0.0,
                        "bf16 first {queries} {mask:?}"
                    );
                    let want = want.narrow(1, 0, queries).unwrap();
                    for (qkv, kernels) in [
                        (qkv.clone(), KernelPath::Native),
                        (qkv.clone(), KernelPath::Generic),
                        (qkv.to_dtype(DType::F64).unwrap(), KernelPath::Native),
                    ] {
                        let first = attention_of_first(&qkv, mask, queries, kernels).unwrap();
                        assert_eq!(first.dims(), [b, queries, heads * hd]);
                        let d = max_diff(&first, &want);
                        assert!(
                            d < 2e-5,
                            "first {queries} {mask:?} {:?} {kernels:?}: {d}",
                            qkv.dtype()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn online_softmax_kernel_matches_the_textbook_formula() {
        // where the CPU has AVX-512: heads of 64 over 1100 tokens (17 whole panels of keys and
        // one of 12; blocks of queries with a partial last tile), heads of 16 and 32 over 150
        // and 70 (panels of 64 and 22 or 6 keys). Scaled by 1.5, the scores are peaked
        // (maxima that grow across panels, terms below the negligible range), and the scores'
        // own f32 rounding reaches 4e-5 in the outputs (in the two-pass kernel as well).
        for (b, n, heads, hd) in [(2, 1100, 2, 64), (3, 150, 2, 16), (2, 70, 3, 32)] {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert!(super::super::attention_long::applies(hd, n));
            }
            for (scale, tolerance, bf16_tolerance) in [(0.25, 2e-5, 4e-4), (1.5, 1e-4, 1.5e-2)] {
                let qkv = (randn(&[b, n, 3, heads, hd]) * scale).unwrap();
                let want = reference(&qkv, AttentionMask::None);
                let kernel = attention(&qkv, AttentionMask::None, KernelPath::Native).unwrap();
                assert_eq!(kernel.dims(), [b, n, heads * hd]);
                let d = max_diff(&kernel, &want);
                assert!(d < tolerance, "{n} x {hd}, scale {scale}: {d}");
                for queries in [1, 97.min(n), n - 1] {
                    let first =
                        attention_of_first(&qkv, AttentionMask::None, queries, KernelPath::Native)
                            .unwrap();
                    let d = max_diff(&first, &want.narrow(1, 0, queries).unwrap());
                    assert!(
                        d < tolerance,
                        "{n} x {hd}, scale {scale}, first {queries}: {d}"
                    );
                }
                // bf16 (where the CPU has AVX512-BF16; f32 elsewhere): against the formula on
                // q, k and v rounded to bf16, the rounding of the exponentials alone (measured
                // 6.8e-5 to 2.0e-4 and 4.3e-3 to 5.8e-3 at the two scales)
                let bf16 = attention(&qkv, AttentionMask::None, KernelPath::NativeBf16).unwrap();
                if super::bf16_gemm::supported() {
                    let rounded = qkv.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32);
                    let want = reference(&rounded.unwrap(), AttentionMask::None);
                    let d = max_diff(&bf16, &want);
                    assert!(d < bf16_tolerance, "bf16 {n} x {hd}, scale {scale}: {d}");
                    // not the f32 kernel's values: the bf16 one ran
                    assert!(max_diff(&bf16, &kernel) > 1e-4, "bf16 {n} x {hd}");
                } else {
                    assert_eq!(
                        max_diff(&bf16, &kernel),
                        0.0,
                        "{n} x {hd}: f32 without bf16"
                    );
                }
                for queries in [1, 97.min(n), n - 1] {
                    let first = attention_of_first(
                        &qkv,
                        AttentionMask::None,
                        queries,
                        KernelPath::NativeBf16,
                    )
                    .unwrap();
                    let rows = bf16.narrow(1, 0, queries).unwrap();
                    assert_eq!(max_diff(&first, &rows), 0.0, "bf16 first {queries}");
                }
            }
        }
    }

    #[test]
    fn query_blocks_tile_the_queries_without_empty_blocks() {
        // 82 blocks of 2305 queries: ceil(2305 / 82) = 29 per block would leave the last
        // blocks past the end (the kernel once sliced out of bounds there)
        for (blocks, n) in [(82, 2305), (1, 7), (7, 7), (6, 2305), (5, 577)] {
            let mut next = 0;
            for block in 0..blocks {
                let (first, m) = block_rows(block, blocks, n);
                assert_eq!(first, next, "{blocks} blocks of {n}");
                assert!(
                    m >= n / blocks && m <= n.div_ceil(blocks),
                    "{blocks} of {n}: {m}"
                );
                next = first + m;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let native = KernelPath::Native;
        assert!(attention(&randn(&[1, 4, 2, 2, 3]), AttentionMask::None, native).is_err());
        let wrong = randn(&[1, 5]);
        let mask = AttentionMask::KeyBias(&wrong);
        assert!(attention(&randn(&[1, 4, 3, 2, 3]), mask, native).is_err());
        let err = attention_of_first(&randn(&[1, 4, 3, 2, 3]), AttentionMask::None, 5, native)
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 queries asked of 4 tokens"), "{err}");
    }

    #[test]
    fn softmax_matches_candle_with_and_without_causal_mask() {
        let scores = randn(&[3, 7, 7]);
        let reference = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let ours = softmax_last_dim_(scores.copy().unwrap(), false, KernelPath::Native).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);

        let mask: Vec<f32> = (0..7)
            .flat_map(|i| (0..7).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (7, 7), &Device::Cpu).unwrap();
        let reference =
            candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        let ours = softmax_last_dim_(scores.copy().unwrap(), true, KernelPath::Native).unwrap();
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
        // the first 4 of 7 queries: the first 4 rows of the square case
        let first = softmax_last_dim_(
            scores.narrow(1, 0, 4).unwrap().copy().unwrap(),
            true,
            KernelPath::Native,
        )
        .unwrap();
        assert!(max_diff(&first, &ours.narrow(1, 0, 4).unwrap()) < 1e-6);
        let wide = scores
            .narrow(1, 0, 4)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let first_fallback = softmax_last_dim_(wide, true, KernelPath::Native).unwrap();
        assert!(max_diff(&first_fallback, &first) < 1e-6);
        assert!(softmax_last_dim_(randn(&[2, 5, 4]), true, KernelPath::Native).is_err());
        // f64 has no kernel: the candle-op path
        for causal in [false, true] {
            let ours =
                softmax_last_dim_(scores.copy().unwrap(), causal, KernelPath::Native).unwrap();
            let fallback = softmax_last_dim_(
                scores.to_dtype(DType::F64).unwrap(),
                causal,
                KernelPath::Native,
            )
            .unwrap();
            assert_eq!(fallback.dtype(), DType::F64);
            assert!(max_diff(&ours, &fallback) < 1e-6, "causal {causal}");
        }
    }

    #[test]
    fn half_softmax_is_computed_in_f32() {
        let scores = (randn(&[2, 4, 9]) * 4.0).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let ours = softmax_last_dim_(
            scores.to_dtype(DType::F16).unwrap(),
            false,
            KernelPath::Native,
        )
        .unwrap();
        assert_eq!(ours.dtype(), DType::F16);
        // f16 inputs round the scores; the result is then one f16 rounding from the reference
        assert!(max_diff(&ours, &reference) < 5e-3);
        let sums = ours.to_dtype(DType::F32).unwrap().sum(D::Minus1).unwrap();
        let ones = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_diff(&sums, &ones) < 5e-3);
    }
}
