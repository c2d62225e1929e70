//! The chaos run: virtual users chat through the balancer while gateways,
//! bridges, RabbitMQ and Redis are stopped, killed and restarted under them;
//! at the end every user's messages are checked against everything acked in
//! its room.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use testkit::rabbit_cluster::RabbitCluster;
use testkit::sentinel::Sentinels;
use testkit::services::{RabbitNode, RedisServer};
use testkit::stack::{Extras, Front, Shape, Stack};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Profile, Report, Run};
use crate::ledger::Ledger;
use crate::socket::Transport;

/// How many users and for how long.
#[derive(Debug, Clone)]
pub struct Load {
    /// Virtual users.
    pub clients: usize,
    /// Rooms they are spread over.
    pub rooms: usize,
    /// How long they send.
    pub duration: Duration,
    /// Mean time between one user's sends.
    pub send_every: Duration,
    /// After sending stops, how long users keep listening for the rest.
    pub settle: Duration,
    /// The share of users on an event stream instead of a WebSocket (0 to 1).
    pub sse_share: f64,
}

impl Load {
    /// How many of the users are on event streams.
    pub fn sse_clients(&self) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let count = (self.clients as f64 * self.sse_share.clamp(0.0, 1.0)).round() as usize;
        count.min(self.clients)
    }

    /// Every n-th user is on an event stream, spread over rooms and time.
    fn transport_of(&self, user: usize) -> Transport {
        let streams = self.sse_clients();
        // Users 0, k, 2k, ... for streams = clients / k.
        if streams > 0 && user * streams / self.clients != (user + 1) * streams / self.clients {
            Transport::Sse
        } else {
            Transport::Ws
        }
    }
}

/// The last line of a run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// Users.
    pub clients: usize,
    /// Of them, users on an event stream.
    pub sse_clients: usize,
    /// Messages acked in all.
    pub acked: usize,
    /// Acked messages some user of their room never received.
    pub lost: u64,
    /// Messages a user received twice (same id, or same sender and cid).
    pub duplicates: u64,
    /// Times a user was sent back to the login.
    pub relogins: u64,
    /// Sockets replaced.
    pub reconnects: u64,
    /// Median time from losing a socket to being joined on a new one.
    pub reconnect_p50_ms: u64,
    /// 99th percentile of the same.
    pub reconnect_p99_ms: u64,
    /// The longest time any user went without a message while sending went on.
    pub max_gap_ms: u64,
}

impl Verdict {
    /// Whether the run kept every promise: nothing lost, nothing twice, nobody
    /// bounced to the login, and reconnects within `reconnect_limit`.
    pub fn passed(&self, reconnect_limit: Duration) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.relogins == 0
            && u128::from(self.reconnect_p99_ms) <= reconnect_limit.as_millis()
    }
}

/// Drives `load` against `front` while `faults` runs, and judges the result.
///
/// # Errors
/// When the faults fail to run (a process would not start again).
pub async fn drive<F>(front: SocketAddr, load: &Load, faults: F) -> anyhow::Result<Verdict>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let ledger = Arc::new(Ledger::default());
    let run = Run {
        front,
        ledger: ledger.clone(),
        stop_sending: CancellationToken::new(),
        stop: CancellationToken::new(),
        live: Arc::default(),
    };
    let prefix = testkit::unique("chaos");
    let mut users = JoinSet::new();
    for n in 0..load.clients {
        let profile = Profile {
            user: format!("{prefix}-u{n}"),
            room: format!("{prefix}-r{}", n % load.rooms.max(1)),
            send_every: load.send_every,
            transport: load.transport_of(n),
        };
        users.spawn(agent::run(run.clone(), profile));
        // Spread the logins a little, as real users arrive.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let progress = tokio::spawn(report_progress(ledger.clone(), run.stop.clone()));
    let started = Instant::now();
    let faults_result = tokio::join!(faults, tokio::time::sleep(load.duration)).0;
    tracing::info!(elapsed = ?started.elapsed(), "sending stops; settling");
    run.stop_sending.cancel();
    tokio::time::sleep(load.settle).await;
    run.stop.cancel();
    let mut reports = Vec::new();
    while let Some(report) = users.join_next().await {
        reports.push(report.context("a user task panicked")?);
    }
    progress.abort();
    faults_result?;
    let mut verdict = judge(load.clients, &ledger, &reports);
    verdict.sse_clients = load.sse_clients();
    Ok(verdict)
}

