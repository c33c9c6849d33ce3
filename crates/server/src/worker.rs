//! One worker thread: a single-threaded runtime that owns a `turn::Server`, its listeners' share of clients, and
//! the relay sockets of those clients' allocations.
//!
//! A datagram's path: `udp_listener` receives a batch → `turn::Server::handle_client` → a reply is batched back to
//! the client with `sendmmsg`, or the payload leaves, at the batch's end, from the allocation's relay socket (a run
//! of them to one peer as one GSO message, `udp::try_send_all`). A peer's datagram:
//! `relay_loop` wakes → receive batch into the worker's shared buffers, each datagram 48 bytes in →
//! `turn::Server::handle_peer` writes the ChannelData header in place → `sendmmsg` to the client (or the client's
//! TCP/TLS sink). With `relay.io_uring` (off by default), `ring_loop` replaces `relay_loop`: one wake-up reaps every
//! relay socket's datagrams from the worker's ring (`crate::uring`), each already 48 bytes into its buffer, and the
//! same `handle_peer` and `sendmmsg` follow. Nothing awaits while a buffer or the server is borrowed, so the
//! `RefCell`s never conflict.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::{spawn_local, JoinHandle, LocalSet};
use turn::{
    AllocationId, BindRequest, ClientAction, Event, Family, FastPathTraffic, FastRoute, FiveTuple, RelayBinding,
    Traffic, Transport,
};

use crate::stream::{self, StreamSink};
use crate::udp::{self, OutDatagram, RecvMeta, BATCH};
use crate::uring::{self, Uring};
use crate::{CertStore, ServerConfig};

/// Largest UDP payload, so no datagram is ever truncated.
const MAX_DATAGRAM: usize = 65_535;
const RELAY_SLOT: usize = turn::PEER_HEADROOM + MAX_DATAGRAM + turn::PEER_TAILROOM;
/// Full receive batches a socket's task handles before it yields to the worker's other sockets.
const FULL_BATCHES_PER_TURN: usize = 4;
/// How long the host's route-derived IPv4 address ([`Worker::routed_v4`]) is taken as read: an address change is
/// followed within this, and an Allocate costs no system calls for it.
const ROUTE_TTL: Duration = Duration::from_secs(10);
/// Answers are small; a STUN answer never exceeds this.
pub(crate) const REPLY_SLOT: usize = 1500;

pub(crate) struct SharedConfig {
    pub config: ServerConfig,
    /// The kernel fast path, when attached: every worker installs its own allocations' channels.
    pub fast_path: Option<Arc<xdp::FastPath>>,
    pub tls: Arc<rustls::ServerConfig>,
    /// The single port's TLS: ALPN `stun.turn` and `http/1.1`.
    pub mux_tls: Arc<rustls::ServerConfig>,
    pub http: Option<Arc<dyn crate::HttpHandler>>,
    pub connections: Arc<crate::budget::ConnectionBudget>,
    /// One reflection budget per source for the whole server (a spoofer's ports land on every worker).
    pub reflection: Arc<turn::ReflectionGuard>,
    /// EVEN-PORT reservations: the token may be redeemed from another 5-tuple, hence another worker. The core owns
    /// each token and its expiry; ...
    pub reservations: Arc<turn::Reservations>,
    /// ... the I/O layer owns only the socket held for it, by the reserved (advertised) relay address, and closes
    /// it when the core says so (`Event::ReservationReleased`) or redeems it.
    pub reserved_sockets: Mutex<HashMap<SocketAddr, std::net::UdpSocket>>,
    /// Where each worker copies its `turn::Stats` on its tick, for metrics.
    pub stats: Arc<crate::WorkerStats>,
    /// Failed TLS handshakes, named, per source (logged once per client and reason; read by `/api/tls-failures`).
    pub handshakes: Arc<crate::handshakes::Handshakes>,
    /// The certificate, to tell a refusal of the generated self-signed one from others.
    pub certs: Arc<crate::tls::CertStore>,
}

impl SharedConfig {
    fn reserved(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, std::net::UdpSocket>> {
        self.reserved_sockets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The listeners a worker owns (its share of the SO_REUSEPORT group).
#[derive(Default)]
pub(crate) struct Sockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
    pub tls: Vec<std::net::TcpListener>,
    /// Sorted per connection (`mux`): plain HTTP ports, and single ports that also terminate TLS.
    pub http: Vec<std::net::TcpListener>,
    pub single: Vec<std::net::TcpListener>,
}

/// A UDP listener.
pub(crate) struct Listener {
    socket: AsyncFd<std::net::UdpSocket>,
    local: SocketAddr,
}

struct RelaySocket {
    io: RelayIo,
    /// The bound address: what a peer's packet carries on the wire (the advertised one may be a NAT's).
    local: SocketAddr,
}

/// Where a relay socket's datagrams are received.
enum RelayIo {
    /// On the worker's reactor: a task of its own waits for readiness and receives (`relay_loop`).
    Reactor(AsyncFd<std::net::UdpSocket>),
    /// On the worker's ring (`relay.io_uring`, `crate::uring`). Not registered with the reactor, which would
    /// otherwise wake for every datagram with no task waiting.
    Ring(std::net::UdpSocket),
}

impl RelaySocket {
    fn socket(&self) -> &std::net::UdpSocket {
        match &self.io {
            RelayIo::Reactor(fd) => fd.get_ref(),
            RelayIo::Ring(socket) => socket,
        }
    }
}

/// What the ring's reaper needs to forward a relay socket's datagrams (`ring_loop`).
struct RingTag {
    id: AllocationId,
    /// Keeps the socket open while its receive may still be in flight.
    _socket: Rc<RelaySocket>,
    route: RingRoute,
}

enum RingRoute {
    /// The client's listener, by its index in `Worker::udp`, so that a datagram's destination is `Copy`.
    Udp(ToClient),
    Stream(Rc<StreamSink>),
}

/// A datagram's way back to a UDP client, from the listener it came in on.
#[derive(Clone, Copy)]
struct ToClient {
    listener: usize,
    client: SocketAddr,
    src_ip: Option<IpAddr>,
}

impl Default for ToClient {
    fn default() -> Self {
        ToClient {
            listener: 0,
            client: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
            src_ip: None,
        }
    }
}

/// How a peer's data reaches the client of an allocation.
#[derive(Clone)]
pub(crate) enum ClientRoute {
    Udp {
        listener: Rc<Listener>,
        client: SocketAddr,
        src_ip: Option<IpAddr>,
    },
    Stream(Rc<StreamSink>),
}

/// An allocation's relay sockets and their tasks, at the allocation's slot in `Worker::relays`.
struct RelayEntry {
    id: AllocationId,
    /// The TCP/TLS connection of an allocation made over one: told when the allocation ends.
    stream: Option<Rc<StreamSink>>,
    sockets: [Option<Rc<RelaySocket>>; 2],
    tasks: Vec<JoinHandle<()>>,
    /// With `relay.io_uring`: the sockets' receivers on the worker's ring.
    ring: Option<(Rc<Uring<RingTag>>, Vec<uring::Key>)>,
}

impl Drop for RelayEntry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some((ring, keys)) = &self.ring {
            for key in keys {
                ring.remove(*key);
            }
        }
    }
}

