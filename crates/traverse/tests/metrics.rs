//! The metrics listener of the real binary, read the way Prometheus reads it: known traffic from real peers
//! (coturn's `turnutils_uclient` through Traverse to `turnutils_peer`, the project's own TURN client for refusals),
//! then `/metrics` scraped and parsed by Python's `prometheus_client` OpenMetrics parser — the format served
//! (`application/openmetrics-text`; its Prometheus 0.0.4 parser would read every `_total` sample as an untyped
//! family of its own) — and the counters compared with what was sent. Also the token, the refusal of a public
//! address without one, and `/healthz` / `/readyz` on both the metrics listener and an HTTP port.
//!
//! The workers copy their counters once a second, so every read polls (bounded) until the numbers arrive.
//! A missing tool prints `SKIP: …` and passes, unless `TRAVERSE_REQUIRE_PEERS=1` (CI), where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    clear_traverse_env, free_tcp_port, http_get, require_tools, run_bounded, skip, Conn, EchoPeer, Server, TurnClient,
};

const TOKEN: &str = "metrics-token-0123456789";

/// `true` when Python's `prometheus_client` can be imported; otherwise skips (or fails under CI).
fn have_parser() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip("python3 with prometheus_client not installed (python3 -m pip install prometheus_client)");
    }
    ok
}

/// Every sample of an exposition: name (with its `_total`/`_bucket` suffix), labels, value.
#[derive(Debug)]
struct Exposition(Vec<(String, BTreeMap<String, String>, f64)>);

impl Exposition {
    /// The sum of the samples named `name` whose labels include `labels` (0 when there is none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }
}

/// Parses OpenMetrics text with Python's `prometheus_client` (strict: a malformed exposition fails the test).
fn parse(text: &str) -> Exposition {
    const SCRIPT: &str = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    Exposition(samples)
}

/// Scrapes `/metrics` (200, OpenMetrics) and parses it.
fn scrape(addr: SocketAddr, token: Option<&str>) -> Exposition {
    let (status, head, body) = http_get(addr, "/metrics", token);
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    parse(&body)
}

/// Scrapes until `done` holds (the workers publish once a second), at most 10 s; returns the last exposition.
fn scrape_until(addr: SocketAddr, token: Option<&str>, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = scrape(addr, token);
        if done(&e) || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The final `tot_send_msgs=N, tot_recv_msgs=M` line and `Total lost packets L` of a uclient run.
fn uclient_totals(text: &str) -> Option<(u64, u64, u64)> {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let totals = text
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs=") && !l.contains("msz="))?;
    let lost = text.lines().rev().find(|l| l.contains("Total lost packets"))?;
    Some((
        number_after(totals, "tot_send_msgs=")?,
        number_after(totals, "tot_recv_msgs=")?,
        number_after(lost, "Total lost packets")?,
    ))
}

#[test]
fn uclient_traffic_moves_the_relayed_packet_counters_by_what_it_sent() {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) || !have_parser() {
        return;
    }
    let port = free_tcp_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = Server::start(&[
        "--allow-peer",
        "127.0.0.0/8",
        "--user",
        "alice:pw",
        "--workers",
        "2",
        "--metrics",
        &metrics.to_string(),
    ]);
    let before = scrape(metrics, None);
    let to_peer = [("direction", "to_peer"), ("transport", "udp")];
    let to_client = [("direction", "to_client"), ("transport", "udp")];
    assert_eq!(before.value("traverse_turn_relayed_packets_total", &to_peer), 0.0);
    assert!(before.has("process_resident_memory_bytes") && before.has("traverse_signal_sockets"));

    let peer = EchoPeer::start(common::LOOPBACK);
    // 4 clients × 40 messages of 120 bytes over channels, to the echo peer and back.
    const SIZE: f64 = 120.0;
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-u", "alice", "-w", "pw"])
        .args(["-e", &peer.addr.ip().to_string(), "-r", &peer.addr.port().to_string()])
        .args(["-p", &server.udp.port().to_string()])
        .args(["-n", "40", "-m", "4", "-l", "120"])
        .arg("127.0.0.1");
    let out = run_bounded(&mut cmd, Duration::from_secs(240));
    let text = out.all();
    assert!(!out.timed_out, "uclient timed out\n{text}");
    let (sent, received, lost) = uclient_totals(&text).unwrap_or_else(|| panic!("no uclient summary:\n{text}"));
    assert!(sent >= 160, "uclient sent {sent}\n{text}");
    server.assert_alive();

    let after = scrape_until(metrics, None, |e| {
        e.value("traverse_turn_relayed_packets_total", &to_peer) >= (sent - lost) as f64
            && e.value("traverse_turn_relayed_packets_total", &to_client) >= received as f64
    });
    let packets_out = after.value("traverse_turn_relayed_packets_total", &to_peer);
    let packets_back = after.value("traverse_turn_relayed_packets_total", &to_client);
    println!(
        "uclient: sent={sent} received={received} lost={lost}; relayed to_peer={packets_out} to_client={packets_back}"
    );
    // Every message uclient sent went to the peer unless it was lost on the way, and every echo it counted came
    // back through the relay (an echo lost after the relay is relayed but not received).
    assert!(
        ((sent - lost) as f64..=sent as f64).contains(&packets_out),
        "to_peer {packets_out} for {sent} sent, {lost} lost"
    );
    assert!(
        (received as f64..=(received + lost) as f64).contains(&packets_back),
        "to_client {packets_back} for {received} received, {lost} lost"
    );
    assert_eq!(
        after.value("traverse_turn_relayed_bytes_total", &to_peer),
        packets_out * SIZE
    );
    assert_eq!(
        after.value("traverse_turn_relayed_bytes_total", &to_client),
        packets_back * SIZE
    );
    for transport in ["tcp", "tls"] {
        assert_eq!(
            after.value("traverse_turn_relayed_packets_total", &[("transport", transport)]),
            0.0,
            "nothing was relayed over {transport}"
        );
    }
    let created = after.value("traverse_turn_allocations_created_total", &[("transport", "udp")]);
    assert!(created >= 4.0, "{created} allocations created for 4 clients");
    assert!(after.value("traverse_turn_auth_challenges_total", &[]) >= 4.0);
    assert_eq!(after.value("traverse_turn_auth_failures_total", &[]), 0.0);
    assert!(after.value("traverse_turn_error_responses_total", &[("code", "401")]) >= 4.0);
}

