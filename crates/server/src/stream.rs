//! TURN over TCP and TLS (RFC 8656 §3.1): framing STUN and padded ChannelData out of a byte stream.
//!
//! Each connection has one reader (this task) and one writer task fed through a [`StreamSink`], so answers and
//! relayed data from the relay sockets interleave without a lock and without blocking the worker.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use stun::StreamFramer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::spawn_local;
use turn::{FiveTuple, Transport};

use crate::budget::{ConnectionPermit, Refused};
use crate::handshakes::HandshakeFailure;
use crate::worker::{ClientRoute, PeerSends, Worker};
use source::ThrottledLog;

thread_local! {
    /// The worker thread's read buffer, borrowed for one poll of one connection (never across an `await`): frames
    /// are handled where they lie in it, and a connection keeps only a frame a read ended in ([`StreamFramer`]).
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// The longest frame a TURN stream connection may send before it has an allocation: its Allocate and Binding
/// requests take a few hundred bytes (2 KiB with a very long username, realm and nonce). It was 64 KiB, held
/// for as long as the client took to send the rest, before anything was authenticated.
const MAX_FRAME_BEFORE_ALLOCATION: usize = 4096;

/// Bytes asked of the kernel per read: many relayed frames, or a good part of the largest.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes held for a slow client, the batch being written included, before relayed data is dropped: a quarter of a
/// second of an 8 Mbit/s stream, beyond which media is too late to play. Answers (small) may take twice this; a client
/// that leaves that many unread is cut off.
const SINK_LIMIT: usize = 256 * 1024;
/// How long a closing connection's writer may take to send what was queued.
const WIND_DOWN: Duration = Duration::from_secs(5);
/// Write buffer capacity kept between writes: a few WebRTC-sized packets.
const SPARE_KEPT: usize = 4096;

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

pub(crate) async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, transport: Transport) {
    accept_each(
        worker,
        listener,
        move |worker, stream, client, server, permit| async move {
            let _permit = permit;
            let five_tuple = FiveTuple {
                client,
                server,
                transport,
            };
            match transport {
                // Boxed: a TLS connection's state is larger than a plain one's, and would be kept in every connection's
                // task otherwise.
                Transport::Tls => Box::pin(serve_tls(worker, stream, five_tuple)).await,
                _ => serve::<TcpStream>(worker, stream, five_tuple).await,
            }
        },
    )
    .await
}

/// Accepts connections for ever and runs `handle(worker, stream, client, server address)` for each in a task of its
/// own, holding the connection's share of the budget (per source and in total, charged here: before TLS, before a
/// byte is read); TCP_NODELAY and keepalive set. Shared by the TURN ports and the mux ports.
///
/// A connection from a `listen.proxy_protocol` balancer first gives its PROXY header ([`crate::proxy_protocol`]),
/// holding a share of the total only meanwhile; the client the header names is then the connection's client, and
/// charged like any other.
///
/// A refused connection is closed at once rather than left in the backlog, where its client would wait for a
/// timeout. When the process is out of descriptors (EMFILE), the connection cannot even be accepted to be closed,
/// so each loop keeps one spare descriptor to give up for that moment.
pub(crate) async fn accept_each<F, Fut>(worker: Rc<Worker>, listener: TcpListener, handle: F)
where
    F: Fn(Rc<Worker>, TcpStream, SocketAddr, SocketAddr, ConnectionPermit) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    static ACCEPT_FAILED: ThrottledLog = ThrottledLog::new(10);
    static BAD_PROXY_HEADER: ThrottledLog = ThrottledLog::new(10);
    let Ok(local) = listener.local_addr() else { return };
    let handle = Rc::new(handle);
    let mut spare = std::fs::File::open("/dev/null").ok();
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if let Some(held_back) = ACCEPT_FAILED.due() {
                    tracing::warn!(error = %e, held_back, "accept failed; connections are refused until descriptors free up");
                }
                if out_of_fds && spare.take().is_some() {
                    // Refuse promptly: accept with the spare descriptor and close at once.
                    if let Ok((refused, _)) = listener.accept().await {
                        drop(refused);
                    }
                    spare = std::fs::File::open("/dev/null").ok();
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let shared = worker.shared();
        if !shared.config.proxy_protocol.iter().any(|net| net.contains(client.ip())) {
            admit(&worker, stream, client, local, &handle);
            continue;
        }
        let Ok(held) = shared.connections.try_acquire_total() else {
            warn_refused(client, Refused::Total);
            continue;
        };
        let worker = worker.clone();
        let handle = handle.clone();
        spawn_local(async move {
            let mut stream = stream;
            let timeout = worker.shared().config.tls_handshake_timeout;
            match crate::proxy_protocol::read(&mut stream, timeout).await {
                Ok(header) => {
                    drop(held);
                    admit(&worker, stream, header.client.unwrap_or(client), local, &handle);
                }
                Err(e) => {
                    worker.shared().connections.count_refused(Refused::ProxyHeader);
                    if let Some(held_back) = BAD_PROXY_HEADER.due() {
                        tracing::warn!(balancer = %client, held_back, "connection closed: {e} (listen.proxy_protocol)");
                    }
                }
            }
        });
    }
}

