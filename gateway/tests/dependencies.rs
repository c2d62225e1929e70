//! Dependencies down at start-up: a gateway started without Redis or
//! without any bridge, a bridge started without RabbitMQ. Each process stays
//! up, says in `/readyz` what it is missing, answers clients with retryable
//! errors that give the reason, and recovers by itself, without a restart,
//! once the dependency comes up. (The same faults mid-run are the chaos
//! run's, `loadgen/src/chaos.rs`.)
//!
//! Every wait polls with a deadline; nothing here depends on how long a
//! dependency takes to come back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, Mac};
use http::{Request, StatusCode, header};
use http_body_util::Full;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::Sha256;
use testkit::http::{Client, Reply};
use testkit::services::{RabbitNode, RedisServer};
use testkit::stack::{Extras, Shape, Stack, TEST_SECRET, wait_ready};
use testkit::ws::{self, Refused, Socket};

/// How long a process may take to notice that a dependency came back.
const PATIENCE: Duration = Duration::from_secs(30);

const ONE_OF_EACH: Shape = Shape { bridges: 1, gateways: 1, haproxy: false };

/// `/readyz` on `admin`: status and body.
async fn readyz(admin: SocketAddr) -> anyhow::Result<(StatusCode, String)> {
    let reply = Client::new(admin).get("/readyz").await?;
    Ok((reply.status, reply.text()))
}

/// Asserts that `/readyz` on `admin` is 503 and that its body names `what`.
async fn assert_not_ready(admin: SocketAddr, what: &str) -> anyhow::Result<()> {
    let (status, body) = readyz(admin).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains(what), "/readyz should name {what}: {body}");
    Ok(())
}

/// Polls `probe` until it returns `true`, at most [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if probe().await.unwrap_or(false) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the gateway's metrics say it has a bridge stream.
async fn attached(admin: SocketAddr) -> anyhow::Result<bool> {
    let metrics = Client::new(admin).get("/metrics").await?.text();
    Ok(metrics.lines().any(|line| line == "warren_gateway_bridge_connected 1"))
}

/// A session cookie signed with the stacks' secret, as a browser that logged
/// in earlier holds it: the signature is good, whether the session exists is
/// for Redis to say.
fn signed_cookie(sid: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(TEST_SECRET.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(sid.as_bytes());
    let signature = STANDARD_NO_PAD.encode(mac.finalize().into_bytes());
    utf8_percent_encode(&format!("s:{sid}.{signature}"), NON_ALPHANUMERIC).to_string()
}

/// A WebSocket upgrade request for `/ws`, sent as plain HTTP so that a
/// refusal's body can be read.
async fn upgrade_refusal(addr: SocketAddr, cookie: &str) -> anyhow::Result<Reply> {
    let request = Request::get("/ws")
        .header(header::HOST, addr.to_string())
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .header(header::COOKIE, format!("jsessionid={cookie}"))
        .body(Full::default())?;
    testkit::http::send(addr, request).await
}

/// Logs in as a fresh user and opens a socket (past `welcome`).
async fn logged_in_socket(addr: SocketAddr, user: &str) -> anyhow::Result<Socket> {
    let mut client = Client::new(addr);
    client.login(&testkit::unique(user)).await?;
    let cookie = client.cookie.context("login set no cookie")?;
    let mut socket = ws::connect(addr, Some(&cookie), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(socket.next_json().await?["type"], "welcome");
    Ok(socket)
}

/// Sends once (no retry) and returns the answer, `ack` or `error`.
async fn send_once(socket: &mut Socket, room: &str, cid: &str) -> anyhow::Result<Value> {
    socket.send(&json!({"type": "send", "room": room, "text": "hello", "cid": cid})).await?;
    socket.next_matching(|f| f["cid"] == cid && (f["type"] == "ack" || f["type"] == "error")).await
}

/// After recovery: the send is acked (the client resends the same `cid`
/// after a retryable error, as the protocol says) and delivered to the room.
async fn assert_send_delivered(socket: &mut Socket, room: &str, cid: &str) -> anyhow::Result<()> {
    let id = socket.send_message(room, "hello", cid).await?;
    let delivered = socket.messages_until(room, id).await?;
    assert!(delivered.iter().any(|m| m["cid"] == cid && m["id"] == id), "{delivered:?}");
    Ok(())
}

#[tokio::test]
async fn gateway_started_without_redis_refuses_with_503_and_recovers() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    redis.stop().await?;
    let extras = Extras { redis_url: Some(redis.url()), allow_unready: true, ..Extras::default() };
    let stack = Stack::start_with(ONE_OF_EACH, extras).await?;
    let gateway = &stack.gateways[0];

    // Not ready from its first answer, and for Redis alone: the bridge is there.
    assert_not_ready(gateway.admin, "Redis").await?;
    eventually("the gateway attaches to its bridge", || attached(gateway.admin)).await?;
    assert_not_ready(gateway.admin, "Redis").await?;
    // The public port says the same, for platforms that probe only it.
    assert_not_ready(gateway.addr, "Redis").await?;
    assert_eq!(Client::new(gateway.addr).get("/healthz").await?.status, StatusCode::OK, "alive all along");

    // Every route that needs a session: 503 with the reason, never 500 or 401.
    let login = Client::new(gateway.addr).request(http::Method::POST, "/login", Some("user=early")).await?;
    assert_eq!(login.status, StatusCode::SERVICE_UNAVAILABLE, "{}", login.text());
    assert!(login.text().contains("session store unavailable"), "{}", login.text());
    let cookie = signed_cookie(&testkit::unique("sid"));
    let mut holder = Client { cookie: Some(cookie.clone()), ..Client::new(gateway.addr) };
    let session = holder.get("/session").await?;
    assert_eq!(session.status, StatusCode::SERVICE_UNAVAILABLE, "{}", session.text());
    assert!(session.json()?["error"].as_str().is_some_and(|e| e.contains("session store unavailable")));
    let upgrade = upgrade_refusal(gateway.addr, &cookie).await?;
    assert_eq!(upgrade.status, StatusCode::SERVICE_UNAVAILABLE, "{}", upgrade.text());
    assert!(upgrade.json()?["error"].as_str().is_some_and(|e| e.contains("session store unavailable")));
    assert!(matches!(ws::connect(gateway.addr, Some(&cookie), None).await, Err(Refused::Status(503))));

    // Redis comes up: the same process turns ready and serves everything.
    redis.start_again().await?;
    eventually("the gateway turns ready", || async { Ok(readyz(gateway.admin).await?.0 == StatusCode::OK) }).await?;
    assert_eq!(readyz(gateway.addr).await?.0, StatusCode::OK, "and on the public port");
    assert_eq!(holder.get("/session").await?.status, StatusCode::UNAUTHORIZED, "Redis answers: no such session");
    let mut socket = logged_in_socket(gateway.addr, "late").await?;
    let room = testkit::unique("redis-late");
    socket.join(&room, None).await?;
    assert_send_delivered(&mut socket, &room, "after-redis").await?;
    Ok(())
}

#[tokio::test]
async fn bridge_started_without_rabbitmq_answers_unavailable_and_recovers() -> anyhow::Result<()> {
    let mut rabbit = RabbitNode::start().await?;
    rabbit.stop().await?;
    let extras = Extras { amqp_url: Some(rabbit.url()), allow_unready: true, ..Extras::default() };
    let stack = Stack::start_with(ONE_OF_EACH, extras).await?;
    let (gateway, bridge) = (&stack.gateways[0], &stack.bridges[0]);

    assert_not_ready(bridge.admin, "broker").await?;
    // The gateway's own dependencies are up: it attaches and takes clients.
    wait_ready(gateway.admin).await?;
    let mut socket = logged_in_socket(gateway.addr, "patient").await?;
    let room = testkit::unique("rabbit-late");
    socket.join(&room, None).await?;
    let refused = send_once(&mut socket, &room, "before-rabbit").await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unavailable", "retryable, at once: {refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("broker")), "{refused}");
    assert_not_ready(bridge.admin, "broker").await?;

    // RabbitMQ comes up: the bridge connects, and the same socket's resend
    // is stored and delivered through the subscription made before.
    rabbit.start_again().await?;
    eventually("the bridge turns ready", || async { Ok(readyz(bridge.admin).await?.0 == StatusCode::OK) }).await?;
    assert_send_delivered(&mut socket, &room, "before-rabbit").await?;
    Ok(())
}

