//! Depth for the 3D positions: pairs each colour frame with the aligned depth image closest in
//! stamp (within `depth.slop`) and keeps the colour camera's latest calibration. Written by the
//! depth and CameraInfo subscriptions, read by the worker; plain library types only (the ROS
//! messages are converted in `convert`).
//!
//! Images are assumed rectified and the depth registered to the colour camera ("aligned", same
//! optical frame, as RealSense's `aligned_depth_to_color` and ZED's depth topics are); the depth
//! may have another resolution with the same aspect ratio.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vlm_perception::vision::camera::PinholeCamera;
use vlm_perception::vision::depth::DepthImage;

/// Depth images kept for pairing: ~1 s of a 30 Hz stream, more than any colour frame waits.
const DEPTH_HISTORY: usize = 30;
/// Relative aspect-ratio difference tolerated between an "aligned" depth and its colour image
/// (integer rounding of a scaled resolution, e.g. 1280x720 vs 424x240).
const ASPECT_TOLERANCE: f64 = 0.02;

/// A stamp in nanoseconds (`header.stamp`).
pub type StampNs = i64;

pub fn stamp_ns(sec: i32, nanosec: u32) -> StampNs {
    i64::from(sec) * 1_000_000_000 + i64::from(nanosec)
}

/// What the worker needs for 3D: the colour camera at the colour image's size, and the depth.
#[derive(Debug, Clone)]
pub struct DepthPair {
    pub camera: PinholeCamera,
    pub depth: Arc<DepthImage>,
}

/// Counters for /diagnostics.
#[derive(Debug, Clone, Default)]
pub struct DepthCounters {
    pub depth_received: u64,
    pub depth_bad: u64,
    pub camera_info_bad: u64,
    /// Colour frames processed with a depth pair, and without one (processed in 2D).
    pub frames_paired: u64,
    pub frames_unpaired: u64,
    /// Why the last unpaired frame had no depth.
    pub last_unpaired: String,
}

#[derive(Default)]
struct State {
    depth: VecDeque<(StampNs, Arc<DepthImage>)>,
    camera: Option<Result<PinholeCamera, String>>,
    counters: DepthCounters,
}

/// Shared between the depth/CameraInfo subscriptions and the worker.
pub struct DepthSync {
    slop: Mutex<Duration>,
    state: Mutex<State>,
    arrived: Condvar,
}

/// Checks that `depth` can be aligned to a colour image of `colour` = (width, height): same
/// aspect ratio (up to rounding).
pub fn check_aligned(colour: (u32, u32), depth: &DepthImage) -> Result<(), String> {
    let ratio = |w: u32, h: u32| f64::from(w) / f64::from(h.max(1));
    let (c, d) = (
        ratio(colour.0, colour.1),
        ratio(depth.width(), depth.height()),
    );
    if (c - d).abs() > ASPECT_TOLERANCE * c {
        return Err(format!(
            "depth image {}x{} does not match the colour image {}x{} (different aspect ratio: \
             is the depth aligned to the colour camera?)",
            depth.width(),
            depth.height(),
            colour.0,
            colour.1
        ));
    }
    Ok(())
}

/// The colour camera's intrinsics for an image of `colour` = (width, height): CameraInfo's
/// K is for its own width/height, scaled when the image was resized on the way.
pub fn camera_for(camera: &PinholeCamera, colour: (u32, u32)) -> Result<PinholeCamera, String> {
    if (camera.width, camera.height) == colour {
        return Ok(*camera);
    }
    camera
        .scaled_to(colour.0, colour.1)
        .map_err(|e| e.to_string())
}

