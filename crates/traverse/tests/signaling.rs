//! Signaling protocol v1 (`docs/protocol.md`) against the real `traverse` binary over real sockets on loopback:
//! join and presence, relay and broadcast, limits, bad input, tokens (on the socket, before the upgrade and on the
//! HTTP API), resume after a dropped socket, heartbeats, and WSS on the single port.
//!
//! Every server listens on kernel-chosen ports and is killed by PID when its handle drops; every wait is bounded,
//! so a broken server fails a test instead of hanging it. Short timers come from the command line, so the whole
//! file runs in seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The longest any single answer may take on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(10);
/// How long the server may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const SECRET: &str = "s3cret-for-signaling-tests";

// ---------------------------------------------------------------------------------------------------------------
// The server under test.

/// A running `traverse serve` with every listener on a kernel-chosen loopback port, killed by PID on drop.
struct Server {
    child: common::Process,
    /// From the `signaling: ws://…/ws` line.
    http: SocketAddr,
    /// From the `signaling: wss://…/ws` line, when started with `--single-port`.
    single: Option<SocketAddr>,
    /// The STUN/TURN listeners, from the server's own log (not from the iceServers it hands out).
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        // One worker unless the test asks for more.
        let default_workers: &[&str] = if extra.contains(&"--workers") {
            &[]
        } else {
            &["--workers", "1"]
        };
        let args: Vec<&str> = default_workers.iter().chain(extra).copied().collect();
        let common::Spawned { child, log, stdout: rx } =
            common::spawn_serve("127.0.0.1:0", &args, &[("TRAVERSE_LOG_FORMAT", "json")]);
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        // From here on, a panic drops `server`, which kills the child.
        let mut server = Server {
            child,
            http: unset,
            single: None,
            udp: unset,
            tcp: unset,
            tls: unset,
            log,
        };
        // With JSON logs everything is a JSON event on stderr (stdout stays empty): the `ready` event comes last, once
        // every listener is bound; the `signaling ready` events before it name the ws:// and wss:// endpoints.
        let deadline = Instant::now() + START_TIMEOUT;
        while !server.log().lines().any(|l| l.contains("\"ready; credentials")) {
            assert!(
                Instant::now() < deadline,
                "traverse did not become ready in {START_TIMEOUT:?}; log:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut http = None;
        for line in server.log().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                panic!("a line that is not JSON with --log-format json: {line}");
            };
            if v["fields"]["message"] != "signaling ready" {
                continue;
            }
            let url = v["fields"]["signaling"].as_str().unwrap_or_default();
            if let Some(rest) = url.strip_prefix("ws://") {
                http = Some(addr_before_ws(rest));
            } else if let Some(rest) = url.strip_prefix("wss://") {
                server.single = Some(addr_before_ws(rest));
            }
        }
        server.http = http.expect("a `signaling ready` event with a ws:// URL");
        if let Ok(line) = rx.try_recv() {
            panic!("stdout must stay empty with JSON logs, got: {line}");
        }
        // The listening log lines are on the other pipe; give its reader a moment.
        let deadline = Instant::now() + WAIT;
        loop {
            let found = (
                server.logged_addr("STUN/TURN listening on UDP"),
                server.logged_addr("STUN/TURN listening on TCP"),
                server.logged_addr("STUN/TURN listening on TLS"),
                server.logged_addr("HTTP (signaling, SDK, demo) listening"),
            );
            if let (Some(udp), Some(tcp), Some(tls), Some(http)) = found {
                (server.udp, server.tcp, server.tls) = (udp, tcp, tls);
                assert_eq!(http, server.http, "the signaling line names the HTTP listener");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no listening lines in the log:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(single) = server.single {
            let logged = server.logged_addr("single port (HTTPS/WSS, TURN over TLS and TCP) listening");
            assert_eq!(logged, Some(single), "the wss line names the single port");
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `fields.addr` of the JSON log line whose message is `message`.
    fn logged_addr(&self, message: &str) -> Option<SocketAddr> {
        self.log().lines().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            if v["fields"]["message"].as_str()? != message {
                return None;
            }
            v["fields"]["addr"].as_str()?.parse().ok()
        })
    }

    /// Waits until the server has released a socket: with `signal.max_connections_per_ip` at the number of sockets
    /// open before one dropped, `/api/join-check` answers 429 until the hub has processed the drop.
    async fn wait_for_release(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = http_get(self.http, "/api/join-check?room=probe", &[]).await;
            if r.status == 200 {
                return;
            }
            assert_eq!(r.status, 429, "join-check while the limit is reached: {r:?}");
            assert!(Instant::now() < deadline, "the server never noticed the dropped socket");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail = log.get(log.len().saturating_sub(8 * 1024)..).unwrap_or(&log);
            eprintln!("--- traverse log (tail) ---\n{tail}");
        }
    }
}

/// `127.0.0.1:P/ws   demo: …` → `127.0.0.1:P`.
fn addr_before_ws(rest: &str) -> SocketAddr {
    let hostport = rest.split("/ws").next().unwrap_or_default();
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("bad signaling address {hostport:?}: {e}"))
}

/// Runs `traverse token` as an operator would and returns the JWT.
fn mint_token(secret: &str, room: &str, identity: &str, ttl: u64) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_traverse"));
    common::clear_traverse_env(&mut cmd);
    let ttl = ttl.to_string();
    cmd.args([
        "token",
        "--secret",
        secret,
        "--room",
        room,
        "--identity",
        identity,
        "--ttl",
        &ttl,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn traverse token");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for traverse token") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("traverse token did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "traverse token failed: {status:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read token");
    let token = out.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    token
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

// ---------------------------------------------------------------------------------------------------------------
// Plain HTTP.

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// Asserts a refusal: this status, `Content-Type: application/json` and `{"ok":false,"code":code,"message"}`.
    fn assert_refusal(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["ok"], false, "{self:?}");
        assert_eq!(body["code"], code, "{self:?}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{self:?}");
    }
}

async fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let _ = tcp.set_nodelay(true);
    tcp
}

/// Reads one HTTP/1.1 response head and, unless it is a 101, its `Content-Length` body.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> HttpResponse {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(buf.len() < 64 * 1024, "response head too long");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("HTTP response timed out")
            .expect("HTTP read");
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if status != 101 {
        match length {
            Some(len) => {
                while body.len() < len {
                    let mut chunk = [0u8; 4096];
                    let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                        .await
                        .expect("HTTP body timed out")
                        .expect("HTTP read");
                    assert!(n > 0, "connection closed inside the body");
                    body.extend_from_slice(&chunk[..n]);
                }
                body.truncate(len);
            }
            None => loop {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                    .await
                    .expect("HTTP body timed out")
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            },
        }
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut tcp = tcp_connect(addr).await;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("HTTP write");
    read_response(&mut tcp).await
}

/// A WebSocket upgrade request sent by hand, to see the HTTP answer a browser would hide.
async fn upgrade_attempt(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut tcp = tcp_connect(addr).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("HTTP write");
    read_response(&mut tcp).await
}

// ---------------------------------------------------------------------------------------------------------------
// A WebSocket client (tungstenite: answers Ping frames by itself while it reads).

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug)]
enum Event {
    Text(String),
    Close(Option<u16>, String),
    /// The stream ended without a close frame, or failed.
    Ended(#[allow(dead_code, reason = "shown in failure messages")] String),
}

struct Client {
    ws: WebSocketStream<Box<dyn Io>>,
    /// WebSocket Ping frames received so far.
    pings: usize,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client::over(Box::new(tcp_connect(addr).await), &format!("ws://{addr}/ws"), false).await
    }

