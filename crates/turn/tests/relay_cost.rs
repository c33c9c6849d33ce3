#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The instructions a relayed packet costs the TURN core, for callgrind: wall time on a shared 2-core machine varies
//! by 15 % between runs, instruction counts do not. `bench/relay-cost.sh` runs this test under
//! `valgrind --tool=callgrind` with two packet counts (`RELAY_COST_PACKETS`) and divides the difference in
//! instructions by the difference in packets, at two commits. Only the public API of `turn::Server` is used, so the
//! same file measures an older tree.

mod common;

use std::hint::black_box;

use common::*;
use stun::Attribute;
use turn::{PEER_HEADROOM, PEER_TAILROOM};

#[test]
fn relay_channel_data_both_ways() {
    let packets: usize = std::env::var("RELAY_COST_PACKETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c
        .allocate_with(&mut h, secs(0), &[Attribute::Lifetime(3600)])
        .0
        .unwrap();
    let peer = addr("198.51.100.2:3480");
    c.channel_bind(&mut h, secs(0), 0x4001, peer);
    let packet = channel_data(0x4001, &[7u8; 100]);
    let mut out = vec![0u8; 1500];
    let mut buf = vec![0u8; PEER_HEADROOM + 100 + PEER_TAILROOM];
    let now = h.at(1);
    let mut relayed = 0;
    for _ in 0..packets {
        // Client → peer: ChannelData in, the payload's range out.
        if matches!(
            black_box(h.server.handle_client(now, c.five_tuple, black_box(&packet), &mut out)),
            turn::ClientAction::Relay { .. }
        ) {
            relayed += 1;
        }
        // Peer → client: the ChannelData header written in place.
        if black_box(h.server.handle_peer(now, id, peer, black_box(&mut buf), 100)).is_some() {
            relayed += 1;
        }
    }
    assert_eq!(relayed, 2 * packets);
}
