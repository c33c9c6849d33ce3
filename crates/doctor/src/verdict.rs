//! The verdict: from the facts to plain words, with the RFC terms beside. Pure functions of [`Facts`], so every
//! rule has a unit test.
//!
//! Direct connection rule (two peers running ICE, both sending at once): a packet from the peer gets through our
//! NAT if our filtering is endpoint-independent or address-dependent (we sent to the peer's IP), or if the peer's
//! mapping is endpoint-independent (then we sent to the very address it comes from); and the same the other way.
//! Symmetric ⇔ address-and-port-dependent mapping.

use serde::Serialize;

use crate::error::CheckError;
use crate::ice::Transport;
use crate::nat::{Behavior, Finding, NatPresence};

/// What the verdict is computed from: a condensed view of the report.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Some signaling endpoint answered HTTP and the WebSocket upgrade.
    pub signaling_ok: bool,
    /// Every signaling endpoint failed because nothing answered (refused, timeout, DNS).
    pub signaling_unreachable: bool,
    /// The first signaling error, in words.
    pub signaling_error: Option<String>,
    /// An HTTPS endpoint answered with a certificate a browser refuses (and why).
    pub certificate_problem: Option<String>,
    pub certificate_self_signed: bool,
    pub certificate_days_left: Option<i64>,
    /// The ice-servers fetch failed with this error.
    pub ice_servers_error: Option<CheckError>,
    /// Some STUN server was configured / answered over UDP.
    pub stun_tested: bool,
    pub stun_ok: bool,
    /// TURN results: (transport, port, announced by the server, result).
    pub turn: Vec<TurnFact>,
    pub nat: NatPresence,
    pub mapping: Option<Finding>,
    pub filtering: Option<Finding>,
    pub relay_ok: Option<bool>,
    pub relay_quality: Option<crate::report::Quality>,
    pub relay_loss_percent: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct TurnFact {
    pub transport: Transport,
    pub port: u16,
    pub announced: bool,
    pub error: Option<CheckError>,
    pub cert_self_signed: bool,
}

impl TurnFact {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// How likely a direct connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chance {
    Likely,
    Unlikely,
    Uncertain,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DirectRow {
    /// Plain words.
    pub peer: &'static str,
    /// RFC 4787 terms.
    pub term: &'static str,
    pub chance: Chance,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TransportRow {
    /// Stable key: `signaling`, `stun-udp`, `turn-udp`, `turn-tcp`, `turn-tls`, `turn-tls-443`.
    pub key: &'static str,
    pub name: &'static str,
    /// None: not tested (or not offered, see `detail`).
    pub works: Option<bool>,
    /// Why `works` is None, when it is not simply "not tested": `not offered`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// One sentence.
    pub summary: String,
    /// Something works (exit code 0) — signaling or some TURN transport.
    pub something_works: bool,
    /// Why, precisely.
    pub causes: Vec<String>,
    pub transports: Vec<TransportRow>,
    pub direct: Vec<DirectRow>,
    pub advice: Vec<String>,
}

/// The kinds of peer in the table: (plain words, RFC terms, mapping, filtering).
const PEERS: [(&str, &str, Behavior, Behavior); 5] = [
    (
        "the open internet",
        "no NAT",
        Behavior::EndpointIndependent,
        Behavior::EndpointIndependent,
    ),
    (
        "a full-cone NAT",
        "endpoint-independent mapping and filtering",
        Behavior::EndpointIndependent,
        Behavior::EndpointIndependent,
    ),
    (
        "a restricted-cone NAT",
        "endpoint-independent mapping, address-dependent filtering",
        Behavior::EndpointIndependent,
        Behavior::AddressDependent,
    ),
    (
        "a port-restricted NAT (most home routers)",
        "endpoint-independent mapping, address-and-port-dependent filtering",
        Behavior::EndpointIndependent,
        Behavior::AddressAndPortDependent,
    ),
    (
        "a symmetric NAT (many mobile and corporate networks)",
        "address-and-port-dependent mapping",
        Behavior::AddressAndPortDependent,
        Behavior::AddressAndPortDependent,
    ),
];

/// Whether packets flow both ways between (mapping, filtering) pairs `a` and `b` when both send.
pub fn direct_works(a: (Behavior, Behavior), b: (Behavior, Behavior)) -> bool {
    let admits = |filter: Behavior, other_mapping: Behavior| {
        filter != Behavior::AddressAndPortDependent || other_mapping == Behavior::EndpointIndependent
    };
    admits(a.1, b.0) && admits(b.1, a.0)
}

/// The chance of a direct connection with each kind of peer, given what we know of our side.
pub fn direct_table(udp_ok: Option<bool>, mapping: &Finding, filtering: &Finding) -> Vec<DirectRow> {
    PEERS
        .iter()
        .map(|(peer, term, pm, pf)| {
            let chance = match udp_ok {
                Some(false) => Chance::Unlikely,
                None => Chance::Uncertain,
                Some(true) => {
                    let mut results = mapping
                        .candidates()
                        .into_iter()
                        .flat_map(|m| filtering.candidates().into_iter().map(move |f| (m, f)))
                        .map(|ours| direct_works(ours, (*pm, *pf)));
                    let first = results.next().unwrap_or(false);
                    if results.all(|r| r == first) {
                        if first {
                            Chance::Likely
                        } else {
                            Chance::Unlikely
                        }
                    } else {
                        Chance::Uncertain
                    }
                }
            };
            DirectRow { peer, term, chance }
        })
        .collect()
}

fn transport_of(turn: &[TurnFact], pick: impl Fn(&TurnFact) -> bool) -> Option<bool> {
    let matching: Vec<&TurnFact> = turn.iter().filter(|t| pick(t)).collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().any(|t| t.ok()))
    }
}

