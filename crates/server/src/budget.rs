//! What a stranger can make the I/O layer hold: TCP connections (TURN over TCP/TLS, HTTP, WebSocket, single port),
//! charged to their source and to the server-wide limit before anything else is done with them — before the TLS
//! handshake, before the first byte is read — and the host's file descriptors, split between kinds so that one
//! kind cannot starve another.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use source::RateLimiter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use turn::Source;

/// Connections held at once: in total (a semaphore shared by every listener of every worker) and per source; and
/// new connections a second per source, since a source that opens and closes within its share still makes the
/// server do a TLS handshake, a WebSocket upgrade and their log lines each time.
#[derive(Debug)]
pub struct ConnectionBudget {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_source: usize,
    per_source: Mutex<HashMap<Source, usize>>,
    rate: Option<RateLimiter>,
    /// Reverse proxies and load balancers (`web.trusted_proxies`): their connections carry many clients, so they
    /// are charged to the total only, not to a source's share or rate.
    trusted: Vec<turn::policy::IpNet>,
    /// Connections refused, by [`Refused`]: what `traverse_tcp_connections_refused_total` reads.
    refused: [AtomicU64; 4],
}

/// Which budget refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    Source,
    Rate,
    /// A connection from a `listen.proxy_protocol` balancer without a valid PROXY header.
    ProxyHeader,
}

impl Refused {
    pub(crate) const ALL: [Refused; 4] = [Refused::Total, Refused::Source, Refused::Rate, Refused::ProxyHeader];

    /// The `reason` label of `traverse_tcp_connections_refused_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::Source => "source",
            Refused::Rate => "rate",
            Refused::ProxyHeader => "proxy_header",
        }
    }
}

/// A source may open this many seconds' worth of connections at once (a page load, a network change).
const RATE_BURST_SECONDS: u32 = 5;

/// One connection's share of the budget, returned when the connection's task ends.
#[derive(Debug)]
pub struct ConnectionPermit {
    budget: Arc<ConnectionBudget>,
    /// The source charged; none for a trusted proxy's connection.
    source: Option<Source>,
    _total: OwnedSemaphorePermit,
}

impl ConnectionBudget {
    /// `max_per_source` 0: no per-source limit; `per_second_per_source` 0: no rate limit.
    pub fn new(max_total: usize, max_per_source: usize, per_second_per_source: u32) -> Self {
        let rate = RateLimiter::per_second(per_second_per_source, RATE_BURST_SECONDS);
        Self {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_per_source,
            per_source: Mutex::new(HashMap::new()),
            rate,
            trusted: Vec::new(),
            refused: Default::default(),
        }
    }

    /// The same budget, charging connections from `trusted` addresses to the total only.
    pub fn trusting(mut self, trusted: Vec<turn::policy::IpNet>) -> Self {
        self.trusted = trusted;
        self
    }

    /// Connections held now, over every listener (WebSockets included).
    pub(crate) fn held(&self) -> usize {
        self.max_total.saturating_sub(self.total.available_permits())
    }

    /// Connections refused so far, by the budget that refused them.
    pub(crate) fn refused(&self) -> [(Refused, u64); 4] {
        Refused::ALL.map(|why| (why, self.refused_by(why).load(Ordering::Relaxed)))
    }

    fn refused_by(&self, why: Refused) -> &AtomicU64 {
        let [total, source, rate, proxy_header] = &self.refused;
        match why {
            Refused::Total => total,
            Refused::Source => source,
            Refused::Rate => rate,
            Refused::ProxyHeader => proxy_header,
        }
    }

    /// Counts a connection refused (at accept, or for a reason found after it: [`Refused::ProxyHeader`]).
    pub(crate) fn count_refused(&self, why: Refused) {
        self.refused_by(why).fetch_add(1, Ordering::Relaxed);
    }

    /// A connection's share of the total only, held by a PROXY-protocol balancer's connection while its header is
    /// read: the client it names is charged once it is known.
    pub(crate) fn try_acquire_total(self: &Arc<Self>) -> Result<ConnectionPermit, Refused> {
        self.total_only().inspect_err(|why| self.count_refused(*why))
    }

