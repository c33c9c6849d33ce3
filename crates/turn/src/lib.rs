#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! Sans-IO TURN server (RFC 8656) with STUN Binding (RFC 8489), and the matching client ([`client`]).
//!
//! Model: [`Server`] owns allocations, permissions and channels; the caller owns sockets and the clock. Packets and
//! `now` go in, actions come out. One `Server` per worker thread: the kernel's SO_REUSEPORT hashing keeps a client's
//! 5-tuple on one worker, so no state is shared per packet. What workers share is touched off the packet path:
//! [`Quotas`], [`Reservations`], the [`ReflectionGuard`] and [`OwnAddresses`].
//!
//! Driving a server (one UDP listener; `server::worker` is the real loop, with relay sockets and batching):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::{Instant, SystemTime, UNIX_EPOCH};
//! use rand::SeedableRng;
//! use turn::{Authenticator, ClientAction, Config, Event, FiveTuple, Quotas, RelayBinding, Server, Transport};
//!
//! # fn main() -> std::io::Result<()> {
//! let socket = std::net::UdpSocket::bind("192.0.2.1:3478")?;
//! let auth = Authenticator::new("example.org".into(), &[("alice".into(), "pw".into())], Vec::new(), [7; 32], 600);
//! let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
//! let mut server = Server::new(
//!     Arc::new(Config::default()),
//!     Arc::new(auth),
//!     Arc::new(Quotas::new(1000, 0)),
//!     rand::rngs::StdRng::from_entropy(),
//!     (Instant::now(), unix),
//! );
//! let (mut buf, mut out) = ([0u8; 1500], [0u8; 1500]);
//! loop {
//!     let (n, client) = socket.recv_from(&mut buf)?;
//!     let five_tuple = FiveTuple { client, server: socket.local_addr()?, transport: Transport::Udp };
//!     // A packet in, with the time it arrived; the action for it out.
//!     match server.handle_client(Instant::now(), five_tuple, &buf[..n], &mut out) {
//!         ClientAction::Reply(len) => {
//!             socket.send_to(&out[..len], client)?;
//!         }
//!         ClientAction::BindRelay(_request) => {
//!             // Bind a relay socket in the relay range, then report what was bound; the answer comes back.
//!             let bound = Some(RelayBinding::default());
//!             let (_allocation, answer) = server.handle_relay_bound(Instant::now(), five_tuple, bound, &mut out);
//!             if let Some(len) = answer {
//!                 socket.send_to(&out[..len], client)?;
//!             }
//!         }
//!         // Send `buf[payload]` from the allocation's relay socket to `peer`; answers from peers go through
//!         // `handle_peer`, which writes the ChannelData or Data header in place.
//!         ClientAction::Relay { .. } | ClientAction::ReplyFrom { .. } | ClientAction::Drop => {}
//!     }
//!     // Then what the state machine released, and (once a second) its timers.
//!     while let Some(event) = server.poll_event() {
//!         match event {
//!             Event::AllocationClosed(_id) => { /* close that allocation's relay sockets */ }
//!             Event::ReservationReleased(_relay) => { /* close the socket held for it */ }
//!             // Only with `with_fast_path_events`: copy the channel into (or out of) a kernel fast path.
//!             Event::ChannelUsable { .. } | Event::ChannelUnusable(_) => {}
//!             // An Allocate refused for its source's share: worth a (throttled) line for the operator.
//!             Event::SourceQuotaReached(_source) => {}
//!         }
//!     }
//!     server.handle_timeout(Instant::now());
//! }
//! # }
//! ```

mod auth;
pub mod client;
mod config;
mod own;
pub mod policy;
mod reflection;
mod server;

pub use auth::{rest_password, Authenticator, Expiry, Secret};
pub use config::{Alternate, Config, NatDiscovery, QuotaExceeded, Quotas};
pub use own::OwnAddresses;
pub use reflection::ReflectionGuard;
pub use server::{
    AllocationId, AuthFailure, AuthFailures, BindRequest, ClientAction, ErrorResponses, Event, Family, FastPathTraffic,
    FastRoute, FiveTuple, PeerForward, PerTransport, QuotaRefusals, RelayBinding, Reservations, Server, Stats, Traffic,
    Transport, ERROR_CODES, MAX_PADDED_ANSWER, PEER_HEADROOM, PEER_TAILROOM,
};
pub use server::{MAX_RESERVATIONS, MAX_RESERVATIONS_PER_SOURCE};
pub use source::Source;
