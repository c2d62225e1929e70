//! A WebSocket client whose writer runs on its own task (or, with
//! [`open_over`], an event-stream client behind the same [`Reader`] and
//! [`Writer`]: see [`crate::stream`]).
//!
//! Two ways to use it:
//!
//! - [`Socket`]: the reader runs on a task too, and the owner receives
//!   decoded [`Event`]s from a channel, which it can select on beside timers
//!   (the chaos agents).
//! - [`open`]: the owner gets the [`Reader`] and reads frames in place, with
//!   no channel and no JSON tree per frame (the load runs, where the client's
//!   own CPU time competes with the server's).
//!
//! Either way pings are answered and a close is echoed by the writer task,
//! and the TCP connection can be made from a chosen local address (one
//! source address reaches only about 28 k ports towards one server port)
//! and with [`Tuning`] (a client that stops reading).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError};
use http::{Request, header};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::ReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// The upgraded connection under a socket.
pub type Stream = TokioIo<Upgraded>;

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

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status) => write!(f, "upgrade answered {status}"),
            Self::Failed(reason) => f.write_str(reason),
        }
    }
}

enum Out {
    Text(String),
    Pong(Bytes),
    Close,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out")
    }
}

/// Local ports [`tcp_connect`] hands out in turn when it binds.
const LOCAL_PORTS: std::ops::Range<u32> = 10_000..65_000;
static NEXT_PORT: AtomicU32 = AtomicU32::new(LOCAL_PORTS.start);

/// Options of a client's TCP socket, set before it connects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// `SO_RCVBUF`: a small one makes a client that stops reading fill up
    /// after a few KiB instead of the ~128 KiB-32 MiB autotuning allows.
    pub recv_buffer: Option<u32>,
    /// `TCP_MAXSEG`: the segment size announced to the server. On loopback
    /// it is ~64 KiB, and Linux sizes the server's send buffer from it (ten
    /// segments, twice): some 3 MiB parked for a client that does not read
    /// before the server's writes block, against ~50 KiB at Ethernet's 1460
    /// with a 2 KiB receive buffer.
    pub max_segment: Option<u32>,
}

impl Tuning {
    fn is_default(self) -> bool {
        self.recv_buffer.is_none() && self.max_segment.is_none()
    }
}

