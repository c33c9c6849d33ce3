//! Traverse's kernel fast path: an XDP program (`bpf/relay.c`, built by clang in `build.rs`) that relays
//! channel-bound IPv4 UDP allocations before the socket layer, and the small loader that attaches it and writes its
//! maps.
//!
//! Model: user space stays the authority. The TURN core decides when a channel is usable and until when; the I/O
//! layer calls [`FastPath::install`] / [`FastPath::remove`] with what it decided. The program only reads routes
//! (each with its own expiry, checked per packet against CLOCK_MONOTONIC, so an expired channel or permission stops
//! at once even between user-space ticks), decrements a byte credit where the allocation has a bandwidth cap, and
//! counts per CPU. Anything it does not know passes to the socket path unchanged. [`FastPath::settle`] reads what the
//! kernel relayed for an allocation and grants its next credit; the caller feeds the figures to the TURN core.
//!
//! The program is detached when the [`FastPath`] is dropped (its links are file descriptors of this process).

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Instant;

use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::{Xdp, XdpFlags};
use aya::Ebpf;

mod wire;

use wire::{AllocKey, ClientKey, Counters, Credit, PeerKey, ToClient, ToPeer};

/// `bpf_map_update_elem` flag: create only.
const BPF_NOEXIST: u64 = 1;

/// The object `build.rs` compiled, if clang was there.
#[cfg(traverse_xdp_built)]
static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.o")));
#[cfg(not(traverse_xdp_built))]
static OBJECT: Option<&[u8]> = None;

/// Whether the XDP program was compiled into this binary.
pub fn built_in() -> bool {
    OBJECT.is_some()
}

/// The compiled object (ELF), for tools that load it elsewhere (the tests put it on a veth's far end, where its
/// empty maps make it pass everything).
pub fn object() -> Option<&'static [u8]> {
    OBJECT
}

/// Why the fast path is not running; each says in plain words what to do, and the server uses the socket path.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("XDP fast path not built in (clang missing at build time); using the socket path")]
    NotBuiltIn,
    #[error("the kernel refused the XDP program ({0}); needs root (CAP_BPF and CAP_NET_ADMIN) and Linux 5.9 or later")]
    Load(String),
    #[error("no network interface named {0:?}")]
    UnknownInterface(String),
    #[error(
        "cannot attach XDP to {iface} in driver mode ({reason}); the driver may not support native XDP, or another \
         program is attached"
    )]
    Attach { iface: String, reason: String },
    #[error(
        "IPv4 forwarding is off on {0}: the fast path's route look-ups (bpf_fib_lookup) need \
         net.ipv4.conf.{0}.forwarding=1"
    )]
    ForwardingDisabled(String),
}

/// Why a channel's routes were not installed (the channel then stays on the socket path).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{client} holds its share of {ROUTES_PER_SOURCE} kernel routes")]
    Share { client: std::net::Ipv4Addr },
    #[error(transparent)]
    Map(#[from] MapError),
}

/// A failed map update: the kernel's error, for a log line (the packet then takes the socket path).
#[derive(Debug, thiserror::Error)]
#[error("XDP map {map}: {reason}")]
pub struct MapError {
    map: &'static str,
    reason: String,
}

impl MapError {
    fn new(map: &'static str, reason: impl std::fmt::Display) -> Self {
        Self {
            map,
            reason: reason.to_string(),
        }
    }
}

/// Which allocation a route belongs to: the worker and its `AllocationId` (slot, generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allocation {
    pub worker: u32,
    pub slot: u32,
    pub generation: u32,
}

/// One channel binding, both directions (IPv4 only: other families are never given to the fast path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub allocation: Allocation,
    /// The client's address and the listener it reached (the 5-tuple, UDP).
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    /// RFC 8656 §12: 0x4000..=0x4FFF.
    pub channel: u16,
    pub peer: SocketAddrV4,
    /// The relay socket's local address (what a peer's packet is addressed to on the wire).
    pub relay: SocketAddrV4,
    /// The allocation asked for DONT-FRAGMENT (RFC 8656 §14.8): DF set toward the peer, else cleared.
    pub dont_fragment: bool,
}

