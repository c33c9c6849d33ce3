//! Signaling: for each endpoint, `GET /healthz` must answer 200 and `GET /ws` with an upgrade must answer 101; over
//! TLS the certificate must be one a browser accepts (unless `--insecure`).

use std::sync::Arc;

use tokio::time::Instant;

use super::net::{tcp_target, timed};
use super::Settings;
use crate::error::CheckError;
use crate::facts::{SignalingFact, Timed};
use crate::http;
use crate::ice::Scheme;
use crate::progress::Progress;
use crate::tls::CertInfo;

/// One signaling endpoint to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub port: u16,
    /// The given server address (as opposed to a probe of `--https-port`/`--http-port`).
    pub primary: bool,
}

/// The endpoints to try: the given one, then HTTPS on `https_port` and HTTP on `http_port`.
pub fn endpoints(s: &Settings) -> Vec<Endpoint> {
    let given = |tls, port| Endpoint {
        tls,
        port,
        primary: true,
    };
    let mut list = Vec::new();
    match (s.server.scheme, s.server.port) {
        (Some(Scheme::Http), port) => list.push(given(false, port.unwrap_or(80))),
        (Some(Scheme::Https), port) => list.push(given(true, port.unwrap_or(443))),
        (None, Some(port)) => {
            list.push(given(true, port));
            list.push(given(false, port));
        }
        (None, None) => {
            list.push(given(true, 443));
            list.push(given(false, 80));
        }
    }
    for (tls, port) in [(true, s.https_port), (false, s.http_port)] {
        if port != 0 && !list.iter().any(|e| e.tls == tls && e.port == port) {
            list.push(Endpoint {
                tls,
                port,
                primary: false,
            });
        }
    }
    list
}

/// An untrusted certificate fails the step unless `--insecure`.
fn certificate_gate(cert: Option<&CertInfo>, insecure: bool) -> Result<(), CheckError> {
    match cert {
        Some(c) if !c.trusted && !insecure => Err(CheckError::Certificate(if c.self_signed {
            "self-signed".to_owned()
        } else {
            c.problem.clone().unwrap_or_default()
        })),
        _ => Ok(()),
    }
}

pub async fn check(s: Arc<Settings>, endpoint: Endpoint, progress: Arc<Progress>) -> SignalingFact {
    let Endpoint { tls, port, primary } = endpoint;
    let scheme = if tls { "https" } else { "http" };
    let host_label = if s.server.host.contains(':') {
        format!("[{}]", s.server.host)
    } else {
        s.server.host.clone()
    };
    let url = format!("{scheme}://{host_label}:{port}");
    let line = progress.start(&format!("signaling {url}"));
    let start = Instant::now();
    let target = match tcp_target(&s, &s.server.host, port, tls).await {
        Ok(t) => t,
        Err(e) => {
            progress.finish(line, false, start.elapsed(), &e.to_string());
            let failed = Timed::new(Err(e), start.elapsed());
            return SignalingFact {
                url,
                port,
                tls,
                primary,
                http: failed.clone(),
                websocket: failed,
                certificate: None,
            };
        }
    };
    let mut certificate = None;
    // At once: where the port drops everything, both wait out the same deadline (one after the other, a dead
    // endpoint cost twice the timeout). Each step (connect, TLS, the exchange) has the timeout of its own, so the
    // outer bound is three of them: at one, it ran out with the first step's and a silent port read as unreachable.
    // Through a proxy, one step more: its CONNECT.
    let bound = s.timeout.saturating_mul(if target.proxy.is_some() { 4 } else { 3 });
    let (healthz, upgrade) = tokio::join!(
        timed(bound, http::get(&target, "/healthz", &[], s.timeout)),
        timed(bound, http::ws_upgrade(&target, "/ws", s.timeout)),
    );
    let http = Timed::new(
        healthz.result.and_then(|r| {
            certificate = r.cert.clone();
            certificate_gate(r.cert.as_ref(), s.insecure)?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(CheckError::Http {
                    status: r.status,
                    message: crate::terminal::line(&String::from_utf8_lossy(&r.body), 120),
                })
            }
        }),
        healthz.took,
    );
    let websocket = Timed::new(
        upgrade.result.and_then(|(status, cert)| {
            if certificate.is_none() {
                certificate = cert.clone();
            }
            certificate_gate(cert.as_ref(), s.insecure)?;
            if status == 101 {
                Ok(())
            } else {
                Err(CheckError::Http {
                    status,
                    message: "the WebSocket upgrade was refused".into(),
                })
            }
        }),
        upgrade.took,
    );
    let fact = SignalingFact {
        url,
        port,
        tls,
        primary,
        http,
        websocket,
        certificate,
    };
    let detail = fact.error().map(ToString::to_string).unwrap_or_default();
    progress.finish(line, fact.ok(), start.elapsed(), &detail);
    fact
}
