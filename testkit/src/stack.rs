//! Real Warren processes on free loopback ports: bridges, gateways and an
//! HAProxy in front, each killed when its handle is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::ports::free_addr;

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

/// Where the Warren binaries are: `WARREN_BIN_DIR`, else next to this
/// executable (a binary such as `warren-load` in `target/<profile>`), else
/// the `target/<profile>` directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARREN_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    if let Some(dir) = exe.parent()
        && dir.join("warren-gateway").exists()
    {
        return dir.to_path_buf();
    }
    // target/debug/deps/<test> -> target/debug
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
}

/// A running process, killed on drop.
#[derive(Debug)]
pub struct Process {
    /// What it is, for messages.
    pub name: String,
    child: Option<Child>,
}

impl Process {
    /// Spawns `command`, its output in `log_dir/<name>.log` when a directory
    /// is given, else where `WARREN_TEST_LOGS` says.
    fn spawn(name: &str, mut command: Command, log_dir: Option<&Path>) -> anyhow::Result<Self> {
        command.kill_on_drop(true).stdin(Stdio::null());
        let (stdout, stderr) = match log_dir {
            Some(dir) => log_file(&dir.join(format!("{name}.log")))?,
            None => log_sinks(name)?,
        };
        command.stdout(stdout).stderr(stderr);
        let child = command.spawn().with_context(|| format!("spawn {name}"))?;
        Ok(Self { name: name.to_owned(), child: Some(child) })
    }

    /// Its exit code once it has exited (`Some(None)`: killed by a signal),
    /// `None` while it runs.
    ///
    /// # Errors
    /// When it cannot be asked.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<Option<i32>>> {
        let Some(child) = self.child.as_mut() else { return Ok(None) };
        let exited = child.try_wait()?;
        if exited.is_some() {
            self.child = None;
        }
        Ok(exited.map(|status| status.code()))
    }

    /// Stops it as an orchestrator would: SIGTERM, then SIGKILL after `grace`.
    /// Does nothing when it has exited.
    ///
    /// # Errors
    /// When a signal cannot be sent.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if self.child.is_none() || self.try_exit()?.is_some() {
            return Ok(());
        }
        self.signal("TERM").await?;
        if self.wait(grace).await.is_err() {
            self.signal("KILL").await?;
            self.wait(grace).await?;
        }
        Ok(())
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

/// Where a process's output goes, from `WARREN_TEST_LOGS`: unset, nowhere;
/// a directory, one file per process there (`<name>-<test pid>-<n>.log`, so
/// that a failed CI run can show what the processes said); anything else,
/// the test's own output.
fn log_sinks(name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(setting) = std::env::var_os("WARREN_TEST_LOGS") else {
        return Ok((Stdio::null(), Stdio::null()));
    };
    let dir = PathBuf::from(setting);
    if !dir.is_dir() {
        return Ok((Stdio::inherit(), Stdio::inherit()));
    }
    let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    log_file(&dir.join(format!("{name}-{}-{n}.log", std::process::id())))
}

/// Both outputs of a process into one new file at `path`.
fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    Ok((file.try_clone()?.into(), file.into()))
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

/// What a stack runs against, beyond its shape.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Redis URL (default: [`redis_url`]).
    pub redis_url: Option<String>,
    /// RabbitMQ URL (default: [`amqp_url`]).
    pub amqp_url: Option<String>,
    /// Gateways HAProxy knows of but that are not started yet: replacements
    /// started later with [`Stack::start_spare`] (down until then).
    pub spare_gateways: usize,
    /// The gateways' drain window (default 2 s, to keep tests short).
    pub drain_window: Option<Duration>,
    /// More environment for every gateway (limits, say).
    pub gateway_env: Vec<(String, String)>,
    /// How HAProxy in front differs from the shipped config.
    pub front: Front,
    /// More environment for every gateway and bridge (tracing, say).
    pub common_env: Vec<(String, String)>,
    /// Start each process without waiting until it is ready, only until its
    /// admin port answers (`/healthz`): for stacks started with a dependency
    /// down on purpose, whose tests poll `/readyz` themselves. Holds for the
    /// stack's later starts too (restarts, spares); HAProxy still waits for a
    /// gateway it can route to.
    pub allow_unready: bool,
    /// Fixed ports instead of free ones (`warren-dev`'s).
    pub ports: Option<Ports>,
    /// The gateways' session secret (default [`TEST_SECRET`]).
    pub session_secret: Option<String>,
    /// The binaries' own drain and shutdown timings instead of the tests'
    /// short ones (`drain_window` still wins when set).
    pub shipped_timings: bool,
    /// A directory for the processes' logs (`<name>.log`) and HAProxy's
    /// config, kept after the stack; default: a scratch directory, and the
    /// logs where `WARREN_TEST_LOGS` says.
    pub run_dir: Option<PathBuf>,
}

