//! The room hub, one mechanism per file: [`sockets`] (each socket's rate, errors, heartbeat and close), [`stream`]
//! (each session's numbered stream: delivery under the byte budgets, replay, acknowledgements, resume), [`rooms`]
//! (membership: join, leave, signal, broadcast, expiry), [`outcomes`] (connection reports paired and diagnosed),
//! [`timers`] (the queue of deadlines: heartbeats, grace periods). Frames are written by [`crate::frame`]; this file
//! holds the driving contract ([`SignalHub`]), the state, and the dispatch of client messages.

mod counters;
mod outcomes;
pub use outcomes::report_allowance;
mod rooms;
mod sockets;
mod stream;
mod timers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use rand::RngCore;
use serde_json::value::RawValue;

use crate::budget::{Budget, ByteLimits, SharedBytes, Source};
use crate::frame::{Frame, LeftReason};
use crate::id::{PeerId, SessionSecret};
use crate::protocol::{self, ClientMessage, CloseCode, ErrorCode, Refusal};

use counters::Counters;
use rooms::Room;
use sockets::{Admission, Conn};
use stream::Session;
use timers::Timers;

/// The I/O layer's id for one socket. The I/O layer numbers its sockets; the hub never makes one and never writes
/// one into a frame (it appears only in logs, as `conn=N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The clock, read once by the I/O layer per event: a monotonic instant for timers and Unix seconds for token
/// expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix: u64,
}

/// What the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a text frame (always UTF-8 JSON). `Bytes` so the replay buffer and the socket share one allocation.
    Send { conn: ConnId, text: Bytes },
    /// Send a WebSocket ping: the socket has been quiet for the heartbeat interval (its pong comes back as
    /// [`SignalHub::handle_activity`]).
    Ping { conn: ConnId },
    /// Close the socket with this code. The hub has already forgotten the socket.
    Close {
        conn: ConnId,
        code: CloseCode,
        reason: String,
    },
    /// A pair of peers was diagnosed from their `outcome` reports (or one of them and a deadline); both peers have
    /// been sent a `diagnosis` frame. The I/O layer records it (`outcome::Outcomes::record`).
    Outcome(Box<outcome::Diagnosis>),
    /// A session began or ended. Only from a hub built [`MemoryHub::with_session_events`]: a multi-node I/O layer
    /// uses them to tell other nodes where a session lives (`docs/scaling.md`).
    Session(SessionEvent),
}

/// A session's life, for an I/O layer that shares it with other nodes: enough to rebuild the session elsewhere
/// ([`Restored`]) if this node dies. Emitted in order, each before the frames it concerns are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// `joined` was sent (or the session was restored here): the session `secret` is `peer` in `room`.
    Opened {
        secret: SessionSecret,
        room: Arc<str>,
        peer: PeerId,
        /// Its public metadata as JSON.
        meta: Arc<str>,
        /// The source its frames are charged to.
        ip: IpAddr,
        next_seq: u64,
        client_seq: u64,
    },
    /// A frame of `peer`'s stream got its number; `kept` is the frame when it is kept for replay.
    Numbered {
        peer: PeerId,
        seq: u64,
        kept: Option<Bytes>,
    },
    /// `peer`'s frames through `through` are no longer kept.
    Forgot { peer: PeerId, through: u64 },
    /// The highest client `seq` handled for `peer`.
    Handled { peer: PeerId, client_seq: u64 },
    /// The session left or its grace ran out; a `resume` naming it fails from now on.
    Ended {
        secret: SessionSecret,
        peer: PeerId,
        room: Arc<str>,
    },
}

/// A session rebuilt from what another node's [`SessionEvent`]s recorded; it starts its grace period on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub secret: SessionSecret,
    pub room: Arc<str>,
    pub peer: PeerId,
    pub meta: Arc<str>,
    pub ip: IpAddr,
    pub next_seq: u64,
    pub client_seq: u64,
    /// Kept frames in order of their numbers.
    pub frames: Vec<(u64, Bytes)>,
}

/// The burst of [`Limits::delivered_bytes_per_second`], in seconds of it.
pub const DELIVERY_BURST_SECS: usize = 4;

