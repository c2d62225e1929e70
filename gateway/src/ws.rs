//! The WebSocket transport: a socket's reader and writer around its [`Handler`].
//!
//! A socket is two tasks. The reader decodes client frames and acts on them;
//! the writer drains the socket's bounded queue ([`Mailbox`]) into the
//! socket, so everything the socket is sent (replies, room messages, pongs)
//! goes out in the order it was queued and a slow socket only ever fills its
//! own queue. Pings come through the queue too, from the gateway's one
//! keep-alive task ([`crate::keepalive`]), so an idle socket costs two parked
//! tasks and nothing else: no timer of its own.
//!
//! Reading uses fastwebsockets' frame decoder. Writing does not: server
//! frames are unmasked and trivial to frame (the header comes from
//! fastwebsockets' `Frame::fmt_head`), and framing them ourselves lets the
//! writer put everything queued into one buffer and one `write` call, instead
//! of one system call per frame.

use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::conn::{Handler, Shared};
use crate::mailbox::{CloseReason, Mailbox, Outbound, close};
use crate::metrics;
use crate::protocol::FrameError;
use crate::session::Session;
use crate::wire::{self, RequireMask};

/// The most bytes of queued frames one write takes.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// What the reader reads: bytes hyper read past the handshake, then the
/// socket, checked for masking.
type ReadStream = RequireMask<tokio::io::Chain<std::io::Cursor<Bytes>, OwnedReadHalf>>;

/// The WebSocket transport of a [`Handler`].
#[derive(Debug)]
pub struct WebSocket;

