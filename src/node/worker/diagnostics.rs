//! What the worker counts for /diagnostics: per-task model states, frame and request counters,
//! and the recent latencies that fps and the percentiles are computed over.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{lock, Handle, ModelState};

/// Latency percentiles and fps are computed over this many recent frames.
const STATS_WINDOW: usize = 100;
/// fps counts the frames processed in this trailing window.
const FPS_WINDOW: Duration = Duration::from_secs(5);

/// One task's model and its state, for /diagnostics.
#[derive(Debug, Clone)]
pub struct TaskSnapshot {
    pub task: &'static str,
    pub model: String,
    pub state: ModelState,
}

/// Counters and recent timings, for /diagnostics.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) last_bad_frame: String,
    pub(super) bad_queries: u64,
    pub(super) inference_errors: u64,
    pub(super) service_calls: u64,
    pub(super) service_failures: u64,
    pub(super) query_encodings: u64,
    pub(super) prompt_encodings: u64,
    pub(super) label_encodings: u64,
    /// Receipt -> results published, ms.
    pub(super) latencies: VecDeque<f64>,
    /// Decode + inference, ms.
    pub(super) inference: VecDeque<f64>,
    pub(super) processed_at: VecDeque<Instant>,
    pub(super) queries: Vec<String>,
    pub(super) prompts: Vec<String>,
    /// Per camera its stream counters (the frame counts of the stream are their sums).
    pub(super) cameras: Vec<CameraStats>,
}

/// One camera's stream counters.
#[derive(Debug, Default, Clone)]
pub(super) struct CameraStats {
    pub(super) name: String,
    pub(super) frames_received: u64,
    pub(super) frames_processed: u64,
    pub(super) frames_dropped: u64,
    pub(super) frames_bad: u64,
    /// Receipt -> results published, ms.
    pub(super) latencies: VecDeque<f64>,
    pub(super) processed_at: VecDeque<Instant>,
    /// Its own vocabulary, when it has one.
    pub(super) queries: Option<Vec<String>>,
    pub(super) prompts: Option<Vec<String>>,
}

/// One camera's stream, for /diagnostics.
#[derive(Debug, Clone)]
pub struct CameraSnapshot {
    pub name: String,
    pub fps: f64,
    pub latency_p50_ms: Option<f64>,
    pub frames_received: u64,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub frames_bad: u64,
    /// Seconds since its last frame was processed (`None`: none yet).
    pub since_last_s: Option<f64>,
    pub queries: Option<Vec<String>>,
    pub prompts: Option<Vec<String>>,
}

/// A copy of the worker's state for /diagnostics.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub loading: bool,
    pub fps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub inference_p50_ms: Option<f64>,
    pub inference_p95_ms: Option<f64>,
    pub frames_received: u64,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub frames_bad: u64,
    pub last_bad_frame: String,
    pub bad_queries: u64,
    pub inference_errors: u64,
    pub service_calls: u64,
    pub service_failures: u64,
    pub query_encodings: u64,
    pub prompt_encodings: u64,
    pub label_encodings: u64,
    pub queries: Vec<String>,
    pub prompts: Vec<String>,
    pub rate: f64,
    pub device: String,
    pub dtype: String,
    pub tasks: Vec<TaskSnapshot>,
    pub cameras: Vec<CameraSnapshot>,
}

/// Frames per second over the trailing [`FPS_WINDOW`] (shorter right after start).
fn fps(processed_at: &VecDeque<Instant>, now: Instant, started: Instant) -> f64 {
    let window = FPS_WINDOW.min(now - started).as_secs_f64();
    let recent = processed_at
        .iter()
        .filter(|t| now.duration_since(**t) <= FPS_WINDOW)
        .count();
    if window > 0.0 {
        recent as f64 / window
    } else {
        0.0
    }
}

fn percentile(values: &VecDeque<f64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    // nearest rank
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

pub(super) fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == STATS_WINDOW {
        q.pop_front();
    }
    q.push_back(v);
}

impl Handle {
    /// A copy of the worker's state for /diagnostics.
    pub fn snapshot(&self) -> Snapshot {
        let tasks = lock(&self.shared.tasks).clone();
        let s = lock(&self.shared.stats);
        let now = Instant::now();
        let started = self.shared.started;
        let total = |count: fn(&CameraStats) -> u64| s.cameras.iter().map(count).sum::<u64>();
        let cameras = s
            .cameras
            .iter()
            .map(|c| CameraSnapshot {
                name: c.name.clone(),
                fps: fps(&c.processed_at, now, started),
                latency_p50_ms: percentile(&c.latencies, 50.0),
                frames_received: c.frames_received,
                frames_processed: c.frames_processed,
                frames_dropped: c.frames_dropped,
                frames_bad: c.frames_bad,
                since_last_s: c
                    .processed_at
                    .back()
                    .map(|t| now.duration_since(*t).as_secs_f64()),
                queries: c.queries.clone(),
                prompts: c.prompts.clone(),
            })
            .collect();
        Snapshot {
            loading: self.loading(),
            fps: fps(&s.processed_at, now, started),
            latency_p50_ms: percentile(&s.latencies, 50.0),
            latency_p95_ms: percentile(&s.latencies, 95.0),
            inference_p50_ms: percentile(&s.inference, 50.0),
            inference_p95_ms: percentile(&s.inference, 95.0),
            frames_received: total(|c| c.frames_received),
            frames_processed: total(|c| c.frames_processed),
            frames_dropped: total(|c| c.frames_dropped),
            frames_bad: total(|c| c.frames_bad),
            last_bad_frame: s.last_bad_frame.clone(),
            bad_queries: s.bad_queries,
            inference_errors: s.inference_errors,
            service_calls: s.service_calls,
            service_failures: s.service_failures,
            query_encodings: s.query_encodings,
            prompt_encodings: s.prompt_encodings,
            label_encodings: s.label_encodings,
            queries: s.queries.clone(),
            prompts: s.prompts.clone(),
            rate: f64::from_bits(self.shared.rate.load(Ordering::Relaxed)),
            device: self.shared.device.clone(),
            dtype: self.shared.dtype.clone(),
            tasks,
            cameras,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: VecDeque<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&VecDeque::new(), 50.0), None);
        assert_eq!(percentile(&VecDeque::from(vec![3.0]), 95.0), Some(3.0));
    }
}
