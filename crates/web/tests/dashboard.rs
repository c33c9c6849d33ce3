//! The dashboard's endpoints over real HTTP/1.1 (hyper serving [`web::Web`] on an in-memory connection): off
//! without an admin token, the token required and compared, the snapshot's JSON shape, the event stream, and the
//! bounds on streams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use web::{CertificateStatus, DashboardSources, Scheme, TurnLoad, Web, WebConfig};

const TOKEN: &str = "operator-secret-0123456789";

struct Http {
    status: u16,
    head: String,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn start(admin_token: Option<&str>) -> (Web, tempfile::TempDir) {
    start_with(admin_token, Arc::new(outcome::Outcomes::new()))
}

fn start_with(admin_token: Option<&str>, outcomes: Arc<outcome::Outcomes>) -> (Web, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let web = Web::start(WebConfig {
        admin_token: admin_token.map(str::to_owned),
        outcomes,
        ..common::config(dir.path())
    })
    .unwrap();
    (web, dir)
}

/// A connection from `from` served by `web`; the caller writes the request and reads the answer.
fn connect(web: &Web, from: Ipv4Addr) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let web = web.clone();
    let remote = SocketAddr::new(IpAddr::V4(from), 40000);
    tokio::spawn(async move { web.serve_connection(server, remote, Scheme::Http).await });
    client
}

fn request_text(path: &str, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n")
}

