//! The verdict: from the typed facts to plain words, with the RFC terms beside. Pure functions of [`Facts`] (the
//! checks' results with their [`CheckError`]s, never their words), so every rule has a unit test.
//!
//! Direct connection rule (two peers running ICE, both sending at once): a packet from the peer gets through our
//! NAT if our filtering is endpoint-independent or address-dependent (we sent to the peer's IP), or if the peer's
//! mapping is endpoint-independent (then we sent to the very address it comes from); and the same the other way.
//! Symmetric ⇔ address-and-port-dependent mapping.

use serde::Serialize;

use crate::error::CheckError;
use crate::facts::{Facts, SignalingFact, TurnFact};
use crate::ice::Transport;
use crate::nat::{Behavior, Finding};
use crate::quality::Quality;

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
    /// Stable key: `signaling`, `stun-udp`, `udp-other-ports`, `turn-udp`, `turn-tcp`, `turn-tls`, `turn-tls-443`.
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

/// The TURN transport a browser here would relay over when UDP is blocked: TLS on 443, else TLS, else TCP.
pub(crate) fn best_stream_turn(turn: &[TurnFact]) -> Option<&TurnFact> {
    let works = |t: &&TurnFact| t.ok() && t.transport() != Transport::Udp;
    turn.iter()
        .filter(works)
        .find(|t| t.transport() == Transport::Tls && t.port() == 443)
        .or_else(|| turn.iter().filter(works).find(|t| t.transport() == Transport::Tls))
        .or_else(|| turn.iter().find(works))
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
    Some(format!("{}: {}", turn_what(&[t], false), turn_reason(t)?))
}

/// TURN URLs of one host and transport that failed for one reason, reported in one line.
struct FailedAlike<'a> {
    reason: String,
    facts: Vec<&'a TurnFact>,
}

impl FailedAlike<'_> {
    fn takes(&self, t: &TurnFact, reason: &str) -> bool {
        self.reason == reason
            && self
                .facts
                .first()
                .is_some_and(|f| f.transport() == t.transport() && f.url.host == t.url.host)
    }
}

/// "TURN over TCP on port 3478", or "on ports 3478 and 3479" for several URLs of one transport that failed alike;
/// with `host`, "… on turn.example.com port 3478".
fn turn_what(facts: &[&TurnFact], host: bool) -> String {
    let mut ports: Vec<u16> = Vec::new();
    for t in facts {
        if !ports.contains(&t.port()) {
            ports.push(t.port());
        }
    }
    let transport = facts.first().map_or("", |t| t.transport().word());
    let on = match facts.first().filter(|_| host) {
        Some(t) => format!("on {} ", t.url.host),
        None => "on ".to_owned(),
    };
    match ports.as_slice() {
        [one] => format!("TURN over {transport} {on}port {one}"),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(u16::to_string).collect();
            format!("TURN over {transport} {on}ports {} and {last}", rest.join(", "))
        }
        [] => format!("TURN over {transport}"),
    }
}

/// Why a TURN transport failed, after its name.
fn turn_reason(t: &TurnFact) -> Option<String> {
    let e = t.error()?;
    // The TLS handshake went through, so something listens and speaks TLS there: silence, a close or a non-STUN
    // answer inside it is what an HTTPS server or an HTTP load balancer gives a TURN request.
    let tls_but_not_turn = t.transport() == crate::ice::Transport::Tls && t.certificate.is_some();
    Some(match e {
        CheckError::Timeout(_) | CheckError::Silent(_) | CheckError::Closed | CheckError::Protocol(_)
            if tls_but_not_turn =>
        {
            "TLS was accepted but nothing answered TURN inside it — what terminates TLS there (a web server, an HTTP \
             load balancer) does not speak TURN: forward that port to Traverse at layer 4 (TCP, TLS passed through), \
             or route ALPN `stun.turn` to it"
                .to_owned()
        }
        CheckError::AuthRejected(_) => "the server refused the credential (401 Unauthorized) — wrong password, or a \
             REST credential that expired or was minted with another secret"
            .to_owned(),
        CheckError::StaleNonce(n) => format!(
            "the server answered 438 Stale Nonce {n} times in a row — a nonce lifetime that is too short or clocks \
             out of step; this is not a wrong password"
        ),
        CheckError::Stun { code: 486, .. } => "allocation quota reached (486)".to_owned(),
        CheckError::Stun { code: 508, .. } => "the server is out of relay ports (508)".to_owned(),
        CheckError::Stun { code: 403, reason } => format!("forbidden (403 {reason})"),
        CheckError::Timeout(_) => "no answer — blocked on this network or not listening".to_owned(),
        // The TCP handshake went through: not closed, and not dropped at the first packet.
        CheckError::Silent(_) if t.transport() == crate::ice::Transport::Tls => "the connection was accepted but the \
             TLS handshake got no answer — something other than a TLS server listens there, or a firewall on this \
             network accepts connections and drops what they carry"
            .to_owned(),
        CheckError::Silent(_) => "the connection was accepted but nothing answered TURN — something other than \
             Traverse listens there (a port forwarded to the wrong host or service, a proxy that holds the \
             connection), or a firewall on this network accepts connections and drops what they carry"
            .to_owned(),
        CheckError::Stalled(_) => "the server answered, then nothing more — it stalled (overloaded?), or this \
             network broke the connection midway"
            .to_owned(),
        CheckError::Refused => "connection refused — nothing listens there".to_owned(),
        CheckError::NoCredential => "not tested, no credential".to_owned(),
        other => other.to_string(),
    })
}

/// What the signaling endpoints tell, primary first.
struct Signaling<'a> {
    /// Some endpoint answered HTTP and the WebSocket upgrade.
    ok: bool,
    /// Every endpoint failed because nothing answered (refused, timeout, unreachable, DNS).
    unreachable: bool,
    /// The first failure, after the first endpoint's URL.
    error: Option<String>,
    /// The first endpoint that accepted the connection and then answered nothing over HTTP (nor the upgrade).
    silent: Option<&'a SignalingFact>,
    /// The first certificate a browser refuses.
    untrusted: Option<&'a crate::tls::CertInfo>,
    days_left: Option<i64>,
}

