//! STUN: a Binding over UDP to every `stun:` URL (or the `turn:` UDP ones when there is none: a TURN server answers
//! Binding too) — the mapped address, the RTT, and whether the server announces an RFC 5780 OTHER-ADDRESS.

use std::sync::Arc;

use stun::attr;

use super::net::{bind_any, resolve_one, timed};
use super::Settings;
use crate::client::binding_from;
use crate::error::CheckError;
use crate::facts::{StunBinding, StunFact};
use crate::ice::{IceConfig, IceUrl, Transport};
use crate::progress::Progress;

/// The URLs to send a Binding to over UDP.
pub fn urls(config: &IceConfig) -> Vec<IceUrl> {
    let stun: Vec<IceUrl> = config
        .stun
        .iter()
        .filter(|u| u.transport == Transport::Udp)
        .cloned()
        .collect();
    if !stun.is_empty() {
        return stun;
    }
    let mut from_turn: Vec<IceUrl> = config
        .turn
        .iter()
        .filter(|u| u.transport == Transport::Udp)
        .map(|u| IceUrl {
            turn: false,
            ..u.clone()
        })
        .collect();
    from_turn.dedup();
    from_turn
}

pub async fn check(s: Arc<Settings>, url: IceUrl, progress: Arc<Progress>) -> StunFact {
    let line = progress.start(&format!("STUN {}", url.label()));
    let mut server = None;
    let binding = timed(s.timeout, async {
        let addr = resolve_one(&url.host, url.port, s.timeout).await?;
        server = Some(addr);
        let sock = bind_any(addr)?;
        let local = sock.local_addr()?;
        let answer = binding_from(&sock, addr, None, s.rto, s.timeout).await?;
        let r = &answer.response;
        // An error answer is the server's refusal, named as such (it read as a success without an address).
        if let Some(message) = r.message().filter(|m| m.class() == stun::Class::Error) {
            let (code, reason) = match message.decode(attr::ERROR_CODE) {
                Some(Ok(stun::Attribute::ErrorCode(e))) => (e.code, crate::terminal::line(e.reason, 120)),
                _ => (0, "no ERROR-CODE".to_owned()),
            };
            return Err(CheckError::Stun { code, reason });
        }
        let mapped = r
            .address(attr::XOR_MAPPED_ADDRESS)
            .or_else(|| r.address(attr::MAPPED_ADDRESS))
            .ok_or_else(|| CheckError::Protocol("Binding success without XOR-MAPPED-ADDRESS".into()))?;
        Ok(StunBinding {
            local,
            mapped,
            rtt: answer.rtt,
            other_address: r.address(attr::OTHER_ADDRESS),
        })
    })
    .await;
    let detail = match &binding.result {
        Ok(b) => format!("you are {}, RTT {:.1} ms", b.mapped, b.rtt.as_secs_f64() * 1e3),
        Err(e) => e.to_string(),
    };
    progress.finish(line, binding.ok(), binding.took, &detail);
    StunFact { url, server, binding }
}
