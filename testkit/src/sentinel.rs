//! A Redis that fails over: a master, a replica and three sentinels (quorum
//! 2) on free loopback ports, for the tests and chaos runs that kill the
//! master. The sentinels are `redis-server --sentinel`, so nothing beyond
//! the `redis-server` package is needed.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::ports::free_port;
use crate::services::{RedisServer, ScratchDir, kill_and_reap, redis_ping, spawn_logged, tail};

/// The master's name in the sentinels' configuration.
pub const MASTER_NAME: &str = "warren";
/// How long the sentinels take to agree that a master is down.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// How long a start or a failover may take.
const SETTLE: Duration = Duration::from_secs(30);

/// Two Redis nodes and three sentinels watching them; all killed on drop.
#[derive(Debug)]
pub struct Sentinels {
    nodes: Vec<RedisServer>,
    sentinels: Vec<(u16, Child)>,
    dir: ScratchDir,
}

impl Sentinels {
    /// Starts a master, its replica and three sentinels, and waits until
    /// the sentinels know the replica and each other (a failover can run).
    ///
    /// # Errors
    /// When a server does not start or the sentinels do not settle in 30 s.
    pub async fn start() -> anyhow::Result<Self> {
        let master = RedisServer::start().await.context("start the master")?;
        let replica = RedisServer::start_replica(master.port()).await.context("start the replica")?;
        let master_port = master.port();
        let mut set =
            Self { nodes: vec![master, replica], sentinels: Vec::new(), dir: ScratchDir::new("warren-sentinel")? };
        for index in 0..3 {
            let port = free_port()?;
            let child = set.spawn_sentinel(index, port, master_port)?;
            set.sentinels.push((port, child));
        }
        for (port, _) in &set.sentinels {
            wait_answers(*port).await?;
        }
        set.wait_settled().await?;
        Ok(set)
    }

    fn spawn_sentinel(&self, index: usize, port: u16, master: u16) -> anyhow::Result<Child> {
        let conf = self.dir.path.join(format!("sentinel-{index}.conf"));
        // Sentinel rewrites its file as it learns the topology: one each.
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = self.dir.path.display(),
            down = DOWN_AFTER.as_millis(),
        );
        std::fs::write(&conf, text)?;
        let mut command = Command::new("redis-server");
        command.arg(&conf).arg("--sentinel").current_dir(&self.dir.path);
        spawn_logged(command, &self.log(index), "redis-server --sentinel")
    }

    fn log(&self, index: usize) -> std::path::PathBuf {
        self.dir.path.join(format!("sentinel-{index}.log"))
    }

    /// The sentinels' addresses, `127.0.0.1:PORT`.
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|(port, _)| format!("127.0.0.1:{port}")).collect()
    }

    /// A Redis URL for a gateway behind these sentinels: its host is never
    /// used (the sentinels name the master), so it names none.
    pub fn url(&self) -> String {
        "redis://named-by-sentinel:6379".to_owned()
    }

    /// The environment that points a gateway at these sentinels.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        vec![
            ("GATEWAY_REDIS_SENTINELS".to_owned(), self.addrs().join(",")),
            ("GATEWAY_REDIS_SENTINEL_MASTER".to_owned(), MASTER_NAME.to_owned()),
        ]
    }

    /// The port of the node the sentinels name master now.
    ///
    /// # Errors
    /// When no sentinel answers.
    pub async fn master_port(&self) -> anyhow::Result<u16> {
        let mut last = None;
        for (port, _) in &self.sentinels {
            let mut question = redis::cmd("SENTINEL");
            question.arg("get-master-addr-by-name").arg(MASTER_NAME);
            match ask::<Option<(String, String)>>(*port, &question).await {
                Ok(Some((_, master))) => return master_port_of(&master),
                Ok(None) => last = Some(anyhow::anyhow!("sentinel :{port} knows no master {MASTER_NAME}")),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinels")))
    }

    /// A client for the node with `port`, to look at what it holds.
    ///
    /// # Errors
    /// When the URL cannot be made (never, for a port).
    pub fn node_client(port: u16) -> anyhow::Result<redis::Client> {
        Ok(redis::Client::open(format!("redis://127.0.0.1:{port}"))?)
    }

    /// Kills the master (SIGKILL: a crash) and waits until the sentinels
    /// have promoted the replica and it answers as master; returns the new
    /// master's port. The killed node stays down until [`Self::restart_down`].
    ///
    /// # Errors
    /// When the failover does not happen within 30 s.
    pub async fn fail_over(&mut self) -> anyhow::Result<u16> {
        let old = self.master_port().await?;
        let node = self.nodes.iter_mut().find(|node| node.port() == old).context("the master is not one of ours")?;
        node.kill().await?;
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Ok(now) = self.master_port().await
                && now != old
                && role(now).await.is_ok_and(|role| role == "master")
            {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                bail!("no failover within {SETTLE:?} after killing the master on :{old}\n{}", tail(&self.log(0)));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the killed node again (with the data it had); the sentinels
    /// make it a replica of the new master. Waits until they count it.
    ///
    /// # Errors
    /// When it does not start, or the sentinels do not see it in 30 s.
    pub async fn restart_down(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if !node.is_running() {
                node.start_again().await?;
            }
        }
        self.wait_settled().await
    }

    /// Until every sentinel sees one replica and the two other sentinels.
    async fn wait_settled(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut settled = true;
            for (port, _) in &self.sentinels {
                let view = ask::<Vec<String>>(*port, redis::cmd("SENTINEL").arg("master").arg(MASTER_NAME)).await;
                settled &= view.is_ok_and(|fields| {
                    field(&fields, "num-slaves") == Some("1")
                        && field(&fields, "num-other-sentinels") == Some("2")
                        && field(&fields, "flags") == Some("master")
                });
            }
            if settled {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the sentinels did not settle within {SETTLE:?}\n{}", tail(&self.log(0)));
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            kill_and_reap(child);
        }
    }
}

/// One command to the server on `port`.
async fn ask<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let client = Sentinels::node_client(port)?;
    let exchange = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut connection).await
    };
    Ok(tokio::time::timeout(Duration::from_secs(2), exchange).await.context("no answer in 2 s")??)
}

/// The node's own idea of its role: `master` or `slave`.
async fn role(port: u16) -> anyhow::Result<String> {
    let info: String = ask(port, redis::cmd("INFO").arg("replication")).await?;
    let role = info.lines().find_map(|line| line.strip_prefix("role:")).context("no role in INFO")?;
    Ok(role.trim().to_owned())
}

fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields.chunks(2).find(|pair| pair[0] == name).and_then(|pair| pair.get(1)).map(String::as_str)
}

fn master_port_of(port: &str) -> anyhow::Result<u16> {
    port.parse().with_context(|| format!("the sentinel named port {port:?}"))
}

async fn wait_answers(port: u16) -> anyhow::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_ping(addr).await {
        if Instant::now() >= deadline {
            bail!("sentinel on :{port} did not answer PING in 10 s");
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
