//! The hub's own identifiers: peer ids (public) and session secrets (a bearer credential for `resume`).
//!
//! Both are made by the hub from its RNG and hold only `[a-z0-9_]`, so the frame encoder writes them into a JSON
//! string without escaping; the types are the proof. A client-supplied string never becomes a [`PeerId`]: it is only
//! used to look one up (`Borrow<str>`). A claimed session secret becomes a [`SessionSecret`] only once its shape is
//! checked, and secrets compare in constant time.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rand::RngCore;
use subtle::ConstantTimeEq;

/// A peer's id in its room, `p_` and 16 hex digits; shown to the other peers and in TURN usernames.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerId(Arc<str>);

impl PeerId {
    /// 64 random bits: unguessable enough that a peer cannot aim signals at rooms it is not in (ids are checked
    /// against the sender's room anyway).
    pub(crate) fn generate(rng: &mut impl RngCore) -> Self {
        let id = random_hex("p_", rng, &mut [0; 8]);
        debug_assert!(is_json_safe(&id));
        Self(id.into())
    }

    /// An id this hub (or another node's) made, read back from shared storage; anything else is not one.
    pub fn parse(id: &str) -> Option<Self> {
        let hex = id.strip_prefix("p_")?;
        let well_formed = hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| Self(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Peer ids are looked up by the `to` a client names.
impl Borrow<str> for PeerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

/// The secret that lets a new socket `resume` a session: `s_` and 32 hex digits (128 random bits). Known to its
/// client and the hub only; compared in constant time; `Debug` does not show it. Shared (the session and the
/// hub's index by secret hold one allocation).
#[derive(Clone)]
pub struct SessionSecret(Arc<str>);

const SECRET_PREFIX: &str = "s_";
const SECRET_BYTES: usize = 16;

impl SessionSecret {
    pub(crate) fn generate(rng: &mut impl RngCore) -> Self {
        let secret = random_hex(SECRET_PREFIX, rng, &mut [0; SECRET_BYTES]);
        debug_assert!(is_json_safe(&secret));
        Self(secret.into())
    }

    /// A client's claim, if it has the shape of a secret the hub makes (anything else cannot name a session).
    pub fn parse(claim: &str) -> Option<Self> {
        let hex = claim.strip_prefix(SECRET_PREFIX)?;
        let well_formed = hex.len() == 2 * SECRET_BYTES && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| Self(claim.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for SessionSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for SessionSecret {}

/// Hashes what `eq` compares. The hash of a secret is keyed by the map's random state, so a lookup reveals nothing
/// an attacker can aim at; the final comparison is the constant-time `eq`.
impl Hash for SessionSecret {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(…)")
    }
}

/// `prefix` and `raw.len()` random bytes in lowercase hex. The only characters are `prefix`'s and `[0-9a-f]`.
fn random_hex(prefix: &'static str, rng: &mut impl RngCore, raw: &mut [u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    rng.fill_bytes(raw);
    let mut id = String::with_capacity(prefix.len() + 2 * raw.len());
    id.push_str(prefix);
    for b in raw.iter() {
        for nibble in [b >> 4, b & 0xf] {
            id.push(char::from(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0')));
        }
    }
    id
}

/// The characters the frame encoder may write unescaped for an id: `[A-Za-z0-9_]` (no quote, backslash or control
/// character). Checked on every id made in debug builds and by the tests.
fn is_json_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_ids_have_their_shape_and_only_safe_characters() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let peer = PeerId::generate(&mut rng);
            assert!(peer.as_str().starts_with("p_") && peer.as_str().len() == 18, "{peer}");
            assert!(is_json_safe(peer.as_str()));
            let secret = SessionSecret::generate(&mut rng);
            assert!(is_json_safe(secret.as_str()));
            assert_eq!(SessionSecret::parse(secret.as_str()), Some(secret));
        }
    }

    #[test]
    fn only_a_well_formed_claim_is_a_secret_and_debug_hides_it() {
        let ok = format!("s_{}", "0a".repeat(16));
        assert!(SessionSecret::parse(&ok).is_some());
        for bad in [
            "",
            "s_",
            "p_0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
            &format!("s_{}", "0A".repeat(16)),
            &format!("s_{}\"", "0a".repeat(16)),
            &format!("s_{}", "0a".repeat(17)),
            &format!("s_{}é", "0a".repeat(15)),
        ] {
            assert_eq!(SessionSecret::parse(bad), None, "{bad:?}");
        }
        let secret = SessionSecret::parse(&ok);
        assert!(!format!("{secret:?}").contains("0a"));
        assert_ne!(SessionSecret::parse(&format!("s_{}", "0b".repeat(16))), secret);
    }

    /// The hex matches what `format!("{b:02x}")` gave before: seeded ids stay the same.
    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut raw = [0u8; 8];
        let mut copy = rng.clone();
        copy.fill_bytes(&mut raw);
        let want: String = std::iter::once("p_".to_owned())
            .chain(raw.iter().map(|b| format!("{b:02x}")))
            .collect();
        assert_eq!(PeerId::generate(&mut rng).as_str(), want);
    }
}
