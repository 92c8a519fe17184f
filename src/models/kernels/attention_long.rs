//! Self-attention in one pass over the keys with an online softmax (the flash-attention
//! recurrence) on AVX-512, no mask: heads of 64 over long sequences (from [`MIN_TOKENS`]
//! tokens on: OWL-ViT B/16's 2305, OWLv2's 3601), and heads of 16 or 32 at any length
//! (CLIPSeg's decoder: 4 heads of 16). Its products run in f32, or on `vdpbf16ps` for the
//! bf16 path (`attend_block_bf16`: the same tiles and recurrence, operands rounded to bf16).
//!
//! At those lengths [`super::attention`]'s kernel writes a block's scores (4 MiB) out of L2
//! between its three passes (`q k^T`, the exponentials, the product with v) and packs k and v
//! again for every block; with heads of 16 its products are 16 deep, or 16 wide. Here k^T
//! and v are packed once per (item, head), and each tile of [`TILE_QUERIES`] queries by
//! [`PANEL_KEYS`] keys goes from `q k^T` to its exponentials to `p v` in registers and L1, with
//! a running maximum and sum per query; a query's output and sum are rescaled when its
//! maximum grows.
//!
//! Best of 7-9, alternated in one process with the other kernel, both threads, on a 2-core
//! Intel Xeon: 12 heads of 64 over 2305 tokens 68-70 against 75-77 ms, over 3601 tokens 156
//! against 193-204 ms (one core, 2305 tokens: 135 against 108 GFLOP/s, of the core's 206); 4
//! items x 4 heads of 16 over 485 tokens 1.76 against 2.09 ms (faster in 9 of 9). Heads of 64
//! over 485 and 577 tokens were level or slower (3.4 against 3.1 ms, 4.6 against 4.6: a last
//! panel of 37 keys or of one, and that kernel's scores fit L2 there), hence [`MIN_TOKENS`].
//! On a 2-core AMD EPYC (Zen 4): 2305 tokens 96 against 107-111 ms, 3601 tokens 223 against
//! 266-271, 485 and 577 tokens slower again; the heads of 16 level to 3% slower (2.36-2.47
//! against 2.29-2.38 ms, under 0.3 ms a CLIPSeg frame), kept for the Xeon's gain. The values
//! differ from that kernel's by rounding alone (the exponentials' offsets): 2e-7 to 5e-6 at
//! these shapes.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::attention::head_block_tasks;
use super::bf16_gemm::{self, PackedBf16, NR};
use super::gemm::SharedOut;
use super::vmath::avx512::softmax_term;
use super::vmath::LANES;
use super::{pool_threads, written_in_parallel};

/// The largest head size the tiles are written for (four vectors of 16 lanes); heads of 16
/// and 32 take one and two vectors.
pub const MAX_HEAD_DIM: usize = 64;
/// Shorter sequences with heads of [`MAX_HEAD_DIM`] stay with [`super::attention`]'s kernel
/// (faster at 485 and 577 tokens).
pub const MIN_TOKENS: usize = 1024;
/// Keys per packed panel of k^T: four vectors, the width of a tile.
const PANEL_KEYS: usize = 64;
/// Vectors across a tile's keys, and across a head.
const VECTORS: usize = PANEL_KEYS / LANES;
/// Queries per tile: 6 x 4 accumulators, 4 operands and a broadcast fit the 32 registers.
const TILE_QUERIES: usize = 6;
/// Heads packed and attended at a time, per pool thread: the packed k^T and v (1.8 MiB a
/// head at 3601 tokens) alive for a few heads rather than all of them (22 MiB for OWLv2's 12,
/// which put its peak memory over 1.2x its weights).
const HEADS_PACKED_PER_THREAD: usize = 2;
/// Queries per task: a panel of k^T and of v (32 KiB) serves its 16 tiles from L1.
const BLOCK_QUERIES: usize = 96;

