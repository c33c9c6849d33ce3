//! The "share with support" store: troubleshooter reports (`/check`) kept as one JSON file each in a data
//! directory, so they survive a restart without a database.
//!
//! Contract: a report is a JSON object of at most [`ReportLimits::max_bytes`]; it gets a [`ReportId`] of 128
//! random bits (32 lowercase hex digits) that is the only way to read it back, short of the operator's list. Files
//! are written atomically (a temporary file, fsync, rename), so a crash leaves either the whole report or none. Ids
//! are parsed into [`ReportId`] before any path is built, so no request can name a file outside the directory. The
//! directory is created on the first write, so a server that never receives a report leaves no trace on disk.
//!
//! Every report is charged to its [`Source`] (kept in its file, so the charge survives a restart; never shown to
//! readers). A source holds at most [`ReportLimits::max_per_source`]: past it, its newest replaces its own oldest.
//! The store holds at most [`ReportLimits::max_reports`]: when full, the newcomer pushes out the oldest report of the
//! source that holds the most (counting the newcomer), and a tie with the newcomer's own source goes against the
//! newcomer. So one source — one IPv4 address, one IPv6 /64 — can take a report from another only while that other
//! holds more than it will, and can never flush the store. Refusing newcomers when full (what a live resource
//! does) would make the store read-only for good once it fills, because reports do not expire: it is a rolling
//! archive, and the fairness is in who rolls out.
//!
//! [`ReportStore`]'s calls block on the file system (small files, a handful per minute); [`Reports`] is what the
//! routes use: it answers from memory what it can (an id this node does not hold, the list) and runs only file
//! reads and writes on a blocking thread.
//!
//! In a cluster (`signal.redis`, docs/scaling.md) the reports live in Redis instead ([`SharedReports`]), so a link
//! works on every node and the operator's list is the cluster's: same bounds and fairness, and each report expires
//! after [`SHARED_REPORT_TTL`]. While Redis does not answer, a report is kept in this node's files (and read from
//! them), so `/check` keeps working on a node alone; Redis is then tried again every [`SHARED_RETRY`], not by every
//! request, and the trouble is logged once per outage.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::RngCore;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use signal::Source;

/// Largest report accepted, bytes of JSON as sent.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Reports kept by default before the oldest are pruned.
pub const DEFAULT_MAX_REPORTS: usize = 1000;
/// Reports kept per source (IPv4 address, IPv6 /64): a support desk behind one NAT shares a few a day; a script
/// posting at the rate limit (one a minute) fills it in 20 minutes and then only rolls its own.
pub const MAX_REPORTS_PER_SOURCE: usize = 20;

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
    /// Only `application/json` makes a browser ask (preflight) before a cross-origin POST, so no other site can
    /// make its visitors' browsers create reports here.
    #[error("send the report as `Content-Type: application/json`")]
    NotJsonContentType,
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
            Self::NotJsonContentType => "unsupported-media-type",
            Self::BadId | Self::NotFound => "report-not-found",
            Self::Storage(_) => "storage-failed",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Self::TooLarge(_) => 413,
            Self::BadJson(_) => 400,
            Self::NotJsonContentType => 415,
            Self::BadId | Self::NotFound => 404,
            Self::Storage(_) => 500,
        }
    }
}

/// Bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct ReportLimits {
    pub max_reports: usize,
    pub max_per_source: usize,
    pub max_bytes: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        Self {
            max_reports: DEFAULT_MAX_REPORTS,
            max_per_source: MAX_REPORTS_PER_SOURCE,
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
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    id: String,
    created: u64,
    /// [`Source`] as text; absent in files written before sources were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    report: serde_json::Value,
}

/// What a reader gets: the file without its source, the report's bytes as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Published {
    id: String,
    created: u64,
    report: Box<RawValue>,
}

/// The store on this node's files: a directory and an index of what is in it.
#[derive(Debug)]
pub struct ReportStore {
    dir: PathBuf,
    limits: ReportLimits,
    index: Mutex<Index>,
}

