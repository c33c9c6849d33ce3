#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Differential tests against the `stun-types` crate (an independent STUN codec): the same message written by
//! both encoders is byte-identical; each parses the other's output to the same method, class, transaction id,
//! attributes and integrity verdicts; and on mutated messages both parsers agree wherever both accept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use stun::{
    attr, long_term_key_md5, Attribute, Class, ErrorCode, IntegrityKey, Message, MessageWriter, Method,
    PasswordAlgorithm, RawAttribute, TransactionId,
};
use stun_types::attribute as st_attr;
use stun_types::message as st;
use stun_types::prelude::{Attribute as _, AttributeFromRaw as _, MessageWrite as _, MessageWriteExt as _};

/// An attribute both codecs can write.
#[derive(Debug, Clone)]
enum Attr {
    XorMapped(SocketAddr),
    AlternateServer(SocketAddr),
    Username(String),
    Realm(String),
    Nonce(String),
    Software(String),
    AlternateDomain(String),
    Error(u16, String),
    /// The list and its wire form.
    UnknownAttributes(Vec<u16>, Vec<u8>),
    UserHash([u8; 32]),
    /// MD5 (1) or SHA-256 (2), no parameters.
    PasswordAlgorithm(u16),
    PasswordAlgorithms(Vec<u16>, Vec<u8>),
    /// Anything else, written raw by both.
    Raw(u16, Vec<u8>),
}

impl Attr {
    fn ours(&self) -> Attribute<'_> {
        match self {
            Attr::XorMapped(a) => Attribute::XorMappedAddress(*a),
            Attr::AlternateServer(a) => Attribute::AlternateServer(*a),
            Attr::Username(s) => Attribute::Username(s),
            Attr::Realm(s) => Attribute::Realm(s),
            Attr::Nonce(s) => Attribute::Nonce(s),
            Attr::Software(s) => Attribute::Software(s),
            Attr::AlternateDomain(s) => Attribute::AlternateDomain(s),
            Attr::Error(code, reason) => Attribute::ErrorCode(ErrorCode { code: *code, reason }),
            Attr::UnknownAttributes(_, v) => Attribute::UnknownAttributes(v),
            Attr::UserHash(h) => Attribute::UserHash(h),
            Attr::PasswordAlgorithm(a) => Attribute::PasswordAlgorithm(PasswordAlgorithm {
                algorithm: *a,
                params: &[],
            }),
            Attr::PasswordAlgorithms(_, v) => Attribute::PasswordAlgorithms(v),
            Attr::Raw(ty, v) => Attribute::decode(RawAttribute { ty: *ty, value: v }, &TransactionId::new([0; 12]))
                .unwrap_or(Attribute::Unknown(RawAttribute { ty: *ty, value: v })),
        }
    }

    fn write_theirs(&self, w: &mut st::MessageWriteVec, tid: st::TransactionId) {
        match self {
            Attr::XorMapped(a) => w.add_attribute(&st_attr::XorMappedAddress::new(*a, tid)),
            Attr::AlternateServer(a) => w.add_attribute(&st_attr::AlternateServer::new(*a)),
            Attr::Username(s) => w.add_attribute(&st_attr::Username::new(s).unwrap()),
            Attr::Realm(s) => w.add_attribute(&st_attr::Realm::new(s).unwrap()),
            Attr::Nonce(s) => w.add_attribute(&st_attr::Nonce::new(s).unwrap()),
            Attr::Software(s) => w.add_attribute(&st_attr::Software::new(s).unwrap()),
            Attr::AlternateDomain(s) => w.add_attribute(&st_attr::AlternateDomain::new(s)),
            Attr::Error(code, reason) => w.add_attribute(&st_attr::ErrorCode::new(*code, reason).unwrap()),
            Attr::UnknownAttributes(list, _) => {
                let types: Vec<_> = list.iter().map(|&t| st_attr::AttributeType::new(t)).collect();
                w.add_attribute(&st_attr::UnknownAttributes::new(&types))
            }
            Attr::UserHash(h) => w.add_attribute(&st_attr::Userhash::new(*h)),
            Attr::PasswordAlgorithm(a) => w.add_attribute(&st_attr::PasswordAlgorithm::new(their_algorithm(*a))),
            Attr::PasswordAlgorithms(list, _) => {
                let list: Vec<_> = list.iter().map(|&a| their_algorithm(a)).collect();
                w.add_attribute(&st_attr::PasswordAlgorithms::new(&list))
            }
            Attr::Raw(ty, v) => w.add_attribute(&st_attr::RawAttribute::new(st_attr::AttributeType::new(*ty), v)),
        }
        .unwrap();
    }

    /// Decodes `raw` with stun-types' typed decoder and checks it against this attribute.
    fn check_theirs(&self, raw: &st_attr::RawAttribute<'_>, tid: st::TransactionId) {
        match self {
            Attr::XorMapped(a) => assert_eq!(st_attr::XorMappedAddress::from_raw_ref(raw).unwrap().addr(tid), *a),
            Attr::AlternateServer(a) => assert_eq!(st_attr::AlternateServer::from_raw_ref(raw).unwrap().server(), *a),
            Attr::Username(s) => assert_eq!(st_attr::Username::from_raw_ref(raw).unwrap().username(), s),
            Attr::Realm(s) => assert_eq!(st_attr::Realm::from_raw_ref(raw).unwrap().realm(), s),
            Attr::Nonce(s) => assert_eq!(st_attr::Nonce::from_raw_ref(raw).unwrap().nonce(), s),
            Attr::Software(s) => assert_eq!(st_attr::Software::from_raw_ref(raw).unwrap().software(), s),
            Attr::AlternateDomain(s) => assert_eq!(st_attr::AlternateDomain::from_raw_ref(raw).unwrap().domain(), s),
            Attr::Error(code, reason) => {
                let e = st_attr::ErrorCode::from_raw_ref(raw).unwrap();
                assert_eq!((e.code(), e.reason()), (*code, reason.as_str()));
            }
            Attr::UnknownAttributes(list, _) => {
                let u = st_attr::UnknownAttributes::from_raw_ref(raw).unwrap();
                assert!(list.iter().all(|&t| u.has_attribute(st_attr::AttributeType::new(t))));
            }
            Attr::UserHash(h) => assert_eq!(st_attr::Userhash::from_raw_ref(raw).unwrap().hash(), h),
            Attr::PasswordAlgorithm(a) => assert_eq!(
                st_attr::PasswordAlgorithm::from_raw_ref(raw).unwrap().algorithm(),
                their_algorithm(*a)
            ),
            Attr::PasswordAlgorithms(list, _) => {
                let theirs = st_attr::PasswordAlgorithms::from_raw_ref(raw).unwrap();
                let expected: Vec<_> = list.iter().map(|&a| their_algorithm(a)).collect();
                assert_eq!(theirs.algorithms(), expected);
            }
            Attr::Raw(_, v) => assert_eq!(&raw.value[..], &v[..]),
        }
    }
}

