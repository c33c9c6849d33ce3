//! Many nodes on Redis (`docs/scaling.md`): a real `redis-server` and several `traverse serve --redis` processes on
//! loopback, spoken to over WebSocket as a browser would. Two peers of one room on different nodes see and signal
//! each other, the room limit holds across nodes, a peer whose node is killed (`kill -9`) resumes through another
//! node with every sequence number accounted for, and a node whose Redis is unreachable serves its sockets alone.
//! A drain (`traverse drain`) moves rooms, redirects new TURN allocations (300) and exits after the drain time;
//! an overloaded node is not handed out; `/check` reports are shared. Figures: `bench/cluster/run.sh`.
//!
//! Every process is started on kernel-chosen (or probed free) loopback ports and killed by PID when its handle
//! drops; every wait is bounded. Skipped when `redis-server` is not installed (a failure under
//! `TRAVERSE_REQUIRE_PEERS=1`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `redis-server` on a free loopback port, nothing persisted, killed by PID on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        if !common::have_tool("redis-server") {
            common::skip("redis-server is not installed (Debian package redis-server)");
            return None;
        }
        let port = common::free_tcp_port();
        Some(Redis::start_on(port))
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child, port };
        let deadline = Instant::now() + WAIT;
        while !redis.pings() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// Kills it and starts another, empty, on the same port.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Redis::start_on(self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Redis {
    /// One command's reply, raw (RESP): its first bytes within 10 s (a loaded machine), then what follows until
    /// Redis has nothing more to say for a moment.
    fn command(&self, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// A string key's value (`None` when absent).
    fn get(&self, key: &str) -> Option<String> {
        let reply = self.command(&format!("GET {key}"));
        let mut lines = reply.split("\r\n");
        let head = lines.next()?;
        (head != "$-1").then(|| lines.next().unwrap_or_default().to_owned())
    }

    /// How many times Redis ran `command` (`INFO commandstats`).
    fn calls(&self, command: &str) -> u64 {
        let stats = self.command("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

/// What Redis was asked from its `MONITOR` on: the commands every client sent, and those scripts ran.
struct Monitor {
    stream: TcpStream,
    lines: Arc<Mutex<String>>,
}

impl Redis {
    /// Watches every command from now on (until the monitor drops).
    fn monitor(&self) -> Monitor {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.write_all(b"MONITOR\r\n").unwrap();
        let mut ok = [0u8; 5];
        stream.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
        let lines = Arc::new(Mutex::new(String::new()));
        let (mut reader, seen) = (stream.try_clone().unwrap(), lines.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Monitor { stream, lines }
    }
}

impl Monitor {
    /// The room and session lookups seen so far: a session's `GET sess:`, a room's claim (the `CLAIM` script names
    /// the room's members key; the heartbeat's lease script does not).
    fn lookups(&self) -> Vec<String> {
        // What was sent before this call has reached the monitor by the time a PING through it is answered.
        let mut s = TcpStream::connect(self.stream.peer_addr().unwrap()).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        let mut pong = [0u8; 7];
        s.read_exact(&mut pong).unwrap();
        let deadline = Instant::now() + WAIT;
        while !self.lines.lock().unwrap().contains("\"PING\"") {
            assert!(Instant::now() < deadline, "the monitor saw no PING");
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines = self.lines.lock().unwrap();
        lines
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                (l.contains("\"get\" \"traverse:sess:")) || (l.contains("\"eval") && l.contains("\"traverse:m:"))
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `traverse serve --redis …` with its listeners on kernel-chosen loopback ports, killed by PID on drop.
struct Node {
    child: common::Process,
    http: SocketAddr,
    /// The TURN URLs of its `iceServers:` line.
    turn: Value,
    log: Arc<Mutex<String>>,
}

impl Node {
    fn start(redis: &str, extra: &[&str]) -> Node {
        Node::start_waiting_for(
            redis,
            extra,
            "connected to Redis: rooms are shared with the other nodes",
        )
    }

    /// Starts a node with more environment variables.
    fn start_with_env(redis: &str, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Node::start_waiting_for_with(
            redis,
            extra,
            env,
            "connected to Redis: rooms are shared with the other nodes",
        )
    }

    /// Starts a node and waits until its log says `ready`.
    fn start_waiting_for(redis: &str, extra: &[&str], ready: &str) -> Node {
        Node::start_waiting_for_with(redis, extra, &[], ready)
    }

    fn start_waiting_for_with(redis: &str, extra: &[&str], env: &[(&str, &str)], ready: &str) -> Node {
        let mut args = vec!["--workers", "1", "--redis", redis];
        args.extend_from_slice(extra);
        let common::Spawned { child, log, stdout } = common::spawn_serve("127.0.0.1:0", &args, env);
        let mut node = Node {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            turn: Value::Null,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = stdout.recv_timeout(left) else {
                let status = node.child.try_wait();
                panic!("traverse did not become ready ({status:?}); log:\n{}", node.log());
            };
            if let Some(rest) = line.strip_prefix("signaling: ws://") {
                node.http = rest.split("/ws").next().unwrap().parse().unwrap();
            } else if let Some(rest) = line.strip_prefix("iceServers: ") {
                let servers: Value = serde_json::from_str(rest).unwrap();
                node.turn = servers[1]["urls"].clone();
                break;
            }
        }
        node.wait_for_log(ready);
        node
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail = log.get(log.len().saturating_sub(6 * 1024)..).unwrap_or(&log);
            eprintln!("--- traverse log (tail) ---\n{tail}");
        }
    }
}

/// A signaling client speaking protocol v1.
struct Peer {
    ws: WebSocketStream<tokio::net::TcpStream>,
}

impl Peer {
    async fn connect(node: &Node) -> Peer {
        let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
        let url = format!("ws://{}/ws", node.http);
        let (ws, _) = timeout(WAIT, tokio_tungstenite::client_async(url, tcp))
            .await
            .unwrap()
            .unwrap();
        Peer { ws }
    }

    /// The client's port: the server's socket for this peer is the one connected to it.
    fn local_port(&self) -> u16 {
        self.ws.get_ref().local_addr().unwrap().port()
    }

    async fn send(&mut self, v: Value) {
        timeout(WAIT, self.ws.send(Message::text(v.to_string())))
            .await
            .unwrap()
            .unwrap();
    }

    /// The next text frame; `Err(close code)` when the socket closes instead.
    async fn next(&mut self) -> Result<Value, Option<u16>> {
        loop {
            match timeout(WAIT, self.ws.next()).await.expect("no frame in time") {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let v = self
            .next()
            .await
            .unwrap_or_else(|code| panic!("closed ({code:?}) while waiting for {kind}"));
        assert_eq!(v["type"], kind, "{v}");
        v
    }

    async fn join(node: &Node, room: &str) -> (Peer, Value) {
        let mut peer = Peer::connect(node).await;
        peer.send(json!({"type":"join","room":room})).await;
        let joined = peer.expect("joined").await;
        (peer, joined)
    }
}

/// Joins fresh rooms on `node` until the `iceServers` of a join, past the first `skip` entries, name `expected`
/// (the registry is refreshed once a second, a dead node's key expires in 3 s); at most 15 s. Returns the last
/// peer (still in its room) and that room.
async fn join_until_ice(node: &Node, skip: usize, expected: &[Value]) -> (Peer, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for attempt in 0.. {
        let room = format!("probe-{attempt}");
        let (peer, joined) = Peer::join(node, &room).await;
        let urls: Vec<Value> = joined["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .skip(skip)
            .map(|s| s["urls"].clone())
            .collect();
        if urls == expected {
            return (peer, room);
        }
        assert!(Instant::now() < deadline, "iceServers {urls:?}, expected {expected:?}");
        drop(peer);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// A call in room "call" across two nodes, for the drain tests.
struct Call {
    a: Peer,
    b: Peer,
    a_session: String,
    b_id: String,
    b_session: String,
    /// The sequence numbers B has seen, in order.
    at_b: Vec<u64>,
    /// Signals A has sent.
    sent: u64,
}

impl Call {
    /// A joins on `home` (the room's home), B on `other`; A sends `sent` signals, B reads `read` of them, and A's
    /// ping is answered (everything sent has reached the hub).
    async fn across(home: &Node, other: &Node, sent: u64, read: usize) -> Call {
        let (mut a, joined_a) = Peer::join(home, "call").await;
        let (mut b, joined_b) = Peer::join(other, "call").await;
        a.expect("peer-joined").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        for n in 0..sent {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n},"seq":n + 1}))
                .await;
        }
        let mut at_b: Vec<u64> = vec![1];
        for _ in 0..read {
            at_b.push(b.expect("signal").await["seq"].as_u64().unwrap());
        }
        a.send(json!({"type":"ping"})).await;
        a.expect("pong").await;
        Call {
            a,
            b,
            a_session: joined_a["session"].as_str().unwrap().to_owned(),
            b_id,
            b_session: joined_b["session"].as_str().unwrap().to_owned(),
            at_b,
            sent,
        }
    }

    /// A drain of A's node closes both sockets with 4202 (B's through its own node); what B got first is kept.
    async fn closed_by_drain(&mut self) {
        assert_eq!(self.a.next().await.err(), Some(Some(4202)));
        loop {
            match self.b.next().await {
                Ok(v) => self.at_b.push(v["seq"].as_u64().unwrap()),
                Err(code) => {
                    assert_eq!(code, Some(4202));
                    break;
                }
            }
        }
    }

    /// A resumes on `a_node`, B on `b_node`, and A sends one more signal: A's signals were all acknowledged and B
    /// has seen every sequence number once, in order.
    async fn resumes_with_nothing_lost(mut self, a_node: &Node, b_node: &Node) {
        let mut a = Peer::connect(a_node).await;
        a.send(json!({"type":"resume","session":self.a_session,"lastSeq":2}))
            .await;
        assert_eq!(a.expect("resumed").await["ack"], self.sent);
        let mut b = Peer::connect(b_node).await;
        b.send(json!({"type":"resume","session":self.b_session,"lastSeq":self.at_b.last().unwrap()}))
            .await;
        let resumed = b.expect("resumed").await;
        for _ in 0..resumed["replayed"].as_u64().unwrap() {
            self.at_b.push(b.expect("signal").await["seq"].as_u64().unwrap());
        }
        let n = self.sent;
        a.send(json!({"type":"signal","to":self.b_id,"data":{"n":n},"seq":n + 1}))
            .await;
        self.at_b.push(b.expect("signal").await["seq"].as_u64().unwrap());
        assert_eq!(self.at_b, (1..=n + 2).collect::<Vec<u64>>());
    }
}

/// A draining node refuses new sockets before the upgrade.
async fn refuses_sockets(node: &Node) {
    let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
    let refused = tokio_tungstenite::client_async(format!("ws://{}/ws", node.http), tcp).await;
    assert!(refused.is_err(), "a draining node accepts no socket");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn peers_on_different_nodes_see_and_signal_each_other_and_the_room_limit_is_cluster_wide() {
    let Some(redis) = Redis::start() else { return };
    let limit = ["--set", "signal.max_peers_per_room=2"];
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &limit)).collect();
    runtime().block_on(async {
        let (mut a, joined_a) = Peer::join(&nodes[0], "r").await;
        let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
        let (mut b, joined_b) = Peer::join(&nodes[1], "r").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        assert_eq!(
            joined_b["peers"][0]["id"],
            a_id.as_str(),
            "B, on node 1, sees A on node 0: {joined_b}"
        );
        assert_eq!(a.expect("peer-joined").await["peer"]["id"], b_id.as_str());

        for n in 0..5 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n}})).await;
            b.send(json!({"type":"signal","to":a_id,"data":{"n":n}})).await;
        }
        for n in 0..5u64 {
            let at_b = b.expect("signal").await;
            assert_eq!(
                (at_b["from"].as_str(), at_b["data"]["n"].as_u64(), at_b["seq"].as_u64()),
                (Some(a_id.as_str()), Some(n), Some(n + 2))
            );
            let at_a = a.expect("signal").await;
            assert_eq!(
                (at_a["from"].as_str(), at_a["data"]["n"].as_u64(), at_a["seq"].as_u64()),
                (Some(b_id.as_str()), Some(n), Some(n + 3))
            );
        }
        b.send(json!({"type":"broadcast","data":{"hi":1}})).await;
        assert_eq!(a.expect("broadcast").await["from"], b_id.as_str());

        // A third peer, on the third node: the room already has its two.
        let mut c = Peer::connect(&nodes[2]).await;
        c.send(json!({"type":"join","room":"r"})).await;
        assert_eq!(c.expect("error").await["code"], "room-full");
        assert_eq!(c.next().await.err(), Some(Some(4102)));

        // B leaves from node 1: A hears it through the room's home.
        b.send(json!({"type":"leave"})).await;
        assert_eq!(a.expect("peer-left").await["peerId"], b_id.as_str());
    });
}

#[test]
fn a_peer_whose_node_is_killed_resumes_through_another_node_with_nothing_lost() {
    let Some(redis) = Redis::start() else { return };
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        // A on node 0 (the room's home), B on node 1.
        let (mut a, joined_a) = Peer::join(&nodes[0], "call").await;
        let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
        let (mut b, joined_b) = Peer::join(&nodes[1], "call").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        let session = joined_b["session"].as_str().unwrap().to_owned();
        a.expect("peer-joined").await;

        // Both talk; B numbers its own messages (client `seq`).
        let mut at_b: Vec<(u64, u64)> = vec![(1, u64::MAX)];
        for n in 0..10u64 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n}})).await;
        }
        for _ in 0..10 {
            let v = b.expect("signal").await;
            at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        }
        for k in 1..=3u64 {
            b.send(json!({"type":"signal","to":a_id,"data":{"k":k},"seq":k})).await;
        }
        for k in 1..=3u64 {
            assert_eq!(a.expect("signal").await["data"]["k"], k);
        }
        let last_seen = at_b.last().unwrap().0;

        // Two more reach node 1 (or are on their way) but B never processes them: mid-conversation.
        for n in 10..12u64 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n}})).await;
        }
        a.send(json!({"type":"ping"})).await;
        a.expect("pong").await;
        // Node 1 dies with B's socket; A keeps signalling meanwhile.
        nodes[1].kill();
        drop(b);
        for n in 12..20u64 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n}})).await;
        }
        // A's pong comes after the home handled all ten: they wait in B's stream while B has no socket.
        a.send(json!({"type":"ping"})).await;
        a.expect("pong").await;

        // B reconnects to node 2 and resumes from the last frame it processed.
        let mut b = Peer::connect(&nodes[2]).await;
        b.send(json!({"type":"resume","session":session,"lastSeq":last_seen}))
            .await;
        let resumed = b.expect("resumed").await;
        assert_eq!(resumed["ack"], 3, "the home handled B's messages 1-3: {resumed}");
        assert_eq!(resumed["replayed"], 10, "{resumed}");
        for _ in 0..10 {
            let v = b.expect("signal").await;
            at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        }
        // Live again, both ways; a resent message (seq 3) is dropped as a duplicate, a new one (4) arrives.
        a.send(json!({"type":"signal","to":b_id,"data":{"n":20}})).await;
        let v = b.expect("signal").await;
        at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        b.send(json!({"type":"signal","to":a_id,"data":{"k":3},"seq":3})).await;
        b.send(json!({"type":"signal","to":a_id,"data":{"k":4},"seq":4})).await;
        assert_eq!(a.expect("signal").await["data"]["k"], 4);

        // Every stream number from 1 (joined) to the end, once, in order; every signal A sent, once, in order.
        let seqs: Vec<u64> = at_b.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=22).collect::<Vec<u64>>(), "{at_b:?}");
        let ns: Vec<u64> = at_b[1..].iter().map(|(_, n)| *n).collect();
        assert_eq!(ns, (0..=20).collect::<Vec<u64>>());
    });
}

