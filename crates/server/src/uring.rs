//! Relay sockets that receive through io_uring (`relay.io_uring`, issue 14): one multishot `RECVMSG` per relay
//! socket for its whole life, into buffers the worker lends the kernel, reaped beside tokio's reactor.
//!
//! Why: with the reactor, every relay socket that turns readable costs a wake-up and a `recvmmsg` of its own, and at
//! moderate rates that is mostly one datagram per call. Here the kernel receives into a buffer it takes from a
//! ring of provided buffers (`IORING_REGISTER_PBUF_RING`) and posts a completion; the worker's reactor watches the
//! ring's descriptor, and one wake-up reaps the datagrams of every relay socket at once, with no receive call at
//! all. The bare forwarder built this way cost 0.75–0.85x the epoll forwarder's CPU per packet
//! (`docs/benchmarks.md`, "multishot io_uring receives").
//!
//! A buffer as the kernel fills it: `io_uring_recvmsg_out` (16 bytes), the peer's address ([`NAME`] bytes), then
//! the payload at [`PAYLOAD`] = [`turn::PEER_HEADROOM`]. Once the address is read, the whole buffer is the slot
//! `turn::Server::handle_peer` expects: it writes the ChannelData or Data indication header over the address, in
//! place, and the datagram leaves from that buffer. The kernel is given [`BUF`] − [`turn::PEER_TAILROOM`] bytes of
//! each buffer, so the padding a Data indication may need is always there. A datagram longer than [`MAX_PAYLOAD`]
//! arrives truncated and is dropped (counted in [`Uring::truncated`]).
//!
//! Memory the kernel is lent, and why it stays valid: the buffer ring and the buffers (a [`BufRing`], freed only
//! after the ring is quiet, see `Drop for Uring`), and each receiver's `msghdr` template (boxed, kept for the
//! receiver's slot for as long as the `Uring` lives). A buffer is touched here only between the completion that
//! hands it over and its return to the ring, which happens before [`Uring::reap`] returns.

// The one module of the relay that lends memory to the kernel; every block says why it stays valid.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bufring::BufRing;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::udp::BATCH;

/// Buffers lent to the kernel (a power of two): with [`BUF`], 4 MiB per worker. Datagrams received and not yet
/// reaped hold one each; when none is left a socket's receive pauses (its datagrams wait in its own queue) and is
/// armed again when buffers come back ([`Uring::pauses`]). The pool is charged to no source because no datagram
/// keeps its buffer past the reap that takes it: a flood on one socket can only take the buffers again and again,
/// while the others' datagrams wait in their own queues (`tests/attack.rs`, case 7). 128 (512 KiB) relayed at the
/// same CPU per packet but delivered less at overload (`docs/benchmarks.md`, "fewer ring buffers").
const BUFFERS: u16 = 1024;
/// One buffer: the header, the address, the largest payload taken, and the tailroom.
pub(crate) const BUF: usize = 4096;
/// Room for the peer's address: an IPv6 `sockaddr_in6` (28 bytes), rounded so the payload lands at the headroom.
const NAME: usize = turn::PEER_HEADROOM - 16;
/// Where the payload starts in a buffer: right after the headroom `handle_peer` writes its header into.
const PAYLOAD: usize = 16 + NAME;
const _: () = assert!(PAYLOAD == turn::PEER_HEADROOM && NAME >= std::mem::size_of::<libc::sockaddr_in6>());
/// The largest datagram taken whole; longer ones arrive truncated and are dropped.
#[cfg_attr(
    not(test),
    allow(dead_code, reason = "the limit is documented and tested; the kernel enforces it")
)]
pub(crate) const MAX_PAYLOAD: usize = BUF - PAYLOAD - turn::PEER_TAILROOM;
/// The buffer group every receive draws from.
const GROUP: u16 = 0;
/// Completions of cancellations carry this; a receive's carry its slot and generation.
const CANCEL: u64 = u64::MAX;
/// Completions taken per call of [`Uring::reap`]: a worker's other sockets get their turn between two calls.
pub(crate) const REAP: usize = 64;
/// A receive that fails this many times in a row, with no datagram between, is not armed again.
const MAX_FAILURES: u8 = 8;

