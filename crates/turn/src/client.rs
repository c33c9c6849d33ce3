//! A sans-IO STUN/TURN client (RFC 8489, RFC 8656): the one client the doctor, the load generator and the tests
//! drive over their own sockets, instead of each redoing the 401 → nonce → key → re-sign dance.
//!
//! Model, as [`crate::Server`]: the caller owns the socket and the clock. Requests go in through methods that return
//! a [`RequestId`]; bytes to send come out of [`Client::poll_transmit`]; bytes received go in through
//! [`Client::handle_input`]; answers and relayed data come out of [`Client::poll_event`]; retransmissions are due at
//! [`Client::poll_timeout`], when the caller calls [`Client::handle_timeout`]. After every input, drain the
//! transmits and the events.
//!
//! ```no_run
//! # use std::time::Instant;
//! # use turn::client::{Client, ClientConfig, Event};
//! # let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
//! # socket.connect("192.0.2.1:3478").unwrap();
//! let mut client = Client::new(ClientConfig::udp("alice", "secret"));
//! let allocate = client.allocate(Instant::now(), |_| Ok(())).unwrap();
//! let mut buf = [0u8; 1500];
//! loop {
//!     while let Some(packet) = client.poll_transmit() {
//!         socket.send(&packet).unwrap();
//!     }
//!     if let Some(event) = client.poll_event() {
//!         if let Event::Response { id, outcome, .. } = event {
//!             assert_eq!(id, allocate);
//!             println!("{outcome:?}");
//!             break;
//!         }
//!         continue;
//!     }
//!     let wait = client.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
//!     socket.set_read_timeout(wait.filter(|w| !w.is_zero())).unwrap();
//!     match socket.recv(&mut buf) {
//!         Ok(n) => client.handle_input(Instant::now(), &buf[..n]),
//!         Err(_) => client.handle_timeout(Instant::now()),
//!     }
//! }
//! ```
//!
//! Long-term credentials (RFC 8489 §9.2): a request goes out without them first; a 401 with REALM and NONCE makes the
//! client derive the key and send the request again, signed, under a new transaction id; a 438 (stale nonce) takes the
//! new nonce. The caller sees one [`Event::Response`] per request, under the id it was given.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use stun::{
    attr, long_term_key_md5, Attribute, ChannelData, ChannelNumber, Class, EncodeError, IntegrityKey, Message,
    MessageWriter, Method, TransactionId,
};

/// RFC 8489 §6.2.1: the initial retransmission timeout.
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// RFC 8489 §6.2.1: Rc, requests sent in all.
pub const MAX_TRANSMISSIONS: u32 = 7;
/// RFC 8489 §6.2.1: Rm, the last wait as a multiple of the initial RTO.
const LAST_WAIT_FACTOR: u32 = 16;
/// RFC 8489 §6.2.2: over a reliable transport, one send and 39.5 s to answer.
pub const RELIABLE_TIMEOUT: Duration = Duration::from_millis(39_500);
/// The transaction id a request's own attributes are first written against (see `Client::encode`).
const BODY_TID: TransactionId = TransactionId {
    bytes: [0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
};
/// Challenges (401/438) answered for one request before its error is reported.
const MAX_CHALLENGES: u32 = 2;

/// How the client talks to its server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub username: String,
    pub password: String,
    /// TCP or TLS: no retransmissions, one long timeout, ChannelData padded to four bytes (RFC 8656 §12.5).
    pub reliable: bool,
    pub initial_rto: Duration,
    /// The most the retransmission timeout may grow to (`None`: it doubles every time, RFC 8489 §6.2.1). A
    /// diagnostic's probe that must get through a lossy link within its own short deadline caps it: more tries
    /// in the same time, where each costs a few dozen bytes.
    pub max_rto: Option<Duration>,
    pub max_transmissions: u32,
    /// How long a transaction waits for its answer from its first transmission (a diagnostic tool's own deadline):
    /// over UDP it cuts the retransmissions short; over a stream it is the wait, instead of 39.5 s. `None`: the RFC's.
    pub timeout: Option<Duration>,
    /// Challenges (401/438) answered for one request before its error is reported.
    pub max_challenges: u32,
}

