#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! Automatic certificates from an ACME CA (RFC 8555; Let's Encrypt by default), answered on Traverse's own ports:
//! TLS-ALPN-01 (RFC 8737) in the single port's TLS handshake, HTTP-01 on the plain HTTP port.
//!
//! Model: the decisions are sans-IO in [`plan`] (keep or order, when to renew, how long to back off, which
//! challenge, what to tell the operator), with the clock and the jitter passed in. [`spawn`] runs the one task that
//! acts on them, on a thread of its own: it installs a stored certificate at once, orders when the plan says so,
//! stores the result ([`store`], 0600) and swaps it into the server's [`CertStore`] — handshakes from then on get
//! the new certificate, open connections and allocations keep going. A failed order leaves the certificate in use
//! alone (the old one, or the self-signed placeholder), logs what the CA said and what to check, and retries after
//! [`plan::Backoff`].

pub mod plan;
pub mod store;

mod http;
mod order;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use server::CertStore;

use plan::{Backoff, Method, Next, Ways};
use store::{Issued, Store};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The task's longest sleep: the plan is taken again at least this often (a clock step or a suspend cannot make it
/// sleep past a renewal).
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

/// A whole order, account to chain. The HTTP client has no deadline of its own: a CA that accepts connections and
/// never answers must not stall renewals for good.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// What to order and from whom.
#[derive(Debug, Clone)]
pub struct Config {
    /// DNS names, all on one certificate.
    pub names: Vec<String>,
    /// Contact for the CA's expiry and incident mail.
    pub email: Option<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// A PEM root to trust for the directory's HTTPS instead of the system's (a private CA, Pebble).
    pub ca_root: Option<PathBuf>,
    /// The data directory; the state goes in `acme/` under it.
    pub data_dir: PathBuf,
    /// Which challenges the bound ports can answer.
    pub ways: Ways,
    pub backoff: Backoff,
}

/// Why an order failed, grouped by where to look: the CA's answer about a challenge (DNS, firewall, another
/// server), the CA refusing outright, the CA not reachable, or this machine (files, keys).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    #[error("the {method} challenge for {name} failed; the CA said: {said}; check: {advice}")]
    Challenge {
        name: String,
        method: Method,
        said: String,
        advice: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error(
        "the CA offers no challenge this server can answer for {name} ({ways:?}): TLS-ALPN-01 needs listen.single \
         on 443, HTTP-01 listen.http on 80"
    )]
    NoChallenge { name: String, ways: Ways },
    #[error(
        "cannot use the ACME directory {url}: {detail}; check tls.acme_directory and that this server can reach it"
    )]
    Directory { url: String, detail: String },
    #[error("cannot use tls.acme_ca_root {path}: {detail}")]
    CaRoot { path: String, detail: String },
    #[error("cannot store the ACME state in {0}: {1}")]
    Store(String, std::io::Error),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("the order did not finish within {}s; check that the CA is up", .0.as_secs())]
    Timeout(Duration),
}

impl AcmeError {
    /// An error of a request to the CA: its problem document with advice when it sent one.
    fn from_ca(what: &str, e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(problem) => {
                let advice = plan::advice(problem.r#type.as_deref(), None, "the names");
                AcmeError::Refused(format!("{what}; the CA said: {problem}; check: {advice}"))
            }
            e => AcmeError::Refused(format!("{what}: {e}")),
        }
    }
}

/// HTTP-01 key authorizations by token, read by the HTTP side at `/.well-known/acme-challenge/<token>`.
#[derive(Debug, Clone, Default)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl Http01Tokens {
    /// The key authorization for `token`, while its challenge is pending.
    pub fn get(&self, token: &str) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    fn insert(&self, token: String, key_authorization: String) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, key_authorization);
    }

    fn clear(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn remove(&self, token: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(token);
    }
}

/// Installs a stored certificate that is still good (so a restart serves it from the first handshake, without an
/// order), then starts the task that orders and renews. The returned tokens are for the HTTP side.
pub fn spawn(config: Config, certs: Arc<CertStore>) -> std::io::Result<Http01Tokens> {
    let store = Store::new(&config.data_dir, &config.directory);
    let tokens = Http01Tokens::default();
    let installed = install_stored(&config, &store, &certs);
    if let Some(held) = &installed {
        tracing::info!(
            names = ?held.names,
            not_after = held.validity.not_after,
            dir = %store.dir().display(),
            "serving the stored ACME certificate"
        );
    }
    let http01 = tokens.clone();
    std::thread::Builder::new()
        .name("traverse-acme".into())
        .spawn(move || supervise(config, store, certs, http01, installed, run))?;
    Ok(tokens)
}

