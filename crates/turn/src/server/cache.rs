//! The response cache: a retransmitted request gets the answer the first one got.

use super::*;

/// Answers to recent authenticated requests, so a retransmission is answered identically even when the first
/// answer changed state (a Refresh to 0, a ChannelBind).
pub(super) struct ResponseCache {
    entries: FastMap<(FiveTuple, TransactionId), (Instant, Vec<u8>)>,
    order: VecDeque<(Instant, FiveTuple, TransactionId)>,
    capacity: usize,
}

/// RFC 8489 §6.2.1: a client stops retransmitting after 39.5 s by default.
pub(super) const RETRANSMISSION_WINDOW: Duration = Duration::from_secs(40);

impl ResponseCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: FastMap::default(),
            order: VecDeque::new(),
            capacity,
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
        while self.entries.len() >= self.capacity {
            let Some((_, ft, tid)) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&(ft, tid));
        }
        if self.entries.insert(key, (now, bytes.to_vec())).is_none() {
            self.order.push_back((now, key.0, key.1));
        }
    }

    pub(super) fn shrink(&mut self) {
        shrink(&mut self.entries);
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
            self.entries.remove(&(ft, tid));
        }
    }
}
