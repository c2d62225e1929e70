//! `docs/benchmarks.md`'s generated part, from the JSON summary each
//! scenario of `scripts/bench` wrote, and the facts of the machine it ran on
//! (`warren-load report`).
//!
//! The text is, to the byte, what the Python (`scripts/bench_report.py`,
//! gone since) rendered before it moved here; `tests/report.rs` compares
//! with its renderings of the same summaries. Numbers are written as
//! Python's `str`, `round` and format specs wrote them, by the small helpers
//! at the end of this file, so that a report rendered again differs from the
//! last one only where the figures do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The markers around the generated part of the output file.
pub const BEGIN: &str = "<!-- bench:begin -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- bench:end -->";

/// The summaries a full report needs, in the order `scripts/bench` runs them.
const FULL: [&str; 6] = ["fanout", "idle", "storm", "drain", "rooms", "crowd"];
/// The slow-reader pair: all that `--slow-pair` needs.
const PAIR: [&str; 2] = ["fanout-steady", "fanout-slow"];
/// Summaries whose sections are left out (or say "not run") when missing.
const OPTIONAL: [&str; 4] = ["fanout-steady", "fanout-slow", "fanout-sse", "idle-sse"];
/// The scenarios in the load-average line, in this order when present.
const LOAD_ORDER: [&str; 8] = ["fanout", "fanout-sse", "idle", "idle-sse", "storm", "drain", "rooms", "crowd"];

/// The machine the benchmarks ran on: the table at the report's top.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// When the measurements began (`2026-12-05T15:03:49Z`).
    #[serde(default)]
    pub started: String,
    /// Logical CPUs.
    pub nproc: Option<u64>,
    /// The CPU's model name, or `unknown`.
    pub model: String,
    /// Memory in GiB, to one decimal.
    pub memory_gib: Option<f64>,
    /// `uname -r`.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `haproxy -v`'s first line. Not in the tables; kept with the facts, as
    /// the Python had it, for whoever reads them as JSON.
    #[serde(default)]
    pub haproxy: String,
    /// The short commit, with ` + uncommitted changes` when tracked files
    /// differ from it.
    pub revision: String,
}

impl Machine {
    /// This machine's facts, read from `/proc` and a few commands (each
    /// empty when it cannot run); `git` runs in the current directory.
    pub fn read(started: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let processors =
            cpuinfo.lines().filter(|line| line.split(':').next().is_some_and(|key| key.trim() == "processor")).count();
        let nproc =
            if processors > 0 { Some(processors) } else { std::thread::available_parallelism().ok().map(usize::from) };
        let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        Self {
            started: started.to_owned(),
            nproc: nproc.and_then(|n| u64::try_from(n).ok()),
            model: model_name(&cpuinfo).unwrap_or("unknown").to_owned(),
            memory_gib: mem_total_kib(&meminfo).map(|kib| round_to(kib as f64 / 1_048_576.0, 1)),
            kernel: sh("uname", &["-r"]),
            rustc: sh("rustc", &["--version"]),
            haproxy: sh("haproxy", &["-v"]).lines().next().unwrap_or_default().to_owned(),
            revision: sh("git", &["rev-parse", "--short", "HEAD"]) + if dirty { " + uncommitted changes" } else { "" },
        }
    }
}

/// A command's standard output, trimmed; empty when it cannot start.
fn sh(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// What `model name\s*:\s*(.*)` finds first in `/proc/cpuinfo`.
fn model_name(cpuinfo: &str) -> Option<&str> {
    cpuinfo.match_indices("model name").find_map(|(at, key)| {
        let rest = cpuinfo[at + key.len()..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.find('\n').map_or(rest, |end| &rest[..end]))
    })
}

/// What `MemTotal:\s*(\d+)` finds first in `/proc/meminfo`, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.match_indices("MemTotal:").find_map(|(at, key)| {
        let rest = meminfo[at + key.len()..].trim_start();
        let digits = rest.find(|c: char| !c.is_ascii_digit()).map_or(rest, |end| &rest[..end]);
        digits.parse().ok()
    })
}

/// The scenarios' summaries by name (`fanout` for `fanout.json`).
#[derive(Debug, Clone, Default)]
pub struct Summaries(pub BTreeMap<String, Value>);

impl Summaries {
    /// Reads `DIR/NAME.json` for the report's scenarios: each of the full
    /// report's (or the pair's, for `--slow-pair`) must be there; the pair
    /// and the event-stream runs are read when they are.
    ///
    /// # Errors
    /// When a needed summary is missing, or one is not JSON.
    pub fn read(dir: &Path, slow_pair: bool) -> anyhow::Result<Self> {
        let needed: &[&str] = if slow_pair { &PAIR } else { &FULL };
        let mut summaries = BTreeMap::new();
        for name in needed.iter().chain(&OPTIONAL) {
            let path = dir.join(format!("{name}.json"));
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !needed.contains(name) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let summary = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            summaries.insert((*name).to_owned(), summary);
        }
        Ok(Self(summaries))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    fn need(&self, name: &str) -> anyhow::Result<&Value> {
        self.get(name).ok_or_else(|| anyhow!("no {name}.json"))
    }
}

/// How the report is rendered, besides the summaries and the machine.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `scripts/bench`'s arguments, one string (`--quick`).
    pub args: String,
    /// Only the slow-reader pair's section.
    pub slow_pair: bool,
    /// The pair ran at a rate set by hand (`BENCH_SLOW_RATE`), not at half
    /// the saturation rate.
    pub slow_rate_set: bool,
}

/// The generated part: the lines between the markers, or with
/// `--slow-pair` the whole file.
///
/// # Errors
/// When a summary lacks a figure the tables show, or has one of the wrong
/// type (where the Python raised too).
pub fn render(summaries: &Summaries, machine: &Machine, options: &Options) -> anyhow::Result<String> {
    let mut out = Lines::default();
    let command: Vec<&str> = std::iter::once("scripts/bench").chain(options.args.split_whitespace()).collect();
    out.push(format!("Measured {} by `{}` at revision {}.", machine.started, command.join(" "), machine.revision));
    out.blank();
    if options.slow_pair {
        slow_pair(&mut out, summaries, options.slow_rate_set).context("the slow-reader pair")?;
        return Ok(out.0.join("\n"));
    }
    machine_table(&mut out, summaries, machine)?;
    fanout(&mut out, summaries).context("fanout.json")?;
    slow_pair(&mut out, summaries, options.slow_rate_set).context("the slow-reader pair")?;
    idle(&mut out, summaries).context("idle.json")?;
    event_streams(&mut out, summaries).context("the event-stream runs")?;
    storm(&mut out, summaries).context("storm.json")?;
    drain(&mut out, summaries).context("drain.json")?;
    rooms(&mut out, summaries).context("rooms.json")?;
    crowd(&mut out, summaries).context("crowd.json")?;
    Ok(out.0.join("\n"))
}

