//! The command line of `warren-load`: one subcommand per scenario, the
//! target options they share, and the summary they print; and `report`,
//! which turns the summaries `scripts/bench` kept into its report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::load::procs::Watched;
use crate::load::report::{self, Machine, Options, Summaries};
use crate::load::target::{Target, TargetSpec};
use crate::load::{crowd, drain, fanout, idle, rooms, storm};
use crate::socket::Transport;

/// Bounded load runs against Warren, on loopback: a progress line per
/// second on stderr, a JSON summary on stdout.
#[derive(Debug, Parser)]
#[command(name = "warren-load", version, about)]
pub struct Args {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Subscribers in rooms, publishers at a rate: deliveries/s, latency,
    /// missing and duplicates; `--step` finds the saturation rate.
    Fanout(FanoutArgs),
    /// Many authenticated sockets held: setup rate, failures, gateway RSS
    /// per socket.
    Idle(IdleArgs),
    /// Logged-in clients connecting at once: handshakes/s, time to welcome.
    Storm(StormArgs),
    /// Clients on one gateway that is sent SIGTERM: time until all are back
    /// and receiving, messages missed.
    Drain(DrainArgs),
    /// Many rooms with a few members each, plus idle rooms: joins answered,
    /// one send per room delivered to every member, and what the broker
    /// holds before and after.
    Rooms(RoomsArgs),
    /// Many members joining one room while publishers send into it:
    /// latency, missing messages, presence and `joined` per member.
    Crowd(CrowdArgs),
    /// Not a scenario: `docs/benchmarks.md`'s tables from the summaries the
    /// scenarios wrote (what `scripts/bench` runs last), and the facts of
    /// this machine.
    Report(ReportArgs),
}

/// Where the clients go, shared by every scenario.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// An existing HAProxy or gateway address (host:port on loopback); a
    /// comma-separated list of gateways spreads clients over them. Without
    /// it, a stack of our own is started (binaries from WARREN_BIN_DIR, or
    /// next to this one).
    #[arg(long, value_delimiter = ',', value_parser = parse_addr)]
    pub url: Vec<SocketAddr>,
    /// With --url: the gateways' admin addresses (comma-separated), whose
    /// `/metrics` count the sockets they closed (fanout's slow readers).
    #[arg(long, value_delimiter = ',', value_parser = parse_addr)]
    pub admin: Vec<SocketAddr>,
    /// Our stack: gateways (default: 2 for fanout, 3 for rooms and crowd,
    /// 1 otherwise).
    #[arg(long)]
    pub gateways: Option<usize>,
    /// Our stack: bridges.
    #[arg(long, default_value_t = 1)]
    pub bridges: usize,
    /// Our stack: put HAProxy in front and go through it (drain always
    /// does; rooms and crowd do unless --direct).
    #[arg(long)]
    pub haproxy: bool,
    /// Our stack: its own Redis and RabbitMQ on free ports, not the shared
    /// ones (WARREN_REDIS_URL, WARREN_AMQP_URL); their CPU is then measured too.
    /// Rooms always uses them: thousands of rooms must not exhaust a broker
    /// that other runs share.
    #[arg(long)]
    pub private_services: bool,
    /// Our private RabbitMQ: its open-files limit (`ulimit -n`), e.g. 1024
    /// as the machine's broker has; default: this process's.
    #[arg(long)]
    pub broker_open_files: Option<u32>,
    /// Our stack: keep the gateways' shipped limits (handshakes, sockets,
    /// sends) instead of raising them, with HAProxy's loopback address
    /// trusted for X-Forwarded-For as `scripts/dev-up` does: the stack a
    /// new user starts.
    #[arg(long)]
    pub shipped_limits: bool,
    /// Our stack: more gateway environment as KEY=VALUE (repeatable), after
    /// the raised limits, e.g. GATEWAY_MAX_QUEUE_BYTES=32768.
    #[arg(long = "gateway-env", value_parser = parse_env)]
    pub gateway_env: Vec<(String, String)>,
    /// Another process to measure, as name=pid (repeatable); a name starting
    /// with `gw` counts as a gateway, `bridge` as a bridge.
    #[arg(long = "watch", value_parser = parse_watch)]
    pub watch: Vec<Watched>,
    /// Times to repeat the measurement (the summary has each and the medians).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub runs: u16,
    /// Give up on the whole invocation after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_time: Duration,
}

