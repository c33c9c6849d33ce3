//! The ICE servers: `GET /api/ice-servers` on the first signaling endpoint that worked (the given one first), with
//! the `--token`; `--stun`/`--turn` and `--turn-user`/`--turn-password` add to or replace what the server gives.

use super::net::{tcp_target, timed};
use super::turn::Credential;
use super::Settings;
use crate::error::CheckError;
use crate::facts::{IceServersFact, IceSource, SignalingFact, Timed};
use crate::http;
use crate::ice::IceConfig;
use crate::progress::Progress;

/// What the checks after this one test.
#[derive(Debug, Clone)]
pub struct IceServers {
    pub fact: IceServersFact,
    /// The server's and the flags' URLs together.
    pub config: IceConfig,
    pub credential: Option<Credential>,
}

pub async fn check(s: &Settings, signaling: &[SignalingFact], progress: &Progress) -> IceServers {
    let mut config = IceConfig::default();
    let mut fetch = None;
    let mut source = IceSource::None;
    // The given address first, then a probe over TLS before one over plain HTTP.
    let endpoint = signaling.iter().filter(|c| c.ok()).min_by_key(|c| (!c.primary, !c.tls));
    if let Some(endpoint) = endpoint {
        let fetched = fetch_from(s, endpoint, progress).await;
        fetch = Some(match fetched.result {
            Ok(c) => {
                config = c;
                source = IceSource::Server;
                Timed::new(Ok(()), fetched.took)
            }
            Err(e) => Timed::new(Err(e), fetched.took),
        });
    }
    if !s.stun.is_empty() || !s.turn.is_empty() {
        source = if source == IceSource::Server {
            IceSource::ServerAndFlags
        } else {
            IceSource::Flags
        };
    }
    for u in s.stun.iter().chain(&s.turn) {
        config.add(u.clone());
    }
    let credential = Credential::of(s, &config);
    IceServers {
        fact: IceServersFact {
            source,
            fetch,
            stun: config.stun.clone(),
            turn: config.turn.clone(),
            has_credential: credential.is_some(),
            unparsed: config
                .unparsed
                .iter()
                .cloned()
                .chain((config.unparsed_more > 0).then(|| format!("… and {} more", config.unparsed_more)))
                .collect(),
            not_checked: config.dropped,
        },
        config,
        credential,
    }
}

async fn fetch_from(s: &Settings, endpoint: &SignalingFact, progress: &Progress) -> Timed<IceConfig> {
    let line = progress.start("ICE servers from /api/ice-servers");
    // Name look-up, TCP, TLS and the GET are each bounded by `s.timeout`; the whole by three of them (as signaling's
    // checks): at one, four round trips over a satellite link (2.4 s of 3) left no room for a lost SYN or a TLS 1.2
    // terminator, and without the ICE servers no STUN or TURN check runs at all. Through a proxy its CONNECT takes
    // the look-up's place.
    let fetched = timed(s.timeout.saturating_mul(3), async {
        let target = tcp_target(s, &s.server.host, endpoint.port, endpoint.tls).await?;
        let mut headers = Vec::new();
        // The token goes over TLS, or over plain HTTP only when the address was given as `http://`: not to a
        // plain endpoint the doctor tried because HTTPS failed (an untrusted certificate is what someone in the
        // middle would present), whether a probe or the other half of an address given without a scheme.
        let plain_asked = s.server.scheme == Some(crate::ice::Scheme::Http);
        match &s.token {
            Some(token) if endpoint.tls || plain_asked => headers.push(("Authorization", format!("Bearer {token}"))),
            _ => {}
        }
        let reply = http::get(&target, "/api/ice-servers", &headers, s.timeout).await?;
        if reply.status != 200 {
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            let message = match body.get("code").and_then(|c| c.as_str()) {
                Some(code) => crate::terminal::line(code, 120),
                None => crate::terminal::line(&String::from_utf8_lossy(&reply.body), 120),
            };
            return Err(CheckError::Http {
                status: reply.status,
                message,
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&reply.body)
            .map_err(|e| CheckError::Protocol(format!("/api/ice-servers is not JSON: {e}")))?;
        Ok(IceConfig::from_json(&v))
    })
    .await;
    let detail = match &fetched.result {
        Ok(c) => format!("{} STUN, {} TURN", c.stun.len(), c.turn.len()),
        Err(e) => e.to_string(),
    };
    progress.finish(line, fetched.ok(), fetched.took, &detail);
    fetched
}
