//! Allocations (RFC 8656 §7): Allocate and its relay binding, Refresh, lifetimes.

use super::*;

impl<R: RngCore> Server<R> {
    /// Refuses a pending Allocate after its relay was bound (or not): the quota it took is given back and the answer
    /// kept for retransmissions; the caller closes whatever it bound. Returns the answer's length.
    fn refuse_bound(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        pending: &Pending,
        refusal: Reject,
        out: &mut [u8],
    ) -> Option<usize> {
        self.quotas
            .release(&pending.username, Source::of(five_tuple.client.ip()));
        let len = self.write_error(out, Method::ALLOCATE, pending.tid, refusal, Some(&pending.auth), |_| {
            Ok(())
        });
        if let Some(len) = len {
            self.responses
                .insert((five_tuple, pending.tid), now, out.get(..len).unwrap_or_default());
        }
        len
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
            let refusal = refusal.unwrap_or(reject(508, "Insufficient Capacity"));
            return (None, self.refuse_bound(now, five_tuple, &pending, refusal, out));
        };
        let source = Source::of(five_tuple.client.ip());
        let mut reservation_token = None;
        if let Some(relay) = binding.reserved {
            let mut token = [0u8; 8];
            self.rng.fill_bytes(&mut token);
            let reservation = Reservation {
                relay,
                expires: now + self.config.reservation_lifetime,
                source,
            };
            if !self.reservations.try_insert(token, reservation) {
                // RFC 8656 §7.2: a server that cannot reserve the next port answers 508. The caller closes the
                // sockets it bound, the held one with them (no allocation was made).
                self.stats.quota_refusals.reservations += 1;
                let refusal = reject(508, "Insufficient Capacity");
                return (None, self.refuse_bound(now, five_tuple, &pending, refusal, out));
            }
            reservation_token = Some(token);
        }
        *self.stats.allocations_created.get_mut(five_tuple.transport) += 1;
        let username = pending.username;
        let id = self.insert_allocation(Allocation {
            generation: 0,
            five_tuple,
            username: username.clone(),
            expires: now + pending.lifetime,
            relays: binding.relays,
            permissions: FastMap::default(),
            channel_by_peer: FastMap::default(),
            peer_by_channel: FastMap::default(),
            bucket: TokenBucket {
                tokens: self.config.bandwidth_per_allocation,
                last: now,
            },
            scheduled: None,
            dont_fragment: pending.dont_fragment,
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
        tracing::info!(
            allocation = %id,
            client = %five_tuple.client,
            server = %five_tuple.server,
            transport = %five_tuple.transport,
            %username,
            relay_v4 = Family::V4.pick(&binding.relays).map(|a| a.to_string()),
            relay_v6 = Family::V6.pick(&binding.relays).map(|a| a.to_string()),
            lifetime,
            "allocation created"
        );
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

    /// RFC 8656 §7.2.
    pub(super) fn handle_allocate(
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
        let offered = [self.config.relay_ipv4, self.config.relay_ipv6];
        // RFC 8656 §7.2: a family this server does not know is one it does not support.
        let Some(primary) = Family::from_stun(req.requested_family.unwrap_or(0x01)).filter(|f| *f.pick(&offered))
        else {
            return Outcome::Err(reject(440, "Address Family not Supported"));
        };
        *primary.pick_mut(&mut requested) = true;
        if req.additional_family.is_some() {
            if *Family::V6.pick(&offered) {
                *Family::V6.pick_mut(&mut requested) = true;
            } else {
                refused_family = Some(Family::V6);
            }
        }
        // RFC 8656 §7.2 lets a server redirect an Allocate it would otherwise accept (300 Try Alternate with
        // ALTERNATE-SERVER, RFC 8489 §14.15); asked here, before a reservation is redeemed or a quota charged.
        if self.quotas.is_draining() {
            return match self.quotas.alternate_for(five_tuple.transport, five_tuple.server) {
                Some(alternate) => Outcome::TryAlternate(alternate),
                None => Outcome::Err(reject(508, "Insufficient Capacity")),
            };
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
        let acquired = self.quotas.acquire(&username, Source::of(five_tuple.client.ip()), now);
        if let (Err(_), Some(relay)) = (acquired, reserved_relay) {
            // The token was redeemed and the Allocate refused: the held socket is no one's any more.
            self.events.push_back(Event::ReservationReleased(relay));
        }
        match acquired {
            Ok(()) => {}
            // RFC 8656 §18: 486 means "no more allocations using this username" (or from this source); a
            // server-wide limit is capacity.
            Err(QuotaExceeded::User) => {
                self.stats.quota_refusals.user += 1;
                return Outcome::Err(reject(486, "Allocation Quota Reached"));
            }
            Err(QuotaExceeded::Source) => {
                self.stats.quota_refusals.source += 1;
                // Said in the log by the caller (throttled): otherwise the operator sees only a counter while
                // every user behind one busy address (an office, a carrier NAT) is refused.
                self.events
                    .push_back(Event::SourceQuotaReached(Source::of(five_tuple.client.ip())));
                return Outcome::Err(reject(486, "Allocation Quota Reached"));
            }
            Err(QuotaExceeded::Rate) => {
                self.stats.quota_refusals.rate += 1;
                return Outcome::Err(reject(486, "Allocation Quota Reached"));
            }
            Err(QuotaExceeded::Total) => {
                self.stats.quota_refusals.total += 1;
                return Outcome::Err(reject(508, "Insufficient Capacity"));
            }
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
                dont_fragment: req.dont_fragment,
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
    pub(super) fn clamp_lifetime(&self, requested: Option<u32>) -> Duration {
        let requested = requested.map_or(self.config.default_lifetime, |s| Duration::from_secs(u64::from(s)));
        requested
            .min(self.config.max_lifetime)
            .max(self.config.default_lifetime.min(self.config.max_lifetime))
    }

    /// Finds the allocation of this 5-tuple and checks that the same user owns it (RFC 8656 §5: 441).
    pub(super) fn owned_allocation(
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
    pub(super) fn sweep_if_expired(&mut self, now: Instant, five_tuple: FiveTuple) {
        let Some(&id) = self.by_five_tuple.get(&five_tuple) else {
            return;
        };
        if self.allocation_mut(id).is_some_and(|a| a.expires <= now) {
            self.remove_allocation(id, Ended::Expired);
        }
    }

    /// RFC 8656 §7.3: lifetime 0 deletes; otherwise min(requested, max), but never below the default.
    pub(super) fn handle_refresh(&mut self, now: Instant, id: AllocationId, req: &Request<'_>) -> Outcome {
        let lifetime = match req.lifetime {
            Some(0) => Duration::ZERO,
            requested => self.clamp_lifetime(requested),
        };
        let Some(alloc) = self.allocation_mut(id) else {
            return Outcome::Err(ALLOCATION_MISMATCH);
        };
        if let Some(family) = req.requested_family {
            if Family::from_stun(family).is_none_or(|f| f.pick(&alloc.relays).is_none()) {
                return Outcome::Err(PEER_FAMILY_MISMATCH);
            }
        }
        if lifetime.is_zero() {
            self.remove_allocation(id, Ended::Deleted);
            return Outcome::Ok(Some(0));
        }
        alloc.expires = now + lifetime;
        let expires = alloc.expires;
        tracing::info!(
            allocation = %id,
            client = %alloc.five_tuple.client,
            transport = %alloc.five_tuple.transport,
            username = %alloc.username,
            lifetime = lifetime.as_secs(),
            "allocation refreshed"
        );
        // A shorter lifetime than before moves the deadline earlier.
        self.schedule(id, expires);
        self.announce_channels(id, None);
        Outcome::Ok(Some(lifetime.as_secs() as u32))
    }
}
