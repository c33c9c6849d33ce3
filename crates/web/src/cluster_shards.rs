//! With `--redis`, the hub sharded by room: hub tasks ([`auto_count`] of them, or `cluster.hub_shards`), each a node
//! of the cluster under a name of its own (`docs/scaling.md`, "Shards"), task *k* on the server's worker thread *k*
//! (`cluster.hub_on_workers`, the default; at most one per worker) or on a thread of its own. This is the sockets'
//! side: where a socket's events go, and the limits that span the shards.
//!
//! Why: with one hub task on a thread of its own, every signal of every socket of a node crossed to that one thread
//! and back, and the thread was the node's ceiling (40 % of a core at full load on a 2-core machine, so about
//! 150 000 signals/s). Now each shard carries the rooms hashed to it, and on the workers a signal between sockets of
//! the worker holding their room never leaves that thread.
//!
//! Placement: a socket starts in its worker thread's home shard (the shard of its worker's index). At its first
//! `join` it moves to the shard its room hashes to (a per-process random key), with its token bucket, error count and
//! outbox; at its first `resume`, to the shard whose hub holds the session, if one does. The move waits until the old
//! shard has delivered what it owed the socket, so frames reach it in order. The shard then asks Redis where the room lives, as any node does;
//! usually the answer is itself. A room another node's death handed to some shard stays there; the other shards
//! reach it as they reach another node, but in-process: an envelope between shards of one process goes on the
//! receiving shard's queue (`web::cluster`), never through Redis.
//!
//! Global limits without a lock on the message path: sockets per source (and their unsent bytes) are counted here
//! at connect and close ([`SourceCount`]); rooms by an atomic count each shard reserves from before every event
//! (`cluster::RoomCount`); each shard's hub gets an equal share of the byte budgets.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use signal::{ConnId, HubStats, Refusal, Source};
use tokio::sync::{mpsc, oneshot};

use crate::hub::{shutting_down, Command};
use crate::outbox::Outbox;
use crate::shards::{add_stats, home, Placing, Seat, SourceCount};

/// The default number of shards for `cores`: one per four cores, at most 8.
///
/// Why not one per core: each shard has its own journal pipeline, so two halve every batch written to Redis. On 2
/// cores, 2 shards on threads of their own cost 1.09–1.31x the CPU per signal of one, flat out, and 2 on the two
/// workers delivered 0.85x the signals/s of one hub thread on one node (`bench/cluster/run.sh`, docs/benchmarks.md).
/// One hub task was 0.35–0.40 of a core when a 2-core node was saturated, so it carries what about four cores send it.
pub(crate) fn auto_count(cores: usize) -> usize {
    (cores / 4).clamp(1, 8)
}

/// See the module documentation.
pub(crate) struct ClusterShards {
    /// Each shard's command queue.
    shards: Box<[mpsc::Sender<Command>]>,
    /// Picks a room's shard; randomly keyed per process.
    placement: std::collections::hash_map::RandomState,
    sources: SourceCount,
}

impl ClusterShards {
    /// `grace`: the hubs' `resume_grace`, for which the session a joined socket leaves waiting is counted to its
    /// source ([`SourceCount`]).
    pub(crate) fn new(shards: Vec<mpsc::Sender<Command>>, max_per_source: usize, grace: std::time::Duration) -> Self {
        Self {
            shards: shards.into_boxed_slice(),
            placement: std::collections::hash_map::RandomState::new(),
            sources: SourceCount::new(max_per_source, grace),
        }
    }

    // Not input: `shard` comes from `home` or `room_shard`, both modulo the length, and `cluster::spawn` starts at
    // least one shard.
    #[allow(clippy::indexing_slicing)]
    fn queue(&self, shard: usize) -> &mpsc::Sender<Command> {
        &self.shards[shard % self.shards.len()]
    }

    pub(crate) fn room_shard(&self, room: &str) -> usize {
        (self.placement.hash_one(room) % self.shards.len() as u64) as usize
    }

    async fn send(&self, shard: usize, command: Command) {
        // A shard only stops at shutdown, when sockets are closing anyway.
        let _ = self.queue(shard).send(command).await;
    }

