#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The session journal (`SessionEvent`, from a hub built `with_session_events`) is enough to rebuild a session in
//! another hub (`SignalHub::restore`), as a node taking a room over from a dead one does: the resume replays what
//! the client had not processed, numbering carries on, handled client messages stay handled.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use bytes::Bytes;
use rand::SeedableRng;
use serde_json::{json, Value};
use signal::{ConnId, Limits, MemoryHub, Now, Output, Restored, SessionEvent, SignalHub};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn hub(seed: u64) -> MemoryHub {
    let ice: signal::IceServerSource = Box::new(|_, _| serde_json::value::to_raw_value(&json!([])).unwrap());
    MemoryHub::new(
        Limits::default(),
        None,
        ice,
        rand::rngs::StdRng::seed_from_u64(seed),
        Instant::now(),
    )
    .with_session_events()
}

fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: 1_800_000_000,
    }
}

/// What a node's I/O layer would have recorded, per peer.
#[derive(Default)]
struct Journal {
    opened: HashMap<String, SessionEvent>,
    next: HashMap<String, u64>,
    client: HashMap<String, u64>,
    frames: HashMap<String, Vec<(u64, Bytes)>>,
}

impl Journal {
    fn drain(&mut self, hub: &mut MemoryHub, inbox: &mut HashMap<u64, Vec<Value>>) {
        while let Some(out) = hub.poll_output() {
            match out {
                Output::Send { conn, text } => inbox
                    .entry(conn.get())
                    .or_default()
                    .push(serde_json::from_slice(&text).unwrap()),
                Output::Session(event) => self.record(event),
                Output::Ping { .. } | Output::Close { .. } | Output::Outcome(_) => {}
            }
        }
    }

    fn record(&mut self, event: SessionEvent) {
        match &event {
            SessionEvent::Opened {
                peer,
                next_seq,
                client_seq,
                ..
            } => {
                self.next.insert(peer.to_string(), *next_seq);
                self.client.insert(peer.to_string(), *client_seq);
                self.opened.insert(peer.to_string(), event.clone());
            }
            SessionEvent::Numbered { peer, seq, kept } => {
                self.next.insert(peer.to_string(), seq + 1);
                if let Some(text) = kept {
                    self.frames
                        .entry(peer.to_string())
                        .or_default()
                        .push((*seq, text.clone()));
                }
            }
            SessionEvent::Forgot { peer, through } => {
                self.frames
                    .entry(peer.to_string())
                    .or_default()
                    .retain(|(s, _)| s > through);
            }
            SessionEvent::Handled { peer, client_seq } => {
                self.client.insert(peer.to_string(), *client_seq);
            }
            SessionEvent::Ended { peer, .. } => {
                self.opened.remove(peer.as_str());
            }
        }
    }

