#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Allocate, Refresh, lifetimes and expiry (RFC 8656 §7), in simulated time.

mod common;

use std::time::Duration;

use common::*;
use stun::{attr, Attribute, Class, Method};
use turn::{BindRequest, ClientAction, Config, Event, Quotas, RelayBinding};

#[test]
fn allocate_answers_relayed_mapped_address_and_default_lifetime() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let (action, reply) = c.request(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(
        action,
        ClientAction::BindRelay(BindRequest {
            five_tuple: c.five_tuple,
            families: [true, false],
            even_port: false,
            reserve_next: false,
            reservation: None,
            reserved_relay: None,
            dont_fragment: false,
        })
    );
    assert!(reply.is_empty());
    let ClientAction::BindRelay(request) = action else {
        unreachable!()
    };
    let (id, reply) = h.bind(h.at(0), &request);
    assert!(id.is_some());
    assert_success(&reply, Method::ALLOCATE, &c.key());
    let msg = parse(&reply);
    assert_eq!(
        attribute(&msg, attr::XOR_RELAYED_ADDRESS),
        Some(Attribute::XorRelayedAddress(addr("192.0.2.1:49152")))
    );
    assert_eq!(
        attribute(&msg, attr::XOR_MAPPED_ADDRESS),
        Some(Attribute::XorMappedAddress(addr("203.0.113.10:50000")))
    );
    assert_eq!(attribute(&msg, attr::LIFETIME), Some(Attribute::Lifetime(600)));
    assert!(matches!(attribute(&msg, attr::SOFTWARE), Some(Attribute::Software(s)) if s.starts_with("Traverse ")));
    assert_eq!(attribute(&msg, attr::ADDRESS_ERROR_CODE), None);
    assert!(h.server.has_allocation(&c.five_tuple));
    assert_eq!(h.server.stats().allocations, 1);
    assert_eq!(h.quotas.total(), 1);
}

#[test]
fn dual_allocation_reports_both_relays_or_the_missing_family() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let (_, reply) = c.allocate_with(&mut h, secs(0), &[Attribute::AdditionalAddressFamily(0x02)]);
    let msg = parse(&reply);
    let relays: Vec<_> = msg
        .attributes()
        .filter(|a| a.ty == attr::XOR_RELAYED_ADDRESS)
        .map(|a| Attribute::decode(a, &msg.transaction_id()).unwrap())
        .collect();
    assert_eq!(
        relays,
        vec![
            Attribute::XorRelayedAddress(addr("192.0.2.1:49152")),
            Attribute::XorRelayedAddress(addr("[2001:db8::1]:49152")),
        ]
    );

    // A server without IPv6 relays still allocates IPv4 and says why IPv6 is missing (RFC 8656 §7.2).
    let mut h = Harness::with(
        Config {
            relay_ipv6: false,
            ..Config::default()
        },
        Quotas::new(10, 0),
    );
    let mut c = Client::alice();
    let (_, reply) = c.allocate_with(&mut h, secs(0), &[Attribute::AdditionalAddressFamily(0x02)]);
    assert_success(&reply, Method::ALLOCATE, &c.key());
    assert_eq!(
        attribute(&parse(&reply), attr::ADDRESS_ERROR_CODE),
        Some(Attribute::AddressErrorCode {
            family: 0x02,
            code: 440,
            reason: "Address Family not Supported"
        })
    );
}

#[test]
fn allocate_lifetime_is_clamped_between_default_and_max() {
    for (requested, granted) in [
        (None, 600),
        (Some(1), 600),
        (Some(599), 600),
        (Some(1000), 1000),
        (Some(3600), 3600),
        (Some(7200), 3600),
        (Some(u32::MAX), 3600),
    ] {
        let mut h = Harness::new();
        let mut c = Client::alice();
        let extra: Vec<_> = requested.map(Attribute::Lifetime).into_iter().collect();
        let (_, reply) = c.allocate_with(&mut h, secs(0), &extra);
        assert_eq!(lifetime(&reply), Some(granted), "requested {requested:?}");
        assert_eq!(
            h.server.poll_timeout(),
            Some(h.at(u64::from(granted))),
            "requested {requested:?}"
        );
    }
}

