//! The TURN server state machine.
//!
//! A packet enters through [`Server::handle_client`] (from a client, on a listener) or [`Server::handle_peer`] (from
//! a peer, on a relay socket) and leaves as the returned action: an answer written into the caller's buffer, or a
//! range of the caller's buffer to send elsewhere. Relay sockets are the caller's: an Allocate returns
//! [`ClientAction::BindRelay`], the caller binds, and reports back with [`Server::handle_relay_bound`]. Time is
//! always the caller's `now`; wall-clock seconds (for REST credential expiry) are derived from one
//! `(Instant, unix seconds)` pair given at construction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use rand::RngCore;
use stun::{
    attr, is_comprehension_required, Attribute, ChannelData, ChannelNumber, Class, IntegrityKey, Message,
    MessageWriter, Method, PacketKind, TransactionId, CHANNEL_DATA_HEADER_LEN, PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
};

use crate::auth::{Authenticator, CredentialError, Expiry, NonceState, PASSWORD_ALGORITHMS_VALUE};
use crate::config::{Config, NatDiscovery, QuotaExceeded, Quotas};
use crate::own::OwnAddresses;
use crate::reflection::ReflectionGuard;
use crate::source::Source;

type FastMap<K, V> = HashMap<K, V, RandomState>;

/// Bytes a caller leaves in front of a peer's payload so that the ChannelData header or Data indication header
/// is written in place: 20 (STUN header) + 24 (XOR-PEER-ADDRESS, IPv6) + 4 (DATA header).
pub const PEER_HEADROOM: usize = 48;
/// Bytes a caller leaves after a peer's payload for padding (ChannelData on streams, Data indications).
pub const PEER_TAILROOM: usize = 3;
/// RFC 5780 §7.6: the largest answer PADDING may grow a Binding answer to (the IPv6 minimum MTU); never more than
/// the request itself either.
pub const MAX_PADDED_ANSWER: usize = 1280;

/// RFC 8656 §3.1: the transport between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// The client's 5-tuple: what identifies an allocation (RFC 8656 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// A generation-checked handle to an allocation, so a relay socket left over from a freed allocation can never
/// feed a new one that reused its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocationId {
    index: u32,
    generation: u32,
}

impl AllocationId {
    /// A small dense index (reused after the allocation ends, with a new generation): callers keep per-allocation
    /// state in a `Vec` at this index instead of a map, and check the id on look-up.
    pub fn slot(&self) -> usize {
        self.index as usize
    }
}

/// Address families, as indices into per-family arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4 = 0,
    V6 = 1,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn from_stun(code: u8) -> Self {
        if code == 0x02 {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// The entry for this family in a per-family pair, indexed `[V4, V6]`.
    pub fn pick<T>(self, pair: &[T; 2]) -> &T {
        let [v4, v6] = pair;
        match self {
            Family::V4 => v4,
            Family::V6 => v6,
        }
    }

    pub fn pick_mut<T>(self, pair: &mut [T; 2]) -> &mut T {
        let [v4, v6] = pair;
        match self {
            Family::V4 => v4,
            Family::V6 => v6,
        }
    }

    fn stun_code(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }
}

/// What the caller binds for an Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindRequest {
    pub five_tuple: FiveTuple,
    /// Families to bind a relay socket for (index by [`Family`]).
    pub families: [bool; 2],
    /// EVEN-PORT: bind an even port; with `reserve_next`, also hold port+1 and report it.
    pub even_port: bool,
    pub reserve_next: bool,
    /// RESERVATION-TOKEN: use the socket held for this token instead of binding.
    pub reservation: Option<[u8; 8]>,
    /// The relay address the token reserved (the socket the caller held back for it).
    pub reserved_relay: Option<SocketAddr>,
    /// DONT-FRAGMENT: set DF on the relay socket.
    pub dont_fragment: bool,
}

/// What the caller bound for a [`BindRequest`]: the advertised relay address per family, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayBinding {
    pub relays: [Option<SocketAddr>; 2],
    /// The port+1 socket held for EVEN-PORT with R set.
    pub reserved: Option<SocketAddr>,
}

/// What to do with a packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Nothing to send (malformed, unauthenticated indication, no permission, …).
    Drop,
    /// Send `out[..len]` back on the same 5-tuple.
    Reply(usize),
    /// Send `out[..len]` from the UDP listener bound to `from` to `to`: a Binding answer that RFC 5780's
    /// CHANGE-REQUEST or RESPONSE-PORT sends elsewhere than back on the 5-tuple. `from` is always one of the
    /// configured [`crate::NatDiscovery::addresses`] and `to` is always the client's IP.
    ReplyFrom {
        len: usize,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// Send `packet[payload]` from the allocation's relay socket of the peer's family to `peer`.
    Relay {
        allocation: AllocationId,
        peer: SocketAddr,
        payload: Range<usize>,
    },
    /// Bind relay sockets, then call [`Server::handle_relay_bound`].
    BindRelay(BindRequest),
}

/// Where a peer's packet goes: `buf[range]` to the allocation's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerForward {
    pub five_tuple: FiveTuple,
    pub range: Range<usize>,
}

/// Things the caller must act on that no packet triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Close the allocation's relay sockets.
    AllocationClosed(AllocationId),
    /// Close the socket held for this reserved relay address (its token expired, or was redeemed by an Allocate
    /// that was then refused). The caller holds the socket; this core holds the token and its expiry.
    ReservationReleased(SocketAddr),
}

/// Counters for metrics; plain integers because each worker owns its server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub allocations: usize,
    pub relayed_to_peer_packets: u64,
    pub relayed_to_peer_bytes: u64,
    pub relayed_to_client_packets: u64,
    pub relayed_to_client_bytes: u64,
    pub dropped_packets: u64,
    pub malformed_packets: u64,
    pub auth_failures: u64,
}

struct Allocation {
    generation: u32,
    five_tuple: FiveTuple,
    username: String,
    expires: Instant,
    relays: [Option<SocketAddr>; 2],
    /// Permission expiry per peer IP (RFC 8656 §9: ports are ignored).
    permissions: FastMap<IpAddr, Instant>,
    /// Peer → bound channel; `expires` is min(channel, permission) so one look-up decides.
    channel_by_peer: FastMap<SocketAddr, ChannelBinding>,
    peer_by_channel: FastMap<ChannelNumber, SocketAddr>,
    bucket: TokenBucket,
}

#[derive(Debug, Clone, Copy)]
struct ChannelBinding {
    channel: ChannelNumber,
    channel_expires: Instant,
    expires: Instant,
}

/// Client→peer route of a bound channel, keyed by what a ChannelData packet carries.
#[derive(Debug, Clone, Copy)]
struct ChannelRoute {
    allocation: AllocationId,
    peer: SocketAddr,
    expires: Instant,
}

struct Pending {
    tid: TransactionId,
    username: String,
    auth: ResponseAuth,
    lifetime: Duration,
    requested: [bool; 2],
    /// Family refused by configuration, reported with ADDRESS-ERROR-CODE.
    refused_family: Option<Family>,
}

struct Reservation {
    relay: SocketAddr,
    expires: Instant,
}

/// RESERVATION-TOKEN → reserved relay address. Shared by workers; touched only by Allocate and expiry.
#[derive(Default)]
pub struct Reservations {
    tokens: std::sync::Mutex<HashMap<[u8; 8], Reservation>>,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reservations(..)")
    }
}