/// Writes `section` (from [`render`]) to `out`: with `--slow-pair` as the
/// whole file, else between the markers of the file there (see [`splice`]).
///
/// # Errors
/// When `out` cannot be read (other than missing) or written.
pub fn write(out: &Path, section: &str, slow_pair: bool) -> anyhow::Result<()> {
    let text = if slow_pair {
        section.to_owned()
    } else {
        let existing = match std::fs::read_to_string(out) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
        };
        splice(existing.as_deref(), section)
    };
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

/// The file with `section` between its first begin marker and the end
/// marker after it (the rest kept; no end marker: nothing after the
/// section's), or a new `# Benchmarks` file when `existing` has no begin
/// marker. Line endings become `\n`, as Python's text mode read them.
pub fn splice(existing: Option<&str>, section: &str) -> String {
    let existing = existing.map(|text| text.replace("\r\n", "\n").replace('\r', "\n"));
    match existing.as_deref().and_then(|text| text.split_once(BEGIN)) {
        Some((head, rest)) => {
            let tail = rest.split_once(END).map_or("", |(_, tail)| tail);
            format!("{head}{BEGIN}\n{section}\n{END}{tail}")
        }
        None => format!("# Benchmarks\n\n{BEGIN}\n{section}\n{END}\n"),
    }
}

/// The report's lines, joined with `\n` at the end.
#[derive(Debug, Default)]
struct Lines(Vec<String>);

impl Lines {
    fn push(&mut self, line: impl Into<String>) {
        self.0.push(line.into());
    }

    fn blank(&mut self) {
        self.0.push(String::new());
    }
}

fn machine_table(out: &mut Lines, s: &Summaries, machine: &Machine) -> anyhow::Result<()> {
    let mut loads = Vec::new();
    for name in LOAD_ORDER {
        if let Some(summary) = s.get(name) {
            loads.push(format!("{name} {}", load_average(summary).with_context(|| format!("{name}.json"))?));
        }
    }
    let nproc = machine.nproc.map_or_else(|| "None".to_owned(), |n| n.to_string());
    let memory = machine.memory_gib.map_or_else(|| "None".to_owned(), float_repr);
    out.push("| machine | |");
    out.push("|---|---|");
    out.push(format!("| CPU | {nproc} × {} |", machine.model));
    out.push(format!("| memory | {memory} GiB |"));
    out.push(format!("| kernel | {} |", machine.kernel));
    out.push(format!("| toolchain | {} |", machine.rustc));
    out.push(format!("| load average (1 min) at start → end of each scenario | {} |", loads.join(", ")));
    out.blank();
    let limits = join_strs(at(s.need("fanout")?, "/target/own_stack/limits_env").context("fanout.json")?)?;
    out.push(format!(
        "Everything (RabbitMQ, Redis, bridge, gateways, HAProxy and the load generator) shares these cores, so \
         every figure comes with the CPU time each process used over the same window (utime+stime from \
         `/proc/PID/stat`). Each scenario runs against a stack of its own: its own Redis and RabbitMQ node, \
         release builds, gateways started with their abuse limits raised (`{limits}`), default logging (`info`, \
         to /dev/null)."
    ));
    out.blank();
    Ok(())
}

fn fanout(out: &mut Lines, s: &Summaries) -> anyhow::Result<()> {
    let f = s.need("fanout")?;
    let p = at(f, "/params")?;
    out.push("### Fan-out");
    out.blank();
    out.push(format!(
        "{} subscribers in {} room(s), spread over {} gateways (directly, no balancer), {} publishers, \
         {}-byte texts, 1 bridge. Latency is end to end: the send time travels in the message text and is \
         compared with the clock when the subscriber reads the frame (publish, broker confirm, stream, bridge, \
         gateway, socket, load generator). Step mode: each step sends for {} s; a step fails when p99 > {} ms \
         or deliveries fall behind.",
        grouped(at(f, "/setup/subscribers_joined")?)?,
        py_str(at(p, "/rooms")?),
        py_str(at(f, "/target/own_stack/gateways")?),
        py_str(at(p, "/publishers")?),
        py_str(at(p, "/text_bytes")?),
        general(number(at(p, "/step/duration_s")?)?),
        py_str(at(p, "/step/p99_limit_ms")?),
    ));
    out.blank();
    out.push(
        "| step rate (msg/s) | sent/s | deliveries/s | deliveries per CPU-s (gw+bridge) | p50 | p90 | p99 | max (ms) \
         | behind | CPU per process |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|");
    let no_steps = Vec::new();
    let steps = match f.get("steps") {
        None => &no_steps,
        Some(steps) => array(steps)?,
    };
    for st in steps {
        let lat = at(st, "/latency")?;
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(at(st, "/rate")?, 1)?,
            num(at(st, "/send_rate")?, 1)?,
            num(at(st, "/deliveries_per_s")?, 0)?,
            num(at(st, "/deliveries_per_cpu_s")?, 0)?,
            py_str(at(lat, "/p50_ms")?),
            py_str(at(lat, "/p90_ms")?),
            py_str(at(lat, "/p99_ms")?),
            py_str(at(lat, "/max_ms")?),
            if truthy(at(st, "/behind")?) { "yes" } else { "no" },
            cpu_cols(at(st, "/cpu")?)?,
        ));
    }
    out.blank();
    let sat = get(f, "saturation_rate");
    let half = if truthy(sat) { Value::from(number(sat)? / 2.0) } else { Value::Null };
    out.push(format!(
        "**Saturation rate: {} msg/s** = {} deliveries/s (the highest step that held). At half of it ({} msg/s), \
         {} runs of {} s:",
        num(sat, 1)?,
        num(get(f, "saturation_deliveries_per_s"), 0)?,
        num(&half, 1)?,
        array(at(f, "/runs")?)?.len(),
        general(number(at(p, "/duration_s")?)?),
    ));
    out.blank();
    out.push(
        "| run | deliveries/s | deliveries per CPU-s (gw+bridge) | p50 | p90 | p99 | max (ms) | missing | duplicates \
         | CPU per process |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in array(at(f, "/runs")?)?.iter().enumerate() {
        let lat = at(r, "/latency")?;
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            num(at(r, "/deliveries_per_s")?, 0)?,
            num(at(r, "/deliveries_per_cpu_s")?, 0)?,
            py_str(at(lat, "/p50_ms")?),
            py_str(at(lat, "/p90_ms")?),
            py_str(at(lat, "/p99_ms")?),
            py_str(at(lat, "/max_ms")?),
            py_str(at(r, "/missing")?),
            py_str(at(r, "/duplicates")?),
            cpu_cols(at(r, "/cpu")?)?,
        ));
    }
    let m = get(f, "median");
    if truthy(m) {
        let lat = get(m, "latency");
        out.push(format!(
            "| **median** | **{}** | **{}** | {} | {} | **{}** | {} | {} | {} | gateways {} s, bridge {} s |",
            num(get(m, "deliveries_per_s"), 0)?,
            num(get(m, "deliveries_per_cpu_s"), 0)?,
            py_str(get(lat, "p50_ms")),
            py_str(get(lat, "p90_ms")),
            py_str(get(lat, "p99_ms")),
            py_str(get(lat, "max_ms")),
            py_str(get(m, "missing")),
            py_str(get(m, "duplicates")),
            py_str(get(m, "gateway_cpu_s")),
            py_str(get(m, "bridge_cpu_s")),
        ));
    }
    out.blank();
    Ok(())
}

