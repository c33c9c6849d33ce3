//! `traverse-scale`, driven by `bench/scale.sh`: the state machines of one node holding `--count` idle objects.
//!
//! Issue 14 asks for 100 000 allocations and 100 000 WebSockets on one node. A process here may hold 20 000
//! descriptors, so the real server stops short of that (`bench/relay.sh` and `bench/signaling/run.sh` measure it at
//! 19 000). What the descriptor limit does not block is the part that could grow worse than linearly with the count:
//! the tables, the deadline queues and the timers of the sans-IO state machines. This program drives the very
//! `turn::Server` and `signal::MemoryHub` a worker drives, with no socket at all (nothing is sent anywhere), and
//! measures them at any count:
//!
//! - `turn`: `--count` UDP allocations, each with a permission and a channel, set up through the TURN client
//!   (401 challenge, long-term credentials). Then `--idle` simulated seconds in which each client refreshes as
//!   libwebrtc does, 60 s before each lifetime ends (allocation 600 s, permission 300 s, channel 600 s), spread
//!   evenly, and the server's timer runs once a second as a worker's does.
//! - `signal`: `--count` sockets joined two to a room, each with its `iceServers` credential. Then `--idle` simulated
//!   seconds in which each socket sends the SDK's heartbeat (`ping` with `ack`) every 10 s, spread evenly, and the
//!   hub's timers run when it asks (a ping it sends is answered at once, as a browser's pong would be).
//!
//! Prints one JSON line: bytes of resident memory per object (the process's growth over the set-up), the server's
//! time per set-up, and per simulated idle second its time in timers and in handling the clients' messages. Every
//! call into the state machine is timed (`Instant`, one thread), the client side and the bookkeeping are not.
//! Fails if any object was refused, expired or closed: at the end every allocation, permission and channel (or
//! every socket and session) must be there.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use clap::{Parser, Subcommand};
use rand::SeedableRng;
use serde_json::json;
use signal::{ConnId, HubStats, Limits, MemoryHub, Now, Output, SignalHub};
use stun::ChannelNumber;
use turn::client::{Client, ClientConfig, Event as ClientEvent};
use turn::{Authenticator, ClientAction, Config, Event, FiveTuple, Quotas, RelayBinding, Server, Transport};

#[derive(Parser, Debug)]
#[command(about = "Idle objects in Traverse's state machines at any count (bench/scale.sh)")]
struct Args {
    #[command(subcommand)]
    what: What,
    /// Objects to hold.
    #[arg(long, default_value_t = 100_000, global = true)]
    count: u32,
    /// Simulated seconds of idling after the set-up.
    #[arg(long, default_value_t = 1200, global = true)]
    idle: u32,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum What {
    /// TURN allocations, each with a permission and a channel.
    Turn,
    /// WebSocket sessions, two to a room.
    Signal,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.count > 0, "--count must be at least 1");
    let report = match args.what {
        What::Turn => turn_run(args.count, args.idle)?,
        What::Signal => signal_run(args.count, args.idle)?,
    };
    println!("{report}");
    Ok(())
}

/// Time spent in the state machine, summed call by call.
#[derive(Default)]
struct Clock(Duration);

impl Clock {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0 += start.elapsed();
        out
    }

    fn micros(&self) -> f64 {
        self.0.as_secs_f64() * 1e6
    }
}

/// One run's figures: `grown` bytes of RSS over the set-up of `count` objects, and over `idle` simulated seconds the
/// `sent` client messages and the time in timers and in those messages.
fn report(
    what: &str,
    count: u32,
    grown: u64,
    setup: &Clock,
    (idle, sent): (u32, u64),
    timers: &Clock,
    messages: &Clock,
) -> serde_json::Value {
    let per_second = f64::from(idle.max(1));
    json!({
        "what": what,
        "count": count,
        "bytes_per_object": grown as f64 / f64::from(count),
        "setup_us_per_object": setup.micros() / f64::from(count),
        "idle_seconds": idle,
        "messages_per_second": sent as f64 / per_second,
        "timer_us_per_second": timers.micros() / per_second,
        "messages_us_per_second": messages.micros() / per_second,
        "us_per_message": if sent == 0 { 0.0 } else { messages.micros() / sent as f64 },
    })
}

