//! A deterministic harness for the TURN state machine: a server with a seeded RNG and a fixed epoch, and a client
//! that builds requests with the `stun` codec and does the 401 → REALM/NONCE → authenticated request dance.
//!
//! Time is only ever `h.at(secs)`: nothing sleeps, and every deadline can be asserted to the nanosecond.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use stun::{attr, long_term_key_md5, Attribute, Class, IntegrityKey, Message, MessageWriter, Method, TransactionId};
use turn::{AllocationId, Authenticator, BindRequest, ClientAction, Config, FiveTuple, Quotas, RelayBinding, Server};
use turn::{Secret, Transport};

pub const REALM: &str = "example.org";
/// Unix seconds at `Harness::t0`.
pub const UNIX_T0: u64 = 1_700_000_000;
pub const NONCE_LIFETIME: u64 = 3600;
pub const SERVER_ADDR: &str = "192.0.2.1:3478";
/// A public peer the default policy allows.
pub const PEER: &str = "198.51.100.7:9000";
pub const PEER_V6: &str = "[2001:db8::7]:9000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[derive(Debug)]
pub struct Harness {
    pub server: Server<StdRng>,
    pub quotas: Arc<Quotas>,
    pub t0: Instant,
    /// Relay ports handed out by [`Harness::bind`], so every allocation gets its own.
    next_port: u16,
    /// The IPv4 address [`Harness::bind`] binds relays on (192.0.2.1 unless a test changes it).
    pub relay_v4: std::net::IpAddr,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(Config::default(), Quotas::new(1000, 0))
    }

    pub fn with(config: Config, quotas: Quotas) -> Self {
        Self::with_shared(config, Arc::new(quotas))
    }

    /// A server over quotas shared with other servers (workers).
    pub fn with_shared(config: Config, quotas: Arc<Quotas>) -> Self {
        Self::with_server(config, quotas, |s| s)
    }

    /// A server built like [`Harness::with_shared`] and then given to `wrap` (to share more state with other
    /// servers, as workers do).
    pub fn with_server(
        config: Config,
        quotas: Arc<Quotas>,
        wrap: impl FnOnce(Server<StdRng>) -> Server<StdRng>,
    ) -> Self {
        let auth = Authenticator::new(
            REALM.into(),
            &[("alice".into(), "wonderland".into()), ("bob".into(), "builder".into())],
            vec![Secret(b"old-secret".to_vec()), Secret(b"new-secret".to_vec())],
            [7; 32],
            NONCE_LIFETIME,
        );
        let t0 = Instant::now();
        let server = wrap(Server::new(
            Arc::new(config),
            Arc::new(auth),
            quotas.clone(),
            StdRng::seed_from_u64(42),
            (t0, UNIX_T0),
        ));
        Self {
            server,
            quotas,
            t0,
            next_port: 49152,
            relay_v4: "192.0.2.1".parse().unwrap(),
        }
    }

    pub fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    pub fn at_ms(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Sends raw bytes from `five_tuple`; returns the action and the answer bytes if it is a reply.
    pub fn send(&mut self, now: Instant, five_tuple: FiveTuple, packet: &[u8]) -> (ClientAction, Vec<u8>) {
        let mut out = vec![0u8; 1500];
        let action = self.server.handle_client(now, five_tuple, packet, &mut out);
        let reply = match action {
            ClientAction::Reply(len) => out[..len].to_vec(),
            _ => Vec::new(),
        };
        (action, reply)
    }

    /// What the caller does for a [`ClientAction::BindRelay`]: an IPv4 and/or IPv6 relay per requested family.
    pub fn bind(&mut self, now: Instant, request: &BindRequest) -> (Option<AllocationId>, Vec<u8>) {
        let port = self.next_port;
        self.next_port += 2;
        let relays = [
            request.families[0].then(|| SocketAddr::new(self.relay_v4, port)),
            request.families[1].then(|| SocketAddr::new("2001:db8::1".parse().unwrap(), port)),
        ];
        self.bind_with(now, request.five_tuple, Some(RelayBinding { relays, reserved: None }))
    }

    pub fn bind_with(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        result: Option<RelayBinding>,
    ) -> (Option<AllocationId>, Vec<u8>) {
        let mut out = vec![0u8; 1500];
        let (id, len) = self.server.handle_relay_bound(now, five_tuple, result, &mut out);
        (id, len.map(|l| out[..l].to_vec()).unwrap_or_default())
    }

    pub fn events(&mut self) -> Vec<turn::Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

pub fn udp(client: &str) -> FiveTuple {
    FiveTuple {
        client: addr(client),
        server: addr(SERVER_ADDR),
        transport: Transport::Udp,
    }
}

/// A parsed answer, for assertions.
pub fn parse(bytes: &[u8]) -> Message<'_> {
    let msg = Message::parse(bytes).unwrap();
    msg.check_fingerprint().unwrap();
    msg
}

