//! Wake-up coalescing: a worker that runs out of work while traffic keeps arriving waits a moment before it sleeps,
//! so that its next wake-up finds a batch instead of one event.
//!
//! Why: under a steady stream of signaling messages, each one otherwise costs a whole cycle of its own — the worker
//! blocks in `epoll_wait`, the kernel wakes it for one socket, one `recv`, one `send`, block again — and at 50 000
//! signals/s that cycle is most of the server's CPU (`perf`: a context switch, an `epoll_wait`, a `recvfrom` and a
//! `sendto` per signal). Waiting ~200 µs first lets events pile up: one `epoll_wait` returns many sockets, one read
//! brings several frames, one write carries every frame queued for a peer, and far fewer context switches happen
//! (`docs/benchmarks.md`, "idle sockets at 2.2 KB, wake-up coalescing"). The same trade as a NIC's interrupt
//! moderation: at most the nap of added latency, and only while busy.
//!
//! When: only if the worker's last sleep was short (under twice the nap), i.e. events arrive faster than one per
//! nap; only if the wake-up now ending read from more than one socket ([`socket_read`]), i.e. events are arriving
//! side by side rather than one waiting on another; and only if it took no UDP datagram in the last 50 ms
//! ([`datagrams_handled`]). The second rule keeps a chain fast: one signal in flight between two peers (each
//! answers what it is sent, as offer, answer and candidates do) wakes the worker for one read at a time, and a nap
//! there would add itself to every hop (37 µs became 229 µs per hop before the rule). A UDP relay socket already
//! takes a batch per wake-up (`recvmmsg`), media is the traffic that minds latency, and on the relay benchmark the
//! nap bought no CPU beyond the spread while adding to the round trip; so a worker busy relaying sleeps at once, as
//! before. When traffic is sparse the worker sleeps at once too, and an event is handled the moment it arrives.
//!
//! A crate of its own because both the TURN workers (`server`) and the WebSocket sockets (`web`) that run on them
//! report to it. Our own ~40 lines on tokio's `on_thread_park` / `on_thread_unpark` hooks: tokio has no such
//! setting, and a busy-poll (the opposite trade: CPU for latency) is not what an operator paying for CPU wants by
//! default.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    /// When this worker last went to sleep (after any nap), and when it last woke.
    static SLEPT_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    static WOKE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// This worker took UDP datagrams since it last went to sleep; and the last sleep after which that was so.
    static DATAGRAMS: Cell<bool> = const { Cell::new(false) };
    static DATAGRAMS_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Socket reads that brought bytes since this worker last woke.
    static READS: Cell<u32> = const { Cell::new(0) };
}

/// A worker that took UDP datagrams this recently does not nap: it is relaying, and a wake-up without datagrams
/// among its wake-ups with them is no sign that signaling is what keeps it busy.
const RELAYING: Duration = Duration::from_millis(50);

/// The worker is taking UDP datagrams from a socket (a relay or a listener): it does not nap for a while. A flag,
/// not a clock read, on the relay's path; the time is taken when the worker next goes to sleep.
pub fn datagrams_handled() {
    DATAGRAMS.set(true);
}

/// A stream socket served by this worker (a WebSocket) read bytes. Two or more in one wake-up are what a nap can
/// gather into one; a single one may be one hop of a chain, which a nap would only delay.
pub fn socket_read() {
    READS.set(READS.get().saturating_add(1));
}

/// Installs coalescing on a worker's runtime; a zero `nap` leaves it off.
pub fn install(builder: &mut tokio::runtime::Builder, nap: Duration) {
    if nap.is_zero() {
        return;
    }
    // The nap is a timer: with the default 50 µs of timer slack a 50 µs nap lasts 100. 1 µs of slack for this
    // thread (its own setting, inherited by nothing else that matters here).
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only the calling thread's timer slack.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000_u64) };
    builder
        .on_thread_park(move || before_sleep(nap, Instant::now()))
        .on_thread_unpark(|| WOKE_AT.set(Some(Instant::now())));
}

/// Called when the worker has nothing left to run: naps if its last sleep was short and this wake-up read from
/// several sockets, then records when the sleep starts.
fn before_sleep(nap: Duration, now: Instant) {
    if DATAGRAMS.replace(false) {
        DATAGRAMS_AT.set(Some(now));
    }
    let relaying = DATAGRAMS_AT
        .get()
        .is_some_and(|at| now.saturating_duration_since(at) < RELAYING);
    let side_by_side = READS.replace(0) >= 2;
    if !relaying && side_by_side && busy(SLEPT_AT.get(), WOKE_AT.get(), nap) {
        std::thread::sleep(nap);
        SLEPT_AT.set(Some(Instant::now()));
    } else {
        SLEPT_AT.set(Some(now));
    }
}

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

    #[test]
    fn a_chain_of_single_reads_never_naps() {
        let nap = Duration::from_micros(200);
        let t = Instant::now();
        // A busy worker (woken 30 µs after its last sleep) that read from one socket: no nap.
        SLEPT_AT.set(Some(t));
        WOKE_AT.set(Some(t + Duration::from_micros(30)));
        socket_read();
        let before = Instant::now();
        before_sleep(nap, t + Duration::from_micros(40));
        assert_eq!(SLEPT_AT.get(), Some(t + Duration::from_micros(40)), "slept at once");
        assert!(before.elapsed() < nap, "no nap was taken");
        // The same with two reads: it naps (the sleep starts after the nap).
        SLEPT_AT.set(Some(t));
        socket_read();
        socket_read();
        let before = Instant::now();
        before_sleep(nap, t + Duration::from_micros(40));
        assert!(before.elapsed() >= nap, "napped");
        assert!(SLEPT_AT.get() > Some(t + Duration::from_micros(40)));
        assert_eq!(READS.get(), 0, "the count starts again for the next wake-up");
    }
}
