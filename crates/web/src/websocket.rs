//! RFC 6455 for the signaling socket, sans-IO: the opening handshake's checks and answer, and frames in and out.
//!
//! Our own code rather than tungstenite's because idle sockets must cost (almost) nothing (issue 14): tungstenite
//! keeps a read buffer and a write buffer in every socket for its whole life (2 KiB and up to 4 KiB here, a third of
//! an idle socket's memory) and copies every message into an allocation of its own. Here the socket task reads into
//! a buffer of its worker thread ([`crate::ws`]), [`Decoder::feed`] hands each complete message to the hub in place
//! (unmasked where it lies), and only the bytes of a frame that has not fully arrived, or of a fragmented message,
//! are kept per socket — and freed as soon as it is complete.
//!
//! What a server must enforce is enforced: clients mask, no reserved bits (no extension is ever negotiated), known
//! opcodes, control frames unfragmented and at most 125 bytes, continuations only inside a fragmented message, text
//! that is UTF-8, close codes that may be sent, and a size limit checked on the frame's header — a message over it
//! is refused before its payload is read.

use axum::http;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (RFC 6455 §1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Why an upgrade request is not one (RFC 6455 §4.2.1), in the words of the JSON error sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadUpgrade {
    /// Not `GET`.
    Method,
    /// No `Upgrade: websocket` with `Connection: upgrade`.
    NotUpgrade,
    /// A version other than 13: answered with 426 and the version we speak (§4.4).
    Version,
    /// No valid `Sec-WebSocket-Key` (16 bytes, base64).
    Key,
}

impl BadUpgrade {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Method => "A WebSocket upgrade must be a GET request.",
            Self::NotUpgrade => {
                "This address takes WebSocket connections only: send Upgrade: websocket and Connection: Upgrade."
            }
            Self::Version => "This server speaks WebSocket version 13 only (Sec-WebSocket-Version: 13).",
            Self::Key => "The WebSocket upgrade has no valid Sec-WebSocket-Key.",
        }
    }
}

/// Checks an upgrade request's method and headers; `Ok` is the `Sec-WebSocket-Accept` to answer with.
pub(crate) fn check_upgrade(method: &http::Method, headers: &http::HeaderMap) -> Result<String, BadUpgrade> {
    if method != http::Method::GET {
        return Err(BadUpgrade::Method);
    }
    let has_token = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(http::header::UPGRADE, "websocket") || !has_token(http::header::CONNECTION, "upgrade") {
        return Err(BadUpgrade::NotUpgrade);
    }
    if headers.get(http::header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(BadUpgrade::Version);
    }
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .ok_or(BadUpgrade::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(accept_key(key)),
        _ => Err(BadUpgrade::Key),
    }
}

/// The first of `ours` the client offered in `Sec-WebSocket-Protocol`, if any.
pub(crate) fn pick_protocol(headers: &http::HeaderMap, ours: &[&'static str]) -> Option<&'static str> {
    let offered: Vec<&str> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .collect();
    ours.iter().copied().find(|p| offered.contains(p))
}

/// A close code (RFC 6455 §7.4): what the socket task sends when a frame breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// 1002: the framing rules (unmasked, reserved bits, unknown opcode, a stray continuation, …).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// 1007: a text message or a close reason that is not UTF-8.
    #[error("text that is not UTF-8")]
    NotUtf8,
    /// 1009: a message, a frame or a control frame over its limit.
    #[error("message too large")]
    TooLarge,
}

impl FrameError {
    pub(crate) fn close_code(self) -> u16 {
        match self {
            Self::Protocol(_) => 1002,
            Self::NotUtf8 => 1007,
            Self::TooLarge => 1009,
        }
    }

    /// The close frame's reason: the names the protocol's other closes use.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Protocol(_) => "protocol-error",
            Self::NotUtf8 => "not-utf8",
            Self::TooLarge => "too-large",
        }
    }
}

