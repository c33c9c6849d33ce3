//! The workers' TURN counters, for metrics. Each worker owns its `turn::Server` and so its `turn::Stats` (plain
//! integers, nothing shared per packet); on its once-a-second tick it copies them into its slot here. A scrape
//! sums the slots, so what it reports is at most about one second old. The lock of a slot is taken once a second
//! by its worker and once per scrape, never on the packet path.

use std::sync::{Arc, Mutex, OnceLock};

use crate::budget::{ConnectionBudget, Refused};

/// One slot per worker, each holding that worker's latest `turn::Stats`; and the connection budget, which counts the
/// connections held and refused as they come and go (not on the packet path).
#[derive(Debug)]
pub struct WorkerStats {
    slots: Box<[Mutex<turn::Stats>]>,
    connections: OnceLock<Arc<ConnectionBudget>>,
}

impl WorkerStats {
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers).map(|_| Mutex::new(turn::Stats::default())).collect(),
            connections: OnceLock::new(),
        }
    }

    /// Set once, by the server that owns the budget.
    pub(crate) fn watch_connections(&self, budget: Arc<ConnectionBudget>) {
        let _ = self.connections.set(budget);
    }

    /// TCP/TLS/HTTP/WebSocket connections held now, over every listener.
    pub fn tcp_connections(&self) -> u64 {
        self.connections.get().map_or(0, |b| b.held() as u64)
    }

    /// TCP/TLS/HTTP connections refused at accept, by the budget that refused them: `total`, `source` (the
    /// per-source share), `rate` (new connections a second per source) and `proxy_header` (a balancer's connection
    /// without a valid PROXY protocol header).
    pub fn connections_refused(&self) -> [(&'static str, u64); 4] {
        match self.connections.get() {
            Some(budget) => budget.refused().map(|(why, n)| (why.as_str(), n)),
            None => Refused::ALL.map(|why| (why.as_str(), 0)),
        }
    }

    /// A worker's latest copy replaces its previous one.
    pub fn publish(&self, worker: usize, stats: turn::Stats) {
        if let Some(slot) = self.slots.get(worker) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        }
    }

    /// The sum over workers.
    pub fn sum(&self) -> turn::Stats {
        let mut total = turn::Stats::default();
        for slot in self.slots.iter() {
            total.add(&slot.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_adds_every_workers_latest_copy() {
        let board = WorkerStats::new(2);
        let mut a = turn::Stats::default();
        a.to_peer.udp = turn::Traffic { packets: 3, bytes: 30 };
        a.allocations = 1;
        let mut b = turn::Stats::default();
        b.to_peer.udp = turn::Traffic { packets: 4, bytes: 40 };
        b.to_client.tls = turn::Traffic { packets: 1, bytes: 9 };
        b.allocations = 2;
        board.publish(0, b);
        board.publish(0, a);
        board.publish(1, b);
        board.publish(7, b);
        let sum = board.sum();
        assert_eq!(sum.to_peer.udp, turn::Traffic { packets: 7, bytes: 70 });
        assert_eq!(sum.to_client.tls, turn::Traffic { packets: 1, bytes: 9 });
        assert_eq!(sum.allocations, 3);
    }
}