/// Receive buffers shared by all of a worker's relay sockets: an allocation costs no buffer memory of its own.
struct Buffers {
    slots: Vec<Box<[u8]>>,
    metas: [RecvMeta; BATCH],
    ranges: [(usize, usize); BATCH],
    replies: Vec<Box<[u8]>>,
}

/// Fields are private: the `RefCell`s are borrowed only inside `Worker`'s own methods, none of which awaits, so no
/// borrow can be held across an `.await` by a caller.
pub(crate) struct Worker {
    shared: Arc<SharedConfig>,
    server: RefCell<turn::Server>,
    /// This worker's share of every UDP listener, so an RFC 5780 answer can leave from another one.
    udp: Vec<Rc<Listener>>,
    /// Relay sockets by allocation slot ([`AllocationId::slot`]): an index, not a hash look-up, per relayed packet.
    relays: RefCell<Vec<Option<RelayEntry>>>,
    /// With `relay.io_uring` (and a kernel that has it): where relay sockets receive.
    ring: Option<Rc<Uring<RingTag>>>,
    buffers: RefCell<Buffers>,
    scratch: RefCell<Box<[u8]>>,
    rng: RefCell<rand::rngs::StdRng>,
    /// The relay address (of `relay.bind_v4` / `bind_v6`) the next allocation tries first: each takes the next in turn.
    next_relay_address: Cell<usize>,
    /// The host's IPv4 source address toward the internet, and when it was read ([`host_address`]): read again
    /// after [`ROUTE_TTL`], not per Allocate.
    routed_v4: Cell<Option<(Instant, Option<IpAddr>)>>,
    index: usize,
    /// Allocations with channels in the kernel fast path: which channels, and the kernel's counters last read.
    fast: RefCell<HashMap<AllocationId, FastAllocation>>,
}

#[derive(Default)]
struct FastAllocation {
    /// Each channel's routes as installed in the kernel: they are removed by what was written, not by what the
    /// allocation's slot holds by then (a slot freed and taken again in one receive batch names another allocation
    /// when the first one's events are handled, and its routes would stay, uncounted and uncapped).
    channels: HashMap<FastRoute, xdp::Route>,
    seen: xdp::Relayed,
}

pub(crate) fn run(
    index: usize,
    shared: Arc<SharedConfig>,
    sockets: Sockets,
    certs: Arc<CertStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    udp::set_gso(shared.config.relay.gso);
    let mut builder = tokio::runtime::Builder::new_current_thread();
    coalesce::install(&mut builder, shared.config.coalesce);
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot start runtime");
            return;
        }
    };
    let local = LocalSet::new();
    // Every line this thread logs (allocations, connections) names its worker: allocation ids are per worker.
    let _span = tracing::info_span!("worker", worker = index).entered();
    local.block_on(&runtime, async move {
        if let Some(http) = &shared.http {
            http.worker_started(index, shared.config.workers.max(1));
        }
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let cfg = &shared.config;
        let server = turn::Server::new(
            cfg.turn.clone(),
            cfg.auth.clone(),
            cfg.quotas.clone(),
            rand::rngs::StdRng::from_entropy(),
            (now, unix),
        )
        .with_shared_reservations(shared.reservations.clone())
        .with_shared_reflection_guard(shared.reflection.clone())
        .with_own_addresses(cfg.own_addresses.clone());
        let server = if shared.fast_path.is_some() {
            server.with_fast_path_events()
        } else {
            server
        };
        let mut udp = Vec::new();
        for socket in sockets.udp {
            match listener_from_std(socket) {
                Ok(l) => udp.push(Rc::new(l)),
                Err(e) => tracing::error!(worker = index, error = %e, "cannot register UDP listener"),
            }
        }
        let ring = if cfg.relay.io_uring {
            match Uring::new() {
                Ok(ring) => Some(Rc::new(ring)),
                Err(e) => {
                    tracing::warn!(worker = index, error = %e, "relay.io_uring: no io_uring here; relay sockets receive on the reactor");
                    None
                }
            }
        } else {
            None
        };
        let worker = Rc::new(Worker {
            shared: shared.clone(),
            server: RefCell::new(server),
            udp,
            relays: RefCell::new(Vec::new()),
            ring: ring.clone(),
            buffers: RefCell::new(Buffers {
                slots: (0..BATCH).map(|_| vec![0u8; RELAY_SLOT].into_boxed_slice()).collect(),
                metas: [RecvMeta::default(); BATCH],
                ranges: [(0, 0); BATCH],
                replies: (0..BATCH).map(|_| vec![0u8; REPLY_SLOT].into_boxed_slice()).collect(),
            }),
            scratch: RefCell::new(vec![0u8; REPLY_SLOT].into_boxed_slice()),
            rng: RefCell::new(rand::rngs::StdRng::from_entropy()),
            next_relay_address: Cell::new(index),
            routed_v4: Cell::new(None),
            index,
            fast: RefCell::new(HashMap::new()),
        });
        for l in &worker.udp {
            spawn_local(udp_listener(worker.clone(), l.clone()));
        }
        if let Some(ring) = ring {
            tracing::info!(worker = index, "relay sockets receive through io_uring");
            spawn_local(ring_loop(worker.clone(), ring));
        }
        for (list, transport) in [(sockets.tcp, Transport::Tcp), (sockets.tls, Transport::Tls)] {
            for l in list {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => {
                        spawn_local(stream::accept_loop(worker.clone(), l, transport));
                    }
                    Err(e) => tracing::error!(worker = index, error = %e, "cannot register TCP listener"),
                }
            }
        }
        for (list, with_tls) in [(sockets.http, false), (sockets.single, true)] {
            for l in list {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => {
                        spawn_local(crate::mux::accept_loop(worker.clone(), l, with_tls));
                    }
                    Err(e) => tracing::error!(worker = index, error = %e, "cannot register TCP listener"),
                }
            }
        }
        spawn_local(timer(worker.clone(), certs, index));
        let _ = shutdown.wait_for(|stop| *stop).await;
        worker.relays.borrow_mut().clear();
    });
}

