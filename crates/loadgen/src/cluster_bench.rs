//! `traverse-cluster-bench`, driven by `bench/cluster/run.sh`: signaling load across the nodes of a cluster.
//!
//! `--pairs` pairs of peers, each in a room of its own: peer A on `--a` (the `i mod n`-th URL), peer B on `--b`.
//! Each pair keeps `--window` signals bouncing: whoever receives a signal sends one back at once, so a pair has
//! `window` in flight and every signal is a latency sample (its send time travels in `data`; both peers are in
//! this process, so one clock). After `--warmup` seconds it counts for `--seconds`: signals delivered, one-way
//! latency p50/p99, and the CPU time of the Traverse processes and of Redis (`/proc/<pid>/stat`) over the same
//! interval. Prints one JSON line. Bounded: `--max-signals` in all, every wait 10 s at most.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

const WAIT: Duration = Duration::from_secs(10);
/// Acknowledge every this many signals (`ping` with `ack`), as the SDK does, so replay buffers stay small.
const ACK_EVERY: u64 = 64;

#[derive(Parser, Debug)]
#[command(about = "Signals/s, latency and CPU per signal of Traverse nodes (bench/cluster/run.sh)")]
struct Args {
    /// WebSocket URLs (ws://host:port/ws) of the A peers; pair i uses the (i mod n)-th.
    #[arg(long, value_delimiter = ',', required = true)]
    a: Vec<String>,
    /// WebSocket URLs of the B peers.
    #[arg(long, value_delimiter = ',', required = true)]
    b: Vec<String>,
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Signals in flight per pair.
    #[arg(long, default_value_t = 4)]
    window: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Stop counting past this many signals.
    #[arg(long, default_value_t = 3_000_000)]
    max_signals: u64,
    /// Processes whose CPU time counts as Traverse's.
    #[arg(long, value_delimiter = ',')]
    traverse_pids: Vec<u32>,
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Names the case in the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// What the peer tasks share with the measurement.
#[derive(Default)]
struct Counters {
    counting: AtomicBool,
    stop: AtomicBool,
    signals: AtomicU64,
    /// One-way latencies in µs of the signals counted.
    latencies: Mutex<Vec<u32>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let mut pairs = Vec::with_capacity(args.pairs);
    for i in 0..args.pairs {
        let (Some(a), Some(b)) = (args.a.get(i % args.a.len()), args.b.get(i % args.b.len())) else {
            bail!("no URL");
        };
        let room = format!("bench-{i}-{}", std::process::id());
        let (a, a_id) = join(a, &room).await.with_context(|| format!("pair {i}: A joins"))?;
        let (b, b_id) = join(b, &room).await.with_context(|| format!("pair {i}: B joins"))?;
        pairs.push((a, a_id, b, b_id));
    }
    for (mut a, a_id, b, b_id) in pairs {
        // A learns of B before it sends (B's signals need no such wait: A was in the room when B joined).
        expect_peer_joined(&mut a).await?;
        tokio::spawn(bounce(a, b_id, args.window, epoch, counters.clone()));
        tokio::spawn(bounce(b, a_id, 0, epoch, counters.clone()));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let cpu_before = cpu(&args);
    let hubs_before = hub_threads(&args);
    let started = Instant::now();
    counters.counting.store(true, Ordering::Relaxed);
    let deadline = started + Duration::from_secs(args.seconds);
    while Instant::now() < deadline && counters.signals.load(Ordering::Relaxed) < args.max_signals {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counters.counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu(&args);
    let hubs_after = hub_threads(&args);
    counters.stop.store(true, Ordering::Relaxed);
    // The busiest `--redis` hub thread's share of a core: the node's ceiling is where it reaches 1.
    let hub_busiest = hubs_after
        .iter()
        .map(|(tid, after)| after - hubs_before.get(tid).copied().unwrap_or(0.0))
        .fold(0.0_f64, f64::max)
        / elapsed;
    let signals = counters.signals.load(Ordering::Relaxed);
    let mut latencies = std::mem::take(&mut *counters.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort_unstable();
    let pick = |q: f64| {
        let at = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(at).copied().unwrap_or(0)
    };
    let per_signal = |seconds: f64| match signals {
        0 => 0.0,
        n => seconds / n as f64 * 1e6,
    };
    let traverse_cpu = cpu_after.0 - cpu_before.0;
    let redis_cpu = cpu_after.1 - cpu_before.1;
    let out = json!({
        "label": args.label,
        "pairs": args.pairs,
        "window": args.window,
        "seconds": elapsed,
        "signals": signals,
        "signals_per_second": signals as f64 / elapsed,
        "latency_p50_us": pick(0.50),
        "latency_p99_us": pick(0.99),
        "traverse_cpu_s": traverse_cpu,
        "redis_cpu_s": redis_cpu,
        "traverse_us_per_signal": per_signal(traverse_cpu),
        "redis_us_per_signal": per_signal(redis_cpu),
        "total_us_per_signal": per_signal(traverse_cpu + redis_cpu),
        "hub_threads": hubs_after.len(),
        "hub_busiest_core_share": hub_busiest,
    });
    println!("{out}");
    Ok(())
}

/// Connects to `url` and joins `room`; returns the socket and the peer id.
async fn join(url: &str, room: &str) -> anyhow::Result<(Ws, String)> {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .context("expected ws://host:port/ws")?;
    let tcp = timeout(WAIT, TcpStream::connect(authority))
        .await
        .context("connect timed out")??;
    tcp.set_nodelay(true)?;
    // The room in the URL, as the SDK puts it on a join: the node serves the socket on the room's worker.
    let url = format!("{url}?room={room}");
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::client_async(url.as_str(), tcp))
        .await
        .context("upgrade timed out")??;
    ws.send(Message::text(json!({"type": "join", "room": room}).to_string()))
        .await?;
    loop {
        let frame = next(&mut ws).await?;
        if kind(&frame) == "joined" {
            let id = frame
                .get("peerId")
                .and_then(Value::as_str)
                .context("joined without peerId")?
                .to_owned();
            return Ok((ws, id));
        }
        if kind(&frame) == "error" {
            bail!("refused: {frame}");
        }
    }
}

async fn expect_peer_joined(ws: &mut Ws) -> anyhow::Result<()> {
    loop {
        if kind(&next(ws).await?) == "peer-joined" {
            return Ok(());
        }
    }
}

/// A frame's `type`.
fn kind(frame: &Value) -> &str {
    frame.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The next text frame as JSON (10 s at most).
async fn next(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match timeout(WAIT, ws.next()).await.context("no frame in 10 s")? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

fn signal(to: &str, epoch: Instant) -> Message {
    let t = epoch.elapsed().as_micros() as u64;
    Message::text(json!({"type": "signal", "to": to, "data": {"t": t}}).to_string())
}

/// Sends `window` signals to `to`, then answers every signal received with one back, until told to stop.
async fn bounce(mut ws: Ws, to: String, window: usize, epoch: Instant, counters: Arc<Counters>) {
    for _ in 0..window {
        if ws.send(signal(&to, epoch)).await.is_err() {
            return;
        }
    }
    let mut received = 0u64;
    while !counters.stop.load(Ordering::Relaxed) {
        let Ok(frame) = next(&mut ws).await else { return };
        if kind(&frame) != "signal" {
            continue;
        }
        if counters.counting.load(Ordering::Relaxed) {
            let sent = frame.pointer("/data/t").and_then(Value::as_u64).unwrap_or(0);
            let now = epoch.elapsed().as_micros() as u64;
            let latency = u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
            counters.signals.fetch_add(1, Ordering::Relaxed);
            counters
                .latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(latency);
        }
        if ws.send(signal(&to, epoch)).await.is_err() {
            return;
        }
        received += 1;
        if received.is_multiple_of(ACK_EVERY) {
            let seq = frame.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let ack = Message::text(json!({"type": "ping", "ack": seq}).to_string());
            if ws.send(ack).await.is_err() {
                return;
            }
        }
    }
}

/// CPU seconds (user + system) used so far by the Traverse processes and by Redis.
fn cpu(args: &Args) -> (f64, f64) {
    let traverse = args.traverse_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let redis = args.redis_pid.map_or(0.0, cpu_seconds);
    (traverse, redis)
}

/// CPU seconds so far of every `--redis` hub thread (`traverse-hub-{k}`) of the Traverse processes, by thread id.
fn hub_threads(args: &Args) -> std::collections::HashMap<u32, f64> {
    let mut threads = std::collections::HashMap::new();
    for pid in &args.traverse_pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let name = comm.trim();
            if name.starts_with("traverse-hub-") && name != "traverse-hub-timers" {
                threads.insert(tid, stat_seconds(&task.path().join("stat")));
            }
        }
    }
    threads
}

/// From `/proc/<pid>/stat`: utime and stime, in USER_HZ (100 on Linux) ticks.
fn cpu_seconds(pid: u32) -> f64 {
    stat_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// utime + stime of a `stat` file (a process's or a thread's).
fn stat_seconds(path: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}
