//! `traverse-soak`: the load of a busy day held for minutes, to see whether the server's memory and descriptors stay
//! flat and come back when the load ends (issue 7's soak proof; driven by `bench/soak.sh`).
//!
//! For `--duration` seconds it holds, against one server:
//! - `--allocations` TURN allocations over UDP, each with a ChannelBind to the echo peer, refreshed every
//!   `--refresh` s (so they never reach their lifetime) and re-bound every `--rebind` s (permissions last 300 s);
//! - `--sockets` signaling WebSockets joined two to a room, idle but answering: a `ping` acknowledging what they read
//!   every `heartbeatMs` (the server closes a silent socket with 4200), WebSocket Pongs to the server's Pings;
//! - churn: `--churn-allocations` allocations and `--churn-sockets` sockets opened per second, each held
//!   `--churn-hold` s and closed properly (Refresh with LIFETIME 0; `leave` and a close frame) — the sockets join the
//!   idle rooms, so the idle peers receive `peer-joined`/`peer-left` and acknowledge them;
//! - a relay stream: `--stream-rate` ChannelData packets per second over the first `--stream-allocations`
//!   allocations, echoed by the peer back through the relay.
//!
//! Every `--interval` s it samples the server's RSS, open descriptors and CPU from `/proc/<pid>`, through the load and
//! for `--after` s once everything is closed, prints one table row per sample and at the end a verdict: growth
//! from the end of the warm-up to the end of the load, and the memory after the load against before it. Everything
//! is bounded: the run ends after `duration + after` s whatever happens, and a lost allocation or socket is counted
//! and replaced after a second, not retried in a loop.

mod allocations;
mod sampler;
mod sockets;

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use traverse_loadgen::turn::Credentials;

#[derive(Parser, Debug)]
#[command(about = "Soak load for Traverse: allocations, idle WebSockets, churn and a relay stream; samples the server")]
struct Args {
    /// PID of the server to sample (/proc/PID).
    #[arg(long)]
    pid: u32,
    /// TURN server address (UDP).
    #[arg(long)]
    turn: SocketAddr,
    /// Echo peer address, as the relay sees it.
    #[arg(long)]
    peer: SocketAddr,
    /// Signaling address (plain HTTP); the socket is ws://ADDR/ws.
    #[arg(long)]
    ws: SocketAddr,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// Seconds of load (at most 3600).
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds from the start counted as warm-up; growth is measured from its end to the end of the load.
    #[arg(long, default_value_t = 120)]
    warmup: u64,
    /// Seconds of sampling after the load is closed (at most 600).
    #[arg(long, default_value_t = 60)]
    after: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Allocations held (at most 20 000).
    #[arg(long, default_value_t = 5000)]
    allocations: usize,
    /// Idle signaling sockets held (at most 10 000).
    #[arg(long, default_value_t = 2000)]
    sockets: usize,
    /// Allocations opened (and later deleted) per second by the churn.
    #[arg(long, default_value_t = 20)]
    churn_allocations: u32,
    /// Sockets opened (and later closed) per second by the churn.
    #[arg(long, default_value_t = 20)]
    churn_sockets: u32,
    /// Seconds each churned allocation or socket is held.
    #[arg(long, default_value_t = 10)]
    churn_hold: u64,
    /// ChannelData packets per second in the relay stream, 0 for none.
    #[arg(long, default_value_t = 2000)]
    stream_rate: u32,
    /// Allocations that carry the stream (the first ones).
    #[arg(long, default_value_t = 20)]
    stream_allocations: usize,
    /// Payload bytes per stream packet.
    #[arg(long, default_value_t = 100)]
    stream_size: usize,
    /// Seconds between Refreshes of one allocation (below the server's lifetime).
    #[arg(long, default_value_t = 60)]
    refresh: u64,
    /// Seconds between ChannelBinds of one allocation (below the 300 s a permission lasts).
    #[arg(long, default_value_t = 240)]
    rebind: u64,
    /// Allocations or sockets being opened at once during the ramp.
    #[arg(long, default_value_t = 32)]
    ramp_concurrency: usize,
}

/// Counters shared by every task; the sampler reads them.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub allocations_held: AtomicUsize,
    pub churn_allocations_held: AtomicUsize,
    pub allocations_opened: AtomicU64,
    /// An Allocate or its first ChannelBind failed.
    pub allocation_failures: AtomicU64,
    /// A held allocation's Refresh or ChannelBind failed, or its socket reported an error: it was replaced.
    pub allocations_lost: AtomicU64,
    /// The Refresh with LIFETIME 0 that ends an allocation went unanswered or was refused.
    pub delete_failures: AtomicU64,
    pub sockets_held: AtomicUsize,
    pub churn_sockets_held: AtomicUsize,
    pub sockets_opened: AtomicU64,
    /// A connect, upgrade or join failed.
    pub socket_failures: AtomicU64,
    /// A held socket was closed by the server or failed: it was replaced.
    pub sockets_dropped: AtomicU64,
    /// Churn ticks skipped because too many churned items were still open.
    pub churn_skipped: AtomicU64,
    /// Refreshes and ChannelBinds of held allocations (after the first bind), and requests sent again with a fresh
    /// nonce.
    pub refreshes: AtomicU64,
    pub rebinds: AtomicU64,
    pub stale_nonces: AtomicU64,
    /// Heartbeat `ping`s sent, and stream messages (`peer-joined`, `peer-left`, …) read by the sockets.
    pub pings: AtomicU64,
    pub messages: AtomicU64,
    pub echoes_sent: AtomicU64,
    pub echoes_received: AtomicU64,
    errors_printed: AtomicU64,
}

