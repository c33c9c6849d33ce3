//! HTTP routes. Refusals are JSON `{"ok":false,"code","message"}` with the status the code maps to. Every response
//! carries the [`security_headers`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use signal::{ErrorCode, Refusal};
use subtle::ConstantTimeEq;

use crate::hub::HubHandle;
use crate::reports::{ReportError, ReportId, Reports};
use crate::{Scheme, WebConfig};
use signal::Source;
use source::{RateLimiter, RetryAfter};

/// Sources each limiter tracks (about 100 bytes each); past it the least recently seen are forgotten.
const TRACKED_SOURCES: usize = 10_000;

/// The request rate's burst, in seconds of its rate: a page and its scripts, or a reconnecting app, at once.
const REQUEST_BURST_SECS: u32 = 5;

/// `/api/ice-servers` per source: a burst of 10, then 2 a second. A page or an app fetches one credential per call;
/// 300 in 60 ms from one address (issue 7) is a script stocking up on 24-hour relay credentials.
const ICE_SERVERS_BURST: u32 = 10;
const ICE_SERVERS_EVERY: Duration = Duration::from_millis(500);

pub(crate) struct App {
    pub config: WebConfig,
    pub hub: HubHandle,
    reports: Reports,
    /// `POST /api/reports`: 5 at once per source, then one a minute.
    report_limiter: RateLimiter,
    /// `GET /api/reports` (the admin token is checked there): 10 at once per source, then one every 6 s.
    admin_limiter: RateLimiter,
    /// `GET /api/ice-servers`: it mints relay credentials.
    ice_limiter: RateLimiter,
    /// Every request, whatever its route (`WebConfig::requests_per_second_per_source`); `None`: no limit.
    request_limiter: Option<RateLimiter>,
    /// Requests `request_limiter` refused, for the metrics.
    pub requests_refused: AtomicU64,
    /// `https://host[:port]` that plain HTTP on the single port is sent to; set once that port is bound.
    pub https_origin: OnceLock<String>,
    pub dashboard: crate::dashboard::Dashboard,
    /// `/healthz` and `/readyz` (the binary sets the readiness checks once the listeners are bound).
    pub health: Arc<metrics::Health>,
    /// Signaling sockets refused before the upgrade (HTTP answers), by code: the hub never sees them.
    pub upgrade_refusals: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// RFC 8555 §8.3: the key authorization of a pending HTTP-01 challenge, by token; set once ACME runs.
    acme_http01: OnceLock<AcmeHttp01Fn>,
    /// The failed TLS handshakes the server saw from a client's source; set once the listeners run.
    tls_failures: OnceLock<TlsFailuresFn>,
}

/// The TLS handshakes from `ip`'s source that failed in the last minutes, newest first (a JSON array).
pub type TlsFailuresFn = Arc<dyn Fn(std::net::IpAddr) -> serde_json::Value + Send + Sync>;

/// The key authorization of a pending HTTP-01 challenge by its token (the `acme` crate's tokens).
pub type AcmeHttp01Fn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl crate::Web {
    /// Answers `/.well-known/acme-challenge/<token>` from `tokens`, on HTTP ports and before the single port's
    /// redirect. Set once; later calls are ignored.
    pub fn set_acme_http01(&self, tokens: AcmeHttp01Fn) {
        let _ = self.app.acme_http01.set(tokens);
    }

    /// Answers `GET /api/tls-failures` from `failures`. Set once; later calls are ignored.
    pub fn set_tls_failures(&self, failures: TlsFailuresFn) {
        let _ = self.app.tls_failures.set(failures);
    }
}

