#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! The I/O layer that drives the sans-IO TURN state machine ([`turn::Server`]).
//!
//! Threading model: one worker thread per core, each with a single-threaded tokio runtime and its own
//! `turn::Server`. Every worker binds its own UDP, TCP and TLS listeners on the same addresses with SO_REUSEPORT;
//! the kernel hashes each client 5-tuple to one worker, and a worker's relay sockets are polled by that worker, so
//! relaying a packet touches no lock and no other thread. See `docs/architecture.md`.

mod budget;
pub mod handshakes;
mod mux;
mod proxy_protocol;
mod stats;
mod stream;
pub mod tls;
mod tls_stream;
mod udp;
mod uring;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;
use turn::{Authenticator, Quotas};

pub use budget::{plan_fds, ConnectionBudget, ConnectionPermit, FdPlan, Refused};
pub use coalesce::Naps;
pub use handshakes::{HandshakeFailure, Handshakes, SeenFailure};
pub use mux::{HttpHandler, HttpScheme, Io, Tcp, ALPN_STUN_TURN};
pub use stats::WorkerStats;
pub use tls::{CertStatus, CertStore, Reloaded, TlsIdentity, Validity, ALPN_ACME_TLS};

/// Everything the I/O layer needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// Plain HTTP (signaling, SDK) ports; TURN over TCP is recognised there too.
    pub http: Vec<SocketAddr>,
    /// Single ports: TLS (HTTPS/WSS or TURN, by ALPN or first bytes), TURN over TCP, and plain HTTP redirected.
    pub single: Vec<SocketAddr>,
    /// Second UDP ports served like `udp` (`stun.second_port`), for telling NAT types apart. Diagnosis only: one
    /// that cannot be bound (taken by another process) is warned of and left out, and the server starts.
    pub second_stun: Vec<SocketAddr>,
    pub tls_identity: TlsIdentity,
    pub relay: RelayConfig,
    pub workers: usize,
    /// How long a worker that runs out of work while busy with streams (signaling) waits before it sleeps, to
    /// handle the next events as a batch (`coalesce`): from `shortest` up to `longest`; a zero `shortest`: it
    /// sleeps at once.
    pub coalesce: coalesce::Naps,
    /// A TCP/TLS connection with no allocation and nothing received for this long is closed.
    pub stream_idle_timeout: Duration,
    /// TCP_USER_TIMEOUT of every accepted connection: data we sent may wait this long unacknowledged, or held back
    /// by the client's zero receive window, before the kernel drops the connection (`None`: the kernel's default,
    /// about 15 minutes of retransmissions, and for ever behind a zero window).
    pub send_stall_timeout: Option<Duration>,
    pub tls_handshake_timeout: Duration,
    /// TCP, TLS and HTTP connections held at once, over all workers.
    pub max_stream_connections: usize,
    /// Connections from one IPv4 address or IPv6 /64, counted at accept, before TLS (0: no limit).
    pub max_connections_per_source: usize,
    /// New connections a second from one source, after a burst of five seconds' worth (0: no limit).
    pub connections_per_second_per_source: u32,
    /// Reverse proxies and load balancers in front of the HTTP ports: charged to the total only.
    pub trusted_proxies: Vec<turn::policy::IpNet>,
    /// Layer-4 load balancers that start each TCP connection with a PROXY protocol header (v1 or v2) naming its
    /// client (`listen.proxy_protocol`): every connection from them must, and the client it names is the
    /// connection's for every limit and for TURN.
    pub proxy_protocol: Vec<turn::policy::IpNet>,
    /// A TURN stream connection without an allocation is closed this long after it was accepted or its allocation
    /// ended, whatever it sends; an undecided single-port connection must be sorted (TLS included) within
    /// `tls_handshake_timeout` of its accept.
    pub auth_timeout: Duration,
    pub turn: Arc<turn::Config>,
    pub auth: Arc<Authenticator>,
    pub quotas: Arc<Quotas>,
    /// The host's addresses and the live relays; kept live by worker 0 (re-read every second).
    pub own_addresses: Arc<turn::OwnAddresses>,
}

