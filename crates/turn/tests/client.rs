#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The sans-IO client against the sans-IO server, in simulated time: two cores, no sockets, no clock.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use stun::{Attribute, ChannelNumber};
use turn::client::{Client, ClientConfig, Event, Outcome, RequestId};
use turn::ClientAction;

thread_local! {
    /// The allocation the last `run` created, as the I/O layer learns it from `handle_relay_bound`.
    static CREATED: std::cell::Cell<Option<turn::AllocationId>> = const { std::cell::Cell::new(None) };
}

/// Carries the client's transmits to the server and the server's answers back until both are quiet, binding
/// relays as the I/O layer would; returns what the client's events said and what the server asked to relay.
fn run(
    h: &mut Harness,
    client: &mut Client<StdRng>,
    now: Instant,
    five_tuple: turn::FiveTuple,
) -> (Vec<Event>, Vec<Vec<u8>>) {
    let mut relayed = Vec::new();
    while let Some(packet) = client.poll_transmit() {
        let (action, reply) = h.send(now, five_tuple, &packet);
        match action {
            ClientAction::Reply(_) => client.handle_input(now, &reply),
            ClientAction::BindRelay(request) => {
                let (id, reply) = h.bind(now, &request);
                CREATED.with(|c| c.set(id));
                client.handle_input(now, &reply);
            }
            ClientAction::Relay { payload, .. } => relayed.push(packet[payload].to_vec()),
            _ => {}
        }
    }
    (std::iter::from_fn(|| client.poll_event()).collect(), relayed)
}

