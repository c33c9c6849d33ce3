//! The doctor's I/O for [`turn::client`], the sans-IO STUN/TURN client that does the long-term credential dance
//! (RFC 8489 §9.2: 401 → REALM/NONCE → key → signed again; a 438 takes the new NONCE and is not an authentication
//! failure) and the retransmissions. Here: a connection of each transport (UDP datagrams; TCP/TLS with RFC 8656 §12.5
//! stream framing), a session driving the client over it under tokio with every transaction under the check's
//! deadline, a Binding from any UDP socket, and the one place where the client's outcomes become [`CheckError`]s.

use std::net::SocketAddr;
use std::time::Duration;

use stun::{attr, Attribute, ChannelNumber, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::{timeout_at, Instant};
use turn::client::{Answer, Client, ClientConfig, Event, Outcome, RequestId};

use crate::error::CheckError;

/// A byte stream to the server (TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to a STUN/TURN server.
pub enum Conn {
    Udp {
        sock: UdpSocket,
        server: SocketAddr,
    },
    /// `local`: this end of the TCP connection (under TLS too), to compare with what the server sees. `heard`: the
    /// server has sent something on it, so a later silence is a stall, not something else listening there.
    Stream {
        io: Box<dyn Stream>,
        buf: Vec<u8>,
        local: Option<SocketAddr>,
        heard: bool,
    },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Udp { server, .. } => write!(f, "Conn::Udp({server})"),
            Conn::Stream { .. } => write!(f, "Conn::Stream"),
        }
    }
}

impl Conn {
    pub fn is_udp(&self) -> bool {
        matches!(self, Conn::Udp { .. })
    }

    /// A TCP or TLS connection on which the server has sent nothing yet.
    fn unheard_stream(&self) -> bool {
        matches!(self, Conn::Stream { heard: false, .. })
    }

    /// A TCP or TLS connection on which the server has sent something.
    fn heard_stream(&self) -> bool {
        matches!(self, Conn::Stream { heard: true, .. })
    }

    /// This end of a TCP or TLS connection (None over UDP: the socket is bound to the wildcard address).
    pub fn local_stream_addr(&self) -> Option<SocketAddr> {
        match self {
            Conn::Udp { .. } => None,
            Conn::Stream { local, .. } => *local,
        }
    }

    /// Sends `bytes`; on a stream, gives up after `limit`: a server that stops reading (a window held shut, or
    /// opened a byte at a time) must not hold the doctor for good.
    pub async fn send(&mut self, bytes: &[u8], limit: Duration) -> Result<(), CheckError> {
        match self {
            Conn::Udp { sock, server } => {
                sock.send_to(bytes, *server).await?;
            }
            Conn::Stream { io, .. } => {
                let write = async {
                    io.write_all(bytes).await?;
                    io.flush().await
                };
                tokio::time::timeout(limit, write)
                    .await
                    .map_err(|_| CheckError::WriteStalled(limit))??;
            }
        }
        Ok(())
    }

    /// The next STUN message or ChannelData frame from the server; UDP datagrams from anyone else are ignored.
    pub async fn recv(&mut self) -> Result<Vec<u8>, CheckError> {
        match self {
            Conn::Udp { sock, server } => {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await?;
                    if from == *server {
                        buf.truncate(n);
                        return Ok(buf);
                    }
                }
            }
            Conn::Stream { io, buf, heard, .. } => loop {
                if let Some(frame) =
                    stun::take_stream_frame(buf).map_err(|_| CheckError::Protocol("not STUN".into()))?
                {
                    return Ok(frame);
                }
                let mut chunk = [0u8; 8192];
                let n = io.read(&mut chunk).await?;
                if n == 0 {
                    return Err(CheckError::Closed);
                }
                *heard = true;
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            },
        }
    }
}

/// Timing of one client's requests.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The first retransmission timeout over UDP, doubling on every retry.
    pub rto: Duration,
    /// How long each transaction waits for its answer.
    pub limit: Duration,
}

impl Timing {
    /// The client's schedule: over UDP, retransmissions from `rto` on, doubling, until `limit` after the
    /// transaction's first transmission (the check's deadline ends it, not RFC 8489's count of seven); over a stream
    /// one send and `limit`. An unsigned request and up to three signed ones: a 401, then a 438 followed twice.
    fn config(&self, user: &str, password: &str, reliable: bool) -> ClientConfig {
        ClientConfig {
            reliable,
            initial_rto: self.rto,
            max_transmissions: u32::MAX,
            timeout: Some(self.limit),
            max_challenges: 3,
            ..ClientConfig::udp(user, password)
        }
    }
}

