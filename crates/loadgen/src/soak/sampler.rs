//! Samples of the server's RSS, descriptors and CPU from `/proc/<pid>`, printed as a table row each, and the verdict
//! over them at the end.

use std::fmt;
use std::sync::atomic::Ordering;

use anyhow::Context;

use crate::Stats;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 a second on every Linux architecture.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The server before any load.
    Before,
    /// Opening the held allocations and sockets.
    Ramp,
    /// Everything held, before the end of the warm-up.
    WarmUp,
    Load,
    /// The load closed.
    After,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Phase::Before => "before",
            Phase::Ramp => "ramp",
            Phase::WarmUp => "warm-up",
            Phase::Load => "load",
            Phase::After => "after",
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: u64,
    phase: Phase,
    rss_kib: u64,
    fds: usize,
    cpu_ticks: u64,
    echoes_received: u64,
}

#[derive(Debug)]
pub(crate) struct Table {
    pid: u32,
    duration: u64,
    warmup: u64,
    after: u64,
    samples: Vec<Sample>,
}

impl Table {
    pub fn new(pid: u32, duration: u64, warmup: u64, after: u64) -> Self {
        Table {
            pid,
            duration,
            warmup,
            after,
            samples: Vec::new(),
        }
    }

    /// Reads the server's figures and prints them with the load generator's own counters as one row.
    pub fn sample(&mut self, t: u64, phase: Phase, stats: &Stats) -> anyhow::Result<()> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("server {} is gone", self.pid))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count();
        let cpu_ticks = cpu_ticks(&self.pid.to_string())?;
        let sample = Sample {
            t,
            phase,
            rss_kib,
            fds,
            cpu_ticks,
            echoes_received: stats.echoes_received.load(Ordering::Relaxed),
        };
        if self.samples.is_empty() {
            println!(
                "{:>5} {:<8} {:>8} {:>6} {:>6} {:>7} {:>7} {:>7} {:>8}",
                "t s", "phase", "RSS MiB", "fds", "CPU %", "allocs", "sockets", "echo/s", "failures"
            );
        }
        let (cpu, echo) = match self.samples.last() {
            Some(prev) if t > prev.t => {
                let dt = (t - prev.t) as f64;
                let cpu = sample.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / TICKS_PER_SECOND / dt * 100.0;
                let echo = sample.echoes_received.saturating_sub(prev.echoes_received) as f64 / dt;
                (cpu, echo)
            }
            _ => (0.0, 0.0),
        };
        let allocs =
            stats.allocations_held.load(Ordering::Relaxed) + stats.churn_allocations_held.load(Ordering::Relaxed);
        let sockets = stats.sockets_held.load(Ordering::Relaxed) + stats.churn_sockets_held.load(Ordering::Relaxed);
        println!(
            "{:>5} {:<8} {:>8.1} {:>6} {:>6.1} {:>7} {:>7} {:>7.0} {:>8}",
            t,
            phase,
            mib(rss_kib),
            fds,
            cpu,
            allocs,
            sockets,
            echo,
            stats.failures()
        );
        self.samples.push(sample);
        Ok(())
    }

    /// Growth from the end of the warm-up to the end of the load, and the server after the load against before it.
    pub fn verdict(&self, stats: &Stats) {
        let c = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        println!(
            "load generator: {} allocations opened ({} failed, {} held ones lost, {} deletes unanswered), {} \
             sockets opened ({} failed, {} held ones dropped), {} churn ticks skipped; {} Refreshes, {} ChannelBind \
             renewals, {} stale nonces; {} heartbeat pings, {} stream messages read; relay stream {} sent, {} echoed \
             ({:.2} % lost); load generator CPU {:.1} s",
            c(&stats.allocations_opened),
            c(&stats.allocation_failures),
            c(&stats.allocations_lost),
            c(&stats.delete_failures),
            c(&stats.sockets_opened),
            c(&stats.socket_failures),
            c(&stats.sockets_dropped),
            c(&stats.churn_skipped),
            c(&stats.refreshes),
            c(&stats.rebinds),
            c(&stats.stale_nonces),
            c(&stats.pings),
            c(&stats.messages),
            c(&stats.echoes_sent),
            c(&stats.echoes_received),
            100.0 * c(&stats.echoes_sent).saturating_sub(c(&stats.echoes_received)) as f64
                / c(&stats.echoes_sent).max(1) as f64,
            cpu_ticks("self").unwrap_or(0) as f64 / TICKS_PER_SECOND,
        );
        let before = self.samples.first();
        // The end of the warm-up: its last sample, or the first of the load if the ramp took the whole warm-up.
        let warm = (self.samples.iter().rev().find(|s| s.phase == Phase::WarmUp))
            .or_else(|| self.samples.iter().find(|s| s.phase == Phase::Load));
        let end = self.samples.iter().rev().find(|s| s.t <= self.duration);
        let after = self.samples.last().filter(|s| s.phase == Phase::After);
        let (Some(before), Some(warm), Some(end), Some(after)) = (before, warm, end, after) else {
            println!(
                "VERDICT: incomplete run (no load phase after {} s of warm-up, or no sample after the load)",
                self.warmup
            );
            return;
        };
        let load: Vec<&Sample> = self.samples.iter().filter(|s| s.t >= warm.t && s.t <= end.t).collect();
        let rss_min = load.iter().map(|s| s.rss_kib).min().unwrap_or(warm.rss_kib);
        let rss_max = load.iter().map(|s| s.rss_kib).max().unwrap_or(warm.rss_kib);
        let fds_min = load.iter().map(|s| s.fds).min().unwrap_or(warm.fds);
        let fds_max = load.iter().map(|s| s.fds).max().unwrap_or(warm.fds);
        let rss_growth = mib(end.rss_kib) - mib(warm.rss_kib);
        let rss_growth_pct = 100.0 * rss_growth / mib(warm.rss_kib).max(0.001);
        let slope = slope_mib_per_hour(&load);
        let fd_growth = end.fds as i64 - warm.fds as i64;
        // Flat: RSS within 5 % and descriptors within 2 % (the churn's open items vary by a few from one sample to
        // the next) from the end of the warm-up to the end of the load.
        let fds_flat = fd_growth.unsigned_abs() as f64 <= (warm.fds as f64 * 0.02).max(10.0);
        let trend = match (rss_growth_pct, fds_flat) {
            (g, true) if g.abs() <= 5.0 => "FLAT",
            (g, _) if g < -5.0 => "FALLING",
            _ => "GROWING",
        };
        // Back: what the load added is at least 80 % gone, and the descriptors are where they were.
        let added = mib(end.rss_kib) - mib(before.rss_kib);
        let left = mib(after.rss_kib) - mib(before.rss_kib);
        let back = left <= 0.2 * added.max(0.0) + 1.0 && after.fds <= before.fds + 2;
        println!(
            "RSS {:.1} MiB before, {:.1} at the end of the warm-up (t={} s), {:.1} at the end of the load (t={} s), \
             {:.1} after (t={} s, {} s after the load); range during the load {:.1}–{:.1}",
            mib(before.rss_kib),
            mib(warm.rss_kib),
            warm.t,
            mib(end.rss_kib),
            end.t,
            mib(after.rss_kib),
            after.t,
            self.after,
            mib(rss_min),
            mib(rss_max),
        );
        println!(
            "fds {} before, {} at the end of the warm-up, {} at the end of the load, {} after; range during the load \
             {}–{}",
            before.fds, warm.fds, end.fds, after.fds, fds_min, fds_max
        );
        println!(
            "VERDICT: {} — RSS {:+.1} MiB ({:+.1} %) from the end of the warm-up to the end of the load (trend \
             {:+.1} MiB/h), fds {:+}; {} — after the load RSS {:.1} MiB against {:.1} MiB before ({:+.1} MiB), fds {} \
             against {}",
            trend,
            rss_growth,
            rss_growth_pct,
            slope,
            fd_growth,
            if back { "BACK" } else { "NOT BACK" },
            mib(after.rss_kib),
            mib(before.rss_kib),
            left,
            after.fds,
            before.fds,
        );
    }
}

/// utime + stime of a process (all its threads), in ticks.
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces: utime and stime are the 14th
    // and 15th fields of the line, the 12th and 13th after ")".
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    Ok(after_comm
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Least-squares slope of RSS over time, MiB per hour.
fn slope_mib_per_hour(samples: &[&Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.t as f64).sum::<f64>() / n;
    let mean_r = samples.iter().map(|s| mib(s.rss_kib)).sum::<f64>() / n;
    let cov: f64 = samples
        .iter()
        .map(|s| (s.t as f64 - mean_t) * (mib(s.rss_kib) - mean_r))
        .sum();
    let var: f64 = samples.iter().map(|s| (s.t as f64 - mean_t).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var * 3600.0
    }
}
