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
//!
//! The response is HTTP/1.0 and ends with its connection (no length, no
//! chunks): hyper writes its head and gives the connection back
//! ([`crate::takeover`]), and the stream writes its events on the socket
//! itself, as a WebSocket does. An idle stream then costs what an idle
//! WebSocket does (a hyper connection kept for hours holds its buffers and
//! state machine: 2 KiB more per stream, measured). Browsers' `EventSource`,
//! HAProxy and nginx all read a response framed by its close; the stream's
//! end is its `close` event anyway.

pub mod relay;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use rand::RngCore;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::conn::{Handler, Shared};
use crate::mailbox::{CloseReason, Mailbox, Outbound, close};
use crate::metrics;
use crate::session::Session;
use crate::writer::{Framing, Writer};

pub use relay::Relay;

/// Bytes of randomness in a stream token (128 bits: not guessable).
const TOKEN_BYTES: usize = 16;

/// A heartbeat: a comment line.
const PING: &[u8] = b": ping\n\n";

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

/// The body of `GET /sse`'s response: none of its own. It has no length, so
/// that hyper, answering in HTTP/1.0, frames it by the connection's close
/// and writes nothing but the head; the events are then written on the
/// connection itself ([`Stream::start`]).
pub type HeadOnly = StreamBody<futures_util::stream::Empty<Result<Frame<Bytes>, Infallible>>>;

/// `GET /sse`'s body (see [`HeadOnly`]).
pub fn head_only() -> HeadOnly {
    StreamBody::new(futures_util::stream::empty())
}

/// Opens a stream for `session`: registers it with the relay and queues its
/// `welcome`. It runs once it has its connection ([`Stream::start`]).
///
/// # Errors
/// When the relay cannot subscribe to the stream's channel (Redis).
pub async fn open(session: Session, shared: Shared, relay: Arc<Relay>) -> Result<Stream, relay::RelayError> {
    let token = new_token();
    let channel: Arc<str> = relay::channel(session.user.as_str(), &token).into();
    let handler = Handler::open(session, shared, Some(&token));
    match relay.open(&channel, handler.mailbox.clone()).await {
        Ok(inbox) => Ok(Stream { handler, inbox, relay, channel }),
        Err(error) => {
            handler.finish(CloseReason { code: close::NORMAL, text: "" });
            metrics::socket_closed("normal", close::NORMAL);
            Err(error)
        }
    }
}

/// An open stream, on the gateway's side.
#[derive(Debug)]
pub struct Stream {
    handler: Handler,
    inbox: Arc<relay::Inbox>,
    relay: Arc<Relay>,
    channel: Arc<str>,
}

impl Stream {
    /// Runs the stream on its connection, which hyper gave back after the
    /// response's head. The connection is TCP, as a WebSocket's: the gateway
    /// serves plain TCP (TLS ends at the balancer).
    pub fn start(self, connection: TcpStream) {
        let tracker = self.handler.shared.tracker.clone();
        let (read, write) = connection.into_split();
        tracker.spawn(self.run(read, Writer::new(write)));
    }

    /// Ends a stream whose connection was lost before its head went out.
    pub fn abandon(self) {
        let tracker = self.handler.shared.tracker.clone();
        tracker.spawn(async move {
            self.end(CloseReason { code: close::NORMAL, text: "" }).await;
        });
    }

    /// The stream's one task: acts on posted frames and writes its events
    /// at the same time, as a WebSocket's reader and writer do in two tasks
    /// (a join that waits for Redis does not hold the room's messages back),
    /// until the stream is asked to close or its client goes; then ends it
    /// and writes the close event.
    async fn run(mut self, mut read: OwnedReadHalf, mut writer: Writer<Events>) {
        let mailbox = self.handler.mailbox.clone();
        let (reason, writable) = {
            let busy = AtomicBool::new(false);
            let acting = std::pin::pin!(act(&mut self.handler, &self.inbox, &busy));
            let writing = std::pin::pin!(write_until_closed(&mut writer, &mailbox));
            let gone = std::pin::pin!(client_gone(&mut read));
            serve(Activities { acting, writing, gone }, &busy, &mailbox).await
        };
        // Boxed: the end awaits Redis, and its future would otherwise size
        // the task of every stream, idle ones included.
        Box::pin(async move {
            let said = self.end(reason).await;
            if writable {
                writer.last_words(said).await;
            }
        })
        .await;
    }

    /// Takes the stream out of everything: first its channel (once Redis
    /// confirms, a POST finds no gateway and is answered 404, so the close
    /// event that tells the client so may go), then its rooms and the
    /// registry. Returns what the close event says: the first reason the
    /// stream was given.
    async fn end(self, reason: CloseReason) -> CloseReason {
        self.relay.close(&self.channel).await;
        self.handler.finish(reason);
        metrics::socket_closed(reason.label(), reason.code);
        tracing::info!(socket = self.handler.id, sse = true, code = reason.code, reason = reason.text, "socket closed");
        self.handler.mailbox.closed().await
    }
}

