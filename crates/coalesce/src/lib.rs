//! Wake-up coalescing: a worker that runs out of work while traffic keeps arriving waits a moment before it sleeps,
//! so that its next wake-up finds a batch instead of one event.
//!
//! Why: under a steady stream of signaling messages, each one otherwise costs a whole cycle of its own — the worker
//! blocks in `epoll_wait`, the kernel wakes it for one socket, one `recv`, one `send`, block again — and at 50 000
//! signals/s that cycle is most of the server's CPU (`perf`: a context switch, an `epoll_wait`, a `recvfrom` and a
//! `sendto` per signal). Waiting ~200 µs first (longer for a busier worker, up to 1 ms: `nap_after`) lets events
//! pile up: one `epoll_wait` returns many sockets, one read brings several frames, one write carries every frame
//! queued for a peer, and far fewer context switches happen
//! (`docs/benchmarks.md`, "idle sockets at 2.2 KB, wake-up coalescing"). The same trade as a NIC's interrupt
//! moderation: at most the nap of added latency, and only while busy.
//!
//! When: only if the worker's last sleep was short (under twice the nap), i.e. events arrive faster than one per
//! nap; only if three different sockets or more read or wrote bytes on this worker in the last 10 ms
//! ([`socket_io`]), i.e. messages are moving side by side; and only if it took no UDP datagram in the last 50 ms
//! ([`datagrams_handled`]). How long: six times the work of the wake-up that ends, from the configured nap up to
//! five times it (`nap_after`); with `--redis`, whose hub works on a thread of its own, always the configured nap
//! ([`Naps::fixed`]).
//!
//! The second rule spares a *chain* its nap: one signal in flight between two peers, each answering what it is sent
//! (offer, answer, candidates), keeps the worker busy with one read and one write at a time on the same two sockets, and a nap
//! there only adds itself to every hop (with clients on loopback answering within ~30 µs, 37 µs per hop became 229
//! µs in `traverse-cluster-bench`). Counts per wake-up cannot tell a chain from a loaded server: three rules built on
//! them (reads per wake-up; reads and writes in the wake-up after a nap; their running average) each lost the whole
//! gain under load, because a loaded worker also does one or two reads per wake-up until naps start gathering them.
//! *Which* sockets do I/O can: a loaded worker serves many within a few milliseconds, a chain only its two.
//!
//! A worker busy relaying UDP takes none of those naps, but one of its own (`relay.coalesce_us`, 400 µs by default:
//! [`Naps::relaying`]) and only where it pays ([`RelayNaps`]): while datagrams arrive one per wake-up, fast enough
//! for a nap to gather several. Then each would cost a wake-up, which on this VM is most of a packet's CPU, and a
//! nap lets one `epoll_wait` serve many (0.74–0.77x the CPU per packet with smooth arrivals, for 0.7–1.1 ms more
//! round trip through two relay hops). On the ring (`relay.io_uring`) each datagram that arrives during a nap still
//! wakes the worker to finish its receive, so the nap saves less there. With bursts, wake-ups already take
//! batches and it sleeps at once; when traffic is sparse it sleeps at once too, and an event is handled the moment
//! it arrives. Naps that gather nothing (a chain of requests, each waiting for the last answer) stop for a while, and
//! so do naps that cost more CPU per datagram than none, as they did at 5 000 echoes/s on another VM, where a
//! wake-up costs less ([`NapCosts`]: the worker reads its own CPU clock where a window of naps begins and ends).
//!
//! A crate of its own because both the TURN workers (`server`) and the WebSocket sockets (`web`) that run on them
//! report to it. Our own ~60 lines on tokio's `on_thread_park` / `on_thread_unpark` hooks: tokio has no such
//! setting, and a busy-poll (the opposite trade: CPU for latency) is not what an operator paying for CPU wants by
//! default.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    /// When this worker last went to sleep (after any nap), and when it last woke.
    static SLEPT_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    static WOKE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// UDP datagrams this worker took since it last went to sleep; and the last sleep after which it had taken any.
    static DATAGRAMS: Cell<u32> = const { Cell::new(0) };
    static DATAGRAMS_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The sockets that read or wrote since this worker last woke (the first [`SIDE_BY_SIDE`] different ones).
    static READERS: Cell<Readers> = const { Cell::new(Readers::new()) };
    /// The last [`SIDE_BY_SIDE`] different sockets that did I/O, each with the end of the last wake-up it did I/O in.
    static RECENT: Cell<Recent> = const { Cell::new(Recent::new()) };
    /// Whether a worker busy relaying naps, and what it saw ([`RelayNaps`]).
    static RELAY: Cell<RelayNaps> = const { Cell::new(RelayNaps::Watching { since: None, wakes: 0, datagrams: 0 }) };
    /// What this worker's datagrams cost with relay naps and without ([`NapCosts`]).
    static COSTS: Cell<NapCosts> = const { Cell::new(NapCosts::new()) };
}

