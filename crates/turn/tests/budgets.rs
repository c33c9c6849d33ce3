#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Budgets a stranger cannot exceed (issue 7): allocations per source, channels per allocation, the reflection guard
//! shared by workers with proven sources, and the server's own addresses judged live.

mod common;

use std::sync::Arc;

use common::*;
use stun::{Attribute, Class, Method};
use turn::{ClientAction, Config, OwnAddresses, Quotas, ReflectionGuard};

#[test]
fn allocations_per_source_are_capped_with_486_and_ipv6_counts_per_64() {
    let mut h = Harness::with(Config::default(), Quotas::new(100, 0).with_per_source(3));
    for port in 0..3 {
        Client::new(&format!("203.0.113.10:{}", 50000 + port), "alice", "wonderland").allocate(&mut h, secs(0));
    }
    let mut fourth = Client::new("203.0.113.10:50009", "bob", "builder");
    let reply = fourth.answer(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_error(&reply, Method::ALLOCATE, 486);
    // The caller is told which source, to say so in the log (an office or a carrier NAT looks like this).
    let source = turn::Source::of("203.0.113.10".parse().unwrap());
    assert!(
        h.events().contains(&turn::Event::SourceQuotaReached(source)),
        "{:?}",
        h.events()
    );
    // Another source is untouched.
    Client::new("203.0.113.11:50000", "bob", "builder").allocate(&mut h, secs(0));
    // Three IPv6 addresses of one /64 are one source.
    let v6 = |host: &str| {
        let mut c = Client::new("203.0.113.12:1", "alice", "wonderland");
        c.five_tuple.client = addr(&format!("[2001:db8:7:7::{host}]:40000"));
        c
    };
    for host in ["1", "2", "3"] {
        v6(host).allocate(&mut h, secs(0));
    }
    let reply = v6("4").answer(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_error(&reply, Method::ALLOCATE, 486);
    assert_eq!(h.quotas.total(), 7);
}

/// New allocations a second per source: a burst of 5 s' worth (at 2 a second, 10), then 486, however soon each was
/// given back (Allocate, Refresh to 0, again: within every count quota). Another source is served, and half a
/// second later the first has one more.
#[test]
fn new_allocations_are_rate_limited_per_source_however_soon_they_end() {
    let mut h = Harness::with(Config::default(), Quotas::new(100, 0).with_rate_per_source(2));
    for port in 0..10 {
        let mut c = Client::new(&format!("203.0.113.20:{}", 50000 + port), "alice", "wonderland");
        c.allocate(&mut h, secs(0));
        assert_eq!(parse(&c.refresh(&mut h, secs(0), Some(0))).class(), Class::Success);
    }
    assert_eq!(h.quotas.total(), 0, "each was given back");
    let mut eleventh = Client::new("203.0.113.20:50010", "alice", "wonderland");
    let reply = eleventh.answer(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_error(&reply, Method::ALLOCATE, 486);
    assert_eq!(h.server.stats().quota_refusals.rate, 1);
    Client::new("203.0.113.21:50000", "bob", "builder").allocate(&mut h, secs(0));
    Client::new("203.0.113.20:50011", "alice", "wonderland").allocate(&mut h, std::time::Duration::from_millis(500));
}

#[test]
fn channels_per_allocation_are_capped() {
    let config = Config {
        max_channels_per_allocation: 4,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(10, 0));
    let mut alice = Client::alice();
    alice.allocate(&mut h, secs(0));
    for i in 0..4u16 {
        let reply = alice.channel_bind(&mut h, secs(1), 0x4000 + i, addr(&format!("198.51.100.7:{}", 9000 + i)));
        assert_eq!(parse(&reply).class(), Class::Success);
    }
    let reply = alice.channel_bind(&mut h, secs(1), 0x4010, addr("198.51.100.7:9999"));
    assert_error(&reply, Method::CHANNEL_BIND, 508);
    // Refreshing an existing binding is not a new one.
    let reply = alice.channel_bind(&mut h, secs(2), 0x4000, addr("198.51.100.7:9000"));
    assert_eq!(parse(&reply).class(), Class::Success);
}

fn bare_allocate(client: &mut Client) -> Vec<u8> {
    let tid = client.tid();
    client.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)])
}

