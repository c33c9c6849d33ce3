//! `--multishot`: one receive operation per socket for its whole life, not one per packet. Each socket has one
//! multishot `RECVMSG` in flight, and the kernel picks a buffer for each datagram from a ring of provided buffers
//! this process lends it (`IORING_REGISTER_PBUF_RING`), so nothing is re-armed per packet: a completion names the
//! buffer, the packet is sent on from that buffer, and the buffer goes back on the ring when its send completes.
//! This is the one io_uring receive the first io_uring forwarder did not try (issue 14).
//!
//! A buffer as the kernel fills it: `io_uring_recvmsg_out` (16 bytes), the sender's address ([`NAME`] bytes), then
//! the payload. On a relay socket the address is not needed, so the ChannelData header is written over its last 4
//! bytes, right before the payload, and the packet leaves from there without a copy.
//!
//! Memory the kernel is lent: the buffer ring and the buffers (allocated once, freed at exit), each socket's
//! `msghdr` template (boxed), and each send's `msghdr`, `iovec` and address (boxed, one send each). A buffer is
//! touched here only between the completion that hands it over and the moment it goes back on the ring.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use anyhow::Context;
use bufring::BufRing;
use io_uring::{cqueue, opcode, types, IoUring};
use socket2::SockAddr;
use stun::ChannelData;
use traverse_loadgen::forwarder::ForwarderArgs;

use crate::{new_ring, point_send, push, Route, Routes};

/// Buffers lent to the kernel (a power of two, at most 32 768): 8 MiB, enough for every relay socket's receive
/// queue to fill at once at the benchmark's rates.
const BUFFERS: u16 = 4096;
const BUF: usize = 2048;
/// The buffer group every socket's receive draws from.
const GROUP: u16 = 0;
/// Room kept for the sender's address: an IPv6 `sockaddr_in6`.
const NAME: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Where the payload starts in a buffer.
const PAYLOAD: usize = 16 + NAME;
/// user_data of the lifetime timeout; a send's has [`SEND`] set; a receive's is its socket's index.
const LIFETIME: u64 = u64::MAX;
const SEND: u64 = 1 << 62;

/// A socket and the `msghdr` its multishot receive was built from (the kernel reads its name and control lengths).
struct Receiver {
    fd: RawFd,
    template: Box<libc::msghdr>,
}

/// One send in flight: what the kernel reads until it completes, and the buffer to give back then.
struct Sending {
    msg: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    bid: u16,
}

/// Runs the forwarder until its lifetime ends.
pub fn run(args: &ForwarderArgs, lifetime: Duration) -> anyhow::Result<()> {
    let listener = UdpSocket::bind(args.listen).context("bind the listener")?;
    let mut ring = new_ring()?;
    let pool =
        BufRing::new(&ring, BUFFERS, BUF, BUF, GROUP).context("register the buffer ring (kernel 5.19 or later)")?;
    let mut forwarder = Forwarder {
        receivers: Vec::new(),
        listener,
        routes: Routes::new(args.relay_ip),
        sends: Vec::new(),
        free_sends: Vec::new(),
        starved: Vec::new(),
        pool,
    };
    let result = serve(&mut ring, &mut forwarder, lifetime);
    // The ring goes first: the kernel lets go of the buffers, the templates and the sends before they are freed.
    drop(ring);
    drop(forwarder);
    result
}

/// Arms the listener's receive, then reaps completions until the lifetime's timeout fires.
fn serve(ring: &mut IoUring, forwarder: &mut Forwarder, lifetime: Duration) -> anyhow::Result<()> {
    let lifetime = types::Timespec::from(lifetime);
    // SAFETY: `lifetime` lives until this function returns; the timeout is submitted and fires within it.
    unsafe { push(ring, opcode::Timeout::new(&lifetime).build().user_data(LIFETIME)) }?;
    let fd = forwarder.listener.as_raw_fd();
    forwarder.add_receiver(ring, fd)?;
    let mut done = Vec::with_capacity(1024);
    loop {
        ring.submit_and_wait(1).context("io_uring_enter")?;
        done.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for (token, result, flags) in done.drain(..) {
            if token == LIFETIME {
                return Ok(());
            }
            if token & SEND != 0 {
                forwarder.sent(token & !SEND);
            } else {
                forwarder.received(ring, token, result, flags)?;
            }
        }
        forwarder.feed_starved(ring)?;
    }
}

