#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! RFC 5780 NAT behaviour discovery against the real binary: `traverse serve` on 127.0.0.1:P with the alternate
//! 127.0.0.2:P+1 (127.0.0.0/8 is all loopback on Linux), probed by our own client (which address each CHANGE-REQUEST
//! answer really leaves from, RESPONSE-PORT, OTHER-ADDRESS) and by coturn's `turnutils_natdiscovery`, which must
//! find what a client on loopback has: no NAT, so endpoint-independent mapping and filtering.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{build, random_tid, require_tools, run_bounded, Server, LOOPBACK};
use stun::{attr, Attribute, Class, Message, Method};

const ALTERNATE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A server with RFC 5780 on 127.0.0.1:P and 127.0.0.2:P+1. Retries on a port another test took meanwhile.
fn start() -> (Server, SocketAddr, SocketAddr) {
    for _ in 0..20 {
        let p = common::free_udp_port(LOOPBACK);
        let Some(q) = p.checked_add(1) else { continue };
        let combos = [(LOOPBACK, p), (LOOPBACK, q), (ALTERNATE_IP, p), (ALTERNATE_IP, q)];
        if combos.iter().any(|(ip, port)| UdpSocket::bind((*ip, *port)).is_err()) {
            continue;
        }
        let primary = SocketAddr::new(LOOPBACK, p);
        let alternate = SocketAddr::new(ALTERNATE_IP, q);
        // The free ports come from the kernel's ephemeral range, which overlaps the default relay range (a listener
        // there is refused): relay ports below it.
        let server = Server::start_with_udp(
            &primary.to_string(),
            &[
                "--other-address",
                &alternate.to_string(),
                "--workers",
                "2",
                "--relay-ports",
                "20000-20999",
            ],
        );
        return (server, primary, alternate);
    }
    panic!("no free pair of UDP ports on 127.0.0.1 and 127.0.0.2");
}