    /// A share of the total, charged to no source.
    fn total_only(self: &Arc<Self>) -> Result<ConnectionPermit, Refused> {
        let total = self.total.clone().try_acquire_owned().map_err(|_| Refused::Total)?;
        Ok(ConnectionPermit {
            budget: self.clone(),
            source: None,
            _total: total,
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Source, usize>> {
        self.per_source.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges a connection from `ip` at `now`; refused when its source or the server is at its limit, or its source
    /// opened connections faster than its rate. Never waits.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnectionPermit, Refused> {
        self.charge(ip, now).inspect_err(|why| self.count_refused(*why))
    }

    fn charge(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnectionPermit, Refused> {
        let source = Source::of(ip);
        if !self.trusted.is_empty() && self.trusted.iter().any(|net| net.contains(ip)) {
            return self.total_only();
        }
        let mut counts = self.counts();
        let held = counts.get(&source).copied().unwrap_or(0);
        if self.max_per_source != 0 && held >= self.max_per_source {
            return Err(Refused::Source);
        }
        // The total first: a retry refused because the server is full spends none of its source's rate.
        let total = self.total.clone().try_acquire_owned().map_err(|_| Refused::Total)?;
        if let Some(rate) = &self.rate {
            rate.check(source, now).map_err(|_| Refused::Rate)?;
        }
        counts.insert(source, held + 1);
        Ok(ConnectionPermit {
            budget: self.clone(),
            source: Some(source),
            _total: total,
        })
    }

    /// Connections held by `ip`'s source now.
    #[cfg(test)]
    pub(crate) fn of_source(&self, ip: IpAddr) -> usize {
        self.counts().get(&Source::of(ip)).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let Some(source) = self.source else { return };
        let mut counts = self.budget.counts();
        if let Some(n) = counts.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&source);
            }
        }
    }
}

/// The host's file descriptors and how they are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// The soft limit before and after raising it toward the hard limit.
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
    /// Connections (TCP, TLS, HTTP, WebSocket) held at once.
    pub connections: usize,
    /// Allocations: each holds one relay socket per address family (two for a dual-stack one).
    pub allocations: usize,
    /// Descriptors kept for listeners, files, the runtime and EVEN-PORT reservations.
    pub reserve: u64,
}

/// Descriptors kept aside besides the listeners: runtime (epoll, eventfds), log and report files, certificate
/// reloads, EVEN-PORT reservations, the spare descriptors of the accept loops.
const FIXED_RESERVE: u64 = 256;

