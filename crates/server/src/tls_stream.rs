//! TLS on the server's connections (TURN over TLS, HTTPS, WSS) that keeps no buffers of its own between reads.
//!
//! Why not `tokio_rustls`: its session (rustls' buffered `ServerConnection`) reads the socket into a 4 KiB buffer of
//! its own and keeps it for the connection's life, idle or not — 4.5 KB of the 7.8 KB of heap a session held, measured
//! with a counting allocator over rustls 0.23.46. An idle WSS socket or TURN-over-TLS allocation is mostly that.
//! Here rustls' unbuffered API is driven directly: ciphertext is read into the worker thread's buffer (borrowed for
//! one poll, never across an `await`, like the TURN and WebSocket readers) and processed there. Between reads a
//! connection keeps only a record it has the start of, plaintext its reader had no room for, and ciphertext the
//! socket would not take yet; each is freed once handled.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, WriteTraffic};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::mux::Io;

/// The largest TLS record on the wire: 16 KiB of plaintext, TLS 1.2's 2 KiB of allowed expansion, a 5-byte header.
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;
/// Read buffer: the start of a record kept from the last read, and room for a whole record after it.
const READ_SCRATCH: usize = 2 * MAX_RECORD;
/// What a handshake may have read and not yet processed. A client sends its ClientHello (a few KiB, 3 with a
/// post-quantum key share, in one plaintext record of at most 16 KiB) and its Finished, never a certificate (no
/// client authentication), so one record is plenty. rustls would take handshake messages of up to 64 KiB: held for
/// that, and grown by doubling, a stranger's handshake kept 128 KiB per connection before anything was
/// authenticated; with two records, a ClientHello declared at 60 000 bytes and stalled kept 36 KiB for the
/// handshake timeout (450 MB over the connection limit).
const MAX_HANDSHAKE_HELD: usize = 16 * 1024 + 5;
/// Bytes every unfinished handshake of the process may hold at once (about 4 000 stalled at their limit); beyond
/// it, a handshake that needs more is refused rather than the server's memory taken by strangers.
const HANDSHAKE_BYTES_BUDGET: usize = 64 * 1024 * 1024;
static HANDSHAKE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A handshake's share of a byte budget (the process's: [`HANDSHAKE_BYTES_BUDGET`]): what its buffer holds, given
/// back when it ends.
struct HandshakeBytes<'a> {
    total: &'a AtomicUsize,
    budget: usize,
    charged: usize,
}

impl<'a> HandshakeBytes<'a> {
    fn new(total: &'a AtomicUsize, budget: usize) -> Self {
        Self {
            total,
            budget,
            charged: 0,
        }
    }

    /// Charges the buffer's growth to `capacity`; false (and nothing charged) past the budget.
    fn grow_to(&mut self, capacity: usize) -> bool {
        let more = capacity.saturating_sub(self.charged);
        if self.total.fetch_add(more, Ordering::Relaxed) + more > self.budget {
            self.total.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.charged += more;
        true
    }
}

impl Drop for HandshakeBytes<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

/// Plaintext encrypted per write: two full records. A larger write is taken in several.
const MAX_WRITE: usize = 32 * 1024;
/// Ciphertext of one write: its records' headers, tags and padding on top of the plaintext.
const WRITE_SCRATCH: usize = MAX_WRITE + 1024;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SCRATCH].into_boxed_slice());
    /// Plaintext gathered from a vectored write, then its ciphertext.
    static WRITE_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_WRITE + WRITE_SCRATCH].into_boxed_slice());
}

/// A server-side TLS session over `S`, after its handshake ([`accept`]).
pub struct TlsStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet processed: the start of a record (or, right after the handshake, whatever the
    /// client sent behind its last handshake message, which may be whole records: see `unprocessed`).
    held: Vec<u8>,
    /// `held` may hold whole records: process it before reading the socket.
    unprocessed: bool,
    /// Plaintext decrypted but not yet read, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext owed to the socket, from `out_at`: what a write could not send at once, alerts, key updates.
    out: Vec<u8>,
    out_at: usize,
    /// The client's close_notify arrived, or the socket's end: reads return end of stream.
    read_closed: bool,
    close_notify_sent: bool,
    /// rustls returned an error: the session is over, and rustls is not called again (its alert, if any, is owed).
    failed: bool,
}

impl<S: crate::stream::TcpSocket> crate::stream::TcpSocket for TlsStream<S> {
    fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        self.io.tcp_fd()
    }
}

