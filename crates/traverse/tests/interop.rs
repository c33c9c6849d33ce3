//! Interop against clients nobody here wrote: coturn's `turnutils_uclient` / `turnutils_stunclient` (with
//! `turnutils_peer` as the echo peer) and Python's `aioice` TURN client, each driving the real `traverse` binary
//! over loopback UDP, TCP and TLS.
//!
//! A missing tool prints `SKIP: …` and passes, unless `TRAVERSE_REQUIRE_PEERS=1` (CI), where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{mint_credentials, require_tools, run_bounded, skip, EchoPeer, Server};

/// Lab flags: loopback peers allowed, IPv6 relays on ::1, two workers so both SO_REUSEPORT paths are exercised.
const LAB: &[&str] = &[
    "--allow-peer",
    "127.0.0.0/8",
    "--allow-peer",
    "::1/128",
    "--set",
    "relay.ipv6=true",
    "--set",
    "relay.bind_v6=::1",
    "--realm",
    "test",
    "--workers",
    "2",
];

const UCLIENT_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

fn lab_server(auth: &[&str]) -> Server {
    let mut args = LAB.to_vec();
    args.extend_from_slice(auth);
    Server::start(&args)
}

fn ipv6_loopback_available() -> bool {
    UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)).is_ok()
}

/// coturn's client and echo peer are installed and `::1` works; else says why the test is skipped.
fn ipv6_lab_ready() -> bool {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return false;
    }
    let ready = ipv6_loopback_available();
    if !ready {
        skip("no IPv6 loopback (::1) on this machine");
    }
    ready
}

/// A free port from `free` below the relay range (49152-65535), which must not hold a listener.
fn below_relay_range(free: impl Fn() -> u16) -> u16 {
    (0..200)
        .map(|_| free())
        .find(|p| *p < 49152)
        .expect("a free port below 49152")
}

/// One `turnutils_uclient` run: `clients` allocations each sending `messages` messages of 120 bytes to the echo
/// peer and back, asserting 0 % loss and as many messages received as sent.
#[allow(clippy::too_many_arguments)]
/// One uclient run at a time: parallel runs on a 2-core machine starve the echo peer and turn CPU contention into
/// "lost" packets that say nothing about the server.
static UCLIENT_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn uclient(
    server: &mut Server,
    peer: &EchoPeer,
    transport: Transport,
    channels: bool,
    ipv6_relay: bool,
    user: &str,
    password: &str,
) {
    let port = match transport {
        Transport::Udp => server.udp.port(),
        Transport::Tcp => server.tcp.port(),
        Transport::Tls => server.tls.port(),
    };
    let at = SocketAddr::new(common::LOOPBACK, port);
    uclient_to(server, at, peer, transport, channels, ipv6_relay, user, password);
}

/// [`uclient`] against the listener at `at`.
#[allow(clippy::too_many_arguments)]
fn uclient_to(
    server: &mut Server,
    at: SocketAddr,
    peer: &EchoPeer,
    transport: Transport,
    channels: bool,
    ipv6_relay: bool,
    user: &str,
    password: &str,
) {
    let port = at.port();
    let _one_at_a_time = UCLIENT_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-u", user, "-w", password])
        .args(["-e", &peer.addr.ip().to_string(), "-r", &peer.addr.port().to_string()])
        .args(["-p", &port.to_string()])
        // A moderate load: 4 clients × 40 messages of 120 bytes.
        .args(["-n", "40", "-m", "4", "-l", "120"]);
    match transport {
        Transport::Udp => {}
        Transport::Tcp => {
            cmd.arg("-t");
        }
        // -S alone is DTLS; with -t it is TLS over TCP.
        Transport::Tls => {
            cmd.args(["-t", "-S"]);
        }
    }
    if !channels {
        cmd.arg("-c");
    }
    if ipv6_relay {
        cmd.arg("-x");
    }
    cmd.arg(at.ip().to_string());
    let what = format!("uclient to {at} {transport:?} channels={channels} ipv6_relay={ipv6_relay} user={user}");
    let out = run_bounded(&mut cmd, UCLIENT_TIMEOUT);
    let text = out.all();
    let tail: String = text
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !out.timed_out,
        "{what}: timed out after {UCLIENT_TIMEOUT:?}\n{tail}\nserver log:\n{}",
        server.log()
    );
    let summary = parse_uclient(&text).unwrap_or_else(|| panic!("{what}: no summary in output:\n{tail}"));
    assert!(summary.sent > 0, "{what}: sent nothing\n{tail}");
    assert_eq!(summary.lost, 0, "{what}: lost packets\n{tail}");
    assert_eq!(summary.sent, summary.received, "{what}: sent vs received\n{tail}");
    // Four clients, forty messages each.
    assert!(
        summary.sent >= 160,
        "{what}: only {} messages sent\n{tail}",
        summary.sent
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{what}: exit status {:?}\n{tail}",
        out.status
    );
    server.assert_alive();
    println!("{what}: sent={} received={} lost=0", summary.sent, summary.received);
}