async fn report_progress(ledger: Arc<Ledger>, stop: CancellationToken) {
    let started = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = stop.cancelled() => return,
        }
        eprintln!("[{:>4}s] acked so far: {}", started.elapsed().as_secs(), ledger.total());
    }
}

/// Compares every user's messages with what was acked in its room.
pub fn judge(clients: usize, ledger: &Ledger, reports: &[Report]) -> Verdict {
    let mut lost = 0;
    let mut times: Vec<Duration> = Vec::new();
    for report in reports {
        let acked = ledger.acked_in(&report.room);
        let missed: Vec<u64> = acked.keys().filter(|id| !report.received.ids.contains(id)).copied().collect();
        let missing = missed.len();
        if missing > 0 {
            let mut got: Vec<u64> = report.received.ids.iter().copied().collect();
            got.sort_unstable();
            let first = missed[0];
            let around: Vec<u64> = got.iter().copied().filter(|id| id + 5 >= first && *id <= first + 25).collect();
            tracing::warn!(room = %report.room, missing, ?missed, ?around, reconnects = report.reconnects, "a user missed acked messages");
        }
        lost += missing as u64;
        times.extend(&report.reconnect_times);
    }
    times.sort_unstable();
    Verdict {
        clients,
        sse_clients: 0,
        acked: ledger.total(),
        lost,
        duplicates: reports.iter().map(|r| r.received.duplicates).sum(),
        relogins: reports.iter().map(|r| r.relogins).sum(),
        reconnects: reports.iter().map(|r| r.reconnects).sum(),
        reconnect_p50_ms: millis(percentile(&times, 0.50)),
        reconnect_p99_ms: millis(percentile(&times, 0.99)),
        max_gap_ms: millis(reports.iter().map(|r| r.received.max_gap).max().unwrap_or_default()),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The Redis a private stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisKind {
    /// One `redis-server`, stopped and started again.
    Single,
    /// A master, a replica and three sentinels; the master is killed and
    /// the sentinels fail over.
    Sentinel,
}

impl RedisKind {
    /// Its name in the verdict line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Sentinel => "sentinel",
        }
    }
}

/// A private stack's Redis, as it was started.
#[derive(Debug)]
pub enum LabRedis {
    /// One server (boxed: its handle is large beside the other's).
    Single(Box<RedisServer>),
    /// Behind Sentinel.
    Sentinel(Sentinels),
}

/// A private stack's RabbitMQ, as it was started.
#[derive(Debug)]
pub enum LabRabbit {
    /// One node, stopped and started again.
    Single(Box<RabbitNode>),
    /// Three clustered nodes; the one leading the partitions is killed.
    Cluster(RabbitCluster),
}

impl LabRabbit {
    /// How many RabbitMQ nodes.
    pub fn nodes(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(cluster) => cluster.nodes().len(),
        }
    }
}

/// What a private stack runs on, beyond its processes' shape.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The gateways' drain window.
    pub drain_window: Duration,
    /// How HAProxy differs from the shipped config.
    pub front: Front,
    /// The Redis.
    pub redis: RedisKind,
    /// A three-node RabbitMQ cluster instead of one node.
    pub rabbitmq_cluster: bool,
}

/// A private stack to break: its own Redis and RabbitMQ, 2 bridges, 3
/// gateways (and a spare), HAProxy.
#[derive(Debug)]
pub struct Lab {
    /// The processes.
    pub stack: Stack,
    /// Its Redis.
    pub redis: LabRedis,
    /// Its RabbitMQ.
    pub rabbit: LabRabbit,
}

