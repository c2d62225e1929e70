//! Where a run's clients go, and which processes it measures: addresses
//! someone else runs (HAProxy, or gateways to spread over directly), or a
//! stack of our own started with `testkit` (binaries from `WARREN_BIN_DIR`),
//! optionally on a private Redis and RabbitMQ so that nothing else on the
//! machine shares them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use testkit::services::{NodeOptions, RabbitNode, RedisServer};
use testkit::stack::{Extras, Shape, Stack};

use crate::load::procs::{self, Watched};

/// The gateway limits of a stack we start: far above any run, so that a
/// run measures the gateway, not its abuse limits (which exist for one
/// browser, not for a load generator on one address).
pub const RAISED_LIMITS: &[(&str, &str)] = &[
    ("GATEWAY_MAX_SOCKETS", "1000000"),
    ("GATEWAY_MAX_SOCKETS_PER_USER", "1000"),
    ("GATEWAY_MAX_ROOMS_PER_SOCKET", "1000"),
    ("GATEWAY_SEND_RATE", "1000000"),
    ("GATEWAY_USER_SEND_RATE", "1000000"),
    ("GATEWAY_HANDSHAKE_RATE", "1000000"),
];

/// The gateway settings of a stack we start with `--shipped-limits`: none
/// of the limits raised, and HAProxy on loopback trusted for
/// `X-Forwarded-For`, exactly as `scripts/dev-up` starts it.
pub const SHIPPED: &[(&str, &str)] = &[("GATEWAY_TRUSTED_PROXIES", "127.0.0.0/8,::1/128")];

/// What to run against.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Existing addresses (an HAProxy, or gateways to spread over); empty
    /// to start a stack of our own.
    pub urls: Vec<SocketAddr>,
    /// Our stack: gateways started at once.
    pub gateways: usize,
    /// Our stack: gateways HAProxy knows of but that start later.
    pub spare_gateways: usize,
    /// Our stack: bridges.
    pub bridges: usize,
    /// Our stack: HAProxy in front (clients then go through it).
    pub haproxy: bool,
    /// Our stack: its own Redis and RabbitMQ instead of the shared ones.
    pub private_services: bool,
    /// Our private RabbitMQ's open-files limit (default: ours).
    pub broker_open_files: Option<u32>,
    /// Our stack: the gateways' drain window.
    pub drain_window: Duration,
    /// More processes to measure (`--watch name=pid`).
    pub watch: Vec<Watched>,
    /// Our stack: the gateways keep their shipped limits ([`SHIPPED`])
    /// instead of [`RAISED_LIMITS`]: a run as a new user's stack sees it.
    pub shipped_limits: bool,
    /// Our stack: more gateway environment, after [`RAISED_LIMITS`] (so it
    /// wins), e.g. a smaller `GATEWAY_MAX_QUEUE_BYTES`.
    pub gateway_env: Vec<(String, String)>,
    /// With `urls`: the gateways' admin addresses, for their `/metrics`.
    pub admins: Vec<SocketAddr>,
}

impl Default for TargetSpec {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            gateways: 1,
            spare_gateways: 0,
            bridges: 1,
            haproxy: false,
            private_services: false,
            broker_open_files: None,
            drain_window: Duration::from_secs(10),
            watch: Vec::new(),
            shipped_limits: false,
            gateway_env: Vec::new(),
            admins: Vec::new(),
        }
    }
}

/// A stack we started, and its services when private.
#[derive(Debug)]
pub struct Own {
    /// Bridges, gateways, HAProxy.
    pub stack: Stack,
    /// Its Redis, when private.
    pub redis: Option<RedisServer>,
    /// Its RabbitMQ node, when private.
    pub rabbit: Option<RabbitNode>,
}

/// The addresses clients use, and the processes behind them.
#[derive(Debug)]
pub struct Target {
    fronts: Vec<SocketAddr>,
    /// Our own stack, when we started one.
    pub own: Option<Own>,
    watch: Vec<Watched>,
    /// The admin addresses given with `urls`.
    admins: Vec<SocketAddr>,
}

