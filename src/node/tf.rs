//! The node's tf2 side, as tf2_ros's `TransformListener` and `MessageFilter` do it: `/tf` and
//! `/tf_static` feed the library's [`TransformBuffer`]; an output that needs the camera's pose at
//! its image's stamp waits for it (up to `tf.timeout`) on the async runtime, never on the
//! executor or the inference thread.
//!
//! Plain library types only here: the messages are converted in `convert`, the subscriptions
//! live in `main.rs`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use nalgebra::{Isometry3, Point3};
use tokio::sync::Notify;
use vlm_perception::geometry::transform_points;
use vlm_perception::transforms::{
    Stamp, TimeDirection, TransformBuffer, TransformError, DEFAULT_CACHE_TIME,
};
use vlm_perception::vision::depth::Object3d;

use crate::convert::FrameHeader;
use crate::lock;
use crate::params::TfParams;

/// Counters and the last error, for /diagnostics.
#[derive(Debug, Clone, Default)]
pub struct TfStats {
    pub target_frame: String,
    /// Transforms taken into the buffer, and refused (with the last refusal).
    pub received: u64,
    pub rejected: u64,
    pub last_rejected: String,
    /// Lookups for 3D outputs that succeeded and failed (with the last failure).
    pub lookups_ok: u64,
    pub lookups_failed: u64,
    pub last_error: String,
    /// Whether the latest lookup is the one that failed with `last_error`.
    pub last_error_is_latest: bool,
}

/// Where an output's 3D values go, and the transform that takes them there.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The frame id the 3D values are expressed in (the target frame, else the image's frame).
    pub frame_id: String,
    /// `Ok(None)`: no transform (the camera frame, or nothing 3D to move); `Err`: why the 3D
    /// values had to be left out.
    pub transform: Result<Option<Isometry3<f64>>, String>,
}

impl Placement {
    /// The image's own frame: nothing to look up.
    pub fn camera(header: &FrameHeader) -> Self {
        Self {
            frame_id: header.frame_id.clone(),
            transform: Ok(None),
        }
    }

    /// `header` with this frame id: the header of outputs that are 3D only.
    pub fn header(&self, image: &FrameHeader) -> FrameHeader {
        FrameHeader {
            frame_id: self.frame_id.clone(),
            ..image.clone()
        }
    }

    /// Moves `positions` into the frame; all `None` when the transform failed.
    pub fn place(&self, positions: &mut [Option<Object3d>]) {
        match &self.transform {
            Ok(None) => {}
            Ok(Some(t)) => {
                for o in positions.iter_mut().flatten() {
                    *o = o.transformed(t);
                }
            }
            Err(_) => positions.iter_mut().for_each(|p| *p = None),
        }
    }

    /// Moves per-detection point clouds into the frame; all `None` when the transform failed.
    pub fn place_clouds(&self, clouds: &mut [Option<Vec<Point3<f32>>>]) {
        for c in clouds.iter_mut() {
            self.place_with(c, |p, t| transform_points(p, t));
        }
    }

    /// Moves a target point into the frame; `None` when the transform failed.
    pub fn place_point(&self, point: &mut Option<Point3<f64>>) {
        self.place_with(point, |p, t| t * p);
    }

    /// Moves `value` into the frame with `moved(value, target_from_camera)`; `None` when the
    /// transform failed.
    pub fn place_with<T>(
        &self,
        value: &mut Option<T>,
        moved: impl FnOnce(&T, &Isometry3<f64>) -> T,
    ) {
        match &self.transform {
            Ok(None) => {}
            Ok(Some(t)) => {
                if let Some(v) = value.as_mut() {
                    *v = moved(v, t);
                }
            }
            Err(_) => *value = None,
        }
    }

    /// The reason the 3D values were left out, if they were.
    pub fn error(&self) -> Option<&str> {
        self.transform.as_ref().err().map(String::as_str)
    }
}

