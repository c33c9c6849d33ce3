//! Server→client frames of protocol v1 (`docs/protocol.md`, "Server → client"), written by one encoder.
//!
//! A frame is `{"seq":N,` followed by its body. [`Frame::encode`] writes both into one buffer sized before it is
//! allocated, which becomes the `Bytes` the replay buffer and the socket share (one allocation per delivered
//! message). What goes in unescaped is what a type vouches for: [`PeerId`] and [`SessionSecret`] (hub-made,
//! `[a-z0-9_]`), [`Meta`] (serialised by serde_json), `data` and `iceServers` (`RawValue`: JSON already checked),
//! numbers and the codes' own names. Anything a client wrote (a room name, a message id, an error message that
//! quotes the client) is escaped exactly as serde_json escapes it, so the bytes on the wire are what they were when
//! these frames went through serde_json.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::budget::Over;
use crate::id::{PeerId, SessionSecret};
use crate::protocol::ErrorCode;

/// A peer's public metadata: a JSON object serialised by serde_json, shared by every frame that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta(Arc<str>);

impl Meta {
    pub fn from_object(object: serde_json::Map<String, serde_json::Value>) -> Self {
        if object.is_empty() {
            return Self::empty();
        }
        Self(serde_json::Value::Object(object).to_string().into())
    }

    /// `{}`: one allocation shared by every peer without metadata (most of them), not one per session.
    pub fn empty() -> Self {
        static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Self(EMPTY.get_or_init(|| "{}".into()).clone())
    }

    pub(crate) fn as_json(&self) -> &str {
        &self.0
    }

    /// The JSON text, shared.
    pub(crate) fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

/// Why a `signal` never reached its recipient: the `reason` of `undeliverable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndeliverableReason {
    /// The recipient's session ended (left or its grace period ran out) before the signal was sent to it.
    PeerLeft,
    /// The recipient's own budget (a disconnected peer's queue, in bytes or in messages).
    QueueFull,
    /// Everything held for the recipient's address (IPv4) or /64 (IPv6).
    SourceFull,
    /// Everything the hub holds.
    ServerFull,
}

/// Why a peer left its room (`peer-left`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftReason {
    /// It said `leave` (or its page went away and said so).
    Left,
    /// Its socket dropped and it did not resume within the grace period (or the server could not keep it waiting).
    Lost,
}

impl LeftReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftReason::Left => "left",
            LeftReason::Lost => "lost",
        }
    }
}

impl UndeliverableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UndeliverableReason::PeerLeft => "peer-left",
            UndeliverableReason::QueueFull => "queue-full",
            UndeliverableReason::SourceFull => "source-full",
            UndeliverableReason::ServerFull => "server-full",
        }
    }
}

impl From<Over> for UndeliverableReason {
    fn from(over: Over) -> Self {
        match over {
            Over::Session => UndeliverableReason::QueueFull,
            Over::Source => UndeliverableReason::SourceFull,
            Over::Global => UndeliverableReason::ServerFull,
        }
    }
}

/// A member of the room as `joined` lists it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub id: PeerId,
    pub meta: Meta,
}

/// The first frame of a session.
#[derive(Debug)]
pub(crate) struct Joined<'a> {
    pub session: &'a SessionSecret,
    pub peer: &'a PeerId,
    pub room: &'a str,
    /// The room's other members, in join order.
    pub peers: &'a [Member],
    pub ice_servers: &'a RawValue,
    /// The join token's capabilities.
    pub caps: &'a [String],
    pub heartbeat: Duration,
    pub resume_grace: Duration,
    /// The message rate the socket is held to: a client that paces its sends (a backlog after a resume) to it
    /// loses none to the limit.
    pub messages_per_second: u32,
    pub message_burst: u32,
}

