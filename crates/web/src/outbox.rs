//! A socket's outgoing queue: the hub task pushes frames, the socket's task takes them.
//!
//! Our own ~50 lines instead of a `tokio::sync::mpsc` channel because idle sockets must be cheap: a tokio channel
//! allocates its first block of 32 slots (~1.4 KB here) when it is created, while an empty `VecDeque` allocates
//! nothing. The mutex is this socket's own — the hub takes it for one push, the socket task for one pop — never a
//! lock shared between sockets.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::hub::ToSocket;

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    /// Frames held before the socket counts as too slow.
    limit: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<ToSocket>,
    /// The hub has let go of this socket: once the queue is empty, the socket closes.
    closed: bool,
}

/// The socket is not keeping up.
#[derive(Debug)]
pub(crate) struct Full;

impl Outbox {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            limit,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame; a close is always queued, so it is never lost to a full queue.
    pub(crate) fn push(&self, item: ToSocket) -> Result<(), Full> {
        {
            let mut state = self.state();
            if matches!(item, ToSocket::Text(_)) && state.queue.len() >= self.limit {
                return Err(Full);
            }
            state.queue.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The hub forgets the socket (too slow, or shutting down).
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    /// The next frame: `Ok(Some)`, `Ok(None)` when nothing is queued now, `Err(())` when closed and drained.
    pub(crate) fn try_pop(&self) -> Result<Option<ToSocket>, ()> {
        let mut state = self.state();
        match state.queue.pop_front() {
            Some(item) => {
                if state.queue.is_empty() && state.queue.capacity() > 64 {
                    // A burst is over: give the memory back, idle sockets must stay small.
                    state.queue = VecDeque::new();
                }
                Ok(Some(item))
            }
            None if state.closed => Err(()),
            None => Ok(None),
        }
    }

    /// Makes the next `readable` return at once (the taker stopped early with frames left).
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Resolves when something was pushed (or the outbox closed) since the last call.
    pub(crate) async fn readable(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_for_frames_never_for_close() {
        let outbox = Outbox::new(2);
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

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let outbox = Outbox::new(4);
        assert!(outbox.push(ToSocket::Text(bytes::Bytes::from_static(b"{}"))).is_ok());
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.readable())
            .await
            .expect("the stored permit wakes the waiter");
    }
}
