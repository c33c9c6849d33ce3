//! Issue 7, item 2: one source must not be able to make the signaling hub hold unbounded memory.
//!
//! The attack as reported: 19 sockets from one address join a room and read without ever acknowledging, a 20th
//! broadcasts ~60 KB messages just under the rate limit. Before the byte budgets the server grew by ~57 MB a second
//! (every frame kept for replay, 1 024 per session). Here it runs for a few seconds against the real binary on
//! loopback with default budgets, and the test asserts that the server's RSS stays under the documented budget,
//! that peers from other addresses join and exchange a signal meanwhile (within 3 s; tens of milliseconds here), and that the memory goes
//! back to the operating system once the attacker's sessions have ended. A second test runs the same attack with
//! readers that read nothing at all: their frames pile up in the server's socket queues instead of its replay
//! buffers, and those sockets are dropped (4104) instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The attacking addresses: `127.0.0.1`, then `127.0.1.1`, `127.0.2.1`, … (`ATTACK_SOURCES`, default 1; the issue
/// reported three).
fn attackers() -> Vec<IpAddr> {
    let n: u8 = std::env::var("ATTACK_SOURCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    (0..n.max(1)).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, i, 1))).collect()
}
const READERS: usize = 19;
const PAYLOAD: usize = 60_000;
/// How long the broadcaster keeps going.
const ATTACK: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(10);
/// `signal.max_source_bytes` by default (docs/protocol.md, "Limits").
const SOURCE_BUDGET_MIB: u64 = 16;

/// What the attacker's 19 readers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readers {
    /// Read every frame, never send `ack`: the replay buffers fill.
    ReadWithoutAck,
    /// Read nothing: the socket queues fill, then the kernel's buffers.
    NeverRead,
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame within the wait")
            .expect("the stream ended")
            .expect("read");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("server frames are JSON");
        }
    }
}

async fn expect_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
        assert!(
            matches!(v["type"].as_str(), Some("peer-joined" | "broadcast")),
            "waiting for {ty}, got {v}"
        );
    }
}

async fn join(from: IpAddr, server: SocketAddr, room: &str) -> (Ws, String) {
    let mut ws = common::ws_connect_from(from, server).await;
    ws.send(Message::text(json!({"type": "join", "room": room}).to_string()))
        .await
        .expect("send join");
    let joined = expect_type(&mut ws, "joined").await;
    let id = joined["peerId"].as_str().expect("peerId").to_owned();
    (ws, id)
}

/// Two peers from two other addresses join a fresh room and one signals the other: the time it all took.
async fn legitimate_exchange(server: SocketAddr, round: u8) -> Duration {
    let started = Instant::now();
    let room = format!("legit-{round}");
    let (mut a, _) = join(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + 2 * round)), server, &room).await;
    let (mut b, b_id) = join(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3 + 2 * round)), server, &room).await;
    a.send(Message::text(
        json!({"type": "signal", "to": b_id, "data": {"sdp": "offer"}}).to_string(),
    ))
    .await
    .expect("send signal");
    let got = expect_type(&mut b, "signal").await;
    assert_eq!(got["data"]["sdp"], "offer");
    let took = started.elapsed();
    let _ = a.close(None).await;
    let _ = b.close(None).await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_acking_readers_and_a_broadcaster_stay_within_the_source_budget() {
    run(Readers::ReadWithoutAck, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_are_dropped_and_stay_within_the_source_budget() {
    // A 2 s heartbeat: a socket that takes nothing for 2 s is dropped (4104), and a silent one after 5 s (4200).
    run(
        Readers::NeverRead,
        &[
            "--set",
            "signal.heartbeat_interval=2",
            "--set",
            "signal.heartbeat_timeout=5",
        ],
    )
    .await;
}

async fn run(readers: Readers, args: &[&str]) {
    // The delivery budget (1 MiB a second per sender) would throttle this broadcaster at the source (its own test
    // is below): lifted, so that the byte budgets are what holds the memory, as with many senders they must.
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_tcp_port()));
    let metrics_arg = metrics.to_string();
    let mut all = vec![
        "--workers",
        "1",
        "--metrics",
        &metrics_arg,
        "--set",
        "signal.resume_grace=2",
        "--set",
        "signal.delivered_bytes_per_second=0",
    ];
    all.extend_from_slice(args);
    let mut spawned = common::spawn_serve("127.0.0.1:0", &all, &[]);
    let server = common::signaling_addr(&spawned);
    let pid = spawned.child.id();
    let result = tokio::time::timeout(Duration::from_secs(60), attack(server, pid, metrics, readers)).await;
    let _ = spawned.child.kill();
    let _ = spawned.child.wait();
    if result.is_err() {
        let log = spawned.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        panic!(
            "the test took too long; log tail:\n{}",
            log.get(log.len().saturating_sub(4000)..).unwrap_or(&log)
        );
    }
}

