//! ultralytics' matching helpers (`ultralytics/trackers/utils/matching.py`, 8.4.190): IoU
//! distance, score fusion and the thresholded linear assignment. No notion of tracks: boxes,
//! scores and cost matrices in, indices out.
//!
//! Precision follows ultralytics where it decides matches: IoU and fused costs are float32 (its
//! `bbox_ioa` runs on float32 arrays), the assignment float64 (lap casts to double).

use lapjv::{lapjv, Matrix};

/// `bbox_ioa`'s `eps`, added to the union (as float32).
const IOU_EPS: f32 = 1e-7;

/// A finite stand-in for a non-finite cost (from a degenerate box): far above any threshold, so
/// the pair is never matched, and small enough for the solver's arithmetic to stay finite.
const NON_FINITE_COST: f64 = 1e3;

/// A row-major cost matrix (rows: tracks, columns: detections), float32 as ultralytics'.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CostMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CostMatrix {
    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.data[row * self.cols + col]
    }
}

/// The result of [`linear_assignment`]: matched `(row, col)` pairs in row order, and the rows and
/// columns left unmatched, ascending (as ultralytics' `matches, unmatched_a, unmatched_b`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    pub matches: Vec<(usize, usize)>,
    pub unmatched_a: Vec<usize>,
    pub unmatched_b: Vec<usize>,
}

/// `1 - IoU` between every box of `a` and every box of `b` (`iou_distance` on xyxy boxes),
/// computed in float32 with `bbox_ioa(iou=True)`'s formula and eps.
pub fn iou_distance(a: &[[f32; 4]], b: &[[f32; 4]]) -> CostMatrix {
    let mut data = Vec::with_capacity(a.len() * b.len());
    for p in a {
        let area_p = (p[2] - p[0]) * (p[3] - p[1]);
        for q in b {
            let iw = (p[2].min(q[2]) - p[0].max(q[0])).max(0.0);
            let ih = (p[3].min(q[3]) - p[1].max(q[1])).max(0.0);
            let inter = iw * ih;
            let area_q = (q[2] - q[0]) * (q[3] - q[1]);
            // numpy: (area_q + area_p) - inter, then inter / (union + eps)
            let union = area_q + area_p - inter;
            data.push(1.0 - inter / (union + IOU_EPS));
        }
    }
    CostMatrix {
        rows: a.len(),
        cols: b.len(),
        data,
    }
}

/// Fold the detection scores into an IoU cost (`fuse_score`): `1 - (1 - cost) * score`, so a
/// weak detection needs more overlap to match. `scores` has one entry per column.
pub fn fuse_score(cost: &mut CostMatrix, scores: &[f32]) {
    debug_assert_eq!(scores.len(), cost.cols);
    if cost.cols == 0 {
        return;
    }
    for row in cost.data.chunks_mut(cost.cols) {
        for (c, s) in row.iter_mut().zip(scores) {
            *c = 1.0 - (1.0 - *c) * s;
        }
    }
}

/// Minimum-cost matching in which a pair matches only if its cost is below `thresh`
/// (`linear_assignment` with lap: `lap.lapjv(cost, extend_cost=True, cost_limit=thresh)`).
///
/// As lap does, the `n x m` costs become an `(n + m)` square: the costs top-left, `thresh / 2`
/// in the two off-diagonal blocks (leaving a row or a column unmatched costs half the limit), zeros
/// bottom-right; the square is solved exactly by Jonker-Volgenant (the `lapjv` crate, a port of
/// the same JV code lap uses: column reduction, two augmenting row reductions, then shortest
/// augmenting paths), and assignments into the padding read as unmatched. So this minimises
/// `sum(cost - thresh)` over the matched pairs, and a pair with `cost >= thresh` never helps.
/// That differs from ultralytics' SciPy fallback (a full assignment, then pairs above `thresh`
/// dropped), which can leave a row unmatched that lap would have matched elsewhere.
pub fn linear_assignment(cost: &CostMatrix, thresh: f64) -> Assignment {
    let (n_rows, n_cols) = (cost.rows, cost.cols);
    if n_rows == 0 || n_cols == 0 {
        return Assignment {
            matches: Vec::new(),
            unmatched_a: (0..n_rows).collect(),
            unmatched_b: (0..n_cols).collect(),
        };
    }
    let n = n_rows + n_cols;
    let mut extended = Matrix::from_elem((n, n), thresh / 2.0);
    for i in n_rows..n {
        for j in n_cols..n {
            extended[(i, j)] = 0.0;
        }
    }
    for i in 0..n_rows {
        for j in 0..n_cols {
            let c = f64::from(cost.get(i, j));
            extended[(i, j)] = if c.is_finite() { c } else { NON_FINITE_COST };
        }
    }
    let (x, y) = match lapjv(&extended) {
        Ok(solution) => solution,
        Err(err) => {
            // The solver only fails on an inconsistent augmenting path, which finite costs
            // do not produce; should it happen, nothing matches this frame.
            tracing::warn!(
                "linear assignment failed ({err}); leaving all {n_rows}x{n_cols} unmatched"
            );
            return Assignment {
                matches: Vec::new(),
                unmatched_a: (0..n_rows).collect(),
                unmatched_b: (0..n_cols).collect(),
            };
        }
    };
    let mut out = Assignment::default();
    for (i, &j) in x.iter().take(n_rows).enumerate() {
        if j < n_cols {
            out.matches.push((i, j));
        } else {
            out.unmatched_a.push(i);
        }
    }
    out.unmatched_b = (0..n_cols).filter(|&j| y[j] >= n_rows).collect();
    out
}
