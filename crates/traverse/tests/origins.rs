#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Pages on other origins: CORS on the public API and the SDK, the signaling socket's `Origin` check, and the SDK's
//! cache headers — on the real binary, over raw HTTP/1.1 so every header is seen as a browser would get it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Server;

/// Sends `request` (headers only) and returns the status line and headers, lower-cased names.
fn exchange(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    // Read until the headers are complete and, for a body with a length, the body too.
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            let status: u16 = text[9..12].parse().unwrap();
            if status == 101 || len.is_none_or(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head[9..12].parse().unwrap();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, Vec<(String, String)>, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn ws(addr: SocketAddr, origin: Option<&str>) -> u16 {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: traverse.v1\r\n{origin}\r\n"
    );
    exchange(addr, &request).0
}

#[test]
fn by_default_any_page_may_use_the_sdk_the_api_and_signaling() {
    let server = Server::start(&[]);
    let http = server.http.expect("an HTTP listener");
    let (status, headers, body) = get(http, "/sdk/traverse.js", "Origin: https://app.example.com\r\n");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert!(body.contains("export"), "the SDK module");
    let (status, headers, _) = get(http, "/api/ice-servers", "Origin: https://app.example.com\r\n");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(ws(http, Some("https://app.example.com")), 101);
}

#[test]
fn a_list_of_origins_binds_cors_and_the_signaling_socket() {
    let server = Server::start(&[
        "--set",
        "web.allowed_origins=https://app.example.com,http://localhost:5173",
    ]);
    let http = server.http.expect("an HTTP listener");

    // An allowed page: its origin echoed, the preflight for a token-bearing call answered.
    let (_, headers, _) = get(http, "/sdk/traverse.js", "Origin: https://app.example.com\r\n");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let preflight = format!(
        "OPTIONS /api/ice-servers HTTP/1.1\r\nHost: {http}\r\nOrigin: http://localhost:5173\r\n\
         Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n"
    );
    let (status, headers, _) = exchange(http, &preflight);
    assert!(status == 200 || status == 204, "preflight answered {status}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    assert!(
        header(&headers, "access-control-allow-headers").is_some_and(|h| h.contains("authorization")),
        "{headers:?}"
    );

    // Another site's page: no CORS grant (the browser blocks the read), and no signaling socket.
    let (_, headers, _) = get(http, "/api/ice-servers", "Origin: https://evil.example\r\n");
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    let (status, _, body) = exchange(
        http,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403);
    assert!(
        body.contains("\"code\":\"origin-not-allowed\"") && body.contains("web.allowed_origins"),
        "{body}"
    );

    // The allowed page, the server's own pages, and programs (no Origin) still connect.
    assert_eq!(ws(http, Some("https://app.example.com")), 101);
    assert_eq!(ws(http, Some(&format!("http://{http}"))), 101);
    assert_eq!(ws(http, None), 101);
}

#[test]
fn the_sdk_is_cached_by_version_and_revalidated_by_etag() {
    let server = Server::start(&[]);
    let http = server.http.expect("an HTTP listener");
    let version = env!("CARGO_PKG_VERSION");
    let (status, headers, plain) = get(http, "/sdk/traverse.js", "");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "cache-control"), Some("public, max-age=300"));
    let etag = header(&headers, "etag").expect("an ETag").to_owned();
    let (status, _, _) = get(http, "/sdk/traverse.js", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, 304);

    let (status, headers, versioned) = get(http, &format!("/sdk/{version}/traverse.js"), "");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(versioned, plain, "the versioned URL serves the same bytes");
    let (status, _, body) = get(http, "/sdk/99.0.0/traverse.js", "");
    assert_eq!(status, 404);
    assert!(body.contains(&format!("/sdk/{version}/traverse.js")), "{body}");
}

#[test]
fn an_entry_that_is_not_an_origin_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_traverse"))
        .args(["check-config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"[web]\nallowed_origins = [\"app.example.com\"]\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("web.allowed_origins") && stderr.contains("scheme://host[:port]"),
        "{stderr}"
    );
}
