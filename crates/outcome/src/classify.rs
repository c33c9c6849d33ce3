//! The post-mortem: both sides' reports in, one [`Diagnosis`] out — the outcome, the path a connected pair took, and
//! for a failure the [`Reason`] in the words of the three steps a connection goes through:
//!
//! 1. **signaling** — the two peers exchange their session descriptions and candidates through Traverse;
//! 2. **discovery** — each peer gathers candidates: its own addresses (host), its address as a STUN server sees it
//!    (srflx), and an address on a TURN server's relay (relay, over UDP, TCP or TLS);
//! 3. **connection** — ICE tries pairs of the two peers' candidates until one answers.
//!
//! The rules are checked in a fixed order, the most specific cause first (a refused TURN credential explains a
//! failure better than "no relay"); each is a case of the table in `tests/classify.rs`. Sans-IO: no clock, no
//! I/O, the same reports always give the same diagnosis.

use crate::report::{CandidateType, DropCause, Outcome, Policy, RelayProtocol, Report};

/// The step a [`Reason`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Signaling,
    Discovery,
    Connection,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Signaling => "signaling",
            Step::Discovery => "discovery",
            Step::Connection => "connection",
        }
    }
}

/// Why a pair ended the way it did. [`Reason::code`] is stable (the SDK's `connection-failed` event, metrics labels,
/// the dashboard); the sentence is for people and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not a failure.
    Connected,
    /// Only one side reported before the deadline: the other peer's tab closed, its signaling was lost, or it runs
    /// with reports off.
    PeerUnreported,
    /// A peer never applied the other's session description.
    SignalingIncomplete,
    /// A TURN server refused a peer's credential (401), so it gathered no relay.
    TurnAuthFailed,
    /// A peer allows only relayed candidates and could not allocate any relay.
    RelayOnlyUnreachable,
    /// A peer's TURN requests over UDP got no answer and no TURN over TLS on 443 was offered.
    TurnUdpBlockedNoTls,
    /// Neither peer had a relay, no TURN server was offered, and the direct pairs between the two NATs' mapped
    /// addresses failed: NATs that map per destination (symmetric), in practice.
    SymmetricNatNoRelay,
    /// Neither peer had a relay, no TURN server was offered, and a peer got no mapped address either: UDP (or STUN)
    /// is blocked on its network, and only a relay over TCP or TLS would have connected it.
    NoTurnOffered,
    /// Neither peer had a relay (TURN was offered, no refusal or timeout explains it) and a direct path failed.
    RelayNotGathered,
    /// Both peers gathered a relay and still no pair worked: the relay's ports are blocked on the way.
    RelayPortsBlocked,
    /// No side failed, but no side connected within its timeout either.
    Timeout,
    Unknown,
    /// A connected call dropped: the other peer's signaling dropped too (its network went away), and its report
    /// never came.
    PeerLost,
    /// A connected call broke, and the other peer left the room before it was recovered.
    PeerLeft,
    /// A connected call dropped after a peer's network changed or went offline, and no new path was found.
    NetworkChanged,
    /// A relayed call dropped: the relay stopped answering (or its server lost the session) and no new relay
    /// could be allocated.
    RelayLost,
    /// A connected call's path stopped working and the ICE restarts found no new one.
    PathLost,
    /// A connected call broke and came back by itself (not a failure: an interruption it survived).
    Recovered,
}

impl Reason {
    /// Every reason, in the order the classifier checks them (for docs and tests).
    pub const ALL: [Reason; 18] = [
        Reason::Connected,
        Reason::SignalingIncomplete,
        Reason::PeerUnreported,
        Reason::TurnAuthFailed,
        Reason::RelayOnlyUnreachable,
        Reason::TurnUdpBlockedNoTls,
        Reason::SymmetricNatNoRelay,
        Reason::NoTurnOffered,
        Reason::RelayNotGathered,
        Reason::RelayPortsBlocked,
        Reason::Timeout,
        Reason::Unknown,
        Reason::PeerLost,
        Reason::PeerLeft,
        Reason::NetworkChanged,
        Reason::RelayLost,
        Reason::PathLost,
        Reason::Recovered,
    ];