/// Whether [`attention`] runs for heads of `head_dim` over `tokens` tokens here.
pub fn applies(head_dim: usize, tokens: usize) -> bool {
    let size = match head_dim {
        MAX_HEAD_DIM => tokens >= MIN_TOKENS,
        16 | 32 => true,
        _ => false,
    };
    size && std::arch::is_x86_feature_detected!("avx512f")
}

/// Per-thread state of a task, reused across tasks and calls.
#[derive(Default)]
struct Scratch {
    /// The block's queries, contiguous, zero rows up to a whole tile.
    q: Vec<f32>,
    /// Unnormalised outputs, (queries, head_dim).
    out: Vec<f32>,
    /// Per query, lane-wise partial sums of its exponentials.
    sums: Vec<f32>,
    /// Per query, the largest score so far: the exponentials' offset.
    max: Vec<f32>,
    /// One tile's exponentials, (TILE_QUERIES, PANEL_KEYS).
    probs: Vec<f32>,
    /// The bf16 tiles' queries, rounded to pairs: (rows, hd / 2) dwords.
    q_pairs: Vec<u32>,
    /// One bf16 tile's exponentials, rounded to pairs of keys: (TILE_QUERIES, PANEL_KEYS / 2).
    prob_pairs: Vec<u32>,
}

