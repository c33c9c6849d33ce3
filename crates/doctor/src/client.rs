//! A small STUN/TURN client on the project's codec: Binding, and the TURN long-term credential dance
//! (RFC 8656 §7, RFC 8489 §9.2): Allocate → 401 with REALM and NONCE → MD5 key → Allocate with MESSAGE-INTEGRITY;
//! a 438 (stale nonce) takes the new NONCE and retries — it is not an authentication failure.
//! CreatePermission, ChannelBind, ChannelData and Refresh(0) to release. Over UDP (datagrams, retransmitted) and over
//! TCP/TLS (RFC 8656 §12.5 stream framing, ChannelData padded to four bytes).

use std::net::SocketAddr;
use std::time::Duration;

use stun::{attr, Attribute, Class, IntegrityKey, Message, MessageWriter, Method, TransactionId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

use crate::error::CheckError;

/// A byte stream to the server (TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to a STUN/TURN server.
pub enum Conn {
    Udp { sock: UdpSocket, server: SocketAddr },
    Stream { io: Box<dyn Stream>, buf: Vec<u8> },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Udp { server, .. } => write!(f, "Conn::Udp({server})"),
            Conn::Stream { .. } => write!(f, "Conn::Stream"),
        }
    }
}

/// What came from the server: a STUN message or a ChannelData frame, owned.
#[derive(Debug, Clone)]
pub struct Frame(pub Vec<u8>);

impl Conn {
    pub fn is_udp(&self) -> bool {
        matches!(self, Conn::Udp { .. })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), CheckError> {
        match self {
            Conn::Udp { sock, server } => {
                sock.send_to(bytes, *server).await?;
            }
            Conn::Stream { io, .. } => {
                io.write_all(bytes).await?;
                io.flush().await?;
            }
        }
        Ok(())
    }

    /// The next frame from the server; UDP datagrams from anyone else are ignored.
    pub async fn recv(&mut self) -> Result<Frame, CheckError> {
        match self {
            Conn::Udp { sock, server } => {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await?;
                    if from == *server {
                        buf.truncate(n);
                        return Ok(Frame(buf));
                    }
                }
            }
            Conn::Stream { io, buf } => loop {
                if let Some(len) = stun::stream_frame_len(buf).map_err(|_| CheckError::Protocol("not STUN".into()))? {
                    if buf.len() >= len {
                        return Ok(Frame(buf.drain(..len).collect()));
                    }
                }
                let mut chunk = [0u8; 8192];
                let n = io.read(&mut chunk).await?;
                if n == 0 {
                    return Err(CheckError::Closed);
                }
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            },
        }
    }

    /// Sends `request` and waits for the answer with its transaction id. Over UDP retransmits with a doubling RTO
    /// (RFC 8489 §6.2.1) until `deadline`; over a stream sends once. Other frames meanwhile are dropped.
    pub async fn transact(&mut self, request: &[u8], rto: Duration, limit: Duration) -> Result<Response, CheckError> {
        let tid = Message::parse(request)
            .map_err(|_| CheckError::Protocol("bad request".into()))?
            .transaction_id();
        let deadline = Instant::now() + limit;
        let mut wait = rto;
        loop {
            self.send(request).await?;
            let round_end = if self.is_udp() {
                (Instant::now() + wait).min(deadline)
            } else {
                deadline
            };
            wait = wait.saturating_mul(2);
            loop {
                let now = Instant::now();
                if now >= round_end {
                    break;
                }
                let Ok(frame) = timeout(round_end - now, self.recv()).await else {
                    break;
                };
                let frame = frame?;
                let Ok(msg) = Message::parse(&frame.0) else { continue };
                if msg.transaction_id() == tid && matches!(msg.class(), Class::Success | Class::Error) {
                    return Ok(Response { bytes: frame.0 });
                }
            }
            if Instant::now() >= deadline {
                return Err(CheckError::Timeout(limit));
            }
        }
    }
}

/// Adds a request's attributes.
pub type AttrFn<'a> = dyn Fn(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError> + Sync + 'a;

/// A STUN response kept as owned bytes (it parsed once, so it parses again).
#[derive(Debug, Clone)]
pub struct Response {
    pub bytes: Vec<u8>,
}

