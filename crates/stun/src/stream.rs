//! TURN on TCP and TLS: STUN messages and ChannelData frames back to back on one byte stream (RFC 8656 §12.5).

use crate::{classify, DecodeError, PacketKind, CHANNEL_DATA_HEADER_LEN, HEADER_LEN};

/// Bytes that tell a frame's length: the first four, for STUN and ChannelData alike.
const LENGTH_KNOWN_AT: usize = 4;

/// On a stream, the length of the frame that starts `buf`, or `None` when more bytes are needed to tell.
///
/// RFC 8656 §12.5: ChannelData frames on TCP/TLS are padded to a multiple of four; STUN messages always are
/// (RFC 8489 §5), so a STUN length that is not says the stream is not STUN, or lost its place.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let [b0, _, l0, l1, ..] = *buf else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([l0, l1]);
    match classify(b0) {
        PacketKind::Stun if len % 4 != 0 => Err(DecodeError::UnalignedLength(len)),
        PacketKind::Stun => Ok(Some(HEADER_LEN + usize::from(len))),
        PacketKind::ChannelData => Ok(Some(CHANNEL_DATA_HEADER_LEN + usize::from(len).next_multiple_of(4))),
        PacketKind::Other => Err(DecodeError::NotStun),
    }
}

/// A client's way to read a stream: takes the frame at the start of `inbox` if it is whole, else leaves `inbox` to
/// grow by another read. (A server uses [`StreamFramer`], which keeps nothing between frames.)
pub fn take_stream_frame(inbox: &mut Vec<u8>) -> Result<Option<Vec<u8>>, DecodeError> {
    Ok(match stream_frame_len(inbox)? {
        Some(len) if len <= inbox.len() => Some(inbox.drain(..len).collect()),
        _ => None,
    })
}

/// Cuts a TURN stream into frames, read by read.
///
/// The frames a read holds whole are handed out where they lie, in the caller's read buffer. Only a frame that a
/// read ends in is kept, and it takes from the next read just the bytes it lacks. So a connection keeps nothing
/// between frames (an idle one holds no buffer) and never more than the frame it is in the middle of, at most
/// 65 552 bytes: a STUN header and the largest length a multiple of four (the length field is 16 bits).
#[derive(Debug, Default)]
pub struct StreamFramer {
    /// The start of a frame an earlier read ended in; empty (and unallocated) otherwise.
    partial: Vec<u8>,
    /// The longest frame taken, when lower than the length field allows ([`Self::set_max_frame`]).
    max_frame: Option<usize>,
}

