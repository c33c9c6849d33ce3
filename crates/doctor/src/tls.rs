//! TLS for the checks: every handshake completes (so a self-signed server can still be diagnosed), and what the
//! Web PKI thinks of the certificate is recorded beside it: trusted or not and why, self-signed, days to expiry.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::CheckError;

/// What the certificate looked like to a browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Trusted by the Web PKI roots for this name.
    pub trusted: bool,
    /// Issuer equals subject.
    pub self_signed: bool,
    /// The certificate names the host connected to (a DNS name or IP address in its subjectAltName), whoever
    /// issued it: a `turns:` URL naming what the certificate does not is refused by every browser.
    pub covers_name: bool,
    /// Why not trusted, in rustls' words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Whole days until notAfter (negative: expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_to_expiry: Option<i64>,
}

/// Wraps the Web PKI verifier: records its verdict, then lets the handshake go on.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Option<CertInfo>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let parsed = x509::parse(end_entity.as_ref());
        let covers_name = ParsedCertificate::try_from(end_entity)
            .and_then(|cert| verify_server_name(&cert, server_name))
            .is_ok();
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let info = CertInfo {
            trusted: outcome.is_ok(),
            self_signed: parsed.as_ref().is_some_and(|c| c.self_signed),
            covers_name,
            problem: outcome.err().map(|e| describe(&e)),
            days_to_expiry: parsed.map(|c| (c.not_after - now_secs).div_euclid(86_400)),
        };
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(info);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "issued by an unknown authority".into(),
        rustls::Error::InvalidCertificate(C::Expired) => "expired".into(),
        rustls::Error::InvalidCertificate(C::NotValidYet) => "not valid yet".into(),
        rustls::Error::InvalidCertificate(C::NotValidForName) => "not valid for this name".into(),
        rustls::Error::InvalidCertificate(C::Revoked) => "revoked".into(),
        other => other.to_string(),
    }
}

/// Connects TLS over `tcp` with ALPN `alpn`, returning the stream and what the certificate looked like.
pub async fn connect(
    tcp: TcpStream,
    host: &str,
    alpn: &[&[u8]],
) -> Result<(TlsStream<TcpStream>, CertInfo), CheckError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| CheckError::Tls(e.to_string()))?;
    let seen = Arc::new(Mutex::new(None));
    let verifier = Recording {
        inner,
        seen: seen.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CheckError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        .map_err(|_| CheckError::Tls(format!("{host} is not a valid TLS server name")))?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| match CheckError::from(e) {
            CheckError::Io(m) => CheckError::Tls(m),
            other => other,
        })?;
    let info = seen.lock().ok().and_then(|s| s.clone()).unwrap_or(CertInfo {
        trusted: false,
        self_signed: false,
        covers_name: false,
        problem: Some("no certificate seen".into()),
        days_to_expiry: None,
    });
    Ok((stream, info))
}

/// Just enough DER to read a certificate's validity and whether it signed itself. Never panics on bad input.
pub mod x509 {
    /// What we read from a certificate.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Parsed {
        pub not_after: i64,
        pub self_signed: bool,
    }

    /// One DER element: (tag, content, rest).
    fn element(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = buf.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = rest.get(..n)?;
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, rest.get(n..)?)
        };
        Some((tag, rest.get(..len)?, rest.get(len..)?))
    }

    pub fn parse(der: &[u8]) -> Option<Parsed> {
        let (0x30, cert, _) = element(der)? else { return None };
        let (0x30, tbs, _) = element(cert)? else { return None };
        let mut rest = tbs;
        let (tag, _, r) = element(rest)?;
        if tag == 0xa0 {
            rest = r; // [0] version
        }
        let (_, _, r) = element(rest)?; // serialNumber
        let (_, _, r) = element(r)?; // signature algorithm
        let (0x30, issuer, r) = element(r)? else { return None };
        let (0x30, validity, r) = element(r)? else { return None };
        let (0x30, subject, _) = element(r)? else { return None };
        let (_, _, v) = element(validity)?; // notBefore
        let (tag, not_after, _) = element(v)?;
        Some(Parsed {
            not_after: time(tag, not_after)?,
            self_signed: issuer == subject,
        })
    }

    /// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) to Unix seconds.
    fn time(tag: u8, v: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 => {
                let yy: i64 = s.get(..2)?.parse().ok()?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, s.get(2..)?)
            }
            0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        let num = |a: usize| -> Option<i64> { rest.get(a..a + 2)?.parse().ok() };
        let (month, day, hour, min, sec) = (num(0)?, num(2)?, num(4)?, num(6)?, num(8)?);
        Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dates() {
            assert_eq!(days_from_civil(1970, 1, 1), 0);
            assert_eq!(time(0x17, b"000101000000Z"), Some(946_684_800));
            assert_eq!(time(0x18, b"20380119031407Z"), Some(2_147_483_647));
            assert_eq!(time(0x17, b"0001"), None);
        }

        #[test]
        fn garbage_is_refused_not_panicked_on() {
            for bad in [
                &b""[..],
                b"\x30",
                b"\x30\x84\xff\xff\xff\xff",
                b"\x30\x02\x30\x00",
                b"\x30\x80",
            ] {
                assert_eq!(parse(bad), None);
            }
        }
    }
}
