//! The server API: what a backend beside the chat uses, on the public port
//! under `/api/v1` (described in `docs/api/openapi.yaml`).
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/rooms/{room}/messages` | publishes `{user, text, idempotency_key}` as that user; `{"id"}` once durable |
//! | `GET /api/v1/rooms/{room}/messages?since=N&limit=M` | the room's messages after `since`, oldest first |
//! | `GET /api/v1/rooms/{room}/presence` | the room's members now |
//! | `POST /api/v1/users/{user}/disconnect` | closes the user's sockets on every gateway; optionally ends their sessions |
//!
//! It is off unless a token is configured, and the bearer token is the only
//! credential it takes: a browser's session cookie never reaches it, so a
//! page (or a cross-site form) cannot use it. Errors are JSON
//! `{"code", "message"}`. A post is a chat send like any other: the room,
//! text and key rules of the WebSocket protocol, the per-user send rate,
//! and the bridge's repeat detection, which makes a retried key answer the
//! first message's id instead of a second message (within the bridge's
//! repeat window, 120 s of message time).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::limits::{Limits, RetryAfter};
use crate::link::Bridge;
use crate::metrics;
use crate::presence::Presence;
use crate::protocol::{self, FrameError};
use crate::session::{SessionStore, UserName};
use crate::upstream::Upstream;

/// Where the API's routes start.
pub const PREFIX: &str = "/api/v1/";
/// The shortest token accepted: 128 bits of hex, or an equivalent.
pub const MIN_TOKEN_CHARS: usize = 32;
/// The largest request body read.
const MAX_BODY_BYTES: usize = 32 * 1024;
/// The default and the largest page of `GET .../messages`.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// The most bridge reads one `GET .../messages` makes (a room's old
/// messages may be spread thin over its partition), and the time after
/// which it answers with what it has (`more`) rather than read on.
const MAX_BRIDGE_READS: usize = 16;
const READ_BUDGET: Duration = Duration::from_secs(5);

type Reply = Response<Full<Bytes>>;

/// The API's bearer token. Its `Debug` hides it, so it never reaches a log.
#[derive(Clone)]
pub struct ApiToken(Arc<str>);

impl ApiToken {
    /// A token, if it is long enough to be unguessable.
    ///
    /// # Errors
    /// A message for the operator when it is too short.
    pub fn new(token: &str) -> Result<Self, String> {
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!("the API token must be at least {MIN_TOKEN_CHARS} characters"));
        }
        Ok(Self(token.into()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`,
    /// compared in constant time.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return false;
        };
        bool::from(given.trim().as_bytes().ct_eq(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// A refused API call: its status, and the JSON body that says why.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or the wrong one.
    #[error("a valid bearer token is needed")]
    Unauthorized,
    /// No such route (or the API is off).
    #[error("no such API route")]
    NotFound,
    /// The route exists, not for this method; these are.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A rule of the request was broken; the code names it.
    #[error("{message}")]
    Invalid {
        /// Machine-readable (`bad_room`, `bad_user`, `bad_text`, ...).
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("the body is over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// Over the user's send rate: retry after the duration.
    #[error("too many messages for this user; retry later")]
    RateLimited(Duration),
    /// The bridge or Redis could not answer: retry shortly.
    #[error("{message}")]
    Unavailable {
        /// `unavailable` or `timeout`.
        code: String,
        /// For people.
        message: String,
    },
}

impl ApiError {
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }

    fn unavailable(message: &str) -> Self {
        Self::Unavailable { code: "unavailable".to_owned(), message: message.to_owned() }
    }

    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Invalid { code, .. } => code,
            Self::TooLarge => "too_large",
            Self::RateLimited(_) => "rate_limited",
            Self::Unavailable { code, .. } => code,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(wait) => Some(*wait),
            Self::Unavailable { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    fn reply(&self) -> Reply {
        let mut reply = json_reply(self.status(), &json!({ "code": self.code(), "message": self.to_string() }));
        if let Some(wait) = self.retry_after() {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            reply.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        match self {
            Self::Unauthorized => {
                reply.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::MethodNotAllowed(allowed) => {
                reply.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            _ => {}
        }
        reply
    }
}

impl From<FrameError> for ApiError {
    fn from(error: FrameError) -> Self {
        Self::Invalid { code: error.code, message: error.message }
    }
}

/// The API's routes, parsed from a path under [`PREFIX`].
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Messages(&'a str),
    Presence(&'a str),
    Disconnect(&'a str),
}

impl<'a> Route<'a> {
    fn parse(rest: &'a str) -> Option<Self> {
        let mut parts = rest.split('/');
        let route = match (parts.next()?, parts.next()?, parts.next()?) {
            ("rooms", room, "messages") => Self::Messages(room),
            ("rooms", room, "presence") => Self::Presence(room),
            ("users", user, "disconnect") => Self::Disconnect(user),
            _ => return None,
        };
        parts.next().is_none().then_some(route)
    }

    /// The methods the route answers, for `Allow`.
    fn allowed(&self) -> &'static str {
        match self {
            Self::Messages(_) => "GET, POST",
            Self::Presence(_) => "GET",
            Self::Disconnect(_) => "POST",
        }
    }

    /// A fixed label for metrics and logs.
    fn label(&self) -> &'static str {
        match self {
            Self::Messages(_) => "messages",
            Self::Presence(_) => "presence",
            Self::Disconnect(_) => "disconnect",
        }
    }
}

/// What `POST .../messages` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Post {
    user: String,
    text: String,
    idempotency_key: String,
}

/// What `POST .../disconnect` takes (the body may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    #[serde(default)]
    end_sessions: bool,
}

/// The server API, with what it needs from the rest of the gateway.
#[derive(Debug)]
pub struct Api {
    /// `None`: the API is off (every route answers 404).
    pub token: Option<ApiToken>,
    /// Publishes and history.
    pub upstream: Arc<Upstream>,
    /// Room members.
    pub presence: Arc<Presence>,
    /// Ending a user's sessions, and announcing disconnects.
    pub sessions: SessionStore,
    /// The per-user send rate.
    pub limits: Arc<Limits>,
}

impl Api {
    /// Answers one request whose path starts with [`PREFIX`]; logged and
    /// counted by route and status.
    pub async fn handle(&self, request: Request<Incoming>) -> Reply {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let route = Route::parse(&path[PREFIX.len()..]);
        let label = route.as_ref().map_or("unknown", Route::label);
        let result = match (&self.token, route) {
            (None, _) | (_, None) => Err(ApiError::NotFound),
            (Some(token), Some(_)) if !token.admits(request.headers()) => Err(ApiError::Unauthorized),
            (Some(_), Some(route)) => self.route(method.clone(), route, request).await,
        };
        let reply = result.unwrap_or_else(|error| error.reply());
        let status = reply.status();
        metrics::api_request(label, status.as_u16());
        tracing::info!(%method, route = label, status = status.as_u16(), "api call");
        reply
    }

    async fn route(&self, method: Method, route: Route<'_>, request: Request<Incoming>) -> Result<Reply, ApiError> {
        match (method, route) {
            (Method::POST, Route::Messages(room)) => self.post_message(room, read_json(request).await?).await,
            (Method::GET, Route::Messages(room)) => self.read_messages(room, request.uri().query()).await,
            (Method::GET, Route::Presence(room)) => self.presence(room).await,
            (Method::POST, Route::Disconnect(user)) => {
                let body = read_body(request).await?;
                let options =
                    if body.iter().all(u8::is_ascii_whitespace) { Disconnect::default() } else { parse(&body)? };
                self.disconnect(user, options).await
            }
            (_, route) => Err(ApiError::MethodNotAllowed(route.allowed())),
        }
    }

    async fn post_message(&self, room: &str, post: Post) -> Result<Reply, ApiError> {
        protocol::check_room(room)?;
        let user = user_name(&post.user)?;
        protocol::check_text(&post.text)?;
        protocol::check_cid(&post.idempotency_key).map_err(|_| {
            ApiError::invalid(
                "bad_idempotency_key",
                format!("idempotency_key must be 1 to {} characters", protocol::MAX_CID_LEN),
            )
        })?;
        self.limits.user_send(user.as_str()).map_err(|RetryAfter(wait)| ApiError::RateLimited(wait))?;
        let span = tracing::info_span!("api.publish", room);
        let traceparent = ops::telemetry::traceparent_of(&span);
        let publish = self.upstream.publish(room, user.as_str(), &post.text, &post.idempotency_key, traceparent);
        let id = tracing::Instrument::instrument(publish, span)
            .await
            .map_err(|failure| ApiError::Unavailable { code: failure.code, message: failure.message })?;
        Ok(json_reply(StatusCode::OK, &json!({ "id": id })))
    }

    /// Reads pages from the bridge until `limit` messages are found or the
    /// room's end is reached. `next_since` is where the next call goes on:
    /// every message of the room up to it was in this answer (it may be
    /// past the last message's id: ids are sparse).
    async fn read_messages(&self, room: &str, query: Option<&str>) -> Result<Reply, ApiError> {
        protocol::check_room(room)?;
        let (since, limit) = page_of(query)?;
        let limit = limit as usize;
        let (mut found, mut after, mut more) = (Vec::new(), since, true);
        let started = std::time::Instant::now();
        for _ in 0..MAX_BRIDGE_READS {
            if started.elapsed() > READ_BUDGET {
                break;
            }
            let page = self.upstream.history(room, after, u64::MAX, 0).await.map_err(|error| {
                tracing::warn!(%error, room, "history for the API failed");
                ApiError::unavailable("the room's history cannot be read now; retry")
            })?;
            found.extend(page.messages);
            if found.len() > limit {
                found.truncate(limit);
                after = found.last().map_or(after, |m| m.id);
                break;
            }
            if page.covered_to <= after {
                more = false;
                break;
            }
            after = page.covered_to;
        }
        let messages: Vec<Value> = found
            .iter()
            .map(|m| json!({ "id": m.id, "user": m.user, "text": m.text, "ts": m.ts, "cid": m.cid }))
            .collect();
        let body = json!({ "room": room, "messages": messages, "next_since": after, "more": more });
        Ok(json_reply(StatusCode::OK, &body))
    }

    async fn presence(&self, room: &str) -> Result<Reply, ApiError> {
        protocol::check_room(room)?;
        let members = self
            .presence
            .room_members(room)
            .await
            .ok_or_else(|| ApiError::unavailable("presence cannot be read now (Redis); retry"))?;
        Ok(json_reply(StatusCode::OK, &json!({ "room": room, "count": members.len(), "members": members })))
    }

    async fn disconnect(&self, user: &str, options: Disconnect) -> Result<Reply, ApiError> {
        let user = user_name(user)?;
        let sessions_ended = if options.end_sessions {
            self.sessions.end_sessions_of(&user).await.map_err(|error| {
                tracing::warn!(%error, "ending a user's sessions failed");
                ApiError::unavailable("the session store cannot be reached; retry")
            })?
        } else {
            0
        };
        self.sessions.announce_disconnect(&user).await.map_err(|error| {
            tracing::warn!(%error, "announcing a disconnect failed");
            ApiError::unavailable("the disconnect cannot be announced (Redis); retry")
        })?;
        tracing::info!(user = user.as_str(), sessions_ended, "api: user disconnected");
        Ok(json_reply(StatusCode::OK, &json!({ "user": user.as_str(), "sessions_ended": sessions_ended })))
    }
}

fn user_name(user: &str) -> Result<UserName, ApiError> {
    UserName::try_from(user.to_owned()).map_err(|reason| ApiError::invalid("bad_user", reason))
}

/// `since` (default 0) and `limit` (default [`DEFAULT_PAGE`], at most
/// [`MAX_PAGE`]) from a query string.
fn page_of(query: Option<&str>) -> Result<(u64, u32), ApiError> {
    let (mut since, mut limit) = (0, DEFAULT_PAGE);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "since" => {
                since = value.parse().map_err(|_| ApiError::invalid("bad_since", "since must be a whole number"))?;
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::invalid("bad_limit", format!("limit must be 1 to {MAX_PAGE}")))?;
            }
            _ => {}
        }
    }
    Ok((since, limit))
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await.map(|body| body.to_bytes()).map_err(|error| {
        if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::TooLarge
        } else {
            ApiError::invalid("bad_body", "the body was cut off")
        }
    })
}

