//! The gateway's metrics, named in one place. Every name starts with
//! `warren_gateway_` and ends with its unit; labels hold only small fixed
//! sets (reasons, frame types, operations), never user or room names.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::mailbox::{CloseReason, close};

/// Describes every metric, so that `/metrics` carries help text and units.
pub fn describe() {
    describe_gauge!("warren_gateway_sockets_open", "Client connections open now: WebSockets and event streams.");
    describe_gauge!("warren_gateway_max_sockets", "The most WebSockets this gateway holds (--max-sockets).");
    describe_counter!("warren_gateway_sockets_accepted_total", "WebSockets accepted.");
    describe_counter!("warren_gateway_sockets_closed_total", "WebSockets closed, by reason and close code.");
    describe_counter!("warren_gateway_handshakes_refused_total", "WebSocket upgrades refused, by reason.");
    describe_counter!("warren_gateway_frames_in_total", "Client frames received, by type.");
    describe_counter!("warren_gateway_frames_out_total", "Frames queued to clients, by type.");
    describe_counter!("warren_gateway_bytes_out_total", Unit::Bytes, "Payload bytes written to sockets.");
    describe_counter!("warren_gateway_messages_delivered_total", "Chat messages queued to sockets.");
    describe_histogram!("warren_gateway_send_ack_seconds", Unit::Seconds, "From a client's send to its ack.");
    describe_histogram!(
        "warren_gateway_delivery_latency_seconds",
        Unit::Seconds,
        "From a message's server timestamp to its fan-out on this gateway."
    );
    describe_counter!("warren_gateway_queue_overflows_total", "Sockets closed because their queue was full.");
    describe_gauge!("warren_gateway_draining", "1 while the gateway drains.");
    describe_counter!("warren_gateway_resumes_total", "Joins with `since` (resumes after a reconnect).");
    describe_counter!("warren_gateway_api_requests_total", "Server API calls, by route and status.");
    describe_counter!(
        "warren_gateway_sse_posts_total",
        "Frames posted to event streams, by result (accepted, gone, refused, unavailable)."
    );
    describe_counter!("warren_gateway_messages_replayed_total", "Messages sent to fill a member's gap.");
    describe_histogram!("warren_gateway_redis_seconds", Unit::Seconds, "Session store calls, by operation.");
    describe_counter!("warren_gateway_redis_errors_total", "Session store calls that failed.");
    describe_gauge!(
        "warren_gateway_redis_up",
        "1 while the session store (Redis) answers the gateway's pings; 0 makes /readyz answer 503."
    );
    describe_gauge!("warren_gateway_bridge_connected", "1 while a bridge stream is attached.");
    describe_counter!("warren_gateway_bridge_reconnects_total", "Bridge streams opened after the first.");
    describe_gauge!("warren_gateway_rooms", "Rooms with members on this gateway.");
    describe_counter!(
        "warren_gateway_history_requests_total",
        "History reads sent to the bridge (identical reads in flight share one)."
    );
    describe_counter!("warren_gateway_joins_refused_total", "Joins answered with an error, by code.");
    describe_gauge!("warren_gateway_presence_entries", "(room, user) presence entries this gateway holds in Redis.");
    describe_counter!("warren_gateway_presence_heartbeats_total", "Presence heartbeats sent to Redis, by result.");
    describe_counter!(
        "warren_gateway_presence_expirations_total",
        "Gateways whose presence heartbeat expired, found by this gateway's sweep."
    );
    describe_counter!(
        "warren_gateway_presence_expired_entries_total",
        "Presence entries of expired gateways removed by this gateway."
    );
    zero_series();
}

/// A socket opened.
pub fn socket_opened() {
    counter!("warren_gateway_sockets_accepted_total").increment(1);
    gauge!("warren_gateway_sockets_open").increment(1.0);
}

/// A socket closed, with the reason and the code its close frame carried.
pub fn socket_closed(reason: &'static str, code: u16) {
    gauge!("warren_gateway_sockets_open").decrement(1.0);
    counter!("warren_gateway_sockets_closed_total", "reason" => reason, "code" => code.to_string()).increment(1);
}

/// A server API call was answered.
pub fn api_request(route: &'static str, status: u16) {
    counter!("warren_gateway_api_requests_total", "route" => route, "status" => status.to_string()).increment(1);
}

/// A frame was posted to an event stream.
pub fn stream_post(result: &'static str) {
    counter!("warren_gateway_sse_posts_total", "result" => result).increment(1);
}

/// An upgrade was refused.
pub fn handshake_refused(reason: &'static str) {
    counter!("warren_gateway_handshakes_refused_total", "reason" => reason).increment(1);
}

/// A client frame of this type arrived.
pub fn frame_in(kind: &'static str) {
    counter!("warren_gateway_frames_in_total", "type" => kind).increment(1);
}

/// A frame of this type was queued to a client.
pub fn frame_out(kind: &'static str) {
    counter!("warren_gateway_frames_out_total", "type" => kind).increment(1);
}

/// Bytes written to a socket.
pub fn bytes_out(bytes: usize) {
    counter!("warren_gateway_bytes_out_total").increment(u64::try_from(bytes).unwrap_or(u64::MAX));
}

/// One message fanned out to `sockets` sockets, `age` after its timestamp.
pub fn delivered(sockets: usize, age: Duration) {
    counter!("warren_gateway_messages_delivered_total").increment(u64::try_from(sockets).unwrap_or(u64::MAX));
    counter!("warren_gateway_frames_out_total", "type" => "message").increment(u64::try_from(sockets).unwrap_or(0));
    histogram!("warren_gateway_delivery_latency_seconds").record(age.as_secs_f64());
}

