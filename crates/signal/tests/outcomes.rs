#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Pairing of `outcome` reports in simulated time: both reports, one report and the deadline, a connected pair
//! counted once, held reports bounded and charged.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use outcome::{Diagnosis, Outcome, Path, Reason};
use rand::SeedableRng;
use serde_json::{json, Value};
use signal::{ConnId, Limits, MemoryHub, Now, Output, SignalHub};

struct Lab {
    hub: MemoryHub<rand::rngs::StdRng>,
    start: Instant,
    at: Duration,
    inbox: HashMap<u64, Vec<Value>>,
    diagnoses: Vec<Diagnosis>,
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

impl Lab {
    fn new(limits: Limits) -> Self {
        Self::sharing(limits, signal::report_allowance())
    }

    /// A hub that shares its per-address report allowance, as the shards of one server do.
    fn sharing(limits: Limits, reports: std::sync::Arc<source::RateLimiter>) -> Self {
        let start = Instant::now();
        let ice: signal::IceServerSource = Box::new(|_, _| serde_json::value::to_raw_value(&json!([])).unwrap());
        Self {
            hub: MemoryHub::new(limits, None, ice, rand::rngs::StdRng::seed_from_u64(9), start)
                .with_shared_report_allowance(reports),
            start,
            at: Duration::ZERO,
            inbox: HashMap::new(),
            diagnoses: Vec::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.start + self.at,
            unix: 1_800_000_000 + self.at.as_secs(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, text } => {
                    let v: Value = serde_json::from_slice(&text).unwrap();
                    self.inbox.entry(conn.get()).or_default().push(v);
                }
                Output::Ping { .. } | Output::Close { .. } | Output::Session(_) => {}
                Output::Outcome(d) => self.diagnoses.push(*d),
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.at + d;
        while self.at < end {
            self.at = (self.at + Duration::from_millis(250)).min(end);
            let now = self.now();
            for conn in [1, 2, 3, 4] {
                self.hub.handle_activity(ConnId::new(conn), now);
            }
            self.hub.handle_timeout(now);
            self.drain();
        }
    }

    fn send(&mut self, conn: u64, v: Value) {
        let now = self.now();
        self.hub.handle_text(ConnId::new(conn), &v.to_string(), now);
        self.drain();
    }

    /// Joins `conn` to `room` and returns its peer id.
    fn join(&mut self, conn: u64, room: &str) -> String {
        let now = self.now();
        self.hub.handle_connect(ConnId::new(conn), IP, now).unwrap();
        self.send(conn, json!({"type": "join", "room": room}));
        self.frames(conn, "joined")[0]["peerId"].as_str().unwrap().to_owned()
    }

    /// Joins `conn` to `room` after a failed resume (`"rejoin": true`, a restarted server) and returns its peer id.
    fn rejoin(&mut self, conn: u64, room: &str) -> String {
        let now = self.now();
        self.hub.handle_connect(ConnId::new(conn), IP, now).unwrap();
        self.send(conn, json!({"type": "join", "room": room, "rejoin": true}));
        self.frames(conn, "joined")[0]["peerId"].as_str().unwrap().to_owned()
    }

    fn frames(&self, conn: u64, ty: &str) -> Vec<Value> {
        self.inbox
            .get(&conn)
            .map(|v| v.iter().filter(|f| f["type"] == ty).cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes held beyond the replay buffers: every socket acknowledges all it got first, so what is left is held
    /// reports.
    fn held_reports(&mut self) -> usize {
        for conn in [1, 2, 3] {
            let ack = self
                .inbox
                .get(&conn)
                .and_then(|v| v.iter().filter_map(|f| f["seq"].as_u64()).max());
            if let Some(ack) = ack {
                self.send(conn, json!({"type": "ping", "ack": ack}));
            }
        }
        self.hub.stats().held_bytes
    }

    fn report(&mut self, conn: u64, about: &str, report: Value) {
        self.send(conn, json!({"type": "outcome", "peer": about, "report": report}));
    }

    /// A `signal` from `conn` to `to`: the negotiation a report must follow.
    fn signal(&mut self, conn: u64, to: &str) {
        self.send(conn, json!({"type": "signal", "to": to, "data": {"sdp": "v=0"}}));
    }
}

fn failed_udp_timeout() -> Value {
    json!({"outcome": "failed", "elapsedMs": 9000, "gathered": {"host": 1, "srflx": 1},
           "offered": {"stun": 1, "turnUdp": 1}, "remoteCandidates": 2,
           "errors": [{"code": 701, "url": "turn:192.0.2.1:3478?transport=udp"}]})
}

fn connected_relay_tls(ms: u32) -> Value {
    json!({"outcome": "connected", "elapsedMs": ms,
           "pair": {"local": {"type": "relay", "protocol": "udp", "relayProtocol": "tls"},
                    "remote": {"type": "srflx", "protocol": "udp"}},
           "gathered": {"host": 1, "relayTls": 1}})
}

#[test]
fn both_reports_are_paired_classified_and_told_to_both_peers() {
    let mut lab = Lab::new(Limits::default());
    let a = lab.join(1, "r");
    let b = lab.join(2, "r");
    lab.signal(1, &b);
    lab.report(1, &b, failed_udp_timeout());
    assert!(lab.diagnoses.is_empty(), "held until B reports");
    assert!(lab.held_reports() > 0, "a held report is charged");
    lab.advance(Duration::from_secs(1));
    lab.report(2, &a, failed_udp_timeout());
    assert_eq!(lab.diagnoses.len(), 1);
    let d = &lab.diagnoses[0];
    assert_eq!(
        (d.outcome, d.reason, d.reports),
        (Outcome::Failed, Reason::TurnUdpBlockedNoTls, 2)
    );
    assert_eq!((d.room.as_str(), d.peers.clone()), ("r", [a.clone(), b.clone()]));
    for (conn, other, you) in [(1, &b, "A"), (2, &a, "B")] {
        let f = lab.frames(conn, "diagnosis");
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0]["peer"], other.as_str());
        assert_eq!(f[0]["you"], you, "the message names the first reporter A");
        assert_eq!(f[0]["outcome"], "failed");
        assert_eq!(f[0]["reason"], "turn-udp-blocked-no-tls");
        assert_eq!(f[0]["step"], "discovery");
        assert!(
            f[0]["message"].as_str().unwrap().contains("Both peers are behind NATs"),
            "{}",
            f[0]
        );
        assert!(f[0]["seq"].as_u64().unwrap() > 1, "in the session's stream");
    }
    assert_eq!(lab.held_reports(), 0, "the held report's bytes are given back");
    lab.advance(Duration::from_secs(20));
    assert_eq!(lab.diagnoses.len(), 1, "nothing more at the deadline");
}

#[test]
fn one_report_is_diagnosed_alone_at_the_deadline() {
    let mut lab = Lab::new(Limits::default());
    let _a = lab.join(1, "r");
    let b = lab.join(2, "r");
    lab.signal(1, &b);
    lab.report(1, &b, failed_udp_timeout());
    lab.advance(Duration::from_secs(9));
    assert!(lab.diagnoses.is_empty());
    lab.advance(Duration::from_secs(2));
    assert_eq!(lab.diagnoses.len(), 1);
    assert_eq!(
        (lab.diagnoses[0].reason, lab.diagnoses[0].reports),
        (Reason::PeerUnreported, 1)
    );
    assert_eq!(lab.frames(1, "diagnosis")[0]["reason"], "peer-unreported");
    assert_eq!(
        lab.frames(2, "diagnosis").len(),
        0,
        "B never reported: it hears no verdict on A's word alone (a made-up report must not reach a bystander)"
    );
    assert_eq!(lab.held_reports(), 0);
}

#[test]
fn a_connected_pair_counts_once() {
    let mut lab = Lab::new(Limits::default());
    let a = lab.join(1, "r");
    let b = lab.join(2, "r");
    // B's report arrives after the deadline: the pair was decided on A's, B's is not counted again.
    lab.signal(1, &b);
    lab.report(1, &b, connected_relay_tls(800));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 1);
    let d = &lab.diagnoses[0];
    assert_eq!(
        (d.outcome, d.path, d.time_to_connect_ms),
        (Outcome::Connected, Some(Path::RelayTls), Some(800))
    );
    lab.report(2, &a, connected_relay_tls(900));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 1, "the late side's report is dropped");
    assert_eq!(lab.held_reports(), 0);
    // A later connection of the same pair is a new one, counted again (both reports in time: once).
    lab.signal(2, &a);
    lab.report(2, &a, connected_relay_tls(700));
    lab.report(1, &b, connected_relay_tls(650));
    assert_eq!(lab.diagnoses.len(), 2);
    assert_eq!(lab.diagnoses[1].reports, 2);
}