/// The keys and values of a group of (item, head) pairs, packed once for all their blocks.
enum Packed {
    /// f32: per pair, k^T in panels of [`PANEL_KEYS`] keys, (dim, key) each, zero past n;
    /// v as it lies, (n, hd).
    F32 { k_t: Vec<f32>, v: Vec<f32> },
    /// bf16 (`vdpbf16ps`): per pair, k^T (hd, n) and v (n, hd) in [`PackedBf16`]'s panels of
    /// [`NR`] = [`PANEL_KEYS`] columns - pairs of dimensions by keys, pairs of keys by
    /// dimensions.
    Bf16(Vec<(PackedBf16, PackedBf16)>),
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `softmax(q k^T) v` per item and head of `qkv`, (b, n, 3, heads, hd) contiguous, q scaled;
/// the first `queries` tokens' outputs, (b, queries, heads * hd). Only where [`applies`] said
/// so. `bf16` (where [`bf16_gemm::supported`]): both products on `vdpbf16ps`, q, k, v and the
/// exponentials rounded to bf16 (to nearest even), the scores, sums and outputs in f32 - as
/// the short sequences' bf16 attention rounds them.
pub fn attention(
    qkv: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    hd: usize,
    queries: usize,
    bf16: bool,
) -> Vec<f32> {
    assert!(applies(hd, n) && queries <= n && qkv.len() == b * n * 3 * heads * hd);
    assert!(
        !bf16 || bf16_gemm::supported(),
        "bf16 attention without AVX512-BF16"
    );
    match hd / LANES {
        1 => attention_of::<1>(qkv, b, n, heads, queries, bf16),
        2 => attention_of::<2>(qkv, b, n, heads, queries, bf16),
        _ => attention_of::<4>(qkv, b, n, heads, queries, bf16),
    }
}

/// [`attention`] for heads of `HDV` vectors.
fn attention_of<const HDV: usize>(
    qkv: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    queries: usize,
    bf16: bool,
) -> Vec<f32> {
    let hd = HDV * LANES;
    let d = heads * hd;
    let token = 3 * d;
    let panels = n.div_ceil(PANEL_KEYS);
    let panel = hd * PANEL_KEYS;
    // q, k or v (`which` 0, 1, 2) of token `t` of (item, head)
    let row = |item: usize, head: usize, which: usize, t: usize| {
        &qkv[(item * n + t) * token + which * d + head * hd..][..hd]
    };
    // v is copied out of the tokens' rows: rows a token apart alias in L1
    let pack = |pairs: Range<usize>| {
        if bf16 {
            let packed = pairs
                .clone()
                .into_par_iter()
                .map(|pair| {
                    let (item, head) = (pair / heads, pair % heads);
                    (
                        PackedBf16::from_rows_of_transposed(n, hd, |t| row(item, head, 1, t)),
                        PackedBf16::from_rows(n, hd, |t| row(item, head, 2, t)),
                    )
                })
                .collect();
            return (pairs.start, Packed::Bf16(packed));
        }
        // SAFETY: every element of each panel is written.
        let k_t = unsafe {
            written_in_parallel(pairs.len() * panels * panel, panel, |i, dst| {
                let (pair, p) = (pairs.start + i / panels, i % panels);
                let (item, head) = (pair / heads, pair % heads);
                for key in 0..PANEL_KEYS {
                    let t = p * PANEL_KEYS + key;
                    let k = (t < n).then(|| row(item, head, 1, t));
                    for dim in 0..hd {
                        dst[dim * PANEL_KEYS + key].write(k.map_or(0.0, |k| k[dim]));
                    }
                }
            })
        };
        // SAFETY: every row of each piece is written.
        let v = unsafe {
            written_in_parallel(pairs.len() * n * hd, n * hd, |i, dst| {
                let pair = pairs.start + i;
                let (item, head) = (pair / heads, pair % heads);
                for (t, dst) in dst.chunks_exact_mut(hd).enumerate() {
                    for (x, &y) in dst.iter_mut().zip(row(item, head, 2, t)) {
                        x.write(y);
                    }
                }
            })
        };
        (pairs.start, Packed::F32 { k_t, v })
    };
    let task = |shared: &SharedOut,
                (group_start, packed): &(usize, Packed),
                item: usize,
                head: usize,
                block: usize| {
        let first = block * BLOCK_QUERIES;
        let m = BLOCK_QUERIES.min(queries - first);
        let pair = item * heads + head - group_start;
        SCRATCH.with(|scratch| {
            let scratch = &mut scratch.borrow_mut();
            let q = |i: usize| row(item, head, 0, first + i);
            // SAFETY: the CPU has AVX-512F (`applies`), and AVX512-BF16 for bf16 (`attention`).
            unsafe {
                match packed {
                    Packed::F32 { k_t, v } => attend_block::<HDV>(
                        scratch,
                        m,
                        q,
                        &k_t[pair * panels * panel..][..panels * panel],
                        &v[pair * n * hd..][..n * hd],
                        n,
                    ),
                    Packed::Bf16(pairs) => {
                        let (k_t, v) = &pairs[pair];
                        attend_block_bf16::<HDV>(scratch, m, q, k_t, v, n)
                    }
                }
            };
            for (i, row) in scratch.out.chunks_exact(hd).take(m).enumerate() {
                let sum: f32 = scratch.sums[i * LANES..][..LANES].iter().sum();
                let inv = 1.0 / sum;
                let mut line = [0f32; MAX_HEAD_DIM];
                for (y, &x) in line.iter_mut().zip(row) {
                    *y = x * inv;
                }
                // SAFETY: each task writes its own queries' columns of its own head, while
                // `out` is borrowed by `shared` alone.
                unsafe { shared.write_row(item * queries + first + i, head * hd, &line[..hd]) };
            }
        });
    };
    // SAFETY: each task writes every row of its block.
    unsafe {
        head_block_tasks(
            (b, heads, queries.div_ceil(BLOCK_QUERIES)),
            (queries, d),
            HEADS_PACKED_PER_THREAD * pool_threads(),
            pack,
            task,
        )
    }
}

/// `scratch`'s outputs, sums and maxima cleared for `rows` queries of heads of `hd`.
fn reset(s: &mut Scratch, rows: usize, hd: usize) {
    s.out.clear();
    s.out.resize(rows * hd, 0.0);
    s.sums.clear();
    s.sums.resize(rows * LANES, 0.0);
    s.max.clear();
    s.max.resize(rows, f32::NEG_INFINITY);
}

/// A tile's scores against the padding of the last panel (past its `keys` keys) set to -inf.
///
/// # Safety
/// The CPU must have AVX-512F.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn mask_padding(acc: &mut [[__m512; VECTORS]; TILE_QUERIES], keys: usize) {
    if keys == PANEL_KEYS {
        return;
    }
    for j in 0..VECTORS {
        let valid = ((1u32 << keys.saturating_sub(j * LANES).min(LANES)) - 1) as __mmask16;
        for r in 0..TILE_QUERIES {
            acc[r][j] = _mm512_mask_mov_ps(_mm512_set1_ps(f32::NEG_INFINITY), valid, acc[r][j]);
        }
    }
}

