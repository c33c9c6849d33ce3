//! Sockets: each one's token bucket, error count and last sign of life; errors to it; closing it.

use std::time::{Duration, Instant};

use rand::RngCore;

use super::stream::Disconnected;
use super::{ConnId, Counters, MemoryHub, Now, Output};
use crate::budget::Source;
use crate::frame::Frame;
use crate::id::PeerId;
use crate::protocol::{CloseCode, ErrorCode, Refusal};

/// Whether a socket's message is handled, by its token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Admitted,
    /// Over the socket's rate: the message is dropped.
    OverRate,
    /// No such socket (already closed).
    UnknownConn,
}

/// One socket.
pub(super) struct Conn {
    pub source: Source,
    /// The peer id of the session this socket carries, once joined or resumed.
    pub peer: Option<PeerId>,
    pub last_heard: Instant,
    /// When it connected: a socket that has not joined or resumed within `join_timeout` of it is closed.
    opened: Instant,
    /// A ping went out since `last_heard`: the next one waits for a sign of life.
    pub pinged: bool,
    /// The instant of this socket's one entry in the hub's deadline queue (`super::timers`).
    pub queued_at: Instant,
    tokens: f64,
    /// Bytes its signals and broadcasts may still have delivered (`Limits::delivered_bytes_per_second`).
    delivery: f64,
    refilled: Instant,
    rate_strikes: u32,
    /// Signals and broadcasts in a row refused for the delivery budget.
    delivery_strikes: u32,
    errors: u32,
}

impl Conn {
    pub fn new(source: Source, now: Instant, limits: &super::Limits) -> Self {
        Self {
            source,
            peer: None,
            last_heard: now,
            opened: now,
            pinged: false,
            queued_at: now,
            tokens: f64::from(limits.burst),
            delivery: delivery_burst(limits),
            refilled: now,
            rate_strikes: 0,
            delivery_strikes: 0,
            errors: 0,
        }
    }

    /// When its heartbeat is next checked: a ping is due a heartbeat interval after its last sign of life, the
    /// close a heartbeat timeout after it once pinged.
    fn heartbeat_due(&self, limits: &super::Limits) -> Instant {
        let quiet = if self.pinged {
            limits.heartbeat_timeout
        } else {
            limits.heartbeat_interval
        };
        let due = self.last_heard + quiet;
        match self.peer {
            Some(_) => due,
            None => due.min(self.opened + limits.join_timeout),
        }
    }

    /// A message, a ping or a pong came from the client.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged = false;
    }
}

