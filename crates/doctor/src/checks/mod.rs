//! The checks, over real sockets (tokio). Every check has its own deadline, so a network that drops everything but
//! 80/443 makes checks fail in seconds instead of hanging (field note 10). Independent checks run at once.
//!
//! Order: signaling endpoints (all at once) → the ICE servers (from `/api/ice-servers` or flags) → STUN, every TURN
//! transport, the NAT probes and IPv6 (all at once) → the relay round trip and throughput over a transport that
//! worked.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use stun::attr;
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::client::{self, Conn, Response, Timing, TurnClient};
use crate::error::CheckError;
use crate::http::{self, Target};
use crate::ice::{IceConfig, IceUrl, Scheme, ServerSpec, Transport};
use crate::nat::{self, FilteringProbe, MappingProbe, Observations};
use crate::progress::Progress;
use crate::report::*;

/// Everything the checks need to know, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSpec,
    pub server_label: String,
    pub token: Option<String>,
    pub turn_user: Option<String>,
    pub turn_password: Option<String>,
    pub stun: Vec<IceUrl>,
    pub turn: Vec<IceUrl>,
    pub insecure: bool,
    pub hairpin: bool,
    pub throughput: Option<Duration>,
    /// Deadline of each check's network step (connect, handshake, transaction).
    pub timeout: Duration,
    /// First STUN retransmission timeout over UDP.
    pub rto: Duration,
    /// How long to wait for a filtering or hairpin probe to arrive.
    pub probe_wait: Duration,
    /// Ports probed besides the server's own; 0 skips.
    pub https_port: u16,
    pub http_port: u16,
    pub packets: u32,
    pub interval: Duration,
}

impl Settings {
    fn timing(&self) -> Timing {
        Timing {
            rto: self.rto,
            limit: self.timeout,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `f` under `limit`, returning its result and how long it took.
async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, CheckError>>,
) -> (Result<T, CheckError>, Duration) {
    let start = Instant::now();
    let result = match timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout(limit)),
    };
    (result, start.elapsed())
}

/// Resolves `host:port`, IPv4 first.
pub async fn resolve(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, CheckError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = timeout(limit, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| CheckError::Dns(format!("{host} (timed out)")))?
        .map_err(|_| CheckError::Dns(host.to_owned()))?;
    let mut list: Vec<SocketAddr> = found.collect();
    list.sort_by_key(|a| a.is_ipv6());
    if list.is_empty() {
        return Err(CheckError::Dns(host.to_owned()));
    }
    Ok(list)
}

async fn resolve_one(host: &str, port: u16, limit: Duration) -> Result<SocketAddr, CheckError> {
    resolve(host, port, limit)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| CheckError::Dns(host.to_owned()))
}

fn bind_any(for_addr: SocketAddr) -> Result<UdpSocket, CheckError> {
    let any: SocketAddr = if for_addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = std::net::UdpSocket::bind(any)?;
    sock.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(sock)?)
}

// ---------------------------------------------------------------------------------------------------------------
// Signaling.

/// The endpoints to try: the given one, then HTTPS on `https_port` and HTTP on `http_port`.
pub fn signaling_endpoints(s: &Settings) -> Vec<(bool, u16, bool)> {
    let mut list: Vec<(bool, u16, bool)> = Vec::new();
    match (s.server.scheme, s.server.port) {
        (Some(Scheme::Http), port) => list.push((false, port.unwrap_or(80), true)),
        (Some(Scheme::Https), port) => list.push((true, port.unwrap_or(443), true)),
        (None, Some(port)) => {
            list.push((true, port, true));
            list.push((false, port, true));
        }
        (None, None) => {
            list.push((true, 443, true));
            list.push((false, 80, true));
        }
    }
    for (tls, port) in [(true, s.https_port), (false, s.http_port)] {
        if port != 0 && !list.iter().any(|(t, p, _)| *t == tls && *p == port) {
            list.push((tls, port, false));
        }
    }
    list
}

async fn signaling_one(
    s: Arc<Settings>,
    tls: bool,
    port: u16,
    primary: bool,
    progress: Arc<Progress>,
) -> SignalingCheck {
    let scheme = if tls { "https" } else { "http" };
    let host_label = if s.server.host.contains(':') {
        format!("[{}]", s.server.host)
    } else {
        s.server.host.clone()
    };
    let url = format!("{scheme}://{host_label}:{port}");
    let line = progress.start(&format!("signaling {url}"));
    let start = Instant::now();
    let mut check = SignalingCheck {
        url: url.clone(),
        port,
        tls,
        primary,
        http: Outcome::failed(&CheckError::Skipped("not run".into()), 0),
        websocket: Outcome::failed(&CheckError::Skipped("not run".into()), 0),
        certificate: None,
    };
    let addr = match resolve_one(&s.server.host, port, s.timeout).await {
        Ok(a) => a,
        Err(e) => {
            check.http = Outcome::failed(&e, ms(start.elapsed()));
            check.websocket = check.http.clone();
            progress.finish(line, false, start.elapsed(), &e.to_string());
            return check;
        }
    };
    let target = Target {
        host: s.server.host.clone(),
        addr,
        tls,
    };
    let insecure = s.insecure;
    let cert_gate = |cert: &Option<crate::tls::CertInfo>| -> Result<(), CheckError> {
        match cert {
            Some(c) if !c.trusted && !insecure => Err(CheckError::Certificate(if c.self_signed {
                "self-signed".to_owned()
            } else {
                c.problem.clone().unwrap_or_default()
            })),
            _ => Ok(()),
        }
    };
    let (http_result, http_took) = timed(s.timeout, async {
        let reply = http::get(&target, "/healthz", &[], s.timeout).await?;
        Ok(reply)
    })
    .await;
    let http_result = http_result.and_then(|r| {
        check.certificate = r.cert.clone();
        cert_gate(&r.cert)?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(CheckError::Http {
                status: r.status,
                message: String::from_utf8_lossy(&r.body).chars().take(120).collect(),
            })
        }
    });
    check.http = Outcome::of(&http_result, ms(http_took));
    let (ws_result, ws_took) = timed(s.timeout, http::ws_upgrade(&target, "/ws", s.timeout)).await;
    let ws_result = ws_result.and_then(|(status, cert)| {
        if check.certificate.is_none() {
            check.certificate = cert.clone();
        }
        cert_gate(&cert)?;
        if status == 101 {
            Ok(())
        } else {
            Err(CheckError::Http {
                status,
                message: "the WebSocket upgrade was refused".into(),
            })
        }
    });
    check.websocket = Outcome::of(&ws_result, ms(ws_took));
    let detail = match (&http_result, &ws_result) {
        (Ok(()), Ok(())) => String::new(),
        (Err(e), _) | (_, Err(e)) => e.to_string(),
    };
    progress.finish(line, check.ok(), start.elapsed(), &detail);
    check
}

