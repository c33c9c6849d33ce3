#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Simulated-time tests of the in-memory hub: explicit instants, no sockets, no sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use serde_json::{json, Value};
use signal::{mint_token, Claims, CloseCode, ConnId, Limits, MemoryHub, Now, Output, SignalHub};

struct Lab {
    hub: MemoryHub<rand::rngs::StdRng>,
    start: Instant,
    at: Duration,
    inbox: HashMap<u64, Vec<Value>>,
    closed: HashMap<u64, (u16, String)>,
    /// When each socket was sent a WebSocket ping by the hub's heartbeat.
    pings: HashMap<u64, Vec<Duration>>,
    /// Sockets whose client keeps its heartbeat going while time advances.
    live: std::collections::BTreeSet<u64>,
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
const UNIX: u64 = 1_800_000_000;

impl Lab {
    fn new(limits: Limits, secret: Option<&[u8]>) -> Self {
        let start = Instant::now();
        let ice: signal::IceServerSource = Box::new(|peer, unix| {
            serde_json::value::to_raw_value(&json!([{"urls": ["turn:192.0.2.1:3478"], "username": format!("{}:{peer}", unix + 60), "credential": "x"}]))
                .unwrap()
        });
        Self {
            hub: MemoryHub::new(
                limits,
                secret.map(<[u8]>::to_vec),
                ice,
                rand::rngs::StdRng::seed_from_u64(7),
                start,
            ),
            start,
            at: Duration::ZERO,
            inbox: HashMap::new(),
            closed: HashMap::new(),
            pings: HashMap::new(),
            live: Default::default(),
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.start + self.at,
            unix: UNIX + self.at.as_secs(),
        }
    }

    fn advance(&mut self, d: Duration) {
        // Step in small increments so every sweep runs, as the I/O layer's timer would.
        let end = self.at + d;
        while self.at < end {
            self.at = (self.at + Duration::from_millis(250)).min(end);
            let now = self.now();
            for conn in &self.live {
                self.hub.handle_activity(ConnId::new(*conn), now);
            }
            self.hub.handle_timeout(now);
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, text } => {
                    let conn = conn.get();
                    let v: Value = serde_json::from_slice(&text).expect("server frames are JSON");
                    assert!(v["seq"].is_u64(), "every frame carries seq: {v}");
                    self.inbox.entry(conn).or_default().push(v);
                }
                Output::Ping { conn } => self.pings.entry(conn.get()).or_default().push(self.at),
                Output::Close { conn, code, reason } => {
                    let conn = conn.get();
                    self.live.remove(&conn);
                    self.closed.insert(conn, (code.0, reason));
                }
                // Pairing of connection reports is tested in tests/outcomes.rs.
                Output::Outcome(_) | Output::Session(_) => {}
            }
        }
    }

    fn connect(&mut self, conn: u64) {
        self.connect_from(conn, IP);
    }

    fn connect_from(&mut self, conn: u64, ip: IpAddr) {
        let now = self.now();
        self.hub.handle_connect(ConnId::new(conn), ip, now).unwrap();
        self.live.insert(conn);
    }

    fn send(&mut self, conn: u64, v: Value) {
        let now = self.now();
        self.hub.handle_text(ConnId::new(conn), &v.to_string(), now);
        self.drain();
    }

    fn send_raw(&mut self, conn: u64, text: &str) {
        let now = self.now();
        self.hub.handle_text(ConnId::new(conn), text, now);
        self.drain();
    }

    fn drop_socket(&mut self, conn: u64) {
        let now = self.now();
        self.live.remove(&conn);
        self.hub.handle_closed(ConnId::new(conn), now);
        self.drain();
    }

    fn take(&mut self, conn: u64) -> Vec<Value> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// Connects and joins; returns (peer id, session secret).
    fn join(&mut self, conn: u64, room: &str) -> (String, String) {
        self.join_from(conn, room, IP)
    }

    /// Connects from `ip` and joins; returns (peer id, session secret).
    fn join_from(&mut self, conn: u64, room: &str, ip: IpAddr) -> (String, String) {
        self.connect_from(conn, ip);
        self.send(
            conn,
            json!({"type": "join", "room": room, "meta": {"name": format!("c{conn}")}}),
        );
        let joined = self
            .take(conn)
            .into_iter()
            .find(|m| m["type"] == "joined")
            .expect("joined");
        (
            joined["peerId"].as_str().unwrap().to_owned(),
            joined["session"].as_str().unwrap().to_owned(),
        )
    }
}

fn types(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(|m| m["type"].as_str().unwrap()).collect()
}

#[test]
fn join_presence_signal_broadcast_and_leave() {
    let mut lab = Lab::new(Limits::default(), None);
    lab.connect(1);
    lab.send(1, json!({"type": "join", "room": "r", "meta": {"name": "ann"}}));
    let joined = lab.take(1).remove(0);
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["seq"], 1);
    assert_eq!(joined["peers"], json!([]));
    assert_eq!(joined["heartbeatMs"], 10_000);
    assert_eq!(joined["resumeGraceMs"], 30_000);
    let ann = joined["peerId"].as_str().unwrap().to_owned();
    assert!(joined["iceServers"][0]["username"].as_str().unwrap().ends_with(&ann));

    let (bob, _) = lab.join(2, "r");
    let to_ann = lab.take(1);
    assert_eq!(to_ann[0]["type"], "peer-joined");
    assert_eq!(to_ann[0]["seq"], 2);
    assert_eq!(to_ann[0]["peer"], json!({"id": bob, "meta": {"name": "c2"}}));

    lab.send(2, json!({"type": "signal", "to": ann, "data": {"sdp": "offer"}}));
    let got = lab.take(1);
    assert_eq!(
        got[0],
        json!({"seq": 3, "type": "signal", "from": bob, "data": {"sdp": "offer"}})
    );

    lab.send(1, json!({"type": "broadcast", "data": [1, 2]}));
    assert_eq!(
        lab.take(2)[0],
        json!({"seq": 2, "type": "broadcast", "from": ann, "data": [1, 2]})
    );
    assert!(lab.take(1).is_empty(), "no echo of one's own broadcast");

    // A third peer in another room cannot be reached.
    let (carl, _) = lab.join(3, "other");
    lab.send(1, json!({"type": "signal", "to": carl, "data": 1}));
    let err = lab.take(1).remove(0);
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("unknown-peer"))
    );

    lab.send(2, json!({"type": "leave"}));
    assert_eq!(lab.closed[&2].0, 1000);
    let left = lab.take(1).remove(0);
    assert_eq!(
        (left["type"].as_str(), left["peerId"].as_str()),
        (Some("peer-left"), Some(bob.as_str()))
    );
    assert_eq!(lab.hub.stats().sessions, 2);
}

