#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Long-term credentials, REST credentials and nonces (RFC 8489 §9.2), comprehension-required attributes (420),
//! and the size of unauthenticated answers.

mod common;

use common::*;
use stun::{
    attr, long_term_key_sha256, Attribute, Class, MessageWriter, Method, PasswordAlgorithm, PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
};
use turn::{rest_password, ClientAction};

/// PASSWORD-ALGORITHMS as the server sends it: SHA-256 then MD5, no parameters.
const ALGORITHMS: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];

#[test]
fn first_request_gets_401_with_realm_nonce_and_algorithms_only() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let tid = c.tid();
    let (action, reply) = h.send(
        h.at(0),
        c.five_tuple,
        &c.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)]),
    );
    assert_eq!(action, ClientAction::Reply(reply.len()));
    assert_error(&reply, Method::ALLOCATE, 401);
    let msg = parse(&reply);
    assert_eq!(msg.transaction_id(), tid);
    assert_eq!(
        attribute_types(&msg),
        vec![
            attr::ERROR_CODE,
            attr::REALM,
            attr::NONCE,
            attr::PASSWORD_ALGORITHMS,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(attribute(&msg, attr::REALM), Some(Attribute::Realm(REALM)));
    assert_eq!(
        attribute(&msg, attr::PASSWORD_ALGORITHMS),
        Some(Attribute::PasswordAlgorithms(&ALGORITHMS))
    );
    let Some(Attribute::Nonce(nonce)) = attribute(&msg, attr::NONCE) else {
        panic!()
    };
    // RFC 8489 §9.2: the cookie and the "password algorithms" feature bit.
    assert!(nonce.starts_with("obMatJos2gAAA"), "{nonce}");
    // A request without integrity is the first half of the 401 dance: challenged, not a failure.
    assert_eq!(h.server.stats().challenges, 1);
    assert_eq!(h.server.stats().auth_failures.total(), 0);
    assert_eq!(h.server.stats().error_responses.get(Some(401)), 1);
    assert!(!h.server.has_allocation(&c.five_tuple));
    assert_eq!(h.quotas.total(), 0);
}

#[test]
fn wrong_password_unknown_user_and_wrong_realm_are_401() {
    for (user, password, realm) in [
        ("alice", "not-wonderland", REALM),
        ("mallory", "anything", REALM),
        ("alice", "wonderland", "other.org"),
    ] {
        let mut h = Harness::new();
        let mut c = Client::new("203.0.113.10:50000", user, password);
        c.answer(&mut h, secs(0), Method::ALLOCATE, &[]);
        c.realm = Some(realm.into());
        let reply = c.answer(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        assert_error(&reply, Method::ALLOCATE, 401);
        // A fresh challenge, unsigned (the server has no key it trusts for this request).
        let msg = parse(&reply);
        assert!(
            matches!(attribute(&msg, attr::NONCE), Some(Attribute::Nonce(_))),
            "{user}"
        );
        assert_eq!(attribute(&msg, attr::MESSAGE_INTEGRITY), None);
        assert!(!h.server.has_allocation(&c.five_tuple), "{user}/{realm}");
        assert_eq!(h.quotas.total(), 0);
    }
}

#[test]
fn integrity_without_realm_nonce_or_username_is_400() {
    let mut h = Harness::new();
    let c = Client::alice();
    let tid = c.clone().tid();
    for attrs in [
        vec![Attribute::Username("alice"), Attribute::Realm(REALM)],
        vec![Attribute::Username("alice"), Attribute::Nonce("obMatJos2gAAAxx")],
        vec![Attribute::Realm(REALM), Attribute::Nonce("obMatJos2gAAAxx")],
    ] {
        let mut buf = vec![0u8; 1500];
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).unwrap();
        w.add(&Attribute::RequestedTransport(17)).unwrap();
        for a in &attrs {
            w.add(a).unwrap();
        }
        w.message_integrity(&c.key()).unwrap();
        let len = w.finish();
        let (_, reply) = h.send(h.at(0), c.five_tuple, &buf[..len]);
        assert_error(&reply, Method::ALLOCATE, 400);
    }
}

#[test]
fn stale_nonce_is_438_with_a_fresh_nonce_that_works() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.allocate_with(&mut h, secs(0), &[Attribute::Lifetime(3600)]);
    let old = c.nonce.clone().unwrap();
    // Valid for NONCE_LIFETIME seconds after it was minted at 0.
    assert_success(
        &c.refresh(&mut h, secs(NONCE_LIFETIME - 1), Some(3600)),
        Method::REFRESH,
        &c.key(),
    );

    let tid = c.tid();
    let (_, reply) = h.send(
        h.at(NONCE_LIFETIME),
        c.five_tuple,
        &c.build(Method::REFRESH, tid, &[Attribute::Lifetime(3600)]),
    );
    assert_error(&reply, Method::REFRESH, 438);
    let msg = parse(&reply);
    assert_eq!(attribute(&msg, attr::REALM), Some(Attribute::Realm(REALM)));
    let Some(Attribute::Nonce(fresh)) = attribute(&msg, attr::NONCE) else {
        panic!()
    };
    assert_ne!(fresh, old);
    // RFC 8489 §9.2.4: the 438 is not signed (a stale nonce proves nothing).
    assert_eq!(attribute(&msg, attr::MESSAGE_INTEGRITY), None);

    c.take_challenge(&reply);
    let tid = c.tid();
    let (_, reply) = h.send(
        h.at(NONCE_LIFETIME),
        c.five_tuple,
        &c.build(Method::REFRESH, tid, &[Attribute::Lifetime(3600)]),
    );
    assert_success(&reply, Method::REFRESH, &c.key());
}

