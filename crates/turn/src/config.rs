use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::PeerPolicy;
use crate::server::Transport;
use source::{RateLimiter, Source};

/// Protocol settings of the TURN state machine. Transport and I/O settings live in the server crate.
#[derive(Debug, Clone)]
pub struct Config {
    /// SOFTWARE attribute of authenticated responses; empty to omit.
    pub software: String,
    /// RFC 8656 §7.2: used when the client asks for less, or nothing.
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// RFC 8656 §9: fixed by the RFC at 300 s; configurable for tests only.
    pub permission_lifetime: Duration,
    /// RFC 8656 §12: fixed by the RFC at 600 s.
    pub channel_lifetime: Duration,
    /// RFC 8656 §7.2: a token from EVEN-PORT with R set is kept about 30 s.
    pub reservation_lifetime: Duration,
    /// Relay address families this server can offer.
    pub relay_ipv4: bool,
    pub relay_ipv6: bool,
    /// Bytes per second each allocation may relay in each direction; 0 for no cap.
    pub bandwidth_per_allocation: u64,
    pub max_permissions_per_allocation: usize,
    /// Channels one allocation may bind (RFC 8656 allows 4 096); with the permission cap it bounds the memory one
    /// allocation can make the server hold (each binding is three map entries, about 150 bytes).
    pub max_channels_per_allocation: usize,
    pub policy: PeerPolicy,
    /// How many (5-tuple, transaction) answers are kept for retransmissions.
    pub response_cache_entries: usize,
    /// Reflection guard: bytes per second by which unauthenticated UDP answers may exceed their requests, per source
    /// IP (twice that as a burst); 0 turns the guard off. See `Server::handle_client`.
    pub reflection_bytes_per_second: u32,
    /// RFC 5780 NAT behaviour discovery on UDP; `None` (the default) answers CHANGE-REQUEST, RESPONSE-PORT and
    /// PADDING with 420, as a server without RFC 5780 does.
    pub nat_discovery: Option<NatDiscovery>,
}

/// RFC 5780 §3: the server's two IP addresses and two ports. The caller listens on every combination
/// ([`NatDiscovery::addresses`]) with sockets bound to those exact addresses, so an answer can leave from any of them.
///
/// Either half may be the same on both sides: with one IP only change-port can be honoured, with one port only
/// change-IP. OTHER-ADDRESS is sent only when both differ — an OTHER-ADDRESS on the same IP would make every
/// address-dependent filter look endpoint-independent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatDiscovery {
    /// The ordinary UDP listener.
    pub primary: SocketAddr,
    /// The other IP and/or port.
    pub alternate: SocketAddr,
}

impl NatDiscovery {
    /// Both addresses must be of one family, with explicit IPs and non-zero ports, and differ.
    pub fn new(primary: SocketAddr, alternate: SocketAddr) -> Result<Self, String> {
        if primary.is_ipv4() != alternate.is_ipv4() {
            return Err(format!("{alternate} and {primary} are of different address families"));
        }
        for a in [primary, alternate] {
            if a.ip().is_unspecified() || a.ip().is_multicast() || a.port() == 0 {
                return Err(format!(
                    "{a}: needs an explicit unicast IP and a non-zero port (a wildcard socket cannot pick the source \
                     address of an answer)"
                ));
            }
        }
        if primary == alternate {
            return Err(format!("{alternate} is the primary address itself"));
        }
        Ok(Self { primary, alternate })
    }

    /// Whether change-IP can be honoured (two IPs).
    pub fn can_change_ip(&self) -> bool {
        self.primary.ip() != self.alternate.ip()
    }

    /// Whether change-port can be honoured (two ports).
    pub fn can_change_port(&self) -> bool {
        self.primary.port() != self.alternate.port()
    }

    /// Whether the server has a full alternate address (RFC 5780 §4: two IPs and two ports), and so sends
    /// OTHER-ADDRESS: the client may then run the mapping and filtering tests.
    pub fn is_complete(&self) -> bool {
        self.can_change_ip() && self.can_change_port()
    }