#[test]
fn held_reports_are_bounded_per_reporter_and_by_the_byte_budgets() {
    let limits = Limits {
        max_peers_per_room: 3,
        ..Limits::default()
    };
    let mut lab = Lab::new(limits);
    let _a = lab.join(1, "r");
    let b = lab.join(2, "r");
    let c = lab.join(3, "r");
    lab.signal(1, &b);
    lab.signal(1, &c);
    lab.report(1, &b, failed_udp_timeout());
    lab.report(1, &c, failed_udp_timeout());
    let held_two = lab.held_reports();
    // A newer report about the same peer replaces the older one: still two held.
    lab.report(1, &b, failed_udp_timeout());
    assert_eq!(lab.held_reports(), held_two);
    assert!(lab.diagnoses.is_empty());

    // Over the per-reporter bound (the room's size; reached only with peers that come and go): diagnosed alone at
    // once instead of held.
    let mut tight = Lab::new(Limits {
        max_peers_per_room: 2,
        ..Limits::default()
    });
    let _a = tight.join(1, "r");
    for (i, conn) in [2u64, 3, 4].into_iter().enumerate() {
        let b = tight.join(conn, "r");
        tight.signal(1, &b);
        tight.report(1, &b, failed_udp_timeout());
        tight.send(conn, json!({"type": "leave"}));
        assert_eq!(tight.diagnoses.len(), i.saturating_sub(1), "report {i}");
    }
    assert_eq!(tight.diagnoses[0].reason, Reason::PeerUnreported);

    let mut other = Lab::new(Limits {
        max_source_bytes: 200,
        ..Limits::default()
    });
    let _a = other.join(1, "r");
    let b2 = other.join(2, "r");
    other.signal(1, &b2);
    other.report(1, &b2, failed_udp_timeout());
    assert_eq!(other.diagnoses.len(), 1, "over the source budget: not held");
    assert_eq!(other.diagnoses[0].reason, Reason::PeerUnreported);
    assert_eq!(other.held_reports(), 0);
    // Decided: B's report about the pair (also over the budget) does not count it a second time.
    other.report(2, &_a, failed_udp_timeout());
    other.advance(Duration::from_secs(11));
    assert_eq!(other.diagnoses.len(), 1, "counted once");
}

