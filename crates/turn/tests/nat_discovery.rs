//! RFC 5780 NAT behaviour discovery in the Binding handler: which address an answer leaves from (CHANGE-REQUEST),
//! where it goes (RESPONSE-PORT), what it says (RESPONSE-ORIGIN, OTHER-ADDRESS), how far it is padded (PADDING), and
//! the 420 a server without (full) RFC 5780 gives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;

use common::{addr, attribute, attribute_types, error_code, parse, Harness};
use stun::{attr, Attribute, Class, MessageWriter, Method, TransactionId};
use turn::{ClientAction, Config, FiveTuple, NatDiscovery, Quotas, Transport, MAX_PADDED_ANSWER};

const PRIMARY: &str = "192.0.2.1:3478";
const ALTERNATE: &str = "192.0.2.2:3479";
const CLIENT: &str = "203.0.113.10:50000";

fn harness(alternate: Option<&str>) -> Harness {
    let config = Config {
        nat_discovery: alternate.map(|a| NatDiscovery::new(addr(PRIMARY), addr(a)).unwrap()),
        ..Config::default()
    };
    Harness::with(config, Quotas::new(10, 0))
}

fn at(server: &str) -> FiveTuple {
    FiveTuple {
        client: addr(CLIENT),
        server: addr(server),
        transport: Transport::Udp,
    }
}

fn tid() -> TransactionId {
    TransactionId::new([0x42; 12])
}

/// A Binding request with `attrs` and FINGERPRINT.
fn binding(attrs: &[Attribute<'_>]) -> Vec<u8> {
    binding_with(tid(), attrs)
}

fn binding_with(tid: TransactionId, attrs: &[Attribute<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 4000];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
    for a in attrs {
        w.add(a).unwrap();
    }
    w.fingerprint().unwrap();
    let len = w.finish();
    buf.truncate(len);
    buf
}

fn change(change_ip: bool, change_port: bool) -> Attribute<'static> {
    Attribute::ChangeRequest { change_ip, change_port }
}

/// The action, where the answer leaves from and goes to, and its bytes.
fn send(h: &mut Harness, five_tuple: FiveTuple, request: &[u8]) -> (ClientAction, SocketAddr, SocketAddr, Vec<u8>) {
    let mut out = vec![0u8; 1500];
    let action = h.server.handle_client(h.at(0), five_tuple, request, &mut out);
    let (from, to, len) = match action {
        ClientAction::Reply(len) => (five_tuple.server, five_tuple.client, len),
        ClientAction::ReplyFrom { len, from, to } => (from, to, len),
        ref other => panic!("expected an answer, got {other:?}"),
    };
    (action, from, to, out[..len].to_vec())
}

fn unknown_attributes(reply: &[u8]) -> Vec<u16> {
    match attribute(&parse(reply), attr::UNKNOWN_ATTRIBUTES) {
        Some(Attribute::UnknownAttributes(list)) => Attribute::u16_list(list).collect(),
        other => panic!("no UNKNOWN-ATTRIBUTES: {other:?}"),
    }
}

fn address(reply: &[u8], ty: u16) -> Option<SocketAddr> {
    match attribute(&parse(reply), ty)? {
        Attribute::ResponseOrigin(a)
        | Attribute::OtherAddress(a)
        | Attribute::XorMappedAddress(a)
        | Attribute::MappedAddress(a)
        | Attribute::LegacyAddress(_, a) => Some(a),
        other => panic!("not an address: {other:?}"),
    }
}

#[test]
fn unconfigured_server_answers_rfc5780_attributes_with_420() {
    let mut h = harness(None);
    for (request_attr, ty) in [
        (change(true, false), attr::CHANGE_REQUEST),
        (change(false, true), attr::CHANGE_REQUEST),
        (change(true, true), attr::CHANGE_REQUEST),
        (Attribute::ResponsePort(40000), attr::RESPONSE_PORT),
        (Attribute::Padding(&[0; 64]), attr::PADDING),
    ] {
        let (action, from, to, reply) = send(&mut h, at(PRIMARY), &binding(&[request_attr]));
        assert!(matches!(action, ClientAction::Reply(_)), "{action:?}");
        assert_eq!((from, to), (addr(PRIMARY), addr(CLIENT)));
        assert_eq!(error_code(&reply), Some(420), "{request_attr:?}");
        assert_eq!(unknown_attributes(&reply), vec![ty]);
    }
    // A plain Binding stays as small as it was: XOR-MAPPED-ADDRESS and FINGERPRINT only.
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &binding(&[]));
    assert_eq!(
        attribute_types(&parse(&reply)),
        vec![attr::XOR_MAPPED_ADDRESS, attr::FINGERPRINT]
    );
}