/// Identifies a receiver: its slot and the slot's generation, so a late completion of a closed one is not mistaken
/// for its successor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    slot: u32,
    generation: u32,
}

impl Key {
    fn token(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    fn from_token(token: u64) -> Self {
        Key {
            slot: token as u32,
            generation: (token >> 32) as u32,
        }
    }
}

/// The worker's ring: its provided buffers and one receiver per relay socket, each tagged with what the worker
/// needs to forward its datagrams (`T`).
pub(crate) struct Uring<T> {
    /// Readiness of the ring's descriptor: readable when completions wait. Declared first so that it is
    /// deregistered before the ring's descriptor closes.
    readiness: AsyncFd<RingFd>,
    inner: RefCell<Inner<T>>,
    /// Receivers removed while `inner` was borrowed (a removal from inside [`Uring::reap`]'s callbacks).
    deferred: RefCell<Vec<Key>>,
    truncated: Cell<u64>,
    /// Receives that stopped for want of a buffer and were armed again once the buffers came back.
    pauses: Cell<u64>,
}

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

struct Inner<T> {
    ring: IoUring,
    pool: BufRing,
    receivers: Vec<Receiver<T>>,
    free: Vec<u32>,
    /// Receivers whose multishot receive ended for want of a buffer: armed again once buffers come back.
    starved: Vec<Key>,
}

struct Receiver<T> {
    generation: u32,
    /// What the kernel reads the name and control lengths from; it must stay put while a receive is in flight.
    template: Box<libc::msghdr>,
    state: State<T>,
    /// A multishot receive is in flight (its last completion has not come).
    armed: bool,
    failures: u8,
}

enum State<T> {
    Free,
    Active {
        fd: RawFd,
        tag: T,
    },
    /// Removed; its receive is being cancelled. The slot is free once the last completion comes.
    Closing,
}

/// One datagram handed to [`Uring::reap`]'s callback.
pub(crate) struct Datagram<'a, T> {
    pub tag: &'a T,
    pub peer: SocketAddr,
    /// The whole buffer: the payload at `turn::PEER_HEADROOM`, headroom before it and tailroom after it.
    pub buf: &'a mut [u8],
    pub len: usize,
}

