//! The report, built last from the typed [`Facts`] and the [`Verdict`] decided from them: serialised as-is for
//! `--json` (field names are stable, see docs/doctor.md) and rendered as text for people. Nothing here feeds back
//! into the verdict.

use std::time::Duration;

use serde::Serialize;

use crate::error::CheckError;
use crate::facts::{
    Facts, IceServersFact, Ipv6Fact, NatFact, RelayFact, SignalingFact, StunFact, ThroughputFact, Timed, TurnFact,
};
use crate::ice::{IceUrl, Transport};
use crate::nat::{Behavior, Classification, Finding, NatPresence};
use crate::quality::{Grades, LinkEstimate};
use crate::tls::CertInfo;
use crate::verdict::{Chance, Verdict};

/// Schema version of the JSON report.
pub const SCHEMA_VERSION: u32 = 1;

/// How one check ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// Wall time of the check, milliseconds.
    pub ms: u64,
    /// A stable code for the failure (`timeout`, `refused`, `auth-rejected`, `stale-nonce`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// The failure in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Milliseconds, for JSON.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Outcome {
    pub fn of<T>(step: &Timed<T>) -> Outcome {
        match &step.result {
            Ok(_) => Outcome {
                ok: true,
                ms: ms(step.took),
                error_code: None,
                error: None,
            },
            Err(e) => Outcome::failed(e, ms(step.took)),
        }
    }

    fn failed(e: &CheckError, ms: u64) -> Outcome {
        Outcome {
            ok: false,
            ms,
            error_code: Some(e.code()),
            error: Some(e.to_string()),
        }
    }
}

/// One signaling endpoint: HTTP(S) `/healthz` and the WS(S) upgrade of `/ws`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SignalingCheck {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    pub port: u16,
    pub tls: bool,
    /// The given server address (as opposed to a probe of 443/80).
    pub primary: bool,
    pub http: Outcome,
    pub websocket: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertInfo>,
}

impl SignalingCheck {
    pub fn ok(&self) -> bool {
        self.http.ok && self.websocket.ok
    }
}

impl From<&SignalingFact> for SignalingCheck {
    fn from(f: &SignalingFact) -> Self {
        SignalingCheck {
            url: f.url.clone(),
            port: f.port,
            tls: f.tls,
            primary: f.primary,
            http: Outcome::of(&f.http),
            websocket: Outcome::of(&f.websocket),
            certificate: f.certificate.clone(),
        }
    }
}