impl StreamFramer {
    /// Refuses frames longer than `max` (an error from [`Self::feed`]); `None`: up to the 65 552 bytes the length
    /// field allows. A server lowers it while a connection has no allocation: what it may send then is a few STUN
    /// requests of a few hundred bytes, and a 64 KiB frame it never finishes would be held for it.
    pub fn set_max_frame(&mut self, max: Option<usize>) {
        self.max_frame = max;
    }

    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        match (stream_frame_len(buf)?, self.max_frame) {
            (Some(declared), Some(max)) if declared > max => Err(DecodeError::FrameTooLong { declared, max }),
            (len, _) => Ok(len),
        }
    }

    /// Hands `on_frame` every frame completed by `chunk`, in order. An error means the stream is not TURN (or lost
    /// its place): nothing after it can be framed, and the connection should end. The frames before the error in
    /// the same read have been handed out.
    pub fn feed(&mut self, chunk: &[u8], mut on_frame: impl FnMut(&[u8])) -> Result<(), DecodeError> {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            loop {
                let (wanted, whole) = match self.frame_len(&self.partial)? {
                    Some(len) => (len, true),
                    None => (LENGTH_KNOWN_AT, false),
                };
                let lacking = wanted.saturating_sub(self.partial.len());
                let (taken, after) = rest.split_at(lacking.min(rest.len()));
                self.partial.reserve_exact(lacking);
                self.partial.extend_from_slice(taken);
                rest = after;
                if self.partial.len() < wanted {
                    return Ok(()); // the read ended first
                }
                if whole {
                    break;
                }
            }
            // Freed once handled: a connection between frames keeps nothing.
            on_frame(&std::mem::take(&mut self.partial));
        }
        while let Some(len) = self.frame_len(rest)? {
            let Some((frame, after)) = rest.split_at_checked(len) else {
                break;
            };
            on_frame(frame);
            rest = after;
        }
        if !rest.is_empty() {
            self.partial.reserve_exact(rest.len());
            self.partial.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Bytes kept for the frame the last read ended in (its allocation, which is what an idle connection costs).
    pub fn held(&self) -> usize {
        self.partial.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ChannelData frame with `len` payload bytes, padded as on a stream.
    fn channel_data(channel: u16, len: usize, fill: u8) -> Vec<u8> {
        let mut frame = channel.to_be_bytes().to_vec();
        frame.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        frame.resize(4 + len, fill);
        frame.resize(4 + len.next_multiple_of(4), 0);
        frame
    }

    /// A STUN-shaped frame (a Binding request's header) with `len` bytes of attributes.
    fn stun(len: usize) -> Vec<u8> {
        let mut frame = vec![0x00, 0x01];
        frame.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        frame.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        frame.extend_from_slice(&[7; 12]);
        frame.resize(20 + len, 0x5a);
        frame
    }

    /// Feeds `chunks` in turn; the frames handed out, and the first error.
    fn run(framer: &mut StreamFramer, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Result<(), DecodeError>) {
        let mut frames = Vec::new();
        for chunk in chunks {
            let fed = framer.feed(chunk, |f| frames.push(f.to_vec()));
            if fed.is_err() {
                return (frames, fed);
            }
        }
        (frames, Ok(()))
    }

    #[test]
    fn a_frame_past_the_limit_is_refused_before_it_is_held() {
        let mut framer = StreamFramer::default();
        framer.set_max_frame(Some(4096));
        let small = stun(200);
        let big = stun(60_000);
        // The big frame's header arrives at the end of a read: refused then, with nothing kept for it.
        let (frames, fed) = run(&mut framer, &[&[small.clone(), big[..20].to_vec()].concat()]);
        assert_eq!(frames, vec![small.clone()]);
        assert_eq!(
            fed,
            Err(DecodeError::FrameTooLong {
                declared: 60_020,
                max: 4096
            })
        );
        assert_eq!(framer.held(), 0);
        // Its first 3 bytes in one read, the rest of its length field in the next: refused as the length is known.
        let mut framer = StreamFramer::default();
        framer.set_max_frame(Some(4096));
        let (_, fed) = run(&mut framer, &[&big[..3], &big[3..100]]);
        assert_eq!(
            fed,
            Err(DecodeError::FrameTooLong {
                declared: 60_020,
                max: 4096
            })
        );
        // Without a limit, the same frame is taken whole.
        let mut framer = StreamFramer::default();
        let (frames, fed) = run(&mut framer, &[&big[..30_000], &big[30_000..]]);
        assert_eq!((frames, fed), (vec![big], Ok(())));
    }

    #[test]
    fn frames_whole_in_a_read_are_handed_out_and_nothing_is_kept() {
        let a = channel_data(0x4000, 5, 1);
        let b = stun(8);
        let mut framer = StreamFramer::default();
        let (frames, fed) = run(&mut framer, &[&[a.clone(), b.clone()].concat()]);
        assert_eq!(fed, Ok(()));
        assert_eq!(frames, vec![a, b]);
        assert_eq!(framer.held(), 0);
    }

    #[test]
    fn a_large_frame_is_given_back_once_handled() {
        // The largest ChannelData frame, cut into four reads, then a small frame: the framer held the large one
        // while it arrived and keeps nothing of it afterwards (the old loop kept ~128 KiB until the close).
        let big = channel_data(0x7fff, 65_535, 3);
        let small = channel_data(0x4001, 100, 4);
        let mut framer = StreamFramer::default();
        let quarter = big.len() / 4;
        let (frames, fed) = run(
            &mut framer,
            &[&big[..quarter], &big[quarter..2 * quarter], &big[2 * quarter..]],
        );
        assert_eq!(fed, Ok(()));
        assert_eq!(frames, vec![big.clone()]);
        assert_eq!(framer.held(), 0);
        let (frames, _) = run(&mut framer, &[&small]);
        assert_eq!(frames, vec![small]);
        assert_eq!(framer.held(), 0);
    }

    #[test]
    fn a_read_that_ends_in_a_frame_keeps_only_that_frames_start() {
        // One read completes a frame begun earlier, holds a whole one and begins a third with 3 bytes: only
        // those 3 bytes are kept, not the read.
        let first = channel_data(0x4000, 1000, 1);
        let second = channel_data(0x4001, 9000, 2);
        let third = stun(40);
        let stream = [first.clone(), second.clone(), third.clone()].concat();
        let mut framer = StreamFramer::default();
        let cut = first.len() - 10;
        let (frames, _) = run(&mut framer, &[&stream[..cut]]);
        assert!(frames.is_empty());
        assert_eq!(framer.held(), cut);
        let end = first.len() + second.len() + 3;
        let (frames, _) = run(&mut framer, &[&stream[cut..end]]);
        assert_eq!(frames, vec![first, second]);
        assert_eq!(framer.held(), 3);
        let (frames, _) = run(&mut framer, &[&stream[end..]]);
        assert_eq!(frames, vec![third]);
        assert_eq!(framer.held(), 0);
    }

    #[test]
    fn a_frame_fed_a_byte_at_a_time_arrives_whole() {
        let frame = stun(12);
        let mut framer = StreamFramer::default();
        let bytes: Vec<&[u8]> = frame.chunks(1).collect();
        let (frames, fed) = run(&mut framer, &bytes);
        assert_eq!(fed, Ok(()));
        assert_eq!(frames, vec![frame]);
        assert_eq!(framer.held(), 0);
    }

    #[test]
    fn what_is_not_turn_is_refused_after_the_frames_before_it() {
        let good = channel_data(0x4000, 3, 9);
        for bad in [&[0xc0, 0, 0, 4][..], &[0x00, 0x01, 0x00, 0x05][..]] {
            let mut framer = StreamFramer::default();
            let (frames, fed) = run(&mut framer, &[&[good.clone(), bad.to_vec()].concat()]);
            assert_eq!(frames, vec![good.clone()]);
            assert!(fed.is_err(), "{bad:?} was framed");
            // The same bytes refused when they are what completes a kept header.
            let mut framer = StreamFramer::default();
            let (_, fed) = run(&mut framer, &[&bad[..2], &bad[2..]]);
            assert!(fed.is_err(), "{bad:?} was framed across reads");
        }
        assert_eq!(
            stream_frame_len(&[0x00, 0x01, 0x00, 0x05]),
            Err(DecodeError::UnalignedLength(5))
        );
    }

    #[test]
    fn a_client_takes_whole_frames_only() {
        let frame = channel_data(0x4000, 5, 1);
        let mut inbox = frame[..7].to_vec();
        assert_eq!(take_stream_frame(&mut inbox), Ok(None));
        inbox.extend_from_slice(&frame[7..]);
        inbox.extend_from_slice(&[0x00, 0x01]);
        assert_eq!(take_stream_frame(&mut inbox), Ok(Some(frame)));
        assert_eq!(inbox, [0x00, 0x01]);
        assert_eq!(take_stream_frame(&mut inbox), Ok(None));
        assert_eq!(take_stream_frame(&mut vec![0xff, 0, 0, 0]), Err(DecodeError::NotStun));
    }

    proptest! {
        #[test]
        fn frames_arrive_whole_and_in_order_however_the_stream_is_cut(
            sizes in prop::collection::vec((any::<bool>(), 0usize..3000), 1..12),
            cuts in prop::collection::vec(1usize..5000, 1..40),
        ) {
            let sent: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &(is_stun, len))| {
                    if is_stun { stun(len / 4 * 4) } else { channel_data(0x4000 + i as u16, len, i as u8) }
                })
                .collect();
            let stream = sent.concat();
            let mut framer = StreamFramer::default();
            let mut frames = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at == stream.len() {
                    break;
                }
                let end = (at + cut).min(stream.len());
                framer.feed(&stream[at..end], |f| frames.push(f.to_vec())).unwrap();
                // Never more kept than the frame the read ended in.
                prop_assert!(framer.held() <= sent.iter().map(Vec::len).max().unwrap_or(0));
                at = end;
            }
            prop_assert_eq!(frames, sent);
            prop_assert_eq!(framer.held(), 0);
        }
    }
}