/// Whether a worker busy relaying UDP naps before it sleeps: only where a nap gathers datagrams that would otherwise
/// each cost a wake-up. It watches [`WATCH`] of wake-ups without naps, then naps for [`NAPPING`] if they took under
/// [`ONE_BY_ONE`] datagrams each (arrivals are smooth: each costs a wake-up) and came fast enough for a nap to gather
/// [`PER_NAP`] or more; then watches again, since what it saw while napping is what the naps made. If the naps
/// gathered under [`GATHERED`] datagrams per wake-up, it rests for [`RESTING`] without naps before it watches again.
///
/// Why the rest: a *chain* — one request in flight, each sent when the last was answered, as a client's Allocate,
/// 401, Allocate and ChannelBind are, or a STUN transaction after another — arrives one datagram per wake-up and fast,
/// so it looks like smooth traffic; but its next datagram comes only after the answer, so a nap gathers nothing and
/// only delays every step. Without the rest, 19 000 allocations set up one after another took 15.5 s against 8.0 s
/// without naps (`bench/relay.sh`, `MEMORY_RUNS=19000`); smooth traffic from many clients keeps arriving during a
/// nap, so its naps gather [`PER_NAP`] or more and go on.
///
/// Why not a rule on sleeps alone: with the load generator's bursts (a millisecond's packets at once), wake-ups
/// already take many datagrams each, and a nap only adds a wake-up and its latency; naps on every short sleep cost
/// 1.06–1.15x the CPU per packet there, and naps after 5 ms of sleeps under half a nap still 1.07x for twice the round
/// trip, since a busy worker's sleeps between bursts are short too (`docs/benchmarks.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RelayNaps {
    /// Sleeping at once, counting: since when, wake-ups that took datagrams, and their datagrams.
    Watching {
        since: Option<Instant>,
        wakes: u32,
        datagrams: u32,
    },
    /// Napping before every sleep until `until`, counting what the naps gathered: wake-ups that took datagrams, and
    /// their datagrams.
    Napping { until: Instant, wakes: u32, datagrams: u32 },
    /// Naps gathered too little: sleeping at once until `until`.
    Resting { until: Instant },
}

/// How long a worker watches its wake-ups before it decides.
const WATCH: Duration = Duration::from_millis(2);
/// How long it naps before it watches again: it spends a tenth as long watching, without naps.
const NAPPING: Duration = Duration::from_millis(20);
/// Wake-ups that take fewer datagrams than this on average, each: arrivals one by one.
const ONE_BY_ONE: u32 = 4;
/// Datagrams a nap must be expected to gather, at the rate watched: fewer, and it saves too little for its latency.
const PER_NAP: u64 = 4;
/// Datagrams per wake-up that naps must have gathered to go on (half what they were expected to): fewer, and the
/// traffic waits for the worker's answers (a chain), so napping only slows it.
const GATHERED: u32 = 2;
/// How long a worker whose naps gathered too little sleeps at once before it watches again: it naps at most
/// [`NAPPING`] out of every [`WATCH`] + [`NAPPING`] + this, so a chain slows by under 5 %.
const RESTING: Duration = Duration::from_millis(500);

impl RelayNaps {
    /// A wake-up that took `datagrams` ends at `now`: the next state, and whether to nap `nap` first. `pays`: whether
    /// naps have cost less CPU per datagram than no naps ([`NapCosts::naps_pay`]); if not, napping ends in a rest.
    fn before_sleep(self, now: Instant, datagrams: u32, nap: Duration, pays: bool) -> (Self, bool) {
        let watch = |since| RelayNaps::Watching {
            since: Some(since),
            wakes: 0,
            datagrams: 0,
        };
        if nap.is_zero() {
            return (self, false);
        }
        match self {
            RelayNaps::Napping {
                until,
                wakes,
                datagrams: gathered,
            } if now < until => {
                let (wakes, gathered) = tally(wakes, gathered, datagrams);
                let napping = RelayNaps::Napping {
                    until,
                    wakes,
                    datagrams: gathered,
                };
                (napping, true)
            }
            RelayNaps::Napping {
                wakes,
                datagrams: gathered,
                ..
            } if !pays || gathered < wakes.saturating_mul(GATHERED) => {
                (RelayNaps::Resting { until: now + RESTING }, false)
            }
            RelayNaps::Napping { .. } => (watch(now), false),
            RelayNaps::Resting { until } if now < until => (self, false),
            RelayNaps::Resting { .. } => (watch(now), false),
            RelayNaps::Watching { since: None, .. } => (watch(now), false),
            RelayNaps::Watching {
                since: Some(since),
                wakes,
                datagrams: seen,
            } => {
                let (wakes, seen) = tally(wakes, seen, datagrams);
                let watched = now.saturating_duration_since(since);
                if watched < WATCH {
                    return (
                        RelayNaps::Watching {
                            since: Some(since),
                            wakes,
                            datagrams: seen,
                        },
                        false,
                    );
                }
                let one_by_one = wakes > 0 && seen < wakes.saturating_mul(ONE_BY_ONE);
                // Datagrams per nap at the rate watched: seen × nap / watched, in integers.
                let per_nap = u128::from(seen) * nap.as_nanos() / watched.as_nanos().max(1);
                if one_by_one && per_nap >= u128::from(PER_NAP) {
                    let napping = RelayNaps::Napping {
                        until: now + NAPPING,
                        wakes: 0,
                        datagrams: 0,
                    };
                    (napping, true)
                } else {
                    (watch(now), false)
                }
            }
        }
    }
}