impl Target {
    /// Uses `spec.urls`, or starts a stack.
    ///
    /// # Errors
    /// When an address is not on loopback, an option does not fit the kind
    /// of target, or the stack does not start.
    pub async fn start(spec: &TargetSpec) -> anyhow::Result<Self> {
        ensure!(spec.urls.is_empty() || spec.gateway_env.is_empty(), "gateway environment is for a stack of our own");
        ensure!(!spec.urls.is_empty() || spec.admins.is_empty(), "admin addresses go with --url");
        if !spec.urls.is_empty() {
            for url in spec.urls.iter().chain(&spec.admins) {
                ensure!(url.ip().is_loopback(), "{url}: load runs target loopback addresses only");
            }
            let (fronts, admins) = (spec.urls.clone(), spec.admins.clone());
            return Ok(Self { fronts, own: None, watch: spec.watch.clone(), admins });
        }
        let (redis, rabbit) = if spec.private_services {
            let redis = RedisServer::start().await.context("start a private Redis")?;
            let options = NodeOptions { open_files: spec.broker_open_files, ..NodeOptions::default() };
            let rabbit = RabbitNode::start_with(options).await.context("start a private RabbitMQ")?;
            (Some(redis), Some(rabbit))
        } else {
            (None, None)
        };
        let extras = Extras {
            redis_url: redis.as_ref().map(RedisServer::url),
            amqp_url: rabbit.as_ref().map(RabbitNode::url),
            spare_gateways: spec.spare_gateways,
            drain_window: Some(spec.drain_window),
            gateway_env: (if spec.shipped_limits { SHIPPED } else { RAISED_LIMITS })
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain(spec.gateway_env.iter().cloned())
                .collect(),
            ..Extras::default()
        };
        let shape = Shape { bridges: spec.bridges, gateways: spec.gateways, haproxy: spec.haproxy };
        let stack = Stack::start_with(shape, extras).await.context("start the stack")?;
        let fronts = match &stack.haproxy {
            Some((_, front)) => vec![*front],
            None => stack.gateways.iter().map(|g| g.addr).collect(),
        };
        Ok(Self { fronts, own: Some(Own { stack, redis, rabbit }), watch: spec.watch.clone(), admins: Vec::new() })
    }

    /// The address client `index` uses (round robin).
    pub fn front(&self, index: usize) -> SocketAddr {
        self.fronts[index % self.fronts.len()]
    }

    /// Every address clients use.
    pub fn fronts(&self) -> &[SocketAddr] {
        &self.fronts
    }

    /// The gateways' admin addresses: our stack's running gateways, or the
    /// ones given; empty when unknown.
    pub fn admins(&self) -> Vec<SocketAddr> {
        match &self.own {
            Some(own) => own.stack.gateways.iter().map(|g| g.admin).collect(),
            None => self.admins.clone(),
        }
    }

    /// The processes to measure now: our stack's (gateways, bridges,
    /// HAProxy, private services), the ones given, and this one.
    pub fn watched(&self) -> Vec<Watched> {
        let mut out = Vec::new();
        let mut add = |name: &str, pid: Option<u32>| {
            if let Some(pid) = pid {
                out.push(Watched { name: name.to_owned(), pid });
            }
        };
        if let Some(own) = &self.own {
            for gateway in &own.stack.gateways {
                add(&gateway.instance, gateway.process.pid());
            }
            for (index, bridge) in own.stack.bridges.iter().enumerate() {
                add(&format!("bridge-{}", index + 1), bridge.process.pid());
            }
            if let Some((haproxy, _)) = &own.stack.haproxy {
                add("haproxy", haproxy.pid());
            }
            add("redis", own.redis.as_ref().and_then(RedisServer::pid));
            add("rabbitmq", own.rabbit.as_ref().and_then(RabbitNode::pid));
        }
        out.extend(self.watch.iter().cloned());
        out.push(Watched { name: "warren-load".to_owned(), pid: std::process::id() });
        out
    }

    /// The summed RSS of the gateways we can see (names starting `gw`), KiB.
    pub fn gateways_rss_kib(&self) -> Option<u64> {
        let gateways: Vec<Watched> = self.watched().into_iter().filter(|w| w.name.starts_with("gw")).collect();
        if gateways.is_empty() {
            return None;
        }
        gateways.iter().map(|w| procs::rss_kib(w.pid)).sum()
    }

    /// Replaces every gateway of our stack with a fresh process (SIGKILL,
    /// then started again on its ports), so that a run's memory figures
    /// start from a new process. Does nothing for a stack we did not start.
    ///
    /// # Errors
    /// When a gateway does not come back.
    pub async fn fresh_gateways(&mut self) -> anyhow::Result<()> {
        let Some(own) = self.own.as_mut() else { return Ok(()) };
        for index in 0..own.stack.gateways.len() {
            let process = &mut own.stack.gateways[index].process;
            if process.pid().is_some() {
                process.signal("KILL").await?;
                process.wait(Duration::from_secs(10)).await?;
            }
            own.stack.restart_gateway(index).await?;
        }
        Ok(())
    }

    /// A description for the summary.
    pub fn describe(&self, spec: &TargetSpec) -> serde_json::Value {
        let fronts: Vec<String> = self.fronts.iter().map(ToString::to_string).collect();
        match &self.own {
            None => serde_json::json!({ "urls": fronts, "admins": self.admins, "watched": self.watch }),
            Some(_) => serde_json::json!({
                "own_stack": {
                    "gateways": spec.gateways,
                    "spare_gateways": spec.spare_gateways,
                    "bridges": spec.bridges,
                    "haproxy": spec.haproxy,
                    "private_services": spec.private_services,
                    "shipped_limits": spec.shipped_limits,
                    "broker_open_files": spec.broker_open_files,
                    "drain_window_ms": spec.drain_window.as_millis() as u64,
                    "limits_env": (if spec.shipped_limits { SHIPPED } else { RAISED_LIMITS })
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>(),
                    "gateway_env": spec.gateway_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                },
                "fronts": fronts,
            }),
        }
    }
}
