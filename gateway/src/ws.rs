//! One browser socket: the upgrade's aftermath and the per-socket [`Handler`].
//!
//! A socket is two tasks. The reader decodes client frames and acts on them;
//! the writer drains one bounded queue ([`Outbound`]) into the socket, so
//! everything the socket is sent (replies, room messages, pongs) goes out in
//! the order it was queued and a slow socket only ever fills its own queue.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocket, WebSocketError};
use governor::DefaultDirectRateLimiter;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::drain::Sockets;
use crate::hub::Hub;
use crate::limits::{self, ABUSE_STRIKES, Limits, RetryAfter};
use crate::mailbox::{CloseReason, Closer, Mailbox, Outbound, SocketId, close};
use crate::metrics;
use crate::protocol::{self, ClientFrame, FrameError, ServerFrame};
use crate::session::Session;
use crate::upstream::Upstream;
use crate::wire::{self, RequireMask};

/// Frames queued for one socket before it counts as too slow to keep.
pub const QUEUE_FRAMES: usize = 4096;
/// How often the gateway pings a socket.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// A socket that sent nothing (not even a pong) for this long is dead.
pub const IDLE_LIMIT: Duration = Duration::from_secs(50);

type Stream = RequireMask<TokioIo<Upgraded>>;

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// What every socket of a gateway shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Rooms and delivery.
    pub hub: Arc<Hub>,
    /// The bridge link, for sends.
    pub upstream: Arc<Upstream>,
    /// This gateway's name, for `welcome`.
    pub instance: Arc<str>,
    /// Every open socket, for the drain.
    pub sockets: Arc<Sockets>,
    /// Sizes and rates.
    pub limits: Arc<Limits>,
    /// Tracks every socket task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Who is in each room, across gateways.
    pub presence: Arc<crate::presence::Presence>,
}

/// The per-socket logic.
#[derive(Debug)]
pub struct Handler {
    id: SocketId,
    session: Session,
    shared: Shared,
    mailbox: Mailbox,
    rooms: HashSet<String>,
    sends: DefaultDirectRateLimiter,
    /// Consecutive sends refused for their rate.
    strikes: u32,
}

impl Handler {
    /// Runs a socket to its end: welcome, then frames until either side
    /// closes. The user's socket count was taken at the handshake and is
    /// given back here.
    pub async fn run(ws: WebSocket<TokioIo<Upgraded>>, session: Session, shared: Shared) {
        let mut ws = WebSocket::after_handshake(RequireMask::new(ws.into_inner()), Role::Server);
        ws.set_max_message_size(shared.limits.max_message_bytes);
        ws.set_auto_pong(true);
        ws.set_auto_close(true);
        ws.set_auto_apply_mask(true);
        let (read, write) = ws.split(tokio::io::split);
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let mailbox = Mailbox::new(tx, shared.limits.max_queue_bytes);
        let closer = mailbox.closer.clone();
        let writer = shared.tracker.spawn(write_loop(write, rx, mailbox.clone()));
        let id = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        shared.sockets.insert(id, mailbox.clone(), session.login.clone());
        metrics::socket_opened();
        tracing::info!(socket = id, user = session.user.as_str(), "socket open");
        let welcome = ServerFrame::Welcome { user: session.user.as_str(), instance: &shared.instance }.encode();
        let alive = Arc::new(Liveness::default());
        let keepalive = shared.tracker.spawn(keep_alive(mailbox.clone(), alive.clone()));
        let sends = shared.limits.socket_sends();
        let mut handler = Self { id, session, shared, mailbox, rooms: HashSet::new(), sends, strikes: 0 };
        handler.queue("welcome", welcome).await;
        let reason = handler.read_loop(FragmentCollectorRead::new(read), &closer, &alive).await;
        keepalive.abort();
        for room in std::mem::take(&mut handler.rooms) {
            handler.shared.hub.leave(&room, handler.id);
        }
        handler.shared.presence.socket_closed(handler.id);
        handler.shared.sockets.remove(id);
        handler.shared.limits.close_socket(handler.session.user.as_str());
        // The writer sends the close frame (the first reason given wins) and
        // stops, even in the middle of a write to a peer that does not read.
        handler.mailbox.closer.close(reason);
        drop(handler.mailbox);
        let _ = writer.await;
        metrics::socket_closed(reason.label(), reason.code);
        tracing::info!(socket = id, code = reason.code, reason = reason.text, "socket closed");
    }

