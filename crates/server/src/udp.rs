//! UDP sockets for listeners and relays: batched receive (`recvmmsg`) and batched send (`sendmmsg`) with arrays
//! reused per thread, and packet-info control messages only where a wildcard-bound listener needs them. Our own
//! rather than quinn-udp's: that crate asks the kernel for ECN and packet-info on every datagram of every socket
//! (work a relay socket does not need), rebuilds its headers on every call, and has no `sendmmsg`. This is the only
//! module with `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How many datagrams one system call moves at most.
pub const BATCH: usize = 32;

/// A datagram to send. `src_ip` pins the source address on a wildcard-bound socket (so a reply leaves from the
/// address the request arrived at).
#[derive(Debug, Clone, Copy)]
pub struct OutDatagram<'a> {
    pub data: &'a [u8],
    pub dst: SocketAddr,
    pub src_ip: Option<IpAddr>,
}

/// Binds a non-blocking UDP socket. IPv6 sockets are IPv6-only so the IPv4 and IPv6 listeners stay separate.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Listeners carry every client of a worker, so they get deeper buffers than the kernel default (best effort:
    // capped at net.core.{r,w}mem_max). Relay sockets keep the default: deeper queues there only add latency that
    // real-time media cannot use.
    if reuse_port {
        let _ = socket.set_recv_buffer_size(1 << 20);
        let _ = socket.set_send_buffer_size(1 << 20);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Configures a relay socket: no GRO (each datagram needs its own headroom), and fragmentation left to the kernel
/// unless the client asked for DONT-FRAGMENT (RFC 8656 §7.2), in which case DF is set on every datagram.
pub fn configure_relay(socket: &std::net::UdpSocket, dont_fragment: bool) -> io::Result<()> {
    // A kernel without the option (before 5.0) has no GRO on the socket to turn off; DF must be set all the same,
    // since the allocation says it is (a DONT-FRAGMENT Send indication passes only then).
    let _ = set_int(socket, libc::SOL_UDP, libc::UDP_GRO, 0);
    let (level, name, value) = match socket.local_addr()? {
        SocketAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            if dont_fragment {
                libc::IP_PMTUDISC_DO
            } else {
                libc::IP_PMTUDISC_DONT
            },
        ),
        SocketAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            if dont_fragment {
                libc::IPV6_PMTUDISC_DO
            } else {
                libc::IPV6_PMTUDISC_DONT
            },
        ),
    };
    set_int(socket, level, name, value)
}

