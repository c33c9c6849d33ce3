//! What the checks found, typed: each result keeps its [`CheckError`] and its measurements. The verdict
//! ([`crate::verdict`]) is decided from these, never from words or codes; the report ([`crate::report`]) is built
//! last, from these and the verdict.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::client::Allocation;
use crate::error::CheckError;
use crate::ice::{IceUrl, Transport};
use crate::nat::{self, Classification, Finding, NatPresence, StreamMapping};
use crate::quality::{Grades, LinkEstimate};
use crate::tls::CertInfo;

/// Everything the checks found.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The server as given on the command line.
    pub server: String,
    /// `--insecure` was given: untrusted certificates did not stop the checks.
    pub insecure: bool,
    /// The HTTP proxy TCP connections went through (`--proxy`, `HTTPS_PROXY`), without its credentials.
    pub proxy: Option<String>,
    /// The given endpoint first, then the probes of other ports.
    pub signaling: Vec<SignalingFact>,
    pub ice_servers: IceServersFact,
    pub stun: Vec<StunFact>,
    pub turn: Vec<TurnFact>,
    /// None: there was no STUN server over UDP to probe with.
    pub nat: Option<NatFact>,
    pub ipv6: Ipv6Fact,
    /// None: no TURN transport worked (or no credential).
    pub relay: Option<RelayFact>,
    /// None: not asked for, or no relay pair.
    pub throughput: Option<ThroughputFact>,
    /// None: not needed (STUN over UDP answered, or was not tested) or not possible (no relay over TCP or TLS).
    pub udp_egress: Option<UdpEgressFact>,
}

/// UDP from here to a port of the server other than STUN/TURN's (`checks::udp_egress`).
#[derive(Debug, Clone)]
pub struct UdpEgressFact {
    /// The relayed port the datagram went to.
    pub to_port: u16,
    /// `Ok(true)`: it got through; `Ok(false)`: none of the datagrams did; `Err`: the test could not be set up.
    pub outcome: Timed<bool>,
}

impl UdpEgressFact {
    /// Whether UDP leaves this network on other ports, when that was tested.
    pub fn works(&self) -> Option<bool> {
        self.outcome.result.as_ref().ok().copied()
    }
}

/// A step's result and how long it took.
#[derive(Debug, Clone)]
pub struct Timed<T> {
    pub result: Result<T, CheckError>,
    pub took: Duration,
}

impl<T> Timed<T> {
    pub fn new(result: Result<T, CheckError>, took: Duration) -> Timed<T> {
        Timed { result, took }
    }

    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    pub fn error(&self) -> Option<&CheckError> {
        self.result.as_ref().err()
    }
}

/// One signaling endpoint: HTTP(S) `GET /healthz` and the WS(S) upgrade of `/ws`.
#[derive(Debug, Clone)]
pub struct SignalingFact {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    pub port: u16,
    pub tls: bool,
    /// The given server address (as opposed to a probe of 443/80).
    pub primary: bool,
    pub http: Timed<()>,
    pub websocket: Timed<()>,
    pub certificate: Option<CertInfo>,
}

impl SignalingFact {
    pub fn ok(&self) -> bool {
        self.http.ok() && self.websocket.ok()
    }

    /// Both steps failed because nothing answered (refused, timeout, unreachable, DNS).
    pub fn unreachable(&self) -> bool {
        // A 443/80 probe that something on the way accepts and holds is no answer from the server either.
        let probe_held = |e: &CheckError| !self.primary && matches!(e, CheckError::Silent(_));
        let nothing_answered = |t: &Timed<()>| t.error().is_some_and(|e| e.is_unreachable() || probe_held(e));
        nothing_answered(&self.http) && nothing_answered(&self.websocket)
    }

    /// The first failure, HTTP before the WebSocket.
    pub fn error(&self) -> Option<&CheckError> {
        self.http.error().or_else(|| self.websocket.error())
    }
}

/// Where the STUN/TURN addresses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IceSource {
    #[default]
    None,
    /// `GET /api/ice-servers`.
    Server,
    /// `--stun`/`--turn`.
    Flags,
    ServerAndFlags,
}

