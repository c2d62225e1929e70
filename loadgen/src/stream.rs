//! The event-stream transport for virtual users: `GET /sse` read as events
//! on one connection, the user's frames `POST`ed in order on another, kept
//! alive. Behind [`crate::socket::Socket`], so that a user runs the same on
//! either transport.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::socket::{Event, Refused};

/// The sending side of a stream: frames go out in order, one `POST` each.
#[derive(Debug, Clone)]
pub struct Poster {
    frames: mpsc::UnboundedSender<String>,
    /// Cancelled to end the stream (either side).
    end: CancellationToken,
}

impl Poster {
    /// Queues a frame; false when the stream is gone.
    pub fn send_text(&self, text: String) -> bool {
        !self.end.is_cancelled() && self.frames.send(text).is_ok()
    }

    /// Ends the stream from our side.
    pub fn close(&self) {
        self.end.cancel();
    }
}

/// Opens `/sse` at `addr` with the session cookie; events arrive on the
/// channel, `welcome` first.
///
/// # Errors
/// [`Refused`] when the stream is not opened.
pub async fn open(addr: SocketAddr, cookie: &str) -> Result<(mpsc::Receiver<Event>, Poster), Refused> {
    let cookie = format!("{}={cookie}", testkit::http::DEFAULT_COOKIE_NAME);
    let mut sender = connect(addr).await.map_err(|e| Refused::Failed(e.to_string()))?;
    let request = Request::get("/sse")
        .header(header::HOST, addr.to_string())
        .header(header::COOKIE, &cookie)
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Refused::Failed(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| Refused::Failed(e.to_string()))?;
    if response.status() != StatusCode::OK {
        return Err(Refused::Status(response.status().as_u16()));
    }
    let (events_tx, events) = mpsc::channel(1024);
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let (token_tx, token_rx) = oneshot::channel();
    let end = CancellationToken::new();
    tokio::spawn(read(response.into_body(), events_tx, token_tx, end.clone(), sender));
    tokio::spawn(post(addr, cookie, frames_rx, token_rx, end.clone()));
    Ok((events, Poster { frames, end }))
}

async fn connect<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Reads events until the stream ends or `end`; the stream's token goes to
/// the poster as soon as `welcome` names it.
async fn read(
    mut body: hyper::body::Incoming,
    events: mpsc::Sender<Event>,
    token: oneshot::Sender<String>,
    end: CancellationToken,
    _connection: SendRequest<Empty<Bytes>>,
) {
    let mut token = Some(token);
    let mut buffer: Vec<u8> = Vec::new();
    let closed = 'stream: loop {
        while let Some(at) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..at + 2).collect();
            match parse(&block) {
                Some(Event::Json(frame)) => {
                    if let Some(stream) = frame["stream"].as_str()
                        && let Some(tx) = token.take()
                    {
                        let _ = tx.send(stream.to_owned());
                    }
                    if events.send(Event::Json(frame)).await.is_err() {
                        end.cancel();
                        return;
                    }
                }
                Some(closed @ Event::Closed(_)) => break 'stream closed,
                None => {}
            }
        }
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = end.cancelled() => break Event::Closed(None),
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
            _ => break Event::Closed(None),
        }
    };
    end.cancel();
    let _ = events.send(closed).await;
}

/// One event block: a frame, the close, or `None` for a heartbeat.
fn parse(block: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(block).ok()?;
    let (mut close, mut data) = (false, None);
    for line in text.lines() {
        if line == "event: close" {
            close = true;
        } else if let Some(value) = line.strip_prefix("data: ") {
            data = Some(value);
        }
    }
    let json: Value = serde_json::from_str(data?).ok()?;
    if close {
        return Some(Event::Closed(json["code"].as_u64().and_then(|code| u16::try_from(code).ok())));
    }
    Some(Event::Json(json))
}

/// Posts queued frames in order, each after the answer to the one before;
/// a stream that is gone (404), a lost session (401) or a failure ends it.
async fn post(
    addr: SocketAddr,
    cookie: String,
    mut frames: mpsc::UnboundedReceiver<String>,
    token: oneshot::Receiver<String>,
    end: CancellationToken,
) {
    let token = tokio::select! {
        token = token => token,
        () = end.cancelled() => return,
    };
    let Ok(token) = token else { return };
    let uri = format!("/sse?stream={token}");
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            () = end.cancelled() => return,
        };
        let Some(frame) = frame else { return };
        // A kept-alive connection the balancer closed meanwhile fails at
        // once: the frame goes again on a new one (a frame sent twice is
        // harmless: sends carry their cid, joins and pings repeat).
        let mut answered = None;
        for _ in 0..2 {
            if sender.as_ref().is_none_or(SendRequest::is_closed) {
                sender = connect(addr).await.ok();
            }
            let Some(connection) = sender.as_mut() else { break };
            let request = Request::builder()
                .method(Method::POST)
                .uri(&uri)
                .header(header::HOST, addr.to_string())
                .header(header::COOKIE, &cookie)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(frame.clone())));
            let Ok(request) = request else { break };
            match connection.send_request(request).await {
                Ok(response) => {
                    answered = Some(response);
                    break;
                }
                Err(_) => sender = None,
            }
        }
        let Some(response) = answered else {
            end.cancel();
            return;
        };
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status != StatusCode::ACCEPTED {
            tracing::debug!(%status, "a POST to the stream was refused; the stream is gone");
            end.cancel();
            return;
        }
    }
}
