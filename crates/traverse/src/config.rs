//! The configuration file (`traverse.toml`), its command-line and environment overrides, and its validation.
//! `traverse.example.toml` at the repository root documents every option.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;
use turn::policy::IpNet;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: Listen,
    pub tls: Tls,
    pub relay: Relay,
    pub auth: Auth,
    pub limits: Limits,
    pub signal: Signal,
    pub stun: Stun,
    pub web: Web,
    pub log: Log,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// Plain HTTP: signaling (`/ws`), SDK, demo, `/api/*`. TURN over TCP is recognised there too.
    pub http: Vec<SocketAddr>,
    /// Single ports (443 in production): TLS → HTTPS/WSS or TURN over TLS; plain → TURN over TCP or a redirect.
    pub single: Vec<SocketAddr>,
}

/// Signaling: rooms over WebSocket and the credentials handed to peers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Signal {
    /// Host name or address put in the iceServers handed to peers; default: relay.external_v4, else the first
    /// listening or interface address.
    pub public_host: Option<String>,
    /// HS256 secret for join tokens; unset: rooms are open.
    pub secret: Option<String>,
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub burst: u32,
    pub max_peers_per_room: usize,
    pub max_rooms: usize,
    pub max_connections_per_ip: usize,
    pub max_queued: usize,
    /// Bytes kept for one session (unacknowledged frames while connected, queued ones while disconnected).
    pub max_session_bytes: usize,
    /// Bytes kept for every session of one source (an IPv4 address, an IPv6 /64).
    pub max_source_bytes: usize,
    /// Bytes kept for every session; 0: an eighth of the machine's memory, between 64 MiB and 1 GiB.
    pub max_total_bytes: usize,
    /// Seconds between heartbeats (client pings, server WebSocket pings).
    pub heartbeat_interval: u64,
    /// Seconds of silence after which a socket counts as dead.
    pub heartbeat_timeout: u64,
    /// Seconds a dropped peer keeps its place and its messages for a resume.
    pub resume_grace: u64,
}

impl Default for Signal {
    fn default() -> Self {
        let limits = signal::Limits::default();
        Self {
            public_host: None,
            secret: None,
            max_message_bytes: limits.max_message_bytes,
            messages_per_second: limits.messages_per_second,
            burst: limits.burst,
            max_peers_per_room: limits.max_peers_per_room,
            max_rooms: limits.max_rooms,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_queued: limits.max_queued,
            max_session_bytes: limits.max_session_bytes,
            max_source_bytes: limits.max_source_bytes,
            max_total_bytes: 0,
            heartbeat_interval: limits.heartbeat_interval.as_secs(),
            heartbeat_timeout: limits.heartbeat_timeout.as_secs(),
            resume_grace: limits.resume_grace.as_secs(),
        }
    }
}

impl Signal {
    pub fn limits(&self) -> signal::Limits {
        signal::Limits {
            max_message_bytes: self.max_message_bytes,
            messages_per_second: self.messages_per_second,
            burst: self.burst,
            max_peers_per_room: self.max_peers_per_room,
            max_rooms: self.max_rooms,
            max_connections_per_ip: self.max_connections_per_ip,
            max_queued: self.max_queued,
            max_session_bytes: self.max_session_bytes,
            max_source_bytes: self.max_source_bytes,
            max_total_bytes: self.max_total_bytes,
            heartbeat_interval: std::time::Duration::from_secs(self.heartbeat_interval),
            heartbeat_timeout: std::time::Duration::from_secs(self.heartbeat_timeout),
            resume_grace: std::time::Duration::from_secs(self.resume_grace),
            ..signal::Limits::default()
        }
    }
}

/// The web pages' state: reports shared from the troubleshooter (`/check`) and the operator's access to them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    /// Where shared reports are kept (one JSON file each); default: `$STATE_DIRECTORY` (systemd), else
    /// `./traverse-data`. Created on the first report.
    pub data_dir: Option<PathBuf>,
    /// Bearer token for the operator's report list (`GET /api/reports`); unset: the list is disabled.
    pub admin_token: Option<String>,
    /// Reports kept; the oldest are pruned beyond it.
    pub max_reports: usize,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            data_dir: None,
            admin_token: None,
            max_reports: web::DEFAULT_MAX_REPORTS,
        }
    }
}

impl Web {
    /// `data_dir`, else systemd's `$STATE_DIRECTORY` (its first entry), else `./traverse-data`.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("./traverse-data"))
    }
}

