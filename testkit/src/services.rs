//! Private Redis and RabbitMQ servers on free loopback ports, for tests that
//! stop, kill and restart them: the shared ones (6379, 5672) are never touched.
//!
//! Either can serve TLS instead of (Redis) or beside (RabbitMQ) plain TCP,
//! with the certificates of a [`ServerTls`] (made by `testkit::pki`).
//!
//! Each server is a child process of the test, started in the foreground, so
//! it is stopped and killed by the PID the test started. Dropping a handle
//! kills the server (SIGKILL: its data is thrown away with its directory).
//!
//! RabbitMQ runs from `/usr/lib/rabbitmq/bin` (Debian's real scripts; the
//! `/usr/sbin` wrapper would `su` to the `rabbitmq` user), or from
//! `WARREN_RABBITMQ_BIN_DIR`, or from the `rabbitmq-server` on `PATH`. With
//! `RABBITMQ_ALLOW_INPUT` set, `rabbitmq-server` `exec`s the Erlang VM, so
//! the child's PID is `beam.smp` itself; the node's pid file is read as well,
//! in case a script in between forks instead.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::ports::free_port;

/// How long RabbitMQ may take to boot (about 9 s here, 2 shared cores).
const RABBIT_BOOT: Duration = Duration::from_secs(60);
/// How long a clean RabbitMQ stop may take (about 2 s here).
const RABBIT_STOP: Duration = Duration::from_secs(30);
/// How long Redis may take to answer or to exit.
const REDIS_WAIT: Duration = Duration::from_secs(10);

/// A private server's TLS: its certificate and key, and the CA it checks
/// client certificates against.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA client certificates must chain to (PEM).
    pub ca: PathBuf,
    /// Whether a client must show a certificate (mutual TLS).
    pub require_client_cert: bool,
}

// === Redis ===