impl<T> Uring<T> {
    /// A ring with its buffers registered. Fails where io_uring is unavailable (old kernel, or turned off with
    /// `kernel.io_uring_disabled`); the worker then keeps its relay sockets on the reactor.
    pub(crate) fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            // Completions are run when the worker next enters the kernel, which it does all the time, instead of
            // interrupting it; a worker asleep in `epoll_wait` is still woken.
            .setup_coop_taskrun()
            .build(4096)?;
        let pool = BufRing::new(&ring, BUFFERS, BUF, BUF - turn::PEER_TAILROOM, GROUP)?;
        // SAFETY: the ring's descriptor stays open for as long as the registration: `readiness` is dropped before
        // `inner` (field order), and `Drop for Uring` does not close it.
        let readiness = unsafe { AsyncFd::register_with_interest(RingFd(ring.as_raw_fd()), Interest::READABLE) }?;
        Ok(Uring {
            readiness,
            inner: RefCell::new(Inner {
                ring,
                pool,
                receivers: Vec::new(),
                free: Vec::new(),
                starved: Vec::new(),
            }),
            deferred: RefCell::new(Vec::new()),
            truncated: Cell::new(0),
            pauses: Cell::new(0),
        })
    }

    /// Datagrams longer than [`MAX_PAYLOAD`] dropped so far.
    pub(crate) fn truncated(&self) -> u64 {
        self.truncated.get()
    }

    /// Receives paused so far because every buffer was taken (overload: the socket's datagrams waited in its own
    /// queue meanwhile), counted when they are armed again.
    pub(crate) fn pauses(&self) -> u64 {
        self.pauses.get()
    }

    /// Starts receiving on `fd`, whose datagrams reach the callback of [`Uring::reap`] with `tag`. The caller keeps
    /// the socket open until it calls [`Uring::remove`] (`tag` may own it).
    pub(crate) fn add(&self, fd: RawFd, tag: T) -> io::Result<Key> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| io::Error::other("ring busy"))?;
        let slot = match inner.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(inner.receivers.len()).map_err(|_| io::Error::other("too many receivers"))?;
                // SAFETY: all-zero is a valid msghdr (no address, no buffers).
                let mut template: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                template.msg_namelen = NAME as u32;
                inner.receivers.push(Receiver {
                    generation: 0,
                    template,
                    state: State::Free,
                    armed: false,
                    failures: 0,
                });
                slot
            }
        };
        let Some(receiver) = inner.receivers.get_mut(slot as usize) else {
            return Err(io::Error::other("receiver slot"));
        };
        receiver.state = State::Active { fd, tag };
        receiver.failures = 0;
        let key = Key {
            slot,
            generation: receiver.generation,
        };
        if let Err(e) = inner.arm(key) {
            // Not queued, so nothing names the slot: free it, tag (and socket) included.
            if let Some(receiver) = inner.receivers.get_mut(slot as usize) {
                Inner::release(receiver);
            }
            inner.free.push(slot);
            return Err(e);
        }
        // Queued: if this submit fails, the receive goes in with the next one, so the slot stays this socket's.
        if let Err(e) = inner.ring.submit() {
            tracing::debug!(error = %e, "io_uring submit");
        }
        Ok(key)
    }

    /// Stops receiving for `key`: its receive is cancelled, and the tag is dropped now. Datagrams already received
    /// for it are dropped when reaped.
    pub(crate) fn remove(&self, key: Key) {
        match self.inner.try_borrow_mut() {
            Ok(mut inner) => inner.remove(key),
            Err(_) => self.deferred.borrow_mut().push(key),
        }
    }

    /// Waits until completions are ready, and clears the readiness: call [`Uring::reap`] until it takes fewer than
    /// [`REAP`]; a completion posted after the clear wakes the caller again.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.readiness.readable().await?.clear_ready();
        Ok(())
    }

    /// Takes up to [`REAP`] completions. Each datagram goes to `each`, which returns the range of the buffer to send
    /// and where (`O`), or `None` when it has dealt with the datagram itself (or dropped it). Datagrams to send are
    /// handed to `flush` in order, up to [`BATCH`] at a time, while their buffers are still held; the buffers
    /// go back to the kernel right after. Returns the number of completions taken.
    pub(crate) fn reap<O: Copy + Default>(
        &self,
        mut each: impl FnMut(Datagram<'_, T>) -> Option<(Range<usize>, O)>,
        mut flush: impl FnMut(&[&[u8]], &[O]),
    ) -> usize {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return 0;
        };
        let mut taken = [(0u64, 0i32, 0u32); REAP];
        let mut n = 0;
        for (slot, cqe) in taken.iter_mut().zip(inner.ring.completion()) {
            *slot = (cqe.user_data(), cqe.result(), cqe.flags());
            n += 1;
        }
        let mut held: [(u16, Range<usize>); BATCH] = std::array::from_fn(|_| (0, 0..0));
        let mut outs = [O::default(); BATCH];
        let mut count = 0;
        for &(token, result, flags) in taken.get(..n).unwrap_or_default() {
            if token == CANCEL {
                continue;
            }
            let Some((bid, len, key)) = inner.completed(Key::from_token(token), result, flags) else {
                continue;
            };
            match inner.datagram(bid, len) {
                Parsed::Datagram(peer, len) => {
                    let Inner { pool, receivers, .. } = &mut *inner;
                    let tag = match receivers.get(key.slot as usize).map(|r| &r.state) {
                        Some(State::Active { tag, .. }) => tag,
                        _ => {
                            pool.give_back(bid);
                            continue;
                        }
                    };
                    let buf = pool.buf(bid);
                    match each(Datagram { tag, peer, buf, len }) {
                        Some((range, out)) => {
                            if let (Some(h), Some(o)) = (held.get_mut(count), outs.get_mut(count)) {
                                *h = (bid, range);
                                *o = out;
                                count += 1;
                            }
                        }
                        None => pool.give_back(bid),
                    }
                }
                Parsed::Truncated => {
                    self.truncated.set(self.truncated.get() + 1);
                    inner.pool.give_back(bid);
                }
                Parsed::Bad => inner.pool.give_back(bid),
            }
            if count == BATCH {
                inner.flush(&held, &outs, &mut flush);
                count = 0;
            }
        }
        if count > 0 {
            inner.flush(
                held.get(..count).unwrap_or_default(),
                outs.get(..count).unwrap_or_default(),
                &mut flush,
            );
        }
        for key in std::mem::take(&mut *self.deferred.borrow_mut()) {
            inner.remove(key);
        }
        // Only once the completion queue is empty are the buffers all back: re-armed earlier, a starved receive
        // would find none, end with ENOBUFS again and cost a completion and a submission per round under overload.
        if n < REAP && inner.ring.completion().is_empty() {
            let resumed = inner.feed_starved();
            self.pauses.set(self.pauses.get() + resumed);
        }
        if inner.ring.submission().is_empty() {
            return n;
        }
        if let Err(e) = inner.ring.submit() {
            tracing::warn!(error = %e, "io_uring submit");
        }
        n
    }
}