/// A message or control frame the client sent, borrowed from the buffer it arrived in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    Text(&'a str),
    /// The signaling protocol has no binary messages: only the fact is passed on.
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The client's close: its code and reason, if it gave one.
    Close(Option<(u16, &'a str)>),
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// Reads the client's frames out of the bytes as they arrive.
#[derive(Debug)]
pub(crate) struct Decoder {
    max_message: usize,
    /// The start of a frame that has not fully arrived. Unallocated between frames.
    partial: Vec<u8>,
    /// A fragmented message being put together: text or not, and its bytes so far. `None` between messages (boxed:
    /// rare, and every socket's task holds this field).
    fragmented: Option<Box<(bool, Vec<u8>)>>,
    /// A close frame was read: nothing after it is looked at (§5.5.1).
    closed: bool,
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Self {
            max_message,
            partial: Vec::new(),
            fragmented: None,
            closed: false,
        }
    }

    /// A close frame was read.
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    #[cfg(test)]
    /// Bytes kept for this socket between reads (a partial frame, a fragmented message): what an idle socket holds.
    pub(crate) fn held(&self) -> usize {
        self.partial.capacity() + self.fragmented.as_ref().map_or(0, |f| f.1.capacity())
    }

    /// Takes the bytes just read and hands every complete message and control frame to `on_event`, in order.
    /// `chunk` is unmasked in place. An error is the close to send; nothing more should be fed after it or after a
    /// [`Event::Close`].
    pub(crate) fn feed(&mut self, chunk: &mut [u8], on_event: &mut dyn FnMut(Event<'_>)) -> Result<(), FrameError> {
        if self.closed {
            return Ok(());
        }
        let mut start = 0;
        if !self.partial.is_empty() {
            // A frame begun in an earlier read: complete it in the socket's own buffer with just the bytes it lacks,
            // so that buffer never holds more than that frame, and the frames after it are read where they lie.
            loop {
                let (wanted, whole) = self.wanted()?;
                let take = wanted
                    .saturating_sub(self.partial.len())
                    .min(chunk.len().saturating_sub(start));
                self.partial
                    .extend_from_slice(chunk.get(start..start + take).unwrap_or_default());
                start += take;
                if self.partial.len() < wanted {
                    return Ok(()); // the read ended first
                }
                if whole {
                    break;
                }
            }
            let mut frame = std::mem::take(&mut self.partial);
            self.frames(&mut frame, on_event)?;
        }
        let Some(rest) = chunk.get_mut(start..) else {
            return Ok(());
        };
        let used = self.frames(rest, on_event)?;
        if let Some(left) = rest.get(used..) {
            // Nothing after a close is kept (or read).
            if !left.is_empty() && !self.closed {
                self.partial.reserve_exact(left.len());
                self.partial.extend_from_slice(left);
            }
        }
        Ok(())
    }

    /// The length of the frame begun in `partial` as far as its bytes tell: the whole frame once its header is in
    /// (`true`), else the header's length (`false`: the second byte says how long it is).
    fn wanted(&self) -> Result<(usize, bool), FrameError> {
        if let Some(header) = Header::parse(&self.partial, self.max_message)? {
            return Ok((header.start + header.len, true));
        }
        // Once the header is in, `Header::parse` gives the whole frame: the loop in `feed` moves on.
        Ok((self.partial.get(1).map_or(2, |&b1| Header::len(b1)), false))
    }

    /// Decodes the complete frames at the start of `buf`; the bytes used.
    fn frames(&mut self, buf: &mut [u8], on_event: &mut dyn FnMut(Event<'_>)) -> Result<usize, FrameError> {
        let mut used = 0;
        while !self.closed {
            let Some(rest) = buf.get_mut(used..) else { break };
            let Some(header) = Header::parse(rest, self.max_message)? else {
                break;
            };
            let end = header.start + header.len;
            let Some(payload) = rest.get_mut(header.start..end) else {
                break;
            };
            unmask(payload, header.mask);
            self.frame(&header, payload, on_event)?;
            used += end;
        }
        Ok(used)
    }

    fn frame(
        &mut self,
        header: &Header,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), FrameError> {
        match header.opcode {
            OP_TEXT | OP_BINARY => {
                if self.fragmented.is_some() {
                    return Err(FrameError::Protocol("a new message inside a fragmented one"));
                }
                let text = header.opcode == OP_TEXT;
                if header.fin {
                    message(text, payload, on_event)?;
                } else {
                    self.fragmented = Some(Box::new((text, payload.to_vec())));
                }
            }
            OP_CONTINUATION => {
                let Some(fragmented) = self.fragmented.as_mut() else {
                    return Err(FrameError::Protocol("a continuation outside a fragmented message"));
                };
                let (text, so_far) = &mut **fragmented;
                if so_far.len() + payload.len() > self.max_message {
                    return Err(FrameError::TooLarge);
                }
                so_far.extend_from_slice(payload);
                if header.fin {
                    let text = *text;
                    let whole = self.fragmented.take().map(|f| f.1).unwrap_or_default();
                    message(text, &whole, on_event)?;
                }
            }
            OP_PING => on_event(Event::Ping(payload)),
            OP_PONG => on_event(Event::Pong),
            OP_CLOSE => {
                self.closed = true;
                on_event(Event::Close(close_payload(payload)?));
            }
            _ => return Err(FrameError::Protocol("an unknown opcode")),
        }
        Ok(())
    }
}

fn message(text: bool, payload: &[u8], on_event: &mut dyn FnMut(Event<'_>)) -> Result<(), FrameError> {
    if text {
        on_event(Event::Text(
            std::str::from_utf8(payload).map_err(|_| FrameError::NotUtf8)?,
        ));
    } else {
        on_event(Event::Binary);
    }
    Ok(())
}

/// A close frame's code and reason (§5.5.1, §7.4.1): none, or a code that may be sent and a UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(FrameError::Protocol("a close frame with a 1-byte payload"))
        };
    };
    let code = u16::from_be_bytes(*code);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(FrameError::Protocol("a close code that may not be sent"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| FrameError::NotUtf8)?;
    Ok(Some((code, reason)))
}

/// A frame's header, once all of it has arrived.
#[derive(Debug)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Where the payload starts.
    start: usize,
    len: usize,
}

impl Header {
    /// The header's length, from its second byte: 2, the extended length (0, 2 or 8 bytes), the 4-byte mask.
    fn len(b1: u8) -> usize {
        2 + match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        } + 4
    }

    /// `None` while the header is incomplete. Refuses what breaks the rules as soon as the bytes that show it are
    /// in — a length over the limit before any of its payload.
    fn parse(buf: &[u8], max_message: usize) -> Result<Option<Header>, FrameError> {
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set without an extension"));
        }
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(FrameError::Protocol("an unknown opcode"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("a client frame that is not masked"));
        }
        let control = opcode >= OP_CLOSE;
        if control && !fin {
            return Err(FrameError::Protocol("a fragmented control frame"));
        }
        let len = match b1 & 0x7f {
            126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
                Some(b) => u64::from(u16::from_be_bytes(b)),
                None => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => {
                    let len = u64::from_be_bytes(b);
                    if len >> 63 != 0 {
                        return Err(FrameError::Protocol("a length with its top bit set"));
                    }
                    len
                }
                None => return Ok(None),
            },
            n => u64::from(n),
        };
        // Control frames carry at most 125 bytes (§5.5); refused as too large, as the size limit is.
        let limit = if control { 125 } else { max_message };
        let len = match usize::try_from(len) {
            Ok(len) if len <= limit => len,
            _ => return Err(FrameError::TooLarge),
        };
        let start = Header::len(b1);
        let Some(mask) = buf.get(start - 4..start).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            start,
            len,
        }))
    }
}

