#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! What an operator scrapes and probes: the Prometheus exposition (`/metrics`), liveness (`/healthz`) and readiness
//! (`/readyz`).
//!
//! Model: nothing here is written on the packet path. Each source keeps its own numbers the way it already does —
//! each TURN worker its plain-integer `turn::Stats` (copied once a second into `server::WorkerStats`), the signaling
//! hub its `signal::HubStats` (asked at scrape time: the hub is a task), `outcome::Outcomes` its counts, the kernel
//! the process's — and a collector per source ([`prometheus_client::collector::Collector`]) reads a snapshot of it
//! when Prometheus scrapes. So a scrape costs one pass over the snapshots, and relaying a packet costs two additions
//! to the worker's own memory.
//!
//! [`http::serve`] runs the metrics listener (its own address, `[metrics] listen`; a bearer token when it is not
//! loopback); the same [`Health`] answers on the HTTP ports (`web`).

mod encode;
pub mod health;
pub mod http;
mod outcomes;
pub mod process;
mod signaling;
mod turn_stats;

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

pub use health::{Check, CheckResult, Health, Readiness};
pub use http::{Endpoint, HubStatsFn};

/// Where the numbers come from; each is read at scrape time.
#[derive(Clone)]
pub struct Sources {
    /// The TURN workers' counters (at most ~1 s old).
    pub turn: Arc<server::WorkerStats>,
    /// The certificate in use (its expiry), when TLS is served.
    pub certs: Option<Arc<server::CertStore>>,
    /// Connection outcomes reported by the SDK.
    pub outcomes: Option<Arc<outcome::Outcomes>>,
    /// Signaling sockets refused before the WebSocket upgrade, by code (`web::Web::upgrade_refusals`).
    pub upgrade_refusals: Option<UpgradeRefusalsFn>,
    /// HTTP requests refused for their source's request rate (`web::Web::requests_refused`).
    pub http_requests_refused: Option<CountFn>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("turn", &self.turn)
            .field("certs", &self.certs.is_some())
            .field("outcomes", &self.outcomes.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads the counts of signaling sockets refused before the upgrade, by code.
pub type UpgradeRefusalsFn = Arc<dyn Fn() -> std::collections::BTreeMap<&'static str, u64> + Send + Sync>;

/// Reads one counter.
pub type CountFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The registry with every collector, and the slot the scrape handler puts the hub's answer in.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    hub: Arc<Mutex<Option<signal::HubStats>>>,
    /// One scrape encodes at a time: the hub slot is that scrape's until its text is written (a concurrent scrape
    /// whose hub did not answer blanked another's signaling metrics).
    encoding: Mutex<()>,
}

impl Metrics {
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::default();
        let hub = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(turn_stats::TurnCollector {
            workers: sources.turn,
            certs: sources.certs,
        }));
        registry.register_collector(Box::new(signaling::SignalCollector {
            latest: hub.clone(),
            upgrade_refusals: sources.upgrade_refusals,
            http_requests_refused: sources.http_requests_refused,
        }));
        if let Some(outcomes) = sources.outcomes {
            registry.register_collector(Box::new(outcomes::OutcomeCollector { outcomes }));
        }
        registry.register_collector(Box::new(process::ProcessCollector));
        Self {
            registry,
            hub,
            encoding: Mutex::new(()),
        }
    }

    /// The OpenMetrics text of every collector. `hub` is the signaling hub's answer to this scrape (`None`: it did
    /// not answer, and its metrics are left out rather than reported as zero).
    pub fn encode(&self, hub: Option<signal::HubStats>) -> String {
        let _one = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        *self.hub.lock().unwrap_or_else(|e| e.into_inner()) = hub;
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scrapes at once, some with the hub's answer and some without: each text has the signaling metrics exactly
    /// when its own scrape had the answer.
    #[test]
    fn concurrent_scrapes_each_report_their_own_hub_answer() {
        let metrics = Arc::new(Metrics::new(Sources {
            turn: Arc::new(server::WorkerStats::new(1)),
            certs: None,
            outcomes: None,
            upgrade_refusals: None,
            http_requests_refused: None,
        }));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for i in 0..300 {
                        let answered = (i + t) % 2 == 0;
                        let text = metrics.encode(answered.then(signal::HubStats::default));
                        assert_eq!(
                            text.contains("traverse_signal_sessions"),
                            answered,
                            "scrape {i} of thread {t}"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
