//! TLS through rustls (ring provider): certificates from PEM files, a generated self-signed one, or one an ACME CA
//! issued (installed by the `acme` crate), swappable at run time so a renewed certificate is picked up without
//! dropping connections or allocations. The store also answers RFC 8737 TLS-ALPN-01 validation handshakes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::verify_server_name;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::StartError;

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsIdentity {
    /// PEM certificate chain and private key files, re-read on [`CertStore::reload`].
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for these names, generated at start-up (zero-config default; browsers reject it).
    SelfSigned { names: Vec<String> },
    /// Issued by an ACME CA for these names and installed with [`CertStore::install`]; until then a self-signed
    /// placeholder for them. Reloads change nothing: the ACME task owns the certificate.
    Acme { names: Vec<String> },
}

/// ALPN protocol id of an RFC 8737 TLS-ALPN-01 validation handshake.
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// The current certificate, read on every handshake and replaced on reload.
#[derive(Debug)]
pub struct CertStore {
    identity: TlsIdentity,
    current: RwLock<Arc<CertifiedKey>>,
    loaded_mtime: RwLock<Option<SystemTime>>,
    /// An ACME certificate replaced the placeholder.
    issued: AtomicBool,
    /// RFC 8737 validation certificates by (lowercase) name, present only while a challenge is pending.
    acme_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

/// What readiness and metrics need to know of the certificate in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertStatus {
    /// The leaf certificate's dates; `None` if they could not be read.
    pub validity: Option<Validity>,
    /// Generated at start (no files configured): valid, but no browser trusts it.
    pub self_signed: bool,
    /// Issued and renewed by ACME (`tls.domains`), rather than read from files.
    pub acme: bool,
}

impl CertStatus {
    /// The leaf certificate's notAfter, in Unix seconds.
    pub fn not_after(&self) -> Option<u64> {
        self.validity.map(|v| v.not_after)
    }
}

