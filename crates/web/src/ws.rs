//! One signaling socket: frames in go to the hub, frames the hub routes here go out, plus transport pings.
//!
//! Idle sockets must cost (almost) nothing: a socket owns no read or write buffer. It reads into a buffer of the
//! worker thread it runs on ([`READ_BUF`]), and the sharded hub takes each message in place from there
//! ([`crate::websocket::Decoder`] unmasks it where it lies); it writes a batch of frames from the thread's
//! [`WRITE_BUF`]. Only what has to outlive one poll is the socket's own, and only until it is done: the start of a
//! frame that has not fully arrived, a fragmented message, the part of a batch the kernel did not take at once.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use signal::{CloseCode, Refusal};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hub::{now, HubHandle, ToSocket};
use crate::outbox::Outbox;
use crate::placement::{Connection, TakeBack};
use crate::routes::App;
use crate::shards::Seat;
use crate::websocket::{self, Decoder, Event, FrameError};

/// Bytes asked of the kernel per read: a burst of small signals, or a good part of a large one.
const READ_CHUNK: usize = 16 * 1024;
/// Frames and bytes written per batch before the socket task comes back for more (and lets other sockets run):
/// a batch must be written within a heartbeat interval, and 256 KiB in 10 s is a 26 KB/s link.
const BATCH_FRAMES: usize = 64;
const BATCH_BYTES: usize = 256 * 1024;
/// How long a closing socket waits for its close frame to leave and for the client's answer.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Reads a closing socket makes while it waits for the client's close: a client answers after what it had in
/// flight, and one that floods (the reason it is being closed, often) is not read at full speed for `CLOSE_WAIT`.
const CLOSE_READS: usize = 16;

thread_local! {
    /// The worker thread's read buffer, borrowed for one poll of one socket (never across an `await`).
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
    /// The worker thread's write buffer: one batch of frames, written in one system call.
    static WRITE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What a socket's task is given, kept in one place for its whole life: an `async fn` stores its arguments twice in
/// its future (as given, and as moved into its body). The server's state by one pointer (the hub's handle alone is
/// five), read when needed rather than copied into every idle socket.
pub(crate) struct Conn {
    pub app: Arc<App>,
    pub ip: IpAddr,
}

impl Conn {
    fn hub(&self) -> &HubHandle {
        &self.app.hub
    }

    /// How long a write may wait for the client to take it (a heartbeat interval) before it is closed as too slow.
    fn write_wait(&self) -> Duration {
        self.app.config.limits.heartbeat_interval
    }
}

/// A signaling socket's task, from the HTTP upgrade: the socket is served here, or moves to `room_worker`, the
/// worker that holds its room ([`crate::placement`]). `take_back` gets the connection out of hyper as the type it
/// was served as, so that it can move.
pub(crate) async fn serve(
    upgrade: hyper::upgrade::OnUpgrade,
    conn: Conn,
    take_back: Option<TakeBack>,
    room_worker: Option<usize>,
) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(ip = %conn.ip, error = %e, "WebSocket upgrade failed");
            return;
        }
    };
    let io: Box<dyn Connection> = match take_back {
        Some(TakeBack(take_back)) => take_back(upgraded),
        None => Box::new(hyper_util::rt::TokioIo::new(upgraded)),
    };
    // A task of its own, here as on the worker a socket moves to, so that the upgrade's state is not kept in every
    // socket's task for its whole life.
    conn.app
        .clone()
        .hub
        .workers()
        .place(room_worker, Start::Upgraded(io), conn);
}

/// Where a socket's task starts.
pub(crate) enum Start {
    /// Just upgraded: the task connects it to the hub.
    Upgraded(Box<dyn Connection>),
    /// It joined (or resumed) on a worker other than its room's, which let go of it ([`crate::placement`]): a
    /// client that named its room only in its `join` frame.
    Joined(Box<Joined>),
}

/// Everything a socket's task held, on its way to its room's worker: its connection, the decoder's state (a frame
/// half read), what the kernel did not take yet, its seat in the hub and its outbox. The hub knows the socket by its
/// outbox, which moves with it, so nothing in the hub changes.
pub(crate) struct Joined {
    socket: Socket<Box<dyn Connection>>,
    seat: Seat,
    outbox: Arc<Outbox>,
}