    /// Every address the server listens on for RFC 5780: 4 with two IPs and two ports, 2 otherwise; the primary
    /// first.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut out = Vec::with_capacity(4);
        for ip in [self.primary.ip(), self.alternate.ip()] {
            for port in [self.primary.port(), self.alternate.port()] {
                let a = SocketAddr::new(ip, port);
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Whether `server` (where a request arrived) is one of [`NatDiscovery::addresses`].
    pub fn serves(&self, server: SocketAddr) -> bool {
        let ip = server.ip() == self.primary.ip() || server.ip() == self.alternate.ip();
        let port = server.port() == self.primary.port() || server.port() == self.alternate.port();
        ip && port
    }

    /// The address an answer leaves from for a request that arrived at `server`, with the IP and/or port swapped
    /// for the other one. The caller has checked [`NatDiscovery::serves`] and the `can_change_*` flags.
    pub fn changed(&self, server: SocketAddr, change_ip: bool, change_port: bool) -> SocketAddr {
        let ip = match (change_ip, server.ip() == self.primary.ip()) {
            (false, _) => server.ip(),
            (true, true) => self.alternate.ip(),
            (true, false) => self.primary.ip(),
        };
        let port = match (change_port, server.port() == self.primary.port()) {
            (false, _) => server.port(),
            (true, true) => self.alternate.port(),
            (true, false) => self.primary.port(),
        };
        SocketAddr::new(ip, port)
    }

    /// A short statement of which RFC 5780 tests this configuration makes valid, for the start-up log.
    pub fn describe(&self) -> String {
        match (self.can_change_ip(), self.can_change_port()) {
            (true, true) => format!(
                "RFC 5780 NAT behaviour discovery on {} and {}: OTHER-ADDRESS sent; mapping, filtering, lifetime \
                 (RESPONSE-PORT) and PADDING tests valid",
                self.primary, self.alternate
            ),
            (false, _) => format!(
                "RFC 5780 with one IP only ({} and {}): change-port, RESPONSE-PORT and PADDING honoured; change-IP \
                 answered 420 and no OTHER-ADDRESS sent, so clients cannot run the mapping test nor tell \
                 endpoint-independent from address-dependent filtering — configure a second IP for those",
                self.primary, self.alternate
            ),
            (true, false) => format!(
                "RFC 5780 with one port only ({} and {}): change-IP, RESPONSE-PORT and PADDING honoured; change-port \
                 answered 420 and no OTHER-ADDRESS sent, so clients cannot run the full mapping and filtering tests \
                 — configure a second port for those",
                self.primary, self.alternate
            ),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            software: concat!("Traverse ", env!("CARGO_PKG_VERSION")).to_owned(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            reservation_lifetime: Duration::from_secs(30),
            relay_ipv4: true,
            relay_ipv6: true,
            bandwidth_per_allocation: 0,
            max_permissions_per_allocation: 256,
            max_channels_per_allocation: 256,
            policy: PeerPolicy::default(),
            response_cache_entries: 16_384,
            reflection_bytes_per_second: 16 * 1024,
            nat_discovery: None,
        }
    }
}

/// Allocation quotas shared by every worker: in total, per user (the whole username, so a REST credential is its own
/// user) and per source ([`Source`]: an IPv4 address or an IPv6 /64). Touched only when an allocation is created or
/// removed, never per relayed packet, so a mutex for the counts is not on any hot path.
#[derive(Debug)]
pub struct Quotas {
    pub max_total: usize,
    /// 0 for no per-user limit.
    pub max_per_user: usize,
    /// 0 for no per-source limit.
    pub max_per_source: usize,
    /// New allocations a second per source, after a burst of [`ALLOCATION_BURST_SECS`] seconds' worth; `None`: no
    /// limit. Each costs relay sockets bound (up to 64 tries for a free port), a task, and two log lines, however
    /// soon it is given back: a loop of Allocate and Refresh to 0 kept within the count quotas.
    rate: Option<RateLimiter>,
    total: AtomicUsize,
    counts: Mutex<Counts>,
    /// Set once a drain starts (docs/scaling.md): every new Allocate is refused, existing allocations are kept.
    draining: AtomicBool,
    alternates: Mutex<Vec<Alternate>>,
}

/// Another server's TURN listener a draining node redirects new allocations to (ALTERNATE-SERVER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alternate {
    pub transport: Transport,
    pub addr: SocketAddr,
}

#[derive(Debug, Default)]
struct Counts {
    per_user: HashMap<String, usize>,
    per_source: HashMap<Source, usize>,
}

/// Which quota said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    Total,
    User,
    Source,
    /// The source's rate of new allocations.
    Rate,
}

/// The burst of [`Quotas::with_rate_per_source`], in seconds of its rate.
pub const ALLOCATION_BURST_SECS: u32 = 5;

impl Quotas {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Self {
            max_total,
            max_per_user,
            max_per_source: 0,
            rate: None,
            total: AtomicUsize::new(0),
            counts: Mutex::new(Counts::default()),
            draining: AtomicBool::new(false),
            alternates: Mutex::new(Vec::new()),
        }
    }