/// This process's resident memory, from `/proc/self/status`.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The objects that fall due in second `second` of a schedule repeating every `period` seconds, each object's
/// phase spread evenly over the period: object `i` is due when `second mod period == i * period / count`.
fn due(second: u32, period: u32, count: u32) -> std::ops::Range<u32> {
    let slot = u64::from(second % period);
    let (count, period) = (u64::from(count), u64::from(period));
    // The first i with i * period / count >= slot, and the first with it >= slot + 1.
    let first = |s: u64| u32::try_from((s * count).div_ceil(period)).unwrap_or(u32::MAX);
    first(slot)..first(slot + 1)
}

// ---------------------------------------------------------------------------------------------------------------
// TURN

/// Allocations per client IP: one TURN client per IP keeps that IP's nonce, as a browser keeps its own.
const PER_CLIENT_IP: u32 = 1000;
/// Relay ports per relay IP, as `relay.addresses` spreads allocations over several relay addresses.
const PER_RELAY_IP: u32 = 50_000;
const ALLOCATION_REFRESH: u32 = 540;
const PERMISSION_REFRESH: u32 = 240;
const CHANNEL_REFRESH: u32 = 540;

/// Allocation `i`'s client (198.51.100.0/24 and on, one IP per thousand) and relay (192.0.2.0/24 and on).
fn turn_addresses(i: u32) -> (FiveTuple, SocketAddr, SocketAddr) {
    let client_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 1)) + i / PER_CLIENT_IP);
    let client = SocketAddr::new(IpAddr::V4(client_ip), 20_000 + (i % PER_CLIENT_IP) as u16);
    let relay_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 0, 2, 1)) + i / PER_RELAY_IP);
    let relay = SocketAddr::new(IpAddr::V4(relay_ip), 10_000 + (i % PER_RELAY_IP) as u16);
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1)), 40_000);
    let five_tuple = FiveTuple {
        client,
        server: SocketAddr::from(([192, 0, 2, 254], 3478)),
        transport: Transport::Udp,
    };
    (five_tuple, relay, peer)
}

/// Delivers the client's requests to the server until it has its answer (a challenge is answered on the way), and
/// returns whether the request succeeded. Only the server's calls are timed.
fn turn_exchange(
    server: &mut Server,
    client: &mut Client,
    five_tuple: FiveTuple,
    relay: SocketAddr,
    now: Instant,
    clock: &mut Clock,
) -> anyhow::Result<bool> {
    let mut out = [0u8; 1500];
    // A challenge and its answer, at most: a bounded loop.
    for _ in 0..8 {
        while let Some(packet) = client.poll_transmit() {
            match clock.time(|| server.handle_client(now, five_tuple, &packet, &mut out)) {
                ClientAction::Reply(len) => client.handle_input(now, out.get(..len).context("reply length")?),
                ClientAction::BindRelay(_) => {
                    let binding = RelayBinding {
                        relays: [Some(relay), None],
                        reserved: None,
                    };
                    let (_, answer) =
                        clock.time(|| server.handle_relay_bound(now, five_tuple, Some(binding), &mut out));
                    if let Some(len) = answer {
                        client.handle_input(now, out.get(..len).context("answer length")?);
                    }
                }
                other => bail!("unexpected action {other:?} for a request from {}", five_tuple.client),
            }
        }
        if let Some(ClientEvent::Response { outcome, .. }) = client.poll_event() {
            return Ok(outcome.is_success());
        }
    }
    bail!("no answer for {}", five_tuple.client)
}

