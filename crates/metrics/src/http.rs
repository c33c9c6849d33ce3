//! The metrics listener: `/metrics` (behind a bearer token when one is configured), `/healthz` and `/readyz`, on an
//! address of its own so that scraping never shares a port, a budget or a firewall rule with the public.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use source::{RateLimiter, Source};
use subtle::ConstantTimeEq;

use crate::{Health, Metrics};

/// Asks the signaling hub for its counters; `None` when it does not answer.
pub type HubStatsFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<signal::HubStats>> + Send>> + Send + Sync>;

/// What the metrics listener serves.
#[derive(Clone)]
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// `Authorization: Bearer <token>` required on `/metrics` when set.
    pub token: Option<String>,
    pub hub: HubStatsFn,
    /// What was sent may wait this long for a client that stopped reading (TCP_USER_TIMEOUT): the public ports'
    /// `limits.send_stall_timeout`; `None`, the kernel's default.
    pub send_stall_timeout: Option<Duration>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

/// How long a scrape waits for the signaling hub's numbers.
const HUB_ANSWER: std::time::Duration = std::time::Duration::from_secs(1);

/// The OpenMetrics content type (prometheus-client writes OpenMetrics text).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections the listener holds at once, and from one address. A scraper keeps one; the listener may be reachable
/// by others (a token guards `/metrics`, not the port), and its descriptors come out of the server's.
const MAX_CONNECTIONS: usize = 64;
/// Per source: an IPv4 address or an IPv6 /64, as on the public ports.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// A request's head must arrive within this, and an idle keep-alive connection is closed after it (the public
/// ports' HTTP deadline too).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes: HTTP/1.1 with the same deadlines as the public ports, within
/// [`MAX_CONNECTIONS`] ([`MAX_CONNECTIONS_PER_ADDRESS`] per address; past them a connection is closed at once).
/// `axum::serve` held any number of connections, idle ones for ever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let send_stall = endpoint.send_stall_timeout;
    let router = router(endpoint);
    // The public ports' budget, with no rate: a scraper reconnects as often as it likes.
    let budget = Arc::new(server::ConnectionBudget::new(
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_ADDRESS,
        0,
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of descriptors, most likely: the server's own listeners say so; wait for some to free up.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = budget.try_acquire(client.ip(), std::time::Instant::now()) else {
            continue;
        };
        if send_stall.is_some() {
            let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(send_stall);
        }
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Client(client));
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

pub fn router(endpoint: Endpoint) -> Router {
    let health = endpoint.health.clone();
    let scraper = Scraper {
        endpoint,
        limiter: RateLimiter::new(SCRAPES_BURST, SCRAPE_EVERY, TRACKED_SOURCES),
    };
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(scraper))
        .merge(health_routes(health))
}

/// `/metrics` with a token: what is asked is rate-limited per source before the token is compared, so that
/// guesses cost time and leave a trace. A scraper asks every few seconds at most: 30 at once, then one per second.
const SCRAPES_BURST: u32 = 30;
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// Sources the limiter remembers (about 100 bytes each; the listener holds 64 connections at most).
const TRACKED_SOURCES: usize = 4096;

struct Scraper {
    endpoint: Endpoint,
    limiter: RateLimiter,
}

/// The client of a connection, set by [`serve`] on each request.
#[derive(Debug, Clone, Copy)]
struct Client(std::net::SocketAddr);

/// `/healthz` and `/readyz`, to merge into any router (the HTTP ports serve them too).
pub fn health_routes<S: Clone + Send + Sync + 'static>(health: Arc<Health>) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(Health::liveness()) }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// [`health_routes`] for the public ports: `/readyz` names each check and whether it passes, without the detail
/// (the bound addresses, the certificate's state, Redis'), which only the metrics listener tells.
pub fn public_health_routes<S: Clone + Send + Sync + 'static>(health: Arc<Health>) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(Health::liveness()) }))
        .route("/readyz", get(public_readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    let readiness = health.readiness(unix_now());
    (ready_status(&readiness), axum::Json(readiness)).into_response()
}

async fn public_readyz(State(health): State<Arc<Health>>) -> Response {
    let mut readiness = health.readiness(unix_now());
    for check in &mut readiness.checks {
        check.detail.clear();
    }
    (ready_status(&readiness), axum::Json(readiness)).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn ready_status(readiness: &crate::Readiness) -> StatusCode {
    match readiness.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn scrape(
    State(scraper): State<Arc<Scraper>>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
) -> Response {
    let endpoint = &scraper.endpoint;
    if let Some(token) = &endpoint.token {
        let client = client.map(|Extension(Client(c))| c);
        if let Some(c) = client {
            if let Err(wait) = scraper.limiter.check(Source::from(c.ip()), Instant::now()) {
                let secs = wait.secs().to_string();
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, secs)],
                    "too many requests from this address: retry later\n",
                )
                    .into_response();
            }
        }
        if !bearer_matches(&headers, token) {
            let client = client.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
            tracing::warn!(%client, "/metrics with a missing or wrong bearer token");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics.token is set: send Authorization: Bearer <token>\n",
            )
                .into_response();
        }
    }
    // A hub too busy to answer within a second leaves its families out of this scrape rather than stall it.
    let hub = tokio::time::timeout(HUB_ANSWER, (endpoint.hub)()).await.ok().flatten();
    let text = endpoint.metrics.encode(hub);
    ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Exactly the configured token (which has no surrounding spaces: the config refuses them).
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(bearer_matches(&with("Bearer s3cret-token-1234"), "s3cret-token-1234"));
        assert!(!bearer_matches(&with("Bearer s3cret-token-123"), "s3cret-token-1234"));
        assert!(!bearer_matches(&with("Basic s3cret-token-1234"), "s3cret-token-1234"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret-token-1234"));
        assert!(
            !bearer_matches(&with("Bearer  s3cret-token-1234 "), "s3cret-token-1234"),
            "exactly the token: spaces around it are not trimmed away on one side only"
        );
    }
}
