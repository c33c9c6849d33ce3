//! An HTTP proxy that tunnels with CONNECT (RFC 9110 §9.3.6): on an office network that lets nothing out but
//! through one, a browser reaches the page, the signaling WebSocket and TURN over TCP/TLS through it, and so must
//! the doctor, or it reports "the server is unreachable" where calls work. Every TCP connection of the doctor goes
//! through the proxy when one applies to its host (`--proxy`, else `HTTPS_PROXY` / `ALL_PROXY`, minus `NO_PROXY`);
//! UDP cannot, as for the browser.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::error::CheckError;

/// The longest proxy answer head read before giving up on it.
const MAX_HEAD: usize = 16 * 1024;

/// An `http://[user:password@]host:port` proxy, and the hosts it is not used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `Proxy-Authorization` (Basic) when the URL carried credentials.
    authorization: Option<String>,
    /// `NO_PROXY`: host names (with a leading `.`, `*.` or none: that domain and its subdomains), addresses, or `*`.
    bypass: Vec<String>,
}

impl Proxy {
    /// Parses `http://[user:password@]host[:port]` (port 80 by default; `host:port` alone is taken as http).
    pub fn parse(url: &str) -> Result<Proxy, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{scheme}:// proxies are not supported: only an HTTP proxy that tunnels with CONNECT"
                ))
            }
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("an IPv6 address needs its closing ]")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port {p}"))?,
                None if after.is_empty() => 80,
                None => return Err(format!("unexpected {after} after the address")),
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| format!("bad port {p}"))?),
                None => (hostport.to_owned(), 80),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err("expected http://HOST:PORT".to_owned());
        }
        let authorization = userinfo.map(|u| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(percent_decode(u))
            )
        });
        Ok(Proxy {
            host,
            port,
            authorization,
            bypass: Vec::new(),
        })
    }

    /// The proxy the environment names for HTTPS (`HTTPS_PROXY`, `https_proxy`, then `ALL_PROXY`, `all_proxy`), with
    /// `NO_PROXY` / `no_proxy`: what curl and most tools read.
    pub fn from_env() -> Option<Result<Proxy, String>> {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let url = var(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])?;
        let no_proxy = var(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
        Some(Proxy::parse(url.trim()).map(|p| p.bypassing(&no_proxy)))
    }

    /// This proxy, not used for the hosts of a `NO_PROXY` list (comma-separated).
    pub fn bypassing(mut self, no_proxy: &str) -> Proxy {
        self.bypass = no_proxy
            .split(',')
            .map(|h| {
                h.trim()
                    .trim_start_matches("*.")
                    .trim_start_matches('.')
                    .to_ascii_lowercase()
            })
            .filter(|h| !h.is_empty())
            .collect();
        self
    }

    /// Whether connections to `host` go through this proxy. As curl reads `NO_PROXY`: nothing is exempt unless
    /// listed (Chromium exempts loopback by itself; list `localhost,127.0.0.1` for the same).
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        !self.bypass.iter().any(|b| {
            b == "*" || *b == host || (host.ends_with(b.as_str()) && host[..host.len() - b.len()].ends_with('.'))
        })
    }

    /// `http://host:port`, without the credentials: for the report.
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    /// A TCP connection to `host:port` through the proxy: connected to the proxy, `CONNECT` sent, its `2xx` read;
    /// each step within `limit`. A refusal is the proxy's (`CheckError::Proxy`), with its status line.
    pub async fn tunnel(&self, host: &str, port: u16, limit: Duration) -> Result<TcpStream, CheckError> {
        let mut tcp = timeout(limit, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| CheckError::Proxy(format!("the HTTP proxy {} did not answer", self.label())))?
            .map_err(|e| CheckError::Proxy(format!("the HTTP proxy {} cannot be reached: {e}", self.label())))?;
        let _ = tcp.set_nodelay(true);
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request =
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: traverse-doctor\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        let mut head = Vec::new();
        let exchange = async {
            tcp.write_all(request.as_bytes()).await?;
            // Byte by byte up to the blank line: what follows it is the tunnel's, not the proxy's.
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < MAX_HEAD {
                if tcp.read(&mut byte).await? == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            Ok::<_, std::io::Error>(())
        };
        timeout(limit, exchange)
            .await
            .map_err(|_| CheckError::Proxy(format!("the HTTP proxy {} did not answer CONNECT", self.label())))?
            .map_err(|e| CheckError::Proxy(format!("the HTTP proxy {} closed: {e}", self.label())))?;
        let line = String::from_utf8_lossy(&head);
        let status_line = line.lines().next().unwrap_or_default().trim().to_owned();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(200..=299) if head.ends_with(b"\r\n\r\n") => Ok(tcp),
            Some(_) => Err(CheckError::Proxy(format!(
                "the HTTP proxy {} refused the tunnel to {authority}: {}",
                self.label(),
                status_line.split_once(' ').map_or(status_line.as_str(), |(_, s)| s)
            ))),
            None => Err(CheckError::Proxy(format!(
                "the HTTP proxy {} answered CONNECT with something else than HTTP",
                self.label()
            ))),
        }
    }
}

