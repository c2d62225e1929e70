//! The gRPC service the gateways attach to.
//!
//! Each gateway holds one `Attach` stream. For every room it subscribes to,
//! the bridge runs a [`forward_room`] task with its own stream consumer, so a
//! gateway's rooms are independent and each is gap-free: the consumer starts
//! after the last id the gateway has, and if the broker connection drops it
//! reattaches after the last id it forwarded.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use proto::warren::v1::bridge_frame::Kind as Out;
use proto::warren::v1::bridge_server::Bridge;
use proto::warren::v1::gateway_frame::Kind as In;
use proto::warren::v1::{
    BridgeFrame, Draining, GatewayFrame, HistoryReply, HistoryRequest, Publish, PublishAck, Subscribed,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::amqp::Broker;
use crate::error::BridgeError;
use crate::metrics;
use crate::publisher::{PublishRequest, Publisher};
use crate::room::{self, Start};

/// Frames buffered towards one gateway before the room consumers wait.
const GATEWAY_BUFFER: usize = 1024;
/// The most messages one `History` reply carries.
const HISTORY_PAGE: usize = 1000;
/// How long a `History` read may take.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `warren.v1.Bridge` service.
#[derive(Debug, Clone)]
pub struct BridgeService {
    broker: Arc<Broker>,
    publisher: Arc<Publisher>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl BridgeService {
    /// The service over a broker and a publisher; its tasks run on `tracker`
    /// and stop with `shutdown`.
    pub fn new(
        broker: Arc<Broker>,
        publisher: Arc<Publisher>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self { broker, publisher, tracker, shutdown }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<BridgeFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Bridge for BridgeService {
    type AttachStream = FrameStream;

    async fn attach(&self, request: Request<Streaming<GatewayFrame>>) -> Result<Response<FrameStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(GATEWAY_BUFFER);
        let session = GatewaySession {
            service: self.clone(),
            tx,
            rooms: HashMap::new(),
            // Per-stream token: cancelling it stops this gateway's room tasks.
            stream_token: self.shutdown.child_token(),
        };
        tracing::info!(?peer, "gateway attached");
        metrics::gateway_stream(true);
        self.tracker.spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as FrameStream))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        let request = request.into_inner();
        if !room::is_valid_name(&request.room) {
            return Err(BridgeError::BadRoom.into());
        }
        let messages = read_history(&self.broker, &request).await?;
        metrics::replayed(messages.len());
        Ok(Response::new(HistoryReply { messages }))
    }
}

/// Reads ids `(after_id, up_to_id]`, at most one page.
async fn read_history(
    broker: &Broker,
    request: &HistoryRequest,
) -> Result<Vec<proto::warren::v1::Message>, BridgeError> {
    let mut messages = Vec::new();
    if request.up_to_id <= request.after_id {
        return Ok(messages);
    }
    let mut consumer = broker.link()?.consume(&request.room, Start::After(request.after_id)).await?;
    let read = async {
        while let Some(next) = consumer.next().await {
            let message = next?.message;
            if message.id > request.up_to_id {
                break;
            }
            let last = message.id == request.up_to_id;
            messages.push(message);
            if last || messages.len() >= HISTORY_PAGE {
                break;
            }
        }
        Ok::<_, BridgeError>(())
    };
    // A timeout returns what was read, and the caller asks again after the
    // last id. A timeout before anything was read is an error, never an
    // empty page: an empty page means "no message in this range", and the
    // gateway would skip the range.
    let timed_out = match tokio::time::timeout(HISTORY_TIMEOUT, read).await {
        Ok(result) => {
            result?;
            false
        }
        Err(_) => true,
    };
    consumer.close().await;
    if timed_out && messages.is_empty() {
        return Err(BridgeError::Timeout);
    }
    Ok(messages)
}

/// One attached gateway.
struct GatewaySession {
    service: BridgeService,
    tx: mpsc::Sender<Result<BridgeFrame, Status>>,
    rooms: HashMap<String, CancellationToken>,
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
                () = self.service.shutdown.cancelled() => {
                    // Tell the gateway to move to another bridge; it closes
                    // the stream from its side once it has.
                    let _ = self.tx.send(Ok(frame(Out::Draining(Draining {})))).await;
                    break;
                }
                () = self.tx.closed() => break,
            }
        }
        self.stream_token.cancel();
        metrics::gateway_stream(false);
        tracing::info!("gateway detached");
    }

    fn handle(&mut self, kind: In) {
        match kind {
            In::Subscribe(subscribe) => {
                let start = subscribe.after_id.map_or(Start::Newest, Start::After);
                if let Some(previous) = self.rooms.remove(&subscribe.room) {
                    previous.cancel();
                }
                let token = self.stream_token.child_token();
                self.rooms.insert(subscribe.room.clone(), token.clone());
                let (broker, tx) = (self.service.broker.clone(), self.tx.clone());
                self.service.tracker.spawn(forward_room(broker, subscribe.room, start, tx, token));
            }
            In::Unsubscribe(unsubscribe) => {
                if let Some(token) = self.rooms.remove(&unsubscribe.room) {
                    token.cancel();
                }
            }
            In::Publish(publish) => {
                let (publisher, tx) = (self.service.publisher.clone(), self.tx.clone());
                self.service.tracker.spawn(answer_publish(publisher, publish, tx));
            }
        }
    }
}

