//! TURN: for every `turn:`/`turns:` URL, connect (UDP, TCP, or TLS with ALPN `stun.turn`), Allocate with the
//! long-term credential, then release. TURN over TLS on `--https-port` (the single port) is probed when the server
//! does not announce it.

use std::sync::Arc;

use super::net::{connect, timed};
use super::Settings;
use crate::client::TurnClient;
use crate::error::CheckError;
use crate::facts::TurnFact;
use crate::ice::{IceConfig, IceUrl, Transport};
use crate::progress::Progress;

/// A TURN long-term credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub password: String,
}

impl Credential {
    /// The flags' credential, else the one the server handed out.
    pub fn of(s: &Settings, ice: &IceConfig) -> Option<Credential> {
        let user = s.turn_user.clone().or_else(|| ice.username.clone())?;
        let password = s.turn_password.clone().or_else(|| ice.credential.clone())?;
        Some(Credential { user, password })
    }

    pub fn client(&self, s: &Settings, conn: crate::client::Conn) -> TurnClient {
        TurnClient::new(conn, &self.user, &self.password, s.timing())
    }
}

/// A TURN URL to test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: IceUrl,
    /// Added by the doctor, not announced by the server.
    pub probe: bool,
}

/// The announced URLs, then TURN over TLS on `--https-port` when it is not among them (and there is a credential).
pub fn targets(s: &Settings, ice: &IceConfig, has_credential: bool) -> Vec<Target> {
    let mut list: Vec<Target> = ice
        .turn
        .iter()
        .map(|u| Target {
            url: u.clone(),
            probe: false,
        })
        .collect();
    let announced = ice
        .turn
        .iter()
        .any(|u| u.transport == Transport::Tls && u.port == s.https_port);
    if s.https_port != 0 && has_credential && !announced {
        list.push(Target {
            url: IceUrl {
                turn: true,
                transport: Transport::Tls,
                host: s.server.host.clone(),
                port: s.https_port,
            },
            probe: true,
        });
    }
    list
}

pub async fn check(s: Arc<Settings>, target: Target, cred: Option<Credential>, progress: Arc<Progress>) -> TurnFact {
    let Target { url, probe } = target;
    let label = if probe {
        format!("TURN {} (probe: single port)", url.label())
    } else {
        format!("TURN {}", url.label())
    };
    let line = progress.start(&label);
    let mut certificate = None;
    let mut local = None;
    let allocation = timed(s.timeout.saturating_mul(3), async {
        let Some(cred) = cred else {
            return Err(CheckError::NoCredential);
        };
        let (conn, cert) = connect(&s, &url).await?;
        certificate = cert;
        local = conn.local_stream_addr();
        let mut turn = cred.client(&s, conn);
        let allocation = turn.allocate().await?;
        // Release at once; a failure to release is not the user's problem.
        let _ = turn.release().await;
        Ok(allocation)
    })
    .await;
    let detail = match &allocation.result {
        Ok(a) => format!("relay {}", a.relayed),
        Err(e) => e.to_string(),
    };
    progress.finish(line, allocation.ok(), allocation.took, &detail);
    TurnFact {
        url,
        probe,
        allocation,
        certificate,
        local,
    }
}