/// A report checked and wrapped, ready to be stored in Redis or in a file.
#[derive(Debug)]
pub struct Prepared {
    id: ReportId,
    source: Source,
    stored: Stored,
    text: Vec<u8>,
}

/// The reports held, oldest first, and how many each source holds. Linear scans are fine here: a create is
/// rate-limited per source and costs an fsync, and the store holds about a thousand reports.
#[derive(Debug, Default)]
struct Index {
    held: VecDeque<Held>,
    per_source: HashMap<Source, usize>,
}

#[derive(Debug)]
struct Held {
    id: ReportId,
    summary: ReportSummary,
    /// None for reports stored before sources were kept: each counts as a source of its own.
    source: Option<Source>,
}

impl Index {
    fn count(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    /// What a report's holder holds; a report without a source is its own holder.
    fn weight(&self, held: &Held) -> usize {
        held.source.map_or(1, |s| self.count(s))
    }

    fn push(&mut self, held: Held) {
        if let Some(source) = held.source {
            *self.per_source.entry(source).or_default() += 1;
        }
        self.held.push_back(held);
    }

    fn remove(&mut self, at: usize) -> Option<Held> {
        let held = self.held.remove(at)?;
        if let Some(source) = held.source {
            if let std::collections::hash_map::Entry::Occupied(mut count) = self.per_source.entry(source) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        Some(held)
    }

    fn oldest_of(&self, source: Source) -> Option<usize> {
        self.held.iter().position(|h| h.source == Some(source))
    }

    /// The report to drop to make room for one more from `newcomer` (None when pruning at start): the oldest of
    /// the holder that holds the most once the newcomer's is counted; on a tie the newcomer's own source.
    fn victim(&self, newcomer: Option<Source>) -> Option<usize> {
        let newcomer_after = newcomer.map_or(0, |s| self.count(s) + 1);
        let most = self
            .held
            .iter()
            .map(|h| self.weight(h))
            .max()
            .unwrap_or(0)
            .max(newcomer_after);
        if let Some(own) = newcomer
            .filter(|_| newcomer_after == most)
            .and_then(|s| self.oldest_of(s))
        {
            return Some(own);
        }
        self.held.iter().position(|h| self.weight(h) == most)
    }
}

const HEADLINE_CHARS: usize = 200;

impl ReportStore {
    /// Opens the store in `dir`, indexing the reports already there (a missing directory is an empty store).
    /// Leftover temporary files of an interrupted write are removed; files that are not reports are left alone.
    pub fn open(dir: impl Into<PathBuf>, limits: ReportLimits) -> std::io::Result<Self> {
        let dir = dir.into();
        let mut found = Vec::new();
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
                        Ok((stored, bytes)) => found.push(Held {
                            id,
                            summary: summary(id, &stored, bytes),
                            source: stored.source.as_deref().and_then(parse_source),
                        }),
                        // Unreadable JSON will not become readable: removed, so that it does not sit outside
                        // every budget (a read that failed is left for the next start).
                        Err(e @ ReportError::BadJson(_)) => {
                            let removed = std::fs::remove_file(entry.path()).is_ok();
                            tracing::warn!(file = %entry.path().display(), error = %e, removed, "a bad report file");
                        }
                        Err(e) => tracing::warn!(file = %entry.path().display(), error = %e, "skipping a report"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        found.sort_by(|a, b| (a.summary.created, &a.summary.id).cmp(&(b.summary.created, &b.summary.id)));
        let mut index = Index::default();
        for held in found {
            index.push(held);
        }
        let store = Self {
            dir,
            limits,
            index: Mutex::new(index),
        };
        // Lowered bounds take effect at once.
        store.prune_at_start(&mut store.lock());
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> ReportLimits {
        self.limits
    }

    /// Validates and stores a report received from `source` at Unix time `now`; returns its new id.
    #[cfg(test)]
    pub fn create(
        &self,
        body: &[u8],
        now: u64,
        source: Source,
        rng: &mut impl RngCore,
    ) -> Result<ReportId, ReportError> {
        self.store(self.prepare(body, now, source, rng)?)
    }

    /// Checks a report received from `source` at Unix time `now` and gives it an id: what is stored, in a file or
    /// in Redis. Touches neither.
    pub fn prepare(
        &self,
        body: &[u8],
        now: u64,
        source: Source,
        rng: &mut impl RngCore,
    ) -> Result<Prepared, ReportError> {
        if body.len() > self.limits.max_bytes {
            return Err(ReportError::TooLarge(self.limits.max_bytes));
        }
        if nesting(body) > MAX_NESTING {
            return Err(ReportError::BadJson(format!("nested deeper than {MAX_NESTING} levels")));
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
            source: Some(source.to_string()),
            report,
        };
        let text = serde_json::to_vec(&stored).map_err(|e| ReportError::BadJson(e.to_string()))?;
        Ok(Prepared {
            id,
            source,
            stored,
            text,
        })
    }

    /// Writes a prepared report to its file and makes room for it (blocks on the file system).
    pub fn store(&self, prepared: Prepared) -> Result<ReportId, ReportError> {
        let Prepared {
            id,
            source,
            stored,
            text,
        } = prepared;
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
        while index.count(source) >= self.limits.max_per_source {
            let Some(own) = index.oldest_of(source) else { break };
            self.delete(&mut index, own);
        }
        while index.held.len() >= self.limits.max_reports {
            let Some(victim) = index.victim(Some(source)) else {
                break;
            };
            self.delete(&mut index, victim);
        }
        index.push(Held {
            id,
            summary: summary(id, &stored, text.len() as u64),
            source: Some(source),
        });
        Ok(id)
    }

    /// Whether this node holds the report `id` (from memory: an unknown id costs no file system call).
    pub fn holds(&self, id: ReportId) -> bool {
        self.lock().held.iter().any(|h| h.id == id)
    }

    /// How many reports this node holds.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// The stored report as `{"id","created","report"}` JSON text (without the source it was charged to).
    pub fn read(&self, id: ReportId) -> Result<Vec<u8>, ReportError> {
        if !self.holds(id) {
            return Err(ReportError::NotFound);
        }
        let bytes = match std::fs::read(self.dir.join(id.file_name())) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReportError::NotFound),
            Err(e) => return Err(e.into()),
        };
        published(&bytes)
    }

    /// Every report this node holds, newest first (from memory).
    pub fn list(&self) -> Vec<ReportSummary> {
        self.lock().held.iter().rev().map(|h| h.summary.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way that matters: recover it.
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prune_at_start(&self, index: &mut Index) {
        let over: Vec<Source> = index
            .per_source
            .iter()
            .filter(|(_, n)| **n > self.limits.max_per_source)
            .map(|(s, _)| *s)
            .collect();
        for source in over {
            while index.count(source) > self.limits.max_per_source {
                let Some(own) = index.oldest_of(source) else { break };
                self.delete(index, own);
            }
        }
        while index.held.len() > self.limits.max_reports {
            let Some(victim) = index.victim(None) else { break };
            self.delete(index, victim);
        }
    }

    /// Drops the report at `at` from the index and its file from the directory.
    fn delete(&self, index: &mut Index, at: usize) {
        let Some(gone) = index.remove(at) else { return };
        let path = self.dir.join(format!("{}.json", gone.summary.id));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "cannot prune a report");
            }
        }
    }
}

/// What the routes use: in a cluster Redis first, this node's files while Redis does not answer; on one node the
/// files alone. Only file reads and writes take a blocking thread: an id this node does not hold is answered from
/// memory, and Redis is asked on the runtime.
#[derive(Debug)]
pub struct Reports {
    files: Arc<ReportStore>,
    shared: Option<SharedReports>,
}

impl Reports {
    /// The reports of this node's files only.
    pub fn on_files(files: ReportStore) -> Self {
        Self {
            files: Arc::new(files),
            shared: None,
        }
    }