#[test]
fn a_node_whose_redis_is_unreachable_serves_its_sockets_alone_and_says_so() {
    // A port nothing listens on.
    let port = common::free_tcp_port();
    if !common::have_tool("redis-server") {
        return common::skip("redis-server is not installed (Debian package redis-server)");
    }
    let url = format!("redis://127.0.0.1:{port}");
    let node = Node::start_waiting_for(&url, &[], "Redis unreachable: serving rooms on this node alone");
    runtime().block_on(async {
        let (mut a, joined_a) = Peer::join(&node, "alone").await;
        let (mut b, joined_b) = Peer::join(&node, "alone").await;
        assert_eq!(joined_b["peers"][0]["id"], joined_a["peerId"]);
        a.expect("peer-joined").await;
        a.send(json!({"type":"signal","to":joined_b["peerId"],"data":"x"}))
            .await;
        assert_eq!(b.expect("signal").await["data"], "x");
    });
    let warned = node.log().matches("Redis unreachable").count();
    assert_eq!(warned, 1, "said once:\n{}", node.log());
    // Not ready meanwhile: a load balancer sends new peers to nodes that share rooms.
    let (status, body) = http_get(&node, "/readyz");
    assert_eq!(status, 503, "{body}");
    // The public port names the check, not its detail (the metrics listener's).
    assert!(body.contains(r#"{"name":"redis","ok":false}"#), "{body}");

    // Redis comes up on that port: the node says so, shares its rooms again and is ready.
    let _redis = Redis::start_on(port);
    node.wait_for_log("connected to Redis: rooms are shared with the other nodes");
    let (status, body) = http_get(&node, "/readyz");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_redis_restart_mid_conversation_loses_nothing() {
    let Some(mut redis) = Redis::start() else { return };
    let mut nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        let (mut a, joined_a) = Peer::join(&nodes[0], "r").await;
        let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
        let (mut b, joined_b) = Peer::join(&nodes[1], "r").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        let session = joined_b["session"].as_str().unwrap().to_owned();
        a.expect("peer-joined").await;
        let mut at_b: Vec<(u64, u64)> = vec![(1, u64::MAX)];
        for n in 0..5u64 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n}})).await;
        }
        for _ in 0..5 {
            let v = b.expect("signal").await;
            at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        }

        // Redis restarts, empty (nothing persisted).
        redis.restart();
        // B's socket depended on the link to the room's home: it is closed with 4202 (retry now).
        loop {
            match b.next().await {
                Ok(v) => {
                    assert_eq!(v["type"], "signal", "{v}");
                    at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
                }
                Err(code) => {
                    assert_eq!(code, Some(4202));
                    break;
                }
            }
        }
        // A keeps signalling while B is away.
        for n in 5..10u64 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n}})).await;
        }
        a.send(json!({"type":"ping"})).await;
        a.expect("pong").await;
        // Both nodes say Redis answers again; a heartbeat later the home has written its keys back.
        for node in &nodes {
            let deadline = Instant::now() + WAIT;
            while node.log().matches("connected to Redis").count() < 2 {
                assert!(Instant::now() < deadline, "no second connection:\n{}", node.log());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Until then a resume is told to try again (4202; the next test), as the SDK does, on a slow machine too.
        let last_seen = at_b.last().unwrap().0;
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut b, resumed) = loop {
            let mut b = Peer::connect(&nodes[1]).await;
            b.send(json!({"type":"resume","session":session,"lastSeq":last_seen}))
                .await;
            match b.next().await {
                Ok(v) if v["type"] == "resumed" => break (b, v),
                Err(Some(4202)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("the resume after Redis came back: {other:?}\n{}", nodes[1].log()),
            }
        };
        for _ in 0..resumed["replayed"].as_u64().unwrap() {
            let v = b.expect("signal").await;
            at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        }
        b.send(json!({"type":"signal","to":a_id,"data":"back"})).await;
        assert_eq!(a.expect("signal").await["data"], "back");
        let seqs: Vec<u64> = at_b.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<u64>>(), "{at_b:?}");
        let ns: Vec<u64> = at_b[1..].iter().map(|(_, n)| *n).collect();
        assert_eq!(ns, (0..10).collect::<Vec<u64>>());

        // The home wrote its journal again when it found Redis empty: it dies now, and the session is rebuilt
        // from that journal on the node B resumes at. Before, the journal held only what changed after the
        // restart, and the resume failed.
        nodes[0].wait_for_log("Redis had lost the session journal: written again");
        a.send(json!({"type":"signal","to":b_id,"data":{"n":10}})).await;
        let v = b.expect("signal").await;
        assert_eq!(v["seq"], 12, "{v}");
        nodes[0].kill();
        let closed = b.next().await;
        assert_eq!(closed, Err(Some(4202)), "node-gone");
        let mut b = Peer::connect(&nodes[1]).await;
        b.send(json!({"type":"resume","session":session,"lastSeq":12})).await;
        let resumed = b.expect("resumed").await;
        assert_eq!(resumed["replayed"], 0, "{resumed}");
        // The room's other member, A, lost with the home, is still in the room (its grace runs): B reaches it.
        b.send(json!({"type":"signal","to":a_id,"data":"after"})).await;
        b.send(json!({"type":"ping"})).await;
        let pong = b.expect("pong").await;
        assert_eq!(pong["seq"], 12, "no undeliverable: A's session was rebuilt too: {pong}");
    });
}

