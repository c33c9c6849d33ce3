//! The bare forwarder of `traverse-bare-forwarder` — one receive and one send per packet, a 4-byte header stripped or
//! prepended, nothing else — with every receive and send an io_uring operation: one `io_uring_enter` per wake-up
//! reaps the receives of many sockets and submits their sends and the next receives together. Issue 14 asks
//! whether io_uring receives that collect many sockets at once lower a socket relay's CPU per packet; this yardstick
//! answers it with no TURN logic in the way (`bench/relay.sh`, `SERVERS=uring`). It answers STUN requests as the
//! other forwarder does (unsigned successes, just enough for `traverse-loadgen`). One thread. Not a TURN server.
//!
//! Memory the kernel is lent: each slot (a buffer, its `iovec`, an address and a `msghdr`, boxed so it never moves)
//! has at most one operation in flight — its receive, then the send of what it received, then its next receive —
//! so a buffer is never read or written here while the kernel holds it.

// io_uring lends memory to the kernel by raw pointer; every block says why the memory stays valid.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::Context;
use clap::Parser;
use io_uring::{opcode, types, IoUring};
use socket2::SockAddr;
use stun::{ChannelData, Class, Message};
use traverse_loadgen::forwarder::{self, Answered, ForwarderArgs};

#[derive(Parser, Debug)]
#[command(about = "A bare UDP forwarder on io_uring speaking just enough TURN for traverse-loadgen (a yardstick)")]
struct Cli {
    #[command(flatten)]
    args: ForwarderArgs,
    /// One multishot receive per socket into provided buffers, instead of one receive operation per packet.
    #[arg(long)]
    multishot: bool,
}

mod multishot;

/// Receives kept in flight on the listener (it carries every client's traffic) and on each relay socket.
const LISTENER_SLOTS: usize = 64;
const RELAY_SLOTS: usize = 2;
/// Room for a ChannelData header before a relay socket's payload, so the header is written in place.
const HEADROOM: usize = 4;
const BUF: usize = 2048;
/// The lifetime timeout's operation.
const LIFETIME: u64 = u64::MAX;

/// Which socket a slot receives on.
#[derive(Clone, Copy)]
enum Side {
    Listener,
    /// A client's relay socket: what arrives goes to that client.
    Relay(usize),
}

struct Slot {
    buf: [u8; BUF],
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    msg: libc::msghdr,
    side: Side,
    /// A send is in flight (its completion re-arms the receive).
    sending: bool,
}

/// One client: its relay socket, and the peer of its ChannelBind.
struct Route {
    relay: UdpSocket,
    client: SockAddr,
    peer: Option<SockAddr>,
    channel: u16,
}

/// The clients' routes, and their STUN answers (both modes).
struct Routes {
    list: Vec<Route>,
    by_client: HashMap<SocketAddr, usize>,
    relay_ip: std::net::IpAddr,
    out: Vec<u8>,
}

impl Routes {
    fn new(relay_ip: std::net::IpAddr) -> Self {
        Self {
            list: Vec::new(),
            by_client: HashMap::new(),
            relay_ip,
            out: vec![0u8; 1500],
        }
    }

    fn get(&self, route: usize) -> Option<&Route> {
        self.list.get(route)
    }

    /// The route of `client`'s packets, once its ChannelBind named a peer: the relay socket and the peer.
    fn to_peer(&self, client: &SocketAddr) -> Option<(RawFd, SockAddr)> {
        let route = self.list.get(*self.by_client.get(client)?)?;
        Some((route.relay.as_raw_fd(), route.peer.clone()?))
    }

