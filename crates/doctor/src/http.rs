//! The least HTTP/1.1 the checks need: a GET with `Connection: close`, and a WebSocket upgrade that only looks for
//! `101`. Over TCP or TLS, each step under the caller's deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::client::Stream;
use crate::error::CheckError;
use crate::proxy::Proxy;
use crate::tls::{self, CertInfo};

/// Where to connect: host name (for SNI and `Host:`), resolved address, TLS or not, and the HTTP proxy to tunnel
/// through, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
    pub tls: bool,
    pub proxy: Option<Arc<Proxy>>,
}

/// TCP to `target` within `limit`: straight, or through its proxy's tunnel (to the host as named, as a browser asks a
/// proxy). This end of the connection only when straight: through a proxy the server sees the proxy's address, so
/// comparing it with ours would tell of the proxy, not of a NAT.
pub async fn tcp(target: &Target, limit: Duration) -> Result<(TcpStream, Option<SocketAddr>), CheckError> {
    if let Some(proxy) = &target.proxy {
        return Ok((proxy.tunnel(&target.host, target.addr.port(), limit).await?, None));
    }
    let tcp = timeout(limit, TcpStream::connect(target.addr))
        .await
        .map_err(|_| CheckError::Timeout(limit))??;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    Ok((tcp, local))
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub cert: Option<CertInfo>,
}

/// Opens TCP (and TLS with `alpn`) to `target` within `limit`.
pub async fn open(
    target: &Target,
    alpn: &[&[u8]],
    limit: Duration,
) -> Result<(Box<dyn Stream>, Option<CertInfo>), CheckError> {
    let (io, cert, _) = open_with_local(target, alpn, limit).await?;
    Ok((io, cert))
}

/// [`open`], with this end of the TCP connection (what a NAT would translate).
pub async fn open_with_local(
    target: &Target,
    alpn: &[&[u8]],
    limit: Duration,
) -> Result<(Box<dyn Stream>, Option<CertInfo>, Option<SocketAddr>), CheckError> {
    let (tcp, local) = tcp(target, limit).await?;
    if !target.tls {
        return Ok((Box::new(tcp), None, local));
    }
    let (stream, cert) = timeout(limit, tls::connect(tcp, &target.host, alpn))
        .await
        .map_err(|_| CheckError::Silent(limit))??;
    Ok((Box::new(stream), Some(cert), local))
}

/// An exchange that ran out of time: `Silent` when nothing came back at all, else a server that stalled mid-answer
/// (not a silent port).
fn unfinished(raw: &[u8], limit: Duration) -> CheckError {
    match raw.len() {
        0 => CheckError::Silent(limit),
        _ => CheckError::Stalled(limit),
    }
}

/// Whether `raw` holds a whole HTTP answer: its headers ended and its body is all there (by `content-length`, or the
/// last chunk). A server that keeps the connection open despite `Connection: close` has still answered.
fn complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or_default()).to_ascii_lowercase();
    let body = raw.get(head_end + 4..).unwrap_or_default();
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(n) => body.len() >= n,
        None => body.ends_with(b"0\r\n\r\n"),
    }
}

fn host_header(target: &Target) -> String {
    let default = if target.tls { 443 } else { 80 };
    if target.addr.port() == default {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.addr.port())
    }
}