fn their_algorithm(a: u16) -> st_attr::PasswordAlgorithmValue {
    if a == 1 {
        st_attr::PasswordAlgorithmValue::MD5
    } else {
        st_attr::PasswordAlgorithmValue::SHA256
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[ -~]{0,40}").unwrap(),
        proptest::collection::vec(any::<char>(), 0..60).prop_map(|c| c.into_iter().collect()),
    ]
}

fn algorithm() -> impl Strategy<Value = u16> {
    prop::sample::select(vec![1u16, 2])
}

fn attribute() -> impl Strategy<Value = Attr> {
    prop_oneof![
        2 => socket_addr().prop_map(Attr::XorMapped),
        1 => socket_addr().prop_map(Attr::AlternateServer),
        1 => text().prop_map(Attr::Username),
        1 => text().prop_map(Attr::Realm),
        1 => text().prop_map(Attr::Nonce),
        1 => text().prop_map(Attr::Software),
        1 => text().prop_map(Attr::AlternateDomain),
        1 => (300u16..700, text()).prop_map(|(c, r)| Attr::Error(c, r)),
        1 => proptest::collection::vec(any::<u16>(), 0..6).prop_map(|l| {
            let v = l.iter().flat_map(|t| t.to_be_bytes()).collect();
            Attr::UnknownAttributes(l, v)
        }),
        1 => any::<[u8; 32]>().prop_map(Attr::UserHash),
        1 => algorithm().prop_map(Attr::PasswordAlgorithm),
        1 => proptest::collection::vec(algorithm(), 1..4).prop_map(|l| {
            let v = l.iter().flat_map(|a| [a.to_be_bytes(), [0, 0]].concat()).collect();
            Attr::PasswordAlgorithms(l, v)
        }),
        // LIFETIME, DATA, REQUESTED-TRANSPORT, PRIORITY and types neither codec knows.
        1 => any::<u32>().prop_map(|l| Attr::Raw(attr::LIFETIME, l.to_be_bytes().to_vec())),
        1 => proptest::collection::vec(any::<u8>(), 0..100).prop_map(|d| Attr::Raw(attr::DATA, d)),
        1 => any::<u8>().prop_map(|p| Attr::Raw(attr::REQUESTED_TRANSPORT, vec![p, 0, 0, 0])),
        1 => any::<u32>().prop_map(|p| Attr::Raw(attr::PRIORITY, p.to_be_bytes().to_vec())),
        1 => (0x7f00u16..0x7fff, proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(t, v)| Attr::Raw(t, v)),
    ]
}