/// The "one slow reader" table: the pair of fan-out runs without and with one.
fn slow_pair(out: &mut Lines, s: &Summaries, slow_rate_set: bool) -> anyhow::Result<()> {
    out.push("### One slow reader");
    out.blank();
    let (Some(a), Some(b)) = (s.get("fanout-steady"), s.get("fanout-slow")) else {
        out.push("Not run: the fan-out found no saturation rate.");
        return Ok(());
    };
    if !truthy(a) || !truthy(b) {
        out.push("Not run: the fan-out found no saturation rate.");
        return Ok(());
    }
    let p = at(b, "/params")?;
    let env = join_strs(at(b, "/target/own_stack/gateway_env")?)?;
    let rate = if slow_rate_set { "set by BENCH_SLOW_RATE" } else { "half the saturation rate" };
    out.push(format!(
        "The fan-out again at {} msg/s ({rate}): {} subscribers in {} room(s) on {} gateways, {} publishers, \
         plain runs of {} s ({} each), twice: without and with one slow reader, a socket that joins the room and \
         then never reads (2 KiB receive buffer, 1,460-byte segments; each run opens a new one). Both with \
         `{env}`, so that the gateway's queue for it fills and it is closed (`slow`) within a run. Deliveries and \
         latency are the subscribers' only; load average {} and {}.",
        general(number(at(p, "/rate")?)?),
        grouped(at(b, "/setup/subscribers_joined")?)?,
        py_str(at(p, "/rooms")?),
        py_str(at(b, "/target/own_stack/gateways")?),
        py_str(at(p, "/publishers")?),
        general(number(at(p, "/duration_s")?)?),
        array(at(b, "/runs")?)?.len(),
        load_average(a)?,
        load_average(b)?,
    ));
    out.blank();
    out.push(
        "| slow readers | deliveries/s | p50 | p90 | **p99** | max (ms) | p99 of each run (ms) | missing | duplicates | \
         slow readers closed by the gateway, client's view | gateways' `slow` closes | gateway CPU (s) |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (count, summary) in [("0", a), ("1", b)] {
        let m = at(summary, "/median")?;
        let lat = at(m, "/latency")?;
        let each = array(at(summary, "/runs")?)?
            .iter()
            .map(|r| at(r, "/latency/p99_ms").map(py_str))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(" / ");
        let sr = get(summary, "slow_readers");
        let (ended, closes) = if truthy(sr) {
            let ended = format!(
                "{} of {} (`slow` close frame {}, no close frame {}; still open {})",
                py_str(at(sr, "/closed_by_gateway")?),
                py_str(at(sr, "/opened")?),
                py_str(at(sr, "/close_slow")?),
                py_str(&add(at(sr, "/eof")?, at(sr, "/reset")?)?),
                py_str(at(sr, "/still_open")?),
            );
            (ended, num(get(sr, "gateway_slow_closes"), 0)?)
        } else {
            (DASH.to_owned(), DASH.to_owned())
        };
        out.push(format!(
            "| {count} | {} | {} | {} | **{}** | {} | {each} | {} | {} | {ended} | {closes} | {} |",
            num(at(m, "/deliveries_per_s")?, 0)?,
            py_str(at(lat, "/p50_ms")?),
            py_str(at(lat, "/p90_ms")?),
            py_str(at(lat, "/p99_ms")?),
            py_str(at(lat, "/max_ms")?),
            py_str(at(summary, "/missing")?),
            py_str(at(summary, "/duplicates")?),
            py_str(at(m, "/gateway_cpu_s")?),
        ));
    }
    out.blank();
    Ok(())
}