enum Parsed {
    Datagram(SocketAddr, usize),
    Truncated,
    Bad,
}

impl<T> Inner<T> {
    /// Queues a multishot receive for `key`.
    fn arm(&mut self, key: Key) -> io::Result<()> {
        let Some(receiver) = self.receivers.get_mut(key.slot as usize) else {
            return Ok(());
        };
        let State::Active { fd, .. } = receiver.state else {
            return Ok(());
        };
        let entry = opcode::RecvMsgMulti::new(types::Fd(fd), &*receiver.template, GROUP)
            .build()
            .user_data(key.token());
        receiver.armed = true;
        // SAFETY: the template is boxed and kept in its slot for as long as the ring lives. `fd` is open while the
        // receiver is active, and a removal submits what is queued before it drops the socket (`Inner::remove`).
        unsafe { push(&mut self.ring, &entry) }
    }

    fn remove(&mut self, key: Key) {
        let Some(receiver) = self.receivers.get_mut(key.slot as usize) else {
            return;
        };
        if receiver.generation != key.generation || !matches!(receiver.state, State::Active { .. }) {
            return;
        }
        if receiver.armed {
            let entry = opcode::AsyncCancel::new(key.token()).build().user_data(CANCEL);
            // SAFETY: a cancellation lends the kernel no memory.
            if let Err(e) = unsafe { push(&mut self.ring, &entry) } {
                tracing::warn!(error = %e, "io_uring cancel");
            }
            // Submitted before the tag (and with it, maybe, the socket) is dropped: the kernel takes its own hold on
            // the socket when a receive is submitted, so a receive still queued must go in while the descriptor is
            // this socket's, never after it could be closed and its number reused.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit");
            }
            if let Some(receiver) = self.receivers.get_mut(key.slot as usize) {
                receiver.state = State::Closing;
            }
        } else {
            Self::release(receiver);
            self.free.push(key.slot);
        }
    }

    /// A slot's receive is over for good: a new generation, ready for reuse.
    fn release(receiver: &mut Receiver<T>) {
        receiver.state = State::Free;
        receiver.armed = false;
        receiver.generation = receiver.generation.wrapping_add(1);
    }

    /// Bookkeeping for one receive completion; the buffer, length and key when it carries a datagram for a live
    /// receiver. A buffer of a stale or closing receiver goes straight back.
    fn completed(&mut self, key: Key, result: i32, flags: u32) -> Option<(u16, usize, Key)> {
        let bid = cqueue::buffer_select(flags);
        let Some(receiver) = self.receivers.get_mut(key.slot as usize) else {
            if let Some(bid) = bid {
                self.pool.give_back(bid);
            }
            return None;
        };
        let current = receiver.generation == key.generation;
        if current && !cqueue::more(flags) {
            receiver.armed = false;
            match receiver.state {
                State::Closing => {
                    Self::release(receiver);
                    self.free.push(key.slot);
                }
                State::Active { .. } if result == -libc::ENOBUFS => self.starved.push(key),
                State::Active { .. } => {
                    if result < 0 {
                        receiver.failures = receiver.failures.saturating_add(1);
                    }
                    if receiver.failures < MAX_FAILURES {
                        if let Err(e) = self.arm(key) {
                            tracing::warn!(error = %e, "io_uring receive not armed again");
                        }
                    } else {
                        tracing::warn!(error = result, "relay socket receive keeps failing; stopped");
                    }
                }
                State::Free => {}
            }
        }
        let bid = bid?;
        let live = self
            .receivers
            .get(key.slot as usize)
            .is_some_and(|r| r.generation == key.generation && matches!(r.state, State::Active { .. }));
        let len = usize::try_from(result).ok().filter(|_| live);
        match len {
            Some(len) => {
                if let Some(r) = self.receivers.get_mut(key.slot as usize) {
                    r.failures = 0;
                }
                Some((bid, len, key))
            }
            None => {
                self.pool.give_back(bid);
                None
            }
        }
    }

    /// Reads the peer's address and the payload's length out of a filled buffer.
    fn datagram(&mut self, bid: u16, filled: usize) -> Parsed {
        // Every template has the same lengths; any one will do for parsing.
        let Some(template) = self.receivers.first().map(|r| &*r.template) else {
            return Parsed::Bad;
        };
        let buf = self.pool.buf(bid);
        let Some(filled) = buf.get(..filled) else {
            return Parsed::Bad;
        };
        let Ok(out) = types::RecvMsgOut::parse(filled, template) else {
            return Parsed::Bad;
        };
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            return Parsed::Truncated;
        }
        match peer_address(out.name_data()) {
            Some(peer) => Parsed::Datagram(peer, out.payload_data().len()),
            None => Parsed::Bad,
        }
    }

    /// Hands the held datagrams to `flush`, then their buffers back to the kernel.
    fn flush<O>(&mut self, held: &[(u16, Range<usize>)], outs: &[O], flush: &mut impl FnMut(&[&[u8]], &[O])) {
        let mut datas: [&[u8]; BATCH] = [&[]; BATCH];
        let mut k = 0;
        for (d, (bid, range)) in datas.iter_mut().zip(held) {
            *d = self.pool.buf_shared(*bid).get(range.clone()).unwrap_or_default();
            k += 1;
        }
        flush(datas.get(..k).unwrap_or_default(), outs);
        for (bid, _) in held {
            self.pool.give_back(*bid);
        }
    }

    /// Arms again the receivers that ran out of buffers, now that the buffers are back; how many.
    fn feed_starved(&mut self) -> u64 {
        let mut resumed = 0;
        for key in std::mem::take(&mut self.starved) {
            let current = self
                .receivers
                .get(key.slot as usize)
                .is_some_and(|r| r.generation == key.generation && !r.armed);
            if current {
                match self.arm(key) {
                    Ok(()) => resumed += 1,
                    Err(e) => tracing::warn!(error = %e, "io_uring receive not armed again"),
                }
            }
        }
        resumed
    }
}

