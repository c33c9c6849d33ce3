//! The load generators' TURN client over UDP: one `Session` is one client socket and its allocation. The protocol —
//! long-term credentials (401 → nonce → key → signed request, 438 → new nonce), retransmissions — is
//! `turn::client`'s, the project's one sans-IO client; this module only drives it over a tokio socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stun::{Attribute, ChannelNumber, Message, Method};
use tokio::net::UdpSocket;
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

/// A client socket connected to the server and the allocation it holds.
#[derive(Debug)]
pub struct Session {
    socket: UdpSocket,
    client: Client,
}

impl Session {
    /// RFC 8656 §7.1: Allocate (the first one draws the 401 that teaches the realm and nonce). `lifetime` is the
    /// LIFETIME asked for (none: the server's default).
    pub async fn allocate(
        server: SocketAddr,
        credentials: &Credentials,
        lifetime: Option<u32>,
    ) -> anyhow::Result<Self> {
        Self::allocate_from(None, server, credentials, lifetime).await
    }

    /// [`Session::allocate`] from a socket bound to `local` (none: the unspecified address): one local address has
    /// ~28 000 ephemeral ports, so more client sockets than that need several.
    pub async fn allocate_from(
        local: Option<IpAddr>,
        server: SocketAddr,
        credentials: &Credentials,
        lifetime: Option<u32>,
    ) -> anyhow::Result<Self> {
        let any: IpAddr = if server.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind(SocketAddr::new(local.unwrap_or(any), 0)).await?;
        socket.connect(server).await?;
        let mut config = ClientConfig::udp(&credentials.user, &credentials.password);
        config.timeout = Some(TIMEOUT);
        let mut session = Session {
            socket,
            client: Client::new(config),
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

    /// The socket, for sending ChannelData and receiving what the relay sends back.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
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
                self.socket.send(&packet).await?;
            }
            while let Some(event) = self.client.poll_event() {
                if let Event::Response { id: done, outcome, .. } = event {
                    if done != id {
                        continue;
                    }
                    return match outcome {
                        Outcome::Success(_) => Ok(()),
                        Outcome::Error { code, reason, .. } => bail!("{code} {reason}"),
                        Outcome::Timeout => bail!("no answer from {} within {TIMEOUT:?}", self.socket.peer_addr()?),
                    };
                }
            }
            let deadline = self.client.poll_timeout().unwrap_or_else(|| Instant::now() + TIMEOUT);
            tokio::select! {
                r = self.socket.recv(&mut buf) => {
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