#[test]
fn allocation_expires_exactly_at_its_lifetime() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    assert_eq!(h.server.poll_timeout(), None);
    let id = c.allocate(&mut h, secs(0));
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));

    h.server.handle_timeout(h.at(600) - Duration::from_nanos(1));
    assert!(h.server.has_allocation(&c.five_tuple));
    assert_eq!(h.events(), vec![]);

    h.server.handle_timeout(h.at(600));
    assert!(!h.server.has_allocation(&c.five_tuple));
    assert_eq!(h.events(), vec![Event::AllocationClosed(id)]);
    assert_eq!(h.server.poll_timeout(), None);
    assert_eq!(h.quotas.total(), 0);
    assert_eq!(h.server.stats().allocations, 0);
}

#[test]
fn an_expired_allocation_is_gone_even_before_the_timer_runs() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c.allocate(&mut h, secs(0));
    // No handle_timeout yet: the allocation is still in the table but its lifetime is over. A Refresh must not
    // revive it (RFC 8656 §7.3: an expired allocation is gone); it is removed on the spot.
    let reply = c.refresh(&mut h, secs(600), Some(600));
    assert_error(&reply, Method::REFRESH, 437);
    assert_eq!(h.events(), vec![Event::AllocationClosed(id)]);
    assert_eq!(h.quotas.total(), 0);

    // Nor does it block a new Allocate on the same 5-tuple.
    let mut h = Harness::new();
    let mut c = Client::alice();
    let first = c.allocate(&mut h, secs(0));
    let second = c.allocate(&mut h, secs(600));
    assert_ne!(first, second);
    assert_eq!(h.events(), vec![Event::AllocationClosed(first)]);
    assert_eq!(h.quotas.total(), 1);
    assert_eq!(h.server.poll_timeout(), Some(h.at(1200)));
}

#[test]
fn poll_timeout_is_the_earliest_allocation_deadline() {
    let mut h = Harness::new();
    let mut a = Client::alice();
    let mut b = Client::new("203.0.113.11:50000", "bob", "builder");
    a.allocate_with(&mut h, secs(0), &[Attribute::Lifetime(1200)]);
    b.allocate_with(&mut h, secs(10), &[Attribute::Lifetime(900)]);
    assert_eq!(h.server.poll_timeout(), Some(h.at(910)));
    h.server.handle_timeout(h.at(910));
    assert!(!h.server.has_allocation(&b.five_tuple));
    assert_eq!(h.server.poll_timeout(), Some(h.at(1200)));
}

#[test]
fn refresh_extends_from_now_and_clamps_to_max() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c.allocate(&mut h, secs(0));

    let reply = c.refresh(&mut h, secs(100), Some(1000));
    assert_success(&reply, Method::REFRESH, &c.key());
    assert_eq!(lifetime(&reply), Some(1000));
    assert_eq!(h.server.poll_timeout(), Some(h.at(1100)));

    let reply = c.refresh(&mut h, secs(200), Some(99_999));
    assert_eq!(lifetime(&reply), Some(3600));
    assert_eq!(h.server.poll_timeout(), Some(h.at(3800)));

    let reply = c.refresh(&mut h, secs(300), None);
    assert_eq!(lifetime(&reply), Some(600));
    assert_eq!(h.server.poll_timeout(), Some(h.at(900)));

    h.server.handle_timeout(h.at(899));
    assert!(h.server.has_allocation(&c.five_tuple));
    h.server.handle_timeout(h.at(900));
    assert_eq!(h.events(), vec![Event::AllocationClosed(id)]);
}

