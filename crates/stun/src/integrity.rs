use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key for MESSAGE-INTEGRITY(-SHA256): for long-term credentials a hash of `username:realm:password`,
/// for short-term ones the password itself. Kept as bytes so both fit.
///
/// Any length gives the MAC that HMAC over the original key gives (RFC 2104 §2): keys up to the 64-byte block of
/// SHA-1 and SHA-256 are used as they are; a longer one (an ICE password may have 256 characters, RFC 8445 §5.3)
/// HMAC replaces by its digest under *its own* hash, so both digests are kept.
#[derive(Clone, PartialEq, Eq)]
pub struct IntegrityKey {
    repr: KeyRepr,
}

#[derive(Clone, PartialEq, Eq)]
enum KeyRepr {
    Block { bytes: [u8; HMAC_BLOCK], len: u8 },
    Hashed { sha1: [u8; 20], sha256: [u8; 32] },
}

/// The block size of SHA-1 and SHA-256: HMAC hashes longer keys first.
const HMAC_BLOCK: usize = 64;

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl IntegrityKey {
    /// A key of any length used as is (a short-term password, or a derived long-term key).
    pub fn from_bytes(key: &[u8]) -> Self {
        let mut bytes = [0u8; HMAC_BLOCK];
        let repr = match bytes.get_mut(..key.len()) {
            Some(prefix) => {
                prefix.copy_from_slice(key);
                KeyRepr::Block {
                    bytes,
                    len: key.len() as u8,
                }
            }
            None => KeyRepr::Hashed {
                sha1: Sha1::digest(key).into(),
                sha256: Sha256::digest(key).into(),
            },
        };
        Self { repr }
    }

    /// The key bytes; for a key longer than 64 bytes, which HMAC-SHA256 replaces by its SHA-256 digest, that digest.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            KeyRepr::Block { bytes, len } => bytes.get(..*len as usize).unwrap_or_default(),
            KeyRepr::Hashed { sha256, .. } => sha256,
        }
    }

    pub(crate) fn hmac_sha1(&self) -> Hmac<Sha1> {
        let key: &[u8] = match &self.repr {
            KeyRepr::Block { .. } => self.as_bytes(),
            KeyRepr::Hashed { sha1, .. } => sha1,
        };
        // HMAC accepts keys of any length, so this cannot fail.
        Hmac::<Sha1>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_any_length_give_the_hmac_of_the_key_itself() {
        // Keys of 33-64 bytes used to be replaced by their SHA-256 digest, so a short-term password longer than 32
        // bytes produced MACs no other implementation accepts (found by the differential test against stun-types).
        for len in [0, 1, 22, 32, 33, 63, 64, 65, 100, 256] {
            let password: Vec<u8> = (0..len).map(|i| b'!' + (i % 90) as u8).collect();
            let key = IntegrityKey::from_bytes(&password);
            let data = b"a STUN message";

            let mut ours = key.hmac_sha1();
            ours.update(data);
            let mut reference = Hmac::<Sha1>::new_from_slice(&password).unwrap();
            reference.update(data);
            assert_eq!(
                ours.finalize().into_bytes(),
                reference.finalize().into_bytes(),
                "SHA-1, {len} bytes"
            );

            let mut ours = key.hmac_sha256();
            ours.update(data);
            let mut reference = Hmac::<Sha256>::new_from_slice(&password).unwrap();
            reference.update(data);
            assert_eq!(
                ours.finalize().into_bytes(),
                reference.finalize().into_bytes(),
                "SHA-256, {len} bytes"
            );
        }
    }
}
