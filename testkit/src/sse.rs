//! Warren's event-stream transport, client side: `GET /sse` read as
//! `text/event-stream`, frames sent with `POST /sse?stream=<token>`.
//! [`connect`] gives the same [`Socket`] as a WebSocket.

use std::borrow::Cow;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::http::Reply;
use crate::ws::{Event, FRAME_TIMEOUT, Refused, Socket};

/// Opens `/sse` at `addr` with an optional whole `Cookie` header and
/// `Origin`, and reads its `welcome` (kept for the socket's first read).
///
/// # Errors
/// [`Refused::Status`] when the stream is answered with another status
/// than 200.
pub async fn connect(addr: SocketAddr, cookies: Option<&str>, origin: Option<&str>) -> Result<Socket, Refused> {
    let stream = TcpStream::connect(addr).await.map_err(|e| Refused::Other(e.into()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| Refused::Other(e.into()))?;
    tokio::spawn(connection);
    let request = with_identity(Request::get("/sse").header(header::HOST, addr.to_string()), cookies, origin)
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Refused::Other(e.into()))?;
    let response = sender.send_request(request).await.map_err(|e| Refused::Other(e.into()))?;
    if response.status() != StatusCode::OK {
        return Err(Refused::Status(response.status().as_u16()));
    }
    let mut stream = Stream {
        addr,
        cookies: cookies.map(str::to_owned),
        origin: origin.map(str::to_owned),
        token: String::new(),
        body: response.into_body(),
        events: EventReader::default(),
        pings: 0,
        _sender: sender,
    };
    let welcome = match tokio::time::timeout(FRAME_TIMEOUT, stream.next_event()).await {
        Ok(Ok(Event::Json(welcome))) => welcome,
        Ok(Ok(other)) => return Err(Refused::Other(anyhow::anyhow!("the stream began with {other:?}"))),
        Ok(Err(error)) => return Err(Refused::Other(error)),
        Err(_) => return Err(Refused::Other(anyhow::anyhow!("no welcome in time"))),
    };
    let Some(token) = welcome["stream"].as_str() else {
        return Err(Refused::Other(anyhow::anyhow!("a welcome without a stream: {welcome}")));
    };
    stream.token = token.to_owned();
    Ok(Socket::over_stream(stream, welcome))
}

fn with_identity(
    mut request: http::request::Builder,
    cookies: Option<&str>,
    origin: Option<&str>,
) -> http::request::Builder {
    if let Some(cookies) = cookies {
        request = request.header(header::COOKIE, cookies);
    }
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request
}

/// An open event stream.
pub struct Stream {
    addr: SocketAddr,
    cookies: Option<String>,
    origin: Option<String>,
    token: String,
    body: Incoming,
    /// What was read, cut into events.
    events: EventReader,
    /// Heartbeat comments seen.
    pings: u64,
    /// Keeps the connection's request side alive.
    _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("addr", &self.addr).field("token", &self.token).finish_non_exhaustive()
    }
}

impl Stream {
    /// Heartbeat comments read so far.
    pub fn pings(&self) -> u64 {
        self.pings
    }

    /// The token `welcome` named.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Posts one frame to the stream.
    ///
    /// # Errors
    /// When the answer is not `202`.
    pub async fn post(&self, frame: &str) -> anyhow::Result<()> {
        let reply = post(self.addr, &self.token, self.cookies.as_deref(), self.origin.as_deref(), frame).await?;
        if reply.status != StatusCode::ACCEPTED {
            bail!("POST /sse answered {}: {}", reply.status, reply.text());
        }
        Ok(())
    }