fn idle(out: &mut Lines, s: &Summaries) -> anyhow::Result<()> {
    let i = s.need("idle")?;
    let p = at(i, "/params")?;
    out.push("### Idle sockets");
    out.blank();
    out.push(format!(
        "{} authenticated sockets opened ({} at a time, from {} source addresses) and held {} s on one gateway, \
         a fresh gateway process for each run; RSS per socket = (gateway VmRSS after − before) / sockets. Logins \
         beforehand: {}/s.",
        grouped(at(p, "/clients")?)?,
        py_str(at(p, "/concurrency")?),
        py_str(at(p, "/sources")?),
        general(number(at(p, "/hold_s")?)?),
        num(at(i, "/setup/logins_per_s")?, 0)?,
    ));
    out.blank();
    out.push(
        "| run | opened | failed | still open | setup/s | opens per gateway CPU-s | gateway RSS before → after (MiB) \
         | **RSS per socket** | CPU per process (setup) |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|");
    for (n, r) in array(at(i, "/runs")?)?.iter().enumerate() {
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} → {} | {} KiB | {} |",
            n + 1,
            grouped(at(r, "/opened")?)?,
            py_str(at(r, "/failed")?),
            grouped(at(r, "/still_open")?)?,
            num(at(r, "/setup_per_s")?, 0)?,
            num(at(r, "/opens_per_gateway_cpu_s")?, 0)?,
            fixed(number(at(r, "/gateway_rss_kib_before")?)? / 1024.0, 1),
            fixed(number(at(r, "/gateway_rss_kib_after")?)? / 1024.0, 1),
            fixed(number(at(r, "/gateway_rss_per_socket_bytes")?)? / 1024.0, 1),
            cpu_cols(at(r, "/setup_cpu")?)?,
        ));
    }
    let m = at(i, "/median")?;
    out.push(format!(
        "| **median** | {} | {} | {} | {} | {} | | **{} KiB** | gateway {} s |",
        grouped(at(m, "/opened")?)?,
        py_str(at(m, "/failed")?),
        grouped(at(m, "/still_open")?)?,
        num(at(m, "/setup_per_s")?, 0)?,
        num(at(m, "/opens_per_gateway_cpu_s")?, 0)?,
        fixed(number(at(m, "/gateway_rss_per_socket_bytes")?)? / 1024.0, 1),
        py_str(at(m, "/gateway_cpu_s")?),
    ));
    out.blank();
    Ok(())
}

fn event_streams(out: &mut Lines, s: &Summaries) -> anyhow::Result<()> {
    let (Some(fs), Some(isse)) = (s.get("fanout-sse"), s.get("idle-sse")) else { return Ok(()) };
    if !truthy(fs) || !truthy(isse) {
        return Ok(());
    }
    out.push("### Event streams beside WebSockets");
    out.blank();
    out.push(
        "The same fan-out (step mode, then runs at half the saturation rate) with the subscribers on event streams \
         (`/sse`; publishers stay on WebSockets), and the same idle run with streams instead of sockets.",
    );
    out.blank();
    out.push(
        "| | saturation rate (msg/s) | deliveries/s at half | p99 at half (ms) | deliveries per CPU-s (gw+bridge) | \
         missing | duplicates | idle RSS per connection |",
    );
    out.push("|---|---|---|---|---|---|---|---|");
    for (label, fan, idle) in [("WebSocket", s.need("fanout")?, s.need("idle")?), ("event stream", fs, isse)] {
        let m = get(fan, "median");
        out.push(format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} KiB |",
            num(get(fan, "saturation_rate"), 1)?,
            num(get(m, "deliveries_per_s"), 0)?,
            py_str(get(get(m, "latency"), "p99_ms")),
            num(get(m, "deliveries_per_cpu_s"), 0)?,
            py_str(get(m, "missing")),
            py_str(get(m, "duplicates")),
            fixed(number(at(idle, "/median/gateway_rss_per_socket_bytes")?)? / 1024.0, 1),
        ));
    }
    out.blank();
    Ok(())
}

fn storm(out: &mut Lines, s: &Summaries) -> anyhow::Result<()> {
    let st = s.need("storm")?;
    out.push("### Connect storm");
    out.blank();
    out.push(format!(
        "{} clients, logged in beforehand, open their sockets at the same instant against one gateway (each \
         upgrade checks the session in Redis); handshakes/s = welcomed / time to the last `welcome`.",
        grouped(at(st, "/params/clients")?)?,
    ));
    out.blank();
    out.push(
        "| run | welcomed | failed | handshakes/s | **handshakes per gateway CPU-s** | time to welcome p50 | p90 | p99 \
         | max (ms) | CPU per process |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|");
    for (n, r) in array(at(st, "/runs")?)?.iter().enumerate() {
        let t = at(r, "/time_to_welcome")?;
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            n + 1,
            grouped(at(r, "/welcomed")?)?,
            py_str(at(r, "/failed")?),
            num(at(r, "/handshakes_per_s")?, 0)?,
            num(at(r, "/handshakes_per_gateway_cpu_s")?, 0)?,
            py_str(at(t, "/p50_ms")?),
            py_str(at(t, "/p90_ms")?),
            py_str(at(t, "/p99_ms")?),
            py_str(at(t, "/max_ms")?),
            cpu_cols(at(r, "/cpu")?)?,
        ));
    }
    let m = at(st, "/median")?;
    let t = at(m, "/time_to_welcome")?;
    out.push(format!(
        "| **median** | {} | {} | **{}** | **{}** | {} | {} | **{}** | {} | gateway {} s |",
        grouped(at(m, "/welcomed")?)?,
        py_str(at(m, "/failed")?),
        num(at(m, "/handshakes_per_s")?, 0)?,
        num(at(m, "/handshakes_per_gateway_cpu_s")?, 0)?,
        py_str(at(t, "/p50_ms")?),
        py_str(at(t, "/p90_ms")?),
        py_str(at(t, "/p99_ms")?),
        py_str(at(t, "/max_ms")?),
        py_str(at(m, "/gateway_cpu_s")?),
    ));
    out.blank();
    Ok(())
}