#[derive(Debug, PartialEq, Eq)]
struct UclientSummary {
    sent: u64,
    received: u64,
    lost: u64,
}

/// Reads the final `tot_send_msgs=N, tot_recv_msgs=M` line (the one without `msz=`, printed once at the end) and
/// `Total lost packets L (…%)`.
fn parse_uclient(text: &str) -> Option<UclientSummary> {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let totals = text
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs=") && !l.contains("msz="))?;
    let lost_line = text.lines().rev().find(|l| l.contains("Total lost packets"))?;
    Some(UclientSummary {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: number_after(lost_line, "Total lost packets")?,
    })
}

#[test]
fn uclient_summary_parses() {
    let text = "6: : start_mclient: msz=6, tot_send_msgs=280, tot_recv_msgs=280, tot_send_bytes ~ 33600\n\
                6: : start_mclient: tot_send_msgs=300, tot_recv_msgs=299\n\
                6: : Total lost packets 1 (0.333333%), total send dropped 0 (0.000000%)\n";
    assert_eq!(
        parse_uclient(text),
        Some(UclientSummary {
            sent: 300,
            received: 299,
            lost: 1
        })
    );
    assert_eq!(parse_uclient("nothing"), None);
}

#[test]
fn uclient_udp_static_user_with_and_without_channels() {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return;
    }
    let mut server = lab_server(&["--user", "alice:pw"]);
    let peer = EchoPeer::start(common::LOOPBACK);
    uclient(&mut server, &peer, Transport::Udp, true, false, "alice", "pw");
    uclient(&mut server, &peer, Transport::Udp, false, false, "alice", "pw");
}

#[test]
fn uclient_tcp_static_user_with_and_without_channels() {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return;
    }
    let mut server = lab_server(&["--user", "alice:pw"]);
    let peer = EchoPeer::start(common::LOOPBACK);
    uclient(&mut server, &peer, Transport::Tcp, true, false, "alice", "pw");
    uclient(&mut server, &peer, Transport::Tcp, false, false, "alice", "pw");
}

#[test]
fn uclient_tls_static_user_with_and_without_channels() {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return;
    }
    let mut server = lab_server(&["--user", "alice:pw"]);
    let peer = EchoPeer::start(common::LOOPBACK);
    uclient(&mut server, &peer, Transport::Tls, true, false, "alice", "pw");
    uclient(&mut server, &peer, Transport::Tls, false, false, "alice", "pw");
}

#[test]
fn uclient_rest_credentials_over_udp_tcp_tls() {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return;
    }
    let secret = "interop-secret-0123456789";
    let mut server = lab_server(&["--secret", secret]);
    let peer = EchoPeer::start(common::LOOPBACK);
    let (username, password) = mint_credentials(secret, "bob");
    uclient(&mut server, &peer, Transport::Udp, true, false, &username, &password);
    uclient(&mut server, &peer, Transport::Udp, false, false, &username, &password);
    uclient(&mut server, &peer, Transport::Tcp, true, false, &username, &password);
    uclient(&mut server, &peer, Transport::Tls, false, false, &username, &password);

    // A credential minted with another secret is refused: the client fails, and nothing is relayed.
    let (bad_user, bad_password) = mint_credentials("not-the-secret-either", "mallory");
    let out = run_bounded(
        Command::new("turnutils_uclient")
            .args(["-u", &bad_user, "-w", &bad_password])
            .args(["-e", "127.0.0.1", "-r", &peer.addr.port().to_string()])
            .args([
                "-p",
                &server.udp.port().to_string(),
                "-n",
                "5",
                "-m",
                "1",
                "-l",
                "120",
                "127.0.0.1",
            ]),
        Duration::from_secs(60),
    );
    let relayed = parse_uclient(&out.all()).is_some_and(|s| s.received > 0);
    assert!(
        !relayed,
        "a credential from a wrong secret relayed data:\n{}",
        out.all()
    );
    server.assert_alive();
}

