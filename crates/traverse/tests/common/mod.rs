//! Shared pieces of the integration tests: the real `traverse` binary as a child process, real peers (coturn's
//! tools) found on PATH, bounded process runs, and a small hand-built STUN/TURN client over UDP and TCP that uses
//! the project's own codec.
//!
//! Every wait here is bounded in time and in count, so a broken server fails a test instead of hanging it.
//! All traffic stays on loopback.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stun::{attr, Attribute, Class, IntegrityKey, Message, MessageWriter, Method, TransactionId};

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How long the server may take to print its ready line on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------------
// Skipping.

/// CI sets `TRAVERSE_REQUIRE_PEERS=1`: a missing peer is then a failure, not a skip.
pub fn peers_required() -> bool {
    std::env::var("TRAVERSE_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Prints `SKIP: reason` (or panics under `TRAVERSE_REQUIRE_PEERS=1`). Callers return right after.
pub fn skip(reason: &str) {
    assert!(!peers_required(), "TRAVERSE_REQUIRE_PEERS=1 but {reason}");
    println!("SKIP: {reason}");
}

/// Whether an executable of this name is on PATH.
pub fn have_tool(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let candidate = dir.join(name);
        candidate.is_file()
            && std::fs::metadata(&candidate)
                .map(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
                .unwrap_or(false)
    })
}

/// `true` when every tool is on PATH; otherwise skips (or fails under CI) and returns `false`.
pub fn require_tools(tools: &[&str]) -> bool {
    for tool in tools {
        if !have_tool(tool) {
            skip(&format!("{tool} not installed (Debian package coturn)"));
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------------------------
// Bounded process runs.

/// What a bounded run of a child process produced.
#[derive(Debug)]
pub struct RunOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl RunOutput {
    /// Both streams, for assertion messages and parsing (coturn's tools log to either).
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion or until `timeout`, then kills it by PID. Output is collected on threads so a chatty
/// child never blocks on a full pipe.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> RunOutput {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reaps the child (it has exited or was just killed).
    let status = child.wait().ok();
    RunOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    }
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

// ---------------------------------------------------------------------------------------------------------------
// The server under test.

/// A running `traverse serve`, killed by PID when dropped.
#[derive(Debug)]
pub struct Server {
    child: Process,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    /// The plain-HTTP signaling address, from the `signaling: ws://…` line.
    pub http: Option<SocketAddr>,
    /// The last part of the server's log (stderr), for failure messages.
    log: Arc<Mutex<String>>,
}

/// A child process killed (and reaped) when dropped: a test that panics half-way, or a timeout that drops its
/// future, leaves no server running behind it (one did: the kill came after the attack's future, which a failed
/// assertion skipped).
#[derive(Debug)]
pub struct Process(Child);

impl Process {
    pub fn new(child: Child) -> Process {
        Process(child)
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A started `traverse serve`: its process, its log (stderr, the last 64 KiB), and its stdout lines.
#[derive(Debug)]
pub struct Spawned {
    pub child: Process,
    pub log: Arc<Mutex<String>>,
    pub stdout: mpsc::Receiver<String>,
}

/// Starts `traverse serve` with UDP on `udp`, TCP, TLS and HTTP on kernel-chosen loopback ports (the default HTTP
/// port, 8080, would be shared by every test's server), then `args`, with `env` set and every other `TRAVERSE_*`
/// variable of the test's environment removed. The child is killed when dropped ([`Process`]).
pub fn spawn_serve(udp: &str, args: &[&str], env: &[(&str, &str)]) -> Spawned {
    spawn_serve_under(&[], udp, args, env)
}

/// Like [`spawn_serve`], run through `wrapper` (e.g. `["prlimit", "--nofile=600:600", "--"]`).
pub fn spawn_serve_under(wrapper: &[&str], udp: &str, args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(env!("CARGO_BIN_EXE_traverse"));
            cmd
        }
        None => Command::new(env!("CARGO_BIN_EXE_traverse")),
    };
    clear_traverse_env(&mut cmd);
    cmd.arg("serve")
        .args(["--udp", udp, "--tcp", "127.0.0.1:0", "--tls", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0"])
        .args(args)
        .env("TRAVERSE_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start traverse: {e}"));
    let log = Arc::new(Mutex::new(String::new()));
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                if l.len() > 64 * 1024 {
                    let cut = l.len() - 32 * 1024;
                    let cut = (cut..l.len()).find(|i| l.is_char_boundary(*i)).unwrap_or(0);
                    l.drain(..cut);
                }
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let (tx, stdout) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    Spawned {
        child: Process(child),
        log,
        stdout,
    }
}

/// Removes every `TRAVERSE_*` variable, so a developer's settings never leak into a test.
pub fn clear_traverse_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRAVERSE_") {
            cmd.env_remove(key);
        }
    }
}

impl Server {
    /// Starts `traverse serve` on loopback with kernel-chosen ports (UDP, TCP and TLS each get their own) plus
    /// `args`, and waits until it prints its `iceServers` line, which it does only once every listener is bound.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_udp("127.0.0.1:0", args)
    }

    /// Like [`Server::start`], with the UDP listener on `udp` (a fixed port, for RFC 5780 tests).
    pub fn start_with_udp(udp: &str, args: &[&str]) -> Server {
        Self::start_under(&[], udp, args)
    }

    /// Like [`Server::start_with_udp`], run through `wrapper` (see [`spawn_serve_under`]).
    pub fn start_under(wrapper: &[&str], udp: &str, args: &[&str]) -> Server {
        let Spawned { child, log, stdout } = spawn_serve_under(wrapper, udp, args, &[]);
        let (tx, rx) = mpsc::channel();
        let http = Arc::new(Mutex::new(None));
        let http_seen = http.clone();
        std::thread::spawn(move || {
            for line in stdout {
                if let Some(rest) = line.strip_prefix("signaling: ws://") {
                    let hostport = rest.split("/ws").next().unwrap_or_default();
                    *http_seen.lock().unwrap_or_else(|e| e.into_inner()) = hostport.parse().ok();
                }
                if let Some(json) = line.strip_prefix("iceServers: ") {
                    let _ = tx.send(json.to_owned());
                }
            }
        });
        // From here on, a panic drops `server`, which kills the child.
        let unset = SocketAddr::new(LOOPBACK, 0);
        let mut server = Server {
            child,
            udp: unset,
            tcp: unset,
            tls: unset,
            http: None,
            log,
        };
        let Ok(json) = rx.recv_timeout(START_TIMEOUT) else {
            let _ = server.child.kill();
            let _ = server.child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "traverse did not become ready within {START_TIMEOUT:?}; log:\n{}",
                server.log()
            );
        };
        (server.udp, server.tcp, server.tls) = parse_ice_servers(&json);
        server.http = *http.lock().unwrap_or_else(|e| e.into_inner());
        server
    }

    /// The process has not exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asserts the process is still running, with its log on failure.
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait();
        assert!(
            matches!(status, Ok(None)),
            "traverse exited ({status:?}); log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The log once it contains `needle`, or as it is after `wait`. Readiness is read from stdout and the log from
    /// stderr by another thread, so a line logged before the server was ready can still be on its way.
    #[allow(dead_code, reason = "not every test binary waits for a log line")]
    pub fn log_with(&self, needle: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The UDP, TCP and TLS addresses from `[{"urls": ["stun:H:P", "turn:H:P?transport=udp", ...], ...}]`.
fn parse_ice_servers(json: &str) -> (SocketAddr, SocketAddr, SocketAddr) {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("bad iceServers {json}: {e}"));
    let urls: Vec<serde_json::Value> = value
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|server| server["urls"].as_array().cloned().unwrap_or_default())
        .collect();
    let port_of = |prefix: &str, suffix: &str| -> SocketAddr {
        let url = urls
            .iter()
            .filter_map(|u| u.as_str())
            .find(|u| u.starts_with(prefix) && u.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {prefix}…{suffix} URL in {json}"));
        let hostport = url.trim_start_matches(prefix).trim_end_matches(suffix);
        let port = hostport.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        SocketAddr::new(LOOPBACK, port.unwrap_or_else(|| panic!("no port in {url}")))
    };
    (
        port_of("turn:", "?transport=udp"),
        port_of("turn:", "?transport=tcp"),
        port_of("turns:", "?transport=tcp"),
    )
}

/// A REST credential minted by `traverse credentials`, as an operator would.
pub fn mint_credentials(secret: &str, user: &str) -> (String, String) {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_traverse")).args(["credentials", "--secret", secret, "--user", user]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "traverse credentials failed: {out:?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("credentials output {:?}: {e}", out.stdout));
    let username = v["username"].as_str().unwrap_or_default().to_owned();
    let password = v["password"].as_str().unwrap_or_default().to_owned();
    assert!(
        username.ends_with(&format!(":{user}")),
        "unexpected username {username}"
    );
    assert!(!password.is_empty());
    (username, password)
}

// ---------------------------------------------------------------------------------------------------------------
// Ports.

/// A TCP port free on loopback right now, for a server started a moment later. Below the ephemeral range (32768+),
/// where port-0 listeners and outgoing connections get theirs: a port-0 port released here could be handed to one of
/// those before the server binds it (seen in CI as "cannot listen on single-port …: Address already in use").
/// Numbered per test process, from an offset by its pid, so that parallel binaries do not probe the same ones;
/// conformance.rs takes 20 000 and up the same way.
pub fn free_tcp_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() % 400 * 20;
    for _ in 0..2000 {
        let port = 12_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 8_000;
        let port = u16::try_from(port).expect("below 20 000");
        if std::net::TcpListener::bind((LOOPBACK, port)).is_ok() {
            return port;
        }
    }
    panic!("no TCP port free below the ephemeral range");
}

// ---------------------------------------------------------------------------------------------------------------
// Echo peers.

/// A free UDP port on `ip` right now (bound, then released). Collisions with parallel tests are possible but rare;
/// callers retry.
pub fn free_udp_port(ip: IpAddr) -> u16 {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind UDP on {ip}: {e}"))
}

/// coturn's `turnutils_peer`, a UDP echo server, killed on drop.
#[derive(Debug)]
pub struct EchoPeer {
    child: Child,
    pub addr: SocketAddr,
}

impl EchoPeer {
    /// Starts `turnutils_peer -L ip -p port` on a free port and waits until it echoes.
    pub fn start(ip: IpAddr) -> EchoPeer {
        for _attempt in 0..5 {
            let addr = SocketAddr::new(ip, free_udp_port(ip));
            let mut child = Command::new("turnutils_peer")
                .args(["-L", &ip.to_string(), "-p", &addr.port().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start turnutils_peer: {e}"));
            if udp_echoes(addr, Duration::from_secs(15)) {
                return EchoPeer { child, addr };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("turnutils_peer never echoed on {ip}");
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a UDP datagram sent to `addr` comes back within `timeout` (probing every 200 ms).
pub fn udp_echoes(addr: SocketAddr, timeout: Duration) -> bool {
    let any: SocketAddr = if addr.is_ipv4() {
        SocketAddr::new(LOOPBACK, 0)
    } else {
        SocketAddr::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 0)
    };
    let Ok(sock) = UdpSocket::bind(any) else { return false };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = sock.send_to(b"echo-probe", addr);
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == addr && buf.get(..n) == Some(b"echo-probe".as_slice()) {
                return true;
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------------------------
// A hand-built STUN/TURN client on the project's codec.

pub fn random_tid() -> TransactionId {
    TransactionId::new(rand::random())
}

/// Builds a request. `attrs` adds the attributes; credentials, if any, add USERNAME, REALM, NONCE and
/// MESSAGE-INTEGRITY after them; `fingerprint` appends FINGERPRINT last.
pub fn build(
    method: Method,
    tid: TransactionId,
    attrs: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
    auth: Option<&Credentials>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid).expect("header");
    attrs(&mut w).expect("attributes fit");
    if let Some(c) = auth {
        w.add(&Attribute::Username(&c.username)).expect("username");
        w.add(&Attribute::Realm(&c.realm)).expect("realm");
        w.add(&Attribute::Nonce(&c.nonce)).expect("nonce");
        w.message_integrity(&c.key).expect("integrity");
    }
    if fingerprint {
        w.fingerprint().expect("fingerprint");
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// Long-term credentials after a 401: what goes into every authenticated request.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub key: IntegrityKey,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}@{})", self.username, self.realm)
    }
}

/// A parsed response kept as owned bytes.
#[derive(Debug, Clone)]
pub struct Response {
    pub bytes: Vec<u8>,
}

impl Response {
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("responses we keep parse")
    }

    pub fn class(&self) -> Class {
        self.message().class()
    }

    pub fn method(&self) -> Method {
        self.message().method()
    }

    pub fn error_code(&self) -> Option<u16> {
        match self.message().decode(attr::ERROR_CODE) {
            Some(Ok(Attribute::ErrorCode(e))) => Some(e.code),
            _ => None,
        }
    }

    pub fn text(&self, ty: u16) -> Option<String> {
        match self.message().decode(ty) {
            Some(Ok(Attribute::Realm(s) | Attribute::Nonce(s) | Attribute::Username(s))) => Some(s.to_owned()),
            _ => None,
        }
    }

    pub fn address(&self, ty: u16) -> Option<SocketAddr> {
        match self.message().decode(ty) {
            Some(Ok(
                Attribute::XorMappedAddress(a)
                | Attribute::XorRelayedAddress(a)
                | Attribute::XorPeerAddress(a)
                | Attribute::MappedAddress(a),
            )) => Some(a),
            _ => None,
        }
    }

    /// Every address of this type (a dual allocation has two XOR-RELAYED-ADDRESS).
    pub fn addresses(&self, ty: u16) -> Vec<SocketAddr> {
        let msg = self.message();
        let tid = msg.transaction_id();
        msg.attributes()
            .filter(|raw| raw.ty == ty)
            .filter_map(|raw| match Attribute::decode(raw, &tid) {
                Ok(Attribute::XorRelayedAddress(a) | Attribute::XorMappedAddress(a)) => Some(a),
                _ => None,
            })
            .collect()
    }

    pub fn unknown_attributes(&self) -> Vec<u16> {
        match self.message().decode(attr::UNKNOWN_ATTRIBUTES) {
            Some(Ok(Attribute::UnknownAttributes(list))) => Attribute::u16_list(list).collect(),
            _ => Vec::new(),
        }
    }

    /// Short description for assertion messages.
    pub fn describe(&self) -> String {
        format!("{:?} {:?} error={:?}", self.method(), self.class(), self.error_code())
    }
}

/// A client connection to the server over UDP or TCP.
#[derive(Debug)]
pub enum Conn {
    Udp {
        sock: UdpSocket,
        server: SocketAddr,
    },
    Tcp {
        stream: TcpStream,
        buf: Vec<u8>,
    },
    /// TURN over TLS (a blocking rustls stream over TCP), framed like TCP.
    Tls {
        stream: Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
        buf: Vec<u8>,
    },
}

impl Conn {
    pub fn udp(server: SocketAddr) -> Conn {
        Self::udp_from(LOOPBACK, server)
    }

    /// UDP from `local` (another 127.x address is another source to the server).
    pub fn udp_from(local: IpAddr, server: SocketAddr) -> Conn {
        let sock = UdpSocket::bind(SocketAddr::new(local, 0)).expect("bind UDP");
        Conn::Udp { sock, server }
    }

    pub fn tcp(server: SocketAddr) -> Conn {
        let stream = connect_tcp(server);
        Conn::Tcp {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Conn::Udp { sock, .. } => sock.local_addr().expect("local addr"),
            Conn::Tcp { stream, .. } => stream.local_addr().expect("local addr"),
            Conn::Tls { stream, .. } => stream.get_ref().local_addr().expect("local addr"),
        }
    }

    pub fn is_udp(&self) -> bool {
        matches!(self, Conn::Udp { .. })
    }

    /// Sends one datagram or one stream frame (the caller pads stream ChannelData).
    pub fn send(&mut self, bytes: &[u8]) {
        match self {
            Conn::Udp { sock, server } => {
                let _ = sock.send_to(bytes, *server);
            }
            Conn::Tcp { stream, .. } => stream.write_all(bytes).expect("TCP write"),
            Conn::Tls { stream, .. } => {
                stream.write_all(bytes).expect("TLS write");
                stream.flush().expect("TLS flush");
            }
        }
    }

    /// The next STUN message or ChannelData frame from the server, or `None` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        match self {
            Conn::Udp { sock, server } => {
                let mut buf = vec![0u8; 65536];
                loop {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) if from == *server => return buf.get(..n).map(<[u8]>::to_vec),
                        Ok(_) => continue,
                        Err(_) if Instant::now() >= deadline => return None,
                        Err(_) => continue,
                    }
                }
            }
            Conn::Tcp { stream, buf } => {
                let tcp = stream.try_clone().expect("clone TCP stream");
                read_frame(stream, &tcp, buf, deadline)
            }
            Conn::Tls { stream, buf } => {
                let tcp = stream.get_ref().try_clone().expect("clone TCP stream");
                read_frame(stream.as_mut(), &tcp, buf, deadline)
            }
        }
    }

    /// Sends `request` and returns the response with its transaction id; over UDP retransmits (RFC 8489 §6.2.1,
    /// shortened). Other messages received meanwhile are discarded.
    pub fn transact(&mut self, request: &[u8]) -> Option<Response> {
        let tid = Message::parse(request)
            .expect("requests we send parse")
            .transaction_id();
        let attempts: &[u64] = if self.is_udp() {
            &[500, 1000, 2000, 4000, 8000]
        } else {
            &[20_000]
        };
        for wait_ms in attempts {
            self.send(request);
            let deadline = Instant::now() + Duration::from_millis(*wait_ms);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let Some(bytes) = self.recv(left) else { break };
                if let Ok(msg) = Message::parse(&bytes) {
                    if msg.transaction_id() == tid && matches!(msg.class(), Class::Success | Class::Error) {
                        return Some(Response { bytes });
                    }
                }
            }
        }
        None
    }

    /// Like [`Conn::transact`], but panics on no answer.
    pub fn must_transact(&mut self, request: &[u8]) -> Response {
        self.transact(request)
            .unwrap_or_else(|| panic!("no answer from the server over {self:?}"))
    }

    /// Collects everything that arrives within `window`.
    pub fn drain(&mut self, window: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(b) => got.push(b),
                None => break,
            }
            if got.len() > 10_000 {
                break;
            }
        }
        got
    }
}