    async fn ask<T>(&self, shard: usize, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.queue(shard).send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    pub(crate) async fn check_connect(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.sources.check(Source::from(ip))?;
        // The shard knows whether the node is draining.
        self.ask(home(self.shards.len()), |reply| Command::CheckConnect { ip, reply })
            .await
            .unwrap_or_else(|| Err(shutting_down()))
    }

    pub(crate) async fn check_join(&self, room: String, token: Option<String>) -> Result<(), Refusal> {
        self.ask(self.room_shard(&room), |reply| Command::CheckJoin {
            room,
            token,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(shutting_down()))
    }

    pub(crate) async fn connect(&self, conn: ConnId, ip: IpAddr, outbox: Arc<Outbox>) -> Result<Seat, Refusal> {
        let source = Source::from(ip);
        self.sources.take(source, &outbox)?;
        let shard = home(self.shards.len());
        let connected = self
            .ask(shard, |reply| Command::Connect {
                conn,
                ip,
                outbox,
                reply,
            })
            .await
            .unwrap_or_else(|| Err(shutting_down()));
        if let Err(refusal) = connected {
            self.sources.release(source);
            return Err(refusal);
        }
        Ok(Seat {
            conn,
            shard,
            source,
            joined: false,
        })
    }

    /// A text message (UTF-8, checked by the socket's decoder); a socket's first `join` or `resume` places it first.
    pub(crate) async fn text(&self, seat: &mut Seat, text: Bytes) {
        if !seat.joined {
            if let Some(target) = self.place(seat, &text).await {
                self.move_to(seat, target).await;
            }
        }
        self.send(seat.shard, Command::Text { conn: seat.conn, text }).await;
    }

    /// The shard a socket's first `join` or `resume` belongs in, when it is not where the socket is.
    async fn place(&self, seat: &mut Seat, text: &[u8]) -> Option<usize> {
        let placing: Placing<'_> = serde_json::from_slice(text).ok()?;
        let target = match (placing.kind.as_ref(), placing.room, placing.session) {
            ("join", Some(room), _) => Some(self.room_shard(&room)),
            ("resume", _, Some(session)) => self.session_shard(&session).await,
            _ => return None,
        };
        // Placed once, whatever the hub then answers: a socket whose join failed tries again where it is.
        seat.joined = true;
        target.filter(|t| *t != seat.shard)
    }

    /// The shard whose hub holds the session a `resume` claims, if one does (asked of each: resumes are rare).
    async fn session_shard(&self, claim: &str) -> Option<usize> {
        for shard in 0..self.shards.len() {
            let claim = claim.to_owned();
            if self.ask(shard, |reply| Command::Holds { claim, reply }).await == Some(true) {
                return Some(shard);
            }
        }
        None
    }

    /// Moves a socket that has not joined to `target`; one its shard has already let go of (closed) stays.
    async fn move_to(&self, seat: &mut Seat, target: usize) {
        let conn = seat.conn;
        let Some(Some(handed)) = self.ask(seat.shard, |reply| Command::Handoff { conn, reply }).await else {
            return;
        };
        self.send(target, Command::Adopt { conn, handed }).await;
        seat.shard = target;
    }

    pub(crate) async fn activity(&self, seat: &Seat) {
        self.send(seat.shard, Command::Activity { conn: seat.conn }).await;
    }

    pub(crate) async fn binary(&self, seat: &Seat) {
        self.send(seat.shard, Command::Binary { conn: seat.conn }).await;
    }

    pub(crate) async fn closed(&self, seat: Seat) {
        // The hub is another task here: a socket that sent a join or resume is taken to leave a session waiting,
        // counted to its source ([`SourceCount`]); past the source's share it ends now, by a `leave` (which the
        // router takes to the session's node; a socket that spent its message budget keeps its session waiting).
        if seat.joined && !self.sources.may_wait(seat.source) {
            let leave = Bytes::from_static(br#"{"type":"leave"}"#);
            self.send(
                seat.shard,
                Command::Text {
                    conn: seat.conn,
                    text: leave,
                },
            )
            .await;
        }
        self.send(seat.shard, Command::Closed { conn: seat.conn }).await;
        self.sources.release(seat.source);
    }

    /// Summed over the shards; `None` once they have stopped.
    pub(crate) async fn stats(&self) -> Option<HubStats> {
        let mut total = HubStats::default();
        for shard in 0..self.shards.len() {
            add_stats(&mut total, self.ask(shard, |reply| Command::Stats { reply }).await?);
        }
        Some(total)
    }

    /// Tells every shard; `command` is cloned for each.
    pub(crate) fn tell_all(&self, command: impl Fn() -> Command) {
        for queue in &self.shards {
            let _ = queue.try_send(command());
        }
    }
}

impl std::fmt::Debug for ClusterShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterShards")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_shard_per_four_cores_by_default_at_most_eight() {
        let counts: Vec<usize> = [1, 2, 3, 4, 7, 8, 16, 32, 64, 256].map(super::auto_count).to_vec();
        assert_eq!(counts, [1, 1, 1, 1, 1, 2, 4, 8, 8, 8]);
    }
}