/// At most this many error messages go to stderr; the rest are only counted.
const ERRORS_PRINTED: u64 = 20;

impl Stats {
    pub fn note(&self, counter: &AtomicU64, what: &str, error: impl Display) {
        counter.fetch_add(1, Ordering::Relaxed);
        if self.errors_printed.fetch_add(1, Ordering::Relaxed) < ERRORS_PRINTED {
            eprintln!("soak: {what}: {error:#}");
        }
    }

    pub fn failures(&self) -> u64 {
        [
            &self.allocation_failures,
            &self.allocations_lost,
            &self.delete_failures,
            &self.socket_failures,
            &self.sockets_dropped,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Resolves once the run is told to stop (at once if it already was).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps `d`, or less if the run stops; true if it stopped.
pub(crate) async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = stopped(stop) => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.duration > 3600 || args.after > 600 || args.allocations > 20_000 || args.sockets > 10_000 {
        bail!("bounds: --duration ≤ 3600, --after ≤ 600, --allocations ≤ 20000, --sockets ≤ 10000");
    }
    if args.interval == 0 || args.refresh == 0 || args.rebind == 0 || !(8..=1400).contains(&args.stream_size) {
        bail!("--interval, --refresh and --rebind must be positive; --stream-size 8..=1400");
    }
    if args.churn_allocations > 1000 || args.churn_sockets > 1000 || args.stream_rate > 100_000 {
        bail!("bounds: churn ≤ 1000/s each, --stream-rate ≤ 100000");
    }
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut table = sampler::Table::new(args.pid, args.duration, args.warmup, args.after);
    let start = Instant::now();
    table.sample(0, sampler::Phase::Before, &stats)?;

    let ramp = Arc::new(Semaphore::new(args.ramp_concurrency.max(1)));
    let turn = Arc::new(allocations::TurnLoad {
        server: args.turn,
        peer: args.peer,
        credentials: Credentials {
            user: args.user.clone(),
            password: args.password.clone(),
        },
        refresh: Duration::from_secs(args.refresh),
        rebind: Duration::from_secs(args.rebind),
        stream_size: args.stream_size,
        ramp: ramp.clone(),
        // Deleting every allocation at once would drop some Refreshes in the socket buffers; 64 at a time is quick.
        teardown: Semaphore::new(64),
        stats: stats.clone(),
    });
    let ws = Arc::new(sockets::WsLoad {
        addr: args.ws,
        url: format!("ws://{}/ws", args.ws),
        // Two idle peers a room; at least 100 rooms, so the churn never fills one when there are few idle sockets.
        rooms: (args.sockets / 2).max(100),
        ramp,
        teardown: Semaphore::new(64),
        stats: stats.clone(),
    });

    let mut tasks = Vec::new();
    let streams = args.stream_allocations.min(args.allocations);
    let stream_period = (args.stream_rate > 0 && streams > 0)
        .then(|| Duration::from_secs_f64(streams as f64 / f64::from(args.stream_rate)));
    for i in 0..args.allocations {
        let period = if i < streams { stream_period } else { None };
        tasks.push(tokio::spawn(allocations::hold_slot(
            turn.clone(),
            period,
            stop_rx.clone(),
        )));
    }
    for i in 0..args.sockets {
        tasks.push(tokio::spawn(sockets::hold_slot(ws.clone(), i, stop_rx.clone())));
    }
    let hold = Duration::from_secs(args.churn_hold);
    tasks.push(tokio::spawn(allocations::churn(
        turn.clone(),
        args.churn_allocations,
        hold,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(sockets::churn(
        ws.clone(),
        args.churn_sockets,
        hold,
        stop_rx.clone(),
    )));

    // Samples on a fixed grid from the start; the load is closed right after the sample at `duration`.
    let interval = Duration::from_secs(args.interval);
    let mut tick = tokio::time::interval_at(start + interval, interval);
    let mut ramped = false;
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64().round() as u64;
        let phase = if t > args.duration {
            sampler::Phase::After
        } else {
            ramped = ramped
                || (stats.allocations_held.load(Ordering::Relaxed) >= args.allocations
                    && stats.sockets_held.load(Ordering::Relaxed) >= args.sockets);
            match (ramped, t <= args.warmup) {
                (false, _) => sampler::Phase::Ramp,
                (true, true) => sampler::Phase::WarmUp,
                (true, false) => sampler::Phase::Load,
            }
        };
        table.sample(t, phase, &stats)?;
        if t >= args.duration && !*stop_tx.borrow() {
            let _ = stop_tx.send(true);
        }
        if t >= args.duration + args.after {
            break;
        }
    }
    // Everything was told to close `after` seconds ago; whatever has not finished by now is cut off.
    let unfinished = tasks.iter().filter(|t| !t.is_finished()).count();
    for t in &tasks {
        t.abort();
    }
    if unfinished > 0 {
        eprintln!("soak: {unfinished} tasks had not finished closing when the run ended");
    }
    table.verdict(&stats);
    Ok(())
}
