//! Connection outcomes: each peer's `outcome` report about another peer of its room is held until the other side's
//! report about it arrives, or until a deadline; then [`outcome::classify`] decides, both peers get a `diagnosis`
//! frame, and the I/O layer gets [`Output::Outcome`] to record it.
//!
//! Held reports are charged to the reporter's source and to the hub's total like kept frames (`crate::budget`),
//! and at most `max_peers_per_room` are held per reporter; a report that does not fit is diagnosed alone at once
//! rather than held. A pair is diagnosed once: when it was decided on one report, the other side's late report
//! about it is dropped (until [`LATE_REPORT_WINDOW`] has passed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outcome::{classify, classify_one, Absent, Diagnosis, Outcome, Report};
use rand::RngCore;
use serde_json::value::RawValue;

use source::RateLimiter;

use super::{ConnId, MemoryHub, Output};
use crate::budget::{Source, FRAME_OVERHEAD};
use crate::frame::{Frame, LeftReason};
use crate::id::PeerId;
use crate::protocol::{ErrorCode, Refusal};

/// How long a late report about a pair decided on one report is dropped: longer than the SDK's default timeout
/// (30 s) after which a peer that never connected reports.
pub(super) const LATE_REPORT_WINDOW: Duration = Duration::from_secs(60);

/// A session's burst of reports, per peer a room may have: a connection and one reconnection each.
pub(super) const REPORTS_PER_PEER: usize = 2;

/// Reports taken from one source (address) at once, then one per [`SOURCE_REPORT_EVERY`]: sessions are cheap to
/// open, and each has its own allowance, so one address could otherwise fill the counts and `recent_failures` at
/// the message rate (2 578 made-up pairs in 31 s in an audit). An office behind one NAT reports a few per minute.
pub(super) const SOURCE_REPORT_BURST: u32 = 120;
pub(super) const SOURCE_REPORT_EVERY: Duration = Duration::from_secs(1);
/// Sources whose report allowance is remembered (about 100 bytes each; full ones are forgotten first).
const SOURCE_REPORT_SOURCES: usize = 16_384;

/// A per-source report allowance ([`SOURCE_REPORT_BURST`], then one per [`SOURCE_REPORT_EVERY`]) for the hubs of one
/// server to share: each shard with its own let one address report N times as much on N shards.
pub fn report_allowance() -> Arc<RateLimiter> {
    Arc::new(RateLimiter::new(
        SOURCE_REPORT_BURST,
        SOURCE_REPORT_EVERY,
        SOURCE_REPORT_SOURCES,
    ))
}

/// A pair of peers in a room, in a fixed order (by id), whichever reported first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PairKey {
    room: Arc<str>,
    low: PeerId,
    high: PeerId,
}

impl PairKey {
    fn new(room: Arc<str>, a: &PeerId, b: &PeerId) -> Self {
        let (low, high) = if a.as_str() <= b.as_str() { (a, b) } else { (b, a) };
        Self {
            room,
            low: low.clone(),
            high: high.clone(),
        }
    }
}

/// A peer a session's pair was last diagnosed `connected` with (`Session::connected`).
#[derive(Debug, Clone)]
pub(super) struct Partner {
    pub peer: PeerId,
    /// Set when it left the room: a drop report about it is then decided at once, with how it left.
    pub gone: Option<LeftReason>,
}

/// The first report of a pair, waiting for the second.
struct Held {
    reporter: PeerId,
    about: PeerId,
    report: Report,
    source: Source,
    /// As charged to the budgets.
    bytes: usize,
    deadline: Instant,
}

/// The hub's outcome state: held reports and the pairs decided on one report.
pub(super) struct Pairing {
    held: HashMap<PairKey, Held>,
    /// Held reports per reporter, bounded by `max_peers_per_room`.
    per_reporter: HashMap<PeerId, usize>,
    /// Pairs decided on one report: the peer whose late report is dropped, until when.
    decided: HashMap<PairKey, (PeerId, Instant)>,
    /// Per session, the peers its pair was last diagnosed `connected` with: a `dropped` report is taken only about
    /// one of them, once, even after it left the room. At most `max_peers_per_room` each; only sessions that had a
    /// call have an entry (an idle socket pays nothing).
    connected: HashMap<PeerId, Vec<Partner>>,
    /// Per session, the peers it exchanged a `signal` with since their pair's last drop or interruption diagnosis,
    /// where either session is rebound (`Session::rebound`): what such a pair's drop or interruption is taken on,
    /// once (kept apart from `Session::signaled`, which a newer call's connection report needs). At most
    /// `max_peers_per_room` each; only such sessions have an entry (an idle socket pays nothing).
    rebound_signaled: HashMap<PeerId, Vec<PeerId>>,
    /// Per source, the reports it may still send (the project's per-source token bucket, bounded in sources); one
    /// for all the shards of a server ([`MemoryHub::with_shared_report_allowance`]).
    pub(super) per_source: Arc<RateLimiter>,
    /// No later than the earliest deadline of `held` and `decided` (earlier after a removal: then a sweep finds
    /// nothing and sets it right).
    due: Option<Instant>,
}

