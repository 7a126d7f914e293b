//! Rate-limited log lines for per-connection events: a pod that opens
//! thousands of failing connections must not turn the daemon's log into its
//! megaphone (disk, log shipping, and the operator's attention).
//!
//! Each kind of warning has its own [`RateLog`], a `static` next to the line
//! it guards: up to `burst` lines per `interval`, then silence, and one line
//! that says how many were suppressed: before the next line written, or from
//! [`report_periodically`] once the interval is over, whichever comes first
//! (so a flood that stops is still accounted for). Every event is still
//! counted in the metrics; the log only samples them.
//!
//! ```ignore
//! static NO_DST: RateLog = RateLog::new("no_original_destination", 10, Duration::from_secs(10));
//! ratelog::warn!(NO_DST, %client, "no original destination; closing");
//! ```
use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// The default budget: ten lines of one kind per ten seconds, so the log
/// shows a sample of distinct clients, and a flood costs one line a second.
pub const BURST: u32 = 10;
pub const INTERVAL: Duration = Duration::from_secs(10);

/// A limiter for one kind of log line.
pub struct RateLog {
    kind: &'static str,
    burst: u32,
    interval: Duration,
    window: Mutex<Window>,
    /// Whether it is in [`REGISTRY`] (on its first event).
    registered: AtomicBool,
}

/// Every limiter that has seen an event, for [`report_periodically`].
static REGISTRY: Mutex<Vec<&'static RateLog>> = Mutex::new(Vec::new());

/// The current interval: when it began, lines written in it, and events
/// suppressed since the last line written.
struct Window {
    start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the line; `suppressed` events of this kind were dropped since
    /// the last line written (say so first when non-zero).
    Write { suppressed: u64 },
    /// Drop it (counted, reported with the next line written).
    Suppress,
}

impl RateLog {
    /// A limiter allowing `burst` lines of `kind` per `interval`.
    pub const fn new(kind: &'static str, burst: u32, interval: Duration) -> Self {
        RateLog {
            kind,
            burst,
            interval,
            window: Mutex::new(Window {
                start: None,
                written: 0,
                suppressed: 0,
            }),
            registered: AtomicBool::new(false),
        }
    }

    /// A limiter with the default budget ([`BURST`] per [`INTERVAL`]).
    pub const fn default_budget(kind: &'static str) -> Self {
        Self::new(kind, BURST, INTERVAL)
    }

    /// The kind, as written in the `suppressed` line.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Decides for one event now.
    pub fn check(&'static self) -> Verdict {
        if !self.registered.swap(true, Ordering::Relaxed) {
            REGISTRY
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self);
        }
        self.check_at(Instant::now())
    }

    /// Decides for one event at `now` (the clock is a parameter so tests
    /// can drive it). A short critical section of integer arithmetic: cheap
    /// even when every connection of a flood passes here.
    pub fn check_at(&self, now: Instant) -> Verdict {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if expired {
            w.start = Some(now);
            w.written = 0;
        }
        if w.written >= self.burst {
            w.suppressed += 1;
            return Verdict::Suppress;
        }
        w.written += 1;
        Verdict::Write {
            suppressed: std::mem::take(&mut w.suppressed),
        }
    }

    /// Events suppressed in an interval that is over, not yet reported
    /// (taken: reported once).
    pub fn take_expired_suppressed(&self, now: Instant) -> u64 {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_some_and(|start| now.saturating_duration_since(start) >= self.interval);
        if expired {
            std::mem::take(&mut w.suppressed)
        } else {
            0
        }
    }
}

/// Reports, within a second of its end, what each limiter suppressed in an
/// interval that is over and whose count no later line carried. Runs until
/// dropped.
pub async fn report_periodically() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let limiters = REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = Instant::now();
        for limiter in limiters {
            report_suppressed(limiter, limiter.take_expired_suppressed(now));
        }
    }
}

/// Writes the "suppressed" line for `limiter` when events were dropped.
/// Used by the macros; public so they can expand anywhere in the crate.
#[doc(hidden)]
pub fn report_suppressed(limiter: &RateLog, suppressed: u64) {
    if suppressed == 0 {
        return;
    }
    let kind = limiter.kind();
    tracing::warn!(
        kind,
        suppressed,
        "suppressed {suppressed} similar log lines ({kind})"
    );
}

/// `tracing::warn!` through a [`RateLog`]: `ratelog::warn!(LIMITER, fields.., "msg")`.
#[macro_export]
macro_rules! ratelog_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let $crate::ratelog::Verdict::Write { suppressed } = $limiter.check() {
            $crate::ratelog::report_suppressed(&$limiter, suppressed);
            ::tracing::warn!(kind = $limiter.kind(), $($arg)+);
        }
    };
}