/// One server→client frame, without its `seq`.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    Joined(Joined<'a>),
    PeerJoined {
        peer: &'a PeerId,
        meta: &'a Meta,
    },
    PeerLeft {
        peer: &'a PeerId,
        /// Why: `left` (it said `leave`) or `lost` (its socket dropped and it did not resume within the grace; its
        /// media may still flow, and the SDK keeps a connected call for it to come back under a new id).
        reason: LeftReason,
    },
    Signal {
        from: &'a PeerId,
        data: &'a RawValue,
    },
    Broadcast {
        from: &'a PeerId,
        data: &'a RawValue,
    },
    Undeliverable {
        to: &'a PeerId,
        /// The signal's `id`, as the client gave it.
        id: Option<&'a str>,
        reason: UndeliverableReason,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        /// The `id` of the message the error is about, as the client gave it.
        id: Option<&'a str>,
    },
    /// Not part of the stream: its `seq` is the newest stream number.
    Resumed {
        peer: &'a PeerId,
        replayed: usize,
        ack: u64,
    },
    /// Not part of the stream: its `seq` is the newest stream number.
    Pong {
        ack: u64,
    },
    /// The answer to `ice-servers`: a fresh credential. Not part of the stream (a credential replayed after a
    /// resume could be stale; the client asks again instead).
    IceServers {
        ice_servers: &'a RawValue,
    },
    /// The post-mortem of this peer's connection with `peer` (`crate::hub::outcomes`).
    Diagnosis {
        peer: &'a PeerId,
        /// `A` or `B`: how the diagnosis' message names the recipient.
        you: &'static str,
        diagnosis: &'a outcome::Diagnosis,
    },
}

/// `{"seq":` + at most 20 digits + `,`.
pub(crate) const HEADER_MAX: usize = 28;

