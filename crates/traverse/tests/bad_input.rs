//! Hostile and broken input against the real binary over UDP and TCP: thousands of random, truncated and corrupted
//! messages, wrong integrities, unknown comprehension-required attributes, ChannelData for unbound channels and
//! Send indications without a permission. Each must get the error RFC 8489 / RFC 8656 prescribes or be dropped
//! silently; afterwards the process must still run and still serve a good client.
//!
//! Messages are built with the project's own codec (`stun`); the random streams are seeded, and the seed is printed
//! (set `TRAVERSE_TEST_SEED` to replay one).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stun::{attr, Attribute, Class, Message, Method};

use common::{
    assert_binding_served, build, channel_data, connect_tcp, random_tid, run_bounded, Conn, Credentials, EchoPeer,
    Server, TurnClient,
};

const SERVER_ARGS: &[&str] = &[
    "--user",
    "alice:pw",
    "--allow-peer",
    "127.0.0.0/8",
    "--realm",
    "test",
    "--workers",
    "2",
];

/// How long "nothing came back" is watched for after a burst.
const QUIET: Duration = Duration::from_millis(1500);

/// Comprehension-required attribute types no codec here knows (RFC 8489 §18.3: unassigned in 0x0000-0x7FFF).
const UNKNOWN_REQUIRED: [u16; 4] = [0x0031, 0x0040, 0x1234, 0x7ffe];