/// Wake-ups that took datagrams and their datagrams, counting one more wake-up that took `datagrams` (one that took
/// none — a timer's — does not count).
fn tally(wakes: u32, seen: u32, datagrams: u32) -> (u32, u32) {
    if datagrams > 0 {
        (wakes.saturating_add(1), seen.saturating_add(datagrams))
    } else {
        (wakes, seen)
    }
}

/// What a worker's datagrams cost in CPU with relay naps and without, so that it naps only where naps pay on the
/// machine it runs on. Why: a nap trades latency for fewer wake-ups, and what a wake-up costs depends on the host. On
/// one VM naps took the CPU per packet to 0.71–0.77x for ~0.5 ms more round trip; on another, at 5 000 echoes/s,
/// they took it to 1.22x, and saved only 11–21 % at 10 000–20 000/s (`docs/benchmarks.md`). Counting datagrams per
/// wake-up cannot tell these apart; the worker's own CPU clock can.
///
/// The clock (`CLOCK_THREAD_CPUTIME_ID`, the thread's user and kernel time) is read only where a window of naps
/// starts or ends, so a few hundred times a second at most, never per datagram. The windows between are tallied as
/// napping or plain (watching and resting), each tally kept to about the last [`KEEP`] datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NapCosts {
    /// The CPU clock where the current window began (none before the first read), and its datagrams so far.
    window_cpu: Option<Duration>,
    window_datagrams: u64,
    plain: Tally,
    napping: Tally,
}

/// CPU time and the datagrams it served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    cpu_ns: u64,
    datagrams: u64,
}

/// Datagrams a tally keeps (older ones weigh less: both halves are halved past this).
const KEEP: u64 = 20_000;
/// Datagrams each tally needs before the comparison counts; until then naps follow [`RelayNaps`] alone.
const KNOWN: u64 = 200;
/// Naps go on only while a datagram costs at most this percentage of its CPU without them. 100: any saving. With 90
/// and 95 the measurement's own spread (windows of a few hundred datagrams on a noisy VM) stopped naps that saved
/// 5–10 % in many windows, each time for a [`RESTING`]; with 100 the worker was never dearer than with the
/// count-only rule (0.90–1.01x its CPU per packet, `docs/benchmarks.md`).
const PAYS_PERCENT: u128 = 100;

impl Tally {
    fn add(&mut self, cpu: Duration, datagrams: u64) {
        if datagrams == 0 {
            return;
        }
        self.cpu_ns = self
            .cpu_ns
            .saturating_add(u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX));
        self.datagrams = self.datagrams.saturating_add(datagrams);
        while self.datagrams > KEEP {
            self.cpu_ns /= 2;
            self.datagrams /= 2;
        }
    }
}

impl NapCosts {
    const fn new() -> Self {
        Self {
            window_cpu: None,
            window_datagrams: 0,
            plain: Tally {
                cpu_ns: 0,
                datagrams: 0,
            },
            napping: Tally {
                cpu_ns: 0,
                datagrams: 0,
            },
        }
    }

    /// Whether naps have paid: true until both tallies are known.
    fn naps_pay(&self) -> bool {
        let (plain, napping) = (self.plain, self.napping);
        if plain.datagrams < KNOWN || napping.datagrams < KNOWN {
            return true;
        }
        // napping.cpu / napping.datagrams <= PAYS_PERCENT % of plain.cpu / plain.datagrams, in integers.
        u128::from(napping.cpu_ns) * u128::from(plain.datagrams) * 100
            <= PAYS_PERCENT * u128::from(plain.cpu_ns) * u128::from(napping.datagrams)
    }

    /// The window that ends at CPU clock `cpu` was napping or plain: tallied, and the next one begins.
    fn close(&mut self, napping: bool, cpu: Duration) {
        if let Some(start) = self.window_cpu {
            let tally = if napping { &mut self.napping } else { &mut self.plain };
            tally.add(cpu.saturating_sub(start), self.window_datagrams);
        }
        self.window_cpu = Some(cpu);
        self.window_datagrams = 0;
    }

    /// The current window is not tallied: the next clock read only starts one. For a pause in relaying, whose CPU
    /// (signaling's work, say) would otherwise be charged to the few datagrams around it.
    fn forget_window(&mut self) {
        self.window_cpu = None;
        self.window_datagrams = 0;
    }

    /// [`RelayNaps::before_sleep`], with the windows of naps measured: `cpu` reads the worker's CPU clock, and is
    /// called only where a window of naps begins or ends.
    fn before_sleep(
        &mut self,
        state: RelayNaps,
        now: Instant,
        datagrams: u32,
        nap: Duration,
        mut cpu: impl FnMut() -> Duration,
    ) -> (RelayNaps, bool) {
        self.window_datagrams = self.window_datagrams.saturating_add(u64::from(datagrams));
        let was_napping = matches!(state, RelayNaps::Napping { .. });
        if matches!(state, RelayNaps::Napping { until, .. } if now >= until) {
            self.close(true, cpu());
        }
        let (next, napped) = state.before_sleep(now, datagrams, nap, self.naps_pay());
        if !was_napping && matches!(next, RelayNaps::Napping { .. }) {
            self.close(false, cpu());
        }
        (next, napped)
    }
}