#[test]
fn bad_frames_get_coded_errors_then_the_socket_is_closed() {
    let mut lab = Lab::new(Limits::default(), None);
    lab.connect(1);
    lab.send_raw(1, "{not json");
    lab.send(1, json!({"type": "fly"}));
    lab.send(1, json!({"type": "signal", "to": "p_1", "data": 1}));
    lab.send(1, json!({"type": "join"}));
    let codes: Vec<String> = lab
        .take(1)
        .iter()
        .map(|m| m["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes, ["bad-json", "unknown-type", "not-joined", "bad-message"]);
    for _ in 0..30 {
        lab.send_raw(1, "[]");
    }
    assert_eq!(lab.closed[&1].0, CloseCode::PROTOCOL_VIOLATION.0);

    let mut lab = Lab::new(Limits::default(), None);
    lab.join(1, "r");
    lab.send_raw(1, &"x".repeat(70 * 1024));
    assert_eq!(lab.closed[&1].0, 1009);
}

#[test]
fn resume_replays_missed_messages_in_order_without_peer_left() {
    let mut lab = Lab::new(Limits::default(), None);
    let (ann, ann_session) = lab.join(1, "r");
    let (bob, _) = lab.join(2, "r");
    let seen = lab.take(1).last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(seen, 2);
    lab.drop_socket(1);
    for i in 0..5 {
        lab.send(2, json!({"type": "signal", "to": ann, "data": i}));
    }
    lab.advance(Duration::from_secs(20));
    assert!(lab.take(2).is_empty(), "bob sees no peer-left within the grace period");

    lab.connect(11);
    lab.send(11, json!({"type": "resume", "session": ann_session, "lastSeq": seen}));
    let got = lab.take(11);
    assert_eq!(got[0]["type"], "resumed");
    assert_eq!(got[0]["replayed"], 5);
    let data: Vec<i64> = got[1..].iter().map(|m| m["data"].as_i64().unwrap()).collect();
    assert_eq!(data, [0, 1, 2, 3, 4]);
    let seqs: Vec<u64> = got[1..].iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4, 5, 6, 7]);
    // Same peer id, and the session carries on.
    assert_eq!(got[0]["peerId"], ann.as_str());
    lab.send(11, json!({"type": "signal", "to": bob, "data": "back"}));
    assert_eq!(lab.take(2)[0]["data"], "back");
    lab.advance(Duration::from_secs(40));
    assert_eq!(lab.hub.stats().sessions, 2, "a resumed session does not expire");
}

/// `joined` is sent but never kept (the secret a resume needs comes in it): a session that received nothing else
/// holds no replay bytes, and a resume from `lastSeq` 0 replays from `seq` 2 on.
#[test]
fn joined_is_not_kept_for_a_resume() {
    let mut lab = Lab::new(Limits::default(), None);
    let (_, bob_session) = lab.join(1, "r");
    assert_eq!(
        lab.hub.stats().held_bytes,
        0,
        "nothing kept for a session that only has `joined`"
    );
    assert_eq!(lab.hub.stats().replay_frames, 0);
    lab.join(2, "r");
    assert_eq!(lab.hub.stats().replay_frames, 1, "only bob's peer-joined is kept");
    lab.take(1);
    lab.drop_socket(1);
    lab.connect(11);
    lab.send(11, json!({"type": "resume", "session": bob_session, "lastSeq": 0}));
    let got = lab.take(11);
    assert_eq!(types(&got), ["resumed", "peer-joined"], "{got:?}");
    assert_eq!(got[1]["seq"], 2);
}

#[test]
fn resume_after_ack_and_unknown_sessions() {
    let mut lab = Lab::new(Limits::default(), None);
    let (ann, ann_session) = lab.join(1, "r");
    lab.join(2, "r");
    for i in 0..3 {
        lab.send(2, json!({"type": "signal", "to": ann, "data": i}));
    }
    // Acknowledge up to seq 4, then a resume from seq 2 reaches back past what is kept.
    lab.send(1, json!({"type": "ping", "ack": 4}));
    let pong = lab.take(1).pop().unwrap();
    assert_eq!(pong, json!({"seq": 5, "type": "pong", "ack": 0}));
    lab.connect(3);
    lab.send(3, json!({"type": "resume", "session": ann_session, "lastSeq": 2}));
    assert_eq!(lab.take(3)[0]["code"], "resume-failed");
    assert_eq!(lab.closed[&3].0, 4201);

    lab.connect(4);
    lab.send(4, json!({"type": "resume", "session": "s_nope", "lastSeq": 0}));
    assert_eq!(lab.take(4)[0]["seq"], 0);
    assert_eq!(lab.closed[&4].0, 4201);

    // A resume while the old socket still looks alive replaces it.
    lab.connect(5);
    lab.send(5, json!({"type": "resume", "session": ann_session, "lastSeq": 4}));
    assert_eq!(lab.closed[&1].0, 4002);
    let got = lab.take(5);
    assert_eq!(types(&got), ["resumed", "signal"]);
    assert_eq!(got[1]["seq"], 5);
}

