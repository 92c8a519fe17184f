//! ultralytics' `KalmanFilterXYAH` (`ultralytics/trackers/utils/kalman_filter.py`, 8.4.190): a
//! constant-velocity Kalman filter on a box's (centre x, centre y, aspect w/h, height), with
//! process and measurement noise proportional to the height. It knows nothing of tracks.
//!
//! State: (x, y, a, h, vx, vy, va, vh), f64 as ultralytics' NumPy arrays. The measurement is the
//! first four. Numbers are checked against ultralytics' in `tests.rs` (`kalman.json`).

use nalgebra::{SMatrix, SVector};

/// The 8-dimensional state mean (x, y, a, h, vx, vy, va, vh).
pub type StateMean = SVector<f64, 8>;
/// The 8x8 state covariance.
pub type StateCovariance = SMatrix<f64, 8, 8>;
/// A measurement (x, y, a, h): box centre, aspect ratio w/h, height.
pub type Measurement = SVector<f64, 4>;

/// `_std_weight_position` (1 / 20): position noise per pixel of height.
pub const STD_WEIGHT_POSITION: f64 = 1.0 / 20.0;
/// `_std_weight_velocity` (1 / 160): velocity noise per pixel of height.
pub const STD_WEIGHT_VELOCITY: f64 = 1.0 / 160.0;
/// Initial std of the aspect ratio (`initiate`) and its process noise (`predict`).
const STD_ASPECT: f64 = 1e-2;
/// Process noise of the aspect-ratio velocity (`predict`).
const STD_ASPECT_VELOCITY: f64 = 1e-5;
/// Measurement noise of the aspect ratio (`project`).
const STD_ASPECT_MEASUREMENT: f64 = 1e-1;

/// The filter's model: motion `x' = F x` with `dt = 1` frame, and a measurement that reads the
/// first four state components. Stateless: tracks hold their own mean and covariance.
#[derive(Debug, Clone, Copy, Default)]
pub struct KalmanFilterXyah;

impl KalmanFilterXyah {
    pub fn new() -> Self {
        Self
    }

    /// A track's state from an unassociated measurement: zero velocity, std relative to the
    /// height (`initiate`).
    pub fn initiate(&self, measurement: &Measurement) -> (StateMean, StateCovariance) {
        let mut mean = StateMean::zeros();
        mean.fixed_rows_mut::<4>(0).copy_from(measurement);
        let h = measurement[3];
        let std = [
            2.0 * STD_WEIGHT_POSITION * h,
            2.0 * STD_WEIGHT_POSITION * h,
            STD_ASPECT,
            2.0 * STD_WEIGHT_POSITION * h,
            10.0 * STD_WEIGHT_VELOCITY * h,
            10.0 * STD_WEIGHT_VELOCITY * h,
            STD_ASPECT_VELOCITY,
            10.0 * STD_WEIGHT_VELOCITY * h,
        ];
        (mean, diag_squared(&std))
    }

    /// One frame ahead (`predict`; `multi_predict` is the same per track). The noise scales with
    /// the height before the step.
    pub fn predict(
        &self,
        mean: &StateMean,
        covariance: &StateCovariance,
    ) -> (StateMean, StateCovariance) {
        let h = mean[3];
        let std = [
            STD_WEIGHT_POSITION * h,
            STD_WEIGHT_POSITION * h,
            STD_ASPECT,
            STD_WEIGHT_POSITION * h,
            STD_WEIGHT_VELOCITY * h,
            STD_WEIGHT_VELOCITY * h,
            STD_ASPECT_VELOCITY,
            STD_WEIGHT_VELOCITY * h,
        ];
        let motion = motion_mat();
        let mean = motion * mean;
        let covariance = motion * covariance * motion.transpose() + diag_squared(&std);
        (mean, covariance)
    }

    /// The state distribution in measurement space, measurement noise added (`project`).
    pub fn project(
        &self,
        mean: &StateMean,
        covariance: &StateCovariance,
    ) -> (Measurement, SMatrix<f64, 4, 4>) {
        let h = mean[3];
        let std = [
            STD_WEIGHT_POSITION * h,
            STD_WEIGHT_POSITION * h,
            STD_ASPECT_MEASUREMENT,
            STD_WEIGHT_POSITION * h,
        ];
        let mut innovation_cov = covariance.fixed_view::<4, 4>(0, 0).into_owned();
        for (i, s) in std.iter().enumerate() {
            innovation_cov[(i, i)] += s * s;
        }
        (mean.fixed_rows::<4>(0).into_owned(), innovation_cov)
    }

    /// The correction step (`update`): gain `K = P Hᵀ S⁻¹` by a linear solve, as ultralytics'
    /// `np.linalg.solve`. `None` where the projected covariance is singular (ultralytics raises
    /// `LinAlgError` there; it takes a zero-height state).
    pub fn update(
        &self,
        mean: &StateMean,
        covariance: &StateCovariance,
        measurement: &Measurement,
    ) -> Option<(StateMean, StateCovariance)> {
        let (projected_mean, projected_cov) = self.project(mean, covariance);
        // kalman_gain = solve(S, P[:, :4]ᵀ)ᵀ  -> (8, 4)
        let cross = covariance.fixed_view::<8, 4>(0, 0).transpose(); // (4, 8)
        let gain = projected_cov.lu().solve(&cross)?.transpose(); // (8, 4)
        let innovation = measurement - projected_mean;
        let new_mean = mean + gain * innovation;
        let new_covariance = covariance - gain * projected_cov * gain.transpose();
        Some((new_mean, new_covariance))
    }
}

/// `_motion_mat`: identity with `dt = 1` coupling each component to its velocity.
fn motion_mat() -> StateCovariance {
    let mut m = StateCovariance::identity();
    for i in 0..4 {
        m[(i, 4 + i)] = 1.0;
    }
    m
}

/// `np.diag(np.square(std))`.
fn diag_squared(std: &[f64; 8]) -> StateCovariance {
    let mut m = StateCovariance::zeros();
    for (i, s) in std.iter().enumerate() {
        m[(i, i)] = s * s;
    }
    m
}