/// The transform buffer and the settings that use it, shared by the `/tf` subscriptions, the
/// stream's output stage, the services and /diagnostics.
pub struct Transforms {
    buffer: Mutex<TransformBuffer>,
    /// Woken on every `/tf` or `/tf_static` message: a waiting lookup tries again.
    arrived: Notify,
    params: Mutex<TfParams>,
    stats: Mutex<TfStats>,
}

/// Whether more transforms can still make a failed lookup succeed: a frame not there yet, trees
/// not joined yet, or a stamp past the newest transform. A stamp older than the cache cannot.
fn may_arrive(e: &TransformError) -> bool {
    matches!(
        e,
        TransformError::UnknownFrame { .. }
            | TransformError::NotConnected { .. }
            | TransformError::Extrapolation {
                into: TimeDirection::Future,
                ..
            }
    )
}

impl Transforms {
    pub fn new(params: &TfParams) -> Self {
        Self {
            buffer: Mutex::new(TransformBuffer::new(DEFAULT_CACHE_TIME)),
            arrived: Notify::new(),
            params: Mutex::new(params.clone()),
            stats: Mutex::new(TfStats::default()),
        }
    }

    /// `target_frame` or `tf.timeout` changed (`ros2 param set`): the next output uses them.
    pub fn set_params(&self, params: &TfParams) {
        *lock(&self.params) = params.clone();
    }

    pub fn params(&self) -> TfParams {
        lock(&self.params).clone()
    }

    /// One `TransformStamped` of a `/tf` (`is_static` false) or `/tf_static` message. Call
    /// [`Self::arrived`] after a message's last one.
    pub fn add(
        &self,
        parent: &str,
        child: &str,
        stamp: Stamp,
        transform: Isometry3<f64>,
        is_static: bool,
    ) -> Result<(), String> {
        let r = lock(&self.buffer)
            .set_transform(parent, child, stamp, transform, is_static)
            .map_err(|e| e.to_string());
        let mut s = lock(&self.stats);
        match &r {
            Ok(()) => s.received += 1,
            Err(e) => {
                s.rejected += 1;
                s.last_rejected = e.clone();
            }
        }
        r
    }

    /// Wakes the lookups that wait for a transform.
    pub fn arrived(&self) {
        self.arrived.notify_waiters();
    }

    /// Where the 3D outputs of an image with `header` go: `requested` (a service's
    /// `target_frame`), else the `target_frame` parameter, else the image's own frame. `needed`:
    /// whether there is anything 3D to transform (no lookup, and no wait, otherwise).
    pub async fn placement(
        &self,
        requested: &str,
        header: &FrameHeader,
        needed: bool,
    ) -> Placement {
        let TfParams {
            target_frame,
            timeout,
        } = self.params();
        let target = match requested.trim() {
            "" => target_frame,
            r => r.to_string(),
        };
        if target.is_empty() {
            return Placement::camera(header);
        }
        let transform = if needed {
            let stamp = Stamp::from_ros(header.sec, header.nanosec);
            self.lookup(&target, &header.frame_id, stamp, timeout)
                .await
                .map(Some)
        } else {
            Ok(None)
        };
        Placement {
            frame_id: target,
            transform,
        }
    }

    /// `target_T_source` at `stamp`, waiting up to `timeout` for transforms that may still
    /// arrive; the error is the buffer's, in its words. Counted for /diagnostics.
    pub async fn lookup(
        &self,
        target: &str,
        source: &str,
        stamp: Stamp,
        timeout: Duration,
    ) -> Result<Isometry3<f64>, String> {
        let r = self.wait_for(target, source, stamp, timeout).await;
        let mut s = lock(&self.stats);
        match &r {
            Ok(_) => {
                s.lookups_ok += 1;
                s.last_error_is_latest = false;
            }
            Err(e) => {
                s.lookups_failed += 1;
                s.last_error = e.clone();
                s.last_error_is_latest = true;
            }
        }
        r
    }

