//! The configuration: typed sections parsed straight from `traverse.toml` (with the structs the crates use where
//! they own the option, `signal::Limits` in `[signal]`), then overridden key by key from the environment and the
//! command line through one generic layer, then checked for what types cannot say. `traverse.example.toml` at the
//! repository root documents every option; a test keeps it and these structs in step.
//!
//! Precedence: defaults < file < environment (`TRAVERSE_<SECTION>_<KEY>`, and the everyday flags' variables) <
//! flags (the everyday flags, then `--set section.key=value` in order).

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use turn::policy::IpNet;

use crate::file_errors::{self, FileError};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
    pub metrics: Metrics,
    pub cluster: Cluster,
    pub ice: Ice,
}

/// What peers are handed besides this server (or cluster): other STUN/TURN servers, after this server's own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Ice {
    /// External servers appended to every `iceServers` (joins and `/api/ice-servers`): a managed TURN service as a
    /// fallback, a coturn beside this server. Each entry: `urls`, and for TURN either `username` and `credential`
    /// (static) or `secret` (TURN REST: a credential minted per peer with this server's `auth.credential_ttl`, as
    /// coturn's `use-auth-secret` and eturnal expect).
    pub extra: Vec<ExtraIceServer>,
}

/// One external STUN/TURN server ([`Ice::extra`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtraIceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The server's TURN REST secret: a credential is minted per peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl ExtraIceServer {
    /// What is wrong with the entry, as a sentence.
    pub fn problem(&self) -> Option<String> {
        if self.urls.is_empty() {
            return Some("an entry without urls (browsers throw on one)".into());
        }
        let bad = self.urls.iter().find(|u| {
            let Some((scheme, rest)) = u.split_once(':') else {
                return true;
            };
            !matches!(scheme, "stun" | "stuns" | "turn" | "turns")
                || rest.is_empty()
                || rest.contains(char::is_whitespace)
        });
        if let Some(url) = bad {
            return Some(format!("{url:?} is not a stun:, turn: or turns: URL"));
        }
        let turn = self.urls.iter().any(|u| u.starts_with("turn"));
        let fixed = self.username.is_some() || self.credential.is_some();
        match (turn, fixed, &self.secret) {
            (_, true, Some(_)) => Some("username/credential and secret both given: use one".into()),
            (true, false, None) => Some("a TURN server needs username and credential, or secret".into()),
            (_, true, None) if self.username.is_none() || self.credential.is_none() => {
                Some("username and credential go together".into())
            }
            (_, _, Some(secret)) => short_secret(secret).err(),
            _ => None,
        }
    }
}

/// A node of a cluster (`signal.redis`, docs/scaling.md): how long it drains and when it counts as full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Seconds a drain (SIGUSR1, `traverse drain`, or SIGTERM in a cluster) lasts at most: TURN allocations are
    /// kept until they end or this runs out, then the process exits.
    pub drain_time: u64,
    /// Relayed bandwidth (both directions) this node can carry, in Mbit/s; 0: bandwidth is not weighed. A node
    /// relaying 90 % of it, or holding 90 % of its allocations or connections, is not handed out in `iceServers`.
    pub relay_capacity_mbps: u64,
    /// Where `traverse serve` writes its process id, for `traverse drain --pid-file`; unset: not written.
    pub pid_file: Option<PathBuf>,
    /// Signaling hub tasks (shards) of this node, each with a share of the rooms and Redis connections of its own
    /// (docs/scaling.md, "Shards"); 0: one per four cores, at most 8 (and at most one per worker on the workers).
    pub hub_shards: usize,
    /// The hub tasks run on the TURN/HTTP worker threads, task *k* on worker *k* (at most one per worker), so a
    /// signal between sockets of the worker that holds their room never leaves that thread; false: each on a thread
    /// of its own. On 2 cores the workers cost 0.84–0.91x the CPU per signal (docs/benchmarks.md).
    pub hub_on_workers: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            drain_time: 30,
            relay_capacity_mbps: 0,
            pid_file: None,
            hub_shards: 0,
            hub_on_workers: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    #[serde(with = "listen_addrs")]
    pub udp: Vec<SocketAddr>,
    #[serde(with = "listen_addrs")]
    pub tcp: Vec<SocketAddr>,
    #[serde(with = "listen_addrs")]
    pub tls: Vec<SocketAddr>,
    /// Plain HTTP: signaling (`/ws`), SDK, demo, `/api/*`. TURN over TCP is recognised there too.
    #[serde(with = "listen_addrs")]
    pub http: Vec<SocketAddr>,
    /// Single ports (443 in production): TLS → HTTPS/WSS or TURN over TLS; plain → TURN over TCP or a redirect.
    #[serde(with = "listen_addrs")]
    pub single: Vec<SocketAddr>,
    /// Layer-4 load balancers (address blocks) that start every TCP connection with a PROXY protocol header, v1 or
    /// v2 (HAProxy `send-proxy-v2`, an AWS NLB's proxy protocol, nginx `proxy_protocol on;` in `stream`): the
    /// client it names is the connection's, for every per-source limit and for TURN. A connection from one of them
    /// without a valid header is closed; others' connections are never read for one. Empty: none.
    #[serde(with = "strings")]
    pub proxy_protocol: Vec<IpNet>,
}

/// Signaling: rooms over WebSocket and the credentials handed to peers. The section's other keys are the hub's own
/// [`signal::Limits`], embedded as they are (durations in seconds).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Signal {
    /// Host name or address put in the iceServers handed to peers; default: relay.external_v4, else the first
    /// listening or interface address.
    pub public_host: Option<String>,
    /// HS256 secret for join tokens; unset: rooms are open.
    pub secret: Option<String>,
    /// Redis URL (`redis://host:port/db`) shared by every node of a cluster: rooms live on one node each and
    /// sockets on any (docs/scaling.md). Unset: one node, rooms in memory.
    pub redis: Option<String>,
    #[serde(flatten)]
    pub limits: signal::Limits,
}

impl Default for Signal {
    fn default() -> Self {
        Self {
            public_host: None,
            secret: None,
            redis: None,
            // 0: an eighth of the machine's memory, between 64 MiB and 1 GiB (sized by `web`).
            limits: signal::Limits {
                max_total_bytes: 0,
                ..signal::Limits::default()
            },
        }
    }
}

/// By hand rather than `#[serde(flatten)]`, which buffers the section and so loses the line of a bad value and the
/// key of an unknown one: each hub key is checked against `signal::Limits` where it stands.
impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Section;
        impl<'de> Visitor<'de> for Section {
            type Value = Signal;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the [signal] section")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Signal, A::Error> {
                let (mut public_host, mut secret, mut redis) = (None, None, None);
                let mut limits = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "public_host" => public_host = map.next_value()?,
                        "secret" => secret = map.next_value()?,
                        "redis" => redis = map.next_value()?,
                        _ => {
                            let value = map.next_value_seed(LimitsKey(&key))?;
                            limits.insert(key, value);
                        }
                    }
                }
                let limits = signal::Limits::deserialize(Value::Object(limits)).map_err(A::Error::custom)?;
                Ok(Signal {
                    public_host,
                    secret,
                    redis,
                    limits,
                })
            }
        }
        deserializer.deserialize_map(Section)
    }
}

/// One key of `signal::Limits`, checked alone while the parser still knows where its value stands.
struct LimitsKey<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for LimitsKey<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let alone = Map::from_iter([(self.0.to_owned(), value.clone())]);
        signal::Limits::deserialize(Value::Object(alone)).map_err(D::Error::custom)?;
        Ok(value)
    }
}