async fn answer_publish(publisher: Arc<Publisher>, publish: Publish, tx: mpsc::Sender<Result<BridgeFrame, Status>>) {
    let span = tracing::info_span!("bridge.publish");
    ops::telemetry::parent_from(&span, &publish.traceparent);
    let request_id = publish.request_id;
    let request = PublishRequest {
        room: publish.room,
        user: publish.user,
        text: publish.text,
        cid: publish.cid,
        traceparent: ops::telemetry::traceparent_of(&span),
    };
    tracing::Instrument::instrument(answer(publisher, request_id, request, tx), span).await;
}

async fn answer(
    publisher: Arc<Publisher>,
    request_id: u64,
    request: PublishRequest,
    tx: mpsc::Sender<Result<BridgeFrame, Status>>,
) {
    let started = std::time::Instant::now();
    let answer = match publisher.publish(&request).await {
        Ok(id) => {
            metrics::published(started.elapsed(), None);
            Out::Ack(PublishAck { request_id, id })
        }
        Err(error) => {
            tracing::warn!(room = %request.room, %error, "publish failed");
            metrics::published(started.elapsed(), Some(error.code()));
            Out::Error(error.to_publish_error(request_id))
        }
    };
    let _ = tx.send(Ok(frame(answer))).await;
}

/// Streams one room to one gateway until cancelled or the gateway goes away.
async fn forward_room(
    broker: Arc<Broker>,
    room: String,
    mut start: Start,
    tx: mpsc::Sender<Result<BridgeFrame, Status>>,
    token: CancellationToken,
) {
    let mut announced = false;
    metrics::subscription(true);
    let _ended = scopeguard_subscription();
    while let Some(link) = broker.next_link(&token).await {
        let mut consumer = match link.consume(&room, start).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(%room, %error, "cannot subscribe");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    () = token.cancelled() => return,
                }
            }
        };
        if !announced {
            announced = true;
            let subscribed = Out::Subscribed(Subscribed { room: room.clone() });
            if tx.send(Ok(frame(subscribed))).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                () = token.cancelled() => {
                    consumer.close().await;
                    return;
                }
            };
            match next {
                Some(Ok(stored)) => {
                    start = Start::After(stored.message.id);
                    metrics::forwarded(age_of(stored.message.ts));
                    let message = traced_forward(stored.message);
                    if tx.send(Ok(frame(Out::Message(message)))).await.is_err() {
                        return;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%room, %error, "room consumer failed; reattaching");
                    break;
                }
                None => break,
            }
        }
    }
}

/// For a traced message: a forwarding span, child of the publish, whose
/// context the message carries on to the gateway.
fn traced_forward(mut message: proto::warren::v1::Message) -> proto::warren::v1::Message {
    if !message.traceparent.is_empty() {
        let span = tracing::info_span!("bridge.forward", id = message.id);
        ops::telemetry::parent_from(&span, &message.traceparent);
        message.traceparent = ops::telemetry::traceparent_of(&span);
    }
    message
}

/// Counts a subscription as ended when the forwarding task ends, however it
/// ends.
fn scopeguard_subscription() -> impl Drop {
    struct Ended;
    impl Drop for Ended {
        fn drop(&mut self) {
            metrics::subscription(false);
        }
    }
    Ended
}

/// How long ago a timestamp (ms since the Unix epoch) was.
fn age_of(ts_millis: i64) -> Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(Duration::from_millis(u64::try_from(ts_millis).unwrap_or_default()))
}

fn frame(kind: Out) -> BridgeFrame {
    BridgeFrame { kind: Some(kind) }
}
