//! The public port: HTTP/1.1 routes and the WebSocket upgrade.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the chat page with a session (after replacing its id), else the login page |
//! | `POST /login` | a fresh session and `303 /`, or `400` with the reason |
//! | `POST /logout` | the session deleted, `303 /` |
//! | `GET /session` | `200 {"user","instance"}` with a replaced id, or `401` |
//! | `GET /ws` | the upgrade; `401` without a session, `403` for a foreign `Origin` |
//! | `GET /sse` | an event stream, for clients without WebSockets (see [`crate::sse`]); refused as `/ws` is |
//! | `POST /sse?stream=` | one client frame for that stream: `202`, or `404` when no gateway holds it |
//! | `GET /assets/*` | the page's script and styles |
//! | `/api/v1/*` | the server API, for backends (see [`crate::api`]) |
//! | `GET /healthz`, `GET /readyz` | as on the admin port, for platforms whose health checks reach only the public port (Cloud Foundry) |

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::api::{self, Api};
use crate::conn::Shared;
use crate::error::HttpError;
use crate::limits::RetryAfter;
use crate::metrics;
use crate::pages;
use crate::session::{Session, SessionError, SessionStore, UserName};
use crate::sse::{self, Relay};
use crate::takeover::{Slot, Takeover};

/// The largest form body `POST /login` reads.
const MAX_FORM_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request's head may take; more is answered with 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                        img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

type Reply = Response<Full<Bytes>>;
/// What the public port answers: a whole body, or an event stream's head.
type Answer = Response<Either<Full<Bytes>, sse::HeadOnly>>;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    /// Sessions in Redis.
    pub sessions: SessionStore,
    /// What sockets share.
    pub shared: Shared,
    /// Origins allowed besides the page's own.
    pub allowed_origins: Vec<String>,
    /// The server API (off without a token).
    pub api: Api,
    /// What `/readyz` answers (the admin port's check).
    pub readiness: Readiness,
    /// Where event streams' posted frames go (see [`crate::sse`]).
    pub relay: Arc<Relay>,
}

/// The admin port's readiness check, answered on the public port too.
#[derive(Clone)]
pub struct Readiness(pub Arc<dyn ops::admin::Readiness>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness(..)")
    }
}

/// Accepts connections until `shutdown`, then lets requests in flight finish
/// (at most `grace`). Sockets are not waited for here: they drain on their own.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken, grace: Duration) {
    // Plain HTTP connections; sockets leave this set when they take their
    // connection over, and are tracked (and drained) by the socket handlers.
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(stream, peer, app.clone(), shutdown.clone()));
    }
    drop(listener);
    ops::shutdown::wait_tasks(&connections, grace).await;
}

