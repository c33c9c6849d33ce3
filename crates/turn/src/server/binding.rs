//! STUN Binding (RFC 8489 §7.3) and, where configured, RFC 5780 NAT behaviour discovery.

use super::*;

impl<R: RngCore> Server<R> {
    /// RFC 8489 §7.3: XOR-MAPPED-ADDRESS (MAPPED-ADDRESS for RFC 3489 clients). Without RFC 5780 configured that
    /// is all, so the answer is as small as a Binding answer can be, and CHANGE-REQUEST, RESPONSE-PORT and PADDING
    /// (all comprehension-required) get 420 like any attribute we do not understand — but a CHANGE-REQUEST asking for
    /// no change, which asks nothing we cannot do.
    ///
    /// RFC 5780 §6 (configured, on UDP, at one of its addresses): the answer leaves from the address CHANGE-REQUEST
    /// asks for and goes to the client's IP at RESPONSE-PORT, carries RESPONSE-ORIGIN and — only with a second IP
    /// and a second port — OTHER-ADDRESS, and is padded for PADDING within [`MAX_PADDED_ANSWER`].
    pub(super) fn handle_binding(&mut self, five_tuple: FiveTuple, msg: &Message<'_>, out: &mut [u8]) -> ClientAction {
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
                // A CHANGE-REQUEST with neither flag asks for nothing this server cannot do: RFC 3489 clients (the
                // stund lineage) send one in every request, their first test included, and got nothing but 420.
                let asks_nothing = req.change_request == Some((false, false));
                for ty in [attr::CHANGE_REQUEST, attr::RESPONSE_PORT, attr::PADDING] {
                    if msg.get(ty).is_some() && !(ty == attr::CHANGE_REQUEST && asks_nothing) {
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
            return self.reply_unknown(out, msg, &req, None);
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
    pub(super) fn write_binding(
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
}
