//! Publishing with an answer: a message is acknowledged to the gateway only
//! once the broker confirmed it, and with its id.
//!
//! A publisher confirm says "stored" but not "at which offset". The bridge
//! already reads every partition (see [`crate::partition`]), so a publish
//! registers its token with the room's partition and the partition's reader
//! hands over the id when the message comes by. The same reader keeps the
//! room's recent (user, cid) pairs, which makes a repeated cid cost nothing:
//! it is answered with the first message's id and not stored again. A repeat
//! that reaches the broker anyway (a send retried through another bridge
//! while the first was in flight) is recognised by every bridge's reader in
//! the same way: answered with the first id and never streamed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proto::warren::v1::Publish;
use tokio::sync::oneshot;

use crate::amqp::Broker;
use crate::error::BridgeError;
use crate::partition::{Partition, Partitions};
use crate::room::Outgoing;

/// How long a publish waits for its partition's reader to be attached.
const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// (room, user, cid): one send, wherever it is retried.
type SendId = (String, String, String);
/// Repeats waiting for the first send's answer.
type Waiters = Vec<oneshot::Sender<Result<u64, String>>>;

/// Publishes messages and learns their ids.
#[derive(Debug)]
pub struct Publisher {
    broker: Arc<Broker>,
    partitions: Arc<Partitions>,
    timeout: Duration,
    /// Sends in flight, so a concurrent repeat waits for the first.
    in_flight: Mutex<HashMap<SendId, Waiters>>,
}

impl Publisher {
    /// A publisher over `broker` whose ids come from `partitions`.
    pub fn new(broker: Arc<Broker>, partitions: Arc<Partitions>, timeout: Duration) -> Self {
        Self { broker, partitions, timeout, in_flight: Mutex::default() }
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<SendId, Waiters>> {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes once per (room, user, cid) and returns the message's id.
    ///
    /// # Errors
    /// `BadRoom` for a room name that cannot exist, `Unavailable`/`Amqp`
    /// while the broker is away, `Blocked` during its resource alarms, `Timeout` when the confirm or the id does
    /// not come in time, `Nacked` when refused.
    pub async fn publish(&self, request: &Publish, traceparent: &str) -> Result<u64, BridgeError> {
        if !proto::rules::is_valid_room(&request.room) {
            return Err(BridgeError::BadRoom);
        }
        let partition = self.partitions.of(&request.room);
        // Without a broker connection answer at once with the retryable
        // `Unavailable` (the client sends again), not with a `Timeout` after
        // the whole publish timeout.
        if let Some(reason) = self.broker.link()?.blocked() {
            return Err(BridgeError::Blocked(reason));
        }
        if !partition.wait_attached(ATTACH_WAIT).await {
            return Err(partition.trouble().unwrap_or(BridgeError::Unavailable));
        }
        let key = (request.user.clone(), request.cid.clone());
        if let Some(id) = partition.first_send(&request.room, &key) {
            return Ok(id);
        }
        let send = (request.room.clone(), request.user.clone(), request.cid.clone());
        let repeat = {
            let mut in_flight = self.in_flight();
            if let Some(waiters) = in_flight.get_mut(&send) {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Some(rx)
            } else {
                in_flight.insert(send.clone(), Vec::new());
                None
            }
        };
        if let Some(first) = repeat {
            return match first.await {
                Ok(Ok(id)) => Ok(id),
                _ => Err(BridgeError::Unavailable),
            };
        }
        let result = self.store(partition, request, traceparent).await;
        for waiter in self.in_flight().remove(&send).unwrap_or_default() {
            let _ = waiter.send(result.as_ref().map(|id| *id).map_err(ToString::to_string));
        }
        result
    }

    async fn store(&self, partition: &Partition, request: &Publish, traceparent: &str) -> Result<u64, BridgeError> {
        let link = self.broker.link()?;
        let token = random_token();
        let outgoing = Outgoing {
            room: &request.room,
            user: &request.user,
            text: &request.text,
            cid: &request.cid,
            token: &token,
            traceparent,
        };
        let id = partition.expect(&token);
        let stored = async {
            link.publish(partition.number(), &outgoing).await?;
            id.await.map_err(|_| BridgeError::Unavailable)
        };
        let result = tokio::time::timeout(self.timeout, stored).await.map_err(|_| BridgeError::Timeout);
        partition.forget(&token);
        result?
    }
}

/// 128 random bits in hex: a publish's (or a marker's) token.
pub fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
