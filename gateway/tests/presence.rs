//! Presence across three real gateways: `joined` lists the members, a user's
//! first socket and last socket are announced once to everyone in the room,
//! wherever they are; a crashed gateway's users leave within the stated
//! bound unless they reconnected elsewhere (then nobody sees a flicker), and
//! a drained gateway causes no flicker at all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use testkit::http::Client;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Socket};

/// The gateways' heartbeat period and TTL in this test (3 s and 10 s by default).
const HEARTBEAT: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_secs(2);
/// A crashed gateway's users leave within TTL + one heartbeat (docs/protocol.md).
const BOUND: Duration = Duration::from_millis(2500);
/// Scheduling slack on a busy test machine.
const SLACK: Duration = Duration::from_millis(1500);

async fn login(addr: SocketAddr, user: &str) -> anyhow::Result<Client> {
    let mut client = Client::new(addr);
    client.login(user).await?;
    Ok(client)
}

/// Opens a socket on the gateway at `addr` with `client`'s session.
async fn open(client: &Client, addr: SocketAddr) -> anyhow::Result<Socket> {
    let mut socket = ws::connect(addr, client.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let welcome = socket.next_json().await?;
    anyhow::ensure!(welcome["type"] == "welcome", "first frame is welcome: {welcome}");
    Ok(socket)
}

/// Joins `room`; returns the members `joined` lists.
async fn join(socket: &mut Socket, room: &str) -> anyhow::Result<Vec<String>> {
    socket.send(&json!({"type":"join","room":room})).await?;
    let joined = socket.next_matching(|f| f["type"] == "joined" && f["room"] == room).await?;
    let members = joined["members"].as_array().with_context(|| format!("joined without members: {joined}"))?;
    Ok(members.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}

/// The next presence frame, as (user, state).
async fn next_presence(socket: &mut Socket, room: &str) -> anyhow::Result<(String, String)> {
    let frame = socket.next_matching(|f| f["type"] == "presence" && f["room"] == room).await?;
    let user = frame["user"].as_str().context("user")?.to_owned();
    Ok((user, frame["state"].as_str().context("state")?.to_owned()))
}

/// The next `count` presence frames, then nothing more for a while.
async fn presence_events(socket: &mut Socket, room: &str, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut events = Vec::new();
    while events.len() < count {
        events.push(next_presence(socket, room).await?);
    }
    assert_quiet(socket, room, Duration::from_millis(500)).await;
    Ok(events)
}

async fn assert_quiet(socket: &mut Socket, room: &str, wait: Duration) {
    let extra = tokio::time::timeout(wait, next_presence(socket, room)).await;
    assert!(extra.is_err(), "unexpected presence frame: {extra:?}");
}

fn event(user: &str, state: &str) -> (String, String) {
    (user.to_owned(), state.to_owned())
}

fn sorted(users: &[&str]) -> Vec<String> {
    let mut users: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
    users.sort();
    users
}

#[tokio::test]
async fn presence_survives_a_crash_and_a_drain_without_flicker() -> anyhow::Result<()> {
    let env = [("GATEWAY_PRESENCE_HEARTBEAT", HEARTBEAT), ("GATEWAY_PRESENCE_TTL", TTL)]
        .map(|(key, value)| (key.to_owned(), format!("{}ms", value.as_millis())));
    let extras = Extras { gateway_env: env.to_vec(), drain_window: Some(Duration::from_secs(2)), ..Extras::default() };
    let mut stack = Stack::start_with(Shape { bridges: 1, gateways: 3, haproxy: false }, extras).await?;
    let [gw1, gw2, gw3] = [0, 1, 2].map(|i| stack.gateways[i].addr);
    let room = testkit::unique("presence");
    let [olga, kim, rex, dana, lou, tess, zed] =
        ["olga", "kim", "rex", "dana", "lou", "tess", "zed"].map(testkit::unique);

    // olga watches from gw1, the gateway that survives everything.
    let olga_http = login(gw1, &olga).await?;
    let mut olga_ws = open(&olga_http, gw1).await?;
    assert_eq!(join(&mut olga_ws, &room).await?, sorted(&[&olga]), "alone in a new room");

    // kim and rex on gw2 (to be killed), dana and lou on gw3 (to be drained).
    let mut sockets = Vec::new();
    for (user, addr) in [(&kim, gw2), (&rex, gw2), (&dana, gw3), (&lou, gw3)] {
        let client = login(addr, user).await?;
        let mut socket = open(&client, addr).await?;
        let members = join(&mut socket, &room).await?;
        assert!(members.contains(user) && members.contains(&olga), "{user}'s members: {members:?}");
        assert_eq!(next_presence(&mut olga_ws, &room).await?, event(user, "join"), "olga sees {user} arrive");
        sockets.push((client, socket));
    }
    let [(_, mut kim_ws), (rex_http, rex_ws), (dana_http, mut dana_ws), (_, lou_ws)]: [(Client, Socket); 4] =
        sockets.try_into().map_err(|_| anyhow::anyhow!("four users"))?;

    // Two tabs of tess, on gw3 and gw1: one presence.
    let tess_http = login(gw3, &tess).await?;
    let mut tess_tab1 = open(&tess_http, gw3).await?;
    join(&mut tess_tab1, &room).await?;
    assert_eq!(next_presence(&mut olga_ws, &room).await?, event(&tess, "join"));
    let mut tess_tab2 = open(&tess_http, gw1).await?;
    let everyone = sorted(&[&olga, &kim, &rex, &dana, &lou, &tess]);
    assert_eq!(join(&mut tess_tab2, &room).await?, everyone, "the second tab sees each member once");
    assert_quiet(&mut olga_ws, &room, Duration::from_millis(500)).await;

    // Changes made on gw2 itself and on gw3 reach kim on gw2.
    let kim_saw = presence_events(&mut kim_ws, &room, 4).await?;
    assert_eq!(kim_saw, [event(&rex, "join"), event(&dana, "join"), event(&lou, "join"), event(&tess, "join")]);

    // SIGKILL gw2. rex reconnects on gw1 at once; kim does not come back.
    let killed_at = Instant::now();
    stack.gateways[1].process.signal("KILL").await?;
    drop((kim_ws, rex_ws));
    let mut rex_again = open(&rex_http, gw1).await?;
    let members = join(&mut rex_again, &room).await?;
    assert!(members.contains(&kim), "kim is still there until gw2's heartbeat expires: {members:?}");
    let left = next_presence(&mut olga_ws, &room).await?;
    let took = killed_at.elapsed();
    println!("kim left {took:?} after gw2 was killed");
    assert_eq!(left, event(&kim, "leave"), "only kim leaves: rex reconnected in time");
    assert!(took <= BOUND + SLACK, "kim left {took:?} after the crash (bound {BOUND:?})");

    // SIGTERM gw3. dana obeys the notice and reconnects on gw1; lou and
    // tess's first tab ignore it and are closed by the gateway.
    stack.gateways[2].process.signal("TERM").await?;
    dana_ws.next_matching(|f| f["type"] == "reconnect").await?;
    drop(dana_ws);
    let mut dana_again = open(&dana_http, gw1).await?;
    join(&mut dana_again, &room).await?;
    let code = stack.gateways[2].process.wait(Duration::from_secs(15)).await?;
    assert_eq!(code, Some(0), "gw3 drained and exited");
    drop((lou_ws, tess_tab1));
    assert_eq!(next_presence(&mut olga_ws, &room).await?, event(&lou, "leave"), "lou left when gw3 exited");

    // Well past the bound, nothing else happened.
    assert_quiet(&mut olga_ws, &room, BOUND + SLACK).await;
    let zed_http = login(gw1, &zed).await?;
    let mut zed_ws = open(&zed_http, gw1).await?;
    let now = sorted(&[&olga, &rex, &dana, &tess, &zed]);
    assert_eq!(join(&mut zed_ws, &room).await?, now, "who is left");
    drop(zed_ws);

    // Exactly what each user on gw1 saw, from its join on.
    let tail = [event(&zed, "join"), event(&zed, "leave")];
    assert_eq!(presence_events(&mut olga_ws, &room, 2).await?, tail);
    let mut tess_saw = vec![event(&kim, "leave"), event(&lou, "leave")];
    tess_saw.extend(tail.clone());
    assert_eq!(presence_events(&mut tess_tab2, &room, 4).await?, tess_saw);
    assert_eq!(presence_events(&mut rex_again, &room, 4).await?, tess_saw, "rex rejoined before kim left");
    assert_eq!(presence_events(&mut dana_again, &room, 3).await?, tess_saw[1..], "dana moved before gw3 exited");

    let metrics = Client::new(stack.gateways[0].admin).get("/metrics").await?.text();
    assert!(metrics.contains(r#"warren_gateway_presence_heartbeats_total{result="ok"}"#), "{metrics}");
    assert!(metrics.contains("warren_gateway_presence_entries 4"), "olga, rex, dana, tess:\n{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_closed_socket_leaves_at_once_and_a_leave_frame_too() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: false }).await?;
    let [gw1, gw2] = [0, 1].map(|i| stack.gateways[i].addr);
    let room = testkit::unique("presence");
    let [ann, ben] = ["ann", "ben"].map(testkit::unique);
    let mut ann_ws = open(&login(gw1, &ann).await?, gw1).await?;
    join(&mut ann_ws, &room).await?;
    let ben_http = login(gw2, &ben).await?;
    let mut ben_ws = open(&ben_http, gw2).await?;
    assert_eq!(join(&mut ben_ws, &room).await?, sorted(&[&ann, &ben]));
    assert_eq!(next_presence(&mut ann_ws, &room).await?, event(&ben, "join"));

    ben_ws.send(&json!({"type":"leave","room":room})).await?;
    ben_ws.next_of_type("left").await?;
    assert_eq!(next_presence(&mut ann_ws, &room).await?, event(&ben, "leave"));
    assert_eq!(join(&mut ben_ws, &room).await?, sorted(&[&ann, &ben]));
    assert_eq!(next_presence(&mut ann_ws, &room).await?, event(&ben, "join"));
    drop(ben_ws);
    assert_eq!(next_presence(&mut ann_ws, &room).await?, event(&ben, "leave"), "a closed socket leaves");
    assert_quiet(&mut ann_ws, &room, Duration::from_millis(500)).await;
    Ok(())
}

#[tokio::test]
async fn presence_recovers_after_redis_restarts() -> anyhow::Result<()> {
    let mut redis = testkit::services::RedisServer::start().await?;
    let env = [("GATEWAY_PRESENCE_HEARTBEAT", HEARTBEAT), ("GATEWAY_PRESENCE_TTL", TTL)]
        .map(|(key, value)| (key.to_owned(), format!("{}ms", value.as_millis())));
    let extras = Extras { redis_url: Some(redis.url()), gateway_env: env.to_vec(), ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: false }, extras).await?;
    let [gw1, gw2] = [0, 1].map(|i| stack.gateways[i].addr);
    let room = testkit::unique("presence");
    let [ann, ben, cat] = ["ann", "ben", "cat"].map(testkit::unique);
    let mut ann_ws = open(&login(gw1, &ann).await?, gw1).await?;
    join(&mut ann_ws, &room).await?;
    let mut ben_ws = open(&login(gw2, &ben).await?, gw2).await?;
    join(&mut ben_ws, &room).await?;
    assert_eq!(next_presence(&mut ann_ws, &room).await?, event(&ben, "join"));
    let cat_http = login(gw2, &cat).await?;

    // ben leaves while Redis is down: gw2 cannot write it then.
    redis.stop().await?;
    drop(ben_ws);
    tokio::time::sleep(HEARTBEAT * 2).await;
    redis.start_again().await?;
    assert_eq!(next_presence(&mut ann_ws, &room).await?, event(&ben, "leave"), "told once Redis is back");

    // And presence works as before.
    let mut cat_ws = open(&cat_http, gw2).await?;
    assert_eq!(join(&mut cat_ws, &room).await?, sorted(&[&ann, &cat]));
    assert_eq!(next_presence(&mut ann_ws, &room).await?, event(&cat, "join"));
    assert_quiet(&mut ann_ws, &room, Duration::from_millis(500)).await;
    Ok(())
}