/// The calling thread's CPU time, user and kernel.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Sockets with bytes within [`WINDOW`] of each other on one worker, from this many up: messages side by side.
const SIDE_BY_SIDE: usize = 3;

/// How far back [`RECENT`] looks: many wake-ups of a loaded worker. With 1 ms, a fifth of a flat-out worker's
/// busy wake-ups found fewer than three sockets in it and slept without a nap (0.75–0.79 CPU-s per 100k signals
/// against 0.62–0.73 for the rule without it); with 10 ms none did. A chain has its two sockets however far back.
const WINDOW: Duration = Duration::from_millis(10);

/// A worker that took UDP datagrams this recently does not nap: it is relaying, and a wake-up without datagrams
/// among its wake-ups with them is no sign that signaling is what keeps it busy.
const RELAYING: Duration = Duration::from_millis(50);

/// The worker took `n` UDP datagrams from a socket (a relay socket or a listener): it does not take signaling's naps
/// for a while, and the count tells [`RelayNaps`] whether datagrams come one per wake-up. A thread-local add, no clock
/// read, on the relay's path; the time is taken when the worker next goes to sleep.
pub fn datagrams_handled(n: usize) {
    DATAGRAMS.set(DATAGRAMS.get().saturating_add(u32::try_from(n).unwrap_or(u32::MAX)));
}

/// A stream socket served by this worker (a WebSocket) read or wrote bytes; `socket` tells it from the others (its
/// task's address serves). No clock is read here: the wake-up's end stamps every socket it saw.
pub fn socket_io(socket: usize) {
    let mut readers = READERS.get();
    readers.add(socket);
    READERS.set(readers);
}

/// Different sockets seen in one wake-up (no more are needed).
#[derive(Clone, Copy)]
struct Readers {
    ids: [usize; SIDE_BY_SIDE],
    len: usize,
}

impl Readers {
    const fn new() -> Self {
        Self {
            ids: [0; SIDE_BY_SIDE],
            len: 0,
        }
    }

    fn add(&mut self, socket: usize) {
        let seen = self.ids.iter().take(self.len).any(|&id| id == socket);
        if let (false, Some(slot)) = (seen, self.ids.get_mut(self.len)) {
            *slot = socket;
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.ids.iter().take(self.len).copied()
    }
}

/// The last different sockets to do I/O, with when.
#[derive(Clone, Copy)]
struct Recent([Option<(usize, Instant)>; SIDE_BY_SIDE]);

impl Recent {
    const fn new() -> Self {
        Self([None; SIDE_BY_SIDE])
    }

    /// `socket` did I/O in the wake-up ending at `at`: it replaces its own entry, or the oldest.
    fn saw(&mut self, socket: usize, at: Instant) {
        let slot = match self.0.iter().position(|e| e.is_some_and(|(id, _)| id == socket)) {
            Some(own) => own,
            None => (0..SIDE_BY_SIDE)
                .min_by_key(|&i| self.0.get(i).copied().flatten().map(|(_, t)| t))
                .unwrap_or(0),
        };
        if let Some(entry) = self.0.get_mut(slot) {
            *entry = Some((socket, at));
        }
    }

    /// Every entry is a different socket that did I/O within [`WINDOW`] before `now`.
    fn side_by_side(&self, now: Instant) -> bool {
        self.0
            .iter()
            .all(|e| e.is_some_and(|(_, t)| now.saturating_duration_since(t) < WINDOW))
    }
}

/// How long a worker naps: `shortest` after a light wake-up, up to `longest` after a heavy one ([`nap_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Naps {
    pub shortest: Duration,
    pub longest: Duration,
    /// The nap of a worker busy relaying UDP ([`Naps::relaying`]); zero: it sleeps at once.
    pub relay: Duration,
}

impl Naps {
    /// From `nap` up to [`LONGEST`] times it, growing with the work: where the hub's work is done on the worker
    /// itself (the in-memory hub, `web::shards`).
    pub fn adaptive(nap: Duration) -> Self {
        Self {
            shortest: nap,
            longest: nap.saturating_mul(LONGEST),
            relay: Duration::ZERO,
        }
    }

    /// Always `nap`: where the hub's work is done on a thread of its own (the cluster's hub task with `--redis`),
    /// so that a worker's work is only its sockets' reads and writes and every signal waits for two workers.
    /// Measured there (`traverse-cluster-bench`, one node, 2 workers, alternated runs): with 80 signals in flight,
    /// fixed naps gave 54 800–64 700 signals/s against 42 600–49 000 growing ones, p50 1.14–1.41 ms against
    /// 1.59–1.85, for 12.5–14.8 µs of CPU per signal against 11.8–14.3; with 1 600 in flight, 85 400–98 800
    /// against 78 800–101 000 signals/s at 7.1–8.5 µs per signal against 6.7–8.6 (the same).
    pub fn fixed(nap: Duration) -> Self {
        Self {
            shortest: nap,
            longest: nap,
            relay: Duration::ZERO,
        }
    }

