//! Wire format of protocol v1: parsing of client frames and the codes a client sees. Server frames are written by
//! [`crate::frame`].

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Stable error codes of `{"type":"error","code":…}` and of HTTP refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    NotJoined,
    AlreadyJoined,
    UnknownPeer,
    RateLimited,
    ProtocolViolation,
    TokenRequired,
    TokenInvalid,
    TokenExpired,
    TokenRoomMismatch,
    RoomFull,
    TooManyRooms,
    TooManyConnections,
    ResumeFailed,
    TooLarge,
    /// The server is stopping: connect again at once (another server, or this one restarted, will answer).
    ShuttingDown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad-json",
            ErrorCode::BadMessage => "bad-message",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::NotJoined => "not-joined",
            ErrorCode::AlreadyJoined => "already-joined",
            ErrorCode::UnknownPeer => "unknown-peer",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::ProtocolViolation => "protocol-violation",
            ErrorCode::TokenRequired => "token-required",
            ErrorCode::TokenInvalid => "token-invalid",
            ErrorCode::TokenExpired => "token-expired",
            ErrorCode::TokenRoomMismatch => "token-room-mismatch",
            ErrorCode::RoomFull => "room-full",
            ErrorCode::TooManyRooms => "too-many-rooms",
            ErrorCode::TooManyConnections => "too-many-connections",
            ErrorCode::ResumeFailed => "resume-failed",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::ShuttingDown => "shutting-down",
        }
    }

    /// The close code that follows this error, if the socket is closed for it.
    pub fn close_code(self) -> Option<CloseCode> {
        match self {
            ErrorCode::TokenRequired
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::TokenRoomMismatch => Some(CloseCode::TOKEN_REFUSED),
            ErrorCode::ProtocolViolation => Some(CloseCode::PROTOCOL_VIOLATION),
            ErrorCode::RoomFull => Some(CloseCode::ROOM_FULL),
            ErrorCode::TooManyRooms => Some(CloseCode::TOO_MANY_ROOMS),
            ErrorCode::TooManyConnections => Some(CloseCode::TOO_MANY_CONNECTIONS),
            ErrorCode::ResumeFailed => Some(CloseCode::RESUME_FAILED),
            ErrorCode::TooLarge => Some(CloseCode::TOO_LARGE),
            ErrorCode::ShuttingDown => Some(CloseCode::SHUTTING_DOWN),
            _ => None,
        }
    }

    /// HTTP status of the same refusal before an upgrade or from `/api/*`.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::TokenRequired | ErrorCode::TokenInvalid | ErrorCode::TokenExpired => 401,
            ErrorCode::TokenRoomMismatch => 403,
            ErrorCode::RateLimited | ErrorCode::TooManyConnections => 429,
            ErrorCode::RoomFull | ErrorCode::TooManyRooms | ErrorCode::ShuttingDown => 503,
            ErrorCode::TooLarge => 413,
            _ => 400,
        }
    }
}

/// WebSocket close codes, grouped by what the client should do (Pusher's scheme): 4000-4099 do not retry,
/// 4100-4199 retry with backoff, 4200-4299 retry now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const TOO_LARGE: CloseCode = CloseCode(1009);
    pub const TOKEN_REFUSED: CloseCode = CloseCode(4001);
    pub const REPLACED: CloseCode = CloseCode(4002);
    pub const PROTOCOL_VIOLATION: CloseCode = CloseCode(4003);
    pub const RATE_LIMITED: CloseCode = CloseCode(4100);
    pub const TOO_MANY_CONNECTIONS: CloseCode = CloseCode(4101);
    pub const ROOM_FULL: CloseCode = CloseCode(4102);
    pub const TOO_MANY_ROOMS: CloseCode = CloseCode(4103);
    /// The socket did not read what it was sent: its queue reached its byte budget.
    pub const TOO_SLOW: CloseCode = CloseCode(4104);
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4200);
    pub const RESUME_FAILED: CloseCode = CloseCode(4201);
    pub const SHUTTING_DOWN: CloseCode = CloseCode(4202);
}

/// Why a join (or a connection) is refused: a code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `{"ok":false,"code":…,"message":…}`, the HTTP body of a refusal.
    pub fn to_http_json(&self) -> String {
        serde_json::json!({"ok": false, "code": self.code.as_str(), "message": self.message}).to_string()
    }
}

