//! The "share with support" store: troubleshooter reports (`/check`) kept as one JSON file each in a data
//! directory, so they survive a restart without a database.
//!
//! Contract: a report is a JSON object of at most [`ReportLimits::max_bytes`]; it gets a [`ReportId`] of 128
//! random bits (32 lowercase hex digits) that is the only way to read it back, short of the operator's list. Files
//! are written atomically (a temporary file, fsync, rename), so a crash leaves either the whole report or none. The
//! store holds at most [`ReportLimits::max_reports`]; the oldest go first. Ids are parsed into [`ReportId`] before
//! any path is built, so no request can name a file outside the directory. The directory is created on the first
//! write, so a server that never receives a report leaves no trace on disk.
//!
//! The calls block on the file system (small files, a handful per minute): callers on a runtime run them with
//! `spawn_blocking`.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::Serialize;

/// Largest report accepted, bytes of JSON as sent.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Reports kept by default before the oldest are pruned.
pub const DEFAULT_MAX_REPORTS: usize = 1000;

/// A report's id: 128 random bits as 32 lowercase hex digits. Unguessable, so the link is the permission to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportId([u8; 16]);

impl ReportId {
    fn random(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    fn file_name(self) -> String {
        format!("{self}.json")
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for ReportId {
    type Err = ReportError;

    /// Exactly 32 lowercase hex digits; anything else (dots, slashes, upper case, other lengths) is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.as_bytes();
        if digits.len() != 32 {
            return Err(ReportError::BadId);
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let [hi, lo] = pair else { return Err(ReportError::BadId) };
            *byte = (hex_value(*hi)? << 4) | hex_value(*lo)?;
        }
        Ok(Self(bytes))
    }
}

fn hex_value(c: u8) -> Result<u8, ReportError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(ReportError::BadId),
    }
}

/// What went wrong, grouped by whose fault it is; [`ReportError::code`] and [`ReportError::http_status`] are what
/// the client sees.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    // The client's fault.
    #[error("the report is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the report is not a JSON object: {0}")]
    BadJson(String),
    #[error("not a report id (32 hex digits)")]
    BadId,
    #[error("no such report (it may have been pruned)")]
    NotFound,
    // The server's.
    #[error("cannot store the report: {0}")]
    Storage(#[from] std::io::Error),
}

impl ReportError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "report-too-large",
            Self::BadJson(_) => "bad-json",
            Self::BadId | Self::NotFound => "report-not-found",
            Self::Storage(_) => "storage-failed",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Self::TooLarge(_) => 413,
            Self::BadJson(_) => 400,
            Self::BadId | Self::NotFound => 404,
            Self::Storage(_) => 500,
        }
    }
}

/// Bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct ReportLimits {
    pub max_reports: usize,
    pub max_bytes: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        Self {
            max_reports: DEFAULT_MAX_REPORTS,
            max_bytes: MAX_REPORT_BYTES,
        }
    }
}

/// One line of the operator's list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportSummary {
    pub id: String,
    /// Unix seconds when the report was received.
    pub created: u64,
    pub bytes: u64,
    /// The report's own one-line verdict (`verdict.headline`), if it has one.
    pub headline: Option<String>,
}

/// The file format: the report as sent, wrapped with what the server knows about it.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Stored {
    id: String,
    created: u64,
    report: serde_json::Value,
}

/// The store: a directory and an index of what is in it, oldest first.
#[derive(Debug)]
pub struct ReportStore {
    dir: PathBuf,
    limits: ReportLimits,
    index: Mutex<VecDeque<ReportSummary>>,
}

const HEADLINE_CHARS: usize = 200;

