//! The process's CPU time, memory, descriptors and start time, read from `/proc/self` at scrape time. Own code
//! because it is five small files and the standard metric names; prometheus-client has no process collector, and
//! the crates that do bring their own registry or a dozen dependencies.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::encode::{counter_f64, gauge, Result};

/// What `/proc/self` says of this process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_unix: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

/// USER_HZ, the unit of the times in `/proc` (proc(5)): 100 on every Linux architecture in use. `sysconf` would
/// ask, but needs `unsafe`, which the workspace keeps to one I/O module.
const USER_HZ: u64 = 100;

impl ProcessStats {
    /// Reads `/proc/self`; `None` off Linux or if `/proc` is not mounted.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let mut stats = parse_stat(&stat, USER_HZ, boot_time(&boot)?)?;
        // RSS from `status` (kB) rather than `stat` (pages): no page size to ask for.
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        stats.resident_bytes = resident_bytes(&status)?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        stats.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l));
        Some(stats)
    }
}

/// `VmRSS` of `/proc/self/status`, in bytes.
pub fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Fields of `/proc/self/stat` (proc(5)): after the command name in parentheses (which may hold spaces and
/// parentheses itself, hence the last `)`), field 3 is the state; utime is 14, stime 15, starttime 22 (ticks after
/// boot), vsize 23 (bytes). RSS is left to [`resident_bytes`].
pub fn parse_stat(stat: &str, ticks_per_second: u64, boot_time_unix: u64) -> Option<ProcessStats> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    let ticks = ticks_per_second.max(1) as f64;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        resident_bytes: 0,
        virtual_bytes: field(23)?,
        start_time_unix: boot_time_unix as f64 + field(22)? as f64 / ticks,
        open_fds: 0,
        max_fds: None,
    })
}

/// `btime` of `/proc/stat`: when the system booted, in Unix seconds.
pub fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
pub fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.get("Max open files".len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        counter_f64(
            &mut enc,
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            p.cpu_seconds,
        )?;
        gauge(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_bytes,
        )?;
        gauge(
            &mut enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_bytes,
        )?;
        gauge(&mut enc, "process_open_fds", "Open file descriptors", p.open_fds)?;
        if let Some(max) = p.max_fds {
            gauge(
                &mut enc,
                "process_max_fds",
                "The soft limit of open file descriptors",
                max,
            )?;
        }
        gauge(
            &mut enc,
            "process_start_time_seconds",
            "When the process started, in Unix seconds",
            p.start_time_unix,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_whose_name_holds_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime
        // cstime priority nice threads itrealvalue starttime vsize rss ...
        let stat = "4242 (trav erse) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 1000 \
                    123456789 512 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(stat, 100, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.start_time_unix, 1_700_000_010.0);
        assert_eq!(parse_stat("4242 (cut short) S 1 2", 100, 0), None);
        assert_eq!(parse_stat("no parenthesis", 100, 0), None);
        assert_eq!(
            resident_bytes("Name:\ttraverse\nVmRSS:\t   20480 kB\nThreads: 3\n"),
            Some(20 * 1024 * 1024)
        );
        assert_eq!(resident_bytes("Name:\tkthread\n"), None);
    }

    #[test]
    fn boot_time_and_the_descriptor_limit() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(boot_time("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
    }

    #[test]
    fn this_process_reads_itself() {
        let p = ProcessStats::read().unwrap();
        assert!(
            p.resident_bytes > 0 && p.open_fds > 0 && p.start_time_unix > 1.6e9,
            "{p:?}"
        );
    }
}
