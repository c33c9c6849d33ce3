use crate::error::DecodeError;

/// RFC 8656 §12.4: channel number and length, 2 bytes each.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A channel number: 0x4000 through 0x7FFF.
///
/// RFC 8656 §12 narrowed the range to 0x4000-0x4FFF, but RFC 5766 clients (coturn's own `turnutils_uclient`
/// among them) still pick numbers up to 0x7FFF, and the first two bits (01) are what tell ChannelData from STUN, so
/// the whole RFC 5766 range is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const MIN: u16 = 0x4000;
    pub const MAX: u16 = 0x7fff;

    pub fn new(n: u16) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&n).then_some(Self(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// A borrowed ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: ChannelNumber,
    pub payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message. Trailing bytes (stream padding, or a UDP datagram padded by the sender as
    /// RFC 8656 §12.5 allows) are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let [c0, c1, l0, l1, rest @ ..] = buf else {
            return Err(DecodeError::TooShort);
        };
        let n = u16::from_be_bytes([*c0, *c1]);
        let channel = ChannelNumber::new(n).ok_or(DecodeError::InvalidChannelNumber(n))?;
        let len = u16::from_be_bytes([*l0, *l1]) as usize;
        let payload = rest.get(..len).ok_or(DecodeError::ChannelDataOverrun {
            declared: len,
            available: rest.len(),
        })?;
        Ok(Self { channel, payload })
    }

    /// Writes the 4-byte header in front of a payload of `payload_len` bytes (the caller placed the payload at
    /// `buf[4..]`, so relaying needs no copy).
    pub fn write_header(buf: &mut [u8; CHANNEL_DATA_HEADER_LEN], channel: ChannelNumber, payload_len: u16) {
        buf[..2].copy_from_slice(&channel.get().to_be_bytes());
        buf[2..].copy_from_slice(&payload_len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let buf = [0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0];
        let cd = ChannelData::parse(&buf).unwrap();
        assert_eq!(cd.channel.get(), 0x4001);
        assert_eq!(cd.payload, &[1, 2, 3]);
        assert_eq!(
            ChannelData::parse(&[0x80, 0x00, 0, 0]).unwrap_err(),
            DecodeError::InvalidChannelNumber(0x8000)
        );
        assert!(matches!(
            ChannelData::parse(&[0x40, 0x00, 0, 9, 1]),
            Err(DecodeError::ChannelDataOverrun {
                declared: 9,
                available: 1
            })
        ));
        assert_eq!(ChannelData::parse(&[0x40]).unwrap_err(), DecodeError::TooShort);
    }
}
