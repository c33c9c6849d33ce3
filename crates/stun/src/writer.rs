use std::net::{IpAddr, SocketAddr};

use hmac::Mac;

use crate::attribute::{attr, xor_address, Attribute, FAMILY_IPV4, FAMILY_IPV6};
use crate::error::EncodeError;
use crate::integrity::IntegrityKey;
use crate::message::{join_type, Class, Message, Method, TransactionId};
use crate::{FINGERPRINT_XOR, HEADER_LEN};

/// Encodes a STUN message into a caller's buffer. The header length is kept current after every attribute, so
/// integrity and fingerprint can be computed over the bytes already written.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
}

impl<'b> MessageWriter<'b> {
    pub fn new(buf: &'b mut [u8], method: Method, class: Class, tid: TransactionId) -> Result<Self, EncodeError> {
        let header = buf.get_mut(..HEADER_LEN).ok_or(EncodeError::BufferTooSmall)?;
        put(header, &[&join_type(method, class).to_be_bytes(), &[0, 0], &tid.bytes]);
        Ok(Self {
            buf,
            len: HEADER_LEN,
            tid,
        })
    }

    /// Starts the response of `class` to `request`, with the same method and transaction id.
    pub fn response(buf: &'b mut [u8], request: &Message<'_>, class: Class) -> Result<Self, EncodeError> {
        Self::new(buf, request.method(), class, request.transaction_id())
    }