/// Plain words for why a TURN transport failed.
pub fn turn_cause(t: &TurnFact) -> Option<String> {
    let e = t.error.as_ref()?;
    let what = format!(
        "TURN over {} on port {}",
        crate::report::transport_word(t.transport),
        t.port
    );
    Some(match e {
        CheckError::AuthRejected(_) => format!(
            "{what}: the server refused the credential (401 Unauthorized) — wrong password, or a REST credential \
             that expired or was minted with another secret"
        ),
        CheckError::StaleNonce(n) => format!(
            "{what}: the server answered 438 Stale Nonce {n} times in a row — a nonce lifetime that is too short or \
             clocks out of step; this is not a wrong password"
        ),
        CheckError::Stun { code: 486, .. } => format!("{what}: allocation quota reached (486)"),
        CheckError::Stun { code: 508, .. } => format!("{what}: the server is out of relay ports (508)"),
        CheckError::Stun { code: 403, reason } => format!("{what}: forbidden (403 {reason})"),
        CheckError::Timeout(_) => format!("{what}: no answer — blocked on this network or not listening"),
        CheckError::Refused => format!("{what}: connection refused — nothing listens there"),
        CheckError::NoCredential => format!("{what}: not tested, no credential"),
        other => format!("{what}: {other}"),
    })
}

