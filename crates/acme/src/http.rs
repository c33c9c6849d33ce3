//! The HTTP client the ACME task speaks to the CA with: instant-acme's own (hyper over our rustls), with the CA's
//! answers bounded. A CA is trusted to sign, not to be well-behaved: instant-acme reads every body whole and turns
//! `Retry-After: <seconds>` into `SystemTime::now() + seconds`, which panics past `u64` range and ended the task (a
//! panic in its thread: renewals stopped for good). So here every body is cut at [`MAX_BODY`] (a directory, an
//! order or a chain takes a few KiB) and a `Retry-After` in seconds is clamped to [`MAX_RETRY_AFTER`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

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

/// See the module documentation.
pub struct Bounded(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl Bounded {
    /// Trusting the platform's roots, as instant-acme's own client does; or `root` alone (a private CA, Pebble).
    pub fn new(root: Option<&Path>) -> Result<Bounded, String> {
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
        Ok(Bounded(Client::builder(TokioExecutor::new()).build(connector)))
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
        let sent = self.0.request(req);
        Box::pin(async move {
            let response = sent.await.map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
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

    #[tokio::test]
    async fn a_body_past_the_limit_is_an_error_not_held() {
        let small = bounded(http::Response::new(Full::new(Bytes::from(vec![7u8; 1000]))));
        assert_eq!(small.into_body().collect().await.unwrap().to_bytes().len(), 1000);
        let big = bounded(http::Response::new(Full::new(Bytes::from(vec![7u8; MAX_BODY + 1]))));
        assert!(big.into_body().collect().await.is_err());
    }
}