    async fn read_loop(
        &mut self,
        mut read: FragmentCollectorRead<ReadHalf<Stream>>,
        closer: &Closer,
        alive: &Liveness,
    ) -> CloseReason {
        let obligated_tx = self.mailbox.tx.clone();
        // Frames the protocol obliges us to send (pongs, the close echo) go
        // through the same queue as everything else.
        let mut obligated = move |frame: Frame<'_>| {
            let item = match frame.opcode {
                OpCode::Close => Outbound::Close(CloseReason { code: close_code(&frame.payload), text: "" }),
                _ => Outbound::Pong(bytes::Bytes::copy_from_slice(&frame.payload)),
            };
            let tx = obligated_tx.clone();
            async move { tx.send(item).await.map_err(|_| std::io::Error::other("socket writer gone")) }
        };
        loop {
            let frame = tokio::select! {
                frame = read.read_frame(&mut obligated) => frame,
                reason = closer.requested() => return reason,
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => return close_reason(&error),
            };
            alive.touch();
            match frame.opcode {
                OpCode::Text => match std::str::from_utf8(&frame.payload) {
                    Ok(text) => {
                        if let Some(reason) = self.on_text(text).await {
                            return reason;
                        }
                    }
                    Err(_) => return CloseReason { code: close::INVALID_PAYLOAD, text: "text is not UTF-8" },
                },
                OpCode::Binary => {
                    metrics::frame_in("binary");
                    let error = FrameError::new("binary_unsupported", "send JSON text frames");
                    self.queue("error", error.encode()).await;
                }
                OpCode::Close => return CloseReason { code: close::NORMAL, text: "" },
                _ => {}
            }
        }
    }

    /// Acts on one text frame; `Some` when the socket must close.
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        let frame = match protocol::decode(text) {
            Ok(frame) => frame,
            Err(error) => {
                metrics::frame_in("invalid");
                self.queue("error", error.encode()).await;
                return None;
            }
        };
        metrics::frame_in(frame.kind());
        match frame {
            ClientFrame::Join { room, .. }
                if !self.rooms.contains(&room) && self.rooms.len() >= self.shared.limits.max_rooms_per_socket =>
            {
                let limit = self.shared.limits.max_rooms_per_socket;
                let error = FrameError::new("too_many_rooms", format!("a socket may join at most {limit} rooms"));
                self.queue("error", error.encode()).await;
            }
            ClientFrame::Join { room, since } => {
                if since.is_some() {
                    metrics::resumed();
                }
                let user = self.session.user.as_str();
                let members = self.shared.presence.join(&room, user, self.id, &self.mailbox).await;
                self.queue("joined", ServerFrame::Joined { room: &room, members: &members }.encode()).await;
                self.shared.presence.joined(&room, self.id);
                self.shared.hub.join(&room, self.id, self.mailbox.clone(), since);
                self.rooms.insert(room);
            }
            ClientFrame::Leave { room } => {
                if self.rooms.remove(&room) {
                    self.shared.hub.leave(&room, self.id);
                    self.shared.presence.leave(&room, self.id);
                }
                self.queue("left", ServerFrame::Left { room: &room }.encode()).await;
            }
            ClientFrame::Ping => self.queue("pong", ServerFrame::Pong.encode()).await,
            ClientFrame::Send { room, text, cid } => {
                if !self.rooms.contains(&room) {
                    let error = FrameError::new("not_joined", format!("join {room:?} before sending to it"));
                    self.queue("error", error.with_cid(Some(cid)).encode()).await;
                    return None;
                }
                if let Err(RetryAfter(wait)) = self.take_send_token() {
                    self.strikes += 1;
                    if self.strikes >= ABUSE_STRIKES {
                        return Some(CloseReason::ABUSE);
                    }
                    let error = FrameError::new("rate_limited", "too many sends; retry later")
                        .with_cid(Some(cid))
                        .with_retry_after(wait);
                    self.queue("error", error.encode()).await;
                    return None;
                }
                self.strikes = 0;
                self.spawn_send(room, text, cid);
            }
        }
        None
    }

    /// One send from the socket's bucket and the user's.
    fn take_send_token(&self) -> Result<(), RetryAfter> {
        limits::socket_send(&self.sends)?;
        self.shared.limits.user_send(self.session.user.as_str())
    }

    /// Publishes in the background so that the socket keeps reading; the ack
    /// (or error) is queued when the bridge answers.
    fn spawn_send(&self, room: String, text: String, cid: String) {
        let (upstream, mailbox) = (self.shared.upstream.clone(), self.mailbox.clone());
        let user = self.session.user.as_str().to_owned();
        // One span per send; its context travels to the bridge, into the
        // broker and back to every gateway that delivers the message.
        let span = tracing::info_span!("ws.send", socket = self.id);
        let traceparent = ops::telemetry::traceparent_of(&span);
        let send = async move {
            let started = std::time::Instant::now();
            let (kind, reply) = match upstream.publish(&room, &user, &text, &cid, traceparent).await {
                Ok(id) => ("ack", ServerFrame::Ack { cid: &cid, id }.encode()),
                Err(failure) => {
                    let error = ServerFrame::Error {
                        code: &failure.code,
                        message: &failure.message,
                        cid: Some(&cid),
                        retry_after_ms: None,
                    };
                    ("error", error.encode())
                }
            };
            metrics::send_answered(started.elapsed());
            metrics::frame_out(kind);
            mailbox.send(reply).await;
        };
        self.shared.tracker.spawn(tracing::Instrument::instrument(send, span));
    }

    /// Queues a reply, waiting for room if the queue is full: replies are
    /// few and the client is waiting for them.
    async fn queue(&self, kind: &'static str, frame: bytes::Bytes) {
        metrics::frame_out(kind);
        self.mailbox.send(frame).await;
    }
}

