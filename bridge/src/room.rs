//! A room on the broker: a fixed number of partition streams hold every room,
//! and a room's messages live in the partition its name hashes to
//! (`docs/design/rooms.md`).
//!
//! A stream keeps every message for the retention window and gives each one an
//! offset that only grows, so a message's id is its partition's offset plus
//! one (id 0 then means "nothing yet", and `since: 0` replays everything):
//! ids strictly increase within a room, with other rooms' messages in between.
//! The message body is the text; the room, who sent it and when travel in
//! headers, so the stream stays readable in RabbitMQ's own tools.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use proto::warren::v1::Message;

/// Where a new consumer starts reading a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the oldest message retained.
    First,
    /// With the first message whose id is greater than this.
    After(u64),
    /// With the first chunk stored at or after this time (seconds since the
    /// Unix epoch).
    Since(u64),
}

impl Start {
    /// The `x-stream-offset` consumer argument.
    pub fn to_offset_arg(self) -> AMQPValue {
        match self {
            Self::First => AMQPValue::LongString("first".into()),
            // id = offset + 1, so the first id after `id` is at offset `id`.
            Self::After(id) => AMQPValue::LongLongInt(i64::try_from(id).unwrap_or(i64::MAX)),
            Self::Since(seconds) => AMQPValue::Timestamp(seconds),
        }
    }
}

/// Which partitions there are: a fixed number, the same on every bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    partitions: u16,
}

impl Layout {
    /// A layout of `partitions` streams (at least one).
    pub fn new(partitions: u16) -> Self {
        Self { partitions: partitions.max(1) }
    }

    /// How many partitions there are.
    pub fn partitions(self) -> u16 {
        self.partitions
    }

    /// The partition that holds `room`: FNV-1a of the name, so that every
    /// bridge and every version agrees (std's hashers promise neither).
    pub fn partition_of(self, room: &str) -> u16 {
        let mut hash = fnv::FnvHasher::default();
        std::hash::Hasher::write(&mut hash, room.as_bytes());
        let hash = std::hash::Hasher::finish(&hash);
        u16::try_from(hash % u64::from(self.partitions)).unwrap_or_default()
    }
}

/// The stream queue of partition `number`.
pub fn queue_name(number: u16) -> ShortString {
    format!("warren.partition.{number}").into()
}

/// A message about to be published.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The room it belongs to.
    pub room: &'a str,
    /// Sender, from the session.
    pub user: &'a str,
    /// The text.
    pub text: &'a str,
    /// The client's idempotency key.
    pub cid: &'a str,
    /// Unique per publish: how the publishing bridge recognises its own
    /// message in the stream, to learn its id.
    pub token: &'a str,
    /// W3C trace context of the publish, carried in the message (empty when
    /// tracing is off).
    pub traceparent: &'a str,
}

impl Outgoing<'_> {
    /// The AMQP properties that carry everything but the text.
    pub fn properties(&self) -> BasicProperties {
        let now = now_millis();
        let mut headers = FieldTable::default();
        headers.insert("room".into(), AMQPValue::LongString(self.room.into()));
        headers.insert("user".into(), AMQPValue::LongString(self.user.into()));
        headers.insert("cid".into(), AMQPValue::LongString(self.cid.into()));
        headers.insert("ts".into(), AMQPValue::LongLongInt(now));
        if !self.traceparent.is_empty() {
            headers.insert("traceparent".into(), AMQPValue::LongString(self.traceparent.into()));
        }
        BasicProperties::default()
            .with_message_id(self.token.into())
            .with_content_type("text/plain; charset=utf-8".into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(now / 1000).unwrap_or_default())
            .with_headers(headers)
    }
}

/// The header of a bridge's catch-up marker (see `partition`): an entry
/// without a room, whose value is the bridge's token.
const MARKER_HEADER: &str = "warren-marker";

/// The AMQP properties of a catch-up marker carrying `token`.
pub fn marker_properties(token: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(MARKER_HEADER.into(), AMQPValue::LongString(token.into()));
    BasicProperties::default().with_delivery_mode(2).with_headers(headers)
}

/// An entry read back from a partition.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A chat message.
    Message(Stored),
    /// A bridge's catch-up marker, with its token.
    Marker(String),
    /// Something else (a foreign publish): it takes an id and is skipped.
    Other,
}

/// A message read back from a partition.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The message as gateways see it (`prev_id` not set yet).
    pub message: Message,
    /// The publish token, to match a pending publish.
    pub token: String,
}

/// Reads a delivery from a partition: its id and what it holds. `None` when
/// it lacks the offset header (not a stream delivery) and so has no id.
pub fn decode(delivery: &Delivery) -> Option<(u64, Entry)> {
    let headers = delivery.properties.headers().as_ref()?.inner();
    let offset = headers.get("x-stream-offset").and_then(as_i64)?;
    let id = u64::try_from(offset).ok()?.checked_add(1)?;
    let text_of = |key: &str| match headers.get(key) {
        Some(AMQPValue::LongString(value)) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(value)) => Some(value.as_str().to_owned()),
        _ => None,
    };
    if let Some(token) = text_of(MARKER_HEADER) {
        return Some((id, Entry::Marker(token)));
    }
    let Some(room) = text_of("room").filter(|room| proto::rules::is_valid_room(room)) else {
        return Some((id, Entry::Other));
    };
    let text_of = |key: &str| text_of(key).unwrap_or_default();
    let message = Message {
        room,
        id,
        prev_id: 0,
        user: text_of("user"),
        text: String::from_utf8_lossy(&delivery.data).into_owned(),
        ts: headers.get("ts").and_then(as_i64).unwrap_or_default(),
        cid: text_of("cid"),
        traceparent: text_of("traceparent"),
    };
    let token = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default();
    Some((id, Entry::Message(Stored { message, token })))
}

fn as_i64(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn now_millis() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_maps_ids_to_offsets() {
        assert_eq!(Start::After(41).to_offset_arg(), AMQPValue::LongLongInt(41));
        assert_eq!(Start::First.to_offset_arg(), AMQPValue::LongString("first".into()));
    }

    #[test]
    fn rooms_spread_over_partitions_the_same_way_everywhere() {
        let layout = Layout::new(8);
        // Fixed values: a change here moves every room to another partition.
        assert_eq!(layout.partition_of("lobby"), layout.partition_of("lobby"));
        let mut counts = [0u32; 8];
        for room in 0..8000 {
            counts[usize::from(layout.partition_of(&format!("dm-{room}")))] += 1;
        }
        assert!(counts.iter().all(|&count| (800..1200).contains(&count)), "{counts:?}");
        assert_eq!(Layout::new(1).partition_of("anything"), 0);
        assert_eq!(Layout::new(0).partitions(), 1);
    }
}