#[test]
fn bad_reports_and_strangers_are_refused() {
    let mut lab = Lab::new(Limits::default());
    let _a = lab.join(1, "r");
    let b = lab.join(2, "r");
    let x = lab.join(3, "elsewhere");
    lab.report(1, &b, json!({"outcome": "exploded", "elapsedMs": 1}));
    lab.report(1, &x, failed_udp_timeout());
    lab.report(1, "p_0000000000000000", failed_udp_timeout());
    lab.send(1, json!({"type": "outcome", "peer": b}));
    let errors: Vec<String> = lab
        .frames(1, "error")
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_owned())
        .collect();
    // Reports about a peer of another room, or one not (or no longer) here, are dropped without an error.
    assert_eq!(errors, ["bad-message", "bad-message"]);
    assert!(lab.diagnoses.is_empty());
    assert_eq!(lab.held_reports(), 0);
    // Before joining: not-joined.
    let now = lab.now();
    lab.hub.handle_connect(ConnId::new(9), IP, now).unwrap();
    lab.report(9, &b, failed_udp_timeout());
    assert_eq!(lab.frames(9, "error")[0]["code"], "not-joined");
}

/// A report is taken only about a peer the reporter negotiated with since their pair was last diagnosed, and within
/// its allowance (a burst of two per possible peer, then one per 10 s): a member of a room cannot make up outcomes
/// about anyone, nor repeat them at the message rate, to fill the counts and the recent failures.
#[test]
fn reports_follow_a_negotiation_within_an_allowance() {
    let mut lab = Lab::new(Limits {
        max_peers_per_room: 3,
        ..Limits::default()
    });
    let a = lab.join(1, "r");
    let b = lab.join(2, "r");
    let c = lab.join(3, "r");
    // No signal between A and C: nothing held, nothing diagnosed.
    lab.report(1, &c, failed_udp_timeout());
    lab.report(3, &a, failed_udp_timeout());
    lab.advance(Duration::from_secs(11));
    assert!(lab.diagnoses.is_empty());
    assert_eq!(lab.hub.stats().outcomes_refused, 2);
    // A negotiation, both reports: one diagnosis. Reports again without a new negotiation: refused.
    let round = |lab: &mut Lab| {
        lab.signal(1, &b);
        lab.report(1, &b, failed_udp_timeout());
        lab.report(2, &a, failed_udp_timeout());
    };
    round(&mut lab);
    assert_eq!(lab.diagnoses.len(), 1);
    lab.report(1, &b, failed_udp_timeout());
    lab.report(2, &a, failed_udp_timeout());
    assert_eq!(
        lab.diagnoses.len(),
        1,
        "a diagnosed pair reported again without negotiating"
    );
    // The allowance: two reports per peer the room may have, six each (a refused report spends none).
    for _ in 0..5 {
        round(&mut lab);
    }
    assert_eq!(lab.diagnoses.len(), 6);
    round(&mut lab);
    assert_eq!(lab.diagnoses.len(), 6, "past the burst");
    lab.advance(Duration::from_secs(10));
    round(&mut lab);
    assert_eq!(lab.diagnoses.len(), 7, "one more after 10 s");
}

