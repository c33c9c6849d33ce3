//! The room hub: who is in which room, each session's numbered stream, and what to send where.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use serde_json::value::RawValue;

use crate::budget::{Budget, ByteLimits, Over, Source, FRAME_OVERHEAD};
use crate::protocol::{self, push_json_str, ClientMessage, CloseCode, ErrorCode, Refusal};
use crate::token::{verify_token, TokenError};

/// The I/O layer's id for one socket.
pub type ConnId = u64;

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
    /// Send a text frame.
    /// Send a text frame (always UTF-8 JSON). `Bytes` so the replay buffer and the socket share one allocation.
    Send { conn: ConnId, text: Bytes },
    /// Close the socket with this code. The hub has already forgotten the socket.
    Close {
        conn: ConnId,
        code: CloseCode,
        reason: String,
    },
}

/// Every bound a stranger could otherwise push.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub burst: u32,
    pub max_peers_per_room: usize,
    pub max_rooms: usize,
    pub max_connections_per_ip: usize,
    /// Messages queued for a peer whose socket dropped; further signals are refused (`queue-full`).
    pub max_queued: usize,
    /// Unacknowledged messages kept for a connected peer; older ones are forgotten (a resume from before them fails).
    pub max_unacked: usize,
    /// Bytes kept for one session: its unacknowledged frames while connected (older ones are forgotten beyond it),
    /// its queue while disconnected (further messages are refused, `queue-full`).
    pub max_session_bytes: usize,
    /// Bytes kept for every session of one source (an IPv4 address, an IPv6 /64): `source-full` beyond it.
    pub max_source_bytes: usize,
    /// Bytes kept for every session of the hub: `server-full` beyond it. Sized from the machine by the I/O layer
    /// (`web` turns a configured 0 into an eighth of memory) before the hub sees it.
    pub max_total_bytes: usize,
    pub max_meta_bytes: usize,
    /// Errors on one socket before it is closed for a protocol violation.
    pub max_errors: u32,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub resume_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            burst: 100,
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
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    fn poll_output(&mut self) -> Option<Output>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn stats(&self) -> HubStats;
}

/// Produces `iceServers` (a JSON array) with a fresh credential for a peer id.
pub type IceServerSource = Box<dyn Fn(&str, u64) -> Box<RawValue> + Send>;

/// One socket.
struct Conn {
    source: Source,
    /// The peer id of the session this socket carries, once joined or resumed.
    peer: Option<Arc<str>>,
    last_heard: Instant,
    tokens: f64,
    refilled: Instant,
    rate_strikes: u32,
    errors: u32,
}

/// A peer in a room; outlives its socket for the resume grace period.
struct Session {
    secret: String,
    room: Arc<str>,
    /// Charged for every kept frame: the source of the socket that joined.
    source: Source,
    /// Bytes of `buffer` as charged to the budgets.
    held: usize,
    /// JSON object shown to the other peers.
    meta: String,
    conn: Option<ConnId>,
    next_seq: u64,
    /// Highest client `seq` handled: a resent message at or below it is a duplicate and is dropped.
    client_seq: u64,
    buffer: VecDeque<Buffered>,
    disconnected: Option<Disconnected>,
}

struct Disconnected {
    at: Instant,
    /// The newest sequence number sent before the socket dropped: later ones surely were not delivered.
    last_sent: u64,
}

/// A signal's sender and message id, told if it is never delivered.
type SignalFrom = (Arc<str>, Option<String>);

/// A frame refused by a budget: which one, and the signal's sender handed back so the caller can name it.
struct Refused {
    over: Over,
    signal_from: Option<SignalFrom>,
}

impl Session {
    /// Forgets the oldest kept frame and refunds its bytes.
    fn forget_oldest(&mut self, budget: &mut Budget) -> Option<Buffered> {
        let b = self.buffer.pop_front()?;
        let n = charge_of(&b.text);
        self.held = self.held.saturating_sub(n);
        budget.release(self.source, n);
        Some(b)
    }