    /// The reasons a connected call drops for.
    pub const DROPS: [Reason; 5] = [
        Reason::PeerLost,
        Reason::PeerLeft,
        Reason::NetworkChanged,
        Reason::RelayLost,
        Reason::PathLost,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Connected => "connected",
            Reason::PeerUnreported => "peer-unreported",
            Reason::SignalingIncomplete => "signaling-incomplete",
            Reason::TurnAuthFailed => "turn-auth-failed",
            Reason::RelayOnlyUnreachable => "relay-only-unreachable",
            Reason::TurnUdpBlockedNoTls => "turn-udp-blocked-no-tls",
            Reason::SymmetricNatNoRelay => "symmetric-nat-no-relay",
            Reason::NoTurnOffered => "no-turn-offered",
            Reason::RelayNotGathered => "relay-not-gathered",
            Reason::RelayPortsBlocked => "relay-ports-blocked",
            Reason::Timeout => "timeout",
            Reason::Unknown => "unknown",
            Reason::PeerLost => "peer-lost",
            Reason::PeerLeft => "peer-left",
            Reason::NetworkChanged => "network-changed",
            Reason::RelayLost => "relay-lost",
            Reason::PathLost => "path-lost",
            Reason::Recovered => "recovered",
        }
    }

    pub fn step(self) -> Step {
        match self {
            Reason::PeerUnreported | Reason::SignalingIncomplete => Step::Signaling,
            Reason::TurnAuthFailed
            | Reason::RelayOnlyUnreachable
            | Reason::TurnUdpBlockedNoTls
            | Reason::NoTurnOffered
            | Reason::RelayNotGathered => Step::Discovery,
            Reason::Connected
            | Reason::SymmetricNatNoRelay
            | Reason::RelayPortsBlocked
            | Reason::Timeout
            | Reason::Unknown
            | Reason::PeerLost
            | Reason::PeerLeft
            | Reason::NetworkChanged
            | Reason::RelayLost
            | Reason::PathLost
            | Reason::Recovered => Step::Connection,
        }
    }

    /// The reason in general terms (docs/operations.md lists these); a diagnosis' message names the peer and the
    /// transport.
    pub fn summary(self) -> &'static str {
        match self {
            Reason::Connected => "The peers connected.",
            Reason::PeerUnreported => {
                "Only one peer reported: the other peer's tab closed or its signaling was lost before the connection \
                 was decided (or it runs with reports off)."
            }
            Reason::SignalingIncomplete => {
                "Signaling did not complete: a peer never applied the other's offer or answer."
            }
            Reason::TurnAuthFailed => {
                "A peer could not allocate a relay because the TURN server refused its credential (401)."
            }
            Reason::RelayOnlyUnreachable => {
                "A peer allows only relayed connections and could not allocate a relay on any TURN server."
            }
            Reason::TurnUdpBlockedNoTls => {
                "A peer could not allocate a relay: its TURN requests over UDP timed out and no TURN over TLS on 443 \
                 was offered."
            }
            Reason::SymmetricNatNoRelay => {
                "Both peers are behind NATs that change port per destination (symmetric) and neither could allocate \
                 a relay: no TURN server was offered."
            }
            Reason::NoTurnOffered => {
                "No direct path worked and no TURN server was offered; a peer got no public address over UDP: UDP or \
                 STUN is blocked on its network."
            }
            Reason::RelayNotGathered => "Neither peer could allocate a relay and no direct path worked.",
            Reason::RelayPortsBlocked => {
                "Both peers allocated a relay, yet no candidate pair worked: a firewall probably blocks the relay's \
                 ports."
            }
            Reason::Timeout => "Neither peer connected nor failed within the timeout: ICE was still checking.",
            Reason::Unknown => "The reports do not explain the failure.",
            Reason::PeerLost => {
                "The call dropped: the other peer lost its network (its signaling connection dropped at the same \
                 time)."
            }
            Reason::PeerLeft => "The call broke, and the other peer left the room before it was recovered.",
            Reason::NetworkChanged => {
                "The call dropped after a peer's network changed or went offline, and no new path was found."
            }
            Reason::RelayLost => {
                "The call went through a TURN relay that stopped answering, and no new relay could be allocated."
            }
            Reason::PathLost => "The call's path stopped working and the ICE restarts found no new one.",
            Reason::Recovered => "The call broke and recovered by itself.",
        }
    }

    /// What to do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Reason::Connected => "Nothing to do.",
            Reason::PeerUnreported => "Ask the other user to keep the page open, or check its signaling connection.",
            Reason::SignalingIncomplete => {
                "Check that both pages stay in the room until they connect and that no message is lost \
                 (`undeliverable` events)."
            }
            Reason::TurnAuthFailed => {
                "Check that the app and the server share the same TURN secret, that credentials have not expired, \
                 and that the server's clock is right."
            }
            Reason::RelayOnlyUnreachable => {
                "Offer TURN over TLS on port 443 (the single port), or allow all candidate types."
            }
            Reason::TurnUdpBlockedNoTls => {
                "Offer TURN over TLS on port 443 (enable the single port), which passes firewalls that block UDP."
            }
            Reason::SymmetricNatNoRelay => "Offer a TURN server: only a relay connects two symmetric NATs.",
            Reason::NoTurnOffered => {
                "Offer a TURN server, with TURN over TLS on port 443 (the single port) for networks that block UDP."
            }
            Reason::RelayNotGathered => {
                "Check that the TURN server is reachable from the peers' networks (run `traverse doctor` or /check \
                 from there)."
            }
            Reason::RelayPortsBlocked => {
                "Open the relay port range on the server's firewall (UDP), and check that the relay's public \
                 address is the one the server advertises."
            }
            Reason::Timeout => "Check the network from both sides with /check; a relay over TLS on 443 may help.",
            Reason::Unknown => "Run /check from both networks and compare.",
            Reason::PeerLost => {
                "Nothing to do on the server: the SDK reconnects once the network is back. Many of these point to \
                 unstable networks (mobile handovers, Wi-Fi roaming)."
            }
            Reason::PeerLeft => "Nothing to do, unless users leave because calls break often (see path-lost).",
            Reason::NetworkChanged => {
                "Offer TURN over TLS on port 443 (the single port), so that a new network always has a path; run \
                 /check from the network the peer moved to."
            }
            Reason::RelayLost => {
                "Check the TURN server's logs and load at that time (`traverse_turn_allocations`, restarts); with a \
                 cluster, a restart reaches another node's relay."
            }
            Reason::PathLost => {
                "Offer a TURN server (over TLS on 443): a relayed path survives the NAT and firewall timeouts that \
                 break a direct one. Keep the SDK's ICE restarts on (`recovery`)."
            }
            Reason::Recovered => {
                "Nothing to do; many of these (`traverse_connection_recoveries_total` by cause) point to unstable \
                 networks, where a relay over TLS on 443 survives best."
            }
        }
    }
}

