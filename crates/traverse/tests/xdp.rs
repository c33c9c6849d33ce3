//! The kernel fast path (`--xdp`, crates/xdp) against real peers in network namespaces joined by veth pairs:
//!
//! ```text
//!   client ns 192.0.2.1 ─┐                       ┌─ server ns 203.0.113.1 (traverse --xdp <s0>, native XDP)
//!                        ├─ router ns (forwards) ┤     │ s1 198.51.100.129/25
//!   peer ns 198.51.100.1 ┘   (.2 is deny-listed)       └─ far peer ns 198.51.100.130 (a second interface)
//! ```
//!
//! With XDP on both of the server's interfaces, a peer behind the second one is relayed with `XDP_REDIRECT` from one
//! interface to the other, both ways.
//!
//! coturn's `turnutils_uclient` with channels relays with 0 % loss through the kernel (the fast-path counters move,
//! the socket path's do not); Send indications and TCP clients still work through the socket path; a hand-built
//! client shows that a deleted allocation and an expired one stop the fast path at once, that a deny-listed peer is
//! never reachable, and that the bandwidth cap holds for kernel-relayed traffic.
//!
//! Needs root (namespaces, XDP) and the XDP object built in (clang at build time): otherwise prints `SKIP: …`, or fails
//! under `TRAVERSE_REQUIRE_PEERS=1` (CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
// One `setns` call, to open sockets inside the lab's namespaces from a helper thread.
#![allow(unsafe_code)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{channel_data, have_tool, run_bounded, skip, Conn, Server, TurnClient};
use stun::{attr, Method};

const SERVER_IP: &str = "203.0.113.1";
const CLIENT_IP: &str = "192.0.2.1";
const PEER_IP: &str = "198.51.100.1";
const DENIED_IP: &str = "198.51.100.2";
/// Behind the server's second interface, on a /25 of its own (more specific than the route through the router).
const FAR_PEER_IP: &str = "198.51.100.130";
const FAR_PEER_MAC: &str = "02:00:00:00:01:30";

