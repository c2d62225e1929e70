//! The bridge's one AMQP connection, kept alive across broker restarts.
//!
//! lapin does not reconnect by itself: after the broker restarts it is left
//! with a dead connection. [`Broker::run`] owns the connection's life: it
//! connects with backoff, publishes the live [`Link`] on a watch channel,
//! notices when it dies and starts over. Everything else asks for the current
//! link and fails fast (a retryable error) while there is none.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use ops::backoff::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::BridgeError;
use crate::room::{self, Outgoing, Retention, Start};

/// How many unacknowledged deliveries one stream consumer may hold. RabbitMQ
/// refuses stream consumers without a prefetch.
const PREFETCH: u16 = 256;

/// The broker, as seen by the rest of the bridge.
#[derive(Debug)]
pub struct Broker {
    url: String,
    retention: Retention,
    link: watch::Sender<Option<Arc<Link>>>,
}

/// One live AMQP connection and its publishing channel.
#[derive(Debug)]
pub struct Link {
    connection: Connection,
    publisher: Channel,
    retention: Retention,
    /// Rooms whose stream queue was declared on this connection.
    declared: Mutex<HashSet<String>>,
}

// === impl Broker ===

impl Broker {
    /// A broker that is not connected yet; [`Broker::run`] connects it.
    pub fn new(url: String, retention: Retention) -> Arc<Self> {
        let (link, _) = watch::channel(None);
        Arc::new(Self { url, retention, link })
    }

    /// Keeps a connection up until `shutdown`, then closes it.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut connected_before = false;
        while !shutdown.is_cancelled() {
            match Link::open(&self.url, self.retention.clone()).await {
                Ok(link) => {
                    tracing::info!("connected to the broker");
                    crate::metrics::amqp_connected(true, connected_before);
                    connected_before = true;
                    backoff.reset();
                    let link = Arc::new(link);
                    self.link.send_replace(Some(link.clone()));
                    let lost = link.wait_lost(&shutdown).await;
                    self.link.send_replace(None);
                    crate::metrics::amqp_connected(false, false);
                    if !lost {
                        let _ = link.connection.close(200, "bridge shutting down".into()).await;
                        return;
                    }
                    tracing::warn!("lost the broker connection; reconnecting");
                }
                Err(error) => tracing::warn!(%error, "cannot connect to the broker"),
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// The live link, or `Unavailable` while reconnecting.
    pub fn link(&self) -> Result<Arc<Link>, BridgeError> {
        self.link.borrow().clone().ok_or(BridgeError::Unavailable)
    }

    /// Whether a connection is up (readiness).
    pub fn is_connected(&self) -> bool {
        self.link.borrow().is_some()
    }

    /// Waits until a link is up, or `None` on shutdown.
    pub async fn next_link(&self, shutdown: &CancellationToken) -> Option<Arc<Link>> {
        let mut updates = self.link.subscribe();
        loop {
            if let Some(link) = updates.borrow_and_update().clone() {
                return Some(link);
            }
            tokio::select! {
                changed = updates.changed() => changed.ok()?,
                () = shutdown.cancelled() => return None,
            }
        }
    }
}

// === impl Link ===

impl Link {
    async fn open(url: &str, retention: Retention) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { connection, publisher, retention, declared: Mutex::new(HashSet::new()) })
    }

    /// Resolves when the connection dies (`true`) or on shutdown (`false`).
    async fn wait_lost(&self, shutdown: &CancellationToken) -> bool {
        let mut events = self.connection.events_listener();
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(lapin::Event::Error(error)) => {
                        tracing::warn!(%error, "broker connection error");
                        return true;
                    }
                    Some(_) => {}
                    None => return true,
                },
                _ = check.tick() => if !self.connection.status().connected() {
                    return true;
                },
                () = shutdown.cancelled() => return false,
            }
        }
    }

    /// Declares the room's stream queue once per connection.
    async fn declare(&self, room: &str) -> Result<(), BridgeError> {
        if !room::is_valid_name(room) {
            return Err(BridgeError::BadRoom);
        }
        if self.declared.lock().unwrap_or_else(PoisonError::into_inner).contains(room) {
            return Ok(());
        }
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        self.publisher.queue_declare(room::queue_name(room), options, self.retention.queue_arguments()).await?;
        self.declared.lock().unwrap_or_else(PoisonError::into_inner).insert(room.to_owned());
        Ok(())
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, room: &str, message: &Outgoing<'_>) -> Result<(), BridgeError> {
        self.declare(room).await?;
        let confirm = self
            .publisher
            .basic_publish(
                "".into(),
                room::queue_name(room),
                BasicPublishOptions::default(),
                message.text.as_bytes(),
                message.properties(),
            )
            .await?
            .await?;
        if confirm.is_ack() { Ok(()) } else { Err(BridgeError::Nacked) }
    }

    /// Opens a consumer on the room's stream on a channel of its own, so that
    /// cancelling it (dropping the channel) touches nothing else.
    pub async fn consume(&self, room: &str, start: Start) -> Result<RoomConsumer, BridgeError> {
        self.declare(room).await?;
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), start.to_offset_arg());
        let consumer =
            channel.basic_consume(room::queue_name(room), "".into(), BasicConsumeOptions::default(), arguments).await?;
        Ok(RoomConsumer { room: room.to_owned(), channel, consumer })
    }
}

/// A consumer of one room's stream. Dropping it closes its channel.
#[derive(Debug)]
pub struct RoomConsumer {
    room: String,
    channel: Channel,
    consumer: Consumer,
}

impl RoomConsumer {
    /// The next stored message, acknowledged to the broker so that more flow;
    /// `None` when the consumer or its connection ended.
    pub async fn next(&mut self) -> Option<Result<room::Stored, BridgeError>> {
        loop {
            let delivery = match self.consumer.next().await? {
                Ok(delivery) => delivery,
                Err(error) => return Some(Err(error.into())),
            };
            let stored = room::decode(&self.room, &delivery);
            if let Err(error) = delivery.ack(lapin::options::BasicAckOptions::default()).await {
                return Some(Err(error.into()));
            }
            match stored {
                Some(stored) => return Some(Ok(stored)),
                None => tracing::warn!(room = %self.room, "skipped a stream entry without an offset"),
            }
        }
    }

    /// Closes the consumer's channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}
