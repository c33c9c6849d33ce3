//! `traverse`: signaling, STUN and TURN from one binary.

mod config;
mod drain;
mod file_errors;
mod log_budget;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64::Engine;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Parser, Subcommand};
use rand::RngCore;
use serde_json::json;

use config::{Config, LogFormat, Override};

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
    /// Run the STUN/TURN server. With no options: UDP/TCP 3478, TLS 5349 and STUN on UDP 3479 (/check's NAT test) on
    /// all interfaces, a generated shared secret and a self-signed certificate; prints a ready `iceServers` JSON.
    Serve(Box<ServeArgs>),
    /// Mint a time-limited TURN credential (TURN REST API: username `expiry:user`, password HMAC-SHA1).
    Credentials(CredentialArgs),
    /// Mint a join token (HS256 JWT) for the signaling server's `signal.secret`.
    Token(TokenArgs),
    /// Diagnose this network against a Traverse server: signaling, STUN, TURN per transport, NAT behaviour, relay
    /// quality — and say in plain words what works and what to do. Exit 0: something works; 2: nothing does.
    Doctor(Box<doctor::Args>),
    /// Drain a running node of a cluster (docs/scaling.md): its rooms move to the other nodes, new TURN
    /// allocations are sent there, and it exits once its allocations have ended or cluster.drain_time has run out.
    Drain(drain::DrainArgs),
    /// Check a configuration file and report every error with its line.
    CheckConfig {
        /// The file to check.
        #[arg(env = "TRAVERSE_CONFIG")]
        path: PathBuf,
    },
}

/// An everyday option: a flag, with its variable, for one key of the file. Every other key is reached with
/// `--set section.key=value` or `TRAVERSE_<SECTION>_<KEY>`.
struct Flag {
    long: &'static str,
    env: &'static str,
    key: &'static str,
    /// Comma-separated values, the flag repeatable.
    list: bool,
    /// The value's name in `--help`.
    value: &'static str,
    help: &'static str,
}

const fn flag(
    long: &'static str,
    env: &'static str,
    key: &'static str,
    value: &'static str,
    help: &'static str,
) -> Flag {
    Flag {
        long,
        env,
        key,
        list: false,
        value,
        help,
    }
}

const fn list(
    long: &'static str,
    env: &'static str,
    key: &'static str,
    value: &'static str,
    help: &'static str,
) -> Flag {
    Flag {
        list: true,
        ..flag(long, env, key, value, help)
    }
}

// A table: one row per flag.
#[rustfmt::skip]
const FLAGS: &[Flag] = &[
    list("udp", "TRAVERSE_UDP", "listen.udp", "ADDR", "UDP listen addresses"),
    list("tcp", "TRAVERSE_TCP", "listen.tcp", "ADDR", "TCP listen addresses"),
    list("tls", "TRAVERSE_TLS", "listen.tls", "ADDR", "TLS listen addresses"),
    list("http", "TRAVERSE_HTTP", "listen.http", "ADDR", "Plain HTTP listen addresses: signaling, SDK, demo"),
    list("single-port", "TRAVERSE_SINGLE_PORT", "listen.single",
         "ADDR", "Single-port listen addresses: TLS (HTTPS/WSS or TURN), TURN over TCP, HTTP redirect"),
    flag("tls-cert", "TRAVERSE_TLS_CERT", "tls.cert",
         "FILE", "PEM certificate chain; without it a self-signed certificate is generated"),
    flag("tls-key", "TRAVERSE_TLS_KEY", "tls.key", "FILE", "PEM private key"),
    list("domain", "TRAVERSE_DOMAINS", "tls.domains",
         "NAME", "Get and renew a certificate for NAME from an ACME CA (Let's Encrypt by default)"),
    flag("acme-email", "TRAVERSE_ACME_EMAIL", "tls.acme_email", "EMAIL", "Contact the ACME CA mails about expiry"),
    flag("acme-directory", "TRAVERSE_ACME_DIRECTORY", "tls.acme_directory",
         "URL", "ACME directory URL, e.g. a staging or company CA"),
    list("secret", "TRAVERSE_SECRETS", "auth.secrets",
         "SECRET", "TURN REST shared secrets; all are accepted, the first mints"),
    list("user", "TRAVERSE_USERS", "auth.users", "NAME:PASSWORD", "Static users as name:password"),
    flag("realm", "TRAVERSE_REALM", "auth.realm", "REALM", "Authentication realm"),
    flag("public-host", "TRAVERSE_PUBLIC_HOST", "signal.public_host",
         "HOST", "Host put in the iceServers handed to peers"),
    flag("signal-secret", "TRAVERSE_SIGNAL_SECRET", "signal.secret",
         "SECRET", "HS256 secret for join tokens; unset: rooms are open"),
    flag("redis", "TRAVERSE_REDIS", "signal.redis",
         "URL", "Redis shared by the nodes of a cluster, e.g. redis://10.0.0.5:6379 (docs/scaling.md)"),
    flag("drain-time", "TRAVERSE_DRAIN_TIME", "cluster.drain_time",
         "SECS", "Seconds a drain keeps TURN allocations before the process exits (docs/scaling.md)"),
    flag("pid-file", "TRAVERSE_PID_FILE", "cluster.pid_file", "FILE", "Write the process id here, for `traverse drain`"),
    list("allow-peer", "TRAVERSE_ALLOW_PEERS", "relay.allow_peers",
         "BLOCK", "Peer address blocks always allowed, e.g. 127.0.0.0/8 in a lab"),
    list("xdp", "TRAVERSE_XDP", "relay.xdp",
         "IFACE", "Relay channel-bound IPv4 UDP in the kernel (XDP) on these interfaces; falls back to sockets"),
    flag("external-v4", "TRAVERSE_EXTERNAL_V4", "relay.external_v4",
         "IP", "Public IPv4 address advertised for relays behind 1:1 NAT (one per relay.bind_v4 address)"),
    flag("workers", "TRAVERSE_WORKERS", "limits.workers", "N", "Worker threads, 0 for one per core"),
    flag("other-address", "TRAVERSE_OTHER_ADDRESS", "stun.other_address",
         "IP:PORT", "RFC 5780 NAT behaviour discovery: the alternate IP:port beside the first listen.udp address"),
    flag("log-format", "TRAVERSE_LOG_FORMAT", "log.format", "text|json", "Log format: text or json"),
    flag("log-level", "TRAVERSE_LOG", "log.level", "FILTER", "Log filter, e.g. info or info,server=debug"),
    flag("metrics", "TRAVERSE_METRICS_LISTEN", "metrics.listen",
         "ADDR", "Prometheus /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9464"),
];