#[test]
fn nonce_from_another_client_ip_is_438() {
    let mut h = Harness::new();
    let mut a = Client::alice();
    a.allocate(&mut h, secs(0));
    let mut b = Client::new("203.0.113.99:50000", "alice", "wonderland");
    b.realm = a.realm.clone();
    b.nonce = a.nonce.clone();
    let tid = b.tid();
    let (_, reply) = h.send(
        h.at(1),
        b.five_tuple,
        &b.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)]),
    );
    assert_error(&reply, Method::ALLOCATE, 438);
    // Another port of the same IP shares the nonce.
    let mut same_ip = Client::new("203.0.113.10:50001", "alice", "wonderland");
    same_ip.realm = a.realm.clone();
    same_ip.nonce = a.nonce.clone();
    let tid = same_ip.tid();
    let (action, _) = h.send(
        h.at(1),
        same_ip.five_tuple,
        &same_ip.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)]),
    );
    assert!(matches!(action, ClientAction::BindRelay(_)), "{action:?}");
}

/// `expiry:user` with password base64(HMAC-SHA1(secret, username)).
fn rest_client(client: &str, expiry: u64, secret: &[u8]) -> Client {
    let username = format!("{expiry}:carol");
    let password = rest_password(secret, &username);
    Client::new(client, &username, &password)
}

#[test]
fn rest_credentials_from_every_configured_secret_work_until_expiry() {
    let mut h = Harness::new();
    let expiry = UNIX_T0 + 100;
    let mut new = rest_client("203.0.113.10:50000", expiry, b"new-secret");
    new.allocate(&mut h, secs(0));
    let mut old = rest_client("203.0.113.10:50001", expiry, b"old-secret");
    old.allocate(&mut h, secs(99));
    assert_eq!(h.quotas.total(), 2);

    let mut forged = rest_client("203.0.113.10:50002", expiry, b"guessed");
    let reply = forged.answer(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_error(&reply, Method::ALLOCATE, 401);

    // At the expiry second the credential is refused for a new allocation…
    let mut late = rest_client("203.0.113.10:50003", expiry, b"new-secret");
    let reply = late.answer(
        &mut h,
        secs(100),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17)],
    );
    assert_error(&reply, Method::ALLOCATE, 401);
    // …but the allocation it created keeps working: a call outlives the short-lived credential that started it.
    // Refreshes, permissions and channels go on for as long as the allocation is refreshed.
    for at in [100, 650, 1200] {
        let reply = new.refresh(&mut h, secs(at), Some(600));
        assert_eq!(parse(&reply).class(), Class::Success, "refresh at +{at} s");
    }
    let reply = new.answer(
        &mut h,
        secs(1201),
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress("198.51.100.7:9".parse().unwrap())],
    );
    assert_eq!(parse(&reply).class(), Class::Success);
    // Once the allocation is gone, the expired credential is refused again.
    let reply = new.refresh(&mut h, secs(1201), Some(0));
    assert_eq!(parse(&reply).class(), Class::Success);
    assert_error(&new.refresh(&mut h, secs(1202), Some(600)), Method::REFRESH, 401);

    // A username that is not `expiry:…` and not a static user is unknown.
    let mut junk = Client::new("203.0.113.10:50004", "carol", &rest_password(b"new-secret", "carol"));
    let reply = junk.answer(&mut h, secs(0), Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_error(&reply, Method::ALLOCATE, 401);
}

