//! The hub task: owns the sans-IO hub on a thread of its own, takes socket events over a bounded channel and
//! routes the hub's output to each socket's channel.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use outcome::Outcomes;
use rand::SeedableRng;
use signal::{CloseCode, ConnId, MemoryHub, Now, Output, Refusal, SignalHub, Source};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::{Outbox, QueueBudget};
use crate::WebConfig;

/// What the hub sends a socket.
#[derive(Debug)]
pub(crate) enum ToSocket {
    /// A JSON frame; UTF-8 by construction (the hub writes it from `&str`s).
    Text(bytes::Bytes),
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
        text: axum::extract::ws::Utf8Bytes,
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
    /// Hand this node's rooms and sockets to the other nodes of the cluster.
    Drain,
    Shutdown,
}

/// The sockets' side of the hub task.
#[derive(Clone, Debug)]
pub struct HubHandle {
    tx: mpsc::Sender<Command>,
    next_conn: Arc<AtomicU64>,
    /// What sockets' queues may hold before a socket counts as too slow and is dropped.
    pub(crate) queue_budget: Arc<QueueBudget>,
    /// The TURN workers' load, once the binary has given it: a cluster node advertises it in the registry.
    pub(crate) turn_load: crate::cluster::TurnLoadSource,
}

impl HubHandle {
    pub(crate) fn next_conn(&self) -> ConnId {
        ConnId::new(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) async fn send(&self, command: Command) {
        // The hub only stops at shutdown, when sockets are closing anyway.
        let _ = self.tx.send(command).await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    pub(crate) async fn check_connect(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.ask(|reply| Command::CheckConnect { ip, reply })
            .await
            .unwrap_or_else(|| Err(shutting_down()))
    }

    pub(crate) async fn check_join(&self, room: String, token: Option<String>) -> Result<(), Refusal> {
        self.ask(|reply| Command::CheckJoin { room, token, reply })
            .await
            .unwrap_or_else(|| Err(shutting_down()))
    }

    pub(crate) async fn connect(&self, conn: ConnId, ip: IpAddr, outbox: Arc<Outbox>) -> Result<(), Refusal> {
        self.ask(|reply| Command::Connect {
            conn,
            ip,
            outbox,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(shutting_down()))
    }

    /// Connections, sessions, rooms and relayed signals right now.
    pub async fn stats(&self) -> Option<signal::HubStats> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.tx.try_send(Command::Shutdown);
    }

    pub(crate) fn drain(&self) {
        let _ = self.tx.try_send(Command::Drain);
    }
}

pub(crate) fn spawn(config: &WebConfig, redis: Option<String>) -> std::io::Result<HubHandle> {
    let (tx, rx) = mpsc::channel(4096);
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
    let ice = config.ice_servers.clone();
    // In a cluster, every join's iceServers also name the other live nodes' TURN servers.
    let registry = crate::cluster::Registry::default();
    let turn_load = crate::cluster::TurnLoadSource::default();
    let source: signal::IceServerSource = match redis {
        None => Box::new(move |peer, unix| {
            serde_json::value::to_raw_value(&ice(peer.as_str(), unix))
                .unwrap_or_else(|_| serde_json::value::to_raw_value(&()).unwrap_or_default())
        }),
        Some(_) => crate::cluster::ice_source(ice, registry.clone()),
    };
    let hub = MemoryHub::new(
        limits,
        config.token_secret.clone(),
        source,
        rand::rngs::StdRng::from_entropy(),
        Instant::now(),
    );
    let outcomes = config.outcomes.clone();
    let thread = std::thread::Builder::new().name("traverse-hub".into());
    match redis {
        None => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
            thread.spawn(move || runtime.block_on(run(hub, rx, outcomes)))?;
        }
        // Many nodes (docs/scaling.md): the same hub behind a router, Redis on the same thread.
        Some(url) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let hub = hub.with_session_events();
            let grace = config.limits.resume_grace;
            let node = crate::cluster::node_id();
            let ice = crate::cluster::Ice {
                own: config.ice_servers.clone(),
                registry,
                turn: turn_load.clone(),
            };
            thread.spawn(move || runtime.block_on(crate::cluster::run(hub, rx, outcomes, url, node, ice, grace)))?;
        }
    }
    Ok(HubHandle {
        tx,
        next_conn: Arc::new(AtomicU64::new(1)),
        queue_budget,
        turn_load,
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

async fn run(mut hub: impl SignalHub, mut rx: mpsc::Receiver<Command>, outcomes: Arc<Outcomes>) {
    let mut sockets: HashMap<ConnId, Arc<Outbox>> = HashMap::new();
    let mut sources = SourceCounters::default();
    loop {
        let deadline = hub.poll_timeout();
        let command = tokio::select! {
            command = rx.recv() => command,
            _ = sleep_until(deadline) => {
                hub.handle_timeout(now());
                route(&mut hub, &mut sockets, &outcomes);
                // A map never shrinks by itself: after a load, give back what the sockets that left held.
                if sockets.capacity() > 4 * sockets.len() + 64 {
                    sockets.shrink_to(2 * sockets.len());
                }
                continue;
            }
        };
        let Some(command) = command else { break };
        let mut stop = handle(&mut hub, &mut sockets, &mut sources, &outcomes, command);
        // Drain what has queued up meanwhile before routing, so a burst costs one clock read per command only.
        for _ in 0..256 {
            match rx.try_recv() {
                Ok(command) => stop |= handle(&mut hub, &mut sockets, &mut sources, &outcomes, command),
                Err(_) => break,
            }
        }
        route(&mut hub, &mut sockets, &outcomes);
        if stop {
            break;
        }
    }
    // Whatever is still open closes once its queue (with its 4202 close) is written.
    for outbox in sockets.values() {
        outbox.close();
    }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Unsent bytes per source, one counter shared by that source's outboxes (see [`crate::outbox`]).
#[derive(Debug, Default)]
pub(crate) struct SourceCounters(HashMap<Source, Arc<AtomicUsize>>);

impl SourceCounters {
    pub(crate) fn counter(&mut self, ip: IpAddr) -> Arc<AtomicUsize> {
        self.0.entry(Source::from(ip)).or_default().clone()
    }

    /// Forgets the counters no outbox holds any more, once they outnumber the sockets (amortised, not per event).
    pub(crate) fn prune(&mut self, sockets: usize) {
        if self.0.len() > 2 * sockets + 64 {
            self.0.retain(|_, c| Arc::strong_count(c) > 1);
        }
    }
}

/// The hub has stopped: the process is shutting down. The client should connect again at once (4202, HTTP 503), not
/// back off as from a limit (4101): another node, or this one restarted, will answer.
fn shutting_down() -> Refusal {
    Refusal::new(
        signal::ErrorCode::ShuttingDown,
        "The server is shutting down: connect again (another server, or this one once restarted, will answer).",
    )
}

/// Returns true on shutdown.
fn handle(
    hub: &mut impl SignalHub,
    sockets: &mut HashMap<ConnId, Arc<Outbox>>,
    sources: &mut SourceCounters,
    outcomes: &Outcomes,
    command: Command,
) -> bool {
    match command {
        Command::Connect {
            conn,
            ip,
            outbox,
            reply,
        } => {
            let result = hub.handle_connect(conn, ip, now());
            if result.is_ok() {
                outbox.bind_source(sources.counter(ip));
                sockets.insert(conn, outbox);
            }
            let _ = reply.send(result);
        }
        Command::Text { conn, text } => hub.handle_text(conn, text.as_str(), now()),
        Command::Activity { conn } => hub.handle_activity(conn, now()),
        Command::Binary { conn } => hub.handle_binary(conn, now()),
        Command::Closed { conn } => {
            sockets.remove(&conn);
            sources.prune(sockets.len());
            hub.handle_closed(conn, now());
        }
        Command::CheckConnect { ip, reply } => {
            let _ = reply.send(hub.check_connect(ip));
        }
        Command::CheckJoin { room, token, reply } => {
            let _ = reply.send(hub.check_join(&room, token.as_deref(), now()));
        }
        Command::Stats { reply } => {
            let _ = reply.send(hub.stats());
        }
        Command::Drain => tracing::warn!("drain asked, but this node is alone (no --redis): nothing to hand over"),
        Command::Shutdown => {
            hub.handle_shutdown();
            route(hub, sockets, outcomes);
            return true;
        }
    }
    false
}

fn route(hub: &mut impl SignalHub, sockets: &mut HashMap<ConnId, Arc<Outbox>>, outcomes: &Outcomes) {
    while let Some(output) = hub.poll_output() {
        if let Some(slow) = deliver(output, sockets, outcomes) {
            hub.handle_closed(slow, now());
        }
    }
}

/// Does what one output asks of this node's sockets; returns a socket dropped as too slow, which the caller reports
/// closed to whatever holds its session.
pub(crate) fn deliver(
    output: Output,
    sockets: &mut HashMap<ConnId, Arc<Outbox>>,
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
                reports = d.reports,
                "connection {}", if d.failed() { "failed" } else { "connected" }
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