fn listener_from_std(socket: std::net::UdpSocket) -> std::io::Result<Listener> {
    let local = socket.local_addr()?;
    if local.ip().is_unspecified() {
        udp::enable_pktinfo(&socket)?;
    }
    Ok(Listener {
        socket: udp::register(socket)?,
        local,
    })
}

/// Expiry and a copy of the counters for metrics once a second, and (on worker 0) the host's addresses and
/// certificate file checks.
async fn timer(worker: Rc<Worker>, certs: Arc<CertStore>, index: usize) {
    let worker_zero = index == 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let now = Instant::now();
        if worker_zero {
            refresh_own_addresses(&worker.shared.config);
        }
        worker.server.borrow_mut().handle_timeout(now);
        worker.drain_events();
        worker.settle_fast_path(now);
        let mut stats = worker.server.borrow().stats();
        // Datagrams too long for the ring's buffers were dropped before the state machine saw them.
        stats.dropped_packets += worker.ring.as_ref().map_or(0, |r| r.truncated());
        stats.relay_receive_pauses = worker.ring.as_ref().map_or(0, |r| r.pauses());
        worker.shared.stats.publish(index, stats);
        if worker_zero && n.is_multiple_of(5) {
            match certs.reload_if_changed() {
                Some(Ok(_)) => tracing::info!("TLS certificate reloaded (file changed)"),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the old one")
                }
                None => {}
            }
        }
    }
}

/// Re-reads the host's addresses (a netlink dump, once a second): an address gained while running — an IPv6
/// privacy address, a floating IP, DHCP finishing late — must not be reachable through the relay. The advertised
/// external addresses always count as the host's.
fn refresh_own_addresses(config: &ServerConfig) {
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return;
    };
    let addrs = interfaces
        .into_iter()
        .map(|i| i.ip())
        .chain(config.relay.external_v4.iter().copied())
        .chain(config.relay.external_v6.iter().copied());
    if config.own_addresses.set_host(addrs) {
        tracing::info!("the host's addresses changed; relay permissions to new own addresses are revoked");
    }
}

/// Client → server for one UDP listener: each batch through the state machine, the answers back in one `sendmmsg`.
async fn udp_listener(worker: Rc<Worker>, listener: Rc<Listener>) {
    let src_ip_needed = listener.local.ip().is_unspecified();
    drain_forever(&listener.socket, || {
        let mut bufs = worker.buffers.borrow_mut();
        let Buffers {
            slots, metas, replies, ..
        } = &mut *bufs;
        let n = udp::recv_batch(listener.socket.get_ref(), slots, 0, metas, src_ip_needed)?;
        let now = Instant::now();
        let mut pending: [(usize, SocketAddr, Option<IpAddr>); BATCH] = [(0, listener.local, None); BATCH];
        let mut count = 0;
        let mut to_peers = PeerSends::new();
        for (index, (slot, meta)) in slots.iter().zip(metas.iter()).take(n).enumerate() {
            let Some(data) = slot.get(..meta.len) else { continue };
            let server_ip = meta.dst_ip.filter(|_| src_ip_needed).unwrap_or(listener.local.ip());
            let five_tuple = FiveTuple {
                client: meta.addr,
                server: SocketAddr::new(server_ip, listener.local.port()),
                transport: Transport::Udp,
            };
            let route = ClientRoute::Udp {
                listener: listener.clone(),
                client: meta.addr,
                src_ip: src_ip_needed.then_some(server_ip),
            };
            let Some(out) = replies.get_mut(count) else { break };
            // A batch holds at most BATCH datagrams, so the sends never fill up.
            let mut relay = |socket, peer, range| to_peers.push(socket, peer, index, range);
            if let Some(len) = worker.handle_client(now, five_tuple, data, out, &route, &mut relay) {
                if let Some(p) = pending.get_mut(count) {
                    *p = (len, meta.addr, src_ip_needed.then_some(server_ip));
                    count += 1;
                }
            }
        }
        to_peers.send(slots);
        // Events first: a ChannelBind's route is in the kernel before its answer leaves, so the client's first
        // ChannelData already takes the fast path.
        worker.drain_events();
        flush_replies(&listener, replies, pending.get(..count).unwrap_or_default());
        drop(bufs);
        Ok(n)
    })
    .await
}

/// The loop every UDP socket of a worker runs: wait for readiness, then `receive_batch` (receive up to [`BATCH`]
/// datagrams and handle them; the number received) until the socket is empty. A short batch means the queue was
/// empty: readiness is cleared at once instead of paying for a receive that returns `EAGAIN` (`clear_ready` keeps
/// readiness that arrived meanwhile). After [`FULL_BATCHES_PER_TURN`] full batches the task yields, so a flooded
/// socket cannot starve the worker's other sockets (whose buffers would overflow: the collapse the benchmark saw
/// under overload); readiness is still set, so draining goes on right after.
async fn drain_forever(
    socket: &AsyncFd<std::net::UdpSocket>,
    mut receive_batch: impl FnMut() -> std::io::Result<usize>,
) {
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        let mut full_batches = 0;
        loop {
            let received = receive_batch();
            if let Ok(n) = received {
                coalesce::datagrams_handled(n);
            }
            match received {
                Ok(n) if n < BATCH => {
                    ready.clear_ready();
                    break;
                }
                Ok(_) => {
                    full_batches += 1;
                    if full_batches >= FULL_BATCHES_PER_TURN {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    break;
                }
            }
        }
        if full_batches >= FULL_BATCHES_PER_TURN {
            tokio::task::yield_now().await;
        }
    }
}

