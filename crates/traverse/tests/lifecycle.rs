//! The server's life cycle against the real `traverse` binary over real sockets on loopback: a renewed certificate
//! is picked up (on SIGHUP and on a file change) without dropping the TLS connections and allocations already
//! there; idle and half-open stream connections are closed while a connection with an allocation lives on; SIGTERM
//! closes signaling sockets with 4202 and exits 0.
//!
//! Every server is killed by PID when its handle drops; every wait is bounded, so a broken server fails a test
//! instead of hanging it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use stun::{attr, Attribute, Class, MessageWriter, Method};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::{connect_tcp, free_tcp_port, Conn, Response, Server, TurnClient};

/// The longest any single answer may take on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(10);
const USER: &str = "alice";
const PASSWORD: &str = "pw";

// ---------------------------------------------------------------------------------------------------------------
// Certificates on disk.

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("traverse-lifecycle-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, as PEM for the server and DER for comparison.
struct Identity {
    der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl Identity {
    /// Valid from `not_before` to `not_after` (year, month, day).
    fn dated(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Identity {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate parameters");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-sign");
        Identity {
            der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn generate() -> Identity {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a certificate");
        Identity {
            der: generated.cert.der().to_vec(),
            cert_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
        }
    }
}

/// The certificate and key file paths the server is started with.
struct IdentityFiles {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl IdentityFiles {
    fn new(tag: &str, identity: &Identity) -> IdentityFiles {
        let dir = TempDir::new(tag);
        let files = IdentityFiles {
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
            _dir: dir,
        };
        files.write(identity);
        files
    }

    /// Overwrites both files in place (the key first).
    fn write(&self, identity: &Identity) {
        std::fs::write(&self.key, &identity.key_pem).expect("write key");
        std::fs::write(&self.cert, &identity.cert_pem).expect("write certificate");
    }

    fn mtimes(&self) -> (SystemTime, SystemTime) {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).expect("mtime");
        (m(&self.cert), m(&self.key))
    }

    /// Gives the files these modification times back, so the server's 5 s file check sees no change.
    fn set_mtimes(&self, (cert, key): (SystemTime, SystemTime)) {
        for (path, at) in [(&self.cert, cert), (&self.key, key)] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(at))
                .expect("set mtime");
        }
    }

    fn args(&self) -> [String; 4] {
        [
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ]
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

// ---------------------------------------------------------------------------------------------------------------
// TURN over TLS, on a blocking rustls stream.

/// A TURN client over TLS that remembers the end-entity certificate the server presented.
struct TlsTurn {
    client: TurnClient,
    /// DER of the server's end-entity certificate.
    presented: Vec<u8>,
}

impl TlsTurn {
    /// Connects and completes the handshake; `Err` if the handshake fails (a half-written certificate pair may make
    /// it fail for a moment while files are replaced).
    fn connect(addr: SocketAddr) -> Result<TlsTurn, String> {
        let (tls, presented) = common::tls_connect(common::LOOPBACK, addr, WAIT)?;
        Ok(TlsTurn {
            client: TurnClient::new(tls, USER, PASSWORD),
            presented,
        })
    }

    /// An authenticated request (the common client's 401/438 handling).
    fn request(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
    ) -> Response {
        self.client.request(method, attrs)
    }

    fn allocate(&mut self) -> Response {
        self.request(Method::ALLOCATE, |w| {
            w.add(&Attribute::RequestedTransport(17)).map(|_| ())
        })
    }

    fn refresh(&mut self) -> Response {
        self.request(Method::REFRESH, |w| w.add(&Attribute::Lifetime(600)).map(|_| ()))
    }
}

/// Asserts an Allocate succeeded with a relayed address.
fn assert_allocated(response: &Response) {
    assert_eq!(response.class(), Class::Success, "Allocate: {}", response.describe());
    assert!(
        response.address(attr::XOR_RELAYED_ADDRESS).is_some(),
        "Allocate success without XOR-RELAYED-ADDRESS"
    );
}

/// New TLS connections until one presents `want`, for at most `within`; returns how long it took.
fn wait_for_certificate(server: &Server, want: &Identity, within: Duration) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match TlsTurn::connect(server.tls) {
            Ok(c) if c.presented == want.der => return start.elapsed(),
            Ok(_) => last = "another certificate".to_owned(),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no new TLS connection presented the new certificate within {within:?} (last: {last}); log:\n{}",
        server.log()
    );
}

/// A server with `identity` on disk, a TLS connection that saw it, and an allocation over that connection.
fn start_with_allocation(tag: &str, identity: &Identity) -> (IdentityFiles, Server, TlsTurn) {
    let files = IdentityFiles::new(tag, identity);
    let tls_args = files.args();
    let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    args.extend(["--user", "alice:pw"]);
    let server = Server::start(&args);
    let mut old = TlsTurn::connect(server.tls).unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    assert!(
        old.presented == identity.der,
        "the server presented another certificate than A"
    );
    assert_allocated(&old.allocate());
    (files, server, old)
}

// ---------------------------------------------------------------------------------------------------------------
// Certificate reload.

#[test]
fn sighup_reloads_the_certificate_and_keeps_tls_allocations() {
    let (a, b) = (Identity::generate(), Identity::generate());
    assert_ne!(a.der, b.der);
    let (files, mut server, mut old) = start_with_allocation("sighup", &a);

    // B replaces A on disk with A's modification times, so only SIGHUP can make the server read it.
    let mtimes = files.mtimes();
    files.write(&b);
    files.set_mtimes(mtimes);
    let before = TlsTurn::connect(server.tls).unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    assert!(
        before.presented == a.der,
        "the certificate changed before SIGHUP; log:\n{}",
        server.log()
    );

    signal(server.pid(), "HUP");
    wait_for_certificate(&server, &b, WAIT);
    server.assert_alive();
    // The log is read from stderr by another thread than the one that saw the new certificate: wait for it.
    let log = server.log_with("SIGHUP: TLS certificate reloaded", WAIT);
    assert!(log.contains("SIGHUP: TLS certificate reloaded"), "log:\n{log}");

    // The connection made under A, and its allocation, are still there.
    let refreshed = old.refresh();
    assert_eq!(
        refreshed.class(),
        Class::Success,
        "Refresh over the old TLS connection: {}",
        refreshed.describe()
    );
    // A fresh connection under B can allocate too.
    let mut new = TlsTurn::connect(server.tls).unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    assert!(new.presented == b.der);
    assert_allocated(&new.allocate());
}

/// Between certbot writing the chain and the key, a reload sees a certificate that does not match its key: the
/// server keeps the old pair and says why, instead of failing every handshake until the next reload.
#[test]
fn a_reload_with_a_key_that_does_not_match_keeps_the_old_certificate() {
    let (a, b) = (Identity::generate(), Identity::generate());
    let (files, mut server, _old) = start_with_allocation("mismatch", &a);
    // B's certificate with A's key still on disk.
    std::fs::write(&files.cert, &b.cert_pem).expect("write certificate");
    signal(server.pid(), "HUP");
    let deadline = Instant::now() + WAIT;
    while !server.log().contains("does not match the private key") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.log().contains("does not match the private key"),
        "the log says why the reload was refused:\n{}",
        server.log()
    );
    let fresh = TlsTurn::connect(server.tls).unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    assert!(fresh.presented == a.der, "the old certificate is still served");
    // Once the key matches, the next reload takes the new pair.
    std::fs::write(&files.key, &b.key_pem).expect("write key");
    signal(server.pid(), "HUP");
    wait_for_certificate(&server, &b, WAIT);
    server.assert_alive();
}

/// An expired certificate, or one dated in the future, put in place of a valid one (a wrong file, a renewal that
/// copied the old one back) is refused with its dates named, and the valid one stays; a valid one then goes in.
/// Before, it replaced the valid one, every client refused the server, and the log said "reloaded".
#[test]
fn a_certificate_out_of_its_dates_does_not_replace_a_valid_one() {
    let a = Identity::generate();
    let (files, mut server, _old) = start_with_allocation("dates", &a);
    for (what, bad) in [
        ("expired", Identity::dated((2020, 1, 1), (2021, 1, 1))),
        ("not valid for another", Identity::dated((2099, 1, 1), (2100, 1, 1))),
    ] {
        files.write(&bad);
        signal(server.pid(), "HUP");
        let needle = format!("the new certificate is {what}");
        let log = server.log_with(&needle, WAIT);
        assert!(log.contains(&needle), "the refusal names the dates; log:\n{log}");
        let fresh = TlsTurn::connect(server.tls).unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
        assert!(
            fresh.presented == a.der,
            "the valid certificate is still served ({what})"
        );
    }
    let b = Identity::generate();
    files.write(&b);
    signal(server.pid(), "HUP");
    wait_for_certificate(&server, &b, WAIT);
    server.assert_alive();

    // Started with an expired one, the server says so in its log, not only at /readyz.
    let expired = IdentityFiles::new("expired-start", &Identity::dated((2020, 1, 1), (2021, 1, 1)));
    let tls_args = expired.args();
    let args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let started = Server::start(&args);
    let log = started.log_with("the TLS certificate is expired", WAIT);
    assert!(log.contains("the TLS certificate is expired"), "log:\n{log}");
}

#[test]
fn a_changed_certificate_file_is_reloaded_within_the_check_interval() {
    let (a, b) = (Identity::generate(), Identity::generate());
    let (files, mut server, mut old) = start_with_allocation("filechange", &a);

    // Files written now carry a later modification time than the ones the server loaded.
    std::thread::sleep(Duration::from_millis(20));
    files.write(&b);
    // The check runs every 5 s; 12 s leaves room for a loaded machine.
    let took = wait_for_certificate(&server, &b, Duration::from_secs(12));
    server.assert_alive();
    let log = server.log_with("TLS certificate reloaded (file changed)", WAIT);
    assert!(
        log.contains("TLS certificate reloaded (file changed)"),
        "reloaded after {took:?}, but not by the file check; log:\n{log}"
    );

    let refreshed = old.refresh();
    assert_eq!(
        refreshed.class(),
        Class::Success,
        "Refresh over the old TLS connection: {}",
        refreshed.describe()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Idle and half-open stream connections.

/// How a read on a stream connection ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// EOF or reset, after this long.
    Closed(Duration),
    /// Bytes arrived.
    Data(usize),
    /// Nothing within the wait.
    Open,
}

/// Reads until the server closes the connection, sends something, or `wait` passes; `since` is when the silence
/// began.
fn read_end(stream: &mut TcpStream, since: Instant, wait: Duration) -> ReadEnd {
    let deadline = since + wait;
    let mut byte = [0u8; 64];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return ReadEnd::Open;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match stream.read(&mut byte) {
            Ok(0) => return ReadEnd::Closed(since.elapsed()),
            Ok(n) => return ReadEnd::Data(n),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return ReadEnd::Closed(since.elapsed()),
        }
    }
}

/// Asserts the server closed `stream` no sooner than `min` and no later than `max` after `since`.
fn assert_closed_between(what: &str, stream: &mut TcpStream, since: Instant, min: Duration, max: Duration) {
    match read_end(stream, since, max) {
        ReadEnd::Closed(after) => assert!(
            after >= min,
            "{what}: closed after {after:?}, before the timeout of {min:?}"
        ),
        other => panic!("{what}: not closed within {max:?}: {other:?}"),
    }
}

#[test]
fn idle_and_half_open_connections_close_but_an_allocation_keeps_its_connection() {
    let mut server = Server::start(&["--set", "limits.idle_timeout=2", "--user", "alice:pw"]);

    let mut silent = connect_tcp(server.tcp);
    let silent_since = Instant::now();
    let mut half = connect_tcp(server.tcp);
    // The first two bytes of a STUN header, then nothing.
    half.write_all(&[0x00, 0x01]).expect("write");
    let half_since = Instant::now();

    let mut turn = TurnClient::new(Conn::tcp(server.tcp), USER, PASSWORD);
    assert_allocated(&turn.allocate(false));
    let allocated_since = Instant::now();

    let (min, max) = (Duration::from_millis(1500), Duration::from_secs(6));
    assert_closed_between("a silent TCP connection", &mut silent, silent_since, min, max);
    assert_closed_between("a connection that sent 2 bytes", &mut half, half_since, min, max);

    // Twice the idle timeout of silence, and the connection with an allocation is still open.
    let Conn::Tcp { stream, .. } = &mut turn.conn else {
        unreachable!("a TCP connection")
    };
    assert_eq!(
        read_end(stream, allocated_since, Duration::from_secs(4)),
        ReadEnd::Open,
        "the connection with an allocation"
    );
    let refreshed = turn.request(Method::REFRESH, |w| w.add(&Attribute::Lifetime(600)).map(|_| ()));
    assert_eq!(refreshed.class(), Class::Success, "Refresh: {}", refreshed.describe());
    server.assert_alive();
}

/// An allocation that expires while its client is silent ends its connection too, after the auth timeout in which
/// the client could allocate again: a client cannot keep a connection slot by allocating once and going quiet.
#[test]
fn a_connection_whose_allocation_expired_closes_after_the_auth_timeout() {
    let mut server = Server::start(&[
        "--set",
        "limits.default_lifetime=2",
        "--set",
        "limits.auth_timeout=2",
        "--set",
        "limits.idle_timeout=60",
        "--user",
        "alice:pw",
    ]);
    let mut turn = TurnClient::new(Conn::tcp(server.tcp), USER, PASSWORD);
    assert_allocated(&turn.allocate(false));
    let since = Instant::now();
    let Conn::Tcp { stream, .. } = &mut turn.conn else {
        unreachable!("a TCP connection")
    };
    // Expired at 2 s (seen by the once-a-second timer), then 2 s to allocate again: closed at 4 to 5 s.
    assert_closed_between(
        "a connection whose allocation expired",
        stream,
        since,
        Duration::from_millis(3500),
        Duration::from_secs(10),
    );
    server.assert_alive();
}

#[test]
fn the_single_port_closes_a_silent_connection_after_the_sniff_timeout() {
    // The port is free a moment ago; another process taking it in between fails the start, not the assertions.
    let single = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let mut server = Server::start(&["--set", "limits.idle_timeout=2", "--single-port", &single.to_string()]);

    let mut silent = connect_tcp(single);
    let silent_since = Instant::now();
    // Sorted as TURN over TCP by its first byte, then idle.
    let mut half = connect_tcp(single);
    half.write_all(&[0x00, 0x01]).expect("write");
    let half_since = Instant::now();

    assert_closed_between(
        "a connection that sent 2 bytes to the single port",
        &mut half,
        half_since,
        Duration::from_millis(1500),
        Duration::from_secs(6),
    );
    // The sniff timeout is the TLS handshake timeout, 10 s.
    assert_closed_between(
        "a silent connection to the single port",
        &mut silent,
        silent_since,
        Duration::from_secs(9),
        Duration::from_secs(16),
    );
    server.assert_alive();
}

// ---------------------------------------------------------------------------------------------------------------
// Graceful shutdown.

/// `traverse serve` started here, so the test sees its stdout (the signaling port) and its exit status. Killed by
/// PID on drop.
struct Process {
    child: common::Process,
    http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Process {
    fn start() -> Process {
        let common::Spawned { child, log, stdout: rx } = common::spawn_serve("127.0.0.1:0", &[], &[]);
        // From here on, a panic drops `process`, which kills the child.
        let mut process = Process {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut http = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!("traverse did not become ready; log:\n{}", process.log());
            };
            // `signaling: ws://127.0.0.1:P/ws   demo: …`
            if let Some(rest) = line.strip_prefix("signaling: ws://") {
                let hostport = rest.split("/ws").next().unwrap_or_default();
                http = Some(hostport.parse().unwrap_or_else(|e| panic!("{line}: {e}")));
            } else if line.starts_with("iceServers: ") {
                break;
            }
        }
        process.http = http.expect("a `signaling: ws://…` line before iceServers");
        process
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The exit status, waiting at most `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn sigterm_closes_signaling_sockets_with_4202_and_exits_0() {
    let mut process = Process::start();
    let url = format!("ws://{}/ws", process.http);
    let tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(process.http))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url.as_str(), tcp))
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake");
    let join = json!({"type": "join", "room": "lifecycle"}).to_string();
    ws.send(WsMessage::text(join)).await.expect("send join");
    let joined = loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no answer to join")
            .expect("the socket ended")
            .expect("read");
        if let WsMessage::Text(t) = next {
            break serde_json::from_str::<Value>(t.as_str()).expect("JSON");
        }
    };
    assert_eq!(joined["type"], "joined", "{joined}");

    signal(process.child.id(), "TERM");
    let sent = Instant::now();
    let close = loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no close frame within 5 s of SIGTERM; log:\n{}", process.log()));
        match next {
            Some(Ok(WsMessage::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!(
                "the socket ended without a close frame: {other:?}; log:\n{}",
                process.log()
            ),
        }
    };
    let code = close.as_ref().map(|f| u16::from(f.code));
    assert_eq!(code, Some(4202), "close frame {close:?}");

    let left = Duration::from_secs(5).saturating_sub(sent.elapsed());
    // The socket's part is over; blocking this thread while the process exits is fine.
    let Some(status) = process.wait_exit(left) else {
        panic!("still running 5 s after SIGTERM; log:\n{}", process.log());
    };
    assert!(status.success(), "exit status {status}; log:\n{}", process.log());
}

// ---------------------------------------------------------------------------------------------------------------
// EVEN-PORT reservations (RFC 8656 §7.2).

/// An EVEN-PORT allocation with R set holds port+1; another client redeems the token and gets exactly that port —
/// also behind 1:1 NAT, where the token names the advertised address, not the bound one.
#[test]
fn an_even_port_reservation_is_redeemed_by_another_client_behind_one_to_one_nat() {
    let server = Server::start(&["--user", "alice:pw", "--external-v4", "198.51.100.9"]);
    let mut first = TurnClient::new(Conn::udp(server.udp), USER, PASSWORD);
    let granted = first.request(Method::ALLOCATE, |w| {
        w.add(&Attribute::RequestedTransport(17))?;
        w.add(&Attribute::EvenPort { reserve: true }).map(|_| ())
    });
    assert_eq!(granted.class(), Class::Success, "{}", granted.describe());
    let relay = granted.address(attr::XOR_RELAYED_ADDRESS).expect("relayed address");
    assert_eq!(relay.ip().to_string(), "198.51.100.9", "the advertised address");
    assert_eq!(relay.port() % 2, 0, "an even port");
    let token: [u8; 8] = match granted.message().decode(attr::RESERVATION_TOKEN) {
        Some(Ok(Attribute::ReservationToken(t))) => t,
        other => panic!("no RESERVATION-TOKEN: {other:?}"),
    };
    let mut second = TurnClient::new(Conn::udp(server.udp), USER, PASSWORD);
    let redeemed = second.request(Method::ALLOCATE, |w| {
        w.add(&Attribute::RequestedTransport(17))?;
        w.add(&Attribute::ReservationToken(token)).map(|_| ())
    });
    assert_eq!(redeemed.class(), Class::Success, "{}", redeemed.describe());
    assert_eq!(
        redeemed.address(attr::XOR_RELAYED_ADDRESS),
        Some(SocketAddr::new(relay.ip(), relay.port() + 1)),
        "the reserved port+1"
    );
    // A token is redeemed once.
    let mut third = TurnClient::new(Conn::udp(server.udp), USER, PASSWORD);
    let again = third.request(Method::ALLOCATE, |w| {
        w.add(&Attribute::RequestedTransport(17))?;
        w.add(&Attribute::ReservationToken(token)).map(|_| ())
    });
    assert_eq!(again.error_code(), Some(508));
}

// ---------------------------------------------------------------------------------------------------------------
// Several relay addresses (`relay.bind_v4` as a list).

/// A port free on every one of `ips` right now, below the ephemeral range (which other tests' sockets draw from).
fn port_free_on(ips: &[std::net::IpAddr]) -> u16 {
    for _ in 0..200 {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        let bound: Vec<_> = ips
            .iter()
            .filter_map(|ip| std::net::UdpSocket::bind(SocketAddr::new(*ip, port)).ok())
            .collect();
        if bound.len() == ips.len() {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// With two relay addresses and a one-port range, allocations take the addresses in turn; with both full the next
/// gets 508; a full address passes an allocation on to the next one with room; and data relays through each.
#[test]
fn allocations_take_the_relay_addresses_in_turn_and_a_full_one_passes_them_on() {
    let ips: Vec<std::net::IpAddr> = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    let port = port_free_on(&ips);
    let peer = common::EchoPeer::start(common::LOOPBACK);
    let range = format!("{port}-{port}");
    let server = Server::start(&[
        "--user",
        "alice:pw",
        "--workers",
        "1",
        "--allow-peer",
        "127.0.0.0/8",
        "--relay-ports",
        &range,
        "--set",
        "relay.bind_v4=127.0.0.2,127.0.0.3",
    ]);
    let log = server.log_with("IPv4 relay address(es) hold 2 allocations", WAIT);
    assert!(
        log.contains("add addresses to relay.bind_v4"),
        "the capacity warning: {log}"
    );
    let relayed = |r: &Response| r.address(attr::XOR_RELAYED_ADDRESS).expect("relayed address");
    let new_client = || TurnClient::new(Conn::udp(server.udp), USER, PASSWORD);

    let (mut first, mut second, mut third) = (new_client(), new_client(), new_client());
    let a = first.allocate(false);
    assert_allocated(&a);
    let b = second.allocate(false);
    assert_allocated(&b);
    assert_eq!(relayed(&a), SocketAddr::new(ips[0], port), "the first address first");
    assert_eq!(relayed(&b), SocketAddr::new(ips[1], port), "then the next");
    assert_eq!(third.allocate(false).error_code(), Some(508), "both ranges full");

    // The next allocation starts at the second address, which is full, and passes on to the first once it has room.
    let freed = first.request(Method::REFRESH, |w| w.add(&Attribute::Lifetime(0)).map(|_| ()));
    assert_eq!(freed.class(), Class::Success, "{}", freed.describe());
    let mut fourth = new_client();
    let d = fourth.allocate(false);
    assert_allocated(&d);
    assert_eq!(
        relayed(&d),
        SocketAddr::new(ips[0], port),
        "passed on to the address with room"
    );

    // Data both ways through each relay address (turnutils_peer echoes it).
    for (client, name) in [(&mut second, "127.0.0.3"), (&mut fourth, "127.0.0.2")] {
        assert_eq!(client.channel_bind(0x4000, peer.addr).class(), Class::Success);
        client
            .conn
            .send(&common::channel_data(0x4000, b"through this address", false));
        let echoed = client.conn.drain(Duration::from_secs(2));
        assert!(
            echoed
                .iter()
                .any(|d| d.get(4..) == Some(b"through this address".as_slice())),
            "no echo through the relay on {name}: {echoed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// systemd's readiness protocol (Type=notify).

/// Under `Type=notify` systemd waits for `READY=1` on `$NOTIFY_SOCKET`: it comes once the listeners answer, and
/// `STOPPING=1` when SIGTERM stops the server.
#[test]
fn systemd_hears_ready_once_listening_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let path = std::env::temp_dir().join(format!("traverse-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let notify = UnixDatagram::bind(&path).expect("bind the notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let spawned = common::spawn_serve_under(&[], "127.0.0.1:0", &[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    let http = common::signaling_addr(&spawned);
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "READY=1");
    TcpStream::connect_timeout(&http, Duration::from_secs(2)).expect("signaling answers once READY=1 was sent");
    let mut child = spawned.child;
    signal(child.id(), "TERM");
    let n = notify.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "STOPPING=1");
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
}
