//! `warren-dev`: the whole Warren stack on this machine, behind HAProxy, from
//! the same starter the tests use ([`testkit::stack`]). `scripts/dev-up`
//! runs it for developers, `scripts/observability-check` for its stack.
//!
//! It uses the Redis and RabbitMQ it is given (`WARREN_REDIS_URL`,
//! `WARREN_AMQP_URL`), else reuses the ones answering on their loopback
//! ports, else starts private ones that live as long as it does. It starts
//! the bridges, then the gateways, then HAProxy, each once the ones before
//! are ready; writes `<run dir>/stack.json` (names, PIDs, addresses) once
//! all are; logs each process's exit; and on SIGINT or SIGTERM stops what it
//! started as an orchestrator would: HAProxy and the gateways first (they
//! drain), the bridges after them. It exits when HAProxy does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rand::Rng;
use serde_json::json;
use testkit::services::{RabbitNode, RedisServer};
use testkit::stack::{Extras, Ports, Process, Shape, Stack};
use tokio::signal::unix::{SignalKind, signal};

/// How long a process may take to stop after SIGTERM before it is killed:
/// the gateways' shipped drain window and shutdown grace fit in it.
const STOP_GRACE: Duration = Duration::from_secs(40);

/// The stack's shape, ports and settings; every flag is also a `WARREN_*`
/// variable, as `scripts/dev-up --help` lists them.
#[derive(Debug, Parser)]
#[command(name = "warren-dev", about = "Runs Warren on this machine, behind HAProxy")]
struct Config {
    /// Gateways to start, gw-1..gw-N.
    #[arg(long, env = "WARREN_GATEWAYS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    gateways: u16,
    /// Bridges to start, bridge-1..bridge-N.
    #[arg(long, env = "WARREN_BRIDGES", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    bridges: u16,
    /// HAProxy's port: the URL to open.
    #[arg(long, env = "WARREN_PORT", default_value_t = 8080)]
    port: u16,
    /// Gateway i listens on this port + i - 1.
    #[arg(long, env = "WARREN_GATEWAY_BASE_PORT", default_value_t = 8081)]
    gateway_base_port: u16,
    /// ... and serves /healthz, /readyz and /metrics on this one + i - 1.
    #[arg(long, env = "WARREN_GATEWAY_ADMIN_BASE_PORT", default_value_t = 9081)]
    gateway_admin_base_port: u16,
    /// Bridge gRPC ports, likewise.
    #[arg(long, env = "WARREN_BRIDGE_BASE_PORT", default_value_t = 50051)]
    bridge_base_port: u16,
    /// Bridge admin ports, likewise.
    #[arg(long, env = "WARREN_BRIDGE_ADMIN_BASE_PORT", default_value_t = 9181)]
    bridge_admin_base_port: u16,
    /// Free ports instead of the ones above (stack.json says which).
    #[arg(long, env = "WARREN_FREE_PORTS")]
    free_ports: bool,
    /// The cookie signing secret; a random one per run logs everybody out
    /// on every restart.
    #[arg(long, env = "WARREN_SESSION_SECRET", hide_env_values = true)]
    session_secret: Option<String>,
    /// Extra WebSocket origins (comma-separated).
    #[arg(long, env = "WARREN_ALLOWED_ORIGINS")]
    allowed_origins: Option<String>,
    /// Turns on the server API (/api/v1, docs/api.md) with this bearer token.
    #[arg(long, env = "WARREN_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Peers trusted to set X-Forwarded-For (HAProxy, on loopback).
    #[arg(long, env = "WARREN_TRUSTED_PROXIES", default_value = "127.0.0.0/8,::1/128")]
    trusted_proxies: String,
    /// The binaries' log format: text or json.
    #[arg(long, env = "WARREN_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// An external Redis (rediss:// for TLS) instead of the loopback one.
    #[arg(long, env = "WARREN_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// An external RabbitMQ (amqps:// for TLS) instead of the loopback one.
    #[arg(long, env = "WARREN_AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// A PEM CA bundle both binaries trust for TLS, on top of the system's.
    #[arg(long, env = "WARREN_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Start a Redis of its own even when one answers on loopback or a URL
    /// is given (to stop it on purpose, as the observability check does).
    #[arg(long, env = "WARREN_PRIVATE_REDIS")]
    private_redis: bool,
    /// The gateways' drain window (`3s`, `500ms`); default: the binary's.
    #[arg(long, env = "WARREN_DRAIN_WINDOW", value_parser = humantime::parse_duration)]
    drain_window: Option<Duration>,
    /// Where the logs, haproxy.cfg and stack.json go.
    #[arg(long, env = "WARREN_RUN_DIR", default_value = ".run")]
    run_dir: PathBuf,
}

/// The backing services the stack runs on, and the private ones to keep.
struct Services {
    redis_url: String,
    amqp_url: String,
    private_redis: Option<RedisServer>,
    _private_rabbit: Option<RabbitNode>,
}