impl Frame<'_> {
    /// `{"seq":seq,` and the body, in one allocation of [`HEADER_MAX`] + [`Frame::body_len`] bytes.
    pub fn encode(&self, seq: u64) -> Bytes {
        let mut out = String::with_capacity(HEADER_MAX + self.body_len());
        out.push_str("{\"seq\":");
        out.push_str(Digits::of(seq).as_str());
        out.push(',');
        self.write_to(&mut out);
        Bytes::from(out)
    }

    /// The exact length of the body, computed without writing it (the budgets are checked before allocating).
    pub fn body_len(&self) -> usize {
        let mut n = Len(0);
        self.write_to(&mut n);
        n.0
    }

    /// The body: everything after `{"seq":N,`. Written once for both measuring and writing, so the length and the
    /// bytes cannot disagree.
    fn write_to(&self, out: &mut impl Sink) {
        match self {
            Frame::Joined(j) => {
                out.raw("\"type\":\"joined\",\"session\":\"");
                out.raw(j.session.as_str());
                out.raw("\",\"peerId\":\"");
                out.raw(j.peer.as_str());
                out.raw("\",\"room\":");
                out.string(j.room);
                out.raw(",\"peers\":[");
                for (i, member) in j.peers.iter().enumerate() {
                    if i > 0 {
                        out.raw(",");
                    }
                    out.raw("{\"id\":\"");
                    out.raw(member.id.as_str());
                    out.raw("\",\"meta\":");
                    out.raw(member.meta.as_json());
                    out.raw("}");
                }
                out.raw("],\"iceServers\":");
                out.raw(j.ice_servers.get());
                out.raw(",\"caps\":[");
                for (i, cap) in j.caps.iter().enumerate() {
                    if i > 0 {
                        out.raw(",");
                    }
                    out.string(cap);
                }
                out.raw("],\"heartbeatMs\":");
                out.raw(Digits::of(millis(j.heartbeat)).as_str());
                out.raw(",\"resumeGraceMs\":");
                out.raw(Digits::of(millis(j.resume_grace)).as_str());
                out.raw(",\"messagesPerSecond\":");
                out.raw(Digits::of(u64::from(j.messages_per_second)).as_str());
                out.raw(",\"messageBurst\":");
                out.raw(Digits::of(u64::from(j.message_burst)).as_str());
            }
            Frame::PeerJoined { peer, meta } => {
                out.raw("\"type\":\"peer-joined\",\"peer\":{\"id\":\"");
                out.raw(peer.as_str());
                out.raw("\",\"meta\":");
                out.raw(meta.as_json());
                out.raw("}");
            }
            Frame::PeerLeft { peer, reason } => {
                out.raw("\"type\":\"peer-left\",\"peerId\":\"");
                out.raw(peer.as_str());
                out.raw("\",\"reason\":\"");
                out.raw(reason.as_str());
                out.raw("\"");
            }
            Frame::Signal { from, data } => {
                out.raw("\"type\":\"signal\",\"from\":\"");
                out.raw(from.as_str());
                out.raw("\",\"data\":");
                out.raw(data.get());
            }
            Frame::Broadcast { from, data } => {
                out.raw("\"type\":\"broadcast\",\"from\":\"");
                out.raw(from.as_str());
                out.raw("\",\"data\":");
                out.raw(data.get());
            }
            Frame::Undeliverable { to, id, reason } => {
                out.raw("\"type\":\"undeliverable\",\"to\":\"");
                out.raw(to.as_str());
                out.raw("\"");
                if let Some(id) = id {
                    out.raw(",\"id\":");
                    out.string(id);
                }
                out.raw(",\"reason\":\"");
                out.raw(reason.as_str());
                out.raw("\"");
            }
            Frame::Error { code, message, id } => {
                out.raw("\"type\":\"error\",\"code\":\"");
                out.raw(code.as_str());
                out.raw("\",\"message\":");
                out.string(message);
                if let Some(id) = id {
                    out.raw(",\"id\":");
                    out.string(id);
                }
            }
            Frame::Resumed { peer, replayed, ack } => {
                out.raw("\"type\":\"resumed\",\"peerId\":\"");
                out.raw(peer.as_str());
                out.raw("\",\"replayed\":");
                out.raw(Digits::of(*replayed as u64).as_str());
                out.raw(",\"ack\":");
                out.raw(Digits::of(*ack).as_str());
            }
            Frame::Pong { ack } => {
                out.raw("\"type\":\"pong\",\"ack\":");
                out.raw(Digits::of(*ack).as_str());
            }
            Frame::IceServers { ice_servers } => {
                out.raw("\"type\":\"ice-servers\",\"iceServers\":");
                out.raw(ice_servers.get());
            }
            Frame::Diagnosis { peer, you, diagnosis } => {
                // Codes are the crates' own kebab-case names; the message is written by the classifier from them.
                out.raw("\"type\":\"diagnosis\",\"peer\":\"");
                out.raw(peer.as_str());
                out.raw("\",\"you\":\"");
                out.raw(you);
                out.raw("\",\"outcome\":\"");
                out.raw(diagnosis.outcome.as_str());
                out.raw("\",\"reason\":\"");
                out.raw(diagnosis.reason.code());
                out.raw("\",\"step\":\"");
                out.raw(diagnosis.reason.step().as_str());
                out.raw("\",\"message\":");
                out.string(&diagnosis.message);
                if let Some(path) = diagnosis.path {
                    out.raw(",\"path\":\"");
                    out.raw(path.as_str());
                    out.raw("\"");
                }
                if let Some(ms) = diagnosis.time_to_connect_ms {
                    out.raw(",\"timeToConnectMs\":");
                    out.raw(Digits::of(u64::from(ms)).as_str());
                }
                if let Some(ms) = diagnosis.connected_ms {
                    out.raw(",\"connectedMs\":");
                    out.raw(Digits::of(u64::from(ms)).as_str());
                }
                if let Some(ms) = diagnosis.recovery_ms {
                    out.raw(",\"recoveryMs\":");
                    out.raw(Digits::of(u64::from(ms)).as_str());
                }
                if let Some(cause) = diagnosis.cause {
                    out.raw(",\"cause\":\"");
                    out.raw(cause.as_str());
                    out.raw("\"");
                }
            }
        }
        out.raw("}");
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where a body is written: a `String`, or a counter of its length.
trait Sink {
    /// Text that needs no escaping: the frame's own syntax, or a value whose type vouches for it.
    fn raw(&mut self, s: &str);
    /// `s` as a JSON string literal.
    fn string(&mut self, s: &str);
}

impl Sink for String {
    fn raw(&mut self, s: &str) {
        self.push_str(s);
    }

    fn string(&mut self, s: &str) {
        push_json_str(self, s);
    }
}

struct Len(usize);

impl Sink for Len {
    fn raw(&mut self, s: &str) {
        self.0 += s.len();
    }

    fn string(&mut self, s: &str) {
        self.0 += json_str_len(s);
    }
}

/// How serde_json's compact formatter escapes a byte: `None` when it is written as it is.
fn escape(b: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b", "\\t", "\\n",
        "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014",
        "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e",
        "\\u001f",
    ];
    match b {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        0..=0x1f => CONTROL.get(usize::from(b)).copied(),
        _ => None,
    }
}

/// Appends `s` as a JSON string literal, escaped as serde_json does (quote, backslash, control characters; nothing
/// else, not even `/`, U+2028 or DEL).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let Some(escaped) = escape(b) else { continue };
        // Escaped bytes are ASCII, so `start..i` falls on character boundaries.
        out.push_str(s.get(start..i).unwrap_or_default());
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

/// The length of [`push_json_str`]'s output.
fn json_str_len(s: &str) -> usize {
    2 + s.bytes().map(|b| escape(b).map_or(1, str::len)).sum::<usize>()
}