/// Runs a TLS handshake on `io`. rustls' errors travel inside the `io::Error` (kind `InvalidData`), as they do with
/// `tokio_rustls`, so [`crate::HandshakeFailure::of`] names them; a client that hangs up gives `UnexpectedEof`.
/// The caller bounds it in time.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<TlsStream<S>> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut held = Vec::new();
    let mut charged = HandshakeBytes::new(&HANDSHAKE_BYTES, HANDSHAKE_BYTES_BUDGET);
    let mut plain = Vec::new();
    let mut out = Vec::new();
    let mut read_closed = false;
    loop {
        let processed = process(
            &mut conn,
            &mut out,
            &mut held,
            &mut |p| plain.extend_from_slice(p),
            None,
        );
        let (consumed, state) = match processed {
            Ok(done) => done,
            Err(e) => {
                // The alert rustls queued for the client (why the handshake failed), sent on a best-effort basis.
                let _ = drain_alerts(&mut conn, &mut out, &mut held);
                let _ = io.write_all(&out).await;
                return Err(e);
            }
        };
        held.drain(..consumed.min(held.len()));
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
        match state {
            Processed::Traffic => break,
            Processed::NeedMore => {
                if held.len() >= MAX_HANDSHAKE_HELD {
                    return Err(invalid("a TLS handshake message larger than a client sends"));
                }
                // Exact steps, not doubling: the buffer stays within the bound.
                held.reserve_exact(4096.min(MAX_HANDSHAKE_HELD - held.len()));
                if !charged.grow_to(held.capacity()) {
                    return Err(invalid(
                        "the server holds as many unfinished TLS handshakes as it takes",
                    ));
                }
                if io.read_buf(&mut held).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            // close_notify right behind the client's Finished (a request sent, then the sending half closed, as a
            // client piping a request in does): the handshake is done, what came with it is read, then EOF.
            Processed::PeerClosed if !conn.is_handshaking() => {
                read_closed = true;
                held = Vec::new();
                break;
            }
            Processed::PeerClosed => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    let unprocessed = !held.is_empty();
    Ok(TlsStream {
        io,
        conn,
        held: if unprocessed { held } else { Vec::new() },
        unprocessed,
        plain_at: 0,
        plain: if plain.is_empty() { Vec::new() } else { plain },
        out: Vec::new(),
        out_at: 0,
        read_closed,
        close_notify_sent: false,
        failed: false,
    })
}

impl<S> TlsStream<S> {
    /// The protocol the handshake agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }
}

/// Where [`process`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Processed {
    /// Handshake done, every whole record handled: application data may flow both ways.
    Traffic,
    /// The handshake needs more from the client.
    NeedMore,
    /// The client sent close_notify.
    PeerClosed,
}

/// Encrypts application data once the session may send it.
type OnWrite<'a> = &'a mut dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>) -> io::Result<()>;

/// Handles every whole record in `incoming`: plaintext to `plain`, what rustls has to send (handshake messages,
/// alerts, key updates) appended to `out`; `write`, if given, runs once application data may be sent. Returns how
/// many bytes of `incoming` were consumed: the rest is the start of a record.
fn process(
    conn: &mut UnbufferedServerConnection,
    out: &mut Vec<u8>,
    incoming: &mut [u8],
    plain: &mut dyn FnMut(&[u8]),
    mut write: Option<OnWrite<'_>>,
) -> io::Result<(usize, Processed)> {
    let mut consumed = 0;
    loop {
        let rest = incoming.get_mut(consumed..).unwrap_or_default();
        let status = conn.process_tls_records(rest);
        let discard = status.discard;
        let stop = match status.state.map_err(invalid)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    plain(record.map_err(invalid)?.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(out, |buf| encode.encode(buf))?;
                None
            }
            // The bytes are in `out`, which goes to the socket before anything written later.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                if let Some(write) = write.take() {
                    write(&mut traffic)?;
                }
                Some(Processed::Traffic)
            }
            ConnectionState::BlockedHandshake => Some(Processed::NeedMore),
            ConnectionState::PeerClosed | ConnectionState::Closed => Some(Processed::PeerClosed),
            // Early data is not enabled; a future state is nothing this server asked for.
            _ => Some(Processed::PeerClosed),
        };
        consumed += discard;
        if let Some(stop) = stop {
            return Ok((consumed, stop));
        }
    }
}

/// Appends what `encode` writes to `out`, sized by what it says it needs.
fn encode_into(out: &mut Vec<u8>, mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) -> io::Result<()> {
    let start = out.len();
    let needed = match encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => required_size,
        Err(e) => return Err(invalid(e)),
    };
    out.resize(start + needed, 0);
    let written = encode(out.get_mut(start..).unwrap_or_default()).map_err(invalid)?;
    out.truncate(start + written);
    Ok(())
}

