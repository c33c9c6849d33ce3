//! Failed TLS handshakes, named: the client refused the certificate (and why, from its alert), spoke no common
//! protocol, was not TLS, hung up, or timed out.
//!
//! A browser that refuses a self-signed or mismatched certificate fails TURN over TLS without a word to the page:
//! the page only sees "no relay candidate", which looks like a blocked network. The server is the one party that saw
//! the client's alert. So each failure is logged at `info` once per source and reason (10 minutes), and
//! kept for a few minutes per source so that `/check` and the demo, served to that same browser, can ask
//! `GET /api/tls-failures` and say "your browser refused the server's certificate" instead of "blocked".

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls::AlertDescription;
use serde::Serialize;
use source::Source;

/// Why a handshake failed, by whose doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandshakeFailure {
    /// The client refused the certificate: it does not trust its issuer (self-signed, a private CA).
    UnknownCa,
    /// The client refused the certificate as expired (or not yet valid).
    CertificateExpired,
    /// The client refused the certificate for another reason: most often a name it does not cover.
    CertificateRefused,
    /// No protocol version, cipher suite or ALPN protocol in common.
    Protocol,
    /// What arrived was not a TLS handshake.
    NotTls,
    /// The client closed the connection during the handshake without saying why.
    Closed,
    /// The handshake did not finish in time.
    Timeout,
}

impl HandshakeFailure {
    /// From what the TLS accept returned: rustls' error travels inside the `io::Error`.
    pub fn of(e: &std::io::Error) -> Self {
        use rustls::Error as E;
        if e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::ConnectionReset {
            return Self::Closed;
        }
        match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
            Some(E::AlertReceived(alert)) => match alert {
                AlertDescription::UnknownCA => Self::UnknownCa,
                AlertDescription::CertificateExpired => Self::CertificateExpired,
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::AccessDenied => Self::CertificateRefused,
                AlertDescription::ProtocolVersion
                | AlertDescription::HandshakeFailure
                | AlertDescription::InsufficientSecurity
                | AlertDescription::NoApplicationProtocol => Self::Protocol,
                _ => Self::Closed,
            },
            Some(E::PeerIncompatible(_) | E::NoApplicationProtocol) => Self::Protocol,
            Some(E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. } | E::InappropriateMessage { .. }) => {
                Self::NotTls
            }
            _ => Self::Closed,
        }
    }

    /// Whether the client refused the server's certificate (the operator's fix, not the network's).
    pub fn is_certificate(self) -> bool {
        matches!(
            self,
            Self::UnknownCa | Self::CertificateExpired | Self::CertificateRefused
        )
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown-ca",
            Self::CertificateExpired => "certificate-expired",
            Self::CertificateRefused => "certificate-refused",
            Self::Protocol => "protocol",
            Self::NotTls => "not-tls",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
        }
    }

    /// What happened and what to do, knowing whether the server's certificate is the self-signed one it generated
    /// (browsers send a generic alert for it, which alone would point at the name).
    pub fn explain(self, self_signed: bool) -> &'static str {
        match self.is_certificate() && self_signed {
            true => {
                "the client refused the server's self-signed certificate (generated at start, no certificate \
                 configured): browsers refuse it for TURN over TLS and WSS; install one from a public CA (tls.cert \
                 and tls.key, or --domain for ACME)"
            }
            false => self.sentence(),
        }
    }

    /// What happened and what to do, for the log and for the page.
    pub fn sentence(self) -> &'static str {
        match self {
            Self::UnknownCa => {
                "the client does not trust the certificate's issuer (a self-signed certificate, or a private CA): \
                 browsers refuse TURN over TLS and WSS with it; use a certificate from a public CA (tls.cert, or \
                 --domain for ACME)"
            }
            Self::CertificateExpired => {
                "the client refused the certificate as expired: renew it (tls.cert, or --domain)"
            }
            Self::CertificateRefused => {
                "the client refused the certificate, most often because it does not cover the name the client \
                 connected to (the host in the turns: URL): put that name in the certificate or in signal.public_host"
            }
            Self::Protocol => "the client shares no TLS version, cipher suite or ALPN protocol with the server",
            Self::NotTls => {
                "the client did not speak TLS on a TLS port (a plain TURN or HTTP client on the wrong port?)"
            }
            Self::Closed => "the client closed the connection during the TLS handshake without saying why",
            Self::Timeout => "the TLS handshake did not finish in time",
        }
    }
}

