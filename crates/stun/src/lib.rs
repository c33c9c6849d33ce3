#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! A zero-copy STUN (RFC 8489) codec with the TURN attributes of RFC 8656 and the NAT-discovery attributes of
//! RFC 5780.
//!
//! Model: [`Message::parse`] validates the header and *every* attribute length once, then hands out borrowed views
//! into the caller's buffer; nothing is copied or allocated. [`MessageWriter`] encodes into a caller's buffer and
//! computes MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT in place.
//!
//! This codec is ours rather than a crate's because it sits on the relay's hot path: a ChannelData or Send
//! indication is classified and routed without building an owned message, which the general-purpose crates do.
//!
//! Classic RFC 3489 messages (no magic cookie, 128-bit transaction id) parse too; [`Message::is_rfc3489`] tells
//! them apart so a server can answer with MAPPED-ADDRESS.

mod attribute;
mod channel_data;
mod error;
mod integrity;
mod message;
mod stream;
mod writer;

pub use attribute::{
    attr, is_comprehension_required, Attribute, ErrorCode, PasswordAlgorithm, RawAttribute, PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
};
pub use channel_data::{ChannelData, ChannelNumber, CHANNEL_DATA_HEADER_LEN};
pub use error::{DecodeError, EncodeError};
pub use integrity::{long_term_key_md5, long_term_key_sha256, userhash, IntegrityKey};
pub use message::{Class, Message, Method, TransactionId};
pub use stream::{stream_frame_len, take_stream_frame, StreamFramer};
pub use writer::MessageWriter;

/// RFC 8489 §5: the fixed value that distinguishes RFC 5389+ messages from RFC 3489 ones.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// RFC 8489 §14.7: FINGERPRINT is the CRC-32 of the message XOR this value.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// What kind of packet a datagram or stream frame holds, read from its first two bits (RFC 7983 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    ChannelData,
    Other,
}

/// Classifies a packet by its first byte without parsing it.
pub fn classify(first_byte: u8) -> PacketKind {
    match first_byte >> 6 {
        0b00 => PacketKind::Stun,
        0b01 => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}