impl Start {
    /// Already taken by the hub: its task must run even when its connection is lost, so that the hub is told it is
    /// gone (the first read fails and the task ends with `closed`); otherwise the hub would keep its seat.
    pub(crate) fn in_hub(&self) -> bool {
        matches!(self, Self::Joined(_))
    }

    /// The connection, to let go of one worker's reactor and register with another's.
    pub(crate) fn connection(&mut self) -> &mut dyn Connection {
        match self {
            Self::Upgraded(io) => &mut **io,
            Self::Joined(joined) => &mut *joined.socket.io,
        }
    }
}

/// A signaling socket's task, from its upgraded connection (or from where another worker let go of it) to the end
/// of the connection. A block, not an `async fn`, so that `conn` is stored once.
#[allow(clippy::manual_async_fn, reason = "an async fn would store `conn` twice")]
pub(crate) fn serve_socket(start: Start, conn: Conn) -> impl Future<Output = ()> + Send {
    async move {
        let (mut socket, mut seat, outbox) = match start {
            Start::Upgraded(io) => {
                let mut socket = Socket {
                    io,
                    decoder: Decoder::new(conn.app.config.limits.max_message_bytes),
                    unsent: Vec::new(),
                    controls: control_rate().full(std::time::Instant::now()),
                };
                let Some((seat, outbox)) = Box::pin(connect(&mut socket, &conn)).await else {
                    return;
                };
                (socket, seat, outbox)
            }
            Start::Joined(joined) => {
                let Joined { socket, seat, outbox } = *joined;
                (socket, seat, outbox)
            }
        };
        let closing = match run(&mut socket, &conn, &mut seat, &outbox).await {
            Ran::Closing(closing) => closing,
            Ran::Move(to) => {
                let moving = Start::Joined(Box::new(Joined { socket, seat, outbox }));
                conn.app.clone().hub.workers().place(Some(to), moving, conn);
                return;
            }
        };
        if let Some((code, reason)) = closing {
            if code == CloseCode::TOO_SLOW.0 {
                conn.hub().count_too_slow();
            }
            Box::pin(socket.close(code, &reason, &[])).await;
        }
        // The hub forgets sockets it closed itself; telling it again is harmless.
        Box::pin(conn.hub().closed(seat)).await;
    }
}

/// Takes a new socket into the hub; `None`: refused (the client was told why and the connection closed).
async fn connect<S>(socket: &mut Socket<S>, given: &Conn) -> Option<(Seat, Arc<Outbox>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hub = given.hub();
    let conn = hub.next_conn();
    let outbox = Arc::new(Outbox::new(hub.queue_budget.clone()));
    match hub.connect(conn, given.ip, outbox.clone()).await {
        Ok(seat) => Some((seat, outbox)),
        Err(refusal) => {
            let code = refusal.code.close_code().unwrap_or(CloseCode::TOO_MANY_CONNECTIONS);
            let mut frames = Vec::new();
            websocket::text_frame(error_frame(&refusal).as_bytes(), &mut frames);
            Box::pin(socket.close(code.0, refusal.code.as_str(), &frames)).await;
            None
        }
    }
}

/// How a socket's serving ended.
enum Ran {
    /// The connection is ending, with this close frame to send (`None`: none, it is gone).
    Closing(Option<(u16, String)>),
    /// It joined a room held by worker `to`, not this one: it moves there to be served ([`crate::placement`]).
    Move(usize),
}

