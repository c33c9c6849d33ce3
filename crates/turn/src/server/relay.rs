//! The relay path: ChannelData and Send indications from the client (RFC 8656 §11.2, §12.6), data from peers
//! (§11.3, §12.5) written in place, and the reflection guard on unauthenticated UDP answers.

use super::*;

impl<R: RngCore> Server<R> {
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
        let channel = alloc
            .channel_by_peer
            .get(&peer)
            .filter(|b| b.expires > now)
            .map(|b| b.channel);
        let permitted = channel.is_some() || alloc.permissions.get(&peer.ip()).is_some_and(|exp| *exp > now);
        // RFC 8656 §9: what a peer without permission sends is discarded, and is not charged to the allocation's
        // bandwidth: a stranger spraying a relay port would otherwise use it up and have the call's media dropped.
        if alloc.expires <= now
            || buf.len() < end + PEER_TAILROOM
            || !permitted
            || !alloc.bucket_take(now, payload_len, config)
        {
            self.stats.dropped_packets += 1;
            return None;
        }
        let five_tuple = alloc.five_tuple;
        if let Some(channel) = channel {
            // RFC 8656 §12.5: ChannelData header in front; on streams, pad to a multiple of four.
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
            self.stats.to_client.get_mut(five_tuple.transport).add(payload_len);
            return Some(PeerForward {
                five_tuple,
                range: start..stop,
            });
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
        self.stats.to_client.get_mut(five_tuple.transport).add(payload_len);
        Some(PeerForward {
            five_tuple,
            range: start..start + len,
        })
    }

    /// RFC 8656 §12.6: ChannelData from the client goes to the bound peer, or is dropped.
    pub(super) fn handle_channel_data(&mut self, now: Instant, five_tuple: FiveTuple, packet: &[u8]) -> ClientAction {
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
        // Only for a channel to the host's own address (bound to a live relay), and only while a relay has ended since
        // the last timeout (which unbinds the channels to ended ones): one atomic load otherwise, none on other
        // channels' path.
        if route.own && self.own.relays_removed() != self.relays_removed_seen && self.is_own_peer_refused(route.peer) {
            self.stats.dropped_packets += 1;
            self.stats.peer_refusals += 1;
            return ClientAction::Drop;
        }
        self.stats.to_peer.get_mut(five_tuple.transport).add(data.payload.len());
        ClientAction::Relay {
            allocation: route.allocation,
            peer: route.peer,
            payload: CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + data.payload.len(),
        }
    }

    /// Charges an unauthenticated UDP answer's excess over its request to the source's reflection budget; drops it
    /// when the budget is spent. Answers that carry integrity (authenticated) and stream transports are free; an
    /// authenticated UDP request proves its source (it answered our nonce).
    pub(super) fn guard_reflection(
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
            self.reflection.prove(source, rate, now);
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
            self.stats.reflection_drops += 1;
            ClientAction::Drop
        }
    }

    /// RFC 8656 §11.2: Send indications are relayed if a permission exists, else silently dropped. DONT-FRAGMENT on
    /// an allocation whose relay sockets do not set DF is what the server cannot do: the attribute counts as an
    /// unknown comprehension-required one, and the indication is dropped (a path-MTU probe must not pass
    /// fragmented, as if it fit).
    pub(super) fn handle_send(&mut self, now: Instant, five_tuple: FiveTuple, msg: &Message<'_>) -> ClientAction {
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
        let fragments = req.dont_fragment && !alloc.dont_fragment;
        if !permitted || fragments || alloc.expires <= now || !alloc.bucket_take(now, end - start, config) {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        }
        // A permission to the server's own address covers only live relays (relay-to-relay), port by port.
        if self.is_own_peer_refused(peer) {
            self.stats.dropped_packets += 1;
            self.stats.peer_refusals += 1;
            return ClientAction::Drop;
        }
        self.stats.to_peer.get_mut(five_tuple.transport).add(end - start);
        ClientAction::Relay {
            allocation: id,
            peer,
            payload: start..end,
        }
    }
}
