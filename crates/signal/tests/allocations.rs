#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a relayed message costs in heap allocations, counted by a global allocator of this test binary. A delivered
//! `signal` is written once into one buffer shared by the replay buffer and the socket; a `broadcast` writes one
//! such buffer per recipient. Parsing the client's envelope (its `type`, `to` and `id` strings) is counted too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use signal::{Limits, MemoryHub, Now, Output, SignalHub};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn drain(hub: &mut MemoryHub, frames: &mut Vec<bytes::Bytes>) {
    while let Some(out) = hub.poll_output() {
        if let Output::Send { text, .. } = out {
            frames.push(text);
        }
    }
}

/// Allocations made by `f`.
fn count(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn a_relayed_message_is_written_once_per_recipient() {
    let start = Instant::now();
    let now = Now {
        instant: start,
        unix: 1_800_000_000,
    };
    let ice: signal::IceServerSource = Box::new(|_, _| serde_json::value::to_raw_value(&[0u8; 0]).unwrap());
    let mut hub = MemoryHub::new(
        Limits {
            burst: 1_000_000,
            ..Limits::default()
        },
        None,
        ice,
        rand::rngs::StdRng::seed_from_u64(1),
        start,
    );
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut frames = Vec::with_capacity(4096);
    let mut ids = Vec::new();
    for conn in 1..=3 {
        hub.handle_connect(conn, ip, now).unwrap();
        hub.handle_text(conn, r#"{"type":"join","room":"r"}"#, now);
        drain(&mut hub, &mut frames);
        let joined: serde_json::Value =
            serde_json::from_slice(frames.iter().rev().find(|f| f.starts_with(b"{\"seq\":1,")).unwrap()).unwrap();
        ids.push(joined["peerId"].as_str().unwrap().to_owned());
    }
    let signal = format!(
        r#"{{"type":"signal","to":"{}","data":{{"sdp":"v=0 {}"}}}}"#,
        ids[1],
        "x".repeat(2000)
    );
    let broadcast = format!(r#"{{"type":"broadcast","data":{{"chat":"{}"}}}}"#, "x".repeat(2000));
    // Warm the maps and queues up, so growth is not counted.
    for _ in 0..64 {
        hub.handle_text(1, &signal, now);
        hub.handle_text(1, &broadcast, now);
        drain(&mut hub, &mut frames);
    }
    frames.clear();

    let signal_cost = count(|| {
        hub.handle_text(1, &signal, now);
        drain(&mut hub, &mut frames);
    });
    let broadcast_cost = count(|| {
        hub.handle_text(1, &broadcast, now);
        drain(&mut hub, &mut frames);
    });
    assert_eq!(frames.len(), 3, "one signal and two broadcast frames delivered");
    println!("allocations: signal {signal_cost}, broadcast to 2 peers {broadcast_cost}");
    // signal: the envelope's `type` and `to` strings, the frame, and the shared header `Bytes` makes when the frame
    // is cloned into the replay buffer. Broadcast: its `type`, then frame and shared header per recipient.
    assert!(signal_cost <= 4, "signal: {signal_cost} allocations");
    assert!(broadcast_cost <= 5, "broadcast: {broadcast_cost} allocations");
}
