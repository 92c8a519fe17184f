//! Rate limits for the node's log lines: a camera that sends bad frames at 30 Hz gets one
//! line per period, not thirty a second (the worker's faults, refused transforms, frames
//! published without 3D).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A repeated fault of the same kind is logged at most once per this period (by default).
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Logs the first fault of each kind, then at most one per period with a count of the ones
/// left out.
pub struct LogLimiter {
    period: Duration,
    last: HashMap<String, (Instant, u64)>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::with_period(LOG_PERIOD)
    }
}

impl LogLimiter {
    pub fn with_period(period: Duration) -> Self {
        Self {
            period,
            last: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be logged now.
    pub fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.period => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// What a rate-limited line adds about the lines left out since the last one.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} similar message(s) suppressed)")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_suppresses_repeats() {
        let mut l = LogLimiter::default();
        let t = Instant::now();
        assert_eq!(l.allow("a", t), Some(0));
        assert_eq!(l.allow("a", t + Duration::from_secs(1)), None);
        assert_eq!(l.allow("a", t + Duration::from_secs(2)), None);
        assert_eq!(l.allow("b", t), Some(0));
        assert_eq!(
            l.allow("a", t + LOG_PERIOD + Duration::from_secs(1)),
            Some(2)
        );
    }
}