impl App {
    pub fn new(config: WebConfig, hub: HubHandle, reports: Reports) -> Self {
        let request_limiter = RateLimiter::per_second(config.requests_per_second_per_source, REQUEST_BURST_SECS);
        Self {
            request_limiter,
            requests_refused: AtomicU64::new(0),
            config,
            hub,
            reports,
            report_limiter: RateLimiter::new(5, Duration::from_secs(60), TRACKED_SOURCES),
            admin_limiter: RateLimiter::new(10, Duration::from_secs(6), TRACKED_SOURCES),
            ice_limiter: RateLimiter::new(ICE_SERVERS_BURST, ICE_SERVERS_EVERY, TRACKED_SOURCES),
            https_origin: OnceLock::new(),
            dashboard: crate::dashboard::Dashboard::default(),
            health: Arc::new(metrics::Health::default()),
            upgrade_refusals: Default::default(),
            acme_http01: OnceLock::new(),
            tls_failures: OnceLock::new(),
        }
    }
}

impl App {
    /// Spends one of `ip`'s source's request tokens; past its rate, the answer to send instead of routing: `429` with
    /// `Retry-After` and `Connection: close` (hyper then closes the connection once it is written, and drops what
    /// the client pipelined behind it).
    pub(crate) fn check_request_rate(&self, ip: std::net::IpAddr, request: &HeaderMap) -> Option<Response> {
        let limiter = self.request_limiter.as_ref()?;
        let retry = limiter.check(Source::from(ip), Instant::now()).err()?;
        self.requests_refused.fetch_add(1, Ordering::Relaxed);
        let mut response = with_security_headers(rate_limited(
            retry,
            "Too many requests from this address; wait a moment.",
        ));
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        self.config.allowed_origins.add_cors(request, response.headers_mut());
        Some(response)
    }

