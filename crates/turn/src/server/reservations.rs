//! EVEN-PORT reservations (RFC 8656 §7.2): the token and its expiry; the caller holds the socket.

use super::*;

pub(super) struct Reservation {
    pub(super) relay: SocketAddr,
    pub(super) expires: Instant,
    /// Who made it: a reservation outlives its allocation (a Refresh to 0 frees the quota, not the held socket), so
    /// it is counted to its source on its own.
    pub(super) source: Source,
}

/// Reservations held at once, server-wide: each holds a socket for 30 s, and they fit in the descriptors the
/// server keeps aside (`server::budget`'s fixed reserve of 256). WebRTC never asks for one (RTP and RTCP share a
/// port); EVEN-PORT serves older RTP/RTCP pairs.
pub const MAX_RESERVATIONS: usize = 128;
/// Reservations one source (an IPv4 address or an IPv6 /64) may hold at once.
pub const MAX_RESERVATIONS_PER_SOURCE: usize = 4;

/// RESERVATION-TOKEN → reserved relay address. Shared by workers; touched only by Allocate and expiry.
#[derive(Default)]
pub struct Reservations {
    tokens: std::sync::Mutex<HashMap<[u8; 8], Reservation>>,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reservations(..)")
    }
}

impl Reservations {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], Reservation>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a reservation if the budgets allow (at most [`MAX_RESERVATIONS`], [`MAX_RESERVATIONS_PER_SOURCE`] from
    /// its source); false if not. The count per source is a scan: the map holds at most 128 entries.
    pub(super) fn try_insert(&self, token: [u8; 8], r: Reservation) -> bool {
        let mut tokens = self.lock();
        let from_source = tokens.values().filter(|held| held.source == r.source).count();
        if tokens.len() >= MAX_RESERVATIONS || from_source >= MAX_RESERVATIONS_PER_SOURCE {
            return false;
        }
        tokens.insert(token, r);
        true
    }

    pub(super) fn take(&self, token: &[u8; 8]) -> Option<Reservation> {
        self.lock().remove(token)
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.lock().values().map(|r| r.expires).min()
    }

    /// Forgets expired tokens; returns the relay addresses they held.
    pub(super) fn expire(&self, now: Instant) -> Vec<SocketAddr> {
        let mut expired = Vec::new();
        self.lock().retain(|_, r| {
            let keep = r.expires > now;
            if !keep {
                expired.push(r.relay);
            }
            keep
        });
        expired
    }
}
