//! Rooms at scale on the machine's RabbitMQ: thousands of live rooms on one
//! bridge, every one of them acked and delivered, and none of them costing
//! the broker a queue, a channel or a descriptor.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use testkit::http::Client;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Socket};

/// More rooms than one stream each ever allowed on this machine's broker
/// (about 490), and more than one bridge connection had channels (2,047).
const ROOMS: usize = 3000;

async fn socket(addr: std::net::SocketAddr, user: &str) -> anyhow::Result<Socket> {
    let mut client = Client::new(addr);
    client.login(user).await?;
    let mut socket =
        ws::connect(addr, client.cookie.as_deref(), None).await.map_err(|error| anyhow::anyhow!("{error:?}"))?;
    anyhow::ensure!(socket.next_json().await?["type"] == "welcome");
    Ok(socket)
}

/// The machine's broker process (the test stack's RabbitMQ), when visible.
fn broker_files() -> Option<usize> {
    let pids = std::process::Command::new("pgrep").args(["-u", "rabbitmq", "beam.smp"]).output().ok()?;
    let pid = String::from_utf8_lossy(&pids.stdout).lines().next()?.trim().to_owned();
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Joins every room, pipelined, and waits for every `joined`.
async fn join_all(socket: &mut Socket, rooms: &[String]) -> anyhow::Result<()> {
    for room in rooms {
        socket.send(&json!({"type": "join", "room": room})).await?;
    }
    for _ in rooms {
        let answer = socket.next_matching(|f| f["type"] == "joined" || f["type"] == "error").await?;
        anyhow::ensure!(answer["type"] == "joined", "a join was refused: {answer}");
    }
    Ok(())
}

/// Reads until one message per room has come; fails on a second.
async fn one_message_per_room(socket: &mut Socket, rooms: usize) -> anyhow::Result<HashMap<String, u64>> {
    let mut got = HashMap::new();
    while got.len() < rooms {
        let message = socket.next_of_type("message").await?;
        let room = message["room"].as_str().context("room")?.to_owned();
        let id = message["id"].as_u64().context("id")?;
        anyhow::ensure!(got.insert(room.clone(), id).is_none(), "two messages in {room}");
    }
    Ok(got)
}

#[tokio::test]
async fn three_thousand_live_rooms_on_one_bridge_all_ack_and_deliver() -> anyhow::Result<()> {
    let limits = [
        ("GATEWAY_MAX_ROOMS_PER_SOCKET", ROOMS.to_string()),
        ("GATEWAY_SEND_RATE", "100000".to_owned()),
        ("GATEWAY_USER_SEND_RATE", "100000".to_owned()),
        ("GATEWAY_MAX_QUEUE_BYTES", (16 << 20).to_string()),
    ];
    let gateway_env = limits.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect();
    let extras = Extras { gateway_env, ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 1, haproxy: false }, extras).await?;
    let addr = stack.gateways[0].addr;
    let files_before = broker_files();
    let tag = testkit::unique("dm");
    let rooms: Vec<String> = (0..ROOMS).map(|n| format!("{tag}-{n}")).collect();
    let mut alice = socket(addr, &testkit::unique("alice")).await?;
    let mut bob = socket(addr, &testkit::unique("bob")).await?;
    join_all(&mut alice, &rooms).await?;
    join_all(&mut bob, &rooms).await?;

    for (n, room) in rooms.iter().enumerate() {
        alice.send(&json!({"type": "send", "room": room, "text": "hi", "cid": format!("c-{n}")})).await?;
    }
    let mut acked = HashMap::new();
    while acked.len() < ROOMS {
        let answer = alice.next_matching(|f| f["type"] == "ack" || f["type"] == "error").await?;
        anyhow::ensure!(answer["type"] == "ack", "a send failed: {answer}");
        acked.insert(answer["cid"].as_str().context("cid")?.to_owned(), answer["id"].as_u64().context("id")?);
    }
    let to_bob = tokio::time::timeout(Duration::from_secs(60), one_message_per_room(&mut bob, ROOMS)).await??;
    let to_alice = tokio::time::timeout(Duration::from_secs(60), one_message_per_room(&mut alice, ROOMS)).await??;
    for (n, room) in rooms.iter().enumerate() {
        let id = acked.get(&format!("c-{n}")).copied();
        assert_eq!(to_bob.get(room).copied(), id, "bob got {room}'s message with its acked id");
        assert_eq!(to_alice.get(room).copied(), id, "alice got {room}'s message with its acked id");
    }
    if let (Some(before), Some(after)) = (files_before, broker_files()) {
        // Other tests' connections come and go meanwhile; 3,000 rooms as
        // streams would have needed about 7,500.
        assert!(after < before + 100, "the broker's descriptors: {before} before, {after} after");
    }
    Ok(())
}