impl ClientConfig {
    pub fn udp(username: &str, password: &str) -> Self {
        Self {
            username: username.to_owned(),
            password: password.to_owned(),
            reliable: false,
            initial_rto: INITIAL_RTO,
            max_rto: None,
            max_transmissions: MAX_TRANSMISSIONS,
            timeout: None,
            max_challenges: MAX_CHALLENGES,
        }
    }

    pub fn stream(username: &str, password: &str) -> Self {
        Self {
            reliable: true,
            ..Self::udp(username, password)
        }
    }
}

/// The id a request is known by, whatever transaction ids its retries used: the first one's.
pub type RequestId = TransactionId;

/// What came of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(Answer),
    /// An error answer (after any challenge was answered): its code and reason, and the whole answer.
    Error {
        code: u16,
        reason: String,
        answer: Answer,
    },
    /// No answer within the retransmission schedule.
    Timeout,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }

    /// The error code, if the server answered with an error.
    pub fn error_code(&self) -> Option<u16> {
        match self {
            Outcome::Error { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn answer(&self) -> Option<&Answer> {
        match self {
            Outcome::Success(a) | Outcome::Error { answer: a, .. } => Some(a),
            Outcome::Timeout => None,
        }
    }
}

/// A response, kept as received; accessors decode what callers ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    bytes: Vec<u8>,
}

impl Answer {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The parsed message (it parsed when it arrived).
    pub fn message(&self) -> Option<Message<'_>> {
        Message::parse(&self.bytes).ok()
    }

    /// Every address attribute of type `ty` (XOR-RELAYED-ADDRESS appears twice for a dual allocation).
    pub fn addresses(&self, ty: u16) -> Vec<SocketAddr> {
        let Some(msg) = self.message() else {
            return Vec::new();
        };
        let tid = msg.transaction_id();
        msg.attributes()
            .filter(|raw| raw.ty == ty)
            .filter_map(|raw| match Attribute::decode(raw, &tid) {
                Ok(
                    Attribute::XorRelayedAddress(a)
                    | Attribute::XorMappedAddress(a)
                    | Attribute::MappedAddress(a)
                    | Attribute::XorPeerAddress(a)
                    | Attribute::ResponseOrigin(a)
                    | Attribute::OtherAddress(a)
                    | Attribute::AlternateServer(a)
                    | Attribute::LegacyAddress(_, a),
                ) => Some(a),
                _ => None,
            })
            .collect()
    }

    pub fn address(&self, ty: u16) -> Option<SocketAddr> {
        self.addresses(ty).into_iter().next()
    }

    pub fn relayed(&self) -> Vec<SocketAddr> {
        self.addresses(attr::XOR_RELAYED_ADDRESS)
    }

    pub fn mapped(&self) -> Option<SocketAddr> {
        self.address(attr::XOR_MAPPED_ADDRESS)
            .or_else(|| self.address(attr::MAPPED_ADDRESS))
    }

    pub fn lifetime(&self) -> Option<u32> {
        match self.message()?.decode(attr::LIFETIME)? {
            Ok(Attribute::Lifetime(l)) => Some(l),
            _ => None,
        }
    }

    pub fn reservation_token(&self) -> Option<[u8; 8]> {
        match self.message()?.decode(attr::RESERVATION_TOKEN)? {
            Ok(Attribute::ReservationToken(t)) => Some(t),
            _ => None,
        }
    }
}

/// What the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The final answer to a request.
    Response {
        id: RequestId,
        method: Method,
        outcome: Outcome,
    },
    /// Data relayed from a peer, in a Data indication or on a bound channel.
    Data { peer: SocketAddr, data: Vec<u8> },
}