/// One failure a source's clients had, as `/api/tls-failures` shows it to that source.
#[derive(Debug, Clone, Serialize)]
pub struct SeenFailure {
    pub port: u16,
    pub reason: HandshakeFailure,
    pub message: &'static str,
    #[serde(rename = "secondsAgo")]
    pub seconds_ago: u64,
}

struct Seen {
    at: Instant,
    port: u16,
    reason: HandshakeFailure,
    self_signed: bool,
}

/// Sources remembered (each a few entries; the oldest source is forgotten beyond it).
const MAX_SOURCES: usize = 4096;
/// Failures remembered per source.
const PER_SOURCE: usize = 8;
/// How long a failure is remembered, and how long a (source, reason) stays quiet in the log after its line.
const KEEP: Duration = Duration::from_secs(600);
/// Log lines a second at most, whatever the number of clients (a scan of the TLS port must not flood the log).
const LINES_PER_SECOND: u32 = 20;

/// The failures of the last minutes, per source. Touched only when a handshake fails: a lock is fine here.
#[derive(Debug, Default)]
pub struct Handshakes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_source: HashMap<Source, VecDeque<Seen>>,
    /// When each (source, reason) was last logged. Per source, not per address: an IPv6 client has a /64 of
    /// addresses, and rotating through them took every line of the log's budget from everyone else.
    logged: HashMap<(Source, HandshakeFailure), Instant>,
    second: Option<Instant>,
    lines_this_second: u32,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("sources", &self.by_source.len())
            .finish_non_exhaustive()
    }
}

impl Handshakes {
    /// Records a failed handshake from `client` on `local`; logs it unless its source's same failure was logged in
    /// the last 10 minutes or the log's per-second budget is spent. Whether it wrote a line.
    pub fn record(
        &self,
        now: Instant,
        client: SocketAddr,
        local: SocketAddr,
        reason: HandshakeFailure,
        self_signed: bool,
    ) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let source = Source::of(client.ip());
        if !inner.by_source.contains_key(&source) && inner.by_source.len() >= MAX_SOURCES {
            inner.forget_expired(now);
            if inner.by_source.len() >= MAX_SOURCES {
                let oldest = inner
                    .by_source
                    .iter()
                    .min_by_key(|(_, seen)| seen.back().map(|s| s.at))
                    .map(|(s, _)| *s);
                if let Some(oldest) = oldest {
                    inner.by_source.remove(&oldest);
                }
            }
        }
        let seen = inner.by_source.entry(source).or_default();
        if seen.len() >= PER_SOURCE {
            seen.pop_front();
        }
        seen.push_back(Seen {
            at: now,
            port: local.port(),
            reason,
            self_signed,
        });