/// A private `redis-server` on a free loopback port (its data in an append-only file in a scratch dir), killed
/// on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    tls: Option<ServerTls>,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
    /// Whether it runs as a Redis Cluster node (`--cluster-enabled`).
    cluster: bool,
    child: Option<Child>,
    dir: ScratchDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until `PING` answers.
    ///
    /// # Errors
    /// When it cannot be spawned or does not answer within 10 s.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(None).await
    }

    /// Starts a `redis-server` that speaks TLS only (`--port 0 --tls-port
    /// PORT`) and waits until it accepts connections.
    ///
    /// # Errors
    /// When it cannot be spawned or does not listen within 10 s.
    pub async fn start_tls(tls: ServerTls) -> anyhow::Result<Self> {
        Self::start_on(Some(tls)).await
    }

    /// Starts a `redis-server` that replicates the one on `master`'s port
    /// (plain TCP), and waits until `PING` answers.
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub async fn start_replica(master: u16) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("warren-redis")?;
        let mut server =
            Self { port: free_port()?, tls: None, replica_of: Some(master), cluster: false, child: None, dir };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts a `redis-server` with cluster mode on (no slots yet: see
    /// [`crate::redis_cluster`]), and waits until `PING` answers.
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub async fn start_cluster_node() -> anyhow::Result<Self> {
        let dir = ScratchDir::new("warren-redis")?;
        let mut server = Self { port: free_port()?, tls: None, replica_of: None, cluster: true, child: None, dir };
        server.spawn().await?;
        Ok(server)
    }

    async fn start_on(tls: Option<ServerTls>) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("warren-redis")?;
        let mut server = Self { port: free_port()?, tls, replica_of: None, cluster: false, child: None, dir };
        server.spawn().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` when it speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether its process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Stops it with SIGTERM and waits for the process to exit and the port
    /// to close. Does nothing when it is not running.
    ///
    /// # Errors
    /// When it does not exit within 10 s (it is then killed).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        signal(child, "TERM").await?;
        let Ok(exited) = timeout(REDIS_WAIT, child.wait()).await else {
            self.kill().await?;
            bail!("redis-server on :{} ignored SIGTERM for 10 s (killed it)", self.port);
        };
        self.child = None;
        exited?;
        wait_closed(self.addr(), REDIS_WAIT).await
    }

    /// Kills it with SIGKILL (a crash) and waits for the process to exit.
    ///
    /// # Errors
    /// When the kill fails.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        wait_closed(self.addr(), REDIS_WAIT).await
    }

    /// Starts it again on the same port (with the data it had) and
    /// waits until `PING` answers.
    ///
    /// # Errors
    /// When it is still running, or does not answer within 10 s.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "redis-server on :{} is still running", self.port);
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.dir.path.join("redis.log");
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", if tls.require_client_cert { "yes" } else { "no" }]),
        };
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        if self.cluster {
            // Its own nodes.conf, in its scratch dir (the working directory).
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            command.args(["--cluster-node-timeout", "2000"]);
        }
        command
            // An append-only file in its scratch dir, so that sessions survive
            // `stop` + `start_again` as they would a production restart.
            .args(["--save", "", "--appendonly", "yes", "--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir.path)
            .current_dir(&self.dir.path);
        let child = spawn_logged(command, &log, "redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_WAIT;
        loop {
            // Over TLS, accepting is enough: the test's own client is the check.
            let answers = match self.tls {
                None => redis_ping(self.addr()).await,
                Some(_) => TcpStream::connect(self.addr()).await.is_ok(),
            };
            if answers {
                return Ok(());
            }
            self.check_running(&log)?;
            if Instant::now() >= deadline {
                let _ = self.kill().await;
                bail!("redis-server on :{} did not answer PING within 10 s\n{}", self.port, tail(&log));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_running(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!("redis-server on :{} exited ({status})\n{}", self.port, tail(log));
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }
}

/// Whether a `PING` on `addr` gets `+PONG`.
pub(crate) async fn redis_ping(addr: SocketAddr) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(timeout(Duration::from_secs(1), exchange).await, Ok(Ok(true)))
}

// === RabbitMQ ===

/// A private RabbitMQ node: its own node name (`warren-<random>@localhost`),
/// AMQP and distribution ports, config, plugins file (none, or the
/// management plugin), Erlang cookie and mnesia/log directories, all under a
/// scratch directory. Killed on drop.
#[derive(Debug)]
pub struct RabbitNode {
    node: String,
    options: NodeOptions,
    port: u16,
    /// The TLS listener's port, when [`NodeOptions::tls`] is set.
    tls_port: Option<u16>,
    /// The management API's port, when [`NodeOptions::management`] is set.
    management_port: Option<u16>,
    dist_port: u16,
    bin_dir: PathBuf,
    child: Option<Child>,
    /// The Erlang VM's PID from the node's pid file, when it differs from
    /// the child's (a script that forks rather than `exec`s).
    beam_pid: Option<u32>,
    dir: ScratchDir,
}

/// Limits a private node starts with, to see Warren under a short broker,
/// and its TLS listener.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The open-files limit of the node's process (`ulimit -n`).
    pub open_files: Option<u32>,
    /// The most channels one connection may open (`channel_max`).
    pub channel_max: Option<u16>,
    /// Start with the memory alarm on (a high watermark of 1 MB): the node
    /// blocks every connection that publishes.
    pub memory_alarm: bool,
    /// A TLS listener (AMQPS) on a port of its own, beside the plain one.
    pub tls: Option<ServerTls>,
    /// The management plugin, its HTTP API on a port of its own (adds about
    /// a second to the boot).
    pub management: bool,
    /// The Erlang cookie, instead of a random one: nodes that share it can
    /// form a cluster (`testkit::rabbit_cluster`).
    pub cookie: Option<String>,
    /// Lines appended to the node's `rabbitmq.conf` as they are, e.g. peer
    /// discovery settings.
    pub extra_config: Vec<String>,
}

impl RabbitNode {
    /// Starts a node and waits until it answers AMQP and `rabbitmqctl
    /// await_startup` returns (about 10 s here, at most 60 s).
    ///
    /// # Errors
    /// When the node cannot be spawned or does not become ready in time.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(NodeOptions::default()).await
    }

    /// Starts a node with these limits, as [`RabbitNode::start`].
    ///
    /// # Errors
    /// As [`RabbitNode::start`].
    pub async fn start_with(options: NodeOptions) -> anyhow::Result<Self> {
        let bin_dir = rabbit_bin_dir()?;
        let dir = ScratchDir::new("warren-rabbit")?;
        let node = format!("{}@localhost", crate::unique("warren"));
        let (port, dist_port) = (free_port()?, free_port()?);
        let tls_port = options.tls.as_ref().map(|_| free_port()).transpose()?;
        let management_port = options.management.then(free_port).transpose()?;
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.path.join(sub))?;
        }
        let mut config = format!(
            "listeners.tcp.1 = 127.0.0.1:{port}\n\
             loopback_users.guest = true\n\
             disk_free_limit.absolute = 50MB\n\
             vm_memory_high_watermark.relative = 0.4\n"
        );
        if let Some(channel_max) = options.channel_max {
            config.push_str(&format!("channel_max = {channel_max}\n"));
        }
        if options.memory_alarm {
            config =
                config.replace("vm_memory_high_watermark.relative = 0.4", "vm_memory_high_watermark.absolute = 1MB");
        }
        if let (Some(tls), Some(tls_port)) = (&options.tls, tls_port) {
            let verify = if tls.require_client_cert { "verify_peer" } else { "verify_none" };
            config.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = {verify}\n\
                 ssl_options.fail_if_no_peer_cert = {}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display(),
                tls.require_client_cert,
            ));
        }
        if let Some(management_port) = management_port {
            config.push_str(&format!("management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"));
        }
        for line in &options.extra_config {
            config.push_str(line);
            config.push('\n');
        }
        std::fs::write(dir.path.join("rabbitmq.conf"), config)?;
        let plugins = if options.management { "[rabbitmq_management].\n" } else { "[].\n" };
        std::fs::write(dir.path.join("enabled_plugins"), plugins)?;
        // Our own (empty) env file, not /etc/rabbitmq/rabbitmq-env.conf.
        std::fs::write(dir.path.join("rabbitmq-env.conf"), "")?;
        let cookie = options.cookie.clone().unwrap_or_else(random_cookie);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path.join("home/.erlang.cookie"))?
            .write_all(cookie.as_bytes())?;
        let mut rabbit = Self {
            node,
            options,
            port,
            tls_port,
            management_port,
            dist_port,
            bin_dir,
            child: None,
            beam_pid: None,
            dir,
        };
        rabbit.spawn().await?;
        Ok(rabbit)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@127.0.0.1:TLS_PORT/%2f`, when it has a TLS listener.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|port| format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
    }

    /// `http://guest:guest@127.0.0.1:PORT`, its management API, when
    /// started with [`NodeOptions::management`].
    pub fn management_url(&self) -> Option<String> {
        self.management_port.map(|port| format!("http://guest:guest@127.0.0.1:{port}"))
    }

    /// `GET /api/{path}` from its management API, as guest, in JSON.
    ///
    /// # Errors
    /// When it was started without the API, or the API does not answer 200.
    pub async fn management_get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let port = self.management_port.context("started without the management plugin")?;
        let request = http::Request::get(format!("/api/{path}"))
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            // guest:guest
            .header(http::header::AUTHORIZATION, "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let reply = crate::http::send(SocketAddr::from(([127, 0, 0, 1], port)), request).await?;
        ensure!(reply.status == http::StatusCode::OK, "GET /api/{path}: {} {}", reply.status, reply.text());
        reply.json()
    }

    /// Its AMQP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its Erlang node name, for `rabbitmqctl -n`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Whether its process runs (it was not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `rabbitmqctl -n NODE ARGS...` with this node's environment (its
    /// cookie), killed after `limit`; returns its stdout.
    ///
    /// # Errors
    /// When it fails, or takes longer than `limit`.
    pub(crate) async fn rabbitmqctl(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        let run = Command::new(self.bin_dir.join("rabbitmqctl"))
            .envs(self.env())
            .args(["-n", &self.node])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = timeout(limit, run)
            .await
            .with_context(|| format!("rabbitmqctl -n {} {} took over {limit:?}", self.node, args.join(" ")))?
            .context("run rabbitmqctl")?;
        ensure!(
            output.status.success(),
            "rabbitmqctl -n {} {} failed ({}): {}{}",
            self.node,
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The Erlang VM's OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.beam_pid.or_else(|| self.child.as_ref().and_then(Child::id))
    }

    /// Stops the node cleanly (SIGTERM to the Erlang VM, which RabbitMQ takes
    /// as `rabbitmqctl stop`), waits for the VM to exit and the AMQP port to
    /// close. Does nothing when it is not running.
    ///
    /// # Errors
    /// When it does not exit within 30 s (it is then killed).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        let beam_pid = self.beam_pid;
        let pid = beam_pid.or_else(|| child.id()).context("rabbitmq-server has no PID")?;
        kill(pid, "TERM").await?;
        let exited = timeout(RABBIT_STOP, async {
            child.wait().await?;
            if let Some(pid) = beam_pid {
                while alive(pid).await {
                    sleep(Duration::from_millis(50)).await;
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let Ok(exited) = exited else {
            self.kill().await?;
            bail!("RabbitMQ node {} ignored SIGTERM for 30 s (killed it)", self.node);
        };
        self.child = None;
        self.beam_pid = None;
        exited?;
        wait_closed(self.addr(), RABBIT_STOP).await
    }

    /// Kills the Erlang VM with SIGKILL (a crash) and waits for it to exit.
    ///
    /// # Errors
    /// When the kill fails.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.beam_pid.take() {
            let _ = kill(pid, "KILL").await;
        }
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        wait_closed(self.addr(), RABBIT_STOP).await
    }

    /// Starts the node again with the same name, ports and data directory
    /// (declared queues and stream contents survive) and waits until ready.
    ///
    /// # Errors
    /// When it is still running, or does not become ready in time.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "RabbitMQ node {} is still running", self.node);
        self.spawn().await
    }

    /// Environment shared by the server and `rabbitmqctl`.
    fn env(&self) -> Vec<(&'static str, OsString)> {
        let path = |sub: &str| self.dir.path.join(sub).into_os_string();
        vec![
            ("HOME", path("home")),
            ("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf")),
            ("RABBITMQ_NODENAME", self.node.clone().into()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ]
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let path = |sub: &str| self.dir.path.join(sub);
        let log = path("stdout.log");
        let _ = std::fs::remove_file(path("rabbitmq.pid"));
        let server = self.bin_dir.join("rabbitmq-server");
        let mut command = match self.options.open_files {
            // The shell lowers its limit, then becomes the server.
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell.args(["-c", "ulimit -n \"$0\" && exec \"$@\"", &limit.to_string()]).arg(&server);
                shell
            }
            None => Command::new(server),
        };
        command
            .envs(self.env())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_CONFIG_FILES", path("conf.d"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("rabbitmq.pid"))
            // `exec` the VM (no signal-forwarding shell in between), without
            // an Erlang shell on stdin; distribution on loopback only.
            .env("RABBITMQ_ALLOW_INPUT", "1")
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-noinput -noshell -kernel inet_dist_use_interface {127,0,0,1}")
            .current_dir(&self.dir.path);
        let child = spawn_logged(command, &log, "rabbitmq-server")?;
        self.child = Some(child);
        let error = match timeout(RABBIT_BOOT, self.wait_ready(&log)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("RabbitMQ node {} not ready within 60 s\n{}", self.node, self.logs()),
        };
        let _ = self.kill().await; // not half-started: stopped, as before
        Err(error)
    }

    async fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        while !amqp_answers(self.addr()).await {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("RabbitMQ node {} exited ({status})\n{}", self.node, tail(log));
            }
            sleep(Duration::from_millis(100)).await;
        }
        let output = Command::new(self.bin_dir.join("rabbitmqctl"))
            .envs(self.env())
            .args(["-n", &self.node, "await_startup", "--timeout", "30"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("run rabbitmqctl")?;
        ensure!(
            output.status.success(),
            "rabbitmqctl await_startup on {} failed: {}{}",
            self.node,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for port in self.tls_port.into_iter().chain(self.management_port) {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while TcpStream::connect(addr).await.is_err() {
                sleep(Duration::from_millis(100)).await;
            }
        }
        let child_pid = self.child.as_ref().and_then(Child::id);
        let pid_file = std::fs::read_to_string(self.dir.path.join("rabbitmq.pid")).unwrap_or_default();
        self.beam_pid = pid_file.trim().parse().ok().filter(|pid| Some(*pid) != child_pid);
        Ok(())
    }

    pub(crate) fn logs(&self) -> String {
        let node_log = self.dir.path.join("log").join(format!("{}.log", self.node));
        format!("{}\n{}", tail(&self.dir.path.join("stdout.log")), tail(&node_log))
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Some(pid) = self.beam_pid.take() {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }
}

/// Whether `addr` answers the AMQP 0-9-1 protocol header with a method frame
/// (`Connection.Start`): the broker is up, not just bound.
async fn amqp_answers(addr: SocketAddr) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        Ok::<_, std::io::Error>(stream.read_u8().await? == 1)
    };
    matches!(timeout(Duration::from_secs(2), exchange).await, Ok(Ok(true)))
}

