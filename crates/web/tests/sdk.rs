//! The SDK as a package: `/sdk/traverse.js` and `/sdk/<version>/traverse.js` serve exactly the bytes of
//! `web/sdk/traverse.js` (the npm package's file), and the package's version, the SDK's `VERSION` and the server's
//! are one number.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use web::{Scheme, Web};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/sdk")
}

fn start() -> (Web, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let web = Web::start(common::config(dir.path())).unwrap();
    (web, dir)
}

/// The head and the body (bytes) of `GET path`.
async fn get(web: &Web, path: &str) -> (String, Vec<u8>) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let web = web.clone();
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000);
    tokio::spawn(async move { web.serve_connection(server, remote, Scheme::Http).await });
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nOrigin: http://app.test\r\nConnection: close\r\n\r\n");
    client.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut raw))
        .await
        .expect("answer within 5 s")
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    (head, raw[split + 4..].to_vec())
}

/// The `"version"` of `web/sdk/package.json`.
fn package_version() -> String {
    let text = std::fs::read_to_string(sdk_dir().join("package.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["version"].as_str().expect("package.json has a version").to_owned()
}

#[tokio::test]
async fn served_sdk_is_the_package_file_byte_for_byte() {
    let (web, _dir) = start();
    let file = std::fs::read(sdk_dir().join("traverse.js")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    for path in ["/sdk/traverse.js".to_owned(), format!("/sdk/{version}/traverse.js")] {
        let (head, body) = get(&web, &path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(
            body == file,
            "{path} differs from web/sdk/traverse.js ({} vs {} bytes)",
            body.len(),
            file.len()
        );
        // An app on another origin may import it (CORS, `web.allowed_origins` defaults to any).
        assert!(
            head.to_ascii_lowercase().contains("access-control-allow-origin:"),
            "{path}: {head}"
        );
    }
    let (head, _) = get(&web, &format!("/sdk/{version}/traverse.js")).await;
    assert!(
        head.contains("immutable"),
        "the versioned URL is cached for good: {head}"
    );
}

#[test]
fn package_and_sdk_versions_are_the_servers() {
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(package_version(), version, "web/sdk/package.json version");
    let sdk = std::fs::read_to_string(sdk_dir().join("traverse.js")).unwrap();
    assert!(
        sdk.contains(&format!("export const VERSION = '{version}';")),
        "web/sdk/traverse.js VERSION is not the server's {version}"
    );
}