    fn restored(&self) -> Vec<Restored> {
        self.opened
            .iter()
            .map(|(p, opened)| {
                let SessionEvent::Opened {
                    secret,
                    room,
                    peer,
                    meta,
                    ip,
                    ..
                } = opened
                else {
                    unreachable!()
                };
                Restored {
                    secret: secret.clone(),
                    room: room.clone(),
                    peer: peer.clone(),
                    meta: meta.clone(),
                    ip: *ip,
                    next_seq: self.next[p],
                    client_seq: self.client[p],
                    frames: self.frames.get(p).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// Sockets 1 and 2 joined to room `r` of `hub`, their frames in `inbox` and journaled in `journal`.
fn two_joined(hub: &mut MemoryHub, journal: &mut Journal, inbox: &mut HashMap<u64, Vec<Value>>) {
    for conn in [1, 2] {
        hub.handle_connect(ConnId::new(conn), IP, now()).unwrap();
        hub.handle_text(
            ConnId::new(conn),
            &json!({"type":"join","room":"r","meta":{"name":conn}}).to_string(),
            now(),
        );
    }
    journal.drain(hub, inbox);
}

#[test]
fn a_session_rebuilt_from_the_journal_resumes_where_it_was() {
    let (mut first, mut journal, mut inbox) = (hub(1), Journal::default(), HashMap::new());
    two_joined(&mut first, &mut journal, &mut inbox);
    let a = inbox[&1][0]["peerId"].as_str().unwrap().to_owned();
    let b_joined = inbox[&2][0].clone();
    let b = b_joined["peerId"].as_str().unwrap().to_owned();
    for n in 1..=4u64 {
        first.handle_text(
            ConnId::new(1),
            &json!({"type":"signal","to":b,"data":{"n":n},"seq":n}).to_string(),
            now(),
        );
    }
    // B acknowledges through its second signal (stream seq 3).
    first.handle_text(ConnId::new(2), &json!({"type":"ping","ack":3}).to_string(), now());
    journal.drain(&mut first, &mut inbox);
    assert_eq!(journal.frames[&b].iter().map(|(s, _)| *s).collect::<Vec<_>>(), [4, 5]);

    // The first hub is gone; another restores both sessions from the journal.
    let mut second = hub(2);
    for session in journal.restored() {
        second.restore(session, now());
    }
    let mut inbox2 = HashMap::new();
    let mut journal2 = Journal::default();
    journal2.drain(&mut second, &mut inbox2);
    assert_eq!(journal2.opened.len(), 2, "restored sessions are announced again");

    second.handle_connect(ConnId::new(9), IP, now()).unwrap();
    let resume = json!({"type":"resume","session":b_joined["session"],"lastSeq":3});
    second.handle_text(ConnId::new(9), &resume.to_string(), now());
    second.handle_connect(ConnId::new(8), IP, now()).unwrap();
    let resume_a = json!({"type":"resume","session":inbox[&1][0]["session"],"lastSeq":2});
    second.handle_text(ConnId::new(8), &resume_a.to_string(), now());
    // A resends its fourth signal (handled already) and sends a fifth.
    for n in 4..=5u64 {
        second.handle_text(
            ConnId::new(8),
            &json!({"type":"signal","to":b,"data":{"n":n},"seq":n}).to_string(),
            now(),
        );
    }
    journal2.drain(&mut second, &mut inbox2);
    let got: Vec<(String, u64, Option<u64>)> = inbox2[&9]
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
                v["data"]["n"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("resumed".into(), 5, None),
            ("signal".into(), 4, Some(3)),
            ("signal".into(), 5, Some(4)),
            ("signal".into(), 6, Some(5))
        ]
    );
    assert_eq!(
        inbox2[&8][0]["ack"], 4,
        "A's handled messages stay handled: {:?}",
        inbox2[&8]
    );
    assert_eq!(inbox2[&9][0]["peerId"], b.as_str());
    assert!(a.starts_with("p_"));
}

/// `journal()` writes a lost journal again: recorded from nothing, it rebuilds every session as the journal kept
/// from the start had it (numbers, handled client messages, kept frames), so a takeover after a Redis restart loses
/// nothing.
#[test]
fn the_journal_written_again_from_the_hub_is_the_journal_kept_from_the_start() {
    let (mut first, mut kept, mut inbox) = (hub(1), Journal::default(), HashMap::new());
    two_joined(&mut first, &mut kept, &mut inbox);
    let b = inbox[&2][0]["peerId"].as_str().unwrap().to_owned();
    for n in 1..=4u64 {
        let signal = json!({"type":"signal","to":b,"data":{"n":n},"seq":n});
        first.handle_text(ConnId::new(1), &signal.to_string(), now());
    }
    first.handle_text(ConnId::new(2), &json!({"type":"ping","ack":3}).to_string(), now());
    kept.drain(&mut first, &mut inbox);

    let mut again = Journal::default();
    for event in first.journal() {
        again.record(event);
    }
    let sorted = |j: &Journal| {
        let mut all = j.restored();
        all.sort_by(|x, y| x.peer.as_str().cmp(y.peer.as_str()));
        all
    };
    let rebuilt = sorted(&again);
    assert_eq!(rebuilt.len(), 2);
    assert_eq!(rebuilt, sorted(&kept));
    let at_b = rebuilt.iter().find(|r| r.peer.as_str() == b).unwrap();
    assert_eq!(at_b.frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [4, 5]);
}

/// A session taken over from a node that died keeps its calls, but their connected diagnoses stayed behind: a drop
/// report about its call is taken on a negotiation since (before, it was refused as about a pair never diagnosed
/// connected), and still not without one.
#[test]
fn a_restored_session_s_drop_is_taken_on_a_negotiation_since() {
    let (mut first, mut journal, mut inbox) = (hub(1), Journal::default(), HashMap::new());
    two_joined(&mut first, &mut journal, &mut inbox);
    let b = inbox[&2][0]["peerId"].as_str().unwrap().to_owned();
    let mut second = hub(2);
    for session in journal.restored() {
        second.restore(session, now());
    }
    second.handle_connect(ConnId::new(8), IP, now()).unwrap();
    let resume_a = json!({"type":"resume","session":inbox[&1][0]["session"],"lastSeq":1});
    second.handle_text(ConnId::new(8), &resume_a.to_string(), now());
    let drop = json!({"type":"outcome","peer":b,"report":{"outcome":"dropped","elapsedMs":90000,
        "connectedMs":60000,"brokenMs":20000,"restarts":2,"cause":"ice-failed"}});
    let diagnosed = |hub: &mut MemoryHub| {
        let mut n = 0;
        while let Some(out) = hub.poll_output() {
            n += usize::from(matches!(out, Output::Outcome(_)));
        }
        n
    };
    // No negotiation on this node: refused.
    second.handle_text(ConnId::new(8), &drop.to_string(), now());
    assert_eq!(diagnosed(&mut second), 0);
    assert_eq!(second.stats().outcomes_refused, 1);
    // The call's ICE restart (a `signal`), then the drop: held for B's report, diagnosed alone at the deadline.
    let signal = json!({"type":"signal","to":b,"data":{"sdp":"v=0"}});
    second.handle_text(ConnId::new(8), &signal.to_string(), now());
    second.handle_text(ConnId::new(8), &drop.to_string(), now());
    let later = Now {
        instant: Instant::now() + std::time::Duration::from_secs(11),
        unix: 1_800_000_011,
    };
    second.handle_timeout(later);
    assert_eq!(diagnosed(&mut second), 1);
    assert_eq!(second.stats().outcomes_refused, 1);
}