#[test]
fn grace_expiry_sends_peer_left_and_undeliverable() {
    let mut lab = Lab::new(Limits::default(), None);
    let (ann, _) = lab.join(1, "r");
    lab.join(2, "r");
    lab.take(1);
    lab.drop_socket(1);
    lab.send(2, json!({"type": "signal", "to": ann, "data": "lost", "id": "m-1"}));
    lab.advance(Duration::from_secs(29));
    assert!(lab.take(2).is_empty());
    lab.advance(Duration::from_secs(2));
    let got = lab.take(2);
    assert_eq!(types(&got), ["peer-left", "undeliverable"]);
    assert_eq!(got[1]["id"], "m-1");
    assert_eq!(got[1]["reason"], "peer-left");
    assert_eq!(got[1]["to"], ann.as_str());
}

#[test]
fn queue_of_a_disconnected_peer_is_bounded() {
    let limits = Limits {
        max_queued: 3,
        ..Limits::default()
    };
    let mut lab = Lab::new(limits, None);
    let (ann, _) = lab.join(1, "r");
    lab.join(2, "r");
    lab.drop_socket(1);
    for i in 0..5 {
        lab.send(
            2,
            json!({"type": "signal", "to": ann, "data": i, "id": format!("m{i}")}),
        );
    }
    let refused: Vec<&str> = Vec::new();
    let got = lab.take(2);
    let mut refused = refused;
    for m in &got {
        assert_eq!(m["type"], "undeliverable");
        assert_eq!(m["reason"], "queue-full");
        refused.push(m["id"].as_str().unwrap());
    }
    assert_eq!(refused, ["m3", "m4"]);
}

#[test]
fn heartbeat_timeout_closes_silent_sockets_and_starts_the_grace_period() {
    let mut lab = Lab::new(Limits::default(), None);
    lab.join(1, "r");
    lab.join(2, "r");
    lab.live.remove(&1);
    lab.live.remove(&2);
    for _ in 0..5 {
        lab.advance(Duration::from_secs(6));
        lab.send(2, json!({"type": "ping"}));
    }
    assert_eq!(lab.closed.get(&1).map(|c| c.0), Some(4200));
    assert!(!lab.closed.contains_key(&2), "a pinging socket stays");
    assert_eq!(lab.hub.stats().sessions, 2, "the silent peer is in its grace period");
}

/// A socket that neither joins nor resumes is closed at the join timeout, even while it answers every ping (it
/// would hold its connection slot for good); one that joins in time stays, and so does one that resumes.
#[test]
fn a_socket_that_never_joins_is_closed_at_the_join_timeout() {
    let mut lab = Lab::new(Limits::default(), None);
    lab.connect(1);
    lab.connect(2);
    let (_, secret) = lab.join(3, "r");
    lab.drop_socket(3);
    lab.connect(4);
    for step in 1..=60 {
        lab.advance(Duration::from_millis(250));
        let now = lab.now();
        lab.hub.handle_activity(ConnId::new(1), now);
        if step == 8 {
            lab.send(2, json!({"type": "join", "room": "r"}));
            lab.send(4, json!({"type": "resume", "session": secret, "lastSeq": 0}));
        }
    }
    assert_eq!(
        lab.closed.get(&1).cloned(),
        Some((4003, "join-timeout".into())),
        "an unjoined socket that answers pings"
    );
    assert!(!lab.closed.contains_key(&2), "joined in time: {:?}", lab.closed);
    assert!(!lab.closed.contains_key(&4), "resumed in time: {:?}", lab.closed);
}

/// The heartbeat is the hub's, in its sweep (no timer per socket): a socket quiet for the interval is pinged once,
/// and again only an interval after it was last heard; one that talks is never pinged; one that never answers is
/// pinged once and closed at the timeout.
#[test]
fn quiet_sockets_are_pinged_once_per_silence_and_talking_ones_never() {
    let mut lab = Lab::new(Limits::default(), None);
    for conn in 1..=3 {
        lab.join(conn, "r");
    }
    lab.live.clear();
    // 1 answers every ping (its pong), 2 sends a message every 3 s, 3 is silent: 40 s in 250 ms steps.
    let mut answered = 0;
    for step in 1..=160 {
        lab.advance(Duration::from_millis(250));
        let pings = lab.pings.get(&1).map_or(0, Vec::len);
        if pings > answered {
            answered = pings;
            let now = lab.now();
            lab.hub.handle_activity(ConnId::new(1), now);
        }
        if step % 12 == 0 {
            lab.send(2, json!({"type": "ping"}));
        }
    }
    let one = &lab.pings[&1];
    assert!((3..=4).contains(&one.len()), "pinged each quiet 10 s: {one:?}");
    assert!(
        one[0] >= Duration::from_secs(10) && one[0] <= Duration::from_millis(10_500),
        "{one:?}"
    );
    for pair in one.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(10) && gap <= Duration::from_millis(10_750),
            "{one:?}"
        );
    }
    assert!(!lab.closed.contains_key(&1), "a socket that answers stays");
    assert!(!lab.pings.contains_key(&2), "a socket that talks is never pinged");
    assert!(!lab.closed.contains_key(&2));
    assert_eq!(lab.pings[&3].len(), 1, "pinged once, not at every sweep");
    assert_eq!(lab.closed.get(&3).map(|c| c.0), Some(4200), "silent past the timeout");
}

