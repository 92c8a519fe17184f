//! A checked, slice-based entry to the `gemm` crate (the f32 matmul candle's CPU backend uses),
//! for the kernels that need what `Tensor::matmul` does not give: strided operands read in
//! place, accumulation into a prefilled destination, and a single-threaded call from inside a
//! rayon task.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::TASKS_PER_THREAD;

/// Blocks of a threaded [`matmul`] have at least this many columns or rows (smaller blocks
/// repack the other operand too often).
const MIN_BLOCK: usize = 64;
/// Column blocks are whole multiples of this: the rows of the `gemm` crate's widest f32
/// microkernel on AVX-512 (4 registers of 16), which tiles our output columns (it computes the
/// transposed product). A 96-wide block left a 32-wide remainder to a half-height kernel in
/// every task: 128-wide blocks made the layer matmuls of ViLT and OWL-ViT B/32 3-4% faster
/// (paired, alternated runs; CLIPSeg's 485 tokens -2% to +2%).
const COLUMN_BLOCK_MULTIPLE: usize = 64;

/// A matrix inside a slice: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// `data` read as a contiguous row-major (rows, cols) matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// A matrix being written by several tasks at once, each to its own block of rows and
/// columns (blocks a `&mut [f32]` cannot express: their rows interleave in memory).
#[derive(Debug, Clone, Copy)]
pub struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    row_stride: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks only write through `SharedOut::matmul_into`, whose callers promise disjoint
// blocks; the buffer is mutably borrowed for as long as the `SharedOut` lives.
unsafe impl Send for SharedOut<'_> {}
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    /// Shares `data`, a row-major matrix with `row_stride`, for the duration of the borrow.
    pub fn new(data: &'a mut [f32], row_stride: usize) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            row_stride,
            _buffer: PhantomData,
        }
    }

    /// Shares `data`, not yet initialised, for tasks that overwrite all of it (products with
    /// `accumulate` false); the caller sets its length once they have.
    pub fn new_uninit(data: &'a mut [MaybeUninit<f32>], row_stride: usize) -> Self {
        Self {
            ptr: data.as_mut_ptr().cast(),
            len: data.len(),
            row_stride,
            _buffer: PhantomData,
        }
    }

    /// `block = lhs @ rhs` on the calling thread, for the block starting at (`row`, `col`)
    /// with `lhs.rows` rows and `rhs.cols` columns.
    ///
    /// # Safety
    /// No other task may read or write this block while it runs.
    ///
    /// # Panics
    /// If the block or an operand reaches outside its buffer.
    pub unsafe fn matmul_into(
        &self,
        row: usize,
        col: usize,
        lhs: MatRef,
        rhs: MatRef,
        accumulate: bool,
    ) {
        let (m, n) = (lhs.rows, rhs.cols);
        assert_eq!(rhs.rows, lhs.cols, "matmul: inner dimensions differ");
        assert!(
            self.holds(row, col, m, n) && lhs.in_bounds() && rhs.in_bounds(),
            "matmul: operand out of bounds"
        );
        if m == 0 || n == 0 || lhs.cols == 0 {
            return;
        }
        // SAFETY: in bounds (checked above), disjoint from other tasks (the caller's promise).
        unsafe {
            gemm::gemm(
                m,
                n,
                lhs.cols,
                self.ptr.add(row * self.row_stride + col),
                1,
                self.row_stride as isize,
                accumulate,
                lhs.data.as_ptr(),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.data.as_ptr(),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

impl SharedOut<'_> {
    /// Whether the block of `rows` x `cols` at (`row`, `col`) lies inside the buffer and inside
    /// its rows.
    fn holds(&self, row: usize, col: usize, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || ((row + rows - 1) * self.row_stride + col + cols <= self.len
                && col + cols <= self.row_stride)
    }

    /// Writes `values` into row `row` at columns `col..col + values.len()`.
    ///
    /// # Safety
    /// As [`Self::matmul_into`]: no other task may touch these elements while it runs.
    ///
    /// # Panics
    /// If they lie outside the buffer.
    pub unsafe fn write_row(&self, row: usize, col: usize, values: &[f32]) {
        assert!(
            self.holds(row, col, 1, values.len()),
            "write_row: out of bounds"
        );
        // SAFETY: in bounds (checked above), disjoint from other tasks (the caller's promise).
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.ptr.add(row * self.row_stride + col),
                values.len(),
            )
        };
    }

    /// Multiplies row `row + i` of the block at columns `col..col + cols` by `scales[i]`.
    ///
    /// # Safety
    /// As [`Self::matmul_into`]: no other task may touch this block while it runs.
    ///
    /// # Panics
    /// If the block reaches outside the buffer.
    pub unsafe fn scale_rows(&self, row: usize, col: usize, cols: usize, scales: &[f32]) {
        assert!(
            self.holds(row, col, scales.len(), cols),
            "scale_rows: block out of bounds"
        );
        for (i, &scale) in scales.iter().enumerate() {
            // SAFETY: in bounds (checked above), disjoint from other tasks (the caller's
            // promise); the slice lives only within this iteration.
            let line = unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.add((row + i) * self.row_stride + col),
                    cols,
                )
            };
            for x in line {
                *x *= scale;
            }
        }
    }
}

