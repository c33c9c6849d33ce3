//! Sans-IO signaling hub for Traverse's WebSocket protocol v1 (`docs/protocol.md`).
//!
//! Model: the I/O layer owns sockets and the clock. It reports connections, text frames and closed sockets to a
//! [`SignalHub`] with an explicit `now`, and drains [`Output`]s (frames to send, sockets to close) after every call,
//! then sleeps until [`SignalHub::poll_timeout`]. [`MemoryHub`] keeps rooms in this process; a multi-node hub (for
//! example on Redis) implements the same trait, so the protocol layer and the I/O layer do not change.
//!
//! Guarantees: every server→client frame carries a sequence number; a session survives a dropped socket for a grace
//! period and replays what the client missed; every limit a stranger could exhaust (message size and rate, peers
//! per room, rooms, sockets per source, queued messages, and the bytes kept per session, per source and in total)
//! is bounded and refused with a documented code.
//!
//! Frames: every server→client frame is a value of the crate's `frame` module, written by one encoder straight
//! into the buffer the replay buffer and the socket share. Ids the hub embeds unescaped are types it alone makes
//! ([`PeerId`], [`SessionSecret`]); whatever a client wrote is escaped.
//!
//! Driving a hub (the I/O layer's loop; `web::hub` is the real one):
//!
//! ```no_run
//! use std::time::{Instant, SystemTime, UNIX_EPOCH};
//! use rand::SeedableRng;
//! use signal::{ConnId, Limits, MemoryHub, Now, Output, SignalHub};
//!
//! fn now() -> Now {
//!     let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
//!     Now { instant: Instant::now(), unix }
//! }
//! # fn send(_conn: ConnId, _text: &[u8]) {}
//! # fn ping(_conn: ConnId) {}
//! # fn close(_conn: ConnId, _code: u16, _reason: &str) {}
//! # fn record(_d: &outcome::Diagnosis) {}
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ice: signal::IceServerSource = Box::new(|_peer, _unix| serde_json::value::to_raw_value(&[0u8; 0]).unwrap());
//! let rng = rand::rngs::StdRng::from_entropy();
//! let mut hub = MemoryHub::new(Limits::default(), None, ice, rng, Instant::now());
//!
//! // An event in, with the time it happened: a socket (numbered by the I/O layer), then its frames.
//! let conn = ConnId::new(1);
//! hub.handle_connect(conn, "192.0.2.7".parse()?, now())?;
//! hub.handle_text(conn, r#"{"type":"join","room":"lobby"}"#, now());
//! // After every event (or batch of events), drain what the hub wants done.
//! while let Some(output) = hub.poll_output() {
//!     match output {
//!         Output::Send { conn, text } => send(conn, &text),
//!         Output::Ping { conn } => ping(conn),
//!         Output::Close { conn, code, reason } => close(conn, code.0, &reason),
//!         Output::Outcome(diagnosis) => record(&diagnosis),
//!         // Only from a hub built `with_session_events` (a multi-node I/O layer).
//!         Output::Session(_) => {}
//!     }
//! }
//! // Then wait for the next event or `hub.poll_timeout()`, whichever is first; at the deadline:
//! hub.handle_timeout(now());
//! # Ok(())
//! # }
//! ```

mod budget;
mod frame;
mod hub;
mod id;
mod protocol;
mod token;

pub use budget::{Over, SharedBytes, Source};
pub use frame::{LeftReason, UndeliverableReason};
pub use hub::{
    report_allowance, ConnId, HubStats, IceServerSource, Limits, MemoryHub, Now, Output, Restored, SessionEvent,
    SignalHub, Unjoined,
};
pub use id::{PeerId, SessionSecret};
pub use protocol::{CloseCode, ErrorCode, Refusal};
pub use token::{mint_token, verify_token, Claims, TokenError};