fn turn_run(count: u32, idle: u32) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let unix = unix_now();
    let auth = Authenticator::new(
        "scale.example".into(),
        &[("user".into(), "pw".into())],
        Vec::new(),
        [7; 32],
        600,
    );
    let quotas = Quotas::new(count as usize, 0);
    let mut server = Server::new(
        Arc::new(Config::default()),
        Arc::new(auth),
        Arc::new(quotas),
        rand::rngs::StdRng::seed_from_u64(1),
        (start, unix),
    );
    let mut clients: Vec<Client> = (0..count.div_ceil(PER_CLIENT_IP))
        .map(|_| Client::new(ClientConfig::udp("user", "pw")))
        .collect();
    let channel = ChannelNumber::new(ChannelNumber::MIN).context("channel number")?;
    let rss_before = rss_bytes()?;

    // Set-up: Allocate, CreatePermission, ChannelBind for each, as a browser's first candidate pair does.
    let mut setup = Clock::default();
    for i in 0..count {
        let (five_tuple, relay, peer) = turn_addresses(i);
        let client = clients.get_mut((i / PER_CLIENT_IP) as usize).context("client")?;
        client.allocate(start, |_| Ok(()))?;
        ensure!(
            turn_exchange(&mut server, client, five_tuple, relay, start, &mut setup)?,
            "allocation {i} refused"
        );
        client.create_permission(start, &[peer])?;
        ensure!(
            turn_exchange(&mut server, client, five_tuple, relay, start, &mut setup)?,
            "permission {i} refused"
        );
        client.channel_bind(start, channel, peer)?;
        ensure!(
            turn_exchange(&mut server, client, five_tuple, relay, start, &mut setup)?,
            "channel {i} refused"
        );
    }
    let rss_after = rss_bytes()?;
    let stats = server.stats();
    ensure!(
        stats.allocations == count as usize,
        "{} allocations of {count}",
        stats.allocations
    );

    // Idle: the clients' refreshes and the server's timer, one simulated second at a time.
    let (mut timers, mut refreshes) = (Clock::default(), Clock::default());
    let mut closed = 0u64;
    let mut sent = 0u64;
    for second in 1..=idle {
        let now = start + Duration::from_secs(u64::from(second));
        for (period, kind) in [(ALLOCATION_REFRESH, 0), (PERMISSION_REFRESH, 1), (CHANNEL_REFRESH, 2)] {
            for i in due(second, period, count) {
                let (five_tuple, relay, peer) = turn_addresses(i);
                let client = clients.get_mut((i / PER_CLIENT_IP) as usize).context("client")?;
                match kind {
                    0 => client.refresh(now, 600).map(drop)?,
                    1 => client.create_permission(now, &[peer]).map(drop)?,
                    _ => client.channel_bind(now, channel, peer).map(drop)?,
                }
                sent += 1;
                let ok = turn_exchange(&mut server, client, five_tuple, relay, now, &mut refreshes)?;
                ensure!(ok, "refresh {kind} of {i} refused at {second} s");
            }
        }
        timers.time(|| server.handle_timeout(now));
        while let Some(event) = server.poll_event() {
            if matches!(event, Event::AllocationClosed(_)) {
                closed += 1;
            }
        }
    }
    let stats = server.stats();
    ensure!(closed == 0, "{closed} allocations closed while idle");
    ensure!(
        stats.allocations == count as usize
            && stats.permissions == u64::from(count)
            && stats.channels == u64::from(count),
        "after idling: {} allocations, {} permissions, {} channels of {count}",
        stats.allocations,
        stats.permissions,
        stats.channels
    );
    Ok(report(
        "turn",
        count,
        rss_after.saturating_sub(rss_before),
        &setup,
        (idle, sent),
        &timers,
        &refreshes,
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Signaling

/// The SDK's heartbeat interval (the server's `heartbeat_interval`, sent to it in `joined`), in 100 ms steps.
const HEARTBEAT_STEPS: u32 = 100;
const STEP: Duration = Duration::from_millis(100);

/// Socket `i`'s address: one IPv4 address each from 198.18.0.0/15 (131 072), as many browsers are.
fn signal_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i))
}

/// Takes the hub's output: the last `seq` each socket was sent (for its `ack`), pings answered as the browser's pong
/// would be (counted), and any close (an error here).
fn drain(hub: &mut MemoryHub, last_seq: &mut [u64], pongs: &mut Vec<ConnId>) -> anyhow::Result<()> {
    while let Some(output) = hub.poll_output() {
        match output {
            Output::Send { conn, text } => {
                // A frame starts `{"seq":N,`; frames outside the stream (a pong) start otherwise.
                let seq = text
                    .strip_prefix(b"{\"seq\":")
                    .and_then(|rest| rest.split(|b| *b == b',').next())
                    .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<u64>().ok());
                if let (Some(seq), Some(slot)) = (seq, last_seq.get_mut(conn.get() as usize)) {
                    *slot = (*slot).max(seq);
                }
            }
            Output::Ping { conn } => pongs.push(conn),
            Output::Close { conn, code, reason } => bail!("socket {conn} closed: {code:?} {reason}"),
            Output::Outcome(_) | Output::Session(_) => {}
        }
    }
    Ok(())
}

