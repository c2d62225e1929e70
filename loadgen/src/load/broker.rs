//! What the RabbitMQ node behind a stack holds, read before and after a run
//! that creates rooms: its open file descriptors (`/proc/PID/fd`) against
//! its limit, its AMQP connections and channels, its queues, and its memory.
//!
//! Rooms have cost the broker in ways a client never sees: a stream queue
//! per room held 2-3 descriptors for as long as it existed, and a channel
//! per subscription counted against the bridge connection's 2,047. When a
//! broker runs out, sends time out with no other sign, so the run reads the
//! broker itself. Every figure that cannot be read (no `rabbitmqctl`, a
//! node that no longer answers, no permission on `/proc`) is `null`, with
//! the reason under `unreadable`: a broker that stopped answering is itself
//! a result.
//!
//! Which node: the private one a stack of ours started (its pid and name are
//! known; `rabbitmqctl` needs its Erlang cookie, which lives in the `HOME`
//! the node runs with, read from `/proc/PID/environ`); a node named with
//! `--broker-node`; else the machine's (`pgrep -u rabbitmq beam.smp`, and
//! the `rabbitmqctl` on `PATH`, which finds its cookie itself).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::process::Command;

use crate::load::procs;
use crate::load::target::Target;

/// How long one `rabbitmqctl` call may take: a broker out of descriptors
/// may never answer.
const CTL_LIMIT: Duration = Duration::from_secs(60);
/// The variables of the node's environment that `rabbitmqctl` needs to
/// reach it (the cookie under `HOME`; no `/etc` env file of another node).
const CTL_ENV: &[&str] = &["HOME", "RABBITMQ_CONF_ENV_FILE", "ERL_EPMD_ADDRESS"];

/// The broker a run reads, and how to ask it.
#[derive(Debug, Clone)]
pub struct Broker {
    /// The Erlang VM's process id, when found.
    pid: Option<u32>,
    /// The node name for `rabbitmqctl -n`; `None` for the machine's default.
    node: Option<String>,
    /// The `rabbitmqctl` to run.
    ctl: PathBuf,
    /// Environment for `rabbitmqctl`, from the node's own.
    env: Vec<(String, OsString)>,
    /// How it was found, for the summary.
    found: &'static str,
}

impl Broker {
    /// The broker of `target`: its private node, the node named `node`, or
    /// the machine's.
    pub async fn locate(target: &Target, node: Option<&str>) -> Self {
        if let Some(rabbit) = target.own.as_ref().and_then(|own| own.rabbit.as_ref()) {
            let pid = rabbit.pid();
            let env = pid.map(node_env).unwrap_or_default();
            let node = Some(rabbit.node_name().to_owned());
            return Self { pid, node, ctl: private_ctl(), env, found: "the stack's private node" };
        }
        if let Some(node) = node {
            let pid = find_beam(|cmdline, environ| {
                cmdline.contains(node) || environ.contains(&format!("RABBITMQ_NODENAME={node}"))
            });
            let env = pid.map(node_env).unwrap_or_default();
            return Self { pid, node: Some(node.to_owned()), ctl: private_ctl(), env, found: "--broker-node" };
        }
        let pid = machine_beam().await;
        Self { pid, node: None, ctl: PathBuf::from("rabbitmqctl"), env: Vec::new(), found: "the machine's broker" }
    }

    /// One reading: descriptors, connections, channels, queues, memory.
    pub async fn snapshot(&self) -> Value {
        let mut unreadable = Map::new();
        let mut out = Map::new();
        let pid = self.pid.ok_or_else(|| "no beam.smp process found".to_owned());
        let (channels, connections, queues, status) = tokio::join!(
            self.count_lines(&["list_channels", "pid"]),
            self.count_lines(&["list_connections", "pid"]),
            self.count_lines(&["list_queues", "name"]),
            self.ctl(&["status", "--formatter", "json"]),
        );
        let memory = status.and_then(|page| memory_of(&page));
        let mut put = |key: &str, value: Result<u64, String>| match value {
            Ok(value) => {
                out.insert(key.to_owned(), json!(value));
            }
            Err(reason) => {
                out.insert(key.to_owned(), Value::Null);
                unreadable.insert(key.to_owned(), json!(reason));
            }
        };
        put("fds", pid.clone().and_then(count_fds));
        put("fd_limit", pid.clone().and_then(fd_limit));
        put("rss_kib", pid.clone().and_then(|pid| procs::rss_kib(pid).ok_or_else(|| format!("no /proc/{pid}"))));
        put("connections", connections);
        put("channels", channels);
        put("queues", queues);
        put("memory_bytes", memory);
        out.insert("unreadable".to_owned(), Value::Object(unreadable));
        Value::Object(out)
    }

    /// Which broker, for the summary.
    pub fn describe(&self) -> Value {
        json!({ "pid": self.pid, "node": self.node, "found": self.found })
    }

