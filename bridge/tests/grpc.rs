//! The bridge over its real gRPC contract, on the real RabbitMQ: publishes are
//! acked with ids, subscriptions stream in order with each message naming the
//! room's previous one, history reads ranges and tails (from memory and by
//! scanning the partition), cids are stored once, and SIGTERM tells gateways
//! to move.

mod support;

use std::time::Duration;

use anyhow::Context;
use proto::warren::v1::HistoryRequest;
use proto::warren::v1::bridge_client::BridgeClient;
use proto::warren::v1::bridge_frame::Kind;
use support::Attached;
use testkit::stack::start_bridge;

async fn attach(client: &mut BridgeClient<tonic::transport::Channel>) -> anyhow::Result<Attached> {
    Attached::on(client).await
}

#[tokio::test]
async fn publishes_are_acked_streamed_replayed_and_stored_once() -> anyhow::Result<()> {
    let bridge = start_bridge(1).await?;
    let mut client = BridgeClient::connect(format!("http://{}", bridge.addr)).await?;
    let room = testkit::unique("grpc");
    let mut gateway = attach(&mut client).await?;
    gateway.subscribe(&room).await?;
    assert!(matches!(gateway.next().await?, Kind::Subscribed(s) if s.room == room && s.last_id == 0));

    gateway.publish(1, &room, "one", "c-1").await?;
    gateway.publish(2, &room, "two", "c-2").await?;
    gateway.publish(3, &room, "one again", "c-1").await?;
    let (mut acks, mut messages) = (Vec::new(), Vec::new());
    while acks.len() < 3 || messages.len() < 2 {
        match gateway.next().await? {
            Kind::Ack(ack) => acks.push((ack.request_id, ack.id)),
            Kind::Message(message) => messages.push(message),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    acks.sort_unstable();
    let ids: Vec<u64> = messages.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 2, "c-1 twice is one message: {messages:?}");
    assert!(ids[0] < ids[1]);
    // The three publishes run concurrently: either c-1 may be stored first.
    let id_of = |cid: &str| messages.iter().find(|m| m.cid == cid).map(|m| m.id);
    let (one, two) = (id_of("c-1").context("c-1 stored")?, id_of("c-2").context("c-2 stored")?);
    assert_eq!(acks, [(1, one), (2, two), (3, one)], "the repeat gets the first id");
    assert!(messages.iter().all(|m| m.user == "alice"));
    assert_eq!((messages[0].prev_id, messages[1].prev_id), (0, ids[0]), "each names the room's previous id");

    let history = client.history(range(&room, ids[0] - 1, ids[1])).await?.into_inner();
    assert_eq!(history.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(history.covered_to, ids[1]);
    let tail = client.history(range(&room, ids[0], ids[1])).await?;
    assert_eq!(tail.into_inner().messages.len(), 1, "after_id is exclusive");

    // A second gateway is told the room's newest id, then gets what follows.
    let mut late = attach(&mut client).await?;
    late.subscribe(&room).await?;
    assert!(matches!(late.next().await?, Kind::Subscribed(s) if s.last_id == ids[1]));
    late.publish(4, &room, "three", "c-3").await?;
    let mut third = None;
    while third.is_none() {
        match late.next().await? {
            Kind::Message(m) => third = Some(m),
            Kind::Ack(_) => {}
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(third.map(|m| m.prev_id), Some(ids[1]));

    let bad = client.history(range("Bad Room", 0, 5)).await;
    assert_eq!(bad.expect_err("refused").code(), tonic::Code::InvalidArgument);
    Ok(())
}

fn range(room: &str, after_id: u64, up_to_id: u64) -> HistoryRequest {
    HistoryRequest { room: room.to_owned(), after_id, up_to_id, newest: 0 }
}

/// More messages than a room's index keeps: a join's tail still comes from
/// memory, and a resume from the first id scans the partition, exactly.
#[tokio::test]
async fn history_beyond_the_index_scans_the_partition() -> anyhow::Result<()> {
    const SENT: u64 = 90;
    let bridge = start_bridge(3).await?;
    let mut client = BridgeClient::connect(format!("http://{}", bridge.addr)).await?;
    let room = testkit::unique("scan");
    let mut gateway = attach(&mut client).await?;
    for n in 1..=SENT {
        gateway.publish(n, &room, &format!("m{n}"), &format!("c-{n}")).await?;
    }
    let mut ids = Vec::new();
    while ids.len() < usize::try_from(SENT)? {
        match gateway.next().await? {
            Kind::Ack(ack) => ids.push(ack.id),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    ids.sort_unstable();
    let last = *ids.last().context("acked")?;
    let newest = HistoryRequest { room: room.clone(), after_id: 0, up_to_id: last, newest: 50 };
    let tail = client.history(newest).await?.into_inner().messages;
    assert_eq!(tail.iter().map(|m| m.id).collect::<Vec<_>>(), ids[ids.len() - 50..]);
    // From before the first id: older than the index holds, so a scan.
    let mut read = Vec::new();
    let mut after = ids[0] - 1;
    while after < last {
        let page = client.history(range(&room, after, last)).await?.into_inner();
        assert!(page.covered_to > after, "every page moves on");
        read.extend(page.messages.iter().map(|m| m.id));
        after = page.covered_to;
    }
    assert_eq!(read, ids, "every message once, in order");
    Ok(())
}

#[tokio::test]
async fn sigterm_tells_gateways_to_move_and_exits() -> anyhow::Result<()> {
    let mut bridge = start_bridge(2).await?;
    let mut client = BridgeClient::connect(format!("http://{}", bridge.addr)).await?;
    let mut gateway = attach(&mut client).await?;
    bridge.process.signal("TERM").await?;
    assert!(matches!(gateway.next().await?, Kind::Draining(_)));
    drop(gateway);
    let code = bridge.process.wait(Duration::from_secs(10)).await?;
    assert_eq!(code, Some(0));
    Ok(())
}
