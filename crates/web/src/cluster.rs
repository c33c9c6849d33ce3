//! The hub tasks of a node in a cluster (`docs/scaling.md`): the same hub, behind a [`cluster::Router`], with Redis
//! as the link between nodes. A node runs one or more such tasks, *shards* (`crate::cluster_shards`), on its worker
//! threads or on threads of their own, each a node of the cluster under a name of its own; an envelope for a shard
//! of the same process goes on its queue, not through Redis. This file is the I/O: Redis connections, the pub/sub
//! subscriber, the heartbeat, the room claim; every decision about a socket is the router's.
//!
//! Redis trouble never stops the node: a lookup Redis cannot answer makes this node serve the socket alone, a lost
//! subscription closes the sockets that depend on another node (4202: they resume), and each change of Redis'
//! health is logged once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::{Action, Answer, Message, NodeId, Query, Router};
use futures_util::StreamExt;
use outcome::Outcomes;
use rand::SeedableRng;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use signal::{
    ConnId, ErrorCode, HubStats, Limits, MemoryHub, PeerId, Refusal, Restored, SessionEvent, SessionSecret, SignalHub,
};
use tokio::sync::mpsc;

use crate::dashboard::TurnLoad;
use crate::hub::{deliver, now, sleep_until, Command, Handed};
use crate::outbox::Outbox;

/// How long a node's heartbeat key lives; refreshed every [`HEARTBEAT`].
const NODE_TTL: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a room's and a session's keys live without their home refreshing them.
const LEASE: Duration = Duration::from_secs(10);
/// A Redis answer slower than this counts as Redis trouble (the socket is then served here).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Envelopes waiting to be published, and their bytes; beyond either, Redis is too slow and the sockets depending
/// on it are closed. (Envelopes are up to a frame's 64 KiB: counted alone, the queue could hold 4 GiB.)
const PUBLISH_QUEUE: usize = 65_536;
const PUBLISH_QUEUE_BYTES: usize = 64 << 20;
/// What an envelope adds to its frame at most: its kind and socket id, and the sending node's name (up to 64 bytes).
/// A socket's share of the queue counts envelopes, so a whole replay of small frames must fit with these.
const ENVELOPE_OVERHEAD: usize = 96;

/// An envelope on its way to the publishing task, with the count of its socket's bytes it holds (see [`Share`]).
struct Queued {
    node: NodeId,
    bytes: Bytes,
    share: Option<Share>,
    /// The socket it is for or from, closed (4202) if no node was subscribed to receive it.
    owner: Option<ConnId>,
}

/// One socket's bytes in the publish queue, given back by the publishing task once Redis took them.
type Share = Arc<AtomicUsize>;

/// An envelope in a pipeline to Redis: its bytes (the pipeline holds a copy) and the share they count against.
struct InFlight {
    bytes: usize,
    share: Option<Share>,
    owner: Option<ConnId>,
}

/// Why an envelope was not queued.
#[derive(Debug, PartialEq, Eq)]
enum Unqueued {
    /// Its socket holds its share already: that socket alone is closed.
    Share,
    /// The queue is full: Redis does not keep up with anyone.
    Full,
}

/// The envelopes waiting for the publishing task, bounded in count and in bytes, and per socket: a socket may hold
/// what its outbox may (a replay and two frames), so that one socket sent faster than Redis takes them is closed
/// alone, not every socket of the shard that depends on another node with it.
struct PublishQueue {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<AtomicUsize>,
    /// Bytes one socket may hold.
    per_socket: usize,
    /// The sockets holding bytes, or that held some since the last [`PublishQueue::forget_idle`].
    shares: HashMap<ConnId, Share>,
    /// Sockets refused in this pass ([`PublishQueue::new_pass`]), and whether the queue was full: their later
    /// envelopes of the pass are refused too. A smaller frame queued behind a refused one would reach the client
    /// past a gap in its stream, and the client skips gaps.
    refused: HashSet<ConnId>,
    full: bool,
}

impl PublishQueue {
    fn new(tx: mpsc::Sender<Queued>, per_socket: usize) -> Self {
        Self {
            tx,
            bytes: Arc::new(AtomicUsize::new(0)),
            per_socket,
            shares: HashMap::new(),
            refused: HashSet::new(),
            full: false,
        }
    }

    /// A new pass of the hub's actions: what was refused in the last one was closed by it.
    fn new_pass(&mut self) {
        self.refused.clear();
        self.full = false;
    }

    /// A shard of this process refused an envelope (its queue is full): as if this queue were, for the pass.
    fn sibling_full(&mut self) {
        self.full = true;
    }

    fn try_send(&mut self, node: NodeId, bytes: Bytes, owner: Option<ConnId>) -> Result<(), Unqueued> {
        let n = bytes.len();
        if self.full {
            return Err(Unqueued::Full);
        }
        let share = match owner {
            Some(owner) => {
                let share = self.shares.entry(owner).or_default();
                // Empty almost always: no hash per envelope then.
                let refused = !self.refused.is_empty() && self.refused.contains(&owner);
                if refused || share.load(Ordering::Relaxed) + n > self.per_socket {
                    self.refused.insert(owner);
                    return Err(Unqueued::Share);
                }
                Some(share.clone())
            }
            None => None,
        };
        if self.bytes.fetch_add(n, Ordering::Relaxed) + n > PUBLISH_QUEUE_BYTES {
            self.bytes.fetch_sub(n, Ordering::Relaxed);
            self.full = true;
            return Err(Unqueued::Full);
        }
        if let Some(share) = &share {
            share.fetch_add(n, Ordering::Relaxed);
        }
        let queued = Queued {
            node,
            bytes,
            share,
            owner,
        };
        if let Err(mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q)) = self.tx.try_send(queued)
        {
            given_back(q.bytes.len(), q.share.as_ref(), &self.bytes);
            self.full = true;
            return Err(Unqueued::Full);
        }
        Ok(())
    }

    /// Forgets the sockets that hold nothing and have nothing in flight (an envelope holds its share's count).
    fn forget_idle(&mut self) {
        self.shares
            .retain(|_, share| Arc::strong_count(share) > 1 || share.load(Ordering::Relaxed) > 0);
    }
}

/// Gives an envelope's `n` bytes back to the queue's count and its socket's share.
fn given_back(n: usize, share: Option<&Share>, bytes: &AtomicUsize) {
    bytes.fetch_sub(n, Ordering::Relaxed);
    if let Some(share) = share {
        share.fetch_sub(n, Ordering::Relaxed);
    }
}
const PREFIX: &str = "traverse:";
/// Socket events (or messages from other nodes) the hub takes at most before it writes their journal: bounds a
/// batch's pipeline and the time the loop's other branches wait.
const COMMANDS_PER_BATCH: usize = 256;

/// The room's home: the node the key names while that node heartbeats, else this node (which takes the room, and
/// restores its sessions when another node had recorded some: `|restore`).
/// While it restores, the key says `node|restoring`, and every other lookup of the room waits until it names the
/// node alone (a resume forwarded there before the sessions are back would fail).
const CLAIM: &str = r"
local home = redis.call('GET', KEYS[1])
if home then
  local node = string.match(home, '^[^|]+')
  if redis.call('EXISTS', ARGV[3] .. node) == 1 then return home end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1] .. '|restoring', 'PX', ARGV[2])
  return ARGV[1] .. '|restore'
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
";

/// The heartbeat's room leases: a room key that names this node (or is gone: Redis lost it) is this node's for
/// another lease; one that names another node was taken over while this node was cut off from Redis (its `node:`
/// key expired), and its index is returned, so that this node gives the room up rather than serve a second copy of
/// it. Before, the key was written `NX` and extended whatever it named: the node never learned, and kept extending
/// the new home's lease.
const LEASES: &str = r"
local lost = {}
for i, key in ipairs(KEYS) do
  local home = redis.call('GET', key)
  if not home then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  elseif string.match(home, '^[^|]+') == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
";

/// Written `NX` by every heartbeat with a TTL of [`UP_TTL`]: its age (`UP_TTL` less its PTTL) is how long this
/// Redis has held the cluster's records. Younger than [`SETTLING`], the journals may not all be written again yet
/// after a restart, and a session missing from it may only be missing for now.
fn up_key() -> String {
    format!("{PREFIX}up")
}
const UP_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long after Redis came back (empty) a resume of a session it does not know is told to try again (4202)
/// rather than failed: a few heartbeats, in which every home writes its journal again.
const SETTLING: Duration = Duration::from_secs(5);

/// Whether a batch's journal is written, and for how long.
#[derive(Debug, Clone, Copy)]
struct Journal {
    lease: Lease,
    record: bool,
}

/// How long records live without their owner refreshing them.
#[derive(Debug, Clone, Copy)]
struct Lease {
    room: Duration,
    session: Duration,
}

/// What the link's tasks tell the hub task.
enum Event {
    Connected(ConnectionManager),
    Subscribed,
    Message(Bytes),
    LinkLost,
    /// Envelopes could not be published (and are lost).
    PublishFailed,
    Lookup {
        conn: ConnId,
        answer: Answer,
        /// The lookup was a `resume`'s (of a session), not a `join`'s.
        resume: bool,
    },
    NodeGone(NodeId),
    Trouble(String),
    /// A heartbeat went through.
    Healthy,
    /// A heartbeat found this node's journal marker gone: Redis lost the journal (it restarted empty).
    JournalLost,
    /// A heartbeat found rooms this node hosts named by another node's key ([`LEASES`]).
    RoomsLost(Vec<String>),
    /// Envelopes for or from these sockets reached no subscriber (and are lost).
    Undelivered(Vec<ConnId>),
}

