//! The reflection guard, shared by every worker.
//!
//! Unauthenticated UDP answers are larger than their requests (a 401 carries realm, nonce and algorithms; a Binding
//! answer an address), and UDP sources can be spoofed, so a stranger could aim them at a victim. RFC 8656 gives no
//! rule; answering nothing larger than the request would break every client, whose first Allocate is ~30 bytes. So
//! each source ([`Source`]) gets a budget of *excess* bytes (answer − request), refilled per second: a normal client
//! spends a few hundred bytes, a reflection attack on one victim is capped at the budget.
//!
//! The budget is one per source for the whole server — a table sharded by source, shared by the workers — because
//! the kernel spreads a spoofer's source ports over every worker: per-worker budgets would give it one budget per
//! core. A source that completed an authenticated exchange (its request carried our nonce, which is bound to its
//! IP, so it received what we sent it) is *proven* for a while and gets [`PROVEN_FACTOR`] times the budget: many
//! real clients behind one NAT each start with an unauthenticated Allocate, and those 401s must not be throttled
//! like a spoofer's, while a spoofer borrowing a proven address is still bounded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

use source::Source;

type FastMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// Sources tracked at once over all shards; beyond, idle unproven entries (whose budget is full again) go first.
const TRACKED: usize = 65_536;
const SHARDS: usize = 64;
/// How long an authenticated exchange vouches for its source.
pub const PROVEN_FOR: Duration = Duration::from_secs(600);
/// A proven source's budget, as a multiple of the configured one: 10 000 allocations set up in about a second from
/// one NAT spend about 1 MB of 401 excess.
pub const PROVEN_FACTOR: f64 = 64.0;

/// Excess-byte budgets per source, shared by every worker's `turn::Server`. Touched only by unauthenticated UDP
/// answers larger than their request and by the first authenticated answer of a source — never by relayed data.
#[derive(Debug)]
pub struct ReflectionGuard {
    shards: Vec<Mutex<FastMap<Source, Budget>>>,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    left: f64,
    at: Instant,
    proven_until: Option<Instant>,
}

impl Default for ReflectionGuard {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(FastMap::default())).collect(),
        }
    }
}

impl ReflectionGuard {
    /// The shard holding `source` (always `Some`: the table is built with [`SHARDS`] shards).
    fn shard(&self, source: &Source) -> Option<std::sync::MutexGuard<'_, FastMap<Source, Budget>>> {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::with_seed(0x7261_7665).hash_one(source);
        let shard = self.shards.get((hash as usize) % SHARDS)?;
        Some(shard.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Charges `excess` bytes to `source` at `rate` bytes per second (a burst of twice that); false when spent.
    pub fn allow(&self, source: Source, excess: usize, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate);
        let Some(mut shard) = self.shard(&source) else {
            return true;
        };
        if shard.len() >= TRACKED / SHARDS && !shard.contains_key(&source) {
            let idle = Duration::from_secs(2);
            shard.retain(|_, b| b.proven_until.is_some_and(|t| t > now) || now.saturating_duration_since(b.at) < idle);
            if shard.len() >= TRACKED / SHARDS {
                shard.retain(|_, b| b.proven_until.is_some_and(|t| t > now));
            }
            if shard.len() >= TRACKED / SHARDS {
                shard.clear();
            }
        }
        let b = shard.entry(source).or_insert(Budget {
            left: 2.0 * rate,
            at: now,
            proven_until: None,
        });
        let factor = if b.proven_until.is_some_and(|t| t > now) {
            PROVEN_FACTOR
        } else {
            1.0
        };
        let burst = 2.0 * rate * factor;
        b.left = (b.left + now.saturating_duration_since(b.at).as_secs_f64() * rate * factor).min(burst);
        b.at = now;
        if b.left < excess as f64 {
            return false;
        }
        b.left -= excess as f64;
        true
    }

    /// `source` answered our nonce: it receives what it is sent.
    /// `source` answered our nonce: it receives what it is sent. A newly proven source starts with the proven burst
    /// (`rate` is the configured plain rate), so the NAT whose first client just authenticated can set up the
    /// others at once.
    pub fn prove(&self, source: Source, rate: u32, now: Instant) {
        let Some(mut shard) = self.shard(&source) else {
            return;
        };
        let until = now + PROVEN_FOR;
        let burst = 2.0 * f64::from(rate) * PROVEN_FACTOR;
        let full = shard.len() >= TRACKED / SHARDS;
        match shard.get_mut(&source) {
            // Extend only when a good part has elapsed: an authenticated client sends many requests.
            Some(b) if b.proven_until.is_some_and(|t| t > now + PROVEN_FOR / 2) => {}
            Some(b) => {
                if b.proven_until.is_none_or(|t| t <= now) {
                    b.left = burst;
                    b.at = now;
                }
                b.proven_until = Some(until);
            }
            None if !full => {
                shard.insert(
                    source,
                    Budget {
                        left: burst,
                        at: now,
                        proven_until: Some(until),
                    },
                );
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proven_source_gets_the_larger_budget_and_others_do_not() {
        let guard = ReflectionGuard::default();
        let now = Instant::now();
        let nat = Source::of("192.0.2.1".parse().unwrap());
        let other = Source::of("192.0.2.2".parse().unwrap());
        assert!(guard.allow(nat, 2000, 1000, now));
        assert!(!guard.allow(nat, 100, 1000, now), "burst of 2000 spent");
        guard.prove(nat, 1000, now);
        // Newly proven: the proven burst at once (2 × 64 000 bytes)…
        let mut n = 0;
        while guard.allow(nat, 100, 1000, now) {
            n += 1;
        }
        assert_eq!(n, 1280);
        // …then one second of the proven rate: 64 000 bytes.
        let later = now + Duration::from_secs(1);
        let mut n = 0;
        while guard.allow(nat, 100, 1000, later) {
            n += 1;
        }
        assert_eq!(n, 640);
        assert!(guard.allow(other, 2000, 1000, later));
        assert!(
            !guard.allow(other, 100, 1000, later),
            "an unproven source keeps the plain budget"
        );
        // The proof lapses.
        let much_later = now + PROVEN_FOR + Duration::from_secs(10);
        let mut n = 0;
        while guard.allow(nat, 100, 1000, much_later) {
            n += 1;
        }
        assert_eq!(n, 20, "back to a burst of 2000 bytes");
    }
}
