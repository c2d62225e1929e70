//! The partitions: a fixed set of streams that hold every room, each read by
//! one consumer per bridge from its first retained entry.
//!
//! Reading a partition feeds three things, in order, under one lock per
//! partition: the room's index ([`RoomLog`]: `prev_id`, recent messages,
//! repeats), the publishes waiting to learn their id, and the gateways that
//! subscribed to the room. Because a subscription is registered under the
//! same lock, its `Subscribed` answer names exactly the last id that will
//! not be streamed: nothing falls between history and live.
//!
//! The broker's cost is therefore fixed by the number of partitions (a
//! stream each, a channel each per bridge), whatever the number of rooms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proto::warren::v1::bridge_frame::Kind as Out;
use proto::warren::v1::{BridgeFrame, Message, Subscribed};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::{Broker, Link};
use crate::error::BridgeError;
use crate::log::{Appended, RoomLog, SendKey};
use crate::metrics;
use crate::room::{Entry, Layout, Start};

/// What a gateway stream is sent.
pub type GatewayTx = mpsc::Sender<Result<BridgeFrame, tonic::Status>>;

/// Where one gateway gets a room's messages.
#[derive(Debug, Clone)]
pub struct Route {
    /// The gateway's stream.
    pub tx: GatewayTx,
    /// Cancelled when the gateway cannot keep up: its stream ends and it
    /// attaches again, resuming every room from its last id.
    pub overflow: CancellationToken,
}

/// A gateway stream's number on this bridge.
pub type GatewayId = u64;

/// Every partition of this bridge.
#[derive(Debug)]
pub struct Partitions {
    layout: Layout,
    parts: Vec<Arc<Partition>>,
}

/// One partition: its rooms' indexes, waiting publishes and routes.
#[derive(Debug)]
pub struct Partition {
    number: u16,
    state: Mutex<State>,
    /// True while the consumer is attached.
    attached: watch::Sender<bool>,
    /// Set once the consumer has read up to where the partition ended when
    /// the bridge started (its own marker).
    caught_up: AtomicBool,
    /// This bridge's marker token.
    marker: String,
    /// Why the reader last failed to attach, until it attaches.
    trouble: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct State {
    /// The last id read (0: none).
    position: u64,
    rooms: HashMap<String, RoomLog>,
    /// Publishes waiting to learn their id, by token.
    pending: HashMap<String, oneshot::Sender<u64>>,
    /// Gateways subscribed to each room.
    routes: HashMap<String, HashMap<GatewayId, Route>>,
}

/// How long a reader that has not caught up may hear nothing before it
/// attaches again.
const CATCH_UP_SILENCE: Duration = Duration::from_secs(3);

/// Counts gateway streams, to tell their routes apart.
static NEXT_GATEWAY: AtomicU64 = AtomicU64::new(1);

/// A fresh [`GatewayId`].
pub fn next_gateway_id() -> GatewayId {
    NEXT_GATEWAY.fetch_add(1, Ordering::Relaxed)
}

// === impl Partitions ===

impl Partitions {
    /// The partitions of `layout`, not read yet (see [`Partitions::run`]).
    pub fn new(layout: Layout) -> Arc<Self> {
        let parts = (0..layout.partitions()).map(|number| Arc::new(Partition::new(number))).collect();
        for number in 0..layout.partitions() {
            metrics::partition_attached(number, false);
        }
        Arc::new(Self { layout, parts })
    }

    /// Starts one consumer per partition on `tracker`, and a sweep that
    /// forgets rooms whose newest message is older than `max_age` (the
    /// configured retention: the stream has dropped them, or soon will);
    /// all stop with `shutdown`.
    pub fn run(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        max_age: Duration,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        for part in &self.parts {
            let (part, broker, shutdown) = (part.clone(), broker.clone(), shutdown.clone());
            tracker.spawn(async move { part.consume(&broker, &shutdown).await });
        }
        let (partitions, shutdown) = (self.clone(), shutdown.clone());
        tracker.spawn(async move { partitions.sweep(max_age, &shutdown).await });
    }

    /// Once a minute, drops the index of rooms past retention, so that the
    /// bridge's memory follows the rooms that have history, not every room
    /// that ever had.
    async fn sweep(&self, max_age: Duration, shutdown: &CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let cutoff = i64::try_from(now.saturating_sub(max_age).as_millis()).unwrap_or(i64::MAX);
            for part in &self.parts {
                part.forget_older_than(cutoff);
            }
        }
    }

    /// The partition that holds `room`.
    pub fn of(&self, room: &str) -> &Arc<Partition> {
        &self.parts[usize::from(self.layout.partition_of(room))]
    }