/// The web pages' state: reports shared from the troubleshooter (`/check`) and the operator's access to them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    /// Where shared reports are kept (one JSON file each); default: `$STATE_DIRECTORY` (systemd), else
    /// `./traverse-data`. Created on the first report.
    pub data_dir: Option<PathBuf>,
    /// Bearer token for the operator's report list (`GET /api/reports`); unset: the list is disabled.
    pub admin_token: Option<String>,
    /// Reports kept; the oldest are pruned beyond it.
    pub max_reports: usize,
    /// Origins of the pages that may use this server from a browser (CORS on `/api/ice-servers`,
    /// `/api/join-check` and `/sdk/*`; the signaling WebSocket's `Origin`): `*` or `scheme://host[:port]` entries.
    /// The server's own pages are always allowed.
    pub allowed_origins: Vec<String>,
    /// A signaling socket whose upgrade names its room (`/ws?room=`, as the SDK's joins do) is served by the worker
    /// thread that holds that room, so a signal between two peers of a room never leaves that thread; false: each
    /// socket stays on the worker that accepted it. With it, 2 workers on 2 cores cost 0.91x the CPU per signal
    /// (paced, without `--redis`) and 0.64–0.88x with `--redis` (docs/benchmarks.md).
    pub room_affinity: bool,
    /// Reverse proxies and load balancers in front of the HTTP and single ports (address blocks): a request from one
    /// is the client's that `X-Forwarded-For` (or `Forwarded: for=`) names, for every per-source limit, and their
    /// connections count against the total only. Empty: every peer address is the client's.
    #[serde(with = "strings")]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            data_dir: None,
            admin_token: None,
            max_reports: web::DEFAULT_MAX_REPORTS,
            allowed_origins: vec!["*".to_owned()],
            trusted_proxies: Vec::new(),
            room_affinity: true,
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

/// Prometheus metrics, `/healthz` and `/readyz` on an address of their own (`metrics::http`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Where to serve them, e.g. 127.0.0.1:9464; unset: off. Not loopback: `token` is required.
    pub listen: Option<SocketAddr>,
    /// Bearer token `/metrics` requires (`Authorization: Bearer <token>`); `/healthz` and `/readyz` stay open.
    pub token: Option<String>,
}

/// STUN beyond plain Binding.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Stun {
    /// RFC 5780 NAT behaviour discovery: the alternate IP and port, beside the first `listen.udp` address of the
    /// same family (which must name an explicit IP). Unset: off.
    pub other_address: Option<SocketAddr>,
    /// A second UDP port on the IP of each family's first `listen.udp` address, served like it, so that `/check`
    /// can compare what two server addresses see and tell a symmetric NAT from the others on a server with one IP
    /// (handed out as `natProbes` by `/api/ice-servers`, never in the `iceServers` calls use). Unset: that
    /// address's port + 1 (3479 beside 3478, as coturn's alternate port; ephemeral beside an ephemeral one). Not
    /// bound with `other_address` set (that is a second address already); 0: off.
    pub second_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// DNS names to get one certificate for from an ACME CA (instead of cert and key); empty: no ACME.
    pub domains: Vec<String>,
    /// Contact the CA mails about expiry and incidents.
    pub acme_email: Option<String>,
    /// The ACME directory: Let's Encrypt's production one by default.
    pub acme_directory: String,
    /// A PEM root to trust for the directory's HTTPS instead of the system's roots (a company CA, Pebble).
    pub acme_ca_root: Option<PathBuf>,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            domains: Vec::new(),
            acme_email: None,
            acme_directory: acme::LETS_ENCRYPT.to_owned(),
            acme_ca_root: None,
        }
    }
}

/// A name an ACME CA can validate over HTTP or TLS: dot-separated LDH labels (RFC 1035 §2.3.1), no wildcard (that
/// needs DNS-01) and no address.
fn acme_domain(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a DNS name a CA can validate (no wildcards, no addresses)"
        ));
    }
    if name.parse::<IpAddr>().is_ok()
        || name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} is an address; ACME certificates here are for DNS names"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// Addresses relay sockets bind to, one or a list; empty: the address the client reached (for a relay of the
    /// other family, as an IPv4 relay for a client that came over IPv6: a listener's address of that family, else
    /// for IPv4 the host's source address toward the internet). With several, each
    /// allocation takes the next in turn, and one whose port range is full passes to the next: a relay address has
    /// at most ~64 000 ports, so a node holding more allocations needs several.
    #[serde(with = "one_or_many")]
    pub bind_v4: Vec<IpAddr>,
    #[serde(with = "one_or_many")]
    pub bind_v6: Vec<IpAddr>,
    /// Public addresses advertised behind 1:1 NAT: one, or one per `bind_v4` address, in the same order.
    #[serde(with = "one_or_many")]
    pub external_v4: Vec<IpAddr>,
    #[serde(with = "one_or_many")]
    pub external_v6: Vec<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
    pub ipv6: bool,
    /// Peer address blocks always allowed, parsed where they stand (a bad block is an error with its line).
    #[serde(with = "strings")]
    pub allow_peers: Vec<IpNet>,
    /// Peer address blocks refused on top of the built-in reserved ranges.
    #[serde(with = "strings")]
    pub deny_peers: Vec<IpNet>,
    pub bandwidth_per_allocation: u64,
    /// Interfaces the kernel fast path (XDP) attaches to; empty: off (docs/architecture.md, "Kernel fast path").
    pub xdp: Vec<String>,
    /// Relay sockets receive through io_uring instead of the reactor, where the kernel has it (docs/architecture.md,
    /// "Relay sockets on io_uring"). Off by default: each datagram it receives wakes the worker even in a relay nap,
    /// so with smooth arrivals it costs more CPU per packet than the reactor (docs/benchmarks.md, "naps the ring
    /// interrupts"); with bursts at high rates it can cost less, and it takes less memory per allocation.
    pub io_uring: bool,
    /// A run of datagrams to one destination with one length (a video frame's packets, relayed) leaves as one UDP GSO
    /// message that the kernel cuts (Linux 4.18+): one trip through the network stack for the run. Where a route
    /// refuses it, the run goes datagram by datagram.
    pub gso: bool,
    /// Microseconds a worker relaying UDP waits before it sleeps while its wake-ups take datagrams one by one, fast
    /// enough for the wait to gather several, so that its next wake-up takes them together: less CPU per packet, at
    /// most this much added to a packet's way through the relay; never with bursts or sparse traffic, nor on a host
    /// where the waits cost more CPU than they save (`coalesce`'s `RelayNaps` and `NapCosts`). 0: off.
    pub coalesce_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub realm: String,
    pub secrets: Vec<String>,
    #[serde(with = "strings")]
    pub users: Vec<User>,
    pub nonce_lifetime: u64,
    pub credential_ttl: u64,
    /// REST credentials expiring further ahead than this many seconds are refused (0: no limit).
    pub max_credential_lifetime: u64,
}

/// A static TURN user, `name:password` in the file (the password may hold colons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
}

impl FromStr for User {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((name, password)) if !name.is_empty() => Ok(Self {
                name: name.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err(format!("{s:?} is not \"name:password\"")),
        }
    }
}

impl Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.password)
    }
}

/// Listen addresses: `IP:PORT`, or a bare port meaning every interface of both families (`3478` →
/// `0.0.0.0:3478` and `[::]:3478`, the default's form), as a string or a number.
mod listen_addrs {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(list: &[SocketAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        let mut out = Vec::new();
        for entry in Vec::<Value>::deserialize(d)? {
            let text = match &entry {
                Value::String(s) => s.trim().to_owned(),
                other => other.to_string(),
            };
            out.extend(parse(&text).map_err(D::Error::custom)?);
        }
        Ok(out)
    }

    pub fn parse(text: &str) -> Result<Vec<SocketAddr>, String> {
        let port = text.strip_prefix(':').unwrap_or(text);
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            let port: u16 = port.parse().map_err(|_| format!("{text} is not a port (1-65535)"))?;
            return Ok(vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ]);
        }
        text.parse().map(|a| vec![a]).map_err(|_| {
            format!(
                "{text:?} is not a listen address: write IP:PORT (\"0.0.0.0:3478\", \"[::]:3478\") or a port alone \
                 for every interface (3478)"
            )
        })
    }
}

/// A list written as strings in the file and parsed into `T` while deserializing, so a bad entry is an error with its
/// line rather than an entry dropped later.
mod strings {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Display>(list: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(D::Error::custom))
            .collect()
    }
}

/// An address or a list of them: `bind_v4 = "10.0.0.5"` as before lists were allowed, or `["10.0.0.5", "10.0.0.6"]`.
mod one_or_many {
    use std::fmt;
    use std::net::IpAddr;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(list: &[IpAddr], s: S) -> Result<S::Ok, S::Error> {
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
        d.deserialize_any(Addresses)
    }

    struct Addresses;

    fn parse<E: Error>(text: &str) -> Result<IpAddr, E> {
        text.parse()
            .map_err(|_| E::custom(format!("{text:?} is not an IP address")))
    }