/// This node's name: the host's, then a random suffix so a restarted process is a new node.
pub(crate) fn node_id() -> NodeId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    NodeId::for_host(host.trim(), rand::random())
}

/// Redis' health as this node last saw it: each change is logged once.
struct Health {
    url: String,
    /// What was last logged: `Some(true)` shared, `Some(false)` alone.
    logged: Option<bool>,
    subscribed: bool,
    /// Where `/readyz` reads it.
    status: NodeStatus,
    /// The first shard speaks for the node: the others share its Redis and keep their health to themselves.
    speaks: bool,
    /// When Redis last stopped answering (none while it answers, or before it ever did).
    down_since: Option<std::time::Instant>,
}

impl Health {
    fn trouble(&mut self, why: &str) {
        if self.logged != Some(false) {
            if self.logged == Some(true) {
                self.down_since = Some(std::time::Instant::now());
            }
            self.logged = Some(false);
            if self.speaks {
                self.status.set_redis(RedisState::Unreachable);
                tracing::warn!(redis = %self.url, error = why, "Redis unreachable: serving rooms on this node alone until it answers");
            }
        }
    }

    /// Redis answered; with this node's channel subscribed, rooms are shared again.
    fn healed(&mut self) {
        if self.subscribed && self.logged != Some(true) {
            self.logged = Some(true);
            self.down_since = None;
            if self.speaks {
                self.status.set_redis(RedisState::Shared);
                tracing::info!(redis = %self.url, "connected to Redis: rooms are shared with the other nodes");
            }
        }
    }
}

/// Every shard's name and event queue, by index.
type Siblings = Arc<[(NodeId, mpsc::Sender<Event>)]>;

/// A hub task's place among its node's shards, and what they share.
pub(crate) struct Shard {
    index: usize,
    siblings: Siblings,
    /// Each shard's hub counters as of its last heartbeat: the first shard advertises their sum for the node.
    census: Arc<[Mutex<HubStats>]>,
    /// Each shard's registry (whose joins it mints iceServers for is its own); the first shard reads Redis' for all.
    registries: Arc<[Registry]>,
    rooms: Rooms,
}

impl Shard {
    fn node(&self) -> NodeId {
        self.siblings
            .get(self.index)
            .map(|(node, _)| node.clone())
            .unwrap_or_else(node_id)
    }

    /// What this shard's heartbeat advertises (the node's sum, for the first shard) and, for the first shard only,
    /// the registries to fill from Redis.
    fn beat(&self, hub: &impl SignalHub) -> (HubStats, Option<Arc<[Registry]>>) {
        let own = hub.stats();
        if let Some(slot) = self.census.get(self.index) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = own.clone();
        }
        if self.index != 0 {
            return (own, None);
        }
        let mut total = HubStats::default();
        for slot in self.census.iter() {
            let stats = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
            crate::shards::add_stats(&mut total, stats);
        }
        (total, Some(self.registries.clone()))
    }
}

/// The node's room limit over its shards. Before an event that may create a room a shard reserves one room from the
/// count, if the limit allows, and lets its hub create at most that one; after it, the count follows the hub's
/// rooms. One atomic operation each way per such event, no lock. Other events reserve nothing: a reservation for a
/// signal would refuse, at the limit, a new room joined at the same moment on another shard.
pub(crate) struct RoomCount {
    count: AtomicUsize,
    max: usize,
}

/// One shard's part of [`RoomCount`].
struct Rooms {
    shared: Arc<RoomCount>,
    /// This hub's rooms as last added to the count.
    held: usize,
    reserved: bool,
}

impl Rooms {
    /// Before an event; `may_create`: the event may create a room (a join, in a socket's text or another node's
    /// message, or a restored room).
    fn open(&mut self, hub: &mut MemoryHub, may_create: bool) {
        let RoomCount { count, max } = &*self.shared;
        self.reserved = may_create
            && count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < *max).then_some(n + 1))
                .is_ok();
        hub.set_max_rooms(hub.room_count() + usize::from(self.reserved));
    }

    /// Between events the hub may create no room: a room created outside [`Self::open`] would not be counted.
    fn settle(&mut self, hub: &mut MemoryHub) {
        let rooms = hub.room_count();
        hub.set_max_rooms(rooms);
        let counted = self.held + usize::from(self.reserved);
        if rooms > counted {
            self.shared.count.fetch_add(rooms - counted, Ordering::Relaxed);
        } else if rooms < counted {
            self.shared.count.fetch_sub(counted - rooms, Ordering::Relaxed);
        }
        self.held = rooms;
        self.reserved = false;
    }
}

/// Starts `count` hub shards, each a node of the cluster (the first under the node's name, the others `{node}.{k}`),
/// each on a thread of its own, or, with `waiting`, left there for the worker threads to start; returns their
/// command queues.
pub(crate) fn spawn(
    count: usize,
    config: &crate::WebConfig,
    limits: &Limits,
    outcomes: Arc<Outcomes>,
    url: String,
    status: &NodeStatus,
    waiting: Option<&WaitingShards>,
) -> std::io::Result<Vec<mpsc::Sender<Command>>> {
    let count = count.max(1);
    let base = node_id();
    let mut siblings = Vec::with_capacity(count);
    let mut inboxes = Vec::with_capacity(count);
    for k in 0..count {
        let (tx, rx) = mpsc::channel::<Event>(PUBLISH_QUEUE);
        siblings.push((base.shard(k), tx));
        inboxes.push(rx);
    }
    let siblings: Siblings = siblings.into();
    let registries: Arc<[Registry]> = (0..count).map(|_| Registry::default()).collect();
    // TURN redirects read the registry the first shard fills.
    if let Some(first) = registries.first() {
        status.attach(first.clone());
    }
    let census: Arc<[Mutex<HubStats>]> = (0..count).map(|_| Mutex::default()).collect();
    let rooms = Arc::new(RoomCount {
        count: AtomicUsize::new(0),
        max: limits.max_rooms,
    });
    // Sockets per source are counted by `cluster_shards`; rooms by `rooms`; the byte budgets are shared.
    let mut own = limits.clone();
    own.max_connections_per_ip = usize::MAX;
    own.max_rooms = 0;
    let bytes = signal::SharedBytes::new();
    let reports = signal::report_allowance();
    let mut queues = Vec::with_capacity(count);
    for (index, events) in inboxes.into_iter().enumerate() {
        let registry = registries.get(index).cloned().unwrap_or_default();
        // In a cluster, every join's iceServers also name the other live nodes' TURN servers.
        let source = ice_source(
            config.ice_servers.clone(),
            config.extra_ice_servers.clone(),
            registry.clone(),
        );
        let rng = rand::rngs::StdRng::from_entropy();
        let hub = MemoryHub::new(own.clone(), config.token_secret.clone(), source, rng, Instant::now())
            .with_session_events()
            .with_shared_bytes(bytes.clone())
            .with_shared_report_allowance(reports.clone());
        let shard = Shard {
            index,
            siblings: siblings.clone(),
            census: census.clone(),
            registries: registries.clone(),
            rooms: Rooms {
                shared: rooms.clone(),
                held: 0,
                reserved: false,
            },
        };
        let ice = Ice {
            own: config.ice_servers.clone(),
            registry,
            turn: status.clone(),
        };
        let (tx, rx) = mpsc::channel(4096);
        let (outcomes, url, grace) = (outcomes.clone(), url.clone(), limits.resume_grace);
        match waiting {
            Some(waiting) => waiting.add(Box::new(move || {
                tokio::task::spawn_local(run(hub, rx, events, shard, outcomes, url, ice, grace));
            })),
            None => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                std::thread::Builder::new()
                    .name(format!("traverse-hub-{index}"))
                    .spawn(move || runtime.block_on(run(hub, rx, events, shard, outcomes, url, ice, grace)))?;
            }
        }
        queues.push(tx);
    }
    Ok(queues)
}

/// Hub shards waiting for their worker thread (`cluster.hub_on_workers`): shard k starts on the server's worker k,
/// when that worker says it has started ([`crate::Web::worker_started`]).
#[derive(Default)]
pub(crate) struct WaitingShards(Mutex<Vec<Option<ShardStart>>>);

/// Spawns a shard's hub task on the calling thread's `LocalSet`.
type ShardStart = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for WaitingShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitingShards").finish_non_exhaustive()
    }
}