    /// How many partitions have caught up, of how many.
    pub fn caught_up(&self) -> (usize, usize) {
        let done = self.parts.iter().filter(|part| part.caught_up.load(Ordering::Acquire)).count();
        (done, self.parts.len())
    }

    /// The first partition whose reader cannot attach, and why (readiness:
    /// its rooms are down while every other partition's work).
    pub fn trouble(&self) -> Option<BridgeError> {
        self.parts.iter().find_map(|part| part.trouble())
    }
}

// === impl Partition ===

impl Partition {
    fn new(number: u16) -> Self {
        let (attached, _) = watch::channel(false);
        let marker = crate::publisher::random_token();
        Self {
            number,
            state: Mutex::default(),
            attached,
            caught_up: AtomicBool::new(false),
            marker,
            trouble: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The partition's number.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// Reads the partition for as long as the bridge runs, from its first
    /// entry, and after the last id read whenever the connection comes back.
    async fn consume(&self, broker: &Broker, shutdown: &CancellationToken) {
        while let Some(link) = broker.next_link(shutdown).await {
            let position = self.lock().position;
            let start = if position == 0 { Start::First } else { Start::After(position) };
            let mut consumer = match link.consume(self.number, start).await {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(partition = self.number, %error, "cannot read partition");
                    *self.trouble.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            };
            self.attached.send_replace(true);
            self.trouble.lock().unwrap_or_else(PoisonError::into_inner).take();
            metrics::partition_attached(self.number, true);
            // The marker is published beside the reading, never before it:
            // a broker that blocks publishing must not stop the reading.
            let mut marked = self.caught_up.load(Ordering::Acquire);
            let mut marker = std::pin::pin!(self.mark_end(&link));
            // A reader of a newly declared stream can miss what is written
            // right after it attached (seen on RabbitMQ 3.10): one that
            // hears nothing before its marker reads the partition again.
            let mut heard = tokio::time::Instant::now();
            loop {
                let silent_until = heard + CATCH_UP_SILENCE;
                tokio::select! {
                    () = &mut marker, if !marked => marked = true,
                    () = tokio::time::sleep_until(silent_until), if !self.caught_up.load(Ordering::Acquire) => {
                        tracing::warn!(partition = self.number, "no entry read before the partition's marker; reading it again");
                        consumer.close().await;
                        break;
                    }
                    next = consumer.next() => match next {
                        Some(Ok((id, entry))) => {
                            heard = tokio::time::Instant::now();
                            self.observe(id, entry);
                        }
                        Some(Err(error)) => {
                            tracing::warn!(partition = self.number, %error, "partition consumer failed; reattaching");
                            break;
                        }
                        None => break,
                    },
                    () = shutdown.cancelled() => {
                        consumer.close().await;
                        self.attached.send_replace(false);
                        return;
                    }
                }
            }
            self.attached.send_replace(false);
            metrics::partition_attached(self.number, false);
        }
    }

    /// Publishes this bridge's marker: reading up to it is reading up to
    /// where the partition ended when the bridge started.
    async fn mark_end(&self, link: &Link) {
        if let Err(error) = link.publish_marker(self.number, &self.marker).await {
            tracing::warn!(partition = self.number, %error, "cannot mark the partition's end");
        }
    }

    /// Forgets the rooms whose newest message is older than `cutoff` (ms
    /// since the Unix epoch) and that nobody subscribes to.
    fn forget_older_than(&self, cutoff: i64) {
        let mut state = self.lock();
        let State { rooms, routes, .. } = &mut *state;
        rooms.retain(|room, log| log.last_ts() >= cutoff || routes.contains_key(room));
        metrics::indexed_rooms(self.number, rooms.len());
    }

    /// Takes one entry read from the partition.
    fn observe(&self, id: u64, entry: Entry) {
        let mut state = self.lock();
        if id <= state.position {
            return; // a reattached consumer overlaps what was read
        }
        state.position = id;
        let stored = match entry {
            Entry::Message(stored) => stored,
            Entry::Marker(token) => {
                if token == self.marker && !self.caught_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(partition = self.number, rooms = state.rooms.len(), "partition caught up");
                    metrics::partition_caught_up(self.number);
                }
                return;
            }
            Entry::Other => return,
        };
        let room = stored.message.room.clone();
        // The key is allocated only for a room new to the index, not for
        // every message.
        let appended = if let Some(log) = state.rooms.get_mut(&room) {
            log.append(stored.message)
        } else {
            let appended = state.rooms.entry(room.clone()).or_default().append(stored.message);
            metrics::indexed_rooms(self.number, state.rooms.len());
            appended
        };
        let id = match &appended {
            Appended::New(message) => message.id,
            Appended::Repeat(first) => *first,
        };
        if let Some(waiter) = state.pending.remove(&stored.token) {
            let _ = waiter.send(id);
        }
        if let Appended::New(message) = appended {
            route(&mut state, &room, message);
        }
    }

    /// Why the reader cannot attach, while it cannot.
    pub fn trouble(&self) -> Option<BridgeError> {
        let why = self.trouble.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
        Some(BridgeError::Unreadable { partition: self.number, why })
    }

    /// Subscribes a gateway to a room and queues its `Subscribed`, naming
    /// the room's newest id: every later message is streamed to it. While
    /// the partition cannot be read the answer is `SubscribeFailed` instead:
    /// a room is never subscribed in silence.
    pub fn subscribe(&self, room: &str, gateway: GatewayId, route: Route) {
        if let Some(error) = self.trouble() {
            tracing::warn!(%room, %error, "refused a subscription");
            metrics::subscription_refused();
            let failed = frame(Out::SubscribeFailed(error.to_subscribe_failed(room)));
            if route.tx.try_send(Ok(failed)).is_err() {
                route.overflow.cancel();
            }
            return;
        }
        let mut state = self.lock();
        let last_id = state.rooms.get(room).map_or(0, RoomLog::last_id);
        let subscribed = frame(Out::Subscribed(Subscribed { room: room.to_owned(), last_id }));
        if route.tx.try_send(Ok(subscribed)).is_err() {
            route.overflow.cancel();
            return;
        }
        if state.routes.entry(room.to_owned()).or_default().insert(gateway, route).is_none() {
            metrics::subscription(true);
        }
    }

    /// Stops streaming a room to a gateway.
    pub fn unsubscribe(&self, room: &str, gateway: GatewayId) {
        let mut state = self.lock();
        let Some(routes) = state.routes.get_mut(room) else { return };
        if routes.remove(&gateway).is_some() {
            metrics::subscription(false);
        }
        if routes.is_empty() {
            state.routes.remove(room);
        }
    }

    /// The id of an earlier message under this (user, cid) of the room.
    pub fn first_send(&self, room: &str, key: &SendKey) -> Option<u64> {
        self.lock().rooms.get(room).and_then(|log| log.first_send(key))
    }

    /// Waits for the entry published with `token` and gives its id (or the
    /// id of the first message it repeats).
    pub fn expect(&self, token: &str) -> oneshot::Receiver<u64> {
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(token.to_owned(), tx);
        rx
    }

    /// Forgets a publish that will not be answered.
    pub fn forget(&self, token: &str) {
        self.lock().pending.remove(token);
    }

    /// Runs `read` on the room's index with the partition's position (the
    /// last id read); `None` for a room without messages.
    pub fn with_room<T>(&self, room: &str, read: impl FnOnce(Option<&RoomLog>, u64) -> T) -> T {
        let state = self.lock();
        read(state.rooms.get(room), state.position)
    }

    /// Waits until the consumer is attached; `false` after `wait`.
    pub async fn wait_attached(&self, wait: Duration) -> bool {
        let mut attached = self.attached.subscribe();
        tokio::time::timeout(wait, attached.wait_for(|up| *up)).await.is_ok_and(|seen| seen.is_ok())
    }
}

/// Streams a new message to every gateway subscribed to its room. A gateway
/// whose stream is full is cut off (it reattaches and resumes) rather than
/// holding up the partition for everybody.
fn route(state: &mut State, room: &str, message: Message) {
    let Some(routes) = state.routes.get_mut(room) else { return };
    metrics::forwarded(proto::rules::age_of(message.ts));
    let frame = frame(Out::Message(traced_forward(message)));
    routes.retain(|_, route| match route.tx.try_send(Ok(frame.clone())) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(%room, "a gateway stream is full; cutting it off so that it resumes");
            route.overflow.cancel();
            metrics::subscription(false);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            metrics::subscription(false);
            false
        }
    });
    if routes.is_empty() {
        state.routes.remove(room);
    }
}

/// For a traced message: a forwarding span, child of the publish, whose
/// context the message carries on to the gateway.
fn traced_forward(mut message: Message) -> Message {
    if !message.traceparent.is_empty() {
        let span = tracing::info_span!("bridge.forward", id = message.id);
        ops::telemetry::parent_from(&span, &message.traceparent);
        message.traceparent = ops::telemetry::traceparent_of(&span);
    }
    message
}

/// A frame for a gateway stream.
pub fn frame(kind: Out) -> BridgeFrame {
    BridgeFrame { kind: Some(kind) }
}
