//! What the two bench forwarders (`traverse-bare-forwarder` on epoll, `traverse-uring-forwarder` on io_uring)
//! share: their command line, and their answer to a client's STUN request — an unsigned success, which is all
//! `traverse-loadgen`'s client needs before it has been challenged.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::bail;
use stun::{attr, Attribute, Class, Message, MessageWriter, Method};

#[derive(clap::Args, Debug)]
pub struct ForwarderArgs {
    /// Where clients send (the TURN port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The address relay sockets bind (port 0: the kernel picks).
    #[arg(long)]
    pub relay_ip: IpAddr,
    /// Exit after this many seconds (at most 3600).
    #[arg(long, default_value_t = 600)]
    lifetime: u64,
}

impl ForwarderArgs {
    /// How long to run; more than an hour is refused (every benchmark process is bounded in time).
    pub fn lifetime(&self) -> anyhow::Result<Duration> {
        if self.lifetime > 3600 {
            bail!("--lifetime is capped at 3600 s");
        }
        Ok(Duration::from_secs(self.lifetime))
    }
}

/// A request answered: the answer's length in the caller's buffer, and the peer and channel a ChannelBind names.
#[derive(Debug)]
pub struct Answered {
    pub len: usize,
    pub bound: Option<(SocketAddr, u16)>,
}

/// Writes into `out` the unsigned success for the request `msg` (Allocate, Refresh, CreatePermission, ChannelBind)
/// from `client`, whose relay socket is `relayed`. `None` for a ChannelBind without its peer or channel (left
/// unanswered).
pub fn answer(
    msg: &Message,
    client: SocketAddr,
    relayed: SocketAddr,
    out: &mut [u8],
) -> anyhow::Result<Option<Answered>> {
    let mut bound = None;
    if msg.method() == Method::CHANNEL_BIND {
        let (Some(Ok(Attribute::XorPeerAddress(peer))), Some(Ok(Attribute::ChannelNumber(channel)))) =
            (msg.decode(attr::XOR_PEER_ADDRESS), msg.decode(attr::CHANNEL_NUMBER))
        else {
            return Ok(None);
        };
        bound = Some((peer, channel));
    }
    let mut w = MessageWriter::new(out, msg.method(), Class::Success, msg.transaction_id())?;
    if msg.method() == Method::ALLOCATE {
        w.add(&Attribute::XorRelayedAddress(relayed))?;
        w.add(&Attribute::XorMappedAddress(client))?;
        w.add(&Attribute::Lifetime(600))?;
    }
    Ok(Some(Answered { len: w.finish(), bound }))
}