/// The hub's timer wakes for deadlines, not on a fixed tick: sockets that talk all the time have nothing due until
/// their heartbeat check, once per heartbeat interval, so a minute of them costs a handful of wake-ups, not one every
/// half second.
#[test]
fn talking_sockets_wake_the_timer_once_per_heartbeat_interval() {
    let mut lab = Lab::new(Limits::default(), None);
    for conn in 1..=20 {
        lab.join(conn, "r");
        lab.at += Duration::from_millis(7);
    }
    let mut wakeups = 0;
    while lab.at < Duration::from_secs(60) {
        let due = lab.hub.poll_timeout().expect("sockets are held: a deadline is set");
        assert!(due > lab.now().instant, "the next deadline is in the future");
        lab.at = due.duration_since(lab.start);
        let now = lab.now();
        for conn in 1..=20 {
            lab.hub.handle_activity(ConnId::new(conn), now);
        }
        lab.hub.handle_timeout(now);
        lab.drain();
        wakeups += 1;
    }
    assert!(lab.pings.is_empty(), "talking sockets are never pinged");
    assert!(lab.closed.is_empty());
    // One check per 10 s interval: sweeps at least 500 ms apart gather the 20 sockets' deadlines (joined within
    // 140 ms) into one or two.
    assert!((6..=12).contains(&wakeups), "{wakeups} wake-ups in 60 s");
}

/// A session's grace runs from its latest drop: an earlier drop's deadline, left in the queue by a resume, ends
/// nothing.
#[test]
fn a_resumed_session_that_drops_again_gets_a_whole_grace() {
    let mut lab = Lab::new(Limits::default(), None);
    let (_, ann_session) = lab.join(1, "r");
    lab.join(2, "r");
    lab.drop_socket(1);
    lab.advance(Duration::from_secs(20));
    lab.connect(11);
    lab.send(11, json!({"type": "resume", "session": ann_session, "lastSeq": 1}));
    assert_eq!(lab.take(11)[0]["type"], "resumed");
    lab.advance(Duration::from_secs(5));
    lab.drop_socket(11);
    lab.take(2);
    // The first drop's grace ends at 30 s, the second's at 55 s.
    lab.advance(Duration::from_secs(25));
    assert!(lab.take(2).is_empty(), "no peer-left at the first drop's deadline");
    assert_eq!(lab.hub.stats().sessions_in_grace, 1);
    lab.advance(Duration::from_secs(6));
    assert_eq!(types(&lab.take(2)), ["peer-left"]);
    assert_eq!(lab.hub.stats().sessions, 1);
}

#[test]
fn rate_limit_drops_then_closes() {
    let limits = Limits {
        messages_per_second: 10,
        burst: 10,
        ..Limits::default()
    };
    let mut lab = Lab::new(limits, None);
    let (ann, _) = lab.join(1, "r");
    lab.join(2, "r");
    lab.take(1);
    for i in 0..15 {
        lab.send(2, json!({"type": "signal", "to": ann, "data": i}));
    }
    // join took one token: nine signals pass, then one rate-limited error.
    assert_eq!(lab.take(1).len(), 9);
    let errs = lab.take(2);
    assert_eq!(errs.iter().filter(|m| m["code"] == "rate-limited").count(), 1);
    lab.advance(Duration::from_secs(1));
    lab.send(2, json!({"type": "signal", "to": ann, "data": "later"}));
    assert_eq!(lab.take(1)[0]["data"], "later");
    for i in 0..40 {
        lab.send(2, json!({"type": "signal", "to": ann, "data": i}));
    }
    assert_eq!(lab.closed[&2].0, 4100);
}

/// Three peers in room `r` (sockets 1, 2, 3) under the delivery budget's tests' limits: 100 000 bytes delivered a
/// second and the given message rate; returns socket 1's peer id and `data` of 60 000 bytes (59 998 characters
/// with their quotes), which costs 120 000 as a broadcast to the two others.
fn delivery_lab(messages_per_second: u32, burst: u32) -> (Lab, String, String) {
    let limits = Limits {
        messages_per_second,
        burst,
        delivered_bytes_per_second: 100_000,
        max_peers_per_room: 3,
        ..Limits::default()
    };
    let mut lab = Lab::new(limits, None);
    let (ann, _) = lab.join(1, "r");
    lab.join(2, "r");
    lab.join(3, "r");
    for conn in 1..=3 {
        lab.take(conn);
    }
    (lab, ann, "x".repeat(59_998))
}

/// A broadcast's bytes count once per recipient against its sender's delivery budget, a signal's once. At 100 000
/// bytes a second (a burst of 400 000), a broadcast of 60 000 bytes of `data` to 2 peers costs 120 000: 3 pass
/// from a full bucket, the rest are dropped, and the first dropped in a row is told `rate-limited`. Two signals of
/// the same data fit where one broadcast does not. More than `burst` dropped in a row close the socket 4100.
#[test]
fn broadcasts_are_charged_once_per_recipient() {
    let (mut lab, ann, data) = delivery_lab(1000, 100);
    let count = |msgs: &[Value], ty: &str| msgs.iter().filter(|m| m["type"] == ty).count();
    let refused = |msgs: &[Value]| msgs.iter().filter(|m| m["code"] == "rate-limited").count();
    for _ in 0..10 {
        lab.send(3, json!({"type": "broadcast", "data": data}));
    }
    assert_eq!(count(&lab.take(1), "broadcast"), 3, "400 000 / 120 000");
    assert_eq!(count(&lab.take(2), "broadcast"), 3);
    assert_eq!(refused(&lab.take(3)), 1, "told once for the 7 in a row");

    // 40 000 were left; a second adds 100 000: one more, then told again for the next in a row.
    lab.advance(Duration::from_secs(1));
    for _ in 0..5 {
        lab.send(3, json!({"type": "broadcast", "data": data}));
    }
    assert_eq!(count(&lab.take(1), "broadcast"), 1);
    assert_eq!(refused(&lab.take(3)), 1);

    // 20 000 left, 120 000 after a second: two signals of 60 000 to one peer fit, the third is told, by its id.
    lab.advance(Duration::from_secs(1));
    for id in ["a", "b", "c"] {
        lab.send(3, json!({"type": "signal", "to": ann, "data": data, "id": id}));
    }
    assert_eq!(count(&lab.take(1), "signal"), 2);
    let told = lab.take(3);
    assert_eq!(refused(&told), 1);
    let error = told.iter().find(|m| m["code"] == "rate-limited").unwrap();
    assert_eq!(error["id"], "c", "the refused signal is named: {error}");

    // More than `burst` (100) dropped in a row, the budget hardly refilled: closed.
    lab.advance(Duration::from_millis(250));
    for _ in 0..100 {
        lab.send(3, json!({"type": "broadcast", "data": data}));
    }
    assert_eq!(count(&lab.take(1), "broadcast"), 0);
    assert_eq!(lab.closed[&3].0, 4100);
}

