//! Join tokens: JWTs signed with HS256.
//!
//! Our own ~60 lines instead of the `jsonwebtoken` crate: we accept exactly one algorithm, and that crate now
//! needs a whole crypto backend (RSA and EC stacks) for it. HMAC-SHA256 comes from `hmac`/`sha2`, which the
//! workspace builds anyway; the tag is compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The room it admits; `*` for any room.
    pub room: String,
    /// The identity, shown to the other peers as `meta.identity`.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Capabilities passed through to the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("the token's algorithm is not HS256")]
    Algorithm,
    #[error("the token's signature does not match the server's secret")]
    Signature,
    #[error("the token's claims are not readable: {0}")]
    Claims(String),
    #[error("the token expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Signs `claims` with `secret`.
pub fn mint_token(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{body}");
    let tag = URL_SAFE_NO_PAD.encode(mac(secret, signing_input.as_bytes()).finalize().into_bytes());
    format!("{signing_input}.{tag}")
}

/// Checks the signature, then the expiry against `unix_now`. The room is the caller's to check.
pub fn verify_token(secret: &[u8], token: &str, unix_now: u64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(body), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed);
    let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signing_input_len = token.len() - tag.len() - 1;
    let signing_input = token.get(..signing_input_len).ok_or(TokenError::Malformed)?;
    mac(secret, signing_input.as_bytes())
        .verify_slice(&decode(tag)?)
        .map_err(|_| TokenError::Signature)?;
    let claims: Claims = serde_json::from_slice(&decode(body)?).map_err(|e| TokenError::Claims(e.to_string()))?;
    if claims.exp <= unix_now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

fn mac(secret: &[u8], input: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
    mac.update(input);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            room: "lobby".into(),
            sub: "ann".into(),
            exp,
            caps: vec!["publish".into()],
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let t = mint_token(b"secret", &claims(2000));
        assert_eq!(verify_token(b"secret", &t, 1000), Ok(claims(2000)));
        assert_eq!(verify_token(b"other", &t, 1000), Err(TokenError::Signature));
        assert_eq!(verify_token(b"secret", &t, 2000), Err(TokenError::Expired));
        assert_eq!(verify_token(b"secret", "a.b", 0), Err(TokenError::Malformed));
        assert_eq!(verify_token(b"secret", "a.b.c.d", 0), Err(TokenError::Malformed));
        let mut forged: Vec<&str> = t.split('.').collect();
        let body = URL_SAFE_NO_PAD.encode(br#"{"room":"*","sub":"x","exp":9999999999}"#);
        forged[1] = &body;
        assert_eq!(
            verify_token(b"secret", &forged.join("."), 0),
            Err(TokenError::Signature)
        );
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), body);
        assert_eq!(verify_token(b"secret", &none_alg, 0), Err(TokenError::Algorithm));
    }

    /// A token signed by another implementation (Python's `hmac` module) verifies.
    #[test]
    fn verifies_a_token_from_another_signer() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb29tIjoiciIsInN1YiI6InMiLCJleHAiOjQxMDI0NDQ4MDB9.\
                     qP8uawknkIjFi27VbqnUx4rSSkT2GiUo9lw6wUX-9yk";
        let claims = verify_token(b"k", token, 0).unwrap();
        assert_eq!(
            (claims.room.as_str(), claims.sub.as_str(), claims.exp),
            ("r", "s", 4102444800)
        );
        assert_eq!(verify_token(b"K", token, 0), Err(TokenError::Signature));
    }
}
