//! `traverse`: signaling, STUN and TURN from one binary.

mod config;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use rand::RngCore;
use serde_json::json;

use config::{Config, LogFormat};

/// jemalloc, with its background thread purging freed pages (10 s decay): after the signaling attack of issue 7
/// (3 sources, 58 MiB over the start at its peak) RSS came back to +0 MiB within 12 s; glibc's malloc stayed 9 MiB
/// above the start for good (fragmented arenas), and mimalloc's defaults kept 53-58 MiB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "traverse",
    version,
    about = "Gets two WebRTC peers connected: signaling over WebSocket, STUN, and TURN over UDP, TCP and TLS — on one port if need be."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the STUN/TURN server. With no options: UDP/TCP 3478 and TLS 5349 on all interfaces, a generated shared
    /// secret and a self-signed certificate; prints a ready `iceServers` JSON.
    Serve(Box<ServeArgs>),
    /// Mint a time-limited TURN credential (TURN REST API: username `expiry:user`, password HMAC-SHA1).
    Credentials(CredentialArgs),
    /// Mint a join token (HS256 JWT) for the signaling server's `signal.secret`.
    Token(TokenArgs),
    /// Diagnose this network against a Traverse server: signaling, STUN, TURN per transport, NAT behaviour, relay
    /// quality — and say in plain words what works and what to do. Exit 0: something works; 2: nothing does.
    Doctor(Box<doctor::Args>),
    /// Check a configuration file and report every error with its line.
    CheckConfig {
        /// The file to check.
        #[arg(env = "TRAVERSE_CONFIG")]
        path: PathBuf,
    },
}

