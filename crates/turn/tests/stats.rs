#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The counters `Server::stats` gives metrics, each moved by the event it names and nothing else.

mod common;

use common::*;
use stun::{Attribute, Method};
use turn::{AuthFailure, Config, Quotas, Traffic};

#[test]
fn gauges_and_relayed_traffic_by_direction_and_transport() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c.allocate(&mut h, secs(0));
    let peer = addr("198.51.100.2:3480");
    c.channel_bind(&mut h, secs(0), 0x4001, peer);
    c.create_permission(&mut h, secs(0), addr("198.51.100.3:1"));
    let s = h.server.stats();
    assert_eq!(
        (s.allocations, s.allocations_by_transport.udp, s.allocations_created.udp),
        (1, 1, 1)
    );
    assert_eq!((s.permissions, s.channels), (2, 1));
    assert_eq!(s.challenges, 1, "the first Allocate's 401");
    assert_eq!(s.error_responses.get(Some(401)), 1);

    let (_, _) = h.send(h.at(1), c.five_tuple, &channel_data(0x4001, b"hello"));
    let mut buf = vec![0u8; turn::PEER_HEADROOM + 3 + turn::PEER_TAILROOM];
    assert!(h.server.handle_peer(h.at(1), id, peer, &mut buf, 3).is_some());
    let s = h.server.stats();
    assert_eq!(s.to_peer.udp, Traffic { packets: 1, bytes: 5 });
    assert_eq!(s.to_client.udp, Traffic { packets: 1, bytes: 3 });
    assert_eq!(s.to_peer.tcp, Traffic::default());

    c.refresh(&mut h, secs(2), Some(0));
    let s = h.server.stats();
    assert_eq!(
        (s.allocations, s.allocations_by_transport.udp, s.permissions, s.channels),
        (0, 0, 0, 0)
    );
    assert_eq!(s.allocations_created.udp, 1, "a counter, not a gauge");
}

#[test]
fn refusals_by_policy_quota_and_credentials() {
    let mut h = Harness::with(Config::default(), Quotas::new(1, 0));
    let mut c = Client::alice();
    c.allocate(&mut h, secs(0));
    // RFC 1918: refused by the default peer policy.
    let reply = c.create_permission(&mut h, secs(0), addr("10.0.0.1:9"));
    assert_error(&reply, Method::CREATE_PERMISSION, 403);
    let mut bob = Client::new("203.0.113.11:50000", "bob", "builder");
    // `request` answers the 401 challenge once, as a client does.
    let (_, reply) = bob.request(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_error(&reply, Method::ALLOCATE, 508);
    let mut mallory = Client::new("203.0.113.12:50000", "alice", "not-wonderland");
    let (_, reply) = mallory.request(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_error(&reply, Method::ALLOCATE, 401);

    let s = h.server.stats();
    assert_eq!(s.peer_refusals, 1);
    assert_eq!(s.error_responses.get(Some(403)), 1);
    assert_eq!(
        (s.quota_refusals.total, s.quota_refusals.user, s.quota_refusals.source),
        (1, 0, 0)
    );
    assert_eq!(s.error_responses.get(Some(508)), 1);
    assert_eq!(s.auth_failures.get(AuthFailure::BadIntegrity), 1);
    assert_eq!(s.auth_failures.total(), 1);
    assert_eq!(s.challenges, 3);
}

/// Expiry runs from a queue of deadlines, not a pass over every allocation: each permission, channel and
/// allocation still ends at its own time, refreshed ones later, and the gauges follow without a recount.
#[test]
fn expiry_from_the_deadline_queue_keeps_the_gauges() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c.allocate(&mut h, secs(0));
    let (p1, p2) = (addr("198.51.100.2:3480"), addr("198.51.100.3:1"));
    c.channel_bind(&mut h, secs(0), 0x4001, p1);
    c.create_permission(&mut h, secs(100), p2);
    let mut bob = Client::new("203.0.113.11:50000", "bob", "builder");
    bob.allocate(&mut h, secs(0));
    let gauges = |h: &Harness| {
        let s = h.server.stats();
        (s.allocations, s.permissions, s.channels)
    };
    assert_eq!(gauges(&h), (2, 2, 1));
    // Permissions last 300 s: the first (with the channel's) is due first.
    assert_eq!(h.server.poll_timeout(), Some(h.at(300)));
    h.server.handle_timeout(h.at(299));
    assert_eq!(gauges(&h), (2, 2, 1), "nothing due yet");
    h.server.handle_timeout(h.at(300));
    assert_eq!(
        gauges(&h),
        (2, 1, 1),
        "p1's permission lapsed; the channel (600 s) stays"
    );
    // Alice refreshes to 1000 s; bob does not: at 600 his allocation and alice's channel end, alice's stays.
    c.refresh(&mut h, secs(350), Some(1000));
    h.server.handle_timeout(h.at(400));
    assert_eq!(gauges(&h), (2, 0, 1), "p2's permission (from 100 s) lapsed at 400");
    h.server.handle_timeout(h.at(600));
    assert_eq!(gauges(&h), (1, 0, 0));
    assert_eq!(h.server.poll_timeout(), Some(h.at(1350)), "alice's refreshed lifetime");
    h.server.handle_timeout(h.at(1349));
    assert_eq!(gauges(&h), (1, 0, 0));
    h.server.handle_timeout(h.at(1350));
    assert_eq!(gauges(&h), (0, 0, 0));
    assert!(h.events().contains(&turn::Event::AllocationClosed(id)));
    assert_eq!(h.server.poll_timeout(), None);
}
