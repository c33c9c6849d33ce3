//! One order, RFC 8555 §7.4 through `instant-acme` (which does the JOSE): account (stored or new), new order, one
//! challenge per authorization put up where the CA will look and marked ready, wait for the order, finalize with a
//! CSR for a fresh key, download the chain. The challenges are taken down whatever the outcome.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use server::CertStore;

use crate::http::{Bounded, CaWait};
use crate::plan::{self, Method, Ways};
use crate::store::{Issued, Store};
use crate::{AcmeError, Config, Http01Tokens};

/// How long the CA may take to validate and to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the challenges are put up: the TLS store (TLS-ALPN-01) and the HTTP tokens (HTTP-01).
pub(crate) struct Responders<'a> {
    pub certs: &'a CertStore,
    pub http01: &'a Http01Tokens,
}

/// What the task keeps across its orders: the account registered when it could not be saved (else every retry
/// registered a new one), and when a rate-limited CA said to come back.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub account: Option<String>,
    pub ca_wait: CaWait,
}

pub(crate) async fn issue(
    config: &Config,
    store: &Store,
    to: &Responders<'_>,
    memory: &mut Memory,
) -> Result<Issued, AcmeError> {
    let stored = account(config, store, false, memory).await?;
    let identifiers: Vec<Identifier> = config.names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = match stored.new_order(&NewOrder::new(&identifiers)).await {
        Ok(order) => order,
        // The CA no longer knows the stored account (a company CA redeployed, its database reset, the account
        // deactivated): a new one is registered and the order tried once more. Before, every renewal failed with
        // this until someone deleted account.json.
        Err(e) if account_gone(&e) => {
            tracing::warn!(directory = %config.directory, error = %e, "ACME: the CA no longer knows the stored account; registering a new one");
            account(config, store, true, memory)
                .await?
                .new_order(&NewOrder::new(&identifiers))
                .await
                .map_err(|e| AcmeError::from_ca("the CA refused the order", e))?
        }
        Err(e) => return Err(AcmeError::from_ca("the CA refused the order", e)),
    };
    let mut up = Vec::new();
    let result = validate(&mut order, config.ways, to, &mut up).await;
    for (method, name, token) in &up {
        match method {
            Method::TlsAlpn01 => to.certs.set_acme_challenge(name, None),
            Method::Http01 => to.http01.remove(token),
        }
    }
    result?;
    // A fresh key per certificate (ECDSA P-256): a key is never reused past the certificate it was made for.
    let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(config.names.clone()).map_err(|e| AcmeError::Certificate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| AcmeError::from_ca("the CA refused to finalize the order", e))?;
    let chain_pem = order
        .poll_certificate(&retries())
        .await
        .map_err(|e| AcmeError::from_ca("the CA did not issue the certificate", e))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
        names: config.names.clone(),
    })
}