/// Where a stack listens when its ports are fixed: process `i` (from 0) of
/// a kind on its base port + `i`.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// HAProxy.
    pub front: u16,
    /// The gateways' public ports.
    pub gateway: u16,
    /// The gateways' admin ports.
    pub gateway_admin: u16,
    /// The bridges' gRPC ports.
    pub bridge: u16,
    /// The bridges' admin ports.
    pub bridge_admin: u16,
}

impl Ports {
    /// `127.0.0.1:<base + index>`, or a free address without fixed ports.
    fn pick(ports: Option<&Self>, base: impl Fn(&Self) -> u16, index: usize) -> anyhow::Result<SocketAddr> {
        match ports {
            Some(ports) => {
                let port = u16::try_from(usize::from(base(ports)) + index).context("port out of range")?;
                Ok(SocketAddr::from(([127, 0, 0, 1], port)))
            }
            None => free_addr(),
        }
    }
}

/// What a user's network may do that the shipped HAProxy config does not.
#[derive(Debug, Clone, Copy, Default)]
pub struct Front {
    /// Round robin instead of the hash on the session cookie: no affinity.
    pub round_robin: bool,
    /// Refuse WebSocket upgrades (403), as proxies that break them do.
    pub refuse_websockets: bool,
}

impl Front {
    /// The shipped config, changed as asked; fails if the lines it changes
    /// are gone from the template.
    fn apply(self, mut config: String) -> anyhow::Result<String> {
        let mut change = |from: &str, to: &str| {
            anyhow::ensure!(config.contains(from), "the HAProxy template has no {from:?} any more");
            config = config.replace(from, to);
            Ok(())
        };
        if self.round_robin {
            change("    balance hash req.cook(", "    balance roundrobin\n    # was: balance hash req.cook(")?;
        }
        if self.refuse_websockets {
            change(
                "    default_backend gateways",
                "    http-request deny deny_status 403 if { hdr(upgrade) -i websocket }\n    default_backend gateways",
            )?;
        }
        Ok(config)
    }
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
    /// Reserved (public, admin) addresses of the spare gateways.
    pub spares: Vec<(SocketAddr, SocketAddr)>,
    redis: String,
    gateway_env: Vec<(String, String)>,
    launch: Launch,
    _dir: Option<TempDir>,
}

/// How every process of a stack is started.
#[derive(Debug, Clone, Default)]
struct Launch {
    amqp: String,
    /// Environment for every gateway and bridge.
    common_env: Vec<(String, String)>,
    allow_unready: bool,
    /// The gateways' drain window; `None`: the binary's own.
    drain_window: Option<Duration>,
    /// The binaries' shutdown grace; `None`: their own.
    shutdown_grace: Option<Duration>,
    secret: String,
    log_dir: Option<PathBuf>,
}

impl Launch {
    /// The tests' way: the shared RabbitMQ, short timings, test logs.
    fn for_tests(amqp: &str, common_env: &[(String, String)], allow_unready: bool) -> Self {
        Self {
            amqp: amqp.to_owned(),
            common_env: common_env.to_vec(),
            allow_unready,
            drain_window: Some(TEST_DRAIN_WINDOW),
            shutdown_grace: Some(TEST_SHUTDOWN_GRACE),
            secret: TEST_SECRET.to_owned(),
            log_dir: None,
        }
    }
}

