//! Draining a node of a cluster (docs/scaling.md): `traverse drain`, SIGUSR1, or SIGTERM when `signal.redis` is
//! set. The signaling side hands its rooms to the other nodes at once (`web::Web::drain`); the TURN side refuses
//! new allocations — 300 Try Alternate naming the least loaded live node, else 508 — and keeps the existing ones
//! until they end or `cluster.drain_time` runs out; then the process exits.
//!
//! `traverse drain` signals the running process (SIGUSR1, its pid from `cluster.pid_file`) rather than calling an
//! HTTP endpoint: the operating system says who may drain a node (its user, or root), nothing new listens on a port
//! that faces browsers, and it works the same from a shell, a supervisor (`systemctl kill -s USR1`) or a container
//! hook (`docker exec`, a Kubernetes `preStop` exec).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A drain with no allocation left still lasts this long, so the sockets' 4202 closes and the registry's news
/// (this node gone) have gone out before the process stops.
const SETTLE: Duration = Duration::from_secs(1);

/// `traverse drain`'s options.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The pid file `traverse serve` writes (`cluster.pid_file`, `--pid-file`).
    #[arg(long, env = "TRAVERSE_PID_FILE", conflicts_with = "pid")]
    pid_file: Option<PathBuf>,
    /// The process to drain, instead of a pid file.
    #[arg(long)]
    pid: Option<i32>,
    /// Wait until the process has exited (at most `--timeout` seconds).
    #[arg(long)]
    wait: bool,
    /// With `--wait`: seconds to wait at most (cluster.drain_time and a margin).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Whether process `pid` runs the same executable file as this process (same device and inode).
fn runs_this_binary(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |path: String| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    id(format!("/proc/{pid}/exe")).is_some_and(|theirs| Some(theirs) == id("/proc/self/exe".to_owned()))
}

/// Sends SIGUSR1 to a running `traverse serve`, and with `--wait` waits until it has exited.
pub fn run(args: DrainArgs) -> anyhow::Result<()> {
    let pid = match (args.pid, &args.pid_file) {
        (Some(pid), _) => pid,
        (None, Some(file)) => read_pid(file)?,
        (None, None) => bail!("say which process to drain: --pid-file FILE (cluster.pid_file) or --pid PID"),
    };
    // A stale pid file may name a pid reused by another program: only a traverse process is signalled — one named
    // traverse, or running this very binary whatever it was renamed to.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .with_context(|| format!("no process {pid} (is traverse running?)"))?;
    if comm.trim() != "traverse" && !runs_this_binary(pid) {
        bail!("process {pid} is {:?}, not traverse: a stale pid file?", comm.trim());
    }
    let target = rustix::process::Pid::from_raw(pid).context("not a process id")?;
    rustix::process::kill_process(target, rustix::process::Signal::USR1)
        .with_context(|| format!("cannot signal process {pid}"))?;
    println!("draining traverse (pid {pid}): its rooms move to the other nodes, it exits once its TURN allocations have ended or cluster.drain_time has run out");
    if !args.wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() >= deadline {
            bail!("process {pid} is still running after {} s", args.timeout);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("traverse (pid {pid}) has exited");
    Ok(())
}

fn read_pid(file: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the pid file {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", file.display()))
}

/// The pid file of a running server, removed when it stops (unless another process wrote it meanwhile).
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn write(path: &Path) -> anyhow::Result<PidFile> {
        let pid = std::process::id();
        std::fs::write(path, format!("{pid}\n"))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0).is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The drain of this process, driven by the signal loop: started once, polled once a second.
pub struct Drain {
    drain_time: Duration,
    clustered: bool,
    web: web::Web,
    /// Shared by the workers: counts the allocations held (charged) now, and refuses new ones while draining.
    quotas: Arc<turn::Quotas>,
    started: Option<Instant>,
}

impl Drain {
    pub fn new(drain_time: Duration, clustered: bool, web: web::Web, quotas: Arc<turn::Quotas>) -> Self {
        Self {
            drain_time,
            clustered,
            web,
            quotas,
            started: None,
        }
    }

    /// Starts the drain; false when there is none to start (not in a cluster, or already draining), which a
    /// SIGTERM takes as "stop now".
    pub fn start(&mut self, why: &str, now: Instant) -> bool {
        if self.started.is_some() || !self.clustered {
            return false;
        }
        self.web.drain();
        self.started = Some(now);
        // systemd shows the unit as deactivating for the drain's length.
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("draining"),
            ],
        );
        self.quotas.drain(self.alternates());
        let allocations = self.quotas.total();
        tracing::info!(
            drain_time = self.drain_time.as_secs(),
            allocations,
            "{why}: draining — new TURN allocations are sent to other nodes, the {allocations} held are kept until they end or the drain time runs out"
        );
        true
    }

    /// Once a second: refreshes where new allocations are sent; true when the process should exit now.
    pub fn poll(&mut self, now: Instant) -> bool {
        let Some(started) = self.started else { return false };
        self.quotas.drain(self.alternates());
        let allocations = self.quotas.total();
        if now.duration_since(started) >= self.drain_time {
            tracing::info!(
                allocations,
                "drain time over: stopping, {allocations} TURN allocations cut"
            );
            return true;
        }
        if allocations == 0 && now.duration_since(started) >= SETTLE {
            tracing::info!("drained: no TURN allocation left, stopping");
            return true;
        }
        false
    }

    fn alternates(&self) -> Vec<turn::Alternate> {
        self.web
            .cluster_turn_urls()
            .iter()
            .filter_map(|u| alternate(u))
            .collect()
    }
}

/// A TURN URL of the registry as a redirect target: `turn:IP:PORT?transport=udp|tcp`, `turns:IP:PORT?…` (TLS).
/// ALTERNATE-SERVER carries an address, so a URL naming a host name is no target.
fn alternate(url: &str) -> Option<turn::Alternate> {
    let (scheme, rest) = url.split_once(':')?;
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tcp = query.split('&').any(|p| p == "transport=tcp");
    let transport = match (scheme, tcp) {
        ("turn", false) => turn::Transport::Udp,
        ("turn", true) => turn::Transport::Tcp,
        ("turns", _) => turn::Transport::Tls,
        _ => return None,
    };
    let addr: SocketAddr = authority.parse().ok()?;
    Some(turn::Alternate { transport, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_binary_is_still_known_by_its_executable() {
        assert!(
            runs_this_binary(std::process::id() as i32),
            "this process runs this binary"
        );
        assert!(!runs_this_binary(1), "pid 1 runs another");
    }

    #[test]
    fn registry_urls_become_alternates_by_transport() {
        let a = |u| alternate(u).map(|a| (a.transport, a.addr.to_string()));
        assert_eq!(
            a("turn:198.51.100.7:3478?transport=udp"),
            Some((turn::Transport::Udp, "198.51.100.7:3478".into()))
        );
        assert_eq!(
            a("turn:[2001:db8::1]:3478?transport=tcp"),
            Some((turn::Transport::Tcp, "[2001:db8::1]:3478".into()))
        );
        assert_eq!(
            a("turns:198.51.100.7:5349?transport=tcp"),
            Some((turn::Transport::Tls, "198.51.100.7:5349".into()))
        );
        assert_eq!(a("turn:turn.example.com:3478?transport=udp"), None);
        assert_eq!(a("stun:198.51.100.7:3478"), None);
    }
}
