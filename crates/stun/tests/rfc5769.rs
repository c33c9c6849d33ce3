#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! RFC 5769 test vectors (and RFC 8489 Appendix B.1), byte for byte.
//!
//! Every vector is parsed, every attribute value checked, integrity verified with the right key and refused with
//! a wrong one, the fingerprint checked, and the message re-encoded with [`MessageWriter`]. The vectors of §2.1-2.3
//! pad their strings with spaces (0x20) where our writer pads with zeros, so those re-encodings are compared with
//! the vector's padding zeroed and its MESSAGE-INTEGRITY and FINGERPRINT recomputed; §2.4 re-encodes exactly.

use std::net::SocketAddr;

use stun::{
    attr, long_term_key_md5, long_term_key_sha256, userhash, Attribute, Class, DecodeError, IntegrityKey, Message,
    MessageWriter, Method, PasswordAlgorithm, TransactionId, PASSWORD_ALGORITHM_SHA256,
};

/// RFC 5769 §2.1: Binding request with short-term credentials.
const SAMPLE_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, // Binding request, length 88
    0x21, 0x12, 0xa4, 0x42, // magic cookie
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, // transaction id
    0x80, 0x22, 0x00, 0x10, // SOFTWARE, 16
    0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e,
    0x74, // "STUN test client"
    0x00, 0x24, 0x00, 0x04, // PRIORITY, 4
    0x6e, 0x00, 0x01, 0xff, //
    0x80, 0x29, 0x00, 0x08, // ICE-CONTROLLED, 8
    0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, //
    0x00, 0x06, 0x00, 0x09, // USERNAME, 9
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
    0x20, // "evtj:h6vY" + 3 bytes of 0x20 padding
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY, 20
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71,
    0xa2, //
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT, 4
    0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2: Binding success response, IPv4 XOR-MAPPED-ADDRESS.
const SAMPLE_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, // Binding success, length 60
    0x21, 0x12, 0xa4, 0x42, // magic cookie
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, // transaction id
    0x80, 0x22, 0x00, 0x0b, // SOFTWARE, 11
    0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, // "test vector" + 0x20 padding
    0x00, 0x20, 0x00, 0x08, // XOR-MAPPED-ADDRESS, 8
    0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, //
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY, 20
    0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7,
    0xd7, //
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT, 4
    0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3: Binding success response, IPv6 XOR-MAPPED-ADDRESS.
const SAMPLE_IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, // Binding success, length 72
    0x21, 0x12, 0xa4, 0x42, // magic cookie
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, // transaction id
    0x80, 0x22, 0x00, 0x0b, // SOFTWARE, 11
    0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, // "test vector" + 0x20 padding
    0x00, 0x20, 0x00, 0x14, // XOR-MAPPED-ADDRESS, 20
    0x00, 0x02, 0xa1, 0x47, //
    0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, //
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY, 20
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed,
    0x41, //
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT, 4
    0xc8, 0xfb, 0x0b, 0x4c,
];

/// RFC 5769 §2.4: Binding request with long-term credentials (no FINGERPRINT).
const SAMPLE_REQUEST_LONG_TERM: [u8; 116] = [
    0x00, 0x01, 0x00, 0x60, // Binding request, length 96
    0x21, 0x12, 0xa4, 0x42, // magic cookie
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e, // transaction id
    0x00, 0x06, 0x00, 0x12, // USERNAME, 18
    0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00,
    0x00, // "マトリックス" + 2 bytes of padding
    0x00, 0x15, 0x00, 0x1c, // NONCE, 28
    0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39,
    0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41, //
    0x00, 0x14, 0x00, 0x0b, // REALM, 11
    0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, // "example.org" + 1 byte of padding
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY, 20
    0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96,
    0x66,
];

/// RFC 8489 Appendix B.1: the long-term request again, with USERHASH, PASSWORD-ALGORITHM (SHA-256) and
/// MESSAGE-INTEGRITY-SHA256.
const SAMPLE_REQUEST_LONG_TERM_SHA256: [u8; 164] = [
    0x00, 0x01, 0x00, 0x90, // Binding request, length 144
    0x21, 0x12, 0xa4, 0x42, // magic cookie
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e, // transaction id
    0x00, 0x1e, 0x00, 0x20, // USERHASH, 32
    0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd, 0xa9, 0x52, 0xc6, 0x78, 0x04, 0x17, 0xda, 0x0f, 0x24, 0x81, 0x94,
    0x15, 0x56, 0x9e, 0x60, 0xb2, 0x05, 0xc4, 0x6e, 0x41, 0x40, 0x7f, 0x17, 0x04, //
    0x00, 0x15, 0x00, 0x29, // NONCE, 41
    0x6f, 0x62, 0x4d, 0x61, 0x74, 0x4a, 0x6f, 0x73, 0x32, 0x41, 0x41, 0x41, 0x43, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39,
    0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36,
    0x34, 0x73, 0x41, 0x00, 0x00, 0x00, // + 3 bytes of padding
    0x00, 0x14, 0x00, 0x0b, // REALM, 11
    0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, //
    0x00, 0x1d, 0x00, 0x04, // PASSWORD-ALGORITHM, 4
    0x00, 0x02, 0x00, 0x00, // SHA-256, no parameters
    0x00, 0x1c, 0x00, 0x20, // MESSAGE-INTEGRITY-SHA256, 32
    0xb5, 0xc7, 0xbf, 0x00, 0x5b, 0x6c, 0x52, 0xa2, 0x1c, 0x51, 0xc5, 0xe8, 0x92, 0xf8, 0x19, 0x24, 0x13, 0x62, 0x96,
    0xcb, 0x92, 0x7c, 0x43, 0x14, 0x93, 0x09, 0x27, 0x8c, 0xc6, 0x51, 0x8e, 0x65,
];

