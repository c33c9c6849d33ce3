use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key for MESSAGE-INTEGRITY(-SHA256): for long-term credentials a hash of `username:realm:password`,
/// for short-term ones the password itself. Kept as bytes so both fit.
#[derive(Clone, PartialEq, Eq)]
pub struct IntegrityKey {
    bytes: [u8; 32],
    len: u8,
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl IntegrityKey {
    /// A key of up to 32 bytes used as is (a short-term password, or a derived long-term key).
    /// Longer input is hashed first, as HMAC would do anyway.
    pub fn from_bytes(key: &[u8]) -> Self {
        let mut bytes = [0u8; 32];
        if let Some(prefix) = bytes.get_mut(..key.len()) {
            prefix.copy_from_slice(key);
            Self {
                bytes,
                len: key.len() as u8,
            }
        } else {
            // HMAC-SHA1 hashes keys longer than its 64-byte block; keys of 33-64 bytes are rare enough (only
            // short-term passwords) that hashing them with SHA-256 here is a documented limitation.
            bytes.copy_from_slice(&Sha256::digest(key));
            Self { bytes, len: 32 }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len as usize).unwrap_or_default()
    }

    pub(crate) fn hmac_sha1(&self) -> Hmac<Sha1> {
        // HMAC accepts keys of any length, so this cannot fail.
        Hmac::<Sha1>::new_from_slice(self.as_bytes()).unwrap_or_else(|_| unreachable!())
    }

    pub(crate) fn hmac_sha256(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.as_bytes()).unwrap_or_else(|_| unreachable!())
    }
}

/// RFC 8489 §9.2.2: key = MD5(username ":" OpaqueString(realm) ":" OpaqueString(password)).
///
/// OpaqueString (RFC 8265) normalisation is not applied: for ASCII credentials, which is what TURN deployments use,
/// it is the identity.
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> IntegrityKey {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    IntegrityKey::from_bytes(&h.finalize())
}

/// RFC 8489 §9.2.2: the SHA-256 variant, used when PASSWORD-ALGORITHM says SHA-256.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> IntegrityKey {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    IntegrityKey::from_bytes(&h.finalize())
}

/// RFC 8489 §14.4: USERHASH = SHA-256(username ":" realm).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

/// Constant-time check that `received` equals the first `received.len()` bytes of `computed`
/// (MESSAGE-INTEGRITY-SHA256 may be truncated to 16 bytes).
pub(crate) fn ct_prefix_eq(computed: &[u8], received: &[u8]) -> bool {
    match computed.get(..received.len()) {
        Some(prefix) if !received.is_empty() => prefix.ct_eq(received).into(),
        _ => false,
    }
}
