//! UDP to another port of the server, when STUN over UDP got no answer but a relay over TCP or TLS works: is UDP
//! blocked on this network, or only the STUN/TURN port? Browsers need to know: with UDP out on other ports, direct
//! calls (and peer-reflexive candidates) still work, and only the relay needs TCP or TLS.
//!
//! How, without any server feature: allocate over the stream, learn this network's public address from the
//! allocation's XOR-MAPPED-ADDRESS, permit it (RFC 8656 permissions are per IP), and send a datagram from a fresh
//! UDP socket to the relayed address (a port of the relay range, not 3478). The relay hands what arrives from a
//! permitted address to its client: a Data indication on the stream proves the datagram left this network.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::{timeout, Instant};

use super::net::{connect, timed};
use super::turn::Credential;
use super::Settings;
use crate::error::CheckError;
use crate::facts::{Timed, UdpEgressFact};
use crate::ice::IceUrl;
use crate::progress::Progress;

/// What the datagram carries, to know it when it comes back.
const PROBE: &[u8] = b"traverse doctor: UDP egress probe";
/// Datagrams sent, spread over the wait (a lost one is not a blocked port): as many as the NAT probes try
/// (`nat::PROBE_TRIES`), so that a lossy link is not taken for a blocked one.
const TRIES: u32 = 6;

/// `url` is a TURN URL over TCP or TLS whose allocation worked.
pub async fn check(s: Arc<Settings>, url: IceUrl, cred: Credential, progress: Arc<Progress>) -> UdpEgressFact {
    let line = progress.start("UDP to another port of the server (through the relay over TCP/TLS)");
    let start = Instant::now();
    let mut port = 0;
    let outcome = timed(s.timeout.saturating_mul(3), async {
        let (conn, _) = connect(&s, &url).await?;
        let mut turn = cred.client(&s, conn);
        let allocation = turn.allocate().await?;
        let relayed = allocation.relayed;
        port = relayed.port();
        let Some(mapped) = allocation.mapped else {
            return Err(CheckError::Skipped(
                "the allocation named no public address for this network".into(),
            ));
        };
        turn.create_permission(SocketAddr::new(mapped.ip(), 0)).await?;
        let any: SocketAddr = if relayed.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(any)
            .await
            .map_err(|e| CheckError::Io(e.to_string()))?;
        let wait = s.timeout / TRIES;
        let mut through = false;
        for _ in 0..TRIES {
            // A send refused locally (no route) is a blocked network too.
            if socket.send_to(PROBE, relayed).await.is_err() {
                break;
            }
            let deadline = Instant::now() + wait;
            while let Ok(Ok((_, data))) =
                timeout(deadline.saturating_duration_since(Instant::now()), turn.recv_data()).await
            {
                if data == PROBE {
                    through = true;
                    break;
                }
            }
            if through {
                break;
            }
        }
        Ok((through, turn))
    })
    .await;
    // Released outside the bound: over a slow link a late release turned "no datagram got through" into "not tested".
    let outcome = match outcome.result {
        Ok((through, mut turn)) => {
            let _ = timeout(s.timeout, turn.release()).await;
            Timed::new(Ok(through), outcome.took)
        }
        Err(e) => Timed::new(Err(e), outcome.took),
    };
    let detail = match &outcome.result {
        Ok(true) => format!("a datagram to port {port} got through"),
        Ok(false) => format!("no datagram to port {port} got through"),
        Err(e) => format!("not tested: {e}"),
    };
    progress.finish(line, matches!(outcome.result, Ok(true)), start.elapsed(), &detail);
    UdpEgressFact { to_port: port, outcome }
}