/// RFC 5769 §2.1-2.3: the short-term password.
const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
/// RFC 5769 §2.4: "マトリックス", unchanged by SASLprep.
const LONG_TERM_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// RFC 5769 §2.4: "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep.
const LONG_TERM_PASSWORD: &str = "TheMatrIX";
const LONG_TERM_REALM: &str = "example.org";
const LONG_TERM_NONCE: &str = "f//499k954d6OL34oL9FSTvy64sA";

fn short_term_key() -> IntegrityKey {
    IntegrityKey::from_bytes(SHORT_TERM_PASSWORD.as_bytes())
}

fn wrong_key() -> IntegrityKey {
    IntegrityKey::from_bytes(b"VOkJxbRl1RmTxUk/WvJxBT")
}

fn tid_of(bytes: &[u8]) -> TransactionId {
    let mut id = [0u8; 12];
    id.copy_from_slice(&bytes[8..20]);
    TransactionId::new(id)
}

/// All attributes of a message, counted or not, decoded, by walking the raw bytes (the parser hides what follows
/// MESSAGE-INTEGRITY, which is exactly what we want to see here).
fn all_attributes(msg: &Message<'_>) -> Vec<Attribute<'static>> {
    let bytes: &'static [u8] = msg.as_bytes().to_vec().leak();
    let tid = msg.transaction_id();
    let mut out = Vec::new();
    let mut at = 20;
    while at < bytes.len() {
        let ty = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let raw = stun::RawAttribute {
            ty,
            value: &bytes[at + 4..at + 4 + len],
        };
        out.push(Attribute::decode(raw, &tid).unwrap());
        at += 4 + len.next_multiple_of(4);
    }
    out
}

/// The vector with the bytes of each padding run set to zero, MESSAGE-INTEGRITY recomputed with `key` and
/// FINGERPRINT recomputed — what a zero-padding encoder produces for the same attributes.
fn zero_padded(vector: &[u8], key: &IntegrityKey) -> Vec<u8> {
    let msg = Message::parse(vector).unwrap();
    let mut buf = vec![0u8; vector.len()];
    let mut w = MessageWriter::new(&mut buf, msg.method(), msg.class(), msg.transaction_id()).unwrap();
    for raw in msg.attributes() {
        w.raw(raw.ty, raw.value).unwrap();
    }
    if msg.has_message_integrity() {
        w.message_integrity(key).unwrap();
    }
    if msg.has_fingerprint() {
        w.fingerprint().unwrap();
    }
    let n = w.finish();
    assert_eq!(n, vector.len());
    buf
}

fn assert_tamper_detected(vector: &[u8], key: &IntegrityKey) {
    // Flip one bit in each byte before the integrity attribute: integrity must fail every time, and so must the
    // fingerprint (when there is one). Bytes in the header's type field can make the message unparseable.
    for i in 0..vector.len() {
        let mut t = vector.to_vec();
        t[i] ^= 0x01;
        let Ok(msg) = Message::parse(&t) else { continue };
        if msg.has_fingerprint() {
            assert!(
                msg.check_fingerprint().is_err(),
                "fingerprint missed a flip at byte {i}"
            );
        }
        if i < vector.len() - 8 {
            assert!(!msg.verify_integrity(key), "integrity missed a flip at byte {i}");
        }
    }
}

#[test]
fn rfc5769_2_1_sample_request() {
    let msg = Message::parse(&SAMPLE_REQUEST).unwrap();
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.class(), Class::Request);
    assert_eq!(msg.transaction_id(), tid_of(&SAMPLE_REQUEST));
    assert!(!msg.is_rfc3489());
    assert!(msg.has_message_integrity());
    assert!(!msg.has_message_integrity_sha256());
    assert!(msg.has_fingerprint());

    let counted: Vec<_> = msg
        .attributes()
        .map(|raw| Attribute::decode(raw, &msg.transaction_id()).unwrap())
        .collect();
    assert_eq!(
        counted,
        [
            Attribute::Software("STUN test client"),
            Attribute::Priority(0x6e00_01ff),
            Attribute::IceControlled(0x932f_f9b1_5126_3b36),
            Attribute::Username("evtj:h6vY"),
        ]
    );
    assert_eq!(
        all_attributes(&msg)[4..],
        [
            Attribute::MessageIntegrity(&SAMPLE_REQUEST[80..100]),
            Attribute::Fingerprint(0xe57a_3bcf),
        ]
    );
    assert_eq!(msg.decode(attr::USERNAME), Some(Ok(Attribute::Username("evtj:h6vY"))));
    assert_eq!(
        msg.decode(attr::MESSAGE_INTEGRITY),
        None,
        "integrity is not a counted attribute"
    );

    assert!(msg.verify_integrity(&short_term_key()));
    assert!(!msg.verify_integrity(&wrong_key()));
    assert!(msg.check_fingerprint().is_ok());
    assert_tamper_detected(&SAMPLE_REQUEST, &short_term_key());

    // Re-encode from the decoded attributes.
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid_of(&SAMPLE_REQUEST)).unwrap();
    for a in &counted {
        w.add(a).unwrap();
    }
    w.message_integrity(&short_term_key()).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    assert_eq!(buf[..n], zero_padded(&SAMPLE_REQUEST, &short_term_key())[..]);
    // Only the padding, the MAC and the CRC differ from the vector.
    let differing: Vec<usize> = (0..n).filter(|&i| buf[i] != SAMPLE_REQUEST[i]).collect();
    assert!(differing
        .iter()
        .all(|&i| (73..76).contains(&i) || (80..100).contains(&i) || i >= 104));
    let reencoded = Message::parse(&buf[..n]).unwrap();
    assert!(reencoded.verify_integrity(&short_term_key()));
    assert!(reencoded.check_fingerprint().is_ok());
}

