//! The router between this node's sockets, its hub and the other nodes. Sans-IO: events in (with `now`, passed on
//! to the hub), [`Action`]s out. The I/O layer carries `Publish` to the named node's channel, answers `Lookup`
//! from Redis, and hands `Local` outputs to its sockets exactly as it does for a hub alone.
//!
//! A socket starts in this node's hub. Its first `join` (or `resume`) asks where the room lives; if on another node,
//! the socket leaves this hub and every later event about it goes to that node (its *home*), whose answers come
//! back as envelopes. A home sees remote sockets as ordinary [`ConnId`]s, numbered from [`HOSTED_BASE`] up.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use signal::{
    CloseCode, ConnId, Limits, Now, Output, PeerId, Refusal, Restored, SessionEvent, SessionSecret, SignalHub,
};

use crate::wire::{Envelope, Message, NodeId};

/// Hub ids of sockets hosted for other nodes start here; the I/O layer numbers its own sockets from 1, far below.
pub const HOSTED_BASE: u64 = 1 << 62;

/// Frames a socket may send while its room is being looked up, and their bytes; beyond either, it is closed with
/// 4100 (rate-limited: 4202 would invite it to reconnect and do it again). They are held before any hub has counted
/// them: 32 frames of 64 KiB were 2 MiB a socket, for as long as Redis took to answer.
pub const MAX_WAITING: usize = 32;
pub const MAX_WAITING_BYTES: usize = 128 * 1024;

/// What the I/O layer must do.
#[derive(Debug)]
pub enum Action {
    /// For a socket of this node: exactly what a hub alone would have asked.
    Local(Output),
    /// Publish to `node`'s channel. `owner` is the socket of this node the envelope is for or from (one of its
    /// own, or one hosted here for another node), whose share of the publish queue it takes; `None` for a short
    /// notice about a socket that no longer has one here. If it cannot be queued, tell [`Router::handle_unpublished`].
    Publish {
        node: NodeId,
        bytes: Bytes,
        owner: Option<ConnId>,
    },
    /// Find where a room lives; answer with [`Router::handle_lookup`].
    Lookup { conn: ConnId, query: Query },
    /// A session began or ended on this node's hub: record (or remove) where it lives.
    Announce(SessionEvent),
}

/// What a socket's first `join`/`resume` needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Which node hosts `room` (claiming it for this node if none does).
    Room(String),
    /// Which node hosts the session this secret names.
    Session(SessionSecret),
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This node (possibly this one) hosts it.
    Home(NodeId),
    /// No node knows the session: this node's hub answers (`resume-failed`).
    Unknown,
    /// Redis could not answer: this node serves the socket alone (Redis is down; a resume of a session this node
    /// does not hold fails).
    Failed,
    /// No answer yet where one will come soon (the room is being restored by the node taking it over, or Redis
    /// failed to answer just once while it was answering): the socket is closed 4202 (`lookup-failed`) to try
    /// again, rather than answered by a hub that does not hold its session, which would end it.
    Retry,
    /// This node took the room over from a node that died, with the sessions that node had recorded.
    TakenOver(Vec<Restored>),
}

/// Where a socket of this node sends its events.
#[derive(Debug)]
enum Route {
    /// This node's hub; no `join`/`resume` yet.
    Fresh,
    /// Waiting for a lookup; its frames are held in order.
    Waiting(Vec<Bytes>),
    /// This node's hub, for good.
    Here,
    /// Another node's hub.
    Forwarded(NodeId),
}

#[derive(Debug)]
struct LocalSocket {
    ip: IpAddr,
    route: Route,
    /// What it has sent towards another node, against [`Ceiling`] (from its first such frame).
    spent: Option<Spent>,
}

/// What a socket whose frames leave this node (to its room's home, through Redis) may send before a hub counts
/// them: twice the hub's message rate and delivered bytes, burst included. The home counts them exactly and says
/// `rate-limited` long before; this cuts a flood at its origin, before every frame becomes a `PUBLISH`.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    messages_per_second: f64,
    message_burst: f64,
    bytes_per_second: f64,
    byte_burst: f64,
}

