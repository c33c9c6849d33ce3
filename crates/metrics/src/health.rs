//! Liveness and readiness, the Kubernetes convention: `/healthz` says the process answers; `/readyz` says whether it
//! should get traffic, with each check in a JSON body. Checks are a list of [`Check`]s set once the server has
//! bound its listeners (before that, not ready: "starting"); a new dependency (Redis, a peer node) adds one.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

/// Within this of its expiry a certificate makes the server not ready: renewal has failed for weeks by then.
pub const CERTIFICATE_MARGIN_SECS: u64 = 7 * 86_400;

/// One readiness check.
pub trait Check: std::fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    /// The check's verdict at `unix_now` (seconds).
    fn run(&self, unix_now: u64) -> CheckResult;
}

/// A check's verdict, as it appears in the `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    /// A sentence for the operator.
    pub detail: String,
}

/// The `/readyz` body: `ready` is every check's `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<CheckResult>,
}

/// The readiness checks, shared by the HTTP ports and the metrics listener.
#[derive(Debug, Default)]
pub struct Health {
    checks: OnceLock<Vec<Arc<dyn Check>>>,
}

impl Health {
    /// Sets the checks once the listeners are bound; later calls are ignored.
    pub fn set_checks(&self, checks: Vec<Arc<dyn Check>>) {
        let _ = self.checks.set(checks);
    }

    pub fn readiness(&self, unix_now: u64) -> Readiness {
        let checks = match self.checks.get() {
            Some(checks) => checks.iter().map(|c| c.run(unix_now)).collect(),
            None => vec![CheckResult {
                name: "listeners",
                ok: false,
                detail: "starting: the listeners are not bound yet".into(),
            }],
        };
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The `/healthz` body: answering at all is the proof.
    pub fn liveness() -> serde_json::Value {
        serde_json::json!({ "alive": true })
    }
}

/// The listeners bound at start. Binding is all or nothing (`server::start` fails otherwise), so once this check
/// exists it passes; it lists what is served.
#[derive(Debug)]
pub struct ListenersBound {
    pub listeners: Vec<(&'static str, SocketAddr)>,
}

impl Check for ListenersBound {
    fn name(&self) -> &'static str {
        "listeners"
    }

    fn run(&self, _unix_now: u64) -> CheckResult {
        let list: Vec<String> = self.listeners.iter().map(|(kind, a)| format!("{kind} {a}")).collect();
        CheckResult {
            name: self.name(),
            ok: !self.listeners.is_empty(),
            detail: format!("bound: {}", list.join(", ")),
        }
    }
}

/// The TLS certificate in use: readable, valid, and not within [`CERTIFICATE_MARGIN_SECS`] of its expiry.
#[derive(Debug)]
pub struct Certificate {
    pub certs: Arc<server::CertStore>,
}

impl Check for Certificate {
    fn name(&self) -> &'static str {
        "certificate"
    }

    fn run(&self, unix_now: u64) -> CheckResult {
        let status = self.certs.status();
        let (ok, detail) = certificate_verdict(status, unix_now);
        CheckResult {
            name: self.name(),
            ok,
            detail,
        }
    }
}

/// The certificate check's verdict, apart from where the status comes from.
pub fn certificate_verdict(status: server::CertStatus, unix_now: u64) -> (bool, String) {
    let Some(not_after) = status.not_after else {
        return (false, "cannot read the certificate's expiry".into());
    };
    if not_after <= unix_now {
        return (false, format!("expired {} days ago", (unix_now - not_after) / 86_400));
    }
    let days = (not_after - unix_now) / 86_400;
    if not_after - unix_now < CERTIFICATE_MARGIN_SECS {
        return (
            false,
            format!("expires in {days} days: renew it (the reload is automatic)"),
        );
    }
    match status.self_signed {
        true => (
            true,
            "valid, but self-signed (generated at start): browsers refuse it for wss:// and turns:; set tls.cert \
             and tls.key"
                .into(),
        ),
        false => (true, format!("valid for {days} more days")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(bool);

    impl Check for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }

        fn run(&self, _unix_now: u64) -> CheckResult {
            CheckResult {
                name: "fixed",
                ok: self.0,
                detail: String::new(),
            }
        }
    }

    #[test]
    fn not_ready_until_the_checks_are_set_then_every_check_counts() {
        let health = Health::default();
        assert!(!health.readiness(0).ready);
        health.set_checks(vec![Arc::new(Fixed(true)), Arc::new(Fixed(false))]);
        let r = health.readiness(0);
        assert!(!r.ready);
        assert_eq!(r.checks.len(), 2);
        let health = Health::default();
        health.set_checks(vec![Arc::new(Fixed(true))]);
        assert!(health.readiness(0).ready);
    }

    #[test]
    fn a_certificate_near_its_expiry_is_not_ready() {
        let now = 1_800_000_000;
        let status = |days: i64, self_signed| server::CertStatus {
            not_after: Some((now as i64 + days * 86_400) as u64),
            self_signed,
        };
        assert!(certificate_verdict(status(90, false), now).0);
        assert!(!certificate_verdict(status(6, false), now).0);
        assert!(!certificate_verdict(status(-1, false), now).0);
        let (ok, detail) = certificate_verdict(status(1000, true), now);
        assert!(ok && detail.contains("self-signed"), "{detail}");
        let unreadable = server::CertStatus {
            not_after: None,
            self_signed: false,
        };
        assert!(!certificate_verdict(unreadable, now).0);
    }
}