/// Connects over TCP with retries (a loaded machine may drop SYNs briefly).
/// The next STUN or ChannelData frame from a byte stream, reading `reader` (whose socket is `tcp`, for the read
/// timeout) until `deadline`; `None` on timeout or EOF.
fn read_frame(reader: &mut impl Read, tcp: &TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Option<Vec<u8>> {
    loop {
        if let Ok(Some(frame)) = stun::take_stream_frame(buf) {
            return Some(frame);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let _ = tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let mut chunk = [0u8; 4096];
        match reader.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

/// A TCP connection from `local` (another 127.x address is another source to the server).
pub fn connect_tcp_from(local: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(10))?;
    let stream: TcpStream = socket.into();
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// TURN over TLS from `local`, accepting any certificate; returns the connection and the DER of the end-entity
/// certificate the server presented. `Err` when the handshake fails.
pub fn tls_connect(local: IpAddr, addr: SocketAddr, wait: Duration) -> Result<(Conn, Vec<u8>), String> {
    let config = accept_any_certificate();
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tcp = connect_tcp_from(local, addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(wait)).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| format!("TLS handshake: {e}"))?;
    }
    let presented = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .ok_or("no server certificate")?;
    let stream = Box::new(rustls::StreamOwned::new(conn, tcp));
    Ok((
        Conn::Tls {
            stream,
            buf: Vec::new(),
        },
        presented,
    ))
}

/// A TLS client configuration that accepts the server's self-signed certificate: tests check which certificate it
/// presented instead.
pub fn accept_any_certificate() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One HTTP/1.1 GET with `Connection: close` (and `Authorization: Bearer` when `token` is given): status, headers
/// (lowercased) and body.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_lowercase(), body.to_owned())
}

pub fn connect_tcp(server: SocketAddr) -> TcpStream {
    let mut last = None;
    for _ in 0..10 {
        match TcpStream::connect_timeout(&server, Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return s;
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    panic!("cannot connect to {server}: {last:?}");
}

/// A Binding request, optionally with FINGERPRINT.
pub fn binding_request(fingerprint: bool) -> Vec<u8> {
    build(Method::BINDING, random_tid(), |_| Ok(()), None, fingerprint)
}

/// Asserts a Binding request over `conn` is answered with our own address.
pub fn assert_binding_served(conn: &mut Conn) {
    let response = conn.must_transact(&binding_request(true));
    assert_eq!(response.class(), Class::Success, "Binding: {}", response.describe());
    assert_eq!(
        response.address(attr::XOR_MAPPED_ADDRESS),
        Some(conn.local_addr()),
        "XOR-MAPPED-ADDRESS"
    );
}

/// A TURN session over one connection: `turn::client` (the sans-IO client, which does the long-term credential
/// dance and the RFC 8489 retransmissions), driven blocking over [`Conn`].
#[derive(Debug)]
pub struct TurnClient {
    pub conn: Conn,
    client: turn::client::Client,
}

impl TurnClient {
    pub fn new(conn: Conn, user: &str, password: &str) -> TurnClient {
        let mut config = if conn.is_udp() {
            turn::client::ClientConfig::udp(user, password)
        } else {
            turn::client::ClientConfig::stream(user, password)
        };
        // Five sends (0, 0.5, 1.5, 3.5, 7.5 s) and 8 s more: a silent server fails a test in 15.5 s, not 39.5 s.
        config.max_transmissions = 5;
        TurnClient {
            conn,
            client: turn::client::Client::new(config),
        }
    }

    /// The long-term key, once the server challenged (to check that an answer is signed).
    pub fn key(&self) -> IntegrityKey {
        self.client.key().cloned().expect("the server challenged")
    }

    /// Sends a request (signed once the server has challenged) and waits for its final answer; panics on none.
    pub fn request(
        &mut self,
        method: Method,
        attrs: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
    ) -> Response {
        let id = self
            .client
            .request(Instant::now(), method, attrs)
            .expect("the request fits");
        self.answers(&[id]).remove(0)
    }

    /// Two requests written back to back before either is answered (a server reads them in one batch when it was
    /// not reading meanwhile); their final answers, in order.
    pub fn two_requests(
        &mut self,
        first: (
            Method,
            impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
        ),
        second: (
            Method,
            impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
        ),
    ) -> (Response, Response) {
        let now = Instant::now();
        let a = self.client.request(now, first.0, first.1).expect("the request fits");
        let b = self.client.request(now, second.0, second.1).expect("the request fits");
        let mut answers = self.answers(&[a, b]);
        let second = answers.remove(1);
        (answers.remove(0), second)
    }

    /// Drives the client until each of `ids` has its final answer; the answers in the order of `ids`.
    fn answers(&mut self, ids: &[turn::client::RequestId]) -> Vec<Response> {
        let mut answers: Vec<Option<Response>> = vec![None; ids.len()];
        loop {
            while let Some(packet) = self.client.poll_transmit() {
                self.conn.send(&packet);
            }
            while let Some(event) = self.client.poll_event() {
                if let turn::client::Event::Response { id: done, outcome, .. } = event {
                    if let Some(at) = ids.iter().position(|id| *id == done) {
                        let answer = outcome
                            .answer()
                            .unwrap_or_else(|| panic!("no answer from the server over {:?}", self.conn));
                        answers[at] = Some(Response {
                            bytes: answer.as_bytes().to_vec(),
                        });
                    }
                }
            }
            if answers.iter().all(Option::is_some) {
                return answers.into_iter().flatten().collect();
            }
            let wait = self
                .client
                .poll_timeout()
                .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(Instant::now()));
            match self.conn.recv(wait.max(Duration::from_millis(1))) {
                Some(bytes) => self.client.handle_input(Instant::now(), &bytes),
                None => self.client.handle_timeout(Instant::now()),
            }
        }
    }

    /// Allocate with REQUESTED-TRANSPORT UDP; `ipv6_too` adds ADDITIONAL-ADDRESS-FAMILY IPv6 (RFC 8656 §7.2).
    pub fn allocate(&mut self, ipv6_too: bool) -> Response {
        self.request(Method::ALLOCATE, |w| {
            w.add(&Attribute::RequestedTransport(17))?;
            if ipv6_too {
                w.add(&Attribute::AdditionalAddressFamily(0x02))?;
            }
            Ok(())
        })
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Response {
        self.request(Method::CREATE_PERMISSION, |w| {
            w.add(&Attribute::XorPeerAddress(peer)).map(|_| ())
        })
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Response {
        self.request(Method::CHANNEL_BIND, |w| {
            w.add(&Attribute::ChannelNumber(channel))?;
            w.add(&Attribute::XorPeerAddress(peer)).map(|_| ())
        })
    }
}

/// A ChannelData frame, padded to four bytes when `pad` (streams, RFC 8656 §12.5).
pub fn channel_data(channel: u16, payload: &[u8], pad: bool) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload.len() + 3);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    if pad {
        while frame.len() % 4 != 0 {
            frame.push(0);
        }
    }
    frame
}

// ---------------------------------------------------------------------------------------------------------------
// Signaling clients and the server's memory, for the attack tests.

/// Reads `spawned`'s stdout until the ready line (`iceServers: …`) and returns the plain-HTTP signaling address from
/// the `signaling: ws://ADDR/ws` line before it.
pub fn signaling_addr(spawned: &Spawned) -> SocketAddr {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut http = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = spawned.stdout.recv_timeout(left) else {
            panic!(
                "traverse did not become ready; log:\n{}",
                spawned.log.lock().unwrap_or_else(|e| e.into_inner())
            );
        };
        if let Some(rest) = line.strip_prefix("signaling: ws://") {
            let hostport = rest.split("/ws").next().unwrap_or_default();
            http = Some(
                hostport
                    .parse()
                    .unwrap_or_else(|e| panic!("bad signaling address {hostport:?}: {e}")),
            );
        } else if line.starts_with("iceServers: ") {
            return http.expect("a `signaling: ws://…` line before the ready line");
        }
    }
}

/// A signaling WebSocket whose TCP connection leaves from `local` (another 127.x address is another source).
pub async fn ws_connect_from(
    local: IpAddr,
    server: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("TCP socket");
    socket.bind(SocketAddr::new(local, 0)).expect("bind the client address");
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .expect("connect timed out")
        .expect("connect");
    let _ = tcp.set_nodelay(true);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{server}/ws"), tcp),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("WebSocket handshake");
    ws
}

/// Resident memory of a process (`VmRSS` of `/proc/PID/status`), KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------------------
// Worker threads.

/// The server-side sockets each of the process's epoll instances (one per worker runtime) watches, as the client
/// ports they are connected to; instances watching none are left out (`/proc/PID/fdinfo`, `/proc/PID/fd`, `/proc/net/tcp`).
pub fn ports_per_epoll(pid: u32, server_port: u16) -> Vec<std::collections::BTreeSet<u16>> {
    use std::collections::BTreeSet;
    // Socket inode → the client's port, for connections to `server_port` on 127.0.0.1.
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let mut peer_of_inode = std::collections::HashMap::new();
    // The header row has no `01` state column, so the filter below leaves it out.
    for line in tcp.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16).ok();
        // Established (`01`): not the listeners.
        if cols.len() > 9 && cols[3] == "01" && port(cols[1]) == Some(server_port) {
            if let (Some(peer), Ok(inode)) = (port(cols[2]), cols[9].parse::<u64>()) {
                peer_of_inode.insert(inode, peer);
            }
        }
    }
    let fd_dir = format!("/proc/{pid}/fd");
    let mut epolls = Vec::new();
    let mut socket_inode = std::collections::HashMap::new();
    for entry in std::fs::read_dir(&fd_dir).expect("the server's fds") {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let fd: u32 = entry.file_name().to_string_lossy().parse().unwrap();
        if target == "anon_inode:[eventpoll]" {
            epolls.push(fd);
        } else if let Some(inode) = target.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            socket_inode.insert(fd, inode.parse::<u64>().unwrap());
        }
    }
    epolls
        .into_iter()
        .map(|epoll| {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")).unwrap_or_default();
            info.lines()
                .filter_map(|l| l.strip_prefix("tfd:")?.split_whitespace().next()?.parse::<u32>().ok())
                .filter_map(|fd| peer_of_inode.get(socket_inode.get(&fd)?).copied())
                .collect()
        })
        .filter(|ports: &BTreeSet<u16>| !ports.is_empty())
        // A runtime's epoll has two descriptors (mio duplicates it): count each instance once.
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
