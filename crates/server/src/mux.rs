//! One TCP port for everything: each connection is sorted by its first bytes.
//!
//! - `0x16` (a TLS handshake record), on a port with TLS: terminate TLS, then by ALPN — `stun.turn` (RFC 7443) →
//!   TURN over TLS, `http/1.1` → HTTPS/WSS, `acme-tls/1` → an ACME CA's TLS-ALPN-01 validation (RFC 8737), closed
//!   after the handshake; without ALPN, by the first decrypted byte (a STUN header → TURN, anything else → HTTP).
//! - `0x00`/`0x01` (a STUN message type): TURN over TCP.
//! - an ASCII letter (an HTTP method): HTTP, or a redirect to HTTPS on a port with TLS.
//! - anything else, or nothing within the sniff timeout: closed.
//!
//! Sorting happens in the connection's own task, so a silent or slow client never holds the listener.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use turn::{FiveTuple, Transport};

use crate::budget::ConnectionPermit;
use crate::stream;
use crate::tls_stream::TlsStream;
use crate::worker::Worker;

/// A byte stream handed to the HTTP side, which may move it to another worker thread: a signaling socket is served
/// by the worker that holds its room, so that a signal between two peers of a room never leaves that thread.
///
/// Why two steps: tokio registers a socket with the reactor of the thread that created it. Moving means letting go
/// of that reactor on the thread it came from ([`Io::detach`]) and registering with the reactor of the thread it goes
/// to ([`Io::attach`]).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Lets go of the calling thread's reactor. Nothing may poll the stream until [`Io::attach`]. A stream that
    /// cannot move (already detached) is left as it was; if the reactor refuses to let go, the connection is lost.
    fn detach(&mut self) -> io::Result<()>;
    /// Registers with the calling thread's reactor, after a [`Io::detach`] (on this thread or another).
    fn attach(&mut self) -> io::Result<()>;
}

/// A TCP connection that can move between worker threads (see [`Io`]), holding its share of the connection budget
/// for as long as the socket lives: through an upgrade to a WebSocket and a move to another worker.
#[derive(Debug)]
pub struct Tcp {
    state: TcpState,
    _permit: ConnectionPermit,
}

#[derive(Debug)]
enum TcpState {
    /// Registered with a thread's reactor: served.
    Registered(TcpStream),
    /// Between two threads.
    Detached(std::net::TcpStream),
    /// A move failed half way; the descriptor is closed.
    Lost,
}

impl crate::stream::TcpSocket for Tcp {
    fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.state {
            TcpState::Registered(s) => Some(s.as_raw_fd()),
            TcpState::Detached(s) => Some(s.as_raw_fd()),
            TcpState::Lost => None,
        }
    }
}

impl<S: crate::stream::TcpSocket> crate::stream::TcpSocket for Prefixed<S> {
    fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.tcp_fd()
    }
}