/// Where relay sockets bind and what address they advertise.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Bind addresses for IPv4 relays, taken in turn per allocation (a full port range passes to the next); empty:
    /// the address the client reached us on.
    pub bind_v4: Vec<IpAddr>,
    pub bind_v6: Vec<IpAddr>,
    /// Advertised (XOR-RELAYED-ADDRESS) addresses behind 1:1 NAT, paired with the bind addresses by position (one,
    /// with no bind address); empty: the bound address.
    pub external_v4: Vec<IpAddr>,
    pub external_v6: Vec<IpAddr>,
    pub ports: RangeInclusive<u16>,
    /// Interfaces to attach the kernel fast path (XDP, `crates/xdp`) to; empty: off.
    pub xdp: Vec<String>,
    /// Relay sockets receive through io_uring (multishot receives into lent buffers, `uring.rs`) instead of the
    /// reactor; falls back to the reactor where the kernel has no io_uring. Off by default: a datagram that finishes
    /// a ring receive wakes the worker even in a relay nap, so with smoothly arriving datagrams the reactor, whose
    /// naps hold, costs less CPU per packet (`docs/benchmarks.md`, "naps the ring interrupts").
    pub io_uring: bool,
    /// Runs of datagrams to one destination leave as one UDP GSO message (`udp::try_send_all`).
    pub gso: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            bind_v4: Vec::new(),
            bind_v6: Vec::new(),
            external_v4: Vec::new(),
            external_v6: Vec::new(),
            ports: 49152..=65535,
            xdp: Vec::new(),
            io_uring: false,
            gso: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {proto} {addr}{}", bind_hint(*addr, source))]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("RFC 5780: {0}")]
    NatDiscovery(String),
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// What to do about a listener that cannot bind, where the error alone does not say.
fn bind_hint(addr: SocketAddr, error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (a port below 1024 needs root or the CAP_NET_BIND_SERVICE capability: `setcap \
             cap_net_bind_service=+ep` on the binary, AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit, \
             `--user root --cap-drop ALL --cap-add NET_BIND_SERVICE` for a container)"
        }
        std::io::ErrorKind::AddrInUse => " (another process holds this port)",
        std::io::ErrorKind::AddrNotAvailable => " (no interface of this host has this address)",
        _ => "",
    }
}

/// A running server: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub single: Vec<SocketAddr>,
    /// RFC 5780: the extra UDP addresses bound for NAT behaviour discovery (the primary is in `udp`).
    pub nat_discovery: Vec<SocketAddr>,
    /// The second STUN ports bound ([`ServerConfig::second_stun`]).
    pub second_stun: Vec<SocketAddr>,
    pub certs: Arc<CertStore>,
    /// The workers' TURN counters, each copied once a second (see [`WorkerStats`]).
    pub stats: Arc<WorkerStats>,
    /// Failed TLS handshakes of the last minutes, named, per source.
    pub handshakes: Arc<Handshakes>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, closes every connection and relay, and waits for the workers.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds every listener (so errors surface here, before anything runs) and starts the workers.
