//! A WebSocket client whose reader and writer run on their own tasks: the
//! owner sends with [`Socket::send`] and receives [`Event`]s from a channel,
//! which it can select on beside timers.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http::{Request, header};
use http_body_util::Empty;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What the reader saw.
#[derive(Debug, Clone)]
pub enum Event {
    /// A JSON text frame.
    Json(Value),
    /// The server closed (code), or the connection broke (`None`).
    Closed(Option<u16>),
}

/// Why a socket did not open.
#[derive(Debug)]
pub enum Refused {
    /// The upgrade was answered with this HTTP status.
    Status(u16),
    /// Anything else (connection refused, reset, ...).
    Failed(String),
}

enum Out {
    Text(String),
    Pong(Bytes),
    Close,
}

/// An open socket.
#[derive(Debug)]
pub struct Socket {
    out: mpsc::UnboundedSender<Out>,
    /// Frames and the end of the connection, in order.
    pub events: mpsc::Receiver<Event>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out")
    }
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

impl Socket {
    /// Opens `/ws` at `addr` with the session cookie.
    ///
    /// # Errors
    /// [`Refused`] when the upgrade does not succeed.
    pub async fn connect(addr: SocketAddr, cookie: &str) -> Result<Self, Refused> {
        let stream = TcpStream::connect(addr).await.map_err(|e| Refused::Failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let request = Request::builder()
            .method("GET")
            .uri("/ws")
            .header(header::HOST, addr.to_string())
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .header(header::COOKIE, format!("jsessionid={cookie}"))
            .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Refused::Failed(e.to_string()))?;
        let ws = match fastwebsockets::handshake::client(&SpawnExecutor, request, stream).await {
            Ok((ws, _)) => ws,
            Err(WebSocketError::InvalidStatusCode(status)) => return Err(Refused::Status(status)),
            Err(error) => return Err(Refused::Failed(error.to_string())),
        };
        let (read, mut write) = ws.split(tokio::io::split);
        let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let (events_tx, events) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(item) = out_rx.recv().await {
                let result = match &item {
                    Out::Text(text) => write.write_frame(Frame::text(Payload::Borrowed(text.as_bytes()))).await,
                    Out::Pong(bytes) => write.write_frame(Frame::pong(Payload::Borrowed(bytes))).await,
                    Out::Close => {
                        let _ = write.write_frame(Frame::close(1000, b"")).await;
                        break;
                    }
                };
                if result.is_err() {
                    break;
                }
            }
        });
        let pongs = out.clone();
        tokio::spawn(read_loop(FragmentCollectorRead::new(read), pongs, events_tx));
        Ok(Self { out, events })
    }

    /// Queues a JSON frame; false when the socket is gone.
    pub fn send(&self, frame: &Value) -> bool {
        self.out.send(Out::Text(frame.to_string())).is_ok()
    }

    /// Closes the socket from our side.
    pub fn close(&self) {
        let _ = self.out.send(Out::Close);
    }
}

async fn read_loop<S: tokio::io::AsyncRead + Unpin>(
    mut read: FragmentCollectorRead<S>,
    pongs: mpsc::UnboundedSender<Out>,
    events: mpsc::Sender<Event>,
) {
    let mut obligated = move |frame: Frame<'_>| {
        let item = match frame.opcode {
            OpCode::Close => Out::Close,
            _ => Out::Pong(Bytes::copy_from_slice(&frame.payload)),
        };
        let result = pongs.send(item).map_err(|_| std::io::Error::other("writer gone"));
        std::future::ready(result)
    };
    loop {
        let event = match read.read_frame(&mut obligated).await {
            Ok(frame) if frame.opcode == OpCode::Text => match serde_json::from_slice(&frame.payload) {
                Ok(value) => Event::Json(value),
                Err(_) => continue,
            },
            Ok(frame) if frame.opcode == OpCode::Close => {
                let code = match &*frame.payload {
                    [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
                    _ => Some(1005),
                };
                let _ = events.send(Event::Closed(code)).await;
                return;
            }
            Ok(_) => continue,
            Err(_) => {
                let _ = events.send(Event::Closed(None)).await;
                return;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
