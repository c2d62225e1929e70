//! The event-stream transport for load and chaos clients: `GET /sse` read
//! as events on one connection, the client's frames `POST`ed in order on
//! another, kept alive. Behind [`crate::socket::Reader`] and
//! [`crate::socket::Writer`], so that every run works on either transport.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use fastwebsockets::Payload;

use testkit::sse::EventReader;

use crate::socket::{Incoming, Refused, Tuning, tcp_connect};

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

/// Opens `/sse` at `addr` with the session cookie, from `local` when given:
/// its events to read in place, and the poster for its frames.
///
/// # Errors
/// [`Refused`] when the stream is not opened.
pub async fn open(addr: SocketAddr, local: Option<IpAddr>, cookie: &str) -> Result<(Events, Poster), Refused> {
    let cookie = format!("{}={cookie}", testkit::http::DEFAULT_COOKIE_NAME);
    let stream = tcp_connect(addr, local, Tuning::default()).await.map_err(|e| Refused::Failed(e.to_string()))?;
    let mut connection = handshake(stream).await.map_err(|e| Refused::Failed(e.to_string()))?;
    let request = Request::get("/sse")
        .header(header::HOST, addr.to_string())
        .header(header::COOKIE, &cookie)
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Refused::Failed(e.to_string()))?;
    let response = connection.send_request(request).await.map_err(|e| Refused::Failed(e.to_string()))?;
    if response.status() != StatusCode::OK {
        return Err(Refused::Status(response.status().as_u16()));
    }
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let (token_tx, token_rx) = oneshot::channel();
    let end = CancellationToken::new();
    tokio::spawn(post(addr, cookie, frames_rx, token_rx, end.clone()));
    let events = Events {
        body: response.into_body(),
        reader: EventReader::default(),
        token: Some(token_tx),
        end: end.clone(),
        _connection: connection,
    };
    Ok((events, Poster { frames, end }))
}

async fn handshake<B>(stream: TcpStream) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A stream's events, read in place by their owner.
pub struct Events {
    body: hyper::body::Incoming,
    /// What was read, cut into events.
    reader: EventReader,
    /// Where the stream's token goes once `welcome` names it.
    token: Option<oneshot::Sender<String>>,
    end: CancellationToken,
    /// Keeps the stream's connection open.
    _connection: SendRequest<Empty<Bytes>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    /// The next frame's JSON, or the end of the stream (the close event's
    /// code, or `None` when it broke or was closed from our side).
    pub async fn next(&mut self) -> Incoming {
        loop {
            while let Some(block) = self.reader.next_block() {
                let Some(data) = block.data else { continue };
                if block.event == b"close" {
                    let code = serde_json::from_slice::<Value>(&data).ok().and_then(|close| close["code"].as_u64());
                    self.end.cancel();
                    return Incoming::Closed(Some(code.and_then(|code| u16::try_from(code).ok()).unwrap_or(1005)));
                }
                let data = data.into_owned();
                self.pass_token(&data);
                return Incoming::Text(Payload::Owned(data));
            }
            let frame = tokio::select! {
                frame = self.body.frame() => frame,
                () = self.end.cancelled() => return Incoming::Closed(None),
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.reader.push(&data);
                    }
                }
                _ => {
                    self.end.cancel();
                    return Incoming::Closed(None);
                }
            }
        }
    }

    /// Hands the token `welcome` names to the poster (the first frame).
    fn pass_token(&mut self, data: &[u8]) {
        let Some(token) = self.token.take() else { return };
        let welcome: Value = serde_json::from_slice(data).unwrap_or_default();
        match welcome["stream"].as_str() {
            Some(stream) => {
                let _ = token.send(stream.to_owned());
            }
            None => self.token = Some(token),
        }
    }
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
        // harmless: sends carry their cid, joins and pings repeat). A 429
        // is waited out and the frame posted again, in its place.
        let status = loop {
            let mut answered = None;
            for _ in 0..2 {
                if sender.as_ref().is_none_or(SendRequest::is_closed) {
                    sender = match TcpStream::connect(addr).await {
                        Ok(stream) => handshake(stream).await.ok(),
                        Err(_) => None,
                    };
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
            let wait = retry_after(response.headers());
            let _ = response.into_body().collect().await;
            if status != StatusCode::TOO_MANY_REQUESTS {
                break status;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = end.cancelled() => return,
            }
        };
        if status != StatusCode::ACCEPTED {
            tracing::debug!(%status, "a POST to the stream was refused; the stream is gone");
            end.cancel();
            return;
        }
    }
}

/// A 429's `Retry-After` (seconds), 1 s when it names none.
fn retry_after(headers: &http::HeaderMap) -> std::time::Duration {
    let seconds = headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    std::time::Duration::from_secs(seconds.unwrap_or(1).min(30))
}