/// A resume the moment Redis came back empty (the SDK resumes at once after a 4202) is told to try again (4202)
/// until the room's home has written its journal again, then resumes with nothing lost: it is never ended (4201)
/// for a session Redis has not been told of again yet, which sent the client to join a second copy of its room.
#[test]
fn a_resume_right_after_redis_restarted_is_told_to_retry_never_ended() {
    let Some(mut redis) = Redis::start() else { return };
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        let (mut a, joined_a) = Peer::join(&nodes[0], "r").await;
        let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
        let (mut b, joined_b) = Peer::join(&nodes[1], "r").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        let session = joined_b["session"].as_str().unwrap().to_owned();
        a.expect("peer-joined").await;
        a.send(json!({"type":"signal","to":b_id,"data":{"n":0}})).await;
        assert_eq!(b.expect("signal").await["seq"], 2);

        redis.restart();
        assert_eq!(b.next().await.err(), Some(Some(4202)), "the link to the home was lost");
        a.send(json!({"type":"signal","to":b_id,"data":{"n":1}})).await;
        // As the SDK does: at once, then again after each 4202, a little later each time; at most 15 s.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut b, retries) = 'resume: {
            for attempt in 0u64.. {
                assert!(Instant::now() < deadline, "not resumed after {attempt} attempts");
                let mut b = Peer::connect(&nodes[1]).await;
                b.send(json!({"type":"resume","session":session,"lastSeq":2})).await;
                match b.next().await {
                    Ok(v) if v["type"] == "resumed" => break 'resume (b, attempt),
                    Err(Some(4202)) => tokio::time::sleep(Duration::from_millis(50 * attempt.min(10))).await,
                    other => panic!("attempt {attempt}: the session was ended: {other:?}"),
                }
            }
            unreachable!()
        };
        println!("resumed after {retries} retries");
        let v = b.expect("signal").await;
        assert_eq!((v["seq"].as_u64(), v["data"]["n"].as_u64()), (Some(3), Some(1)), "{v}");
        b.send(json!({"type":"signal","to":a_id,"data":"back"})).await;
        assert_eq!(a.expect("signal").await["data"], "back");
    });
}

/// Redis drops every node's subscription (as it does to a subscriber past its output buffer limit, or a proxy
/// resetting it): each node subscribes again at once, and a join forwarded to the room's home meanwhile, which no
/// node received, closes its socket with 4202 to try again rather than waiting for an answer that never comes.
/// Before, nodes waited a second before subscribing again, and such a join hung until the client gave up (10 s).
#[test]
fn a_join_forwarded_while_its_home_subscribes_again_is_answered_or_retried() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        let (mut a, _) = Peer::join(&nodes[0], "sub").await;
        for round in 0..3 {
            let killed = redis.command("CLIENT KILL TYPE pubsub");
            assert!(killed.starts_with(':'), "{killed}");
            // As the SDK does: joined, or closed with 4202 and again at once; each answer within 3 s.
            let deadline = Instant::now() + Duration::from_secs(5);
            let b = 'joined: loop {
                assert!(Instant::now() < deadline, "round {round}: not joined in 5 s");
                let mut b = Peer::connect(&nodes[1]).await;
                b.send(json!({"type":"join","room":"sub"})).await;
                let answer = timeout(Duration::from_secs(3), b.next())
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: the join got no answer in 3 s"));
                match answer {
                    Ok(v) if v["type"] == "joined" => break 'joined b,
                    Err(Some(4202)) => continue,
                    other => panic!("round {round}: {other:?}"),
                }
            };
            a.expect("peer-joined").await;
            let mut b = b;
            b.send(json!({"type":"leave"})).await;
            a.expect("peer-left").await;
        }
    });
}

/// While Redis stays away, a resume of a session held by another node is told to try again only for the resume
/// grace (its home may come back); past it the resume fails (4201) and the client joins again on the node it
/// reached, which serves it alone — rather than retrying for as long as Redis is down.
#[test]
fn a_resume_in_a_long_redis_outage_fails_once_the_grace_is_over() {
    let Some(mut redis) = Redis::start() else { return };
    let grace = ["--set", "signal.resume_grace=2"];
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url(), &grace)).collect();
    runtime().block_on(async {
        let (_a, _) = Peer::join(&nodes[0], "long").await;
        let (mut b, joined_b) = Peer::join(&nodes[1], "long").await;
        let session = joined_b["session"].as_str().unwrap().to_owned();
        let _ = redis.child.kill();
        let _ = redis.child.wait();
        assert_eq!(b.next().await.err(), Some(Some(4202)), "the link to the home was lost");
        // Within the grace: try again.
        let mut b = Peer::connect(&nodes[1]).await;
        b.send(json!({"type":"resume","session":session,"lastSeq":1})).await;
        assert_eq!(b.next().await.err(), Some(Some(4202)), "within the grace");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut b = Peer::connect(&nodes[1]).await;
        b.send(json!({"type":"resume","session":session,"lastSeq":1})).await;
        assert_eq!(b.expect("error").await["code"], "resume-failed");
        assert_eq!(b.next().await.err(), Some(Some(4201)));
        let (_b, joined) = Peer::join(&nodes[1], "long").await;
        assert_eq!(joined["type"], "joined", "served alone");
    });
}

