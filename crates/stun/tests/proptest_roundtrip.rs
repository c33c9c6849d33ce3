#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Property tests: whatever [`MessageWriter`] writes, [`Message::parse`] reads back attribute for attribute, with
//! integrity and fingerprint verifying; and no input makes the parser or an attribute decoder panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use stun::{
    attr, Attribute, ChannelData, Class, ErrorCode, IntegrityKey, Message, MessageWriter, Method, PasswordAlgorithm,
    RawAttribute, TransactionId, HEADER_LEN,
};

/// An attribute that owns its value, so a strategy can produce it; [`Owned::view`] borrows it as an [`Attribute`].
#[derive(Debug, Clone)]
enum Owned {
    Address(u16, SocketAddr),
    Text(u16, String),
    UserHash([u8; 32]),
    ErrorCode(u16, String),
    UnknownAttributes(Vec<u8>),
    PasswordAlgorithms(Vec<u8>),
    PasswordAlgorithm(u16, Vec<u8>),
    ChannelNumber(u16),
    Lifetime(u32),
    Data(Vec<u8>),
    RequestedAddressFamily(u8),
    AdditionalAddressFamily(u8),
    AddressErrorCode(u8, u16, String),
    EvenPort(bool),
    RequestedTransport(u8),
    DontFragment,
    ReservationToken([u8; 8]),
    Icmp(u8, u8, u32),
    ChangeRequest(bool, bool),
    ResponsePort(u16),
    Padding(Vec<u8>),
    Priority(u32),
    UseCandidate,
    IceControlled(u64),
    IceControlling(u64),
    ConnectionId(u32),
    Unknown(u16, Vec<u8>),
}

impl Owned {
    fn view(&self) -> Attribute<'_> {
        match self {
            Owned::Address(ty, a) => match *ty {
                attr::MAPPED_ADDRESS => Attribute::MappedAddress(*a),
                attr::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(*a),
                attr::XOR_PEER_ADDRESS => Attribute::XorPeerAddress(*a),
                attr::XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(*a),
                attr::ALTERNATE_SERVER => Attribute::AlternateServer(*a),
                attr::RESPONSE_ORIGIN => Attribute::ResponseOrigin(*a),
                attr::OTHER_ADDRESS => Attribute::OtherAddress(*a),
                ty => Attribute::LegacyAddress(ty, *a),
            },
            Owned::Text(ty, s) => match *ty {
                attr::USERNAME => Attribute::Username(s),
                attr::REALM => Attribute::Realm(s),
                attr::NONCE => Attribute::Nonce(s),
                attr::SOFTWARE => Attribute::Software(s),
                _ => Attribute::AlternateDomain(s),
            },
            Owned::UserHash(h) => Attribute::UserHash(h),
            Owned::ErrorCode(code, reason) => Attribute::ErrorCode(ErrorCode { code: *code, reason }),
            Owned::UnknownAttributes(v) => Attribute::UnknownAttributes(v),
            Owned::PasswordAlgorithms(v) => Attribute::PasswordAlgorithms(v),
            Owned::PasswordAlgorithm(algorithm, params) => Attribute::PasswordAlgorithm(PasswordAlgorithm {
                algorithm: *algorithm,
                params,
            }),
            Owned::ChannelNumber(n) => Attribute::ChannelNumber(*n),
            Owned::Lifetime(v) => Attribute::Lifetime(*v),
            Owned::Data(v) => Attribute::Data(v),
            Owned::RequestedAddressFamily(f) => Attribute::RequestedAddressFamily(*f),
            Owned::AdditionalAddressFamily(f) => Attribute::AdditionalAddressFamily(*f),
            Owned::AddressErrorCode(family, code, reason) => Attribute::AddressErrorCode {
                family: *family,
                code: *code,
                reason,
            },
            Owned::EvenPort(reserve) => Attribute::EvenPort { reserve: *reserve },
            Owned::RequestedTransport(p) => Attribute::RequestedTransport(*p),
            Owned::DontFragment => Attribute::DontFragment,
            Owned::ReservationToken(t) => Attribute::ReservationToken(*t),
            Owned::Icmp(icmp_type, code, data) => Attribute::Icmp {
                icmp_type: *icmp_type,
                code: *code,
                data: *data,
            },
            Owned::ChangeRequest(change_ip, change_port) => Attribute::ChangeRequest {
                change_ip: *change_ip,
                change_port: *change_port,
            },
            Owned::ResponsePort(p) => Attribute::ResponsePort(*p),
            Owned::Padding(v) => Attribute::Padding(v),
            Owned::Priority(v) => Attribute::Priority(*v),
            Owned::UseCandidate => Attribute::UseCandidate,
            Owned::IceControlled(v) => Attribute::IceControlled(*v),
            Owned::IceControlling(v) => Attribute::IceControlling(*v),
            Owned::ConnectionId(v) => Attribute::ConnectionId(*v),
            Owned::Unknown(ty, v) => Attribute::Unknown(RawAttribute { ty: *ty, value: v }),
        }
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Text of any Unicode, kept within the attribute's byte limit (RFC 8489 §14).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[ -~]{0,40}").unwrap(),
        proptest::collection::vec(any::<char>(), 0..max_chars).prop_map(|c| c.into_iter().collect()),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// A PASSWORD-ALGORITHMS value: entries with their parameters padded to four bytes (RFC 8489 §14.11).
fn password_algorithms() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<u16>(), bytes(9)), 0..4).prop_map(|entries| {
        let mut v = Vec::new();
        for (algorithm, params) in entries {
            v.extend_from_slice(&algorithm.to_be_bytes());
            v.extend_from_slice(&(params.len() as u16).to_be_bytes());
            v.extend_from_slice(&params);
            v.resize(v.len().next_multiple_of(4), 0);
        }
        v
    })
}