impl ReportStore {
    /// Opens the store in `dir`, indexing the reports already there (a missing directory is an empty store).
    /// Leftover temporary files of an interrupted write are removed; files that are not reports are left alone.
    pub fn open(dir: impl Into<PathBuf>, limits: ReportLimits) -> std::io::Result<Self> {
        let dir = dir.into();
        let mut index = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.starts_with(".tmp-") {
                        let _ = std::fs::remove_file(entry.path());
                        continue;
                    }
                    let Some(id) = name.strip_suffix(".json").and_then(|s| s.parse::<ReportId>().ok()) else {
                        continue;
                    };
                    match read_stored(&entry.path()) {
                        Ok((stored, bytes)) => index.push(summary(id, &stored, bytes)),
                        Err(e) => tracing::warn!(file = %entry.path().display(), error = %e, "skipping a bad report"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        index.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        let store = Self {
            dir,
            limits,
            index: Mutex::new(index.into()),
        };
        // A lowered max_reports takes effect at once.
        store.prune(&mut store.lock());
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> ReportLimits {
        self.limits
    }

    /// Validates and stores a report received at Unix time `now`; returns its new id.
    pub fn create(&self, body: &[u8], now: u64, rng: &mut impl RngCore) -> Result<ReportId, ReportError> {
        if body.len() > self.limits.max_bytes {
            return Err(ReportError::TooLarge(self.limits.max_bytes));
        }
        let report: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| ReportError::BadJson(e.to_string()))?;
        if !report.is_object() {
            return Err(ReportError::BadJson("expected an object".into()));
        }
        let id = ReportId::random(rng);
        let stored = Stored {
            id: id.to_string(),
            created: now,
            report,
        };
        let text = serde_json::to_vec(&stored).map_err(|e| ReportError::BadJson(e.to_string()))?;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".tmp-{id}"));
        let written = write_synced(&tmp, &text).and_then(|()| std::fs::rename(&tmp, self.dir.join(id.file_name())));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        // Make the rename itself durable; best effort (not every file system lets a directory be synced).
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let mut index = self.lock();
        index.push_back(summary(id, &stored, text.len() as u64));
        self.prune(&mut index);
        Ok(id)
    }

