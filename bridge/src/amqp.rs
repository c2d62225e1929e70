//! The bridge's one AMQP connection, kept alive across broker restarts.
//!
//! lapin does not reconnect by itself: after the broker restarts it is left
//! with a dead connection. [`Broker::run`] owns the connection's life: it
//! connects with backoff, publishes the live [`Link`] on a watch channel,
//! notices when it dies and starts over. Everything else asks for the current
//! link and fails fast (a retryable error) while there is none.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use ops::backoff::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::BridgeError;
use crate::retention::{self, Retention};
use crate::room::{self, Entry, Outgoing, Start};

/// How many unacknowledged deliveries one stream consumer may hold. RabbitMQ
/// refuses stream consumers without a prefetch.
const PREFETCH: u16 = 256;

/// Where the broker is and how to reach it: the URL of each of its nodes
/// (one, or the nodes of a cluster) and, for `amqps://`, what to trust and
/// what to show. Its `Debug` shows neither the URLs (they hold the password)
/// nor the client key.
#[derive(Clone)]
pub struct Endpoint {
    urls: Arc<[String]>,
    /// The node to try first: the last one that took a connection.
    preferred: Arc<AtomicUsize>,
    tls: OwnedTLSConfig,
}

/// The broker, as seen by the rest of the bridge.
#[derive(Debug)]
pub struct Broker {
    endpoint: Endpoint,
    retention: Retention,
    link: watch::Sender<Option<Arc<Link>>>,
}

/// One live AMQP connection and its publishing channel.
#[derive(Debug)]
pub struct Link {
    connection: Connection,
    publisher: Channel,
    /// Where declares connect to (see [`Link::declare`]).
    endpoint: Endpoint,
    retention: Retention,
    /// Partitions whose stream queue was declared on this connection.
    declared: Mutex<HashSet<u16>>,
    /// While the broker blocks publishing (a memory or disk alarm): why.
    blocked: Mutex<Option<String>>,
}

// === impl Endpoint ===

impl Endpoint {
    /// The broker at `urls` (the nodes of one cluster, in the order to try
    /// them); over TLS with `files` when they are `amqps://`.
    ///
    /// lapin loads the system's roots itself (rustls-native-certs) and adds
    /// the PEM it is given to them, so it is given the extra CA file's
    /// certificates alone: the bridge trusts the system's and those.
    ///
    /// # Errors
    /// When the TLS files are unusable.
    pub fn new(urls: Vec<String>, files: &platform::tls::Files) -> Result<Self, platform::tls::TlsError> {
        let first = urls.first().cloned().unwrap_or_default();
        let (urls, preferred) = (Arc::from(urls), Arc::new(AtomicUsize::new(0)));
        let Some(tls) = platform::tls::for_url(&first, files)? else {
            if !files.is_empty() {
                tracing::warn!("--tls-* files given but the AMQP URL is not amqps://: they are not used");
            }
            return Ok(Self { urls, preferred, tls: OwnedTLSConfig::default() });
        };
        for problem in tls.problems() {
            tracing::warn!(%problem, "system certificate store");
        }
        tracing::info!(trust = %tls, "broker over TLS");
        let identity = tls.identity().map(|identity| OwnedIdentity::PKCS8 {
            pem: identity.cert_pem().to_vec(),
            key: identity.key_pem().to_vec(),
        });
        Ok(Self { urls, preferred, tls: OwnedTLSConfig { identity, cert_chain: tls.extra_pem() } })
    }

    /// A connection to the first node that takes one, starting with the one
    /// that took the last: a crashed node costs one refused attempt.
    async fn connect(&self) -> Result<Connection, lapin::Error> {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut failure = None;
        for offset in 0..self.urls.len() {
            let node = (start + offset) % self.urls.len();
            match self.connect_to(&self.urls[node]).await {
                Ok(connection) => {
                    if node != start {
                        tracing::info!(node, "connected to another broker node");
                    }
                    self.preferred.store(node, Ordering::Relaxed);
                    return Ok(connection);
                }
                Err(error) => {
                    if self.urls.len() > 1 {
                        tracing::warn!(node, %error, "broker node unreachable; trying the next");
                    }
                    failure = Some(error);
                }
            }
        }
        Err(failure
            .unwrap_or(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed))))
    }

    async fn connect_to(&self, url: &str) -> Result<Connection, lapin::Error> {
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_with_config(url, ConnectionProperties::default(), self.tls.clone(), runtime).await
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("nodes", &self.urls.len())
            .field("tls", &self.urls.first().is_some_and(|url| platform::tls::is_tls_url(url)))
            .field("extra_roots", &self.tls.cert_chain.is_some())
            .field("client_certificate", &self.tls.identity.is_some())
            .finish_non_exhaustive()
    }
}

// === impl Broker ===