/// `url` with its user information replaced by `***`, for messages: a password is never echoed.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let shown = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_owned(),
    };
    if scheme.is_empty() {
        shown
    } else {
        format!("{scheme}://{shown}")
    }
}

/// `%XX` in a URL's user information (a password with `@` or `:` in it is written `%40`, `%3A`).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn parses_what_the_environment_holds() {
        let p = Proxy::parse("http://proxy.example:3128").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization.is_none()),
            ("proxy.example", 3128, true)
        );
        assert_eq!(Proxy::parse("proxy.example:8080").unwrap().port, 8080);
        assert_eq!(Proxy::parse("http://proxy.example/").unwrap().port, 80);
        let v6 = Proxy::parse("http://[2001:db8::1]:3128").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 3128));
        assert_eq!(v6.label(), "http://[2001:db8::1]:3128");
        // user:p@ss → dXNlcjpwQHNz
        let auth = Proxy::parse("http://user:p%40ss@proxy.example:3128").unwrap();
        assert_eq!(auth.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
        assert_eq!(
            auth.label(),
            "http://proxy.example:3128",
            "no credentials in the report"
        );
        assert!(Proxy::parse("socks5://proxy.example:1080")
            .unwrap_err()
            .contains("not supported"));
        assert!(Proxy::parse("http://proxy.example:port").is_err());
        assert_eq!(
            redacted("http://user:secret@proxy.example:x"),
            "http://***@proxy.example:x"
        );
        assert_eq!(redacted("proxy.example:3128"), "proxy.example:3128");
    }

    #[test]
    fn no_proxy_names_domains_addresses_or_everything() {
        let p = Proxy::parse("http://proxy:3128")
            .unwrap()
            .bypassing(" .corp.example, 192.0.2.7,localhost,*.lab.example");
        assert!(!p.applies_to("turn.lab.example"), "*.domain as .domain");
        assert!(!p.applies_to("corp.example"));
        assert!(!p.applies_to("turn.corp.example"));
        assert!(p.applies_to("notcorp.example"), "a suffix is a domain, not a string");
        assert!(!p.applies_to("192.0.2.7"));
        assert!(p.applies_to("203.0.113.10"));
        assert!(!Proxy::parse("http://proxy:3128")
            .unwrap()
            .bypassing("*")
            .applies_to("any.example"));
    }

    /// A proxy on loopback that answers CONNECT with `answer` and then echoes the tunnel; the request it got.
    async fn one_proxy(answer: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tcp = tokio::io::BufReader::new(tcp);
            let mut request = String::new();
            loop {
                let mut line = String::new();
                tcp.read_line(&mut line).await.unwrap();
                request.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            tcp.get_mut().write_all(answer.as_bytes()).await.unwrap();
            let mut buf = [0u8; 5];
            if tcp.read_exact(&mut buf).await.is_ok() {
                tcp.get_mut().write_all(&buf).await.unwrap();
            }
            request
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_once_the_proxy_said_200() {
        let (port, task) = one_proxy("HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n").await;
        let proxy = Proxy::parse(&format!("http://u:pw@127.0.0.1:{port}")).unwrap();
        let mut tcp = proxy.tunnel("203.0.113.10", 443, Duration::from_secs(5)).await.unwrap();
        tcp.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        let request = task.await.unwrap();
        assert!(
            request.starts_with("CONNECT 203.0.113.10:443 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Proxy-Authorization: Basic dTpwdw==\r\n"), "{request}");
    }

    #[tokio::test]
    async fn a_refused_tunnel_is_the_proxy_s_refusal_with_its_status() {
        let (port, _task) = one_proxy("HTTP/1.1 403 Access violation\r\nContent-Length: 0\r\n\r\n").await;
        let proxy = Proxy::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = proxy
            .tunnel("2001:db8::1", 5349, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "proxy");
        assert_eq!(
            err.to_string(),
            format!(
                "the HTTP proxy http://127.0.0.1:{port} refused the tunnel to [2001:db8::1]:5349: 403 Access violation"
            )
        );
    }
}
