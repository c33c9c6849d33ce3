//! Relay SSRF (coturn CVE-2020-26262 and kin): with the default peer policy, an authenticated client may not point
//! its allocation at loopback, private, link-local, multicast or reserved addresses, in any IPv6 spelling that
//! embeds one, nor at the server's own addresses. CreatePermission and ChannelBind must answer 403 for each; a
//! public (documentation) address gets 200.
//!
//! No traffic goes to any of these addresses: permissions only. The one data check sends to a loopback socket and
//! asserts it never arrives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun::{attr, Attribute, Class, Method};

use common::{build, channel_data, random_tid, Conn, Server, TurnClient};

/// The server advertises this as its public IPv4 (TEST-NET-3, so public under the policy): relaying to it would
/// loop through the server and must be refused as the server's own address.
const EXTERNAL_V4: &str = "203.0.113.7";

fn server() -> Server {
    Server::start(&[
        "--user",
        "alice:pw",
        "--realm",
        "test",
        "--set",
        "relay.ipv6=true",
        "--set",
        "relay.bind_v6=::1",
        "--external-v4",
        EXTERNAL_V4,
        "--workers",
        "2",
    ])
}

/// Every IPv4 form the default policy must refuse.
fn denied_v4() -> Vec<Ipv4Addr> {
    [
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "10.255.255.254",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.0.1",
        "192.168.255.254",
        "100.64.0.1",
        "100.127.255.254",
        "169.254.169.254",
        "169.254.0.1",
        "192.0.0.8",
        "198.18.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        EXTERNAL_V4,
    ]
    .iter()
    .map(|s| s.parse().expect("IPv4 literal"))
    .collect()
}

/// Every IPv6 form the default policy must refuse, including those that embed a refused IPv4 address.
fn denied_v6() -> Vec<Ipv6Addr> {
    [
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:0.0.0.0",
        "::127.0.0.1",
        "::10.1.2.3",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1",
        "2002:7f00:1::1",
        "2002:c0a8:101::1",
        // Teredo (RFC 4380 §4): the client address is stored inverted; 80ff:fffe is !127.0.0.1.
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "fc00::1",
        "fd12:3456:789a::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "100::1",
        // The server's own advertised IPv4, IPv4-mapped.
        "::ffff:203.0.113.7",
    ]
    .iter()
    .map(|s| s.parse().expect("IPv6 literal"))
    .collect()
}

/// This machine's primary address, found without sending anything: a connected UDP socket only picks a route.
fn primary_address() -> Option<IpAddr> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect(("192.0.2.1", 9)).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

fn authenticated_client(server: &Server, tcp: bool) -> (TurnClient, Vec<SocketAddr>) {
    let conn = if tcp {
        Conn::tcp(server.tcp)
    } else {
        Conn::udp(server.udp)
    };
    let mut client = TurnClient::new(conn, "alice", "pw");
    let response = client.allocate(true);
    assert_eq!(response.class(), Class::Success, "Allocate: {}", response.describe());
    let relays = response.addresses(attr::XOR_RELAYED_ADDRESS);
    assert!(relays.iter().any(SocketAddr::is_ipv4), "an IPv4 relay: {relays:?}");
    (client, relays)
}

fn assert_forbidden(client: &mut TurnClient, peer: SocketAddr, channel: u16) {
    let response = client.create_permission(peer);
    assert_eq!(
        response.error_code(),
        Some(403),
        "CreatePermission {peer}: {} (expected 403 Forbidden)",
        response.describe()
    );
    assert!(response.message().verify_integrity(&client.key()), "the 403 is signed");
    let response = client.channel_bind(channel, peer);
    assert_eq!(
        response.error_code(),
        Some(403),
        "ChannelBind {peer}: {} (expected 403 Forbidden)",
        response.describe()
    );
}

fn assert_allowed(client: &mut TurnClient, peer: SocketAddr) {
    let response = client.create_permission(peer);
    assert_eq!(
        response.class(),
        Class::Success,
        "CreatePermission {peer}: {} (expected 200)",
        response.describe()
    );
}

