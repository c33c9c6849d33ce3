#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Permissions (RFC 8656 §9), Send/Data indications (§11) and channels (§12), in simulated time.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use stun::{attr, Attribute, Class, Message, Method};
use turn::{AllocationId, ClientAction, Config, PeerForward, Quotas, Transport, PEER_HEADROOM, PEER_TAILROOM};

/// A relay-socket receive buffer with `payload` at `PEER_HEADROOM`, as the caller lays it out.
fn peer_buf(payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0xEE; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
    buf
}

fn from_peer(h: &mut Harness, secs: u64, id: AllocationId, peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mut buf = peer_buf(payload);
    let now = h.at(secs);
    let forward = h.server.handle_peer(now, id, peer, &mut buf, payload.len())?;
    Some(buf[forward.range].to_vec())
}

fn allocated() -> (Harness, Client, AllocationId) {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c
        .allocate_with(&mut h, secs(0), &[Attribute::Lifetime(3600)])
        .0
        .unwrap();
    (h, c, id)
}

#[test]
fn send_indication_needs_a_permission_and_permissions_last_300_s() {
    let (mut h, mut c, id) = allocated();
    let peer = addr(PEER);
    let send = c.send_indication(peer, b"hello");
    assert_eq!(h.send(h.at(0), c.five_tuple, &send).0, ClientAction::Drop);

    let reply = c.create_permission(&mut h, secs(10), peer);
    assert_success(&reply, Method::CREATE_PERMISSION, &c.key());
    assert_eq!(
        attribute_types(&parse(&reply)),
        vec![attr::SOFTWARE, attr::MESSAGE_INTEGRITY, attr::FINGERPRINT]
    );

    // The payload range points at the DATA value inside the Send indication.
    let (action, _) = h.send(h.at(10), c.five_tuple, &send);
    let ClientAction::Relay {
        allocation,
        peer: to,
        payload,
    } = action
    else {
        panic!("{action:?}")
    };
    assert_eq!((allocation, to), (id, peer));
    assert_eq!(&send[payload.clone()], b"hello");
    assert_eq!(payload, 20 + 12 + 4..20 + 12 + 4 + 5);

    // The permission is per IP: another port of the same peer passes too.
    let other_port = c.send_indication(addr("198.51.100.7:1"), b"x");
    assert!(matches!(
        h.send(h.at(309), c.five_tuple, &other_port).0,
        ClientAction::Relay { .. }
    ));
    // RFC 8656 §9: 300 s, not a nanosecond more, even before handle_timeout runs.
    let just_before = h.at(310) - Duration::from_nanos(1);
    assert!(matches!(
        h.server.handle_client(just_before, c.five_tuple, &send, &mut [0; 1500]),
        ClientAction::Relay { .. }
    ));
    assert_eq!(h.send(h.at(310), c.five_tuple, &send).0, ClientAction::Drop);
    h.server.handle_timeout(h.at(310));
    assert_eq!(h.send(h.at(310), c.five_tuple, &send).0, ClientAction::Drop);
    assert_eq!(from_peer(&mut h, 310, id, peer, b"late"), None);
}

#[test]
fn peer_data_without_permission_is_dropped_and_with_one_is_a_data_indication() {
    let (mut h, mut c, id) = allocated();
    let peer = addr(PEER);
    assert_eq!(from_peer(&mut h, 1, id, peer, b"nope"), None);
    assert_eq!(h.server.stats().dropped_packets, 1);

    c.create_permission(&mut h, secs(1), peer);
    let mut buf = peer_buf(b"payload");
    let forward = h.server.handle_peer(h.at(2), id, peer, &mut buf, 7).unwrap();
    // IPv4 peer: 20 header + 12 XOR-PEER-ADDRESS + 4 DATA header, written backwards from the payload; 1 byte padding.
    assert_eq!(
        forward,
        PeerForward {
            five_tuple: c.five_tuple,
            range: PEER_HEADROOM - 36..PEER_HEADROOM + 8,
        }
    );
    let msg = Message::parse(&buf[forward.range]).unwrap();
    assert_eq!((msg.class(), msg.method()), (Class::Indication, Method::DATA));
    assert_eq!(
        attribute(&msg, attr::XOR_PEER_ADDRESS),
        Some(Attribute::XorPeerAddress(peer))
    );
    assert_eq!(attribute(&msg, attr::DATA), Some(Attribute::Data(b"payload")));
    assert_eq!(attribute_types(&msg), vec![attr::XOR_PEER_ADDRESS, attr::DATA]);
    assert_eq!(buf[PEER_HEADROOM + 7], 0, "padding zeroed");

    // Another peer IP, or an unknown allocation, is dropped.
    assert_eq!(from_peer(&mut h, 2, id, addr("198.51.100.8:9000"), b"x"), None);
    c.refresh(&mut h, secs(3), Some(0));
    assert_eq!(from_peer(&mut h, 3, id, peer, b"x"), None);
}

