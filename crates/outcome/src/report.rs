//! One side's view of a peer connection, as the SDK sends it in an `outcome` frame (`docs/protocol.md`).
//!
//! Stranger input: every field has a type that bounds it (counts are `u16`, durations `u32`, enums are closed) and
//! every string is checked while it is deserialized (length, characters, the URL's scheme), so a [`Report`] that
//! exists is one the classifier and the store can use without further checks. No field carries an IP address: the
//! SDK sends candidate types and counts, never candidates.

use serde::{Deserialize, Deserializer};

/// At most this many `icecandidateerror`s are kept by the SDK and accepted here.
pub const MAX_ERRORS: usize = 16;
/// Longest ICE server URL accepted (`turns:turn.example.com:443?transport=tcp` is 41).
pub const MAX_URL: usize = 256;
/// Longest `icecandidateerror` text accepted (Chrome's are under 64).
pub const MAX_TEXT: usize = 128;
/// The longest `elapsedMs` taken as sent (10 minutes; the SDK's outcome timeout is 30 s by default): a longer one is
/// recorded as this.
pub const MAX_ELAPSED_MS: u32 = 600_000;

/// Why a report was refused. Every variant is the client's fault and is answered with `bad-message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not JSON, a missing field, a field of the wrong type or out of its range, an unknown enum value, or a string
    /// that failed its check (the message says which).
    #[error("the report is malformed: {0}")]
    Malformed(String),
    #[error("the report lists more than {MAX_ERRORS} candidate errors")]
    TooManyErrors,
}

/// How the peer connection ended, from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// `connectionState` reached `connected`.
    Connected,
    /// `connectionState` (or ICE) reached `failed`, after any ICE restart the SDK made.
    Failed,
    /// Neither, within the SDK's `outcomeTimeoutMs`.
    Timeout,
    /// Connected (and reported so), then broke and was not recovered: the SDK's ICE restarts gave up, or the
    /// `Peer` closed while still broken. Taken only about a pair the server diagnosed as connected.
    Dropped,
    /// Connected, then broke (the SDK announced `reconnecting`) and came back by itself: an interruption the call
    /// survived. Taken only about a pair the server diagnosed as connected.
    Recovered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Connected => "connected",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Dropped => "dropped",
            Outcome::Recovered => "recovered",
        }
    }
}

/// What broke a connected peer connection, as the SDK's recovery saw it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropCause {
    /// ICE went `disconnected` (consent checks unanswered) and did not come back within the grace period.
    IceDisconnected,
    /// ICE or the connection went `failed`.
    IceFailed,
    /// The browser's network changed (`navigator.connection`, `online`).
    NetworkChange,
    /// The browser went offline.
    NetworkOffline,
    /// The server lost the session (it restarted): its relays went with it.
    SessionLost,
    /// Signaling resumed through another node: the relay on the old one most likely went with it.
    NodeLost,
}

impl DropCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DropCause::IceDisconnected => "ice-disconnected",
            DropCause::IceFailed => "ice-failed",
            DropCause::NetworkChange => "network-change",
            DropCause::NetworkOffline => "network-offline",
            DropCause::SessionLost => "session-lost",
            DropCause::NodeLost => "node-lost",
        }
    }

    /// This side's own network changed or went away.
    pub fn is_network(self) -> bool {
        matches!(self, DropCause::NetworkChange | DropCause::NetworkOffline)
    }

    /// The server side of a relay went away.
    pub fn is_server(self) -> bool {
        matches!(self, DropCause::SessionLost | DropCause::NodeLost)
    }
}

/// `iceTransportPolicy` of the peer connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    All,
    /// Only relayed candidates: without a relay nothing can connect.
    Relay,
}

/// RFC 8445 §5.1.1 candidate types, as `RTCIceCandidateStats.candidateType` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

/// Transport of a candidate (between the peers, or from a relay to the peer: always UDP for a relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Udp,
    Tcp,
}

/// How a relay candidate's allocation reached the TURN server (`RTCIceCandidateStats.relayProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayProtocol {
    Udp,
    Tcp,
    Tls,
}

/// One side of the selected candidate pair.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(rename = "type")]
    pub candidate_type: CandidateType,
    pub protocol: Protocol,
    /// For a local relay candidate.
    #[serde(default)]
    pub relay_protocol: Option<RelayProtocol>,
    /// The STUN/TURN server URL that produced a local srflx or relay candidate.
    #[serde(default)]
    pub url: Option<IceUrl>,
}

/// The pair ICE selected, from this side: `local` is this peer's candidate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SelectedPair {
    pub local: Candidate,
    pub remote: Candidate,
}

/// Local candidates gathered, per type, and relays per the transport to the TURN server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gathered {
    pub host: u16,
    pub srflx: u16,
    pub prflx: u16,
    pub relay_udp: u16,
    pub relay_tcp: u16,
    pub relay_tls: u16,
}

