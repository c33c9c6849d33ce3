//! The hub sharded by room: one [`MemoryHub`] per shard, each behind a mutex of its own, driven inline by the
//! socket task that has a frame — no hub thread, no channel, no lock shared by every socket on the message path.
//!
//! Why: with one hub thread, every signal crossed threads twice (socket task → hub thread → socket task), and the
//! hub thread was the ceiling for the whole node. Now a socket task takes its room's shard lock, hands the frame to
//! the hub and pushes what the hub wants sent into the recipients' outboxes before letting go. When the recipient's
//! socket is served by the same worker thread (the TURN workers' single-threaded runtimes serve HTTP too), its task is
//! woken on that thread's own queue: the signal never leaves the thread. A shard's lock is contended only by sockets
//! of rooms hashed to it that are served by different workers.
//!
//! Placement: a room lives in the shard its name hashes to (a per-process random key, so nobody can aim every room at
//! one shard). A socket starts in its worker thread's home shard; before its `join` (or `resume`) is handled, it
//! moves to the room's shard (the session's, for a resume) with its token bucket, error count and outbox
//! ([`MemoryHub::take_unjoined`]). A socket that has joined never moves: after the join no frame is looked into here.
//!
//! Global limits hold across shards without a lock on the message path:
//! - sockets per source: counted here at connect and close (one map under a mutex, never touched by a frame), and
//!   every shard's hub is told there is no per-source limit;
//! - rooms: an atomic count of rooms over all shards; before a `join`, the shard reserves one room from it and lets
//!   its hub create at most that one ([`MemoryHub::set_max_rooms`]); after every event the shard settles the count;
//! - bytes kept per source and in total: each shard's hub gets an equal share of each budget (so the sums hold; a
//!   source whose rooms all hash to one shard gets that shard's share).
//!
//! Timers: one thread sleeps until the earliest shard deadline (each hub's next heartbeat or grace deadline, its sweeps
//! at least 500 ms apart), and is woken when a shard's deadline moves earlier. It is not on the message path.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use outcome::Outcomes;
use signal::{ConnId, ErrorCode, HubStats, Limits, MemoryHub, Now, Refusal, SignalHub, Source};
use tokio::sync::Notify;

use crate::hub::{deliver, now, shutting_down, sleep_until};
use crate::outbox::Outbox;

/// Every shard, and the counts that span them.
pub(crate) struct Shards {
    shards: Box<[Shard]>,
    /// Picks a room's shard; randomly keyed per process.
    placement: std::collections::hash_map::RandomState,
    sources: SourceCount,
    /// Rooms over every shard (reserved or held).
    rooms: AtomicUsize,
    max_rooms: usize,
    stopping: AtomicBool,
    /// Wakes the timer thread: a shard's deadline moved earlier, or the shards are gone.
    timer: Arc<Notify>,
    outcomes: Arc<Outcomes>,
}

/// A shard on a cache line of its own, so that two workers taking two shards' locks do not share one.
#[repr(align(128))]
struct Shard(Mutex<ShardState>);

struct ShardState {
    hub: MemoryHub,
    /// The outboxes of this shard's sockets.
    sockets: HashMap<ConnId, Arc<Outbox>, foldhash::fast::RandomState>,
    /// The deadline the timer thread knows of.
    armed: Option<Instant>,
    /// Rooms of this hub as last added to [`Shards::rooms`].
    rooms: usize,
}

/// Sockets per source over every shard, the sessions of its dropped sockets that wait for a resume, and the
/// unsent-bytes counter their outboxes share: counted at connect and close, never touched by a frame. A waiting
/// session still holds its room; without a count of its own, a source dropping joined sockets one after another
/// could hold every room of the server. A source may have as many waiting as it may have sockets.
pub(crate) struct SourceCount {
    slots: Mutex<HashMap<Source, SourceSlot>>,
    /// When each waiting session counted stops being counted; in that order, the grace being one for all. (A
    /// session resumed sooner is counted until then all the same.)
    waiting: Mutex<VecDeque<(Instant, Source)>>,
    max: usize,
    grace: Duration,
}