pub fn error_code(bytes: &[u8]) -> Option<u16> {
    match parse(bytes).decode(attr::ERROR_CODE) {
        Some(Ok(Attribute::ErrorCode(e))) => Some(e.code),
        _ => None,
    }
}

pub fn attribute<'a>(msg: &Message<'a>, ty: u16) -> Option<Attribute<'a>> {
    msg.decode(ty).map(|r| r.unwrap())
}

pub fn lifetime(bytes: &[u8]) -> Option<u32> {
    match attribute(&parse(bytes), attr::LIFETIME) {
        Some(Attribute::Lifetime(l)) => Some(l),
        _ => None,
    }
}

/// Every attribute type in wire order, MESSAGE-INTEGRITY and FINGERPRINT included.
pub fn attribute_types(msg: &Message<'_>) -> Vec<u16> {
    let bytes = msg.as_bytes();
    let mut types = Vec::new();
    let mut at = stun::HEADER_LEN;
    while at + 4 <= bytes.len() {
        types.push(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        at += 4 + len.next_multiple_of(4);
    }
    types
}

static NEXT_TID: AtomicU32 = AtomicU32::new(1);

/// A TURN client on one 5-tuple with long-term credentials.
#[derive(Debug, Clone)]
pub struct Client {
    pub five_tuple: FiveTuple,
    pub username: String,
    pub password: String,
    pub realm: Option<String>,
    pub nonce: Option<String>,
}

/// A time for [`Client`] methods: this long after `Harness::t0`.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Client {
    pub fn new(client: &str, username: &str, password: &str) -> Self {
        Self {
            five_tuple: udp(client),
            username: username.into(),
            password: password.into(),
            realm: None,
            nonce: None,
        }
    }

    pub fn alice() -> Self {
        Self::new("203.0.113.10:50000", "alice", "wonderland")
    }

    pub fn key(&self) -> IntegrityKey {
        long_term_key_md5(&self.username, self.realm.as_deref().unwrap_or(REALM), &self.password)
    }

    /// A fresh transaction id, unique in the test binary (two clients on one 5-tuple must not collide, or the second
    /// gets the first one's cached answer, as a retransmission should).
    pub fn tid(&mut self) -> TransactionId {
        let n = NEXT_TID.fetch_add(1, Ordering::Relaxed);
        let mut id = [0xAB; 12];
        id[8..].copy_from_slice(&n.to_be_bytes());
        TransactionId::new(id)
    }

    /// A request with `attrs`, then USERNAME/REALM/NONCE/MESSAGE-INTEGRITY once a challenge was seen, then
    /// FINGERPRINT.
    pub fn build(&self, method: Method, tid: TransactionId, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid).unwrap();
        for a in attrs {
            w.add(a).unwrap();
        }
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            w.add(&Attribute::Username(&self.username)).unwrap();
            w.add(&Attribute::Realm(realm)).unwrap();
            w.add(&Attribute::Nonce(nonce)).unwrap();
            w.message_integrity(&self.key()).unwrap();
        }
        w.fingerprint().unwrap();
        let len = w.finish();
        buf.truncate(len);
        buf
    }

    /// Sends a request, answering a 401 or 438 challenge once; returns the final action and answer bytes.
    pub fn request(
        &mut self,
        h: &mut Harness,
        at: Duration,
        method: Method,
        attrs: &[Attribute<'_>],
    ) -> (ClientAction, Vec<u8>) {
        let tid = self.tid();
        let (action, reply) = h.send(h.t0 + at, self.five_tuple, &self.build(method, tid, attrs));
        if !matches!(action, ClientAction::Reply(_)) || !matches!(error_code(&reply), Some(401 | 438)) {
            return (action, reply);
        }
        let challenged_before = self.nonce.is_some() && error_code(&reply) == Some(401);
        self.take_challenge(&reply);
        if challenged_before {
            return (action, reply); // a 401 to an authenticated request: wrong credentials, do not loop
        }
        let tid = self.tid();
        h.send(h.t0 + at, self.five_tuple, &self.build(method, tid, attrs))
    }

    /// Stores REALM and NONCE of a 401/438 answer.
    pub fn take_challenge(&mut self, reply: &[u8]) {
        let msg = parse(reply);
        if let Some(Attribute::Realm(r)) = attribute(&msg, attr::REALM) {
            self.realm = Some(r.to_owned());
        }
        if let Some(Attribute::Nonce(n)) = attribute(&msg, attr::NONCE) {
            self.nonce = Some(n.to_owned());
        }
    }

    /// Allocate (UDP relay) with extra attributes; binds the relay as the caller would and returns the allocation
    /// and the success answer. Panics if the server did not ask to bind.
    pub fn allocate_with(
        &mut self,
        h: &mut Harness,
        at: Duration,
        extra: &[Attribute<'_>],
    ) -> (Option<AllocationId>, Vec<u8>) {
        let mut attrs = vec![Attribute::RequestedTransport(17)];
        attrs.extend_from_slice(extra);
        let (action, reply) = self.request(h, at, Method::ALLOCATE, &attrs);
        let ClientAction::BindRelay(request) = action else {
            panic!("expected BindRelay, got {action:?} with error {:?}", error_code(&reply));
        };
        h.bind(h.t0 + at, &request)
    }

    pub fn allocate(&mut self, h: &mut Harness, at: Duration) -> AllocationId {
        let (id, reply) = self.allocate_with(h, at, &[]);
        assert_eq!(parse(&reply).class(), Class::Success);
        id.unwrap()
    }

    /// Sends a request and expects a STUN answer (not a relay or a bind); returns its bytes.
    pub fn answer(&mut self, h: &mut Harness, at: Duration, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let (action, reply) = self.request(h, at, method, attrs);
        assert!(
            matches!(action, ClientAction::Reply(_)),
            "expected a reply, got {action:?}"
        );
        reply
    }

    pub fn create_permission(&mut self, h: &mut Harness, at: Duration, peer: SocketAddr) -> Vec<u8> {
        self.answer(h, at, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(peer)])
    }

    pub fn channel_bind(&mut self, h: &mut Harness, at: Duration, channel: u16, peer: SocketAddr) -> Vec<u8> {
        self.answer(
            h,
            at,
            Method::CHANNEL_BIND,
            &[Attribute::ChannelNumber(channel), Attribute::XorPeerAddress(peer)],
        )
    }

    pub fn refresh(&mut self, h: &mut Harness, at: Duration, lifetime: Option<u32>) -> Vec<u8> {
        let attrs: Vec<Attribute<'_>> = lifetime.map(Attribute::Lifetime).into_iter().collect();
        self.answer(h, at, Method::REFRESH, &attrs)
    }

    /// A Send indication (never authenticated).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = self.tid();
        let mut buf = vec![0u8; 1500];
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, tid).unwrap();
        w.add(&Attribute::XorPeerAddress(peer)).unwrap();
        w.add(&Attribute::Data(data)).unwrap();
        let len = w.finish();
        buf.truncate(len);
        buf
    }
}

/// A ChannelData message: header then payload, padded to four bytes.
pub fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
    buf
}

/// Asserts a success answer of `method`, signed with `key`.
pub fn assert_success(reply: &[u8], method: Method, key: &IntegrityKey) {
    let msg = parse(reply);
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Success, method),
        "error {:?}",
        error_code(reply)
    );
    assert!(
        msg.verify_integrity(key),
        "success answer not signed with the request's key"
    );
}

/// Asserts an error answer with `code`.
pub fn assert_error(reply: &[u8], method: Method, code: u16) {
    let msg = parse(reply);
    assert_eq!((msg.class(), msg.method()), (Class::Error, method));
    assert_eq!(error_code(reply), Some(code));
}