impl Ceiling {
    fn of(limits: &Limits) -> Option<Self> {
        if limits.messages_per_second == 0 {
            return None;
        }
        let bytes_per_second = match limits.delivered_bytes_per_second {
            0 => f64::INFINITY,
            rate => 2.0 * rate as f64,
        };
        Some(Self {
            messages_per_second: 2.0 * f64::from(limits.messages_per_second),
            message_burst: 2.0 * f64::from(limits.burst.max(1)),
            bytes_per_second,
            byte_burst: (4.0 * bytes_per_second).max(2.0 * limits.max_message_bytes as f64),
        })
    }
}

/// Tokens left under the [`Ceiling`].
#[derive(Debug)]
struct Spent {
    messages: f64,
    bytes: f64,
    refilled: Instant,
}

/// A socket of another node hosted in this node's hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    node: NodeId,
    conn: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Router {
    node: NodeId,
    local: HashMap<ConnId, LocalSocket>,
    hosted: HashMap<ConnId, Origin>,
    by_origin: HashMap<Origin, ConnId>,
    next_hosted: u64,
    /// Sessions of this node's hub, with their peer ids and rooms: what this node keeps alive in Redis.
    sessions: HashMap<SessionSecret, (PeerId, Arc<str>)>,
    rooms: HashMap<Arc<str>, usize>,
    actions: VecDeque<Action>,
    /// Handing everything to other nodes: no socket is hosted here any more.
    draining: bool,
    ceiling: Option<Ceiling>,
}

/// Just what routing needs from a client's frame; everything else is the hub's to check.
#[derive(serde::Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    room: Option<String>,
    session: Option<String>,
}