/// The tests' drain window: short, to keep them short.
const TEST_DRAIN_WINDOW: Duration = Duration::from_secs(2);
/// The tests' shutdown grace.
const TEST_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl Stack {
    /// Starts the processes and waits until every one is ready.
    ///
    /// # Errors
    /// When a process does not start or become ready in time.
    pub async fn start(shape: Shape) -> anyhow::Result<Self> {
        Self::start_with(shape, Extras::default()).await
    }

    /// Starts a stack on other services, or with spare gateways.
    ///
    /// # Errors
    /// When a process does not start or become ready in time.
    pub async fn start_with(shape: Shape, extras: Extras) -> anyhow::Result<Self> {
        let (dir, run_dir) = match &extras.run_dir {
            Some(run_dir) => {
                std::fs::create_dir_all(run_dir).with_context(|| format!("create {}", run_dir.display()))?;
                (None, run_dir.clone())
            }
            None => {
                let dir = TempDir::new()?;
                let path = dir.path.clone();
                (Some(dir), path)
            }
        };
        let mut launch =
            Launch::for_tests(&extras.amqp_url.unwrap_or_else(amqp_url), &extras.common_env, extras.allow_unready);
        if extras.shipped_timings {
            (launch.drain_window, launch.shutdown_grace) = (None, None);
        }
        launch.drain_window = extras.drain_window.or(launch.drain_window);
        launch.secret = extras.session_secret.unwrap_or(launch.secret);
        launch.log_dir = extras.run_dir.clone();
        let ports = extras.ports;
        let mut bridges = Vec::new();
        for index in 0..shape.bridges {
            let addr = Ports::pick(ports.as_ref(), |p| p.bridge, index)?;
            let admin = Ports::pick(ports.as_ref(), |p| p.bridge_admin, index)?;
            bridges.push(spawn_bridge(index + 1, addr, admin, &launch).await?);
        }
        let mut stack = Self {
            bridges,
            gateways: Vec::new(),
            haproxy: None,
            spares: Vec::new(),
            redis: extras.redis_url.unwrap_or_else(redis_url),
            gateway_env: [extras.common_env, extras.gateway_env].concat(),
            launch,
            _dir: dir,
        };
        for index in 0..shape.gateways {
            let addr = Ports::pick(ports.as_ref(), |p| p.gateway, index)?;
            let admin = Ports::pick(ports.as_ref(), |p| p.gateway_admin, index)?;
            let gateway = stack.spawn_gateway(index, addr, admin).await?;
            stack.gateways.push(gateway);
        }
        for spare in 0..extras.spare_gateways {
            let index = shape.gateways + spare;
            let addr = Ports::pick(ports.as_ref(), |p| p.gateway, index)?;
            stack.spares.push((addr, Ports::pick(ports.as_ref(), |p| p.gateway_admin, index)?));
        }
        if shape.haproxy {
            let mut servers: Vec<(SocketAddr, SocketAddr)> = stack.gateways.iter().map(|g| (g.addr, g.admin)).collect();
            servers.extend(stack.spares.iter().copied());
            let front = Haproxy {
                bind: Ports::pick(ports.as_ref(), |p| p.front, 0)?,
                cookie: session_cookie_name(&stack.gateway_env),
                front: extras.front,
            };
            stack.haproxy = Some(front.start(&run_dir, &servers, stack.launch.log_dir.as_deref()).await?);
        }
        Ok(stack)
    }

    /// Stops every process as an orchestrator would (SIGTERM, SIGKILL after
    /// `grace`): HAProxy and the gateways first, the bridges after them, so
    /// that draining gateways still reach a bridge.
    ///
    /// # Errors
    /// When a signal cannot be sent.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some((haproxy, _)) = self.haproxy.as_mut() {
            haproxy.stop(grace).await?;
        }
        let gateways = self.gateways.iter_mut().map(|gateway| gateway.process.stop(grace));
        futures_util::future::try_join_all(gateways).await?;
        let bridges = self.bridges.iter_mut().map(|bridge| bridge.process.stop(grace));
        futures_util::future::try_join_all(bridges).await?;
        Ok(())
    }

    /// The bridge URLs, rotated so that gateway `index` prefers bridge `index % n`.
    fn bridge_urls_for(&self, index: usize) -> Vec<String> {
        let mut urls: Vec<String> = self.bridges.iter().map(|b| format!("http://{}", b.addr)).collect();
        let count = urls.len().max(1);
        urls.rotate_left(index % count);
        urls
    }

    async fn spawn_gateway(&self, index: usize, addr: SocketAddr, admin: SocketAddr) -> anyhow::Result<Gateway> {
        let instance = format!("gw-{}", index + 1);
        let urls = self.bridge_urls_for(index);
        let spec = GatewaySpec {
            instance: &instance,
            addr,
            admin,
            bridge_urls: &urls,
            redis: &self.redis,
            env: &self.gateway_env,
        };
        spawn_gateway(&spec, &self.launch).await
    }

    /// Starts gateway `index` again on its ports, under its name (after it
    /// exited or was killed), and waits until it is ready (or, with
    /// [`Extras::allow_unready`], until it answers).
    ///
    /// # Errors
    /// When there is no such gateway or it does not become ready.
    pub async fn restart_gateway(&mut self, index: usize) -> anyhow::Result<()> {
        let (addr, admin) = {
            let gateway = self.gateways.get(index).context("no such gateway")?;
            (gateway.addr, gateway.admin)
        };
        let gateway = self.spawn_gateway(index, addr, admin).await?;
        self.gateways[index] = gateway;
        Ok(())
    }

    /// Starts spare gateway `spare` (0-based) on its reserved ports, named
    /// after the gateways before it, and adds it to `gateways`.
    ///
    /// # Errors
    /// When there is no such spare or it does not become ready.
    pub async fn start_spare(&mut self, spare: usize) -> anyhow::Result<&Gateway> {
        let (addr, admin) = *self.spares.get(spare).context("no such spare gateway")?;
        let index = self.gateways.len();
        let gateway = self.spawn_gateway(index, addr, admin).await?;
        self.gateways.push(gateway);
        self.gateways.last().context("just pushed")
    }

    /// Starts bridge `index` again on its ports (after it was killed), and
    /// waits until it is ready (or, with [`Extras::allow_unready`], until it
    /// answers).
    ///
    /// # Errors
    /// When it does not become ready.
    pub async fn restart_bridge(&mut self, index: usize) -> anyhow::Result<()> {
        let (addr, admin) = {
            let bridge = self.bridges.get(index).context("no such bridge")?;
            (bridge.addr, bridge.admin)
        };
        let bridge = spawn_bridge(index + 1, addr, admin, &self.launch).await?;
        self.bridges[index] = bridge;
        Ok(())
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

/// Starts a bridge named `bridge-<n>` on the shared RabbitMQ and waits for it
/// to be ready.
///
/// # Errors
/// When it does not become ready in time.
pub async fn start_bridge(n: usize) -> anyhow::Result<Bridge> {
    spawn_bridge(n, free_addr()?, free_addr()?, &Launch::for_tests(&amqp_url(), &[], false)).await
}

/// Starts a bridge named `bridge-<n>` on the RabbitMQ at `amqp`; with
/// `allow_unready` it is only waited for until its admin port answers.
///
/// # Errors
/// When it does not start (or become ready) in time.
pub async fn start_bridge_on(n: usize, amqp: &str, allow_unready: bool) -> anyhow::Result<Bridge> {
    spawn_bridge(n, free_addr()?, free_addr()?, &Launch::for_tests(amqp, &[], allow_unready)).await
}

/// Starts a bridge named `bridge-<n>` on the RabbitMQ at `amqp` with more
/// environment (`BRIDGE_STREAM_MAX_AGE`, say), as [`start_bridge_on`].
///
/// # Errors
/// When it does not start (or become ready) in time.
pub async fn start_bridge_with(
    n: usize,
    amqp: &str,
    env: &[(String, String)],
    allow_unready: bool,
) -> anyhow::Result<Bridge> {
    spawn_bridge(n, free_addr()?, free_addr()?, &Launch::for_tests(amqp, env, allow_unready)).await
}

async fn spawn_bridge(n: usize, addr: SocketAddr, admin: SocketAddr, launch: &Launch) -> anyhow::Result<Bridge> {
    let name = format!("bridge-{n}");
    let mut command = Command::new(bin_dir().join("warren-bridge"));
    command
        .env("BRIDGE_LISTEN", addr.to_string())
        .env("BRIDGE_ADMIN_LISTEN", admin.to_string())
        .env("BRIDGE_INSTANCE", &name)
        .env("BRIDGE_AMQP_URL", &launch.amqp);
    if let Some(grace) = launch.shutdown_grace {
        command.env("BRIDGE_SHUTDOWN_GRACE", format!("{}ms", grace.as_millis()));
    }
    command.envs(launch.common_env.iter().map(|(key, value)| (key, value)));
    let process = Process::spawn(&name, command, launch.log_dir.as_deref())?;
    wait_started(admin, launch.allow_unready).await.with_context(|| format!("{name} never became ready"))?;
    Ok(Bridge { process, addr, admin })
}

/// Where and how one gateway runs.
struct GatewaySpec<'a> {
    instance: &'a str,
    addr: SocketAddr,
    admin: SocketAddr,
    bridge_urls: &'a [String],
    redis: &'a str,
    env: &'a [(String, String)],
}

