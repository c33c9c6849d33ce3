//! Which web pages may use this server from their visitors' browsers: CORS on the public API and the SDK (with
//! `tower-http`'s `CorsLayer`), and the same list checked on the signaling WebSocket's `Origin`.
//!
//! An origin check binds browsers only: any other client sends whatever `Origin` it likes. What it prevents is
//! another site's page using this server (its rooms, its relay's bandwidth) through its own visitors' browsers.
//! Access itself is guarded by join tokens (`signal.secret`).

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// `web.allowed_origins`: `*` (the default) or a list of `scheme://host[:port]`. The server's own origin is always
/// allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    #[default]
    Any,
    /// Lower-case, as browsers send them.
    List(Vec<String>),
}

/// An entry of `web.allowed_origins` that is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin: write scheme://host[:port] with nothing after it, e.g. https://app.example.com, or \"*\" for any")]
pub struct BadAllowedOrigin(pub String);

impl AllowedOrigins {
    /// From the configured list: `["*"]` (or a list holding `*`) is any origin.
    pub fn parse(entries: &[String]) -> Result<Self, BadAllowedOrigin> {
        if entries.iter().any(|e| e.trim() == "*") {
            return Ok(Self::Any);
        }
        entries
            .iter()
            .map(|entry| {
                let origin = entry.trim().trim_end_matches('/').to_ascii_lowercase();
                let (scheme, authority) = origin
                    .split_once("://")
                    .ok_or_else(|| BadAllowedOrigin(entry.clone()))?;
                let valid = matches!(scheme, "http" | "https")
                    && !authority.is_empty()
                    && !authority.contains(['/', '?', '#', '@', ' '])
                    && authority.parse::<axum::http::uri::Authority>().is_ok();
                valid.then_some(origin).ok_or_else(|| BadAllowedOrigin(entry.clone()))
            })
            .collect::<Result<_, _>>()
            .map(Self::List)
    }

    /// Whether a request with these headers may proceed: no `Origin` (not a browser page's request), the server's
    /// own origin (the `Origin` names the `Host` the request was sent to), or one of the list.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return true;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same_origin = host.is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        });
        same_origin || self.allows_origin(origin)
    }

    fn allows_origin(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)),
        }
    }

    /// The CORS headers [`Self::cors_layer`] would put on an answer to a request with `request`'s `Origin`, for an
    /// answer made before the router (the request rate's `429`), so that a page can read it and its `Retry-After`.
    pub(crate) fn add_cors(&self, request: &HeaderMap, response: &mut HeaderMap) {
        let Some(origin) = request
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| self.allows_origin(o)))
        else {
            return;
        };
        let allow = match self {
            Self::Any => HeaderValue::from_static("*"),
            Self::List(_) => {
                response.append(header::VARY, HeaderValue::from_static("origin"));
                origin.clone()
            }
        };
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        response.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }

    /// CORS for the public API and the SDK: GET and POST with `Authorization` and `Content-Type`, no cookies (none
    /// is used), `Retry-After` readable by the page, preflights cached for an hour.
    pub fn cors_layer(&self) -> CorsLayer {
        let allow_origin = match self {
            Self::Any => AllowOrigin::any(),
            Self::List(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
        };
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn star_or_nothing_listed_is_any() {
        assert_eq!(AllowedOrigins::parse(&["*".into()]).unwrap(), AllowedOrigins::Any);
        assert!(AllowedOrigins::Any.allows(&headers(Some("https://elsewhere.example"), "rtc.example.com")));
    }

    #[test]
    fn a_list_allows_its_origins_the_servers_own_and_non_browsers() {
        let list = AllowedOrigins::parse(&["https://App.example.com/".into(), "http://localhost:5173".into()]).unwrap();
        assert!(list.allows(&headers(Some("https://app.example.com"), "rtc.example.com")));
        assert!(list.allows(&headers(Some("http://localhost:5173"), "rtc.example.com")));
        assert!(
            list.allows(&headers(Some("https://rtc.example.com"), "rtc.example.com")),
            "own origin"
        );
        assert!(list.allows(&headers(None, "rtc.example.com")), "no Origin: not a page");
        assert!(!list.allows(&headers(Some("https://evil.example"), "rtc.example.com")));
        assert!(!list.allows(&headers(
            Some("https://app.example.com.evil.example"),
            "rtc.example.com"
        )));
        assert!(!list.allows(&headers(Some("http://localhost:5174"), "rtc.example.com")));
    }

    #[test]
    fn entries_that_are_not_origins_are_refused() {
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "ftp://x",
            "https://",
            "https://a b",
        ] {
            assert!(AllowedOrigins::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
