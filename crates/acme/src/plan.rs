//! The decisions of the ACME task, sans-IO: what to do with the certificate held (keep it until when, or order
//! now and why), how long to wait after a failure, which challenge to answer, and what to tell the operator about a
//! CA's refusal. Time and randomness come in as arguments, so every decision is a plain function under test.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use server::Validity;

/// A certificate on disk: the names it was ordered for and its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub names: Vec<String>,
    pub validity: Validity,
}

/// What the task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Serve the held certificate; order its successor at `renew_at`.
    Keep { renew_at: SystemTime },
    /// Order a certificate now.
    Order(Why),
}

/// Why a certificate is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// None is stored (first start, or another directory).
    NoCertificate,
    /// The stored one does not cover every configured name.
    NamesChanged,
    /// Past its renewal time.
    Renewal,
    /// Past its notAfter.
    Expired,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::NoCertificate => "no certificate stored",
            Why::NamesChanged => "the stored certificate does not cover every configured name",
            Why::Renewal => "renewal is due",
            Why::Expired => "the stored certificate has expired",
        })
    }
}

/// Decides from the held certificate. `jitter` in `[0, 1)` spreads renewals of servers that started together.
pub fn next(now: SystemTime, wanted: &[String], held: Option<&Held>, jitter: f64) -> Next {
    let Some(held) = held else {
        return Next::Order(Why::NoCertificate);
    };
    if !covers(&held.names, wanted) {
        return Next::Order(Why::NamesChanged);
    }
    if now >= unix(held.validity.not_after) {
        return Next::Order(Why::Expired);
    }
    let renew_at = renew_at(held.validity, jitter);
    match now >= renew_at {
        true => Next::Order(Why::Renewal),
        false => Next::Keep { renew_at },
    }
}

/// About two thirds into the lifetime (Let's Encrypt's advice for 90-day certificates: renew with 30 days left),
/// less up to a twelfth of it: between 7/12 and 8/12.
pub fn renew_at(validity: Validity, jitter: f64) -> SystemTime {
    let lifetime = validity.not_after.saturating_sub(validity.not_before);
    let early = (lifetime as f64 / 12.0 * jitter.clamp(0.0, 1.0)) as u64;
    unix(validity.not_before + lifetime * 2 / 3 - early.min(lifetime * 2 / 3))
}

/// Every wanted name is among the held ones (DNS names compare without case).
pub fn covers(held: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| held.iter().any(|h| h.eq_ignore_ascii_case(w)))
}

/// Waits between failed orders: `first`, doubling per failure up to `max`, each scaled by 0.75–1.25 (jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Let's Encrypt allows 5 failed validations per name per hour: 30 s, 1, 2, 4, 8 min spends them in about a
    /// quarter of an hour, then the waits grow to the hour.
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(30),
        max: Duration::from_secs(3600),
    };

    /// The wait after the `failures`-th failure in a row (1 for the first).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX));
        doubled.min(self.max).mul_f64(0.75 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// A challenge this server can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// RFC 8737, answered in the TLS handshake on the single port (the CA connects to 443).
    TlsAlpn01,
    /// RFC 8555 §8.3, answered on the plain HTTP port (the CA connects to 80).
    Http01,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::TlsAlpn01 => "tls-alpn-01",
            Method::Http01 => "http-01",
        })
    }
}

/// Which challenges the bound listeners can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ways {
    /// A single port is bound (it must be the one the CA reaches: 443).
    pub tls_alpn: bool,
    /// A plain HTTP port is bound (it must be the one the CA reaches: 80).
    pub http: bool,
}

/// TLS-ALPN-01 when a single port is bound: it needs no other open port. Else HTTP-01.
pub fn choose(offered: &[Method], ways: Ways) -> Option<Method> {
    [(Method::TlsAlpn01, ways.tls_alpn), (Method::Http01, ways.http)]
        .into_iter()
        .find(|(method, can)| *can && offered.contains(method))
        .map(|(method, _)| method)
}

/// What to check, from the type of the CA's problem document (RFC 8555 §6.7).
/// `method`: the challenge that failed, `None` for a refusal before any challenge (then either port may matter).
pub fn advice(problem_type: Option<&str>, method: Option<Method>, name: &str) -> String {
    let port = match method {
        Some(Method::TlsAlpn01) => "TCP 443 (listen.single)",
        Some(Method::Http01) => "TCP 80 (listen.http)",
        None => "TCP 443 (listen.single) or 80 (listen.http)",
    };
    let kind = problem_type.and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:"));
    let reachable = format!(
        "{name} must resolve (A/AAAA) to this server's public address, the firewall must let {port} in from \
         anywhere, and nothing else may answer there (an old server, a proxy that terminates TLS)"
    );
    // Read after "check: ".
    match kind {
        Some("dns") => format!("{name} must resolve: its A/AAAA records must point to this server"),
        // Pebble and Boulder also say `unauthorized` when the connection failed; Pebble says `malformed` for a name
        // that does not resolve. Whatever the words, a failed challenge is one of these.
        Some("connection") | Some("tls") | Some("unauthorized") | Some("incorrectResponse") => reachable,
        Some("caa") => format!("the CAA records of {name} must allow this CA"),
        Some("rejectedIdentifier") => {
            format!("whether the CA issues for {name} at all (an internal or reserved name?)")
        }
        Some("rateLimited") => "the CA's rate limits: wait, or use its staging directory while testing".into(),
        Some("invalidContact") => "tls.acme_email, which the CA refused".into(),
        _ if method.is_some() => reachable,
        _ => "tls.acme_directory, and the CA's status page".into(),
    }
}

