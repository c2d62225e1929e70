//! The Server-Sent Events transport, for clients whose WebSocket cannot get
//! through (proxies, carriers and platforms that break upgrades).
//!
//! `GET /sse` answers a `text/event-stream` that carries the same frames as
//! a WebSocket: each server frame is one event whose `data:` is the JSON a
//! WebSocket client would get, starting with `welcome`, which here names the
//! stream (`"stream": "<token>"`). Heartbeats are comment lines. The last
//! event, `event: close`, carries what a WebSocket's close frame would:
//! `{"code":1012,"reason":"server restarting"}`.
//!
//! The client sends its frames with `POST /sse?stream=<token>`, one JSON
//! frame per request; they reach the stream through [`relay`] and are acted
//! on by the same [`Handler`] as a WebSocket's, one at a time, in the order
//! they were posted.

pub mod relay;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use rand::RngCore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::conn::{Handler, Shared};
use crate::mailbox::{CloseReason, Mailbox, Outbound, close};
use crate::metrics;
use crate::session::Session;
use crate::ws::BATCH_BYTES;

pub use relay::Relay;

/// A stream's body: its events, as hyper pulls them.
pub type EventStream = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// How long a stream that was asked to close may take to send its last
/// event before its connection is dropped (a client that stopped reading).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of randomness in a stream token (128 bits: not guessable).
const TOKEN_BYTES: usize = 16;