    /// A worker relaying UDP whose wake-ups take datagrams one by one, fast enough for this nap to gather several
    /// ([`RelayNaps`]), naps this long (always this long, whatever its work) before it sleeps; zero: never.
    pub fn relaying(self, nap: Duration) -> Self {
        Self { relay: nap, ..self }
    }
}

/// Installs coalescing on a worker's runtime; a zero nap leaves it off.
pub fn install(builder: &mut tokio::runtime::Builder, naps: Naps) {
    if naps.shortest.is_zero() && naps.relay.is_zero() {
        return;
    }
    // The nap is a timer: with the default 50 µs of timer slack a 50 µs nap lasts 100. 1 µs of slack for this
    // thread (its own setting, inherited by nothing else that matters here).
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only the calling thread's timer slack.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000_u64) };
    builder
        .on_thread_park(move || before_sleep(naps, Instant::now()))
        .on_thread_unpark(|| WOKE_AT.set(Some(Instant::now())));
}

/// Called when the worker has nothing left to run: naps if its last sleep was short and several sockets are
/// reading side by side, then records when the sleep starts.
fn before_sleep(naps: Naps, now: Instant) {
    let datagrams = DATAGRAMS.replace(0);
    if datagrams > 0 {
        DATAGRAMS_AT.set(Some(now));
    }
    let relaying = DATAGRAMS_AT
        .get()
        .is_some_and(|at| now.saturating_duration_since(at) < RELAYING);
    let mut recent = RECENT.get();
    for socket in READERS.replace(Readers::new()).iter() {
        recent.saw(socket, now);
    }
    RECENT.set(recent);
    let woke_at = WOKE_AT.get();
    let mut costs = COSTS.get();
    if relaying {
        let (relay, nap) = costs.before_sleep(RELAY.get(), now, datagrams, naps.relay, thread_cpu);
        COSTS.set(costs);
        RELAY.set(relay);
        if nap {
            std::thread::sleep(naps.relay);
            SLEPT_AT.set(Some(Instant::now()));
        } else {
            SLEPT_AT.set(Some(now));
        }
        return;
    }
    // Whatever the worker does until it relays again (signaling, or nothing) is neither naps' cost nor theirs.
    if costs.window_cpu.is_some() {
        costs.forget_window();
        COSTS.set(costs);
    }
    if recent.side_by_side(now) && busy(SLEPT_AT.get(), woke_at, naps.shortest) {
        std::thread::sleep(nap_after(naps, woke_at.map(|woke| now.saturating_duration_since(woke))));
        SLEPT_AT.set(Some(Instant::now()));
    } else {
        SLEPT_AT.set(Some(now));
    }
}

/// How long to nap after a wake-up that worked for `worked`: [`LOADED`] times that, from `naps.shortest` (the
/// configured nap) up to `naps.longest` ([`LONGEST`] times it, or the nap itself with `--redis`). A worker busy over a
/// seventh of its time (its work outlasting a sixth of its nap) naps longer, which gathers bigger batches, which makes
/// the next wake-up's work and nap longer still, up to the cap; a worker below settles at the shortest. Why: at 200 µs
/// a flat-out worker still slept and woke ~2 000 times a second, and the naps were 78 % of its context switches and the
/// largest single item of its CPU (`perf`). Flat out (`load.mjs relay`, 100 pairs × 16 in flight, each worker ~25 %
/// busy) the factor 3 stayed within the spread (0.60–0.74 CPU-s per 100k signals, 0.70–0.75 with fixed naps), 6 took it
/// to 0.54–0.56 and 12 to 0.52–0.54; paced at 5 000 signals/s in 5 ms bursts p50 was 0.73–0.78 ms with 3, 0.76–0.82
/// with 6, 0.86–0.94 with 12. The price is latency at a steady middling load: smoothly paced (1 ms ticks) at 20 000
/// signals/s, p50 went from 0.59–0.62 ms to 1.07–1.21 for 13 % less CPU per signal (at 5 000/s, 0.33–0.35 to
/// 0.36–0.38); and with 80 signals in flight between clients on loopback that answer within the nap (a closed loop the
/// nap paces), 55 000 signals/s and p50 1.4 ms against 87 500–97 500 and 0.8–0.9 with fixed naps, at about the same CPU
/// per signal (`docs/benchmarks.md`; the fixed-nap build predates two per-signal savings). The latency a nap adds is
/// bounded by the cap (1 ms by default); `limits.coalesce_us = 0` turns naps off.
fn nap_after(naps: Naps, worked: Option<Duration>) -> Duration {
    let worked = worked.unwrap_or_default();
    (worked * LOADED).clamp(naps.shortest, naps.longest.max(naps.shortest))
}

/// A wake-up's work times this is the next nap (so a worker busy more than 1 / (1 + `LOADED`) of the time naps
/// longer); at most [`LONGEST`] times the configured nap.
const LOADED: u32 = 6;
const LONGEST: u32 = 5;