impl Lab {
    /// Starts everything.
    ///
    /// # Errors
    /// When a service or process does not start.
    pub async fn start(shape: Shape, setup: Setup) -> anyhow::Result<Self> {
        let (redis, redis_url, gateway_env) = match setup.redis {
            RedisKind::Single => {
                let server = RedisServer::start().await.context("start Redis")?;
                let url = server.url();
                (LabRedis::Single(Box::new(server)), url, Vec::new())
            }
            RedisKind::Sentinel => {
                let set = Sentinels::start().await.context("start Redis with Sentinel")?;
                let (url, env) = (set.url(), set.gateway_env());
                (LabRedis::Sentinel(set), url, env)
            }
        };
        let (rabbit, amqp_url) = if setup.rabbitmq_cluster {
            let cluster = RabbitCluster::start().await.context("start a RabbitMQ cluster")?;
            // Every bridge knows every node, as it would a cluster's pods.
            let urls = cluster.urls().join(",");
            (LabRabbit::Cluster(cluster), urls)
        } else {
            let node = RabbitNode::start().await.context("start RabbitMQ")?;
            let url = node.url();
            (LabRabbit::Single(Box::new(node)), url)
        };
        let extras = Extras {
            redis_url: Some(redis_url),
            gateway_env,
            amqp_url: Some(amqp_url),
            spare_gateways: 1,
            drain_window: Some(setup.drain_window),
            front: setup.front,
            ..Extras::default()
        };
        let stack = Stack::start_with(Shape { haproxy: true, ..shape }, extras).await?;
        Ok(Self { stack, redis, rabbit })
    }

    /// The fault schedule, spread over `duration`: a gateway drained
    /// (SIGTERM: scale-down), a gateway crashed (SIGKILL) and replaced, a
    /// bridge killed and restarted, RabbitMQ restarted (or, in a cluster,
    /// the node leading the partitions killed, then started again), Redis
    /// restarted (or, behind Sentinel, its master killed and failed over).
    ///
    /// # Errors
    /// When something does not come back.
    pub async fn faults(&mut self, duration: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let at = |fraction: f64| tokio::time::sleep_until((start + duration.mul_f64(fraction)).into());

        at(0.10).await;
        event("SIGTERM gw-1 (scale-down)");
        self.stack.gateways[0].process.signal("TERM").await?;

        at(0.25).await;
        event("SIGKILL gw-2 (crash), start gw-4");
        self.stack.gateways[1].process.signal("KILL").await?;
        self.stack.start_spare(0).await?;

        at(0.40).await;
        event("SIGKILL bridge-1");
        self.stack.bridges[0].process.signal("KILL").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.stack.restart_bridge(0).await?;
        event("bridge-1 back");

        at(0.55).await;
        match &mut self.rabbit {
            LabRabbit::Single(node) => {
                event("RabbitMQ stops");
                node.stop().await?;
                node.start_again().await?;
                event("RabbitMQ back");
            }
            LabRabbit::Cluster(cluster) => {
                let leader = cluster.stream_leader(&partition_queue(0)).await?;
                event(&format!("SIGKILL RabbitMQ node {leader}, the partitions' leader"));
                cluster.kill_node(leader).await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.restart_node(leader).await?;
                event(&format!("RabbitMQ node {leader} back"));
            }
        }

        at(0.75).await;
        match &mut self.redis {
            LabRedis::Single(server) => {
                event("Redis stops");
                server.stop().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                server.start_again().await?;
                event("Redis back");
            }
            LabRedis::Sentinel(set) => {
                event("SIGKILL the Redis master");
                let master = set.fail_over().await?;
                event(&format!("the sentinels promoted :{master}"));
                set.restart_down().await?;
                event("the old master is back, as a replica");
            }
        }
        Ok(())
    }
}

/// A partition's stream queue, as the bridge names it.
fn partition_queue(partition: u16) -> String {
    format!("warren.partition.{partition}")
}

fn event(what: &str) {
    eprintln!("chaos: {what}");
}
