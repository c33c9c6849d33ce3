//! RFC 4787 NAT behaviour from observations — sans-IO: no sockets, no clock.
//!
//! The caller sends the probes and records what came back; [`classify`] turns the record into the mapping and
//! filtering behaviour. It never claims more than the observations prove: a pair of probes only rules behaviours
//! out, and whatever no probe ruled out stays a candidate. Two candidates left is reported as such
//! ([`Finding::OneOf`]), never rounded to the friendlier one.
//!
//! Mapping (RFC 4787 §4.1): compare the mapped addresses that *one* local socket gets from different server
//! addresses. Same server IP, other port, other mapping ⇒ address-and-port-dependent. Other server IP, same mapping
//! ⇒ endpoint-independent. Other server IP, other mapping ⇒ not endpoint-independent.
//!
//! Filtering (RFC 4787 §5): from *another* local socket (so the mapping test leaves no state behind), talk to one
//! server address, then see whether packets from other source addresses get in. The source that counts is where a
//! packet really came from, not where the server said it would come from: a server whose OTHER-ADDRESS is on its
//! own IP (field note 11) answers a CHANGE-REQUEST "change IP" from the same IP, and a packet from the same IP says
//! nothing about address-dependent filtering.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// One of the three RFC 4787 behaviours, for mapping or for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behavior {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl Behavior {
    pub const ALL: [Behavior; 3] = [
        Behavior::EndpointIndependent,
        Behavior::AddressDependent,
        Behavior::AddressAndPortDependent,
    ];

    /// The RFC 4787 term.
    pub fn term(self) -> &'static str {
        match self {
            Behavior::EndpointIndependent => "endpoint-independent",
            Behavior::AddressDependent => "address-dependent",
            Behavior::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// What the observations say about one behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Proven.
    Known(Behavior),
    /// Narrowed down to these (two), but not further.
    OneOf(Vec<Behavior>),
    /// Nothing could be concluded; why, in plain words.
    Inconclusive(String),
    /// No probe was run.
    NotTested,
}

impl Finding {
    /// The behaviours still possible (all three when nothing is known).
    pub fn candidates(&self) -> Vec<Behavior> {
        match self {
            Finding::Known(b) => vec![*b],
            Finding::OneOf(list) => list.clone(),
            Finding::Inconclusive(_) | Finding::NotTested => Behavior::ALL.to_vec(),
        }
    }

    pub fn known(&self) -> Option<Behavior> {
        match self {
            Finding::Known(b) => Some(*b),
            _ => None,
        }
    }

    /// The JSON `result`: the behaviour's term, `inconclusive` or `not-tested`.
    pub fn result_word(&self) -> &'static str {
        match self {
            Finding::Known(b) => b.term(),
            Finding::OneOf(_) | Finding::Inconclusive(_) => "inconclusive",
            Finding::NotTested => "not-tested",
        }
    }
}

/// The mapped address one local socket got from one server address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingProbe {
    /// Where the request went (the address that answered).
    pub server: SocketAddr,
    /// XOR-MAPPED-ADDRESS in the answer (or the peer address a relay saw).
    pub mapped: SocketAddr,
}

/// An unsolicited packet towards a local socket that had talked to `contacted` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilteringProbe {
    /// The server address the local socket had sent to.
    pub contacted: SocketAddr,
    /// Where the packet came from: the real source when it arrived, the intended one when it did not.
    pub source: SocketAddr,
    pub received: bool,
}

/// Everything the probes saw.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Addresses of this host's interfaces.
    pub local_ips: Vec<IpAddr>,
    /// The port of the socket the mapping probes were sent from.
    pub local_port: Option<u16>,
    /// Mapping probes, all from one local socket.
    pub mapping: Vec<MappingProbe>,
    /// Filtering probes, from a socket other than the mapping one.
    pub filtering: Vec<FilteringProbe>,
    /// RFC 5780: the server's primary address and the OTHER-ADDRESS it announced.
    pub primary: Option<SocketAddr>,
    pub other_address: Option<SocketAddr>,
    /// Whether a packet to our own mapped address came back (hairpinning), when probed.
    pub hairpin: Option<bool>,
}

/// Is there a NAT between this host and the server?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatPresence {
    /// The server sees this host's own address and port.
    None,
    Present,
    #[default]
    Unknown,
}

/// The classifier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub nat: NatPresence,
    pub mapping: Finding,
    pub filtering: Finding,
    /// The NAT kept the local port (None when not known).
    pub port_preservation: Option<bool>,
    pub hairpin: Option<bool>,
    /// Things a reader should know about how sure this is.
    pub notes: Vec<String>,
}

