//! The addresses the checks talk to: the `<server>` argument, `stun:`/`turn:`/`turns:` URLs (RFC 7064/7065) and the
//! `{"iceServers": [...]}` answer of `/api/ice-servers`.

use serde::Serialize;

use crate::error::Error;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

/// The `<server>` argument: `http://HOST:PORT`, `https://HOST[:PORT]` or `HOST[:PORT]` (then HTTPS is tried first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub scheme: Option<Scheme>,
    /// Host without brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl ServerSpec {
    pub fn parse(s: &str) -> Result<ServerSpec, Error> {
        let bad = || Error::BadServer(s.to_owned());
        let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
            (Some(Scheme::Http), r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (Some(Scheme::Https), r)
        } else if s.contains("://") {
            return Err(bad());
        } else {
            (None, s)
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (host, port) = split_host_port(authority).ok_or_else(bad)?;
        Ok(ServerSpec { scheme, host, port })
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; a bare IPv6 address without brackets is taken whole.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    if s.matches(':').count() > 1 {
        return s.parse::<std::net::Ipv6Addr>().ok().map(|_| (s.to_owned(), None));
    }
    match s.split_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_owned(), Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((s.to_owned(), None)),
    }
}

/// An IP address or a DNS name (letters, digits, `-`, `_` and dots, at most 253): what a server lists is printed
/// and connected to, so nothing else is taken as a host.
fn is_host(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
}

/// Transport of a TURN URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// For people: `UDP`, `TCP`, `TLS`.
    pub fn word(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// One `stun:`/`turn:`/`turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IceUrl {
    pub turn: bool,
    pub transport: Transport,
    pub host: String,
    pub port: u16,
}

impl IceUrl {
    pub fn parse(url: &str) -> Option<IceUrl> {
        let (scheme, rest) = url.split_once(':')?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let requested = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("transport=")))
            .map(str::to_ascii_lowercase);
        let (turn, tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "stun" => (false, false, 3478),
            "stuns" => (false, true, 5349),
            "turn" => (true, false, 3478),
            "turns" => (true, true, 5349),
            _ => return None,
        };
        let (host, port) = split_host_port(authority)?;
        if !is_host(&host) {
            return None;
        }
        let transport = match (tls, requested.as_deref()) {
            (true, _) => Transport::Tls,
            (false, Some("tcp")) => Transport::Tcp,
            (false, Some("udp") | None) => Transport::Udp,
            (false, Some(_)) => return None,
        };
        Some(IceUrl {
            turn,
            transport,
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// The URL written back, as a label.
    pub fn label(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.turn, self.transport) {
            (false, Transport::Tls) => format!("stuns:{host}:{}", self.port),
            (false, _) => format!("stun:{host}:{}", self.port),
            (true, Transport::Udp) => format!("turn:{host}:{}?transport=udp", self.port),
            (true, Transport::Tcp) => format!("turn:{host}:{}?transport=tcp", self.port),
            (true, Transport::Tls) => format!("turns:{host}:{}?transport=tcp", self.port),
        }
    }
}

/// STUN URLs, and TURN URLs, the doctor checks at most: a server lists a few (its own and a cluster's nodes); a
/// list of thousands would start that many checks at once and probe addresses the server chose.
pub const MAX_URLS: usize = 16;

/// What `/api/ice-servers` (or the flags) gave: URLs and one TURN credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceConfig {
    pub stun: Vec<IceUrl>,
    pub turn: Vec<IceUrl>,
    pub username: Option<String>,
    pub credential: Option<String>,
    /// URLs that did not parse, reported as they were (the first [`MAX_URLS`], each cut to one short line).
    pub unparsed: Vec<String>,
    /// URLs that did not parse past those: counted.
    pub unparsed_more: usize,
    /// URLs past [`MAX_URLS`] of their kind: not checked, counted.
    pub dropped: usize,
}

