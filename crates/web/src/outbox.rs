//! A socket's outgoing queue: the hub task pushes frames, the socket's task takes them.
//!
//! Our own ~50 lines instead of a `tokio::sync::mpsc` channel because idle sockets must be cheap: a tokio channel
//! allocates its first block of 32 slots (~1.4 KB here) when it is created, while an empty `VecDeque` allocates
//! nothing. The mutex is this socket's own — the hub takes it for one push, the socket task for one pop — never a
//! lock shared between sockets. The socket task waits on a flag and its own waker ([`Outbox::poll_readable`]), not
//! on a `tokio::sync::Notify`, whose wait keeps a list node in every idle socket's task (~70 bytes) and takes a lock.
//!
//! Bounded in frames and in bytes, per socket, per source and over every socket ([`QueueBudget`]): the hub's byte
//! budgets cover the frames it keeps for replay, these cover frames written to a socket that does not read them. A
//! socket past its bound is dropped as too slow (4104); its session waits for a resume. The counters are atomics:
//! the global one, one per source (shared by that source's sockets only), none behind a lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::hub::ToSocket;

/// Bounds on unsent frames, one per server, shared by every socket's outbox.
#[derive(Debug)]
pub(crate) struct QueueBudget {
    /// Frames one socket may have queued.
    pub frames: usize,
    /// Bytes one socket may have queued: a whole replay and some live traffic.
    pub bytes: usize,
    /// Bytes queued over the sockets of one source before those that are behind are dropped.
    pub per_source: usize,
    /// Bytes queued over every socket before sockets that are behind are dropped.
    pub total: usize,
    /// A socket with more than this queued is behind; one with less always gets its frame, so a reader that keeps
    /// up is never dropped because others filled the total.
    pub behind: usize,
    /// Bytes queued right now over every socket.
    unsent: AtomicUsize,
}

impl QueueBudget {
    pub(crate) fn new(frames: usize, bytes: usize, per_source: usize, total: usize, behind: usize) -> Self {
        Self {
            frames,
            bytes,
            per_source,
            total,
            behind,
            unsent: AtomicUsize::new(0),
        }
    }

    /// Bytes queued over every socket.
    pub(crate) fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Something was pushed (or the outbox closed) since the socket task last looked.
    ready: AtomicBool,
    /// The socket task, woken when `ready` is set.
    waker: AtomicWaker,
    budget: Arc<QueueBudget>,
    /// Bytes queued over the sockets of this socket's source; bound by the hub task when it accepts the socket.
    source: OnceLock<Arc<AtomicUsize>>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<ToSocket>,
    /// Bytes of the text frames in `queue`.
    bytes: usize,
    /// The hub has let go of this socket: once the queue is empty, the socket closes.
    closed: bool,
}

/// The socket is not keeping up.
#[derive(Debug)]
pub(crate) struct Full;