#[derive(Default)]
struct SourceSlot {
    sockets: usize,
    /// Sessions of this source's dropped sockets, within their resume grace.
    waiting: usize,
    unsent: Arc<AtomicUsize>,
}

impl SourceCount {
    /// `grace`: the hub's `resume_grace`.
    pub(crate) fn new(max: usize, grace: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            waiting: Mutex::new(VecDeque::new()),
            max,
            grace,
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<Source, SourceSlot>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops counting the waiting sessions whose grace has passed.
    fn forget_waited(&self) {
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(&(at, source)) = waiting.front() {
            if at > now {
                break;
            }
            waiting.pop_front();
            let mut slots = self.slots();
            if let Some(slot) = slots.get_mut(&source) {
                slot.waiting = slot.waiting.saturating_sub(1);
                if slot.sockets == 0 && slot.waiting == 0 {
                    slots.remove(&source);
                }
            }
        }
    }

    /// A joined socket of `source` dropped: may its session wait for a resume? Counted if so; if the source has as
    /// many waiting as it may have sockets, no (the caller ends the session at once, as if it had left).
    pub(crate) fn may_wait(&self, source: Source) -> bool {
        self.forget_waited();
        let mut waiting = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&source) else {
            return false;
        };
        if slot.waiting >= self.max {
            return false;
        }
        slot.waiting += 1;
        waiting.push_back((Instant::now() + self.grace, source));
        true
    }

    /// Would one more socket of `source` be taken?
    pub(crate) fn check(&self, source: Source) -> Result<(), Refusal> {
        let held = self.slots().get(&source).map_or(0, |s| s.sockets);
        if held >= self.max {
            return Err(too_many(source, self.max));
        }
        Ok(())
    }

    /// Counts one more socket of `source`, whose outbox then charges that source's unsent bytes.
    pub(crate) fn take(&self, source: Source, outbox: &Outbox) -> Result<(), Refusal> {
        let mut slots = self.slots();
        let slot = slots.entry(source).or_default();
        if slot.sockets >= self.max {
            return Err(too_many(source, self.max));
        }
        slot.sockets += 1;
        outbox.bind_source(slot.unsent.clone());
        Ok(())
    }

    pub(crate) fn release(&self, source: Source) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(&source) {
            slot.sockets = slot.sockets.saturating_sub(1);
            if slot.sockets == 0 && slot.waiting == 0 {
                slots.remove(&source);
            }
        }
    }
}

/// Where one socket is: kept by its task.
#[derive(Debug)]
pub(crate) struct Seat {
    pub conn: ConnId,
    pub shard: usize,
    pub source: Source,
    /// Joined or resumed (with `--redis`: sent its first `join` or `resume`): it stays in this shard, and its frames
    /// are not looked into any more.
    pub joined: bool,
}

/// The two client messages that place a socket; every other field is ignored.
#[derive(serde::Deserialize)]
pub(crate) struct Placing<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub session: Option<Cow<'a, str>>,
}

impl Shards {
    /// `make` builds one shard's hub from that shard's limits.
    pub(crate) fn new(
        count: usize,
        limits: &Limits,
        outcomes: Arc<Outcomes>,
        mut make: impl FnMut(Limits) -> MemoryHub,
    ) -> Arc<Self> {
        let count = count.max(1);
        let mut own = limits.clone();
        own.max_connections_per_ip = usize::MAX;
        own.max_rooms = 0;
        // The byte budgets are the server's, shared by the shards (not split: a room lives on one shard).
        let bytes = signal::SharedBytes::new();
        let reports = signal::report_allowance();
        let shards = (0..count)
            .map(|_| {
                Shard(Mutex::new(ShardState {
                    hub: make(own.clone())
                        .with_shared_bytes(bytes.clone())
                        .with_shared_report_allowance(reports.clone()),
                    sockets: HashMap::default(),
                    armed: None,
                    rooms: 0,
                }))
            })
            .collect();
        Arc::new(Self {
            shards,
            placement: std::collections::hash_map::RandomState::new(),
            sources: SourceCount::new(limits.max_connections_per_ip, limits.resume_grace),
            rooms: AtomicUsize::new(0),
            max_rooms: limits.max_rooms,
            stopping: AtomicBool::new(false),
            timer: Arc::new(Notify::new()),
            outcomes,
        })
    }