    impl<'de> Visitor<'de> for Addresses {
        type Value = Vec<IpAddr>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an IP address or a list of them")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(vec![parse(text)?])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(text) = seq.next_element::<String>()? {
                list.push(parse(&text)?);
            }
            Ok(list)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub workers: usize,
    /// Microseconds a worker busy with signaling waits before it sleeps, so that it handles the next events as a
    /// batch (less CPU per signal; a busier worker waits up to five times this, with `signal.redis` always this;
    /// only while three sockets or more have traffic at once, never while relaying UDP; 0: off).
    pub coalesce_us: u64,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Allocations from one IPv4 address or IPv6 /64 (0: no limit).
    pub max_allocations_per_source: usize,
    /// New allocations a second from one source, after a burst of five seconds' worth (0: no limit): each binds
    /// relay sockets, however soon it ends, so a loop of Allocate and Refresh to 0 stays within the count quotas.
    pub allocations_per_second_per_source: u32,
    pub default_lifetime: u64,
    pub max_lifetime: u64,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    pub max_connections: usize,
    /// TCP/TLS/HTTP connections from one IPv4 address or IPv6 /64 (0: no limit), counted before TLS.
    pub max_connections_per_source: usize,
    /// New TCP/TLS/HTTP connections a second from one source, after a burst of five seconds' worth (0: no limit):
    /// each costs a TLS handshake, an upgrade and log lines even when the source stays within its share.
    pub connections_per_second_per_source: u32,
    /// HTTP requests a second from one source over all its connections, keep-alive ones included, after a burst of
    /// five seconds' worth (0: no limit): past it `429` and the connection is closed. A request costs about what a
    /// new connection does; below `connections_per_second_per_source`, it is the tighter of the two.
    pub requests_per_second_per_source: u32,
    pub idle_timeout: u64,
    /// Seconds what the server sent on a TCP/TLS connection may wait unacknowledged, or held back by the client's
    /// zero receive window, before the connection is dropped (TCP_USER_TIMEOUT; 0: the kernel's default, for ever
    /// behind a zero window).
    pub send_stall_timeout: u64,
    /// Seconds a TURN stream connection may go without an allocation, whatever it sends (the idle timer restarts
    /// on every byte; this deadline does not).
    pub auth_timeout: u64,
    pub reflection_bytes_per_second: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
    /// `info` lines a second, after a burst of ten seconds' worth (0: no limit); warnings, errors and debug lines
    /// always pass. Past it lines are held back and counted in a warning every 10 s.
    pub lines_per_second: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
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
            proxy_protocol: Vec::new(),
        }
    }
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            bind_v4: Vec::new(),
            bind_v6: Vec::new(),
            external_v4: Vec::new(),
            external_v6: Vec::new(),
            port_min: 49152,
            port_max: 65535,
            ipv6: true,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            bandwidth_per_allocation: 0,
            xdp: Vec::new(),
            io_uring: false,
            gso: true,
            coalesce_us: 400,
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

impl Limits {
    /// `send_stall_timeout` as the sockets take it: `None` for 0 (the kernel's default).
    pub fn send_stall(&self) -> Option<Duration> {
        (self.send_stall_timeout > 0).then(|| Duration::from_secs(self.send_stall_timeout))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            workers: 0,
            coalesce_us: 200,
            max_allocations: 10_000,
            max_allocations_per_user: 100,
            max_allocations_per_source: 2_000,
            allocations_per_second_per_source: 100,
            default_lifetime: 600,
            max_lifetime: 3600,
            max_permissions_per_allocation: 256,
            max_channels_per_allocation: 256,
            max_connections: 10_000,
            max_connections_per_source: 500,
            connections_per_second_per_source: 100,
            requests_per_second_per_source: 200,
            idle_timeout: 30,
            send_stall_timeout: 30,
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
            lines_per_second: 200,
        }
    }
}

/// The most worker threads `limits.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// Levels `log.level` names, alone or after `target=`.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `log.level` filter: a level, or comma-separated `target=level` directives with at most one bare level.
/// `tracing`'s own parser takes an unknown word as a target with every level, so `warning` or a typo would
/// silence everything: only the levels themselves are accepted.
pub fn log_filter(text: &str) -> Result<(), String> {
    for directive in text.split(',').map(str::trim) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(target, level)| if target.is_empty() { "" } else { level });
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            let hint = match level.to_ascii_lowercase().as_str() {
                "warning" => " (did you mean warn?)".to_owned(),
                _ => String::new(),
            };
            return Err(format!(
                "{directive:?} is not a level{hint}: use one of {} alone, or target=level directives separated by \
                 commas, e.g. \"info,web=debug\"",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| ())
        .map_err(|e| format!("{text:?}: {e}"))
}

/// Checks `signal.public_host`: a host name or an address, as URLs put it after `turn:` — no scheme, port or path
/// (the ports come from the listeners). An IPv6 address may come with or without brackets.
pub fn public_host(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(());
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if host.is_empty() || !host.chars().all(name_char) {
        return Err(format!(
            "{host:?} is not a host name or address: give the name alone (turn.example.com), without scheme, port \
             or path — the ports come from the listeners"
        ));
    }
    Ok(())
}

