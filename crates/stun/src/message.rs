use crate::attribute::{attr, Attribute, RawAttribute};
use crate::error::DecodeError;
use crate::integrity::IntegrityKey;
use crate::{FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE};

/// The 96-bit transaction id, plus the 32 bits in the cookie position so classic RFC 3489 ids echo back intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId {
    /// Bytes 4..20 of the header: the magic cookie (or RFC 3489 id prefix) and the 96-bit id.
    pub bytes: [u8; 16],
}

impl TransactionId {
    /// A RFC 8489 id (with the magic cookie) from 96 random bits.
    pub fn new(id: [u8; 12]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes[4..].copy_from_slice(&id);
        Self { bytes }
    }

    /// The 12 bytes that follow the cookie.
    pub fn id(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out.copy_from_slice(&self.bytes[4..]);
        out
    }

    pub fn has_magic_cookie(&self) -> bool {
        self.bytes[..4] == MAGIC_COOKIE.to_be_bytes()
    }
}

/// RFC 8489 §5: the two class bits of the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// A STUN method (12 bits). The named ones are those Traverse speaks; others still parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    // RFC 8656 §17.
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    // RFC 6062.
    pub const CONNECT: Method = Method(0x00a);
    pub const CONNECTION_BIND: Method = Method(0x00b);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00c);
}

/// RFC 8489 §5: method and class bits are interleaved in the 14-bit type.
pub(crate) fn split_type(ty: u16) -> (Method, Class) {
    let method = (ty & 0x000f) | ((ty & 0x00e0) >> 1) | ((ty & 0x3e00) >> 2);
    let class = match ((ty >> 4) & 1) | ((ty >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (Method(method), class)
}

pub(crate) fn join_type(method: Method, class: Class) -> u16 {
    let m = method.0 & 0x0fff;
    let c: u16 = match class {
        Class::Request => 0,
        Class::Indication => 1,
        Class::Success => 2,
        Class::Error => 3,
    };
    (m & 0x000f) | ((m & 0x0070) << 1) | ((m & 0x0f80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// A validated, borrowed STUN message.
///
/// Parsing checks every attribute's bounds, so iterating attributes later cannot fail; decoding an attribute's
/// *value* can, and is done on demand with [`Attribute::decode`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    method: Method,
    class: Class,
    transaction_id: TransactionId,
    /// Offsets of the integrity and fingerprint attributes, so verification needs no second scan.
    integrity_at: Option<usize>,
    integrity_sha256_at: Option<usize>,
    fingerprint_at: Option<usize>,
    /// End of the attributes that count: RFC 8489 §14.5 says to ignore what follows MESSAGE-INTEGRITY except
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.
    counted_end: usize,
}

impl<'a> Message<'a> {
    /// Validates `buf` as exactly one STUN message (a datagram, or a frame cut with [`crate::stream_frame_len`]).
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let Some((&[t0, t1, l0, l1], tid)) = buf.first_chunk::<HEADER_LEN>().and_then(|h| h.split_first_chunk::<4>())
        else {
            return Err(DecodeError::TooShort);
        };
        let ty = u16::from_be_bytes([t0, t1]);
        if ty & 0xc000 != 0 {
            return Err(DecodeError::NotStun);
        }
        let len = u16::from_be_bytes([l0, l1]);
        if len % 4 != 0 {
            return Err(DecodeError::UnalignedLength(len));
        }
        let end = HEADER_LEN + len as usize;
        if buf.len() != end {
            return Err(DecodeError::LengthMismatch {
                declared: len as usize,
                available: buf.len() - HEADER_LEN,
            });
        }
        let mut transaction_id = TransactionId { bytes: [0; 16] };
        transaction_id.bytes.copy_from_slice(tid);
        let (method, class) = split_type(ty);

        let mut msg = Message {
            buf,
            method,
            class,
            transaction_id,
            integrity_at: None,
            integrity_sha256_at: None,
            fingerprint_at: None,
            counted_end: end,
        };
        let mut at = HEADER_LEN;
        while at < end {
            if msg.fingerprint_at.is_some() {
                return Err(DecodeError::FingerprintNotLast);
            }
            let Some(&[t0, t1, l0, l1]) = buf.get(at..at + 4) else {
                return Err(DecodeError::AttributeOverrun { ty: 0 });
            };
            let ty = u16::from_be_bytes([t0, t1]);
            let vlen = u16::from_be_bytes([l0, l1]) as usize;
            let next = at + 4 + vlen.next_multiple_of(4);
            if next > end {
                return Err(DecodeError::AttributeOverrun { ty });
            }
            match ty {
                attr::MESSAGE_INTEGRITY if msg.integrity_at.is_none() && msg.integrity_sha256_at.is_none() => {
                    if vlen != 20 {
                        return Err(DecodeError::InvalidAttribute { ty });
                    }
                    msg.integrity_at = Some(at);
                    msg.counted_end = msg.counted_end.min(at);
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256_at.is_none() => {
                    // RFC 8489 §14.6: at least 16 bytes, a multiple of 4, at most 32.
                    if !(16..=32).contains(&vlen) || !vlen.is_multiple_of(4) {
                        return Err(DecodeError::InvalidAttribute { ty });
                    }
                    msg.integrity_sha256_at = Some(at);
                    msg.counted_end = msg.counted_end.min(at);
                }
                attr::FINGERPRINT => {
                    if vlen != 4 {
                        return Err(DecodeError::InvalidAttribute { ty });
                    }
                    msg.fingerprint_at = Some(at);
                    msg.counted_end = msg.counted_end.min(at);
                }
                _ => {}
            }
            at = next;
        }
        Ok(msg)
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// A classic RFC 3489 message: no magic cookie, so XOR-encoded addresses mean nothing to the sender.
    pub fn is_rfc3489(&self) -> bool {
        !self.transaction_id.has_magic_cookie()
    }

    /// The whole message as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn has_message_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    pub fn has_message_integrity_sha256(&self) -> bool {
        self.integrity_sha256_at.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint_at.is_some()
    }

    /// The attributes that count, in order: those before the first integrity attribute or FINGERPRINT.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf.get(..self.counted_end).unwrap_or_default(),
            at: HEADER_LEN,
        }
    }

    /// The first counted attribute of type `ty`.
    pub fn get(&self, ty: u16) -> Option<RawAttribute<'a>> {
        self.attributes().find(|a| a.ty == ty)
    }

    /// The first counted attribute of type `ty`, decoded.
    pub fn decode(&self, ty: u16) -> Option<Result<Attribute<'a>, DecodeError>> {
        self.get(ty).map(|raw| Attribute::decode(raw, &self.transaction_id))
    }

    /// Checks the FINGERPRINT attribute if present; a message without one passes.
    pub fn check_fingerprint(&self) -> Result<(), DecodeError> {
        let Some(at) = self.fingerprint_at else {
            return Ok(());
        };
        let mut hasher = crc32fast::Hasher::new();
        self.hash_prefix(at, 8, |chunk| hasher.update(chunk));
        let expected = hasher.finalize() ^ FINGERPRINT_XOR;
        let got = self
            .buf
            .get(at + 4..at + 8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes);
        if got == Some(expected) {
            Ok(())
        } else {
            Err(DecodeError::FingerprintMismatch)
        }
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, otherwise MESSAGE-INTEGRITY, in constant time.
    /// Returns false when the message carries neither.
    pub fn verify_integrity(&self, key: &IntegrityKey) -> bool {
        if let Some(at) = self.integrity_sha256_at {
            let Some(value) = self.value_at(at) else { return false };
            let mut mac = key.hmac_sha256();
            self.hash_prefix(at, 4 + value.len(), |chunk| hmac::Mac::update(&mut mac, chunk));
            return crate::integrity::ct_prefix_eq(&hmac::Mac::finalize(mac).into_bytes(), value);
        }
        if let Some(at) = self.integrity_at {
            let Some(value) = self.value_at(at) else { return false };
            let mut mac = key.hmac_sha1();
            self.hash_prefix(at, 24, |chunk| hmac::Mac::update(&mut mac, chunk));
            return crate::integrity::ct_prefix_eq(&hmac::Mac::finalize(mac).into_bytes(), value);
        }
        false
    }

    fn value_at(&self, at: usize) -> Option<&'a [u8]> {
        let len = u16::from_be_bytes([*self.buf.get(at + 2)?, *self.buf.get(at + 3)?]) as usize;
        self.buf.get(at + 4..at + 4 + len)
    }

    /// Feeds the message up to attribute offset `at` to `f`, with the header length rewritten as if the message
    /// ended `attr_len` bytes after `at` (RFC 8489 §14.5, §14.7).
    fn hash_prefix(&self, at: usize, attr_len: usize, mut f: impl FnMut(&[u8])) {
        let pretend_len = (at + attr_len - HEADER_LEN) as u16;
        f(self.buf.get(..2).unwrap_or_default());
        f(&pretend_len.to_be_bytes());
        f(self.buf.get(4..at).unwrap_or_default());
    }
}