/// A client's datagram relayed to a peer, kept to leave with the others of its batch.
struct ToPeer {
    socket: Rc<RelaySocket>,
    peer: SocketAddr,
    /// Where the payload is: the slot (of a receive batch's buffers), and the range in it.
    slot: usize,
    range: Range<usize>,
}

/// The datagrams a listener's receive batch, or the frames of a stream's read, relay to peers: they leave together
/// at its end, one `udp::try_send_all` per run from one relay socket, so that a run to one peer (a video frame's
/// packets) leaves as one GSO message. The payloads stay where they were received, nothing is copied.
pub(crate) struct PeerSends {
    sends: [Option<ToPeer>; BATCH],
    count: usize,
}

impl PeerSends {
    pub(crate) fn new() -> Self {
        PeerSends {
            sends: std::array::from_fn(|_| None),
            count: 0,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.count >= BATCH
    }

    /// Keeps one; a full collection drops it (callers send first when `is_full`).
    fn push(&mut self, socket: Rc<RelaySocket>, peer: SocketAddr, slot: usize, range: Range<usize>) {
        if let Some(to) = self.sends.get_mut(self.count) {
            *to = Some(ToPeer {
                socket,
                peer,
                slot,
                range,
            });
            self.count += 1;
        }
    }

    /// Sends what was kept, the payloads in `slots`, and forgets it. WouldBlock drops the rest of a run, as a router
    /// would.
    pub(crate) fn send<S: AsRef<[u8]>>(&mut self, slots: &[S]) {
        let sends = self.sends.get_mut(..self.count).unwrap_or_default();
        // Filled once per call, not per run: with clients interleaved, a run is often one datagram.
        let mut out = [OutDatagram {
            data: &[],
            dst: SocketAddr::from(([0, 0, 0, 0], 0)),
            src_ip: None,
        }; BATCH];
        let mut at = 0;
        while let Some(Some(first)) = sends.get(at) {
            let mut k = 0;
            let same_socket = sends
                .get(at..)
                .unwrap_or_default()
                .iter()
                .map_while(|s| s.as_ref().filter(|s| Rc::ptr_eq(&s.socket, &first.socket)));
            for (s, o) in same_socket.zip(out.iter_mut()) {
                at += 1;
                if let Some(data) = slots.get(s.slot).and_then(|slot| slot.as_ref().get(s.range.clone())) {
                    *o = OutDatagram {
                        data,
                        dst: s.peer,
                        src_ip: None,
                    };
                    k += 1;
                }
            }
            udp::try_send_all(first.socket.socket(), out.get(..k).unwrap_or_default());
        }
        for s in sends.iter_mut() {
            *s = None;
        }
        self.count = 0;
    }
}

fn flush_replies(listener: &Listener, replies: &[Box<[u8]>], pending: &[(usize, SocketAddr, Option<IpAddr>)]) {
    if pending.is_empty() {
        return;
    }
    let mut datagrams: [Option<OutDatagram<'_>>; BATCH] = [None; BATCH];
    for ((slot, out), (len, dst, src_ip)) in datagrams.iter_mut().zip(replies).zip(pending) {
        *slot = out.get(..*len).map(|data| OutDatagram {
            data,
            dst: *dst,
            src_ip: *src_ip,
        });
    }
    let mut packed = [OutDatagram {
        data: &[],
        dst: listener.local,
        src_ip: None,
    }; BATCH];
    let mut k = 0;
    for d in datagrams.into_iter().flatten() {
        if let Some(p) = packed.get_mut(k) {
            *p = d;
            k += 1;
        }
    }
    udp::try_send_all(listener.socket.get_ref(), packed.get(..k).unwrap_or_default());
}

impl Worker {
    /// Runs one client packet through the state machine and carries out the action. Returns the length of an
    /// answer written into `out`. A payload to relay goes to `relay` (socket, peer, its range in `packet`), which
    /// sends it or keeps it to send with the rest of a batch.
    fn handle_client(
        self: &Rc<Self>,
        now: Instant,
        five_tuple: FiveTuple,
        packet: &[u8],
        out: &mut [u8],
        route: &ClientRoute,
        relay: &mut dyn FnMut(Rc<RelaySocket>, SocketAddr, Range<usize>),
    ) -> Option<usize> {
        let action = self.server.borrow_mut().handle_client(now, five_tuple, packet, out);
        match action {
            ClientAction::Drop => None,
            ClientAction::Reply(len) => Some(len),
            ClientAction::ReplyFrom { len, from, to } => {
                // RFC 5780: from the listener bound to `from` (this worker's share of it). Rare and never on the
                // relay path, so a plain send and a scan of a handful of listeners.
                let listener = self.udp.iter().find(|l| l.local == from);
                match (listener, out.get(..len), route) {
                    (Some(l), Some(data), ClientRoute::Udp { .. }) => {
                        udp::try_send_all(
                            l.socket.get_ref(),
                            &[OutDatagram {
                                data,
                                dst: to,
                                src_ip: None,
                            }],
                        );
                    }
                    _ => tracing::debug!(%from, %to, "no UDP listener for an RFC 5780 answer"),
                }
                None
            }
            ClientAction::Relay {
                allocation,
                peer,
                payload,
            } => {
                let relays = self.relays.borrow();
                let socket = relays
                    .get(allocation.slot())
                    .and_then(Option::as_ref)
                    .filter(|e| e.id == allocation)
                    .and_then(|e| Family::of(&peer).pick(&e.sockets).clone());
                drop(relays);
                if let Some(socket) = socket {
                    relay(socket, peer, payload);
                }
                None
            }
            ClientAction::BindRelay(request) => {
                let binding = self.bind_relay(&request);
                let sockets = binding.as_ref().map(|(_, s)| s.clone());
                let held = binding.as_ref().and_then(|(b, _)| b.reserved);
                let (id, reply) =
                    self.server
                        .borrow_mut()
                        .handle_relay_bound(now, five_tuple, binding.map(|(b, _)| b), out);
                match (id, sockets) {
                    (Some(id), Some(sockets)) => {
                        self.spawn_relays(id, sockets, route.clone());
                    }
                    // No allocation, so no reservation token names the port+1 socket held for it.
                    _ => {
                        if let Some(held) = held {
                            self.shared.reserved().remove(&held);
                        }
                    }
                }
                reply
            }
        }
    }

    pub(crate) fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    /// One frame from a TCP/TLS connection: runs it through the state machine, hands an answer to `reply`, and
    /// carries out what the state machine released. A payload to relay is kept in `sends` when the frame sits at
    /// `at` in the read's buffer (the caller sends them at the read's end, and first when `sends` is full), or
    /// sent at once (a frame the last read began: it is freed after this call).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn handle_stream_frame(
        self: &Rc<Self>,
        now: Instant,
        five_tuple: FiveTuple,
        frame: &[u8],
        at: Option<usize>,
        sends: &mut PeerSends,
        route: &ClientRoute,
        reply: impl FnOnce(&[u8]),
    ) {
        {
            let mut scratch = self.scratch.borrow_mut();
            let mut relay = |socket: Rc<RelaySocket>, peer, range: Range<usize>| match at {
                Some(at) => sends.push(socket, peer, 0, at + range.start..at + range.end),
                None => {
                    if let Some(data) = frame.get(range) {
                        udp::try_send_all(
                            socket.socket(),
                            &[OutDatagram {
                                data,
                                dst: peer,
                                src_ip: None,
                            }],
                        );
                    }
                }
            };
            if let Some(len) = self.handle_client(now, five_tuple, frame, &mut scratch, route, &mut relay) {
                reply(scratch.get(..len).unwrap_or_default());
            }
        }
        self.drain_events();
    }

    /// A stream connection closed: RFC 8656 §7 ties its allocation to it.
    pub(crate) fn handle_connection_closed(&self, five_tuple: FiveTuple) {
        self.server.borrow_mut().handle_connection_closed(five_tuple);
        self.drain_events();
    }

    pub(crate) fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.server.borrow().has_allocation(five_tuple)
    }