impl Default for Pairing {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
            per_reporter: HashMap::new(),
            decided: HashMap::new(),
            connected: HashMap::new(),
            rebound_signaled: HashMap::new(),
            per_source: report_allowance(),
            due: None,
        }
    }
}

impl Pairing {
    /// When the next held report or decided pair is due.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    fn due_at(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |due| due.min(at)));
    }

    fn take(&mut self, key: &PairKey) -> Option<Held> {
        let held = self.held.remove(key)?;
        if let Some(n) = self.per_reporter.get_mut(&held.reporter) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_reporter.remove(&held.reporter);
            }
        }
        Some(held)
    }

    pub fn shrink(&mut self) {
        super::shrink(&mut self.held);
        super::shrink(&mut self.per_reporter);
        super::shrink(&mut self.decided);
        super::shrink(&mut self.connected);
        super::shrink(&mut self.rebound_signaled);
    }

    /// Forgets `about` from `peer`'s rebound negotiations.
    fn spend_rebound(&mut self, peer: &PeerId, about: &PeerId) {
        if let Some(list) = self.rebound_signaled.get_mut(peer) {
            list.retain(|p| p != about);
            if list.is_empty() {
                self.rebound_signaled.remove(peer);
            }
        }
    }

    /// `peer` left the room for `reason`, its peers `others` stay: it has no calls left, and a drop report about
    /// it is decided with how it left.
    pub fn left(&mut self, peer: &PeerId, reason: LeftReason, others: &[PeerId]) {
        self.connected.remove(peer);
        self.rebound_signaled.remove(peer);
        for other in others {
            for p in self.connected.get_mut(other).into_iter().flatten() {
                if p.peer == *peer {
                    p.gone = Some(reason);
                }
            }
        }
    }

    /// `peer`'s session ended without its peers hearing of it (its room was dropped).
    pub fn forget(&mut self, peer: &PeerId) {
        self.connected.remove(peer);
        self.rebound_signaled.remove(peer);
    }
}