/// `fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publishers.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Rooms the subscribers are spread over.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long each run sends.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Length of each message's text.
    #[arg(long, default_value_t = 64)]
    text_bytes: usize,
    /// After sending stops, the longest wait for the last deliveries.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Logins and socket opens at a time.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Local source addresses 127.0.0.2, 127.0.0.3, ... (0: one per 10,000 sockets).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Unacked sends allowed over all publishers.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// Raise the rate step by step until p99 passes --p99-limit or
    /// deliveries fall behind; then run --runs times at half that rate.
    #[arg(long)]
    step: bool,
    /// Step mode: the first rate.
    #[arg(long, default_value_t = 20.0)]
    step_start: f64,
    /// Step mode: each next rate is this many times the last.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Step mode: how long each step sends.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    step_duration: Duration,
    /// Step mode: never beyond this rate.
    #[arg(long, default_value_t = 50_000.0)]
    max_rate: f64,
    /// Step mode: a step with a p99 above this has failed.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    p99_limit: Duration,
    /// Step mode: halvings between the last good and the failed rate.
    #[arg(long, default_value_t = 2)]
    refine: usize,
    /// Sockets that each run (not step) opens besides the subscribers: they
    /// join every room, then never read again, until the gateway closes them
    /// (`slow`). The summary says how they ended; the subscribers' figures
    /// are measured as without them. A run longer than the gateway's idle
    /// limit (50 s) may see them closed as idle instead.
    #[arg(long, env = "LOAD_SLOW_READERS", default_value_t = 0)]
    slow_readers: usize,
    /// How subscribers connect: WebSockets (`ws`) or event streams (`sse`);
    /// publishers always use WebSockets.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
}

/// `idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sockets to open and hold.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Local source addresses 127.0.0.2, ... (0: one per 10,000 sockets).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Sockets opening at a time.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// How long all are held before memory is read.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// WebSockets (`ws`), or event streams (`sse`: one source address,
    /// at most about 28,000).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
}

/// `storm`.
#[derive(Debug, clap::Args)]
pub struct StormArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Clients connecting at once.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Local source addresses 127.0.0.2, ... (0: one per 10,000 sockets).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Logins at a time, before the storm.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
}

/// `drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Clients: all on the gateway that is drained, or with `--gateways 2`
    /// or more spread over them by HAProxy.
    #[arg(long, default_value_t = 500)]
    clients: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 20)]
    room_size: usize,
    /// Messages per second, all clients together.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// The gateways' drain window (our stack).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_window: Duration,
    /// After everyone is back, how long clients keep sending and listening.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// With --url: the process id of the gateway to send SIGTERM.
    #[arg(long)]
    drain_pid: Option<u32>,
}