    /// Reports kept in the Redis at `url` (shared by the nodes of a cluster), in `files` while Redis does not
    /// answer. A URL the client cannot use leaves the reports on files (said once).
    pub fn with_redis(files: ReportStore, url: &str) -> Self {
        let shared = match redis::Client::open(url) {
            Ok(client) => Some(SharedReports::new(client)),
            Err(e) => {
                tracing::error!(error = %e, "reports stay on this node's files: cannot use this Redis URL");
                None
            }
        };
        Self {
            files: Arc::new(files),
            shared,
        }
    }

    pub fn limits(&self) -> ReportLimits {
        self.files.limits()
    }

    /// Validates and stores a report received from `source` at Unix time `now`; returns its new id.
    pub async fn create(&self, body: &[u8], now: u64, source: Source) -> Result<ReportId, ReportError> {
        let prepared = self.files.prepare(body, now, source, &mut rand::thread_rng())?;
        if let Some(shared) = &self.shared {
            if shared.create(&prepared, self.limits()).await.is_ok() {
                return Ok(prepared.id);
            }
        }
        let files = self.files.clone();
        blocking(move || files.store(prepared)).await
    }

    /// The report `id` as `{"id","created","report"}` JSON text.
    pub async fn read(&self, id: ReportId) -> Result<Vec<u8>, ReportError> {
        if let Some(shared) = &self.shared {
            if let Ok(Some(bytes)) = shared.read(id).await {
                return published(&bytes);
            }
        }
        if !self.files.holds(id) {
            return Err(ReportError::NotFound);
        }
        let files = self.files.clone();
        blocking(move || files.read(id)).await
    }