/// A CHANGE-REQUEST that asks for no change is answered, RFC 5780 or not: RFC 3489 clients (the stund lineage) put
/// one in every request, their first test included, and got 420 for all of them.
#[test]
fn a_change_request_asking_for_no_change_is_answered_when_unconfigured() {
    let mut h = harness(None);
    let (_, from, _, reply) = send(&mut h, at(PRIMARY), &binding(&[change(false, false)]));
    assert_eq!(from, addr(PRIMARY));
    assert_eq!(error_code(&reply), None);
    assert_eq!(address(&reply, attr::XOR_MAPPED_ADDRESS), Some(addr(CLIENT)));
    let classic = TransactionId { bytes: [0x18; 16] };
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &binding_with(classic, &[change(false, false)]));
    assert_eq!(address(&reply, attr::MAPPED_ADDRESS), Some(addr(CLIENT)));
}

#[test]
fn malformed_change_request_is_refused_too_when_unconfigured() {
    let mut h = harness(None);
    let mut buf = vec![0u8; 200];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid()).unwrap();
    w.raw(attr::CHANGE_REQUEST, &[0, 6]).unwrap(); // two bytes instead of four
    w.fingerprint().unwrap();
    let len = w.finish();
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &buf[..len]);
    assert_eq!(error_code(&reply), Some(420));
    assert_eq!(unknown_attributes(&reply), vec![attr::CHANGE_REQUEST]);
}

