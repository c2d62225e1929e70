//! Real Warren processes on free loopback ports: bridges, gateways and an
//! HAProxy in front, each killed when its handle is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The session secret every test stack shares (the Node compat test too).
pub const TEST_SECRET: &str = "warren-test-secret-0123456789abcdef";

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("WARREN_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The RabbitMQ the tests use.
pub fn amqp_url() -> String {
    std::env::var("WARREN_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Where the Warren binaries are: `WARREN_BIN_DIR`, else the `target/<profile>`
/// directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARREN_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> -> target/debug
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
}

/// A free port on 127.0.0.1 (bound and released: good enough on loopback).
///
/// # Errors
/// When no port can be bound.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A running process, killed on drop.
#[derive(Debug)]
pub struct Process {
    /// What it is, for messages.
    pub name: String,
    child: Option<Child>,
}

impl Process {
    fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        command.kill_on_drop(true).stdin(Stdio::null());
        if std::env::var_os("WARREN_TEST_LOGS").is_none() {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = command.spawn().with_context(|| format!("spawn {name}"))?;
        Ok(Self { name: name.to_owned(), child: Some(child) })
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends a signal (`TERM`, `KILL`, ...) with `kill(1)`.
    ///
    /// # Errors
    /// When the process is gone.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().await?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit, at most `limit`; returns its exit code.
    ///
    /// # Errors
    /// When it is still running after `limit`.
    pub async fn wait(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        let child = self.child.as_mut().context("already waited")?;
        let status = tokio::time::timeout(limit, child.wait()).await.context("process did not exit in time")??;
        self.child = None;
        Ok(status.code())
    }
}

/// One gateway of a stack.
#[derive(Debug)]
pub struct Gateway {
    /// Its process.
    pub process: Process,
    /// Public address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Its instance name, as `welcome` says it.
    pub instance: String,
}

/// One bridge of a stack.
#[derive(Debug)]
pub struct Bridge {
    /// Its process.
    pub process: Process,
    /// gRPC address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
}

/// The shape of a stack.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Bridges to start.
    pub bridges: usize,
    /// Gateways to start; gateway `i` prefers bridge `i % bridges`.
    pub gateways: usize,
    /// Whether to put HAProxy in front.
    pub haproxy: bool,
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    /// Bridges, in order.
    pub bridges: Vec<Bridge>,
    /// Gateways, in order (`gw-1`, `gw-2`, ...).
    pub gateways: Vec<Gateway>,
    /// HAProxy's process and frontend address, when asked for.
    pub haproxy: Option<(Process, SocketAddr)>,
    _dir: TempDir,
}

impl Stack {
    /// Starts the processes and waits until every one is ready.
    ///
    /// # Errors
    /// When a process does not start or become ready in time.
    pub async fn start(shape: Shape) -> anyhow::Result<Self> {
        let dir = TempDir::new()?;
        let mut bridges = Vec::new();
        for index in 0..shape.bridges {
            bridges.push(start_bridge(index + 1).await?);
        }
        let urls: Vec<String> = bridges.iter().map(|b| format!("http://{}", b.addr)).collect();
        let mut gateways = Vec::new();
        for index in 0..shape.gateways {
            let mut preferred = urls.clone();
            preferred.rotate_left(index % urls.len().max(1));
            gateways.push(start_gateway(&format!("gw-{}", index + 1), &preferred).await?);
        }
        let haproxy = if shape.haproxy { Some(start_haproxy(&dir.path, &gateways).await?) } else { None };
        Ok(Self { bridges, gateways, haproxy, _dir: dir })
    }

    /// HAProxy's frontend address.
    ///
    /// # Panics
    /// When the stack was started without HAProxy.
    #[allow(clippy::expect_used)]
    pub fn front(&self) -> SocketAddr {
        self.haproxy.as_ref().map(|(_, addr)| *addr).expect("stack started without HAProxy")
    }
}

/// Starts a bridge named `bridge-<n>` and waits for it to be ready.
///
/// # Errors
/// When it does not become ready in time.
pub async fn start_bridge(n: usize) -> anyhow::Result<Bridge> {
    let (addr, admin) = (free_addr()?, free_addr()?);
    let mut command = Command::new(bin_dir().join("warren-bridge"));
    command
        .env("BRIDGE_LISTEN", addr.to_string())
        .env("BRIDGE_ADMIN_LISTEN", admin.to_string())
        .env("BRIDGE_INSTANCE", format!("bridge-{n}"))
        .env("BRIDGE_AMQP_URL", amqp_url())
        .env("BRIDGE_SHUTDOWN_GRACE", "3s");
    let process = Process::spawn(&format!("bridge-{n}"), command)?;
    wait_ready(admin).await.with_context(|| format!("bridge-{n} never became ready"))?;
    Ok(Bridge { process, addr, admin })
}

/// Starts a gateway attached to `bridge_urls` and waits for it to be ready.
///
/// # Errors
/// When it does not become ready in time.
pub async fn start_gateway(instance: &str, bridge_urls: &[String]) -> anyhow::Result<Gateway> {
    let (addr, admin) = (free_addr()?, free_addr()?);
    let mut command = Command::new(bin_dir().join("warren-gateway"));
    command
        .env("GATEWAY_LISTEN", addr.to_string())
        .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
        .env("GATEWAY_INSTANCE", instance)
        .env("GATEWAY_REDIS_URL", redis_url())
        .env("GATEWAY_BRIDGE_URLS", bridge_urls.join(","))
        .env("GATEWAY_SESSION_SECRET", TEST_SECRET)
        .env("GATEWAY_DRAIN_WINDOW", "2s")
        .env("GATEWAY_SHUTDOWN_GRACE", "3s");
    let process = Process::spawn(instance, command)?;
    wait_ready(admin).await.with_context(|| format!("{instance} never became ready"))?;
    Ok(Gateway { process, addr, admin, instance: instance.to_owned() })
}

async fn start_haproxy(dir: &Path, gateways: &[Gateway]) -> anyhow::Result<(Process, SocketAddr)> {
    let front = free_addr()?;
    let template = std::fs::read_to_string(repo_root().join("scripts/haproxy/haproxy.cfg.in"))?;
    let servers: Vec<String> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| format!("    server gw{} {} check port {}", i + 1, g.addr, g.admin.port()))
        .collect();
    let config = template.replace("@@BIND@@", &front.to_string()).replace("@@SERVERS@@", &servers.join("\n"));
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(&path);
    let process = Process::spawn("haproxy", command)?;
    // Ready once every gateway passed its health checks (rise 2, inter 1s).
    wait_http(front, "/session", |status| status == 401).await.context("HAProxy never routed")?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    Ok((process, front))
}

/// Waits until `/readyz` on `admin` answers 200.
///
/// # Errors
/// After 30 s without it.
pub async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    wait_http(admin, "/readyz", |status| status == 200).await
}

async fn wait_http(addr: SocketAddr, path: &str, ok: impl Fn(u16) -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let mut client = crate::http::Client::new(addr);
        if let Ok(reply) = client.get(path).await
            && ok(reply.status.as_u16())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr}{path} not ready after 30 s")
}

/// A scratch directory removed on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(crate::unique("warren-test"));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
