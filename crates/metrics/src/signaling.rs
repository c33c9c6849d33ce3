//! Signaling: the hub's `signal::HubStats`, asked by the scrape handler (the hub is a task; a collector is
//! synchronous) and left here for the collector.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::encode::{counter, gauge, Result};

#[derive(Debug)]
pub(crate) struct SignalCollector {
    pub latest: Arc<Mutex<Option<signal::HubStats>>>,
}

impl Collector for SignalCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result {
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
    )
}
