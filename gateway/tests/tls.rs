//! TLS to the services: a gateway on `rediss://` to a Redis that speaks TLS
//! only, and a bridge on `amqps://` to RabbitMQ's TLS listener, both signed
//! by a CA the test makes. With `--tls-ca-file` naming that CA (on top of
//! the system's roots) a user logs in and chats; without it neither process
//! gets ready, each says why in its log, and neither panics. With client
//! certificates required by both servers, `--tls-client-cert` and
//! `--tls-client-key` get the stack through.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use http::StatusCode;
use testkit::http::Client;
use testkit::pki::Pki;
use testkit::ports::free_addr;
use testkit::services::{NodeOptions, RabbitNode, RedisServer};
use testkit::stack::{Extras, Shape, Stack, bin_dir, wait_alive};
use testkit::ws;

/// How long a log line or a state may take to show.
const PATIENCE: Duration = Duration::from_secs(30);

const ONE_OF_EACH: Shape = Shape { bridges: 1, gateways: 1, haproxy: false };

/// A TLS-only Redis and a RabbitMQ node with a TLS listener, both with
/// certificates from `pki`; client certificates required or not.
async fn tls_services(pki: &Pki, require_client_cert: bool) -> anyhow::Result<(RedisServer, RabbitNode)> {
    let redis = RedisServer::start_tls(pki.server_tls("redis", require_client_cert)?).await?;
    let options = NodeOptions { tls: Some(pki.server_tls("rabbitmq", require_client_cert)?), ..NodeOptions::default() };
    let rabbit = RabbitNode::start_with(options).await?;
    Ok((redis, rabbit))
}

fn env(pairs: &[(&str, &Path)]) -> Vec<(String, String)> {
    pairs.iter().map(|(key, path)| ((*key).to_owned(), path.display().to_string())).collect()
}