// ---------------------------------------------------------------------------------------------------------------
// ICE servers.

async fn fetch_ice_servers(
    s: &Settings,
    endpoint: &SignalingCheck,
    progress: &Progress,
) -> (Result<IceConfig, CheckError>, Duration) {
    let line = progress.start("ICE servers from /api/ice-servers");
    let result = timed(s.timeout, async {
        let addr = resolve_one(&s.server.host, endpoint.port, s.timeout).await?;
        let target = Target {
            host: s.server.host.clone(),
            addr,
            tls: endpoint.tls,
        };
        let mut headers = Vec::new();
        if let Some(token) = &s.token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        let reply = http::get(&target, "/api/ice-servers", &headers, s.timeout).await?;
        if reply.status != 200 {
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            let message = body
                .get("code")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).chars().take(120).collect());
            return Err(CheckError::Http {
                status: reply.status,
                message,
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&reply.body)
            .map_err(|e| CheckError::Protocol(format!("/api/ice-servers is not JSON: {e}")))?;
        Ok(IceConfig::from_json(&v))
    })
    .await;
    let detail = match &result.0 {
        Ok(c) => format!("{} STUN, {} TURN", c.stun.len(), c.turn.len()),
        Err(e) => e.to_string(),
    };
    progress.finish(line, result.0.is_ok(), result.1, &detail);
    result
}

// ---------------------------------------------------------------------------------------------------------------
// STUN.

/// One Binding over UDP from `sock`; answers from any source with our transaction id count. Returns the response,
/// where it came from and the RTT of the last attempt.
async fn binding_from(
    sock: &UdpSocket,
    to: SocketAddr,
    change: Option<(bool, bool)>,
    rto: Duration,
    limit: Duration,
) -> Result<(Response, SocketAddr, Duration), CheckError> {
    let request = client::binding_request(change)?;
    let tid = stun::Message::parse(&request)
        .map_err(|_| CheckError::Protocol("bad request".into()))?
        .transaction_id();
    let deadline = Instant::now() + limit;
    let mut wait = rto;
    let mut buf = vec![0u8; 2048];
    loop {
        let sent_at = Instant::now();
        sock.send_to(&request, to).await?;
        let round_end = (sent_at + wait).min(deadline);
        wait = wait.saturating_mul(2);
        while let Some(left) = round_end.checked_duration_since(Instant::now()) {
            let Ok(got) = timeout(left, sock.recv_from(&mut buf)).await else {
                break;
            };
            let (n, from) = got?;
            let bytes = buf.get(..n).unwrap_or_default();
            let Ok(msg) = stun::Message::parse(bytes) else { continue };
            if msg.transaction_id() == tid {
                return Ok((Response { bytes: bytes.to_vec() }, from, sent_at.elapsed()));
            }
        }
        if Instant::now() >= deadline {
            return Err(CheckError::Timeout(limit));
        }
    }
}

async fn stun_one(s: Arc<Settings>, url: IceUrl, progress: Arc<Progress>) -> (StunCheck, Option<SocketAddr>) {
    let line = progress.start(&format!("STUN {}", url.label()));
    let mut server = None;
    let (result, took) = timed(s.timeout, async {
        let addr = resolve_one(&url.host, url.port, s.timeout).await?;
        server = Some(addr);
        let sock = bind_any(addr)?;
        let local = sock.local_addr()?;
        let (response, _, rtt) = binding_from(&sock, addr, None, s.rto, s.timeout).await?;
        let mapped = response
            .address(attr::XOR_MAPPED_ADDRESS)
            .or_else(|| response.address(attr::MAPPED_ADDRESS))
            .ok_or_else(|| CheckError::Protocol("Binding success without XOR-MAPPED-ADDRESS".into()))?;
        Ok((local, mapped, rtt, response.address(attr::OTHER_ADDRESS)))
    })
    .await;
    let outcome = Outcome::of(&result, ms(took));
    let detail = match &result {
        Ok((_, m, rtt, _)) => format!("you are {m}, RTT {:.1} ms", rtt.as_secs_f64() * 1e3),
        Err(e) => e.to_string(),
    };
    progress.finish(line, outcome.ok, took, &detail);
    let check = match result {
        Ok((local, mapped, rtt, other)) => StunCheck {
            url: url.label(),
            outcome,
            server: server.map(|a| a.to_string()),
            local: Some(local.to_string()),
            mapped: Some(mapped.to_string()),
            rtt_ms: Some(rtt.as_secs_f64() * 1e3),
            other_address: other.map(|a| a.to_string()),
        },
        Err(_) => StunCheck {
            url: url.label(),
            outcome,
            server: server.map(|a| a.to_string()),
            local: None,
            mapped: None,
            rtt_ms: None,
            other_address: None,
        },
    };
    (check, server)
}