impl WaitingShards {
    fn add(&self, start: ShardStart) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Some(start));
    }

    /// Starts shard `index` here, once; called on the worker of that index, inside its runtime.
    pub(crate) fn start(&self, index: usize) {
        let start = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index)
            .and_then(Option::take);
        if let Some(start) = start {
            start();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut hub: MemoryHub,
    mut rx: mpsc::Receiver<Command>,
    mut events: mpsc::Receiver<Event>,
    mut shard: Shard,
    outcomes: Arc<Outcomes>,
    url: String,
    ice: Ice,
    grace: Duration,
) {
    let node = shard.node();
    // A session's records outlive its home by the resume grace, so a node that takes it over can still replay it.
    let lease = Lease {
        room: LEASE,
        session: grace + LEASE,
    };
    let client = match redis::Client::open(url.as_str()) {
        Ok(client) => Some(client),
        Err(e) => {
            // Checked as a redis:// URL by the configuration; whatever else is wrong with it is said once here.
            tracing::error!(redis = %url, error = %e, "cannot use this Redis URL: serving rooms on this node alone");
            None
        }
    };
    if shard.index == 0 {
        tracing::info!(
            node = %node,
            redis = %url,
            shards = shard.siblings.len(),
            "signaling cluster: this node's rooms and sockets are shared over Redis"
        );
    }
    let Some(events_tx) = shard.siblings.get(shard.index).map(|(_, tx)| tx.clone()) else {
        return;
    };
    let (publish_tx, publish_rx) = mpsc::channel::<Queued>(PUBLISH_QUEUE);
    // As much as a socket's outbox may hold ([`crate::hub::spawn`]'s queue budget), and each of its frames' envelope.
    let limits = hub.limits();
    let frames = limits.max_unacked + limits.max_queued + 256;
    let per_socket = limits.max_session_bytes + 2 * limits.max_message_bytes + frames * ENVELOPE_OVERHEAD;
    let mut publish_tx = PublishQueue::new(publish_tx, per_socket);
    let mut health = Health {
        url: url.clone(),
        logged: None,
        subscribed: false,
        status: ice.turn.clone(),
        speaks: shard.index == 0,
        down_since: None,
    };
    let mut manager: Option<ConnectionManager> = None;
    if let Some(client) = &client {
        tokio::spawn(connect(client.clone(), events_tx.clone()));
        tokio::spawn(subscribe(client.clone(), channel(&node), events_tx.clone()));
    }
    tokio::spawn(publish(
        client.clone(),
        publish_rx,
        publish_tx.bytes.clone(),
        events_tx.clone(),
    ));
    let mut router = Router::new(node.clone()).with_origin_limits(hub.limits());
    let mut sockets: HashMap<ConnId, Arc<Outbox>> = HashMap::new();
    // Sockets to hand to another shard once this batch is delivered (`Command::Handoff`).
    let mut handoffs = Vec::new();
    // Redis lost the journal: this shard's sessions are written to it again, a chunk after each batch.
    let mut rewrite: Option<Rewrite> = None;
    // The last heartbeat's write, which a drain waits for.
    let mut beating: Option<tokio::sync::oneshot::Receiver<()>> = None;
    // Carries out what the router asked (`act`), the journal written if `$record`.
    macro_rules! act_now {
        ($record:expr) => {
            act(
                &mut hub,
                &mut router,
                &mut sockets,
                &outcomes,
                manager.as_ref(),
                &mut publish_tx,
                &shard.siblings,
                &events_tx,
                Journal {
                    lease,
                    record: $record,
                },
            )
            .await
        };
    }
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'hub: loop {
        let deadline = hub.poll_timeout();
        tokio::select! {
            command = rx.recv() => {
                let Some(mut command) = command else { break };
                // Every command already waiting is handled before the journal is written: their events share one
                // pipeline, one write to Redis and one round trip (with one command per pipeline, the round trip
                // was the hub's pace and each signal paid for a write of its own).
                for taken in 1.. {
                    // Only a join makes a room, and a socket that has joined here joins nothing more; a check of a
                    // join (an upgrade naming its room, `/api/join-check`) asks whether a room is left.
                    let may_create = match &command {
                        Command::Text { conn, .. } => !hub.is_joined(*conn),
                        Command::CheckJoin { .. } => true,
                        _ => false,
                    };
                    shard.rooms.open(&mut hub, may_create);
                    match command {
                        Command::Drain => {
                            // What this batch did before the drain is journaled (and sent) first: a draining node
                            // records nothing, and a frame sent unrecorded makes its session's resume on the node
                            // that takes the room over fail.
                            act_now!(health.logged != Some(false));
                            ice.turn.set_draining();
                            // A heartbeat already spawned would write the node's and its rooms' keys back after
                            // the drain deleted them, and the rooms would not move until they expired: its write
                            // lands first.
                            if let Some(beat) = beating.take() {
                                let _ = tokio::time::timeout(ANSWER_TIMEOUT, beat).await;
                            }
                            drain(&mut hub, &mut router, manager.as_ref()).await;
                        }
                        // Let go of after this batch's frames have gone out (below), so that they arrive in order.
                        Command::Handoff { conn, reply } => handoffs.push((conn, reply)),
                        command => {
                            if handle(&mut hub, &mut router, &mut sockets, command) {
                                break 'hub;
                            }
                        }
                    }
                    shard.rooms.settle(&mut hub);
                    if taken == COMMANDS_PER_BATCH {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(next) => command = next,
                        Err(_) => break,
                    }
                }
            }
            Some(mut event) = events.recv() => {
                // Like socket events: whatever else is already queued (messages from other nodes, lookups) is
                // taken before the journal is written.
                for taken in 1.. {
                    // Another node's message may carry a join of one of its sockets; a lookup may restore a room.
                    let may_create = matches!(&event, Event::Message(_) | Event::Lookup { .. });
                    shard.rooms.open(&mut hub, may_create);
                    match event {
                        Event::Connected(m) => {
                            // Heartbeat at once, so other nodes see this one alive before it claims any room (not
                            // when draining: it would register the node again).
                            if !router.is_draining() {
                                let (beat, landed) =
                                    heartbeat(m.clone(), &router, shard.beat(&hub), &ice, lease, events_tx.clone());
                                tokio::spawn(beat);
                                beating = Some(landed);
                            }
                            manager = Some(m);
                        }
                        Event::Subscribed => {
                            health.subscribed = true;
                            health.healed();
                        }
                        Event::Healthy => {
                            if manager.is_some() {
                                health.healed();
                            }
                        }
                        Event::Message(bytes) => match Message::decode(&bytes) {
                            Ok(message) => {
                                // A join in it is a peer of that node: its iceServers name that node first.
                                ice.registry.minting_for(Some(message.from.clone()));
                                router.handle_message(&mut hub, message, now());
                                ice.registry.minting_for(None);
                            }
                            Err(e) => tracing::debug!(error = %e, "dropped a message from another node that does not parse"),
                        },
                        Event::LinkLost => {
                            health.subscribed = false;
                            health.trouble("the subscription to this node's channel was lost");
                            router.handle_link_lost(&mut hub, now());
                        }
                        Event::PublishFailed => {
                            health.trouble("publishing to another node failed");
                            router.handle_link_lost(&mut hub, now());
                        }
                        Event::Lookup { conn, mut answer, resume } => {
                            if answer == Answer::Failed {
                                // Redis answered until now: most likely a moment's slowness, and the session or room
                                // lives on elsewhere. A resume is told to try again too while Redis has been away for
                                // less than the resume grace: its session may live on at its home, and a hub that does
                                // not hold it could only end it (4201; the client then joined a second copy of its
                                // room). Past the grace, or for a join, sockets are served here alone.
                                let recently = health.down_since.is_some_and(|t| t.elapsed() < grace);
                                if health.logged == Some(true) || (resume && recently) {
                                    answer = Answer::Retry;
                                }
                                health.trouble("a room lookup failed");
                            }
                            let restored = match &answer {
                                Answer::TakenOver(sessions) => sessions.first().map(|s| s.room.clone()),
                                _ => None,
                            };
                            router.handle_lookup(&mut hub, conn, answer, now());
                            // The sessions are back in the hub: the room's key names this node alone, and the lookups
                            // waiting for it go on.
                            if let (Some(room), Some(m)) = (restored, manager.clone()) {
                                tokio::spawn(claimed(m, room, router.node().clone()));
                            }
                        }
                        Event::NodeGone(gone) => {
                            tracing::info!(node = %gone, "a node stopped heartbeating: its sockets here are closed (4202) to resume elsewhere");
                            router.handle_node_gone(&mut hub, &gone, now());
                        }
                        Event::Trouble(why) => health.trouble(&why),
                        Event::Undelivered(conns) => {
                            for conn in conns {
                                tracing::debug!(%conn, "an envelope reached no node: its socket is closed (4202) to resume");
                                router.handle_undelivered(&mut hub, conn, now());
                            }
                        }
                        Event::RoomsLost(rooms) => {
                            for room in rooms {
                                tracing::warn!(%room, "another node took this room over while this node was cut off from Redis: its sockets here are closed (4202) to resume there");
                                router.handle_room_lost(&mut hub, &room);
                            }
                        }
                        // Written after this batch's actions, so that nothing older lands on top of it.
                        Event::JournalLost => {
                            if rewrite.is_none() && !router.is_draining() {
                                rewrite = Some(Rewrite::of(&hub));
                            }
                        }
                    }
                    shard.rooms.settle(&mut hub);
                    if taken == COMMANDS_PER_BATCH {
                        break;
                    }
                    match events.try_recv() {
                        Ok(next) => event = next,
                        Err(_) => break,
                    }
                }
            }
            _ = sleep_until(deadline) => router.handle_timeout(&mut hub, now()),
            // A journal rewrite under way: its next chunk, after this pass.
            () = std::future::ready(()), if rewrite.is_some() => {}
            _ = tick.tick() => {
                publish_tx.forget_idle();
                match manager.as_ref() {
                    Some(m) if !router.is_draining() => {
                        let beat = shard.beat(&hub);
                        let (beat, landed) = heartbeat(m.clone(), &router, beat, &ice, lease, events_tx.clone());
                        tokio::spawn(beat);
                        beating = Some(landed);
                    }
                    // A draining node no longer heartbeats, but keeps reading the registry: its TURN redirects new
                    // allocations to a live node.
                    Some(m) => {
                        if let (_, Some(registries)) = shard.beat(&hub) {
                            tokio::spawn(refresh_registry(m.clone(), router.node().clone(), registries));
                        }
                    }
                    None => {}
                }
            }
        }
        shard.rooms.settle(&mut hub);
        // While Redis is known to be down, the hub does not wait for it: nothing is recorded (lookups, which wait
        // in tasks of their own, still try).
        act_now!(health.logged != Some(false));
        shard.rooms.settle(&mut hub);
        // Everything this shard owed these sockets has gone out: they may move.
        for (conn, reply) in handoffs.drain(..) {
            let _ = reply.send(handoff(&mut hub, &mut router, &mut sockets, conn));
        }
        if let Some(mut going) = rewrite.take().filter(|_| !router.is_draining()) {
            // One chunk per pass: the shard's sockets wait for one chunk's write at most, not the whole journal's.
            if going
                .next_chunk(&hub, router.node(), manager.as_ref(), lease, &events_tx)
                .await
            {
                rewrite = Some(going);
            }
        }
    }
    hub.handle_shutdown();
    router.drain(&mut hub);
    act_now!(false);
    shard.rooms.settle(&mut hub);
    for outbox in sockets.values() {
        outbox.close();
    }
}