fn dropped(cause: &str) -> Value {
    json!({"outcome": "dropped", "elapsedMs": 90000, "connectedMs": 60000, "brokenMs": 25000, "restarts": 3,
           "cause": cause,
           "pair": {"local": {"type": "srflx", "protocol": "udp"}, "remote": {"type": "srflx", "protocol": "udp"}},
           "gathered": {"host": 1, "srflx": 1}})
}

/// A and B (conns 1 and 2) in room `r`, their pair diagnosed connected.
fn connected_pair(lab: &mut Lab) -> (String, String) {
    let a = lab.join(1, "r");
    let b = lab.join(2, "r");
    lab.signal(1, &b);
    lab.report(1, &b, connected_relay_tls(800));
    lab.report(2, &a, connected_relay_tls(900));
    assert_eq!(lab.diagnoses.len(), 1);
    assert_eq!(lab.diagnoses[0].outcome, Outcome::Connected);
    (a, b)
}

#[test]
fn a_drop_is_taken_once_and_only_about_a_pair_diagnosed_connected() {
    let mut lab = Lab::new(Limits::default());
    let a = lab.join(1, "r");
    let b = lab.join(2, "r");
    lab.signal(1, &b);
    // Negotiated, never diagnosed connected: a drop report about it is made up.
    lab.report(1, &b, dropped("ice-failed"));
    lab.advance(Duration::from_secs(11));
    assert!(lab.diagnoses.is_empty(), "{:?}", lab.diagnoses);
    assert_eq!(lab.hub.stats().outcomes_refused, 1);

    lab.report(1, &b, connected_relay_tls(800));
    lab.report(2, &a, connected_relay_tls(900));
    assert_eq!(lab.diagnoses.len(), 1);
    // Both sides drop: paired into one diagnosis, told to both pages with how long the call lasted.
    lab.report(1, &b, dropped("ice-disconnected"));
    lab.advance(Duration::from_secs(2));
    lab.report(2, &a, dropped("network-change"));
    assert_eq!(lab.diagnoses.len(), 2);
    let d = &lab.diagnoses[1];
    assert_eq!(
        (d.outcome, d.reason, d.reports),
        (Outcome::Dropped, Reason::NetworkChanged, 2)
    );
    let told = lab.frames(2, "diagnosis");
    let last = told.last().unwrap();
    assert_eq!(
        (last["outcome"].as_str(), last["connectedMs"].as_u64()),
        (Some("dropped"), Some(60000))
    );
    assert_eq!(last["reason"], "network-changed");
    // Once per connected diagnosis: a third drop report is refused, not counted.
    lab.report(1, &b, dropped("ice-disconnected"));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 2);
    assert_eq!(lab.hub.stats().outcomes_refused, 2);
}

