//! Rooms: who may join (token, room limits), who is in which room, and what travels between members — presence,
//! signals, broadcasts — until a session ends.

use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use serde_json::value::RawValue;

use super::stream::{Buffered, Disconnected, Refused, ReportAllowance, Session, SignalFrom};
use super::{ConnId, Counters, MemoryHub, Now, Output, Restored, SessionEvent};
use crate::budget::Source;
use crate::frame::{Frame, Joined, LeftReason, Member, Meta, UndeliverableReason};
use crate::id::{PeerId, SessionSecret};
use crate::protocol::{CloseCode, ErrorCode, Refusal};
use crate::token::{verify_token, TokenError};

pub(super) struct Room {
    /// Peer ids in join order.
    pub members: Vec<PeerId>,
}

/// What a join token says about its bearer.
pub(super) struct Identity {
    sub: String,
    caps: Vec<String>,
}

impl<R: RngCore + Send> MemoryHub<R> {
    /// Token check shared by `check_join` and `join`; the identity from the token, if the server needs one.
    pub(super) fn check_token(&self, room: &str, token: Option<&str>, now: Now) -> Result<Option<Identity>, Refusal> {
        let Some(secret) = &self.token_secret else {
            return Ok(None);
        };
        let Some(token) = token else {
            return Err(Refusal::new(
                ErrorCode::TokenRequired,
                "This server needs a token to join a room; mint one with `traverse token` or your backend.",
            ));
        };
        let claims = verify_token(secret, token, now.unix).map_err(|e| match e {
            TokenError::Expired => Refusal::new(ErrorCode::TokenExpired, "The token has expired; get a new one."),
            other => Refusal::new(ErrorCode::TokenInvalid, format!("The token was refused: {other}.")),
        })?;
        if claims.room != "*" && claims.room != room {
            return Err(Refusal::new(
                ErrorCode::TokenRoomMismatch,
                format!("The token admits room `{}`, not `{room}`.", claims.room),
            ));
        }
        Ok(Some(Identity {
            sub: claims.sub,
            caps: claims.caps,
        }))
    }

