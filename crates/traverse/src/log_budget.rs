//! A budget on the log's `info` lines (`log.lines_per_second`). Strangers decide how many sockets open and close,
//! rooms are joined and allocations made, and each of those is an `info` line: without a budget a flood of them
//! fills the disk and, when the log's reader is slow, blocks the threads that write them. Warnings and errors always
//! pass (those an attack repeats are throttled where they are logged), and so do debug and trace lines, which an
//! operator turns on on purpose; what is held back is counted and said in a warning every 10 s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use source::{Bucket, Rate};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// How often the lines held back are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A burst of this many seconds' worth passes at once (the lines of a start, a wave of reconnections).
const BURST_SECONDS: u32 = 10;

/// A token bucket over informational events, shared by every thread that logs.
#[derive(Debug)]
pub struct LogBudget {
    rate: Rate,
    bucket: Mutex<Bucket>,
    held_back: AtomicU64,
}

impl LogBudget {
    pub fn new(lines_per_second: u32, now: Instant) -> Self {
        let per_second = lines_per_second.max(1);
        let rate = Rate::new(
            per_second.saturating_mul(BURST_SECONDS),
            Duration::from_secs(1) / per_second,
        );
        Self {
            rate,
            bucket: Mutex::new(rate.full(now)),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether an informational line may be written at `now`; counted as held back if not.
    pub fn take(&self, now: Instant) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let taken = self.rate.take(&mut bucket, now).is_ok();
        if !taken {
            self.held_back.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Lines held back since the last call.
    pub fn take_held_back(&self) -> u64 {
        self.held_back.swap(0, Ordering::Relaxed)
    }

    /// Reports what was held back, every [`REPORT_EVERY`], for the life of the process.
    pub fn report_in_background(self: &Arc<Self>, lines_per_second: u32) {
        let budget = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-budget".into())
            .spawn(move || loop {
                std::thread::sleep(REPORT_EVERY);
                let held_back = budget.take_held_back();
                if held_back > 0 {
                    tracing::warn!(
                        held_back,
                        "informational log lines held back in the last {} s: past log.lines_per_second ({lines_per_second})",
                        REPORT_EVERY.as_secs()
                    );
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "the log budget's reporter did not start: held-back lines go unreported");
        }
    }
}

/// `info` events spend the budget; other levels and spans do not.
fn spends(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() == Level::INFO
}

/// The budget as a per-layer filter of the log's output.
#[derive(Debug, Clone)]
pub struct BudgetFilter(pub Arc<LogBudget>);

impl<S> Filter<S> for BudgetFilter {
    /// Decided per event in [`Filter::event_enabled`], which runs once for each event that reaches the output
    /// (`enabled` may be asked more than once for one event, and by `enabled!` checks that write nothing).
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        !spends(event.metadata()) || self.0.take(Instant::now())
    }

    /// No level of its own: the level filter's hint stands, so what it turns off is still skipped at the call site.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_ten_seconds_then_the_rate_and_what_was_held_back() {
        let t0 = Instant::now();
        let budget = LogBudget::new(5, t0);
        let passed = (0..100).filter(|_| budget.take(t0)).count();
        assert_eq!(passed, 50, "ten seconds' worth at once");
        assert_eq!(budget.take_held_back(), 50);
        assert_eq!(budget.take_held_back(), 0, "counted once");
        let later = t0 + Duration::from_millis(1000);
        let passed = (0..100).filter(|_| budget.take(later)).count();
        assert_eq!(passed, 5, "then five a second");
        // Refilled, never past the burst.
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| budget.take(much_later)).count(), 50);
    }
}
