//! The server's own addresses, kept live, and the relay addresses of its live allocations.
//!
//! Relaying into the server itself is an SSRF path (its STUN listener answers a relayed Binding; a host service or a
//! client socket on a port of the relay range is reachable; a relay range over a listener loops). So a peer on one of
//! the host's addresses is allowed only when it is exactly the relayed address of a live allocation of this server
//! (relay-to-relay: two users of this server relaying to each other, the usual case when both need TURN).
//!
//! The host gains and loses addresses while it runs (IPv6 privacy addresses, a floating IP, DHCP finishing late), so
//! the I/O layer re-reads them and calls [`OwnAddresses::set_host`]; each worker's `turn::Server` notices the new
//! generation within its next timeout and drops permissions to addresses that just became the host's.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

const RELAY_SHARDS: usize = 16;

/// Shared by every worker. Read on CreatePermission, ChannelBind and (only for a destination on the host's own
/// address) per Send indication; written when the host's addresses change and when an allocation comes or goes.
#[derive(Debug)]
pub struct OwnAddresses {
    host: RwLock<Arc<HashSet<IpAddr>>>,
    generation: AtomicU64,
    relays: Vec<Mutex<HashSet<SocketAddr>>>,
    /// Relays removed so far: a worker whose channels to this host's relays were checked at another count checks
    /// them again (a relay may end on any worker).
    relays_removed: AtomicU64,
}

impl Default for OwnAddresses {
    fn default() -> Self {
        Self::new([])
    }
}

impl OwnAddresses {
    pub fn new(host: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            host: RwLock::new(Arc::new(host.into_iter().map(canonical).collect())),
            generation: AtomicU64::new(0),
            relays: (0..RELAY_SHARDS).map(|_| Mutex::new(HashSet::new())).collect(),
            relays_removed: AtomicU64::new(0),
        }
    }

    /// Replaces the host's addresses; returns whether they changed (and the generation moved on).
    pub fn set_host(&self, addrs: impl IntoIterator<Item = IpAddr>) -> bool {
        let new: HashSet<IpAddr> = addrs.into_iter().map(canonical).collect();
        let mut host = self.host.write().unwrap_or_else(|e| e.into_inner());
        if **host == new {
            return false;
        }
        *host = Arc::new(new);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The host's addresses and their generation, for a worker's copy.
    pub fn snapshot(&self) -> (u64, Arc<HashSet<IpAddr>>) {
        let host = self.host.read().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), host.clone())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `ip` (or the IPv4 address an IPv6 form embeds) is one of the host's.
    pub fn is_host(&self, ip: IpAddr) -> bool {
        self.host
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&canonical(ip))
    }

    fn relay_shard(&self, addr: &SocketAddr) -> Option<std::sync::MutexGuard<'_, HashSet<SocketAddr>>> {
        let shard = self.relays.get(usize::from(addr.port()) % RELAY_SHARDS)?;
        Some(shard.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn add_relay(&self, addr: SocketAddr) {
        if let Some(mut shard) = self.relay_shard(&addr) {
            shard.insert(canonical_addr(addr));
        }
    }

    pub fn remove_relay(&self, addr: SocketAddr) {
        if let Some(mut shard) = self.relay_shard(&addr) {
            shard.remove(&canonical_addr(addr));
        }
        self.relays_removed.fetch_add(1, Ordering::AcqRel);
    }

    /// How many relays have been removed so far (see the field).
    pub fn relays_removed(&self) -> u64 {
        self.relays_removed.load(Ordering::Acquire)
    }

    /// Whether `addr` is the relayed address of a live allocation of this server.
    pub fn is_live_relay(&self, addr: SocketAddr) -> bool {
        self.relay_shard(&addr)
            .is_some_and(|shard| shard.contains(&canonical_addr(addr)))
    }
}

/// IPv4-mapped and the other embedding forms judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    crate::policy::embedded_ipv4(ip).map(IpAddr::V4).unwrap_or(ip)
}

fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_change_with_a_new_generation_and_relays_are_exact() {
        let own = OwnAddresses::new(["198.51.100.1".parse().unwrap()]);
        assert!(own.is_host("198.51.100.1".parse().unwrap()));
        assert!(
            own.is_host("::ffff:198.51.100.1".parse().unwrap()),
            "embedded forms count"
        );
        assert!(
            !own.set_host(["198.51.100.1".parse().unwrap()]),
            "same set, same generation"
        );
        assert_eq!(own.generation(), 0);
        assert!(own.set_host(["198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap()]));
        assert_eq!(own.generation(), 1);
        assert!(own.is_host("198.51.100.2".parse().unwrap()));
        let relay: SocketAddr = "198.51.100.1:50000".parse().unwrap();
        own.add_relay(relay);
        assert!(own.is_live_relay(relay));
        assert!(own.is_live_relay("[::ffff:198.51.100.1]:50000".parse().unwrap()));
        assert!(!own.is_live_relay("198.51.100.1:50001".parse().unwrap()));
        own.remove_relay(relay);
        assert!(!own.is_live_relay(relay));
    }
}