/// Five namespaces and four veth pairs, deleted on drop (a failed assertion included).
struct Lab {
    prefix: String,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn dev(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn build() -> Lab {
        // Interface names are at most 15 bytes: "tx" + 5 digits + the lab's number + "-s0".
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lab = Lab {
            prefix: format!("tx{:05}{n}", std::process::id() % 100_000),
        };
        let (s, r, c, p, q) = (lab.ns("s"), lab.ns("r"), lab.ns("c"), lab.ns("p"), lab.ns("q"));
        let (s0, r0, c0, r1, p0, r2) = (
            lab.dev("s0"),
            lab.dev("r0"),
            lab.dev("c0"),
            lab.dev("r1"),
            lab.dev("p0"),
            lab.dev("r2"),
        );
        for ns in [&s, &r, &c, &p, &q] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (a, a_ns, b, b_ns) in [(&s0, &s, &r0, &r), (&c0, &c, &r1, &r), (&p0, &p, &r2, &r)] {
            sh(&[
                "ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
            ]);
        }
        let (s1, q0) = (lab.dev("s1"), lab.dev("q0"));
        sh(&[
            "ip",
            "link",
            "add",
            &s1,
            "netns",
            &s,
            "type",
            "veth",
            "peer",
            "name",
            &q0,
            "netns",
            &q,
            "address",
            FAR_PEER_MAC,
        ]);
        for (ns, dev, addr) in [
            (&s, &s1, "198.51.100.129/25"),
            (&q, &q0, "198.51.100.130/25"),
            (&s, &s0, "203.0.113.1/24"),
            (&r, &r0, "203.0.113.254/24"),
            (&c, &c0, "192.0.2.1/24"),
            (&r, &r1, "192.0.2.254/24"),
            (&p, &p0, "198.51.100.1/24"),
            (&p, &p0, "198.51.100.2/24"),
            (&r, &r2, "198.51.100.254/24"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        for (ns, gw) in [
            (&s, "203.0.113.254"),
            (&c, "192.0.2.254"),
            (&p, "198.51.100.254"),
            (&q, "198.51.100.129"),
        ] {
            sh(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
        }
        // The fast path passes a packet whose next hop has no neighbour entry yet to the stack: the far peer's is
        // known from the start, so that its first packets are the kernel's too.
        sh(&[
            "ip",
            "-n",
            &s,
            "neigh",
            "replace",
            FAR_PEER_IP,
            "lladdr",
            FAR_PEER_MAC,
            "dev",
            &s1,
            "nud",
            "permanent",
        ]);
        sh(&["ip", "netns", "exec", &r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // The fast path's route look-ups (bpf_fib_lookup) need forwarding on the interface it is attached to.
        for dev in [&s0, &s1] {
            sh(&[
                "ip",
                "netns",
                "exec",
                &s,
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{dev}.forwarding=1"),
            ]);
        }
        // A veth only accepts frames sent with XDP_TX when an XDP program runs on its other end: the same object,
        // whose maps stay empty there, passes everything.
        let object = std::env::temp_dir().join(format!("{}-pass.o", lab.prefix));
        std::fs::write(&object, xdp::object().expect("built in")).expect("write the XDP object");
        let object_path = object.to_string_lossy().into_owned();
        for (ns, dev) in [(&r, &r0), (&q, &q0)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "link",
                "set",
                "dev",
                dev,
                "xdpdrv",
                "obj",
                &object_path,
                "sec",
                "xdp",
            ]);
        }
        let _ = std::fs::remove_file(&object);
        // Sockets on a veth send UDP with a partial checksum (offload); the fast path, like a NIC's receive path,
        // needs complete ones.
        sh(&["ip", "netns", "exec", &c, "ethtool", "-K", &c0, "tx", "off"]);
        sh(&["ip", "netns", "exec", &p, "ethtool", "-K", &p0, "tx", "off"]);
        sh(&["ip", "netns", "exec", &q, "ethtool", "-K", &q0, "tx", "off"]);
        lab
    }

    /// Runs `f` on a thread inside the namespace (sockets it opens stay there).
    fn inside<T: Send>(&self, role: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns(role));
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    // SAFETY: `ns` is an open namespace file for the duration of the call; setns changes only this
                    // thread's network namespace, and the thread ends right after `f`.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("namespace thread")
        })
    }

    fn exec(&self, role: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(role)]).args(args);
        cmd
    }

    /// Waits (10 s at most) until a UDP socket in `role`'s namespace is bound to `port`, by its `/proc/net/udp`.
    fn wait_udp_bound(&self, role: &str, port: u16) {
        let port = format!(":{port:04X}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.exec(role, &["cat", "/proc/net/udp"]).output().expect("cat");
            let table = String::from_utf8_lossy(&out.stdout);
            let bound = table
                .lines()
                .any(|l| l.split_whitespace().nth(1).is_some_and(|local| local.ends_with(&port)));
            if bound {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing bound to UDP {port} in {role}:\n{table}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["c", "p", "q", "s", "r"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child killed on drop (the echo peer).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `traverse serve` inside the server namespace with XDP on its veth.
fn start_server(lab: &Lab, port: u16, metrics: u16, extra: &[&str]) -> Server {
    let ns = lab.ns("s");
    let s0 = lab.dev("s0");
    let udp = format!("{SERVER_IP}:{port}");
    let metrics = format!("127.0.0.1:{metrics}");
    let mut args = vec![
        "--tcp",
        &udp,
        "--xdp",
        &s0,
        "--metrics",
        &metrics,
        "--user",
        "alice:pw",
        "--realm",
        "test",
        "--workers",
        "2",
        "--set",
        "relay.deny_peers=198.51.100.2/32",
    ];
    args.extend_from_slice(extra);
    let server = Server::start_under(&["ip", "netns", "exec", &ns], &udp, &args);
    assert!(
        server
            .log_with("XDP fast path attached", Duration::from_secs(5))
            .contains("XDP fast path attached"),
        "the fast path did not attach; log:\n{}",
        server.log()
    );
    server
}

/// The server's counters that tell the two paths apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    fast_to_peer: u64,
    fast_to_client: u64,
    socket_udp_to_peer: u64,
    socket_udp_to_client: u64,
    socket_tcp_to_peer: u64,
    dropped: u64,
}

fn counters(lab: &Lab, metrics: u16) -> Counters {
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let out = run_bounded(&mut lab.exec("s", &["curl", "-sf", &url]), Duration::from_secs(10));
    let text = out.all();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok()))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };
    Counters {
        fast_to_peer: value("traverse_turn_fast_path_packets_total{direction=\"to_peer\"}"),
        fast_to_client: value("traverse_turn_fast_path_packets_total{direction=\"to_client\"}"),
        socket_udp_to_peer: value("traverse_turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"}"),
        socket_udp_to_client: value("traverse_turn_relayed_packets_total{direction=\"to_client\",transport=\"udp\"}"),
        socket_tcp_to_peer: value("traverse_turn_relayed_packets_total{direction=\"to_peer\",transport=\"tcp\"}"),
        dropped: value("traverse_turn_dropped_packets_total"),
    }
}

