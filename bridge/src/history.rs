//! History reads: from the rooms' indexes when they hold the range, else by
//! scanning the partition, one scan for identical reads that arrive together.
//!
//! A join's tail and a short resume are answered from memory. A resume older
//! than the index reaches scans the partition from the requested id on,
//! keeping the room's messages; scans are few at a time (each takes a
//! channel) and identical ones share one read (a crowd resuming after the
//! same outage asks the same range).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use proto::warren::v1::{HistoryReply, HistoryRequest, Message};
use tokio::sync::Semaphore;

use crate::amqp::Broker;
use crate::error::BridgeError;
use crate::log::Range;
use crate::metrics;
use crate::partition::{Partition, Partitions};
use crate::room::{Entry, Start};

/// The most messages one reply carries.
const PAGE: usize = 1000;
/// How long a scan may read before it answers with what it covered.
const SCAN_TIME: Duration = Duration::from_secs(5);
/// Scans running at once (each holds an AMQP channel).
const SCANS: usize = 16;

/// A scan's key: (room, after, up to).
type ScanKey = (String, u64, u64);
type ScanResult = Result<Range, Arc<BridgeError>>;

/// Answers `History` requests.
#[derive(Debug)]
pub struct History {
    broker: Arc<Broker>,
    partitions: Arc<Partitions>,
    scans: Arc<Semaphore>,
    running: Arc<Mutex<HashMap<ScanKey, Shared<BoxFuture<'static, ScanResult>>>>>,
}

impl History {
    /// History over these partitions.
    pub fn new(broker: Arc<Broker>, partitions: Arc<Partitions>) -> Self {
        Self { broker, partitions, scans: Arc::new(Semaphore::new(SCANS)), running: Arc::default() }
    }

    /// Reads ids `(after_id, up_to_id]` of a room, at most one page (or the
    /// newest `newest` of them).
    ///
    /// # Errors
    /// `BadRoom`, or a scan that failed or read nothing in time.
    pub async fn read(&self, request: &HistoryRequest) -> Result<HistoryReply, BridgeError> {
        if !proto::rules::is_valid_room(&request.room) {
            return Err(BridgeError::BadRoom);
        }
        let partition = self.partitions.of(&request.room);
        let (after, up_to) = (request.after_id, request.up_to_id);
        if up_to <= after {
            return Ok(HistoryReply { messages: Vec::new(), covered_to: up_to });
        }
        let newest = usize::try_from(request.newest).unwrap_or(usize::MAX);
        let (from_memory, covered_from, position) = partition.with_room(&request.room, |log, position| match log {
            None => (Some(Range::default()), 0, position),
            Some(log) if newest > 0 => {
                let messages = log.newest(after, up_to, newest);
                let enough = messages.len() >= newest || log.covered_from() <= after;
                (enough.then_some(Range { messages, covered_to: up_to }), log.covered_from(), position)
            }
            Some(log) => (log.range(after, up_to, PAGE), log.covered_from(), position),
        });
        let range = match from_memory {
            Some(mut range) => {
                metrics::history_read("index");
                // Ids this bridge has not read yet are not covered.
                range.covered_to = range.covered_to.min(position.max(after));
                range
            }
            None => {
                metrics::history_read("scan");
                let mut range = self.scan(partition, &request.room, after, up_to.min(covered_from)).await?;
                if newest > 0 {
                    let skip = range.messages.len().saturating_sub(newest);
                    range.messages.drain(..skip);
                }
                range
            }
        };
        metrics::replayed(range.messages.len());
        Ok(HistoryReply { messages: range.messages, covered_to: range.covered_to })
    }

    /// Scans a partition for a room's ids in `(after, up_to]`, sharing the
    /// read with identical scans in flight.
    async fn scan(&self, partition: &Partition, room: &str, after: u64, up_to: u64) -> Result<Range, BridgeError> {
        let key = (room.to_owned(), after, up_to);
        let shared = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            running
                .entry(key.clone())
                .or_insert_with(|| {
                    let (broker, scans, running) = (self.broker.clone(), self.scans.clone(), self.running.clone());
                    let (number, key) = (partition.number(), key.clone());
                    async move {
                        let result = match scans.acquire_owned().await {
                            Ok(_permit) => scan_partition(&broker, number, &key).await.map_err(Arc::new),
                            Err(_) => Err(Arc::new(BridgeError::Unavailable)),
                        };
                        running.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        shared.await.map_err(|error| match &*error {
            BridgeError::BadRoom => BridgeError::BadRoom,
            BridgeError::Timeout => BridgeError::Timeout,
            _ => BridgeError::Unavailable,
        })
    }
}

/// Reads a partition from `after` until `up_to` (or [`PAGE`] messages, or
/// [`SCAN_TIME`]), keeping one room's messages.
async fn scan_partition(broker: &Broker, partition: u16, (room, after, up_to): &ScanKey) -> Result<Range, BridgeError> {
    let mut consumer = broker.link()?.consume(partition, Start::After(*after)).await?;
    let mut range = Range { messages: Vec::new(), covered_to: *after };
    let read = async {
        while let Some(next) = consumer.next().await {
            let (id, entry) = next?;
            if id > *up_to {
                range.covered_to = *up_to;
                break;
            }
            range.covered_to = id;
            if let Entry::Message(stored) = entry
                && stored.message.room == *room
            {
                let mut message = stored.message;
                message.prev_id = range.messages.last().map_or(*after, |m: &Message| m.id);
                range.messages.push(message);
                if range.messages.len() >= PAGE || id == *up_to {
                    break;
                }
            } else if id == *up_to {
                break;
            }
        }
        Ok::<_, BridgeError>(())
    };
    let timed_out = match tokio::time::timeout(SCAN_TIME, read).await {
        Ok(result) => {
            result?;
            false
        }
        Err(_) => true,
    };
    consumer.close().await;
    // A scan that covered nothing is an error, never an empty answer: the
    // gateway would take the range as empty.
    if timed_out && range.covered_to == *after {
        return Err(BridgeError::Timeout);
    }
    Ok(range)
}