/// Every bound a stranger could otherwise push. The `[signal]` section of the server's configuration file holds
/// these keys (durations in seconds); the fields marked `skip` are not configurable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub burst: u32,
    /// Bytes of `data` a socket's signals and broadcasts may have delivered a second, a broadcast counting once per
    /// recipient, after a burst of [`DELIVERY_BURST_SECS`] seconds' worth (at least one largest broadcast to a full
    /// room); 0: no limit. The message rate alone let one socket have 64 KiB copied to 49 peers 50 times a second.
    pub delivered_bytes_per_second: usize,
    pub max_peers_per_room: usize,
    pub max_rooms: usize,
    pub max_connections_per_ip: usize,
    /// Messages queued for a peer whose socket dropped; further signals are refused (`queue-full`).
    pub max_queued: usize,
    /// Unacknowledged messages kept for a connected peer; older ones are forgotten (a resume from before them fails).
    #[serde(skip)]
    pub max_unacked: usize,
    /// Bytes kept for one session: its unacknowledged frames while connected (older ones are forgotten beyond it),
    /// its queue while disconnected (further messages are refused, `queue-full`).
    pub max_session_bytes: usize,
    /// Bytes kept for every session of one source (an IPv4 address, an IPv6 /64): `source-full` beyond it.
    pub max_source_bytes: usize,
    /// Bytes kept for every session of the hub: `server-full` beyond it. Sized from the machine by the I/O layer
    /// (`web` turns a configured 0 into an eighth of memory) before the hub sees it; 0 is therefore what a
    /// configuration file that leaves it out means.
    #[serde(default)]
    pub max_total_bytes: usize,
    #[serde(skip)]
    pub max_meta_bytes: usize,
    /// Errors on one socket before it is closed for a protocol violation.
    #[serde(skip)]
    pub max_errors: u32,
    #[serde(with = "seconds")]
    pub heartbeat_interval: Duration,
    #[serde(with = "seconds")]
    pub heartbeat_timeout: Duration,
    #[serde(with = "seconds")]
    pub resume_grace: Duration,
    /// A socket that has neither joined nor resumed this long after it connected is closed (4003 `join-timeout`):
    /// answering pings would keep it, and its connection slot, for good.
    #[serde(with = "seconds")]
    pub join_timeout: Duration,
    /// How long the first `outcome` report of a pair waits for the other side's before it is diagnosed alone.
    #[serde(skip)]
    pub outcome_deadline: Duration,
}

/// A duration as whole seconds, the unit of the configuration file.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            burst: 100,
            delivered_bytes_per_second: 1 << 20,
            max_peers_per_room: 50,
            max_rooms: 10_000,
            max_connections_per_ip: 20,
            max_queued: 256,
            max_unacked: 1024,
            // A full replay of 1 024 frames of 2 KB (SDP-sized) fits; the attack of issue 7 held 60 MB per session.
            max_session_bytes: 4 << 20,
            max_source_bytes: 16 << 20,
            max_total_bytes: 256 << 20,
            max_meta_bytes: 1024,
            max_errors: 20,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(25),
            resume_grace: Duration::from_secs(30),
            join_timeout: Duration::from_secs(10),
            // Both sides report within a second of each other when they agree; a side that failed to connect
            // reports at its own failure or timeout, which the SDK starts from the same offer.
            outcome_deadline: Duration::from_secs(10),
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
    pub sessions: usize,
    pub rooms: usize,
    pub relayed: u64,
    /// Bytes of frames kept for sessions (replay buffers and queues), as charged to the budgets.
    pub held_bytes: usize,
    /// Sources holding any of them.
    pub held_sources: usize,
    /// Frames refused for a budget (`undeliverable` `queue-full`, `source-full`, `server-full`; silently for a
    /// broadcast).
    pub refused: u64,
    /// Sessions whose socket dropped, waiting for a resume until `resume_grace` runs out.
    pub sessions_in_grace: usize,
    /// Frames kept for replay over all sessions (unacknowledged, or queued for a dropped peer).
    pub replay_frames: usize,
    /// Client messages handled, by `type`.
    pub messages: BTreeMap<&'static str, u64>,
    /// `error` frames sent, by code.
    pub errors: BTreeMap<&'static str, u64>,
    /// Sockets the hub closed, by WebSocket close code.
    pub closes: BTreeMap<u16, u64>,
    /// `undeliverable` frames sent, by reason.
    pub undeliverable: BTreeMap<&'static str, u64>,
    /// Sessions resumed on a new socket.
    pub resumes: u64,
    /// `outcome` reports dropped: about a peer the reporter had not negotiated with since their pair was last
    /// diagnosed, or past the reporter's allowance.
    pub outcomes_refused: u64,
}