#[test]
fn refresh_below_the_default_lifetime_gets_the_default() {
    // RFC 8656 §7.3: min(requested, max); "if this computed value is greater than the default lifetime, then the
    // desired lifetime is the computed value. Otherwise, the desired lifetime is the default lifetime."
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.allocate(&mut h, secs(0));
    let reply = c.refresh(&mut h, secs(100), Some(30));
    assert_eq!(lifetime(&reply), Some(600));
    assert_eq!(h.server.poll_timeout(), Some(h.at(700)));
}

#[test]
fn refresh_zero_deletes_and_releases() {
    let mut h = Harness::with(Config::default(), Quotas::new(10, 1));
    let mut c = Client::alice();
    let id = c.allocate(&mut h, secs(0));
    assert_eq!(h.events(), vec![]);

    let reply = c.refresh(&mut h, secs(5), Some(0));
    assert_success(&reply, Method::REFRESH, &c.key());
    assert_eq!(lifetime(&reply), Some(0));
    assert!(!h.server.has_allocation(&c.five_tuple));
    assert_eq!(h.events(), vec![Event::AllocationClosed(id)]);
    assert_eq!(h.quotas.total(), 0);
    assert_eq!(h.server.poll_timeout(), None);

    // Gone: the next Refresh is a mismatch, and the 5-tuple may allocate again (the per-user quota was freed).
    let reply = c.refresh(&mut h, secs(6), Some(600));
    assert_error(&reply, Method::REFRESH, 437);
    let again = c.allocate(&mut h, secs(7));
    assert_ne!(again, id, "a reused slot gets a new generation");
}

#[test]
fn refresh_without_allocation_is_437() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let reply = c.refresh(&mut h, secs(0), Some(600));
    assert_error(&reply, Method::REFRESH, 437);
    let reply = c.create_permission(&mut h, secs(0), addr(PEER));
    assert_error(&reply, Method::CREATE_PERMISSION, 437);
    let reply = c.channel_bind(&mut h, secs(0), 0x4000, addr(PEER));
    assert_error(&reply, Method::CHANNEL_BIND, 437);
}

#[test]
fn second_allocate_on_the_same_five_tuple_is_437_and_creates_nothing() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.allocate(&mut h, secs(0));
    let (action, reply) = c.request(&mut h, secs(1), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert!(matches!(action, ClientAction::Reply(_)), "{action:?}");
    assert_error(&reply, Method::ALLOCATE, 437);
    assert!(parse(&reply).verify_integrity(&c.key()));
    assert_eq!(h.server.stats().allocations, 1);
    assert_eq!(h.quotas.total(), 1);
}

/// `c` allocates at 0 s with a request it keeps, to send again: the request and the success answer.
fn allocate_keeping_the_request(h: &mut Harness, c: &mut Client) -> (Vec<u8>, Vec<u8>) {
    c.answer(h, secs(0), Method::ALLOCATE, &[]); // the 401 that yields a nonce
    let tid = c.tid();
    let request = c.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)]);
    let (action, _) = h.send(h.at(0), c.five_tuple, &request);
    let ClientAction::BindRelay(bind) = action else {
        panic!("{action:?}")
    };
    let (_, first) = h.bind(h.at(0), &bind);
    assert_success(&first, Method::ALLOCATE, &c.key());
    (request, first)
}

#[test]
fn retransmitted_allocate_gets_the_identical_answer_without_a_second_allocation() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let (request, first) = allocate_keeping_the_request(&mut h, &mut c);

    for t in [1, 5, 39] {
        let (action, again) = h.send(h.at(t), c.five_tuple, &request);
        assert_eq!(action, ClientAction::Reply(first.len()));
        assert_eq!(again, first, "retransmission at {t} s");
    }
    assert_eq!(h.server.stats().allocations, 1);
    assert_eq!(h.quotas.total(), 1);

    // Past the 40 s retransmission window the same bytes are a new request, hence a mismatch.
    let (_, late) = h.send(h.at(40), c.five_tuple, &request);
    assert_error(&late, Method::ALLOCATE, 437);
}