// ---------------------------------------------------------------------------------------------------------------
// TURN.

/// Opens a connection of `url`'s transport within the settings' timeout; for TLS, with the certificate's verdict.
pub async fn connect(s: &Settings, url: &IceUrl) -> Result<(Conn, Option<crate::tls::CertInfo>), CheckError> {
    let addr = resolve_one(&url.host, url.port, s.timeout).await?;
    match url.transport {
        Transport::Udp => Ok((
            Conn::Udp {
                sock: bind_any(addr)?,
                server: addr,
            },
            None,
        )),
        Transport::Tcp => {
            let tcp = timeout(s.timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| CheckError::Timeout(s.timeout))??;
            let _ = tcp.set_nodelay(true);
            Ok((
                Conn::Stream {
                    io: Box::new(tcp),
                    buf: Vec::new(),
                },
                None,
            ))
        }
        Transport::Tls => {
            let target = Target {
                host: url.host.clone(),
                addr,
                tls: true,
            };
            // RFC 7443: ALPN "stun.turn" lets a single port tell TURN from HTTPS.
            let (io, cert) = http::open(&target, &[b"stun.turn"], s.timeout).await?;
            Ok((Conn::Stream { io, buf: Vec::new() }, cert))
        }
    }
}

fn credential(s: &Settings, ice: &IceConfig) -> Option<(String, String)> {
    let user = s.turn_user.clone().or_else(|| ice.username.clone())?;
    let password = s.turn_password.clone().or_else(|| ice.credential.clone())?;
    Some((user, password))
}