    /// Forgets every frame up to `seq`: acknowledged, or before a resume's `lastSeq`.
    fn forget_through(&mut self, seq: u64, budget: &mut Budget) {
        while self.buffer.front().is_some_and(|b| b.seq <= seq) {
            self.forget_oldest(budget);
        }
    }
}

/// What a kept frame costs its budgets.
fn charge_of(text: &Bytes) -> usize {
    text.len() + FRAME_OVERHEAD
}

struct Buffered {
    seq: u64,
    text: Bytes,
    /// For a `signal`: its sender and message id, told if it is never delivered.
    signal_from: Option<SignalFrom>,
}

struct Room {
    /// Peer ids in join order.
    members: Vec<Arc<str>>,
}

/// Rooms held in this process.
pub struct MemoryHub<R = rand::rngs::StdRng> {
    limits: Limits,
    /// With a secret, `join` needs an HS256 token signed by it.
    token_secret: Option<Vec<u8>>,
    ice_servers: IceServerSource,
    rng: R,
    conns: HashMap<ConnId, Conn>,
    /// Sockets per source.
    per_source: HashMap<Source, usize>,
    budget: Budget,
    sessions: HashMap<Arc<str>, Session>,
    by_secret: HashMap<String, Arc<str>>,
    rooms: HashMap<Arc<str>, Room>,
    outputs: VecDeque<Output>,
    next_sweep: Option<Instant>,
    /// The `now` of the event being handled.
    clock: Instant,
    relayed: u64,
    refused: u64,
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

/// Timers are checked at this granularity, so that a message costs no scan of every socket.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

impl<R: RngCore + Send> MemoryHub<R> {
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
            conns: HashMap::new(),
            per_source: HashMap::new(),
            budget,
            sessions: HashMap::new(),
            by_secret: HashMap::new(),
            rooms: HashMap::new(),
            outputs: VecDeque::new(),
            next_sweep: None,
            clock: now,
            relayed: 0,
            refused: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes kept for the sessions of `ip`'s source (its IPv4 address or IPv6 /64).
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.budget.held_by(Source::from(ip))
    }

    fn random_id(&mut self, prefix: &str, bytes: usize) -> String {
        let mut raw = [0u8; 16];
        let raw = raw.get_mut(..bytes.min(16)).unwrap_or_default();
        self.rng.fill_bytes(raw);
        let mut id = String::with_capacity(prefix.len() + 2 * raw.len());
        id.push_str(prefix);
        for b in raw.iter() {
            id.push_str(&format!("{b:02x}"));
        }
        id
    }

    /// Token check shared by `check_join` and `join`; returns the identity from the token.
    fn check_token(&self, room: &str, token: Option<&str>, now: Now) -> Result<Option<(String, Vec<String>)>, Refusal> {
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
        Ok(Some((claims.sub, claims.caps)))
    }

