//! What a server counts for metrics: plain integers, because each worker owns its server and nothing else writes
//! them. The I/O layer copies [`Stats`] out once a second and sums the workers' copies at scrape time.

use super::{FiveTuple, Transport};

/// Counters and gauges of one server. Gauges (`allocations`, `permissions`, `channels`) are computed when
/// [`super::Server::stats`] is called; counters only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live allocations (all transports).
    pub allocations: usize,
    /// Live allocations by the client's transport.
    pub allocations_by_transport: PerTransport<u64>,
    /// Allocations created since start, by the client's transport.
    pub allocations_created: PerTransport<u64>,
    /// Live permissions (peer IPs) over all allocations.
    pub permissions: u64,
    /// Live channel bindings over all allocations.
    pub channels: u64,
    /// Client → peer, by the client's transport (payload bytes, without ChannelData or STUN framing).
    pub to_peer: PerTransport<Traffic>,
    /// Peer → client, by the client's transport (payload bytes).
    pub to_client: PerTransport<Traffic>,
    /// Client → peer relayed by the kernel fast path (UDP channels; payload bytes), not counted in `to_peer`.
    pub fast_path_to_peer: Traffic,
    /// Peer → client relayed by the kernel fast path, not counted in `to_client`.
    pub fast_path_to_client: Traffic,
    pub dropped_packets: u64,
    pub malformed_packets: u64,
    /// Requests without MESSAGE-INTEGRITY answered with 401: the first half of every client's 401 dance, expected.
    pub challenges: u64,
    /// Requests whose credentials were refused, by reason.
    pub auth_failures: AuthFailures,
    /// Error answers sent, by code (the 401 challenges included).
    pub error_responses: ErrorResponses,
    /// Allocate refused by a quota, by quota.
    pub quota_refusals: QuotaRefusals,
    /// CreatePermission/ChannelBind refused (403) by the peer policy, and Send indications dropped by it.
    pub peer_refusals: u64,
    /// Unauthenticated UDP answers dropped because the source's reflection budget was spent.
    pub reflection_drops: u64,
    /// Counted by the I/O layer, not here: relay sockets' receives that paused because every receive buffer of
    /// their worker was taken (overload), and resumed once the buffers came back.
    pub relay_receive_pauses: u64,
}

/// One value per client transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerTransport<T> {
    pub udp: T,
    pub tcp: T,
    pub tls: T,
}

impl<T> PerTransport<T> {
    pub fn get(&self, transport: Transport) -> &T {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
            Transport::Tls => &self.tls,
        }
    }

    pub fn get_mut(&mut self, transport: Transport) -> &mut T {
        match transport {
            Transport::Udp => &mut self.udp,
            Transport::Tcp => &mut self.tcp,
            Transport::Tls => &mut self.tls,
        }
    }

    /// Each transport with its value.
    pub fn iter(&self) -> impl Iterator<Item = (Transport, &T)> {
        [Transport::Udp, Transport::Tcp, Transport::Tls]
            .into_iter()
            .map(move |t| (t, self.get(t)))
    }
}

/// Relayed packets and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    /// One relayed packet: two additions on the server's own memory, no lock, no atomic.
    #[inline]
    pub(super) fn add(&mut self, payload_len: usize) {
        self.packets += 1;
        self.bytes += payload_len as u64;
    }
}

/// Why a request's credentials were refused (RFC 8489 §9.2.4, in its order). Each maps to the answer it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Realm, nonce or username missing, or PASSWORD-ALGORITHMS not the list we sent (400).
    BadRequest,
    /// A realm that is not ours (401).
    WrongRealm,
    /// No such static user, and not a REST username (401).
    UnknownUser,
    /// A REST credential past its expiry, or expiring further ahead than allowed (401).
    Expired,
    /// MESSAGE-INTEGRITY does not match any of the user's keys: a wrong password or secret (401).
    BadIntegrity,
    /// The nonce is no longer valid (438): expected every nonce lifetime, the client retries at once.
    StaleNonce,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 6] = [
        AuthFailure::BadRequest,
        AuthFailure::WrongRealm,
        AuthFailure::UnknownUser,
        AuthFailure::Expired,
        AuthFailure::BadIntegrity,
        AuthFailure::StaleNonce,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::BadRequest => "bad_request",
            AuthFailure::WrongRealm => "wrong_realm",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Expired => "expired",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::StaleNonce => "stale_nonce",
        }
    }
}

