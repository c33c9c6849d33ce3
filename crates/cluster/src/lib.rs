//! Signaling across Traverse nodes (`docs/scaling.md`), sans-IO.
//!
//! Model: each room lives on one node (its home), whose ordinary [`signal::MemoryHub`] holds the room exactly as a
//! single node would; a socket may land on any node, which forwards its events to the home and the home's frames
//! back. [`Router`] decides where each socket event goes and turns the hub's outputs into [`Action`]s; [`wire`]
//! is what nodes publish to each other. Redis (keys, pub/sub) is the I/O layer's (`web::cluster`): this crate has
//! no sockets, no clock and no tokio.
//!
//! Driving it: every socket event goes to the router with the hub and `now`; then drain
//! [`Router::poll_action`]: `Local` outputs go to this node's sockets as a hub's would, `Publish` to the named
//! node's channel, `Lookup` to Redis (its answer back through [`Router::handle_lookup`]), `Announce` into Redis'
//! session keys. Messages from this node's channel go to [`Router::handle_message`].

pub mod router;
pub mod wire;

pub use router::{Action, Answer, Query, Router, HOSTED_BASE, MAX_WAITING, MAX_WAITING_BYTES};
pub use wire::{Envelope, Message, NodeId, WireError};
