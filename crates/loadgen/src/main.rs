//! A TURN relay load generator, used by `bench/relay.sh` to drive Traverse and coturn with the same load.
//!
//! It opens N allocations over UDP (long-term credentials, one ChannelBind each to the echo peer), then sends
//! ChannelData round-robin over all of them at a fixed total rate for a fixed time, and counts the echoes that come
//! back through the relay. Every run is bounded in time and packet count. Output is one JSON object.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use stun::{ChannelData, ChannelNumber};
use traverse_loadgen::turn::{Credentials, Session, Transport};

#[derive(Parser, Debug)]
#[command(about = "TURN relay load generator (bounded in time and count)")]
struct Args {
    /// TURN server address.
    #[arg(long)]
    server: SocketAddr,
    /// Echo peer address (as the relay sees it).
    #[arg(long)]
    peer: SocketAddr,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// Allocations to open.
    #[arg(long, default_value_t = 100)]
    allocations: usize,
    /// Total ChannelData packets per second over all allocations; 0 only opens the allocations.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of traffic (at most 300).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Payload bytes per packet.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// After opening the allocations, print a READY line and keep them (refreshing nothing) for this many seconds.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Send only: the echoes are counted (and dropped) before they reach this process, as bench/relay-xdp.sh does
    /// in XDP, so that receiving costs every system measured the same and almost nothing. `received` is then 0.
    #[arg(long)]
    no_receive: bool,
    /// Microseconds between sending rounds, each sending the packets due by then: 1000 sends each millisecond's
    /// packets in one burst; smaller values spread them out (smooth arrivals, as from many independent clients).
    #[arg(long, default_value_t = 1000)]
    pace_us: u64,
    /// Threads sharing the traffic run (at most 16), each with its own share of the allocations and of the rate, its
    /// own runtime and its own sockets: one thread cannot send and receive more than ~150 000 packets/s, which is
    /// less than two relay workers carry (`bench/relay.sh`, `SERVERS="traverse traverse-2w"` with `LOAD_CPUS`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Packets each allocation sends back to back before the next one's turn, as a video frame's packets leave a
    /// browser together (1: round-robin, one packet per allocation).
    #[arg(long, default_value_t = 1)]
    train: u64,
    /// Local addresses the client sockets bind to, comma-separated, allocation i on the (i mod n)-th: one address
    /// has ~28 000 ephemeral ports, so more allocations than that need several (none: the unspecified address).
    #[arg(long, value_delimiter = ',')]
    local_ips: Vec<IpAddr>,
    /// How the allocations are made and held: `tcp` and `tls` are one TURN-over-TCP (or TLS) connection per
    /// allocation, for the memory runs (`--rate 0`); traffic runs send over UDP.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
}

struct Client {
    session: Session,
    channel: ChannelNumber,
}

/// The paced sender's state between rounds.
struct Sender {
    clients: Arc<Vec<Client>>,
    packet: Vec<u8>,
    total: u64,
    rate: u64,
    start: Instant,
    sent: u64,
    send_errors: u64,
    next: usize,
    /// Packets per allocation's turn (`--train`).
    train: u64,
}

impl Sender {
    fn done(&self) -> bool {
        self.sent >= self.total
    }

    /// Sends the packets due by now, each stamped with the round's time (microseconds since the start): one clock
    /// read per round, not per packet, so that the generator spends its core on sending.
    fn round(&mut self) {
        let elapsed = self.start.elapsed();
        let due = ((elapsed.as_secs_f64() * self.rate as f64) as u64).min(self.total);
        let size = self.packet.len().saturating_sub(4) as u16;
        let stamp = (elapsed.as_micros() as u64).to_be_bytes();
        while self.sent < due {
            let Some(client) = self.clients.get(self.next) else {
                break;
            };
            if (self.sent + 1).is_multiple_of(self.train) {
                self.next = (self.next + 1) % self.clients.len();
            }
            if let Some(header) = self.packet.get_mut(..4).and_then(|h| <&mut [u8; 4]>::try_from(h).ok()) {
                ChannelData::write_header(header, client.channel, size);
            }
            if let Some(slot) = self.packet.get_mut(4..12) {
                slot.copy_from_slice(&stamp);
            }
            if client.session.try_send(&self.packet).is_err() {
                self.send_errors += 1;
            }
            self.sent += 1;
        }
    }
}

/// What one thread's receivers count: each thread has its own, summed at the end, so that no cache line is shared
/// between the threads per echo.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    rtt_sum_us: AtomicU64,
    rtt_max_us: AtomicU64,
}