/// Refused credentials by [`AuthFailure`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthFailures([u64; AuthFailure::ALL.len()]);

impl AuthFailures {
    pub fn get(&self, reason: AuthFailure) -> u64 {
        self.0.get(reason as usize).copied().unwrap_or(0)
    }

    pub(super) fn add(&mut self, reason: AuthFailure) {
        if let Some(n) = self.0.get_mut(reason as usize) {
            *n += 1;
        }
    }

    /// Every reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (AuthFailure, u64)> + '_ {
        AuthFailure::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// The error codes this server answers with (RFC 8489 §14.8, RFC 8656 §18); anything else is counted as `other`.
pub const ERROR_CODES: [u16; 13] = [300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508];

/// Error answers by code: [`ERROR_CODES`], then one slot for any other code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorResponses([u64; ERROR_CODES.len() + 1]);

impl ErrorResponses {
    /// The count for `code`; `None` asks for the codes outside [`ERROR_CODES`].
    pub fn get(&self, code: Option<u16>) -> u64 {
        self.0.get(Self::slot(code)).copied().unwrap_or(0)
    }

    pub(super) fn add(&mut self, code: u16) {
        if let Some(n) = self.0.get_mut(Self::slot(Some(code))) {
            *n += 1;
        }
    }

    /// Every known code (`Some`) and the others (`None`) with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (Option<u16>, u64)> + '_ {
        ERROR_CODES
            .into_iter()
            .map(Some)
            .chain([None])
            .map(|code| (code, self.get(code)))
    }

    fn slot(code: Option<u16>) -> usize {
        code.and_then(|c| ERROR_CODES.iter().position(|k| *k == c))
            .unwrap_or(ERROR_CODES.len())
    }
}

/// Allocate refused by `turn::Quotas`, by the quota that was spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaRefusals {
    pub total: u64,
    pub user: u64,
    pub source: u64,
    /// New allocations past their source's rate (486).
    pub rate: u64,
    /// EVEN-PORT reservations over their budget (508): the server's or the source's.
    pub reservations: u64,
}

/// Why an allocation ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Its lifetime ran out without a Refresh.
    Expired,
    /// The client sent a Refresh with lifetime 0.
    Deleted,
    /// Its TCP/TLS connection closed (RFC 8656 §7).
    ConnectionClosed,
}

impl Ended {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Ended::Expired => "expired",
            Ended::Deleted => "deleted",
            Ended::ConnectionClosed => "connection-closed",
        }
    }
}

impl Stats {
    /// Adds another server's counters to these: what a scrape reports is the sum over workers.
    pub fn add(&mut self, other: &Stats) {
        self.allocations += other.allocations;
        self.permissions += other.permissions;
        self.channels += other.channels;
        for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            *self.allocations_by_transport.get_mut(t) += other.allocations_by_transport.get(t);
            *self.allocations_created.get_mut(t) += other.allocations_created.get(t);
            for (mine, theirs) in [
                (&mut self.to_peer, &other.to_peer),
                (&mut self.to_client, &other.to_client),
            ] {
                let (m, o) = (mine.get_mut(t), theirs.get(t));
                m.packets += o.packets;
                m.bytes += o.bytes;
            }
        }
        self.dropped_packets += other.dropped_packets;
        self.malformed_packets += other.malformed_packets;
        self.challenges += other.challenges;
        for (mine, theirs) in self.auth_failures.0.iter_mut().zip(other.auth_failures.0) {
            *mine += theirs;
        }
        for (mine, theirs) in self.error_responses.0.iter_mut().zip(other.error_responses.0) {
            *mine += theirs;
        }
        self.quota_refusals.total += other.quota_refusals.total;
        self.quota_refusals.user += other.quota_refusals.user;
        self.quota_refusals.source += other.quota_refusals.source;
        self.quota_refusals.rate += other.quota_refusals.rate;
        self.quota_refusals.reservations += other.quota_refusals.reservations;
        self.peer_refusals += other.peer_refusals;
        self.reflection_drops += other.reflection_drops;
        self.relay_receive_pauses += other.relay_receive_pauses;
        for (mine, theirs) in [
            (&mut self.fast_path_to_peer, &other.fast_path_to_peer),
            (&mut self.fast_path_to_client, &other.fast_path_to_client),
        ] {
            mine.packets += theirs.packets;
            mine.bytes += theirs.bytes;
        }
    }
}

impl Transport {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}->{}", self.transport, self.client, self.server)
    }
}