/// The clock the client reads: tokio's, so that time paused in a test pauses the client too.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// A TURN client session over one connection.
#[derive(Debug)]
pub struct TurnClient {
    conn: Conn,
    client: Client,
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
        let config = timing.config(user, password, !conn.is_udp());
        TurnClient {
            conn,
            client: Client::new(config),
            timing,
        }
    }

    /// Allocate a UDP relay (RFC 8656 §7.1).
    pub async fn allocate(&mut self) -> Result<Allocation, CheckError> {
        let id = self.client.allocate(now(), |_| Ok(()))?;
        let answer = self.outcome_of(id).await?;
        let relayed = answer
            .address(attr::XOR_RELAYED_ADDRESS)
            .ok_or_else(|| CheckError::Protocol("Allocate success without XOR-RELAYED-ADDRESS".into()))?;
        Ok(Allocation {
            relayed,
            mapped: answer.address(attr::XOR_MAPPED_ADDRESS),
            lifetime: answer.lifetime(),
        })
    }

    pub async fn create_permission(&mut self, peer: SocketAddr) -> Result<(), CheckError> {
        let id = self.client.create_permission(now(), &[peer])?;
        self.outcome_of(id).await.map(|_| ())
    }

    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), CheckError> {
        let id = self.client.channel_bind(now(), channel_number(channel)?, peer)?;
        self.outcome_of(id).await.map(|_| ())
    }

    /// Refresh with LIFETIME 0: releases the allocation (RFC 8656 §7.2).
    pub async fn release(&mut self) -> Result<(), CheckError> {
        let id = self.client.refresh(now(), 0)?;
        self.outcome_of(id).await.map(|_| ())
    }

    /// Sends a ChannelData frame (padded on streams).
    pub async fn send_channel(&mut self, channel: u16, payload: &[u8]) -> Result<(), CheckError> {
        self.client.channel_data(channel_number(channel)?, payload)?;
        self.flush().await
    }

    /// A Send indication (RFC 8656 §11): data to a peer without a channel.
    pub async fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) -> Result<(), CheckError> {
        self.client.send_indication(peer, payload)?;
        self.flush().await
    }

    /// The next relayed payload and its peer: a Data indication's, or one on a bound channel.
    pub async fn recv_data(&mut self) -> Result<(SocketAddr, Vec<u8>), CheckError> {
        loop {
            while let Some(event) = self.client.poll_event() {
                if let Event::Data { peer, data } = event {
                    return Ok((peer, data));
                }
            }
            let frame = self.conn.recv().await?;
            self.client.handle_input(now(), &frame);
        }
    }

    /// The answer to request `id` (queued, signed once the server challenged), or why there was none worth having.
    async fn outcome_of(&mut self, id: RequestId) -> Result<Answer, CheckError> {
        let stale_before = self.client.stale_nonces();
        match self.answer_to(id).await? {
            Outcome::Success(answer) => Ok(answer),
            // Over TCP/TLS the connection was accepted and nothing came back on it: something else listens there.
            // A server that answered before and then went quiet has stalled.
            Outcome::Timeout if self.conn.unheard_stream() => Err(CheckError::Silent(self.timing.limit)),
            Outcome::Timeout if self.conn.heard_stream() => Err(CheckError::Stalled(self.timing.limit)),
            Outcome::Timeout => Err(CheckError::Timeout(self.timing.limit)),
            Outcome::Error { code: 401, reason, .. } if self.client.realm().is_none() => {
                Err(CheckError::Protocol(format!("401 without REALM/NONCE ({reason})")))
            }
            // Reason phrases are the server's (up to 763 bytes): one short printable line.
            Outcome::Error { code: 401, reason, .. } => {
                Err(CheckError::AuthRejected(crate::terminal::line(&reason, 120)))
            }
            // RFC 8489 §9.2.5: the client took every new nonce and the server kept calling it stale.
            Outcome::Error { code: 438, .. } => Err(CheckError::StaleNonce(
                self.client.stale_nonces().saturating_sub(stale_before),
            )),
            Outcome::Error { code: 0, .. } => Err(CheckError::Protocol(
                "an answer that is neither success nor error".into(),
            )),
            Outcome::Error { code, reason, .. } => Err(CheckError::Stun {
                code,
                reason: crate::terminal::line(&reason, 120),
            }),
        }
    }

    async fn flush(&mut self) -> Result<(), CheckError> {
        while let Some(packet) = self.client.poll_transmit() {
            self.conn.send(&packet, self.timing.limit).await?;
        }
        Ok(())
    }

    /// Drives the client until request `id` has its outcome. Relayed data arriving meanwhile is dropped. An answer
    /// whose MESSAGE-INTEGRITY does not verify ends the wait at once: the client would wait for a better one, but
    /// a server signing with another key is the finding.
    async fn answer_to(&mut self, id: RequestId) -> Result<Outcome, CheckError> {
        let forged_before = self.client.integrity_failures();
        loop {
            if self.client.integrity_failures() > forged_before {
                return Err(CheckError::Protocol(
                    "the server's answer carries a wrong MESSAGE-INTEGRITY".into(),
                ));
            }
            self.flush().await?;
            while let Some(event) = self.client.poll_event() {
                if let Event::Response { id: done, outcome, .. } = event {
                    if done == id {
                        return Ok(outcome);
                    }
                }
            }
            let Some(deadline) = self.client.poll_timeout() else {
                return Ok(Outcome::Timeout);
            };
            match timeout_at(Instant::from_std(deadline), self.conn.recv()).await {
                Ok(frame) => self.client.handle_input(now(), &frame?),
                Err(_) => self.client.handle_timeout(now()),
            }
        }
    }
}

