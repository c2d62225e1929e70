//! A client that speaks Warren's JSON protocol, for tests: over a WebSocket
//! ([`connect`]) or an event stream ([`crate::sse::connect`]), behind one
//! [`Socket`], so that a test runs on either.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http::{Request, header};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// How long a test waits for one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a socket was not opened.
#[derive(Debug)]
pub enum Refused {
    /// The server answered the upgrade with this HTTP status.
    Status(u16),
    /// Anything else.
    Other(anyhow::Error),
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A JSON text frame.
    Json(Value),
    /// The server closed with this code and reason.
    Close(u16, String),
}

/// An open socket. Frames read while looking for a particular one are kept,
/// in order, for the next read: no helper drops a frame.
pub struct Socket {
    link: Link,
    kept: std::collections::VecDeque<Value>,
    /// How long a read waits for one frame.
    patience: Duration,
}

/// What carries a socket's frames.
enum Link {
    Ws(FragmentCollector<TokioIo<Upgraded>>),
    Sse(crate::sse::Stream),
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Socket")
    }
}

/// Runs hyper's client connection tasks on Tokio (the WebSocket handshake
/// needs one); shared with the load generator's client.
#[derive(Debug, Clone, Copy)]
pub struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

/// Opens `/ws` at `addr` with an optional session cookie value (sent as
/// `jsessionid`) and `Origin`.
///
/// # Errors
/// [`Refused::Status`] when the upgrade is answered with another status.
pub async fn connect(addr: SocketAddr, cookie: Option<&str>, origin: Option<&str>) -> Result<Socket, Refused> {
    let header = cookie.map(|value| format!("{}={value}", crate::http::DEFAULT_COOKIE_NAME));
    connect_with_cookies(addr, header.as_deref(), origin).await
}

/// Opens `/ws` at `addr` with a whole `Cookie` header and reads its
/// `welcome`, retrying for up to `patience` the answer a client retries
/// (503: the gateway cannot reach Redis, during a failover say); any other
/// refusal is an error.
///
/// # Errors
/// Another refusal, 503 for longer than `patience`, or no `welcome`.
pub async fn connect_retrying(addr: SocketAddr, cookies: &str, patience: Duration) -> anyhow::Result<Socket> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match connect_with_cookies(addr, Some(cookies), None).await {
            Ok(mut socket) => {
                let welcome = socket.next_json().await?;
                anyhow::ensure!(welcome["type"] == "welcome", "first frame is welcome: {welcome}");
                return Ok(socket);
            }
            Err(Refused::Status(503)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(refused) => anyhow::bail!("the socket was refused: {refused:?}"),
        }
    }
}

/// Opens `/ws` at `addr` with an optional whole `Cookie` header
/// (`name=value; ...`, e.g. [`crate::http::Client::cookie_header`]) and `Origin`.
///
/// # Errors
/// [`Refused::Status`] when the upgrade is answered with another status.
pub async fn connect_with_cookies(
    addr: SocketAddr,
    cookies: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, Refused> {
    let stream = TcpStream::connect(addr).await.map_err(|e| Refused::Other(e.into()))?;
    let mut request = Request::builder()
        .method("GET")
        .uri("/ws")
        .header(header::HOST, addr.to_string())
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13");
    if let Some(cookies) = cookies {
        request = request.header(header::COOKIE, cookies);
    }
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| Refused::Other(e.into()))?;
    match fastwebsockets::handshake::client(&SpawnExecutor, request, stream).await {
        Ok((ws, _)) => Ok(Socket::over(Link::Ws(FragmentCollector::new(ws)))),
        Err(WebSocketError::InvalidStatusCode(status)) => Err(Refused::Status(status)),
        Err(error) => Err(Refused::Other(error.into())),
    }
}

impl Socket {
    fn over(link: Link) -> Self {
        Self { link, kept: std::collections::VecDeque::new(), patience: FRAME_TIMEOUT }
    }

    /// A socket on an event stream whose `welcome` was read already (it is
    /// kept, and read first).
    pub(crate) fn over_stream(stream: crate::sse::Stream, welcome: Value) -> Self {
        let mut socket = Self::over(Link::Sse(stream));
        socket.kept.push_back(welcome);
        socket
    }

    /// The event stream's token; `None` on a WebSocket.
    pub fn stream_token(&self) -> Option<&str> {
        match &self.link {
            Link::Ws(_) => None,
            Link::Sse(stream) => Some(stream.token()),
        }
    }

