#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The relay's hot path allocates nothing: once an allocation, its permission and its channel exist, a packet in
//! either direction — ChannelData, Send and Data indications, a Binding request on the same port, and what an
//! attacker sends (unbound channels, peers without permission, garbage) — is handled with no heap allocation, as is
//! a timer check with nothing due. The set-up before the measured loop may allocate.

mod common;

use common::*;
use stun::{Attribute, Class, MessageWriter, Method};
use turn::{ClientAction, PEER_HEADROOM, PEER_TAILROOM};

/// The heap allocations `f` makes on this thread (`allocation-counter` is the global allocator of the test binary).
fn allocations_of(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

fn binding_request(tid: stun::TransactionId) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
    w.fingerprint().unwrap();
    let len = w.finish();
    buf.truncate(len);
    buf
}

const WARM_UP: usize = 100;
const ROUNDS: usize = 10_000;

#[test]
fn the_relay_path_allocates_nothing() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c
        .allocate_with(&mut h, secs(0), &[Attribute::Lifetime(3600)])
        .0
        .unwrap();
    let channel_peer = addr("198.51.100.2:3480");
    let indication_peer = addr("198.51.100.3:5000");
    c.channel_bind(&mut h, secs(0), 0x4001, channel_peer);
    c.create_permission(&mut h, secs(0), indication_peer);
    let _ = h.events();

    let channel_data = channel_data(0x4001, &[7u8; 100]);
    let unbound = common::channel_data(0x4002, &[7u8; 100]);
    let send = c.send_indication(indication_peer, &[8u8; 100]);
    let refused = c.send_indication(addr("198.51.100.99:9"), &[8u8; 100]);
    // Each with a transaction id of its own, as a client's keepalives have.
    let bindings: Vec<Vec<u8>> = (0..ROUNDS + WARM_UP).map(|_| binding_request(c.tid())).collect();
    let garbage = [0xffu8; 48];
    let mut out = vec![0u8; 1500];
    let mut buf = vec![0u8; PEER_HEADROOM + 100 + PEER_TAILROOM];

    let mut round = |h: &mut Harness, now, i: usize| -> [bool; 8] {
        let to_channel = matches!(
            h.server.handle_client(now, c.five_tuple, &channel_data, &mut out),
            ClientAction::Relay { .. }
        );
        let from_channel = h.server.handle_peer(now, id, channel_peer, &mut buf, 100).is_some();
        let to_indication = matches!(
            h.server.handle_client(now, c.five_tuple, &send, &mut out),
            ClientAction::Relay { .. }
        );
        let from_indication = h.server.handle_peer(now, id, indication_peer, &mut buf, 100).is_some();
        let binding = matches!(
            h.server.handle_client(now, c.five_tuple, &bindings[i], &mut out),
            ClientAction::Reply(_)
        );
        let unbound_dropped = h.server.handle_client(now, c.five_tuple, &unbound, &mut out) == ClientAction::Drop;
        let refused_dropped = h.server.handle_client(now, c.five_tuple, &refused, &mut out) == ClientAction::Drop
            && h.server
                .handle_peer(now, id, addr("198.51.100.99:9"), &mut buf, 100)
                .is_none();
        let garbage_dropped = h.server.handle_client(now, c.five_tuple, &garbage, &mut out) == ClientAction::Drop;
        h.server.handle_timeout(now);
        [
            to_channel,
            from_channel,
            to_indication,
            from_indication,
            binding,
            unbound_dropped,
            refused_dropped,
            garbage_dropped,
        ]
    };
    // Warm-up: the first packets may size what they use for good (the statistics, the answer cache's slots).
    let start = h.at(1);
    for i in 0..WARM_UP {
        assert_eq!(
            round(&mut h, start, i),
            [true; 8],
            "round {i} did what each packet asks"
        );
    }
    let mut results = Vec::with_capacity(ROUNDS);
    let allocated = allocations_of(|| {
        for i in 0..ROUNDS {
            let now = start + std::time::Duration::from_micros(i as u64 * 50);
            results.push(round(&mut h, now, WARM_UP + i));
        }
    });
    assert!(results.iter().all(|r| *r == [true; 8]), "every packet did what it asks");
    assert_eq!(
        allocated, 0,
        "heap allocations in 10 000 rounds of 9 packets and a timer check"
    );
}

/// The counter itself counts: without this, a counter that never counts would pass the test above.
#[test]
fn the_counter_sees_an_allocation() {
    let n = allocations_of(|| {
        std::hint::black_box(vec![1u8; 10]);
    });
    assert_eq!(n, 1);
}