fn is_broadcast(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Listeners that would take the same port twice: TCP ones (`tcp`, `tls`, `http`, `single`, `metrics.listen`) with
/// each other, UDP ones with each other, where their addresses overlap (the same one, or a wildcard of the family).
/// Found at bind time, they would read as another program holding the port.
fn listener_clashes(listen: &Listen, metrics: Option<SocketAddr>) -> Vec<String> {
    let tcp: Vec<(&str, SocketAddr)> = [
        ("listen.tcp", &listen.tcp),
        ("listen.tls", &listen.tls),
        ("listen.http", &listen.http),
        ("listen.single", &listen.single),
    ]
    .into_iter()
    .flat_map(|(key, addrs)| addrs.iter().map(move |a| (key, *a)))
    .chain(metrics.map(|a| ("metrics.listen", a)))
    .collect();
    let udp: Vec<(&str, SocketAddr)> = listen.udp.iter().map(|a| ("listen.udp", *a)).collect();
    // Port 0 is any free port: one each.
    let overlap = |a: &SocketAddr, b: &SocketAddr| {
        a.port() != 0
            && a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    let mut clashes = Vec::new();
    for (kind, list) in [("TCP", &tcp), ("UDP", &udp)] {
        for (i, (key_a, a)) in list.iter().enumerate() {
            if let Some((key_b, b)) = list.iter().skip(i + 1).find(|(_, b)| overlap(a, b)) {
                clashes.push(format!(
                    "{key_a} {a} and {key_b} {b} are the same {kind} port: give each listener a port of its own"
                ));
            }
        }
    }
    clashes
}

/// A config error, with the line when the file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Every error of the file, one per line as `path:line:column: key: message` (the form editors jump to).
    #[error("{}", errors.iter().map(|e| format!("{}:{}:{}: {}", path.display(), e.line, e.column, e.what())).collect::<Vec<_>>().join("\n"))]
    File { path: PathBuf, errors: Vec<FileError> },
    /// A variable or a flag (`origin`: `TRAVERSE_LIMITS_MAX_CONNECTIONS`, `--set limits.max_connections=x`, `--udp`).
    #[error("{origin}: {message}")]
    Override { origin: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// One `section.key = value` from outside the file: an environment variable, an everyday flag or `--set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where it came from, named in its error.
    pub origin: String,
    /// `section.key`, as in the file.
    pub key: String,
    /// As written: a list comma-separated; typed like the key (see [`Config::set`]).
    pub value: String,
}

impl Override {
    /// `--set section.key=value`.
    pub fn from_set(arg: &str) -> Result<Self, String> {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?}: expected section.key=value, e.g. limits.max_connections=5000"))?;
        Ok(Self {
            origin: format!("--set {arg}"),
            key: key.trim().to_owned(),
            value: value.to_owned(),
        })
    }
}

impl Config {
    pub fn load(path: &PathBuf) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse_all(&text).map_err(|errors| ConfigError::File {
            path: path.clone(),
            errors,
        })
    }

    /// Parses TOML; the first error, with its line and column (see [`Config::parse_all`] for all of them).
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_all(text).map_err(|errors| errors.first().map(ToString::to_string).unwrap_or_default())
    }

    /// Parses TOML; every error, each with its line, key and the form expected (the default as an example).
    pub fn parse_all(text: &str) -> Result<Self, Vec<FileError>> {
        match Self::parse_partial(text) {
            (Some(config), errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(errors),
        }
    }

    /// Every error of the file, and the configuration its other entries make (for `check-config`, which goes on to
    /// check those).
    pub fn parse_partial(text: &str) -> (Option<Self>, Vec<FileError>) {
        let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        file_errors::parse_partial(text, |key| {
            let (section, field) = key.split_once('.')?;
            match defaults.get(section)?.get(field)? {
                Value::Null => None,
                Value::Array(a) if a.is_empty() => None,
                v => Some(v.to_string()),
            }
        })
    }

    /// Checks what types cannot: ranges and rules across keys (address blocks and users are checked while parsing).
    /// Returns every problem.
    /// The longest nap `relay.coalesce_us` and `limits.coalesce_us` take, in µs (a signaling nap grows to five times
    /// its setting).
    pub const MAX_NAP_US: u64 = 2_000;

    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key, message: String| errors.push(ConfigError::Invalid { key, message });
        for (i, server) in self.ice.extra.iter().enumerate() {
            if let Some(problem) = server.problem() {
                bad("ice.extra", format!("entry {}: {problem}", i + 1));
            }
        }
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
        // The second STUN port is a listener too: never a relay port.
        if let Some(addr) = self
            .second_stun_addresses()
            .iter()
            .find(|a| relay_ports.contains(&a.port()))
        {
            bad(
                "stun.second_port",
                format!(
                    "{} is in the relay port range {}-{} (a client could relay into the server itself): e.g. 3479, \
                     or 0 for off",
                    addr.port(),
                    self.relay.port_min,
                    self.relay.port_max
                ),
            );
        }
        // Given beside RFC 5780, which hands out a second address already, it would be dropped without a word.
        if self.stun.second_port.is_some_and(|p| p != 0) && self.stun.other_address.is_some() {
            bad(
                "stun.second_port",
                "is not served beside stun.other_address (RFC 5780 hands out a second address already): unset one"
                    .into(),
            );
        }
        // Relay addresses of their key's family, and external ones that pair with the bound ones by position.
        for (v4, (bind_key, binds), (external_key, externals)) in [
            (
                true,
                ("relay.bind_v4", &self.relay.bind_v4),
                ("relay.external_v4", &self.relay.external_v4),
            ),
            (
                false,
                ("relay.bind_v6", &self.relay.bind_v6),
                ("relay.external_v6", &self.relay.external_v6),
            ),
        ] {
            for (key, list) in [(bind_key, binds), (external_key, externals)] {
                if let Some(ip) = list.iter().find(|ip| ip.is_ipv4() != v4) {
                    bad(key, format!("{ip} is not an IPv{} address", if v4 { 4 } else { 6 }));
                }
            }
            if !externals.is_empty() && externals.len() != binds.len().max(1) {
                bad(
                    external_key,
                    format!(
                        "{} addresses for {} in {bind_key}: give one external address per bound one, in the same \
                         order (or one, with at most one bound)",
                        externals.len(),
                        binds.len()
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
        if self.auth.realm.is_empty() {
            bad("auth.realm", "must not be empty".into());
        }
        if self.limits.default_lifetime == 0 || self.limits.default_lifetime > self.limits.max_lifetime {
            bad(
                "limits.default_lifetime",
                "must be between 1 and limits.max_lifetime".into(),
            );
        }
        let s = &self.signal.limits;
        if s.max_message_bytes < 1024 || s.messages_per_second == 0 || s.burst == 0 || s.max_peers_per_room < 2 {
            bad(
                "signal",
                "max_message_bytes ≥ 1024, messages_per_second ≥ 1, burst ≥ 1 and max_peers_per_room ≥ 2".into(),
            );
        }
        if s.max_queued == 0 || s.max_queued > 65_536 {
            bad("signal.max_queued", "must be between 1 and 65536".into());
        }
        // A nap is a pause of the whole worker: milliseconds of it would hold every packet and message it serves, so
        // a value meant as milliseconds (or a typo) is refused rather than taken.
        for (key, nap) in [
            ("relay.coalesce_us", self.relay.coalesce_us),
            ("limits.coalesce_us", self.limits.coalesce_us),
        ] {
            if nap > Self::MAX_NAP_US {
                bad(
                    key,
                    format!("{nap} µs is too long: at most {} (0 turns it off)", Self::MAX_NAP_US),
                );
            }
        }
        if self.cluster.hub_shards > 64 {
            bad(
                "cluster.hub_shards",
                "must be between 0 (one per four cores) and 64".into(),
            );
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
        if s.join_timeout.is_zero() {
            bad("signal.join_timeout", "must be at least 1 s".into());
        }
        if s.heartbeat_interval.is_zero() || s.heartbeat_timeout <= s.heartbeat_interval {
            bad(
                "signal.heartbeat_timeout",
                "must be longer than signal.heartbeat_interval (≥ 1 s)".into(),
            );
        }
        if let Some(e) = self.signal.secret.as_deref().and_then(|k| short_secret(k).err()) {
            bad("signal.secret", e);
        }
        let redis_scheme = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        if let Some(url) = self.signal.redis.as_deref().filter(|u| !redis_scheme(u)) {
            let scheme = url.split_once("://").map_or(url, |(s, _)| s);
            bad(
                "signal.redis",
                format!("must be a redis:// or rediss:// (TLS) URL, not {scheme}"),
            );
        }
        if let Some(e) = self.web.admin_token.as_deref().and_then(|k| bearer_token(k).err()) {
            bad("web.admin_token", e);
        }
        if let Some(e) = self.auth.secrets.iter().find_map(|k| short_secret(k).err()) {
            bad("auth.secrets", e);
        }
        // A file named but missing fails here with a sentence rather than at the first TLS handshake.
        for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
            if let Some(Err(e)) = path.as_ref().map(std::fs::File::open) {
                bad(
                    key,
                    format!(
                        "cannot read {}: {e}",
                        path.as_ref().map_or(String::new(), |p| p.display().to_string())
                    ),
                );
            }
        }
        if let (Some(addr), None) = (self.metrics.listen, &self.metrics.token) {
            if !addr.ip().is_loopback() {
                bad(
                    "metrics.listen",
                    format!(
                        "{addr} is reachable from other hosts, and the metrics say who connects how much: set \
                         metrics.token (Prometheus then sends it as a bearer token), or listen on 127.0.0.1"
                    ),
                );
            }
        }
        if let Some(e) = self.metrics.token.as_deref().and_then(|k| bearer_token(k).err()) {
            bad("metrics.token", e);
        }
        if let Err(e) = web::AllowedOrigins::parse(&self.web.allowed_origins) {
            bad("web.allowed_origins", e.to_string());
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
        if !self.tls.domains.is_empty() {
            if self.tls.cert.is_some() {
                bad(
                    "tls.domains",
                    "a certificate comes from files (tls.cert) or from ACME (tls.domains), not both".into(),
                );
            }
            if let Some(e) = self.tls.domains.iter().find_map(|d| acme_domain(d).err()) {
                bad("tls.domains", e);
            }
            if self.listen.single.is_empty() && self.listen.http.is_empty() {
                bad(
                    "tls.domains",
                    "ACME needs listen.single on 443 (TLS-ALPN-01) or listen.http on 80 (HTTP-01) for the CA to reach"
                        .into(),
                );
            }
        }
        if let Some(Err(e)) = self.tls.acme_ca_root.as_ref().map(std::fs::File::open) {
            bad("tls.acme_ca_root", format!("cannot read it: {e}"));
        }
        match self.nat_discovery() {
            Err(e) => bad("stun.other_address", e),
            // Behind 1:1 NAT the alternate's own address is private, and only one public address is known (the
            // relay's): an alternate on another IP is named by an address no client reaches.
            Ok(Some(nat)) if nat.alternate.ip() != nat.primary.ip() && !self.relay.external_v4.is_empty() => bad(
                "stun.other_address",
                format!(
                    "{} is on another IP than the primary, which behind 1:1 NAT (relay.external_v4) no client can \
                     reach: use another port of the primary's IP, forwarded like it",
                    nat.alternate
                ),
            ),
            Ok(_) => {}
        }
        if self.limits.max_allocations == 0 {
            bad("limits.max_allocations", "must be at least 1".into());
        }
        // Zero here is not "no limit": it would refuse every connection, permission or channel, or end everything at
        // once, and a too short nonce or credential makes every Allocate fail.
        for (key, value, least, what) in [
            ("limits.max_connections", self.limits.max_connections as u64, 1, ""),
            (
                "limits.max_permissions_per_allocation",
                self.limits.max_permissions_per_allocation as u64,
                1,
                "",
            ),
            (
                "limits.max_channels_per_allocation",
                self.limits.max_channels_per_allocation as u64,
                1,
                "",
            ),
            ("limits.idle_timeout", self.limits.idle_timeout, 1, " s"),
            ("limits.auth_timeout", self.limits.auth_timeout, 1, " s"),
            ("auth.nonce_lifetime", self.auth.nonce_lifetime, 30, " s"),
            ("auth.credential_ttl", self.auth.credential_ttl, 60, " s"),
        ] {
            if value < least {
                bad(key, format!("{value}{what} is too small: at least {least}{what}"));
            }
        }
        if self.limits.workers > MAX_WORKERS {
            bad(
                "limits.workers",
                format!("must be between 0 (one per core) and {MAX_WORKERS}"),
            );
        }
        if let Err(e) = log_filter(&self.log.level) {
            bad("log.level", e);
        }
        if let Some(Err(e)) = self.signal.public_host.as_deref().map(public_host) {
            bad("signal.public_host", e);
        }
        // An address that names no host: a relay bound there, or advertised, is reachable by nobody.
        for (key, list) in [
            ("relay.bind_v4", &self.relay.bind_v4),
            ("relay.bind_v6", &self.relay.bind_v6),
            ("relay.external_v4", &self.relay.external_v4),
            ("relay.external_v6", &self.relay.external_v6),
        ] {
            if let Some(ip) = list
                .iter()
                .find(|ip| ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip))
            {
                bad(
                    key,
                    format!("{ip} is not one host's address: give the address itself (unset: the one clients reach)"),
                );
            }
        }
        for clash in listener_clashes(&self.listen, self.metrics.listen) {
            bad("listen", clash);
        }
        if let Some(dir) = self.cluster.pid_file.as_deref().and_then(std::path::Path::parent) {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                bad(
                    "cluster.pid_file",
                    format!(
                        "{} is not a directory (create it, or choose another path)",
                        dir.display()
                    ),
                );
            }
        }
        errors
    }

    /// The TURN core's configuration: lifetimes and per-allocation bounds from `[limits]`, families, bandwidth and
    /// peer policy from `[relay]`, RFC 5780 from `[stun]`. Call after [`Config::validate`].
    pub fn turn(&self) -> turn::Config {
        turn::Config {
            default_lifetime: Duration::from_secs(self.limits.default_lifetime),
            max_lifetime: Duration::from_secs(self.limits.max_lifetime),
            relay_ipv4: true,
            relay_ipv6: self.relay.ipv6,
            bandwidth_per_allocation: self.relay.bandwidth_per_allocation,
            max_permissions_per_allocation: self.limits.max_permissions_per_allocation,
            max_channels_per_allocation: self.limits.max_channels_per_allocation,
            policy: turn::policy::PeerPolicy {
                allow: self.relay.allow_peers.clone(),
                deny: self.relay.deny_peers.clone(),
            },
            reflection_bytes_per_second: self.limits.reflection_bytes_per_second,
            // Checked by `validate`.
            nat_discovery: self.nat_discovery().ok().flatten(),
            ..turn::Config::default()
        }
    }

    /// The allocation quotas for `capacity` allocations (what the descriptor limit left of `limits.max_allocations`).
    pub fn quotas(&self, capacity: usize) -> turn::Quotas {
        turn::Quotas::new(capacity, self.limits.max_allocations_per_user)
            .with_per_source(half_at_most(self.limits.max_allocations_per_source, capacity))
            .with_rate_per_source(self.limits.allocations_per_second_per_source)
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

    /// `stun.second_port`'s addresses: one per family, on the IP of that family's first `listen.udp` address
    /// (ephemeral when that one's port is and `second_port` is unset). None with `stun.other_address` set, or on a
    /// port `listen.udp` has.
    pub fn second_stun_addresses(&self) -> Vec<SocketAddr> {
        if self.stun.second_port == Some(0) || self.stun.other_address.is_some() {
            return Vec::new();
        }
        let relay = self.relay.port_min..=self.relay.port_max;
        let (mut v4, mut v6) = (false, false);
        let mut out = Vec::new();
        for primary in &self.listen.udp {
            let first = if primary.is_ipv4() { &mut v4 } else { &mut v6 };
            if std::mem::replace(first, true) {
                continue;
            }
            let port = match (primary.port(), self.stun.second_port) {
                (_, Some(port)) => Some(port),
                (0, None) => Some(0),
                // The port after, unless it is a relay port (the listeners' own range check says why).
                (primary, None) => primary.checked_add(1).filter(|p| !relay.contains(p)),
            };
            let Some(port) = port else { continue };
            let second = SocketAddr::new(primary.ip(), port);
            if port == 0 || !self.listen.udp.contains(&second) {
                out.push(second);
            }
        }
        out
    }

    /// `TRAVERSE_<SECTION>_<KEY>` for every key of the configuration (`TRAVERSE_LIMITS_MAX_CONNECTIONS`) that `var`
    /// knows; other variables are not looked at.
    pub fn env_overrides(var: impl Fn(&str) -> Option<String>) -> Vec<Override> {
        Self::keys()
            .into_iter()
            .filter_map(|key| {
                let name = format!("TRAVERSE_{}", key.replace('.', "_").to_uppercase());
                let value = var(&name)?;
                Some(Override {
                    origin: name,
                    key,
                    value,
                })
            })
            .collect()
    }

    /// Applies `overrides` in order; returns the error of each one refused (the others still apply).
    pub fn apply(&mut self, overrides: &[Override]) -> Vec<ConfigError> {
        overrides
            .iter()
            .filter_map(|o| {
                self.set(&o.key, &o.value).err().map(|message| ConfigError::Override {
                    origin: o.origin.clone(),
                    message,
                })
            })
            .collect()
    }

    /// Sets one key from text, typed like the key's current value: a number or a boolean as such, a list
    /// comma-separated (empty: none), anything else (strings, addresses, unset options) as the text it is, and an
    /// unset option that is no text as the number its digits say. The configuration goes through its own serde
    /// form, so the key and the value are checked exactly as in the file.
    pub fn set(&mut self, key: &str, text: &str) -> Result<(), String> {
        let (section, field) = key
            .split_once('.')
            .ok_or_else(|| format!("{key:?} is not section.key, e.g. limits.max_connections"))?;
        let mut tree = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let table = tree
            .as_object_mut()
            .map(|sections| sections.entry(section).or_insert_with(|| Value::Object(Map::new())))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{section} is not a section"))?;
        let unset = table.get(field).is_none_or(Value::is_null);
        let value = typed_like(table.get(field), text);
        table.insert(field.to_owned(), value);
        let parsed = match Config::deserialize(tree.clone()) {
            // An unset option has no value to type the text like: a number is tried when the text does not do (and
            // the text's own error is kept when the number does not do either).
            Err(e) if unset && text.parse::<u64>().is_ok() => {
                if let Some(table) = tree.get_mut(section).and_then(Value::as_object_mut) {
                    table.insert(field.to_owned(), typed_like(Some(&Value::from(0)), text));
                }
                Config::deserialize(tree).map_err(|_| e)
            }
            parsed => parsed,
        };
        *self = parsed.map_err(|e| file_errors::humanize(&e.to_string()))?;
        Ok(())
    }

    /// Every key, `section.key` (unset options included).
    pub fn keys() -> Vec<String> {
        let Ok(Value::Object(tree)) = serde_json::to_value(Config::default()) else {
            return Vec::new();
        };
        tree.iter()
            .filter_map(|(section, table)| Some((section, table.as_object()?)))
            .flat_map(|(section, table)| table.keys().map(move |key| format!("{section}.{key}")))
            .collect()
    }
}

/// The fewest characters a secret may have (TURN REST secret, join-token secret, admin token): a shorter HMAC key
/// falls to an offline search from one captured credential or token.
pub const MIN_SECRET_LEN: usize = 16;

/// Refuses a secret shorter than [`MIN_SECRET_LEN`], with the sentence to show.
/// A bearer token (`web.admin_token`, `metrics.token`): a secret, without white space around it — it is compared
/// exactly, and the dashboard and scrapers trim what they send.
pub fn bearer_token(token: &str) -> Result<(), String> {
    if token.trim() != token {
        return Err("it starts or ends with white space, which clients trim: remove it".to_owned());
    }
    short_secret(token)
}

/// At least [`MIN_SECRET_LEN`] characters that are not white space (spaces add no strength).
pub fn short_secret(secret: &str) -> Result<(), String> {
    match secret.chars().filter(|c| !c.is_whitespace()).count() {
        n if n < MIN_SECRET_LEN => Err(format!(
            "a secret of {n} characters is too short: use at least {MIN_SECRET_LEN} (e.g. `openssl rand -base64 24`)"
        )),
        _ => Ok(()),
    }
}

/// A per-source limit never above half the capacity, so one source always leaves room for the others — also when the
/// descriptor limit cut the capacity below the configured per-source limit. 0 (no limit) stays 0.
pub fn half_at_most(per_source: usize, capacity: usize) -> usize {
    match per_source {
        0 => 0,
        n => n.min((capacity / 2).max(1)),
    }
}

/// Text from a variable or a flag as the JSON value of a key whose current value is `current`.
fn typed_like(current: Option<&Value>, text: &str) -> Value {
    match current {
        Some(Value::Bool(_)) => text.parse().map_or_else(|_| Value::from(text), Value::Bool),
        Some(Value::Number(_)) => text
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| text.parse::<i64>().map(Value::from))
            .unwrap_or_else(|_| Value::from(text)),
        // A list of tables (`ice.extra`) is written as JSON; anything else that starts with `[` (`[::]:3478`) is a
        // comma-separated list like the rest.
        Some(Value::Array(_)) if serde_json::from_str::<Vec<Value>>(text).is_ok() => {
            serde_json::from_str(text).unwrap_or_default()
        }
        Some(Value::Array(_)) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Value::from)
            .collect(),
        _ => Value::from(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../traverse.example.toml");

    /// Spaces are no strength, and a token with spaces around it could never be sent: the dashboard and scrapers
    /// trim what they send, and the server compares exactly.
    #[test]
    fn secrets_count_what_is_not_white_space_and_tokens_have_none_around_them() {
        assert!(short_secret(&format!("{}x", " ".repeat(15))).is_err());
        assert!(short_secret("0123456789abcdef").is_ok());
        assert!(bearer_token("0123456789abcdef").is_ok());
        assert!(bearer_token(" 0123456789abcdef").is_err());
        assert!(bearer_token("0123456789abcdef\n").is_err());
        let mut config = Config::default();
        config.set("metrics.token", "0123456789abcdef ").expect("set");
        let errors: Vec<String> = config.validate().iter().map(|e| e.to_string()).collect();
        let errors = errors.join("\n");
        assert!(
            errors.contains("metrics.token") && errors.contains("white space"),
            "{errors}"
        );
    }

    /// A list of tables goes on the command line as JSON; a list whose first item starts with `[` (an IPv6 listen
    /// address) is still comma-separated.
    #[test]
    fn lists_on_the_command_line_take_json_tables_and_bracketed_addresses() {
        let mut config = Config::default();
        config.set("listen.udp", "[::]:3478,0.0.0.0:3478").expect("addresses");
        assert_eq!(
            config.listen.udp,
            vec![
                SocketAddr::from(([0u16; 8], 3478)),
                SocketAddr::from(([0, 0, 0, 0], 3478))
            ]
        );
        config
            .set("ice.extra", r#"[{"urls":["stun:stun.example.com:3478"]}]"#)
            .expect("a JSON list of tables");
        assert_eq!(config.ice.extra.len(), 1);
        assert_eq!(config.ice.extra[0].urls, ["stun:stun.example.com:3478"]);
    }

    #[test]
    fn extra_ice_servers_are_checked() {
        let entry = |urls: &[&str], username: Option<&str>, credential: Option<&str>, secret: Option<&str>| {
            ExtraIceServer {
                urls: urls.iter().map(|u| (*u).to_owned()).collect(),
                username: username.map(str::to_owned),
                credential: credential.map(str::to_owned),
                secret: secret.map(str::to_owned),
            }
            .problem()
        };
        assert_eq!(entry(&["stun:stun.example.com:3478"], None, None, None), None);
        assert_eq!(entry(&["turn:t.example.com:3478"], Some("u"), Some("p"), None), None);
        assert_eq!(
            entry(
                &["turns:t.example.com:443?transport=tcp"],
                None,
                None,
                Some("0123456789abcdef")
            ),
            None
        );
        for (bad, why) in [
            (entry(&[], None, None, None), "without urls"),
            (entry(&["http://t.example.com"], None, None, None), "is not a stun:"),
            (entry(&["turn:"], Some("u"), Some("p"), None), "is not a stun:"),
            (
                entry(&["turn:t.example.com"], None, None, None),
                "needs username and credential, or secret",
            ),
            (entry(&["turn:t.example.com"], Some("u"), None, None), "go together"),
            (
                entry(&["turn:t.example.com"], Some("u"), Some("p"), Some("0123456789abcdef")),
                "both",
            ),
            (entry(&["turn:t.example.com"], None, None, Some("short")), "too short"),
        ] {
            assert!(
                bad.as_deref().is_some_and(|b| b.contains(why)),
                "{bad:?} should say {why:?}"
            );
        }
    }

    #[test]
    fn example_config_parses_and_validates() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
    }

    /// The example shows every option with its default: what it sets is the default, every key appears in it (set
    /// or as a commented `# key = …`), and every commented example is a valid value of a real key.
    #[test]
    fn example_config_is_the_defaults_and_names_every_key() {
        assert_eq!(Config::parse(EXAMPLE).unwrap(), Config::default());
        let mut section = String::new();
        let mut shown = Vec::new();
        for line in EXAMPLE.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (commented, line) = match line.strip_prefix('#') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, line),
            };
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                continue;
            }
            if commented {
                let text = format!("[{section}]\n{line}\n");
                assert!(Config::parse(&text).is_ok(), "{text}: {:?}", Config::parse(&text));
            }
            shown.push(format!("{section}.{key}"));
        }
        for key in Config::keys() {
            assert!(shown.contains(&key), "{key} is missing from traverse.example.toml");
        }
        for key in &shown {
            assert!(
                Config::keys().contains(key),
                "traverse.example.toml shows {key}, which is no option"
            );
        }
    }

    /// The defaults the hub crate owns reach `[signal]` unchanged, except the total budget: 0, sized from memory.
    #[test]
    fn signal_section_embeds_the_hub_limits() {
        let limits = Config::default().signal.limits;
        assert_eq!(limits.max_total_bytes, 0);
        let hub = signal::Limits::default();
        assert_eq!(
            limits,
            signal::Limits {
                max_total_bytes: 0,
                ..hub
            }
        );
        let config = Config::parse("[signal]\nheartbeat_interval = 7\nburst = 3\npublic_host = \"h\"\n").unwrap();
        assert_eq!(
            config.signal.limits.heartbeat_interval,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(config.signal.limits.burst, 3);
        assert_eq!(config.signal.limits.max_total_bytes, 0);
        assert_eq!(config.signal.public_host.as_deref(), Some("h"));
        // Keys the hub does not offer are refused like any unknown key, with the line.
        let err = Config::parse("[signal]\nburst = 3\nmax_errors = 1\n").unwrap_err();
        assert!(
            err.starts_with("line 3") && err.contains("unknown field `max_errors`"),
            "{err}"
        );
        let err = Config::parse("[signal]\n\nresume_grace = \"x\"\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
    }

    #[test]
    fn errors_name_the_line() {
        let err = Config::parse("[relay]\nport_min = 1\nport_max = \"x\"\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = Config::parse("[relay]\nnonsense = 1\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_blocks_and_users_are_refused_while_parsing() {
        let err = Config::parse("[relay]\n\nallow_peers = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n").unwrap_err();
        assert!(err.starts_with("line 3") && err.contains("10.0.0.0/99"), "{err}");
        let err = Config::parse("[relay]\ndeny_peers = [\"nonsense\"]\n").unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
        let err = Config::parse("[auth]\nusers = [\"nopassword\"]\n").unwrap_err();
        assert!(err.contains(r#""nopassword" is not "name:password""#), "{err}");
        assert!(Config::parse("[auth]\nusers = [\":pw\"]\n").is_err());
        let config = Config::parse("[auth]\nusers = [\"a:b:c\"]\n[relay]\nallow_peers = [\"127.0.0.0/8\"]\n").unwrap();
        let user = &config.auth.users[0];
        assert_eq!((user.name.as_str(), user.password.as_str()), ("a", "b:c"));
        assert_eq!(config.relay.allow_peers, vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn validation_finds_semantic_errors() {
        let config = Config::parse(
            "[relay]\nport_min = 9000\nport_max = 8000\n[auth]\nrealm = \"\"\n[cluster]\nhub_shards = 65\n",
        )
        .unwrap();
        let errors = config.validate();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(format!("{errors:?}").contains("cluster.hub_shards"), "{errors:?}");
    }

    /// The keys of the errors `text` (a config file) gets from `validate`, with their messages.
    fn invalid(text: &str) -> Vec<(&'static str, String)> {
        Config::parse(text)
            .unwrap()
            .validate()
            .into_iter()
            .filter_map(|e| match e {
                ConfigError::Invalid { key, message } => Some((key, message)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn values_that_would_break_every_client_are_refused() {
        for (text, key) in [
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            (
                "[limits]\nmax_permissions_per_allocation = 0",
                "limits.max_permissions_per_allocation",
            ),
            (
                "[limits]\nmax_channels_per_allocation = 0",
                "limits.max_channels_per_allocation",
            ),
            ("[limits]\nidle_timeout = 0", "limits.idle_timeout"),
            ("[limits]\nauth_timeout = 0", "limits.auth_timeout"),
            ("[limits]\nworkers = 4000000000", "limits.workers"),
            ("[auth]\nnonce_lifetime = 0", "auth.nonce_lifetime"),
            ("[auth]\ncredential_ttl = 10", "auth.credential_ttl"),
            ("[relay]\nbind_v4 = \"0.0.0.0\"", "relay.bind_v4"),
            ("[relay]\nexternal_v4 = \"255.255.255.255\"", "relay.external_v4"),
            ("[relay]\nbind_v6 = \"ff02::1\"", "relay.bind_v6"),
            (
                "[cluster]\npid_file = \"/nonexistent-dir/traverse.pid\"",
                "cluster.pid_file",
            ),
        ] {
            let errors = invalid(text);
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            assert_eq!(errors[0].0, key, "{text}: {errors:?}");
        }
        assert!(invalid("[cluster]\npid_file = \"traverse.pid\"\n[limits]\nworkers = 64").is_empty());
    }

    #[test]
    fn an_alternate_on_another_ip_is_refused_behind_one_to_one_nat() {
        let base = "[listen]\nudp = [\"10.0.0.5:3478\"]\n[relay]\nexternal_v4 = \"203.0.113.5\"\n[stun]\n";
        let errors = invalid(&format!("{base}other_address = \"10.0.0.6:3479\""));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "stun.other_address");
        assert!(
            invalid(&format!("{base}other_address = \"10.0.0.5:3479\"")).is_empty(),
            "another port is fine"
        );
    }

    #[test]
    fn a_log_level_must_name_levels() {
        for level in [
            "info",
            "WARN",
            "off",
            "info,web=debug,turn::server=trace",
            "web[conn]=debug",
        ] {
            assert_eq!(log_filter(level), Ok(()), "{level}");
        }
        // `tracing` would take each of these as a target with every level, and log nothing else.
        for level in ["warning", "debg", "info,web=verbose", "=debug", "", "info, web=debug"] {
            assert!(log_filter(level).is_err(), "{level}");
        }
        assert!(log_filter("warning").unwrap_err().contains("did you mean warn?"));
        let errors = invalid("[log]\nlevel = \"debg\"");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "log.level");
    }

    #[test]
    fn a_public_host_is_a_name_or_an_address_alone() {
        for host in [
            "turn.example.com",
            "198.51.100.7",
            "2001:db8::1",
            "[2001:db8::1]",
            "my_host",
        ] {
            assert_eq!(public_host(host), Ok(()), "{host}");
        }
        for host in [
            "https://turn.example.com:443/",
            "turn.example.com:3478",
            "a b",
            "",
            "[turn.example.com]",
        ] {
            assert!(public_host(host).is_err(), "{host}");
        }
    }

    #[test]
    fn listeners_on_the_same_port_are_refused_before_binding() {
        assert!(
            listener_clashes(&Listen::default(), None).is_empty(),
            "IPv4 and IPv6 wildcards of one port"
        );
        let clash = |text: &str| {
            let config = Config::parse(text).unwrap();
            listener_clashes(&config.listen, config.metrics.listen)
        };
        let found = clash("[listen]\ntcp = [\"127.0.0.1:3478\"]\nhttp = [\"127.0.0.1:3478\"]");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("listen.tcp 127.0.0.1:3478 and listen.http 127.0.0.1:3478 are the same TCP"));
        let found = clash("[listen]\nhttp = [\"0.0.0.0:8080\"]\n[metrics]\nlisten = \"127.0.0.1:8080\"");
        assert_eq!(found.len(), 1, "a wildcard takes the port on every address: {found:?}");
        assert!(clash("[listen]\nudp = [\"127.0.0.1:3478\", \"127.0.0.1:3478\"]")[0].contains("UDP"));
        assert!(clash("[listen]\nhttp = [\"127.0.0.1:8080\", \"127.0.0.2:8080\"]").is_empty());
        assert!(
            clash("[listen]\ntcp = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:0\"]").is_empty(),
            "any free port"
        );
        assert!(clash("[listen]\nudp = [\"0.0.0.0:3478\"]\ntcp = [\"0.0.0.0:3478\"]").is_empty());
    }

    #[test]
    fn naps_longer_than_two_milliseconds_are_refused() {
        let errors = Config::parse("[relay]\ncoalesce_us = 400000\n[limits]\ncoalesce_us = 2001\n")
            .unwrap()
            .validate();
        assert_eq!(errors.len(), 2, "{errors:?}");
        let text = format!("{errors:?}");
        assert!(
            text.contains("relay.coalesce_us") && text.contains("400000 µs is too long"),
            "{text}"
        );
        assert!(text.contains("limits.coalesce_us"), "{text}");
        let edge = Config::parse("[relay]\ncoalesce_us = 2000\n[limits]\ncoalesce_us = 0\n").unwrap();
        assert!(edge.validate().is_empty(), "{:?}", edge.validate());
    }

    #[test]
    fn relay_addresses_are_one_or_a_list_and_externals_pair_with_them() {
        // One address, as before lists: still read.
        let one = Config::parse("[relay]\nbind_v4 = \"10.0.0.5\"\nexternal_v4 = \"203.0.113.5\"\n").unwrap();
        assert_eq!(one.relay.bind_v4, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(one.relay.external_v4, vec!["203.0.113.5".parse::<IpAddr>().unwrap()]);
        assert!(one.validate().is_empty(), "{:?}", one.validate());
        // A list, paired by position; one external address with no bound one (1:1 NAT) as before.
        let two = Config::parse(
            "[relay]\nbind_v4 = [\"10.0.0.5\", \"10.0.0.6\"]\nexternal_v4 = [\"203.0.113.5\", \"203.0.113.6\"]\n\
             external_v6 = \"2001:db8::5\"\n",
        )
        .unwrap();
        assert_eq!(two.relay.bind_v4.len(), 2);
        assert!(two.validate().is_empty(), "{:?}", two.validate());
        // Flags and variables give lists comma-separated.
        let mut set = Config::default();
        let errors = set.apply(&[Override::from_set("relay.bind_v4=127.0.0.2, 127.0.0.3").unwrap()]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(set.relay.bind_v4, two_loopbacks());
        // Externals that cannot pair, and addresses of the other family, are refused with their key.
        let bad = Config::parse(
            "[relay]\nbind_v4 = [\"10.0.0.5\", \"10.0.0.6\"]\nexternal_v4 = \"203.0.113.5\"\nbind_v6 = \"10.0.0.7\"\n",
        )
        .unwrap()
        .validate();
        let text = format!("{bad:?}");
        assert_eq!(bad.len(), 2, "{text}");
        assert!(
            text.contains("relay.external_v4") && text.contains("1 addresses for 2"),
            "{text}"
        );
        assert!(
            text.contains("relay.bind_v6") && text.contains("10.0.0.7 is not an IPv6 address"),
            "{text}"
        );
        let err = Config::parse("[relay]\nbind_v4 = [\"10.0.0.5\", \"not an address\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("\"not an address\" is not an IP address"),
            "{err}"
        );
    }

    fn two_loopbacks() -> Vec<IpAddr> {
        vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()]
    }

    #[test]
    fn overrides_reach_every_key_typed_like_it() {
        let mut config = Config::default();
        let set = |arg: &str| Override::from_set(arg).unwrap();
        let errors = config.apply(&[
            set("limits.max_connections=5000"),
            set("relay.ipv6=false"),
            set("relay.deny_peers=10.0.0.0/8, 192.168.0.0/16"),
            set("listen.single="),
            set("signal.heartbeat_interval=7"),
            set("signal.public_host=turn.example.com"),
            set("auth.realm=12345"),
            set("web.data_dir=/tmp/reports"),
            set("stun.other_address=127.0.0.2:3479"),
            set("log.format=json"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.limits.max_connections, 5000);
        assert!(!config.relay.ipv6);
        assert_eq!(config.relay.deny_peers.len(), 2);
        assert!(config.listen.single.is_empty());
        assert_eq!(config.signal.limits.heartbeat_interval.as_secs(), 7);
        assert_eq!(config.signal.public_host.as_deref(), Some("turn.example.com"));
        assert_eq!(config.auth.realm, "12345");
        assert_eq!(config.web.data_dir, Some(PathBuf::from("/tmp/reports")));
        assert_eq!(config.stun.other_address, Some("127.0.0.2:3479".parse().unwrap()));
        // An unset number (`Option<u16>`) is set from text too, and a string option keeps digits as text.
        assert!(config.set("stun.second_port", "0").is_ok());
        assert_eq!(config.stun.second_port, Some(0));
        assert!(config.set("stun.second_port", "x").is_err());
        // Digits for an unset option that is not a number: the error is the text's, not "invalid type: integer".
        let e = config.set("metrics.listen", "9464").unwrap_err();
        assert!(!e.contains("integer"), "{e}");
        let mut fresh = Config::default();
        assert!(fresh.set("tls.acme_email", "12345").is_ok());
        assert_eq!(fresh.tls.acme_email.as_deref(), Some("12345"));
        assert_eq!(config.log.format, LogFormat::Json);
        // Untouched keys keep their values through the round trip.
        let mut expected = Config::default();
        expected.limits.max_connections = 5000;
        assert_eq!(config.listen.udp, expected.listen.udp);
        assert_eq!(config.signal.limits.max_total_bytes, 0);
    }

    #[test]
    fn every_bad_override_is_reported_with_its_origin() {
        let mut config = Config::default();
        let errors: Vec<String> = config
            .apply(&[
                Override::from_set("limits.max_conections=5").unwrap(),
                Override::from_set("limits.max_connections=many").unwrap(),
                Override::from_set("relay.allow_peers=10.0.0.0/99").unwrap(),
                Override::from_set("nosuch.key=1").unwrap(),
                Override::from_set("limits.workers=3").unwrap(),
            ])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].starts_with("--set limits.max_conections=5: unknown field"),
            "{errors:?}"
        );
        assert!(errors[1].contains("many"), "{errors:?}");
        assert!(errors[2].contains("10.0.0.0/99"), "{errors:?}");
        assert!(errors[3].contains("unknown field `nosuch`"), "{errors:?}");
        assert_eq!(config.limits.workers, 3, "a good override after bad ones still applies");
        assert!(Override::from_set("limits.workers").is_err());
    }

    #[test]
    fn every_key_has_a_variable() {
        let vars = [
            ("TRAVERSE_LIMITS_MAX_CONNECTIONS", "5000"),
            ("TRAVERSE_SIGNAL_RESUME_GRACE", "2"),
            ("TRAVERSE_TLS_CERT", "c.pem"),
            ("TRAVERSE_BIN", "x"),
            ("TRAVERSE_MAX_CONNECTIONS", "1"),
        ];
        let overrides =
            Config::env_overrides(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()));
        let keys: Vec<&str> = overrides.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys.len(), 3, "{overrides:?}");
        for key in ["limits.max_connections", "signal.resume_grace", "tls.cert"] {
            assert!(keys.contains(&key), "{key}: {overrides:?}");
        }
        let mut config = Config::default();
        assert!(config.apply(&overrides).is_empty());
        assert_eq!(config.signal.limits.resume_grace.as_secs(), 2);
        assert!(
            Config::keys().contains(&"tls.cert".to_owned()),
            "unset options are keys too"
        );
    }

    #[test]
    fn a_public_metrics_address_needs_a_token() {
        let parse = |text: &str| Config::parse(text).unwrap().validate();
        assert!(parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").is_empty());
        assert!(parse("[metrics]\nlisten = \"[::1]:9464\"\n").is_empty());
        let errors = parse("[metrics]\nlisten = \"0.0.0.0:9464\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().starts_with("metrics.listen: 0.0.0.0:9464"),
            "{errors:?}"
        );
        assert!(parse("[metrics]\nlisten = \"0.0.0.0:9464\"\ntoken = \"0123456789abcdef\"\n").is_empty());
        assert_eq!(
            parse("[metrics]\nlisten = \"0.0.0.0:9464\"\ntoken = \"short\"\n").len(),
            1
        );
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

    #[test]
    fn the_second_stun_port_sits_beside_each_familys_first_udp_listener() {
        let parse = |text: &str| Config::parse(text).unwrap();
        let addrs = |text: &str| -> Vec<String> {
            parse(text)
                .second_stun_addresses()
                .iter()
                .map(|a| a.to_string())
                .collect()
        };
        let defaults = Config::default();
        let want: Vec<String> = defaults
            .listen
            .udp
            .iter()
            .map(|a| SocketAddr::new(a.ip(), 3479).to_string())
            .collect();
        assert_eq!(addrs(""), want, "on by default, on 3479");
        assert_eq!(
            addrs("[listen]\nudp = [\"127.0.0.1:40000\"]\n"),
            ["127.0.0.1:40001"],
            "the port after"
        );
        assert!(
            addrs("[listen]\nudp = [\"127.0.0.1:65535\"]\n").is_empty(),
            "no port after 65535"
        );
        assert_eq!(
            addrs("[listen]\nudp = [\"127.0.0.1:3478\", \"127.0.0.2:3478\", \"[::1]:3478\"]\n"),
            ["127.0.0.1:3479", "[::1]:3479"]
        );
        // Tests and ephemeral deployments: a second ephemeral port, never a fixed one two runs would fight over.
        assert_eq!(addrs("[listen]\nudp = [\"127.0.0.1:0\"]\n"), ["127.0.0.1:0"]);
        let explicit = "[listen]\nudp = [\"127.0.0.1:0\"]\n[stun]\nsecond_port = 5000\n";
        assert_eq!(
            addrs(explicit),
            ["127.0.0.1:5000"],
            "an explicit port is taken as given"
        );
        assert_eq!(
            addrs("[listen]\nudp = [\"127.0.0.1:3478\"]\n[stun]\nsecond_port = 5000\n"),
            ["127.0.0.1:5000"]
        );
        assert!(addrs("[listen]\nudp = [\"127.0.0.1:3478\"]\n[stun]\nsecond_port = 0\n").is_empty());
        assert!(
            addrs("[listen]\nudp = [\"127.0.0.1:3478\", \"127.0.0.1:3479\"]\n").is_empty(),
            "already a listener"
        );
        assert!(addrs("[listen]\nudp = []\n").is_empty());
        let rfc5780 = "[listen]\nudp = [\"127.0.0.1:3478\"]\n[stun]\nother_address = \"127.0.0.2:3479\"\n";
        assert!(addrs(rfc5780).is_empty(), "RFC 5780 hands out a second address already");
        assert!(
            parse(&format!("{rfc5780}second_port = 5000\n")).validate().len() == 1,
            "said, not dropped"
        );
        // Never a relay port: the unset one is left out, an explicit one refused.
        assert!(addrs("[listen]\nudp = [\"127.0.0.1:49151\"]\n").is_empty());
        let in_range = parse("[listen]\nudp = [\"127.0.0.1:3478\"]\n[stun]\nsecond_port = 50000\n").validate();
        assert_eq!(in_range.len(), 1, "{in_range:?}");
        assert!(in_range[0]
            .to_string()
            .starts_with("stun.second_port: 50000 is in the relay port range"));
    }
}
