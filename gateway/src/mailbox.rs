//! A socket's outbound side, as the rest of the gateway sees it: a bounded
//! queue of frames and a way to ask the socket to close, saying why.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Identifies one socket on this gateway.
pub type SocketId = u64;

/// WebSocket close codes used by the gateway (RFC 6455 section 7.4).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The peer broke the WebSocket protocol (bad framing, unmasked frames).
    pub const PROTOCOL: u16 = 1002;
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy was broken (e.g. the socket fell too far behind).
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting: reconnect, probably elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
}

/// Why a socket ended, as its close frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// The close code.
    pub code: u16,
    /// The reason text (short, for people).
    pub text: &'static str,
}

impl CloseReason {
    /// The gateway is draining.
    pub const RESTART: Self = Self { code: close::SERVICE_RESTART, text: "server restarting" };
    /// The socket could not keep up with its rooms.
    pub const SLOW: Self = Self { code: close::POLICY, text: "slow: too far behind" };
    /// The peer stopped answering pings.
    pub const IDLE: Self = Self { code: close::POLICY, text: "timeout: no pong" };
    /// The login was logged out or expired.
    pub const SESSION_ENDED: Self = Self { code: close::POLICY, text: "session ended" };
    /// The peer kept sending over its rate limit.
    pub const ABUSE: Self = Self { code: close::POLICY, text: "rate limit: too many sends" };

    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match *self {
            Self::RESTART => "restart",
            Self::SLOW => "slow",
            Self::IDLE => "idle",
            Self::ABUSE => "abuse",
            Self::SESSION_ENDED => "session_ended",
            Self { code: close::PROTOCOL, .. } => "protocol",
            Self { code: close::NORMAL, .. } => "normal",
            Self { code: close::TOO_BIG, .. } => "too_big",
            Self { code: close::INVALID_PAYLOAD, .. } => "invalid_utf8",
            Self { code: close::POLICY, .. } => "protocol",
            _ => "other",
        }
    }
}

/// What a socket's writer is asked to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, already encoded (shared between sockets).
    Text(Bytes),
    /// A pong answering a client's ping.
    Pong(Bytes),
    /// A ping, to learn whether the client is still there.
    Ping,
    /// Close the socket with this code and reason.
    Close(CloseReason),
}

/// Asks a socket to close; the first reason given wins.
#[derive(Debug, Clone, Default)]
pub struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<CloseReason>>,
}

impl Closer {
    /// Asks the socket to close with `reason`.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves with the reason once someone asked the socket to close.
    pub async fn requested(&self) -> CloseReason {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(CloseReason::RESTART)
    }
}

/// A socket as others reach it. Its queue is bounded twice: in frames (the
/// channel) and in bytes, so that neither many small frames nor a few large
/// ones let a socket that does not read hold unbounded memory.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// The socket's outbound queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Closes the socket.
    pub closer: Closer,
    /// Text bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl Mailbox {
    /// A mailbox over `tx` that holds at most `max_queued` bytes of text.
    pub fn new(tx: mpsc::Sender<Outbound>, max_queued: usize) -> Self {
        Self { tx, closer: Closer::default(), queued: Arc::new(AtomicUsize::new(0)), max_queued }
    }

    /// Queues a frame without waiting; a full queue closes the socket (it is
    /// too slow to follow its rooms) rather than stall everyone else.
    pub fn offer(&self, frame: Bytes) -> bool {
        let len = frame.len();
        let over_bytes = self.queued.load(Ordering::Relaxed) + len > self.max_queued;
        if !over_bytes && self.tx.try_send(Outbound::Text(frame)).is_ok() {
            self.queued.fetch_add(len, Ordering::Relaxed);
            return true;
        }
        if !self.closer.token.is_cancelled() {
            crate::metrics::queue_overflow();
        }
        self.closer.close(CloseReason::SLOW);
        false
    }

    /// Queues a reply, waiting for room in the channel: replies are few and
    /// the client is waiting for them.
    pub async fn send(&self, frame: Bytes) {
        let len = frame.len();
        if self.tx.send(Outbound::Text(frame)).await.is_ok() {
            self.queued.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// The writer wrote `len` bytes of text.
    pub fn written(&self, len: usize) {
        self.queued.fetch_sub(len.min(self.queued.load(Ordering::Relaxed)), Ordering::Relaxed);
    }
}