/// Returns true on shutdown.
fn handle(
    hub: &mut MemoryHub,
    router: &mut Router,
    sockets: &mut HashMap<ConnId, Arc<Outbox>>,
    command: Command,
) -> bool {
    match command {
        Command::Connect { reply, .. } if router.is_draining() => {
            let _ = reply.send(Err(draining()));
        }
        Command::CheckConnect { reply, .. } if router.is_draining() => {
            let _ = reply.send(Err(draining()));
        }
        Command::Connect {
            conn,
            ip,
            outbox,
            reply,
        } => {
            let result = router.handle_connect(hub, conn, ip, now());
            if result.is_ok() {
                sockets.insert(conn, outbox);
            }
            let _ = reply.send(result);
        }
        Command::Adopt { conn, handed } => {
            hub.adopt(conn, handed.socket, now());
            router.adopt_fresh(conn, handed.ip);
            sockets.insert(conn, handed.outbox);
        }
        Command::Holds { claim, reply } => {
            let _ = reply.send(hub.holds_session(&claim));
        }
        Command::Text { conn, text } => router.handle_text(hub, conn, text, now()),
        Command::Activity { conn } => router.handle_activity(hub, conn, now()),
        Command::Binary { conn } => router.handle_binary(hub, conn, now()),
        Command::Closed { conn } => {
            sockets.remove(&conn);
            router.handle_closed(hub, conn, now());
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
        // Handled by the loop, which awaits Redis first.
        Command::Drain | Command::Handoff { .. } => {}
        Command::Shutdown => return true,
    }
    false
}

/// Lets go of a socket that has sent no `join`/`resume` here, for another shard to adopt; `None` when it is gone or
/// already routed (it then stays).
fn handoff(
    hub: &mut MemoryHub,
    router: &mut Router,
    sockets: &mut HashMap<ConnId, Arc<Outbox>>,
    conn: ConnId,
) -> Option<Handed> {
    let ip = router.take_fresh(conn)?;
    let Some(socket) = hub.take_unjoined(conn) else {
        router.adopt_fresh(conn, ip);
        return None;
    };
    let Some(outbox) = sockets.remove(&conn) else {
        hub.adopt(conn, socket, now());
        router.adopt_fresh(conn, ip);
        return None;
    };
    Some(Handed { ip, socket, outbox })
}

fn draining() -> Refusal {
    let message = "This node is draining: connect to another node of the cluster.";
    Refusal::new(ErrorCode::TooManyConnections, message)
}

/// Drain: this node leaves the registry and gives up its rooms' claims first, so that the sockets it then closes
/// (4202) resume on nodes that take the rooms over from the journal.
async fn drain(hub: &mut impl SignalHub, router: &mut Router, manager: Option<&ConnectionManager>) {
    if router.is_draining() {
        return;
    }
    if let Some(m) = manager {
        let mut m = m.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(channel(router.node())).ignore();
        pipe.cmd("ZREM")
            .arg(format!("{PREFIX}nodes"))
            .arg(router.node().as_str())
            .ignore();
        for room in router.hosted_rooms() {
            pipe.cmd("DEL").arg(room_key(room)).ignore();
        }
        let released = tokio::time::timeout(ANSWER_TIMEOUT, pipe.query_async::<()>(&mut m)).await;
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!("drain: Redis did not answer; the rooms move once this node's keys expire");
        }
    }
    let rooms = router.hosted_rooms().count();
    router.handle_drain(hub);
    tracing::info!(
        rooms,
        "draining: rooms handed to the other nodes, sockets closed with 4202 to resume there, new sockets refused"
    );
}

/// Sessions written per pass of a journal rewrite: a few hundred kilobytes, a few milliseconds of Redis.
const REWRITE_CHUNK: usize = 256;

/// Writing every session this shard's hub holds to the journal again, with the marker that says it is there: after
/// Redis lost it, only what changed since would be recorded, and a takeover of these sessions (this node dying, or
/// draining) could rebuild none of them. A chunk of sessions per pass of the hub's loop, each taken from the hub as
/// it is when written, so that what the journal records next for them comes after it on the connection. The marker
/// goes with the last chunk: a write that fails ends the rewrite with the marker unset, and the next heartbeat
/// starts it again.
struct Rewrite {
    peers: VecDeque<PeerId>,
    sessions: usize,
    frames: usize,
    began: std::time::Instant,
}

impl Rewrite {
    fn of(hub: &MemoryHub) -> Self {
        Self {
            peers: hub.session_peers().into(),
            sessions: 0,
            frames: 0,
            began: std::time::Instant::now(),
        }
    }

    /// Writes the next chunk; false when the rewrite is over (done, or failed).
    async fn next_chunk(
        &mut self,
        hub: &MemoryHub,
        node: &NodeId,
        manager: Option<&ConnectionManager>,
        lease: Lease,
        events: &mpsc::Sender<Event>,
    ) -> bool {
        let Some(m) = manager else { return false };
        let take = self.peers.len().min(REWRITE_CHUNK);
        let chunk: Vec<PeerId> = self.peers.drain(..take).collect();
        let mut pipe = redis::pipe();
        for event in hub.journal_of(&chunk) {
            self.sessions += usize::from(matches!(event, SessionEvent::Opened { .. }));
            self.frames += usize::from(matches!(event, SessionEvent::Numbered { .. }));
            record(&mut pipe, &event, lease);
        }
        let last = self.peers.is_empty();
        if last {
            pipe.cmd("SET")
                .arg(journal_key(node))
                .arg(1)
                .arg("PX")
                .arg(millis(lease.session))
                .ignore();
        }
        let mut m = m.clone();
        match tokio::time::timeout(ANSWER_TIMEOUT, pipe.query_async::<()>(&mut m)).await {
            Ok(Ok(())) if last && self.sessions > 0 => {
                let (sessions, frames, elapsed_ms) = (self.sessions, self.frames, self.began.elapsed().as_millis());
                tracing::info!(%node, sessions, frames, elapsed_ms, "Redis had lost the session journal: written again");
                false
            }
            Ok(Ok(())) => !last,
            _ => {
                let _ = events.try_send(Event::Trouble("writing the session journal again failed".into()));
                false
            }
        }
    }
}

