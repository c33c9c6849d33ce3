//! TLS through rustls (ring provider): certificates from PEM files, or a generated self-signed one, swappable at
//! run time so a renewed certificate is picked up without dropping connections or allocations.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::StartError;

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsIdentity {
    /// PEM certificate chain and private key files, re-read on [`CertStore::reload`].
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for these names, generated at start-up (zero-config default; browsers reject it).
    SelfSigned { names: Vec<String> },
}

/// The current certificate, read on every handshake and replaced on reload.
#[derive(Debug)]
pub struct CertStore {
    identity: TlsIdentity,
    current: RwLock<Arc<CertifiedKey>>,
    loaded_mtime: RwLock<Option<SystemTime>>,
}

impl CertStore {
    pub fn new(identity: TlsIdentity) -> Result<Arc<Self>, StartError> {
        let (key, mtime) = load(&identity)?;
        Ok(Arc::new(Self {
            identity,
            current: RwLock::new(Arc::new(key)),
            loaded_mtime: RwLock::new(mtime),
        }))
    }

    /// Re-reads the files. On error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), StartError> {
        let (key, mtime) = load(&self.identity)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.loaded_mtime.write().unwrap_or_else(|e| e.into_inner()) = mtime;
        Ok(())
    }

    /// Reloads if a file changed since the last load; for a periodic check.
    pub fn reload_if_changed(&self) -> Option<Result<(), StartError>> {
        let TlsIdentity::Files { cert, key } = &self.identity else {
            return None;
        };
        let newest = newest_mtime(cert, key);
        let loaded = *self.loaded_mtime.read().unwrap_or_else(|e| e.into_inner());
        (newest.is_some() && newest != loaded).then(|| self.reload())
    }

    pub fn is_self_signed(&self) -> bool {
        matches!(self.identity, TlsIdentity::SelfSigned { .. })
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
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
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
            (read(cert)?, read(key)?, newest_mtime(cert, key))
        }
        TlsIdentity::SelfSigned { names } => {
            let generated = rcgen::generate_simple_self_signed(names.clone())
                .map_err(|e| StartError::Tls(format!("cannot generate a self-signed certificate: {e}")))?;
            (
                generated.cert.pem().into_bytes(),
                generated.key_pair.serialize_pem().into_bytes(),
                None,
            )
        }
    };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("invalid certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(StartError::Tls("the certificate file holds no certificate".into()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
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
    Ok((certified, mtime))
}