#[test]
fn a_drop_reported_alone_says_the_other_peer_lost_its_network_when_its_socket_went_too() {
    let mut lab = Lab::new(Limits::default());
    let (_a, b) = connected_pair(&mut lab);
    // B's network went away: its socket drops (it stays in the room for the resume grace); A's restarts give up.
    let now = lab.now();
    lab.hub.handle_closed(signal::ConnId::new(2), now);
    lab.report(1, &b, dropped("ice-disconnected"));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 2);
    let d = &lab.diagnoses[1];
    assert_eq!(
        (d.outcome, d.reason, d.reports),
        (Outcome::Dropped, Reason::PeerLost, 1)
    );
    assert!(d.message.contains("peer B lost its network"), "{}", d.message);
}

#[test]
fn a_drop_about_a_peer_that_left_is_taken_and_decided_at_once_with_how_it_left() {
    let mut lab = Lab::new(Limits::default());
    let (_a, b) = connected_pair(&mut lab);
    lab.send(2, json!({"type": "leave"}));
    // A hears `peer-left`, and its `Peer`, still recovering, closes: its drop report is about a peer no longer here.
    lab.report(1, &b, dropped("ice-disconnected"));
    assert_eq!(lab.diagnoses.len(), 2, "decided at once: no report will come from B");
    assert_eq!(lab.diagnoses[1].reason, Reason::PeerLeft);

    // Lost: the socket dropped and the grace ran out.
    let mut lab = Lab::new(Limits::default());
    let (_a, b) = connected_pair(&mut lab);
    let now = lab.now();
    lab.hub.handle_closed(signal::ConnId::new(2), now);
    lab.advance(Duration::from_secs(40));
    assert!(lab.frames(1, "peer-left").iter().any(|f| f["reason"] == "lost"));
    lab.report(1, &b, dropped("ice-disconnected"));
    assert_eq!(lab.diagnoses.len(), 2);
    let d = &lab.diagnoses[1];
    assert_eq!(d.reason, Reason::PeerLost);
    assert!(
        d.message.contains("did not come back within the resume grace"),
        "{}",
        d.message
    );
    // A report of any other kind about a peer that left is still dropped.
    lab.report(1, &b, failed_udp_timeout());
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 2);
}

#[test]
fn a_drop_and_a_newer_call_s_report_are_not_paired() {
    let mut lab = Lab::new(Limits::default());
    let (a, b) = connected_pair(&mut lab);
    lab.report(1, &b, dropped("ice-failed"));
    // B already started a new call to A and reports its connection: not the same story as A's drop.
    lab.signal(2, &a);
    lab.report(2, &a, connected_relay_tls(700));
    assert_eq!(lab.diagnoses.len(), 2, "A's drop decided alone at once");
    assert_eq!(lab.diagnoses[1].outcome, Outcome::Dropped);
    lab.report(1, &b, connected_relay_tls(650));
    assert_eq!(lab.diagnoses.len(), 3);
    assert_eq!(lab.diagnoses[2].outcome, Outcome::Connected);
}