/// Carries out what the router asked: the session journal first (one pipeline), so that a frame is recorded in
/// Redis before any socket sees it and a node that takes the session over never numbers a frame twice; then the
/// rest, in order.
#[allow(clippy::too_many_arguments)]
async fn act(
    hub: &mut impl SignalHub,
    router: &mut Router,
    sockets: &mut HashMap<ConnId, Arc<Outbox>>,
    outcomes: &Outcomes,
    manager: Option<&ConnectionManager>,
    publish_tx: &mut PublishQueue,
    siblings: &[(NodeId, mpsc::Sender<Event>)],
    events: &mpsc::Sender<Event>,
    journal: Journal,
) {
    let lease = journal.lease;
    publish_tx.new_pass();
    // Bounded: a socket closed as too slow adds a few actions, and the loop comes back here anyway.
    for _ in 0..64 {
        let mut actions = Vec::new();
        while let Some(action) = router.poll_action() {
            actions.push(action);
        }
        if actions.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let mut entries = 0;
        for action in &actions {
            if let Action::Announce(event) = action {
                record(&mut pipe, event, lease);
                entries += 1;
            }
        }
        // A draining node's sessions belong to the nodes that take its rooms over: it records nothing more.
        if let (Some(m), true) = (manager, entries > 0 && journal.record && !router.is_draining()) {
            let mut m = m.clone();
            let written = tokio::time::timeout(ANSWER_TIMEOUT, pipe.query_async::<()>(&mut m)).await;
            if !matches!(written, Ok(Ok(()))) {
                // Served anyway; only a takeover of these sessions, should this node die now, would miss them.
                let _ = events.try_send(Event::Trouble("recording sessions failed".into()));
            }
        }
        for action in actions {
            match action {
                Action::Local(output) => {
                    if let Some(slow) = deliver(output, sockets, outcomes) {
                        router.handle_closed(hub, slow, now());
                    }
                }
                Action::Publish { node, bytes, owner } => {
                    // A shard of this process takes it on its queue; Redis carries it to another node.
                    let queued = match siblings.iter().find(|(id, _)| *id == node) {
                        // After a refusal, nothing more of this pass goes anywhere (see `PublishQueue::refused`).
                        Some(_) if publish_tx.full => Err(Unqueued::Full),
                        Some((_, queue)) => queue.try_send(Event::Message(bytes)).map_err(|_| {
                            publish_tx.sibling_full();
                            Unqueued::Full
                        }),
                        None => publish_tx.try_send(node, bytes, owner),
                    };
                    match (queued, owner) {
                        (Ok(()), _) => {}
                        (Err(Unqueued::Share), Some(owner)) => {
                            tracing::debug!(conn = %owner, "socket holds its share of the publish queue; closing it");
                            router.handle_unpublished(hub, owner, now());
                        }
                        (Err(_), _) => {
                            // Redis does not keep up: what depends on it is closed and resumes (bounded memory).
                            let _ = events.try_send(Event::Trouble("the publish queue is full".into()));
                            router.handle_link_lost(hub, now());
                        }
                    }
                }
                Action::Lookup { conn, query } => match manager {
                    Some(m) => {
                        let (m, node, events) = (m.clone(), router.node().clone(), events.clone());
                        tokio::spawn(async move {
                            // Once more on a broken connection (the manager reconnects): every step is idempotent.
                            let resume = matches!(query, Query::Session(_));
                            let mut answer = Answer::Failed;
                            for _ in 0..2 {
                                let looked = lookup(m.clone(), &node, query.clone(), lease);
                                match tokio::time::timeout(ANSWER_TIMEOUT, looked).await {
                                    Ok(Ok(a)) => answer = a,
                                    Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => continue,
                                    Ok(Err(_)) | Err(_) => {}
                                }
                                break;
                            }
                            let _ = events.send(Event::Lookup { conn, answer, resume }).await;
                        });
                    }
                    // Answered like a lookup Redis failed, through the loop: the join it releases may take a room,
                    // which the loop counts (`Rooms::open`).
                    None => {
                        let failed = Event::Lookup {
                            conn,
                            answer: Answer::Failed,
                            resume: matches!(query, Query::Session(_)),
                        };
                        if events.try_send(failed).is_err() {
                            // The loop's queue is full (65 536 events): answered here, where no room may be taken.
                            router.handle_lookup(hub, conn, Answer::Failed, now());
                        }
                    }
                },
                Action::Announce(_) => {}
            }
        }
    }
}

/// One journal entry as Redis commands (docs/scaling.md, "Redis keys").
fn record(pipe: &mut redis::Pipeline, event: &SessionEvent, lease: Lease) {
    let ttl = millis(lease.session);
    match event {
        SessionEvent::Opened {
            secret,
            room,
            peer,
            meta,
            ip,
            next_seq,
            client_seq,
        } => {
            pipe.cmd("SET")
                .arg(session_key(secret.as_str()))
                .arg(&**room)
                .arg("PX")
                .arg(ttl)
                .ignore();
            pipe.cmd("HSET")
                .arg(state_key(peer))
                .arg("secret")
                .arg(secret.as_str())
                .arg("room")
                .arg(&**room)
                .arg("meta")
                .arg(&**meta)
                .arg("ip")
                .arg(ip.to_string())
                .arg("next")
                .arg(*next_seq)
                .arg("client")
                .arg(*client_seq)
                .ignore();
            pipe.cmd("PEXPIRE").arg(state_key(peer)).arg(ttl).ignore();
            pipe.cmd("SADD").arg(members_key(room)).arg(peer.as_str()).ignore();
            pipe.cmd("PEXPIRE").arg(members_key(room)).arg(ttl).ignore();
        }
        SessionEvent::Numbered { peer, seq, kept } => {
            pipe.cmd("HSET").arg(state_key(peer)).arg("next").arg(seq + 1).ignore();
            if let Some(text) = kept {
                let mut member = format!("{seq}:").into_bytes();
                member.extend_from_slice(text);
                pipe.cmd("ZADD").arg(frames_key(peer)).arg(*seq).arg(member).ignore();
                pipe.cmd("PEXPIRE").arg(frames_key(peer)).arg(ttl).ignore();
            }
        }
        SessionEvent::Forgot { peer, through } => {
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(frames_key(peer))
                .arg("-inf")
                .arg(*through)
                .ignore();
        }
        SessionEvent::Handled { peer, client_seq } => {
            pipe.cmd("HSET")
                .arg(state_key(peer))
                .arg("client")
                .arg(*client_seq)
                .ignore();
        }
        SessionEvent::Ended { secret, peer, room } => {
            pipe.cmd("DEL")
                .arg(session_key(secret.as_str()))
                .arg(state_key(peer))
                .arg(frames_key(peer))
                .ignore();
            pipe.cmd("SREM").arg(members_key(room)).arg(peer.as_str()).ignore();
        }
    }
}

fn state_key(peer: &PeerId) -> String {
    format!("{PREFIX}s:{peer}")
}

fn frames_key(peer: &PeerId) -> String {
    format!("{PREFIX}f:{peer}")
}

fn members_key(room: &str) -> String {
    format!("{PREFIX}m:{room}")
}

fn channel(node: &NodeId) -> String {
    format!("{PREFIX}node:{node}")
}

fn session_key(secret: &str) -> String {
    format!("{PREFIX}sess:{secret}")
}

/// Present while Redis holds this node's session journal: written with the whole journal, kept alive by the
/// heartbeat. Gone means Redis lost it (a restart with nothing persisted) and the journal is written again.
fn journal_key(node: &NodeId) -> String {
    format!("{PREFIX}journal:{node}")
}