async fn attack(server: SocketAddr, pid: u32, metrics: SocketAddr, mode: Readers) {
    // The readers: joined, then reading everything and never acknowledging (tungstenite answers WebSocket pings
    // itself, so they stay alive), or reading nothing until the attack is over.
    let received = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    let attackers = attackers();
    for (i, attacker) in attackers.iter().enumerate() {
        for _ in 0..READERS {
            let (mut ws, _) = join(*attacker, server, &format!("attack-{i}")).await;
            let (received, dropped, stop) = (received.clone(), dropped.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                if mode == Readers::NeverRead {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // Now read what the kernel held: the server has let go of this socket, so the stream ends.
                    let ended = tokio::time::timeout(WAIT, async {
                        while let Some(Ok(frame)) = ws.next().await {
                            if let Message::Close(Some(close)) = frame {
                                assert_eq!(u16::from(close.code), 4104, "{close:?}");
                            }
                        }
                    })
                    .await;
                    if ended.is_ok() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            received.fetch_add(t.len() as u64, Ordering::Relaxed);
                        }
                        Ok(Some(Ok(_))) | Err(_) => {}
                        Ok(Some(Err(_)) | None) => break,
                    }
                }
                // Gone without `leave`, as an attacker would: the session waits out its grace period.
                drop(ws);
            }));
        }
    }
    let mut louds = Vec::new();
    for (i, attacker) in attackers.iter().enumerate() {
        louds.push(join(*attacker, server, &format!("attack-{i}")).await.0);
    }
    let before = common::rss_kib(pid).expect("server RSS");

    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(common::rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let broadcasters: Vec<_> = louds
        .into_iter()
        .map(|mut loud| {
            tokio::spawn(async move {
                let body = json!({"type": "broadcast", "data": {"pad": "x".repeat(PAYLOAD)}}).to_string();
                let started = Instant::now();
                let mut sent = 0u32;
                // 45 a second: under the default 50 per second, so nothing is refused by the rate limit.
                while started.elapsed() < ATTACK {
                    loud.send(Message::text(body.clone())).await.expect("broadcast");
                    sent += 1;
                    let due = started + Duration::from_millis(u64::from(sent) * 1000 / 45);
                    tokio::time::sleep_until(due.into()).await;
                    // Drain what the server says (pongs, rate-limit errors) so this socket is not the slow one.
                    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), loud.next()).await {}
                }
                drop(loud);
                sent
            })
        })
        .collect();

    // Legitimate peers from other addresses, while the attack runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..2 {
        let took = legitimate_exchange(server, round).await;
        println!("legitimate join + signal, round {round}: {took:?}");
        // Served, not starved: a debug build on 2 cores, beside this storm and often the next test's (cargo runs
        // two at once), answers in tens of milliseconds; starved peers waited out the 10 s frame wait.
        assert!(took < Duration::from_secs(3), "round {round} took {took:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let mut sent = 0;
    for b in broadcasters {
        sent += b.await.expect("broadcaster");
    }
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    for r in readers {
        let _ = r.await;
    }
    let delivered_mib = received.load(Ordering::Relaxed) / (1 << 20);
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "{sent} broadcasts of {PAYLOAD} B to {READERS} readers from each of {} sources ({delivered_mib} MiB \
         delivered): RSS {} MiB before, {} MiB peak (+{growth_mib} MiB)",
        attackers.len(),
        before / 1024,
        peak / 1024
    );

    // The sessions expire after the 2 s grace (the 500 ms sweep), then the allocator hands the memory back
    // (jemalloc's background thread, 10 s decay): 30 s, for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = u64::MAX;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = common::rss_kib(pid).unwrap_or(u64::MAX);
        if after <= before + 2 * 1024 {
            break;
        }
    }
    println!(
        "RSS after the sessions ended: {} MiB (+{} MiB over the start)",
        after / 1024,
        after.saturating_sub(before) / 1024
    );
    match mode {
        Readers::ReadWithoutAck => assert!(
            delivered_mib > 50,
            "the readers got the broadcasts live ({delivered_mib} MiB)"
        ),
        Readers::NeverRead => {
            assert_eq!(
                dropped.load(Ordering::Relaxed),
                (READERS * attackers.len()) as u64,
                "every reader that did not read was let go"
            );
            // Closed by their own tasks, not the hub: counted all the same (they were missing from the metric).
            let too_slow = metric(metrics, "traverse_signal_closes_total{code=\"4104\"}").await;
            assert_eq!(too_slow, (READERS * attackers.len()) as u64, "4104 closes in /metrics");
        }
    }
    assert!(
        growth_mib < 2 * SOURCE_BUDGET_MIB * attackers.len() as u64 + 16,
        "RSS grew by {growth_mib} MiB; the source's budget is {SOURCE_BUDGET_MIB} MiB"
    );
    assert!(
        after <= before + 8 * 1024,
        "memory was not returned after the sessions ended: {} MiB over the start",
        after.saturating_sub(before) / 1024
    );
}