/// The verdict.
pub fn verdict(f: &Facts) -> Verdict {
    let mut causes = Vec::new();
    let mut advice = Vec::new();
    let turn_udp = transport_of(&f.turn, |t| t.transport == Transport::Udp);
    let turn_tcp = transport_of(&f.turn, |t| t.transport == Transport::Tcp);
    let turn_tls = transport_of(&f.turn, |t| t.transport == Transport::Tls && t.port != 443);
    // A 443 probe the server did not announce that nothing answered means "not offered", not "blocked".
    let probe_unanswered =
        |t: &TurnFact| !t.announced && matches!(t.error, Some(CheckError::Refused | CheckError::Timeout(_)));
    let turn_443 = transport_of(&f.turn, |t| {
        t.transport == Transport::Tls && t.port == 443 && !probe_unanswered(t)
    });
    let probed_443 = f.turn.iter().any(|t| t.port == 443 && probe_unanswered(t));
    let any_turn = f.turn.iter().any(TurnFact::ok);
    let something_works = f.signaling_ok || any_turn;
    let udp_ok = if f.stun_tested { Some(f.stun_ok) } else { turn_udp };

    // Signaling.
    if !f.signaling_ok {
        if f.signaling_unreachable {
            causes.push(format!(
                "The server is unreachable from here: {}.",
                f.signaling_error.clone().unwrap_or_else(|| "no answer".into())
            ));
            advice.push(
                "Check the address and that the server runs; if it does, a firewall on this network or in front of \
                 the server blocks it — serve signaling on 443 (single port) so it passes."
                    .to_owned(),
            );
        } else if let Some(p) = &f.certificate_problem {
            causes.push(format!(
                "The signaling server's certificate is refused by browsers: {p}."
            ));
        } else {
            causes.push(format!(
                "Signaling does not work: {}.",
                f.signaling_error.clone().unwrap_or_else(|| "unknown error".into())
            ));
        }
    }
    if f.certificate_self_signed {
        advice.push(
            "The certificate is self-signed: browsers refuse it (wss:// and turns://). Give the server a real \
             certificate (tls.cert and tls.key), e.g. from Let's Encrypt. Run with --insecure to test the rest anyway."
                .to_owned(),
        );
    } else if let Some(p) = &f.certificate_problem {
        advice.push(format!(
            "Fix the certificate ({p}); run with --insecure to test the rest anyway."
        ));
    }
    if let Some(days) = f.certificate_days_left {
        if days < 0 {
            causes.push(format!("The certificate expired {} days ago.", -days));
        } else if days < 14 {
            advice.push(format!("The certificate expires in {days} days: renew it."));
        }
    }
    match &f.ice_servers_error {
        Some(CheckError::Http { status: 401 | 403, .. }) => {
            causes.push("The server wants a token for /api/ice-servers.".to_owned());
            advice.push(
                "Pass one with --token (mint it with `traverse token`), or give --turn-user/--turn-password."
                    .to_owned(),
            );
        }
        Some(e) if f.signaling_ok => causes.push(format!("Could not get the ICE servers: {e}.")),
        _ => {}
    }

    // Transports.
    for t in &f.turn {
        if let Some(c) = turn_cause(t) {
            if t.announced || !matches!(t.error, Some(CheckError::Refused | CheckError::Timeout(_))) {
                causes.push(format!("{c}."));
            }
        }
    }
    let tls_self_signed = f
        .turn
        .iter()
        .any(|t| t.ok() && t.transport == Transport::Tls && t.cert_self_signed);
    if tls_self_signed && !f.certificate_self_signed {
        advice.push(
            "TURN over TLS works but with a self-signed certificate, which browsers refuse: install a real \
             certificate."
                .to_owned(),
        );
    }
    let offers_443 = turn_443 == Some(true);
    match (udp_ok, any_turn) {
        (Some(false), true) => {
            causes.push("UDP is blocked on this network (STUN over UDP got no answer).".to_owned());
            if offers_443 {
                advice.push(
                    "UDP is blocked: peers on this network need TURN over TLS on 443 — this server offers it, so \
                     they will connect through the relay."
                        .to_owned(),
                );
            } else {
                advice.push(
                    "UDP is blocked: peers on this network need TURN over TCP/TLS, and networks that allow only 443 \
                     need TURN over TLS on 443 — this server does not offer it: enable a single port on 443."
                        .to_owned(),
                );
            }
        }
        (Some(false), false) if !f.turn.is_empty() => {
            causes.push("Neither UDP nor any TURN transport gets through from this network.".to_owned());
        }
        _ => {}
    }
    if turn_443 != Some(true) && (turn_tcp.is_some() || turn_tls.is_some()) && any_turn && udp_ok != Some(false) {
        advice.push(
            "This server offers no TURN over TLS on 443: peers on networks that allow only 443 (hotels, offices) \
             cannot reach it — enable a single port on 443."
                .to_owned(),
        );
    }
    if f.turn.is_empty() && f.signaling_ok {
        causes.push("No TURN server was tested: peers behind symmetric NATs or blocked UDP will fail.".to_owned());
        advice.push(
            "Configure TURN (the server's /api/ice-servers should list turn: URLs with a credential).".to_owned(),
        );
    }

    // NAT.
    let mapping = f.mapping.clone().unwrap_or(Finding::NotTested);
    let filtering = f.filtering.clone().unwrap_or(Finding::NotTested);
    let direct = direct_table(udp_ok, &mapping, &filtering);
    if mapping.known() == Some(Behavior::AddressAndPortDependent) {
        causes.push(
            "This network has a symmetric NAT (address-and-port-dependent mapping): direct connections with peers \
             behind most home routers fail, and a TURN relay is needed for them."
                .to_owned(),
        );
        if !any_turn {
            advice.push("Peers here need TURN: configure a TURN server that works from this network.".to_owned());
        }
    }
    if f.relay_ok == Some(false) && any_turn {
        causes.push("TURN allocations work, but data did not come back through the relay.".to_owned());
    }
    if let (Some(q), Some(loss)) = (f.relay_quality, f.relay_loss_percent) {
        if q >= crate::report::Quality::Poor {
            causes.push(format!(
                "The relayed path is {} (loss {loss:.1} %): expect choppy audio and video.",
                q.word()
            ));
        }
    }

    let summary = if !something_works {
        if f.signaling_unreachable {
            "Nothing works: the server is unreachable from this network.".to_owned()
        } else {
            "Nothing works: neither signaling nor any TURN transport succeeded.".to_owned()
        }
    } else if !f.signaling_ok {
        "Signaling fails, so peers cannot find each other through this server.".to_owned()
    } else if udp_ok == Some(true) && direct.iter().all(|r| r.chance == Chance::Likely) {
        if any_turn {
            "Good: direct connections are likely with every kind of peer, and the TURN relay works as a fallback."
                .to_owned()
        } else {
            "Direct connections are likely with every kind of peer; no TURN relay was confirmed as a fallback."
                .to_owned()
        }
    } else if any_turn {
        "Connections will work, some of them only through the TURN relay.".to_owned()
    } else {
        "Some connections will fail: direct connections are not always possible here and no TURN relay works."
            .to_owned()
    };

    let transports = vec![
        TransportRow {
            key: "signaling",
            name: "signaling (HTTP + WebSocket)",
            works: Some(f.signaling_ok),
            detail: None,
        },
        TransportRow {
            key: "stun-udp",
            name: "UDP (STUN)",
            works: if f.stun_tested { Some(f.stun_ok) } else { None },
            detail: None,
        },
        TransportRow {
            key: "turn-udp",
            name: "TURN over UDP",
            works: turn_udp,
            detail: None,
        },
        TransportRow {
            key: "turn-tcp",
            name: "TURN over TCP",
            works: turn_tcp,
            detail: None,
        },
        TransportRow {
            key: "turn-tls",
            name: "TURN over TLS",
            works: turn_tls,
            detail: None,
        },
        TransportRow {
            key: "turn-tls-443",
            name: "TURN over TLS on 443 (single port)",
            works: turn_443,
            detail: (turn_443.is_none() && probed_443).then_some("not offered"),
        },
    ];
    Verdict {
        summary,
        something_works,
        causes,
        transports,
        direct,
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use Behavior::{AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei};

    fn turn(transport: Transport, port: u16, error: Option<CheckError>) -> TurnFact {
        TurnFact {
            transport,
            port,
            announced: true,
            error,
            cert_self_signed: false,
        }
    }

    fn healthy() -> Facts {
        Facts {
            signaling_ok: true,
            stun_tested: true,
            stun_ok: true,
            turn: vec![
                turn(Transport::Udp, 3478, None),
                turn(Transport::Tcp, 3478, None),
                turn(Transport::Tls, 5349, None),
                turn(Transport::Tls, 443, None),
            ],
            nat: NatPresence::Present,
            mapping: Some(Finding::Known(Ei)),
            filtering: Some(Finding::Known(Apd)),
            relay_ok: Some(true),
            ..Facts::default()
        }
    }

    #[test]
    fn the_classic_pairs() {
        // Symmetric with port-restricted fails; with restricted cone works; two symmetric fail; full cone works.
        assert!(!direct_works((Apd, Apd), (Ei, Apd)));
        assert!(direct_works((Apd, Apd), (Ei, Ad)));
        assert!(!direct_works((Apd, Apd), (Apd, Apd)));
        assert!(direct_works((Apd, Apd), (Ei, Ei)));
        assert!(direct_works((Ei, Apd), (Ei, Apd)));
        for a in Behavior::ALL {
            for b in Behavior::ALL {
                for c in Behavior::ALL {
                    for d in Behavior::ALL {
                        assert_eq!(
                            direct_works((a, b), (c, d)),
                            direct_works((c, d), (a, b)),
                            "symmetric rule"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn direct_table_rows() {
        let chances = |m: Finding, f: Finding| -> Vec<Chance> {
            direct_table(Some(true), &m, &f).into_iter().map(|r| r.chance).collect()
        };
        use Chance::{Likely as L, Uncertain as U, Unlikely as N};
        assert_eq!(chances(Finding::Known(Ei), Finding::Known(Ei)), vec![L, L, L, L, L]);
        assert_eq!(chances(Finding::Known(Ei), Finding::Known(Apd)), vec![L, L, L, L, N]);
        assert_eq!(chances(Finding::Known(Apd), Finding::Known(Apd)), vec![L, L, L, N, N]);
        assert_eq!(
            chances(Finding::Known(Ei), Finding::OneOf(vec![Ei, Ad])),
            vec![L, L, L, L, L]
        );
        assert_eq!(chances(Finding::NotTested, Finding::NotTested), vec![L, L, L, U, U]);
        assert!(direct_table(Some(false), &Finding::Known(Ei), &Finding::Known(Ei))
            .iter()
            .all(|r| r.chance == N));
    }

    #[test]
    fn healthy_network() {
        let v = verdict(&healthy());
        assert!(v.something_works);
        assert!(
            v.summary.contains("some of them only through the TURN relay"),
            "{}",
            v.summary
        );
        assert!(v.causes.is_empty(), "{:?}", v.causes);
        assert!(v.advice.is_empty(), "{:?}", v.advice);
    }

    #[test]
    fn server_unreachable() {
        let v = verdict(&Facts {
            signaling_unreachable: true,
            signaling_error: Some("connection refused".into()),
            ..Facts::default()
        });
        assert!(!v.something_works);
        assert!(v.summary.contains("unreachable"), "{}", v.summary);
        assert!(
            v.causes
                .iter()
                .any(|c| c.contains("unreachable") && c.contains("refused")),
            "{:?}",
            v.causes
        );
    }

    #[test]
    fn udp_blocked_with_and_without_443() {
        let mut f = healthy();
        f.stun_ok = false;
        f.turn[0].error = Some(CheckError::Timeout(Duration::from_secs(3)));
        let v = verdict(&f);
        assert!(
            v.advice.iter().any(|a| a.contains("this server offers it")),
            "{:?}",
            v.advice
        );
        assert!(v.direct.iter().all(|r| r.chance == Chance::Unlikely));
        f.turn.retain(|t| t.port != 443);
        let v = verdict(&f);
        assert!(
            v.advice
                .iter()
                .any(|a| a.contains("does not offer it: enable a single port on 443")),
            "{:?}",
            v.advice
        );
    }

    /// Field note 10: a stale nonce is not an authentication failure.
    #[test]
    fn stale_nonce_is_not_called_an_authentication_failure() {
        let mut f = healthy();
        f.turn[0].error = Some(CheckError::StaleNonce(3));
        let v = verdict(&f);
        let cause = v.causes.iter().find(|c| c.contains("438")).expect("a 438 cause");
        assert!(cause.contains("not a wrong password"), "{cause}");
        assert!(!cause.contains("refused the credential"), "{cause}");
        f.turn[0].error = Some(CheckError::AuthRejected("Unauthorized".into()));
        let v = verdict(&f);
        assert!(
            v.causes.iter().any(|c| c.contains("refused the credential")),
            "{:?}",
            v.causes
        );
    }

    #[test]
    fn symmetric_nat_needs_turn() {
        let mut f = healthy();
        f.mapping = Some(Finding::Known(Apd));
        let v = verdict(&f);
        assert!(v.causes.iter().any(|c| c.contains("symmetric NAT")), "{:?}", v.causes);
    }

    #[test]
    fn token_and_certificate_advice() {
        let mut f = healthy();
        f.ice_servers_error = Some(CheckError::Http {
            status: 401,
            message: "token-required".into(),
        });
        f.certificate_self_signed = true;
        f.certificate_problem = Some("issued by an unknown authority".into());
        let v = verdict(&f);
        assert!(v.advice.iter().any(|a| a.contains("--token")), "{:?}", v.advice);
        assert!(
            v.advice
                .iter()
                .any(|a| a.contains("self-signed") && a.contains("--insecure")),
            "{:?}",
            v.advice
        );
    }

    #[test]
    fn no_443_advice_when_only_other_ports() {
        let mut f = healthy();
        f.turn.retain(|t| t.port != 443);
        let v = verdict(&f);
        assert!(
            v.advice.iter().any(|a| a.contains("enable a single port on 443")),
            "{:?}",
            v.advice
        );
        assert_eq!(
            v.transports
                .iter()
                .find(|t| t.key == "turn-tls-443")
                .and_then(|t| t.works),
            None
        );
    }
}
