//! How a client's POST reaches its stream, whichever gateway holds it: one
//! Redis channel per stream, `warren:sse:<user>:<token>`, that the holding
//! gateway subscribes to while the stream lives.
//!
//! Every POST is published there, even one that reached the holding gateway
//! itself. That costs one Redis call per frame (the POST's session check
//! costs one already) and buys three things a local shortcut would lose:
//! frames keep the order they were posted in when consecutive POSTs land on
//! different gateways (no affinity, a moved hash, a drain); `PUBLISH`'s count
//! of receivers says exactly whether the stream exists anywhere (0: answer
//! 404, the client opens a new stream); and the user is part of the name, so
//! a token posted under another login reaches nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use ops::backoff::Backoff;
use redis::aio::PubSubSink;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::mailbox::{CloseReason, Mailbox};
use crate::redis_client::Redis;

/// Frames posted to one stream and not yet acted on; a client that posts
/// more without waiting for its answers is closed like a flooder.
pub const INBOX_FRAMES: usize = 256;

/// The channel of one stream.
pub fn channel(user: &str, token: &str) -> String {
    format!("warren:sse:{user}:{token}")
}

/// Why a stream could not be reached or registered.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Redis did not answer.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No connection from the session pool.
    #[error("redis pool: {0}")]
    Pool(#[from] crate::redis_client::PoolError),
    /// The subscription is being re-established.
    #[error("the stream relay is reconnecting to Redis")]
    Reconnecting,
}

/// The streams this gateway holds, and its subscription to their channels.
#[derive(Debug)]
pub struct Relay {
    redis: Redis,
    pool: crate::redis_client::Pool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The live subscription's command side; `None` while reconnecting.
    sink: Option<PubSubSink>,
    /// Each stream's inbox and mailbox, by channel.
    streams: HashMap<String, Open>,
}

#[derive(Debug)]
struct Open {
    inbox: Arc<Inbox>,
    mailbox: Mailbox,
}

/// Frames posted to one stream, waiting for its task. A queue behind a
/// mutex rather than a channel, like [`Mailbox`]: an idle stream then holds
/// no queue memory (a channel allocates its first block up front).
#[derive(Debug, Default)]
pub struct Inbox {
    frames: Mutex<VecDeque<String>>,
    ready: Notify,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame; `false` when [`INBOX_FRAMES`] are waiting already.
    fn push(&self, frame: String) -> bool {
        {
            let mut frames = self.lock();
            if frames.len() >= INBOX_FRAMES {
                return false;
            }
            frames.push_back(frame);
        }
        self.ready.notify_one();
        true
    }

    /// The next posted frame, waiting for one.
    pub async fn next(&self) -> String {
        loop {
            let ready = self.ready.notified();
            {
                let mut frames = self.lock();
                if let Some(frame) = frames.pop_front() {
                    if frames.is_empty() {
                        *frames = VecDeque::new();
                    }
                    return frame;
                }
            }
            ready.await;
        }
    }
}

impl Relay {
    /// A relay that subscribes through `client` and publishes through `pool`.
    pub fn new(redis: Redis, pool: crate::redis_client::Pool) -> Self {
        Self { redis, pool, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a stream and subscribes to its channel; the frames posted
    /// to it arrive in the inbox, in the order they were posted.
    ///
    /// # Errors
    /// When the subscription is down or Redis refuses it.
    pub async fn open(&self, channel: &str, mailbox: Mailbox) -> Result<Arc<Inbox>, RelayError> {
        let inbox = Arc::new(Inbox::default());
        let sink = {
            let mut inner = self.lock();
            inner.streams.insert(channel.to_owned(), Open { inbox: inbox.clone(), mailbox });
            inner.sink.clone()
        };
        let subscribed = match sink {
            Some(mut sink) => sink.subscribe(channel).await.map_err(RelayError::from),
            None => Err(RelayError::Reconnecting),
        };
        if let Err(error) = subscribed {
            self.lock().streams.remove(channel);
            return Err(error);
        }
        Ok(inbox)
    }

    /// Forgets a stream and unsubscribes from its channel (in the
    /// background: a stream that ended waits for nothing).
    pub fn close(&self, channel: &str) {
        let sink = {
            let mut inner = self.lock();
            inner.streams.remove(channel);
            inner.sink.clone()
        };
        if let Some(mut sink) = sink {
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let _ = sink.unsubscribe(&channel).await;
            });
        }
    }

    /// Posts a frame to a stream; `false` when no gateway holds it.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn post(&self, channel: &str, frame: &str) -> Result<bool, RelayError> {
        let mut connection = self.pool.get().await?;
        let receivers: i64 = redis::cmd("PUBLISH").arg(channel).arg(frame).query_async(&mut *connection).await?;
        Ok(receivers > 0)
    }

    /// Keeps the subscription up until `shutdown`: on every (re)connection it
    /// subscribes to every stream's channel again, then hands each posted
    /// frame to its stream.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            match self.listen(&shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, "stream relay subscription lost; resubscribing"),
            }
            self.lock().sink = None;
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn listen(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), RelayError> {
        let (mut sink, mut messages) = self.redis.subscriber().await?.split();
        let channels: Vec<String> = {
            let mut inner = self.lock();
            inner.sink = Some(sink.clone());
            inner.streams.keys().cloned().collect()
        };
        if !channels.is_empty() {
            sink.subscribe(channels).await?;
        }
        backoff.reset();
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = shutdown.cancelled() => return Ok(()),
            };
            let Some(message) = message else {
                return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription ended")).into());
            };
            let Ok(frame) = message.get_payload::<String>() else { continue };
            self.deliver(message.get_channel_name(), frame);
        }
    }

    /// Hands a posted frame to its stream; a stream whose inbox is full is
    /// closed (its client posts without waiting for answers).
    fn deliver(&self, channel: &str, frame: String) {
        let inner = self.lock();
        let Some(open) = inner.streams.get(channel) else { return };
        if !open.inbox.push(frame) {
            open.mailbox.close(CloseReason::ABUSE);
        }
    }
}
