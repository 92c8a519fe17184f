//! Rate limits for the worker's log lines: a camera that sends bad frames at 30 Hz gets one
//! line per period, not thirty a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A repeated fault of the same kind is logged at most once per this period.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Logs the first fault of each kind, then at most one per [`LOG_PERIOD`] with a count of the
/// ones left out.
#[derive(Default)]
pub(super) struct LogLimiter {
    last: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    /// `Some(suppressed)` when a line for `key` may be logged now.
    pub(super) fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_PERIOD => {
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
