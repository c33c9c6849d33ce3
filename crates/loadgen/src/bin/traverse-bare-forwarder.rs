//! The bare UDP forwarder `bench/relay-xdp.sh` measures beside the TURN servers: the least a socket relay can do
//! per packet — one receive and one send, a 4-byte header stripped or prepended — and nothing else (no
//! authentication, no permissions, no lifetimes, no counters). It answers every STUN request with an unsigned
//! success, which is all `traverse-loadgen`'s client needs before it has been challenged, and remembers the peer of
//! each client's ChannelBind. One thread, like the servers it is compared with. Not a TURN server: a yardstick.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::Context;
use clap::Parser;
use stun::{ChannelData, Class, Message};
use tokio::net::UdpSocket;
use traverse_loadgen::forwarder::{self, Answered, ForwarderArgs};

#[derive(Parser, Debug)]
#[command(about = "A bare UDP forwarder speaking just enough TURN for traverse-loadgen (a benchmark yardstick)")]
struct Cli {
    #[command(flatten)]
    args: ForwarderArgs,
}

/// One client: its relay socket, and the peer and channel of its ChannelBind.
struct Route {
    relay: Rc<UdpSocket>,
    peer: Option<(SocketAddr, u16)>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse().args;
    let lifetime = args.lifetime()?;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            tokio::select! {
                r = serve(&args) => r,
                _ = tokio::time::sleep(lifetime) => Ok(()),
            }
        })
        .await
}

async fn serve(args: &ForwarderArgs) -> anyhow::Result<()> {
    let listener = Rc::new(UdpSocket::bind(args.listen).await.context("bind the listener")?);
    let mut routes: HashMap<SocketAddr, Route> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; 1500];
    // Under a flood this loop still yields: each `recv_from` spends tokio's cooperative budget, so the task gives
    // way every 128 receives and the relay sockets' tasks run (measured at 150 000 packets/s: its 100 relay sockets
    // dropped nothing while the listener dropped the overload, `docs/benchmarks.md`).
    loop {
        let (n, client) = listener.recv_from(&mut buf).await?;
        let Some(packet) = buf.get(..n) else { continue };
        if let Ok(data) = ChannelData::parse(packet) {
            if let Some(Route {
                relay,
                peer: Some((peer, _)),
            }) = routes.get(&client)
            {
                let _ = relay.try_send_to(data.payload, *peer);
            }
            continue;
        }
        let Ok(msg) = Message::parse(packet) else { continue };
        if msg.class() != Class::Request {
            continue;
        }
        let route = match routes.entry(client) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let relay = Rc::new(UdpSocket::bind(SocketAddr::new(args.relay_ip, 0)).await?);
                tokio::task::spawn_local(peer_to_client(relay.clone(), listener.clone(), client));
                e.insert(Route { relay, peer: None })
            }
        };
        let relayed = route.relay.local_addr()?;
        let Some(Answered { len, bound }) = forwarder::answer(&msg, client, relayed, &mut out)? else {
            continue;
        };
        if let Some((peer, channel)) = bound {
            route.peer = Some((peer, channel));
            CHANNELS.with(|c| c.borrow_mut().insert(relayed, channel));
        }
        if let Some(answer) = out.get(..len) {
            let _ = listener.try_send_to(answer, client);
        }
    }
}

thread_local! {
    /// Relay address → channel, written on ChannelBind, read by that relay's task per packet (one thread).
    static CHANNELS: std::cell::RefCell<HashMap<SocketAddr, u16>> = std::cell::RefCell::new(HashMap::new());
}

/// Peer → client: prepend the ChannelData header in place and send from the listener.
async fn peer_to_client(relay: Rc<UdpSocket>, listener: Rc<UdpSocket>, client: SocketAddr) {
    let Ok(relayed) = relay.local_addr() else { return };
    let mut buf = vec![0u8; 65_540];
    loop {
        let Ok((n, _peer)) = relay.recv_from(buf.get_mut(4..).unwrap_or_default()).await else {
            return;
        };
        let Some(channel) = CHANNELS.with(|c| c.borrow().get(&relayed).copied()) else {
            continue;
        };
        let Ok(len) = u16::try_from(n) else { continue };
        if let Some([c0, c1, l0, l1]) = buf.get_mut(..4) {
            [*c0, *c1] = channel.to_be_bytes();
            [*l0, *l1] = len.to_be_bytes();
        }
        if let Some(frame) = buf.get(..4 + n) {
            let _ = listener.try_send_to(frame, client);
        }
    }
}