/// A 15-minute call on a 60 s REST credential, with the refresh schedule of a browser (libwebrtc): ChannelBind at
/// once, CreatePermission every 4 minutes, Refresh a minute before the allocation's 10 minutes run out, ChannelBind
/// again before its 10 minutes, ChannelData both ways every 10 s. Every one of them after the credential's expiry
/// is accepted — it is checked only by an Allocate — while a new Allocate with it (an ICE restart) is refused, which
/// is why the SDK fetches a fresh credential before the expiry (docs/sdk.md, "Calls that survive").
#[test]
fn a_call_outlives_its_60_s_credential_and_keeps_relaying() {
    let mut h = Harness::new();
    let peer = addr("198.51.100.7:40000");
    let channel = 0x4000;
    let mut c = rest_client("203.0.113.10:50000", UNIX_T0 + 60, b"new-secret");
    let id = c.allocate(&mut h, secs(0));
    assert_success(
        &c.channel_bind(&mut h, secs(1), channel, peer),
        Method::CHANNEL_BIND,
        &c.key(),
    );

    let relays_both_ways = |h: &mut Harness, c: &Client, at: u64| {
        let (action, _) = h.send(h.at(at), c.five_tuple, &channel_data(channel, b"ping"));
        assert!(
            matches!(action, ClientAction::Relay { .. }),
            "client to peer at +{at} s: {action:?}"
        );
        let mut buf = vec![0u8; turn::PEER_HEADROOM + 4 + turn::PEER_TAILROOM];
        buf[turn::PEER_HEADROOM..turn::PEER_HEADROOM + 4].copy_from_slice(b"pong");
        assert!(
            h.server.handle_peer(h.at(at), id, peer, &mut buf, 4).is_some(),
            "peer to client at +{at} s"
        );
    };
    for at in (10..=900).step_by(10) {
        match at {
            240 | 480 | 720 => {
                let reply = c.create_permission(&mut h, secs(at), peer);
                assert_success(&reply, Method::CREATE_PERMISSION, &c.key());
            }
            540 => assert_success(&c.refresh(&mut h, secs(at), Some(600)), Method::REFRESH, &c.key()),
            560 => assert_success(
                &c.channel_bind(&mut h, secs(at), channel, peer),
                Method::CHANNEL_BIND,
                &c.key(),
            ),
            _ => {}
        }
        relays_both_ways(&mut h, &c, at);
    }

    // The same expired credential cannot start a new allocation (an ICE restart gathers anew).
    let mut restart = rest_client("203.0.113.10:50001", UNIX_T0 + 60, b"new-secret");
    let reply = restart.answer(
        &mut h,
        secs(900),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17)],
    );
    assert_error(&reply, Method::ALLOCATE, 401);
    // …nor can it be used by another 5-tuple for the held allocation's requests.
    let mut other = rest_client("203.0.113.10:50002", UNIX_T0 + 60, b"new-secret");
    assert_error(&other.refresh(&mut h, secs(900), Some(600)), Method::REFRESH, 401);
}

/// An Allocate from `c` (challenged already) signed with MESSAGE-INTEGRITY-SHA256 over `key`; with `algorithms`,
/// PASSWORD-ALGORITHM SHA-256 and that PASSWORD-ALGORITHMS.
fn allocate_sha256(
    h: &mut Harness,
    c: &mut Client,
    key: &stun::IntegrityKey,
    algorithms: Option<&[u8]>,
) -> (ClientAction, Vec<u8>) {
    let tid = c.tid();
    let mut buf = vec![0u8; 1500];
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).unwrap();
    w.add(&Attribute::RequestedTransport(17)).unwrap();
    w.add(&Attribute::Username("alice")).unwrap();
    w.add(&Attribute::Realm(REALM)).unwrap();
    w.add(&Attribute::Nonce(c.nonce.as_deref().unwrap())).unwrap();
    if let Some(algorithms) = algorithms {
        w.add(&Attribute::PasswordAlgorithm(PasswordAlgorithm {
            algorithm: PASSWORD_ALGORITHM_SHA256,
            params: &[],
        }))
        .unwrap();
        w.add(&Attribute::PasswordAlgorithms(algorithms)).unwrap();
    }
    w.message_integrity_sha256(key).unwrap();
    w.fingerprint().unwrap();
    let len = w.finish();
    h.send(h.at(0), c.five_tuple, &buf[..len])
}

