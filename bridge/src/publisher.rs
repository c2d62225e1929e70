//! Publishing with an answer: a message is acknowledged to the gateway only
//! once the broker confirmed it, and with its id.
//!
//! A publisher confirm says "stored" but not "at which offset". So for every
//! room it publishes to, the bridge keeps a [`Watch`]: a consumer on the room's
//! stream that recognises the bridge's own messages by their token and hands
//! their ids to the waiting publishes. The same watch remembers the recent
//! (user, cid) pairs it has seen, which makes a repeated cid cost nothing: it
//! is answered with the first message's id and not stored again.
//!
//! A repeat can reach a bridge that has not seen the first send (the first
//! bridge died before it could answer). So a watch starts reading
//! [`DEDUP_WINDOW`] back in time, and when it reads the bridge's own message
//! it answers with the id of the *first* message under that (user, cid), if
//! there was one: the client gets the id it would have got, and the stored
//! repeat is dropped by the gateways, which skip a (user, cid) they have seen.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::Broker;
use crate::error::BridgeError;
use crate::room::{Outgoing, Start};

/// How many recent (user, cid) pairs a room remembers for de-duplication.
const REMEMBERED_CIDS: usize = 10_000;
/// How far back a new watch reads, to learn the sends it must not repeat.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// Who sent a message and under which client id: the de-duplication key.
type SendKey = (String, String);

/// Publishes messages and learns their ids.
#[derive(Debug)]
pub struct Publisher {
    broker: Arc<Broker>,
    timeout: Duration,
    watches: Mutex<HashMap<String, Arc<Watch>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// One room's view of its own stream, for acks and de-duplication.
#[derive(Debug, Default)]
struct Watch {
    state: Mutex<WatchState>,
    /// Set once the consumer is attached; publishes wait for it so that their
    /// message cannot slip past before the watch reads.
    attached: tokio::sync::Notify,
    is_attached: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct WatchState {
    /// Publishes waiting to learn their id, by token.
    pending: HashMap<String, oneshot::Sender<u64>>,
    /// Sends in flight, so a concurrent repeat waits for the first.
    in_flight: HashMap<SendKey, Vec<oneshot::Sender<Result<u64, String>>>>,
    /// Recently seen sends and their ids, oldest first in `order`.
    seen: HashMap<SendKey, u64>,
    order: VecDeque<SendKey>,
    /// The last id the watch has read.
    last_id: Option<u64>,
}

/// What a publish request carries.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Room name.
    pub room: String,
    /// Sender, from the session.
    pub user: String,
    /// Text.
    pub text: String,
    /// The client's id for this send.
    pub cid: String,
    /// W3C trace context to store with the message (may be empty).
    pub traceparent: String,
}

impl Publisher {
    /// A publisher over `broker`; its room watches run on `tracker`.
    pub fn new(broker: Arc<Broker>, timeout: Duration, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self { broker, timeout, watches: Mutex::new(HashMap::new()), tracker, shutdown }
    }

    /// Publishes once per (room, user, cid) and returns the message's id.
    ///
    /// # Errors
    /// `Unavailable`/`Amqp` while the broker is away, `Timeout` when the
    /// confirm or the id does not come in time, `Nacked` when refused.
    pub async fn publish(&self, request: &PublishRequest) -> Result<u64, BridgeError> {
        let watch = self.watch(&request.room);
        // Without a broker connection the watch cannot attach: answer at once
        // with the retryable `Unavailable` (the client sends again), not with
        // a `Timeout` after the whole publish timeout. The watch is started
        // first so that it is reading by the time the client resends.
        self.broker.link()?;
        tokio::time::timeout(self.timeout, watch.wait_attached()).await.map_err(|_| BridgeError::Timeout)?;
        let key = (request.user.clone(), request.cid.clone());
        let token = random_token();
        let (id_tx, id_rx) = oneshot::channel();
        let repeat = {
            let mut state = watch.lock();
            if let Some(&id) = state.seen.get(&key) {
                return Ok(id);
            }
            if let Some(waiters) = state.in_flight.get_mut(&key) {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Some(rx)
            } else {
                state.in_flight.insert(key.clone(), Vec::new());
                state.pending.insert(token.clone(), id_tx);
                None
            }
        };
        if let Some(first) = repeat {
            return match first.await {
                Ok(Ok(id)) => Ok(id),
                _ => Err(BridgeError::Unavailable),
            };
        }
        let result = self.store(request, &token, id_rx).await;
        let mut state = watch.lock();
        state.pending.remove(&token);
        for waiter in state.in_flight.remove(&key).unwrap_or_default() {
            let _ = waiter.send(result.as_ref().map(|id| *id).map_err(ToString::to_string));
        }
        result
    }