fn check_response(vector: &[u8], mapped: SocketAddr, xor_value: &[u8]) {
    let msg = Message::parse(vector).unwrap();
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(msg.transaction_id(), tid_of(&SAMPLE_REQUEST));
    assert!(msg.has_message_integrity());
    assert!(msg.has_fingerprint());

    let counted: Vec<_> = msg
        .attributes()
        .map(|raw| Attribute::decode(raw, &msg.transaction_id()).unwrap())
        .collect();
    assert_eq!(
        counted,
        [Attribute::Software("test vector"), Attribute::XorMappedAddress(mapped)]
    );
    assert_eq!(msg.get(attr::XOR_MAPPED_ADDRESS).unwrap().value, xor_value);

    assert!(msg.verify_integrity(&short_term_key()));
    assert!(!msg.verify_integrity(&wrong_key()));
    assert!(msg.check_fingerprint().is_ok());
    assert_tamper_detected(vector, &short_term_key());

    // Re-encode as a response to the §2.1 request: XOR-MAPPED-ADDRESS must come out as the vector's bytes.
    let request = Message::parse(&SAMPLE_REQUEST).unwrap();
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::response(&mut buf, &request, Class::Success).unwrap();
    w.add(&Attribute::Software("test vector")).unwrap();
    w.add(&Attribute::XorMappedAddress(mapped)).unwrap();
    w.message_integrity(&short_term_key()).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    assert_eq!(buf[..n], zero_padded(vector, &short_term_key())[..]);
    let xor_at = 20 + 4 + 12;
    assert_eq!(
        buf[xor_at..xor_at + 4 + xor_value.len()],
        vector[xor_at..xor_at + 4 + xor_value.len()]
    );
}

#[test]
fn rfc5769_2_2_ipv4_response() {
    check_response(
        &SAMPLE_IPV4_RESPONSE,
        "192.0.2.1:32853".parse().unwrap(),
        &SAMPLE_IPV4_RESPONSE[40..48],
    );
}

#[test]
fn rfc5769_2_3_ipv6_response() {
    check_response(
        &SAMPLE_IPV6_RESPONSE,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap(),
        &SAMPLE_IPV6_RESPONSE[40..60],
    );
}