/// An attribute type the codec does not know, so it must come back as [`Attribute::Unknown`].
fn unknown_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("known attribute type", |&ty| {
        matches!(
            Attribute::decode(RawAttribute { ty, value: &[] }, &TransactionId::new([0; 12])),
            Ok(Attribute::Unknown(_))
        )
    })
}

fn attribute() -> impl Strategy<Value = Owned> {
    let address_types = prop::sample::select(vec![
        attr::MAPPED_ADDRESS,
        attr::XOR_MAPPED_ADDRESS,
        attr::XOR_PEER_ADDRESS,
        attr::XOR_RELAYED_ADDRESS,
        attr::ALTERNATE_SERVER,
        attr::RESPONSE_ORIGIN,
        attr::OTHER_ADDRESS,
        attr::RESPONSE_ADDRESS,
        attr::SOURCE_ADDRESS,
        attr::CHANGED_ADDRESS,
    ]);
    let text_types = prop::sample::select(vec![
        attr::USERNAME,
        attr::REALM,
        attr::NONCE,
        attr::SOFTWARE,
        attr::ALTERNATE_DOMAIN,
    ]);
    prop_oneof![
        4 => (address_types, socket_addr()).prop_map(|(ty, a)| Owned::Address(ty, a)),
        // USERNAME is limited to 513 bytes and ALTERNATE-DOMAIN to 255: 60 chars of at most 4 bytes fit both.
        3 => (text_types, text(60)).prop_map(|(ty, s)| Owned::Text(ty, s)),
        1 => any::<[u8; 32]>().prop_map(Owned::UserHash),
        2 => (300u16..700, text(60)).prop_map(|(c, r)| Owned::ErrorCode(c, r)),
        1 => proptest::collection::vec(any::<u16>(), 0..6)
            .prop_map(|l| Owned::UnknownAttributes(l.iter().flat_map(|t| t.to_be_bytes()).collect())),
        1 => password_algorithms().prop_map(Owned::PasswordAlgorithms),
        1 => (any::<u16>(), bytes(9)).prop_map(|(a, p)| Owned::PasswordAlgorithm(a, p)),
        1 => any::<u16>().prop_map(Owned::ChannelNumber),
        1 => any::<u32>().prop_map(Owned::Lifetime),
        2 => bytes(300).prop_map(Owned::Data),
        1 => prop::sample::select(vec![1u8, 2]).prop_map(Owned::RequestedAddressFamily),
        1 => prop::sample::select(vec![1u8, 2]).prop_map(Owned::AdditionalAddressFamily),
        1 => (any::<u8>(), 300u16..700, text(30)).prop_map(|(f, c, r)| Owned::AddressErrorCode(f, c, r)),
        1 => any::<bool>().prop_map(Owned::EvenPort),
        1 => any::<u8>().prop_map(Owned::RequestedTransport),
        1 => Just(Owned::DontFragment),
        1 => any::<[u8; 8]>().prop_map(Owned::ReservationToken),
        1 => (0u8..128, any::<u8>(), any::<u32>()).prop_map(|(t, c, d)| Owned::Icmp(t, c, d)),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(i, p)| Owned::ChangeRequest(i, p)),
        1 => any::<u16>().prop_map(Owned::ResponsePort),
        1 => bytes(40).prop_map(Owned::Padding),
        1 => any::<u32>().prop_map(Owned::Priority),
        1 => Just(Owned::UseCandidate),
        1 => any::<u64>().prop_map(Owned::IceControlled),
        1 => any::<u64>().prop_map(Owned::IceControlling),
        1 => any::<u32>().prop_map(Owned::ConnectionId),
        2 => (unknown_type(), bytes(40)).prop_map(|(t, v)| Owned::Unknown(t, v)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop::sample::select(vec![Class::Request, Class::Indication, Class::Success, Class::Error])
}

fn transaction_id() -> impl Strategy<Value = TransactionId> {
    prop_oneof![
        3 => any::<[u8; 12]>().prop_map(TransactionId::new),
        // Classic RFC 3489 ids: no magic cookie.
        1 => any::<[u8; 16]>().prop_map(|bytes| TransactionId { bytes }),
    ]
}

#[derive(Debug, Clone)]
struct Spec {
    method: u16,
    class: Class,
    tid: TransactionId,
    attributes: Vec<Owned>,
    /// Short-term password or long-term key; lengths on both sides of 32 and 64 bytes.
    key: Option<Vec<u8>>,
    integrity: bool,
    integrity_sha256: bool,
    fingerprint: bool,
    /// What the buffer holds before writing, so unwritten padding shows up.
    junk: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u16..0x1000,
        class(),
        transaction_id(),
        proptest::collection::vec(attribute(), 0..12),
        bytes(80),
        any::<(bool, bool, bool)>(),
        any::<u8>(),
    )
        .prop_map(
            |(method, class, tid, attributes, key, (integrity, integrity_sha256, fingerprint), junk)| Spec {
                method,
                class,
                tid,
                attributes,
                key: (integrity || integrity_sha256).then_some(key),
                integrity,
                integrity_sha256,
                fingerprint,
                junk,
            },
        )
}