    /// Appends any attribute. XOR-encoded addresses are encoded with this message's transaction id.
    pub fn add(&mut self, a: &Attribute<'_>) -> Result<&mut Self, EncodeError> {
        let ty = a.ty();
        match *a {
            Attribute::MappedAddress(addr)
            | Attribute::AlternateServer(addr)
            | Attribute::ResponseOrigin(addr)
            | Attribute::OtherAddress(addr)
            | Attribute::LegacyAddress(_, addr) => self.address(ty, addr),
            Attribute::XorMappedAddress(addr)
            | Attribute::XorPeerAddress(addr)
            | Attribute::XorRelayedAddress(addr) => self.address(ty, xor_address(addr, &self.tid)),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s)
            | Attribute::AlternateDomain(s) => self.raw(ty, s.as_bytes()),
            Attribute::UserHash(h) => self.raw(ty, h),
            Attribute::ErrorCode(e) => self.error_code(e.code, e.reason),
            Attribute::UnknownAttributes(v)
            | Attribute::MessageIntegrity(v)
            | Attribute::MessageIntegritySha256(v)
            | Attribute::PasswordAlgorithms(v)
            | Attribute::Data(v)
            | Attribute::Padding(v) => self.raw(ty, v),
            Attribute::Fingerprint(v)
            | Attribute::Lifetime(v)
            | Attribute::Priority(v)
            | Attribute::ConnectionId(v) => self.raw(ty, &v.to_be_bytes()),
            // RFC 8489 §14.11-14.12: the entry's parameters are padded to four bytes inside the value, so a
            // decoder that walks entries finds the end where the padding says.
            Attribute::PasswordAlgorithm(p) => self.with_value(ty, 4 + p.params.len().next_multiple_of(4), |v| {
                put(
                    v,
                    &[
                        &p.algorithm.to_be_bytes(),
                        &(p.params.len() as u16).to_be_bytes(),
                        p.params,
                    ],
                );
            }),
            Attribute::ChannelNumber(n) => self.raw(ty, &(u32::from(n) << 16).to_be_bytes()),
            Attribute::RequestedAddressFamily(f) | Attribute::AdditionalAddressFamily(f) => self.raw(ty, &[f, 0, 0, 0]),
            Attribute::AddressErrorCode { family, code, reason } => self.with_value(ty, 4 + reason.len(), |v| {
                put(
                    v,
                    &[&[family, 0, (code / 100) as u8, (code % 100) as u8], reason.as_bytes()],
                );
            }),
            Attribute::EvenPort { reserve } => self.raw(ty, &[if reserve { 0x80 } else { 0 }]),
            Attribute::RequestedTransport(p) => self.raw(ty, &[p, 0, 0, 0]),
            Attribute::DontFragment | Attribute::UseCandidate => self.raw(ty, &[]),
            Attribute::ReservationToken(t) => self.raw(ty, &t),
            Attribute::Icmp { icmp_type, code, data } => {
                let d = data.to_be_bytes();
                self.raw(ty, &[0, 0, icmp_type & 0x7f, code, d[0], d[1], d[2], d[3]])
            }
            Attribute::ChangeRequest { change_ip, change_port } => {
                let flags = (u32::from(change_ip) << 2) | (u32::from(change_port) << 1);
                self.raw(ty, &flags.to_be_bytes())
            }
            Attribute::ResponsePort(p) => {
                let p = p.to_be_bytes();
                self.raw(ty, &[p[0], p[1], 0, 0])
            }
            Attribute::IceControlled(v) | Attribute::IceControlling(v) => self.raw(ty, &v.to_be_bytes()),
            Attribute::Unknown(raw) => self.raw(raw.ty, raw.value),
        }?;
        Ok(self)
    }

    /// Appends an attribute with a raw value, padded to four bytes.
    pub fn raw(&mut self, ty: u16, value: &[u8]) -> Result<(), EncodeError> {
        self.with_value(ty, value.len(), |v| put(v, &[value]))
    }

    /// ERROR-CODE with the class/number split of RFC 8489 §14.8.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), EncodeError> {
        self.with_value(attr::ERROR_CODE, 4 + reason.len(), |v| {
            put(v, &[&[0, 0, (code / 100) as u8, (code % 100) as u8], reason.as_bytes()]);
        })
    }

    /// Reserves `len` value bytes for an attribute, lets `fill` write them, and zeroes the padding.
    /// `fill` always gets a slice of exactly `len` bytes.
    pub fn with_value(&mut self, ty: u16, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), EncodeError> {
        let vlen = u16::try_from(len).map_err(|_| EncodeError::AttributeTooLong)?;
        let end = self.len + 4 + len.next_multiple_of(4);
        if end - HEADER_LEN > usize::from(u16::MAX) & !3 {
            return Err(EncodeError::BufferTooSmall);
        }
        let slot = self.buf.get_mut(self.len..end).ok_or(EncodeError::BufferTooSmall)?;
        let (head, rest) = slot.split_at_mut(4);
        put(head, &[&ty.to_be_bytes(), &vlen.to_be_bytes()]);
        let (value, padding) = rest.split_at_mut(len);
        fill(value);
        padding.fill(0);
        self.len = end;
        self.set_length();
        Ok(())
    }

    fn address(&mut self, ty: u16, addr: SocketAddr) -> Result<(), EncodeError> {
        let port = addr.port().to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => self.with_value(ty, 8, |v| {
                put(v, &[&[0, FAMILY_IPV4, port[0], port[1]], &ip.octets()]);
            }),
            IpAddr::V6(ip) => self.with_value(ty, 20, |v| {
                put(v, &[&[0, FAMILY_IPV6, port[0], port[1]], &ip.octets()]);
            }),
        }
    }

    /// RFC 8489 §14.5: HMAC-SHA1 over the message so far, with the length counting this attribute.
    pub fn message_integrity(&mut self, key: &IntegrityKey) -> Result<(), EncodeError> {
        let mut mac = key.hmac_sha1();
        self.mac_prefix(24, |chunk| mac.update(chunk))?;
        let tag = mac.finalize().into_bytes();
        self.raw(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// RFC 8489 §14.6: HMAC-SHA256, untruncated.
    pub fn message_integrity_sha256(&mut self, key: &IntegrityKey) -> Result<(), EncodeError> {
        let mut mac = key.hmac_sha256();
        self.mac_prefix(36, |chunk| mac.update(chunk))?;
        let tag = mac.finalize().into_bytes();
        self.raw(attr::MESSAGE_INTEGRITY_SHA256, &tag)
    }

    /// RFC 8489 §14.7: CRC-32 of the message so far XOR 0x5354554e; must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), EncodeError> {
        let mut crc = crc32fast::Hasher::new();
        self.mac_prefix(8, |chunk| crc.update(chunk))?;
        let value = crc.finalize() ^ FINGERPRINT_XOR;
        self.raw(attr::FINGERPRINT, &value.to_be_bytes())
    }

    /// Length of the message written so far.
    pub fn finish(self) -> usize {
        self.len
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn mac_prefix(&mut self, attr_len: usize, mut f: impl FnMut(&[u8])) -> Result<(), EncodeError> {
        // Checked before the header length is rewritten, so a refusal leaves the message as it was.
        if self.buf.len() < self.len + attr_len || self.len + attr_len - HEADER_LEN > usize::from(u16::MAX) & !3 {
            return Err(EncodeError::BufferTooSmall);
        }
        self.write_length(self.len + attr_len - HEADER_LEN);
        f(self.buf.get(..self.len).ok_or(EncodeError::BufferTooSmall)?);
        Ok(())
    }

    fn set_length(&mut self) {
        self.write_length(self.len - HEADER_LEN);
    }

    fn write_length(&mut self, len: usize) {
        if let Some(field) = self.buf.get_mut(2..4) {
            put(field, &[&(len as u16).to_be_bytes()]);
        }
    }
}

/// Copies `parts` one after another into the start of `dst`; whatever does not fit is dropped. Callers size `dst`
/// first (`with_value` reserves exactly the value's length), so in practice everything fits, and no index can panic.
fn put(dst: &mut [u8], parts: &[&[u8]]) {
    let mut out = dst.iter_mut();
    for part in parts {
        // `part` first: zip stops on its end without taking another byte of `out`.
        for (s, d) in part.iter().zip(&mut out) {
            *d = *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn integrity_and_fingerprint_verify_after_writing() {
        let key = crate::long_term_key_md5("user", "realm", "pass");
        let mut buf = [0u8; 256];
        let tid = TransactionId::new([7; 12]);
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).unwrap();
        w.add(&Attribute::Username("user")).unwrap();
        w.add(&Attribute::RequestedTransport(17)).unwrap();
        w.message_integrity(&key).unwrap();
        w.message_integrity_sha256(&key).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        assert!(msg.verify_integrity(&key));
        assert!(msg.check_fingerprint().is_ok());
        assert!(!msg.verify_integrity(&crate::long_term_key_md5("user", "realm", "wrong")));
        let mut tampered = buf;
        tampered[HEADER_LEN + 5] ^= 1;
        let msg = Message::parse(&tampered[..n]).unwrap();
        assert!(!msg.verify_integrity(&key));
        assert!(msg.check_fingerprint().is_err());
    }

    #[test]
    fn password_algorithm_with_parameters_round_trips() {
        // Found by the round-trip property: parameters of a length not a multiple of four were written unpadded
        // inside the value, and the decoder, which expects padded entries, refused its own writer's output.
        let params: &[u8] = &[1, 2, 3];
        let mut buf = [0u8; 64];
        let tid = TransactionId::new([3; 12]);
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).unwrap();
        let a = Attribute::PasswordAlgorithm(crate::PasswordAlgorithm {
            algorithm: 0x1234,
            params,
        });
        w.add(&a).unwrap();
        let n = w.finish();
        assert_eq!(
            buf[HEADER_LEN..n],
            [0x00, 0x1d, 0x00, 0x08, 0x12, 0x34, 0x00, 0x03, 1, 2, 3, 0]
        );
        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(msg.decode(attr::PASSWORD_ALGORITHM), Some(Ok(a)));

        // The unpadded form other encoders (and this one before) produce is accepted too.
        let raw = crate::RawAttribute {
            ty: attr::PASSWORD_ALGORITHM,
            value: &[0x12, 0x34, 0x00, 0x03, 1, 2, 3],
        };
        assert_eq!(Attribute::decode(raw, &tid), Ok(a));
        // But an entry claiming more parameters than there are is still refused.
        let raw = crate::RawAttribute {
            ty: attr::PASSWORD_ALGORITHM,
            value: &[0x12, 0x34, 0x00, 0x04, 1, 2, 3],
        };
        assert!(Attribute::decode(raw, &tid).is_err());
    }

    #[test]
    fn refused_integrity_at_the_length_limit_leaves_a_valid_message() {
        // A message 8 bytes short of the 65535-byte length limit: FINGERPRINT fits, MESSAGE-INTEGRITY does not. The
        // refusal used to come after the header length had been rewritten for the attribute that was not added.
        let mut buf = vec![0u8; 70_000];
        let tid = TransactionId::new([5; 12]);
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, tid).unwrap();
        let data = vec![7u8; 0xfffc - 8 - 4];
        w.raw(attr::DATA, &data).unwrap();
        let key = IntegrityKey::from_bytes(b"k");
        assert_eq!(w.message_integrity(&key), Err(EncodeError::BufferTooSmall));
        assert_eq!(w.message_integrity_sha256(&key), Err(EncodeError::BufferTooSmall));
        let n = w.len();
        let msg = Message::parse(&buf[..n]).unwrap();
        assert!(!msg.has_message_integrity());
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, tid).unwrap();
        w.raw(attr::DATA, &data).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(n, HEADER_LEN + 0xfffc);
        assert!(Message::parse(&buf[..n]).unwrap().check_fingerprint().is_ok());
    }

    #[test]
    fn too_small_buffer_is_an_error_not_a_panic() {
        let mut buf = [0u8; 30];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Success, TransactionId::new([1; 12])).unwrap();
        assert_eq!(
            w.add(&Attribute::Software("a long software name")).unwrap_err(),
            EncodeError::BufferTooSmall
        );
        assert!(MessageWriter::new(
            &mut [0u8; 10],
            Method::BINDING,
            Class::Request,
            TransactionId::new([0; 12])
        )
        .is_err());
    }
}
