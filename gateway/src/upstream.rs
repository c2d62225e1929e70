//! The gateway's link to the bridges: one `Attach` stream to one bridge at a
//! time, moved to the next bridge in the list when it fails or drains.
//!
//! On every new stream the gateway subscribes its rooms again; each
//! `Subscribed` names the room's newest id, and the hub fills what its
//! members missed meanwhile and drops anything seen twice. Publishes are correlated by a request id; those in flight when
//! a stream breaks fail with a retryable error and the client resends the same
//! cid (the bridge de-duplicates it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use ops::backoff::Backoff;
use proto::warren::v1::bridge_client::BridgeClient;
use proto::warren::v1::bridge_frame::Kind as In;
use proto::warren::v1::gateway_frame::Kind as Out;
use proto::warren::v1::{GatewayFrame, HistoryRequest, Publish, Subscribe, Unsubscribe};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::link::{Bridge, HistoryError, HistoryPage, HistoryResult, Refusal, Rooms};

/// Frames queued towards the bridge before publishes are refused.
const OUTBOUND_BUFFER: usize = 4096;
/// How long a publish waits for the bridge's answer.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a gateway moving between bridges still counts as ready: a bridge
/// that drains must not take every gateway on it out of the balancer.
const MOVE_GRACE: Duration = Duration::from_secs(5);

/// A publish that did not get an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PublishFailure {
    /// Protocol error code (`unavailable`, `timeout`, ...).
    pub code: String,
    /// For people.
    pub message: String,
}

impl PublishFailure {
    fn unavailable(message: &str) -> Self {
        Self { code: "unavailable".to_owned(), message: message.to_owned() }
    }
}

/// The gateway's side of the bridge contract.
#[derive(Debug)]
pub struct Upstream {
    bridges: Vec<String>,
    state: Mutex<State>,
    next_request: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The current stream's sender and unary client, while attached.
    link: Option<Link>,
    /// Publishes waiting for their answer, by request id.
    pending: HashMap<u64, oneshot::Sender<Result<u64, PublishFailure>>>,
    /// When the last stream ended; `None` before the first one.
    detached_at: Option<std::time::Instant>,
}

#[derive(Debug, Clone)]
struct Link {
    frames: mpsc::Sender<GatewayFrame>,
    client: BridgeClient<Channel>,
}