/// A random Erlang cookie (20 capital letters).
pub(crate) fn random_cookie() -> String {
    (0..20).map(|_| char::from(b'A' + rand::random_range(0..26_u8))).collect()
}

/// Where the real `rabbitmq-server` and `rabbitmqctl` scripts are.
fn rabbit_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WARREN_RABBITMQ_BIN_DIR") {
        return Ok(dir.into());
    }
    let debian = Path::new("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").exists() {
        return Ok(debian.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .find(|dir| dir.join("rabbitmq-server").exists())
        .context("no rabbitmq-server found (install rabbitmq-server, or set WARREN_RABBITMQ_BIN_DIR)")
}

// === shared ===

/// A free port on 127.0.0.1 (bound and released).
/// Spawns `command` with stdout and stderr appended to `log`.
pub(crate) fn spawn_logged(mut command: Command, log: &Path, name: &str) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
    command.spawn().with_context(|| format!("spawn {name}"))
}

/// Sends `signal` to a child that has not been reaped.
async fn signal(child: &Child, signal: &str) -> anyhow::Result<()> {
    kill(child.id().context("process already reaped")?, signal).await
}

/// `kill -SIGNAL PID` (the workspace forbids `unsafe`, hence no `libc`).
async fn kill(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status =
        Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).stderr(Stdio::null()).status().await?;
    ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Whether `pid` still exists (`kill -0`).
async fn alive(pid: u32) -> bool {
    kill(pid, "0").await.is_ok()
}

/// SIGKILL and reap (a zombie would still answer `kill -0`), for `Drop`.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if child.start_kill().is_err() {
        return; // already exited and reaped
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until nothing accepts on `addr`.
async fn wait_closed(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(addr).await.is_ok() {
        ensure!(Instant::now() < deadline, "{addr} still accepts connections after {limit:?}");
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("--- {} ---\n{}", path.display(), lines[lines.len().saturating_sub(30)..].join("\n"))
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    pub(crate) path: PathBuf,
}

impl ScratchDir {
    pub(crate) fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(crate::unique(prefix));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