fn outcome_of(events: &[Event], id: RequestId) -> Outcome {
    events
        .iter()
        .find_map(|e| match e {
            Event::Response { id: i, outcome, .. } if *i == id => Some(outcome.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no answer to {id:?} in {events:?}"))
}

fn client(user: &str, password: &str) -> Client<StdRng> {
    Client::with_rng(ClientConfig::udp(user, password), StdRng::seed_from_u64(7))
}

#[test]
fn allocate_with_the_401_dance_then_permission_channel_and_data_both_ways() {
    let mut h = Harness::new();
    let five_tuple = udp("203.0.113.10:50000");
    let mut c = client("alice", "wonderland");
    let now = h.at(0);
    let id = c.allocate(now, |_| Ok(())).unwrap();
    let (events, _) = run(&mut h, &mut c, now, five_tuple);
    let Outcome::Success(answer) = outcome_of(&events, id) else {
        panic!("{events:?}")
    };
    assert_eq!(answer.relayed().len(), 1);
    assert_eq!(answer.mapped(), Some(five_tuple.client));
    assert_eq!(answer.lifetime(), Some(600));
    assert_eq!(c.realm(), Some(REALM));

    let peer = addr(PEER);
    let id = c.create_permission(now, &[peer]).unwrap();
    assert!(outcome_of(&run(&mut h, &mut c, now, five_tuple).0, id).is_success());
    let channel = ChannelNumber::new(0x4001).unwrap();
    let id = c.channel_bind(now, channel, peer).unwrap();
    assert!(outcome_of(&run(&mut h, &mut c, now, five_tuple).0, id).is_success());

    // Client → peer: ChannelData and a Send indication reach the server's relay action with the payload.
    c.channel_data(channel, b"over the channel").unwrap();
    c.send_indication(peer, b"in an indication").unwrap();
    let (_, relayed) = run(&mut h, &mut c, now, five_tuple);
    assert_eq!(
        relayed,
        vec![b"over the channel".to_vec(), b"in an indication".to_vec()]
    );

    // Peer → client: the server writes the ChannelData header in place; the client names the peer. From a
    // permitted peer without a channel: a Data indication.
    let allocation = CREATED.with(|c| c.get()).expect("the allocation's id");
    for (from, payload) in [
        (peer, b"hello".as_slice()),
        (addr("198.51.100.7:9999"), b"indicated".as_slice()),
    ] {
        let mut buf = vec![0u8; turn::PEER_HEADROOM + 64 + turn::PEER_TAILROOM];
        buf[turn::PEER_HEADROOM..turn::PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let fwd = h
            .server
            .handle_peer(now, allocation, from, &mut buf, payload.len())
            .expect("forwarded");
        c.handle_input(now, &buf[fwd.range]);
        assert_eq!(
            c.poll_event(),
            Some(Event::Data {
                peer: from,
                data: payload.to_vec()
            })
        );
    }

    // Refresh and delete.
    let id = c.refresh(now + Duration::from_secs(60), 600).unwrap();
    let (events, _) = run(&mut h, &mut c, now + Duration::from_secs(60), five_tuple);
    assert_eq!(outcome_of(&events, id).answer().and_then(|a| a.lifetime()), Some(600));
    let id = c.refresh(now + Duration::from_secs(61), 0).unwrap();
    assert!(outcome_of(&run(&mut h, &mut c, now + Duration::from_secs(61), five_tuple).0, id).is_success());
    assert_eq!(h.server.stats().allocations, 0);
}

#[test]
fn wrong_credentials_end_in_one_401_without_a_loop() {
    let mut h = Harness::new();
    let five_tuple = udp("203.0.113.11:50000");
    let mut c = client("alice", "not-the-password");
    let now = h.at(0);
    let id = c.allocate(now, |_| Ok(())).unwrap();
    let (events, _) = run(&mut h, &mut c, now, five_tuple);
    assert_eq!(outcome_of(&events, id).error_code(), Some(401));
    assert_eq!(c.pending(), 0);
}

#[test]
fn a_stale_nonce_is_renewed_and_the_request_signed_again() {
    let mut h = Harness::new();
    let five_tuple = udp("203.0.113.12:50000");
    let mut c = client("alice", "wonderland");
    let now = h.at(0);
    let id = c.allocate(now, |_| Ok(())).unwrap();
    assert!(outcome_of(&run(&mut h, &mut c, now, five_tuple).0, id).is_success());
    let mid = h.at(500);
    let id = c.refresh(mid, 3600).unwrap();
    assert!(outcome_of(&run(&mut h, &mut c, mid, five_tuple).0, id).is_success());
    // Past the nonce's lifetime the server answers 438; the client takes the new nonce and the Refresh succeeds.
    let later = h.at(NONCE_LIFETIME + 1);
    h.server.handle_timeout(later);
    let id = c.refresh(later, 600).unwrap();
    let (events, _) = run(&mut h, &mut c, later, five_tuple);
    assert!(outcome_of(&events, id).is_success(), "{events:?}");
}

#[test]
fn udp_retransmits_on_rfc_8489_schedule_and_gives_up_at_39_5_s() {
    let t0 = Instant::now();
    let mut c = client("alice", "wonderland");
    let id = c.binding(t0).unwrap();
    assert!(c.poll_transmit().is_some());
    let mut sent_at = vec![Duration::ZERO];
    let mut now = t0;
    while let Some(next) = c.poll_timeout() {
        now = next;
        c.handle_timeout(now);
        while c.poll_transmit().is_some() {
            sent_at.push(now - t0);
        }
        if let Some(Event::Response { outcome, .. }) = c.poll_event() {
            assert_eq!(outcome, Outcome::Timeout);
            break;
        }
    }
    let ms: Vec<u128> = sent_at.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!((now - t0).as_millis(), 39_500, "gave up at Rm × RTO after the last");
    assert_eq!(c.pending(), 0);
    let _ = id;
}

#[test]
fn a_reliable_transport_sends_once_and_waits_39_5_s() {
    let t0 = Instant::now();
    let mut c = Client::with_rng(ClientConfig::stream("alice", "wonderland"), StdRng::seed_from_u64(1));
    c.allocate(t0, |_| Ok(())).unwrap();
    assert!(c.poll_transmit().is_some());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(39_500)));
    c.handle_timeout(t0 + Duration::from_millis(39_500));
    assert!(c.poll_transmit().is_none(), "no retransmission over TCP/TLS");
    assert!(matches!(
        c.poll_event(),
        Some(Event::Response {
            outcome: Outcome::Timeout,
            ..
        })
    ));
    // ChannelData is padded to four bytes on a stream.
    c.channel_data(ChannelNumber::new(0x4000).unwrap(), b"abcde").unwrap();
    assert_eq!(c.poll_transmit().map(|p| p.len()), Some(12));
}

#[test]
fn extra_attributes_survive_the_challenge() {
    let mut h = Harness::new();
    let five_tuple = udp("203.0.113.13:50000");
    let mut c = client("alice", "wonderland");
    let now = h.at(0);
    c.allocate(now, |w| w.add(&Attribute::EvenPort { reserve: true }).map(|_| ()))
        .unwrap();
    let mut bound = None;
    while let Some(packet) = c.poll_transmit() {
        match h.send(now, five_tuple, &packet) {
            (ClientAction::Reply(_), reply) => c.handle_input(now, &reply),
            (ClientAction::BindRelay(request), _) => bound = Some(request),
            other => panic!("{other:?}"),
        }
    }
    let request = bound.expect("the signed Allocate reached the server");
    assert!(
        request.even_port && request.reserve_next,
        "EVEN-PORT R was sent again after the 401"
    );
    assert_eq!(c.pending(), 1, "waiting for the answer");
}

/// An answer to `request` as a scripted server would write it: `code` (0 for a success), REALM and NONCE when
/// given, MESSAGE-INTEGRITY with `key` when given.
fn scripted_answer(request: &[u8], code: u16, nonce: Option<&str>, key: Option<&stun::IntegrityKey>) -> Vec<u8> {
    let request = stun::Message::parse(request).unwrap();
    let class = if code == 0 {
        stun::Class::Success
    } else {
        stun::Class::Error
    };
    let mut buf = vec![0u8; 512];
    let mut w = stun::MessageWriter::response(&mut buf, &request, class).unwrap();
    if code != 0 {
        w.error_code(code, "scripted").unwrap();
    }
    if let Some(nonce) = nonce {
        w.add(&Attribute::Realm(REALM)).unwrap();
        w.add(&Attribute::Nonce(nonce)).unwrap();
    }
    if let Some(key) = key {
        w.message_integrity(key).unwrap();
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// When a Binding's transmissions went out (ms after the first) until it timed out, and when it did.
fn transmissions_until_timeout(config: ClientConfig, t0: Instant) -> (Vec<u128>, Instant) {
    let mut c = Client::with_rng(config, StdRng::seed_from_u64(3));
    c.binding(t0).unwrap();
    let mut sent_at = Vec::new();
    let mut now = t0;
    while c.poll_event().is_none() {
        while c.poll_transmit().is_some() {
            sent_at.push((now - t0).as_millis());
        }
        now = c.poll_timeout().expect("a timer while pending");
        c.handle_timeout(now);
    }
    (sent_at, now)
}

/// A capped RTO: the doctor's NAT probes get six tries in 1.5 s instead of three, so a link that loses 10 % each way
/// loses a probe 0.005 % of the time instead of 0.7 % (each try is a request and an answer: 0.19 per try).
#[test]
fn a_capped_rto_retransmits_at_a_steady_pace_until_the_timeout() {
    let t0 = Instant::now();
    let config = ClientConfig {
        initial_rto: Duration::from_millis(250),
        max_rto: Some(Duration::from_millis(250)),
        max_transmissions: u32::MAX,
        timeout: Some(Duration::from_millis(1500)),
        ..ClientConfig::udp("alice", "wonderland")
    };
    let (sent_at, ended) = transmissions_until_timeout(config.clone(), t0);
    assert_eq!(
        sent_at,
        vec![0, 250, 500, 750, 1000, 1250],
        "every 250 ms, never doubled"
    );
    assert_eq!((ended - t0).as_millis(), 1500, "given up at the timeout");

    // A cap below the initial RTO is the initial RTO: never faster than asked.
    let below = ClientConfig {
        max_rto: Some(Duration::from_millis(10)),
        ..config
    };
    let (sent_at, _) = transmissions_until_timeout(below, t0);
    assert_eq!(sent_at, vec![0, 250, 500, 750, 1000, 1250]);
}

#[test]
fn a_timeout_cuts_the_schedule_and_replaces_39_5_s_on_a_stream() {
    let t0 = Instant::now();
    let config = ClientConfig {
        initial_rto: Duration::from_millis(250),
        max_transmissions: u32::MAX,
        timeout: Some(Duration::from_secs(1)),
        ..ClientConfig::udp("alice", "wonderland")
    };
    let mut c = Client::with_rng(config.clone(), StdRng::seed_from_u64(3));
    c.binding(t0).unwrap();
    let mut sent_at = Vec::new();
    let mut now = t0;
    loop {
        while c.poll_transmit().is_some() {
            sent_at.push((now - t0).as_millis());
        }
        if let Some(event) = c.poll_event() {
            assert!(matches!(
                event,
                Event::Response {
                    outcome: Outcome::Timeout,
                    ..
                }
            ));
            break;
        }
        now = c.poll_timeout().expect("a timer while pending");
        c.handle_timeout(now);
    }
    assert_eq!(
        sent_at,
        vec![0, 250, 750],
        "doubling from the RTO, as long as the timeout allows"
    );
    assert_eq!((now - t0).as_millis(), 1000, "given up at the timeout, not at Rm × RTO");

    for wait in [Duration::from_secs(1), Duration::from_secs(60)] {
        let stream = ClientConfig {
            reliable: true,
            timeout: Some(wait),
            ..config.clone()
        };
        let mut c = Client::with_rng(stream, StdRng::seed_from_u64(3));
        c.allocate(t0, |_| Ok(())).unwrap();
        assert_eq!(
            c.poll_timeout(),
            Some(t0 + wait),
            "the wait over a stream, shorter or longer than 39.5 s"
        );
    }
}

#[test]
fn a_binding_carries_rfc_5780_attributes_unsigned() {
    let mut c = client("alice", "wonderland");
    c.request(Instant::now(), stun::Method::BINDING, |w| {
        w.add(&Attribute::ChangeRequest {
            change_ip: true,
            change_port: false,
        })
        .map(|_| ())
    })
    .unwrap();
    let packet = c.poll_transmit().unwrap();
    let msg = stun::Message::parse(&packet).unwrap();
    assert_eq!(msg.method(), stun::Method::BINDING);
    assert_eq!(
        msg.decode(stun::attr::CHANGE_REQUEST),
        Some(Ok(Attribute::ChangeRequest {
            change_ip: true,
            change_port: false
        }))
    );
    assert!(!msg.has_message_integrity());
    msg.check_fingerprint().unwrap();
}

#[test]
fn stale_nonces_are_counted_and_the_challenge_budget_is_configurable() {
    let now = Instant::now();
    let config = ClientConfig {
        max_challenges: 3,
        ..ClientConfig::udp("alice", "wonderland")
    };
    let mut c = Client::with_rng(config, StdRng::seed_from_u64(5));
    let id = c.allocate(now, |_| Ok(())).unwrap();
    let mut sent = 0;
    let mut answers = vec![(401, "n1"), (438, "n2"), (438, "n3"), (438, "n4")].into_iter();
    while let Some(packet) = c.poll_transmit() {
        sent += 1;
        let (code, nonce) = answers.next().expect("no more than the budget");
        c.handle_input(now, &scripted_answer(&packet, code, Some(nonce), None));
    }
    assert_eq!(sent, 4, "the unsigned request and three signed ones");
    assert_eq!(c.stale_nonces(), 3);
    let Some(Event::Response { id: done, outcome, .. }) = c.poll_event() else {
        panic!("no answer")
    };
    assert_eq!((done, outcome.error_code()), (id, Some(438)));
}

#[test]
fn an_answer_signed_with_another_key_is_dropped_and_counted() {
    let now = Instant::now();
    let mut c = client("alice", "wonderland");
    c.allocate(now, |_| Ok(())).unwrap();
    let first = c.poll_transmit().unwrap();
    c.handle_input(now, &scripted_answer(&first, 401, Some("n1"), None));
    let signed = c.poll_transmit().expect("signed again");
    let wrong = stun::long_term_key_md5("alice", REALM, "not-the-password");
    c.handle_input(now, &scripted_answer(&signed, 0, None, Some(&wrong)));
    assert_eq!(c.integrity_failures(), 1);
    assert_eq!(c.poll_event(), None, "still waiting for the real answer");
    let right = c.key().unwrap().clone();
    c.handle_input(now, &scripted_answer(&signed, 0, None, Some(&right)));
    assert!(matches!(c.poll_event(), Some(Event::Response { outcome, .. }) if outcome.is_success()));
    assert_eq!(c.integrity_failures(), 1);
}

/// XOR-PEER-ADDRESS is encoded against the transaction id (an IPv6 address against all 96 bits of it): a request
/// sent again under a new id after the 401 must still name the same peer.
#[test]
fn an_ipv6_peer_is_named_correctly_in_every_transmission() {
    let t0 = Instant::now();
    let mut c = client("alice", "wonderland");
    let peer = addr(PEER_V6);
    c.create_permission(t0, &[peer]).unwrap();
    let first = c.poll_transmit().unwrap();
    let named = |packet: &[u8]| {
        let msg = stun::Message::parse(packet).unwrap();
        match msg.decode(stun::attr::XOR_PEER_ADDRESS) {
            Some(Ok(Attribute::XorPeerAddress(a))) => a,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(named(&first), peer);
    // A 401 from the server: the signed retry carries a new transaction id and the same peer.
    let mut h = Harness::new();
    let five_tuple = udp("203.0.113.14:50000");
    let (_, challenge) = h.send(h.at(0), five_tuple, &first);
    c.handle_input(t0, &challenge);
    let second = c.poll_transmit().expect("the signed retry");
    assert_ne!(
        stun::Message::parse(&second).unwrap().transaction_id(),
        stun::Message::parse(&first).unwrap().transaction_id()
    );
    assert_eq!(named(&second), peer);
}