/// `rooms`.
#[derive(Debug, clap::Args)]
pub struct RoomsArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Live rooms: joined by their members, who stay.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Members of each live room (different users).
    #[arg(long, default_value_t = 2)]
    members: usize,
    /// Idle rooms: each joined, sent to once and left before the live rooms
    /// are joined, so that it exists but nobody listens.
    #[arg(long, default_value_t = 0)]
    idle_rooms: usize,
    /// Rooms one socket joins at most (the gateway's default
    /// --max-rooms-per-socket).
    #[arg(long, default_value_t = 32)]
    rooms_per_socket: usize,
    /// Sockets one user opens at most (the gateway's default
    /// --max-sockets-per-user).
    #[arg(long, default_value_t = 8)]
    sockets_per_user: usize,
    /// Sends per second into the live rooms (one per room), all together.
    #[arg(long, default_value_t = 200.0)]
    send_rate: f64,
    /// Logins and socket opens at a time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Local source addresses 127.0.0.2, ... (0: the kernel's choice).
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// After the last send, the longest wait for its answers and deliveries
    /// (longer than the gateway's 10 s send timeout).
    #[arg(long, default_value = "15s", value_parser = parse_secs)]
    settle: Duration,
    /// Our stack: clients go straight to the gateways, not through HAProxy.
    #[arg(long)]
    direct: bool,
    /// With --url: the RabbitMQ node the stack uses, for `rabbitmqctl -n`
    /// (default: the machine's broker).
    #[arg(long)]
    broker_node: Option<String>,
}

/// `crowd`.
#[derive(Debug, clap::Args)]
pub struct CrowdArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Members joining the room.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Publishers, in the room before the members come.
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long the publishers send, from the first member's `joined`.
    #[arg(long, default_value = "20", value_parser = parse_secs)]
    duration: Duration,
    /// The window the members' joins are spread over (seconds, or 500ms);
    /// 0: all at once.
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    join_within: Duration,
    /// After publishing, the longest wait for every member to have every
    /// message it is owed.
    #[arg(long, default_value = "15s", value_parser = parse_secs)]
    settle: Duration,
    /// Length of each message's text.
    #[arg(long, default_value_t = 64)]
    text_bytes: usize,
    /// Logins at a time, before the run.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Local source addresses 127.0.0.2, ... (0: the kernel's choice).
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// Our stack: clients go straight to the gateways, not through HAProxy.
    #[arg(long)]
    direct: bool,
}

/// `report`. Every figure comes from the summaries; only the machine's
/// facts and the first line are read at the time of the report, so it runs
/// right after the scenarios on the same machine (or is given `--machine`).
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The scenarios' JSON summaries, as NAME.json (`scripts/bench`'s
    /// BENCH_DIR).
    #[arg(long, env = "LOAD_REPORT_DIR", default_value = ".run/bench")]
    pub dir: PathBuf,
    /// The file to write. Only its part between the `bench:begin` and
    /// `bench:end` markers is replaced, so the notes around the tables stay;
    /// without the markers it is rewritten whole, under a `# Benchmarks`
    /// title. With --slow-pair it is overwritten by the pair's table alone.
    #[arg(long, env = "LOAD_REPORT_OUT", default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// When the measurements began, for the "Measured ..." line (default:
    /// now; `scripts/bench` gives the time before its first scenario).
    #[arg(long, env = "LOAD_REPORT_STARTED")]
    pub started: Option<String>,
    /// `scripts/bench`'s own arguments as one string (`--quick`), so that the
    /// report says which command measured it.
    #[arg(long = "bench-args", env = "LOAD_REPORT_BENCH_ARGS", default_value = "", allow_hyphen_values = true)]
    pub bench_args: String,
    /// Only the slow-reader pair (fanout-steady and fanout-slow), as
    /// `scripts/bench --slow-pair` measures it: a smaller report of its own.
    #[arg(long, env = "LOAD_REPORT_SLOW_PAIR")]
    pub slow_pair: bool,
    /// The pair's rate, when it was set by hand (`scripts/bench`'s
    /// BENCH_SLOW_RATE) rather than half the saturation rate: the text then
    /// says so. The rate shown is the summaries'.
    #[arg(long, env = "LOAD_REPORT_SLOW_RATE")]
    pub slow_rate: Option<String>,
    /// The machine's facts from this JSON file (the fields of
    /// `report::Machine`) instead of this machine's: to render again
    /// summaries that were measured elsewhere.
    #[arg(long, env = "LOAD_REPORT_MACHINE")]
    pub machine: Option<PathBuf>,
}

