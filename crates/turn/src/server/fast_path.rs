//! What a kernel fast path (XDP in `crates/xdp`) needs from this core, as explicit outputs: this core stays the one
//! owner of channels, permissions, lifetimes and the bandwidth bucket; the I/O layer only copies what it is told.
//!
//! With [`Server::with_fast_path_events`], every change to whether a UDP allocation's channel may relay is an event:
//! [`Event::ChannelUsable`] when a ChannelBind binds or refreshes it, a CreatePermission refreshes its permission or
//! a Refresh extends the allocation (each with the new deadline, min of channel, permission and allocation), and
//! [`Event::ChannelUnusable`] when it expires, loses its peer to the host's own addresses or its allocation ends. A
//! permission that simply runs out needs no event: its deadline was already in the last `ChannelUsable`.
//! [`Server::handle_fast_path_traffic`] takes back what the kernel relayed (counted into [`Stats`]) and hands out the
//! allocation's bandwidth as a byte credit, so the cap stays one token bucket whichever path a packet takes.

use super::*;

/// A channel whose kernel deadline moved by no more than this is not written to the kernel again. Every Refresh,
/// CreatePermission and ChannelBind re-announces the channels it touches, so without it a flood of 80-byte Refreshes
/// on an allocation with 256 channels rewrote 256 routes each time (~770 map system calls). The kernel's copy then
/// lapses at most this much early, and the channel's packets take the socket path until the next refresh.
pub(super) const REANNOUNCE_SLACK: Duration = Duration::from_secs(30);

/// A channel binding as the fast path routes it: the key of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FastRoute {
    pub allocation: AllocationId,
    /// The client's 5-tuple (UDP only: stream transports never reach the fast path).
    pub five_tuple: FiveTuple,
    pub channel: ChannelNumber,
    pub peer: SocketAddr,
    /// The allocation's advertised relay address of the peer's family.
    pub relay: SocketAddr,
    /// The allocation asked for DONT-FRAGMENT (RFC 8656 §14.8): its packets to peers carry DF.
    pub dont_fragment: bool,
}

/// What the fast path relayed for one allocation since the last call (payload bytes, as the socket path counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathTraffic {
    pub to_peer: Traffic,
    pub to_client: Traffic,
}

impl<R: RngCore> Server<R> {
    /// Reports channel usability as events (see the module doc); off by default, so a server without a fast path
    /// queues nothing.
    pub fn with_fast_path_events(mut self) -> Self {
        self.fast_path = true;
        self
    }

    /// Settles the kernel's relaying for `allocation`: counts `traffic` (into [`Stats::fast_path_to_peer`] and
    /// [`Stats::fast_path_to_client`]), takes back the `unused` credit, refills the bucket and returns the credit to
    /// grant next — all the bucket holds, so the socket path gets none meanwhile — or `None` when there is no cap
    /// (or no such allocation).
    pub fn handle_fast_path_traffic(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        traffic: FastPathTraffic,
        unused: u64,
    ) -> Option<u64> {
        add_traffic(&mut self.stats.fast_path_to_peer, traffic.to_peer);
        add_traffic(&mut self.stats.fast_path_to_client, traffic.to_client);
        let config = &self.config;
        let rate = config.bandwidth_per_allocation;
        let slot = self.slots.get_mut(allocation.index as usize).and_then(Option::as_mut);
        let alloc = slot.filter(|a| a.generation == allocation.generation)?;
        if rate == 0 {
            return None;
        }
        alloc.bucket.tokens = alloc.bucket.tokens.saturating_add(unused).min(rate);
        // Taking nothing refills the bucket up to `now`.
        alloc.bucket_take(now, 0, config);
        Some(std::mem::take(&mut alloc.bucket.tokens))
    }

    /// `ChannelUsable` for the channels of `id` to the given peer IPs (all when `ips` is `None`), each whose
    /// deadline moved by more than [`REANNOUNCE_SLACK`] since it was last announced.
    pub(super) fn announce_channels(&mut self, id: AllocationId, ips: Option<&[IpAddr]>) {
        if !self.fast_path {
            return;
        }
        let Some(alloc) = self.slots.get_mut(id.index as usize).and_then(Option::as_mut) else {
            return;
        };
        if alloc.five_tuple.transport != Transport::Udp {
            return;
        }
        let (five_tuple, relays, alloc_expires, dont_fragment) =
            (alloc.five_tuple, alloc.relays, alloc.expires, alloc.dont_fragment);
        for (peer, binding) in &mut alloc.channel_by_peer {
            if ips.is_some_and(|ips| !ips.contains(&peer.ip())) {
                continue;
            }
            let expires = binding.expires.min(alloc_expires);
            let moved = |last: Instant| {
                expires
                    .saturating_duration_since(last)
                    .max(last.saturating_duration_since(expires))
            };
            if binding.announced.is_some_and(|last| moved(last) <= REANNOUNCE_SLACK) {
                continue;
            }
            let Some(&relay) = Family::of(peer).pick(&relays).as_ref() else {
                continue;
            };
            binding.announced = Some(expires);
            let route = FastRoute {
                allocation: id,
                five_tuple,
                channel: binding.channel,
                peer: *peer,
                relay,
                dont_fragment,
            };
            self.events.push_back(Event::ChannelUsable { route, expires });
        }
    }
}

/// `ChannelUnusable` for one binding, when the server reports fast-path events.
pub(super) fn withdraw(
    events: &mut VecDeque<Event>,
    enabled: bool,
    id: AllocationId,
    alloc: &Allocation,
    peer: SocketAddr,
    channel: ChannelNumber,
) {
    if !enabled || alloc.five_tuple.transport != Transport::Udp {
        return;
    }
    if let Some(route) = route_of(id, alloc, peer, channel) {
        events.push_back(Event::ChannelUnusable(route));
    }
}

fn route_of(id: AllocationId, alloc: &Allocation, peer: SocketAddr, channel: ChannelNumber) -> Option<FastRoute> {
    Some(FastRoute {
        allocation: id,
        five_tuple: alloc.five_tuple,
        channel,
        peer,
        relay: (*Family::of(&peer).pick(&alloc.relays))?,
        dont_fragment: alloc.dont_fragment,
    })
}

fn add_traffic(sum: &mut Traffic, more: Traffic) {
    sum.packets += more.packets;
    sum.bytes += more.bytes;
}