/// RFC 8656 §9: with a bandwidth cap per allocation, what a peer without permission sends is discarded without
/// being charged to the cap. Before, a stranger spraying the relay port used up the allowance, and the permitted
/// peer's media was dropped with it.
#[test]
fn data_from_a_peer_without_permission_does_not_use_up_the_bandwidth_cap() {
    let config = Config {
        bandwidth_per_allocation: 10_000,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(1000, 0));
    let mut c = Client::alice();
    let id = c.allocate_with(&mut h, secs(0), &[]).0.unwrap();
    let peer = addr(PEER);
    c.create_permission(&mut h, secs(1), peer);
    let stranger = addr("198.51.100.99:4000");
    for _ in 0..20 {
        assert_eq!(from_peer(&mut h, 1, id, stranger, &[0; 1000]), None);
    }
    assert!(
        from_peer(&mut h, 1, id, peer, &[0; 1000]).is_some(),
        "the permitted peer's datagram is relayed within the cap"
    );
}

/// RFC 8656 §11.2: DONT-FRAGMENT in a Send indication is honoured only where the relay sockets set DF (the
/// Allocate asked for it); elsewhere it is an attribute the server cannot act on, and the indication is dropped.
/// Before, it was relayed with DF clear, so a path-MTU probe passed fragmented, as if it fit.
#[test]
fn a_send_indication_with_dont_fragment_passes_only_where_the_relay_sets_df() {
    let send_df = |c: &mut Client, peer: SocketAddr| {
        let tid = c.tid();
        let mut buf = vec![0u8; 1500];
        let mut w = stun::MessageWriter::new(&mut buf, Method::SEND, Class::Indication, tid).unwrap();
        w.add(&Attribute::XorPeerAddress(peer)).unwrap();
        w.add(&Attribute::DontFragment).unwrap();
        w.add(&Attribute::Data(b"probe")).unwrap();
        let len = w.finish();
        buf.truncate(len);
        buf
    };
    let peer = addr(PEER);
    let (mut h, mut plain, _) = allocated();
    plain.create_permission(&mut h, secs(1), peer);
    let without = send_df(&mut plain, peer);
    assert_eq!(h.send(h.at(1), plain.five_tuple, &without).0, ClientAction::Drop);
    let ordinary = plain.send_indication(peer, b"data");
    assert!(matches!(
        h.send(h.at(1), plain.five_tuple, &ordinary).0,
        ClientAction::Relay { .. }
    ));

    let mut df = Client::new("203.0.113.10:50001", "alice", "wonderland");
    df.allocate_with(&mut h, secs(1), &[Attribute::DontFragment]).0.unwrap();
    df.create_permission(&mut h, secs(1), peer);
    let with = send_df(&mut df, peer);
    assert!(matches!(
        h.send(h.at(1), df.five_tuple, &with).0,
        ClientAction::Relay { .. }
    ));
}

#[test]
fn data_indication_for_an_ipv6_peer_uses_the_whole_headroom() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let id = c
        .allocate_with(&mut h, secs(0), &[Attribute::RequestedAddressFamily(0x02)])
        .0
        .unwrap();
    let peer = addr(PEER_V6);
    assert_success(
        &c.create_permission(&mut h, secs(0), peer),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
    let mut buf = peer_buf(b"abcd");
    let forward = h.server.handle_peer(h.at(1), id, peer, &mut buf, 4).unwrap();
    assert_eq!(forward.range, 0..PEER_HEADROOM + 4);
    let msg = Message::parse(&buf[forward.range]).unwrap();
    assert_eq!(
        attribute(&msg, attr::XOR_PEER_ADDRESS),
        Some(Attribute::XorPeerAddress(peer))
    );
    assert_eq!(attribute(&msg, attr::DATA), Some(Attribute::Data(b"abcd")));
}