/// `GET path` with extra headers; the whole exchange within `limit`.
pub async fn get(
    target: &Target,
    path: &str,
    headers: &[(&str, String)],
    limit: Duration,
) -> Result<Reply, CheckError> {
    let (mut io, cert) = open(target, &[b"http/1.1"], limit).await?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: traverse-doctor\r\nAccept: */*\r\nConnection: close\r\n",
        host_header(target)
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut raw = Vec::new();
    let exchange = async {
        io.write_all(request.as_bytes()).await?;
        io.flush().await?;
        let mut chunk = [0u8; 8192];
        loop {
            match io.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                // A TLS peer that closes without close_notify: what we have is what we get.
                Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(CheckError::from(e)),
            }
            if raw.len() > 1 << 20 {
                return Err(CheckError::Protocol("an HTTP answer over 1 MiB".into()));
            }
        }
        Ok(())
    };
    match timeout(limit, exchange).await {
        Ok(read) => read?,
        Err(_) if complete(&raw) => {}
        Err(_) => return Err(unfinished(&raw, limit)),
    }
    let (status, body) = parse_response(&raw)?;
    Ok(Reply { status, body, cert })
}

/// A WebSocket upgrade of `path`: the status the server answered (101 is success). The socket is then dropped.
pub async fn ws_upgrade(target: &Target, path: &str, limit: Duration) -> Result<(u16, Option<CertInfo>), CheckError> {
    let (mut io, cert) = open(target, &[b"http/1.1"], limit).await?;
    // Any 16 random bytes in base64 (RFC 6455 §4.1).
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: traverse-doctor\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: traverse.v1\r\n\r\n",
        host_header(target)
    );
    let mut raw = Vec::new();
    let exchange = async {
        io.write_all(request.as_bytes()).await?;
        io.flush().await?;
        let mut chunk = [0u8; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if raw.len() > 64 * 1024 {
                break;
            }
        }
        Ok::<_, CheckError>(())
    };
    let done = timeout(limit, exchange).await;
    done.map_err(|_| unfinished(&raw, limit))??;
    let status = status_line(&raw)?;
    Ok((status, cert))
}

fn status_line(raw: &[u8]) -> Result<u16, CheckError> {
    let line_end = raw
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or_else(|| CheckError::Protocol("not an HTTP answer".into()))?;
    let line = std::str::from_utf8(raw.get(..line_end).unwrap_or_default())
        .map_err(|_| CheckError::Protocol("not an HTTP answer".into()))?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().and_then(|s| s.parse::<u16>().ok())) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => Ok(status),
        _ => Err(CheckError::Protocol(format!("not an HTTP answer: {line:?}"))),
    }
}

/// Status and body (de-chunked) of a complete HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), CheckError> {
    let status = status_line(raw)?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| CheckError::Protocol("HTTP headers never ended".into()))?;
    let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or_default()).to_ascii_lowercase();
    let body = raw.get(head_end + 4..).unwrap_or_default();
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(rest.get(..eol).unwrap_or_default()).into_owned();
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            return Err(CheckError::Protocol("bad chunk size".into()));
        };
        if size == 0 {
            break;
        }
        // The size is the server's: a huge one must not overflow (a panic in a debug build).
        let truncated = || CheckError::Protocol("truncated chunk".into());
        let end = (eol + 2).checked_add(size).ok_or_else(truncated)?;
        let data = rest.get(eol + 2..end).ok_or_else(truncated)?;
        out.extend_from_slice(data);
        rest = rest.get(end.saturating_add(2)..).unwrap_or_default();
    }
    Ok((status, out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A server that keeps the connection open after a whole answer has answered; one that stopped mid-answer has
    /// stalled; one that sent nothing is silent.
    #[test]
    fn an_answer_is_complete_by_its_length_or_last_chunk() {
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nok"));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        ));
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n"
        ));
        assert!(!complete(b"HTTP/1.1 200 OK\r\ncontent-le"));
        let limit = Duration::from_secs(3);
        assert_eq!(unfinished(b"", limit), CheckError::Silent(limit));
        assert_eq!(unfinished(b"HTTP/1.1 200", limit), CheckError::Stalled(limit));
    }

    #[test]
    fn plain_and_chunked_bodies() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"ok"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (s, b) = parse_response(raw).unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abcde"[..]));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc\r\n0\r\n\r\n";
        assert!(
            parse_response(huge).is_err(),
            "a chunk size near usize::MAX is refused, not overflowed"
        );
    }
}
