//! Redis Cluster: gateways that know a cluster's nodes keep every promise on
//! it. Sessions spread over the masters, presence keeps to one slot, an
//! event stream's posts find it through a sharded channel, and logouts and
//! presence changes (plain channels) reach every gateway. Real
//! `redis-server`s: three masters sharing the 16,384 slots (and, for the
//! failover, a replica each).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http::StatusCode;
use serde_json::json;
use testkit::http::Client;
use testkit::redis_cluster::RedisCluster;
use testkit::sse;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Socket};
use tokio::time::{Instant, sleep};

/// How long presence may take to show a change on another gateway.
const SETTLE: Duration = Duration::from_secs(10);
/// How long the gateways may take to follow a failover.
const FOLLOW: Duration = Duration::from_secs(20);

async fn logged_in(addr: SocketAddr, user: &str) -> anyhow::Result<(Client, String)> {
    let mut client = Client::new(addr);
    let reply = client.login(user).await?;
    anyhow::ensure!(reply.status.is_redirection() || reply.status.is_success(), "login: {}", reply.status);
    let cookies = client.cookie_header().context("cookie")?;
    Ok((client, cookies))
}

async fn socket(addr: SocketAddr, cookies: &str) -> anyhow::Result<Socket> {
    let mut socket = ws::connect_with_cookies(addr, Some(cookies), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let welcome = socket.next_json().await?;
    anyhow::ensure!(welcome["type"] == "welcome", "first frame is welcome: {welcome}");
    Ok(socket)
}

async fn members(socket: &mut Socket, room: &str) -> anyhow::Result<Vec<String>> {
    socket.send(&json!({"type":"members","room":room})).await?;
    let frame = socket.next_of_type("members").await?;
    let list = frame["members"].as_array().with_context(|| format!("no list: {frame}"))?;
    let mut names: Vec<String> = list.iter().filter_map(|name| name.as_str().map(str::to_owned)).collect();
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn sessions_presence_streams_and_logouts_work_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let extras = Extras { redis_url: Some(cluster.url()), gateway_env: cluster.gateway_env(), ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: false }, extras).await?;
    let (left, right) = (stack.gateways[0].addr, stack.gateways[1].addr);

    // Sessions: made on one gateway, good on the other; spread by slot.
    let mut users = Vec::new();
    for n in 0..12 {
        let name = testkit::unique(&format!("u{n}"));
        let (mut client, _) = logged_in(left, &name).await?;
        client.addr = right;
        let session = client.get("/session").await?;
        assert_eq!(session.status, StatusCode::OK, "{name} is logged in on the other gateway: {}", session.text());
        // The session's id was replaced: the cookie now holds the new one.
        let cookies = client.cookie_header().context("cookie")?;
        users.push((name, client, cookies));
    }
    let sessions = cluster.keys_per_node("sess:*").await?;
    let holding = sessions.iter().filter(|keys| !keys.is_empty()).count();
    assert!(holding >= 2, "12 sessions on more than one master: {sessions:?}");

    // Chat and presence across the gateways.
    let room = testkit::unique("cluster");
    let (ann_name, bob_name) = (users[0].0.clone(), users[1].0.clone());
    let mut ann = socket(left, &users[0].2).await?;
    let mut bob = socket(right, &users[1].2).await?;
    ann.join(&room, None).await?;
    bob.join(&room, None).await?;
    let id = ann.send_message(&room, "over a cluster", "c-1").await?;
    let seen = bob.messages_until(&room, id).await?;
    assert_eq!(seen.last().context("the message")?["text"], "over a cluster");
    let mut want = vec![ann_name.clone(), bob_name.clone()];
    want.sort();
    let deadline = Instant::now() + SETTLE;
    while members(&mut bob, &room).await? != want {
        anyhow::ensure!(Instant::now() < deadline, "both present, seen from the right");
        sleep(Duration::from_millis(200)).await;
    }
    // Every presence key in one slot, hence on one node.
    let presence = cluster.keys_per_node("warren:{presence}:*").await?;
    let holding: Vec<usize> = presence.iter().map(Vec::len).collect();
    assert_eq!(holding.iter().filter(|&&n| n > 0).count(), 1, "presence on one node: {presence:?}");
    // A leave on one gateway reaches the other.
    ann.send(&json!({"type":"leave","room":room})).await?;
    let deadline = Instant::now() + SETTLE;
    while members(&mut bob, &room).await? != vec![bob_name.clone()] {
        anyhow::ensure!(Instant::now() < deadline, "ann's leave seen from the right");
        sleep(Duration::from_millis(200)).await;
    }

    // An event stream held on the left, posted to through the right: the
    // sharded channel finds it; an unknown token finds nothing (404).
    let cara_cookies = users[2].2.clone();
    let mut cara = sse::connect(left, Some(&cara_cookies), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let welcome = cara.next_json().await?;
    anyhow::ensure!(welcome["type"] == "welcome", "first event is welcome: {welcome}");
    let token = cara.stream_token().context("token")?.to_owned();
    let join = json!({"type":"join","room":room}).to_string();
    let posted = sse::post(right, &token, Some(&cara_cookies), None, &join).await?;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "{}", posted.text());
    assert_eq!(cara.next_of_type("joined").await?["room"], room.as_str());
    let unknown = "A".repeat(22);
    let lost = sse::post(right, &unknown, Some(&cara_cookies), None, &join).await?;
    assert_eq!(lost.status, StatusCode::NOT_FOUND, "{}", lost.text());

    // A logout on the left closes the user's socket on the right.
    let mut dan = socket(right, &users[3].2).await?;
    let dan_http = &mut users[3].1;
    dan_http.addr = left;
    let out = dan_http.request(http::Method::POST, "/logout", None).await?;
    assert!(out.status.is_redirection() || out.status.is_success(), "logout: {}", out.status);
    assert_eq!(dan.closed_with().await?, (1008, "session ended".to_owned()));
    Ok(())
}