    /// Closes what the state machine released.
    pub(crate) fn drain_events(&self) {
        loop {
            let event = self.server.borrow_mut().poll_event();
            match event {
                Some(Event::AllocationClosed(id)) => {
                    self.forget_fast_path(id);
                    let mut relays = self.relays.borrow_mut();
                    let ended = relays
                        .get_mut(id.slot())
                        .filter(|e| e.as_ref().is_some_and(|e| e.id == id))
                        .and_then(Option::take);
                    drop(relays);
                    if let Some(sink) = ended.and_then(|entry| entry.stream.clone()) {
                        sink.end_allocation();
                    }
                }
                Some(Event::ReservationReleased(relay)) => {
                    self.shared.reserved().remove(&relay);
                }
                Some(Event::ChannelUsable { route, expires }) => self.install_fast_route(route, expires),
                Some(Event::ChannelUnusable(route)) => self.remove_fast_route(route),
                Some(Event::SourceQuotaReached(source)) => {
                    static SOURCE_FULL: source::ThrottledLog = source::ThrottledLog::new(60);
                    if let Some(held_back) = SOURCE_FULL.due() {
                        tracing::warn!(
                            %source,
                            held_back,
                            "Allocate refused (486): its address holds limits.max_allocations_per_source \
                             allocations. If many users share that address (an office, a carrier NAT), raise it. \
                             (Said at most once a minute.)"
                        );
                    }
                }
                None => break,
            }
        }
    }

    /// The kernel's route for a channel: the relay socket's bound address (not the advertised one), IPv4 only.
    fn kernel_route(&self, route: &FastRoute) -> Option<xdp::Route> {
        let relays = self.relays.borrow();
        let entry = relays
            .get(route.allocation.slot())?
            .as_ref()
            .filter(|e| e.id == route.allocation)?;
        let local = Family::of(&route.peer).pick(&entry.sockets).as_ref()?.local;
        let allocation = xdp::Allocation {
            worker: self.index as u32,
            slot: route.allocation.slot() as u32,
            generation: route.allocation.generation(),
        };
        let five = &route.five_tuple;
        xdp::Route::v4(
            allocation,
            five.client,
            five.server,
            route.channel.get(),
            route.peer,
            local,
            route.dont_fragment,
        )
    }

    /// A channel became usable or was refreshed: its routes go (again) into the kernel with the new deadline. The
    /// first route of an allocation also gets its credit when the allocation has a bandwidth cap.
    fn install_fast_route(&self, route: FastRoute, expires: Instant) {
        let Some(fast) = &self.shared.fast_path else { return };
        let Some(kernel) = self.kernel_route(&route) else {
            return;
        };
        let (new, first) = match self.fast.borrow().get(&route.allocation) {
            Some(entry) => (!entry.channels.contains_key(&route), entry.channels.is_empty()),
            None => (true, true),
        };
        // The first route's credit goes in before the route: the program reads no credit as no cap.
        if first && self.settle_one(fast, route.allocation, Instant::now()).is_err() {
            return;
        }
        if let Err(e) = fast.install(&kernel, expires, new) {
            // At most one line per 10 s: one Refresh can re-announce 256 channels.
            static REFUSED: source::ThrottledLog = source::ThrottledLog::new(10);
            if let Some(held_back) = REFUSED.due() {
                tracing::warn!(
                    error = %e,
                    held_back,
                    "channels left on the socket path, not given to the kernel's fast path (said at most every 10 s)"
                );
            }
            if first {
                fast.forget(kernel.allocation);
            }
            return;
        }
        self.fast
            .borrow_mut()
            .entry(route.allocation)
            .or_default()
            .channels
            .insert(route, kernel);
    }

    fn remove_fast_route(&self, route: FastRoute) {
        let Some(fast) = &self.shared.fast_path else { return };
        let installed = self
            .fast
            .borrow_mut()
            .get_mut(&route.allocation)
            .and_then(|entry| entry.channels.remove(&route));
        if let Some(kernel) = installed {
            fast.remove(&kernel);
        }
    }

    /// The allocation ended: any route of it still in the kernel is withdrawn, its last kernel counts go to the
    /// core's counters, then its counters and credit leave the kernel.
    fn forget_fast_path(&self, id: AllocationId) {
        let Some(fast) = &self.shared.fast_path else { return };
        if !self.withdraw_routes(fast, id) {
            return;
        }
        let _ = self.settle_one(fast, id, Instant::now());
        self.fast.borrow_mut().remove(&id);
        fast.forget(xdp::Allocation {
            worker: self.index as u32,
            slot: id.slot() as u32,
            generation: id.generation(),
        });
    }