/// Serves one connection's HTTP requests until it ends or a route takes it
/// over ([`crate::takeover`]); at shutdown, finishes the request in flight
/// and closes.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Arc<App>, shutdown: CancellationToken) {
    let takeover = Slot::default();
    let service = {
        let (app, takeover) = (app.clone(), takeover.clone());
        service_fn(move |request| -> BoxFuture<'static, Result<Answer, Infallible>> {
            let (app, takeover) = (app.clone(), takeover.clone());
            // Boxed whole, request and all: hyper keeps room for one
            // request's future (its allocation, not the future) for as long
            // as the connection lives. A box is a pointer; the future itself,
            // with the request in it, is hundreds of bytes, and a route's
            // state machine kilobytes.
            Box::pin(async move { Ok(app.answer(request, peer, &takeover).await) })
        })
    };
    let mut connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // Not reading while an answer is under way: a client may shut its
        // write side after its request and still get the answer, and the
        // wait takes no read buffer.
        .half_close(true)
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    // Run without hyper's shutdown of the connection at its end: a
    // connection taken over is the socket's to close.
    let ended = tokio::select! {
        ended = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => ended,
        () = shutdown.cancelled() => {
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await
        }
    };
    let parts = connection.into_parts();
    match (ended, takeover.take()) {
        (Ok(()), Some(takeover)) => takeover.start(parts.io.into_inner(), &parts.read_buf, &app.shared),
        (Ok(()), None) => {
            let _ = parts.io.into_inner().shutdown().await;
        }
        (Err(error), takeover) => {
            if let Some(takeover) = takeover {
                takeover.abandon(&app.shared);
            }
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

impl App {
    /// Answers one request; the routes that take their connection over
    /// (a WebSocket, an event stream) leave it in `takeover`.
    async fn answer(&self, request: Request<Incoming>, peer: SocketAddr, takeover: &Slot) -> Answer {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/ws") => {
                let span = tracing::info_span!("ws.handshake", %peer);
                match tracing::Instrument::instrument(self.upgrade(request, peer), span).await {
                    Ok((reply, session)) => {
                        takeover.set(Takeover::WebSocket(session));
                        reply.map(Either::Left)
                    }
                    Err(error) => error_reply("/ws", &error).map(Either::Left),
                }
            }
            (&Method::GET, "/sse") => {
                let span = tracing::info_span!("sse.open", %peer);
                match tracing::Instrument::instrument(self.open_stream(request.headers(), peer), span).await {
                    Ok(stream) => {
                        takeover.set(Takeover::EventStream(Box::new(stream)));
                        stream_head().map(Either::Right)
                    }
                    Err(error) => error_reply("/sse", &error).map(Either::Left),
                }
            }
            _ => self.handle(request).await.map(Either::Left),
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Reply {
        let route = (request.method().clone(), request.uri().path().to_owned());
        let result = match (&route.0, route.1.as_str()) {
            (&Method::GET, "/") => self.index(request.headers()).await,
            (&Method::POST, "/login" | "/logout") if self.is_cross_site(request.headers()) => Err(HttpError::CrossSite),
            (&Method::POST, "/login") => self.login(request).await,
            (&Method::POST, "/logout") => self.logout(request.headers()).await,
            (&Method::GET, "/session") => self.session(request.headers()).await,
            (&Method::POST, "/sse") => self.post_to_stream(request).await,
            (&Method::GET, path) if path.starts_with("/assets/") => asset(&path["/assets/".len()..]),
            (&Method::GET, "/healthz") => Ok(plain(StatusCode::OK, "ok")),
            (&Method::GET, "/readyz") => Ok(match self.readiness.0.check() {
                Ok(()) => plain(StatusCode::OK, "ready"),
                Err(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, &reason),
            }),
            (_, path) if path.starts_with(api::PREFIX) => return self.api.handle(request).await,
            (_, "/" | "/login" | "/logout" | "/session" | "/ws" | "/sse") => Err(HttpError::MethodNotAllowed),
            _ => Err(HttpError::NotFound),
        };
        result.unwrap_or_else(|error| error_reply(&route.1, &error))
    }

    async fn index(&self, headers: &HeaderMap) -> Result<Reply, HttpError> {
        match self.sessions.authenticate(headers).await {
            Ok(session) => {
                let fresh = self.sessions.regenerate(&session).await?;
                let mut reply = page(StatusCode::OK, pages::chat());
                self.set_cookie(&mut reply, &fresh);
                Ok(reply)
            }
            Err(error) => match HttpError::from(error) {
                HttpError::Unauthorized(_) => Ok(page(StatusCode::OK, pages::login(""))),
                other => Err(other),
            },
        }
    }

    async fn login(&self, request: Request<Incoming>) -> Result<Reply, HttpError> {
        let previous = self.sessions.id_from_headers(request.headers()).ok();
        let body = Limited::new(request.into_body(), MAX_FORM_BYTES)
            .collect()
            .await
            .map_err(|_| HttpError::BadRequest("the form is too large or was cut off".to_owned()))?
            .to_bytes();
        let user = url::form_urlencoded::parse(&body)
            .find(|(key, _)| key == "user")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        let user = match UserName::try_from(user) {
            Ok(user) => user,
            Err(reason) => return Ok(page(StatusCode::BAD_REQUEST, pages::login(reason))),
        };
        if let Some(previous) = previous {
            // A login always starts a new session: the old id must not live on.
            self.sessions.destroy(&previous).await?;
        }
        let session = self.sessions.create(user).await?;
        tracing::info!(user = session.user.as_str(), "login");
        let mut reply = redirect_home();
        self.set_cookie(&mut reply, &session);
        Ok(reply)
    }

    async fn logout(&self, headers: &HeaderMap) -> Result<Reply, HttpError> {
        match self.sessions.authenticate(headers).await {
            Ok(session) => self.sessions.log_out(&session).await?,
            Err(SessionError::Store(reason)) => return Err(SessionError::Store(reason).into()),
            Err(_) => {}
        }
        let mut reply = redirect_home();
        append_cookie(&mut reply, &self.sessions.clear_cookie());
        Ok(reply)
    }

    async fn session(&self, headers: &HeaderMap) -> Result<Reply, HttpError> {
        let session = self.sessions.authenticate(headers).await?;
        let fresh = self.sessions.regenerate(&session).await?;
        let body = serde_json::json!({ "user": fresh.user.as_str(), "instance": &*self.shared.instance });
        let mut reply = json(StatusCode::OK, &body);
        self.set_cookie(&mut reply, &fresh);
        Ok(reply)
    }

    /// `GET /ws`: the `101` and the session of the socket it opens (its
    /// socket count taken).
    async fn upgrade(&self, mut request: Request<Incoming>, peer: SocketAddr) -> Result<(Reply, Session), HttpError> {
        if !fastwebsockets::upgrade::is_upgrade_request(&request) {
            return Err(HttpError::BadRequest("expected a WebSocket upgrade".to_owned()));
        }
        let session = self.admit(request.headers(), peer).await?;
        // Only the `101` is used: the connection comes back from hyper
        // whole (`crate::takeover`), not through hyper's upgrade.
        let response = match fastwebsockets::upgrade::upgrade(&mut request) {
            Ok((response, _)) => response,
            Err(error) => {
                self.shared.limits.close_socket(session.user.as_str());
                return Err(HttpError::BadRequest(format!("bad upgrade: {error}")));
            }
        };
        let (parts, _) = response.into_parts();
        Ok((Response::from_parts(parts, Full::default()), session))
    }

    /// `GET /sse`: admitted as a WebSocket is, then an event stream.
    async fn open_stream(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<sse::Stream, HttpError> {
        let session = self.admit(headers, peer).await?;
        // On failure the stream was taken out of everything, its socket
        // count given back included (`conn::Handler::finish`).
        Ok(sse::open(session, self.shared.clone(), self.relay.clone()).await?)
    }

    /// `POST /sse?stream=<token>`: one client frame, published to the
    /// stream's channel (see [`crate::sse::relay`]).
    async fn post_to_stream(&self, request: Request<Incoming>) -> Result<Reply, HttpError> {
        if self.is_cross_site(request.headers()) {
            metrics::stream_post("refused");
            return Err(HttpError::ForbiddenOrigin);
        }
        let token = url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .find(|(key, _)| key == "stream")
            .map(|(_, value)| value.into_owned())
            .filter(|token| sse::is_token(token))
            .ok_or_else(|| {
                HttpError::BadRequest("name the stream: POST /sse?stream=<token from welcome>".to_owned())
            })?;
        // Before the session read: the rate protects Redis.
        if let Err(RetryAfter(wait)) = self.shared.limits.stream_post(&token) {
            metrics::stream_post("rate_limited");
            return Err(HttpError::TooManyRequests(wait));
        }
        let session = self.sessions.authenticate(request.headers()).await?;
        let max = self.shared.limits.max_message_bytes;
        let body = Limited::new(request.into_body(), max).collect().await.map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge(max)
            } else {
                HttpError::BadRequest("the frame was cut off".to_owned())
            }
        })?;
        let frame = String::from_utf8(body.to_bytes().to_vec())
            .map_err(|_| HttpError::BadRequest("the frame is not UTF-8".to_owned()))?;
        let channel = sse::relay::channel(session.user.as_str(), &token);
        match self.relay.post(&channel, &frame).await {
            Ok(true) => {
                metrics::stream_post("accepted");
                Ok(plain(StatusCode::ACCEPTED, "accepted"))
            }
            Ok(false) => {
                metrics::stream_post("gone");
                Err(HttpError::StreamGone)
            }
            Err(error) => {
                metrics::stream_post("unavailable");
                Err(error.into())
            }
        }
    }

    /// The checks every socket and stream passes, cheapest first: the
    /// node's handshake budget, the source's rate, the `Origin`, the
    /// session, the gateway's and the user's socket caps. On success the
    /// user's socket count was taken; the caller gives it back if it does
    /// not open the socket after all.
    async fn admit(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Session, HttpError> {
        let limits = &self.shared.limits;
        // Node-wide admission first: a crowd waits its turn (503, retried),
        // whatever addresses it comes from.
        let Some(_admitted) = limits.admit_handshake() else {
            metrics::handshake_refused("busy");
            return Err(HttpError::Busy);
        };
        if let Err(RetryAfter(wait)) = limits.handshake(self.source_of(headers, peer)) {
            metrics::handshake_refused("rate_limited");
            return Err(HttpError::TooManyRequests(wait));
        }
        if !self.origin_allowed(headers) {
            metrics::handshake_refused("origin");
            return Err(HttpError::ForbiddenOrigin);
        }
        let session = self.sessions.authenticate(headers).await.inspect_err(|error| {
            metrics::handshake_refused(match error {
                SessionError::NoCookie => "no_session",
                SessionError::BadSignature => "bad_signature",
                SessionError::Unknown => "unknown_session",
                SessionError::Store(_) => "store_unavailable",
            });
        })?;
        if self.shared.sockets.len() >= limits.max_sockets {
            metrics::handshake_refused("gateway_full");
            return Err(HttpError::Overloaded("this gateway holds all the sockets it may; retry"));
        }
        if !limits.open_socket(session.user.as_str()) {
            metrics::handshake_refused("user_sockets");
            return Err(HttpError::Overloaded("too many sockets for this user"));
        }
        Ok(session)
    }

    /// The client's address: the peer, or what trusted proxies in front
    /// say in `X-Forwarded-For` (see [`crate::limits::TrustedProxies`]).
    fn source_of(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        let forwarded_for = headers.get("x-forwarded-for").and_then(|value| value.to_str().ok());
        self.shared.limits.proxies.client(peer.ip(), forwarded_for)
    }

    /// Whether a form post comes from another site (login CSRF, forced
    /// logout): the browser says so in `Sec-Fetch-Site`, or its `Origin` is
    /// not ours. Clients that send neither are not browsers.
    fn is_cross_site(&self, headers: &HeaderMap) -> bool {
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|site| site != "same-origin" && site != "none") {
            return true;
        }
        !self.origin_allowed(headers)
    }

    /// Same-origin (the `Host` the request came to), an allowed origin, or no
    /// `Origin` at all (not a browser, so no cross-site hijacking).
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return true;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let same_origin = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|rest| !host.is_empty() && rest.eq_ignore_ascii_case(host));
        same_origin || self.allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    fn set_cookie(&self, reply: &mut Reply, session: &Session) {
        append_cookie(reply, &self.sessions.set_cookie(&session.id));
    }
}