async fn spawn_gateway(spec: &GatewaySpec<'_>, launch: &Launch) -> anyhow::Result<Gateway> {
    let GatewaySpec { instance, addr, admin, bridge_urls, redis, env } = *spec;
    let mut command = Command::new(bin_dir().join("warren-gateway"));
    command
        .env("GATEWAY_LISTEN", addr.to_string())
        .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
        .env("GATEWAY_INSTANCE", instance)
        .env("GATEWAY_REDIS_URL", redis)
        .env("GATEWAY_BRIDGE_URLS", bridge_urls.join(","))
        .env("GATEWAY_SESSION_SECRET", &launch.secret);
    if let Some(window) = launch.drain_window {
        command.env("GATEWAY_DRAIN_WINDOW", format!("{}ms", window.as_millis()));
    }
    if let Some(grace) = launch.shutdown_grace {
        command.env("GATEWAY_SHUTDOWN_GRACE", format!("{}ms", grace.as_millis()));
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    let process = Process::spawn(instance, command, launch.log_dir.as_deref())?;
    wait_started(admin, launch.allow_unready).await.with_context(|| format!("{instance} never became ready"))?;
    Ok(Gateway { process, addr, admin, instance: instance.to_owned() })
}

/// The session cookie the gateways set: their `GATEWAY_SESSION_COOKIE_NAME`
/// when the stack gives one, which HAProxy's affinity must hash on too.
fn session_cookie_name(gateway_env: &[(String, String)]) -> &str {
    gateway_env
        .iter()
        .rev()
        .find_map(|(key, value)| (key == "GATEWAY_SESSION_COOKIE_NAME").then_some(value.as_str()))
        .unwrap_or(crate::http::DEFAULT_COOKIE_NAME)
}

/// HAProxy in front of the gateways, from `scripts/haproxy/haproxy.cfg.in`:
/// the one place that template is rendered.
struct Haproxy<'a> {
    bind: SocketAddr,
    cookie: &'a str,
    front: Front,
}