/// Every file option also as a flag and a `TRAVERSE_*` variable; flags win over the file.
#[derive(Args, Debug, Default)]
struct ServeArgs {
    /// Configuration file (TOML); see traverse.example.toml.
    #[arg(long, short, env = "TRAVERSE_CONFIG")]
    config: Option<PathBuf>,
    /// UDP listen addresses [listen.udp].
    #[arg(long, env = "TRAVERSE_UDP", value_delimiter = ',')]
    udp: Option<Vec<SocketAddr>>,
    /// TCP listen addresses [listen.tcp].
    #[arg(long, env = "TRAVERSE_TCP", value_delimiter = ',')]
    tcp: Option<Vec<SocketAddr>>,
    /// TLS listen addresses [listen.tls].
    #[arg(long, env = "TRAVERSE_TLS", value_delimiter = ',')]
    tls: Option<Vec<SocketAddr>>,
    /// PEM certificate chain [tls.cert]; without it a self-signed certificate is generated.
    #[arg(long, env = "TRAVERSE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key [tls.key].
    #[arg(long, env = "TRAVERSE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Address IPv4 relay sockets bind to [relay.bind_v4]; default: the address the client reached.
    #[arg(long, env = "TRAVERSE_RELAY_BIND_V4")]
    relay_bind_v4: Option<IpAddr>,
    /// Address IPv6 relay sockets bind to [relay.bind_v6].
    #[arg(long, env = "TRAVERSE_RELAY_BIND_V6")]
    relay_bind_v6: Option<IpAddr>,
    /// Public IPv4 address advertised for relays behind 1:1 NAT [relay.external_v4].
    #[arg(long, env = "TRAVERSE_EXTERNAL_V4")]
    external_v4: Option<IpAddr>,
    /// Public IPv6 address advertised for relays [relay.external_v6].
    #[arg(long, env = "TRAVERSE_EXTERNAL_V6")]
    external_v6: Option<IpAddr>,
    /// Relay port range MIN-MAX [relay.port_min, relay.port_max].
    #[arg(long, env = "TRAVERSE_RELAY_PORTS", value_parser = parse_range)]
    relay_ports: Option<(u16, u16)>,
    /// Offer IPv6 relays [relay.ipv6].
    #[arg(long, env = "TRAVERSE_RELAY_IPV6")]
    relay_ipv6: Option<bool>,
    /// Peer address blocks always allowed, e.g. 127.0.0.0/8 in a lab [relay.allow_peers].
    #[arg(long = "allow-peer", env = "TRAVERSE_ALLOW_PEERS", value_delimiter = ',')]
    allow_peers: Option<Vec<String>>,
    /// Peer address blocks refused on top of the built-in reserved ranges [relay.deny_peers].
    #[arg(long = "deny-peer", env = "TRAVERSE_DENY_PEERS", value_delimiter = ',')]
    deny_peers: Option<Vec<String>>,
    /// Bytes per second each allocation may relay per direction, 0 for no cap [relay.bandwidth_per_allocation].
    #[arg(long, env = "TRAVERSE_BANDWIDTH")]
    bandwidth: Option<u64>,
    /// Authentication realm [auth.realm].
    #[arg(long, env = "TRAVERSE_REALM")]
    realm: Option<String>,
    /// TURN REST shared secrets; all are accepted, the first mints [auth.secrets].
    #[arg(long = "secret", env = "TRAVERSE_SECRETS", value_delimiter = ',')]
    secrets: Option<Vec<String>>,
    /// Static users as name:password [auth.users].
    #[arg(long = "user", env = "TRAVERSE_USERS", value_delimiter = ',')]
    users: Option<Vec<String>>,
    /// Seconds a nonce stays valid [auth.nonce_lifetime].
    #[arg(long, env = "TRAVERSE_NONCE_LIFETIME")]
    nonce_lifetime: Option<u64>,
    /// Seconds a minted credential stays valid [auth.credential_ttl].
    #[arg(long, env = "TRAVERSE_CREDENTIAL_TTL")]
    credential_ttl: Option<u64>,
    /// Worker threads, 0 for one per core [limits.workers].
    #[arg(long, env = "TRAVERSE_WORKERS")]
    workers: Option<usize>,
    /// Allocations held at once [limits.max_allocations].
    #[arg(long, env = "TRAVERSE_MAX_ALLOCATIONS")]
    max_allocations: Option<usize>,
    /// Allocations per user, 0 for no limit [limits.max_allocations_per_user].
    #[arg(long, env = "TRAVERSE_MAX_ALLOCATIONS_PER_USER")]
    max_allocations_per_user: Option<usize>,
    /// Allocations per IPv4 address or IPv6 /64, 0 for no limit [limits.max_allocations_per_source].
    #[arg(long, env = "TRAVERSE_MAX_ALLOCATIONS_PER_SOURCE")]
    max_allocations_per_source: Option<usize>,
    /// Allocation lifetime granted by default, seconds [limits.default_lifetime].
    #[arg(long, env = "TRAVERSE_DEFAULT_LIFETIME")]
    default_lifetime: Option<u64>,
    /// Longest allocation lifetime granted, seconds [limits.max_lifetime].
    #[arg(long, env = "TRAVERSE_MAX_LIFETIME")]
    max_lifetime: Option<u64>,
    /// Permissions per allocation [limits.max_permissions_per_allocation].
    #[arg(long, env = "TRAVERSE_MAX_PERMISSIONS")]
    max_permissions: Option<usize>,
    /// TCP/TLS connections held at once [limits.max_connections].
    #[arg(long, env = "TRAVERSE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// TCP/TLS/HTTP connections per IPv4 address or IPv6 /64, 0 for no limit [limits.max_connections_per_source].
    #[arg(long, env = "TRAVERSE_MAX_CONNECTIONS_PER_SOURCE")]
    max_connections_per_source: Option<usize>,
    /// Seconds a TURN TCP/TLS connection may go without an allocation, whatever it sends [limits.auth_timeout].
    #[arg(long, env = "TRAVERSE_AUTH_TIMEOUT")]
    auth_timeout: Option<u64>,
    /// Seconds before a TCP/TLS connection without an allocation is closed [limits.idle_timeout].
    #[arg(long, env = "TRAVERSE_IDLE_TIMEOUT")]
    idle_timeout: Option<u64>,
    /// Bytes per second by which unauthenticated UDP answers may exceed their requests, per source IP; 0 for no
    /// guard [limits.reflection_bytes_per_second].
    #[arg(long, env = "TRAVERSE_REFLECTION_BYTES_PER_SECOND")]
    reflection_bytes_per_second: Option<u32>,
    /// Plain HTTP listen addresses: signaling, SDK, demo [listen.http].
    #[arg(long, env = "TRAVERSE_HTTP", value_delimiter = ',')]
    http: Option<Vec<SocketAddr>>,
    /// Single-port listen addresses: TLS (HTTPS/WSS or TURN), TURN over TCP, HTTP redirect [listen.single].
    #[arg(
        long = "single-port",
        visible_alias = "mux",
        env = "TRAVERSE_SINGLE_PORT",
        value_delimiter = ','
    )]
    single: Option<Vec<SocketAddr>>,
    /// Host put in the iceServers handed to peers [signal.public_host].
    #[arg(long, env = "TRAVERSE_PUBLIC_HOST")]
    public_host: Option<String>,
    /// HS256 secret for join tokens; unset: rooms are open [signal.secret].
    #[arg(long, env = "TRAVERSE_SIGNAL_SECRET")]
    signal_secret: Option<String>,
    /// Largest signaling frame, bytes [signal.max_message_bytes].
    #[arg(long, env = "TRAVERSE_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Signaling messages per second per socket [signal.messages_per_second].
    #[arg(long, env = "TRAVERSE_MESSAGES_PER_SECOND")]
    messages_per_second: Option<u32>,
    /// Burst of signaling messages allowed above the rate [signal.burst].
    #[arg(long, env = "TRAVERSE_BURST")]
    burst: Option<u32>,
    /// Peers per room [signal.max_peers_per_room].
    #[arg(long, env = "TRAVERSE_MAX_PEERS_PER_ROOM")]
    max_peers_per_room: Option<usize>,
    /// Rooms held at once [signal.max_rooms].
    #[arg(long, env = "TRAVERSE_MAX_ROOMS")]
    max_rooms: Option<usize>,
    /// Signaling sockets per client IP [signal.max_connections_per_ip].
    #[arg(long, env = "TRAVERSE_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Messages queued for a disconnected peer [signal.max_queued].
    #[arg(long, env = "TRAVERSE_MAX_QUEUED")]
    max_queued: Option<usize>,
    /// Bytes kept for one signaling session [signal.max_session_bytes].
    #[arg(long, env = "TRAVERSE_MAX_SESSION_BYTES")]
    max_session_bytes: Option<usize>,
    /// Bytes kept for the signaling sessions of one IPv4 address or IPv6 /64 [signal.max_source_bytes].
    #[arg(long, env = "TRAVERSE_MAX_SOURCE_BYTES")]
    max_source_bytes: Option<usize>,
    /// Bytes kept for all signaling sessions, 0 for an eighth of memory (64 MiB to 1 GiB) [signal.max_total_bytes].
    #[arg(long, env = "TRAVERSE_MAX_TOTAL_BYTES")]
    max_total_bytes: Option<usize>,
    /// Seconds between heartbeats [signal.heartbeat_interval].
    #[arg(long, env = "TRAVERSE_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<u64>,
    /// Seconds of silence before a socket counts as dead [signal.heartbeat_timeout].
    #[arg(long, env = "TRAVERSE_HEARTBEAT_TIMEOUT")]
    heartbeat_timeout: Option<u64>,
    /// Seconds a dropped peer keeps its place for a resume [signal.resume_grace].
    #[arg(long, env = "TRAVERSE_RESUME_GRACE")]
    resume_grace: Option<u64>,
    /// Directory for reports shared from /check [web.data_dir].
    #[arg(long, env = "TRAVERSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bearer token for the operator's report list, GET /api/reports [web.admin_token].
    #[arg(long, env = "TRAVERSE_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Shared reports kept before the oldest are pruned [web.max_reports].
    #[arg(long, env = "TRAVERSE_MAX_REPORTS")]
    max_reports: Option<usize>,
    /// RFC 5780 NAT behaviour discovery: the alternate IP:port beside the first listen.udp address; off unless set
    /// [stun.other_address].
    #[arg(long, env = "TRAVERSE_OTHER_ADDRESS")]
    other_address: Option<SocketAddr>,
    /// Log format [log.format].
    #[arg(long, env = "TRAVERSE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or traverse_server=debug [log.level].
    #[arg(long, env = "TRAVERSE_LOG")]
    log_level: Option<String>,
}