    /// The stored file (`{"id","created","report"}`) as JSON text.
    pub fn read(&self, id: ReportId) -> Result<Vec<u8>, ReportError> {
        match std::fs::read(self.dir.join(id.file_name())) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ReportError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// Every report held, newest first.
    pub fn list(&self) -> Vec<ReportSummary> {
        self.lock().iter().rev().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ReportSummary>> {
        // A panic while holding the lock cannot leave the index half-updated in a way that matters: recover it.
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prune(&self, index: &mut VecDeque<ReportSummary>) {
        while index.len() > self.limits.max_reports {
            let Some(oldest) = index.pop_front() else { break };
            let path = self.dir.join(format!("{}.json", oldest.id));
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "cannot prune a report");
                }
            }
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn read_stored(path: &Path) -> Result<(Stored, u64), ReportError> {
    let bytes = std::fs::read(path)?;
    let stored = serde_json::from_slice(&bytes).map_err(|e| ReportError::BadJson(e.to_string()))?;
    Ok((stored, bytes.len() as u64))
}

fn summary(id: ReportId, stored: &Stored, bytes: u64) -> ReportSummary {
    let headline = stored
        .report
        .pointer("/verdict/headline")
        .and_then(|v| v.as_str())
        .map(|s| s.chars().take(HEADLINE_CHARS).collect());
    ReportSummary {
        id: id.to_string(),
        created: stored.created,
        bytes,
        headline,
    }
}

/// Per-IP token bucket for `POST /api/reports` and failed admin logins: `burst` at once, then one every
/// `refill`. Bounded: past `max_ips` tracked addresses, full buckets are forgotten first, then everything.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    refill: Duration,
    max_ips: usize,
    buckets: Mutex<std::collections::HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, refill: Duration, max_ips: usize) -> Self {
        Self {
            burst,
            refill,
            max_ips,
            buckets: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Takes one token for `ip` at `now`; false when its bucket is empty.
    pub fn check(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = f64::from(self.burst);
        let refill = self.refill.as_secs_f64().max(f64::MIN_POSITIVE);
        let level =
            |tokens: f64, at: Instant| (tokens + now.saturating_duration_since(at).as_secs_f64() / refill).min(burst);
        if buckets.len() >= self.max_ips && !buckets.contains_key(&ip) {
            buckets.retain(|_, (tokens, at)| level(*tokens, *at) < burst);
            if buckets.len() >= self.max_ips {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(ip).or_insert((burst, now));
        let available = level(*tokens, *at);
        *at = now;
        if available < 1.0 {
            *tokens = available;
            return false;
        }
        *tokens = available - 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn limits(max_reports: usize) -> ReportLimits {
        ReportLimits {
            max_reports,
            max_bytes: 1024,
        }
    }

    #[test]
    fn create_then_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports");
        let store = ReportStore::open(&path, limits(10)).unwrap();
        assert!(!path.exists(), "nothing on disk before the first report");
        let body = br#"{"verdict":{"headline":"UDP is blocked here"},"n":1}"#;
        let id = store.create(body, 1_700_000_000, &mut rng()).unwrap();
        drop(store);

        let store = ReportStore::open(&path, limits(10)).unwrap();
        let stored: serde_json::Value = serde_json::from_slice(&store.read(id).unwrap()).unwrap();
        assert_eq!(stored["id"], id.to_string());
        assert_eq!(stored["created"], 1_700_000_000);
        assert_eq!(stored["report"]["n"], 1);
        let list = store.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, id.to_string());
        assert_eq!(list[0].headline.as_deref(), Some("UDP is blocked here"));
        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(format!("{id}.json"))],
            "no temporary file left"
        );
    }

    #[test]
    fn oldest_reports_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(dir.path(), limits(3)).unwrap();
        let mut rng = rng();
        let ids: Vec<_> = (0..5)
            .map(|i| {
                store
                    .create(format!("{{\"i\":{i}}}").as_bytes(), 100 + i, &mut rng)
                    .unwrap()
            })
            .collect();
        let listed: Vec<_> = store.list().into_iter().map(|s| s.id).collect();
        let newest: Vec<_> = ids.iter().rev().take(3).map(ToString::to_string).collect();
        assert_eq!(listed, newest, "newest first, two oldest gone");
        for old in &ids[..2] {
            assert!(matches!(store.read(*old), Err(ReportError::NotFound)));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);

        // Reopening with a lower bound prunes at once, oldest first.
        let store = ReportStore::open(dir.path(), limits(1)).unwrap();
        assert_eq!(store.list().len(), 1);
        assert!(store.read(ids[4]).is_ok());
        assert!(store.read(ids[3]).is_err());
    }

    #[test]
    fn bad_ids_are_refused_before_touching_the_file_system() {
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef/123456789abcdef",
            "0123456789abcdef.123456789abcdef",
            "0123456789abcdef\u{e9}23456789abcde",
            "zz23456789abcdef0123456789abcdef",
        ] {
            assert!(
                matches!(bad.parse::<ReportId>(), Err(ReportError::BadId)),
                "{bad:?} accepted"
            );
        }
        let id: ReportId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn oversized_and_non_object_reports_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(dir.path(), limits(10)).unwrap();
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(1100));
        assert!(matches!(
            store.create(big.as_bytes(), 1, &mut rng()),
            Err(ReportError::TooLarge(1024))
        ));
        assert!(matches!(
            store.create(b"[1,2]", 1, &mut rng()),
            Err(ReportError::BadJson(_))
        ));
        assert!(matches!(
            store.create(b"{nope", 1, &mut rng()),
            Err(ReportError::BadJson(_))
        ));
        assert!(store.list().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn leftover_temporary_files_are_removed_and_strangers_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".tmp-0123"), b"half").unwrap();
        std::fs::write(dir.path().join("README"), b"mine").unwrap();
        std::fs::write(dir.path().join("0123456789abcdef0123456789abcdef.json"), b"not json").unwrap();
        let store = ReportStore::open(dir.path(), limits(10)).unwrap();
        assert!(store.list().is_empty());
        assert!(!dir.path().join(".tmp-0123").exists());
        assert!(dir.path().join("README").exists());
    }

    #[test]
    fn ids_are_distinct() {
        let mut rng = rng();
        let a = ReportId::random(&mut rng);
        let b = ReportId::random(&mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_refills() {
        let limiter = RateLimiter::new(2, Duration::from_secs(10), 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.check(ip, t0));
        assert!(limiter.check(ip, t0));
        assert!(!limiter.check(ip, t0));
        assert!(limiter.check(other, t0), "buckets are per address");
        assert!(!limiter.check(ip, t0 + Duration::from_secs(5)));
        assert!(limiter.check(ip, t0 + Duration::from_secs(11)));
    }
}