/// `http` serves the connections the HTTP and single ports sort as HTTP; without it they are closed.
pub fn start(config: ServerConfig, http: Option<Arc<dyn HttpHandler>>) -> Result<Running, StartError> {
    let workers = config.workers.max(1);
    let certs = CertStore::new(config.tls_identity.clone())?;
    let tls_config = certs.server_config();
    let mut mux_tls = (*certs.server_config()).clone();
    // `acme-tls/1` last: only an RFC 8737 validation handshake offers it, and offers nothing else.
    mux_tls.alpn_protocols = vec![
        ALPN_STUN_TURN.to_vec(),
        b"http/1.1".to_vec(),
        tls::ALPN_ACME_TLS.to_vec(),
    ];

    let mut per_worker: Vec<worker::Sockets> = (0..workers).map(|_| worker::Sockets::default()).collect();
    let mut bound = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for addr in &config.udp {
        bound.0.push(bind_udp_per_worker(*addr, &mut per_worker, "UDP")?);
    }
    let nat_discovery = bind_nat_discovery(&config, &mut per_worker)?;
    let second_stun = bind_second_stun(&config.second_stun, &mut per_worker);
    for (list, proto, out) in [
        (&config.tcp, "TCP", &mut bound.1),
        (&config.tls, "TLS", &mut bound.2),
        (&config.http, "HTTP", &mut bound.3),
        (&config.single, "single-port", &mut bound.4),
    ] {
        for addr in list {
            ensure_free(*addr, proto)?;
            let mut actual = *addr;
            for sockets in per_worker.iter_mut() {
                let l = stream::bind(actual).map_err(|source| StartError::Bind {
                    proto,
                    addr: actual,
                    source,
                })?;
                actual = l.local_addr().map_err(|source| StartError::Bind {
                    proto,
                    addr: actual,
                    source,
                })?;
                match proto {
                    "TCP" => sockets.tcp.push(l),
                    "TLS" => sockets.tls.push(l),
                    "HTTP" => sockets.http.push(l),
                    _ => sockets.single.push(l),
                }
            }
            out.push(actual);
        }
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let connections = Arc::new(
        budget::ConnectionBudget::new(
            config.max_stream_connections,
            config.max_connections_per_source,
            config.connections_per_second_per_source,
        )
        .trusting(config.trusted_proxies.clone()),
    );
    let stats = WorkerStats::new(workers);
    stats.watch_connections(connections.clone());
    let stats = Arc::new(stats);
    let fast_path = attach_fast_path(&config.relay.xdp, config.quotas.max_total());
    let shared = Arc::new(worker::SharedConfig {
        config,
        fast_path,
        tls: tls_config,
        mux_tls: Arc::new(mux_tls),
        http,
        connections,
        reflection: Arc::new(turn::ReflectionGuard::default()),
        reservations: Arc::new(turn::Reservations::default()),
        reserved_sockets: std::sync::Mutex::new(std::collections::HashMap::new()),
        stats,
        handshakes: Arc::new(handshakes::Handshakes::default()),
        certs: certs.clone(),
    });
    let stats = shared.stats.clone();
    let handshakes = shared.handshakes.clone();
    let mut threads = Vec::new();
    for (index, sockets) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let rx = shutdown_rx.clone();
        let certs = certs.clone();
        let t = std::thread::Builder::new()
            .name(format!("traverse-worker-{index}"))
            .spawn(move || worker::run(index, shared, sockets, certs, rx))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    Ok(Running {
        udp: bound.0,
        tcp: bound.1,
        tls: bound.2,
        http: bound.3,
        single: bound.4,
        nat_discovery,
        second_stun,
        certs,
        stats,
        handshakes,
        shutdown,
        threads,
    })
}

/// The kernel fast path on the configured interfaces, or the socket path alone: said once, in plain words.
fn attach_fast_path(interfaces: &[String], allocations: usize) -> Option<Arc<xdp::FastPath>> {
    if interfaces.is_empty() {
        return None;
    }
    match xdp::FastPath::attach(interfaces, allocations) {
        Ok(fast) => {
            tracing::info!(
                interfaces = %interfaces.join(","),
                "XDP fast path attached: channel-bound IPv4 UDP allocations are relayed in the kernel"
            );
            Some(Arc::new(fast))
        }
        Err(e @ xdp::AttachError::NotBuiltIn) => {
            tracing::warn!("{e}");
            None
        }
        Err(e) => {
            tracing::warn!("XDP fast path not attached: {e}; using the socket path");
            None
        }
    }
}

/// RFC 5780: binds the other IP/port combinations beside the primary UDP listener, once per worker like every
/// listener. The addresses are explicit (a wildcard socket cannot choose an answer's source address); a bind fails
/// if the alternate IP is not local, so a server never advertises an OTHER-ADDRESS it cannot answer from — which
/// would make every NAT look symmetric to the client.
fn bind_nat_discovery(
    config: &ServerConfig,
    per_worker: &mut [worker::Sockets],
) -> Result<Vec<SocketAddr>, StartError> {
    let Some(d) = config.turn.nat_discovery else {
        return Ok(Vec::new());
    };
    if !config.udp.contains(&d.primary) {
        return Err(StartError::NatDiscovery(format!(
            "the primary address {} is not a UDP listener",
            d.primary
        )));
    }
    let mut extra = Vec::new();
    for addr in d.addresses().into_iter().filter(|a| !config.udp.contains(a)) {
        extra.push(bind_udp_per_worker(addr, per_worker, "UDP (RFC 5780 alternate)")?);
    }
    tracing::info!("{}", d.describe());
    Ok(extra)
}

/// One UDP socket on `addr` for each worker (SO_REUSEPORT), the first choosing the port when `addr`'s is 0; all or
/// none: the workers get them only once every one is bound. Returns the bound address.
fn bind_udp_per_worker(
    addr: SocketAddr,
    per_worker: &mut [worker::Sockets],
    proto: &'static str,
) -> Result<SocketAddr, StartError> {
    ensure_free(addr, "UDP")?;
    let mut actual = addr;
    let mut sockets = Vec::with_capacity(per_worker.len());
    for _ in 0..per_worker.len() {
        let s = udp::bind(actual, true).map_err(|source| StartError::Bind {
            proto,
            addr: actual,
            source,
        })?;
        actual = s.local_addr().map_err(|source| StartError::Bind {
            proto,
            addr: actual,
            source,
        })?;
        sockets.push(s);
    }
    for (worker, s) in per_worker.iter_mut().zip(sockets) {
        worker.udp.push(s);
    }
    Ok(actual)
}

/// Binds the second STUN ports like the UDP listeners, once per worker. A port another process holds costs the
/// page its NAT comparison, not the server its start: warned of, and left out of what is handed out.
fn bind_second_stun(addrs: &[SocketAddr], per_worker: &mut [worker::Sockets]) -> Vec<SocketAddr> {
    let mut bound = Vec::new();
    for &addr in addrs {
        match bind_udp_per_worker(addr, per_worker, "UDP (second STUN port)") {
            Ok(actual) => bound.push(actual),
            Err(e) => tracing::warn!(
                "{e}: /check cannot tell a symmetric NAT apart on this address family; set stun.second_port to a \
                 free port, or 0 to turn it off"
            ),
        }
    }
    bound
}

/// SO_REUSEPORT would let a second Traverse (or anything else with the option) share our ports silently and steal
/// half the clients; a probe bind without it fails on a taken port, as users expect.
fn ensure_free(addr: SocketAddr, proto: &'static str) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = || -> std::io::Result<()> {
        use socket2::{Domain, Protocol, Socket, Type};
        let (ty, protocol) = if proto == "UDP" {
            (Type::DGRAM, Protocol::UDP)
        } else {
            (Type::STREAM, Protocol::TCP)
        };
        let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if proto != "UDP" {
            // Connections of a previous run in TIME_WAIT must not block a restart; a live listener still does.
            socket.set_reuse_address(true)?;
        }
        socket.bind(&addr.into())
    };
    probe().map_err(|source| StartError::Bind { proto, addr, source })
}
