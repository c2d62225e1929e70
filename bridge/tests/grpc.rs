//! The bridge over its real gRPC contract, on the real RabbitMQ: publishes are
//! acked with ids, subscriptions stream in order, history reads ranges, cids
//! are stored once, and SIGTERM tells gateways to move.

use std::time::Duration;

use anyhow::Context;
use proto::warren::v1::bridge_client::BridgeClient;
use proto::warren::v1::bridge_frame::Kind;
use proto::warren::v1::gateway_frame::Kind as Out;
use proto::warren::v1::{BridgeFrame, GatewayFrame, HistoryRequest, Publish, Subscribe};
use testkit::stack::start_bridge;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Attached {
    frames: mpsc::Sender<GatewayFrame>,
    inbound: Streaming<BridgeFrame>,
}

async fn attach(client: &mut BridgeClient<tonic::transport::Channel>) -> anyhow::Result<Attached> {
    let (frames, rx) = mpsc::channel(64);
    let inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Attached { frames, inbound })
}

impl Attached {
    async fn send(&self, kind: Out) -> anyhow::Result<()> {
        self.frames.send(GatewayFrame { kind: Some(kind) }).await.context("stream closed")
    }

    async fn next(&mut self) -> anyhow::Result<Kind> {
        let frame = tokio::time::timeout(Duration::from_secs(10), self.inbound.message())
            .await
            .context("no frame in time")??
            .context("stream ended")?;
        frame.kind.context("empty frame")
    }

    async fn publish(&self, request_id: u64, room: &str, text: &str, cid: &str) -> anyhow::Result<()> {
        let publish = Publish {
            request_id,
            room: room.to_owned(),
            user: "alice".to_owned(),
            text: text.to_owned(),
            cid: cid.to_owned(),
            traceparent: String::new(),
        };
        self.send(Out::Publish(publish)).await
    }
}

#[tokio::test]
async fn publishes_are_acked_streamed_replayed_and_stored_once() -> anyhow::Result<()> {
    let bridge = start_bridge(1).await?;
    let mut client = BridgeClient::connect(format!("http://{}", bridge.addr)).await?;
    let room = testkit::unique("grpc");
    let mut gateway = attach(&mut client).await?;
    gateway.send(Out::Subscribe(Subscribe { room: room.clone(), after_id: None })).await?;
    assert!(matches!(gateway.next().await?, Kind::Subscribed(s) if s.room == room));

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

    let history = client
        .history(HistoryRequest { room: room.clone(), after_id: ids[0] - 1, up_to_id: ids[1] })
        .await?
        .into_inner()
        .messages;
    assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    let tail = client.history(HistoryRequest { room: room.clone(), after_id: ids[0], up_to_id: ids[1] }).await?;
    assert_eq!(tail.into_inner().messages.len(), 1, "after_id is exclusive");

    // A second gateway subscribing after the first id gets exactly the rest.
    let mut late = attach(&mut client).await?;
    late.send(Out::Subscribe(Subscribe { room: room.clone(), after_id: Some(ids[0]) })).await?;
    assert!(matches!(late.next().await?, Kind::Subscribed(_)));
    assert!(matches!(late.next().await?, Kind::Message(m) if m.id == ids[1]));

    let bad = client.history(HistoryRequest { room: "Bad Room".into(), after_id: 0, up_to_id: 5 }).await;
    assert_eq!(bad.expect_err("refused").code(), tonic::Code::InvalidArgument);
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
