//! The bridge's metrics, named in one place. Every name starts with
//! `warren_bridge_` and ends with its unit; labels hold only small fixed sets.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Describes every metric, so that `/metrics` carries help text and units.
pub fn describe() {
    describe_gauge!("warren_bridge_gateway_streams_open", "Gateway streams attached now.");
    describe_gauge!("warren_bridge_subscriptions", "Room subscriptions of attached gateways.");
    describe_counter!("warren_bridge_publishes_total", "Publishes acked to gateways.");
    describe_counter!(
        "warren_bridge_subscriptions_refused_total",
        "Room subscriptions answered with SubscribeFailed (their partition cannot be read)."
    );
    describe_counter!("warren_bridge_publish_failures_total", "Publishes answered with an error, by reason.");
    describe_histogram!("warren_bridge_confirm_seconds", Unit::Seconds, "From a publish to its broker confirm and id.");
    describe_histogram!(
        "warren_bridge_consumer_lag_seconds",
        Unit::Seconds,
        "From a message's timestamp to its forwarding to a gateway."
    );
    describe_counter!("warren_bridge_replay_reads_total", "History reads served.");
    describe_counter!("warren_bridge_replay_messages_total", "Messages returned by history reads.");
    describe_gauge!("warren_bridge_amqp_connected", "1 while the broker connection is up.");
    describe_gauge!("warren_bridge_amqp_blocked", "1 while the broker blocks publishing (a memory or disk alarm).");
    describe_gauge!("warren_bridge_partition_attached", "1 while a partition's reader is attached, by partition.");
    describe_gauge!(
        "warren_bridge_partition_caught_up",
        "1 once a partition was read up to where it ended at start-up, by partition."
    );
    describe_gauge!("warren_bridge_indexed_rooms", "Rooms with retained messages, by partition.");
    describe_counter!(
        "warren_bridge_history_reads_total",
        "History reads, by source: the rooms' index in memory, or a partition scan."
    );
    describe_counter!("warren_bridge_amqp_reconnects_total", "Broker connections opened after the first.");
    zero_series();
}

/// A gateway stream opened (`true`) or closed.
pub fn gateway_stream(open: bool) {
    gauge!("warren_bridge_gateway_streams_open").increment(if open { 1.0 } else { -1.0 });
}

/// A room subscription started (`true`) or ended.
pub fn subscription(active: bool) {
    gauge!("warren_bridge_subscriptions").increment(if active { 1.0 } else { -1.0 });
}

/// A publish was answered after `elapsed`: with an id, or an error code.
pub fn published(elapsed: Duration, failure: Option<&'static str>) {
    match failure {
        None => {
            counter!("warren_bridge_publishes_total").increment(1);
            histogram!("warren_bridge_confirm_seconds").record(elapsed.as_secs_f64());
        }
        Some(reason) => counter!("warren_bridge_publish_failures_total", "reason" => reason).increment(1),
    }
}

/// A message was forwarded `age` after its timestamp.
pub fn forwarded(age: Duration) {
    histogram!("warren_bridge_consumer_lag_seconds").record(age.as_secs_f64());
}

/// A history read returned `messages`.
pub fn replayed(messages: usize) {
    counter!("warren_bridge_replay_reads_total").increment(1);
    counter!("warren_bridge_replay_messages_total").increment(u64::try_from(messages).unwrap_or(u64::MAX));
}

/// The broker connection came up (`reconnect`: not the first) or went down.
pub fn amqp_connected(connected: bool, reconnect: bool) {
    gauge!("warren_bridge_amqp_connected").set(if connected { 1.0 } else { 0.0 });
    if connected && reconnect {
        counter!("warren_bridge_amqp_reconnects_total").increment(1);
    }
}

/// A partition's reader read up to where the partition ended at start-up.
pub fn partition_caught_up(partition: u16) {
    gauge!("warren_bridge_partition_caught_up", "partition" => partition.to_string()).set(1.0);
}

/// A partition's index now holds `rooms` rooms.
pub fn indexed_rooms(partition: u16, rooms: usize) {
    #[allow(clippy::cast_precision_loss)]
    gauge!("warren_bridge_indexed_rooms", "partition" => partition.to_string()).set(rooms as f64);
}

/// A history read was answered from the index (`index`) or by a scan.
pub fn history_read(source: &'static str) {
    counter!("warren_bridge_history_reads_total", "source" => source).increment(1);
}

/// The broker blocks publishing (`true`) or accepts it again.
pub fn amqp_blocked(blocked: bool) {
    gauge!("warren_bridge_amqp_blocked").set(if blocked { 1.0 } else { 0.0 });
}

/// A partition's reader attached (`true`) or detached.
pub fn partition_attached(partition: u16, attached: bool) {
    gauge!("warren_bridge_partition_attached", "partition" => partition.to_string()).set(if attached {
        1.0
    } else {
        0.0
    });
}

/// A subscription was refused (its partition cannot be read).
pub fn subscription_refused() {
    counter!("warren_bridge_subscriptions_refused_total").increment(1);
}

/// Exports every counter a dashboard or alert reads at 0, for its known label
/// values, before its first event: `rate()` and `increase()` need a sample
/// before the event to see it, so the first failure after a start counts.
fn zero_series() {
    for name in [
        "warren_bridge_publishes_total",
        "warren_bridge_replay_reads_total",
        "warren_bridge_replay_messages_total",
        "warren_bridge_amqp_reconnects_total",
        "warren_bridge_subscriptions_refused_total",
    ] {
        counter!(name).increment(0);
    }
    for reason in ["unavailable", "timeout", "rejected"] {
        counter!("warren_bridge_publish_failures_total", "reason" => reason).increment(0);
    }
    for source in ["index", "scan"] {
        counter!("warren_bridge_history_reads_total", "source" => source).increment(0);
    }
}
