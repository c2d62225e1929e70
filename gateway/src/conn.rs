//! One client connection, whatever carries it (a WebSocket, or a
//! Server-Sent Events stream with its POSTs): the protocol's frames acted
//! on, the limits applied, and the one way in and out of the gateway's
//! registries. The transports ([`crate::ws`], [`crate::sse`]) only move
//! bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::limits::{ABUSE_STRIKES, Limits, RetryAfter, SendLimiter};
use crate::mailbox::{CloseReason, Mailbox, SocketId};
use crate::membership::{Member, Membership};
use crate::metrics;
use crate::protocol::{self, ClientFrame, FrameError, ServerFrame};
use crate::session::{Session, UserName};
use crate::sockets::Sockets;
use crate::upstream::Upstream;

/// Frames queued for one client before it counts as too slow to keep.
pub const QUEUE_FRAMES: usize = 4096;

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// What every socket of a gateway shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Joins, leaves and closes: rooms, subscriptions and presence.
    pub membership: Membership,
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
}

/// One client's logic, whatever carries its frames: what it may do, and
/// what it is sent.
#[derive(Debug)]
pub struct Handler {
    pub(crate) id: SocketId,
    /// Who the session says this is.
    pub(crate) user: UserName,
    pub(crate) shared: Shared,
    pub(crate) mailbox: Mailbox,
    /// The socket's rooms.
    member: Member,
    sends: SendLimiter,
    /// Consecutive sends refused for their rate.
    strikes: u32,
    /// Ends when the socket's last send has its answer; the next send
    /// waits for it (see [`Self::spawn_send`]).
    last_send: Option<oneshot::Receiver<()>>,
}

impl Handler {
    /// A client that just connected: a queue of its own, a place in the
    /// registry (for drains, logouts and disconnects) and its `welcome`,
    /// which names `stream` for the transports that need one. The user's
    /// socket count was taken before; [`Self::finish`] gives it back.
    pub fn open(session: Session, shared: Shared, stream: Option<&str>) -> Self {
        let mailbox = Mailbox::new(QUEUE_FRAMES, shared.limits.max_queue_bytes);
        let id = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        let Session { user, login, .. } = session;
        shared.sockets.insert(id, mailbox.clone(), login, user.as_str());
        metrics::socket_opened();
        tracing::info!(socket = id, user = user.as_str(), sse = stream.is_some(), "socket open");
        let welcome = ServerFrame::Welcome { user: user.as_str(), instance: &shared.instance, stream }.encode();
        let sends = shared.limits.socket_sends();
        let member = Member::new(id, user.as_str().to_owned(), mailbox.clone());
        let handler = Self { id, user, shared, mailbox, member, sends, strikes: 0, last_send: None };
        handler.queue("welcome", welcome);
        handler
    }

    /// Takes the client out of its rooms and the registry, gives its socket
    /// count back and asks its transport to close with `reason` (the first
    /// reason given wins).
    pub fn finish(&self, reason: CloseReason) {
        self.shared.membership.close(&self.member);
        self.shared.sockets.remove(self.id);
        self.shared.limits.close_socket(self.user.as_str());
        self.mailbox.close(reason);
    }

