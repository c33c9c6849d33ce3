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

mod budget;
mod frame;
mod hub;
mod id;
mod protocol;
mod token;

pub use budget::{Over, Source};
pub use frame::UndeliverableReason;
pub use hub::{ConnId, HubStats, IceServerSource, Limits, MemoryHub, Now, Output, SignalHub};
pub use id::{PeerId, SessionSecret};
pub use protocol::{CloseCode, ErrorCode, Refusal};
pub use token::{mint_token, verify_token, Claims, TokenError};