#[derive(Args, Debug)]
struct CredentialArgs {
    /// The shared secret (as in [auth.secrets]).
    #[arg(long, env = "TRAVERSE_SECRET")]
    secret: String,
    /// The user part of the username.
    #[arg(long, default_value = "user")]
    user: String,
    /// Seconds the credential stays valid.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
    /// TURN/STUN URIs to include, e.g. turn:turn.example.com:3478?transport=udp.
    #[arg(long = "uri")]
    uris: Vec<String>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The signaling secret (as in [signal.secret]).
    #[arg(long, env = "TRAVERSE_SIGNAL_SECRET")]
    secret: String,
    /// The room the token admits; `*` for any.
    #[arg(long)]
    room: String,
    /// The identity, shown to other peers as meta.identity.
    #[arg(long, default_value = "user")]
    identity: String,
    /// Seconds the token stays valid.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Capabilities passed through to the app (repeatable).
    #[arg(long = "cap")]
    caps: Vec<String>,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected MIN-MAX")?;
    Ok((a.parse().map_err(|_| "bad MIN")?, b.parse().map_err(|_| "bad MAX")?))
}

fn main() -> std::process::ExitCode {
    // Without its background thread jemalloc purges only when the program allocates, so an idle server would keep a
    // spike's pages. Failing to start it costs memory, not function.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    // Usage errors exit 1: `traverse doctor` keeps 2 for "nothing works".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("traverse: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Credentials(args) => {
            let (username, password) = mint(&args.secret, &args.user, args.ttl);
            let out = json!({ "username": username, "password": password, "credential": password,
                              "ttl": args.ttl, "uris": args.uris });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Token(args) => {
            let claims = signal::Claims {
                room: args.room,
                sub: args.identity,
                exp: unix_now() + args.ttl,
                caps: args.caps,
            };
            println!("{}", signal::mint_token(args.secret.as_bytes(), &claims));
            Ok(())
        }
        Command::Doctor(args) => std::process::exit(doctor::run(*args)?),
        Command::CheckConfig { path } => {
            let config = Config::load(&path)?;
            let errors = config.validate();
            if errors.is_empty() {
                println!("{}: OK", path.display());
                return Ok(());
            }
            for e in &errors {
                eprintln!("{}: {e}", path.display());
            }
            bail!("{} error(s) in {}", errors.len(), path.display())
        }
    }
}