impl ReportArgs {
    /// Renders the report and writes it to `--out`.
    ///
    /// # Errors
    /// When a summary is missing or lacks a figure, or a file cannot be read
    /// or written.
    pub fn write(&self) -> anyhow::Result<()> {
        let summaries = Summaries::read(&self.dir, self.slow_pair)?;
        let now = || humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let machine = match &self.machine {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let machine: Machine =
                    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
                let started = self.started.clone().filter(|s| !s.is_empty()).unwrap_or(machine.started);
                Machine { started: if started.is_empty() { now() } else { started }, ..machine }
            }
            None => Machine::read(&self.started.clone().unwrap_or_else(now)),
        };
        let options = Options {
            args: self.bench_args.clone(),
            slow_pair: self.slow_pair,
            slow_rate_set: self.slow_rate.as_ref().is_some_and(|rate| !rate.is_empty()),
        };
        let section = report::render(&summaries, &machine, &options)
            .with_context(|| format!("rendering the summaries in {}", self.dir.display()))?;
        report::write(&self.out, &section, self.slow_pair)
    }
}

/// Seconds as a plain number (`2`, `0.5`), or a duration (`500ms`, `1m`).
fn parse_secs(value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|e| e.to_string()),
        Err(_) => humantime::parse_duration(value).map_err(|e| e.to_string()),
    }
}

/// Accepts `host:port` or `http://host:port`.
fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    let bare = value.trim_start_matches("http://").trim_end_matches('/');
    bare.parse().map_err(|e| format!("expected host:port: {e}"))
}

/// `KEY=VALUE`.
fn parse_env(value: &str) -> Result<(String, String), String> {
    let (key, value) = value.split_once('=').ok_or("expected KEY=VALUE")?;
    if key.is_empty() {
        return Err("expected KEY=VALUE".to_owned());
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// `name=pid`.
fn parse_watch(value: &str) -> Result<Watched, String> {
    let (name, pid) = value.split_once('=').ok_or("expected name=pid")?;
    Ok(Watched { name: name.to_owned(), pid: pid.parse().map_err(|e| format!("pid: {e}"))? })
}

/// The most clients, subscribers or sockets one invocation takes.
const MAX_CLIENTS: usize = 200_000;

impl TargetArgs {
    fn spec(&self, gateways: usize) -> TargetSpec {
        TargetSpec {
            urls: self.url.clone(),
            gateways: self.gateways.unwrap_or(gateways),
            bridges: self.bridges,
            haproxy: self.haproxy,
            private_services: self.private_services,
            broker_open_files: self.broker_open_files,
            watch: self.watch.clone(),
            shipped_limits: self.shipped_limits,
            gateway_env: self.gateway_env.clone(),
            admins: self.admin.clone(),
            ..TargetSpec::default()
        }
    }
}

/// Runs the scenario and returns its summary, with the target and the
/// machine's load before and after.
///
/// # Errors
/// When the target does not start, the run fails, or `--max-time` passes.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let (target_args, spec) = match &args.scenario {
        Scenario::Fanout(a) => (&a.target, a.target.spec(2)),
        Scenario::Idle(a) => (&a.target, a.target.spec(1)),
        Scenario::Storm(a) => (&a.target, a.target.spec(1)),
        Scenario::Drain(a) => {
            // One gateway and a spare to move to, or the clients spread over
            // `--gateways` of them.
            let base = a.target.spec(1);
            let spec = TargetSpec {
                spare_gateways: usize::from(base.gateways == 1),
                haproxy: true,
                drain_window: a.drain_window,
                ..base
            };
            (&a.target, spec)
        }
        Scenario::Rooms(a) => {
            let spec = TargetSpec { haproxy: !a.direct, private_services: true, ..a.target.spec(3) };
            (&a.target, spec)
        }
        Scenario::Crowd(a) => (&a.target, TargetSpec { haproxy: !a.direct, ..a.target.spec(3) }),
        Scenario::Report(_) => bail!("report runs no scenario: call ReportArgs::write"),
    };
    let runs = usize::from(target_args.runs);
    let loadavg_start = loadavg();
    let work = async {
        let mut target = Target::start(&spec).await?;
        let mut summary = dispatch(&args.scenario, &mut target, runs).await?;
        summary["target"] = target.describe(&spec);
        Ok::<_, anyhow::Error>(summary)
    };
    let mut summary = tokio::time::timeout(target_args.max_time, work)
        .await
        .map_err(|_| anyhow::anyhow!("gave up after --max-time {:?}", target_args.max_time))??;
    summary["machine"] = json!({
        "nproc": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
    });
    Ok(summary)
}