/// The counters once the workers' 1 s tick has published what `done` waits for (at most 4 s).
fn counters_when(lab: &Lab, metrics: u16, done: impl Fn(&Counters) -> bool) -> Counters {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let c = counters(lab, metrics);
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that `packets` each way since `before` took the fast path and none the UDP socket path; the counters.
fn all_through_the_kernel(lab: &Lab, metrics: u16, before: Counters, packets: u64, what: &str) -> Counters {
    let after = counters_when(lab, metrics, |c| c.fast_to_client >= before.fast_to_client + packets);
    assert!(
        after.fast_to_peer >= before.fast_to_peer + packets && after.fast_to_client >= before.fast_to_client + packets,
        "{what}: the fast path did not relay all {packets} packets each way: {before:?} -> {after:?}"
    );
    assert_eq!(
        (after.socket_udp_to_peer, after.socket_udp_to_client),
        (before.socket_udp_to_peer, before.socket_udp_to_client),
        "{what}: traffic reached the socket path"
    );
    after
}

/// One `turnutils_uclient` run from the client namespace; returns (sent, lost).
fn uclient(lab: &Lab, port: u16, flags: &[&str]) -> (u64, u64) {
    let port = port.to_string();
    let mut args = vec![
        "turnutils_uclient",
        "-u",
        "alice",
        "-w",
        "pw",
        "-e",
        PEER_IP,
        "-r",
        "3480",
    ];
    args.extend_from_slice(&["-p", &port, "-n", "50", "-m", "2", "-l", "120"]);
    args.extend_from_slice(flags);
    args.push(SERVER_IP);
    let out = run_bounded(&mut lab.exec("c", &args), Duration::from_secs(30));
    let text = out.all();
    let number_after = |line: &str, key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .trim_end_matches(',')
            .parse()
            .ok()
    };
    let sent = text
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs="))
        .and_then(|l| number_after(l, "tot_send_msgs="));
    let lost = text
        .lines()
        .rev()
        .find(|l| l.contains("Total lost packets"))
        .and_then(|l| number_after(l, "Total lost packets"));
    match (sent, lost) {
        (Some(sent), Some(lost)) => (sent, lost),
        _ => panic!("uclient {flags:?}: no summary:\n{text}"),
    }
}

/// A hand-built client in the client namespace with one channel to `peer`; returns it and its relayed address.
fn client_with_channel(lab: &Lab, port: u16, channel: u16, peer: SocketAddr) -> (TurnClient, SocketAddr) {
    let server: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let conn = lab.inside("c", || Conn::udp_from(CLIENT_IP.parse().unwrap(), server));
    let mut client = TurnClient::new(conn, "alice", "pw");
    let allocated = client.allocate(false);
    let relay = allocated
        .address(attr::XOR_RELAYED_ADDRESS)
        .unwrap_or_else(|| panic!("allocate: {}", allocated.describe()));
    let bound = client.channel_bind(channel, peer);
    assert_eq!(bound.error_code(), None, "channel bind: {}", bound.describe());
    (client, relay)
}

fn peer_socket(lab: &Lab, ip: &str) -> UdpSocket {
    let role = if ip == FAR_PEER_IP { "q" } else { "p" };
    let ip = ip.to_owned();
    lab.inside(role, move || {
        let s = UdpSocket::bind(format!("{ip}:0")).expect("peer socket");
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        s
    })
}

/// ChannelData payloads that reach the client within `window`.
fn received_by_client(client: &mut TurnClient, window: Duration) -> Vec<Vec<u8>> {
    client
        .conn
        .drain(window)
        .into_iter()
        .filter(|p| p.first().is_some_and(|b| b & 0xc0 == 0x40))
        .collect()
}

fn received_by_peer(peer: &UdpSocket, window: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = peer.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
    }
    got
}