impl<'a> Signaling<'a> {
    fn of(list: &'a [SignalingFact]) -> Signaling<'a> {
        let primary_first: Vec<&SignalingFact> = list
            .iter()
            .filter(|c| c.primary)
            .chain(list.iter().filter(|c| !c.primary))
            .collect();
        let first_url = primary_first.first().map(|c| c.url.as_str()).unwrap_or_default();
        Signaling {
            ok: list.iter().any(SignalingFact::ok),
            unreachable: !list.is_empty() && list.iter().all(SignalingFact::unreachable),
            error: primary_first
                .iter()
                .find_map(|c| c.error())
                .map(|e| format!("{first_url}: {e}")),
            // The given endpoint's: a 443/80 probe that something on the way holds names nothing of the server's.
            silent: list
                .iter()
                .find(|c| c.primary && matches!(c.http.error(), Some(CheckError::Silent(_))) && !c.websocket.ok()),
            untrusted: primary_first
                .iter()
                .find_map(|c| c.certificate.as_ref().filter(|c| !c.trusted)),
            days_left: primary_first
                .iter()
                .find_map(|c| c.certificate.as_ref().and_then(|c| c.days_to_expiry)),
        }
    }

    /// Why browsers refuse the certificate.
    fn certificate_problem(&self) -> Option<String> {
        self.untrusted.map(|c| {
            if c.self_signed {
                "self-signed".to_owned()
            } else {
                c.problem.clone().unwrap_or_default()
            }
        })
    }
}

/// What to do about `turns:` URLs the certificate does not cover; the server's start-up warning says the same.
pub const UNCOVERED_TURNS_ADVICE: &str = "Set signal.public_host to a name the certificate covers (or give a \
     certificate for the name or address handed out), so that the turns: URLs name it.";

/// The `turns:` URLs handed out name `host`, which the certificate does not cover.
pub fn uncovered_turns_cause(host: &str, urls: &[String]) -> String {
    format!(
        "The server hands out {}, but its certificate does not cover {host}: browsers refuse TURN over TLS there, \
         so users on networks that allow only 443 cannot connect.",
        urls.join(" and ")
    )
}

/// The peer kinds of the direct table that will need the relay, in words: "a port-restricted NAT (most home
/// routers) or a symmetric NAT (…)". The `/check` page says the same of a symmetric NAT (a test holds it to this).
pub fn relay_needed_for(direct: &[DirectRow]) -> Option<String> {
    let peers: Vec<&str> = direct
        .iter()
        .filter(|r| r.chance == Chance::Unlikely)
        .map(|r| r.peer)
        .collect();
    match peers.as_slice() {
        [] => None,
        [one] => Some((*one).to_owned()),
        [rest @ .., last] => Some(format!("{} or {last}", rest.join(", "))),
    }
}

/// This client's link to the relay when the relay test graded it poor or worse: the grade, the measures that made
/// it so, for people ("loss 10.6 % each way", "round trip 420 ms", "jitter 35 ms"), and what a call will feel
/// like. Loss and jitter break up the media; a long round trip delays every exchange (a geostationary satellite
/// link, 600 ms: the NAT lab's `geo` site), which is not "choppy".
fn poor_link(f: &Facts) -> Option<(Quality, String, &'static str)> {
    let relay = f.relay.as_ref()?;
    let (grades, link) = (relay.quality()?, relay.link()?);
    if grades.overall < Quality::Poor {
        return None;
    }
    let mut what = Vec::new();
    if grades.loss >= Quality::Poor {
        what.push(format!("loss {:.1} % each way", link.loss_percent));
    }
    if grades.rtt >= Quality::Poor {
        what.push(format!("round trip {:.0} ms", link.rtt_ms));
    }
    if grades.jitter >= Quality::Poor {
        what.push(format!("jitter {:.0} ms", link.jitter_ms));
    }
    let choppy = grades.loss >= Quality::Poor || grades.jitter >= Quality::Poor;
    let delayed = grades.rtt >= Quality::Poor;
    let expect = match (choppy, delayed) {
        (true, true) => "expect choppy audio and video, and a delay that makes people talk over each other",
        (false, true) => "expect a delay that makes people talk over each other",
        _ => "expect choppy audio and video",
    };
    Some((grades.overall, what.join(", "), expect))
}

/// The summary where UDP is blocked and TURN over a stream works: every call is relayed, over `best`.
pub fn no_udp_summary(best: &TurnFact) -> String {
    format!(
        "UDP is blocked on this network: every call will go through the TURN relay, over {} on port {}.",
        best.transport().word().to_uppercase(),
        best.port()
    )
}

/// The verdict.
pub fn verdict(f: &Facts) -> Verdict {
    let mut causes = Vec::new();
    let mut advice = Vec::new();
    let signaling = Signaling::of(&f.signaling);
    let certificate_problem = signaling.certificate_problem();
    let certificate_self_signed = signaling.untrusted.is_some_and(|c| c.self_signed);
    let stun_tested = !f.stun.is_empty();
    let stun_ok = f.stun.iter().any(|s| s.binding.ok());
    let turn_udp = transport_of(&f.turn, |t| t.transport() == Transport::Udp);
    let turn_tcp = transport_of(&f.turn, |t| t.transport() == Transport::Tcp);
    let turn_tls = transport_of(&f.turn, |t| t.transport() == Transport::Tls && t.port() != 443);
    // A 443 probe the server did not announce that nothing answered means "not offered", not "blocked".
    let probe_unanswered = |t: &TurnFact| {
        t.probe
            && matches!(
                t.error(),
                Some(CheckError::Refused | CheckError::Timeout(_) | CheckError::Silent(_))
            )
    };
    let turn_443 = transport_of(&f.turn, |t| {
        t.transport() == Transport::Tls && t.port() == 443 && !probe_unanswered(t)
    });
    let probed_443 = f.turn.iter().any(|t| t.port() == 443 && probe_unanswered(t));
    let any_turn = f.turn.iter().any(TurnFact::ok);
    let something_works = signaling.ok || any_turn;
    let udp_ok = if stun_tested { Some(stun_ok) } else { turn_udp };
    // STUN over UDP got no answer: whether UDP to another port of the server got out (`checks::udp_egress`).
    let udp_elsewhere = f.udp_egress.as_ref().and_then(crate::facts::UdpEgressFact::works);
    let only_stun_port_blocked = udp_ok == Some(false) && udp_elsewhere == Some(true);
    let stun_port = f.stun.first().map_or(3478, |s| s.url.port);

    // Signaling.
    if !signaling.ok {
        if signaling.unreachable {
            causes.push(format!(
                "The server is unreachable from here: {}.",
                signaling.error.clone().unwrap_or_else(|| "no answer".into())
            ));
            advice.push(
                "Check the address and that the server runs; if it does, a firewall on this network or in front of \
                 the server blocks it — serve signaling on 443 (single port) so it passes."
                    .to_owned(),
            );
            if f.proxy.is_none() {
                // An office network whose only way out is its HTTP proxy reads exactly so, while its browsers
                // connect through the proxy.
                advice.push(
                    "If this network lets nothing out but through an HTTP proxy (its browsers are set up with one), \
                     run the doctor through it: --proxy http://HOST:PORT, or HTTPS_PROXY."
                        .to_owned(),
                );
            }
        } else if let Some(p) = &certificate_problem {
            causes.push(format!(
                "The signaling server's certificate is refused by browsers: {p}."
            ));
        } else if f.signaling.iter().any(|c| {
            c.http.ok()
                && matches!(
                    c.websocket.error(),
                    Some(CheckError::Timeout(_) | CheckError::Silent(_))
                )
        }) {
            // Field note 5: the most common proxy failure — HTTP passes, the upgrade hangs.
            causes.push(
                "Signaling does not work: the WebSocket upgrade of /ws got no answer while HTTP works — a proxy in \
                 front of the server does not pass WebSockets."
                    .to_owned(),
            );
            advice.push(
                "Let the proxy pass WebSocket upgrades to /ws (the `Upgrade` and `Connection` headers, HTTP/1.1) with \
                 a read timeout longer than the 10 s heartbeat, or put Traverse on 443 itself (the single port)."
                    .to_owned(),
            );
        } else if let Some(c) = signaling.silent {
            // No certificate: the TLS handshake itself got no answer.
            let what = match c.tls && c.certificate.is_none() {
                true => "but its TLS handshake got no answer",
                false => "but answers nothing over HTTP",
            };
            causes.push(format!(
                "Signaling does not work: {} accepts connections {what} — something other than Traverse listens \
                 there, a proxy holds the connection without passing it on, or a firewall on this network accepts \
                 connections and drops what they carry.",
                c.url
            ));
            advice.push(
                "Check what listens on that port: a port forwarded to the wrong host or service, or a proxy or load \
                 balancer with no healthy upstream. If it is Traverse, try from another network: this one may hold \
                 connections it does not like."
                    .to_owned(),
            );
        } else {
            causes.push(format!(
                "Signaling does not work: {}.",
                signaling.error.clone().unwrap_or_else(|| "unknown error".into())
            ));
        }
    }
    // With --insecure given, the rest was tested already: no hint to give it.
    let insecure_hint = if f.insecure {
        ""
    } else {
        " Run with --insecure to test the rest anyway."
    };
    if certificate_self_signed {
        advice.push(format!(
            "The certificate is self-signed: browsers refuse it (wss:// and turns://). Give the server a real \
             certificate (tls.cert and tls.key), e.g. from Let's Encrypt.{insecure_hint}"
        ));
    } else if let Some(p) = &certificate_problem {
        advice.push(format!("Fix the certificate ({p}).{insecure_hint}"));
    }
    if let Some(days) = signaling.days_left {
        if days < 0 {
            causes.push(format!("The certificate expired {} days ago.", -days));
        } else if days < 14 {
            advice.push(format!("The certificate expires in {days} days: renew it."));
        }
    }
    match f.ice_servers.fetch.as_ref().and_then(|t| t.error()) {
        Some(CheckError::Http { status: 401 | 403, .. }) => {
            causes.push("The server wants a token for /api/ice-servers.".to_owned());
            advice.push(
                "Pass one with --token (mint it with `traverse token`), or give --turn-user/--turn-password."
                    .to_owned(),
            );
        }
        Some(e) if signaling.ok => causes.push(format!("Could not get the ICE servers: {e}.")),
        _ => {}
    }

    // Transports: URLs of one host and transport that failed for one reason make one line (16 dead URLs made 16).
    let mut failed: Vec<FailedAlike> = Vec::new();
    for t in &f.turn {
        let Some(reason) = turn_reason(t).filter(|_| !probe_unanswered(t)) else {
            continue;
        };
        match failed.iter_mut().find(|g| g.takes(t, &reason)) {
            Some(group) => group.facts.push(t),
            None => failed.push(FailedAlike { reason, facts: vec![t] }),
        }
    }
    // The host is named only when the URLs name more than one (another server's, a cluster's nodes).
    let hosts: std::collections::HashSet<&str> = failed
        .iter()
        .filter_map(|g| g.facts.first())
        .map(|t| t.url.host.as_str())
        .collect();
    for group in &failed {
        causes.push(format!(
            "{}: {}.",
            turn_what(&group.facts, hosts.len() > 1),
            group.reason
        ));
    }
    let tls_certificates: Vec<(&TurnFact, &crate::tls::CertInfo)> = f
        .turn
        .iter()
        .filter(|t| t.ok() && t.transport() == Transport::Tls)
        .filter_map(|t| Some((t, t.certificate.as_ref()?)))
        .collect();
    if tls_certificates.iter().any(|(_, c)| c.self_signed) {
        if !certificate_self_signed {
            advice.push(
                "TURN over TLS works but with a self-signed certificate, which browsers refuse: install a real \
                 certificate."
                    .to_owned(),
            );
        }
    } else {
        // Only the URLs the server hands out: a probe names the host given to the doctor, not what peers get.
        let uncovered: Vec<String> = tls_certificates
            .iter()
            .filter(|(t, c)| !t.probe && !c.covers_name)
            .map(|(t, _)| t.url.label())
            .collect();
        if let Some(first) = f.turn.iter().find(|t| !t.probe && uncovered.contains(&t.url.label())) {
            causes.push(uncovered_turns_cause(&first.url.host, &uncovered));
            advice.push(UNCOVERED_TURNS_ADVICE.to_owned());
        } else if let Some((_, c)) = tls_certificates
            .iter()
            .find(|(_, c)| !c.trusted)
            .filter(|_| certificate_problem.is_none())
        {
            advice.push(format!(
                "TURN over TLS works, but browsers refuse its certificate ({}): install one from a CA they trust.",
                c.problem.clone().unwrap_or_default()
            ));
        }
    }
    let offers_443 = turn_443 == Some(true);
    match (udp_ok, any_turn) {
        (Some(false), true) if only_stun_port_blocked => {
            causes.push(format!(
                "UDP to the server's STUN/TURN port {stun_port} gets no answer, but UDP to other ports gets out (a \
                 datagram to the relay's port {} got through): a firewall blocks the STUN/TURN port, not UDP.",
                f.udp_egress.as_ref().map_or(0, |u| u.to_port)
            ));
            advice.push(format!(
                "Calls through the relay go over TCP or TLS from here, and direct calls may still work. To let the \
                 relay use UDP, allow UDP to port {stun_port} of the server on this network's firewall."
            ));
        }
        (Some(false), true) => {
            causes.push(match udp_elsewhere {
                Some(false) => "UDP is blocked on this network (STUN over UDP got no answer, and a datagram to \
                                another port of the server did not get through either)."
                    .to_owned(),
                _ => "UDP is blocked on this network (STUN over UDP got no answer).".to_owned(),
            });
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
    if f.turn.is_empty() && signaling.ok {
        causes.push("No TURN server was tested: peers behind symmetric NATs or blocked UDP will fail.".to_owned());
        advice.push(
            "Configure TURN (the server's /api/ice-servers should list turn: URLs with a credential).".to_owned(),
        );
    }

    // NAT.
    let classification = f.nat.as_ref().map(|n| &n.classification);
    let mapping = classification.map_or(Finding::NotTested, |c| c.mapping.clone());
    let filtering = classification.map_or(Finding::NotTested, |c| c.filtering.clone());
    // UDP out on other ports: whether a direct path works depends on the other side and the NAT, unknown here.
    let direct = direct_table(if only_stun_port_blocked { None } else { udp_ok }, &mapping, &filtering);
    // Either dependent mapping (known, or narrowed to the two) fails with the same peers: /check's "address-dependent
    // or stricter" is this case too.
    let dependent = mapping.candidates();
    if !dependent.contains(&Behavior::EndpointIndependent) && udp_ok != Some(false) {
        let peers = relay_needed_for(&direct).unwrap_or_else(|| "some peers".to_owned());
        let term = dependent.iter().map(|b| b.term()).collect::<Vec<_>>().join(" or ");
        causes.push(format!(
            "This network has a symmetric NAT ({term} mapping): calls with peers behind {peers} need the TURN relay."
        ));
        if !any_turn {
            advice.push("Peers here need TURN: configure a TURN server that works from this network.".to_owned());
        }
    }
    if f.relay.as_ref().is_some_and(|r| !r.outcome.ok()) && any_turn {
        causes.push("TURN allocations work, but data did not come back through the relay.".to_owned());
    }
    if let (Some(proxy), false) = (&f.proxy, something_works) {
        causes.push(format!(
            "Every connection went to the HTTP proxy {proxy}, and none got through it to the server: check its \
             address and credentials (--proxy, HTTPS_PROXY), or run without it (--proxy none)."
        ));
    } else if let Some(proxy) = &f.proxy {
        causes.push(format!(
            "This network reaches the server through the HTTP proxy {proxy}, as browsers set up with it do: signaling \
             and TURN over TCP or TLS go through its tunnels (most proxies open them to port 443 alone), UDP cannot, \
             and the server sees the proxy's address for every user behind it."
        ));
    }
    let poor = poor_link(f);
    if let Some((q, what, expect)) = &poor {
        causes.push(format!(
            "This network's link to the relay is {} ({what}): {expect}.",
            q.word()
        ));
    }

    let summary = if !something_works {
        if signaling.unreachable {
            "Nothing works: the server is unreachable from this network.".to_owned()
        } else {
            "Nothing works: neither signaling nor any TURN transport succeeded.".to_owned()
        }
    } else if !signaling.ok {
        "Signaling fails, so peers cannot find each other through this server.".to_owned()
    } else if udp_ok == Some(true) && direct.iter().all(|r| r.chance == Chance::Likely) {
        // Not "Good" over a link that loses or delays this much (the NAT lab's `lossy` site read "Good: …").
        if any_turn && poor.is_none() {
            "Good: direct connections are likely with every kind of peer, and the TURN relay works as a fallback."
                .to_owned()
        } else if any_turn {
            "Direct connections are likely with every kind of peer, and the TURN relay works as a fallback.".to_owned()
        } else {
            "Direct connections are likely with every kind of peer; no TURN relay was confirmed as a fallback."
                .to_owned()
        }
    } else if let (true, Some(best)) = (only_stun_port_blocked, best_stream_turn(&f.turn)) {
        format!(
            "UDP to the server's STUN/TURN port is blocked here (UDP to other ports gets out): calls through the relay \
             go over {} on port {}, direct calls may still work.",
            best.transport().word().to_uppercase(),
            best.port()
        )
    } else if let (Some(false), Some(best)) = (udp_ok, best_stream_turn(&f.turn)) {
        no_udp_summary(best)
    } else if any_turn && !direct.iter().any(|r| r.chance == Chance::Unlikely) {
        // No kind of peer is known to need the relay: the NAT could not be told apart (one server address).
        "Connections will work; some may need the TURN relay (a second server address, RFC 5780, would tell which)."
            .to_owned()
    } else if any_turn {
        "Connections will work, some of them only through the TURN relay.".to_owned()
    } else if udp_ok == Some(false) {
        // Every kind of peer needs a relay from here (the direct table says so): this is not "some".
        if f.turn.is_empty() {
            "Calls from this network will fail: UDP is blocked and the server offers no TURN relay.".to_owned()
        } else {
            "Calls from this network will fail: UDP is blocked and no TURN transport gets through.".to_owned()
        }
    } else {
        "Some connections will fail: direct connections are not always possible here and no TURN relay works."
            .to_owned()
    };
    // Calls that connect over a link that loses or delays this much are still bad calls: the headline says so.
    let summary = match &poor {
        Some((q, what, expect)) if something_works && signaling.ok => {
            format!("{summary} But this network's link is {} ({what}): {expect}.", q.word())
        }
        _ => summary,
    };

    let transports = vec![
        TransportRow {
            key: "signaling",
            name: "signaling (HTTP + WebSocket)",
            works: Some(signaling.ok),
            detail: None,
        },
        TransportRow {
            key: "stun-udp",
            name: "UDP (STUN)",
            works: if stun_tested { Some(stun_ok) } else { None },
            detail: None,
        },
        TransportRow {
            key: "udp-other-ports",
            name: "UDP to other ports of the server",
            works: udp_elsewhere,
            detail: match (&f.udp_egress, udp_ok) {
                (Some(u), _) if u.works().is_none() => Some("could not be tested"),
                (None, Some(true)) => Some("not needed: STUN over UDP works"),
                _ => None,
            },
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
    use crate::client::Allocation;
    use crate::facts::{NatFact, NatMethod, RelayFact, RttStats, StunBinding, StunFact, Timed};
    use crate::ice::IceUrl;
    use crate::nat::{Classification, NatPresence};
    use crate::tls::CertInfo;
    use std::net::SocketAddr;
    use std::time::Duration;
    use Behavior::{AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei};

    fn ok<T>(value: T) -> Timed<T> {
        Timed::new(Ok(value), Duration::from_millis(1))
    }

    fn failed<T>(e: CheckError) -> Timed<T> {
        Timed::new(Err(e), Duration::from_millis(1))
    }

    fn url(turn: bool, transport: Transport, port: u16) -> IceUrl {
        IceUrl {
            turn,
            transport,
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn endpoint(http: Result<(), CheckError>, websocket: Result<(), CheckError>) -> SignalingFact {
        SignalingFact {
            url: "http://127.0.0.1:8080".into(),
            port: 8080,
            tls: false,
            primary: true,
            http: Timed::new(http, Duration::from_millis(1)),
            websocket: Timed::new(websocket, Duration::from_millis(1)),
            certificate: None,
        }
    }

    fn stun(works: bool) -> StunFact {
        let addr: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        StunFact {
            url: url(false, Transport::Udp, 3478),
            server: Some(addr),
            binding: if works {
                ok(StunBinding {
                    local: addr,
                    mapped: addr,
                    rtt: Duration::from_millis(1),
                    other_address: None,
                })
            } else {
                failed(CheckError::Timeout(Duration::from_secs(3)))
            },
        }
    }

    fn turn(transport: Transport, port: u16, error: Option<CheckError>) -> TurnFact {
        TurnFact {
            url: url(true, transport, port),
            probe: false,
            allocation: match error {
                None => ok(Allocation {
                    relayed: "127.0.0.1:50000".parse().unwrap(),
                    mapped: None,
                    lifetime: None,
                }),
                Some(e) => failed(e),
            },
            certificate: None,
            local: None,
        }
    }

    #[test]
    fn tls_that_does_not_speak_turn_is_named_as_such() {
        let cert = crate::tls::CertInfo {
            trusted: true,
            self_signed: false,
            covers_name: true,
            problem: None,
            days_to_expiry: Some(60),
        };
        for error in [
            CheckError::Timeout(Duration::from_secs(5)),
            CheckError::Closed,
            CheckError::Protocol("HTTP/1.1 400".into()),
        ] {
            let mut t = turn(Transport::Tls, 443, Some(error.clone()));
            t.certificate = Some(cert.clone());
            let cause = turn_cause(&t).unwrap();
            assert!(
                cause.contains("does not speak TURN") && cause.contains("layer 4"),
                "{error:?}: {cause}"
            );
            // No TLS handshake: the network's fault, as before.
            let bare = turn(Transport::Tls, 443, Some(error));
            assert!(!turn_cause(&bare).unwrap().contains("does not speak TURN"));
        }
    }

    fn nat(mapping: Finding, filtering: Finding) -> Option<NatFact> {
        Some(NatFact {
            method: NatMethod::Comparison,
            classification: Classification {
                nat: NatPresence::Present,
                mapping,
                filtering,
                port_preservation: None,
                hairpin: None,
                notes: Vec::new(),
            },
            probes: Vec::new(),
        })
    }

    fn relay(received: u32, rtt_p50_ms: Option<f64>) -> RelayFact {
        RelayFact {
            transport: Transport::Udp,
            outcome: if received > 0 {
                ok(())
            } else {
                failed(CheckError::Timeout(Duration::from_secs(3)))
            },
            sent: 50,
            received,
            loss_percent: 100.0 * f64::from(50 - received) / 50.0,
            rtt: RttStats {
                p50: rtt_p50_ms,
                ..RttStats::default()
            },
        }
    }

    fn healthy() -> Facts {
        Facts {
            signaling: vec![endpoint(Ok(()), Ok(()))],
            stun: vec![stun(true)],
            turn: vec![
                turn(Transport::Udp, 3478, None),
                turn(Transport::Tcp, 3478, None),
                turn(Transport::Tls, 5349, None),
                turn(Transport::Tls, 443, None),
            ],
            nat: nat(Finding::Known(Ei), Finding::Known(Apd)),
            relay: Some(relay(50, None)),
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
            signaling: vec![endpoint(Err(CheckError::Refused), Err(CheckError::Refused))],
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
        f.stun = vec![stun(false)];
        f.turn[0].allocation = failed(CheckError::Timeout(Duration::from_secs(3)));
        let v = verdict(&f);
        assert!(
            v.advice.iter().any(|a| a.contains("this server offers it")),
            "{:?}",
            v.advice
        );
        assert!(v.direct.iter().all(|r| r.chance == Chance::Unlikely));
        f.turn.retain(|t| t.port() != 443);
        let v = verdict(&f);
        assert!(
            v.advice
                .iter()
                .any(|a| a.contains("does not offer it: enable a single port on 443")),
            "{:?}",
            v.advice
        );
    }

    /// STUN over UDP unanswered, but a datagram to the relay's port got through: a firewall blocks the STUN/TURN
    /// port, not UDP — the direct table is uncertain rather than "needs TURN", and the words say so.
    #[test]
    fn only_the_stun_port_blocked_is_not_called_udp_blocked() {
        let mut f = healthy();
        f.stun = vec![stun(false)];
        f.turn[0].allocation = failed(CheckError::Timeout(Duration::from_secs(3)));
        f.udp_egress = Some(crate::facts::UdpEgressFact {
            to_port: 50000,
            outcome: ok(true),
        });
        let v = verdict(&f);
        assert!(
            v.summary
                .starts_with("UDP to the server's STUN/TURN port is blocked here"),
            "{}",
            v.summary
        );
        assert!(
            v.causes
                .iter()
                .any(|c| c.contains("port 3478 gets no answer") && c.contains("port 50000 got through")),
            "{:?}",
            v.causes
        );
        assert!(
            !v.causes.iter().any(|c| c.contains("UDP is blocked on this network")),
            "{:?}",
            v.causes
        );
        assert!(v.direct.iter().all(|r| r.chance == Chance::Uncertain), "{:?}", v.direct);
        let row = v
            .transports
            .iter()
            .find(|t| t.key == "udp-other-ports")
            .map(|t| t.works);
        assert_eq!(row, Some(Some(true)));
        // Not through either: UDP is blocked, and the cause says how it was shown.
        f.udp_egress = Some(crate::facts::UdpEgressFact {
            to_port: 50000,
            outcome: ok(false),
        });
        let v = verdict(&f);
        assert!(v.summary.starts_with("UDP is blocked on this network"), "{}", v.summary);
        assert!(
            v.causes.iter().any(|c| c.contains("did not get through either")),
            "{:?}",
            v.causes
        );
        assert!(v.direct.iter().all(|r| r.chance == Chance::Unlikely));
    }

    /// UDP blocked and no relay gets through (or none is offered): every call fails from here, and the summary says
    /// so rather than "some".
    #[test]
    fn udp_blocked_without_any_relay_says_calls_will_fail() {
        let mut f = healthy();
        f.stun = vec![stun(false)];
        for t in &mut f.turn {
            t.allocation = failed(CheckError::Timeout(Duration::from_secs(3)));
        }
        let v = verdict(&f);
        assert!(v.direct.iter().all(|r| r.chance == Chance::Unlikely));
        assert_eq!(
            v.summary,
            "Calls from this network will fail: UDP is blocked and no TURN transport gets through."
        );
        f.turn.clear();
        let v = verdict(&f);
        assert_eq!(
            v.summary,
            "Calls from this network will fail: UDP is blocked and the server offers no TURN relay."
        );
    }

    /// Field note 10: a stale nonce is not an authentication failure.
    #[test]
    fn stale_nonce_is_not_called_an_authentication_failure() {
        let mut f = healthy();
        f.turn[0].allocation = failed(CheckError::StaleNonce(3));
        let v = verdict(&f);
        let cause = v.causes.iter().find(|c| c.contains("438")).expect("a 438 cause");
        assert!(cause.contains("not a wrong password"), "{cause}");
        assert!(!cause.contains("refused the credential"), "{cause}");
        f.turn[0].allocation = failed(CheckError::AuthRejected("Unauthorized".into()));
        let v = verdict(&f);
        assert!(
            v.causes.iter().any(|c| c.contains("refused the credential")),
            "{:?}",
            v.causes
        );
    }

    /// The advice names every kind of peer that will need the relay: port-restricted cone peers (most home
    /// routers) as well as other symmetric NATs.
    #[test]
    fn symmetric_nat_needs_turn() {
        let mut f = healthy();
        f.nat = nat(Finding::Known(Apd), Finding::Known(Apd));
        let v = verdict(&f);
        let cause = v
            .causes
            .iter()
            .find(|c| c.contains("symmetric NAT"))
            .expect("a symmetric NAT cause");
        assert!(
            cause.contains(
                "calls with peers behind a port-restricted NAT (most home routers) or a symmetric NAT (many mobile \
                 and corporate networks) need the TURN relay"
            ),
            "{cause}"
        );
        // Every row the table calls unlikely is named.
        for row in v.direct.iter().filter(|r| r.chance == Chance::Unlikely) {
            assert!(cause.contains(row.peer), "{} missing from {cause}", row.peer);
        }
        // Narrowed to the two dependent mappings (comparison without RFC 5780): the same peers, both terms.
        f.nat = nat(Finding::OneOf(vec![Ad, Apd]), Finding::NotTested);
        let v = verdict(&f);
        let narrowed = v
            .causes
            .iter()
            .find(|c| c.contains("symmetric NAT"))
            .expect("a symmetric NAT cause");
        assert!(
            narrowed.starts_with(
                "This network has a symmetric NAT (address-dependent or address-and-port-dependent mapping): calls \
                 with peers behind a port-restricted NAT (most home routers) or a symmetric NAT"
            ),
            "{narrowed}"
        );
    }

    /// The /check page's symmetric-NAT words carry the same list of peers (both run the same rule).
    #[test]
    fn check_page_names_the_same_peers_for_a_symmetric_nat() {
        let direct = direct_table(Some(true), &Finding::Known(Apd), &Finding::NotTested);
        let peers = relay_needed_for(&direct).unwrap();
        let js = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/check/check.js")).unwrap();
        let sentence = format!("calls with peers behind {peers} need the TURN relay");
        let flat = js.replace("' +\n      '", "").replace("' +\n    '", "");
        assert!(flat.contains(&sentence), "web/check/check.js should say: {sentence}");
    }

    /// Without UDP the summary says every call goes through the relay, and over which transport.
    #[test]
    fn no_udp_summary_says_every_call_is_relayed() {
        let mut f = healthy();
        f.stun = vec![stun(false)];
        f.turn[0].allocation = failed(CheckError::Timeout(Duration::from_secs(3)));
        let v = verdict(&f);
        assert_eq!(
            v.summary,
            "UDP is blocked on this network: every call will go through the TURN relay, over TLS on port 443."
        );
        f.turn.retain(|t| t.transport() != Transport::Tls);
        let v = verdict(&f);
        assert_eq!(
            v.summary,
            "UDP is blocked on this network: every call will go through the TURN relay, over TCP on port 3478."
        );
    }

    #[test]
    fn token_and_certificate_advice() {
        let mut f = healthy();
        f.ice_servers.fetch = Some(failed(CheckError::Http {
            status: 401,
            message: "token-required".into(),
        }));
        f.signaling[0].certificate = Some(CertInfo {
            trusted: false,
            self_signed: true,
            covers_name: true,
            problem: Some("issued by an unknown authority".into()),
            days_to_expiry: Some(300),
        });
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

    /// Through an HTTP proxy: said, with what it means for UDP and for the server's per-address limits.
    #[test]
    fn a_proxy_is_named_among_the_causes() {
        let mut f = healthy();
        assert!(!verdict(&f).causes.iter().any(|c| c.contains("proxy")));
        f.proxy = Some("http://192.0.2.193:3128".into());
        let v = verdict(&f);
        assert!(
            v.causes.iter().any(|c| c.starts_with(
                "This network reaches the server through the HTTP proxy http://192.0.2.193:3128, as browsers"
            ) && c.contains("UDP cannot")),
            "{:?}",
            v.causes
        );
    }

    /// Whoever gave --insecure has tested the rest already: the advice does not tell them to.
    #[test]
    fn no_insecure_hint_when_insecure_was_given() {
        let mut f = healthy();
        f.insecure = true;
        for self_signed in [true, false] {
            f.signaling[0].certificate = Some(CertInfo {
                trusted: false,
                self_signed,
                covers_name: true,
                problem: Some("expired".into()),
                days_to_expiry: Some(300),
            });
            let v = verdict(&f);
            assert!(
                v.advice.iter().any(|a| a.contains("certificate")),
                "the certificate advice stays: {:?}",
                v.advice
            );
            assert!(!v.advice.iter().any(|a| a.contains("--insecure")), "{:?}", v.advice);
        }
    }

    fn certificate(self_signed: bool, covers_name: bool) -> Option<CertInfo> {
        Some(CertInfo {
            trusted: !self_signed && covers_name,
            self_signed,
            covers_name,
            problem: (!covers_name).then(|| "not valid for this name".to_owned()),
            days_to_expiry: Some(80),
        })
    }

    /// A certificate for a name while the `turns:` URLs name an IP (signal.public_host unset): TURN over TLS
    /// allocates for the doctor, but every browser refuses it. Said as such; a self-signed one is said to be that.
    #[test]
    fn turns_urls_the_certificate_does_not_cover() {
        let mut f = healthy();
        for t in f.turn.iter_mut().filter(|t| t.transport() == Transport::Tls) {
            t.url.host = "203.0.113.5".into();
            t.certificate = certificate(false, false);
        }
        let v = verdict(&f);
        let cause = v
            .causes
            .iter()
            .find(|c| c.contains("does not cover"))
            .unwrap_or_else(|| panic!("{:?}", v.causes));
        assert!(
            cause.contains("turns:203.0.113.5:5349?transport=tcp and turns:203.0.113.5:443?transport=tcp")
                && cause.contains("does not cover 203.0.113.5"),
            "{cause}"
        );
        assert!(v.advice.iter().any(|a| a == UNCOVERED_TURNS_ADVICE), "{:?}", v.advice);

        // A probe of 443 names the host given to the doctor, not a URL handed out: no claim about it.
        let mut probe_only = healthy();
        probe_only.turn.retain(|t| t.transport() != Transport::Tls);
        let mut probe = turn(Transport::Tls, 443, None);
        probe.probe = true;
        probe.certificate = certificate(false, false);
        probe_only.turn.push(probe);
        assert!(!verdict(&probe_only).causes.iter().any(|c| c.contains("does not cover")));

        // Self-signed: the advice says self-signed, not a name problem.
        for t in f.turn.iter_mut().filter(|t| t.transport() == Transport::Tls) {
            t.certificate = certificate(true, false);
        }
        let v = verdict(&f);
        assert!(!v.causes.iter().any(|c| c.contains("does not cover")), "{:?}", v.causes);
        assert!(v.advice.iter().any(|a| a.contains("self-signed")), "{:?}", v.advice);

        // Covered: nothing to say.
        for t in f.turn.iter_mut().filter(|t| t.transport() == Transport::Tls) {
            t.certificate = certificate(false, true);
        }
        let v = verdict(&f);
        assert!(
            v.causes.is_empty() && v.advice.is_empty(),
            "{:?} {:?}",
            v.causes,
            v.advice
        );

        // Covered but from a CA browsers do not know: said so, and not as "self-signed".
        for t in f.turn.iter_mut().filter(|t| t.transport() == Transport::Tls) {
            let c = t.certificate.as_mut().unwrap();
            c.trusted = false;
            c.problem = Some("issued by an unknown authority".into());
        }
        let v = verdict(&f);
        assert_eq!(
            v.advice,
            vec![
                "TURN over TLS works, but browsers refuse its certificate (issued by an unknown authority): install \
                  one from a CA they trust."
                    .to_owned()
            ]
        );
    }

    #[test]
    fn no_443_advice_when_only_other_ports() {
        let mut f = healthy();
        f.turn.retain(|t| t.port() != 443);
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

    /// Only "nothing answered" makes the server unreachable; an answer we did not like is a signaling failure.
    #[test]
    fn unreachable_only_when_nothing_answered() {
        let dns = CheckError::Dns("rtc.example.com".into());
        let timeout = CheckError::Timeout(Duration::from_secs(3));
        let v = verdict(&Facts {
            signaling: vec![endpoint(Err(dns), Err(timeout)), {
                let mut probe = endpoint(Err(CheckError::Unreachable), Err(CheckError::Refused));
                probe.primary = false;
                probe
            }],
            ..Facts::default()
        });
        assert!(v.summary.contains("unreachable"), "{}", v.summary);
        assert!(
            v.causes.iter().any(|c| c.contains("cannot resolve rtc.example.com")),
            "{:?}",
            v.causes
        );

        let http_500 = CheckError::Http {
            status: 500,
            message: "oops".into(),
        };
        let v = verdict(&Facts {
            signaling: vec![endpoint(Err(http_500), Err(CheckError::Refused))],
            ..Facts::default()
        });
        assert!(!v.summary.contains("unreachable"), "{}", v.summary);
        assert!(
            v.causes
                .iter()
                .any(|c| c.starts_with("Signaling does not work") && c.contains("HTTP 500")),
            "{:?}",
            v.causes
        );
    }

    /// A NAT the doctor could not tell apart leaves every row likely or uncertain: the summary does not claim some
    /// calls go only through the relay.
    #[test]
    fn no_unlikely_row_no_claim_that_some_calls_need_the_relay() {
        let mut f = healthy();
        f.nat = nat(Finding::NotTested, Finding::NotTested);
        let v = verdict(&f);
        assert!(!v.direct.iter().any(|r| r.chance == Chance::Unlikely), "{:?}", v.direct);
        assert!(
            v.summary
                .starts_with("Connections will work; some may need the TURN relay"),
            "{}",
            v.summary
        );
        f.nat = nat(Finding::Known(Apd), Finding::Known(Apd));
        let v = verdict(&f);
        assert_eq!(
            v.summary,
            "Connections will work, some of them only through the TURN relay."
        );
    }

    /// Field note 5: HTTP answers, the WebSocket upgrade hangs — a proxy that does not pass WebSockets, named.
    #[test]
    fn a_hung_websocket_upgrade_behind_working_http_names_the_proxy() {
        let mut f = healthy();
        f.signaling = vec![endpoint(Ok(()), Err(CheckError::Silent(Duration::from_secs(3))))];
        let v = verdict(&f);
        assert!(
            v.causes
                .iter()
                .any(|c| c.contains("WebSocket upgrade of /ws got no answer while HTTP works")),
            "{:?}",
            v.causes
        );
        assert!(
            v.advice.iter().any(|a| a.contains("pass WebSocket upgrades")),
            "{:?}",
            v.advice
        );
    }

    /// Sixteen dead TURN URLs were sixteen cause lines: URLs of one transport that failed for one reason are one
    /// line naming their ports; another reason or transport is a line of its own.
    #[test]
    fn turn_urls_that_failed_alike_make_one_cause() {
        let mut f = healthy();
        let timeout = || Some(CheckError::Timeout(Duration::from_secs(3)));
        f.turn = (0..16).map(|i| turn(Transport::Udp, 4000 + i, timeout())).collect();
        f.turn.push(turn(Transport::Udp, 4000, timeout()));
        f.turn.push(turn(Transport::Tcp, 4000, timeout()));
        f.turn.push(turn(Transport::Udp, 5000, Some(CheckError::Refused)));
        let v = verdict(&f);
        let lines: Vec<&String> = v.causes.iter().filter(|c| c.starts_with("TURN over")).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines[0].starts_with("TURN over UDP on ports 4000, 4001, 4002, ")
                && lines[0].contains(", 4014 and 4015: no answer"),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            "TURN over TCP on port 4000: no answer — blocked on this network or not listening."
        );
        assert_eq!(
            lines[2],
            "TURN over UDP on port 5000: connection refused — nothing listens there."
        );
        // Another server's URL on the same port and transport failing alike is a line of its own, and every line
        // names its host.
        let mut other = turn(Transport::Tcp, 4000, timeout());
        other.url.host = "192.0.2.9".into();
        f.turn.push(other);
        let v = verdict(&f);
        let lines: Vec<&String> = v.causes.iter().filter(|c| c.starts_with("TURN over")).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with("TURN over UDP on 127.0.0.1 ports 4000, 4001"),
            "{}",
            lines[0]
        );
        assert!(
            lines[3].starts_with("TURN over TCP on 192.0.2.9 port 4000: no answer"),
            "{}",
            lines[3]
        );
    }

    /// A port that accepts the connection and then answers nothing is neither blocked nor closed: what listens
    /// there is named, for TURN over TCP and for signaling, and the server is not called unreachable.
    #[test]
    fn an_endpoint_that_accepts_and_never_answers_is_not_called_blocked() {
        let mut f = healthy();
        f.turn[0] = turn(Transport::Tcp, 3478, Some(CheckError::Silent(Duration::from_secs(3))));
        let cause = turn_cause(&f.turn[0]).unwrap();
        assert!(cause.contains("accepted but nothing answered TURN"), "{cause}");
        assert!(!cause.contains("blocked"), "{cause}");
        // A server that answered (the 401 challenge), then went quiet: stalled, neither silent nor blocked.
        let stalled = turn(Transport::Tcp, 3478, Some(CheckError::Stalled(Duration::from_secs(3))));
        let cause = turn_cause(&stalled).unwrap();
        assert!(cause.contains("the server answered, then nothing more"), "{cause}");
        // Over TLS, a handshake that got no answer is named as such.
        let tls = turn(Transport::Tls, 5349, Some(CheckError::Silent(Duration::from_secs(3))));
        let cause = turn_cause(&tls).unwrap();
        assert!(cause.contains("TLS handshake got no answer"), "{cause}");
        f.signaling = vec![endpoint(
            Err(CheckError::Silent(Duration::from_secs(3))),
            Err(CheckError::Silent(Duration::from_secs(3))),
        )];
        let v = verdict(&f);
        assert!(
            v.causes
                .iter()
                .any(|c| c.contains("http://127.0.0.1:8080 accepts connections but answers nothing")),
            "{:?}",
            v.causes
        );
        assert!(!v.causes.iter().any(|c| c.contains("unreachable")), "{:?}", v.causes);
        // A server that is down, and a 443 probe that something on the way accepts and holds: the server is
        // unreachable, and the probe's silence names nothing of it.
        let refused = || Err(CheckError::Refused);
        let silent = || Err(CheckError::Silent(Duration::from_secs(3)));
        let mut probe = endpoint(silent(), silent());
        probe.primary = false;
        probe.url = "https://127.0.0.1:443".into();
        f.signaling = vec![endpoint(refused(), refused()), probe];
        let v = verdict(&f);
        assert!(v.causes.iter().any(|c| c.contains("unreachable")), "{:?}", v.causes);
        assert!(
            !v.causes.iter().any(|c| c.contains("answers nothing over HTTP")),
            "{:?}",
            v.causes
        );
        // The same endpoint behind a closed port is unreachable, as before.
        f.signaling = vec![endpoint(Err(CheckError::Refused), Err(CheckError::Refused))];
        f.turn
            .iter_mut()
            .for_each(|t| *t = turn(t.transport(), t.port(), Some(CheckError::Refused)));
        let v = verdict(&f);
        assert!(v.summary.contains("unreachable"), "{}", v.summary);
    }

    /// The relay test crosses this client's link four times: 8 % lost there is about 2 % each way (fair, no
    /// cause); 30 % lost is about 8.5 % each way (bad).
    #[test]
    fn relay_quality_and_silence() {
        let mut f = healthy();
        f.relay = Some(relay(46, Some(20.0)));
        let v = verdict(&f);
        assert!(
            !v.causes.iter().any(|c| c.contains("link to the relay")),
            "{:?}",
            v.causes
        );
        assert!(!v.summary.contains("link"), "{}", v.summary);
        f.relay = Some(relay(35, Some(20.0)));
        let v = verdict(&f);
        assert!(
            v.causes
                .iter()
                .any(|c| c.contains("This network's link to the relay is bad (loss 8.5 % each way)")),
            "{:?}",
            v.causes
        );
        // The headline says it too.
        assert_eq!(
            v.summary,
            "Connections will work, some of them only through the TURN relay. But this network's link is bad (loss \
             8.5 % each way): expect choppy audio and video."
        );
        // And is not "Good" (the NAT lab's lossy site, a full cone, read "Good: direct connections are likely").
        f.nat = nat(Finding::Known(Ei), Finding::Known(Ei));
        let v = verdict(&f);
        assert_eq!(
            v.summary,
            "Direct connections are likely with every kind of peer, and the TURN relay works as a fallback. But this \
             network's link is bad (loss 8.5 % each way): expect choppy audio and video."
        );
        // A slow link: the measure that made it poor is named, not a loss of 0 %. 1 000 ms through the relay is
        // about 500 ms client ↔ server.
        f.relay = Some(relay(50, Some(1000.0)));
        let v = verdict(&f);
        assert!(
            v.causes.iter().any(|c| c
                == "This network's link to the relay is bad (round trip 500 ms): expect a delay that makes people \
                        talk over each other."),
            "{:?}",
            v.causes
        );
        assert!(v.summary.ends_with(
            "But this network's link is bad (round trip 500 ms): expect a delay that makes people talk \
                        over each other."
        ));
        // Both: each measure named, and both consequences.
        f.relay = Some(relay(35, Some(1000.0)));
        let v = verdict(&f);
        assert!(
            v.summary.ends_with(
                "But this network's link is bad (loss 8.5 % each way, round trip 500 ms): expect choppy audio and \
                 video, and a delay that makes people talk over each other."
            ),
            "{}",
            v.summary
        );
        f.relay = Some(relay(0, None));
        let v = verdict(&f);
        assert!(
            v.causes.iter().any(|c| c.contains("data did not come back")),
            "{:?}",
            v.causes
        );
    }

    /// A 443 probe nothing answered is "not offered", not a failure.
    #[test]
    fn unanswered_443_probe_is_not_offered() {
        let mut f = healthy();
        f.turn.retain(|t| t.port() != 443);
        let mut probe = turn(Transport::Tls, 443, Some(CheckError::Refused));
        probe.probe = true;
        f.turn.push(probe);
        let v = verdict(&f);
        let row = v.transports.iter().find(|t| t.key == "turn-tls-443").unwrap();
        assert_eq!((row.works, row.detail), (None, Some("not offered")));
        assert!(!v.causes.iter().any(|c| c.contains("port 443")), "{:?}", v.causes);
    }
}