/// Every field any client message may carry; `type` decides which are required. One flat struct instead of a
/// tagged enum because serde's internally tagged enums cannot hold a borrowed `RawValue`, and `data` must pass
/// through unparsed.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed")]
    pub ty: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub room: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub meta: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub session: Option<Cow<'a, str>>,
    #[serde(rename = "lastSeq")]
    pub last_seq: Option<u64>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub id: Option<Cow<'a, str>>,
    pub ack: Option<u64>,
    /// The client's own numbering of `signal`/`broadcast`, so it can resend what a dead socket swallowed.
    pub seq: Option<u64>,
    /// `outcome`: the remote peer the report is about.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub peer: Option<Cow<'a, str>>,
    /// `outcome`: the report (`outcome::Report`), parsed by the hub.
    #[serde(borrow)]
    pub report: Option<&'a RawValue>,
    /// `join`: after a failed resume (docs/protocol.md, "Connection outcomes").
    pub rejoin: Option<bool>,
}

/// A string field taken in place from the frame (copied only when it holds an escape): a signal's `type` and `to`
/// cost no allocation. serde borrows a `Cow<str>` field, but not one inside an `Option`, hence this.
fn borrowed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|Borrowed(s)| s))
}

/// A validated client message.
#[derive(Debug)]
pub(crate) enum ClientMessage<'a> {
    Join {
        room: String,
        token: Option<String>,
        meta: Option<&'a RawValue>,
        /// The client had a session this server no longer knows (its resume failed): its calls may go on.
        rejoin: bool,
    },
    Resume {
        session: String,
        last_seq: u64,
    },
    Signal {
        to: Cow<'a, str>,
        data: &'a RawValue,
        id: Option<Cow<'a, str>>,
    },
    Broadcast {
        data: &'a RawValue,
    },
    Leave,
    Ping {
        ack: Option<u64>,
    },
    /// How this peer's connection with `peer` ended (docs/protocol.md, "Connection outcomes").
    Outcome {
        peer: Cow<'a, str>,
        report: &'a RawValue,
    },
    /// Fresh `iceServers` (a new TURN credential) for the session's peer: authenticated by the session, so it works
    /// after the join token has expired, and in a cluster it names the live nodes.
    IceServers,
}

impl ClientMessage<'_> {
    /// Its `type`, for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Resume { .. } => "resume",
            ClientMessage::Signal { .. } => "signal",
            ClientMessage::Broadcast { .. } => "broadcast",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Outcome { .. } => "outcome",
            ClientMessage::IceServers => "ice-servers",
        }
    }
}

/// Longest room name, peer id, message id or session id accepted.
const MAX_NAME: usize = 128;

/// A client message and its optional client sequence number.
pub(crate) fn parse(text: &str) -> Result<(ClientMessage<'_>, Option<u64>), Refusal> {
    let mut seq = None;
    let msg = parse_envelope(text, &mut seq)?;
    Ok((msg, seq))
}

/// Checks a name a client gives (a room, a peer or session id): 1 to [`MAX_NAME`] bytes of printable text. Control
/// characters (a newline forges a log line, an escape colours a terminal) and bidirectional overrides (which make
/// a name read as another on the dashboard) are refused.
pub fn check_name(field: &str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(Refusal::new(
            ErrorCode::BadMessage,
            format!("`{field}` must be 1 to {MAX_NAME} characters."),
        ));
    }
    let bidi =
        |c: char| matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if value.chars().any(|c| c.is_control() || bidi(c)) {
        return Err(Refusal::new(
            ErrorCode::BadMessage,
            format!("`{field}` must be printable: no control or text-direction characters."),
        ));
    }
    Ok(())
}