/// Classifies the observations. Pure: the same input always gives the same answer.
pub fn classify(obs: &Observations) -> Classification {
    let mut notes = Vec::new();
    let nat = presence(obs);
    let mapping = if nat == NatPresence::None {
        // RFC 4787 §4.1 speaks of a NAT; with none, the mapping is the host's own address for every destination.
        Finding::Known(Behavior::EndpointIndependent)
    } else {
        classify_mapping(&obs.mapping, &mut notes)
    };
    let filtering = classify_filtering(&obs.filtering, &mut notes);
    if let (Some(primary), Some(other)) = (obs.primary, obs.other_address) {
        if primary.ip() == other.ip() {
            notes.push(format!(
                "the server's OTHER-ADDRESS {other} is on the same IP as {primary}: it cannot test filtering by \
                 address, so address-dependent filtering cannot be told from endpoint-independent"
            ));
        }
    }
    let port_preservation = match (nat, obs.local_port) {
        (NatPresence::None, _) => Some(true),
        (NatPresence::Present, Some(port)) => Some(obs.mapping.iter().all(|p| p.mapped.port() == port)),
        _ => None,
    };
    if nat == NatPresence::Present {
        let ips: BTreeSet<IpAddr> = obs.mapping.iter().map(|p| p.mapped.ip()).collect();
        if ips.len() > 1 {
            notes.push(
                "the NAT used more than one public address for one local socket (RFC 4787 'arbitrary' pooling): \
                 peers may see a different address than the server did"
                    .to_owned(),
            );
        }
    }
    Classification {
        nat,
        mapping,
        filtering,
        port_preservation,
        hairpin: obs.hairpin,
        notes,
    }
}

fn presence(obs: &Observations) -> NatPresence {
    let Some(first) = obs.mapping.first() else {
        return NatPresence::Unknown;
    };
    let own_ip = obs.local_ips.contains(&first.mapped.ip());
    let own_port = obs.local_port.is_none_or(|p| p == first.mapped.port());
    if own_ip && own_port {
        NatPresence::None
    } else {
        NatPresence::Present
    }
}

/// One TCP or TLS connection seen from both ends: this host's end and the address the server saw (a TURN
/// Allocate's XOR-MAPPED-ADDRESS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMapping {
    pub local: SocketAddr,
    pub mapped: SocketAddr,
}

/// Whether a NAT is in the way, from TCP/TLS connections: for networks where UDP got no answer, so the UDP probes
/// saw nothing. The rule of the UDP probes: the server seeing this host's own address and port means no NAT; any
/// connection translated means a NAT on that path. A NAT keeps TCP mappings apart from UDP ones, so this tells
/// nothing of the UDP mapping or filtering behaviour.
pub fn presence_over_streams(local_ips: &[IpAddr], seen: &[StreamMapping]) -> NatPresence {
    if seen.is_empty() {
        return NatPresence::Unknown;
    }
    let untranslated = |s: &StreamMapping| {
        (s.mapped.ip() == s.local.ip() || local_ips.contains(&s.mapped.ip())) && s.mapped.port() == s.local.port()
    };
    if seen.iter().all(untranslated) {
        NatPresence::None
    } else {
        NatPresence::Present
    }
}

fn classify_mapping(probes: &[MappingProbe], notes: &mut Vec<String>) -> Finding {
    if probes.is_empty() {
        return Finding::NotTested;
    }
    let mut left: BTreeSet<Behavior> = Behavior::ALL.into_iter().collect();
    let mut informative = false;
    for (i, a) in probes.iter().enumerate() {
        for b in probes.iter().skip(i + 1) {
            let same_mapping = a.mapped == b.mapped;
            if a.server == b.server {
                if !same_mapping {
                    notes.push(format!(
                        "{} gave two different mapped addresses for one socket: the NAT changed its mapping \
                         during the test",
                        a.server
                    ));
                }
                continue;
            }
            informative = true;
            let keep: &[Behavior] = match (a.server.ip() == b.server.ip(), same_mapping) {
                // Same IP, other port: only address-and-port-dependent mapping changes.
                (true, true) => &[Behavior::EndpointIndependent, Behavior::AddressDependent],
                (true, false) => &[Behavior::AddressAndPortDependent],
                // Other IP: both dependent kinds change the mapping.
                (false, true) => &[Behavior::EndpointIndependent],
                (false, false) => &[Behavior::AddressDependent, Behavior::AddressAndPortDependent],
            };
            left.retain(|x| keep.contains(x));
        }
    }
    if !informative {
        return Finding::Inconclusive(
            "only one server address answered; the mapping test needs two (another port or another IP)".to_owned(),
        );
    }
    narrowed(left)
}

