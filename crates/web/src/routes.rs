//! HTTP routes. Refusals are JSON `{"ok":false,"code","message"}` with the status the code maps to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use signal::{ErrorCode, Refusal};
use subtle::ConstantTimeEq;

use crate::hub::HubHandle;
use crate::reports::{RateLimiter, ReportError, ReportId, ReportStore};
use crate::{Scheme, WebConfig};

pub(crate) struct App {
    pub config: WebConfig,
    pub hub: HubHandle,
    reports: Arc<ReportStore>,
    /// `POST /api/reports`: 5 at once per address, then one a minute.
    report_limiter: RateLimiter,
    /// `GET /api/reports` (the admin token is checked there): 10 at once per address, then one every 6 s.
    admin_limiter: RateLimiter,
}

impl App {
    pub fn new(config: WebConfig, hub: HubHandle, reports: ReportStore) -> Self {
        Self {
            config,
            hub,
            reports: Arc::new(reports),
            report_limiter: RateLimiter::new(5, Duration::from_secs(60), 10_000),
            admin_limiter: RateLimiter::new(10, Duration::from_secs(6), 10_000),
        }
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
const CHECK_HTML: &str = include_str!("../../../web/check/index.html");
const CHECK_JS: &str = include_str!("../../../web/check/check.js");
const INDEX: &str = concat!(
    "<!doctype html><meta charset=utf-8><title>Traverse</title><h1>Traverse</h1><ul>",
    "<li><a href=/demo>demo</a>: two tabs, one room, a data channel",
    "<li><a href=/check>check</a>: what this network lets through, in plain words, to share with support",
    "<li><a href=/sdk/traverse.js>/sdk/traverse.js</a>: the browser SDK",
    "<li><a href=/api/ice-servers>/api/ice-servers</a>: iceServers with a fresh TURN credential</ul>"
);

pub(crate) fn router(app: Arc<App>, scheme: Scheme) -> Router {
    if scheme == Scheme::HttpRedirect {
        return Router::new().fallback(redirect_to_https);
    }
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/api/join-check", get(join_check))
        .route("/api/ice-servers", get(ice_servers))
        .route(
            "/sdk/traverse.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SDK) }),
        )
        .route(
            "/demo",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DEMO) }),
        )
        .route("/check", get(check_page))
        .route(
            "/check/check.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], CHECK_JS) }),
        )
        .route("/check/{id}", get(check_page))
        .route("/api/reports", get(list_reports).post(create_report))
        .route("/api/reports/{id}", get(read_report))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX) }),
        )
        .with_state(app)
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
}

/// Checks what can be checked before the upgrade, so a refused join costs no socket and shows its status.
async fn ws_upgrade(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    Query(query): Query<JoinQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let ip = remote.ip();
    if let Err(refusal) = app.hub.check_connect(ip).await {
        return refusal_response(&refusal);
    }
    if let Some(room) = query.room {
        if let Err(refusal) = app.hub.check_join(room, query.token).await {
            return refusal_response(&refusal);
        }
    }
    let limits = &app.config.limits;
    let hub = app.hub.clone();
    let ping_every = limits.heartbeat_interval;
    upgrade
        .protocols(["traverse.v1"])
        // Idle sockets must be cheap: a small read buffer (larger frames are read in several calls). Frames the
        // socket task feeds in a batch collect up to 4 KiB before a write, so a backlog leaves in few system calls
        // (0 here would write every frame on its own).
        .read_buffer_size(2 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| crate::ws::run(socket, hub, ip, ping_every))
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

/// iceServers with a fresh credential, for apps with their own signaling.
async fn ice_servers(State(app): State<Arc<App>>, headers: HeaderMap, Query(query): Query<TokenQuery>) -> Response {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let mut user = String::from("api");
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
    let body = serde_json::json!({
        "iceServers": (app.config.ice_servers)(&user, unix),
        "ttl": app.config.credential_ttl_secs,
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// A JSON refusal `{"ok":false,"code","message"}` for codes outside the signaling protocol's.
fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"ok": false, "code": code, "message": message});
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
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
/// no referrer leaves the page.
async fn check_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        CHECK_HTML,
    )
        .into_response()
}

/// Runs a blocking store call off the worker's runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReportError> + Send + 'static,
) -> Result<T, ReportError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ReportError::Storage(std::io::Error::other(e.to_string()))))
}

/// `POST /api/reports`: stores a troubleshooter report, answers `201 {"ok":true,"id","url"}`.
async fn create_report(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    body: axum::body::Body,
) -> Response {
    if !app.report_limiter.check(remote.ip(), Instant::now()) {
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many reports from this address; try again in a minute.",
        );
    }
    let max = app.reports.limits().max_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return report_error(&ReportError::TooLarge(max));
    };
    let store = app.reports.clone();
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match blocking(move || store.create(&bytes, unix, &mut rand::thread_rng())).await {
        Ok(id) => {
            tracing::info!(%remote, %id, "troubleshooter report stored");
            let body = serde_json::json!({"ok": true, "id": id.to_string(), "url": format!("/check/{id}")});
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(e) => report_error(&e),
    }
}

/// `GET /api/reports/<id>`: the stored `{"id","created","report"}`; the id is the permission.
async fn read_report(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let id = match id.parse::<ReportId>() {
        Ok(id) => id,
        Err(e) => return report_error(&e),
    };
    let store = app.reports.clone();
    match blocking(move || store.read(id)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
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
            "The report list is off on this server: set [web] admin_token (--admin-token, TRAVERSE_ADMIN_TOKEN) \
             to enable it. Single reports stay readable by their link.",
        );
    };
    if !app.admin_limiter.check(remote.ip(), Instant::now()) {
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests from this address; wait a minute.",
        );
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        let mut response = api_error(
            StatusCode::UNAUTHORIZED,
            "admin-token-required",
            "Send the admin token: `Authorization: Bearer <token>`.",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    };
    // Constant time in the contents; only the length can show.
    if !bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
        tracing::warn!(%remote, "GET /api/reports with a wrong admin token");
        return api_error(
            StatusCode::UNAUTHORIZED,
            "admin-token-invalid",
            "The admin token was refused.",
        );
    }
    let body = serde_json::json!({
        "ok": true,
        "reports": app.reports.list(),
        "maxReports": app.reports.limits().max_reports,
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

async fn redirect_to_https(headers: HeaderMap, uri: Uri) -> Response {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "HTTPS only on this port; send a Host header.").into_response();
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{path}");
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
}
