#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! `traverse doctor` against the real binary on loopback: everything works (STUN, TURN over UDP/TCP/TLS, a relay
//! round trip without loss, no NAT), then with the server stopped: exit 2 and a verdict that says it is unreachable.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_tcp_port, run_bounded, signaling_addr, spawn_serve, Server};

/// The proxy variables the doctor reads: cleared for every run but the one that sets them, so that a machine's own
/// proxy settings do not change what these tests see.
const PROXY_VARS: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn doctor(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    doctor_env(args, &[])
}

fn doctor_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, serde_json::Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_traverse"));
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).arg("doctor").args(args);
    let out = run_bounded(&mut cmd, Duration::from_secs(90));
    assert!(!out.timed_out, "doctor hung: {}", out.all());
    let json = serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.and_then(|s| s.code()), json, out.all())
}

#[test]
fn doctor_on_loopback_then_with_the_server_stopped() {
    let http = free_tcp_port();
    let single = free_tcp_port();
    let http_arg = format!("127.0.0.1:{http}");
    let single_arg = format!("127.0.0.1:{single}");
    let server = Server::start(&[
        "--http",
        &http_arg,
        "--single-port",
        &single_arg,
        "--allow-peer",
        "127.0.0.0/8",
        "--workers",
        "2",
    ]);
    let url = format!("http://127.0.0.1:{http}");

    let (code, r, all) = doctor(&[&url, "--json", "--throughput", "2"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(r["schema"], 1, "{all}");
    assert_eq!(r["exit_code"], 0);

    let primary = r["signaling"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["primary"] == true)
        .cloned();
    let primary = primary.expect("the given endpoint is checked");
    assert_eq!(primary["http"]["ok"], true, "{all}");
    assert_eq!(primary["websocket"]["ok"], true, "{all}");
    assert_eq!(r["ice_servers"]["source"], "server", "{all}");
    assert_eq!(r["ice_servers"]["has_credential"], true, "{all}");

    let stun = r["stun"].as_array().unwrap();
    assert!(!stun.is_empty() && stun.iter().all(|s| s["ok"] == true), "STUN: {all}");
    assert!(stun[0]["mapped"].as_str().unwrap().starts_with("127.0.0.1:"), "{all}");

    let turn = r["turn"].as_array().unwrap();
    for transport in ["udp", "tcp", "tls"] {
        assert!(
            turn.iter()
                .any(|t| t["transport"] == transport && t["probe"] == false && t["ok"] == true),
            "TURN over {transport} must work: {all}"
        );
    }
    // Both TLS listeners (the dedicated one and the single port) allocate, and their certificate is self-signed.
    let tls: Vec<_> = turn
        .iter()
        .filter(|t| t["transport"] == "tls" && t["probe"] == false)
        .collect();
    assert_eq!(tls.len(), 2, "{all}");
    assert!(
        tls.iter()
            .all(|t| t["ok"] == true && t["certificate"]["self_signed"] == true),
        "{all}"
    );

    let relay = &r["relay"];
    assert_eq!(relay["ok"], true, "{all}");
    assert_eq!(relay["sent"], 50, "{all}");
    assert_eq!(relay["received"], 50, "{all}");
    assert_eq!(relay["loss_percent"].as_f64(), Some(0.0), "{all}");
    assert!(relay["rtt_p50_ms"].as_f64().unwrap() >= 0.0);
    // Graded for this client's link: half the test's round trip, the loss of one crossing.
    let link_rtt = relay["link"]["rtt_ms"].as_f64().unwrap();
    assert!(
        (link_rtt - relay["rtt_p50_ms"].as_f64().unwrap() / 2.0).abs() < 1e-9,
        "{all}"
    );
    assert_eq!(relay["link"]["loss_percent"].as_f64(), Some(0.0), "{all}");
    // The paced ramp gets at least its first steps (1, 2 Mbit/s) through on loopback, within its loss bound.
    let throughput = &r["throughput"];
    assert_eq!(throughput["ok"], true, "{all}");
    assert!(throughput["mbit_per_s"].as_f64().unwrap() >= 1.0, "{all}");
    assert!(throughput["loss_percent"].as_f64().unwrap() <= 5.0, "{all}");

    let nat = &r["nat"];
    assert_eq!(nat["nat"], "none", "{all}");
    assert_eq!(nat["mapping"]["result"], "endpoint-independent", "{all}");
    assert_eq!(nat["port_preservation"], true, "{all}");

    let verdict = &r["verdict"];
    assert_eq!(verdict["something_works"], true);
    let works = |key: &str| {
        verdict["transports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| t["works"].clone())
    };
    for key in ["signaling", "stun-udp", "turn-udp", "turn-tcp", "turn-tls"] {
        assert_eq!(works(key), Some(serde_json::Value::Bool(true)), "{key}: {all}");
    }
    assert!(
        verdict["direct"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["chance"] == "likely"),
        "{all}"
    );

    // The text report says the same in words.
    let (code, _, text) = doctor(&[&url, "--quiet"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Verdict") && text.contains("TURN over UDP"), "{text}");

    drop(server);

    let (code, r, all) = doctor(&[&url, "--json", "--timeout-ms", "1500"]);
    assert_eq!(code, Some(2), "nothing works with the server stopped: {all}");
    assert_eq!(r["exit_code"], 2);
    assert_eq!(r["verdict"]["something_works"], false);
    let summary = r["verdict"]["summary"].as_str().unwrap();
    assert!(summary.contains("unreachable"), "{summary}");
    let causes = r["verdict"]["causes"].to_string();
    assert!(causes.contains("unreachable") && causes.contains("refused"), "{causes}");
}

/// `HTTPS_PROXY` is used as browsers use it: here a proxy that does not listen, so every TCP check fails with the
/// proxy named as the reason (and no advice to try a proxy); `NO_PROXY` exempts the host, and `--proxy none` ignores
/// the environment.
#[test]
fn the_environment_s_proxy_is_used_unless_exempted_or_turned_off() {
    let http = free_tcp_port();
    let http_arg = format!("127.0.0.1:{http}");
    let _server = Server::start(&["--http", &http_arg, "--allow-peer", "127.0.0.0/8"]);
    let url = format!("http://127.0.0.1:{http}");
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let args = [
        url.as_str(),
        "--json",
        "--https-port",
        "0",
        "--http-port",
        "0",
        "--timeout-ms",
        "1500",
    ];

    let (code, r, all) = doctor_env(&args, &[("HTTPS_PROXY", &dead)]);
    assert_eq!(code, Some(2), "{all}");
    assert_eq!(r["proxy"], dead.as_str(), "{all}");
    let http_check = &r["signaling"][0]["http"];
    assert_eq!(http_check["error_code"], "proxy", "{all}");
    assert!(
        http_check["error"]
            .as_str()
            .unwrap()
            .contains(&format!("the HTTP proxy {dead} cannot be reached")),
        "{all}"
    );
    // The proxy is the cause, not a server on the other side of it.
    assert!(
        r["verdict"]["causes"].to_string().contains(&format!(
            "Every connection went to the HTTP proxy {dead}, and none got through it to the server"
        )),
        "{all}"
    );
    assert!(
        !r["verdict"]["causes"]
            .to_string()
            .contains("reaches the server through"),
        "{all}"
    );

    for (env, flag) in [
        ([("HTTPS_PROXY", dead.as_str()), ("NO_PROXY", "127.0.0.1")], None),
        ([("HTTPS_PROXY", dead.as_str()), ("NO_PROXY", "")], Some("none")),
    ] {
        let mut args = args.to_vec();
        if let Some(flag) = flag {
            args.extend(["--proxy", flag]);
        }
        let (code, r, all) = doctor_env(&args, &env);
        assert_eq!(code, Some(0), "{all}");
        assert!(r.get("proxy").is_none(), "{all}");
        assert_eq!(r["signaling"][0]["http"]["ok"], true, "{all}");
    }
}

#[test]
fn doctor_usage_errors_exit_1() {
    let (code, _, all) = doctor(&["ftp://example.com"]);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("bad server address"), "{all}");
    let (code, _, all) = doctor(&["http://127.0.0.1:1", "--turn-user", "u"]);
    assert_eq!(code, Some(1), "{all}");
    let (code, _, all) = doctor(&["http://127.0.0.1:1", "--proxy", "socks5://user:secret@127.0.0.1:1080"]);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("only an HTTP proxy that tunnels with CONNECT"), "{all}");
    assert!(!all.contains("secret"), "the password is not echoed: {all}");
}

/// A CA-issued (not self-signed) certificate for `turn.example.com` and its key, written to `dir`.
fn certificate_for_a_name(dir: &std::path::Path) -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Traverse test CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["turn.example.com".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "turn.example.com");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path.display().to_string(), key_path.display().to_string())
}

/// A certificate for `turn.example.com` while `signal.public_host` is unset: the `turns:` URLs handed out carry
/// 127.0.0.1, which the certificate does not cover. The server warns at start with the fix; the doctor, whose TLS
/// handshakes complete anyway, says browsers refuse TURN over TLS there — not that it is self-signed.
#[test]
fn turns_urls_the_certificate_does_not_cover_are_named_at_start_and_by_the_doctor() {
    let dir = std::env::temp_dir().join(format!("traverse-doctor-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = certificate_for_a_name(&dir);
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key, "--allow-peer", "127.0.0.0/8"]);
    let http = server.http.expect("a plain HTTP listener");
    // stderr is read by a thread of its own: the warning, logged before the ready line, may trail it a little.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !server.log().contains("certificate does not cover") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.log();
    assert!(
        log.contains("the turns: URLs handed out name 127.0.0.1, which the certificate does not cover")
            && log.contains("set signal.public_host"),
        "start-up warning: {log}"
    );
    assert!(!log.contains("self-signed"), "{log}");

    let (code, r, all) = doctor(&[
        &format!("http://{http}"),
        "--json",
        "--https-port",
        "0",
        "--http-port",
        "0",
    ]);
    assert_eq!(code, Some(0), "{all}");
    let tls: Vec<_> = r["turn"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["transport"] == "tls")
        .cloned()
        .collect();
    assert!(!tls.is_empty(), "{all}");
    for t in &tls {
        assert_eq!(t["certificate"]["covers_name"], false, "{all}");
        assert_eq!(t["certificate"]["self_signed"], false, "{all}");
    }
    let causes = r["verdict"]["causes"].to_string();
    assert!(
        causes.contains("but its certificate does not cover 127.0.0.1: browsers refuse TURN over TLS there"),
        "{causes}"
    );
    assert!(
        r["verdict"]["advice"].to_string().contains("Set signal.public_host"),
        "{all}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With no UDP listener the doctor has no STUN address, so the UDP probes cannot say whether a NAT is in the way;
/// the TURN connections over TCP and TLS can: on loopback the server sees the doctor's own address and port.
#[test]
fn without_udp_the_turn_connection_tells_whether_a_nat_is_in_the_way() {
    let spawned = spawn_serve("127.0.0.1:0", &["--set", "listen.udp="], &[]);
    let http = signaling_addr(&spawned);
    let (code, r, all) = doctor(&[
        &format!("http://{http}"),
        "--json",
        "--https-port",
        "0",
        "--http-port",
        "0",
    ]);
    assert_eq!(code, Some(0), "{all}");
    assert!(r["stun"].as_array().unwrap().is_empty(), "no UDP, no STUN: {all}");
    assert_eq!(r["nat"]["nat"], "none", "{all}");
    assert_eq!(r["nat"]["mapping"]["result"], "not-tested", "{all}");
    assert!(r["nat"]["notes"].to_string().contains("seen over TCP/TLS"), "{all}");
}

/// Request heads a [`hostile_signaling`] endpoint received.
type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A hostile `/api/ice-servers`: a signaling endpoint written here (it answers `/healthz`, the WebSocket upgrade's
/// status line, and the list), serving `list` as JSON. Returns its address and the request heads it got; it serves
/// until the test ends.
fn hostile_signaling(list: serde_json::Value) -> (std::net::SocketAddr, Heads) {
    hostile_signaling_with(list, false)
}

/// [`hostile_signaling`]; with `hang_ws`, `GET /ws` is read and never answered (a proxy that does not pass
/// WebSockets).
fn hostile_signaling_with(list: serde_json::Value, hang_ws: bool) -> (std::net::SocketAddr, Heads) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = list.to_string();
    let heads = Heads::default();
    let seen = heads.clone();
    std::thread::spawn(move || {
        // A thread per connection: a TLS ClientHello (the doctor tries HTTPS too) is read until its timeout, and
        // must not hold the plain requests behind it.
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let (seen, body) = (seen.clone(), body.clone());
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                if hang_ws && head.starts_with("GET /ws") {
                    std::thread::sleep(Duration::from_secs(8));
                    return;
                }
                let answer = if head.starts_with("GET /ws") {
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_owned()
                } else if head.starts_with("GET /api/ice-servers") {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned()
                };
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    (addr, heads)
}

/// A server's ICE list chooses what the doctor probes and prints. 5 000 STUN URLs (the first a real Traverse that
/// answers, the rest loopback ports where nothing listens): the doctor checks the first 16, sends its NAT mapping
/// probes to at most 4 more addresses (it went through all 4 999, one timeout after another: 25 minutes at 300 ms each),
/// and says how many it left out. A URL whose host carries terminal escape sequences is reported as not parsing, and
/// nothing the server said puts an escape sequence on the terminal.
#[test]
fn a_hostile_ice_server_list_neither_holds_the_doctor_nor_writes_to_the_terminal() {
    let server = Server::start(&[]);
    let mut urls = vec![serde_json::json!(format!("stun:{}", server.udp))];
    urls.extend((1..5000u32).map(|i| serde_json::json!(format!("stun:127.0.0.1:{}", 20000 + i))));
    urls.push(serde_json::json!("stun:\u{1b}[2J\u{1b}]0;owned\u{7}evil.example:3478"));
    let (http, _) = hostile_signaling(serde_json::json!({ "iceServers": [{ "urls": urls }] }));
    let url = format!("http://{http}");
    let args = [
        "--https-port",
        "0",
        "--http-port",
        "0",
        // Long enough for the real server's answer on a loaded machine (16 checks at once), short for the others.
        "--timeout-ms",
        "1000",
        "--probe-wait-ms",
        "300",
    ];
    let started = std::time::Instant::now();
    let (_, r, all) = doctor(&[&[url.as_str(), "--json"], &args[..]].concat());
    let took = started.elapsed();
    assert_eq!(r["ice_servers"]["stun"].as_array().unwrap().len(), 16, "{all}");
    assert_eq!(r["ice_servers"]["not_checked"], 4984, "{all}");
    assert_eq!(r["stun"].as_array().unwrap().len(), 16, "{all}");
    assert_eq!(r["stun"][0]["ok"], true, "the real server answers: {all}");
    let unparsed = r["ice_servers"]["unparsed"].to_string();
    assert!(
        unparsed.contains("evil.example") && !unparsed.contains("\\u001b"),
        "{unparsed}"
    );
    assert!(took < Duration::from_secs(30), "the doctor took {took:?}");

    // For people: no escape sequence at all (stdout is not a terminal, so not even colours).
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_traverse"))
            .args(["doctor", &url])
            .args(args),
        Duration::from_secs(90),
    );
    assert!(!out.timed_out, "doctor hung: {}", out.all());
    assert!(out.stdout.contains("4984 more URL(s) not checked"), "{}", out.stdout);
    assert!(
        out.stdout.contains("a URL that does not parse: stun:[2J"),
        "{}",
        out.stdout
    );
    assert!(
        !out.all().contains('\u{1b}') && !out.all().contains('\u{7}'),
        "{}",
        out.all()
    );
}

/// `--token` goes over TLS, or over plain HTTP only to an address given as `http://`. Given without a scheme, the
/// address is tried over HTTPS and then HTTP; when HTTPS fails (an untrusted certificate is what someone in the
/// middle presents), the plain endpoint gets no token (it got it before).
#[test]
fn the_token_goes_over_plain_http_only_to_an_address_given_as_http() {
    let token = "a-token-for-this-test-only";
    let has_token = |heads: &Heads| {
        let heads = heads.lock().unwrap();
        let asked: Vec<&String> = heads.iter().filter(|h| h.starts_with("GET /api/ice-servers")).collect();
        assert!(!asked.is_empty(), "the list was asked for: {heads:?}");
        asked.iter().any(|h| h.contains(&format!("Bearer {token}")))
    };
    let quick = [
        "--https-port",
        "0",
        "--http-port",
        "0",
        "--timeout-ms",
        "500",
        "--token",
        token,
    ];
    let (bare, heads) = hostile_signaling(serde_json::json!({ "iceServers": [] }));
    let (_, _, all) = doctor(&[&[bare.to_string().as_str(), "--json"], &quick[..]].concat());
    assert!(
        !has_token(&heads),
        "the token went to a plain endpoint the doctor chose: {all}"
    );

    let (given, heads) = hostile_signaling(serde_json::json!({ "iceServers": [] }));
    let url = format!("http://{given}");
    let (_, _, all) = doctor(&[&[url.as_str(), "--json"], &quick[..]].concat());
    assert!(has_token(&heads), "asked for plain HTTP, it goes there: {all}");
}

/// A STUN server that answers Binding with an error (401), and signaling whose WebSocket upgrade hangs while HTTP
/// answers: the doctor names the STUN refusal (it read as "Binding success without XOR-MAPPED-ADDRESS") and the proxy
/// that does not pass WebSockets (it read as a plain timeout).
#[test]
fn a_stun_error_answer_and_a_hung_websocket_upgrade_are_named() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stun_addr = udp.local_addr().unwrap();
    std::thread::spawn(move || {
        let _ = udp.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 1500];
        for _ in 0..32 {
            let Ok((n, from)) = udp.recv_from(&mut buf) else { return };
            let Some(txid) = buf.get(8..20).filter(|_| n >= 20) else {
                continue;
            };
            // Binding error response: ERROR-CODE 401 "Unauthorized" (RFC 8489 §14.8).
            let reason = b"Unauthorized";
            let mut value = vec![0, 0, 4, 1];
            value.extend_from_slice(reason);
            let mut msg = vec![0x01, 0x11, 0, 0, 0x21, 0x12, 0xA4, 0x42];
            msg.extend_from_slice(txid);
            msg.extend_from_slice(&[0x00, 0x09]);
            msg.extend_from_slice(&(value.len() as u16).to_be_bytes());
            msg.extend_from_slice(&value);
            let len = (msg.len() - 20) as u16;
            msg[2..4].copy_from_slice(&len.to_be_bytes());
            let _ = udp.send_to(&msg, from);
        }
    });
    // Signaling fails (the upgrade hangs), so no list is fetched: the STUN server is given on the command line.
    let (http, _) = hostile_signaling_with(serde_json::json!({ "iceServers": [] }), true);
    let server = format!("http://{http}");
    let stun = stun_addr.to_string();
    let (_, json, all) = doctor(&[
        "--stun",
        &stun,
        &server,
        "--json",
        "--quiet",
        "--timeout-ms",
        "1500",
        "--https-port",
        "0",
        "--http-port",
        "0",
    ]);
    let stun = &json["stun"][0];
    assert_eq!(stun["error_code"], "stun-error", "{all}");
    assert_eq!(stun["error"], "STUN error 401 Unauthorized", "{all}");
    let causes = json["verdict"]["causes"].to_string();
    assert!(
        causes.contains("WebSocket upgrade of /ws got no answer while HTTP works"),
        "{causes}"
    );
}

/// A STUN server on loopback that answers every Binding with success and the source's address
/// (XOR-MAPPED-ADDRESS), for `rounds` requests.
fn answering_stun(rounds: usize) -> std::net::SocketAddr {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    std::thread::spawn(move || {
        let _ = udp.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 1500];
        for _ in 0..rounds {
            let Ok((n, from)) = udp.recv_from(&mut buf) else { return };
            let Some(txid) = buf.get(8..20).filter(|_| n >= 20) else {
                continue;
            };
            let std::net::SocketAddr::V4(v4) = from else { continue };
            let port = v4.port() ^ 0x2112;
            let ip = u32::from(*v4.ip()) ^ 0x2112_A442;
            let mut msg = vec![0x01, 0x01, 0, 12, 0x21, 0x12, 0xA4, 0x42];
            msg.extend_from_slice(txid);
            msg.extend_from_slice(&[0x00, 0x20, 0, 8, 0, 1]);
            msg.extend_from_slice(&port.to_be_bytes());
            msg.extend_from_slice(&ip.to_be_bytes());
            let _ = udp.send_to(&msg, from);
        }
    });
    addr
}

/// The NAT probes start from the first STUN server that answered, not the first listed: a dead first server left
/// the NAT untested while another answered.
#[test]
fn the_nat_is_probed_through_the_first_stun_server_that_answers() {
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    let alive = answering_stun(64).to_string();
    let (http, _) = hostile_signaling(serde_json::json!({ "iceServers": [] }));
    let server = format!("http://{http}");
    let (_, json, all) = doctor(&[
        &server,
        "--stun",
        &dead_addr,
        "--stun",
        &alive,
        "--json",
        "--quiet",
        "--timeout-ms",
        "1000",
        "--https-port",
        "0",
        "--http-port",
        "0",
    ]);
    drop(dead);
    assert_eq!(json["stun"][1]["ok"], true, "{all}");
    let probes = json["nat"]["probes"].as_array().cloned().unwrap_or_default();
    assert!(!probes.is_empty(), "the NAT was probed: {all}");
    assert!(
        probes.iter().any(|p| p.to_string().contains(&alive)),
        "through the server that answered: {all}"
    );
}

/// A port that accepts TCP and then answers nothing — a port forwarded to the wrong service, a proxy with no
/// upstream — as the signaling endpoint and as a TURN-over-TCP URL: the doctor says something listens there that is
/// not Traverse (`silent`), where it said "blocked on this network or not listening" and "unreachable".
#[test]
fn a_port_that_accepts_and_never_answers_is_named_not_called_blocked() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(64) {
            held.extend(stream.ok());
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let turn = format!("turn:{addr}?transport=tcp");
    let (_, json, all) = doctor(&[
        &format!("http://{addr}"),
        "--turn",
        &turn,
        "--turn-user",
        "u",
        "--turn-password",
        "p",
        "--json",
        "--quiet",
        "--timeout-ms",
        "1500",
        "--https-port",
        "0",
        "--http-port",
        "0",
    ]);
    let signaling = &json["signaling"][0];
    assert_eq!(signaling["http"]["error_code"], "silent", "{all}");
    let turn = json["turn"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"] == turn.as_str());
    assert_eq!(turn.map(|t| &t["error_code"]), Some(&"silent".into()), "{all}");
    let causes = json["verdict"]["causes"].to_string();
    assert!(
        causes.contains("accepts connections but answers nothing over HTTP"),
        "{causes}"
    );
    assert!(causes.contains("accepted but nothing answered TURN"), "{causes}");
    assert!(
        !causes.contains("unreachable") && !causes.contains("blocked"),
        "{causes}"
    );
}