/// Logs in, opens a socket, joins a room, sends and reads the message back.
async fn chat(addr: SocketAddr) -> anyhow::Result<()> {
    let mut client = Client::new(addr);
    client.login(&testkit::unique("tls-user")).await?;
    let cookie = client.cookie.context("login set no cookie")?;
    let mut socket = ws::connect(addr, Some(&cookie), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(socket.next_json().await?["type"], "welcome");
    let room = testkit::unique("tls-room");
    socket.join(&room, None).await?;
    let id = socket.send_message(&room, "over TLS", "tls-1").await?;
    let delivered = socket.messages_until(&room, id).await?;
    assert!(delivered.iter().any(|m| m["id"] == id && m["text"] == "over TLS"), "{delivered:?}");
    Ok(())
}

/// A gateway or bridge started by hand, its output in a file, killed on drop.
struct Logged {
    child: tokio::process::Child,
    log: PathBuf,
    admin: SocketAddr,
}

impl Logged {
    async fn start(binary: &str, log: PathBuf, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let admin = free_addr()?;
        let out = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(bin_dir().join(binary));
        let prefix = if binary == "warren-gateway" { "GATEWAY" } else { "BRIDGE" };
        command
            .env(format!("{prefix}_LISTEN"), free_addr()?.to_string())
            .env(format!("{prefix}_ADMIN_LISTEN"), admin.to_string())
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("spawn {binary}"))?;
        wait_alive(admin).await.with_context(|| format!("{binary} never answered"))?;
        Ok(Self { child, log, admin })
    }

    /// Waits until the log holds `wanted`; returns the log.
    async fn log_shows(&mut self, wanted: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(wanted) {
                return Ok(text);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("exited ({status}) without logging {wanted:?}:\n{text}");
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no {wanted:?} in the log within {PATIENCE:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn readyz(&self) -> anyhow::Result<(StatusCode, String)> {
        let reply = Client::new(self.admin).get("/readyz").await?;
        Ok((reply.status, reply.text()))
    }
}

/// The certificate error a process logs, and that it stays up, not ready
/// for `what`, without a panic.
async fn refuses_the_unknown_ca(process: &mut Logged, logged: &str, what: &str) -> anyhow::Result<()> {
    let log = process.log_shows(logged).await?;
    assert!(log.contains("UnknownIssuer") || log.contains("certificate"), "no certificate error:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let (status, body) = process.readyz().await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains(what), "/readyz should name {what}: {body}");
    assert!(process.child.try_wait()?.is_none(), "it keeps running, and retrying");
    Ok(())
}

#[tokio::test]
async fn without_the_ca_file_nothing_connects_and_with_it_chat_works() -> anyhow::Result<()> {
    let pki = Pki::new("warren-test-ca")?;
    let (redis, rabbit) = tls_services(&pki, false).await?;
    let amqps = rabbit.tls_url().context("a TLS listener")?;

    // Only the system's roots: the test's CA is unknown to both.
    let log = |name: &str| pki.dir().join(format!("{name}.log"));
    let bridge_env = [("BRIDGE_AMQP_URL", amqps.clone())];
    let mut bridge = Logged::start("warren-bridge", log("bridge"), &bridge_env).await?;
    let gateway_env = [
        ("GATEWAY_REDIS_URL", redis.url()),
        ("GATEWAY_BRIDGE_URLS", "http://127.0.0.1:1".to_owned()),
        ("GATEWAY_SESSION_SECRET", testkit::stack::TEST_SECRET.to_owned()),
    ];
    let mut gateway = Logged::start("warren-gateway", log("gateway"), &gateway_env).await?;
    refuses_the_unknown_ca(&mut bridge, "cannot connect to the broker", "broker").await?;
    refuses_the_unknown_ca(&mut gateway, "session store (Redis) unavailable", "Redis").await?;
    drop((bridge, gateway));

    // The same services, with the CA file: ready, and a message goes round.
    let ca = pki.ca_file();
    let extras = Extras {
        redis_url: Some(redis.url()),
        amqp_url: Some(amqps),
        common_env: env(&[("GATEWAY_TLS_CA_FILE", ca), ("BRIDGE_TLS_CA_FILE", ca)]),
        ..Extras::default()
    };
    let stack = Stack::start_with(ONE_OF_EACH, extras).await?;
    chat(stack.gateways[0].addr).await
}

#[tokio::test]
async fn client_certificates_get_through_servers_that_require_them() -> anyhow::Result<()> {
    let pki = Pki::new("warren-test-ca")?;
    let (redis, rabbit) = tls_services(&pki, true).await?;
    let amqps = rabbit.tls_url().context("a TLS listener")?;
    let ca = pki.ca_file();

    // The CA alone is not enough: both servers want a certificate.
    let log = |name: &str| pki.dir().join(format!("{name}.log"));
    let bridge_env = [("BRIDGE_AMQP_URL", amqps.clone()), ("BRIDGE_TLS_CA_FILE", ca.display().to_string())];
    let mut bridge = Logged::start("warren-bridge", log("bridge"), &bridge_env).await?;
    let gateway_env = [
        ("GATEWAY_REDIS_URL", redis.url()),
        ("GATEWAY_TLS_CA_FILE", ca.display().to_string()),
        ("GATEWAY_BRIDGE_URLS", "http://127.0.0.1:1".to_owned()),
    ];
    let mut gateway = Logged::start("warren-gateway", log("gateway"), &gateway_env).await?;
    for (process, logged, what) in
        [(&mut bridge, "cannot connect to the broker", "broker"), (&mut gateway, "unavailable at start-up", "Redis")]
    {
        let log = process.log_shows(logged).await?;
        assert!(!log.contains("panicked"), "{log}");
        assert_eq!(process.readyz().await?.0, StatusCode::SERVICE_UNAVAILABLE, "not ready for {what}");
    }
    drop((bridge, gateway));

    let (gateway, bridge) = (pki.client("gateway")?, pki.client("bridge")?);
    let extras = Extras {
        redis_url: Some(redis.url()),
        amqp_url: Some(amqps),
        common_env: env(&[
            ("GATEWAY_TLS_CA_FILE", ca),
            ("GATEWAY_TLS_CLIENT_CERT", &gateway.cert),
            ("GATEWAY_TLS_CLIENT_KEY", &gateway.key),
            ("BRIDGE_TLS_CA_FILE", ca),
            ("BRIDGE_TLS_CLIENT_CERT", &bridge.cert),
            ("BRIDGE_TLS_CLIENT_KEY", &bridge.key),
        ]),
        ..Extras::default()
    };
    let stack = Stack::start_with(ONE_OF_EACH, extras).await?;
    chat(stack.gateways[0].addr).await
}