fn drain(out: &mut Lines, s: &Summaries) -> anyhow::Result<()> {
    let d = s.need("drain")?;
    let p = at(d, "/params")?;
    out.push("### Drain");
    out.blank();
    out.push(format!(
        "{} clients (the chaos suite's agents: `/session`, `join` with `since`, resend unacked) in rooms of {}, \
         sending {} msg/s together, all on one gateway behind HAProxy; a second gateway is started, then the \
         first gets SIGTERM (drain window {} s). \"All back\" = the last client joined again on the other \
         gateway; \"all receiving\" = the last client's first message there. The drained gateway has exited by \
         the end of the window, so its CPU is not in the last column.",
        grouped(at(p, "/clients")?)?,
        py_str(at(p, "/room_size")?),
        general(number(at(p, "/rate")?)?),
        general(number(at(p, "/drain_window_ms")?)? / 1000.0),
    ));
    out.blank();
    out.push(
        "| run | back | all back (s) | all receiving (s) | reconnect p50 / p99 (ms) | old gateway exited (s) | acked \
         | missed | duplicates | relogins | CPU per process |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, r) in array(at(d, "/runs")?)?.iter().enumerate() {
        out.push(format!(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
            n + 1,
            grouped(at(r, "/back")?)?,
            seconds(at(r, "/all_back_ms")?)?,
            seconds(at(r, "/all_receiving_ms")?)?,
            py_str(at(r, "/reconnect_p50_ms")?),
            py_str(at(r, "/reconnect_p99_ms")?),
            seconds(at(r, "/gateway_exit_ms")?)?,
            grouped(at(r, "/acked")?)?,
            py_str(at(r, "/missed")?),
            py_str(at(r, "/duplicates")?),
            py_str(at(r, "/relogins")?),
            cpu_cols(at(r, "/cpu")?)?,
        ));
    }
    let m = at(d, "/median")?;
    out.push(format!(
        "| **median** | {} | **{}** | **{}** | {} / {} | {} | {} | **{}** | {} | {} | |",
        grouped(at(m, "/back")?)?,
        seconds(get(m, "all_back_ms"))?,
        seconds(get(m, "all_receiving_ms"))?,
        py_str(at(m, "/reconnect_p50_ms")?),
        py_str(at(m, "/reconnect_p99_ms")?),
        seconds(get(m, "gateway_exit_ms"))?,
        grouped(at(m, "/acked")?)?,
        py_str(at(m, "/missed")?),
        py_str(at(m, "/duplicates")?),
        py_str(at(m, "/relogins")?),
    ));
    out.blank();
    Ok(())
}

fn rooms(out: &mut Lines, s: &Summaries) -> anyhow::Result<()> {
    let r = s.need("rooms")?;
    let p = at(r, "/params")?;
    let b = at(r, "/broker")?;
    out.push("### Many rooms");
    out.blank();
    out.push(format!(
        "{} live rooms of {} members (different users, on {} sockets: at most {} rooms per socket and {} sockets \
         per user, the gateways' defaults) and {} idle rooms (each joined, sent to once and left first), through \
         HAProxy on {} gateways and {} bridge, on a private RabbitMQ node; then one send into every live room at \
         {}/s. A message is expected once acked. Broker figures: descriptors from `/proc/PID/fd`, the rest from \
         `rabbitmqctl`; read before, after the idle rooms, and at the end with the live sockets still joined. Load \
         average {}.",
        grouped(at(p, "/rooms")?)?,
        py_str(at(p, "/members")?),
        grouped(at(r, "/joins/sockets")?)?,
        py_str(at(p, "/rooms_per_socket")?),
        py_str(at(p, "/sockets_per_user")?),
        grouped(at(p, "/idle_rooms")?)?,
        py_str(at(r, "/target/own_stack/gateways")?),
        py_str(at(r, "/target/own_stack/bridges")?),
        general(number(at(p, "/send_rate")?)?),
        load_average(r)?,
    ));
    out.blank();
    let (j, sd, d, i) = (at(r, "/joins")?, at(r, "/sends")?, at(r, "/deliveries")?, at(r, "/idle")?);
    out.push(
        "| idle rooms acked | joins `joined` / asked | join errors | sends acked / rooms | send errors | rooms heard by \
         every member | deliveries received / expected | missing | duplicates | send → delivery p50 / p99 (ms) | \
         wall (s) |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|---|");
    out.push(format!(
        "| {} of {} | {} / {} | {} | {} / {} | {} | {} | {} / {} | **{}** | {} | {} / {} | {} |",
        grouped(at(i, "/acked")?)?,
        grouped(at(i, "/rooms")?)?,
        grouped(at(j, "/joined")?)?,
        grouped(at(j, "/expected")?)?,
        codes(at(j, "/errors")?)?,
        grouped(at(sd, "/acked")?)?,
        grouped(at(sd, "/rooms")?)?,
        codes(at(sd, "/errors")?)?,
        grouped(at(d, "/rooms_heard_by_every_member")?)?,
        grouped(at(d, "/received")?)?,
        grouped(at(d, "/expected")?)?,
        py_str(at(d, "/missing")?),
        py_str(at(d, "/duplicates")?),
        py_str(at(d, "/latency/p50_ms")?),
        py_str(at(d, "/latency/p99_ms")?),
        fixed(number(at(r, "/wall_s")?)?, 1),
    ));
    out.blank();
    out.push("| broker | descriptors | channels | queues | memory (MiB) |");
    out.push("|---|---|---|---|---|");
    let (before, after) = (at(b, "/before")?, at(b, "/after")?);
    for (label, reading) in [("before", before), ("after the idle rooms", get(b, "after_idle")), ("at the end", after)]
    {
        if truthy(reading) {
            let memory = match get(reading, "memory_bytes") {
                Value::Null => DASH.to_owned(),
                bytes => grouped_fixed(number(bytes)? / 1_048_576.0, 0),
            };
            out.push(format!(
                "| {label} | {} of {} | {} | {} | {memory} |",
                num(get(reading, "fds"), 0)?,
                num(get(reading, "fd_limit"), 0)?,
                num(get(reading, "channels"), 0)?,
                num(get(reading, "queues"), 0)?,
            ));
        }
    }
    let mut unread = BTreeMap::new();
    for reading in [before, after] {
        if let Some(unreadable) = reading.get("unreadable") {
            let unreadable = unreadable.as_object().ok_or_else(|| anyhow!("unreadable is not an object"))?;
            unread.extend(unreadable.iter().map(|(k, v)| (k.as_str(), py_str(v))));
        }
    }
    if !unread.is_empty() {
        out.blank();
        let parts: Vec<String> = unread.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        out.push(format!("Not read: {}.", parts.join("; ")));
    }
    out.blank();
    Ok(())
}

