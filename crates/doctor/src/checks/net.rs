//! What every check needs of the network: deadlines, name resolution, UDP sockets, and a TURN connection of each
//! transport.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

use super::Settings;
use crate::client::Conn;
use crate::error::CheckError;
use crate::facts::Timed;
use crate::http::{self, Target};
use crate::ice::{IceUrl, Transport};
use crate::tls::CertInfo;

/// Runs `f` under `limit`, with how long it took.
pub(crate) async fn timed<T>(limit: Duration, f: impl Future<Output = Result<T, CheckError>>) -> Timed<T> {
    let start = Instant::now();
    let result = match timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout(limit)),
    };
    Timed::new(result, start.elapsed())
}

/// Resolves `host:port`, IPv4 first.
pub async fn resolve(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, CheckError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = timeout(limit, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| CheckError::Dns(format!("{host} (timed out)")))?
        .map_err(|_| CheckError::Dns(host.to_owned()))?;
    let mut list: Vec<SocketAddr> = found.collect();
    list.sort_by_key(|a| a.is_ipv6());
    if list.is_empty() {
        return Err(CheckError::Dns(host.to_owned()));
    }
    Ok(list)
}

pub(crate) async fn resolve_one(host: &str, port: u16, limit: Duration) -> Result<SocketAddr, CheckError> {
    resolve(host, port, limit)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| CheckError::Dns(host.to_owned()))
}

/// Where a TCP (`tls`: TLS) connection to `host:port` goes. Through a proxy the proxy resolves the name (the tunnel
/// asks for it by name, as a browser's does), and a network whose only way out is its proxy often cannot resolve
/// outside names itself: no look-up here, only the port (and the address when `host` is one) matter. Else the name
/// is resolved.
pub(crate) async fn tcp_target(s: &Settings, host: &str, port: u16, tls: bool) -> Result<Target, CheckError> {
    let proxy = s.proxy_for(host);
    let addr = if proxy.is_some() {
        let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
        SocketAddr::new(literal.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)), port)
    } else {
        resolve_one(host, port, s.timeout).await?
    };
    Ok(Target {
        host: host.to_owned(),
        addr,
        tls,
        proxy,
    })
}

/// A UDP socket on the wildcard address of `for_addr`'s family.
pub(crate) fn bind_any(for_addr: SocketAddr) -> Result<UdpSocket, CheckError> {
    let any: SocketAddr = if for_addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = std::net::UdpSocket::bind(any)?;
    sock.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(sock)?)
}

/// This host's interface addresses.
pub(crate) fn local_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// Waits up to `wait` for a datagram carrying `payload` on `sock`; returns its source.
pub(crate) async fn await_payload(sock: &UdpSocket, payload: &[u8], wait: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(Ok((n, from))) = timeout(left, sock.recv_from(&mut buf)).await else {
            return None;
        };
        if buf.get(..n) == Some(payload) {
            return Some(from);
        }
    }
    None
}

/// Opens a connection of `url`'s transport within the settings' timeout; for TLS, with the certificate's verdict.
pub async fn connect(s: &Settings, url: &IceUrl) -> Result<(Conn, Option<CertInfo>), CheckError> {
    match url.transport {
        Transport::Udp => {
            let addr = resolve_one(&url.host, url.port, s.timeout).await?;
            Ok((
                Conn::Udp {
                    sock: bind_any(addr)?,
                    server: addr,
                },
                None,
            ))
        }
        Transport::Tcp => {
            let target = tcp_target(s, &url.host, url.port, false).await?;
            let (tcp, local) = http::tcp(&target, s.timeout).await?;
            Ok((
                Conn::Stream {
                    io: Box::new(tcp),
                    buf: Vec::new(),
                    local,
                    heard: false,
                },
                None,
            ))
        }
        Transport::Tls => {
            let target = tcp_target(s, &url.host, url.port, true).await?;
            // RFC 7443: ALPN "stun.turn" lets a single port tell TURN from HTTPS.
            let (io, cert, local) = http::open_with_local(&target, &[b"stun.turn"], s.timeout).await?;
            Ok((
                Conn::Stream {
                    io,
                    buf: Vec::new(),
                    local,
                    heard: false,
                },
                cert,
            ))
        }
    }
}