/// A new stream's token: 22 URL-safe characters.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `token` has the shape [`new_token`] gives.
pub fn is_token(token: &str) -> bool {
    token.len() == 22 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Opens a stream for `session`: registers it with the relay, queues its
/// `welcome` and starts the task that acts on its posted frames. `abort`
/// drops the stream's connection; it is used when the stream must end and
/// its client does not take the last event.
///
/// # Errors
/// When the relay cannot subscribe to the stream's channel (Redis).
pub async fn open(
    session: Session,
    shared: Shared,
    relay: Arc<Relay>,
    abort: CancellationToken,
) -> Result<EventStream, relay::RelayError> {
    let token = new_token();
    let channel = relay::channel(session.user.as_str(), &token);
    let handler = Handler::open(session, shared, Some(&token));
    let inbox = match relay.open(&channel, handler.mailbox.clone()).await {
        Ok(inbox) => inbox,
        Err(error) => {
            handler.finish(CloseReason { code: close::NORMAL, text: "" });
            metrics::socket_closed("normal", close::NORMAL);
            return Err(error);
        }
    };
    let ending = Arc::new(Ending::default());
    let body = events(handler.mailbox.clone(), ending.clone());
    let stream = Stream { handler, inbox, relay, channel, ending, abort };
    let tracker = stream.handler.shared.tracker.clone();
    tracker.spawn(stream.run());
    Ok(body)
}

/// An open stream, on the gateway's side.
struct Stream {
    handler: Handler,
    inbox: Arc<relay::Inbox>,
    relay: Arc<Relay>,
    channel: String,
    ending: Arc<Ending>,
    abort: CancellationToken,
}

/// How far a stream's end has come, between its task and its body.
#[derive(Debug, Default)]
struct Ending {
    /// Its channel is unsubscribed: a POST to it now finds no gateway
    /// (404), so the close event, which tells the client so, may go.
    released: AtomicBool,
    release: Notify,
    /// The last event went out.
    delivered: AtomicBool,
}

impl Ending {
    fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.release.notify_waiters();
    }

    /// Until [`Self::release`], at most [`CLOSE_TIMEOUT`].
    async fn released(&self) {
        let wait = async {
            loop {
                let notified = self.release.notified();
                if self.released.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
    }
}

impl Stream {
    /// Acts on posted frames until the stream is asked to close, then takes
    /// it out of everything; drops its connection if the last event is not
    /// taken in time.
    async fn run(mut self) {
        let closed = self.handler.mailbox.clone();
        let reason = loop {
            let frame = tokio::select! {
                reason = closed.closed() => break reason,
                frame = self.inbox.next() => frame,
            };
            self.handler.mailbox.heard();
            // Boxed for the same reason as a WebSocket's: see `ws`.
            if let Some(reason) = Box::pin(self.handler.on_text(&frame)).await {
                break reason;
            }
        };
        self.relay.close(&self.channel).await;
        self.ending.release();
        self.handler.finish(reason);
        metrics::socket_closed(reason.label(), reason.code);
        tracing::info!(socket = self.handler.id, sse = true, code = reason.code, reason = reason.text, "socket closed");
        drop(self.handler);
        tokio::time::sleep(CLOSE_TIMEOUT).await;
        if !self.ending.delivered.load(Ordering::Relaxed) {
            self.abort.cancel();
        }
    }
}

/// The stream's events: what its mailbox is sent, as `data:` lines (many
/// at once when many are queued), pings as comment lines, and the close as
/// the last event, once the stream's channel is released. A client that is
/// taken away (its connection dropped) closes the mailbox, so the stream's
/// task ends too.
fn events(mailbox: Mailbox, ending: Arc<Ending>) -> EventStream {
    let state = Some(Guard(mailbox));
    let events = futures_util::stream::unfold(state, move |state| {
        let ending = ending.clone();
        async move {
            let guard = state?;
            let chunk = next_chunk(&guard.0).await;
            if let Chunk::Last(_) = chunk {
                ending.released().await;
                ending.delivered.store(true, Ordering::Relaxed);
            }
            match chunk {
                Chunk::Events(bytes) => Some((Ok(Frame::data(bytes)), Some(guard))),
                Chunk::Last(bytes) => Some((Ok(Frame::data(bytes)), None)),
            }
        }
    });
    StreamBody::new(Box::pin(events))
}

enum Chunk {
    Events(Bytes),
    Last(Bytes),
}

/// Waits for something to send: queued frames, or the close.
async fn next_chunk(mailbox: &Mailbox) -> Chunk {
    loop {
        tokio::select! {
            biased;
            reason = mailbox.closed() => return Chunk::Last(close_event(reason)),
            () = mailbox.queued() => {}
        }
        let mut chunk = Vec::new();
        mailbox.take(BATCH_BYTES, |outbound| match outbound {
            Outbound::Text(json) => {
                chunk.extend_from_slice(b"data: ");
                chunk.extend_from_slice(&json);
                chunk.extend_from_slice(b"\n\n");
            }
            Outbound::Ping => chunk.extend_from_slice(b": ping\n\n"),
            Outbound::Pong(_) => {}
        });
        if !chunk.is_empty() {
            // hyper asks for more only once it wrote what it had: the client
            // is reading, which is all a stream's liveness can mean.
            mailbox.heard();
            metrics::bytes_out(chunk.len());
            return Chunk::Events(Bytes::from(chunk));
        }
    }
}

/// The last event: the close code and reason a WebSocket would get.
fn close_event(reason: CloseReason) -> Bytes {
    let data = serde_json::json!({ "code": reason.code, "reason": reason.text });
    Bytes::from(format!("event: close\ndata: {data}\n\n"))
}

/// Closes the mailbox when hyper drops the body (the client went away).
struct Guard(Mailbox);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.close(CloseReason { code: close::NORMAL, text: "" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unguessable_and_checked_by_shape() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(is_token(&a), "{a}");
        assert!(!is_token("short"));
        assert!(!is_token(&format!("{}:", &a[..21])), "no channel separators");
    }

    #[test]
    fn the_close_event_says_what_a_close_frame_would() {
        let event = close_event(CloseReason::RESTART);
        assert_eq!(&event[..], &b"event: close\ndata: {\"code\":1012,\"reason\":\"server restarting\"}\n\n"[..]);
    }

    #[tokio::test]
    async fn queued_frames_become_data_lines_and_pings_comments() {
        let mailbox = Mailbox::new(16, 1 << 20);
        mailbox.offer(Bytes::from_static(br#"{"type":"pong"}"#));
        mailbox.push(Outbound::Ping);
        let Chunk::Events(bytes) = next_chunk(&mailbox).await else { panic!("events expected") };
        assert_eq!(&bytes[..], &b"data: {\"type\":\"pong\"}\n\n: ping\n\n"[..]);
        mailbox.close(CloseReason::SLOW);
        let Chunk::Last(bytes) = next_chunk(&mailbox).await else { panic!("the close expected") };
        assert!(bytes.starts_with(b"event: close\n"));
    }
}
