//! Why a check failed, grouped by whose fault it is (the network's, the server's, the configuration's, the
//! certificate's), so the verdict can name the cause precisely: a stale nonce is not a wrong password, a timeout is
//! not a refusal.

use std::time::Duration;

use thiserror::Error;

/// Why one check failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckError {
    // The network's.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The TCP connection was accepted, then nothing answered: what listens there does not speak what we asked, or a
    /// firewall on the way accepts connections and drops what they carry. Not closed, not dropped at the first packet.
    #[error("the connection was accepted, then no answer within {} ms", .0.as_millis())]
    Silent(Duration),
    /// The server answered on this connection, then nothing more: it stalled (overloaded, or the path broke).
    #[error("the server answered, then nothing more within {} ms", .0.as_millis())]
    Stalled(Duration),
    #[error("connection refused")]
    Refused,
    #[error("network unreachable")]
    Unreachable,
    #[error("the connection was closed")]
    Closed,
    #[error("the server took nothing we sent for {} ms: it stopped reading", .0.as_millis())]
    WriteStalled(Duration),
    #[error("cannot resolve {0}")]
    Dns(String),
    #[error("{0}")]
    Io(String),
    /// The HTTP proxy (`--proxy`, `HTTPS_PROXY`) could not be reached, or refused the tunnel: the sentence says which.
    #[error("{0}")]
    Proxy(String),
    // The certificate's.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the certificate is not trusted: {0}")]
    Certificate(String),
    // The server's answer.
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("STUN error {code} {reason}")]
    Stun { code: u16, reason: String },
    #[error("the server answered something unexpected: {0}")]
    Protocol(String),
    // The configuration's.
    #[error("the credential was refused (401 {0}): wrong or expired username/password")]
    AuthRejected(String),
    #[error("the server kept answering 438 stale nonce ({0} times): its nonces expire too fast; the credential was not refused")]
    StaleNonce(u32),
    #[error("no TURN credential: give --turn-user/--turn-password or let the server hand one out")]
    NoCredential,
    #[error("skipped: {0}")]
    Skipped(String),
}

impl CheckError {
    /// A short stable code for JSON.
    pub fn code(&self) -> &'static str {
        match self {
            CheckError::Timeout(_) => "timeout",
            CheckError::Silent(_) => "silent",
            CheckError::Stalled(_) => "stalled",
            CheckError::Refused => "refused",
            CheckError::Unreachable => "unreachable",
            CheckError::Closed => "closed",
            CheckError::WriteStalled(_) => "write-stalled",
            CheckError::Dns(_) => "dns",
            CheckError::Io(_) => "io",
            CheckError::Proxy(_) => "proxy",
            CheckError::Tls(_) => "tls",
            CheckError::Certificate(_) => "certificate",
            CheckError::Http { .. } => "http-status",
            CheckError::Stun { .. } => "stun-error",
            CheckError::Protocol(_) => "protocol",
            CheckError::AuthRejected(_) => "auth-rejected",
            CheckError::StaleNonce(_) => "stale-nonce",
            CheckError::NoCredential => "no-credential",
            CheckError::Skipped(_) => "skipped",
        }
    }

    /// The failure says nothing was listening or nothing answered (as opposed to an answer we did not like).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CheckError::Timeout(_)
                | CheckError::Refused
                | CheckError::Unreachable
                | CheckError::Dns(_)
                | CheckError::Proxy(_)
        )
    }
}

impl From<std::io::Error> for CheckError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::ConnectionRefused => CheckError::Refused,
            ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable | ErrorKind::AddrNotAvailable => {
                CheckError::Unreachable
            }
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::UnexpectedEof => CheckError::Closed,
            ErrorKind::TimedOut => CheckError::Timeout(Duration::ZERO),
            _ => CheckError::Io(e.to_string()),
        }
    }
}

impl From<stun::EncodeError> for CheckError {
    fn from(e: stun::EncodeError) -> Self {
        CheckError::Protocol(e.to_string())
    }
}

/// Why `traverse doctor` could not run at all (the usage's fault).
#[derive(Debug, Error)]
pub enum Error {
    #[error("bad server address {0:?}: expected http://HOST:PORT, https://HOST:PORT or HOST[:PORT]")]
    BadServer(String),
    #[error("bad {what} {value:?}: {why}")]
    BadArgument {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("bad proxy {value:?}: {why}")]
    Proxy { value: String, why: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write the report: {0}")]
    Output(String),
}
