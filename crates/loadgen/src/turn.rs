//! A minimal TURN client over UDP for the load generators: long-term credentials, Allocate, ChannelBind and Refresh,
//! with retransmission and one retry on a stale nonce. One `Session` is one client socket and its allocation.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::RngCore;
use stun::{Attribute, ChannelNumber, Class, IntegrityKey, Message, MessageWriter, Method, TransactionId};
use tokio::net::UdpSocket;

/// Retransmissions of a request before it counts as lost, and the time each try waits for its answer.
const TRIES: usize = 5;
const RTO: Duration = Duration::from_millis(500);

/// Long-term credentials shared by every client of a run.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// A client socket connected to the server and the allocation it holds.
#[derive(Debug)]
pub struct Session {
    socket: UdpSocket,
    user: String,
    realm: String,
    nonce: String,
    key: IntegrityKey,
    stale_nonces: u64,
}

/// What the server answered to an authenticated request.
enum Answer {
    Success,
    /// 438 Stale Nonce (or a 401 carrying a fresh nonce): the nonce was replaced, send again.
    NewNonce,
    Error(String),
}

impl Session {
    /// RFC 8656 §7.1: an Allocate without credentials draws a 401 with REALM and NONCE; the second carries them.
    /// `lifetime` is the LIFETIME asked for (none: the server's default).
    pub async fn allocate(
        server: SocketAddr,
        credentials: &Credentials,
        lifetime: Option<u32>,
    ) -> anyhow::Result<Self> {
        let bind_addr: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let socket = UdpSocket::bind(bind_addr).await?;
        socket.connect(server).await?;
        let mut out = [0u8; 512];
        let mut buf = [0u8; 1500];
        let tid = new_tid();
        let mut w = MessageWriter::new(&mut out, Method::ALLOCATE, Class::Request, tid)?;
        w.add(&Attribute::RequestedTransport(17))?;
        w.fingerprint()?;
        let len = w.finish();
        let request = out.get(..len).context("encode")?;
        let n = exchange(&socket, request, tid, &mut buf, &mut |_| {}).await?;
        let challenge = Message::parse(buf.get(..n).context("answer")?)?;
        let (Some(Ok(Attribute::Realm(realm))), Some(Ok(Attribute::Nonce(nonce)))) =
            (challenge.decode(stun::attr::REALM), challenge.decode(stun::attr::NONCE))
        else {
            bail!("no REALM and NONCE in the answer to an unauthenticated Allocate");
        };
        let key = stun::long_term_key_md5(&credentials.user, realm, &credentials.password);
        let mut session = Session {
            user: credentials.user.clone(),
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            key,
            socket,
            stale_nonces: 0,
        };
        session
            .transact(
                Method::ALLOCATE,
                |w| {
                    w.add(&Attribute::RequestedTransport(17))?;
                    if let Some(l) = lifetime {
                        w.add(&Attribute::Lifetime(l))?;
                    }
                    Ok(())
                },
                &mut |_| {},
            )
            .await
            .context("Allocate")?;
        Ok(session)
    }

    /// How many times a request was sent again with a fresh nonce (438 Stale Nonce).
    pub fn stale_nonces(&self) -> u64 {
        self.stale_nonces
    }

    /// The socket, for sending ChannelData and receiving what the relay sends back.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Binds `channel` to `peer` (also installs or refreshes the permission for the peer's address).
    /// `on_other` gets every packet that is not the answer (ChannelData arriving meanwhile).
    pub async fn channel_bind(
        &mut self,
        channel: ChannelNumber,
        peer: SocketAddr,
        on_other: &mut (dyn FnMut(&[u8]) + Send),
    ) -> anyhow::Result<()> {
        self.transact(
            Method::CHANNEL_BIND,
            |w| {
                w.add(&Attribute::ChannelNumber(channel.get()))?;
                w.add(&Attribute::XorPeerAddress(peer))?;
                Ok(())
            },
            on_other,
        )
        .await
        .context("ChannelBind")
    }

