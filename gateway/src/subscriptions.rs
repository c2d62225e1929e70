//! The gateway's one Redis pub/sub connection. Logouts and disconnects
//! ([`crate::logins`]), presence changes ([`crate::presence`]) and the posts
//! to event streams ([`crate::sse::relay`]) all arrive on it, each handed to
//! the [`Listener`] that hears its channel, in the order Redis sent them.
//!
//! When the connection breaks it is made again with backoff (on the master
//! of the moment: see [`Redis`]), every channel is subscribed again, and
//! each listener is told ([`Listener::resubscribed`]) before any message, so
//! that it can catch up on what it missed meanwhile.
//!
//! Two reaches of channel ([`Reach`]): the fixed channels every gateway
//! hears, and the channels of one subscriber (an event stream's), which on
//! a Redis Cluster are sharded: `SSUBSCRIBE`d on the node that owns the
//! channel's slot, and published to with `SPUBLISH`, whose count of
//! receivers is then the whole cluster's (a plain `PUBLISH` counts only the
//! subscribers of the node that runs it). On one node both are plain
//! channels. On a cluster the connection is redis-rs' cluster connection,
//! which would resubscribe by itself after losing a node; any lost node
//! is treated as a broken connection instead, so that the listeners catch up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use ops::backoff::Backoff;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::{PushKind, RedisError, Value};
use tokio_util::sync::CancellationToken;

use crate::redis_client::{Redis, Subscriber};

/// One kind of message the gateway hears.
pub trait Listener: Send + Sync + std::fmt::Debug {
    /// Whether a message on `channel` is this listener's.
    fn hears(&self, channel: &str) -> bool;

    /// A message on one of its channels. Called on the connection's task:
    /// it must not wait.
    fn heard(&self, channel: &str, payload: String);

    /// After each (re)subscription, before the messages that follow it:
    /// a failure breaks the connection, which is then made again.
    fn resubscribed(&self) -> BoxFuture<'_, Result<(), RedisError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Why a channel could not be subscribed to.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// Redis refused or did not answer.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The connection is being made again.
    #[error("the subscription connection is reconnecting to Redis")]
    Reconnecting,
}

/// Who hears a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every gateway (a fixed channel: logouts, presence).
    Everyone,
    /// The one gateway that subscribed (an event stream's channel): sharded
    /// on a cluster.
    One,
}

/// The command side of the live connection.
#[derive(Clone)]
enum Sink {
    Node(PubSubSink),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "Sink::Node",
            Self::Cluster(_) => "Sink::Cluster",
        })
    }
}