impl Reservations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], Reservation>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, token: [u8; 8], r: Reservation) {
        self.lock().insert(token, r);
    }

    fn take(&self, token: &[u8; 8]) -> Option<Reservation> {
        self.lock().remove(token)
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.lock().values().map(|r| r.expires).min()
    }

    /// Forgets expired tokens; returns the relay addresses they held.
    fn expire(&self, now: Instant) -> Vec<SocketAddr> {
        let mut expired = Vec::new();
        self.lock().retain(|_, r| {
            let keep = r.expires > now;
            if !keep {
                expired.push(r.relay);
            }
            keep
        });
        expired
    }
}

/// The key and algorithm a request authenticated with, to sign its response the same way.
#[derive(Clone)]
struct ResponseAuth {
    key: IntegrityKey,
    sha256: bool,
}

/// Per-allocation bandwidth cap (RFC 8656 §7.2 leaves the policy to the server).
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: u64,
    last: Instant,
}

/// Whether a request authenticated (integrity and nonce checked): its answer carries integrity, is cached, and is
/// not charged to the reflection guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Authenticated {
    Yes,
    No,
}

/// An error answer: code and reason phrase (RFC 8656 §18, RFC 8489 §14.8).
#[derive(Debug, Clone, Copy)]
struct Reject {
    code: u16,
    reason: &'static str,
}

const fn reject(code: u16, reason: &'static str) -> Reject {
    Reject { code, reason }
}

const BAD_REQUEST: Reject = reject(400, "Bad Request");
const FORBIDDEN: Reject = reject(403, "Forbidden");
const ALLOCATION_MISMATCH: Reject = reject(437, "Allocation Mismatch");
const WRONG_CREDENTIALS: Reject = reject(441, "Wrong Credentials");
const PEER_FAMILY_MISMATCH: Reject = reject(443, "Peer Address Family Mismatch");

pub struct Server<R = rand::rngs::StdRng> {
    config: Arc<Config>,
    auth: Arc<Authenticator>,
    quotas: Arc<Quotas>,
    rng: R,
    epoch: (Instant, u64),
    slots: Vec<Option<Allocation>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    by_five_tuple: FastMap<FiveTuple, AllocationId>,
    channel_routes: FastMap<(FiveTuple, ChannelNumber), ChannelRoute>,
    pending: FastMap<FiveTuple, Pending>,
    reservations: Arc<Reservations>,
    responses: ResponseCache,
    reflection: Arc<ReflectionGuard>,
    own: Arc<OwnAddresses>,
    /// This worker's copy of the host's addresses (generation, set), so a Send indication checks a local set.
    own_host: (u64, Arc<HashSet<IpAddr>>),
    events: VecDeque<Event>,
    stats: Stats,
}

impl<R> std::fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("allocations", &self.by_five_tuple.len())
            .finish_non_exhaustive()
    }
}

/// Answers to recent authenticated requests, so a retransmission is answered identically even when the first
/// answer changed state (a Refresh to 0, a ChannelBind).
struct ResponseCache {
    entries: FastMap<(FiveTuple, TransactionId), (Instant, Vec<u8>)>,
    order: VecDeque<(Instant, FiveTuple, TransactionId)>,
    capacity: usize,
}

/// RFC 8489 §6.2.1: a client stops retransmitting after 39.5 s by default.
const RETRANSMISSION_WINDOW: Duration = Duration::from_secs(40);

impl ResponseCache {
    fn get(&self, key: &(FiveTuple, TransactionId), now: Instant) -> Option<&[u8]> {
        self.entries
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < RETRANSMISSION_WINDOW)
            .map(|(_, b)| b.as_slice())
    }

    fn insert(&mut self, key: (FiveTuple, TransactionId), now: Instant, bytes: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some((_, ft, tid)) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&(ft, tid));
        }
        if self.entries.insert(key, (now, bytes.to_vec())).is_none() {
            self.order.push_back((now, key.0, key.1));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, ft, tid)) = self.order.front() {
            if now.saturating_duration_since(at) < RETRANSMISSION_WINDOW {
                break;
            }
            self.order.pop_front();
            self.entries.remove(&(ft, tid));
        }
    }
}

/// The attributes of a TURN request, collected in one pass.
#[derive(Default)]
struct Request<'a> {
    username: Option<&'a str>,
    userhash: Option<&'a [u8; 32]>,
    realm: Option<&'a str>,
    nonce: Option<&'a str>,
    password_algorithm: Option<u16>,
    password_algorithms: Option<&'a [u8]>,
    lifetime: Option<u32>,
    requested_transport: Option<u8>,
    requested_family: Option<u8>,
    additional_family: Option<u8>,
    even_port: Option<bool>,
    reservation_token: Option<[u8; 8]>,
    dont_fragment: bool,
    channel_number: Option<u16>,
    peers: [Option<SocketAddr>; 8],
    peer_count: usize,
    data: Option<(usize, usize)>,
    /// RFC 5780 (Binding only): CHANGE-REQUEST flags (change IP, change port), RESPONSE-PORT, PADDING length.
    change_request: Option<(bool, bool)>,
    response_port: Option<u16>,
    padding: Option<usize>,
    unknown: [u16; 8],
    unknown_count: usize,
    malformed: bool,
}

impl<'a> Request<'a> {
    fn collect(msg: &Message<'a>) -> Self {
        let mut req = Request::default();
        let tid = msg.transaction_id();
        let base = msg.as_bytes().as_ptr() as usize;
        for raw in msg.attributes() {
            let Ok(attribute) = Attribute::decode(raw, &tid) else {
                req.malformed = true;
                continue;
            };
            match attribute {
                Attribute::Username(u) => req.username = Some(u),
                Attribute::UserHash(h) => req.userhash = Some(h),
                Attribute::Realm(r) => req.realm = Some(r),
                Attribute::Nonce(n) => req.nonce = Some(n),
                Attribute::PasswordAlgorithm(p) => req.password_algorithm = Some(p.algorithm),
                Attribute::PasswordAlgorithms(list) => req.password_algorithms = Some(list),
                Attribute::Lifetime(l) => req.lifetime = Some(l),
                Attribute::RequestedTransport(t) => req.requested_transport = Some(t),
                Attribute::RequestedAddressFamily(f) => req.requested_family = Some(f),
                Attribute::AdditionalAddressFamily(f) => req.additional_family = Some(f),
                Attribute::EvenPort { reserve } => req.even_port = Some(reserve),
                Attribute::ReservationToken(t) => req.reservation_token = Some(t),
                Attribute::DontFragment => req.dont_fragment = true,
                Attribute::ChannelNumber(n) => req.channel_number = Some(n),
                Attribute::XorPeerAddress(p) => {
                    match req.peers.get_mut(req.peer_count) {
                        Some(slot) => *slot = Some(p),
                        None => req.malformed = true,
                    }
                    req.peer_count += 1;
                }
                Attribute::Data(d) => {
                    let start = d.as_ptr() as usize - base;
                    req.data = Some((start, start + d.len()));
                }
                Attribute::ChangeRequest { change_ip, change_port } => {
                    req.change_request = Some((change_ip, change_port));
                }
                Attribute::ResponsePort(p) => req.response_port = Some(p),
                Attribute::Padding(p) => req.padding = Some(p.len()),
                Attribute::Unknown(raw) if is_comprehension_required(raw.ty) => {
                    if let Some(slot) = req.unknown.get_mut(req.unknown_count) {
                        *slot = raw.ty;
                        req.unknown_count += 1;
                    }
                }
                _ => {}
            }
        }
        req
    }