/// One client's flood of Refreshes cannot push another client's answer out of the response cache: a source holds
/// at most an eighth of it. Before, a retransmitted Allocate whose first answer was lost then got 437.
#[test]
fn a_refresh_flood_from_one_source_leaves_others_answers_cached() {
    let config = Config {
        response_cache_entries: 256,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(1000, 0));
    let mut alice = Client::alice();
    let (request, first) = allocate_keeping_the_request(&mut h, &mut alice);

    let mut bob = Client::new("198.51.100.20:40000", "bob", "builder");
    bob.allocate(&mut h, secs(1));
    for _ in 0..1000 {
        assert_success(&bob.refresh(&mut h, secs(1), Some(600)), Method::REFRESH, &bob.key());
    }
    let (action, again) = h.send(h.at(2), alice.five_tuple, &request);
    assert_eq!(action, ClientAction::Reply(first.len()));
    assert_eq!(again, first, "the retransmitted Allocate is answered as the first was");
    assert_eq!(h.server.stats().allocations, 2);
}

#[test]
fn retransmitted_refresh_zero_is_answered_identically_after_the_deletion() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.allocate(&mut h, secs(0));
    let tid = c.tid();
    let request = c.build(Method::REFRESH, tid, &[Attribute::Lifetime(0)]);
    let (_, first) = h.send(h.at(1), c.five_tuple, &request);
    assert_eq!(lifetime(&first), Some(0));
    let (_, again) = h.send(h.at(2), c.five_tuple, &request);
    assert_eq!(again, first);
    // The same transaction id from another 5-tuple is not a retransmission.
    let other = udp("203.0.113.10:50001");
    let (_, other_reply) = h.send(h.at(2), other, &request);
    assert_error(&other_reply, Method::REFRESH, 437);
}

#[test]
fn allocate_without_requested_transport_is_400_and_tcp_is_442() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let reply = c.answer(&mut h, secs(0), Method::ALLOCATE, &[]);
    assert_error(&reply, Method::ALLOCATE, 400);
    let reply = c.answer(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(6)]);
    assert_error(&reply, Method::ALLOCATE, 442);
    assert_eq!(
        attribute(&parse(&reply), attr::ERROR_CODE),
        Some(Attribute::ErrorCode(stun::ErrorCode {
            code: 442,
            reason: "Unsupported Transport Protocol"
        }))
    );
    assert!(parse(&reply).verify_integrity(&c.key()));
    assert_eq!(h.quotas.total(), 0);
}

#[test]
fn allocate_family_errors_are_400_and_440() {
    let mut h = Harness::with(
        Config {
            relay_ipv6: false,
            ..Config::default()
        },
        Quotas::new(10, 0),
    );
    let mut c = Client::alice();
    let transport = Attribute::RequestedTransport(17);
    let reply = c.answer(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[transport, Attribute::RequestedAddressFamily(0x02)],
    );
    assert_error(&reply, Method::ALLOCATE, 440);
    // A family this server does not know is one it does not support: 440, not 400.
    let reply = c.answer(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[transport, Attribute::RequestedAddressFamily(0x03)],
    );
    assert_error(&reply, Method::ALLOCATE, 440);
    // RFC 8656 §7.2: both family attributes → 400; ADDITIONAL-ADDRESS-FAMILY other than IPv6 → 400.
    let reply = c.answer(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[
            transport,
            Attribute::RequestedAddressFamily(0x01),
            Attribute::AdditionalAddressFamily(0x02),
        ],
    );
    assert_error(&reply, Method::ALLOCATE, 400);
    let reply = c.answer(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[transport, Attribute::AdditionalAddressFamily(0x01)],
    );
    assert_error(&reply, Method::ALLOCATE, 400);
    // RESERVATION-TOKEN with EVEN-PORT or a family → 400; an unknown token → 508.
    let token = Attribute::ReservationToken([1; 8]);
    let reply = c.answer(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[transport, token, Attribute::EvenPort { reserve: false }],
    );
    assert_error(&reply, Method::ALLOCATE, 400);
    let reply = c.answer(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[transport, token, Attribute::RequestedAddressFamily(0x01)],
    );
    assert_error(&reply, Method::ALLOCATE, 400);
    let reply = c.answer(&mut h, secs(0), Method::ALLOCATE, &[transport, token]);
    assert_error(&reply, Method::ALLOCATE, 508);
    assert_eq!(h.quotas.total(), 0);
    assert!(!h.server.has_allocation(&c.five_tuple));
}