/// Serves a socket the hub has taken: frames in go to the hub, what the hub routes here goes out.
async fn run<S>(socket: &mut Socket<S>, given: &Conn, seat: &mut Seat, outbox: &Outbox) -> Ran
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hub = given.hub();
    // One task per socket: it reads frames and hands them to the hub in place, and writes what the hub routes
    // here — pings included: the hub's heartbeat pings a quiet socket, so a socket has no timer of its own.
    // Every future awaited here is part of this task's one allocation, for the socket's whole life, even one that
    // runs once or never (the close, the cluster's channel, a write's timeout): those are boxed when they run, so
    // that an idle socket keeps only what it uses.
    // Messages for the cluster's hub task (`--redis`), which takes owned copies over a channel; and pongs owed.
    let mut inbound: Vec<Inbound> = Vec::new();
    // The pong owed for the last ping of a read: RFC 6455 §5.5.3 lets an endpoint answer only the most recent
    // ping, so a flood of pings costs one pong per read, not one per 6-byte frame.
    let mut pong: Vec<u8> = Vec::new();
    loop {
        // Not joined before this read: if it joins, its room's worker may be another one.
        let placing = !seat.joined;
        // Pings and pongs seen in this read: told to the hub once, after it (a shard's lock or a channel message
        // per control frame was the dearest thing a client could ask for by the byte), and spent from its budget.
        let mut controls: u32 = 0;
        let mut on_event = |event: Event<'_>, clock: &mut Clock| match (event, hub.shards()) {
            (Event::Text(text), Some(shards)) => shards.text_at(seat, text, clock.now()),
            (Event::Text(text), None) => inbound.push(Inbound::Text(Bytes::copy_from_slice(text.as_bytes()))),
            (Event::Binary, Some(shards)) => shards.binary(seat),
            (Event::Binary, None) => inbound.push(Inbound::Binary),
            (Event::Ping(payload), _) => {
                pong.clear();
                websocket::pong_frame(payload, &mut pong);
                controls = controls.saturating_add(1);
            }
            (Event::Pong, _) => controls = controls.saturating_add(1),
            // `read` ends with the close; it never reaches here.
            (Event::Close(_), _) => {}
        };
        let read = tokio::select! {
            read = socket.read(&mut on_event) => read,
            _ = outbox.readable() => {
                match socket.write_queued(outbox, given.write_wait()).await {
                    Ok(None) => continue,
                    Ok(Some(close)) => return Ran::Closing(Some(close)),
                    Err(error) => return Ran::Closing(error.close()),
                }
            }
        };
        if controls > 0 {
            activity(hub, seat, &mut inbound);
            let (rate, now) = (control_rate(), std::time::Instant::now());
            if (0..controls).any(|_| rate.take(&mut socket.controls, now).is_err()) {
                tracing::info!(
                    conn = seat.conn.get(),
                    "signaling socket closed: more pings and pongs than allowed"
                );
                return Ran::Closing(Some((CloseCode::RATE_LIMITED.0, "rate-limited".into())));
            }
        }
        if !inbound.is_empty() {
            // One boxed future per read, not per message: the channel's send futures stay out of the task.
            Box::pin(forward(hub, seat, std::mem::take(&mut inbound))).await;
        }
        if !pong.is_empty() {
            let written = socket.write_all(&pong, given.write_wait()).await;
            pong = Vec::new();
            if let Err(error) = written {
                return Ran::Closing(error.close());
            }
        }
        match read {
            Read::More => {
                if placing && seat.joined {
                    if let Some(to) = hub.seat_worker(seat).filter(|to| crate::shards::worker() != Some(*to)) {
                        return Ran::Move(to);
                    }
                }
            }
            // The client's close: answered with its own code (RFC 6455 §5.5.1), then the connection ends.
            Read::Closed(Some(code)) => return Ran::Closing(Some((code, String::new()))),
            Read::Closed(None) | Read::Failed(None) => return Ran::Closing(None),
            Read::Failed(Some(error)) => {
                tracing::debug!(conn = seat.conn.get(), %error, "signaling socket broke the framing rules");
                return Ran::Closing(Some((error.close_code(), error.reason().into())));
            }
        }
    }
}

/// Pings and pongs a client may send: a burst of 100, then 10 a second. Browsers send none and libraries one every
/// few seconds (besides answering the hub's heartbeat); past it the socket is closed 4100, as a flood of messages
/// is: the frames are free to send, and a stream of them kept a core busy reading.
fn control_rate() -> source::Rate {
    source::Rate::new(100, Duration::from_millis(100))
}

/// A message for the cluster's hub task, taken out of the read buffer.
enum Inbound {
    Text(Bytes),
    Binary,
    Activity,
}

/// Hands what one read brought to the cluster's hub task, in order.
async fn forward(hub: &HubHandle, seat: &mut Seat, inbound: Vec<Inbound>) {
    for message in inbound {
        match message {
            Inbound::Text(text) => hub.text(seat, text).await,
            Inbound::Binary => hub.binary(seat).await,
            Inbound::Activity => hub.activity(seat).await,
        }
    }
}