#[test]
fn plain_binding_carries_response_origin_and_other_address() {
    let mut h = harness(Some(ALTERNATE));
    let (action, from, to, reply) = send(&mut h, at(PRIMARY), &binding(&[]));
    assert!(matches!(action, ClientAction::Reply(_)), "{action:?}");
    assert_eq!((from, to), (addr(PRIMARY), addr(CLIENT)));
    assert_eq!(
        attribute_types(&parse(&reply)),
        vec![
            attr::XOR_MAPPED_ADDRESS,
            attr::RESPONSE_ORIGIN,
            attr::OTHER_ADDRESS,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(address(&reply, attr::XOR_MAPPED_ADDRESS), Some(addr(CLIENT)));
    assert_eq!(address(&reply, attr::RESPONSE_ORIGIN), Some(addr(PRIMARY)));
    assert_eq!(address(&reply, attr::OTHER_ADDRESS), Some(addr(ALTERNATE)));
}

/// Every receiving address × every CHANGE-REQUEST combination: the answer leaves from the address with the IP
/// and/or port swapped, says so in RESPONSE-ORIGIN, and names the fully swapped address in OTHER-ADDRESS.
#[test]
fn change_request_picks_the_source_for_every_combination() {
    let mut h = harness(Some(ALTERNATE));
    let swap_ip = |a: SocketAddr| {
        let ip = if a.ip() == addr(PRIMARY).ip() {
            addr(ALTERNATE).ip()
        } else {
            addr(PRIMARY).ip()
        };
        SocketAddr::new(ip, a.port())
    };
    let swap_port = |a: SocketAddr| {
        let port = if a.port() == 3478 { 3479 } else { 3478 };
        SocketAddr::new(a.ip(), port)
    };
    for server in ["192.0.2.1:3478", "192.0.2.1:3479", "192.0.2.2:3478", "192.0.2.2:3479"] {
        let server = addr(server);
        for (change_ip, change_port) in [(false, false), (true, false), (false, true), (true, true)] {
            let expected = match (change_ip, change_port) {
                (false, false) => server,
                (true, false) => swap_ip(server),
                (false, true) => swap_port(server),
                (true, true) => swap_ip(swap_port(server)),
            };
            let five_tuple = FiveTuple { server, ..at(PRIMARY) };
            let (action, from, to, reply) = send(&mut h, five_tuple, &binding(&[change(change_ip, change_port)]));
            let what = format!("at {server}, change IP {change_ip}, change port {change_port}");
            assert_eq!(parse(&reply).class(), Class::Success, "{what}");
            assert_eq!(from, expected, "{what}");
            assert_eq!(to, addr(CLIENT), "{what}");
            assert_eq!(
                matches!(action, ClientAction::Reply(_)),
                expected == server,
                "{what}: {action:?}"
            );
            assert_eq!(address(&reply, attr::RESPONSE_ORIGIN), Some(expected), "{what}");
            assert_eq!(
                address(&reply, attr::OTHER_ADDRESS),
                Some(swap_ip(swap_port(server))),
                "{what}"
            );
            assert_eq!(address(&reply, attr::XOR_MAPPED_ADDRESS), Some(addr(CLIENT)), "{what}");
        }
    }
}

#[test]
fn response_port_changes_the_port_only() {
    let mut h = harness(Some(ALTERNATE));
    let (action, from, to, reply) = send(&mut h, at(PRIMARY), &binding(&[Attribute::ResponsePort(40000)]));
    assert!(matches!(action, ClientAction::ReplyFrom { .. }), "{action:?}");
    assert_eq!((from, to), (addr(PRIMARY), addr("203.0.113.10:40000")));
    // The mapped address is still where the request came from.
    assert_eq!(address(&reply, attr::XOR_MAPPED_ADDRESS), Some(addr(CLIENT)));

    let (_, from, to, _) = send(
        &mut h,
        at(PRIMARY),
        &binding(&[change(true, true), Attribute::ResponsePort(40000)]),
    );
    assert_eq!((from, to), (addr(ALTERNATE), addr("203.0.113.10:40000")));

    // The client's own port is no change at all.
    let (action, _, _, _) = send(&mut h, at(PRIMARY), &binding(&[Attribute::ResponsePort(50000)]));
    assert!(matches!(action, ClientAction::Reply(_)), "{action:?}");

    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &binding(&[Attribute::ResponsePort(0)]));
    assert_eq!(error_code(&reply), Some(400));
}

#[test]
fn padding_never_makes_the_answer_larger_than_the_request_or_1280_bytes() {
    let mut h = harness(Some(ALTERNATE));
    // A request padded like `turnutils_natdiscovery -P` (1500 bytes): the answer is cut to 1280.
    let big = [0u8; 1500];
    let request = binding(&[Attribute::Padding(&big)]);
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &request);
    assert!(reply.len() <= MAX_PADDED_ANSWER, "{}", reply.len());
    assert!(reply.len() > MAX_PADDED_ANSWER - 8, "{}", reply.len());
    assert!(attribute_types(&parse(&reply)).contains(&attr::PADDING));
    assert_eq!(*attribute_types(&parse(&reply)).last().unwrap(), attr::FINGERPRINT);

    // A moderate request: the answer is padded to exactly the request's size.
    let mid = [0u8; 200];
    let request = binding(&[Attribute::Padding(&mid)]);
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &request);
    assert_eq!(reply.len(), request.len());

    // A tiny PADDING: no room without growing the answer past the request, so no PADDING at all.
    let request = binding(&[Attribute::Padding(&[0; 4])]);
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &request);
    assert!(!attribute_types(&parse(&reply)).contains(&attr::PADDING));
    assert_eq!(parse(&reply).class(), Class::Success);

    // Without PADDING in the request there is none in the answer.
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &binding(&[]));
    assert!(!attribute_types(&parse(&reply)).contains(&attr::PADDING));
}

/// Field note 11: an OTHER-ADDRESS on the same IP fakes endpoint-independent filtering. With one IP only,
/// change-port works, change-IP is refused and no OTHER-ADDRESS is sent.
#[test]
fn one_ip_only_refuses_change_ip_and_sends_no_other_address() {
    let mut h = harness(Some("192.0.2.1:3479"));
    let (_, from, _, reply) = send(&mut h, at(PRIMARY), &binding(&[change(false, true)]));
    assert_eq!(from, addr("192.0.2.1:3479"));
    assert_eq!(address(&reply, attr::RESPONSE_ORIGIN), Some(from));
    assert_eq!(address(&reply, attr::OTHER_ADDRESS), None);
    for flags in [change(true, false), change(true, true)] {
        let (action, from, _, reply) = send(&mut h, at(PRIMARY), &binding(&[flags]));
        assert!(matches!(action, ClientAction::Reply(_)), "{action:?}");
        assert_eq!(from, addr(PRIMARY));
        assert_eq!(error_code(&reply), Some(420), "{flags:?}");
        assert_eq!(unknown_attributes(&reply), vec![attr::CHANGE_REQUEST]);
    }
}