impl Outbox {
    pub(crate) fn new(budget: Arc<QueueBudget>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            budget,
            source: OnceLock::new(),
        }
    }

    /// Charges this socket's queue to its source's counter from now on (once; before the first push).
    pub(crate) fn bind_source(&self, counter: Arc<AtomicUsize>) {
        let _ = self.source.set(counter);
    }

    /// Adds `n` queued bytes to (or takes them from) the global counter and the source's.
    fn count(&self, n: usize, add: bool) {
        let counters = [Some(&self.budget.unsent), self.source.get().map(|c| c.as_ref())];
        for counter in counters.into_iter().flatten() {
            if add {
                counter.fetch_add(n, Ordering::Relaxed);
            } else {
                counter.fetch_sub(n, Ordering::Relaxed);
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame; a close is always queued, so it is never lost to a full queue.
    pub(crate) fn push(&self, item: ToSocket) -> Result<(), Full> {
        {
            let mut state = self.state();
            if let ToSocket::Text(text) = &item {
                let n = text.len();
                let budget = &self.budget;
                let own_full = state.queue.len() >= budget.frames || state.bytes + n > budget.bytes;
                let source_unsent = self.source.get().map_or(0, |c| c.load(Ordering::Relaxed));
                let shared_full = budget.unsent().saturating_add(n) > budget.total
                    || source_unsent.saturating_add(n) > budget.per_source;
                if own_full || (shared_full && state.bytes > budget.behind) {
                    return Err(Full);
                }
                state.bytes += n;
                self.count(n, true);
            }
            if state.queue.capacity() == 0 {
                // One slot first, not the four a `VecDeque` starts with: an idle socket keeps one at most.
                state.queue.reserve_exact(1);
            }
            state.queue.push_back(item);
        }
        self.wake();
        Ok(())
    }

    /// The hub forgets the socket (too slow, or shutting down).
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.wake();
    }

    /// The hub drops a socket that is too slow: what it has not written is forgotten now (the session's replay
    /// buffer still has it for a resume), so a peer that stopped reading holds no memory while its socket closes.
    pub(crate) fn abandon(&self) {
        {
            let mut state = self.state();
            state.closed = true;
            self.count(state.bytes, false);
            state.bytes = 0;
            state.queue = VecDeque::new();
        }
        self.wake();
    }

    /// The next frame: `Ok(Some)`, `Ok(None)` when nothing is queued now, `Err(())` when closed and drained.
    pub(crate) fn try_pop(&self) -> Result<Option<ToSocket>, ()> {
        let mut state = self.state();
        match state.queue.pop_front() {
            Some(item) => {
                if let ToSocket::Text(text) = &item {
                    state.bytes = state.bytes.saturating_sub(text.len());
                    self.count(text.len(), false);
                }
                if state.queue.is_empty() && (state.queue.capacity() > 64 || matches!(item, ToSocket::Ping)) {
                    // A burst is over, or the hub's heartbeat found the socket quiet: give the slots back. Not
                    // after every frame, which would cost an allocation per message on a busy socket.
                    state.queue = VecDeque::new();
                }
                Ok(Some(item))
            }
            None if state.closed => Err(()),
            None => Ok(None),
        }
    }

    /// Makes the next `poll_readable` ready at once (also used by the taker when it stopped early with frames left).
    pub(crate) fn wake(&self) {
        self.ready.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready when something was pushed (or the outbox closed) since the last time it was ready.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the flag is read, so a push between the two still wakes this task.
        self.waker.register(cx.waker());
        if self.ready.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves when something was pushed (or the outbox closed) since the last time it was ready.
    pub(crate) async fn readable(&self) {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await;
    }
}

impl Drop for Outbox {
    /// Frames never written leave the total with the socket.
    fn drop(&mut self) {
        let bytes = self.state().bytes;
        self.count(bytes, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(frames: usize, bytes: usize, total: usize, behind: usize) -> Arc<QueueBudget> {
        Arc::new(QueueBudget::new(frames, bytes, total, total, behind))
    }

    fn text(n: usize) -> ToSocket {
        ToSocket::Text(bytes::Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn bounded_for_frames_never_for_close() {
        let outbox = Outbox::new(budget(2, 1 << 20, 1 << 20, 1 << 20));
        let text = || ToSocket::Text(bytes::Bytes::from_static(b"{}"));
        assert!(outbox.push(text()).is_ok());
        assert!(outbox.push(text()).is_ok());
        assert!(outbox.push(text()).is_err(), "a third frame is refused");
        assert!(outbox
            .push(ToSocket::Close(signal::CloseCode::NORMAL, String::new()))
            .is_ok());
        assert!(matches!(outbox.try_pop(), Ok(Some(ToSocket::Text(_)))));
        assert!(matches!(outbox.try_pop(), Ok(Some(ToSocket::Text(_)))));
        assert!(matches!(outbox.try_pop(), Ok(Some(ToSocket::Close(..)))));
        assert!(matches!(outbox.try_pop(), Ok(None)));
        outbox.close();
        assert!(outbox.try_pop().is_err());
    }

    #[test]
    fn bounded_in_bytes_per_socket_and_in_total_for_sockets_that_are_behind() {
        let shared = budget(100, 1000, 1500, 200);
        let slow = Outbox::new(shared.clone());
        assert!(slow.push(text(600)).is_ok());
        assert!(slow.push(text(401)).is_err(), "over the socket's bytes");
        assert!(slow.push(text(400)).is_ok());
        let other = Outbox::new(shared.clone());
        assert!(
            other.push(text(400)).is_ok(),
            "past the total, a socket that keeps up still gets its frame"
        );
        assert_eq!(shared.unsent(), 1400);
        assert!(
            other.push(text(150)).is_err(),
            "past the total, a socket that is behind does not"
        );
        assert!(matches!(other.try_pop(), Ok(Some(ToSocket::Text(_)))));
        assert_eq!(shared.unsent(), 1000);
        slow.abandon();
        assert_eq!(shared.unsent(), 0, "an abandoned socket's frames leave the total");
        assert!(slow.try_pop().is_err(), "and it closes at once");
        assert!(other.push(text(300)).is_ok());
        drop(other);
        assert_eq!(shared.unsent(), 0, "a dropped socket's frames leave the total");
    }

    #[test]
    fn bounded_per_source_for_sockets_that_are_behind() {
        let shared = Arc::new(QueueBudget::new(100, 1000, 1200, 1 << 20, 200));
        let (one, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a = Outbox::new(shared.clone());
        let b = Outbox::new(shared.clone());
        let c = Outbox::new(shared.clone());
        a.bind_source(one.clone());
        b.bind_source(one.clone());
        c.bind_source(other.clone());
        assert!(a.push(text(900)).is_ok());
        assert!(b.push(text(300)).is_ok());
        assert!(
            a.push(text(50)).is_err(),
            "the source is full and this socket is behind"
        );
        assert!(c.push(text(900)).is_ok(), "another source is not affected");
        assert_eq!(one.load(Ordering::Relaxed), 1200);
        assert!(matches!(a.try_pop(), Ok(Some(_))));
        assert!(a.push(text(50)).is_ok(), "room again");
        drop((a, b));
        assert_eq!(one.load(Ordering::Relaxed), 0);
        assert_eq!(shared.unsent(), 900);
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let outbox = Outbox::new(budget(4, 1 << 20, 1 << 20, 1 << 20));
        assert!(outbox.push(ToSocket::Text(bytes::Bytes::from_static(b"{}"))).is_ok());
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.readable())
            .await
            .expect("the stored permit wakes the waiter");
    }
}