/// The `--help` section of a flag, from its key's section: one owner for the grouping.
fn heading(key: &str) -> &'static str {
    match key.split('.').next() {
        Some("listen") => "Listeners (IP:PORT or a port alone for every interface; repeatable)",
        Some("tls") => "TLS",
        Some("auth") => "Credentials",
        Some("signal") => "Signaling",
        Some("relay") => "Relay",
        Some("stun") => "STUN",
        Some("log") => "Logging",
        Some("metrics") => "Metrics",
        Some("cluster") => "Cluster",
        _ => "Limits",
    }
}

/// `traverse serve`'s options, as overrides of the file's keys by where they came from.
#[derive(Debug, Default)]
struct ServeArgs {
    config: Option<PathBuf>,
    /// Everyday flags given as variables: applied with the environment, below every flag.
    from_env: Vec<Override>,
    /// Everyday flags given on the command line, then every `--set` in order.
    from_flags: Vec<Override>,
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .short('c')
                .env("TRAVERSE_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help_heading("Configuration")
                .help("Configuration file (TOML); see traverse.example.toml"),
        );
        let cmd = FLAGS.iter().fold(cmd, |cmd, f| {
            let off = if f.list && f.key.starts_with("listen.") {
                "; off: none"
            } else {
                ""
            };
            let arg = Arg::new(f.long)
                .long(f.long)
                .env(f.env)
                .value_name(f.value)
                .help_heading(heading(f.key))
                .help(format!("{}{off} [{}]", f.help, f.key));
            let arg = match f.list {
                true => arg.value_delimiter(',').action(ArgAction::Append),
                false => arg,
            };
            cmd.arg(if f.long == "single-port" {
                arg.visible_alias("mux")
            } else {
                arg
            })
        });
        cmd.arg(
            Arg::new("relay-ports")
                .long("relay-ports")
                .env("TRAVERSE_RELAY_PORTS")
                .value_name("MIN-MAX")
                .value_parser(parse_range)
                .help_heading(heading("relay"))
                .help("Relay port range [relay.port_min, relay.port_max]"),
        )
        .arg(
            Arg::new("set")
                .long("set")
                .value_name("SECTION.KEY=VALUE")
                .action(ArgAction::Append)
                .help_heading("Configuration")
                .help(
                    "Any option of the configuration file, e.g. --set limits.max_connections=5000 (repeatable; \
                     lists comma-separated)",
                ),
        )
        .after_help(
            "Every option of traverse.example.toml, shown there with its default, is also --set section.key=value \
             and the variable TRAVERSE_<SECTION>_<KEY> (TRAVERSE_LIMITS_MAX_CONNECTIONS=5000). Precedence: \
             defaults < file < environment < flags.",
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            ..Self::default()
        };
        // The flag's id is its long name.
        let mut add = |id: &str, env: &str, key: &str, value: String| {
            let (list, origin) = match m.value_source(id) {
                Some(ValueSource::EnvVariable) => (&mut args.from_env, env.to_owned()),
                _ => (&mut args.from_flags, format!("--{id}")),
            };
            list.push(Override {
                origin,
                key: key.to_owned(),
                value,
            });
        };
        if let Some((min, max)) = m.get_one::<(u16, u16)>("relay-ports") {
            add("relay-ports", "TRAVERSE_RELAY_PORTS", "relay.port_min", min.to_string());
            add("relay-ports", "TRAVERSE_RELAY_PORTS", "relay.port_max", max.to_string());
        }
        for f in FLAGS {
            if let Some(values) = m.get_many::<String>(f.long) {
                let values: Vec<String> = values.cloned().collect();
                // `--udp off`: that listener switched off (an empty list).
                let value = match values.as_slice() {
                    [one] if f.list && matches!(one.as_str(), "off" | "none") => String::new(),
                    _ => values.join(","),
                };
                add(f.long, f.env, f.key, value);
            }
        }
        for set in m.get_many::<String>("set").into_iter().flatten() {
            let o = Override::from_set(set).map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
            args.from_flags.push(o);
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[derive(Args, Debug)]
struct CredentialArgs {
    /// The shared secret (as in [auth.secrets]); default: $TRAVERSE_SECRET, else the first of the server's
    /// $TRAVERSE_SECRETS (or $TRAVERSE_AUTH_SECRETS), which mints.
    #[arg(long, env = "TRAVERSE_SECRET")]
    secret: Option<String>,
    /// The user part of the username.
    #[arg(long, default_value = "user")]
    user: String,
    /// Seconds the credential stays valid (the server refuses more than its auth.max_credential_lifetime, 7 days
    /// by default).
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(0..=MAX_TTL))]
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
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    room: String,
    /// The identity, shown to other peers as meta.identity.
    #[arg(long, default_value = "user")]
    identity: String,
    /// Seconds the token stays valid.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(0..=MAX_TTL))]
    ttl: u64,
    /// Capabilities passed through to the app (repeatable).
    #[arg(long = "cap")]
    caps: Vec<String>,
}

