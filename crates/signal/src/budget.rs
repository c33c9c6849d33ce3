//! Byte budgets for the frames the hub holds: per session, per source and in total.
//!
//! What a stranger can make the hub hold is the frames kept for its sessions — the replay buffer of a connected
//! session (unacknowledged frames) and the queue of a disconnected one. Every kept frame is charged to its session,
//! to the session's [`Source`] and to the global total; releasing a frame (acknowledged, trimmed, session ended)
//! refunds all three. A frame that would take a budget past its limit is refused ([`Over`]) when its session is
//! disconnected; a connected session, which has been sent the frame anyway, forgets its own oldest frames instead
//! (`MemoryHub::deliver_with`). Room is never made by dropping another session's frames.
//!
//! A server with several hubs (one per core, each a shard of the rooms) shares the source and total budgets between
//! them through [`SharedBytes`], so each is the configured one however many cores there are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bookkeeping cost of a kept frame beyond its text (its `Buffered` entry and the `Bytes` header), so that a flood
/// of tiny frames is charged too.
pub(crate) const FRAME_OVERHEAD: usize = 64;

/// Where a session's bytes are charged: the crate `source`'s unit, shared with the TURN quotas.
pub use source::Source;

/// Which budget a frame would exceed. Each is told to the sender as the `reason` of `undeliverable`
/// ([`crate::UndeliverableReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    /// The recipient's own budget (a disconnected peer's queue).
    #[error("the recipient's queue is full")]
    Session,
    /// Everything held for the recipient's address (IPv4) or /64 (IPv6).
    #[error("the recipient's address holds its maximum of undelivered bytes")]
    Source,
    /// Everything the hub holds.
    #[error("the server holds its maximum of undelivered bytes")]
    Global,
}

/// The three limits, bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteLimits {
    pub session: usize,
    pub source: usize,
    pub total: usize,
}

/// What the hubs of one server (its shards: one [`crate::MemoryHub`] per core) hold between them, per source and in
/// total. Splitting the budgets by the number of shards instead left a room, which lives on one shard, an eighth of
/// its source's budget on an 8-core machine, and one busy shard refusing frames while the others held nothing.
///
/// A hub tells its counts here in steps ([`Budget`]'s `step`, at most [`MAX_STEP`]), so a kept frame costs an atomic
/// load and no shared write. A source held on one shard (a room's peers, the common case) is checked exactly; across
/// shards, and for the total, each shard may pass the bound by one step and one frame at most.
#[derive(Debug, Default)]
pub struct SharedBytes {
    total: AtomicUsize,
    /// Per source, striped so that hubs telling about different sources rarely meet on one lock.
    per_source: [Mutex<HashMap<Source, usize, foldhash::fast::RandomState>>; STRIPES],
}

const STRIPES: usize = 16;

/// The largest step in which a hub tells [`SharedBytes`] what it holds: 64 KiB, a thousand small signals.
pub const MAX_STEP: usize = 64 * 1024;

impl SharedBytes {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Bytes held by all the hubs, as told.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Sources holding anything, as told.
    pub fn sources(&self) -> usize {
        self.per_source
            .iter()
            .map(|stripe| stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len())
            .sum()
    }

    /// What the hubs other than one that told `told` hold for `source`.
    fn others(&self, source: Source, told: usize) -> usize {
        self.stripe(source).map_or(0, |stripe| {
            let map = stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.get(&source).map_or(0, |all| all.saturating_sub(told))
        })
    }

    fn stripe(&self, source: Source) -> Option<&Mutex<HashMap<Source, usize, foldhash::fast::RandomState>>> {
        let hash = std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), source);
        self.per_source.get(hash as usize % STRIPES)
    }

    /// Replaces what one hub had told for `source` (`told`) by what it holds now (`held`); returns what the other
    /// hubs hold for it.
    fn retell(&self, source: Source, told: usize, held: usize) -> usize {
        let Some(stripe) = self.stripe(source) else {
            return 0;
        };
        let mut map = stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let all = map.entry(source).or_insert(0);
        *all = all.saturating_sub(told).saturating_add(held);
        let others = all.saturating_sub(held);
        if *all == 0 {
            map.remove(&source);
        }
        others
    }
}

/// One source's bytes in one hub: what it holds, what it last told [`SharedBytes`], and what the other hubs held
/// then.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    here: usize,
    told: usize,
    others: usize,
}