#[test]
fn relay_binding_failures_are_440_and_508_and_release_the_quota() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let (action, _) = c.request(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert!(matches!(action, ClientAction::BindRelay(_)));
    assert_eq!(h.quotas.total(), 1);
    // The host has no IPv4 address to relay from.
    let (id, reply) = h.bind_with(h.at(0), c.five_tuple, Some(RelayBinding::default()));
    assert_eq!(id, None);
    assert_error(&reply, Method::ALLOCATE, 440);
    assert!(parse(&reply).verify_integrity(&c.key()));
    assert_eq!(h.quotas.total(), 0);

    let (action, _) = c.request(&mut h, secs(1), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert!(matches!(action, ClientAction::BindRelay(_)));
    // No port could be bound.
    let (id, reply) = h.bind_with(h.at(1), c.five_tuple, None);
    assert_eq!(id, None);
    assert_error(&reply, Method::ALLOCATE, 508);
    assert_eq!(h.quotas.total(), 0);
    assert!(!h.server.has_allocation(&c.five_tuple));
    // A late second report for the same 5-tuple is ignored.
    assert_eq!(h.bind_with(h.at(1), c.five_tuple, None), (None, Vec::new()));
}

#[test]
fn refresh_with_another_family_is_443() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.allocate(&mut h, secs(0));
    let reply = c.answer(
        &mut h,
        secs(1),
        Method::REFRESH,
        &[Attribute::Lifetime(600), Attribute::RequestedAddressFamily(0x02)],
    );
    assert_error(&reply, Method::REFRESH, 443);
    let reply = c.answer(
        &mut h,
        secs(1),
        Method::REFRESH,
        &[Attribute::Lifetime(600), Attribute::RequestedAddressFamily(0x03)],
    );
    assert_error(&reply, Method::REFRESH, 443);
    let reply = c.answer(
        &mut h,
        secs(1),
        Method::REFRESH,
        &[Attribute::Lifetime(600), Attribute::RequestedAddressFamily(0x01)],
    );
    assert_success(&reply, Method::REFRESH, &c.key());
}

#[test]
fn requests_from_another_user_on_the_allocation_five_tuple_are_441() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    alice.allocate(&mut h, secs(0));
    let mut bob = Client::new("203.0.113.10:50000", "bob", "builder");
    for (method, attrs) in [
        (Method::REFRESH, vec![Attribute::Lifetime(0)]),
        (Method::CREATE_PERMISSION, vec![Attribute::XorPeerAddress(addr(PEER))]),
        (
            Method::CHANNEL_BIND,
            vec![Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr(PEER))],
        ),
    ] {
        let reply = bob.answer(&mut h, secs(1), method, &attrs);
        assert_error(&reply, method, 441);
        assert!(parse(&reply).verify_integrity(&bob.key()));
    }
    assert!(h.server.has_allocation(&alice.five_tuple));
}

#[test]
fn connection_close_removes_a_stream_allocation() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.five_tuple.transport = turn::Transport::Tcp;
    let id = c.allocate(&mut h, secs(0));
    h.server.handle_connection_closed(c.five_tuple);
    assert!(!h.server.has_allocation(&c.five_tuple));
    assert_eq!(h.events(), vec![Event::AllocationClosed(id)]);
    assert_eq!(h.quotas.total(), 0);
}

