//! EVEN-PORT reservations (RFC 8656 §7.2): the token and its expiry; the caller holds the socket.

use super::*;

pub(super) struct Reservation {
    pub(super) relay: SocketAddr,
    pub(super) expires: Instant,
}

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

    pub(super) fn insert(&self, token: [u8; 8], r: Reservation) {
        self.lock().insert(token, r);
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