impl Response {
    fn message(&self) -> Option<Message<'_>> {
        Message::parse(&self.bytes).ok()
    }

    pub fn class(&self) -> Option<Class> {
        self.message().map(|m| m.class())
    }

    pub fn error(&self) -> Option<(u16, String)> {
        match self.message()?.decode(attr::ERROR_CODE) {
            Some(Ok(Attribute::ErrorCode(e))) => Some((e.code, e.reason.to_owned())),
            _ => None,
        }
    }

    pub fn text(&self, ty: u16) -> Option<String> {
        match self.message()?.decode(ty) {
            Some(Ok(Attribute::Realm(s) | Attribute::Nonce(s) | Attribute::Software(s))) => Some(s.to_owned()),
            _ => None,
        }
    }

    pub fn address(&self, ty: u16) -> Option<SocketAddr> {
        match self.message()?.decode(ty) {
            Some(Ok(
                Attribute::XorMappedAddress(a)
                | Attribute::XorRelayedAddress(a)
                | Attribute::XorPeerAddress(a)
                | Attribute::MappedAddress(a)
                | Attribute::OtherAddress(a)
                | Attribute::ResponseOrigin(a),
            )) => Some(a),
            _ => None,
        }
    }

    pub fn lifetime(&self) -> Option<u32> {
        match self.message()?.decode(attr::LIFETIME) {
            Some(Ok(Attribute::Lifetime(l))) => Some(l),
            _ => None,
        }
    }

    pub fn verify(&self, key: &IntegrityKey) -> bool {
        self.message().is_some_and(|m| m.verify_integrity(key))
    }
}

pub fn random_tid() -> TransactionId {
    TransactionId::new(rand::random())
}

/// Encodes a request: `attrs`, then (with credentials) USERNAME, REALM, NONCE, MESSAGE-INTEGRITY, then FINGERPRINT.
pub fn encode(method: Method, attrs: &AttrFn<'_>, creds: Option<&Credentials>) -> Result<Vec<u8>, CheckError> {
    let mut buf = vec![0u8; 1500];
    let mut w = MessageWriter::new(&mut buf, method, Class::Request, random_tid())?;
    attrs(&mut w)?;
    if let Some(c) = creds {
        w.add(&Attribute::Username(&c.username))?;
        w.add(&Attribute::Realm(&c.realm))?;
        w.add(&Attribute::Nonce(&c.nonce))?;
        w.message_integrity(&c.key)?;
    }
    w.fingerprint()?;
    let len = w.finish();
    buf.truncate(len);
    Ok(buf)
}

/// A Binding request, with CHANGE-REQUEST when asked (RFC 5780 §7.2).
pub fn binding_request(change: Option<(bool, bool)>) -> Result<Vec<u8>, CheckError> {
    encode(
        Method::BINDING,
        &|w| {
            if let Some((change_ip, change_port)) = change {
                w.add(&Attribute::ChangeRequest { change_ip, change_port })?;
            }
            Ok(())
        },
        None,
    )
}

/// Long-term credentials after a 401.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub key: IntegrityKey,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}@{})", self.username, self.realm)
    }
}

/// Timing of one client's requests.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub rto: Duration,
    pub limit: Duration,
}

/// A TURN client session over one connection.
#[derive(Debug)]
pub struct TurnClient {
    pub conn: Conn,
    user: String,
    password: String,
    creds: Option<Credentials>,
    timing: Timing,
}

/// What a successful Allocate gave.
#[derive(Debug, Clone, Copy)]
pub struct Allocation {
    pub relayed: SocketAddr,
    pub mapped: Option<SocketAddr>,
    pub lifetime: Option<u32>,
}

impl TurnClient {
    pub fn new(conn: Conn, user: &str, password: &str, timing: Timing) -> TurnClient {
        TurnClient {
            conn,
            user: user.to_owned(),
            password: password.to_owned(),
            creds: None,
            timing,
        }
    }

    /// An authenticated request: learns REALM/NONCE from a 401, follows a 438's new NONCE (at most three rounds).
    pub async fn request(&mut self, method: Method, attrs: &AttrFn<'_>) -> Result<Response, CheckError> {
        let mut stale = 0u32;
        for _ in 0..4 {
            let request = encode(method, attrs, self.creds.as_ref())?;
            let response = self.conn.transact(&request, self.timing.rto, self.timing.limit).await?;
            match (response.class(), response.error()) {
                (Some(Class::Success), _) => {
                    if let Some(c) = &self.creds {
                        if !response.verify(&c.key) {
                            return Err(CheckError::Protocol(
                                "the server's answer carries a wrong MESSAGE-INTEGRITY".into(),
                            ));
                        }
                    }
                    return Ok(response);
                }
                (_, Some((401, reason))) if self.creds.is_none() => {
                    let (Some(realm), Some(nonce)) = (response.text(attr::REALM), response.text(attr::NONCE)) else {
                        return Err(CheckError::Protocol(format!("401 without REALM/NONCE ({reason})")));
                    };
                    let key = stun::long_term_key_md5(&self.user, &realm, &self.password);
                    self.creds = Some(Credentials {
                        username: self.user.clone(),
                        realm,
                        nonce,
                        key,
                    });
                }
                (_, Some((401, reason))) => return Err(CheckError::AuthRejected(reason)),
                // RFC 8489 §9.2.5: a stale nonce; take the new one and try again.
                (_, Some((438, _))) => {
                    stale += 1;
                    let (Some(nonce), Some(c)) = (response.text(attr::NONCE), self.creds.as_mut()) else {
                        return Err(CheckError::StaleNonce(stale));
                    };
                    c.nonce = nonce;
                    if let Some(realm) = response.text(attr::REALM) {
                        c.realm = realm;
                    }
                }
                (_, Some((code, reason))) => return Err(CheckError::Stun { code, reason }),
                _ => {
                    return Err(CheckError::Protocol(
                        "an answer that is neither success nor error".into(),
                    ))
                }
            }
        }
        if stale > 0 {
            return Err(CheckError::StaleNonce(stale));
        }
        Err(CheckError::Protocol("authentication did not converge".into()))
    }