/// Two workers, one budget: a spoofer spreading its source ports over every worker gets the budget once.
#[test]
fn reflection_budget_is_one_per_source_across_workers() {
    let config = Config {
        reflection_bytes_per_second: 1000,
        ..Config::default()
    };
    let guard = Arc::new(ReflectionGuard::default());
    let quotas = Arc::new(Quotas::new(1000, 0));
    let mut workers: Vec<Harness> = (0..8)
        .map(|_| {
            let guard = guard.clone();
            Harness::with_server(config.clone(), quotas.clone(), move |s| {
                s.with_shared_reflection_guard(guard)
            })
        })
        .collect();
    // One instant for every worker (the latest harness start): no refill between the requests, whatever the
    // machine's speed while the harnesses were built.
    let now = workers.iter().map(|w| w.t0).max().unwrap();
    let mut answered_bytes = 0usize;
    let mut sent_bytes = 0usize;
    for port in 0..2000u16 {
        let worker = &mut workers[usize::from(port) % 8];
        let mut spoofed = Client::new(&format!("203.0.113.5:{}", 1024 + port), "x", "y");
        let request = bare_allocate(&mut spoofed);
        let (action, reply) = worker.send(now, spoofed.five_tuple, &request);
        if let ClientAction::Reply(_) = action {
            answered_bytes += reply.len();
            sent_bytes += request.len();
        }
    }
    let excess = answered_bytes - sent_bytes;
    assert!(
        excess <= 2000,
        "excess {excess} bytes within one burst of 2000, not eight"
    );
    assert!(excess > 1000, "the burst was used: {excess}");
}