impl Tcp {
    pub(crate) fn new(stream: TcpStream, permit: ConnectionPermit) -> Self {
        Self {
            state: TcpState::Registered(stream),
            _permit: permit,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.state {
            TcpState::Registered(stream) => Ok(Pin::new(stream)),
            TcpState::Detached(_) | TcpState::Lost => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Io for Tcp {
    fn detach(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.state, TcpState::Lost) {
            // `into_std` leaves the descriptor non-blocking.
            TcpState::Registered(stream) => {
                self.state = TcpState::Detached(stream.into_std()?);
                Ok(())
            }
            other => {
                self.state = other;
                Err(io::ErrorKind::NotConnected.into())
            }
        }
    }

    fn attach(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.state, TcpState::Lost) {
            TcpState::Detached(stream) => {
                self.state = TcpState::Registered(TcpStream::from_std(stream)?);
                Ok(())
            }
            TcpState::Registered(stream) => {
                self.state = TcpState::Registered(stream);
                Ok(())
            }
            TcpState::Lost => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write(cx, data),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

/// A boxed stream moves as its contents do: the mux boxes a TLS session once its handshake is done, so that the
/// connection's task does not keep a session's worth of state inline whatever the connection turns out to be.
impl<S: Io + ?Sized> Io for Box<S> {
    fn detach(&mut self) -> io::Result<()> {
        (**self).detach()
    }

    fn attach(&mut self) -> io::Result<()> {
        (**self).attach()
    }
}

impl<S: Io> Io for Prefixed<S> {
    fn detach(&mut self) -> io::Result<()> {
        self.inner.detach()
    }

    fn attach(&mut self) -> io::Result<()> {
        self.inner.attach()
    }
}

/// How an HTTP connection reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    Http,
    Https,
    /// Plain HTTP on a port that offers TLS: answer with a redirect to HTTPS.
    RedirectToHttps,
}

/// Serves HTTP on connections the mux sorted as HTTP. Implemented by the binary over the web crate, so this crate
/// needs no HTTP stack.
pub trait HttpHandler: Send + Sync + 'static {
    fn serve(&self, io: Box<dyn Io>, remote: SocketAddr, scheme: HttpScheme) -> Pin<Box<dyn Future<Output = ()>>>;

    /// Called once on each worker thread (`index` of `workers`) as it starts, inside its runtime and `LocalSet` (so
    /// `spawn_local` works), before it serves a connection: where the HTTP side starts work that belongs with that
    /// worker's sockets.
    fn worker_started(&self, _index: usize, _workers: usize) {}
}

/// ALPN protocol id of TURN over TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

pub(crate) async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, with_tls: bool) {
    stream::accept_each(worker, listener, move |worker, tcp, client, server, permit| {
        sort(worker, tcp, client, server, with_tls, permit)
    })
    .await
}

async fn sort(
    worker: Rc<Worker>,
    tcp: TcpStream,
    client: SocketAddr,
    server: SocketAddr,
    with_tls: bool,
    permit: ConnectionPermit,
) {
    // One deadline for the whole sorting — first byte, TLS handshake, first decrypted byte — so a client trickling
    // bytes through each step cannot hold the connection three times as long.
    let deadline = tokio::time::Instant::now() + worker.shared().config.tls_handshake_timeout;
    let mut first = [0u8; 1];
    let peeked = match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => first[0],
        _ => return,
    };
    let http = worker.shared().http.clone();
    match peeked {
        0x16 if with_tls => {
            // Boxed, here and below: what a connection does not use (a handshake done, another branch's state) is not
            // kept in its task for its whole life.
            let handshake = Box::pin(tokio::time::timeout_at(
                deadline,
                crate::tls_stream::accept(Tcp::new(tcp, permit), worker.shared().mux_tls.clone()),
            ));
            let failure = match handshake.await {
                Ok(Ok(tls)) => return Box::pin(sort_tls(worker, http, Box::new(tls), client, server, deadline)).await,
                Ok(Err(e)) => crate::handshakes::HandshakeFailure::of(&e),
                Err(_) => crate::handshakes::HandshakeFailure::Timeout,
            };
            let self_signed = worker.shared().certs.is_self_signed();
            worker
                .shared()
                .handshakes
                .record(std::time::Instant::now(), client, server, failure, self_signed);
        }
        b if is_stun_start(b) => {
            let turn = FiveTuple {
                client,
                server,
                transport: Transport::Tcp,
            };
            Box::pin(stream::serve::<TcpStream>(worker, tcp, turn)).await;
            drop(permit);
        }
        b'A'..=b'Z' => {
            let scheme = if with_tls {
                HttpScheme::RedirectToHttps
            } else {
                HttpScheme::Http
            };
            serve_http(http, Box::new(Tcp::new(tcp, permit)), client, scheme).await;
        }
        _ => tracing::debug!(%client, "neither TLS, STUN nor HTTP; closing"),
    }
}

/// A TLS connection, after its handshake: TURN (by ALPN, or by its first decrypted byte), an ACME validation, or HTTPS.
async fn sort_tls(
    worker: Rc<Worker>,
    http: Option<Arc<dyn HttpHandler>>,
    mut tls: Box<TlsStream<Tcp>>,
    client: SocketAddr,
    server: SocketAddr,
    deadline: tokio::time::Instant,
) {
    let turn = FiveTuple {
        client,
        server,
        transport: Transport::Tls,
    };
    match tls.alpn_protocol() {
        Some(ALPN_STUN_TURN) => stream::serve(worker, tls, turn).await,
        // RFC 8737 §3: the validation is the handshake itself; the CA closes without sending data.
        Some(crate::tls::ALPN_ACME_TLS) => tracing::debug!(%client, "TLS-ALPN-01 validation handshake"),
        Some(_) => serve_http(http, tls, client, HttpScheme::Https).await,
        None => {
            let mut byte = [0u8; 1];
            match tokio::time::timeout_at(deadline, tls.read(&mut byte)).await {
                Ok(Ok(1)) => {}
                _ => return,
            }
            let io = Prefixed::new(byte[0], tls);
            if is_stun_start(byte[0]) {
                stream::serve(worker, io, turn).await;
            } else {
                serve_http(http, Box::new(io), client, HttpScheme::Https).await;
            }
        }
    }
}

/// The first two bits of a STUN message type are zero; ChannelData (`01…`) never opens a connection, but a TURN
/// client may start with it after a reconnect, so `0x40..=0x7f` counts too.
fn is_stun_start(b: u8) -> bool {
    b <= 0x01 || ((0x40..=0x7f).contains(&b) && !b.is_ascii_alphabetic())
}

async fn serve_http(http: Option<Arc<dyn HttpHandler>>, io: Box<dyn Io>, client: SocketAddr, scheme: HttpScheme) {
    match http {
        Some(handler) => handler.serve(io, client, scheme).await,
        None => tracing::debug!(%client, "HTTP on a port without an HTTP service; closing"),
    }
}

/// A stream whose first byte was already read (to sort the connection) and is given back on the first read.
struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(first: u8, inner: S) -> Self {
        Self {
            first: Some(first),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(b) = self.first {
            if buf.remaining() > 0 {
                buf.put_slice(&[b]);
                self.first = None;
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_first_bytes() {
        assert!(
            is_stun_start(0x00) && is_stun_start(0x01),
            "STUN request/indication types"
        );
        assert!(is_stun_start(0x40), "ChannelData");
        for method in [b'G', b'P', b'H', b'O', b'D', b'C'] {
            assert!(!is_stun_start(method), "HTTP method {}", method as char);
        }
        assert!(!is_stun_start(0x16), "TLS");
    }
}
