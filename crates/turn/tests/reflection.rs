#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The reflection guard: unauthenticated UDP answers larger than their requests are budgeted per source IP.

mod common;

use common::*;
use stun::{Attribute, Class, Method};
use turn::{ClientAction, Config, Quotas, Transport};

/// A bare first Allocate (REQUESTED-TRANSPORT, FINGERPRINT): what a spoofed source would send to get a 401.
fn bare_allocate(client: &mut Client) -> Vec<u8> {
    let tid = client.tid();
    client.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)])
}

fn count_answers(h: &mut Harness, at: std::time::Duration, five_tuple: turn::FiveTuple, n: usize) -> (usize, usize) {
    let mut client = Client::new("203.0.113.5:40000", "alice", "wonderland");
    let (mut answered, mut request_len) = (0, 0);
    for _ in 0..n {
        let request = bare_allocate(&mut client);
        request_len = request.len();
        if let (ClientAction::Reply(_), reply) = h.send(h.t0 + at, five_tuple, &request) {
            assert_eq!(error_code(&reply), Some(401));
            answered += 1;
        }
    }
    (answered, request_len)
}

#[test]
fn spoofed_challenges_to_one_ip_are_capped_then_refilled() {
    let config = Config {
        reflection_bytes_per_second: 1000,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(1000, 0));
    let victim = udp("203.0.113.5:40000");
    let (answered, request_len) = count_answers(&mut h, secs(0), victim, 200);
    let mut probe = Client::new("203.0.113.5:40000", "alice", "wonderland");
    let (_, reply) = h.send(h.t0, udp("198.51.100.9:1"), &bare_allocate(&mut probe));
    let excess = reply.len() - request_len;
    assert!(excess > 0, "a 401 is larger than a bare Allocate");
    // A burst of twice the rate, in excess bytes.
    assert_eq!(answered, 2000 / excess, "answers within the burst of 2000 excess bytes");
    // Another source IP has its own budget; the victim's refills with time.
    let (other, _) = count_answers(&mut h, secs(0), udp("198.51.100.20:5000"), 5);
    assert_eq!(other, 5);
    let (later, _) = count_answers(&mut h, secs(1), victim, 200);
    // One second refills 1000 bytes on top of what the burst left.
    assert_eq!(later, (2000 % excess + 1000) / excess);
}

#[test]
fn streams_authenticated_answers_and_small_answers_are_not_charged() {
    let config = Config {
        reflection_bytes_per_second: 100,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(1000, 0));
    // TCP cannot be spoofed: every challenge answered.
    let tcp = turn::FiveTuple {
        transport: Transport::Tcp,
        ..udp("203.0.113.5:40000")
    };
    assert_eq!(count_answers(&mut h, secs(0), tcp, 50).0, 50);
    // Exhaust the UDP budget of one client, then authenticate: authenticated answers still flow.
    let mut alice = Client::new("203.0.113.6:40000", "alice", "wonderland");
    let tid = alice.tid();
    let (_, challenge) = h.send(
        h.t0,
        alice.five_tuple,
        &alice.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)]),
    );
    alice.take_challenge(&challenge);
    for _ in 0..20 {
        let mut stranger = Client::new("203.0.113.6:40000", "alice", "wonderland");
        h.send(h.t0, alice.five_tuple, &bare_allocate(&mut stranger));
    }
    let (action, _) = h.send(
        h.t0,
        alice.five_tuple,
        &bare_allocate(&mut Client::new("203.0.113.6:40000", "a", "b")),
    );
    assert_eq!(action, ClientAction::Drop, "the budget is spent");
    alice.allocate(&mut h, secs(0));
    let reply = alice.refresh(&mut h, secs(1), Some(600));
    assert_eq!(
        parse(&reply).class(),
        Class::Success,
        "authenticated answers are never dropped"
    );
}

#[test]
fn guard_off_answers_everything() {
    let config = Config {
        reflection_bytes_per_second: 0,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(1000, 0));
    assert_eq!(count_answers(&mut h, secs(0), udp("203.0.113.5:40000"), 500).0, 500);
}
