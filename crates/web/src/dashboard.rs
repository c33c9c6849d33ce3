//! The operator's dashboard: `GET /dashboard` (the page), `GET /api/dashboard` (one [`Snapshot`] as JSON) and
//! `GET /api/dashboard/events` (a snapshot every [`EVERY`] as Server-Sent Events), all behind the admin token
//! (`[web] admin_token`); without one the three answer 404 with a sentence saying how to turn them on.
//!
//! Model: nothing is kept here between requests. A snapshot is read from its sources when it is sent — the signaling
//! hub (over its command channel), the connection outcomes ([`outcome::Outcomes`]), and the TURN workers' counters and
//! the certificate through [`DashboardSources`], closures the binary hands over once the workers run (the web side
//! starts before them). Counters are sent as totals with the snapshot's time; the page turns successive snapshots into
//! rates (bytes/s), so the server keeps no history per viewer.
//!
//! The event stream is read by the page with `fetch` (not `EventSource`), so the token travels in the
//! `Authorization` header like every other request and never in a URL that logs and proxies keep. Streams are
//! bounded per source ([`STREAMS_PER_SOURCE`]) and in total ([`STREAMS_TOTAL`]); each costs one timer and one
//! snapshot every [`EVERY`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;
use signal::Source;

use crate::routes::{api_error, check_admin_token, AdminRefusal, App, Remote};

/// How often the event stream sends a snapshot.
pub const EVERY: Duration = Duration::from_secs(2);
/// Event streams open at once from one source: an operator's few tabs.
pub const STREAMS_PER_SOURCE: usize = 4;
/// Event streams open at once in all.
pub const STREAMS_TOTAL: usize = 32;

pub(crate) const PAGE: &str = include_str!("../../../web/dashboard/index.html");
const PAGE_JS: &str = include_str!("../../../web/dashboard/dashboard.js");
const PAGE_CSS: &str = include_str!("../../../web/dashboard/dashboard.css");

const DISABLED: &str = "The dashboard is off on this server: set [web] admin_token (--set web.admin_token=…, \
     TRAVERSE_WEB_ADMIN_TOKEN) to turn it on.";

/// TURN load summed over the workers: current allocations and relayed traffic since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnLoad {
    pub allocations: u64,
    pub relayed_packets_to_peer: u64,
    pub relayed_bytes_to_peer: u64,
    pub relayed_packets_to_client: u64,
    pub relayed_bytes_to_client: u64,
}

/// Where the dashboard reads what the web side does not own; given once by [`crate::Web::set_dashboard_sources`].
pub struct DashboardSources {
    /// The TURN workers' counters, summed.
    pub turn: Box<dyn Fn() -> TurnLoad + Send + Sync>,
    /// The certificate served over TLS now (`None`: unknown, or no TLS listener).
    pub certificate: Box<dyn Fn() -> Option<CertificateStatus> + Send + Sync>,
}

/// What the dashboard shows of the certificate in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateStatus {
    /// Its `notAfter`, Unix seconds.
    pub not_after_unix: u64,
    /// Generated at start: valid, but no browser trusts it.
    pub self_signed: bool,
}

impl std::fmt::Debug for DashboardSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardSources").finish_non_exhaustive()
    }
}

/// What the dashboard shows at one moment. `turn` and `certificate` are `null` until the binary gives their sources
/// (`certificate` also without a TLS listener); the page says "n/a".
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// When it was taken, Unix milliseconds: the page divides counter differences by differences of this.
    pub unix_ms: u64,
    pub signaling: Option<SignalingLoad>,
    pub turn: Option<TurnLoad>,
    pub certificate: Option<Certificate>,
    /// Connected and failed pairs, by path and reason, the last hour per minute, the latest failures.
    pub outcomes: outcome::OutcomeSnapshot,
}

/// The signaling hub right now.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalingLoad {
    /// Open signaling sockets.
    pub sockets: usize,
    /// Sessions, connected or waiting in their grace period.
    pub sessions: usize,
    pub rooms: usize,
    /// Signals relayed since start.
    pub relayed: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub not_after_unix: u64,
    /// Whole days until `not_after_unix`, rounded down; negative once expired.
    pub days_left: i64,
    pub self_signed: bool,
}

/// The dashboard's state in [`App`]: its sources once given, and the open event streams.
#[derive(Debug, Default)]
pub(crate) struct Dashboard {
    sources: OnceLock<DashboardSources>,
    streams: Arc<Mutex<Streams>>,
}

impl Dashboard {
    /// Set once; a second call is ignored (and said so).
    pub(crate) fn set_sources(&self, sources: DashboardSources) {
        if self.sources.set(sources).is_err() {
            tracing::warn!("dashboard sources given twice; keeping the first");
        }
    }
}

#[derive(Debug, Default)]
struct Streams {
    per_source: HashMap<Source, usize>,
    total: usize,
}