impl Broker {
    /// A broker that is not connected yet; [`Broker::run`] connects it.
    pub fn new(endpoint: Endpoint, retention: Retention) -> Arc<Self> {
        let (link, _) = watch::channel(None);
        Arc::new(Self { endpoint, retention, link })
    }

    /// Keeps a connection up until `shutdown`, then closes it.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut connected_before = false;
        while !shutdown.is_cancelled() {
            match Link::open(&self.endpoint, self.retention.clone()).await {
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

    /// Why the broker blocks publishing, while it does (readiness).
    pub fn blocked(&self) -> Option<String> {
        self.link.borrow().as_ref().and_then(|link| link.blocked())
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
    async fn open(endpoint: &Endpoint, retention: Retention) -> Result<Self, lapin::Error> {
        let connection = endpoint.connect().await?;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            connection,
            publisher,
            endpoint: endpoint.clone(),
            retention,
            declared: Mutex::new(HashSet::new()),
            blocked: Mutex::new(None),
        })
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
                    Some(lapin::Event::ConnectionBlocked(reason)) => self.set_blocked(Some(reason)),
                    Some(lapin::Event::ConnectionUnblocked) => self.set_blocked(None),
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

    /// The broker blocks (`Some(reason)`, e.g. a memory or disk alarm) or
    /// unblocks publishing on this connection. Reading goes on meanwhile.
    fn set_blocked(&self, reason: Option<String>) {
        match &reason {
            Some(reason) => {
                tracing::warn!(%reason, "the broker blocks publishing (a resource alarm): sends are refused")
            }
            None => tracing::info!("the broker accepts publishing again"),
        }
        crate::metrics::amqp_blocked(reason.is_some());
        *self.blocked.lock().unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// Why the broker blocks publishing, while it does.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Declares a partition's stream queue once per connection: an existing
    /// one is used as it is, a missing one is created with this bridge's
    /// retention ([`retention::declare_partition`]), on connections of its
    /// own, so that a declare the broker refuses never touches this one.
    async fn declare(&self, partition: u16) -> Result<(), BridgeError> {
        if self.declared.lock().unwrap_or_else(PoisonError::into_inner).contains(&partition) {
            return Ok(());
        }
        let connect = || self.endpoint.connect();
        retention::declare_partition(connect, room::queue_name(partition), &self.retention).await?;
        self.declared.lock().unwrap_or_else(PoisonError::into_inner).insert(partition);
        Ok(())
    }

    /// Publishes one message to its room's partition and waits for the
    /// broker's confirm.
    pub async fn publish(&self, partition: u16, message: &Outgoing<'_>) -> Result<(), BridgeError> {
        self.publish_raw(partition, message.text.as_bytes(), message.properties()).await
    }

    /// Publishes a catch-up marker carrying `token` to a partition.
    pub async fn publish_marker(&self, partition: u16, token: &str) -> Result<(), BridgeError> {
        self.publish_raw(partition, b"", room::marker_properties(token)).await
    }

    async fn publish_raw(
        &self,
        partition: u16,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), BridgeError> {
        self.declare(partition).await?;
        let queue = room::queue_name(partition);
        let confirm = self
            .publisher
            .basic_publish("".into(), queue, BasicPublishOptions::default(), body, properties)
            .await?
            .await?;
        if confirm.is_ack() { Ok(()) } else { Err(BridgeError::Nacked) }
    }

    /// Opens a consumer on a partition on a channel of its own, so that
    /// cancelling it (dropping the channel) touches nothing else.
    pub async fn consume(&self, partition: u16, start: Start) -> Result<PartitionConsumer, BridgeError> {
        self.declare(partition).await?;
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), start.to_offset_arg());
        let queue = room::queue_name(partition);
        let consumer = channel.basic_consume(queue, "".into(), BasicConsumeOptions::default(), arguments).await?;
        Ok(PartitionConsumer { partition, channel, consumer })
    }
}

/// A consumer of one partition. Dropping it closes its channel.
#[derive(Debug)]
pub struct PartitionConsumer {
    partition: u16,
    channel: Channel,
    consumer: Consumer,
}

impl PartitionConsumer {
    /// The next entry and its id, acknowledged to the broker so that more
    /// flow; `None` when the consumer or its connection ended.
    pub async fn next(&mut self) -> Option<Result<(u64, Entry), BridgeError>> {
        loop {
            let delivery = match self.consumer.next().await? {
                Ok(delivery) => delivery,
                Err(error) => return Some(Err(error.into())),
            };
            let entry = room::decode(&delivery);
            if let Err(error) = delivery.ack(lapin::options::BasicAckOptions::default()).await {
                return Some(Err(error.into()));
            }
            match entry {
                Some(entry) => return Some(Ok(entry)),
                None => tracing::warn!(partition = self.partition, "skipped a stream entry without an offset"),
            }
        }
    }

    /// Closes the consumer's channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}