/// Runs the task, and runs it again after a panic (in instant-acme, on an answer it did not expect): a panic ended
/// the thread, and with it every renewal until a restart, while the certificate ran out.
/// `task` is [`run`]; a test gives one that panics.
fn supervise<Task, Ran>(
    config: Config,
    store: Store,
    certs: Arc<CertStore>,
    http01: Http01Tokens,
    installed: Option<plan::Held>,
    task: Task,
) where
    Task: Fn(Config, Store, Arc<CertStore>, Http01Tokens, Option<plan::Held>) -> Ran,
    Ran: std::future::Future<Output = ()>,
{
    let mut installed = installed;
    let mut restarts = 0u32;
    loop {
        let began = std::time::Instant::now();
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return tracing::error!(error = %e, "ACME: cannot start the task's runtime"),
        };
        let ran = task(config.clone(), store.clone(), certs.clone(), http01.clone(), installed);
        let panicked = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(ran))) {
            Ok(()) => return,
            Err(payload) => payload,
        };
        drop(runtime);
        // A task that ran longer than the longest backoff failed afresh: its wait starts again from the first.
        restarts = match began.elapsed() > config.backoff.max {
            true => 1,
            false => restarts.saturating_add(1),
        };
        // Whatever challenge the order had put up comes down; what is served stays.
        for name in &config.names {
            certs.set_acme_challenge(name, None);
        }
        http01.clear();
        let why = panicked
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panicked.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let delay = config.backoff.delay(restarts, rand::thread_rng().gen());
        tracing::error!(
            "ACME: the certificate task failed ({why}); starting it again in {}s (restart {restarts})",
            delay.as_secs()
        );
        std::thread::sleep(delay);
        installed = held_in_use(&store, &certs);
    }
}

/// The stored ACME certificate, if it is the one being served (the plan's input after a restart of the task).
fn held_in_use(store: &Store, certs: &CertStore) -> Option<plan::Held> {
    let held = store.issued().ok()??.held()?;
    let serving = certs.status().not_after() == Some(held.validity.not_after) && !certs.is_self_signed();
    serving.then_some(held)
}

fn install_stored(config: &Config, store: &Store, certs: &CertStore) -> Option<plan::Held> {
    let issued = match store.issued() {
        Ok(issued) => issued?,
        Err(e) => {
            tracing::warn!(dir = %store.dir().display(), error = %e, "cannot read the stored ACME certificate");
            return None;
        }
    };
    let held = issued.held()?;
    let now = SystemTime::now();
    if now >= UNIX_EPOCH + Duration::from_secs(held.validity.not_after) {
        return None;
    }
    // A certificate that does not cover a name added since is still right for the names it covers: it is served
    // until one for every name is issued (the plan orders at once). Refused, every client of the names that worked
    // got the self-signed placeholder for as long as the new name's order failed (hours, behind a missing DNS record).
    if !plan::covers(&held.names, &config.names) {
        let missing: Vec<&String> = config
            .names
            .iter()
            .filter(|n| !held.names.iter().any(|h| h.eq_ignore_ascii_case(n)))
            .collect();
        tracing::warn!(
            covers = ?held.names,
            missing = ?missing,
            "ACME: the stored certificate does not cover every configured name; serving it for the names it covers until one for all of them is issued"
        );
    }
    match certs.install(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()) {
        Ok(()) => Some(held),
        Err(e) => {
            tracing::warn!(error = %e, "the stored ACME certificate cannot be used; ordering a new one");
            None
        }
    }
}

/// `installed`: the certificate the store serves, if it came from ACME — the plan's one input about it (a stored
/// certificate that could not be installed counts as none).
async fn run(
    config: Config,
    store: Store,
    certs: Arc<CertStore>,
    http01: Http01Tokens,
    mut installed: Option<plan::Held>,
) {
    let responders = order::Responders {
        certs: &certs,
        http01: &http01,
    };
    let mut failures = 0u32;
    let mut memory = order::Memory::default();
    // Drawn once per certificate: drawn at every wake-up, the earliest of the draws would win.
    let mut jitter: f64 = rand::thread_rng().gen();
    // The renewal time last logged: said once per certificate, not at every wake-up.
    let mut announced = None;
    loop {
        let now = SystemTime::now();
        let why = match plan::next(now, &config.names, installed.as_ref(), jitter) {
            Next::Keep { renew_at } => {
                let wait = renew_at.duration_since(now).unwrap_or_default();
                if announced != Some(renew_at) {
                    announced = Some(renew_at);
                    tracing::info!(names = ?config.names, "ACME: certificate good; renewal in {}s", wait.as_secs());
                }
                tokio::time::sleep(wait.min(LONGEST_SLEEP)).await;
                continue;
            }
            Next::Order(why) => why,
        };
        tracing::info!(names = ?config.names, directory = %config.directory, "ACME: ordering a certificate ({why})");
        let result =
            match tokio::time::timeout(ORDER_TIMEOUT, order::issue(&config, &store, &responders, &mut memory)).await {
                Ok(result) => result,
                Err(_) => {
                    // The order was dropped midway: take down whatever challenge it had put up.
                    for name in &config.names {
                        certs.set_acme_challenge(name, None);
                    }
                    http01.clear();
                    Err(AcmeError::Timeout(ORDER_TIMEOUT))
                }
            };
        let fresh_jitter: f64 = rand::thread_rng().gen();
        let checked = result.and_then(|issued| usable(&config, &issued, fresh_jitter).map(|()| issued));
        let error = match checked.and_then(|issued| save_and_install(&store, &certs, &issued)) {
            Ok(held) => {
                failures = 0;
                jitter = fresh_jitter;
                tracing::info!(
                    names = ?held.names,
                    not_after = held.validity.not_after,
                    "ACME: certificate issued and installed; new handshakes use it, open connections keep theirs"
                );
                installed = Some(held);
                continue;
            }
            Err(e) => e,
        };
        failures = failures.saturating_add(1);
        let backoff = config.backoff.delay(failures, rand::thread_rng().gen());
        // A rate-limited CA said when to come back: never before that (ordering into a rate limit extends it).
        let delay = match memory.ca_wait.take(SystemTime::now()) {
            Some(asked) if asked > backoff => {
                tracing::warn!(
                    "ACME: the CA asked to wait {} before the next order (Retry-After)",
                    plan::human(asked)
                );
                asked
            }
            _ => backoff,
        };
        let serving = match (certs.is_self_signed(), certs.status().not_after()) {
            (true, _) => "the self-signed placeholder (browsers refuse it)".to_owned(),
            (false, Some(not_after)) => {
                let left = (UNIX_EPOCH + Duration::from_secs(not_after)).duration_since(SystemTime::now());
                match left {
                    Ok(left) => format!("the previous certificate (expires in {})", plan::human(left)),
                    Err(_) => "the previous certificate, which has EXPIRED".to_owned(),
                }
            }
            (false, None) => "the previous certificate".to_owned(),
        };
        tracing::error!(
            "ACME: no certificate for {:?}: {error}. Still serving {serving}; retrying in {}s (failure {failures})",
            config.names,
            delay.as_secs()
        );
        tokio::time::sleep(delay).await;
    }
}