/// A per-source limit never above half the capacity, so one source always leaves room for the others — also when the
/// descriptor limit cut the capacity below the configured per-source limit. 0 (no limit) stays 0.
fn half_at_most(per_source: usize, capacity: usize) -> usize {
    match per_source {
        0 => 0,
        n => n.min((capacity / 2).max(1)),
    }
}

/// Says what the descriptor limit allows, and loudly when it cuts the configured capacity.
fn report_capacity(fds: &server::FdPlan, config: &Config) {
    let raised = if fds.soft > fds.soft_before {
        format!(" (raised from {})", fds.soft_before)
    } else {
        String::new()
    };
    tracing::info!(
        "file descriptors: soft limit {}{raised}, hard {}: room for {} connections and {} allocations",
        fds.soft,
        fds.hard,
        fds.connections,
        fds.allocations
    );
    if fds.connections < config.limits.max_connections || fds.allocations < config.limits.max_allocations {
        tracing::warn!(
            "the descriptor limit ({}) cannot hold limits.max_connections ({}) and limits.max_allocations ({}): \
             capacity cut to {} connections and {} allocations; raise it (systemd LimitNOFILE=1048576, or ulimit -n)",
            fds.soft,
            config.limits.max_connections,
            config.limits.max_allocations,
            fds.connections,
            fds.allocations
        );
    }
}

