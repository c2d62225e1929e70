//! A private three-node RabbitMQ cluster on loopback ports, for chaos tests
//! that kill the node leading a stream.
//!
//! Three [`RabbitNode`]s share one Erlang cookie. The first boots alone (with
//! the management plugin); the second and third boot together afterwards
//! with classic-config peer discovery naming the first, and so join it
//! while they boot. A node that booted without joining anyway is joined by
//! hand (`stop_app`, `reset`, `join_cluster`, `start_app`). The cluster is
//! ready when every node's `rabbitmqctl cluster_status` shows 3 running
//! nodes. All three are killed on drop.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::time::{Instant, sleep};

use crate::services::{NodeOptions, RabbitNode, random_cookie};

/// How many nodes the cluster has.
pub const NODES: usize = 3;
/// How long the nodes may take to see each other running, after they boot.
const SETTLE: Duration = Duration::from_secs(60);
/// How long one `rabbitmqctl` call may take.
const CTL: Duration = Duration::from_secs(20);

/// Three clustered RabbitMQ nodes; the first has the management API.
#[derive(Debug)]
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts three nodes, clusters them and waits until each node's
    /// `cluster_status` shows 3 running nodes (about 17 s here: node 0
    /// boots in 7 s, the other two together in 8 s more).
    ///
    /// # Errors
    /// When a node does not boot in 60 s, or the cluster does not form in
    /// 60 s more.
    pub async fn start() -> anyhow::Result<Self> {
        let cookie = random_cookie();
        let first = RabbitNode::start_with(NodeOptions {
            management: true,
            cookie: Some(cookie.clone()),
            ..NodeOptions::default()
        })
        .await
        .context("start node 0")?;
        let joiner = || NodeOptions {
            cookie: Some(cookie.clone()),
            extra_config: vec![
                "cluster_formation.peer_discovery_backend = classic_config".to_owned(),
                format!("cluster_formation.classic_config.nodes.1 = {}", first.node_name()),
            ],
            ..NodeOptions::default()
        };
        let (second, third) = tokio::join!(RabbitNode::start_with(joiner()), RabbitNode::start_with(joiner()));
        let mut cluster = Self { nodes: vec![first] };
        cluster.nodes.push(second.context("start node 1")?);
        cluster.nodes.push(third.context("start node 2")?);
        // Peer discovery joins them while they boot; should one have
        // booted on its own (node 0 unreachable), it is joined by hand.
        let views = cluster.views().await;
        if !views.iter().all(|view| view.as_ref().is_ok_and(|nodes| nodes.len() == NODES)) {
            for (index, view) in views.iter().enumerate().skip(1) {
                if let Ok(nodes) = view
                    && !nodes.iter().any(|node| node == cluster.nodes[0].node_name())
                {
                    cluster.join_by_hand(index).await?;
                }
            }
            cluster.wait_all_running().await?;
        }
        Ok(cluster)
    }

    /// Joins node `index` to node 0 with `rabbitmqctl`, for a node that
    /// booted on its own.
    async fn join_by_hand(&self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let seed = self.nodes[0].node_name();
        eprintln!("rabbit_cluster: {} booted outside the cluster, joining it to {seed} by hand", node.node_name());
        node.rabbitmqctl(&["stop_app"], CTL).await?;
        node.rabbitmqctl(&["reset"], CTL).await?;
        node.rabbitmqctl(&["join_cluster", seed], CTL).await?;
        node.rabbitmqctl(&["start_app"], Duration::from_secs(60)).await?;
        node.rabbitmqctl(&["await_startup", "--timeout", "30"], Duration::from_secs(40)).await?;
        Ok(())
    }

    /// The nodes, in order (for their names, ports and PIDs).
    pub fn nodes(&self) -> &[RabbitNode] {
        &self.nodes
    }

    /// The AMQP URL of each node, `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RabbitNode::url).collect()
    }

    /// Node 0's management API, `http://guest:guest@127.0.0.1:PORT`.
    pub fn management_url(&self) -> Option<String> {
        self.nodes[0].management_url()
    }

    /// The names of the nodes that node `index` sees running in its cluster
    /// (`rabbitmqctl cluster_status`).
    ///
    /// # Errors
    /// When the node is down or does not answer within 20 s.
    pub async fn running_nodes(&self, index: usize) -> anyhow::Result<Vec<String>> {
        let node = self.node(index)?;
        let out = node.rabbitmqctl(&["cluster_status", "--formatter", "json"], CTL).await?;
        let status: serde_json::Value =
            serde_json::from_str(json_part(&out)).with_context(|| format!("cluster_status said {out:?}"))?;
        let running = status["running_nodes"].as_array().with_context(|| format!("no running_nodes in {out}"))?;
        Ok(running.iter().filter_map(|node| node.as_str().map(str::to_owned)).collect())
    }

    /// Which node (index) leads the stream `queue` now, as the first node
    /// that runs reports it (`rabbitmqctl list_queues name leader online`).
    ///
    /// # Errors
    /// When no running node answers, the queue does not exist, or it has no
    /// leader on a running node (e.g. its leader was just killed and no new
    /// one is elected yet).
    pub async fn stream_leader(&self, queue: &str) -> anyhow::Result<usize> {
        let mut last = None;
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            match node
                .rabbitmqctl(&["list_queues", "--formatter", "json", "name", "type", "leader", "online"], CTL)
                .await
            {
                Ok(out) => return self.leader_in(&out, queue),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node of the cluster runs")))
    }

    fn leader_in(&self, list: &str, queue: &str) -> anyhow::Result<usize> {
        let queues: Vec<serde_json::Value> =
            serde_json::from_str(json_part(list)).with_context(|| format!("list_queues said {list:?}"))?;
        let entry = queues
            .iter()
            .find(|entry| entry["name"] == queue)
            .with_context(|| format!("no queue {queue} listed (as while its leader is down)"))?;
        ensure!(entry["type"] == "stream", "{queue} is not a stream: {entry}");
        let leader = entry["leader"].as_str().with_context(|| format!("{queue} has no leader: {entry}"))?;
        let online = entry["online"].as_array().map(Vec::as_slice).unwrap_or_default();
        ensure!(online.iter().any(|node| node == leader), "{queue}'s leader {leader} is not online: {entry}");
        let index = self
            .nodes
            .iter()
            .position(|node| node.node_name() == leader)
            .with_context(|| format!("{queue}'s leader {leader} is not one of ours"))?;
        ensure!(self.nodes[index].is_running(), "{queue}'s leader {leader} was killed (no new leader yet)");
        Ok(index)
    }

    /// Kills node `index` with SIGKILL (a crash) and waits for its VM to
    /// exit. It stays down until [`Self::restart_node`].
    ///
    /// # Errors
    /// When there is no such node or the kill fails.
    pub async fn kill_node(&mut self, index: usize) -> anyhow::Result<()> {
        self.node_mut(index)?.kill().await
    }

    /// Starts node `index` again with its data (it rejoins the cluster by
    /// itself) and waits until every node sees 3 running nodes again.
    ///
    /// # Errors
    /// When it still runs, does not boot in 60 s, or the cluster does not
    /// show 3 running nodes within 60 s more.
    pub async fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        self.node_mut(index)?.start_again().await?;
        self.wait_all_running().await
    }

    /// Until each node's `cluster_status` shows all three running.
    async fn wait_all_running(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let views = self.views().await;
            if views.iter().all(|view| view.as_ref().is_ok_and(|nodes| nodes.len() == NODES)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the cluster did not show {NODES} running nodes within {SETTLE:?}: {views:?}\n{}", self.logs());
            }
            sleep(Duration::from_millis(250)).await;
        }
    }

    /// Each node's [`Self::running_nodes`], asked at once (one
    /// `rabbitmqctl` takes about a second).
    async fn views(&self) -> [anyhow::Result<Vec<String>>; NODES] {
        let (first, second, third) = tokio::join!(self.running_nodes(0), self.running_nodes(1), self.running_nodes(2));
        [first, second, third]
    }

    fn node(&self, index: usize) -> anyhow::Result<&RabbitNode> {
        self.nodes.get(index).with_context(|| format!("no node {index} (the cluster has {NODES})"))
    }

    fn node_mut(&mut self, index: usize) -> anyhow::Result<&mut RabbitNode> {
        self.nodes.get_mut(index).with_context(|| format!("no node {index} (the cluster has {NODES})"))
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(RabbitNode::logs).collect::<Vec<_>>().join("\n")
    }
}

/// `rabbitmqctl --formatter json` may print a banner line before the JSON.
fn json_part(out: &str) -> &str {
    out.find(['[', '{']).map_or(out, |start| &out[start..])
}
