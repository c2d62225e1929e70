//! A Redis Cluster of three masters on free loopback ports, each owning a
//! third of the 16,384 slots, for the tests that run the gateway on one.
//! Made with `CLUSTER ADDSLOTS` and `CLUSTER MEET` from here, so nothing
//! beyond `redis-server` is needed (not `redis-cli --cluster`).

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::{Instant, sleep};

use crate::services::RedisServer;

/// The number of hash slots in a cluster.
pub const SLOTS: u16 = 16_384;
/// How long the nodes may take to agree on the cluster.
const SETTLE: Duration = Duration::from_secs(30);

/// Three master nodes forming one cluster; all killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
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
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_cluster_node().await.context("start a cluster node")?);
        }
        let cluster = Self { nodes };
        let share = SLOTS / 3;
        for (index, node) in cluster.nodes.iter().enumerate() {
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
        cluster.wait_formed().await?;
        Ok(cluster)
    }

    /// The nodes' addresses, `127.0.0.1:PORT`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())).collect()
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

    /// The keys matching `pattern` on each node, in node order.
    ///
    /// # Errors
    /// When a node does not answer.
    pub async fn keys_per_node(&self, pattern: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let mut all = Vec::new();
        for node in &self.nodes {
            all.push(ask::<Vec<String>>(node.port(), redis::cmd("KEYS").arg(pattern)).await?);
        }
        Ok(all)
    }

    async fn wait_formed(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut formed = true;
            for node in &self.nodes {
                let info = ask::<String>(node.port(), redis::cmd("CLUSTER").arg("INFO")).await.unwrap_or_default();
                formed &= info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3");
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
async fn ask<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let exchange = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut connection).await
    };
    Ok(tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer in 5 s")??)
}