/// The path a connected pair took: direct (by the best candidate type involved) or through a relay (by how the
/// relay was reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    DirectHost,
    DirectSrflx,
    DirectPrflx,
    RelayUdp,
    RelayTcp,
    RelayTls,
    /// A relay on the side that did not report: its transport is unknown.
    Relay,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::DirectHost => "direct-host",
            Path::DirectSrflx => "direct-srflx",
            Path::DirectPrflx => "direct-prflx",
            Path::RelayUdp => "relay-udp",
            Path::RelayTcp => "relay-tcp",
            Path::RelayTls => "relay-tls",
            Path::Relay => "relay",
        }
    }

    pub fn is_relay(self) -> bool {
        matches!(self, Path::RelayUdp | Path::RelayTcp | Path::RelayTls | Path::Relay)
    }
}

/// What the server concluded about one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The room the reports came from; empty from [`classify`] (which sees only reports), set by the hub.
    pub room: String,
    /// Peer ids, A (the first report) then B; empty from [`classify`], set by the hub.
    pub peers: [String; 2],
    /// `Dropped` if either side reported a drop; else `Connected` if either side connected; `Failed` if either
    /// failed; else `Timeout`.
    pub outcome: Outcome,
    pub reason: Reason,
    /// The sentence for people: the reason with the peer and transport named, then the advice.
    pub message: String,
    /// For a connected pair; for a dropped one, the path it had before it broke.
    pub path: Option<Path>,
    /// For a connected pair: the later of the two sides' times to connect (when both could use it).
    pub time_to_connect_ms: Option<u32>,
    /// For a dropped or recovered pair: how long it had been connected when it broke (the longer side's view).
    pub connected_ms: Option<u32>,
    /// For a dropped or recovered pair: what broke it, as the first side that named a cause saw it.
    pub cause: Option<DropCause>,
    /// For a recovered pair: from the break to connected again (the longer side's view).
    pub recovery_ms: Option<u32>,
    /// 1 or 2.
    pub reports: u8,
}

