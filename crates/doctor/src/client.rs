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
    /// The retransmission interval over UDP (never doubled: see [`Timing::config`]).
    pub rto: Duration,
    /// How long each transaction waits for its answer.
    pub limit: Duration,
}

impl Timing {
    /// The client's schedule: over UDP, a retransmission every `rto`, never doubled, until `limit` after the
    /// transaction's first transmission (the check's deadline ends it, not RFC 8489's count of seven); over a stream
    /// one send and `limit`. An unsigned request and up to three signed ones: a 401, then a 438 followed twice.
    /// A doctor's verdict turns on whether an answer comes at all, so a lossy link must not read as a refusing one:
    /// with the RTO doubling (4 tries in 3 s) and 10 % loss each way, a transaction was lost 0.13 % of the time, and
    /// a run makes dozens (12 tries now: 1e-9). A NAT filtering probe's 1.5 s hold 6 tries, not 3: a lost probe, read
    /// as a stricter NAT, went from 0.7 % to 0.005 %. Each try costs a few dozen bytes.
    fn config(&self, user: &str, password: &str, reliable: bool) -> ClientConfig {
        ClientConfig {
            reliable,
            initial_rto: self.rto,
            max_rto: Some(self.rto),
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

/// One Binding over UDP from `sock` to `to`, with CHANGE-REQUEST when asked (RFC 5780 §7.2), retransmitted every
/// `rto` until `limit` ([`Timing`]); an answer from any source with our transaction id counts, success or error.
/// Its round trip is taken from the first transmission: an answer to a retransmission (the first lost) reads longer,
/// never shorter. (From the last one, a 300 ms round trip read as 50 ms once a retransmission had gone at 250 ms.)
pub(crate) async fn binding_from(
    sock: &UdpSocket,
    to: SocketAddr,
    change: Option<(bool, bool)>,
    rto: Duration,
    limit: Duration,
) -> Result<BindingAnswer, CheckError> {
    let timing = Timing { rto, limit };
    let mut client = Client::new(timing.config("", "", false));
    let id = client.request(now(), Method::BINDING, |w| {
        if let Some((change_ip, change_port)) = change {
            w.add(&Attribute::ChangeRequest { change_ip, change_port })?;
        }
        Ok(())
    })?;
    let mut buf = vec![0u8; 2048];
    let first_sent = Instant::now();
    let mut from = to;
    loop {
        while let Some(packet) = client.poll_transmit() {
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
                rtt: first_sent.elapsed(),
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

    /// A lossy link: a server whose first five answers are lost. Retransmitted every RTO, the Binding gets its
    /// answer on the sixth try within the deadline (with the RTO doubling, 40, 80, 160, 320 ms: five tries in 1 s,
    /// and a timeout), and its round trip counts from the first transmission, not from the answered one.
    #[tokio::test]
    async fn a_binding_gets_through_a_lossy_link_and_counts_its_round_trip_from_the_first_try() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap();
        let answering = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for n in 1.. {
                let (len, from) = server.recv_from(&mut buf).await.unwrap();
                if n <= 5 {
                    continue;
                }
                let mut tid = stun::TransactionId { bytes: [0; 16] };
                tid.bytes.copy_from_slice(&buf[4..20]);
                assert!(len >= 20);
                let mut out = [0u8; 256];
                let mut w = stun::MessageWriter::new(&mut out, Method::BINDING, stun::Class::Success, tid).unwrap();
                w.add(&Attribute::XorMappedAddress(from)).unwrap();
                let len = w.finish();
                server.send_to(&out[..len], from).await.unwrap();
                return n;
            }
            unreachable!()
        });
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (rto, limit) = (Duration::from_millis(40), Duration::from_millis(1000));
        let answer = binding_from(&sock, to, None, rto, limit)
            .await
            .expect("answered on the sixth try");
        assert_eq!(answering.await.unwrap(), 6);
        assert_eq!(
            answer.response.address(attr::XOR_MAPPED_ADDRESS),
            Some(sock.local_addr().unwrap())
        );
        assert!(answer.rtt >= 5 * rto, "from the first try: {:?}", answer.rtt);
    }
}