impl Router {
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            local: HashMap::new(),
            hosted: HashMap::new(),
            by_origin: HashMap::new(),
            next_hosted: HOSTED_BASE,
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            actions: VecDeque::new(),
            draining: false,
            ceiling: None,
        }
    }

    /// Cuts what a socket sends towards another node at twice `limits`' message rate and delivered bytes
    /// ([`Ceiling`]); without it, only the home's hub counts them.
    #[must_use]
    pub fn with_origin_limits(mut self, limits: &Limits) -> Self {
        self.ceiling = Ceiling::of(limits);
        self
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Rooms with a session on this node's hub: their `room:` keys are refreshed while this holds them.
    pub fn hosted_rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(|r| &**r)
    }

    /// Sessions on this node's hub, with their peer ids and rooms: their keys are refreshed while they live.
    pub fn hosted_sessions(&self) -> impl Iterator<Item = (&SessionSecret, &PeerId, &str)> {
        self.sessions.iter().map(|(s, (p, r))| (s, p, &**r))
    }

    /// Nodes this node's sockets are forwarded to: the I/O layer watches that they stay alive.
    pub fn homes(&self) -> Vec<NodeId> {
        let mut homes: Vec<NodeId> = self
            .local
            .values()
            .filter_map(|s| match &s.route {
                Route::Forwarded(home) => Some(home.clone()),
                _ => None,
            })
            .collect();
        homes.sort();
        homes.dedup();
        homes
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn handle_connect(
        &mut self,
        hub: &mut impl SignalHub,
        conn: ConnId,
        ip: IpAddr,
        now: Now,
    ) -> Result<(), Refusal> {
        hub.handle_connect(conn, ip, now)?;
        self.local.insert(
            conn,
            LocalSocket {
                ip,
                route: Route::Fresh,
                spent: None,
            },
        );
        Ok(())
    }

    /// Lets go of a socket that has sent no `join`/`resume` yet, without telling the hub: the I/O layer moves it to
    /// the hub shard of the room it is about to join (`web::cluster`). `None` (and nothing changes) once the socket
    /// has been routed.
    pub fn take_fresh(&mut self, conn: ConnId) -> Option<IpAddr> {
        match self.local.get(&conn) {
            Some(LocalSocket {
                ip,
                route: Route::Fresh,
                spent: None,
            }) => {
                let ip = *ip;
                self.local.remove(&conn);
                Some(ip)
            }
            _ => None,
        }
    }

    /// Takes in a socket that [`Self::take_fresh`] let go of in another router, once its hub has adopted it.
    pub fn adopt_fresh(&mut self, conn: ConnId, ip: IpAddr) {
        self.local.insert(
            conn,
            LocalSocket {
                ip,
                route: Route::Fresh,
                spent: None,
            },
        );
    }

    pub fn handle_text(&mut self, hub: &mut impl SignalHub, conn: ConnId, text: Bytes, now: Now) {
        let Some(socket) = self.local.get_mut(&conn) else {
            return;
        };
        let leaves = matches!(socket.route, Route::Forwarded(_) | Route::Waiting(_));
        if leaves && !admit(self.ceiling.as_ref(), &mut socket.spent, text.len(), now.instant) {
            tracing::debug!(%conn, "socket sent more than twice its rate towards another node; closing it with 4100");
            match std::mem::replace(&mut socket.route, Route::Here) {
                Route::Forwarded(home) => self.publish(home, Envelope::Closed { conn: conn.get() }, None),
                _ => hub.handle_closed(conn, now),
            }
            self.local.remove(&conn);
            self.close_local_with(conn, CloseCode::RATE_LIMITED, "rate-limited");
            self.drain(hub);
            return;
        }
        match &mut socket.route {
            Route::Here => hub.handle_text(conn, utf8(&text), now),
            Route::Forwarded(home) => {
                let home = home.clone();
                self.publish(home, Envelope::Text { conn: conn.get(), text }, Some(conn));
            }
            Route::Waiting(held)
                if held.len() < MAX_WAITING
                    && held.iter().map(Bytes::len).sum::<usize>() + text.len() <= MAX_WAITING_BYTES =>
            {
                held.push(text)
            }
            Route::Waiting(_) => {
                tracing::debug!(%conn, "socket sent too much while its room was looked up; closing it with 4100");
                hub.handle_closed(conn, now);
                self.local.remove(&conn);
                self.close_local_with(conn, CloseCode::RATE_LIMITED, "room-lookup-overflow");
            }
            Route::Fresh => match query_of(utf8(&text)) {
                // A session of this node's hub needs no lookup (and survives Redis being away).
                Some(Query::Session(secret)) if self.sessions.contains_key(&secret) => {
                    socket.route = Route::Here;
                    hub.handle_text(conn, utf8(&text), now);
                }
                Some(query) => {
                    socket.route = Route::Waiting(vec![text]);
                    self.actions.push_back(Action::Lookup { conn, query });
                }
                None => hub.handle_text(conn, utf8(&text), now),
            },
        }
        self.drain(hub);
    }

    pub fn handle_activity(&mut self, hub: &mut impl SignalHub, conn: ConnId, now: Now) {
        match self.forwarded(conn) {
            Some(home) => self.publish(home, Envelope::Activity { conn: conn.get() }, Some(conn)),
            None => hub.handle_activity(conn, now),
        }
    }

    pub fn handle_binary(&mut self, hub: &mut impl SignalHub, conn: ConnId, now: Now) {
        match self.forwarded(conn) {
            Some(home) => self.publish(home, Envelope::Binary { conn: conn.get() }, Some(conn)),
            None => hub.handle_binary(conn, now),
        }
        self.drain(hub);
    }

    /// The socket is gone (closed by the client, or by the I/O layer as too slow).
    pub fn handle_closed(&mut self, hub: &mut impl SignalHub, conn: ConnId, now: Now) {
        match self.local.remove(&conn).map(|s| s.route) {
            Some(Route::Forwarded(home)) => self.publish(home, Envelope::Closed { conn: conn.get() }, None),
            _ => hub.handle_closed(conn, now),
        }
        self.drain(hub);
    }

    /// Where the room or session of a socket's first `join`/`resume` lives.
    pub fn handle_lookup(&mut self, hub: &mut impl SignalHub, conn: ConnId, answer: Answer, now: Now) {
        // Sessions taken over from a dead home are this node's from now on, whether or not the socket that asked is
        // still here: the room's key names this node, and the room's other members resume against them.
        let answer = match answer {
            Answer::TakenOver(sessions) => {
                for session in sessions {
                    hub.restore(session, now);
                }
                // The restored sessions' `Opened` events, before any frame of theirs.
                self.drain(hub);
                Answer::TakenOver(Vec::new())
            }
            other => other,
        };
        let Some(socket) = self.local.get_mut(&conn) else {
            return;
        };
        let held = match std::mem::replace(&mut socket.route, Route::Here) {
            Route::Waiting(held) => held,
            other => {
                socket.route = other;
                return;
            }
        };
        match answer {
            Answer::Home(home) if home != self.node => {
                tracing::debug!(%conn, %home, "socket forwarded to the node hosting its room");
                let ip = socket.ip;
                socket.route = Route::Forwarded(home.clone());
                // The socket leaves this hub (it has no session here yet), and joins the home's.
                hub.handle_closed(conn, now);
                self.publish(home.clone(), Envelope::Connect { conn: conn.get(), ip }, Some(conn));
                for text in held {
                    self.publish(home.clone(), Envelope::Text { conn: conn.get(), text }, Some(conn));
                }
            }
            Answer::Retry => self.close_local(conn, "lookup-failed"),
            Answer::Home(_) | Answer::Unknown | Answer::Failed | Answer::TakenOver(_) => {
                let sessions = self.sessions.len();
                for text in held {
                    hub.handle_text(conn, utf8(&text), now);
                }
                self.drain(hub);
                // The hub refused the join without closing the socket (its meta too large, the room full): the
                // socket's next `join` is looked up again, else it would make a private copy of a room that lives
                // on another node.
                if self.sessions.len() == sessions {
                    if let Some(socket) = self.local.get_mut(&conn).filter(|s| matches!(s.route, Route::Here)) {
                        socket.route = Route::Fresh;
                    }
                }
            }
        }
        self.drain(hub);
    }

    /// A message from another node's channel.
    pub fn handle_message(&mut self, hub: &mut impl SignalHub, message: Message, now: Now) {
        let Message { from, envelope } = message;
        match envelope {
            Envelope::Connect { conn, .. } if self.draining => self.publish(from, moved(conn), None),
            Envelope::Connect { conn, ip } => {
                let origin = Origin {
                    node: from.clone(),
                    conn,
                };
                let id = ConnId::new(self.next_hosted);
                self.next_hosted += 1;
                match hub.handle_connect(id, ip, now) {
                    Ok(()) => {
                        if let Some(old) = self.by_origin.insert(origin.clone(), id) {
                            self.hosted.remove(&old);
                            hub.handle_closed(old, now);
                        }
                        self.hosted.insert(id, origin);
                    }
                    Err(refusal) => {
                        let code = refusal.code.close_code().unwrap_or(CloseCode::TOO_MANY_CONNECTIONS);
                        let reason = refusal.code.as_str().to_owned();
                        self.publish(
                            from,
                            Envelope::Close {
                                conn,
                                code: code.0,
                                reason,
                            },
                            None,
                        );
                    }
                }
            }
            Envelope::Text { conn, text } => match self.hosted_id(&from, conn) {
                Some(id) => hub.handle_text(id, utf8(&text), now),
                // This node forgot the socket (Redis was away, or it restarted): the client resumes elsewhere.
                None => self.publish(from, moved(conn), None),
            },
            Envelope::Activity { conn } => {
                if let Some(id) = self.hosted_id(&from, conn) {
                    hub.handle_activity(id, now);
                }
            }
            Envelope::Binary { conn } => {
                if let Some(id) = self.hosted_id(&from, conn) {
                    hub.handle_binary(id, now);
                }
            }
            Envelope::Closed { conn } => {
                let origin = Origin { node: from, conn };
                if let Some(id) = self.by_origin.remove(&origin) {
                    self.hosted.remove(&id);
                    hub.handle_closed(id, now);
                }
            }
            Envelope::Send { conn, text } => {
                let conn = ConnId::new(conn);
                if self.forwarded(conn).is_some_and(|home| home == from) {
                    self.actions.push_back(Action::Local(Output::Send { conn, text }));
                }
            }
            Envelope::Ping { conn } => {
                let conn = ConnId::new(conn);
                if self.forwarded(conn).is_some_and(|home| home == from) {
                    self.actions.push_back(Action::Local(Output::Ping { conn }));
                }
            }
            Envelope::Close { conn, code, reason } => {
                let conn = ConnId::new(conn);
                if self.forwarded(conn).is_some_and(|home| home == from) {
                    self.local.remove(&conn);
                    let code = CloseCode(code);
                    self.actions
                        .push_back(Action::Local(Output::Close { conn, code, reason }));
                }
            }
        }
        self.drain(hub);
    }

    /// `node` stopped heartbeating: this node's sockets forwarded there are closed with 4202 (they resume or join
    /// again through a live node), and the sockets it had handed here are dropped (their sessions wait for a resume).
    pub fn handle_node_gone(&mut self, hub: &mut impl SignalHub, node: &NodeId, now: Now) {
        let forwarded: Vec<ConnId> = self
            .local
            .iter()
            .filter(|(_, s)| matches!(&s.route, Route::Forwarded(home) if home == node))
            .map(|(c, _)| *c)
            .collect();
        for conn in forwarded {
            self.local.remove(&conn);
            self.close_local(conn, "node-gone");
        }
        let hosted: Vec<(Origin, ConnId)> = self
            .by_origin
            .iter()
            .filter(|(o, _)| o.node == *node)
            .map(|(o, c)| (o.clone(), *c))
            .collect();
        for (origin, id) in hosted {
            self.by_origin.remove(&origin);
            self.hosted.remove(&id);
            hub.handle_closed(id, now);
        }
        self.drain(hub);
    }

    /// Another node holds `room` now: it took the room over while this node was cut off from Redis (its heartbeat
    /// key expired), and this node kept serving it. Every socket of the room — this node's and those hosted for
    /// other nodes — is closed with 4202 and resumes at the new home, which restored the sessions from the journal;
    /// this node drops them without recording anything (the records are the new home's).
    pub fn handle_room_lost(&mut self, hub: &mut impl SignalHub, room: &str) {
        hub.handle_room_lost(room);
        self.sessions.retain(|_, (_, r)| &**r != room);
        self.rooms.remove(room);
        self.drain(hub);
    }

    /// The link to the other nodes broke (pub/sub down): what they were told or were to tell may be lost, so every
    /// socket that depends on another node is closed; clients resume, and the protocol's replay and resend cover
    /// the gap.
    pub fn handle_link_lost(&mut self, hub: &mut impl SignalHub, now: Now) {
        let homes = self.homes();
        for home in &homes {
            self.handle_node_gone(hub, home, now);
        }
        // The sockets hosted for other nodes: their nodes are told (publishing may still work), so that their
        // clients resume at once rather than at their next frame.
        let hosted: Vec<(ConnId, Origin)> = self.hosted.drain().collect();
        self.by_origin.clear();
        for (id, origin) in hosted {
            hub.handle_closed(id, now);
            let close = Envelope::Close {
                conn: origin.conn,
                code: CloseCode::SHUTTING_DOWN.0,
                reason: "link-lost".into(),
            };
            self.publish(origin.node, close, None);
        }
        self.drain(hub);
    }

    /// An envelope for or from `conn` could not be queued: that socket holds more of the queue to Redis than its
    /// share (Redis is slow for it, or it is sent more than Redis takes). It alone is closed with 4202 and resumes,
    /// where a full queue closes every socket that depends on another node ([`Router::handle_link_lost`]).
    pub fn handle_unpublished(&mut self, hub: &mut impl SignalHub, conn: ConnId, now: Now) {
        self.close_depending(hub, conn, "link-too-slow", now);
    }

    /// An envelope for or from `conn` was published but no node received it (the other node was subscribing again,
    /// or gone): that socket is closed with 4202 like [`Router::handle_unpublished`], and resumes.
    pub fn handle_undelivered(&mut self, hub: &mut impl SignalHub, conn: ConnId, now: Now) {
        self.close_depending(hub, conn, "undelivered", now);
    }

    fn close_depending(&mut self, hub: &mut impl SignalHub, conn: ConnId, reason: &str, now: Now) {
        if let Some(socket) = self.local.remove(&conn) {
            match socket.route {
                Route::Forwarded(home) => self.publish(home, Envelope::Closed { conn: conn.get() }, None),
                _ => hub.handle_closed(conn, now),
            }
            self.close_local(conn, reason);
        } else if let Some(origin) = self.hosted.remove(&conn) {
            self.by_origin.remove(&origin);
            hub.handle_closed(conn, now);
            let close = Envelope::Close {
                conn: origin.conn,
                code: CloseCode::SHUTTING_DOWN.0,
                reason: reason.into(),
            };
            self.publish(origin.node, close, None);
        }
        self.drain(hub);
    }

    /// Drain: every socket of this node, and every socket hosted here for another node, is closed with 4202 so that
    /// it resumes elsewhere; sockets other nodes forward here from now on are sent back the same way. The hub's
    /// sessions stay (the I/O layer stops recording them) until the node that claims their room restores them.
    pub fn handle_drain(&mut self, hub: &mut impl SignalHub) {
        self.draining = true;
        let forwarded: Vec<ConnId> = self
            .local
            .iter()
            .filter(|(_, s)| matches!(s.route, Route::Forwarded(_)))
            .map(|(c, _)| *c)
            .collect();
        for conn in forwarded {
            if let Some(home) = self.forwarded(conn) {
                self.publish(home, Envelope::Closed { conn: conn.get() }, None);
            }
            self.local.remove(&conn);
            self.close_local(conn, "draining");
        }
        hub.handle_shutdown();
        self.drain(hub);
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn handle_timeout(&mut self, hub: &mut impl SignalHub, now: Now) {
        hub.handle_timeout(now);
        self.drain(hub);
    }

    /// Moves the hub's outputs into actions: a frame for a socket hosted for another node goes to that node.
    pub fn drain(&mut self, hub: &mut impl SignalHub) {
        while let Some(output) = hub.poll_output() {
            match output {
                Output::Send { conn, text } => match self.hosted.get(&conn) {
                    Some(origin) => {
                        let (node, remote) = (origin.node.clone(), origin.conn);
                        self.publish(node, Envelope::Send { conn: remote, text }, Some(conn));
                    }
                    None => self.actions.push_back(Action::Local(Output::Send { conn, text })),
                },
                Output::Ping { conn } => match self.hosted.get(&conn) {
                    Some(origin) => {
                        let (node, remote) = (origin.node.clone(), origin.conn);
                        self.publish(node, Envelope::Ping { conn: remote }, Some(conn));
                    }
                    None => self.actions.push_back(Action::Local(Output::Ping { conn })),
                },
                Output::Close { conn, code, reason } => match self.hosted.remove(&conn) {
                    Some(origin) => {
                        self.by_origin.remove(&origin);
                        let envelope = Envelope::Close {
                            conn: origin.conn,
                            code: code.0,
                            reason,
                        };
                        self.publish(origin.node, envelope, None);
                    }
                    None => self
                        .actions
                        .push_back(Action::Local(Output::Close { conn, code, reason })),
                },
                Output::Session(event) => {
                    self.track(&event);
                    self.actions.push_back(Action::Announce(event));
                }
                other => self.actions.push_back(Action::Local(other)),
            }
        }
    }

    fn track(&mut self, event: &SessionEvent) {
        match event {
            SessionEvent::Opened { secret, room, peer, .. } => {
                if self
                    .sessions
                    .insert(secret.clone(), (peer.clone(), room.clone()))
                    .is_none()
                {
                    *self.rooms.entry(room.clone()).or_insert(0) += 1;
                }
            }
            SessionEvent::Numbered { .. } | SessionEvent::Forgot { .. } | SessionEvent::Handled { .. } => {}
            SessionEvent::Ended { secret, .. } => {
                let Some((_, room)) = self.sessions.remove(secret) else {
                    return;
                };
                if let Some(n) = self.rooms.get_mut(&room) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.rooms.remove(&room);
                    }
                }
            }
        }
    }

    fn forwarded(&self, conn: ConnId) -> Option<NodeId> {
        match &self.local.get(&conn)?.route {
            Route::Forwarded(home) => Some(home.clone()),
            _ => None,
        }
    }

    fn hosted_id(&self, node: &NodeId, conn: u64) -> Option<ConnId> {
        let origin = Origin {
            node: node.clone(),
            conn,
        };
        self.by_origin.get(&origin).copied()
    }

    fn publish(&mut self, node: NodeId, envelope: Envelope, owner: Option<ConnId>) {
        let bytes = Message {
            from: self.node.clone(),
            envelope,
        }
        .encode();
        self.actions.push_back(Action::Publish { node, bytes, owner });
    }

    fn close_local(&mut self, conn: ConnId, reason: &str) {
        self.close_local_with(conn, CloseCode::SHUTTING_DOWN, reason);
    }

    fn close_local_with(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        let close = Output::Close {
            conn,
            code,
            reason: reason.to_owned(),
        };
        self.actions.push_back(Action::Local(close));
    }
}