fn room_key(room: &str) -> String {
    format!("{PREFIX}room:{room}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A session Redis does not know: unknown for good ([`Answer::Unknown`], the resume fails), unless Redis came back
/// empty less than [`SETTLING`] ago, when its home may not have written its journal again yet ([`Answer::Retry`]).
async fn settling(m: &mut ConnectionManager) -> redis::RedisResult<Answer> {
    let left: i64 = redis::cmd("PTTL").arg(up_key()).query_async(m).await?;
    let age = u64::try_from(left).map(|left| millis(UP_TTL).saturating_sub(left));
    Ok(match age {
        Ok(age) if age >= millis(SETTLING) => Answer::Unknown,
        // Missing (-2: no heartbeat since the restart) or young.
        _ => Answer::Retry,
    })
}

/// Which node hosts the room (or session) a socket's first frame names; when this node takes a room over from a
/// node that died, the sessions that node recorded.
async fn lookup(mut m: ConnectionManager, node: &NodeId, query: Query, lease: Lease) -> redis::RedisResult<Answer> {
    let room = match query {
        Query::Room(room) => room,
        Query::Session(secret) => {
            let room: Option<String> = redis::cmd("GET")
                .arg(session_key(secret.as_str()))
                .query_async(&mut m)
                .await?;
            match room {
                Some(room) => room,
                None => return settling(&mut m).await,
            }
        }
    };
    let claim = redis::Script::new(CLAIM);
    let mut reply = String::new();
    // Bounded by the caller's answer timeout too.
    for _ in 0..30 {
        reply = claim
            .key(room_key(&room))
            .key(members_key(&room))
            .arg(node.as_str())
            .arg(millis(lease.room))
            .arg(format!("{PREFIX}node:"))
            .invoke_async(&mut m)
            .await?;
        if !reply.ends_with("|restoring") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (home, restore) = match reply.split_once('|') {
        Some((home, "restore")) => (home, true),
        // Still being restored by the node taking it over: its sessions are about to be there.
        Some(_) => return Ok(Answer::Retry),
        None => (reply.as_str(), false),
    };
    let Some(home) = NodeId::parse(home) else {
        return Ok(Answer::Failed);
    };
    if !restore {
        return Ok(Answer::Home(home));
    }
    let peers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(members_key(&room))
        .query_async(&mut m)
        .await?;
    let peers: Vec<PeerId> = peers.iter().filter_map(|p| PeerId::parse(p)).collect();
    let mut states = redis::pipe();
    let mut frames = redis::pipe();
    for peer in &peers {
        states.cmd("HGETALL").arg(state_key(peer));
        frames.cmd("ZRANGE").arg(frames_key(peer)).arg(0).arg(-1);
    }
    let states: Vec<HashMap<String, String>> = states.query_async(&mut m).await?;
    let frames: Vec<Vec<Vec<u8>>> = frames.query_async(&mut m).await?;
    let room: Arc<str> = room.into();
    let restored: Vec<Restored> = peers
        .into_iter()
        .zip(states)
        .zip(frames)
        .filter_map(|((peer, state), frames)| restored(peer, &room, &state, frames))
        .collect();
    tracing::info!(room = %room, sessions = restored.len(), "took over a room from a node that died");
    if restored.is_empty() {
        // Nothing to wait for: the room's key names this node alone at once.
        claimed(m, room, node.clone()).await;
        return Ok(Answer::Home(node.clone()));
    }
    Ok(Answer::TakenOver(restored))
}

/// Ends a takeover: the room's key names this node alone.
async fn claimed(mut m: ConnectionManager, room: Arc<str>, node: NodeId) {
    let set: redis::RedisResult<()> = redis::cmd("SET")
        .arg(room_key(&room))
        .arg(node.as_str())
        .arg("PX")
        .arg(millis(LEASE))
        .query_async(&mut m)
        .await;
    if let Err(e) = set {
        tracing::debug!(error = %e, "could not end a room's takeover (its key expires by itself)");
    }
}

/// A session as another node recorded it; `None` when the record is incomplete (it expired meanwhile).
fn restored(peer: PeerId, room: &Arc<str>, state: &HashMap<String, String>, frames: Vec<Vec<u8>>) -> Option<Restored> {
    let frames = frames
        .into_iter()
        .filter_map(|member| {
            let colon = member.iter().position(|b| *b == b':')?;
            let seq = std::str::from_utf8(member.get(..colon)?).ok()?.parse().ok()?;
            let text = member.get(colon + 1..)?;
            // Frames are JSON text; anything else in Redis is not ours.
            std::str::from_utf8(text).ok()?;
            Some((seq, Bytes::copy_from_slice(text)))
        })
        .collect();
    Some(Restored {
        secret: SessionSecret::parse(state.get("secret")?)?,
        room: room.clone(),
        peer,
        meta: state.get("meta")?.as_str().into(),
        ip: state.get("ip")?.parse().ok()?,
        next_seq: state.get("next")?.parse().ok()?,
        client_seq: state.get("client")?.parse().ok()?,
        frames,
    })
}

/// Once a second: this node's key, the leases of the rooms and sessions it hosts, and whether the nodes its sockets
/// are forwarded to still heartbeat. Built from the router's state now, sent as one pipeline.
fn heartbeat(
    mut m: ConnectionManager,
    router: &Router,
    (stats, registries): (HubStats, Option<Arc<[Registry]>>),
    ice: &Ice,
    lease: Lease,
    events: mpsc::Sender<Event>,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (written, landed) = tokio::sync::oneshot::channel();
    let status = ice.turn.clone();
    let turn = ice.turn.get();
    let node = router.node().clone();
    let mut pipe = redis::pipe();
    // One unit per signaling socket and per TURN allocation: what a node holds for its peers.
    let load = u64::try_from(stats.connections)
        .unwrap_or(u64::MAX)
        .saturating_add(turn.allocations);
    let relayed = turn.relayed_bytes_to_peer.saturating_add(turn.relayed_bytes_to_client);
    let capacity = ice.turn.capacity();
    let info = serde_json::json!({
        "node": node.as_str(),
        "load": load,
        "allocations": turn.allocations,
        "max_allocations": capacity.allocations,
        "relayed_bytes": relayed,
        "relayed_bps": ice.turn.relayed_rate(relayed),
        "relay_capacity_bps": capacity.relay_bits_per_second,
        "sockets": stats.connections,
        "max_sockets": capacity.connections,
        "sessions": stats.sessions,
        "rooms": stats.rooms,
        "turn": turn_entries(&ice.own),
    });
    if let Some(registries) = &registries {
        let overloaded = overloaded(&info);
        for registry in registries.iter() {
            registry.set_own_overloaded(overloaded);
        }
    }
    pipe.cmd("SET")
        .arg(channel(&node))
        .arg(info.to_string())
        .arg("PX")
        .arg(millis(NODE_TTL))
        .ignore();
    // Written again if Redis lost it (restarted); never taken from a node that claimed it meanwhile ([`LEASES`]).
    let rooms: Vec<String> = router.hosted_rooms().map(str::to_owned).collect();
    static LEASE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(LEASES));
    let mut leases = LEASE_SCRIPT.prepare_invoke();
    for room in &rooms {
        leases.key(room_key(room));
    }
    leases.arg(node.as_str()).arg(millis(LEASE));
    pipe.cmd("SET")
        .arg(up_key())
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(millis(UP_TTL))
        .ignore();
    let ttl = millis(lease.session);
    // Answered first, before the homes' EXISTS.
    pipe.cmd("EXISTS").arg(journal_key(&node));
    pipe.cmd("PEXPIRE").arg(journal_key(&node)).arg(ttl).ignore();
    for (secret, peer, room) in router.hosted_sessions() {
        // SET rather than PEXPIRE: a key lost while Redis was away is written again.
        pipe.cmd("SET")
            .arg(session_key(secret.as_str()))
            .arg(room)
            .arg("PX")
            .arg(ttl)
            .ignore();
        pipe.cmd("PEXPIRE").arg(state_key(peer)).arg(ttl).ignore();
        pipe.cmd("PEXPIRE").arg(frames_key(peer)).arg(ttl).ignore();
    }
    for room in router.hosted_rooms() {
        pipe.cmd("PEXPIRE").arg(members_key(room)).arg(ttl).ignore();
    }
    let homes = router.homes();
    for home in &homes {
        pipe.cmd("EXISTS").arg(channel(home));
    }
    let beat = async move {
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, pipe.query_async(&mut m)).await;
        // Its keys are written (or never will be): a drain may delete them now.
        let _ = written.send(());
        let alive: redis::RedisResult<Vec<u8>> = match answer {
            Ok(result) => result,
            Err(_) => {
                let _ = events.send(Event::Trouble("the heartbeat timed out".into())).await;
                return;
            }
        };
        match alive {
            Ok(alive) => {
                if !rooms.is_empty() {
                    let lost = tokio::time::timeout(ANSWER_TIMEOUT, leases.invoke_async::<Vec<usize>>(&mut m)).await;
                    match lost {
                        Ok(Ok(lost)) if !lost.is_empty() => {
                            // Lua counts from 1.
                            let lost = lost
                                .iter()
                                .filter_map(|i| rooms.get(i.checked_sub(1)?).cloned())
                                .collect();
                            let _ = events.send(Event::RoomsLost(lost)).await;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            let _ = events.send(Event::Trouble(format!("the heartbeat failed: {e}"))).await;
                            return;
                        }
                        Err(_) => {
                            let _ = events.send(Event::Trouble("the heartbeat timed out".into())).await;
                            return;
                        }
                    }
                }
                let _ = events.send(Event::Healthy).await;
                let (journal, alive) = alive.split_first().map_or((1, &[][..]), |(j, rest)| (*j, rest));
                if journal == 0 {
                    let _ = events.send(Event::JournalLost).await;
                }
                for (home, &exists) in homes.into_iter().zip(alive) {
                    if exists == 0 {
                        let _ = events.send(Event::NodeGone(home)).await;
                    }
                }
                // The first shard registers the node (not once it drains) and reads the registry for every shard.
                if let Some(registries) = registries {
                    update_registry(&mut m, &node, !status.is_draining(), &registries).await;
                }
            }
            Err(e) => {
                let _ = events.send(Event::Trouble(format!("the heartbeat failed: {e}"))).await;
            }
        }
    };
    (beat, landed)
}

/// The base iceServers (this node's own STUN/TURN with a fresh credential) and the other nodes', as last read.
pub(crate) struct Ice {
    pub own: crate::IceServersFn,
    pub registry: Registry,
    pub turn: TurnLoadSource,
}

/// What the binary and `/readyz` share with a node's hub task: the TURN workers' counters and the node's capacity
/// in (given once its workers run), Redis' health, the drain and the other live nodes' TURN URLs out.
#[derive(Clone, Default)]
pub(crate) struct NodeStatus(Arc<StatusInner>);

/// The name the hub knows it by.
pub(crate) type TurnLoadSource = NodeStatus;

#[derive(Default)]
struct StatusInner {
    turn: std::sync::OnceLock<Arc<dyn Fn() -> TurnLoad + Send + Sync>>,
    capacity: std::sync::OnceLock<crate::NodeCapacity>,
    registry: std::sync::OnceLock<Registry>,
    redis: std::sync::atomic::AtomicU8,
    draining: std::sync::atomic::AtomicBool,
    /// The relayed byte counter at the last heartbeat, to advertise a rate.
    last_relayed: Mutex<Option<(std::time::Instant, u64)>>,
}

/// Redis as the hub task last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisState {
    /// Not answered yet (starting).
    Unknown = 0,
    /// Commands and this node's subscription work: rooms are shared.
    Shared = 1,
    /// The node serves its sockets alone.
    Unreachable = 2,
}

impl NodeStatus {
    pub(crate) fn set(&self, source: Arc<dyn Fn() -> TurnLoad + Send + Sync>) {
        let _ = self.0.turn.set(source);
    }

    fn get(&self) -> TurnLoad {
        self.0.turn.get().map(|f| f()).unwrap_or_default()
    }

    pub(crate) fn set_capacity(&self, capacity: crate::NodeCapacity) {
        let _ = self.0.capacity.set(capacity);
    }

    fn capacity(&self) -> crate::NodeCapacity {
        self.0.capacity.get().copied().unwrap_or_default()
    }

    fn attach(&self, registry: Registry) {
        let _ = self.0.registry.set(registry);
    }

