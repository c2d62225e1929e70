//! A Redis Cluster of three masters on free loopback ports, each owning a
//! third of the 16,384 slots (and, if asked, each with a replica that the
//! cluster promotes when its master dies), for the tests that run the
//! gateway on one. Made with `CLUSTER ADDSLOTS`, `CLUSTER MEET` and
//! `CLUSTER REPLICATE` from here, so nothing beyond `redis-server` is needed
//! (not `redis-cli --cluster`).

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::{Instant, sleep};

use crate::services::RedisServer;

/// The number of hash slots in a cluster.
pub const SLOTS: u16 = 16_384;
/// How long the nodes may take to agree on the cluster.
const SETTLE: Duration = Duration::from_secs(30);

/// Three master nodes forming one cluster, and their replicas if asked;
/// all killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters first, then their replicas in the same order.
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled `redis-server`s, splits the slots among
    /// them, introduces them and waits until every node reports the cluster
    /// whole (`cluster_state:ok`, three nodes known).
    ///
    /// # Errors
    /// When a node does not start or the cluster does not form in 30 s.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// As [`Self::start`], with a replica for each master: a master killed
    /// is replaced by its replica (failover after `cluster-node-timeout`,
    /// 2 s, and an election).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_with_replicas() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(replicas: bool) -> anyhow::Result<Self> {
        let count = if replicas { 6 } else { 3 };
        let mut nodes = Vec::new();
        for _ in 0..count {
            nodes.push(RedisServer::start_cluster_node().await.context("start a cluster node")?);
        }
        let cluster = Self { nodes };
        let share = SLOTS / 3;
        for (index, node) in cluster.nodes[..3].iter().enumerate() {
            let first = share * u16::try_from(index)?;
            let last = if index == 2 { SLOTS - 1 } else { first + share - 1 };
            let mut add = redis::cmd("CLUSTER");
            add.arg("ADDSLOTS").arg((first..=last).collect::<Vec<_>>());
            let _: () = ask(node.port(), &add).await.with_context(|| format!("slots {first}-{last}"))?;
        }
        let first = cluster.nodes[0].port();
        for node in &cluster.nodes[1..] {
            let _: () = ask(first, redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(node.port())).await?;
        }
        cluster.wait_formed(count).await?;
        if replicas {
            for (master, replica) in cluster.nodes[..3].iter().zip(&cluster.nodes[3..]) {
                let id: String = ask(master.port(), redis::cmd("CLUSTER").arg("MYID")).await?;
                let _: () = ask(replica.port(), redis::cmd("CLUSTER").arg("REPLICATE").arg(&id)).await?;
            }
            cluster.wait_replicated().await?;
        }
        Ok(cluster)
    }

    /// The masters' addresses, `127.0.0.1:PORT` (what a gateway is given:
    /// it learns the replicas from them).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes[..3].iter().map(|node| format!("127.0.0.1:{}", node.port())).collect()
    }

    /// A Redis URL for a gateway on this cluster: its host is never used
    /// (the nodes are given apart), so it names none.
    pub fn url(&self) -> String {
        "redis://named-by-cluster:6379".to_owned()
    }

    /// The environment that points a gateway at this cluster.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        vec![("GATEWAY_REDIS_CLUSTER_NODES".to_owned(), self.addrs().join(","))]
    }

    /// The ports of the nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The keys matching `pattern` on each master, in node order.
    ///
    /// # Errors
    /// When a node does not answer.
    pub async fn keys_per_node(&self, pattern: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let mut all = Vec::new();
        for node in &self.nodes[..3] {
            all.push(ask::<Vec<String>>(node.port(), redis::cmd("KEYS").arg(pattern)).await?);
        }
        Ok(all)
    }

    /// The port of the master that holds `key` now, as the live nodes see it.
    ///
    /// # Errors
    /// When no live node answers.
    pub async fn master_of(&self, key: &str) -> anyhow::Result<u16> {
        let mut last = None;
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            let slot: i64 = match ask(node.port(), redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await {
                Ok(slot) => slot,
                Err(error) => {
                    last = Some(error);
                    continue;
                }
            };
            // Each range: [first, last, [ip, port, id, ...], replicas...].
            let ranges: Vec<Vec<redis::Value>> = ask(node.port(), redis::cmd("CLUSTER").arg("SLOTS")).await?;
            for range in ranges {
                let [first, last_slot, master, ..] = range.as_slice() else { continue };
                let (first, last_slot): (i64, i64) =
                    (redis::from_redis_value(first.clone())?, redis::from_redis_value(last_slot.clone())?);
                if (first..=last_slot).contains(&slot) {
                    let master: Vec<redis::Value> = redis::from_redis_value(master.clone())?;
                    let port: i64 = redis::from_redis_value(master.get(1).context("no port")?.clone())?;
                    return Ok(u16::try_from(port)?);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no live node knows the slot of {key}")))
    }

    /// Kills the master on `port` (SIGKILL: a crash) and waits until its
    /// replica has taken over `key`'s slot and the live nodes report the
    /// cluster whole again; returns the new master's port.
    ///
    /// # Errors
    /// When `port` is not one of the nodes, or no failover in 30 s.
    pub async fn fail_over(&mut self, port: u16, key: &str) -> anyhow::Result<u16> {
        let node = self.nodes.iter_mut().find(|node| node.port() == port).context("no such node")?;
        node.kill().await?;
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Ok(now) = self.master_of(key).await
                && now != port
                && self.live_nodes_ok().await
            {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                bail!("no failover within {SETTLE:?} after killing the master on :{port}");
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    async fn live_nodes_ok(&self) -> bool {
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            let info = ask::<String>(node.port(), redis::cmd("CLUSTER").arg("INFO")).await.unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                return false;
            }
        }
        true
    }

    /// Until every master reports its replica connected and in sync.
    async fn wait_replicated(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut synced = true;
            for master in &self.nodes[..3] {
                let info: String = ask(master.port(), redis::cmd("INFO").arg("replication")).await.unwrap_or_default();
                synced &= info.contains("connected_slaves:1") && info.contains("state=online");
            }
            if synced && self.live_nodes_ok().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the replicas did not sync within {SETTLE:?} (ports {:?})", self.ports());
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_formed(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        let known = format!("cluster_known_nodes:{count}");
        loop {
            let mut formed = true;
            for node in &self.nodes {
                let info = ask::<String>(node.port(), redis::cmd("CLUSTER").arg("INFO")).await.unwrap_or_default();
                formed &= info.contains("cluster_state:ok") && info.contains(&known);
            }
            if formed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the cluster did not form within {SETTLE:?} (ports {:?})", self.ports());
            }
            sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One command to the node on `port` (not following redirections).
///
/// # Errors
/// When it does not answer in 5 s, or answers an error.
pub async fn ask<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let exchange = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut connection).await
    };
    Ok(tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer in 5 s")??)
}