/// A request waiting for its answer.
#[derive(Debug)]
struct Pending {
    id: RequestId,
    method: Method,
    /// The request's own attributes, encoded (credentials and FINGERPRINT are added per transmission).
    body: Vec<u8>,
    /// The bytes last sent, for retransmissions.
    packet: Vec<u8>,
    signed: bool,
    transmissions: u32,
    rto: Duration,
    next: Instant,
    /// When this transaction is given up, with [`ClientConfig::timeout`].
    give_up: Option<Instant>,
    challenges: u32,
    /// A ChannelBind's channel and peer, remembered when it succeeds.
    channel: Option<(ChannelNumber, SocketAddr)>,
}

/// The credential the server asked for: realm, nonce, and the key derived from them.
#[derive(Debug, Clone)]
struct Credential {
    realm: String,
    nonce: String,
    key: IntegrityKey,
}

/// The client of one server over one transport (one 5-tuple). `R` makes transaction ids: tests seed it.
#[derive(Debug)]
pub struct Client<R = rand::rngs::StdRng> {
    config: ClientConfig,
    rng: R,
    credential: Option<Credential>,
    pending: HashMap<TransactionId, Pending>,
    channels: HashMap<ChannelNumber, SocketAddr>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    stale_nonces: u32,
    integrity_failures: u32,
}

impl Client<rand::rngs::StdRng> {
    /// A client with transaction ids from the operating system's entropy.
    pub fn new(config: ClientConfig) -> Self {
        use rand::SeedableRng;
        Self::with_rng(config, rand::rngs::StdRng::from_entropy())
    }
}

impl<R: RngCore> Client<R> {
    pub fn with_rng(config: ClientConfig, rng: R) -> Self {
        Self {
            config,
            rng,
            credential: None,
            pending: HashMap::new(),
            channels: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stale_nonces: 0,
            integrity_failures: 0,
        }
    }