/// The room's home stalls (SIGSTOP: a VM pause, a partition from Redis) for longer than its node key lives: the
/// other node takes the room over from the journal, and its peer resumes there. When the old home wakes, its
/// heartbeat finds the room's key naming the new home: it closes its sockets of the room with 4202 instead of
/// serving a second copy, in which the two peers never heard each other again; its peer resumes at the new home.
#[test]
fn a_home_cut_off_until_its_room_was_taken_over_gives_the_room_up() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url(), &[])).collect();
    let signal = |sig: &str, node: &Node| {
        let status = Command::new("kill")
            .args([sig, &node.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    runtime().block_on(async {
        let (mut a, joined_a) = Peer::join(&nodes[0], "split").await;
        let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
        let a_session = joined_a["session"].as_str().unwrap().to_owned();
        let (b, joined_b) = Peer::join(&nodes[1], "split").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        let b_session = joined_b["session"].as_str().unwrap().to_owned();
        a.expect("peer-joined").await;
        let mut b = b;
        a.send(json!({"type":"ping"})).await;
        a.expect("pong").await;

        signal("-STOP", &nodes[0]);
        // Node 1 finds node 0's key expired: B's socket, forwarded there, is closed to resume elsewhere.
        let closed = b.next().await;
        let mut b = Peer::connect(&nodes[1]).await;
        b.send(json!({"type":"resume","session":b_session,"lastSeq":1})).await;
        let resumed = b.next().await;
        signal("-CONT", &nodes[0]);
        assert_eq!(closed.err(), Some(Some(4202)), "node-gone");
        assert_eq!(
            resumed.map(|v| v["type"].clone()),
            Ok(json!("resumed")),
            "taken over by node 1"
        );

        // The old home gives the room up: A's socket is closed with 4202, and A resumes at the new home.
        assert_eq!(a.next().await.err(), Some(Some(4202)), "A's socket on the old home");
        nodes[0].wait_for_log("another node took this room over");
        let mut a = Peer::connect(&nodes[0]).await;
        a.send(json!({"type":"resume","session":a_session,"lastSeq":2})).await;
        a.expect("resumed").await;
        a.send(json!({"type":"signal","to":b_id,"data":"to b"})).await;
        assert_eq!(b.expect("signal").await["data"], "to b");
        b.send(json!({"type":"signal","to":a_id,"data":"to a"})).await;
        assert_eq!(a.expect("signal").await["data"], "to a");
    });
}

#[test]
fn ice_servers_name_the_peer_s_node_first_then_the_live_nodes_least_loaded_first() {
    let Some(redis) = Redis::start() else { return };
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        // Node 0 carries two sockets, node 2 none: after a heartbeat, node 2 is the less loaded.
        let _busy = (Peer::join(&nodes[0], "x").await, Peer::join(&nodes[0], "y").await);
        let expected = [nodes[1].turn.clone(), nodes[2].turn.clone(), nodes[0].turn.clone()];
        let (_p, own) = join_until_ice(&nodes[1], 1, &expected).await;
        let (_p2, joined) = Peer::join(&nodes[1], &own).await;
        let servers = joined["iceServers"].as_array().unwrap().clone();
        let urls: Vec<&Value> = servers.iter().skip(1).map(|s| &s["urls"]).collect();
        assert_eq!(urls, [&nodes[1].turn, &nodes[2].turn, &nodes[0].turn], "{servers:?}");
        let credential = (&servers[1]["username"], &servers[1]["credential"]);
        assert!(servers[2..]
            .iter()
            .all(|s| (&s["username"], &s["credential"]) == credential));

        // A peer of that room whose socket is on node 2: its own node's TURN comes first.
        let (_r, joined) = Peer::join(&nodes[2], &own).await;
        let urls: Vec<Value> = joined["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["urls"].clone())
            .collect();
        assert_eq!(urls[0], nodes[2].turn, "{urls:?}");
        assert_eq!(urls[2], nodes[1].turn, "then the room's home (STUN, TURN): {urls:?}");
        assert_eq!(urls[3], nodes[0].turn, "{urls:?}");
        assert_eq!(urls.len(), 4, "{urls:?}");

        // Node 2 dies: once its heartbeat key has expired, it is no longer handed out.
        nodes[2].kill();
        join_until_ice(&nodes[1], 1, &[nodes[1].turn.clone(), nodes[0].turn.clone()]).await;
    });
}

#[test]
fn the_room_s_home_killed_another_node_takes_its_sessions_over_with_nothing_lost() {
    let Some(redis) = Redis::start() else { return };
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        // A on node 0, the room's home; B on node 1, forwarded there.
        let (mut a, joined_a) = Peer::join(&nodes[0], "call").await;
        let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
        let a_session = joined_a["session"].as_str().unwrap().to_owned();
        let (mut b, joined_b) = Peer::join(&nodes[1], "call").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        let b_session = joined_b["session"].as_str().unwrap().to_owned();
        assert_eq!(a.expect("peer-joined").await["seq"], 2);
        let mut at_b: Vec<(u64, u64)> = vec![(1, u64::MAX)];
        for n in 0..5u64 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n},"seq":n + 1}))
                .await;
        }
        for _ in 0..5 {
            let v = b.expect("signal").await;
            at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        }
        // Two more reach the home; B has not processed them when the home dies.
        for n in 5..7u64 {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":n},"seq":n + 1}))
                .await;
        }
        a.send(json!({"type":"ping"})).await;
        assert_eq!(a.expect("pong").await["ack"], 7);

        nodes[0].kill();
        drop(a);
        // Node 1 notices the home is gone and closes B's socket with 4202 (retry now).
        loop {
            match b.next().await {
                Ok(v) => assert_eq!(v["type"], "signal", "{v}"),
                Err(code) => {
                    assert_eq!(code, Some(4202));
                    break;
                }
            }
        }

        // A resumes through node 2, which takes the room over; B resumes through node 1, forwarded to node 2.
        let mut a = Peer::connect(&nodes[2]).await;
        a.send(json!({"type":"resume","session":a_session,"lastSeq":2})).await;
        let resumed_a = a.expect("resumed").await;
        assert_eq!(
            (resumed_a["ack"].as_u64(), resumed_a["replayed"].as_u64()),
            (Some(7), Some(0)),
            "{resumed_a}"
        );
        let last_seen = at_b.last().unwrap().0;
        let mut b = Peer::connect(&nodes[1]).await;
        b.send(json!({"type":"resume","session":b_session,"lastSeq":last_seen}))
            .await;
        let resumed_b = b.expect("resumed").await;
        assert_eq!(resumed_b["replayed"], 2, "{resumed_b}");
        for _ in 0..2 {
            let v = b.expect("signal").await;
            at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        }

        // A resends what it numbered after the `ack` it was told (nothing) and one more: only the new one arrives.
        a.send(json!({"type":"signal","to":b_id,"data":{"n":6},"seq":7})).await;
        a.send(json!({"type":"signal","to":b_id,"data":{"n":7},"seq":8})).await;
        let v = b.expect("signal").await;
        at_b.push((v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()));
        b.send(json!({"type":"signal","to":a_id,"data":"back"})).await;
        let v = a.expect("signal").await;
        assert_eq!(
            (v["data"].as_str(), v["seq"].as_u64()),
            (Some("back"), Some(3)),
            "A's stream continues at 3"
        );

        let seqs: Vec<u64> = at_b.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<u64>>(), "{at_b:?}");
        let ns: Vec<u64> = at_b[1..].iter().map(|(_, n)| *n).collect();
        assert_eq!(ns, (0..8).collect::<Vec<u64>>());
    });
}

#[test]
fn a_drained_node_hands_its_room_over_and_new_sockets_go_elsewhere() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        let mut call = Call::across(&nodes[0], &nodes[1], 5, 3).await;

        // SIGTERM to node 0 (a supervisor's stop; `traverse drain` sends SIGUSR1, tested below): in a cluster it
        // drains.
        let pid = nodes[0].child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        call.closed_by_drain().await;
        nodes[0].wait_for_log("draining: rooms handed to the other nodes");
        refuses_sockets(&nodes[0]).await;
        call.resumes_with_nothing_lost(&nodes[2], &nodes[1]).await;
    });
    // No TURN allocation to wait for: the drained node stops by itself, long before the drain time (30 s).
    nodes[0].wait_for_log("drained: no TURN allocation left, stopping");
}

#[test]
fn turn_allocations_count_in_a_node_s_load() {
    let Some(redis) = Redis::start() else { return };
    let user = ["--user", "alice:pw"];
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &user)).collect();
    // Node 0: three TURN allocations and no socket; node 2: one signaling socket.
    let udp: SocketAddr = nodes[0].turn[0]
        .as_str()
        .and_then(|u| u.strip_prefix("turn:"))
        .and_then(|u| u.split('?').next())
        .unwrap()
        .parse()
        .unwrap();
    let mut clients: Vec<common::TurnClient> = (0..3)
        .map(|_| {
            let mut client = common::TurnClient::new(common::Conn::udp(udp), "alice", "pw");
            let response = client.allocate(false);
            assert_eq!(response.class(), stun::Class::Success, "{}", response.describe());
            client
        })
        .collect();
    runtime().block_on(async {
        let _socket = Peer::join(&nodes[2], "elsewhere").await;
        // The workers publish their counters once a second, the registry is read once a second: node 2 (1)
        // comes before node 0 (3 allocations).
        join_until_ice(&nodes[1], 2, &[nodes[2].turn.clone(), nodes[0].turn.clone()]).await;
    });
    clients.clear();
}

/// libfaketime's preload library (Debian package faketime), for a node whose wall clock is off.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Nodes without NTP: one node's wall clock runs 60 s behind. It is still handed out by the others, as long as its
/// heartbeat lives (the candidates are scored by Redis's clock). Before, its registry entry was scored by its own
/// clock, and the others pruned it (older than 30 s) as soon as it was written: it was never handed out.
#[test]
fn a_node_whose_clock_runs_behind_is_handed_out_by_the_others() {
    let Some(redis) = Redis::start() else { return };
    if !std::path::Path::new(FAKETIME).exists() {
        return common::skip(&format!("{FAKETIME} is missing (Debian package faketime)"));
    }
    let behind = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME", "-60s"),
        // Only the wall clock: timers and deadlines run on the monotonic one.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let nodes = [
        Node::start(&redis.url(), &[]),
        Node::start_with_env(&redis.url(), &[], &behind),
    ];
    runtime().block_on(async {
        join_until_ice(&nodes[0], 1, &[nodes[0].turn.clone(), nodes[1].turn.clone()]).await;
        // And the other way round.
        join_until_ice(&nodes[1], 1, &[nodes[1].turn.clone(), nodes[0].turn.clone()]).await;
    });
}