#[test]
fn channel_data_is_routed_with_the_exact_payload_range() {
    let (mut h, mut c, id) = allocated();
    let peer = addr(PEER);
    let reply = c.channel_bind(&mut h, secs(0), 0x4001, peer);
    assert_success(&reply, Method::CHANNEL_BIND, &c.key());

    let packet = channel_data(0x4001, b"hello");
    assert_eq!(packet.len(), 12);
    let (action, _) = h.send(h.at(1), c.five_tuple, &packet);
    assert_eq!(
        action,
        ClientAction::Relay {
            allocation: id,
            peer,
            payload: 4..9,
        }
    );
    // Unbound channel, and the right channel from another 5-tuple, are dropped.
    assert_eq!(
        h.send(h.at(1), c.five_tuple, &channel_data(0x4002, b"x")).0,
        ClientAction::Drop
    );
    assert_eq!(
        h.send(h.at(1), udp("203.0.113.10:50001"), &packet).0,
        ClientAction::Drop
    );
    // A length beyond the datagram is malformed.
    let before = h.server.stats().malformed_packets;
    assert_eq!(
        h.send(h.at(1), c.five_tuple, &[0x40, 0x01, 0x00, 0x09, 1, 2]).0,
        ClientAction::Drop
    );
    assert_eq!(h.server.stats().malformed_packets, before + 1);
    assert_eq!(h.server.stats().to_peer.udp, turn::Traffic { packets: 1, bytes: 5 });
}

#[test]
fn peer_data_on_a_channel_gets_the_channel_data_header_in_place() {
    let (mut h, mut c, id) = allocated();
    let peer = addr(PEER);
    c.channel_bind(&mut h, secs(0), 0x4ABC, peer);
    let mut buf = peer_buf(b"hello");
    let forward = h.server.handle_peer(h.at(1), id, peer, &mut buf, 5).unwrap();
    assert_eq!(
        forward,
        PeerForward {
            five_tuple: c.five_tuple,
            range: PEER_HEADROOM - 4..PEER_HEADROOM + 5,
        }
    );
    assert_eq!(
        &buf[forward.range],
        &[0x4A, 0xBC, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
    );
    // Another port of the same IP has the permission but no channel: a Data indication.
    let other = from_peer(&mut h, 1, id, addr("198.51.100.7:9001"), b"x").unwrap();
    assert_eq!(parse_indication_method(&other), Method::DATA);
}

fn parse_indication_method(bytes: &[u8]) -> Method {
    Message::parse(bytes).unwrap().method()
}

#[test]
fn channel_data_to_a_stream_client_is_padded_to_four_bytes() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.five_tuple.transport = Transport::Tcp;
    let id = c.allocate(&mut h, secs(0));
    let peer = addr(PEER);
    c.channel_bind(&mut h, secs(0), 0x4000, peer);
    let mut buf = peer_buf(b"hello");
    let forward = h.server.handle_peer(h.at(1), id, peer, &mut buf, 5).unwrap();
    assert_eq!(forward.range, PEER_HEADROOM - 4..PEER_HEADROOM + 8);
    assert_eq!(
        &buf[forward.range],
        &[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]
    );
}

