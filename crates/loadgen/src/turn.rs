//! The load generators' TURN client over UDP, TCP or TLS: one `Session` is one client socket and its allocation.
//! The protocol — long-term credentials (401 → nonce → key → signed request, 438 → new nonce), retransmissions — is
//! `turn::client`'s, the project's one sans-IO client; this module only drives it over a tokio socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stun::{Attribute, ChannelNumber, Message, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use turn::client::{Client, ClientConfig, Event, Outcome, RequestId};

/// How long one request waits for its answer, retransmissions included (RFC 8489's schedule, cut short: a load
/// generator reports a lost request rather than wait 39.5 s).
const TIMEOUT: Duration = Duration::from_millis(2_500);

/// Long-term credentials shared by every client of a run.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// What a session's client socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Udp,
    /// TURN over TCP (RFC 8656 §3.1): one connection per allocation. Allocations and their requests only: the
    /// traffic runs send ChannelData over UDP.
    Tcp,
    /// TURN over TLS, ALPN `stun.turn` (RFC 7443), one connection per allocation; the certificate is not checked.
    Tls,
}

/// A client socket connected to the server and the allocation it holds.
#[derive(Debug)]
pub struct Session {
    link: Link,
    client: Client,
    server: SocketAddr,
}

#[derive(Debug)]
enum Link {
    Udp(UdpSocket),
    /// The connection and what it brought that is not a whole frame yet.
    Stream(Box<dyn Stream>, Vec<u8>),
}

/// A TCP or TLS connection to the server.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug> Stream for S {}