impl<R: RngCore + Send> MemoryHub<R> {
    /// Takes one message from the socket's token bucket.
    pub(super) fn admit(&mut self, conn: ConnId, now: Now) -> Admission {
        let limits = &self.limits;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Admission::UnknownConn;
        };
        c.heard(now.instant);
        let elapsed = now.instant.saturating_duration_since(c.refilled).as_secs_f64();
        c.refilled = now.instant;
        c.tokens = (c.tokens + elapsed * f64::from(limits.messages_per_second)).min(f64::from(limits.burst));
        c.delivery = (c.delivery + elapsed * limits.delivered_bytes_per_second as f64).min(delivery_burst(limits));
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            c.rate_strikes = 0;
            Admission::Admitted
        } else {
            c.rate_strikes += 1;
            Admission::OverRate
        }
    }

    /// Takes `bytes` from the socket's delivery budget (refilled by [`Self::admit`], which every message passes
    /// first); false: too few left, nothing taken.
    pub(super) fn charge_delivery(&mut self, conn: ConnId, bytes: usize) -> bool {
        if self.limits.delivered_bytes_per_second == 0 {
            return true;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let bytes = bytes as f64;
        if c.delivery < bytes {
            return false;
        }
        c.delivery -= bytes;
        c.delivery_strikes = 0;
        true
    }

    /// A signal or broadcast past the delivery budget was dropped: as past the message rate, the first in a row is
    /// told (naming the signal's id), and more than `burst` in a row close the socket.
    pub(super) fn over_delivery(&mut self, conn: ConnId, id: Option<&str>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.delivery_strikes = c.delivery_strikes.saturating_add(1);
        let strikes = c.delivery_strikes;
        if strikes > self.limits.burst {
            return self.close(conn, CloseCode::RATE_LIMITED, "rate-limited");
        }
        if strikes == 1 {
            let message = format!(
                "More than {} bytes a second delivered (a broadcast counts once per recipient); messages are dropped \
                 until the rate falls.",
                self.limits.delivered_bytes_per_second
            );
            self.tell(conn, &Refusal::new(ErrorCode::RateLimited, message), id);
        }
    }

    /// A message over the rate was dropped: the first one is told, a sustained flood closes the socket.
    pub(super) fn over_rate(&mut self, conn: ConnId) {
        let strikes = self.conns.get(&conn).map_or(0, |c| c.rate_strikes);
        if strikes > self.limits.burst {
            return self.close(conn, CloseCode::RATE_LIMITED, "rate-limited");
        }
        if strikes == 1 {
            let message = format!(
                "More than {} messages per second; messages are dropped until the rate falls.",
                self.limits.messages_per_second
            );
            self.tell(conn, &Refusal::new(ErrorCode::RateLimited, message), None);
        }
    }

    /// Sends an error: into the session's stream when the socket carries one, else with `seq` 0. Closes the socket
    /// when the code says so, or when the socket has made too many errors.
    pub(super) fn error(&mut self, conn: ConnId, refusal: Refusal) {
        self.error_with_id(conn, refusal, None);
    }

    /// An error about one message, naming its `id` when the client gave one.
    pub(super) fn error_with_id(&mut self, conn: ConnId, refusal: Refusal, id: Option<&str>) {
        self.tell(conn, &refusal, id);
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

    /// Sends an error frame without counting it against the socket: a rate's refusals are not the client's
    /// mistakes (they close the socket by their own strikes), and a client that keeps near its rate, told once per
    /// run of refusals, must not be closed as a protocol violation by the 21st run.
    fn tell(&mut self, conn: ConnId, refusal: &Refusal, id: Option<&str>) {
        Counters::count(&mut self.counters.errors, refusal.code.as_str());
        let frame = Frame::Error {
            code: refusal.code,
            message: &refusal.message,
            id,
        };
        match self.conns.get(&conn).and_then(|c| c.peer.clone()) {
            Some(peer) => {
                let _ = self.deliver(&peer, &frame, None);
            }
            None => self.send_unnumbered(conn, 0, &frame),
        }
    }

    /// Closes a socket now; its session (if any) starts its grace period.
    pub(super) fn close(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        let Some(c) = self.forget_conn(conn) else {
            return;
        };
        Counters::count(&mut self.counters.closes, code.0);
        let peer = c.peer.as_ref().map(PeerId::as_str).unwrap_or_default();
        tracing::info!(%conn, peer, code = code.0, reason, "signaling socket closed by the server");
        self.outputs.push_back(Output::Close {
            conn,
            code,
            reason: reason.to_owned(),
        });
    }

    /// Forgets a socket (closed by either side) and returns it, if it was known; its session, if it is still the
    /// session's socket, starts its grace period.
    pub(super) fn forget_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.release_source(c.source);
        if let Some(peer) = &c.peer {
            if let Some(s) = self.sessions.get_mut(peer).filter(|s| s.conn == Some(conn)) {
                s.conn = None;
                s.disconnected = Some(Disconnected {
                    at: self.clock,
                    last_sent: s.next_seq - 1,
                });
                self.timers.grace(peer.clone(), self.clock + self.limits.resume_grace);
            }
        }
        Some(c)
    }

    pub(super) fn release_source(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Takes a socket in and queues its heartbeat.
    pub(super) fn seat(&mut self, conn: ConnId, mut c: Conn) {
        c.queued_at = c.heartbeat_due(&self.limits);
        self.timers.heartbeat(conn, c.queued_at);
        self.conns.insert(conn, c);
    }

    /// A socket's heartbeat deadline came up (its entry queued for `at`): a socket quiet for the heartbeat interval
    /// is pinged once ([`Output::Ping`]; its pong is a sign of life), one quiet for the heartbeat timeout is closed.
    /// A socket that talks is never pinged: its own traffic keeps it and the path's NATs alive. Its traffic moved
    /// no deadline, so the socket is queued again at its next one.
    pub(super) fn heartbeat(&mut self, conn: ConnId, at: Instant, now: Instant) {
        let timeout = self.limits.heartbeat_timeout;
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.queued_at == at) else {
            return;
        };
        let quiet = now.saturating_duration_since(c.last_heard);
        if quiet >= timeout {
            return self.close(conn, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat-timeout");
        }
        // Answering pings keeps a socket that never joins alive: it would hold a connection slot for good.
        if c.peer.is_none() && now >= c.opened + self.limits.join_timeout {
            return self.close(conn, CloseCode::PROTOCOL_VIOLATION, "join-timeout");
        }
        let next = if quiet >= self.limits.heartbeat_interval && !c.pinged {
            c.pinged = true;
            self.outputs.push_back(Output::Ping { conn });
            // Its pong moves no deadline either: the next ping is due an interval from now, unless the timeout
            // comes first.
            (c.last_heard + timeout).min(now + self.limits.heartbeat_interval)
        } else {
            c.heartbeat_due(&self.limits)
        };
        // Later than now whatever the limits say, so that one sweep never takes the same socket twice.
        c.queued_at = next.max(now + Duration::from_millis(1));
        self.timers.heartbeat(conn, c.queued_at);
    }
}

/// The delivery budget's bucket: [`super::DELIVERY_BURST_SECS`] of its rate, and never less than one largest message
/// broadcast to a full room, which must always be sendable from a full bucket.
fn delivery_burst(limits: &super::Limits) -> f64 {
    let burst = limits
        .delivered_bytes_per_second
        .saturating_mul(super::DELIVERY_BURST_SECS);
    let largest = limits
        .max_message_bytes
        .saturating_mul(limits.max_peers_per_room.saturating_sub(1));
    burst.max(largest) as f64
}