#[test]
fn uclient_ipv6_relay() {
    if !ipv6_lab_ready() {
        return;
    }
    let mut server = lab_server(&["--user", "alice:pw"]);
    let peer = EchoPeer::start(IpAddr::V6(Ipv6Addr::LOCALHOST));
    uclient(&mut server, &peer, Transport::Udp, true, true, "alice", "pw");
    uclient(&mut server, &peer, Transport::Tcp, false, true, "alice", "pw");
}

/// RFC 8656 §7.2: an Allocate without REQUESTED-ADDRESS-FAMILY gets an IPv4 relay, whichever family the client
/// reached the server over. Browsers never send the attribute, so a client that reached the server over IPv6 (a
/// dual-stack host's AAAA record, an IPv6-only mobile network) got 440 and no relay at all.
#[test]
fn a_client_that_reached_the_server_over_ipv6_gets_an_ipv4_relay_by_default() {
    if !ipv6_lab_ready() {
        return;
    }
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let udp6 = below_relay_range(|| common::free_udp_port(v6));
    let tcp6 = below_relay_range(|| {
        std::net::TcpListener::bind(SocketAddr::new(v6, 0))
            .and_then(|l| l.local_addr())
            .map_or(u16::MAX, |a| a.port())
    });
    let (udp6, tcp6) = (SocketAddr::new(v6, udp6), SocketAddr::new(v6, tcp6));
    let (udp_arg, tcp_arg) = (udp6.to_string(), tcp6.to_string());
    let mut server = lab_server(&["--user", "alice:pw", "--udp", &udp_arg, "--tcp", &tcp_arg]);
    // The echo peer is IPv4: only an IPv4 relay reaches it.
    let peer = EchoPeer::start(common::LOOPBACK);
    uclient_to(&mut server, udp6, &peer, Transport::Udp, true, false, "alice", "pw");
    uclient_to(&mut server, tcp6, &peer, Transport::Tcp, false, false, "alice", "pw");
}

#[test]
fn stunclient_binding() {
    if !require_tools(&["turnutils_stunclient"]) {
        return;
    }
    let mut server = lab_server(&["--user", "alice:pw"]);
    let out = run_bounded(
        Command::new("turnutils_stunclient").args(["-p", &server.udp.port().to_string(), "127.0.0.1"]),
        Duration::from_secs(60),
    );
    let text = out.all();
    assert!(!out.timed_out, "turnutils_stunclient timed out:\n{text}");
    let reflexive = text
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no reflexive address in:\n{text}"));
    let addr: SocketAddr = reflexive
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("reflexive address {reflexive:?}: {e}"));
    assert_eq!(addr.ip(), common::LOOPBACK, "{text}");
    assert_ne!(addr.port(), 0, "{text}");
    assert!(
        out.status.is_some_and(|s| s.success()),
        "exit {:?}:\n{text}",
        out.status
    );
    server.assert_alive();
}

// ---------------------------------------------------------------------------------------------------------------
// aioice.

fn aioice_available() -> bool {
    let out = run_bounded(
        Command::new("python3").args(["-c", "import aioice.turn"]),
        Duration::from_secs(60),
    );
    out.status.is_some_and(|s| s.success())
}