    /// Every report held, newest first: in a cluster the cluster's (and those this node kept while Redis was
    /// away); while Redis does not answer, this node's.
    pub async fn list(&self) -> Vec<ReportSummary> {
        let local = self.files.list();
        let Some(shared) = &self.shared else { return local };
        match shared.list().await {
            Ok(mut all) => {
                if !local.is_empty() {
                    all.extend(local);
                    all.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
                }
                all
            }
            Err(Unavailable) => local,
        }
    }
}

/// Runs a call that blocks on the file system off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReportError> + Send + 'static,
) -> Result<T, ReportError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ReportError::Storage(std::io::Error::other(e.to_string()))))
}

/// The stored `{"id","created","source","report"}` as a reader gets it (without the source).
fn published(bytes: &[u8]) -> Result<Vec<u8>, ReportError> {
    // A record that does not parse was damaged on this side: the server's fault, not the reader's.
    let damaged = |e: serde_json::Error| ReportError::Storage(std::io::Error::other(e));
    let published: Published = serde_json::from_slice(bytes).map_err(damaged)?;
    serde_json::to_vec(&published).map_err(damaged)
}

/// How long a report lives in a cluster's Redis: a support ticket's lifetime. With the store's bounds, Redis holds
/// at most `max_reports` × [`MAX_REPORT_BYTES`] (64 MiB by default) for them.
pub const SHARED_REPORT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A Redis command slower than this is Redis trouble: the report goes to this node's files.
const SHARED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// After Redis trouble, how long the reports skip it. Without this pause every request in an outage would wait
/// [`SHARED_TIMEOUT`] and log a warning of its own.
pub const SHARED_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Reports in a cluster's Redis (prefix `traverse:`): `report:{id}` the stored JSON (TTL), `reports` the ids by
/// creation time, `reports:summary` each id's line of the operator's list and source, `reports:source:{source}`
/// a source's ids, `reports:sources` the sources holding any. The bounds and the fairness of the file store are
/// one script, so two nodes storing at once cannot both take the last place.
pub struct SharedReports {
    client: redis::Client,
    /// Multiplexed, so concurrent calls do not wait in line for each other; made on first use. The lock is held
    /// only while it is being made, so one caller at a time tries to connect.
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    health: Mutex<Health>,
    ttl: std::time::Duration,
}

/// Whether Redis is in trouble, and until when calls skip it.
#[derive(Debug, Default)]
struct Health {
    troubled: bool,
    skip_until: Option<Instant>,
    /// Counts troubles: a call that began before the last one and answers late does not end the outage.
    generation: u64,
}