/// The longest `--ttl` of a credential or a token: ten years (a longer one wrapped past the clock's range).
const MAX_TTL: u64 = 10 * 366 * 86_400;

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
            match JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                true => eprintln!("{}", json_error(&format!("cannot start: {e:#}"))),
                false => eprintln!("traverse: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs are JSON (`log.format`): the lines written past the logger, a refused configuration or a failed start, are
/// JSON too, for the shipper that parses them.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An error line shaped like the JSON logger's.
fn json_error(message: &str) -> serde_json::Value {
    json!({ "level": "ERROR", "fields": { "message": message } })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Credentials(args) => {
            let secret = credential_secret(args.secret, |name| std::env::var(name).ok()).ok_or_else(|| {
                anyhow::anyhow!("no secret: give --secret, or set TRAVERSE_SECRET (or the server's TRAVERSE_SECRETS)")
            })?;
            config::short_secret(&secret).map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
            let (username, password) = mint(&secret, &args.user, args.ttl);
            let out = json!({ "username": username, "password": password, "credential": password,
                              "ttl": args.ttl, "uris": args.uris });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Token(args) => {
            config::short_secret(&args.secret).map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
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
        Command::Drain(args) => drain::run(args),
        Command::CheckConfig { path } => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            // Every error of the file, then every rule the entries that parsed break.
            let (config, file_errors) = Config::parse_partial(&text);
            let mut count = 0;
            for e in &file_errors {
                eprintln!("{}:{}:{}: {}", path.display(), e.line, e.column, e.what());
                count += 1;
            }
            for e in config.as_ref().map(Config::validate).unwrap_or_default() {
                eprintln!("{}: {e}", path.display());
                count += 1;
            }
            if count == 0 {
                println!("{}: OK", path.display());
                return Ok(());
            }
            bail!("{count} error(s) in {}", path.display())
        }
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

/// Each IPv4 relay address has one socket per allocation on a port of the range: where the range times the
/// addresses is less than the allocations the server takes (`limits.max_allocations`, or fewer where the descriptor
/// limit cut it: `capacity`), allocations fail (508) before that is reached.
fn warn_if_relay_ports_cannot_hold_allocations(config: &Config, capacity: usize) {
    let (min, max) = (config.relay.port_min, config.relay.port_max);
    let ports = usize::from(max.saturating_sub(min)) + 1;
    let addresses = match config.relay.bind_v4.len() {
        // Relays bind the address the client reached: one per IPv4 listening address.
        0 => {
            let listen = &config.listen;
            let ips: std::collections::BTreeSet<IpAddr> = [&listen.udp, &listen.tcp, &listen.tls, &listen.single]
                .into_iter()
                .flatten()
                .map(|a| a.ip())
                .filter(IpAddr::is_ipv4)
                .collect();
            ips.len().max(1)
        }
        n => n,
    };
    let room = ports.saturating_mul(addresses);
    let wanted = config.limits.max_allocations.min(capacity);
    if room < wanted {
        tracing::warn!(
            "relay ports {min}-{max} on {addresses} IPv4 relay address(es) hold {room} allocations, fewer than the \
             {wanted} the server takes (limits.max_allocations, and the descriptor limit): add addresses to \
             relay.bind_v4 or widen relay.port_min/port_max"
        );
    }
}

/// A REST credential: username `expiry:user`, password base64(HMAC-SHA1(secret, username)).
/// The secret `traverse credentials` mints with: `--secret` (or `TRAVERSE_SECRET`), else the one the server mints
/// with, the first of its `TRAVERSE_AUTH_SECRETS` or `TRAVERSE_SECRETS` list.
fn credential_secret(given: Option<String>, var: impl Fn(&str) -> Option<String>) -> Option<String> {
    given.or_else(|| {
        ["TRAVERSE_AUTH_SECRETS", "TRAVERSE_SECRETS"]
            .iter()
            .find_map(|name| var(name))
            .and_then(|list| {
                list.split(',')
                    .map(str::trim)
                    .find(|s| !s.is_empty())
                    .map(str::to_owned)
            })
    })
}

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

/// A `TRAVERSE_*` variable that names no option is ignored: say so once at start, with the name it probably meant
/// (the long-tail variables were `TRAVERSE_<KEY>` before they became `TRAVERSE_<SECTION>_<KEY>`).
fn warn_unknown_environment() {
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    for warning in unknown_environment(names.iter().map(String::as_str)) {
        tracing::warn!("{warning}");
    }
}

/// Variables `serve` reads beside the keys' own and the everyday flags'.
const SERVE_VARIABLES: &[&str] = &["TRAVERSE_CONFIG", "TRAVERSE_RELAY_PORTS"];

/// Variables of the other subcommands, with the server's variable for the same thing.
const OTHER_COMMANDS_VARIABLES: &[(&str, &str)] = &[("TRAVERSE_SECRET", "TRAVERSE_SECRETS")];

fn unknown_environment<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let known: Vec<String> = Config::keys()
        .iter()
        .map(|k| format!("TRAVERSE_{}", k.replace('.', "_").to_uppercase()))
        .collect();
    names
        .filter_map(|name| {
            let suffix = name.strip_prefix("TRAVERSE")?;
            let everyday = FLAGS.iter().any(|f| f.env == name) || SERVE_VARIABLES.contains(&name);
            if !suffix.starts_with('_') || everyday || known.iter().any(|k| k == name) {
                return None;
            }
            // Read by another subcommand: the server has a variable of its own for the same thing.
            if let Some((_, meant)) = OTHER_COMMANDS_VARIABLES.iter().find(|(other, _)| *other == name) {
                return Some(format!(
                    "{name} is read by `traverse credentials` only and is ignored by the server; its TURN secrets \
                     are {meant}"
                ));
            }
            Some(match known.iter().find(|k| k.ends_with(suffix)) {
                Some(meant) => format!("{name} is not an option and is ignored; did you mean {meant}?"),
                None => format!(
                    "{name} is not an option and is ignored (options from the environment are \
                     TRAVERSE_<SECTION>_<KEY>; see traverse.example.toml)"
                ),
            })
        })
        .collect()
}

/// Defaults < file < environment (`var`) < flags, then the checks across keys; every error of every layer.
fn configure(args: &ServeArgs, var: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<config::ConfigError>> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| vec![e])?,
        None => Config::default(),
    };
    let mut errors = config.apply(&Config::env_overrides(var));
    errors.extend(config.apply(&args.from_env));
    errors.extend(config.apply(&args.from_flags));
    errors.extend(config.validate());
    match errors.is_empty() {
        true => Ok(config),
        false => Err(errors),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match configure(&args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(errors) => {
            // JSON logs asked for (by a flag, a variable or the file, as far as it parses): the refusal is JSON too.
            let from_file = || {
                let text = std::fs::read_to_string(args.config.as_ref()?).ok()?;
                Some(Config::parse_partial(&text).0?.log.format == LogFormat::Json)
            };
            let json = match args
                .from_flags
                .iter()
                .chain(&args.from_env)
                .rfind(|o| o.key == "log.format")
            {
                Some(o) => o.value == "json",
                None => from_file().unwrap_or(false),
            };
            for e in &errors {
                match json {
                    true => eprintln!("{}", json_error(&format!("config: {e}"))),
                    false => eprintln!("config: {e}"),
                }
            }
            if json {
                std::process::exit(1);
            }
            bail!("{} configuration error(s)", errors.len());
        }
    };
    init_logging(&config);
    warn_unknown_environment();
    if let Some(path) = &args.config {
        warn_if_secrets_readable(path);
    }
    check_data_dir(&config)?;

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
    let turn_config = config.turn();
    let mut nonce_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce_key);
    let auth = turn::Authenticator::new(
        config.auth.realm.clone(),
        &config
            .auth
            .users
            .iter()
            .map(|u| (u.name.clone(), u.password.clone()))
            .collect::<Vec<_>>(),
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
        _ if !config.tls.domains.is_empty() => server::TlsIdentity::Acme {
            names: config.tls.domains.clone(),
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
    warn_if_relay_ports_cannot_hold_allocations(&config, fds.allocations);
    let own_addresses = {
        let mut own = interface_ips.clone();
        own.extend(&config.relay.external_v4);
        own.extend(&config.relay.external_v6);
        Arc::new(turn::OwnAddresses::new(own))
    };
    // Shared with the workers; a drain refuses new allocations through it.
    let quotas = Arc::new(config.quotas(fds.allocations));
    let server_config = server::ServerConfig {
        udp: config.listen.udp.clone(),
        tcp: config.listen.tcp.clone(),
        tls: config.listen.tls.clone(),
        http: config.listen.http.clone(),
        single: config.listen.single.clone(),
        second_stun: config.second_stun_addresses(),
        tls_identity,
        relay: server::RelayConfig {
            bind_v4: config.relay.bind_v4.clone(),
            bind_v6: config.relay.bind_v6.clone(),
            external_v4: config.relay.external_v4.clone(),
            external_v6: config.relay.external_v6.clone(),
            ports: config.relay.port_min..=config.relay.port_max,
            xdp: config.relay.xdp.clone(),
            io_uring: config.relay.io_uring,
            gso: config.relay.gso,
        },
        workers,
        coalesce: {
            let nap = Duration::from_micros(config.limits.coalesce_us);
            // With --redis a worker's naps stay short: the hub's work (on threads of its own, or on the workers
            // with `cluster.hub_on_workers`) waits for Redis between a signal's read and its write, so a worker's own
            // work says little about the batch a longer nap would gather (and on the workers, 2 workers of 2 cores
            // delivered 0.51x the signals/s with growing naps, docs/benchmarks.md).
            let naps = if config.signal.redis.is_some() {
                server::Naps::fixed(nap)
            } else {
                server::Naps::adaptive(nap)
            };
            naps.relaying(Duration::from_micros(config.relay.coalesce_us))
        },
        stream_idle_timeout: Duration::from_secs(config.limits.idle_timeout),
        send_stall_timeout: config.limits.send_stall(),
        tls_handshake_timeout: Duration::from_secs(10),
        max_stream_connections: fds.connections,
        max_connections_per_source: config::half_at_most(config.limits.max_connections_per_source, fds.connections),
        connections_per_second_per_source: config.limits.connections_per_second_per_source,
        trusted_proxies: config.web.trusted_proxies.clone(),
        proxy_protocol: config.listen.proxy_protocol.clone(),
        auth_timeout: Duration::from_secs(config.limits.auth_timeout),
        own_addresses,
        turn: Arc::new(turn_config),
        auth: Arc::new(auth),
        quotas: quotas.clone(),
    };
    // The URLs name the bound ports (a port may be 0 in the config), so they are filled in after the start.
    let ice_urls: Arc<std::sync::OnceLock<IceUrls>> = Arc::new(std::sync::OnceLock::new());
    let ttl = config.auth.credential_ttl;
    let mint_secret = config.auth.secrets.first().cloned().unwrap_or_default();
    let urls = ice_urls.clone();
    let ice_servers: web::IceServersFn = Arc::new(move |user, unix| {
        let Some(urls) = urls.get() else { return json!([]) };
        let (username, credential) = mint_at(&mint_secret, user, unix + ttl);
        urls.servers(&username, &credential)
    });
    let urls = ice_urls.clone();
    let nat_probes: web::NatProbesFn = Arc::new(move || urls.get().map(|u| u.probes.clone()).unwrap_or_default());
    let extra = config.ice.extra.clone();
    let extra_ice_servers: web::IceServersFn = Arc::new(move |user, unix| extra_servers(&extra, user, unix + ttl));
    let outcomes = Arc::new(outcome::Outcomes::new());
    let web = web::Web::start_with_redis(
        web::WebConfig {
            limits: config.signal.limits.clone(),
            token_secret: config.signal.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            ice_servers,
            extra_ice_servers,
            nat_probes,
            credential_ttl_secs: ttl,
            data_dir: config.web.data_dir(),
            admin_token: config.web.admin_token.clone(),
            max_reports: config.web.max_reports,
            outcomes: outcomes.clone(),
            // Checked by `validate`.
            allowed_origins: web::AllowedOrigins::parse(&config.web.allowed_origins).unwrap_or_default(),
            room_affinity: config.web.room_affinity,
            trusted_proxies: config.web.trusted_proxies.clone(),
            requests_per_second_per_source: config.limits.requests_per_second_per_source,
        },
        config.signal.redis.clone().map(|redis| web::Cluster {
            redis,
            hub_shards: config.cluster.hub_shards,
            on_workers: config.cluster.hub_on_workers.then_some(server_config.workers.max(1)),
        }),
    )
    .context("cannot start the signaling hub")?;
    let handler: Arc<dyn server::HttpHandler> = Arc::new(WebHandler(web.clone()));
    let running = server::start(server_config, Some(handler)).context("cannot start")?;
    if !config.tls.domains.is_empty() {
        let acme = acme::Config {
            names: config.tls.domains.clone(),
            email: config.tls.acme_email.clone(),
            directory: config.tls.acme_directory.clone(),
            ca_root: config.tls.acme_ca_root.clone(),
            data_dir: config.web.data_dir(),
            ways: acme::plan::Ways {
                tls_alpn: !running.single.is_empty(),
                http: !running.http.is_empty(),
            },
            backoff: acme::plan::Backoff::DEFAULT,
        };
        let tokens = acme::spawn(acme, running.certs.clone()).context("cannot start the ACME task")?;
        web.set_acme_http01(Arc::new(move |token| tokens.get(token)));
    }
    for (proto, addrs) in [("UDP", &running.udp), ("TCP", &running.tcp), ("TLS", &running.tls)] {
        for addr in addrs.iter() {
            tracing::info!(%addr, "STUN/TURN listening on {proto}");
        }
    }
    for addr in &running.second_stun {
        tracing::info!(%addr, "second STUN port listening, for /check's NAT comparison (stun.second_port)");
    }
    for addr in &running.http {
        tracing::info!(%addr, "HTTP (signaling, SDK, demo) listening");
    }
    for addr in &running.single {
        tracing::info!(%addr, "single port (HTTPS/WSS, TURN over TLS and TCP) listening");
    }
    let (worker_stats, certs) = (running.stats.clone(), running.certs.clone());
    let serves_tls = !running.tls.is_empty() || !running.single.is_empty();
    web.set_dashboard_sources(web::DashboardSources {
        turn: Box::new(move || turn_load(&worker_stats.sum())),
        certificate: Box::new(move || {
            let status = certs.status();
            let not_after_unix = status.not_after().filter(|_| serves_tls)?;
            Some(web::CertificateStatus {
                not_after_unix,
                self_signed: status.self_signed,
            })
        }),
    });
    let host = public_host(&config, &running, &interface_ips);
    let _ = ice_urls.set(IceUrls::new(&host, &running, config.stun.other_address));
    let json_logs = config.log.format == LogFormat::Json;
    // Said once everything is bound and written (the pid file, the metrics listener): a script waiting for these
    // lines finds a server that stays up.
    let mut ready = Vec::new();
    if let Some(a) = running.http.first() {
        ready.push((
            format!("ws://{host}:{}/ws", a.port()),
            format!("http://{host}:{}/demo", a.port()),
        ));
    }
    if let Some(a) = running.single.first() {
        ready.push((
            format!("wss://{host}:{}/ws", a.port()),
            format!("https://{host}:{}/demo", a.port()),
        ));
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
    if serves_tls {
        // A certificate from files that clients refuse for its dates: said at start, not only by /readyz.
        let status = running.certs.status();
        if let (Some(validity), false) = (status.validity, status.acme) {
            if let Some(problem) = validity.problem(unix_now()) {
                tracing::warn!("the TLS certificate is {problem}: every client refuses wss:// and turns: here; replace tls.cert and tls.key (they are read again when they change)");
            }
        }
        // An ACME identity's placeholder covers its names and is replaced once issued: nothing to say of it.
        let placeholder = running.certs.is_self_signed() && !config.tls.domains.is_empty();
        if !placeholder {
            if let Some(warning) =
                turns_host_warning(&host, running.certs.is_self_signed(), running.certs.covers(&host))
            {
                tracing::warn!("{warning}");
            }
        }
    }
    if generated_secret {
        match config.auth.users.is_empty() {
            true => tracing::info!("no credentials configured: generated a shared secret for this run"),
            false => tracing::info!(
                "no shared secret configured: generated one for this run, for the credentials signaling hands out \
                 (the static users work as configured)"
            ),
        }
    }
    if config.signal.secret.is_none() {
        tracing::warn!(
            "signal.secret is unset: anyone who can reach this server can mint TURN credentials and join rooms; \
             set signal.secret (--signal-secret, TRAVERSE_SIGNAL_SECRET) so that credentials come only with a join token"
        );
    }
    let clustered = config.signal.redis.is_some();
    let mut checks = readiness_checks(&running);
    if clustered {
        // The registry weighs this node's load against what it can hold (docs/scaling.md).
        web.set_node_capacity(web::NodeCapacity {
            allocations: fds.allocations as u64,
            connections: fds.connections as u64,
            relay_bits_per_second: config.cluster.relay_capacity_mbps.saturating_mul(1_000_000),
        });
        checks.extend(web.cluster_checks());
    }
    web.health().set_checks(checks);
    let _pid_file = match &config.cluster.pid_file {
        Some(path) => Some(drain::PidFile::write(path)?),
        None => None,
    };
    let handshakes = running.handshakes.clone();
    web.set_tls_failures(Arc::new(move |ip| {
        serde_json::to_value(handshakes.seen_from(std::time::Instant::now(), ip)).unwrap_or_default()
    }));
    let metrics_endpoint = match config.metrics.listen {
        Some(addr) => {
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on metrics.listen {addr}"))?;
            listener.set_nonblocking(true)?;
            let bound = listener.local_addr()?;
            tracing::info!(addr = %bound, "metrics listening: /metrics, /healthz, /readyz");
            if !json_logs {
                println!("metrics: http://{bound}/metrics");
            }
            Some((listener, metrics_endpoint(&config, &running, &web, outcomes.clone())))
        }
        None => None,
    };
    for (ws, demo) in ready {
        match json_logs {
            true => tracing::info!(signaling = %ws, demo = %demo, "signaling ready"),
            false => println!("signaling: {ws}   demo: {demo}"),
        }
    }
    print_ice_servers(&config, &host, &running);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let certs = running.certs.clone();
    let mut drain = drain::Drain::new(
        Duration::from_secs(config.cluster.drain_time),
        clustered,
        web.clone(),
        quotas,
    );
    let alone = web.clone();
    let acme_pending = serves_tls && certs.is_self_signed() && !config.tls.domains.is_empty();
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Some((listener, endpoint)) = metrics_endpoint {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(async move {
                        if let Err(e) = metrics::http::serve(listener, endpoint, std::future::pending()).await {
                            tracing::error!(error = %e, "the metrics listener stopped");
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, "cannot serve metrics"),
            }
        }
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) else {
            return;
        };
        // Under systemd (Type=notify) `systemctl start` returns now; elsewhere NOTIFY_SOCKET is unset and this is
        // nothing. Only once the signals are ours: a SIGTERM right after READY=1 killed the process unannounced.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "cannot tell systemd the server is ready (NOTIFY_SOCKET)");
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Under ACME the first start serves a placeholder, and the turns: host is checked against the certificate
        // once one is issued (at start there was nothing to check: the warning came only after a restart).
        let mut awaiting_issue = acme_pending;
        loop {
            if awaiting_issue && !certs.is_self_signed() {
                awaiting_issue = false;
                if let Some(warning) = turns_host_warning(&host, false, certs.covers(&host)) {
                    tracing::warn!("{warning}");
                }
            }
            tokio::select! {
                // In a cluster SIGTERM drains first (a second one stops at once); alone it stops.
                _ = term.recv() => if !drain.start("SIGTERM", std::time::Instant::now()) { break },
                _ = int.recv() => break,
                // Drain (docs/scaling.md): this node's rooms and sockets move to the other nodes of the cluster.
                _ = usr1.recv() => {
                    // Alone there is nowhere to send anything: the hub says so.
                    if !clustered {
                        alone.drain();
                    }
                    drain.start("SIGUSR1", std::time::Instant::now());
                }
                _ = tick.tick() => if drain.poll(std::time::Instant::now()) { break },
                _ = hup.recv() => match certs.reload() {
                    Ok(server::Reloaded::Acme) => {
                        tracing::info!("SIGHUP: the certificate is ACME's (renewed on its own schedule): nothing to read")
                    }
                    Ok(server::Reloaded::Generated) => {
                        tracing::info!("SIGHUP: the certificate was generated at start and is kept: nothing to read")
                    }
                    Ok(server::Reloaded::Files) => {
                        tracing::info!("SIGHUP: TLS certificate reloaded");
                        let warning = turns_host_warning(&host, certs.is_self_signed(), certs.covers(&host));
                        if let Some(warning) = warning.filter(|_| serves_tls) {
                            tracing::warn!("{warning}");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot reload the certificate; keeping the old one"),
                },
            }
        }
    });
    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    web.shutdown();
    // Let the 4202 close frames leave before the workers stop.
    std::thread::sleep(Duration::from_millis(200));
    running.shutdown();
    Ok(())
}

/// What `/readyz` checks: the listeners (bound by now: `server::start` binds all or fails) and, when TLS is served,
/// the certificate. A cluster node adds Redis and its drain (`web::Web::cluster_checks`).
fn readiness_checks(running: &server::Running) -> Vec<Arc<dyn metrics::Check>> {
    let mut listeners = Vec::new();
    for (kind, addrs) in [
        ("udp", &running.udp),
        ("stun", &running.second_stun),
        ("tcp", &running.tcp),
        ("tls", &running.tls),
        ("http", &running.http),
        ("single", &running.single),
    ] {
        listeners.extend(addrs.iter().map(|a| (kind, *a)));
    }
    let mut checks: Vec<Arc<dyn metrics::Check>> = vec![Arc::new(metrics::health::ListenersBound { listeners })];
    if !running.tls.is_empty() || !running.single.is_empty() {
        checks.push(Arc::new(metrics::health::Certificate {
            certs: running.certs.clone(),
        }));
    }
    checks
}

/// The metrics listener's sources: the workers' counters, the certificate (when TLS is served), the hub (asked at
/// each scrape) and the connection outcomes.
fn metrics_endpoint(
    config: &Config,
    running: &server::Running,
    web: &web::Web,
    outcomes: Arc<outcome::Outcomes>,
) -> metrics::Endpoint {
    let serves_tls = !running.tls.is_empty() || !running.single.is_empty();
    let sources = metrics::Sources {
        turn: running.stats.clone(),
        certs: serves_tls.then(|| running.certs.clone()),
        outcomes: Some(outcomes),
        upgrade_refusals: Some({
            let web = web.clone();
            Arc::new(move || web.upgrade_refusals())
        }),
        http_requests_refused: Some({
            let web = web.clone();
            Arc::new(move || web.requests_refused())
        }),
    };
    let hub = web.hub().clone();
    metrics::Endpoint {
        metrics: Arc::new(metrics::Metrics::new(sources)),
        health: web.health().clone(),
        token: config.metrics.token.clone(),
        hub: Arc::new(move || {
            let hub = hub.clone();
            Box::pin(async move { hub.stats().await })
        }),
        send_stall_timeout: config.limits.send_stall(),
    }
}

/// The dashboard's view of the workers' summed TURN counters.
/// What the dashboard and the cluster's load weigh: everything relayed, the kernel fast path's included (a node
/// relaying in XDP is as busy, and as close to its `relay_capacity_mbps`).
fn turn_load(stats: &turn::Stats) -> web::TurnLoad {
    let (to_peer, to_client) = (&stats.to_peer, &stats.to_client);
    let (fast_to_peer, fast_to_client) = (&stats.fast_path_to_peer, &stats.fast_path_to_client);
    web::TurnLoad {
        allocations: stats.allocations as u64,
        relayed_packets_to_peer: to_peer.udp.packets + to_peer.tcp.packets + to_peer.tls.packets + fast_to_peer.packets,
        relayed_bytes_to_peer: to_peer.udp.bytes + to_peer.tcp.bytes + to_peer.tls.bytes + fast_to_peer.bytes,
        relayed_packets_to_client: to_client.udp.packets
            + to_client.tcp.packets
            + to_client.tls.packets
            + fast_to_client.packets,
        relayed_bytes_to_client: to_client.udp.bytes + to_client.tcp.bytes + to_client.tls.bytes + fast_to_client.bytes,
    }
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
        Box::pin(async move { web.serve_connection(HttpConn(io), remote, scheme).await })
    }

    fn worker_started(&self, index: usize, workers: usize) {
        self.0.worker_started(index, workers);
    }
}

/// A connection of the server's, as the web side takes it: a signaling socket can move with it to the worker thread
/// that holds its room (`web::Connection`, `server::Io`).
struct HttpConn(Box<dyn server::Io>);

impl web::Connection for HttpConn {
    fn detach(&mut self) -> std::io::Result<()> {
        self.0.detach()
    }

    fn attach(&mut self) -> std::io::Result<()> {
        self.0.attach()
    }
}

impl tokio::io::AsyncRead for HttpConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for HttpConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The host put in iceServers: the configured one, else the external or listening address, else an interface's.
fn public_host(config: &Config, running: &server::Running, interface_ips: &[IpAddr]) -> String {
    // A `turns:` URL must name what the certificate names.
    if let Some(host) = config.signal.public_host.as_ref().or(config.tls.domains.first()) {
        // An IPv6 address goes in URLs in brackets (`validate` takes it with or without).
        return match host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => host.clone(),
        };
    }
    let ip = config
        .relay
        .external_v4
        .first()
        .copied()
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
        .or_else(|| interface_address(interface_ips))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if !turn::policy::is_public(ip) {
        tracing::warn!(
            %ip,
            "the iceServers and URLs handed to peers name {ip}, which peers outside this network cannot reach; set \
             signal.public_host (--public-host) to this server's public name or address"
        );
    }
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// The interface address to advertise when nothing is configured: a public IPv4 one, else a public IPv6 one, else
/// any IPv4 one but loopback (a lab, or a host behind NAT: then a warning says to set `signal.public_host`).
fn interface_address(interface_ips: &[IpAddr]) -> Option<IpAddr> {
    let ips = || interface_ips.iter().copied();
    ips()
        .find(|ip| ip.is_ipv4() && turn::policy::is_public(*ip))
        .or_else(|| ips().find(|ip| ip.is_ipv6() && turn::policy::is_public(*ip)))
        .or_else(|| ips().find(|ip| ip.is_ipv4() && !ip.is_loopback()))
}

/// STUN and TURN URLs of this server. `stun:` URLs carry no `?transport` (Chrome ≥ 110 rejects it).
#[derive(Debug)]
struct IceUrls {
    stun: Vec<String>,
    turn: Vec<String>,
    /// The second STUN ports (`stun.second_port`), for `/check` only (`natProbes`): not in the calls' `iceServers`,
    /// where a port a firewall drops would hold gathering back for every call.
    probes: Vec<String>,
}

impl IceUrls {
    /// `other`: the RFC 5780 alternate address (`stun.other_address`), handed out as a second STUN server.
    fn new(host: &str, running: &server::Running, other: Option<SocketAddr>) -> Self {
        let mut stun = Vec::new();
        let mut turn = Vec::new();
        let mut probes = Vec::new();
        if let Some(a) = running.udp.first() {
            if let Some(second) = running.second_stun.iter().find(|s| s.is_ipv4() == a.is_ipv4()) {
                probes.push(format!("stun:{host}:{}", second.port()));
            }
            stun.push(format!("stun:{host}:{}", a.port()));
            turn.push(format!("turn:{host}:{}?transport=udp", a.port()));
            if let Some(other) = other {
                stun.push(other_stun_url(host, *a, other));
            }
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
        Self { stun, turn, probes }
    }

    /// The `iceServers` array: a STUN entry and a TURN entry with the credential, each only when it has a URL (a
    /// browser's `RTCPeerConnection` throws on an entry with no URL: with TURN or UDP off, every call would fail).
    fn servers(&self, username: &str, credential: &str) -> serde_json::Value {
        let mut servers = Vec::new();
        if !self.stun.is_empty() {
            servers.push(json!({ "urls": self.stun }));
        }
        if !self.turn.is_empty() {
            servers.push(json!({ "urls": self.turn, "username": username, "credential": credential }));
        }
        serde_json::Value::Array(servers)
    }
}

/// `ice.extra` as `iceServers` entries: a static credential as given, a TURN REST secret's minted for `user` until
/// `expiry`, as this server's own are.
fn extra_servers(extra: &[config::ExtraIceServer], user: &str, expiry: u64) -> serde_json::Value {
    let entries = extra.iter().map(|e| match (&e.secret, &e.username, &e.credential) {
        (Some(secret), _, _) => {
            let (username, credential) = mint_at(secret, user, expiry);
            json!({ "urls": e.urls, "username": username, "credential": credential })
        }
        (None, Some(username), Some(credential)) => {
            json!({ "urls": e.urls, "username": username, "credential": credential })
        }
        _ => json!({ "urls": e.urls }),
    });
    serde_json::Value::Array(entries.collect())
}

/// The RFC 5780 alternate address as a `stun:` URL. A browser cannot send CHANGE-REQUEST, so `/check` classifies
/// the NAT's mapping by comparing what two STUN addresses see — and it knows two addresses share an IP only by their
/// host: an alternate on the primary's IP is named by the primary's host, one on another IP by its address.
fn other_stun_url(host: &str, primary: SocketAddr, other: SocketAddr) -> String {
    let other_host = match other.ip() {
        ip if ip == primary.ip() => host.to_owned(),
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!("stun:{other_host}:{}", other.port())
}

/// What to warn of at start (and after a reload) when the `turns:` URLs handed out name `host`: a self-signed
/// certificate is refused by browsers whatever it names; another is refused when it does not cover `host` — e.g. a
/// certificate for a name while `signal.public_host` is unset and the URLs carry an IP address. Either way TURN over
/// TLS fails, silently, for every user who can only reach 443. The doctor says the same.
fn turns_host_warning(host: &str, self_signed: bool, covered: bool) -> Option<String> {
    if self_signed {
        return Some(format!(
            "TLS uses a generated self-signed certificate: browsers refuse it, so wss:// and the turns: URLs \
             handed out (turns:{host}) fail for them; set tls.cert and tls.key, or --domain for a certificate from \
             an ACME CA"
        ));
    }
    (!covered).then(|| {
        format!(
            "the turns: URLs handed out name {host}, which the certificate does not cover: browsers refuse TURN \
             over TLS there, so users on networks that allow only 443 cannot connect; set signal.public_host \
             (--public-host) to a name the certificate covers, or give a certificate for {host}"
        )
    })
}

/// Prints an `iceServers` array with a fresh credential, ready to paste into `new RTCPeerConnection(...)`. With JSON
/// logs, a log event with the URLs only: stdout carries nothing but JSON then, and a live credential does not go to
/// a log shipper.
fn print_ice_servers(config: &Config, host: &str, running: &server::Running) {
    let urls = IceUrls::new(host, running, config.stun.other_address);
    if config.log.format == LogFormat::Json {
        tracing::info!(
            stun = ?urls.stun,
            turn = ?urls.turn,
            "ready; credentials: `traverse credentials --secret …` or GET /api/ice-servers"
        );
        return;
    }
    let (username, credential) = match config.auth.secrets.first() {
        Some(secret) => mint(secret, "traverse", config.auth.credential_ttl),
        None => (String::new(), String::new()),
    };
    if urls.turn.is_empty() {
        tracing::warn!(
            "no TURN listener (UDP, TCP, TLS or single port): the iceServers handed out offer no relay, so peers \
             behind symmetric NATs or firewalls that block UDP cannot connect"
        );
    }
    let ice = urls.servers(&username, &credential);
    println!("iceServers: {}", serde_json::to_string(&ice).unwrap_or_default());
}

/// A configuration file that holds secrets and that every user of the host can read gives each of them the power
/// to mint join tokens or TURN credentials: say so, with the two ways out.
fn warn_if_secrets_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.permissions().mode() & 0o004 == 0 {
        return;
    }
    let Ok(file) = Config::load(&path.to_path_buf()) else {
        return;
    };
    let held: Vec<&str> = [
        ("signal.secret", file.signal.secret.is_some()),
        ("auth.secrets", !file.auth.secrets.is_empty()),
        ("auth.users", !file.auth.users.is_empty()),
        ("web.admin_token", file.web.admin_token.is_some()),
        ("metrics.token", file.metrics.token.is_some()),
        (
            "ice.extra",
            file.ice
                .extra
                .iter()
                .any(|e| e.secret.is_some() || e.credential.is_some()),
        ),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    if !held.is_empty() {
        tracing::warn!(
            file = %path.display(),
            "the configuration file holds {} and every user of this host can read it: `chmod 640` it (owner and the \
             service's group), or move them to the environment (TRAVERSE_SIGNAL_SECRET, TRAVERSE_SECRETS, … in a \
             file only the service reads)",
            held.join(", ")
        );
    }
}

/// The state directory (`web.data_dir`) must take files: ACME keeps its account and certificates there (a
/// certificate it cannot store is ordered again at every start, a new account each time), and `/check` the
/// reports users share. Refused for ACME; otherwise a warning, as only shared reports need it.
fn check_data_dir(config: &Config) -> anyhow::Result<()> {
    let dir = config.web.data_dir();
    let Err(e) = probe_writable(&dir) else { return Ok(()) };
    if !config.tls.domains.is_empty() {
        bail!(
            "web.data_dir {} cannot take files ({e}): ACME keeps its account and certificates there; make it \
             writable by this process's user, or set web.data_dir",
            dir.display()
        );
    }
    tracing::warn!(
        dir = %dir.display(),
        error = %e,
        "web.data_dir cannot take files: reports shared from /check will fail; make it writable by this process's \
         user, or set web.data_dir"
    );
    Ok(())
}

/// Whether files can be created in `dir`, or, while it does not exist yet, in its nearest existing ancestor (where
/// it will be created): a probe file is made and removed, nothing else is left behind.
fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let mut at = dir;
    while !at.exists() {
        at = match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
    }
    let probe = at.join(format!(".tmp-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

fn init_logging(config: &Config) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    // Checked by `validate` (`config::log_filter`).
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    JSON_LOGS.store(
        config.log.format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Colours only for a person at a terminal: a file or a log shipper gets no escape codes.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match config.log.format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let lines = config.log.lines_per_second;
    if lines == 0 {
        tracing_subscriber::registry().with(fmt.with_filter(filter)).init();
    } else {
        let budget = Arc::new(log_budget::LogBudget::new(lines, std::time::Instant::now()));
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter.and(log_budget::BudgetFilter(budget.clone()))))
            .init();
        budget.report_in_background(lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["traverse", "serve"].iter().chain(args)).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        *args
    }

    #[test]
    fn a_turns_host_the_certificate_does_not_cover_is_warned_of() {
        let warning = turns_host_warning("203.0.113.5", false, false).unwrap();
        assert!(
            warning.contains("name 203.0.113.5, which the certificate does not cover")
                && warning.contains("set signal.public_host"),
            "{warning}"
        );
        assert_eq!(turns_host_warning("turn.example.com", false, true), None);
        let self_signed = turns_host_warning("203.0.113.5", true, false).unwrap();
        assert!(
            self_signed.contains("self-signed") && !self_signed.contains("does not cover"),
            "{self_signed}"
        );
    }

    #[test]
    fn the_rfc5780_alternate_is_a_second_stun_url() {
        let primary: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let url = |other: &str| other_stun_url("turn.example.com", primary, other.parse().unwrap());
        assert_eq!(url("198.51.100.1:3479"), "stun:198.51.100.1:3479");
        assert_eq!(url("192.0.2.1:3479"), "stun:turn.example.com:3479");
        let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        assert_eq!(
            other_stun_url("h", v6, "[2001:db8::2]:3479".parse().unwrap()),
            "stun:[2001:db8::2]:3479"
        );
    }

    #[test]
    fn unknown_variables_are_named_with_the_option_they_probably_meant() {
        let warnings = unknown_environment(
            [
                "TRAVERSE_MAX_CONNECTIONS",
                "TRAVERSE_LIMITS_MAX_CONNECTIONS",
                "TRAVERSE_UDP",
                "TRAVERSE_CONFIG",
                "TRAVERSE_NONSENSE",
                "HOME",
            ]
            .into_iter(),
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("did you mean TRAVERSE_LIMITS_MAX_CONNECTIONS"));
        assert!(warnings[1].starts_with("TRAVERSE_NONSENSE is not an option"));
        // `--relay-ports`' variable is read; `traverse credentials`' secret is not the server's.
        let warnings = unknown_environment(["TRAVERSE_RELAY_PORTS", "TRAVERSE_SECRET"].into_iter());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("`traverse credentials` only") && warnings[0].ends_with("are TRAVERSE_SECRETS"),
            "{warnings:?}"
        );
    }

    #[test]
    fn ice_servers_leave_out_an_entry_with_no_url() {
        let only_turn = IceUrls {
            stun: Vec::new(),
            turn: vec!["turn:h:3478?transport=tcp".into()],
            probes: vec!["stun:h:3479".into()],
        };
        let v = only_turn.servers("u", "c");
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v[0]["urls"][0], "turn:h:3478?transport=tcp");
        assert_eq!(v[0]["username"], "u");
        let none = IceUrls {
            stun: Vec::new(),
            turn: Vec::new(),
            probes: Vec::new(),
        };
        assert_eq!(
            none.servers("u", "c"),
            json!([]),
            "an empty entry makes RTCPeerConnection throw"
        );
    }

    #[test]
    fn the_load_counts_what_the_kernel_relayed() {
        let mut stats = turn::Stats::default();
        stats.to_peer.udp = turn::Traffic { packets: 1, bytes: 100 };
        stats.fast_path_to_peer = turn::Traffic {
            packets: 10,
            bytes: 1000,
        };
        stats.fast_path_to_client = turn::Traffic {
            packets: 20,
            bytes: 2000,
        };
        let load = turn_load(&stats);
        assert_eq!((load.relayed_packets_to_peer, load.relayed_bytes_to_peer), (11, 1100));
        assert_eq!(
            (load.relayed_packets_to_client, load.relayed_bytes_to_client),
            (20, 2000)
        );
    }

    #[test]
    fn the_advertised_address_is_a_public_one_when_the_host_has_one() {
        let ips = |list: &[&str]| list.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpAddr>>();
        let pick = |list: &[&str]| interface_address(&ips(list)).map(|ip| ip.to_string());
        assert_eq!(
            pick(&["127.0.0.1", "10.0.0.5", "203.0.113.9"]).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            pick(&["10.0.0.5", "fe80::1", "2001:db8::9"]).as_deref(),
            Some("2001:db8::9")
        );
        assert_eq!(
            pick(&["127.0.0.1", "172.17.0.1", "fd00::1"]).as_deref(),
            Some("172.17.0.1")
        );
        assert_eq!(pick(&["127.0.0.1", "::1"]), None);
    }

    #[test]
    fn credentials_mint_with_the_server_s_first_secret_when_given_none() {
        let env = |name: &str| (name == "TRAVERSE_SECRETS").then(|| " first-secret-0123456789, second".to_owned());
        assert_eq!(credential_secret(None, env).as_deref(), Some("first-secret-0123456789"));
        assert_eq!(credential_secret(Some("given".into()), env).as_deref(), Some("given"));
        assert_eq!(credential_secret(None, |_| None), None);
        let both = |name: &str| Some(format!("{name}-0123456789"));
        assert_eq!(
            credential_secret(None, both).as_deref(),
            Some("TRAVERSE_AUTH_SECRETS-0123456789"),
            "the section's own variable first, as the server reads it"
        );
    }

    #[test]
    fn everyday_flags_and_set_reach_their_keys() {
        let args = serve_args(&[
            "--udp",
            "127.0.0.1:1,127.0.0.1:2",
            "--udp",
            "127.0.0.1:3",
            "--relay-ports",
            "50000-50010",
            "--mux",
            "127.0.0.1:443",
            "--user",
            "a:b",
            "--log-format",
            "json",
            "--set",
            "signal.max_rooms=7",
        ]);
        let config = configure(&args, |_| None).unwrap();
        assert_eq!(config.listen.udp.len(), 3);
        assert_eq!((config.relay.port_min, config.relay.port_max), (50000, 50010));
        assert_eq!(config.listen.single, vec![SocketAddr::from(([127, 0, 0, 1], 443))]);
        assert_eq!(config.auth.users[0].name, "a");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.signal.limits.max_rooms, 7);
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let path = std::env::temp_dir().join(format!("traverse-precedence-{}.toml", std::process::id()));
        std::fs::write(&path, "[limits]\nworkers = 3\nidle_timeout = 5\nauth_timeout = 4\n").unwrap();
        let file = path.to_str().unwrap();
        let env = |name: &str| match name {
            "TRAVERSE_LIMITS_WORKERS" | "TRAVERSE_LIMITS_IDLE_TIMEOUT" => Some("6".to_owned()),
            _ => None,
        };
        let config = configure(&serve_args(&["--config", file, "--workers", "8"]), env).unwrap();
        assert_eq!(config.limits.workers, 8, "flag over variable");
        assert_eq!(config.limits.idle_timeout, 6, "variable over file");
        assert_eq!(config.limits.auth_timeout, 4, "file over default");
        // `--set` comes after the everyday flags.
        let args = serve_args(&["--config", file, "--set", "limits.workers=9", "--workers", "8"]);
        assert_eq!(configure(&args, env).unwrap().limits.workers, 9);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn every_error_of_every_layer_is_reported() {
        let args = serve_args(&["--udp", "nonsense", "--set", "limits.nosuch=1", "--set", "auth.realm="]);
        let errors = configure(&args, |name| (name == "TRAVERSE_SIGNAL_BURST").then(|| "x".to_owned())).unwrap_err();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("TRAVERSE_SIGNAL_BURST: "), "{errors:?}");
        assert!(errors[1].starts_with("--udp: "), "{errors:?}");
        assert!(
            errors[2].starts_with("--set limits.nosuch=1: unknown field `nosuch`"),
            "{errors:?}"
        );
        assert!(errors[3].starts_with("auth.realm: must not be empty"), "{errors:?}");
    }
}
