//! The transforms of one edge over time: tf2's `TimeCache` (a time-sorted list of samples,
//! pruned to the cache time, interpolated between the two samples around a lookup time) and
//! `StaticCache` (one transform, valid at any time).

use std::collections::VecDeque;

use nalgebra::{Isometry3, Translation3, UnitQuaternion};

use super::Stamp;

/// Where a lookup time falls outside a dynamic edge's samples: into the past (before the
/// oldest sample) or the future (after the newest; more data may still arrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDirection {
    Past,
    Future,
}

impl std::fmt::Display for TimeDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Past => "past",
            Self::Future => "future",
        })
    }
}

/// The transform of one `parent -> child` edge: a single static one, or timed samples.
#[derive(Debug, Clone)]
pub(super) enum EdgeCache {
    /// From `/tf_static`: valid at every time; a new one replaces it.
    Static(Isometry3<f64>),
    Dynamic(TimeCache),
}

impl EdgeCache {
    /// The transform at `time` (never [`Stamp::ZERO`]'s "latest": the buffer resolves that to
    /// the chain's common time first).
    pub(super) fn at(&self, time: Stamp) -> Result<Isometry3<f64>, TimeDirection> {
        match self {
            Self::Static(transform) => Ok(*transform),
            Self::Dynamic(cache) => cache.at(time),
        }
    }

    /// The newest sample's stamp; `None` for a static edge, which does not limit a chain's time.
    pub(super) fn newest(&self) -> Option<Stamp> {
        match self {
            Self::Static(_) => None,
            Self::Dynamic(cache) => Some(cache.newest()),
        }
    }
}

/// One timed transform.
#[derive(Debug, Clone, Copy)]
struct Sample {
    stamp: Stamp,
    transform: Isometry3<f64>,
}

/// The samples of a dynamic edge, oldest first; never empty (it is created with one, and
/// pruning keeps the newest).
#[derive(Debug, Clone)]
pub(super) struct TimeCache {
    samples: VecDeque<Sample>,
}

impl TimeCache {
    pub(super) fn new(stamp: Stamp, transform: Isometry3<f64>) -> Self {
        Self {
            samples: VecDeque::from([Sample { stamp, transform }]),
        }
    }

    pub(super) fn oldest(&self) -> Stamp {
        self.samples.front().map_or(Stamp::ZERO, |s| s.stamp)
    }

    pub(super) fn newest(&self) -> Stamp {
        self.samples.back().map_or(Stamp::ZERO, |s| s.stamp)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.samples.len()
    }

    /// The oldest stamp a cache whose newest sample is at `newest` keeps: `cache_time`
    /// (nanoseconds) behind it, inclusive.
    pub(super) fn kept_from(newest: Stamp, cache_time: i64) -> Stamp {
        Stamp::from_nanos(newest.nanos().saturating_sub(cache_time))
    }

    /// Adds a sample in stamp order, replacing one at the same stamp, then drops the samples
    /// more than `cache_time` (nanoseconds) behind the newest. A sample that would be dropped at
    /// once is refused (tf2's `TF_OLD_DATA`), returning the oldest stamp kept.
    pub(super) fn insert(
        &mut self,
        stamp: Stamp,
        transform: Isometry3<f64>,
        cache_time: i64,
    ) -> Result<(), Stamp> {
        let kept_from = Self::kept_from(self.newest(), cache_time);
        if stamp < kept_from {
            return Err(kept_from);
        }
        let sample = Sample { stamp, transform };
        // Samples mostly arrive in order: the search ends at the back.
        let i = self.samples.partition_point(|s| s.stamp < stamp);
        match self.samples.get_mut(i) {
            Some(same) if same.stamp == stamp => *same = sample,
            _ => self.samples.insert(i, sample),
        }
        let kept_from = Self::kept_from(self.newest(), cache_time);
        while self.samples.front().is_some_and(|s| s.stamp < kept_from) {
            self.samples.pop_front();
        }
        Ok(())
    }

    /// The transform at `time`, as tf2's `TimeCache::getData`: a sample at exactly `time` as it
    /// is, otherwise interpolated between the two samples around it. A single sample is valid at
    /// its own stamp only; no extrapolation either side.
    pub(super) fn at(&self, time: Stamp) -> Result<Isometry3<f64>, TimeDirection> {
        if time < self.oldest() {
            return Err(TimeDirection::Past);
        }
        if time > self.newest() {
            return Err(TimeDirection::Future);
        }
        // The first sample at or after `time`; it exists since `time <= newest`.
        let i = self.samples.partition_point(|s| s.stamp < time);
        let after = self.samples[i];
        if after.stamp == time || i == 0 {
            return Ok(after.transform);
        }
        let before = self.samples[i - 1];
        let ratio = (i128::from(time.nanos()) - i128::from(before.stamp.nanos())) as f64
            / (i128::from(after.stamp.nanos()) - i128::from(before.stamp.nanos())) as f64;
        Ok(interpolate(&before.transform, &after.transform, ratio))
    }
}