/// STUN beyond plain Binding.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Stun {
    /// RFC 5780 NAT behaviour discovery: the alternate IP and port, beside the first `listen.udp` address of the
    /// same family (which must name an explicit IP). Unset: off.
    pub other_address: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    pub bind_v4: Option<IpAddr>,
    pub bind_v6: Option<IpAddr>,
    pub external_v4: Option<IpAddr>,
    pub external_v6: Option<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
    pub ipv6: bool,
    pub allow_peers: Vec<String>,
    pub deny_peers: Vec<String>,
    pub bandwidth_per_allocation: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub realm: String,
    pub secrets: Vec<String>,
    pub users: Vec<String>,
    pub nonce_lifetime: u64,
    pub credential_ttl: u64,
    /// REST credentials expiring further ahead than this many seconds are refused (0: no limit).
    pub max_credential_lifetime: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub workers: usize,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Allocations from one IPv4 address or IPv6 /64 (0: no limit).
    pub max_allocations_per_source: usize,
    pub default_lifetime: u64,
    pub max_lifetime: u64,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    pub max_connections: usize,
    /// TCP/TLS/HTTP connections from one IPv4 address or IPv6 /64 (0: no limit), counted before TLS.
    pub max_connections_per_source: usize,
    pub idle_timeout: u64,
    /// Seconds a TURN stream connection may go without an allocation, whatever it sends (the idle timer restarts
    /// on every byte; this deadline does not).
    pub auth_timeout: u64,
    pub reflection_bytes_per_second: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Listen {
    fn default() -> Self {
        let both = |port: u16| {
            vec![
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::from(([0u16; 8], port)),
            ]
        };
        Self {
            udp: both(3478),
            tcp: both(3478),
            tls: both(5349),
            http: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            single: Vec::new(),
        }
    }
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            bind_v4: None,
            bind_v6: None,
            external_v4: None,
            external_v6: None,
            port_min: 49152,
            port_max: 65535,
            ipv6: true,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            bandwidth_per_allocation: 0,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            realm: "traverse".into(),
            secrets: Vec::new(),
            users: Vec::new(),
            nonce_lifetime: 600,
            credential_ttl: 86_400,
            max_credential_lifetime: 7 * 86_400,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            workers: 0,
            max_allocations: 10_000,
            max_allocations_per_user: 100,
            max_allocations_per_source: 2_000,
            default_lifetime: 600,
            max_lifetime: 3600,
            max_permissions_per_allocation: 256,
            max_channels_per_allocation: 256,
            max_connections: 10_000,
            max_connections_per_source: 500,
            idle_timeout: 30,
            auth_timeout: 10,
            reflection_bytes_per_second: 16 * 1024,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// A config error, with the line when the file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    pub fn load(path: &PathBuf) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.clone(),
            message,
        })
    }

    /// Parses TOML; the error names line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let location = e.span().map(|span| {
                let before = text.get(..span.start).unwrap_or_default();
                let line = before.matches('\n').count() + 1;
                let column = span.start - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            format!("{}{}", location.unwrap_or_default(), e.message())
        })
    }

    /// Checks what TOML types cannot: ranges, address blocks, user entries. Returns every problem.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key, message: String| errors.push(ConfigError::Invalid { key, message });
        if self.relay.port_min > self.relay.port_max || self.relay.port_min == 0 {
            bad(
                "relay.port_min/port_max",
                format!("{}-{} is not a port range", self.relay.port_min, self.relay.port_max),
            );
        }
        // A relay port that is also a listener's port would let a client relay into the server itself (a TURN loop);
        // a relay socket could not bind there anyway, but the range must say what it means.
        let relay_ports = self.relay.port_min..=self.relay.port_max;
        let listeners = [
            ("listen.udp", &self.listen.udp),
            ("listen.tcp", &self.listen.tcp),
            ("listen.tls", &self.listen.tls),
            ("listen.http", &self.listen.http),
            ("listen.single", &self.listen.single),
        ];
        for (key, addrs) in listeners {
            if let Some(addr) = addrs.iter().find(|a| relay_ports.contains(&a.port())) {
                bad(
                    "relay.port_min/port_max",
                    format!(
                        "{}-{} contains the port of {key} {addr}: relay ports must not overlap the server's own \
                         listeners (a client could relay into the server itself); e.g. 49152-65535",
                        self.relay.port_min, self.relay.port_max
                    ),
                );
            }
        }
        if let Some(lifetime) = Some(self.auth.max_credential_lifetime).filter(|l| *l != 0) {
            if self.auth.credential_ttl > lifetime {
                bad(
                    "auth.credential_ttl",
                    format!(
                        "{} s is longer than auth.max_credential_lifetime ({lifetime} s)",
                        self.auth.credential_ttl
                    ),
                );
            }
        }
        for (key, list) in [
            ("relay.allow_peers", &self.relay.allow_peers),
            ("relay.deny_peers", &self.relay.deny_peers),
        ] {
            for entry in list {
                if let Err(e) = entry.parse::<IpNet>() {
                    bad(key, e.to_string());
                }
            }
        }
        for user in &self.auth.users {
            if !user.contains(':') || user.starts_with(':') {
                bad("auth.users", format!("{user:?} is not \"name:password\""));
            }
        }
        if self.auth.realm.is_empty() {
            bad("auth.realm", "must not be empty".into());
        }
        if self.limits.default_lifetime == 0 || self.limits.default_lifetime > self.limits.max_lifetime {
            bad(
                "limits.default_lifetime",
                "must be between 1 and limits.max_lifetime".into(),
            );
        }
        let s = &self.signal;
        if s.max_message_bytes < 1024 || s.messages_per_second == 0 || s.burst == 0 || s.max_peers_per_room < 2 {
            bad(
                "signal",
                "max_message_bytes ≥ 1024, messages_per_second ≥ 1, burst ≥ 1 and max_peers_per_room ≥ 2".into(),
            );
        }
        if s.max_queued == 0 || s.max_queued > 65_536 {
            bad("signal.max_queued", "must be between 1 and 65536".into());
        }
        // A session must hold at least two of the largest messages, and a source at least one session.
        if s.max_session_bytes < 2 * s.max_message_bytes || s.max_source_bytes < s.max_session_bytes {
            bad(
                "signal.max_session_bytes",
                "must be at least twice signal.max_message_bytes and at most signal.max_source_bytes".into(),
            );
        }
        if s.max_total_bytes != 0 && s.max_total_bytes < s.max_source_bytes {
            bad(
                "signal.max_total_bytes",
                "must be 0 (sized from memory) or at least signal.max_source_bytes".into(),
            );
        }
        if s.heartbeat_interval == 0 || s.heartbeat_timeout <= s.heartbeat_interval {
            bad(
                "signal.heartbeat_timeout",
                "must be longer than signal.heartbeat_interval (≥ 1 s)".into(),
            );
        }
        if s.secret.as_deref().is_some_and(|k| k.len() < 16) {
            bad("signal.secret", "use at least 16 characters".into());
        }
        if self.web.admin_token.as_deref().is_some_and(|k| k.len() < 16) {
            bad("web.admin_token", "use at least 16 characters".into());
        }
        if self.web.max_reports == 0 {
            bad("web.max_reports", "must be at least 1".into());
        }
        if self.listen.udp.is_empty()
            && self.listen.tcp.is_empty()
            && self.listen.tls.is_empty()
            && self.listen.http.is_empty()
            && self.listen.single.is_empty()
        {
            bad("listen", "no listener configured".into());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bad("tls", "cert and key go together".into());
        }
        if let Err(e) = self.nat_discovery() {
            bad("stun.other_address", e);
        }
        if self.limits.max_allocations == 0 {
            bad("limits.max_allocations", "must be at least 1".into());
        }
        errors
    }

    /// RFC 5780: the primary address (the first `listen.udp` entry of the alternate's family) and the alternate.
    pub fn nat_discovery(&self) -> Result<Option<turn::NatDiscovery>, String> {
        let Some(alternate) = self.stun.other_address else {
            return Ok(None);
        };
        let primary = self
            .listen
            .udp
            .iter()
            .find(|a| a.is_ipv4() == alternate.is_ipv4())
            .ok_or_else(|| format!("no listen.udp address of the family of {alternate}"))?;
        turn::NatDiscovery::new(*primary, alternate).map(Some)
    }

    pub fn users(&self) -> Vec<(String, String)> {
        self.auth
            .users
            .iter()
            .filter_map(|u| u.split_once(':'))
            .map(|(n, p)| (n.to_owned(), p.to_owned()))
            .collect()
    }

    pub fn peer_blocks(list: &[String]) -> Vec<IpNet> {
        list.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../../traverse.example.toml");
        let config = Config::parse(text).unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
    }

    #[test]
    fn errors_name_the_line() {
        let err = Config::parse("[relay]\nport_min = 1\nport_max = \"x\"\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = Config::parse("[relay]\nnonsense = 1\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("unknown field"), "{err}");
    }

    #[test]
    fn validation_finds_semantic_errors() {
        let config = Config::parse(
            "[relay]\nport_min = 9000\nport_max = 8000\nallow_peers = [\"10.0.0.0/99\"]\n[auth]\nusers = [\"nopassword\"]\n",
        )
        .unwrap();
        let errors = config.validate();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn other_address_needs_an_explicit_primary_of_its_family() {
        let parse = |text: &str| Config::parse(text).unwrap();
        let ok = parse("[listen]\nudp = [\"127.0.0.1:3478\"]\n[stun]\nother_address = \"127.0.0.2:3479\"\n");
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        let d = ok.nat_discovery().unwrap().unwrap();
        assert_eq!(d.primary, "127.0.0.1:3478".parse().unwrap());
        assert!(d.is_complete());
        // The default listeners are wildcards: a wildcard socket cannot choose an answer's source.
        let wildcard = parse("[stun]\nother_address = \"127.0.0.2:3479\"\n");
        assert_eq!(wildcard.validate().len(), 1, "{:?}", wildcard.validate());
        let same = parse("[listen]\nudp = [\"127.0.0.1:3478\"]\n[stun]\nother_address = \"127.0.0.1:3478\"\n");
        assert_eq!(same.validate().len(), 1);
        let v6 = parse("[listen]\nudp = [\"127.0.0.1:3478\"]\n[stun]\nother_address = \"[::1]:3479\"\n");
        assert_eq!(v6.validate().len(), 1);
    }
}