/// Iterator over the counted attributes of a parsed message. Bounds were validated by [`Message::parse`].
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let &[t0, t1, l0, l1] = self.buf.get(self.at..self.at + 4)? else {
            return None;
        };
        let ty = u16::from_be_bytes([t0, t1]);
        let len = u16::from_be_bytes([l0, l1]) as usize;
        let value = self.buf.get(self.at + 4..self.at + 4 + len)?;
        self.at += 4 + len.next_multiple_of(4);
        Some(RawAttribute { ty, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_bits_round_trip() {
        for m in 0..0x1000u16 {
            for c in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                let ty = join_type(Method(m), c);
                assert_eq!(ty & 0xc000, 0);
                assert_eq!(split_type(ty), (Method(m), c));
            }
        }
        // RFC 8489 §5: a Binding success response is 0x0101, an Allocate error 0x0113.
        assert_eq!(join_type(Method::BINDING, Class::Success), 0x0101);
        assert_eq!(join_type(Method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(join_type(Method::DATA, Class::Indication), 0x0017);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Message::parse(&[0; 19]).unwrap_err(), DecodeError::TooShort);
        let mut m = [0u8; 20];
        m[0] = 0x80;
        assert_eq!(Message::parse(&m).unwrap_err(), DecodeError::NotStun);
        m[0] = 0;
        m[3] = 2;
        assert_eq!(Message::parse(&m).unwrap_err(), DecodeError::UnalignedLength(2));
        m[3] = 4;
        assert!(matches!(Message::parse(&m), Err(DecodeError::LengthMismatch { .. })));
    }

    #[test]
    fn rejects_attribute_overrun() {
        let mut m = vec![0u8; 24];
        m[1] = 1;
        m[3] = 4;
        m[20..24].copy_from_slice(&[0x00, 0x06, 0x00, 0x08]);
        assert_eq!(Message::parse(&m).unwrap_err(), DecodeError::AttributeOverrun { ty: 6 });
    }
}