impl DepthSync {
    pub fn new(slop: Duration) -> Self {
        Self {
            slop: Mutex::new(slop),
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slop(&self) -> Duration {
        *self.slop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `depth.slop` changed at run time.
    pub fn set_slop(&self, slop: Duration) {
        *self.slop.lock().unwrap_or_else(|p| p.into_inner()) = slop;
    }

    /// A received depth image (or why it was unusable).
    pub fn push_depth(&self, stamp: StampNs, depth: Result<DepthImage, String>) {
        let mut s = self.lock();
        s.counters.depth_received += 1;
        match depth {
            Ok(d) => {
                if s.depth.len() == DEPTH_HISTORY {
                    s.depth.pop_front();
                }
                s.depth.push_back((stamp, Arc::new(d)));
                self.arrived.notify_all();
            }
            Err(e) => {
                s.counters.depth_bad += 1;
                s.counters.last_unpaired = e;
            }
        }
    }

    /// A received CameraInfo (or why its calibration is unusable, e.g. K all zeros).
    pub fn set_camera(&self, camera: Result<PinholeCamera, String>) {
        let mut s = self.lock();
        if camera.is_err() {
            s.counters.camera_info_bad += 1;
        }
        s.camera = Some(camera);
    }

    /// The latest calibration, if a usable one was received.
    pub fn camera(&self) -> Result<PinholeCamera, String> {
        match &self.lock().camera {
            Some(Ok(c)) => Ok(*c),
            Some(Err(e)) => Err(format!("the camera_info is unusable: {e}")),
            None => Err("no camera_info received yet".into()),
        }
    }

    /// The depth image closest in stamp to `stamp`, within the slop, with the camera for an
    /// image of `colour` size.
    pub fn pair(&self, stamp: StampNs, colour: (u32, u32)) -> Result<DepthPair, String> {
        let camera = camera_for(&self.camera()?, colour)?;
        let s = self.lock();
        let slop_time = self.slop();
        let slop = slop_time.as_nanos() as i64;
        let best = s
            .depth
            .iter()
            .min_by_key(|(t, _)| (t - stamp).abs())
            .ok_or_else(|| "no depth image received yet".to_string())?;
        let gap = (best.0 - stamp).abs();
        if gap > slop {
            return Err(format!(
                "no depth image within depth.slop = {:.3} s of the frame (closest {:.3} s away)",
                slop_time.as_secs_f64(),
                gap as f64 * 1e-9
            ));
        }
        check_aligned(colour, &best.1)?;
        Ok(DepthPair {
            camera,
            depth: Arc::clone(&best.1),
        })
    }

    /// [`Self::pair`], waiting up to the slop (wall time) for a depth image stamped at or after
    /// `stamp` while the depth stream lags behind it: drivers publish a frameset's colour and
    /// depth images separately, and the colour one often arrives first. No wait without a depth
    /// stream or a usable calibration: the frame goes on in 2D at once.
    pub fn wait_pair(&self, stamp: StampNs, colour: (u32, u32)) -> Result<DepthPair, String> {
        let deadline = Instant::now() + self.slop();
        let mut s = self.lock();
        let calibrated = matches!(s.camera, Some(Ok(_)));
        while calibrated && s.depth.back().is_some_and(|(t, _)| *t < stamp) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self
                .arrived
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(s);
        self.pair(stamp, colour)
    }

    /// Counts a stream frame as processed with or without depth.
    pub fn count(&self, paired: &Result<DepthPair, String>) {
        let mut s = self.lock();
        match paired {
            Ok(_) => s.counters.frames_paired += 1,
            Err(e) => {
                s.counters.frames_unpaired += 1;
                s.counters.last_unpaired = e.clone();
            }
        }
    }

    pub fn counters(&self) -> DepthCounters {
        self.lock().counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera() -> PinholeCamera {
        PinholeCamera::new(500.0, 500.0, 319.5, 239.5, 640, 480).unwrap()
    }

    fn depth(w: u32, h: u32) -> DepthImage {
        DepthImage::from_metres(w, h, vec![1.0; (w * h) as usize]).unwrap()
    }

    #[test]
    fn pairs_the_closest_depth_within_the_slop() {
        let sync = DepthSync::new(Duration::from_millis(20));
        assert!(sync
            .pair(0, (640, 480))
            .unwrap_err()
            .contains("camera_info"));
        sync.set_camera(Ok(camera()));
        assert!(sync
            .pair(0, (640, 480))
            .unwrap_err()
            .contains("no depth image received"));
        sync.push_depth(1_000_000_000, Ok(depth(640, 480)));
        sync.push_depth(1_033_000_000, Ok(depth(320, 240)));
        let p = sync.pair(1_030_000_000, (640, 480)).unwrap();
        assert_eq!(p.depth.width(), 320, "the closer one");
        let e = sync.pair(1_100_000_000, (640, 480)).err().unwrap();
        assert!(e.contains("depth.slop") && e.contains("0.067"), "{e}");
        // a wider depth is not aligned to this colour image
        sync.push_depth(2_000_000_000, Ok(depth(640, 360)));
        let e = sync.pair(2_000_000_000, (640, 480)).err().unwrap();
        assert!(e.contains("aspect ratio"), "{e}");
        // a resized colour image gets scaled intrinsics
        let p = sync.pair(1_000_000_000, (320, 240)).unwrap();
        assert_eq!((p.camera.width, p.camera.fx), (320, 250.0));
    }

    #[test]
    fn waits_up_to_the_slop_only_while_a_depth_stream_lags() {
        let sync = DepthSync::new(Duration::from_millis(20));
        sync.set_camera(Ok(camera()));
        // no depth stream at all: no wait
        let t0 = Instant::now();
        assert!(sync.wait_pair(10, (640, 480)).is_err());
        assert!(t0.elapsed() < Duration::from_millis(20));
        // a stream whose newest image is older than the frame: wait for the slop, then give up
        sync.push_depth(0, Ok(depth(640, 480)));
        let t0 = Instant::now();
        assert!(sync.wait_pair(1_000_000_000, (640, 480)).is_err());
        assert!(t0.elapsed() >= Duration::from_millis(20));
        // ... or take the image that arrives in time
        let late = std::sync::Arc::new(DepthSync::new(Duration::from_millis(500)));
        late.set_camera(Ok(camera()));
        late.push_depth(0, Ok(depth(640, 480)));
        let pusher = std::sync::Arc::clone(&late);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            pusher.push_depth(1_000_000_000, Ok(depth(320, 240)));
        });
        let p = late.wait_pair(1_000_000_000, (640, 480)).unwrap();
        assert_eq!(p.depth.width(), 320);
        t.join().unwrap();
    }

    #[test]
    fn bad_inputs_are_counted_and_explained() {
        let sync = DepthSync::new(Duration::from_millis(20));
        sync.set_camera(Err("K is all zeros".into()));
        assert!(sync.camera().unwrap_err().contains("K is all zeros"));
        sync.push_depth(5, Err("bad encoding".into()));
        // without a usable calibration the frame goes on in 2D without waiting
        let t0 = Instant::now();
        assert!(sync.wait_pair(10, (4, 3)).is_err());
        assert!(t0.elapsed() < Duration::from_millis(20));
        let c = sync.counters();
        assert_eq!(
            (c.camera_info_bad, c.depth_bad, c.depth_received),
            (1, 1, 1)
        );
        sync.count(&Err("no depth".into()));
        assert_eq!(sync.counters().frames_unpaired, 1);
        for i in 0..(DEPTH_HISTORY as i64 + 5) {
            sync.push_depth(i, Ok(depth(4, 3)));
        }
        assert_eq!(sync.lock().depth.len(), DEPTH_HISTORY);
    }
}