/// `flags` bit of a route to a peer (`ROUTE_DONT_FRAGMENT` in `bpf/relay.c`).
const ROUTE_DONT_FRAGMENT: u32 = 1;

impl Route {
    /// IPv4 addresses of every role, or `None` (the fast path is IPv4 only).
    pub fn v4(
        allocation: Allocation,
        client: SocketAddr,
        server: SocketAddr,
        channel: u16,
        peer: SocketAddr,
        relay: SocketAddr,
        dont_fragment: bool,
    ) -> Option<Self> {
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(a),
            _ => None,
        };
        Some(Self {
            allocation,
            client: v4(client)?,
            server: v4(server)?,
            channel,
            peer: v4(peer)?,
            relay: v4(relay)?,
            dont_fragment,
        })
    }

    fn client_key(&self) -> ClientKey {
        ClientKey {
            client_ip: be_ip(&self.client),
            server_ip: be_ip(&self.server),
            client_port: self.client.port().to_be(),
            server_port: self.server.port().to_be(),
            channel: self.channel.to_be(),
            pad: 0,
        }
    }

    fn peer_key(&self) -> PeerKey {
        PeerKey {
            peer_ip: be_ip(&self.peer),
            relay_ip: be_ip(&self.relay),
            peer_port: self.peer.port().to_be(),
            relay_port: self.relay.port().to_be(),
        }
    }
}

/// What the kernel relayed for one allocation, summed over CPUs (payload bytes, as the socket path counts them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

/// The attached program and its maps. Shared by the workers; touched on ChannelBind, expiry and once a second per
/// allocation, never per packet, so one mutex is enough.
pub struct FastPath {
    maps: Mutex<Maps>,
    interfaces: Vec<String>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

/// Entries of each route table (`MAX_ENTRIES` in `bpf/relay.c`).
pub const MAX_ROUTES: u32 = 262_144;

/// Routes one client address may hold in the kernel's tables: a sixteenth of them. Its allocations' quota allows
/// 2 000 × 256 channels, which would fill the tables in seconds and leave everyone's new channels on the socket path.
pub const ROUTES_PER_SOURCE: u32 = MAX_ROUTES / 16;

/// Kernel routes held per client address (the tables are IPv4 only, so an address is a source).
#[derive(Debug, Default)]
struct Shares(std::collections::HashMap<std::net::Ipv4Addr, u32>);

impl Shares {
    fn admits(&self, client: std::net::Ipv4Addr) -> bool {
        self.0.get(&client).copied().unwrap_or(0) < ROUTES_PER_SOURCE
    }

    fn add(&mut self, client: std::net::Ipv4Addr) {
        *self.0.entry(client).or_default() += 1;
    }