impl<R: RngCore + Send> MemoryHub<R> {
    /// `{"type":"outcome","peer":B,"report":{…}}` from `from` (A).
    pub(super) fn outcome(&mut self, conn: ConnId, from: &PeerId, about: &str, report: &RawValue) {
        let report = match Report::parse(report.get()) {
            Ok(report) => report,
            Err(e) => {
                let message = format!("The outcome report was refused: {e}.");
                return self.error(conn, Refusal::new(ErrorCode::BadMessage, message));
            }
        };
        let (room, source) = match self.sessions.get(from) {
            Some(s) => (s.room.clone(), s.source),
            None => return,
        };
        let Some(about) = PeerId::parse(about).filter(|b| b != from) else {
            return;
        };
        let dropped = report.outcome == Outcome::Dropped;
        // A drop or a recovered interruption is about a call the pair was diagnosed connected in.
        let after_call = dropped || report.outcome == Outcome::Recovered;
        // Only about a member of the same room (a peer whose tab closed is still one for the resume grace). A report
        // about a peer that has left is dropped without an error: it crossed the peer's `leave` (the SDK reports a
        // connection a few seconds after it connected), and its pair is diagnosed from the other report if any. A
        // drop may be about a peer that left since their call connected: its leaving is part of the story.
        let member = self.sessions.get(&about).is_some_and(|s| s.room == room);
        let partner = self
            .pairing
            .connected
            .get(from)
            .and_then(|c| c.iter().find(|p| p.peer == about).cloned());
        if !(member || (dropped && partner.is_some())) {
            return;
        }
        let key = PairKey::new(room.clone(), from, &about);
        let now = self.clock;
        if let Some((late, until)) = self.pairing.decided.get(&key) {
            if *late == *from && now < *until {
                // Decided on the other side's report alone; counting this one would count the pair twice.
                self.pairing.decided.remove(&key);
                return;
            }
        }
        // Only about a peer it negotiated with since their pair was last diagnosed (a drop: about a peer their pair
        // was last diagnosed connected with, once), and within its allowance: the counts, `recent_failures` and each
        // peer's `connection-failed` are the reports' word, so a member must not be able to make them up about
        // anyone, nor repeat them at the message rate.
        //
        // A call whose pair was diagnosed connected by another process has no partner here: a session that joined
        // again after its resume failed (a restarted server; the SDKs find each other's new ids, `peer-rejoined`)
        // or that was restored from a node that died. Its drop or interruption, by or about such a session, is
        // taken on a negotiation since, like a connection report (the SDKs' rejoin signals are one), once per
        // negotiation.
        let burst = REPORTS_PER_PEER * self.limits.max_peers_per_room;
        // A drop or interruption without a partner here: only on a rebound pair's negotiation (`rebound_signaled`,
        // filled only where either session is rebound, `note_signaled`).
        let on_rebound = after_call && partner.is_none();
        let rebound_known = on_rebound
            && self
                .pairing
                .rebound_signaled
                .get(from)
                .is_some_and(|list| list.contains(&about));
        let admitted = self.sessions.get_mut(from).is_some_and(|s| {
            let known = match (after_call, on_rebound) {
                (false, _) => s.signaled.contains(&about),
                (true, false) => true,
                (true, true) => rebound_known,
            };
            known && s.reports.take(burst, now)
        }) && self.pairing.per_source.check(source, now).is_ok();
        if !admitted {
            self.outcomes_refused += 1;
            return;
        }
        if on_rebound {
            // Once per negotiation: this side's now, both sides' when the pair is diagnosed (`diagnosed`).
            self.pairing.spend_rebound(from, &about);
        }
        if dropped {
            if let Some(c) = self.pairing.connected.get_mut(from) {
                c.retain(|p| p.peer != about);
                if c.is_empty() {
                    self.pairing.connected.remove(from);
                }
            }
            if let Some(gone) = partner.and_then(|p| p.gone) {
                // B left the room: its report will not come, and how it left says more than A's view of the path.
                let absent = match gone {
                    LeftReason::Left => Absent::Left,
                    LeftReason::Lost => Absent::Lost,
                };
                let diagnosis = classify_one(&report, absent).between(&room, from.as_str(), about.as_str());
                return self.diagnosed(from, &about, diagnosis);
            }
        }
        if let Some(first) = self.pairing.take(&key) {
            self.budget.release(first.source, first.bytes);
            if first.reporter == *from {
                // A newer attempt of the same side (a new peer connection): it replaces the older report.
                return self.hold(key, from.clone(), about, report, source);
            }
            if kind(first.report.outcome) != kind(report.outcome) {
                // One side's report about an earlier call, the other's about a later one: not one story. The
                // first is decided alone, the second waits for its own pair.
                let absent = self.absent(&first.about);
                let diagnosis =
                    classify_one(&first.report, absent).between(&room, first.reporter.as_str(), first.about.as_str());
                self.diagnosed(&first.reporter, &first.about, diagnosis);
                return self.hold(key, from.clone(), about, report, source);
            }
            let diagnosis =
                classify(&first.report, Some(&report)).between(&room, first.reporter.as_str(), from.as_str());
            return self.diagnosed(&first.reporter, from, diagnosis);
        }
        self.hold(key, from.clone(), about, report, source);
    }

    /// What the hub knows of `peer`, which did not report about its pair.
    fn absent(&self, peer: &PeerId) -> Absent {
        match self.sessions.get(peer) {
            Some(s) if s.conn.is_none() => Absent::Disconnected,
            Some(_) => Absent::Present,
            // Gone without a trace here (a drop about a peer that left is decided at once, with how it left).
            None => Absent::Lost,
        }
    }

    /// Holds the first report of a pair until the deadline, within the budgets; else diagnoses it alone now.
    fn hold(&mut self, key: PairKey, reporter: PeerId, about: PeerId, report: Report, source: Source) {
        let bytes = std::mem::size_of::<Held>() + FRAME_OVERHEAD + report_heap_bytes(&report);
        let count = self.pairing.per_reporter.get(&reporter).copied().unwrap_or(0);
        let fits = count < self.limits.max_peers_per_room && self.budget.check(source, 0, bytes).is_ok();
        if !fits {
            self.refused += 1;
            let diagnosis =
                classify_one(&report, self.absent(&about)).between(&key.room, reporter.as_str(), about.as_str());
            // Decided: the other side's report about it must not count the pair again.
            let until = self.clock + LATE_REPORT_WINDOW;
            self.pairing.decided.insert(key, (about.clone(), until));
            self.pairing.due_at(until);
            return self.diagnosed(&reporter, &about, diagnosis);
        }
        self.budget.charge(source, bytes);
        *self.pairing.per_reporter.entry(reporter.clone()).or_insert(0) += 1;
        let deadline = self.clock + self.limits.outcome_deadline;
        self.pairing.held.insert(
            key,
            Held {
                reporter,
                about,
                report,
                source,
                bytes,
                deadline,
            },
        );
        self.pairing.due_at(deadline);
    }