    /// Once per refused upgrade, never per message.
    fn count_upgrade_refusal(&self, code: &'static str) {
        let mut counts = self.upgrade_refusals.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(code).or_insert(0) += 1;
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// The client's address, set by [`crate::Web::serve_connection`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote(pub SocketAddr);

const SDK: &str = include_str!("../../../web/sdk/traverse.js");
const DEMO: &str = include_str!("../../../web/demo/index.html");
const DEMO_JS: &str = include_str!("../../../web/demo/demo.js");
const DEMO_CSS: &str = include_str!("../../../web/demo/demo.css");
const CHECK_HTML: &str = include_str!("../../../web/check/index.html");
const CHECK_PAGE_JS: &str = include_str!("../../../web/check/page.js");
const CHECK_CSS: &str = include_str!("../../../web/check/check.css");
const CHECK_JS: &str = include_str!("../../../web/check/check.js");
pub(crate) const JS: &str = "text/javascript; charset=utf-8";
pub(crate) const CSS: &str = "text/css; charset=utf-8";
pub(crate) const HTML: &str = "text/html; charset=utf-8";

/// For our own pages: scripts and styles only from files of this origin (the pages keep none inline), fetches and
/// WebSockets to this origin (`ws:`/`wss:` for browsers whose `'self'` does not cover WebSocket yet), no plugins,
/// no `<base>`, and no framing (clickjacking the "Share with support" button).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const INDEX: &str = concat!(
    "<!doctype html><meta charset=utf-8><title>Traverse</title><h1>Traverse</h1><ul>",
    "<li><a href=/demo>demo</a>: two tabs, one room, a data channel",
    "<li><a href=/check>check</a>: what this network lets through, in plain words, to share with support",
    "<li><a href=/sdk/traverse.js>/sdk/traverse.js</a>: the browser SDK",
    "<li><a href=/api/ice-servers>/api/ice-servers</a>: iceServers with a fresh TURN credential</ul>"
);

pub(crate) fn router(app: Arc<App>, scheme: Scheme) -> Router {
    if scheme == Scheme::HttpRedirect {
        // Probes answer on plain HTTP too: a kubelet's httpGet does not follow a redirect to a name it cannot check.
        return Router::new()
            .merge(metrics::http::public_health_routes(app.health.clone()))
            .route(ACME_CHALLENGE, get(acme_http01))
            .fallback(redirect_to_https)
            .with_state(app)
            .layer(axum::middleware::map_response(security_headers));
    }
    // What an app on another origin uses: CORS for the origins allowed, and request logging.
    let public = Router::new()
        .route("/api/join-check", get(join_check))
        .route("/api/ice-servers", get(ice_servers))
        .route("/api/tls-failures", get(tls_failures))
        .route("/sdk/traverse.js", get(sdk))
        .route("/sdk/{version}/traverse.js", get(sdk_versioned))
        .layer(app.config.allowed_origins.cors_layer())
        // tower-http logs a 5xx at ERROR; here those are refusals a stranger can ask for at will (`room-full`,
        // `too-many-rooms`, `shutting-down` are 503), which the log budget lets through as errors. The handlers log
        // their own faults.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        );
    Router::new()
        .route("/ws", get(ws_upgrade))
        .merge(public)
        .route("/demo", get(|| async { ([(header::CONTENT_TYPE, HTML)], DEMO) }))
        .route(
            "/demo/demo.js",
            get(|| async { ([(header::CONTENT_TYPE, JS)], DEMO_JS) }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { ([(header::CONTENT_TYPE, CSS)], DEMO_CSS) }),
        )
        .route("/check", get(check_page))
        .route(
            "/check/check.js",
            get(|| async { ([(header::CONTENT_TYPE, JS)], CHECK_JS) }),
        )
        .route(
            "/check/page.js",
            get(|| async { ([(header::CONTENT_TYPE, JS)], CHECK_PAGE_JS) }),
        )
        .route(
            "/check/check.css",
            get(|| async { ([(header::CONTENT_TYPE, CSS)], CHECK_CSS) }),
        )
        .route("/check/{id}", get(check_page))
        .route("/api/reports", get(list_reports).post(create_report))
        .route("/api/reports/{id}", get(read_report))
        .route("/api/outcomes", get(outcomes))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/dashboard.js", get(crate::dashboard::page_js))
        .route("/dashboard/dashboard.css", get(crate::dashboard::page_css))
        .route("/api/dashboard", get(crate::dashboard::json))
        .route("/api/dashboard/events", get(crate::dashboard::events))
        .route("/", get(|| async { ([(header::CONTENT_TYPE, HTML)], INDEX) }))
        .route(ACME_CHALLENGE, get(acme_http01))
        .merge(metrics::http::public_health_routes(app.health.clone()))
        .with_state(app)
        .layer(axum::middleware::map_response(security_headers))
}

/// On every response, errors and redirects included: no MIME sniffing (a report or an error echoing input is never
/// run as a script or page), the [`CONTENT_SECURITY_POLICY`], and no referrer (a `/check/<id>` link is a
/// capability and must not leak to other sites).
async fn security_headers(response: Response) -> Response {
    with_security_headers(response)
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn refusal_response(refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        refusal.to_http_json(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct JoinQuery {
    room: Option<String>,
    token: Option<String>,
    /// On `/ws`, the room of the session a socket is about to resume: where to serve it (`crate::placement`), nothing
    /// checked (the resume itself is).
    resuming: Option<String>,
}

/// `/sdk/traverse.js`: the SDK of this server, revalidated every 5 minutes (its URL does not change with a release).
async fn sdk(headers: HeaderMap) -> Response {
    let etag: &'static str = &SDK_ETAG;
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, JS),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::ETAG, etag),
        ],
        SDK,
    )
        .into_response()
}

/// `/sdk/<version>/traverse.js`: the same bytes under a URL that names this release, cached for a year (`immutable`);
/// another version is a 404 (this server does not hold it).
async fn sdk_versioned(Path(version): Path<String>) -> Response {
    if version != SDK_VERSION && version.strip_prefix('v') != Some(SDK_VERSION) {
        return api_error(
            StatusCode::NOT_FOUND,
            "unknown-version",
            &format!("This server serves SDK version {SDK_VERSION}: /sdk/{SDK_VERSION}/traverse.js."),
        );
    }
    (
        [
            (header::CONTENT_TYPE, JS),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        SDK,
    )
        .into_response()
}

/// The SDK's version: the server's (the npm package `web/sdk/package.json` carries the same).
pub(crate) const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A strong validator for the SDK: its length and a hash of its bytes (FNV-1a: the bytes are ours, not an
/// adversary's; this only has to change when they do). Hashed once: 138 KB a request was a hundred times a
/// small route's CPU.
static SDK_ETAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let hash = SDK.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{}-{hash:016x}\"", SDK.len())
});