fn write(spec: &Spec, buf: &mut [u8]) -> usize {
    buf.fill(spec.junk);
    let mut w = MessageWriter::new(buf, Method(spec.method), spec.class, spec.tid).unwrap();
    for a in &spec.attributes {
        w.add(&a.view()).unwrap();
    }
    let key = spec.key.as_deref().map(IntegrityKey::from_bytes);
    if let Some(key) = &key {
        if spec.integrity {
            w.message_integrity(key).unwrap();
        }
        if spec.integrity_sha256 {
            w.message_integrity_sha256(key).unwrap();
        }
    }
    if spec.fingerprint {
        w.fingerprint().unwrap();
    }
    w.finish()
}

/// Walks the written bytes independently of the parser: every attribute is 4-aligned, its padding is zero, and
/// its type/length are what the writer was asked for.
fn check_layout(spec: &Spec, bytes: &[u8]) {
    assert_eq!(bytes.len() % 4, 0);
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        bytes.len() - HEADER_LEN
    );
    assert_eq!(bytes[4..20], spec.tid.bytes);
    let mut at = HEADER_LEN;
    let mut types = Vec::new();
    while at < bytes.len() {
        let ty = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        let padded = len.next_multiple_of(4);
        assert!(
            bytes[at + 4 + len..at + 4 + padded].iter().all(|&b| b == 0),
            "padding of {ty:#06x} is not zero"
        );
        types.push(ty);
        at += 4 + padded;
    }
    assert_eq!(at, bytes.len());
    let mut expected: Vec<u16> = spec.attributes.iter().map(|a| a.view().ty()).collect();
    if spec.key.is_some() && spec.integrity {
        expected.push(attr::MESSAGE_INTEGRITY);
    }
    if spec.key.is_some() && spec.integrity_sha256 {
        expected.push(attr::MESSAGE_INTEGRITY_SHA256);
    }
    if spec.fingerprint {
        expected.push(attr::FINGERPRINT);
    }
    assert_eq!(types, expected);
}