/// The same broadcaster at the defaults: its broadcasts' bytes count once per reader against its delivery budget,
/// 1 MiB a second after a burst of 4 MiB. To 9 readers for 4 s, the readers get at most the burst and the rate
/// (12 MiB at 45 broadcasts a second without it); the sender is told `rate-limited`, and peers from other
/// addresses are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcaster_gets_its_delivery_budget() {
    let mut spawned = common::spawn_serve("127.0.0.1:0", &["--workers", "1"], &[]);
    let server = common::signaling_addr(&spawned);
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 30));
    let attack = async {
        let mut readers = Vec::new();
        for _ in 0..9 {
            readers.push(join(attacker, server, "loud").await.0);
        }
        let (mut loud, _) = join(attacker, server, "loud").await;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reading: Vec<_> = readers
            .into_iter()
            .map(|mut ws| {
                let (received, stop) = (received.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(Some(Ok(Message::Text(t)))) =
                            tokio::time::timeout(Duration::from_millis(100), ws.next()).await
                        {
                            if t.contains(r#""type":"broadcast""#) {
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let body = json!({"type": "broadcast", "data": {"pad": "x".repeat(PAYLOAD)}}).to_string();
        let data_bytes = (PAYLOAD + r#"{"pad":""}"#.len()) as f64;
        let started = Instant::now();
        let (mut sent, mut refused) = (0u32, 0u32);
        while started.elapsed() < Duration::from_secs(4) {
            loud.send(Message::text(body.clone())).await.expect("broadcast");
            sent += 1;
            tokio::time::sleep_until((started + Duration::from_millis(u64::from(sent) * 1000 / 45)).into()).await;
            while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(1), loud.next()).await
            {
                refused += u32::from(t.contains("rate-limited"));
            }
        }
        let took = started.elapsed().as_secs_f64();
        legitimate_exchange(server, 9).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for r in reading {
            let _ = r.await;
        }
        let copies = received.load(Ordering::Relaxed) as f64;
        let most = ((4.0 + took + 0.5) * f64::from(1u32 << 20) / data_bytes).ceil();
        println!(
            "{sent} broadcasts sent in {took:.1} s, {copies} copies delivered (at most {most}), {refused} refused"
        );
        assert!(copies <= most, "{copies} copies of {data_bytes} B in {took:.1} s");
        assert!(copies >= 9.0 * 4.0, "the burst was delivered: {copies} copies");
        assert!(refused > 0, "the sender was told");
    };
    let result = tokio::time::timeout(Duration::from_secs(28), attack).await;
    let _ = spawned.child.kill();
    let _ = spawned.child.wait();
    result.expect("the broadcast and the exchange took too long");
}

/// Pings and pongs are budgeted: a burst of 100 then 10 a second, each read's told to the hub once, and only the
/// last ping of a read answered (RFC 6455 §5.5.3). 50 pings at once are within the burst: the last is answered and
/// the socket stays, signaled by a peer from another address. 10 000 more close it with 4100 after a few pongs.
/// Before, each of them got a pong and cost the hub a shard's lock (or a channel message with `--redis`): 14 million
/// a second from one socket kept a core busy and sent back 28 MB/s of pongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_closed_after_its_burst() {
    let mut spawned = common::spawn_serve("127.0.0.1:0", &["--workers", "1"], &[]);
    let server = common::signaling_addr(&spawned);
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20));
    let flood = async {
        let (mut ws, id) = join(attacker, server, "pinged").await;
        send_pings(&mut ws, 50).await;
        loop {
            let frame = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
            if frame == Message::Pong(49u32.to_be_bytes().to_vec().into()) {
                break;
            }
        }
        let (mut other, _) = join(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)), server, "pinged").await;
        other
            .send(Message::text(
                json!({"type": "signal", "to": id, "data": {"sdp": "offer"}}).to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(expect_type(&mut ws, "signal").await["data"]["sdp"], "offer");

        send_pings(&mut ws, 10_000).await;
        let mut pongs = 0;
        let close = loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("closed within the wait")
            {
                Some(Ok(Message::Pong(_))) => pongs += 1,
                Some(Ok(Message::Close(close))) => break close,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(close.map(|c| u16::from(c.code)), Some(4100), "closed as rate-limited");
        assert!(pongs <= 200, "{pongs} pongs for 10 000 pings");
        // The flooder's own address is still served: its socket was closed, not its source.
        legitimate_exchange(server, 7).await;
    };
    let result = tokio::time::timeout(Duration::from_secs(28), flood).await;
    let _ = spawned.child.kill();
    let _ = spawned.child.wait();
    result.expect("the pings and the exchange took too long");
}

/// A socket's ping budget moves with it: on two workers, a socket that names its room only in its `join` moves to the
/// room's worker after it, and 95 pings before the join and 95 after pass the burst of 100 however the rooms fall.
/// Before, the budget stayed with the task that first served the socket, and a moved socket got a fresh burst: of 8
/// such sockets, those that moved (about half) stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_keeps_its_ping_budget_when_it_moves_to_its_room_s_worker() {
    let spawned = common::spawn_serve("127.0.0.1:0", &["--workers", "2"], &[]);
    let server = common::signaling_addr(&spawned);
    let attempt = async {
        let mut closes = Vec::new();
        for r in 0..8u8 {
            let mut ws = common::ws_connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + r)), server).await;
            send_pings(&mut ws, 95).await;
            let room = format!("moving-pings-{r}");
            ws.send(Message::text(json!({"type": "join", "room": room}).to_string()))
                .await
                .expect("send join");
            send_pings(&mut ws, 95).await;
            let close = loop {
                // A socket still open after 5 s kept a fresh burst.
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Close(close)))) => break close.map(|c| u16::from(c.code)),
                    Ok(Some(Ok(_))) => {}
                    Ok(other) => panic!("socket {r}: no close frame: {other:?}"),
                    Err(_) => break None,
                }
            };
            closes.push(close);
        }
        assert_eq!(closes, [Some(4100); 8], "every socket spent its one burst");
    };
    tokio::time::timeout(Duration::from_secs(60), attempt)
        .await
        .expect("the pings took too long");
}