/// Checks what can be checked before the upgrade, so a refused join costs no socket and shows its status.
async fn ws_upgrade(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    Query(query): Query<JoinQuery>,
    take_back: Option<Extension<crate::placement::TakeBack>>,
    mut request: axum::extract::Request,
) -> Response {
    let headers = request.headers();
    let accept = match crate::websocket::check_upgrade(request.method(), headers) {
        Ok(accept) => accept,
        Err(bad) => {
            use crate::websocket::BadUpgrade;
            let (status, code) = match bad {
                BadUpgrade::Method => (StatusCode::METHOD_NOT_ALLOWED, "not-a-websocket"),
                BadUpgrade::NotUpgrade => (StatusCode::UPGRADE_REQUIRED, "not-a-websocket"),
                BadUpgrade::Version => (StatusCode::UPGRADE_REQUIRED, "websocket-version"),
                BadUpgrade::Key => (StatusCode::BAD_REQUEST, "websocket-key"),
            };
            let mut response = api_error(status, code, bad.message());
            if status == StatusCode::UPGRADE_REQUIRED {
                let h = response.headers_mut();
                h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            }
            return response;
        }
    };
    let protocol = crate::websocket::pick_protocol(headers, &["traverse.v1"]);
    if !app.config.allowed_origins.allows(headers) {
        app.count_upgrade_refusal("origin-not-allowed");
        return api_error(
            StatusCode::FORBIDDEN,
            "origin-not-allowed",
            "This server does not accept signaling from pages of this origin: add it to web.allowed_origins.",
        );
    }
    let ip = remote.ip();
    if let Err(refusal) = app.hub.check_connect(ip).await {
        app.count_upgrade_refusal(refusal.code.as_str());
        return refusal_response(&refusal);
    }
    let mut room_worker = query.resuming.as_deref().and_then(|room| app.hub.room_worker(room));
    if let Some(room) = query.room {
        room_worker = app.hub.room_worker(&room);
        if let Err(refusal) = app.hub.check_join(room, query.token).await {
            app.count_upgrade_refusal(refusal.code.as_str());
            return refusal_response(&refusal);
        }
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let conn = crate::ws::Conn { app: app.clone(), ip };
    let take_back = take_back.map(|Extension(t)| t);
    tokio::spawn(crate::ws::serve(upgrade, conn, take_back, room_worker));
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    response
}

/// The HTTP twin of a join: what the WebSocket would answer, with a status a browser can read.
async fn join_check(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    Query(query): Query<JoinQuery>,
) -> Response {
    if let Err(refusal) = app.hub.check_connect(remote.ip()).await {
        return refusal_response(&refusal);
    }
    let Some(room) = query.room else {
        return refusal_response(&Refusal::new(
            ErrorCode::BadMessage,
            "Give the room to check: ?room=NAME.",
        ));
    };
    match app.hub.check_join(room, query.token).await {
        Ok(()) => axum::Json(serde_json::json!({"ok": true})).into_response(),
        Err(refusal) => refusal_response(&refusal),
    }
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// iceServers with a fresh credential, for apps with their own signaling. Rate-limited per source before anything
/// else, token checks included.
async fn ice_servers(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(retry) = app.ice_limiter.check(Source::from(remote.ip()), Instant::now()) {
        return rate_limited(
            retry,
            "Too many credentials requested from this address; wait a moment.",
        );
    }
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    // Each anonymous credential is its own user: the TURN per-user allocation quota counts by username, and a
    // shared "api" name would let one stranger's allocations fill the quota of every anonymous caller.
    let mut user = format!("api-{:08x}", rand::random::<u32>());
    if let Some(secret) = &app.config.token_secret {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let Some(token) = bearer.or(query.token) else {
            return refusal_response(&Refusal::new(
                ErrorCode::TokenRequired,
                "This server needs a token: send `Authorization: Bearer <token>` or `?token=`.",
            ));
        };
        match signal::verify_token(secret, &token, unix) {
            Ok(claims) => user = claims.sub,
            Err(signal::TokenError::Expired) => {
                return refusal_response(&Refusal::new(
                    ErrorCode::TokenExpired,
                    "The token has expired; get a new one.",
                ))
            }
            Err(e) => {
                return refusal_response(&Refusal::new(
                    ErrorCode::TokenInvalid,
                    format!("The token was refused: {e}."),
                ))
            }
        }
    }
    let servers = (app.config.ice_servers)(&user, unix);
    // The REST fields are this server's alone: one credential, which the extra servers' URLs would not take.
    let (username, password, uris) = rest_fields(&servers);
    let servers = crate::with_extra(servers, &app.config.extra_ice_servers, &user, unix);
    // `iceServers` for `new RTCPeerConnection`; beside it the TURN REST API's shape (draft-uberti-behave-turn-rest:
    // `username`, `password`, `ttl`, `uris`), which coturn-era clients and Matrix homeservers read.
    let body = serde_json::json!({
        "iceServers": servers,
        "ttl": app.config.credential_ttl_secs,
        "username": username,
        "password": password,
        "uris": uris,
        "natProbes": (app.config.nat_probes)(),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The TURN REST API's fields from an `iceServers` array: the credential's username and password (those of the
/// first entry that has one) and every URL, STUN and TURN.
fn rest_fields(servers: &serde_json::Value) -> (serde_json::Value, serde_json::Value, Vec<serde_json::Value>) {
    let entries = servers.as_array().map(Vec::as_slice).unwrap_or_default();
    let credentialed = entries.iter().find(|s| s.get("username").is_some());
    let field = |name: &str| credentialed.and_then(|s| s.get(name)).cloned().unwrap_or_default();
    let uris = entries
        .iter()
        .flat_map(|s| match s.get("urls") {
            Some(serde_json::Value::Array(urls)) => urls.clone(),
            Some(url @ serde_json::Value::String(_)) => vec![url.clone()],
            _ => Vec::new(),
        })
        .collect();
    (field("username"), field("credential"), uris)
}

/// A JSON refusal `{"ok":false,"code","message"}` for codes outside the signaling protocol's.
pub(crate) fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"ok": false, "code": code, "message": message});
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// `429 rate-limited` with `Retry-After`.
fn rate_limited(retry: RetryAfter, message: &str) -> Response {
    let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "rate-limited", message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry.secs()));
    response
}

fn report_error(e: &ReportError) -> Response {
    if let ReportError::Storage(io) = e {
        tracing::warn!(error = %io, "report store");
    }
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut message = e.to_string();
    if let Some(first) = message.get(..1) {
        message = format!("{}{}.", first.to_uppercase(), message.get(1..).unwrap_or_default());
    }
    api_error(status, e.code(), &message)
}

/// The troubleshooter; with an id in the path it shows that stored report read-only. The path is a capability:
/// no referrer leaves the page ([`security_headers`]).
async fn check_page() -> Response {
    (
        [(header::CONTENT_TYPE, HTML), (header::CACHE_CONTROL, "no-store")],
        CHECK_HTML,
    )
        .into_response()
}

/// Time for a whole request body, however it trickles: without it a client sending a byte now and then holds its
/// connection slot for as long as it likes (hyper's own deadline covers the headers only).
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// `POST /api/reports`: stores a troubleshooter report, answers `201 {"ok":true,"id","url"}`.
async fn create_report(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !is_json(&headers) {
        return report_error(&ReportError::NotJsonContentType);
    }
    let source = Source::from(remote.ip());
    if let Err(retry) = app.report_limiter.check(source, Instant::now()) {
        return rate_limited(retry, "Too many reports from this address; try again in a minute.");
    }
    let max = app.reports.limits().max_bytes;
    let bytes = match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return report_error(&ReportError::TooLarge(max)),
        Err(_) => {
            return api_error(
                StatusCode::REQUEST_TIMEOUT,
                "body-too-slow",
                "The report did not arrive within 10 seconds; send it again.",
            )
        }
    };
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match app.reports.create(&bytes, unix, source).await {
        Ok(id) => {
            tracing::info!(%remote, %id, "troubleshooter report stored");
            let body = serde_json::json!({"ok": true, "id": id.to_string(), "url": format!("/check/{id}")});
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(e) => report_error(&e),
    }
}

/// `Content-Type: application/json`, with parameters or not, in any case. Form and `text/plain` types are what a
/// cross-origin page may POST without asking first (a CORS "simple request").
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// `GET /api/reports/<id>`: the stored `{"id","created","report"}`; the id is the permission.
async fn read_report(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let id = match id.parse::<ReportId>() {
        Ok(id) => id,
        Err(e) => return report_error(&e),
    };
    match app.reports.read(id).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => report_error(&e),
    }
}

/// `GET /api/reports`: the operator's list, newest first; needs `Authorization: Bearer <admin token>`.
async fn list_reports(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: HeaderMap,
) -> Response {
    let Some(expected) = &app.config.admin_token else {
        return api_error(
            StatusCode::FORBIDDEN,
            "reports-list-disabled",
            "The report list is off on this server: set [web] admin_token (--set web.admin_token=…, \
             TRAVERSE_WEB_ADMIN_TOKEN) to enable it. Single reports stay readable by their link.",
        );
    };
    if let Err(refused) = check_admin_token(&app, expected, remote, &headers, "GET /api/reports") {
        return refused.into_response();
    }
    let reports = app.reports.list().await;
    let body = serde_json::json!({
        "ok": true,
        "reports": reports,
        "maxReports": app.reports.limits().max_reports,
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// `GET /api/outcomes`: the connection outcomes diagnosed so far (`outcome::OutcomeSnapshot`); needs the admin
/// token like `GET /api/reports`.
async fn outcomes(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: HeaderMap,
) -> Response {
    let Some(expected) = &app.config.admin_token else {
        return api_error(
            StatusCode::FORBIDDEN,
            "outcomes-disabled",
            "Connection outcomes are readable with the admin token only: set [web] admin_token \
             (--set web.admin_token=…, TRAVERSE_WEB_ADMIN_TOKEN) to enable this endpoint.",
        );
    };
    if let Err(refused) = check_admin_token(&app, expected, remote, &headers, "GET /api/outcomes") {
        return refused.into_response();
    }
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let body = app.config.outcomes.snapshot(unix);
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Why an operator's request was refused before it was looked at.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AdminRefusal {
    RateLimited(RetryAfter),
    TokenRequired,
    TokenInvalid,
}

impl IntoResponse for AdminRefusal {
    fn into_response(self) -> Response {
        match self {
            Self::RateLimited(retry) => rate_limited(retry, "Too many requests from this address; wait a minute."),
            Self::TokenRequired => {
                let mut response = api_error(
                    StatusCode::UNAUTHORIZED,
                    "admin-token-required",
                    "Send the admin token: `Authorization: Bearer <token>`.",
                );
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                response
            }
            Self::TokenInvalid => api_error(
                StatusCode::UNAUTHORIZED,
                "admin-token-invalid",
                "The admin token was refused.",
            ),
        }
    }
}

/// The operator's requests (`GET /api/reports`, the dashboard): rate-limited per source before the token is
/// looked at, then `Authorization: Bearer <admin token>` compared in constant time. `what` names the request in the
/// log line a wrong token leaves.
pub(crate) fn check_admin_token(
    app: &App,
    expected: &str,
    remote: SocketAddr,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), AdminRefusal> {
    app.admin_limiter
        .check(Source::from(remote.ip()), Instant::now())
        .map_err(AdminRefusal::RateLimited)?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        return Err(AdminRefusal::TokenRequired);
    };
    // Constant time in the contents; only the length can show.
    if !bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
        tracing::warn!(%remote, "{what} with a wrong admin token");
        return Err(AdminRefusal::TokenInvalid);
    }
    Ok(())
}

/// `GET /api/tls-failures`: the TLS handshakes that failed from the asking client's own source in the last 10
/// minutes, and why (the server saw its alert): how `/check` and the demo tell "your browser refused the server's
/// certificate" from "TURN over TLS is blocked". A client sees only its own source's failures.
async fn tls_failures(State(app): State<Arc<App>>, Extension(Remote(remote)): Extension<Remote>) -> Response {
    let failures = app
        .tls_failures
        .get()
        .map_or_else(|| serde_json::json!([]), |f| f(remote.ip()));
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "failures": failures })),
    )
        .into_response()
}