    fn remove(&mut self, client: std::net::Ipv4Addr) {
        if let std::collections::hash_map::Entry::Occupied(mut held) = self.0.entry(client) {
            *held.get_mut() = held.get().saturating_sub(1);
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

struct Maps {
    /// Owns the program and its links: dropping it detaches.
    _ebpf: Ebpf,
    shares: Shares,
    client_routes: HashMap<MapData, ClientKey, ToPeer>,
    peer_routes: HashMap<MapData, PeerKey, ToClient>,
    counters: PerCpuHashMap<MapData, AllocKey, Counters>,
    credits: HashMap<MapData, AllocKey, Credit>,
    cpus: usize,
}

impl FastPath {
    /// Loads the program and attaches it in driver (native) mode to every interface, or to none. `allocations`:
    /// how many allocations the server may hold, which sizes the per-allocation maps (a preallocated per-CPU map
    /// of [`MAX_ROUTES`] entries held tens of MB per CPU, whatever the load).
    pub fn attach(interfaces: &[String], allocations: usize) -> Result<Self, AttachError> {
        let object = OBJECT.ok_or(AttachError::NotBuiltIn)?;
        for iface in interfaces {
            if iface.is_empty() || iface.contains(['\0', '/']) || !has_interface(iface) {
                return Err(AttachError::UnknownInterface(iface.clone()));
            }
            let forwarding = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"));
            if forwarding.is_ok_and(|v| v.trim() == "0") {
                return Err(AttachError::ForwardingDisabled(iface.clone()));
            }
        }
        let per_allocation = u32::try_from(allocations).unwrap_or(MAX_ROUTES).clamp(1024, MAX_ROUTES);
        let mut ebpf = aya::EbpfLoader::new()
            .set_max_entries("COUNTERS", per_allocation)
            .set_max_entries("CREDITS", per_allocation)
            .load(object)
            .map_err(|e| AttachError::Load(e.to_string()))?;
        let program: &mut Xdp = ebpf
            .program_mut("traverse_relay")
            .ok_or_else(|| AttachError::Load("program traverse_relay missing from the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| AttachError::Load(e.to_string()))?;
        program.load().map_err(|e| AttachError::Load(e.to_string()))?;
        for iface in interfaces {
            program
                .attach(iface, XdpFlags::DRV_MODE)
                .map_err(|e| AttachError::Attach {
                    iface: iface.clone(),
                    reason: e.to_string(),
                })?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| AttachError::Load(format!("map {name} missing from the object")))
        };
        let load = |e: aya::maps::MapError| AttachError::Load(e.to_string());
        let client_routes = HashMap::try_from(take(&mut ebpf, "CLIENT_ROUTES")?).map_err(load)?;
        let peer_routes = HashMap::try_from(take(&mut ebpf, "PEER_ROUTES")?).map_err(load)?;
        let counters = PerCpuHashMap::try_from(take(&mut ebpf, "COUNTERS")?).map_err(load)?;
        let credits = HashMap::try_from(take(&mut ebpf, "CREDITS")?).map_err(load)?;
        // The interfaces a rewritten packet may leave by: those the program runs on.
        let mut egress: HashMap<MapData, u32, u32> = HashMap::try_from(take(&mut ebpf, "EGRESS")?).map_err(load)?;
        for iface in interfaces {
            let index = interface_index(iface).ok_or_else(|| AttachError::UnknownInterface(iface.clone()))?;
            egress.insert(index, 1, 0).map_err(load)?;
        }
        for iface in interfaces {
            // Forwarding on (required for the route look-ups) makes the host route anything arriving there, and
            // what the program relays bypasses netfilter: said once, with the rule that keeps the host a relay only.
            tracing::warn!(
                iface = %iface,
                "XDP: forwarding is on for {iface}, so the host routes whatever arrives there unless the firewall's \
                 forward chain drops it (e.g. `nft add rule inet filter forward iifname {iface} drop`); packets the \
                 fast path relays bypass netfilter either way"
            );
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| AttachError::Load(format!("{what}: {e}")))?;
        Ok(Self {
            maps: Mutex::new(Maps {
                _ebpf: ebpf,
                client_routes,
                peer_routes,
                counters,
                credits,
                cpus,
                shares: Shares::default(),
            }),
            interfaces: interfaces.to_vec(),
        })
    }

    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs (`new`) or refreshes a channel's routes, usable until `expires` (the core's min of channel,
    /// permission and allocation expiry). The allocation's counters are created with its first route. A new route
    /// past its client address's share ([`ROUTES_PER_SOURCE`]) or the tables' room is refused, and leaves nothing
    /// behind: the channel stays on the socket path.
    pub fn install(&self, route: &Route, expires: Instant, new: bool) -> Result<(), InstallError> {
        let expires_ns = monotonic_deadline(expires);
        let alloc = alloc_key(route.allocation);
        let client_ip = *route.client.ip();
        let mut maps = self.maps();
        if new && !maps.shares.admits(client_ip) {
            return Err(InstallError::Share { client: client_ip });
        }
        // BPF_NOEXIST: the first route creates the counters, a later one must not zero them. (Not a look-up first:
        // aya 0.13's per-CPU `get` answers a missing key with zeros.)
        let zeros =
            PerCpuValues::try_from(vec![Counters::default(); maps.cpus]).map_err(|e| MapError::new("COUNTERS", e))?;
        let created = match maps.counters.insert(alloc, zeros, BPF_NOEXIST) {
            Ok(()) => true,
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(MapError::new("COUNTERS", e).into()),
        };
        let to_peer = ToPeer {
            relay_ip: be_ip(&route.relay),
            peer_ip: be_ip(&route.peer),
            relay_port: route.relay.port().to_be(),
            peer_port: route.peer.port().to_be(),
            flags: if route.dont_fragment { ROUTE_DONT_FRAGMENT } else { 0 },
            expires_ns,
            alloc,
        };
        let to_client = ToClient {
            server_ip: be_ip(&route.server),
            client_ip: be_ip(&route.client),
            server_port: route.server.port().to_be(),
            client_port: route.client.port().to_be(),
            channel: route.channel.to_be(),
            pad: 0,
            expires_ns,
            alloc,
        };
        let inserted = maps
            .client_routes
            .insert(route.client_key(), to_peer, 0)
            .map_err(|e| MapError::new("CLIENT_ROUTES", e))
            .and_then(|()| {
                maps.peer_routes
                    .insert(route.peer_key(), to_client, 0)
                    .map_err(|e| MapError::new("PEER_ROUTES", e))
            });
        if let Err(e) = inserted {
            // A table is full. Undone, so that nothing is left without an owner: the counters of an allocation
            // whose first route failed were never known to the worker, and stayed in the kernel for good.
            if new {
                let _ = maps.client_routes.remove(&route.client_key());
            }
            if created {
                let _ = maps.counters.remove(&alloc);
            }
            return Err(e.into());
        }
        if new {
            maps.shares.add(client_ip);
        }
        Ok(())
    }

    /// Allocations with counters in the kernel (one per allocation with a route).
    pub fn allocations(&self) -> usize {
        self.maps().counters.keys().filter(Result::is_ok).count()
    }

    /// Removes a channel's routes: from the next packet on, it takes the socket path.
    pub fn remove(&self, route: &Route) {
        let mut maps = self.maps();
        // Absent entries (never installed, or already gone) are not an error here.
        if maps.client_routes.remove(&route.client_key()).is_ok() {
            maps.shares.remove(*route.client.ip());
        }
        let _ = maps.peer_routes.remove(&route.peer_key());
    }

    /// What the kernel relayed for `allocation` since it was first installed (summed over CPUs), and the credit it
    /// has not spent; then grants `credit` bytes (`None`: no cap, the credit entry is removed). An absent credit
    /// means no cap to the program, so a cap whose credit cannot be written is an error: the caller withdraws the
    /// allocation's routes, and its traffic takes the socket path, where the cap holds.
    pub fn settle(
        &self,
        allocation: Allocation,
        grant: impl FnOnce(Relayed, u64) -> Option<u64>,
    ) -> (Relayed, Result<(), MapError>) {
        let key = alloc_key(allocation);
        let mut maps = self.maps();
        let relayed = maps
            .counters
            .get(&key, 0)
            .map(|per_cpu| {
                per_cpu.iter().fold(Relayed::default(), |sum, c| Relayed {
                    to_peer_packets: sum.to_peer_packets + c.to_peer_packets,
                    to_peer_bytes: sum.to_peer_bytes + c.to_peer_bytes,
                    to_client_packets: sum.to_client_packets + c.to_client_packets,
                    to_client_bytes: sum.to_client_bytes + c.to_client_bytes,
                })
            })
            .unwrap_or_default();
        let unused = maps.credits.get(&key, 0).map_or(0, |c| c.bytes.max(0) as u64);
        match grant(relayed, unused) {
            Some(bytes) => {
                let credit = Credit {
                    bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                };
                if let Err(e) = maps.credits.insert(key, credit, 0) {
                    return (relayed, Err(MapError::new("CREDITS", e)));
                }
            }
            None => {
                let _ = maps.credits.remove(&key);
            }
        }
        (relayed, Ok(()))
    }

    /// Forgets an allocation's counters and credit (its routes are removed one by one before).
    pub fn forget(&self, allocation: Allocation) {
        let key = alloc_key(allocation);
        let mut maps = self.maps();
        let _ = maps.counters.remove(&key);
        let _ = maps.credits.remove(&key);
    }
}

fn alloc_key(a: Allocation) -> AllocKey {
    AllocKey {
        worker: a.worker,
        slot: a.slot,
        generation: a.generation,
        pad: 0,
    }
}

/// The address as it sits in the packet (network byte order), read as a native integer.
fn be_ip(a: &SocketAddrV4) -> u32 {
    u32::from_ne_bytes(a.ip().octets())
}

/// `expires` on the kernel's monotonic clock; an instant already past is 0, which never matches.
fn monotonic_deadline(expires: Instant) -> u64 {
    let left = expires.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return 0;
    }
    wire::monotonic_ns().saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
}

/// The interface's index from sysfs, so a bad name is refused before aya sees it.
/// Whether the calling thread's network namespace has `iface`. (`/sys/class/net` shows the namespace `/sys` was
/// mounted in, which a thread that entered another one with `setns` does not see.)
/// The interface's index in this thread's network namespace (SIOCGIFINDEX; /sys may show another namespace's), as
/// the route look-up names the egress.
fn interface_index(iface: &str) -> Option<u32> {
    let socket = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None).ok()?;
    rustix::net::netdevice::name_to_index(&socket, iface).ok()
}

fn has_interface(iface: &str) -> bool {
    std::fs::read_to_string("/proc/thread-self/net/dev").is_ok_and(|dev| {
        dev.lines()
            .filter_map(|line| line.split_once(':'))
            .any(|(name, _)| name.trim() == iface)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn a_client_address_holds_at_most_its_share_of_routes() {
        let mut shares = super::Shares::default();
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..super::ROUTES_PER_SOURCE {
            assert!(shares.admits(a));
            shares.add(a);
        }
        assert!(!shares.admits(a), "past its share");
        assert!(shares.admits(b), "another address is not charged");
        shares.remove(a);
        assert!(shares.admits(a), "a removed route gives its place back");
        for _ in 0..super::ROUTES_PER_SOURCE {
            shares.remove(a);
        }
        assert!(shares.0.is_empty(), "nothing kept for an address without routes");
    }

    use super::*;

    /// A build without clang: the server says this once and keeps the socket path.
    #[cfg(not(traverse_xdp_built))]
    #[test]
    fn without_the_object_attach_says_so() {
        let Err(e) = FastPath::attach(&["lo".to_owned()], 1000) else {
            panic!("attached without an object");
        };
        assert_eq!(
            e.to_string(),
            "XDP fast path not built in (clang missing at build time); using the socket path"
        );
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        let a = Allocation {
            worker: 0,
            slot: 1,
            generation: 2,
        };
        let sa = |s: &str| s.parse::<SocketAddr>().expect("literal");
        let route = Route::v4(
            a,
            sa("192.0.2.1:5000"),
            sa("203.0.113.1:3478"),
            0x4001,
            sa("198.51.100.7:9"),
            sa("203.0.113.1:50000"),
            false,
        )
        .expect("all IPv4");
        let k = route.client_key();
        assert_eq!(k.client_ip.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(k.client_port.to_ne_bytes(), [0x13, 0x88]);
        assert_eq!(k.channel.to_ne_bytes(), [0x40, 0x01]);
        assert!(Route::v4(
            a,
            sa("[::1]:1"),
            sa("203.0.113.1:3478"),
            0x4001,
            sa("198.51.100.7:9"),
            sa("0.0.0.0:1"),
            false,
        )
        .is_none());
    }

    #[test]
    fn a_past_deadline_never_matches() {
        assert_eq!(monotonic_deadline(Instant::now()), 0);
        assert!(monotonic_deadline(Instant::now() + std::time::Duration::from_secs(5)) > wire::monotonic_ns());
    }
}
