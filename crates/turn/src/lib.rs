#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! Sans-IO TURN server (RFC 8656) with STUN Binding (RFC 8489).
//!
//! Model: [`Server`] owns allocations, permissions and channels; the caller owns sockets and the clock. Packets and
//! `now` go in, actions come out. One `Server` per worker thread: the kernel's SO_REUSEPORT hashing keeps a client's
//! 5-tuple on one worker, so no state is shared per packet. Quotas ([`Quotas`]) are the only shared state, touched
//! on Allocate and on expiry.

mod auth;
pub mod client;
mod config;
mod own;
pub mod policy;
mod reflection;
mod server;
mod source;

pub use auth::{rest_password, Authenticator, Expiry, Secret};
pub use config::{Config, NatDiscovery, QuotaExceeded, Quotas};
pub use own::OwnAddresses;
pub use reflection::ReflectionGuard;
pub use server::{
    AllocationId, BindRequest, ClientAction, Event, Family, FiveTuple, PeerForward, RelayBinding, Reservations, Server,
    Stats, Transport, MAX_PADDED_ANSWER, PEER_HEADROOM, PEER_TAILROOM,
};
pub use source::Source;
