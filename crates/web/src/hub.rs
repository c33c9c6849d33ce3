//! The sockets' way to the hub: the sharded in-process hub ([`crate::shards`]), or with `--redis` the cluster's hub
//! shards ([`crate::cluster_shards`]), tasks that each own a sans-IO hub on a thread of their own and take socket
//! events over a bounded channel. Also what both share: the frames a socket is sent, the byte budgets, and
//! [`deliver`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use outcome::Outcomes;
use rand::SeedableRng;
use signal::{CloseCode, ConnId, MemoryHub, Now, Output, Refusal};
use tokio::sync::oneshot;

use crate::cluster::WaitingShards;
use crate::cluster_shards::ClusterShards;
use crate::outbox::{Outbox, QueueBudget};
use crate::placement::Workers;
use crate::shards::{Seat, Shards};
use crate::WebConfig;

/// What the hub sends a socket.
#[derive(Debug)]
pub(crate) enum ToSocket {
    /// A JSON frame; UTF-8 by construction (the hub writes it from `&str`s).
    Text(bytes::Bytes),
    /// A WebSocket ping: the hub's heartbeat found the socket quiet.
    Ping,
    Close(CloseCode, String),
}

pub(crate) enum Command {
    Connect {
        conn: ConnId,
        ip: IpAddr,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Text {
        conn: ConnId,
        /// UTF-8: checked by the socket's decoder.
        text: bytes::Bytes,
    },
    Activity {
        conn: ConnId,
    },
    Binary {
        conn: ConnId,
    },
    Closed {
        conn: ConnId,
    },
    CheckConnect {
        ip: IpAddr,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    CheckJoin {
        room: String,
        token: Option<String>,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Stats {
        reply: oneshot::Sender<signal::HubStats>,
    },
    /// Let go of a socket that has not joined, to move it to its room's shard (`None`: it is gone or routed).
    Handoff {
        conn: ConnId,
        reply: oneshot::Sender<Option<Handed>>,
    },
    /// Take in a socket another shard let go of.
    Adopt {
        conn: ConnId,
        handed: Handed,
    },
    /// Does this shard's hub hold the session a `resume` claims?
    Holds {
        claim: String,
        reply: oneshot::Sender<bool>,
    },
    /// Hand this node's rooms and sockets to the other nodes of the cluster.
    Drain,
    Shutdown,
}

/// A socket moving between the cluster's hub shards: its state in the hub (token bucket, error count), its address
/// and its outbox.
pub(crate) struct Handed {
    pub ip: IpAddr,
    pub socket: signal::Unjoined,
    pub outbox: Arc<Outbox>,
}

/// The sockets' side of the hub: the sharded hub, driven inline by each socket's task ([`crate::shards`]), or with
/// `--redis` the cluster's hub shards, fed over channels ([`crate::cluster_shards`]).
#[derive(Clone, Debug)]
pub struct HubHandle {
    hub: Hub,
    next_conn: Arc<AtomicU64>,
    /// What sockets' queues may hold before a socket counts as too slow and is dropped.
    pub(crate) queue_budget: Arc<QueueBudget>,
    /// The TURN workers' load, once the binary has given it: a cluster node advertises it in the registry.
    pub(crate) turn_load: crate::cluster::TurnLoadSource,
    /// With `cluster.hub_on_workers`: the hub shards each worker thread starts.
    waiting: Arc<WaitingShards>,
    /// The server's workers, where signaling sockets move to be with their room (`web.room_affinity`).
    workers: Arc<Workers>,
    room_affinity: bool,
    /// With `--redis`: hub shard *k* runs on worker *k*.
    hub_on_workers: bool,
    /// Sockets closed with 4104 (`too-slow`) by their own task, which the hub never closes itself: added to the
    /// hub's count of closes by code.
    too_slow_closes: Arc<AtomicU64>,
}

#[derive(Clone, Debug)]
enum Hub {
    Sharded(Arc<Shards>),
    /// Many nodes (docs/scaling.md): hub tasks, each with its share of the rooms and its link to Redis.
    Cluster(Arc<ClusterShards>),
}

impl HubHandle {
    /// On the server's worker `index` (of `count`), as it starts: its sockets' home shard is shard `index`, whose
    /// hub task (with `cluster.hub_on_workers`) starts here, and it takes the sockets that move to it.
    pub(crate) fn worker_started(&self, index: usize, count: usize) {
        crate::shards::set_worker(index);
        self.waiting.start(index);
        if self.room_affinity {
            self.workers.started(index, count);
        }
    }

    /// The worker that holds `room`, where a socket joining it is served (`crate::placement`); `None`: served where
    /// it arrived (one worker, `web.room_affinity` off, or hub shards on threads of their own).
    pub(crate) fn room_worker(&self, room: &str) -> Option<usize> {
        let shard = match &self.hub {
            Hub::Sharded(shards) => shards.room_shard(room),
            Hub::Cluster(shards) => shards.room_shard(room),
        };
        self.shard_worker(shard)
    }

    /// The worker that holds the shard a socket has joined (or resumed) in: where it is served from then on.
    pub(crate) fn seat_worker(&self, seat: &Seat) -> Option<usize> {
        self.shard_worker(seat.shard)
    }

    /// The worker of hub shard `shard`: with the in-process hub, shard `k` on worker `k % workers` (one shard per
    /// core, so there may be more shards than workers); with `--redis` and the hub on the workers, shard `k` runs on
    /// worker `k` (one shard per worker at most).
    fn shard_worker(&self, shard: usize) -> Option<usize> {
        let workers = self.workers.count();
        if workers < 2 {
            return None;
        }
        match &self.hub {
            Hub::Sharded(_) => Some(shard % workers),
            Hub::Cluster(_) if self.hub_on_workers => Some(shard),
            Hub::Cluster(_) => None,
        }
    }

    pub(crate) fn workers(&self) -> &Workers {
        &self.workers
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        ConnId::new(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) async fn check_connect(&self, ip: IpAddr) -> Result<(), Refusal> {
        match &self.hub {
            Hub::Sharded(shards) => shards.check_connect(ip),
            Hub::Cluster(shards) => shards.check_connect(ip).await,
        }
    }

    pub(crate) async fn check_join(&self, room: String, token: Option<String>) -> Result<(), Refusal> {
        match &self.hub {
            Hub::Sharded(shards) => shards.check_join(&room, token.as_deref()),
            Hub::Cluster(shards) => shards.check_join(room, token).await,
        }
    }

    pub(crate) async fn connect(&self, conn: ConnId, ip: IpAddr, outbox: Arc<Outbox>) -> Result<Seat, Refusal> {
        match &self.hub {
            Hub::Sharded(shards) => shards.connect(conn, ip, outbox),
            Hub::Cluster(shards) => shards.connect(conn, ip, outbox).await,
        }
    }

    /// The sharded hub, which a socket's task drives in place — with a message still in the read buffer it
    /// arrived in, so that nothing is copied; `None` with `--redis`, where [`Self::text`] takes an owned copy.
    pub(crate) fn shards(&self) -> Option<&Shards> {
        match &self.hub {
            Hub::Sharded(shards) => Some(shards),
            Hub::Cluster(_) => None,
        }
    }

    /// A text message (UTF-8, checked by the socket's decoder).
    pub(crate) async fn text(&self, seat: &mut Seat, text: bytes::Bytes) {
        match &self.hub {
            Hub::Sharded(shards) => shards.text(seat, std::str::from_utf8(&text).unwrap_or_default()),
            Hub::Cluster(shards) => shards.text(seat, text).await,
        }
    }

    pub(crate) async fn activity(&self, seat: &Seat) {
        match &self.hub {
            Hub::Sharded(shards) => shards.activity(seat),
            Hub::Cluster(shards) => shards.activity(seat).await,
        }
    }

    pub(crate) async fn binary(&self, seat: &Seat) {
        match &self.hub {
            Hub::Sharded(shards) => shards.binary(seat),
            Hub::Cluster(shards) => shards.binary(seat).await,
        }
    }

    /// The socket is gone. The hub forgets sockets it closed itself; telling it again is harmless.
    pub(crate) async fn closed(&self, seat: Seat) {
        match &self.hub {
            Hub::Sharded(shards) => shards.closed(seat),
            Hub::Cluster(shards) => shards.closed(seat).await,
        }
    }

    /// Connections, sessions, rooms and relayed signals right now.
    pub async fn stats(&self) -> Option<signal::HubStats> {
        let mut stats = match &self.hub {
            Hub::Sharded(shards) => Some(shards.stats()),
            Hub::Cluster(shards) => shards.stats().await,
        }?;
        let too_slow = self.too_slow_closes.load(Ordering::Relaxed);
        if too_slow > 0 {
            *stats.closes.entry(signal::CloseCode::TOO_SLOW.0).or_default() += too_slow;
        }
        Some(stats)
    }

    /// A socket's task closes it with 4104 (`too-slow`): counted with the hub's closes.
    pub(crate) fn count_too_slow(&self) {
        self.too_slow_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn shutdown(&self) {
        match &self.hub {
            Hub::Sharded(shards) => shards.shutdown(),
            Hub::Cluster(shards) => shards.tell_all(|| Command::Shutdown),
        }
    }

    pub(crate) fn drain(&self) {
        match &self.hub {
            Hub::Sharded(_) => {
                tracing::warn!("drain asked, but this node is alone (no --redis): nothing to hand over");
            }
            Hub::Cluster(shards) => shards.tell_all(|| Command::Drain),
        }
    }
}

pub(crate) fn spawn(config: &WebConfig, cluster: Option<crate::Cluster>) -> std::io::Result<HubHandle> {
    let mut limits = config.limits.clone();
    if limits.max_total_bytes == 0 {
        limits.max_total_bytes = total_from_machine(machine_memory());
    }
    tracing::info!(
        session_mib = limits.max_session_bytes >> 20,
        source_mib = limits.max_source_bytes >> 20,
        total_mib = limits.max_total_bytes >> 20,
        "signaling byte budgets (kept frames; as much again for unsent ones)"
    );
    // Per socket: a whole replay (the session's budget) on top of live traffic. Per source and in total: as much as
    // the hub may keep. A socket more than two messages behind is the one dropped when either is reached.
    let queue_budget = Arc::new(QueueBudget::new(
        limits.max_unacked + limits.max_queued + 256,
        limits.max_session_bytes + 2 * limits.max_message_bytes,
        limits.max_source_bytes,
        limits.max_total_bytes,
        2 * limits.max_message_bytes,
    ));
    let turn_load = crate::cluster::TurnLoadSource::default();
    let outcomes = config.outcomes.clone();
    let waiting = Arc::new(WaitingShards::default());
    let hub_on_workers = cluster.as_ref().is_some_and(|c| c.on_workers.is_some());
    let hub = match cluster {
        None => {
            // One shard per core: each worker thread that serves sockets has a home shard.
            let count = std::thread::available_parallelism().map_or(1, usize::from);
            let shards = Shards::new(count, &limits, outcomes, |limits| {
                let (ice, extra) = (config.ice_servers.clone(), config.extra_ice_servers.clone());
                let source: signal::IceServerSource = Box::new(move |peer, unix| {
                    let servers = crate::with_extra(ice(peer.as_str(), unix), &extra, peer.as_str(), unix);
                    serde_json::value::to_raw_value(&servers)
                        .unwrap_or_else(|_| serde_json::value::to_raw_value(&()).unwrap_or_default())
                });
                let rng = rand::rngs::StdRng::from_entropy();
                MemoryHub::new(limits, config.token_secret.clone(), source, rng, Instant::now())
            });
            shards.spawn_timers()?;
            Hub::Sharded(shards)
        }
        // Many nodes (docs/scaling.md): the same hub behind a router, Redis on the same thread.
        Some(crate::Cluster {
            redis,
            hub_shards,
            on_workers,
        }) => {
            let count = match hub_shards {
                0 => crate::cluster_shards::auto_count(std::thread::available_parallelism().map_or(1, usize::from)),
                n => n,
            };
            // On the workers, at most one each.
            let count = on_workers.map_or(count, |workers| count.min(workers.max(1)));
            let waiting = on_workers.is_some().then_some(&*waiting);
            let queues = crate::cluster::spawn(count, config, &limits, outcomes, redis, &turn_load, waiting)?;
            Hub::Cluster(Arc::new(ClusterShards::new(
                queues,
                limits.max_connections_per_ip,
                limits.resume_grace,
            )))
        }
    };
    Ok(HubHandle {
        hub,
        next_conn: Arc::new(AtomicU64::new(1)),
        queue_budget,
        turn_load,
        waiting,
        workers: Arc::new(Workers::default()),
        room_affinity: config.room_affinity,
        hub_on_workers,
        too_slow_closes: Arc::new(AtomicU64::new(0)),
    })
}

/// The default total budget: an eighth of the machine's memory (or of the cgroup's limit), between 64 MiB and
/// 1 GiB; 256 MiB when neither can be read. The attack of issue 7 took 1.2 GiB from one address without it.
fn total_from_machine(memory: Option<u64>) -> usize {
    let Some(bytes) = memory else { return 256 << 20 };
    let eighth = usize::try_from(bytes / 8).unwrap_or(usize::MAX);
    eighth.clamp(64 << 20, 1 << 30)
}

/// Physical memory (`MemTotal`), or the cgroup v2 limit when it is smaller (a container).
fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let physical = kib.saturating_mul(1024);
    // `max` (no limit) does not parse and leaves the physical figure.
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(physical, |c| c.min(physical)))
}

pub(crate) fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The hub has stopped: the process is shutting down. The client should connect again at once (4202, HTTP 503), not
/// back off as from a limit (4101): another node, or this one restarted, will answer.
pub(crate) fn shutting_down() -> Refusal {
    Refusal::new(
        signal::ErrorCode::ShuttingDown,
        "The server is shutting down: connect again (another server, or this one once restarted, will answer).",
    )
}

/// Does what one output asks of this node's sockets; returns a socket dropped as too slow, which the caller reports
/// closed to whatever holds its session.
pub(crate) fn deliver<S: std::hash::BuildHasher>(
    output: Output,
    sockets: &mut HashMap<ConnId, Arc<Outbox>, S>,
    outcomes: &Outcomes,
) -> Option<ConnId> {
    match output {
        Output::Send { conn, text } => {
            let outbox = sockets.get(&conn)?;
            if outbox.push(ToSocket::Text(text)).is_err() {
                // Too slow to read its messages (or gone): drop the socket; its session waits for a resume.
                tracing::debug!(
                    conn = conn.get(),
                    "signaling socket too slow (its queue is full); closing it with 4104"
                );
                if let Some(outbox) = sockets.remove(&conn) {
                    outbox.abandon();
                }
                return Some(conn);
            }
        }
        Output::Ping { conn } => {
            if let Some(outbox) = sockets.get(&conn) {
                // Not counted in the queue's bytes, like a close; one per heartbeat interval at most.
                let _ = outbox.push(ToSocket::Ping);
            }
        }
        Output::Close { conn, code, reason } => {
            if let Some(outbox) = sockets.remove(&conn) {
                let _ = outbox.push(ToSocket::Close(code, reason));
            }
        }
        Output::Outcome(d) => {
            tracing::info!(
                room = %d.room,
                peer_a = %d.peers[0],
                peer_b = %d.peers[1],
                outcome = d.outcome.as_str(),
                reason = d.reason.code(),
                path = d.path.map_or("", |p| p.as_str()),
                time_to_connect_ms = d.time_to_connect_ms,
                connected_ms = d.connected_ms,
                recovery_ms = d.recovery_ms,
                cause = d.cause.map_or("", |c| c.as_str()),
                reports = d.reports,
                "connection {}", d.outcome.as_str()
            );
            outcomes.record(&d, now().unix);
        }
        // Only a multi-node I/O layer asks the hub for these.
        Output::Session(_) => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_budget_is_an_eighth_of_memory_within_bounds() {
        assert_eq!(total_from_machine(Some(24 << 30)), 1 << 30);
        assert_eq!(total_from_machine(Some(2 << 30)), 256 << 20);
        assert_eq!(total_from_machine(Some(256 << 20)), 64 << 20);
        assert_eq!(total_from_machine(None), 256 << 20);
        assert!(machine_memory().is_some_and(|m| m > 0), "Linux has /proc/meminfo");
    }
}