fn aioice_run(server: &Server, transport: &str, user: &str, password: &str) {
    let addr = match transport {
        "udp" => server.udp,
        "tcp" => server.tcp,
        _ => server.tls,
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aioice_client.py");
    let out = run_bounded(
        Command::new("python3").args([
            script,
            "--server",
            &addr.to_string(),
            "--transport",
            transport,
            "--user",
            user,
            "--password",
            password,
            "--count",
            "20",
        ]),
        Duration::from_secs(120),
    );
    let text = out.all();
    assert!(
        !out.timed_out,
        "aioice {transport}: timed out\n{text}\nserver log:\n{}",
        server.log()
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "aioice {transport}: exit {:?}\n{text}\nserver log:\n{}",
        out.status,
        server.log()
    );
    let ok = text
        .lines()
        .find(|l| l.starts_with("OK "))
        .unwrap_or_else(|| panic!("aioice {transport}: no OK line\n{text}"));
    assert!(ok.contains("echoed=20"), "aioice {transport}: {ok}");
    println!("aioice {transport}: {ok}");
}

#[test]
fn aioice_turn_client_over_udp_tcp_tls() {
    if !common::have_tool("python3") {
        skip("python3 not installed");
        return;
    }
    if !aioice_available() {
        skip("Python package aioice not installed (pip install aioice)");
        return;
    }
    let mut server = lab_server(&["--user", "alice:pw"]);
    aioice_run(&server, "udp", "alice", "pw");
    aioice_run(&server, "tcp", "alice", "pw");
    aioice_run(&server, "tls", "alice", "pw");
    server.assert_alive();

    // REST credentials minted by `traverse credentials`.
    let secret = "aioice-secret-9876543210";
    let mut rest = lab_server(&["--secret", secret]);
    let (username, password) = mint_credentials(secret, "carol");
    aioice_run(&rest, "udp", &username, &password);
    aioice_run(&rest, "tcp", &username, &password);
    rest.assert_alive();
}

/// `relay.io_uring` (off by default): relay sockets receive through the worker's io_uring (multishot receives into
/// lent buffers) instead of the reactor: both workers say so, and every message is relayed, as ChannelData and as
/// Data indications, to UDP and TCP clients, on IPv4 and IPv6 relays, with allocations coming and going.
#[test]
fn uclient_with_relay_sockets_on_io_uring() {
    if io_uring_disabled() {
        return;
    }
    relays_on(true);
}

/// A UDP listener bound to the wildcard address, with relay sockets on the ring and on the reactor (the default):
/// each answer leaves from the address its client reached (127.0.0.2 and 127.0.0.3 here, read from IP_PKTINFO; a
/// reply from another source would never reach `Conn`, which takes only the server's), and relay sockets bind on the
/// address uclient reached, so every message is relayed.
#[test]
fn a_wildcard_udp_listener_answers_from_each_address_reached_on_the_ring() {
    if io_uring_disabled() {
        return;
    }
    wildcard_listener(true);
}

#[test]
fn a_wildcard_udp_listener_answers_from_each_address_reached_on_the_reactor() {
    wildcard_listener(false);
}

fn wildcard_listener(io_uring: bool) {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return;
    }
    let port = below_relay_range(|| common::free_udp_port(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
    let setting = format!("relay.io_uring={io_uring}");
    let mut args = LAB.to_vec();
    args.extend_from_slice(&["--user", "alice:pw", "--set", &setting]);
    let mut server = Server::start_with_udp(&format!("0.0.0.0:{port}"), &args);
    for reached in ["127.0.0.2", "127.0.0.3", "127.0.0.1"] {
        let to = SocketAddr::new(reached.parse().unwrap(), port);
        let mut conn = common::Conn::udp(to);
        common::assert_binding_served(&mut conn);
    }
    let peer = EchoPeer::start(common::LOOPBACK);
    uclient(&mut server, &peer, Transport::Udp, true, false, "alice", "pw");
    server.assert_alive();
}

/// Whether the kernel refuses io_uring here (`kernel.io_uring_disabled`), saying so as a skip: the ring's tests
/// cannot run, and the server would fall back to the reactor.
fn io_uring_disabled() -> bool {
    let setting = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
    let disabled = !matches!(setting.trim(), "" | "0");
    if disabled {
        skip(&format!(
            "io_uring is disabled on this machine (kernel.io_uring_disabled = {})",
            setting.trim()
        ));
    }
    disabled
}

/// `relay.io_uring = false`: the same runs with every relay socket on the reactor (its own task, `recvmmsg`), the
/// path a kernel without io_uring takes.
#[test]
fn uclient_with_relay_sockets_on_the_reactor() {
    relays_on(false);
}

fn relays_on(io_uring: bool) {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return;
    }
    let setting = format!("relay.io_uring={io_uring}");
    let mut server = lab_server(&["--user", "alice:pw", "--set", &setting]);
    let on_ring = |log: &str| log.matches("relay sockets receive through io_uring").count();
    let want = if io_uring { 2 } else { 0 };
    let deadline = std::time::Instant::now() + Duration::from_secs(if io_uring { 10 } else { 1 });
    while on_ring(&server.log()) < want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    assert_eq!(
        on_ring(&log),
        want,
        "workers with their relay sockets on io_uring ({setting}):\n{log}"
    );
    // The other uclient tests run on the default (the ring): these cover what they do not, on each path.
    let peer = EchoPeer::start(common::LOOPBACK);
    uclient(&mut server, &peer, Transport::Udp, true, false, "alice", "pw");
    uclient(&mut server, &peer, Transport::Tcp, false, false, "alice", "pw");
    if io_uring && ipv6_loopback_available() {
        let peer6 = EchoPeer::start(IpAddr::V6(Ipv6Addr::LOCALHOST));
        uclient(&mut server, &peer6, Transport::Udp, false, true, "alice", "pw");
    }
    if !io_uring {
        uclient(&mut server, &peer, Transport::Udp, false, false, "alice", "pw");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Behind a layer-4 load balancer: HAProxy in TCP mode, sending PROXY protocol headers (`listen.proxy_protocol`).

/// HAProxy in TCP mode in front of the TURN-over-TCP port (PROXY v2), the TURN-over-TLS port (v1) and the HTTP port
/// (v2), connecting from 127.0.0.2; killed on drop.
struct Haproxy {
    _process: common::Process,
    tcp: SocketAddr,
    tls: SocketAddr,
    http: SocketAddr,
}

const BALANCER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

impl Haproxy {
    fn start(server: &Server) -> Haproxy {
        let http = server.http.expect("the server's HTTP port");
        let [tcp, tls, web] = [(); 3].map(|()| SocketAddr::new(common::LOOPBACK, common::free_tcp_port()));
        let backend = |name: &str, front: SocketAddr, back: SocketAddr, send: &str| {
            format!(
                "frontend {name}\n  bind {front}\n  default_backend {name}\n\
                 backend {name}\n  server traverse {back} {send} source {BALANCER}\n"
            )
        };
        let config = format!(
            "global\n  maxconn 256\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{}{}{}",
            backend("turn_tcp", tcp, server.tcp, "send-proxy-v2"),
            backend("turn_tls", tls, server.tls, "send-proxy"),
            backend("web", web, http, "send-proxy-v2"),
        );
        let path = std::env::temp_dir().join(format!("traverse-haproxy-{}-{}.cfg", std::process::id(), tcp.port()));
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy");
        let process = common::Process::new(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for front in [tcp, tls, web] {
            while std::net::TcpStream::connect(front).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "haproxy did not listen on {front}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Read at start: listening means it was.
        let _ = std::fs::remove_file(&path);
        Haproxy {
            _process: process,
            tcp,
            tls,
            http: web,
        }
    }
}

/// A STUN Binding request over TCP from `from` to `to`: the XOR-MAPPED-ADDRESS, or `None` when the connection was
/// closed (or not answered within 3 s), and the address the connection left from.
fn binding_over_tcp(from: IpAddr, to: SocketAddr) -> (Option<SocketAddr>, SocketAddr, common::Conn) {
    let stream = common::connect_tcp_from(from, to).expect("connect");
    let mut conn = common::Conn::Tcp {
        stream,
        buf: Vec::new(),
    };
    let local = conn.local_addr();
    conn.send(&common::binding_request(true));
    let mapped = conn.recv(Duration::from_secs(3)).and_then(|bytes| {
        let response = common::Response { bytes };
        response.address(stun::attr::XOR_MAPPED_ADDRESS)
    });
    (mapped, local, conn)
}

/// Behind HAProxy sending PROXY protocol headers, each client is itself: TURN over TCP and TLS relays through it
/// (coturn's client), the mapped address is the client's own, the per-source limit counts the client and not the
/// balancer, a failed TLS handshake is told to its client over HTTP through the balancer; the balancer's own
/// connection without a header is closed, and anyone else's is served without one.
#[test]
fn behind_haproxy_with_proxy_protocol_each_client_is_itself() {
    if !require_tools(&["turnutils_uclient", "turnutils_peer"]) {
        return;
    }
    if !common::have_tool("haproxy") {
        return skip("haproxy not installed (Debian package haproxy)");
    }
    let mut server = lab_server(&[
        "--user",
        "alice:pw",
        "--set",
        "listen.proxy_protocol=127.0.0.2/32",
        "--set",
        "limits.max_connections_per_source=12",
    ]);
    let haproxy = Haproxy::start(&server);

    // TURN relays through the balancer, over TCP (v2 headers) and TLS (v1).
    let peer = EchoPeer::start(common::LOOPBACK);
    uclient_to(
        &mut server,
        haproxy.tcp,
        &peer,
        Transport::Tcp,
        true,
        false,
        "alice",
        "pw",
    );
    uclient_to(
        &mut server,
        haproxy.tls,
        &peer,
        Transport::Tls,
        false,
        false,
        "alice",
        "pw",
    );

    // The server sees the client, not the balancer.
    let client = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
    let (mapped, local, _) = binding_over_tcp(client, haproxy.tcp);
    assert_eq!(mapped, Some(local), "the mapped address through the balancer");
    let (mut tls, _) = common::tls_connect(
        IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 5)),
        haproxy.tls,
        Duration::from_secs(5),
    )
    .expect("TLS through the balancer");
    let response = tls.must_transact(&common::binding_request(true));
    assert_eq!(response.address(stun::attr::XOR_MAPPED_ADDRESS), Some(tls.local_addr()));

    // Twelve connections from 127.0.0.3 are its share (coturn's client, from 127.0.0.1, takes up to six at once); a
    // thirteenth is refused, while 127.0.0.4 behind the same balancer is served (were the balancer the source, it
    // would be refused too).
    let mut held = Vec::new();
    for n in 0..12 {
        let (mapped, local, conn) = binding_over_tcp(client, haproxy.tcp);
        assert_eq!(mapped, Some(local), "connection {n} of 127.0.0.3's twelve");
        held.push(conn);
    }
    let (mapped, _, _) = binding_over_tcp(client, haproxy.tcp);
    assert_eq!(mapped, None, "a thirteenth connection from 127.0.0.3 is over its share");
    let log = server.log_with("per-source connection limit", Duration::from_secs(5));
    assert!(
        log.lines()
            .any(|l| l.contains("per-source connection limit") && l.contains("127.0.0.3:")),
        "the refusal names the client:\n{log}"
    );
    let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));
    let (mapped, local, _) = binding_over_tcp(other, haproxy.tcp);
    assert_eq!(mapped, Some(local), "another client behind the same balancer");
    drop(held);

    // A certificate refused through the balancer is told to that client (through the balancer, over HTTP) only.
    let refuser = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 6));
    refuse_certificate(refuser, haproxy.tls);
    let failures = |from: IpAddr| {
        let mut tcp = common::connect_tcp_from(from, haproxy.http).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let request = format!(
            "GET /api/tls-failures HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            haproxy.http
        );
        std::io::Write::write_all(&mut tcp, request.as_bytes()).expect("write");
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut tcp, &mut text);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default()
            .to_owned();
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {text}"));
        value["failures"].as_array().map_or(0, Vec::len)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while failures(refuser) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(failures(refuser), 1, "the refusing client sees its failure");
    assert_eq!(failures(other), 0, "another client behind the balancer does not");

    // The balancer's own connection without a header is closed; a client's direct one needs none.
    let (mapped, _, _) = binding_over_tcp(BALANCER, server.tcp);
    assert_eq!(mapped, None, "the balancer's connection without a PROXY header");
    let log = server.log_with("does not start with a PROXY protocol header", Duration::from_secs(5));
    assert!(
        log.contains("does not start with a PROXY protocol header"),
        "the closed connection is logged:\n{log}"
    );
    let (mapped, local, _) = binding_over_tcp(common::LOOPBACK, server.tcp);
    assert_eq!(mapped, Some(local), "a direct client is served as it is");
    server.assert_alive();
}

/// A TLS client that trusts no CA (as a browser towards a self-signed certificate): its handshake fails with
/// `unknown_ca`, which the server records against the client's source.
fn refuse_certificate(from: IpAddr, addr: SocketAddr) {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut tcp = common::connect_tcp_from(from, addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut result = Ok((0, 0));
    while conn.is_handshaking() && result.is_ok() {
        result = conn.complete_io(&mut tcp);
    }
    assert!(
        result.is_err(),
        "the handshake must fail: the certificate is self-signed"
    );
    let _ = conn.write_tls(&mut tcp);
}
