//! Long-term credentials (RFC 8489 §9.2): static users, time-limited "TURN REST API" credentials, and stateless
//! nonces.
//!
//! Nonces carry their own expiry and a MAC over (expiry, client IP), so every worker thread accepts every other
//! worker's nonces without shared state, and a restart invalidates them all (clients just get 438 and retry).

use std::collections::HashMap;
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use stun::{long_term_key_md5, long_term_key_sha256, IntegrityKey, PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256};
use subtle::ConstantTimeEq;

/// RFC 8489 §9.2: a nonce that starts with this cookie carries security-feature bits.
const NONCE_COOKIE: &str = "obMatJos2";
/// Feature bits: "Password algorithms" set, "Username anonymity" clear; base64 of 0x800000.
const NONCE_FEATURES: &str = "gAAA";

/// A shared secret for REST credentials. Several may be configured at once so a secret can be rotated.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Keys of one static user, derived once at start-up.
#[derive(Debug, Clone)]
struct UserKeys {
    md5: IntegrityKey,
    sha256: IntegrityKey,
}

/// Everything needed to authenticate a request.
#[derive(Debug, Clone)]
pub struct Authenticator {
    realm: String,
    users: HashMap<String, UserKeys>,
    /// USERHASH → username, for clients that hide the username (RFC 8489 §14.4).
    userhashes: HashMap<[u8; 32], String>,
    rest_secrets: Vec<Secret>,
    nonce_key: [u8; 32],
    nonce_lifetime_secs: u64,
    /// REST credentials whose expiry lies further ahead than this are refused (0: no limit): a credential minted
    /// for centuries is a leaked password for ever.
    max_rest_lifetime_secs: u64,
}

/// Why a username has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    UnknownUser,
    /// A REST credential whose expiry has passed.
    Expired,
    /// A REST credential whose expiry lies beyond the accepted maximum lifetime.
    TooLong,
}

/// Whether a REST credential's expiry is enforced. An allocation authenticated while its credential was valid keeps
/// working after the credential expires (its Refreshes, permissions and channels), so a call can outlive the
/// short-lived credential that started it; only new allocations need a live credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Enforce,
    /// The request is for an allocation this username already holds on this 5-tuple.
    HeldAllocation,
}

/// What a nonce check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    Valid,
    /// Expired, minted for another client, or not ours: answer 438 with a fresh one.
    Stale,
}

impl Authenticator {
    pub fn new(
        realm: String,
        static_users: &[(String, String)],
        rest_secrets: Vec<Secret>,
        nonce_key: [u8; 32],
        nonce_lifetime_secs: u64,
    ) -> Self {
        let mut users = HashMap::new();
        let mut userhashes = HashMap::new();
        for (name, password) in static_users {
            users.insert(
                name.clone(),
                UserKeys {
                    md5: long_term_key_md5(name, &realm, password),
                    sha256: long_term_key_sha256(name, &realm, password),
                },
            );
            userhashes.insert(stun::userhash(name, &realm), name.clone());
        }
        Self {
            realm,
            users,
            userhashes,
            rest_secrets,
            nonce_key,
            nonce_lifetime_secs,
            max_rest_lifetime_secs: 0,
        }
    }

    /// Refuses REST credentials that expire more than `secs` from now (0: no limit).
    pub fn with_max_rest_lifetime(mut self, secs: u64) -> Self {
        self.max_rest_lifetime_secs = secs;
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn username_for_hash(&self, hash: &[u8; 32]) -> Option<&str> {
        self.userhashes.get(hash).map(String::as_str)
    }

    /// The candidate keys for `username` under `algorithm`: one for a static user, one per configured secret for a
    /// REST credential (the MESSAGE-INTEGRITY check tells which secret minted it).
    pub fn keys(
        &self,
        username: &str,
        algorithm: u16,
        unix_now: u64,
        expiry_rule: Expiry,
    ) -> Result<Vec<IntegrityKey>, CredentialError> {
        if let Some(keys) = self.users.get(username) {
            return Ok(vec![if algorithm == PASSWORD_ALGORITHM_SHA256 {
                keys.sha256.clone()
            } else {
                keys.md5.clone()
            }]);
        }
        if self.rest_secrets.is_empty() {
            return Err(CredentialError::UnknownUser);
        }
        let Some(expiry) = rest_expiry(username) else {
            return Err(CredentialError::UnknownUser);
        };
        if expiry <= unix_now && expiry_rule == Expiry::Enforce {
            return Err(CredentialError::Expired);
        }
        if self.max_rest_lifetime_secs != 0 && expiry > unix_now.saturating_add(self.max_rest_lifetime_secs) {
            return Err(CredentialError::TooLong);
        }
        Ok(self
            .rest_secrets
            .iter()
            .map(|secret| {
                let password = rest_password(&secret.0, username);
                match algorithm {
                    PASSWORD_ALGORITHM_SHA256 => long_term_key_sha256(username, &self.realm, &password),
                    _ => long_term_key_md5(username, &self.realm, &password),
                }
            })
            .collect())
    }

    /// Mints a nonce valid for this client IP until `unix_now + lifetime`.
    pub fn mint_nonce(&self, unix_now: u64, client: IpAddr) -> String {
        let expiry = unix_now + self.nonce_lifetime_secs;
        let tag = self.nonce_tag(expiry, client);
        let mut body = [0u8; 18];
        body[..8].copy_from_slice(&expiry.to_be_bytes());
        body[8..].copy_from_slice(&tag);
        format!("{NONCE_COOKIE}{NONCE_FEATURES}{}", STANDARD.encode(body))
    }

    pub fn check_nonce(&self, nonce: &str, unix_now: u64, client: IpAddr) -> NonceState {
        let Some(body) = nonce
            .strip_prefix(NONCE_COOKIE)
            .and_then(|n| n.strip_prefix(NONCE_FEATURES))
        else {
            return NonceState::Stale;
        };
        let mut decoded = [0u8; 18];
        match STANDARD.decode_slice(body, &mut decoded) {
            Ok(18) => {}
            _ => return NonceState::Stale,
        }
        let (expiry, tag) = decoded.split_at(8);
        let expiry = u64::from_be_bytes(expiry.try_into().unwrap_or_default());
        let valid_tag: bool = self.nonce_tag(expiry, client).ct_eq(tag).into();
        if valid_tag && expiry > unix_now {
            NonceState::Valid
        } else {
            NonceState::Stale
        }
    }

    /// Whether the nonce advertises RFC 8489 security features, so the client must use PASSWORD-ALGORITHM.
    pub fn nonce_has_features(nonce: &str) -> bool {
        nonce.starts_with(NONCE_COOKIE)
    }

    fn nonce_tag(&self, expiry: u64, client: IpAddr) -> [u8; 10] {
        let mut mac = hmac_sha1(&self.nonce_key);
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 10];
        tag.copy_from_slice(full.get(..10).unwrap_or(&[0; 10]));
        tag
    }
}

