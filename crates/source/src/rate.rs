//! The token bucket that spends a per-source rate budget ([`RateLimiter`]): the web side's requests, the I/O layer's
//! new connections. A source is [`Source`]: an IPv4 address, or an IPv6 /64 (a host picks any address of its /64 at
//! will, so counting IPv6 addresses one by one would count nothing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Source;

/// How long until the source's next request would be allowed; sent as `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up, at least 1 (the header has no fractions; 0 would invite an immediate retry).
    pub fn secs(self) -> u64 {
        let whole = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        whole.max(1)
    }
}

/// A token bucket's shape: `burst` tokens at most, refilled one every `interval`. Shared by every bucket of a
/// [`RateLimiter`], and by a budget with a single bucket (the log's).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    burst: f64,
    interval: Duration,
}

/// One bucket's tokens as of its last use; its [`Rate`] is kept beside it.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Rate {
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            interval: interval.max(Duration::from_nanos(1)),
        }
    }

    /// A bucket holding its whole burst.
    pub fn full(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.burst,
            at: now,
        }
    }

    /// Takes one token from `bucket` at `now`, or says how long until there is one.
    pub fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), RetryAfter> {
        let tokens = self.level(*bucket, now);
        bucket.at = now;
        if tokens < 1.0 {
            bucket.tokens = tokens;
            // tokens is in [0, 1), so the factor is in (0, 1]: mul_f64 cannot panic.
            return Err(RetryAfter(self.interval.mul_f64((1.0 - tokens).clamp(0.0, 1.0))));
        }
        bucket.tokens = tokens - 1.0;
        Ok(())
    }

    fn level(&self, bucket: Bucket, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() / self.interval.as_secs_f64();
        (bucket.tokens + refilled).min(self.burst)
    }
}

/// A token bucket per [`Source`]: `burst` requests at once, then one every `interval`.
///
/// Bounded in memory: at `max_sources` tracked sources, full buckets are forgotten first (they hold nothing a new
/// bucket would not); if that is not enough, the sixteenth idle longest go. Forgetting a source hands it a fresh
/// burst, so it is done to the least recently seen, never to everyone at once — clearing the whole table would hand
/// the flooding sources a fresh burst too.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    max_sources: usize,
    buckets: Mutex<HashMap<Source, Bucket>>,
}

/// Sources a server-wide per-second limiter ([`RateLimiter::per_second`]) remembers: about 100 bytes each.
pub const PER_SECOND_SOURCES: usize = 65_536;

impl RateLimiter {
    /// `per_second` a second per source after a burst of `burst_secs` seconds' worth, remembering
    /// [`PER_SECOND_SOURCES`]; `None` for 0 (no limit). The shape of the limits on connections, requests and
    /// allocations.
    pub fn per_second(per_second: u32, burst_secs: u32) -> Option<Self> {
        (per_second > 0).then(|| {
            Self::new(
                per_second.saturating_mul(burst_secs),
                Duration::from_secs(1) / per_second,
                PER_SECOND_SOURCES,
            )
        })
    }

    pub fn new(burst: u32, interval: Duration, max_sources: usize) -> Self {
        Self {
            rate: Rate::new(burst, interval),
            max_sources: max_sources.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `source` at `now`, or says how long until there is one.
    pub fn check(&self, source: Source, now: Instant) -> Result<(), RetryAfter> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= self.max_sources && !buckets.contains_key(&source) {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(source).or_insert_with(|| self.rate.full(now));
        self.rate.take(bucket, now)
    }

    fn make_room(&self, buckets: &mut HashMap<Source, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.rate.level(*b, now) < self.rate.burst);
        if buckets.len() < self.max_sources {
            return;
        }
        // Still full of sources that spent tokens recently: drop the sixteenth seen longest ago, so this O(n) pass
        // runs once per max_sources/16 newcomers.
        let mut seen: Vec<Instant> = buckets.values().map(|b| b.at).collect();
        let cut = (seen.len() / 16).max(1) - 1;
        let (_, oldest_kept, _) = seen.select_nth_unstable(cut);
        let cutoff = *oldest_kept;
        buckets.retain(|_, b| b.at > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allows_a_burst_then_refills_and_says_when() {
        let limiter = RateLimiter::new(2, Duration::from_secs(10), 100);
        let a = Source::from(ip("192.0.2.1"));
        let b = Source::from(ip("192.0.2.2"));
        let t0 = Instant::now();
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0).is_ok());
        assert_eq!(limiter.check(a, t0), Err(RetryAfter(Duration::from_secs(10))));
        assert!(limiter.check(b, t0).is_ok(), "buckets are per source");
        let later = limiter.check(a, t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(later.secs(), 6);
        assert!(limiter.check(a, t0 + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn one_slash_64_shares_one_bucket() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let allowed = (1..=1000u16)
            .filter(|i| {
                let addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 7, *i, 0, 0, 1));
                limiter.check(Source::from(addr), t0).is_ok()
            })
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn a_flood_of_sources_stays_bounded_and_recent_sources_stay_limited() {
        let limiter = RateLimiter::new(1, Duration::from_secs(3600), 64);
        let t0 = Instant::now();
        let flooder = |i: u32| Source::from(IpAddr::V4((0x0a00_0000 + i).into()));
        for i in 0..10_000u32 {
            let t = t0 + Duration::from_millis(u64::from(i));
            assert!(limiter.check(flooder(i), t).is_ok());
            assert!(limiter.buckets.lock().unwrap().len() <= 64);
        }
        // The most recent sources are remembered: no fresh burst for them (clearing the table would give one).
        let t = t0 + Duration::from_secs(11);
        for i in 9_990..10_000 {
            assert!(limiter.check(flooder(i), t).is_err(), "source {i} got a fresh burst");
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(RetryAfter(Duration::ZERO).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1500)).secs(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(60)).secs(), 60);
    }
}