/// One open event stream, counted until dropped (the client went away and hyper dropped the body).
#[derive(Debug)]
struct StreamSlot {
    streams: Arc<Mutex<Streams>>,
    source: Source,
}

impl StreamSlot {
    fn take(streams: &Arc<Mutex<Streams>>, source: Source) -> Option<Self> {
        let mut s = streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = s.per_source.get(&source).copied().unwrap_or(0);
        if s.total >= STREAMS_TOTAL || mine >= STREAMS_PER_SOURCE {
            return None;
        }
        s.total += 1;
        s.per_source.insert(source, mine + 1);
        Some(Self {
            streams: streams.clone(),
            source,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut s = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.per_source.remove(&self.source);
            }
        }
    }
}

/// Reads every source now.
pub(crate) async fn snapshot(app: &App) -> Snapshot {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let unix = now.as_secs();
    let signaling = app.hub.stats().await.map(|s| SignalingLoad {
        sockets: s.connections,
        sessions: s.sessions,
        rooms: s.rooms,
        relayed: s.relayed,
    });
    let sources = app.dashboard.sources.get();
    let certificate = sources.and_then(|s| (s.certificate)()).map(|c| Certificate {
        not_after_unix: c.not_after_unix,
        days_left: i64::try_from((i128::from(c.not_after_unix) - i128::from(unix)).div_euclid(86_400))
            .unwrap_or(i64::MAX),
        self_signed: c.self_signed,
    });
    Snapshot {
        unix_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
        signaling,
        turn: sources.map(|s| (s.turn)()),
        certificate,
        outcomes: app.config.outcomes.snapshot(unix),
    }
}

/// `GET /dashboard`: the page (it asks for the token itself).
pub(crate) async fn page(State(app): State<Arc<App>>) -> Response {
    if app.config.admin_token.is_none() {
        return Refused::Disabled.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, crate::routes::HTML),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

pub(crate) async fn page_js() -> Response {
    ([(header::CONTENT_TYPE, crate::routes::JS)], PAGE_JS).into_response()
}

pub(crate) async fn page_css() -> Response {
    ([(header::CONTENT_TYPE, crate::routes::CSS)], PAGE_CSS).into_response()
}

/// `GET /api/dashboard`: one snapshot.
pub(crate) async fn json(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize(&app, remote, &headers) {
        return refused.into_response();
    }
    let body = snapshot(&app).await;
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// `GET /api/dashboard/events`: a `snapshot` event at once, then one every [`EVERY`], until the client goes.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize(&app, remote, &headers) {
        return refused.into_response();
    }
    let Some(slot) = StreamSlot::take(&app.dashboard.streams, Source::from(remote.ip())) else {
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams",
            "Too many dashboards are open; close one and reload.",
        );
    };
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold((app, slot, interval), |(app, slot, mut interval)| async move {
        interval.tick().await;
        let event = match Event::default().event("snapshot").json_data(snapshot(&app).await) {
            Ok(event) => event,
            // A snapshot is numbers and short strings: it always serializes; if not, say so in the stream.
            Err(e) => Event::default().event("error").data(e.to_string()),
        };
        Some((Ok::<_, Infallible>(event), (app, slot, interval)))
    });
    // `X-Accel-Buffering: no`: a reverse proxy (nginx) that buffers responses would hold the snapshots back.
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(stream),
    )
        .into_response()
}

/// Why a dashboard request was refused.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// No admin token is configured.
    Disabled,
    Admin(AdminRefusal),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Disabled => api_error(StatusCode::NOT_FOUND, "dashboard-disabled", DISABLED),
            Self::Admin(refusal) => refusal.into_response(),
        }
    }
}

fn authorize(app: &App, remote: std::net::SocketAddr, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(expected) = &app.config.admin_token else {
        return Err(Refused::Disabled);
    };
    check_admin_token(app, expected, remote, headers, "the dashboard").map_err(Refused::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_source_and_in_total() {
        let streams = Arc::new(Mutex::new(Streams::default()));
        let source = |i: u8| Source::from(std::net::IpAddr::from([10, 0, 0, i]));
        let mine: Vec<_> = (0..STREAMS_PER_SOURCE)
            .map(|_| StreamSlot::take(&streams, source(0)))
            .collect();
        assert!(mine.iter().all(Option::is_some));
        assert!(
            StreamSlot::take(&streams, source(0)).is_none(),
            "past the per-source bound"
        );
        drop(mine);
        assert_eq!(streams.lock().unwrap().total, 0, "slots are given back when dropped");
        let all: Vec<_> = (0..STREAMS_TOTAL)
            .map(|i| StreamSlot::take(&streams, source(u8::try_from(i).unwrap())))
            .collect();
        assert!(all.iter().all(Option::is_some));
        assert!(
            StreamSlot::take(&streams, source(200)).is_none(),
            "past the total bound"
        );
        drop(all);
        assert!(streams.lock().unwrap().per_source.is_empty());
    }
}
