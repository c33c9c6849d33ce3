#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Allocation quotas (RFC 8656 §7.2): per user 486, server-wide 508; released on deletion, expiry and close.

mod common;

use std::sync::Arc;

use common::*;
use stun::{attr, Attribute, Method};
use turn::{Alternate, Config, Event, Quotas, Transport};

fn allocate_error(h: &mut Harness, c: &mut Client, at: u64) -> Vec<u8> {
    c.answer(h, secs(at), Method::ALLOCATE, &[Attribute::RequestedTransport(17)])
}

#[test]
fn per_user_quota_is_486_and_freed_by_refresh_zero_and_expiry() {
    let mut h = Harness::with(Config::default(), Quotas::new(100, 2));
    let mut a1 = Client::alice();
    let mut a2 = Client::new("203.0.113.10:50001", "alice", "wonderland");
    let mut a3 = Client::new("203.0.113.10:50002", "alice", "wonderland");
    let mut bob = Client::new("203.0.113.11:50000", "bob", "builder");
    a1.allocate(&mut h, secs(0));
    let a2_id = a2
        .allocate_with(&mut h, secs(10), &[Attribute::Lifetime(1000)])
        .0
        .unwrap();

    let reply = allocate_error(&mut h, &mut a3, 20);
    assert_error(&reply, Method::ALLOCATE, 486);
    assert_eq!(
        attribute(&parse(&reply), attr::ERROR_CODE),
        Some(Attribute::ErrorCode(stun::ErrorCode {
            code: 486,
            reason: "Allocation Quota Reached"
        }))
    );
    assert!(parse(&reply).verify_integrity(&a3.key()));
    // Another user is not affected.
    bob.allocate(&mut h, secs(20));
    assert_eq!(h.quotas.total(), 3);

    // Deleting one of alice's frees a slot for her.
    a1.refresh(&mut h, secs(30), Some(0));
    a3.allocate(&mut h, secs(30));
    assert_error(&allocate_error(&mut h, &mut a1, 31), Method::ALLOCATE, 486);

    // So does expiry, once handle_timeout has run.
    h.server.handle_timeout(h.at(1010));
    assert!(h.events().contains(&Event::AllocationClosed(a2_id)));
    a1.allocate(&mut h, secs(1010));
}

#[test]
fn server_wide_quota_is_508_and_freed_by_expiry() {
    // RFC 8656 §18: 486 is "no more allocations using this username"; a server-wide capacity limit is 508.
    let mut h = Harness::with(Config::default(), Quotas::new(2, 0));
    let mut a = Client::alice();
    let mut b = Client::new("203.0.113.11:50000", "bob", "builder");
    let mut c = Client::new("203.0.113.12:50000", "bob", "builder");
    a.allocate(&mut h, secs(0));
    b.allocate_with(&mut h, secs(5), &[Attribute::Lifetime(900)]);
    let reply = allocate_error(&mut h, &mut c, 6);
    assert_error(&reply, Method::ALLOCATE, 508);
    assert_eq!(h.quotas.total(), 2);
    assert!(!h.server.has_allocation(&c.five_tuple));

    h.server.handle_timeout(h.at(600));
    assert_eq!(h.quotas.total(), 1);
    c.allocate(&mut h, secs(600));
    assert_eq!(h.quotas.total(), 2);
}

#[test]
fn quotas_are_shared_between_workers() {
    let quotas = Arc::new(Quotas::new(10, 1));
    let mut w1 = Harness::with_shared(Config::default(), quotas.clone());
    let mut w2 = Harness::with_shared(Config::default(), quotas.clone());
    let mut a1 = Client::alice();
    let mut a2 = Client::new("203.0.113.10:50001", "alice", "wonderland");
    a1.allocate(&mut w1, secs(0));
    assert_error(&allocate_error(&mut w2, &mut a2, 0), Method::ALLOCATE, 486);
    a1.refresh(&mut w1, secs(1), Some(0));
    assert_eq!(quotas.total(), 0);
    a2.allocate(&mut w2, secs(1));
    assert_eq!(quotas.total(), 1);
}

#[test]
fn a_draining_server_redirects_new_allocations_and_keeps_existing_ones() {
    // docs/scaling.md: a drain refuses new allocations — 300 Try Alternate with ALTERNATE-SERVER (RFC 8656 §7.2,
    // RFC 8489 §14.15) naming another node of the same transport and family, else 508 — and keeps the others.
    let quotas = Arc::new(Quotas::new(10, 0));
    let mut h = Harness::with_shared(Config::default(), quotas.clone());
    let mut a = Client::alice();
    let mut b = Client::new("203.0.113.11:50000", "bob", "builder");
    let mut c = Client::new("203.0.113.12:50000", "bob", "builder");
    a.allocate(&mut h, secs(0));
    let elsewhere: std::net::SocketAddr = "198.51.100.7:3478".parse().unwrap();
    quotas.drain(vec![
        Alternate {
            transport: Transport::Tcp,
            addr: "198.51.100.8:3478".parse().unwrap(),
        },
        Alternate {
            transport: Transport::Udp,
            addr: "[2001:db8::7]:3478".parse().unwrap(),
        },
        Alternate {
            transport: Transport::Udp,
            addr: elsewhere,
        },
    ]);

    let reply = allocate_error(&mut h, &mut b, 1);
    assert_error(&reply, Method::ALLOCATE, 300);
    let answer = parse(&reply);
    assert_eq!(
        attribute(&answer, attr::ALTERNATE_SERVER),
        Some(Attribute::AlternateServer(elsewhere))
    );
    assert!(answer.verify_integrity(&b.key()), "the redirect is authenticated");
    assert!(!h.server.has_allocation(&b.five_tuple));
    assert_eq!(quotas.total(), 1, "nothing charged for a refused Allocate");

    // The existing allocation is refreshed as before.
    a.refresh(&mut h, secs(2), Some(600));

    // No alternate of this transport and family: 508.
    quotas.drain(Vec::new());
    assert_error(&allocate_error(&mut h, &mut c, 3), Method::ALLOCATE, 508);
    assert_eq!(h.server.stats().error_responses.get(Some(300)), 1);
}
