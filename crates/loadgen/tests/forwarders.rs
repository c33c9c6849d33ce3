//! The benchmark's yardsticks relay what they are sent: each bare forwarder (`traverse-bare-forwarder` on epoll,
//! `traverse-uring-forwarder` on io_uring, with one receive per packet and with `--multishot`) carries a short
//! `traverse-loadgen` run, 100- and 1000-byte packets over 20 allocations, to an echo peer and back, with nothing
//! lost. `bench/relay.sh` divides by their figures, so a forwarder that drops or mangles packets would make every
//! ratio there wrong. All on loopback; every process is bounded in time and killed by PID.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A forwarder process, killed when dropped.
struct Forwarder(Child);

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP echo peer on loopback, on a thread that ends after `lifetime`.
fn echo_peer(lifetime: Duration) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + lifetime;
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < end {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether a socket is bound to `addr` (IPv4), read from `/proc/net/udp` (binding it ourselves to find out could take
/// it from the forwarder at that moment).
fn udp_bound(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else { return false };
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
}

/// Runs `traverse-loadgen` through the forwarder at `server`; returns its JSON summary.
fn load(server: SocketAddr, peer: SocketAddr, size: usize) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_traverse-loadgen"))
        .args(["--server", &server.to_string(), "--peer", &peer.to_string()])
        .args([
            "--user",
            "u",
            "--password",
            "p",
            "--allocations",
            "20",
            "--rate",
            "1000",
        ])
        .args(["--duration", "1", "--size", &size.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("traverse-loadgen runs");
    assert!(
        output.status.success(),
        "traverse-loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().expect("a summary line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn relays_everything(binary: &str, extra: &[&str]) {
    let peer = echo_peer(Duration::from_secs(30));
    let server = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let child = Command::new(binary)
        .args([
            "--listen",
            &server.to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--lifetime",
            "30",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the forwarder starts");
    let mut forwarder = Forwarder(child);
    // Until the forwarder has bound its port, the load generator's first request would be refused (ICMP) and it
    // would give up: wait until the port is taken (10 s at most, on a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !udp_bound(server) && std::time::Instant::now() < deadline {
        if forwarder.0.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(Some(status)) = forwarder.0.try_wait() {
        let mut stderr = String::new();
        if let Some(mut pipe) = forwarder.0.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        panic!("{binary} {extra:?} exited at start ({status}): {stderr}");
    }
    for size in [100, 1000] {
        let summary = load(server, peer, size);
        let (sent, received) = (summary["sent"].as_u64().unwrap(), summary["received"].as_u64().unwrap());
        assert!(sent >= 900, "{binary} {extra:?}, {size} B: too little sent: {summary}");
        assert_eq!(
            received, sent,
            "{binary} {extra:?}, {size} B: every packet echoed back: {summary}"
        );
    }
}

#[test]
fn the_epoll_forwarder_relays_every_packet() {
    relays_everything(env!("CARGO_BIN_EXE_traverse-bare-forwarder"), &[]);
}

/// io_uring can be turned off by the kernel's `kernel.io_uring_disabled` (absent before Linux 6.6: allowed).
fn io_uring_allowed() -> bool {
    let setting = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
    if matches!(setting.trim(), "" | "0") {
        return true;
    }
    println!(
        "SKIP: io_uring is disabled on this machine (kernel.io_uring_disabled = {})",
        setting.trim()
    );
    false
}

#[test]
fn the_io_uring_forwarder_relays_every_packet() {
    if io_uring_allowed() {
        relays_everything(env!("CARGO_BIN_EXE_traverse-uring-forwarder"), &[]);
    }
}

#[test]
fn the_io_uring_forwarder_with_multishot_receives_relays_every_packet() {
    if io_uring_allowed() {
        relays_everything(env!("CARGO_BIN_EXE_traverse-uring-forwarder"), &["--multishot"]);
    }
}
