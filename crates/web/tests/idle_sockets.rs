#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! What an idle signaling socket holds on the heap, by jemalloc's count of what the server's thread allocated and
//! freed: the socket task, its session and its queue — no read or write buffer (issue 14; `bench/signaling/run.sh`
//! measures the whole process's memory per socket, kernel-independent, against the PeerJS server's).
//!
//! The server runs on this test's thread (a current-thread runtime), so every byte a socket keeps is counted here;
//! the clients are plain blocking sockets on a thread of their own, counted nowhere.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use web::{Scheme, Web, WebConfig};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Idle sockets measured, after as many opened first so that every table and thread buffer has its size (600
/// descriptors in all, under the usual soft limit of 1024).
const SOCKETS: usize = 150;
/// The heap an idle, joined socket may keep: its task (768 B with tokio's header: the socket's state machine, no
/// timer), its session in the hub (ids, room, token bucket, one slot for the `peer-joined` kept for a resume until
/// acknowledged — `joined` is not kept), the hub's table entries and one slot of its queue — 2.1 KiB measured
/// (2026-12-03). It was 3.3 KiB while each socket had a ping timer of its own, waited on a `Notify`, kept its
/// `joined`, a four-slot replay buffer and its queue's slots; with tungstenite each socket also kept a 2 KiB read
/// buffer, a write buffer the size of its largest batch and tungstenite's own state. A buffer or a timer per socket
/// coming back would cross this.
const BUDGET: i64 = 2560;

fn start() -> (Web, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let limits = signal::Limits {
        max_connections_per_ip: 10 * SOCKETS,
        messages_per_second: 100_000,
        burst: 100_000,
        ..signal::Limits::default()
    };
    let web = Web::start(WebConfig {
        limits,
        ..common::config(dir.path())
    })
    .unwrap();
    (web, dir)
}

/// Bytes this thread has allocated and not freed.
fn live() -> i64 {
    let allocated = tikv_jemalloc_ctl::thread::allocatedp::mib()
        .unwrap()
        .read()
        .unwrap()
        .get();
    let freed = tikv_jemalloc_ctl::thread::deallocatedp::mib()
        .unwrap()
        .read()
        .unwrap()
        .get();
    allocated as i64 - freed as i64
}

/// A masked client text frame (payload under 126 bytes).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Opens `count` sockets, each joined to a room of two, and returns them once every one has its `joined`.
fn open(addr: SocketAddr, count: usize, first: usize) -> Vec<TcpStream> {
    (first..first + count)
        .map(|i| {
            let mut tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let request = format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).unwrap();
            tcp.write_all(&masked_text(
                format!(r#"{{"type":"join","room":"r{}"}}"#, i / 2).as_bytes(),
            ))
            .unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 2048];
            while !String::from_utf8_lossy(&got).contains(r#""type":"joined""#) {
                let n = tcp.read(&mut chunk).expect("an answer within 10 s");
                assert!(n > 0, "socket {i} closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
            tcp
        })
        .collect()
}

#[test]
fn an_idle_socket_keeps_no_buffers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (web, _dir) = start();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let _accept = rt.spawn(async move {
        while let Ok((tcp, remote)) = listener.accept().await {
            let web = web.clone();
            tokio::spawn(async move { web.serve_connection(tcp, remote, Scheme::Http).await });
        }
    });
    let settle =
        |rt: &tokio::runtime::Runtime| rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });

    // Warm-up: tables, thread buffers and the runtime's slabs reach their size.
    let warm = std::thread::spawn(move || open(addr, SOCKETS, 0));
    while !warm.is_finished() {
        settle(&rt);
    }
    let warm = warm.join().unwrap();
    settle(&rt);

    let before = live();
    let more = std::thread::spawn(move || open(addr, SOCKETS, SOCKETS));
    while !more.is_finished() {
        settle(&rt);
    }
    let more = more.join().unwrap();
    settle(&rt);
    let per_socket = (live() - before) / SOCKETS as i64;
    println!("heap kept per idle socket: {per_socket} bytes (budget {BUDGET})");
    assert!(
        per_socket <= BUDGET,
        "an idle socket keeps {per_socket} bytes of heap, over its budget of {BUDGET}"
    );

    drop((warm, more));
}