/// Decimal digits of a number without going through `format!`.
struct Digits {
    bytes: [u8; 20],
    start: usize,
}

impl Digits {
    fn of(mut n: u64) -> Self {
        let mut d = Digits {
            bytes: [0; 20],
            start: 20,
        };
        loop {
            d.start -= 1;
            if let Some(b) = d.bytes.get_mut(d.start) {
                *b = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 {
                break d;
            }
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.bytes.get(self.start..).unwrap_or_default()).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};

    fn text(frame: &Frame<'_>, seq: u64) -> String {
        let bytes = frame.encode(seq);
        assert_eq!(
            bytes.len(),
            seq.to_string().len() + 8 + frame.body_len(),
            "body_len is exact"
        );
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn serde_str(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        let mut every_ascii = String::new();
        for b in 0u8..=0x7f {
            every_ascii.push(char::from(b));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut cases: Vec<String> = vec![
            String::new(),
            every_ascii,
            "\"\\/\u{7f}\u{80}\u{2028}\u{2029}é😀\u{feff}".into(),
            "plain".into(),
        ];
        for _ in 0..500 {
            let len = rng.gen_range(0..24);
            cases.push(
                (0..len)
                    .map(|_| match rng.gen_range(0..4) {
                        0 => char::from(rng.gen_range(0u8..0x20)),
                        1 => ['"', '\\', '/', 'é', '😀'][rng.gen_range(0..5)],
                        2 => rng.gen::<char>(),
                        _ => char::from(rng.gen_range(0x20u8..0x7f)),
                    })
                    .collect(),
            );
        }
        for s in &cases {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_str(s), "{s:?}");
            assert_eq!(json_str_len(s), out.len(), "{s:?}");
        }
    }

    #[test]
    fn what_a_client_wrote_is_escaped_and_the_frame_stays_one_json_object() {
        let hostile = "\"},\"type\":\"joined\",\"x\":\"\\\u{0}\n";
        let err = Frame::Error {
            code: ErrorCode::UnknownPeer,
            message: &format!("No peer {hostile} in room {hostile}."),
            id: Some(hostile),
        };
        let out = text(&err, 7);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["id"], hostile);
        assert_eq!(v.as_object().unwrap().len(), 5, "{out}");

        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let peer = PeerId::generate(&mut rng);
        let secret = SessionSecret::generate(&mut rng);
        let ice = serde_json::value::to_raw_value(&serde_json::json!([{"urls": ["stun:x"]}])).unwrap();
        let meta = Meta::from_object(serde_json::from_str(r#"{"name":"A\"nn\u0000"}"#).unwrap());
        let caps = vec![hostile.to_owned(), "publish".to_owned()];
        let peers = vec![Member {
            id: peer.clone(),
            meta: meta.clone(),
        }];
        let joined = Frame::Joined(Joined {
            session: &secret,
            peer: &peer,
            room: hostile,
            peers: &peers,
            ice_servers: &ice,
            caps: &caps,
            heartbeat: Duration::from_secs(10),
            resume_grace: Duration::from_millis(30_500),
            messages_per_second: 50,
            message_burst: 100,
        });
        let v: serde_json::Value = serde_json::from_str(&text(&joined, 1)).unwrap();
        assert_eq!(v["room"], hostile);
        assert_eq!(v["caps"], serde_json::json!([hostile, "publish"]));
        assert_eq!(v["peers"][0]["meta"]["name"], "A\"nn\u{0}");
        assert_eq!(
            (v["heartbeatMs"].as_u64(), v["resumeGraceMs"].as_u64()),
            (Some(10_000), Some(30_500))
        );
        assert_eq!(
            (v["messagesPerSecond"].as_u64(), v["messageBurst"].as_u64()),
            (Some(50), Some(100))
        );
        assert_eq!(v["session"], secret.as_str());
    }

    /// Each frame's bytes, as `docs/protocol.md` shows them (field order included).
    #[test]
    fn every_frame_has_its_documented_bytes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let p = PeerId::generate(&mut rng);
        let id = p.as_str();
        let data = serde_json::value::RawValue::from_string(r#"{"sdp" : "v=0"}"#.into()).unwrap();
        let ice = serde_json::value::RawValue::from_string(r#"[{"urls":"turn:x","username":"9:p"}]"#.into()).unwrap();
        let meta = Meta::from_object(serde_json::from_str(r#"{"b":1,"a":"x"}"#).unwrap());
        let cases = [
            (
                Frame::PeerJoined { peer: &p, meta: &meta },
                format!(r#"{{"seq":2,"type":"peer-joined","peer":{{"id":"{id}","meta":{{"a":"x","b":1}}}}}}"#),
            ),
            (
                Frame::PeerLeft {
                    peer: &p,
                    reason: LeftReason::Lost,
                },
                format!(r#"{{"seq":2,"type":"peer-left","peerId":"{id}","reason":"lost"}}"#),
            ),
            (
                Frame::Signal { from: &p, data: &data },
                format!(r#"{{"seq":2,"type":"signal","from":"{id}","data":{{"sdp" : "v=0"}}}}"#),
            ),
            (
                Frame::Broadcast { from: &p, data: &data },
                format!(r#"{{"seq":2,"type":"broadcast","from":"{id}","data":{{"sdp" : "v=0"}}}}"#),
            ),
            (
                Frame::Undeliverable {
                    to: &p,
                    id: Some("m\"1"),
                    reason: Over::Source.into(),
                },
                format!(r#"{{"seq":2,"type":"undeliverable","to":"{id}","id":"m\"1","reason":"source-full"}}"#),
            ),
            (
                Frame::Undeliverable {
                    to: &p,
                    id: None,
                    reason: UndeliverableReason::PeerLeft,
                },
                format!(r#"{{"seq":2,"type":"undeliverable","to":"{id}","reason":"peer-left"}}"#),
            ),
            (
                Frame::Error {
                    code: ErrorCode::BadJson,
                    message: "Not \"JSON\".",
                    id: None,
                },
                r#"{"seq":2,"type":"error","code":"bad-json","message":"Not \"JSON\"."}"#.to_owned(),
            ),
            (
                Frame::Resumed {
                    peer: &p,
                    replayed: 12,
                    ack: 0,
                },
                format!(r#"{{"seq":2,"type":"resumed","peerId":"{id}","replayed":12,"ack":0}}"#),
            ),
            (
                Frame::Pong { ack: u64::MAX },
                r#"{"seq":2,"type":"pong","ack":18446744073709551615}"#.to_owned(),
            ),
            (
                Frame::IceServers { ice_servers: &ice },
                r#"{"seq":2,"type":"ice-servers","iceServers":[{"urls":"turn:x","username":"9:p"}]}"#.to_owned(),
            ),
        ];
        for (frame, want) in &cases {
            assert_eq!(text(frame, 2), *want);
        }
        let failed = outcome::Diagnosis {
            room: "r".into(),
            peers: [id.into(), id.into()],
            outcome: outcome::Outcome::Failed,
            reason: outcome::Reason::TurnAuthFailed,
            message: "Refused \"401\".".into(),
            path: None,
            time_to_connect_ms: None,
            connected_ms: None,
            cause: None,
            recovery_ms: None,
            reports: 2,
        };
        assert_eq!(
            text(
                &Frame::Diagnosis {
                    peer: &p,
                    you: "B",
                    diagnosis: &failed
                },
                2
            ),
            format!(
                r#"{{"seq":2,"type":"diagnosis","peer":"{id}","you":"B","outcome":"failed","reason":"turn-auth-failed","step":"discovery","message":"Refused \"401\"."}}"#
            )
        );
        let connected = outcome::Diagnosis {
            outcome: outcome::Outcome::Connected,
            reason: outcome::Reason::Connected,
            message: "Connected.".into(),
            path: Some(outcome::Path::RelayTls),
            time_to_connect_ms: Some(812),
            ..failed
        };
        assert_eq!(
            text(
                &Frame::Diagnosis {
                    peer: &p,
                    you: "A",
                    diagnosis: &connected
                },
                2
            ),
            format!(
                r#"{{"seq":2,"type":"diagnosis","peer":"{id}","you":"A","outcome":"connected","reason":"connected","step":"connection","message":"Connected.","path":"relay-tls","timeToConnectMs":812}}"#
            )
        );
        assert_eq!(
            text(&Frame::Pong { ack: 0 }, u64::MAX).len(),
            HEADER_MAX + Frame::Pong { ack: 0 }.body_len(),
            "the header never outgrows HEADER_MAX"
        );
    }

    #[test]
    fn every_reason_has_its_wire_name() {
        let all = [
            (UndeliverableReason::PeerLeft, "peer-left"),
            (Over::Session.into(), "queue-full"),
            (Over::Source.into(), "source-full"),
            (Over::Global.into(), "server-full"),
        ];
        for (reason, name) in all {
            assert_eq!(reason.as_str(), name);
        }
    }
}