/// A send was answered (ack or error) after `elapsed`.
pub fn send_answered(elapsed: Duration) {
    histogram!("warren_gateway_send_ack_seconds").record(elapsed.as_secs_f64());
}

/// A socket's queue overflowed.
pub fn queue_overflow() {
    counter!("warren_gateway_queue_overflows_total").increment(1);
}

/// The drain started (or, with false, never did).
pub fn draining(on: bool) {
    gauge!("warren_gateway_draining").set(if on { 1.0 } else { 0.0 });
}

/// A join with `since`.
pub fn resumed() {
    counter!("warren_gateway_resumes_total").increment(1);
}

/// Messages sent to fill a gap.
pub fn replayed(count: usize) {
    counter!("warren_gateway_messages_replayed_total").increment(u64::try_from(count).unwrap_or(u64::MAX));
}

/// A session store call of `operation` took `elapsed`; `ok` says whether it worked.
pub fn redis_call(operation: &'static str, elapsed: Duration, ok: bool) {
    histogram!("warren_gateway_redis_seconds", "op" => operation).record(elapsed.as_secs_f64());
    if !ok {
        counter!("warren_gateway_redis_errors_total", "op" => operation).increment(1);
    }
}

/// The bridge stream came up (`reconnect`: not the first) or went down.
pub fn bridge_attached(attached: bool, reconnect: bool) {
    gauge!("warren_gateway_bridge_connected").set(if attached { 1.0 } else { 0.0 });
    if attached && reconnect {
        counter!("warren_gateway_bridge_reconnects_total").increment(1);
    }
}

/// Rooms with members now.
pub fn rooms(count: usize) {
    gauge!("warren_gateway_rooms").set(count as f64);
}

/// Presence entries this gateway holds now.
pub fn presence_entries(count: usize) {
    gauge!("warren_gateway_presence_entries").set(count as f64);
}

/// A presence heartbeat was sent; `ok` says whether Redis took it.
pub fn presence_heartbeat(ok: bool) {
    counter!("warren_gateway_presence_heartbeats_total", "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// `presence_diff` frames queued to sockets: what a flush actually queued,
/// so at most one per socket of a room per batch.
pub fn presence_sent(frames: usize) {
    if frames > 0 {
        counter!("warren_gateway_frames_out_total", "type" => "presence_diff")
            .increment(u64::try_from(frames).unwrap_or(u64::MAX));
    }
}

/// The sweep found a gateway whose heartbeat expired and removed `entries`
/// of its entries.
pub fn presence_expired(entries: u64) {
    counter!("warren_gateway_presence_expirations_total").increment(1);
    counter!("warren_gateway_presence_expired_entries_total").increment(entries);
}

/// A history read went to the bridge.
pub fn history_request() {
    counter!("warren_gateway_history_requests_total").increment(1);
}

/// A join was refused with `code`.
pub fn join_refused(code: &'static str) {
    counter!("warren_gateway_joins_refused_total", "code" => code).increment(1);
}

/// Exports every counter a dashboard or alert reads at 0, for its known label
/// values, before its first event: `rate()` and `increase()` need a sample
/// before the event to see it, so the first failure after a start counts.
fn zero_series() {
    for name in [
        "warren_gateway_sockets_accepted_total",
        "warren_gateway_bytes_out_total",
        "warren_gateway_messages_delivered_total",
        "warren_gateway_queue_overflows_total",
        "warren_gateway_resumes_total",
        "warren_gateway_messages_replayed_total",
        "warren_gateway_bridge_reconnects_total",
        "warren_gateway_history_requests_total",
    ] {
        counter!(name).increment(0);
    }
    let closes = [
        CloseReason::RESTART,
        CloseReason::SLOW,
        CloseReason::IDLE,
        CloseReason::ABUSE,
        CloseReason::SESSION_ENDED,
        CloseReason::DISCONNECTED,
    ];
    for reason in closes.into_iter().chain([CloseReason { code: close::NORMAL, text: "" }]) {
        counter!("warren_gateway_sockets_closed_total", "reason" => reason.label(), "code" => reason.code.to_string())
            .increment(0);
    }
    let refusals = ["rate_limited", "origin", "no_session", "bad_signature", "unknown_session", "store_unavailable"];
    for reason in refusals.into_iter().chain(["gateway_full", "user_sockets", "busy"]) {
        counter!("warren_gateway_handshakes_refused_total", "reason" => reason).increment(0);
    }
    for op in ["get", "set", "expire", "exists", "del", "logout", "end_sessions", "publish"] {
        counter!("warren_gateway_redis_errors_total", "op" => op).increment(0);
    }
    for kind in ["join", "leave", "send", "ping", "members", "invalid", "binary"] {
        counter!("warren_gateway_frames_in_total", "type" => kind).increment(0);
    }
    for kind in
        ["welcome", "joined", "left", "message", "ack", "error", "presence_diff", "members", "pong", "reconnect"]
    {
        counter!("warren_gateway_frames_out_total", "type" => kind).increment(0);
    }
    for code in ["unavailable", "refused"] {
        counter!("warren_gateway_joins_refused_total", "code" => code).increment(0);
    }
    for result in ["accepted", "gone", "refused", "unavailable"] {
        counter!("warren_gateway_sse_posts_total", "result" => result).increment(0);
    }
}

/// The session store answers (`true`) or not, as readiness sees it.
pub fn redis_up(up: bool) {
    gauge!("warren_gateway_redis_up").set(if up { 1.0 } else { 0.0 });
}

/// The gateway's socket capacity, for alerts on how close it is.
pub fn max_sockets(max: usize) {
    #[allow(clippy::cast_precision_loss)]
    gauge!("warren_gateway_max_sockets").set(max as f64);
}