#[test]
fn binding_request_gets_only_xor_mapped_address() {
    let mut h = Harness::new();
    let c = Client::alice();
    let tid = c.clone().tid();
    let request = c.build(Method::BINDING, tid, &[]);
    let (_, reply) = h.send(h.at(0), c.five_tuple, &request);
    let msg = parse(&reply);
    assert_eq!((msg.class(), msg.method()), (Class::Success, Method::BINDING));
    assert_eq!(msg.transaction_id(), tid);
    assert_eq!(attribute_types(&msg), vec![attr::XOR_MAPPED_ADDRESS, attr::FINGERPRINT]);
    assert_eq!(
        attribute(&msg, attr::XOR_MAPPED_ADDRESS),
        Some(Attribute::XorMappedAddress(c.five_tuple.client))
    );
}

#[test]
fn even_port_reservation_is_redeemed_once_or_released_after_30_s() {
    let mut h = Harness::new();
    let mut a = Client::alice();
    let (action, _) = a.request(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::EvenPort { reserve: true }],
    );
    let ClientAction::BindRelay(request) = action else {
        panic!("{action:?}")
    };
    assert!(request.even_port && request.reserve_next);
    let reserved = addr("192.0.2.1:50001");
    let binding = RelayBinding {
        relays: [Some(addr("192.0.2.1:50000")), None],
        reserved: Some(reserved),
    };
    let (_, reply) = h.bind_with(h.at(0), a.five_tuple, Some(binding));
    assert_success(&reply, Method::ALLOCATE, &a.key());
    let Some(Attribute::ReservationToken(token)) = attribute(&parse(&reply), attr::RESERVATION_TOKEN) else {
        panic!("no RESERVATION-TOKEN")
    };
    // The reservation's 30 s is the next deadline, before the allocation's 600 s.
    assert_eq!(h.server.poll_timeout(), Some(h.at(30)));

    let mut b = Client::new("203.0.113.11:50000", "bob", "builder");
    let redeem = [Attribute::RequestedTransport(17), Attribute::ReservationToken(token)];
    let (action, _) = b.request(&mut h, secs(10), Method::ALLOCATE, &redeem);
    let ClientAction::BindRelay(request) = action else {
        panic!("{action:?}")
    };
    assert_eq!(
        (request.reservation, request.reserved_relay),
        (Some(token), Some(reserved))
    );
    assert_eq!(request.families, [true, false]);
    h.bind(h.at(10), &request);
    // Redeemed: a second use is 508.
    let mut c = Client::new("203.0.113.12:50000", "bob", "builder");
    assert_error(
        &c.answer(&mut h, secs(11), Method::ALLOCATE, &redeem),
        Method::ALLOCATE,
        508,
    );
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));

    // An unredeemed token is released at 30 s.
    let mut h = Harness::new();
    let mut a = Client::alice();
    let (action, _) = a.request(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::EvenPort { reserve: true }],
    );
    assert!(matches!(action, ClientAction::BindRelay(_)));
    let (_, reply) = h.bind_with(h.at(0), a.five_tuple, Some(binding));
    assert!(attribute(&parse(&reply), attr::RESERVATION_TOKEN).is_some());
    h.server.handle_timeout(h.at(29));
    assert_eq!(h.events(), vec![]);
    h.server.handle_timeout(h.at(30));
    // The caller is told which held socket to close.
    assert_eq!(h.events(), vec![Event::ReservationReleased(reserved)]);
}