    /// Removes from the kernel every route of `id` still installed; false when it had none recorded.
    fn withdraw_routes(&self, fast: &xdp::FastPath, id: AllocationId) -> bool {
        let routes: Vec<xdp::Route> = match self.fast.borrow_mut().get_mut(&id) {
            Some(entry) => entry.channels.drain().map(|(_, kernel)| kernel).collect(),
            None => return false,
        };
        for kernel in &routes {
            fast.remove(kernel);
        }
        true
    }

    /// Once a second: what the kernel relayed for each of this worker's fast-path allocations goes to the core
    /// (metrics), and each capped allocation gets its next byte credit from its token bucket.
    fn settle_fast_path(&self, now: Instant) {
        let Some(fast) = &self.shared.fast_path else { return };
        let ids: Vec<AllocationId> = self.fast.borrow().keys().copied().collect();
        for id in ids {
            if let Err(e) = self.settle_one(fast, id, now) {
                // The cap's credit could not be written: the program would read none as no cap. The socket path,
                // where the cap holds, takes the allocation's traffic until its next channel refresh tries again.
                self.withdraw_routes(fast, id);
                static FAILED: source::ThrottledLog = source::ThrottledLog::new(10);
                if let Some(held_back) = FAILED.due() {
                    tracing::warn!(
                        error = %e,
                        held_back,
                        "a bandwidth credit could not be written to the kernel: the allocation's channels take the \
                         socket path (said at most every 10 s)"
                    );
                }
            }
        }
    }

    /// Brings the kernel's counts of `id` to the core and writes its next credit (its cap's); an error when the
    /// credit could not be written (the caller takes the allocation off the fast path).
    fn settle_one(&self, fast: &xdp::FastPath, id: AllocationId, now: Instant) -> Result<(), xdp::MapError> {
        let allocation = xdp::Allocation {
            worker: self.index as u32,
            slot: id.slot() as u32,
            generation: id.generation(),
        };
        let seen = self.fast.borrow().get(&id).map(|e| e.seen).unwrap_or_default();
        let (relayed, credit) = fast.settle(allocation, |relayed, unused| {
            let traffic = FastPathTraffic {
                to_peer: Traffic {
                    packets: relayed.to_peer_packets.saturating_sub(seen.to_peer_packets),
                    bytes: relayed.to_peer_bytes.saturating_sub(seen.to_peer_bytes),
                },
                to_client: Traffic {
                    packets: relayed.to_client_packets.saturating_sub(seen.to_client_packets),
                    bytes: relayed.to_client_bytes.saturating_sub(seen.to_client_bytes),
                },
            };
            self.server
                .borrow_mut()
                .handle_fast_path_traffic(now, id, traffic, unused)
        });
        if let Some(entry) = self.fast.borrow_mut().get_mut(&id) {
            entry.seen = relayed;
        }
        credit
    }