#[tokio::test]
async fn gateway_started_without_a_bridge_answers_unavailable_and_recovers() -> anyhow::Result<()> {
    let extras = Extras { allow_unready: true, ..Extras::default() };
    let mut stack = Stack::start_with(ONE_OF_EACH, extras).await?;
    // Both stopped, then the gateway started alone: its bridge URL refuses.
    for process in [&mut stack.gateways[0].process, &mut stack.bridges[0].process] {
        process.signal("KILL").await?;
        process.wait(Duration::from_secs(10)).await?;
    }
    stack.restart_gateway(0).await?;
    let gateway = &stack.gateways[0];

    // Not ready for the bridge alone, once the first Redis ping answered
    // (until then readiness names Redis, which starts as unknown).
    eventually("readiness names only the bridge", || async {
        let (status, body) = readyz(gateway.admin).await?;
        Ok(status == StatusCode::SERVICE_UNAVAILABLE && body.contains("bridge"))
    })
    .await?;
    // Sessions work (Redis is up); chat waits for a bridge.
    let mut socket = logged_in_socket(gateway.addr, "early").await?;
    let room = testkit::unique("bridge-late");
    // No bridge takes the room's subscription: the join is refused, never
    // answered with `joined` for a room that would stay silent.
    socket.send(&json!({"type": "join", "room": room})).await?;
    let refused = socket.next_matching(|f| f["type"] == "joined" || f["type"] == "error").await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unavailable", "retryable: {refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");
    assert_eq!(refused["room"], room.as_str(), "names the room to join again: {refused}");
    let refused = send_once(&mut socket, &room, "before-bridge").await?;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    assert_not_ready(gateway.admin, "bridge").await?;

    // The bridge comes up on its address: the gateway attaches by itself.
    stack.restart_bridge(0).await?;
    let gateway = &stack.gateways[0];
    eventually("the gateway turns ready", || async { Ok(readyz(gateway.admin).await?.0 == StatusCode::OK) }).await?;
    socket.join(&room, None).await?;
    assert_send_delivered(&mut socket, &room, "before-bridge").await?;
    Ok(())
}
