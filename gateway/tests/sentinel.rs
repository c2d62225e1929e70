//! Redis behind Sentinel: gateways that know only the sentinels find the
//! master through them, and when the master crashes they follow the
//! failover. Sessions, presence and chat survive it; nobody logs in again.
//! Real `redis-server`s: a master, its replica and three sentinels.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http::StatusCode;
use serde_json::json;
use testkit::http::Client;
use testkit::sentinel::Sentinels;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Socket};
use tokio::time::{Instant, sleep};

/// How long the gateways may take to find the new master.
const FOLLOW: Duration = Duration::from_secs(20);

/// Opens a socket on `addr` with the session cookie `cookie` (its value).
async fn open_retrying(addr: SocketAddr, cookie: &str) -> anyhow::Result<Socket> {
    ws::connect_retrying(addr, &format!("{}={cookie}", testkit::http::DEFAULT_COOKIE_NAME), FOLLOW).await
}

async fn members(socket: &mut Socket, room: &str) -> anyhow::Result<Vec<String>> {
    socket.send(&json!({"type":"members","room":room})).await?;
    let frame = socket.next_of_type("members").await?;
    let list = frame["members"].as_array().with_context(|| format!("no list: {frame}"))?;
    Ok(list.iter().filter_map(|name| name.as_str().map(str::to_owned)).collect())
}

#[tokio::test]
async fn a_master_failover_keeps_sessions_presence_and_chat() -> anyhow::Result<()> {
    let mut redis = Sentinels::start().await?;
    let extras = Extras { redis_url: Some(redis.url()), gateway_env: redis.gateway_env(), ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: false }, extras).await?;
    let (left, right) = (stack.gateways[0].addr, stack.gateways[1].addr);
    let room = testkit::unique("failover");
    let (ann_name, bob_name) = (testkit::unique("ann"), testkit::unique("bob"));
    let mut ann_http = Client::new(left);
    ann_http.login(&ann_name).await?;
    let mut bob_http = Client::new(right);
    bob_http.login(&bob_name).await?;
    let (ann_cookie, bob_cookie) =
        (ann_http.cookie.clone().context("cookie")?, bob_http.cookie.clone().context("cookie")?);
    let mut ann = open_retrying(left, &ann_cookie).await?;
    let mut bob = open_retrying(right, &bob_cookie).await?;
    ann.join(&room, None).await?;
    bob.join(&room, None).await?;

    // Everything written so far is on the replica (replication is
    // asynchronous: what a crash takes in the last instant is the price).
    let old = redis.master_port().await?;
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut master = Sentinels::node_client(old)?.get_multiplexed_async_connection_with_config(&patient).await?;
    let replicas: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut master).await?;
    assert_eq!(replicas, 1, "the replica has every session");
    drop(master);

    let new = redis.fail_over().await?;
    assert_ne!(new, old, "the sentinels promoted the replica");

    // Sessions survive: the old cookies open sockets, on the other gateway too.
    let mut ann_again = open_retrying(right, &ann_cookie).await?;
    ann_again.join(&room, None).await?;
    let mut bob_again = open_retrying(left, &bob_cookie).await?;
    bob_again.join(&room, None).await?;
    for http in [&mut ann_http, &mut bob_http] {
        let session = http.get("/session").await?;
        assert_eq!(session.status, StatusCode::OK, "still logged in: {}", session.text());
    }

    // Presence, as the new master holds it: both users, once each.
    let deadline = Instant::now() + FOLLOW;
    loop {
        let mut seen = members(&mut bob_again, &room).await?;
        seen.sort();
        let mut want = vec![ann_name.clone(), bob_name.clone()];
        want.sort();
        if seen == want {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "presence after the failover: {seen:?}, want {want:?}");
        sleep(Duration::from_millis(300)).await;
    }

    // Chat goes on, between the old sockets and the new.
    let id = ann_again.send_message(&room, "after the failover", "sentinel-1").await?;
    for socket in [&mut bob, &mut bob_again, &mut ann] {
        let seen = socket.messages_until(&room, id).await?;
        assert_eq!(seen.last().context("the message")?["text"], "after the failover");
    }

    // A login now is written to the new master.
    let mut carol = Client::new(left);
    carol.login(&testkit::unique("carol")).await?;
    open_retrying(right, &carol.cookie.clone().context("cookie")?).await?;

    // The crashed master comes back as a replica of the new one.
    redis.restart_down().await?;
    assert_eq!(redis.master_port().await?, new, "the new master stays master");
    Ok(())
}
