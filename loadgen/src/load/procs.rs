//! What a run costs the processes it loads: CPU time (utime + stime from
//! `/proc/PID/stat`) and resident memory (`VmRSS` from `/proc/PID/status`),
//! read at the start and the end of a measured window.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A process to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Watched {
    /// What it is (`gw-1`, `bridge-1`, `haproxy`, `redis`, `rabbitmq`,
    /// `warren-load`, or a name given on the command line).
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User plus system CPU time so far, in seconds.
    pub cpu_s: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// Reads a process's CPU time and RSS; `None` when it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let cpu_s = (utime + stime) as f64 / clock_ticks();
    Some(Usage { cpu_s, rss_kib: rss_kib(pid)? })
}

/// Whether a process exists and has not exited (a zombie has).
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when it cannot be asked).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A measured window over some processes.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    start: Vec<(Watched, Option<Usage>)>,
}

/// What one process used over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcWindow {
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// CPU seconds used in the window.
    pub cpu_s: f64,
    /// CPU used as a share of one core (100 = one core busy).
    pub cpu_pct: f64,
    /// RSS at the start, KiB.
    pub rss_kib_start: u64,
    /// RSS at the end, KiB.
    pub rss_kib_end: u64,
}

impl Meter {
    /// Starts a window now.
    pub fn start(watched: &[Watched]) -> Self {
        Self { started: Instant::now(), start: watched.iter().map(|w| (w.clone(), usage(w.pid))).collect() }
    }

    /// How long the window has been open.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the window: each process's use over it (processes that were
    /// gone at either end are left out).
    pub fn stop(&self) -> Vec<ProcWindow> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        self.start
            .iter()
            .filter_map(|(watched, start)| {
                let (start, end) = ((*start)?, usage(watched.pid)?);
                let cpu_s = round3(end.cpu_s - start.cpu_s);
                Some(ProcWindow {
                    name: watched.name.clone(),
                    pid: watched.pid,
                    cpu_s,
                    cpu_pct: (cpu_s / wall * 1000.0).round() / 10.0,
                    rss_kib_start: start.rss_kib,
                    rss_kib_end: end.rss_kib,
                })
            })
            .collect()
    }
}

/// CPU seconds of the processes whose name starts with `prefix`.
pub fn cpu_of(windows: &[ProcWindow], prefix: &str) -> f64 {
    round3(windows.iter().filter(|w| w.name.starts_with(prefix)).map(|w| w.cpu_s).sum())
}

/// Rounds to 3 decimals (ms precision for seconds).
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let usage = usage(std::process::id()).expect("our own /proc entry");
        assert!(usage.rss_kib > 0);
        assert!(usage.cpu_s >= 0.0);
        assert!(super::usage(u32::MAX).is_none());
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX));
    }
}