    /// Adds the per-source quota (0: none).
    /// Allocations held at most, over every worker.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn with_per_source(mut self, max_per_source: usize) -> Self {
        self.max_per_source = max_per_source;
        self
    }

    /// Adds the per-source rate of new allocations (0: none).
    pub fn with_rate_per_source(mut self, per_second: u32) -> Self {
        self.rate = RateLimiter::per_second(per_second, ALLOCATION_BURST_SECS);
        self
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges one allocation to `user`, `source` and the total, or to none of them; past the counts, a source's
    /// rate is spent (a refusal for a full quota spends none).
    pub fn acquire(&self, user: &str, source: Source, now: Instant) -> Result<(), QuotaExceeded> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaExceeded::Total);
        }
        let mut counts = self.counts();
        let by_user = counts.per_user.get(user).copied().unwrap_or(0);
        let by_source = counts.per_source.get(&source).copied().unwrap_or(0);
        let refusal = if self.max_per_user != 0 && by_user >= self.max_per_user {
            Some(QuotaExceeded::User)
        } else if self.max_per_source != 0 && by_source >= self.max_per_source {
            Some(QuotaExceeded::Source)
        } else if self.rate.as_ref().is_some_and(|rate| rate.check(source, now).is_err()) {
            Some(QuotaExceeded::Rate)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(counts);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(refusal);
        }
        *counts.per_user.entry(user.to_owned()).or_default() += 1;
        *counts.per_source.entry(source).or_default() += 1;
        Ok(())
    }

    pub fn release(&self, user: &str, source: Source) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut counts = self.counts();
        if let Some(count) = counts.per_user.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.per_user.remove(user);
            }
        }
        if let Some(count) = counts.per_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.per_source.remove(&source);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Starts (or keeps up) a drain: from now on every Allocate is refused — 300 Try Alternate naming one of
    /// `alternates` when one speaks the request's transport and family, else 508 — while existing allocations go
    /// on. Called again with a fresher list as other nodes come and go.
    pub fn drain(&self, alternates: Vec<Alternate>) {
        *self.alternates.lock().unwrap_or_else(|e| e.into_inner()) = alternates;
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Where a client that reached this server on `transport` at `server` is sent while draining: the first
    /// alternate (the least loaded, as the caller orders them) of the same transport and address family.
    pub fn alternate_for(&self, transport: Transport, server: SocketAddr) -> Option<SocketAddr> {
        let alternates = self.alternates.lock().unwrap_or_else(|e| e.into_inner());
        alternates
            .iter()
            .find(|a| a.transport == transport && a.addr.is_ipv4() == server.is_ipv4())
            .map(|a| a.addr)
    }

    /// Allocations charged to `source` now.
    pub fn of_source(&self, source: Source) -> usize {
        self.counts().per_source.get(&source).copied().unwrap_or(0)
    }
}
