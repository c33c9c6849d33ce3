//! Connection outcomes reported by the SDK and diagnosed by `outcome` (both sides' view of each pair).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::encode::{counters, histogram, Result};

#[derive(Debug)]
pub(crate) struct OutcomeCollector {
    pub outcomes: Arc<outcome::Outcomes>,
}

impl Collector for OutcomeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        encode_outcomes(&mut enc, &self.outcomes.snapshot(unix))
    }
}

pub(crate) fn encode_outcomes(enc: &mut DescriptorEncoder, s: &outcome::OutcomeSnapshot) -> Result {
    // Connected pairs by path; a pair counted as connected without a path (none should be) stays visible.
    let by_path: u64 = s.by_path.values().sum();
    let mut samples: Vec<([(&str, &str); 2], u64)> = s
        .by_path
        .iter()
        .map(|(path, n)| ([("outcome", "connected"), ("path", path.as_str())], *n))
        .collect();
    if s.connected > by_path {
        samples.push(([("outcome", "connected"), ("path", "unknown")], s.connected - by_path));
    }
    samples.push(([("outcome", "failed"), ("path", "none")], s.failed));
    counters(
        enc,
        "traverse_connections",
        "Peer connections reported by the SDK, by outcome and, when connected, the selected pair's path \
         (direct-host, direct-srflx, relay-udp, relay-tcp, relay-tls, ...)",
        samples,
    )?;
    counters(
        enc,
        "traverse_connection_failures",
        "Failed peer connections, by the post-mortem's reason",
        s.by_reason
            .iter()
            .map(|(reason, n)| ([("reason", reason.as_str())], *n)),
    )?;
    // Every reason is written, 0 included: an alert on a rate needs the series before the first drop.
    counters(
        enc,
        "traverse_connection_drops",
        "Calls that connected and then dropped (the SDK's ICE restarts did not recover them), by the post-mortem's \
         reason (peer-lost, peer-left, network-changed, relay-lost, path-lost)",
        outcome::Reason::DROPS.iter().map(|r| {
            (
                [("reason", r.code())],
                s.dropped_by_reason.get(r.code()).copied().unwrap_or(0),
            )
        }),
    )?;
    counters(
        enc,
        "traverse_connection_recoveries",
        "Interruptions calls survived: a connected call broke and came back by itself, by what broke it \
         (ice-disconnected, ice-failed, network-change, network-offline, session-lost, node-lost, unknown)",
        s.recovered_by_cause
            .iter()
            .map(|(cause, n)| ([("cause", cause.as_str())], *n)),
    )?;
    let r = &s.time_to_recover_ms;
    let recover: Vec<(f64, u64)> = r.buckets.iter().map(|(ms, n)| (ms / 1000.0, *n)).collect();
    histogram(
        enc,
        "traverse_connection_recovery_seconds",
        "From a call's break to connected again, as the SDK measured it",
        &recover,
        r.sum_ms / 1000.0,
        r.count,
    )?;
    let t = &s.time_to_connect_ms;
    let seconds: Vec<(f64, u64)> = t.buckets.iter().map(|(ms, n)| (ms / 1000.0, *n)).collect();
    histogram(
        enc,
        "traverse_connection_time_to_connect_seconds",
        "Time from the peer connection's creation to connected, as the SDK measured it",
        &seconds,
        t.sum_ms / 1000.0,
        t.count,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::collections::BTreeMap;

    #[derive(Debug)]
    struct Fixed(outcome::OutcomeSnapshot);

    impl Collector for Fixed {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result {
            encode_outcomes(&mut enc, &self.0)
        }
    }

    #[test]
    fn outcomes_by_path_and_reason_and_the_histogram() {
        let snapshot = outcome::OutcomeSnapshot {
            connected: 3,
            failed: 1,
            by_path: BTreeMap::from([("relay-udp".to_owned(), 1), ("direct-host".to_owned(), 2)]),
            by_reason: BTreeMap::from([("no-relay".to_owned(), 1)]),
            dropped: 2,
            dropped_by_reason: BTreeMap::from([("relay-lost".to_owned(), 2)]),
            recovered: 3,
            recovered_by_cause: BTreeMap::from([("network-change".to_owned(), 3)]),
            time_to_recover_ms: outcome::TimeToConnect {
                buckets: vec![(1000.0, 1), (3000.0, 3)],
                sum_ms: 5000.0,
                count: 3,
            },
            time_to_connect_ms: outcome::TimeToConnect {
                buckets: vec![(100.0, 1), (1000.0, 2)],
                sum_ms: 2600.0,
                count: 3,
            },
            minutes: Vec::new(),
            recent_failures: Vec::new(),
            latest_by_reason: Default::default(),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(snapshot)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "traverse_connections_total{outcome=\"connected\",path=\"direct-host\"} 2",
            "traverse_connections_total{outcome=\"connected\",path=\"relay-udp\"} 1",
            "traverse_connections_total{outcome=\"failed\",path=\"none\"} 1",
            "traverse_connection_failures_total{reason=\"no-relay\"} 1",
            "traverse_connection_drops_total{reason=\"relay-lost\"} 2",
            "traverse_connection_drops_total{reason=\"peer-lost\"} 0",
            "traverse_connection_recoveries_total{cause=\"network-change\"} 3",
            "traverse_connection_recovery_seconds_count 3",
            "traverse_connection_time_to_connect_seconds_bucket{le=\"0.1\"} 1",
            "traverse_connection_time_to_connect_seconds_bucket{le=\"1.0\"} 2",
            "traverse_connection_time_to_connect_seconds_bucket{le=\"+Inf\"} 3",
            "traverse_connection_time_to_connect_seconds_sum 2.6",
            "traverse_connection_time_to_connect_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
