//! The TURN server state machine.
//!
//! A packet enters through [`Server::handle_client`] (from a client, on a listener) or [`Server::handle_peer`] (from
//! a peer, on a relay socket) and leaves as the returned action: an answer written into the caller's buffer, or a
//! range of the caller's buffer to send elsewhere. Relay sockets are the caller's: an Allocate returns
//! [`ClientAction::BindRelay`], the caller binds, and reports back with [`Server::handle_relay_bound`]. Time is
//! always the caller's `now`; wall-clock seconds (for REST credential expiry) are derived from one
//! `(Instant, unix seconds)` pair given at construction.
//!
//! This file holds the types, the entry points and the allocation table; each mechanism has a module of its own:
//! `credentials` (RFC 8489 §9.2), `binding` (STUN and RFC 5780), `allocate` (Allocate, Refresh), `permissions`
//! (CreatePermission, ChannelBind, which peers they may name), `relay` (the data path both ways and the reflection
//! guard), `request` (a request's attributes in one pass), `cache` (answers to retransmissions), `reservations`
//! (EVEN-PORT tokens).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
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
use source::Source;

mod allocate;
mod binding;
mod cache;
mod credentials;
mod fast_path;
mod permissions;
mod relay;
mod request;
mod reservations;
mod stats;

use cache::ResponseCache;
pub use fast_path::{FastPathTraffic, FastRoute};
use request::Request;
use reservations::Reservation;
pub use reservations::{Reservations, MAX_RESERVATIONS, MAX_RESERVATIONS_PER_SOURCE};
use stats::Ended;
pub use stats::{AuthFailure, AuthFailures, ErrorResponses, PerTransport, QuotaRefusals, Stats, Traffic, ERROR_CODES};

type FastMap<K, V> = HashMap<K, V, RandomState>;

/// Shrinks a map whose capacity is more than four times what it holds (and more than a few entries), to twice.
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut FastMap<K, V>) {
    if map.capacity() > 4 * map.len() + 64 {
        map.shrink_to(2 * map.len());
    }
}

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

/// `slot.generation`: unique within a worker while the allocation lives (logs add the worker).
impl std::fmt::Display for AllocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

impl AllocationId {
    /// A small dense index (reused after the allocation ends, with a new generation): callers keep per-allocation
    /// state in a `Vec` at this index instead of a map, and check the id on look-up.
    pub fn slot(&self) -> usize {
        self.index as usize
    }