fn classify_filtering(probes: &[FilteringProbe], notes: &mut Vec<String>) -> Finding {
    if probes.is_empty() {
        return Finding::NotTested;
    }
    let mut left: BTreeSet<Behavior> = Behavior::ALL.into_iter().collect();
    let mut informative = false;
    for p in probes {
        let same_ip = p.source.ip() == p.contacted.ip();
        let same_port = p.source.port() == p.contacted.port();
        let keep: &[Behavior] = match (same_ip, same_port, p.received) {
            (true, true, true) => continue,
            (true, true, false) => {
                notes.push(format!(
                    "no answer from {} itself: filtering could not be tested",
                    p.contacted
                ));
                return Finding::Inconclusive("the server did not answer the filtering socket".to_owned());
            }
            // From the same IP, another port: only address-and-port-dependent filtering drops it.
            (true, false, true) => &[Behavior::EndpointIndependent, Behavior::AddressDependent],
            (true, false, false) => &[Behavior::AddressAndPortDependent],
            // From another IP: only endpoint-independent filtering lets it in.
            (false, _, true) => &[Behavior::EndpointIndependent],
            (false, _, false) => &[Behavior::AddressDependent, Behavior::AddressAndPortDependent],
        };
        informative = true;
        left.retain(|x| keep.contains(x));
    }
    if !informative {
        return Finding::Inconclusive("no packet came from an address other than the one contacted".to_owned());
    }
    narrowed(left)
}