/// A certificate the plan would replace at once (expired, due for renewal, or not naming every name) is refused, not
/// installed: it would replace a good one, and ordering again at once would loop against the CA with no wait.
fn usable(config: &Config, issued: &Issued, jitter: f64) -> Result<(), AcmeError> {
    let held = issued
        .held()
        .ok_or_else(|| AcmeError::Certificate("the CA's chain cannot be read".into()))?;
    match plan::next(SystemTime::now(), &config.names, Some(&held), jitter) {
        Next::Keep { .. } => Ok(()),
        Next::Order(why) => Err(AcmeError::Certificate(format!(
            "the CA issued a certificate that cannot be kept ({why}; valid {} to {}): not installed",
            held.validity.not_before, held.validity.not_after
        ))),
    }
}

/// Served before stored: a full disk must not leave the server on an expiring certificate. A certificate that could
/// not be stored is still served (and counts as installed); the next restart orders again.
fn save_and_install(store: &Store, certs: &CertStore, issued: &Issued) -> Result<plan::Held, AcmeError> {
    let held = issued
        .held()
        .ok_or_else(|| AcmeError::Certificate("the CA's chain cannot be read".into()))?;
    certs
        .install(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    if let Err(e) = store.save_issued(issued) {
        tracing::error!(dir = %store.dir().display(), error = %e, "ACME: the new certificate is served but cannot be stored; a restart will order again");
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A panic in the task (instant-acme's, on an answer it did not expect) must not end renewals: the task runs
    /// again after the backoff, with the challenges it had put up taken down.
    #[test]
    fn the_task_runs_again_after_a_panic_with_its_challenges_taken_down() {
        let dir = std::env::temp_dir().join(format!("traverse-acme-supervise-{}", std::process::id()));
        let config = Config {
            names: vec!["a.example".into()],
            email: None,
            directory: "https://ca.invalid/directory".into(),
            ca_root: None,
            data_dir: dir.clone(),
            ways: Ways {
                tls_alpn: true,
                http: true,
            },
            backoff: Backoff {
                first: Duration::from_millis(20),
                max: Duration::from_millis(40),
            },
        };
        let store = Store::new(&config.data_dir, &config.directory);
        let certs = CertStore::new(server::TlsIdentity::Acme {
            names: config.names.clone(),
        })
        .unwrap();
        let runs = AtomicU32::new(0);
        let left = std::sync::Mutex::new(Some(String::new()));
        let given = std::sync::Mutex::new(Vec::new());
        let began = std::time::Instant::now();
        supervise(
            config,
            store,
            certs,
            Http01Tokens::default(),
            None,
            |_, _, _, http01, installed| {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let left = &left;
                given.lock().unwrap().push(installed.is_some());
                async move {
                    match run {
                        1 | 2 => {
                            http01.insert("token".into(), "key-authorization".into());
                            panic!("an answer the client did not expect");
                        }
                        // Told, not asserted here: a panic would only be caught and the task run again.
                        _ => *left.lock().unwrap() = http01.get("token"),
                    }
                }
            },
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "ran again after each panic, and ended when the task did"
        );
        assert_eq!(*left.lock().unwrap(), None, "the challenge came down after the panic");
        assert_eq!(*given.lock().unwrap(), [false; 3], "nothing was issued");
        // Two waits: 20 ms and 40 ms, each scaled by 0.75–1.25.
        assert!(began.elapsed() >= Duration::from_millis(45), "{:?}", began.elapsed());
    }
}