    /// Acts on one text frame; `Some` when the socket must close.
    pub(crate) async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        let frame = match protocol::decode(text) {
            Ok(frame) => frame,
            Err(error) => {
                metrics::frame_in("invalid");
                self.queue("error", error.encode());
                return None;
            }
        };
        metrics::frame_in(frame.kind());
        match frame {
            ClientFrame::Join { room, since } => {
                if let Err(error) = self.shared.membership.join(&mut self.member, room, since).await {
                    self.queue("error", error.encode());
                }
            }
            ClientFrame::Leave { room } => {
                self.shared.membership.leave(&mut self.member, &room);
                self.queue("left", ServerFrame::Left { room: &room }.encode());
            }
            ClientFrame::Members { room } => self.on_members(&room).await,
            ClientFrame::Ping => self.queue("pong", ServerFrame::Pong.encode()),
            ClientFrame::Send { room, text, cid } => {
                if !self.member.is_in(&room) {
                    let error = FrameError::new("not_joined", format!("join {room:?} before sending to it"));
                    self.queue("error", error.with_cid(Some(cid)).encode());
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
                    self.queue("error", error.encode());
                    return None;
                }
                self.strikes = 0;
                self.spawn_send(room, text, cid);
            }
        }
        None
    }

    /// Answers `members` with the whole list of a joined room, as of a
    /// point after which the socket is told every change (see
    /// [`crate::presence::Presence::members`]).
    async fn on_members(&self, room: &str) {
        if !self.member.is_in(room) {
            let error = FrameError::new("not_joined", format!("join {room:?} before asking for its members"));
            self.queue("error", error.encode());
            return;
        }
        if let Err(RetryAfter(wait)) = self.shared.limits.member_list(self.user.as_str()) {
            let error = FrameError::new("rate_limited", "too many member lists; retry later").with_retry_after(wait);
            self.queue("error", error.encode());
            return;
        }
        let presence = &self.shared.membership.presence;
        match presence.members(room, self.id).await {
            Some(members) => self.queue("members", ServerFrame::Members { room, members: &members }.encode()),
            None => {
                let error = FrameError::new("unavailable", "the member list is unavailable now; retry later");
                self.queue("error", error.encode());
            }
        }
        presence.listed(room, self.id);
    }

    /// One send from the socket's bucket and the user's.
    fn take_send_token(&self) -> Result<(), RetryAfter> {
        self.shared.limits.socket_send(&self.sends)?;
        self.shared.limits.user_send(self.user.as_str())
    }

    /// Publishes in the background so that the socket keeps reading; the ack
    /// (or error) is queued when the bridge answers.
    ///
    /// A socket's sends are published one after the other, each once the
    /// one before has its answer: a client's messages then get ids in the
    /// order it sent them, and their acks come in that order, even though
    /// publishes to the bridge are answered out of order. The send rate
    /// limit bounds how many wait.
    fn spawn_send(&mut self, room: String, text: String, cid: String) {
        let (upstream, mailbox) = (self.shared.upstream.clone(), self.mailbox.clone());
        let (answered, next_waits) = oneshot::channel::<()>();
        let previous = self.last_send.replace(next_waits);
        let user = self.user.as_str().to_owned();
        // One span per send; its context travels to the bridge, into the
        // broker and back to every gateway that delivers the message.
        let span = tracing::info_span!("ws.send", socket = self.id);
        let traceparent = ops::telemetry::traceparent_of(&span);
        let send = async move {
            if let Some(previous) = previous {
                // Err only: the sender is dropped when its send is answered.
                let _ = previous.await;
            }
            let started = std::time::Instant::now();
            let (kind, reply) = match upstream.publish(&room, &user, &text, &cid, traceparent).await {
                Ok(id) => ("ack", ServerFrame::Ack { cid: &cid, id }.encode()),
                Err(failure) => {
                    let error = ServerFrame::Error {
                        code: &failure.code,
                        message: &failure.message,
                        cid: Some(&cid),
                        retry_after_ms: None,
                        room: None,
                    };
                    ("error", error.encode())
                }
            };
            metrics::send_answered(started.elapsed());
            metrics::frame_out(kind);
            mailbox.offer(reply);
            drop(answered);
        };
        self.shared.tracker.spawn(tracing::Instrument::instrument(send, span));
    }

    /// Queues a reply. A client that asks for more than it reads fills its
    /// queue like any slow reader, and is closed like one.
    pub(crate) fn queue(&self, kind: &'static str, frame: Bytes) {
        metrics::frame_out(kind);
        self.mailbox.offer(frame);
    }
}
