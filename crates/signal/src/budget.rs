//! Byte budgets for the frames the hub holds: per session, per source and in total.
//!
//! What a stranger can make the hub hold is the frames kept for its sessions — the replay buffer of a connected
//! session (unacknowledged frames) and the queue of a disconnected one. Every kept frame is charged to its session,
//! to the session's [`Source`] and to the global total; releasing a frame (acknowledged, trimmed, session ended)
//! refunds all three. A frame that would take a budget past its limit is refused ([`Over`]) when its session is
//! disconnected; a connected session, which has been sent the frame anyway, forgets its own oldest frames instead
//! (`MemoryHub::deliver_with`). Room is never made by dropping another session's frames.

use std::collections::HashMap;

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

/// Bytes held per source and in total. Per session the count lives in the session itself (one owner per fact).
#[derive(Debug)]
pub(crate) struct Budget {
    limits: ByteLimits,
    per_source: HashMap<Source, usize, foldhash::fast::RandomState>,
    total: usize,
}

impl Budget {
    pub fn new(limits: ByteLimits) -> Self {
        Self {
            limits,
            per_source: HashMap::default(),
            total: 0,
        }
    }

    /// Would `n` more bytes for a session of `source` that holds `session_held` fit every budget?
    pub fn check(&self, source: Source, session_held: usize, n: usize) -> Result<(), Over> {
        if session_held.saturating_add(n) > self.limits.session {
            return Err(Over::Session);
        }
        let source_held = self.per_source.get(&source).copied().unwrap_or(0);
        if source_held.saturating_add(n) > self.limits.source {
            return Err(Over::Source);
        }
        if self.total.saturating_add(n) > self.limits.total {
            return Err(Over::Global);
        }
        Ok(())
    }

    pub fn charge(&mut self, source: Source, n: usize) {
        *self.per_source.entry(source).or_insert(0) += n;
        self.total += n;
    }

    pub fn release(&mut self, source: Source, n: usize) {
        if let Some(held) = self.per_source.get_mut(&source) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                self.per_source.remove(&source);
            }
        }
        self.total = self.total.saturating_sub(n);
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn held_by(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
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
}