/// The protocol's room logic, whatever keeps the rooms. The I/O layer drives one of these.
pub trait SignalHub: Send {
    /// Would a new socket from `ip` be accepted? Asked before the WebSocket upgrade.
    fn check_connect(&self, ip: IpAddr) -> Result<(), Refusal>;
    /// Would `join` succeed? Asked before the upgrade and by the HTTP twin of the endpoint.
    fn check_join(&self, room: &str, token: Option<&str>, now: Now) -> Result<(), Refusal>;
    fn handle_connect(&mut self, conn: ConnId, ip: IpAddr, now: Now) -> Result<(), Refusal>;
    fn handle_text(&mut self, conn: ConnId, text: &str, now: Now);
    /// A frame that is not text (a pong, a ping) arrived: the socket is alive.
    fn handle_activity(&mut self, conn: ConnId, now: Now);
    /// A binary frame arrived: not part of protocol v1, answered with `bad-message` (counted like any error).
    fn handle_binary(&mut self, conn: ConnId, now: Now);
    /// The socket is gone (closed by the peer, by the network, or after an [`Output::Close`]).
    fn handle_closed(&mut self, conn: ConnId, now: Now);
    fn handle_timeout(&mut self, now: Now);
    /// Closes every socket with 4202 (retry now: another server will answer).
    fn handle_shutdown(&mut self);
    /// Takes over a session another node held (it died): the session waits for its resume, in its room.
    fn restore(&mut self, session: Restored, now: Now);
    /// Another node holds `room` now (it took the room over while this one was cut off from the cluster): every
    /// socket of the room is closed with 4202 (`room-moved`), to resume at the room's new home, which restored its
    /// sessions; they are dropped here without a word (no `peer-left`, no [`SessionEvent::Ended`]: the records are
    /// the new home's).
    fn handle_room_lost(&mut self, room: &str);
    fn poll_output(&mut self) -> Option<Output>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn stats(&self) -> HubStats;
}

/// Produces `iceServers` (a JSON array) with a fresh credential for a peer id.
pub type IceServerSource = Box<dyn Fn(&PeerId, u64) -> Box<RawValue> + Send>;

/// Rooms held in this process.
pub struct MemoryHub<R = rand::rngs::StdRng> {
    limits: Limits,
    /// With a secret, `join` needs an HS256 token signed by it.
    token_secret: Option<Vec<u8>>,
    ice_servers: IceServerSource,
    rng: R,
    conns: HashMap<ConnId, Conn, RandomState>,
    /// Sockets per source.
    per_source: HashMap<Source, usize>,
    budget: Budget,
    sessions: HashMap<PeerId, Session, RandomState>,
    by_secret: HashMap<SessionSecret, PeerId>,
    rooms: HashMap<Arc<str>, Room>,
    outputs: VecDeque<Output>,
    timers: Timers,
    /// The `now` of the event being handled.
    clock: Instant,
    relayed: u64,
    refused: u64,
    /// `outcome` reports dropped: about a peer the reporter did not negotiate with, or past its allowance.
    outcomes_refused: u64,
    counters: Counters,
    /// Connection reports waiting for their pair.
    pairing: outcomes::Pairing,
    /// Emit [`Output::Session`]: off unless an I/O layer asks.
    session_events: bool,
}

