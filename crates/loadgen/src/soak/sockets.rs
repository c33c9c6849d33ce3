//! The signaling side of the soak: idle WebSockets joined two to a room, answering heartbeats, and a churn of
//! sockets that join those rooms for a few seconds and leave.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{pause, stopped, Stats};

type Ws = WebSocketStream<TcpStream>;

/// What every socket task of a run shares.
#[derive(Debug)]
pub(crate) struct WsLoad {
    pub addr: SocketAddr,
    pub url: String,
    /// Rooms of the idle sockets, `soak-0` … : two idle peers each; the churn joins them too.
    pub rooms: usize,
    /// Bounds the sockets being opened at once.
    pub ramp: Arc<Semaphore>,
    /// Bounds the sockets being closed at once.
    pub teardown: Semaphore,
    pub stats: Arc<Stats>,
}

/// Longest wait for a connect, upgrade and `joined`, and for a close to complete.
const HANDSHAKE: Duration = Duration::from_secs(10);
const CLOSE: Duration = Duration::from_secs(2);

/// A joined socket: the heartbeat interval the server asked for and the highest stream `seq` read so far.
struct Peer {
    ws: Ws,
    heartbeat: Duration,
    last_seq: u64,
}

impl WsLoad {
    async fn open(&self, room: usize) -> anyhow::Result<Peer> {
        let _permit = self.ramp.acquire().await?;
        let peer = timeout(HANDSHAKE, self.join(room)).await.context("join timed out")??;
        self.stats.sockets_opened.fetch_add(1, Ordering::Relaxed);
        Ok(peer)
    }

    async fn join(&self, room: usize) -> anyhow::Result<Peer> {
        let tcp = TcpStream::connect(self.addr).await.context("connect")?;
        tcp.set_nodelay(true)?;
        // tungstenite's defaults reserve 128 KiB to read and buffer 128 KiB of writes per socket; an idle peer
        // needs neither, and the load generator holds thousands.
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(self.url.as_str(), tcp, Some(config))
            .await
            .context("upgrade")?;
        ws.send(Message::text(format!(
            r#"{{"type":"join","room":"soak-{}"}}"#,
            room % self.rooms
        )))
        .await?;
        loop {
            let frame = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => bail!("closed before joined: {}", close_code(f.as_ref())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before joined"),
            };
            let msg: serde_json::Value = serde_json::from_str(&frame)?;
            match msg.get("type").and_then(|t| t.as_str()) {
                Some("joined") => {
                    let ms = msg.get("heartbeatMs").and_then(|h| h.as_u64()).unwrap_or(10_000);
                    let last_seq = msg.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
                    return Ok(Peer {
                        ws,
                        heartbeat: Duration::from_millis(ms.clamp(1000, 60_000)),
                        last_seq,
                    });
                }
                Some("error") => bail!("join refused: {frame}"),
                _ => continue,
            }
        }
    }

    /// Leaves the room (so the session ends at once instead of waiting for its resume grace) and closes.
    async fn close(&self, peer: &mut Peer) {
        let Ok(_permit) = self.teardown.acquire().await else {
            return;
        };
        let _ = timeout(CLOSE, async {
            peer.ws.send(Message::text(r#"{"type":"leave"}"#)).await?;
            peer.ws.close(None).await?;
            // Read until the server's close frame and the end of the stream.
            while peer.ws.next().await.is_some() {}
            anyhow::Ok(())
        })
        .await;
    }
}

fn close_code(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    frame.map_or_else(
        || "no code".to_owned(),
        |f| format!("{} {}", u16::from(f.code), f.reason),
    )
}

/// One of the idle sockets, for the whole run: joined to room `index / 2`, kept until the run stops. A dropped one
/// is counted and replaced after a second.
pub(crate) async fn hold_slot(load: Arc<WsLoad>, index: usize, mut stop: watch::Receiver<bool>) {
    let stats = &load.stats;
    while !*stop.borrow() {
        let mut peer = match load.open(index / 2).await {
            Ok(p) => p,
            Err(e) => {
                stats.note(&stats.socket_failures, "socket", e);
                pause(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        stats.sockets_held.fetch_add(1, Ordering::Relaxed);
        let held = idle(&mut peer, None, stats, &mut stop).await;
        stats.sockets_held.fetch_sub(1, Ordering::Relaxed);
        match held {
            Ok(()) => load.close(&mut peer).await,
            Err(e) => {
                stats.note(&stats.sockets_dropped, "held socket dropped", e);
                pause(&mut stop, Duration::from_secs(1)).await;
            }
        }
    }
}

/// Reads and acknowledges what the server sends, with a `ping` every heartbeat, until the run stops or `until`.
/// Returns an error if the socket fails or the server closes it.
async fn idle(
    peer: &mut Peer,
    until: Option<Instant>,
    stats: &Stats,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let first = peer.heartbeat.mul_f64(rand::thread_rng().gen_range(0.1..=1.0));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + first, peer.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let until = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
    loop {
        tokio::select! {
            _ = stopped(stop) => return Ok(()),
            _ = tokio::time::sleep_until(until) => return Ok(()),
            _ = heartbeat.tick() => {
                peer.ws.send(Message::text(format!(r#"{{"type":"ping","ack":{}}}"#, peer.last_seq))).await?;
                stats.pings.fetch_add(1, Ordering::Relaxed);
            }
            frame = peer.ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    // Stream messages carry consecutive seqs; `pong` and `resumed` carry the newest one, which is not
                    // ours to acknowledge until its message is read.
                    let msg: serde_json::Value = serde_json::from_str(&t)?;
                    let kind = msg.get("type").and_then(|t| t.as_str()).unwrap_or_default();
                    if kind != "pong" && kind != "resumed" {
                        if let Some(seq) = msg.get("seq").and_then(|s| s.as_u64()) {
                            peer.last_seq = peer.last_seq.max(seq);
                            stats.messages.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Pings are answered by tungstenite on the next read or write.
                Some(Ok(Message::Close(f))) => bail!("closed by the server: {}", close_code(f.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended"),
            }
        }
    }
}

/// Opens `rate` sockets per second, each joining one of the idle rooms for `hold` and then leaving, until the run
/// stops; waits for the last ones to close.
pub(crate) async fn churn(load: Arc<WsLoad>, rate: u32, hold: Duration, mut stop: watch::Receiver<bool>) {
    if rate == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let cap = (rate as usize * hold.as_secs().max(1) as usize * 2).max(16);
    let mut open = JoinSet::new();
    let mut next_room = 0usize;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = tick.tick() => {
                while open.try_join_next().is_some() {}
                if open.len() >= cap {
                    load.stats.churn_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                next_room = (next_room + 1) % load.rooms;
                open.spawn(churn_one(load.clone(), next_room, hold, stop.clone()));
            }
        }
    }
    while open.join_next().await.is_some() {}
}

async fn churn_one(load: Arc<WsLoad>, room: usize, hold: Duration, mut stop: watch::Receiver<bool>) {
    let stats = &load.stats;
    let mut peer = match load.open(room).await {
        Ok(p) => p,
        Err(e) => return stats.note(&stats.socket_failures, "churn socket", e),
    };
    stats.churn_sockets_held.fetch_add(1, Ordering::Relaxed);
    let held = idle(&mut peer, Some(Instant::now() + hold), stats, &mut stop).await;
    stats.churn_sockets_held.fetch_sub(1, Ordering::Relaxed);
    match held {
        Ok(()) => load.close(&mut peer).await,
        Err(e) => stats.note(&stats.sockets_dropped, "churn socket dropped", e),
    }
}
