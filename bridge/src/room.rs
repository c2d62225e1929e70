//! A room on the broker: one RabbitMQ stream queue, named after the room.
//!
//! A stream keeps every message for the retention window and gives each one an
//! offset. Offsets only grow and are nearly dense (one is skipped at some
//! segment boundaries), so a message's id is its offset plus one (id 0 then means "nothing yet", and `since: 0` replays everything).
//! The message body is the text; who sent it and when travel in headers, so the
//! stream stays readable in RabbitMQ's own tools.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use proto::warren::v1::Message;

/// Where a new consumer starts reading a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the newest stored chunk (its messages, then live ones).
    Newest,
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
            Self::Newest => AMQPValue::LongString("last".into()),
            // id = offset + 1, so the first id after `id` is at offset `id`.
            Self::After(id) => AMQPValue::LongLongInt(i64::try_from(id).unwrap_or(i64::MAX)),
            Self::Since(seconds) => AMQPValue::Timestamp(seconds),
        }
    }
}

/// Retention settings for every room's stream, from the command line.
#[derive(Debug, Clone)]
pub struct Retention {
    /// `x-max-age`, e.g. `7D`.
    pub max_age: String,
    /// `x-max-length-bytes`.
    pub max_bytes: u64,
    /// `x-stream-max-segment-size-bytes`.
    pub segment_bytes: u64,
}

impl Retention {
    /// The queue arguments that make a room's queue a stream with this retention.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
        arguments.insert("x-max-age".into(), AMQPValue::LongString(self.max_age.as_str().into()));
        arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(saturating_i64(self.max_bytes)));
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(saturating_i64(self.segment_bytes)),
        );
        arguments
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The stream queue that holds a room.
pub fn queue_name(room: &str) -> ShortString {
    format!("warren.room.{room}").into()
}

/// Whether `room` is a room name gateways may use: `[a-z0-9_-]{1,64}`.
pub fn is_valid_name(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A message about to be published.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
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

/// A message read back from a room's stream.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The message as gateways see it.
    pub message: Message,
    /// The publish token, to match a pending publish.
    pub token: String,
}

/// Reads a delivery from a room's stream. `None` when it lacks the offset
/// header (not a stream delivery) and so cannot be given an id.
pub fn decode(room: &str, delivery: &Delivery) -> Option<Stored> {
    let headers = delivery.properties.headers().as_ref()?.inner();
    let offset = headers.get("x-stream-offset").and_then(as_i64)?;
    let text_of = |key: &str| match headers.get(key) {
        Some(AMQPValue::LongString(value)) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(value)) => value.as_str().to_owned(),
        _ => String::new(),
    };
    let message = Message {
        room: room.to_owned(),
        id: u64::try_from(offset).ok()?.checked_add(1)?,
        user: text_of("user"),
        text: String::from_utf8_lossy(&delivery.data).into_owned(),
        ts: headers.get("ts").and_then(as_i64).unwrap_or_default(),
        cid: text_of("cid"),
        traceparent: text_of("traceparent"),
    };
    let token = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default();
    Some(Stored { message, token })
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
    fn room_names() {
        assert!(is_valid_name("lobby"));
        assert!(is_valid_name("a-b_c-9"));
        assert!(is_valid_name(&"x".repeat(64)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(!is_valid_name("Lobby"));
        assert!(!is_valid_name("lob.by"));
    }

    #[test]
    fn start_maps_ids_to_offsets() {
        assert_eq!(Start::After(41).to_offset_arg(), AMQPValue::LongLongInt(41));
        assert_eq!(Start::Newest.to_offset_arg(), AMQPValue::LongString("last".into()));
    }
}
