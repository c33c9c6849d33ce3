//! Signaling: the hub's `signal::HubStats`, asked by the scrape handler (the hub is a task; a collector is
//! synchronous) and left here for the collector.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::encode::{counter, counters, gauge, Result};

pub(crate) struct SignalCollector {
    pub latest: Arc<Mutex<Option<signal::HubStats>>>,
    pub upgrade_refusals: Option<crate::UpgradeRefusalsFn>,
    pub http_requests_refused: Option<crate::CountFn>,
}

impl std::fmt::Debug for SignalCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalCollector").finish_non_exhaustive()
    }
}

impl Collector for SignalCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result {
        if let Some(read) = &self.upgrade_refusals {
            counters(
                &mut enc,
                "traverse_signal_upgrade_refusals",
                "Signaling sockets refused before the WebSocket upgrade (an HTTP answer), by code",
                read().into_iter().map(|(code, n)| ([("code", code)], n)),
            )?;
        }
        if let Some(read) = &self.http_requests_refused {
            counters(
                &mut enc,
                "traverse_http_requests_refused",
                "HTTP requests refused before routing (429, connection closed), by reason: rate \
                 (limits.requests_per_second_per_source)",
                [([("reason", "rate")], read())],
            )?;
        }
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        match latest.as_ref() {
            Some(stats) => encode_signal(&mut enc, stats),
            None => Ok(()),
        }
    }
}

pub(crate) fn encode_signal(enc: &mut DescriptorEncoder, s: &signal::HubStats) -> Result {
    gauge(
        enc,
        "traverse_signal_sockets",
        "Open signaling WebSockets",
        s.connections,
    )?;
    gauge(enc, "traverse_signal_rooms", "Rooms with at least one session", s.rooms)?;
    gauge(
        enc,
        "traverse_signal_sessions",
        "Sessions (peers in rooms), connected or in their grace period",
        s.sessions,
    )?;
    gauge(
        enc,
        "traverse_signal_sessions_in_grace",
        "Sessions whose socket dropped, kept for a resume until signal.resume_grace runs out",
        s.sessions_in_grace,
    )?;
    gauge(
        enc,
        "traverse_signal_replay_frames",
        "Frames kept for replay over all sessions (unacknowledged, or queued for a dropped peer)",
        s.replay_frames,
    )?;
    gauge(
        enc,
        "traverse_signal_held_bytes",
        "Bytes of frames kept for sessions, as charged to the signaling budgets",
        s.held_bytes,
    )?;
    counter(
        enc,
        "traverse_signal_relayed",
        "Signals delivered to a recipient's stream",
        s.relayed,
    )?;
    counter(
        enc,
        "traverse_signal_refused",
        "Frames refused for a signaling byte budget (queue-full, source-full, server-full)",
        s.refused,
    )?;
    counters(
        enc,
        "traverse_signal_messages",
        "Client messages received, by type",
        s.messages.iter().map(|(kind, n)| ([("type", *kind)], *n)),
    )?;
    counters(
        enc,
        "traverse_signal_errors",
        "Refusals sent to clients (error frames), by code",
        s.errors.iter().map(|(code, n)| ([("code", *code)], *n)),
    )?;
    counters(
        enc,
        "traverse_signal_closes",
        "Sockets closed by the server, by WebSocket close code",
        s.closes.iter().map(|(code, n)| ([("code", code.to_string())], *n)),
    )?;
    counter(
        enc,
        "traverse_signal_resumes",
        "Sessions resumed on a new socket",
        s.resumes,
    )?;
    counter(
        enc,
        "traverse_signal_outcome_reports_refused",
        "Connection outcome reports dropped: about a peer the reporter had not negotiated with, or past its allowance",
        s.outcomes_refused,
    )?;
    counters(
        enc,
        "traverse_signal_undeliverable",
        "Signals that never reached their recipient (undeliverable frames), by reason",
        s.undeliverable.iter().map(|(reason, n)| ([("reason", *reason)], *n)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::collections::BTreeMap;

    #[test]
    fn the_hubs_last_answer_is_exposed_and_nothing_before_one() {
        let latest = Arc::new(Mutex::new(None));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SignalCollector {
            latest: latest.clone(),
            upgrade_refusals: None,
            http_requests_refused: None,
        }));
        let encode = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        assert_eq!(
            encode(),
            "# EOF\n",
            "a hub that did not answer is left out, not reported as zeros"
        );
        *latest.lock().unwrap() = Some(signal::HubStats {
            connections: 3,
            sessions_in_grace: 1,
            messages: BTreeMap::from([("join", 2), ("signal", 5)]),
            closes: BTreeMap::from([(4200, 1)]),
            undeliverable: BTreeMap::from([("peer-left", 2)]),
            resumes: 1,
            ..signal::HubStats::default()
        });
        let text = encode();
        for line in [
            "traverse_signal_sockets 3",
            "traverse_signal_sessions_in_grace 1",
            "traverse_signal_messages_total{type=\"signal\"} 5",
            "traverse_signal_closes_total{code=\"4200\"} 1",
            "traverse_signal_undeliverable_total{reason=\"peer-left\"} 2",
            "traverse_signal_resumes_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::collections::BTreeMap;

    #[test]
    fn refusals_before_the_upgrade_are_exposed_even_without_the_hub() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SignalCollector {
            latest: Arc::new(Mutex::new(None)),
            upgrade_refusals: Some(Arc::new(|| BTreeMap::from([("too-many-connections", 3)]))),
            http_requests_refused: Some(Arc::new(|| 7)),
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = "traverse_signal_upgrade_refusals_total{code=\"too-many-connections\"} 3";
        assert!(text.lines().any(|l| l == line), "{text}");
        let line = "traverse_http_requests_refused_total{reason=\"rate\"} 7";
        assert!(text.lines().any(|l| l == line), "{text}");
    }
}