    fn set_redis(&self, state: RedisState) {
        self.0.redis.store(state as u8, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn redis(&self) -> RedisState {
        match self.0.redis.load(std::sync::atomic::Ordering::Relaxed) {
            1 => RedisState::Shared,
            2 => RedisState::Unreachable,
            _ => RedisState::Unknown,
        }
    }

    fn set_draining(&self) {
        self.0.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.0.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The other live nodes' TURN URLs, the least loaded node first, overloaded nodes left out.
    pub(crate) fn other_turn_urls(&self) -> Vec<String> {
        let Some(registry) = self.0.registry.get() else {
            return Vec::new();
        };
        let nodes = registry.0.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .others
            .iter()
            .flat_map(|(_, urls)| urls.as_array().cloned().unwrap_or_default())
            .flat_map(|urls| match urls {
                Value::Array(list) => list,
                one => vec![one],
            })
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect()
    }

    /// Bits per second relayed since the last call (0 the first time).
    fn relayed_rate(&self, relayed_bytes: u64) -> u64 {
        let now = std::time::Instant::now();
        let mut last = self.0.last_relayed.lock().unwrap_or_else(|e| e.into_inner());
        let rate = match *last {
            Some((at, bytes)) if now > at => {
                let bits = relayed_bytes.saturating_sub(bytes).saturating_mul(8) as f64;
                (bits / now.duration_since(at).as_secs_f64()) as u64
            }
            _ => 0,
        };
        *last = Some((now, relayed_bytes));
        rate
    }
}

impl std::fmt::Debug for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStatus")
            .field("redis", &self.redis())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

/// At or above this share of any capacity a node advertises, it is overloaded: not handed out in `iceServers`
/// (the TURN it would give is better given by a node with room; the margin covers the second the figures lag).
const OVERLOAD_PERCENT: u64 = 90;

/// Whether a registry entry says its node is overloaded: allocations, signaling sockets or relayed bandwidth at
/// [`OVERLOAD_PERCENT`] of what it can hold. A capacity it does not advertise (0, absent) is not weighed.
fn overloaded(entry: &Value) -> bool {
    let full = |used: &str, capacity: &str| {
        let (Some(used), Some(capacity)) = (
            entry.get(used).and_then(Value::as_u64),
            entry.get(capacity).and_then(Value::as_u64),
        ) else {
            return false;
        };
        capacity > 0 && used.saturating_mul(100) >= capacity.saturating_mul(OVERLOAD_PERCENT)
    };
    full("allocations", "max_allocations")
        || full("sockets", "max_sockets")
        || full("relayed_bps", "relay_capacity_bps")
}

/// The other live nodes' TURN entries (`urls` only), least loaded first, as the registry last said, and the node
/// whose socket the hub is handling right now: read by every join's iceServers (on the hub's thread), written once a
/// second by the heartbeat and around each envelope from another node.
#[derive(Clone, Default)]
pub(crate) struct Registry(Arc<Mutex<Nodes>>);

#[derive(Default)]
struct Nodes {
    others: Vec<(NodeId, Value)>,
    /// The peer's own node when its socket is on another node than the room's home.
    origin: Option<NodeId>,
    /// This node's own heartbeat said it is overloaded.
    own_overloaded: bool,
}

impl Registry {
    fn set(&self, others: Vec<(NodeId, Value)>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).others = others;
    }

    fn set_own_overloaded(&self, overloaded: bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).own_overloaded = overloaded;
    }

    /// Joins handled until the next call are for a socket of `origin` (`None`: of this node).
    fn minting_for(&self, origin: Option<NodeId>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).origin = origin;
    }

    /// The other nodes' TURN URL lists in the order handed out: the peer's own node first; and whether this node
    /// is overloaded.
    fn ordered(&self) -> (Option<Value>, Vec<Value>, bool) {
        let nodes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let origin = nodes.origin.as_ref();
        let first = nodes
            .others
            .iter()
            .find(|(id, _)| Some(id) == origin)
            .map(|(_, v)| v.clone());
        let rest = nodes
            .others
            .iter()
            .filter(|(id, _)| Some(id) != origin)
            .map(|(_, v)| v.clone())
            .collect();
        (first, rest, nodes.own_overloaded)
    }
}

/// A join's iceServers: the peer's own node first — this node's STUN and TURN, or when the peer's socket is on
/// another node, that node's TURN before them — then every other live node's TURN, least loaded first, all with
/// the same credential (TURN secrets are shared across a cluster). Overloaded nodes are left out (the registry
/// read skips the others; this node's own TURN is dropped when it is overloaded and another node has room).
pub(crate) fn ice_source(
    own: crate::IceServersFn,
    extra: crate::IceServersFn,
    registry: Registry,
) -> signal::IceServerSource {
    Box::new(move |peer, unix| {
        let mut servers = own(peer.as_str(), unix);
        let credential = servers.as_array().and_then(|a| {
            a.iter()
                .find(|e| e.get("username").is_some())
                .map(|e| (e.get("username").cloned(), e.get("credential").cloned()))
        });
        if let (Some(list), Some((Some(username), Some(credential)))) = (servers.as_array_mut(), credential) {
            let entry = |urls: &Value| json!({"urls": urls, "username": username, "credential": credential});
            let (first, rest, own_overloaded) = registry.ordered();
            if own_overloaded && (first.is_some() || !rest.is_empty()) {
                list.retain(|e| e.get("username").is_none());
            }
            if let Some(first) = first {
                let mine = std::mem::take(list);
                list.extend(first.as_array().into_iter().flatten().map(entry));
                list.extend(mine);
            }
            for other in rest {
                list.extend(other.as_array().into_iter().flatten().map(entry));
            }
        }
        let servers = crate::with_extra(servers, &extra, peer.as_str(), unix);
        serde_json::value::to_raw_value(&servers)
            .unwrap_or_else(|_| serde_json::value::to_raw_value(&()).unwrap_or_default())
    })
}

/// This node's TURN URL lists (the entries with a credential), without the credential: what the registry holds.
fn turn_entries(own: &crate::IceServersFn) -> Value {
    let servers = own("registry", 0);
    let urls: Vec<Value> = servers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.get("username").is_some())
        .filter_map(|e| e.get("urls").cloned())
        .collect();
    Value::Array(urls)
}

/// Reads the registry into `registry` (a failure keeps the last read: it is at most a few seconds old).
async fn update_registry(m: &mut ConnectionManager, node: &NodeId, register: bool, registries: &[Registry]) {
    match tokio::time::timeout(ANSWER_TIMEOUT, read_registry(m, node, register)).await {
        Ok(Ok(others)) => {
            for registry in registries {
                registry.set(others.clone());
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "could not read the node registry"),
        Err(_) => tracing::debug!("reading the node registry timed out"),
    }
}

/// A draining node's registry read: it no longer registers itself.
async fn refresh_registry(mut m: ConnectionManager, node: NodeId, registries: Arc<[Registry]>) {
    update_registry(&mut m, &node, false, &registries).await;
}

/// The `nodes` set, scored by Redis's clock (`TIME`): registers ARGV[2] when ARGV[1] is 1, forgets entries older
/// than ARGV[3] ms, returns the rest. Scored by each node's own clock, a node whose clock ran 30 s behind was
/// pruned by the others as soon as it wrote, and never handed out.
const REGISTRY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '1' then redis.call('ZADD', KEYS[1], now, ARGV[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Registers this node in the `nodes` set (unless `register` is false) and reads the other live nodes' TURN URLs,
/// least loaded first, overloaded nodes left out. A node is live while its heartbeat key exists; the set only
/// lists candidates.
async fn read_registry(
    m: &mut ConnectionManager,
    node: &NodeId,
    register: bool,
) -> redis::RedisResult<Vec<(NodeId, Value)>> {
    static REGISTRY_SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(REGISTRY));
    let ids: Vec<String> = REGISTRY_SCRIPT
        .key(format!("{PREFIX}nodes"))
        .arg(u8::from(register))
        .arg(node.as_str())
        .arg(10 * millis(NODE_TTL))
        .invoke_async(m)
        .await?;
    let others: Vec<String> = ids.into_iter().filter(|id| id != node.as_str()).collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<NodeId> = others.iter().filter_map(|id| NodeId::parse(id)).collect();
    let keys: Vec<String> = ids.iter().map(channel).collect();
    let infos: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(m).await?;
    let mut live: Vec<(u64, NodeId, Value)> = ids
        .into_iter()
        .zip(infos)
        .filter_map(|(id, info)| Some((id, serde_json::from_str::<Value>(&info?).ok()?)))
        .filter(|(_, v)| !overloaded(v))
        .map(|(id, v)| {
            let load = v.get("load").and_then(Value::as_u64).unwrap_or(u64::MAX);
            (load, id, v.get("turn").cloned().unwrap_or_default())
        })
        .collect();
    live.sort_by_key(|(load, _, _)| *load);
    Ok(live.into_iter().map(|(_, id, turn)| (id, turn)).collect())
}

/// Connects the command connection, retrying every second until Redis answers; then it reconnects by itself.
async fn connect(client: redis::Client, events: mpsc::Sender<Event>) {
    loop {
        match ConnectionManager::new_with_config(client.clone(), manager_config()).await {
            Ok(m) => {
                let _ = events.send(Event::Connected(m)).await;
                return;
            }
            Err(e) => {
                let _ = events.send(Event::Trouble(format!("cannot connect: {e}"))).await;
                tokio::time::sleep(HEARTBEAT).await;
            }
        }
    }
}

/// Subscribes to this node's channel and hands every message to the hub task; when the subscription breaks, says
/// so (the sockets that depend on it resume) and subscribes again.
async fn subscribe(client: redis::Client, channel: String, events: mpsc::Sender<Event>) {
    // At once after a subscription that broke (what other nodes publish meanwhile is lost); a heartbeat apart after
    // a failure.
    let mut wait = false;
    loop {
        if wait {
            tokio::time::sleep(HEARTBEAT).await;
        }
        wait = true;
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => {
                let _ = events.send(Event::Subscribed).await;
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let bytes = Bytes::copy_from_slice(msg.get_payload_bytes());
                    if events.send(Event::Message(bytes)).await.is_err() {
                        return;
                    }
                }
                if events.send(Event::LinkLost).await.is_err() {
                    return;
                }
                wait = false;
            }
            Ok(Err(e)) => {
                let _ = events.send(Event::Trouble(format!("cannot subscribe: {e}"))).await;
            }
            Err(_) => {
                let _ = events.send(Event::Trouble("subscribing timed out".into())).await;
            }
        }
    }
}