impl Gathered {
    pub fn relays(&self) -> u32 {
        u32::from(self.relay_udp) + u32::from(self.relay_tcp) + u32::from(self.relay_tls)
    }
}

/// ICE server URLs the peer connection was configured with, per kind. Counts, not the URLs: enough to tell "no
/// TURN was offered" and "no TURN over TLS on 443 was offered".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Offered {
    pub stun: u16,
    /// `turn:` without `?transport` or with `?transport=udp`.
    pub turn_udp: u16,
    /// `turn:…?transport=tcp`.
    pub turn_tcp: u16,
    /// `turns:` on any port.
    pub turn_tls: u16,
    /// `turns:` on port 443, the one port almost every firewall lets out.
    pub turn_tls_443: u16,
}

impl Offered {
    pub fn turn(&self) -> u32 {
        u32::from(self.turn_udp) + u32::from(self.turn_tcp) + u32::from(self.turn_tls)
    }
}

/// One `icecandidateerror` (its `address` and `port`, this peer's own, are not sent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateError {
    /// STUN error code (300-699, RFC 8489 §14.8) or 700-799 when the server could not be reached (701).
    #[serde(deserialize_with = "error_code")]
    pub code: u16,
    #[serde(default)]
    pub url: Option<IceUrl>,
    #[serde(default)]
    pub text: Option<ErrorText>,
}

/// The browser, by family and major version (from the user agent; nothing else of it is sent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Browser {
    pub name: BrowserName,
    #[serde(default)]
    pub version: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrowserName {
    Chrome,
    Edge,
    Firefox,
    Safari,
    Other,
}

/// One side's view of a peer connection. See `docs/sdk.md` for how the SDK fills each field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub outcome: Outcome,
    /// From the peer connection's creation to `connected` (time to connect), `failed`, the timeout, or giving up
    /// on a dropped connection.
    pub elapsed_ms: u32,
    #[serde(default)]
    pub policy: Policy,
    /// Present when connected; when dropped, the pair the connection had before it broke.
    #[serde(default)]
    pub pair: Option<SelectedPair>,
    #[serde(default)]
    pub gathered: Gathered,
    #[serde(default)]
    pub offered: Offered,
    #[serde(default)]
    pub errors: Vec<CandidateError>,
    /// Candidates received from the other peer through signaling; 0 means signaling did not get that far.
    #[serde(default)]
    pub remote_candidates: u16,
    /// Whether the other peer's session description was applied (offer or answer).
    #[serde(default = "yes")]
    pub remote_description: bool,
    /// ICE restarts the SDK made.
    #[serde(default)]
    pub restarts: u16,
    #[serde(default)]
    pub browser: Option<Browser>,
    /// For `dropped` and `recovered`: how long the connection had been up when it broke.
    #[serde(default)]
    pub connected_ms: u32,
    /// For `dropped`: from the break to giving up (how long recovery tried); for `recovered`: from the break to
    /// connected again.
    #[serde(default)]
    pub broken_ms: u32,
    /// For `dropped` and `recovered`: what broke it.
    #[serde(default)]
    pub cause: Option<DropCause>,
    /// For `dropped`: the browser said it was offline when it gave up.
    #[serde(default)]
    pub offline: bool,
}

fn yes() -> bool {
    true
}

impl Report {
    /// Parses and checks the `report` object of an `outcome` frame.
    pub fn parse(json: &str) -> Result<Report, ReportError> {
        let mut report: Report = serde_json::from_str(json).map_err(|e| ReportError::Malformed(e.to_string()))?;
        if report.errors.len() > MAX_ERRORS {
            return Err(ReportError::TooManyErrors);
        }
        // One report must not skew the time-to-connect sum for good: no attempt the SDK makes lasts longer.
        report.elapsed_ms = report.elapsed_ms.min(MAX_ELAPSED_MS);
        Ok(report)
    }
}

fn error_code<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let code = u16::deserialize(d)?;
    if !(300..=799).contains(&code) {
        return Err(serde::de::Error::custom(format!(
            "candidate error code {code} is not 300-799"
        )));
    }
    Ok(code)
}

/// A STUN or TURN server URL (RFC 7064, RFC 7065): `stun:`, `stuns:`, `turn:` or `turns:`, at most [`MAX_URL`]
/// printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IceUrl(String);

impl IceUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The transport a TURN URL asks for (RFC 7065 §3): `turns:` is TLS, `?transport=tcp` TCP, else UDP; `None`
    /// for a STUN URL.
    pub fn turn_transport(&self) -> Option<RelayProtocol> {
        let (scheme, rest) = self.0.split_once(':')?;
        match scheme {
            "turns" => Some(RelayProtocol::Tls),
            "turn" if rest.contains("transport=tcp") => Some(RelayProtocol::Tcp),
            "turn" => Some(RelayProtocol::Udp),
            _ => None,
        }
    }
}