#[test]
fn rfc5769_2_4_request_with_long_term_auth() {
    let msg = Message::parse(&SAMPLE_REQUEST_LONG_TERM).unwrap();
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.class(), Class::Request);
    assert_eq!(msg.transaction_id(), tid_of(&SAMPLE_REQUEST_LONG_TERM));
    assert!(msg.has_message_integrity());
    assert!(!msg.has_fingerprint());

    let counted: Vec<_> = msg
        .attributes()
        .map(|raw| Attribute::decode(raw, &msg.transaction_id()).unwrap())
        .collect();
    assert_eq!(
        counted,
        [
            Attribute::Username(LONG_TERM_USERNAME),
            Attribute::Nonce(LONG_TERM_NONCE),
            Attribute::Realm(LONG_TERM_REALM),
        ]
    );
    assert_eq!(
        all_attributes(&msg)[3..],
        [Attribute::MessageIntegrity(&SAMPLE_REQUEST_LONG_TERM[96..116])]
    );

    let key = long_term_key_md5(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    // MD5("マトリックス:example.org:TheMatrIX").
    assert_eq!(key.as_bytes().len(), 16);
    assert!(msg.verify_integrity(&key));
    // The password before SASLprep is a different key.
    let unprepped = "The\u{00AD}M\u{00AA}tr\u{2168}";
    assert!(!msg.verify_integrity(&long_term_key_md5(LONG_TERM_USERNAME, LONG_TERM_REALM, unprepped)));
    assert!(!msg.verify_integrity(&long_term_key_md5(
        LONG_TERM_USERNAME,
        "example.com",
        LONG_TERM_PASSWORD
    )));
    assert!(!msg.verify_integrity(&long_term_key_sha256(
        LONG_TERM_USERNAME,
        LONG_TERM_REALM,
        LONG_TERM_PASSWORD
    )));
    // No FINGERPRINT: passes vacuously.
    assert!(msg.check_fingerprint().is_ok());
    assert_tamper_detected(&SAMPLE_REQUEST_LONG_TERM, &key);

    // Zero padding throughout, so this one re-encodes exactly.
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::BINDING,
        Class::Request,
        tid_of(&SAMPLE_REQUEST_LONG_TERM),
    )
    .unwrap();
    for a in &counted {
        w.add(a).unwrap();
    }
    w.message_integrity(&key).unwrap();
    let n = w.finish();
    assert_eq!(buf[..n], SAMPLE_REQUEST_LONG_TERM[..]);
}

#[test]
fn rfc8489_b_1_request_with_sha256_and_userhash() {
    let msg = Message::parse(&SAMPLE_REQUEST_LONG_TERM_SHA256).unwrap();
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.class(), Class::Request);
    assert!(!msg.has_message_integrity());
    assert!(msg.has_message_integrity_sha256());
    assert!(!msg.has_fingerprint());

    let hash = userhash(LONG_TERM_USERNAME, LONG_TERM_REALM);
    let counted: Vec<_> = msg
        .attributes()
        .map(|raw| Attribute::decode(raw, &msg.transaction_id()).unwrap())
        .collect();
    assert_eq!(
        counted,
        [
            Attribute::UserHash(&hash),
            Attribute::Nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
            Attribute::Realm(LONG_TERM_REALM),
            Attribute::PasswordAlgorithm(PasswordAlgorithm {
                algorithm: PASSWORD_ALGORITHM_SHA256,
                params: &[],
            }),
        ]
    );

    // RFC 8489 §9.2.2: with PASSWORD-ALGORITHM SHA-256 the key is SHA-256(username:realm:password).
    let sha256_key = long_term_key_sha256(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    let md5_key = long_term_key_md5(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert!(msg.verify_integrity(&sha256_key));
    assert!(!msg.verify_integrity(&md5_key));
    assert!(!msg.verify_integrity(&long_term_key_sha256(LONG_TERM_USERNAME, LONG_TERM_REALM, "TheMatrix")));
    assert!(msg.check_fingerprint().is_ok());
    assert_tamper_detected(&SAMPLE_REQUEST_LONG_TERM_SHA256, &sha256_key);

    // Zero padding throughout: re-encodes exactly.
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::BINDING,
        Class::Request,
        tid_of(&SAMPLE_REQUEST_LONG_TERM_SHA256),
    )
    .unwrap();
    for a in &counted {
        w.add(a).unwrap();
    }
    w.message_integrity_sha256(&sha256_key).unwrap();
    let n = w.finish();
    assert_eq!(buf[..n], SAMPLE_REQUEST_LONG_TERM_SHA256[..]);
}

#[test]
fn vectors_truncated_or_extended_are_rejected() {
    for vector in [
        &SAMPLE_REQUEST[..],
        &SAMPLE_IPV4_RESPONSE[..],
        &SAMPLE_IPV6_RESPONSE[..],
        &SAMPLE_REQUEST_LONG_TERM[..],
    ] {
        for cut in 0..vector.len() {
            assert!(Message::parse(&vector[..cut]).is_err(), "accepted a {cut}-byte prefix");
        }
        let mut longer = vector.to_vec();
        longer.extend_from_slice(&[0; 4]);
        assert!(matches!(
            Message::parse(&longer),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert_eq!(stun::stream_frame_len(vector), Ok(Some(vector.len())));
    }
}