/// The size of the blocks (in units) that split `units` into at most `max_tasks` tasks so that
/// the busiest of `threads` equally fast threads has the least to do; of the sizes that do so
/// equally, the smallest (the most tasks: the pool balances them when a core is slowed).
/// For 2304 columns (a fused q/k/v projection, 36 units of 64) on 2 threads: 6 blocks of 6
/// units, where 8 blocks of 5 left one thread 4 blocks and the other 3 and a sliver.
pub(super) fn balanced_block(units: usize, threads: usize, max_tasks: usize) -> usize {
    if units == 0 {
        return 1;
    }
    let threads = threads.max(1);
    let mut best = (usize::MAX, units);
    for tasks in 1..=max_tasks.clamp(1, units) {
        let size = units.div_ceil(tasks);
        let busiest = units.div_ceil(size).div_ceil(threads) * size;
        if busiest < best.0 || (busiest == best.0 && size < best.1) {
            best = (busiest, size);
        }
    }
    best.1
}

/// The blocks (rows, columns) a threaded [`matmul`] splits an (m, n) output into, one
/// single-threaded product each, with no barrier inside the products: column blocks where the
/// output is wide enough (each task then packs only its slice of `rhs`, the weights), row
/// blocks where it is narrow (a 64-wide output).
fn output_blocks(m: usize, n: usize) -> impl ParallelIterator<Item = (Range<usize>, Range<usize>)> {
    let threads = super::pool_threads();
    let target = TASKS_PER_THREAD * threads;
    let split_columns = n.div_ceil(MIN_BLOCK) >= target || n >= m;
    let (len, chunk) = if split_columns {
        let units = n.div_ceil(COLUMN_BLOCK_MULTIPLE);
        (
            n,
            balanced_block(units, threads, target) * COLUMN_BLOCK_MULTIPLE,
        )
    } else {
        (m, m.div_ceil(target).max(MIN_BLOCK))
    };
    (0..len.div_ceil(chunk)).into_par_iter().map(move |block| {
        let part = block * chunk..(block * chunk + chunk).min(len);
        if split_columns {
            (0..m, part)
        } else {
            (part, 0..n)
        }
    })
}

/// `dst = lhs @ rhs` (`accumulate`: `dst += lhs @ rhs`), `dst` row-major with `dst_row_stride`.
/// `threaded`: split the product over the rayon pool in blocks of output columns (or rows,
/// for narrow outputs); else run on the calling thread.
///
/// # Panics
/// If the shapes do not chain or an operand reaches outside its slice (a bug in the caller).
pub fn matmul(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    threaded: bool,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions differ");
    let dst_view = MatRef {
        data: dst,
        rows: m,
        cols: n,
        row_stride: dst_row_stride,
        col_stride: 1,
    };
    assert!(
        lhs.in_bounds() && rhs.in_bounds() && dst_view.in_bounds(),
        "matmul: operand out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride.max(1)).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let shared = SharedOut::new(dst, dst_row_stride);
    if threaded {
        // SAFETY: `shared` borrows `dst` alone.
        unsafe { threaded_into(shared, lhs, rhs, accumulate) };
    } else {
        // SAFETY: one block, the whole of `dst`, which `shared` borrows alone.
        unsafe { shared.matmul_into(0, 0, lhs, rhs, accumulate) };
    }
}

/// `lhs @ rhs` as a fresh row-major (rows, cols) buffer, split over the rayon pool as a
/// threaded [`matmul`]: the product is written into it directly, never zero-filled first.
///
/// # Panics
/// As [`matmul`].
pub fn product(lhs: MatRef, rhs: MatRef) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions differ");
    assert!(
        lhs.in_bounds() && rhs.in_bounds(),
        "matmul: operand out of bounds"
    );
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the blocks of a threaded product tile the (m, n) output and each overwrites
    // its own (`accumulate` false); `out` is borrowed by the `SharedOut` alone.
    unsafe {
        threaded_into(
            SharedOut::new_uninit(&mut out.spare_capacity_mut()[..m * n], n),
            lhs,
            rhs,
            false,
        );
        out.set_len(m * n);
    }
    out
}