/// Charges `client`'s connection to the budget and, if it fits, starts serving it.
fn admit<F, Fut>(worker: &Rc<Worker>, stream: TcpStream, client: SocketAddr, local: SocketAddr, handle: &Rc<F>)
where
    F: Fn(Rc<Worker>, TcpStream, SocketAddr, SocketAddr, ConnectionPermit) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let permit = match worker.shared().connections.try_acquire(client.ip(), Instant::now()) {
        Ok(permit) => permit,
        Err(refused) => return warn_refused(client, refused),
    };
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    // A client that asks for answers and never reads them (pipelined requests for the SDK, a TURN stream's
    // responses) held its connection, and what was queued for it, for as long as it liked: no read deadline
    // sees it, and the kernel probes a zero window for ever. This one does, in the kernel, per connection.
    if let Some(stall) = worker.shared().config.send_stall_timeout {
        let _ = SockRef::from(&stream).set_tcp_user_timeout(Some(stall));
    }
    let server = stream.local_addr().unwrap_or(local);
    // The permit goes with the connection, not with this task: an HTTP connection upgraded to a WebSocket
    // outlives the task that accepted it, and may move to another worker with its socket.
    spawn_local(handle(worker.clone(), stream, client, server, permit));
}

/// A connection refused at accept, in the log at most once per 10 s per budget.
fn warn_refused(client: SocketAddr, refused: Refused) {
    static REFUSED_TOTAL: ThrottledLog = ThrottledLog::new(10);
    static REFUSED_SOURCE: ThrottledLog = ThrottledLog::new(10);
    static REFUSED_RATE: ThrottledLog = ThrottledLog::new(10);
    let (log, what) = match refused {
        Refused::Total => (&REFUSED_TOTAL, "the server's connection limit (limits.max_connections)"),
        Refused::Source => (
            &REFUSED_SOURCE,
            "the per-source connection limit (limits.max_connections_per_source; if many users share that \
             address, an office or a carrier NAT, raise it)",
        ),
        Refused::Rate => (
            &REFUSED_RATE,
            "the per-source rate of new connections (limits.connections_per_second_per_source)",
        ),
        Refused::ProxyHeader => return,
    };
    if let Some(held_back) = log.due() {
        tracing::warn!(%client, held_back, "connection refused: {what} is reached");
    }
}

/// TURN over TLS on its own port: the handshake (boxed, so that its state is freed once done), then the frames.
async fn serve_tls(worker: Rc<Worker>, stream: TcpStream, five_tuple: FiveTuple) {
    let timeout = worker.shared().config.tls_handshake_timeout;
    let handshake = Box::pin(tokio::time::timeout(
        timeout,
        crate::tls_stream::accept(stream, worker.shared().tls.clone()),
    ));
    let failure = match handshake.await {
        // The stream boxed: `serve` keeps its argument's slot in its state for the connection's whole life.
        Ok(Ok(tls)) => return serve(worker, Box::new(tls), five_tuple).await,
        Ok(Err(e)) => HandshakeFailure::of(&e),
        Err(_) => HandshakeFailure::Timeout,
    };
    let now = std::time::Instant::now();
    let self_signed = worker.shared().certs.is_self_signed();
    worker
        .shared()
        .handshakes
        .record(now, five_tuple.client, five_tuple.server, failure, self_signed);
}

/// The TCP socket under a TURN stream (plain, TLS, or with a byte read ahead), for [`quickack`].
pub(crate) trait TcpSocket {
    fn tcp_fd(&self) -> Option<RawFd>;
}