fn crowd(out: &mut Lines, s: &Summaries) -> anyhow::Result<()> {
    let c = s.need("crowd")?;
    let (p, jn, pr, jf, dl) =
        (at(c, "/params")?, at(c, "/joins")?, at(c, "/presence")?, at(c, "/joined_frames")?, at(c, "/deliveries")?);
    out.push("### Crowd");
    out.blank();
    out.push(format!(
        "{} members join one room within {} s through HAProxy on {} gateways while {} publishers (in the room \
         first) send {} msg/s for {} s, from the first member's `joined` on (publishing began {} ms after the first \
         member was let go, the last member joined at {} ms). A message is owed to a member when its ack came after \
         the member's `joined`; latency counts messages sent after the receiver's `joined`. Presence: old \
         `presence` frames and batched `presence_diff` frames both counted. Load average {}.",
        grouped(at(p, "/members")?)?,
        general(number(at(p, "/join_within_s")?)?),
        py_str(at(c, "/target/own_stack/gateways")?),
        py_str(at(p, "/publishers")?),
        general(number(at(p, "/rate")?)?),
        general(number(at(p, "/duration_s")?)?),
        py_str(at(jn, "/publishing_began_ms")?),
        py_str(at(jn, "/last_joined_ms")?),
        load_average(c)?,
    ));
    out.blank();
    let (lat, jl) = (at(c, "/latency")?, at(jn, "/joined_latency")?);
    out.push(
        "| p50 | p90 | **p99** | max (ms) | missing | duplicates | presence frames per member, max / mean (total) | \
         `joined` bytes per member, max / mean | join → `joined` p50 / p99 (ms) | CPU per process |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|");
    let frames =
        |key: &str| add(at(pr, &format!("/presence_frames/{key}"))?, at(pr, &format!("/presence_diff_frames/{key}"))?);
    let (max, mean, total) = (frames("max")?, frames("mean")?, frames("total")?);
    out.push(format!(
        "| {} | {} | **{}** | {} | **{}** | {} | {} / {} ({}) | {} / {} | {} / {} | {} |",
        py_str(at(lat, "/p50_ms")?),
        py_str(at(lat, "/p90_ms")?),
        py_str(at(lat, "/p99_ms")?),
        py_str(at(lat, "/max_ms")?),
        py_str(at(dl, "/missing")?),
        py_str(at(dl, "/duplicates")?),
        num(&max, 0)?,
        grouped_fixed(number(&mean)?, 1),
        num(&total, 0)?,
        num(at(jf, "/bytes/max")?, 0)?,
        grouped_fixed(number(at(jf, "/bytes/mean")?)?, 0),
        py_str(at(jl, "/p50_ms")?),
        py_str(at(jl, "/p99_ms")?),
        cpu_cols(at(c, "/cpu")?)?,
    ));
    let gateways = get(c, "gateways");
    if truthy(gateways) {
        let counters = gateways.as_object().ok_or_else(|| anyhow!("gateways is not an object"))?;
        let sorted: BTreeMap<&String, &Value> = counters.iter().collect();
        let mut parts = Vec::new();
        for (name, value) in sorted {
            if !name.contains("heartbeat") {
                parts.push(format!("`{name}` {}", grouped_fixed(number(value)?, 0)));
            }
        }
        out.blank();
        out.push(format!("The gateways' own counters over the run: {}.", parts.join(", ")));
    }
    Ok(())
}

/// The machine's 1-minute load average at the start and the end of a run.
fn load_average(summary: &Value) -> anyhow::Result<String> {
    Ok(format!(
        "{} → {}",
        fixed(number(at(summary, "/machine/loadavg_start/0")?)?, 2),
        fixed(number(at(summary, "/machine/loadavg_end/0")?)?, 2)
    ))
}

/// CPU seconds (and % of one core) per process, gateways and bridges first.
fn cpu_cols(cpu: &Value) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for w in array(cpu)? {
        let name = at(w, "/name")?.as_str().ok_or_else(|| anyhow!("a process name is not a string"))?;
        let rank = if name.starts_with("gw") {
            0
        } else if name.starts_with("bridge") {
            1
        } else {
            2
        };
        let col =
            format!("{name} {} s ({} %)", fixed(number(at(w, "/cpu_s")?)?, 2), fixed(number(at(w, "/cpu_pct")?)?, 0));
        rows.push((rank, name, col));
    }
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    Ok(rows.into_iter().map(|(_, _, col)| col).collect::<Vec<_>>().join(", "))
}

/// Error counts by code, or a dash.
fn codes(counts: &Value) -> anyhow::Result<String> {
    if !truthy(counts) {
        return Ok(DASH.to_owned());
    }
    let counts = counts.as_object().ok_or_else(|| anyhow!("error counts are not an object"))?;
    let sorted: BTreeMap<&String, &Value> = counts.iter().collect();
    let parts =
        sorted.into_iter().map(|(k, v)| Ok(format!("`{k}` {}", grouped(v)?))).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(parts.join(", "))
}

/// Milliseconds as seconds to two decimals, or a dash.
fn seconds(ms: &Value) -> anyhow::Result<String> {
    if ms.is_null() {
        return Ok(DASH.to_owned());
    }
    Ok(fixed(number(ms)? / 1000.0, 2))
}

// Reading the summaries as the Python did: `x["key"]` fails when the key is
// missing, `x.get("key")` gives `None`.

static NULL: Value = Value::Null;

/// `value[...]` along a JSON pointer: an error when it is not there.
fn at<'v>(value: &'v Value, pointer: &str) -> anyhow::Result<&'v Value> {
    value.pointer(pointer).ok_or_else(|| anyhow!("no {pointer}"))
}

/// `value.get(key)`: null when it is not there (or `value` is no object).
fn get<'v>(value: &'v Value, key: &str) -> &'v Value {
    value.get(key).unwrap_or(&NULL)
}

fn array(value: &Value) -> anyhow::Result<&Vec<Value>> {
    value.as_array().ok_or_else(|| anyhow!("expected a list, found {value}"))
}

/// `" ".join(value)`.
fn join_strs(value: &Value) -> anyhow::Result<String> {
    let parts: Option<Vec<&str>> = array(value)?.iter().map(Value::as_str).collect();
    Ok(parts.ok_or_else(|| anyhow!("expected strings, found {value}"))?.join(" "))
}

/// Python's truth of a JSON value: null, false, 0, and empty strings, lists
/// and objects are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A number (a boolean counts as 0 or 1, as in Python).
fn number(value: &Value) -> anyhow::Result<f64> {
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| anyhow!("{n} is no number")),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => bail!("expected a number, found {other}"),
    }
}