    fn spawn_relays(self: &Rc<Self>, id: AllocationId, sockets: [Option<Rc<RelaySocket>>; 2], route: ClientRoute) {
        let mut tasks = Vec::new();
        let mut keys = Vec::new();
        for s in sockets.iter().flatten() {
            match (&s.io, &self.ring) {
                (RelayIo::Ring(socket), Some(ring)) => {
                    let to_client = match &route {
                        ClientRoute::Udp {
                            listener,
                            client,
                            src_ip,
                        } => RingRoute::Udp(ToClient {
                            listener: self
                                .udp
                                .iter()
                                .position(|l| Rc::ptr_eq(l, listener))
                                .unwrap_or(usize::MAX),
                            client: *client,
                            src_ip: *src_ip,
                        }),
                        ClientRoute::Stream(sink) => RingRoute::Stream(sink.clone()),
                    };
                    let tag = RingTag {
                        id,
                        _socket: s.clone(),
                        route: to_client,
                    };
                    match ring.add(socket.as_raw_fd(), tag) {
                        Ok(key) => keys.push(key),
                        Err(e) => {
                            // The same socket, through a second descriptor, on the reactor: sends still leave from
                            // the first, and both close with the allocation.
                            tracing::warn!(error = %e, "relay socket not on the ring; it receives on the reactor");
                            match socket.try_clone().and_then(udp::register) {
                                Ok(fd) => {
                                    let reactor = Rc::new(RelaySocket {
                                        io: RelayIo::Reactor(fd),
                                        local: s.local,
                                    });
                                    tasks.push(spawn_local(relay_loop(self.clone(), id, reactor, route.clone())));
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "relay socket cannot receive; its peers' data is lost")
                                }
                            }
                        }
                    }
                }
                _ => tasks.push(spawn_local(relay_loop(self.clone(), id, s.clone(), route.clone()))),
            }
        }
        let ring = self.ring.clone().filter(|_| !keys.is_empty()).map(|ring| (ring, keys));
        let mut relays = self.relays.borrow_mut();
        if relays.len() <= id.slot() {
            relays.resize_with(id.slot() + 1, || None);
        }
        if let Some(slot) = relays.get_mut(id.slot()) {
            let stream = match &route {
                ClientRoute::Stream(sink) => Some(sink.clone()),
                ClientRoute::Udp { .. } => None,
            };
            *slot = Some(RelayEntry {
                id,
                stream,
                sockets,
                tasks,
                ring,
            });
        }
    }

    /// One peer datagram reaped from the ring: the header written in place; a UDP client's datagram is returned to
    /// be sent in a batch, a stream client's is queued on its connection here.
    fn forward_from_ring(
        &self,
        now: Instant,
        datagram: uring::Datagram<'_, RingTag>,
    ) -> Option<(Range<usize>, ToClient)> {
        let uring::Datagram { tag, peer, buf, len } = datagram;
        let fwd = self.server.borrow_mut().handle_peer(now, tag.id, peer, buf, len)?;
        match &tag.route {
            RingRoute::Udp(to) => Some((fwd.range, *to)),
            RingRoute::Stream(sink) => {
                if let Some(data) = buf.get(fwd.range) {
                    sink.push(data);
                }
                None
            }
        }
    }

    /// Sends reaped datagrams to their UDP clients: one `sendmmsg` per run of datagrams leaving the same listener.
    fn send_to_clients(&self, datas: &[&[u8]], outs: &[ToClient]) {
        let mut batch = [OutDatagram {
            data: &[],
            dst: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
            src_ip: None,
        }; BATCH];
        let mut start = 0;
        while let Some(first) = outs.get(start) {
            let run = outs
                .iter()
                .skip(start)
                .take_while(|o| o.listener == first.listener)
                .count();
            let mut k = 0;
            for (b, (data, to)) in batch.iter_mut().zip(datas.iter().zip(outs).skip(start).take(run)) {
                *b = OutDatagram {
                    data,
                    dst: to.client,
                    src_ip: to.src_ip,
                };
                k += 1;
            }
            if let Some(listener) = self.udp.get(first.listener) {
                udp::try_send_all(listener.socket.get_ref(), batch.get(..k).unwrap_or_default());
            }
            start += run;
        }
    }

    /// Binds relay sockets for an Allocate: a random port of the range (even, with port+1 held, for EVEN-PORT),
    /// on the configured address or the one the client reached.
    fn bind_relay(&self, request: &BindRequest) -> Option<(RelayBinding, [Option<Rc<RelaySocket>>; 2])> {
        let relay = &self.shared.config.relay;
        let mut binding = RelayBinding::default();
        let mut sockets: [Option<Rc<RelaySocket>>; 2] = [None, None];
        let mut missing_address = false;
        for family in [Family::V4, Family::V6] {
            if !*family.pick(&request.families) {
                continue;
            }
            let (binds, externals) = match family {
                Family::V4 => (&relay.bind_v4, &relay.external_v4),
                Family::V6 => (&relay.bind_v6, &relay.external_v6),
            };
            let reached = request.five_tuple.server.ip();
            let same_family = (family == Family::V4) == reached.is_ipv4();
            let client_side = match binds.is_empty() && (!same_family || reached.is_unspecified()) {
                true => match host_address(&self.listeners(), family, reached, || self.routed_v4()) {
                    Some(ip) => ip,
                    None => {
                        missing_address = true;
                        continue;
                    }
                },
                false => reached,
            };
            let (std_socket, held, external) = match request.reserved_relay {
                // The reserved socket is bound already; its address says which external one pairs with it.
                Some(addr) => {
                    let socket = self.shared.reserved().remove(&addr);
                    let ip = socket.as_ref().and_then(|s| s.local_addr().ok()).map(|a| a.ip());
                    let at = ip.and_then(|ip| binds.iter().position(|b| *b == ip)).unwrap_or(0);
                    (socket, None, externals.get(at).copied())
                }
                None => match self.bind_in_turn(binds, client_side, request.even_port, request.reserve_next) {
                    Some((socket, held, at)) => (Some(socket), held, externals.get(at).copied()),
                    None => (None, None, None),
                },
            };
            let Some(std_socket) = std_socket else { continue };
            let Ok(local) = std_socket.local_addr() else { continue };
            if let Err(e) = udp::configure_relay(&std_socket, request.dont_fragment) {
                tracing::debug!(error = %e, "relay socket options");
            }
            let io = if self.ring.is_some() {
                RelayIo::Ring(std_socket)
            } else {
                let Ok(socket) = udp::register(std_socket) else {
                    continue;
                };
                RelayIo::Reactor(socket)
            };
            let advertised = SocketAddr::new(external.unwrap_or(local.ip()), local.port());
            *family.pick_mut(&mut binding.relays) = Some(advertised);
            *family.pick_mut(&mut sockets) = Some(Rc::new(RelaySocket { io, local }));
            if let Some(held) = held {
                // Keyed by the address the token will name (the advertised one), which the core hands back.
                let reserved = SocketAddr::new(advertised.ip(), local.port().wrapping_add(1));
                self.shared.reserved().insert(reserved, held);
                binding.reserved = Some(reserved);
            }
        }
        // Nothing bound for want of an address of the family is not the same answer as a full port range.
        if sockets.iter().all(Option::is_none) && !missing_address {
            return None;
        }
        Some((binding, sockets))
    }

    /// Every listener's address, as configured.
    fn listeners(&self) -> [&[SocketAddr]; 4] {
        let c = &self.shared.config;
        [&c.udp, &c.tcp, &c.tls, &c.single]
    }

    /// The host's IPv4 source address toward the internet: a UDP `connect` to a documentation address (RFC 5737)
    /// picks it from the routing table and sends nothing. Kept for [`ROUTE_TTL`].
    fn routed_v4(&self) -> Option<IpAddr> {
        let now = Instant::now();
        if let Some((_, ip)) = self
            .routed_v4
            .get()
            .filter(|(at, _)| now.duration_since(*at) < ROUTE_TTL)
        {
            return ip;
        }
        let routed = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|socket| {
                socket.connect((std::net::Ipv4Addr::new(192, 0, 2, 1), 9))?;
                socket.local_addr()
            })
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        self.routed_v4.set(Some((now, routed)));
        routed
    }

    /// A relay socket on the configured addresses (none: `client_side`), starting at the next in turn and passing a
    /// full port range on to the next address; with the socket, the index of the address it took.
    fn bind_in_turn(
        &self,
        binds: &[IpAddr],
        client_side: IpAddr,
        even: bool,
        reserve_next: bool,
    ) -> Option<(std::net::UdpSocket, Option<std::net::UdpSocket>, usize)> {
        if binds.is_empty() {
            let (socket, held) = self.bind_in_range(client_side, even, reserve_next)?;
            return Some((socket, held, 0));
        }
        let first = self.next_relay_address.get();
        self.next_relay_address.set(first.wrapping_add(1));
        (0..binds.len()).find_map(|k| {
            let at = first.wrapping_add(k) % binds.len();
            let ip = *binds.get(at)?;
            let (socket, held) = self.bind_in_range(ip, even, reserve_next)?;
            Some((socket, held, at))
        })
    }

    /// A socket on a random port of the range; with `reserve_next`, an even port and the socket on port+1 too.
    fn bind_in_range(
        &self,
        ip: IpAddr,
        even: bool,
        reserve_next: bool,
    ) -> Option<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        let ports = &self.shared.config.relay.ports;
        let mut rng = self.rng.borrow_mut();
        for _ in 0..64 {
            let mut port = rng.gen_range(ports.clone());
            if even {
                port &= !1;
                if !ports.contains(&port) || (reserve_next && !ports.contains(&(port.wrapping_add(1)))) {
                    continue;
                }
            }
            let Ok(socket) = udp::bind(SocketAddr::new(ip, port), false) else {
                continue;
            };
            if reserve_next {
                let next = SocketAddr::new(ip, port.wrapping_add(1));
                let Ok(held) = udp::bind(next, false) else { continue };
                return Some((socket, Some(held)));
            }
            return Some((socket, None));
        }
        None
    }
}