/// Puts up one challenge per pending authorization, waits for the order to be ready, and on failure says what the
/// CA said about each failed challenge.
async fn validate(
    order: &mut instant_acme::Order,
    ways: Ways,
    to: &Responders<'_>,
    up: &mut Vec<(Method, String, String)>,
) -> Result<(), AcmeError> {
    // A CA that validates at once (Pebble without its sleep, a fast production CA) answers the ready call itself
    // with the challenge's error; that is explained like a failure seen by polling, below.
    let mut refused = None;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| AcmeError::from_ca("cannot read an authorization", e))?;
        if authorization.status == AuthorizationStatus::Valid {
            continue; // reused from an earlier order
        }
        let name = authorization.identifier().to_string();
        let offered: Vec<Method> = authorization
            .challenges
            .iter()
            .filter_map(|c| method_of(&c.r#type))
            .collect();
        let Some(method) = plan::choose(&offered, ways) else {
            return Err(AcmeError::NoChallenge { name, ways });
        };
        let Some(mut challenge) = authorization.challenge(challenge_type(method)) else {
            return Err(AcmeError::NoChallenge { name, ways });
        };
        let key_authorization = challenge.key_authorization();
        match method {
            Method::TlsAlpn01 => {
                let key = validation_certificate(&name, key_authorization.digest().as_ref())?;
                to.certs.set_acme_challenge(&name, Some(Arc::new(key)));
            }
            Method::Http01 => to
                .http01
                .insert(challenge.token.clone(), key_authorization.as_str().to_owned()),
        }
        up.push((method, name.clone(), challenge.token.clone()));
        tracing::info!(name = %name, challenge = %method, "ACME challenge ready; asking the CA to validate");
        if let Err(e) = challenge.set_ready().await {
            refused = Some(AcmeError::from_ca("the CA refused the challenge", e));
            break;
        }
    }
    let status = match refused {
        Some(e) => Err(e),
        None => order
            .poll_ready(&retries())
            .await
            .map_err(|e| AcmeError::from_ca("the order failed", e)),
    };
    if matches!(status, Ok(OrderStatus::Ready)) {
        return Ok(());
    }
    // Say which challenge failed and what the CA said about it.
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        let name = state.identifier().to_string();
        for challenge in &state.challenges {
            let (Some(problem), Some(method)) = (&challenge.error, method_of(&challenge.r#type)) else {
                continue;
            };
            return Err(AcmeError::Challenge {
                name: name.clone(),
                method,
                said: problem.to_string(),
                advice: plan::advice(problem.r#type.as_deref(), Some(method), &name),
            });
        }
    }
    status.and_then(|s| Err(AcmeError::Refused(format!("the order is {s:?}"))))
}

async fn account(config: &Config, store: &Store, fresh: bool, memory: &mut Memory) -> Result<Account, AcmeError> {
    // Our client: instant-acme's, with the CA's answers bounded (`crate::http`).
    let wait = memory.ca_wait.clone();
    let builder = || {
        let client = Bounded::new(config.ca_root.as_deref(), wait.clone()).map_err(|detail| match &config.ca_root {
            Some(root) => AcmeError::CaRoot {
                path: root.display().to_string(),
                detail,
            },
            None => AcmeError::Directory {
                url: config.directory.clone(),
                detail,
            },
        })?;
        Ok::<_, AcmeError>(Account::builder_with_http(Box::new(client)))
    };
    let unreachable = |e: instant_acme::Error| AcmeError::Directory {
        url: config.directory.clone(),
        detail: with_sources(&e),
    };
    let stored = match fresh {
        true => None,
        false => store
            .account()
            .map_err(|e| AcmeError::Store(store.dir().display().to_string(), e))?
            .or_else(|| memory.account.clone()),
    };
    if let Some(json) = stored {
        if let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&json) {
            return builder()?.from_credentials(credentials).await.map_err(unreachable);
        }
        tracing::warn!(dir = %store.dir().display(), "the stored ACME account cannot be read; registering a new one");
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) =
        builder()?
            .create(&new, config.directory.clone(), None)
            .await
            .map_err(|e| match e {
                instant_acme::Error::Api(_) => AcmeError::from_ca("the CA refused the account", e),
                e => unreachable(e),
            })?;
    let json = serde_json::to_string(&credentials).map_err(|e| AcmeError::Store(String::new(), e.into()))?;
    // An account that cannot be saved is kept for this process: the order goes on, and the next retry does not
    // register yet another account (CAs limit registrations too).
    if let Err(e) = store.save_account(&json) {
        tracing::error!(
            dir = %store.dir().display(),
            error = %e,
            "ACME: the new account cannot be saved; it is kept in memory until the server stops (fix the directory's \
             permissions, or the next start registers another account)"
        );
    }
    memory.account = Some(json);
    tracing::info!(directory = %config.directory, id = account.id(), "ACME account registered");
    Ok(account)
}

/// The CA's answer for an account it does not know (RFC 8555 §7.3.3), or one deactivated (§7.3.6: `unauthorized`).
fn account_gone(e: &instant_acme::Error) -> bool {
    let instant_acme::Error::Api(problem) = e else {
        return false;
    };
    match problem.r#type.as_deref() {
        Some("urn:ietf:params:acme:error:accountDoesNotExist") => true,
        Some("urn:ietf:params:acme:error:unauthorized") => problem
            .detail
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().contains("deactivated")),
        _ => false,
    }
}

/// RFC 8737 §3: a self-signed certificate for the name alone, carrying the SHA-256 of the key authorization in
/// the critical acmeIdentifier extension.
fn validation_certificate(name: &str, digest: &[u8]) -> Result<rustls::sign::CertifiedKey, AcmeError> {
    let bad = |e: rcgen::Error| AcmeError::Certificate(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(bad)?;
    if digest.len() != 32 {
        return Err(AcmeError::Certificate(
            "the key authorization digest is not SHA-256".into(),
        ));
    }
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(bad)?;
    // Not through `server::tls::certified_key`: its pair check parses the certificate with webpki, which refuses
    // the critical extension it does not know — the one this certificate exists for.
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| AcmeError::Certificate(e.to_string()))?;
    Ok(rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

fn method_of(challenge: &ChallengeType) -> Option<Method> {
    match challenge {
        ChallengeType::TlsAlpn01 => Some(Method::TlsAlpn01),
        ChallengeType::Http01 => Some(Method::Http01),
        _ => None,
    }
}

fn challenge_type(method: Method) -> ChallengeType {
    match method {
        Method::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Method::Http01 => ChallengeType::Http01,
    }
}

fn retries() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION_TIMEOUT)
}

/// An error and its causes on one line: hyper's "client error (Connect)" alone does not say what went wrong.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
