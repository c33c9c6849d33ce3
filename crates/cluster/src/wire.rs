//! What one node tells another about a socket, as one pub/sub message: a kind byte, the sender's node id, the
//! socket's number on its origin node, then the kind's payload. Every length is checked before it is read; a
//! message that does not parse is dropped by the caller (it can only come from a mismatched version or a stranger
//! with Redis access).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

/// A node's name in Redis keys and channels: 1 to 64 of `[A-Za-z0-9_.-]`, so it never needs escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn parse(name: &str) -> Option<Self> {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        ok.then(|| Self(name.into()))
    }

    /// A name for a process of `host`: what of the host name fits, then `suffix` (random, so that a restarted
    /// process is a new node).
    pub fn for_host(host: &str, suffix: u32) -> Self {
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .take(40)
            .collect();
        let host = if host.is_empty() { "node" } else { &host };
        Self(format!("{host}-{suffix:08x}").into())
    }

    /// The name of hub shard `k` of this node's process: the node's own for 0, then `{node}.{k}` (the node's part
    /// shortened to fit 64 bytes).
    pub fn shard(&self, k: usize) -> Self {
        if k == 0 {
            return self.clone();
        }
        let suffix = format!(".{k}");
        // ASCII by construction, so any byte length is a character boundary.
        let keep = self.0.get(..self.0.len().min(64 - suffix.len())).unwrap_or_default();
        Self(format!("{keep}{suffix}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One event about a socket. `conn` is always the socket's number on its origin node (the node holding it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// Origin → home: a socket from `ip` now belongs to a room of the home.
    Connect { conn: u64, ip: IpAddr },
    /// Origin → home: a text frame from the socket (UTF-8, checked on decode).
    Text { conn: u64, text: Bytes },
    /// Origin → home: a ping or pong frame: the socket is alive.
    Activity { conn: u64 },
    /// Origin → home: a binary frame (answered with `bad-message`).
    Binary { conn: u64 },
    /// Origin → home: the socket is gone.
    Closed { conn: u64 },
    /// Home → origin: send this frame to the socket.
    Send { conn: u64, text: Bytes },
    /// Home → origin: close the socket.
    Close { conn: u64, code: u16, reason: String },
    /// Home → origin: the socket has been quiet for the heartbeat interval; send it a WebSocket ping.
    Ping { conn: u64 },
}

/// An envelope and the node that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub envelope: Envelope,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("bad node id")]
    BadNode,
    #[error("text is not UTF-8")]
    NotUtf8,
}

const CONNECT: u8 = 1;
const TEXT: u8 = 2;
const ACTIVITY: u8 = 3;
const BINARY: u8 = 4;
const CLOSED: u8 = 5;
const SEND: u8 = 6;
const CLOSE: u8 = 7;
const PING: u8 = 8;

impl Message {
    pub fn encode(&self) -> Bytes {
        let (kind, conn) = match &self.envelope {
            Envelope::Connect { conn, .. } => (CONNECT, *conn),
            Envelope::Text { conn, .. } => (TEXT, *conn),
            Envelope::Activity { conn } => (ACTIVITY, *conn),
            Envelope::Binary { conn } => (BINARY, *conn),
            Envelope::Closed { conn } => (CLOSED, *conn),
            Envelope::Send { conn, .. } => (SEND, *conn),
            Envelope::Close { conn, .. } => (CLOSE, *conn),
            Envelope::Ping { conn } => (PING, *conn),
        };
        let from = self.from.as_str().as_bytes();
        let mut out = BytesMut::with_capacity(10 + from.len() + 64);
        out.put_u8(kind);
        // A NodeId is at most 64 bytes.
        out.put_u8(from.len() as u8);
        out.put_slice(from);
        out.put_u64(conn);
        match &self.envelope {
            Envelope::Connect { ip, .. } => {
                let v6 = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => *v6,
                };
                out.put_u8(u8::from(ip.is_ipv4()));
                out.put_slice(&v6.octets());
            }
            Envelope::Text { text, .. } | Envelope::Send { text, .. } => out.put_slice(text),
            Envelope::Close { code, reason, .. } => {
                out.put_u16(*code);
                out.put_slice(reason.as_bytes());
            }
            Envelope::Activity { .. } | Envelope::Binary { .. } | Envelope::Closed { .. } | Envelope::Ping { .. } => {}
        }
        out.freeze()
    }

    /// Parses a message; `bytes` is shared, so a text frame is not copied.
    pub fn decode(bytes: &Bytes) -> Result<Self, WireError> {
        let (&kind, rest) = bytes.split_first().ok_or(WireError::Truncated)?;
        let (&len, rest) = rest.split_first().ok_or(WireError::Truncated)?;
        let len = usize::from(len);
        let name = rest.get(..len).ok_or(WireError::Truncated)?;
        let from = std::str::from_utf8(name)
            .ok()
            .and_then(NodeId::parse)
            .ok_or(WireError::BadNode)?;
        let conn_bytes: [u8; 8] = rest
            .get(len..len + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::Truncated)?;
        let conn = u64::from_be_bytes(conn_bytes);
        let payload_at = 2 + len + 8;
        let payload = bytes.slice(payload_at.min(bytes.len())..);
        let text = |payload: Bytes| match std::str::from_utf8(&payload) {
            Ok(_) => Ok(payload),
            Err(_) => Err(WireError::NotUtf8),
        };
        let envelope = match kind {
            CONNECT => {
                let (&v4, octets) = payload.split_first().ok_or(WireError::Truncated)?;
                let octets: [u8; 16] = octets.try_into().map_err(|_| WireError::Truncated)?;
                let v6 = Ipv6Addr::from(octets);
                let ip = match (v4, v6.to_ipv4_mapped()) {
                    (1, Some(v4)) => IpAddr::V4(v4),
                    _ => IpAddr::V6(v6),
                };
                Envelope::Connect { conn, ip }
            }
            TEXT => Envelope::Text {
                conn,
                text: text(payload)?,
            },
            ACTIVITY => Envelope::Activity { conn },
            BINARY => Envelope::Binary { conn },
            CLOSED => Envelope::Closed { conn },
            PING => Envelope::Ping { conn },
            SEND => Envelope::Send {
                conn,
                text: text(payload)?,
            },
            CLOSE => {
                let code = payload.get(..2).ok_or(WireError::Truncated)?;
                let code = u16::from_be_bytes([code.first().copied().unwrap_or(0), code.get(1).copied().unwrap_or(0)]);
                let reason = std::str::from_utf8(payload.get(2..).unwrap_or_default())
                    .map_err(|_| WireError::NotUtf8)?
                    .to_owned();
                Envelope::Close { conn, code, reason }
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        Ok(Message { from, envelope })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let from = NodeId::parse("node-a.1").unwrap();
        let all = [
            Envelope::Connect {
                conn: 7,
                ip: "192.0.2.7".parse().unwrap(),
            },
            Envelope::Connect {
                conn: 8,
                ip: "2001:db8::1".parse().unwrap(),
            },
            Envelope::Text {
                conn: u64::MAX,
                text: Bytes::from_static(br#"{"type":"ping"}"#),
            },
            Envelope::Activity { conn: 1 },
            Envelope::Binary { conn: 2 },
            Envelope::Closed { conn: 3 },
            Envelope::Send {
                conn: 4,
                text: Bytes::from_static("{\"é\":1}".as_bytes()),
            },
            Envelope::Close {
                conn: 5,
                code: 4202,
                reason: "moved".into(),
            },
            Envelope::Ping { conn: 6 },
        ];
        for envelope in all {
            let m = Message {
                from: from.clone(),
                envelope,
            };
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn every_truncation_and_bad_field_is_an_error() {
        let m = Message {
            from: NodeId::parse("a").unwrap(),
            envelope: Envelope::Close {
                conn: 5,
                code: 4202,
                reason: "x".into(),
            },
        };
        let bytes = m.encode();
        for n in 0..bytes.len() - 2 {
            assert!(Message::decode(&bytes.slice(..n)).is_err(), "{n}");
        }
        let mut bad = bytes.to_vec();
        bad[0] = 99;
        assert_eq!(Message::decode(&Bytes::from(bad)), Err(WireError::UnknownKind(99)));
        let mut bad = bytes.to_vec();
        bad[2] = b' ';
        assert_eq!(Message::decode(&Bytes::from(bad)), Err(WireError::BadNode));
        let text = Message {
            from: NodeId::parse("a").unwrap(),
            envelope: Envelope::Text {
                conn: 1,
                text: Bytes::from_static(&[0xff, 0xfe]),
            },
        };
        assert_eq!(Message::decode(&text.encode()), Err(WireError::NotUtf8));
        assert!(NodeId::parse("").is_none() && NodeId::parse(&"a".repeat(65)).is_none());
        let long = NodeId::parse(&"a".repeat(64)).unwrap();
        assert_eq!(long.shard(0), long);
        for k in [1, 7, 12] {
            let shard = long.shard(k);
            assert_eq!(
                NodeId::parse(shard.as_str()),
                Some(shard.clone()),
                "a valid name: {shard}"
            );
            assert!(shard.as_str().ends_with(&format!(".{k}")));
        }
        assert_eq!(NodeId::parse("h-1").unwrap().shard(3).as_str(), "h-1.3");
        for host in ["", "web-1.example.com", "ünïcode host", &"h".repeat(200)] {
            let id = NodeId::for_host(host, 0xdead_beef);
            assert_eq!(NodeId::parse(id.as_str()), Some(id));
        }
    }
}
