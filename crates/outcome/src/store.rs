//! What the operator reads: counts of diagnosed pairs by outcome, path and reason, the time-to-connect histogram,
//! the last hour per minute and the latest failures. Written once per diagnosed pair by the hub's I/O layer, read by
//! `/api/outcomes`, the metrics scrape and the dashboard — all off the packet path, so one `Mutex` is enough.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::classify::Diagnosis;

/// Upper bounds (ms) of the time-to-connect histogram's buckets; the `+Inf` bucket is `count`.
pub const TIME_TO_CONNECT_BOUNDS_MS: [f64; 10] = [
    100.0, 250.0, 500.0, 1_000.0, 2_000.0, 3_000.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0,
];
/// Minutes kept for `minutes`.
pub const MINUTES: u64 = 60;
/// Failures kept for `recent_failures`.
pub const RECENT_FAILURES: usize = 20;
/// Of which at most this many of one room.
pub const RECENT_FAILURES_PER_ROOM: usize = 3;

/// Connection outcomes since the process started. Shared as `Arc<Outcomes>`.
#[derive(Debug, Default)]
pub struct Outcomes {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    connected: u64,
    failed: u64,
    dropped: u64,
    by_path: BTreeMap<String, u64>,
    by_reason: BTreeMap<String, u64>,
    dropped_by_reason: BTreeMap<String, u64>,
    recovered: u64,
    recovered_by_cause: BTreeMap<String, u64>,
    time_to_recover: Histogram,
    time_to_connect: Histogram,
    /// Oldest first; only minutes that saw a pair, at most [`MINUTES`] of them.
    minutes: VecDeque<Minute>,
    /// Newest first.
    recent_failures: VecDeque<Failure>,
    /// Per reason code (a fixed set), the sentence of its latest failure or drop.
    latest_by_reason: BTreeMap<String, String>,
}

/// A copy of the store at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutcomeSnapshot {
    pub connected: u64,
    /// Failed and timed-out pairs.
    pub failed: u64,
    /// Connected pairs by [`crate::Path::as_str`].
    pub by_path: BTreeMap<String, u64>,
    /// Failed pairs by [`crate::Reason::code`].
    pub by_reason: BTreeMap<String, u64>,
    /// Calls that connected and then dropped (not recovered by the SDK's ICE restarts). They are also in
    /// `connected`, which counts connections made.
    pub dropped: u64,
    /// Dropped calls by [`crate::Reason::code`].
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// Interruptions calls survived: a connected call broke and came back by itself (counted once per pair and
    /// break; the call stays counted in `connected`).
    pub recovered: u64,
    /// Recovered interruptions by what broke them ([`crate::DropCause::as_str`], `unknown` when unsaid).
    pub recovered_by_cause: BTreeMap<String, u64>,
    /// From the break to connected again, as the longer side measured it.
    pub time_to_recover_ms: TimeToConnect,
    pub time_to_connect_ms: TimeToConnect,
    /// The last [`MINUTES`] minutes, oldest first, one entry per minute (zeros included), the current one last.
    pub minutes: Vec<Minute>,
    /// Newest first, at most [`RECENT_FAILURES`].
    pub recent_failures: Vec<Failure>,
    /// Per reason code of `by_reason` and `dropped_by_reason`, the sentence of its latest failure or drop: a reason
    /// whose latest one has left `recent_failures` is still explained.
    pub latest_by_reason: BTreeMap<String, String>,
}

/// A Prometheus-style histogram of connected pairs' time to connect.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimeToConnect {
    /// `(upper bound ms, pairs at or under it)`, cumulative; the `+Inf` bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum_ms: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Minute {
    /// Unix seconds of the minute's start (a multiple of 60).
    pub start_unix: u64,
    pub connected: u64,
    pub failed: u64,
    pub dropped: u64,
    pub recovered: u64,
}

/// A post-mortem: a pair that failed to connect, or a call that dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub unix: u64,
    pub room: String,
    /// `failed`, `timeout` or `dropped`.
    pub outcome: &'static str,
    /// [`crate::Reason::code`].
    pub reason: String,
    pub message: String,
}