    async fn store(
        &self,
        request: &PublishRequest,
        token: &str,
        id: oneshot::Receiver<u64>,
    ) -> Result<u64, BridgeError> {
        let link = self.broker.link()?;
        let outgoing = Outgoing {
            user: &request.user,
            text: &request.text,
            cid: &request.cid,
            token,
            traceparent: &request.traceparent,
        };
        let stored = async {
            link.publish(&request.room, &outgoing).await?;
            id.await.map_err(|_| BridgeError::Unavailable)
        };
        tokio::time::timeout(self.timeout, stored).await.map_err(|_| BridgeError::Timeout)?
    }

    /// The room's watch, started on first use.
    fn watch(&self, room: &str) -> Arc<Watch> {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watch) = watches.get(room) {
            return watch.clone();
        }
        let watch = Arc::new(Watch::default());
        watches.insert(room.to_owned(), watch.clone());
        let (broker, room, shutdown) = (self.broker.clone(), room.to_owned(), self.shutdown.clone());
        let task_watch = watch.clone();
        self.tracker.spawn(async move { task_watch.run(&broker, &room, &shutdown).await });
        watch
    }
}

// === impl Watch ===

impl Watch {
    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn wait_attached(&self) {
        loop {
            let notified = self.attached.notified();
            if self.is_attached.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Reads the room's stream for as long as the bridge runs, reattaching
    /// after the last id it read whenever the connection comes back.
    async fn run(&self, broker: &Broker, room: &str, shutdown: &CancellationToken) {
        while let Some(link) = broker.next_link(shutdown).await {
            let start = self.lock().last_id.map_or_else(dedup_start, Start::After);
            let mut consumer = match link.consume(room, start).await {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(%room, %error, "cannot watch room");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.is_attached.store(true, std::sync::atomic::Ordering::Release);
            self.attached.notify_waiters();
            loop {
                tokio::select! {
                    next = consumer.next() => match next {
                        Some(Ok(stored)) => self.observe(stored),
                        Some(Err(error)) => {
                            tracing::warn!(%room, %error, "room watch failed");
                            break;
                        }
                        None => break,
                    },
                    () = shutdown.cancelled() => {
                        consumer.close().await;
                        return;
                    }
                }
            }
            self.is_attached.store(false, std::sync::atomic::Ordering::Release);
        }
    }

    fn observe(&self, stored: crate::room::Stored) {
        let mut state = self.lock();
        let id = stored.message.id;
        state.last_id = Some(id);
        let key = (stored.message.user, stored.message.cid);
        let first = state.seen.get(&key).copied();
        if let Some(waiter) = state.pending.remove(&stored.token) {
            let _ = waiter.send(first.unwrap_or(id));
        }
        if first.is_some() {
            return;
        }
        state.seen.insert(key.clone(), id);
        state.order.push_back(key);
        while state.order.len() > REMEMBERED_CIDS {
            if let Some(oldest) = state.order.pop_front() {
                state.seen.remove(&oldest);
            }
        }
    }
}

/// Where a new watch starts: [`DEDUP_WINDOW`] ago.
fn dedup_start() -> Start {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Start::Since(now.saturating_sub(DEDUP_WINDOW).as_secs())
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
