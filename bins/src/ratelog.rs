//! Rate-limited logging for what a peer can cause again and again (malformed messages, refused
//! connections, failed accepts): a peer sending one bad message per millisecond must not turn
//! the log into its own flood. Each call site owns a [`RateLimit`]; the first event logs at once,
//! later ones at most once per interval, each line saying how many were suppressed since the
//! previous one. Counting is the metrics' job; these lines are for a human.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One call site's limit.
pub struct RateLimit {
    every: Duration,
    /// When a line was last logged, and the events suppressed since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be logged now (`suppressed` events were not logged
    /// since the last line); `None` when this event is to be suppressed.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.0 {
            Some(last) if now.duration_since(last) < self.every => {
                st.1 += 1;
                None
            }
            _ => {
                let suppressed = std::mem::take(&mut st.1);
                st.0 = Some(now);
                Some(suppressed)
            }
        }
    }
}

/// A `tracing` event through a [`RateLimit`] declared at the call site, with the count of
/// suppressed events as the field `suppressed`:
/// `rate_limited!(warn, peer = %p, error = %e, "malformed IPFIX message; closing the session")`.
#[macro_export]
macro_rules! rate_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelog::RateLimit =
            $crate::ratelog::RateLimit::new(::std::time::Duration::from_secs(1));
        if let Some(suppressed) = LIMIT.allow() {
            ::tracing::$level!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let r = RateLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(r.allow_at(t0), Some(0));
        for i in 1..1000 {
            assert_eq!(r.allow_at(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(r.allow_at(t0 + Duration::from_secs(1)), Some(999));
        assert_eq!(r.allow_at(t0 + Duration::from_millis(1500)), None);
        assert_eq!(r.allow_at(t0 + Duration::from_secs(3)), Some(1));
    }
}