    /// Answers a client's Allocate, Refresh, CreatePermission or ChannelBind with an unsigned success
    /// (`traverse_loadgen::forwarder`) from `listener`. `Some(route)`: this request opened route `route`, whose relay
    /// socket the caller arms.
    fn answer(&mut self, listener: &UdpSocket, client: SocketAddr, packet: &[u8]) -> anyhow::Result<Option<usize>> {
        let Ok(msg) = Message::parse(packet) else {
            return Ok(None);
        };
        if msg.class() != Class::Request {
            return Ok(None);
        }
        let (route, opened) = match self.by_client.get(&client) {
            Some(r) => (*r, None),
            None => {
                let relay = UdpSocket::bind(SocketAddr::new(self.relay_ip, 0))?;
                self.list.push(Route {
                    relay,
                    client: SockAddr::from(client),
                    peer: None,
                    channel: 0,
                });
                let route = self.list.len() - 1;
                self.by_client.insert(client, route);
                (route, Some(route))
            }
        };
        let Some(r) = self.list.get_mut(route) else {
            return Ok(opened);
        };
        let relayed = r.relay.local_addr()?;
        let Some(Answered { len, bound }) = forwarder::answer(&msg, client, relayed, &mut self.out)? else {
            return Ok(opened);
        };
        if let Some((peer, channel)) = bound {
            r.peer = Some(SockAddr::from(peer));
            r.channel = channel;
        }
        if let Some(answer) = self.out.get(..len) {
            // Set-up only, once per request: a plain blocking send is fine here.
            let _ = listener.send_to(answer, client);
        }
        Ok(opened)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = cli.args;
    let lifetime = args.lifetime()?;
    if cli.multishot {
        return multishot::run(&args, lifetime);
    }
    let listener = UdpSocket::bind(args.listen).context("bind the listener")?;
    let mut ring = new_ring()?;
    let mut forwarder = Forwarder {
        listener,
        slots: Vec::new(),
        routes: Routes::new(args.relay_ip),
    };
    let lifetime = types::Timespec::from(lifetime);
    // SAFETY: `lifetime` outlives the ring's use of it: it lives until `main` returns, after the loop.
    unsafe { push(&mut ring, opcode::Timeout::new(&lifetime).build().user_data(LIFETIME)) }?;
    for _ in 0..LISTENER_SLOTS {
        let slot = forwarder.add_slot(Side::Listener);
        forwarder.arm(&mut ring, slot)?;
    }
    let mut done = Vec::with_capacity(1024);
    loop {
        ring.submit_and_wait(1).context("io_uring_enter")?;
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (token, result) in done.drain(..) {
            if token == LIFETIME {
                return Ok(());
            }
            let Ok(slot) = usize::try_from(token) else { continue };
            forwarder.complete(&mut ring, slot, result)?;
        }
    }
}

struct Forwarder {
    listener: UdpSocket,
    #[allow(
        clippy::vec_box,
        reason = "each slot's address is lent to the kernel: the Vec grows, the boxes do not move"
    )]
    slots: Vec<Box<Slot>>,
    routes: Routes,
}

impl Forwarder {
    fn add_slot(&mut self, side: Side) -> usize {
        let slot = Box::new(Slot {
            buf: [0; BUF],
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: all-zero is a valid sockaddr_storage and msghdr (no address, no buffers).
            name: unsafe { std::mem::zeroed() },
            msg: unsafe { std::mem::zeroed() },
            side,
            sending: false,
        });
        self.slots.push(slot);
        self.slots.len() - 1
    }

    fn fd(&self, side: Side) -> RawFd {
        match side {
            Side::Listener => self.listener.as_raw_fd(),
            Side::Relay(route) => self.routes.get(route).map_or(-1, |r| r.relay.as_raw_fd()),
        }
    }