    /// The next event: a frame or the close. Heartbeats are counted and
    /// skipped.
    ///
    /// # Errors
    /// When the stream ends without a close event, or breaks.
    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        loop {
            while let Some(block) = self.events.next_block() {
                let Some(data) = block.data else {
                    self.pings += u64::from(block.comment);
                    continue;
                };
                let json: Value = serde_json::from_slice(&data)
                    .with_context(|| format!("event data: {}", String::from_utf8_lossy(&data)))?;
                if block.event == b"close" {
                    let code = json["code"].as_u64().and_then(|code| u16::try_from(code).ok()).unwrap_or(1005);
                    return Ok(Event::Close(code, json["reason"].as_str().unwrap_or_default().to_owned()));
                }
                return Ok(Event::Json(json));
            }
            let Some(frame) = self.body.frame().await else { bail!("the stream ended without a close event") };
            if let Ok(data) = frame.context("reading the stream")?.into_data() {
                self.events.push(&data);
            }
        }
    }
}

/// A `text/event-stream` cut into events as its bytes arrive: what this
/// client and the load generator's both read with. Events are cut in place;
/// the rest of the buffer moves once per [`EventReader::push`], not once per
/// event (one read often holds many).
#[derive(Debug, Default)]
pub struct EventReader {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already cut into events.
    parsed: usize,
}

/// One event: its name (`message` when it has none), its data lines joined
/// by `\n` (`None` for a block of comments alone, a heartbeat), and whether
/// it held a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    /// The `event:` field.
    pub event: &'a [u8],
    /// The `data:` lines (one, borrowed, as Warren sends them).
    pub data: Option<Cow<'a, [u8]>>,
    /// Whether a comment line (`: ping`) was in it.
    pub comment: bool,
}

impl EventReader {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.drain(..self.parsed);
        self.parsed = 0;
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole event, if one was read.
    pub fn next_block(&mut self) -> Option<Block<'_>> {
        let at = self.buffer[self.parsed..].windows(2).position(|pair| pair == b"\n\n")?;
        let block = &self.buffer[self.parsed..self.parsed + at];
        self.parsed += at + 2;
        let mut parsed = Block { event: b"message", data: None, comment: false };
        for line in block.split(|&b| b == b'\n') {
            if line.starts_with(b":") {
                parsed.comment = true;
            } else if let Some(name) = line.strip_prefix(b"event: ") {
                parsed.event = name;
            } else if let Some(value) = line.strip_prefix(b"data: ") {
                parsed.data = Some(match parsed.data.take() {
                    None => Cow::Borrowed(value),
                    Some(before) => Cow::Owned([&before[..], b"\n", value].concat()),
                });
            }
        }
        Some(parsed)
    }
}

/// `POST /sse?stream=<token>` with one frame, answered as it comes (for
/// tests of the statuses).
///
/// # Errors
/// When the gateway cannot be reached.
pub async fn post(
    addr: SocketAddr,
    token: &str,
    cookies: Option<&str>,
    origin: Option<&str>,
    frame: &str,
) -> anyhow::Result<Reply> {
    let request = with_identity(Request::builder().method(Method::POST), cookies, origin)
        .uri(format!("/sse?stream={token}"))
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(frame.to_owned())))?;
    crate::http::send(addr, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_across_reads_and_heartbeats_are_comments() {
        let mut reader = EventReader::default();
        reader.push(b"data: {\"a\":1}\n\n: ping\n\nevent: close\ndata: {\"code\"");
        let first = reader.next_block().expect("one event");
        assert_eq!((first.event, first.data.as_deref()), (&b"message"[..], Some(&b"{\"a\":1}"[..])));
        let ping = reader.next_block().expect("a heartbeat");
        assert!(ping.comment && ping.data.is_none());
        assert!(reader.next_block().is_none(), "the close is not whole yet");
        reader.push(b":1000}\n\n");
        let close = reader.next_block().expect("the close");
        assert_eq!((close.event, close.data.as_deref()), (&b"close"[..], Some(&b"{\"code\":1000}"[..])));
        reader.push(b"data: a\ndata: b\n\n");
        assert_eq!(reader.next_block().and_then(|block| block.data).as_deref(), Some(&b"a\nb"[..]));
    }
}
