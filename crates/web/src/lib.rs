//! The HTTP and WebSocket side of Traverse: the signaling endpoint (`/ws`), its HTTP twin (`/api/join-check`),
//! `/api/ice-servers`, the browser SDK, the demo page, and the troubleshooter (`/check`) with its report store
//! ([`reports`]: `/api/reports`), and the operator's dashboard ([`dashboard`]: `/dashboard`).
//!
//! Model: the sans-IO [`signal::MemoryHub`] is sharded by room, one per core, each behind a mutex of its own
//! ([`shards`]); every socket is a task ([`ws`]) that hands its frames to its room's shard in place and writes what
//! the hub routes to it — no hub thread on the message path. With `--redis`, the rooms are sharded over hub tasks
//! (`cluster.hub_shards`) on the worker threads (`cluster.hub_on_workers`) or on threads of their own, each a node of
//! the cluster that takes its sockets' frames over a bounded channel ([`cluster_shards`], [`cluster`]). Connections
//! arrive from the server crate's listeners — a plain HTTP port, or the single port that also carries TURN — through
//! [`Web::serve_connection`], so HTTP never needs a listener of its own.
//!
//! Budgets a stranger could exhaust here are charged to a [`signal::Source`] (an IPv4 address, an IPv6 /64):
//! credential minting and report submission are rate-limited per source, and stored reports are counted per source
//! ([`reports`]).

mod cluster;
mod cluster_shards;
pub mod dashboard;
mod forwarded;
mod hub;
mod origins;
mod outbox;
mod placement;
mod reports;
mod routes;
mod shards;
mod websocket;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use signal::Limits;

pub use dashboard::{CertificateStatus, DashboardSources, TurnLoad};
pub use hub::HubHandle;
pub use origins::{AllowedOrigins, BadAllowedOrigin};
pub use placement::Connection;
pub use reports::{DEFAULT_MAX_REPORTS, MAX_REPORTS_PER_SOURCE, MAX_REPORT_BYTES};

/// Mints `iceServers` (a JSON array) with a fresh TURN credential for a user at a Unix time.
pub type IceServersFn = Arc<dyn Fn(&str, u64) -> serde_json::Value + Send + Sync>;

/// The `natProbes` of `/api/ice-servers` (known once the listeners are bound).
pub type NatProbesFn = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// `servers` with `extra`'s entries for `user` at `unix` appended.
pub(crate) fn with_extra(
    mut servers: serde_json::Value,
    extra: &IceServersFn,
    user: &str,
    unix: u64,
) -> serde_json::Value {
    if let (Some(list), serde_json::Value::Array(more)) = (servers.as_array_mut(), extra(user, unix)) {
        list.extend(more);
    }
    servers
}

/// A node of a cluster (`docs/scaling.md`).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The Redis every node shares.
    pub redis: String,
    /// Hub tasks of this node; 0: one per four cores, at most 8 (`web::cluster_shards`).
    pub hub_shards: usize,
    /// `Some(workers)`: the hub tasks run on the server's worker threads instead, task *k* on worker *k* (at most
    /// one per worker), each started by [`Web::worker_started`] (`cluster.hub_on_workers`).
    pub on_workers: Option<usize>,
}