        let key = (source, reason);
        let quiet = inner.logged.get(&key).is_some_and(|at| now.duration_since(*at) < KEEP);
        if quiet {
            return false;
        }
        if inner
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            inner.second = Some(now);
            inner.lines_this_second = 0;
        }
        if inner.lines_this_second >= LINES_PER_SECOND {
            return false;
        }
        inner.lines_this_second += 1;
        if inner.logged.len() >= MAX_SOURCES * 2 {
            inner.logged.retain(|_, at| now.duration_since(*at) < KEEP);
        }
        inner.logged.insert(key, now);
        let client_ip = client.ip();
        tracing::info!(client = %client_ip, %local, reason = reason.code(), "TLS handshake failed: {}", reason.explain(self_signed));
        true
    }

    /// The failures `ip`'s source had in the last 10 minutes, newest first.
    pub fn seen_from(&self, now: Instant, ip: IpAddr) -> Vec<SeenFailure> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_source
            .get(&Source::of(ip))
            .map(|seen| {
                seen.iter()
                    .rev()
                    .filter(|s| now.duration_since(s.at) < KEEP)
                    .map(|s| SeenFailure {
                        port: s.port,
                        reason: s.reason,
                        message: s.reason.explain(s.self_signed),
                        seconds_ago: now.duration_since(s.at).as_secs(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Inner {
    fn forget_expired(&mut self, now: Instant) {
        self.by_source
            .retain(|_, seen| seen.back().is_some_and(|s| now.duration_since(s.at) < KEEP));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    /// One /64 rotating through its addresses writes one line per reason, and leaves the log's budget to others.
    #[test]
    fn a_source_s_addresses_share_one_quiet_period() {
        let handshakes = Handshakes::default();
        let t0 = Instant::now();
        let local: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let lines = (0..1000u16)
            .filter(|i| {
                let client = SocketAddr::new(format!("2001:db8:1:2::{i:x}").parse().unwrap(), 40_000);
                let at = t0 + Duration::from_millis(u64::from(*i));
                handshakes.record(at, client, local, HandshakeFailure::Closed, false)
            })
            .count();
        assert_eq!(lines, 1, "one line for the /64's reason in 10 minutes");
        let other: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        assert!(handshakes.record(
            t0 + Duration::from_secs(1),
            other,
            local,
            HandshakeFailure::Closed,
            false
        ));
        let later = t0 + KEEP + Duration::from_secs(2);
        let again: SocketAddr = "[2001:db8:1:2::ffff]:40000".parse().unwrap();
        assert!(
            handshakes.record(later, again, local, HandshakeFailure::Closed, false),
            "after 10 minutes"
        );
    }

    #[test]
    fn alerts_name_whose_fault() {
        use rustls::Error as E;
        assert_eq!(
            HandshakeFailure::of(&io(E::AlertReceived(AlertDescription::UnknownCA))),
            HandshakeFailure::UnknownCa
        );
        assert_eq!(
            HandshakeFailure::of(&io(E::AlertReceived(AlertDescription::BadCertificate))),
            HandshakeFailure::CertificateRefused
        );
        assert_eq!(
            HandshakeFailure::of(&io(E::AlertReceived(AlertDescription::CertificateExpired))),
            HandshakeFailure::CertificateExpired
        );
        assert_eq!(
            HandshakeFailure::of(&io(E::AlertReceived(AlertDescription::ProtocolVersion))),
            HandshakeFailure::Protocol
        );
        assert_eq!(
            HandshakeFailure::of(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            HandshakeFailure::Closed
        );
        assert!(HandshakeFailure::UnknownCa.is_certificate() && !HandshakeFailure::Timeout.is_certificate());
        // A browser's generic alert against the generated certificate is about that certificate, not a name.
        assert!(HandshakeFailure::CertificateRefused
            .explain(true)
            .contains("self-signed"));
        assert!(HandshakeFailure::CertificateRefused.explain(false).contains("name"));
        assert_eq!(
            HandshakeFailure::Timeout.explain(true),
            HandshakeFailure::Timeout.sentence()
        );
    }

    #[test]
    fn a_source_sees_only_its_own_recent_failures() {
        let h = Handshakes::default();
        let t0 = Instant::now();
        let local: SocketAddr = "192.0.2.1:5349".parse().unwrap();
        h.record(
            t0,
            "198.51.100.7:40000".parse().unwrap(),
            local,
            HandshakeFailure::UnknownCa,
            false,
        );
        h.record(
            t0,
            "203.0.113.9:40000".parse().unwrap(),
            local,
            HandshakeFailure::Timeout,
            false,
        );
        let seen = h.seen_from(t0 + Duration::from_secs(3), "198.51.100.7".parse().unwrap());
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].port, seen[0].reason, seen[0].seconds_ago),
            (5349, HandshakeFailure::UnknownCa, 3)
        );
        assert!(
            h.seen_from(t0 + KEEP, "198.51.100.7".parse().unwrap()).is_empty(),
            "forgotten after 10 minutes"
        );
    }

    #[test]
    fn memory_is_bounded_per_source_and_in_sources() {
        let h = Handshakes::default();
        let t0 = Instant::now();
        let local: SocketAddr = "192.0.2.1:443".parse().unwrap();
        for i in 0..(PER_SOURCE as u16 + 5) {
            h.record(
                t0,
                SocketAddr::from(([198, 51, 100, 7], 1000 + i)),
                local,
                HandshakeFailure::Closed,
                false,
            );
        }
        assert_eq!(h.seen_from(t0, "198.51.100.7".parse().unwrap()).len(), PER_SOURCE);
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            h.record(t0, SocketAddr::from((ip, 1)), local, HandshakeFailure::Closed, false);
        }
        assert!(h.inner.lock().unwrap().by_source.len() <= MAX_SOURCES);
    }
}