impl<T> Drop for Uring<T> {
    /// Cancels every receive and waits until the kernel has let go of the buffers and templates. If it does not
    /// within a second, they are leaked rather than freed under the kernel.
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancellation lends the kernel no memory.
        let _ = unsafe { push(&mut inner.ring, &entry) };
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while inner.receivers.iter().any(|r| r.armed) && std::time::Instant::now() < deadline {
            let wait = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&wait);
            let _ = inner.ring.submitter().submit_with_args(1, &args);
            let done: Vec<(u64, u32)> = inner.ring.completion().map(|c| (c.user_data(), c.flags())).collect();
            for (token, flags) in done {
                if token == CANCEL || cqueue::more(flags) {
                    continue;
                }
                let key = Key::from_token(token);
                if let Some(r) = inner.receivers.get_mut(key.slot as usize) {
                    if r.generation == key.generation {
                        r.armed = false;
                    }
                }
            }
        }
        if inner.receivers.iter().any(|r| r.armed) {
            tracing::warn!("io_uring receives did not end; their buffers are leaked");
            let receivers = std::mem::take(&mut inner.receivers);
            std::mem::forget(receivers);
            std::mem::replace(&mut inner.pool, BufRing::empty()).leak();
        }
    }
}

/// Queues one operation, submitting what is queued first when the queue is full.
///
/// # Safety
/// Whatever `entry` points at must stay valid until its last completion.
unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: the caller's promise.
    if unsafe { ring.submission().push(entry) }.is_err() {
        ring.submit()?;
        // SAFETY: as above; the queue has room after the submit.
        unsafe { ring.submission().push(entry) }.map_err(|_| io::Error::other("the submission queue stays full"))?;
    }
    Ok(())
}

