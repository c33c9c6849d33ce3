//! Permissions and channels (RFC 8656 §9, §12), and which peers they may name.

use super::*;

impl<R: RngCore> Server<R> {
    /// RFC 8656 §9.2: every XOR-PEER-ADDRESS is checked before any permission is installed.
    pub(super) fn handle_create_permission(&mut self, now: Instant, id: AllocationId, req: &Request<'_>) -> Outcome {
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
        let mut added = 0;
        for peer in req.peers() {
            added += u64::from(alloc.permissions.insert(peer.ip(), expires).is_none());
        }
        self.gauges.permissions += added;
        self.schedule(id, expires);
        self.sync_channel_expiry(id, req.peers().map(|p| p.ip()));
        let ips: Vec<IpAddr> = req.peers().map(|p| p.ip()).collect();
        self.announce_channels(id, Some(&ips));
        Outcome::Ok(None)
    }

    /// RFC 8656 §12.2: binds or refreshes a channel, and installs or refreshes the peer's permission.
    pub(super) fn handle_channel_bind(&mut self, now: Instant, id: AllocationId, req: &Request<'_>) -> Outcome {
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
        let permission = alloc.permissions.insert(peer.ip(), permission_expires).is_none();
        alloc.peer_by_channel.insert(channel, peer);
        let bound = alloc
            .channel_by_peer
            .insert(
                peer,
                ChannelBinding {
                    channel,
                    channel_expires,
                    expires: channel_expires.min(permission_expires),
                    announced: None,
                },
            )
            .is_none();
        self.gauges.permissions += u64::from(permission);
        self.gauges.channels += u64::from(bound);
        self.schedule(id, permission_expires.min(channel_expires));
        self.sync_channel_expiry(id, std::iter::once(peer.ip()));
        self.announce_channels(id, Some(&[peer.ip()]));
        Outcome::Ok(None)
    }

    /// Recomputes the redundant expiry copies (peer→channel and channel route) after a permission changed.
    pub(super) fn sync_channel_expiry(&mut self, id: AllocationId, ips: impl Iterator<Item = IpAddr>) {
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
                        own: is_own_host(&self.own_host.1, *peer),
                    },
                );
            }
        }
    }

    /// A peer must be of a relayed family (443) and allowed by policy (403).
    pub(super) fn check_peer(&mut self, id: AllocationId, peer: SocketAddr) -> Result<(), Reject> {
        let alloc = self.allocation_mut(id).ok_or(ALLOCATION_MISMATCH)?;
        if Family::of(&peer).pick(&alloc.relays).is_none() {
            return Err(PEER_FAMILY_MISMATCH);
        }
        match self.config.policy.check(peer.ip()) {
            Ok(()) => {}
            // Exactly a live relay of this server (relay-to-relay: both users need TURN) is a peer even in a
            // reserved range, as on a LAN deployment whose relay addresses are private; the operator's own deny
            // list still wins.
            Err(crate::policy::Refusal::Reserved(_)) if self.own.is_live_relay(peer) => {}
            Err(_) => {
                self.stats.peer_refusals += 1;
                return Err(FORBIDDEN);
            }
        }
        self.refresh_own_addresses();
        if self.is_own_peer_refused(peer) {
            self.stats.peer_refusals += 1;
            return Err(FORBIDDEN);
        }
        Ok(())
    }

    /// A destination on the host's own address passes only as the relayed address of a live allocation of this
    /// server (or when the allow list names it). Checks the worker's copy of the host's addresses first, so other
    /// destinations cost one local look-up.
    pub(super) fn is_own_peer_refused(&self, peer: SocketAddr) -> bool {
        is_own_host(&self.own_host.1, peer)
            && !self.config.policy.is_allowed_explicitly(peer.ip())
            && !self.own.is_live_relay(peer)
    }

    /// Takes a new copy of the host's addresses if they changed, and drops the permissions (and their channels) to
    /// addresses that just became the host's: they were judged as strangers' when installed.
    /// Unbinds the channels bound to a relay of this host that has since ended (on any worker), when one has:
    /// the fast path's copy is withdrawn, and the socket path stops checking them per packet.
    pub(super) fn unbind_ended_relays(&mut self) {
        let removed = self.own.relays_removed();
        if removed == self.relays_removed_seen {
            return;
        }
        let ended: Vec<((FiveTuple, ChannelNumber), ChannelRoute)> = self
            .channel_routes
            .iter()
            .filter(|(_, route)| route.own && self.is_own_peer_refused(route.peer))
            .map(|(key, route)| (*key, *route))
            .collect();
        self.relays_removed_seen = removed;
        for ((five_tuple, channel), route) in ended {
            self.channel_routes.remove(&(five_tuple, channel));
            let (events, fast) = (&mut self.events, self.fast_path);
            let Some(alloc) = self
                .slots
                .get_mut(route.allocation.index as usize)
                .and_then(Option::as_mut)
                .filter(|a| a.generation == route.allocation.generation)
            else {
                continue;
            };
            fast_path::withdraw(events, fast, route.allocation, alloc, route.peer, channel);
            alloc.peer_by_channel.remove(&channel);
            if alloc.channel_by_peer.remove(&route.peer).is_some() {
                self.gauges.channels -= 1;
            }
        }
    }

    pub(super) fn refresh_own_addresses(&mut self) {
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
        let (events, fast) = (&mut self.events, self.fast_path);
        let (mut lapsed, mut unbound) = (0, 0);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(alloc) = slot else { continue };
            let id = AllocationId {
                index: index as u32,
                generation: alloc.generation,
            };
            let lost = |ip: &IpAddr| {
                let canonical = crate::policy::embedded_ipv4(*ip).map(IpAddr::V4).unwrap_or(*ip);
                gained.contains(&canonical) && !policy.is_allowed_explicitly(*ip)
            };
            let permissions = alloc.permissions.len();
            alloc.permissions.retain(|ip, _| !lost(ip));
            lapsed += (permissions - alloc.permissions.len()) as u64;
            let five_tuple = alloc.five_tuple;
            let refused: Vec<(SocketAddr, ChannelNumber)> = alloc
                .channel_by_peer
                .iter()
                .filter(|(peer, _)| lost(&peer.ip()))
                .map(|(peer, b)| (*peer, b.channel))
                .collect();
            unbound += refused.len() as u64;
            for (peer, channel) in refused {
                fast_path::withdraw(events, fast, id, alloc, peer, channel);
                routes.remove(&(five_tuple, channel));
                alloc.peer_by_channel.remove(&channel);
                alloc.channel_by_peer.remove(&peer);
            }
        }
        self.gauges.permissions -= lapsed;
        self.gauges.channels -= unbound;
    }
}

/// `peer` is on one of the host's addresses (`host`: the worker's copy), an IPv4 one embedded in IPv6 included.
fn is_own_host(host: &HashSet<IpAddr>, peer: SocketAddr) -> bool {
    let ip = crate::policy::embedded_ipv4(peer.ip())
        .map(IpAddr::V4)
        .unwrap_or(peer.ip());
    host.contains(&ip)
}