impl Upstream {
    /// An upstream over these bridge URLs, not attached yet.
    pub fn new(bridges: Vec<String>) -> Arc<Self> {
        Arc::new(Self { bridges, state: Mutex::new(State::default()), next_request: AtomicU64::new(1) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a bridge stream is up.
    pub fn is_attached(&self) -> bool {
        self.lock().link.is_some()
    }

    /// Readiness: attached, or moving between bridges for less than
    /// [`MOVE_GRACE`]. Before the first stream the gateway is not ready.
    ///
    /// # Errors
    /// The reason the gateway should not get traffic.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        match (&state.link, state.detached_at) {
            (Some(_), _) => Ok(()),
            (None, None) => Err("no bridge attached yet".to_owned()),
            (None, Some(at)) if at.elapsed() < MOVE_GRACE => Ok(()),
            (None, Some(at)) => Err(format!("no bridge attached for {}s", at.elapsed().as_secs())),
        }
    }

    fn send(&self, kind: Out) -> bool {
        let Some(link) = self.lock().link.clone() else { return false };
        link.frames.try_send(GatewayFrame { kind: Some(kind) }).is_ok()
    }

    /// Publishes and waits for the message's id.
    ///
    /// # Errors
    /// A [`PublishFailure`]; every failure here is worth retrying.
    pub async fn publish(
        &self,
        room: &str,
        user: &str,
        text: &str,
        cid: &str,
        traceparent: String,
    ) -> Result<u64, PublishFailure> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(request_id, tx);
        let publish = Publish {
            request_id,
            room: room.to_owned(),
            user: user.to_owned(),
            text: text.to_owned(),
            cid: cid.to_owned(),
            traceparent,
        };
        if !self.send(Out::Publish(publish)) {
            self.lock().pending.remove(&request_id);
            return Err(PublishFailure::unavailable("no bridge is connected; retry"));
        }
        let answer = tokio::time::timeout(PUBLISH_TIMEOUT, rx).await;
        self.lock().pending.remove(&request_id);
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishFailure::unavailable("the bridge connection was lost; retry")),
            Err(_) => Err(PublishFailure {
                code: "timeout".to_owned(),
                message: "no answer from the bridge; retry".to_owned(),
            }),
        }
    }

    /// Keeps a stream to some bridge until `shutdown`, feeding `hub`.
    pub async fn run(self: Arc<Self>, hub: Weak<dyn Rooms>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Always start with the first bridge: operators spread gateways over
        // bridges by the order of each gateway's list (or one Service URL).
        for url in self.bridges.iter().cycle() {
            if shutdown.is_cancelled() {
                break;
            }
            match self.attach(url, &hub, &shutdown).await {
                Ok(()) => backoff.reset(),
                Err(error) => tracing::warn!(bridge = %url, error = %with_causes(&error), "bridge stream failed"),
            }
            self.detach();
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.detach();
    }

    /// One stream's life: connect, resubscribe, read until it ends.
    async fn attach(
        &self,
        url: &str,
        hub: &Weak<dyn Rooms>,
        shutdown: &CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let mut client = BridgeClient::new(channel);
        let (frames, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::warn!(bridge = %url, %status, "bridge refused the stream");
                return Ok(());
            }
        };
        let reconnect = {
            let mut state = self.lock();
            state.link = Some(Link { frames, client });
            state.detached_at.is_some()
        };
        crate::metrics::bridge_attached(true, reconnect);
        tracing::info!(bridge = %url, "attached to bridge");
        if let Some(hub) = hub.upgrade() {
            for room in hub.rooms() {
                Bridge::subscribe(self, &room);
            }
        }
        loop {
            let frame = tokio::select! {
                frame = inbound.message() => frame,
                () = shutdown.cancelled() => return Ok(()),
            };
            let kind = match frame {
                Ok(Some(frame)) => frame.kind,
                Ok(None) => return Ok(()),
                Err(status) => {
                    tracing::warn!(bridge = %url, %status, "bridge stream broke");
                    return Ok(());
                }
            };
            match kind {
                Some(In::Message(message)) => {
                    if let Some(hub) = hub.upgrade() {
                        hub.deliver(&message);
                    }
                }
                Some(In::Ack(ack)) => self.answer(ack.request_id, Ok(ack.id)),
                Some(In::Error(error)) => {
                    let failure = PublishFailure { code: error.code, message: error.message };
                    self.answer(error.request_id, Err(failure));
                }
                Some(In::Draining(_)) => {
                    tracing::info!(bridge = %url, "bridge is draining; moving");
                    return Ok(());
                }
                Some(In::Subscribed(subscribed)) => {
                    if let Some(hub) = hub.upgrade() {
                        hub.subscribed(&subscribed.room, subscribed.last_id);
                    }
                }
                Some(In::SubscribeFailed(failed)) => {
                    tracing::warn!(bridge = %url, room = %failed.room, reason = %failed.message, "subscription refused");
                    if let Some(hub) = hub.upgrade() {
                        let refusal =
                            Refusal { code: failed.code, message: failed.message, retryable: failed.retryable };
                        hub.subscribe_failed(&failed.room, refusal);
                    }
                }
                None => {}
            }
        }
    }

    fn answer(&self, request_id: u64, result: Result<u64, PublishFailure>) {
        if let Some(waiter) = self.lock().pending.remove(&request_id) {
            let _ = waiter.send(result);
        }
    }

    /// Drops the stream and fails every publish waiting on it.
    fn detach(&self) {
        let mut state = self.lock();
        if state.link.take().is_some() {
            state.detached_at = Some(std::time::Instant::now());
            crate::metrics::bridge_attached(false, false);
        }
        for (_, waiter) in state.pending.drain() {
            let _ = waiter.send(Err(PublishFailure::unavailable("the bridge connection was lost; retry")));
        }
    }
}

// === impl Bridge for Upstream ===

impl Bridge for Upstream {
    fn subscribe(&self, room: &str) {
        self.send(Out::Subscribe(Subscribe { room: room.to_owned() }));
    }

    fn unsubscribe(&self, room: &str) {
        self.send(Out::Unsubscribe(Unsubscribe { room: room.to_owned() }));
    }

    fn history(&self, room: &str, after: u64, up_to: u64, newest: u32) -> BoxFuture<'static, HistoryResult> {
        let client = self.lock().link.as_ref().map(|link| link.client.clone());
        let request = HistoryRequest { room: room.to_owned(), after_id: after, up_to_id: up_to, newest };
        async move {
            let mut client = client.ok_or(HistoryError::Disconnected)?;
            let reply = client.history(request).await?.into_inner();
            Ok(HistoryPage { messages: reply.messages, covered_to: reply.covered_to })
        }
        .boxed()
    }
}

/// An error followed by its causes (`a: b: c`): a tonic transport error says
/// only "transport error" and keeps why (refused, timed out) in its sources.
/// A cause worded as the one before it (hyper nests those) is said once.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if said != last {
            text.push_str(": ");
            text.push_str(&said);
            last = said;
        }
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        cause: Option<Box<Layer>>,
    }

    fn layer(text: &'static str, cause: Option<Layer>) -> Layer {
        Layer { text, cause: cause.map(Box::new) }
    }

    #[test]
    fn causes_follow_the_error_once_each() {
        let refused = layer("connection refused", None);
        let error =
            layer("transport error", Some(layer("tcp connect error", Some(layer("tcp connect error", Some(refused))))));
        assert_eq!(with_causes(&error), "transport error: tcp connect error: connection refused");
        assert_eq!(with_causes(&layer("alone", None)), "alone");
    }
}