const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/{token}";

/// RFC 8555 §8.3: the CA fetches the key authorization over plain HTTP (port 80); 404 for any other token.
async fn acme_http01(State(app): State<Arc<App>>, Path(token): Path<String>) -> Response {
    match app.acme_http01.get().and_then(|tokens| tokens(&token)) {
        Some(key_authorization) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], key_authorization).into_response()
        }
        None => api_error(StatusCode::NOT_FOUND, "not-found", "No such ACME challenge."),
    }
}

/// Plain HTTP on the single port: the same path on the configured HTTPS origin. The request's Host is not used: it
/// is the client's to choose, and a redirect built from it points wherever the client (or a cache poisoner) likes.
async fn redirect_to_https(State(app): State<Arc<App>>, uri: Uri) -> Response {
    let Some(origin) = app.https_origin.get() else {
        // Only in the moment between binding the port and learning its number.
        let mut response = api_error(StatusCode::SERVICE_UNAVAILABLE, "starting", "Starting; retry.");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        return response;
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match HeaderValue::try_from(format!("{origin}{path}")) {
        Ok(location) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => api_error(StatusCode::BAD_REQUEST, "bad-request", "HTTPS only on this port."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSP allows no inline script or style: a page that grows one would break in the browser, so it breaks here.
    #[test]
    fn pages_keep_no_inline_script_style_or_handler() {
        for (name, page) in [
            ("demo", DEMO),
            ("check", CHECK_HTML),
            ("index", INDEX),
            ("dashboard", crate::dashboard::PAGE),
        ] {
            let lower = page.to_ascii_lowercase();
            for (at, _) in lower.match_indices("<script") {
                let tag = lower.get(at..).and_then(|t| t.split('>').next()).unwrap_or_default();
                assert!(tag.contains(" src="), "{name}: inline script {tag}");
            }
            assert!(!lower.contains("<style"), "{name}: inline <style>");
            assert!(!lower.contains(" style="), "{name}: style attribute");
            assert!(!lower.contains("javascript:"), "{name}: javascript: URL");
            for word in lower.split(|c: char| c.is_whitespace() || c == '<') {
                let attr = word.split('=').next().unwrap_or_default();
                let handler = attr.len() > 2 && attr.starts_with("on") && attr.bytes().all(|b| b.is_ascii_lowercase());
                assert!(!(handler && word.contains('=')), "{name}: inline handler {word}");
            }
        }
    }

    #[test]
    fn only_json_content_types_are_json() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json(&headers)
        };
        for yes in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            " application/json ;x",
        ] {
            assert!(with(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "text/plain; application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "",
        ] {
            assert!(!with(no), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
