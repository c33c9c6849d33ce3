//! The NAT probes (RFC 4787 behaviour, classified by [`crate::nat`]): mapping from one local socket, filtering from
//! another (never the same: the mapping probes would leave holes), hairpinning when asked. The extra server
//! addresses come from RFC 5780 (OTHER-ADDRESS, CHANGE-REQUEST) when the server announces it, from the other STUN
//! addresses, and from the TURN relay.

use std::net::SocketAddr;
use std::sync::Arc;

use stun::attr;
use tokio::time::{timeout, Instant};

use super::net::{await_payload, bind_any, connect, local_ips, resolve_one};
use super::turn::Credential;
use super::Settings;
use crate::client::{binding_from, TurnClient};
use crate::error::CheckError;
use crate::facts::{NatFact, NatMethod};
use crate::ice::IceUrl;
use crate::nat::{self, FilteringProbe, MappingProbe, NatPresence, Observations};
use crate::progress::Progress;

/// Server addresses the mapping probes send a Binding to besides the primary one: RFC 5780's two, and a couple of
/// other STUN addresses. A server's list chooses where the doctor sends, so it is not followed further.
const MAX_MAPPING_TARGETS: usize = 4;

/// The distinct IPv4 addresses of the STUN URLs, in order: the first is the primary one. Resolved at once (at most
/// [`crate::ice::MAX_URLS`] names, each within the timeout), not one after another.
pub async fn stun_addresses(s: &Settings, urls: &[IceUrl]) -> Vec<SocketAddr> {
    let mut set = tokio::task::JoinSet::new();
    for (i, u) in urls.iter().take(crate::ice::MAX_URLS).enumerate() {
        let (host, port, limit) = (u.host.clone(), u.port, s.timeout);
        set.spawn(async move { (i, resolve_one(&host, port, limit).await) });
    }
    let mut found = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, Ok(a))) = joined {
            found.push((i, a));
        }
    }
    found.sort_by_key(|(i, _)| *i);
    let mut list = Vec::new();
    for (_, a) in found {
        if a.is_ipv4() && !list.contains(&a) {
            list.push(a);
        }
    }
    list
}

/// What the probes gather besides the classifier's observations.
struct Probing {
    obs: Observations,
    method: NatMethod,
    /// What was seen, for people.
    seen: Vec<String>,
}

/// Tries of a probe through the relay, spread over `--probe-wait-ms`: a late answer to an earlier try still counts.
/// On a link that loses 10 % each way a try fails 19 % of the time, so 3 tries lost a probe 0.7 % of the time (read
/// as a stricter NAT), 6 lose it 0.005 %.
const PROBE_TRIES: u32 = 6;

/// The NAT probes. `primary`: the STUN server over UDP; `others`: other STUN addresses; `turn`: a TURN URL over UDP
/// and a credential, for the relay-based probes.
pub async fn check(
    s: Arc<Settings>,
    primary: SocketAddr,
    others: Vec<SocketAddr>,
    turn: Option<(IceUrl, Credential)>,
    progress: Arc<Progress>,
) -> NatFact {
    let line = progress.start("NAT mapping and filtering");
    let start = Instant::now();
    let mut p = Probing {
        obs: Observations {
            local_ips: local_ips(),
            ..Observations::default()
        },
        method: NatMethod::None,
        seen: Vec::new(),
    };
    let result = probe(&s, primary, &others, turn.as_ref(), &mut p).await;
    if let Err(e) = &result {
        p.seen.push(format!("stopped: {e}"));
    }
    let c = nat::classify(&p.obs);
    let detail = format!(
        "{}; mapping {}, filtering {}",
        match c.nat {
            NatPresence::None => "no NAT",
            NatPresence::Present => "NAT",
            NatPresence::Unknown => "unknown",
        },
        c.mapping.result_word(),
        c.filtering.result_word()
    );
    progress.finish(line, result.is_ok(), start.elapsed(), &detail);
    NatFact {
        method: p.method,
        classification: c,
        probes: p.seen,
    }
}