/// `tracing::error!` through a [`RateLog`]: `ratelog::error!(LIMITER, fields.., "msg")`.
#[macro_export]
macro_rules! ratelog_error {
    ($limiter:expr, $($arg:tt)+) => {
        if let $crate::ratelog::Verdict::Write { suppressed } = $limiter.check() {
            $crate::ratelog::report_suppressed(&$limiter, suppressed);
            ::tracing::error!(kind = $limiter.kind(), $($arg)+);
        }
    };
}

pub use crate::ratelog_error as error;
pub use crate::ratelog_warn as warn;

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn allows_a_burst_then_suppresses_and_reports_the_count_once() {
        let log = RateLog::new("test", 3, 10 * SEC);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(log.check_at(t0 + i * SEC), Verdict::Write { suppressed: 0 });
        }
        for i in 0..1_997 {
            assert_eq!(
                log.check_at(t0 + 3 * SEC + Duration::from_millis(i)),
                Verdict::Suppress
            );
        }
        // Next interval: the first line carries what was dropped, only once.
        let t1 = t0 + 10 * SEC;
        assert_eq!(log.check_at(t1), Verdict::Write { suppressed: 1_997 });
        assert_eq!(log.check_at(t1), Verdict::Write { suppressed: 0 });
        assert_eq!(log.check_at(t1), Verdict::Write { suppressed: 0 });
        assert_eq!(log.check_at(t1), Verdict::Suppress);
        assert_eq!(
            log.check_at(t1 + 10 * SEC),
            Verdict::Write { suppressed: 1 }
        );
    }

    #[test]
    fn the_window_starts_at_the_first_event_after_a_quiet_spell() {
        let log = RateLog::new("test", 1, 10 * SEC);
        let t0 = Instant::now();
        assert_eq!(log.check_at(t0), Verdict::Write { suppressed: 0 });
        assert_eq!(log.check_at(t0 + 9 * SEC), Verdict::Suppress);
        // Long after: a fresh window, not one per elapsed interval.
        let t1 = t0 + 3_600 * SEC;
        assert_eq!(log.check_at(t1), Verdict::Write { suppressed: 1 });
        assert_eq!(log.check_at(t1 + 9 * SEC), Verdict::Suppress);
    }

    #[test]
    fn a_clock_going_backwards_does_not_reopen_the_window() {
        let log = RateLog::new("test", 1, 10 * SEC);
        let t0 = Instant::now() + 100 * SEC;
        assert_eq!(log.check_at(t0), Verdict::Write { suppressed: 0 });
        assert_eq!(log.check_at(t0 - 50 * SEC), Verdict::Suppress);
    }

    #[test]
    fn a_flood_that_stops_is_reported_once_its_interval_is_over() {
        let log = RateLog::new("test", 1, 10 * SEC);
        let t0 = Instant::now();
        assert_eq!(log.check_at(t0), Verdict::Write { suppressed: 0 });
        for _ in 0..41 {
            assert_eq!(log.check_at(t0 + SEC), Verdict::Suppress);
        }
        // Not before the interval is over (the next line may still carry it)...
        assert_eq!(log.take_expired_suppressed(t0 + 9 * SEC), 0);
        // ...then once, and not again with the next line.
        assert_eq!(log.take_expired_suppressed(t0 + 10 * SEC), 41);
        assert_eq!(log.take_expired_suppressed(t0 + 20 * SEC), 0);
        assert_eq!(
            log.check_at(t0 + 20 * SEC),
            Verdict::Write { suppressed: 0 }
        );
    }

    #[test]
    fn kinds_are_limited_independently() {
        let a = RateLog::new("a", 1, 10 * SEC);
        let b = RateLog::new("b", 1, 10 * SEC);
        let t0 = Instant::now();
        assert_eq!(a.check_at(t0), Verdict::Write { suppressed: 0 });
        assert_eq!(a.check_at(t0), Verdict::Suppress);
        assert_eq!(b.check_at(t0), Verdict::Write { suppressed: 0 });
    }

    #[test]
    fn the_count_is_exact_under_concurrency() {
        static LOG: RateLog = RateLog::new("test", 5, Duration::from_secs(3_600));
        let suppressed: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..250)
                            .filter(|_| LOG.check() == Verdict::Suppress)
                            .count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(suppressed, 2_000 - 5);
        assert_eq!(LOG.window.lock().unwrap().suppressed, 2_000 - 5);
    }

    #[test]
    fn the_macros_expand_with_fields() {
        static LOG: RateLog = RateLog::new("test", 1, Duration::from_secs(3_600));
        let client = std::net::IpAddr::from([10, 0, 0, 1]);
        ratelog_warn!(LOG, %client, n = 1, "a warning");
        ratelog_error!(LOG, error = "x", "an error");
        assert_eq!(LOG.window.lock().unwrap().suppressed, 1);
    }
}