    async fn wait_for(
        &self,
        target: &str,
        source: &str,
        stamp: Stamp,
        timeout: Duration,
    ) -> Result<Isometry3<f64>, String> {
        if source.trim_start_matches('/').is_empty() {
            return Err(format!(
                "the image has no frame_id (header.frame_id is empty), so its 3D outputs cannot \
                 be transformed into `{target}`"
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before the lookup: a transform arriving in between still wakes us.
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let err = match lock(&self.buffer).lookup_transform(target, source, stamp) {
                Ok(t) => return Ok(t),
                Err(e) => e,
            };
            let now = Instant::now();
            if !may_arrive(&err) || now >= deadline {
                let waited = if may_arrive(&err) && !timeout.is_zero() {
                    format!(" (waited {:.3} s, tf.timeout)", timeout.as_secs_f64())
                } else {
                    String::new()
                };
                return Err(format!("{err}{waited}"));
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    pub fn stats(&self) -> TfStats {
        TfStats {
            target_frame: lock(&self.params).target_frame.clone(),
            ..lock(&self.stats).clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{Translation3, UnitQuaternion};
    use std::sync::Arc;

    fn params(target: &str, timeout_ms: u64) -> TfParams {
        TfParams {
            target_frame: target.into(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn shift(x: f64) -> Isometry3<f64> {
        Isometry3::from_parts(Translation3::new(x, 0.0, 0.0), UnitQuaternion::identity())
    }

    fn header(sec: i32, frame: &str) -> FrameHeader {
        FrameHeader {
            sec,
            nanosec: 0,
            frame_id: frame.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_transform_is_waited_for() {
        let tf = Arc::new(Transforms::new(&params("odom", 500)));
        tf.add("odom", "camera", Stamp::from_ros(1, 0), shift(1.0), false)
            .unwrap();
        tf.arrived();
        let late = Arc::clone(&tf);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            late.add("odom", "camera", Stamp::from_ros(3, 0), shift(3.0), false)
                .unwrap();
            late.arrived();
        });
        let started = Instant::now();
        let p = tf.placement("", &header(2, "camera"), true).await;
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!(p.frame_id, "odom");
        let t = p.transform.unwrap().unwrap();
        assert!((t.translation.vector.x - 2.0).abs() < 1e-12);
        assert_eq!(tf.stats().lookups_ok, 1);
    }

    #[tokio::test]
    async fn failures_name_the_problem_and_past_stamps_do_not_wait() {
        let tf = Transforms::new(&params("odom", 200));
        tf.add("odom", "camera", Stamp::from_ros(5, 0), shift(1.0), false)
            .unwrap();
        tf.add("odom", "camera", Stamp::from_ros(6, 0), shift(1.0), false)
            .unwrap();
        // Into the past: no wait.
        let started = Instant::now();
        let e = tf
            .lookup(
                "odom",
                "camera",
                Stamp::from_ros(4, 0),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(e.contains("extrapolation into the past"), "{e}");
        // An unknown frame: waited for, then named with the known ones.
        let e = tf
            .placement("map", &header(5, "camera"), true)
            .await
            .transform
            .unwrap_err();
        assert!(e.contains("`map` does not exist"), "{e}");
        assert!(e.contains("`camera`, `odom`"), "{e}");
        assert!(e.contains("waited 0.200 s"), "{e}");
        // No frame id on the image.
        let e = tf
            .placement("", &header(5, ""), true)
            .await
            .transform
            .unwrap_err();
        assert!(e.contains("no frame_id"), "{e}");
        let s = tf.stats();
        assert_eq!((s.lookups_ok, s.lookups_failed), (0, 3));
        assert_eq!(s.last_error, e);
    }

    #[tokio::test]
    async fn empty_target_or_nothing_3d_does_no_lookup() {
        let tf = Transforms::new(&params("", 100));
        let p = tf.placement("", &header(1, "camera"), true).await;
        assert_eq!(p.frame_id, "camera");
        assert!(matches!(p.transform, Ok(None)));
        let p = tf.placement("base_link", &header(1, "camera"), false).await;
        assert_eq!(p.frame_id, "base_link");
        assert!(matches!(p.transform, Ok(None)));
        let s = tf.stats();
        assert_eq!((s.lookups_ok, s.lookups_failed), (0, 0));
    }
}
