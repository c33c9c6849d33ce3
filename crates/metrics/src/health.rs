//! Liveness and readiness, the Kubernetes convention: `/healthz` says the process answers; `/readyz` says whether it
//! should get traffic, with each check in a JSON body. Checks are a list of [`Check`]s set once the server has
//! bound its listeners (before that, not ready: "starting"); a new dependency (Redis, a peer node) adds one.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

/// Within this of its expiry a certificate makes the server not ready: renewal has failed for weeks by then. A
/// short-lived certificate (step-ca's 24 h, Let's Encrypt's 6 days) gets a third of its lifetime instead, which its
/// renewal at two thirds leaves: with 7 days it was never ready.
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
    /// A sentence for the operator; left out where strangers ask (the public ports).
    #[serde(skip_serializing_if = "String::is_empty")]
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
    let Some(validity) = status.validity else {
        return (false, "cannot read the certificate's expiry".into());
    };
    let renew = match status.acme {
        true => "renewal is failing: see the ACME lines in the log",
        false => "renew it (the reload is automatic)",
    };
    if let Some(problem) = validity.problem(unix_now) {
        return (false, format!("{problem}: {renew}"));
    }
    let lifetime = validity.not_after.saturating_sub(validity.not_before);
    let margin = CERTIFICATE_MARGIN_SECS.min(lifetime / 3);
    let left = validity.not_after - unix_now;
    if left < margin {
        let when = match left / 86_400 {
            0 => format!("{} hours", left / 3600),
            days => format!("{days} days"),
        };
        return (false, format!("expires in {when}: {renew}"));
    }
    let days = left / 86_400;
    match (status.self_signed, status.acme) {
        (true, true) => (
            true,
            "waiting for the ACME certificate (see the log): browsers refuse the placeholder for wss:// and turns: \
             meanwhile"
                .into(),
        ),
        (true, false) => (
            true,
            "valid, but self-signed (generated at start): browsers refuse it for wss:// and turns:; set tls.cert \
             and tls.key"
                .into(),
        ),
        (false, _) => (true, format!("valid for {days} more days")),
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
        // Issued `ago` seconds ago, for `life` seconds.
        let at = |ago: u64, life: u64, self_signed, acme| server::CertStatus {
            validity: Some(server::Validity {
                not_before: now - ago,
                not_after: now - ago + life,
            }),
            self_signed,
            acme,
        };
        const DAY: u64 = 86_400;
        assert!(certificate_verdict(at(0, 90 * DAY, false, false), now).0);
        assert!(
            !certificate_verdict(at(84 * DAY, 90 * DAY, false, false), now).0,
            "6 days left of 90"
        );
        let (ok, detail) = certificate_verdict(at(91 * DAY, 90 * DAY, false, false), now);
        assert!(!ok && detail.contains("expired"), "{detail}");
        let (ok, detail) = certificate_verdict(at(0, 1000 * DAY, true, false), now);
        assert!(ok && detail.contains("self-signed"), "{detail}");
        // Short-lived: a 24 h certificate is ready right after issuance and at its renewal time (two thirds in),
        // not in its last third.
        assert!(certificate_verdict(at(60, DAY, false, true), now).0, "just issued");
        assert!(
            certificate_verdict(at(DAY * 2 / 3 - 60, DAY, false, true), now).0,
            "at renewal"
        );
        let (ok, detail) = certificate_verdict(at(DAY * 3 / 4, DAY, false, true), now);
        assert!(!ok && detail.contains("hours") && detail.contains("ACME"), "{detail}");
        // Dated in the future: every client refuses it.
        let (ok, detail) = certificate_verdict(at(0, 90 * DAY, false, false), now - 3600);
        assert!(!ok && detail.contains("not valid for another"), "{detail}");
        let (ok, detail) = certificate_verdict(at(0, 1000 * DAY, true, true), now);
        assert!(ok && detail.contains("waiting for the ACME certificate"), "{detail}");
        let unreadable = server::CertStatus {
            validity: None,
            self_signed: false,
            acme: false,
        };
        assert!(!certificate_verdict(unreadable, now).0);
    }
}