/// One query's scores against a panel (-inf past its keys) turned into the softmax's
/// exponentials against its running maximum `max`: the maximum raised first where the panel
/// holds a larger score, its unnormalised output (`o`, `HDV` vectors) and lane-wise sums
/// (`sum`) rescaled to it; the exponentials added to the sums.
///
/// # Safety
/// The CPU must have AVX-512F; `max`, `o` and `sum` point into the scratch's rows.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn online_softmax<const HDV: usize>(
    scores: [__m512; VECTORS],
    max: *mut f32,
    o: *mut f32,
    sum: *mut f32,
) -> [__m512; VECTORS] {
    let top = _mm512_max_ps(
        _mm512_max_ps(scores[0], scores[1]),
        _mm512_max_ps(scores[2], scores[3]),
    );
    // rarely taken past the first panels: no reduction while the maximum holds
    if _mm512_cmp_ps_mask::<_CMP_GT_OQ>(top, _mm512_set1_ps(*max)) != 0 {
        let new = _mm512_reduce_max_ps(top);
        // e^(old - new): 0 from the first panel (old -inf) and past the softmax's negligible
        // range, as for the terms themselves
        let scale = softmax_term(_mm512_set1_ps(*max - new));
        *max = new;
        for j in 0..HDV {
            let x = o.add(j * LANES);
            _mm512_storeu_ps(x, _mm512_mul_ps(scale, _mm512_loadu_ps(x)));
        }
        _mm512_storeu_ps(sum, _mm512_mul_ps(scale, _mm512_loadu_ps(sum)));
    }
    let max = _mm512_set1_ps(*max);
    let mut terms = [_mm512_setzero_ps(); VECTORS];
    for j in 0..VECTORS {
        terms[j] = softmax_term(_mm512_sub_ps(scores[j], max));
    }
    let total = _mm512_add_ps(
        _mm512_add_ps(terms[0], terms[1]),
        _mm512_add_ps(terms[2], terms[3]),
    );
    _mm512_storeu_ps(sum, _mm512_add_ps(total, _mm512_loadu_ps(sum)));
    terms
}

