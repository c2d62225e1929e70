//! The gRPC service the gateways attach to.
//!
//! Each gateway holds one `Attach` stream. Its subscriptions are routes in
//! the rooms' partitions (see [`crate::partition`]): no broker resource is
//! taken per room or per gateway, and a subscription holds as soon as its
//! `Subscribed` is queued. A gateway that cannot keep up is cut off and
//! attaches again, resuming each room from its last id.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use proto::warren::v1::bridge_frame::Kind as Out;
use proto::warren::v1::bridge_server::Bridge;
use proto::warren::v1::gateway_frame::Kind as In;
use proto::warren::v1::{Draining, GatewayFrame, HistoryReply, HistoryRequest, Publish, PublishAck};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::history::History;
use crate::metrics;
use crate::partition::{self, GatewayId, GatewayTx, Partitions, Route, frame};
use crate::publisher::Publisher;

/// Frames buffered towards one gateway; a gateway that falls this far
/// behind is cut off rather than holding up the partitions.
const GATEWAY_BUFFER: usize = 16 * 1024;

/// The `warren.v1.Bridge` service.
#[derive(Debug, Clone)]
pub struct BridgeService {
    partitions: Arc<Partitions>,
    publisher: Arc<Publisher>,
    history: Arc<History>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl BridgeService {
    /// The service over the partitions, a publisher and history; its tasks
    /// run on `tracker` and stop with `shutdown`.
    pub fn new(
        partitions: Arc<Partitions>,
        publisher: Arc<Publisher>,
        history: Arc<History>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self { partitions, publisher, history, tracker, shutdown }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<proto::warren::v1::BridgeFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Bridge for BridgeService {
    type AttachStream = FrameStream;

    async fn attach(&self, request: Request<Streaming<GatewayFrame>>) -> Result<Response<FrameStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(GATEWAY_BUFFER);
        let session = GatewaySession {
            service: self.clone(),
            id: partition::next_gateway_id(),
            tx,
            rooms: HashSet::new(),
            // Cancelled on shutdown, or when the gateway falls behind.
            stream_token: self.shutdown.child_token(),
        };
        tracing::info!(?peer, "gateway attached");
        metrics::gateway_stream(true);
        self.tracker.spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as FrameStream))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        Ok(Response::new(self.history.read(&request.into_inner()).await?))
    }
}

/// One attached gateway.
struct GatewaySession {
    service: BridgeService,
    id: GatewayId,
    tx: GatewayTx,
    rooms: HashSet<String>,
    stream_token: CancellationToken,
}

impl GatewaySession {
    async fn run(mut self, mut inbound: Streaming<GatewayFrame>) {
        loop {
            tokio::select! {
                frame = inbound.message() => match frame {
                    Ok(Some(GatewayFrame { kind: Some(kind) })) => self.handle(kind),
                    Ok(Some(GatewayFrame { kind: None })) => {}
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "gateway stream ended");
                        break;
                    }
                },
                () = self.stream_token.cancelled() => {
                    if self.service.shutdown.is_cancelled() {
                        // Tell the gateway to move to another bridge; it
                        // closes the stream from its side once it has.
                        let _ = self.tx.send(Ok(frame(Out::Draining(Draining {})))).await;
                    } else {
                        tracing::warn!("gateway fell behind; ending its stream so that it resumes");
                    }
                    break;
                }
                () = self.tx.closed() => break,
            }
        }
        for room in self.rooms.drain() {
            self.service.partitions.of(&room).unsubscribe(&room, self.id);
        }
        metrics::gateway_stream(false);
        tracing::info!("gateway detached");
    }

    fn handle(&mut self, kind: In) {
        match kind {
            In::Subscribe(subscribe) => {
                if !proto::rules::is_valid_room(&subscribe.room) {
                    tracing::warn!(room = %subscribe.room, "refused a subscription to an invalid room name");
                    return;
                }
                let route = Route { tx: self.tx.clone(), overflow: self.stream_token.clone() };
                self.service.partitions.of(&subscribe.room).subscribe(&subscribe.room, self.id, route);
                self.rooms.insert(subscribe.room);
            }
            In::Unsubscribe(unsubscribe) => {
                if self.rooms.remove(&unsubscribe.room) {
                    self.service.partitions.of(&unsubscribe.room).unsubscribe(&unsubscribe.room, self.id);
                }
            }
            In::Publish(publish) => {
                let (publisher, tx) = (self.service.publisher.clone(), self.tx.clone());
                self.service.tracker.spawn(answer_publish(publisher, publish, tx));
            }
        }
    }
}

/// Publishes and sends the gateway its answer, in a span that continues the
/// gateway's trace.
async fn answer_publish(publisher: Arc<Publisher>, publish: Publish, tx: GatewayTx) {
    let span = tracing::info_span!("bridge.publish");
    ops::telemetry::parent_from(&span, &publish.traceparent);
    let traceparent = ops::telemetry::traceparent_of(&span);
    let answer = async {
        let started = std::time::Instant::now();
        let request_id = publish.request_id;
        let answer = match publisher.publish(&publish, &traceparent).await {
            Ok(id) => {
                metrics::published(started.elapsed(), None);
                Out::Ack(PublishAck { request_id, id })
            }
            Err(error) => {
                tracing::warn!(room = %publish.room, %error, "publish failed");
                metrics::published(started.elapsed(), Some(error.code()));
                Out::Error(error.to_publish_error(request_id))
            }
        };
        let _ = tx.send(Ok(frame(answer))).await;
    };
    tracing::Instrument::instrument(answer, span).await;
}