#[test]
fn a_refused_peer_and_a_wrong_password_move_their_counters() {
    if !have_parser() {
        return;
    }
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let server = Server::start(&["--user", "alice:pw", "--metrics", &metrics.to_string()]);

    let mut alice = TurnClient::new(Conn::udp(server.udp), "alice", "pw");
    let allocated = alice.allocate(false);
    assert_eq!(allocated.error_code(), None, "{}", allocated.describe());
    // RFC 1918: refused by the default peer policy.
    let refused = alice.create_permission("10.0.0.1:9".parse().unwrap());
    assert_eq!(refused.error_code(), Some(403), "{}", refused.describe());
    let mut mallory = TurnClient::new(Conn::udp(server.udp), "alice", "not-the-password");
    assert_eq!(mallory.allocate(false).error_code(), Some(401));

    let e = scrape_until(metrics, None, |e| {
        e.value("traverse_turn_peer_refusals_total", &[]) >= 1.0
            && e.value("traverse_turn_auth_failures_total", &[("reason", "bad_integrity")]) >= 1.0
    });
    assert_eq!(e.value("traverse_turn_peer_refusals_total", &[]), 1.0);
    assert_eq!(e.value("traverse_turn_error_responses_total", &[("code", "403")]), 1.0);
    // At least one: a retransmission of the refused request (a loaded machine) is refused again, uncached.
    let bad_integrity = e.value("traverse_turn_auth_failures_total", &[("reason", "bad_integrity")]);
    assert!(bad_integrity >= 1.0);
    assert_eq!(
        e.value("traverse_turn_auth_failures_total", &[]),
        bad_integrity,
        "no other reason"
    );
    assert_eq!(e.value("traverse_turn_allocations", &[("transport", "udp")]), 1.0);
    assert_eq!(
        e.value("traverse_turn_allocations_created_total", &[("transport", "udp")]),
        1.0
    );
}