impl IceConfig {
    /// Reads `{"iceServers":[{"urls": "..." | [...], "username", "credential"}]}` (or a bare array).
    pub fn from_json(v: &serde_json::Value) -> IceConfig {
        let mut out = IceConfig::default();
        let list = v.get("iceServers").unwrap_or(v);
        for server in list.as_array().into_iter().flatten() {
            let urls: Vec<&str> = match server.get("urls").or_else(|| server.get("url")) {
                Some(serde_json::Value::String(s)) => vec![s.as_str()],
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|u| u.as_str()).collect(),
                _ => Vec::new(),
            };
            for url in urls {
                match IceUrl::parse(url) {
                    Some(u) if u.turn => {
                        if out.username.is_none() {
                            out.username = server.get("username").and_then(|x| x.as_str()).map(str::to_owned);
                            out.credential = server
                                .get("credential")
                                .or_else(|| server.get("password"))
                                .and_then(|x| x.as_str())
                                .map(str::to_owned);
                        }
                        out.add(u);
                    }
                    Some(u) => out.add(u),
                    None if out.unparsed.len() < MAX_URLS => out.unparsed.push(crate::terminal::line(url, 120)),
                    None => out.unparsed_more += 1,
                }
            }
        }
        out
    }

    /// Adds a URL once, up to [`MAX_URLS`] of its kind (past it, counted in `dropped`).
    pub fn add(&mut self, url: IceUrl) {
        let list = if url.turn { &mut self.turn } else { &mut self.stun };
        if list.contains(&url) {
            return;
        }
        if list.len() < MAX_URLS {
            list.push(url);
        } else {
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_argument() {
        let table = [
            ("http://127.0.0.1:8080", Some(Scheme::Http), "127.0.0.1", Some(8080)),
            (
                "https://turn.example.com",
                Some(Scheme::Https),
                "turn.example.com",
                None,
            ),
            (
                "https://turn.example.com/ws?x",
                Some(Scheme::Https),
                "turn.example.com",
                None,
            ),
            ("turn.example.com:8443", None, "turn.example.com", Some(8443)),
            ("http://[::1]:80", Some(Scheme::Http), "::1", Some(80)),
            ("2001:db8::1", None, "2001:db8::1", None),
        ];
        for (s, scheme, host, port) in table {
            let spec = ServerSpec::parse(s).unwrap();
            assert_eq!(
                (spec.scheme, spec.host.as_str(), spec.port),
                (scheme, host, port),
                "{s}"
            );
        }
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://host:notaport",
            "http://[::1",
            "http://:80",
        ] {
            assert!(ServerSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ice_urls() {
        let u = IceUrl::parse("turn:127.0.0.1:3478?transport=tcp").unwrap();
        assert_eq!((u.turn, u.transport, u.port), (true, Transport::Tcp, 3478));
        let u = IceUrl::parse("turns:turn.example.com?transport=tcp").unwrap();
        assert_eq!((u.transport, u.port), (Transport::Tls, 5349));
        let u = IceUrl::parse("stun:[2001:db8::1]:3479").unwrap();
        assert_eq!((u.turn, u.host.as_str(), u.port), (false, "2001:db8::1", 3479));
        assert_eq!(u.label(), "stun:[2001:db8::1]:3479");
        assert_eq!(IceUrl::parse("turn:h:1?transport=sctp"), None);
        assert_eq!(IceUrl::parse("http://h"), None);
    }

    #[test]
    fn ice_servers_json() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"iceServers":[{"urls":["stun:h:3478"]},{"urls":["turn:h:3478?transport=udp","turns:h:443?transport=tcp","bogus"],
                "username":"1:u","credential":"pw"}],"ttl":60}"#,
        )
        .unwrap();
        let c = IceConfig::from_json(&v);
        assert_eq!(c.stun.len(), 1);
        assert_eq!(c.turn.len(), 2);
        assert_eq!(c.username.as_deref(), Some("1:u"));
        assert_eq!(c.credential.as_deref(), Some("pw"));
        assert_eq!(c.unparsed, vec!["bogus".to_owned()]);
    }
}