    fn check_room(&self, room: &str) -> Result<(), Refusal> {
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

    /// Sends an error: into the session's stream when the socket carries one, else with `seq` 0. Closes the socket
    /// when the code says so, or when the socket has made too many errors.
    fn error(&mut self, conn: ConnId, refusal: Refusal) {
        self.error_with_id(conn, refusal, None);
    }

    /// An error about one message, naming its `id` when the client gave one.
    fn error_with_id(&mut self, conn: ConnId, refusal: Refusal, id: Option<&str>) {
        let mut body = String::with_capacity(64 + refusal.message.len());
        body.push_str("\"type\":\"error\",\"code\":\"");
        body.push_str(refusal.code.as_str());
        body.push_str("\",\"message\":");
        push_json_str(&mut body, &refusal.message);
        if let Some(id) = id {
            body.push_str(",\"id\":");
            push_json_str(&mut body, id);
        }
        body.push('}');
        let peer = self.conns.get(&conn).and_then(|c| c.peer.clone());
        match peer {
            Some(peer) => {
                let _ = self.deliver(&peer, &body, None);
            }
            None => self.outputs.push_back(Output::Send {
                conn,
                text: Bytes::from(format!("{{\"seq\":0,{body}")),
            }),
        }
        let too_many = self.conns.get_mut(&conn).is_some_and(|c| {
            c.errors += 1;
            c.errors > self.limits.max_errors
        });
        if let Some(code) = refusal.code.close_code() {
            self.close(conn, code, refusal.code.as_str());
        } else if too_many {
            self.close(conn, CloseCode::PROTOCOL_VIOLATION, "protocol-violation");
        }
    }

    /// Closes a socket now; its session (if any) starts its grace period.
    fn close(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        let Some(c) = self.conns.remove(&conn) else { return };
        self.release_source(c.source);
        if let Some(peer) = c.peer {
            if let Some(s) = self.sessions.get_mut(&peer) {
                if s.conn == Some(conn) {
                    s.conn = None;
                    s.disconnected = Some(Disconnected {
                        at: self.clock,
                        last_sent: s.next_seq - 1,
                    });
                }
            }
        }
        self.outputs.push_back(Output::Close {
            conn,
            code,
            reason: reason.to_owned(),
        });
    }

    fn release_source(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Appends a stream message (`body` is the JSON object after `{"seq":N,`) to a peer's stream and sends it if
    /// the peer is connected. Refused when the peer is disconnected and its queue is over a budget.
    fn deliver(&mut self, peer: &str, body: &str, signal_from: Option<SignalFrom>) -> Result<(), Over> {
        self.deliver_with(peer, body.len(), |frame| frame.push_str(body), signal_from)
            .map_err(|refused| refused.over)
    }

    /// [`Self::deliver`] with the body written straight into the frame: one allocation per delivered message,
    /// shared by the replay buffer and the socket's queue. `body_len` must not be less than what `write_body`
    /// writes (the budgets are checked with it before anything is allocated). A refusal hands `signal_from` back,
    /// so the caller can name the message without having copied its id beforehand.
    ///
    /// Budgets: a disconnected peer's queue is never trimmed, so a frame over a budget is refused (nothing queued
    /// is dropped silently). A connected peer has been sent everything already; only its replay window shrinks:
    /// its own oldest unacknowledged frames are forgotten until the new one fits, and if none are left the frame
    /// is sent without being kept (a resume from before it fails). So a reader that never acknowledges holds at
    /// most its session budget, and no one else's frames are dropped to make room.
    fn deliver_with(
        &mut self,
        peer: &str,
        body_len: usize,
        write_body: impl FnOnce(&mut String),
        signal_from: Option<SignalFrom>,
    ) -> Result<(), Refused> {
        let limits = &self.limits;
        let budget = &mut self.budget;
        let Some(s) = self.sessions.get_mut(peer) else {
            return Err(Refused {
                over: Over::Session,
                signal_from,
            });
        };
        // `{"seq":` + at most 20 digits + `,`.
        let frame_len = body_len + 28;
        if let Some(d) = &s.disconnected {
            let queued = (s.next_seq - 1).saturating_sub(d.last_sent) as usize;
            let checked = if queued >= limits.max_queued {
                Err(Over::Session)
            } else {
                budget.check(s.source, s.held, frame_len + FRAME_OVERHEAD)
            };
            if let Err(over) = checked {
                self.refused += 1;
                return Err(Refused { over, signal_from });
            }
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let mut frame = String::with_capacity(frame_len);
        frame.push_str("{\"seq\":");
        frame.push_str(itoa(seq).as_str());
        frame.push(',');
        write_body(&mut frame);
        let text = Bytes::from(frame);
        let n = charge_of(&text);
        let keep = if s.disconnected.is_some() {
            true
        } else {
            if s.buffer.len() >= limits.max_unacked {
                s.forget_oldest(budget);
            }
            loop {
                if budget.check(s.source, s.held, n).is_ok() {
                    break true;
                }
                if s.forget_oldest(budget).is_none() {
                    break false;
                }
            }
        };
        if keep {
            budget.charge(s.source, n);
            s.held += n;
            s.buffer.push_back(Buffered {
                seq,
                text: text.clone(),
                signal_from,
            });
        }
        if let Some(conn) = s.conn {
            self.outputs.push_back(Output::Send { conn, text });
        }
        Ok(())
    }

    /// Takes one message from the socket's token bucket; false when the socket is over its rate.
    fn admit(&mut self, conn: ConnId, now: Now) -> Option<bool> {
        let limits = &self.limits;
        let c = self.conns.get_mut(&conn)?;
        c.last_heard = now.instant;
        let elapsed = now.instant.saturating_duration_since(c.refilled).as_secs_f64();
        c.refilled = now.instant;
        c.tokens = (c.tokens + elapsed * f64::from(limits.messages_per_second)).min(f64::from(limits.burst));
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            c.rate_strikes = 0;
            Some(true)
        } else {
            c.rate_strikes += 1;
            Some(false)
        }
    }

    fn handle_message(&mut self, conn: ConnId, msg: ClientMessage<'_>, now: Now) {
        let peer = self.conns.get(&conn).and_then(|c| c.peer.clone());
        match (msg, peer) {
            (ClientMessage::Ping { ack }, peer) => self.ping(conn, peer, ack),
            (ClientMessage::Join { room, token, meta }, None) => self.join(conn, room, token, meta, now),
            (ClientMessage::Resume { session, last_seq }, None) => self.resume(conn, &session, last_seq),
            (ClientMessage::Join { .. } | ClientMessage::Resume { .. }, Some(_)) => self.error(
                conn,
                Refusal::new(ErrorCode::AlreadyJoined, "This socket has already joined a room."),
            ),
            (ClientMessage::Signal { .. } | ClientMessage::Broadcast { .. } | ClientMessage::Leave, None) => self
                .error(
                    conn,
                    Refusal::new(ErrorCode::NotJoined, "Join a room first (send `join`)."),
                ),
            (ClientMessage::Signal { to, data, id }, Some(from)) => self.signal(conn, &from, &to, data, id),
            (ClientMessage::Broadcast { data }, Some(from)) => self.broadcast(&from, data),
            (ClientMessage::Leave, Some(peer)) => {
                self.remove_session(&peer);
                self.close(conn, CloseCode::NORMAL, "left");
            }
        }
    }

    fn ping(&mut self, conn: ConnId, peer: Option<Arc<str>>, ack: Option<u64>) {
        let (mut newest, mut client_seq) = (0, 0);
        if let Some(s) = peer.and_then(|p| self.sessions.get_mut(&p)) {
            if let Some(ack) = ack {
                s.forget_through(ack, &mut self.budget);
            }
            newest = s.next_seq - 1;
            client_seq = s.client_seq;
        }
        self.outputs.push_back(Output::Send {
            conn,
            text: Bytes::from(format!("{{\"seq\":{newest},\"type\":\"pong\",\"ack\":{client_seq}}}")),
        });
    }

    fn join(&mut self, conn: ConnId, room: String, token: Option<String>, meta: Option<&RawValue>, now: Now) {
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
            Some((sub, caps)) => {
                meta_object.insert("identity".into(), sub.into());
                caps
            }
            None => Vec::new(),
        };
        let meta = serde_json::Value::Object(meta_object).to_string();
        let peer: Arc<str> = self.random_id("p_", 8).into();
        let secret = self.random_id("s_", 16);
        let room: Arc<str> = room.into();

        let members = self.rooms.get(&room).map(|r| r.members.clone()).unwrap_or_default();
        let mut body = String::with_capacity(512);
        body.push_str("\"type\":\"joined\",\"session\":\"");
        body.push_str(&secret);
        body.push_str("\",\"peerId\":\"");
        body.push_str(&peer);
        body.push_str("\",\"room\":");
        push_json_str(&mut body, &room);
        body.push_str(",\"peers\":[");
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"id\":\"");
            body.push_str(m);
            body.push_str("\",\"meta\":");
            body.push_str(self.sessions.get(m).map_or("{}", |s| s.meta.as_str()));
            body.push('}');
        }
        body.push_str("],\"iceServers\":");
        body.push_str((self.ice_servers)(&peer, now.unix).get());
        body.push_str(",\"caps\":");
        body.push_str(&serde_json::to_string(&caps).unwrap_or_else(|_| "[]".into()));
        body.push_str(&format!(
            ",\"heartbeatMs\":{},\"resumeGraceMs\":{}}}",
            self.limits.heartbeat_interval.as_millis(),
            self.limits.resume_grace.as_millis()
        ));