fn check_policy(server: &mut Server, tcp: bool) {
    let (mut client, relays) = authenticated_client(server, tcp);
    let has_v6 = relays.iter().any(SocketAddr::is_ipv6);
    let mut channel = 0x4000u16;
    let mut checked = 0;
    for ip in denied_v4() {
        assert_forbidden(&mut client, SocketAddr::new(IpAddr::V4(ip), 3478), channel);
        channel += 1;
        checked += 1;
    }
    if let Some(own) = primary_address() {
        if own.is_ipv4() || has_v6 {
            assert_forbidden(&mut client, SocketAddr::new(own, 3478), channel);
            channel += 1;
            checked += 1;
        }
    }
    if has_v6 {
        for ip in denied_v6() {
            assert_forbidden(&mut client, SocketAddr::new(IpAddr::V6(ip), 3478), channel);
            channel += 1;
            checked += 1;
        }
    } else {
        common::skip("no IPv6 relay on ::1: the IPv6 forms were not checked");
    }

    // Several peers in one request: one refused address refuses the whole request (RFC 8656 §9.2).
    let response = client.request(Method::CREATE_PERMISSION, |w| {
        w.add(&Attribute::XorPeerAddress("192.0.2.1:3478".parse().expect("addr")))?;
        w.add(&Attribute::XorPeerAddress("127.0.0.1:3478".parse().expect("addr")))
            .map(|_| ())
    });
    assert_eq!(
        response.error_code(),
        Some(403),
        "mixed request: {}",
        response.describe()
    );

    // Public (documentation) addresses are allowed: a permission only, no traffic is sent to them.
    assert_allowed(&mut client, "192.0.2.1:3478".parse().expect("addr"));
    assert_allowed(&mut client, "198.51.100.20:5000".parse().expect("addr"));
    if has_v6 {
        assert_allowed(&mut client, "[2001:db8::1]:3478".parse().expect("addr"));
    }
    println!(
        "{} refused forms checked over {}",
        checked,
        if tcp { "TCP" } else { "UDP" }
    );

    // Data aimed at a refused loopback peer goes nowhere: a Send indication and ChannelData on the channel whose
    // binding was refused.
    let target = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let target_addr = target.local_addr().expect("addr");
    assert_forbidden(&mut client, target_addr, 0x4fff);
    let mut buf = vec![0u8; 2048];
    let mut w = stun::MessageWriter::new(&mut buf, Method::SEND, Class::Indication, random_tid()).expect("writer");
    w.add(&Attribute::XorPeerAddress(target_addr)).expect("peer");
    w.add(&Attribute::Data(b"must not arrive")).expect("data");
    let len = w.finish();
    let pad = tcp;
    for _ in 0..20 {
        client.conn.send(&buf[..len]);
        client.conn.send(&channel_data(0x4fff, b"must not arrive", pad));
    }
    target
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut got = [0u8; 256];
    while Instant::now() < deadline {
        if let Ok((n, from)) = target.recv_from(&mut got) {
            panic!("a refused loopback peer received {n} bytes from {from}");
        }
    }
    server.assert_alive();
}

#[test]
fn default_policy_refuses_every_non_public_peer_over_udp() {
    let mut server = server();
    check_policy(&mut server, false);
}

#[test]
fn default_policy_refuses_every_non_public_peer_over_tcp() {
    let mut server = server();
    check_policy(&mut server, true);
}

#[test]
fn deny_peer_adds_to_the_reserved_ranges() {
    let mut server = Server::start(&[
        "--user",
        "alice:pw",
        "--realm",
        "test",
        "--set",
        "relay.deny_peers=198.51.100.0/24",
    ]);
    let conn = Conn::udp(server.udp);
    let mut client = TurnClient::new(conn, "alice", "pw");
    let response = client.allocate(false);
    assert_eq!(response.class(), Class::Success, "Allocate: {}", response.describe());
    assert_forbidden(&mut client, "198.51.100.20:5000".parse().expect("addr"), 0x4000);
    assert_forbidden(&mut client, "127.0.0.1:5000".parse().expect("addr"), 0x4001);
    assert_allowed(&mut client, "192.0.2.1:3478".parse().expect("addr"));
    // An IPv6 peer on an IPv4-only allocation is a family mismatch (443), not a permission.
    let response = client.create_permission("[2001:db8::1]:3478".parse().expect("addr"));
    assert_eq!(response.error_code(), Some(443), "{}", response.describe());
    // Unauthenticated CreatePermission never reaches the policy: 401.
    let request = build(
        Method::CREATE_PERMISSION,
        random_tid(),
        |w| {
            w.add(&Attribute::XorPeerAddress("192.0.2.1:1".parse().expect("addr")))
                .map(|_| ())
        },
        None,
        true,
    );
    let response = Conn::udp(server.udp).must_transact(&request);
    assert_eq!(response.error_code(), Some(401), "{}", response.describe());
    server.assert_alive();
}