/// Bytes held per source and in total. Per session the count lives in the session itself (one owner per fact).
#[derive(Debug)]
pub(crate) struct Budget {
    limits: ByteLimits,
    per_source: HashMap<Source, Held, foldhash::fast::RandomState>,
    total: usize,
    /// With other hubs: what they share, what this one last told of its total, and the step of its telling.
    shared: Option<Arc<SharedBytes>>,
    total_told: usize,
    step: usize,
}

impl Budget {
    pub fn new(limits: ByteLimits) -> Self {
        Self {
            limits,
            per_source: HashMap::default(),
            total: 0,
            shared: None,
            total_told: 0,
            step: 0,
        }
    }

    /// Shares the source and total budgets with the other hubs of `shared`; before anything is charged.
    pub fn share(&mut self, shared: Arc<SharedBytes>) {
        // A sixteenth of the smaller bound, so that what the shards may pass it by stays small beside it.
        self.step = (self.limits.source.min(self.limits.total) / 16).clamp(1, MAX_STEP);
        self.shared = Some(shared);
    }

    /// What the other hubs hold in total, as they last told.
    fn others_total(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |shared| shared.total().saturating_sub(self.total_told))
    }

    /// Would `n` more bytes for a session of `source` that holds `session_held` fit every budget? Before refusing
    /// for what other hubs held, asks what they hold now (they may have made room since).
    pub fn check(&mut self, source: Source, session_held: usize, n: usize) -> Result<(), Over> {
        if session_held.saturating_add(n) > self.limits.session {
            return Err(Over::Session);
        }
        let limit = self.limits.source;
        let fits = |h: &Held| h.here.saturating_add(h.others).saturating_add(n) <= limit;
        if let Some(held) = self.per_source.get_mut(&source) {
            if !fits(held) {
                match &self.shared {
                    Some(shared) if held.others > 0 => held.others = shared.others(source, held.told),
                    _ => {}
                }
                if !fits(held) {
                    return Err(Over::Source);
                }
            }
        } else if n > limit {
            return Err(Over::Source);
        }
        if self.total.saturating_add(self.others_total()).saturating_add(n) > self.limits.total {
            return Err(Over::Global);
        }
        Ok(())
    }

    pub fn charge(&mut self, source: Source, n: usize) {
        self.total += n;
        let held = self.per_source.entry(source).or_default();
        held.here += n;
        if let Some(shared) = &self.shared {
            if held.here.abs_diff(held.told) >= self.step {
                held.others = shared.retell(source, held.told, held.here);
                held.told = held.here;
            }
            self.tell_total();
        }
    }

    pub fn release(&mut self, source: Source, n: usize) {
        self.total = self.total.saturating_sub(n);
        if let std::collections::hash_map::Entry::Occupied(mut entry) = self.per_source.entry(source) {
            let held = entry.get_mut();
            held.here = held.here.saturating_sub(n);
            if let Some(shared) = &self.shared {
                // At 0 always, so that a source gone from every hub leaves nothing shared.
                if held.here.abs_diff(held.told) >= self.step || (held.here == 0 && held.told != 0) {
                    held.others = shared.retell(source, held.told, held.here);
                    held.told = held.here;
                }
            }
            if held.here == 0 {
                entry.remove();
            }
        }
        if self.shared.is_some() {
            self.tell_total();
        }
    }

    /// Tells the other hubs this one's total once it has moved by a step since it last did, or reached 0.
    fn tell_total(&mut self) {
        let Some(shared) = &self.shared else { return };
        if self.total.abs_diff(self.total_told) >= self.step || (self.total == 0 && self.total_told != 0) {
            if self.total >= self.total_told {
                shared.total.fetch_add(self.total - self.total_told, Ordering::Relaxed);
            } else {
                shared.total.fetch_sub(self.total_told - self.total, Ordering::Relaxed);
            }
            self.total_told = self.total;
        }
    }

    /// Bytes this hub holds.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes this hub holds for `source`.
    pub fn held_by(&self, source: Source) -> usize {
        self.per_source.get(&source).map_or(0, |h| h.here)
    }

    /// Sources holding anything: zero once every session has ended (tests check nothing leaks).
    pub fn sources(&self) -> usize {
        self.per_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_address_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(Source::from(a), Source::from(b));
        assert_ne!(Source::from(a), Source::from(c));
        assert_eq!(Source::from(a).to_string(), "2001:db8:1:2::/64");
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(
            Source::from(mapped),
            Source::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
        );
        assert_eq!(Source::from(mapped).to_string(), "192.0.2.7");
    }

    #[test]
    fn each_budget_refuses_with_its_own_reason_and_release_refunds() {
        let mut b = Budget::new(ByteLimits {
            session: 100,
            source: 150,
            total: 200,
        });
        let s1 = Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let s2 = Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(b.check(s1, 60, 41), Err(Over::Session));
        b.charge(s1, 100);
        assert_eq!(b.check(s1, 0, 51), Err(Over::Source));
        b.charge(s2, 90);
        assert_eq!(b.check(s2, 0, 11), Err(Over::Global));
        assert_eq!(b.check(s2, 0, 10), Ok(()));
        b.release(s1, 100);
        b.release(s2, 90);
        assert_eq!((b.total(), b.sources()), (0, 0));
    }

    fn shared_pair(limits: ByteLimits) -> (Arc<SharedBytes>, Budget, Budget) {
        let shared = SharedBytes::new();
        let (mut a, mut b) = (Budget::new(limits), Budget::new(limits));
        a.share(shared.clone());
        b.share(shared.clone());
        (shared, a, b)
    }

    /// Charges `frame` bytes at a time until the budget refuses; what was charged.
    fn fill(budget: &mut Budget, source: Source, frame: usize) -> (usize, Over) {
        let mut charged = 0;
        loop {
            match budget.check(source, 0, frame) {
                Ok(()) => {
                    budget.charge(source, frame);
                    charged += frame;
                }
                Err(over) => return (charged, over),
            }
        }
    }

    #[test]
    fn shards_share_one_source_budget_and_one_total() {
        const KIB: usize = 1024;
        let limits = ByteLimits {
            session: usize::MAX,
            source: 1024 * KIB,
            total: 4096 * KIB,
        };
        let (shared, mut a, mut b) = shared_pair(limits);
        let s1 = Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        // A source on one shard gets the whole of its budget, not a share per shard.
        assert_eq!(fill(&mut a, s1, KIB), (1024 * KIB, Over::Source));
        // On the other shard it gets at most one step (64 KiB here) before it learns what the first holds.
        let (more, over) = fill(&mut b, s1, KIB);
        assert_eq!(over, Over::Source);
        assert!(more <= MAX_STEP, "{more} bytes past the source's budget");
        // Room made on one shard is room on the other, once told.
        for _ in 0..512 {
            a.release(s1, KIB);
        }
        let (after, _) = fill(&mut b, s1, KIB);
        assert!(
            after >= 512 * KIB - 2 * MAX_STEP,
            "only {after} bytes after 512 KiB were freed"
        );

        // The total: sources on both shards together hold at most the total, give or take a step per shard.
        let mut held = 0;
        for n in 2..=9 {
            let source = Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)));
            let shard = if n % 2 == 0 { &mut a } else { &mut b };
            let (charged, over) = fill(shard, source, KIB);
            held += charged;
            if over == Over::Global {
                break;
            }
        }
        let all = a.total() + b.total();
        assert!(held > 0 && held <= all);
        assert!(
            all <= 4096 * KIB + 2 * MAX_STEP,
            "{all} bytes held against a total of 4 MiB"
        );
        assert!(all >= 4096 * KIB - 2 * MAX_STEP, "refused at {all} bytes of 4 MiB");
        assert!(
            all.abs_diff(shared.total()) <= 2 * MAX_STEP,
            "told {} of {all}",
            shared.total()
        );
        assert_eq!(
            a.check(Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))), 0, KIB),
            Err(Over::Global)
        );
    }

    #[test]
    fn shards_that_hold_nothing_leave_nothing_shared() {
        let limits = ByteLimits {
            session: usize::MAX,
            source: 1 << 20,
            total: 1 << 24,
        };
        let (shared, mut a, mut b) = shared_pair(limits);
        let sources: Vec<Source> = (1..=50)
            .map(|n| Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))))
            .collect();
        for (i, &source) in sources.iter().enumerate() {
            for k in 0..100 {
                let shard = if (i + k) % 3 == 0 { &mut a } else { &mut b };
                shard.charge(source, 1000 + k);
            }
        }
        assert!(shared.total() > 0);
        for (i, &source) in sources.iter().enumerate() {
            for k in 0..100 {
                let shard = if (i + k) % 3 == 0 { &mut a } else { &mut b };
                shard.release(source, 1000 + k);
            }
        }
        assert_eq!((a.total(), b.total(), a.sources(), b.sources()), (0, 0, 0, 0));
        assert_eq!((shared.total(), shared.sources()), (0, 0));
    }
}