        let source = self.conns.get(&conn).map_or(Source::V4([0; 4]), |c| c.source);
        let joined_notice = format!("\"type\":\"peer-joined\",\"peer\":{{\"id\":\"{peer}\",\"meta\":{meta}}}}}");
        self.sessions.insert(
            peer.clone(),
            Session {
                secret: secret.clone(),
                room: room.clone(),
                source,
                held: 0,
                meta,
                conn: Some(conn),
                next_seq: 1,
                client_seq: 0,
                buffer: VecDeque::new(),
                disconnected: None,
            },
        );
        self.by_secret.insert(secret, peer.clone());
        self.rooms
            .entry(room)
            .or_insert_with(|| Room { members: Vec::new() })
            .members
            .push(peer.clone());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(peer.clone());
        }
        let _ = self.deliver(&peer, &body, None);
        for m in &members {
            let _ = self.deliver(m, &joined_notice, None);
        }
    }

    fn resume(&mut self, conn: ConnId, secret: &str, last_seq: u64) {
        let failed = |why: &str| Refusal::new(ErrorCode::ResumeFailed, format!("Cannot resume: {why}; join again."));
        let Some(peer) = self.by_secret.get(secret).cloned() else {
            return self.error(conn, failed("the session is unknown or has expired"));
        };
        let Some(s) = self.sessions.get(&peer) else {
            return self.error(conn, failed("the session is unknown or has expired"));
        };
        let newest = s.next_seq - 1;
        let oldest_kept = s.buffer.front().map_or(s.next_seq, |b| b.seq);
        if last_seq > newest {
            return self.error(conn, failed("the client claims messages the server never sent"));
        }
        if last_seq + 1 < oldest_kept {
            return self.error(conn, failed("messages after `lastSeq` are no longer kept"));
        }
        if let Some(old) = s.conn {
            // The old socket may not have been noticed dead yet; the newest socket wins.
            self.close(old, CloseCode::REPLACED, "replaced");
        }
        let Some(s) = self.sessions.get_mut(&peer) else { return };
        s.conn = Some(conn);
        s.disconnected = None;
        s.forget_through(last_seq, &mut self.budget);
        self.outputs.push_back(Output::Send {
            conn,
            text: Bytes::from(format!(
                "{{\"seq\":{newest},\"type\":\"resumed\",\"peerId\":\"{peer}\",\"replayed\":{},\"ack\":{}}}",
                s.buffer.len(),
                s.client_seq
            )),
        });
        for b in &s.buffer {
            self.outputs.push_back(Output::Send {
                conn,
                text: b.text.clone(),
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(peer);
        }
    }

    fn signal(&mut self, conn: ConnId, from: &Arc<str>, to: &str, data: &RawValue, id: Option<String>) {
        let same_room = match (self.sessions.get(from), self.sessions.get(to)) {
            (Some(a), Some(b)) => a.room == b.room && from.as_ref() != to,
            _ => false,
        };
        if !same_room {
            let room = self.sessions.get(from).map(|s| s.room.to_string()).unwrap_or_default();
            let message = format!("No peer {} in room {room}.", to.chars().take(128).collect::<String>());
            return self.error_with_id(conn, Refusal::new(ErrorCode::UnknownPeer, message), id.as_deref());
        }
        let data = data.get();
        let write = |frame: &mut String| {
            frame.push_str("\"type\":\"signal\",\"from\":\"");
            frame.push_str(from);
            frame.push_str("\",\"data\":");
            frame.push_str(data);
            frame.push('}');
        };
        // `"type":"signal","from":"` + from + `","data":` + data + `}`.
        let len = data.len() + from.len() + 35;
        match self.deliver_with(to, len, write, Some((from.clone(), id))) {
            Ok(()) => self.relayed += 1,
            Err(Refused { over, signal_from }) => {
                let id = signal_from.and_then(|(_, id)| id);
                self.undeliverable(from, to, id.as_deref(), over.reason());
            }
        }
    }

    fn undeliverable(&mut self, sender: &str, to: &str, id: Option<&str>, reason: &str) {
        let mut body = String::with_capacity(96);
        body.push_str("\"type\":\"undeliverable\",\"to\":\"");
        body.push_str(to);
        body.push('"');
        if let Some(id) = id {
            body.push_str(",\"id\":");
            push_json_str(&mut body, id);
        }
        body.push_str(",\"reason\":\"");
        body.push_str(reason);
        body.push_str("\"}");
        let _ = self.deliver(sender, &body, None);
    }

    fn broadcast(&mut self, from: &Arc<str>, data: &RawValue) {
        let Some(room) = self.sessions.get(from).map(|s| s.room.clone()) else {
            return;
        };
        let mut body = String::with_capacity(data.get().len() + 64);
        body.push_str("\"type\":\"broadcast\",\"from\":\"");
        body.push_str(from);
        body.push_str("\",\"data\":");
        body.push_str(data.get());
        body.push('}');
        // By index, without copying the member list: delivering changes no room.
        let count = self.rooms.get(&room).map_or(0, |r| r.members.len());
        for i in 0..count {
            let Some(m) = self.rooms.get(&room).and_then(|r| r.members.get(i)).cloned() else {
                break;
            };
            if m != *from && self.deliver(&m, &body, None).is_ok() {
                self.relayed += 1;
            }
        }
    }

    /// Removes a session for good: the room hears `peer-left`, and senders of signals that never reached it hear
    /// `undeliverable`.
    fn remove_session(&mut self, peer: &Arc<str>) {
        let Some(s) = self.sessions.remove(peer) else { return };
        self.budget.release(s.source, s.held);
        self.by_secret.remove(&s.secret);
        if let Some(conn) = s.conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.peer = None;
            }
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
        let notice = format!("\"type\":\"peer-left\",\"peerId\":\"{peer}\"}}");
        for m in &others {
            let _ = self.deliver(m, &notice, None);
        }
        if let Some(d) = s.disconnected {
            for b in s.buffer.iter().filter(|b| b.seq > d.last_sent) {
                if let Some((sender, id)) = &b.signal_from {
                    self.undeliverable(sender, peer, id.as_deref(), "peer-left");
                }
            }
        }
    }

    fn sweep(&mut self, now: Now) {
        let timeout = self.limits.heartbeat_timeout;
        let dead: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| now.instant.saturating_duration_since(c.last_heard) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for conn in dead {
            self.close(conn, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat-timeout");
        }
        let grace = self.limits.resume_grace;
        let expired: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.disconnected
                    .as_ref()
                    .is_some_and(|d| now.instant.saturating_duration_since(d.at) >= grace)
            })
            .map(|(p, _)| p.clone())
            .collect();
        for peer in expired {
            self.remove_session(&peer);
        }
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
        if room.is_empty() || room.len() > 128 {
            return Err(Refusal::new(
                ErrorCode::BadMessage,
                "`room` must be 1 to 128 characters.",
            ));
        }
        self.check_token(room, token, now)?;
        self.check_room(room)
    }

    fn handle_connect(&mut self, conn: ConnId, ip: IpAddr, now: Now) -> Result<(), Refusal> {
        self.clock = now.instant;
        self.check_connect(ip)?;
        let source = Source::from(ip);
        *self.per_source.entry(source).or_insert(0) += 1;
        self.conns.insert(
            conn,
            Conn {
                source,
                peer: None,
                last_heard: now.instant,
                tokens: f64::from(self.limits.burst),
                refilled: now.instant,
                rate_strikes: 0,
                errors: 0,
            },
        );
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now.instant + SWEEP_INTERVAL);
        }
        Ok(())
    }

    fn handle_text(&mut self, conn: ConnId, text: &str, now: Now) {
        self.clock = now.instant;
        if text.len() > self.limits.max_message_bytes {
            let message = format!("Messages are limited to {} bytes.", self.limits.max_message_bytes);
            return self.error(conn, Refusal::new(ErrorCode::TooLarge, message));
        }
        match self.admit(conn, now) {
            None => return,
            Some(true) => {}
            Some(false) => {
                let strikes = self.conns.get(&conn).map_or(0, |c| c.rate_strikes);
                if strikes > self.limits.burst {
                    return self.close(conn, CloseCode::RATE_LIMITED, "rate-limited");
                }
                if strikes == 1 {
                    let message = format!(
                        "More than {} messages per second; messages are dropped until the rate falls.",
                        self.limits.messages_per_second
                    );
                    self.error(conn, Refusal::new(ErrorCode::RateLimited, message));
                }
                return;
            }
        }
        match protocol::parse(text) {
            Ok((msg, Some(seq))) if matches!(msg, ClientMessage::Signal { .. } | ClientMessage::Broadcast { .. }) => {
                // Numbered by the client: handle each number once, so a resend after a resume is harmless.
                let peer = self.conns.get(&conn).and_then(|c| c.peer.clone());
                if let Some(s) = peer.as_ref().and_then(|p| self.sessions.get_mut(p)) {
                    if seq <= s.client_seq {
                        return;
                    }
                    s.client_seq = seq;
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
            c.last_heard = now.instant;
        }
    }

    fn handle_binary(&mut self, conn: ConnId, now: Now) {
        self.clock = now.instant;
        if self.admit(conn, now) != Some(true) {
            return;
        }
        let message = "Binary frames are not part of protocol v1: send JSON in text frames.";
        self.error(conn, Refusal::new(ErrorCode::BadMessage, message));
    }

    fn handle_closed(&mut self, conn: ConnId, now: Now) {
        self.clock = now.instant;
        let Some(c) = self.conns.remove(&conn) else { return };
        self.release_source(c.source);
        let Some(peer) = c.peer else { return };
        if let Some(s) = self.sessions.get_mut(&peer) {
            if s.conn == Some(conn) {
                s.conn = None;
                s.disconnected = Some(Disconnected {
                    at: now.instant,
                    last_sent: s.next_seq - 1,
                });
            }
        }
    }

    fn handle_timeout(&mut self, now: Now) {
        self.clock = now.instant;
        let Some(due) = self.next_sweep else { return };
        if now.instant < due {
            return;
        }
        self.next_sweep = Some(now.instant);
        self.sweep(now);
        self.next_sweep = if self.conns.is_empty() && self.sessions.is_empty() {
            None
        } else {
            Some(now.instant + SWEEP_INTERVAL)
        };
    }

    fn handle_shutdown(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.close(conn, CloseCode::SHUTTING_DOWN, "server-shutdown");
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
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
        }
    }
}

/// Decimal digits of a sequence number without going through `format!`.
fn itoa(mut n: u64) -> ItoaBuf {
    let mut buf = ItoaBuf {
        bytes: [0; 20],
        start: 20,
    };
    loop {
        buf.start -= 1;
        if let Some(b) = buf.bytes.get_mut(buf.start) {
            *b = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break buf;
        }
    }
}

struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.bytes.get(self.start..).unwrap_or_default()).unwrap_or("0")
    }
}