    /// Any request: `method` with the attributes `attrs` writes (credentials and FINGERPRINT are added). Binding
    /// requests go out unsigned; TURN requests are signed once the server has challenged.
    pub fn request(
        &mut self,
        now: Instant,
        method: Method,
        attrs: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), EncodeError>,
    ) -> Result<RequestId, EncodeError> {
        self.request_inner(now, method, attrs, None)
    }

    /// RFC 8489 §7.2: a Binding request, never signed.
    pub fn binding(&mut self, now: Instant) -> Result<RequestId, EncodeError> {
        self.request(now, Method::BINDING, |_| Ok(()))
    }

    /// RFC 8656 §7.1: Allocate a UDP relay; `extra` adds attributes (EVEN-PORT, ADDITIONAL-ADDRESS-FAMILY, …).
    pub fn allocate(
        &mut self,
        now: Instant,
        extra: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), EncodeError>,
    ) -> Result<RequestId, EncodeError> {
        self.request(now, Method::ALLOCATE, |w| {
            w.add(&Attribute::RequestedTransport(17))?;
            extra(w)
        })
    }

    /// RFC 8656 §8: LIFETIME `lifetime` (0 deletes the allocation).
    pub fn refresh(&mut self, now: Instant, lifetime: u32) -> Result<RequestId, EncodeError> {
        self.request(now, Method::REFRESH, |w| {
            w.add(&Attribute::Lifetime(lifetime)).map(|_| ())
        })
    }

    /// RFC 8656 §10: permissions for every peer's IP.
    pub fn create_permission(&mut self, now: Instant, peers: &[SocketAddr]) -> Result<RequestId, EncodeError> {
        self.request(now, Method::CREATE_PERMISSION, |w| {
            for peer in peers {
                w.add(&Attribute::XorPeerAddress(*peer))?;
            }
            Ok(())
        })
    }

    /// RFC 8656 §12: binds `channel` to `peer`; relayed data on it arrives as [`Event::Data`] from `peer`.
    pub fn channel_bind(
        &mut self,
        now: Instant,
        channel: ChannelNumber,
        peer: SocketAddr,
    ) -> Result<RequestId, EncodeError> {
        self.request_inner(
            now,
            Method::CHANNEL_BIND,
            |w| {
                w.add(&Attribute::ChannelNumber(channel.get()))?;
                w.add(&Attribute::XorPeerAddress(peer)).map(|_| ())
            },
            Some((channel, peer)),
        )
    }

    /// RFC 8656 §11.1: a Send indication to `peer` (never retransmitted, never answered).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), EncodeError> {
        let mut buf = vec![0u8; stun::HEADER_LEN + 24 + 4 + data.len() + 8];
        let tid = self.next_tid();
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, tid)?;
        w.add(&Attribute::XorPeerAddress(peer))?;
        w.add(&Attribute::Data(data))?;
        let len = w.finish();
        buf.truncate(len);
        self.transmits.push_back(buf);
        Ok(())
    }

    /// RFC 8656 §12.5: ChannelData on `channel`, padded to four bytes on a reliable transport.
    pub fn channel_data(&mut self, channel: ChannelNumber, data: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(data.len()).map_err(|_| EncodeError::BufferTooSmall)?;
        let mut packet = vec![0u8; stun::CHANNEL_DATA_HEADER_LEN];
        let header: &mut [u8; stun::CHANNEL_DATA_HEADER_LEN] = packet
            .as_mut_slice()
            .try_into()
            .map_err(|_| EncodeError::BufferTooSmall)?;
        ChannelData::write_header(header, channel, len);
        packet.extend_from_slice(data);
        if self.config.reliable {
            packet.resize(packet.len().next_multiple_of(4), 0);
        }
        self.transmits.push_back(packet);
        Ok(())
    }

    /// Bytes from the server: a response, a Data indication or ChannelData. Anything else is ignored.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        match bytes.first().map(|b| stun::classify(*b)) {
            Some(stun::PacketKind::ChannelData) => {
                let Ok(data) = ChannelData::parse(bytes) else { return };
                if let Some(peer) = self.channels.get(&data.channel) {
                    self.events.push_back(Event::Data {
                        peer: *peer,
                        data: data.payload.to_vec(),
                    });
                }
            }
            Some(stun::PacketKind::Stun) => {
                let Ok(msg) = Message::parse(bytes) else { return };
                match msg.class() {
                    Class::Indication if msg.method() == Method::DATA => self.handle_data_indication(&msg),
                    Class::Success | Class::Error => self.handle_response(now, &msg),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Retransmits what is due and gives up on what has run out of time.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TransactionId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(tid, _)| *tid)
            .collect();
        for tid in due {
            let Some(mut p) = self.pending.remove(&tid) else {
                continue;
            };
            let more = !self.config.reliable
                && p.transmissions < self.config.max_transmissions
                && p.give_up.is_none_or(|t| now < t);
            if !more {
                self.events.push_back(Event::Response {
                    id: p.id,
                    method: p.method,
                    outcome: Outcome::Timeout,
                });
                continue;
            }
            p.transmissions += 1;
            p.rto = p.rto.saturating_mul(2);
            if let Some(most) = self.config.max_rto {
                p.rto = p.rto.min(most.max(self.config.initial_rto));
            }
            // After the last transmission, Rm × the initial RTO (RFC 8489 §6.2.1: 39.5 s in all by default).
            let next = if p.transmissions == self.config.max_transmissions {
                now + self.config.initial_rto * LAST_WAIT_FACTOR
            } else {
                now + p.rto
            };
            p.next = p.give_up.map_or(next, |t| next.min(t));
            self.transmits.push_back(p.packet.clone());
            self.pending.insert(tid, p);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).min()
    }

    /// Requests still waiting for an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The realm the server gave, once it challenged.
    pub fn realm(&self) -> Option<&str> {
        self.credential.as_ref().map(|c| c.realm.as_str())
    }

    /// The long-term key in use, once the server challenged (to check an answer's integrity).
    pub fn key(&self) -> Option<&IntegrityKey> {
        self.credential.as_ref().map(|c| &c.key)
    }

    /// 438 (Stale Nonce) answers received so far: read before and after a request, how often the server said so.
    pub fn stale_nonces(&self) -> u32 {
        self.stale_nonces
    }

    /// Answers to signed requests dropped so far because their MESSAGE-INTEGRITY did not verify (the request waits
    /// on for the real one): it tells a server that signs with another key from one that never answered.
    pub fn integrity_failures(&self) -> u32 {
        self.integrity_failures
    }

    fn request_inner(
        &mut self,
        now: Instant,
        method: Method,
        attrs: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), EncodeError>,
        channel: Option<(ChannelNumber, SocketAddr)>,
    ) -> Result<RequestId, EncodeError> {
        let mut scratch = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut scratch, method, Class::Request, BODY_TID)?;
        attrs(&mut w)?;
        let len = w.finish();
        let body = scratch.get(stun::HEADER_LEN..len).unwrap_or_default().to_vec();
        let tid = self.next_tid();
        let signed = method != Method::BINDING && self.credential.is_some();
        let packet = self.encode(method, tid, &body, signed)?;
        self.transmits.push_back(packet.clone());
        let rto = self.config.initial_rto;
        let give_up = self.give_up(now);
        let next = self.first_timer(now, give_up);
        self.pending.insert(
            tid,
            Pending {
                id: tid,
                method,
                body,
                packet,
                signed,
                transmissions: 1,
                rto,
                next,
                give_up,
                challenges: 0,
                channel,
            },
        );
        Ok(tid)
    }

    /// The request: header, its attributes, then USERNAME, REALM, NONCE and MESSAGE-INTEGRITY when `signed`, then
    /// FINGERPRINT.
    fn encode(&self, method: Method, tid: TransactionId, body: &[u8], signed: bool) -> Result<Vec<u8>, EncodeError> {
        let mut buf = vec![0u8; stun::HEADER_LEN + body.len() + 512];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid)?;
        let mut rest = body;
        while let [t0, t1, l0, l1, tail @ ..] = rest {
            let ty = u16::from_be_bytes([*t0, *t1]);
            let len = usize::from(u16::from_be_bytes([*l0, *l1]));
            let value = tail.get(..len).ok_or(EncodeError::BufferTooSmall)?;
            // XOR-…-ADDRESS values are encoded against the transaction id (an IPv6 address against all of it): they
            // were written against BODY_TID and are written again against this request's.
            match ty {
                attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS | attr::XOR_MAPPED_ADDRESS => {
                    match Attribute::decode(stun::RawAttribute { ty, value }, &BODY_TID) {
                        Ok(address) => {
                            w.add(&address)?;
                        }
                        Err(_) => w.raw(ty, value)?,
                    }
                }
                _ => w.raw(ty, value)?,
            }
            rest = tail.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
        if let (true, Some(c)) = (signed, &self.credential) {
            w.add(&Attribute::Username(&self.config.username))?;
            w.add(&Attribute::Realm(&c.realm))?;
            w.add(&Attribute::Nonce(&c.nonce))?;
            w.message_integrity(&c.key)?;
        }
        w.fingerprint()?;
        let len = w.finish();
        buf.truncate(len);
        Ok(buf)
    }

    fn handle_response(&mut self, now: Instant, msg: &Message<'_>) {
        let tid = msg.transaction_id();
        let Some(pending) = self.pending.get(&tid) else { return };
        if msg.method() != pending.method {
            return;
        }
        // A signed request's answer must carry our integrity (RFC 8489 §9.2.5), except the challenges themselves.
        let challenge = error_code(msg).filter(|c| *c == 401 || *c == 438);
        if pending.signed && challenge.is_none() {
            let valid = self.credential.as_ref().is_some_and(|c| msg.verify_integrity(&c.key));
            // A forged or mangled answer is dropped (the real one may still come); a success must be signed.
            if (msg.has_message_integrity() || msg.class() == Class::Success) && !valid {
                self.integrity_failures += 1;
                return;
            }
        }
        let Some(mut pending) = self.pending.remove(&tid) else {
            return;
        };
        if challenge == Some(438) {
            self.stale_nonces += 1;
        }
        if let Some(code) = challenge {
            if self.take_challenge(msg, code, &pending) && pending.challenges < self.config.max_challenges {
                pending.challenges += 1;
                self.resend_signed(now, pending);
                return;
            }
        }
        let answer = Answer {
            bytes: msg.as_bytes().to_vec(),
        };
        let outcome = match (msg.class(), error_reason(msg)) {
            (Class::Success, _) => {
                if let Some((channel, peer)) = pending.channel {
                    self.channels.insert(channel, peer);
                }
                Outcome::Success(answer)
            }
            (_, Some((code, reason))) => Outcome::Error { code, reason, answer },
            (_, None) => Outcome::Error {
                code: 0,
                reason: "error answer without ERROR-CODE".to_owned(),
                answer,
            },
        };
        self.events.push_back(Event::Response {
            id: pending.id,
            method: pending.method,
            outcome,
        });
    }

    /// Learns REALM and NONCE from a 401 (to an unsigned request: the first challenge) or a 438 (a stale nonce).
    /// False when the challenge cannot be answered: a 401 to a signed request means the credentials are wrong.
    fn take_challenge(&mut self, msg: &Message<'_>, code: u16, pending: &Pending) -> bool {
        if pending.method == Method::BINDING || (code == 401 && pending.signed) {
            return false;
        }
        let realm = match msg.decode(attr::REALM) {
            Some(Ok(Attribute::Realm(r))) => Some(r.to_owned()),
            _ => self.credential.as_ref().map(|c| c.realm.clone()),
        };
        let nonce = match msg.decode(attr::NONCE) {
            Some(Ok(Attribute::Nonce(n))) => n.to_owned(),
            _ => return false,
        };
        let Some(realm) = realm else { return false };
        let key = long_term_key_md5(&self.config.username, &realm, &self.config.password);
        self.credential = Some(Credential { realm, nonce, key });
        true
    }

    fn next_tid(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        TransactionId::new(id)
    }

    fn resend_signed(&mut self, now: Instant, mut pending: Pending) {
        let tid = self.next_tid();
        let Ok(packet) = self.encode(pending.method, tid, &pending.body, true) else {
            self.events.push_back(Event::Response {
                id: pending.id,
                method: pending.method,
                outcome: Outcome::Timeout,
            });
            return;
        };
        self.transmits.push_back(packet.clone());
        pending.packet = packet;
        pending.signed = true;
        pending.transmissions = 1;
        pending.rto = self.config.initial_rto;
        pending.give_up = self.give_up(now);
        pending.next = self.first_timer(now, pending.give_up);
        self.pending.insert(tid, pending);
    }

    /// When a transaction first sent at `now` is given up, with [`ClientConfig::timeout`].
    fn give_up(&self, now: Instant) -> Option<Instant> {
        self.config.timeout.map(|t| now + t)
    }

    /// A transaction's first timer: its first retransmission, or over a stream the end of its wait.
    fn first_timer(&self, now: Instant, give_up: Option<Instant>) -> Instant {
        if self.config.reliable {
            return give_up.unwrap_or(now + RELIABLE_TIMEOUT);
        }
        let next = now + self.config.initial_rto;
        give_up.map_or(next, |t| next.min(t))
    }

    fn handle_data_indication(&mut self, msg: &Message<'_>) {
        let tid = msg.transaction_id();
        let mut peer = None;
        let mut data = None;
        for raw in msg.attributes() {
            match Attribute::decode(raw, &tid) {
                Ok(Attribute::XorPeerAddress(p)) => peer = Some(p),
                Ok(Attribute::Data(d)) => data = Some(d),
                _ => {}
            }
        }
        if let (Some(peer), Some(data)) = (peer, data) {
            self.events.push_back(Event::Data {
                peer,
                data: data.to_vec(),
            });
        }
    }
}

fn error_code(msg: &Message<'_>) -> Option<u16> {
    error_reason(msg).map(|(code, _)| code)
}

fn error_reason(msg: &Message<'_>) -> Option<(u16, String)> {
    match msg.decode(attr::ERROR_CODE)? {
        Ok(Attribute::ErrorCode(e)) => Some((e.code, e.reason.to_owned())),
        _ => None,
    }
}