/// Everything the web side needs.
#[derive(Clone)]
pub struct WebConfig {
    pub limits: Limits,
    /// With a secret, joins and `/api/ice-servers` need an HS256 token signed by it.
    pub token_secret: Option<Vec<u8>>,
    pub ice_servers: IceServersFn,
    /// Other servers' `iceServers` entries (`ice.extra`), appended after this server's (and its cluster's); not
    /// part of what a node advertises to the others.
    pub extra_ice_servers: IceServersFn,
    /// `stun:` URLs of this server's second STUN ports (`stun.second_port`): `/api/ice-servers` hands them out as
    /// `natProbes`, for `/check` to compare what two addresses see; calls never gather against them.
    pub nat_probes: NatProbesFn,
    /// Lifetime of minted TURN credentials, reported by `/api/ice-servers`.
    pub credential_ttl_secs: u64,
    /// Where reports shared from `/check` are kept, one JSON file each; created on the first report.
    pub data_dir: PathBuf,
    /// Bearer token for the operator's list `GET /api/reports`; unset: the list is disabled.
    pub admin_token: Option<String>,
    /// Reports kept; the oldest are pruned beyond it.
    pub max_reports: usize,
    /// Connection outcomes as diagnosed from the SDK's reports; the dashboard and the metrics read them.
    pub outcomes: Arc<outcome::Outcomes>,
    /// Pages that may use the API, the SDK and the signaling socket from a browser (CORS, WebSocket `Origin`).
    pub allowed_origins: AllowedOrigins,
    /// Serve a signaling socket whose upgrade names its room on the worker thread that holds the room
    /// ([`placement`]).
    pub room_affinity: bool,
    /// HTTP requests a second from one source (an IPv4 address, an IPv6 /64), after a burst of five seconds' worth,
    /// on every connection together (keep-alive ones too): past it `429 rate-limited` and the connection is closed,
    /// so that a source ignoring the answer pays a new connection (and its rate) for every try. 0: no limit.
    pub requests_per_second_per_source: u32,
    /// Reverse proxies in front of the HTTP ports: a request from one is the client's its `X-Forwarded-For` or
    /// `Forwarded` names, for every per-source limit.
    pub trusted_proxies: Vec<source::IpNet>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("limits", &self.limits)
            .field("token_secret", &self.token_secret.as_ref().map(|_| ".."))
            .field("data_dir", &self.data_dir)
            .field("admin_token", &self.admin_token.as_ref().map(|_| ".."))
            .field("max_reports", &self.max_reports)
            .field("requests_per_second_per_source", &self.requests_per_second_per_source)
            .finish_non_exhaustive()
    }
}

/// A host name that cannot be put in a URL.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a host name or address that can be put in a URL")]
pub struct BadOrigin(String);

/// How a connection reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    /// Plain HTTP on a port that also speaks TLS: every request is redirected to HTTPS.
    HttpRedirect,
}

/// The running web side; cheap to clone.
#[derive(Clone, Debug)]
pub struct Web {
    app: Arc<routes::App>,
    router: axum::Router,
    redirect: axum::Router,
}

impl Web {
    /// Starts the hub thread, rooms in this process only.
    pub fn start(config: WebConfig) -> std::io::Result<Self> {
        Self::start_with_redis(config, None)
    }

    /// Starts the hub; with `cluster`, as a node of the cluster sharing that Redis (`docs/scaling.md`).
    pub fn start_with_redis(config: WebConfig, cluster: Option<Cluster>) -> std::io::Result<Self> {
        let redis = cluster.as_ref().map(|c| c.redis.clone());
        let reports = reports::ReportStore::open(
            config.data_dir.clone(),
            reports::ReportLimits {
                max_reports: config.max_reports,
                max_per_source: MAX_REPORTS_PER_SOURCE,
                max_bytes: MAX_REPORT_BYTES,
            },
        )?;
        // In a cluster the reports are the cluster's (docs/scaling.md).
        tracing::info!(dir = %reports.dir().display(), held = reports.held(), "troubleshooter report store");
        let reports = match &redis {
            Some(url) => reports::Reports::with_redis(reports, url),
            None => reports::Reports::on_files(reports),
        };
        let hub = hub::spawn(&config, cluster)?;
        let app = Arc::new(routes::App::new(config, hub, reports));
        Ok(Self {
            router: routes::router(app.clone(), Scheme::Https),
            redirect: routes::router(app.clone(), Scheme::HttpRedirect),
            app,
        })
    }

    /// Called on the server's worker thread `index` (of `workers`) as it starts, inside its runtime: its sockets'
    /// home shard is the shard of that index, with [`Cluster::on_workers`] that shard's hub task starts here, and
    /// signaling sockets of the rooms it holds move here ([`placement`]).
    pub fn worker_started(&self, index: usize, workers: usize) {
        self.app.hub.worker_started(index, workers);
    }

    pub fn hub(&self) -> &HubHandle {
        &self.app.hub
    }

    /// The connection outcome store the hub records into (the one `WebConfig::outcomes` gave), for the metrics.
    pub fn outcomes(&self) -> &Arc<outcome::Outcomes> {
        &self.app.config.outcomes
    }