impl Sink {
    async fn subscribe(&mut self, channels: &[&str], reach: Reach) -> Result<(), RedisError> {
        match (self, reach) {
            (Self::Node(sink), _) => sink.subscribe(channels).await,
            (Self::Cluster(connection), Reach::Everyone) => connection.subscribe(channels).await,
            (Self::Cluster(connection), Reach::One) => {
                // One command per channel (redis-rs sends a sharded
                // subscription to the node of its first channel's slot),
                // all sent together on the multiplexed connection: after a
                // reconnection a gateway holding thousands of streams does
                // not wait a round trip for each.
                let subscriptions = channels.iter().map(|channel| {
                    let mut connection = connection.clone();
                    async move { connection.ssubscribe(*channel).await }
                });
                futures_util::future::try_join_all(subscriptions).await.map(drop)
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &str, reach: Reach) -> Result<(), RedisError> {
        match (self, reach) {
            (Self::Node(sink), _) => sink.unsubscribe(channel).await,
            (Self::Cluster(connection), Reach::Everyone) => connection.unsubscribe(channel).await,
            (Self::Cluster(connection), Reach::One) => connection.sunsubscribe(channel).await,
        }
    }
}

/// The connection, its channels and its listeners.
#[derive(Debug)]
pub struct Subscriptions {
    redis: Redis,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The live connection's command side; `None` while reconnecting.
    sink: Option<Sink>,
    /// Every channel to be subscribed to, fixed and of the moment.
    channels: HashMap<Arc<str>, Reach>,
    listeners: Vec<Arc<dyn Listener>>,
}

impl Subscriptions {
    /// Subscriptions on `redis`; nothing is connected until [`Self::run`].
    pub fn new(redis: Redis) -> Arc<Self> {
        Arc::new(Self { redis, inner: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a listener, with the channels it hears for as long as the
    /// gateway runs (more can come and go with [`Self::subscribe`]).
    pub fn add(&self, listener: Arc<dyn Listener>, channels: &[&str]) {
        let mut inner = self.lock();
        inner.channels.extend(channels.iter().map(|&channel| (Arc::from(channel), Reach::Everyone)));
        inner.listeners.push(listener);
    }

    /// Subscribes this gateway alone to `channel` now, and again after every
    /// reconnection until [`Self::unsubscribe`]; post to it with
    /// [`Self::publish_to_one`].
    ///
    /// # Errors
    /// When the connection is down or Redis refuses; the channel is not
    /// kept then.
    pub async fn subscribe(&self, channel: &Arc<str>) -> Result<(), SubscribeError> {
        let sink = {
            let mut inner = self.lock();
            // Kept before it is sent: a reconnection meanwhile subscribes it.
            inner.channels.insert(channel.clone(), Reach::One);
            inner.sink.clone()
        };
        let subscribed = match sink {
            Some(mut sink) => sink.subscribe(&[channel], Reach::One).await.map_err(SubscribeError::from),
            None => Err(SubscribeError::Reconnecting),
        };
        if subscribed.is_err() {
            self.lock().channels.remove(&**channel);
        }
        subscribed
    }

    /// Forgets `channel` and unsubscribes from it, until Redis confirms
    /// (while reconnecting, forgetting it is enough: it is not subscribed
    /// again). A failure is only logged: the connection breaks with it.
    pub async fn unsubscribe(&self, channel: &str) {
        let (sink, reach) = {
            let mut inner = self.lock();
            let reach = inner.channels.remove(channel);
            (inner.sink.clone(), reach)
        };
        if let (Some(mut sink), Some(reach)) = (sink, reach)
            && let Err(error) = sink.unsubscribe(channel, reach).await
        {
            tracing::debug!(%error, channel, "unsubscribe failed");
        }
    }

    /// The command that posts `payload` to a channel of
    /// [`Self::subscribe`]; it answers how many gateways received it.
    pub fn publish_to_one(&self, channel: &str, payload: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(if self.redis.is_cluster() { "SPUBLISH" } else { "PUBLISH" });
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// Keeps the connection up until `shutdown`, handing each message to its
    /// listener.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            match self.listen(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(error) => tracing::warn!(%error, "Redis subscription lost; subscribing again"),
            }
            self.lock().sink = None;
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.lock().sink = None;
    }

    async fn listen(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), RedisError> {
        let (mut sink, mut messages) = match self.redis.subscriber().await? {
            Subscriber::Node(pubsub) => {
                let (sink, stream) = pubsub.split();
                let messages = stream.map(|message| {
                    let payload = message.get_payload::<String>().ok();
                    Heard::Message(message.get_channel_name().to_owned(), payload)
                });
                (Sink::Node(sink), messages.boxed())
            }
            Subscriber::Cluster(connection, pushes) => {
                let heard = tokio_stream::wrappers::UnboundedReceiverStream::new(pushes).map(heard_push);
                (Sink::Cluster(connection), heard.boxed())
            }
        };
        let (channels, listeners) = {
            let mut inner = self.lock();
            inner.sink = Some(sink.clone());
            (inner.channels.clone(), inner.listeners.clone())
        };
        for reach in [Reach::Everyone, Reach::One] {
            let of_reach: Vec<&str> =
                channels.iter().filter(|(_, r)| **r == reach).map(|(channel, _)| &**channel).collect();
            if !of_reach.is_empty() {
                sink.subscribe(&of_reach, reach).await?;
            }
        }
        for listener in &listeners {
            listener.resubscribed().await?;
        }
        backoff.reset();
        loop {
            let heard = tokio::select! {
                heard = messages.next() => heard,
                () = shutdown.cancelled() => return Ok(()),
            };
            let (channel, payload) = match heard {
                Some(Heard::Message(channel, payload)) => (channel, payload),
                Some(Heard::Other) => continue,
                Some(Heard::Lost) | None => {
                    return Err(RedisError::from((redis::ErrorKind::Io, "subscription ended")));
                }
            };
            let Some(listener) = listeners.iter().find(|listener| listener.hears(&channel)) else { continue };
            if let Some(payload) = payload {
                listener.heard(&channel, payload);
            }
        }
    }
}

/// What the connection delivered.
enum Heard {
    /// A message: its channel and its payload (`None` when not text).
    Message(String, Option<String>),
    /// A connection to a node was lost: messages may have been missed.
    Lost,
    /// Anything else (a subscription's confirmation).
    Other,
}

/// A cluster connection's push, as [`Heard`].
fn heard_push(push: redis::PushInfo) -> Heard {
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let mut data = push.data.into_iter();
            match (data.next(), data.next()) {
                (Some(channel), Some(payload)) => {
                    let text = |value: Value| redis::from_redis_value::<String>(value).ok();
                    text(channel).map_or(Heard::Other, |channel| Heard::Message(channel, text(payload)))
                }
                _ => Heard::Other,
            }
        }
        PushKind::Disconnection => Heard::Lost,
        _ => Heard::Other,
    }
}