async fn dispatch(scenario: &Scenario, target: &mut Target, runs: usize) -> anyhow::Result<Value> {
    match scenario {
        Scenario::Fanout(a) => {
            ensure!(a.subscribers + a.publishers + a.slow_readers <= MAX_CLIENTS, "at most {MAX_CLIENTS} sockets");
            ensure!(a.duration <= Duration::from_secs(3600) && a.step_duration <= Duration::from_secs(600));
            ensure!(a.step_factor > 1.0 && a.rate > 0.0 && a.step_start > 0.0, "rates must grow and be positive");
            let params = fanout::Params {
                subscribers: a.subscribers,
                publishers: a.publishers,
                rooms: a.rooms,
                rate: a.rate,
                duration: a.duration,
                runs,
                text_bytes: a.text_bytes,
                settle: a.settle,
                concurrency: a.concurrency,
                sources: a.sources,
                max_in_flight: a.max_in_flight,
                step: a.step.then_some(fanout::Step {
                    start: a.step_start,
                    factor: a.step_factor,
                    duration: a.step_duration,
                    max_rate: a.max_rate,
                    p99_limit: a.p99_limit,
                    refine: a.refine,
                }),
                slow_readers: a.slow_readers,
                transport: a.transport,
            };
            fanout::run(target, &params).await
        }
        Scenario::Idle(a) => {
            ensure!(a.clients <= MAX_CLIENTS && a.hold <= Duration::from_secs(3600), "too big");
            let params = idle::Params {
                clients: a.clients,
                sources: a.sources,
                concurrency: a.concurrency,
                hold: a.hold,
                runs,
                transport: a.transport,
            };
            idle::run(target, &params).await
        }
        Scenario::Storm(a) => {
            ensure!(a.clients <= MAX_CLIENTS, "at most {MAX_CLIENTS} clients");
            let params = storm::Params { clients: a.clients, sources: a.sources, concurrency: a.concurrency, runs };
            storm::run(target, &params).await
        }
        Scenario::Drain(a) => {
            ensure!(a.clients <= MAX_CLIENTS && a.rate > 0.0, "at most {MAX_CLIENTS} clients, rate above 0");
            let params = drain::Params {
                clients: a.clients,
                room_size: a.room_size,
                rate: a.rate,
                drain_window: a.drain_window,
                settle: a.settle,
                runs,
                drain_pid: a.drain_pid,
            };
            drain::run(target, &params).await
        }
        Scenario::Rooms(a) => {
            ensure!(runs == 1, "rooms runs once (its rooms would exist already in a second run)");
            let params = rooms::Params {
                rooms: a.rooms,
                members: a.members,
                idle_rooms: a.idle_rooms,
                rooms_per_socket: a.rooms_per_socket,
                sockets_per_user: a.sockets_per_user,
                send_rate: a.send_rate,
                concurrency: a.concurrency,
                sources: a.sources,
                settle: a.settle,
                broker_node: a.broker_node.clone(),
            };
            rooms::run(target, &params).await
        }
        Scenario::Crowd(a) => {
            ensure!(runs == 1, "crowd runs once");
            ensure!(a.members + a.publishers <= MAX_CLIENTS, "at most {MAX_CLIENTS} sockets");
            let params = crowd::Params {
                members: a.members,
                publishers: a.publishers,
                rate: a.rate,
                duration: a.duration,
                join_within: a.join_within,
                settle: a.settle,
                text_bytes: a.text_bytes,
                concurrency: a.concurrency,
                sources: a.sources,
            };
            crowd::run(target, &params).await
        }
        Scenario::Report(_) => bail!("report runs no scenario"),
    }
}