    /// Runs `rabbitmqctl -q [-n NODE] ARGS` and returns its output.
    async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.ctl);
        command.envs(self.env.iter().map(|(key, value)| (key, value))).arg("-q");
        if let Some(node) = &self.node {
            command.args(["-n", node]);
        }
        command.args(args).stdin(Stdio::null()).kill_on_drop(true);
        let output = tokio::time::timeout(CTL_LIMIT, command.output())
            .await
            .map_err(|_| format!("rabbitmqctl {}: no answer within {CTL_LIMIT:?}", args[0]))?
            .map_err(|error| format!("rabbitmqctl: {error}"))?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(if output.stderr.is_empty() { &output.stdout } else { &output.stderr });
            let first = said.lines().find(|line| !line.trim().is_empty()).unwrap_or("").trim();
            return Err(format!("rabbitmqctl {} failed ({}): {}", args[0], output.status, clip(first, 200)));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The number of rows a `list_*` command prints.
    async fn count_lines(&self, args: &[&str]) -> Result<u64, String> {
        let mut args = args.to_vec();
        args.push("--no-table-headers");
        let page = self.ctl(&args).await?;
        Ok(page.lines().filter(|line| !line.trim().is_empty()).count() as u64)
    }
}

/// `after - before` for every number both readings have.
pub fn delta(before: &Value, after: &Value) -> Value {
    let mut out = Map::new();
    for key in ["fds", "rss_kib", "connections", "channels", "queues", "memory_bytes"] {
        let value = match (before[key].as_i64(), after[key].as_i64()) {
            (Some(b), Some(a)) => json!(a - b),
            _ => Value::Null,
        };
        out.insert(key.to_owned(), value);
    }
    Value::Object(out)
}

/// The `rabbitmqctl` for a node of our own: the real script, not the
/// `/usr/sbin` wrapper, which would switch to the `rabbitmq` user and its
/// cookie.
fn private_ctl() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARREN_RABBITMQ_BIN_DIR") {
        return Path::new(&dir).join("rabbitmqctl");
    }
    let debian = Path::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
    if debian.exists() { debian.to_path_buf() } else { PathBuf::from("rabbitmqctl") }
}

/// The variables of [`CTL_ENV`] from a process's environment.
fn node_env(pid: u32) -> Vec<(String, OsString)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|byte| *byte == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (key, value) = text.split_once('=')?;
            CTL_ENV.contains(&key).then(|| (key.to_owned(), OsString::from(value)))
        })
        .collect()
}

/// The first `beam.smp` process whose command line and environment (as
/// text, NULs as spaces) `matches` accepts.
fn find_beam(matches: impl Fn(&str, &str) -> bool) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.filter_map(Result::ok).filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        let read = |file: &str| {
            let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
            String::from_utf8_lossy(&bytes).replace('\0', " ")
        };
        let cmdline = read("cmdline");
        cmdline.contains("beam.smp") && matches(&cmdline, &read("environ"))
    })
}

/// The machine's broker: `pgrep -u rabbitmq beam.smp`, the first one.
async fn machine_beam() -> Option<u32> {
    let output = Command::new("pgrep").args(["-u", "rabbitmq", "beam.smp"]).stdin(Stdio::null()).output().await.ok()?;
    String::from_utf8_lossy(&output.stdout).lines().next()?.trim().parse().ok()
}

/// Open descriptors of a process.
fn count_fds(pid: u32) -> Result<u64, String> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|error| format!("/proc/{pid}/fd: {error}"))?;
    Ok(entries.count() as u64)
}

/// The soft limit on a process's open files.
fn fd_limit(pid: u32) -> Result<u64, String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .map_err(|error| format!("/proc/{pid}/limits: {error}"))?;
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no open-files limit in /proc/{pid}/limits"))
}

/// The node's total memory from `rabbitmqctl status --formatter json`, as
/// the node itself counts it (`vm_memory_calculation_strategy`, RSS by
/// default).
fn memory_of(page: &str) -> Result<u64, String> {
    let status: Value = serde_json::from_str(page).map_err(|error| format!("status is not JSON: {error}"))?;
    let total = &status["memory"]["total"];
    let strategy = status["vm_memory_calculation_strategy"].as_str().unwrap_or("rss");
    total[strategy]
        .as_u64()
        .or_else(|| total["rss"].as_u64())
        .or_else(|| total.as_u64())
        .ok_or_else(|| "no memory.total in status".to_owned())
}

/// At most `max` characters of `text`.
fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_follows_the_nodes_own_strategy() {
        let page = r#"{"memory":{"total":{"erlang":10,"rss":30,"allocated":20}},"vm_memory_calculation_strategy":"allocated"}"#;
        assert_eq!(memory_of(page), Ok(20));
        assert_eq!(memory_of(r#"{"memory":{"total":{"rss":30}}}"#), Ok(30));
        assert!(memory_of("Error: unable to perform an operation").is_err());
    }

    #[test]
    fn deltas_of_readable_figures_only() {
        let before = json!({"fds": 40, "queues": 2, "channels": null, "memory_bytes": 100});
        let after = json!({"fds": 7840, "queues": 3002, "channels": 5, "memory_bytes": 90});
        let change = delta(&before, &after);
        assert_eq!(change["fds"], 7800);
        assert_eq!(change["queues"], 3000);
        assert_eq!(change["channels"], Value::Null);
        assert_eq!(change["memory_bytes"], -10);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(count_fds(pid).is_ok_and(|fds| fds > 0));
        assert!(fd_limit(pid).is_ok_and(|limit| limit > 0));
        assert!(count_fds(u32::MAX).is_err());
    }
}
