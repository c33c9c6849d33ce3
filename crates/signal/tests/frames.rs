#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Every server frame, byte for byte: a scripted session (seeded ids, fixed clock) whose whole output is compared
//! with `tests/frames.golden`. A change to any frame's bytes — field order, escaping, spacing — fails here; the
//! protocol tests elsewhere parse JSON and would not notice. Regenerate with `TRAVERSE_BLESS=1` only for a
//! deliberate protocol change.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use serde_json::json;
use signal::{mint_token, Claims, ConnId, Limits, MemoryHub, Now, Output, SignalHub};

const UNIX: u64 = 1_800_000_000;

struct Script {
    hub: MemoryHub<rand::rngs::StdRng>,
    start: Instant,
    at: Duration,
    log: String,
}

impl Script {
    fn now(&self) -> Now {
        Now {
            instant: self.start + self.at,
            unix: UNIX + self.at.as_secs(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, text } => {
                    let text = std::str::from_utf8(&text).expect("frames are UTF-8");
                    writeln!(self.log, "{conn} < {text}").unwrap();
                }
                Output::Ping { conn } => writeln!(self.log, "{conn} ping").unwrap(),
                Output::Close { conn, code, reason } => writeln!(self.log, "{conn} x {} {reason}", code.0).unwrap(),
                Output::Outcome(d) => writeln!(self.log, "outcome {} {}", d.outcome.as_str(), d.reason.code()).unwrap(),
                Output::Session(_) => {}
            }
        }
    }

    fn connect(&mut self, conn: u64, last: u8) {
        let now = self.now();
        let r = self
            .hub
            .handle_connect(ConnId::new(conn), IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), now);
        writeln!(self.log, "{conn} connect {r:?}").unwrap();
    }

    fn send(&mut self, conn: u64, text: &str) {
        let shown: String = text.chars().take(300).collect();
        writeln!(self.log, "{conn} > {shown}").unwrap();
        let now = self.now();
        self.hub.handle_text(ConnId::new(conn), text, now);
        self.drain();
    }

    fn binary(&mut self, conn: u64) {
        writeln!(self.log, "{conn} > (binary)").unwrap();
        let now = self.now();
        self.hub.handle_binary(ConnId::new(conn), now);
        self.drain();
    }

    fn closed(&mut self, conn: u64) {
        writeln!(self.log, "{conn} closed").unwrap();
        let now = self.now();
        self.hub.handle_closed(ConnId::new(conn), now);
        self.drain();
    }

    fn advance(&mut self, d: Duration, live: &[u64]) {
        let end = self.at + d;
        while self.at < end {
            self.at = (self.at + Duration::from_millis(250)).min(end);
            let now = self.now();
            for conn in live {
                self.hub.handle_activity(ConnId::new(*conn), now);
            }
            self.hub.handle_timeout(now);
            self.drain();
        }
    }

    /// The `field` of the last `joined` frame.
    fn last(&self, field: &str) -> String {
        let line = self
            .log
            .lines()
            .rev()
            .find(|l| l.contains(r#""type":"joined""#))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line.split_once(" < ").unwrap().1).unwrap();
        v[field].as_str().unwrap().to_owned()
    }
}

fn script(limits: Limits, secret: Option<&[u8]>) -> Script {
    let start = Instant::now();
    let ice: signal::IceServerSource = Box::new(|peer, unix| {
        serde_json::value::to_raw_value(
            &json!([{"urls": ["turn:192.0.2.1:3478"], "username": format!("{}:{peer}", unix + 60), "credential": "x"}]),
        )
        .unwrap()
    });
    Script {
        hub: MemoryHub::new(
            limits,
            secret.map(<[u8]>::to_vec),
            ice,
            rand::rngs::StdRng::seed_from_u64(42),
            start,
        ),
        start,
        at: Duration::ZERO,
        log: String::new(),
    }
}

fn run() -> String {
    let mut s = script(
        Limits {
            max_queued: 3,
            ..Limits::default()
        },
        None,
    );
    // Before a session: errors with seq 0, pong with seq 0.
    s.connect(1, 1);
    s.send(1, "{not json");
    s.send(1, r#"{"type":"d\"ance\u0001\n"}"#);
    s.send(1, r#"{"type":"signal","to":"p_1","data":1}"#);
    s.send(1, r#"{"type":"join"}"#);
    s.send(1, r#"{"type":"ping"}"#);
    s.binary(1);
    // A room name with a control character is refused (it would forge log lines).
    s.send(1, r#"{"type":"join","room":"r\u0007\tm"}"#);
    // A room name that needs escaping, meta with escapes and non-ASCII.
    s.send(
        1,
        r#"{"type":"join","room":"r\"o\\o/m\u00e9\u2028😀","meta":{"name":"A\"nn","x":[1,{"y":null}],"z":"\u0000é"}}"#,
    );
    let ann = s.last("peerId");
    let ann_session = s.last("session");
    s.connect(2, 2);
    s.send(
        2,
        r#"{"type":"join","room":"r\"o\\o/m\u00e9\u2028😀","meta":{"name":"Bob"}}"#,
    );
    let bob = s.last("peerId");
    s.send(2, &format!(r#"{{"type":"signal","to":"{ann}","data":{{"sdp" : "v=0\r\n", "n": [1, 2.5e3]}},"id":"m\"1\u0002","seq":1}}"#));
    s.send(2, &format!(r#"{{"type":"signal","to":"{ann}","data":"dup","seq":1}}"#));
    s.send(1, r#"{"type":"broadcast","data":  [1, "two", {"3": 4}]  }"#);
    s.send(
        1,
        r#"{"type":"signal","to":"p_nobody\"\u0003","data":1,"id":"q\\\"\u001f"}"#,
    );
    s.send(1, &format!(r#"{{"type":"signal","to":"{ann}","data":1}}"#));
    s.send(1, r#"{"type":"ping","ack":3}"#);
    s.send(2, r#"{"type":"ping","ack":1}"#);
    s.send(1, r#"{"type":"join","room":"x"}"#);
    // Ann drops; Bob's signals queue until the queue is full, then are refused.
    s.closed(1);
    for i in 0..5 {
        s.send(
            2,
            &format!(r#"{{"type":"signal","to":"{ann}","data":{i},"id":"i{i}"}}"#),
        );
    }
    s.connect(3, 1);
    s.send(3, r#"{"type":"resume","session":"s_nope","lastSeq":0}"#);
    s.connect(4, 1);
    s.send(
        4,
        &format!(r#"{{"type":"resume","session":"{ann_session}","lastSeq":99}}"#),
    );
    s.connect(5, 1);
    s.send(
        5,
        &format!(r#"{{"type":"resume","session":"{ann_session}","lastSeq":3}}"#),
    );
    s.send(5, r#"{"type":"ping","ack":4}"#);
    // A third peer joins and leaves; then Ann drops for good and the grace runs out.
    s.connect(6, 3);
    s.send(6, r#"{"type":"join","room":"r\"o\\o/m\u00e9\u2028😀"}"#);
    s.send(6, r#"{"type":"leave"}"#);
    s.closed(5);
    s.send(
        2,
        &format!(r#"{{"type":"signal","to":"{ann}","data":"late","id":"late\"1"}}"#),
    );
    s.send(2, &format!(r#"{{"type":"signal","to":"{ann}","data":"late2"}}"#));
    s.advance(Duration::from_secs(31), &[2]);
    s.send(2, &format!(r#"{{"type":"signal","to":"{bob}","data":1}}"#));
    s.send(2, &"x".repeat(70 * 1024));
    s.connect(7, 7);
    s.send(7, r#"{"type":"join","room":"solo"}"#);
    s.advance(Duration::from_secs(30), &[]);
    s.connect(8, 8);
    s.hub.handle_shutdown();
    s.drain();
    let mut log = s.log;

    // Tokens: caps with characters that need escaping; every refusal closes.
    let mut s = script(Limits::default(), Some(b"k"));
    let token = |room: &str, caps: Vec<String>| {
        mint_token(
            b"k",
            &Claims {
                room: room.into(),
                sub: "ann\"@example.com\u{1}".into(),
                exp: UNIX + 60,
                caps,
            },
        )
    };
    s.connect(1, 1);
    s.send(1, r#"{"type":"join","room":"r"}"#);
    s.connect(2, 1);
    s.send(
        2,
        &format!(r#"{{"type":"join","room":"r","token":"{}"}}"#, token("x", vec![])),
    );
    s.connect(3, 1);
    s.send(
        3,
        &format!(
            r#"{{"type":"join","room":"r","token":"{}","meta":{{"identity":"forged"}}}}"#,
            token("*", vec!["pub\"lish".into(), "é\n".into()])
        ),
    );
    s.connect(6, 2);
    s.send(
        6,
        &format!(r#"{{"type":"join","room":"r","token":"{}"}}"#, token("r", vec![])),
    );
    s.connect(4, 1);
    s.send(4, r#"{"type":"join","room":"r","token":"a.b.c"}"#);
    s.connect(5, 1);
    s.send(5, r#"{"type":"join","room":"r","token":"x","meta":[1]}"#);
    log.push_str(&s.log);

    // Rate limit.
    let mut s = script(
        Limits {
            burst: 3,
            messages_per_second: 1,
            ..Limits::default()
        },
        None,
    );
    s.connect(1, 1);
    for _ in 0..10 {
        s.send(1, r#"{"type":"ping"}"#);
    }
    log.push_str(&s.log);
    log
}

#[test]
fn every_frame_is_byte_identical_to_the_golden_transcript() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frames.golden");
    let got = run();
    if std::env::var_os("TRAVERSE_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "line {}", i + 1);
    }
    assert_eq!(got.lines().count(), want.lines().count());
}