async fn turn_one(
    s: Arc<Settings>,
    url: IceUrl,
    probe: bool,
    cred: Option<(String, String)>,
    progress: Arc<Progress>,
) -> TurnCheck {
    let label = if probe {
        format!("TURN {} (probe: single port)", url.label())
    } else {
        format!("TURN {}", url.label())
    };
    let line = progress.start(&label);
    let mut cert = None;
    let (result, took) = timed(s.timeout.saturating_mul(3), async {
        let Some((user, password)) = cred else {
            return Err(CheckError::NoCredential);
        };
        let (conn, c) = connect(&s, &url).await?;
        cert = c;
        let mut turn = TurnClient::new(conn, &user, &password, s.timing());
        let allocation = turn.allocate().await?;
        // Release at once; a failure to release is not the user's problem.
        let _ = turn.release().await;
        Ok(allocation)
    })
    .await;
    let outcome = Outcome::of(&result, ms(took));
    let detail = match &result {
        Ok(a) => format!("relay {}", a.relayed),
        Err(e) => e.to_string(),
    };
    progress.finish(line, outcome.ok, took, &detail);
    let (relayed, mapped, lifetime) = match &result {
        Ok(a) => (Some(a.relayed.to_string()), a.mapped.map(|m| m.to_string()), a.lifetime),
        Err(_) => (None, None, None),
    };
    TurnCheck {
        url: url.label(),
        transport: url.transport,
        port: url.port,
        probe,
        outcome,
        relayed,
        mapped,
        lifetime_s: lifetime,
        certificate: cert,
        cause: result.err(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// NAT.

fn local_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// Waits up to `wait` for a datagram carrying `payload` on `sock`; returns its source.
async fn await_payload(sock: &UdpSocket, payload: &[u8], wait: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(Ok((n, from))) = timeout(left, sock.recv_from(&mut buf)).await else {
            return None;
        };
        if buf.get(..n) == Some(payload) {
            return Some(from);
        }
    }
    None
}

/// The NAT probes. `primary`: the STUN server over UDP; `others`: other STUN addresses; `turn`: a TURN URL over UDP
/// and a credential, for the relay-based probes.
async fn nat_probes(
    s: Arc<Settings>,
    primary: SocketAddr,
    others: Vec<SocketAddr>,
    turn: Option<(IceUrl, String, String)>,
    progress: Arc<Progress>,
) -> NatCheck {
    let line = progress.start("NAT mapping and filtering");
    let start = Instant::now();
    let mut probes_seen = Vec::new();
    let mut obs = Observations {
        local_ips: local_ips(),
        ..Observations::default()
    };
    let mut method = "none";
    let limit = s.timeout;
    let result: Result<(), CheckError> = async {
        // Mapping, from socket L1.
        let l1 = bind_any(primary)?;
        obs.local_port = Some(l1.local_addr()?.port());
        let (r, _, _) = binding_from(&l1, primary, None, s.rto, limit).await?;
        let m1 = r
            .address(attr::XOR_MAPPED_ADDRESS)
            .ok_or_else(|| CheckError::Protocol("no XOR-MAPPED-ADDRESS".into()))?;
        obs.mapping.push(MappingProbe {
            server: primary,
            mapped: m1,
        });
        probes_seen.push(format!("mapping: {primary} sees {m1}"));
        let other = r.address(attr::OTHER_ADDRESS);
        let mut mapping_targets = Vec::new();
        if let Some(other) = other {
            // RFC 5780 §4.3: the alternate IP with the primary port, then the alternate address.
            method = "rfc5780";
            obs.primary = Some(primary);
            obs.other_address = Some(other);
            mapping_targets.push(SocketAddr::new(other.ip(), primary.port()));
            mapping_targets.push(other);
        } else {
            method = "comparison";
        }
        mapping_targets.extend(others.iter().copied().filter(|a| *a != primary));
        for target in mapping_targets {
            match binding_from(&l1, target, None, s.rto, limit).await {
                Ok((r, from, _)) => {
                    if let Some(m) = r.address(attr::XOR_MAPPED_ADDRESS) {
                        obs.mapping.push(MappingProbe {
                            server: from,
                            mapped: m,
                        });
                        probes_seen.push(format!("mapping: {from} sees {m}"));
                    }
                }
                Err(e) => probes_seen.push(format!("mapping: {target}: {e}")),
            }
        }
        // The relay: one more server address (the relayed one) that reports the address it saw (RFC 8656 Data
        // indications carry XOR-PEER-ADDRESS).
        let mut relay = None;
        if let Some((url, user, password)) = &turn {
            match connect(&s, url).await {
                Ok((conn, _)) => {
                    let mut t = TurnClient::new(conn, user, password, s.timing());
                    match t.allocate().await {
                        Ok(a) => {
                            if let Err(e) = t.create_permission(m1).await {
                                probes_seen.push(format!("relay permission for {m1}: {e}"));
                            } else {
                                relay = Some((t, a.relayed));
                            }
                        }
                        Err(e) => probes_seen.push(format!("relay allocation: {e}")),
                    }
                }
                Err(e) => probes_seen.push(format!("relay connection: {e}")),
            }
        }
        if let Some((t, relayed)) = relay.as_mut() {
            let mut seen = None;
            for _ in 0..3 {
                l1.send_to(b"traverse-doctor-map", *relayed).await?;
                if let Ok(Ok((peer, data))) = timeout(s.probe_wait / 3, t.recv_data()).await {
                    if data == b"traverse-doctor-map" {
                        seen = peer;
                        break;
                    }
                }
            }
            match seen {
                Some(m) => {
                    obs.mapping.push(MappingProbe {
                        server: *relayed,
                        mapped: m,
                    });
                    probes_seen.push(format!("mapping: relay {relayed} sees {m}"));
                }
                None => probes_seen.push(format!("mapping: nothing arrived at the relay {relayed}")),
            }
        }

        // Filtering, from socket L2 (never the mapping socket: its mappings would let the probes in).
        let l2 = bind_any(primary)?;
        let (r, _, _) = binding_from(&l2, primary, None, s.rto, limit).await?;
        let m2 = r
            .address(attr::XOR_MAPPED_ADDRESS)
            .ok_or_else(|| CheckError::Protocol("no XOR-MAPPED-ADDRESS".into()))?;
        if let Some(other) = other {
            // RFC 5780 §4.4: change IP and port, then port only.
            for (change, expected) in [
                ((true, true), other),
                ((false, true), SocketAddr::new(primary.ip(), other.port())),
            ] {
                let probe = match binding_from(&l2, primary, Some(change), s.rto, s.probe_wait).await {
                    Ok((_, from, _)) => FilteringProbe {
                        contacted: primary,
                        source: from,
                        received: true,
                    },
                    Err(_) => FilteringProbe {
                        contacted: primary,
                        source: expected,
                        received: false,
                    },
                };
                probes_seen.push(format!(
                    "filtering: CHANGE-REQUEST {change:?} answer from {} {}",
                    probe.source,
                    if probe.received { "arrived" } else { "did not arrive" }
                ));
                obs.filtering.push(probe);
            }
        }
        if let Some((t, relayed)) = relay.as_mut() {
            if m2.ip() != m1.ip() {
                let _ = t.create_permission(m2).await;
            }
            let mut arrived = None;
            for _ in 0..3 {
                t.send_indication(m2, b"traverse-doctor-filter").await?;
                if let Some(from) = await_payload(&l2, b"traverse-doctor-filter", s.probe_wait / 3).await {
                    arrived = Some(from);
                    break;
                }
            }
            let probe = FilteringProbe {
                contacted: primary,
                source: arrived.unwrap_or(*relayed),
                received: arrived.is_some(),
            };
            probes_seen.push(format!(
                "filtering: a packet from the relay {} {}",
                probe.source,
                if probe.received { "arrived" } else { "did not arrive" }
            ));
            obs.filtering.push(probe);
        }
        // Hairpinning (off by default: some firewalls take it for an attack).
        if s.hairpin {
            l2.send_to(b"traverse-doctor-hairpin", m1).await?;
            let back = await_payload(&l1, b"traverse-doctor-hairpin", s.probe_wait)
                .await
                .is_some();
            obs.hairpin = Some(back);
            probes_seen.push(format!("hairpin: to {m1} {}", if back { "came back" } else { "lost" }));
        }
        if let Some((mut t, _)) = relay {
            let _ = t.release().await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        probes_seen.push(format!("stopped: {e}"));
    }
    let c = nat::classify(&obs);
    let mapping = FindingJson::from(&c.mapping);
    let filtering = FindingJson::from(&c.filtering);
    let detail = format!(
        "{}; mapping {}, filtering {}",
        match c.nat {
            nat::NatPresence::None => "no NAT",
            nat::NatPresence::Present => "NAT",
            nat::NatPresence::Unknown => "unknown",
        },
        mapping.result,
        filtering.result
    );
    progress.finish(line, result.is_ok(), start.elapsed(), &detail);
    NatCheck {
        method,
        nat: c.nat,
        mapping,
        filtering,
        port_preservation: c.port_preservation,
        hairpin: c.hairpin,
        notes: c.notes.clone(),
        probes: probes_seen,
        classification: Some(c),
    }
}

fn is_global_v6(ip: &IpAddr) -> bool {
    let IpAddr::V6(v6) = ip else { return false };
    let first = v6.segments().first().copied().unwrap_or(0);
    // 2000::/3 is the global unicast range.
    (first & 0xe000) == 0x2000
}

async fn ipv6(s: Arc<Settings>, stun_port: Option<u16>, progress: Arc<Progress>) -> Ipv6Check {
    let line = progress.start("IPv6");
    let start = Instant::now();
    let addresses: Vec<IpAddr> = local_ips().into_iter().filter(is_global_v6).collect();
    let server_v6 = resolve(&s.server.host, stun_port.unwrap_or(3478), s.timeout)
        .await
        .map(|list| list.into_iter().find(SocketAddr::is_ipv6))
        .unwrap_or(None);
    let mut check = Ipv6Check {
        host_has_global: !addresses.is_empty(),
        addresses: addresses.iter().map(ToString::to_string).collect(),
        server_has_ipv6: server_v6.is_some(),
        stun: None,
        mapped: None,
    };
    if let (Some(server), Some(_)) = (server_v6, stun_port) {
        let (result, took) = timed(s.timeout, async {
            let sock = bind_any(server)?;
            let (r, _, _) = binding_from(&sock, server, None, s.rto, s.timeout).await?;
            r.address(attr::XOR_MAPPED_ADDRESS)
                .ok_or_else(|| CheckError::Protocol("no XOR-MAPPED-ADDRESS".into()))
        })
        .await;
        check.stun = Some(Outcome::of(&result, ms(took)));
        check.mapped = result.ok().map(|m| m.to_string());
    }
    let detail = format!(
        "host {} global IPv6, server {}",
        if check.host_has_global { "has" } else { "has no" },
        if check.server_has_ipv6 {
            "has IPv6"
        } else {
            "has no IPv6"
        }
    );
    progress.finish(line, true, start.elapsed(), &detail);
    check
}

// ---------------------------------------------------------------------------------------------------------------
// Relay round trip and throughput.

const CHANNEL: u16 = 0x4000;

/// Two allocations on `url`, permissions and channels to each other's relayed address.
async fn relay_pair(
    s: &Settings,
    url: &IceUrl,
    user: &str,
    password: &str,
) -> Result<(TurnClient, TurnClient), CheckError> {
    let (ca, _) = connect(s, url).await?;
    let (cb, _) = connect(s, url).await?;
    let mut a = TurnClient::new(ca, user, password, s.timing());
    let mut b = TurnClient::new(cb, user, password, s.timing());
    let ra = a.allocate().await?.relayed;
    let rb = b.allocate().await?.relayed;
    a.create_permission(rb).await?;
    b.create_permission(ra).await?;
    a.channel_bind(CHANNEL, rb).await?;
    b.channel_bind(CHANNEL, ra).await?;
    Ok((a, b))
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(idx.min(sorted.len() - 1)).copied()
}

/// Summary of a round-trip run: (p50, p95, max, jitter) from RTTs in arrival order.
pub fn rtt_stats(rtts_ms: &[f64]) -> (Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
    let mut sorted = rtts_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let jitter = if rtts_ms.len() >= 2 {
        let diffs: Vec<f64> = rtts_ms
            .windows(2)
            .map(|w| (w.get(1).unwrap_or(&0.0) - w.first().unwrap_or(&0.0)).abs())
            .collect();
        Some(diffs.iter().sum::<f64>() / diffs.len() as f64)
    } else {
        None
    };
    (
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.95),
        sorted.last().copied(),
        jitter,
    )
}

async fn relay_round_trip(
    s: Arc<Settings>,
    url: IceUrl,
    user: String,
    password: String,
    progress: Arc<Progress>,
) -> (RelayCheck, Option<(TurnClient, TurnClient)>) {
    let line = progress.start(&format!(
        "relay round trip over {} ({} packets)",
        transport_word(url.transport),
        s.packets
    ));
    let start = Instant::now();
    let n = s.packets;
    let mut check = RelayCheck {
        transport: Some(url.transport),
        outcome: Outcome::of(&Ok::<(), CheckError>(()), 0),
        sent: 0,
        received: 0,
        loss_percent: 100.0,
        rtt_p50_ms: None,
        rtt_p95_ms: None,
        rtt_max_ms: None,
        jitter_ms: None,
        quality: None,
    };
    let pair = match timed(s.timeout.saturating_mul(3), relay_pair(&s, &url, &user, &password)).await {
        (Ok(p), _) => p,
        (Err(e), took) => {
            check.outcome = Outcome::failed(&e, ms(took));
            progress.finish(line, false, start.elapsed(), &e.to_string());
            return (check, None);
        }
    };
    let (mut a, mut b) = pair;
    let run_end = Instant::now() + s.interval.saturating_mul(n) + s.timeout;
    let done = std::cell::Cell::new(false);
    // B echoes whatever arrives back through its channel, until A has everything or time is up.
    let echo = async {
        while !done.get() && Instant::now() < run_end {
            match timeout(Duration::from_millis(50), b.recv_data()).await {
                Ok(Ok((_, data))) => {
                    let _ = b.send_channel(CHANNEL, &data).await;
                }
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    };
    let mut rtts: Vec<f64> = Vec::new();
    let mut sent_at: Vec<Option<Instant>> = vec![None; n as usize];
    let mut got = vec![false; n as usize];
    let drive = async {
        let mut next_send = Instant::now();
        let mut seq: u32 = 0;
        loop {
            let now = Instant::now();
            if seq < n && now >= next_send {
                let mut payload = vec![0u8; 100];
                if let Some(head) = payload.get_mut(..4) {
                    head.copy_from_slice(&seq.to_be_bytes());
                }
                if let Some(slot) = sent_at.get_mut(seq as usize) {
                    *slot = Some(Instant::now());
                }
                let _ = a.send_channel(CHANNEL, &payload).await;
                seq += 1;
                next_send += s.interval;
                continue;
            }
            if (seq >= n && got.iter().all(|g| *g)) || now >= run_end {
                done.set(true);
                break;
            }
            let until = if seq < n { next_send } else { run_end };
            let Ok(Ok((_, data))) = timeout(until.saturating_duration_since(now), a.recv_data()).await else {
                continue;
            };
            let Some(&[h0, h1, h2, h3]) = data.get(..4) else {
                continue;
            };
            let k = u32::from_be_bytes([h0, h1, h2, h3]) as usize;
            if let (Some(Some(t)), Some(g)) = (sent_at.get(k), got.get_mut(k)) {
                if !*g {
                    *g = true;
                    rtts.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        seq
    };
    let (sent, ()) = tokio::join!(drive, echo);
    check.sent = sent;
    check.received = u32::try_from(rtts.len()).unwrap_or(u32::MAX);
    check.loss_percent = if sent == 0 {
        100.0
    } else {
        100.0 * f64::from(sent - check.received.min(sent)) / f64::from(sent)
    };
    let (p50, p95, max, jitter) = rtt_stats(&rtts);
    check.rtt_p50_ms = p50;
    check.rtt_p95_ms = p95;
    check.rtt_max_ms = max;
    check.jitter_ms = jitter;
    if let (Some(p50), Some(j)) = (p50, jitter.or(Some(0.0))) {
        let rtt = Quality::grade(p50, RTT_MS);
        let jitter = Quality::grade(j, JITTER_MS);
        let loss = Quality::grade(check.loss_percent, LOSS_PERCENT);
        check.quality = Some(QualityJson {
            rtt,
            jitter,
            loss,
            overall: rtt.max(jitter).max(loss),
        });
    }
    let ok = check.received > 0;
    check.outcome = if ok {
        Outcome::of(&Ok::<(), CheckError>(()), ms(start.elapsed()))
    } else {
        Outcome::failed(&CheckError::Timeout(s.timeout), ms(start.elapsed()))
    };
    let detail = format!(
        "{}/{} back, loss {:.1} %, RTT p50 {:.1} ms, jitter {:.1} ms",
        check.received,
        check.sent,
        check.loss_percent,
        p50.unwrap_or_default(),
        jitter.unwrap_or_default()
    );
    progress.finish(line, ok, start.elapsed(), &detail);
    (check, Some((a, b)))
}

/// Throughput by a paced ramp, not a flood: steps of `STEP` at 1, 2, 4, … Mbit/s (1000-byte ChannelData packets
/// sent on a 1 ms tick, each tagged with its step), until a step loses more than `MAX_LOSS` or the time is up. The
/// result is the fastest step that got through; flooding would only measure socket buffers overflowing.
async fn throughput(
    s: &Settings,
    a: &mut TurnClient,
    b: &mut TurnClient,
    secs: Duration,
    progress: &Progress,
) -> ThroughputCheck {
    const STEP: Duration = Duration::from_millis(500);
    const MAX_LOSS: f64 = 5.0;
    const PAYLOAD: usize = 1000;
    let line = progress.start(&format!("throughput through the relay ({} s)", secs.as_secs_f64()));
    let start = Instant::now();
    let grace = s.timeout.min(Duration::from_millis(300));
    let (mut sent_total, mut received_total) = (0u64, 0u64);
    let (mut best_mbit, mut best_loss, mut last_loss) = (0.0f64, 0.0f64, 0.0f64);
    let mut rate_mbit = 1.0f64;
    let mut step_id = 0u8;
    while start.elapsed() + STEP <= secs && rate_mbit <= 4096.0 {
        step_id = step_id.wrapping_add(1);
        let mut payload = [0x5au8; PAYLOAD];
        payload[0] = step_id;
        // Packets per 1 ms tick at this rate.
        let per_tick = rate_mbit * 1e6 / 8.0 / PAYLOAD as f64 / 1000.0;
        let step_end = Instant::now() + STEP;
        let (mut sent, mut received) = (0u64, 0u64);
        let sender = async {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut owed = 0.0f64;
            while Instant::now() < step_end {
                tick.tick().await;
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    if a.send_channel(CHANNEL, &payload).await.is_ok() {
                        sent += 1;
                    }
                }
            }
        };
        let receiver = async {
            let recv_end = step_end + grace;
            while let Some(left) = recv_end.checked_duration_since(Instant::now()) {
                match timeout(left, b.recv_data()).await {
                    Ok(Ok((_, data))) if data.first() == Some(&step_id) => received += 1,
                    Ok(Ok(_)) => {} // a straggler of the previous step
                    _ => break,
                }
            }
        };
        tokio::join!(sender, receiver);
        sent_total += sent * PAYLOAD as u64;
        received_total += received * PAYLOAD as u64;
        let loss = if sent == 0 {
            100.0
        } else {
            100.0 * sent.saturating_sub(received) as f64 / sent as f64
        };
        last_loss = loss;
        if loss > MAX_LOSS {
            break;
        }
        best_mbit = received as f64 * PAYLOAD as f64 * 8.0 / STEP.as_secs_f64() / 1e6;
        best_loss = loss;
        rate_mbit *= 2.0;
    }
    let took = start.elapsed().as_secs_f64();
    let ok = best_mbit > 0.0;
    let detail = if ok {
        format!("{best_mbit:.1} Mbit/s sustained (loss {best_loss:.1} %); the next step lost {last_loss:.1} %")
    } else {
        format!("not even 1 Mbit/s got through (loss {last_loss:.1} %)")
    };
    progress.finish(line, ok, start.elapsed(), &detail);
    ThroughputCheck {
        outcome: if ok {
            Outcome::of(&Ok::<(), CheckError>(()), ms(start.elapsed()))
        } else {
            Outcome::failed(&CheckError::Timeout(secs), ms(start.elapsed()))
        },
        seconds: took,
        bytes_sent: sent_total,
        bytes_received: received_total,
        mbit_per_s: best_mbit,
        loss_percent: best_loss,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// All of it.

/// Runs every check and builds the report.
pub async fn run_all(s: Settings, progress: Arc<Progress>) -> Report {
    let s = Arc::new(s);

    // Signaling endpoints and the IPv6 look-around, at once.
    let mut set = JoinSet::new();
    for (i, (tls, port, primary)) in signaling_endpoints(&s).into_iter().enumerate() {
        let (s, p) = (s.clone(), progress.clone());
        set.spawn(async move { (i, signaling_one(s, tls, port, primary, p).await) });
    }
    let mut signaling: Vec<(usize, SignalingCheck)> = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(pair) = done {
            signaling.push(pair);
        }
    }
    signaling.sort_by_key(|(i, _)| *i);
    let signaling: Vec<SignalingCheck> = signaling.into_iter().map(|(_, c)| c).collect();

    // ICE servers.
    let mut ice = IceConfig::default();
    let mut fetch = None;
    let mut source = "none";
    let mut ice_error = None;
    let endpoint = signaling.iter().filter(|c| c.ok()).min_by_key(|c| !c.primary).cloned();
    if let Some(endpoint) = &endpoint {
        let (result, took) = fetch_ice_servers(&s, endpoint, &progress).await;
        fetch = Some(Outcome::of(&result, ms(took)));
        match result {
            Ok(c) => {
                ice = c;
                source = "server";
            }
            Err(e) => ice_error = Some(e),
        }
    }
    if !s.stun.is_empty() || !s.turn.is_empty() {
        source = if source == "server" { "server+flags" } else { "flags" };
    }
    for u in s.stun.iter().chain(&s.turn) {
        ice.add(u.clone());
    }
    let cred = credential(&s, &ice);
    // TURN over TLS on 443 (the single port), probed when the server does not announce it.
    let mut turn_urls: Vec<(IceUrl, bool)> = ice.turn.iter().map(|u| (u.clone(), false)).collect();
    if s.https_port != 0
        && cred.is_some()
        && !ice
            .turn
            .iter()
            .any(|u| u.transport == Transport::Tls && u.port == s.https_port)
    {
        turn_urls.push((
            IceUrl {
                turn: true,
                transport: Transport::Tls,
                host: s.server.host.clone(),
                port: s.https_port,
            },
            true,
        ));
    }
    let ice_check = IceServersCheck {
        source,
        fetch,
        stun: ice.stun.iter().map(IceUrl::label).collect(),
        turn: ice.turn.iter().map(IceUrl::label).collect(),
        has_credential: cred.is_some(),
    };

    // STUN, TURN, NAT and IPv6 at once. STUN over UDP: stun: URLs, else the turn: UDP ones (a TURN server answers
    // Binding too).
    let mut stun_urls: Vec<IceUrl> = ice
        .stun
        .iter()
        .filter(|u| u.transport == Transport::Udp)
        .cloned()
        .collect();
    if stun_urls.is_empty() {
        stun_urls = ice
            .turn
            .iter()
            .filter(|u| u.transport == Transport::Udp)
            .map(|u| IceUrl {
                turn: false,
                ..u.clone()
            })
            .collect();
        stun_urls.dedup();
    }
    let mut stun_set = JoinSet::new();
    for (i, url) in stun_urls.iter().cloned().enumerate() {
        let (s2, p) = (s.clone(), progress.clone());
        stun_set.spawn(async move { (i, stun_one(s2, url, p).await) });
    }
    let mut turn_set = JoinSet::new();
    for (i, (url, probe)) in turn_urls.iter().cloned().enumerate() {
        let (s2, p, c) = (s.clone(), progress.clone(), cred.clone());
        turn_set.spawn(async move { (i, turn_one(s2, url, probe, c, p).await) });
    }
    let ipv6_task = tokio::spawn(ipv6(s.clone(), stun_urls.first().map(|u| u.port), progress.clone()));
    // The NAT probes need a STUN address: resolve the first one here so they can start alongside.
    let mut nat_task = None;
    let mut stun_addrs = Vec::new();
    for u in &stun_urls {
        if let Ok(a) = resolve_one(&u.host, u.port, s.timeout).await {
            if a.is_ipv4() && !stun_addrs.contains(&a) {
                stun_addrs.push(a);
            }
        }
    }
    if let Some(primary) = stun_addrs.first().copied() {
        let turn_udp = ice
            .turn
            .iter()
            .find(|u| u.transport == Transport::Udp)
            .cloned()
            .zip(cred.clone())
            .map(|(u, (user, pw))| (u, user, pw));
        nat_task = Some(tokio::spawn(nat_probes(
            s.clone(),
            primary,
            stun_addrs.clone(),
            turn_udp,
            progress.clone(),
        )));
    }
    let mut stun: Vec<(usize, StunCheck)> = Vec::new();
    while let Some(Ok((i, (c, _)))) = stun_set.join_next().await {
        stun.push((i, c));
    }
    stun.sort_by_key(|(i, _)| *i);
    let stun: Vec<StunCheck> = stun.into_iter().map(|(_, c)| c).collect();
    let mut turn: Vec<(usize, TurnCheck)> = Vec::new();
    while let Some(Ok((i, c))) = turn_set.join_next().await {
        turn.push((i, c));
    }
    turn.sort_by_key(|(i, _)| *i);
    let turn: Vec<TurnCheck> = turn.into_iter().map(|(_, c)| c).collect();
    let nat = match nat_task {
        Some(t) => t.await.ok(),
        None => None,
    }
    .unwrap_or_else(|| NatCheck {
        method: "none",
        nat: nat::NatPresence::Unknown,
        mapping: FindingJson::from(&nat::Finding::NotTested),
        filtering: FindingJson::from(&nat::Finding::NotTested),
        port_preservation: None,
        hairpin: None,
        notes: vec!["no STUN server over UDP to probe with".into()],
        probes: Vec::new(),
        classification: None,
    });
    let ipv6 = ipv6_task.await.unwrap_or(Ipv6Check {
        host_has_global: false,
        addresses: Vec::new(),
        server_has_ipv6: false,
        stun: None,
        mapped: None,
    });

    // Relay round trip over the best transport that worked.
    let mut relay = None;
    let mut throughput_check = None;
    let best = [Transport::Udp, Transport::Tcp, Transport::Tls]
        .into_iter()
        .find_map(|tr| {
            turn.iter()
                .zip(&turn_urls)
                .find(|(c, (u, _))| c.outcome.ok && u.transport == tr)
                .map(|(_, (u, _))| u.clone())
        });
    if let (Some(url), Some((user, password))) = (best, cred.clone()) {
        let (check, pair) = relay_round_trip(s.clone(), url, user, password, progress.clone()).await;
        relay = Some(check);
        if let Some((mut a, mut b)) = pair {
            if let Some(secs) = s.throughput {
                throughput_check = Some(throughput(&s, &mut a, &mut b, secs, &progress).await);
            }
            let _ = tokio::join!(timeout(s.timeout, a.release()), timeout(s.timeout, b.release()));
        }
    }

    // The verdict.
    let facts = facts(&signaling, &ice_check, ice_error, &stun, &turn, &nat, relay.as_ref());
    let verdict = crate::verdict::verdict(&facts);
    let exit_code = if verdict.something_works { 0 } else { 2 };
    Report {
        schema: SCHEMA_VERSION,
        server: s.server_label.clone(),
        exit_code,
        signaling,
        ice_servers: ice_check,
        stun,
        turn,
        nat,
        ipv6,
        relay,
        throughput: throughput_check,
        verdict,
    }
}

fn facts(
    signaling: &[SignalingCheck],
    _ice: &IceServersCheck,
    ice_error: Option<CheckError>,
    stun: &[StunCheck],
    turn: &[TurnCheck],
    nat: &NatCheck,
    relay: Option<&RelayCheck>,
) -> crate::verdict::Facts {
    let primary_first: Vec<&SignalingCheck> = signaling
        .iter()
        .filter(|c| c.primary)
        .chain(signaling.iter().filter(|c| !c.primary))
        .collect();
    let unreachable_codes = ["timeout", "refused", "unreachable", "dns"];
    let signaling_unreachable = !signaling.is_empty()
        && signaling.iter().all(|c| {
            c.http.error_code.is_some_and(|code| unreachable_codes.contains(&code))
                && c.websocket
                    .error_code
                    .is_some_and(|code| unreachable_codes.contains(&code))
        });
    let signaling_error = primary_first
        .iter()
        .find_map(|c| c.http.error.clone().or_else(|| c.websocket.error.clone()))
        .map(|e| {
            let c = primary_first.first().map(|c| c.url.clone()).unwrap_or_default();
            format!("{c}: {e}")
        });
    let cert = primary_first
        .iter()
        .find_map(|c| c.certificate.clone().filter(|c| !c.trusted));
    let days = primary_first
        .iter()
        .find_map(|c| c.certificate.as_ref().and_then(|c| c.days_to_expiry));
    crate::verdict::Facts {
        signaling_ok: signaling.iter().any(SignalingCheck::ok),
        signaling_unreachable,
        signaling_error,
        certificate_problem: cert.as_ref().map(|c| {
            if c.self_signed {
                "self-signed".to_owned()
            } else {
                c.problem.clone().unwrap_or_default()
            }
        }),
        certificate_self_signed: cert.as_ref().is_some_and(|c| c.self_signed),
        certificate_days_left: days,
        ice_servers_error: ice_error,
        stun_tested: !stun.is_empty(),
        stun_ok: stun.iter().any(|c| c.outcome.ok),
        turn: turn
            .iter()
            .map(|t| crate::verdict::TurnFact {
                transport: t.transport,
                port: t.port,
                announced: !t.probe,
                error: t.cause.clone(),
                cert_self_signed: t.certificate.as_ref().is_some_and(|c| c.self_signed || !c.trusted),
            })
            .collect(),
        nat: nat.nat,
        mapping: nat.classification.as_ref().map(|c| c.mapping.clone()),
        filtering: nat.classification.as_ref().map(|c| c.filtering.clone()),
        relay_ok: relay.map(|r| r.outcome.ok),
        relay_quality: relay.and_then(|r| r.quality.as_ref().map(|q| q.overall)),
        relay_loss_percent: relay.map(|r| r.loss_percent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let (p50, p95, max, jitter) = rtt_stats(&[10.0, 12.0, 11.0, 30.0]);
        assert_eq!(p50, Some(12.0));
        assert_eq!(p95, Some(30.0));
        assert_eq!(max, Some(30.0));
        assert_eq!(jitter, Some((2.0 + 1.0 + 19.0) / 3.0));
        assert_eq!(rtt_stats(&[]), (None, None, None, None));
    }

    #[test]
    fn global_v6() {
        assert!(is_global_v6(&"2001:db8::1".parse().unwrap_or(IpAddr::from([0u16; 8]))));
        assert!(!is_global_v6(&"fe80::1".parse().unwrap_or(IpAddr::from([0u16; 8]))));
        assert!(!is_global_v6(&"fd00::1".parse().unwrap_or(IpAddr::from([0u16; 8]))));
        assert!(!is_global_v6(&"127.0.0.1".parse().unwrap_or(IpAddr::from([0u16; 8]))));
    }
}
