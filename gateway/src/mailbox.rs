//! A socket's outbound side, as the rest of the gateway sees it: a bounded
//! queue of frames and a way to ask the socket to close, saying why.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// A backend disconnected the user (server API).
    pub const DISCONNECTED: Self = Self { code: close::POLICY, text: "disconnected by the server" };

    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match *self {
            Self::RESTART => "restart",
            Self::SLOW => "slow",
            Self::IDLE => "idle",
            Self::ABUSE => "abuse",
            Self::SESSION_ENDED => "session_ended",
            Self::DISCONNECTED => "disconnected",
            Self { code: close::PROTOCOL, .. } => "protocol",
            Self { code: close::NORMAL, .. } => "normal",
            Self { code: close::TOO_BIG, .. } => "too_big",
            Self { code: close::INVALID_PAYLOAD, .. } => "invalid_utf8",
            Self { code: close::POLICY, .. } => "protocol",
            _ => "other",
        }
    }
}

/// What a socket's writer is asked to send, besides its close frame.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, already encoded (shared between sockets).
    Text(Bytes),
    /// A pong answering a client's ping.
    Pong(Bytes),
    /// A ping, to learn whether the client is still there.
    Ping,
}

impl Outbound {
    fn len(&self) -> usize {
        match self {
            Self::Text(bytes) | Self::Pong(bytes) => bytes.len(),
            Self::Ping => 0,
        }
    }
}

/// A socket as others reach it: a bounded queue of frames for its writer,
/// and its close, asked for once.
///
/// The queue is bounded twice, in frames and in bytes, so that neither many
/// small frames nor a few large ones let a socket that does not read hold
/// unbounded memory. It is a `VecDeque` behind a mutex rather than a channel
/// because an idle socket then holds no queue memory at all (a tokio channel
/// allocates its first block up front), and the writer takes everything
/// queued at once, to write it in one go.
#[derive(Debug, Clone)]
pub struct Mailbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: Mutex<Queue>,
    /// Wakes the writer: something was queued, or the socket must close.
    wake: Notify,
    /// Wakes everyone waiting for the close.
    closing: Notify,
    close: OnceLock<CloseReason>,
    /// When the client last sent anything, in ms since [`EPOCH`].
    heard_ms: AtomicU64,
    max_frames: usize,
    max_bytes: usize,
}

/// The origin of [`Inner::heard_ms`]: one clock for every socket.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis_since_epoch() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    bytes: usize,
}

/// A queue that grew past this many frames gives its memory back once empty.
const KEEP_CAPACITY: usize = 16;

impl Mailbox {
    /// A mailbox that holds at most `max_frames` frames and `max_bytes` bytes.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        let inner = Inner {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closing: Notify::new(),
            close: OnceLock::new(),
            heard_ms: AtomicU64::new(millis_since_epoch()),
            max_frames,
            max_bytes,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Queues a frame without waiting; a full queue closes the socket (it is
    /// too slow to follow its rooms, or asks for more than it reads) rather
    /// than stall anyone else.
    pub fn offer(&self, frame: Bytes) -> bool {
        self.push(Outbound::Text(frame))
    }

    /// Queues a frame the protocol obliges the socket to send (a pong).
    pub fn push(&self, frame: Outbound) -> bool {
        self.queue_or_close(frame, CloseReason::SLOW)
    }

    /// Queues a frame, or closes the socket with `reason` when the queue is
    /// full: a drain's notice that does not fit still closes with 1012,
    /// so that the client knows to come back elsewhere.
    pub fn offer_or_close(&self, frame: Bytes, reason: CloseReason) -> bool {
        self.queue_or_close(Outbound::Text(frame), reason)
    }

    fn queue_or_close(&self, frame: Outbound, reason: CloseReason) -> bool {
        let len = frame.len();
        let queued = {
            let mut queue = self.lock();
            let fits = queue.frames.len() < self.inner.max_frames && queue.bytes + len <= self.inner.max_bytes;
            if fits {
                queue.frames.push_back(frame);
                queue.bytes += len;
            }
            fits
        };
        if queued {
            self.inner.wake.notify_one();
            return true;
        }
        if self.inner.close.get().is_none() {
            crate::metrics::queue_overflow();
        }
        self.close(reason);
        false
    }

    /// Hands every queued frame to `each`, oldest first, until about
    /// `max_bytes` were taken; returns how many frames it took.
    pub fn take(&self, max_bytes: usize, mut each: impl FnMut(Outbound)) -> usize {
        let mut queue = self.lock();
        let (mut taken, mut bytes) = (0, 0);
        while bytes < max_bytes {
            let Some(frame) = queue.frames.pop_front() else { break };
            bytes += frame.len();
            taken += 1;
            each(frame);
        }
        queue.bytes -= bytes.min(queue.bytes);
        if queue.frames.is_empty() && queue.frames.capacity() > KEEP_CAPACITY {
            queue.frames = VecDeque::new();
        }
        taken
    }

    /// Gives the queue's memory back if nothing is queued (a quiet socket).
    pub fn release_if_empty(&self) {
        let mut queue = self.lock();
        if queue.frames.is_empty() {
            queue.frames = VecDeque::new();
        }
    }

    /// Resolves once something may have been queued since the last call (or
    /// the socket must close): the writer's signal to look.
    pub async fn queued(&self) {
        self.inner.wake.notified().await;
    }

    /// Asks the socket to close with `reason`; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.inner.close.set(reason);
        self.inner.closing.notify_waiters();
        self.inner.wake.notify_one();
    }

    /// Resolves with the reason once someone asked the socket to close.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.inner.closing.notified();
            if let Some(reason) = self.inner.close.get() {
                return *reason;
            }
            notified.await;
        }
    }

    /// The client sent something: it is alive.
    pub fn heard(&self) {
        self.inner.heard_ms.store(millis_since_epoch(), Ordering::Relaxed);
    }

    /// How long the client has been silent.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(millis_since_epoch().saturating_sub(self.inner.heard_ms.load(Ordering::Relaxed)))
    }

    /// Why the socket was asked to close, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.close.get().copied()
    }

    /// Whether the socket was asked to close.
    pub fn is_closing(&self) -> bool {
        self.inner.close.get().is_some()
    }

    /// The next queued frame, waiting for one; `None` once closing and
    /// empty. (The socket writer takes frames in batches with [`Self::take`].)
    pub async fn next(&self) -> Option<Outbound> {
        loop {
            let woken = self.queued();
            if let Some(frame) = self.lock().frames.pop_front() {
                return Some(frame);
            }
            if self.is_closing() {
                return None;
            }
            woken.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.inner.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