/// A TCP socket for `addr`'s family with `tuning` applied, not connected.
fn tcp_socket(addr: SocketAddr, tuning: Tuning) -> std::io::Result<TcpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    if let Some(size) = tuning.recv_buffer {
        socket.set_recv_buffer_size(size as usize)?;
    }
    if let Some(mss) = tuning.max_segment {
        socket.set_tcp_mss(mss)?;
    }
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// Connects to `addr`, from `local` when given, with `tuning`.
///
/// A bound socket gets its port from a counter here, not from the kernel:
/// `bind` to port 0 makes the kernel search its port table, which gets
/// slower with every socket held (tens of µs of system time per socket at
/// 20 k). `SO_REUSEADDR` lets a port whose old connection is in `TIME_WAIT`
/// be used again; a port that is taken is skipped.
///
/// # Errors
/// When the connection cannot be made.
pub async fn tcp_connect(addr: SocketAddr, local: Option<IpAddr>, tuning: Tuning) -> std::io::Result<TcpStream> {
    let Some(ip) = local else {
        if tuning.is_default() {
            return TcpStream::connect(addr).await;
        }
        return tcp_socket(addr, tuning)?.connect(addr).await;
    };
    let mut last = None;
    for _ in 0..64 {
        let port =
            LOCAL_PORTS.start + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % (LOCAL_PORTS.end - LOCAL_PORTS.start);
        let socket = tcp_socket(addr, tuning)?;
        socket.set_reuseaddr(true)?;
        let port = u16::try_from(port).unwrap_or(u16::MAX);
        let attempt = match socket.bind(SocketAddr::new(ip, port)) {
            Ok(()) => socket.connect(addr).await,
            Err(error) => Err(error),
        };
        match attempt {
            Err(error) if matches!(error.kind(), ErrorKind::AddrInUse | ErrorKind::AddrNotAvailable) => {
                last = Some(error);
            }
            result => return result,
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free local port")))
}

/// Opens `/ws` at `addr` with the session cookie, from `local` when given.
///
/// # Errors
/// [`Refused`] when the upgrade does not succeed.
pub async fn upgrade(
    addr: SocketAddr,
    local: Option<IpAddr>,
    cookie: &str,
    tuning: Tuning,
) -> Result<WebSocket<Stream>, Refused> {
    let stream = tcp_connect(addr, local, tuning).await.map_err(|e| Refused::Failed(e.to_string()))?;
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
    match fastwebsockets::handshake::client(&testkit::ws::SpawnExecutor, request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(WebSocketError::InvalidStatusCode(status)) => Err(Refused::Status(status)),
        Err(error) => Err(Refused::Failed(error.to_string())),
    }
}

/// Opens a socket and starts its writer task; the caller reads.
///
/// # Errors
/// [`Refused`] when the upgrade does not succeed.
pub async fn open(addr: SocketAddr, local: Option<IpAddr>, cookie: &str) -> Result<(Reader, Writer), Refused> {
    open_tuned(addr, local, cookie, Tuning::default()).await
}

/// [`open`], with socket options.
///
/// # Errors
/// [`Refused`] when the upgrade does not succeed.
pub async fn open_tuned(
    addr: SocketAddr,
    local: Option<IpAddr>,
    cookie: &str,
    tuning: Tuning,
) -> Result<(Reader, Writer), Refused> {
    let ws = upgrade(addr, local, cookie, tuning).await?;
    let (read, mut write) = ws.split(tokio::io::split);
    let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
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
    let reader = Reader { side: ReadSide::Ws { read: FragmentCollectorRead::new(read), out: out.clone() } };
    Ok((reader, Writer { side: WriteSide::Ws(out) }))
}

/// Opens `/ws` or `/sse` at `addr` with the session cookie, from `local`
/// when given; the caller reads.
///
/// # Errors
/// [`Refused`] when the socket or stream is not opened.
pub async fn open_over(
    addr: SocketAddr,
    local: Option<IpAddr>,
    cookie: &str,
    transport: Transport,
) -> Result<(Reader, Writer), Refused> {
    match transport {
        Transport::Ws => open(addr, local, cookie).await,
        Transport::Sse => {
            let (events, poster) = crate::stream::open(addr, local, cookie).await?;
            Ok((Reader { side: ReadSide::Sse(events) }, Writer { side: WriteSide::Sse(poster) }))
        }
    }
}

// === impl Writer ===

/// The sending side of a socket: frames go to its writer task (or, on an
/// event stream, its poster), in order.
#[derive(Debug, Clone)]
pub struct Writer {
    side: WriteSide,
}

#[derive(Debug, Clone)]
enum WriteSide {
    Ws(mpsc::UnboundedSender<Out>),
    Sse(crate::stream::Poster),
}

impl Writer {
    /// Queues a JSON frame; false when the socket is gone.
    pub fn send(&self, frame: &Value) -> bool {
        self.send_text(frame.to_string())
    }

    /// Queues a text frame; false when the socket is gone.
    pub fn send_text(&self, text: String) -> bool {
        match &self.side {
            WriteSide::Ws(out) => out.send(Out::Text(text)).is_ok(),
            WriteSide::Sse(poster) => poster.send_text(text),
        }
    }

    /// Closes the socket from our side.
    pub fn close(&self) {
        match &self.side {
            WriteSide::Ws(out) => {
                let _ = out.send(Out::Close);
            }
            WriteSide::Sse(poster) => poster.close(),
        }
    }
}

// === impl Reader ===

/// What [`Reader::next`] returns.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame's payload (not checked for JSON).
    Text(Payload<'static>),
    /// The server closed (code), or the connection broke (`None`).
    Closed(Option<u16>),
}

/// How a connection ended, as its reading side saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A close frame: its code (1005 when it had none) and reason.
    Close(u16, String),
    /// The stream ended without a close frame (perhaps in the middle of a
    /// frame).
    Eof,
    /// The connection was reset.
    Reset,
    /// Reading failed otherwise (a broken frame, say).
    Failed(String),
    /// Nothing came for the quiet period: still open.
    Open,
}

/// The receiving side of a socket, read by its owner. Pings are answered
/// and a close is echoed through the writer.
pub struct Reader {
    side: ReadSide,
}

enum ReadSide {
    Ws { read: FragmentCollectorRead<ReadHalf<Stream>>, out: mpsc::UnboundedSender<Out> },
    Sse(crate::stream::Events),
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

impl Reader {
    /// The next text frame, or the end of the connection.
    pub async fn next(&mut self) -> Incoming {
        if let ReadSide::Sse(events) = &mut self.side {
            return events.next().await;
        }
        loop {
            match self.frame().await {
                Ok(frame) if frame.opcode == OpCode::Text => return Incoming::Text(frame.payload),
                Ok(frame) if frame.opcode == OpCode::Close => {
                    return Incoming::Closed(Some(close_of(&frame.payload).0));
                }
                Ok(_) => {}
                Err(_) => return Incoming::Closed(None),
            }
        }
    }

    /// Reads and drops frames until the connection ends, or until nothing
    /// comes for `quiet`; returns the text frames read and how it ended.
    pub async fn drain(&mut self, quiet: Duration) -> (u64, End) {
        let mut texts = 0;
        if let ReadSide::Sse(events) = &mut self.side {
            loop {
                let Ok(incoming) = tokio::time::timeout(quiet, events.next()).await else { return (texts, End::Open) };
                match incoming {
                    Incoming::Text(_) => texts += 1,
                    Incoming::Closed(Some(code)) => return (texts, End::Close(code, String::new())),
                    Incoming::Closed(None) => return (texts, End::Eof),
                }
            }
        }
        loop {
            let Ok(read) = tokio::time::timeout(quiet, self.frame()).await else { return (texts, End::Open) };
            let end = match read {
                Ok(frame) if frame.opcode == OpCode::Close => {
                    let (code, reason) = close_of(&frame.payload);
                    End::Close(code, reason)
                }
                Ok(frame) => {
                    texts += u64::from(frame.opcode == OpCode::Text);
                    continue;
                }
                Err(WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) => End::Eof,
                Err(WebSocketError::IoError(error)) if error.kind() == ErrorKind::ConnectionReset => End::Reset,
                Err(WebSocketError::IoError(error)) if error.kind() == ErrorKind::UnexpectedEof => End::Eof,
                Err(error) => End::Failed(error.to_string()),
            };
            return (texts, end);
        }
    }

    /// The next frame; pings are answered and a close echoed on the way.
    async fn frame(&mut self) -> Result<Frame<'static>, WebSocketError> {
        let ReadSide::Ws { read, out } = &mut self.side else { return Err(WebSocketError::ConnectionClosed) };
        let out = out.clone();
        let mut obligated = move |frame: Frame<'_>| {
            let item = match frame.opcode {
                OpCode::Close => Out::Close,
                _ => Out::Pong(Bytes::copy_from_slice(&frame.payload)),
            };
            let result = out.send(item).map_err(|_| std::io::Error::other("writer gone"));
            std::future::ready(result)
        };
        read.read_frame(&mut obligated).await
    }
}

