use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::policy::PeerPolicy;

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
    pub policy: PeerPolicy,
    /// How many (5-tuple, transaction) answers are kept for retransmissions.
    pub response_cache_entries: usize,
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
            policy: PeerPolicy::default(),
            response_cache_entries: 16_384,
        }
    }
}

/// Allocation quotas shared by every worker. Touched only when an allocation is created or removed, never per
/// relayed packet, so a mutex for the per-user counts is not on any hot path.
#[derive(Debug)]
pub struct Quotas {
    pub max_total: usize,
    /// 0 for no per-user limit.
    pub max_per_user: usize,
    total: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
}

/// Which quota said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    Total,
    User,
}

impl Quotas {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Self {
            max_total,
            max_per_user,
            total: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    pub fn acquire(&self, user: &str) -> Result<(), QuotaExceeded> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaExceeded::Total);
        }
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_user.entry(user.to_owned()).or_default();
        if self.max_per_user != 0 && *count >= self.max_per_user {
            drop(per_user);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaExceeded::User);
        }
        *count += 1;
        Ok(())
    }

    pub fn release(&self, user: &str) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_user.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_user.remove(user);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}