impl Diagnosis {
    /// The same diagnosis, placed in its room between its peers.
    pub fn between(mut self, room: &str, a: &str, b: &str) -> Self {
        self.room = room.to_owned();
        self.peers = [a.to_owned(), b.to_owned()];
        self
    }

    /// Never connected (failed or timed out); a dropped pair had connected.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed | Outcome::Timeout)
    }

    pub fn dropped(&self) -> bool {
        self.outcome == Outcome::Dropped
    }

    pub fn recovered(&self) -> bool {
        self.outcome == Outcome::Recovered
    }
}

/// What the server knows of a peer that did not report about its pair (when the pair is decided on one report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// Still in the room, its signaling up.
    Present,
    /// Still in the room, but its signaling socket dropped (within the resume grace).
    Disconnected,
    /// Its socket dropped and it did not come back within the resume grace: it left the room lost.
    Lost,
    /// It said `leave`.
    Left,
}

/// Decides a pair on A's report alone, with what the server knows of B: for a dropped call, B's signaling lost as
/// well (its network went away) or B's leaving explains the drop better than A's view of the path.
pub fn classify_one(a: &Report, b: Absent) -> Diagnosis {
    let d = classify(a, None);
    if !d.dropped() {
        return d;
    }
    let (reason, message) = match b {
        Absent::Present => return d,
        Absent::Disconnected => (
            Reason::PeerLost,
            "The call dropped: peer B lost its network — its signaling connection dropped at the same time.",
        ),
        Absent::Lost => (
            Reason::PeerLost,
            "The call dropped: peer B lost its network — its signaling connection dropped too, and did not come \
             back within the resume grace.",
        ),
        Absent::Left => (
            Reason::PeerLeft,
            "The call broke, and peer B left the room before it was recovered.",
        ),
    };
    Diagnosis {
        reason,
        message: format!("{message} {}", reason.advice()),
        ..d
    }
}

