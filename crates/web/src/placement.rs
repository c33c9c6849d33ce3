//! Where a signaling socket is served: by the worker thread that holds its room, so that a signal between two peers
//! of a room never leaves that thread (issue 14).
//!
//! The kernel hands each connection to whichever worker accepts it, so the two peers of a room land on different
//! workers half the time on two. The room's shard then takes signals from both threads, and every signal between
//! them wakes the other thread (a system call on each side and a trip through the other thread's reactor): with two
//! workers on two cores a paced signal cost 1.36x the CPU it costs with one; placed by room, 1.24x, and with
//! `--redis` 0.64–0.88x what it cost unplaced (docs/benchmarks.md).
//!
//! When the upgrade names its room (`/ws?room=…` as the SDK's joins do, or `/ws?resuming=…` as its resumes do: a
//! session lives in its room's shard), the socket moves before it is served: the
//! worker that accepted it lets go of the connection ([`Connection::detach`]) and posts it to the room's worker,
//! which registers it with its own reactor ([`Connection::attach`]) and runs the socket's task there. The room's
//! worker is the one whose home shard is the room's: with the in-process hub, shard `room % shards` on worker
//! `shard % workers`; with `--redis` and the hub on the workers, the worker running the room's hub task. A move
//! costs one cross-thread wake per socket, once; the socket's session, limits and frames are untouched (it has none
//! yet). A socket without a room in its URL (a client that names its room in its join frame only, or its session in
//! its resume frame only) starts where it arrived and moves right after the read whose `join` or `resume` placed it
//! in its shard, with everything its task held ([`crate::ws::Joined`]); the hub knows it by its outbox, which moves
//! with it. A socket whose connection cannot move (an in-memory stream in tests) is served where it is, and so is
//! one whose room's worker has not started.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::ws::{serve_socket, Conn, Start};

/// A connection the web side serves, which a signaling socket may move to another worker thread with.
///
/// Why two steps: tokio registers a socket with the reactor of the thread that created it, so a move lets go of that
/// reactor on the thread it leaves and registers with the reactor of the thread it reaches.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Lets go of the calling thread's reactor; nothing polls the connection until [`Connection::attach`]. On an
    /// error it is served where it is (if the reactor refused to let go, it is lost and closes at its first read).
    fn detach(&mut self) -> io::Result<()>;
    /// Registers with the calling thread's reactor, after a [`Connection::detach`].
    fn attach(&mut self) -> io::Result<()>;
}

/// An in-memory stream is bound to no reactor: it moves as it is.
impl Connection for tokio::io::DuplexStream {
    fn detach(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn attach(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tokio `TcpStream` cannot be taken out of its reactor in place: it stays where it was accepted (the server hands
/// its connections over as `server::Tcp`, which can).
impl Connection for tokio::net::TcpStream {
    fn detach(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn attach(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The upgraded connection as hyper gives it when its type is not the one served (never, as long as
/// [`crate::Web::serve_connection`] is the only way in): it stays.
impl Connection for TokioIo<hyper::upgrade::Upgraded> {
    fn detach(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn attach(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Takes the connection back out of hyper after the upgrade, as the type it was served as: set per connection by
/// [`crate::Web::serve_connection`], which knows that type, for the upgrade handler, which does not.
#[derive(Clone, Copy)]
pub(crate) struct TakeBack(pub fn(hyper::upgrade::Upgraded) -> Box<dyn Connection>);

impl TakeBack {
    pub(crate) fn of<IO: Connection>() -> Self {
        Self(take_back::<IO>)
    }
}

fn take_back<IO: Connection>(upgraded: hyper::upgrade::Upgraded) -> Box<dyn Connection> {
    match upgraded.downcast::<TokioIo<IO>>() {
        Ok(parts) if parts.read_buf.is_empty() => Box::new(parts.io.into_inner()),
        Ok(parts) => Box::new(Rewind {
            pending: parts.read_buf,
            inner: parts.io.into_inner(),
        }),
        Err(upgraded) => Box::new(TokioIo::new(upgraded)),
    }
}

/// A connection with bytes hyper read past the upgrade request (a client that sent frames before it saw the 101):
/// they are read first.
struct Rewind<IO> {
    pending: Bytes,
    inner: IO,
}

impl<IO: Connection> Connection for Rewind<IO> {
    fn detach(&mut self) -> io::Result<()> {
        self.inner.detach()
    }

    fn attach(&mut self) -> io::Result<()> {
        self.inner.attach()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(self.pending.get(..n).unwrap_or_default());
            self.pending.advance(n);
            if self.pending.is_empty() {
                // An empty slice still holds hyper's whole read buffer (8 KiB): an idle socket must not.
                self.pending = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A socket on its way to another worker.
struct Moved {
    start: Start,
    conn: Conn,
}

/// Each worker's mailbox for sockets moving to it: one slot per worker, each filled as its worker starts. Read once
/// per moving socket, never per message; no lock.
#[derive(Default)]
pub(crate) struct Workers {
    mailboxes: OnceLock<Box<[OnceLock<mpsc::UnboundedSender<Moved>>]>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("count", &self.count()).finish()
    }
}

impl Workers {
    /// On worker `index` of `count`, inside its runtime as it starts: opens its mailbox and serves what arrives in
    /// it, here.
    pub(crate) fn started(&self, index: usize, count: usize) {
        let slots = self
            .mailboxes
            .get_or_init(|| (0..count.max(1)).map(|_| OnceLock::new()).collect());
        let Some(slot) = slots.get(index) else { return };
        let (tx, mut rx) = mpsc::unbounded_channel::<Moved>();
        if slot.set(tx).is_err() {
            return;
        }
        tokio::task::spawn_local(async move {
            while let Some(Moved { mut start, conn }) = rx.recv().await {
                if let Err(error) = start.connection().attach() {
                    tracing::debug!(ip = %conn.ip, %error, "a moved signaling socket could not attach");
                    if !start.in_hub() {
                        continue;
                    }
                }
                tokio::spawn(serve_socket(start, conn));
            }
        });
    }

    /// The number of workers (0 before the first starts, or when sockets are not served by the server's workers).
    pub(crate) fn count(&self) -> usize {
        self.mailboxes.get().map_or(0, |slots| slots.len())
    }

    /// Serves the socket on worker `to`, or here: when `to` is `None` or this worker, when that worker has not
    /// started, or when the connection cannot move.
    pub(crate) fn place(&self, to: Option<usize>, mut start: Start, conn: Conn) {
        let mailbox = to
            .filter(|to| crate::shards::worker() != Some(*to))
            .and_then(|to| self.mailboxes.get()?.get(to)?.get());
        let Some(mailbox) = mailbox else {
            tokio::spawn(serve_socket(start, conn));
            return;
        };
        if start.connection().detach().is_err() {
            tokio::spawn(serve_socket(start, conn));
            return;
        }
        if let Err(mpsc::error::SendError(Moved { mut start, conn })) = mailbox.send(Moved { start, conn }) {
            // That worker has stopped (the server is shutting down): back to this thread's reactor.
            if start.connection().attach().is_ok() || start.in_hub() {
                tokio::spawn(serve_socket(start, conn));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_read_past_the_upgrade_come_first() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = Rewind {
            pending: Bytes::from_static(b"abc"),
            inner: near,
        };
        far.write_all(b"def").await.unwrap();
        let mut got = [0u8; 2];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ab", "a read smaller than what is pending takes part of it");
        let mut rest = [0u8; 4];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"cdef", "then the rest, then the stream");
        io.write_all(b"out").await.unwrap();
        let mut out = [0u8; 3];
        far.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"out");
    }
}
