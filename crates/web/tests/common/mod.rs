//! What the web crate's tests share: a server configuration with test defaults, each test changing what it needs.

use std::path::Path;
use std::sync::Arc;

use web::WebConfig;

/// Default limits, no token secret, no ICE servers, any origin, 10 stored reports, data under `dir`.
pub fn config(dir: &Path) -> WebConfig {
    WebConfig {
        limits: signal::Limits::default(),
        token_secret: None,
        ice_servers: Arc::new(|_, _| serde_json::json!([])),
        extra_ice_servers: Arc::new(|_, _| serde_json::json!([])),
        nat_probes: Arc::new(Vec::new),
        credential_ttl_secs: 3600,
        data_dir: dir.join("data"),
        admin_token: None,
        max_reports: 10,
        outcomes: Arc::new(outcome::Outcomes::new()),
        allowed_origins: web::AllowedOrigins::Any,
        room_affinity: true,
        requests_per_second_per_source: 0,
        trusted_proxies: Vec::new(),
    }
}
