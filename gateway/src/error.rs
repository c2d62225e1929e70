//! What can go wrong serving an HTTP request, and its one mapping to a
//! response status and a reason the client can read.

use http::StatusCode;

use crate::session::SessionError;

/// A refused HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No valid session.
    #[error("not logged in: {0}")]
    Unauthorized(SessionError),
    /// The socket's `Origin` is not allowed.
    #[error("origin not allowed")]
    ForbiddenOrigin,
    /// A form post from another site.
    #[error("cross-site request refused")]
    CrossSite,
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such route.
    #[error("not found")]
    NotFound,
    /// The route exists, not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A dependency (Redis) is down; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// A limit on sockets is reached; try again later or elsewhere.
    #[error("{0}")]
    Overloaded(&'static str),
    /// The gateway works on as many handshakes as it may: retry shortly.
    #[error("the gateway is busy with other connections; retry")]
    Busy,
    /// A body over the size limit, in bytes.
    #[error("the frame is larger than {0} bytes")]
    TooLarge(usize),
    /// No gateway holds the event stream a frame was posted to.
    #[error("no such stream: open /sse again")]
    StreamGone,
    /// Too many requests from one source; retry after the duration.
    #[error("too many handshakes from this address; retry later")]
    TooManyRequests(std::time::Duration),
}

impl HttpError {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ForbiddenOrigin | Self::CrossSite => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound | Self::StreamGone => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) | Self::Overloaded(_) | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// When the client may try again, for the `Retry-After` header.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::TooManyRequests(wait) => Some(*wait),
            Self::Busy => Some(std::time::Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<SessionError> for HttpError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::Store(reason) => {
                // The detail is for operators; clients get the generic reason.
                tracing::warn!(%reason, "session store unavailable");
                Self::Unavailable("session store unavailable; try again shortly".to_owned())
            }
            other => Self::Unauthorized(other),
        }
    }
}

impl From<crate::sse::relay::RelayError> for HttpError {
    fn from(error: crate::sse::relay::RelayError) -> Self {
        // As for the session store: the detail for operators only.
        tracing::warn!(%error, "stream relay unavailable");
        Self::Unavailable("the stream relay is unavailable; retry shortly".to_owned())
    }
}

/// Why the gateway process could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Redis client could not be built from the URL.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The TLS files for Redis are unusable.
    #[error("redis TLS: {0}")]
    Tls(#[from] platform::tls::TlsError),
    /// A setting is unusable (checked again at start-up).
    #[error("{0}")]
    Config(String),
}