    /// Refreshes the allocation; `Some(0)` deletes it (RFC 8656 §7.3).
    pub async fn refresh(
        &mut self,
        lifetime: Option<u32>,
        on_other: &mut (dyn FnMut(&[u8]) + Send),
    ) -> anyhow::Result<()> {
        self.transact(
            Method::REFRESH,
            |w| {
                if let Some(l) = lifetime {
                    w.add(&Attribute::Lifetime(l))?;
                }
                Ok(())
            },
            on_other,
        )
        .await
        .context("Refresh")
    }

    /// One authenticated request, retransmitted until answered; sent once more with the new nonce if it was stale.
    async fn transact(
        &mut self,
        method: Method,
        body: impl Fn(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
        on_other: &mut (dyn FnMut(&[u8]) + Send),
    ) -> anyhow::Result<()> {
        let mut out = [0u8; 512];
        let mut buf = [0u8; 1500];
        for _ in 0..2 {
            let tid = new_tid();
            let mut w = MessageWriter::new(&mut out, method, Class::Request, tid)?;
            body(&mut w)?;
            w.add(&Attribute::Username(&self.user))?;
            w.add(&Attribute::Realm(&self.realm))?;
            w.add(&Attribute::Nonce(&self.nonce))?;
            w.message_integrity(&self.key)?;
            w.fingerprint()?;
            let len = w.finish();
            let request = out.get(..len).context("encode")?;
            let n = exchange(&self.socket, request, tid, &mut buf, on_other).await?;
            match self.judge(buf.get(..n).context("answer")?)? {
                Answer::Success => return Ok(()),
                Answer::NewNonce => self.stale_nonces += 1,
                Answer::Error(e) => bail!("{e}"),
            }
        }
        bail!("the nonce went stale twice in a row")
    }

    fn judge(&mut self, answer: &[u8]) -> anyhow::Result<Answer> {
        let msg = Message::parse(answer)?;
        if msg.class() == Class::Success {
            return Ok(Answer::Success);
        }
        let (code, reason) = match msg.decode(stun::attr::ERROR_CODE) {
            Some(Ok(Attribute::ErrorCode(e))) => (e.code, e.reason.to_owned()),
            _ => (0, "no ERROR-CODE".to_owned()),
        };
        // RFC 8489 §9.2.5: 438 carries the nonce to use; some servers answer an expired nonce with 401 and a new one.
        if code == 438 || code == 401 {
            if let Some(Ok(Attribute::Nonce(nonce))) = msg.decode(stun::attr::NONCE) {
                if nonce != self.nonce {
                    self.nonce = nonce.to_owned();
                    if let Some(Ok(Attribute::Realm(realm))) = msg.decode(stun::attr::REALM) {
                        self.realm = realm.to_owned();
                    }
                    return Ok(Answer::NewNonce);
                }
            }
        }
        Ok(Answer::Error(format!("{code} {reason}")))
    }
}

fn new_tid() -> TransactionId {
    let mut id = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut id);
    TransactionId::new(id)
}

/// Sends `request` until a STUN message with its transaction id comes back into `buf`; returns its length.
/// Anything else that arrives meanwhile goes to `on_other`.
async fn exchange(
    socket: &UdpSocket,
    request: &[u8],
    tid: TransactionId,
    buf: &mut [u8],
    on_other: &mut (dyn FnMut(&[u8]) + Send),
) -> anyhow::Result<usize> {
    for _ in 0..TRIES {
        socket.send(request).await?;
        let deadline = tokio::time::sleep(RTO);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = socket.recv(buf) => {
                    let n = r?;
                    let Some(packet) = buf.get(..n) else { continue };
                    if Message::parse(packet).is_ok_and(|m| m.transaction_id() == tid) {
                        return Ok(n);
                    }
                    on_other(packet);
                }
                _ = &mut deadline => break,
            }
        }
    }
    bail!("no answer from {} after {TRIES} tries", socket.peer_addr()?)
}
