//! `warren-chaos`: virtual users chat while the stack is broken under them;
//! prints a JSON verdict as its last line and fails unless nothing was lost
//! or duplicated, nobody was sent to the login, and reconnects stayed within
//! the drain window plus 5 s.
//!
//! Without `--url` it starts a private stack (own Redis and RabbitMQ node,
//! bridges, gateways, HAProxy) and runs the fault schedule; with `--url` it
//! only drives users against a stack someone else breaks (Kubernetes).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use loadgen::chaos::{self, Lab, Load, RedisKind, Setup};
use testkit::stack::{Front, Shape};

#[derive(Debug, Parser)]
#[command(name = "warren-chaos", version, about)]
struct Args {
    /// Drive this stack (host:port of its balancer) instead of starting one;
    /// no faults are injected then.
    #[arg(long, env = "CHAOS_URL", value_parser = parse_front)]
    url: Option<SocketAddr>,
    /// Virtual users.
    #[arg(long, env = "CHAOS_CLIENTS", default_value_t = 200)]
    clients: usize,
    /// Rooms the users are spread over (default: one per 20 users).
    #[arg(long, env = "CHAOS_ROOMS")]
    rooms: Option<usize>,
    /// How long users send.
    #[arg(long, env = "CHAOS_DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Mean time between one user's sends.
    #[arg(long, env = "CHAOS_SEND_EVERY", default_value = "500ms", value_parser = humantime::parse_duration)]
    send_every: Duration,
    /// After sending stops, how long users keep listening.
    #[arg(long, env = "CHAOS_SETTLE", default_value = "15s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// The gateways' drain window (a private stack's, or the one to judge
    /// reconnect times by).
    #[arg(long, env = "CHAOS_DRAIN_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    drain_window: Duration,
    /// Bridges of a private stack.
    #[arg(long, env = "CHAOS_BRIDGES", default_value_t = 2)]
    bridges: usize,
    /// Gateways of a private stack (one more is started as a replacement).
    #[arg(long, env = "CHAOS_GATEWAYS", default_value_t = 3)]
    gateways: usize,
    /// The share of users on an event stream (`/sse`) instead of a WebSocket.
    #[arg(long, env = "CHAOS_SSE_SHARE", default_value_t = 0.25)]
    sse_share: f64,
    /// How the private stack's HAProxy picks a gateway: the shipped hash on
    /// the session cookie, or round robin (no affinity at all).
    #[arg(long, env = "CHAOS_BALANCE", value_enum, default_value_t = Balance::Hash)]
    balance: Balance,
    /// The private stack's Redis: one server (stopped and started again
    /// mid-run), or a master, a replica and three sentinels (the master
    /// killed mid-run, the sentinels failing over).
    #[arg(long, env = "CHAOS_REDIS", value_enum, default_value_t = RedisKind::Single)]
    redis: RedisKind,
    /// The private stack's RabbitMQ as a cluster of three nodes (every
    /// bridge given each node's URL); the node leading the partitions is
    /// killed mid-run and started again, instead of one node restarted.
    #[arg(long, env = "CHAOS_RABBITMQ_CLUSTER")]
    rabbitmq_cluster: bool,
}

/// HAProxy's balance algorithm in a private stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Balance {
    /// `balance hash req.cook(jsessionid)`, as shipped.
    Hash,
    /// `balance roundrobin`: every request anywhere.
    RoundRobin,
}

/// Accepts `host:port` or `http://host:port`.
fn parse_front(value: &str) -> Result<SocketAddr, String> {
    let bare = value.trim_start_matches("http://").trim_end_matches('/');
    bare.parse().map_err(|e| format!("expected host:port: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ops::telemetry::init_logging(ops::telemetry::LogFormat::Text);
    let load = Load {
        clients: args.clients,
        rooms: args.rooms.unwrap_or(args.clients.div_ceil(20)).max(1),
        duration: args.duration,
        send_every: args.send_every,
        settle: args.settle,
        sse_share: args.sse_share,
    };
    anyhow::ensure!((0.0..=1.0).contains(&args.sse_share), "--sse-share is a share: 0 to 1");
    let mut rabbitmq_nodes = None;
    let verdict = match args.url {
        Some(front) => chaos::drive(front, &load, async { Ok(()) }).await?,
        None => {
            let front = Front { round_robin: args.balance == Balance::RoundRobin, ..Front::default() };
            let shape = Shape { bridges: args.bridges, gateways: args.gateways, haproxy: true };
            let setup = Setup {
                drain_window: args.drain_window,
                front,
                redis: args.redis,
                rabbitmq_cluster: args.rabbitmq_cluster,
            };
            let mut lab = Lab::start(shape, setup).await?;
            rabbitmq_nodes = Some(lab.rabbit.nodes());
            let front = lab.stack.front();
            let duration = load.duration;
            let faults = async { lab.faults(duration).await };
            chaos::drive(front, &load, faults).await?
        }
    };
    let mut line = serde_json::to_value(&verdict)?;
    if args.url.is_none() {
        line["balance"] = match args.balance {
            Balance::Hash => "hash",
            Balance::RoundRobin => "round-robin",
        }
        .into();
        line["redis"] = args.redis.name().into();
        line["rabbitmq_nodes"] = rabbitmq_nodes.into();
    }
    println!("{line}");
    let limit = args.drain_window + Duration::from_secs(5);
    if !verdict.passed(limit) {
        eprintln!("chaos: FAILED (lost, duplicates and relogins must be 0; reconnect p99 at most {limit:?})");
        std::process::exit(1);
    }
    Ok(())
}