/// A client that keeps near its rates is told once per run of refusals and never closed for it: 25 runs past the
/// delivery budget and 25 past the message rate, each followed by a pause that refills them. (The refusals were
/// counted as the client's errors, and the 21st closed it 4003, which the SDK takes as final.)
#[test]
fn a_client_near_its_rates_is_told_but_not_closed() {
    let (mut lab, ann, data) = delivery_lab(10, 10);
    let mut told = 0;
    for _ in 0..25 {
        // 400 000 bytes from a full bucket: 3 broadcasts of 120 000 pass, the fourth is refused.
        for _ in 0..4 {
            lab.send(3, json!({"type": "broadcast", "data": data}));
        }
        lab.advance(Duration::from_secs(4));
        // 10 messages from a full bucket: the eleventh is refused.
        for i in 0..11 {
            lab.send(3, json!({"type": "signal", "to": ann, "data": i}));
        }
        lab.advance(Duration::from_secs(4));
        told += lab.take(3).iter().filter(|m| m["code"] == "rate-limited").count();
        lab.take(1);
        lab.take(2);
    }
    assert_eq!(told, 50, "told once per run");
    assert!(!lab.closed.contains_key(&3), "closed: {:?}", lab.closed.get(&3));
}

#[test]
fn room_and_connection_limits() {
    let limits = Limits {
        max_peers_per_room: 2,
        max_rooms: 2,
        max_connections_per_ip: 5,
        ..Limits::default()
    };
    let mut lab = Lab::new(limits, None);
    lab.join(1, "a");
    lab.join(2, "a");
    let now = lab.now();
    assert_eq!(
        lab.hub.check_join("a", None, now).unwrap_err().code.as_str(),
        "room-full"
    );
    lab.connect(3);
    lab.send(3, json!({"type": "join", "room": "a"}));
    assert_eq!(lab.take(3)[0]["code"], "room-full");
    assert_eq!(lab.closed[&3].0, 4102);
    lab.join(4, "b");
    lab.connect(5);
    lab.send(5, json!({"type": "join", "room": "c"}));
    assert_eq!(lab.closed[&5].0, 4103);
    for c in 6..8 {
        lab.connect(c);
    }
    let now = lab.now();
    let refused = lab.hub.handle_connect(ConnId::new(99), IP, now).unwrap_err();
    assert_eq!(refused.code.as_str(), "too-many-connections");
    assert_eq!(refused.code.http_status(), 429);
    lab.drop_socket(6);
    lab.connect(99);
}

#[test]
fn tokens_are_required_checked_and_give_identity() {
    let secret = b"join-secret";
    let mut lab = Lab::new(Limits::default(), Some(secret));
    let token = |room: &str, exp: u64| {
        mint_token(
            secret,
            &Claims {
                room: room.into(),
                sub: "ann@example.com".into(),
                exp,
                caps: vec!["publish".into()],
            },
        )
    };
    let cases = [
        (json!({"type": "join", "room": "r"}), "token-required"),
        (
            json!({"type": "join", "room": "r", "token": "garbage"}),
            "token-invalid",
        ),
        (
            json!({"type": "join", "room": "r", "token": token("r", UNIX - 1)}),
            "token-expired",
        ),
        (
            json!({"type": "join", "room": "r", "token": token("x", UNIX + 60)}),
            "token-room-mismatch",
        ),
        (
            json!({"type": "join", "room": "r", "token": mint_token(b"other", &Claims { room: "r".into(), sub: "s".into(), exp: UNIX + 60, caps: vec![] })}),
            "token-invalid",
        ),
    ];
    for (i, (msg, code)) in cases.into_iter().enumerate() {
        let conn = 10 + i as u64;
        lab.connect(conn);
        lab.send(conn, msg);
        assert_eq!(lab.take(conn)[0]["code"], code);
        assert_eq!(lab.closed[&conn].0, 4001);
    }
    lab.connect(1);
    lab.send(
        1,
        json!({"type": "join", "room": "r", "token": token("r", UNIX + 60), "meta": {"name": "A"}}),
    );
    let joined = lab.take(1).remove(0);
    assert_eq!(joined["caps"], json!(["publish"]));
    lab.connect(2);
    lab.send(2, json!({"type": "join", "room": "r", "token": token("*", UNIX + 60)}));
    let joined = lab.take(2).remove(0);
    assert_eq!(
        joined["peers"][0]["meta"],
        json!({"name": "A", "identity": "ann@example.com"})
    );
}

#[test]
fn shutdown_closes_everything_with_retry_now() {
    let mut lab = Lab::new(Limits::default(), None);
    lab.join(1, "r");
    lab.connect(2);
    lab.hub.handle_shutdown();
    lab.drain();
    assert_eq!(lab.closed[&1].0, 4202);
    assert_eq!(lab.closed[&2].0, 4202);
}