    /// Records a comprehension-required attribute this server does not honour here, for a 420.
    fn refuse(&mut self, ty: u16) {
        if let Some(slot) = self.unknown.get_mut(self.unknown_count) {
            *slot = ty;
            self.unknown_count += 1;
        }
    }

    fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().take(self.peer_count).flatten().copied()
    }
}

impl<R: RngCore> Server<R> {
    /// `epoch` pairs an `Instant` with the unix time (seconds) at that instant.
    pub fn new(
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        quotas: Arc<Quotas>,
        rng: R,
        epoch: (Instant, u64),
    ) -> Self {
        let capacity = config.response_cache_entries;
        Self {
            config,
            auth,
            quotas,
            rng,
            epoch,
            slots: Vec::new(),
            generations: Vec::new(),
            free_slots: Vec::new(),
            by_five_tuple: FastMap::default(),
            channel_routes: FastMap::default(),
            pending: FastMap::default(),
            reservations: Arc::new(Reservations::default()),
            responses: ResponseCache {
                entries: FastMap::default(),
                order: VecDeque::new(),
                capacity,
            },
            reflection: Arc::new(ReflectionGuard::default()),
            own: Arc::new(OwnAddresses::default()),
            own_host: (0, Arc::new(HashSet::new())),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Shares the reflection guard's budgets with other workers: a spoofer's source ports are spread over all of
    /// them, and its budget must be one.
    pub fn with_shared_reflection_guard(mut self, guard: Arc<ReflectionGuard>) -> Self {
        self.reflection = guard;
        self
    }

    /// The server's own addresses and live relays, shared with the other workers and kept live by the caller.
    pub fn with_own_addresses(mut self, own: Arc<OwnAddresses>) -> Self {
        self.own_host = own.snapshot();
        self.own = own;
        self
    }

    /// Shares EVEN-PORT reservations with other workers: the Allocate that redeems a token may arrive on another
    /// 5-tuple, hence on another worker.
    pub fn with_shared_reservations(mut self, reservations: Arc<Reservations>) -> Self {
        self.reservations = reservations;
        self
    }

    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.by_five_tuple.len(),
            ..self.stats
        }
    }