/// One thread's traffic run, as it ends.
struct Share {
    allocations: usize,
    setup_secs: f64,
    sent: u64,
    send_errors: u64,
    send_secs: f64,
    received: u64,
    rtt_sum_us: u64,
    rtt_max_us: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.duration > 300 || args.hold > 600 {
        bail!("--duration is capped at 300 s and --hold at 600 s");
    }
    if args.size < 8 || args.size > 1400 {
        bail!("--size must be 8..=1400");
    }
    if args.train == 0 || args.train > 64 {
        anyhow::bail!("--train is 1 to 64");
    }
    if args.threads == 0 || args.threads > 16 {
        bail!("--threads must be 1..=16");
    }
    if args.threads > args.allocations.max(1) {
        bail!("--threads must not exceed --allocations (a thread without allocations would send nothing)");
    }
    if args.transport != Transport::Udp && args.rate > 0 {
        bail!("--transport tcp and tls are for holding allocations (--rate 0): traffic runs send over UDP");
    }
    if args.threads > 1 && (args.hold > 0 || args.rate == 0) {
        bail!("--threads is for traffic runs (--rate above 0, no --hold)");
    }
    let args = Arc::new(args);
    // Every thread opens its allocations, then all start sending at once.
    let ready = Arc::new(Barrier::new(args.threads));
    let spawned: Vec<_> = (1..args.threads)
        .map(|t| {
            let (args, ready) = (args.clone(), ready.clone());
            std::thread::spawn(move || run_share(&args, t, &ready))
        })
        .collect();
    let mut shares = vec![run_share(&args, 0, &ready)?];
    for thread in spawned {
        shares.push(thread.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??);
    }
    let allocations: usize = shares.iter().map(|s| s.allocations).sum();
    let setup_secs = shares.iter().map(|s| s.setup_secs).fold(0.0, f64::max);
    if args.rate == 0 {
        println!(
            "{}",
            serde_json::json!({ "allocations": allocations, "setup_secs": setup_secs })
        );
        return Ok(());
    }
    let sent: u64 = shares.iter().map(|s| s.sent).sum();
    let send_errors: u64 = shares.iter().map(|s| s.send_errors).sum();
    let send_secs = shares.iter().map(|s| s.send_secs).fold(0.0, f64::max);
    let received: u64 = shares.iter().map(|s| s.received).sum();
    let rtt_avg_us = shares
        .iter()
        .map(|s| s.rtt_sum_us)
        .sum::<u64>()
        .checked_div(received)
        .unwrap_or(0);
    let loss = if sent == 0 {
        0.0
    } else {
        100.0 * (sent.saturating_sub(received)) as f64 / sent as f64
    };
    println!(
        "{}",
        serde_json::json!({
            "allocations": allocations,
            "threads": args.threads,
            "train": args.train,
            "setup_secs": setup_secs,
            "size": args.size,
            "sent": sent,
            "send_errors": send_errors,
            "received": received,
            "loss_pct": loss,
            "send_secs": send_secs,
            "sent_pps": sent as f64 / send_secs,
            "received_pps": received as f64 / send_secs,
            "rtt_avg_us": rtt_avg_us,
            "rtt_max_us": shares.iter().map(|s| s.rtt_max_us).max().unwrap_or(0),
        })
    );
    Ok(())
}

/// Thread `index` of `args.threads`: a runtime of its own, the allocations `index`, `index + threads`, … and that
/// share of the rate.
fn run_share(args: &Args, index: usize, ready: &Barrier) -> anyhow::Result<Share> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let opened = runtime.block_on(open_share(args, index));
    // Wait for the others even after a failure, so that no thread waits for ever; then report it.
    ready.wait();
    let (clients, setup_secs) = opened?;
    let allocations = clients.len();
    if args.hold > 0 {
        println!("READY {allocations} allocations in {setup_secs:.2} s");
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    let rate = rate_share(args.rate, args.threads, index);
    let mut share = Share {
        allocations,
        setup_secs,
        sent: 0,
        send_errors: 0,
        send_secs: 0.0,
        received: 0,
        rtt_sum_us: 0,
        rtt_max_us: 0,
    };
    if args.rate > 0 && !clients.is_empty() {
        runtime.block_on(traffic(args, clients, rate, &mut share))?;
    }
    Ok(share)
}

/// Thread `index`'s packets per second: an equal part of `rate`, the remainder to thread 0.
fn rate_share(rate: u64, threads: usize, index: usize) -> u64 {
    let threads = threads.max(1) as u64;
    rate / threads + u64::from(index == 0) * (rate % threads)
}

/// The allocations thread `index` opens and sends over: every `threads`-th, from `index`.
fn allocation_share(allocations: usize, threads: usize, index: usize) -> impl Iterator<Item = usize> {
    (index..allocations).step_by(threads.max(1))
}