#[test]
fn channel_lasts_600_s_but_needs_its_300_s_permission() {
    let (mut h, mut c, id) = allocated();
    let peer = addr(PEER);
    let packet = channel_data(0x4000, b"p");
    c.channel_bind(&mut h, secs(0), 0x4000, peer);
    let ft = c.five_tuple;
    let relays =
        move |h: &mut Harness, ms: u64| matches!(h.send(h.at_ms(ms), ft, &packet).0, ClientAction::Relay { .. });

    assert!(relays(&mut h, 299_999));
    // The channel's permission (installed by ChannelBind) lapses at 300 s: ChannelData stops both ways.
    assert!(!relays(&mut h, 300_000));
    assert_eq!(from_peer(&mut h, 300, id, peer, b"x"), None);

    // A CreatePermission at 400 s renews the permission to 700 s; the channel itself still ends at 600 s.
    assert_success(
        &c.create_permission(&mut h, secs(400), peer),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
    assert!(relays(&mut h, 599_999));
    assert_eq!(from_peer(&mut h, 599, id, peer, b"x").unwrap()[..2], [0x40, 0x00]);
    assert!(!relays(&mut h, 600_000));
    // Past the channel, the peer still has its permission: its data comes as a Data indication.
    let late = from_peer(&mut h, 600, id, peer, b"x").unwrap();
    assert_eq!(parse_indication_method(&late), Method::DATA);

    // Once expired (and swept), channel and peer are free to be bound differently.
    h.server.handle_timeout(h.at(600));
    let reply = c.channel_bind(&mut h, secs(601), 0x4000, addr("198.51.100.9:9000"));
    assert_success(&reply, Method::CHANNEL_BIND, &c.key());
    let reply = c.channel_bind(&mut h, secs(601), 0x4001, peer);
    assert_success(&reply, Method::CHANNEL_BIND, &c.key());
}

#[test]
fn channel_bind_refresh_renews_channel_and_permission() {
    let (mut h, mut c, _) = allocated();
    let peer = addr(PEER);
    let packet = channel_data(0x4000, b"p");
    c.channel_bind(&mut h, secs(0), 0x4000, peer);
    assert_success(
        &c.channel_bind(&mut h, secs(500), 0x4000, peer),
        Method::CHANNEL_BIND,
        &c.key(),
    );
    h.server.handle_timeout(h.at(700));
    assert!(matches!(
        h.send(h.at(799), c.five_tuple, &packet).0,
        ClientAction::Relay { .. }
    ));
    assert_eq!(h.send(h.at(800), c.five_tuple, &packet).0, ClientAction::Drop);
}

#[test]
fn channel_bind_conflicts_are_400() {
    let (mut h, mut c, _) = allocated();
    let peer = addr(PEER);
    let other = addr("198.51.100.8:9000");
    assert_success(
        &c.channel_bind(&mut h, secs(0), 0x4000, peer),
        Method::CHANNEL_BIND,
        &c.key(),
    );
    // RFC 8656 §12.2: the channel is bound to another peer → 400.
    assert_error(
        &c.channel_bind(&mut h, secs(1), 0x4000, other),
        Method::CHANNEL_BIND,
        400,
    );
    // The peer is bound to another channel → 400.
    assert_error(
        &c.channel_bind(&mut h, secs(1), 0x4001, peer),
        Method::CHANNEL_BIND,
        400,
    );
    // Same peer IP, other port: a distinct transport address, so another channel is fine.
    assert_success(
        &c.channel_bind(&mut h, secs(1), 0x4001, addr("198.51.100.7:9001")),
        Method::CHANNEL_BIND,
        &c.key(),
    );
    // Missing CHANNEL-NUMBER, missing or doubled XOR-PEER-ADDRESS → 400.
    let reply = c.answer(
        &mut h,
        secs(1),
        Method::CHANNEL_BIND,
        &[Attribute::XorPeerAddress(other)],
    );
    assert_error(&reply, Method::CHANNEL_BIND, 400);
    let reply = c.answer(
        &mut h,
        secs(1),
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4005)],
    );
    assert_error(&reply, Method::CHANNEL_BIND, 400);
    let reply = c.answer(
        &mut h,
        secs(1),
        Method::CHANNEL_BIND,
        &[
            Attribute::ChannelNumber(0x4005),
            Attribute::XorPeerAddress(other),
            Attribute::XorPeerAddress(addr("198.51.100.9:9000")),
        ],
    );
    assert_error(&reply, Method::CHANNEL_BIND, 400);
}