    /// Whether this 5-tuple holds an allocation (a stream connection with one is not idle).
    pub fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.by_five_tuple.contains_key(five_tuple)
    }

    /// The next event the caller must act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Server::handle_timeout`] next has work; callers may also just call it once a second.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocations = self.slots.iter().flatten().map(|a| a.expires);
        allocations.chain(self.reservations.next_expiry()).min()
    }

    /// A packet from a client. `out` receives any answer; it should hold at least 1280 bytes.
    pub fn handle_client(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        packet: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        let Some(&first) = packet.first() else {
            return ClientAction::Drop;
        };
        match stun::classify(first) {
            PacketKind::ChannelData => self.handle_channel_data(now, five_tuple, packet),
            PacketKind::Stun => match Message::parse(packet) {
                Ok(msg) if msg.check_fingerprint().is_ok() => {
                    let (action, authenticated) = self.handle_stun(now, five_tuple, &msg, out);
                    self.guard_reflection(now, five_tuple, packet.len(), action, authenticated)
                }
                _ => {
                    self.stats.malformed_packets += 1;
                    ClientAction::Drop
                }
            },
            PacketKind::Other => {
                self.stats.malformed_packets += 1;
                ClientAction::Drop
            }
        }
    }

    /// A datagram from `peer` on one of `allocation`'s relay sockets, at `buf[PEER_HEADROOM..][..payload_len]`.
    /// Writes the ChannelData or Data indication header in place and says which bytes go to which client.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Option<PeerForward> {
        let config = &self.config;
        let slot = self.slots.get_mut(allocation.index as usize).and_then(Option::as_mut);
        let Some(alloc) = slot.filter(|a| a.generation == allocation.generation) else {
            self.stats.dropped_packets += 1;
            return None;
        };
        let end = PEER_HEADROOM + payload_len;
        if alloc.expires <= now || buf.len() < end + PEER_TAILROOM || !alloc.bucket_take(now, payload_len, config) {
            self.stats.dropped_packets += 1;
            return None;
        }
        let five_tuple = alloc.five_tuple;
        if let Some(binding) = alloc.channel_by_peer.get(&peer).filter(|b| b.expires > now) {
            // RFC 8656 §12.5: ChannelData header in front; on streams, pad to a multiple of four.
            let channel = binding.channel;
            let Ok(len) = u16::try_from(payload_len) else {
                return None;
            };
            let start = PEER_HEADROOM - CHANNEL_DATA_HEADER_LEN;
            let header: &mut [u8; CHANNEL_DATA_HEADER_LEN] = buf.get_mut(start..PEER_HEADROOM)?.try_into().ok()?;
            ChannelData::write_header(header, channel, len);
            let mut stop = end;
            if five_tuple.transport.is_stream() {
                stop = end.next_multiple_of(4);
                buf.get_mut(end..stop)?.fill(0);
            }
            self.stats.relayed_to_client_packets += 1;
            self.stats.relayed_to_client_bytes += payload_len as u64;
            return Some(PeerForward {
                five_tuple,
                range: start..stop,
            });
        }
        if alloc.permissions.get(&peer.ip()).is_none_or(|exp| *exp <= now) {
            self.stats.dropped_packets += 1;
            return None;
        }
        // RFC 8656 §11.3: a Data indication, its header written backwards from the payload.
        let header_len = stun::HEADER_LEN + if peer.is_ipv4() { 12 } else { 24 } + 4;
        let start = PEER_HEADROOM - header_len;
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        let window = buf.get_mut(start..end + PEER_TAILROOM)?;
        let mut w = MessageWriter::new(window, Method::DATA, Class::Indication, TransactionId::new(id)).ok()?;
        w.add(&Attribute::XorPeerAddress(peer)).ok()?;
        // The payload is already in place after the DATA header: write only type, length and padding.
        w.with_value(attr::DATA, payload_len, |_| {}).ok()?;
        let len = w.finish();
        self.stats.relayed_to_client_packets += 1;
        self.stats.relayed_to_client_bytes += payload_len as u64;
        Some(PeerForward {
            five_tuple,
            range: start..start + len,
        })
    }

    /// The caller bound (or failed to bind) the relay for a pending Allocate: `None` when no port could be bound,
    /// a binding without addresses when the host has no address of the requested family. Returns the allocation (if created)
    /// and the length of the answer written into `out` for the client, if any is due.
    pub fn handle_relay_bound(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        result: Option<RelayBinding>,
        out: &mut [u8],
    ) -> (Option<AllocationId>, Option<usize>) {
        let Some(pending) = self.pending.remove(&five_tuple) else {
            return (None, None);
        };
        let bound = |b: &RelayBinding| {
            pending
                .requested
                .iter()
                .zip(b.relays)
                .any(|(wanted, got)| *wanted && got.is_some())
        };
        // `Some` with nothing bound: the caller has no address of the requested family (440); `None`: no port (508).
        let refusal = match &result {
            Some(b) if !bound(b) => Some(reject(440, "Address Family not Supported")),
            None => Some(reject(508, "Insufficient Capacity")),
            Some(_) => None,
        };
        let (Some(binding), None) = (result, refusal) else {
            self.quotas
                .release(&pending.username, Source::of(five_tuple.client.ip()));
            let len = self.write_error(
                out,
                Method::ALLOCATE,
                pending.tid,
                refusal.unwrap_or(reject(508, "Insufficient Capacity")),
                Some(&pending.auth),
                |_| Ok(()),
            );
            if let Some(len) = len {
                self.responses
                    .insert((five_tuple, pending.tid), now, out.get(..len).unwrap_or_default());
            }
            return (None, len);
        };
        let reservation_token = binding.reserved.map(|relay| {
            let mut token = [0u8; 8];
            self.rng.fill_bytes(&mut token);
            self.reservations.insert(
                token,
                Reservation {
                    relay,
                    expires: now + self.config.reservation_lifetime,
                },
            );
            token
        });
        let id = self.insert_allocation(Allocation {
            generation: 0,
            five_tuple,
            username: pending.username,
            expires: now + pending.lifetime,
            relays: binding.relays,
            permissions: FastMap::default(),
            channel_by_peer: FastMap::default(),
            peer_by_channel: FastMap::default(),
            bucket: TokenBucket {
                tokens: self.config.bandwidth_per_allocation,
                last: now,
            },
        });
        // A family asked for but not bound is reported, not fatal (RFC 8656 §7.2, dual allocation).
        let missing = pending
            .requested
            .iter()
            .zip(binding.relays)
            .position(|(wanted, got)| *wanted && got.is_none())
            .map(|i| if i == 0 { Family::V4 } else { Family::V6 })
            .or(pending.refused_family);
        let lifetime = pending.lifetime.as_secs() as u32;
        let len = self.write_success(out, Method::ALLOCATE, pending.tid, &pending.auth, |w| {
            for relay in binding.relays.iter().flatten() {
                w.add(&Attribute::XorRelayedAddress(*relay))?;
            }
            w.add(&Attribute::Lifetime(lifetime))?;
            if let Some(token) = reservation_token {
                w.add(&Attribute::ReservationToken(token))?;
            }
            if let Some(family) = missing {
                w.add(&Attribute::AddressErrorCode {
                    family: family.stun_code(),
                    code: 440,
                    reason: "Address Family not Supported",
                })?;
            }
            w.add(&Attribute::XorMappedAddress(five_tuple.client))?;
            Ok(())
        });
        if let Some(len) = len {
            self.responses
                .insert((five_tuple, pending.tid), now, out.get(..len).unwrap_or_default());
        }
        (Some(id), len)
    }

    /// A stream transport's connection closed: RFC 8656 §7 ties the allocation to it.
    pub fn handle_connection_closed(&mut self, five_tuple: FiveTuple) {
        if let Some(pending) = self.pending.remove(&five_tuple) {
            self.quotas
                .release(&pending.username, Source::of(five_tuple.client.ip()));
        }
        if let Some(id) = self.by_five_tuple.get(&five_tuple).copied() {
            self.remove_allocation(id);
        }
    }

    /// Expires allocations, permissions, channels, reservations and cached answers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.refresh_own_addresses();
        let expired: Vec<AllocationId> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let a = slot.as_ref()?;
                (a.expires <= now).then_some(AllocationId {
                    index: index as u32,
                    generation: a.generation,
                })
            })
            .collect();
        for id in expired {
            self.remove_allocation(id);
        }
        for alloc in self.slots.iter_mut().flatten() {
            alloc.permissions.retain(|_, exp| *exp > now);
            let five_tuple = alloc.five_tuple;
            let routes = &mut self.channel_routes;
            let peer_by_channel = &mut alloc.peer_by_channel;
            alloc.channel_by_peer.retain(|_, b| {
                let keep = b.channel_expires > now;
                if !keep {
                    routes.remove(&(five_tuple, b.channel));
                    peer_by_channel.remove(&b.channel);
                }
                keep
            });
        }
        for relay in self.reservations.expire(now) {
            self.events.push_back(Event::ReservationReleased(relay));
        }
        self.responses.expire(now);
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    fn allocation_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        self.slots
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|a| a.generation == id.generation)
    }

    fn insert_allocation(&mut self, mut alloc: Allocation) -> AllocationId {
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self
            .generations
            .get(index as usize)
            .copied()
            .unwrap_or(0)
            .wrapping_add(1);
        if let Some(g) = self.generations.get_mut(index as usize) {
            *g = generation;
        }
        alloc.generation = generation;
        let id = AllocationId { index, generation };
        self.by_five_tuple.insert(alloc.five_tuple, id);
        for relay in alloc.relays.iter().flatten() {
            self.own.add_relay(*relay);
        }
        if let Some(slot) = self.slots.get_mut(index as usize) {
            *slot = Some(alloc);
        }
        id
    }

    fn remove_allocation(&mut self, id: AllocationId) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|a| a.generation != id.generation) {
            return;
        }
        let Some(alloc) = slot.take() else { return };
        self.free_slots.push(id.index);
        self.by_five_tuple.remove(&alloc.five_tuple);
        for relay in alloc.relays.iter().flatten() {
            self.own.remove_relay(*relay);
        }
        for channel in alloc.peer_by_channel.keys() {
            self.channel_routes.remove(&(alloc.five_tuple, *channel));
        }
        self.quotas
            .release(&alloc.username, Source::of(alloc.five_tuple.client.ip()));
        self.events.push_back(Event::AllocationClosed(id));
    }

    /// RFC 8656 §12.6: ChannelData from the client goes to the bound peer, or is dropped.
    fn handle_channel_data(&mut self, now: Instant, five_tuple: FiveTuple, packet: &[u8]) -> ClientAction {
        let Ok(data) = ChannelData::parse(packet) else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        let Some(route) = self.channel_routes.get(&(five_tuple, data.channel)).copied() else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        let config = &self.config;
        let Some(alloc) = self
            .slots
            .get_mut(route.allocation.index as usize)
            .and_then(Option::as_mut)
        else {
            return ClientAction::Drop;
        };
        if route.expires <= now || alloc.expires <= now || !alloc.bucket_take(now, data.payload.len(), config) {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        }
        self.stats.relayed_to_peer_packets += 1;
        self.stats.relayed_to_peer_bytes += data.payload.len() as u64;
        ClientAction::Relay {
            allocation: route.allocation,
            peer: route.peer,
            payload: CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + data.payload.len(),
        }
    }

    /// Charges an unauthenticated UDP answer's excess over its request to the source's reflection budget; drops it
    /// when the budget is spent. Answers that carry integrity (authenticated) and stream transports are free; an
    /// authenticated UDP request proves its source (it answered our nonce).
    fn guard_reflection(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        request_len: usize,
        action: ClientAction,
        authenticated: Authenticated,
    ) -> ClientAction {
        let rate = self.config.reflection_bytes_per_second;
        if rate == 0 || five_tuple.transport.is_stream() {
            return action;
        }
        let source = Source::of(five_tuple.client.ip());
        if authenticated == Authenticated::Yes {
            self.reflection.prove(source, now);
            return action;
        }
        let len = match &action {
            ClientAction::Reply(len) => *len,
            ClientAction::ReplyFrom { len, .. } => *len,
            _ => return action,
        };
        if len <= request_len || self.reflection.allow(source, len - request_len, rate, now) {
            action
        } else {
            self.stats.dropped_packets += 1;
            ClientAction::Drop
        }
    }

    fn handle_stun(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> (ClientAction, Authenticated) {
        match (msg.class(), msg.method()) {
            (Class::Request, Method::BINDING) => (self.handle_binding(five_tuple, msg, out), Authenticated::No),
            (Class::Request, Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND) => {
                if let Some(cached) = self.responses.get(&(five_tuple, msg.transaction_id()), now) {
                    let action = match out.get_mut(..cached.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(cached);
                            ClientAction::Reply(cached.len())
                        }
                        None => ClientAction::Drop,
                    };
                    return (action, Authenticated::Yes);
                }
                let (action, authenticated) = self.handle_turn_request(now, five_tuple, msg, out);
                // Only authenticated answers are cached: 401/438 are cheap to recompute, and caching them would let a
                // stranger fill the cache.
                if let (ClientAction::Reply(len), Authenticated::Yes) = (&action, authenticated) {
                    self.responses.insert(
                        (five_tuple, msg.transaction_id()),
                        now,
                        out.get(..*len).unwrap_or_default(),
                    );
                }
                (action, authenticated)
            }
            (Class::Request, _) => {
                let tid = msg.transaction_id();
                let action = self
                    .write_error(out, msg.method(), tid, BAD_REQUEST, None, |_| Ok(()))
                    .map_or(ClientAction::Drop, ClientAction::Reply);
                (action, Authenticated::No)
            }
            (Class::Indication, Method::SEND) => (self.handle_send(now, five_tuple, msg), Authenticated::No),
            _ => (ClientAction::Drop, Authenticated::No),
        }
    }

    /// RFC 8489 §7.3: XOR-MAPPED-ADDRESS (MAPPED-ADDRESS for RFC 3489 clients). Without RFC 5780 configured that
    /// is all, so the answer is as small as a Binding answer can be, and CHANGE-REQUEST, RESPONSE-PORT and PADDING
    /// (all comprehension-required) get 420 like any attribute we do not understand.
    ///
    /// RFC 5780 §6 (configured, on UDP, at one of its addresses): the answer leaves from the address CHANGE-REQUEST
    /// asks for and goes to the client's IP at RESPONSE-PORT, carries RESPONSE-ORIGIN and — only with a second IP
    /// and a second port — OTHER-ADDRESS, and is padded for PADDING within [`MAX_PADDED_ANSWER`].
    fn handle_binding(&mut self, five_tuple: FiveTuple, msg: &Message<'_>, out: &mut [u8]) -> ClientAction {
        let mut req = Request::collect(msg);
        let tid = msg.transaction_id();
        let discovery = self
            .config
            .nat_discovery
            .filter(|d| five_tuple.transport == Transport::Udp && d.serves(five_tuple.server));
        let (change_ip, change_port) = req.change_request.unwrap_or_default();
        match discovery {
            None => {
                // RFC 5780 §7.2, §7.5, §7.6: a server without RFC 5780 answers these with 420. Checked on the raw
                // attributes so that a malformed one is refused too rather than ignored.
                for ty in [attr::CHANGE_REQUEST, attr::RESPONSE_PORT, attr::PADDING] {
                    if msg.get(ty).is_some() {
                        req.refuse(ty);
                    }
                }
            }
            // RFC 5780 §4.1 needs two IPs for change-IP and two ports for change-port. A change we cannot make is
            // refused (420 naming CHANGE-REQUEST) rather than answered from the wrong address — which would fake
            // endpoint-independent filtering — or not answered at all, which would fake a filtering NAT.
            Some(d) if (change_ip && !d.can_change_ip()) || (change_port && !d.can_change_port()) => {
                req.refuse(attr::CHANGE_REQUEST);
            }
            Some(_) => {}
        }
        if req.unknown_count > 0 {
            return self.reply_unknown(out, msg, &req);
        }
        let Some(discovery) = discovery else {
            return self
                .write_binding(out, five_tuple, msg, None, None)
                .map_or(ClientAction::Drop, ClientAction::Reply);
        };
        // With RFC 5780 on, a request we cannot read fully is not guessed at: a misread CHANGE-REQUEST or
        // RESPONSE-PORT would mislead the client's verdict.
        if req.malformed || req.response_port == Some(0) {
            return self
                .write_error(out, Method::BINDING, tid, BAD_REQUEST, None, |_| Ok(()))
                .map_or(ClientAction::Drop, ClientAction::Reply);
        }
        let from = discovery.changed(five_tuple.server, change_ip, change_port);
        // RFC 5780 §7.5: RESPONSE-PORT changes the port only, never the IP.
        let to = req
            .response_port
            .map_or(five_tuple.client, |port| SocketAddr::new(five_tuple.client.ip(), port));
        // PADDING never amplifies: the answer is at most as large as the request, and at most 1280 bytes.
        let padding = req
            .padding
            .map(|wanted| (wanted, msg.as_bytes().len().min(MAX_PADDED_ANSWER)));
        let Some(len) = self.write_binding(out, five_tuple, msg, Some((discovery, from)), padding) else {
            return ClientAction::Drop;
        };
        if from == five_tuple.server && to == five_tuple.client {
            ClientAction::Reply(len)
        } else {
            ClientAction::ReplyFrom { len, from, to }
        }
    }

    /// Writes a Binding success answer. `discovery` adds the RFC 5780 addresses for an answer leaving from `from`;
    /// `padding` (the request's PADDING length, the largest answer allowed) adds PADDING.
    fn write_binding(
        &self,
        out: &mut [u8],
        five_tuple: FiveTuple,
        msg: &Message<'_>,
        discovery: Option<(NatDiscovery, SocketAddr)>,
        padding: Option<(usize, usize)>,
    ) -> Option<usize> {
        let fingerprint = msg.has_fingerprint();
        let rfc3489 = msg.is_rfc3489();
        let mut w = MessageWriter::new(out, Method::BINDING, Class::Success, msg.transaction_id()).ok()?;
        if rfc3489 {
            w.add(&Attribute::MappedAddress(five_tuple.client)).ok()?;
        } else {
            w.add(&Attribute::XorMappedAddress(five_tuple.client)).ok()?;
        }
        if let Some((d, from)) = discovery {
            // RFC 5780 §7.3-7.4; an RFC 3489 client reads the same facts from SOURCE-ADDRESS and CHANGED-ADDRESS.
            let other = d.is_complete().then(|| d.changed(five_tuple.server, true, true));
            if rfc3489 {
                w.add(&Attribute::LegacyAddress(attr::SOURCE_ADDRESS, from)).ok()?;
                if let Some(other) = other {
                    w.add(&Attribute::LegacyAddress(attr::CHANGED_ADDRESS, other)).ok()?;
                }
            } else {
                w.add(&Attribute::ResponseOrigin(from)).ok()?;
                if let Some(other) = other {
                    w.add(&Attribute::OtherAddress(other)).ok()?;
                }
            }
        }
        if let Some((wanted, largest)) = padding {
            // RFC 5780 §7.6: PADDING as long as the request's, cut to the budget (whole words, FINGERPRINT after).
            let trailer = if fingerprint { 8 } else { 0 };
            let room = largest.saturating_sub(w.len() + 4 + trailer) & !3;
            let n = wanted.next_multiple_of(4).min(room);
            if n > 0 {
                w.with_value(attr::PADDING, n, |v| v.fill(0)).ok()?;
            }
        }
        if fingerprint {
            w.fingerprint().ok()?;
        }
        Some(w.finish())
    }

    /// RFC 8656 §11.2: Send indications are relayed if a permission exists, else silently dropped.
    fn handle_send(&mut self, now: Instant, five_tuple: FiveTuple, msg: &Message<'_>) -> ClientAction {
        let Some(id) = self.by_five_tuple.get(&five_tuple).copied() else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        let req = Request::collect(msg);
        let (Some(peer), Some((start, end))) = (req.peers().next(), req.data) else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        let config = &self.config;
        let Some(alloc) = self.slots.get_mut(id.index as usize).and_then(Option::as_mut) else {
            return ClientAction::Drop;
        };
        let permitted = alloc.permissions.get(&peer.ip()).is_some_and(|exp| *exp > now);
        if !permitted || alloc.expires <= now || !alloc.bucket_take(now, end - start, config) {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        }
        // A permission to the server's own address covers only live relays (relay-to-relay), port by port.
        if self.is_own_peer_refused(peer) {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        }
        self.stats.relayed_to_peer_packets += 1;
        self.stats.relayed_to_peer_bytes += (end - start) as u64;
        ClientAction::Relay {
            allocation: id,
            peer,
            payload: start..end,
        }
    }

    /// Authenticates, then dispatches by method.
    fn handle_turn_request(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> (ClientAction, Authenticated) {
        let req = Request::collect(msg);
        let tid = msg.transaction_id();
        let method = msg.method();
        if req.unknown_count > 0 {
            return (self.reply_unknown(out, msg, &req), Authenticated::No);
        }
        let (username, auth) = match self.authenticate(now, five_tuple, msg, &req) {
            Ok(ok) => ok,
            Err(challenge) => {
                self.stats.auth_failures += 1;
                let reply = self.write_challenge(out, method, tid, five_tuple, now, challenge);
                return (reply.map_or(ClientAction::Drop, ClientAction::Reply), Authenticated::No);
            }
        };
        if req.malformed {
            let reply = self.write_error(out, method, tid, BAD_REQUEST, Some(&auth), |_| Ok(()));
            return (
                reply.map_or(ClientAction::Drop, ClientAction::Reply),
                Authenticated::Yes,
            );
        }
        let outcome = match method {
            Method::ALLOCATE => self.handle_allocate(now, five_tuple, &req, tid, username, auth.clone()),
            Method::REFRESH => self.handle_refresh(now, five_tuple, &req, &username),
            Method::CREATE_PERMISSION => self.handle_create_permission(now, five_tuple, &req, &username),
            _ => self.handle_channel_bind(now, five_tuple, &req, &username),
        };
        let reply = match outcome {
            Outcome::Bind(request) => return (ClientAction::BindRelay(request), Authenticated::Yes),
            Outcome::Ok(lifetime) => self.write_success(out, method, tid, &auth, |w| {
                if let Some(lifetime) = lifetime {
                    w.add(&Attribute::Lifetime(lifetime))?;
                }
                Ok(())
            }),
            Outcome::Err(r) => self.write_error(out, method, tid, r, Some(&auth), |_| Ok(())),
        };
        (
            reply.map_or(ClientAction::Drop, ClientAction::Reply),
            Authenticated::Yes,
        )
    }

    /// RFC 8489 §9.2.4, in its order: integrity present, attributes present, algorithms not bid down, user known,
    /// integrity correct, nonce fresh.
    fn authenticate(
        &self,
        now: Instant,
        five_tuple: FiveTuple,
        msg: &Message<'_>,
        req: &Request<'_>,
    ) -> Result<(String, ResponseAuth), Challenge> {
        if !msg.has_message_integrity() && !msg.has_message_integrity_sha256() {
            return Err(Challenge::Unauthorized);
        }
        let (Some(realm), Some(nonce)) = (req.realm, req.nonce) else {
            return Err(Challenge::BadRequest);
        };
        let username = match (req.username, req.userhash) {
            (Some(name), _) => name,
            (None, Some(hash)) => self.auth.username_for_hash(hash).ok_or(Challenge::Unauthorized)?,
            (None, None) => return Err(Challenge::BadRequest),
        };
        let algorithm = match (req.password_algorithm, req.password_algorithms) {
            (None, None) => {
                if msg.has_message_integrity_sha256() && !msg.has_message_integrity() {
                    PASSWORD_ALGORITHM_SHA256
                } else {
                    PASSWORD_ALGORITHM_MD5
                }
            }
            (Some(alg), Some(list)) => {
                // Bid-down protection: the list must be the one we sent.
                let known = alg == PASSWORD_ALGORITHM_MD5 || alg == PASSWORD_ALGORITHM_SHA256;
                if list != PASSWORD_ALGORITHMS_VALUE || !known {
                    return Err(Challenge::BadRequest);
                }
                alg
            }
            _ => return Err(Challenge::BadRequest),
        };
        if realm != self.auth.realm() {
            return Err(Challenge::Unauthorized);
        }
        // RFC 8656 leaves credential expiry to the server: an allocation outlives its credential (see `Expiry`).
        let held = msg.method() != Method::ALLOCATE
            && self
                .by_five_tuple
                .get(&five_tuple)
                .and_then(|id| self.slots.get(id.index as usize)?.as_ref())
                .is_some_and(|a| a.username == username && a.expires > now);
        let expiry_rule = if held { Expiry::HeldAllocation } else { Expiry::Enforce };
        let keys = match self.auth.keys(username, algorithm, self.unix_now(now), expiry_rule) {
            Ok(keys) => keys,
            Err(CredentialError::UnknownUser | CredentialError::Expired | CredentialError::TooLong) => {
                return Err(Challenge::Unauthorized)
            }
        };
        let Some(key) = keys.into_iter().find(|k| msg.verify_integrity(k)) else {
            return Err(Challenge::Unauthorized);
        };
        if self.auth.check_nonce(nonce, self.unix_now(now), five_tuple.client.ip()) == NonceState::Stale {
            return Err(Challenge::StaleNonce);
        }
        let sha256 = msg.has_message_integrity_sha256();
        Ok((username.to_owned(), ResponseAuth { key, sha256 }))
    }

    /// RFC 8656 §7.2.
    fn handle_allocate(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        req: &Request<'_>,
        tid: TransactionId,
        username: String,
        auth: ResponseAuth,
    ) -> Outcome {
        // A retransmitted Allocate was answered from the response cache before we got here; anything else on a
        // 5-tuple that already has (or is binding) an allocation is a mismatch.
        self.sweep_if_expired(now, five_tuple);
        if self.by_five_tuple.contains_key(&five_tuple) || self.pending.contains_key(&five_tuple) {
            return Outcome::Err(ALLOCATION_MISMATCH);
        }
        match req.requested_transport {
            None => return Outcome::Err(BAD_REQUEST),
            Some(17) => {}
            Some(_) => return Outcome::Err(reject(442, "Unsupported Transport Protocol")),
        }
        if req.reservation_token.is_some()
            && (req.even_port.is_some() || req.requested_family.is_some() || req.additional_family.is_some())
        {
            return Outcome::Err(BAD_REQUEST);
        }
        if req.requested_family.is_some() && req.additional_family.is_some() {
            return Outcome::Err(BAD_REQUEST);
        }
        if req.additional_family.is_some_and(|f| f != 0x02) {
            return Outcome::Err(BAD_REQUEST);
        }
        let mut requested = [false; 2];
        let mut refused_family = None;
        let primary = Family::from_stun(req.requested_family.unwrap_or(0x01));
        let offered = [self.config.relay_ipv4, self.config.relay_ipv6];
        if !*primary.pick(&offered) {
            return Outcome::Err(reject(440, "Address Family not Supported"));
        }
        *primary.pick_mut(&mut requested) = true;
        if req.additional_family.is_some() {
            if *Family::V6.pick(&offered) {
                *Family::V6.pick_mut(&mut requested) = true;
            } else {
                refused_family = Some(Family::V6);
            }
        }
        let mut reservation = None;
        let mut reserved_relay = None;
        if let Some(token) = req.reservation_token {
            match self.reservations.take(&token) {
                Some(r) if r.expires > now => {
                    requested = [false; 2];
                    *Family::of(&r.relay).pick_mut(&mut requested) = true;
                    reservation = Some(token);
                    reserved_relay = Some(r.relay);
                }
                _ => return Outcome::Err(reject(508, "Insufficient Capacity")),
            }
        }
        let acquired = self.quotas.acquire(&username, Source::of(five_tuple.client.ip()));
        if let (Err(_), Some(relay)) = (acquired, reserved_relay) {
            // The token was redeemed and the Allocate refused: the held socket is no one's any more.
            self.events.push_back(Event::ReservationReleased(relay));
        }
        match acquired {
            Ok(()) => {}
            // RFC 8656 §18: 486 means "no more allocations using this username" (or from this source); a
            // server-wide limit is capacity.
            Err(QuotaExceeded::User | QuotaExceeded::Source) => {
                return Outcome::Err(reject(486, "Allocation Quota Reached"))
            }
            Err(QuotaExceeded::Total) => return Outcome::Err(reject(508, "Insufficient Capacity")),
        }
        let lifetime = self.clamp_lifetime(req.lifetime);
        self.pending.insert(
            five_tuple,
            Pending {
                tid,
                username,
                auth,
                lifetime,
                requested,
                refused_family,
            },
        );
        Outcome::Bind(BindRequest {
            five_tuple,
            families: requested,
            even_port: req.even_port.is_some(),
            reserve_next: req.even_port == Some(true),
            reservation,
            reserved_relay,
            dont_fragment: req.dont_fragment,
        })
    }

    /// RFC 8656 §7.2: min(requested, max), but never below the default.
    fn clamp_lifetime(&self, requested: Option<u32>) -> Duration {
        let requested = requested.map_or(self.config.default_lifetime, |s| Duration::from_secs(u64::from(s)));
        requested
            .min(self.config.max_lifetime)
            .max(self.config.default_lifetime.min(self.config.max_lifetime))
    }

    /// Finds the allocation of this 5-tuple and checks that the same user owns it (RFC 8656 §5: 441).
    fn owned_allocation(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        username: &str,
    ) -> Result<AllocationId, Reject> {
        self.sweep_if_expired(now, five_tuple);
        let id = *self.by_five_tuple.get(&five_tuple).ok_or(ALLOCATION_MISMATCH)?;
        let alloc = self.allocation_mut(id).ok_or(ALLOCATION_MISMATCH)?;
        if alloc.username != username {
            return Err(WRONG_CREDENTIALS);
        }
        Ok(id)
    }

    /// An allocation past its lifetime is gone (RFC 8656 §7), whether or not `handle_timeout` has run yet: a request
    /// must neither revive it (Refresh) nor be refused because of it (Allocate).
    fn sweep_if_expired(&mut self, now: Instant, five_tuple: FiveTuple) {
        let Some(&id) = self.by_five_tuple.get(&five_tuple) else {
            return;
        };
        if self.allocation_mut(id).is_some_and(|a| a.expires <= now) {
            self.remove_allocation(id);
        }
    }

    /// RFC 8656 §7.3: lifetime 0 deletes; otherwise min(requested, max), but never below the default.
    fn handle_refresh(&mut self, now: Instant, five_tuple: FiveTuple, req: &Request<'_>, username: &str) -> Outcome {
        let id = match self.owned_allocation(now, five_tuple, username) {
            Ok(id) => id,
            Err(r) => return Outcome::Err(r),
        };
        let lifetime = match req.lifetime {
            Some(0) => Duration::ZERO,
            requested => self.clamp_lifetime(requested),
        };
        let Some(alloc) = self.allocation_mut(id) else {
            return Outcome::Err(ALLOCATION_MISMATCH);
        };
        if let Some(family) = req.requested_family {
            if Family::from_stun(family).pick(&alloc.relays).is_none() {
                return Outcome::Err(PEER_FAMILY_MISMATCH);
            }
        }
        if lifetime.is_zero() {
            self.remove_allocation(id);
            return Outcome::Ok(Some(0));
        }
        alloc.expires = now + lifetime;
        Outcome::Ok(Some(lifetime.as_secs() as u32))
    }

    /// RFC 8656 §9.2: every XOR-PEER-ADDRESS is checked before any permission is installed.
    fn handle_create_permission(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        req: &Request<'_>,
        username: &str,
    ) -> Outcome {
        let id = match self.owned_allocation(now, five_tuple, username) {
            Ok(id) => id,
            Err(r) => return Outcome::Err(r),
        };
        if req.peer_count == 0 {
            return Outcome::Err(BAD_REQUEST);
        }
        for peer in req.peers() {
            if let Err(r) = self.check_peer(id, peer) {
                return Outcome::Err(r);
            }
        }
        let expires = now + self.config.permission_lifetime;
        let limit = self.config.max_permissions_per_allocation;
        let Some(alloc) = self.allocation_mut(id) else {
            return Outcome::Err(ALLOCATION_MISMATCH);
        };
        let new = req.peers().filter(|p| !alloc.permissions.contains_key(&p.ip())).count();
        if alloc.permissions.len() + new > limit {
            return Outcome::Err(reject(508, "Insufficient Capacity"));
        }
        for peer in req.peers() {
            alloc.permissions.insert(peer.ip(), expires);
        }
        self.sync_channel_expiry(id, req.peers().map(|p| p.ip()));
        Outcome::Ok(None)
    }

    /// RFC 8656 §12.2: binds or refreshes a channel, and installs or refreshes the peer's permission.
    fn handle_channel_bind(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        req: &Request<'_>,
        username: &str,
    ) -> Outcome {
        let id = match self.owned_allocation(now, five_tuple, username) {
            Ok(id) => id,
            Err(r) => return Outcome::Err(r),
        };
        let (Some(number), Some(peer), 1) = (req.channel_number, req.peers().next(), req.peer_count) else {
            return Outcome::Err(BAD_REQUEST);
        };
        let Some(channel) = ChannelNumber::new(number) else {
            return Outcome::Err(BAD_REQUEST);
        };
        if let Err(r) = self.check_peer(id, peer) {
            return Outcome::Err(r);
        }
        let permission_expires = now + self.config.permission_lifetime;
        let channel_expires = now + self.config.channel_lifetime;
        let limit = self.config.max_permissions_per_allocation;
        let channel_limit = self.config.max_channels_per_allocation;
        let Some(alloc) = self.allocation_mut(id) else {
            return Outcome::Err(ALLOCATION_MISMATCH);
        };
        // The channel must be free or bound to this peer, and the peer unbound or bound to this channel.
        if alloc.peer_by_channel.get(&channel).is_some_and(|p| *p != peer)
            || alloc.channel_by_peer.get(&peer).is_some_and(|b| b.channel != channel)
        {
            return Outcome::Err(BAD_REQUEST);
        }
        if !alloc.permissions.contains_key(&peer.ip()) && alloc.permissions.len() >= limit {
            return Outcome::Err(reject(508, "Insufficient Capacity"));
        }
        if !alloc.channel_by_peer.contains_key(&peer) && alloc.channel_by_peer.len() >= channel_limit {
            return Outcome::Err(reject(508, "Insufficient Capacity"));
        }
        alloc.permissions.insert(peer.ip(), permission_expires);
        alloc.peer_by_channel.insert(channel, peer);
        alloc.channel_by_peer.insert(
            peer,
            ChannelBinding {
                channel,
                channel_expires,
                expires: channel_expires.min(permission_expires),
            },
        );
        self.sync_channel_expiry(id, std::iter::once(peer.ip()));
        Outcome::Ok(None)
    }

    /// Recomputes the redundant expiry copies (peer→channel and channel route) after a permission changed.
    fn sync_channel_expiry(&mut self, id: AllocationId, ips: impl Iterator<Item = IpAddr>) {
        let Some(alloc) = self.slots.get_mut(id.index as usize).and_then(Option::as_mut) else {
            return;
        };
        for ip in ips {
            let Some(permission) = alloc.permissions.get(&ip).copied() else {
                continue;
            };
            for (peer, binding) in alloc.channel_by_peer.iter_mut().filter(|(p, _)| p.ip() == ip) {
                binding.expires = binding.channel_expires.min(permission);
                self.channel_routes.insert(
                    (alloc.five_tuple, binding.channel),
                    ChannelRoute {
                        allocation: id,
                        peer: *peer,
                        expires: binding.expires,
                    },
                );
            }
        }
    }

    /// A peer must be of a relayed family (443) and allowed by policy (403).
    fn check_peer(&mut self, id: AllocationId, peer: SocketAddr) -> Result<(), Reject> {
        let alloc = self.allocation_mut(id).ok_or(ALLOCATION_MISMATCH)?;
        if Family::of(&peer).pick(&alloc.relays).is_none() {
            return Err(PEER_FAMILY_MISMATCH);
        }
        self.config.policy.check(peer.ip()).map_err(|_| FORBIDDEN)?;
        self.refresh_own_addresses();
        if self.is_own_peer_refused(peer) {
            return Err(FORBIDDEN);
        }
        Ok(())
    }

    /// A destination on the host's own address passes only as the relayed address of a live allocation of this
    /// server (or when the allow list names it). Checks the worker's copy of the host's addresses first, so other
    /// destinations cost one local look-up.
    fn is_own_peer_refused(&self, peer: SocketAddr) -> bool {
        let ip = crate::policy::embedded_ipv4(peer.ip())
            .map(IpAddr::V4)
            .unwrap_or(peer.ip());
        self.own_host.1.contains(&ip)
            && !self.config.policy.is_allowed_explicitly(peer.ip())
            && !self.own.is_live_relay(peer)
    }

    /// Takes a new copy of the host's addresses if they changed, and drops the permissions (and their channels) to
    /// addresses that just became the host's: they were judged as strangers' when installed.
    fn refresh_own_addresses(&mut self) {
        if self.own.generation() == self.own_host.0 {
            return;
        }
        let old = std::mem::replace(&mut self.own_host, self.own.snapshot());
        let gained: Vec<IpAddr> = self.own_host.1.difference(&old.1).copied().collect();
        if gained.is_empty() {
            return;
        }
        let policy = &self.config.policy;
        let routes = &mut self.channel_routes;
        for alloc in self.slots.iter_mut().flatten() {
            let lost = |ip: &IpAddr| {
                let canonical = crate::policy::embedded_ipv4(*ip).map(IpAddr::V4).unwrap_or(*ip);
                gained.contains(&canonical) && !policy.is_allowed_explicitly(*ip)
            };
            alloc.permissions.retain(|ip, _| !lost(ip));
            let five_tuple = alloc.five_tuple;
            let peer_by_channel = &mut alloc.peer_by_channel;
            alloc.channel_by_peer.retain(|peer, b| {
                let keep = !lost(&peer.ip());
                if !keep {
                    routes.remove(&(five_tuple, b.channel));
                    peer_by_channel.remove(&b.channel);
                }
                keep
            });
        }
    }

    /// RFC 8489 §7.3.1: 420 with UNKNOWN-ATTRIBUTES listing what we did not understand.
    fn reply_unknown(&mut self, out: &mut [u8], msg: &Message<'_>, req: &Request<'_>) -> ClientAction {
        let mut list = [0u8; 16];
        let count = req.unknown_count.min(8);
        for (chunk, ty) in list.chunks_exact_mut(2).zip(req.unknown.iter().take(count)) {
            chunk.copy_from_slice(&ty.to_be_bytes());
        }
        let unknown = list.get(..count * 2).unwrap_or_default();
        self.write_error(
            out,
            msg.method(),
            msg.transaction_id(),
            reject(420, "Unknown Attribute"),
            None,
            |w| w.add(&Attribute::UnknownAttributes(unknown)).map(|_| ()),
        )
        .map_or(ClientAction::Drop, ClientAction::Reply)
    }

    /// 401 or 438 with REALM, NONCE and PASSWORD-ALGORITHMS; 400 for a malformed credential.
    fn write_challenge(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        five_tuple: FiveTuple,
        now: Instant,
        challenge: Challenge,
    ) -> Option<usize> {
        let r = match challenge {
            Challenge::BadRequest => return self.write_error(out, method, tid, BAD_REQUEST, None, |_| Ok(())),
            Challenge::Unauthorized => reject(401, "Unauthorized"),
            Challenge::StaleNonce => reject(438, "Stale Nonce"),
        };
        let nonce = self.auth.mint_nonce(self.unix_now(now), five_tuple.client.ip());
        let realm = self.auth.realm().to_owned();
        self.write_error(out, method, tid, r, None, |w| {
            w.add(&Attribute::Realm(&realm))?;
            w.add(&Attribute::Nonce(&nonce))?;
            w.add(&Attribute::PasswordAlgorithms(&PASSWORD_ALGORITHMS_VALUE))?;
            Ok(())
        })
    }

    fn write_success(
        &self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        auth: &ResponseAuth,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
    ) -> Option<usize> {
        let mut w = MessageWriter::new(out, method, Class::Success, tid).ok()?;
        body(&mut w).ok()?;
        self.sign(w, Some(auth))
    }

    fn write_error(
        &self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        r: Reject,
        auth: Option<&ResponseAuth>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
    ) -> Option<usize> {
        let mut w = MessageWriter::new(out, method, Class::Error, tid).ok()?;
        w.error_code(r.code, r.reason).ok()?;
        body(&mut w).ok()?;
        self.sign(w, auth)
    }

    /// SOFTWARE and integrity go only on answers to authenticated requests: unauthenticated answers stay small.
    fn sign(&self, mut w: MessageWriter<'_>, auth: Option<&ResponseAuth>) -> Option<usize> {
        if let Some(auth) = auth {
            if !self.config.software.is_empty() {
                w.add(&Attribute::Software(&self.config.software)).ok()?;
            }
            if auth.sha256 {
                w.message_integrity_sha256(&auth.key).ok()?;
            } else {
                w.message_integrity(&auth.key).ok()?;
            }
        }
        w.fingerprint().ok()?;
        Some(w.finish())
    }
}

enum Outcome {
    Ok(Option<u32>),
    Err(Reject),
    Bind(BindRequest),
}

/// Why authentication failed, by the answer it gets.
#[derive(Debug, Clone, Copy)]
enum Challenge {
    BadRequest,
    Unauthorized,
    StaleNonce,
}

impl Allocation {
    /// Takes `bytes` from the bandwidth bucket; true when the packet may pass.
    fn bucket_take(&mut self, now: Instant, bytes: usize, config: &Config) -> bool {
        let rate = config.bandwidth_per_allocation;
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.bucket.last);
        let refill = (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
        if refill > 0 {
            self.bucket.tokens = (self.bucket.tokens + refill).min(rate);
            self.bucket.last = now;
        }
        let bytes = bytes as u64;
        if self.bucket.tokens >= bytes {
            self.bucket.tokens -= bytes;
            true
        } else {
            false
        }
    }
}
