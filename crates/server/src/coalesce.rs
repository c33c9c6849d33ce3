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
//! nap, and only if it took no UDP datagram in the last 50 ms ([`datagrams_handled`]). A UDP relay socket
//! already takes a batch per wake-up (`recvmmsg`), media is the traffic that minds latency, and on the relay
//! benchmark the nap bought no CPU beyond the spread while adding to the round trip; so a worker busy relaying
//! sleeps at once, as before. When traffic is sparse the worker sleeps at once too, and an event is handled the
//! moment it arrives.
//!
//! A chain of single messages, each answered before the next is sent, can meet the rule: with clients on loopback
//! answering within ~30 µs, one signal in flight between two peers pays a nap per hop (37 µs became 229 µs per hop
//! in `traverse-cluster-bench`). Real clients are a network away, so their sleeps are longer than two naps and a
//! chain of offer, answer and candidates is not delayed. Three rules that tried to tell a chain from side-by-side
//! traffic (reads per wake-up; reads and writes in the wake-up after a nap; their running average) each lost the
//! whole gain under load: a loaded worker's wake-ups do one or two socket reads or writes each until naps gather
//! them, so none of those counts says when a nap will pay.
//!
//! Our own ~30 lines on tokio's `on_thread_park` / `on_thread_unpark` hooks: tokio has no such setting, and a
//! busy-poll (the opposite trade: CPU for latency) is not what an operator paying for CPU wants by default.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    /// When this worker last went to sleep (after any nap), and when it last woke.
    static SLEPT_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    static WOKE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// This worker took UDP datagrams since it last went to sleep; and the last sleep after which that was so.
    static DATAGRAMS: Cell<bool> = const { Cell::new(false) };
    static DATAGRAMS_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A worker that took UDP datagrams this recently does not nap: it is relaying, and a wake-up without datagrams
/// among its wake-ups with them is no sign that signaling is what keeps it busy.
const RELAYING: Duration = Duration::from_millis(50);

/// The worker is taking UDP datagrams from a socket (a relay or a listener): it does not nap for a while. A flag,
/// not a clock read, on the relay's path; the time is taken when the worker next goes to sleep.
pub(crate) fn datagrams_handled() {
    DATAGRAMS.set(true);
}

/// Installs coalescing on a worker's runtime; a zero `nap` leaves it off.
pub(crate) fn install(builder: &mut tokio::runtime::Builder, nap: Duration) {
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

/// Called when the worker has nothing left to run: naps if its last sleep was short, then records when the sleep
/// starts.
fn before_sleep(nap: Duration, now: Instant) {
    if DATAGRAMS.replace(false) {
        DATAGRAMS_AT.set(Some(now));
    }
    let relaying = DATAGRAMS_AT
        .get()
        .is_some_and(|at| now.saturating_duration_since(at) < RELAYING);
    if !relaying && busy(SLEPT_AT.get(), WOKE_AT.get(), nap) {
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
}
