use thiserror::Error;

/// Why bytes are not a valid STUN message or attribute. All of these are the sender's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("first two bits are not zero: not a STUN message")]
    NotStun,
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
    #[error("message length field says {declared} bytes but {available} follow the header")]
    LengthMismatch { declared: usize, available: usize },
    #[error("attribute {ty:#06x} runs past the end of the message")]
    AttributeOverrun { ty: u16 },
    #[error("attribute {ty:#06x} has an invalid value")]
    InvalidAttribute { ty: u16 },
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    #[error("FINGERPRINT does not match")]
    FingerprintMismatch,
    #[error("ChannelData channel number {0:#06x} is outside 0x4000-0x7FFF")]
    InvalidChannelNumber(u16),
    #[error("ChannelData length {declared} exceeds the {available} bytes available")]
    ChannelDataOverrun { declared: usize, available: usize },
    #[error("a frame of {declared} bytes, where at most {max} are taken")]
    FrameTooLong { declared: usize, max: usize },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("buffer too small for the message")]
    BufferTooSmall,
    #[error("attribute value longer than 65535 bytes")]
    AttributeTooLong,
}