fn parse_envelope<'a>(text: &'a str, seq: &mut Option<u64>) -> Result<ClientMessage<'a>, Refusal> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            Refusal::new(
                ErrorCode::BadMessage,
                format!("The message has a field of the wrong type: {e}."),
            )
        } else {
            Refusal::new(ErrorCode::BadJson, format!("The frame is not valid JSON: {e}."))
        }
    })?;
    let need = |field: Option<Cow<'a, str>>, name: &str, ty: &str| {
        let value = field.ok_or_else(|| Refusal::new(ErrorCode::BadMessage, format!("`{ty}` needs `{name}`.")))?;
        check_name(name, &value)?;
        Ok(value)
    };
    *seq = env.seq;
    let Some(ty) = env.ty else {
        return Err(Refusal::new(ErrorCode::BadMessage, "A message needs a `type`."));
    };
    match ty.as_ref() {
        "join" => Ok(ClientMessage::Join {
            room: need(env.room, "room", "join")?.into_owned(),
            token: env.token.map(Cow::into_owned),
            meta: env.meta,
            rejoin: env.rejoin.unwrap_or(false),
        }),
        "resume" => Ok(ClientMessage::Resume {
            session: need(env.session, "session", "resume")?.into_owned(),
            last_seq: env
                .last_seq
                .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "`resume` needs `lastSeq`."))?,
        }),
        "signal" => Ok(ClientMessage::Signal {
            to: need(env.to, "to", "signal")?,
            data: env
                .data
                .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "`signal` needs `data`."))?,
            id: match env.id {
                Some(id) if id.len() > MAX_NAME => {
                    return Err(Refusal::new(ErrorCode::BadMessage, "`id` is too long."));
                }
                id => id,
            },
        }),
        "broadcast" => Ok(ClientMessage::Broadcast {
            data: env
                .data
                .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "`broadcast` needs `data`."))?,
        }),
        "leave" => Ok(ClientMessage::Leave),
        "ping" => Ok(ClientMessage::Ping { ack: env.ack }),
        "outcome" => Ok(ClientMessage::Outcome {
            peer: need(env.peer, "peer", "outcome")?,
            report: env
                .report
                .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "`outcome` needs `report`."))?,
        }),
        "ice-servers" => Ok(ClientMessage::IceServers),
        other => Err(Refusal::new(
            ErrorCode::UnknownType,
            format!(
                "Unknown message type `{}`.",
                other.chars().take(MAX_NAME).collect::<String>()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_server_says_retry_now_not_back_off() {
        let code = ErrorCode::ShuttingDown;
        assert_eq!(code.as_str(), "shutting-down");
        assert_eq!(code.close_code(), Some(CloseCode::SHUTTING_DOWN));
        assert_eq!(code.http_status(), 503);
        // A limit is a backoff (41xx); a stop is a retry now (42xx).
        assert_eq!(ErrorCode::TooManyConnections.close_code(), Some(CloseCode(4101)));
        assert!((4200..4300).contains(&CloseCode::SHUTTING_DOWN.0));
    }

    #[test]
    fn names_are_printable_text() {
        for room in ["lobby", "Réunion du lundi", "会议室", "a-b_c.d:e/f"] {
            assert!(check_name("room", room).is_ok(), "{room}");
        }
        // A newline would forge a log line; an escape colours a terminal; an override makes a name read backwards.
        for room in [
            "lobby\n2026 ERROR forged",
            "red\u{1b}[31m",
            "tab\there",
            "\u{85}",
            "evil\u{202e}gnp.exe",
            "",
        ] {
            assert!(check_name("room", room).is_err(), "{room:?}");
        }
        let refused = parse("{\"type\":\"join\",\"room\":\"a\\nb\"}").map(|_| ()).unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadMessage);
        assert!(refused.message.contains("printable"), "{}", refused.message);
    }

    #[test]
    fn parses_every_type_and_names_what_is_missing() {
        assert!(matches!(
            parse(r#"{"type":"join","room":"a"}"#),
            Ok((ClientMessage::Join { .. }, None))
        ));
        assert!(matches!(
            parse(r#"{"type":"signal","to":"p","data":{"x":[1,2]},"seq":7}"#),
            Ok((ClientMessage::Signal { data, .. }, Some(7))) if data.get() == r#"{"x":[1,2]}"#
        ));
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok((ClientMessage::Ping { ack: None }, None))
        ));
        assert!(matches!(
            parse(r#"{"type":"ice-servers"}"#),
            Ok((ClientMessage::IceServers, None))
        ));
        let e = parse(r#"{"type":"signal","data":1}"#).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::BadMessage, "`signal` needs `to`.")
        );
        assert_eq!(parse("{nope").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(
            parse(r#"{"type":"join","room":5}"#).unwrap_err().code,
            ErrorCode::BadMessage
        );
        assert_eq!(parse(r#"{"type":"dance"}"#).unwrap_err().code, ErrorCode::UnknownType);
        assert_eq!(parse(r#"[1]"#).unwrap_err().code, ErrorCode::BadMessage);
        assert_eq!(
            parse(r#"{"type":"join","room":""}"#).unwrap_err().code,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse(r#"{"type":"signal","to":null,"data":1}"#).unwrap_err().code,
            ErrorCode::BadMessage,
            "a null field is a missing one"
        );
    }

    #[test]
    fn strings_are_taken_in_place_unless_they_hold_escapes() {
        let Ok((ClientMessage::Signal { to, id, .. }, _)) =
            parse(r#"{"type":"signal","to":"peer-1","id":"a\"b\u00e9","data":0}"#)
        else {
            panic!("a signal with an escaped id parses");
        };
        assert!(matches!(to, Cow::Borrowed("peer-1")), "{to:?}");
        assert_eq!(id.as_deref(), Some("a\"b\u{e9}"));
        assert!(matches!(id, Some(Cow::Owned(_))));
        // An escaped type is still the type.
        assert!(matches!(
            parse(r#"{"type":"si\u0067nal","to":"p","data":0}"#),
            Ok((ClientMessage::Signal { .. }, None))
        ));
        assert!(matches!(
            parse(r#"{"type":"join","room":"caf\u00e9"}"#),
            Ok((ClientMessage::Join { room, .. }, None)) if room == "caf\u{e9}"
        ));
    }
}