/// A ping or a pong: the client is there.
fn activity(hub: &HubHandle, seat: &Seat, inbound: &mut Vec<Inbound>) {
    match hub.shards() {
        Some(shards) => shards.activity(seat),
        None => inbound.push(Inbound::Activity),
    }
}

/// The clock for the frames of one read: read at the first that needs it and shared by the rest of the batch (a read
/// brings many frames under load, and two clock reads per frame were 2 % of a signal's CPU). Local to one poll, so
/// an idle socket does not keep it.
struct Clock(Option<signal::Now>);

impl Clock {
    fn now(&mut self) -> signal::Now {
        *self.0.get_or_insert_with(now)
    }
}

/// Why a write did not finish.
enum WriteError {
    /// The connection is gone.
    Failed,
    /// The peer took nothing for a whole heartbeat interval: it does not read (closed 4104).
    TooSlow,
}

impl WriteError {
    fn close(self) -> Option<(u16, String)> {
        match self {
            Self::Failed => None,
            Self::TooSlow => Some((CloseCode::TOO_SLOW.0, "too-slow".into())),
        }
    }
}

/// What one read brought.
enum Read {
    /// Frames were handed on (or none were complete yet): read again.
    More,
    /// The client's close frame with its code (1000 if it gave none), or `None`: the stream ended.
    Closed(Option<u16>),
    /// The stream failed (`None`) or the client broke the framing rules.
    Failed(Option<FrameError>),
}