fn channel_number(channel: u16) -> Result<ChannelNumber, CheckError> {
    ChannelNumber::new(channel).ok_or_else(|| CheckError::Protocol(format!("{channel:#x} is not a channel number")))
}

/// A Binding answer: the response, where it really came from, and the RTT of the last attempt.
pub(crate) struct BindingAnswer {
    pub response: Answer,
    pub from: SocketAddr,
    pub rtt: Duration,
}

/// How a Binding is retransmitted until its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// From the RTO on, doubling (RFC 8489 §6.2.1): where the answer's round trip is reported.
    Doubling,
    /// Every RTO: the NAT probes, whose verdict turns on whether an answer arrives at all. On a link that loses
    /// 10 % each way, a filtering probe's 1.5 s hold 6 tries instead of 3, and a lost probe (which reads as a
    /// stricter NAT) goes from 0.7 % to 0.005 %. A round trip measured over them could be a retransmission's.
    Steady,
}

/// One Binding over UDP from `sock` to `to`, with CHANGE-REQUEST when asked (RFC 5780 §7.2), retransmitted from
/// `rto` at `pace` until `limit`; an answer from any source with our transaction id counts, success or error.
pub(crate) async fn binding_from(
    sock: &UdpSocket,
    to: SocketAddr,
    change: Option<(bool, bool)>,
    rto: Duration,
    limit: Duration,
    pace: Pace,
) -> Result<BindingAnswer, CheckError> {
    let timing = Timing { rto, limit };
    let mut config = timing.config("", "", false);
    if pace == Pace::Steady {
        config.max_rto = Some(rto);
    }
    let mut client = Client::new(config);
    let id = client.request(now(), Method::BINDING, |w| {
        if let Some((change_ip, change_port)) = change {
            w.add(&Attribute::ChangeRequest { change_ip, change_port })?;
        }
        Ok(())
    })?;
    let mut buf = vec![0u8; 2048];
    let mut sent_at = Instant::now();
    let mut from = to;
    loop {
        while let Some(packet) = client.poll_transmit() {
            sent_at = Instant::now();
            sock.send_to(&packet, to).await?;
        }
        while let Some(event) = client.poll_event() {
            let Event::Response { id: done, outcome, .. } = event else {
                continue;
            };
            if done != id {
                continue;
            }
            let Some(answer) = outcome.answer() else {
                return Err(CheckError::Timeout(timing.limit));
            };
            return Ok(BindingAnswer {
                response: answer.clone(),
                from,
                rtt: sent_at.elapsed(),
            });
        }
        let Some(deadline) = client.poll_timeout() else {
            return Err(CheckError::Timeout(timing.limit));
        };
        match timeout_at(Instant::from_std(deadline), sock.recv_from(&mut buf)).await {
            Ok(got) => {
                let (n, source) = got?;
                from = source;
                client.handle_input(now(), buf.get(..n).unwrap_or_default());
            }
            Err(_) => client.handle_timeout(now()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A TURN server over TCP that stops reading (its window shut) must not hold the doctor: each write gives up
    /// after its limit. Before, the relay check's echo loop waited in `write_all` for good.
    #[tokio::test]
    async fn a_stream_the_server_stops_reading_gives_up_after_the_limit() {
        // The server's end holds 4 KiB and is never read.
        let (ours, _server) = tokio::io::duplex(4096);
        let mut conn = Conn::Stream {
            io: Box::new(ours),
            buf: Vec::new(),
            local: None,
            heard: false,
        };
        let limit = Duration::from_millis(200);
        conn.send(&[0u8; 1000], limit).await.unwrap();
        let started = std::time::Instant::now();
        let stalled = conn.send(&[0u8; 64 * 1024], limit).await;
        assert!(
            matches!(stalled, Err(CheckError::WriteStalled(l)) if l == limit),
            "{stalled:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