impl WebSocket {
    /// Runs a socket from its upgrade to its end: welcome, then frames until
    /// either side closes. The user's socket count was taken at the
    /// handshake and is given back here.
    ///
    /// The setup is a plain function, and the socket's life a task of its
    /// own: the future every open socket keeps for as long as it lives then
    /// holds what the socket needs and nothing of its setup (an async
    /// function keeps room for every local it ever held, moved or not).
    pub async fn serve(upgrade: UpgradeFut, session: Session, shared: Shared) {
        let upgraded = match upgrade.await {
            Ok(ws) => ws.into_inner().into_inner(),
            Err(error) => {
                shared.limits.close_socket(session.user.as_str());
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        if let Some(socket) = Self::open(upgraded, session, shared) {
            let tracker = socket.handler.shared.tracker.clone();
            tracker.spawn(socket.run());
        }
    }

    /// Sets a socket up: its reader, its writer task, its place in the
    /// registry, its welcome. `None` when the connection is not TCP.
    fn open(upgraded: Upgraded, session: Session, shared: Shared) -> Option<Open> {
        // The gateway serves plain TCP (TLS ends at the balancer), so the
        // upgraded connection is a `TcpStream`: owned halves need no lock
        // between the reader and the writer.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::error!("an upgraded connection that is not TCP; closing it");
            shared.limits.close_socket(session.user.as_str());
            return None;
        };
        let (read, write) = parts.io.into_inner().into_split();
        // Bytes hyper read past the handshake (a client may pipeline its
        // first frames). Copied, because the slice keeps hyper's whole read
        // buffer alive for as long as the socket lives.
        let early = Bytes::copy_from_slice(&parts.read_buf);
        let read = RequireMask::new(std::io::Cursor::new(early).chain(read));
        let (mut read, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        read.set_max_message_size(shared.limits.max_message_bytes);
        read.set_auto_pong(true);
        read.set_auto_close(true);
        read.set_auto_apply_mask(true);
        // No 8 KiB read buffer per socket: reads take what frames need.
        read.release_read_buffer();

        let handler = Handler::open(session, shared, None);
        let writer = handler.shared.tracker.spawn(write_loop(write, handler.mailbox.clone()));
        Some(Open { handler, reader: FragmentCollectorRead::new(read), writer })
    }
}

/// A socket set up and not yet read from.
struct Open {
    handler: Handler,
    reader: FragmentCollectorRead<ReadStream>,
    writer: tokio::task::JoinHandle<()>,
}

impl Open {
    /// Reads until the socket ends, then takes it out of everything and
    /// waits for its close frame to go.
    async fn run(mut self) {
        let reason = read_loop(&mut self.handler, &mut self.reader).await;
        let handler = self.handler;
        // The writer sends the close frame (the first reason given wins) and
        // stops, even in the middle of a write to a peer that does not read.
        handler.finish(reason);
        let (id, tracker) = (handler.id, handler.shared.tracker.clone());
        drop(handler);
        let _ = self.writer.await;
        tracker.spawn(linger(self.reader));
        metrics::socket_closed(reason.label(), reason.code);
        tracing::info!(socket = id, code = reason.code, reason = reason.text, "socket closed");
    }
}

/// Reads frames and hands their text to `handler` until the socket ends.
async fn read_loop(handler: &mut Handler, read: &mut FragmentCollectorRead<ReadStream>) -> CloseReason {
    // Frames the protocol obliges us to send go through the same queue as
    // everything else (pongs), or are the socket's close (the echo).
    let obliged = handler.mailbox.clone();
    let mut obligated = move |frame: Frame<'_>| {
        if frame.opcode == OpCode::Close {
            obliged.close(CloseReason { code: close_code(&frame.payload), text: "" });
        } else {
            obliged.push(Outbound::Pong(Bytes::copy_from_slice(&frame.payload)));
        }
        std::future::ready(Ok::<(), std::io::Error>(()))
    };
    let closed = handler.mailbox.clone();
    loop {
        let frame = tokio::select! {
            frame = read.read_frame(&mut obligated) => frame,
            reason = closed.closed() => return reason,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => return close_reason(&error),
        };
        handler.mailbox.heard();
        match frame.opcode {
            OpCode::Text => match std::str::from_utf8(&frame.payload) {
                Ok(text) => {
                    // Boxed: what a frame leads to (a join awaits Redis)
                    // would otherwise size the future of every socket,
                    // idle ones included.
                    if let Some(reason) = Box::pin(handler.on_text(text)).await {
                        return reason;
                    }
                }
                Err(_) => return CloseReason { code: close::INVALID_PAYLOAD, text: "text is not UTF-8" },
            },
            OpCode::Binary => {
                metrics::frame_in("binary");
                let error = FrameError::new("binary_unsupported", "send JSON text frames");
                handler.queue("error", error.encode());
            }
            OpCode::Close => return CloseReason { code: close::NORMAL, text: "" },
            _ => {}
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

/// How long the close frame may take to go out, and how long the peer then
/// has to close its side; a peer that takes longer gets its connection
/// dropped instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// After the close frame went out (and, with the writer gone, a FIN), reads
/// and discards whatever the client still sends until it closes too, for at
/// most [`CLOSE_TIMEOUT`]. Closing a socket with unread data makes the kernel
/// answer with a reset, and a reset can reach the client before it has read
/// the close frame, which would then never tell it why.
async fn linger(reader: FragmentCollectorRead<ReadStream>) {
    let mut raw = reader.into_inner().into_inner();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tokio::io::copy(&mut raw, &mut tokio::io::sink())).await;
}

/// Writes the socket's queue into the socket, everything queued at once,
/// until the socket is asked to close (then writes the close frame) or a
/// write fails.
///
/// The frames go out through one buffer, kept from write to write so that a
/// delivery allocates nothing, and given back after a burst grew it or when
/// a ping round finds that nothing else was written since the last one, so
/// that quiet sockets hold none. What only a closing socket needs (the close
/// frame's timeout) is boxed: it would otherwise size every socket's writer.
async fn write_loop(mut out: OwnedWriteHalf, mailbox: Mailbox) {
    let mut batch = Vec::new();
    // Whether anything but pings went out since the last ping.
    let mut busy = false;
    loop {
        batch.clear();
        tokio::select! {
            biased;
            reason = mailbox.closed() => {
                frame_into(&mut batch, Frame::close(reason.code, reason.text.as_bytes()));
                let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, out.write_all(&batch))).await;
                return;
            }
            () = mailbox.queued() => {}
        }
        let mut pings = 0;
        mailbox.take(BATCH_BYTES, |outbound| match outbound {
            Outbound::Text(bytes) => frame_into(&mut batch, Frame::text(Payload::Borrowed(&bytes))),
            Outbound::Pong(bytes) => frame_into(&mut batch, Frame::pong(Payload::Borrowed(&bytes))),
            Outbound::Ping => {
                pings += 1;
                frame_into(&mut batch, Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"")));
            }
        });
        if batch.is_empty() {
            continue;
        }
        if !write_batch(&mut out, &batch, &mailbox).await {
            return;
        }
        metrics::bytes_out(batch.len());
        let only_pings = pings > 0 && batch.len() == pings * EMPTY_PING_BYTES;
        if only_pings && !std::mem::take(&mut busy) {
            batch = Vec::new();
            mailbox.release_if_empty();
        } else {
            busy |= !only_pings;
        }
        if batch.capacity() > BATCH_BYTES {
            batch = Vec::new();
        }
    }
}

/// An empty ping frame: two header bytes.
const EMPTY_PING_BYTES: usize = 2;

/// Writes `batch` whole; `false` when the socket is done: a write failed, or
/// the socket must close and the peer did not take the rest within
/// [`CLOSE_TIMEOUT`] (a peer that stopped reading; the frame is cut short,
/// so no close frame can follow).
async fn write_batch(out: &mut OwnedWriteHalf, batch: &[u8], mailbox: &Mailbox) -> bool {
    let mut written = 0;
    while written < batch.len() {
        let wrote = tokio::select! {
            biased;
            wrote = out.write(&batch[written..]) => wrote,
            _ = mailbox.closed() => {
                let rest = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, out.write_all(&batch[written..]))).await;
                return matches!(rest, Ok(Ok(())));
            }
        };
        match wrote {
            Ok(n) if n > 0 => written += n,
            _ => {
                mailbox.close(CloseReason { code: close::NORMAL, text: "" });
                return false;
            }
        }
    }
    true
}

/// Appends one unmasked frame (a server's) to `batch`.
fn frame_into(batch: &mut Vec<u8>, mut frame: Frame<'_>) {
    let mut head = [0; 10];
    let head_len = frame.fmt_head(&mut head);
    batch.reserve(head_len + frame.payload.len());
    batch.extend_from_slice(&head[..head_len]);
    batch.extend_from_slice(&frame.payload);
}