/// Linux hands out ephemeral ports (outgoing connections, unbound UDP sockets) from ip_local_port_range: where the
/// relay range overlaps it, a relay port may be taken by another program, and its sockets are not ours to relay to.
fn warn_if_relay_ports_overlap_ephemeral(config: &Config) {
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut parts = range.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (Some(low), Some(high)) = (parts.next(), parts.next()) else {
        return;
    };
    let (min, max) = (config.relay.port_min, config.relay.port_max);
    if min <= high && low <= max {
        tracing::warn!(
            "relay ports {min}-{max} overlap the host's ephemeral ports {low}-{high} (net.ipv4.ip_local_port_range): \
             other programs' sockets may take relay ports; set `sysctl net.ipv4.ip_local_port_range=\"32768 49151\"` \
             or move relay.port_min/port_max"
        );
    }
}

/// A REST credential: username `expiry:user`, password base64(HMAC-SHA1(secret, username)).
fn mint(secret: &str, user: &str, ttl: u64) -> (String, String) {
    mint_at(secret, user, unix_now() + ttl)
}

fn mint_at(secret: &str, user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let password = turn::rest_password(secret.as_bytes(), &username);
    (username, password)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn apply(config: &mut Config, a: ServeArgs) {
    // `set!` for options with a default; `set_some!` for options whose config field is itself optional.
    macro_rules! set {
        ($field:expr, $value:expr) => {
            if let Some(v) = $value {
                $field = v;
            }
        };
    }
    macro_rules! set_some {
        ($field:expr, $value:expr) => {
            if $value.is_some() {
                $field = $value;
            }
        };
    }
    set!(config.listen.udp, a.udp);
    set!(config.listen.tcp, a.tcp);
    set!(config.listen.tls, a.tls);
    set_some!(config.tls.cert, a.tls_cert);
    set_some!(config.tls.key, a.tls_key);
    set_some!(config.relay.bind_v4, a.relay_bind_v4);
    set_some!(config.relay.bind_v6, a.relay_bind_v6);
    set_some!(config.relay.external_v4, a.external_v4);
    set_some!(config.relay.external_v6, a.external_v6);
    if let Some((min, max)) = a.relay_ports {
        config.relay.port_min = min;
        config.relay.port_max = max;
    }
    set!(config.relay.ipv6, a.relay_ipv6);
    set!(config.relay.allow_peers, a.allow_peers);
    set!(config.relay.deny_peers, a.deny_peers);
    set!(config.relay.bandwidth_per_allocation, a.bandwidth);
    set!(config.auth.realm, a.realm);
    set!(config.auth.secrets, a.secrets);
    set!(config.auth.users, a.users);
    set!(config.auth.nonce_lifetime, a.nonce_lifetime);
    set!(config.auth.credential_ttl, a.credential_ttl);
    set!(config.limits.workers, a.workers);
    set!(config.limits.max_allocations, a.max_allocations);
    set!(config.limits.max_allocations_per_user, a.max_allocations_per_user);
    set!(config.limits.max_allocations_per_source, a.max_allocations_per_source);
    set!(config.limits.default_lifetime, a.default_lifetime);
    set!(config.limits.max_lifetime, a.max_lifetime);
    set!(config.limits.max_permissions_per_allocation, a.max_permissions);
    set!(config.limits.max_connections, a.max_connections);
    set!(config.limits.max_connections_per_source, a.max_connections_per_source);
    set!(config.limits.auth_timeout, a.auth_timeout);
    set!(config.limits.idle_timeout, a.idle_timeout);
    set!(config.limits.reflection_bytes_per_second, a.reflection_bytes_per_second);
    set!(config.listen.http, a.http);
    set!(config.listen.single, a.single);
    set_some!(config.signal.public_host, a.public_host);
    set_some!(config.signal.secret, a.signal_secret);
    set!(config.signal.max_message_bytes, a.max_message_bytes);
    set!(config.signal.messages_per_second, a.messages_per_second);
    set!(config.signal.burst, a.burst);
    set!(config.signal.max_peers_per_room, a.max_peers_per_room);
    set!(config.signal.max_rooms, a.max_rooms);
    set!(config.signal.max_connections_per_ip, a.max_connections_per_ip);
    set!(config.signal.max_queued, a.max_queued);
    set!(config.signal.max_session_bytes, a.max_session_bytes);
    set!(config.signal.max_source_bytes, a.max_source_bytes);
    set!(config.signal.max_total_bytes, a.max_total_bytes);
    set!(config.signal.heartbeat_interval, a.heartbeat_interval);
    set!(config.signal.heartbeat_timeout, a.heartbeat_timeout);
    set!(config.signal.resume_grace, a.resume_grace);
    set_some!(config.web.data_dir, a.data_dir);
    set_some!(config.web.admin_token, a.admin_token);
    set!(config.web.max_reports, a.max_reports);
    set_some!(config.stun.other_address, a.other_address);
    set!(config.log.format, a.log_format);
    set!(config.log.level, a.log_level);
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    apply(&mut config, args);
    let errors = config.validate();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("config: {e}");
        }
        bail!("{} configuration error(s)", errors.len());
    }
    init_logging(&config);

    // Signaling hands every peer a REST credential, so there is always a secret to mint with.
    let generated_secret = config.auth.secrets.is_empty();
    if generated_secret {
        let mut secret = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut secret);
        config
            .auth
            .secrets
            .push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    }

    let interface_ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    let policy = turn::policy::PeerPolicy {
        allow: Config::peer_blocks(&config.relay.allow_peers),
        deny: Config::peer_blocks(&config.relay.deny_peers),
    };
    let turn_config = turn::Config {
        default_lifetime: Duration::from_secs(config.limits.default_lifetime),
        max_lifetime: Duration::from_secs(config.limits.max_lifetime),
        relay_ipv4: true,
        relay_ipv6: config.relay.ipv6,
        bandwidth_per_allocation: config.relay.bandwidth_per_allocation,
        max_permissions_per_allocation: config.limits.max_permissions_per_allocation,
        max_channels_per_allocation: config.limits.max_channels_per_allocation,
        policy,
        reflection_bytes_per_second: config.limits.reflection_bytes_per_second,
        // Validated above.
        nat_discovery: config.nat_discovery().ok().flatten(),
        ..turn::Config::default()
    };
    let mut nonce_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce_key);
    let auth = turn::Authenticator::new(
        config.auth.realm.clone(),
        &config.users(),
        config
            .auth
            .secrets
            .iter()
            .map(|s| turn::Secret(s.as_bytes().to_vec()))
            .collect(),
        nonce_key,
        config.auth.nonce_lifetime,
    )
    .with_max_rest_lifetime(config.auth.max_credential_lifetime);
    let tls_identity = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => server::TlsIdentity::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => server::TlsIdentity::SelfSigned {
            names: std::iter::once("localhost".to_owned())
                .chain(interface_ips.iter().map(ToString::to_string))
                .collect(),
        },
    };
    let workers = match config.limits.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let listeners = config.listen.udp.len()
        + config.listen.tcp.len()
        + config.listen.tls.len()
        + config.listen.http.len()
        + config.listen.single.len();
    let fds = server::plan_fds(
        (listeners + 4) * workers,
        config.limits.max_connections,
        config.limits.max_allocations,
        false,
    );
    report_capacity(&fds, &config);
    warn_if_relay_ports_overlap_ephemeral(&config);
    let own_addresses = {
        let mut own = interface_ips.clone();
        own.extend(config.relay.external_v4);
        own.extend(config.relay.external_v6);
        Arc::new(turn::OwnAddresses::new(own))
    };
    let server_config = server::ServerConfig {
        udp: config.listen.udp.clone(),
        tcp: config.listen.tcp.clone(),
        tls: config.listen.tls.clone(),
        http: config.listen.http.clone(),
        single: config.listen.single.clone(),
        tls_identity,
        relay: server::RelayConfig {
            bind_v4: config.relay.bind_v4,
            bind_v6: config.relay.bind_v6,
            external_v4: config.relay.external_v4,
            external_v6: config.relay.external_v6,
            ports: config.relay.port_min..=config.relay.port_max,
        },
        workers,
        stream_idle_timeout: Duration::from_secs(config.limits.idle_timeout),
        tls_handshake_timeout: Duration::from_secs(10),
        max_stream_connections: fds.connections,
        max_connections_per_source: half_at_most(config.limits.max_connections_per_source, fds.connections),
        auth_timeout: Duration::from_secs(config.limits.auth_timeout),
        own_addresses,
        turn: Arc::new(turn_config),
        auth: Arc::new(auth),
        quotas: Arc::new(
            turn::Quotas::new(fds.allocations, config.limits.max_allocations_per_user)
                .with_per_source(half_at_most(config.limits.max_allocations_per_source, fds.allocations)),
        ),
    };
    // The URLs name the bound ports (a port may be 0 in the config), so they are filled in after the start.
    let ice_urls: Arc<std::sync::OnceLock<IceUrls>> = Arc::new(std::sync::OnceLock::new());
    let ttl = config.auth.credential_ttl;
    let mint_secret = config.auth.secrets.first().cloned().unwrap_or_default();
    let urls = ice_urls.clone();
    let ice_servers: web::IceServersFn = Arc::new(move |user, unix| {
        let Some(urls) = urls.get() else { return json!([]) };
        let (username, credential) = mint_at(&mint_secret, user, unix + ttl);
        json!([{ "urls": urls.stun }, { "urls": urls.turn, "username": username, "credential": credential }])
    });
    let web = web::Web::start(web::WebConfig {
        limits: config.signal.limits(),
        token_secret: config.signal.secret.as_ref().map(|s| s.as_bytes().to_vec()),
        ice_servers,
        credential_ttl_secs: ttl,
        data_dir: config.web.data_dir(),
        admin_token: config.web.admin_token.clone(),
        max_reports: config.web.max_reports,
    })
    .context("cannot start the signaling hub")?;
    let handler: Arc<dyn server::HttpHandler> = Arc::new(WebHandler(web.clone()));
    let running = server::start(server_config, Some(handler)).context("cannot start")?;
    for (proto, addrs) in [("UDP", &running.udp), ("TCP", &running.tcp), ("TLS", &running.tls)] {
        for addr in addrs.iter() {
            tracing::info!(%addr, "STUN/TURN listening on {proto}");
        }
    }
    for addr in &running.http {
        tracing::info!(%addr, "HTTP (signaling, SDK, demo) listening");
    }
    for addr in &running.single {
        tracing::info!(%addr, "single port (HTTPS/WSS, TURN over TLS and TCP) listening");
    }
    let host = public_host(&config, &running, &interface_ips);
    let _ = ice_urls.set(IceUrls::new(&host, &running));
    if let Some(a) = running.http.first() {
        println!(
            "signaling: ws://{host}:{}/ws   demo: http://{host}:{}/demo",
            a.port(),
            a.port()
        );
    }
    if let Some(a) = running.single.first() {
        println!(
            "signaling: wss://{host}:{}/ws   demo: https://{host}:{}/demo",
            a.port(),
            a.port()
        );
        // Plain HTTP there is redirected to the configured name, else the port's own address, else the advertised
        // host — never to the request's Host (the web side is not told a connection's local address).
        let redirect_host = match (&config.signal.public_host, a.ip()) {
            (Some(name), _) => name.clone(),
            (None, ip) if !ip.is_unspecified() => ip.to_string(),
            (None, _) => host.clone(),
        };
        if let Err(e) = web.set_https_origin(&redirect_host, a.port()) {
            tracing::warn!(error = %e, "plain HTTP on the single port is not redirected; set signal.public_host");
        }
    }
    if running.certs.is_self_signed() && !running.tls.is_empty() {
        tracing::warn!("TLS uses a generated self-signed certificate: browsers refuse it; set tls.cert and tls.key");
    }
    if generated_secret {
        tracing::info!("no credentials configured: generated a shared secret for this run");
    }
    if config.signal.secret.is_none() {
        tracing::warn!(
            "signal.secret is unset: anyone who can reach this server can mint TURN credentials and join rooms; \
             set signal.secret (--signal-secret, TRAVERSE_SIGNAL_SECRET) so that credentials come only with a join token"
        );
    }
    print_ice_servers(&config, &host, &running);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let certs = running.certs.clone();
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match certs.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot reload the certificate; keeping the old one"),
                },
            }
        }
    });
    tracing::info!("shutting down");
    web.shutdown();
    // Let the 4202 close frames leave before the workers stop.
    std::thread::sleep(Duration::from_millis(200));
    running.shutdown();
    Ok(())
}

