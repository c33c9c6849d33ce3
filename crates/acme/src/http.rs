//! The HTTP client the ACME task speaks to the CA with: instant-acme's own (hyper over our rustls), with the CA's
//! answers bounded. A CA is trusted to sign, not to be well-behaved: instant-acme reads every body whole and turns
//! `Retry-After: <seconds>` into `SystemTime::now() + seconds`, which panics past `u64` range and ended the task (a
//! panic in its thread: renewals stopped for good). So here every body is cut at [`MAX_BODY`] (a directory, an
//! order or a chain takes a few KiB) and a `Retry-After` in seconds is clamped to [`MAX_RETRY_AFTER`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderValue, Request};
use http_body_util::Limited;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// The longest answer taken from the CA: a chain of a few certificates, or an order with many names, is a few KiB.
pub const MAX_BODY: usize = 1 << 20;
/// The longest wait a CA may ask for between polls: longer than an order may take ([`crate::ORDER_TIMEOUT`]), so a
/// clamped wait still ends the order by its deadline.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The longest a CA's rate limit may hold the next order back (Let's Encrypt's limits reset within hours).
pub const MAX_CA_WAIT: Duration = Duration::from_secs(24 * 3600);

/// When the CA said to come back: a 429 (rate limited) or 503 with `Retry-After`, in seconds or as an HTTP-date. The
/// task waits at least until then before its next order, whatever its own backoff says: ordering again into a rate
/// limit only extends it. Shared between the task and every client it builds.
#[derive(Debug, Clone, Default)]
pub struct CaWait(Arc<Mutex<Option<SystemTime>>>);

impl CaWait {
    /// Keeps the later of what it holds and `until` (at most [`MAX_CA_WAIT`] from `now`).
    fn note(&self, until: SystemTime, now: SystemTime) {
        let until = until.min(now + MAX_CA_WAIT);
        let mut at = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *at = Some(at.map_or(until, |held| held.max(until)));
    }

    /// How long is left to wait at `now`; the wait is then forgotten (the next order starts afresh).
    pub fn take(&self, now: SystemTime) -> Option<Duration> {
        let mut at = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        at.take().and_then(|until| until.duration_since(now).ok())
    }

    /// A CA's answer: a rate limit or an outage with `Retry-After` is remembered.
    fn observe(&self, status: http::StatusCode, retry_after: Option<&HeaderValue>, now: SystemTime) {
        if status != http::StatusCode::TOO_MANY_REQUESTS && status != http::StatusCode::SERVICE_UNAVAILABLE {
            return;
        }
        let Some(value) = retry_after.and_then(|v| v.to_str().ok()).map(str::trim) else {
            return;
        };
        let until = match value.parse::<u64>() {
            Ok(secs) => Some(now + Duration::from_secs(secs.min(MAX_CA_WAIT.as_secs()))),
            Err(_) => httpdate::parse_http_date(value).ok(),
        };
        if let Some(until) = until {
            self.note(until, now);
        }
    }
}

/// See the module documentation.
pub struct Bounded {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    wait: CaWait,
}

impl Bounded {
    /// Trusting the platform's roots, as instant-acme's own client does; or `root` alone (a private CA, Pebble).
    /// `wait` learns when a rate-limited CA said to come back.
    pub fn new(root: Option<&Path>, wait: CaWait) -> Result<Bounded, String> {
        let builder = match root {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = std::fs::read(path).map_err(|e| e.to_string())?;
                for cert in pem_certs(&pem)? {
                    roots.add(cert).map_err(|e| e.to_string())?;
                }
                let config =
                    rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(config)
            }
            None => HttpsConnectorBuilder::new()
                .try_with_platform_verifier()
                .map_err(|e| e.to_string())?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        Ok(Bounded {
            client: Client::builder(TokioExecutor::new()).build(connector),
            wait,
        })
    }
}

fn pem_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

impl HttpClient for Bounded {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(req);
        let wait = self.wait.clone();
        Box::pin(async move {
            let response = sent.await.map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            // Before the clamp: a rate limit's own Retry-After may be longer than a poll's.
            wait.observe(
                response.status(),
                response.headers().get(RETRY_AFTER),
                SystemTime::now(),
            );
            Ok(BytesResponse::from(bounded(response)))
        })
    }
}

/// The response with its body cut at [`MAX_BODY`] and its `Retry-After` clamped.
fn bounded<B>(response: http::Response<B>) -> http::Response<Limited<B>> {
    let (mut parts, body) = response.into_parts();
    let clamped = parts
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|secs| *secs > MAX_RETRY_AFTER.as_secs());
    if clamped.is_some() {
        parts
            .headers
            .insert(RETRY_AFTER, HeaderValue::from(MAX_RETRY_AFTER.as_secs()));
    }
    http::Response::from_parts(parts, Limited::new(body, MAX_BODY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn a_retry_after_past_an_hour_is_clamped_and_a_date_or_a_short_wait_kept() {
        let with = |value: &str| {
            let r = http::Response::builder()
                .header(RETRY_AFTER, value)
                .body(Full::new(Bytes::new()))
                .unwrap();
            bounded(r).headers()[RETRY_AFTER].to_str().unwrap().to_owned()
        };
        assert_eq!(with("18446744073709551615"), "3600");
        assert_eq!(with("99999999999"), "3600");
        assert_eq!(with("3"), "3");
        assert_eq!(with("Fri, 31 Dec 1999 23:59:59 GMT"), "Fri, 31 Dec 1999 23:59:59 GMT");
    }

    #[test]
    fn a_rate_limit_s_retry_after_is_remembered_and_taken_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let wait = CaWait::default();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        // Not a rate limit, or no header: nothing to wait for.
        wait.observe(http::StatusCode::BAD_REQUEST, Some(&header("600")), now);
        wait.observe(http::StatusCode::TOO_MANY_REQUESTS, None, now);
        assert_eq!(wait.take(now), None);
        wait.observe(http::StatusCode::TOO_MANY_REQUESTS, Some(&header("600")), now);
        wait.observe(http::StatusCode::SERVICE_UNAVAILABLE, Some(&header("60")), now);
        assert_eq!(wait.take(now), Some(Duration::from_secs(600)), "the later of the two");
        assert_eq!(wait.take(now), None, "taken once");
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7200));
        wait.observe(http::StatusCode::TOO_MANY_REQUESTS, Some(&header(&date)), now);
        assert_eq!(wait.take(now), Some(Duration::from_secs(7200)));
        wait.observe(http::StatusCode::TOO_MANY_REQUESTS, Some(&header("99999999999")), now);
        assert_eq!(wait.take(now), Some(MAX_CA_WAIT), "at most a day");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_an_error_not_held() {
        let small = bounded(http::Response::new(Full::new(Bytes::from(vec![7u8; 1000]))));
        assert_eq!(small.into_body().collect().await.unwrap().to_bytes().len(), 1000);
        let big = bounded(http::Response::new(Full::new(Bytes::from(vec![7u8; MAX_BODY + 1]))));
        assert!(big.into_body().collect().await.is_err());
    }
}
