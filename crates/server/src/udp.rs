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
    set_int(socket, libc::SOL_UDP, libc::UDP_GRO, 0)?;
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

/// Sends the datagrams, `BATCH` per system call (a lone datagram with plain `sendto`), without waiting: when the
/// socket buffer is full the rest are dropped, as a router would, rather than stalling every other allocation of
/// the worker. A datagram the kernel refuses (unreachable destination, too big) is skipped. Returns how many were
/// sent. The socket is non-blocking; no readiness is consulted, since a send is worth trying anyway.
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
    let mut sent = 0;
    let mut at = 0;
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        while let Some(chunk) = datagrams
            .get(at..(at + BATCH).min(datagrams.len()))
            .filter(|c| !c.is_empty())
        {
            match sendmmsg(socket, chunk, &mut scratch) {
                Ok(n) => {
                    sent += n;
                    at += n.max(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => at += 1,
            }
        }
    });
    sent
}

/// Control-message space for one IPv6 packet-info (the larger of the two).
const CMSG_SPACE: usize = 64;

#[repr(C, align(8))]
struct Cmsg([u8; CMSG_SPACE]);

/// The `sendmmsg` arrays, kept per thread so a send does not zero 9 KiB of headers each time.
struct Scratch {
    headers: [libc::mmsghdr; BATCH],
    iovecs: [libc::iovec; BATCH],
    controls: [Cmsg; BATCH],
    addrs: [libc::sockaddr_in6; BATCH],
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<Scratch>> = std::cell::RefCell::new(Box::new(Scratch {
        // SAFETY: all-zero is a valid value for these plain C structs.
        headers: unsafe { zeroed() },
        iovecs: unsafe { zeroed() },
        controls: std::array::from_fn(|_| Cmsg([0; CMSG_SPACE])),
        addrs: unsafe { zeroed() },
    }));
}

fn sendmmsg(socket: &std::net::UdpSocket, datagrams: &[OutDatagram<'_>], scratch: &mut Scratch) -> io::Result<usize> {
    let n = datagrams.len().min(BATCH);
    let Scratch {
        headers,
        iovecs,
        controls,
        addrs,
    } = scratch;
    for ((((d, h), iov), ctrl), addr) in datagrams
        .iter()
        .zip(headers.iter_mut())
        .zip(iovecs.iter_mut())
        .zip(controls.iter_mut())
        .zip(addrs.iter_mut())
    {
        let sockaddr = SockAddr::from(d.dst);
        let len = (sockaddr.len() as usize).min(size_of::<libc::sockaddr_in6>());
        // SAFETY: copies `len` bytes of a valid sockaddr into a sockaddr_in6-sized slot (the larger family).
        unsafe {
            std::ptr::copy_nonoverlapping(
                sockaddr.as_ptr().cast::<u8>(),
                (addr as *mut libc::sockaddr_in6).cast::<u8>(),
                len,
            );
        }
        iov.iov_base = d.data.as_ptr() as *mut libc::c_void;
        iov.iov_len = d.data.len();
        h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in6).cast();
        h.msg_hdr.msg_namelen = len as libc::socklen_t;
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
        if let Some(src) = d.src_ip {
            h.msg_hdr.msg_control = ctrl.0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_SPACE as _;
            // SAFETY: msg_control points at CMSG_SPACE aligned bytes owned by the scratch, large enough for one
            // in_pktinfo or in6_pktinfo message; CMSG_FIRSTHDR/CMSG_DATA stay within it.
            let used = unsafe { write_pktinfo(&mut h.msg_hdr, src) };
            h.msg_hdr.msg_controllen = used as _;
            if used == 0 {
                h.msg_hdr.msg_control = std::ptr::null_mut();
            }
        }
    }
    // SAFETY: `headers[..n]` point into the scratch arrays and the caller's data, all of which outlive the call;
    // the kernel only reads them.
    let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), n as libc::c_uint, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Writes an IP_PKTINFO / IPV6_PKTINFO control message selecting `src`; returns the bytes used.
///
/// # Safety
/// `hdr.msg_control` must point at `hdr.msg_controllen` writable, cmsghdr-aligned bytes.
unsafe fn write_pktinfo(hdr: &mut libc::msghdr, src: IpAddr) -> usize {
    let cmsg = libc::CMSG_FIRSTHDR(hdr);
    if cmsg.is_null() {
        return 0;
    }
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
