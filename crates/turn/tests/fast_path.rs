#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! What a kernel fast path is told (`Server::with_fast_path_events`), in simulated time: a channel is announced
//! with its deadline when bound and on every refresh, withdrawn when it expires or its allocation ends, never for a
//! refused peer; kernel-relayed traffic is counted and the bandwidth cap is handed out as credit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stun::{Attribute, Method};
use turn::{AllocationId, Config, Event, FastPathTraffic, FastRoute, Quotas, Traffic};

fn fast_harness(config: Config) -> Harness {
    Harness::with_server(config, Arc::new(Quotas::new(1000, 0)), |s| s.with_fast_path_events())
}

fn allocated(config: Config) -> (Harness, Client, AllocationId) {
    let mut h = fast_harness(config);
    let mut c = Client::alice();
    let id = c
        .allocate_with(&mut h, secs(0), &[Attribute::Lifetime(3600)])
        .0
        .unwrap();
    assert!(
        h.events().is_empty(),
        "an allocation without channels announces nothing"
    );
    (h, c, id)
}

/// Each `ChannelUsable`: the route and its deadline as time since `t0`.
fn usable(t0: Instant, events: &[Event]) -> Vec<(FastRoute, Duration)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChannelUsable { route, expires } => Some((*route, *expires - t0)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_bound_channel_is_announced_with_its_deadline_and_again_on_every_refresh() {
    let (mut h, mut c, id) = allocated(Config::default());
    let peer = addr(PEER);
    assert_success(
        &c.channel_bind(&mut h, secs(10), 0x4000, peer),
        Method::CHANNEL_BIND,
        &c.key(),
    );
    let events = h.events();
    let announced = usable(h.t0, &events);
    assert_eq!(announced.len(), 1, "{events:?}");
    let (route, deadline) = announced[0];
    assert_eq!(route.allocation, id);
    assert_eq!(route.five_tuple, c.five_tuple);
    assert_eq!((route.channel.get(), route.peer), (0x4000, peer));
    assert_eq!(route.relay, addr("192.0.2.1:49152"));
    // min(channel 600 s, permission 300 s, allocation 3600 s) from the bind at 10 s.
    assert_eq!(deadline, secs(310));

    // A CreatePermission refreshes the permission, so the deadline moves.
    assert_success(
        &c.create_permission(&mut h, secs(100), peer),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
    assert_eq!(
        usable(h.t0, &h.events()).iter().map(|(_, d)| *d).collect::<Vec<_>>(),
        vec![secs(400)]
    );

    // A Refresh (lifetime 1, raised to the 600 s default: the allocation now ends at 800 s) leaves the deadline at
    // the permission's 400 s, so the kernel is not told again.
    let refreshed = c.refresh(&mut h, secs(200), Some(1));
    assert_success(&refreshed, Method::REFRESH, &c.key());
    assert_eq!(usable(h.t0, &h.events()), vec![]);
}

/// A flood of small requests does not rewrite the kernel's routes: a channel is announced again only when its
/// deadline moved by more than 30 s (before, each Refresh re-announced every channel of the allocation: 64 here,
/// up to 256, each ~3 map system calls, for an 80-byte request).
#[test]
fn a_flood_of_refreshes_announces_only_deadlines_that_moved() {
    const CHANNELS: u16 = 64;
    let (mut h, mut c, _) = allocated(Config::default());
    for i in 0..CHANNELS {
        let peer = addr(&format!("198.51.100.7:{}", 9000 + i));
        assert_success(
            &c.channel_bind(&mut h, secs(10), 0x4000 + i, peer),
            Method::CHANNEL_BIND,
            &c.key(),
        );
    }
    // Each bind announces its own channel only (before, every channel to the peer's IP again: 2 080 in all).
    let first = usable(h.t0, &h.events());
    assert_eq!(first.len(), usize::from(CHANNELS));
    assert!(first.iter().all(|(_, d)| *d == secs(310)), "{first:?}");

    for t in 11..111 {
        assert_success(&c.refresh(&mut h, secs(t), Some(3600)), Method::REFRESH, &c.key());
        assert_success(
            &c.create_permission(&mut h, secs(t), addr(PEER)),
            Method::CREATE_PERMISSION,
            &c.key(),
        );
        if t < 40 {
            let again = usable(h.t0, &h.events());
            assert!(again.is_empty(), "at {t} s, deadlines moved by {} s: {again:?}", t - 10);
        } else if t == 41 {
            // The permission's deadline has moved by 31 s: every channel once.
            let again = usable(h.t0, &h.events());
            assert_eq!(again.len(), usize::from(CHANNELS), "at {t} s");
            assert!(again.iter().all(|(_, d)| *d == secs(t + 300)), "{again:?}");
        }
    }
    let later = usable(h.t0, &h.events());
    assert!(
        later.len() <= 3 * usize::from(CHANNELS),
        "{} announcements for 200 requests over 70 s",
        later.len()
    );
}

#[test]
fn an_expired_channel_and_an_ended_allocation_are_withdrawn() {
    let (mut h, mut c, id) = allocated(Config::default());
    let peer = addr(PEER);
    c.channel_bind(&mut h, secs(0), 0x4000, peer);
    c.channel_bind(&mut h, secs(0), 0x4001, addr("198.51.100.8:9000"));
    h.events();
    // Permissions (300 s) are refreshed so only the channels' own 600 s end them.
    c.create_permission(&mut h, secs(290), peer);
    c.create_permission(&mut h, secs(290), addr("198.51.100.8:9000"));
    c.create_permission(&mut h, secs(580), peer);
    c.create_permission(&mut h, secs(580), addr("198.51.100.8:9000"));
    h.events();
    h.server.handle_timeout(h.at(599));
    assert!(h.events().is_empty());
    h.server.handle_timeout(h.at(600));
    let withdrawn: Vec<u16> = h
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::ChannelUnusable(r) => Some(r.channel.get()),
            _ => None,
        })
        .collect();
    assert_eq!(withdrawn.len(), 2, "{withdrawn:?}");

    // A new channel, then the allocation is deleted: the channel is withdrawn before the allocation closes.
    c.channel_bind(&mut h, secs(601), 0x4002, peer);
    h.events();
    c.refresh(&mut h, secs(602), Some(0));
    let events = h.events();
    let unusable = events
        .iter()
        .position(|e| matches!(e, Event::ChannelUnusable(r) if r.channel.get() == 0x4002));
    let closed = events.iter().position(|e| *e == Event::AllocationClosed(id));
    assert!(matches!((unusable, closed), (Some(u), Some(c)) if u < c), "{events:?}");
}

