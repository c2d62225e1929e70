//! Chat across gateways, replay, idempotent sends and refused frames, on real
//! bridges, RabbitMQ, gateways and HAProxy.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use testkit::http::Client;
use testkit::stack::{Shape, Stack};
use testkit::ws::{self, Socket};

/// Logs in at `addr` and opens a socket; returns it with its instance.
async fn user_socket(addr: SocketAddr, user: &str) -> anyhow::Result<(Client, Socket, String)> {
    let mut client = Client::new(addr);
    client.login(user).await?;
    let (socket, instance) = open(&client).await?;
    Ok((client, socket, instance))
}

async fn open(client: &Client) -> anyhow::Result<(Socket, String)> {
    let mut socket =
        ws::connect(client.addr, client.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let welcome = socket.next_json().await?;
    anyhow::ensure!(welcome["type"] == "welcome", "first frame is welcome: {welcome}");
    Ok((socket, welcome["instance"].as_str().context("instance")?.to_owned()))
}

/// Asserts that no `message` frame arrives for a short while.
async fn assert_quiet(socket: &mut Socket) {
    let quiet = tokio::time::timeout(Duration::from_millis(700), socket.next_of_type("message")).await;
    assert!(quiet.is_err(), "unexpected extra message: {quiet:?}");
}

#[tokio::test]
async fn users_on_different_gateways_chat_through_the_balancer() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 3, haproxy: true }).await?;
    let front = stack.front();
    let alice_name = testkit::unique("alice");
    let (_alice_http, mut alice, alice_on) = user_socket(front, &alice_name).await?;
    let (mut bob_http, mut bob, mut bob_on) = user_socket(front, &testkit::unique("bob")).await?;
    // The balancer hashes the session cookie; every /session call replaces it,
    // so a few calls move bob until he is on another gateway than alice.
    for _ in 0..40 {
        if bob_on != alice_on {
            break;
        }
        bob_http.get("/session").await?;
        (bob, bob_on) = open(&bob_http).await?;
    }
    assert_ne!(alice_on, bob_on, "alice and bob on different gateways");

    let room = testkit::unique("lobby");
    alice.join(&room, None).await?;
    bob.join(&room, None).await?;

    // The frame's own "user" field is ignored: the name comes from the session.
    alice.send(&json!({"type":"send","room":room,"text":"hi bob","cid":"a-1","user":"mallory"})).await?;
    let first = bob.next_of_type("message").await?;
    assert_eq!((first["user"].as_str(), first["text"].as_str()), (Some(alice_name.as_str()), Some("hi bob")));
    assert_eq!(first["cid"], "a-1");
    assert!(first["ts"].as_i64().is_some_and(|ts| ts > 1_700_000_000_000), "ts is server time in ms");
    let ack = alice.next_of_type("ack").await?;
    assert_eq!(ack["id"], first["id"]);

    let reply_id = bob.send_message(&room, "hi alice", "b-1").await?;
    let seen = alice.messages_until(&room, reply_id).await?;
    let ids: Vec<u64> = seen.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(seen.last().context("bob's message")?["text"], "hi alice");
    assert!(reply_id > first["id"].as_u64().context("id")?);
    Ok(())
}

#[tokio::test]
async fn rejoin_with_since_returns_exactly_what_was_missed() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: false }).await?;
    let room = testkit::unique("replay");
    let (_a, mut alice, _) = user_socket(stack.gateways[0].addr, "alice").await?;
    let (_b, mut bob, _) = user_socket(stack.gateways[1].addr, "bob").await?;
    alice.join(&room, None).await?;
    bob.join(&room, None).await?;

    let mut seen_by_bob = 0;
    for n in 0..3 {
        seen_by_bob = alice.send_message(&room, &format!("before {n}"), &format!("before-{n}")).await?;
    }
    bob.messages_until(&room, seen_by_bob).await?;
    bob.send(&json!({"type":"leave","room":room})).await?;
    bob.next_of_type("left").await?;

    let mut missed = Vec::new();
    for n in 0..4 {
        missed.push(alice.send_message(&room, &format!("missed {n}"), &format!("missed-{n}")).await?);
    }
    bob.join(&room, Some(seen_by_bob)).await?;
    let last = *missed.last().context("sent")?;
    let replayed: Vec<u64> = bob.messages_until(&room, last).await?.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert_eq!(replayed, missed, "exactly the missed messages, in order");
    assert_quiet(&mut bob).await;

    // A join without since replays the room's last messages (all 7 here).
    let (_c, mut carol, _) = user_socket(stack.gateways[1].addr, "carol").await?;
    carol.join(&room, None).await?;
    let history = carol.messages_until(&room, last).await?;
    assert_eq!(history.len(), 7, "the whole short history");
    assert_eq!(history[0]["text"], "before 0");
    Ok(())
}

