//! Retention that can change, on a private RabbitMQ node with the management
//! plugin: partitions declared with other retention arguments (by an older
//! bridge) are used as they are, a bridge restarted with another
//! `--stream-max-age`/`--stream-max-bytes` starts and is ready, its value
//! becomes every partition's effective retention (the `warren-retention`
//! policy, read back from the broker), and what was published before is
//! still there.

mod support;

use std::time::{Duration, Instant};

use anyhow::Context;
use bridge::retention::Retention;
use bridge::room::{Entry, Layout, Start, decode, queue_name};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use proto::warren::v1::bridge_frame::Kind;
use serde_json::{Value, json};
use support::Attached;
use testkit::services::{NodeOptions, RabbitNode};
use testkit::stack::{Bridge, start_bridge_with};

/// The bridge's default number of partitions.
const PARTITIONS: u16 = 8;
/// The bridge's default segment size, which every bridge here keeps.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

#[tokio::test]
async fn retention_changes_on_a_live_stack() -> anyhow::Result<()> {
    let started = Instant::now();
    let node = RabbitNode::start_with(NodeOptions { management: true, ..NodeOptions::default() }).await?;
    let management_url = node.management_url().context("the node has the management API")?;
    let booted = started.elapsed();

    // An older bridge declared the even partitions with its retention as
    // queue arguments (7D, 100 MiB), as bridges did before the policy.
    let older = Retention { max_age: "7D".parse()?, max_bytes: 100 * 1024 * 1024, segment_bytes: SEGMENT_BYTES };
    declare_with_arguments(&node.url(), (0..PARTITIONS).step_by(2), &older).await?;

    // A bridge with other flags and no management API: ready, so no
    // declaration failed; it creates the odd partitions with its own values.
    let first = bridge(1, &node, &[("BRIDGE_STREAM_MAX_AGE", "2D"), ("BRIDGE_STREAM_MAX_BYTES", "50000000")]).await?;
    let rooms = one_room_per_partition();
    let sent = publish_one_each(&first, &rooms).await?;
    stop(first).await?;
    for (partition, max_age) in [(0, "7D"), (1, "2D")] {
        let queue = queue(&node, partition).await?;
        assert_eq!(queue["arguments"]["x-max-age"], max_age, "partition {partition} as declared: {queue}");
    }

    // The same stack, restarted with another retention and the API: it
    // starts and is ready, and every partition's effective retention, as the
    // broker reports it, is the new one, whatever its arguments.
    let settings = [
        ("BRIDGE_STREAM_MAX_AGE", "1h"),
        ("BRIDGE_STREAM_MAX_BYTES", "20000000"),
        ("BRIDGE_MANAGEMENT_URL", management_url.as_str()),
    ];
    let restarted = Instant::now();
    let second = bridge(2, &node, &settings).await?;
    let ready_after = restarted.elapsed();
    let wanted =
        json!({"max-age": "1h", "max-length-bytes": 20_000_000, "stream-max-segment-size-bytes": SEGMENT_BYTES});
    let policy = node.management_get("policies/%2F/warren-retention").await?;
    assert_eq!((&policy["pattern"], &policy["apply-to"]), (&json!(r"^warren\.partition\."), &json!("queues")));
    assert_eq!(policy["definition"], wanted, "the policy: {policy}");
    effective_retention_becomes(&node, &wanted).await?;

    // What was published before is still there: every partition, read from
    // its first entry, still holds its message at the id it was acked with.
    // (Read from the broker rather than through the new bridge's index: on
    // RabbitMQ 3.10 a reader attached at `first` now and then starts after
    // entries already there, with the bridges before this change as well.)
    let connection = Connection::connect(&node.url(), ConnectionProperties::default()).await?;
    for (partition, (id, text)) in (0..PARTITIONS).zip(&sent) {
        let kept = read_partition(&connection, partition).await?;
        assert!(kept.contains(&(*id, text.clone())), "partition {partition} keeps ({id}, {text:?}): {kept:?}");
    }
    connection.close(200, "read".into()).await?;
    // And the new bridge serves: a send is acked with the next id of its room.
    let mut gateway = Attached::open(second.addr).await?;
    gateway.publish(1, &rooms[0], "after the change", "c-after").await?;
    match gateway.next().await? {
        Kind::Ack(ack) => assert!(ack.id > sent[0].0, "a later id: {ack:?}"),
        other => anyhow::bail!("unexpected {other:?}"),
    }
    stop(second).await?;

    // A management API that refuses the bridge (a wrong password): the
    // bridge still serves, and the policy stays as it was.
    let refused = management_url.replace("guest:guest@", "guest:wrong@");
    let settings = [("BRIDGE_STREAM_MAX_AGE", "3h"), ("BRIDGE_MANAGEMENT_URL", refused.as_str())];
    let third = bridge(3, &node, &settings).await?;
    let policy = node.management_get("policies/%2F/warren-retention").await?;
    assert_eq!(policy["definition"], wanted, "unchanged: {policy}");
    stop(third).await?;
    eprintln!(
        "node booted in {booted:.1?}; restarted bridge ready in {ready_after:.1?}; whole test {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Declares partitions as a bridge did before the policy: with its
/// retention as queue arguments.
async fn declare_with_arguments(
    url: &str,
    partitions: impl Iterator<Item = u16>,
    retention: &Retention,
) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for partition in partitions {
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(queue_name(partition), options, retention.creation_arguments()).await?;
    }
    connection.close(200, "declared".into()).await?;
    Ok(())
}

/// A bridge on `node` with `settings` in its environment, once it is ready.
async fn bridge(n: usize, node: &RabbitNode, settings: &[(&str, &str)]) -> anyhow::Result<Bridge> {
    let env: Vec<(String, String)> = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    start_bridge_with(n, &node.url(), &env, false).await
}

/// Stops a bridge as an orchestrator would (SIGTERM) and waits for it.
async fn stop(mut bridge: Bridge) -> anyhow::Result<()> {
    bridge.process.signal("TERM").await?;
    let code = bridge.process.wait(Duration::from_secs(10)).await?;
    anyhow::ensure!(code == Some(0), "the bridge exited with {code:?}");
    Ok(())
}

/// A room in each partition.
fn one_room_per_partition() -> Vec<String> {
    let layout = Layout::new(PARTITIONS);
    (0..PARTITIONS)
        .filter_map(|partition| (0..).map(|n| format!("kept-{n}")).find(|room| layout.partition_of(room) == partition))
        .collect()
}

/// Publishes one message into each room; their ids and texts.
async fn publish_one_each(bridge: &Bridge, rooms: &[String]) -> anyhow::Result<Vec<(u64, String)>> {
    let mut gateway = Attached::open(bridge.addr).await?;
    let texts: Vec<String> = rooms.iter().map(|room| format!("before the change, in {room}")).collect();
    for (n, (room, text)) in (1..).zip(rooms.iter().zip(&texts)) {
        gateway.publish(n, room, text, &format!("c-{n}")).await?;
    }
    let mut ids = vec![0; rooms.len()];
    while ids.contains(&0) {
        match gateway.next().await? {
            Kind::Ack(ack) => ids[usize::try_from(ack.request_id - 1)?] = ack.id,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    Ok(ids.into_iter().zip(texts).collect())
}

/// The (id, text) of every message a partition holds, read from its first
/// entry until nothing comes for half a second (again once, should the first
/// read come back empty).
async fn read_partition(connection: &Connection, partition: u16) -> anyhow::Result<Vec<(u64, String)>> {
    for _ in 0..2 {
        let channel = connection.create_channel().await?;
        channel.basic_qos(256, BasicQosOptions::default()).await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), Start::First.to_offset_arg());
        let mut consumer =
            channel.basic_consume(queue_name(partition), "".into(), BasicConsumeOptions::default(), arguments).await?;
        let mut kept = Vec::new();
        while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
            let delivery = delivery?;
            delivery.ack(BasicAckOptions::default()).await?;
            if let Some((id, Entry::Message(stored))) = decode(&delivery) {
                kept.push((id, stored.message.text));
            }
        }
        channel.close(200, "read".into()).await?;
        if !kept.is_empty() {
            return Ok(kept);
        }
    }
    Ok(Vec::new())
}

/// A partition as the management API shows it.
async fn queue(node: &RabbitNode, partition: u16) -> anyhow::Result<Value> {
    node.management_get(&format!("queues/%2F/warren.partition.{partition}")).await
}

/// Waits until every partition's effective policy is `wanted` (the API
/// refreshes what it shows of queues every few seconds).
async fn effective_retention_becomes(node: &RabbitNode, wanted: &Value) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for partition in 0..PARTITIONS {
        loop {
            let queue = queue(node, partition).await?;
            if queue["policy"] == "warren-retention" && queue["effective_policy_definition"] == *wanted {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "partition {partition} never took the policy: {queue}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}