/// XORs the payload with the client's mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(bytes) = <&mut [u8; 8]>::try_from(chunk) {
            *bytes = (u64::from_ne_bytes(*bytes) ^ wide).to_ne_bytes();
        }
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

/// A server frame's header (never masked, always final): opcode and length, at most 10 bytes.
pub(crate) fn header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends a text frame.
pub(crate) fn text_frame(text: &[u8], out: &mut Vec<u8>) {
    header(OP_TEXT, text.len(), out);
    out.extend_from_slice(text);
}

/// Appends a close frame with a code and a reason (cut to fit the 125 bytes a control frame may carry).
pub(crate) fn close_frame(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = reason.get(..cut).unwrap_or("");
    header(OP_CLOSE, 2 + reason.len(), out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// The server's ping: empty, final, unmasked.
pub(crate) const PING_FRAME: [u8; 2] = [0x80 | OP_PING, 0];

/// Appends a pong, echoing the ping's payload (at most 125 bytes by the decoder's check).
pub(crate) fn pong_frame(payload: &[u8], out: &mut Vec<u8>) {
    header(OP_PONG, payload.len(), out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: masked, with the given first byte.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        masked(b0, payload, MASK)
    }

    /// A client frame under the given mask.
    fn masked(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary,
        Ping(Vec<u8>),
        Pong,
        Close(Option<(u16, String)>),
    }

    fn feed(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Owned>, FrameError> {
        let (out, result) = feed_until_error(decoder, bytes);
        result.map(|()| out)
    }

    /// The events handed on, those before an error in the same read included (the socket task acts on them).
    fn feed_until_error(decoder: &mut Decoder, bytes: &[u8]) -> (Vec<Owned>, Result<(), FrameError>) {
        let mut out = Vec::new();
        let mut bytes = bytes.to_vec();
        let result = decoder.feed(&mut bytes, &mut |e| {
            out.push(match e {
                Event::Text(t) => Owned::Text(t.into()),
                Event::Binary => Owned::Binary,
                Event::Ping(p) => Owned::Ping(p.into()),
                Event::Pong => Owned::Pong,
                Event::Close(c) => Owned::Close(c.map(|(code, r)| (code, r.into()))),
            })
        });
        (out, result)
    }

    #[test]
    fn the_accept_key_is_the_rfcs_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn upgrade_requests_are_checked() {
        let mut h = http::HeaderMap::new();
        h.insert("upgrade", "WebSocket".parse().unwrap());
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("sec-websocket-version", "13".parse().unwrap());
        h.insert("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap());
        h.insert("sec-websocket-protocol", "other, traverse.v1".parse().unwrap());
        assert_eq!(
            check_upgrade(&http::Method::GET, &h).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(pick_protocol(&h, &["traverse.v1"]), Some("traverse.v1"));
        assert_eq!(pick_protocol(&h, &["v2"]), None);
        assert_eq!(check_upgrade(&http::Method::POST, &h), Err(BadUpgrade::Method));
        let mut old = h.clone();
        old.insert("sec-websocket-version", "8".parse().unwrap());
        assert_eq!(check_upgrade(&http::Method::GET, &old), Err(BadUpgrade::Version));
        let mut short = h.clone();
        short.insert("sec-websocket-key", "c2hvcnQ=".parse().unwrap());
        assert_eq!(check_upgrade(&http::Method::GET, &short), Err(BadUpgrade::Key));
        let mut plain = h.clone();
        plain.remove("upgrade");
        assert_eq!(check_upgrade(&http::Method::GET, &plain), Err(BadUpgrade::NotUpgrade));
    }

    #[test]
    fn messages_arrive_whole_however_the_bytes_are_cut() {
        let long = "é".repeat(40_000); // 80 000 bytes: a 64-bit length
        let mut stream = client(0x81, br#"{"type":"ping"}"#);
        stream.extend(client(0x89, b"hi"));
        stream.extend(client(0x01, "frag".as_bytes()));
        stream.extend(client(0x8a, b""));
        stream.extend(client(0x80, "ment€".as_bytes()));
        stream.extend(client(0x82, &[1, 2, 3]));
        stream.extend(client(0x81, "x".repeat(300).as_bytes()));
        stream.extend(client(0x81, long.as_bytes()));
        stream.extend(client(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        let want = vec![
            Owned::Text(r#"{"type":"ping"}"#.into()),
            Owned::Ping(b"hi".to_vec()),
            Owned::Pong,
            Owned::Text("fragment€".into()),
            Owned::Binary,
            Owned::Text("x".repeat(300)),
            Owned::Text(long.clone()),
            Owned::Close(Some((1000, "bye".into()))),
        ];
        for step in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut d = Decoder::new(100_000);
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                got.extend(feed(&mut d, piece).expect("valid frames"));
            }
            assert_eq!(got, want, "cut every {step} bytes");
            assert_eq!(d.held(), 0, "nothing kept once every frame is whole");
        }
    }

    #[test]
    fn a_partial_frame_is_all_an_idle_socket_keeps() {
        let mut d = Decoder::new(1024);
        let frame = client(0x81, b"hello");
        assert_eq!(feed(&mut d, &frame[..4]).unwrap(), vec![]);
        assert!(d.held() >= 4);
        assert_eq!(feed(&mut d, &frame[4..]).unwrap(), vec![Owned::Text("hello".into())]);
        assert_eq!(d.held(), 0);
        // The rest of a frame, many whole ones and the start of another, in one read: only that start is kept.
        let mut read = frame[4..].to_vec();
        for _ in 0..100 {
            read.extend(client(0x81, &[b'a'; 100]));
        }
        read.extend(&frame[..3]);
        assert_eq!(feed(&mut d, &frame[..4]).unwrap(), vec![]);
        assert_eq!(feed(&mut d, &read).unwrap().len(), 101);
        assert_eq!(d.held(), 3, "held {} after a read of {} bytes", d.held(), read.len());
    }

    #[test]
    fn broken_rules_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
                FrameError::Protocol("a client frame that is not masked"),
            ),
            (
                client(0xc1, b"x"),
                FrameError::Protocol("reserved bits set without an extension"),
            ),
            (client(0x83, b"x"), FrameError::Protocol("an unknown opcode")),
            (
                client(0x80, b"x"),
                FrameError::Protocol("a continuation outside a fragmented message"),
            ),
            (client(0x09, b"x"), FrameError::Protocol("a fragmented control frame")),
            (client(0x81, &[0xff, 0xfe]), FrameError::NotUtf8),
            (client(0x81, &[b'x'; 1025]), FrameError::TooLarge),
            (client(0x89, &[0; 126]), FrameError::TooLarge),
            (
                client(0x88, &[0x03]),
                FrameError::Protocol("a close frame with a 1-byte payload"),
            ),
            (
                client(0x88, &[0x03, 0xed]),
                FrameError::Protocol("a close code that may not be sent"),
            ),
            (client(0x88, &[0x03, 0xe8, 0xff]), FrameError::NotUtf8),
            (
                [client(0x01, b"a"), client(0x81, b"b")].concat(),
                FrameError::Protocol("a new message inside a fragmented one"),
            ),
            (
                [client(0x01, &[b'a'; 600]), client(0x80, &[b'b'; 600])].concat(),
                FrameError::TooLarge,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(feed(&mut Decoder::new(1024), &bytes), Err(want), "{bytes:02x?}");
        }
        // Over the limit on the header alone: refused before any of the payload is read, and nothing is kept.
        let mut d = Decoder::new(1024);
        let mut head = vec![0x81, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(feed(&mut d, &head), Err(FrameError::TooLarge));
        let mut top = vec![0x81, 0x80 | 127];
        top.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(
            feed(&mut Decoder::new(1024), &top),
            Err(FrameError::Protocol("a length with its top bit set"))
        );
    }

    #[test]
    fn nothing_after_a_close_is_read() {
        let mut d = Decoder::new(1024);
        let bytes = [client(0x88, &[]), client(0x81, b"late")].concat();
        assert_eq!(feed(&mut d, &bytes).unwrap(), vec![Owned::Close(None)]);
    }

    #[test]
    fn server_frames_have_the_three_length_forms() {
        for (len, head) in [
            (5usize, vec![0x81, 5]),
            (300, vec![0x81, 126, 1, 44]),
            (70_000, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]),
        ] {
            let mut out = Vec::new();
            text_frame(&vec![b'a'; len], &mut out);
            assert_eq!(out[..head.len()], head[..]);
            assert_eq!(out.len(), head.len() + len);
        }
        let mut out = Vec::new();
        close_frame(4104, &"é".repeat(100), &mut out);
        assert_eq!(out[0], 0x88);
        assert!(out[1] <= 125);
        assert_eq!(&out[2..4], &4104u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok(), "cut on a character boundary");
    }

    #[test]
    fn unmasking_matches_the_byte_by_byte_rule() {
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut masked: Vec<u8> = plain.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect();
            unmask(&mut masked, MASK);
            assert_eq!(masked, plain);
        }
    }

    /// What a client sends in a random stream: a message (cut into fragments at the given places, with a ping
    /// between fragments where one is given), a ping or a pong.
    #[derive(Debug, Clone)]
    enum Sent {
        Message {
            text: bool,
            bytes: Vec<u8>,
            cuts: Vec<usize>,
            pings: Vec<Option<Vec<u8>>>,
        },
        Ping(Vec<u8>),
        Pong(Vec<u8>),
    }

    fn sent() -> impl Strategy<Value = Sent> {
        let cuts = || proptest::collection::vec(0usize..1300, 0..4);
        let pings = || proptest::collection::vec(proptest::option::of(control()), 0..4);
        prop_oneof![
            (".{0,300}", cuts(), pings()).prop_map(|(t, cuts, pings)| Sent::Message {
                text: true,
                bytes: String::into_bytes(t),
                cuts,
                pings
            }),
            (proptest::collection::vec(any::<u8>(), 0..1300), cuts(), pings()).prop_map(|(bytes, cuts, pings)| {
                Sent::Message {
                    text: false,
                    bytes,
                    cuts,
                    pings,
                }
            }),
            control().prop_map(Sent::Ping),
            control().prop_map(Sent::Pong),
        ]
    }

    fn control() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=125)
    }

    /// The stream a client would send for `messages` (then a close, if given), each frame under a mask of its own,
    /// and the events the decoder must hand on for it.
    fn stream(messages: &[Sent], close: Option<(u16, String)>, seed: u32) -> (Vec<u8>, Vec<Owned>) {
        let mut frames = 0u32;
        let mut mask = || {
            frames += 1;
            seed.wrapping_mul(2_654_435_761)
                .wrapping_add(frames.wrapping_mul(40_503))
                .to_be_bytes()
        };
        let (mut bytes, mut want) = (Vec::new(), Vec::new());
        for m in messages {
            match m {
                Sent::Message {
                    text,
                    bytes: payload,
                    cuts,
                    pings,
                } => {
                    let mut at: Vec<usize> = cuts.iter().map(|c| c % (payload.len() + 1)).collect();
                    at.sort_unstable();
                    at.dedup();
                    at.push(payload.len());
                    let mut from = 0;
                    for (i, to) in at.iter().copied().enumerate() {
                        let fin = if i + 1 == at.len() { 0x80 } else { 0 };
                        let opcode = match (i, text) {
                            (0, true) => OP_TEXT,
                            (0, false) => OP_BINARY,
                            _ => OP_CONTINUATION,
                        };
                        bytes.extend(masked(fin | opcode, &payload[from..to], mask()));
                        from = to;
                        if fin == 0 {
                            if let Some(Some(ping)) = pings.get(i) {
                                bytes.extend(masked(0x80 | OP_PING, ping, mask()));
                                want.push(Owned::Ping(ping.clone()));
                            }
                        }
                    }
                    want.push(if *text {
                        Owned::Text(String::from_utf8(payload.clone()).expect("generated as a string"))
                    } else {
                        Owned::Binary
                    });
                }
                Sent::Ping(p) => {
                    bytes.extend(masked(0x80 | OP_PING, p, mask()));
                    want.push(Owned::Ping(p.clone()));
                }
                Sent::Pong(p) => {
                    bytes.extend(masked(0x80 | OP_PONG, p, mask()));
                    want.push(Owned::Pong);
                }
            }
        }
        if let Some((code, reason)) = close {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason.as_bytes());
            bytes.extend(masked(0x80 | OP_CLOSE, &payload, mask()));
            want.push(Owned::Close(Some((code, reason))));
        }
        (bytes, want)
    }

    /// What a decoder made of a stream: every event up to the first error, the error, and the bytes it held at the
    /// end.
    struct Fed {
        events: Vec<Owned>,
        result: Result<(), FrameError>,
        held: usize,
    }

    /// Feeds `bytes` cut at `cuts` (positions taken modulo its length), checking on the way that the decoder never
    /// holds more than a frame and a message.
    fn outcome(bytes: &[u8], cuts: &[usize], max_message: usize) -> Fed {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.sort_unstable();
        at.push(bytes.len());
        let mut d = Decoder::new(max_message);
        let (mut events, mut from) = (Vec::new(), 0);
        for to in at {
            let (got, result) = feed_until_error(&mut d, &bytes[from..to]);
            events.extend(got);
            if result.is_err() {
                let held = d.held();
                return Fed { events, result, held };
            }
            // A frame (its header is at most 14 bytes) and a message, each twice over for a buffer's growth.
            assert!(
                d.held() <= 2 * (max_message + 14) + 2 * max_message,
                "held {}",
                d.held()
            );
            from = to;
        }
        Fed {
            events,
            result: Ok(()),
            held: d.held(),
        }
    }

    const CLOSE_CODES: [u16; 5] = [1000, 1001, 1011, 3000, 4999];

    proptest! {
        /// Whatever a well-behaved client sends, however TCP cuts it: every message whole and in order, control
        /// frames where they came (between fragments too), and nothing kept afterwards.
        #[test]
        fn random_streams_arrive_whole_however_they_are_cut(
            messages in proptest::collection::vec(sent(), 0..12),
            close in proptest::option::of((0..CLOSE_CODES.len(), ".{0,30}")),
            seed in any::<u32>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            // At most 30 characters: 120 bytes, within the 123 a close frame has for its reason.
            let close = close.map(|(i, reason)| (CLOSE_CODES[i], reason));
            let (bytes, want) = stream(&messages, close, seed);
            let fed = outcome(&bytes, &cuts, 4096);
            prop_assert_eq!(fed.result, Ok(()));
            prop_assert_eq!(fed.events, want);
            prop_assert_eq!(fed.held, 0);
        }

        /// A stream with random bytes changed: never a panic, never more held than a frame and a message, and
        /// the same events and the same close code however the bytes are cut.
        #[test]
        fn damaged_streams_end_the_same_however_they_are_cut(
            messages in proptest::collection::vec(sent(), 1..8),
            seed in any::<u32>(),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let (mut bytes, _) = stream(&messages, None, seed);
            for (at, byte) in damage {
                let len = bytes.len();
                if let Some(b) = bytes.get_mut(at % len.max(1)) {
                    *b = byte;
                }
            }
            let (whole, cut) = (outcome(&bytes, &[], 1024), outcome(&bytes, &cuts, 1024));
            prop_assert_eq!(cut.events, whole.events);
            prop_assert_eq!(cut.result, whole.result);
        }
    }
}