/// After a failed handshake rustls has queued the alert that says why; this takes it (and nothing else). rustls hands
/// out what it has queued before it looks at the buffer, so asking only while something is queued never has it
/// process `held` again (the message that failed) nor an empty buffer while it is part way into a message in `held`.
fn drain_alerts(conn: &mut UnbufferedServerConnection, out: &mut Vec<u8>, held: &mut [u8]) -> io::Result<()> {
    while conn.wants_write() {
        match conn.process_tls_records(held).state.map_err(invalid)? {
            ConnectionState::EncodeTlsData(mut encode) => encode_into(out, |buf| encode.encode(buf))?,
            _ => break,
        }
    }
    Ok(())
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Copies what fits of `data` into `buf`; the rest into `spill`.
fn deliver(buf: &mut ReadBuf<'_>, spill: &mut Vec<u8>, data: &[u8]) {
    let fits = data.len().min(buf.remaining());
    let (now, later) = data.split_at(fits);
    buf.put_slice(now);
    spill.extend_from_slice(later);
}

impl<S> TlsStream<S> {
    /// Runs `write` once the session may send, after handling what `held` holds whole (records that came with the
    /// handshake's end; their plaintext waits for a read). rustls is always given `held`, never another buffer:
    /// a handshake message split across records stays there, and rustls remembers how far into it it has read.
    fn process_held(&mut self, write: OnWrite<'_>) -> io::Result<Processed> {
        if self.failed {
            return Err(failed());
        }
        let plain = &mut self.plain;
        let processed = process(
            &mut self.conn,
            &mut self.out,
            &mut self.held,
            &mut |p| plain.extend_from_slice(p),
            Some(write),
        );
        let (consumed, state) = self.fail_on_error(processed)?;
        let consumed = consumed.min(self.held.len());
        self.held.drain(..consumed);
        self.unprocessed = false;
        Ok(state)
    }
}

impl<S> TlsStream<S> {
    /// An error from rustls ends the session: its alert (why) is owed to the client, and rustls is not called again —
    /// `held` no longer matches what rustls last saw.
    fn fail_on_error<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if result.is_err() {
            self.failed = true;
            let _ = drain_alerts(&mut self.conn, &mut self.out, &mut []);
        }
        result
    }
}

fn failed() -> io::Error {
    invalid("the TLS session failed")
}

