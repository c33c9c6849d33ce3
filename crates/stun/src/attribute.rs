use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::DecodeError;
use crate::message::TransactionId;
use crate::MAGIC_COOKIE;

/// Attribute type numbers (IANA "STUN Attributes" registry).
pub mod attr {
    // RFC 8489 (and RFC 3489 for the classic ones).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000a;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001c;
    pub const PASSWORD_ALGORITHM: u16 = 0x001d;
    pub const USERHASH: u16 = 0x001e;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    // RFC 8656.
    pub const CHANNEL_NUMBER: u16 = 0x000c;
    pub const LIFETIME: u16 = 0x000d;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001a;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const ICMP: u16 = 0x8004;
    // RFC 5780.
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const RESPONSE_ORIGIN: u16 = 0x802b;
    pub const OTHER_ADDRESS: u16 = 0x802c;
    // RFC 8445 (ICE); parsed so a TURN server does not answer 420 to them.
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802a;
    // RFC 6062.
    pub const CONNECTION_ID: u16 = 0x002a;
}

/// RFC 8489 §14: types 0x0000-0x7FFF must be understood; an unknown one gets a 420 answer.
pub fn is_comprehension_required(ty: u16) -> bool {
    ty < 0x8000
}

/// RFC 8489 §18.5.1: password algorithm numbers.
pub const PASSWORD_ALGORITHM_MD5: u16 = 0x0001;
pub const PASSWORD_ALGORITHM_SHA256: u16 = 0x0002;

/// An attribute as it sits in the message: type and unpadded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub ty: u16,
    pub value: &'a [u8],
}

/// ERROR-CODE (RFC 8489 §14.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// One entry of PASSWORD-ALGORITHMS, or the PASSWORD-ALGORITHM value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordAlgorithm<'a> {
    pub algorithm: u16,
    pub params: &'a [u8],
}