/// Connections refused at accept are counted by the budget that refused them: a third connection past a share of 2
/// is `source`; connecting again and again past the burst of 5 (1 a second) is `rate`.
#[test]
fn refused_connections_are_counted_by_reason() {
    if !have_parser() {
        return;
    }
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let server = Server::start(&[
        "--metrics",
        &metrics.to_string(),
        "--set",
        "limits.max_connections_per_source=2",
        "--set",
        "limits.connections_per_second_per_source=1",
    ]);
    let answered = |s: &mut std::net::TcpStream| {
        use std::io::Read;
        s.write_all(&common::binding_request(true)).is_ok() && {
            let mut header = [0u8; 20];
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.read_exact(&mut header).is_ok()
        }
    };
    let from = |last: u8| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from(([127, 0, 0, last], 0)).into()).unwrap();
        socket.connect(&server.tcp.into()).unwrap();
        std::net::TcpStream::from(socket)
    };
    let mut held: Vec<_> = (0..3).map(|_| from(2)).collect();
    let served = held.iter_mut().map(answered).filter(|ok| *ok).count();
    assert_eq!(served, 2, "a share of 2");
    // Another source, so that the first one's slots need not be back: a burst of 5, then about one a second. One
    // connection at a time, each closed by the server before the next (our FIN, then its EOF): never past the share,
    // which a loaded machine reached when the next connect came before the server had seen the last one go.
    let served = (0..10)
        .filter(|_| {
            use std::io::Read;
            let mut s = from(3);
            let ok = answered(&mut s);
            if ok {
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.read_to_end(&mut Vec::new());
            }
            ok
        })
        .count();
    assert!((5..=7).contains(&served), "{served} of 10 served with a burst of 5");
    let e = scrape_until(metrics, None, |e| {
        e.value("traverse_tcp_connections_refused_total", &[("reason", "rate")]) >= (10 - served) as f64
    });
    assert_eq!(
        e.value("traverse_tcp_connections_refused_total", &[("reason", "source")]),
        1.0
    );
    assert_eq!(
        e.value("traverse_tcp_connections_refused_total", &[("reason", "rate")]),
        (10 - served) as f64
    );
    assert_eq!(
        e.value("traverse_tcp_connections_refused_total", &[("reason", "total")]),
        0.0
    );
    // The two connections still held; the scrape's own listener is not one of them.
    let e = scrape_until(metrics, None, |e| e.value("traverse_tcp_connections", &[]) == 2.0);
    assert_eq!(e.value("traverse_tcp_connections", &[]), 2.0);
    drop(held);
    let e = scrape_until(metrics, None, |e| e.value("traverse_tcp_connections", &[]) == 0.0);
    assert_eq!(
        e.value("traverse_tcp_connections", &[]),
        0.0,
        "given back when they close"
    );
}

#[test]
fn a_token_protected_listener_refuses_a_scrape_without_the_token_and_health_answers_json() {
    if !have_parser() {
        return;
    }
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let server = Server::start(&[
        "--metrics",
        &metrics.to_string(),
        "--set",
        &format!("metrics.token={TOKEN}"),
    ]);
    let (status, head, _) = http_get(metrics, "/metrics", None);
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(http_get(metrics, "/metrics", Some("metrics-token-0123456780")).0, 401);
    let e = scrape(metrics, Some(TOKEN));
    assert!(e.has("traverse_turn_allocations") && e.has("process_open_fds"), "{e:?}");
    assert!(e.value("process_open_fds", &[]) > 0.0);
    // The certificate served on the TLS port: generated at start, so far in the future and said to be self-signed.
    assert_eq!(e.value("traverse_tls_certificate_self_signed", &[]), 1.0);
    assert!(e.value("traverse_tls_certificate_expiry_timestamp_seconds", &[]) > 2.0e9);

    // Probes need no token, on the metrics listener and on the HTTP port alike.
    let http = server.http.expect("an HTTP port");
    for addr in [metrics, http] {
        let (status, head, body) = http_get(addr, "/healthz", None);
        assert_eq!(status, 200, "{addr}: {head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["alive"], true);
        let (status, _, body) = http_get(addr, "/readyz", None);
        assert_eq!(status, 200, "{addr}: {body}");
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ready["ready"], true, "{body}");
        let checks = ready["checks"].as_array().unwrap();
        let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["listeners", "certificate"], "{body}");
        // The detail (the bound addresses, the certificate's state) on the metrics listener only: strangers reach
        // the HTTP port.
        if addr == metrics {
            assert!(
                checks[0]["detail"].as_str().unwrap().contains(&http.to_string()),
                "{body}"
            );
            assert!(checks[1]["detail"].as_str().unwrap().contains("self-signed"), "{body}");
        } else {
            assert!(checks.iter().all(|c| c.get("detail").is_none()), "{body}");
            assert!(!body.contains(&http.port().to_string()), "{body}");
        }
    }

    // Guesses cost time and leave a trace: past 30 at once from one address, 429 with Retry-After, even with the
    // right token (else the limit would tell a right guess from a wrong one); each wrong one is logged.
    let refused = (0..40)
        .map(|_| http_get(metrics, "/metrics", Some("metrics-token-guess-00000")))
        .filter(|(status, _, _)| *status == 429)
        .count();
    assert!(refused >= 5, "{refused} of 40 guesses throttled");
    let (status, head, _) = http_get(metrics, "/metrics", Some(TOKEN));
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(server.log().contains("/metrics with a missing or wrong bearer token"));
}