    /// Runs the shards' timers on a thread of their own until the shards are dropped or shut down.
    pub(crate) fn spawn_timers(self: &Arc<Self>) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        let shards = Arc::downgrade(self);
        let wake = self.timer.clone();
        std::thread::Builder::new()
            .name("traverse-hub-timers".into())
            .spawn(move || runtime.block_on(run_timers(shards, wake)))?;
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    // Not input: `shard` comes from `home` or `room_shard`, and `new` makes at least one shard, so `shard % len` is in
    // range.
    #[allow(clippy::indexing_slicing)]
    fn lock(&self, shard: usize) -> MutexGuard<'_, ShardState> {
        let Shard(state) = &self.shards[shard % self.shards.len()];
        state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn room_shard(&self, room: &str) -> usize {
        (self.placement.hash_one(room) % self.shards.len() as u64) as usize
    }

    fn home(&self) -> usize {
        home(self.shards.len())
    }

    pub(crate) fn check_connect(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(shutting_down());
        }
        self.sources.check(Source::from(ip))
    }

    pub(crate) fn check_join(&self, room: &str, token: Option<&str>) -> Result<(), Refusal> {
        let mut st = self.lock(self.room_shard(room));
        let free = usize::from(self.rooms.load(Ordering::Relaxed) < self.max_rooms);
        let held = st.hub.room_count();
        st.hub.set_max_rooms(held + free);
        st.hub.check_join(room, token, now())
    }

    pub(crate) fn connect(&self, conn: ConnId, ip: IpAddr, outbox: Arc<Outbox>) -> Result<Seat, Refusal> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(shutting_down());
        }
        let source = Source::from(ip);
        self.sources.take(source, &outbox)?;
        let shard = self.home();
        let mut st = self.lock(shard);
        if let Err(refusal) = st.hub.handle_connect(conn, ip, now()) {
            drop(st);
            self.sources.release(source);
            return Err(refusal);
        }
        st.sockets.insert(conn, outbox);
        self.settle(&mut st);
        Ok(Seat {
            conn,
            shard,
            source,
            joined: false,
        })
    }

    pub(crate) fn text(&self, seat: &mut Seat, text: &str) {
        self.text_at(seat, text, now());
    }

    /// [`Self::text`] with the clock as the caller read it (once for every frame of one read: `ws::Clock`).
    pub(crate) fn text_at(&self, seat: &mut Seat, text: &str, at: Now) {
        let mut joining = None;
        if !seat.joined {
            // Only an unplaced socket's frames are looked into: a join or resume may move it first.
            if let Ok(placing) = serde_json::from_str::<Placing<'_>>(text) {
                let target = match (placing.kind.as_ref(), placing.room, placing.session) {
                    ("join", Some(room), _) => {
                        let shard = self.room_shard(&room);
                        joining = Some(room);
                        Some(shard)
                    }
                    ("resume", _, Some(session)) => self.session_shard(&session),
                    _ => None,
                };
                if let Some(target) = target.filter(|t| *t != seat.shard) {
                    self.move_to(seat, target);
                }
            }
        }
        let mut st = self.lock(seat.shard);
        // A room of the global limit is reserved only for a room this join would create: reserving one for an
        // existing room would refuse, at the limit, a new room joined at the same moment on another shard.
        let creates = joining.as_deref().is_some_and(|room| !st.hub.has_room(room));
        let reserved = creates && self.reserve_room();
        if joining.is_some() {
            st.rooms += usize::from(reserved);
            let held = st.hub.room_count();
            st.hub.set_max_rooms(held + usize::from(reserved));
        }
        st.hub.handle_text(seat.conn, text, at);
        if !seat.joined {
            seat.joined = st.hub.is_joined(seat.conn);
        }
        self.route(&mut st);
        self.settle(&mut st);
    }

    pub(crate) fn activity(&self, seat: &Seat) {
        let mut st = self.lock(seat.shard);
        st.hub.handle_activity(seat.conn, now());
    }

    pub(crate) fn binary(&self, seat: &Seat) {
        let mut st = self.lock(seat.shard);
        st.hub.handle_binary(seat.conn, now());
        self.route(&mut st);
        self.settle(&mut st);
    }

    pub(crate) fn closed(&self, seat: Seat) {
        {
            let mut st = self.lock(seat.shard);
            // A session left waiting for its resume is counted to its source; past the source's share it ends now.
            if st.hub.is_joined(seat.conn) && !self.sources.may_wait(seat.source) {
                st.hub.end_session(seat.conn, now());
            }
            st.sockets.remove(&seat.conn);
            st.hub.handle_closed(seat.conn, now());
            self.route(&mut st);
            self.settle(&mut st);
        }
        self.sources.release(seat.source);
    }

    /// Connections, sessions, rooms and counters summed over the shards.
    pub(crate) fn stats(&self) -> HubStats {
        let mut total = HubStats::default();
        for shard in 0..self.shards.len() {
            let stats = self.lock(shard).hub.stats();
            add_stats(&mut total, stats);
        }
        total
    }

    /// Closes every socket with 4202 and refuses new ones from now on.
    pub(crate) fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for shard in 0..self.shards.len() {
            let mut st = self.lock(shard);
            st.hub.handle_shutdown();
            self.route(&mut st);
            // Whatever is still open closes once its queue (with its 4202 close) is written.
            for outbox in st.sockets.values() {
                outbox.close();
            }
        }
        self.timer.notify_one();
    }

    /// The shard holding the session a `resume` claims, if any does.
    fn session_shard(&self, claim: &str) -> Option<usize> {
        (0..self.shards.len()).find(|shard| self.lock(*shard).hub.holds_session(claim))
    }

    /// Moves an unjoined socket and its outbox to `target`; nothing happens to one the hub has already let go of.
    fn move_to(&self, seat: &mut Seat, target: usize) {
        let (socket, outbox) = {
            let mut st = self.lock(seat.shard);
            let Some(socket) = st.hub.take_unjoined(seat.conn) else {
                return;
            };
            let outbox = st.sockets.remove(&seat.conn);
            (socket, outbox)
        };
        let mut st = self.lock(target);
        st.hub.adopt(seat.conn, socket, now());
        if let Some(outbox) = outbox {
            st.sockets.insert(seat.conn, outbox);
        }
        self.settle(&mut st);
        seat.shard = target;
    }

    /// Takes one room from the global count, if the limit allows.
    fn reserve_room(&self) -> bool {
        self.rooms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_rooms).then_some(n + 1)
            })
            .is_ok()
    }

    /// Does what the shard's hub asks.
    fn route(&self, st: &mut ShardState) {
        let ShardState { hub, sockets, .. } = st;
        while let Some(output) = hub.poll_output() {
            if let Some(slow) = deliver(output, sockets, &self.outcomes) {
                hub.handle_closed(slow, now());
            }
        }
    }

    /// After an event: the room count follows the hub's, and the timer thread learns of an earlier deadline.
    fn settle(&self, st: &mut ShardState) {
        let rooms = st.hub.room_count();
        if rooms > st.rooms {
            self.rooms.fetch_add(rooms - st.rooms, Ordering::Relaxed);
        } else if rooms < st.rooms {
            self.rooms.fetch_sub(st.rooms - rooms, Ordering::Relaxed);
        }
        st.rooms = rooms;
        if let Some(deadline) = st.hub.poll_timeout() {
            if st.armed.is_none_or(|armed| deadline < armed) {
                st.armed = Some(deadline);
                self.timer.notify_one();
            }
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.timer.notify_one();
    }
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// The timer thread: handles every shard's due deadline, then sleeps until the earliest one or a wake-up.
async fn run_timers(shards: Weak<Shards>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(shards) = shards.upgrade() else { return };
            if shards.stopping.load(Ordering::Relaxed) {
                return;
            }
            let mut next: Option<Instant> = None;
            for shard in 0..shards.len() {
                let mut st = shards.lock(shard);
                let at = now();
                if st.hub.poll_timeout().is_some_and(|due| due <= at.instant) {
                    st.hub.handle_timeout(at);
                    shards.route(&mut st);
                    shards.settle(&mut st);
                }
                st.armed = st.hub.poll_timeout();
                next = match (next, st.armed) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            next
        };
        tokio::select! {
            _ = sleep_until(next) => {}
            _ = wake.notified() => {}
        }
    }
}