/// Parses and decodes everything reachable from `bytes`; must never panic, whatever the bytes.
fn exercise(bytes: &[u8]) {
    let key = IntegrityKey::from_bytes(b"key");
    if let Ok(msg) = Message::parse(bytes) {
        for raw in msg.attributes() {
            let _ = Attribute::decode(raw, &msg.transaction_id());
            if let Ok(Attribute::UnknownAttributes(v)) = Attribute::decode(raw, &msg.transaction_id()) {
                let _ = Attribute::u16_list(v).count();
            }
            if let Ok(Attribute::PasswordAlgorithms(v)) = Attribute::decode(raw, &msg.transaction_id()) {
                let _ = Attribute::password_algorithms(v).count();
            }
        }
        let _ = msg.verify_integrity(&key);
        let _ = msg.check_fingerprint();
        let _ = msg.is_rfc3489();
    }
    let _ = ChannelData::parse(bytes);
    let _ = stun::stream_frame_len(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn write_then_parse_round_trips(spec in spec()) {
        let mut buf = vec![0u8; 16 * 1024];
        let n = write(&spec, &mut buf);
        let bytes = &buf[..n];
        check_layout(&spec, bytes);

        let msg = Message::parse(bytes).unwrap();
        prop_assert_eq!(msg.method(), Method(spec.method));
        prop_assert_eq!(msg.class(), spec.class);
        prop_assert_eq!(msg.transaction_id(), spec.tid);
        prop_assert_eq!(msg.is_rfc3489(), !spec.tid.has_magic_cookie());
        prop_assert_eq!(stun::stream_frame_len(bytes), Ok(Some(n)));

        let decoded: Vec<Attribute<'_>> = msg
            .attributes()
            .map(|raw| Attribute::decode(raw, &msg.transaction_id()).unwrap())
            .collect();
        let expected: Vec<Attribute<'_>> = spec.attributes.iter().map(Owned::view).collect();
        prop_assert_eq!(&decoded, &expected);
        for a in &decoded {
            if let Attribute::PasswordAlgorithms(v) = a {
                // Every entry written comes back.
                let total: usize = Attribute::password_algorithms(v).map(|p| 4 + p.params.len().next_multiple_of(4)).sum();
                prop_assert_eq!(total, v.len());
            }
            if let Attribute::UnknownAttributes(v) = a {
                prop_assert_eq!(Attribute::u16_list(v).count() * 2, v.len());
            }
        }

        let mi = spec.key.is_some() && spec.integrity;
        let mi256 = spec.key.is_some() && spec.integrity_sha256;
        prop_assert_eq!(msg.has_message_integrity(), mi);
        prop_assert_eq!(msg.has_message_integrity_sha256(), mi256);
        prop_assert_eq!(msg.has_fingerprint(), spec.fingerprint);
        prop_assert!(msg.check_fingerprint().is_ok());
        match &spec.key {
            Some(key) => {
                prop_assert!(msg.verify_integrity(&IntegrityKey::from_bytes(key)));
                // HMAC zero-pads keys, so appending a zero byte would give the same key: change a bit instead.
                let mut wrong = key.clone();
                match wrong.first_mut() {
                    Some(b) => *b ^= 1,
                    None => wrong.push(1),
                }
                prop_assert!(!msg.verify_integrity(&IntegrityKey::from_bytes(&wrong)));
            }
            None => prop_assert!(!msg.verify_integrity(&IntegrityKey::from_bytes(b"anything"))),
        }
    }

    /// Any single bit flip before the integrity attributes is caught by integrity and by the fingerprint.
    #[test]
    fn bit_flips_are_detected(spec in spec(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut buf = vec![0u8; 16 * 1024];
        let n = write(&spec, &mut buf);
        let protected = n
            - if spec.fingerprint { 8 } else { 0 }
            - if spec.key.is_some() && spec.integrity_sha256 { 36 } else { 0 }
            - if spec.key.is_some() && spec.integrity { 24 } else { 0 };
        // Skip the length field: changing it makes the message unparseable, which is detection too.
        let i = at.index(protected);
        prop_assume!(!(2..4).contains(&i));
        buf[i] ^= 1 << bit;
        exercise(&buf[..n]);
        let Ok(msg) = Message::parse(&buf[..n]) else { return Ok(()) };
        if spec.fingerprint && msg.has_fingerprint() {
            prop_assert!(msg.check_fingerprint().is_err());
        }
        if let Some(key) = &spec.key {
            prop_assert!(!msg.verify_integrity(&IntegrityKey::from_bytes(key)));
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in bytes(600)) {
        exercise(&bytes);
    }

    /// Random attribute bytes behind a header whose length is right, so the attribute walk is reached.
    #[test]
    fn parse_never_panics_behind_a_valid_header(
        ty in 0u16..0x4000,
        tid in any::<[u8; 16]>(),
        words in proptest::collection::vec(any::<[u8; 4]>(), 0..64),
        // Runs of well-formed attribute headers make deeper paths likely.
        headers in proptest::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![
            attr::MESSAGE_INTEGRITY, attr::MESSAGE_INTEGRITY_SHA256, attr::FINGERPRINT, attr::XOR_MAPPED_ADDRESS,
            attr::ERROR_CODE, attr::PASSWORD_ALGORITHMS, attr::PASSWORD_ALGORITHM, attr::USERNAME,
        ]), 0u16..40), 0..8),
    ) {
        let mut bytes = Vec::with_capacity(20 + words.len() * 4);
        bytes.extend_from_slice(&ty.to_be_bytes());
        bytes.extend_from_slice(&((words.len() * 4) as u16).to_be_bytes());
        bytes.extend_from_slice(&tid);
        bytes.extend(words.iter().flatten());
        if !words.is_empty() {
            for (at, aty, len) in headers {
                let i = 20 + at.index(words.len()) * 4;
                bytes[i..i + 2].copy_from_slice(&aty.to_be_bytes());
                bytes[i + 2..i + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        exercise(&bytes);
    }

    #[test]
    fn every_attribute_type_decodes_without_panicking(ty in any::<u16>(), value in bytes(80), tid in any::<[u8; 16]>()) {
        let tid = TransactionId { bytes: tid };
        if let Ok(a) = Attribute::decode(RawAttribute { ty, value: &value }, &tid) {
            prop_assert_eq!(a.ty(), ty);
        }
    }
}