fn rng() -> StdRng {
    let seed = std::env::var("TRAVERSE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed: TRAVERSE_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// A valid request of each kind we corrupt: Binding and Allocate, both with FINGERPRINT so any corruption of the
/// covered bytes must be detected (RFC 8489 §14.7).
fn fingerprinted_samples() -> Vec<Vec<u8>> {
    vec![
        build(
            Method::BINDING,
            random_tid(),
            |w| w.add(&Attribute::Software("bad-input test")).map(|_| ()),
            None,
            true,
        ),
        build(
            Method::ALLOCATE,
            random_tid(),
            |w| {
                w.add(&Attribute::RequestedTransport(17))?;
                w.add(&Attribute::Lifetime(600))?;
                w.add(&Attribute::Username("alice"))?;
                w.add(&Attribute::Realm("test"))?;
                w.add(&Attribute::Nonce("0123456789abcdef")).map(|_| ())
            },
            None,
            true,
        ),
    ]
}

/// Corrupted copies of fingerprinted messages: one bit flipped anywhere from the cookie to the end of the last
/// attribute before FINGERPRINT. Framing (type and length) is kept, so these are also valid stream frames. All must
/// be dropped: the CRC no longer matches, or the message no longer parses.
///
/// A flip in an attribute's length can swallow the FINGERPRINT into that attribute; the result is a well-formed
/// message without FINGERPRINT, which a server must treat as such, so those are left out.
fn bit_flips(rng: &mut StdRng, count: usize) -> Vec<Vec<u8>> {
    let samples = fingerprinted_samples();
    let mut out = Vec::with_capacity(count);
    for i in 0..count * 4 {
        if out.len() == count {
            break;
        }
        let mut m = samples[i % samples.len()].clone();
        let at = rng.gen_range(4..m.len() - 8);
        m[at] ^= 1 << rng.gen_range(0..8);
        if Message::parse(&m).is_ok_and(|msg| !msg.has_fingerprint()) {
            continue;
        }
        out.push(m);
    }
    out
}

/// Sends `packets` and returns every answer that came back meanwhile or within [`QUIET`] after. It reads every 16
/// packets: that paces the burst so it reaches the server's parser rather than overflowing socket buffers, and
/// keeps answers from overflowing ours (which would hide them from the silence checks).
fn send_collect(conn: &mut Conn, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        conn.send(p);
        if i % 16 == 15 {
            answers.extend(conn.drain(Duration::from_millis(2)));
        }
    }
    answers.extend(conn.drain(QUIET));
    answers
}

/// Sends `packets` and asserts nothing at all comes back: all were dropped silently.
fn assert_dropped(conn: &mut Conn, packets: &[Vec<u8>], what: &str) {
    let got = send_collect(conn, packets);
    let described: Vec<String> = got
        .iter()
        .take(5)
        .map(|b| match Message::parse(b) {
            Ok(m) => format!("{:?} {:?}", m.method(), m.class()),
            Err(_) => format!("{} bytes {:02x?}", b.len(), b.get(..b.len().min(8))),
        })
        .collect();
    assert!(
        got.is_empty(),
        "{what}: expected a silent drop, got {} answers: {described:?}",
        got.len()
    );
}

/// An Allocate without credentials: the server answers 401 with REALM and NONCE (RFC 8489 §9.2.4).
fn challenge(conn: &mut Conn) -> (String, String) {
    let request = build(
        Method::ALLOCATE,
        random_tid(),
        |w| w.add(&Attribute::RequestedTransport(17)).map(|_| ()),
        None,
        true,
    );
    let response = conn.must_transact(&request);
    assert_eq!(
        response.error_code(),
        Some(401),
        "unauthenticated Allocate: {}",
        response.describe()
    );
    let realm = response.text(attr::REALM).expect("401 carries REALM");
    let nonce = response.text(attr::NONCE).expect("401 carries NONCE");
    assert_eq!(realm, "test");
    (realm, nonce)
}

fn allocate_with(
    creds: &Credentials,
    extra: impl Fn(&mut stun::MessageWriter<'_>) -> Result<(), stun::EncodeError>,
) -> Vec<u8> {
    build(
        Method::ALLOCATE,
        random_tid(),
        |w| {
            w.add(&Attribute::RequestedTransport(17))?;
            extra(w)
        },
        Some(creds),
        false,
    )
}

/// Unknown comprehension-required attributes get 420 listing them; unknown optional ones are ignored.
fn check_unknown_attributes(conn: &mut Conn) {
    for ty in UNKNOWN_REQUIRED {
        for method in [
            Method::BINDING,
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
        ] {
            let request = build(method, random_tid(), |w| w.raw(ty, &[1, 2, 3, 4, 5]), None, true);
            let response = conn.must_transact(&request);
            assert_eq!(
                response.class(),
                Class::Error,
                "{method:?} with {ty:#06x}: {}",
                response.describe()
            );
            assert_eq!(
                response.error_code(),
                Some(420),
                "{method:?} with {ty:#06x}: {}",
                response.describe()
            );
            assert_eq!(
                response.unknown_attributes(),
                vec![ty],
                "{method:?}: UNKNOWN-ATTRIBUTES"
            );
            assert_eq!(response.method(), method);
        }
    }
    let request = build(
        Method::BINDING,
        random_tid(),
        |w| {
            w.raw(UNKNOWN_REQUIRED[0], &[])?;
            w.raw(0xc0de, b"optional")?;
            w.raw(UNKNOWN_REQUIRED[2], &[0; 7])
        },
        None,
        false,
    );
    let response = conn.must_transact(&request);
    assert_eq!(response.error_code(), Some(420), "{}", response.describe());
    let mut listed = response.unknown_attributes();
    listed.sort_unstable();
    assert_eq!(
        listed,
        vec![UNKNOWN_REQUIRED[0], UNKNOWN_REQUIRED[2]],
        "only the required ones are listed"
    );

    // Comprehension-optional (0x8000-0xFFFF) unknowns are ignored.
    let request = build(
        Method::BINDING,
        random_tid(),
        |w| w.raw(0xc0de, b"optional"),
        None,
        true,
    );
    let response = conn.must_transact(&request);
    assert_eq!(response.class(), Class::Success, "{}", response.describe());
    assert_eq!(response.address(attr::XOR_MAPPED_ADDRESS), Some(conn.local_addr()));

    // Indications are never answered, not even with 420 (RFC 8489 §6.3.2); a Send indication with an unknown
    // required attribute and no allocation is dropped.
    let indications: Vec<Vec<u8>> = UNKNOWN_REQUIRED
        .iter()
        .map(|ty| {
            build_indication(Method::SEND, |w| {
                w.raw(*ty, &[0; 4])?;
                w.add(&Attribute::XorPeerAddress("127.0.0.1:9".parse().expect("addr")))?;
                w.add(&Attribute::Data(b"x")).map(|_| ())
            })
        })
        .collect();
    assert_dropped(conn, &indications, "indications with unknown required attributes");

    // A method nobody defined is a 400.
    let request = build(Method(0x0ff), random_tid(), |_| Ok(()), None, true);
    let response = conn.must_transact(&request);
    assert_eq!(response.error_code(), Some(400), "{}", response.describe());
}

/// Wrong credentials in every way that matters; the right ones still get past to the request's own checks.
fn check_integrity_errors(conn: &mut Conn, rng: &mut StdRng) {
    let (realm, nonce) = challenge(conn);
    let good = Credentials {
        username: "alice".into(),
        realm: realm.clone(),
        nonce: nonce.clone(),
        key: stun::long_term_key_md5("alice", &realm, "pw"),
    };

    // Wrong passwords: 401, with a fresh challenge (RFC 8489 §9.2.4).
    for i in 0..200 {
        let password: String = (0..rng.gen_range(1..24)).map(|_| rng.gen_range('!'..='~')).collect();
        if password == "pw" {
            continue;
        }
        let creds = Credentials {
            key: stun::long_term_key_md5("alice", &realm, &password),
            ..good.clone()
        };
        let response = conn.must_transact(&allocate_with(&creds, |_| Ok(())));
        assert_eq!(
            response.error_code(),
            Some(401),
            "wrong password #{i}: {}",
            response.describe()
        );
        assert!(response.text(attr::NONCE).is_some() && response.text(attr::REALM).is_some());
        assert!(
            !response.message().has_message_integrity(),
            "a 401 cannot be signed with a key we got wrong"
        );
    }

    // MESSAGE-INTEGRITY with the right key, then one byte of it flipped.
    for i in 0..50 {
        let mut request = allocate_with(&good, |_| Ok(()));
        let len = request.len();
        let at = len - 1 - rng.gen_range(0..20);
        request[at] ^= 1 << rng.gen_range(0..8);
        let response = conn.must_transact(&request);
        assert_eq!(
            response.error_code(),
            Some(401),
            "corrupted integrity #{i}: {}",
            response.describe()
        );
    }

    // The bytes it covers changed after signing (LIFETIME value), integrity left as it was.
    let mut request = allocate_with(&good, |w| w.add(&Attribute::Lifetime(600)).map(|_| ()));
    let lifetime_at = Message::parse(&request)
        .expect("parses")
        .attributes()
        .find(|a| a.ty == attr::LIFETIME)
        .map(|a| a.value.as_ptr() as usize - request.as_ptr() as usize)
        .expect("LIFETIME present");
    request[lifetime_at + 3] ^= 0x01;
    let response = conn.must_transact(&request);
    assert_eq!(
        response.error_code(),
        Some(401),
        "tampered body: {}",
        response.describe()
    );

    // Unknown user, wrong realm: 401.
    for (user, realm_used) in [("eve", realm.as_str()), ("alice", "other-realm")] {
        let creds = Credentials {
            username: user.into(),
            realm: realm_used.into(),
            nonce: nonce.clone(),
            key: stun::long_term_key_md5(user, realm_used, "pw"),
        };
        let response = conn.must_transact(&allocate_with(&creds, |_| Ok(())));
        assert_eq!(
            response.error_code(),
            Some(401),
            "{user}@{realm_used}: {}",
            response.describe()
        );
    }

    // MESSAGE-INTEGRITY without USERNAME, REALM and NONCE: 400.
    let mut buf = vec![0u8; 512];
    let mut w = stun::MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, random_tid()).expect("writer");
    w.add(&Attribute::RequestedTransport(17)).expect("attr");
    w.message_integrity(&good.key).expect("mi");
    let len = w.finish();
    let response = conn.must_transact(&buf[..len]);
    assert_eq!(
        response.error_code(),
        Some(400),
        "integrity without credentials: {}",
        response.describe()
    );

    // The right key with a nonce the server never issued: 438 Stale Nonce with a new one.
    for bogus in ["bogus", "obMatJos2AAAAAAAAAAAAAAAAAAAAAAAAAAAA", ""] {
        let creds = Credentials {
            nonce: bogus.into(),
            ..good.clone()
        };
        let response = conn.must_transact(&allocate_with(&creds, |_| Ok(())));
        assert_eq!(
            response.error_code(),
            Some(438),
            "nonce {bogus:?}: {}",
            response.describe()
        );
        assert!(response.text(attr::NONCE).is_some_and(|n| n != bogus));
    }

    // Authenticated but malformed (REQUESTED-TRANSPORT of 3 bytes): 400, signed.
    let request = build(
        Method::ALLOCATE,
        random_tid(),
        |w| w.raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0]),
        Some(&good),
        false,
    );
    let response = conn.must_transact(&request);
    assert_eq!(
        response.error_code(),
        Some(400),
        "malformed attribute: {}",
        response.describe()
    );
    assert!(
        response.message().verify_integrity(&good.key),
        "an authenticated error is signed"
    );

    // Unsupported transport (TCP relay not requested properly): 442.
    let request = build(
        Method::ALLOCATE,
        random_tid(),
        |w| w.add(&Attribute::RequestedTransport(6)).map(|_| ()),
        Some(&good),
        false,
    );
    let response = conn.must_transact(&request);
    assert_eq!(response.error_code(), Some(442), "{}", response.describe());
}