/// When the client last sent anything, in ms since the socket opened.
#[derive(Debug)]
struct Liveness {
    opened: std::time::Instant,
    last_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { opened: std::time::Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl Liveness {
    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Pings the socket every [`PING_EVERY`] and closes it once it has been
/// silent for [`IDLE_LIMIT`] (a dead peer, or a half-open connection).
async fn keep_alive(mailbox: Mailbox, alive: Arc<Liveness>) {
    let mut ticks = tokio::time::interval(PING_EVERY);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if alive.silent_for() >= IDLE_LIMIT {
            mailbox.closer.close(CloseReason::IDLE);
            return;
        }
        if mailbox.tx.try_send(Outbound::Ping).is_err() {
            return;
        }
    }
}

/// The close frame that answers a read error.
fn close_reason(error: &WebSocketError) -> CloseReason {
    let (code, text) = match error {
        WebSocketError::FrameTooLarge => (close::TOO_BIG, "message too big"),
        WebSocketError::InvalidUTF8 => (close::INVALID_PAYLOAD, "text is not UTF-8"),
        WebSocketError::IoError(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            (close::PROTOCOL, wire::UNMASKED)
        }
        WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => {
            (close::NORMAL, "")
        }
        _ => (close::PROTOCOL, "protocol error"),
    };
    CloseReason { code, text }
}

/// The close code in a close frame's payload (1000 when absent).
fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => close::NORMAL,
    }
}

/// How long the close frame may take to go out; a peer that does not read
/// gets its connection dropped instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Drains the socket's queue into the socket until the queue ends, a write
/// fails, or the socket is asked to close.
async fn write_loop(
    mut write: fastwebsockets::WebSocketWrite<WriteHalf<Stream>>,
    mut rx: mpsc::Receiver<Outbound>,
    mailbox: Mailbox,
) {
    let closer = mailbox.closer.clone();
    loop {
        let outbound = tokio::select! {
            biased;
            reason = closer.requested() => {
                let close = write.write_frame(Frame::close(reason.code, reason.text.as_bytes()));
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                return;
            }
            outbound = rx.recv() => match outbound {
                Some(outbound) => outbound,
                None => return,
            },
        };
        let written = tokio::select! {
            biased;
            // A write blocked on a peer that stopped reading is abandoned
            // (the frame is cut short, so no close frame can follow).
            _ = closer.requested() => return,
            written = write_one(&mut write, &outbound) => written,
        };
        if let Outbound::Text(bytes) = &outbound {
            mailbox.written(bytes.len());
        }
        if written.is_err() || matches!(outbound, Outbound::Close(_)) {
            return;
        }
    }
}

async fn write_one(
    write: &mut fastwebsockets::WebSocketWrite<WriteHalf<Stream>>,
    outbound: &Outbound,
) -> Result<(), WebSocketError> {
    match outbound {
        Outbound::Text(bytes) if bytes.is_empty() => Ok(()),
        Outbound::Text(bytes) => {
            metrics::bytes_out(bytes.len());
            write.write_frame(Frame::text(Payload::Borrowed(bytes))).await
        }
        Outbound::Pong(bytes) => write.write_frame(Frame::pong(Payload::Borrowed(bytes))).await,
        Outbound::Ping => write.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await,
        Outbound::Close(reason) => write.write_frame(Frame::close(reason.code, reason.text.as_bytes())).await,
    }
}
