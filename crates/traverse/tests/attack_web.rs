//! Attacks on the web side (issue 7), against the real binary over loopback, each bounded in time: cross-origin
//! report creation, flushing the shared reports from one source, pages without security headers, a redirect that
//! reflects a forged Host, and credential minting without a rate limit.
//!
//! The server charges budgets to the TCP peer's address, so "another source" is a client socket bound to another
//! loopback address (127.0.0.2, …). IPv6 /64 grouping (one /64 is one source) is covered by the unit tests of the
//! web crate's rate limiter and report store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::timeout;

/// The longest any single answer may take on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------------
// The server under test.

/// A running `traverse serve`, killed by PID on drop.
struct Server {
    _child: common::Process,
    /// The plain HTTP listener.
    http: SocketAddr,
    /// The single port, when started with `--single-port`.
    single: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let args: Vec<&str> = ["--workers", "1"].into_iter().chain(args.iter().copied()).collect();
        let common::Spawned { child, log, stdout } = common::spawn_serve("127.0.0.1:0", &args, &[]);
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = Server {
            _child: child,
            http: unset,
            single: None,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = stdout.recv_timeout(left) else {
                panic!("traverse did not become ready; log:\n{}", server.log());
            };
            // `signaling: ws://HOST:PORT/ws …`; HOST is the public host, which may be a name: only the port counts.
            if let Some(rest) = line.strip_prefix("signaling: ws://") {
                server.http = loopback_port(rest);
            } else if let Some(rest) = line.strip_prefix("signaling: wss://") {
                server.single = Some(loopback_port(rest));
            } else if line.starts_with("iceServers: ") {
                break;
            }
        }
        assert_ne!(server.http.port(), 0, "no `signaling: ws://` line");
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (bounded) for a log line containing `text`.
    fn wait_for_log(&self, text: &str) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn loopback_port(rest: &str) -> SocketAddr {
    let hostport = rest.split("/ws").next().unwrap_or_default();
    let port = hostport.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap()))
}