/// The blocks of [`output_blocks`], one single-threaded product each, into `dst`.
///
/// # Safety
/// Nothing else may touch the (lhs.rows, rhs.cols) block of `dst` while it runs.
unsafe fn threaded_into(dst: SharedOut, lhs: MatRef, rhs: MatRef, accumulate: bool) {
    output_blocks(lhs.rows, rhs.cols).for_each(|(rows, cols)| {
        let lhs = MatRef {
            data: &lhs.data[rows.start * lhs.row_stride..],
            rows: rows.len(),
            ..lhs
        };
        let rhs = MatRef {
            data: &rhs.data[cols.start * rhs.col_stride..],
            cols: cols.len(),
            ..rhs
        };
        // SAFETY: every task writes its own block of `dst` (the caller's promise for the
        // whole).
        unsafe { dst.matmul_into(rows.start, cols.start, lhs, rhs, accumulate) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &MatRef, b: &MatRef) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| {
                        a.data[i * a.row_stride + p * a.col_stride]
                            * b.data[p * b.row_stride + j * b.col_stride]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_operands_and_accumulation() {
        let data: Vec<f32> = (0..400)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25)
            .collect();
        // a: 5x3 read with row stride 10; b: 3x4 read transposed (col stride 9)
        let a = MatRef {
            data: &data,
            rows: 5,
            cols: 3,
            row_stride: 10,
            col_stride: 1,
        };
        let b = MatRef {
            data: &data[50..],
            rows: 3,
            cols: 4,
            row_stride: 1,
            col_stride: 9,
        };
        let want = naive(&a, &b);
        for threaded in [false, true] {
            // (the threaded path of a 5x4 output is one block; `split_products_match` covers
            // the splits)
            let mut dst = vec![1f32; 5 * 6];
            matmul(&mut dst, 6, a, b, true, threaded);
            for i in 0..5 {
                for j in 0..4 {
                    assert!((dst[i * 6 + j] - 1.0 - want[i * 4 + j]).abs() < 1e-5);
                }
                assert_eq!(&dst[i * 6 + 4..i * 6 + 6], &[1.0, 1.0]);
            }
            matmul(&mut dst, 6, a, b, false, threaded);
            assert!((dst[6 + 2] - want[4 + 2]).abs() < 1e-5);
        }
    }

    #[test]
    fn split_products_match() {
        // wide (column blocks) and narrow, tall (row blocks) outputs
        for (m, k, n) in [(70, 9, 300), (300, 9, 20)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5 % 17) as f32 - 8.0) * 0.125)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 3 % 11) as f32 - 5.0) * 0.25)
                .collect();
            let a = MatRef {
                data: &a,
                rows: m,
                cols: k,
                row_stride: k,
                col_stride: 1,
            };
            let b = MatRef {
                data: &b,
                rows: k,
                cols: n,
                row_stride: n,
                col_stride: 1,
            };
            let want = naive(&a, &b);
            let mut dst = vec![0.5f32; m * n];
            matmul(&mut dst, n, a, b, true, true);
            for (got, want) in dst.iter().zip(&want) {
                assert!((got - 0.5 - want).abs() < 1e-4, "{m}x{k}x{n}");
            }
            // the same blocks into a fresh, uninitialised buffer
            let fresh = product(a, b);
            assert_eq!(fresh.len(), m * n);
            for (got, want) in fresh.iter().zip(&want) {
                assert!((got - want).abs() < 1e-4, "product {m}x{k}x{n}");
            }
        }
        // no inner dimension: zeros
        let empty = |rows, cols| MatRef::row_major(&[], rows, cols);
        assert_eq!(product(empty(2, 0), empty(0, 3)), vec![0.0; 6]);
    }

    #[test]
    fn blocks_keep_the_threads_equally_busy() {
        // 36 units on 2 threads: 6 of 6 (busiest thread 18 units), not 8 of 5 (20)
        assert_eq!(balanced_block(36, 2, 8), 6);
        // 48 on 2 (3072 columns): 8 of 6; 12 on 2 (768 columns): 6 of 2
        assert_eq!(balanced_block(48, 2, 8), 6);
        assert_eq!(balanced_block(12, 2, 8), 2);
        // fewer units than tasks, one unit, one thread
        assert_eq!(balanced_block(3, 2, 8), 1);
        assert_eq!(balanced_block(1, 4, 16), 1);
        assert_eq!(balanced_block(10, 1, 4), 5);
        assert_eq!(balanced_block(0, 2, 8), 1);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_views_are_refused() {
        let data = vec![0f32; 10];
        // the last row of `a` ends at element 11
        let a = MatRef {
            data: &data,
            rows: 4,
            cols: 3,
            row_stride: 3,
            col_stride: 1,
        };
        let b = MatRef {
            data: &data,
            rows: 3,
            cols: 2,
            row_stride: 2,
            col_stride: 1,
        };
        let mut dst = vec![0f32; 8];
        matmul(&mut dst, 2, a, b, false, false);
    }
}