    /// Lends the slot's buffer to a receive on its socket.
    fn arm(&mut self, ring: &mut IoUring, index: usize) -> anyhow::Result<()> {
        let Some(slot) = self.slots.get(index) else {
            return Ok(());
        };
        let fd = self.fd(slot.side);
        let Some(slot) = self.slots.get_mut(index) else {
            return Ok(());
        };
        let (offset, with_name) = match slot.side {
            Side::Listener => (0, true),
            Side::Relay(_) => (HEADROOM, false),
        };
        slot.sending = false;
        slot.iov.iov_base = slot
            .buf
            .get_mut(offset..)
            .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr().cast());
        slot.iov.iov_len = BUF - offset;
        slot.msg.msg_iov = &mut slot.iov;
        slot.msg.msg_iovlen = 1;
        slot.msg.msg_name = if with_name {
            (&mut slot.name as *mut libc::sockaddr_storage).cast()
        } else {
            std::ptr::null_mut()
        };
        slot.msg.msg_namelen = if with_name {
            std::mem::size_of::<libc::sockaddr_storage>() as u32
        } else {
            0
        };
        let entry = opcode::RecvMsg::new(types::Fd(fd), &mut slot.msg)
            .build()
            .user_data(index as u64);
        // SAFETY: the slot is boxed (it never moves) and has nothing else in flight until this completes.
        unsafe { push(ring, entry) }
    }

    /// Lends `buf[from..to]` of the slot to a send on `fd`, to the address `to_addr`.
    fn send(
        &mut self,
        ring: &mut IoUring,
        index: usize,
        fd: RawFd,
        range: (usize, usize),
        to: &SockAddr,
    ) -> anyhow::Result<()> {
        let Some(slot) = self.slots.get_mut(index) else {
            return Ok(());
        };
        let (from, until) = range;
        slot.sending = true;
        let data = slot
            .buf
            .get_mut(from..until)
            .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr());
        point_send(&mut slot.msg, &mut slot.iov, &mut slot.name, (data, until - from), to);
        let entry = opcode::SendMsg::new(types::Fd(fd), &slot.msg)
            .build()
            .user_data(index as u64);
        // SAFETY: as in `arm`: the boxed slot has only this operation in flight.
        unsafe { push(ring, entry) }
    }

    fn complete(&mut self, ring: &mut IoUring, index: usize, result: i32) -> anyhow::Result<()> {
        let Some(slot) = self.slots.get(index) else {
            return Ok(());
        };
        let side = slot.side;
        // A send done, or a receive that failed: receive again.
        if slot.sending || result < 0 {
            return self.arm(ring, index);
        }
        let n = result as usize;
        match side {
            Side::Listener => self.handle_client(ring, index, n),
            Side::Relay(route) => self.handle_peer(ring, index, route, n),
        }
    }

    /// A client's packet: ChannelData goes to its peer from its relay socket; a STUN request is answered.
    fn handle_client(&mut self, ring: &mut IoUring, index: usize, n: usize) -> anyhow::Result<()> {
        let Some(slot) = self.slots.get(index) else {
            return Ok(());
        };
        // SAFETY: the kernel wrote `msg_namelen` bytes of the client's address into the storage.
        let client = unsafe { SockAddr::new(slot.name, slot.msg.msg_namelen) }.as_socket();
        let Some(client) = client else {
            return self.arm(ring, index);
        };
        let Some(packet) = slot.buf.get(..n) else {
            return self.arm(ring, index);
        };
        if let Ok(data) = ChannelData::parse(packet) {
            let len = data.payload.len();
            if let Some((fd, peer)) = self.routes.to_peer(&client) {
                return self.send(ring, index, fd, (HEADROOM, HEADROOM + len), &peer);
            }
            return self.arm(ring, index);
        }
        let packet = packet.to_vec();
        if let Some(route) = self.routes.answer(&self.listener, client, &packet)? {
            for _ in 0..RELAY_SLOTS {
                let slot = self.add_slot(Side::Relay(route));
                self.arm(ring, slot)?;
            }
        }
        self.arm(ring, index)
    }

    /// A peer's packet on a relay socket: the ChannelData header written in the headroom, sent from the listener.
    fn handle_peer(&mut self, ring: &mut IoUring, index: usize, route: usize, n: usize) -> anyhow::Result<()> {
        let Some(Route { client, channel, .. }) = self.routes.get(route) else {
            return Ok(());
        };
        let (client, channel) = (client.clone(), *channel);
        let (Some(slot), Ok(len)) = (self.slots.get_mut(index), u16::try_from(n)) else {
            return Ok(());
        };
        if let Some([c0, c1, l0, l1]) = slot.buf.get_mut(..HEADROOM) {
            [*c0, *c1] = channel.to_be_bytes();
            [*l0, *l1] = len.to_be_bytes();
        }
        let fd = self.listener.as_raw_fd();
        self.send(ring, index, fd, (0, HEADROOM + n), &client)
    }
}

/// One thread submits and reaps (single issuer), and the kernel runs completion work only when this thread enters to
/// wait (deferred task work) rather than interrupting it: the set-up recommended for networking.
fn new_ring() -> anyhow::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(4096)
        .context("io_uring (is it disabled by kernel.io_uring_disabled?)")
}

/// Points a send's header at `data` (its address and length) and its address at a copy of `to`.
fn point_send(
    msg: &mut libc::msghdr,
    iov: &mut libc::iovec,
    name: &mut libc::sockaddr_storage,
    data: (*mut u8, usize),
    to: &SockAddr,
) {
    let len = (to.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `to` holds `len` bytes of address, which fit the storage; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            to.as_ptr().cast::<u8>(),
            (name as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    iov.iov_base = data.0.cast();
    iov.iov_len = data.1;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_name = (name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len as u32;
}

/// Queues one operation, submitting what is queued first when the queue is full.
///
/// # Safety
/// What the entry points to must stay valid, and untouched here, until its completion is reaped.
unsafe fn push(ring: &mut IoUring, entry: io_uring::squeue::Entry) -> anyhow::Result<()> {
    // SAFETY: the caller's promise.
    if unsafe { ring.submission().push(&entry) }.is_err() {
        ring.submit().context("io_uring_enter")?;
        // SAFETY: as above; the queue has room after the submit.
        unsafe { ring.submission().push(&entry) }.map_err(|_| anyhow::anyhow!("the submission queue stays full"))?;
    }
    Ok(())
}