/// The shards of one server share one allowance per address: reports from one address split over two hubs (two
/// rooms on two shards) are 120 in all, not 120 on each.
#[test]
fn the_report_allowance_is_one_per_address_across_shards() {
    let limits = Limits {
        burst: 10_000,
        messages_per_second: 10_000,
        ..Limits::default()
    };
    let shared = signal::report_allowance();
    let mut labs = [
        Lab::sharing(limits.clone(), shared.clone()),
        Lab::sharing(limits, shared),
    ];
    for lab in &mut labs {
        let a = lab.join(1, "r");
        let b = lab.join(2, "r");
        for _ in 0..50 {
            lab.signal(1, &b);
            lab.report(1, &b, failed_udp_timeout());
            lab.report(2, &a, failed_udp_timeout());
        }
    }
    let paired: usize = labs.iter().map(|l| l.diagnoses.len()).sum();
    let refused: u64 = labs.iter().map(|l| l.hub.stats().outcomes_refused).sum();
    assert_eq!(paired, 60, "120 reports paired over both hubs");
    assert_eq!(refused, 80, "the other 80 of 200 refused");
}

#[test]
fn one_address_cannot_fill_the_counts_at_the_message_rate() {
    // Each session within its own message rate and report allowance (100); the address has one of 120 reports.
    let mut lab = Lab::new(Limits {
        burst: 10_000,
        messages_per_second: 10_000,
        ..Limits::default()
    });
    let a = lab.join(1, "r");
    let b = lab.join(2, "r");
    for _ in 0..100 {
        lab.signal(1, &b);
        lab.report(1, &b, failed_udp_timeout());
        lab.report(2, &a, failed_udp_timeout());
    }
    assert_eq!(lab.diagnoses.len(), 60, "120 reports paired");
    assert_eq!(lab.hub.stats().outcomes_refused, 80);
    // Then one per second (the sessions' own allowances are spent: a third and fourth session).
    let c = lab.join(3, "r");
    lab.advance(Duration::from_secs(4));
    let now = lab.now();
    lab.hub.handle_connect(ConnId::new(4), IP, now).unwrap();
    lab.send(4, json!({"type": "join", "room": "r"}));
    let d = lab.frames(4, "joined")[0]["peerId"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        lab.signal(3, &d);
        lab.report(3, &d, failed_udp_timeout());
        lab.report(4, &c, failed_udp_timeout());
    }
    assert_eq!(lab.diagnoses.len(), 62, "4 more reports: two pairs");
}

fn recovered(cause: &str, ms: u32) -> Value {
    json!({"outcome": "recovered", "elapsedMs": 70000, "connectedMs": 60000, "brokenMs": ms, "restarts": 1,
           "cause": cause,
           "pair": {"local": {"type": "relay", "protocol": "udp", "relayProtocol": "udp"},
                    "remote": {"type": "srflx", "protocol": "udp"}},
           "gathered": {"host": 1, "relayUdp": 1}})
}