impl<R> std::fmt::Debug for MemoryHub<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHub")
            .field("connections", &self.conns.len())
            .field("sessions", &self.sessions.len())
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl<R: RngCore + Send> MemoryHub<R> {
    /// Gives back the memory of tables a load left mostly empty (a `HashMap` never shrinks by itself): the soak
    /// benchmark found the signaling side holding 7 of the 16 MiB 2 000 sockets had added, after they left.
    fn shrink_after_load(&mut self) {
        shrink(&mut self.conns);
        shrink(&mut self.per_source);
        shrink(&mut self.sessions);
        shrink(&mut self.by_secret);
        shrink(&mut self.rooms);
        self.pairing.shrink();
        self.timers.shrink();
        if self.outputs.capacity() > 4 * self.outputs.len() + 64 {
            self.outputs.shrink_to(2 * self.outputs.len());
        }
    }

    pub fn new(
        limits: Limits,
        token_secret: Option<Vec<u8>>,
        ice_servers: IceServerSource,
        rng: R,
        now: Instant,
    ) -> Self {
        let budget = Budget::new(ByteLimits {
            session: limits.max_session_bytes,
            source: limits.max_source_bytes,
            total: limits.max_total_bytes,
        });
        Self {
            limits,
            token_secret,
            ice_servers,
            rng,
            conns: HashMap::default(),
            per_source: HashMap::new(),
            budget,
            sessions: HashMap::default(),
            by_secret: HashMap::new(),
            rooms: HashMap::new(),
            outputs: VecDeque::new(),
            timers: Timers::default(),
            clock: now,
            relayed: 0,
            refused: 0,
            outcomes_refused: 0,
            counters: Counters::default(),
            pairing: outcomes::Pairing::default(),
            session_events: false,
        }
    }

    /// Shares the source and total byte budgets with the other hubs of `shared` (the shards of one server), so that
    /// each is the configured one however many hubs there are.
    #[must_use]
    pub fn with_shared_bytes(mut self, shared: Arc<SharedBytes>) -> Self {
        self.budget.share(shared);
        self
    }

    /// Shares the per-source outcome-report allowance ([`report_allowance`]) with the other hubs of one server.
    #[must_use]
    pub fn with_shared_report_allowance(mut self, shared: Arc<source::RateLimiter>) -> Self {
        self.pairing.per_source = shared;
        self
    }

    /// Also emits [`Output::Session`] when a session begins and ends.
    #[must_use]
    pub fn with_session_events(mut self) -> Self {
        self.session_events = true;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes kept for the sessions of `ip`'s source (its IPv4 address or IPv6 /64).
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.budget.held_by(Source::from(ip))
    }

    /// Sends a frame outside any session's stream (`pong`, `resumed`, an error before `join`): `seq` is the
    /// caller's.
    fn send_unnumbered(&mut self, conn: ConnId, seq: u64, frame: &Frame<'_>) {
        self.outputs.push_back(Output::Send {
            conn,
            text: frame.encode(seq),
        });
    }

    fn handle_message(&mut self, conn: ConnId, msg: ClientMessage<'_>, now: Now) {
        Counters::count(&mut self.counters.messages, msg.kind());
        let peer = self.conns.get(&conn).and_then(|c| c.peer.clone());
        match (msg, peer) {
            (ClientMessage::Ping { ack }, peer) => self.ping(conn, peer, ack),
            (
                ClientMessage::Join {
                    room,
                    token,
                    meta,
                    rejoin,
                },
                None,
            ) => self.join(conn, room, token, meta, rejoin, now),
            (ClientMessage::Resume { session, last_seq }, None) => self.resume(conn, &session, last_seq),
            (ClientMessage::Join { .. } | ClientMessage::Resume { .. }, Some(_)) => self.error(
                conn,
                Refusal::new(ErrorCode::AlreadyJoined, "This socket has already joined a room."),
            ),
            (
                ClientMessage::Signal { .. }
                | ClientMessage::Broadcast { .. }
                | ClientMessage::Leave
                | ClientMessage::Outcome { .. }
                | ClientMessage::IceServers,
                None,
            ) => self.error(
                conn,
                Refusal::new(ErrorCode::NotJoined, "Join a room first (send `join`)."),
            ),
            (ClientMessage::Signal { to, data, id }, Some(from)) => {
                self.signal(conn, &from, &to, data, id.map(std::borrow::Cow::into_owned))
            }
            (ClientMessage::Broadcast { data }, Some(from)) => self.broadcast(conn, &from, data),
            (ClientMessage::Outcome { peer, report }, Some(from)) => self.outcome(conn, &from, &peer, report),
            (ClientMessage::IceServers, Some(peer)) => self.ice_servers(conn, &peer, now),
            (ClientMessage::Leave, Some(peer)) => {
                self.remove_session(&peer, LeftReason::Left);
                self.close(conn, CloseCode::NORMAL, "left");
            }
        }
    }
}