/// tf2's `TimeCache::interpolate`: translation linearly, rotation by slerp, `ratio` 0 at `a` and
/// 1 at `b`.
pub(super) fn interpolate(a: &Isometry3<f64>, b: &Isometry3<f64>, ratio: f64) -> Isometry3<f64> {
    let translation = a.translation.vector * (1.0 - ratio) + b.translation.vector * ratio;
    Isometry3::from_parts(
        Translation3::from(translation),
        slerp(&a.rotation, &b.rotation, ratio),
    )
}

/// Slerp along the shorter arc (q and -q are the same rotation; tf2's `Quaternion::slerp` flips
/// too), without nalgebra's panic: its `try_slerp` answers `None` when the two are (nearly) the
/// same rotation, where the normalised linear interpolation is exact to rounding.
pub(super) fn slerp(
    a: &UnitQuaternion<f64>,
    b: &UnitQuaternion<f64>,
    t: f64,
) -> UnitQuaternion<f64> {
    a.try_slerp(b, t, f64::EPSILON).unwrap_or_else(|| {
        let b = if a.coords.dot(&b.coords) < 0.0 {
            -b.into_inner()
        } else {
            b.into_inner()
        };
        UnitQuaternion::new_normalize(a.into_inner() * (1.0 - t) + b * t)
    })
}

#[cfg(test)]
mod tests {
    use nalgebra::Vector3;

    use super::*;

    const TOL: f64 = 1e-9;

    fn x(x: f64) -> Isometry3<f64> {
        Isometry3::translation(x, 0.0, 0.0)
    }

    fn s(secs: f64) -> Stamp {
        Stamp::from_secs_f64(secs)
    }

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn samples_stay_sorted_and_same_stamp_replaces() {
        let mut cache = TimeCache::new(s(2.0), x(2.0));
        for (t, v) in [(4.0, 4.0), (1.0, 1.0), (3.0, 3.0), (2.0, 20.0)] {
            cache.insert(s(t), x(v), 10 * SEC).unwrap();
        }
        assert_eq!(cache.len(), 4);
        let stamps: Vec<_> = cache.samples.iter().map(|s| s.stamp).collect();
        assert_eq!(stamps, [s(1.0), s(2.0), s(3.0), s(4.0)]);
        assert_eq!(cache.at(s(2.0)).unwrap().translation.x, 20.0);
    }

    #[test]
    fn at_interpolates_and_refuses_to_extrapolate() {
        let mut cache = TimeCache::new(s(1.0), x(1.0));
        // A single sample is valid at its own stamp only.
        assert_eq!(cache.at(s(1.0)).unwrap().translation.x, 1.0);
        assert_eq!(cache.at(s(1.5)).unwrap_err(), TimeDirection::Future);
        assert_eq!(cache.at(s(0.5)).unwrap_err(), TimeDirection::Past);
        cache.insert(s(3.0), x(5.0), 10 * SEC).unwrap();
        assert!((cache.at(s(1.5)).unwrap().translation.x - 2.0).abs() < TOL);
        assert!((cache.at(s(2.0)).unwrap().translation.x - 3.0).abs() < TOL);
        assert_eq!(cache.at(s(3.0)).unwrap().translation.x, 5.0);
        assert_eq!(cache.at(s(3.000000001)).unwrap_err(), TimeDirection::Future);
        assert_eq!(cache.at(s(0.999999999)).unwrap_err(), TimeDirection::Past);
    }

    #[test]
    fn insert_prunes_to_cache_time_behind_the_newest() {
        let mut cache = TimeCache::new(s(0.0), x(0.0));
        for i in 1..=50 {
            cache
                .insert(Stamp::from_nanos(i * SEC / 10), x(0.0), SEC)
                .unwrap();
        }
        // Newest 5.0 s: kept from 4.0 s inclusive, 11 samples.
        assert_eq!((cache.oldest(), cache.newest()), (s(4.0), s(5.0)));
        assert_eq!(cache.len(), 11);
        // Older than the kept range: refused, naming where it starts.
        assert_eq!(cache.insert(s(3.9), x(0.0), SEC), Err(s(4.0)));
        // Exactly at the bound and inside it: accepted.
        cache.insert(s(4.0), x(1.0), SEC).unwrap();
        cache.insert(s(4.05), x(1.0), SEC).unwrap();
        assert_eq!(cache.len(), 12);
    }

    #[test]
    fn slerp_takes_the_shorter_arc_and_survives_equal_rotations() {
        let a = UnitQuaternion::from_euler_angles(0.0, 0.0, 170f64.to_radians());
        let b = UnitQuaternion::from_euler_angles(0.0, 0.0, -170f64.to_radians());
        let mid = slerp(&a, &b, 0.5);
        // Halfway the short way round is yaw 180 degrees, not 0.
        let v = mid * Vector3::x();
        assert!((v - Vector3::new(-1.0, 0.0, 0.0)).norm() < TOL, "{v}");
        // Equal rotations, and the same rotation with the opposite sign.
        assert!(slerp(&a, &a, 0.3).angle_to(&a) < TOL);
        let neg = UnitQuaternion::new_unchecked(-a.into_inner());
        assert!(slerp(&a, &neg, 0.7).angle_to(&a) < TOL);
    }
}