    /// Allocate a UDP relay (RFC 8656 §7.1).
    pub async fn allocate(&mut self) -> Result<Allocation, CheckError> {
        let response = self
            .request(Method::ALLOCATE, &|w| {
                // RFC 8656 §14.7: 17 = UDP.
                w.add(&Attribute::RequestedTransport(17))?;
                Ok(())
            })
            .await?;
        let relayed = response
            .address(attr::XOR_RELAYED_ADDRESS)
            .ok_or_else(|| CheckError::Protocol("Allocate success without XOR-RELAYED-ADDRESS".into()))?;
        Ok(Allocation {
            relayed,
            mapped: response.address(attr::XOR_MAPPED_ADDRESS),
            lifetime: response.lifetime(),
        })
    }

    pub async fn create_permission(&mut self, peer: SocketAddr) -> Result<(), CheckError> {
        self.request(Method::CREATE_PERMISSION, &|w| {
            w.add(&Attribute::XorPeerAddress(peer))?;
            Ok(())
        })
        .await
        .map(|_| ())
    }

    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), CheckError> {
        self.request(Method::CHANNEL_BIND, &|w| {
            w.add(&Attribute::ChannelNumber(channel))?;
            w.add(&Attribute::XorPeerAddress(peer))?;
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Refresh with LIFETIME 0: releases the allocation (RFC 8656 §7.2).
    pub async fn release(&mut self) -> Result<(), CheckError> {
        self.request(Method::REFRESH, &|w| {
            w.add(&Attribute::Lifetime(0))?;
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Sends a ChannelData frame (padded on streams).
    pub async fn send_channel(&mut self, channel: u16, payload: &[u8]) -> Result<(), CheckError> {
        let frame = channel_data(channel, payload, !self.conn.is_udp());
        self.conn.send(&frame).await
    }

    /// The next relayed payload: a ChannelData frame's or a Data indication's, with its peer when it says so.
    pub async fn recv_data(&mut self) -> Result<(Option<SocketAddr>, Vec<u8>), CheckError> {
        loop {
            let frame = self.conn.recv().await?;
            if let Some(payload) = parse_channel_data(&frame.0) {
                return Ok((None, payload.to_vec()));
            }
            let Ok(msg) = Message::parse(&frame.0) else { continue };
            if msg.method() == Method::DATA && msg.class() == Class::Indication {
                let peer = match msg.decode(attr::XOR_PEER_ADDRESS) {
                    Some(Ok(Attribute::XorPeerAddress(a))) => Some(a),
                    _ => None,
                };
                if let Some(Ok(Attribute::Data(d))) = msg.decode(attr::DATA) {
                    return Ok((peer, d.to_vec()));
                }
            }
        }
    }

    /// A Send indication (RFC 8656 §11): data to a peer without a channel.
    pub async fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) -> Result<(), CheckError> {
        let mut buf = vec![0u8; payload.len() + 128];
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, random_tid())?;
        w.add(&Attribute::XorPeerAddress(peer))?;
        w.add(&Attribute::Data(payload))?;
        let len = w.finish();
        buf.truncate(len);
        self.conn.send(&buf).await
    }
}

/// A ChannelData frame, padded to four bytes when `pad` (streams, RFC 8656 §12.5).
pub fn channel_data(channel: u16, payload: &[u8], pad: bool) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(u16::MAX).to_be_bytes());
    frame.extend_from_slice(payload);
    if pad {
        while frame.len() % 4 != 0 {
            frame.push(0);
        }
    }
    frame
}

/// The payload of a ChannelData frame, or `None` when `buf` is not one.
pub fn parse_channel_data(buf: &[u8]) -> Option<&[u8]> {
    let data = stun::ChannelData::parse(buf).ok()?;
    Some(data.payload)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn channel_data_is_padded_on_streams_only() {
        let f = channel_data(0x4000, b"abcde", true);
        assert_eq!(f.len(), 12);
        assert_eq!(&f[..4], &[0x40, 0x00, 0x00, 0x05]);
        assert_eq!(channel_data(0x4000, b"abcde", false).len(), 9);
        assert_eq!(parse_channel_data(&f), Some(&b"abcde"[..]));
    }

    #[test]
    fn binding_with_change_request_parses() {
        let req = binding_request(Some((true, false))).unwrap();
        let msg = Message::parse(&req).unwrap();
        assert_eq!(msg.method(), Method::BINDING);
        assert_eq!(
            msg.decode(attr::CHANGE_REQUEST),
            Some(Ok(Attribute::ChangeRequest {
                change_ip: true,
                change_port: false
            }))
        );
        msg.check_fingerprint().unwrap();
    }
}