/// Peer → client for one relay socket. The future holds no buffer: an idle allocation costs a socket and a task.
async fn relay_loop(worker: Rc<Worker>, id: AllocationId, relay: Rc<RelaySocket>, route: ClientRoute) {
    let RelayIo::Reactor(socket) = &relay.io else {
        return;
    };
    drain_forever(socket, || {
        let mut bufs = worker.buffers.borrow_mut();
        let Buffers {
            slots, metas, ranges, ..
        } = &mut *bufs;
        let n = udp::recv_batch(socket.get_ref(), slots, turn::PEER_HEADROOM, metas, false)?;
        let now = Instant::now();
        let mut count = 0;
        {
            let mut server = worker.server.borrow_mut();
            for (slot, meta) in slots.iter_mut().zip(metas.iter()).take(n) {
                if meta.len > MAX_DATAGRAM {
                    continue;
                }
                if let Some(fwd) = server.handle_peer(now, id, meta.addr, slot, meta.len) {
                    if let Some(r) = ranges.get_mut(count) {
                        *r = (fwd.range.start, fwd.range.end);
                        count += 1;
                    }
                }
            }
        }
        match &route {
            ClientRoute::Udp {
                listener,
                client,
                src_ip,
            } => {
                let mut out = [OutDatagram {
                    data: &[],
                    dst: *client,
                    src_ip: *src_ip,
                }; BATCH];
                let mut order = 0;
                for (slot, (start, end)) in slots.iter().zip(ranges.iter()).take(count) {
                    if let (Some(o), Some(data)) = (out.get_mut(order), slot.get(*start..*end)) {
                        o.data = data;
                        order += 1;
                    }
                }
                udp::try_send_all(listener.socket.get_ref(), out.get(..order).unwrap_or_default());
            }
            ClientRoute::Stream(sink) => {
                for (slot, (start, end)) in slots.iter().zip(ranges.iter()).take(count) {
                    if let Some(data) = slot.get(*start..*end) {
                        sink.push(data);
                    }
                }
            }
        }
        Ok(n)
    })
    .await
}

/// Peer → client for every relay socket on the worker's ring (`relay.io_uring`): one wake-up reaps the datagrams
/// of all of them (`crate::uring`). Readiness is cleared before reaping, so a completion posted meanwhile wakes the
/// task again; after [`FULL_BATCHES_PER_TURN`] full reaps the task yields, as `drain_forever` does.
async fn ring_loop(worker: Rc<Worker>, ring: Rc<Uring<RingTag>>) {
    loop {
        if ring.readable().await.is_err() {
            return;
        }
        let mut full = 0;
        loop {
            let now = Instant::now();
            let taken = ring.reap(
                |datagram| worker.forward_from_ring(now, datagram),
                |datas, outs| worker.send_to_clients(datas, outs),
            );
            coalesce::datagrams_handled(taken);
            if taken < uring::REAP {
                break;
            }
            full += 1;
            if full >= FULL_BATCHES_PER_TURN {
                full = 0;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// An address of `family` to bind a relay on when none is configured and the client reached us over the other
/// family (or a wildcard listener did not say which address): RFC 8656 §7.2 gives an Allocate without
/// REQUESTED-ADDRESS-FAMILY an IPv4 relay, and browsers never send it, so a client that reached us over IPv6 needs
/// one. A listener's own address of the family first (a loopback one for a client that reached a loopback address,
/// else another); for IPv4, else `routed` (the one this host sends from toward the internet); else any listener's.
/// `None`: no address of the family (440). An IPv6 relay stays opt-in (an IPv6 listener, or `relay.bind_v6`): a
/// client asks for one explicitly, and the host's routes alone do not say its IPv6 address is the one to offer.
fn host_address(
    listeners: &[&[SocketAddr]],
    family: Family,
    reached: IpAddr,
    routed: impl FnOnce() -> Option<IpAddr>,
) -> Option<IpAddr> {
    let listened = || {
        listeners
            .iter()
            .copied()
            .flatten()
            .map(SocketAddr::ip)
            .filter(|ip| (family == Family::V4) == ip.is_ipv4() && !ip.is_unspecified())
    };
    let near = listened().find(|ip| ip.is_loopback() == reached.is_loopback());
    near.or_else(|| {
        if family == Family::V6 {
            return None;
        }
        routed()
    })
    .or_else(|| listened().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Where the relay of the other family binds when none is configured: a listener's address of the family (a
    /// loopback one for a client on loopback), else for IPv4 the routed one, else any listener's; IPv6 never routed.
    #[test]
    fn the_other_family_s_relay_address_is_a_listener_s_then_the_routed_one() {
        let v4: Vec<SocketAddr> = vec!["127.0.0.1:3478".parse().unwrap(), "192.0.2.10:3478".parse().unwrap()];
        let v6: Vec<SocketAddr> = vec!["[::1]:3478".parse().unwrap()];
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap(), "[::]:3478".parse().unwrap()];
        let routed = || Some(ip("198.51.100.7"));
        let unused = || -> Option<IpAddr> { panic!("no route needed") };
        let both: [&[SocketAddr]; 2] = [&v4, &v6];
        assert_eq!(
            host_address(&both, Family::V4, ip("::1"), unused),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            host_address(&both, Family::V4, ip("2001:db8::5"), unused),
            Some(ip("192.0.2.10"))
        );
        assert_eq!(
            host_address(&[&wildcard], Family::V4, ip("2001:db8::5"), routed),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            host_address(&[&v6], Family::V4, ip("::1"), || None),
            None,
            "no IPv4 at all: 440"
        );
        let loopback_only: Vec<SocketAddr> = vec!["127.0.0.1:3478".parse().unwrap()];
        assert_eq!(
            host_address(&[&loopback_only], Family::V4, ip("2001:db8::5"), || None),
            Some(ip("127.0.0.1"))
        );
        // An IPv6 relay for an IPv4 client: an IPv6 listener's address, never a routed one.
        assert_eq!(
            host_address(&both, Family::V6, ip("127.0.0.1"), unused),
            Some(ip("::1"))
        );
        assert_eq!(host_address(&[&wildcard], Family::V6, ip("192.0.2.9"), unused), None);
    }
}