/// A socket that has not joined a room, taken out of one hub to be given to another ([`MemoryHub::take_unjoined`]):
/// its token bucket, error count and last sign of life go with it, so moving does not reset a limit.
pub struct Unjoined(Conn);

impl std::fmt::Debug for Unjoined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unjoined").finish_non_exhaustive()
    }
}

/// Placement, for an I/O layer that shards rooms over several hubs (`web::hub`): a room lives in one hub, so a socket
/// moves to its room's hub before its `join` (or `resume`) is handled there. None of this changes the protocol.
impl<R: RngCore + Send> MemoryHub<R> {
    /// Rooms held here.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Ends the session of `conn` now, as its client's `leave` would, whatever the socket's message budget: for an
    /// I/O layer that will not let it wait for a resume (its source has as many waiting as it may). The socket is
    /// closed as usual afterwards ([`SignalHub::handle_closed`]).
    pub fn end_session(&mut self, conn: ConnId, now: Now) {
        self.clock = now.instant;
        if let Some(peer) = self.conns.get(&conn).and_then(|c| c.peer.clone()) {
            self.remove_session(&peer, LeftReason::Lost);
        }
    }

    /// Is `room` held here? A join to it needs no room of the global limit.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Sets the room limit: a sharded I/O layer gives each hub what is left of the global limit before a `join`.
    pub fn set_max_rooms(&mut self, max_rooms: usize) {
        self.limits.max_rooms = max_rooms;
    }

    /// Every session's journal entries, as [`MemoryHub::journal_of`] gives them.
    pub fn journal(&self) -> Vec<SessionEvent> {
        self.journal_of(&self.session_peers())
    }

    /// The peers this hub holds a session for.
    pub fn session_peers(&self) -> Vec<PeerId> {
        self.sessions.keys().cloned().collect()
    }

    /// These sessions' journal entries, as if each had just been opened here with the frames it keeps: for a
    /// journal store that lost them (Redis restarted empty, or its keys expired), which would otherwise hold only
    /// what changes from now on, and no takeover could rebuild a session from that. Per session: every frame
    /// forgotten (what an expired journal may still hold), its kept frames, then `Opened`, whose numbers stand.
    /// A peer whose session has ended since is skipped.
    pub fn journal_of(&self, peers: &[PeerId]) -> Vec<SessionEvent> {
        let mut events = Vec::new();
        for (peer, s) in peers.iter().filter_map(|p| Some((p, self.sessions.get(p)?))) {
            events.push(SessionEvent::Forgot {
                peer: peer.clone(),
                through: u64::MAX,
            });
            for kept in &s.buffer {
                events.push(SessionEvent::Numbered {
                    peer: peer.clone(),
                    seq: kept.seq,
                    kept: Some(kept.text().clone()),
                });
            }
            events.push(SessionEvent::Opened {
                secret: s.secret.clone(),
                room: s.room.clone(),
                peer: peer.clone(),
                meta: s.meta.shared(),
                ip: s.source.ip(),
                next_seq: s.next_seq,
                client_seq: s.client_seq,
            });
        }
        events
    }

    /// Does this hub hold the session a `resume` claims?
    pub fn holds_session(&self, claim: &str) -> bool {
        SessionSecret::parse(claim).is_some_and(|secret| self.by_secret.contains_key(&secret))
    }

    /// Has this socket joined (or resumed) a session?
    pub fn is_joined(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.peer.is_some())
    }

    /// Takes a socket that has not joined out of this hub, without a close.
    pub fn take_unjoined(&mut self, conn: ConnId) -> Option<Unjoined> {
        if self.is_joined(conn) {
            return None;
        }
        let c = self.conns.remove(&conn)?;
        self.release_source(c.source);
        Some(Unjoined(c))
    }

    /// Gives this hub a socket [`take_unjoined`](Self::take_unjoined) took from another. Not checked against
    /// `max_connections_per_ip`: it was counted when it connected.
    pub fn adopt(&mut self, conn: ConnId, socket: Unjoined, now: Now) {
        self.clock = now.instant;
        *self.per_source.entry(socket.0.source).or_insert(0) += 1;
        self.seat(conn, socket.0);
    }
}