impl Haproxy<'_> {
    /// The config for these gateways (public and admin addresses).
    fn render(&self, gateways: &[(SocketAddr, SocketAddr)]) -> anyhow::Result<String> {
        let template = std::fs::read_to_string(repo_root().join("scripts/haproxy/haproxy.cfg.in"))?;
        let servers: Vec<String> = gateways
            .iter()
            .enumerate()
            .map(|(i, (addr, admin))| format!("    server gw{} {addr} check port {}", i + 1, admin.port()))
            .collect();
        let config = template
            .replace("@@BIND@@", &self.bind.to_string())
            .replace("@@COOKIE@@", self.cookie)
            .replace("@@SERVERS@@", &servers.join("\n"));
        self.front.apply(config)
    }

    /// Writes the config to `dir/haproxy.cfg`, has HAProxy check it, starts
    /// it and waits until it routes to every gateway.
    async fn start(
        &self,
        dir: &Path,
        gateways: &[(SocketAddr, SocketAddr)],
        log_dir: Option<&Path>,
    ) -> anyhow::Result<(Process, SocketAddr)> {
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, self.render(gateways)?)?;
        let checked = Command::new("haproxy").arg("-c").arg("-q").arg("-f").arg(&path).status().await;
        anyhow::ensure!(checked.context("run haproxy -c")?.success(), "haproxy rejected {}", path.display());
        let mut command = Command::new("haproxy");
        command.arg("-db").arg("-f").arg(&path);
        let process = Process::spawn("haproxy", command, log_dir)?;
        // Ready once every gateway passed its health checks (rise 2, inter 1s).
        wait_http(self.bind, "/session", |status| status == 401).await.context("HAProxy never routed")?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok((process, self.bind))
    }
}

/// Waits until `/readyz` on `admin` answers 200.
///
/// # Errors
/// After 30 s without it.
pub async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    wait_http(admin, "/readyz", |status| status == 200).await
}

/// Waits until `/healthz` on `admin` answers 200: the process serves, ready
/// or not.
///
/// # Errors
/// After 30 s without it.
pub async fn wait_alive(admin: SocketAddr) -> anyhow::Result<()> {
    wait_http(admin, "/healthz", |status| status == 200).await
}

/// What starting a process waits for: readiness, or only an answer.
async fn wait_started(admin: SocketAddr, allow_unready: bool) -> anyhow::Result<()> {
    if allow_unready { wait_alive(admin).await } else { wait_ready(admin).await }
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