/// Redis is not asked, or did not answer: the caller uses this node's files (the trouble is logged already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// Stores a report and makes room first: the reports past their TTL, the source's own oldest beyond its share,
/// then while full the oldest of whoever holds the most counting the newcomer (a tie goes against the newcomer).
const STORE_REPORT: &str = r"
local p, id, created, source = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ttl, max_reports, max_per_source = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local all, sums, sources = p .. 'reports', p .. 'reports:summary', p .. 'reports:sources'
local function of(src) return p .. 'reports:source:' .. src end
local function forget(rid)
  local line = redis.call('HGET', sums, rid)
  if line then
    local src = cjson.decode(line)['source']
    if type(src) == 'string' then
      redis.call('ZREM', of(src), rid)
      if redis.call('ZCARD', of(src)) == 0 then redis.call('SREM', sources, src) end
    end
  end
  redis.call('HDEL', sums, rid)
  redis.call('ZREM', all, rid)
  redis.call('DEL', p .. 'report:' .. rid)
end
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', all, '-inf', created - ttl)) do forget(rid) end
while redis.call('ZCARD', of(source)) >= max_per_source do
  local oldest = redis.call('ZRANGE', of(source), 0, 0)[1]
  if not oldest then break end
  forget(oldest)
end
while redis.call('ZCARD', all) >= max_reports do
  local most, victim = redis.call('ZCARD', of(source)) + 1, source
  for _, src in ipairs(redis.call('SMEMBERS', sources)) do
    local n = redis.call('ZCARD', of(src))
    if n > most then most, victim = n, src end
  end
  local oldest = redis.call('ZRANGE', of(victim), 0, 0)[1] or redis.call('ZRANGE', all, 0, 0)[1]
  if not oldest then break end
  forget(oldest)
end
redis.call('SET', p .. 'report:' .. id, ARGV[5], 'EX', ttl)
redis.call('HSET', sums, id, ARGV[6])
redis.call('ZADD', all, created, id)
redis.call('ZADD', of(source), created, id)
redis.call('SADD', sources, source)
for _, key in ipairs({all, sums, sources, of(source)}) do redis.call('EXPIRE', key, ttl) end
return 1
";

const REDIS_PREFIX: &str = "traverse:";

/// A line of `reports:summary`: the operator's line and the source it is charged to.
#[derive(Debug, Serialize, Deserialize)]
struct SharedSummary {
    id: String,
    created: u64,
    bytes: u64,
    headline: Option<String>,
    source: Option<String>,
}