/// Where the STUN/TURN addresses came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IceServersCheck {
    /// `server` (fetched from /api/ice-servers), `flags`, or `none`.
    pub source: &'static str,
    pub fetch: Option<Outcome>,
    pub stun: Vec<String>,
    pub turn: Vec<String>,
    pub has_credential: bool,
    /// URLs that did not parse (as given, cut to one line).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unparsed: Vec<String>,
    /// URLs past the first 16 STUN and 16 TURN: not checked.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_checked: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl From<&IceServersFact> for IceServersCheck {
    fn from(f: &IceServersFact) -> Self {
        IceServersCheck {
            source: f.source.word(),
            fetch: f.fetch.as_ref().map(Outcome::of),
            stun: f.stun.iter().map(IceUrl::label).collect(),
            turn: f.turn.iter().map(IceUrl::label).collect(),
            has_credential: f.has_credential,
            unparsed: f.unparsed.clone(),
            not_checked: f.not_checked,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StunCheck {
    pub url: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped: Option<String>,
    /// Round-trip time of the Binding transaction, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The server announced an OTHER-ADDRESS (RFC 5780).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_address: Option<String>,
}

impl From<&StunFact> for StunCheck {
    fn from(f: &StunFact) -> Self {
        let binding = f.binding.result.as_ref().ok();
        StunCheck {
            url: f.url.label(),
            outcome: Outcome::of(&f.binding),
            server: f.server.map(|a| a.to_string()),
            local: binding.map(|b| b.local.to_string()),
            mapped: binding.map(|b| b.mapped.to_string()),
            rtt_ms: binding.map(|b| b.rtt.as_secs_f64() * 1e3),
            other_address: binding.and_then(|b| b.other_address).map(|a| a.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnCheck {
    pub url: String,
    pub transport: Transport,
    pub port: u16,
    /// Added by the doctor (TURN over TLS on 443, the single port), not announced by the server.
    pub probe: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relayed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertInfo>,
}

impl From<&TurnFact> for TurnCheck {
    fn from(f: &TurnFact) -> Self {
        let allocation = f.allocation.result.as_ref().ok();
        TurnCheck {
            url: f.url.label(),
            transport: f.url.transport,
            port: f.url.port,
            probe: f.probe,
            outcome: Outcome::of(&f.allocation),
            relayed: allocation.map(|a| a.relayed.to_string()),
            mapped: allocation.and_then(|a| a.mapped).map(|m| m.to_string()),
            lifetime_s: allocation.and_then(|a| a.lifetime),
            certificate: f.certificate.clone(),
        }
    }
}

/// One RFC 4787 finding in JSON: `result` is a behaviour, `inconclusive` or `not-tested`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FindingJson {
    pub result: &'static str,
    pub candidates: Vec<Behavior>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Finding> for FindingJson {
    fn from(f: &Finding) -> Self {
        match f {
            Finding::Known(b) => FindingJson {
                result: f.result_word(),
                candidates: vec![*b],
                reason: None,
            },
            Finding::OneOf(list) => FindingJson {
                result: f.result_word(),
                candidates: list.clone(),
                reason: Some(format!(
                    "could be {}",
                    list.iter().map(|b| b.term()).collect::<Vec<_>>().join(" or ")
                )),
            },
            Finding::Inconclusive(why) => FindingJson {
                result: f.result_word(),
                candidates: Behavior::ALL.to_vec(),
                reason: Some(why.clone()),
            },
            Finding::NotTested => FindingJson {
                result: f.result_word(),
                candidates: Behavior::ALL.to_vec(),
                reason: None,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NatCheck {
    /// `rfc5780` (OTHER-ADDRESS and CHANGE-REQUEST), `comparison` (several server addresses and the relay), `none`.
    pub method: &'static str,
    pub nat: NatPresence,
    pub mapping: FindingJson,
    pub filtering: FindingJson,
    pub port_preservation: Option<bool>,
    pub hairpin: Option<bool>,
    pub notes: Vec<String>,
    /// What the probes saw, for the curious.
    pub probes: Vec<String>,
    /// For the text rendering.
    #[serde(skip)]
    pub classification: Option<Classification>,
}

impl From<Option<&NatFact>> for NatCheck {
    fn from(f: Option<&NatFact>) -> Self {
        let Some(f) = f else {
            return NatCheck {
                method: "none",
                nat: NatPresence::Unknown,
                mapping: FindingJson::from(&Finding::NotTested),
                filtering: FindingJson::from(&Finding::NotTested),
                port_preservation: None,
                hairpin: None,
                notes: vec!["no STUN server over UDP to probe with".into()],
                probes: Vec::new(),
                classification: None,
            };
        };
        let c = &f.classification;
        NatCheck {
            method: f.method.word(),
            nat: c.nat,
            mapping: FindingJson::from(&c.mapping),
            filtering: FindingJson::from(&c.filtering),
            port_preservation: c.port_preservation,
            hairpin: c.hairpin,
            notes: c.notes.clone(),
            probes: f.probes.clone(),
            classification: Some(c.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ipv6Check {
    pub host_has_global: bool,
    pub addresses: Vec<String>,
    pub server_has_ipv6: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stun: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped: Option<String>,
}

impl From<&Ipv6Fact> for Ipv6Check {
    fn from(f: &Ipv6Fact) -> Self {
        Ipv6Check {
            host_has_global: !f.addresses.is_empty(),
            addresses: f.addresses.iter().map(ToString::to_string).collect(),
            server_has_ipv6: f.server_has_ipv6,
            stun: f.stun.as_ref().map(Outcome::of),
            mapped: f
                .stun
                .as_ref()
                .and_then(|t| t.result.as_ref().ok())
                .map(ToString::to_string),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelayCheck {
    pub transport: Transport,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub sent: u32,
    pub received: u32,
    pub loss_percent: f64,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p95_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// The measurements brought down to this client's link, which `quality` grades: both test allocations sit
    /// behind the client, so a packet crosses its link four times (see `quality::LinkEstimate`).
    pub link: Option<LinkEstimate>,
    pub quality: Option<Grades>,
}

impl From<&RelayFact> for RelayCheck {
    fn from(f: &RelayFact) -> Self {
        RelayCheck {
            transport: f.transport,
            outcome: Outcome::of(&f.outcome),
            sent: f.sent,
            received: f.received,
            loss_percent: f.loss_percent,
            rtt_p50_ms: f.rtt.p50,
            rtt_p95_ms: f.rtt.p95,
            rtt_max_ms: f.rtt.max,
            jitter_ms: f.rtt.jitter,
            link: f.link(),
            quality: f.quality(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThroughputCheck {
    #[serde(flatten)]
    pub outcome: Outcome,
    pub seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub mbit_per_s: f64,
    pub loss_percent: f64,
}

impl From<&ThroughputFact> for ThroughputCheck {
    fn from(f: &ThroughputFact) -> Self {
        ThroughputCheck {
            outcome: Outcome::of(&f.outcome),
            seconds: f.seconds,
            bytes_sent: f.bytes_sent,
            bytes_received: f.bytes_received,
            mbit_per_s: f.mbit_per_s,
            loss_percent: f.loss_percent,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub schema: u32,
    pub server: String,
    /// The HTTP proxy every TCP connection went through (`--proxy`, `HTTPS_PROXY`); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    pub exit_code: i32,
    pub signaling: Vec<SignalingCheck>,
    pub ice_servers: IceServersCheck,
    pub stun: Vec<StunCheck>,
    pub turn: Vec<TurnCheck>,
    pub nat: NatCheck,
    pub ipv6: Ipv6Check,
    pub relay: Option<RelayCheck>,
    pub throughput: Option<ThroughputCheck>,
    pub verdict: Verdict,
}

/// Colours when writing to a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    pub fn ok(self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn bad(self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn warn(self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
}

fn mark(style: Style, ok: bool) -> String {
    if ok {
        style.ok("✓")
    } else {
        style.bad("✗")
    }
}

fn finding_words(f: &Finding) -> String {
    match f {
        Finding::Known(b) => b.term().to_owned(),
        Finding::OneOf(list) => format!(
            "inconclusive ({})",
            list.iter().map(|b| b.term()).collect::<Vec<_>>().join(" or ")
        ),
        Finding::Inconclusive(why) => format!("inconclusive: {why}"),
        Finding::NotTested => "not tested".to_owned(),
    }
}

impl Report {
    /// The report of `facts`, with the verdict decided from them.
    pub fn new(facts: &Facts, verdict: Verdict) -> Report {
        Report {
            schema: SCHEMA_VERSION,
            server: facts.server.clone(),
            proxy: facts.proxy.clone(),
            exit_code: if verdict.something_works { 0 } else { 2 },
            signaling: facts.signaling.iter().map(SignalingCheck::from).collect(),
            ice_servers: IceServersCheck::from(&facts.ice_servers),
            stun: facts.stun.iter().map(StunCheck::from).collect(),
            turn: facts.turn.iter().map(TurnCheck::from).collect(),
            nat: NatCheck::from(facts.nat.as_ref()),
            ipv6: Ipv6Check::from(&facts.ipv6),
            relay: facts.relay.as_ref().map(RelayCheck::from),
            throughput: facts.throughput.as_ref().map(ThroughputCheck::from),
            verdict,
        }
    }

    /// The report for people.
    pub fn render(&self, style: Style) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let through = self
            .proxy
            .as_ref()
            .map(|p| format!(" (through the HTTP proxy {p})"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "{}",
            style.bold(&format!("traverse doctor — {}{through}", self.server))
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "{}", style.bold("Verdict"));
        let _ = writeln!(o, "  {}", self.verdict.summary);
        for cause in &self.verdict.causes {
            let _ = writeln!(o, "  • {cause}");
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "{}", style.bold("Transports from this network"));
        for t in &self.verdict.transports {
            let state = match (t.works, t.detail) {
                (Some(true), _) => style.ok("works"),
                (Some(false), _) => style.bad("fails"),
                (None, Some(detail)) => style.warn(detail),
                (None, None) => style.warn("not tested"),
            };
            let _ = writeln!(o, "  {:<34} {state}", t.name);
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{}",
            style.bold("Direct (peer-to-peer) connection with a peer behind…")
        );
        for row in &self.verdict.direct {
            let chance = match row.chance {
                Chance::Likely => style.ok("likely"),
                Chance::Unlikely => style.bad("unlikely — needs TURN"),
                Chance::Uncertain => style.warn("uncertain"),
            };
            let _ = writeln!(o, "  {:<54} {chance}", row.peer);
            let _ = writeln!(o, "      {}", row.term);
        }
        if !self.verdict.advice.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "{}", style.bold("What to do"));
            for a in &self.verdict.advice {
                let _ = writeln!(o, "  → {a}");
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "{}", style.bold("Details"));
        for s in &self.signaling {
            let _ = writeln!(
                o,
                "  {} signaling {:<28} HTTP {} WebSocket {}{}",
                mark(style, s.ok()),
                s.url,
                outcome_words(&s.http),
                outcome_words(&s.websocket),
                s.certificate.as_ref().map(cert_words).unwrap_or_default()
            );
        }
        let ice = &self.ice_servers;
        let _ = writeln!(
            o,
            "  {} ice servers from {}: {} STUN, {} TURN URL(s){}",
            // Nothing fetched (signaling failed first): neither a success nor a failure of its own.
            match &ice.fetch {
                None if ice.stun.is_empty() && ice.turn.is_empty() => "•".to_owned(),
                fetch => mark(style, fetch.as_ref().is_none_or(|f| f.ok)),
            },
            ice.source,
            ice.stun.len(),
            ice.turn.len(),
            match &ice.fetch {
                Some(f) if !f.ok => format!(" — {}", f.error.clone().unwrap_or_default()),
                _ => String::new(),
            }
        );
        for u in &ice.unparsed {
            let _ = writeln!(o, "    a URL that does not parse: {u}");
        }
        if ice.not_checked > 0 {
            let _ = writeln!(
                o,
                "    {} more URL(s) not checked: the first {} STUN and {} TURN are checked",
                ice.not_checked,
                crate::ice::MAX_URLS,
                crate::ice::MAX_URLS
            );
        }
        for s in &self.stun {
            let _ = writeln!(
                o,
                "  {} STUN {:<40} {}",
                mark(style, s.outcome.ok),
                s.url,
                if s.outcome.ok {
                    format!(
                        "you are {} ({:.1} ms)",
                        s.mapped.clone().unwrap_or_default(),
                        s.rtt_ms.unwrap_or_default()
                    )
                } else {
                    s.outcome.error.clone().unwrap_or_default()
                }
            );
        }
        for t in &self.turn {
            let _ = writeln!(
                o,
                "  {} TURN {:<40} {}{}",
                mark(style, t.outcome.ok),
                t.url,
                if t.outcome.ok {
                    format!("relay {} ({} ms)", t.relayed.clone().unwrap_or_default(), t.outcome.ms)
                } else {
                    t.outcome.error.clone().unwrap_or_default()
                },
                t.certificate.as_ref().map(cert_words).unwrap_or_default()
            );
        }
        if let Some(c) = &self.nat.classification {
            let nat = match c.nat {
                NatPresence::None => "no NAT (the server sees your own address)",
                NatPresence::Present => "behind a NAT",
                NatPresence::Unknown => "unknown",
            };
            let _ = writeln!(o, "  • NAT: {nat}; method {}", self.nat.method);
            let _ = writeln!(o, "    mapping:   {}", finding_words(&c.mapping));
            let _ = writeln!(o, "    filtering: {}", finding_words(&c.filtering));
            if let Some(pp) = c.port_preservation {
                let _ = writeln!(o, "    port preservation: {}", if pp { "yes" } else { "no" });
            }
            if let Some(h) = c.hairpin {
                let _ = writeln!(o, "    hairpinning: {}", if h { "yes" } else { "no" });
            }
            for n in &c.notes {
                let _ = writeln!(o, "    note: {n}");
            }
        }
        let v6 = &self.ipv6;
        let _ = writeln!(
            o,
            "  • IPv6: this host {} global IPv6 address; the server {}{}",
            if v6.host_has_global { "has a" } else { "has no" },
            if v6.server_has_ipv6 { "has one" } else { "has none" },
            match (&v6.stun, &v6.mapped) {
                (Some(s), Some(m)) if s.ok => format!("; STUN over IPv6 works (you are {m})"),
                (Some(s), _) if !s.ok => format!("; STUN over IPv6 fails: {}", s.error.clone().unwrap_or_default()),
                _ => String::new(),
            }
        );
        if let Some(r) = &self.relay {
            if r.outcome.ok {
                let q = r.quality.as_ref().map(|q| q.overall.word()).unwrap_or("?");
                let _ = writeln!(
                    o,
                    "  {} relay round trip over {}: {}/{} back, loss {:.1} %, RTT p50 {:.1} ms, jitter {:.1} ms",
                    mark(style, true),
                    r.transport.word(),
                    r.received,
                    r.sent,
                    r.loss_percent,
                    r.rtt_p50_ms.unwrap_or_default(),
                    r.jitter_ms.unwrap_or_default(),
                );
                if let Some(l) = &r.link {
                    let _ = writeln!(
                        o,
                        "    your link (the test crosses it four times): RTT {:.1} ms, jitter {:.1} ms, loss {:.1} % \
                         each way — {q}",
                        l.rtt_ms, l.jitter_ms, l.loss_percent
                    );
                }
            } else {
                let _ = writeln!(
                    o,
                    "  {} relay round trip: {}",
                    mark(style, false),
                    r.outcome.error.clone().unwrap_or_default()
                );
            }
        }
        if let Some(t) = &self.throughput {
            let _ = writeln!(
                o,
                "  {} throughput through the relay: {:.1} Mbit/s, loss {:.1} %",
                mark(style, t.outcome.ok),
                t.mbit_per_s,
                t.loss_percent
            );
        }
        o
    }
}

fn outcome_words(o: &Outcome) -> String {
    if o.ok {
        format!("ok ({} ms)", o.ms)
    } else {
        o.error.clone().unwrap_or_else(|| "failed".into())
    }
}

fn cert_words(c: &CertInfo) -> String {
    let days = c
        .days_to_expiry
        .map(|d| match d {
            d if d < 0 => format!(", expired {} days ago", -d),
            d => format!(", expires in {d} days"),
        })
        .unwrap_or_default();
    if c.trusted {
        format!(" [certificate trusted{days}]")
    } else if c.self_signed {
        format!(" [certificate self-signed{days}]")
    } else {
        format!(
            " [certificate not trusted: {}{days}]",
            c.problem.clone().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Timed;

    /// The JSON is a public format (docs/doctor.md): the report of a server that refuses everything, byte for byte
    /// as `traverse doctor http://127.0.0.1:28999 --json --https-port 0 --http-port 0` printed it before the report
    /// was built from typed facts (testdata/unreachable.json), and the same in words.
    #[test]
    fn unreachable_server_report_is_unchanged() {
        let refused = Timed::new(Err(CheckError::Refused), Duration::ZERO);
        let facts = Facts {
            server: "http://127.0.0.1:28999".into(),
            signaling: vec![SignalingFact {
                url: "http://127.0.0.1:28999".into(),
                port: 28999,
                tls: false,
                primary: true,
                http: refused.clone(),
                websocket: refused,
                certificate: None,
            }],
            ..Facts::default()
        };
        let report = Report::new(&facts, crate::verdict::verdict(&facts));
        let json = serde_json::to_string_pretty(&report).unwrap() + "\n";
        assert_eq!(json, include_str!("testdata/unreachable.json"));
        assert_eq!(
            report.render(Style { color: false }),
            include_str!("testdata/unreachable.txt")
        );
    }
}
