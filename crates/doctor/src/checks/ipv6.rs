//! IPv6: whether this host has a global IPv6 address (2000::/3), whether the server's name has an IPv6 address, and
//! if so a STUN Binding over IPv6.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use stun::attr;
use tokio::time::Instant;

use super::net::{bind_any, local_ips, resolve, timed};
use super::Settings;
use crate::client::binding_from;
use crate::error::CheckError;
use crate::facts::Ipv6Fact;
use crate::progress::Progress;

pub(crate) fn is_global_v6(ip: &IpAddr) -> bool {
    let IpAddr::V6(v6) = ip else { return false };
    let first = v6.segments().first().copied().unwrap_or(0);
    // 2000::/3 is the global unicast range.
    (first & 0xe000) == 0x2000
}

pub async fn check(s: Arc<Settings>, stun_port: Option<u16>, progress: Arc<Progress>) -> Ipv6Fact {
    let line = progress.start("IPv6");
    let start = Instant::now();
    let addresses: Vec<IpAddr> = local_ips().into_iter().filter(is_global_v6).collect();
    let server_v6 = resolve(&s.server.host, stun_port.unwrap_or(3478), s.timeout)
        .await
        .map(|list| list.into_iter().find(SocketAddr::is_ipv6))
        .unwrap_or(None);
    let mut fact = Ipv6Fact {
        addresses,
        server_has_ipv6: server_v6.is_some(),
        stun: None,
    };
    if let (Some(server), Some(_)) = (server_v6, stun_port) {
        let binding = timed(s.timeout, async {
            let sock = bind_any(server)?;
            let answer = binding_from(&sock, server, None, s.rto, s.timeout).await?;
            answer
                .response
                .address(attr::XOR_MAPPED_ADDRESS)
                .ok_or_else(|| CheckError::Protocol("no XOR-MAPPED-ADDRESS".into()))
        })
        .await;
        fact.stun = Some(binding);
    }
    let detail = format!(
        "host {} global IPv6, server {}",
        if fact.addresses.is_empty() { "has no" } else { "has" },
        if fact.server_has_ipv6 {
            "has IPv6"
        } else {
            "has no IPv6"
        }
    );
    progress.finish(line, true, start.elapsed(), &detail);
    fact
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_v6() {
        assert!(is_global_v6(&"2001:db8::1".parse().unwrap()));
        assert!(!is_global_v6(&"fe80::1".parse().unwrap()));
        assert!(!is_global_v6(&"fd00::1".parse().unwrap()));
        assert!(!is_global_v6(&"127.0.0.1".parse().unwrap()));
    }
}