struct Forwarder {
    receivers: Vec<Receiver>,
    listener: UdpSocket,
    routes: Routes,
    #[allow(
        clippy::vec_box,
        reason = "each send's header is lent to the kernel: the Vec grows, the boxes do not move"
    )]
    sends: Vec<Box<Sending>>,
    free_sends: Vec<usize>,
    /// Receivers whose multishot receive ended for want of a buffer: armed again once buffers come back.
    starved: Vec<usize>,
    pool: BufRing,
}

impl Forwarder {
    /// Adds a socket (index 0 is the listener, index `1 + r` route `r`'s relay socket) and arms its receive.
    fn add_receiver(&mut self, ring: &mut IoUring, fd: RawFd) -> anyhow::Result<()> {
        // SAFETY: all-zero is a valid msghdr (no address, no buffers).
        let mut template: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        template.msg_namelen = NAME as u32;
        self.receivers.push(Receiver { fd, template });
        self.arm(ring, self.receivers.len() - 1)
    }

    fn arm(&mut self, ring: &mut IoUring, index: usize) -> anyhow::Result<()> {
        let Some(receiver) = self.receivers.get(index) else {
            return Ok(());
        };
        let entry = opcode::RecvMsgMulti::new(types::Fd(receiver.fd), &*receiver.template, GROUP)
            .build()
            .user_data(index as u64);
        // SAFETY: the template is boxed and lives as long as the forwarder, which outlives the ring's use of it.
        unsafe { push(ring, entry) }
    }

    /// Arms again the receivers that ran out of buffers, now that sends have given some back.
    fn feed_starved(&mut self, ring: &mut IoUring) -> anyhow::Result<()> {
        if self.starved.is_empty() || self.sends.len() - self.free_sends.len() >= usize::from(BUFFERS) {
            return Ok(());
        }
        for index in std::mem::take(&mut self.starved) {
            self.arm(ring, index)?;
        }
        Ok(())
    }

    /// A send completed: its buffer goes back on the ring.
    fn sent(&mut self, slot: u64) {
        let Some(sending) = usize::try_from(slot).ok().and_then(|s| self.sends.get(s)) else {
            return;
        };
        self.pool.give_back(sending.bid);
        if let Ok(slot) = usize::try_from(slot) {
            self.free_sends.push(slot);
        }
    }

    fn received(&mut self, ring: &mut IoUring, token: u64, result: i32, flags: u32) -> anyhow::Result<()> {
        let Ok(index) = usize::try_from(token) else {
            return Ok(());
        };
        if result == -libc::ENOBUFS {
            self.starved.push(index);
            return Ok(());
        }
        // The multishot receive ended (an error, or the kernel stopped it): start another.
        if !cqueue::more(flags) {
            self.arm(ring, index)?;
        }
        let (Some(bid), Ok(len)) = (cqueue::buffer_select(flags), usize::try_from(result)) else {
            return Ok(());
        };
        if !self.forward(ring, index, bid, len.min(BUF))? {
            self.pool.give_back(bid);
        }
        Ok(())
    }