#[test]
fn sha256_integrity_is_accepted_and_answered_in_kind() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    c.answer(&mut h, secs(0), Method::ALLOCATE, &[]);
    let key = long_term_key_sha256("alice", REALM, "wonderland");
    let send = |h: &mut Harness, c: &mut Client, algorithms: &[u8]| allocate_sha256(h, c, &key, Some(algorithms));
    // Bid-down protection: a PASSWORD-ALGORITHMS other than the one the server sent is 400.
    let md5_only = [0, PASSWORD_ALGORITHM_MD5 as u8, 0, 0];
    let (_, reply) = send(&mut h, &mut c, &md5_only);
    assert_error(&reply, Method::ALLOCATE, 400);

    let (action, _) = send(&mut h, &mut c, &ALGORITHMS);
    let ClientAction::BindRelay(request) = action else {
        panic!("{action:?}")
    };
    let (_, reply) = h.bind(h.at(0), &request);
    let msg = parse(&reply);
    assert_eq!(msg.class(), Class::Success);
    assert!(msg.has_message_integrity_sha256());
    assert!(!msg.has_message_integrity());
    assert!(msg.verify_integrity(&key));
}

/// RFC 8489 §9.2.4: a request with neither PASSWORD-ALGORITHM nor PASSWORD-ALGORITHMS is processed as though
/// PASSWORD-ALGORITHM were MD5, whatever its HMAC: MESSAGE-INTEGRITY-SHA256 over the MD5 key is accepted, and answered
/// with the same. Before, such a request was checked against the SHA-256 key alone and refused with 401. A SHA-256
/// key (what was taken before) still works.
#[test]
fn sha256_integrity_without_algorithm_attributes_uses_the_md5_key() {
    let mut h = Harness::new();
    let send = |h: &mut Harness, c: &mut Client, key: &stun::IntegrityKey| allocate_sha256(h, c, key, None);
    let keys = [
        (
            stun::long_term_key_md5("alice", REALM, "wonderland"),
            "203.0.113.10:50001",
        ),
        (long_term_key_sha256("alice", REALM, "wonderland"), "203.0.113.10:50002"),
    ];
    for (key, from) in keys {
        let mut c = Client::new(from, "alice", "wonderland");
        c.answer(&mut h, secs(0), Method::ALLOCATE, &[]);
        let (action, reply) = send(&mut h, &mut c, &key);
        let ClientAction::BindRelay(request) = action else {
            panic!("{action:?}: {:?}", parse(&reply).decode(attr::ERROR_CODE))
        };
        let (_, reply) = h.bind(h.at(0), &request);
        let msg = parse(&reply);
        assert_eq!(msg.class(), Class::Success);
        assert!(msg.has_message_integrity_sha256() && msg.verify_integrity(&key));
    }
}

#[test]
fn unknown_comprehension_required_attributes_are_420_with_their_list() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let unknown = |ty: u16| {
        Attribute::Unknown(stun::RawAttribute {
            ty,
            value: &[1, 2, 3, 4],
        })
    };
    let reply = c.answer(
        &mut h,
        secs(0),
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), unknown(0x7F00), unknown(0x0055)],
    );
    assert_error(&reply, Method::ALLOCATE, 420);
    let msg = parse(&reply);
    assert_eq!(
        attribute(&msg, attr::UNKNOWN_ATTRIBUTES),
        Some(Attribute::UnknownAttributes(&[0x7F, 0x00, 0x00, 0x55]))
    );
    assert!(!h.server.has_allocation(&c.five_tuple));

    // The same for a Binding request; comprehension-optional types (0x8000-0xFFFF) are ignored.
    let tid = c.tid();
    let (_, reply) = h.send(
        h.at(0),
        c.five_tuple,
        &c.build(Method::BINDING, tid, &[unknown(0x0030)]),
    );
    assert_error(&reply, Method::BINDING, 420);
    let (_, reply) = c.allocate_with(&mut h, secs(0), &[unknown(0xC0DE)]);
    assert_success(&reply, Method::ALLOCATE, &c.key());

    // RFC 8489 §6.3, §9.2.4: an authenticated request is authenticated first, and its 420 is signed. Before, it was
    // answered unsigned, and a client checking every answer's integrity discarded it and retransmitted.
    let reply = c.answer(&mut h, secs(1), Method::REFRESH, &[unknown(0x0055)]);
    assert_error(&reply, Method::REFRESH, 420);
    assert!(parse(&reply).verify_integrity(&c.key()), "the 420 is signed");
    assert!(h.server.has_allocation(&c.five_tuple));
}