/// The room lookup a socket's first frame needs, if it is a `join` or a `resume`.
fn query_of(text: &str) -> Option<Query> {
    let peek: Peek = serde_json::from_str(text).ok()?;
    match peek.kind.as_str() {
        "join" => peek.room.filter(|r| !r.is_empty() && r.len() <= 128).map(Query::Room),
        "resume" => peek
            .session
            .as_deref()
            .and_then(SessionSecret::parse)
            .map(Query::Session),
        _ => None,
    }
}

fn moved(conn: u64) -> Envelope {
    Envelope::Close {
        conn,
        code: CloseCode::SHUTTING_DOWN.0,
        reason: "moved".into(),
    }
}

/// Texts reach the router from a WebSocket text frame or a decoded envelope, both checked UTF-8.
fn utf8(text: &Bytes) -> &str {
    std::str::from_utf8(text).unwrap_or_default()
}

/// Takes one frame of `bytes` from a socket's tokens under `ceiling` (none: always).
fn admit(ceiling: Option<&Ceiling>, spent: &mut Option<Spent>, bytes: usize, now: Instant) -> bool {
    let Some(c) = ceiling else { return true };
    let spent = spent.get_or_insert(Spent {
        messages: c.message_burst,
        bytes: c.byte_burst,
        refilled: now,
    });
    let elapsed = now.saturating_duration_since(spent.refilled).as_secs_f64();
    spent.refilled = now;
    spent.messages = (spent.messages + elapsed * c.messages_per_second).min(c.message_burst);
    spent.bytes = (spent.bytes + elapsed * c.bytes_per_second).min(c.byte_burst);
    if spent.messages < 1.0 || spent.bytes < bytes as f64 {
        return false;
    }
    spent.messages -= 1.0;
    spent.bytes -= bytes as f64;
    true
}