/// Publishes envelopes in order, as many per round trip as are waiting, on a connection of its own (so they do not
/// wait behind lookups). Envelopes it cannot publish are lost: it says so, and the sockets depending on other nodes
/// resume.
async fn publish(
    client: Option<redis::Client>,
    mut rx: mpsc::Receiver<Queued>,
    queued: Arc<AtomicUsize>,
    events: mpsc::Sender<Event>,
) {
    let mut manager: Option<ConnectionManager> = None;
    let mut batch = Vec::with_capacity(256);
    let mut held = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        if manager.is_none() {
            if let Some(client) = &client {
                let connecting = ConnectionManager::new_with_config(client.clone(), manager_config());
                manager = tokio::time::timeout(ANSWER_TIMEOUT, connecting)
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
        }
        let mut pipe = redis::pipe();
        // The pipeline has copied the bytes: what stays held until the round trip ends is their count.
        for q in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(channel(&q.node)).arg(&q.bytes[..]);
            held.push(InFlight {
                bytes: q.bytes.len(),
                share: q.share,
                owner: q.owner,
            });
        }
        // Once more when the connection had broken (Redis restarted, say): the manager reconnects, and what the
        // broken connection carried never reached the Redis that answers now.
        let mut received: Option<Vec<i64>> = None;
        for _ in 0..2 {
            let Some(m) = manager.as_mut() else { break };
            match tokio::time::timeout(ANSWER_TIMEOUT, pipe.query_async::<Vec<i64>>(m)).await {
                Ok(Ok(counts)) => received = Some(counts),
                Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => continue,
                Ok(Err(_)) | Err(_) => {}
            }
            break;
        }
        // An envelope no node was subscribed to receive (its node was subscribing again, or is gone) is lost: the
        // socket it was for or from is closed (4202) to resume, and the replay covers what was lost. Before, a join
        // forwarded in that second got no answer until the client gave up.
        let mut undelivered = Vec::new();
        for (i, f) in held.drain(..).enumerate() {
            given_back(f.bytes, f.share.as_ref(), &queued);
            let lost = received.as_ref().is_some_and(|counts| counts.get(i) == Some(&0));
            if let (true, Some(owner)) = (lost, f.owner) {
                if !undelivered.contains(&owner) {
                    undelivered.push(owner);
                }
            }
        }
        if received.is_none() {
            let _ = events.send(Event::PublishFailed).await;
        } else if !undelivered.is_empty() {
            let _ = events.send(Event::Undelivered(undelivered)).await;
        }
    }
}

fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(ANSWER_TIMEOUT))
        .set_response_timeout(Some(ANSWER_TIMEOUT))
        .set_number_of_retries(1)
}

/// `/readyz` in a cluster: ready while Redis answers (a node that serves alone would split the rooms new peers
/// join from the rest of the cluster) and not draining.
#[derive(Debug)]
pub(crate) struct ClusterCheck {
    pub status: NodeStatus,
    pub part: ClusterCheckPart,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ClusterCheckPart {
    Redis,
    Drain,
}

impl metrics::Check for ClusterCheck {
    fn name(&self) -> &'static str {
        match self.part {
            ClusterCheckPart::Redis => "redis",
            ClusterCheckPart::Drain => "drain",
        }
    }

    fn run(&self, _unix_now: u64) -> metrics::CheckResult {
        let (ok, detail) = match self.part {
            ClusterCheckPart::Redis => match self.status.redis() {
                RedisState::Shared => (true, "connected: rooms are shared with the other nodes"),
                RedisState::Unknown => (false, "connecting to Redis"),
                RedisState::Unreachable => (
                    false,
                    "Redis unreachable: this node serves its own sockets alone until it answers",
                ),
            },
            ClusterCheckPart::Drain => match self.status.is_draining() {
                false => (true, "not draining"),
                true => (
                    false,
                    "draining: rooms handed to the other nodes, no new sockets or TURN allocations",
                ),
            },
        };
        metrics::CheckResult {
            name: self.name(),
            ok,
            detail: detail.to_owned(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_queue_is_bounded_in_bytes_as_well_as_envelopes() {
        let (tx, mut rx) = mpsc::channel(PUBLISH_QUEUE);
        let mut queue = PublishQueue::new(tx, usize::MAX);
        let node = NodeId::parse("n1").unwrap();
        let frame = Bytes::from(vec![b'x'; 64 * 1024]);
        let fit = PUBLISH_QUEUE_BYTES / frame.len();
        for i in 0..fit {
            let owner = Some(ConnId::new(i as u64 % 7));
            assert_eq!(queue.try_send(node.clone(), frame.clone(), owner), Ok(()));
        }
        assert_eq!(
            queue.try_send(node.clone(), frame.clone(), None),
            Err(Unqueued::Full),
            "past 64 MiB"
        );
        assert_eq!(queue.bytes.load(Ordering::Relaxed), PUBLISH_QUEUE_BYTES);
        // What the publishing task took and gave back makes room again, from the next pass on: in this one, a
        // smaller envelope would reach its socket past the gap the refused one left.
        let taken = rx.try_recv().unwrap();
        given_back(taken.bytes.len(), taken.share.as_ref(), &queue.bytes);
        assert_eq!(
            queue.try_send(node.clone(), Bytes::from_static(b"x"), Some(ConnId::new(1))),
            Err(Unqueued::Full)
        );
        queue.new_pass();
        // A sibling shard's full queue ends the pass's publishing the same way.
        queue.sibling_full();
        assert_eq!(
            queue.try_send(node.clone(), Bytes::from_static(b"x"), None),
            Err(Unqueued::Full)
        );
        queue.new_pass();
        assert_eq!(queue.try_send(node, frame, None), Ok(()));
    }

    #[test]
    fn a_socket_holds_at_most_its_share_of_the_publish_queue() {
        let (tx, mut rx) = mpsc::channel(PUBLISH_QUEUE);
        let mut queue = PublishQueue::new(tx, 1000);
        let node = NodeId::parse("n1").unwrap();
        let (flood, other) = (ConnId::new(1), ConnId::new(2));
        let frame = Bytes::from(vec![b'x'; 400]);
        for _ in 0..2 {
            assert_eq!(queue.try_send(node.clone(), frame.clone(), Some(flood)), Ok(()));
        }
        assert_eq!(
            queue.try_send(node.clone(), frame.clone(), Some(flood)),
            Err(Unqueued::Share),
            "past its 1000 bytes"
        );
        // Another socket, and a notice charged to no socket, still go.
        assert_eq!(queue.try_send(node.clone(), frame.clone(), Some(other)), Ok(()));
        assert_eq!(queue.try_send(node.clone(), frame.clone(), None), Ok(()));
        assert_eq!(
            queue.bytes.load(Ordering::Relaxed),
            1600,
            "the refused frame holds nothing"
        );

        // A smaller frame of the refused socket, behind the refused one, is refused too: it would arrive past a gap.
        let small = Bytes::from(vec![b'x'; 10]);
        assert_eq!(
            queue.try_send(node.clone(), small.clone(), Some(flood)),
            Err(Unqueued::Share)
        );
        assert_eq!(queue.try_send(node.clone(), small, Some(other)), Ok(()));

        // Published: the flooding socket's share is given back, and in the next pass it may send again.
        let published = rx.try_recv().unwrap();
        given_back(published.bytes.len(), published.share.as_ref(), &queue.bytes);
        drop(published);
        queue.new_pass();
        assert_eq!(queue.try_send(node.clone(), frame.clone(), Some(flood)), Ok(()));

        // Sockets with nothing queued are forgotten; those with bytes in flight are kept.
        while let Ok(q) = rx.try_recv() {
            given_back(q.bytes.len(), q.share.as_ref(), &queue.bytes);
        }
        assert_eq!(queue.bytes.load(Ordering::Relaxed), 0);
        queue.forget_idle();
        let _ = &mut rx;
        assert!(queue.shares.is_empty(), "{:?}", queue.shares.keys().collect::<Vec<_>>());
        assert_eq!(queue.try_send(node, frame, Some(other)), Ok(()));
        queue.forget_idle();
        assert_eq!(queue.shares.len(), 1, "its envelope is in flight");
    }
}