impl<S: AsyncWrite + Unpin> TlsStream<S> {
    /// Sends the ciphertext owed; ready once there is none. What was sent is freed.
    fn poll_send_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(owed) = self.out.get(self.out_at..).filter(|owed| !owed.is_empty()) {
            match Pin::new(&mut self.io).poll_write(cx, owed) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out_at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypts `data` (at most [`MAX_WRITE`] of it) into `cipher`, sends what the socket takes now and owes the rest.
    /// Returns how much of `data` was taken.
    fn encrypt_and_send(&mut self, cx: &mut Context<'_>, data: &[u8], cipher: &mut [u8]) -> io::Result<usize> {
        let data = data.get(..MAX_WRITE).unwrap_or(data);
        let mut sealed = 0;
        let mut write = |traffic: &mut WriteTraffic<'_, ServerConnectionData>| {
            sealed = traffic.encrypt(data, cipher).map_err(|e: EncryptError| invalid(e))?;
            Ok(())
        };
        let state = self.process_held(&mut write)?;
        if state != Processed::Traffic {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        // Control records queued while processing go first.
        let mut sent = 0;
        if self.out.get(self.out_at..).is_none_or(|owed| owed.is_empty()) {
            while sent < sealed {
                match Pin::new(&mut self.io).poll_write(cx, cipher.get(sent..sealed).unwrap_or_default()) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => sent += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.out.extend_from_slice(cipher.get(sent..sealed).unwrap_or_default());
        Ok(data.len())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(pending) = this.plain.get(this.plain_at..).filter(|p| !p.is_empty()) {
                let fits = pending.len().min(buf.remaining());
                buf.put_slice(pending.get(..fits).unwrap_or_default());
                this.plain_at += fits;
                if this.plain_at == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(failed()));
            }
            // A read never writes: what it makes rustls owe (a key update's answer, an alert) goes out with the next
            // write, flush or shutdown (TLS 1.3 asks a key update's answer before the next application data, not
            // sooner). The socket keeps one waker for writing, and a TURN connection's reader and writer are two
            // tasks: a read that waited to write would take that waker from the writer, which would then never wake.
            let filled_before = buf.filled().len();
            let step = READ_BUF.with_borrow_mut(|scratch| -> Poll<io::Result<()>> {
                let held = this.held.len();
                let Some(front) = scratch.get_mut(..held) else {
                    return Poll::Ready(Err(invalid("a TLS record longer than TLS allows")));
                };
                front.copy_from_slice(&this.held);
                let mut filled = held;
                if !this.unprocessed {
                    let mut read = ReadBuf::new(scratch.get_mut(held..).unwrap_or_default());
                    match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                    if read.filled().is_empty() {
                        this.read_closed = true;
                        // The socket ended without close_notify: fine between records (HTTP/1.1 and TURN frame their
                        // own messages), a truncation inside one.
                        return Poll::Ready(if held == 0 {
                            Ok(())
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        });
                    }
                    filled += read.filled().len();
                }
                this.unprocessed = false;
                let spill = &mut this.plain;
                let processed = process(
                    &mut this.conn,
                    &mut this.out,
                    scratch.get_mut(..filled).unwrap_or_default(),
                    &mut |p| deliver(buf, spill, p),
                    None,
                );
                let (consumed, state) = this.fail_on_error(processed)?;
                if state == Processed::PeerClosed {
                    this.read_closed = true;
                }
                // Kept: the start of the next record, in a buffer of its size.
                let rest = scratch.get(consumed..filled).unwrap_or_default();
                if rest.is_empty() {
                    this.held = Vec::new();
                } else {
                    this.held = rest.to_vec();
                }
                Poll::Ready(Ok(()))
            });
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if buf.filled().len() > filled_before || this.read_closed {
                return Poll::Ready(Ok(()));
            }
            if !this.plain.is_empty() {
                continue;
            }
            // Only a record's start, or records without application data: read on.
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // At most one write's ciphertext is owed at a time: the next waits for the socket.
        std::task::ready!(this.poll_send_owed(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_notify_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(WRITE_BUF.with_borrow_mut(|scratch| {
            let cipher = scratch.get_mut(MAX_WRITE..).unwrap_or_default();
            this.encrypt_and_send(cx, data, cipher)
        }))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_send_owed(cx))?;
        if this.close_notify_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Gathered into one run of records: a record per slice would cost a header and a tag each.
        Poll::Ready(WRITE_BUF.with_borrow_mut(|scratch| {
            let (gathered, cipher) = scratch.split_at_mut(MAX_WRITE);
            let mut len = 0;
            for slice in bufs {
                let room = MAX_WRITE - len;
                let take = slice.len().min(room);
                if let (Some(to), Some(from)) = (gathered.get_mut(len..len + take), slice.get(..take)) {
                    to.copy_from_slice(from);
                }
                len += take;
                if len == MAX_WRITE {
                    break;
                }
            }
            if len == 0 {
                return Ok(0);
            }
            this.encrypt_and_send(cx, gathered.get(..len).unwrap_or_default(), cipher)
        }))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_send_owed(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_notify_sent {
            this.close_notify_sent = true;
            let mut notify = Vec::new();
            let mut close = |traffic: &mut WriteTraffic<'_, ServerConnectionData>| {
                notify.resize(64, 0);
                let n = traffic.queue_close_notify(&mut notify).map_err(invalid)?;
                notify.truncate(n);
                Ok(())
            };
            // A session that cannot send any more (it failed, or closed) just closes the socket. Control records
            // rustls had queued go first.
            let _ = this.process_held(&mut close);
            this.out.extend_from_slice(&notify);
        }
        std::task::ready!(this.poll_send_owed(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<S: Io> Io for TlsStream<S> {
    fn detach(&mut self) -> io::Result<()> {
        self.io.detach()
    }

    fn attach(&mut self) -> io::Result<()> {
        self.io.attach()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tokio::io::{duplex, DuplexStream};
    use tokio_rustls::client::TlsStream as ClientStream;

    fn configs(
        server_alpn: &[&[u8]],
        client_alpn: &[&[u8]],
        tls12: bool,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
        let cert = generated.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der()).expect("key");
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        server.alpn_protocols = server_alpn.iter().map(|p| p.to_vec()).collect();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = client_alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(server), Arc::new(client))
    }

    /// A session over an in-memory pipe of `pipe` bytes (small: reads and writes end anywhere).
    async fn pair(pipe: usize, tls12: bool) -> (TlsStream<DuplexStream>, ClientStream<DuplexStream>) {
        let (server, client) = configs(&[b"http/1.1"], &[b"http/1.1"], tls12);
        let (a, b) = duplex(pipe);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let (server, client) = tokio::join!(accept(a, server), connector.connect(name, b));
        (server.expect("server handshake"), client.expect("client handshake"))
    }

    /// A ClientHello declaring 60 000 bytes, sent in full records: refused once two records are held (before, held
    /// up to 101 KiB in a buffer that grew to 128 KiB).
    #[test]
    fn an_oversized_client_hello_is_refused_within_one_record() {
        run(async {
            let (server, _) = configs(&[b"http/1.1"], &[b"http/1.1"], false);
            let (a, mut b) = duplex(256 * 1024);
            let mut hello = vec![1u8, 0, 0xEA, 0x60]; // ClientHello, 60 000 bytes
            hello.resize(60_004, 0);
            let mut wire = Vec::new();
            for record in hello.chunks(16 * 1024) {
                wire.extend_from_slice(&[22, 3, 1]);
                wire.extend_from_slice(&u16::try_from(record.len()).expect("a record").to_be_bytes());
                wire.extend_from_slice(record);
            }
            b.write_all(&wire).await.expect("write the records");
            let Err(e) = accept(a, server).await else {
                panic!("an oversized handshake was accepted");
            };
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains("larger than a client sends"), "{e}");
        });
    }

    fn holds_nothing(s: &TlsStream<DuplexStream>) -> bool {
        s.held.capacity() == 0 && s.plain.capacity() == 0 && s.out.capacity() == 0
    }

    /// Runs a test's future, failed if it takes a minute (data lost shows as a reader waiting for ever).
    fn run<F: std::future::Future>(f: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(60), f).await })
            .expect("the test did not finish within a minute")
    }

    /// Random messages both ways, written in random cuts through a 1 000-byte pipe, arrive whole and in order; an
    /// idle session then holds no buffer.
    #[test]
    fn data_arrives_whole_both_ways_and_an_idle_session_holds_nothing() {
        for tls12 in [false, true] {
            run(async {
                let (mut server, mut client) = pair(1000, tls12).await;
                assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let sent: Vec<u8> = (0..200_000).map(|_| rng.gen()).collect();
                let cuts: Vec<usize> = (0..400).map(|_| rng.gen_range(1..3000)).collect();
                let up = async {
                    let mut at = 0;
                    for cut in cuts.iter().cycle() {
                        let end = (at + cut).min(sent.len());
                        client.write_all(&sent[at..end]).await.expect("client write");
                        client.flush().await.expect("client flush");
                        at = end;
                        if at == sent.len() {
                            break;
                        }
                    }
                    let mut back = vec![0u8; sent.len()];
                    client.read_exact(&mut back).await.expect("client read");
                    (client, back)
                };
                let echo = async {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 777];
                    while got.len() < sent.len() {
                        let n = server.read(&mut buf).await.expect("server read");
                        assert!(n > 0, "end of stream after {} bytes", got.len());
                        got.extend_from_slice(&buf[..n]);
                    }
                    // Written back in one call per 50 000 and as slices, through both write paths.
                    for chunk in got.chunks(50_000) {
                        let (a, b) = chunk.split_at(chunk.len() / 3);
                        let mut slices = [io::IoSlice::new(a), io::IoSlice::new(b)];
                        let mut rest: &mut [io::IoSlice<'_>] = &mut slices;
                        while !rest.is_empty() {
                            let n = server.write_vectored(rest).await.expect("server write");
                            io::IoSlice::advance_slices(&mut rest, n);
                        }
                    }
                    server.flush().await.expect("server flush");
                    (server, got)
                };
                let ((client, back), (server, got)) = tokio::join!(up, echo);
                assert!(got == sent, "the server read what the client wrote");
                assert!(back == sent, "the client read what the server wrote");
                assert!(
                    holds_nothing(&server),
                    "held {} plain {} out {}",
                    server.held.capacity(),
                    server.plain.capacity(),
                    server.out.capacity()
                );
                drop(client);
            });
        }
    }

    /// A reader with a small buffer gets a whole record over several reads, and the spill is freed after.
    #[test]
    fn a_small_reader_takes_a_record_in_pieces() {
        run(async {
            let (mut server, mut client) = pair(64 * 1024, false).await;
            let sent: Vec<u8> = (0..16_384u32).map(|i| (i % 251) as u8).collect();
            client.write_all(&sent).await.expect("write");
            client.flush().await.expect("flush");
            let mut got = Vec::new();
            let mut buf = [0u8; 100];
            while got.len() < sent.len() {
                let n = server.read(&mut buf).await.expect("read");
                assert!(n > 0 && n <= 100);
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == sent);
            assert!(holds_nothing(&server));
        });
    }

    /// close_notify both ways: each side reads a clean end of stream.
    #[test]
    fn close_notify_ends_the_stream_cleanly_both_ways() {
        run(async {
            let (mut server, mut client) = pair(4096, false).await;
            client.write_all(b"last words").await.expect("write");
            client.shutdown().await.expect("client shutdown");
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("server reads to a clean end");
            assert_eq!(got, b"last words");
            server
                .write_all(b"goodbye")
                .await
                .expect("write after the client's close_notify");
            server.shutdown().await.expect("server shutdown");
            let mut back = Vec::new();
            client
                .read_to_end(&mut back)
                .await
                .expect("client reads to a clean end");
            assert_eq!(back, b"goodbye");
        });
    }

    /// A TLS 1.3 key update asked by the client is answered: traffic flows both ways under the new keys.
    #[test]
    fn a_client_key_update_is_answered() {
        run(async {
            let (mut server, mut client) = pair(4096, false).await;
            for round in 0..3u8 {
                client.get_mut().1.refresh_traffic_keys().expect("key update");
                client.write_all(&[round; 3000]).await.expect("write");
                client.flush().await.expect("flush");
                let mut got = [0u8; 3000];
                server
                    .read_exact(&mut got)
                    .await
                    .expect("server read after the key update");
                assert!(got.iter().all(|&b| b == round));
                server.write_all(&[round + 10; 2000]).await.expect("server write");
                server.flush().await.expect("flush");
                let mut back = [0u8; 2000];
                client.read_exact(&mut back).await.expect("client read");
                assert!(back.iter().all(|&b| b == round + 10));
            }
        });
    }

    /// The reader and the writer in two tasks (as a TURN connection runs them), the writer held back by a slow client
    /// while the client keeps sending: every byte written arrives. (A read that sent what the writer owed took the
    /// socket's one write waker from the writer task, which then slept for ever: this test stalled on that.)
    #[test]
    fn a_reader_and_a_writer_in_two_tasks_both_progress() {
        run(async {
            let (server, client) = pair(2048, false).await;
            let (mut server_reader, mut server_writer) = tokio::io::split(server);
            let (mut client_reader, mut client_writer) = tokio::io::split(client);
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let total = 1_000_000usize;
                    let writer = tokio::task::spawn_local(async move {
                        let chunk = vec![9u8; 5000];
                        let mut sent = 0;
                        while sent < total {
                            server_writer.write_all(&chunk).await.expect("server write");
                            sent += chunk.len();
                        }
                        server_writer.flush().await.expect("flush");
                        server_writer
                    });
                    let reader = tokio::task::spawn_local(async move {
                        let mut buf = vec![0u8; 4096];
                        let mut got = 0;
                        while got < 200 * 100 {
                            let n = server_reader.read(&mut buf).await.expect("server read");
                            assert!(n > 0);
                            got += n;
                        }
                        server_reader
                    });
                    let talker = tokio::task::spawn_local(async move {
                        for round in 0..200 {
                            client_writer
                                .write_all(&[round as u8; 100])
                                .await
                                .expect("client write");
                            client_writer.flush().await.expect("flush");
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                        client_writer
                    });
                    let mut got = 0;
                    let mut buf = vec![0u8; 1000];
                    while got < total {
                        let n = client_reader.read(&mut buf).await.expect("client read");
                        assert!(n > 0);
                        got += n;
                        // A slow client: the server's writes wait for room.
                        if got % 50_000 < 1000 {
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        }
                    }
                    let _ = writer.await.expect("writer");
                    let _ = reader.await.expect("reader");
                    let _ = talker.await.expect("talker");
                })
                .await;
        });
    }

    /// A rustls client that queues `request` before its handshake ends, pumped over `pipe` by hand: the request
    /// leaves right behind its Finished, and with `close`, close_notify right behind the request.
    async fn client_sending_with_finished(
        config: Arc<rustls::ClientConfig>,
        mut pipe: DuplexStream,
        request: &[u8],
        close: bool,
    ) -> (rustls::ClientConnection, DuplexStream) {
        let mut conn = rustls::ClientConnection::new(config, "localhost".try_into().expect("name")).expect("client");
        std::io::Write::write_all(&mut conn.writer(), request).expect("queue");
        let mut wire = Vec::new();
        for _ in 0..10 {
            if close && !conn.is_handshaking() {
                conn.send_close_notify();
            }
            while conn.wants_write() {
                conn.write_tls(&mut wire).expect("encode");
            }
            pipe.write_all(&wire).await.expect("send");
            wire.clear();
            if !conn.is_handshaking() {
                break;
            }
            receive(&mut conn, &mut pipe).await;
        }
        assert!(!conn.is_handshaking(), "the client finished its handshake");
        (conn, pipe)
    }

    /// One read from the pipe, handed to the client.
    async fn receive(conn: &mut rustls::ClientConnection, pipe: &mut DuplexStream) {
        let mut buf = vec![0u8; 8192];
        let n = pipe.read(&mut buf).await.expect("recv");
        assert!(n > 0, "the server answers");
        let mut r = &buf[..n];
        while !r.is_empty() {
            conn.read_tls(&mut r).expect("read");
            conn.process_new_packets().expect("process");
        }
    }

    /// Bytes behind the client's last handshake message (a request sent at once) are read first.
    #[test]
    fn data_sent_with_the_handshake_is_read() {
        run(async {
            let (server_config, client_config) = configs(&[b"http/1.1"], &[b"http/1.1"], false);
            let (a, b) = duplex(64 * 1024);
            let client = client_sending_with_finished(client_config, b, b"GET / HTTP/1.1\r\n\r\n", false);
            let (server, _client) = tokio::join!(accept(a, server_config), client);
            let mut server = server.expect("handshake");
            assert!(
                server.unprocessed || !server.plain.is_empty(),
                "the request arrived with the client's Finished"
            );
            let mut got = [0u8; 18];
            server.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        });
    }

    /// A request and close_notify right behind the client's Finished, in one read: the handshake succeeds, the
    /// request is read, then EOF, and the answer can still be sent (TLS 1.3 closes one direction at a time).
    #[test]
    fn close_notify_with_the_finished_message_ends_reading_after_the_request() {
        run(async {
            let (server_config, client_config) = configs(&[b"http/1.1"], &[b"http/1.1"], false);
            let (a, b) = duplex(64 * 1024);
            let client = client_sending_with_finished(client_config, b, b"GET / HTTP/1.1\r\n\r\n", true);
            let (server, (mut conn, mut b)) = tokio::join!(accept(a, server_config), client);
            let mut server = server.expect("a handshake followed by close_notify succeeds");
            let mut got = [0u8; 18];
            server.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(
                server.read(&mut [0u8; 16]).await.expect("EOF"),
                0,
                "EOF after the request"
            );
            server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("answer");
            server.flush().await.expect("flush");
            let mut answer = Vec::new();
            while answer.len() < 19 {
                receive(&mut conn, &mut b).await;
                std::io::Read::read_to_end(&mut conn.reader(), &mut answer).ok();
            }
            assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
        });
    }

    /// TURN over TLS: the stream writer's write leaves whole even when the socket took only part of its record and
    /// nothing is queued after it (TLS owes the rest until a flush).
    #[test]
    fn the_stream_writer_sends_what_a_write_left_owed() {
        run(async {
            let (server, mut client) = pair(1024, false).await;
            let (_reader, writer) = tokio::io::split(server);
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let sink = std::rc::Rc::new(crate::stream::StreamSink::default());
                    let task = tokio::task::spawn_local(crate::stream::write_loop(writer, sink.clone()));
                    // One frame of 5 000 bytes, a record of about as much, through a pipe of 1 024.
                    let frame: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
                    sink.push(&frame);
                    let mut got = vec![0u8; frame.len()];
                    tokio::time::timeout(std::time::Duration::from_secs(5), client.read_exact(&mut got))
                        .await
                        .expect("the whole frame within 5 s")
                        .expect("read");
                    assert_eq!(got, frame);
                    sink.close();
                    task.await.expect("writer");
                })
                .await;
        });
    }

    /// A record longer than TLS allows, after the handshake, is an error for the reader, not a buffer that grows.
    #[test]
    fn an_oversized_record_is_refused() {
        run(async {
            let (mut server, mut client) = pair(256 * 1024, false).await;
            let mut raw = vec![0x17, 0x03, 0x03, 0xff, 0xff];
            raw.extend_from_slice(&[0u8; 70_000]);
            client.get_mut().0.write_all(&raw).await.expect("raw write");
            let mut buf = [0u8; 1024];
            let err = server.read(&mut buf).await.expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(server.held.len() <= MAX_RECORD, "held {}", server.held.len());
        });
    }

    /// A handshake message larger than rustls takes ends the handshake before it is all read.
    #[test]
    fn an_oversized_handshake_is_refused() {
        run(async {
            let (server, _) = configs(&[b"http/1.1"], &[], false);
            let (a, mut b) = duplex(1024 * 1024);
            // A ClientHello declaring 16 MiB, in records of 16 KiB.
            let mut hello = vec![0x01, 0xff, 0xff, 0xff];
            hello.resize(600 * 1024, 0);
            for chunk in hello.chunks(16 * 1024) {
                let mut record = vec![0x16, 0x03, 0x01];
                record.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                record.extend_from_slice(chunk);
                b.write_all(&record).await.expect("write");
            }
            let err = accept(a, server).await.err().expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        });
    }

    /// A ClientHello declared larger than a record, sent in part and left there, is refused once a record's worth
    /// is held, rather than kept for the handshake timeout.
    #[test]
    fn a_stalled_handshake_holds_at_most_one_record() {
        run(async {
            let (server, _) = configs(&[b"http/1.1"], &[], false);
            let (a, mut b) = duplex(1024 * 1024);
            // A ClientHello declaring 60 000 bytes, 34 KiB of it in records of 16 KiB, then nothing.
            let mut hello = vec![0x01, 0x00, 0xea, 0x60];
            hello.resize(34 * 1024, 0);
            for chunk in hello.chunks(16 * 1024) {
                let mut record = vec![0x16, 0x03, 0x01];
                record.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                record.extend_from_slice(chunk);
                b.write_all(&record).await.expect("write");
            }
            let refused = tokio::time::timeout(std::time::Duration::from_secs(2), accept(a, server)).await;
            let err = refused.expect("refused at once, not held").err().expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            drop(b);
        });
    }

    #[test]
    fn the_handshake_byte_budget_is_charged_and_given_back() {
        let total = AtomicUsize::new(0);
        let mut one = HandshakeBytes::new(&total, 10_000);
        assert!(one.grow_to(4096));
        assert!(one.grow_to(8192));
        let mut two = HandshakeBytes::new(&total, 10_000);
        assert!(!two.grow_to(4096), "over the budget");
        assert_eq!(total.load(Ordering::Relaxed), 8192);
        assert!(two.grow_to(1808));
        assert_eq!(total.load(Ordering::Relaxed), 10_000);
        drop(one);
        assert_eq!(total.load(Ordering::Relaxed), 1808);
        drop(two);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    /// Random bytes, alone or behind real records, cut anywhere, during the handshake or after it: an error or the
    /// end of the stream, never a panic, and nothing held beyond a record.
    #[test]
    fn garbage_anywhere_is_an_error_not_a_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        run(async {
            for round in 0..150 {
                let (server, client) = configs(&[b"http/1.1"], &[b"http/1.1"], round % 3 == 0);
                let junk: Vec<u8> = (0..rng.gen_range(1..40_000)).map(|_| rng.gen()).collect();
                if round % 2 == 0 {
                    // After the handshake: some real records, then junk, in random cuts.
                    let (a, b) = duplex(8 * 1024);
                    let connector = tokio_rustls::TlsConnector::from(client);
                    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                    let (server, client) = tokio::join!(accept(a, server), connector.connect(name, b));
                    let (mut server, mut client) = (server.expect("handshake"), client.expect("handshake"));
                    let real = rng.gen_range(0..3000);
                    let cuts: Vec<usize> = (0..64).map(|_| rng.gen_range(1..5000)).collect();
                    let junk_len = junk.len();
                    let feed = async move {
                        client.write_all(&vec![7u8; real]).await.expect("write");
                        client.flush().await.expect("flush");
                        let raw = &mut client.get_mut().0;
                        let mut at = 0;
                        for cut in cuts.iter().cycle() {
                            let end = (at + cut).min(junk.len());
                            if raw.write_all(&junk[at..end]).await.is_err() {
                                break;
                            }
                            at = end;
                            if at == junk.len() {
                                break;
                            }
                        }
                        let _ = raw.shutdown().await;
                        client
                    };
                    // Owns the server, so that the pipe closes once it is done and the feeder's writes end.
                    let drain = async move {
                        let mut buf = vec![0u8; 4096];
                        let mut got = 0;
                        loop {
                            match server.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got += n,
                            }
                        }
                        assert!(server.held.len() <= MAX_RECORD);
                        let _ = server.write_all(b"after").await;
                        let _ = server.shutdown().await;
                        got
                    };
                    let (client, got) = tokio::join!(feed, drain);
                    assert!(got <= real + junk_len, "round {round}");
                    drop(client);
                } else {
                    // During the handshake: the start of a real ClientHello, then junk.
                    let mut conn =
                        rustls::ClientConnection::new(client, "localhost".try_into().expect("name")).expect("client");
                    let mut hello = Vec::new();
                    conn.write_tls(&mut hello).expect("hello");
                    let keep = rng.gen_range(0..hello.len());
                    let mut wire = hello[..keep].to_vec();
                    wire.extend_from_slice(&junk);
                    let (a, mut b) = duplex(1024 * 1024);
                    b.write_all(&wire).await.expect("write");
                    drop(b);
                    let accepted = tokio::time::timeout(std::time::Duration::from_secs(5), accept(a, server)).await;
                    assert!(
                        matches!(accepted, Ok(Err(_))),
                        "round {round}: junk completed a handshake"
                    );
                }
            }
        });
    }

    /// A failed handshake names rustls' reason, and the client hears it as an alert.
    #[test]
    fn a_failed_handshake_names_its_reason_and_alerts_the_client() {
        run(async {
            let (server, client) = configs(&[b"http/1.1"], &[b"stun.turn"], false);
            let (a, b) = duplex(64 * 1024);
            let connector = tokio_rustls::TlsConnector::from(client);
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let (server, client) = tokio::join!(accept(a, server), connector.connect(name, b));
            let err = server.err().expect("no ALPN in common");
            assert_eq!(crate::HandshakeFailure::of(&err), crate::HandshakeFailure::Protocol);
            let client_err = client.expect_err("the client fails too");
            let inner = client_err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
            assert_eq!(
                inner,
                Some(&rustls::Error::AlertReceived(
                    rustls::AlertDescription::NoApplicationProtocol
                )),
                "{client_err}"
            );

            let (server, _) = configs(&[b"http/1.1"], &[], false);
            let (a, mut b) = duplex(4096);
            b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
            let err = accept(a, server).await.err().expect("not TLS");
            assert_eq!(crate::HandshakeFailure::of(&err), crate::HandshakeFailure::NotTls);

            let (server, _) = configs(&[b"http/1.1"], &[], false);
            let (a, b) = duplex(4096);
            drop(b);
            let err = accept(a, server).await.err().expect("hung up");
            assert_eq!(crate::HandshakeFailure::of(&err), crate::HandshakeFailure::Closed);
        });
    }
}