/// A decoded attribute value, borrowing from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute<'a> {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    XorPeerAddress(SocketAddr),
    XorRelayedAddress(SocketAddr),
    AlternateServer(SocketAddr),
    ResponseOrigin(SocketAddr),
    OtherAddress(SocketAddr),
    /// RFC 3489's address attributes (RESPONSE-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS), kept by type.
    LegacyAddress(u16, SocketAddr),
    Username(&'a str),
    Realm(&'a str),
    Nonce(&'a str),
    Software(&'a str),
    AlternateDomain(&'a str),
    UserHash(&'a [u8; 32]),
    ErrorCode(ErrorCode<'a>),
    /// The raw list; iterate with [`Attribute::u16_list`].
    UnknownAttributes(&'a [u8]),
    MessageIntegrity(&'a [u8]),
    MessageIntegritySha256(&'a [u8]),
    Fingerprint(u32),
    /// The raw list; iterate with [`Attribute::password_algorithms`].
    PasswordAlgorithms(&'a [u8]),
    PasswordAlgorithm(PasswordAlgorithm<'a>),
    ChannelNumber(u16),
    Lifetime(u32),
    Data(&'a [u8]),
    RequestedAddressFamily(u8),
    AdditionalAddressFamily(u8),
    AddressErrorCode {
        family: u8,
        code: u16,
        reason: &'a str,
    },
    EvenPort {
        reserve: bool,
    },
    RequestedTransport(u8),
    DontFragment,
    ReservationToken([u8; 8]),
    Icmp {
        icmp_type: u8,
        code: u8,
        data: u32,
    },
    ChangeRequest {
        change_ip: bool,
        change_port: bool,
    },
    ResponsePort(u16),
    Padding(&'a [u8]),
    Priority(u32),
    UseCandidate,
    IceControlled(u64),
    IceControlling(u64),
    ConnectionId(u32),
    Unknown(RawAttribute<'a>),
}

/// Address family numbers used by address attributes and REQUESTED-ADDRESS-FAMILY.
pub(crate) const FAMILY_IPV4: u8 = 0x01;
pub(crate) const FAMILY_IPV6: u8 = 0x02;

impl<'a> Attribute<'a> {
    /// Decodes one attribute. `tid` is needed for the XOR-encoded addresses.
    pub fn decode(raw: RawAttribute<'a>, tid: &TransactionId) -> Result<Self, DecodeError> {
        let RawAttribute { ty, value: v } = raw;
        let invalid = DecodeError::InvalidAttribute { ty };
        let text = |max: usize| -> Result<&'a str, DecodeError> {
            // RFC 8489 §14: these are limited in characters; bytes are at most 6× that in UTF-8 but we keep the
            // bound on bytes, which is what memory cares about.
            if v.len() > max {
                return Err(invalid);
            }
            std::str::from_utf8(v).map_err(|_| invalid)
        };
        Ok(match ty {
            attr::MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(v).ok_or(invalid)?),
            attr::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(decode_xor_address(v, tid).ok_or(invalid)?),
            attr::XOR_PEER_ADDRESS => Attribute::XorPeerAddress(decode_xor_address(v, tid).ok_or(invalid)?),
            attr::XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(decode_xor_address(v, tid).ok_or(invalid)?),
            attr::ALTERNATE_SERVER => Attribute::AlternateServer(decode_address(v).ok_or(invalid)?),
            attr::RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_address(v).ok_or(invalid)?),
            attr::OTHER_ADDRESS => Attribute::OtherAddress(decode_address(v).ok_or(invalid)?),
            attr::RESPONSE_ADDRESS | attr::SOURCE_ADDRESS | attr::CHANGED_ADDRESS => {
                Attribute::LegacyAddress(ty, decode_address(v).ok_or(invalid)?)
            }
            attr::USERNAME => Attribute::Username(text(513)?),
            attr::REALM => Attribute::Realm(text(763)?),
            attr::NONCE => Attribute::Nonce(text(763)?),
            attr::SOFTWARE => Attribute::Software(text(763)?),
            attr::ALTERNATE_DOMAIN => Attribute::AlternateDomain(text(255)?),
            attr::USERHASH => Attribute::UserHash(v.try_into().map_err(|_| invalid)?),
            attr::ERROR_CODE => {
                let [_, _, class, number, reason @ ..] = v else {
                    return Err(invalid);
                };
                let (class, number) = (u16::from(class & 0x07), u16::from(*number));
                if !(3..=6).contains(&class) || number > 99 || reason.len() > 763 {
                    return Err(invalid);
                }
                let reason = std::str::from_utf8(reason).map_err(|_| invalid)?;
                Attribute::ErrorCode(ErrorCode {
                    code: class * 100 + number,
                    reason,
                })
            }
            attr::UNKNOWN_ATTRIBUTES if v.len() % 2 == 0 => Attribute::UnknownAttributes(v),
            attr::MESSAGE_INTEGRITY if v.len() == 20 => Attribute::MessageIntegrity(v),
            attr::MESSAGE_INTEGRITY_SHA256 if (16..=32).contains(&v.len()) && v.len() % 4 == 0 => {
                Attribute::MessageIntegritySha256(v)
            }
            attr::FINGERPRINT => Attribute::Fingerprint(be_u32(v).ok_or(invalid)?),
            attr::PASSWORD_ALGORITHMS => {
                if password_algorithm_list(v).any(|a| a.is_none()) {
                    return Err(invalid);
                }
                Attribute::PasswordAlgorithms(v)
            }
            attr::PASSWORD_ALGORITHM => {
                let mut it = password_algorithm_list(v);
                match (it.next(), it.next()) {
                    (Some(Some(a)), None) => Attribute::PasswordAlgorithm(a),
                    _ => return Err(invalid),
                }
            }
            attr::CHANNEL_NUMBER => {
                // RFC 8656 §14.1: channel number then 16 RFFU bits.
                let n = be_u32(v).ok_or(invalid)?;
                Attribute::ChannelNumber((n >> 16) as u16)
            }
            attr::LIFETIME => Attribute::Lifetime(be_u32(v).ok_or(invalid)?),
            attr::DATA => Attribute::Data(v),
            attr::REQUESTED_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY => {
                // Any family byte: an unknown one is the server's to refuse (RFC 8656 §7.2: 440), not malformed.
                let &[family, _, _, _] = v else { return Err(invalid) };
                if ty == attr::REQUESTED_ADDRESS_FAMILY {
                    Attribute::RequestedAddressFamily(family)
                } else {
                    Attribute::AdditionalAddressFamily(family)
                }
            }
            attr::ADDRESS_ERROR_CODE => {
                let [family, _, class, number, reason @ ..] = v else {
                    return Err(invalid);
                };
                let code = u16::from(class & 0x07) * 100 + u16::from(*number);
                let reason = std::str::from_utf8(reason).map_err(|_| invalid)?;
                Attribute::AddressErrorCode {
                    family: *family,
                    code,
                    reason,
                }
            }
            attr::EVEN_PORT => {
                let &[flags] = v else { return Err(invalid) };
                Attribute::EvenPort {
                    reserve: flags & 0x80 != 0,
                }
            }
            attr::REQUESTED_TRANSPORT => {
                let &[protocol, _, _, _] = v else { return Err(invalid) };
                Attribute::RequestedTransport(protocol)
            }
            attr::DONT_FRAGMENT if v.is_empty() => Attribute::DontFragment,
            attr::RESERVATION_TOKEN => Attribute::ReservationToken(v.try_into().map_err(|_| invalid)?),
            attr::ICMP => {
                let &[_, _, icmp_type, code, d0, d1, d2, d3] = v else {
                    return Err(invalid);
                };
                Attribute::Icmp {
                    icmp_type: icmp_type & 0x7f,
                    code,
                    data: u32::from_be_bytes([d0, d1, d2, d3]),
                }
            }
            attr::CHANGE_REQUEST => {
                let flags = be_u32(v).ok_or(invalid)?;
                Attribute::ChangeRequest {
                    change_ip: flags & 0x4 != 0,
                    change_port: flags & 0x2 != 0,
                }
            }
            attr::RESPONSE_PORT => {
                let &[p0, p1, _, _] = v else { return Err(invalid) };
                Attribute::ResponsePort(u16::from_be_bytes([p0, p1]))
            }
            attr::PADDING => Attribute::Padding(v),
            attr::PRIORITY => Attribute::Priority(be_u32(v).ok_or(invalid)?),
            attr::USE_CANDIDATE if v.is_empty() => Attribute::UseCandidate,
            attr::ICE_CONTROLLED => Attribute::IceControlled(be_u64(v).ok_or(invalid)?),
            attr::ICE_CONTROLLING => Attribute::IceControlling(be_u64(v).ok_or(invalid)?),
            attr::CONNECTION_ID => Attribute::ConnectionId(be_u32(v).ok_or(invalid)?),
            attr::UNKNOWN_ATTRIBUTES
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::DONT_FRAGMENT
            | attr::USE_CANDIDATE => return Err(invalid),
            _ => Attribute::Unknown(raw),
        })
    }

    /// The attribute type number this value encodes as.
    pub fn ty(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => attr::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => attr::XOR_MAPPED_ADDRESS,
            Attribute::XorPeerAddress(_) => attr::XOR_PEER_ADDRESS,
            Attribute::XorRelayedAddress(_) => attr::XOR_RELAYED_ADDRESS,
            Attribute::AlternateServer(_) => attr::ALTERNATE_SERVER,
            Attribute::ResponseOrigin(_) => attr::RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => attr::OTHER_ADDRESS,
            Attribute::LegacyAddress(ty, _) => *ty,
            Attribute::Username(_) => attr::USERNAME,
            Attribute::Realm(_) => attr::REALM,
            Attribute::Nonce(_) => attr::NONCE,
            Attribute::Software(_) => attr::SOFTWARE,
            Attribute::AlternateDomain(_) => attr::ALTERNATE_DOMAIN,
            Attribute::UserHash(_) => attr::USERHASH,
            Attribute::ErrorCode(_) => attr::ERROR_CODE,
            Attribute::UnknownAttributes(_) => attr::UNKNOWN_ATTRIBUTES,
            Attribute::MessageIntegrity(_) => attr::MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => attr::MESSAGE_INTEGRITY_SHA256,
            Attribute::Fingerprint(_) => attr::FINGERPRINT,
            Attribute::PasswordAlgorithms(_) => attr::PASSWORD_ALGORITHMS,
            Attribute::PasswordAlgorithm(_) => attr::PASSWORD_ALGORITHM,
            Attribute::ChannelNumber(_) => attr::CHANNEL_NUMBER,
            Attribute::Lifetime(_) => attr::LIFETIME,
            Attribute::Data(_) => attr::DATA,
            Attribute::RequestedAddressFamily(_) => attr::REQUESTED_ADDRESS_FAMILY,
            Attribute::AdditionalAddressFamily(_) => attr::ADDITIONAL_ADDRESS_FAMILY,
            Attribute::AddressErrorCode { .. } => attr::ADDRESS_ERROR_CODE,
            Attribute::EvenPort { .. } => attr::EVEN_PORT,
            Attribute::RequestedTransport(_) => attr::REQUESTED_TRANSPORT,
            Attribute::DontFragment => attr::DONT_FRAGMENT,
            Attribute::ReservationToken(_) => attr::RESERVATION_TOKEN,
            Attribute::Icmp { .. } => attr::ICMP,
            Attribute::ChangeRequest { .. } => attr::CHANGE_REQUEST,
            Attribute::ResponsePort(_) => attr::RESPONSE_PORT,
            Attribute::Padding(_) => attr::PADDING,
            Attribute::Priority(_) => attr::PRIORITY,
            Attribute::UseCandidate => attr::USE_CANDIDATE,
            Attribute::IceControlled(_) => attr::ICE_CONTROLLED,
            Attribute::IceControlling(_) => attr::ICE_CONTROLLING,
            Attribute::ConnectionId(_) => attr::CONNECTION_ID,
            Attribute::Unknown(raw) => raw.ty,
        }
    }

    /// Iterates a list of 16-bit values such as UNKNOWN-ATTRIBUTES.
    pub fn u16_list(list: &'a [u8]) -> impl Iterator<Item = u16> + 'a {
        list.chunks_exact(2)
            .filter_map(|c| c.try_into().ok().map(u16::from_be_bytes))
    }

    /// Iterates PASSWORD-ALGORITHMS entries; an entry that runs past the end ends the list.
    pub fn password_algorithms(list: &'a [u8]) -> impl Iterator<Item = PasswordAlgorithm<'a>> + 'a {
        password_algorithm_list(list).map_while(|a| a)
    }
}

/// Yields `None` once for a truncated entry. The last entry may omit its padding (the attribute's own padding
/// follows), which is how some encoders write a single PASSWORD-ALGORITHM with parameters.
fn password_algorithm_list(mut v: &[u8]) -> impl Iterator<Item = Option<PasswordAlgorithm<'_>>> {
    std::iter::from_fn(move || {
        if v.is_empty() {
            return None;
        }
        let [a0, a1, l0, l1, rest @ ..] = v else {
            v = &[];
            return Some(None);
        };
        let len = u16::from_be_bytes([*l0, *l1]) as usize;
        let padded = len.next_multiple_of(4);
        let next = if rest.len() == len {
            rest.get(len..)
        } else {
            rest.get(padded..)
        };
        let (Some(params), Some(next)) = (rest.get(..len), next) else {
            v = &[];
            return Some(None);
        };
        v = next;
        Some(Some(PasswordAlgorithm {
            algorithm: u16::from_be_bytes([*a0, *a1]),
            params,
        }))
    })
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// RFC 8489 §14.1: reserved byte, family, port, address.
fn decode_address(v: &[u8]) -> Option<SocketAddr> {
    let [_, family, p0, p1, addr @ ..] = v else { return None };
    let port = u16::from_be_bytes([*p0, *p1]);
    let ip = match (*family, addr.len()) {
        (FAMILY_IPV4, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?)),
        (FAMILY_IPV6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// RFC 8489 §14.2: the port is XORed with the cookie's top half, the address with cookie ‖ transaction id.
fn decode_xor_address(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let addr = decode_address(v)?;
    Some(xor_address(addr, tid))
}

/// XOR-encoding is its own inverse.
pub(crate) fn xor_address(addr: SocketAddr, tid: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match addr.ip() {
        IpAddr::V4(ip) => {
            let mut o = ip.octets();
            o.iter_mut().zip(cookie).for_each(|(b, k)| *b ^= k);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&cookie);
            key[4..].copy_from_slice(&tid.bytes[4..]);
            o.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    SocketAddr::new(ip, port)
}