impl Outcomes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one diagnosed pair, at `unix_secs`.
    pub fn record(&self, d: &Diagnosis, unix_secs: u64) {
        let mut s = self.lock();
        let kind = if d.dropped() {
            Kind::Dropped
        } else if d.recovered() {
            Kind::Recovered
        } else if d.failed() {
            Kind::Failed
        } else {
            Kind::Connected
        };
        if kind == Kind::Recovered {
            s.recovered += 1;
            let cause = d.cause.map_or("unknown", |c| c.as_str());
            *s.recovered_by_cause.entry(cause.to_owned()).or_insert(0) += 1;
            if let Some(ms) = d.recovery_ms {
                s.time_to_recover.observe(ms);
            }
        } else if kind != Kind::Connected {
            if kind == Kind::Dropped {
                s.dropped += 1;
                *s.dropped_by_reason.entry(d.reason.code().to_owned()).or_insert(0) += 1;
            } else {
                s.failed += 1;
                *s.by_reason.entry(d.reason.code().to_owned()).or_insert(0) += 1;
            }
            // One room (an attacker's, or one broken app) must not push every other room's failures off the list.
            let of_room = |f: &Failure| f.room == d.room;
            if s.recent_failures.iter().filter(|f| of_room(f)).count() >= RECENT_FAILURES_PER_ROOM {
                if let Some(oldest) = s.recent_failures.iter().rposition(of_room) {
                    s.recent_failures.remove(oldest);
                }
            }
            s.recent_failures.push_front(Failure {
                unix: unix_secs,
                room: d.room.clone(),
                outcome: d.outcome.as_str(),
                reason: d.reason.code().to_owned(),
                message: d.message.clone(),
            });
            s.recent_failures.truncate(RECENT_FAILURES);
            s.latest_by_reason.insert(d.reason.code().to_owned(), d.message.clone());
        } else {
            s.connected += 1;
            let path = d.path.map_or("unknown", |p| p.as_str());
            *s.by_path.entry(path.to_owned()).or_insert(0) += 1;
            if let Some(ms) = d.time_to_connect_ms {
                s.time_to_connect.observe(ms);
            }
        }
        let start = unix_secs - unix_secs % 60;
        match s.minutes.back_mut() {
            Some(m) if m.start_unix == start => bump(m, kind),
            // A clock that stepped back: count it in the newest minute rather than reorder the list.
            Some(m) if m.start_unix > start => bump(m, kind),
            _ => {
                let mut m = Minute {
                    start_unix: start,
                    connected: 0,
                    failed: 0,
                    dropped: 0,
                    recovered: 0,
                };
                bump(&mut m, kind);
                s.minutes.push_back(m);
                while s.minutes.len() > MINUTES as usize {
                    s.minutes.pop_front();
                }
            }
        }
    }

    /// The counts now; `minutes` covers the [`MINUTES`] minutes up to `unix_secs`.
    pub fn snapshot(&self, unix_secs: u64) -> OutcomeSnapshot {
        let s = self.lock();
        let current = unix_secs - unix_secs % 60;
        let first = current.saturating_sub((MINUTES - 1) * 60);
        let minutes = (0..MINUTES)
            .map(|i| first + i * 60)
            .filter(|&start| start <= current)
            .map(|start| {
                s.minutes
                    .iter()
                    .find(|m| m.start_unix == start)
                    .copied()
                    .unwrap_or(Minute {
                        start_unix: start,
                        connected: 0,
                        failed: 0,
                        dropped: 0,
                        recovered: 0,
                    })
            })
            .collect();
        OutcomeSnapshot {
            connected: s.connected,
            failed: s.failed,
            by_path: s.by_path.clone(),
            by_reason: s.by_reason.clone(),
            dropped: s.dropped,
            dropped_by_reason: s.dropped_by_reason.clone(),
            recovered: s.recovered,
            recovered_by_cause: s.recovered_by_cause.clone(),
            time_to_recover_ms: s.time_to_recover.snapshot(),
            time_to_connect_ms: s.time_to_connect.snapshot(),
            minutes,
            recent_failures: s.recent_failures.iter().cloned().collect(),
            latest_by_reason: s.latest_by_reason.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still counts: keep serving them.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Durations (ms) per bound of [`TIME_TO_CONNECT_BOUNDS_MS`], not cumulative (made cumulative in the snapshot).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; TIME_TO_CONNECT_BOUNDS_MS.len()],
    sum_ms: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: u32) {
        let ms = f64::from(ms);
        if let Some(i) = TIME_TO_CONNECT_BOUNDS_MS.iter().position(|&b| ms <= b) {
            if let Some(n) = self.buckets.get_mut(i) {
                *n += 1;
            }
        }
        self.sum_ms += ms;
        self.count += 1;
    }

    fn snapshot(&self) -> TimeToConnect {
        let mut cumulative = 0;
        let buckets = TIME_TO_CONNECT_BOUNDS_MS
            .iter()
            .zip(self.buckets.iter())
            .map(|(&bound, &n)| {
                cumulative += n;
                (bound, cumulative)
            })
            .collect();
        TimeToConnect {
            buckets,
            sum_ms: self.sum_ms,
            count: self.count,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connected,
    Failed,
    Dropped,
    Recovered,
}

fn bump(m: &mut Minute, kind: Kind) {
    match kind {
        Kind::Connected => m.connected += 1,
        Kind::Failed => m.failed += 1,
        Kind::Dropped => m.dropped += 1,
        Kind::Recovered => m.recovered += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, Path, Reason};

    fn diagnosis(outcome: Outcome, reason: Reason, path: Option<Path>, ms: Option<u32>) -> Diagnosis {
        Diagnosis {
            room: "lobby".into(),
            peers: ["p_a".into(), "p_b".into()],
            outcome,
            reason,
            message: reason.summary().into(),
            path,
            time_to_connect_ms: ms,
            connected_ms: None,
            cause: None,
            recovery_ms: None,
            reports: 2,
        }
    }

    #[test]
    fn counts_by_path_reason_bucket_and_minute() {
        let o = Outcomes::new();
        let t0: u64 = 1_764_000_000; // a multiple of 60
        o.record(
            &diagnosis(Outcome::Connected, Reason::Connected, Some(Path::RelayTls), Some(420)),
            t0 + 5,
        );
        o.record(
            &diagnosis(Outcome::Connected, Reason::Connected, Some(Path::DirectHost), Some(80)),
            t0 + 65,
        );
        o.record(&diagnosis(Outcome::Failed, Reason::TurnAuthFailed, None, None), t0 + 70);
        o.record(&diagnosis(Outcome::Timeout, Reason::Timeout, None, None), t0 + 130);
        let s = o.snapshot(t0 + 130);
        assert_eq!((s.connected, s.failed), (2, 2));
        assert_eq!(s.by_path.get("relay-tls"), Some(&1));
        assert_eq!(s.by_path.get("direct-host"), Some(&1));
        assert_eq!(s.by_reason.get("turn-auth-failed"), Some(&1));
        assert_eq!(s.by_reason.get("timeout"), Some(&1));
        assert_eq!(s.time_to_connect_ms.count, 2);
        assert_eq!(s.time_to_connect_ms.sum_ms, 500.0);
        assert_eq!(s.time_to_connect_ms.buckets.first(), Some(&(100.0, 1)));
        assert_eq!(s.time_to_connect_ms.buckets.get(2), Some(&(500.0, 2)));
        assert_eq!(s.minutes.len(), MINUTES as usize);
        let last3: Vec<(u64, u64)> = s
            .minutes
            .iter()
            .rev()
            .take(3)
            .map(|m| (m.connected, m.failed))
            .collect();
        assert_eq!(last3, [(0, 1), (1, 1), (1, 0)]);
        assert_eq!(s.minutes.last().map(|m| m.start_unix), Some(t0 + 120));
        assert_eq!(s.recent_failures.first().map(|f| f.reason.as_str()), Some("timeout"));
        assert_eq!(s.recent_failures.get(1).map(|f| f.room.as_str()), Some("lobby"));
        // An hour later the minutes have rolled out; the totals stay.
        let later = o.snapshot(t0 + 3 * 3600);
        assert!(later.minutes.iter().all(|m| m.connected == 0 && m.failed == 0));
        assert_eq!(later.connected, 2);
    }

    #[test]
    fn recent_failures_and_minutes_are_bounded() {
        let o = Outcomes::new();
        for i in 0..200u64 {
            o.record(
                &diagnosis(Outcome::Failed, Reason::Unknown, None, None),
                1_000_000 + i * 60,
            );
        }
        let s = o.snapshot(1_000_000 + 199 * 60);
        assert_eq!(s.recent_failures.len(), RECENT_FAILURES_PER_ROOM, "all of one room");
        assert_eq!(s.recent_failures.first().map(|f| f.unix), Some(1_000_000 + 199 * 60));
        assert_eq!(s.minutes.iter().map(|m| m.failed).sum::<u64>(), MINUTES);
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["failed"], 200);
        assert!(json["time_to_connect_ms"]["buckets"].is_array());
    }

    #[test]
    fn a_dropped_call_is_counted_apart_from_failures_to_connect() {
        let o = Outcomes::new();
        let t0: u64 = 1_764_000_000;
        o.record(
            &diagnosis(Outcome::Connected, Reason::Connected, Some(Path::RelayUdp), Some(300)),
            t0,
        );
        o.record(
            &diagnosis(Outcome::Dropped, Reason::RelayLost, Some(Path::RelayUdp), None),
            t0 + 1,
        );
        let s = o.snapshot(t0 + 1);
        assert_eq!((s.connected, s.failed, s.dropped), (1, 0, 1));
        assert!(s.by_reason.is_empty(), "a drop is not a failure to connect");
        assert_eq!(s.dropped_by_reason.get("relay-lost"), Some(&1));
        assert_eq!(s.time_to_connect_ms.count, 1);
        let m = s.minutes.last().copied();
        assert_eq!(m.map(|m| (m.connected, m.failed, m.dropped)), Some((1, 0, 1)));
        assert_eq!(
            s.recent_failures.first().map(|f| (f.outcome, f.reason.as_str())),
            Some(("dropped", "relay-lost"))
        );
    }

    #[test]
    fn one_room_keeps_at_most_a_few_of_the_recent_failures() {
        let o = Outcomes::new();
        let mut d = diagnosis(Outcome::Failed, Reason::Unknown, None, None);
        for i in 0..30u64 {
            d.room = format!("room-{}", i % 10);
            o.record(&d, 1_000_000 + i);
        }
        d.room = "flood".into();
        for i in 0..1000u64 {
            o.record(&d, 1_000_100 + i);
        }
        let s = o.snapshot(1_001_100);
        assert_eq!(s.recent_failures.len(), RECENT_FAILURES);
        let flood = s.recent_failures.iter().filter(|f| f.room == "flood").count();
        assert_eq!(flood, RECENT_FAILURES_PER_ROOM, "the flood keeps its newest few");
        assert_eq!(s.recent_failures.first().map(|f| f.unix), Some(1_001_099));
    }

    /// The dashboard explains each reason with its latest sentence: one that has left `recent_failures` (pushed off
    /// by 20 others) keeps it.
    #[test]
    fn each_reason_keeps_the_sentence_of_its_latest_failure() {
        let o = Outcomes::new();
        let mut auth = diagnosis(Outcome::Failed, Reason::TurnAuthFailed, None, None);
        auth.message = "the relay refused the credential".into();
        o.record(&auth, 1_000_000);
        for i in 0..(RECENT_FAILURES as u64 * 2) {
            let mut d = diagnosis(Outcome::Timeout, Reason::Timeout, None, None);
            d.room = format!("room-{i}");
            o.record(&d, 1_000_001 + i);
        }
        let s = o.snapshot(1_000_100);
        assert!(!s.recent_failures.iter().any(|f| f.reason == "turn-auth-failed"));
        assert_eq!(
            s.latest_by_reason.get("turn-auth-failed").map(String::as_str),
            Some("the relay refused the credential")
        );
        assert_eq!(
            s.latest_by_reason.get("timeout").map(String::as_str),
            Some(Reason::Timeout.summary())
        );
        assert_eq!(s.latest_by_reason.len(), 2, "connected pairs have no reason sentence");
    }

    #[test]
    fn a_recovered_interruption_is_counted_by_cause_with_its_time_to_recover() {
        let o = Outcomes::new();
        let t0: u64 = 1_764_000_000;
        let mut d = diagnosis(Outcome::Recovered, Reason::Recovered, Some(Path::RelayUdp), None);
        d.cause = Some(crate::DropCause::NetworkChange);
        d.recovery_ms = Some(2_400);
        o.record(&d, t0);
        d.cause = None;
        d.recovery_ms = None;
        o.record(&d, t0 + 1);
        let s = o.snapshot(t0 + 1);
        assert_eq!((s.connected, s.failed, s.dropped, s.recovered), (0, 0, 0, 2));
        assert_eq!(s.recovered_by_cause.get("network-change"), Some(&1));
        assert_eq!(s.recovered_by_cause.get("unknown"), Some(&1));
        assert_eq!(s.time_to_recover_ms.count, 1);
        assert_eq!(s.time_to_recover_ms.sum_ms, 2_400.0);
        assert_eq!(s.time_to_recover_ms.buckets.get(5), Some(&(3_000.0, 1)));
        assert!(
            s.recent_failures.is_empty(),
            "an interruption survived is not a failure"
        );
        assert_eq!(s.minutes.last().map(|m| m.recovered), Some(2));
    }
}
