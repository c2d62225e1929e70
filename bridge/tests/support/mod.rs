//! What the bridge's tests share: a gateway's side of the `Attach` stream,
//! spoken by hand, and readiness polling.
// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use proto::warren::v1::bridge_client::BridgeClient;
use proto::warren::v1::bridge_frame::Kind;
use proto::warren::v1::gateway_frame::Kind as Out;
use proto::warren::v1::{BridgeFrame, GatewayFrame, Publish, Subscribe};
use testkit::http::Client;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// One `Attach` stream, as a gateway holds it.
pub struct Attached {
    frames: mpsc::Sender<GatewayFrame>,
    inbound: Streaming<BridgeFrame>,
}

impl Attached {
    /// Attaches to the bridge at `addr`.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut client = BridgeClient::connect(format!("http://{addr}")).await?;
        Self::on(&mut client).await
    }

    /// Attaches over an existing client.
    pub async fn on(client: &mut BridgeClient<tonic::transport::Channel>) -> anyhow::Result<Self> {
        let (frames, rx) = mpsc::channel(8192);
        let inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { frames, inbound })
    }

    /// Sends one frame.
    pub async fn send(&self, kind: Out) -> anyhow::Result<()> {
        self.frames.send(GatewayFrame { kind: Some(kind) }).await.context("stream closed")
    }

    /// Subscribes to a room.
    pub async fn subscribe(&self, room: &str) -> anyhow::Result<()> {
        self.send(Out::Subscribe(Subscribe { room: room.to_owned() })).await
    }

    /// Publishes `text` from alice under `cid`.
    pub async fn publish(&self, request_id: u64, room: &str, text: &str, cid: &str) -> anyhow::Result<()> {
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

    /// The next frame from the bridge (at most 20 s away).
    pub async fn next(&mut self) -> anyhow::Result<Kind> {
        let frame = tokio::time::timeout(Duration::from_secs(20), self.inbound.message())
            .await
            .context("no frame in time")??
            .context("stream ended")?;
        frame.kind.context("empty frame")
    }
}

/// Polls the bridge's `/readyz` until its body says `reason` (at most 20 s)
/// and checks that it is a 503.
pub async fn not_ready_saying(admin: &mut Client, reason: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = admin.get("/readyz").await?;
        let body = String::from_utf8_lossy(&ready.body).into_owned();
        if body.contains(reason) {
            anyhow::ensure!(ready.status == http::StatusCode::SERVICE_UNAVAILABLE, "ready, yet: {body}");
            return Ok(body);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "readiness never said {reason:?}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
