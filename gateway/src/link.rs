//! The seam between the rooms ([`crate::hub`]) and the bridge link
//! ([`crate::upstream`]): two narrow traits, so that neither module depends
//! on the other and the hub is tested against a fake bridge.

use futures_util::future::BoxFuture;
use proto::warren::v1::Message;

/// What the hub needs of the bridge link: a narrow seam, so that the hub is
/// tested without a bridge.
pub trait Bridge: Send + Sync + std::fmt::Debug + 'static {
    /// Asks for a room's `Subscribed` and messages (a no-op without a link:
    /// the next link subscribes every room).
    fn subscribe(&self, room: &str);
    /// Stops a room's messages.
    fn unsubscribe(&self, room: &str);
    /// Reads a room's ids `(after, up_to]`, or their newest `newest`.
    fn history(&self, room: &str, after: u64, up_to: u64, newest: u32) -> BoxFuture<'static, HistoryResult>;
}

/// One page of history, or why not.
pub type HistoryResult = Result<HistoryPage, HistoryError>;

/// Where the bridge's room traffic goes (the hub): the other half of the seam.
pub trait Rooms: Send + Sync {
    /// A subscription holds; `last_id` is the room's newest id then.
    fn subscribed(&self, room: &str, last_id: u64);
    /// A subscription does not hold: nothing of the room will come.
    fn subscribe_failed(&self, room: &str, refusal: Refusal);
    /// A message of a subscribed room.
    fn deliver(&self, message: &Message);
    /// Every room to subscribe on a new stream.
    fn rooms(&self) -> Vec<String>;
}

/// One history answer.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// In id order.
    pub messages: Vec<Message>,
    /// Every message up to this id (from the request's lower bound) is in
    /// `messages`.
    pub covered_to: u64,
}

/// Why a history read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// No bridge right now.
    #[error("no bridge connected")]
    Disconnected,
    /// The bridge answered with an error.
    #[error("bridge: {0}")]
    Status(#[from] tonic::Status),
}

/// Why the bridge refused a room's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Protocol error code (`unavailable`, `rejected`).
    pub code: String,
    /// For people.
    pub message: String,
    /// Whether subscribing again later may succeed.
    pub retryable: bool,
}