#[test]
fn unknown_request_method_is_400_and_unknown_indication_is_dropped() {
    let mut h = Harness::new();
    let c = Client::alice();
    let tid = c.clone().tid();
    let (_, reply) = h.send(h.at(0), c.five_tuple, &c.build(Method(0x0FF), tid, &[]));
    assert_error(&reply, Method(0x0FF), 400);
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(&mut buf, Method::DATA, Class::Indication, tid).unwrap();
    w.fingerprint().unwrap();
    let len = w.finish();
    assert_eq!(h.send(h.at(0), c.five_tuple, &buf[..len]).0, ClientAction::Drop);
    // A Send indication without an allocation, and garbage, are dropped.
    let send = c.clone().send_indication(addr(PEER), b"x");
    assert_eq!(h.send(h.at(0), c.five_tuple, &send).0, ClientAction::Drop);
    assert_eq!(h.send(h.at(0), c.five_tuple, &[0xFF; 24]).0, ClientAction::Drop);
    assert_eq!(h.send(h.at(0), c.five_tuple, &[]).0, ClientAction::Drop);
}

#[test]
fn bad_fingerprint_is_dropped_silently() {
    let mut h = Harness::new();
    let mut c = Client::alice();
    let tid = c.tid();
    let mut request = c.build(Method::ALLOCATE, tid, &[Attribute::RequestedTransport(17)]);
    let last = request.len() - 1;
    request[last] ^= 1;
    assert_eq!(h.send(h.at(0), c.five_tuple, &request).0, ClientAction::Drop);
    assert_eq!(h.server.stats().malformed_packets, 1);
}

/// Unauthenticated answers (401, 438, 420, 400) carry no SOFTWARE and nothing that echoes the request, so their
/// size does not grow with what a spoofer sends: a 401 is 120 bytes with this realm (20 header, 20 ERROR-CODE,
/// 16 REALM, 44 NONCE, 12 PASSWORD-ALGORITHMS, 8 FINGERPRINT), whatever the request.
#[test]
fn unauthenticated_answers_have_a_size_independent_of_the_request() {
    let mut h = Harness::new();
    let c = Client::alice();
    let tid = c.clone().tid();
    let mut sizes = Vec::new();
    for padding in [0usize, 100, 1000] {
        let pad = vec![0u8; padding];
        let mut attrs = vec![Attribute::RequestedTransport(17)];
        if padding > 0 {
            attrs.push(Attribute::Software(std::str::from_utf8(&pad).unwrap()));
        }
        let request = c.build(Method::ALLOCATE, tid, &attrs);
        let (_, reply) = h.send(h.at(0), c.five_tuple, &request);
        assert_error(&reply, Method::ALLOCATE, 401);
        assert_eq!(attribute(&parse(&reply), attr::SOFTWARE), None);
        sizes.push(reply.len());
    }
    assert_eq!(sizes, vec![120, 120, 120]);

    // 420 lists at most 8 types, 2 bytes each, for attributes that cost the request at least 4 bytes each.
    let mut c = Client::alice();
    let unknown: Vec<_> = (0x0060..0x0070u16)
        .map(|ty| Attribute::Unknown(stun::RawAttribute { ty, value: &[] }))
        .collect();
    let tid = c.tid();
    let request = c.build(Method::ALLOCATE, tid, &unknown);
    let (_, reply) = h.send(h.at(0), c.five_tuple, &request);
    assert_error(&reply, Method::ALLOCATE, 420);
    let msg = parse(&reply);
    let Some(Attribute::UnknownAttributes(list)) = attribute(&msg, attr::UNKNOWN_ATTRIBUTES) else {
        panic!()
    };
    assert_eq!(list.len(), 16);
    assert!(reply.len() < request.len(), "{} >= {}", reply.len(), request.len());
}