async fn read_json<T: for<'de> Deserialize<'de>>(request: Request<Incoming>) -> Result<T, ApiError> {
    parse(&read_body(request).await?)
}

/// A JSON object's fields as `T` (serde would take an array of the fields'
/// values too; the contract is an object).
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let bad = |error: serde_json::Error| ApiError::invalid("bad_json", format!("the body: {error}"));
    match serde_json::from_slice(body).map_err(bad)? {
        object @ Value::Object(_) => serde_json::from_value(object).map_err(bad),
        _ => Err(ApiError::invalid("bad_json", "the body must be a JSON object")),
    }
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_nothing_else_does() {
        assert_eq!(Route::parse("rooms/lobby/messages"), Some(Route::Messages("lobby")));
        assert_eq!(Route::parse("rooms/lobby/presence"), Some(Route::Presence("lobby")));
        assert_eq!(Route::parse("users/ann/disconnect"), Some(Route::Disconnect("ann")));
        assert_eq!(Route::parse("rooms/lobby/messages/1"), None);
        assert_eq!(Route::parse("rooms/lobby"), None);
        assert_eq!(Route::parse("users/ann/kick"), None);
    }

    #[test]
    fn only_the_exact_bearer_token_admits() {
        let token = ApiToken::new(&"t".repeat(40)).expect("long enough");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
            headers
        };
        assert!(token.admits(&with(&format!("Bearer {}", "t".repeat(40)))));
        assert!(!token.admits(&with(&format!("Bearer {}", "t".repeat(39)))));
        assert!(!token.admits(&with(&format!("Basic {}", "t".repeat(40)))));
        assert!(!token.admits(&HeaderMap::new()));
        assert!(ApiToken::new("short").is_err());
        assert_eq!(format!("{token:?}"), "ApiToken(..)", "never printed");
    }

    #[test]
    fn pages_have_bounds() {
        assert_eq!(page_of(None).ok(), Some((0, DEFAULT_PAGE)));
        assert_eq!(page_of(Some("since=7&limit=3")).ok(), Some((7, 3)));
        assert!(page_of(Some("limit=0")).is_err());
        assert!(page_of(Some("limit=1001")).is_err());
        assert!(page_of(Some("since=-1")).is_err());
    }
}
