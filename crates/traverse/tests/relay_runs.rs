//! Runs of datagrams through the relay (`relay.gso`): a video frame's packets, sent back to back by a browser, cross
//! Traverse both ways and leave it as one UDP GSO message per run, which the kernel cuts into the datagrams again.
//!
//! The peer and the client here are UDP sockets with `UDP_GRO` on: over loopback the kernel hands such a socket a
//! GSO message uncut, with its segment size, and never merges datagrams sent one by one (loopback has no GRO). So
//! a read carrying several datagrams proves that the server sent them as one message, and with `relay.gso=false`
//! none may. Every byte is checked, in order, either way. The runs themselves go out as GSO messages too, so that
//! each reaches the server's socket whole, before the worker wakes for it.

#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::SockAddr;
use stun::{attr, Class};

use common::{channel_data, Conn, Server, TurnClient, LOOPBACK};

const CHANNEL: u16 = 0x4000;
/// Datagrams per run: a video frame of about 1.6 KB at this size.
const RUN: usize = 8;
const PAYLOAD: usize = 200;
/// Runs per direction: at least one must reach the server's socket before the worker wakes for its first datagram.
const ROUNDS: u8 = 10;

/// Sets `UDP_GRO`: the kernel may then hand this socket several datagrams of one GSO message in one read.
fn accept_runs(socket: &UdpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives across the call and its size is passed; the fd is owned by `socket`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_GRO: {}", std::io::Error::last_os_error());
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

#[repr(C, align(8))]
struct Control([u8; 64]);

/// Sends `datagrams` (all of one length) to `to` as one GSO message.
fn send_run(socket: &UdpSocket, to: SocketAddr, datagrams: &[Vec<u8>]) {
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let addr = SockAddr::from(to);
    let mut control = Control([0; 64]);
    // SAFETY: an all-zero msghdr is valid; every pointer set below points at a live local of the stated size, and
    // the one control message fits in `control`.
    unsafe {
        let mut hdr: libc::msghdr = zeroed();
        hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addr.len();
        hdr.msg_iov = iovecs.as_mut_ptr();
        hdr.msg_iovlen = iovecs.len() as _;
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), datagrams[0].len() as u16);
        let sent = libc::sendmsg(socket.as_raw_fd(), &hdr, 0);
        assert!(
            sent > 0,
            "sendmsg with UDP_SEGMENT: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// One read: its datagrams (cut at the GRO segment size when the kernel delivered a GSO message whole) and whether
/// it carried more than one.
fn read_datagrams(socket: &UdpSocket) -> (Vec<Vec<u8>>, bool) {
    let mut buf = vec![0u8; 65_536];
    let mut control = Control([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut segment = None;
    // SAFETY: an all-zero msghdr is valid; its pointers are live locals of the stated sizes, and the kernel wrote
    // `msg_controllen` bytes of control messages.
    let n = unsafe {
        let mut hdr: libc::msghdr = zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = control.0.len() as _;
        let n = libc::recvmsg(socket.as_raw_fd(), &mut hdr, 0);
        assert!(n >= 0, "no datagram within 5 s: {}", std::io::Error::last_os_error());
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                segment = Some(usize::from(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<u16>(),
                )));
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
        n as usize
    };
    buf.truncate(n);
    match segment {
        Some(size) if size > 0 && n > size => (buf.chunks(size).map(<[u8]>::to_vec).collect(), true),
        _ => (vec![buf], false),
    }
}

/// Payload `i` of run `round`: its bytes name both, so a lost, reordered or cut datagram shows.
fn payload(round: u8, i: usize) -> Vec<u8> {
    let mut p = vec![round; PAYLOAD];
    p[1] = i as u8;
    p
}

/// Relays `ROUNDS` runs client → peer and `ROUNDS` peer → client through a fresh server started with `args`;
/// returns how many reads on each side carried more than one datagram.
fn relay_runs(args: &[&str]) -> (usize, usize) {
    let mut all = vec!["--user", "alice:pw", "--workers", "1", "--allow-peer", "127.0.0.0/8"];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    accept_runs(&peer);
    let mut client = TurnClient::new(Conn::udp(server.udp), "alice", "pw");
    let allocated = client.allocate(false);
    assert_eq!(allocated.class(), Class::Success, "{}", allocated.describe());
    let relayed = allocated.address(attr::XOR_RELAYED_ADDRESS).expect("relayed address");
    let bound = client.channel_bind(CHANNEL, peer.local_addr().unwrap());
    assert_eq!(bound.class(), Class::Success, "{}", bound.describe());
    let Conn::Udp { sock, .. } = &client.conn else {
        unreachable!()
    };
    let client_socket = sock.try_clone().unwrap();
    accept_runs(&client_socket);

    // Client → peer: each run as ChannelData; the peer gets the payloads.
    let mut merged_at_peer = 0;
    for round in 0..ROUNDS {
        let frames: Vec<Vec<u8>> = (0..RUN)
            .map(|i| channel_data(CHANNEL, &payload(round, i), false))
            .collect();
        send_run(&client_socket, server.udp, &frames);
        let mut got = Vec::new();
        while got.len() < RUN {
            let (datagrams, merged) = read_datagrams(&peer);
            merged_at_peer += usize::from(merged);
            got.extend(datagrams);
        }
        let want: Vec<Vec<u8>> = (0..RUN).map(|i| payload(round, i)).collect();
        assert_eq!(got, want, "run {round} from the client, at the peer");
    }

    // Peer → client: each run's payloads; the client gets them as ChannelData on its channel.
    let mut merged_at_client = 0;
    for round in 0..ROUNDS {
        let payloads: Vec<Vec<u8>> = (0..RUN).map(|i| payload(round, i)).collect();
        send_run(&peer, relayed, &payloads);
        let mut got = Vec::new();
        while got.len() < RUN {
            let (datagrams, merged) = read_datagrams(&client_socket);
            merged_at_client += usize::from(merged);
            got.extend(datagrams);
        }
        let want: Vec<Vec<u8>> = payloads.iter().map(|p| channel_data(CHANNEL, p, false)).collect();
        assert_eq!(got, want, "run {round} from the peer, at the client");
    }
    (merged_at_peer, merged_at_client)
}

#[test]
fn a_run_of_datagrams_leaves_the_relay_as_one_message_each_way() {
    let (at_peer, at_client) = relay_runs(&[]);
    eprintln!("merged reads: {at_peer} at the peer, {at_client} at the client");
    assert!(at_peer > 0, "no run reached the peer as one message in {ROUNDS}");
    assert!(at_client > 0, "no run reached the client as one message in {ROUNDS}");
}

#[test]
fn with_gso_off_every_datagram_leaves_on_its_own() {
    assert_eq!(relay_runs(&["--set", "relay.gso=false"]), (0, 0));
}

/// TURN over TCP: the frames of one read that go to one peer leave as one GSO message; the peer gets every payload
/// whole and in order (each frame padded to four bytes, which the peer never sees).
#[test]
fn a_run_of_frames_over_tcp_leaves_the_relay_as_one_message() {
    let server = Server::start(&["--user", "alice:pw", "--workers", "1", "--allow-peer", "127.0.0.0/8"]);
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    accept_runs(&peer);
    let mut client = TurnClient::new(Conn::tcp(server.tcp), "alice", "pw");
    let allocated = client.allocate(false);
    assert_eq!(allocated.class(), Class::Success, "{}", allocated.describe());
    let bound = client.channel_bind(CHANNEL, peer.local_addr().unwrap());
    assert_eq!(bound.class(), Class::Success, "{}", bound.describe());
    let odd = |round: u8, i: usize| payload(round, i)[..PAYLOAD - 1].to_vec();
    let mut merged = 0;
    for round in 0..ROUNDS {
        // One write: the server reads the run at once.
        let frames: Vec<u8> = (0..RUN)
            .flat_map(|i| channel_data(CHANNEL, &odd(round, i), true))
            .collect();
        client.conn.send(&frames);
        let mut got = Vec::new();
        while got.len() < RUN {
            let (datagrams, coalesced) = read_datagrams(&peer);
            merged += usize::from(coalesced);
            got.extend(datagrams);
        }
        let want: Vec<Vec<u8>> = (0..RUN).map(|i| odd(round, i)).collect();
        assert_eq!(got, want, "run {round} over TCP, at the peer");
    }
    assert!(
        merged > 0,
        "no run over TCP reached the peer as one message in {ROUNDS}"
    );

    // More frames in one write than the server keeps per send (32): every one arrives, in order.
    let many: Vec<Vec<u8>> = (0..70u8).map(|i| vec![i; 20]).collect();
    let frames: Vec<u8> = many.iter().flat_map(|p| channel_data(CHANNEL, p, true)).collect();
    client.conn.send(&frames);
    let mut got = Vec::new();
    while got.len() < many.len() {
        got.extend(read_datagrams(&peer).0);
    }
    assert_eq!(got, many, "70 frames in one write");
}