fn signal_run(count: u32, idle: u32) -> anyhow::Result<serde_json::Value> {
    ensure!(
        count <= 1 << 17,
        "at most 131 072 sockets (one address each in 198.18.0.0/15)"
    );
    let start = Instant::now();
    let unix = unix_now();
    let limits = Limits {
        max_rooms: count as usize,
        max_total_bytes: 1 << 30,
        ..Limits::default()
    };
    let secret = b"scale-secret".to_vec();
    // The server's `iceServers`: a STUN URL and a TURN credential minted for the peer (`traverse`'s main.rs).
    let ice: signal::IceServerSource = Box::new(move |peer, unix| {
        let username = format!("{}:{}", unix + 86_400, peer.as_str());
        let credential = turn::rest_password(&secret, &username);
        let value = json!([
            { "urls": ["stun:turn.example:3478"] },
            { "urls": ["turn:turn.example:3478?transport=udp", "turns:turn.example:443?transport=tcp"],
              "username": username, "credential": credential },
        ]);
        serde_json::value::to_raw_value(&value).unwrap_or_default()
    });
    let mut hub = MemoryHub::new(limits, None, ice, rand::rngs::StdRng::seed_from_u64(2), start);
    let mut last_seq = vec![0u64; count as usize];
    let mut pongs: Vec<ConnId> = Vec::with_capacity(count as usize);
    let rss_before = rss_bytes()?;

    let at = |instant: Instant| Now {
        instant,
        unix: unix + instant.duration_since(start).as_secs(),
    };
    let mut setup = Clock::default();
    for i in 0..count {
        let conn = ConnId::new(u64::from(i));
        let now = at(start);
        setup
            .time(|| hub.handle_connect(conn, signal_ip(i), now))
            .map_err(|r| anyhow::anyhow!("socket {i} refused: {r:?}"))?;
        let join = format!("{{\"type\":\"join\",\"room\":\"room-{}\"}}", i / 2);
        setup.time(|| hub.handle_text(conn, &join, now));
        drain(&mut hub, &mut last_seq, &mut pongs)?;
    }
    let rss_after = rss_bytes()?;
    let joined = |s: &HubStats| s.sessions;
    ensure!(
        joined(&hub.stats()) == count as usize,
        "{} sessions of {count}",
        joined(&hub.stats())
    );

    // Idle: heartbeats spread over each 10 s, the hub's timers when it asks, 100 ms at a time.
    let (mut timers, mut messages) = (Clock::default(), Clock::default());
    let mut sent = 0u64;
    let mut pinged = 0u64;
    for step in 1..=idle * 10 {
        let now = at(start + STEP * step);
        for i in due(step, HEARTBEAT_STEPS, count) {
            let conn = ConnId::new(u64::from(i));
            let ack = last_seq.get(i as usize).copied().unwrap_or(0);
            let ping = format!("{{\"type\":\"ping\",\"ack\":{ack}}}");
            messages.time(|| hub.handle_text(conn, &ping, now));
            sent += 1;
        }
        if hub.poll_timeout().is_some_and(|t| t <= now.instant) {
            timers.time(|| hub.handle_timeout(now));
        }
        drain(&mut hub, &mut last_seq, &mut pongs)?;
        for conn in pongs.drain(..) {
            pinged += 1;
            messages.time(|| hub.handle_activity(conn, now));
        }
    }
    let stats = hub.stats();
    ensure!(
        joined(&stats) == count as usize,
        "after idling: {} sessions of {count}",
        joined(&stats)
    );
    let mut out = report(
        "signal",
        count,
        rss_after.saturating_sub(rss_before),
        &setup,
        (idle, sent),
        &timers,
        &messages,
    );
    if let Some(fields) = out.as_object_mut() {
        fields.insert("server_pings".into(), json!(pinged));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::due;

    /// Every object falls due exactly once per period, whatever the count.
    #[test]
    fn each_object_is_due_once_per_period() {
        for (count, period) in [(1, 540), (7, 240), (1000, 100), (100_000, 540), (100_000, 100)] {
            let mut seen = vec![0u32; count as usize];
            for second in 0..period {
                for i in due(second, period, count) {
                    seen[i as usize] += 1;
                }
            }
            assert!(seen.iter().all(|n| *n == 1), "count {count}, period {period}");
        }
    }
}
