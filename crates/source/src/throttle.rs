//! A warning that a refused budget would otherwise repeat thousands of times a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A warning that an attack would otherwise repeat thousands of times a second: logged at most once per
/// `interval_secs`, with the number of times it was held back.
#[derive(Debug)]
pub struct ThrottledLog {
    interval_secs: u64,
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl ThrottledLog {
    pub const fn new(interval_secs: u64) -> Self {
        Self {
            interval_secs,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(times held back since the last line)` when a line is due now.
    pub fn due(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last.load(Ordering::Relaxed);
        if now >= last + self.interval_secs
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let log = ThrottledLog::new(3600);
        assert_eq!(log.due(), Some(0), "the first is said");
        assert_eq!(log.due(), None);
        assert_eq!(log.due(), None);
        // The next line, an interval later, says how many were held back.
        log.last.store(0, Ordering::Relaxed);
        assert_eq!(log.due(), Some(2));
    }
}
