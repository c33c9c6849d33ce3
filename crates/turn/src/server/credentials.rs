//! Long-term credentials (RFC 8489 §9.2): checking a request, and signing (or challenging) the answer.

use super::*;

impl<R: RngCore> Server<R> {
    /// RFC 8489 §9.2.4, in its order: integrity present, attributes present, algorithms not bid down, user known,
    /// integrity correct, nonce fresh. `Err(None)`: no integrity at all, the expected first request of a client
    /// (challenged with 401, not a failure); `Err(Some(reason))`: credentials refused.
    pub(super) fn authenticate(
        &self,
        now: Instant,
        five_tuple: FiveTuple,
        msg: &Message<'_>,
        req: &Request<'_>,
    ) -> Result<(String, ResponseAuth), Option<AuthFailure>> {
        if !msg.has_message_integrity() && !msg.has_message_integrity_sha256() {
            return Err(None);
        }
        let (Some(realm), Some(nonce)) = (req.realm, req.nonce) else {
            return Err(Some(AuthFailure::BadRequest));
        };
        let username = match (req.username, req.userhash) {
            (Some(name), _) => name,
            (None, Some(hash)) => self
                .auth
                .username_for_hash(hash)
                .ok_or(Some(AuthFailure::UnknownUser))?,
            (None, None) => return Err(Some(AuthFailure::BadRequest)),
        };
        // RFC 8489 §9.2.4: without either attribute the key is MD5's, whatever the HMAC. A request signed with
        // MESSAGE-INTEGRITY-SHA256 alone may also carry a SHA-256 key (what this server took before): tried second.
        let mut fallback = None;
        let algorithm = match (req.password_algorithm, req.password_algorithms) {
            (None, None) => {
                if msg.has_message_integrity_sha256() && !msg.has_message_integrity() {
                    fallback = Some(PASSWORD_ALGORITHM_SHA256);
                }
                PASSWORD_ALGORITHM_MD5
            }
            (Some(alg), Some(list)) => {
                // Bid-down protection: the list must be the one we sent.
                let known = alg == PASSWORD_ALGORITHM_MD5 || alg == PASSWORD_ALGORITHM_SHA256;
                if list != PASSWORD_ALGORITHMS_VALUE || !known {
                    return Err(Some(AuthFailure::BadRequest));
                }
                alg
            }
            _ => return Err(Some(AuthFailure::BadRequest)),
        };
        if realm != self.auth.realm() {
            return Err(Some(AuthFailure::WrongRealm));
        }
        // RFC 8656 leaves credential expiry to the server: an allocation outlives its credential (see `Expiry`).
        let held = msg.method() != Method::ALLOCATE
            && self
                .by_five_tuple
                .get(&five_tuple)
                .and_then(|id| self.slots.get(id.index as usize)?.as_ref())
                .is_some_and(|a| a.username == username && a.expires > now);
        let expiry_rule = if held { Expiry::HeldAllocation } else { Expiry::Enforce };
        let keys_of = |algorithm| match self.auth.keys(username, algorithm, self.unix_now(now), expiry_rule) {
            Ok(keys) => Ok(keys),
            Err(CredentialError::UnknownUser) => Err(Some(AuthFailure::UnknownUser)),
            Err(CredentialError::Expired | CredentialError::TooLong) => Err(Some(AuthFailure::Expired)),
        };
        let mut verified = keys_of(algorithm)?.into_iter().find(|k| msg.verify_integrity(k));
        if let (None, Some(second)) = (&verified, fallback) {
            verified = keys_of(second)?.into_iter().find(|k| msg.verify_integrity(k));
        }
        let Some(key) = verified else {
            return Err(Some(AuthFailure::BadIntegrity));
        };
        if self.auth.check_nonce(nonce, self.unix_now(now), five_tuple.client.ip()) == NonceState::Stale {
            return Err(Some(AuthFailure::StaleNonce));
        }
        let sha256 = msg.has_message_integrity_sha256();
        Ok((username.to_owned(), ResponseAuth { key, sha256 }))
    }

    /// RFC 8489 §7.3.1: 420 with UNKNOWN-ATTRIBUTES listing what we did not understand; signed with `auth` for an
    /// authenticated request.
    pub(super) fn reply_unknown(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        req: &Request<'_>,
        auth: Option<&ResponseAuth>,
    ) -> ClientAction {
        let mut list = [0u8; 16];
        let count = req.unknown_count.min(8);
        for (chunk, ty) in list.chunks_exact_mut(2).zip(req.unknown.iter().take(count)) {
            chunk.copy_from_slice(&ty.to_be_bytes());
        }
        let unknown = list.get(..count * 2).unwrap_or_default();
        self.write_error(
            out,
            msg.method(),
            msg.transaction_id(),
            reject(420, "Unknown Attribute"),
            auth,
            |w| w.add(&Attribute::UnknownAttributes(unknown)).map(|_| ()),
        )
        .map_or(ClientAction::Drop, ClientAction::Reply)
    }

    /// 401 or 438 with REALM, NONCE and PASSWORD-ALGORITHMS; 400 for a malformed credential.
    pub(super) fn write_challenge(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        five_tuple: FiveTuple,
        now: Instant,
        challenge: Challenge,
    ) -> Option<usize> {
        let r = match challenge {
            Challenge::BadRequest => return self.write_error(out, method, tid, BAD_REQUEST, None, |_| Ok(())),
            Challenge::Unauthorized => reject(401, "Unauthorized"),
            Challenge::StaleNonce => reject(438, "Stale Nonce"),
        };
        let nonce = self.auth.mint_nonce(self.unix_now(now), five_tuple.client.ip());
        let realm = self.auth.realm().to_owned();
        self.write_error(out, method, tid, r, None, |w| {
            w.add(&Attribute::Realm(&realm))?;
            w.add(&Attribute::Nonce(&nonce))?;
            w.add(&Attribute::PasswordAlgorithms(&PASSWORD_ALGORITHMS_VALUE))?;
            Ok(())
        })
    }

    pub(super) fn write_success(
        &self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        auth: &ResponseAuth,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
    ) -> Option<usize> {
        let mut w = MessageWriter::new(out, method, Class::Success, tid).ok()?;
        body(&mut w).ok()?;
        self.sign(w, Some(auth))
    }

    pub(super) fn write_error(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        r: Reject,
        auth: Option<&ResponseAuth>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), stun::EncodeError>,
    ) -> Option<usize> {
        self.stats.error_responses.add(r.code);
        let mut w = MessageWriter::new(out, method, Class::Error, tid).ok()?;
        w.error_code(r.code, r.reason).ok()?;
        body(&mut w).ok()?;
        self.sign(w, auth)
    }

    /// SOFTWARE and integrity go only on answers to authenticated requests: unauthenticated answers stay small.
    pub(super) fn sign(&self, mut w: MessageWriter<'_>, auth: Option<&ResponseAuth>) -> Option<usize> {
        if let Some(auth) = auth {
            if !self.config.software.is_empty() {
                w.add(&Attribute::Software(&self.config.software)).ok()?;
            }
            if auth.sha256 {
                w.message_integrity_sha256(&auth.key).ok()?;
            } else {
                w.message_integrity(&auth.key).ok()?;
            }
        }
        w.fingerprint().ok()?;
        Some(w.finish())
    }
}