/// Sends a Binding request with `attrs` from `sock` to `server`; returns the answer and where it came from.
/// Retransmits a few times (UDP).
fn binding(sock: &UdpSocket, server: SocketAddr, attrs: &[Attribute<'_>]) -> Option<(Vec<u8>, SocketAddr)> {
    binding_to(sock, sock, server, attrs)
}

/// Like [`binding`], but the answer is awaited on `answer_on` (RESPONSE-PORT).
fn binding_to(
    sock: &UdpSocket,
    answer_on: &UdpSocket,
    server: SocketAddr,
    attrs: &[Attribute<'_>],
) -> Option<(Vec<u8>, SocketAddr)> {
    let tid = random_tid();
    let request = build(
        Method::BINDING,
        tid,
        |w| {
            for a in attrs {
                w.add(a)?;
            }
            Ok(())
        },
        None,
        true,
    );
    answer_on.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = vec![0u8; 2048];
    for _ in 0..4 {
        sock.send_to(&request, server).unwrap();
        while let Ok((n, from)) = answer_on.recv_from(&mut buf) {
            if Message::parse(&buf[..n]).is_ok_and(|m| m.transaction_id() == tid) {
                return Some((buf[..n].to_vec(), from));
            }
        }
    }
    None
}

fn address(bytes: &[u8], ty: u16) -> Option<SocketAddr> {
    match Message::parse(bytes).unwrap().decode(ty)?.unwrap() {
        Attribute::ResponseOrigin(a) | Attribute::OtherAddress(a) | Attribute::XorMappedAddress(a) => Some(a),
        other => panic!("not an address: {other:?}"),
    }
}

#[test]
fn change_request_answers_leave_from_the_changed_address() {
    let (mut server, primary, alternate) = start();
    // The log is read on a thread: give it a moment to catch up with the ready line.
    let mut log = server.log();
    for _ in 0..50 {
        if log.contains("OTHER-ADDRESS sent") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        log = server.log();
    }
    assert!(
        log.contains("OTHER-ADDRESS sent") && log.contains("mapping, filtering"),
        "the start-up log should say which RFC 5780 tests are valid:\n{log}"
    );
    let sock = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let me = sock.local_addr().unwrap();
    for (change_ip, change_port, expected) in [
        (false, false, primary),
        (true, false, SocketAddr::new(alternate.ip(), primary.port())),
        (false, true, SocketAddr::new(primary.ip(), alternate.port())),
        (true, true, alternate),
    ] {
        let (answer, from) = binding(&sock, primary, &[Attribute::ChangeRequest { change_ip, change_port }])
            .unwrap_or_else(|| panic!("no answer to change IP {change_ip}, port {change_port}"));
        let msg = Message::parse(&answer).unwrap();
        assert_eq!(msg.class(), Class::Success);
        assert_eq!(from, expected, "change IP {change_ip}, port {change_port}");
        assert_eq!(address(&answer, attr::RESPONSE_ORIGIN), Some(expected));
        assert_eq!(address(&answer, attr::OTHER_ADDRESS), Some(alternate));
        assert_eq!(address(&answer, attr::XOR_MAPPED_ADDRESS), Some(me));
    }

    // RESPONSE-PORT: the answer goes to another port of the client's IP.
    let other = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let port = other.local_addr().unwrap().port();
    let (answer, from) = binding_to(&sock, &other, primary, &[Attribute::ResponsePort(port)])
        .expect("an answer on the RESPONSE-PORT socket");
    assert_eq!(from, primary);
    assert_eq!(address(&answer, attr::XOR_MAPPED_ADDRESS), Some(me));

    // A request to the alternate address itself names the primary as its OTHER-ADDRESS.
    let (answer, from) = binding(&sock, alternate, &[]).expect("an answer from the alternate address");
    assert_eq!(from, alternate);
    assert_eq!(address(&answer, attr::OTHER_ADDRESS), Some(primary));
    server.assert_alive();
}

#[test]
fn without_an_alternate_change_request_is_420() {
    let mut server = Server::start(&[]);
    let sock = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let change = Attribute::ChangeRequest {
        change_ip: true,
        change_port: true,
    };
    let (answer, from) = binding(&sock, server.udp, &[change]).expect("an answer");
    assert_eq!(from, server.udp);
    let msg = Message::parse(&answer).unwrap();
    assert_eq!(msg.class(), Class::Error);
    match msg.decode(attr::UNKNOWN_ATTRIBUTES) {
        Some(Ok(Attribute::UnknownAttributes(list))) => {
            assert_eq!(
                Attribute::u16_list(list).collect::<Vec<_>>(),
                vec![attr::CHANGE_REQUEST]
            );
        }
        other => panic!("no UNKNOWN-ATTRIBUTES: {other:?}"),
    }
    server.assert_alive();
}

/// coturn's RFC 5780 client. Mapping and filtering run as separate invocations so they use different local ports
/// (field notes: never run both tests from one port).
#[test]
fn turnutils_natdiscovery_finds_no_nat_on_loopback() {
    if !require_tools(&["turnutils_natdiscovery"]) {
        return;
    }
    let (mut server, primary, _) = start();
    let port = primary.port().to_string();
    for (flags, verdict) in [
        (&["-m"][..], "NAT with Endpoint Independent Mapping!"),
        (&["-f"][..], "NAT with Endpoint Independent Filtering!"),
        // PADDING (1500 bytes asked for; our answer is capped at 1280 and at the request size).
        (&["-f", "-P"][..], "NAT with Endpoint Independent Filtering!"),
    ] {
        let out = run_bounded(
            Command::new("turnutils_natdiscovery")
                .args(flags)
                .args(["-p", &port, "127.0.0.1"]),
            Duration::from_secs(60),
        );
        let text = out.all();
        assert!(!out.timed_out, "turnutils_natdiscovery {flags:?} hung:\n{text}");
        assert!(
            text.contains(verdict),
            "turnutils_natdiscovery {flags:?} should report {verdict:?}:\n{text}\nserver log:\n{}",
            server.log()
        );
        assert!(
            !text.contains("Dependent"),
            "turnutils_natdiscovery {flags:?} found a dependent behaviour on loopback:\n{text}"
        );
    }
    server.assert_alive();
}