    pub(super) fn check_room(&self, room: &str) -> Result<(), Refusal> {
        match self.rooms.get(room) {
            Some(r) if r.members.len() >= self.limits.max_peers_per_room => Err(Refusal::new(
                ErrorCode::RoomFull,
                format!(
                    "Room `{room}` already has its maximum of {} peers.",
                    self.limits.max_peers_per_room
                ),
            )),
            None if self.rooms.len() >= self.limits.max_rooms => Err(Refusal::new(
                ErrorCode::TooManyRooms,
                "The server holds its maximum number of rooms; try again later.",
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn join(
        &mut self,
        conn: ConnId,
        room: String,
        token: Option<String>,
        meta: Option<&RawValue>,
        rejoin: bool,
        now: Now,
    ) {
        let identity = match self.check_token(&room, token.as_deref(), now) {
            Ok(identity) => identity,
            Err(refusal) => return self.error(conn, refusal),
        };
        let mut meta_object = match meta.map(|m| serde_json::from_str::<serde_json::Value>(m.get())) {
            None => serde_json::Map::new(),
            Some(Ok(serde_json::Value::Object(map)))
                if meta.is_some_and(|m| m.get().len() <= self.limits.max_meta_bytes) =>
            {
                map
            }
            Some(_) => {
                let message = format!(
                    "`meta` must be a JSON object of at most {} bytes.",
                    self.limits.max_meta_bytes
                );
                return self.error(conn, Refusal::new(ErrorCode::BadMessage, message));
            }
        };
        if let Err(refusal) = self.check_room(&room) {
            return self.error(conn, refusal);
        }
        let caps = match identity {
            Some(Identity { sub, caps }) => {
                meta_object.insert("identity".into(), sub.into());
                caps
            }
            None => Vec::new(),
        };
        let meta = Meta::from_object(meta_object);
        // Drawn in this order so that a seeded hub makes the same ids as before.
        let peer = PeerId::generate(&mut self.rng);
        let secret = SessionSecret::generate(&mut self.rng);
        let room: Arc<str> = room.into();

        let members = self.rooms.get(&room).map(|r| r.members.clone()).unwrap_or_default();
        let peers: Vec<Member> = members
            .iter()
            .map(|m| Member {
                id: m.clone(),
                meta: self.sessions.get(m).map_or_else(Meta::empty, |s| s.meta.clone()),
            })
            .collect();
        let ice_servers = (self.ice_servers)(&peer, now.unix);
        let source = self
            .conns
            .get(&conn)
            .map_or(Source::of(std::net::Ipv4Addr::UNSPECIFIED.into()), |c| c.source);
        let mut session = Session::new(
            secret.clone(),
            room.clone(),
            source,
            meta.clone(),
            conn,
            ReportAllowance::new(
                super::outcomes::REPORTS_PER_PEER * self.limits.max_peers_per_room,
                self.clock,
            ),
        );
        session.rebound = rejoin;
        self.sessions.insert(peer.clone(), session);
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| Room { members: Vec::new() })
            .members
            .push(peer.clone());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(peer.clone());
        }
        tracing::info!(%conn, %peer, room = %room, "joined a room");
        let joined = Frame::Joined(Joined {
            session: &secret,
            peer: &peer,
            room: &room,
            peers: &peers,
            ice_servers: &ice_servers,
            caps: &caps,
            heartbeat: self.limits.heartbeat_interval,
            resume_grace: self.limits.resume_grace,
            messages_per_second: self.limits.messages_per_second,
            message_burst: self.limits.burst,
        });
        let _ = self.deliver(&peer, &joined, None);
        if self.session_events {
            let opened = SessionEvent::Opened {
                secret: secret.clone(),
                room: room.clone(),
                peer: peer.clone(),
                meta: meta.shared(),
                ip: source.ip(),
                next_seq: 2,
                client_seq: 0,
            };
            // After `joined` (numbered 1), whose `Numbered` is already out.
            self.outputs.push_back(Output::Session(opened));
        }
        self.by_secret.insert(secret, peer.clone());
        let notice = Frame::PeerJoined {
            peer: &peer,
            meta: &meta,
        };
        for m in &members {
            let _ = self.deliver(m, &notice, None);
        }
    }

    pub(super) fn signal(&mut self, conn: ConnId, from: &PeerId, to: &str, data: &RawValue, id: Option<String>) {
        // The recipient as the hub knows it: only a member of the sender's room, never the sender.
        // And whether either session is rebound (`Session::rebound`), for the outcome reports (`note_signaled`).
        let recipient = match (self.sessions.get(from), self.sessions.get_key_value(to)) {
            (Some(a), Some((to, b))) if a.room == b.room && from != to => Some((to.clone(), a.rebound || b.rebound)),
            _ => None,
        };
        let Some((to_peer, rebound)) = recipient else {
            let room = self.sessions.get(from).map(|s| s.room.to_string()).unwrap_or_default();
            let message = format!("No peer {} in room {room}.", to.chars().take(128).collect::<String>());
            return self.error_with_id(conn, Refusal::new(ErrorCode::UnknownPeer, message), id.as_deref());
        };
        if !self.charge_delivery(conn, data.get().len()) {
            return self.over_delivery(conn, id.as_deref());
        }
        let frame = Frame::Signal { from, data };
        let signal_from = SignalFrom {
            sender: from.clone(),
            id,
        };
        match self.deliver(&to_peer, &frame, Some(signal_from)) {
            Ok(()) => {
                self.relayed += 1;
                self.note_signaled(from, &to_peer, rebound);
            }
            Err(Refused { over, signal_from }) => {
                let id = signal_from.and_then(|f| f.id);
                self.undeliverable(from, &to_peer, id.as_deref(), over.into());
            }
        }
    }

    /// Tells a signal's sender it will never be delivered.
    fn undeliverable(&mut self, sender: &PeerId, to: &PeerId, id: Option<&str>, reason: UndeliverableReason) {
        Counters::count(&mut self.counters.undeliverable, reason.as_str());
        let _ = self.deliver(sender, &Frame::Undeliverable { to, id, reason }, None);
    }

    pub(super) fn broadcast(&mut self, conn: ConnId, from: &PeerId, data: &RawValue) {
        let Some(room) = self.sessions.get(from).map(|s| s.room.clone()) else {
            return;
        };
        let frame = Frame::Broadcast { from, data };
        // By index, without copying the member list: delivering changes no room.
        let count = self.rooms.get(&room).map_or(0, |r| r.members.len());
        // Charged once per recipient (every member but the sender), all or nothing.
        if !self.charge_delivery(conn, data.get().len().saturating_mul(count.saturating_sub(1))) {
            return self.over_delivery(conn, None);
        }
        for i in 0..count {
            let Some(m) = self.rooms.get(&room).and_then(|r| r.members.get(i)).cloned() else {
                break;
            };
            if m != *from && self.deliver(&m, &frame, None).is_ok() {
                self.relayed += 1;
            }
        }
    }

    /// Removes a session for good: the room hears `peer-left`, and senders of signals that never reached it hear
    /// `undeliverable`.
    pub(super) fn remove_session(&mut self, peer: &PeerId, reason: LeftReason) {
        let Some(s) = self.sessions.remove(peer) else { return };
        let conn = s.conn.map(|c| c.get());
        tracing::info!(conn, %peer, room = %s.room, "left the room");
        self.budget.release(s.source, s.held);
        self.by_secret.remove(&s.secret);
        if self.session_events {
            let ended = SessionEvent::Ended {
                secret: s.secret.clone(),
                peer: peer.clone(),
                room: s.room.clone(),
            };
            self.outputs.push_back(Output::Session(ended));
        }
        if let Some(c) = s.conn.and_then(|conn| self.conns.get_mut(&conn)) {
            c.peer = None;
        }
        let mut empty = false;
        if let Some(room) = self.rooms.get_mut(&s.room) {
            room.members.retain(|m| m != peer);
            empty = room.members.is_empty();
        }
        let others = if empty {
            self.rooms.remove(&s.room);
            Vec::new()
        } else {
            self.rooms.get(&s.room).map(|r| r.members.clone()).unwrap_or_default()
        };
        // A drop report about it stays possible, told how it left.
        self.pairing.left(peer, reason, &others);
        let notice = Frame::PeerLeft { peer, reason };
        for m in &others {
            // No report is taken about a peer that left: its place among the ones negotiated with is free again.
            if let Some(other) = self.sessions.get_mut(m) {
                other.signaled.retain(|p| p != peer);
            }
            let _ = self.deliver(m, &notice, None);
        }
        if let Some(d) = s.disconnected {
            for b in s.buffer.iter().filter(|b| b.seq > d.last_sent) {
                if let Some(f) = &b.signal_from {
                    self.undeliverable(&f.sender, peer, f.id.as_deref(), UndeliverableReason::PeerLeft);
                }
            }
        }
    }

    /// Drops `room` and its sessions silently, closing their sockets with 4202 ([`super::SignalHub::handle_room_lost`]).
    pub(super) fn drop_room(&mut self, room: &str) {
        let Some(r) = self.rooms.remove(room) else { return };
        // Why is the I/O layer's to say (it warns); the count is the hub's.
        tracing::debug!(
            room,
            sessions = r.members.len(),
            "room dropped: its sockets closed with 4202"
        );
        for peer in &r.members {
            let Some(s) = self.sessions.remove(peer) else { continue };
            self.pairing.forget(peer);
            self.budget.release(s.source, s.held);
            self.by_secret.remove(&s.secret);
            if let Some(conn) = s.conn {
                self.close(conn, CloseCode::SHUTTING_DOWN, "room-moved");
            }
        }
    }

    /// A session's grace deadline came up (its entry queued for `at`): the session ends if its socket dropped at
    /// the time the entry was queued for and it was not resumed since.
    pub(super) fn grace_ended(&mut self, peer: &PeerId, at: Instant) {
        let grace = self.limits.resume_grace;
        if self.sessions.get(peer).and_then(|s| s.grace_end(grace)) == Some(at) {
            self.remove_session(peer, LeftReason::Lost);
        }
    }

    /// Rebuilds a session another node held: disconnected since `now`, its kept frames queued for its resume, in its
    /// room (the others are not told: for them the peer never left).
    pub(super) fn restore_session(&mut self, r: Restored, now: Now) {
        if self.sessions.contains_key(&r.peer) || self.by_secret.contains_key(&r.secret) {
            return;
        }
        let meta = match serde_json::from_str::<serde_json::Value>(&r.meta) {
            Ok(serde_json::Value::Object(map)) => Meta::from_object(map),
            _ => Meta::empty(),
        };
        let source = Source::from(r.ip);
        let reports = ReportAllowance::new(
            super::outcomes::REPORTS_PER_PEER * self.limits.max_peers_per_room,
            self.clock,
        );
        let mut session = Session::new(
            r.secret.clone(),
            r.room.clone(),
            source,
            meta.clone(),
            ConnId::new(0),
            reports,
        );
        session.conn = None;
        // Its pairs' connected diagnoses stayed on the node that died.
        session.rebound = true;
        session.next_seq = r.next_seq.max(1);
        session.client_seq = r.client_seq;
        session.disconnected = Some(Disconnected {
            at: now.instant,
            last_sent: session.next_seq - 1,
        });
        for (seq, text) in r.frames.into_iter().filter(|(seq, _)| *seq < r.next_seq) {
            let n = text.len() + crate::budget::FRAME_OVERHEAD;
            self.budget.charge(source, n);
            session.held += n;
            session.buffer.push_back(Buffered::restored(seq, text));
        }
        tracing::info!(peer = %r.peer, room = %r.room, kept = session.buffer.len(), "took over a session from a node that died");
        if self.session_events {
            let opened = SessionEvent::Opened {
                secret: r.secret.clone(),
                room: r.room.clone(),
                peer: r.peer.clone(),
                meta: meta.shared(),
                ip: r.ip,
                next_seq: session.next_seq,
                client_seq: session.client_seq,
            };
            self.outputs.push_back(Output::Session(opened));
        }
        self.rooms
            .entry(r.room.clone())
            .or_insert_with(|| Room { members: Vec::new() })
            .members
            .push(r.peer.clone());
        self.by_secret.insert(r.secret, r.peer.clone());
        self.timers
            .grace(r.peer.clone(), now.instant + self.limits.resume_grace);
        self.sessions.insert(r.peer, session);
    }
}