#[derive(Debug, Clone)]
enum Credentials {
    Short(String),
    Long {
        username: String,
        realm: String,
        password: String,
    },
}

impl Credentials {
    fn ours(&self) -> IntegrityKey {
        match self {
            Credentials::Short(p) => IntegrityKey::from_bytes(p.as_bytes()),
            Credentials::Long {
                username,
                realm,
                password,
            } => long_term_key_md5(username, realm, password),
        }
    }

    fn theirs(&self) -> st::MessageIntegrityCredentials {
        match self {
            Credentials::Short(p) => st::ShortTermCredentials::new(p.clone()).into(),
            Credentials::Long {
                username,
                realm,
                password,
            } => st::LongTermCredentials::new(username.clone(), password.clone(), realm.clone()).into(),
        }
    }

    /// Different credentials of the same kind.
    fn wrong(&self) -> Self {
        match self {
            Credentials::Short(p) => Credentials::Short(format!("{p}x")),
            Credentials::Long {
                username,
                realm,
                password,
            } => Credentials::Long {
                username: username.clone(),
                realm: realm.clone(),
                password: format!("{password}x"),
            },
        }
    }
}

fn credentials() -> impl Strategy<Value = Credentials> {
    prop_oneof![
        // ICE passwords are 22-256 characters (RFC 8445 §5.3): lengths either side of 32 and 64 bytes.
        proptest::string::string_regex("[!-~]{0,100}")
            .unwrap()
            .prop_map(Credentials::Short),
        (text(), text(), text()).prop_map(|(username, realm, password)| Credentials::Long {
            username,
            realm,
            password
        }),
    ]
}

#[derive(Debug, Clone)]
struct Spec {
    method: u16,
    class: Class,
    id: [u8; 12],
    attributes: Vec<Attr>,
    credentials: Option<Credentials>,
    sha1: bool,
    sha256: bool,
    fingerprint: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u16..0x1000,
        prop::sample::select(vec![Class::Request, Class::Indication, Class::Success, Class::Error]),
        any::<[u8; 12]>(),
        proptest::collection::vec(attribute(), 0..10),
        proptest::option::of(credentials()),
        any::<(bool, bool, bool)>(),
    )
        .prop_map(
            |(method, class, id, attributes, credentials, (sha1, sha256, fingerprint))| Spec {
                method,
                class,
                id,
                attributes,
                credentials,
                sha1,
                sha256,
                fingerprint,
            },
        )
}

fn their_class(c: Class) -> st::MessageClass {
    match c {
        Class::Request => st::MessageClass::Request,
        Class::Indication => st::MessageClass::Indication,
        Class::Success => st::MessageClass::Success,
        Class::Error => st::MessageClass::Error,
    }
}

fn their_tid(id: [u8; 12]) -> st::TransactionId {
    let mut b = [0u8; 16];
    b[4..].copy_from_slice(&id);
    u128::from_be_bytes(b).into()
}

