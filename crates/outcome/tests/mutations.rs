//! Stranger input never panics: valid reports mutated byte by byte (a fixed-seed generator, so a failure replays)
//! go through `Report::parse`, and whatever parses through `classify` (paired and alone) and the store.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use outcome::{classify, Outcomes, Report};

const SEEDS: [&str; 3] = [
    r#"{"outcome":"connected","elapsedMs":812,"policy":"all",
        "pair":{"local":{"type":"relay","protocol":"udp","relayProtocol":"tls","url":"turns:t.example:443?transport=tcp"},
                "remote":{"type":"srflx","protocol":"udp"}},
        "gathered":{"host":2,"srflx":1,"relayUdp":1,"relayTls":1},
        "offered":{"stun":1,"turnUdp":1,"turnTcp":1,"turnTls":1,"turnTls443":1},
        "errors":[{"code":701,"url":"turn:t.example:3478?transport=udp","text":"TURN allocate request timed out."}],
        "remoteCandidates":4,"remoteDescription":true,"restarts":0,"browser":{"name":"chrome","version":131}}"#,
    r#"{"outcome":"failed","elapsedMs":9000,"policy":"relay","gathered":{},"offered":{"turnUdp":1},
        "errors":[{"code":401,"url":"turn:t.example:3478","text":"Unauthorized."}],"remoteCandidates":0}"#,
    r#"{"outcome":"timeout","elapsedMs":30000,"gathered":{"host":1,"srflx":1},"offered":{"stun":1},
        "remoteDescription":false,"pair":{"local":{"type":"host","protocol":"tcp"},"remote":{"type":"prflx","protocol":"udp"}}}"#,
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_reports_never_panic_the_parser_the_classifier_or_the_store() {
    let mut rng = Rng(0x5eed_f00d);
    let store = Outcomes::new();
    let tokens: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"-1",
        b"1e9",
        b"65536",
        b"null",
        b"true",
        b"\\u0000",
        b"\xff",
        b"\"relay\"",
        b"\"turns:\"",
        b"\"stun:x\"",
        b"701",
        b"401",
        b"\"errors\":[]",
    ];
    let (mut parsed, mut refused) = (0u32, 0u32);
    for i in 0..30_000u64 {
        let mut bytes = SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] = rng.next() as u8,
                1 => {
                    bytes.remove(at);
                }
                2 => {
                    let t = tokens[rng.below(tokens.len())];
                    bytes.splice(at..at, t.iter().copied());
                }
                _ => {
                    let end = (at + rng.below(40)).min(bytes.len());
                    let chunk = bytes[at..end].to_vec();
                    bytes.splice(at..at, chunk);
                }
            }
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        match Report::parse(text) {
            Ok(r) => {
                parsed += 1;
                let d = classify(&r, Some(&r));
                assert!(!d.message.is_empty());
                store.record(&classify(&r, None).between("r", "a", "b"), 1_000_000 + i);
            }
            Err(_) => refused += 1,
        }
    }
    let s = store.snapshot(1_030_000);
    assert_eq!(u64::from(parsed), s.connected + s.failed);
    assert!(
        parsed > 1_000 && refused > 1_000,
        "both paths exercised: {parsed} parsed, {refused} refused"
    );
}
