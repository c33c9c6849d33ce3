#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! `traverse doctor` against the real binary on loopback: everything works (STUN, TURN over UDP/TCP/TLS, a relay
//! round trip without loss, no NAT), then with the server stopped: exit 2 and a verdict that says it is unreachable.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{run_bounded, Server};

/// A TCP port free right now on loopback (bound, then released).
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind TCP")
}

fn doctor(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_traverse")).arg("doctor").args(args),
        Duration::from_secs(90),
    );
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

#[test]
fn doctor_usage_errors_exit_1() {
    let (code, _, all) = doctor(&["ftp://example.com"]);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("bad server address"), "{all}");
    let (code, _, all) = doctor(&["http://127.0.0.1:1", "--turn-user", "u"]);
    assert_eq!(code, Some(1), "{all}");
}
