//! The broker's resources, on private RabbitMQ nodes started short of them:
//! thousands of rooms cost no descriptors, queues or channels; a partition
//! the broker will not serve is reported (readiness, metrics, errors that
//! name it) while every other room keeps working; a memory alarm is reported
//! and publishes are refused at once while subscriptions still hold.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use bridge::room::Layout;
use proto::warren::v1::bridge_frame::Kind;
use support::{Attached, not_ready_saying};
use testkit::http::Client;
use testkit::services::{NodeOptions, RabbitNode};
use testkit::stack::start_bridge_on;

/// The bridge's default: a room's partition is computed with it here.
const PARTITIONS: u16 = 8;

/// The partitions whose `warren_bridge_<name>` gauge reads `value`.
fn gauge_is(metrics: &str, name: &str, value: &str) -> HashSet<u16> {
    let prefix = format!("warren_bridge_{name}{{partition=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter_map(|rest| rest.split_once("\"} ").filter(|(_, read)| *read == value))
        .filter_map(|(partition, _)| partition.parse().ok())
        .collect()
}

/// Open descriptors of a process.
fn open_files(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Rooms: 3,000 on a node that allows 256 open files (one stream per room ran
/// out after about 80 of them there). Every room subscribes, acks and
/// delivers, and the broker holds no more descriptors than before.
#[tokio::test]
async fn three_thousand_rooms_on_a_node_with_256_descriptors() -> anyhow::Result<()> {
    const ROOMS: u64 = 3000;
    let node = RabbitNode::start_with(NodeOptions { open_files: Some(256), ..NodeOptions::default() }).await?;
    let bridge = start_bridge_on(1, &node.url(), false).await?;
    let pid = node.pid().context("the node's pid")?;
    let before = open_files(pid)?;

    let mut gateway = Attached::open(bridge.addr).await?;
    let rooms: Vec<String> = (0..ROOMS).map(|n| format!("dm-{n}")).collect();
    for room in &rooms {
        gateway.subscribe(room).await?;
    }
    for (n, room) in (1..).zip(&rooms) {
        gateway.publish(n, room, &format!("hello {room}"), &format!("c-{n}")).await?;
    }
    let (mut subscribed, mut acked, mut delivered) = (0, HashSet::new(), HashSet::new());
    while subscribed < ROOMS || (acked.len() as u64) < ROOMS || (delivered.len() as u64) < ROOMS {
        match gateway.next().await? {
            Kind::Subscribed(_) => subscribed += 1,
            Kind::Ack(ack) => assert!(acked.insert(ack.request_id), "one ack per publish"),
            Kind::Message(message) => assert!(delivered.insert(message.room), "one delivery per room"),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    let after = open_files(pid)?;
    assert!(after <= before + 8, "rooms cost the broker no descriptors: {before} before, {after} after");
    Ok(())
}

/// Channels: a node that gives a connection 6 channels cannot serve all 8
/// partitions. The bridge says which and why (readiness, metrics), refuses
/// their rooms with errors that say so, and serves every other room.
#[tokio::test]
async fn a_partition_the_broker_will_not_serve_is_reported_and_the_rest_works() -> anyhow::Result<()> {
    let node = RabbitNode::start_with(NodeOptions { channel_max: Some(6), ..NodeOptions::default() }).await?;
    let bridge = start_bridge_on(2, &node.url(), true).await?;
    let mut admin = Client::new(bridge.admin);
    let body = not_ready_saying(&mut admin, "cannot be read").await?;
    assert!(body.contains("cannot be read") && body.contains("channels"), "readiness says why: {body}");
    // The partitions without a reader, once every one with a reader has
    // caught up and the set holds still for a second.
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let unread = loop {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the partitions never settled: {last:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics = String::from_utf8_lossy(&admin.get("/metrics").await?.body).into_owned();
        let (unread, caught_up) =
            (gauge_is(&metrics, "partition_attached", "0"), gauge_is(&metrics, "partition_caught_up", "1"));
        let settled = caught_up.len() + unread.len() == usize::from(PARTITIONS);
        if settled && last.as_ref() == Some(&unread) {
            break unread;
        }
        last = settled.then_some(unread);
    };
    assert!((1..usize::from(PARTITIONS)).contains(&unread.len()), "some partitions are read, some not: {unread:?}");

    let layout = Layout::new(PARTITIONS);
    let room_in = |readable: bool| {
        (0..).map(|n| format!("room-{n}")).find(|room| unread.contains(&layout.partition_of(room)) != readable)
    };
    let (good, bad) = (room_in(true).context("a readable room")?, room_in(false).context("an unread room")?);
    let mut gateway = Attached::open(bridge.addr).await?;
    gateway.subscribe(&bad).await?;
    match gateway.next().await? {
        Kind::SubscribeFailed(failed) => {
            assert_eq!((failed.code.as_str(), failed.retryable), ("unavailable", true));
            assert!(failed.message.contains("cannot be read"), "{failed:?}");
        }
        other => anyhow::bail!("a silent room: {other:?}"),
    }
    gateway.subscribe(&good).await?;
    assert!(matches!(gateway.next().await?, Kind::Subscribed(s) if s.room == good));
    gateway.publish(1, &good, "hello", "c-1").await?;
    gateway.publish(2, &bad, "hello", "c-2").await?;
    let (mut good_acked, mut good_delivered, mut bad_refused) = (false, false, false);
    while !(good_acked && good_delivered && bad_refused) {
        match gateway.next().await? {
            Kind::Ack(ack) => good_acked = ack.request_id == 1,
            Kind::Message(message) => good_delivered = message.room == good,
            Kind::Error(error) => {
                assert_eq!((error.request_id, error.code.as_str()), (2, "unavailable"), "{error:?}");
                assert!(error.message.contains("cannot be read"), "{error:?}");
                bad_refused = true;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    Ok(())
}

/// Memory: a node whose memory alarm is on blocks publishing. The bridge
/// says so (readiness, metric), refuses publishes at once with the reason
/// instead of letting them time out, and still takes subscriptions.
#[tokio::test]
async fn a_memory_alarm_is_reported_and_publishes_are_refused_at_once() -> anyhow::Result<()> {
    let node = RabbitNode::start_with(NodeOptions { memory_alarm: true, ..NodeOptions::default() }).await?;
    let bridge = start_bridge_on(3, &node.url(), true).await?;
    let mut admin = Client::new(bridge.admin);
    let body = not_ready_saying(&mut admin, "blocks publishing").await?;
    assert!(body.contains("blocks publishing"), "readiness says why: {body}");
    let metrics = String::from_utf8_lossy(&admin.get("/metrics").await?.body).into_owned();
    assert!(metrics.lines().any(|line| line == "warren_bridge_amqp_blocked 1"), "the metric says so");

    let mut gateway = Attached::open(bridge.addr).await?;
    gateway.subscribe("alarmed").await?;
    assert!(matches!(gateway.next().await?, Kind::Subscribed(_)));
    let started = tokio::time::Instant::now();
    gateway.publish(1, "alarmed", "hello", "c-1").await?;
    match gateway.next().await? {
        Kind::Error(error) => {
            // `unavailable`: the code clients send the same cid again on.
            assert_eq!(error.code, "unavailable", "{error:?}");
            assert!(error.message.contains("refuses"), "{error:?}");
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "refused at once, not after the publish timeout");
    Ok(())
}