/// The PASSWORD-ALGORITHMS list this server offers, most preferred first (RFC 8489 §14.11 encoding).
pub const PASSWORD_ALGORITHMS_VALUE: [u8; 8] = {
    let sha = PASSWORD_ALGORITHM_SHA256.to_be_bytes();
    let md5 = PASSWORD_ALGORITHM_MD5.to_be_bytes();
    [sha[0], sha[1], 0, 0, md5[0], md5[1], 0, 0]
};

/// The expiry of a REST username `expiry:user` (or a bare `expiry`).
fn rest_expiry(username: &str) -> Option<u64> {
    username.split(':').next()?.parse().ok()
}

/// password = base64(HMAC-SHA1(secret, username)) (draft-uberti-behave-turn-rest, as coturn implements it).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = hmac_sha1(secret);
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    // HMAC takes keys of any length.
    Hmac::<Sha1>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(
            "example.org".into(),
            &[("alice".into(), "wonderland".into())],
            vec![Secret(b"old".to_vec()), Secret(b"new".to_vec())],
            [9; 32],
            600,
        )
    }

    #[test]
    fn nonce_expires_and_is_bound_to_the_client() {
        let a = auth();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let nonce = a.mint_nonce(1000, ip);
        assert!(nonce.starts_with("obMatJos2gAAA"));
        assert_eq!(a.check_nonce(&nonce, 1599, ip), NonceState::Valid);
        assert_eq!(a.check_nonce(&nonce, 1600, ip), NonceState::Stale);
        assert_eq!(
            a.check_nonce(&nonce, 1000, "192.0.2.2".parse().unwrap()),
            NonceState::Stale
        );
        assert_eq!(a.check_nonce("garbage", 1000, ip), NonceState::Stale);
        let mut forged = nonce.clone().into_bytes();
        let last = forged.len() - 3;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            a.check_nonce(std::str::from_utf8(&forged).unwrap(), 1000, ip),
            NonceState::Stale
        );
    }

    #[test]
    fn rest_credentials_accept_every_configured_secret_until_expiry() {
        let a = auth();
        let keys = a
            .keys("2000:bob", PASSWORD_ALGORITHM_MD5, 1000, Expiry::Enforce)
            .unwrap();
        assert_eq!(keys.len(), 2);
        let expected = long_term_key_md5("2000:bob", "example.org", &rest_password(b"new", "2000:bob"));
        assert!(keys.contains(&expected));
        assert_eq!(
            a.keys("2000:bob", PASSWORD_ALGORITHM_MD5, 2000, Expiry::Enforce)
                .unwrap_err(),
            CredentialError::Expired
        );
        // An allocation that holds it keeps it past expiry.
        assert_eq!(
            a.keys("2000:bob", PASSWORD_ALGORITHM_MD5, 2000, Expiry::HeldAllocation)
                .unwrap(),
            keys
        );
        assert_eq!(
            a.keys("bob", PASSWORD_ALGORITHM_MD5, 1000, Expiry::Enforce)
                .unwrap_err(),
            CredentialError::UnknownUser
        );
    }

    #[test]
    fn rest_credentials_beyond_the_maximum_lifetime_are_refused() {
        let a = auth().with_max_rest_lifetime(86_400);
        assert!(a
            .keys("87400:bob", PASSWORD_ALGORITHM_MD5, 1000, Expiry::Enforce)
            .is_ok());
        assert_eq!(
            a.keys("87401:bob", PASSWORD_ALGORITHM_MD5, 1000, Expiry::Enforce)
                .unwrap_err(),
            CredentialError::TooLong
        );
        assert_eq!(
            a.keys("99999999999:bob", PASSWORD_ALGORITHM_MD5, 1000, Expiry::HeldAllocation)
                .unwrap_err(),
            CredentialError::TooLong
        );
    }

    #[test]
    fn rest_password_matches_coturn_formula() {
        // base64(HMAC-SHA1("secret", "1700000000:user")), computed independently with openssl:
        // printf %s 1700000000:user | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1700000000:user"),
            "I/MZeIG6MwzOV8Uubr9liB2556o="
        );
    }

    #[test]
    fn static_user_keys_by_algorithm() {
        let a = auth();
        assert_eq!(
            a.keys("alice", PASSWORD_ALGORITHM_SHA256, 0, Expiry::Enforce).unwrap(),
            vec![long_term_key_sha256("alice", "example.org", "wonderland")]
        );
        assert_eq!(
            a.username_for_hash(&stun::userhash("alice", "example.org")),
            Some("alice")
        );
    }
}