/// Serves the connections the HTTP and single ports sort as HTTP.
struct WebHandler(web::Web);

impl server::HttpHandler for WebHandler {
    fn serve(
        &self,
        io: Box<dyn server::Io>,
        remote: SocketAddr,
        scheme: server::HttpScheme,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        let web = self.0.clone();
        let scheme = match scheme {
            server::HttpScheme::Http => web::Scheme::Http,
            server::HttpScheme::Https => web::Scheme::Https,
            server::HttpScheme::RedirectToHttps => web::Scheme::HttpRedirect,
        };
        Box::pin(async move { web.serve_connection(io, remote, scheme).await })
    }
}

/// The host put in iceServers: the configured one, else the external or listening address, else an interface's.
fn public_host(config: &Config, running: &server::Running, interface_ips: &[IpAddr]) -> String {
    if let Some(host) = &config.signal.public_host {
        return host.clone();
    }
    let ip = config
        .relay
        .external_v4
        .or_else(|| {
            running
                .udp
                .iter()
                .chain(&running.tcp)
                .chain(&running.http)
                .chain(&running.single)
                .map(|a| a.ip())
                .find(|ip| !ip.is_unspecified())
        })
        .or_else(|| {
            interface_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        })
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// STUN and TURN URLs of this server. `stun:` URLs carry no `?transport` (Chrome ≥ 110 rejects it).
#[derive(Debug)]
struct IceUrls {
    stun: Vec<String>,
    turn: Vec<String>,
}

impl IceUrls {
    fn new(host: &str, running: &server::Running) -> Self {
        let mut stun = Vec::new();
        let mut turn = Vec::new();
        if let Some(a) = running.udp.first() {
            stun.push(format!("stun:{host}:{}", a.port()));
            turn.push(format!("turn:{host}:{}?transport=udp", a.port()));
        }
        if let Some(a) = running.tcp.first() {
            turn.push(format!("turn:{host}:{}?transport=tcp", a.port()));
        }
        if let Some(a) = running.tls.first() {
            turn.push(format!("turns:{host}:{}?transport=tcp", a.port()));
        }
        if let Some(a) = running.single.first() {
            turn.push(format!("turns:{host}:{}?transport=tcp", a.port()));
        }
        Self { stun, turn }
    }
}

/// Prints an `iceServers` array with a fresh credential, ready to paste into `new RTCPeerConnection(...)`.
fn print_ice_servers(config: &Config, host: &str, running: &server::Running) {
    let urls = IceUrls::new(host, running);
    let (username, credential) = match config.auth.secrets.first() {
        Some(secret) => mint(secret, "traverse", config.auth.credential_ttl),
        None => (String::new(), String::new()),
    };
    let ice = json!([{ "urls": urls.stun }, { "urls": urls.turn, "username": username, "credential": credential }]);
    println!("iceServers: {}", serde_json::to_string(&ice).unwrap_or_default());
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