impl Validity {
    /// What is wrong with these dates at `now` (Unix seconds) for a client: expired, or not valid yet.
    pub fn problem(self, now: u64) -> Option<String> {
        if self.not_after <= now {
            return Some(format!("expired {} days ago", (now - self.not_after) / 86_400));
        }
        (self.not_before > now).then(|| {
            format!(
                "not valid for another {} hours (notBefore is in the future: a wrong file, or this host's clock)",
                (self.not_before - now).div_ceil(3600)
            )
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files were read again and are in use.
    Files,
    /// Nothing to read: the certificate is ACME's, renewed on its own schedule.
    Acme,
    /// Nothing to read: the certificate was generated at start, and is kept.
    Generated,
}

impl CertStore {
    pub fn new(identity: TlsIdentity) -> Result<Arc<Self>, StartError> {
        let (key, mtime) = load(&identity)?;
        Ok(Arc::new(Self {
            identity,
            current: RwLock::new(Arc::new(key)),
            loaded_mtime: RwLock::new(mtime),
            issued: AtomicBool::new(false),
            acme_challenges: RwLock::new(HashMap::new()),
        }))
    }

    /// Re-reads the files. On error the old certificate stays in use. An ACME identity is left alone.
    /// A certificate that is expired or not valid yet does not replace one that is valid: every client would
    /// refuse the server at once (a wrong file, a renewal that copied the old one back).
    pub fn reload(&self) -> Result<Reloaded, StartError> {
        match self.identity {
            TlsIdentity::Acme { .. } => return Ok(Reloaded::Acme),
            // Generated at start: a new one would have a new key, and break what accepted or pinned the old one.
            TlsIdentity::SelfSigned { .. } => return Ok(Reloaded::Generated),
            TlsIdentity::Files { .. } => {}
        }
        let (key, mtime) = load(&self.identity)?;
        // Not tried again until a file changes again: one warning per change, not one every few seconds.
        *self.loaded_mtime.write().unwrap_or_else(|e| e.into_inner()) = mtime;
        let now = unix_now();
        let fresh = key.end_entity_cert().ok().and_then(|der| validity(der));
        let in_use_good = self.status().validity.is_some_and(|v| v.problem(now).is_none());
        if let Some(problem) = fresh.and_then(|v| v.problem(now)).filter(|_| in_use_good) {
            return Err(StartError::Tls(format!(
                "the new certificate is {problem}; the one in use stays until a valid one is in place"
            )));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(Reloaded::Files)
    }

    /// Reloads if a file changed since the last load; for a periodic check.
    pub fn reload_if_changed(&self) -> Option<Result<Reloaded, StartError>> {
        let TlsIdentity::Files { cert, key } = &self.identity else {
            return None;
        };
        let newest = newest_mtime(cert, key);
        let loaded = *self.loaded_mtime.read().unwrap_or_else(|e| e.into_inner());
        if newest.is_some() && newest != loaded {
            let result = self.reload();
            // A file that cannot be loaded (a key written after its certificate) is not tried again until it changes.
            *self.loaded_mtime.write().unwrap_or_else(|e| e.into_inner()) = newest;
            return Some(result);
        }
        None
    }

    /// Swaps in an issued certificate chain and its key (PEM) after checking they are a pair; handshakes from now
    /// on use it, open connections keep theirs. On error the old certificate stays in use.
    pub fn install(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), StartError> {
        let key = certified_key(chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        self.issued.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Serves `key` to TLS-ALPN-01 handshakes for `name` (RFC 8737 §3), or stops when `None`.
    pub fn set_acme_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut challenges = self.acme_challenges.write().unwrap_or_else(|e| e.into_inner());
        match key {
            Some(key) => challenges.insert(name.to_ascii_lowercase(), key),
            None => challenges.remove(&name.to_ascii_lowercase()),
        };
    }

    pub fn is_self_signed(&self) -> bool {
        match self.identity {
            TlsIdentity::SelfSigned { .. } => true,
            TlsIdentity::Acme { .. } => !self.issued.load(Ordering::Relaxed),
            TlsIdentity::Files { .. } => false,
        }
    }

    /// The certificate in use now (after any reload): its expiry, and whether it is the generated one.
    pub fn status(&self) -> CertStatus {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        CertStatus {
            validity: current.end_entity_cert().ok().and_then(|der| validity(der)),
            self_signed: self.is_self_signed(),
            acme: matches!(self.identity, TlsIdentity::Acme { .. }),
        }
    }

    /// Whether the certificate in use names `host` — a DNS name, an IP address, or `[IPv6]` — in its
    /// subjectAltName, as a browser checks a `turns:` or `wss:` URL's host. Trust is not looked at.
    pub fn covers(&self, host: &str) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let (Ok(der), Ok(name)) = (current.end_entity_cert(), ServerName::try_from(bare.to_owned())) else {
            return false;
        };
        ParsedCertificate::try_from(der)
            .and_then(|cert| verify_server_name(&cert, &name))
            .is_ok()
    }

    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737 §3: a validation handshake offers only `acme-tls/1` and names the identifier in SNI. It gets the
        // validation certificate of that name or nothing (a failed handshake); no other handshake ever gets one.
        let mut offered = hello.alpn().into_iter().flatten();
        if let (Some(ALPN_ACME_TLS), None) = (offered.next(), offered.next()) {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .acme_challenges
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned();
        }
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn newest_mtime(cert: &PathBuf, key: &PathBuf) -> Option<SystemTime> {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

fn load(identity: &TlsIdentity) -> Result<(CertifiedKey, Option<SystemTime>), StartError> {
    let (cert_pem, key_pem, mtime) = match identity {
        TlsIdentity::Files { cert, key } => {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", p.display())))
            };
            // Stat before reading: a file replaced in between then looks changed at the next check and is read
            // again, where stat after the read took the new time for the old contents and missed the change.
            let mtime = newest_mtime(cert, key);
            (read(cert)?, read(key)?, mtime)
        }
        TlsIdentity::SelfSigned { names } | TlsIdentity::Acme { names } => {
            let generated = rcgen::generate_simple_self_signed(names.clone())
                .map_err(|e| StartError::Tls(format!("cannot generate a self-signed certificate: {e}")))?;
            (
                generated.cert.pem().into_bytes(),
                generated.signing_key.serialize_pem().into_bytes(),
                None,
            )
        }
    };
    Ok((certified_key(&cert_pem, &key_pem)?, mtime))
}

/// A certificate chain and its private key (PEM) as rustls serves them, refused unless they are a pair.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, StartError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut { cert_pem })
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("invalid certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(StartError::Tls("the certificate file holds no certificate".into()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut { key_pem })
        .map_err(|e| StartError::Tls(format!("invalid key PEM: {e}")))?
        .ok_or_else(|| StartError::Tls("the key file holds no private key".into()))?;
    let signing_key = any_supported_type(&key).map_err(|e| StartError::Tls(format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Between certbot writing the chain and the key, a reload sees a pair that does not match: refuse it (the caller
    // keeps the old one) rather than fail every handshake until the next reload.
    certified.keys_match().map_err(|e| {
        StartError::Tls(format!(
            "the certificate does not match the private key ({e}); check that tls.cert and tls.key are a pair"
        ))
    })?;
    Ok(certified)
}

/// A certificate's validity period (RFC 5280 §4.1.2.5), in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

/// The validity of a DER certificate. Own code for two fields: the DER walk to `tbsCertificate.validity` is a few
/// lines, where an X.509 parser would bring a dozen crates.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (tag, certificate, _) = der_next(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der_next(certificate)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    // serialNumber, signature, issuer; then validity.
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, after) = der_next(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (tag, validity, _) = der_next(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, time, after_not_before) = der_next(validity)?;
    let not_before = unix_time(tag, time)?;
    let (tag, time, _) = der_next(after_not_before)?;
    Some(Validity {
        not_before,
        not_after: unix_time(tag, time)?,
    })
}

/// A UTCTime or GeneralizedTime, in Unix seconds.
fn unix_time(tag: u8, time: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(time).ok()?;
    // UTCTime YYMMDDHHMMSSZ (RFC 5280: YY ≥ 50 is 19YY), GeneralizedTime YYYYMMDDHHMMSSZ.
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |range: std::ops::Range<usize>| -> Option<i64> { rest.get(range)?.parse().ok() };
    let (month, day) = (field(0..2)?, field(2..4)?);
    let (hour, minute, second) = (field(4..6)?, field(6..8)?, field(8..10)?);
    if rest.get(10..) != Some("Z") || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// One DER TLV: tag, contents, what follows. Definite lengths up to four bytes, as DER requires.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = (rest.get(..n)?, rest.get(n..)?);
        rest = after;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 2), 20_789);
    }

    #[test]
    fn not_after_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            validity(cert.der()).map(|v| v.not_after),
            Some(days_from_civil(2031, 5, 17) as u64 * 86_400)
        );
        // rcgen's default is 4096-01-01 (GeneralizedTime).
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        assert_eq!(
            validity(cert.cert.der()).map(|v| v.not_after),
            Some(days_from_civil(4096, 1, 1) as u64 * 86_400)
        );
    }

    /// The names a `turns:` URL may carry: the certificate's DNS names and IP addresses, nothing else.
    #[test]
    fn covers_the_names_and_addresses_in_the_certificate() {
        let store = CertStore::new(TlsIdentity::SelfSigned {
            names: vec!["turn.example.com".into(), "192.0.2.10".into(), "2001:db8::10".into()],
        })
        .unwrap();
        for host in ["turn.example.com", "TURN.example.com", "192.0.2.10", "[2001:db8::10]"] {
            assert!(store.covers(host), "{host}");
        }
        for host in [
            "203.0.113.5",
            "example.com",
            "other.example.com",
            "[2001:db8::11]",
            "",
            "not a name",
        ] {
            assert!(!store.covers(host), "{host}");
        }
    }

    /// RFC 8737 §3: a validation certificate goes only to a handshake offering `acme-tls/1` alone, for its name,
    /// while its challenge is up; everything else gets the certificate in use.
    #[test]
    fn validation_certificates_only_for_acme_tls_alone_and_their_name() {
        let store = CertStore::new(TlsIdentity::Acme {
            names: vec!["a.example".into()],
        })
        .unwrap();
        let challenge = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let pem = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| (c.cert.pem(), c.signing_key.serialize_pem());
        let (cert, key) = pem(&challenge);
        store.set_acme_challenge(
            "A.example",
            Some(Arc::new(certified_key(cert.as_bytes(), key.as_bytes()).unwrap())),
        );
        let mut config = (*store.server_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec(), ALPN_ACME_TLS.to_vec()];
        let config = Arc::new(config);
        let validation = challenge.cert.der().to_vec();

        assert_eq!(
            presented(&config, "a.example", &[ALPN_ACME_TLS]),
            Some(validation.clone())
        );
        let placeholder = presented(&config, "a.example", &[b"http/1.1"]).unwrap();
        assert_ne!(placeholder, validation);
        assert_eq!(presented(&config, "a.example", &[]), Some(placeholder.clone()));
        assert_eq!(
            presented(&config, "a.example", &[b"http/1.1", ALPN_ACME_TLS]),
            Some(placeholder.clone()),
            "not acme-tls/1 alone"
        );
        assert_eq!(presented(&config, "b.example", &[ALPN_ACME_TLS]), None, "another name");
        store.set_acme_challenge("a.example", None);
        assert_eq!(
            presented(&config, "a.example", &[ALPN_ACME_TLS]),
            None,
            "the challenge is down"
        );

        // An issued certificate replaces the placeholder for every new handshake; a reload keeps it.
        assert!(store.is_self_signed());
        let issued = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let (cert, key) = pem(&issued);
        store.install(cert.as_bytes(), key.as_bytes()).unwrap();
        store.reload().unwrap();
        assert!(!store.is_self_signed());
        assert_eq!(presented(&config, "a.example", &[]), Some(issued.cert.der().to_vec()));
        assert!(
            store.install(cert.as_bytes(), pem(&challenge).1.as_bytes()).is_err(),
            "not a pair"
        );
    }

    /// An in-memory handshake for `name` offering `alpn`: the leaf the server presented, `None` if it failed.
    fn presented(config: &Arc<rustls::ServerConfig>, name: &str, alpn: &[&[u8]]) -> Option<Vec<u8>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        client_config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client =
            rustls::Connection::from(rustls::ClientConnection::new(Arc::new(client_config), server_name).unwrap());
        let mut server = rustls::Connection::from(rustls::ServerConnection::new(config.clone()).unwrap());
        for _ in 0..10 {
            transfer(&mut client, &mut server).ok()?;
            transfer(&mut server, &mut client).ok()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        let rustls::Connection::Client(client) = client else {
            return None;
        };
        client.peer_certificates()?.first().map(|c| c.to_vec())
    }

    fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    #[test]
    fn not_after_refuses_garbage() {
        assert_eq!(validity(&[]), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(validity(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
