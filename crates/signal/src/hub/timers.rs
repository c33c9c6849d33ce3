//! Timers: one queue of deadlines, so that a sweep looks only at what is due — an idle socket or session costs no CPU
//! between its own deadlines, however many there are.
//!
//! Each socket has exactly one entry, at its next heartbeat check ([`Conn::queued_at`] says which entry is its
//! own); talking moves no entry, so a busy socket costs one look per heartbeat interval. A session whose socket
//! dropped has an entry at the end of its grace. An entry whose socket or session is gone, or that is no longer its
//! owner's own, is dropped when it comes up; the queue is rebuilt when such entries outnumber the live ones.
//! Sweeps stay at least [`SWEEP_INTERVAL`] apart, so that a million sockets' deadlines cost a wake-up per sweep, not
//! one each.
//!
//! [`Conn::queued_at`]: super::sockets::Conn

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::RngCore;

use super::{ConnId, MemoryHub, Now};
use crate::id::PeerId;

/// Sweeps are at least this far apart: a ping or a grace's end is at most this late.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// What a deadline is for.
enum Due {
    /// The socket's heartbeat: ping it, or close it.
    Heartbeat(ConnId),
    /// The end of a disconnected session's grace.
    Grace(PeerId),
}

/// A deadline, ordered by its instant alone.
struct Entry {
    at: Instant,
    due: Due,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

/// The hub's deadlines, earliest first.
#[derive(Default)]
pub(super) struct Timers {
    queue: BinaryHeap<Reverse<Entry>>,
    /// When the last sweep ran.
    swept: Option<Instant>,
}

impl Timers {
    pub fn heartbeat(&mut self, conn: ConnId, at: Instant) {
        self.queue.push(Reverse(Entry {
            at,
            due: Due::Heartbeat(conn),
        }));
    }

    pub fn grace(&mut self, peer: PeerId, at: Instant) {
        self.queue.push(Reverse(Entry {
            at,
            due: Due::Grace(peer),
        }));
    }

    /// The earliest deadline.
    fn next(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(e)| e.at)
    }

    /// Takes the earliest entry if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(Instant, Due)> {
        if self.queue.peek().is_some_and(|Reverse(e)| e.at <= now) {
            return self.queue.pop().map(|Reverse(e)| (e.at, e.due));
        }
        None
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn shrink(&mut self) {
        if self.queue.capacity() > 4 * self.queue.len() + 64 {
            self.queue.shrink_to(2 * self.queue.len());
        }
    }
}

impl<R: RngCore + Send> MemoryHub<R> {
    /// Is a sweep due at `now`? The earliest of the deadline queue and the outcome reports' deadline, spaced by the
    /// sweep interval.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let outcomes = self.pairing.due();
        let earliest = match (self.timers.next(), outcomes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let swept = self.timers.swept;
        earliest.map(|at| swept.map_or(at, |swept| at.max(swept + SWEEP_INTERVAL)))
    }

    /// Handles every deadline due at `now`.
    pub(super) fn sweep(&mut self, now: Now) {
        if self.next_deadline().is_none_or(|due| now.instant < due) {
            return;
        }
        self.timers.swept = Some(now.instant);
        while let Some((at, due)) = self.timers.pop_due(now.instant) {
            match due {
                Due::Heartbeat(conn) => self.heartbeat(conn, at, now.instant),
                Due::Grace(peer) => self.grace_ended(&peer, at),
            }
        }
        if self.pairing.due().is_some_and(|due| due <= now.instant) {
            self.expire_outcomes(now.instant);
        }
        self.forget_stale_deadlines();
        self.shrink_after_load();
    }

    /// Drops entries no socket or session owns any more, when they outnumber the live ones (sockets that closed
    /// between their heartbeats, sessions resumed within their grace).
    fn forget_stale_deadlines(&mut self) {
        let live = self.conns.len() + self.sessions.len();
        if self.timers.len() <= 2 * live + 64 {
            return;
        }
        let (conns, sessions, grace) = (&self.conns, &self.sessions, self.limits.resume_grace);
        self.timers.queue.retain(|Reverse(e)| match &e.due {
            Due::Heartbeat(conn) => conns.get(conn).is_some_and(|c| c.queued_at == e.at),
            Due::Grace(peer) => sessions.get(peer).and_then(|s| s.grace_end(grace)) == Some(e.at),
        });
    }
}