#[tokio::test]
async fn a_cluster_failover_keeps_sessions_presence_and_chat() -> anyhow::Result<()> {
    let mut cluster = RedisCluster::start_with_replicas().await?;
    let extras = Extras { redis_url: Some(cluster.url()), gateway_env: cluster.gateway_env(), ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: false }, extras).await?;
    let (left, right) = (stack.gateways[0].addr, stack.gateways[1].addr);
    let room = testkit::unique("failover");
    let (ann_name, bob_name) = (testkit::unique("ann"), testkit::unique("bob"));
    let (_, ann_cookies) = logged_in(left, &ann_name).await?;
    let (_, bob_cookies) = logged_in(right, &bob_name).await?;
    let mut ann = socket(left, &ann_cookies).await?;
    let mut bob = socket(right, &bob_cookies).await?;
    ann.join(&room, None).await?;
    bob.join(&room, None).await?;

    // The master of presence's slot crashes: its scripts, its counter and
    // the gateways' subscriptions all move to the promoted replica. What a
    // master wrote is on its replica first (replication is asynchronous).
    let presence = "warren:{presence}:seq";
    let old = cluster.master_of(presence).await?;
    for port in cluster.ports().into_iter().take(3) {
        let _: i64 = testkit::redis_cluster::ask(port, redis::cmd("WAIT").arg(1).arg(5000)).await?;
    }
    let new = cluster.fail_over(old, presence).await?;
    assert_ne!(new, old, "the replica took over");

    // Sessions survive: the old cookies open sockets, on the other gateway too.
    let mut ann_again = ws::connect_retrying(right, &ann_cookies, FOLLOW).await?;
    ann_again.join(&room, None).await?;
    let mut bob_again = ws::connect_retrying(left, &bob_cookies, FOLLOW).await?;
    bob_again.join(&room, None).await?;

    // Presence, as the new master holds it: both users, once each.
    let mut want = vec![ann_name.clone(), bob_name.clone()];
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = members(&mut bob_again, &room).await?;
        if seen == want {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "presence after the failover: {seen:?}, want {want:?}");
        sleep(Duration::from_millis(300)).await;
    }
    // A leave is announced again (the scripts run on the promoted replica).
    bob_again.send(&json!({"type":"leave","room":room})).await?;
    bob.send(&json!({"type":"leave","room":room})).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while members(&mut ann_again, &room).await? != vec![ann_name.clone()] {
        anyhow::ensure!(Instant::now() < deadline, "bob's leave seen after the failover");
        sleep(Duration::from_millis(300)).await;
    }

    // Chat goes on, and a login now is written to the cluster as it is.
    let id = ann_again.send_message(&room, "after the failover", "f-1").await?;
    let seen = ann.messages_until(&room, id).await?;
    assert_eq!(seen.last().context("the message")?["text"], "after the failover");
    let (_, carol_cookies) = logged_in(left, &testkit::unique("carol")).await?;
    ws::connect_retrying(right, &carol_cookies, FOLLOW).await?;
    Ok(())
}