fn write_ours(spec: &Spec) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let mut w = MessageWriter::new(&mut buf, Method(spec.method), spec.class, TransactionId::new(spec.id)).unwrap();
    for a in &spec.attributes {
        w.add(&a.ours()).unwrap();
    }
    if let Some(c) = &spec.credentials {
        if spec.sha1 {
            w.message_integrity(&c.ours()).unwrap();
        }
        if spec.sha256 {
            w.message_integrity_sha256(&c.ours()).unwrap();
        }
    }
    if spec.fingerprint {
        w.fingerprint().unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn write_theirs(spec: &Spec) -> Vec<u8> {
    let tid = their_tid(spec.id);
    let mtype = st::MessageType::from_class_method(their_class(spec.class), st::Method::new(spec.method));
    let mut w = st::Message::builder(mtype, tid, st::MessageWriteVec::new());
    for a in &spec.attributes {
        a.write_theirs(&mut w, tid);
    }
    if let Some(c) = &spec.credentials {
        if spec.sha1 {
            w.add_message_integrity(&c.theirs(), st::IntegrityAlgorithm::Sha1)
                .unwrap();
        }
        if spec.sha256 {
            w.add_message_integrity(&c.theirs(), st::IntegrityAlgorithm::Sha256)
                .unwrap();
        }
    }
    if spec.fingerprint {
        w.add_fingerprint().unwrap();
    }
    w.finish()
}

/// Parses `bytes` with both codecs and checks both against `spec`.
fn check_both_parse(spec: &Spec, bytes: &[u8]) {
    let tid = their_tid(spec.id);
    let integrity = spec.credentials.is_some() && (spec.sha1 || spec.sha256);

    let ours = Message::parse(bytes).unwrap();
    assert_eq!(ours.method(), Method(spec.method));
    assert_eq!(ours.class(), spec.class);
    assert_eq!(ours.transaction_id(), TransactionId::new(spec.id));
    let decoded: Vec<_> = ours
        .attributes()
        .map(|raw| Attribute::decode(raw, &ours.transaction_id()).unwrap())
        .collect();
    let expected: Vec<_> = spec.attributes.iter().map(Attr::ours).collect();
    assert_eq!(decoded, expected);
    assert!(ours.check_fingerprint().is_ok());

    let theirs = st::Message::from_bytes(bytes).unwrap();
    assert_eq!(theirs.method().value(), spec.method);
    assert_eq!(theirs.class(), their_class(spec.class));
    assert_eq!(theirs.transaction_id(), tid);
    let their_attrs: Vec<_> = theirs.iter_attributes().map(|(_, raw)| raw).collect();
    assert!(their_attrs.len() >= spec.attributes.len());
    for ((a, raw), ours_raw) in spec.attributes.iter().zip(&their_attrs).zip(ours.attributes()) {
        assert_eq!(raw.get_type().value(), ours_raw.ty);
        assert_eq!(&raw.value[..], ours_raw.value);
        a.check_theirs(raw, tid);
    }

    match &spec.credentials {
        Some(c) if integrity => {
            let algorithm = theirs.validate_integrity(&c.theirs()).unwrap();
            let expected = if spec.sha256 {
                st::IntegrityAlgorithm::Sha256
            } else {
                st::IntegrityAlgorithm::Sha1
            };
            assert_eq!(algorithm, expected);
            assert!(ours.verify_integrity(&c.ours()), "ours refuses what stun-types accepts");
            assert!(theirs.validate_integrity(&c.wrong().theirs()).is_err());
            assert!(!ours.verify_integrity(&c.wrong().ours()));
        }
        _ => {
            assert!(theirs
                .validate_integrity(&Credentials::Short("x".into()).theirs())
                .is_err());
            assert!(!ours.verify_integrity(&IntegrityKey::from_bytes(b"x")));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Same attributes in, same bytes out; and each codec reads the message back as the other wrote it.
    #[test]
    fn both_encoders_agree_and_both_decoders_read_them(spec in spec()) {
        let ours = write_ours(&spec);
        let theirs = write_theirs(&spec);
        prop_assert_eq!(&ours, &theirs);
        check_both_parse(&spec, &ours);
        check_both_parse(&spec, &theirs);
    }

    /// On a message with one byte changed, wherever both parsers accept they agree on the header, the attributes
    /// that count and whether integrity holds.
    #[test]
    fn mutated_messages_parse_alike(spec in spec(), at in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut bytes = write_ours(&spec);
        let i = at.index(bytes.len());
        bytes[i] = value;
        let (Ok(ours), Ok(theirs)) = (Message::parse(&bytes), st::Message::from_bytes(&bytes)) else {
            return Ok(());
        };
        // stun-types checks FINGERPRINT while parsing, but stops looking (and accepts) at the first attribute that
        // may not follow MESSAGE-INTEGRITY, so it only vouches for a FINGERPRINT it reached. We check it on request,
        // wherever it is.
        if theirs.iter_attributes().any(|(_, raw)| raw.get_type().value() == attr::FINGERPRINT) {
            prop_assert!(ours.check_fingerprint().is_ok());
        }
        prop_assert_eq!(ours.method().0, theirs.method().value());
        prop_assert_eq!(their_class(ours.class()), theirs.class());
        prop_assert_eq!(&ours.transaction_id().bytes[4..], &u128::from(theirs.transaction_id()).to_be_bytes()[4..]);
        let counted: Vec<(u16, Vec<u8>)> = theirs
            .iter_attributes()
            .map(|(_, raw)| (raw.get_type().value(), raw.value.to_vec()))
            .take_while(|(ty, _)| ![attr::MESSAGE_INTEGRITY, attr::MESSAGE_INTEGRITY_SHA256, attr::FINGERPRINT].contains(ty))
            .collect();
        let ours_counted: Vec<(u16, Vec<u8>)> = ours.attributes().map(|raw| (raw.ty, raw.value.to_vec())).collect();
        prop_assert_eq!(ours_counted, counted);
        if let Some(c) = &spec.credentials {
            prop_assert_eq!(
                ours.verify_integrity(&c.ours()),
                theirs.validate_integrity(&c.theirs()).is_ok()
            );
        }
    }
}
