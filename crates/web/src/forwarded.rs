//! The client behind a reverse proxy: a request that arrives from a trusted proxy (`web.trusted_proxies`) is the
//! client's that the proxy names — `X-Forwarded-For` (nginx, HAProxy, cloud load balancers) or RFC 7239 `Forwarded`
//! — so that per-source limits charge each user, not the proxy. A header from anyone else is ignored: it is whatever
//! the sender wants it to be.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use source::IpNet;

/// The client's address for a request that came from `remote`: `remote` itself unless it is a trusted proxy that
/// names one. The chain is read from the right (the entry the nearest proxy added first), skipping the trusted
/// proxies in it; the first other address is the client (one a client wrote itself sits further left and is not
/// reached). An entry that is not an address stops the walk at `remote`, the last address known to be true.
pub fn client_address(remote: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(remote.ip()) {
        return remote;
    }
    let mut chain: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    if chain.is_empty() {
        chain = headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(forwarded_for)
            .collect();
    }
    let mut client = remote.ip();
    for entry in chain.iter().rev() {
        let Some(ip) = parse_node(entry) else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    SocketAddr::new(client, remote.port())
}

/// The `for=` parameter of one `Forwarded` element (`for=192.0.2.60;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    })
}

/// An address as proxies write it: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, quoted or
/// not (RFC 7239 quotes IPv6 and ports).
fn parse_node(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry.strip_prefix('[')?.split(']').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_anyone_else_is_taken_as_is() {
        let proxy: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let ip = |h: &HeaderMap, from: SocketAddr| client_address(from, h, &trusted()).ip().to_string();
        let xff = headers(&[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(ip(&xff, proxy), "198.51.100.9");
        // A client that writes the header itself, direct: ignored.
        assert_eq!(ip(&xff, "203.0.113.5:1".parse().unwrap()), "203.0.113.5");
        // A client's own entry sits left of what the proxy added: the rightmost untrusted one is the client.
        let spoofed = headers(&[("x-forwarded-for", "192.0.2.66, 198.51.100.9")]);
        assert_eq!(ip(&spoofed, proxy), "198.51.100.9");
        // Two proxies of ours in a row, and two header lines.
        let chain = headers(&[
            ("x-forwarded-for", "198.51.100.9, 10.0.0.7"),
            ("x-forwarded-for", "10.0.0.8"),
        ]);
        assert_eq!(ip(&chain, proxy), "198.51.100.9");
        // Ports and brackets as some proxies write them; RFC 7239 with quotes.
        assert_eq!(
            ip(&headers(&[("x-forwarded-for", "198.51.100.9:5555")]), proxy),
            "198.51.100.9"
        );
        let rfc = headers(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8::1]:4711";by=10.0.0.2"#,
        )]);
        assert_eq!(ip(&rfc, proxy), "2001:db8::1");
        // Garbage stops the walk at the proxy; no header leaves the proxy's own address.
        assert_eq!(ip(&headers(&[("x-forwarded-for", "unknown")]), proxy), "10.0.0.2");
        assert_eq!(ip(&HeaderMap::new(), proxy), "10.0.0.2");
        // No trusted proxies configured: headers mean nothing.
        assert_eq!(client_address(proxy, &xff, &[]).ip().to_string(), "10.0.0.2");
    }
}