#[test]
fn an_interruption_the_call_survived_is_paired_counted_once_and_a_later_drop_still_taken() {
    let mut lab = Lab::new(Limits::default());
    let (a, b) = connected_pair(&mut lab);
    lab.report(1, &b, recovered("network-change", 2400));
    lab.advance(Duration::from_secs(1));
    lab.report(2, &a, recovered("ice-disconnected", 2600));
    assert_eq!(lab.diagnoses.len(), 2);
    let d = &lab.diagnoses[1];
    assert_eq!(
        (d.outcome, d.reason, d.reports),
        (Outcome::Recovered, Reason::Recovered, 2)
    );
    assert_eq!((d.recovery_ms, d.path), (Some(2600), Some(Path::RelayUdp)));
    assert_eq!(d.cause.map(|c| c.as_str()), Some("network-change"));
    let told = lab.frames(1, "diagnosis");
    let last = told.last().unwrap();
    assert_eq!(
        (last["outcome"].as_str(), last["recoveryMs"].as_u64()),
        (Some("recovered"), Some(2600))
    );
    // The call goes on: another interruption, then a drop, are still taken about it.
    lab.report(1, &b, recovered("ice-disconnected", 900));
    lab.report(2, &a, recovered("ice-disconnected", 1000));
    assert_eq!(lab.diagnoses.len(), 3);
    lab.report(1, &b, dropped("ice-failed"));
    lab.report(2, &a, dropped("ice-failed"));
    assert_eq!(lab.diagnoses.len(), 4);
    assert_eq!(lab.diagnoses[3].outcome, Outcome::Dropped);
    // Not about a peer never diagnosed connected.
    let c = lab.join(3, "r");
    lab.signal(3, &a);
    lab.report(3, &a, recovered("ice-disconnected", 500));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 4, "{:?}", lab.diagnoses.last());
    let _ = c;
}

/// A restarted server: both peers joined again (`rejoin`) and their call went on, its connected diagnosis gone with
/// the old process. The interruption and the later drop are still taken, on a negotiation since (their rejoin
/// signals), once per negotiation; without one, or from sessions that did not rejoin, they are refused as before.
#[test]
fn after_a_restart_a_rejoined_pair_s_interruption_and_drop_are_taken_on_a_negotiation_since() {
    let mut lab = Lab::new(Limits::default());
    let a = lab.rejoin(1, "r");
    let b = lab.rejoin(2, "r");
    // No negotiation on this server yet: refused.
    lab.report(1, &b, recovered("ice-disconnected", 3000));
    lab.advance(Duration::from_secs(11));
    assert!(lab.diagnoses.is_empty(), "{:?}", lab.diagnoses);
    assert_eq!(lab.hub.stats().outcomes_refused, 1);
    // They find each other's new ids (a `signal` each way), the call's ICE restart succeeds: both report it.
    lab.signal(1, &b);
    lab.signal(2, &a);
    lab.report(1, &b, recovered("ice-disconnected", 3000));
    lab.report(2, &a, recovered("ice-disconnected", 3200));
    assert_eq!(lab.diagnoses.len(), 1, "{:?}", lab.diagnoses);
    let d = &lab.diagnoses[0];
    assert_eq!((d.outcome, d.reports), (Outcome::Recovered, 2));
    assert_eq!(lab.frames(2, "diagnosis").last().unwrap()["outcome"], "recovered");
    // Connected again here: the later drop follows the usual rule, once.
    lab.report(1, &b, dropped("ice-failed"));
    lab.report(2, &a, dropped("ice-failed"));
    assert_eq!(lab.diagnoses.len(), 2);
    assert_eq!(
        (lab.diagnoses[1].outcome, lab.diagnoses[1].reports),
        (Outcome::Dropped, 2)
    );
    lab.report(1, &b, dropped("ice-failed"));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 2);
    assert_eq!(lab.hub.stats().outcomes_refused, 2);

    // C joined fresh, A rejoined: A's drop about C, a pair never diagnosed connected here, is taken on their
    // negotiation (a fresh pair's is refused: the test below).
    let c = lab.join(3, "r");
    lab.signal(3, &a);
    lab.report(1, &c, dropped("ice-failed"));
    lab.advance(Duration::from_secs(11));
    assert_eq!(
        lab.diagnoses.len(),
        3,
        "A rejoined: its drop about C is taken on their negotiation"
    );
    assert_eq!(
        (lab.diagnoses[2].outcome, lab.diagnoses[2].reports),
        (Outcome::Dropped, 1)
    );
    // Once per negotiation: the same again without a new one is refused.
    lab.report(1, &c, dropped("ice-failed"));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 3);
    assert_eq!(lab.hub.stats().outcomes_refused, 3);
}