impl TryFrom<String> for IceUrl {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| s.starts_with(p));
        if !scheme_ok || s.len() > MAX_URL || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "an ICE server URL is stun:, stuns:, turn: or turns: and at most {MAX_URL} printable characters"
            ));
        }
        Ok(Self(s))
    }
}

impl<'de> Deserialize<'de> for IceUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IceUrl::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An `icecandidateerror`'s `errorText`: at most [`MAX_TEXT`] bytes, no control characters. A longer text is cut
/// (between characters) and control characters become spaces rather than the report being refused: the text is
/// advice, and a refused report would leave the pair diagnosed from the other side alone, blaming that peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorText(String);

impl ErrorText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ErrorText {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let mut text = String::with_capacity(s.len().min(MAX_TEXT));
        for c in s.chars() {
            let c = if c.is_control() { ' ' } else { c };
            if text.len() + c.len_utf8() > MAX_TEXT {
                break;
            }
            text.push(c);
        }
        Ok(Self(text))
    }
}

impl<'de> Deserialize<'de> for ErrorText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ErrorText::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_report_parses() {
        let r = Report::parse(
            r#"{"outcome":"connected","elapsedMs":812,"policy":"all",
                "pair":{"local":{"type":"relay","protocol":"udp","relayProtocol":"tls",
                                 "url":"turns:turn.example.com:443?transport=tcp"},
                        "remote":{"type":"srflx","protocol":"udp"}},
                "gathered":{"host":2,"srflx":1,"relayUdp":1,"relayTls":1},
                "offered":{"stun":1,"turnUdp":1,"turnTcp":1,"turnTls":1,"turnTls443":1},
                "errors":[{"code":701,"url":"turn:turn.example.com:3478?transport=udp","text":"timed out"}],
                "remoteCandidates":4,"restarts":0,"browser":{"name":"chrome","version":131},"future":1}"#,
        )
        .unwrap();
        assert_eq!(r.outcome, Outcome::Connected);
        assert_eq!(r.gathered.relays(), 2);
        let url = r.pair.unwrap().local.url.unwrap();
        assert_eq!(url.turn_transport(), Some(RelayProtocol::Tls));
        assert_eq!(
            r.errors[0].url.as_ref().unwrap().turn_transport(),
            Some(RelayProtocol::Udp)
        );
    }

    #[test]
    fn every_bound_is_checked() {
        let base = |extra: &str| format!(r#"{{"outcome":"failed","elapsedMs":1{extra}}}"#);
        assert!(Report::parse(&base("")).is_ok());
        for bad in [
            r#","outcome2":1,"elapsedMs":-1"#,
            r#","gathered":{"host":70000}"#,
            r#","errors":[{"code":200}]"#,
            r#","errors":[{"code":701,"url":"http://x"}]"#,
            r#","errors":[{"code":701,"url":"turn:a b"}]"#,
            r#","browser":{"name":"netscape"}"#,
            r#","policy":"none""#,
        ] {
            assert!(
                matches!(Report::parse(&base(bad)), Err(ReportError::Malformed(_))),
                "{bad}"
            );
        }
        let long = format!(r#","errors":[{{"code":701,"url":"turn:{}"}}]"#, "a".repeat(MAX_URL));
        assert!(Report::parse(&base(&long)).is_err());
        let many = format!(r#","errors":[{}]"#, vec![r#"{"code":701}"#; MAX_ERRORS + 1].join(","));
        assert_eq!(Report::parse(&base(&many)), Err(ReportError::TooManyErrors));
        assert!(
            Report::parse(r#"{"outcome":"connected"}"#).is_err(),
            "elapsedMs is required"
        );
    }

    #[test]
    fn advice_is_cleaned_and_cut_rather_than_the_report_refused() {
        let long = "é".repeat(100);
        let json = format!(
            r#"{{"outcome":"failed","elapsedMs":4294967295,"errors":[{{"code":701,"text":"a\nb\u0085c"}},{{"code":702,"text":"{long}"}}]}}"#
        );
        let r = Report::parse(&json).expect("kept");
        assert_eq!(r.errors[0].text.as_ref().unwrap().as_str(), "a b c");
        let cut = r.errors[1].text.as_ref().unwrap().as_str();
        assert_eq!(
            cut,
            "é".repeat(MAX_TEXT / 2),
            "cut between characters, within {MAX_TEXT} bytes"
        );
        assert_eq!(
            r.elapsed_ms, MAX_ELAPSED_MS,
            "one report cannot skew the time to connect for good"
        );
    }
}