/// A duration the way an operator reads it: `12d 3h`, `5h 2m`, `4m 10s`, `24s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn held(names: &[&str], not_before: u64, days: u64) -> Held {
        Held {
            names: names.iter().map(|n| n.to_string()).collect(),
            validity: Validity {
                not_before,
                not_after: not_before + days * DAY,
            },
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn durations_read_like_an_operator_would() {
        assert_eq!(human(Duration::from_secs(24)), "24s");
        assert_eq!(human(Duration::from_secs(250)), "4m 10s");
        assert_eq!(human(Duration::from_secs(5 * 3600 + 120)), "5h 2m");
        assert_eq!(human(Duration::from_secs(12 * 86_400 + 3 * 3600 + 5)), "12d 3h");
    }

    #[test]
    fn nothing_held_orders() {
        assert_eq!(
            next(unix(0), &names(&["a.example"]), None, 0.5),
            Next::Order(Why::NoCertificate)
        );
    }

    #[test]
    fn a_fresh_certificate_is_kept_until_about_two_thirds() {
        let h = held(&["a.example", "b.example"], 1_000_000, 90);
        let wanted = names(&["A.example"]);
        let Next::Keep { renew_at } = next(unix(1_000_000 + DAY), &wanted, Some(&h), 0.0) else {
            panic!("kept")
        };
        assert_eq!(renew_at, unix(1_000_000 + 60 * DAY));
        // Full jitter: a twelfth (7.5 days) earlier.
        let Next::Keep { renew_at } = next(unix(1_000_000 + DAY), &wanted, Some(&h), 0.999_999) else {
            panic!("kept")
        };
        let early = unix(1_000_000 + 60 * DAY).duration_since(renew_at).unwrap();
        assert!(early > Duration::from_secs(7 * DAY) && early <= Duration::from_secs(7 * DAY + DAY / 2));
        assert_eq!(
            next(unix(1_000_000 + 61 * DAY), &wanted, Some(&h), 0.0),
            Next::Order(Why::Renewal)
        );
        assert_eq!(
            next(unix(1_000_000 + 90 * DAY), &wanted, Some(&h), 0.0),
            Next::Order(Why::Expired)
        );
    }

    #[test]
    fn a_new_name_orders_at_once() {
        let h = held(&["a.example"], 0, 90);
        assert_eq!(
            next(unix(DAY), &names(&["a.example", "b.example"]), Some(&h), 0.0),
            Next::Order(Why::NamesChanged)
        );
    }

    #[test]
    fn a_short_lifetime_renews_at_two_thirds_too() {
        let h = held(&["a.example"], 100, 0);
        let h = Held {
            validity: Validity {
                not_before: 100,
                not_after: 130,
            },
            ..h
        };
        assert_eq!(renew_at(h.validity, 0.0), unix(120));
        assert!(renew_at(h.validity, 1.0) >= unix(117));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let b = Backoff {
            first: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        };
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(30));
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay(5, 0.5), Duration::from_secs(480));
        assert_eq!(b.delay(8, 0.5), Duration::from_secs(3600));
        assert_eq!(b.delay(1000, 0.5), Duration::from_secs(3600));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(22_500));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(37_500));
    }

    #[test]
    fn tls_alpn_first_when_a_single_port_is_bound() {
        let both = [Method::Http01, Method::TlsAlpn01];
        let all = Ways {
            tls_alpn: true,
            http: true,
        };
        assert_eq!(choose(&both, all), Some(Method::TlsAlpn01));
        let http_only = Ways {
            tls_alpn: false,
            http: true,
        };
        assert_eq!(choose(&both, http_only), Some(Method::Http01));
        assert_eq!(choose(&[Method::TlsAlpn01], http_only), None);
        assert_eq!(choose(&[Method::Http01], all), Some(Method::Http01));
    }

    #[test]
    fn advice_follows_the_problem_type() {
        let dns = advice(
            Some("urn:ietf:params:acme:error:dns"),
            Some(Method::Http01),
            "t.example",
        );
        assert!(dns.contains("t.example must resolve"), "{dns}");
        let connection = advice(
            Some("urn:ietf:params:acme:error:connection"),
            Some(Method::TlsAlpn01),
            "t.example",
        );
        assert!(connection.contains("TCP 443"), "{connection}");
        let wrong = advice(
            Some("urn:ietf:params:acme:error:unauthorized"),
            Some(Method::Http01),
            "t.example",
        );
        assert!(wrong.contains("TCP 80"), "{wrong}");
        assert!(advice(None, None, "t").contains("tls.acme_directory"));
        let unknown = advice(
            Some("urn:ietf:params:acme:error:malformed"),
            Some(Method::Http01),
            "t.example",
        );
        assert!(
            unknown.contains("t.example must resolve") && unknown.contains("TCP 80"),
            "{unknown}"
        );
        let refused = advice(Some("urn:ietf:params:acme:error:connection"), None, "t");
        assert!(refused.contains("443") && refused.contains("80"), "{refused}");
    }
}