async fn open_share(args: &Args, index: usize) -> anyhow::Result<(Vec<Client>, f64)> {
    let setup_start = Instant::now();
    let channel = ChannelNumber::new(0x4000).context("channel")?;
    let credentials = Credentials {
        user: args.user.clone(),
        password: args.password.clone(),
    };
    let mut clients = Vec::with_capacity(args.allocations / args.threads + 1);
    for i in allocation_share(args.allocations, args.threads, index) {
        let local = args.local_ips.get(i % args.local_ips.len().max(1)).copied();
        let client = open(args, local, &credentials, channel)
            .await
            .with_context(|| format!("allocation {i}"))?;
        clients.push(client);
    }
    Ok((clients, setup_start.elapsed().as_secs_f64()))
}

/// Sends `rate` packets/s round-robin over `clients` for `args.duration` s and counts their echoes; what was sent and
/// received goes into `share`.
async fn traffic(args: &Args, clients: Vec<Client>, rate: u64, share: &mut Share) -> anyhow::Result<()> {
    let clients: Arc<Vec<Client>> = Arc::new(clients);
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let mut receivers = Vec::new();
    let receiving = if args.no_receive { 0 } else { clients.len() };
    for index in 0..receiving {
        let (clients, counters) = (clients.clone(), counters.clone());
        receivers.push(tokio::spawn(async move {
            let Some(client) = clients.get(index) else { return };
            let mut buf = vec![0u8; 2048];
            while let Ok(n) = client.session.recv(&mut buf).await {
                let Some(packet) = buf.get(..n) else { continue };
                let Ok(data) = ChannelData::parse(packet) else { continue };
                let Some(stamp) = data.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                    continue;
                };
                let sent_us = u64::from_be_bytes(stamp);
                let now_us = start.elapsed().as_micros() as u64;
                let rtt = now_us.saturating_sub(sent_us);
                counters.received.fetch_add(1, Ordering::Relaxed);
                counters.rtt_sum_us.fetch_add(rtt, Ordering::Relaxed);
                counters.rtt_max_us.fetch_max(rtt, Ordering::Relaxed);
            }
        }));
    }

    // Paced sender: each round sends the packets due by then, round-robin over the allocations.
    let mut sender = Sender {
        clients: clients.clone(),
        packet: vec![0u8; 4 + args.size],
        total: rate * args.duration,
        rate,
        start,
        sent: 0,
        send_errors: 0,
        next: 0,
        train: args.train,
    };
    if args.pace_us >= 1000 {
        let mut tick = tokio::time::interval(Duration::from_micros(args.pace_us));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !sender.done() {
            tick.tick().await;
            sender.round();
        }
    } else {
        // The runtime's timer ticks in milliseconds: finer rounds come from a thread of their own sleeping until
        // each round's deadline (the receivers keep the runtime's thread). A round that starts late does not sleep,
        // so a generator near its own ceiling never idles while packets are due.
        let pace = Duration::from_micros(args.pace_us.max(1));
        sender = tokio::task::spawn_blocking(move || {
            let mut deadline = sender.start;
            while !sender.done() {
                deadline += pace;
                let now = Instant::now();
                if deadline > now {
                    std::thread::sleep(deadline - now);
                } else {
                    deadline = now;
                }
                sender.round();
            }
            sender
        })
        .await?;
    }
    let send_secs = start.elapsed().as_secs_f64();
    if !args.no_receive {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for r in &receivers {
        r.abort();
    }
    share.sent = sender.sent;
    share.send_errors = sender.send_errors;
    share.send_secs = send_secs;
    share.received = counters.received.load(Ordering::Relaxed);
    share.rtt_sum_us = counters.rtt_sum_us.load(Ordering::Relaxed);
    share.rtt_max_us = counters.rtt_max_us.load(Ordering::Relaxed);
    Ok(())
}

/// Allocate, then ChannelBind to the peer.
async fn open(
    args: &Args,
    local: Option<IpAddr>,
    credentials: &Credentials,
    channel: ChannelNumber,
) -> anyhow::Result<Client> {
    let mut session = Session::allocate_from(local, args.transport, args.server, credentials, None).await?;
    session.channel_bind(channel, args.peer, &mut |_| {}).await?;
    Ok(Client { session, channel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threads_shares_add_up_to_the_whole_run() {
        for (rate, allocations, threads) in [(150_000, 100, 3), (40_000, 100, 1), (7, 5, 4), (10, 3, 3)] {
            let rates: u64 = (0..threads).map(|t| rate_share(rate, threads, t)).sum();
            assert_eq!(rates, rate, "rate {rate} over {threads} threads");
            let mut opened: Vec<usize> = (0..threads)
                .flat_map(|t| allocation_share(allocations, threads, t))
                .collect();
            opened.sort_unstable();
            assert_eq!(opened, (0..allocations).collect::<Vec<_>>(), "each allocation once");
        }
        assert_eq!(rate_share(150_000, 4, 1), 37_500);
        assert_eq!(rate_share(10, 3, 0), 4);
    }
}