/// Decides why a pair connected or not, from A's report and B's (`None`: B never reported before the deadline).
pub fn classify(a: &Report, b: Option<&Report>) -> Diagnosis {
    let reports = if b.is_some() { 2 } else { 1 };
    let sides: Vec<(&'static str, &Report)> = std::iter::once(("A", a)).chain(b.map(|b| ("B", b))).collect();
    if sides.iter().any(|(_, r)| r.outcome == Outcome::Dropped) {
        return dropped(&sides, reports);
    }
    if sides.iter().any(|(_, r)| r.outcome == Outcome::Recovered) {
        return recovered(&sides, reports);
    }
    let outcome = if sides.iter().any(|(_, r)| r.outcome == Outcome::Connected) {
        Outcome::Connected
    } else if sides.iter().any(|(_, r)| r.outcome == Outcome::Failed) {
        Outcome::Failed
    } else {
        Outcome::Timeout
    };
    if outcome == Outcome::Connected {
        return connected(&sides, reports);
    }
    let (reason, message) = failure(&sides, outcome);
    let advice = reason.advice();
    Diagnosis {
        room: String::new(),
        peers: [String::new(), String::new()],
        outcome,
        reason,
        message: if advice.is_empty() {
            message
        } else {
            format!("{message} {advice}")
        },
        path: None,
        time_to_connect_ms: None,
        connected_ms: None,
        cause: None,
        recovery_ms: None,
        reports,
    }
}

/// A call that connected and then broke for good: whose network, which relay, or which path.
fn dropped(sides: &[(&'static str, &Report)], reports: u8) -> Diagnosis {
    let drops: Vec<(&str, &Report)> = sides
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::Dropped)
        .map(|(n, r)| (*n, *r))
        .collect();
    let path = best_path(drops.iter().map(|(_, r)| *r));
    let connected_ms = drops.iter().map(|(_, r)| r.connected_ms).max();
    let restarts = drops.iter().map(|(_, r)| u32::from(r.restarts)).max().unwrap_or(0);
    let tried = match restarts {
        0 => "no ICE restart could be made".to_owned(),
        1 => "one ICE restart found no new path".to_owned(),
        n => format!("{n} ICE restarts found no new path"),
    };
    let unreported = if reports == 1 {
        " (peer B did not report the drop)"
    } else {
        ""
    };
    let network: Vec<(&str, &Report)> = drops
        .iter()
        .filter(|(_, r)| r.offline || r.cause.is_some_and(DropCause::is_network))
        .copied()
        .collect();
    let (reason, message) = if let Some((name, r)) = network.first() {
        let what = if r.offline || r.cause == Some(DropCause::NetworkOffline) {
            "went offline"
        } else {
            "changed"
        };
        (
            Reason::NetworkChanged,
            format!("The call dropped after peer {name}'s network {what}, and {tried}{unreported}."),
        )
    } else if path.is_some_and(Path::is_relay) && drops.iter().any(|(_, r)| relay_went_away(r)) {
        let why = if drops.iter().any(|(_, r)| r.cause.is_some_and(DropCause::is_server)) {
            "went away with its server (a restart or a lost node)"
        } else {
            "stopped answering"
        };
        (
            Reason::RelayLost,
            format!("The call went through a TURN relay that {why}, and no new relay could be allocated; {tried}{unreported}."),
        )
    } else {
        let on = match path {
            Some(p) if p.is_relay() => "through the relay",
            Some(_) => "direct",
            None => "",
        };
        let on = if on.is_empty() {
            String::new()
        } else {
            format!(" ({on})")
        };
        (
            Reason::PathLost,
            format!(
                "The call's path{on} stopped working, probably a NAT or firewall on the way dropping its mapping, and \
                 {tried}{unreported}."
            ),
        )
    };
    Diagnosis {
        room: String::new(),
        peers: [String::new(), String::new()],
        outcome: Outcome::Dropped,
        reason,
        message: format!("{message} {}", reason.advice()),
        path,
        time_to_connect_ms: None,
        connected_ms,
        cause: drops.iter().find_map(|(_, r)| r.cause),
        recovery_ms: None,
        reports,
    }
}

/// A call that broke and came back: what broke it, how long it took, and the path it goes now.
fn recovered(sides: &[(&'static str, &Report)], reports: u8) -> Diagnosis {
    let back: Vec<&Report> = sides
        .iter()
        .map(|(_, r)| *r)
        .filter(|r| r.outcome == Outcome::Recovered)
        .collect();
    let path = best_path(back.iter().copied());
    let recovery_ms = back.iter().map(|r| r.broken_ms).max();
    let cause = back.iter().find_map(|r| r.cause);
    let what = match cause {
        Some(DropCause::NetworkChange) => " when a network changed",
        Some(DropCause::NetworkOffline) => " when a network went offline",
        Some(DropCause::SessionLost | DropCause::NodeLost) => " when its relay's server went away",
        _ => "",
    };
    let restarts = back.iter().map(|r| u32::from(r.restarts)).max().unwrap_or(0);
    let how = match restarts {
        0 => String::new(),
        1 => " after one ICE restart".to_owned(),
        n => format!(" after {n} ICE restarts"),
    };
    let now = match path {
        Some(p) if p.is_relay() => " It goes through the relay now.",
        Some(_) => " It goes directly now.",
        None => "",
    };
    let ms = recovery_ms.unwrap_or(0);
    let message = format!("The call broke{what} and recovered by itself in {ms} ms{how}.{now}");
    Diagnosis {
        room: String::new(),
        peers: [String::new(), String::new()],
        outcome: Outcome::Recovered,
        reason: Reason::Recovered,
        message: format!("{message} {}", Reason::Recovered.advice()),
        path,
        time_to_connect_ms: None,
        connected_ms: back.iter().map(|r| r.connected_ms).max(),
        cause,
        recovery_ms,
        reports,
    }
}

/// A relayed side whose relay went away: its server lost the session, or TURN requests made while recovering got
/// no answer or an error, or recovery gathered no relay at all.
fn relay_went_away(r: &Report) -> bool {
    r.cause.is_some_and(DropCause::is_server)
        || r.errors
            .iter()
            .any(|e| e.url.as_ref().is_some_and(|u| u.turn_transport().is_some()))
        || (r.restarts > 0 && r.gathered.relays() == 0 && r.offered.turn() > 0)
}

fn connected(sides: &[(&'static str, &Report)], reports: u8) -> Diagnosis {
    let connected: Vec<&Report> = sides
        .iter()
        .map(|(_, r)| *r)
        .filter(|r| r.outcome == Outcome::Connected)
        .collect();
    let path = best_path(connected.iter().copied());
    let time = connected.iter().map(|r| r.elapsed_ms).max();
    let how = match path {
        Some(Path::DirectHost) => "directly on the local network".to_owned(),
        Some(Path::DirectSrflx | Path::DirectPrflx) => "directly through the NATs".to_owned(),
        Some(Path::RelayUdp) => "through the TURN relay over UDP".to_owned(),
        Some(Path::RelayTcp) => "through the TURN relay over TCP".to_owned(),
        Some(Path::RelayTls) => "through the TURN relay over TLS".to_owned(),
        Some(Path::Relay) => "through a TURN relay".to_owned(),
        None => "by an unreported path".to_owned(),
    };
    let message = match time {
        Some(ms) => format!("The peers connected {how} in {ms} ms."),
        None => format!("The peers connected {how}."),
    };
    Diagnosis {
        room: String::new(),
        peers: [String::new(), String::new()],
        outcome: Outcome::Connected,
        reason: Reason::Connected,
        message,
        path,
        time_to_connect_ms: time,
        connected_ms: None,
        cause: None,
        recovery_ms: None,
        reports,
    }
}

/// The path of a pair from its sides' reports: a relay if either side used one, by its transport when the side that
/// allocated it said (only that side knows it), else what a side saw.
fn best_path<'a>(reports: impl Iterator<Item = &'a Report>) -> Option<Path> {
    let paths: Vec<Path> = reports.filter_map(path_of).collect();
    paths
        .iter()
        .copied()
        .find(|p| p.is_relay() && *p != Path::Relay)
        .or_else(|| paths.iter().copied().find(|p| p.is_relay()))
        .or_else(|| paths.first().copied())
}

/// The path one side saw: a local relay tells its transport; a remote relay does not.
fn path_of(r: &Report) -> Option<Path> {
    let pair = r.pair.as_ref()?;
    let (local, remote) = (pair.local.candidate_type, pair.remote.candidate_type);
    if local == CandidateType::Relay {
        let transport = pair
            .local
            .relay_protocol
            .or_else(|| pair.local.url.as_ref().and_then(|u| u.turn_transport()));
        return Some(match transport {
            Some(RelayProtocol::Udp) => Path::RelayUdp,
            Some(RelayProtocol::Tcp) => Path::RelayTcp,
            Some(RelayProtocol::Tls) => Path::RelayTls,
            None => Path::Relay,
        });
    }
    Some(match (local, remote) {
        (_, CandidateType::Relay) => Path::Relay,
        (CandidateType::Host, CandidateType::Host) => Path::DirectHost,
        (CandidateType::Srflx, _) | (_, CandidateType::Srflx) => Path::DirectSrflx,
        _ => Path::DirectPrflx,
    })
}

/// What one side's report says about its discovery step.
struct Discovery {
    relays: u32,
    /// A TURN server answered 401 to the request with credentials.
    auth_refused: bool,
    /// TURN over UDP got no answer (701 on a `turn:` UDP URL).
    udp_unanswered: bool,
    /// Which TURN transports got no answer, in words.
    unanswered: Vec<&'static str>,
    tls_443_offered: bool,
    turn_offered: bool,
    srflx: bool,
}

impl Discovery {
    fn of(r: &Report) -> Self {
        let mut d = Discovery {
            relays: r.gathered.relays(),
            auth_refused: false,
            udp_unanswered: false,
            unanswered: Vec::new(),
            tls_443_offered: r.offered.turn_tls_443 > 0,
            turn_offered: r.offered.turn() > 0,
            srflx: r.gathered.srflx > 0,
        };
        for e in &r.errors {
            let transport = e.url.as_ref().and_then(|u| u.turn_transport());
            // Chrome reports a refused TURN credential as 401, and some versions as 701 with the 401 in the text;
            // the text is read for that one case only.
            let says_401 = e
                .text
                .as_ref()
                .is_some_and(|t| t.as_str().contains("401") || t.as_str().contains("authenticate"));
            if e.code == 401 || (e.code == 701 && says_401 && transport.is_some()) {
                d.auth_refused = true;
                continue;
            }
            // 701: the server could not be reached (RFC 8489 leaves 7xx to clients; browsers use it for timeouts). A 701
            // on a `stun:` URL says nothing: Chrome reports one for every STUN server when it closes the UDP socket
            // after ICE failed ("UDP socket was closed."), reachable or not.
            if e.code == 701 {
                let name = match transport {
                    Some(RelayProtocol::Udp) => "UDP",
                    Some(RelayProtocol::Tcp) => "TCP",
                    Some(RelayProtocol::Tls) => "TLS",
                    None => continue,
                };
                d.udp_unanswered |= transport == Some(RelayProtocol::Udp);
                if !d.unanswered.contains(&name) {
                    d.unanswered.push(name);
                }
            }
        }
        // Offered STUN and TURN over UDP and got neither a server-reflexive candidate nor a relay: nothing came back
        // over UDP, whether or not the browser reported it (Chrome reported no TURN timeout in the NAT lab's `noudp`
        // site within 30 s).
        if r.offered.stun > 0 && r.offered.turn_udp > 0 && r.gathered.srflx == 0 && d.relays == 0 {
            d.udp_unanswered = true;
        }
        d
    }
}

/// `peer B`, or `both peers` when the rule holds for every side.
fn who(names: &[&str], sides: usize) -> String {
    match names {
        [one] if sides > 1 => format!("peer {one}"),
        [_] => "the peer".to_owned(),
        _ => "both peers".to_owned(),
    }
}

fn failure(sides: &[(&'static str, &Report)], outcome: Outcome) -> (Reason, String) {
    let views: Vec<(&str, &Report, Discovery)> = sides.iter().map(|(n, r)| (*n, *r, Discovery::of(r))).collect();
    let names = |pred: &dyn Fn(&Report, &Discovery) -> bool| -> Vec<&str> {
        views
            .iter()
            .filter(|(_, r, d)| pred(r, d))
            .map(|(n, _, _)| *n)
            .collect()
    };
    let n = views.len();
    let no_relay_anywhere = views.iter().all(|(_, _, d)| d.relays == 0);

    // A side that never applied the other's description explains the failure even when it is the only report.
    let unsignaled = names(&|r, _| !r.remote_description);
    if !unsignaled.is_empty() {
        let whom = match unsignaled.as_slice() {
            [one] => format!("peer {one} never applied"),
            _ => "neither peer applied".to_owned(),
        };
        return (
            Reason::SignalingIncomplete,
            format!("Signaling did not complete: {whom} the other's offer or answer."),
        );
    }
    if n == 1 {
        return (
            Reason::PeerUnreported,
            "Peer B never reported: its tab closed or its signaling was lost before the connection was decided \
             (or it runs with reports off)."
                .to_owned(),
        );
    }
    let refused = names(&|_, d| d.auth_refused && d.relays == 0);
    if !refused.is_empty() {
        return (
            Reason::TurnAuthFailed,
            format!(
                "The TURN server refused the credential of {} (401), so no relay could be allocated{}.",
                who(&refused, n),
                if no_relay_anywhere { " on either side" } else { "" }
            ),
        );
    }
    let relay_only = names(&|r, d| r.policy == Policy::Relay && d.relays == 0);
    if let Some(&first) = relay_only.first() {
        let d = views.iter().find(|(name, _, _)| *name == first).map(|(_, _, d)| d);
        let detail = match d {
            Some(d) if !d.turn_offered => "no TURN server was offered".to_owned(),
            Some(d) if !d.unanswered.is_empty() => {
                format!("its TURN requests over {} got no answer", d.unanswered.join(" and "))
            }
            _ => "no TURN server answered".to_owned(),
        };
        let subject = match relay_only.as_slice() {
            [one] => format!("Peer {one} allows only relayed connections and could not allocate a relay: {detail}"),
            _ => format!("Both peers allow only relayed connections and could not allocate a relay: {detail}"),
        };
        return (Reason::RelayOnlyUnreachable, format!("{subject}."));
    }
    let symmetric = views.iter().all(|(_, _, d)| d.srflx) && no_relay_anywhere;
    let prefix = if symmetric {
        "Both peers are behind NATs that change port per destination (symmetric) and neither could allocate a relay"
            .to_owned()
    } else {
        String::new()
    };
    let udp_blocked = names(&|_, d| d.relays == 0 && d.udp_unanswered && !d.tls_443_offered);
    if !udp_blocked.is_empty() {
        let whose = match udp_blocked.as_slice() {
            [one] => format!("peer {one}'s"),
            _ => "both peers'".to_owned(),
        };
        let cause = format!("{whose} TURN requests over UDP timed out and no TURN over TLS on 443 was offered");
        let message = match udp_blocked.as_slice() {
            _ if !prefix.is_empty() => format!("{prefix}: {cause}."),
            _ if no_relay_anywhere => format!("Neither peer could allocate a relay: {cause}."),
            [one] => format!(
                "Peer {one} could not allocate a relay: its TURN requests over UDP timed out and no TURN over TLS on \
                 443 was offered."
            ),
            _ => format!("No relay could be allocated: {cause}."),
        };
        return (Reason::TurnUdpBlockedNoTls, message);
    }
    if no_relay_anywhere && views.iter().all(|(_, _, d)| !d.turn_offered) {
        if symmetric {
            return (
                Reason::SymmetricNatNoRelay,
                format!("{prefix}: no TURN server was offered."),
            );
        }
        let unmapped = names(&|_, d| !d.srflx);
        return (
            Reason::NoTurnOffered,
            format!(
                "No direct path worked and no TURN server was offered; {} got no public address over UDP: UDP or \
                 STUN is blocked on {} network.",
                who(&unmapped, n),
                if unmapped.len() > 1 { "their" } else { "its" }
            ),
        );
    }
    if no_relay_anywhere {
        let unanswered: Vec<String> = views
            .iter()
            .filter(|(_, _, d)| !d.unanswered.is_empty())
            .map(|(name, _, d)| {
                format!(
                    "peer {name}'s TURN requests over {} got no answer",
                    d.unanswered.join(" and ")
                )
            })
            .collect();
        let detail = if unanswered.is_empty() {
            String::new()
        } else {
            format!(" ({})", unanswered.join("; "))
        };
        return (
            Reason::RelayNotGathered,
            format!("Neither peer could allocate a relay{detail}, and no direct path worked."),
        );
    }
    // One relay is enough for a pair (the other side reaches it through any NAT), so a failure with one relay is
    // not explained by the reports; with both, the relays themselves were unreachable (timed out or failed alike).
    if views.iter().all(|(_, _, d)| d.relays > 0) {
        return (
            Reason::RelayPortsBlocked,
            "Both peers allocated a relay, yet no candidate pair worked: a firewall probably blocks the relay's \
             ports."
                .to_owned(),
        );
    }
    if outcome == Outcome::Timeout {
        return (
            Reason::Timeout,
            "Neither peer connected nor failed within its timeout: ICE was still checking candidate pairs.".to_owned(),
        );
    }
    (Reason::Unknown, Reason::Unknown.summary().to_owned())
}
