//! The maps' keys and values exactly as `bpf/relay.c` declares them (`#[repr(C)]`, same field order and padding),
//! and the one clock read the fast path needs. The crate's only `unsafe` lives here.
#![allow(unsafe_code)]

/// `struct alloc_key`: which allocation a route belongs to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct AllocKey {
    pub worker: u32,
    pub slot: u32,
    pub generation: u32,
    pub pad: u32,
}

/// `struct client_key`: addresses and ports in network byte order, as the packet carries them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct ClientKey {
    pub client_ip: u32,
    pub server_ip: u32,
    pub client_port: u16,
    pub server_port: u16,
    pub channel: u16,
    pub pad: u16,
}

/// `struct to_peer`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ToPeer {
    pub relay_ip: u32,
    pub peer_ip: u32,
    pub relay_port: u16,
    pub peer_port: u16,
    /// `ROUTE_DONT_FRAGMENT` (bit 0): DF toward the peer.
    pub flags: u32,
    pub expires_ns: u64,
    pub alloc: AllocKey,
}

/// `struct peer_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct PeerKey {
    pub peer_ip: u32,
    pub relay_ip: u32,
    pub peer_port: u16,
    pub relay_port: u16,
}

/// `struct to_client`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ToClient {
    pub server_ip: u32,
    pub client_ip: u32,
    pub server_port: u16,
    pub client_port: u16,
    pub channel: u16,
    pub pad: u16,
    pub expires_ns: u64,
    pub alloc: AllocKey,
}

/// `struct counters`, one per CPU.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

/// `struct credit`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Credit {
    pub bytes: i64,
}

// SAFETY: each type is `#[repr(C)]`, made only of integers with every padding byte spelled out as a field, so any
// bit pattern the kernel hands back is a valid value and no uninitialised byte is ever read or written.
unsafe impl aya::Pod for AllocKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ClientKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ToPeer {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ToClient {}
// SAFETY: as above.
unsafe impl aya::Pod for Counters {}
// SAFETY: as above.
unsafe impl aya::Pod for Credit {}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, against which the program checks expiry.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes `bpf/relay.c` has: a mismatch would make every map update fail with EINVAL.
    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<AllocKey>(), 16);
        assert_eq!(std::mem::size_of::<ClientKey>(), 16);
        assert_eq!(std::mem::size_of::<ToPeer>(), 40);
        assert_eq!(std::mem::size_of::<PeerKey>(), 12);
        assert_eq!(std::mem::size_of::<ToClient>(), 40);
        assert_eq!(std::mem::size_of::<Counters>(), 32);
        assert_eq!(std::mem::size_of::<Credit>(), 8);
    }
}
