#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! What a relayed message costs on the heap, in bytes, by jemalloc's count of what this thread allocated. A delivered
//! `signal` is written once into one buffer shared by the replay buffer and the socket; a `broadcast` writes one such
//! buffer per recipient and nothing else of its size (before the frame encoder it also built the body once more).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use rand::SeedableRng;
use signal::{ConnId, Limits, MemoryHub, Now, Output, SignalHub};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn drain(hub: &mut MemoryHub, frames: &mut Vec<bytes::Bytes>) {
    while let Some(out) = hub.poll_output() {
        if let Output::Send { text, .. } = out {
            frames.push(text);
        }
    }
}

/// Bytes allocated by `f` on this thread.
fn allocated_by(f: impl FnOnce()) -> u64 {
    let counter = tikv_jemalloc_ctl::thread::allocatedp::mib().unwrap().read().unwrap();
    let before = counter.get();
    f();
    counter.get() - before
}

#[test]
fn a_relayed_message_is_written_once_per_recipient() {
    let start = Instant::now();
    let now = Now {
        instant: start,
        unix: 1_800_000_000,
    };
    let ice: signal::IceServerSource = Box::new(|_, _| serde_json::value::to_raw_value(&[0u8; 0]).unwrap());
    let limits = Limits {
        burst: 1_000_000,
        ..Limits::default()
    };
    let mut hub = MemoryHub::new(limits, None, ice, rand::rngs::StdRng::seed_from_u64(1), start);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut frames = Vec::with_capacity(4096);
    let mut ids = Vec::new();
    for conn in 1..=3 {
        hub.handle_connect(ConnId::new(conn), ip, now).unwrap();
        hub.handle_text(ConnId::new(conn), r#"{"type":"join","room":"r"}"#, now);
        drain(&mut hub, &mut frames);
        let joined = frames.iter().rev().find(|f| f.starts_with(b"{\"seq\":1,")).unwrap();
        let joined: serde_json::Value = serde_json::from_slice(joined).unwrap();
        ids.push(joined["peerId"].as_str().unwrap().to_owned());
    }
    let payload = "x".repeat(4000);
    let signal = format!(r#"{{"type":"signal","to":"{}","data":{{"sdp":"{payload}"}}}}"#, ids[1]);
    let broadcast = format!(r#"{{"type":"broadcast","data":{{"chat":"{payload}"}}}}"#);
    // Warm the maps and queues up, so their growth is not counted: 80 rounds leave every replay buffer (80 and 161
    // frames) well short of its next doubling (128, 256).
    for _ in 0..80 {
        hub.handle_text(ConnId::new(1), &signal, now);
        hub.handle_text(ConnId::new(1), &broadcast, now);
        drain(&mut hub, &mut frames);
    }
    frames.clear();

    let signal_bytes = allocated_by(|| {
        hub.handle_text(ConnId::new(1), &signal, now);
        drain(&mut hub, &mut frames);
    });
    let broadcast_bytes = allocated_by(|| {
        hub.handle_text(ConnId::new(1), &broadcast, now);
        drain(&mut hub, &mut frames);
    });
    assert_eq!(frames.len(), 3, "one signal and two broadcast frames delivered");
    let frame = frames[0].len() as u64;
    println!("a {frame}-byte frame; allocated: signal {signal_bytes} B, broadcast to 2 peers {broadcast_bytes} B");
    // Besides the frames: the envelope's small strings and the header `Bytes` shares a frame through.
    assert!(
        signal_bytes < 2 * frame,
        "signal: {signal_bytes} B for a {frame}-byte frame"
    );
    assert!(
        broadcast_bytes < 3 * frame,
        "broadcast: {broadcast_bytes} B for two {frame}-byte frames"
    );
}