/// Events arrive faster than one per nap: the last sleep lasted under two naps.
fn busy(slept_at: Option<Instant>, woke_at: Option<Instant>, nap: Duration) -> bool {
    match (slept_at, woke_at) {
        (Some(slept), Some(woke)) => woke.checked_duration_since(slept).is_some_and(|d| d < 2 * nap),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naps_only_after_a_short_sleep() {
        let nap = Duration::from_micros(50);
        let t = Instant::now();
        assert!(!busy(None, None, nap), "the first sleep is not delayed");
        assert!(
            busy(Some(t), Some(t + Duration::from_micros(30)), nap),
            "woken 30 µs after sleeping: busy"
        );
        assert!(
            !busy(Some(t), Some(t + Duration::from_micros(150)), nap),
            "a sleep of three naps: sparse traffic"
        );
        assert!(
            !busy(Some(t + Duration::from_micros(10)), Some(t), nap),
            "a wake-up from before the sleep"
        );
    }

    /// One wake-up of a busy worker (woken 30 µs after its last sleep) that read from `sockets`, ending at `end`:
    /// whether it napped (a nap moves the sleep's start past `end`).
    fn wake_up(sockets: &[usize], start: Instant, end: Instant) -> bool {
        SLEPT_AT.set(Some(start));
        WOKE_AT.set(Some(start + Duration::from_micros(30)));
        for &socket in sockets {
            socket_io(socket);
        }
        before_sleep(Naps::adaptive(Duration::from_micros(100)), end);
        SLEPT_AT.get() != Some(end)
    }

    #[test]
    fn a_chain_between_two_sockets_never_naps() {
        let t = Instant::now();
        // One signal in flight: A reads, then B answers, then A, hop after hop, each wake-up one read.
        for hop in 0..20_u32 {
            let start = t + Duration::from_micros(50) * hop;
            let socket = [0x1000, 0x2000][hop as usize % 2];
            assert!(
                !wake_up(&[socket], start, start + Duration::from_micros(40)),
                "hop {hop} napped"
            );
        }
        // Both in one wake-up: still two sockets.
        assert!(!wake_up(&[0x1000, 0x2000, 0x1000], t, t + Duration::from_millis(2)));
    }

    #[test]
    fn sockets_side_by_side_nap() {
        let t = Instant::now();
        assert!(!wake_up(&[1], t, t + Duration::from_micros(40)), "one socket so far");
        assert!(!wake_up(&[2], t, t + Duration::from_micros(80)), "two sockets so far");
        assert!(
            wake_up(&[3], t, t + Duration::from_micros(120)),
            "a third within the window"
        );
        // Many in one wake-up.
        RECENT.set(Recent::new());
        assert!(wake_up(&[7, 8, 9, 10], t, t + Duration::from_micros(40)));
    }

    #[test]
    fn sockets_further_apart_than_the_window_do_not_count() {
        let t = Instant::now();
        assert!(!wake_up(&[1], t, t + Duration::from_micros(40)));
        assert!(!wake_up(&[2], t, t + Duration::from_micros(80)));
        // The first read is now 10.1 ms old: two sockets in the window.
        assert!(!wake_up(&[3], t, t + Duration::from_micros(10_140)));
        // A relaying worker never naps, side by side or not.
        datagrams_handled(1);
        assert!(!wake_up(&[4, 5, 6], t, t + Duration::from_micros(10_200)));
    }

    #[test]
    fn a_busier_worker_naps_longer_up_to_the_cap() {
        let nap = Naps::adaptive(Duration::from_micros(200));
        let us = Duration::from_micros;
        assert_eq!(nap_after(nap, None), us(200));
        assert_eq!(
            nap_after(nap, Some(us(20))),
            us(200),
            "a light wake-up: the configured nap"
        );
        assert_eq!(nap_after(nap, Some(us(33))), us(200));
        assert_eq!(
            nap_after(nap, Some(us(50))),
            us(300),
            "work beyond a sixth of the nap: longer"
        );
        assert_eq!(nap_after(nap, Some(us(150))), us(900));
        assert_eq!(nap_after(nap, Some(us(5_000))), us(1_000), "never past five naps");
    }

    #[test]
    fn a_fixed_nap_never_grows() {
        let nap = Naps::fixed(Duration::from_micros(200));
        let us = Duration::from_micros;
        assert_eq!(nap_after(nap, Some(us(20))), us(200));
        assert_eq!(nap_after(nap, Some(us(5_000))), us(200), "however long the work");
    }

    #[test]
    fn a_loaded_worker_naps_for_six_times_its_work() {
        let now = Instant::now();
        let (Some(woke), Some(slept)) = (
            now.checked_sub(Duration::from_micros(60)),
            now.checked_sub(Duration::from_micros(65)),
        ) else {
            return; // a clock this close to its origin cannot be set back; nothing to check
        };
        RECENT.set(Recent::new());
        SLEPT_AT.set(Some(slept));
        WOKE_AT.set(Some(woke));
        for socket in [1, 2, 3] {
            socket_io(socket);
        }
        // 60 µs of work against a 10 µs nap: a 50 µs nap (the cap), not 10; seen in when the sleep starts.
        before_sleep(Naps::adaptive(Duration::from_micros(10)), now);
        let napped = SLEPT_AT.get().map(|at| at.saturating_duration_since(now));
        assert!(napped >= Some(Duration::from_micros(50)), "napped {napped:?}");
    }

    const US: fn(u64) -> Duration = Duration::from_micros;

    /// `count` wake-ups `every` apart from `at`, each taking `datagrams`: whether each napped `nap`.
    fn wake_ups(
        state: &mut RelayNaps,
        at: &mut Instant,
        count: usize,
        every: Duration,
        datagrams: u32,
        nap: Duration,
    ) -> Vec<bool> {
        (0..count)
            .map(|_| {
                *at += every;
                let (next, napped) = state.before_sleep(*at, datagrams, nap, true);
                *state = next;
                napped
            })
            .collect()
    }

    #[test]
    fn datagrams_one_by_one_and_fast_enough_bring_naps() {
        let nap = US(400);
        let mut state = RELAY.get();
        let mut at = Instant::now();
        // One datagram per wake-up, every 25 µs: 16 to a nap. The first 2 ms are watched without naps.
        let first = wake_ups(&mut state, &mut at, 79, US(25), 1, nap);
        assert!(first.iter().all(|&n| !n), "napped while watching");
        assert!(
            wake_ups(&mut state, &mut at, 2, US(25), 1, nap).contains(&true),
            "2 ms watched"
        );
        // Napping now (each wake-up after a nap takes many): naps for 20 ms whatever it sees, then watches again.
        let napping = wake_ups(&mut state, &mut at, 49, US(400), 16, nap);
        assert!(napping.iter().all(|&n| n), "{napping:?}");
        assert_eq!(
            wake_ups(&mut state, &mut at, 1, US(400), 16, nap),
            [false],
            "20 ms napped"
        );
        assert!(matches!(state, RelayNaps::Watching { wakes: 0, .. }), "{state:?}");
    }

    #[test]
    fn naps_that_gather_nothing_stop_for_a_rest() {
        let nap = US(400);
        let mut state = RELAY.get();
        let mut at = Instant::now();
        // A chain: one datagram per wake-up, every 25 µs while nothing delays it, so naps start after 2 ms watched.
        wake_ups(&mut state, &mut at, 81, US(25), 1, nap);
        assert!(matches!(state, RelayNaps::Napping { .. }), "{state:?}");
        // Its next datagram waits for the answer, so each nap gathers one: 20 ms of that, then a rest without naps.
        let napping = wake_ups(&mut state, &mut at, 46, US(430), 1, nap);
        assert!(napping.iter().all(|&n| n), "{napping:?}");
        assert_eq!(
            wake_ups(&mut state, &mut at, 1, US(430), 1, nap),
            [false],
            "20 ms napped"
        );
        assert!(matches!(state, RelayNaps::Resting { .. }), "{state:?}");
        let resting = wake_ups(&mut state, &mut at, 19_000, US(25), 1, nap);
        assert!(resting.iter().all(|&n| !n), "napped while resting");
        // After 500 ms it watches again (and would nap again, to find out whether naps now gather).
        let after = wake_ups(&mut state, &mut at, 2_000, US(25), 1, nap);
        assert!(after.contains(&true), "never watched again after the rest");
    }

    /// Smooth arrivals (one datagram per wake-up every 25 µs; 16 per wake-up after a 400 µs nap) for `ms`, where a
    /// datagram costs `plain_ns` of CPU without naps and `napping_ns` with them: the share of the last half of the
    /// time spent napping, and whether the worker ever rested.
    fn smooth_with_costs(plain_ns: u64, napping_ns: u64, ms: u64) -> (f64, bool) {
        let mut costs = NapCosts::new();
        let mut state = RelayNaps::Watching {
            since: None,
            wakes: 0,
            datagrams: 0,
        };
        let start = Instant::now();
        let (mut at, mut cpu) = (start, 0u64);
        let (mut napping_late, mut late, mut rested) = (Duration::ZERO, Duration::ZERO, false);
        while at < start + Duration::from_millis(ms) {
            let napping = matches!(state, RelayNaps::Napping { .. });
            let (every, datagrams, cost) = if napping {
                (US(400), 16, napping_ns)
            } else {
                (US(25), 1, plain_ns)
            };
            at += every;
            cpu += u64::from(datagrams) * cost;
            if at >= start + Duration::from_millis(ms / 2) {
                late += every;
                if napping {
                    napping_late += every;
                }
            }
            let (next, _) = costs.before_sleep(state, at, datagrams, US(400), || Duration::from_nanos(cpu));
            rested |= matches!(next, RelayNaps::Resting { .. });
            state = next;
        }
        (napping_late.as_secs_f64() / late.as_secs_f64(), rested)
    }

    #[test]
    fn naps_go_on_only_where_they_cost_less_cpu_per_datagram() {
        // A host where a wake-up is dear: 5 µs a datagram one by one, 2 µs in a nap's batch. Naps go on.
        let (share, rested) = smooth_with_costs(5_000, 2_000, 4_000);
        assert!(
            !rested && share > 0.8,
            "naps that pay stopped: {share:.2} of the time napping"
        );
        // A host where naps save 5 %: they go on.
        let (share, rested) = smooth_with_costs(5_000, 4_750, 4_000);
        assert!(
            !rested && share > 0.8,
            "naps that save 5 % stopped: {share:.2} of the time napping"
        );
        // Naps that cost more than none (seen at 5 000 echoes/s on one VM) stop, but for a 20 ms try every 500 ms, to
        // see whether that changed.
        let (share, rested) = smooth_with_costs(5_000, 6_000, 4_000);
        assert!(
            rested && share < 0.06,
            "naps that cost more went on: {share:.2} of the time napping"
        );
    }

    #[test]
    fn a_pause_in_relaying_is_charged_to_neither_tally() {
        let naps = Naps::adaptive(Duration::ZERO).relaying(US(400));
        let Some(start) = Instant::now().checked_sub(Duration::from_secs(1)) else {
            return; // a clock this close to its origin cannot be set back; nothing to check
        };
        let mut costs = NapCosts::new();
        costs.close(false, Duration::from_millis(1));
        costs.window_datagrams = 10;
        COSTS.set(costs);
        DATAGRAMS_AT.set(Some(start));
        // 100 ms after the last datagram: not relaying. The window open since then is dropped, tallied nowhere.
        before_sleep(naps, start + Duration::from_millis(100));
        let after = COSTS.get();
        assert_eq!((after.window_cpu, after.window_datagrams), (None, 0));
        assert_eq!((after.plain, after.napping), (Tally::default(), Tally::default()));
        // The first window after the pause only starts at its first clock read.
        let mut costs = after;
        costs.close(true, Duration::from_secs(3));
        assert_eq!(costs.napping, Tally::default());
        assert_eq!(costs.window_cpu, Some(Duration::from_secs(3)));
    }

    #[test]
    fn nap_costs_are_tallied_per_window_and_forget_slowly() {
        let mut costs = NapCosts::new();
        assert!(costs.naps_pay(), "unknown: naps by counts alone");
        costs.close(false, Duration::from_millis(1)); // the first read only starts a window
        assert_eq!(costs.plain, Tally::default());
        costs.window_datagrams = 1_000;
        costs.close(false, Duration::from_millis(6));
        assert_eq!(
            costs.plain,
            Tally {
                cpu_ns: 5_000_000,
                datagrams: 1_000
            }
        );
        costs.window_datagrams = 100;
        costs.close(true, Duration::from_millis(6) + US(300));
        assert!(costs.naps_pay(), "100 napping datagrams are not yet known");
        costs.window_datagrams = 150;
        costs.close(true, Duration::from_millis(6) + US(750));
        assert_eq!(
            costs.napping,
            Tally {
                cpu_ns: 750_000,
                datagrams: 250
            }
        );
        assert!(costs.naps_pay(), "3 µs against 5 µs a datagram");
        costs.window_datagrams = 30_000;
        costs.close(false, Duration::from_secs(1));
        assert!(costs.plain.datagrams <= KEEP, "{:?}", costs.plain);
    }

    #[test]
    fn bursts_and_sparse_datagrams_bring_no_nap() {
        let nap = US(400);
        let mut at = Instant::now();
        // Bursts: a wake-up takes 20 datagrams, then a few take 5, every millisecond.
        let mut state = RELAY.get();
        for _ in 0..50 {
            assert!(!wake_ups(&mut state, &mut at, 1, US(100), 20, nap)[0]);
            assert!(wake_ups(&mut state, &mut at, 4, US(40), 5, nap).iter().all(|&n| !n));
            assert!(!wake_ups(&mut state, &mut at, 1, US(740), 0, nap)[0]);
        }
        // One datagram per wake-up, every 200 µs: 2 to a nap, too few for its latency.
        let mut state = RELAY.get();
        assert!(wake_ups(&mut state, &mut at, 200, US(200), 1, nap).iter().all(|&n| !n));
        // Steady, but no relay nap configured.
        let mut state = RELAY.get();
        assert!(wake_ups(&mut state, &mut at, 200, US(25), 1, Duration::ZERO)
            .iter()
            .all(|&n| !n));
    }

    #[test]
    fn a_steadily_relaying_worker_naps_on_its_park_hook() {
        let naps = Naps::adaptive(Duration::ZERO).relaying(US(100));
        // Wake-ups in the past, so that a nap (which ends now) shows in when the sleep started.
        let Some(mut now) = Instant::now().checked_sub(Duration::from_millis(3)) else {
            return; // a clock this close to its origin cannot be set back; nothing to check
        };
        RELAY.set(RelayNaps::Watching {
            since: None,
            wakes: 0,
            datagrams: 0,
        });
        // 2.5 ms of wake-ups 25 µs apart, each taking one datagram; the last one naps, on the hook itself.
        let mut napped = Duration::ZERO;
        for _ in 0..100 {
            now += US(25);
            datagrams_handled(1);
            before_sleep(naps, now);
            napped = SLEPT_AT
                .get()
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
            if !napped.is_zero() {
                break;
            }
        }
        assert!(napped >= US(100), "never napped: {napped:?}");
    }

    #[test]
    fn a_sparse_worker_never_naps() {
        let t = Instant::now();
        SLEPT_AT.set(Some(t));
        WOKE_AT.set(Some(t + Duration::from_millis(5)));
        for socket in [1, 2, 3] {
            socket_io(socket);
        }
        let end = t + Duration::from_millis(5) + Duration::from_micros(10);
        before_sleep(Naps::adaptive(Duration::from_micros(100)), end);
        assert_eq!(SLEPT_AT.get(), Some(end), "a sleep of 50 naps: no nap after it");
    }
}