/// A room another node took over: its sockets close with 4202 to resume there, nobody hears `peer-left`, its sessions
/// are gone (a resume here fails), and other rooms are untouched.
#[test]
fn a_lost_room_closes_its_sockets_with_retry_now_and_forgets_its_sessions_silently() {
    let mut lab = Lab::new(Limits::default(), None);
    let (_, ann_session) = lab.join(1, "r");
    lab.join(2, "r");
    let (_, other_session) = lab.join(3, "elsewhere");
    // Ann's socket dropped: her session waits in its grace, with no socket to close.
    lab.join(4, "r");
    lab.drop_socket(4);
    lab.take(1);
    lab.take(2);
    lab.hub.handle_room_lost("r");
    lab.drain();
    assert_eq!(lab.closed[&1], (4202, "room-moved".to_owned()));
    assert_eq!(lab.closed[&2], (4202, "room-moved".to_owned()));
    assert!(!lab.closed.contains_key(&3), "another room's socket stays");
    assert!(
        lab.take(1).is_empty() && lab.take(2).is_empty(),
        "nobody is told anyone left"
    );
    let stats = lab.hub.stats();
    assert_eq!((stats.rooms, stats.sessions), (1, 1), "{stats:?}");
    lab.connect(5);
    lab.send(5, json!({"type": "resume", "session": ann_session, "lastSeq": 0}));
    assert_eq!(lab.take(5)[0]["code"], "resume-failed");
    lab.connect(6);
    lab.send(6, json!({"type": "resume", "session": other_session, "lastSeq": 0}));
    assert_eq!(lab.take(6)[0]["type"], "resumed");
    // The lost sessions' grace timers find nothing to end.
    lab.advance(Duration::from_secs(60));
    assert_eq!(lab.hub.stats().sessions, 1);
}

#[test]
fn client_numbered_messages_are_acknowledged_and_deduplicated() {
    let mut lab = Lab::new(Limits::default(), None);
    let (ann, ann_session) = lab.join(1, "r");
    lab.join(2, "r");
    lab.take(1);
    for seq in 1..=3 {
        lab.send(2, json!({"type": "signal", "to": ann, "data": seq, "seq": seq}));
    }
    lab.send(2, json!({"type": "ping"}));
    assert_eq!(lab.take(2).pop().unwrap()["ack"], 3);
    // The client lost its socket before it saw the ack and resends 2 and 3, then sends 4: only 4 is new.
    for seq in 2..=4 {
        lab.send(2, json!({"type": "signal", "to": ann, "data": seq, "seq": seq}));
    }
    let data: Vec<i64> = lab.take(1).iter().map(|m| m["data"].as_i64().unwrap()).collect();
    assert_eq!(data, [1, 2, 3, 4]);
    // `resumed` tells a reconnecting client how far the server got.
    lab.drop_socket(1);
    lab.connect(3);
    lab.send(3, json!({"type": "resume", "session": ann_session, "lastSeq": 6}));
    let resumed = lab.take(3).remove(0);
    assert_eq!(
        (resumed["type"].as_str(), resumed["ack"].as_u64()),
        (Some("resumed"), Some(0))
    );
}

#[test]
fn unknown_peer_error_names_the_message() {
    let mut lab = Lab::new(Limits::default(), None);
    lab.join(1, "r");
    lab.send(1, json!({"type": "signal", "to": "p_gone", "data": 1, "id": "m-9"}));
    let err = lab.take(1).remove(0);
    assert_eq!(
        (err["code"].as_str(), err["id"].as_str()),
        (Some("unknown-peer"), Some("m-9"))
    );
}