/// A stream's three activities, run together in its one task.
struct Activities<'a, A, W, G> {
    /// Acting on posted frames ([`act`]).
    acting: Pin<&'a mut A>,
    /// Writing the events ([`write_until_closed`]).
    writing: Pin<&'a mut W>,
    /// Watching for the client to leave ([`client_gone`]).
    gone: Pin<&'a mut G>,
}

/// Runs a stream's activities until the frames' side stops: once the stream
/// is asked to close (after the frame in flight, never in its middle, as a
/// WebSocket's reader), or when a frame closes it. Returns why, and whether
/// the connection can still take the close event.
async fn serve<A, W, G>(
    mut activities: Activities<'_, A, W, G>,
    busy: &AtomicBool,
    mailbox: &Mailbox,
) -> (CloseReason, bool)
where
    A: Future<Output = CloseReason>,
    W: Future<Output = bool>,
    G: Future<Output = ()>,
{
    let (mut writable, mut closed, mut left) = (true, false, false);
    loop {
        tokio::select! {
            reason = activities.acting.as_mut() => return (reason, writable && !left),
            ok = activities.writing.as_mut(), if !closed => (closed, writable) = (true, ok),
            () = activities.gone.as_mut(), if !left => {
                left = true;
                mailbox.close(CloseReason { code: close::NORMAL, text: "" });
            }
        }
        if closed
            && !busy.load(Ordering::Acquire)
            && let Some(reason) = mailbox.close_reason()
        {
            return (reason, writable && !left);
        }
    }
}

/// Acts on posted frames, one at a time, in the order they were posted,
/// until a frame closes the stream, or it was asked to close when a frame
/// is done. `busy` says whether a frame is being acted on.
async fn act(handler: &mut Handler, inbox: &relay::Inbox, busy: &AtomicBool) -> CloseReason {
    loop {
        let frame = inbox.next().await;
        busy.store(true, Ordering::Release);
        handler.mailbox.heard();
        // Boxed for the same reason as a WebSocket's: see `ws`.
        if let Some(reason) = Box::pin(handler.on_text(&frame)).await {
            return reason;
        }
        busy.store(false, Ordering::Release);
        if let Some(reason) = handler.mailbox.close_reason() {
            return reason;
        }
    }
}

/// Writes the stream's events until it is asked to close (`true`) or a
/// write fails (`false`: nothing more can be written).
async fn write_until_closed(writer: &mut Writer<Events>, mailbox: &Mailbox) -> bool {
    loop {
        tokio::select! {
            biased;
            _ = mailbox.closed() => return true,
            () = mailbox.queued() => {}
        }
        if !writer.write_queued(mailbox).await {
            return false;
        }
    }
}

/// Resolves when the client closed its side or the connection broke. A
/// stream's client has nothing to send on it; what it sends anyway is read
/// and dropped, a chunk per wake-up. Polled by hand: the future is a pointer,
/// where `readable()` would keep a waiter in every idle stream.
async fn client_gone(read: &mut OwnedReadHalf) {
    std::future::poll_fn(|cx| {
        let mut scratch = [0u8; 64];
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *read).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
}

/// Events as a stream's writer frames them: each queued frame a `data:`
/// line, pings comment lines, and last the close.
struct Events;

impl Framing for Events {
    const PING_BYTES: usize = PING.len();
    const WRITES_ARE_HEARD: bool = true;

    fn frame(batch: &mut Vec<u8>, outbound: Outbound) {
        match outbound {
            Outbound::Text(json) => {
                // Exactly what it takes: a quiet stream keeps its buffer (see
                // `Writer`), and growing by doubling would keep twice this.
                batch.reserve(b"data: ".len() + json.len() + b"\n\n".len());
                batch.extend_from_slice(b"data: ");
                batch.extend_from_slice(&json);
                batch.extend_from_slice(b"\n\n");
            }
            Outbound::Ping => batch.extend_from_slice(PING),
            Outbound::Pong(_) => {}
        }
    }

    fn close(batch: &mut Vec<u8>, reason: CloseReason) {
        batch.extend_from_slice(&close_event(reason));
    }
}

/// The last event: the close code and reason a WebSocket would get.
fn close_event(reason: CloseReason) -> Bytes {
    let data = serde_json::json!({ "code": reason.code, "reason": reason.text });
    Bytes::from(format!("event: close\ndata: {data}\n\n"))
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

    #[test]
    fn queued_frames_become_data_lines_and_pings_comments() {
        let mut batch = Vec::new();
        Events::frame(&mut batch, Outbound::Text(Bytes::from_static(br#"{"type":"pong"}"#)));
        Events::frame(&mut batch, Outbound::Ping);
        Events::frame(&mut batch, Outbound::Pong(Bytes::from_static(b"not for streams")));
        assert_eq!(&batch[..], &b"data: {\"type\":\"pong\"}\n\n: ping\n\n"[..]);
        batch.clear();
        Events::frame(&mut batch, Outbound::Ping);
        assert_eq!(batch.len(), Events::PING_BYTES, "a write of pings alone is told by its length");
    }
}