/// A close frame's code (1005 when it has none) and reason.
fn close_of(payload: &[u8]) -> (u16, String) {
    match payload {
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), String::from_utf8_lossy(reason).into_owned()),
        _ => (1005, String::new()),
    }
}

// === impl Socket ===

/// How a client reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A WebSocket at `/ws`.
    #[default]
    Ws,
    /// An event stream at `/sse`, with frames POSTed back.
    Sse,
}

/// An open socket (or event stream) whose frames arrive, decoded, on a
/// channel.
#[derive(Debug)]
pub struct Socket {
    writer: Writer,
    /// Frames and the end of the connection, in order.
    pub events: mpsc::Receiver<Event>,
}

impl Socket {
    /// Opens `/ws` at `addr` with the session cookie.
    ///
    /// # Errors
    /// [`Refused`] when the upgrade does not succeed.
    pub async fn connect(addr: SocketAddr, cookie: &str) -> Result<Self, Refused> {
        Self::connect_over(addr, cookie, Transport::Ws).await
    }

    /// Opens `/ws` or `/sse` at `addr` with the session cookie.
    ///
    /// # Errors
    /// [`Refused`] when the socket or stream is not opened.
    pub async fn connect_over(addr: SocketAddr, cookie: &str, transport: Transport) -> Result<Self, Refused> {
        let (reader, writer) = open_over(addr, None, cookie, transport).await?;
        let (events_tx, events) = mpsc::channel(1024);
        tokio::spawn(read_loop(reader, events_tx));
        Ok(Self { writer, events })
    }

    /// Queues a JSON frame; false when the socket is gone.
    pub fn send(&self, frame: &Value) -> bool {
        self.writer.send(frame)
    }

    /// Closes the socket from our side.
    pub fn close(&self) {
        self.writer.close();
    }
}

async fn read_loop(mut reader: Reader, events: mpsc::Sender<Event>) {
    loop {
        let event = match reader.next().await {
            Incoming::Text(payload) => match serde_json::from_slice(&payload) {
                Ok(value) => Event::Json(value),
                Err(_) => continue,
            },
            Incoming::Closed(code) => {
                let _ = events.send(Event::Closed(code)).await;
                return;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