impl IceSource {
    /// The JSON word.
    pub fn word(self) -> &'static str {
        match self {
            IceSource::None => "none",
            IceSource::Server => "server",
            IceSource::Flags => "flags",
            IceSource::ServerAndFlags => "server+flags",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct IceServersFact {
    pub source: IceSource,
    /// None: no signaling endpoint worked, so nothing was fetched.
    pub fetch: Option<Timed<()>>,
    pub stun: Vec<IceUrl>,
    pub turn: Vec<IceUrl>,
    pub has_credential: bool,
    /// URLs that did not parse, as one short line each (the first [`crate::ice::MAX_URLS`], then how many more).
    pub unparsed: Vec<String>,
    /// URLs not checked: past [`crate::ice::MAX_URLS`] of their kind.
    pub not_checked: usize,
}

/// A Binding over UDP to one STUN URL.
#[derive(Debug, Clone)]
pub struct StunFact {
    pub url: IceUrl,
    /// The resolved address (None when it did not resolve).
    pub server: Option<SocketAddr>,
    pub binding: Timed<StunBinding>,
}

#[derive(Debug, Clone, Copy)]
pub struct StunBinding {
    pub local: SocketAddr,
    pub mapped: SocketAddr,
    pub rtt: Duration,
    /// The server announced an OTHER-ADDRESS (RFC 5780).
    pub other_address: Option<SocketAddr>,
}

/// An Allocate (and release) on one TURN URL.
#[derive(Debug, Clone)]
pub struct TurnFact {
    pub url: IceUrl,
    /// Added by the doctor (TURN over TLS on 443, the single port), not announced by the server.
    pub probe: bool,
    pub allocation: Timed<Allocation>,
    pub certificate: Option<CertInfo>,
    /// This end of the TCP or TLS connection (None over UDP): beside the allocation's XOR-MAPPED-ADDRESS, it tells
    /// whether a NAT is in the way where UDP is blocked.
    pub local: Option<SocketAddr>,
}

impl TurnFact {
    pub fn transport(&self) -> Transport {
        self.url.transport
    }

    pub fn port(&self) -> u16 {
        self.url.port
    }

    pub fn ok(&self) -> bool {
        self.allocation.ok()
    }

    pub fn error(&self) -> Option<&CheckError> {
        self.allocation.error()
    }
}

/// Where the NAT probes' extra server addresses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NatMethod {
    /// The probes stopped before the first Binding answered.
    #[default]
    None,
    /// OTHER-ADDRESS and CHANGE-REQUEST.
    Rfc5780,
    /// Several server addresses and the relay.
    Comparison,
}

impl NatMethod {
    /// The JSON word.
    pub fn word(self) -> &'static str {
        match self {
            NatMethod::None => "none",
            NatMethod::Rfc5780 => "rfc5780",
            NatMethod::Comparison => "comparison",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NatFact {
    pub method: NatMethod,
    pub classification: Classification,
    /// What the probes saw, for people.
    pub probes: Vec<String>,
}

impl NatFact {
    /// Where the UDP probes could not tell whether a NAT is in the way (UDP blocked, or no STUN address), the TURN
    /// allocations over TCP and TLS can: their XOR-MAPPED-ADDRESS against this end of the connection
    /// ([`nat::presence_over_streams`]). Mapping and filtering stay untested: they are UDP behaviours.
    pub fn with_presence_over_streams(
        nat: Option<NatFact>,
        turn: &[TurnFact],
        local_ips: &[IpAddr],
    ) -> Option<NatFact> {
        if nat
            .as_ref()
            .is_some_and(|n| n.classification.nat != NatPresence::Unknown)
        {
            return nat;
        }
        let seen: Vec<(&TurnFact, StreamMapping)> = turn
            .iter()
            .filter_map(|t| {
                let mapped = t.allocation.result.as_ref().ok()?.mapped?;
                Some((
                    t,
                    StreamMapping {
                        local: t.local?,
                        mapped,
                    },
                ))
            })
            .collect();
        let mappings: Vec<StreamMapping> = seen.iter().map(|(_, m)| *m).collect();
        let presence = nat::presence_over_streams(local_ips, &mappings);
        if presence == NatPresence::Unknown {
            return nat;
        }
        let mut fact = nat.unwrap_or(NatFact {
            method: NatMethod::None,
            classification: Classification {
                nat: NatPresence::Unknown,
                mapping: Finding::NotTested,
                filtering: Finding::NotTested,
                port_preservation: None,
                hairpin: None,
                notes: Vec::new(),
            },
            probes: Vec::new(),
        });
        fact.classification.nat = presence;
        let seen_as = match presence {
            NatPresence::None => "the server saw this host's own address and port",
            _ => "the server saw another address than this host's",
        };
        fact.classification.notes.push(format!(
            "seen over TCP/TLS, as UDP got no answer: {seen_as} on the TURN connection; mapping and filtering are \
             UDP behaviours and stay untested"
        ));
        for (t, m) in &seen {
            fact.probes.push(format!(
                "over {}: this end {}, the server saw {}",
                t.transport().word(),
                m.local,
                m.mapped
            ));
        }
        Some(fact)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Ipv6Fact {
    /// This host's global (2000::/3) addresses.
    pub addresses: Vec<IpAddr>,
    /// The server's name has an IPv6 address.
    pub server_has_ipv6: bool,
    /// A Binding over IPv6 and the mapped address it gave; None when not tried.
    pub stun: Option<Timed<SocketAddr>>,
}

/// Round-trip times summarised, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RttStats {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
    /// Mean difference of consecutive RTTs.
    pub jitter: Option<f64>,
}

/// ChannelData packets A → relay → B → relay → A.
#[derive(Debug, Clone)]
pub struct RelayFact {
    pub transport: Transport,
    /// Fails when the pair could not be set up or nothing came back.
    pub outcome: Timed<()>,
    pub sent: u32,
    pub received: u32,
    pub loss_percent: f64,
    pub rtt: RttStats,
}

impl RelayFact {
    /// What the test measured brought down to this client's link (both test allocations sit behind it), when some
    /// RTT was measured.
    pub fn link(&self) -> Option<LinkEstimate> {
        let p50 = self.rtt.p50?;
        Some(LinkEstimate::of_relay_test(
            p50,
            self.rtt.jitter.unwrap_or(0.0),
            self.loss_percent,
        ))
    }

    /// This client's link graded, when some RTT was measured.
    pub fn quality(&self) -> Option<Grades> {
        self.link().as_ref().map(Grades::of_relay_test)
    }
}

/// The paced ramp through the relay pair.
#[derive(Debug, Clone)]
pub struct ThroughputFact {
    /// Fails when not even the first step got through.
    pub outcome: Timed<()>,
    pub seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub mbit_per_s: f64,
    pub loss_percent: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_turn(local: &str, mapped: &str) -> TurnFact {
        TurnFact {
            url: IceUrl::parse("turns:203.0.113.5:443?transport=tcp").unwrap(),
            probe: false,
            allocation: Timed::new(
                Ok(Allocation {
                    relayed: "203.0.113.5:50000".parse().unwrap(),
                    mapped: Some(mapped.parse().unwrap()),
                    lifetime: None,
                }),
                Duration::ZERO,
            ),
            certificate: None,
            local: Some(local.parse().unwrap()),
        }
    }

    /// UDP blocked: the NAT probes stopped at the first Binding (or never ran), and the TURN connection over TLS
    /// tells whether a NAT is in the way.
    #[test]
    fn nat_presence_from_the_turn_connection_when_udp_is_blocked() {
        let own: Vec<IpAddr> = vec!["192.168.1.20".parse().unwrap()];
        let translated = [stream_turn("192.168.1.20:40000", "198.51.100.7:61000")];
        let stopped = NatFact {
            method: NatMethod::None,
            classification: nat::classify(&nat::Observations::default()),
            probes: vec!["stopped: no answer".into()],
        };
        let fact = NatFact::with_presence_over_streams(Some(stopped), &translated, &own).unwrap();
        assert_eq!(fact.classification.nat, NatPresence::Present);
        assert_eq!(fact.classification.mapping, Finding::NotTested);
        assert!(fact
            .probes
            .iter()
            .any(|p| p.contains("the server saw 198.51.100.7:61000")));
        let direct = [stream_turn("192.168.1.20:40000", "192.168.1.20:40000")];
        let fact = NatFact::with_presence_over_streams(None, &direct, &own).unwrap();
        assert_eq!(fact.classification.nat, NatPresence::None);
        // What the UDP probes found stands.
        let mut found = fact.clone();
        found.classification.nat = NatPresence::Present;
        let kept = NatFact::with_presence_over_streams(Some(found), &direct, &own).unwrap();
        assert_eq!(kept.classification.nat, NatPresence::Present);
        assert!(NatFact::with_presence_over_streams(None, &[], &own).is_none());
    }
}
