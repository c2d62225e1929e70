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
//! 404, the client opens a new stream; on a Redis Cluster the channel is
//! sharded and the count `SPUBLISH`'s, see [`Subscriptions::subscribe`]);
//! and the user is part of the name, so a token posted under another login
//! reaches nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::mailbox::{CloseReason, Mailbox};
use crate::redis_client::SharedConnection;
use crate::subscriptions::{Listener, SubscribeError, Subscriptions};

/// Frames posted to one stream and not yet acted on; a client that posts
/// more without waiting for its answers is closed like a flooder.
pub const INBOX_FRAMES: usize = 256;

/// How long closing a stream waits for Redis to confirm its unsubscription.
const UNSUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What every stream's channel starts with.
const CHANNEL_PREFIX: &str = "warren:sse:";

/// The channel of one stream.
pub fn channel(user: &str, token: &str) -> String {
    format!("{CHANNEL_PREFIX}{user}:{token}")
}

/// Why a stream could not be reached or registered.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Redis did not answer.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The subscription is being re-established.
    #[error("the stream relay is reconnecting to Redis")]
    Reconnecting,
}

impl From<SubscribeError> for RelayError {
    fn from(error: SubscribeError) -> Self {
        match error {
            SubscribeError::Redis(error) => Self::Redis(error),
            SubscribeError::Reconnecting => Self::Reconnecting,
        }
    }
}

/// The streams this gateway holds; their channels are subscribed to on
/// the gateway's one subscription connection ([`Subscriptions`]).
#[derive(Debug)]
pub struct Relay {
    subscriptions: Arc<Subscriptions>,
    redis: SharedConnection,
    /// Each stream's inbox and mailbox, by channel (one allocation of the
    /// name per stream, shared with the stream and the subscriptions).
    streams: Mutex<HashMap<Arc<str>, Open>>,
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
    /// A relay that subscribes through `subscriptions` (add it there as a
    /// listener) and publishes on `redis`.
    pub fn new(subscriptions: Arc<Subscriptions>, redis: SharedConnection) -> Self {
        Self { subscriptions, redis, streams: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Open>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a stream and subscribes to its channel; the frames posted
    /// to it arrive in the inbox, in the order they were posted.
    ///
    /// # Errors
    /// When the subscription is down or Redis refuses it.
    pub async fn open(&self, channel: &Arc<str>, mailbox: Mailbox) -> Result<Arc<Inbox>, RelayError> {
        let inbox = Arc::new(Inbox::default());
        self.lock().insert(channel.clone(), Open { inbox: inbox.clone(), mailbox });
        if let Err(error) = self.subscriptions.subscribe(channel).await {
            self.lock().remove(&**channel);
            return Err(error.into());
        }
        Ok(inbox)
    }

    /// Forgets a stream and unsubscribes from its channel; once this
    /// returns, a post to the stream finds no gateway (unless Redis did not
    /// confirm within [`UNSUBSCRIBE_WAIT`]: then it is dropped here, and
    /// the subscription goes with the next reconnection).
    pub async fn close(&self, channel: &str) {
        self.lock().remove(channel);
        let _ = tokio::time::timeout(UNSUBSCRIBE_WAIT, self.subscriptions.unsubscribe(channel)).await;
    }

    /// Posts a frame to a stream; `false` when no gateway holds it.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn post(&self, channel: &str, frame: &str) -> Result<bool, RelayError> {
        let mut connection = self.redis.clone();
        let receivers: i64 = self.subscriptions.publish_to_one(channel, frame).query_async(&mut connection).await?;
        Ok(receivers > 0)
    }

    /// Hands a posted frame to its stream; a stream whose inbox is full is
    /// closed (its client posts without waiting for answers).
    fn deliver(&self, channel: &str, frame: String) {
        let streams = self.lock();
        let Some(open) = streams.get(channel) else { return };
        if !open.inbox.push(frame) {
            open.mailbox.close(CloseReason::ABUSE);
        }
    }
}

impl Listener for Relay {
    fn hears(&self, channel: &str) -> bool {
        channel.starts_with(CHANNEL_PREFIX)
    }

    fn heard(&self, channel: &str, payload: String) {
        self.deliver(channel, payload);
    }
}
