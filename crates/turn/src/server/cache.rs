//! The response cache: a retransmitted request gets the answer the first one got.

use super::*;

/// Answers to recent authenticated requests, so a retransmission is answered identically even when the first
/// answer changed state (a Refresh to 0, a ChannelBind).
///
/// When the cache is full, a source (IPv4 address, IPv6 /64) that holds [`ResponseCache::share`] of it pushes out
/// nothing: its answers are not cached until its own age out. Before, one client's Refresh flood pushed every other
/// answer out within a second, and a client whose Allocate answer was lost then got 437 for its retransmission,
/// while the allocation it could not use stayed charged to its quotas. Below capacity any source may use the room
/// (a busy NAT). (Its own oldest is not pushed out instead: taking entries from the middle of the age order would
/// leave stale places in it, as many as the flood makes.)
pub(super) struct ResponseCache {
    entries: FastMap<(FiveTuple, TransactionId), (Instant, Vec<u8>)>,
    order: VecDeque<(Instant, FiveTuple, TransactionId)>,
    per_source: FastMap<Source, usize>,
    capacity: usize,
}

/// RFC 8489 §6.2.1: a client stops retransmitting after 39.5 s by default.
pub(super) const RETRANSMISSION_WINDOW: Duration = Duration::from_secs(40);

impl ResponseCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: FastMap::default(),
            order: VecDeque::new(),
            per_source: FastMap::default(),
            capacity,
        }
    }

    /// Entries one source may hold: an eighth, so that pushing everyone else's answers out takes eight sources.
    fn share(&self) -> usize {
        (self.capacity / 8).max(1)
    }

    fn forget(&mut self, ft: FiveTuple, tid: TransactionId) {
        if self.entries.remove(&(ft, tid)).is_some() {
            let source = Source::of(ft.client.ip());
            if let Some(held) = self.per_source.get_mut(&source) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    self.per_source.remove(&source);
                }
            }
        }
    }

    pub(super) fn get(&self, key: &(FiveTuple, TransactionId), now: Instant) -> Option<&[u8]> {
        self.entries
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < RETRANSMISSION_WINDOW)
            .map(|(_, b)| b.as_slice())
    }

    pub(super) fn insert(&mut self, key: (FiveTuple, TransactionId), now: Instant, bytes: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let source = Source::of(key.0.client.ip());
        if let Some(entry) = self.entries.get_mut(&key) {
            *entry = (now, bytes.to_vec());
            return;
        }
        let full = self.entries.len() >= self.capacity;
        if full && self.per_source.get(&source).is_some_and(|held| *held >= self.share()) {
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some((_, ft, tid)) = self.order.pop_front() else {
                break;
            };
            self.forget(ft, tid);
        }
        self.entries.insert(key, (now, bytes.to_vec()));
        *self.per_source.entry(source).or_default() += 1;
        self.order.push_back((now, key.0, key.1));
    }

    pub(super) fn shrink(&mut self) {
        shrink(&mut self.entries);
        shrink(&mut self.per_source);
        if self.order.capacity() > 4 * self.order.len() + 64 {
            self.order.shrink_to(2 * self.order.len());
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(at, ft, tid)) = self.order.front() {
            if now.saturating_duration_since(at) < RETRANSMISSION_WINDOW {
                break;
            }
            self.order.pop_front();
            self.forget(ft, tid);
        }
    }
}
