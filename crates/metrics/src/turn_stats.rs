//! TURN: the sum of the workers' `turn::Stats` copies, and the certificate's expiry.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::encode::{counter, counters, gauge, gauges, Result};

#[derive(Debug)]
pub(crate) struct TurnCollector {
    pub workers: Arc<server::WorkerStats>,
    pub certs: Option<Arc<server::CertStore>>,
}

impl Collector for TurnCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result {
        encode_turn(&mut enc, &self.workers.sum())?;
        gauge(
            &mut enc,
            "traverse_tcp_connections",
            "TCP/TLS/HTTP/WebSocket connections held now, over every listener (limits.max_connections)",
            self.workers.tcp_connections(),
        )?;
        counters(
            &mut enc,
            "traverse_tcp_connections_refused",
            "TCP/TLS/HTTP connections closed at accept, by the budget that refused them: total \
             (limits.max_connections), source (limits.max_connections_per_source), rate \
             (limits.connections_per_second_per_source)",
            self.workers
                .connections_refused()
                .map(|(reason, n)| ([("reason", reason)], n)),
        )?;
        if let Some(certs) = &self.certs {
            let status = certs.status();
            if let Some(not_after) = status.not_after() {
                gauge(
                    &mut enc,
                    "traverse_tls_certificate_expiry_timestamp_seconds",
                    "When the TLS certificate in use expires (Unix seconds); re-read after every reload",
                    not_after,
                )?;
            }
            gauge(
                &mut enc,
                "traverse_tls_certificate_self_signed",
                "1 when the certificate is the one generated at start (no tls.cert): valid, but browsers refuse it",
                u64::from(status.self_signed),
            )?;
        }
        Ok(())
    }
}

pub(crate) fn encode_turn(enc: &mut DescriptorEncoder, s: &turn::Stats) -> Result {
    let by_transport = |per: &turn::PerTransport<u64>| {
        per.iter()
            .map(|(t, n)| ([("transport", t.as_str())], *n))
            .collect::<Vec<_>>()
    };
    gauges(
        enc,
        "traverse_turn_allocations",
        "Live TURN allocations, by the client's transport",
        by_transport(&s.allocations_by_transport),
    )?;
    counters(
        enc,
        "traverse_turn_allocations_created",
        "TURN allocations created, by the client's transport",
        by_transport(&s.allocations_created),
    )?;
    gauge(
        enc,
        "traverse_turn_permissions",
        "Live permissions (peer IPs) over all allocations",
        s.permissions,
    )?;
    gauge(
        enc,
        "traverse_turn_channels",
        "Live channel bindings over all allocations",
        s.channels,
    )?;
    let traffic = |pick: fn(&turn::Traffic) -> u64| {
        [("to_peer", &s.to_peer), ("to_client", &s.to_client)]
            .into_iter()
            .flat_map(move |(direction, per)| {
                per.iter()
                    .map(move |(t, traffic)| ([("direction", direction), ("transport", t.as_str())], pick(traffic)))
            })
            .collect::<Vec<_>>()
    };
    counters(
        enc,
        "traverse_turn_relayed_packets",
        "Packets relayed, by direction (to_peer: from a client; to_client: from a peer) and the client's transport",
        traffic(|t| t.packets),
    )?;
    counters(
        enc,
        "traverse_turn_relayed_bytes",
        "Payload bytes relayed (without ChannelData or STUN framing), by direction and the client's transport",
        traffic(|t| t.bytes),
    )?;
    let fast = [("to_peer", &s.fast_path_to_peer), ("to_client", &s.fast_path_to_client)];
    counters(
        enc,
        "traverse_turn_fast_path_packets",
        "Packets the kernel fast path (XDP) relayed for UDP channels, by direction; not in traverse_turn_relayed_*",
        fast.map(|(direction, t)| ([("direction", direction)], t.packets)),
    )?;
    counters(
        enc,
        "traverse_turn_fast_path_bytes",
        "Payload bytes the kernel fast path (XDP) relayed, by direction (read from its per-CPU counters every second)",
        fast.map(|(direction, t)| ([("direction", direction)], t.bytes)),
    )?;
    counter(
        enc,
        "traverse_turn_dropped_packets",
        "Packets dropped: no permission or channel, expired, over the bandwidth cap, or refused by the reflection guard",
        s.dropped_packets,
    )?;
    counter(
        enc,
        "traverse_turn_malformed_packets",
        "Packets that were neither valid STUN nor valid ChannelData",
        s.malformed_packets,
    )?;
    counter(
        enc,
        "traverse_turn_auth_challenges",
        "Requests without credentials answered 401 with a nonce: the expected first step of every client",
        s.challenges,
    )?;
    counters(
        enc,
        "traverse_turn_auth_failures",
        "Requests whose credentials were refused, by reason",
        s.auth_failures.iter().map(|(r, n)| ([("reason", r.as_str())], n)),
    )?;
    counters(
        enc,
        "traverse_turn_error_responses",
        "Error answers sent, by STUN error code (401 challenges included)",
        s.error_responses.iter().map(|(code, n)| {
            let code = code.map_or_else(|| "other".to_owned(), |c| c.to_string());
            ([("code", code)], n)
        }),
    )?;
    let q = &s.quota_refusals;
    counters(
        enc,
        "traverse_turn_quota_refusals",
        "Allocate requests refused by a quota: total (508), user, source or the source's rate (486), EVEN-PORT \
         reservations (508)",
        [
            ("total", q.total),
            ("user", q.user),
            ("source", q.source),
            ("rate", q.rate),
            ("reservations", q.reservations),
        ]
        .map(|(quota, n)| ([("quota", quota)], n)),
    )?;
    counter(
        enc,
        "traverse_turn_peer_refusals",
        "Permissions and channels refused (403) by the peer policy, and Send indications it dropped",
        s.peer_refusals,
    )?;
    counter(
        enc,
        "traverse_turn_reflection_drops",
        "Unauthenticated UDP answers not sent because their source's reflection budget was spent",
        s.reflection_drops,
    )?;
    counter(
        enc,
        "traverse_turn_relay_receive_pauses",
        "Relay sockets' receives paused because every receive buffer of their worker was taken (overload)",
        s.relay_receive_pauses,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn the_sum_of_the_workers_is_exposed_with_its_labels() {
        let workers = Arc::new(server::WorkerStats::new(2));
        let mut a = turn::Stats::default();
        a.to_peer.udp = turn::Traffic {
            packets: 10,
            bytes: 1000,
        };
        a.allocations_by_transport.tcp = 2;
        a.quota_refusals.user = 1;
        let mut b = a;
        b.to_client.tls = turn::Traffic { packets: 3, bytes: 30 };
        workers.publish(0, a);
        workers.publish(1, b);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TurnCollector { workers, certs: None }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "traverse_turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"} 20",
            "traverse_turn_relayed_bytes_total{direction=\"to_peer\",transport=\"udp\"} 2000",
            "traverse_turn_relayed_packets_total{direction=\"to_client\",transport=\"tls\"} 3",
            "traverse_turn_allocations{transport=\"tcp\"} 4",
            "traverse_turn_quota_refusals_total{quota=\"user\"} 2",
            "traverse_turn_error_responses_total{code=\"401\"} 0",
            "traverse_turn_error_responses_total{code=\"other\"} 0",
            "traverse_turn_auth_failures_total{reason=\"bad_integrity\"} 0",
            "# TYPE traverse_turn_relayed_packets counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
