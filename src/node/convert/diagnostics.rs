//! /diagnostics: the stream, each named camera, each task, depth and tf.

use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::std_msgs::msg::Header;

use super::{now, spatial, LEVEL_ERROR, LEVEL_OK, LEVEL_STALE, LEVEL_WARN};
use crate::worker::{CameraSnapshot, ModelState, Snapshot, TaskSnapshot};

pub(super) fn kv(key: &str, value: impl ToString) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"))
}

/// One status for the stream, one per task and one for depth (when on), named `<node>: <part>`.
pub fn diagnostics(
    node: &str,
    s: &Snapshot,
    depth: &[Option<crate::depth_sync::DepthCounters>],
    tf: &crate::tf::TfStats,
) -> DiagnosticArray {
    let mut status = Vec::with_capacity(4);
    let any_ready = s.tasks.iter().any(|t| matches!(t.state, ModelState::Ready));
    let (level, message) = if s.loading {
        (LEVEL_WARN, "loading models".to_string())
    } else if !any_ready {
        (LEVEL_ERROR, "no model loaded".to_string())
    } else if s.frames_received == 0 {
        (LEVEL_OK, "waiting for images".to_string())
    } else {
        (
            LEVEL_OK,
            format!(
                "{:.1} fps, latency p50 {} ms, p95 {} ms",
                s.fps,
                ms(s.latency_p50_ms),
                ms(s.latency_p95_ms)
            ),
        )
    };
    status.push(DiagnosticStatus {
        level,
        name: format!("{node}: stream"),
        message,
        hardware_id: s.device.clone(),
        values: vec![
            kv("fps", format!("{:.2}", s.fps)),
            kv("latency_p50_ms", ms(s.latency_p50_ms)),
            kv("latency_p95_ms", ms(s.latency_p95_ms)),
            kv("inference_p50_ms", ms(s.inference_p50_ms)),
            kv("inference_p95_ms", ms(s.inference_p95_ms)),
            kv("frames_received", s.frames_received),
            kv("frames_processed", s.frames_processed),
            kv("frames_dropped", s.frames_dropped),
            kv("frames_bad", s.frames_bad),
            kv("last_bad_frame", &s.last_bad_frame),
            kv("bad_queries", s.bad_queries),
            kv("inference_errors", s.inference_errors),
            kv("service_calls", s.service_calls),
            kv("service_failures", s.service_failures),
            kv("query_encodings", s.query_encodings),
            kv("prompt_encodings", s.prompt_encodings),
            kv("label_encodings", s.label_encodings),
            kv("queries", s.queries.join(", ")),
            kv("prompts", s.prompts.join(", ")),
            kv("rate_limit_hz", s.rate),
            kv("device", &s.device),
            kv("dtype", &s.dtype),
        ],
    });
    for t in &s.tasks {
        status.push(task_status(node, s, t));
    }
    for (camera, counters) in s.cameras.iter().zip(depth) {
        // a single-camera node keeps its status names: "<node>: depth", no camera status
        let name = if camera.name.is_empty() {
            node.to_string()
        } else {
            status.push(camera_status(node, camera));
            format!("{node}: {}", camera.name)
        };
        if let Some(c) = counters {
            status.push(spatial::depth_status(&name, c));
        }
    }
    status.push(spatial::tf_status(node, tf));
    DiagnosticArray {
        header: Header {
            stamp: now(),
            frame_id: String::new(),
        },
        status,
    }
}

/// A named camera's stream is WARN once its last frame is this old.
const CAMERA_STALE_AFTER_S: f64 = 3.0;

/// One named camera's stream: fps, latency and counters, WARN while it sends nothing.
fn camera_status(node: &str, c: &CameraSnapshot) -> DiagnosticStatus {
    let (level, message) = match c.since_last_s {
        _ if c.frames_received == 0 => (LEVEL_WARN, "no frame received yet".to_string()),
        Some(age) if age > CAMERA_STALE_AFTER_S => {
            (LEVEL_WARN, format!("no frame processed for {age:.1} s"))
        }
        _ => (
            LEVEL_OK,
            format!("{:.1} fps, latency p50 {} ms", c.fps, ms(c.latency_p50_ms)),
        ),
    };
    let shared = "(shared)".to_string();
    DiagnosticStatus {
        level,
        name: format!("{node}: camera {}", c.name),
        message,
        hardware_id: String::new(),
        values: vec![
            kv("fps", format!("{:.2}", c.fps)),
            kv("latency_p50_ms", ms(c.latency_p50_ms)),
            kv("frames_received", c.frames_received),
            kv("frames_processed", c.frames_processed),
            kv("frames_dropped", c.frames_dropped),
            kv("frames_bad", c.frames_bad),
            kv(
                "seconds_since_last_frame",
                c.since_last_s
                    .map_or("-".to_string(), |a| format!("{a:.2}")),
            ),
            kv(
                "queries",
                c.queries.as_ref().map_or(shared.clone(), |q| q.join(", ")),
            ),
            kv(
                "prompts",
                c.prompts.as_ref().map_or(shared, |p| p.join(", ")),
            ),
        ],
    }
}

fn task_status(node: &str, s: &Snapshot, t: &TaskSnapshot) -> DiagnosticStatus {
    let (level, state, message) = match &t.state {
        ModelState::Disabled => (LEVEL_STALE, "disabled", "disabled by parameter".to_string()),
        ModelState::Unconfigured => (
            LEVEL_STALE,
            "unconfigured",
            "not loaded (lifecycle node not configured)".to_string(),
        ),
        ModelState::Loading => (LEVEL_WARN, "loading", format!("loading `{}`", t.model)),
        ModelState::Ready => (LEVEL_OK, "ready", format!("`{}` ready", t.model)),
        ModelState::Failed(e) => (LEVEL_ERROR, "failed", format!("failed to load: {e}")),
    };
    DiagnosticStatus {
        level,
        name: format!("{node}: {}", t.task),
        message,
        hardware_id: s.device.clone(),
        values: vec![
            kv("state", state),
            kv("model", &t.model),
            kv("device", &s.device),
            kv("dtype", &s.dtype),
        ],
    }
}