fn say(message: &str) {
    eprintln!("[warren-dev] {message}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let services = services(&config).await?;
    let extras = extras(&config, &services)?;
    let shape = Shape { bridges: config.bridges.into(), gateways: config.gateways.into(), haproxy: true };
    say(&format!("starting {} bridges, {} gateways and HAProxy", config.bridges, config.gateways));
    let mut stack = Stack::start_with(shape, extras).await?;
    write_state(&config, &stack, services.private_redis.as_ref())?;
    say(&format!(
        "Warren is up: http://{}  ({} gateways, {} bridges; logs in {}; Ctrl-C stops)",
        stack.front(),
        config.gateways,
        config.bridges,
        config.run_dir.display()
    ));
    let haproxy_exited = supervise(&mut stack).await?;
    say("stopping HAProxy and the gateways, then the bridges");
    stack.stop(STOP_GRACE).await?;
    say("stopped");
    drop(services);
    if haproxy_exited { std::process::exit(1) } else { Ok(()) }
}

/// The Redis and RabbitMQ to use: given, reused on loopback, or started.
async fn services(config: &Config) -> anyhow::Result<Services> {
    let (redis_url, private_redis) = match &config.redis_url {
        Some(url) if !config.private_redis => (url.clone(), None),
        None if !config.private_redis && answers(6379).await => {
            say("reusing Redis on :6379");
            ("redis://127.0.0.1:6379".to_owned(), None)
        }
        _ => {
            let server = RedisServer::start().await.context("start a private redis-server")?;
            say(&format!("started a private Redis on :{}", server.port()));
            (server.url(), Some(server))
        }
    };
    let (amqp_url, private_rabbit) = match &config.amqp_url {
        Some(url) => (url.clone(), None),
        None if answers(5672).await => {
            say("reusing RabbitMQ on :5672");
            ("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(), None)
        }
        None => {
            say("starting a private RabbitMQ node (takes a few seconds)");
            let node = RabbitNode::start().await.context("start a private RabbitMQ node")?;
            (node.url(), Some(node))
        }
    };
    Ok(Services { redis_url, amqp_url, private_redis, _private_rabbit: private_rabbit })
}

async fn answers(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    matches!(tokio::time::timeout(Duration::from_secs(2), connect).await, Ok(Ok(_)))
}

/// The stack's settings from the configuration.
fn extras(config: &Config, services: &Services) -> anyhow::Result<Extras> {
    let mut common = vec![
        ("GATEWAY_LOG_FORMAT".to_owned(), config.log_format.clone()),
        ("BRIDGE_LOG_FORMAT".to_owned(), config.log_format.clone()),
    ];
    if let Some(ca) = &config.ca_file {
        let ca = std::fs::canonicalize(ca).with_context(|| format!("WARREN_CA_FILE {}", ca.display()))?;
        let ca = ca.display().to_string();
        common.push(("GATEWAY_TLS_CA_FILE".to_owned(), ca.clone()));
        common.push(("BRIDGE_TLS_CA_FILE".to_owned(), ca));
    }
    let mut gateway = vec![("GATEWAY_TRUSTED_PROXIES".to_owned(), config.trusted_proxies.clone())];
    if let Some(origins) = &config.allowed_origins {
        gateway.push(("GATEWAY_ALLOWED_ORIGINS".to_owned(), origins.clone()));
    }
    if let Some(token) = &config.api_token {
        gateway.push(("GATEWAY_API_TOKEN".to_owned(), token.clone()));
    }
    let secret = config.session_secret.clone().unwrap_or_else(|| {
        say("note: a random session secret for this run; logins end when it stops (set WARREN_SESSION_SECRET to keep them)");
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    });
    let ports = (!config.free_ports).then_some(Ports {
        front: config.port,
        gateway: config.gateway_base_port,
        gateway_admin: config.gateway_admin_base_port,
        bridge: config.bridge_base_port,
        bridge_admin: config.bridge_admin_base_port,
    });
    Ok(Extras {
        redis_url: Some(services.redis_url.clone()),
        amqp_url: Some(services.amqp_url.clone()),
        drain_window: config.drain_window,
        gateway_env: gateway,
        common_env: common,
        ports,
        session_secret: Some(secret),
        shipped_timings: true,
        run_dir: Some(config.run_dir.clone()),
        ..Extras::default()
    })
}

/// `stack.json` in the run directory: what runs where, for scripts that act
/// on single processes (the observability check drains one gateway, kills
/// the bridge, stops the private Redis). No URL: they may hold passwords.
fn write_state(config: &Config, stack: &Stack, redis: Option<&RedisServer>) -> anyhow::Result<()> {
    let process = |name: &str, process: &Process, addr: SocketAddr, admin: SocketAddr| json!({"name": name, "pid": process.pid(), "addr": addr.to_string(), "admin": admin.to_string()});
    let state = json!({
        "front": stack.front().to_string(),
        "haproxy_pid": stack.haproxy.as_ref().and_then(|(process, _)| process.pid()),
        "gateways": stack.gateways.iter()
            .map(|g| process(&g.instance, &g.process, g.addr, g.admin)).collect::<Vec<_>>(),
        "bridges": stack.bridges.iter()
            .map(|b| process(&b.process.name, &b.process, b.addr, b.admin)).collect::<Vec<_>>(),
        "private_redis": redis.map(|server| json!({"pid": server.pid(), "port": server.port()})),
    });
    // Written whole, then moved: a reader never sees half of it.
    let (path, partial) = (config.run_dir.join("stack.json"), config.run_dir.join("stack.json.partial"));
    std::fs::write(&partial, serde_json::to_vec_pretty(&state)?)?;
    std::fs::rename(&partial, &path)?;
    Ok(())
}

/// Until SIGINT or SIGTERM (false) or HAProxy's exit (true), logging every
/// process that exits meanwhile.
async fn supervise(stack: &mut Stack) -> anyhow::Result<bool> {
    let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(false),
            _ = terminate.recv() => return Ok(false),
            _ = tick.tick() => {}
        }
        let processes = stack
            .gateways
            .iter_mut()
            .map(|g| &mut g.process)
            .chain(stack.bridges.iter_mut().map(|b| &mut b.process))
            .chain(stack.haproxy.as_mut().map(|(process, _)| process));
        for process in processes {
            if let Some(code) = process.try_exit()? {
                let status = code.map_or_else(|| "a signal".to_owned(), |code| format!("status {code}"));
                say(&format!("{} exited ({status}): see its log", process.name));
                if process.name == "haproxy" {
                    return Ok(true);
                }
            }
        }
    }
}
