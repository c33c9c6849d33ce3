//! HTTP routes. Refusals are JSON `{"ok":false,"code","message"}` with the status the code maps to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use signal::{ErrorCode, Refusal};

use crate::hub::HubHandle;
use crate::{Scheme, WebConfig};

pub(crate) struct App {
    pub config: WebConfig,
    pub hub: HubHandle,
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
const INDEX: &str = concat!(
    "<!doctype html><meta charset=utf-8><title>Traverse</title><h1>Traverse</h1><ul>",
    "<li><a href=/demo>demo</a>: two tabs, one room, a data channel",
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
        // Idle sockets must be cheap: small read buffer, no write buffering beyond a frame.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
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

async fn redirect_to_https(headers: HeaderMap, uri: Uri) -> Response {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "HTTPS only on this port; send a Host header.").into_response();
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{path}");
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
}