/// The unnormalised outputs (`scratch.out`) and lane-wise sums (`scratch.sums`) of `m` queries
/// (`q(i)`: query `i`'s row) against one head's `n` keys: `k_t` in panels, `v` (n, hd), for
/// heads of `HDV` vectors.
///
/// # Safety
/// The CPU must have AVX-512F.
// indexed loops over the accumulator arrays: unrolled with constant indices, they stay in
// registers (iterators over them kept the array in memory, stored every step)
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
unsafe fn attend_block<'a, const HDV: usize>(
    s: &mut Scratch,
    m: usize,
    q: impl Fn(usize) -> &'a [f32],
    k_t: &[f32],
    v: &[f32],
    n: usize,
) {
    let hd = HDV * LANES;
    let tiles = m.div_ceil(TILE_QUERIES);
    let rows = tiles * TILE_QUERIES;
    s.q.clear();
    s.q.resize(rows * hd, 0.0);
    for (i, dst) in s.q.chunks_exact_mut(hd).take(m).enumerate() {
        dst.copy_from_slice(q(i));
    }
    reset(s, rows, hd);
    s.probs.resize(TILE_QUERIES * PANEL_KEYS, 0.0);
    assert!(k_t.len() == n.div_ceil(PANEL_KEYS) * hd * PANEL_KEYS && v.len() == n * hd);
    let (qs, outs, sums, maxima, probs) = (
        s.q.as_ptr(),
        s.out.as_mut_ptr(),
        s.sums.as_mut_ptr(),
        s.max.as_mut_ptr(),
        s.probs.as_mut_ptr(),
    );
    for (p, panel) in k_t.chunks_exact(hd * PANEL_KEYS).enumerate() {
        let keys = PANEL_KEYS.min(n - p * PANEL_KEYS);
        let kp = panel.as_ptr();
        let vp = v.as_ptr().add(p * PANEL_KEYS * hd);
        for tile in 0..tiles {
            let row0 = tile * TILE_QUERIES;
            // SAFETY (all pointer reads and writes below): `q`, `out`, `sums`, `max` hold
            // `rows` rows, `probs` one tile, `kp` a panel of hd x PANEL_KEYS, `vp` `keys` rows.
            let qt = qs.add(row0 * hd);
            let mut acc = [[_mm512_setzero_ps(); VECTORS]; TILE_QUERIES];
            for dim in 0..hd {
                let mut k = [_mm512_setzero_ps(); VECTORS];
                for j in 0..VECTORS {
                    k[j] = _mm512_loadu_ps(kp.add(dim * PANEL_KEYS + j * LANES));
                }
                for r in 0..TILE_QUERIES {
                    let x = _mm512_set1_ps(*qt.add(r * hd + dim));
                    for j in 0..VECTORS {
                        acc[r][j] = _mm512_fmadd_ps(x, k[j], acc[r][j]);
                    }
                }
            }
            mask_padding(&mut acc, keys);
            for r in 0..TILE_QUERIES {
                let row = row0 + r;
                let terms = online_softmax::<HDV>(
                    acc[r],
                    maxima.add(row),
                    outs.add(row * hd),
                    sums.add(row * LANES),
                );
                for j in 0..VECTORS {
                    _mm512_storeu_ps(probs.add(r * PANEL_KEYS + j * LANES), terms[j]);
                }
            }
            let ot = outs.add(row0 * hd);
            let mut acc = [[_mm512_setzero_ps(); HDV]; TILE_QUERIES];
            for r in 0..TILE_QUERIES {
                for j in 0..HDV {
                    acc[r][j] = _mm512_loadu_ps(ot.add(r * hd + j * LANES));
                }
            }
            for key in 0..keys {
                let vr = vp.add(key * hd);
                let mut x = [_mm512_setzero_ps(); HDV];
                for j in 0..HDV {
                    x[j] = _mm512_loadu_ps(vr.add(j * LANES));
                }
                for r in 0..TILE_QUERIES {
                    let p = _mm512_set1_ps(*probs.add(r * PANEL_KEYS + key));
                    for j in 0..HDV {
                        acc[r][j] = _mm512_fmadd_ps(p, x[j], acc[r][j]);
                    }
                }
            }
            for r in 0..TILE_QUERIES {
                for j in 0..HDV {
                    _mm512_storeu_ps(ot.add(r * hd + j * LANES), acc[r][j]);
                }
            }
        }
    }
}