#[test]
fn one_port_only_refuses_change_port_and_sends_no_other_address() {
    let mut h = harness(Some("192.0.2.2:3478"));
    let (_, from, _, reply) = send(&mut h, at(PRIMARY), &binding(&[change(true, false)]));
    assert_eq!(from, addr("192.0.2.2:3478"));
    assert_eq!(address(&reply, attr::OTHER_ADDRESS), None);
    let (_, _, _, reply) = send(&mut h, at(PRIMARY), &binding(&[change(false, true)]));
    assert_eq!(error_code(&reply), Some(420));
    assert_eq!(unknown_attributes(&reply), vec![attr::CHANGE_REQUEST]);
}

/// RFC 5780 applies on its own UDP addresses only: another listener, or TCP, behaves as an unconfigured server.
#[test]
fn other_listeners_and_tcp_are_not_rfc5780() {
    let mut h = harness(Some(ALTERNATE));
    let elsewhere = FiveTuple {
        server: addr("192.0.2.1:5000"),
        ..at(PRIMARY)
    };
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..at(PRIMARY)
    };
    for five_tuple in [elsewhere, tcp] {
        let (_, _, _, reply) = send(&mut h, five_tuple, &binding(&[change(true, true)]));
        assert_eq!(error_code(&reply), Some(420), "{five_tuple:?}");
        let (_, _, _, reply) = send(&mut h, five_tuple, &binding(&[]));
        assert_eq!(address(&reply, attr::OTHER_ADDRESS), None, "{five_tuple:?}");
        assert_eq!(address(&reply, attr::RESPONSE_ORIGIN), None, "{five_tuple:?}");
    }
}

/// RFC 3489 clients (no magic cookie) read the same facts from SOURCE-ADDRESS and CHANGED-ADDRESS.
#[test]
fn rfc3489_clients_get_source_and_changed_address() {
    let mut h = harness(Some(ALTERNATE));
    let classic = TransactionId { bytes: [0x17; 16] };
    let (_, from, _, reply) = send(&mut h, at(PRIMARY), &binding_with(classic, &[change(true, false)]));
    assert_eq!(from, addr("192.0.2.2:3478"));
    assert_eq!(
        attribute_types(&parse(&reply)),
        vec![
            attr::MAPPED_ADDRESS,
            attr::SOURCE_ADDRESS,
            attr::CHANGED_ADDRESS,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(address(&reply, attr::SOURCE_ADDRESS), Some(from));
    assert_eq!(address(&reply, attr::CHANGED_ADDRESS), Some(addr(ALTERNATE)));
}

#[test]
fn configuration_is_checked() {
    let p = addr(PRIMARY);
    assert!(NatDiscovery::new(p, p).is_err());
    assert!(NatDiscovery::new(p, addr("0.0.0.0:3479")).is_err());
    assert!(NatDiscovery::new(addr("0.0.0.0:3478"), addr(ALTERNATE)).is_err());
    assert!(NatDiscovery::new(p, addr("192.0.2.2:0")).is_err());
    assert!(NatDiscovery::new(p, addr("[2001:db8::2]:3479")).is_err());
    let full = NatDiscovery::new(p, addr(ALTERNATE)).unwrap();
    assert!(full.is_complete());
    assert_eq!(
        full.addresses(),
        vec![p, addr("192.0.2.1:3479"), addr("192.0.2.2:3478"), addr(ALTERNATE)]
    );
    let port_only = NatDiscovery::new(p, addr("192.0.2.1:3479")).unwrap();
    assert!(!port_only.is_complete() && port_only.can_change_port() && !port_only.can_change_ip());
    assert_eq!(port_only.addresses().len(), 2);
}
