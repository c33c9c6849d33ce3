#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! `traverse doctor <server>`: tells in plain words why a WebRTC connection fails on this network.
//!
//! Model: a sans-IO core — the NAT classifier ([`nat`]), the verdict rules ([`verdict`]) and the quality grades
//! ([`quality`]) are pure functions of what was observed, unit tested with tables — driven by an I/O layer
//! ([`checks`], a module per check) that runs the probes over real sockets, each under its own deadline, independent
//! ones at once, with a live progress display on stderr.
//!
//! Data flow, one way: the checks return typed [`facts::Facts`] (each failure a [`CheckError`]) → the verdict is
//! decided from them → the [`report::Report`] is built last from the facts and the verdict, for JSON and text.
//!
//! Contract: [`run`] returns the process exit code — 0 when something works (signaling or some TURN transport),
//! 2 when nothing does; usage errors are [`Error`]s (exit 1 at the edge). `--json` prints the [`report::Report`]
//! (schema in docs/doctor.md).

pub mod checks;
pub mod client;
pub mod error;
pub mod facts;
pub mod http;
pub mod ice;
pub mod nat;
pub mod progress;
pub mod proxy;
pub mod quality;
pub mod report;
pub mod terminal;
pub mod tls;
pub mod verdict;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

pub use error::{CheckError, Error};

/// `traverse doctor` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The Traverse server: http://HOST:PORT, https://HOST[:PORT] or HOST[:PORT] (then HTTPS and HTTP are tried).
    pub server: String,
    /// Print the report as JSON on stdout (field names are stable; see docs/doctor.md).
    #[arg(long)]
    pub json: bool,
    /// Token for /api/ice-servers when the server has a signaling secret (`traverse token`).
    #[arg(long, env = "TRAVERSE_DOCTOR_TOKEN")]
    pub token: Option<String>,
    /// TURN username, instead of the one /api/ice-servers hands out.
    #[arg(long)]
    pub turn_user: Option<String>,
    /// TURN password.
    #[arg(long)]
    pub turn_password: Option<String>,
    /// A STUN server HOST:PORT to test as well (repeatable).
    #[arg(long = "stun")]
    pub stun: Vec<String>,
    /// A TURN URL to test as well, e.g. turn:host:3478?transport=tcp (repeatable).
    #[arg(long = "turn")]
    pub turn: Vec<String>,
    /// Go on when the signaling certificate is not trusted (self-signed, expired, wrong name).
    #[arg(long)]
    pub insecure: bool,
    /// Also probe hairpinning (off by default: some firewalls take it for an attack).
    #[arg(long)]
    pub hairpin: bool,
    /// Also measure throughput through the relay, for this many seconds.
    #[arg(long, num_args = 0..=1, default_missing_value = "3", value_name = "SECONDS")]
    pub throughput: Option<f64>,
    /// Deadline of each network step of a check (connect, handshake, transaction), milliseconds.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    pub timeout_ms: u64,
    /// STUN/TURN retransmission interval over UDP, milliseconds (not doubled: a lossy link is no refusing one).
    #[arg(long, default_value_t = 250, value_name = "MS")]
    pub rto_ms: u64,
    /// How long to wait for a NAT filtering or hairpin probe, milliseconds.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    pub probe_wait_ms: u64,
    /// HTTPS port probed for signaling and TURN over TLS besides the server's own; 0 to skip.
    #[arg(long, default_value_t = 443)]
    pub https_port: u16,
    /// HTTP port probed for signaling besides the server's own; 0 to skip.
    #[arg(long, default_value_t = 80)]
    pub http_port: u16,
    /// Packets in the relay round trip.
    #[arg(long, default_value_t = 50)]
    pub packets: u32,
    /// Milliseconds between relay round-trip packets.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub interval_ms: u64,
    /// An HTTP proxy every TCP connection goes through (CONNECT), as the browsers of a network that lets nothing
    /// out but through one: http://[USER:PASSWORD@]HOST:PORT. Default: HTTPS_PROXY, else ALL_PROXY (minus
    /// NO_PROXY); `none` ignores them.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// No progress display on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// No colour even on a terminal.
    #[arg(long, env = "NO_COLOR", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_color: bool,
}