/// Allocates on `client` (IPv4), which must succeed.
fn allocated(client: &mut TurnClient) -> common::Response {
    let allocation = client.allocate(false);
    assert_eq!(
        allocation.class(),
        Class::Success,
        "Allocate: {}",
        allocation.describe()
    );
    allocation
}

/// With an allocation on `client`: ChannelData on unbound channels and Send indications to peers without a
/// permission reach nobody and get no answer; the bound channel and the permitted peer do work.
fn check_unbound_channels(client: &mut TurnClient) {
    let pad = !client.conn.is_udp();
    let allocation = allocated(client);
    let relayed = allocation
        .address(attr::XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS");

    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("peer socket");
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let peer_addr = peer.local_addr().expect("addr");
    // 127.0.0.2 is loopback too, but has no permission.
    let stranger = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).ok();

    let bound = client.channel_bind(0x4000, peer_addr);
    assert_eq!(bound.class(), Class::Success, "ChannelBind: {}", bound.describe());

    // Unbound channels, the far end of the range, and one with a length beyond the datagram.
    let mut frames: Vec<Vec<u8>> = (0x4001..=0x41ffu16)
        .chain([0x4fff, 0x5000, 0x7ffe, 0x7fff])
        .map(|ch| channel_data(ch, format!("unbound {ch:#06x}").as_bytes(), pad))
        .collect();
    if !pad {
        let mut overrun = channel_data(0x4000, b"short", false);
        overrun[3] = 200;
        frames.push(overrun);
    }
    // Send indications without a permission (other IP) or with no DATA.
    if let Some(s) = &stranger {
        let to = s.local_addr().expect("addr");
        for i in 0..50u8 {
            frames.push(build_indication(Method::SEND, |w| {
                w.add(&Attribute::XorPeerAddress(to))?;
                w.add(&Attribute::Data(&[i; 32])).map(|_| ())
            }));
        }
    }
    frames.push(build_indication(Method::SEND, |w| {
        w.add(&Attribute::XorPeerAddress(peer_addr)).map(|_| ())
    }));
    assert_dropped(
        &mut client.conn,
        &frames,
        "ChannelData on unbound channels and Send without permission",
    );
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        if let Ok((n, from)) = peer.recv_from(&mut buf) {
            panic!("peer received {n} bytes from {from} that should have been dropped");
        }
    }
    if let Some(s) = &stranger {
        s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        assert!(
            s.recv_from(&mut buf).is_err(),
            "a peer without permission received data"
        );
    }

    // The bound channel works in both directions, so the silence above was not a dead relay.
    let payload = b"bound channel works";
    let mut echoed = false;
    for _ in 0..5 {
        client.conn.send(&channel_data(0x4000, payload, pad));
        peer.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        if let Ok((n, from)) = peer.recv_from(&mut buf) {
            assert_eq!(&buf[..n], payload);
            assert_eq!(from, relayed, "data arrives from the relayed address");
            echoed = true;
            break;
        }
    }
    assert!(echoed, "ChannelData on the bound channel never reached the peer");
    peer.send_to(b"back", relayed).expect("send back");
    let back = client
        .conn
        .recv(Duration::from_secs(10))
        .expect("ChannelData back to the client");
    assert_eq!(&back[..2], &0x4000u16.to_be_bytes());
    assert_eq!(&back[4..8], b"back");
}