    /// Diagnoses alone every held report whose deadline has passed, and forgets expired decisions.
    pub(super) fn expire_outcomes(&mut self, now: Instant) {
        let due: Vec<PairKey> = self
            .pairing
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(first) = self.pairing.take(&key) else { continue };
            self.budget.release(first.source, first.bytes);
            let absent = self.absent(&first.about);
            let diagnosis =
                classify_one(&first.report, absent).between(&key.room, first.reporter.as_str(), first.about.as_str());
            self.pairing
                .decided
                .insert(key, (first.about.clone(), now + LATE_REPORT_WINDOW));
            self.diagnosed(&first.reporter, &first.about, diagnosis);
        }
        self.pairing.decided.retain(|_, (_, until)| now < *until);
        let held = self.pairing.held.values().map(|h| h.deadline);
        self.pairing.due = held.chain(self.pairing.decided.values().map(|(_, until)| *until)).min();
    }

    /// A `signal` went from `a` to `b`: each may report about the other once more. `rebound`: either session is.
    pub(super) fn note_signaled(&mut self, a: &PeerId, b: &PeerId, rebound: bool) {
        let most = self.limits.max_peers_per_room;
        for (this, other) in [(a, b), (b, a)] {
            if let Some(s) = self.sessions.get_mut(this) {
                if !s.signaled.contains(other) && s.signaled.len() < most {
                    s.signaled.push(other.clone());
                }
            }
            if rebound {
                let list = self.pairing.rebound_signaled.entry(this.clone()).or_default();
                if !list.contains(other) && list.len() < most {
                    list.push(other.clone());
                }
            }
        }
    }

    /// Tells both peers (those still here) and the I/O layer.
    fn diagnosed(&mut self, a: &PeerId, b: &PeerId, diagnosis: Diagnosis) {
        // A new report about this pair needs a new negotiation (a drop's needs none: it is about the call before,
        // and a newer call may be negotiating already); a drop report needs a connected diagnosis, and is taken once
        // per such diagnosis (the other side's late one is dropped by `decided`, then refused).
        let most = self.limits.max_peers_per_room;
        for (this, other) in [(a, b), (b, a)] {
            let Some(s) = self.sessions.get_mut(this) else { continue };
            if !diagnosis.dropped() && !diagnosis.recovered() {
                s.signaled.retain(|p| p != other);
            }
            if let Some(c) = self.pairing.connected.get_mut(this) {
                c.retain(|p| p.peer != *other);
            }
            if diagnosis.dropped() || diagnosis.recovered() {
                // The negotiation a rebound pair's drop or interruption was taken on is spent for both sides: the
                // other side's report after the late-report window needs a new one.
                self.pairing.spend_rebound(this, other);
            }
            // Connected, or connected again: a later drop or interruption of this call may be reported.
            if matches!(diagnosis.outcome, Outcome::Connected | Outcome::Recovered) {
                let c = self.pairing.connected.entry(this.clone()).or_default();
                if c.len() >= most {
                    // Full: forget a peer that has left first, else the oldest.
                    let i = c.iter().position(|p| p.gone.is_some()).unwrap_or(0);
                    c.remove(i);
                }
                c.push(Partner {
                    peer: other.clone(),
                    gone: None,
                });
            }
        }
        for this in [a, b] {
            if self.pairing.connected.get(this).is_some_and(Vec::is_empty) {
                self.pairing.connected.remove(this);
            }
        }
        // A pair decided on A's report alone is told to A only: B never reported (its page closed, or its reports
        // are off), and must not hear a verdict on the word of another member alone (one `signal` to a bystander
        // and a made-up report would give it a `connection-failed`).
        let told = if diagnosis.reports >= 2 { 2 } else { 1 };
        for (to, other, you) in [(a, b, "A"), (b, a, "B")].into_iter().take(told) {
            let frame = Frame::Diagnosis {
                peer: other,
                you,
                diagnosis: &diagnosis,
            };
            let _ = self.deliver(to, &frame, None);
        }
        self.outputs.push_back(Output::Outcome(Box::new(diagnosis)));
    }
}

/// Reports of one kind are about one story: a connection attempt (connected, failed, timeout), a drop, or an
/// interruption the call survived.
fn kind(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Connected | Outcome::Failed | Outcome::Timeout => 0,
        Outcome::Dropped => 1,
        Outcome::Recovered => 2,
    }
}

/// What a parsed report holds beyond its own size: its error list's strings.
fn report_heap_bytes(report: &Report) -> usize {
    report
        .errors
        .iter()
        .map(|e| {
            std::mem::size_of_val(e)
                + e.url.as_ref().map_or(0, |u| u.as_str().len())
                + e.text.as_ref().map_or(0, |t| t.as_str().len())
        })
        .sum::<usize>()
        + report.pair.as_ref().map_or(0, |p| {
            [&p.local.url, &p.remote.url]
                .iter()
                .flat_map(|u| u.as_ref())
                .map(|u| u.as_str().len())
                .sum()
        })
}