/// A token redeemed by an Allocate that the quota then refuses: the held socket is released at once, not leaked.
#[test]
fn a_redeemed_reservation_refused_by_the_quota_is_released() {
    let mut h = Harness::with(Config::default(), Quotas::new(1, 0));
    let mut a = Client::alice();
    let (action, _) = a.request(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::EvenPort { reserve: true }],
    );
    assert!(matches!(action, ClientAction::BindRelay(_)));
    let reserved = addr("192.0.2.1:50001");
    let binding = RelayBinding {
        relays: [Some(addr("192.0.2.1:50000")), None],
        reserved: Some(reserved),
    };
    let (_, reply) = h.bind_with(h.at(0), a.five_tuple, Some(binding));
    let Some(Attribute::ReservationToken(token)) = attribute(&parse(&reply), attr::RESERVATION_TOKEN) else {
        panic!("no RESERVATION-TOKEN")
    };
    // The server-wide quota of one is taken: the redeeming Allocate gets 508, and the held socket is released.
    let mut b = Client::new("203.0.113.11:50000", "bob", "builder");
    let reply = b.answer(
        &mut h,
        secs(1),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::ReservationToken(token)],
    );
    assert_error(&reply, Method::ALLOCATE, 508);
    assert_eq!(h.events(), vec![Event::ReservationReleased(reserved)]);
}

/// Allocate with EVEN-PORT R from `client`, bound with a held port+1: the answer.
fn reserve(h: &mut Harness, client: &str, port: u16, at: u64) -> Vec<u8> {
    let mut c = Client::new(client, "alice", "wonderland");
    let (action, _) = c.request(
        h,
        secs(at),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::EvenPort { reserve: true }],
    );
    let ClientAction::BindRelay(_) = action else {
        panic!("{action:?}")
    };
    let binding = RelayBinding {
        relays: [Some(addr(&format!("192.0.2.1:{port}"))), None],
        reserved: Some(addr(&format!("192.0.2.1:{}", port + 1))),
    };
    let (id, reply) = h.bind_with(h.at(at), c.five_tuple, Some(binding));
    assert_eq!(id.is_some(), parse(&reply).class() == Class::Success);
    reply
}

/// A reservation outlives its allocation (a Refresh to 0 frees the quota, not the held socket): reservations are
/// counted to their source and server-wide, so that a loop of Allocate with EVEN-PORT and Refresh 0 cannot hold
/// sockets without end.
#[test]
fn even_port_reservations_are_budgeted_per_source_and_server_wide() {
    let mut h = Harness::new();
    let per_source = turn::MAX_RESERVATIONS_PER_SOURCE;
    for i in 0..per_source {
        let reply = reserve(
            &mut h,
            &format!("203.0.113.10:{}", 40_000 + i),
            50_000 + 2 * i as u16,
            0,
        );
        assert!(
            attribute(&parse(&reply), attr::RESERVATION_TOKEN).is_some(),
            "reservation {i}"
        );
    }
    // One more from the same source: 508, no allocation, the quota given back.
    let allocations = h.server.stats().allocations;
    let reply = reserve(&mut h, "203.0.113.10:41000", 52_000, 1);
    assert_error(&reply, Method::ALLOCATE, 508);
    assert_eq!(h.server.stats().allocations, allocations);
    assert_eq!(h.server.stats().quota_refusals.reservations, 1);
    // Another source still may.
    let reply = reserve(&mut h, "203.0.113.20:40000", 53_000, 1);
    assert!(attribute(&parse(&reply), attr::RESERVATION_TOKEN).is_some());
    // Once the first ones expire (30 s), the first source may again.
    h.server.handle_timeout(h.at(31));
    let released = h.events();
    assert_eq!(released.len(), per_source + 1, "{released:?}");
    let reply = reserve(&mut h, "203.0.113.10:41001", 54_000, 31);
    assert!(attribute(&parse(&reply), attr::RESERVATION_TOKEN).is_some());

    // Server-wide: sources of 4 each until the limit, then 508 for a fresh source.
    let mut h = Harness::new();
    let max = turn::MAX_RESERVATIONS;
    for i in 0..max {
        let client = format!("198.51.100.{}:{}", 1 + i / per_source, 40_000 + i % per_source);
        let reply = reserve(&mut h, &client, 10_000 + 2 * i as u16, 0);
        assert!(
            attribute(&parse(&reply), attr::RESERVATION_TOKEN).is_some(),
            "reservation {i}"
        );
    }
    assert_error(&reserve(&mut h, "203.0.113.30:40000", 30_000, 0), Method::ALLOCATE, 508);
}
