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
//! [`crate::writer`] put everything queued into one buffer and one `write`
//! call, instead of one system call per frame.

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocketError};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::conn::{Handler, Shared};
use crate::mailbox::{CloseReason, Outbound, close};
use crate::metrics;
use crate::protocol::FrameError;
use crate::session::Session;
use crate::wire::{self, RequireMask};
use crate::writer::{CLOSE_TIMEOUT, Framing, Writer, write_loop};

/// What the reader reads: bytes hyper read past the handshake, then the
/// socket, checked for masking.
type ReadStream = RequireMask<tokio::io::Chain<std::io::Cursor<Bytes>, OwnedReadHalf>>;

/// The WebSocket transport of a [`Handler`].
#[derive(Debug)]
pub struct WebSocket;

impl WebSocket {
    /// Runs a socket from its `101` to its end: welcome, then frames until
    /// either side closes. `early` is what hyper read past the handshake (a
    /// client may pipeline its first frames). The user's socket count was
    /// taken at the handshake and is given back at the end.
    ///
    /// The setup is a plain function, and the socket's life a task of its
    /// own: the future every open socket keeps for as long as it lives then
    /// holds what the socket needs and nothing of its setup (an async
    /// function keeps room for every local it ever held, moved or not).
    pub fn start(stream: TcpStream, early: &[u8], session: Session, shared: Shared) {
        let socket = Self::open(stream, early, session, shared);
        let tracker = socket.handler.shared.tracker.clone();
        tracker.spawn(socket.run());
    }

    /// Sets a socket up: its reader, its writer task, its place in the
    /// registry, its welcome.
    fn open(stream: TcpStream, early: &[u8], session: Session, shared: Shared) -> Open {
        // Owned halves need no lock between the reader and the writer.
        let (read, write) = stream.into_split();
        // Copied, because the slice keeps hyper's whole read buffer alive for
        // as long as the socket lives.
        let early = Bytes::copy_from_slice(early);
        let read = RequireMask::new(std::io::Cursor::new(early).chain(read));
        let (mut read, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        read.set_max_message_size(shared.limits.max_message_bytes);
        read.set_auto_pong(true);
        read.set_auto_close(true);
        read.set_auto_apply_mask(true);
        // No 8 KiB read buffer per socket: reads take what frames need.
        read.release_read_buffer();

        let handler = Handler::open(session, shared, None);
        let writer = handler.shared.tracker.spawn(write_loop(Writer::<WsFrames>::new(write), handler.mailbox.clone()));
        Open { handler, reader: FragmentCollectorRead::new(read), writer }
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

/// After the close frame went out (and, with the writer gone, a FIN), reads
/// and discards whatever the client still sends until it closes too, for at
/// most [`CLOSE_TIMEOUT`]. Closing a socket with unread data makes the kernel
/// answer with a reset, and a reset can reach the client before it has read
/// the close frame, which would then never tell it why.
async fn linger(reader: FragmentCollectorRead<ReadStream>) {
    let mut raw = reader.into_inner().into_inner();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tokio::io::copy(&mut raw, &mut tokio::io::sink())).await;
}

/// WebSocket frames, unmasked (a server's).
pub(crate) struct WsFrames;

impl Framing for WsFrames {
    /// An empty ping frame: two header bytes.
    const PING_BYTES: usize = 2;
    const WRITES_ARE_HEARD: bool = false;

    fn frame(batch: &mut Vec<u8>, outbound: Outbound) {
        match outbound {
            Outbound::Text(bytes) => frame_into(batch, Frame::text(Payload::Borrowed(&bytes))),
            Outbound::Pong(bytes) => frame_into(batch, Frame::pong(Payload::Borrowed(&bytes))),
            Outbound::Ping => frame_into(batch, Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))),
        }
    }

    fn close(batch: &mut Vec<u8>, reason: CloseReason) {
        frame_into(batch, Frame::close(reason.code, reason.text.as_bytes()));
    }
}

/// Appends one unmasked frame (a server's) to `batch`.
fn frame_into(batch: &mut Vec<u8>, mut frame: Frame<'_>) {
    let mut head = [0; 10];
    let head_len = frame.fmt_head(&mut head);
    batch.reserve(head_len + frame.payload.len());
    batch.extend_from_slice(&head[..head_len]);
    batch.extend_from_slice(&frame.payload);
}