/// An integer, when the JSON had one (`2`, not `2.0`).
fn integer(value: &Value) -> Option<i128> {
    match value {
        Value::Number(n) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)),
        Value::Bool(b) => Some(i128::from(*b)),
        _ => None,
    }
}

/// `a + b`: an integer when both are.
fn add(a: &Value, b: &Value) -> anyhow::Result<Value> {
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        let sum = x + y;
        if let Ok(sum) = i64::try_from(sum) {
            return Ok(Value::from(sum));
        }
        if let Ok(sum) = u64::try_from(sum) {
            return Ok(Value::from(sum));
        }
    }
    Ok(Value::from(number(a)? + number(b)?))
}

// Numbers as Python wrote them. Rust's float formatting, like Python's, is
// exact and rounds half to even, so `{:.N}` is Python's `.Nf`; the rest
// (grouping, `g`, repr, `round()`) is here.

/// What the tables show for a missing figure.
const DASH: &str = "–";

/// The Python's `num(v, digits)`: a dash for null; a float with `digits`
/// decimals when `digits` is not 0; else `round(v)` (half to even), with
/// thousands separators.
fn num(value: &Value, digits: usize) -> anyhow::Result<String> {
    if value.is_null() {
        return Ok(DASH.to_owned());
    }
    if value.is_f64() && digits > 0 {
        return Ok(grouped_fixed(number(value)?, digits));
    }
    if let Some(n) = integer(value) {
        return Ok(group(&n.to_string()));
    }
    Ok(group(&round_even(number(value)?)?))
}

/// Python's `round(x)` of a float: the nearest integer, half to even.
fn round_even(x: f64) -> anyhow::Result<String> {
    if !x.is_finite() {
        bail!("cannot round {x}");
    }
    let r = x.round_ties_even();
    // `{:.0}` writes an integral float's digits exactly; -0 is 0.
    Ok(if r == 0.0 { "0".to_owned() } else { format!("{r:.0}") })
}

/// `round(x, digits)` of a float.
fn round_to(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// `format(x, ".Nf")`.
fn fixed(x: f64, digits: usize) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    format!("{x:.digits$}")
}

/// `format(x, ",.Nf")`.
fn grouped_fixed(x: f64, digits: usize) -> String {
    group(&fixed(x, digits))
}

/// `format(v, ",")`: an integer, or a float's repr, with thousands
/// separators.
fn grouped(value: &Value) -> anyhow::Result<String> {
    if let Some(n) = integer(value) {
        return Ok(group(&n.to_string()));
    }
    Ok(group(&float_repr(number(value)?)))
}

/// Commas between each three digits of the integer part of a formatted
/// number (`-1234567.5` → `-1,234,567.5`); exponents and `inf` are left be.
fn group(formatted: &str) -> String {
    let (sign, unsigned) = formatted.strip_prefix('-').map_or(("", formatted), |rest| ("-", rest));
    let end = unsigned.find(|c: char| !c.is_ascii_digit()).unwrap_or(unsigned.len());
    let (digits, rest) = unsigned.split_at(end);
    let mut out = String::from(sign);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out.push_str(rest);
    out
}

/// A float's shortest round-trip digits and decimal exponent:
/// `1234.5` → (`-`?, "12345", 3).
fn shortest(x: f64) -> (bool, String, i32) {
    let formatted = format!("{:e}", x.abs());
    let (mantissa, exp) = formatted.split_once('e').unwrap_or((&formatted, "0"));
    (x.is_sign_negative(), mantissa.replace('.', ""), exp.parse().unwrap_or(0))
}

/// Python's `repr(x)` (and `str(x)`): the shortest digits that read back as
/// `x`, positional from 1e-4 to below 1e16 (always with a decimal point),
/// else as `1.5e-05` / `1e+16`.
fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let (negative, digits, exp) = shortest(x);
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1).unsigned_abs() as usize))
        } else {
            let point = exp.unsigned_abs() as usize + 1;
            if digits.len() > point {
                format!("{}.{}", &digits[..point], &digits[point..])
            } else {
                format!("{digits}{}.0", "0".repeat(point - digits.len()))
            }
        };
        format!("{sign}{body}")
    } else {
        format!("{sign}{}", scientific(&digits, exp))
    }
}

/// `d.ddd` + `e+XX` (at least two exponent digits), trailing zeros gone.
fn scientific(digits: &str, exp: i32) -> String {
    let digits = digits.trim_end_matches('0');
    let (first, rest) = digits.split_at(digits.len().min(1));
    let first = if first.is_empty() { "0" } else { first };
    let point = if rest.is_empty() { String::new() } else { format!(".{rest}") };
    let exp_sign = if exp < 0 { '-' } else { '+' };
    format!("{first}{point}e{exp_sign}{:02}", exp.unsigned_abs())
}