fn set_int(socket: &std::net::UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed; the fd is owned by `socket`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Most datagrams one GSO message carries (the kernel allows 64; a batch holds fewer).
const MAX_SEGMENTS: usize = BATCH;
/// Most bytes one GSO message carries: what fits in one IPv4 packet before the kernel cuts it.
const MAX_GSO_BYTES: usize = 65_507;

thread_local! {
    /// Whether this thread sends runs as one GSO message: unknown until first asked (then the kernel is probed),
    /// off when the worker's configuration says so or once the kernel refused a run with EIO (a route whose device
    /// cannot checksum for us).
    static GSO: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Turns UDP GSO on (where the kernel has it) or off for the calling thread's sends (`relay.gso`).
pub fn set_gso(enabled: bool) {
    GSO.with(|g| g.set(Some(enabled && kernel_has_gso())));
}

fn gso_on() -> bool {
    GSO.with(|g| match g.get() {
        Some(on) => on,
        None => {
            let on = kernel_has_gso();
            g.set(Some(on));
            on
        }
    })
}

/// Linux 4.18 and later answer `getsockopt(UDP_SEGMENT)`.
fn kernel_has_gso() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let Ok(socket) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) else {
            return false;
        };
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` live across the call and `len` is `value`'s size; the fd is owned by `socket`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        rc == 0
    })
}

/// How many datagrams, from the first, the kernel can send as one GSO message that it cuts itself: the same
/// destination and source, the same length but for a shorter last one. 1 when GSO is off.
fn run_len(datagrams: &[OutDatagram<'_>], gso: bool) -> usize {
    let Some(first) = datagrams.first() else {
        return 0;
    };
    let size = first.data.len();
    if !gso || size == 0 {
        return 1;
    }
    let mut total = size;
    let mut n = 1;
    for d in datagrams.iter().skip(1).take(MAX_SEGMENTS - 1) {
        let len = d.data.len();
        if d.dst != first.dst || d.src_ip != first.src_ip || len == 0 || len > size || total + len > MAX_GSO_BYTES {
            break;
        }
        total += len;
        n += 1;
        if len < size {
            break;
        }
    }
    n
}

/// Sends the datagrams without waiting: when the socket buffer is full the rest are dropped, as a router would,
/// rather than stalling every other allocation of the worker. A datagram the kernel refuses (unreachable
/// destination, too big) is skipped. Returns how many were sent. The socket is non-blocking; no readiness is
/// consulted, since a send is worth trying anyway.
///
/// Datagrams go `BATCH` messages per `sendmmsg` (a lone one with plain `sendto`), and each run of datagrams to the
/// same destination with the same length (a video frame's packets, relayed) goes as one message that the kernel
/// cuts into datagrams (UDP GSO, Linux 4.18+): one trip through the stack for the run, not one per datagram. A run
/// the kernel refuses whole (a path whose MTU is smaller than a datagram, a device that cannot checksum) is sent
/// again datagram by datagram.
pub fn try_send_all(socket: &std::net::UdpSocket, datagrams: &[OutDatagram<'_>]) -> usize {
    if let [one] = datagrams {
        if one.src_ip.is_none() {
            return usize::from(
                socket2::SockRef::from(socket)
                    .send_to(one.data, &one.dst.into())
                    .is_ok(),
            );
        }
    }
    SCRATCH.with(|scratch| send_runs(socket, datagrams, gso_on(), &mut scratch.borrow_mut()).0)
}

/// `try_send_all`'s loop: returns how many datagrams were sent, and whether the socket's buffer filled. A run the
/// kernel refuses goes again through this loop without GSO (where every message is one datagram, so it never
/// recurses further).
fn send_runs(
    socket: &std::net::UdpSocket,
    datagrams: &[OutDatagram<'_>],
    gso: bool,
    scratch: &mut Scratch,
) -> (usize, bool) {
    let mut gso = gso;
    let (mut sent, mut at) = (0, 0);
    while let Some(rest) = datagrams.get(at..).filter(|r| !r.is_empty()) {
        match sendmmsg(socket, rest, gso, scratch) {
            Ok(n) => {
                sent += n;
                at += n.max(1);
            }
            Err((e, _)) if e.kind() == io::ErrorKind::WouldBlock => return (sent, true),
            Err((e, run)) if run > 1 => {
                if e.raw_os_error() == Some(libc::EIO) {
                    tracing::info!(error = %e, "UDP GSO refused by the kernel; this worker sends datagram by datagram");
                    GSO.with(|g| g.set(Some(false)));
                    gso = false;
                }
                let end = (at + run).min(datagrams.len());
                let (again, full) = send_runs(socket, datagrams.get(at..end).unwrap_or_default(), false, scratch);
                sent += again;
                if full {
                    return (sent, true);
                }
                at = end;
            }
            Err(_) => at += 1,
        }
    }
    (sent, false)
}

/// Control-message space for one IPv6 packet-info and one GSO segment size.
const CMSG_SPACE: usize = 64;

#[repr(C, align(8))]
struct Cmsg([u8; CMSG_SPACE]);

/// The `sendmmsg` arrays, kept per thread so a send does not zero 9 KiB of headers each time.
struct Scratch {
    headers: [libc::mmsghdr; BATCH],
    iovecs: [libc::iovec; BATCH],
    controls: [Cmsg; BATCH],
    addrs: [libc::sockaddr_in6; BATCH],
    /// Datagrams per message.
    runs: [usize; BATCH],
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<Scratch>> = std::cell::RefCell::new(Box::new(Scratch {
        // SAFETY: all-zero is a valid value for these plain C structs.
        headers: unsafe { zeroed() },
        iovecs: unsafe { zeroed() },
        controls: std::array::from_fn(|_| Cmsg([0; CMSG_SPACE])),
        addrs: unsafe { zeroed() },
        runs: [0; BATCH],
    }));
}

/// One `sendmmsg` of up to `BATCH` datagrams from the start of `datagrams`, each run of them one GSO message (with
/// `gso`). Returns how many datagrams the kernel took; when it took none, the error and the first message's
/// datagram count.
fn sendmmsg(
    socket: &std::net::UdpSocket,
    datagrams: &[OutDatagram<'_>],
    gso: bool,
    scratch: &mut Scratch,
) -> Result<usize, (io::Error, usize)> {
    let datagrams = datagrams.get(..BATCH).unwrap_or(datagrams);
    let Scratch {
        headers,
        iovecs,
        controls,
        addrs,
        runs,
    } = scratch;
    // Each message takes the next slot of every array, and its run the next iovecs: disjoint borrows, so that a
    // pointer stored in an earlier header stays valid while the later ones are written.
    let mut slots = headers
        .iter_mut()
        .zip(controls.iter_mut())
        .zip(addrs.iter_mut())
        .zip(runs.iter_mut());
    let mut free_iovecs: &mut [libc::iovec] = iovecs;
    let mut messages = 0;
    let mut at = 0;
    while let Some(rest) = datagrams.get(at..).filter(|r| !r.is_empty()) {
        let mut run = run_len(rest, gso);
        let (Some((((h, ctrl), addr), count)), Some(first)) = (slots.next(), rest.first()) else {
            break;
        };
        let Some((iovs, tail)) = std::mem::take(&mut free_iovecs).split_at_mut_checked(run) else {
            break;
        };
        free_iovecs = tail;
        for (iov, d) in iovs.iter_mut().zip(rest) {
            iov.iov_base = d.data.as_ptr() as *mut libc::c_void;
            iov.iov_len = d.data.len();
        }
        let sockaddr = SockAddr::from(first.dst);
        let len = (sockaddr.len() as usize).min(size_of::<libc::sockaddr_in6>());
        // SAFETY: copies `len` bytes of a valid sockaddr into a sockaddr_in6-sized slot (the larger family).
        unsafe {
            std::ptr::copy_nonoverlapping(
                sockaddr.as_ptr().cast::<u8>(),
                (addr as *mut libc::sockaddr_in6).cast::<u8>(),
                len,
            );
        }
        h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in6).cast();
        h.msg_hdr.msg_namelen = len as libc::socklen_t;
        h.msg_hdr.msg_iov = iovs.as_mut_ptr();
        h.msg_hdr.msg_iovlen = run as _;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
        let segment = (run > 1).then_some(first.data.len());
        if first.src_ip.is_some() || segment.is_some() {
            // Zeroed first: CMSG_NXTHDR reads the length of the header after the one just written.
            ctrl.0 = [0; CMSG_SPACE];
            h.msg_hdr.msg_control = ctrl.0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_SPACE as _;
            // SAFETY: msg_control points at CMSG_SPACE aligned bytes owned by the scratch, large enough for one
            // in6_pktinfo and one u16 message; CMSG_FIRSTHDR/CMSG_NXTHDR/CMSG_DATA stay within it.
            let (used, segmented) = unsafe { write_controls(&mut h.msg_hdr, first.src_ip, segment) };
            h.msg_hdr.msg_controllen = used as _;
            if used == 0 {
                h.msg_hdr.msg_control = std::ptr::null_mut();
            }
            // Without its segment size a message of several iovecs would leave as one datagram of all their bytes:
            // should the size not fit, the message carries the run's first datagram alone.
            if segment.is_some() && !segmented {
                run = 1;
                h.msg_hdr.msg_iovlen = 1;
            }
        }
        *count = run;
        messages += 1;
        at += run;
    }
    // SAFETY: `headers[..messages]` point into the scratch arrays and the caller's data, all of which outlive the
    // call; the kernel only reads them.
    let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), messages as libc::c_uint, 0) };
    if rc < 0 {
        Err((io::Error::last_os_error(), runs.first().copied().unwrap_or(1)))
    } else {
        Ok(runs.iter().take(rc as usize).sum())
    }
}

/// Writes the control messages of one send: IP_PKTINFO / IPV6_PKTINFO selecting `src`, and UDP_SEGMENT with the
/// GSO segment size; returns the bytes used and whether the segment size was written.
///
/// # Safety
/// `hdr.msg_control` must point at `hdr.msg_controllen` writable, cmsghdr-aligned bytes, at least [`CMSG_SPACE`].
unsafe fn write_controls(hdr: &mut libc::msghdr, src: Option<IpAddr>, segment: Option<usize>) -> (usize, bool) {
    let mut used = 0;
    let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
    if let Some(src) = src {
        if cmsg.is_null() {
            return (0, false);
        }
        used += write_pktinfo(cmsg, src);
        cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
    }
    let Some(size) = segment.filter(|_| !cmsg.is_null()) else {
        return (used, false);
    };
    (*cmsg).cmsg_level = libc::SOL_UDP;
    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size as u16);
    (used + libc::CMSG_SPACE(size_of::<u16>() as u32) as usize, true)
}

/// Writes an IP_PKTINFO / IPV6_PKTINFO control message selecting `src` at `cmsg`; returns the bytes used.
///
/// # Safety
/// `cmsg` must point at a cmsghdr with room for CMSG_SPACE(in6_pktinfo) bytes.
unsafe fn write_pktinfo(cmsg: *mut libc::cmsghdr, src: IpAddr) -> usize {
    match src {
        IpAddr::V4(ip) => {
            let mut info: libc::in_pktinfo = zeroed();
            info.ipi_spec_dst.s_addr = u32::from_ne_bytes(ip.octets());
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
            libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
        }
        IpAddr::V6(ip) => {
            let mut info: libc::in6_pktinfo = zeroed();
            info.ipi6_addr.s6_addr = ip.octets();
            (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
            (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
            libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
        }
    }
}

/// Registers a socket with the worker's reactor.
pub fn register(socket: std::net::UdpSocket) -> io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: a `std::net::UdpSocket` owns its fd for as long as it lives, and the `AsyncFd` owns the socket, so the
    // fd stays open and unchanged for the registration's whole lifetime.
    Ok(unsafe { tokio::io::unix::AsyncFd::register(socket) }?)
}

/// One received datagram: sender, length, and (when asked for) the local address it was sent to.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    pub addr: SocketAddr,
    pub len: usize,
    pub dst_ip: Option<IpAddr>,
}

impl Default for RecvMeta {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            len: 0,
            dst_ip: None,
        }
    }
}

/// The `recvmmsg` arrays, kept per thread.
struct RecvScratch {
    headers: [libc::mmsghdr; BATCH],
    iovecs: [libc::iovec; BATCH],
    controls: [Cmsg; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
}

thread_local! {
    static RECV_SCRATCH: std::cell::RefCell<Box<RecvScratch>> = std::cell::RefCell::new(Box::new(RecvScratch {
        // SAFETY: all-zero is a valid value for these plain C structs.
        headers: unsafe { zeroed() },
        iovecs: unsafe { zeroed() },
        controls: std::array::from_fn(|_| Cmsg([0; CMSG_SPACE])),
        addrs: unsafe { zeroed() },
    }));
}

/// Asks the kernel to report each datagram's destination address (IP_PKTINFO / IPV6_RECVPKTINFO); needed only on
/// wildcard-bound listeners, so a reply can leave from the address the request reached.
pub fn enable_pktinfo(socket: &std::net::UdpSocket) -> io::Result<()> {
    match socket.local_addr()? {
        SocketAddr::V4(_) => set_int(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1),
        SocketAddr::V6(_) => set_int(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1),
    }
}

/// Receives up to `BATCH` datagrams with one `recvmmsg`, each into `slots[i][offset..]` (the offset is the relay's
/// headroom for the ChannelData header).
pub fn recv_batch(
    socket: &std::net::UdpSocket,
    slots: &mut [Box<[u8]>],
    offset: usize,
    metas: &mut [RecvMeta],
    want_dst: bool,
) -> io::Result<usize> {
    RECV_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let RecvScratch {
            headers,
            iovecs,
            controls,
            addrs,
        } = &mut **scratch;
        let mut n = 0;
        for ((((slot, h), iov), ctrl), addr) in slots
            .iter_mut()
            .zip(headers.iter_mut())
            .zip(iovecs.iter_mut())
            .zip(controls.iter_mut())
            .zip(addrs.iter_mut())
        {
            let Some(buf) = slot.get_mut(offset..) else { break };
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_flags = 0;
            if want_dst {
                h.msg_hdr.msg_control = ctrl.0.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = CMSG_SPACE as _;
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
            h.msg_len = 0;
            n += 1;
        }
        n = n.min(metas.len());
        // SAFETY: `headers[..n]` point into the scratch arrays and the caller's slots, which outlive the call; the
        // kernel writes at most `iov_len`, `msg_namelen` and `msg_controllen` bytes into them.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = rc as usize;
        for (i, (h, meta)) in headers.iter_mut().zip(metas.iter_mut()).take(got).enumerate() {
            let Some(storage) = addrs.get(i) else { break };
            // SAFETY: the kernel filled `msg_namelen` bytes of a sockaddr_storage, which SockAddr::new takes as is.
            let addr = unsafe { SockAddr::new(*storage, h.msg_hdr.msg_namelen) };
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            *meta = RecvMeta {
                addr: addr.as_socket().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                // A truncated datagram gets a length no buffer has, so every caller drops it.
                len: if truncated { usize::MAX } else { h.msg_len as usize },
                // SAFETY: msg_control/msg_controllen describe the control bytes the kernel wrote for this datagram.
                dst_ip: if want_dst {
                    unsafe { read_pktinfo(&h.msg_hdr) }
                } else {
                    None
                },
            };
        }
        Ok(got)
    })
}

/// The destination address from an IP_PKTINFO / IPV6_PKTINFO control message, if any.
///
/// # Safety
/// `hdr.msg_control` must be null or point at `hdr.msg_controllen` readable, cmsghdr-aligned bytes.
unsafe fn read_pktinfo(hdr: &libc::msghdr) -> Option<IpAddr> {
    if hdr.msg_control.is_null() {
        return None;
    }
    let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
    while !cmsg.is_null() {
        match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>());
                return Some(IpAddr::from(info.ipi_addr.s_addr.to_ne_bytes()));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>());
                return Some(IpAddr::from(info.ipi6_addr.s6_addr));
            }
            _ => cmsg = libc::CMSG_NXTHDR(hdr, cmsg),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    fn out<'a>(data: &'a [u8], dst: SocketAddr) -> OutDatagram<'a> {
        OutDatagram {
            data,
            dst,
            src_ip: None,
        }
    }

    fn receiver(gro: bool) -> UdpSocket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        set_int(&socket, libc::SOL_UDP, libc::UDP_GRO, i32::from(gro)).unwrap();
        socket
    }

    /// One receive: the bytes, the sender, and the GRO segment size when the kernel delivered several datagrams
    /// as one.
    fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr, Option<u16>) {
        let mut buf = vec![0u8; 65_536];
        let mut ctrl = Cmsg([0; CMSG_SPACE]);
        // SAFETY: plain C structs, all-zero valid.
        let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = ctrl.0.as_mut_ptr().cast();
        hdr.msg_controllen = CMSG_SPACE as _;
        // SAFETY: every pointer in `hdr` points at a live local of the stated size.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut hdr, 0) };
        assert!(n >= 0, "recvmsg: {}", io::Error::last_os_error());
        buf.truncate(n as usize);
        let mut segment = None;
        // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into `ctrl`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                    segment = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>()));
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        // SAFETY: the kernel filled `msg_namelen` bytes of the sockaddr_storage.
        let from = unsafe { SockAddr::new(addr, hdr.msg_namelen) }.as_socket().unwrap();
        (buf, from, segment)
    }

    /// Datagram `i` of a test: `len` bytes, each `i`, so a lost, reordered or cut datagram shows.
    fn datagram(i: u8, len: usize) -> Vec<u8> {
        vec![i; len]
    }

    /// `sendmmsg` sends a run as one message only when its segment size was written: without it the kernel would
    /// join the run's datagrams into one.
    #[test]
    fn the_segment_size_is_reported_written_only_when_it_fits() {
        let src: IpAddr = "2001:db8::1".parse().unwrap();
        // SAFETY: `CMSG_SPACE` is a pure size computation.
        let pktinfo = unsafe { libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) } as usize;
        for (room, want) in [
            (CMSG_SPACE, (CMSG_SPACE, true)),
            (pktinfo, (pktinfo, false)),
            (0, (0, false)),
        ] {
            let mut ctrl = Cmsg([0; CMSG_SPACE]);
            // SAFETY: a plain C struct, all-zero valid.
            let mut hdr: libc::msghdr = unsafe { zeroed() };
            hdr.msg_control = ctrl.0.as_mut_ptr().cast();
            hdr.msg_controllen = room as _;
            // SAFETY: `msg_control` points at CMSG_SPACE aligned bytes, of which `room` are offered.
            let got = unsafe { write_controls(&mut hdr, Some(src), Some(1200)) };
            assert_eq!(got, want, "with {room} bytes of control space");
        }
    }

    #[test]
    fn runs_end_where_the_destination_source_or_length_changes() {
        let a = SocketAddr::from(([192, 0, 2, 1], 1000));
        let b = SocketAddr::from(([192, 0, 2, 2], 1000));
        let (big, small, huge) = (vec![0u8; 100], vec![0u8; 60], vec![0u8; 40_000]);
        let same = [out(&big, a), out(&big, a), out(&big, a), out(&big, b)];
        assert_eq!(run_len(&same, true), 3, "up to the other destination");
        assert_eq!(run_len(&same, false), 1, "GSO off: every datagram its own message");
        let shorter_last = [out(&big, a), out(&small, a), out(&big, a)];
        assert_eq!(
            run_len(&shorter_last, true),
            2,
            "a shorter datagram ends the run it joins"
        );
        let longer = [out(&small, a), out(&big, a)];
        assert_eq!(run_len(&longer, true), 1, "a longer datagram starts a run of its own");
        let mut pinned = out(&big, a);
        pinned.src_ip = Some(IpAddr::from([192, 0, 2, 9]));
        assert_eq!(run_len(&[out(&big, a), pinned], true), 1, "another source address");
        assert_eq!(
            run_len(&[out(&huge, a), out(&huge, a)], true),
            1,
            "two would pass 64 KiB"
        );
        let empty: Vec<u8> = Vec::new();
        assert_eq!(run_len(&[out(&empty, a), out(&empty, a)], true), 1);
        let many = vec![out(&big, a); 3 * BATCH];
        assert_eq!(run_len(&many, true), MAX_SEGMENTS);
    }

    #[test]
    fn a_run_leaves_as_one_message_and_arrives_whole() {
        let sender = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false).unwrap();
        let rx = receiver(true);
        let dst = rx.local_addr().unwrap();
        let data: Vec<Vec<u8>> = (0..5).map(|i| datagram(i, 100)).chain([datagram(5, 30)]).collect();
        let outs: Vec<_> = data.iter().map(|d| out(d, dst)).collect();
        set_gso(true);
        assert_eq!(try_send_all(&sender, &outs), 6);
        if kernel_has_gso() {
            // Over loopback the kernel hands a GRO socket the GSO message uncut: one receive, segment size 100.
            let (bytes, _, segment) = recv(&rx);
            assert_eq!(segment, Some(100), "one message, cut every 100 bytes");
            assert_eq!(bytes, data.concat());
        } else {
            // A kernel without GSO (before 4.18): the same datagrams, one by one.
            for d in &data {
                assert_eq!(recv(&rx).0, *d);
            }
        }

        // Off, the same datagrams arrive one by one.
        set_gso(false);
        assert_eq!(try_send_all(&sender, &outs), 6);
        for d in &data {
            let (bytes, _, segment) = recv(&rx);
            assert_eq!((&bytes, segment), (d, None));
        }
        set_gso(true);
    }

    #[test]
    fn a_run_over_ipv6_leaves_as_one_message() {
        let loopback = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let sender = bind(loopback, false).unwrap();
        let rx = UdpSocket::bind(loopback).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        set_int(&rx, libc::SOL_UDP, libc::UDP_GRO, 1).unwrap();
        let data: Vec<Vec<u8>> = (0..3).map(|i| datagram(i, 1200)).collect();
        let outs: Vec<_> = data.iter().map(|d| out(d, rx.local_addr().unwrap())).collect();
        set_gso(true);
        assert_eq!(try_send_all(&sender, &outs), 3);
        if kernel_has_gso() {
            let (bytes, _, segment) = recv(&rx);
            assert_eq!((bytes, segment), (data.concat(), Some(1200)));
        } else {
            for d in &data {
                assert_eq!(recv(&rx).0, *d);
            }
        }
    }

    #[test]
    fn runs_to_several_destinations_arrive_in_order_each_datagram_whole() {
        let sender = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false).unwrap();
        let (rx_a, rx_b) = (receiver(false), receiver(false));
        let (a, b) = (rx_a.local_addr().unwrap(), rx_b.local_addr().unwrap());
        // 40 datagrams (more than a batch): runs of lengths 1..4 alternating destinations, some with a short end.
        let mut plan: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut i = 0u8;
        while plan.len() < 40 {
            let dst = if i.is_multiple_of(2) { a } else { b };
            for k in 0..=(i % 4) {
                let len = if k == i % 4 && i.is_multiple_of(3) { 50 } else { 700 };
                plan.push((dst, datagram(plan.len() as u8, len)));
            }
            i += 1;
        }
        let outs: Vec<_> = plan.iter().map(|(dst, d)| out(d, *dst)).collect();
        set_gso(true);
        assert_eq!(try_send_all(&sender, &outs), plan.len());
        for (rx, dst) in [(&rx_a, a), (&rx_b, b)] {
            for (_, d) in plan.iter().filter(|(to, _)| *to == dst) {
                assert_eq!(&recv(rx).0, d);
            }
        }
    }

    #[test]
    fn a_run_the_kernel_refuses_whole_is_sent_datagram_by_datagram() {
        let sender = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false).unwrap();
        // A socket that sends without UDP checksums cannot use GSO: the kernel refuses the run (EINVAL).
        set_int(&sender, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).unwrap();
        let rx = receiver(false);
        let dst = rx.local_addr().unwrap();
        let data: Vec<Vec<u8>> = (0..7).map(|i| datagram(i, 200)).collect();
        let outs: Vec<_> = data.iter().map(|d| out(d, dst)).collect();
        set_gso(true);
        assert_eq!(try_send_all(&sender, &outs), 7);
        for d in &data {
            assert_eq!(&recv(&rx).0, d);
        }
    }

    #[test]
    fn a_run_from_a_pinned_source_address_keeps_it() {
        let sender = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), false).unwrap();
        let rx = receiver(true);
        let dst = rx.local_addr().unwrap();
        let source = IpAddr::from([127, 0, 0, 3]);
        let data: Vec<Vec<u8>> = (0..4).map(|i| datagram(i, 300)).collect();
        let outs: Vec<_> = data
            .iter()
            .map(|d| OutDatagram {
                data: d,
                dst,
                src_ip: Some(source),
            })
            .collect();
        set_gso(true);
        assert_eq!(try_send_all(&sender, &outs), 4);
        let mut got = Vec::new();
        while got.len() < data.concat().len() {
            let (bytes, from, _) = recv(&rx);
            assert_eq!(from.ip(), source);
            got.extend(bytes);
        }
        assert_eq!(got, data.concat());
    }
}