#[test]
fn a_refused_peer_is_never_announced() {
    let mut config = Config::default();
    config.policy.deny = vec![turn::policy::IpNet::new("198.51.100.0".parse().unwrap(), 24).unwrap()];
    let (mut h, mut c, _) = allocated(config);
    assert_error(
        &c.channel_bind(&mut h, secs(1), 0x4000, addr(PEER)),
        Method::CHANNEL_BIND,
        403,
    );
    assert!(h.events().is_empty());
}

#[test]
fn stream_allocations_are_never_announced() {
    let mut h = fast_harness(Config::default());
    let mut c = Client::alice();
    c.five_tuple.transport = turn::Transport::Tcp;
    c.allocate_with(&mut h, secs(0), &[Attribute::Lifetime(3600)])
        .0
        .unwrap();
    c.channel_bind(&mut h, secs(1), 0x4000, addr(PEER));
    assert!(usable(h.t0, &h.events()).is_empty());
}

#[test]
fn kernel_traffic_is_counted_and_the_cap_is_handed_out_as_credit() {
    let config = Config {
        bandwidth_per_allocation: 10_000,
        ..Config::default()
    };
    let (mut h, _c, id) = allocated(config);
    let traffic = FastPathTraffic {
        to_peer: Traffic { packets: 3, bytes: 300 },
        to_client: Traffic { packets: 2, bytes: 200 },
    };
    // The whole bucket goes to the kernel: the socket path holds nothing meanwhile.
    assert_eq!(h.server.handle_fast_path_traffic(h.at(0), id, traffic, 0), Some(10_000));
    assert_eq!(
        h.server
            .handle_fast_path_traffic(h.at(0), id, FastPathTraffic::default(), 0),
        Some(0)
    );
    // Half a second later: half the rate refilled, plus what the kernel did not spend.
    assert_eq!(
        h.server
            .handle_fast_path_traffic(h.at_ms(500), id, FastPathTraffic::default(), 1_000),
        Some(6_000)
    );
    let stats = h.server.stats();
    assert_eq!(stats.fast_path_to_peer, Traffic { packets: 3, bytes: 300 });
    assert_eq!(stats.fast_path_to_client, Traffic { packets: 2, bytes: 200 });
    assert_eq!(
        stats.to_peer.udp,
        Traffic::default(),
        "kernel traffic is not socket traffic"
    );

    // No cap: no credit.
    let (mut h, _c, id) = allocated(Config::default());
    assert_eq!(h.server.handle_fast_path_traffic(h.at(1), id, traffic, 0), None);
}

#[test]
fn without_fast_path_events_nothing_is_queued() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.allocate_with(&mut h, secs(0), &[Attribute::Lifetime(3600)])
        .0
        .unwrap();
    c.channel_bind(&mut h, secs(1), 0x4000, addr(PEER));
    assert!(h.events().is_empty());
}