impl TcpSocket for TcpStream {
    fn tcp_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

impl<S: TcpSocket> TcpSocket for Box<S> {
    fn tcp_fd(&self) -> Option<RawFd> {
        (**self).tcp_fd()
    }
}

/// Acknowledges what the client sent at once rather than after the delayed-ACK timer (up to 40 ms). An HTTP proxy
/// between the client and us (an office's, tunnelling TURN over TLS on 443) holds its next small write until its
/// last one is acknowledged (Nagle), so each delayed ACK held a relayed packet back: through tinyproxy the relay
/// test's round trip was 40 ms against 0.4-0.7 ms straight to 443; with the server's ACKs at once, 20 ms (1 ms in one
/// run of three; the rest is the client's delayed ACKs). Linux leaves quick-ACK mode by itself, so it is set again
/// after every read: one system call per read, on the TCP/TLS path only.
#[allow(unsafe_code)]
fn quickack(fd: Option<RawFd>) {
    let Some(fd) = fd else { return };
    // SAFETY: `fd` is the descriptor of the stream `serve` owns (through its read and write halves) for as long as it
    // runs, and `serve` is the only caller: it stays open for this call. Nothing is closed or taken over through it.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = SockRef::from(&socket).set_quickack(true);
}

/// Reads frames until the client closes, sends garbage, or idles without an allocation.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + TcpSocket + 'static>(
    worker: Rc<Worker>,
    io: S,
    five_tuple: FiveTuple,
) {
    let fd = io.tcp_fd();
    let (mut reader, writer) = tokio::io::split(io);
    let sink = Rc::new(StreamSink::default());
    let writer_task = spawn_local(write_loop(writer, sink.clone()));
    let route = ClientRoute::Stream(sink.clone());
    let idle = worker.shared().config.stream_idle_timeout;
    let auth_timeout = worker.shared().config.auth_timeout;
    // Fixed, not reset by trickled bytes: a connection must hold an allocation this soon after it was accepted or
    // its allocation ended, or it is closed — a stranger cannot keep a slot by sending a byte every few seconds.
    let mut deadline = tokio::time::Instant::now() + auth_timeout;
    let mut framer = StreamFramer::default();
    loop {
        if sink.closed.get() {
            break;
        }
        let has_allocation = worker.has_allocation(&five_tuple);
        if has_allocation {
            deadline = tokio::time::Instant::now() + auth_timeout;
        }
        // Without an allocation a client has only STUN requests to send: a frame it declares larger is not held.
        framer.set_max_frame((!has_allocation).then_some(MAX_FRAME_BEFORE_ALLOCATION));
        // Every frame the read completes is handled inside it, in the worker's buffer.
        let read = poll_fn(|cx| {
            READ_BUF.with_borrow_mut(|buf| {
                let mut read = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut reader).poll_read(cx, &mut read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(Read::Closed),
                    Poll::Ready(Ok(())) => {}
                }
                let chunk = read.filled();
                if chunk.is_empty() {
                    return Poll::Ready(Read::Closed);
                }
                quickack(fd);
                // One clock read for the frames of a read, which arrived together (not one per relayed frame).
                let now = Instant::now();
                // Payloads relayed to peers leave together at the read's end (`PeerSends`): a run of frames to one
                // peer as one GSO message.
                let mut sends = PeerSends::new();
                let fed = framer.feed(chunk, |frame| {
                    if sends.is_full() {
                        sends.send(&[chunk]);
                    }
                    // Where the frame sits in the read's buffer; none for the frame the last read began, which
                    // the framer kept in a buffer of its own (two allocations never overlap).
                    let at = (frame.as_ptr() as usize)
                        .checked_sub(chunk.as_ptr() as usize)
                        .filter(|at| at + frame.len() <= chunk.len());
                    worker.handle_stream_frame(now, five_tuple, frame, at, &mut sends, &route, |reply| {
                        sink.push_control(reply)
                    })
                });
                sends.send(&[chunk]);
                Poll::Ready(if fed.is_ok() { Read::More } else { Read::NotTurn })
            })
        });
        let read = if has_allocation {
            // The allocation's lifetime bounds the connection; TCP keepalive catches half-open peers.
            tokio::select! {
                r = read => r,
                _ = sink.wait_closed() => {
                    if sink.closed.get() {
                        break;
                    }
                    // Not closed: woken because the allocation expired while the client was silent. A new one is due
                    // within the auth timeout, or the connection closes.
                    deadline = tokio::time::Instant::now() + auth_timeout;
                    continue;
                }
            }
        } else {
            // Boxed, for the few reads before an allocation: its timers are not kept by a connection that holds one.
            match Box::pin(read_before_allocation(read, idle, deadline, &sink, five_tuple)).await {
                Some(read) => read,
                None => break,
            }
        };
        match read {
            Read::More => {}
            Read::Closed => break,
            Read::NotTurn => {
                tracing::debug!(client = %five_tuple.client, "not STUN or ChannelData; closing");
                break;
            }
        }
    }
    worker.handle_connection_closed(five_tuple);
    sink.close();
    // What was queued goes out to a client that reads; one that does not is not waited for (its connection would
    // otherwise be held for as long as it chose not to read).
    let mut writer_task = writer_task;
    if tokio::time::timeout(WIND_DOWN, &mut writer_task).await.is_err() {
        writer_task.abort();
    }
}