    /// Tells this slot's allocations apart over time (a kernel fast path keys its per-allocation maps by both).
    pub fn generation(&self) -> u32 {
        self.generation
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

    /// RFC 8656 §18.1's family codes; `None` for any other (a family this server does not support).
    fn from_stun(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Family::V4),
            0x02 => Some(Family::V6),
            _ => None,
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
    /// Only with [`Server::with_fast_path_events`]: a UDP allocation's channel may be relayed by the fast path until
    /// `expires` (min of channel, permission and allocation lifetime); sent again on each refresh.
    ChannelUsable { route: FastRoute, expires: Instant },
    /// Only with [`Server::with_fast_path_events`]: the channel must leave the fast path now (expired, its peer
    /// refused, its allocation ended).
    ChannelUnusable(FastRoute),
    /// An Allocate from this source was refused (486) for the source's share, `max_allocations_per_source`: the
    /// caller tells the operator (a busy office or carrier NAT looks like this), throttled.
    SourceQuotaReached(Source),
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
    /// The earliest entry of [`Server::deadlines`] for this allocation, if any.
    scheduled: Option<Instant>,
    /// Its relay sockets set DF on every datagram (the Allocate asked for DONT-FRAGMENT).
    dont_fragment: bool,
}

#[derive(Debug, Clone, Copy)]
struct ChannelBinding {
    channel: ChannelNumber,
    channel_expires: Instant,
    expires: Instant,
    /// The deadline last given to the kernel fast path (`Event::ChannelUsable`), if any.
    announced: Option<Instant>,
}

/// Client→peer route of a bound channel, keyed by what a ChannelData packet carries.
#[derive(Debug, Clone, Copy)]
struct ChannelRoute {
    allocation: AllocationId,
    peer: SocketAddr,
    expires: Instant,
    /// The peer is on the host's own address: a live relay when bound (relay-to-relay). That relay may end, on any
    /// worker, and its port go to a host process: such a channel is checked again while a relay has ended since the
    /// last timeout, which unbinds it (and withdraws the fast path's copy).
    own: bool,
}

struct Pending {
    tid: TransactionId,
    username: String,
    auth: ResponseAuth,
    lifetime: Duration,
    requested: [bool; 2],
    /// Family refused by configuration, reported with ADDRESS-ERROR-CODE.
    refused_family: Option<Family>,
    dont_fragment: bool,
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
const TRY_ALTERNATE: Reject = reject(300, "Try Alternate");

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
    /// [`OwnAddresses::relays_removed`] when this worker last unbound its channels to ended relays of this host.
    relays_removed_seen: u64,
    events: VecDeque<Event>,
    /// Whether channel usability is reported as events (a kernel fast path is attached).
    fast_path: bool,
    stats: Stats,
    /// When each allocation next has something to expire (itself, a permission, a channel), earliest first:
    /// `handle_timeout` looks only at allocations that are due, so an idle allocation costs no CPU between its
    /// deadlines (a sweep over every allocation once a second cost 2 ms/s at 19 000). Entries are (when, slot,
    /// generation); one made stale by a later refresh only causes a look that finds nothing due yet.
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// The gauges of [`Stats`], kept as they change rather than counted by a pass over the allocations.
    gauges: Gauges,
}

/// Live allocations by transport, permissions and channels.
#[derive(Debug, Default, Clone, Copy)]
struct Gauges {
    allocations: PerTransport<u64>,
    permissions: u64,
    channels: u64,
}

impl<R> std::fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("allocations", &self.by_five_tuple.len())
            .finish_non_exhaustive()
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
            responses: ResponseCache::new(capacity),
            reflection: Arc::new(ReflectionGuard::default()),
            own: Arc::new(OwnAddresses::default()),
            own_host: (0, Arc::new(HashSet::new())),
            relays_removed_seen: 0,
            events: VecDeque::new(),
            fast_path: false,
            stats: Stats::default(),
            deadlines: BinaryHeap::new(),
            gauges: Gauges::default(),
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

    /// The counters, with the gauges (allocations, permissions, channels) as kept: no pass over the allocations.
    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.by_five_tuple.len(),
            allocations_by_transport: self.gauges.allocations,
            permissions: self.gauges.permissions,
            channels: self.gauges.channels,
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