/// Sends `n` pings, their payload their number, in as few writes as the stream takes; stops, as a flooder would,
/// once the server has closed (what it answered is read after).
async fn send_pings(ws: &mut Ws, n: u32) {
    for i in 0..n {
        if ws.feed(Message::Ping(i.to_be_bytes().to_vec().into())).await.is_err() {
            return;
        }
    }
    let _ = ws.flush().await;
}

/// `traverse_signal_held_bytes`, read from the metrics listener at `metrics`.
async fn held_bytes(metrics: SocketAddr) -> u64 {
    metric(metrics, "traverse_signal_held_bytes").await
}

/// One sample's value (its name with its labels, as printed), read from the metrics listener at `metrics`.
async fn metric(metrics: SocketAddr, sample: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(metrics).await.expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("scrape");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read the scrape");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
}

/// A room lives on one of the hub's shards (one per core), and its peers behind one address keep their source's
/// whole byte budget there: the budgets are the server's, shared by the shards. Split by the number of shards, as
/// they were, one room kept half of it on this 2-core machine, an eighth on an 8-core one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_behind_one_address_keeps_its_whole_source_budget_on_any_number_of_cores() {
    const BUDGET: u64 = 1 << 20;
    let shards = std::thread::available_parallelism().map_or(1, usize::from);
    if shards < 2 {
        common::skip("one core: the hub has one shard, so there is nothing to split");
        return;
    }
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_tcp_port()));
    let budget = format!("signal.max_source_bytes={BUDGET}");
    let args = [
        "--workers",
        "1",
        "--metrics",
        &metrics.to_string(),
        "--set",
        &budget,
        "--set",
        "signal.max_session_bytes=262144",
        "--set",
        "signal.delivered_bytes_per_second=0",
    ];
    let mut spawned = common::spawn_serve("127.0.0.1:0", &args, &[]);
    let server = common::signaling_addr(&spawned);
    let office = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 40));
    let run = async {
        // Eight readers that never acknowledge: 2 MiB of session budgets, more than the source's 1 MiB.
        let mut readers = Vec::new();
        for _ in 0..8 {
            readers.push(join(office, server, "office").await.0);
        }
        let (mut loud, _) = join(office, server, "office").await;
        let body = json!({"type": "broadcast", "data": {"pad": "x".repeat(30_000)}}).to_string();
        for _ in 0..12 {
            loud.send(Message::text(body.clone())).await.expect("broadcast");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        // What the readers were sent is kept until they acknowledge, up to the source's budget.
        let deadline = Instant::now() + WAIT;
        let mut held = 0;
        while Instant::now() < deadline {
            held = held_bytes(metrics).await;
            if held >= BUDGET - 64 * 1024 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            held >= BUDGET - 64 * 1024,
            "the room kept {held} bytes of its source's {BUDGET} over {shards} shards"
        );
        assert!(
            held <= BUDGET + 64 * 1024,
            "{held} bytes held past a budget of {BUDGET}"
        );
        drop(readers);
    };
    let finished = tokio::time::timeout(Duration::from_secs(20), run).await;
    let _ = spawned.child.kill();
    let _ = spawned.child.wait();
    finished.expect("the test took too long");
}