#[test]
fn two_peers_of_a_dead_home_resuming_at_once_on_one_node_both_resume() {
    let Some(redis) = Redis::start() else { return };
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &[])).collect();
    runtime().block_on(async {
        let (a, joined_a) = Peer::join(&nodes[0], "call").await;
        let (mut b, joined_b) = Peer::join(&nodes[1], "call").await;
        let (a_session, b_session) = (joined_a["session"].clone(), joined_b["session"].clone());
        nodes[0].kill();
        drop(a);
        while b.next().await.is_ok() {}
        // Both land on node 2 at the same moment: one lookup restores the room, the other waits for it.
        let resume = |session: Value, last: u64| {
            let node = &nodes[2];
            async move {
                let mut p = Peer::connect(node).await;
                p.send(json!({"type":"resume","session":session,"lastSeq":last})).await;
                p.next().await
            }
        };
        let (ra, rb) = tokio::join!(resume(a_session, 2), resume(b_session, 1));
        assert_eq!(ra.unwrap()["type"], "resumed");
        assert_eq!(rb.unwrap()["type"], "resumed");
    });
}

#[test]
fn nodes_signal_each_other_over_a_redis_on_tls() {
    if !common::have_tool("redis-server") {
        return common::skip("redis-server is not installed (Debian package redis-server)");
    }
    // A CA of this test, trusted by the nodes through SSL_CERT_FILE; Redis serves TLS only.
    let dir = std::env::temp_dir().join(format!("traverse-rediss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "traverse test Redis CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let port = common::free_tcp_port();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ])
        .args(["--tls-ca-cert-file", ca.to_str().unwrap(), "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let _redis = Redis { child, port };
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server (TLS) did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("rediss://localhost:{port}");
    let start = || {
        let args = ["--workers", "1", "--redis", &url];
        let common::Spawned { child, log, stdout } =
            common::spawn_serve("127.0.0.1:0", &args, &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
        let mut node = Node {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            turn: Value::Null,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = stdout.recv_timeout(left).expect("ready line");
            if let Some(rest) = line.strip_prefix("signaling: ws://") {
                node.http = rest.split("/ws").next().unwrap().parse().unwrap();
            } else if line.starts_with("iceServers: ") {
                break;
            }
        }
        node.wait_for_log("connected to Redis: rooms are shared with the other nodes");
        node
    };
    let nodes = [start(), start()];
    runtime().block_on(async {
        let (mut a, joined_a) = Peer::join(&nodes[0], "tls").await;
        let (mut b, joined_b) = Peer::join(&nodes[1], "tls").await;
        assert_eq!(joined_b["peers"][0]["id"], joined_a["peerId"]);
        a.expect("peer-joined").await;
        a.send(json!({"type":"signal","to":joined_b["peerId"],"data":"over TLS"}))
            .await;
        assert_eq!(b.expect("signal").await["data"], "over TLS");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `POST /api/reports` of report number `n` (its headline "report n") on `node`: its id.
fn post_report(node: &Node, n: u64) -> String {
    let body = json!({"verdict": {"headline": format!("report {n}")}, "n": n}).to_string();
    let (status, answer) = http(
        node,
        "POST",
        "/api/reports",
        "Content-Type: application/json\r\n",
        &body,
    );
    assert_eq!(status, 201, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    answer["id"].as_str().unwrap().to_owned()
}

/// `GET path` on a node's HTTP port: the status code and the body.
fn http_get(node: &Node, path: &str) -> (u16, String) {
    http(node, "GET", path, "", "")
}

/// One HTTP/1.1 request (`headers`: whole lines, each ending in CRLF) on a node's HTTP port.
fn http(node: &Node, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(node.http).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The UDP address of a node's first TURN URL (`turn:IP:PORT?transport=udp`).
fn turn_udp(node: &Node) -> SocketAddr {
    node.turn[0]
        .as_str()
        .and_then(|u| u.strip_prefix("turn:"))
        .and_then(|u| u.split('?').next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn traverse_drain_mid_conversation_redirects_new_allocations_and_exits_after_the_drain_time() {
    let Some(redis) = Redis::start() else { return };
    let dir = std::env::temp_dir().join(format!("traverse-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("node0.pid");
    let pid_arg = pid_file.to_str().unwrap();
    let first = ["--user", "alice:pw", "--drain-time", "5", "--pid-file", pid_arg];
    let mut nodes = vec![Node::start(&redis.url(), &first)];
    nodes.extend((0..2).map(|_| Node::start(&redis.url(), &["--user", "alice:pw"])));
    // The pid file is written once the node is serving, which may come just after the Redis line the start waits for.
    let pid = nodes[0].child.id().to_string();
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&pid_file)
        .map(|s| s.trim().to_owned())
        .ok()
        .as_deref()
        != Some(pid.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "no pid file at {} naming {pid}",
            pid_file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = http_get(&nodes[0], "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"redis\""), "{body}");

    // A TURN allocation on node 0, held across the drain.
    let udp = turn_udp(&nodes[0]);
    let mut held = common::TurnClient::new(common::Conn::udp(udp), "alice", "pw");
    let response = held.allocate(false);
    assert_eq!(response.class(), stun::Class::Success, "{}", response.describe());

    runtime().block_on(async {
        let mut call = Call::across(&nodes[0], &nodes[1], 4, 1).await;

        // `traverse drain --pid-file`: both sockets are closed with 4202.
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_traverse"))
            .args(["drain", "--pid-file", pid_arg])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        call.closed_by_drain().await;
        nodes[0].wait_for_log("draining — new TURN allocations are sent to other nodes");
        let (status, body) = http_get(&nodes[0], "/readyz");
        assert_eq!(status, 503, "a draining node is not ready: {body}");
        assert!(body.contains(r#"{"name":"drain","ok":false}"#), "{body}");

        // New joins go to the other nodes: node 0 refuses the socket; both peers resume elsewhere, nothing lost.
        refuses_sockets(&nodes[0]).await;
        call.resumes_with_nothing_lost(&nodes[2], &nodes[1]).await;
        // A draining node is no longer handed out (the registry is read once a second).
        join_until_ice(&nodes[1], 1, &[nodes[1].turn.clone(), nodes[2].turn.clone()]).await;

        // A new Allocate on node 0: 300 Try Alternate naming a live node's UDP listener.
        let alternates = [turn_udp(&nodes[1]), turn_udp(&nodes[2])];
        // Node 0 reads the registry once a second on its own; under load its copy can lag the one node 1 just
        // showed, and while it knows no live node it answers 508 (nowhere to send the client): ask again until it
        // knows one, for up to 10 s.
        let mut fresh = common::TurnClient::new(common::Conn::udp(udp), "alice", "pw");
        let mut refused = fresh.allocate(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while refused.error_code() == Some(508) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            fresh = common::TurnClient::new(common::Conn::udp(udp), "alice", "pw");
            refused = fresh.allocate(false);
        }
        assert_eq!(refused.error_code(), Some(300), "{}", refused.describe());
        let alternate = match refused.message().decode(stun::attr::ALTERNATE_SERVER) {
            Some(Ok(stun::Attribute::AlternateServer(a))) => a,
            other => panic!("no ALTERNATE-SERVER: {other:?}"),
        };
        assert!(
            alternates.contains(&alternate),
            "{alternate} is not one of {alternates:?}"
        );
        let mut moved = common::TurnClient::new(common::Conn::udp(alternate), "alice", "pw");
        let response = moved.allocate(false);
        assert_eq!(response.class(), stun::Class::Success, "{}", response.describe());

        // The held allocation keeps working.
        let refreshed = held.request(stun::Method::REFRESH, |w| {
            w.add(&stun::Attribute::Lifetime(600)).map(|_| ())
        });
        assert_eq!(refreshed.class(), stun::Class::Success, "{}", refreshed.describe());

        // The process exits by itself once the drain time (5 s) has run out, not before.
        let deadline = started + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = nodes[0].child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running 15 s after the drain");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let lasted = started.elapsed();
        assert!(status.success(), "{status:?}");
        assert!(
            lasted >= Duration::from_secs(4),
            "exited after {lasted:?}, before the drain time"
        );
        nodes[0].wait_for_log("drain time over");
        assert!(!pid_file.exists(), "the pid file is removed at exit");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_overloaded_node_is_not_handed_out_and_comes_back_once_it_has_room() {
    let Some(redis) = Redis::start() else { return };
    let user = ["--user", "alice:pw"];
    let mut nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url(), &user)).collect();
    // Node 2 holds two allocations at most: with two, it is full.
    let small = ["--user", "alice:pw", "--set", "limits.max_allocations=2"];
    nodes.push(Node::start(&redis.url(), &small));
    let udp = turn_udp(&nodes[2]);
    // Two sources: with a capacity of two, one source may hold one (half the capacity at most).
    let mut clients: Vec<common::TurnClient> = [[127, 0, 0, 1], [127, 0, 0, 2]]
        .into_iter()
        .map(|ip| {
            let conn = common::Conn::udp_from(std::net::IpAddr::from(ip), udp);
            let mut client = common::TurnClient::new(conn, "alice", "pw");
            let response = client.allocate(false);
            assert_eq!(response.class(), stun::Class::Success, "{}", response.describe());
            client
        })
        .collect();
    runtime().block_on(async {
        // Joined on node 1: node 2 is left out.
        let (_p1, _) = join_until_ice(&nodes[1], 1, &[nodes[1].turn.clone(), nodes[0].turn.clone()]).await;
        // Joined on node 2 itself: its own TURN is left out too (its STUN stays), the others least loaded first
        // (node 1 holds a socket, node 0 none).
        let (_p2, _) = join_until_ice(&nodes[2], 1, &[nodes[0].turn.clone(), nodes[1].turn.clone()]).await;
        let (status, body) = http_get(&nodes[2], "/readyz");
        assert_eq!(status, 200, "overloaded is not unready: {body}");

        // Its allocations end: it is handed out again, last (it holds a socket).
        for client in &mut clients {
            let deleted = client.request(stun::Method::REFRESH, |w| {
                w.add(&stun::Attribute::Lifetime(0)).map(|_| ())
            });
            assert_eq!(deleted.class(), stun::Class::Success, "{}", deleted.describe());
        }
        join_until_ice(
            &nodes[1],
            1,
            &[nodes[1].turn.clone(), nodes[0].turn.clone(), nodes[2].turn.clone()],
        )
        .await;
    });
}

#[test]
fn a_report_shared_on_one_node_is_read_and_listed_on_the_others_and_the_store_stays_bounded() {
    let Some(redis) = Redis::start() else { return };
    let admin = "an-admin-token-of-the-cluster";
    let dir = std::env::temp_dir().join(format!("traverse-reports-{}", std::process::id()));
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            // Each node a data directory of its own: what one node reads from another comes from Redis.
            let data = format!("web.data_dir={}", dir.join(i.to_string()).display());
            let token = format!("web.admin_token={admin}");
            let args = ["--set", &data, "--set", &token, "--set", "web.max_reports=2"];
            Node::start(&redis.url(), &args)
        })
        .collect();
    let post = post_report;
    let first = post(&nodes[0], 0);
    let (status, body) = http_get(&nodes[1], &format!("/api/reports/{first}"));
    assert_eq!(status, 200, "{body}");
    let read: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["report"]["n"], 0, "{read}");
    assert!(read.get("source").is_none(), "the source is never shown: {read}");

    // Two more, from other nodes: the store holds two (web.max_reports), so the oldest goes, cluster-wide.
    std::thread::sleep(Duration::from_millis(1100));
    let second = post(&nodes[1], 1);
    std::thread::sleep(Duration::from_millis(1100));
    let third = post(&nodes[2], 2);
    let bearer = format!("Authorization: Bearer {admin}\r\n");
    let (status, body) = http(&nodes[0], "GET", "/api/reports", &bearer, "");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = list["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [third.as_str(), second.as_str()], "newest first: {list}");
    assert_eq!(list["reports"][0]["headline"], "report 2");
    assert_eq!(http_get(&nodes[2], &format!("/api/reports/{first}")).0, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis stops answering (SIGSTOP: its socket stays open, so every call waits for its timeout). Report reads are
/// answered together within about one timeout, not one after another; a report sent meanwhile is kept in the
/// node's files and reads back; the trouble is logged once; once Redis answers again, what it held reads back.
#[test]
fn report_calls_in_a_redis_outage_neither_wait_in_line_nor_repeat_the_warning() {
    const READS: usize = 16;
    let Some(redis) = Redis::start() else { return };
    let dir = std::env::temp_dir().join(format!("traverse-reports-outage-{}", std::process::id()));
    let data = format!("web.data_dir={}", dir.display());
    let node = Node::start(&redis.url(), &["--set", &data]);
    let post = |n: u64| post_report(&node, n);
    let in_redis = post(0);
    assert!(redis.get(&format!("traverse:report:{in_redis}")).is_some());
    assert_eq!(http_get(&node, &format!("/api/reports/{in_redis}")).0, 200);

    // A signal to the redis-server this test started, by its PID (the shell's `kill`: no unsafe code here).
    let signal = |name: &str| {
        let command = format!("kill -{name} {}", redis.child.id());
        let status = Command::new("sh").args(["-c", &command]).status().unwrap();
        assert!(status.success(), "{command}: {status}");
    };
    signal("STOP");
    let started = Instant::now();
    let answers: Vec<u16> = std::thread::scope(|s| {
        let reads: Vec<_> = (1..=READS)
            .map(|n| {
                let node = &node;
                s.spawn(move || http_get(node, &format!("/api/reports/{n:032x}")).0)
            })
            .collect();
        reads.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let took = started.elapsed();
    assert_eq!(answers, [404; READS], "unknown ids are not found, Redis or not");
    assert!(
        took < Duration::from_secs(6),
        "{READS} reads took {took:?}: they waited in line for a Redis that does not answer"
    );
    let kept = post(1);
    assert_eq!(
        http_get(&node, &format!("/api/reports/{kept}")).0,
        200,
        "kept in the node's files"
    );
    let warned = node.log().matches("the report store's Redis does not answer").count();

    signal("CONT");
    assert_eq!(warned, 1, "one warning per outage:\n{}", node.log());
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&node, &format!("/api/reports/{in_redis}")).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the report in Redis never read back:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    node.wait_for_log("the report store's Redis answers again");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis stops answering (SIGSTOP) while a socket forwarded to its room's home sends faster than Redis takes: once
/// it holds its share of the node's queue to Redis (what its outbox may hold: a session's budget and two frames), it
/// alone is closed with 4202 `link-too-slow`; a quiet socket of the same room on the same node stays open. (Before,
/// envelopes piled up to the queue's 64 MiB, and a full queue or a failed publish closed every socket that depends
/// on another node at once, the quiet one with the loud.)
#[test]
fn a_socket_sent_faster_than_redis_takes_is_closed_alone() {
    let Some(redis) = Redis::start() else { return };
    // A share of 128 KiB + 2 × 64 KiB: five frames of 60 KB are past it.
    let small = [
        "--set",
        "signal.max_session_bytes=131072",
        "--set",
        "cluster.hub_shards=1",
    ];
    let home = Node::start(&redis.url(), &small);
    let other = Node::start(&redis.url(), &small);
    let signal = |name: &str| {
        let command = format!("kill -{name} {}", redis.child.id());
        let status = Command::new("sh").args(["-c", &command]).status().unwrap();
        assert!(status.success(), "{command}: {status}");
    };
    runtime().block_on(async {
        let (mut a, joined) = Peer::join(&home, "r").await;
        let a_id = joined["peerId"].as_str().unwrap().to_owned();
        let (mut loud, _) = Peer::join(&other, "r").await;
        a.expect("peer-joined").await;
        let (mut quiet, _) = Peer::join(&other, "r").await;
        a.expect("peer-joined").await;
        loud.expect("peer-joined").await;

        signal("STOP");
        let sent = Instant::now();
        let data = "x".repeat(60_000);
        for n in 0..8 {
            // The socket may be closed before the last is written: what matters is how it is closed.
            let frame = Message::text(json!({"type":"signal","to":a_id,"data":{"n":n,"pad":data}}).to_string());
            if timeout(WAIT, loud.ws.send(frame)).await.map_or(true, |r| r.is_err()) {
                break;
            }
        }
        let close = loop {
            match timeout(WAIT, loud.ws.next()).await.expect("no close in time") {
                Some(Ok(Message::Close(f))) => break f.map(|f| (u16::from(f.code), f.reason.to_string())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            }
        };
        let closed_after = sent.elapsed();
        // The window this test looks in: a failed publish, 2 s after Redis stopped, closes every forwarded socket.
        assert!(
            closed_after < Duration::from_millis(1500),
            "the loud socket was closed only after {closed_after:?} (timing: the machine is too slow for this \
             test's window, or the share did not close it): {close:?}"
        );
        // Still open: nothing comes, no close either, for a moment (a failed publish, 2 s after Redis stopped,
        // closes every forwarded socket: this looks well before).
        let quiet_frame = timeout(Duration::from_millis(300), quiet.ws.next()).await;
        signal("CONT");
        assert_eq!(
            close,
            Some((4202, "link-too-slow".to_owned())),
            "closed after {closed_after:?}:\n{}",
            other.log()
        );
        assert!(
            quiet_frame.is_err(),
            "the quiet socket got {quiet_frame:?} {closed_after:?} after the burst began"
        );
    });
}

/// One node, its rooms sharded over two hub tasks on threads of their own (`cluster.hub_shards`; each a node of the
/// cluster under a name of its own, `docs/scaling.md`, "Shards"). With one worker thread every socket starts in the same shard, so rooms homed on
/// several shards show that sockets move to their room's shard before their join; resumes that need no Redis lookup
/// show that a socket moves to the shard holding its session; no `PUBLISH` at all shows that shards of one process
/// reach each other in-process. The room and per-source limits hold over the shards.
#[test]
fn one_node_shards_its_rooms_over_its_hub_tasks_and_its_limits_hold_across_them() {
    let Some(redis) = Redis::start() else { return };
    const ROOMS: usize = 16;
    let limits = [
        "--set",
        "cluster.hub_shards=2",
        "--set",
        "cluster.hub_on_workers=false",
        "--set",
        "signal.max_rooms=16",
        "--set",
        "signal.max_connections_per_ip=40",
    ];
    let node = Node::start(&redis.url(), &limits);
    runtime().block_on(async {
        let mut calls = Vec::new();
        for i in 0..ROOMS {
            let room = format!("room-{i}");
            let (mut a, joined_a) = Peer::join(&node, &room).await;
            let (mut b, joined_b) = Peer::join(&node, &room).await;
            a.expect("peer-joined").await;
            let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
            let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
            a.send(json!({"type":"signal","to":b_id,"data":{"n":i}})).await;
            let at_b = b.expect("signal").await;
            assert_eq!(
                (at_b["from"].as_str(), at_b["seq"].as_u64()),
                (Some(a_id.as_str()), Some(2))
            );
            assert_eq!(at_b["data"]["n"], i);
            let session = joined_b["session"].as_str().unwrap().to_owned();
            // B's socket drops here; its session waits for a resume.
            calls.push((a, b_id, session));
        }

        // Where each room lives, as Redis says: on more than one shard, all of this node.
        let homes = shard_homes(&redis, "room-", ROOMS);
        assert!(homes.len() >= 2, "every room on one shard: {homes:?}");

        // The room limit holds over the shards: a 17th room is refused, wherever it hashes.
        let mut extra = Peer::connect(&node).await;
        extra.send(json!({"type":"join","room":"one-too-many"})).await;
        assert_eq!(extra.expect("error").await["code"], "too-many-rooms");
        assert_eq!(extra.next().await.err(), Some(Some(4103)));
        drop(extra);

        // Every B, its socket gone, misses a signal and resumes on a new socket, which starts in the worker's shard
        // and moves to the session's without asking Redis where the session lives.
        let monitor = redis.monitor();
        let mut resumed_b = Vec::new();
        for (i, (a, b_id, session)) in calls.iter_mut().enumerate() {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":100 + i}})).await;
            let mut b = Peer::connect(&node).await;
            b.send(json!({"type":"resume","session":session,"lastSeq":2})).await;
            let resumed = b.expect("resumed").await;
            assert_eq!(resumed["replayed"], 1, "{resumed}");
            let v = b.expect("signal").await;
            assert_eq!(
                (v["seq"].as_u64(), v["data"]["n"].as_u64()),
                (Some(3), Some(100 + i as u64))
            );
            resumed_b.push(b);
        }
        let lookups = monitor.lookups();
        assert!(
            lookups.is_empty(),
            "a resume looked its session up in Redis: {lookups:?}"
        );
        // The monitor sees lookups: a join of a new room claims it.
        let _control = Peer::join(&node, "room-0").await;
        assert!(!monitor.lookups().is_empty(), "a join's claim is seen");
        assert_eq!(
            redis.calls("publish"),
            0,
            "shards of one process signal each other in-process"
        );

        // Sockets per source over the shards: 16 A, 16 resumed B, the control, the refused one gone; 7 more reach 40.
        let mut held = Vec::new();
        for _ in 0..7 {
            held.push(Peer::connect(&node).await);
        }
        let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
        let refused = tokio_tungstenite::client_async(format!("ws://{}/ws", node.http), tcp).await;
        assert!(refused.is_err(), "a 41st socket from one address is refused");
    });
}

/// With the node at its room limit less one, signals in the room it holds reserve no room: a fresh room joined at
/// the same moment, on either shard, is never refused. Before, the shard handling a signal reserved the last room
/// of the limit for as long as it handled it.
#[test]
fn signals_reserve_no_room_of_the_limit_across_hub_shards() {
    let Some(redis) = Redis::start() else { return };
    let limits = [
        "--set",
        "cluster.hub_shards=2",
        "--set",
        "cluster.hub_on_workers=false",
        "--set",
        "signal.max_rooms=2",
        "--set",
        "signal.messages_per_second=1000000",
        "--set",
        "signal.burst=1000000",
    ];
    let node = Node::start(&redis.url(), &limits);
    runtime().block_on(async {
        let (mut a, _) = Peer::join(&node, "held").await;
        let (mut b, joined_b) = Peer::join(&node, "held").await;
        a.expect("peer-joined").await;
        let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
        // A check of a join asks for a room: one is left.
        let (status, body) = http_get(&node, "/api/join-check?room=fresh-check");
        assert_eq!(status, 200, "{body}");
        let flood = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(8);
            let mut sent = 0u64;
            while Instant::now() < deadline && sent < 2_000_000 {
                a.send(json!({"type":"signal","to":b_id,"data":sent})).await;
                sent += 1;
            }
            (a, sent)
        });
        let drain = tokio::spawn(async move { while b.ws.next().await.is_some() {} });
        let start = Instant::now();
        let (mut joined, mut refused) = (0, Vec::new());
        for i in 0..300 {
            if start.elapsed() > Duration::from_secs(7) {
                break;
            }
            let mut c = Peer::connect(&node).await;
            c.send(json!({"type":"join","room":format!("fresh-{i}")})).await;
            let answer = c
                .next()
                .await
                .unwrap_or_else(|code| panic!("closed ({code:?}) before an answer"));
            if answer["type"] == "joined" {
                joined += 1;
                c.send(json!({"type":"leave"})).await;
                // Closed once the room is gone and the count given back.
                while c.next().await.is_ok() {}
            } else {
                refused.push(answer);
            }
        }
        let (_a, sent) = flood.await.unwrap();
        drain.abort();
        assert!(sent > 1000, "the flood ran: {sent} signals");
        // Enough joins to have met the flood (the property is that none was refused): 17 to 40 in 7 s on a 2-core
        // machine running the rest of the suite beside it.
        assert!(joined >= 10, "only {joined} joins in 7 s");
        assert!(
            refused.is_empty(),
            "{} of {} fresh rooms refused: {:?}",
            refused.len(),
            joined + refused.len(),
            refused.first()
        );
        // At the limit, a check says so.
        let (_c, _) = Peer::join(&node, "fresh-last").await;
        let (status, body) = http_get(&node, "/api/join-check?room=fresh-check");
        assert!(body.contains("too-many-rooms"), "{status} {body}");
    });
}

/// A room a node takes over from a dead one lives in the shard that took it (the one its resuming peers reached);
/// newcomers whose sockets the room's hash places in another shard reach it there in-process, through the shards'
/// queues, and signal both ways with no `PUBLISH` through Redis.
#[test]
fn a_room_taken_over_lives_in_one_shard_and_the_node_s_other_shards_reach_it_in_process() {
    let Some(redis) = Redis::start() else { return };
    const ROOMS: usize = 8;
    let mut dying = Node::start(&redis.url(), &[]);
    let shards = ["--set", "cluster.hub_shards=2", "--set", "cluster.hub_on_workers=false"];
    let node = Node::start(&redis.url(), &shards);
    runtime().block_on(async {
        let mut sessions = Vec::new();
        let mut peers = Vec::new();
        for i in 0..ROOMS {
            let (a, joined) = Peer::join(&dying, &format!("t-{i}")).await;
            sessions.push((
                joined["peerId"].as_str().unwrap().to_owned(),
                joined["session"].as_str().unwrap().to_owned(),
            ));
            peers.push(a);
        }
        let dead_homes: Vec<String> = (0..ROOMS)
            .map(|i| redis.get(&format!("traverse:room:t-{i}")).unwrap())
            .collect();
        dying.kill();
        drop(peers);
        // Until the dead node's heartbeat keys expire, lookups still name it.
        let deadline = Instant::now() + WAIT;
        while dead_homes
            .iter()
            .any(|h| redis.get(&format!("traverse:node:{h}")).is_some())
        {
            assert!(Instant::now() < deadline, "the dead node's keys never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let published = redis.calls("publish");
        let mut resumed = Vec::new();
        for (_, session) in &sessions {
            let mut a = Peer::connect(&node).await;
            a.send(json!({"type":"resume","session":session,"lastSeq":1})).await;
            a.expect("resumed").await;
            resumed.push(a);
        }
        let homes: std::collections::BTreeSet<String> = (0..ROOMS)
            .map(|i| redis.get(&format!("traverse:room:t-{i}")).unwrap())
            .collect();
        assert_eq!(homes.len(), 1, "every room in the shard its resumes reached: {homes:?}");

        for (i, (a, (a_id, _))) in resumed.iter_mut().zip(&sessions).enumerate() {
            let (mut c, joined) = Peer::join(&node, &format!("t-{i}")).await;
            assert_eq!(joined["peers"][0]["id"], a_id.as_str(), "{joined}");
            let c_id = joined["peerId"].as_str().unwrap().to_owned();
            assert_eq!(a.expect("peer-joined").await["peer"]["id"], c_id.as_str());
            c.send(json!({"type":"signal","to":a_id,"data":{"n":i}})).await;
            assert_eq!(a.expect("signal").await["data"]["n"], i);
            a.send(json!({"type":"signal","to":c_id,"data":{"m":i}})).await;
            assert_eq!(c.expect("signal").await["data"]["m"], i);
        }
        assert_eq!(
            redis.calls("publish"),
            published,
            "the shards of one node reached each other through Redis"
        );
    });
}

/// With `cluster.hub_on_workers` (the default), a node's hub shards run on its worker threads, one on each, and take
/// no thread of their own (`docs/scaling.md`, "Shards"). The node is still one node of the cluster: ready, its rooms
/// homed on both shards under its name, signals both ways in every room, both peers of every room served by the
/// worker running its shard (these clients name the room only in their join), resumes that move a socket to the
/// worker holding its session without a Redis lookup, and nothing published through Redis between the two workers'
/// shards.
#[test]
fn hub_shards_on_the_worker_threads_carry_the_rooms_and_take_no_thread_of_their_own() {
    let Some(redis) = Redis::start() else { return };
    const ROOMS: usize = 16;
    let on_workers = [
        "--set",
        "limits.workers=2",
        "--set",
        "cluster.hub_shards=2",
        "--set",
        "cluster.hub_on_workers=true",
        "--set",
        "signal.max_connections_per_ip=100",
    ];
    let node = Node::start(&redis.url(), &on_workers);
    // `comm` is cut at 15 bytes: "traverse-worker" for every worker.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", node.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert_eq!(
        threads.iter().filter(|t| t.starts_with("traverse-worker")).count(),
        2,
        "{threads:?}"
    );
    assert!(
        !threads.iter().any(|t| t.starts_with("traverse-hub")),
        "a hub shard took a thread of its own: {threads:?}"
    );
    let (status, body) = http_get(&node, "/readyz");
    assert_eq!(status, 200, "{body}");

    runtime().block_on(async {
        let mut calls = Vec::new();
        for i in 0..ROOMS {
            let room = format!("w-{i}");
            let (mut a, joined_a) = Peer::join(&node, &room).await;
            let (mut b, joined_b) = Peer::join(&node, &room).await;
            a.expect("peer-joined").await;
            let a_id = joined_a["peerId"].as_str().unwrap().to_owned();
            let b_id = joined_b["peerId"].as_str().unwrap().to_owned();
            a.send(json!({"type":"signal","to":b_id,"data":{"n":i}})).await;
            assert_eq!(b.expect("signal").await["data"]["n"], i);
            b.send(json!({"type":"signal","to":a_id,"data":{"m":i}})).await;
            assert_eq!(a.expect("signal").await["data"]["m"], i);
            let session = joined_b["session"].as_str().unwrap().to_owned();
            calls.push((a, b_id, session, b));
        }
        assert_eq!(shard_homes(&redis, "w-", ROOMS).len(), 2, "one shard per worker");
        // These clients name their room only in their join frame: each socket moved, after its join, to the worker
        // that runs its room's shard, so both peers of every room are watched by the same worker.
        let pid = node.child.id();
        let epolls = common::ports_per_epoll(pid, node.http.port());
        assert_eq!(epolls.len(), 2, "sockets on both workers: {epolls:?}");
        for (a, _, _, b) in &calls {
            let (a_port, b_port) = (a.local_port(), b.local_port());
            assert!(
                epolls
                    .iter()
                    .any(|ports| ports.contains(&a_port) && ports.contains(&b_port)),
                "both peers of a room on one worker: {a_port} and {b_port} in {epolls:?}"
            );
        }
        let mut calls: Vec<_> = calls
            .into_iter()
            .map(|(a, b_id, session, _)| (a, b_id, session))
            .collect();

        // Each B's socket is gone; A signals it and B resumes on a new socket, on whichever worker accepts it. A's
        // socket may be on the other worker, so the signal reaches the shard before the resume (replayed) or after
        // it (sent live): either way B gets it once, as seq 3.
        let monitor = redis.monitor();
        let mut resumed = Vec::new();
        for (i, (a, b_id, session)) in calls.iter_mut().enumerate() {
            a.send(json!({"type":"signal","to":b_id,"data":{"n":100 + i}})).await;
            let mut b = Peer::connect(&node).await;
            b.send(json!({"type":"resume","session":session,"lastSeq":2})).await;
            let replayed = b.expect("resumed").await["replayed"].as_u64();
            assert!(matches!(replayed, Some(0 | 1)), "{replayed:?}");
            let signal = b.expect("signal").await;
            assert_eq!(
                (signal["seq"].as_u64(), signal["data"]["n"].as_u64()),
                (Some(3), Some(100 + i as u64))
            );
            resumed.push((a.local_port(), b.local_port(), b));
        }
        // A resume moves its socket to the worker holding its session too.
        let epolls = common::ports_per_epoll(pid, node.http.port());
        for (a_port, b_port, _) in &resumed {
            assert!(
                epolls
                    .iter()
                    .any(|ports| ports.contains(a_port) && ports.contains(b_port)),
                "a resumed socket on its room's worker: {a_port} and {b_port} in {epolls:?}"
            );
        }
        let lookups = monitor.lookups();
        assert!(
            lookups.is_empty(),
            "a resume looked its session up in Redis: {lookups:?}"
        );
        // The monitor sees lookups: a join of a new room claims it.
        let _control = Peer::join(&node, "w-0").await;
        assert!(!monitor.lookups().is_empty(), "a join's claim is seen");
        assert_eq!(
            redis.calls("publish"),
            0,
            "the workers' shards signal each other in-process"
        );
    });
}

/// The shards that rooms `{prefix}0..count` live in, as Redis says; checked to be shards of one node (the node's name,
/// and `{node}.{k}`).
fn shard_homes(redis: &Redis, prefix: &str, count: usize) -> std::collections::BTreeSet<String> {
    let homes: std::collections::BTreeSet<String> = (0..count)
        .map(|i| {
            redis
                .get(&format!("traverse:room:{prefix}{i}"))
                .expect("every room is claimed")
        })
        .collect();
    let base = homes.iter().min_by_key(|h| h.len()).unwrap().clone();
    assert!(
        homes.iter().all(|h| *h == base || h.starts_with(&format!("{base}."))),
        "shards are named after the node: {homes:?}"
    );
    homes
}

/// A drain that lands in the same batch as signals (they queued while the hub's journal write waited for Redis) is
/// carried out after the batch's frames are journaled: the session resumes on another node with nothing lost.
/// Before, the drain came first, the batch's frames went out unrecorded, and the resume was refused ("the client
/// claims messages the server never sent").
#[test]
fn a_drain_queued_behind_signals_comes_after_their_journal() {
    let Some(redis) = Redis::start() else { return };
    let one = ["--set", "cluster.hub_shards=1"];
    let home = Node::start(&redis.url(), &one);
    let other = Node::start(&redis.url(), &one);
    let kill = |name: &str, pid: u32| {
        let command = format!("kill -{name} {pid}");
        let status = Command::new("sh").args(["-c", &command]).status().unwrap();
        assert!(status.success(), "{command}: {status}");
    };
    runtime().block_on(async {
        let (mut a, _) = Peer::join(&home, "r").await;
        let (mut b, jb) = Peer::join(&home, "r").await;
        a.expect("peer-joined").await;
        let (b_id, b_session) = (jb["peerId"].clone(), jb["session"].clone());
        let signal = |n: u64| json!({"type":"signal","to":b_id,"data":{"n":n},"seq":n});
        a.send(signal(1)).await;
        b.expect("signal").await;

        kill("STOP", redis.child.id());
        // Handled; its journal write waits for Redis, and the hub with it. Redis must answer again well within
        // that write's 2 s, or the write fails and the node stops recording (a different failure).
        let stopped = Instant::now();
        a.send(signal(2)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Queued behind it, then the drain behind them: one batch once Redis answers.
        for n in 3..=7 {
            a.send(signal(n)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        kill("USR1", home.child.id());
        tokio::time::sleep(Duration::from_millis(100)).await;
        kill("CONT", redis.child.id());
        let window = stopped.elapsed();
        assert!(
            window < Duration::from_millis(1500),
            "Redis stopped for {window:?}: the machine is too slow for this test's window"
        );

        let mut last = 1;
        let closed = loop {
            match b.next().await {
                Ok(v) if v["type"] == "signal" => last = v["seq"].as_u64().unwrap(),
                Ok(v) => panic!("{v}"),
                Err(code) => break code,
            }
        };
        assert_eq!(
            (closed, last),
            (Some(4202), 8),
            "B's stream: joined, then the 7 signals"
        );
        // The room moves once the drained node's keys are gone; a resume before that is sent on (4202).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = Peer::connect(&other).await;
            again
                .send(json!({"type":"resume","session":b_session,"lastSeq":last}))
                .await;
            match again.next().await {
                Ok(v) if v["type"] == "resumed" => break,
                Err(Some(4202)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other_answer => panic!("the resume on the other node: {other_answer:?}\n{}", other.log()),
            }
        }
    });
}
