#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! A client that refuses the server's certificate is named: the server logs the failed handshake once per client and
//! reason at `info`, and tells that client's source (only it) why, at `GET /api/tls-failures` — which is how `/check`
//! and the demo can say "your browser refused the certificate" instead of "blocked".

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;

/// A client that trusts no CA at all, as a browser is towards a self-signed certificate: it sends `unknown_ca`.
fn refuse_certificate(from: IpAddr, addr: SocketAddr) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = common::connect_tcp_from(from, addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut result = Ok((0, 0));
    while conn.is_handshaking() && result.is_ok() {
        result = conn.complete_io(&mut tcp);
    }
    let err = result.expect_err("the handshake must fail: the certificate is self-signed");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // The alert the client queued goes out before the connection closes.
    let _ = conn.write_tls(&mut tcp);
}

fn tls_failures(http: SocketAddr, from: IpAddr) -> serde_json::Value {
    let mut tcp = common::connect_tcp_from(from, http).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET /api/tls-failures HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn reasons(v: &serde_json::Value) -> Vec<(u64, String)> {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["port"].as_u64().unwrap(), f["reason"].as_str().unwrap().to_owned()))
        .collect()
}

/// Polls until `check` holds (the server records the failure when the handshake task ends).
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_refused_certificate_is_named_to_the_log_and_to_that_client_only() {
    // Bound by the server itself (a port picked here first could be taken by another test meanwhile), then read from
    // its log line.
    let server = Server::start(&["--single-port", "127.0.0.1:0"]);
    const LISTENING: &str = "single port (HTTPS/WSS, TURN over TLS and TCP) listening";
    let log = server.log_with(LISTENING, Duration::from_secs(5));
    let single: u16 = log
        .lines()
        .find(|l| l.contains(LISTENING))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .unwrap_or_else(|| panic!("no `{LISTENING} addr=…` line:\n{log}"));
    let http = server.http.expect("an HTTP listener");
    let me = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    // TURN over TLS on the TLS port, and on the single port: the client refuses the certificate both times.
    refuse_certificate(me, server.tls);
    refuse_certificate(me, SocketAddr::new(me, single));
    let expected = [
        (u64::from(single), "unknown-ca".to_owned()),
        (u64::from(server.tls.port()), "unknown-ca".to_owned()),
    ];
    assert!(
        eventually(|| {
            let seen = reasons(&tls_failures(http, me));
            expected.iter().all(|e| seen.contains(e))
        }),
        "{}\nlog:\n{}",
        tls_failures(http, me),
        server.log()
    );
    let v = tls_failures(http, me);
    assert!(
        v["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("refused the server's self-signed certificate"),
        "{v}"
    );
    assert!(
        reasons(&tls_failures(http, other)).is_empty(),
        "another source sees nothing"
    );

    // Plain bytes on the TLS port: named too.
    let mut plain = common::connect_tcp_from(other, server.tls).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = plain.read(&mut [0u8; 64]);
    assert!(eventually(
        || reasons(&tls_failures(http, other)) == [(u64::from(server.tls.port()), "not-tls".to_owned())]
    ));

    // Logged at info, once per client and reason however often it happens.
    for _ in 0..5 {
        refuse_certificate(me, server.tls);
    }
    // The first line may still be on its way from the log's reader thread; then give repeats time to show.
    server.log_with("unknown-ca", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed") && l.contains("unknown-ca"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per client and reason:\n{log}");
    assert!(
        lines[0].contains("INFO") && lines[0].contains("127.0.0.1"),
        "{}",
        lines[0]
    );
}