    /// When [`Server::handle_timeout`] next has work (an allocation, permission, channel or reservation expires);
    /// callers may also just call it once a second. Entries a refresh made stale are requeued on the way.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, index, generation))) = self.deadlines.peek() {
            let id = AllocationId { index, generation };
            let real = self.allocation_mut(id).map(|a| a.next_deadline());
            if real == Some(at) {
                break;
            }
            self.deadlines.pop();
            if let Some(real) = real {
                if let Some(alloc) = self.allocation_mut(id) {
                    alloc.scheduled = None;
                }
                self.schedule(id, real);
            }
        }
        let allocations = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
        allocations.into_iter().chain(self.reservations.next_expiry()).min()
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

    /// A stream transport's connection closed: RFC 8656 §7 ties the allocation to it.
    pub fn handle_connection_closed(&mut self, five_tuple: FiveTuple) {
        if let Some(pending) = self.pending.remove(&five_tuple) {
            self.quotas
                .release(&pending.username, Source::of(five_tuple.client.ip()));
        }
        if let Some(id) = self.by_five_tuple.get(&five_tuple).copied() {
            self.remove_allocation(id, Ended::ConnectionClosed);
        }
    }

    /// Expires allocations, permissions, channels, reservations and cached answers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.refresh_own_addresses();
        self.unbind_ended_relays();
        while let Some(&Reverse((at, index, generation))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            self.expire_in(AllocationId { index, generation }, now);
        }
        for relay in self.reservations.expire(now) {
            self.events.push_back(Event::ReservationReleased(relay));
        }
        self.responses.expire(now);
        self.shrink_after_load();
    }

    /// A due allocation: it ends if past its lifetime; otherwise its expired permissions and channels go, and it is
    /// queued again for its next deadline.
    fn expire_in(&mut self, id: AllocationId, now: Instant) {
        let Some(alloc) = self.allocation_mut(id) else {
            return;
        };
        alloc.scheduled = None;
        if alloc.expires <= now {
            self.remove_allocation(id, Ended::Expired);
            return;
        }
        let Some(Some(alloc)) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        let permissions = alloc.permissions.len();
        alloc.permissions.retain(|_, exp| *exp > now);
        let lapsed = (permissions - alloc.permissions.len()) as u64;
        let five_tuple = alloc.five_tuple;
        let expired: Vec<(SocketAddr, ChannelNumber)> = alloc
            .channel_by_peer
            .iter()
            .filter(|(_, b)| b.channel_expires <= now)
            .map(|(peer, b)| (*peer, b.channel))
            .collect();
        for &(peer, channel) in &expired {
            fast_path::withdraw(&mut self.events, self.fast_path, id, alloc, peer, channel);
            self.channel_routes.remove(&(five_tuple, channel));
            alloc.peer_by_channel.remove(&channel);
            alloc.channel_by_peer.remove(&peer);
        }
        let next = alloc.next_deadline();
        self.gauges.permissions -= lapsed;
        self.gauges.channels -= expired.len() as u64;
        self.schedule(id, next);
    }

    /// Queues `id` to be looked at by `at`, unless it already is by then.
    fn schedule(&mut self, id: AllocationId, at: Instant) {
        let Some(Some(alloc)) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if alloc.generation != id.generation || alloc.scheduled.is_some_and(|s| s <= at) {
            return;
        }
        alloc.scheduled = Some(at);
        self.deadlines.push(Reverse((at, id.index, id.generation)));
        // Stale entries are bounded: past twice the live allocations, the queue is rebuilt from them.
        if self.deadlines.len() > 2 * self.by_five_tuple.len() + 64 {
            self.deadlines.clear();
            for (index, slot) in self.slots.iter_mut().enumerate() {
                let Some(alloc) = slot else { continue };
                let at = alloc.next_deadline();
                alloc.scheduled = Some(at);
                self.deadlines.push(Reverse((at, index as u32, alloc.generation)));
            }
        }
    }

    /// Gives back the memory of tables a load left mostly empty (a `HashMap` never shrinks by itself): after 5 000
    /// allocations ended, the soak benchmark found the TURN side still holding most of what it grew by.
    fn shrink_after_load(&mut self) {
        shrink(&mut self.by_five_tuple);
        shrink(&mut self.channel_routes);
        shrink(&mut self.pending);
        self.responses.shrink();
        // Trailing empty slots go; their generations stay, so an id of a freed slot can never match again.
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        let live = self.slots.len();
        self.free_slots.retain(|i| (*i as usize) < live);
        if self.slots.capacity() > 4 * self.slots.len() + 64 {
            self.slots.shrink_to(2 * self.slots.len());
            self.free_slots.shrink_to(2 * self.free_slots.len());
        }
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
                // Slots given back by `shrink_after_load` keep their generation; only a new index starts at 0.
                if self.generations.len() < self.slots.len() {
                    self.generations.push(0);
                }
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
        alloc.scheduled = None;
        let expires = alloc.expires;
        *self.gauges.allocations.get_mut(alloc.five_tuple.transport) += 1;
        let id = AllocationId { index, generation };
        self.by_five_tuple.insert(alloc.five_tuple, id);
        for relay in alloc.relays.iter().flatten() {
            self.own.add_relay(*relay);
        }
        if let Some(slot) = self.slots.get_mut(index as usize) {
            *slot = Some(alloc);
        }
        self.schedule(id, expires);
        id
    }

    fn remove_allocation(&mut self, id: AllocationId, why: Ended) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|a| a.generation != id.generation) {
            return;
        }
        let Some(alloc) = slot.take() else { return };
        self.free_slots.push(id.index);
        *self.gauges.allocations.get_mut(alloc.five_tuple.transport) -= 1;
        self.gauges.permissions -= alloc.permissions.len() as u64;
        self.gauges.channels -= alloc.channel_by_peer.len() as u64;
        self.by_five_tuple.remove(&alloc.five_tuple);
        for relay in alloc.relays.iter().flatten() {
            self.own.remove_relay(*relay);
        }
        for (channel, peer) in &alloc.peer_by_channel {
            fast_path::withdraw(&mut self.events, self.fast_path, id, &alloc, *peer, *channel);
            self.channel_routes.remove(&(alloc.five_tuple, *channel));
        }
        self.quotas
            .release(&alloc.username, Source::of(alloc.five_tuple.client.ip()));
        tracing::info!(
            allocation = %id,
            client = %alloc.five_tuple.client,
            server = %alloc.five_tuple.server,
            transport = %alloc.five_tuple.transport,
            username = %alloc.username,
            reason = why.as_str(),
            "allocation ended"
        );
        self.events.push_back(Event::AllocationClosed(id));
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
        // RFC 8489 §6.3: unknown attributes are looked at after authentication, and the answer to an authenticated
        // request is signed (§9.2.4): a client that checks every answer's integrity reads the 420. An unsigned
        // request (a client's first) is told at once, unsigned.
        let (username, auth) = match self.authenticate(now, five_tuple, msg, &req) {
            Ok(ok) => ok,
            Err(None) if req.unknown_count > 0 => {
                return (self.reply_unknown(out, msg, &req, None), Authenticated::No);
            }
            Err(refused) => {
                let challenge = match refused {
                    None => {
                        self.stats.challenges += 1;
                        Challenge::Unauthorized
                    }
                    Some(reason) => {
                        self.stats.auth_failures.add(reason);
                        Challenge::of(reason)
                    }
                };
                let reply = self.write_challenge(out, method, tid, five_tuple, now, challenge);
                return (reply.map_or(ClientAction::Drop, ClientAction::Reply), Authenticated::No);
            }
        };
        if req.unknown_count > 0 {
            return (self.reply_unknown(out, msg, &req, Some(&auth)), Authenticated::Yes);
        }
        if req.malformed {
            let reply = self.write_error(out, method, tid, BAD_REQUEST, Some(&auth), |_| Ok(()));
            return (
                reply.map_or(ClientAction::Drop, ClientAction::Reply),
                Authenticated::Yes,
            );
        }
        let outcome = match method {
            Method::ALLOCATE => self.handle_allocate(now, five_tuple, &req, tid, username, auth.clone()),
            // The other methods act on the allocation this 5-tuple holds, owned by the same user (RFC 8656 §5).
            _ => match self.owned_allocation(now, five_tuple, &username) {
                Err(r) => Outcome::Err(r),
                Ok(id) if method == Method::REFRESH => self.handle_refresh(now, id, &req),
                Ok(id) if method == Method::CREATE_PERMISSION => self.handle_create_permission(now, id, &req),
                Ok(id) => self.handle_channel_bind(now, id, &req),
            },
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
            Outcome::TryAlternate(alternate) => self.write_error(out, method, tid, TRY_ALTERNATE, Some(&auth), |w| {
                w.add(&Attribute::AlternateServer(alternate))?;
                Ok(())
            }),
        };
        (
            reply.map_or(ClientAction::Drop, ClientAction::Reply),
            Authenticated::Yes,
        )
    }
}

enum Outcome {
    Ok(Option<u32>),
    Err(Reject),
    /// A draining server sends the client to another (RFC 8656 §7.2).
    TryAlternate(SocketAddr),
    Bind(BindRequest),
}

/// Why authentication failed, by the answer it gets.
#[derive(Debug, Clone, Copy)]
enum Challenge {
    BadRequest,
    Unauthorized,
    StaleNonce,
}

impl Challenge {
    /// The answer each refusal gets (RFC 8489 §9.2.4).
    fn of(reason: AuthFailure) -> Self {
        match reason {
            AuthFailure::BadRequest => Challenge::BadRequest,
            AuthFailure::WrongRealm | AuthFailure::UnknownUser | AuthFailure::Expired | AuthFailure::BadIntegrity => {
                Challenge::Unauthorized
            }
            AuthFailure::StaleNonce => Challenge::StaleNonce,
        }
    }
}

impl Allocation {
    /// The earliest of its expiry, its permissions' and its channels'.
    fn next_deadline(&self) -> Instant {
        let permissions = self.permissions.values().copied();
        let channels = self.channel_by_peer.values().map(|b| b.channel_expires);
        permissions.chain(channels).fold(self.expires, Instant::min)
    }

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