/// Raises the soft descriptor limit toward the hard one (systemd's default soft limit is 1 024), then fits the
/// configured capacity into it: when `max_connections` connections plus `max_allocations` allocations (at one or
/// two relay sockets each) and the reserve do not fit, both are cut in proportion, so neither can take the
/// descriptors the other needs.
pub fn plan_fds(listeners: usize, max_connections: usize, max_allocations: usize, dual_stack: bool) -> FdPlan {
    let (soft_before, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    let soft = rlimit::increase_nofile_limit(hard).unwrap_or(soft_before);
    plan(
        soft_before,
        soft,
        hard,
        listeners,
        max_connections,
        max_allocations,
        dual_stack,
    )
}

fn plan(
    soft_before: u64,
    soft: u64,
    hard: u64,
    listeners: usize,
    max_connections: usize,
    max_allocations: usize,
    dual_stack: bool,
) -> FdPlan {
    let reserve = FIXED_RESERVE + listeners as u64;
    let per_allocation: u64 = if dual_stack { 2 } else { 1 };
    let wanted_connections = max_connections as u64;
    let wanted_relays = max_allocations as u64 * per_allocation;
    let available = soft.saturating_sub(reserve);
    let (connections, allocations) = if wanted_connections + wanted_relays <= available {
        (max_connections, max_allocations)
    } else {
        let total = (wanted_connections + wanted_relays).max(1);
        let connections = available * wanted_connections / total;
        let relays = available.saturating_sub(connections);
        (connections as usize, (relays / per_allocation) as usize)
    };
    FdPlan {
        soft_before,
        soft,
        hard,
        connections,
        allocations,
        reserve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_source_and_total_limits_and_release() {
        let budget = Arc::new(ConnectionBudget::new(5, 2, 0));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a6: IpAddr = "2001:db8::1".parse().unwrap();
        let a6_same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let p1 = budget.try_acquire(a, t0).unwrap();
        let _p2 = budget.try_acquire(a, t0).unwrap();
        assert_eq!(budget.try_acquire(a, t0).unwrap_err(), Refused::Source);
        let _p3 = budget.try_acquire(a6, t0).unwrap();
        let _p4 = budget.try_acquire(a6_same_64, t0).unwrap();
        assert_eq!(
            budget.try_acquire(a6, t0).unwrap_err(),
            Refused::Source,
            "one /64 is one source"
        );
        let _p5 = budget.try_acquire("192.0.2.9".parse().unwrap(), t0).unwrap();
        assert_eq!(
            budget.try_acquire("192.0.2.10".parse().unwrap(), t0).unwrap_err(),
            Refused::Total
        );
        drop(p1);
        assert_eq!(budget.of_source(a), 1);
        assert!(budget.try_acquire(a, t0).is_ok(), "a released permit is reusable");
    }

    #[test]
    fn a_trusted_proxy_is_charged_to_the_total_only() {
        let budget = Arc::new(ConnectionBudget::new(5, 1, 1).trusting(vec!["10.0.0.0/8".parse().unwrap()]));
        let now = Instant::now();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..5)
            .map(|_| budget.try_acquire(proxy, now).expect("within the total"))
            .collect();
        assert_eq!(budget.of_source(proxy), 0, "not charged to a source");
        assert!(matches!(budget.try_acquire(proxy, now), Err(Refused::Total)));
        drop(held);
        assert_eq!(budget.held(), 0);
        // Anyone else keeps the per-source share.
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let _one = budget.try_acquire(client, now).unwrap();
        assert!(matches!(budget.try_acquire(client, now), Err(Refused::Source)));
    }

    #[test]
    fn new_connections_are_rate_limited_per_source_after_a_burst() {
        // 2 a second: a burst of 10, then one every 500 ms; closing a connection gives no token back.
        let budget = Arc::new(ConnectionBudget::new(100, 0, 2));
        let (a, a_same_64, b): (IpAddr, IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        );
        let t0 = Instant::now();
        for _ in 0..10 {
            drop(budget.try_acquire(a, t0).unwrap());
        }
        assert_eq!(budget.try_acquire(a, t0).unwrap_err(), Refused::Rate);
        assert_eq!(
            budget.try_acquire(a_same_64, t0).unwrap_err(),
            Refused::Rate,
            "one /64 is one source"
        );
        assert!(budget.try_acquire(b, t0).is_ok(), "another source has its own rate");
        let later = t0 + Duration::from_millis(500);
        assert!(budget.try_acquire(a, later).is_ok(), "a token every 500 ms");
        assert_eq!(budget.try_acquire(a, later).unwrap_err(), Refused::Rate);
    }

    #[test]
    fn a_connection_refused_for_a_full_server_spends_no_rate() {
        let budget = Arc::new(ConnectionBudget::new(1, 0, 1));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let held = budget.try_acquire(b, t0).unwrap();
        for _ in 0..10 {
            assert_eq!(budget.try_acquire(a, t0).unwrap_err(), Refused::Total);
        }
        drop(held);
        for _ in 0..5 {
            drop(budget.try_acquire(a, t0).expect("a's burst of 5 is whole"));
        }
        assert_eq!(budget.try_acquire(a, t0).unwrap_err(), Refused::Rate);
    }

    #[test]
    fn fd_plan_keeps_the_configured_capacity_when_it_fits_and_splits_it_when_not() {
        let roomy = plan(1024, 1 << 20, 1 << 20, 10, 10_000, 10_000, true);
        assert_eq!((roomy.connections, roomy.allocations), (10_000, 10_000));
        let tight = plan(1024, 1024, 1024, 12, 10_000, 10_000, true);
        assert_eq!(tight.reserve, 268);
        // 756 descriptors: a third to connections (10 000 of 30 000 wanted), two thirds to relay sockets.
        assert_eq!(tight.connections, 252);
        assert_eq!(tight.allocations, 252);
        assert!(tight.connections as u64 + 2 * tight.allocations as u64 + tight.reserve <= 1024);
    }
}