    /// Signaling sockets refused before the WebSocket upgrade (an HTTP answer), by code, for metrics.
    pub fn upgrade_refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.app
            .upgrade_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// HTTP requests refused for the per-source request rate (`WebConfig::requests_per_second_per_source`).
    pub fn requests_refused(&self) -> u64 {
        self.app.requests_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The readiness checks `/healthz` and `/readyz` answer with, here and on the metrics listener.
    pub fn health(&self) -> &Arc<metrics::Health> {
        &self.app.health
    }

    /// Where plain HTTP on the single port is redirected: `https://host[:port]`, from configuration once the port is
    /// bound (never from a request's Host). An IPv6 address is bracketed here. Set once; later calls are ignored.
    pub fn set_https_origin(&self, host: &str, port: u16) -> Result<(), BadOrigin> {
        let host = match host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => host.to_owned(),
        };
        let authority = match port {
            443 => host,
            port => format!("{host}:{port}"),
        };
        // Only an authority and nothing else: no path, user info or spaces smuggled in through the name.
        match authority.parse::<axum::http::uri::Authority>() {
            Ok(parsed) if parsed.as_str() == authority && !authority.contains('@') => {
                let _ = self.app.https_origin.set(format!("https://{authority}"));
                Ok(())
            }
            _ => Err(BadOrigin(authority)),
        }
    }

    /// What the dashboard reads beside the hub: the TURN workers' counters and the certificate, which exist only
    /// once the server runs. Set once; later calls are ignored.
    pub fn set_dashboard_sources(&self, sources: DashboardSources) {
        // The same TURN load goes into a cluster node's registry entry (docs/scaling.md).
        let turn: Arc<dyn Fn() -> dashboard::TurnLoad + Send + Sync> = Arc::from(sources.turn);
        self.app.hub.turn_load.set(turn.clone());
        self.app.dashboard.set_sources(DashboardSources {
            turn: Box::new(move || turn()),
            certificate: sources.certificate,
        });
    }

    /// Serves HTTP/1.1 (with WebSocket upgrades) on one accepted connection until it closes.
    pub async fn serve_connection<IO>(&self, io: IO, remote: SocketAddr, scheme: Scheme)
    where
        IO: Connection,
    {
        let take_back = placement::TakeBack::of::<IO>();
        let router = match scheme {
            Scheme::HttpRedirect => self.redirect.clone(),
            Scheme::Http | Scheme::Https => self.router.clone(),
        };
        let app = self.app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // The client behind a trusted proxy, for every per-source limit from here on.
            let remote = forwarded::client_address(remote, req.headers(), &app.config.trusted_proxies);
            // Before routing, so that every route (an upgrade, a redirect, a 404) spends the source's budget.
            let refused = app.check_request_rate(remote.ip(), req.headers());
            req.extensions_mut().insert(routes::Remote(remote));
            req.extensions_mut().insert(take_back);
            let mut router = router.clone();
            async move {
                match refused {
                    Some(response) => Ok(response),
                    None => tower_service::Service::call(&mut router, req).await,
                }
            }
        });
        let result = hyper::server::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            .header_read_timeout(std::time::Duration::from_secs(10))
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
        if let Err(e) = result {
            tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
        }
    }

    /// Closes every signaling socket with 4202 (retry now) and stops the hub.
    pub fn shutdown(&self) {
        self.app.hub.shutdown();
    }

    /// In a cluster: hands this node's rooms to the other nodes and closes its sockets with 4202 so they resume
    /// there; refuses new sockets from then on (docs/scaling.md). Alone, there is nowhere to go: logged, ignored.
    pub fn drain(&self) {
        self.app.hub.drain();
    }

    /// What this node can hold, advertised in the cluster's registry so that a nearly full node is not handed out
    /// in `iceServers`. Set once; later calls are ignored.
    pub fn set_node_capacity(&self, capacity: NodeCapacity) {
        self.app.hub.turn_load.set_capacity(capacity);
    }

    /// In a cluster: the other live, not overloaded nodes' TURN URLs, the least loaded node first (where a
    /// draining node redirects new allocations).
    pub fn cluster_turn_urls(&self) -> Vec<String> {
        self.app.hub.turn_load.other_turn_urls()
    }

    /// The readiness checks of a cluster node: Redis answers, and the node is not draining.
    pub fn cluster_checks(&self) -> Vec<Arc<dyn metrics::Check>> {
        [cluster::ClusterCheckPart::Redis, cluster::ClusterCheckPart::Drain]
            .into_iter()
            .map(|part| {
                Arc::new(cluster::ClusterCheck {
                    status: self.app.hub.turn_load.clone(),
                    part,
                }) as Arc<dyn metrics::Check>
            })
            .collect()
    }
}

/// What a cluster node can hold (0: not weighed): its overload is judged against these (docs/scaling.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCapacity {
    pub allocations: u64,
    /// Signaling sockets (the stream connections the node accepts).
    pub connections: u64,
    pub relay_bits_per_second: u64,
}
