//! The gateway's one Redis pub/sub connection. Logouts and disconnects
//! ([`crate::logins`]), presence changes ([`crate::presence`]) and the posts
//! to event streams ([`crate::sse::relay`]) all arrive on it, each handed to
//! the [`Listener`] that hears its channel, in the order Redis sent them.
//!
//! When the connection breaks it is made again with backoff (on the master
//! of the moment: see [`Redis`]), every channel is subscribed again, and
//! each listener is told ([`Listener::resubscribed`]) before any message, so
//! that it can catch up on what it missed meanwhile.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use ops::backoff::Backoff;
use redis::RedisError;
use redis::aio::PubSubSink;
use tokio_util::sync::CancellationToken;

use crate::redis_client::Redis;

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

/// The connection, its channels and its listeners.
#[derive(Debug)]
pub struct Subscriptions {
    redis: Redis,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The live connection's command side; `None` while reconnecting.
    sink: Option<PubSubSink>,
    /// Every channel to be subscribed to, fixed and of the moment.
    channels: HashSet<String>,
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
        inner.channels.extend(channels.iter().map(|&channel| channel.to_owned()));
        inner.listeners.push(listener);
    }

    /// Subscribes to `channel` now, and again after every reconnection until
    /// [`Self::unsubscribe`].
    ///
    /// # Errors
    /// When the connection is down or Redis refuses; the channel is not
    /// kept then.
    pub async fn subscribe(&self, channel: &str) -> Result<(), SubscribeError> {
        let sink = {
            let mut inner = self.lock();
            // Kept before it is sent: a reconnection meanwhile subscribes it.
            inner.channels.insert(channel.to_owned());
            inner.sink.clone()
        };
        let subscribed = match sink {
            Some(mut sink) => sink.subscribe(channel).await.map_err(SubscribeError::from),
            None => Err(SubscribeError::Reconnecting),
        };
        if subscribed.is_err() {
            self.lock().channels.remove(channel);
        }
        subscribed
    }

    /// Forgets `channel` (unsubscribing in the background: nothing waits).
    pub fn unsubscribe(&self, channel: &str) {
        let sink = {
            let mut inner = self.lock();
            inner.channels.remove(channel);
            inner.sink.clone()
        };
        if let Some(mut sink) = sink {
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let _ = sink.unsubscribe(&channel).await;
            });
        }
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
        let (mut sink, mut messages) = self.redis.subscriber().await?.split();
        let (channels, listeners) = {
            let mut inner = self.lock();
            inner.sink = Some(sink.clone());
            (inner.channels.iter().cloned().collect::<Vec<_>>(), inner.listeners.clone())
        };
        if !channels.is_empty() {
            sink.subscribe(channels).await?;
        }
        for listener in &listeners {
            listener.resubscribed().await?;
        }
        backoff.reset();
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = shutdown.cancelled() => return Ok(()),
            };
            let Some(message) = message else {
                return Err(RedisError::from((redis::ErrorKind::Io, "subscription ended")));
            };
            let channel = message.get_channel_name();
            let Some(listener) = listeners.iter().find(|listener| listener.hears(channel)) else { continue };
            if let Ok(payload) = message.get_payload::<String>() {
                listener.heard(channel, payload);
            }
        }
    }
}