/// A data directory removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(tag: &str) -> DataDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        DataDir(std::env::temp_dir().join(format!("traverse-{tag}-{}-{nanos}", std::process::id())))
    }

    /// `web.data_dir=<dir>`, for `--set`.
    fn setting(&self) -> String {
        format!("web.data_dir={}", self.0.display())
    }

    /// Report files on disk (temporary files included).
    fn files(&self) -> usize {
        std::fs::read_dir(&self.0).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP from a chosen source address.

#[derive(Debug)]
struct Http {
    status: u16,
    /// Lower-case names.
    headers: HashMap<String, String>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Sends one HTTP/1.1 request from a socket bound to `from` and reads the answer until the server closes.
async fn request(
    from: Ipv4Addr,
    to: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Http {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let mut tcp = timeout(WAIT, socket.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect");
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {to}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("response timed out")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Http {
        status,
        headers,
        body: body.to_owned(),
    }
}

const HERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn get(to: SocketAddr, target: &str) -> Http {
    request(HERE, to, "GET", target, &[], "").await
}

async fn post_report(from: Ipv4Addr, to: SocketAddr, content_type: &str, body: &str) -> Http {
    request(
        from,
        to,
        "POST",
        "/api/reports",
        &[("Content-Type", content_type)],
        body,
    )
    .await
}

/// Posts a report as `/check` does and returns its id.
async fn share(from: Ipv4Addr, to: SocketAddr, n: u32) -> String {
    let r = post_report(from, to, "application/json", &format!(r#"{{"n":{n}}}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["id"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Reports.

/// A cross-origin page may POST `text/plain` or a form without a preflight; such a POST must store nothing.
#[tokio::test]
async fn reports_need_a_json_content_type() {
    let dir = DataDir::new("attack-web-ctype");
    let server = Server::start(&["--set", &dir.setting()]);
    let report = r#"{"verdict":{"headline":"planted"}}"#;
    for content_type in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = post_report(HERE, server.http, content_type, report).await;
        assert_eq!(r.status, 415, "{content_type}: {r:?}");
        let body = r.json();
        assert_eq!(body["ok"], false);
        assert_eq!(body["code"], "unsupported-media-type");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("application/json")),
            "{body}"
        );
    }
    let none = request(HERE, server.http, "POST", "/api/reports", &[], report).await;
    assert_eq!(none.status, 415, "{none:?}");
    assert_eq!(dir.files(), 0, "nothing stored");

    // The page's own request (application/json) still works, and the refusals above cost no rate-limit token.
    for n in 0..5 {
        share(HERE, server.http, n).await;
    }
    assert_eq!(dir.files(), 5);
}

/// One source posting as fast as it is allowed, with the store full, only rolls its own reports; before, its posts
/// pushed out everyone's (1 000 from 1 000 addresses of one /64 emptied the store). Also across a restart.
#[tokio::test]
async fn one_source_cannot_evict_another_sources_report() {
    let dir = DataDir::new("attack-web-evict");
    let args = ["--set", &dir.setting(), "--set", "web.max_reports=3"];
    let server = Server::start(&args);
    let theirs = share(OTHER, server.http, 0).await;
    let mut mine = Vec::new();
    for n in 1..=5 {
        mine.push(share(HERE, server.http, n).await);
    }
    let r = get(server.http, &format!("/api/reports/{theirs}")).await;
    assert_eq!(r.status, 200, "the other source's report was evicted: {r:?}");
    assert_eq!(r.json()["report"]["n"], 0);
    assert!(
        r.json().get("source").is_none(),
        "readers do not see who sent it: {}",
        r.body
    );
    assert_eq!(get(server.http, &format!("/api/reports/{}", mine[4])).await.status, 200);
    assert_eq!(get(server.http, &format!("/api/reports/{}", mine[0])).await.status, 404);
    drop(server);

    // The charge is kept with the report: after a restart the flooding source still only rolls its own.
    let server = Server::start(&args);
    for n in 6..=9 {
        share(HERE, server.http, n).await;
    }
    let r = get(server.http, &format!("/api/reports/{theirs}")).await;
    assert_eq!(r.status, 200, "evicted after a restart: {r:?}");
    assert_eq!(dir.files(), 3);
}

/// A report whose body trickles in, a byte every half second, holds its connection slot no longer than the body's
/// 10 s deadline: the answer is `408 body-too-slow`, and nothing is stored.
#[tokio::test]
async fn a_trickled_report_body_is_cut_off() {
    let dir = DataDir::new("attack-web-trickle");
    let server = Server::start(&["--set", &dir.setting()]);
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(OTHER), 0)).unwrap();
    let mut tcp = timeout(WAIT, socket.connect(server.http)).await.unwrap().unwrap();
    let head = format!(
        "POST /api/reports HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        server.http
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while start.elapsed() < Duration::from_secs(20) {
        match timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {
                if tcp.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
    }
    let answered = start.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 408") && text.contains(r#""code":"body-too-slow""#),
        "after {answered:?}: {text:?}"
    );
    assert!(
        answered >= Duration::from_secs(9) && answered < Duration::from_secs(15),
        "answered after {answered:?}; the deadline is 10 s"
    );
    assert_eq!(dir.files(), 0, "a cut-off report is not stored");
}

// ---------------------------------------------------------------------------------------------------------------
// Security headers.

fn assert_security_headers(what: &str, r: &Http) {
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}: {r:?}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}: {r:?}");
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP: {r:?}"));
    for directive in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: {directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
}

/// `src="/…"` and `href="/…"` of a page: what the browser loads with it.
fn local_links(page: &str) -> Vec<String> {
    let mut links = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (at, _) in page.match_indices(attr) {
            let rest = &page[at + attr.len()..];
            let link = rest.split('"').next().unwrap_or_default();
            if link.starts_with('/') {
                links.push(link.to_owned());
            }
        }
    }
    links
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let dir = DataDir::new("attack-web-headers");
    let server = Server::start(&["--set", &dir.setting(), "--single-port", "127.0.0.1:0"]);
    let id = share(HERE, server.http, 1).await;
    let mut checked = 0;
    for target in [
        "/",
        "/demo",
        "/check",
        &format!("/check/{id}"),
        "/sdk/traverse.js",
        "/check/check.js",
        "/api/ice-servers",
        "/api/join-check?room=headers",
        "/api/join-check",
        &format!("/api/reports/{id}"),
        "/api/reports/nope",
        "/api/reports",
        "/healthz",
        "/no-such-page",
    ] {
        let r = get(server.http, target).await;
        assert_security_headers(target, &r);
        checked += 1;
        // Whatever a page loads is served from this origin (the CSP allows nothing inline or foreign).
        if r.header("content-type").is_some_and(|t| t.starts_with("text/html")) {
            assert!(
                !r.body.contains("<style") && !r.body.contains(" style="),
                "{target}: inline style"
            );
            for link in local_links(&r.body) {
                let asset = get(server.http, &link).await;
                assert_eq!(asset.status, 200, "{target} loads {link}: {asset:?}");
                assert_security_headers(&link, &asset);
                if link.ends_with(".js") {
                    assert!(asset
                        .header("content-type")
                        .is_some_and(|t| t.starts_with("text/javascript")));
                }
                if link.ends_with(".css") {
                    assert!(asset.header("content-type").is_some_and(|t| t.starts_with("text/css")));
                }
            }
        }
    }
    let refused = post_report(HERE, server.http, "text/plain", "{}").await;
    assert_security_headers("POST text/plain", &refused);
    let single = server.single.expect("a `signaling: wss://` line");
    let redirect = get(single, "/demo").await;
    assert_eq!(redirect.status, 308, "{redirect:?}");
    assert_security_headers("redirect", &redirect);
    assert!(checked >= 14);
}

// ---------------------------------------------------------------------------------------------------------------
// The plain-HTTP redirect on the single port.

#[tokio::test]
async fn the_https_redirect_ignores_a_forged_host() {
    let server = Server::start(&["--single-port", "127.0.0.1:0"]);
    let single = server.single.expect("a `signaling: wss://` line");
    let forged = request(HERE, single, "GET", "/demo?x=1", &[("Host", "evil.example")], "").await;
    assert_eq!(forged.status, 308, "{forged:?}");
    assert_eq!(
        forged.header("location"),
        Some(format!("https://{single}/demo?x=1").as_str()),
        "built from the port's own address, path kept"
    );
    // An absolute request target names a host too.
    let absolute = request(
        HERE,
        single,
        "GET",
        "http://evil.example/x",
        &[("Host", "evil.example")],
        "",
    )
    .await;
    assert_eq!(
        absolute.header("location"),
        Some(format!("https://{single}/x").as_str()),
        "{absolute:?}"
    );
    drop(server);

    // With a configured name, the redirect names it.
    let server = Server::start(&["--single-port", "127.0.0.1:0", "--public-host", "turn.example.test"]);
    let single = server.single.expect("a `signaling: wss://` line");
    let forged = request(HERE, single, "GET", "/check", &[("Host", "evil.example:8443")], "").await;
    assert_eq!(forged.status, 308, "{forged:?}");
    assert_eq!(
        forged.header("location"),
        Some(format!("https://turn.example.test:{}/check", single.port()).as_str())
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Credential minting.

/// 300 credentials in 60 ms from one address was possible; now a burst, then 429 with Retry-After, while another
/// source is still served.
#[tokio::test]
async fn ice_servers_are_rate_limited_per_source() {
    let server = Server::start(&[]);
    assert!(
        server.wait_for_log("signal.secret is unset"),
        "no WARN about running open:\n{}",
        server.log()
    );
    let mut served = 0;
    let mut limited = None;
    for _ in 0..60 {
        let r = get(server.http, "/api/ice-servers").await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{r:?}");
        served += 1;
    }
    let limited = limited.expect("60 credentials in a row from one address");
    assert!(served >= 10, "the burst is at least 10, got {served}");
    assert_eq!(limited.json()["code"], "rate-limited");
    assert_eq!(limited.json()["ok"], false);
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    let other = request(OTHER, server.http, "GET", "/api/ice-servers", &[], "").await;
    assert_eq!(other.status, 200, "another source is still served: {other:?}");
    assert!(other.json()["iceServers"].is_array());
}

/// Every answer's status on one connection, in order, read until the server closes it (or `WAIT` runs out).
async fn pipelined(from: Ipv4Addr, to: SocketAddr, requests: usize) -> (Vec<u16>, String, bool) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let mut tcp = timeout(WAIT, socket.connect(to)).await.unwrap().unwrap();
    let one = format!("GET /healthz HTTP/1.1\r\nHost: {to}\r\n\r\n");
    tcp.write_all(one.repeat(requests).as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let closed = timeout(WAIT, tcp.read_to_end(&mut raw)).await.is_ok();
    let text = String::from_utf8_lossy(&raw).into_owned();
    // A body is not followed by a line break: the next status line starts right after it.
    let statuses = text
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|answer| answer.get(..3)?.parse().ok())
        .collect();
    (statuses, text, closed)
}

/// One source pipelining requests on a keep-alive connection gets its burst of 5 s' worth (1 a second: 5), then
/// one `429 rate-limited` with `Retry-After`, and the connection is closed: what it pipelined behind is dropped,
/// and each new try costs a connection. Another source is served. Without the limit a source had a whole core: about
/// 32 000 answers a second from 4 connections (`/healthz`, two workers).
#[tokio::test]
async fn keep_alive_requests_are_rate_limited_per_source() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_tcp_port()));
    let server = Server::start(&[
        "--metrics",
        &metrics.to_string(),
        "--set",
        "limits.requests_per_second_per_source=1",
    ]);
    let started = Instant::now();
    let (statuses, text, closed) = pipelined(HERE, server.http, 300).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        closed,
        "the connection is closed after the refusal; got {} answers",
        statuses.len()
    );
    let served = statuses.iter().filter(|s| **s == 200).count();
    let allowed = 5.0 + elapsed + 1.0;
    assert!(
        served >= 5 && served as f64 <= allowed,
        "{served} served in {elapsed:.1} s with a burst of 5 and 1 a second"
    );
    assert_eq!(statuses.len(), served + 1, "one refusal, the last answer: {statuses:?}");
    assert_eq!(statuses.last(), Some(&429));
    let refusal = text
        .rsplit("HTTP/1.1 429")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(refusal.contains("retry-after: 1"), "{refusal}");
    assert!(refusal.contains("connection: close"), "{refusal}");
    assert!(refusal.contains(r#""code":"rate-limited""#), "{refusal}");
    assert!(refusal.contains("x-content-type-options: nosniff"), "{refusal}");

    // The same source on a new connection, an upgrade as much as any other request: still out of tokens (the next
    // comes a second after the burst was spent).
    // From a page: the refusal carries CORS, so that the page reads it and its Retry-After.
    let origin = [("Origin", "https://app.example")];
    let again = request(HERE, server.http, "GET", "/ws?room=r", &origin, "").await;
    assert_eq!(again.status, 429, "{again:?}");
    assert_eq!(again.header("access-control-allow-origin"), Some("*"), "{again:?}");
    assert_eq!(again.header("access-control-expose-headers"), Some("retry-after"));
    let other = request(OTHER, server.http, "GET", "/healthz", &[], "").await;
    assert_eq!(other.status, 200, "another source is served: {other:?}");
    // A second later the source has a token again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(server.http, "/healthz").await.status, 200);

    let scrape = request(HERE, metrics, "GET", "/metrics", &[], "").await;
    let line = scrape
        .body
        .lines()
        .find(|l| l.starts_with("traverse_http_requests_refused_total{reason=\"rate\"}"))
        .unwrap_or_else(|| panic!("no refusal counter: {}", scrape.body));
    let counted: u64 = line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap();
    assert_eq!(counted, 2, "the pipelined refusal and the upgrade's: {line}");
}

/// With a join-token secret the server runs in production mode and does not warn.
#[tokio::test]
async fn no_open_server_warning_with_a_signal_secret() {
    let server = Server::start(&["--signal-secret", "attack-web-signal-secret-0123"]);
    assert!(server.wait_for_log("listening"), "{}", server.log());
    assert!(!server.log().contains("signal.secret is unset"), "{}", server.log());
}