/// Sessions that joined fresh (no `rejoin`) keep the rule: a drop needs a connected diagnosis here.
#[test]
fn a_fresh_pair_s_drop_needs_a_connected_diagnosis_even_beside_a_negotiation() {
    let mut lab = Lab::new(Limits::default());
    let a = lab.join(1, "r");
    let b = lab.join(2, "r");
    lab.signal(1, &b);
    lab.signal(2, &a);
    lab.report(1, &b, recovered("ice-disconnected", 900));
    lab.report(2, &a, dropped("ice-failed"));
    lab.advance(Duration::from_secs(11));
    assert!(lab.diagnoses.is_empty(), "{:?}", lab.diagnoses);
    assert_eq!(lab.hub.stats().outcomes_refused, 2);
    // `rejoin` must be a boolean.
    let now = lab.now();
    lab.hub.handle_connect(ConnId::new(3), IP, now).unwrap();
    lab.send(3, json!({"type": "join", "room": "r", "rejoin": "yes"}));
    assert!(lab.frames(3, "joined").is_empty());
    assert_eq!(lab.frames(3, "error").len(), 1, "{:?}", lab.inbox.get(&3));
}

/// The negotiation a rebound pair's drop is taken on is its own: a newer call's signals and its connection reports
/// are not used up by it, and once the drop is diagnosed, the other side's report after the late-report window
/// needs a new negotiation.
#[test]
fn a_rebound_drop_spends_its_own_negotiation_once_for_both_sides() {
    let mut lab = Lab::new(Limits::default());
    let a = lab.rejoin(1, "r");
    let b = lab.rejoin(2, "r");
    lab.signal(1, &b);
    lab.signal(2, &a);
    // A's drop is taken; then a new call is negotiated before B's drop report arrives.
    lab.report(1, &b, dropped("ice-failed"));
    lab.signal(1, &b);
    lab.signal(2, &a);
    lab.report(2, &a, dropped("ice-failed"));
    assert_eq!(lab.diagnoses.len(), 1, "{:?}", lab.diagnoses);
    assert_eq!(
        (lab.diagnoses[0].outcome, lab.diagnoses[0].reports),
        (Outcome::Dropped, 2)
    );
    // The new call connects: both connection reports are taken and paired.
    lab.report(1, &b, connected_relay_tls(700));
    lab.report(2, &a, connected_relay_tls(750));
    assert_eq!(lab.diagnoses.len(), 2, "{:?}", lab.diagnoses);
    assert_eq!(
        (lab.diagnoses[1].outcome, lab.diagnoses[1].reports),
        (Outcome::Connected, 2)
    );
    assert_eq!(lab.hub.stats().outcomes_refused, 0);

    // Another pair of rebound sessions: D's drop is decided alone at the deadline; E's own report about it, after
    // the late-report window, is refused (it would count the call twice), and so is D's again.
    let d = lab.rejoin(3, "s");
    let now = lab.now();
    lab.hub.handle_connect(ConnId::new(4), IP, now).unwrap();
    lab.send(4, json!({"type": "join", "room": "s", "rejoin": true}));
    let e = lab.frames(4, "joined")[0]["peerId"].as_str().unwrap().to_owned();
    lab.signal(3, &e);
    lab.report(3, &e, dropped("ice-failed"));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 3);
    assert_eq!(
        (lab.diagnoses[2].outcome, lab.diagnoses[2].reports),
        (Outcome::Dropped, 1)
    );
    lab.advance(Duration::from_secs(61));
    lab.report(4, &d, dropped("ice-failed"));
    lab.report(3, &e, dropped("ice-failed"));
    lab.advance(Duration::from_secs(11));
    assert_eq!(lab.diagnoses.len(), 3, "{:?}", lab.diagnoses.last());
    assert_eq!(lab.hub.stats().outcomes_refused, 2);
}