fn narrowed(left: BTreeSet<Behavior>) -> Finding {
    let mut list: Vec<Behavior> = left.into_iter().collect();
    match list.len() {
        0 => Finding::Inconclusive(
            "the answers contradict each other (packets lost or a NAT that changes its mind)".to_owned(),
        ),
        1 => Finding::Known(list.remove(0)),
        3 => Finding::Inconclusive("the probes could not tell the behaviours apart".to_owned()),
        _ => Finding::OneOf(list),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Behavior::{AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei};

    #[test]
    fn presence_over_tcp_when_udp_is_blocked() {
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let own: Vec<IpAddr> = vec!["192.168.1.20".parse().unwrap()];
        let direct = StreamMapping {
            local: addr("192.168.1.20:40000"),
            mapped: addr("192.168.1.20:40000"),
        };
        let translated = StreamMapping {
            local: addr("192.168.1.20:40001"),
            mapped: addr("203.0.113.9:61000"),
        };
        assert_eq!(presence_over_streams(&own, &[]), NatPresence::Unknown);
        assert_eq!(presence_over_streams(&own, &[direct]), NatPresence::None);
        assert_eq!(presence_over_streams(&own, &[translated]), NatPresence::Present);
        assert_eq!(presence_over_streams(&own, &[direct, translated]), NatPresence::Present);
        // Our own address but another port: something translated the port.
        let port_changed = StreamMapping {
            local: addr("192.168.1.20:40002"),
            mapped: addr("192.168.1.20:50002"),
        };
        assert_eq!(presence_over_streams(&own, &[port_changed]), NatPresence::Present);
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const LOCAL: &str = "192.168.1.10";
    const SERVER: &str = "203.0.113.5:3478";
    const SERVER_PORT2: &str = "203.0.113.5:3479";
    const SERVER_IP2: &str = "203.0.113.6:3478";
    const SERVER_IP2_PORT2: &str = "203.0.113.6:3479";

    fn obs(mapping: &[(&str, &str)], filtering: &[(&str, &str, bool)]) -> Observations {
        Observations {
            local_ips: vec![LOCAL.parse().unwrap()],
            local_port: Some(40000),
            mapping: mapping
                .iter()
                .map(|(s, m)| MappingProbe {
                    server: a(s),
                    mapped: a(m),
                })
                .collect(),
            filtering: filtering
                .iter()
                .map(|(c, s, r)| FilteringProbe {
                    contacted: a(c),
                    source: a(s),
                    received: *r,
                })
                .collect(),
            ..Observations::default()
        }
    }

    #[test]
    fn mapping_table() {
        let m1 = "198.51.100.1:40000";
        let m2 = "198.51.100.1:50001";
        let m3 = "198.51.100.1:50002";
        type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, Finding);
        let table: Vec<Row<'_>> = vec![
            ("nothing", vec![], Finding::NotTested),
            ("one server", vec![(SERVER, m1)], Finding::Inconclusive(String::new())),
            (
                "same server twice",
                vec![(SERVER, m1), (SERVER, m1)],
                Finding::Inconclusive(String::new()),
            ),
            (
                "other port, same mapping",
                vec![(SERVER, m1), (SERVER_PORT2, m1)],
                Finding::OneOf(vec![Ei, Ad]),
            ),
            (
                "other port, other mapping",
                vec![(SERVER, m1), (SERVER_PORT2, m2)],
                Finding::Known(Apd),
            ),
            (
                "other IP, same mapping",
                vec![(SERVER, m1), (SERVER_IP2, m1)],
                Finding::Known(Ei),
            ),
            (
                "other IP, other mapping",
                vec![(SERVER, m1), (SERVER_IP2, m2)],
                Finding::OneOf(vec![Ad, Apd]),
            ),
            (
                "RFC 5780 EIM",
                vec![(SERVER, m1), (SERVER_IP2, m1), (SERVER_IP2_PORT2, m1)],
                Finding::Known(Ei),
            ),
            (
                "RFC 5780 ADM",
                vec![(SERVER, m1), (SERVER_IP2, m2), (SERVER_IP2_PORT2, m2)],
                Finding::Known(Ad),
            ),
            (
                "RFC 5780 APDM",
                vec![(SERVER, m1), (SERVER_IP2, m2), (SERVER_IP2_PORT2, m3)],
                Finding::Known(Apd),
            ),
            (
                "contradiction",
                vec![(SERVER, m1), (SERVER_PORT2, m2), (SERVER_IP2, m1)],
                Finding::Inconclusive(String::new()),
            ),
        ];
        for (name, mapping, want) in table {
            let got = classify(&obs(&mapping, &[])).mapping;
            match (&want, &got) {
                (Finding::Inconclusive(_), Finding::Inconclusive(_)) => {}
                _ => assert_eq!(got, want, "{name}"),
            }
        }
    }

    #[test]
    fn filtering_table() {
        type Row<'a> = (&'a str, Vec<(&'a str, &'a str, bool)>, Finding);
        let table: Vec<Row<'_>> = vec![
            ("nothing", vec![], Finding::NotTested),
            (
                "only the server itself",
                vec![(SERVER, SERVER, true)],
                Finding::Inconclusive(String::new()),
            ),
            (
                "server silent",
                vec![(SERVER, SERVER, false)],
                Finding::Inconclusive(String::new()),
            ),
            (
                "other IP gets in",
                vec![(SERVER, SERVER_IP2_PORT2, true)],
                Finding::Known(Ei),
            ),
            (
                "other IP dropped",
                vec![(SERVER, SERVER_IP2_PORT2, false)],
                Finding::OneOf(vec![Ad, Apd]),
            ),
            (
                "other port gets in",
                vec![(SERVER, SERVER_PORT2, true)],
                Finding::OneOf(vec![Ei, Ad]),
            ),
            (
                "other port dropped",
                vec![(SERVER, SERVER_PORT2, false)],
                Finding::Known(Apd),
            ),
            (
                "RFC 5780 EIF",
                vec![
                    (SERVER, SERVER, true),
                    (SERVER, SERVER_IP2_PORT2, true),
                    (SERVER, SERVER_PORT2, true),
                ],
                Finding::Known(Ei),
            ),
            (
                "RFC 5780 ADF",
                vec![
                    (SERVER, SERVER, true),
                    (SERVER, SERVER_IP2_PORT2, false),
                    (SERVER, SERVER_PORT2, true),
                ],
                Finding::Known(Ad),
            ),
            (
                "RFC 5780 APDF",
                vec![
                    (SERVER, SERVER, true),
                    (SERVER, SERVER_IP2_PORT2, false),
                    (SERVER, SERVER_PORT2, false),
                ],
                Finding::Known(Apd),
            ),
            (
                "contradiction",
                vec![(SERVER, SERVER_IP2_PORT2, true), (SERVER, SERVER_PORT2, false)],
                Finding::Inconclusive(String::new()),
            ),
        ];
        for (name, filtering, want) in table {
            let got = classify(&obs(&[], &filtering)).filtering;
            match (&want, &got) {
                (Finding::Inconclusive(_), Finding::Inconclusive(_)) => {}
                _ => assert_eq!(got, want, "{name}"),
            }
        }
    }

    /// Field note 11: a "change IP" answer that came from the same IP must not be read as endpoint-independent.
    #[test]
    fn other_address_on_the_same_ip_is_not_endpoint_independent() {
        let mut o = obs(&[], &[(SERVER, SERVER_PORT2, true), (SERVER, SERVER_PORT2, true)]);
        o.primary = Some(a(SERVER));
        o.other_address = Some(a(SERVER_PORT2));
        let c = classify(&o);
        assert_eq!(c.filtering, Finding::OneOf(vec![Ei, Ad]));
        assert!(c.notes.iter().any(|n| n.contains("same IP")), "{:?}", c.notes);
    }

    #[test]
    fn no_nat_when_the_server_sees_our_own_address() {
        let o = obs(&[(SERVER, "192.168.1.10:40000")], &[]);
        let c = classify(&o);
        assert_eq!(c.nat, NatPresence::None);
        assert_eq!(c.mapping, Finding::Known(Ei));
        assert_eq!(c.port_preservation, Some(true));
    }

    #[test]
    fn presence_and_port_preservation() {
        type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, NatPresence, Option<bool>);
        let table: Vec<Row<'_>> = vec![
            ("no probe", vec![], NatPresence::Unknown, None),
            (
                "own address",
                vec![(SERVER, "192.168.1.10:40000")],
                NatPresence::None,
                Some(true),
            ),
            (
                "own IP, other port (a port-translating firewall)",
                vec![(SERVER, "192.168.1.10:1234")],
                NatPresence::Present,
                Some(false),
            ),
            (
                "public IP, port kept",
                vec![(SERVER, "198.51.100.1:40000"), (SERVER_PORT2, "198.51.100.1:40000")],
                NatPresence::Present,
                Some(true),
            ),
            (
                "public IP, port changed",
                vec![(SERVER, "198.51.100.1:40001")],
                NatPresence::Present,
                Some(false),
            ),
            (
                "port kept once, not twice",
                vec![(SERVER, "198.51.100.1:40000"), (SERVER_PORT2, "198.51.100.1:40002")],
                NatPresence::Present,
                Some(false),
            ),
        ];
        for (name, mapping, nat, pp) in table {
            let c = classify(&obs(&mapping, &[]));
            assert_eq!(c.nat, nat, "{name}");
            assert_eq!(c.port_preservation, pp, "{name}");
        }
    }

    #[test]
    fn address_pooling_and_unstable_mapping_are_noted() {
        let c = classify(&obs(
            &[(SERVER, "198.51.100.1:40000"), (SERVER_IP2, "198.51.100.2:40000")],
            &[],
        ));
        assert!(
            c.notes.iter().any(|n| n.contains("more than one public address")),
            "{:?}",
            c.notes
        );
        let c = classify(&obs(
            &[(SERVER, "198.51.100.1:40000"), (SERVER, "198.51.100.1:40001")],
            &[],
        ));
        assert!(
            c.notes.iter().any(|n| n.contains("changed its mapping")),
            "{:?}",
            c.notes
        );
    }

    /// Every combination of the three behaviours, probed as RFC 5780 would, comes out as itself.
    #[test]
    fn simulated_nats_round_trip() {
        let local = a("192.168.1.10:40000");
        for m in Behavior::ALL {
            for f in Behavior::ALL {
                let map = |dst: SocketAddr| -> SocketAddr {
                    let port = match m {
                        Ei => 40000,
                        Ad => 41000 + u16::from(dst.ip() == a(SERVER_IP2).ip()),
                        Apd => 42000 + dst.port() % 100 + 10 * u16::from(dst.ip() == a(SERVER_IP2).ip()),
                    };
                    SocketAddr::new("198.51.100.1".parse().unwrap(), port)
                };
                let admits = |src: SocketAddr| match f {
                    Ei => true,
                    Ad => src.ip() == a(SERVER).ip(),
                    Apd => src == a(SERVER),
                };
                let servers = [a(SERVER), a(SERVER_IP2), a(SERVER_IP2_PORT2)];
                let o = Observations {
                    local_ips: vec![local.ip()],
                    local_port: Some(local.port()),
                    mapping: servers
                        .iter()
                        .map(|s| MappingProbe {
                            server: *s,
                            mapped: map(*s),
                        })
                        .collect(),
                    filtering: [a(SERVER), a(SERVER_IP2_PORT2), a(SERVER_PORT2)]
                        .iter()
                        .map(|s| FilteringProbe {
                            contacted: a(SERVER),
                            source: *s,
                            received: admits(*s),
                        })
                        .collect(),
                    primary: Some(a(SERVER)),
                    other_address: Some(a(SERVER_IP2_PORT2)),
                    hairpin: None,
                };
                let c = classify(&o);
                assert_eq!(c.nat, NatPresence::Present);
                assert_eq!(c.mapping, Finding::Known(m), "mapping {m:?} filtering {f:?}");
                assert_eq!(c.filtering, Finding::Known(f), "mapping {m:?} filtering {f:?}");
                assert!(c.notes.is_empty(), "{:?}", c.notes);
            }
        }
    }
}