/// The DF bit of each UDP datagram to `port` a raw socket sees within `window`.
fn df_bits(mut raw: socket2::Socket, port: u16, window: Duration) -> Vec<bool> {
    use std::io::Read;
    let deadline = Instant::now() + window;
    let mut bits = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok(n) = raw.read(&mut buf) else { continue };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n >= ihl + 4 && u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]) == port {
            bits.push(buf[6] & 0x40 != 0);
        }
    }
    bits
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the XDP test needs root (network namespaces, native XDP on veth)".into());
    }
    if !xdp::built_in() {
        return Some(
            "the XDP program was not built (clang missing at build time; install clang and libbpf-dev)".into(),
        );
    }
    for tool in ["ip", "ethtool", "curl", "turnutils_uclient", "turnutils_peer"] {
        if !have_tool(tool) {
            return Some(format!(
                "{tool} not installed (Debian packages iproute2, ethtool, curl, coturn)"
            ));
        }
    }
    None
}

#[test]
fn xdp_fast_path_relays_channels_and_keeps_every_guarantee() {
    if let Some(reason) = skip_reason() {
        skip(&reason);
        return;
    }
    let started = Instant::now();
    let lab = Lab::build();
    let _echo = Killed(
        lab.exec("p", &["turnutils_peer", "-L", PEER_IP, "-p", "3480"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer"),
    );

    // --- One server: coturn's client through the fast path, Send indications and TCP through sockets.
    let server = start_server(&lab, 3478, 9464, &[]);
    lab.wait_udp_bound("p", 3480); // the echo peer
    let before = counters(&lab, 9464);
    let (sent, lost) = uclient(&lab, 3478, &[]);
    assert_eq!(lost, 0, "uclient with channels lost packets");
    assert!(sent >= 100, "uclient sent only {sent}");
    let after = all_through_the_kernel(&lab, 9464, before, sent, "uclient with channels");
    println!("uclient channels: sent={sent} lost=0, fast path {before:?} -> {after:?}");

    let (sent, lost) = uclient(&lab, 3478, &["-s"]);
    assert_eq!(lost, 0, "uclient with Send indications lost packets");
    let send = counters_when(&lab, 9464, |c| {
        c.socket_udp_to_client >= after.socket_udp_to_client + sent
    });
    assert!(
        send.socket_udp_to_peer >= after.socket_udp_to_peer + sent,
        "Send indications: {send:?}"
    );
    assert_eq!(
        send.fast_to_peer, after.fast_to_peer,
        "a Send indication took the fast path"
    );

    let (sent, lost) = uclient(&lab, 3478, &["-t"]);
    assert_eq!(lost, 0, "uclient over TCP lost packets");
    let tcp = counters_when(&lab, 9464, |c| c.socket_tcp_to_peer >= send.socket_tcp_to_peer + sent);
    assert!(tcp.socket_tcp_to_peer >= send.socket_tcp_to_peer + sent, "TCP: {tcp:?}");
    assert_eq!(
        tcp.fast_to_peer, after.fast_to_peer,
        "a TCP client's data took the fast path"
    );

    // --- A hand-built client: both directions through the kernel, a refused peer, a deleted allocation.
    let peer = peer_socket(&lab, PEER_IP);
    let peer_addr = peer.local_addr().unwrap();
    let (mut client, relay) = client_with_channel(&lab, 3478, 0x4000, peer_addr);
    client.conn.send(&channel_data(0x4000, b"to the peer", false));
    let got = received_by_peer(&peer, Duration::from_millis(300));
    assert_eq!(got.len(), 1, "ChannelData did not reach the peer");
    assert_eq!(got[0].0, b"to the peer");
    assert_eq!(
        got[0].1.port(),
        relay.port(),
        "the peer saw another source than the relayed address"
    );
    peer.send_to(b"to the client", relay).unwrap();
    let back = received_by_client(&mut client, Duration::from_millis(300));
    assert_eq!(back, vec![channel_data(0x4000, b"to the client", false)]);
    let hand = counters_when(&lab, 9464, |c| c.fast_to_client > tcp.fast_to_client);
    assert!(
        hand.fast_to_peer > tcp.fast_to_peer && hand.fast_to_client > tcp.fast_to_client,
        "{hand:?}"
    );

    // DF toward the peer is the allocation's (no DONT-FRAGMENT asked: cleared), not the client's (Linux sets it on
    // UDP by default), as the socket path sends (RFC 8656 §14.8).
    let raw = lab.inside("p", || {
        let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::UDP))
            .expect("raw socket");
        raw.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        raw
    });
    for _ in 0..5 {
        client
            .conn
            .send(&channel_data(0x4000, b"fragment me if you must", false));
    }
    let df = df_bits(raw, peer_addr.port(), Duration::from_millis(300));
    assert_eq!(received_by_peer(&peer, Duration::from_millis(100)).len(), 5);
    assert_eq!(df, vec![false; 5], "DF bits of the relayed packets");
    let hand = counters_when(&lab, 9464, |c| c.fast_to_peer >= hand.fast_to_peer + 5);
    assert!(
        hand.fast_to_peer >= tcp.fast_to_peer + 6,
        "not through the kernel: {hand:?}"
    );

    // The deny-listed peer: no channel, no permission, and nothing it sends reaches the client.
    let denied = peer_socket(&lab, DENIED_IP);
    let refused = client.channel_bind(0x4001, denied.local_addr().unwrap());
    assert_eq!(refused.error_code(), Some(403), "{}", refused.describe());
    let refused = client.create_permission(denied.local_addr().unwrap());
    assert_eq!(refused.error_code(), Some(403), "{}", refused.describe());
    for _ in 0..20 {
        denied.send_to(b"from a refused peer", relay).unwrap();
    }
    assert!(received_by_client(&mut client, Duration::from_millis(300)).is_empty());

    // Deleting the allocation (Refresh, LIFETIME 0) stops both directions at once.
    let deleted = client.request(Method::REFRESH, |w| w.add(&stun::Attribute::Lifetime(0)).map(|_| ()));
    assert_eq!(deleted.error_code(), None, "{}", deleted.describe());
    for _ in 0..10 {
        peer.send_to(b"after the end", relay).unwrap();
        client.conn.send(&channel_data(0x4000, b"after the end", false));
    }
    assert!(received_by_client(&mut client, Duration::from_millis(300)).is_empty());
    assert!(received_by_peer(&peer, Duration::from_millis(300)).is_empty());
    let gone = counters_when(&lab, 9464, |_| false);
    assert_eq!(
        (gone.fast_to_peer, gone.fast_to_client),
        (hand.fast_to_peer, hand.fast_to_client),
        "the fast path relayed for a refused peer or a deleted allocation"
    );
    drop(client);

    // A deletion and a new allocation read in one batch: the new one takes the freed slot before the deletion's
    // events are handled, and the deleted channel's routes must leave the kernel all the same. (They stayed before:
    // relaying, uncounted and uncapped, from a relay port that was no longer the allocation's.)
    let (mut client, relay) = client_with_channel(&lab, 3478, 0x4005, peer_addr);
    client.conn.send(&channel_data(0x4005, b"before", false));
    assert_eq!(received_by_peer(&peer, Duration::from_millis(300)).len(), 1);
    let pid = server.pid();
    sh(&["kill", "-STOP", &pid.to_string()]);
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        sh(&["kill", "-CONT", &pid.to_string()]);
    });
    let (deleted, again) = client.two_requests(
        (Method::REFRESH, |w: &mut stun::MessageWriter<'_>| {
            w.add(&stun::Attribute::Lifetime(0)).map(|_| ())
        }),
        (Method::ALLOCATE, |w: &mut stun::MessageWriter<'_>| {
            w.add(&stun::Attribute::RequestedTransport(17)).map(|_| ())
        }),
    );
    resume.join().unwrap();
    assert_eq!(deleted.error_code(), None, "{}", deleted.describe());
    assert_eq!(again.error_code(), None, "{}", again.describe());
    let before = counters_when(&lab, 9464, |_| false);
    for _ in 0..10 {
        client.conn.send(&channel_data(0x4005, b"old channel", false));
        peer.send_to(b"to the old relay", relay).unwrap();
    }
    assert!(
        received_by_peer(&peer, Duration::from_millis(300)).is_empty(),
        "the deleted channel still reached the peer"
    );
    assert!(
        received_by_client(&mut client, Duration::from_millis(300)).is_empty(),
        "the deleted relay port still reached the client"
    );
    let after = counters_when(&lab, 9464, |_| false);
    assert_eq!(
        (after.fast_to_peer, after.fast_to_client),
        (before.fast_to_peer, before.fast_to_client),
        "the kernel relayed for the deleted allocation"
    );
    drop(client);

    // A peer behind the server's second interface, which has no XDP of this server: the program does not send there
    // (a redirect to an interface without XDP is dropped by many drivers, after being counted), the socket path does.
    let far = peer_socket(&lab, FAR_PEER_IP);
    let (mut client, relay) = client_with_channel(&lab, 3478, 0x4006, far.local_addr().unwrap());
    let before = counters(&lab, 9464);
    for i in 0..20 {
        client
            .conn
            .send(&channel_data(0x4006, format!("out {i}").as_bytes(), false));
    }
    let got = received_by_peer(&far, Duration::from_millis(300));
    assert_eq!(got.len(), 20, "the far peer got {got:?}");
    assert!(got.iter().all(|(_, from)| *from == relay), "{got:?}");
    let after = counters_when(&lab, 9464, |c| c.socket_udp_to_peer >= before.socket_udp_to_peer + 20);
    assert_eq!(
        after.fast_to_peer, before.fast_to_peer,
        "the kernel sent out of an interface it does not run on"
    );
    assert!(
        after.socket_udp_to_peer >= before.socket_udp_to_peer + 20,
        "{before:?} -> {after:?}"
    );
    drop(far);
    drop(client);
    drop(server);

    // --- A server whose allocations live 3 s and relay at most 20 kB/s (one XDP program per interface: the first
    // server is gone).
    let mut server = start_server(
        &lab,
        3479,
        9465,
        &[
            "--set",
            "limits.default_lifetime=3",
            "--set",
            "limits.max_lifetime=3",
            "--set",
            "relay.bandwidth_per_allocation=20000",
        ],
    );
    // Expiry: the kernel stops at the deadline itself, not at the next once-a-second sweep.
    let (mut client, relay) = client_with_channel(&lab, 3479, 0x4002, peer_addr);
    let allocated = Instant::now();
    let mut arrivals = Vec::new();
    while allocated.elapsed() < Duration::from_millis(4500) {
        // Each tick carries when it was sent: a late arrival (this thread preempted) is no late relay.
        let tick = format!("tick {}", allocated.elapsed().as_micros());
        peer.send_to(tick.as_bytes(), relay).unwrap();
        for data in received_by_client(&mut client, Duration::from_millis(10)) {
            let sent = std::str::from_utf8(data.get(4..).unwrap_or_default())
                .ok()
                .and_then(|t| t.trim_end_matches('\0').strip_prefix("tick "))
                .and_then(|us| us.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a tick: {data:?}"));
            arrivals.push(Duration::from_micros(sent));
        }
    }
    let last = arrivals.iter().max().copied().unwrap_or_default();
    assert!(arrivals.len() > 50, "too few packets before expiry: {}", arrivals.len());
    assert!(
        last < Duration::from_millis(3050),
        "a packet sent {last:?} after the 3 s allocation was made was relayed"
    );
    let expired = counters_when(&lab, 9465, |c| c.fast_to_client >= arrivals.len() as u64);
    assert!(expired.fast_to_client >= arrivals.len() as u64, "{expired:?}");
    drop(client);

    // Bandwidth: 1000-byte payloads at 200 kB/s for 2 s; the kernel relays only the bucket's credit.
    let (mut client, _relay) = client_with_channel(&lab, 3479, 0x4003, peer_addr);
    let payload = [7u8; 1000];
    let sending = Instant::now();
    for _ in 0..400 {
        client.conn.send(&channel_data(0x4003, &payload, false));
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent_for = sending.elapsed();
    // The peer's receive buffer held what arrived meanwhile.
    let received: usize = received_by_peer(&peer, Duration::from_millis(500))
        .iter()
        .map(|(p, _)| p.len())
        .sum();
    // A full bucket (20 kB) at the start and a credit at each once-a-second settle while sending: about 60 kB in
    // the 2 s asked, more if this thread's sleeps stretched the sending (a loaded machine); far below the 400 kB.
    let most = 20_000 * (1 + sent_for.as_secs_f64().ceil() as usize) + 10_000;
    assert!(
        (10_000..=most).contains(&received),
        "the peer received {received} bytes under a 20 kB/s cap (at most {most} in {sent_for:?})"
    );
    let capped = counters_when(&lab, 9465, |c| c.fast_to_peer >= 10 && c.dropped > expired.dropped);
    assert!(
        capped.fast_to_peer >= 10,
        "the capped traffic did not use the fast path: {capped:?}"
    );
    assert!(
        capped.dropped > expired.dropped,
        "nothing was dropped over the cap: {capped:?}"
    );
    println!("bandwidth cap 20000 B/s: the peer received {received} bytes in 2 s");
    server.assert_alive();
    drop(client);
    drop(server);

    // --- XDP on both interfaces, a peer behind the second: each direction leaves by the other interface than it
    // came in on (XDP_REDIRECT), all in the kernel.
    let s1 = lab.dev("s1");
    let mut server = start_server(&lab, 3481, 9466, &["--xdp", &s1]);
    let far = peer_socket(&lab, FAR_PEER_IP);
    let before = counters(&lab, 9466);
    let (mut client, relay) = client_with_channel(&lab, 3481, 0x4004, far.local_addr().unwrap());
    for i in 0..20 {
        client
            .conn
            .send(&channel_data(0x4004, format!("out {i}").as_bytes(), false));
    }
    let got = received_by_peer(&far, Duration::from_millis(300));
    assert_eq!(got.len(), 20, "the far peer got {got:?}");
    assert!(
        got.iter().all(|(_, from)| *from == relay),
        "from the relayed address: {got:?}"
    );
    for i in 0..20 {
        far.send_to(format!("back {i}").as_bytes(), relay).unwrap();
    }
    let back = received_by_client(&mut client, Duration::from_millis(300));
    assert_eq!(back.len(), 20, "the client got {} of 20", back.len());
    let after = all_through_the_kernel(&lab, 9466, before, 20, "across two interfaces");
    println!("two interfaces: 20 + 20 packets redirected, {before:?} -> {after:?}");
    server.assert_alive();
    println!("xdp test took {:?}", started.elapsed());
}

/// The kernel's route tables (262 144 entries each) against one client address and against their room, through
/// the loader itself: an address holds at most a sixteenth of them, and a route the kernel cannot take leaves
/// nothing behind. Before, one address could fill the tables, and the counters entry of an allocation whose first
/// route was refused stayed in the kernel for good (the allocation was never recorded, so its end did not remove it).
#[test]
fn the_kernel_route_tables_hold_a_share_per_client_and_a_refused_route_leaves_nothing() {
    if let Some(reason) = skip_reason() {
        skip(&reason);
        return;
    }
    let lab = Lab::build();
    let s0 = lab.dev("s0");
    lab.inside("s", move || {
        let fast = xdp::FastPath::attach(&[s0], 10_000).expect("attach");
        let expires = Instant::now() + Duration::from_secs(600);
        let share = xdp::ROUTES_PER_SOURCE;
        // Client `i`'s route `k`, of allocation `i` (each client one allocation).
        let route = |i: u8, k: u32| {
            let client: SocketAddr = format!("192.0.2.{i}:{}", 1024 + k).parse().unwrap();
            let peer: SocketAddr = format!("198.51.100.1:{}", 1024 + k).parse().unwrap();
            let relay: SocketAddr = format!("203.0.113.1:{}", 50_000 + u16::from(i)).parse().unwrap();
            let allocation = xdp::Allocation {
                worker: 0,
                slot: u32::from(i),
                generation: 1,
            };
            xdp::Route::v4(allocation, client, addr(SERVER_IP, 3478), 0x4000, peer, relay, false).unwrap()
        };
        for k in 0..share {
            fast.install(&route(1, k), expires, true).expect("within the share");
        }
        let refused = fast.install(&route(1, share), expires, true);
        assert!(refused.is_err(), "a route past the client's share was taken");
        // A refresh of a route it holds is no new route.
        fast.install(&route(1, 0), expires, false).expect("a refresh");
        // Fifteen more clients fill the tables, each to its share.
        for i in 2..=16 {
            for k in 0..share {
                fast.install(&route(i, k), expires, true)
                    .expect("room left in the tables");
            }
        }
        assert_eq!(fast.allocations(), 16);
        // A seventeenth, with a share of its own but no room: refused, and its allocation's counters not kept.
        assert!(
            fast.install(&route(17, 0), expires, true).is_err(),
            "a full table took a route"
        );
        assert_eq!(
            fast.allocations(),
            16,
            "the refused allocation's counters stayed in the kernel"
        );
        // A removed route gives its place back, in the table and in its client's share.
        fast.remove(&route(1, 0));
        fast.install(&route(1, share), expires, true).expect("the freed place");
        fast.remove(&route(16, 0));
        fast.install(&route(17, 0), expires, true).expect("the freed place");
        assert_eq!(fast.allocations(), 17);
    });
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}