#[test]
fn a_public_metrics_address_without_a_token_is_refused_at_start() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_traverse"));
    clear_traverse_env(&mut cmd);
    // Refused by the configuration check, before anything is bound.
    cmd.args(["serve", "--metrics", "0.0.0.0:9464"]);
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(!out.timed_out, "it started:\n{}", out.all());
    assert!(!out.status.is_some_and(|s| s.success()), "{}", out.all());
    let err = out.stderr;
    assert!(
        err.contains("metrics.listen: 0.0.0.0:9464") && err.contains("set metrics.token"),
        "{err}"
    );
    // The same through the variable.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_traverse"));
    clear_traverse_env(&mut cmd);
    cmd.args(["serve"]).env("TRAVERSE_METRICS_LISTEN", "[::]:9464");
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(
        !out.timed_out && out.stderr.contains("metrics.listen: [::]:9464"),
        "{}",
        out.all()
    );
}

/// The metrics listener holds at most 8 connections from one address (64 in all) and closes an idle one after its
/// 10 s header deadline: whoever reaches the port (a token guards `/metrics`, not the port) cannot hold the server's
/// descriptors there, and a scrape from another address is served meanwhile. Before, every connection was held, an
/// idle one for ever.
#[test]
fn the_metrics_listener_bounds_its_connections() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let _server = Server::start(&["--metrics", &metrics.to_string()]);
    let from = |last: u8| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from(([127, 0, 0, last], 0)).into()).unwrap();
        socket.connect(&metrics.into()).unwrap();
        let stream = std::net::TcpStream::from(socket);
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream
    };
    let closed = |s: &mut std::net::TcpStream| {
        use std::io::Read;
        matches!(s.read(&mut [0u8; 1]), Ok(0))
    };
    let held: Vec<_> = (0..8).map(|_| from(7)).collect();
    let mut ninth = from(7);
    ninth.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(
        closed(&mut ninth),
        "a ninth connection from one address is closed at once"
    );
    let (status, head, _) = http_get(metrics, "/healthz", None);
    assert_eq!(status, 200, "another address is served: {head}");
    let started = Instant::now();
    for mut idle in held {
        assert!(closed(&mut idle), "an idle connection is closed");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "idle connections held for {took:?}");
}

/// The metrics listener drops a client that stops reading after `limits.send_stall_timeout`, as the public ports do
/// (it was a fixed 30 s there): 500 pipelined scrapes never read, through a 4 KiB receive buffer, with the timeout
/// at 2 s. Read from 6 s on, the connection ends before the 500th answer; with 30 s every answer arrived.
#[test]
fn the_metrics_listener_drops_a_client_that_stops_reading_after_the_send_stall_timeout() {
    use std::io::Read;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let _server = Server::start(&[
        "--metrics",
        &metrics.to_string(),
        "--set",
        "limits.send_stall_timeout=2",
    ]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&metrics.into()).unwrap();
    let mut stream = std::net::TcpStream::from(socket);
    let ask = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(500);
    stream.write_all(ask.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                break "still open, nothing more to read"
            }
            Err(_) => break "reset",
        }
        assert!(started.elapsed() < Duration::from_secs(60), "reading for a minute");
    };
    let answers = got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert!(
        answers < 500 && ended != "still open, nothing more to read",
        "{answers} answers, then {ended}: the connection outlived the 2 s stall timeout"
    );
}