    /// Handshakes over `io`; with `subprotocol`, asks for `traverse.v1` and asserts the server chose it.
    async fn over(io: Box<dyn Io>, url: &str, subprotocol: bool) -> Client {
        let mut request = url.into_client_request().expect("request");
        if subprotocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "traverse.v1".parse().unwrap());
        }
        let (ws, response) = timeout(WAIT, tokio_tungstenite::client_async(request, io))
            .await
            .unwrap_or_else(|_| panic!("WebSocket handshake with {url} timed out"))
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        if subprotocol {
            assert_eq!(
                response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("traverse.v1")
            );
        }
        Client { ws, pings: 0 }
    }

    async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .expect("send timed out")
            .expect("send");
    }

    async fn send(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends without caring whether the socket is still open.
    async fn try_send(&mut self, v: &Value) {
        let _ = timeout(WAIT, self.ws.send(Message::text(v.to_string()))).await;
    }

    async fn send_frame(&mut self, frame: WsFrame) {
        timeout(WAIT, self.ws.send(Message::Frame(frame)))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// The next text frame, close frame or end of stream; `None` if nothing came within `wait`.
    async fn event(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            return Some(match next {
                Some(Ok(Message::Text(t))) => Event::Text(t.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(f) => Event::Close(Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => Event::Close(None, String::new()),
                },
                Some(Ok(Message::Ping(_))) => {
                    self.pings += 1;
                    continue;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => panic!("the server sent a binary frame: {b:?}"),
                Some(Err(e)) => Event::Ended(e.to_string()),
                None => Event::Ended("end of stream".into()),
            });
        }
    }

    async fn next_text(&mut self) -> String {
        match self.event(WAIT).await {
            Some(Event::Text(t)) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn next(&mut self) -> Value {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    async fn expect(&mut self, ty: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], ty, "expected `{ty}`, got {v}");
        assert!(v["seq"].is_u64(), "every server message carries seq: {v}");
        v
    }

    async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }

    /// The next frame is a close frame with `code`; returns its reason.
    async fn expect_close(&mut self, code: u16) -> String {
        match self.event(WAIT).await {
            Some(Event::Close(Some(c), reason)) => {
                assert_eq!(c, code, "close code (reason {reason:?})");
                reason
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    /// Sends `ping` and returns the `pong`'s seq. The hub answers in order, so this also proves nothing else was
    /// queued for this socket before the pong.
    async fn pong(&mut self) -> u64 {
        self.send(&json!({"type": "ping"})).await;
        self.expect("pong").await["seq"].as_u64().unwrap()
    }

    async fn join(&mut self, room: &str, meta: Option<Value>, token: Option<&str>) -> Value {
        let mut msg = json!({"type": "join", "room": room});
        if let Some(meta) = meta {
            msg["meta"] = meta;
        }
        if let Some(token) = token {
            msg["token"] = token.into();
        }
        self.send(&msg).await;
        let joined = self.expect("joined").await;
        assert_eq!(joined["seq"], 1, "joined opens the stream: {joined}");
        joined
    }

    /// Every event within `window` (stops early at a close or the end of the stream).
    async fn collect(&mut self, window: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + window;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.event(left).await else { break };
            let end = !matches!(event, Event::Text(_));
            got.push(event);
            if end {
                break;
            }
        }
        got
    }

    /// A clean close: send a close frame, read until the server's answer.
    async fn close(mut self) {
        let _ = timeout(WAIT, self.ws.close(None)).await;
        let _ = timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }
}

fn id_of(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .to_owned()
}

/// `iceServers` in `joined`: STUN and TURN URLs naming the ports the server listens on and a TURN REST credential
/// for this peer that the TURN side accepts.
fn check_ice_servers(joined: &Value, server: &Server) {
    let peer = id_of(joined, "peerId");
    let list = joined["iceServers"].as_array().expect("iceServers is an array");
    let urls: Vec<&str> = list
        .iter()
        .flat_map(|s| s["urls"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let mut expected = vec![
        format!("stun:127.0.0.1:{}", server.udp.port()),
        format!("turn:127.0.0.1:{}?transport=udp", server.udp.port()),
        format!("turn:127.0.0.1:{}?transport=tcp", server.tcp.port()),
        format!("turns:127.0.0.1:{}?transport=tcp", server.tls.port()),
    ];
    if let Some(single) = server.single {
        expected.push(format!("turns:127.0.0.1:{}?transport=tcp", single.port()));
    }
    for url in &expected {
        assert!(urls.contains(&url.as_str()), "{url} missing from {urls:?}");
    }
    for url in urls.iter().filter(|u| u.starts_with("stun:")) {
        assert!(!url.contains('?'), "stun: URLs carry no ?transport: {url}");
    }
    let turn = list
        .iter()
        .find(|s| {
            s["urls"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u.as_str().is_some_and(|u| u.starts_with("turn:"))))
        })
        .expect("an entry with turn: URLs");
    let username = turn["username"].as_str().expect("username");
    let credential = turn["credential"].as_str().expect("credential");
    assert!(!credential.is_empty());
    let (expiry, user) = username.split_once(':').expect("username is <expiry>:<peerId>");
    assert_eq!(user, peer, "the credential is minted for this peer");
    let expiry: u64 = expiry.parse().expect("expiry is Unix seconds");
    assert!(expiry > unix_now(), "the credential has not expired: {expiry}");
    // The TURN side accepts it: an Allocate over UDP with it succeeds.
    let mut turn_client = common::TurnClient::new(common::Conn::udp(server.udp), username, credential);
    let response = turn_client.allocate(false);
    assert_eq!(
        response.class(),
        stun::Class::Success,
        "Allocate with the handed-out credential: {}",
        response.describe()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// A bare WebSocket client that never answers anything: for the heartbeat timeout.

struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(addr: SocketAddr) -> RawWs {
        let mut tcp = tcp_connect(addr).await;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.expect("write");
        // Read the head byte by byte so no frame bytes are swallowed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            let n = timeout(WAIT, tcp.read(&mut b))
                .await
                .expect("handshake timed out")
                .expect("read");
            assert_eq!(n, 1, "closed during the handshake");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "Sec-WebSocket-Accept: {head}"
        );
        RawWs { tcp, buf: Vec::new() }
    }

    /// One masked text frame.
    async fn send_text(&mut self, text: &str) {
        self.tcp.write_all(&masked(0x81, text.as_bytes())).await.expect("write");
    }

    /// The bytes as they are, `step` at a time with a pause between, so that the server reads them in pieces.
    async fn send_raw(&mut self, bytes: &[u8], step: usize) {
        for piece in bytes.chunks(step) {
            self.tcp.write_all(piece).await.expect("write");
            if piece.len() < bytes.len() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// The next frame that is not a Ping.
    async fn frame_not_ping(&mut self) -> (u8, Vec<u8>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.frame(deadline).await {
                Some((0x9, _)) => continue,
                Some(frame) => return frame,
                None => panic!("no frame within {WAIT:?}"),
            }
        }
    }
}

/// A client frame with the given first byte (FIN and opcode), masked, payload under 126 bytes.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![b0, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

impl RawWs {
    /// The next frame as (opcode, payload), or `None` at the deadline or the end of the stream.
    async fn frame(&mut self, deadline: tokio::time::Instant) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4),
                    127 => panic!("unexpectedly long frame"),
                    126 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Join, presence, relay, broadcast, leave.

#[tokio::test]
async fn join_presence_relay_broadcast_and_leave() {
    let server = Server::start(&[
        "--set",
        "signal.heartbeat_interval=7",
        "--set",
        "signal.resume_grace=9",
        "--set",
        "signal.messages_per_second=40",
        "--set",
        "signal.burst=90",
    ]);

    let mut a = Client::over(
        Box::new(tcp_connect(server.http).await),
        &format!("ws://{}/ws", server.http),
        true,
    )
    .await;
    let ja = a.join("lobby", Some(json!({"name": "Ann"})), None).await;
    let a_id = id_of(&ja, "peerId");
    let a_session = id_of(&ja, "session");
    assert!(a_id.starts_with("p_") && a_id.len() > 2, "{ja}");
    assert!(a_session.starts_with("s_") && a_session.len() > 2, "{ja}");
    assert_eq!(ja["room"], "lobby");
    assert_eq!(ja["peers"], json!([]), "first in the room");
    assert_eq!(ja["heartbeatMs"], 7000, "from signal.heartbeat_interval=7");
    assert_eq!(ja["resumeGraceMs"], 9000, "from signal.resume_grace=9");
    // The rate the SDK paces its sends to.
    assert_eq!(
        (ja["messagesPerSecond"].as_u64(), ja["messageBurst"].as_u64()),
        (Some(40), Some(90))
    );
    check_ice_servers(&ja, &server);

    // Presence: B sees A in `peers`; A hears `peer-joined`.
    let mut b = Client::connect(server.http).await;
    let jb = b.join("lobby", Some(json!({"name": "Bob"})), None).await;
    let b_id = id_of(&jb, "peerId");
    assert_ne!(b_id, a_id);
    assert_ne!(id_of(&jb, "session"), a_session);
    assert_eq!(jb["peers"], json!([{"id": a_id, "meta": {"name": "Ann"}}]));
    let pj = a.expect("peer-joined").await;
    assert_eq!(pj["seq"], 2);
    assert_eq!(pj["peer"], json!({"id": b_id, "meta": {"name": "Bob"}}));

    // Signal: `data` is opaque and arrives byte for byte (whitespace, number spellings, escapes, key order and
    // non-ASCII text all survive; a parse and re-serialisation would change each of them).
    const DATA: &str = concat!(
        r#"{ "sdp" : {"type":"offer","sdp":"v=0\r\no=- 4611 2 IN IP4 127.0.0.1\r\n"},"#,
        r#" "z":1, "a":[1.0, 1e2, -0.0, 12345678901234567890123],"#,
        r#" "s":"\u00e9\ud83d\ude00\"\/", "u":"é—漢字", "deep":{"x":{"y":{"z":[[],{},[{"k":null}]]}}}  }"#
    );
    b.send_text(format!(r#"{{"type":"signal","to":"{a_id}","data":{DATA},"id":"m-1"}}"#))
        .await;
    let text = a.next_text().await;
    let raw: HashMap<String, Box<RawValue>> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(raw["data"].get(), DATA, "data preserved byte for byte");
    let sig: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(sig["type"], "signal");
    assert_eq!(sig["seq"], 3);
    assert_eq!(sig["from"], b_id.as_str());

    // Broadcast reaches every other peer, not the sender.
    let mut c = Client::connect(server.http).await;
    let jc = c.join("lobby", None, None).await;
    let c_id = id_of(&jc, "peerId");
    assert_eq!(
        jc["peers"],
        json!([{"id": a_id, "meta": {"name": "Ann"}}, {"id": b_id, "meta": {"name": "Bob"}}]),
        "peers in join order"
    );
    assert_eq!(a.expect("peer-joined").await["peer"], json!({"id": c_id, "meta": {}}));
    assert_eq!(b.expect("peer-joined").await["seq"], 2);
    a.send(&json!({"type": "broadcast", "data": {"chat": "hello", "n": [1, 2]}}))
        .await;
    for (peer, seq) in [(&mut b, 3), (&mut c, 2)] {
        let m = peer.expect("broadcast").await;
        assert_eq!(m["seq"], seq, "{m}");
        assert_eq!(m["from"], a_id.as_str());
        assert_eq!(m["data"], json!({"chat": "hello", "n": [1, 2]}));
    }
    assert_eq!(a.pong().await, 4, "A's stream holds no copy of its own broadcast");

    // A signal to nobody: an error in the stream, the socket stays open.
    a.send(&json!({"type": "signal", "to": "p_0000", "data": {}, "id": "m-43"}))
        .await;
    let e = a.expect_error("unknown-peer").await;
    assert_eq!((e["seq"].as_u64(), e["id"].as_str()), (Some(5), Some("m-43")), "{e}");
    assert_eq!(a.pong().await, 5);

    // Leave: close 1000, the others hear peer-left, B is gone for good.
    b.send(&json!({"type": "leave"})).await;
    b.expect_close(1000).await;
    for (peer, seq) in [(&mut a, 6), (&mut c, 3)] {
        let m = peer.expect("peer-left").await;
        assert_eq!(m["seq"], seq, "{m}");
        assert_eq!(m["peerId"], b_id.as_str());
    }
    a.send(&json!({"type": "signal", "to": b_id, "data": {}})).await;
    assert_eq!(a.expect_error("unknown-peer").await["seq"], 7);

    // Without a signaling secret, /api/ice-servers needs no token.
    let r = http_get(server.http, "/api/ice-servers", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.json()["iceServers"].as_array().is_some_and(|l| !l.is_empty()),
        "{r:?}"
    );
    assert!(r.json()["ttl"].as_u64().is_some_and(|t| t > 0), "{r:?}");
    // The TURN REST API's shape beside it: the same credential, and every URL.
    let body = r.json();
    let turn = body["iceServers"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s.get("username").is_some()))
        .cloned()
        .expect("a TURN entry");
    assert_eq!(body["username"], turn["username"], "{body}");
    assert_eq!(body["password"], turn["credential"], "{body}");
    let uris: Vec<&str> = body["uris"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert!(
        uris.iter().any(|u| u.starts_with("stun:")) && uris.iter().any(|u| u.starts_with("turn:")),
        "{body}"
    );
}

/// `ice.extra`: external servers come after this server's own in a join's `iceServers` and in `/api/ice-servers`,
/// a TURN REST secret's credential minted for the peer (and accepted by HMAC as coturn checks it), a static one as
/// given; the REST fields stay this server's.
#[tokio::test]
async fn extra_ice_servers_follow_the_server_s_own_with_their_credentials() {
    const EXTERNAL_SECRET: &str = "external-turn-secret-0123456789";
    let extra = format!(
        r#"ice.extra=[{{"urls":["turns:turn.example.com:443?transport=tcp"],"secret":"{EXTERNAL_SECRET}"}},{{"urls":["turn:198.51.100.7:3478"],"username":"fixed","credential":"pw"}},{{"urls":["stun:stun.example.com:3478"]}}]"#
    );
    let server = Server::start(&["--set", &extra]);
    let mut c = Client::connect(server.http).await;
    let joined = c.join("extra", None, None).await;
    let peer = id_of(&joined, "peerId");
    let list = joined["iceServers"].as_array().expect("iceServers");
    let urls = |e: &Value| e["urls"][0].as_str().unwrap_or_default().to_owned();
    let n = list.len();
    assert!(n >= 5, "{list:?}");
    assert!(urls(&list[0]).starts_with("stun:127.0.0.1"), "own first: {list:?}");
    assert_eq!(urls(&list[n - 3]), "turns:turn.example.com:443?transport=tcp");
    assert_eq!(urls(&list[n - 2]), "turn:198.51.100.7:3478");
    assert_eq!(urls(&list[n - 1]), "stun:stun.example.com:3478");
    let minted = &list[n - 3];
    let username = minted["username"].as_str().expect("a minted username");
    let (expiry, user) = username.split_once(':').expect("<expiry>:<peer>");
    assert_eq!(user, peer);
    assert!(expiry.parse::<u64>().is_ok_and(|e| e > unix_now()));
    assert_eq!(
        minted["credential"].as_str(),
        Some(turn::rest_password(EXTERNAL_SECRET.as_bytes(), username).as_str()),
        "HMAC-SHA1 of the username with the external secret"
    );
    assert_eq!(
        (list[n - 2]["username"].as_str(), list[n - 2]["credential"].as_str()),
        (Some("fixed"), Some("pw"))
    );
    assert!(list[n - 1].get("username").is_none());

    let r = http_get(server.http, "/api/ice-servers", &[]).await;
    let body = r.json();
    let api = body["iceServers"].as_array().expect("iceServers");
    assert_eq!(urls(&api[api.len() - 1]), "stun:stun.example.com:3478", "{body}");
    let uris: Vec<&str> = body["uris"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !uris
            .iter()
            .any(|u| u.contains("example.com") || u.contains("198.51.100.7")),
        "{uris:?}"
    );

    // A bad entry is refused by check-config, with what is wrong.
    let path = std::env::temp_dir().join(format!("traverse-extra-ice-{}.toml", std::process::id()));
    std::fs::write(&path, "[[ice.extra]]\nurls = [\"turn:turn.example.com:3478\"]\n").expect("write");
    let out = common::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_traverse"))
            .arg("check-config")
            .arg(&path),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_file(&path);
    assert!(out.status.is_some_and(|s| !s.success()), "{out:?}");
    assert!(
        out.all()
            .contains("a TURN server needs username and credential, or secret"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input.

#[tokio::test]
async fn bad_input_is_answered_and_the_socket_stays_open() {
    let server = Server::start(&[]);
    let mut c = Client::connect(server.http).await;

    // Before a join, errors are outside any stream: seq 0.
    for (frame, code) in [
        ("{not json", "bad-json"),
        ("", "bad-json"),
        ("[1,2]", "bad-message"),
        (r#"{"type":"dance"}"#, "unknown-type"),
        (r#"{"room":"r"}"#, "bad-message"),
        (r#"{"type":"join"}"#, "bad-message"),
        (r#"{"type":"join","room":5}"#, "bad-message"),
        (r#"{"type":"join","room":""}"#, "bad-message"),
        (r#"{"type":"signal","to":"p_1","data":{}}"#, "not-joined"),
        (r#"{"type":"broadcast","data":{}}"#, "not-joined"),
        (r#"{"type":"leave"}"#, "not-joined"),
    ] {
        c.send_text(frame).await;
        let e = c.expect_error(code).await;
        assert_eq!(e["seq"], 0, "{frame}: {e}");
    }
    assert_eq!(c.pong().await, 0);

    // Still open: the join works, and later errors are numbered in the stream.
    c.join("r", None, None).await;
    for (seq, (frame, code)) in [
        (r#"{"type":"signal","data":{}}"#, "bad-message"),
        (r#"{"type":"signal","to":"x"}"#, "bad-message"),
        (r#"{"type":"broadcast"}"#, "bad-message"),
        (r#"{"type":"resume","session":"s_1","lastSeq":0}"#, "already-joined"),
        (r#"{"type":"join","room":"r"}"#, "already-joined"),
        (r#"{"type":"nope"}"#, "unknown-type"),
        ("nope", "bad-json"),
        (r#"{"type":"signal","to":5,"data":{}}"#, "bad-message"),
    ]
    .into_iter()
    .enumerate()
    {
        c.send_text(frame).await;
        let e = c.expect_error(code).await;
        assert_eq!(e["seq"], seq as u64 + 2, "{frame}: {e}");
    }
    assert_eq!(c.pong().await, 9);
}

#[tokio::test]
async fn too_many_errors_close_4003() {
    let server = Server::start(&[]);
    let mut c = Client::connect(server.http).await;
    let mut errors = 0;
    let close = loop {
        c.send_text("{oops").await;
        match c.event(WAIT).await {
            Some(Event::Text(t)) => {
                let e: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(e["code"], "bad-json", "{e}");
                errors += 1;
                assert!(errors <= 100, "still open after 100 errors");
            }
            Some(Event::Close(code, _)) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close, Some(4003));
    assert!(
        errors >= 3,
        "a few errors are tolerated before the close (got {errors})"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Limits.

/// RFC 6455 as a client sends it: frames cut anywhere, fragments, pings between fragments — and what breaks it.
#[tokio::test]
async fn websocket_frames_in_pieces_fragments_pings_and_broken_rules() {
    let server = Server::start(&[]);
    let text = |frame: &(u8, Vec<u8>)| -> Value {
        assert_eq!(frame.0, 0x1, "a text frame: {frame:?}");
        serde_json::from_slice(&frame.1).expect("JSON")
    };
    let close_code = |frame: &(u8, Vec<u8>)| -> u16 {
        assert_eq!(frame.0, 0x8, "a close frame: {frame:?}");
        u16::from_be_bytes([frame.1[0], frame.1[1]])
    };

    let mut a = RawWs::connect(server.http).await;
    // A join one byte per write: the server puts the frame together across reads.
    a.send_raw(&masked(0x81, br#"{"type":"join","room":"raw"}"#), 1).await;
    assert_eq!(text(&a.frame_not_ping().await)["type"], "joined");
    // A Ping is answered with its payload.
    a.send_raw(&masked(0x89, b"are you there"), 3).await;
    assert_eq!(a.frame_not_ping().await, (0xa, b"are you there".to_vec()));
    // A message in three fragments with a Ping between two of them, and two frames in one write.
    let mut burst = masked(0x01, br#"{"type":"#);
    burst.extend(masked(0x89, b"mid"));
    burst.extend(masked(0x00, br#""ping"#));
    burst.extend(masked(0x80, br#""}"#));
    burst.extend(masked(0x81, br#"{"type":"ping"}"#));
    a.send_raw(&burst, 5).await;
    assert_eq!(a.frame_not_ping().await, (0xa, b"mid".to_vec()));
    assert_eq!(text(&a.frame_not_ping().await)["type"], "pong");
    assert_eq!(text(&a.frame_not_ping().await)["type"], "pong");
    // An unmasked frame: 1002.
    a.send_raw(&[0x81, 0x02, b'{', b'}'], 4).await;
    assert_eq!(close_code(&a.frame_not_ping().await), 1002);

    // Text that is not UTF-8: 1007.
    let mut b = RawWs::connect(server.http).await;
    b.send_raw(&masked(0x81, &[b'"', 0xff, 0xfe, b'"']), 64).await;
    assert_eq!(close_code(&b.frame_not_ping().await), 1007);

    // The client closes: the server answers with the same code, then ends the connection.
    let mut c = RawWs::connect(server.http).await;
    c.send_raw(&masked(0x88, &[0x0f, 0xa0, b'b', b'y', b'e']), 64).await;
    assert_eq!(close_code(&c.frame_not_ping().await), 4000);
    assert_eq!(
        c.frame(tokio::time::Instant::now() + WAIT).await,
        None,
        "the server ends the connection"
    );

    // Not a WebSocket handshake: JSON errors before any socket exists.
    let mut tcp = tcp_connect(server.http).await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.http
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let r = read_response(&mut tcp).await;
    assert_eq!(r.status, 426, "{}", r.body);
    assert!(r.body.contains("websocket-version"), "{}", r.body);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("sec-websocket-version") && v == "13"),
        "{:?}",
        r.headers
    );
    let plain = http_get(server.http, "/ws", &[]).await;
    assert_eq!(plain.status, 426, "{}", plain.body);
    assert!(plain.body.contains("not-a-websocket"), "{}", plain.body);
}

#[tokio::test]
async fn frames_over_the_message_size_close_1009() {
    let server = Server::start(&["--set", "signal.max_message_bytes=1024"]);
    let pad = |total: usize| {
        let frame = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(total - 24));
        assert_eq!(frame.len(), total);
        frame
    };

    let mut a = Client::connect(server.http).await;
    a.join("big", None, None).await;
    a.send_text(pad(1024)).await;
    assert_eq!(a.expect("pong").await["seq"], 1, "a frame at the limit is served");
    a.send_text(pad(1025)).await;
    a.expect_close(1009).await;

    // A message over the limit in two fragments, each under it.
    let mut b = Client::connect(server.http).await;
    b.join("big", None, None).await;
    let text = pad(1200).into_bytes();
    b.send_frame(WsFrame::message(
        text[..600].to_vec(),
        OpCode::Data(OpData::Text),
        false,
    ))
    .await;
    b.send_frame(WsFrame::message(
        text[600..].to_vec(),
        OpCode::Data(OpData::Continue),
        true,
    ))
    .await;
    b.expect_close(1009).await;

    // Far over the limit: the server refuses after the frame header, without reading the payload. The write may
    // fail once the server has closed, but the close frame must still arrive first.
    let mut c = Client::connect(server.http).await;
    c.join("big", None, None).await;
    c.try_send(&json!({"type": "ping", "pad": "y".repeat(256 * 1024)}))
        .await;
    c.expect_close(1009).await;
}

#[tokio::test]
async fn rate_limit_drops_then_closes_4100() {
    let server = Server::start(&["--set", "signal.messages_per_second=5", "--set", "signal.burst=5"]);

    // A short burst over the rate: some dropped, one rate-limited error, the socket stays open.
    let mut a = Client::connect(server.http).await;
    a.join("rate", None, None).await;
    for _ in 0..8 {
        a.send(&json!({"type": "ping"})).await;
    }
    let events = a.collect(Duration::from_millis(700)).await;
    let mut pongs = 0;
    let mut limited = 0;
    for event in &events {
        let Event::Text(t) = event else {
            panic!("the socket closed after a short burst: {events:?}")
        };
        let v: Value = serde_json::from_str(t).unwrap();
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["code"] == "rate-limited" => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(limited >= 1, "a rate-limited error: {events:?}");
    assert!(pongs < 8, "some pings were dropped: {events:?}");
    assert!((1..=6).contains(&pongs), "the burst was served: {events:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.pong().await;

    // Sustained: closed with 4100.
    let mut b = Client::connect(server.http).await;
    b.join("rate", None, None).await;
    for _ in 0..25 {
        b.try_send(&json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let close = loop {
        match b.event(WAIT).await {
            Some(Event::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") if v["code"] == "rate-limited" => limited += 1,
                    _ => panic!("unexpected {v}"),
                }
            }
            Some(Event::Close(code, _)) => break code,
            other => panic!("no close 4100: {other:?}"),
        }
    };
    assert_eq!(close, Some(4100));
    assert!(limited >= 1, "warned with rate-limited before the close");
    assert!(pongs <= 6, "{pongs} pongs: the rate was not enforced");
}

#[tokio::test]
async fn room_full_closes_4102() {
    let server = Server::start(&["--set", "signal.max_peers_per_room=2"]);
    let mut a = Client::connect(server.http).await;
    a.join("full", None, None).await;
    let mut b = Client::connect(server.http).await;
    b.join("full", None, None).await;

    upgrade_attempt(server.http, "/ws?room=full")
        .await
        .assert_refusal(503, "room-full");
    http_get(server.http, "/api/join-check?room=full", &[])
        .await
        .assert_refusal(503, "room-full");
    let ok = http_get(server.http, "/api/join-check?room=other", &[]).await;
    assert_eq!((ok.status, ok.json()), (200, json!({"ok": true})), "{ok:?}");

    let mut c = Client::connect(server.http).await;
    c.send(&json!({"type": "join", "room": "full"})).await;
    c.expect_error("room-full").await;
    c.expect_close(4102).await;
    a.expect("peer-joined").await;
    assert_eq!(a.pong().await, 2, "A heard nothing of the refused peer");

    // A place frees up when a peer leaves.
    b.send(&json!({"type": "leave"})).await;
    b.expect_close(1000).await;
    a.expect("peer-left").await;
    let ok = http_get(server.http, "/api/join-check?room=full", &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let mut d = Client::connect(server.http).await;
    assert_eq!(
        d.join("full", None, None).await["peers"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn too_many_rooms_closes_4103() {
    let server = Server::start(&["--set", "signal.max_rooms=1"]);
    let mut a = Client::connect(server.http).await;
    a.join("one", None, None).await;

    upgrade_attempt(server.http, "/ws?room=two")
        .await
        .assert_refusal(503, "too-many-rooms");
    http_get(server.http, "/api/join-check?room=two", &[])
        .await
        .assert_refusal(503, "too-many-rooms");

    let mut b = Client::connect(server.http).await;
    b.send(&json!({"type": "join", "room": "two"})).await;
    b.expect_error("too-many-rooms").await;
    b.expect_close(4103).await;

    // The existing room still takes peers.
    let mut c = Client::connect(server.http).await;
    c.join("one", None, None).await;
}

#[tokio::test]
async fn connections_per_ip_refused_with_429_before_the_upgrade() {
    let server = Server::start(&["--set", "signal.max_connections_per_ip=2"]);
    let mut a = Client::connect(server.http).await;
    assert_eq!(a.pong().await, 0);
    let mut b = Client::connect(server.http).await;
    assert_eq!(b.pong().await, 0);

    let r = upgrade_attempt(server.http, "/ws").await;
    r.assert_refusal(429, "too-many-connections");
    // The operator is told, and told what to raise when the address is a busy office or a carrier NAT.
    let deadline = Instant::now() + WAIT;
    while !server
        .log()
        .contains("If many users share that address (an office, a carrier NAT), raise it")
    {
        assert!(
            Instant::now() < deadline,
            "no warning for the refused socket: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.log().contains("signal.max_connections_per_ip"),
        "{}",
        server.log()
    );
    http_get(server.http, "/api/join-check?room=x", &[])
        .await
        .assert_refusal(429, "too-many-connections");

    // Closing one frees its place.
    a.close().await;
    server.wait_for_release().await;
    let mut c = Client::connect(server.http).await;
    c.join("x", None, None).await;
    b.join("x", None, None).await;
}

/// An upgrade that says which client a proxy forwards; the socket is kept open when it was accepted.
async fn upgrade_forwarded(addr: SocketAddr, client: &str) -> (HttpResponse, TcpStream) {
    let mut tcp = tcp_connect(addr).await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: {client}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("HTTP write");
    (read_response(&mut tcp).await, tcp)
}

/// Behind a reverse proxy every user arrives from the proxy's address: with it in `web.trusted_proxies`, each
/// socket counts against the client the proxy names (two here), not against the proxy; without it, the header is
/// anyone's word and ignored.
#[tokio::test]
async fn sockets_behind_a_trusted_proxy_count_against_the_client_it_names() {
    let server = Server::start(&[
        "--set",
        "signal.max_connections_per_ip=2",
        "--set",
        "web.trusted_proxies=127.0.0.0/8",
    ]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (r, tcp) = upgrade_forwarded(server.http, "198.51.100.1").await;
        assert_eq!(r.status, 101, "{r:?}");
        held.push(tcp);
    }
    let (r, _) = upgrade_forwarded(server.http, "198.51.100.1").await;
    r.assert_refusal(429, "too-many-connections");
    assert!(r.body.contains("198.51.100.1"), "the client is named: {}", r.body);
    let (r, tcp) = upgrade_forwarded(server.http, "198.51.100.2").await;
    assert_eq!(r.status, 101, "another client behind the same proxy: {r:?}");
    held.push(tcp);

    let untrusting = Server::start(&["--set", "signal.max_connections_per_ip=2"]);
    let mut held = Vec::new();
    for client in ["198.51.100.1", "198.51.100.2"] {
        let (r, tcp) = upgrade_forwarded(untrusting.http, client).await;
        assert_eq!(r.status, 101, "{r:?}");
        held.push(tcp);
    }
    let (r, _) = upgrade_forwarded(untrusting.http, "198.51.100.3").await;
    r.assert_refusal(429, "too-many-connections");
}

// ---------------------------------------------------------------------------------------------------------------
// Tokens.

#[tokio::test]
async fn tokens_on_the_socket() {
    let server = Server::start(&["--signal-secret", SECRET]);
    let wrong_key = mint_token("another-secret-entirely", "meet", "eve", 600);
    let expired = mint_token(SECRET, "meet", "ann", 0);
    let other_room = mint_token(SECRET, "elsewhere", "ann", 600);
    for (token, code) in [
        (None, "token-required"),
        (Some(wrong_key.as_str()), "token-invalid"),
        (Some("not-a-jwt"), "token-invalid"),
        (Some(expired.as_str()), "token-expired"),
        (Some(other_room.as_str()), "token-room-mismatch"),
    ] {
        let mut c = Client::connect(server.http).await;
        let mut join = json!({"type": "join", "room": "meet"});
        if let Some(token) = token {
            join["token"] = token.into();
        }
        c.send(&join).await;
        c.expect_error(code).await;
        c.expect_close(4001).await;
    }

    // Valid tokens from `traverse token`: the identity is shown as meta.identity and cannot be forged in meta.
    let ann = mint_token(SECRET, "meet", "ann@example.com", 600);
    let bob = mint_token(SECRET, "*", "bob@example.com", 600);
    let mut a = Client::connect(server.http).await;
    let ja = a.join("meet", Some(json!({"name": "Ann"})), Some(&ann)).await;
    let mut b = Client::connect(server.http).await;
    let jb = b
        .join("meet", Some(json!({"identity": "mallory@example.com"})), Some(&bob))
        .await;
    assert_eq!(
        jb["peers"],
        json!([{"id": ja["peerId"], "meta": {"name": "Ann", "identity": "ann@example.com"}}])
    );
    let pj = a.expect("peer-joined").await;
    assert_eq!(
        pj["peer"],
        json!({"id": jb["peerId"], "meta": {"identity": "bob@example.com"}})
    );
}

#[tokio::test]
async fn tokens_before_the_upgrade_and_on_the_http_api() {
    let server = Server::start(&["--signal-secret", SECRET]);
    let valid = mint_token(SECRET, "r", "ann@example.com", 600);
    let expired = mint_token(SECRET, "r", "ann@example.com", 0);

    upgrade_attempt(server.http, "/ws?room=r&token=bad")
        .await
        .assert_refusal(401, "token-invalid");
    upgrade_attempt(server.http, "/ws?room=r")
        .await
        .assert_refusal(401, "token-required");
    let accepted = upgrade_attempt(server.http, &format!("/ws?room=r&token={valid}")).await;
    assert_eq!(accepted.status, 101, "{accepted:?}");

    let check = |query: String| {
        let addr = server.http;
        async move { http_get(addr, &format!("/api/join-check?{query}"), &[]).await }
    };
    check("room=r".into()).await.assert_refusal(401, "token-required");
    check("room=r&token=bad".into())
        .await
        .assert_refusal(401, "token-invalid");
    check(format!("room=r&token={expired}"))
        .await
        .assert_refusal(401, "token-expired");
    check(format!("room=other&token={valid}"))
        .await
        .assert_refusal(403, "token-room-mismatch");
    check(String::new()).await.assert_refusal(400, "bad-message");
    let ok = check(format!("room=r&token={valid}")).await;
    assert_eq!((ok.status, ok.json()), (200, json!({"ok": true})), "{ok:?}");

    http_get(server.http, "/api/ice-servers", &[])
        .await
        .assert_refusal(401, "token-required");
    http_get(server.http, "/api/ice-servers", &[("Authorization", "Bearer bad")])
        .await
        .assert_refusal(401, "token-invalid");
    let bearer = format!("Bearer {valid}");
    for r in [
        http_get(server.http, "/api/ice-servers", &[("Authorization", &bearer)]).await,
        http_get(server.http, &format!("/api/ice-servers?token={valid}"), &[]).await,
    ] {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
        let body = r.json();
        assert!(body["ttl"].as_u64().is_some_and(|t| t > 0), "{body}");
        let turn = body["iceServers"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["credential"].is_string()))
            .unwrap_or_else(|| panic!("a credential in {body}"));
        let username = turn["username"].as_str().unwrap();
        assert!(
            username.ends_with(":ann@example.com"),
            "minted for the token's identity: {username}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Resume.

/// A and B in `room`; A has processed seq 1 (joined) and 2 (peer-joined B).
async fn pair(server: &Server, room: &str) -> (Client, Value, Client, Value) {
    let mut a = Client::connect(server.http).await;
    let ja = a.join(room, None, None).await;
    let mut b = Client::connect(server.http).await;
    let jb = b.join(room, None, None).await;
    assert_eq!(a.expect("peer-joined").await["seq"], 2);
    (a, ja, b, jb)
}

#[tokio::test]
async fn resume_after_a_dropped_socket_replays_every_missed_message_in_order() {
    // Two sockets per IP: `wait_for_release` can tell when the server has noticed A's drop.
    let server = Server::start(&[
        "--set",
        "signal.max_connections_per_ip=2",
        "--set",
        "signal.resume_grace=20",
    ]);
    let (a, ja, mut b, jb) = pair(&server, "resume").await;
    let (a_id, b_id) = (id_of(&ja, "peerId"), id_of(&jb, "peerId"));

    // Abrupt: the TCP socket goes without a close frame.
    drop(a);
    server.wait_for_release().await;

    const N: u64 = 6;
    for n in 0..N {
        b.send(&json!({"type": "signal", "to": a_id, "id": format!("m-{n}"),
                       "data": {"n": n, "candidate": "x".repeat(n as usize)}}))
            .await;
    }
    assert_eq!(
        b.pong().await,
        1,
        "B's stream is untouched: no peer-left, no undeliverable"
    );

    let mut a = Client::connect(server.http).await;
    a.send(&json!({"type": "resume", "session": ja["session"], "lastSeq": 2}))
        .await;
    let resumed = a.expect("resumed").await;
    assert_eq!(resumed["replayed"], N, "{resumed}");
    assert_eq!(
        resumed["seq"],
        2 + N,
        "resumed carries the newest stream seq: {resumed}"
    );
    assert_eq!(resumed["peerId"], a_id.as_str());
    for n in 0..N {
        let m = a.expect("signal").await;
        assert_eq!(m["seq"], 3 + n, "{m}");
        assert_eq!(m["from"], b_id.as_str());
        assert_eq!(m["data"], json!({"n": n, "candidate": "x".repeat(n as usize)}));
    }
    assert_eq!(a.pong().await, 2 + N, "nothing more was queued");

    // The session carries on both ways, and B never saw A leave or rejoin.
    a.send(&json!({"type": "signal", "to": b_id, "data": {"back": true}}))
        .await;
    let m = b.expect("signal").await;
    assert_eq!(
        (m["seq"].as_u64(), m["from"].as_str()),
        (Some(2), Some(a_id.as_str())),
        "{m}"
    );
    b.send(&json!({"type": "broadcast", "data": 1})).await;
    assert_eq!(a.expect("broadcast").await["seq"], 3 + N);
}

#[tokio::test]
async fn resume_grace_expiry_tells_the_room_and_the_senders() {
    let server = Server::start(&[
        "--set",
        "signal.max_connections_per_ip=2",
        "--set",
        "signal.resume_grace=2",
        "--set",
        "signal.max_queued=2",
    ]);
    let (a, ja, mut b, _) = pair(&server, "grace").await;
    let a_id = id_of(&ja, "peerId");
    drop(a);
    server.wait_for_release().await;
    let dropped = Instant::now();

    for id in ["m-1", "m-2", "m-3"] {
        b.send(&json!({"type": "signal", "to": a_id, "id": id, "data": {"id": id}}))
            .await;
    }
    // The queue holds two; the third is refused at once.
    let full = b.expect("undeliverable").await;
    assert_eq!(
        full,
        json!({"type": "undeliverable", "seq": 2, "to": a_id, "id": "m-3", "reason": "queue-full"})
    );

    // When the grace runs out: peer-left, and undeliverable for each queued signal.
    let mut got = Vec::new();
    for _ in 0..3 {
        match b.event(Duration::from_secs(8)).await {
            Some(Event::Text(t)) => got.push(serde_json::from_str::<Value>(&t).unwrap()),
            other => panic!("expected peer-left and undeliverable, got {other:?} after {got:?}"),
        }
    }
    let elapsed = dropped.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "peer-left only after the grace period (2 s), got it after {elapsed:?}"
    );
    let seqs: Vec<u64> = got.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, [3, 4, 5], "{got:?}");
    let left = got.iter().find(|m| m["type"] == "peer-left").expect("peer-left");
    assert_eq!(left["peerId"], a_id.as_str());
    let mut undelivered: Vec<(String, String, String)> = got
        .iter()
        .filter(|m| m["type"] == "undeliverable")
        .map(|m| (id_of(m, "to"), id_of(m, "id"), id_of(m, "reason")))
        .collect();
    undelivered.sort();
    assert_eq!(
        undelivered,
        [
            (a_id.clone(), "m-1".to_owned(), "peer-left".to_owned()),
            (a_id.clone(), "m-2".to_owned(), "peer-left".to_owned())
        ]
    );

    // Too late to resume.
    let mut a = Client::connect(server.http).await;
    a.send(&json!({"type": "resume", "session": ja["session"], "lastSeq": 2}))
        .await;
    assert_eq!(a.expect_error("resume-failed").await["seq"], 0);
    a.expect_close(4201).await;
}

#[tokio::test]
async fn ping_ack_pong_seq_and_resume_takeover() {
    let server = Server::start(&[]);
    let mut a = Client::connect(server.http).await;
    assert_eq!(a.pong().await, 0, "no stream before a join");
    let ja = a.join("acks", None, None).await;
    let mut b = Client::connect(server.http).await;
    b.join("acks", None, None).await;
    assert_eq!(a.expect("peer-joined").await["seq"], 2);
    b.send(&json!({"type": "broadcast", "data": "hi"})).await;
    assert_eq!(a.expect("broadcast").await["seq"], 3);
    a.send(&json!({"type": "ping"})).await;
    assert_eq!(a.expect("pong").await["seq"], 3, "pong carries the newest stream seq");

    // Without an ack the buffer reaches back: a resume on a new socket replays from lastSeq and takes the session
    // over from the old socket, which is closed with 4002.
    let mut a2 = Client::connect(server.http).await;
    a2.send(&json!({"type": "resume", "session": ja["session"], "lastSeq": 1}))
        .await;
    let resumed = a2.expect("resumed").await;
    assert_eq!(
        (resumed["seq"].as_u64(), resumed["replayed"].as_u64()),
        (Some(3), Some(2)),
        "{resumed}"
    );
    assert_eq!(a2.expect("peer-joined").await["seq"], 2);
    assert_eq!(a2.expect("broadcast").await["seq"], 3);
    a.expect_close(4002).await;

    // An ack frees the buffer: a resume from before it fails, and so does one from the future.
    a2.send(&json!({"type": "ping", "ack": 3})).await;
    assert_eq!(a2.expect("pong").await["seq"], 3);
    for last_seq in [1, 99] {
        let mut late = Client::connect(server.http).await;
        late.send(&json!({"type": "resume", "session": ja["session"], "lastSeq": last_seq}))
            .await;
        late.expect_error("resume-failed").await;
        late.expect_close(4201).await;
    }
    // The failed attempts did not disturb the live socket.
    b.send(&json!({"type": "broadcast", "data": "again"})).await;
    assert_eq!(a2.expect("broadcast").await["seq"], 4);
    assert_eq!(a2.pong().await, 4);
}

// ---------------------------------------------------------------------------------------------------------------
// Heartbeats.

#[tokio::test]
async fn heartbeat_pings_and_closes_a_silent_socket_4200() {
    let server = Server::start(&[
        "--set",
        "signal.heartbeat_interval=1",
        "--set",
        "signal.heartbeat_timeout=3",
    ]);
    // B reads all along, so tungstenite answers every Ping frame with a Pong: that counts as life.
    let mut b = Client::connect(server.http).await;
    let jb = b.join("hb", None, None).await;
    assert_eq!(jb["heartbeatMs"], 1000);

    // A joins, then sends nothing at all, not even a Pong.
    let mut a = RawWs::connect(server.http).await;
    a.send_text(r#"{"type":"join","room":"hb"}"#).await;
    let silent_since = tokio::time::Instant::now();

    let watch_a = async {
        let deadline = silent_since + Duration::from_secs(8);
        let mut pings = Vec::new();
        let mut texts = Vec::new();
        loop {
            let Some((opcode, payload)) = a.frame(deadline).await else {
                panic!("no close frame within 8 s (pings at {pings:?}, texts {texts:?})");
            };
            match opcode {
                0x9 => pings.push(silent_since.elapsed()),
                0x1 => texts.push(String::from_utf8(payload).unwrap()),
                0x8 => {
                    assert!(payload.len() >= 2, "a close code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    return (code, silent_since.elapsed(), pings, texts);
                }
                other => panic!("unexpected opcode {other}"),
            }
        }
    };
    let watch_b = b.collect(Duration::from_millis(5500));
    let ((code, closed_after, pings, texts), b_events) = tokio::join!(watch_a, watch_b);

    assert_eq!(code, 4200, "heartbeat timeout");
    assert!(
        closed_after >= Duration::from_millis(2500) && closed_after <= Duration::from_millis(5500),
        "closed {closed_after:?} after the last frame (timeout 3 s)"
    );
    assert!(
        texts.first().is_some_and(|t| t.contains(r#""type":"joined""#)),
        "{texts:?}"
    );
    // The hub's heartbeat pings a socket quiet for the interval once, and again only after it has been heard from.
    assert_eq!(pings.len(), 1, "one Ping per silence, not one per interval: {pings:?}");
    assert!(
        pings[0] >= Duration::from_millis(900) && pings[0] <= Duration::from_millis(2500),
        "the Ping after ~1 s of quiet: {pings:?}"
    );

    // B, silent but answering Pings, outlived the timeout (each Pong makes it heard, so it is pinged again after
    // the next quiet interval); A is in its grace period, so no peer-left.
    assert!(b.pings >= 3, "B got a Ping each quiet interval ({})", b.pings);
    let types: Vec<String> = b_events
        .iter()
        .map(|e| match e {
            Event::Text(t) => serde_json::from_str::<Value>(t).unwrap()["type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            other => panic!("B was closed: {other:?} ({b_events:?})"),
        })
        .collect();
    assert_eq!(types, ["peer-joined"], "{b_events:?}");
    assert_eq!(b.pong().await, 2);
}

// ---------------------------------------------------------------------------------------------------------------
// The single port.

/// A `wss://` client on the single port; the self-signed certificate is accepted as is.
async fn wss_connect(addr: SocketAddr, alpn: Option<&[u8]>) -> Client {
    let mut config = common::accept_any_certificate();
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = timeout(WAIT, connector.connect(name, tcp_connect(addr).await))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), alpn, "ALPN");
    Client::over(Box::new(tls), &format!("wss://{addr}/ws"), false).await
}

#[tokio::test]
async fn single_port_serves_wss_and_redirects_plain_http() {
    let server = Server::start(&["--single-port", "127.0.0.1:0"]);
    let single = server.single.expect("a `signaling: wss://…` line");

    // One client negotiates http/1.1 by ALPN, the other offers no ALPN (sorted by its first decrypted byte).
    let mut a = wss_connect(single, Some(b"http/1.1")).await;
    let ja = a.join("tls", None, None).await;
    check_ice_servers(&ja, &server);
    let mut b = wss_connect(single, None).await;
    let jb = b.join("tls", None, None).await;
    let (a_id, b_id) = (id_of(&ja, "peerId"), id_of(&jb, "peerId"));
    assert_eq!(a.expect("peer-joined").await["peer"]["id"], b_id.as_str());
    const DATA: &str = r#"{"candidate" : "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "n":1.50}"#;
    b.send_text(format!(r#"{{"type":"signal","to":"{a_id}","data":{DATA}}}"#))
        .await;
    let text = a.next_text().await;
    let raw: HashMap<String, Box<RawValue>> = serde_json::from_str(&text).unwrap();
    assert_eq!(raw["data"].get(), DATA);
    assert_eq!(raw["from"].get(), format!("\"{b_id}\""));

    // Plain HTTP on the single port: a permanent redirect to the same URL over HTTPS, and no upgrade.
    let r = http_get(single, "/demo?x=1", &[]).await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://{single}/demo?x=1").as_str()),
        "{r:?}"
    );
    let r = upgrade_attempt(single, "/ws?room=tls").await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://{single}/ws?room=tls").as_str())
    );
}

#[tokio::test]
async fn client_numbered_messages_are_acknowledged_and_deduplicated() {
    let server = Server::start(&["--set", "signal.max_connections_per_ip=2"]);
    let (mut a, ja, b, jb) = pair(&server, "numbered").await;
    let (a_id, b_id) = (id_of(&ja, "peerId"), id_of(&jb, "peerId"));
    let mut b = b;
    b.send(&json!({"type": "signal", "to": a_id, "data": {"k": 1}, "seq": 1}))
        .await;
    b.send(&json!({"type": "broadcast", "data": {"k": 2}, "seq": 2})).await;
    assert_eq!(a.expect("signal").await["data"], json!({"k": 1}));
    assert_eq!(a.expect("broadcast").await["data"], json!({"k": 2}));
    b.send(&json!({"type": "ping"})).await;
    assert_eq!(
        b.expect("pong").await["ack"],
        2,
        "pong acknowledges the client's highest seq"
    );

    // Resends at or below the ack are dropped.
    b.send(&json!({"type": "signal", "to": a_id, "data": {"k": "dup"}, "seq": 2}))
        .await;
    b.send(&json!({"type": "broadcast", "data": {"k": "dup"}, "seq": 1}))
        .await;
    assert_eq!(b.pong().await, 1);
    assert_eq!(a.pong().await, 4, "A got no duplicate");

    // After a dropped socket, `resumed` tells the client where to resend from; duplicates are still dropped.
    drop(b);
    server.wait_for_release().await;
    let mut b = Client::connect(server.http).await;
    b.send(&json!({"type": "resume", "session": jb["session"], "lastSeq": 1}))
        .await;
    let resumed = b.expect("resumed").await;
    assert_eq!(
        (resumed["ack"].as_u64(), resumed["replayed"].as_u64()),
        (Some(2), Some(0)),
        "{resumed}"
    );
    b.send(&json!({"type": "signal", "to": a_id, "data": {"k": "dup"}, "seq": 2}))
        .await;
    b.send(&json!({"type": "signal", "to": a_id, "data": {"k": 3}, "seq": 3}))
        .await;
    let m = a.expect("signal").await;
    assert_eq!(
        (m["seq"].as_u64(), &m["data"], m["from"].as_str()),
        (Some(5), &json!({"k": 3}), Some(b_id.as_str()))
    );
    assert_eq!(a.pong().await, 5);
}

// ---------------------------------------------------------------------------------------------------------------
// Server bugs found by these tests (see the ignore reasons).

#[tokio::test]
async fn queued_signals_above_1024_are_not_lost() {
    let server = Server::start(&[
        "--set",
        "signal.max_connections_per_ip=2",
        "--set",
        "signal.messages_per_second=100000",
        "--set",
        "signal.burst=100000",
        "--set",
        "signal.max_queued=1100",
    ]);
    let (a, ja, mut b, _) = pair(&server, "deep-queue").await;
    let a_id = id_of(&ja, "peerId");
    drop(a);
    server.wait_for_release().await;
    const N: u64 = 1100;
    for n in 0..N {
        b.send(&json!({"type": "signal", "to": a_id, "data": {"n": n}, "id": format!("m-{n}")}))
            .await;
    }
    assert_eq!(b.pong().await, 1, "every signal was accepted (no queue-full)");
    let mut a = Client::connect(server.http).await;
    a.send(&json!({"type": "resume", "session": ja["session"], "lastSeq": 2}))
        .await;
    let resumed = a.next().await;
    assert_eq!(
        resumed["type"], "resumed",
        "accepted signals must be replayed: {resumed}"
    );
    assert_eq!(resumed["replayed"], N);
    for n in 0..N {
        assert_eq!(a.expect("signal").await["data"]["n"], n);
    }
}

#[tokio::test]
async fn a_full_replay_reaches_a_reading_client() {
    let server = Server::start(&[
        "--set",
        "signal.messages_per_second=100000",
        "--set",
        "signal.burst=100000",
    ]);
    let (mut a, ja, mut b, _) = pair(&server, "big-replay").await;
    let a_id = id_of(&ja, "peerId");
    const N: u64 = 1100;
    for n in 0..N {
        b.send(&json!({"type": "signal", "to": a_id, "data": {"n": n, "pad": "z".repeat(2000)}}))
            .await;
    }
    for n in 0..N {
        assert_eq!(a.expect("signal").await["seq"], 3 + n);
    }
    // A never acknowledged, so the buffer holds the newest 1024 (max_unacked): resume from just before them, on
    // new sockets again and again (each takes the session over), reading promptly every time.
    let last_seq = 2 + N - 1024;
    for attempt in 0..10 {
        let mut again = Client::connect(server.http).await;
        again
            .send(&json!({"type": "resume", "session": ja["session"], "lastSeq": last_seq}))
            .await;
        let resumed = again.expect("resumed").await;
        assert_eq!(resumed["replayed"], 1024, "{resumed}");
        for n in 0..1024 {
            match again.event(WAIT).await {
                Some(Event::Text(_)) => {}
                other => panic!("attempt {attempt}: replay cut after {n} of 1024 frames: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn the_sockets_of_a_room_are_served_by_the_worker_that_holds_it() {
    rooms_on_their_workers(true).await;
}

/// A client that names its room only in its `join` frame (no `?room=`, no `?resuming=`) arrives on any worker; its
/// socket moves to the room's worker after the join, with what it sent right behind the join.
#[tokio::test]
async fn a_socket_that_names_its_room_only_in_its_join_moves_to_the_worker_that_holds_it() {
    rooms_on_their_workers(false).await;
}

/// Rooms of two peers on a server with two workers, over plain WebSockets and WSS: both peers of every room end up
/// watched by the same worker, and so does a socket that resumed. `named`: the URLs name the room, as the SDK's do.
async fn rooms_on_their_workers(named: bool) {
    let server = Server::start(&[
        "--workers",
        "2",
        "--single-port",
        "127.0.0.1:0",
        "--set",
        "signal.max_connections_per_ip=200",
    ]);
    let single = server.single.expect("a `signaling: wss://…` line");
    const ROOMS: usize = 20;
    // Plain WebSockets on the HTTP port, and WSS on the single port (the TLS session moves with its socket).
    for (port, tls) in [(server.http, false), (single, true)] {
        // Opens a socket with `query` in its URL (if `named`); returns it and the client's port.
        let open = |query: String| async move {
            let tcp = tcp_connect(port).await;
            let local = tcp.local_addr().unwrap().port();
            let query = if named { format!("?{query}") } else { String::new() };
            let url = format!("{}://{port}/ws{query}", if tls { "wss" } else { "ws" });
            let io: Box<dyn Io> = if tls {
                let connector = tokio_rustls::TlsConnector::from(Arc::new(common::accept_any_certificate()));
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(connector.connect(name, tcp).await.expect("TLS handshake"))
            } else {
                Box::new(tcp)
            };
            (Client::over(io, &url, false).await, local)
        };
        let mut rooms = Vec::new();
        for r in 0..ROOMS {
            let room = format!("affinity-{named}-{tls}-{r}");
            let (mut a, a_port) = open(format!("room={room}")).await;
            let ja = a.join(&room, None, None).await;
            let a_id = id_of(&ja, "peerId");
            let (mut b, b_port) = open(format!("room={room}")).await;
            // The join and a signal right behind it: read with the join before the move, or after it on the room's
            // worker; either way it arrives, once, after `peer-joined`.
            b.send(&json!({"type": "join", "room": room})).await;
            b.send(&json!({"type": "signal", "to": a_id, "data": {"early": r}}))
                .await;
            let jb = b.expect("joined").await;
            let b_id = id_of(&jb, "peerId");
            assert_eq!(a.expect("peer-joined").await["peer"]["id"], b_id.as_str());
            assert_eq!(a.expect("signal").await["data"]["early"], r);
            // Signals go both ways on the moved sockets.
            b.send(&json!({"type": "signal", "to": a_id, "data": {"n": r}})).await;
            assert_eq!(a.expect("signal").await["data"]["n"], r);
            a.send(&json!({"type": "signal", "to": b_id, "data": {"n": r}})).await;
            assert_eq!(b.expect("signal").await["data"]["n"], r);
            rooms.push((room, a, ja, b, a_port, b_port));
        }
        let pid = server.child.id();
        let together = |epolls: &[std::collections::BTreeSet<u16>], a_port: u16, b_port: u16| {
            epolls
                .iter()
                .any(|ports| ports.contains(&a_port) && ports.contains(&b_port))
        };
        let epolls = common::ports_per_epoll(pid, port.port());
        let served: usize = epolls.iter().map(|ports| ports.len()).sum();
        assert_eq!(served, 2 * ROOMS, "every socket is watched by one worker: {epolls:?}");
        for (_, _, _, _, a_port, b_port) in &rooms {
            assert!(
                together(&epolls, *a_port, *b_port),
                "both peers of a room on one worker (tls: {tls}): {a_port} and {b_port} in {epolls:?}"
            );
        }
        // Twenty rooms hashed over two workers: both carry some (all on one: 1 in 524 288).
        assert_eq!(epolls.len(), 2, "rooms on both workers (tls: {tls}): {epolls:?}");

        // A resume names its room in `resuming` (as the SDK's do) or only its session in the `resume` frame: the new
        // socket joins its room's worker too, and takes the session over from the old one.
        let mut resumed = Vec::new();
        for (room, old, ja, mut b, _, b_port) in rooms {
            let (mut a, a_port) = open(format!("resuming={room}")).await;
            a.send(&json!({"type": "resume", "session": ja["session"], "lastSeq": 4}))
                .await;
            a.expect("resumed").await;
            drop(old);
            b.send(&json!({"type": "signal", "to": id_of(&ja, "peerId"), "data": "after"}))
                .await;
            assert_eq!(a.expect("signal").await["data"], "after");
            resumed.push((a, b, a_port, b_port));
        }
        let epolls = common::ports_per_epoll(pid, port.port());
        for (_, _, a_port, b_port) in &resumed {
            assert!(
                together(&epolls, *a_port, *b_port),
                "a resumed socket on its room's worker (tls: {tls}): {a_port} and {b_port} in {epolls:?}"
            );
        }
    }
}