/// `/proc/loadavg`'s first three numbers.
fn loadavg() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).filter_map(|n| n.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_and_watches() {
        let args = Args::try_parse_from([
            "warren-load",
            "fanout",
            "--url",
            "127.0.0.1:8081,http://127.0.0.1:8082/",
            "--watch",
            "gw-1=42",
            "--step",
            "--slow-readers",
            "1",
            "--gateway-env",
            "GATEWAY_MAX_QUEUE_BYTES=32768",
        ])
        .expect("parses");
        let Scenario::Fanout(fanout) = args.scenario else { panic!("fanout") };
        assert_eq!(fanout.target.url.len(), 2);
        assert_eq!(fanout.slow_readers, 1);
        assert_eq!(fanout.target.gateway_env, vec![("GATEWAY_MAX_QUEUE_BYTES".to_owned(), "32768".to_owned())]);
        assert!(Args::try_parse_from(["warren-load", "fanout", "--gateway-env", "=1"]).is_err());
        assert_eq!(fanout.target.watch, vec![Watched { name: "gw-1".into(), pid: 42 }]);
        assert!(fanout.step);
        assert!(Args::try_parse_from(["warren-load", "idle", "--runs", "0"]).is_err());
        assert!(Args::try_parse_from(["warren-load", "storm", "--watch", "x"]).is_err());
    }

    #[test]
    fn parses_rooms_and_crowd() {
        let args =
            Args::try_parse_from(["warren-load", "rooms", "--rooms", "3000", "--idle-rooms", "1000"]).expect("rooms");
        let Scenario::Rooms(rooms) = args.scenario else { panic!("rooms") };
        assert_eq!((rooms.rooms, rooms.members, rooms.idle_rooms), (3000, 2, 1000));
        assert_eq!((rooms.rooms_per_socket, rooms.sockets_per_user), (32, 8));
        let args =
            Args::try_parse_from(["warren-load", "crowd", "--join-within", "0.5", "--duration", "30s"]).expect("crowd");
        let Scenario::Crowd(crowd) = args.scenario else { panic!("crowd") };
        assert_eq!((crowd.members, crowd.publishers, crowd.rate), (1000, 10, 50.0));
        assert_eq!((crowd.join_within, crowd.duration), (Duration::from_millis(500), Duration::from_secs(30)));
        assert!(Args::try_parse_from(["warren-load", "crowd", "--join-within", "-1"]).is_err());
    }

    #[test]
    fn parses_report() {
        let args = Args::try_parse_from([
            "warren-load",
            "report",
            "--dir",
            "/tmp/bench",
            "--bench-args",
            "--quick --slow-pair",
            "--slow-pair",
            "--slow-rate",
            "600",
        ])
        .expect("report");
        let Scenario::Report(report) = args.scenario else { panic!("report") };
        assert_eq!(report.dir, PathBuf::from("/tmp/bench"));
        assert_eq!(report.out, PathBuf::from("docs/benchmarks.md"));
        assert_eq!(report.bench_args, "--quick --slow-pair");
        assert!(report.slow_pair);
        assert_eq!(report.slow_rate.as_deref(), Some("600"));
        assert_eq!((report.started, report.machine), (None, None));
        let args = Args::try_parse_from(["warren-load", "report", "--bench-args="]).expect("no bench args");
        let Scenario::Report(report) = args.scenario else { panic!("report") };
        assert_eq!((report.bench_args.as_str(), report.slow_pair), ("", false));
    }
}