#[tokio::test]
async fn a_repeated_cid_makes_one_message_and_the_same_ack() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let room = testkit::unique("dedup");
    let (_a, mut alice, _) = user_socket(stack.gateways[0].addr, "alice").await?;
    let (_w, mut watcher, _) = user_socket(stack.gateways[0].addr, "watcher").await?;
    alice.join(&room, None).await?;
    watcher.join(&room, None).await?;

    let first = alice.send_message(&room, "once", "same-cid").await?;
    let again = alice.send_message(&room, "once", "same-cid").await?;
    assert_eq!(first, again, "the same ack");
    // Two in flight at once are one message too.
    for _ in 0..2 {
        alice.send(&json!({"type":"send","room":room,"text":"twice","cid":"other-cid"})).await?;
    }
    let mut acks = Vec::new();
    while acks.len() < 2 {
        acks.push(alice.next_of_type("ack").await?["id"].as_u64().context("id")?);
    }
    assert_eq!(acks[0], acks[1]);

    let received = watcher.messages_until(&room, acks[0]).await?;
    let texts: Vec<&str> = received.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["once", "twice"], "each cid stored once");
    assert_quiet(&mut watcher).await;
    Ok(())
}

/// Sends written back to back, none waiting for its ack, get ids in the
/// order they were written and their acks in that order.
#[tokio::test]
async fn sends_in_flight_together_keep_their_order() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let room = testkit::unique("order");
    let (_a, mut alice, _) = user_socket(stack.gateways[0].addr, "alice").await?;
    alice.join(&room, None).await?;
    // Within the default burst of one socket (twice 10 sends/s).
    let count = 16;
    for n in 0..count {
        alice.send(&json!({"type":"send","room":room,"text":format!("m{n}"),"cid":format!("order-{n}")})).await?;
    }
    let mut acks = Vec::new();
    while acks.len() < count {
        let ack = alice.next_of_type("ack").await?;
        acks.push((ack["cid"].as_str().context("cid")?.to_owned(), ack["id"].as_u64().context("id")?));
    }
    let cids: Vec<&str> = acks.iter().map(|(cid, _)| cid.as_str()).collect();
    let expected: Vec<String> = (0..count).map(|n| format!("order-{n}")).collect();
    assert_eq!(cids, expected, "acks in the order of the sends");
    assert!(acks.windows(2).all(|w| w[0].1 < w[1].1), "ids in the order of the sends: {acks:?}");
    let echoed = alice.messages_until(&room, acks[count - 1].1).await?;
    let texts: Vec<&str> = echoed.iter().filter_map(|m| m["text"].as_str()).collect();
    let sent: Vec<String> = (0..count).map(|n| format!("m{n}")).collect();
    assert_eq!(texts, sent, "delivered in the order of the sends");
    Ok(())
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_socket_stays_usable() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let room = testkit::unique("errors");
    let (_a, mut alice, _) = user_socket(stack.gateways[0].addr, "alice").await?;
    alice.join(&room, None).await?;

    let long = "x".repeat(4001);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".to_owned(), "bad_json"),
        ("[1,2,3]".to_owned(), "bad_json"),
        (json!({"room":room}).to_string(), "bad_frame"),
        (json!({"type":"dance"}).to_string(), "unknown_type"),
        (json!({"type":"join","room":7}).to_string(), "bad_frame"),
        (json!({"type":"join","room":"Not A Room!"}).to_string(), "bad_room"),
        (json!({"type":"send","room":room,"text":"","cid":"e-1"}).to_string(), "bad_text"),
        (json!({"type":"send","room":room,"text":long,"cid":"e-2"}).to_string(), "bad_text"),
        (json!({"type":"send","room":room,"text":"hi","cid":""}).to_string(), "bad_cid"),
        (json!({"type":"send","room":"not-joined","text":"hi","cid":"e-3"}).to_string(), "not_joined"),
    ];
    for (frame, code) in &cases {
        alice.send_text(frame).await?;
        let error = alice.next_of_type("error").await?;
        assert_eq!(error["code"], *code, "{frame} -> {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    alice.send_binary(b"\x00\x01").await?;
    assert_eq!(alice.next_of_type("error").await?["code"], "binary_unsupported");
    let send_error = {
        alice.send(&json!({"type":"send","room":room,"text":" ","cid":"e-9"})).await?;
        alice.next_of_type("error").await?
    };
    assert_eq!(send_error["cid"], "e-9", "errors answering a send carry its cid");

    // Still usable, heartbeat included.
    alice.send(&json!({"type":"ping"})).await?;
    alice.next_of_type("pong").await?;
    let id = alice.send_message(&room, "still here", "ok-1").await?;
    let echoed: Vec<Value> = alice.messages_until(&room, id).await?;
    assert_eq!(echoed.last().context("message")?["text"], "still here");
    Ok(())
}

#[tokio::test]
async fn with_two_bridges_gateways_on_either_see_every_message() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 2, gateways: 2, haproxy: false }).await?;
    let room = testkit::unique("bridges");
    // gw-1 prefers bridge 1, gw-2 bridge 2.
    let (_a, mut alice, _) = user_socket(stack.gateways[0].addr, "alice").await?;
    let (_b, mut bob, _) = user_socket(stack.gateways[1].addr, "bob").await?;
    alice.join(&room, None).await?;
    bob.join(&room, None).await?;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(alice.send_message(&room, &format!("a{n}"), &format!("a{n}")).await?);
        ids.push(bob.send_message(&room, &format!("b{n}"), &format!("b{n}")).await?);
    }
    let last = *ids.iter().max().context("ids")?;
    for socket in [&mut alice, &mut bob] {
        let mut got: Vec<u64> =
            socket.messages_until(&room, last).await?.iter().filter_map(|m| m["id"].as_u64()).collect();
        got.dedup();
        let mut want = ids.clone();
        want.sort_unstable();
        assert_eq!(got, want, "every message, once, in order");
    }
    Ok(())
}