/// Turns the flags into [`checks::Settings`], refusing what cannot work.
pub fn settings(args: &Args) -> Result<checks::Settings, Error> {
    let server = ice::ServerSpec::parse(&args.server)?;
    let mut stun = Vec::new();
    for s in &args.stun {
        let url = ice::IceUrl::parse(&format!("stun:{s}")).ok_or_else(|| Error::BadArgument {
            what: "--stun",
            value: s.clone(),
            why: "expected HOST:PORT",
        })?;
        stun.push(url);
    }
    let mut turn = Vec::new();
    for t in &args.turn {
        let url = ice::IceUrl::parse(t)
            .filter(|u| u.turn)
            .ok_or_else(|| Error::BadArgument {
                what: "--turn",
                value: t.clone(),
                why: "expected turn:HOST:PORT?transport=udp|tcp or turns:HOST:PORT",
            })?;
        turn.push(url);
    }
    if args.turn_user.is_some() != args.turn_password.is_some() {
        return Err(Error::BadArgument {
            what: "credential",
            value: String::new(),
            why: "--turn-user and --turn-password go together",
        });
    }
    if args.timeout_ms == 0 || args.rto_ms == 0 {
        return Err(Error::BadArgument {
            what: "timeout",
            value: "0".into(),
            why: "must be at least 1 ms",
        });
    }
    let throughput = match args.throughput {
        Some(secs) if !(0.1..=600.0).contains(&secs) => {
            return Err(Error::BadArgument {
                what: "--throughput",
                value: secs.to_string(),
                why: "seconds between 0.1 and 600",
            })
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let proxy = match args.proxy.as_deref().map(str::trim) {
        Some("none") | Some("") => None,
        Some(url) => Some(proxy::Proxy::parse(url).map_err(|why| Error::Proxy {
            value: proxy::redacted(url),
            why,
        })?),
        None => match proxy::Proxy::from_env() {
            Some(Ok(p)) => Some(p),
            Some(Err(why)) => {
                return Err(Error::Proxy {
                    value: "HTTPS_PROXY / ALL_PROXY".to_owned(),
                    why,
                })
            }
            None => None,
        },
    };
    Ok(checks::Settings {
        proxy: proxy.map(Arc::new),
        server,
        server_label: args.server.clone(),
        token: args.token.clone(),
        turn_user: args.turn_user.clone(),
        turn_password: args.turn_password.clone(),
        stun,
        turn,
        insecure: args.insecure,
        hairpin: args.hairpin,
        throughput,
        timeout: Duration::from_millis(args.timeout_ms),
        rto: Duration::from_millis(args.rto_ms),
        probe_wait: Duration::from_millis(args.probe_wait_ms),
        https_port: args.https_port,
        http_port: args.http_port,
        packets: args.packets.clamp(1, 10_000),
        interval: Duration::from_millis(args.interval_ms),
    })
}

/// Runs the doctor and prints its report; returns the exit code (0 something works, 2 nothing works).
pub fn run(args: Args) -> Result<i32, Error> {
    let settings = settings(&args)?;
    let stderr_tty = std::io::stderr().is_terminal();
    let stdout_tty = std::io::stdout().is_terminal();
    let progress = Arc::new(progress::Progress::new(
        !args.quiet,
        stderr_tty,
        stderr_tty && !args.no_color,
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let facts = runtime.block_on(checks::run_all(settings, progress));
    let verdict = verdict::verdict(&facts);
    let report = report::Report::new(&facts, verdict);
    let mut out = std::io::stdout().lock();
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Output(e.to_string()))?;
        writeln!(out, "{text}").map_err(|e| Error::Output(e.to_string()))?;
    } else {
        let style = report::Style {
            color: stdout_tty && !args.no_color,
        };
        let text = terminal::safe(&report.render(style), style.color);
        write!(out, "{text}").map_err(|e| Error::Output(e.to_string()))?;
    }
    Ok(report.exit_code)
}