    /// Waits up to `patience` for each frame instead of [`FRAME_TIMEOUT`]:
    /// for bulk tests, whose point is what arrives, not how fast, on a
    /// machine that may be busy with other tests.
    #[must_use]
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Sends a JSON frame.
    ///
    /// # Errors
    /// When the socket is gone.
    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        self.send_text(&frame.to_string()).await
    }

    /// Sends raw text (for malformed frames).
    ///
    /// # Errors
    /// When the socket is gone.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        match &mut self.link {
            Link::Ws(ws) => ws.write_frame(Frame::text(Payload::Borrowed(text.as_bytes()))).await?,
            Link::Sse(stream) => stream.post(text).await?,
        }
        Ok(())
    }

    /// Sends a binary frame.
    ///
    /// # Errors
    /// When the socket is gone.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let Link::Ws(ws) = &mut self.link else { bail!("an event stream carries no binary frames") };
        ws.write_frame(Frame::binary(Payload::Borrowed(bytes))).await?;
        Ok(())
    }

    /// The next frame, within [`FRAME_TIMEOUT`] (or the socket's patience).
    ///
    /// # Errors
    /// On timeout, a broken socket or a frame that is not JSON.
    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        let ws = match &mut self.link {
            Link::Ws(ws) => ws,
            Link::Sse(stream) => {
                return tokio::time::timeout(self.patience, stream.next_event()).await.context("no event in time")?;
            }
        };
        let frame = tokio::time::timeout(self.patience, ws.read_frame()).await.context("no frame in time")??;
        match frame.opcode {
            OpCode::Text => Ok(Event::Json(serde_json::from_slice(&frame.payload)?)),
            OpCode::Close => {
                let code = match &*frame.payload {
                    [high, low, ..] => u16::from_be_bytes([*high, *low]),
                    _ => 1005,
                };
                let reason =
                    frame.payload.get(2..).map(|r| String::from_utf8_lossy(r).into_owned()).unwrap_or_default();
                Ok(Event::Close(code, reason))
            }
            other => bail!("unexpected {other:?} frame"),
        }
    }

    /// The next JSON frame.
    ///
    /// # Errors
    /// On timeout, or when the socket closes instead.
    pub async fn next_json(&mut self) -> anyhow::Result<Value> {
        if let Some(kept) = self.kept.pop_front() {
            return Ok(kept);
        }
        self.read_json().await
    }

    /// Skips frames until the close frame: its code and reason.
    ///
    /// # Errors
    /// On timeout, or a broken socket.
    pub async fn closed_with(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            if let Event::Close(code, reason) = self.next_event().await? {
                return Ok((code, reason));
            }
        }
    }

    async fn read_json(&mut self) -> anyhow::Result<Value> {
        match self.next_event().await? {
            Event::Json(value) => Ok(value),
            Event::Close(code, reason) => bail!("socket closed: {code} {reason}"),
        }
    }

    /// Skips frames until one of this `type` arrives.
    ///
    /// # Errors
    /// As [`Socket::next_json`].
    pub async fn next_of_type(&mut self, kind: &str) -> anyhow::Result<Value> {
        self.next_matching(|frame| frame["type"] == kind).await
    }

    /// Forgets the frames kept so far.
    pub fn discard_kept(&mut self) {
        self.kept.clear();
    }

    /// The first frame (kept or new) that `wanted` accepts; others are kept.
    ///
    /// # Errors
    /// As [`Socket::next_json`].
    pub async fn next_matching(&mut self, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        if let Some(index) = self.kept.iter().position(&wanted) {
            return Ok(self.kept.remove(index).unwrap_or_default());
        }
        loop {
            let frame = self.read_json().await?;
            if wanted(&frame) {
                return Ok(frame);
            }
            self.kept.push_back(frame);
        }
    }

    /// Collects `message` frames of `room` until one with `id >= up_to`.
    ///
    /// # Errors
    /// As [`Socket::next_json`].
    pub async fn messages_until(&mut self, room: &str, up_to: u64) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let frame = self.next_matching(|f| f["type"] == "message" && f["room"] == room).await?;
            let id = frame["id"].as_u64().unwrap_or_default();
            out.push(frame);
            if id >= up_to {
                return Ok(out);
            }
        }
    }

    /// Joins a room and waits for `joined`.
    ///
    /// # Errors
    /// When the join is refused (an error frame), or as [`Socket::next_json`].
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> anyhow::Result<()> {
        let mut frame = serde_json::json!({ "type": "join", "room": room });
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        self.send(&frame).await?;
        // An error without a cid answers a frame such as this join.
        let answer =
            self.next_matching(|f| f["type"] == "joined" || (f["type"] == "error" && f["cid"].is_null())).await?;
        anyhow::ensure!(answer["type"] == "joined", "the join was refused: {answer}");
        anyhow::ensure!(answer["room"] == room, "joined the wrong room: {answer}");
        Ok(())
    }

    /// Sends a message and waits for its ack; returns the id. Like any client
    /// that follows the protocol, it sends again with the same `cid` after a
    /// retryable error (`unavailable`, `timeout`), a few times.
    ///
    /// # Errors
    /// When a non-retryable error frame answers, when retries run out, or as
    /// [`Socket::next_json`].
    pub async fn send_message(&mut self, room: &str, text: &str, cid: &str) -> anyhow::Result<u64> {
        const ATTEMPTS: u32 = 4;
        let frame = serde_json::json!({ "type": "send", "room": room, "text": text, "cid": cid });
        let mut attempt = 1;
        loop {
            self.send(&frame).await?;
            let answer =
                self.next_matching(|f| f["cid"] == cid && (f["type"] == "ack" || f["type"] == "error")).await?;
            if answer["type"] == "ack" {
                return answer["id"].as_u64().context("ack without id");
            }
            let retryable = matches!(answer["code"].as_str(), Some("unavailable" | "timeout"));
            if !retryable || attempt == ATTEMPTS {
                bail!("send refused (attempt {attempt}): {answer}");
            }
            eprintln!("testkit: send {cid} answered {answer}; sending again with the same cid");
            tokio::time::sleep(Duration::from_millis(500)).await;
            attempt += 1;
        }
    }
}