/// The head of an event stream: HTTP/1.0, so that its body is framed by
/// the connection's close and hyper writes nothing after the head (see
/// [`crate::sse`]).
fn stream_head() -> Response<sse::HeadOnly> {
    let mut response = Response::new(sse::head_only());
    *response.version_mut() = http::Version::HTTP_10;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    // Proxies that buffer responses (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn asset(name: &str) -> Result<Reply, HttpError> {
    let asset = pages::asset(name).ok_or(HttpError::NotFound)?;
    let mut reply = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())));
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(reply)
}

fn page(status: StatusCode, body: Bytes) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    reply
}

fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

fn plain(status: StatusCode, text: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

fn redirect_home() -> Reply {
    let mut reply = Response::new(Full::default());
    *reply.status_mut() = StatusCode::SEE_OTHER;
    reply.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
    reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

fn append_cookie(reply: &mut Reply, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        reply.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The one mapping from a refused request to a response: JSON with the
/// reason for the API routes, plain text elsewhere.
fn error_reply(path: &str, error: &HttpError) -> Reply {
    let status = error.status();
    if matches!(path, "/session" | "/ws" | "/sse") {
        let mut reply = json(status, &serde_json::json!({ "error": error.to_string() }));
        if let Some(wait) = error.retry_after() {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            reply.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        return reply;
    }
    let mut reply = Response::new(Full::new(Bytes::from(format!("{error}\n"))));
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    reply
}