impl<R: RngCore + Send> SignalHub for MemoryHub<R> {
    fn check_connect(&self, ip: IpAddr) -> Result<(), Refusal> {
        let source = Source::from(ip);
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_connections_per_ip {
            return Err(Refusal::new(
                ErrorCode::TooManyConnections,
                format!(
                    "Too many sockets from {source} (at most {}); close some or retry later.",
                    self.limits.max_connections_per_ip
                ),
            ));
        }
        Ok(())
    }

    fn check_join(&self, room: &str, token: Option<&str>, now: Now) -> Result<(), Refusal> {
        protocol::check_name("room", room)?;
        self.check_token(room, token, now)?;
        self.check_room(room)
    }

    fn handle_connect(&mut self, conn: ConnId, ip: IpAddr, now: Now) -> Result<(), Refusal> {
        self.clock = now.instant;
        self.check_connect(ip)?;
        let source = Source::from(ip);
        *self.per_source.entry(source).or_insert(0) += 1;
        self.seat(conn, Conn::new(source, now.instant, &self.limits));
        tracing::info!(%conn, %ip, "signaling socket opened");
        Ok(())
    }

    fn handle_text(&mut self, conn: ConnId, text: &str, now: Now) {
        self.clock = now.instant;
        if text.len() > self.limits.max_message_bytes {
            let message = format!("Messages are limited to {} bytes.", self.limits.max_message_bytes);
            return self.error(conn, Refusal::new(ErrorCode::TooLarge, message));
        }
        match self.admit(conn, now) {
            Admission::Admitted => {}
            Admission::OverRate => return self.over_rate(conn),
            Admission::UnknownConn => return,
        }
        match protocol::parse(text) {
            Ok((msg, Some(seq)))
                if matches!(
                    msg,
                    ClientMessage::Signal { .. } | ClientMessage::Broadcast { .. } | ClientMessage::Outcome { .. }
                ) =>
            {
                if self.seen_before(conn, seq) {
                    return;
                }
                self.handle_message(conn, msg, now)
            }
            Ok((msg, _)) => self.handle_message(conn, msg, now),
            Err(refusal) => self.error(conn, refusal),
        }
    }

    fn handle_activity(&mut self, conn: ConnId, now: Now) {
        self.clock = now.instant;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.heard(now.instant);
        }
    }

    fn handle_binary(&mut self, conn: ConnId, now: Now) {
        self.clock = now.instant;
        if self.admit(conn, now) != Admission::Admitted {
            return;
        }
        let message = "Binary frames are not part of protocol v1: send JSON in text frames.";
        self.error(conn, Refusal::new(ErrorCode::BadMessage, message));
    }

    fn handle_closed(&mut self, conn: ConnId, now: Now) {
        self.clock = now.instant;
        if let Some(c) = self.forget_conn(conn) {
            let peer = c.peer.as_ref().map(PeerId::as_str).unwrap_or_default();
            tracing::info!(%conn, peer, "signaling socket closed by the client");
        }
    }

    fn handle_timeout(&mut self, now: Now) {
        self.clock = now.instant;
        self.sweep(now);
    }

    fn handle_shutdown(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.close(conn, CloseCode::SHUTTING_DOWN, "server-shutdown");
        }
    }

    fn restore(&mut self, session: Restored, now: Now) {
        self.clock = now.instant;
        self.restore_session(session, now);
    }

    fn handle_room_lost(&mut self, room: &str) {
        self.drop_room(room);
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_deadline()
    }

    fn stats(&self) -> HubStats {
        HubStats {
            connections: self.conns.len(),
            sessions: self.sessions.len(),
            rooms: self.rooms.len(),
            relayed: self.relayed,
            held_bytes: self.budget.total(),
            held_sources: self.budget.sources(),
            refused: self.refused,
            sessions_in_grace: self.sessions.values().filter(|s| s.conn.is_none()).count(),
            replay_frames: self.sessions.values().map(|s| s.buffer.len()).sum(),
            messages: self.counters.messages.clone(),
            errors: self.counters.errors.clone(),
            closes: self.counters.closes.clone(),
            undeliverable: self.counters.undeliverable.clone(),
            resumes: self.counters.resumes,
            outcomes_refused: self.outcomes_refused,
        }
    }
}

/// Shrinks a map whose capacity is more than four times what it holds (and more than a few entries), to twice.
fn shrink<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 4 * map.len() + 64 {
        map.shrink_to(2 * map.len());
    }
}