thread_local! {
    /// The server's worker this thread is, once it said so ([`set_worker`]).
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Called on a server worker thread as it starts: its sockets' home shard is then the shard of the same index, the
/// one whose hub task runs on this thread with `cluster.hub_on_workers`.
pub(crate) fn set_worker(index: usize) {
    WORKER.with(|worker| worker.set(Some(index)));
}

/// The server's worker the calling thread is, if it is one.
pub(crate) fn worker() -> Option<usize> {
    WORKER.with(std::cell::Cell::get)
}

/// The shard of the calling thread among `count`: a worker's own index, else each thread that serves sockets gets
/// its own, in turn.
pub(crate) fn home(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    let index = WORKER
        .with(std::cell::Cell::get)
        .unwrap_or_else(|| HOME.with(|home| *home));
    index % count.max(1)
}

/// A socket refused because its address holds `signal.max_connections_per_ip` sockets; said in the log at most once
/// a minute. The refused user gets a 429; without the line the operator would see only a counter, and twenty sockets
/// is few for an office or a carrier NAT, where every user arrives from one address.
fn too_many(source: Source, max: usize) -> Refusal {
    static SOURCE_FULL: source::ThrottledLog = source::ThrottledLog::new(60);
    if let Some(held_back) = SOURCE_FULL.due() {
        tracing::warn!(
            %source,
            max,
            held_back,
            "signaling socket refused (429 too-many-connections): its address holds signal.max_connections_per_ip \
             sockets. If many users share that address (an office, a carrier NAT), raise it. (Said at most once a \
             minute.)"
        );
    }
    Refusal::new(
        ErrorCode::TooManyConnections,
        format!("Too many sockets from {source} (at most {max}); close some or retry later."),
    )
}

pub(crate) fn add_stats(total: &mut HubStats, s: HubStats) {
    total.connections += s.connections;
    total.sessions += s.sessions;
    total.rooms += s.rooms;
    total.relayed += s.relayed;
    total.held_bytes += s.held_bytes;
    total.held_sources += s.held_sources;
    total.refused += s.refused;
    total.sessions_in_grace += s.sessions_in_grace;
    total.replay_frames += s.replay_frames;
    total.resumes += s.resumes;
    total.outcomes_refused += s.outcomes_refused;
    for (k, v) in s.messages {
        *total.messages.entry(k).or_default() += v;
    }
    for (k, v) in s.errors {
        *total.errors.entry(k).or_default() += v;
    }
    for (k, v) in s.closes {
        *total.closes.entry(k).or_default() += v;
    }
    for (k, v) in s.undeliverable {
        *total.undeliverable.entry(k).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::ToSocket;
    use crate::outbox::QueueBudget;
    use rand::SeedableRng;

    fn shards(count: usize, limits: &Limits) -> Arc<Shards> {
        Shards::new(count, limits, Arc::new(Outcomes::new()), |limits| {
            let ice: signal::IceServerSource =
                Box::new(|_, _| serde_json::value::to_raw_value(&[0u8; 0]).unwrap_or_default());
            MemoryHub::new(limits, None, ice, rand::rngs::StdRng::seed_from_u64(7), Instant::now())
        })
    }

    fn socket(shards: &Shards, n: u64, ip: &str) -> Result<(Seat, Arc<Outbox>), Refusal> {
        let budget = Arc::new(QueueBudget::new(1000, 1 << 20, 1 << 20, 1 << 20, 1 << 16));
        let outbox = Arc::new(Outbox::new(budget));
        let ip: IpAddr = ip.parse().map_err(|_| shutting_down())?;
        shards
            .connect(ConnId::new(n), ip, outbox.clone())
            .map(|seat| (seat, outbox))
    }

    /// Every frame queued for a socket, as JSON.
    fn frames(outbox: &Outbox) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(Some(ToSocket::Text(text))) = outbox.try_pop() {
            out.push(serde_json::from_slice(&text).unwrap_or_default());
        }
        out
    }

    fn joined_peer(outbox: &Outbox) -> String {
        let joined = frames(outbox).into_iter().find(|f| f["type"] == "joined");
        joined
            .and_then(|f| f["peerId"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Two rooms whose names hash to different shards.
    fn rooms_on_two_shards(shards: &Shards) -> (String, String) {
        let first = "room-0".to_owned();
        let other = (1..1000)
            .map(|i| format!("room-{i}"))
            .find(|r| shards.room_shard(r) != shards.room_shard(&first))
            .unwrap_or_default();
        (first, other)
    }

    #[test]
    fn a_socket_moves_to_its_rooms_shard_and_signals_reach_the_room() {
        let shards = shards(2, &Limits::default());
        let (room, other_room) = rooms_on_two_shards(&shards);
        let (mut a, a_out) = socket(&shards, 1, "192.0.2.1").unwrap();
        let (mut b, b_out) = socket(&shards, 2, "192.0.2.2").unwrap();
        // Both start in this thread's home shard; one of the rooms is elsewhere.
        assert_eq!(a.shard, b.shard);
        let far = if shards.room_shard(&room) == a.shard {
            &other_room
        } else {
            &room
        };
        shards.text(&mut a, &format!(r#"{{"type":"join","room":"{far}"}}"#));
        shards.text(&mut b, &format!(r#"{{"type":"join","room":"{far}"}}"#));
        assert_eq!((a.shard, b.shard), (shards.room_shard(far), shards.room_shard(far)));
        assert!(a.joined && b.joined);
        let a_peer = joined_peer(&a_out);
        let b_peer = joined_peer(&b_out);
        frames(&a_out);
        for i in 0..3 {
            shards.text(
                &mut a,
                &format!(r#"{{"type":"signal","to":"{b_peer}","data":{{"n":{i}}}}}"#),
            );
        }
        let got: Vec<_> = frames(&b_out).into_iter().filter(|f| f["type"] == "signal").collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, f)| f["data"]["n"] == i && f["from"] == a_peer.as_str()));
        let stats = shards.stats();
        assert_eq!((stats.connections, stats.sessions, stats.rooms), (2, 2, 1));
        shards.closed(a);
        shards.closed(b);
        assert_eq!(shards.stats().connections, 0);
    }

    #[test]
    fn the_room_limit_holds_over_every_shard() {
        let limits = Limits {
            max_rooms: 1,
            ..Limits::default()
        };
        let shards = shards(2, &limits);
        let (room, other_room) = rooms_on_two_shards(&shards);
        let (mut a, _a_out) = socket(&shards, 1, "192.0.2.1").unwrap();
        let (mut b, b_out) = socket(&shards, 2, "192.0.2.2").unwrap();
        shards.text(&mut a, &format!(r#"{{"type":"join","room":"{room}"}}"#));
        assert!(a.joined);
        assert_eq!(
            shards.check_join(&other_room, None).map_err(|r| r.code),
            Err(ErrorCode::TooManyRooms)
        );
        shards.text(&mut b, &format!(r#"{{"type":"join","room":"{other_room}"}}"#));
        assert!(!b.joined);
        let codes: Vec<_> = frames(&b_out).into_iter().map(|f| f["code"].clone()).collect();
        assert!(codes.contains(&serde_json::json!("too-many-rooms")), "{codes:?}");
        assert!(
            shards.check_join(&room, None).is_ok(),
            "an existing room is not a new one"
        );
        // The first room ends with its socket: the other shard may now hold one.
        shards.text(&mut a, r#"{"type":"leave"}"#);
        shards.closed(a);
        assert_eq!(shards.rooms.load(Ordering::Relaxed), 0);
        // `too-many-rooms` closed b; another socket gets the room.
        let (mut c, _) = socket(&shards, 3, "192.0.2.3").unwrap();
        shards.text(&mut c, &format!(r#"{{"type":"join","room":"{other_room}"}}"#));
        assert!(c.joined);
        assert_eq!(shards.rooms.load(Ordering::Relaxed), 1);
    }

    /// At the room limit less one, joins to an existing room on one shard, racing new rooms made and ended on the
    /// other, never take the free room: each new room is joined.
    #[test]
    fn joins_to_an_existing_room_reserve_no_room_of_the_limit() {
        let limits = Limits {
            max_rooms: 2,
            ..Limits::default()
        };
        let shards = shards(2, &limits);
        let (room, other_room) = rooms_on_two_shards(&shards);
        let (mut keeper, _) = socket(&shards, 1, "192.0.2.1").unwrap();
        shards.text(&mut keeper, &format!(r#"{{"type":"join","room":"{room}"}}"#));
        assert!(keeper.joined);
        const ROUNDS: u64 = 3000;
        let joiners = {
            let shards = shards.clone();
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    let (mut s, _) = socket(&shards, 100_000 + i, "192.0.2.2").unwrap();
                    shards.text(&mut s, &format!(r#"{{"type":"join","room":"{room}"}}"#));
                    assert!(s.joined, "join {i} to the existing room");
                    shards.text(&mut s, r#"{"type":"leave"}"#);
                    shards.closed(s);
                }
            })
        };
        let mut refused = 0;
        for i in 0..ROUNDS {
            let (mut s, _) = socket(&shards, 200_000 + i, "192.0.2.3").unwrap();
            shards.text(&mut s, &format!(r#"{{"type":"join","room":"{other_room}"}}"#));
            refused += u64::from(!s.joined);
            shards.text(&mut s, r#"{"type":"leave"}"#);
            shards.closed(s);
        }
        joiners.join().expect("joiners");
        assert_eq!(refused, 0, "new rooms refused while a room was free");
        assert_eq!(shards.rooms.load(Ordering::Relaxed), 1);
    }

    /// The sessions of a source's dropped sockets wait for a resume up to the number of sockets the source may hold:
    /// past it, a dropped socket's session ends at once (its room with it when it was alone), so a source that drops
    /// joined sockets one after another cannot hold more rooms than that. Its socket slots are given back at once,
    /// so a dropped client can always come back to resume.
    #[test]
    fn sessions_waiting_for_a_resume_are_counted_per_source() {
        let limits = Limits {
            max_connections_per_ip: 2,
            resume_grace: std::time::Duration::from_millis(500),
            ..Limits::default()
        };
        let shards = shards(2, &limits);
        let ip = "192.0.2.1";
        let mut sessions = Vec::new();
        for i in 0..3 {
            let (mut s, out) = socket(&shards, i, ip).expect("a slot given back at once");
            shards.text(&mut s, &format!(r#"{{"type":"join","room":"room-{i}"}}"#));
            assert!(s.joined);
            let joined = frames(&out)
                .into_iter()
                .find(|f| f["type"] == "joined")
                .unwrap_or_default();
            sessions.push(joined["session"].as_str().unwrap_or_default().to_owned());
            shards.closed(s);
        }
        // Two wait; the third ended with its socket, and its room with it.
        let stats = shards.stats();
        assert_eq!((stats.sessions, stats.rooms), (2, 2), "{stats:?}");
        // A waiting one resumes (the source may connect: slots are not held by waiting sessions).
        let (mut back, out) = socket(&shards, 10, ip).expect("a slot to resume");
        shards.text(
            &mut back,
            &format!(r#"{{"type":"resume","session":"{}","lastSeq":0}}"#, sessions[0]),
        );
        assert!(
            frames(&out).iter().any(|f| f["type"] == "resumed"),
            "the first session resumes"
        );
        shards.closed(back);
        // Past the grace the count is back to zero, and a dropped session waits again.
        std::thread::sleep(std::time::Duration::from_millis(600));
        let (mut s, out) = socket(&shards, 11, ip).expect("a slot");
        shards.text(&mut s, r#"{"type":"join","room":"later"}"#);
        let joined = frames(&out)
            .into_iter()
            .find(|f| f["type"] == "joined")
            .unwrap_or_default();
        shards.closed(s);
        let (mut back, out) = socket(&shards, 13, ip).expect("a slot to resume");
        let session = joined["session"].as_str().unwrap_or_default();
        shards.text(
            &mut back,
            &format!(r#"{{"type":"resume","session":"{session}","lastSeq":0}}"#),
        );
        assert!(
            frames(&out).iter().any(|f| f["type"] == "resumed"),
            "the later session waited"
        );
        shards.closed(back);
        // Another source has its own count.
        let (mut other, _) = socket(&shards, 12, "192.0.2.2").expect("another source");
        shards.text(&mut other, r#"{"type":"join","room":"other"}"#);
        shards.closed(other);
    }

    #[test]
    fn sockets_per_source_are_counted_over_every_shard() {
        let limits = Limits {
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let shards = shards(2, &limits);
        let (room, other_room) = rooms_on_two_shards(&shards);
        let (mut a, _) = socket(&shards, 1, "192.0.2.1").unwrap();
        let (mut b, _) = socket(&shards, 2, "192.0.2.1").unwrap();
        shards.text(&mut a, &format!(r#"{{"type":"join","room":"{room}"}}"#));
        shards.text(&mut b, &format!(r#"{{"type":"join","room":"{other_room}"}}"#));
        assert_ne!(a.shard, b.shard);
        let refused = socket(&shards, 3, "192.0.2.1").map(|_| ()).map_err(|r| r.code);
        assert_eq!(refused, Err(ErrorCode::TooManyConnections));
        assert!(shards.check_connect("192.0.2.1".parse().unwrap()).is_err());
        assert!(
            socket(&shards, 4, "192.0.2.9").is_ok(),
            "another source is not affected"
        );
        shards.closed(a);
        assert!(socket(&shards, 5, "192.0.2.1").is_ok());
    }

    #[test]
    fn a_resume_finds_the_session_in_its_shard() {
        let shards = shards(2, &Limits::default());
        let (room, other_room) = rooms_on_two_shards(&shards);
        let (mut a, a_out) = socket(&shards, 1, "192.0.2.1").unwrap();
        let far = if shards.room_shard(&room) == a.shard {
            &other_room
        } else {
            &room
        };
        shards.text(&mut a, &format!(r#"{{"type":"join","room":"{far}"}}"#));
        let session = frames(&a_out)
            .into_iter()
            .find_map(|f| f["session"].as_str().map(str::to_owned))
            .unwrap_or_default();
        shards.closed(a);
        let (mut again, again_out) = socket(&shards, 2, "192.0.2.1").unwrap();
        assert_ne!(again.shard, shards.room_shard(far));
        shards.text(
            &mut again,
            &format!(r#"{{"type":"resume","session":"{session}","lastSeq":0}}"#),
        );
        assert!(again.joined);
        assert_eq!(again.shard, shards.room_shard(far));
        let types: Vec<_> = frames(&again_out).into_iter().map(|f| f["type"].clone()).collect();
        assert_eq!(types.first(), Some(&serde_json::json!("resumed")), "{types:?}");
    }
}