/// A read by a connection without an allocation: it ends (`None`) when the client is silent for `idle`, or at the
/// fixed `deadline`, whatever it sends.
async fn read_before_allocation(
    read: impl Future<Output = Read>,
    idle: Duration,
    deadline: tokio::time::Instant,
    sink: &StreamSink,
    five_tuple: FiveTuple,
) -> Option<Read> {
    tokio::select! {
        r = tokio::time::timeout(idle, read) => match r {
            Ok(r) => Some(r),
            Err(_) => {
                tracing::debug!(client = %five_tuple.client, "idle connection closed");
                None
            }
        },
        _ = tokio::time::sleep_until(deadline) => {
            tracing::debug!(client = %five_tuple.client, "no allocation within the deadline; closed");
            None
        }
        _ = sink.wait_closed() => None,
    }
}

/// What one read of a connection came to.
enum Read {
    /// Frames handled, or a frame's start kept: read on.
    More,
    /// The client closed the connection, or it broke.
    Closed,
    /// Bytes that are neither STUN nor ChannelData: the stream cannot be framed any further.
    NotTurn,
}

/// Bytes waiting to be written to one connection, plus a wake-up for its writer.
#[derive(Default)]
pub(crate) struct StreamSink {
    queue: RefCell<Vec<u8>>,
    notify: Notify,
    closed: Cell<bool>,
    closed_notify: Notify,
    /// Bytes the writer took from the queue and has not yet written: they count against the limits too.
    writing: Cell<usize>,
}

impl StreamSink {
    /// Queues relayed data; dropped when the client reads too slowly (TURN data is datagram-like).
    pub(crate) fn push(&self, data: &[u8]) {
        self.push_limited(data, SINK_LIMIT);
    }

    /// Queues an answer to a request; a client that stops reading is cut off at twice the data limit (its
    /// connection closes, and with it its allocation).
    pub(crate) fn push_control(&self, data: &[u8]) {
        if !self.push_limited(data, 2 * SINK_LIMIT) && !self.closed.get() {
            tracing::debug!("a TURN stream client left its answers unread; cut off");
            // Nothing held for it is worth sending any more.
            *self.queue.borrow_mut() = Vec::new();
            self.close();
        }
    }

    /// Queues `data` if what is held, the batch being written included, stays within `limit`.
    fn push_limited(&self, data: &[u8], limit: usize) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut q = self.queue.borrow_mut();
        if q.len() + self.writing.get() + data.len() > limit {
            return false;
        }
        q.extend_from_slice(data);
        drop(q);
        self.notify.notify_one();
        true
    }

    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.notify.notify_one();
        self.closed_notify.notify_waiters();
    }

    async fn wait_closed(&self) {
        if !self.closed.get() {
            self.closed_notify.notified().await;
        }
    }

    /// The allocation served on this connection ended: wakes its reader if it is waiting on the client (and on a
    /// close), so that it waits as a connection without one. A reader that is not waiting sees it on its next turn.
    pub(crate) fn end_allocation(&self) {
        self.closed_notify.notify_waiters();
    }
}

pub(crate) async fn write_loop<W: AsyncWrite>(mut writer: tokio::io::WriteHalf<W>, sink: Rc<StreamSink>) {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        if sink.queue.borrow().is_empty() {
            if sink.closed.get() {
                break;
            }
            sink.notify.notified().await;
            continue;
        }
        std::mem::swap(&mut *sink.queue.borrow_mut(), &mut spare);
        sink.writing.set(spare.len());
        // Flushed as well: TLS may take a write whole while the socket took only part of its record, and owe the
        // rest until the next write or flush. Nothing else would send it while the queue stays empty.
        if writer.write_all(&spare).await.is_err() || writer.flush().await.is_err() {
            sink.close();
            break;
        }
        spare.clear();
        sink.writing.set(0);
        // A batch of a few relayed packets is kept for the next one (no allocation per write); what a burst to a
        // slow reader grew (up to the sink's limit) is given back, so that a quiet connection holds little.
        if spare.capacity() > SPARE_KEPT {
            spare = Vec::new();
        }
    }
    let _ = writer.shutdown().await;
}