    /// Sends the packet in buffer `bid` on; `false` if nothing was sent (the buffer is free again).
    fn forward(&mut self, ring: &mut IoUring, index: usize, bid: u16, len: usize) -> anyhow::Result<bool> {
        let Some(receiver) = self.receivers.get(index) else {
            return Ok(false);
        };
        let buf = self.pool.buf(bid);
        let Some(filled) = buf.get(..len) else { return Ok(false) };
        let Ok(out) = types::RecvMsgOut::parse(filled, &receiver.template) else {
            return Ok(false);
        };
        if out.is_payload_truncated() {
            return Ok(false);
        }
        let n = out.payload_data().len();
        if index > 0 {
            // A peer's packet on route `index - 1`'s relay socket: the ChannelData header over the address's tail.
            let Some(Route { client, channel, .. }) = self.routes.get(index - 1) else {
                return Ok(false);
            };
            let (Some(header), Ok(length)) = (buf.get_mut(PAYLOAD - 4..PAYLOAD), u16::try_from(n)) else {
                return Ok(false);
            };
            let [c0, c1] = channel.to_be_bytes();
            let [l0, l1] = length.to_be_bytes();
            header.copy_from_slice(&[c0, c1, l0, l1]);
            let (fd, client) = (self.listener.as_raw_fd(), client.clone());
            return self
                .send(ring, bid, fd, (PAYLOAD - 4, PAYLOAD + n), &client)
                .map(|()| true);
        }
        // A client's packet on the listener.
        let name = out.name_data();
        // SAFETY: all-zero is a valid sockaddr_storage; `name` is at most `NAME` bytes, which fit it.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let name_len = name.len().min(NAME);
        // SAFETY: `name_len` bytes fit both regions, which do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                name_len,
            )
        };
        // SAFETY: the kernel wrote the sender's address (an IPv4 or IPv6 sockaddr) into those bytes.
        let Some(client) = (unsafe { SockAddr::new(storage, name_len as u32) }).as_socket() else {
            return Ok(false);
        };
        let payload = out.payload_data();
        if let Ok(data) = ChannelData::parse(payload) {
            let len = data.payload.len();
            let Some((fd, peer)) = self.routes.to_peer(&client) else {
                return Ok(false);
            };
            return self
                .send(ring, bid, fd, (PAYLOAD + 4, PAYLOAD + 4 + len), &peer)
                .map(|()| true);
        }
        let packet = payload.to_vec();
        if let Some(route) = self.routes.answer(&self.listener, client, &packet)? {
            if let Some(relay) = self.routes.get(route) {
                let fd = relay.relay.as_raw_fd();
                self.add_receiver(ring, fd)?;
            }
        }
        Ok(false)
    }

    /// Lends `buf[from..until]` of buffer `bid` to a send on `fd`, to `to`.
    fn send(
        &mut self,
        ring: &mut IoUring,
        bid: u16,
        fd: RawFd,
        range: (usize, usize),
        to: &SockAddr,
    ) -> anyhow::Result<()> {
        let slot = match self.free_sends.pop() {
            Some(slot) => slot,
            None => {
                self.sends.push(Box::new(Sending {
                    // SAFETY: all-zero is a valid msghdr and sockaddr_storage.
                    msg: unsafe { std::mem::zeroed() },
                    iov: libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    },
                    name: unsafe { std::mem::zeroed() },
                    bid: 0,
                }));
                self.sends.len() - 1
            }
        };
        let (from, until) = range;
        let data = self
            .pool
            .buf(bid)
            .get_mut(from..until)
            .map_or(std::ptr::null_mut(), |d| d.as_mut_ptr());
        let Some(sending) = self.sends.get_mut(slot) else {
            return Ok(());
        };
        sending.bid = bid;
        let Sending { msg, iov, name, .. } = &mut **sending;
        point_send(msg, iov, name, (data, until - from), to);
        let entry = opcode::SendMsg::new(types::Fd(fd), &sending.msg)
            .build()
            .user_data(SEND | slot as u64);
        // SAFETY: the send's box does not move and is reused only after this completes; the buffer stays off the
        // ring until then.
        unsafe { push(ring, entry) }
    }
}