/// Python's `format(x, "g")`: six significant digits, positional from 1e-4
/// to below 1e6, trailing zeros dropped.
fn general(x: f64) -> String {
    const PRECISION: i32 = 6;
    if !x.is_finite() {
        return float_repr(x);
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // Rounded to six digits first: 999999.5 is 1e+06.
    let rounded = format!("{:.*e}", (PRECISION - 1).unsigned_abs() as usize, x.abs());
    let (mantissa, exp) = rounded.split_once('e').unwrap_or((&rounded, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..PRECISION).contains(&exp) {
        let decimals = (PRECISION - 1 - exp).unsigned_abs() as usize;
        let body = format!("{:.decimals$}", x.abs());
        let body = if body.contains('.') { body.trim_end_matches('0').trim_end_matches('.') } else { &body };
        format!("{sign}{body}")
    } else {
        format!("{sign}{}", scientific(&mantissa.replace('.', ""), exp))
    }
}

/// Python's `str()` of a JSON value as the f-strings wrote it: `None`,
/// `True`, an integer, a float's repr, a string as it is; lists and objects
/// as Python's repr (strings in them quoted with `'`, without escapes).
fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => match integer(value) {
            Some(i) => i.to_string(),
            None => n.as_f64().map_or_else(|| n.to_string(), float_repr),
        },
        Value::String(s) => format!("'{s}'"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let mut out = String::from("{");
            for (i, (k, v)) in map.iter().enumerate() {
                let _ = write!(out, "{}'{k}': {}", if i > 0 { ", " } else { "" }, py_repr(v));
            }
            out.push('}');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Python 3.11's formatting of many numbers (`tests/fixtures/bench/python-formats.json`).
    #[test]
    fn formats_numbers_as_python() {
        let table: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/bench/python-formats.json")).expect("table");
        let specs: Vec<&str> = table["specs"].as_array().expect("specs").iter().filter_map(Value::as_str).collect();
        let mut failures = Vec::new();
        let rows = table["rows"].as_array().expect("rows");
        assert!(rows.len() > 200);
        for row in rows {
            let value = match &row[0]["f64"] {
                Value::String(bits) => Value::from(f64::from_bits(u64::from_str_radix(bits, 16).expect("bits"))),
                _ => row[0].clone(),
            };
            for (spec, expected) in specs.iter().zip(row[1].as_array().expect("expected")) {
                let x = number(&value).expect("a number");
                let got = match *spec {
                    "num" => num(&value, 0).expect("num"),
                    "num1" => num(&value, 1).expect("num1"),
                    ".2f" => fixed(x, 2),
                    ".0f" => fixed(x, 0),
                    ".1f" => fixed(x, 1),
                    ",.1f" => grouped_fixed(x, 1),
                    ",.0f" => grouped_fixed(x, 0),
                    "g" => general(x),
                    "," => grouped(&value).expect("grouped"),
                    "str" => py_str(&value),
                    other => panic!("unknown spec {other}"),
                };
                if got != expected.as_str().expect("a string") {
                    failures.push(format!("{value} {spec}: {got} != {expected}"));
                }
            }
        }
        assert!(failures.is_empty(), "{} differ:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group("0"), "0");
        assert_eq!(group("999"), "999");
        assert_eq!(group("1000"), "1,000");
        assert_eq!(group("-1234567.891"), "-1,234,567.891");
        assert_eq!(group("123456.5"), "123,456.5");
        assert_eq!(group("1e+16"), "1e+16");
        assert_eq!(group("inf"), "inf");
    }

    #[test]
    fn rounds_half_to_even() {
        assert_eq!(num(&json!(0.5), 0).expect("num"), "0");
        assert_eq!(num(&json!(1.5), 0).expect("num"), "2");
        assert_eq!(num(&json!(2.5), 0).expect("num"), "2");
        assert_eq!(num(&json!(-0.4), 0).expect("num"), "0");
        assert_eq!(num(&json!(26170.5), 0).expect("num"), "26,170");
        assert_eq!(num(&json!(1234), 1).expect("num"), "1,234");
        assert_eq!(num(&json!(1234.25), 1).expect("num"), "1,234.2");
        assert_eq!(num(&Value::Null, 1).expect("num"), "–");
        assert!(num(&json!("x"), 0).is_err());
        assert_eq!(round_to(23.45, 1), 23.4);
        assert_eq!(round_to(24_618_640.0 / 1_048_576.0, 1), 23.5);
    }

    #[test]
    fn writes_floats_as_repr_and_g() {
        assert_eq!(float_repr(2.0), "2.0");
        assert_eq!(float_repr(13.95), "13.95");
        assert_eq!(float_repr(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(float_repr(1e-5), "1e-05");
        assert_eq!(float_repr(0.0001), "0.0001");
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(-1.5e300), "-1.5e+300");
        assert_eq!(float_repr(1e15), "1000000000000000.0");
        assert_eq!(general(528.6), "528.6");
        assert_eq!(general(2.0), "2");
        assert_eq!(general(999_999.5), "1e+06");
        assert_eq!(general(1_234_567.0), "1.23457e+06");
        assert_eq!(general(0.00001), "1e-05");
        assert_eq!(general(-0.0), "-0");
        assert_eq!(py_str(&json!(null)), "None");
        assert_eq!(py_str(&json!(true)), "True");
        assert_eq!(py_str(&json!(7)), "7");
        assert_eq!(py_str(&json!("text")), "text");
        assert_eq!(py_str(&json!([1, "a", 2.5])), "[1, 'a', 2.5]");
        assert_eq!(py_str(&json!({"a": null})), "{'a': None}");
    }

    #[test]
    fn adds_as_python() {
        assert_eq!(add(&json!(1), &json!(2)).expect("add"), json!(3));
        assert_eq!(add(&json!(1), &json!(2.0)).expect("add"), json!(3.0));
        assert!(add(&json!(1), &json!("2")).is_err());
    }

    #[test]
    fn reads_cpuinfo_and_meminfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                       processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(model_name(cpuinfo), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(model_name("processor : 0\n"), None);
        assert_eq!(mem_total_kib("MemTotal:       24618640 kB\nMemFree: 1 kB\n"), Some(24_618_640));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        let machine = Machine::read("now");
        assert_eq!(machine.started, "now");
        assert!(machine.nproc.is_some_and(|n| n > 0));
    }

    #[test]
    fn splices_between_the_markers() {
        let section = "new\nlines";
        assert_eq!(splice(None, section), "# Benchmarks\n\n<!-- bench:begin -->\nnew\nlines\n<!-- bench:end -->\n");
        assert_eq!(splice(Some("no markers\n"), section), splice(None, section));
        assert_eq!(
            splice(Some("head\r\n<!-- bench:begin -->\nold\n<!-- bench:end -->\ntail\r\n"), section),
            "head\n<!-- bench:begin -->\nnew\nlines\n<!-- bench:end -->\ntail\n"
        );
        // No end marker: nothing is kept after the old section.
        assert_eq!(
            splice(Some("head <!-- bench:begin --> old"), section),
            "head <!-- bench:begin -->\nnew\nlines\n<!-- bench:end -->"
        );
    }

    #[test]
    fn sorts_processes_gateways_first() {
        let cpu = json!([
            {"name": "redis", "cpu_s": 0.004, "cpu_pct": 0.5},
            {"name": "bridge-1", "cpu_s": 1, "cpu_pct": 2.5},
            {"name": "gw-2", "cpu_s": 0.125, "cpu_pct": 1.5},
            {"name": "gw-1", "cpu_s": 0.135, "cpu_pct": 99.5},
        ]);
        assert_eq!(
            cpu_cols(&cpu).expect("cpu"),
            "gw-1 0.14 s (100 %), gw-2 0.12 s (2 %), bridge-1 1.00 s (2 %), redis 0.00 s (0 %)"
        );
    }
}