/// [`attend_block`] on `vdpbf16ps`: `k_t` (hd, n) and `v` (n, hd) packed in bf16 pairs, the
/// queries rounded to pairs of dimensions here, each tile's exponentials to pairs of keys.
///
/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn attend_block_bf16<'a, const HDV: usize>(
    s: &mut Scratch,
    m: usize,
    q: impl Fn(usize) -> &'a [f32],
    k_t: &PackedBf16,
    v: &PackedBf16,
    n: usize,
) {
    let hd = HDV * LANES;
    let (dim_pairs, key_pairs) = (hd / 2, PANEL_KEYS / 2);
    let tiles = m.div_ceil(TILE_QUERIES);
    let rows = tiles * TILE_QUERIES;
    s.q_pairs.clear();
    s.q_pairs.resize(rows * dim_pairs, 0);
    for (i, dst) in s.q_pairs.chunks_exact_mut(dim_pairs).take(m).enumerate() {
        bf16_gemm::round_pairs(q(i), dst);
    }
    reset(s, rows, hd);
    s.prob_pairs.resize(TILE_QUERIES * key_pairs, 0);
    // k^T: a panel of NR keys per PANEL_KEYS; v: one panel (hd <= NR) of n.div_ceil(2) pairs
    assert!(PANEL_KEYS == NR && hd <= NR);
    assert!(k_t.dims() == (hd, n) && v.dims() == (n, hd));
    let bh = |x: __m512i| std::mem::transmute::<__m512i, __m512bh>(x);
    let (qs, outs, sums, maxima, probs) = (
        s.q_pairs.as_ptr(),
        s.out.as_mut_ptr(),
        s.sums.as_mut_ptr(),
        s.max.as_mut_ptr(),
        s.prob_pairs.as_mut_ptr(),
    );
    for p in 0..n.div_ceil(PANEL_KEYS) {
        let keys = PANEL_KEYS.min(n - p * PANEL_KEYS);
        let kp = k_t.dwords().as_ptr().add(p * dim_pairs * NR);
        let vp = v.dwords().as_ptr().add(p * key_pairs * NR);
        for tile in 0..tiles {
            let row0 = tile * TILE_QUERIES;
            // SAFETY (all pointer reads and writes below): `q_pairs`, `out`, `sums`, `max`
            // hold `rows` rows, `prob_pairs` one tile, `kp` a panel of hd / 2 x NR dwords, `vp`
            // the panel's `keys.div_ceil(2)` pairs of NR dwords.
            let qt = qs.add(row0 * dim_pairs);
            let mut acc = [[_mm512_setzero_ps(); VECTORS]; TILE_QUERIES];
            for dp in 0..dim_pairs {
                let mut k = [bh(_mm512_setzero_si512()); VECTORS];
                for j in 0..VECTORS {
                    k[j] = bh(_mm512_loadu_si512(kp.add(dp * NR + j * LANES).cast()));
                }
                for r in 0..TILE_QUERIES {
                    let x = bh(_mm512_set1_epi32(*qt.add(r * dim_pairs + dp) as i32));
                    for j in 0..VECTORS {
                        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], x, k[j]);
                    }
                }
            }
            mask_padding(&mut acc, keys);
            for r in 0..TILE_QUERIES {
                let row = row0 + r;
                let terms = online_softmax::<HDV>(
                    acc[r],
                    maxima.add(row),
                    outs.add(row * hd),
                    sums.add(row * LANES),
                );
                // keys 0..32 and 32..64, rounded to nearest even, two to a dword in order
                let low = _mm512_cvtne2ps_pbh(terms[1], terms[0]);
                let high = _mm512_cvtne2ps_pbh(terms[3], terms[2]);
                let dst = probs.add(r * key_pairs);
                _mm512_storeu_si512(dst.cast(), std::mem::transmute::<__m512bh, __m512i>(low));
                _mm512_storeu_si512(
                    dst.add(LANES).cast(),
                    std::mem::transmute::<__m512bh, __m512i>(high),
                );
            }
            let ot = outs.add(row0 * hd);
            let mut acc = [[_mm512_setzero_ps(); HDV]; TILE_QUERIES];
            for r in 0..TILE_QUERIES {
                for j in 0..HDV {
                    acc[r][j] = _mm512_loadu_ps(ot.add(r * hd + j * LANES));
                }
            }
            for kp in 0..keys.div_ceil(2) {
                let vr = vp.add(kp * NR);
                let mut x = [bh(_mm512_setzero_si512()); HDV];
                for j in 0..HDV {
                    x[j] = bh(_mm512_loadu_si512(vr.add(j * LANES).cast()));
                }
                for r in 0..TILE_QUERIES {
                    let p = bh(_mm512_set1_epi32(*probs.add(r * key_pairs + kp) as i32));
                    for j in 0..HDV {
                        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], p, x[j]);
                    }
                }
            }
            for r in 0..TILE_QUERIES {
                for j in 0..HDV {
                    _mm512_storeu_ps(ot.add(r * hd + j * LANES), acc[r][j]);
                }
            }
        }
    }
}