/// A `sockaddr_in` or `sockaddr_in6` as the kernel wrote it.
fn peer_address(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        libc::AF_INET6 => {
            let flow = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope)))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    //! Real sockets on loopback and the real kernel: the lending is what is tested, so nothing here is simulated.

    use std::net::UdpSocket;
    use std::time::Instant;

    use super::*;

    fn io_uring_allowed() -> bool {
        let setting = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
        let allowed = matches!(setting.trim(), "" | "0");
        if !allowed {
            println!(
                "SKIP: io_uring is disabled here (kernel.io_uring_disabled = {})",
                setting.trim()
            );
        }
        allowed
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    /// What a test saw: each datagram's tag, sender and payload, and each flushed datagram's bytes and tag.
    #[derive(Default)]
    struct Seen {
        datagrams: Vec<(u32, SocketAddr, Vec<u8>)>,
        flushed: Vec<(Vec<u8>, u32)>,
    }

    /// Reaps until `want` datagrams were seen or `wait` passed. Every datagram tagged odd is sent on (its
    /// payload with a 4-byte header written into the headroom), the others are dealt with in `each`.
    async fn reap_until(ring: &Uring<u32>, seen: &mut Seen, want: usize, wait: Duration) {
        let deadline = Instant::now() + wait;
        while seen.datagrams.len() < want && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(20), ring.readable()).await;
            loop {
                let mut flushed = Vec::new();
                let taken = ring.reap(
                    |d: Datagram<'_, u32>| {
                        assert!(d.buf.len() >= turn::PEER_HEADROOM + d.len + turn::PEER_TAILROOM);
                        let payload = d.buf[turn::PEER_HEADROOM..turn::PEER_HEADROOM + d.len].to_vec();
                        seen.datagrams.push((*d.tag, d.peer, payload));
                        if d.tag.is_multiple_of(2) {
                            return None;
                        }
                        d.buf[turn::PEER_HEADROOM - 4..turn::PEER_HEADROOM].copy_from_slice(b"HDR:");
                        Some((turn::PEER_HEADROOM - 4..turn::PEER_HEADROOM + d.len, *d.tag))
                    },
                    |datas: &[&[u8]], tags: &[u32]| {
                        assert!(datas.len() <= BATCH);
                        assert_eq!(datas.len(), tags.len());
                        flushed.extend(datas.iter().map(|d| d.to_vec()).zip(tags.iter().copied()));
                    },
                );
                seen.flushed.extend(flushed);
                if taken < REAP {
                    break;
                }
            }
        }
    }

    #[test]
    fn datagrams_reach_their_receiver_with_headroom_and_are_flushed_from_their_buffer() {
        if !io_uring_allowed() {
            return;
        }
        runtime().block_on(async {
            let ring = Uring::<u32>::new().unwrap();
            let (a, b) = (socket(), socket());
            ring.add(a.as_raw_fd(), 1).unwrap();
            ring.add(b.as_raw_fd(), 2).unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            let v6 = UdpSocket::bind("[::1]:0").ok();
            let c = v6.as_ref().map(|_| UdpSocket::bind("[::1]:0").unwrap());
            if let Some(c) = &v6 {
                ring.add(c.as_raw_fd(), 3).unwrap();
            }
            let mut sent = 0;
            let mut seen = Seen::default();
            for i in 0..300u32 {
                let msg = format!("datagram {i}");
                client.send_to(msg.as_bytes(), a.local_addr().unwrap()).unwrap();
                client.send_to(msg.as_bytes(), b.local_addr().unwrap()).unwrap();
                sent += 2;
                if let (Some(to), Some(from)) = (&v6, &c) {
                    from.send_to(msg.as_bytes(), to.local_addr().unwrap()).unwrap();
                    sent += 1;
                }
                // Reaped as a worker would, between bursts (more than the ring's buffers, fewer than the sockets'
                // queues hold): the pause test below floods past them.
                if i % 50 == 49 {
                    reap_until(&ring, &mut seen, sent, Duration::from_secs(5)).await;
                }
            }
            reap_until(&ring, &mut seen, sent, Duration::from_secs(5)).await;
            assert_eq!(seen.datagrams.len(), sent, "every datagram is reaped once");
            for tag in [1, 2] {
                let payloads: Vec<_> = seen
                    .datagrams
                    .iter()
                    .filter(|(t, ..)| *t == tag)
                    .map(|(_, peer, p)| {
                        assert_eq!(*peer, client.local_addr().unwrap(), "the sender's address");
                        String::from_utf8(p.clone()).unwrap()
                    })
                    .collect();
                let expected: Vec<_> = (0..300).map(|i| format!("datagram {i}")).collect();
                assert_eq!(payloads, expected, "tag {tag}: in order, whole");
            }
            // Odd tags were sent on from their buffers, header first.
            let flushed_a: Vec<_> = seen
                .flushed
                .iter()
                .filter(|(_, t)| *t == 1)
                .map(|(d, _)| d.clone())
                .collect();
            assert_eq!(flushed_a.len(), 300);
            assert_eq!(flushed_a[7], b"HDR:datagram 7".to_vec());
            assert!(seen.flushed.iter().all(|(_, t)| !t.is_multiple_of(2)));
            if let Some(c) = &c {
                let from_v6: Vec<_> = seen.datagrams.iter().filter(|(t, ..)| *t == 3).collect();
                assert_eq!(from_v6.len(), 300);
                assert_eq!(from_v6[0].1, c.local_addr().unwrap(), "an IPv6 sender's address");
            }
        });
    }

    #[test]
    fn a_removed_receiver_lets_go_of_its_socket_and_its_datagrams_reach_no_successor() {
        if !io_uring_allowed() {
            return;
        }
        runtime().block_on(async {
            let ring = Uring::<u32>::new().unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            let old = socket();
            let port = old.local_addr().unwrap();
            let key = ring.add(old.as_raw_fd(), 2).unwrap();
            // Received by the kernel for the old receiver, not reaped yet.
            for _ in 0..20 {
                client.send_to(b"for the old one", port).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            ring.remove(key);
            ring.remove(key);
            drop(old);
            // What the old receiver had received is dropped, and its last completion frees its slot.
            let mut seen = Seen::default();
            reap_until(&ring, &mut seen, 1, Duration::from_millis(200)).await;
            assert!(seen.datagrams.is_empty(), "a removed receiver's datagrams reach nobody");
            // The slot is reused with a new generation.
            let new = socket();
            let new_key = ring.add(new.as_raw_fd(), 4).unwrap();
            assert_eq!(new_key.slot, key.slot);
            assert_ne!(new_key.generation, key.generation);
            client.send_to(b"for the new one", new.local_addr().unwrap()).unwrap();
            reap_until(&ring, &mut seen, 1, Duration::from_secs(5)).await;
            reap_until(&ring, &mut seen, 2, Duration::from_millis(100)).await;
            assert_eq!(seen.datagrams.len(), 1, "only the new receiver's datagram");
            assert_eq!(seen.datagrams[0].0, 4);
            assert_eq!(seen.datagrams[0].2, b"for the new one".to_vec());
            // The kernel let go of the old socket: its port can be bound again.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut rebound = UdpSocket::bind(port);
            while rebound.is_err() && Instant::now() < deadline {
                reap_until(&ring, &mut seen, 99, Duration::from_millis(10)).await;
                rebound = UdpSocket::bind(port);
            }
            assert!(
                rebound.is_ok(),
                "the removed receiver's port is free again: {rebound:?}"
            );
        });
    }

    #[test]
    fn receives_pause_when_every_buffer_is_taken_and_resume_when_they_come_back() {
        if !io_uring_allowed() {
            return;
        }
        runtime().block_on(async {
            let ring = Uring::<u32>::new().unwrap();
            let sockets: Vec<_> = (0..4).map(|_| socket()).collect();
            for (i, s) in sockets.iter().enumerate() {
                ring.add(s.as_raw_fd(), i as u32 * 2).unwrap();
            }
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            // More datagrams than buffers, none reaped meanwhile: the kernel fills every buffer, then the receives
            // stop and the rest waits in the sockets' own queues (20 per socket per burst stays well inside them).
            let total = usize::from(BUFFERS) + 200;
            let mut sent = 0;
            while sent < total {
                for s in &sockets {
                    for _ in 0..20 {
                        if sent < total {
                            client
                                .send_to(&(sent as u32).to_be_bytes(), s.local_addr().unwrap())
                                .unwrap();
                            sent += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let mut seen = Seen::default();
            reap_until(&ring, &mut seen, total, Duration::from_secs(10)).await;
            assert_eq!(seen.datagrams.len(), total, "every datagram, once buffers came back");
            let mut numbers: Vec<u32> = seen
                .datagrams
                .iter()
                .map(|(_, _, p)| u32::from_be_bytes(p[..4].try_into().unwrap()))
                .collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), total, "none twice");
            assert!(
                (1..=sockets.len() as u64).contains(&ring.pauses()),
                "each socket paused at most once, and at least one did: {}",
                ring.pauses()
            );
        });
    }

    #[test]
    fn a_datagram_too_long_for_a_buffer_is_dropped_and_counted() {
        if !io_uring_allowed() {
            return;
        }
        runtime().block_on(async {
            let ring = Uring::<u32>::new().unwrap();
            let s = socket();
            ring.add(s.as_raw_fd(), 2).unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client
                .send_to(&vec![7u8; MAX_PAYLOAD + 1], s.local_addr().unwrap())
                .unwrap();
            client
                .send_to(&vec![9u8; MAX_PAYLOAD], s.local_addr().unwrap())
                .unwrap();
            let mut seen = Seen::default();
            reap_until(&ring, &mut seen, 1, Duration::from_secs(5)).await;
            reap_until(&ring, &mut seen, 2, Duration::from_millis(100)).await;
            assert_eq!(seen.datagrams.len(), 1);
            assert_eq!(
                seen.datagrams[0].2,
                vec![9u8; MAX_PAYLOAD],
                "the longest datagram taken is whole"
            );
            assert_eq!(ring.truncated(), 1);
        });
    }

    #[test]
    fn sender_addresses_are_read_as_the_kernel_writes_them() {
        let mut v4 = [0u8; NAME];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&3478u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(peer_address(&v4), Some("192.0.2.1:3478".parse().unwrap()));
        let mut v6 = [0u8; NAME];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(peer_address(&v6), Some("[2001:db8::1]:443".parse().unwrap()));
        assert_eq!(peer_address(&[0u8; 3]), None);
        let mut unix = [0u8; NAME];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(peer_address(&unix), None);
    }
}