/// Many real clients behind one address: once one of them authenticated (it answered our nonce, so the address
/// receives what it is sent), the 401s to the others' first Allocates are not throttled like a spoofer's.
#[test]
fn a_proven_source_sets_up_thousands_of_allocations_without_loss() {
    let config = Config {
        reflection_bytes_per_second: 16 * 1024,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(20_000, 0));
    let n = 5000u32;
    let mut created = 0;
    for i in 0..n {
        // 5 000 allocations within 0.5 s, from one address.
        let at = std::time::Duration::from_micros(u64::from(i) * 100);
        let mut c = Client::new(&format!("203.0.113.20:{}", 10_000 + i), "alice", "wonderland");
        let (action, _) = c.request(&mut h, at, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        if let ClientAction::BindRelay(request) = action {
            let (id, _) = h.bind(h.t0 + at, &request);
            created += usize::from(id.is_some());
        }
    }
    assert_eq!(created, n as usize, "every allocation set up");
    // An unproven address still gets only the plain budget.
    let mut dropped = 0;
    for port in 0..1000u16 {
        let mut spoofed = Client::new(&format!("203.0.113.21:{}", 1024 + port), "x", "y");
        let request = bare_allocate(&mut spoofed);
        if h.send(h.t0, spoofed.five_tuple, &request).0 == ClientAction::Drop {
            dropped += 1;
        }
    }
    assert!(
        dropped > 500,
        "a spoofed source is still throttled ({dropped} of 1000 dropped)"
    );
}

fn with_own(own: &Arc<OwnAddresses>) -> Harness {
    let own = own.clone();
    Harness::with_server(Config::default(), Arc::new(Quotas::new(100, 0)), move |s| {
        s.with_own_addresses(own)
    })
}

/// On a server whose relay addresses are private (a LAN deployment), relay-to-relay works too: exactly a live relay
/// of this server passes the reserved ranges, nothing else of them does, and the operator's deny list still wins.
#[test]
fn a_private_live_relay_is_a_peer_but_nothing_else_of_its_range() {
    let own = Arc::new(OwnAddresses::new([addr("10.0.0.1:0").ip()]));
    for deny in [false, true] {
        let own = own.clone();
        let mut config = Config::default();
        if deny {
            config.policy.deny.push("10.0.0.0/8".parse().unwrap());
        }
        let mut h = Harness::with_server(config, Arc::new(Quotas::new(100, 0)), move |s| {
            s.with_own_addresses(own)
        });
        h.relay_v4 = addr("10.0.0.1:0").ip();
        let mut alice = Client::alice();
        alice.allocate(&mut h, secs(0));
        let mut bob = Client::new("203.0.113.30:40000", "bob", "builder");
        bob.allocate(&mut h, secs(0));
        let bob_relay = addr("10.0.0.1:49154");
        let answer = alice.create_permission(&mut h, secs(1), bob_relay);
        match deny {
            false => assert_eq!(
                parse(&answer).class(),
                Class::Success,
                "relay-to-relay on a private address"
            ),
            true => assert_error(&answer, Method::CREATE_PERMISSION, 403),
        }
        for target in ["10.0.0.1:49160", "10.0.0.2:49154", "10.0.0.1:3478"] {
            assert_error(
                &alice.create_permission(&mut h, secs(1), addr(target)),
                Method::CREATE_PERMISSION,
                403,
            );
        }
    }
}

/// Relay-to-relay works only to a live relay of this server; its listeners and other ports of its address stay
/// out of reach, and an address the host gains later is protected within a timeout.
#[test]
fn own_addresses_pass_only_as_live_relays_and_are_tracked_live() {
    // The harness binds relays on 192.0.2.1 (see `Harness::bind`), the server's own address.
    let own = Arc::new(OwnAddresses::new([addr("192.0.2.1:0").ip()]));
    let mut h = with_own(&own);
    let mut alice = Client::alice();
    alice.allocate(&mut h, secs(0));
    let mut bob = Client::new("203.0.113.30:40000", "bob", "builder");
    bob.allocate(&mut h, secs(0));
    // Bob's relay is 192.0.2.1:49154 (the harness hands out 49152, 49154, …).
    let bob_relay = addr("192.0.2.1:49154");
    assert_eq!(
        parse(&alice.create_permission(&mut h, secs(1), bob_relay)).class(),
        Class::Success
    );
    let (action, _) = h.send(h.at(1), alice.five_tuple, &alice.send_indication(bob_relay, b"hi"));
    assert!(
        matches!(action, ClientAction::Relay { .. }),
        "relay-to-relay: {action:?}"
    );
    // The STUN listener, a port of the relay range without an allocation, and another host port: 403 / dropped.
    for target in ["192.0.2.1:3478", "192.0.2.1:49160", "192.0.2.1:22"] {
        assert_error(
            &alice.create_permission(&mut h, secs(1), addr(target)),
            Method::CREATE_PERMISSION,
            403,
        );
        let (action, _) = h.send(h.at(1), alice.five_tuple, &alice.send_indication(addr(target), b"x"));
        assert_eq!(action, ClientAction::Drop, "{target}");
    }
    assert_error(
        &alice.channel_bind(&mut h, secs(1), 0x4001, addr("192.0.2.1:3478")),
        Method::CHANNEL_BIND,
        403,
    );
    // A channel to Bob's relay, as a client whose peer is on the same server binds it.
    assert_eq!(
        parse(&alice.channel_bind(&mut h, secs(1), 0x4002, bob_relay)).class(),
        Class::Success
    );
    let (action, _) = h.send(h.at(1), alice.five_tuple, &channel_data(0x4002, b"hi"));
    assert!(matches!(action, ClientAction::Relay { .. }), "{action:?}");
    // When Bob's allocation ends, his relay address is no longer reachable: not by Send, and not through the
    // channel bound while it lived (its port may go to a host process next).
    assert_eq!(parse(&bob.refresh(&mut h, secs(2), Some(0))).class(), Class::Success);
    let (action, _) = h.send(h.at(2), alice.five_tuple, &alice.send_indication(bob_relay, b"x"));
    assert_eq!(action, ClientAction::Drop);
    let (action, _) = h.send(h.at(2), alice.five_tuple, &channel_data(0x4002, b"x"));
    assert_eq!(action, ClientAction::Drop, "the channel to an ended relay");
    // The next timeout unbinds it (and would withdraw the fast path's copy): the channel number is free again.
    h.server.handle_timeout(h.at(2));
    let public = addr("198.51.100.9:3478");
    assert_eq!(
        parse(&alice.create_permission(&mut h, secs(2), public)).class(),
        Class::Success
    );
    assert_eq!(
        parse(&alice.channel_bind(&mut h, secs(2), 0x4002, public)).class(),
        Class::Success,
        "a channel bound to an ended relay is unbound"
    );

    // A public peer the host gains later: the permission installed before is dropped at the next timeout, and new
    // ones are refused.
    let later = addr("198.51.100.77:3478");
    assert_eq!(
        parse(&alice.create_permission(&mut h, secs(3), later)).class(),
        Class::Success
    );
    let (action, _) = h.send(h.at(3), alice.five_tuple, &alice.send_indication(later, b"x"));
    assert!(matches!(action, ClientAction::Relay { .. }));
    assert!(own.set_host([addr("192.0.2.1:0").ip(), later.ip()]));
    h.server.handle_timeout(h.at(4));
    let (action, _) = h.send(h.at(4), alice.five_tuple, &alice.send_indication(later, b"x"));
    assert_eq!(
        action,
        ClientAction::Drop,
        "the permission to a newly own address is gone"
    );
    assert_error(
        &alice.create_permission(&mut h, secs(4), later),
        Method::CREATE_PERMISSION,
        403,
    );
}

/// After a load ends its tables give memory back, and an id from before can never name an allocation after.
#[test]
fn tables_shrink_after_a_load_and_old_ids_stay_dead() {
    let mut h = Harness::with(Config::default(), Quotas::new(10_000, 0));
    let mut ids = Vec::new();
    for port in 0..2000u16 {
        let mut c = Client::new(&format!("203.0.113.50:{}", 10_000 + port), "alice", "wonderland");
        ids.push((c.allocate(&mut h, secs(0)), c));
    }
    for (_, c) in ids.iter_mut() {
        assert_eq!(parse(&c.refresh(&mut h, secs(1), Some(0))).class(), Class::Success);
    }
    h.server.handle_timeout(h.at(2));
    let mut fresh = Client::new("203.0.113.51:10000", "bob", "builder");
    let new_id = fresh.allocate(&mut h, secs(3));
    // Every old id is dead: data from a peer for it goes nowhere, while the new allocation is served.
    let mut buf = vec![0u8; turn::PEER_HEADROOM + 8 + turn::PEER_TAILROOM];
    for (old, _) in &ids {
        assert_ne!(*old, new_id);
        assert!(h.server.handle_peer(h.at(3), *old, addr(PEER), &mut buf, 4).is_none());
    }
    assert_eq!(h.server.stats().allocations, 1);
}