struct Socket<S> {
    io: S,
    decoder: Decoder,
    /// The part of a write the kernel did not take at once. Unallocated otherwise.
    unsent: Vec<u8>,
    /// What is left of its pings and pongs ([`control_rate`]): it moves with the socket to its room's worker (kept
    /// by the task that served it, a move gave it a fresh burst).
    controls: source::Bucket,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Tells this socket from the others for [`coalesce`]: its address, fixed while its task lives.
    fn id(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Waits for bytes, then hands every complete frame in them to `on_event`.
    async fn read<F: FnMut(Event<'_>, &mut Clock)>(&mut self, on_event: &mut F) -> Read {
        poll_fn(|cx| self.poll_read(cx, on_event)).await
    }

    fn poll_read<F: FnMut(Event<'_>, &mut Clock)>(&mut self, cx: &mut Context<'_>, on_event: &mut F) -> Poll<Read> {
        READ_BUF.with_borrow_mut(|buf| {
            let mut read = ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Read::Failed(None)),
                Poll::Ready(Ok(())) => {}
            }
            let n = read.filled().len();
            let Some(chunk) = buf.get_mut(..n).filter(|c| !c.is_empty()) else {
                return Poll::Ready(Read::Closed(None));
            };
            coalesce::socket_io(self.id());
            let mut close = None;
            let mut clock = Clock(None);
            let fed = self.decoder.feed(chunk, &mut |event| match event {
                Event::Close(c) => close = Some(c.map_or(1000, |(code, _)| code)),
                other => on_event(other, &mut clock),
            });
            Poll::Ready(match (fed, close) {
                (Err(error), _) => Read::Failed(Some(error)),
                (Ok(()), Some(code)) => Read::Closed(Some(code)),
                (Ok(()), None) => Read::More,
            })
        })
    }

    /// Writes what is queued (at most [`BATCH_FRAMES`] frames or [`BATCH_BYTES`], then comes back) in one system
    /// call from the thread's buffer. `Some` is the close to send: the hub's, or 4104 when the hub let go of a
    /// socket too slow to read.
    async fn write_queued(
        &mut self,
        outbox: &Outbox,
        write_wait: Duration,
    ) -> Result<Option<(u16, String)>, WriteError> {
        let mut close = None;
        poll_fn(|cx| {
            Poll::Ready(WRITE_BUF.with_borrow_mut(|buf| {
                buf.clear();
                let mut fed = 0;
                loop {
                    match outbox.try_pop() {
                        Ok(Some(ToSocket::Text(text))) => {
                            websocket::text_frame(&text, buf);
                            fed += 1;
                            if fed >= BATCH_FRAMES || buf.len() >= BATCH_BYTES {
                                // More may be queued: come back after this batch.
                                outbox.wake();
                                break;
                            }
                        }
                        Ok(Some(ToSocket::Ping)) => buf.extend_from_slice(&websocket::PING_FRAME),
                        Ok(Some(ToSocket::Close(code, reason))) => {
                            close = Some((code.0, reason));
                            break;
                        }
                        Ok(None) => break,
                        // The hub let go of us: too slow (at shutdown its 4202 close came first).
                        Err(()) => {
                            close = Some((CloseCode::TOO_SLOW.0, "too-slow".into()));
                            break;
                        }
                    }
                }
                let written = self.write_now(cx, buf);
                // A batch is a frame or two most of the time; a large one is not kept for the next.
                if buf.capacity() > READ_CHUNK {
                    *buf = Vec::new();
                }
                written
            }))
        })
        .await?;
        self.finish(write_wait).await?;
        Ok(close)
    }

    /// Writes `bytes` and waits until they are out.
    async fn write_all(&mut self, bytes: &[u8], wait: Duration) -> Result<(), WriteError> {
        poll_fn(|cx| Poll::Ready(self.write_now(cx, bytes))).await?;
        self.finish(wait).await
    }

    /// Writes as much of `bytes` as the kernel takes now; keeps the rest in `unsent` for [`Self::finish`].
    fn write_now(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Result<(), WriteError> {
        coalesce::socket_io(self.id());
        if !self.unsent.is_empty() {
            self.unsent.extend_from_slice(bytes);
            return Ok(());
        }
        let mut at = 0;
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            match Pin::new(&mut self.io).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(WriteError::Failed),
                Poll::Ready(Ok(n)) => at += n,
                Poll::Pending => {
                    self.unsent.extend_from_slice(rest);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Writes what the kernel did not take at once, and flushes. A peer that takes nothing for `wait` (a whole
    /// heartbeat interval) does not read: stop waiting on it. The timer is armed only when the write does not
    /// finish at once (arming one per batch was 8 % of a relayed signal's instructions).
    async fn finish(&mut self, wait: Duration) -> Result<(), WriteError> {
        let mut done = std::pin::pin!(poll_fn(|cx| self.poll_finish(cx)));
        let result = match poll_fn(|cx| Poll::Ready(done.as_mut().poll(cx))).await {
            Poll::Ready(result) => result,
            Poll::Pending => Box::pin(tokio::time::timeout(wait, done))
                .await
                .unwrap_or(Err(WriteError::TooSlow)),
        };
        // Done: free the buffer. Not done: what is left stays first in line, so that a close frame written next
        // does not land inside a half-written frame.
        if self.unsent.is_empty() {
            self.unsent = Vec::new();
        }
        result
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        while !self.unsent.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.unsent) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteError::Failed)),
                Poll::Ready(Ok(n)) => {
                    self.unsent.drain(..n);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.io)
            .poll_flush(cx)
            .map(|r| r.map_err(|_| WriteError::Failed))
    }

    /// Ends the connection: `before` (frames still to say), our close frame, then the client's answer or the end
    /// of its stream (RFC 6455 §7.1.1: the server closes the TCP connection), each waited for at most
    /// [`CLOSE_WAIT`] and [`CLOSE_READS`].
    async fn close(&mut self, code: u16, reason: &str, before: &[u8]) {
        let mut frames = before.to_vec();
        // 1005 and 1006 are never sent (§7.4.1): a close without a code is answered with 1000.
        let code = if matches!(code, 1005 | 1006) { 1000 } else { code };
        websocket::close_frame(code, reason, &mut frames);
        if self.write_all(&frames, CLOSE_WAIT).await.is_ok() && !self.decoder.closed() {
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                for _ in 0..CLOSE_READS {
                    if !matches!(self.read(&mut |_, _| {}).await, Read::More) {
                        break;
                    }
                }
            })
            .await;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx))).await;
    }
}

/// The refusal of a socket the hub never took (before any session): serde_json's order of keys (sorted), unlike the
/// hub's frames; kept as it is, since the bytes are part of the protocol clients see.
pub(crate) fn error_frame(refusal: &Refusal) -> String {
    serde_json::json!({"seq": 0, "type": "error", "code": refusal.code.as_str(), "message": refusal.message})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_socket_gets_its_error_with_seq_0() {
        let refusal = Refusal::new(signal::ErrorCode::TooManyConnections, "Too \"many\".");
        assert_eq!(
            error_frame(&refusal),
            r#"{"code":"too-many-connections","message":"Too \"many\".","seq":0,"type":"error"}"#
        );
    }
}
