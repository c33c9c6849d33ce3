//! Automatic certificates against a real ACME CA: Pebble (Let's Encrypt's test CA, Debian's `pebble`) validating
//! `traverse serve --domain NAME` by connecting to it — a tiny DNS server here answers every name with Traverse's
//! address (Pebble's `-dnsserver`), and Pebble's `tlsPort`/`httpPort` are Traverse's single port and HTTP port. Most
//! tests run on loopback; one puts Traverse alone in a network namespace of its own on port 443, reached over a veth
//! link. Each certificate is checked the way a browser would: a handshake for the name that verifies against
//! Pebble's root alone.
//!
//! Traffic stays on loopback and the test's own veth link (the namespace is deleted after); every process is killed
//! by PID when its handle drops; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use stun::{Attribute, Class, Method};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::{free_tcp_port, Spawned, TurnClient, LOOPBACK};

const USER: &str = "alice";
const PASSWORD: &str = "pw";
/// Issuance on a loaded 2-core machine: Pebble validates at once (PEBBLE_VA_NOSLEEP), the rest is round trips.
const ISSUE_WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------------
// Pebble, its DNS, and a directory of its own.

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("traverse-acme-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Answers every A query with 127.0.0.1 and every other type with no records (NOERROR), authoritatively: the name
/// "resolves to this server" for Pebble without touching any real DNS.
struct Dns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Dns {
    /// Every A record it gives is `answer`.
    fn start(answer: Ipv4Addr) -> Dns {
        let socket = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = dns_answer(&buf[..n], answer) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Dns { addr, stop }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn dns_answer(query: &[u8], answer: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    // The question: labels up to the root, then QTYPE and QCLASS.
    let mut at = 12;
    while *query.get(at)? != 0 {
        at += 1 + usize::from(query[at]);
    }
    let question_end = at + 5;
    let question = query.get(12..question_end)?;
    let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
    // Names under `nowhere.test` have no address: the case of a DNS record not (yet) made.
    let nowhere = String::from_utf8_lossy(question)
        .to_ascii_lowercase()
        .contains("\x07nowhere\x04test");
    let is_a = qtype == 1 && !nowhere;
    let mut out = Vec::with_capacity(question_end + 16);
    out.extend_from_slice(&query[0..2]);
    // QR, AA, RD (as asked), RA; NOERROR.
    out.extend_from_slice(&[0x84 | (query[2] & 0x01), 0x80]);
    out.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if is_a {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&answer.octets());
    }
    Some(out)
}

/// A running Pebble: its directory URL, the root its directory's HTTPS certificate chains to (for Traverse's
/// `tls.acme_ca_root`), and the root it issues under (for the clients' checks).
struct Pebble {
    child: Child,
    directory: String,
    https_root: PathBuf,
    issuing_root: rustls::pki_types::CertificateDer<'static>,
    log: Arc<Mutex<String>>,
    _dns: Dns,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pebble {
    /// Pebble validating TLS-ALPN-01 on `tls_port` and HTTP-01 on `http_port` of 127.0.0.1; certificates valid for
    /// `validity_secs` (0: Pebble's default, years). `None` (after a skip) without the package.
    fn start(dir: &Path, tls_port: u16, http_port: u16, validity_secs: u64) -> Option<Pebble> {
        Self::start_at(
            dir,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            tls_port,
            http_port,
            validity_secs,
        )
    }

    /// Like [`Pebble::start`], listening on `listen` and resolving every name to `answer`.
    fn start_at(
        dir: &Path,
        listen_ip: Ipv4Addr,
        answer: Ipv4Addr,
        tls_port: u16,
        http_port: u16,
        validity_secs: u64,
    ) -> Option<Pebble> {
        if !common::have_tool("pebble") {
            common::skip("pebble not installed (Debian package pebble)");
            return None;
        }
        // The directory's own HTTPS certificate, from a CA of this test.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "traverse test ACME directory CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec![listen_ip.to_string(), "localhost".to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let https_root = dir.join("directory-ca.pem");
        std::fs::write(&https_root, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("directory-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("directory-key.pem"), leaf_key.serialize_pem()).unwrap();

        let (listen, management) = (free_tcp_port(), free_tcp_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("{listen_ip}:{listen}"),
            "managementListenAddress": format!("{listen_ip}:{management}"),
            "certificate": dir.join("directory-cert.pem"),
            "privateKey": dir.join("directory-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let dns = Dns::start(answer);
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .arg("-dnsserver")
            .arg(dns.addr.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pebble");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let mut pebble = Pebble {
            child,
            directory: format!("https://{listen_ip}:{listen}/dir"),
            https_root,
            issuing_root: rustls::pki_types::CertificateDer::from(Vec::new()),
            log,
            _dns: dns,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let root_pem = loop {
            if let Ok(pem) = https_get(SocketAddr::new(listen_ip.into(), management), "/roots/0") {
                break pem;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start; log:\n{}",
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        use rustls::pki_types::pem::PemObject;
        pebble.issuing_root = rustls::pki_types::CertificateDer::from_pem_slice(root_pem.as_bytes())
            .unwrap_or_else(|e| panic!("Pebble's root {root_pem:?}: {e}"));
        Some(pebble)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Orders Pebble has seen (its log has a line per new order).
    fn orders(&self) -> usize {
        self.log().matches("POST /order-plz").count()
    }
}

/// A GET over HTTPS to Pebble's management port (its certificate is the directory's; any is accepted here).
fn https_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let config = Arc::new(common::accept_any_certificate());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.to_owned());
    }
    Ok(body.to_owned())
}

// ---------------------------------------------------------------------------------------------------------------
// Traverse and the client's view of its certificate.

/// `traverse serve --domain NAME` against `pebble`, with `args` (listeners); returns once it is ready.
fn serve(pebble: &Pebble, name: &str, data: &Path, args: &[&str]) -> Spawned {
    serve_under(&[], pebble, name, data, args)
}

/// Like [`serve`], run through `wrapper` (e.g. `ip netns exec NS`).
fn serve_under(wrapper: &[&str], pebble: &Pebble, name: &str, data: &Path, args: &[&str]) -> Spawned {
    let data_dir = format!("web.data_dir={}", data.display());
    let ca_root = format!("tls.acme_ca_root={}", pebble.https_root.display());
    let mut all = vec![
        "--domain",
        name,
        "--acme-directory",
        &pebble.directory,
        "--acme-email",
        "ops@traverse.test",
        "--set",
        &ca_root,
        "--set",
        &data_dir,
        "--user",
        "alice:pw",
        "--allow-peer",
        "127.0.0.0/8",
    ];
    all.extend_from_slice(args);
    let spawned = common::spawn_serve_under(wrapper, "127.0.0.1:0", &all, &[("TRAVERSE_LOG", "info")]);
    wait_ready(&spawned);
    spawned
}

fn wait_ready(spawned: &Spawned) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match spawned.stdout.recv_timeout(left) {
            Ok(line) if line.starts_with("iceServers: ") => return,
            Ok(_) => continue,
            Err(_) => panic!("traverse did not become ready; log:\n{}", log_of(spawned)),
        }
    }
}

fn log_of(spawned: &Spawned) -> String {
    spawned.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The server's log once it says an order failed and when it retries, within `wait` (with Pebble's log on failure).
fn wait_for_failure(server: &Spawned, wait: Duration, pebble: Option<&Pebble>) -> String {
    let deadline = Instant::now() + wait;
    loop {
        let log = log_of(server);
        if log.contains("retrying in") {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no failure reported within {wait:?}; log:\n{log}\npebble:\n{}",
            pebble.map(Pebble::log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the server by PID and reaps it.
fn stop(mut spawned: Spawned) {
    let _ = spawned.child.kill();
    let _ = spawned.child.wait();
}

/// A client configuration trusting `root` alone (a browser with only Pebble's root in its store).
fn trusting(root: &rustls::pki_types::CertificateDer<'static>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS handshake to `addr` for `name`: the leaf it presented, or why it failed (an untrusted certificate too).
fn handshake(addr: SocketAddr, name: &str, config: rustls::ClientConfig) -> Result<Vec<u8>, String> {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "no certificate".to_owned())
}

/// Waits until `addr` presents, for `name`, a certificate that verifies against Pebble's root and is not one of
/// `not`; returns it.
fn wait_for_issued(pebble: &Pebble, spawned: &Spawned, addr: SocketAddr, name: &str, not: &[Vec<u8>]) -> Vec<u8> {
    let deadline = Instant::now() + ISSUE_WAIT;
    loop {
        let last = match handshake(addr, name, trusting(&pebble.issuing_root, &[])) {
            Ok(leaf) if !not.contains(&leaf) => return leaf,
            Ok(_) => "the previous certificate".to_owned(),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "no certificate from Pebble for {name} on {addr} ({last}); traverse log:\n{}\npebble log:\n{}",
            log_of(spawned),
            pebble.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn assert_private(dir: &Path) {
    let acme = dir.join("acme");
    // The certificate is served as soon as it is issued and stored just after: wait for the files, briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stored = || {
        std::fs::read_dir(&acme)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .is_some_and(|e| {
                ["account.json", "cert.pem", "key.pem", "names.json"]
                    .iter()
                    .all(|f| e.path().join(f).exists())
            })
    };
    while !stored() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let store = std::fs::read_dir(&acme)
        .unwrap_or_else(|e| panic!("{}: {e}", acme.display()))
        .next()
        .expect("one directory per ACME directory URL")
        .unwrap()
        .path();
    use std::os::unix::fs::PermissionsExt;
    for file in ["account.json", "cert.pem", "key.pem", "names.json"] {
        let mode = std::fs::metadata(store.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file} must be readable by the server alone");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The tests.

/// TLS-ALPN-01 (RFC 8737) answered on the single port itself, for two names on one certificate: the CA's validation
/// handshakes and the clients share port and ALPN sorting; afterwards a handshake offering `acme-tls/1` gets nothing.
#[test]
fn issuance_by_tls_alpn_01_on_the_single_port() {
    let dir = TempDir::new("alpn");
    let single = free_tcp_port();
    let Some(pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 0) else {
        return;
    };
    let (name, second) = ("alpn.traverse.test", "www.alpn.traverse.test");
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(
        &pebble,
        name,
        &dir.0,
        &["--single-port", &single_addr, "--domain", second],
    );
    let addr = SocketAddr::new(LOOPBACK, single);
    let issued = wait_for_issued(&pebble, &server, addr, name, &[]);
    // One certificate for both names, each validated.
    assert_eq!(handshake(addr, second, trusting(&pebble.issuing_root, &[])), Ok(issued));
    let log = log_of(&server);
    assert_eq!(
        log.matches("challenge=tls-alpn-01").count(),
        2,
        "TLS-ALPN-01 for each name; log:\n{log}"
    );
    assert!(!log.contains("challenge=http-01"), "{log}");
    assert_private(&dir.0);
    // The validation certificate went with the challenge: a validation handshake now fails.
    let acme_only = trusting(&pebble.issuing_root, &[b"acme-tls/1"]);
    assert!(
        handshake(addr, name, acme_only).is_err(),
        "no validation certificate outside a challenge"
    );
    stop(server);
}

/// An account that cannot be saved (here the file it is written through is a directory) is kept in memory: the
/// certificate is issued all the same, after one registration, and the log says what to fix. Before, the order failed
/// on the save and every retry registered another account.
#[test]
fn an_account_that_cannot_be_saved_is_kept_and_the_certificate_issued() {
    let dir = TempDir::new("unsaved");
    let single = free_tcp_port();
    let Some(pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 0) else {
        return;
    };
    // The store writes `.account.json.tmp` and renames it: a directory there fails the save, not the reads.
    let store = acme::store::Store::new(&dir.0, &pebble.directory);
    std::fs::create_dir_all(store.dir().join(".account.json.tmp").join("x")).unwrap();
    let name = "unsaved.traverse.test";
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let addr = SocketAddr::new(LOOPBACK, single);
    wait_for_issued(&pebble, &server, addr, name, &[]);
    let log = log_of(&server);
    assert!(log.contains("the new account cannot be saved"), "{log}");
    assert_eq!(log.matches("ACME account registered").count(), 1, "{log}");
    stop(server);
}

/// HTTP-01 on the plain HTTP port when no single port is bound; the certificate then serves the TLS port.
#[test]
fn issuance_by_http_01_on_the_http_port() {
    let dir = TempDir::new("http");
    let (http, tls) = (free_tcp_port(), free_tcp_port());
    let Some(pebble) = Pebble::start(&dir.0, free_tcp_port(), http, 0) else {
        return;
    };
    let name = "http.traverse.test";
    let (http_addr, tls_addr) = (format!("127.0.0.1:{http}"), format!("127.0.0.1:{tls}"));
    let server = serve(
        &pebble,
        name,
        &dir.0,
        &["--http", &http_addr, "--tls", &tls_addr, "--public-host", "127.0.0.1"],
    );
    wait_for_issued(&pebble, &server, SocketAddr::new(LOOPBACK, tls), name, &[]);
    let log = log_of(&server);
    assert!(log.contains("challenge=http-01"), "HTTP-01 was used; log:\n{log}");
    // The turns: URLs name 127.0.0.1 (signal.public_host), which the issued certificate does not cover: said once it
    // is issued, on the first start too (it was said only after a restart).
    let uncovered = "the turns: URLs handed out name 127.0.0.1, which the certificate does not cover";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log_of(&server).contains(uncovered) {
        assert!(Instant::now() < deadline, "no warning; log:\n{}", log_of(&server));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_private(&dir.0);
    stop(server);
}

/// A short-lived certificate is renewed at about two thirds of its life and swapped in while a TURN/TLS allocation
/// and a WSS socket on the single port stay up and keep working.
#[test]
fn renewal_keeps_turn_tls_allocations_and_wss_sockets() {
    let dir = TempDir::new("renew");
    let single = free_tcp_port();
    // 30 s: renewal between 17.5 and 20 s after issuance.
    let Some(pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 30) else {
        return;
    };
    let name = "renew.traverse.test";
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(
        &pebble,
        name,
        &dir.0,
        &["--single-port", &single_addr, "--set", "limits.default_lifetime=600"],
    );
    let addr = SocketAddr::new(LOOPBACK, single);
    let first = wait_for_issued(&pebble, &server, addr, name, &[]);

    // TURN over TLS on the single port, with an allocation and a permission.
    let (conn, presented) = common::tls_connect(LOOPBACK, addr, Duration::from_secs(10)).unwrap();
    assert_eq!(presented, first);
    let mut turn = TurnClient::new(conn, USER, PASSWORD);
    let allocated = turn.allocate(false);
    assert_eq!(allocated.class(), Class::Success, "{}", allocated.describe());
    // And a signaling socket over WSS on the same port, verified against Pebble's root.
    let wss = Wss::connect(addr, name, trusting(&pebble.issuing_root, &[b"http/1.1"]));

    let second = wait_for_issued(&pebble, &server, addr, name, std::slice::from_ref(&first));
    assert_ne!(first, second);
    let log = log_of(&server);
    assert!(log.contains("renewal is due"), "renewed on schedule; log:\n{log}");

    // Both connections outlived the swap and still work.
    let peer = SocketAddr::new(LOOPBACK, 40_000);
    let permitted = turn.create_permission(peer);
    assert_eq!(permitted.class(), Class::Success, "{}", permitted.describe());
    let refreshed = turn.request(Method::REFRESH, |w| w.add(&Attribute::Lifetime(600)).map(|_| ()));
    assert_eq!(refreshed.class(), Class::Success, "{}", refreshed.describe());
    wss.assert_alive();
    stop(server);
}

/// A namespace of the test's own joined to this one by a veth pair: Traverse runs inside on port 443 at `inside`, the
/// CA and the clients stay here and reach it at that address — as in production, no loopback between them.
struct Netns {
    name: String,
    outside: Ipv4Addr,
    inside: Ipv4Addr,
}

impl Netns {
    /// `None` (after a skip) when namespaces cannot be made here (not root, no `ip`).
    fn create() -> Option<Netns> {
        if !is_root() || !common::have_tool("ip") {
            common::skip("network namespaces need root and ip (Debian package iproute2)");
            return None;
        }
        let pid = std::process::id();
        let name = format!("trv-acme-{pid}");
        // A /30 of 10.213.0.0/16 picked by the process id, so parallel runs do not collide.
        let block = (pid % 16_000) * 4;
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + block;
        let (outside, inside) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let (host_if, ns_if) = (format!("tra{}", pid % 100_000), format!("trb{}", pid % 100_000));
        let lab = Netns {
            name: name.clone(),
            outside,
            inside,
        };
        let ip = |args: &[&str]| {
            let out = common::run_bounded(Command::new("ip").args(args), Duration::from_secs(10));
            assert!(out.status.is_some_and(|s| s.success()), "ip {args:?}: {}", out.all());
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{inside}/30"), "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Some(lab)
    }
}

/// The effective uid is 0 (read from /proc: the workspace denies `unsafe`, so no geteuid).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it ours.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Production's shape: Traverse alone in its network namespace on port 443, the CA validating it there by name over
/// a real (veth) link, clients verifying the certificate from outside.
#[test]
fn issuance_on_port_443_in_a_network_namespace() {
    let Some(lab) = Netns::create() else { return };
    let dir = TempDir::new("netns");
    let Some(pebble) = Pebble::start_at(&dir.0, lab.outside, lab.inside, 443, 80, 0) else {
        return;
    };
    let name = "netns.traverse.test";
    let single = format!("{}:443", lab.inside);
    let server = serve_under(
        &["ip", "netns", "exec", &lab.name],
        &pebble,
        name,
        &dir.0,
        &["--single-port", &single],
    );
    let addr = SocketAddr::new(lab.inside.into(), 443);
    wait_for_issued(&pebble, &server, addr, name, &[]);
    assert!(log_of(&server).contains("challenge=tls-alpn-01"), "{}", log_of(&server));
    stop(server);
}

/// A CA that cannot validate (nothing listens where it looks): the error says which challenge failed, what the CA
/// said and what to check; the server keeps serving its self-signed placeholder, backs off instead of looping, and
/// keeps running.
#[test]
fn a_failed_challenge_is_explained_and_retried_later_without_a_crash_loop() {
    let dir = TempDir::new("refused");
    let single = free_tcp_port();
    // Pebble validates TLS-ALPN-01 on a port where nothing listens.
    let Some(pebble) = Pebble::start(&dir.0, free_tcp_port(), free_tcp_port(), 0) else {
        return;
    };
    let name = "refused.traverse.test";
    let single_addr = format!("127.0.0.1:{single}");
    let mut server = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let log = wait_for_failure(&server, ISSUE_WAIT, Some(&pebble));
    // What the operator reads, in the test's output.
    for line in log.lines().filter(|l| l.contains("ERROR")) {
        println!("traverse: {line}");
    }
    assert!(
        log.contains(&format!("the tls-alpn-01 challenge for {name} failed; the CA said:")),
        "{log}"
    );
    assert!(
        log.contains("check:") && log.contains("TCP 443"),
        "what to check; log:\n{log}"
    );
    assert!(log.contains("Still serving the self-signed placeholder"), "{log}");
    // Backoff, not a loop: no second order within a few seconds, and the process lives on.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        log_of(&server).matches("ordering a certificate").count(),
        1,
        "{}",
        log_of(&server)
    );
    assert!(
        matches!(server.child.try_wait(), Ok(None)),
        "traverse exited; log:\n{}",
        log_of(&server)
    );
    // Still serving TLS on the single port: the placeholder, which Pebble's root does not vouch for.
    let addr = SocketAddr::new(LOOPBACK, single);
    assert!(common::tls_connect(LOOPBACK, addr, Duration::from_secs(10)).is_ok());
    assert!(handshake(addr, name, trusting(&pebble.issuing_root, &[])).is_err());
    stop(server);
}

/// A CA that issues a certificate the plan would replace at once (Pebble with a 1-second validity: expired, or due
/// for renewal, when it arrives) is refused: not installed over what is served, and the next order waits its
/// backoff. Before, it was installed and ordered again at once, in a loop against the CA (a key, an order and three
/// files each).
#[test]
fn a_certificate_due_as_it_arrives_is_not_installed_and_the_next_order_waits() {
    let dir = TempDir::new("due");
    let single = free_tcp_port();
    let Some(pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 1) else {
        return;
    };
    let name = "due.traverse.test";
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let log = wait_for_failure(&server, ISSUE_WAIT, Some(&pebble));
    assert!(
        log.contains("the CA issued a certificate that cannot be kept (") && log.contains("): not installed"),
        "{log}"
    );
    assert!(log.contains("Still serving the self-signed placeholder"), "{log}");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        log_of(&server).matches("ordering a certificate").count(),
        1,
        "one order, then the backoff: {}",
        log_of(&server)
    );
    let addr = SocketAddr::new(LOOPBACK, single);
    assert!(
        handshake(addr, name, trusting(&pebble.issuing_root, &[])).is_err(),
        "the placeholder is still served, not the certificate that was due"
    );
    stop(server);
}

/// A name with no address record: the error says the name does not resolve.
#[test]
fn a_name_that_does_not_resolve_is_named() {
    let dir = TempDir::new("nxdomain");
    let single = free_tcp_port();
    let Some(pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 0) else {
        return;
    };
    let name = "turn.nowhere.test";
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let log = wait_for_failure(&server, ISSUE_WAIT, None);
    for line in log.lines().filter(|l| l.contains("ERROR")) {
        println!("traverse: {line}");
    }
    assert!(
        log.contains(&format!("the tls-alpn-01 challenge for {name} failed")),
        "{log}"
    );
    // Let's Encrypt says `dns`, Pebble `malformed` with "Could not resolve"; the advice is the same.
    assert!(log.contains("resolve"), "the CA's words; log:\n{log}");
    assert!(log.contains(&format!("check: {name} must resolve")), "{log}");
    stop(server);
}

/// A directory that does not answer: a sentence naming it, a retry later, the server up. Needs no Pebble.
#[test]
fn an_unreachable_directory_is_explained_and_retried_later() {
    let dir = TempDir::new("nodir");
    let single = free_tcp_port();
    let closed = free_tcp_port();
    let directory = format!("https://127.0.0.1:{closed}/dir");
    let data_dir = format!("web.data_dir={}", dir.0.display());
    let single_addr = format!("127.0.0.1:{single}");
    let mut server = common::spawn_serve(
        "127.0.0.1:0",
        &[
            "--domain",
            "nodir.traverse.test",
            "--acme-directory",
            &directory,
            "--set",
            &data_dir,
            "--single-port",
            &single_addr,
        ],
        &[],
    );
    wait_ready(&server);
    let log = wait_for_failure(&server, ISSUE_WAIT, None);
    for line in log.lines().filter(|l| l.contains("ERROR")) {
        println!("traverse: {line}");
    }
    assert!(
        log.contains(&format!("cannot use the ACME directory {directory}")),
        "{log}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(log_of(&server).matches("ordering a certificate").count(), 1);
    assert!(
        matches!(server.child.try_wait(), Ok(None)),
        "traverse exited; log:\n{}",
        log_of(&server)
    );
    assert!(common::tls_connect(LOOPBACK, SocketAddr::new(LOOPBACK, single), Duration::from_secs(10)).is_ok());
    stop(server);
}

/// A renewal that fails (the CA is gone) leaves the certificate in use alone — clients still verify it — says so, and
/// is retried later.
#[test]
fn a_failed_renewal_keeps_the_old_certificate_and_retries() {
    let dir = TempDir::new("renewfail");
    let single = free_tcp_port();
    // 60 s: renewal between 35 and 40 s after issuance, leaving 20 s of validity to check the old one is served.
    let Some(mut pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 60) else {
        return;
    };
    let name = "renewfail.traverse.test";
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let addr = SocketAddr::new(LOOPBACK, single);
    let issued = wait_for_issued(&pebble, &server, addr, name, &[]);
    let _ = pebble.child.kill();
    let _ = pebble.child.wait();
    let log = wait_for_failure(&server, Duration::from_secs(55), None);
    for line in log.lines().filter(|l| l.contains("ERROR")) {
        println!("traverse: {line}");
    }
    assert!(log.contains("renewal is due"), "{log}");
    assert!(
        log.contains("Still serving the previous certificate (expires in"),
        "{log}"
    );
    let presented = handshake(addr, name, trusting(&pebble.issuing_root, &[])).expect("the old certificate verifies");
    assert_eq!(presented, issued);
    stop(server);
}

/// A restart serves the stored certificate from its first handshake and orders nothing; a stored pair that does not
/// match is ordered again.
#[test]
fn a_restart_reuses_the_stored_certificate_without_a_new_order() {
    let dir = TempDir::new("restart");
    let single = free_tcp_port();
    let Some(pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 0) else {
        return;
    };
    let name = "restart.traverse.test";
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let addr = SocketAddr::new(LOOPBACK, single);
    let issued = wait_for_issued(&pebble, &server, addr, name, &[]);
    let orders = pebble.orders();
    assert_eq!(orders, 1, "one order; pebble log:\n{}", pebble.log());
    stop(server);

    let root = pebble.issuing_root.clone();
    let again = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let presented = handshake(addr, name, trusting(&root, &[])).expect("the stored certificate verifies");
    assert_eq!(presented, issued, "the same certificate");
    std::thread::sleep(Duration::from_secs(2));
    let log = log_of(&again);
    assert!(log.contains("serving the stored ACME certificate"), "{log}");
    assert!(!log.contains("ordering a certificate"), "{log}");
    assert_eq!(pebble.orders(), orders, "no new order; pebble log:\n{}", pebble.log());
    stop(again);

    // A name added whose order cannot succeed yet (no DNS record): the stored certificate is still served for the
    // name it covers while the order for both is retried. Before, every client got the self-signed placeholder.
    let added = "added.nowhere.test";
    let widened = serve(
        &pebble,
        name,
        &dir.0,
        &["--single-port", &single_addr, "--domain", added],
    );
    let presented = handshake(addr, name, trusting(&root, &[])).expect("the stored certificate still verifies");
    assert_eq!(presented, issued, "the stored certificate, for the name it covers");
    let log = wait_for_failure(&widened, ISSUE_WAIT, None);
    assert!(
        log.contains("does not cover every configured name") && log.contains(added),
        "the order names why; log:\n{log}"
    );
    let presented = handshake(addr, name, trusting(&root, &[])).expect("still served after the failed order");
    assert_eq!(presented, issued);
    stop(widened);
    let orders = pebble.orders();

    // A crash between writing the key and the chain leaves a pair that does not match: refused, and ordered again
    // rather than served or taken for good.
    let store = std::fs::read_dir(dir.0.join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stray = rcgen::KeyPair::generate().unwrap();
    std::fs::write(store.join("key.pem"), stray.serialize_pem()).unwrap();
    let third = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let reissued = wait_for_issued(&pebble, &third, addr, name, std::slice::from_ref(&issued));
    assert_ne!(reissued, issued);
    assert!(
        log_of(&third).contains("the stored ACME certificate cannot be used"),
        "{}",
        log_of(&third)
    );
    assert_eq!(pebble.orders(), orders + 1);
    stop(third);
}

/// The CA no longer knows the stored account (a company CA redeployed, its database reset): the order it refuses
/// with `accountDoesNotExist` is followed by a new account and the order again, in the same attempt. Before, every
/// order failed with that until someone deleted `account.json`.
#[test]
fn an_account_the_ca_no_longer_knows_is_registered_again() {
    let dir = TempDir::new("account-gone");
    let single = free_tcp_port();
    let Some(pebble) = Pebble::start(&dir.0, single, free_tcp_port(), 0) else {
        return;
    };
    let name = "account.traverse.test";
    let single_addr = format!("127.0.0.1:{single}");
    let server = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let addr = SocketAddr::new(LOOPBACK, single);
    let first = wait_for_issued(&pebble, &server, addr, name, &[]);
    stop(server);

    // The stored account now names one the CA never had, and no certificate is stored: the next start orders.
    let store = std::fs::read_dir(dir.0.join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut account: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(store.join("account.json")).unwrap()).unwrap();
    let id = account["id"].as_str().unwrap().to_owned();
    let (base, _) = id.rsplit_once('/').unwrap();
    let forgotten = format!("{base}/0123456789abcdef");
    account["id"] = forgotten.clone().into();
    std::fs::write(store.join("account.json"), account.to_string()).unwrap();
    std::fs::remove_file(store.join("cert.pem")).unwrap();

    let again = serve(&pebble, name, &dir.0, &["--single-port", &single_addr]);
    let second = wait_for_issued(&pebble, &again, addr, name, std::slice::from_ref(&first));
    assert_ne!(second, first);
    let log = log_of(&again);
    assert!(log.contains("no longer knows the stored account"), "{log}");
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(store.join("account.json")).unwrap()).unwrap();
    assert_ne!(stored["id"], forgotten, "the new account is stored");
    stop(again);
}

// ---------------------------------------------------------------------------------------------------------------
// A signaling socket over WSS, kept alive on a thread of its own (it answers the server's pings and sends the
// protocol's own `ping` every 2 s, counting the `pong`s).

struct Wss {
    pongs: Arc<Mutex<(usize, bool)>>,
    _stop: mpsc::Sender<()>,
}

impl Wss {
    fn connect(addr: SocketAddr, name: &str, config: rustls::ClientConfig) -> Wss {
        let pongs = Arc::new(Mutex::new((0usize, false)));
        let (stop, stopped) = mpsc::channel::<()>();
        let (ready, is_ready) = mpsc::channel::<Result<(), String>>();
        let (counted, name) = (pongs.clone(), name.to_owned());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let server_name = rustls::pki_types::ServerName::try_from(name.clone()).unwrap();
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let tls = match connector.connect(server_name, tcp).await {
                    Ok(tls) => tls,
                    Err(e) => return ready.send(Err(format!("TLS: {e}"))).unwrap(),
                };
                let url = format!("wss://{name}:{}/ws", addr.port());
                let mut ws = match tokio_tungstenite::client_async(url, tls).await {
                    Ok((ws, _)) => ws,
                    Err(e) => return ready.send(Err(format!("WebSocket: {e}"))).unwrap(),
                };
                let join = r#"{"type":"join","room":"acme-renewal"}"#;
                ws.send(WsMessage::Text(join.into())).await.unwrap();
                ready.send(Ok(())).unwrap();
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                loop {
                    if matches!(stopped.try_recv(), Ok(()) | Err(mpsc::TryRecvError::Disconnected)) {
                        return;
                    }
                    tokio::select! {
                        message = ws.next() => match message {
                            Some(Ok(WsMessage::Text(text))) if text.contains(r#""type":"pong""#) => {
                                counted.lock().unwrap().0 += 1;
                            }
                            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                                counted.lock().unwrap().1 = true;
                                return;
                            }
                            Some(Ok(_)) => {}
                        },
                        _ = tick.tick() => {
                            let ping = r#"{"type":"ping","ack":0}"#;
                            if ws.send(WsMessage::Text(ping.into())).await.is_err() {
                                counted.lock().unwrap().1 = true;
                                return;
                            }
                        }
                    }
                }
            });
        });
        is_ready
            .recv_timeout(Duration::from_secs(20))
            .expect("the WSS thread reports")
            .expect("WSS connects and verifies");
        Wss { pongs, _stop: stop }
    }

    /// Not closed, and answering: a new `pong` within a few seconds.
    fn assert_alive(&self) {
        let before = *self.pongs.lock().unwrap();
        assert!(!before.1, "the WSS socket was closed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = *self.pongs.lock().unwrap();
            assert!(!now.1, "the WSS socket was closed");
            if now.0 > before.0 {
                return;
            }
            assert!(Instant::now() < deadline, "no pong on the WSS socket");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `check-config` refuses what cannot work with ACME, each with its key and reason, before anything is ordered.
#[test]
fn check_config_refuses_what_acme_cannot_do() {
    let dir = TempDir::new("config");
    let check = |toml: &str| {
        let path = dir.0.join("traverse.toml");
        std::fs::write(&path, toml).unwrap();
        common::run_bounded(
            Command::new(env!("CARGO_BIN_EXE_traverse"))
                .arg("check-config")
                .arg(&path),
            Duration::from_secs(30),
        )
    };
    let good = check("[listen]\nsingle = [\"127.0.0.1:443\"]\n[tls]\ndomains = [\"turn.example.com\"]\n");
    assert!(good.status.is_some_and(|s| s.success()), "{}", good.all());
    for (toml, expected) in [
        (
            "[tls]\ndomains = [\"*.example.com\"]\n",
            "tls.domains: \"*.example.com\" is not a DNS name a CA can validate",
        ),
        ("[tls]\ndomains = [\"192.0.2.1\"]\n", "is an address"),
        (
            "[tls]\ndomains = [\"turn.example.com\"]\ncert = \"/proc/version\"\nkey = \"/proc/version\"\n",
            "a certificate comes from files (tls.cert) or from ACME (tls.domains), not both",
        ),
        (
            "[listen]\nhttp = []\nsingle = []\n[tls]\ndomains = [\"turn.example.com\"]\n",
            "ACME needs listen.single on 443 (TLS-ALPN-01) or listen.http on 80 (HTTP-01)",
        ),
        (
            "[tls]\ndomains = [\"turn.example.com\"]\nacme_ca_root = \"/nonexistent/root.pem\"\n",
            "tls.acme_ca_root: cannot read it",
        ),
    ] {
        let out = check(toml);
        assert!(!out.status.is_some_and(|s| s.success()), "{toml} passed");
        assert!(
            out.all().contains(expected),
            "{toml}: expected {expected:?} in\n{}",
            out.all()
        );
    }
}