fn build_indication(
    method: Method,
    attrs: impl FnOnce(&mut stun::MessageWriter<'_>) -> Result<(), stun::EncodeError>,
) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut w = stun::MessageWriter::new(&mut buf, method, Class::Indication, random_tid()).expect("writer");
    attrs(&mut w).expect("attrs");
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// Random requests and indications made of random (structurally valid) attributes. Whatever the server answers
/// must be a well-formed response to that transaction, and never a success for a TURN method (nothing here
/// carries valid credentials).
fn random_structured(rng: &mut StdRng, count: usize) -> Vec<Vec<u8>> {
    let types = [
        attr::USERNAME,
        attr::MESSAGE_INTEGRITY,
        attr::MESSAGE_INTEGRITY_SHA256,
        attr::REALM,
        attr::NONCE,
        attr::XOR_PEER_ADDRESS,
        attr::XOR_MAPPED_ADDRESS,
        attr::CHANNEL_NUMBER,
        attr::LIFETIME,
        attr::DATA,
        attr::REQUESTED_TRANSPORT,
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::ADDITIONAL_ADDRESS_FAMILY,
        attr::EVEN_PORT,
        attr::RESERVATION_TOKEN,
        attr::DONT_FRAGMENT,
        attr::PASSWORD_ALGORITHM,
        attr::PASSWORD_ALGORITHMS,
        attr::USERHASH,
        attr::ERROR_CODE,
        attr::UNKNOWN_ATTRIBUTES,
        attr::SOFTWARE,
        attr::PADDING,
        0xc001,
    ];
    let methods = [
        Method::BINDING,
        Method::ALLOCATE,
        Method::REFRESH,
        Method::SEND,
        Method::DATA,
        Method::CREATE_PERMISSION,
        Method::CHANNEL_BIND,
        Method::CONNECT,
    ];
    let classes = [
        Class::Request,
        Class::Request,
        Class::Indication,
        Class::Success,
        Class::Error,
    ];
    (0..count)
        .map(|_| {
            let method = methods[rng.gen_range(0..methods.len())];
            let class = classes[rng.gen_range(0..classes.len())];
            let mut buf = vec![0u8; 1500];
            let mut w = stun::MessageWriter::new(&mut buf, method, class, random_tid()).expect("writer");
            for _ in 0..rng.gen_range(0..8) {
                let ty = types[rng.gen_range(0..types.len())];
                let len = rng.gen_range(0..48);
                let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let _ = w.raw(ty, &value);
            }
            if rng.gen_bool(0.3) {
                let _ = w.fingerprint();
            }
            let len = w.finish();
            buf.truncate(len);
            buf
        })
        .collect()
}

/// Checks the answers to [`random_structured`] input.
fn assert_sane_answers(answers: &[Vec<u8>], sent: &[Vec<u8>]) {
    for bytes in answers {
        let msg = Message::parse(bytes).unwrap_or_else(|e| panic!("unparseable answer {e:?}: {bytes:02x?}"));
        assert!(
            matches!(msg.class(), Class::Success | Class::Error),
            "server sent a {:?} {:?}",
            msg.method(),
            msg.class()
        );
        let tid = msg.transaction_id();
        let request = sent
            .iter()
            .filter_map(|s| Message::parse(s).ok())
            .find(|s| s.transaction_id() == tid)
            .unwrap_or_else(|| panic!("answer to a transaction we never sent"));
        assert_eq!(request.class(), Class::Request, "only requests are answered");
        assert_eq!(request.method(), msg.method(), "answer method");
        if msg.class() == Class::Success {
            assert_eq!(
                msg.method(),
                Method::BINDING,
                "unauthenticated success for {:?}",
                msg.method()
            );
        }
    }
}

/// A short uclient run after the abuse, when coturn's tools are here (the hand-built Binding check always runs).
fn good_uclient_still_served(server: &mut Server, tcp: bool) {
    if !common::have_tool("turnutils_uclient") || !common::have_tool("turnutils_peer") {
        common::skip("turnutils_uclient/turnutils_peer not installed: only the Binding check ran");
        return;
    }
    let peer = EchoPeer::start(common::LOOPBACK);
    let port = if tcp { server.tcp.port() } else { server.udp.port() };
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args([
        "-u",
        "alice",
        "-w",
        "pw",
        "-e",
        "127.0.0.1",
        "-r",
        &peer.addr.port().to_string(),
    ])
    .args(["-p", &port.to_string(), "-n", "10", "-m", "2", "-l", "100"]);
    if tcp {
        cmd.arg("-t");
    }
    cmd.arg("127.0.0.1");
    let out = run_bounded(&mut cmd, Duration::from_secs(120));
    let text = out.all();
    assert!(!out.timed_out, "uclient after abuse timed out:\n{text}");
    assert!(
        text.contains("Total lost packets 0 "),
        "uclient after abuse lost packets:\n{text}"
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "uclient after abuse: {:?}\n{text}",
        out.status
    );
}

#[test]
fn udp_bad_input_is_refused_or_dropped_and_the_server_keeps_serving() {
    let mut server = Server::start(SERVER_ARGS);
    let mut rng = rng();
    let mut conn = Conn::udp(server.udp);

    // 1. Random datagrams in every first-byte class: not STUN (0b10/0b11), ChannelData without an allocation, and
    //    STUN whose header length disagrees with the datagram. Plus the empty datagram.
    let mut garbage: Vec<Vec<u8>> = vec![Vec::new()];
    for i in 0..3000 {
        let len = rng.gen_range(1..=700usize);
        let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        match i % 3 {
            0 => p[0] |= 0x80,
            1 => p[0] = 0x40 | (p[0] & 0x3f),
            _ => {
                p[0] &= 0x3f;
                if p.len() >= 4 {
                    // Any declared length but the true one.
                    let real = p.len().saturating_sub(20) as u16;
                    let mut declared: u16 = rng.gen::<u16>() & !3;
                    if declared == real {
                        declared = declared.wrapping_add(4);
                    }
                    p[2..4].copy_from_slice(&declared.to_be_bytes());
                }
            }
        }
        garbage.push(p);
    }
    assert_dropped(&mut conn, &garbage, "random datagrams");

    // 2. Every truncation of valid messages, a padded one, and a thousand single-bit corruptions.
    let mut broken = Vec::new();
    for sample in fingerprinted_samples() {
        for cut in 0..sample.len() {
            broken.push(sample[..cut].to_vec());
        }
        let mut longer = sample.clone();
        longer.extend_from_slice(&[0, 0, 0, 0]);
        broken.push(longer);
    }
    broken.extend(bit_flips(&mut rng, 1000));
    assert_dropped(&mut conn, &broken, "truncated and corrupted messages");

    // 3. Unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES.
    check_unknown_attributes(&mut conn);

    // 4. Wrong integrities, users, realms and nonces.
    check_integrity_errors(&mut conn, &mut rng);

    // 5. ChannelData for unbound channels and Send without permission, with a live allocation.
    check_unbound_channels(&mut TurnClient::new(Conn::udp(server.udp), "alice", "pw"));

    // 6. Random structurally valid messages: sane answers or silence.
    let random = random_structured(&mut rng, 2000);
    let mut fuzz_conn = Conn::udp(server.udp);
    let answers = send_collect(&mut fuzz_conn, &random);
    assert_sane_answers(&answers, &random);
    assert!(!answers.is_empty(), "hundreds of random requests and not one answer");
    println!("random structured: {} sent, {} answered", random.len(), answers.len());

    // 7. Still alive, and still serving.
    server.assert_alive();
    assert_binding_served(&mut Conn::udp(server.udp));
    assert_binding_served(&mut conn);
    good_uclient_still_served(&mut server, false);
    server.assert_alive();
}

/// TURN-over-TCP and TLS frames cut at any byte, in segments with pauses between them, arrive whole: Bindings are
/// answered in order, and a ChannelData frame of 60 000 bytes, cut across reads, reaches its peer as one datagram.
#[test]
fn stream_frames_cut_anywhere_arrive_whole() {
    let server = Server::start(SERVER_ARGS);
    frames_cut_anywhere_arrive_whole(Conn::tcp(server.tcp));
    let (tls, _) = common::tls_connect(IpAddr::V4(Ipv4Addr::LOCALHOST), server.tls, Duration::from_secs(10))
        .expect("TLS handshake");
    frames_cut_anywhere_arrive_whole(tls);
}

fn frames_cut_anywhere_arrive_whole(conn: Conn) {
    let mut client = TurnClient::new(conn, "alice", "pw");
    allocated(&mut client);
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("peer socket");
    peer.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let bound = client.channel_bind(0x4000, peer.local_addr().expect("addr"));
    assert_eq!(bound.class(), Class::Success, "ChannelBind: {}", bound.describe());

    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let bindings: Vec<Vec<u8>> = (0..3).map(|_| common::binding_request(true)).collect();
    let bytes = [
        bindings[0].clone(),
        channel_data(0x4000, &big, true),
        bindings[1].clone(),
        bindings[2].clone(),
    ]
    .concat();
    // A header byte by byte, a frame's end with the next one's start, and the large frame in pieces.
    let cuts = [1, 1, 1, 1, 17, 3, 25_000, 25_000, 9_990, 30, 1, 1, 2, 100];
    let mut at = 0;
    for cut in cuts.iter().cycle() {
        if at == bytes.len() {
            break;
        }
        let end = (at + cut).min(bytes.len());
        client.conn.send(&bytes[at..end]);
        std::thread::sleep(Duration::from_millis(5));
        at = end;
    }

    let mut buf = vec![0u8; 65_536];
    let (n, _) = peer.recv_from(&mut buf).expect("the large frame's payload at the peer");
    assert_eq!(n, big.len(), "the payload arrived cut or padded");
    assert!(buf[..n] == big[..], "the payload arrived changed");
    for (i, binding) in bindings.iter().enumerate() {
        let answer = client
            .conn
            .recv(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer to Binding {i}"));
        let answer = Message::parse(&answer).expect("a STUN answer");
        let asked = Message::parse(binding).expect("parses");
        assert_eq!(
            answer.transaction_id(),
            asked.transaction_id(),
            "Binding {i} answered out of order"
        );
        assert_eq!(answer.class(), Class::Success);
    }
}

#[test]
fn tcp_bad_input_is_refused_or_dropped_and_the_server_keeps_serving() {
    let mut server = Server::start(SERVER_ARGS);
    let mut rng = rng();

    // 1. Connections that send something neither STUN nor ChannelData are closed without a word.
    for i in 0..100 {
        let mut stream = connect_tcp(server.tcp);
        // Four bytes tell a frame's kind and length; shorter garbage is followed by a half-close.
        let len = if i % 10 == 0 {
            rng.gen_range(1..4usize)
        } else {
            rng.gen_range(4..=600usize)
        };
        let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        p[0] |= 0x80;
        let _ = stream.write_all(&p);
        if len < 4 {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        assert_closed_silently(&mut stream, &format!("garbage connection #{i}"));
    }

    // 2. Connections that stop mid-frame (truncated STUN, ChannelData, or a header alone) and half-close.
    for (i, sample) in fingerprinted_samples().iter().enumerate() {
        for cut in [1, 3, 4, 19, 20, 21, sample.len() / 2, sample.len() - 1] {
            let mut stream = connect_tcp(server.tcp);
            let _ = stream.write_all(&sample[..cut]);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            assert_closed_silently(&mut stream, &format!("sample {i} cut at {cut}"));
        }
    }
    {
        let mut stream = connect_tcp(server.tcp);
        let mut frame = channel_data(0x4000, &[0u8; 100], true);
        frame[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
        let _ = stream.write_all(&frame);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        assert_closed_silently(&mut stream, "ChannelData declaring 64 KiB, then EOF");
    }
    {
        // Before an allocation, a STUN frame declaring 60 KiB is not waited for: closed at once, with the sending
        // half still open (before, its 64 KiB were held until the client sent them or the auth timeout).
        let mut stream = connect_tcp(server.tcp);
        let mut frame = common::binding_request(true);
        frame[2..4].copy_from_slice(&60_000u16.to_be_bytes());
        let _ = stream.write_all(&frame);
        let started = std::time::Instant::now();
        assert_closed_silently(&mut stream, "a 60 KiB STUN frame before an allocation");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "closed only after {:?}",
            started.elapsed()
        );
    }

    // The TLS port: bytes that are not a TLS handshake end the connection (an alert may come first).
    for i in 0..10 {
        let mut stream = connect_tcp(server.tls);
        let mut p: Vec<u8> = (0..rng.gen_range(4..600usize)).map(|_| rng.gen()).collect();
        if i % 2 == 0 {
            // A STUN Binding in the clear, as a misconfigured client would send.
            p = common::binding_request(true);
        }
        let _ = stream.write_all(&p);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut buf = [0u8; 1024];
        let mut total = 0usize;
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) if total + n < 64 * 1024 => total += n,
                Ok(_) => break false,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break false
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "TLS garbage connection #{i} not closed within 20 s");
    }
    server.assert_alive();

    // 3. One connection: thousands of well-framed messages that must be dropped, then a Binding whose answer must
    //    be the first thing that comes back (the stream is ordered, so nothing before it was answered).
    let mut conn = Conn::tcp(server.tcp);
    let mut frames = bit_flips(&mut rng, 2000);
    for ch in 0x4000..0x4400u16 {
        frames.push(channel_data(ch, &[ch as u8; 13], true));
    }
    for _ in 0..200 {
        // Send indications with no allocation on this connection.
        frames.push(build_indication(Method::SEND, |w| {
            w.add(&Attribute::XorPeerAddress(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                9,
            )))?;
            w.add(&Attribute::Data(b"nobody")).map(|_| ())
        }));
    }
    for frame in &frames {
        conn.send(frame);
    }
    let binding = common::binding_request(true);
    conn.send(&binding);
    let first = conn
        .recv(Duration::from_secs(30))
        .expect("an answer to the Binding after the junk");
    let first = Message::parse(&first).expect("a STUN answer");
    let culprit = frames
        .iter()
        .find(|f| Message::parse(f).is_ok_and(|m| m.transaction_id() == first.transaction_id()));
    assert_eq!(
        first.transaction_id(),
        Message::parse(&binding).expect("parses").transaction_id(),
        "the first answer ({:?} {:?}) must be to the Binding, not to junk {:02x?}",
        first.method(),
        first.class(),
        culprit
    );
    assert_eq!(
        first.transaction_id(),
        Message::parse(&binding).expect("parses").transaction_id(),
        "the first answer must be to the Binding: the junk before it was answered"
    );
    assert_eq!(first.class(), Class::Success);

    // 4. Errors that must be answered, over the same connection.
    check_unknown_attributes(&mut conn);
    check_integrity_errors(&mut conn, &mut rng);

    // 5. Unbound channels with a live allocation, on a fresh connection.
    check_unbound_channels(&mut TurnClient::new(Conn::tcp(server.tcp), "alice", "pw"));

    // 6. Random structured messages on their own connection: sane answers or silence.
    let random = random_structured(&mut rng, 2000);
    let mut fuzz_conn = Conn::tcp(server.tcp);
    let answers = send_collect(&mut fuzz_conn, &random);
    assert_sane_answers(&answers, &random);
    assert!(!answers.is_empty(), "hundreds of random requests and not one answer");
    println!(
        "random structured over TCP: {} sent, {} answered",
        random.len(),
        answers.len()
    );

    // 7. Still alive, and still serving, over TCP and UDP.
    server.assert_alive();
    assert_binding_served(&mut Conn::tcp(server.tcp));
    assert_binding_served(&mut conn);
    assert_binding_served(&mut Conn::udp(server.udp));
    good_uclient_still_served(&mut server, true);
    server.assert_alive();
}

/// The server closes the connection (EOF or reset) within a bounded time and sends nothing first.
fn assert_closed_silently(stream: &mut std::net::TcpStream, what: &str) {
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: server answered {n} bytes: {:02x?}", &buf[..n.min(32)]),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            panic!("{what}: connection still open after 20 s")
        }
        Err(_) => {} // reset: closed
    }
}