/// RFC 8656 §12 narrows channels to 0x4000-0x4FFF; the `stun` crate deliberately keeps RFC 5766's 0x4000-0x7FFF
/// because RFC 5766 clients (coturn's `turnutils_uclient`) still pick numbers above 0x4FFF, and the leading bits
/// 01 are what tell ChannelData from STUN. Below 0x4000 and from 0x8000 up is 400.
#[test]
fn channel_number_range_is_the_rfc_5766_one() {
    let (mut h, mut c, id) = allocated();
    for (i, (channel, ok)) in [
        (0x3FFF, false),
        (0x4000, true),
        (0x4FFF, true),
        (0x5000, true),
        (0x7FFF, true),
        (0x8000, false),
        (0xFFFF, false),
        (0x0000, false),
    ]
    .into_iter()
    .enumerate()
    {
        let peer = SocketAddr::new(addr(PEER).ip(), 10_000 + i as u16);
        let reply = c.channel_bind(&mut h, secs(1), channel, peer);
        if ok {
            assert_success(&reply, Method::CHANNEL_BIND, &c.key());
            let (action, _) = h.send(h.at(2), c.five_tuple, &channel_data(channel, b"z"));
            assert_eq!(
                action,
                ClientAction::Relay {
                    allocation: id,
                    peer,
                    payload: 4..5
                }
            );
        } else {
            assert_error(&reply, Method::CHANNEL_BIND, 400);
        }
    }
}

#[test]
fn peer_policy_refuses_with_403_and_family_mismatch_is_443() {
    let (mut h, mut c, _) = allocated();
    for refused in [
        "10.0.0.1:80",
        "127.0.0.1:80",
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:80",
    ] {
        let peer = addr(refused);
        let reply = c.create_permission(&mut h, secs(1), peer);
        // An IPv6 form on an IPv4-only allocation is a family mismatch first.
        let expected = if peer.is_ipv6() { 443 } else { 403 };
        assert_error(&reply, Method::CREATE_PERMISSION, expected);
        assert_error(
            &c.channel_bind(&mut h, secs(1), 0x4000, peer),
            Method::CHANNEL_BIND,
            expected,
        );
    }
    assert_error(
        &c.create_permission(&mut h, secs(1), addr(PEER_V6)),
        Method::CREATE_PERMISSION,
        443,
    );

    // RFC 8656 §9.2: one bad peer refuses the whole request, and no permission is installed for the others.
    let reply = c.answer(
        &mut h,
        secs(1),
        Method::CREATE_PERMISSION,
        &[
            Attribute::XorPeerAddress(addr(PEER)),
            Attribute::XorPeerAddress(addr("10.0.0.1:1")),
        ],
    );
    assert_error(&reply, Method::CREATE_PERMISSION, 403);
    assert_eq!(
        h.send(h.at(1), c.five_tuple, &c.send_indication(addr(PEER), b"x")).0,
        ClientAction::Drop
    );
    // No XOR-PEER-ADDRESS at all → 400.
    assert_error(
        &c.answer(&mut h, secs(1), Method::CREATE_PERMISSION, &[]),
        Method::CREATE_PERMISSION,
        400,
    );

    // The lab allow list overrides the reserved ranges.
    let mut config = Config::default();
    config.policy.allow.push("10.0.0.0/8".parse().unwrap());
    let mut h = Harness::with(config, Quotas::new(10, 0));
    let mut c = Client::alice();
    c.allocate(&mut h, secs(0));
    assert_success(
        &c.create_permission(&mut h, secs(1), addr("10.0.0.1:80")),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
}

#[test]
fn too_many_permissions_is_508() {
    let config = Config {
        max_permissions_per_allocation: 2,
        ..Config::default()
    };
    let mut h = Harness::with(config, Quotas::new(10, 0));
    let mut c = Client::alice();
    c.allocate(&mut h, secs(0));
    assert_success(
        &c.create_permission(&mut h, secs(1), addr("198.51.100.1:1")),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
    assert_success(
        &c.create_permission(&mut h, secs(1), addr("198.51.100.2:1")),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
    // Refreshing an existing one is fine; a third IP is not, by either method.
    assert_success(
        &c.create_permission(&mut h, secs(2), addr("198.51.100.1:2")),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
    assert_error(
        &c.create_permission(&mut h, secs(2), addr("198.51.100.3:1")),
        Method::CREATE_PERMISSION,
        508,
    );
    assert_error(
        &c.channel_bind(&mut h, secs(2), 0x4000, addr("198.51.100.3:1")),
        Method::CHANNEL_BIND,
        508,
    );
    // After the permissions expire there is room again.
    h.server.handle_timeout(h.at(302));
    assert_success(
        &c.create_permission(&mut h, secs(302), addr("198.51.100.3:1")),
        Method::CREATE_PERMISSION,
        &c.key(),
    );
}