impl fmt::Debug for SharedReports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedReports")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SharedReports {
    fn new(client: redis::Client) -> Self {
        Self {
            client,
            connection: tokio::sync::Mutex::new(None),
            health: Mutex::new(Health::default()),
            ttl: SHARED_REPORT_TTL,
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn skipped(&self) -> bool {
        self.health().skip_until.is_some_and(|until| Instant::now() < until)
    }

    /// Runs `call` on the connection within [`SHARED_TIMEOUT`]; skips Redis for [`SHARED_RETRY`] after trouble.
    async fn call<T, F>(&self, call: impl FnOnce(ConnectionManager) -> F) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.skipped() {
            return Err(Unavailable);
        }
        let generation = self.health().generation;
        let connection = {
            let mut slot = self.connection.lock().await;
            // Whoever held the lock before may have just failed to connect.
            if self.skipped() {
                return Err(Unavailable);
            }
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(SHARED_TIMEOUT))
                        .set_response_timeout(Some(SHARED_TIMEOUT))
                        .set_number_of_retries(1);
                    let connecting = ConnectionManager::new_with_config(self.client.clone(), config);
                    match tokio::time::timeout(SHARED_TIMEOUT, connecting).await {
                        Ok(Ok(c)) => slot.insert(c).clone(),
                        Ok(Err(e)) => return Err(self.trouble(&e.to_string())),
                        Err(_) => return Err(self.trouble("no answer in time")),
                    }
                }
            }
        };
        // The manager reconnects by itself after a broken connection.
        match tokio::time::timeout(SHARED_TIMEOUT, call(connection)).await {
            Ok(Ok(value)) => {
                self.answered(generation);
                Ok(value)
            }
            Ok(Err(e)) => Err(self.trouble(&e.to_string())),
            Err(_) => Err(self.trouble("no answer in time")),
        }
    }

    /// Skips Redis for [`SHARED_RETRY`]; says so once per outage.
    fn trouble(&self, error: &str) -> Unavailable {
        let mut health = self.health();
        health.skip_until = Some(Instant::now() + SHARED_RETRY);
        health.generation += 1;
        if !std::mem::replace(&mut health.troubled, true) {
            tracing::warn!(
                error,
                retry_secs = SHARED_RETRY.as_secs(),
                "the report store's Redis does not answer: reports are kept in and read from this node's files \
                 until it does (said once)"
            );
        }
        Unavailable
    }

    /// A call begun at `generation` answered: Redis is back, unless trouble came since the call began.
    fn answered(&self, generation: u64) {
        let mut health = self.health();
        if health.generation != generation {
            return;
        }
        health.skip_until = None;
        if std::mem::replace(&mut health.troubled, false) {
            tracing::info!("the report store's Redis answers again");
        }
    }

    async fn create(&self, prepared: &Prepared, limits: ReportLimits) -> Result<(), Unavailable> {
        let Prepared { id, stored, text, .. } = prepared;
        let line = summary(*id, stored, text.len() as u64);
        let line = SharedSummary {
            id: line.id,
            created: line.created,
            bytes: line.bytes,
            headline: line.headline,
            source: stored.source.clone(),
        };
        let line = serde_json::to_string(&line).unwrap_or_default();
        let script = redis::Script::new(STORE_REPORT);
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(REDIS_PREFIX)
            .arg(id.to_string())
            .arg(stored.created)
            .arg(stored.source.as_deref().unwrap_or("unknown"))
            .arg(&text[..])
            .arg(line)
            .arg(self.ttl.as_secs())
            .arg(limits.max_reports.max(1))
            .arg(limits.max_per_source.max(1));
        self.call(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await.map(|_| ()) })
            .await
    }

    async fn read(&self, id: ReportId) -> Result<Option<Vec<u8>>, Unavailable> {
        let key = format!("{REDIS_PREFIX}report:{id}");
        self.call(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await
    }

    async fn list(&self) -> Result<Vec<ReportSummary>, Unavailable> {
        let lines: Vec<Option<String>> = self
            .call(|mut c| async move {
                let ids: Vec<String> = redis::cmd("ZREVRANGE")
                    .arg(format!("{REDIS_PREFIX}reports"))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                redis::cmd("HMGET")
                    .arg(format!("{REDIS_PREFIX}reports:summary"))
                    .arg(&ids)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let live_since = now.saturating_sub(self.ttl.as_secs());
        Ok(lines
            .into_iter()
            .flatten()
            .filter_map(|line| serde_json::from_str::<SharedSummary>(&line).ok())
            .filter(|line| line.created > live_since)
            .map(|line| ReportSummary {
                id: line.id,
                created: line.created,
                bytes: line.bytes,
                headline: line.headline,
            })
            .collect())
    }
}

/// A [`Source`] as its `Display` writes it: `192.0.2.1` or `2001:db8:1:2::/64`.
fn parse_source(text: &str) -> Option<Source> {
    let ip = match text.strip_suffix("/64") {
        Some(v6) => std::net::IpAddr::V6(v6.parse().ok()?),
        None => std::net::IpAddr::V4(text.parse().ok()?),
    };
    Some(Source::from(ip))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The deepest a report may nest: well inside what serde_json reads back (128) once the report is wrapped in what
/// is stored (a file's `Stored`, Redis' envelope) — a report accepted at 127 levels could not be read after a
/// restart, its link dead and its bytes outside every budget.
const MAX_NESTING: usize = 64;

/// How deeply `json`'s arrays and objects nest (brackets inside strings do not count).
fn nesting(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    deepest
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
            max_per_source: MAX_REPORTS_PER_SOURCE,
            max_bytes: 1024,
        }
    }

    /// Source number `n`: an IPv4 address of its own.
    fn src(n: u8) -> Source {
        Source::from(std::net::IpAddr::from([192, 0, 2, n]))
    }

    #[test]
    fn create_then_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports");
        let store = ReportStore::open(&path, limits(10)).unwrap();
        assert!(!path.exists(), "nothing on disk before the first report");
        let body = br#"{"verdict":{"headline":"UDP is blocked here"},"n":1}"#;
        let id = store.create(body, 1_700_000_000, src(1), &mut rng()).unwrap();
        drop(store);

        let store = ReportStore::open(&path, limits(10)).unwrap();
        let stored: serde_json::Value = serde_json::from_slice(&store.read(id).unwrap()).unwrap();
        assert_eq!(stored["id"], id.to_string());
        assert_eq!(stored["created"], 1_700_000_000);
        assert_eq!(stored["report"]["n"], 1);
        assert!(
            stored.get("source").is_none(),
            "readers do not see who sent it: {stored}"
        );
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
    fn a_report_nested_too_deep_to_read_back_is_refused_and_a_bad_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(dir.path(), limits(10)).unwrap();
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        let refused = store.create(deep(MAX_NESTING).as_bytes(), 100, src(1), &mut rng());
        assert!(matches!(refused, Err(ReportError::BadJson(_))), "{refused:?}");
        // Brackets inside strings do not nest.
        let text = format!(
            "{{\"a\":\"{}\\\"\",\"b\":{}1{}}}",
            "[".repeat(200),
            "[".repeat(10),
            "]".repeat(10)
        );
        let id = store.create(text.as_bytes(), 100, src(1), &mut rng()).expect("shallow");
        drop(store);
        let kept = ReportStore::open(dir.path(), limits(10)).unwrap();
        assert!(kept.read(id).is_ok(), "read back after a restart");
        // A file that is not JSON any more (written by hand, a disk error): removed at start, not left unbudgeted.
        let bad = dir.path().join(format!("{}.json", ReportId::random(&mut rng())));
        std::fs::write(&bad, b"{\"id\": [[[").unwrap();
        drop(kept);
        let _store = ReportStore::open(dir.path(), limits(10)).unwrap();
        assert!(!bad.exists(), "a bad report file is removed");
    }

    #[test]
    fn oldest_reports_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(dir.path(), limits(3)).unwrap();
        let mut rng = rng();
        let ids: Vec<_> = (0..5)
            .map(|i| {
                store
                    .create(format!("{{\"i\":{i}}}").as_bytes(), 100 + i, src(1), &mut rng)
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
            store.create(big.as_bytes(), 1, src(1), &mut rng()),
            Err(ReportError::TooLarge(1024))
        ));
        assert!(matches!(
            store.create(b"[1,2]", 1, src(1), &mut rng()),
            Err(ReportError::BadJson(_))
        ));
        assert!(matches!(
            store.create(b"{nope", 1, src(1), &mut rng()),
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

    fn post(store: &ReportStore, source: Source, at: u64, rng: &mut impl RngCore) -> ReportId {
        store.create(br#"{"k":1}"#, at, source, rng).unwrap()
    }

    fn held_by(store: &ReportStore, ids: &[ReportId]) -> usize {
        ids.iter().filter(|id| store.read(**id).is_ok()).count()
    }

    #[test]
    fn one_slash_64_cannot_evict_another_sources_report() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(dir.path(), limits(10)).unwrap();
        let mut rng = rng();
        let victim = post(&store, src(9), 1, &mut rng);
        let older = post(&store, src(8), 2, &mut rng);
        // 1 000 posts from 1 000 addresses of one /64: before sources were counted, this emptied the store.
        let mut attacker = Vec::new();
        for i in 0..1000u16 {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 64, i, 0xbeef, 0, 1);
            attacker.push(post(
                &store,
                Source::from(std::net::IpAddr::V6(ip)),
                10 + u64::from(i),
                &mut rng,
            ));
        }
        assert!(store.read(victim).is_ok());
        assert!(store.read(older).is_ok());
        assert_eq!(store.list().len(), 10, "the store stays full");
        assert_eq!(held_by(&store, &attacker), 8, "the /64 holds what is left, its newest");
        assert!(attacker[992..].iter().all(|id| store.read(*id).is_ok()));

        // Across a restart the charge is the same: the /64 still only rolls its own.
        drop(store);
        let store = ReportStore::open(dir.path(), limits(10)).unwrap();
        let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 64, 0xffff, 0, 0, 2);
        post(&store, Source::from(std::net::IpAddr::V6(ip)), 5000, &mut rng);
        assert!(store.read(victim).is_ok() && store.read(older).is_ok());
    }

    #[test]
    fn a_full_store_takes_from_whoever_holds_the_most_and_new_sources_get_a_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(dir.path(), limits(6)).unwrap();
        let mut rng = rng();
        let a: Vec<_> = (0..4).map(|t| post(&store, src(1), t, &mut rng)).collect();
        let b: Vec<_> = (4..6).map(|t| post(&store, src(2), t, &mut rng)).collect();
        // Full: A 4, B 2. C is new: A holds the most, so A's oldest goes.
        let c = post(&store, src(3), 6, &mut rng);
        assert!(store.read(a[0]).is_err());
        assert_eq!(held_by(&store, &a), 3);
        assert_eq!(held_by(&store, &b), 2);
        // B again: A holds 3, as many as B will: a tie goes against the newcomer, so B replaces its own oldest.
        let b2 = post(&store, src(2), 7, &mut rng);
        assert!(store.read(b[0]).is_err() && store.read(b2).is_ok());
        assert_eq!(held_by(&store, &a), 3);
        assert!(store.read(c).is_ok());
    }

    #[test]
    fn a_source_past_its_share_replaces_its_own_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReportStore::open(
            dir.path(),
            ReportLimits {
                max_per_source: 3,
                ..limits(100)
            },
        )
        .unwrap();
        let mut rng = rng();
        let other = post(&store, src(2), 0, &mut rng);
        let mine: Vec<_> = (1..=5).map(|t| post(&store, src(1), t, &mut rng)).collect();
        assert_eq!(store.list().len(), 4);
        assert!(store.read(other).is_ok());
        assert_eq!(held_by(&store, &mine[2..]), 3, "the newest three are kept");

        // A lowered per-source bound applies at start, to the oldest.
        drop(store);
        let store = ReportStore::open(
            dir.path(),
            ReportLimits {
                max_per_source: 1,
                ..limits(100)
            },
        )
        .unwrap();
        assert_eq!(store.list().len(), 2);
        assert!(store.read(mine[4]).is_ok() && store.read(other).is_ok());
    }

    #[test]
    fn reports_stored_before_sources_were_kept_count_alone() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = "0123456789abcdef0123456789abcdef";
        std::fs::write(
            dir.path().join(format!("{legacy}.json")),
            format!(r#"{{"id":"{legacy}","created":1,"report":{{"old":true}}}}"#),
        )
        .unwrap();
        let store = ReportStore::open(dir.path(), limits(3)).unwrap();
        let mut rng = rng();
        let legacy: ReportId = legacy.parse().unwrap();
        let read: serde_json::Value = serde_json::from_slice(&store.read(legacy).unwrap()).unwrap();
        assert_eq!(read["report"]["old"], true);
        for t in 2..10 {
            post(&store, src(1), t, &mut rng);
        }
        assert!(
            store.read(legacy).is_ok(),
            "one source cannot push out a report of nobody's either"
        );
    }

    #[test]
    fn sources_read_back_as_written() {
        for ip in ["192.0.2.1", "2001:db8:1:2:aaaa::1", "::1", "::ffff:192.0.2.9"] {
            let source = Source::from(ip.parse::<std::net::IpAddr>().unwrap());
            assert_eq!(parse_source(&source.to_string()), Some(source), "{ip}");
        }
        for bad in [
            "",
            "192.0.2.1/32",
            "2001:db8::/48",
            "2001:db8::",
            "x/64",
            "192.0.2.1/64",
        ] {
            assert_eq!(parse_source(bad), None, "{bad:?}");
        }
    }
}