async fn probe(
    s: &Settings,
    primary: SocketAddr,
    others: &[SocketAddr],
    turn: Option<&(IceUrl, Credential)>,
    p: &mut Probing,
) -> Result<(), CheckError> {
    let limit = s.timeout;
    // Mapping, from socket L1.
    let l1 = bind_any(primary)?;
    p.obs.local_port = Some(l1.local_addr()?.port());
    let first = binding_from(&l1, primary, None, s.rto, limit).await?;
    // Answers to the last tries of a probe arrive a round trip after them: each probe waits that much more after its
    // last try. Without it, over a satellite link (600 ms) only 4 of the 6 tries could be answered in time, and a
    // lost probe (read as a stricter NAT) was 25 times likelier on a lossy one.
    let late = first.rtt.min(s.probe_wait);
    let r = first.response;
    let m1 = r
        .address(attr::XOR_MAPPED_ADDRESS)
        .ok_or_else(|| CheckError::Protocol("no XOR-MAPPED-ADDRESS".into()))?;
    p.obs.mapping.push(MappingProbe {
        server: primary,
        mapped: m1,
    });
    p.seen.push(format!("mapping: {primary} sees {m1}"));
    let other = r.address(attr::OTHER_ADDRESS);
    let mut mapping_targets = Vec::new();
    if let Some(other) = other {
        // RFC 5780 §4.3: the alternate IP with the primary port, then the alternate address.
        p.method = NatMethod::Rfc5780;
        p.obs.primary = Some(primary);
        p.obs.other_address = Some(other);
        mapping_targets.push(SocketAddr::new(other.ip(), primary.port()));
        mapping_targets.push(other);
    } else {
        p.method = NatMethod::Comparison;
    }
    // The server may hand out its OTHER-ADDRESS as a STUN URL too (for browsers): one Binding per address.
    for a in others {
        if *a != primary && !mapping_targets.contains(a) && mapping_targets.len() < MAX_MAPPING_TARGETS {
            mapping_targets.push(*a);
        }
    }
    for target in mapping_targets {
        match binding_from(&l1, target, None, s.rto, limit).await {
            Ok(answer) => {
                if let Some(m) = answer.response.address(attr::XOR_MAPPED_ADDRESS) {
                    p.obs.mapping.push(MappingProbe {
                        server: answer.from,
                        mapped: m,
                    });
                    p.seen.push(format!("mapping: {} sees {m}", answer.from));
                }
            }
            Err(e) => p.seen.push(format!("mapping: {target}: {e}")),
        }
    }
    // The relay: one more server address (the relayed one) that reports the address it saw (RFC 8656 Data
    // indications carry XOR-PEER-ADDRESS).
    let mut relay = match turn {
        Some((url, cred)) => relay_with_permission(s, url, cred, m1, &mut p.seen).await,
        None => None,
    };
    if let Some((t, relayed)) = relay.as_mut() {
        let mut seen = None;
        for _ in 0..PROBE_TRIES {
            l1.send_to(b"traverse-doctor-map", *relayed).await?;
            if let Ok(Ok((peer, data))) = timeout(s.probe_wait / PROBE_TRIES, t.recv_data()).await {
                if data == b"traverse-doctor-map" {
                    seen = Some(peer);
                    break;
                }
            }
        }
        if seen.is_none() {
            if let Ok(Ok((peer, data))) = timeout(late, t.recv_data()).await {
                if data == b"traverse-doctor-map" {
                    seen = Some(peer);
                }
            }
        }
        match seen {
            Some(m) => {
                p.obs.mapping.push(MappingProbe {
                    server: *relayed,
                    mapped: m,
                });
                p.seen.push(format!("mapping: relay {relayed} sees {m}"));
            }
            None => p.seen.push(format!("mapping: nothing arrived at the relay {relayed}")),
        }
    }

    // Filtering, from socket L2 (never the mapping socket: its mappings would let the probes in).
    let l2 = bind_any(primary)?;
    let r = binding_from(&l2, primary, None, s.rto, limit).await?.response;
    let m2 = r
        .address(attr::XOR_MAPPED_ADDRESS)
        .ok_or_else(|| CheckError::Protocol("no XOR-MAPPED-ADDRESS".into()))?;
    if let Some(other) = other {
        // RFC 5780 §4.4: change IP and port, then port only.
        for (change, expected) in [
            ((true, true), other),
            ((false, true), SocketAddr::new(primary.ip(), other.port())),
        ] {
            let probe = match binding_from(&l2, primary, Some(change), s.rto, s.probe_wait + late).await {
                Ok(answer) => FilteringProbe {
                    contacted: primary,
                    source: answer.from,
                    received: true,
                },
                Err(_) => FilteringProbe {
                    contacted: primary,
                    source: expected,
                    received: false,
                },
            };
            p.seen.push(format!(
                "filtering: CHANGE-REQUEST {change:?} answer from {} {}",
                probe.source,
                if probe.received { "arrived" } else { "did not arrive" }
            ));
            p.obs.filtering.push(probe);
        }
    }
    if let Some((t, relayed)) = relay.as_mut() {
        if m2.ip() != m1.ip() {
            let _ = t.create_permission(m2).await;
        }
        let mut arrived = None;
        for _ in 0..PROBE_TRIES {
            t.send_indication(m2, b"traverse-doctor-filter").await?;
            if let Some(from) = await_payload(&l2, b"traverse-doctor-filter", s.probe_wait / PROBE_TRIES).await {
                arrived = Some(from);
                break;
            }
        }
        if arrived.is_none() {
            arrived = await_payload(&l2, b"traverse-doctor-filter", late).await;
        }
        let probe = FilteringProbe {
            contacted: primary,
            source: arrived.unwrap_or(*relayed),
            received: arrived.is_some(),
        };
        p.seen.push(format!(
            "filtering: a packet from the relay {} {}",
            probe.source,
            if probe.received { "arrived" } else { "did not arrive" }
        ));
        p.obs.filtering.push(probe);
    }
    // Hairpinning (off by default: some firewalls take it for an attack).
    if s.hairpin {
        l2.send_to(b"traverse-doctor-hairpin", m1).await?;
        let back = await_payload(&l1, b"traverse-doctor-hairpin", s.probe_wait)
            .await
            .is_some();
        p.obs.hairpin = Some(back);
        p.seen
            .push(format!("hairpin: to {m1} {}", if back { "came back" } else { "lost" }));
    }
    if let Some((mut t, _)) = relay {
        let _ = t.release().await;
    }
    Ok(())
}

/// An allocation on `url` with a permission for `peer`, and its relayed address; what went wrong goes to `seen`.
async fn relay_with_permission(
    s: &Settings,
    url: &IceUrl,
    cred: &Credential,
    peer: SocketAddr,
    seen: &mut Vec<String>,
) -> Option<(TurnClient, SocketAddr)> {
    let (conn, _) = match connect(s, url).await {
        Ok(c) => c,
        Err(e) => {
            seen.push(format!("relay connection: {e}"));
            return None;
        }
    };
    let mut t = cred.client(s, conn);
    let allocation = match t.allocate().await {
        Ok(a) => a,
        Err(e) => {
            seen.push(format!("relay allocation: {e}"));
            return None;
        }
    };
    if let Err(e) = t.create_permission(peer).await {
        seen.push(format!("relay permission for {peer}: {e}"));
        return None;
    }
    Some((t, allocation.relayed))
}