impl Link {
    async fn send(&mut self, packet: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.send(packet).await.map(|_| ()),
            Link::Stream(stream, _) => {
                stream.write_all(packet).await?;
                stream.flush().await
            }
        }
    }

    /// The next datagram, or the next frame of the stream, into `buf`. Cancel-safe: a stream's bytes wait in the
    /// link until their frame is whole.
    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (stream, inbox) = match self {
            Link::Udp(socket) => return socket.recv(buf).await,
            Link::Stream(stream, inbox) => (stream, inbox),
        };
        loop {
            if let Some(frame) = stun::take_stream_frame(inbox).map_err(std::io::Error::other)? {
                let to = buf
                    .get_mut(..frame.len())
                    .ok_or_else(|| std::io::Error::other("a frame beyond the buffer"))?;
                to.copy_from_slice(&frame);
                return Ok(frame.len());
            }
            if stream.read_buf(inbox).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

impl Session {
    /// RFC 8656 §7.1: Allocate (the first one draws the 401 that teaches the realm and nonce). `lifetime` is the
    /// LIFETIME asked for (none: the server's default).
    pub async fn allocate(
        server: SocketAddr,
        credentials: &Credentials,
        lifetime: Option<u32>,
    ) -> anyhow::Result<Self> {
        Self::allocate_from(None, Transport::Udp, server, credentials, lifetime).await
    }

    /// [`Session::allocate`] over `transport`, from a socket bound to `local` (none: the unspecified address): one
    /// local address has ~28 000 ephemeral ports, so more client sockets than that need several.
    pub async fn allocate_from(
        local: Option<IpAddr>,
        transport: Transport,
        server: SocketAddr,
        credentials: &Credentials,
        lifetime: Option<u32>,
    ) -> anyhow::Result<Self> {
        let any: IpAddr = if server.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let local = SocketAddr::new(local.unwrap_or(any), 0);
        let (link, mut config) = match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind(local).await?;
                socket.connect(server).await?;
                (
                    Link::Udp(socket),
                    ClientConfig::udp(&credentials.user, &credentials.password),
                )
            }
            Transport::Tcp | Transport::Tls => {
                let socket = if server.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(local)?;
                let stream = socket.connect(server).await?;
                stream.set_nodelay(true)?;
                let stream: Box<dyn Stream> = if transport == Transport::Tls {
                    let host = server.ip().to_string();
                    let (tls, _) = doctor::tls::connect(stream, &host, &[b"stun.turn"]).await?;
                    Box::new(tls)
                } else {
                    Box::new(stream)
                };
                (
                    Link::Stream(stream, Vec::new()),
                    ClientConfig::stream(&credentials.user, &credentials.password),
                )
            }
        };
        config.timeout = Some(TIMEOUT);
        let mut session = Session {
            link,
            client: Client::new(config),
            server,
        };
        let id = session.client.allocate(Instant::now(), |w| {
            if let Some(l) = lifetime {
                w.add(&Attribute::Lifetime(l))?;
            }
            Ok(())
        })?;
        session.finish(id, &mut |_| {}).await.context("Allocate")?;
        Ok(session)
    }

    /// How many times a request was sent again with a fresh nonce (438 Stale Nonce).
    pub fn stale_nonces(&self) -> u64 {
        u64::from(self.client.stale_nonces())
    }

    /// Sends a ChannelData packet at once, or fails (a full socket buffer; a TCP session, which holds its
    /// allocation only).
    pub fn try_send(&self, packet: &[u8]) -> std::io::Result<usize> {
        match &self.link {
            Link::Udp(socket) => socket.try_send(packet),
            Link::Stream(..) => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }

    /// Receives what the relay sends back (a TCP session fails: it holds its allocation only).
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &self.link {
            Link::Udp(socket) => socket.recv(buf).await,
            Link::Stream(..) => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }

    /// Binds `channel` to `peer` (also installs or refreshes the permission for the peer's address).
    /// `on_other` gets every packet that is not a STUN message (ChannelData arriving meanwhile).
    pub async fn channel_bind(
        &mut self,
        channel: ChannelNumber,
        peer: SocketAddr,
        on_other: &mut (dyn FnMut(&[u8]) + Send),
    ) -> anyhow::Result<()> {
        let id = self.client.channel_bind(Instant::now(), channel, peer)?;
        self.finish(id, on_other).await.context("ChannelBind")
    }

    /// Refreshes the allocation; `Some(0)` deletes it (RFC 8656 §7.3).
    pub async fn refresh(
        &mut self,
        lifetime: Option<u32>,
        on_other: &mut (dyn FnMut(&[u8]) + Send),
    ) -> anyhow::Result<()> {
        let id = self.client.request(Instant::now(), Method::REFRESH, |w| {
            if let Some(l) = lifetime {
                w.add(&Attribute::Lifetime(l))?;
            }
            Ok(())
        })?;
        self.finish(id, on_other).await.context("Refresh")
    }

    /// Drives the client until request `id` has its final answer: sends what it wants sent, feeds it the STUN
    /// messages that arrive (anything else goes to `on_other`), and runs its timers.
    async fn finish(&mut self, id: RequestId, on_other: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<()> {
        let mut buf = [0u8; 1500];
        loop {
            while let Some(packet) = self.client.poll_transmit() {
                self.link.send(&packet).await?;
            }
            while let Some(event) = self.client.poll_event() {
                if let Event::Response { id: done, outcome, .. } = event {
                    if done != id {
                        continue;
                    }
                    return match outcome {
                        Outcome::Success(_) => Ok(()),
                        Outcome::Error { code, reason, .. } => bail!("{code} {reason}"),
                        Outcome::Timeout => bail!("no answer from {} within {TIMEOUT:?}", self.server),
                    };
                }
            }
            let deadline = self.client.poll_timeout().unwrap_or_else(|| Instant::now() + TIMEOUT);
            tokio::select! {
                r = self.link.recv(&mut buf) => {
                    let n = r?;
                    let Some(packet) = buf.get(..n) else { continue };
                    if Message::parse(packet).is_ok() {
                        self.client.handle_input(Instant::now(), packet);
                    } else {
                        on_other(packet);
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => self.client.handle_timeout(Instant::now()),
            }
        }
    }
}