#[test]
fn binary_frames_get_a_bad_message_error_that_says_why() {
    let mut lab = Lab::new(Limits::default(), None);
    lab.join(1, "r");
    let now = lab.now();
    lab.hub.handle_binary(ConnId::new(1), now);
    lab.drain();
    let err = lab.take(1).remove(0);
    assert_eq!(err["code"], "bad-message");
    assert!(err["message"].as_str().unwrap().contains("text frames"), "{err}");
    assert!(
        !lab.closed.contains_key(&1),
        "one binary frame does not close the socket"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Byte budgets (issue 7): per session, per source, in total.

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
}

/// A signal of about `kib` KiB.
fn sized_signal(to: &str, kib: usize, id: &str) -> Value {
    json!({"type": "signal", "to": to, "data": {"pad": "x".repeat(kib * 1024)}, "id": id})
}

fn reasons(msgs: &[Value]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| m["type"] == "undeliverable")
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn small_budgets(session_kib: usize, source_kib: usize, total_kib: usize) -> Limits {
    Limits {
        max_session_bytes: session_kib * 1024,
        max_source_bytes: source_kib * 1024,
        max_total_bytes: total_kib * 1024,
        messages_per_second: 10_000,
        burst: 10_000,
        ..Limits::default()
    }
}

#[test]
fn a_reader_that_never_acknowledges_holds_at_most_its_session_budget() {
    let mut lab = Lab::new(small_budgets(16, 1024, 4096), None);
    let (ann, ann_session) = lab.join_from(1, "r", ip(1));
    lab.join_from(2, "r", ip(2));
    lab.take(1);
    for i in 0..40 {
        lab.send(2, sized_signal(&ann, 1, &format!("m{i}")));
    }
    // Every signal reached the connected reader, and its sender heard of no refusal.
    assert_eq!(lab.take(1).iter().filter(|m| m["type"] == "signal").count(), 40);
    assert!(reasons(&lab.take(2)).is_empty());
    let held = lab.hub.held_by(ip(1));
    assert!(held <= 16 * 1024 && held > 12 * 1024, "held {held}");
    // The oldest unacknowledged frames were forgotten: a resume from before them fails, from after works.
    lab.drop_socket(1);
    lab.connect_from(3, ip(1));
    lab.send(3, json!({"type": "resume", "session": ann_session, "lastSeq": 2}));
    assert_eq!(lab.take(3)[0]["code"], "resume-failed");
    lab.connect_from(4, ip(1));
    lab.send(4, json!({"type": "resume", "session": ann_session, "lastSeq": 38}));
    let got = lab.take(4);
    assert_eq!(types(&got), ["resumed", "signal", "signal", "signal", "signal"]);
    // An acknowledgement gives everything back.
    lab.send(4, json!({"type": "ping", "ack": 42}));
    assert_eq!(lab.hub.held_by(ip(1)), 0);
}

#[test]
fn a_disconnected_queue_is_refused_past_its_byte_budget_and_nothing_queued_is_dropped() {
    let mut lab = Lab::new(small_budgets(8, 1024, 4096), None);
    let (ann, ann_session) = lab.join_from(1, "r", ip(1));
    lab.join_from(2, "r", ip(2));
    let seen = lab.take(1).last().unwrap()["seq"].as_u64().unwrap();
    lab.drop_socket(1);
    for i in 0..10 {
        lab.send(2, sized_signal(&ann, 1, &format!("m{i}")));
    }
    let refused = reasons(&lab.take(2));
    assert!(!refused.is_empty() && refused.len() < 10, "{refused:?}");
    assert!(refused.iter().all(|(_, r)| r == "queue-full"), "{refused:?}");
    let accepted = 10 - refused.len();
    assert!(lab.hub.held_by(ip(1)) <= 8 * 1024);
    lab.connect_from(3, ip(1));
    lab.send(3, json!({"type": "resume", "session": ann_session, "lastSeq": seen}));
    let got = lab.take(3);
    assert_eq!(got[0]["replayed"], accepted as u64, "every accepted frame is replayed");
    assert_eq!(got.len(), accepted + 1);
}

#[test]
fn the_source_budget_refuses_with_source_full_and_spares_other_sources() {
    let mut lab = Lab::new(small_budgets(8, 12, 4096), None);
    // Two sessions of one source, both disconnected; a sender from elsewhere fills their queues.
    let (a1, _) = lab.join_from(1, "r", ip(1));
    let (a2, _) = lab.join_from(2, "r", ip(1));
    let (legit, _) = lab.join_from(3, "r", ip(3));
    lab.join_from(4, "r", ip(4));
    for c in 1..=3 {
        lab.drop_socket(c);
    }
    lab.take(4);
    for i in 0..5 {
        lab.send(4, sized_signal(&a1, 1, &format!("a1-{i}")));
        lab.send(4, sized_signal(&a2, 1, &format!("a2-{i}")));
        lab.send(4, sized_signal(&legit, 1, &format!("l-{i}")));
    }
    let refused = reasons(&lab.take(4));
    assert!(
        refused.iter().any(|(_, r)| r == "source-full"),
        "the shared source ran out first: {refused:?}"
    );
    assert!(
        refused.iter().all(|(id, _)| !id.starts_with("l-")),
        "another source is not affected: {refused:?}"
    );
    assert!(lab.hub.held_by(ip(1)) <= 12 * 1024);
}

#[test]
fn past_the_global_budget_queues_are_refused_but_connected_peers_still_talk() {
    let mut lab = Lab::new(small_budgets(8, 8, 20), None);
    // Queues of disconnected sessions from three sources fill the hub.
    let mut queues = Vec::new();
    for c in 1..=3u8 {
        let (peer, _) = lab.join_from(u64::from(c), "held", ip(c));
        queues.push(peer);
    }
    lab.join_from(9, "held", ip(9));
    for c in 1..=3 {
        lab.drop_socket(c);
    }
    lab.take(9);
    for (i, peer) in queues.iter().enumerate() {
        for j in 0..6 {
            lab.send(9, sized_signal(peer, 1, &format!("q{i}-{j}")));
        }
    }
    let refused = reasons(&lab.take(9));
    assert!(refused.iter().any(|(_, r)| r == "server-full"), "{refused:?}");
    let stats = lab.hub.stats();
    assert!(stats.held_bytes <= 20 * 1024, "{stats:?}");
    // A new pair from another source joins and exchanges signals, delivered live; the total stays in budget.
    let (ann, _) = lab.join_from(20, "fresh", ip(20));
    let (bob, _) = lab.join_from(21, "fresh", ip(21));
    lab.take(20);
    for i in 0..5 {
        lab.send(21, sized_signal(&ann, 2, &format!("to-ann-{i}")));
        lab.send(20, sized_signal(&bob, 2, &format!("to-bob-{i}")));
    }
    assert_eq!(lab.take(20).iter().filter(|m| m["type"] == "signal").count(), 5);
    assert_eq!(lab.take(21).iter().filter(|m| m["type"] == "signal").count(), 5);
    assert!(lab.hub.stats().held_bytes <= 20 * 1024);
    // No queued frame was dropped to make room: every accepted one is still there.
    assert!(lab.hub.stats().refused > 0);
}

#[test]
fn budgets_return_to_zero_when_sessions_end() {
    let mut lab = Lab::new(small_budgets(64, 128, 1024), None);
    let (ann, _) = lab.join_from(1, "r", ip(1));
    let (bob, _) = lab.join_from(2, "r", ip(2));
    let (carl, _) = lab.join_from(3, "r", ip(3));
    lab.drop_socket(3);
    for i in 0..10 {
        lab.send(2, sized_signal(&ann, 1, &format!("a{i}")));
        lab.send(1, sized_signal(&bob, 1, &format!("b{i}")));
        lab.send(1, sized_signal(&carl, 1, &format!("c{i}")));
        lab.send(1, json!({"type": "broadcast", "data": i}));
    }
    assert!(lab.hub.stats().held_bytes > 30 * 1024);
    lab.send(1, json!({"type": "leave"}));
    lab.drop_socket(2);
    lab.advance(Duration::from_secs(31));
    let stats = lab.hub.stats();
    assert_eq!(stats.sessions, 0);
    assert_eq!((stats.held_bytes, stats.held_sources), (0, 0), "{stats:?}");
}

#[test]
fn the_attack_of_issue_7_is_held_to_the_source_budget() {
    // One address: 19 joined readers that never acknowledge and one broadcaster of 60 KB messages. Without the
    // delivery budget (`broadcasts_are_charged_once_per_recipient`), which would throttle this one sender: the byte
    // budgets must hold against many.
    let limits = Limits {
        delivered_bytes_per_second: 0,
        ..Limits::default()
    };
    let (source_budget, session_budget) = (limits.max_source_bytes, limits.max_session_bytes);
    let mut lab = Lab::new(limits, None);
    for c in 1..=19 {
        lab.join_from(c, "attack", ip(1));
    }
    lab.join_from(20, "attack", ip(1));
    let body = json!({"type": "broadcast", "data": {"pad": "x".repeat(60_000)}});
    for round in 0..300 {
        lab.send(20, body.clone());
        if round % 40 == 39 {
            lab.advance(Duration::from_secs(1));
        }
        for c in 1..=19 {
            lab.take(c);
        }
    }
    let held = lab.hub.held_by(ip(1));
    assert!(held <= source_budget, "held {held} of {source_budget}");
    assert!(
        held > source_budget - 19 * 61 * 1024,
        "the budget is used, not wasted: {held}"
    );
    assert!(session_budget < source_budget);
    // Someone from another address joins and is answered at once.
    let (ann, _) = lab.join_from(30, "legit", ip(30));
    lab.join_from(31, "legit", ip(31));
    lab.send(
        31,
        json!({"type": "signal", "to": ann, "data": {"sdp": "offer"}, "id": "o"}),
    );
    let got = lab.take(30);
    assert_eq!(got.last().unwrap()["data"]["sdp"], "offer", "{got:?}");
    assert!(reasons(&lab.take(31)).is_empty());
}

#[test]
fn an_ipv6_64_is_one_source_for_sockets() {
    let limits = Limits {
        max_connections_per_ip: 2,
        ..Limits::default()
    };
    let mut lab = Lab::new(limits, None);
    lab.connect_from(1, "2001:db8:7:7::1".parse().unwrap());
    lab.connect_from(2, "2001:db8:7:7::2".parse().unwrap());
    let now = lab.now();
    let refused = lab
        .hub
        .handle_connect(ConnId::new(3), "2001:db8:7:7:1:2:3:4".parse().unwrap(), now);
    assert_eq!(refused.unwrap_err().code.as_str(), "too-many-connections");
    lab.connect_from(4, "2001:db8:7:8::1".parse().unwrap());
}

/// What `stats()` reports for metrics: sockets and sessions in grace, the replay depth, messages by type, errors,
/// closes, resumes and `undeliverable` by reason.
#[test]
fn stats_count_messages_refusals_closes_resumes_and_undeliverable() {
    let mut lab = Lab::new(Limits::default(), None);
    let (ann, ann_session) = lab.join(1, "r");
    let (_bob, _) = lab.join(2, "r");
    lab.drop_socket(1);
    for i in 0..3 {
        lab.send(2, json!({"type": "signal", "to": ann, "data": i}));
    }
    let s = lab.hub.stats();
    assert_eq!((s.connections, s.sessions, s.sessions_in_grace), (1, 2, 1));
    assert!(s.replay_frames >= 3, "{s:?}");
    lab.connect(11);
    lab.send(11, json!({"type": "resume", "session": ann_session, "lastSeq": 2}));
    lab.send(11, json!({"type": "nonsense"}));
    lab.send(2, json!({"type": "leave"}));
    lab.send(11, json!({"type": "signal", "to": "p_gone", "data": 1}));
    // A signal to Carl, whose socket dropped and who never comes back: undeliverable, peer-left.
    let (carl, _) = lab.join(3, "r");
    lab.drop_socket(3);
    lab.send(11, json!({"type": "signal", "to": carl, "data": 2}));
    lab.advance(Duration::from_secs(40));
    let s = lab.hub.stats();
    assert_eq!(s.undeliverable.get("peer-left"), Some(&1), "{s:?}");
    assert_eq!(s.sessions_in_grace, 0);
    assert_eq!(s.messages.get("join"), Some(&3));
    assert_eq!(s.messages.get("signal"), Some(&5));
    assert_eq!(s.messages.get("resume"), Some(&1));
    assert_eq!(s.messages.get("leave"), Some(&1));
    assert_eq!(s.resumes, 1);
    assert_eq!(s.closes.get(&1000), Some(&1), "{s:?}");
    assert!(
        s.errors.values().sum::<u64>() >= 2,
        "unknown type and unknown peer: {s:?}"
    );
    assert_eq!(s.errors.get("unknown-peer"), Some(&1), "{s:?}");
}

/// `ice-servers` (docs/protocol.md): a fresh credential for the session's own peer id, outside the stream — also
/// when the join token has long expired, since the session is what authenticates it; refused before a join.
#[test]
fn ice_servers_gives_a_fresh_credential_after_the_join_token_expired() {
    let secret = b"join-secret";
    let mut lab = Lab::new(Limits::default(), Some(secret));
    let token = mint_token(
        secret,
        &Claims {
            room: "r".into(),
            sub: "ann".into(),
            exp: UNIX + 60,
            caps: vec![],
        },
    );
    lab.connect(9);
    lab.send(9, json!({"type": "ice-servers"}));
    assert_eq!(lab.take(9)[0]["code"], "not-joined");

    lab.connect(1);
    lab.send(1, json!({"type": "join", "room": "r", "token": token}));
    let joined = lab.take(1).remove(0);
    let peer = joined["peerId"].as_str().unwrap().to_owned();
    assert_eq!(joined["iceServers"][0]["username"], format!("{}:{peer}", UNIX + 60));
    // Ten minutes on: the token expired nine minutes ago; the socket stays (pings keep it alive).
    for _ in 0..60 {
        lab.advance(Duration::from_secs(10));
        lab.send(1, json!({"type": "ping", "ack": 1}));
    }
    lab.take(1);
    lab.send(1, json!({"type": "ice-servers"}));
    let got = lab.take(1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "ice-servers");
    assert_eq!(got[0]["seq"], 1, "outside the stream: the newest stream number");
    assert_eq!(
        got[0]["iceServers"][0]["username"],
        format!("{}:{peer}", UNIX + 600 + 60)
    );
    // Not numbered, so nothing to replay: a resume from seq 1 replays nothing.
    lab.drop_socket(1);
    lab.connect(2);
    lab.send(2, json!({"type": "resume", "session": joined["session"], "lastSeq": 1}));
    assert_eq!(lab.take(2)[0]["replayed"], 0);
}