async fn get(web: &Web, from: Ipv4Addr, path: &str, auth: Option<&str>) -> Http {
    let mut conn = connect(web, from);
    conn.write_all(request_text(path, auth).as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut raw))
        .await
        .expect("answer within 5 s")
        .unwrap();
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> Http {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    Http {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Opens the event stream; returns the connection (kept open) once the head has arrived.
async fn open_stream(web: &Web, from: Ipv4Addr, auth: &str) -> (DuplexStream, Http) {
    let mut conn = connect(web, from);
    let req = format!("GET /api/dashboard/events HTTP/1.1\r\nHost: test\r\nAuthorization: {auth}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("head within 5 s")
            .unwrap();
        assert!(n > 0, "closed before the head: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(buf.get(..n).unwrap());
    }
    (conn, parse(&String::from_utf8_lossy(&raw)))
}

/// Reads until `n` `snapshot` events have arrived (chunked encoding and all); returns their data, parsed.
async fn read_snapshots(conn: &mut DuplexStream, seen: &mut String, n: usize, within: Duration) -> Vec<Value> {
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events: Vec<Value> = seen
            .split("event: snapshot\n")
            .skip(1)
            .filter_map(|e| e.strip_prefix("data: ")?.split('\n').next())
            .filter_map(|data| serde_json::from_str(data).ok())
            .collect();
        if events.len() >= n {
            return events;
        }
        let read = tokio::time::timeout_at(deadline, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{n} snapshots within {within:?}; got {seen:?}"))
            .unwrap();
        assert!(read > 0, "stream closed: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(buf.get(..read).unwrap()));
    }
}

#[tokio::test]
async fn without_an_admin_token_the_dashboard_is_off() {
    let (web, _dir) = start(None);
    for path in ["/dashboard", "/api/dashboard", "/api/dashboard/events"] {
        let r = get(
            &web,
            Ipv4Addr::new(192, 0, 2, 1),
            path,
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
        assert_eq!(r.status, 404, "{path}");
        let body = r.json();
        assert_eq!(body["code"], "dashboard-disabled", "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("admin_token"),
            "the sentence says how to turn it on: {body}"
        );
    }
}

#[tokio::test]
async fn the_token_is_required_and_compared() {
    let (web, _dir) = start(Some(TOKEN));
    // One source per path: the admin limiter allows 10 requests at once per source.
    for (from, path) in [
        (Ipv4Addr::new(192, 0, 2, 2), "/api/dashboard"),
        (Ipv4Addr::new(192, 0, 2, 12), "/api/dashboard/events"),
    ] {
        let none = get(&web, from, path, None).await;
        assert_eq!(none.status, 401, "{path}");
        assert_eq!(none.json()["code"], "admin-token-required");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));

        // Same length and another length: the same refusal (the compare is `subtle`'s, constant time in the
        // contents), and nothing of the snapshot.
        let same_length: String = TOKEN.chars().rev().collect();
        for wrong in [same_length.as_str(), "x", "operator-secret-0123456788"] {
            let r = get(&web, from, path, Some(&format!("Bearer {wrong}"))).await;
            assert_eq!(r.status, 401, "{path} with {wrong}");
            assert_eq!(r.json()["code"], "admin-token-invalid");
            assert!(!r.body.contains("signaling"));
        }
        let basic = get(&web, from, path, Some(&format!("Basic {TOKEN}"))).await;
        assert_eq!(basic.status, 401, "only a Bearer token counts");
    }
}

#[tokio::test]
async fn guessing_the_token_is_rate_limited_per_source() {
    let (web, _dir) = start(Some(TOKEN));
    let from = Ipv4Addr::new(192, 0, 2, 3);
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = get(&web, from, "/api/dashboard", Some(&format!("Bearer guess-{i}"))).await;
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
        }
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 401).count(), 10, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let right = get(&web, from, "/api/dashboard", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(
        right.status, 429,
        "the right token waits too: the limit is checked first"
    );
    let other = get(
        &web,
        Ipv4Addr::new(192, 0, 2, 4),
        "/api/dashboard",
        Some(&format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(other.status, 200, "another source is not charged");
}

#[tokio::test]
async fn the_snapshot_has_its_documented_shape() {
    let (web, _dir) = start(Some(TOKEN));
    let from = Ipv4Addr::new(192, 0, 2, 5);
    let auth = format!("Bearer {TOKEN}");
    let before = get(&web, from, "/api/dashboard", Some(&auth)).await;
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.header("cache-control"), Some("no-store"));
    let s = before.json();
    assert!(s["unixMs"].as_u64().unwrap() > 1_700_000_000_000, "{s}");
    for key in ["sockets", "sessions", "rooms", "relayed"] {
        assert_eq!(s["signaling"][key], 0, "{key} in {s}");
    }
    assert!(s["turn"].is_null() && s["certificate"].is_null(), "no sources yet: {s}");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    web.set_dashboard_sources(DashboardSources {
        turn: Box::new(|| TurnLoad {
            allocations: 3,
            relayed_packets_to_peer: 10,
            relayed_bytes_to_peer: 1000,
            relayed_packets_to_client: 20,
            relayed_bytes_to_client: 2000,
        }),
        certificate: Box::new(move || {
            Some(CertificateStatus {
                not_after_unix: now + 10 * 86_400 + 3600,
                self_signed: false,
            })
        }),
    });
    let s = get(&web, from, "/api/dashboard", Some(&auth)).await.json();
    assert_eq!(
        s["turn"],
        serde_json::json!({
            "allocations": 3,
            "relayedPacketsToPeer": 10,
            "relayedBytesToPeer": 1000,
            "relayedPacketsToClient": 20,
            "relayedBytesToClient": 2000,
        })
    );
    assert_eq!(s["certificate"]["daysLeft"], 10, "{s}");
    assert_eq!(s["certificate"]["notAfterUnix"], now + 10 * 86_400 + 3600);
    assert_eq!(s["certificate"]["selfSigned"], false);
}

/// A connected pair over TURN/TLS and a failed pair, as the hub records them.
fn outcomes_with_one_of_each(unix: u64) -> Arc<outcome::Outcomes> {
    let store = Arc::new(outcome::Outcomes::new());
    let connected = outcome::Report::parse(
        r#"{"outcome":"connected","elapsedMs":812,"policy":"all",
            "pair":{"local":{"type":"relay","protocol":"udp","relayProtocol":"tls"},
                    "remote":{"type":"srflx","protocol":"udp"}},
            "gathered":{"host":1,"srflx":1,"relayTls":1},"offered":{"stun":1,"turnTls":1},"remoteCandidates":2}"#,
    )
    .unwrap();
    store.record(
        &outcome::classify(&connected, Some(&connected)).between("lobby", "p_a", "p_b"),
        unix,
    );
    let failed = outcome::Report::parse(
        r#"{"outcome":"failed","elapsedMs":9000,"gathered":{"host":1,"srflx":1},"offered":{"stun":1},
            "remoteCandidates":2}"#,
    )
    .unwrap();
    store.record(
        &outcome::classify(&failed, Some(&failed)).between("lobby", "p_c", "p_d"),
        unix,
    );
    store
}

#[tokio::test]
async fn the_snapshot_carries_the_outcomes() {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (web, _dir) = start_with(Some(TOKEN), outcomes_with_one_of_each(unix));
    let s = get(
        &web,
        Ipv4Addr::new(192, 0, 2, 10),
        "/api/dashboard",
        Some(&format!("Bearer {TOKEN}")),
    )
    .await
    .json();
    let o = &s["outcomes"];
    assert_eq!(o["connected"], 1, "{o}");
    assert_eq!(o["failed"], 1, "{o}");
    assert_eq!(
        o["by_path"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        1,
        "{o}"
    );
    assert!(
        o["by_path"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with("relay-") || k.starts_with("direct-")),
        "{o}"
    );
    assert_eq!(o["by_reason"]["symmetric-nat-no-relay"], 1, "{o}");
    assert_eq!(o["time_to_connect_ms"]["count"], 1, "{o}");
    assert!(
        o["time_to_connect_ms"]["buckets"][0].as_array().unwrap().len() == 2,
        "[upper, cumulative]: {o}"
    );
    let minutes = o["minutes"].as_array().unwrap();
    let counted: u64 = minutes
        .iter()
        .map(|m| m["connected"].as_u64().unwrap() + m["failed"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2, "{o}");
    assert!(minutes.iter().all(|m| m["start_unix"].is_u64()));
    let recent = &o["recent_failures"][0];
    assert_eq!(recent["room"], "lobby");
    assert_eq!(recent["reason"], "symmetric-nat-no-relay");
    assert!(recent["message"].as_str().unwrap().len() > 20, "a sentence: {recent}");
    assert!(recent["unix"].is_u64());
}

#[tokio::test]
async fn the_page_is_served_with_its_script_and_style() {
    let (web, _dir) = start(Some(TOKEN));
    let from = Ipv4Addr::new(192, 0, 2, 6);
    let page = get(&web, from, "/dashboard", None).await;
    assert_eq!(page.status, 200, "the page itself holds nothing: it asks for the token");
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    assert!(page.body.contains("/dashboard/dashboard.js"));
    let js = get(&web, from, "/dashboard/dashboard.js", None).await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().contains("javascript"));
    let css = get(&web, from, "/dashboard/dashboard.css", None).await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
}

#[tokio::test]
async fn the_event_stream_sends_a_snapshot_at_once_then_every_two_seconds() {
    let (web, _dir) = start(Some(TOKEN));
    let (mut conn, head) = open_stream(&web, Ipv4Addr::new(192, 0, 2, 7), &format!("Bearer {TOKEN}")).await;
    assert_eq!(head.status, 200, "{}", head.head);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        head.header("x-accel-buffering"),
        Some("no"),
        "proxies must not buffer it"
    );
    let mut seen = head.body.clone();
    let first = read_snapshots(&mut conn, &mut seen, 1, Duration::from_secs(1)).await;
    assert!(first[0]["signaling"].is_object(), "{}", first[0]);
    let two = read_snapshots(&mut conn, &mut seen, 2, Duration::from_secs(4)).await;
    let (a, b) = (two[0]["unixMs"].as_u64().unwrap(), two[1]["unixMs"].as_u64().unwrap());
    assert!((1500..3500).contains(&(b - a)), "{a} then {b}");
}

#[tokio::test]
async fn streams_are_bounded_per_source_and_given_back() {
    let (web, _dir) = start(Some(TOKEN));
    let auth = format!("Bearer {TOKEN}");
    let from = Ipv4Addr::new(192, 0, 2, 8);
    let mut open = Vec::new();
    for _ in 0..web::dashboard::STREAMS_PER_SOURCE {
        let (conn, head) = open_stream(&web, from, &auth).await;
        assert_eq!(head.status, 200);
        open.push(conn);
    }
    let (_, refused) = open_stream(&web, from, &auth).await;
    assert_eq!(refused.status, 429, "{}", refused.head);
    let (other, head) = open_stream(&web, Ipv4Addr::new(192, 0, 2, 9), &auth).await;
    assert_eq!(head.status, 200, "another source has its own bound");
    drop(other);
    // A client that goes away gives its stream back (hyper drops the body when the write fails, at the next
    // snapshot at the latest).
    drop(open.pop());
    let mut again = None;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (conn, head) = open_stream(&web, from, &auth).await;
        if head.status == 200 {
            again = Some(conn);
            break;
        }
    }
    assert!(again.is_some(), "a closed stream's slot is given back");
}
