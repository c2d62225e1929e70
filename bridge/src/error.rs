//! The bridge's errors, and their one translation to what a gateway sees.

use proto::warren::v1::{PublishError, SubscribeFailed};

/// Everything that can go wrong inside the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No AMQP connection right now; the broker worker is reconnecting.
    #[error("the message broker is unavailable")]
    Unavailable,
    /// The AMQP client failed.
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused the message (a nack).
    #[error("the broker refused the message")]
    Nacked,
    /// The broker did not confirm, or the message did not show up in its
    /// stream, within the publish timeout.
    #[error("the broker did not confirm in time")]
    Timeout,
    /// The broker blocks publishing (a memory or disk alarm).
    #[error("the message broker refuses messages for now: {0}")]
    Blocked(String),
    /// The room's partition cannot be read (the broker refused its reader).
    #[error("partition {partition} cannot be read: {why}")]
    Unreadable {
        /// The partition.
        partition: u16,
        /// What the broker said.
        why: String,
    },
    /// The request names a room that cannot exist.
    #[error("invalid room name")]
    BadRoom,
}

impl BridgeError {
    /// A stable machine-readable code for the gateway.
    pub fn code(&self) -> &'static str {
        match self {
            // A nack is the broker's "not now" (RabbitMQ nacks what it could
            // not store): retryable, so said with the code clients retry on.
            Self::Unavailable | Self::Amqp(_) | Self::Blocked(_) | Self::Unreadable { .. } | Self::Nacked => {
                "unavailable"
            }
            Self::Timeout => "timeout",
            Self::BadRoom => "rejected",
        }
    }

    /// Whether sending the same message (same cid) again may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::BadRoom)
    }

    /// The answer to a subscription that cannot hold.
    pub fn to_subscribe_failed(&self, room: &str) -> SubscribeFailed {
        SubscribeFailed {
            room: room.to_owned(),
            code: self.code().to_owned(),
            message: self.to_string(),
            retryable: self.retryable(),
        }
    }

    /// The answer to one publish request; its code says whether sending
    /// the same cid again may succeed (`unavailable`, `timeout`).
    pub fn to_publish_error(&self, request_id: u64) -> PublishError {
        PublishError { request_id, code: self.code().to_owned(), message: self.to_string() }
    }
}

impl From<BridgeError> for tonic::Status {
    fn from(error: BridgeError) -> Self {
        match error {
            BridgeError::BadRoom => tonic::Status::invalid_argument(error.to_string()),
            BridgeError::Timeout => tonic::Status::deadline_exceeded(error.to_string()),
            BridgeError::Unavailable
            | BridgeError::Amqp(_)
            | BridgeError::Nacked
            | BridgeError::Blocked(_)
            | BridgeError::Unreadable { .. } => tonic::Status::unavailable(error.to_string()),
        }
    }
}

/// Why the bridge process could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The TLS files for the broker are unusable.
    #[error("broker TLS: {0}")]
    Tls(#[from] platform::tls::TlsError),
}
