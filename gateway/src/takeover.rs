//! What a connection becomes once its HTTP exchange is over: a WebSocket
//! after `101 Switching Protocols`, an event stream after the head of
//! `GET /sse`.
//!
//! A route that takes its connection over leaves a [`Takeover`] in the
//! connection's [`Slot`] and answers the head. The connection's task
//! ([`crate::server`]) runs hyper without letting it shut the connection
//! down; once hyper has written the head and is done, the task takes the
//! connection back from it and starts the socket on it. From then on hyper
//! holds nothing of it: its buffers and state machine are gone, whatever
//! the transport.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpStream;

use crate::conn::Shared;
use crate::session::Session;
use crate::sse;
use crate::ws::WebSocket;

/// A socket waiting for its connection.
#[derive(Debug)]
pub enum Takeover {
    /// The `101` is answered; the user's socket count is taken.
    WebSocket(Session),
    /// The stream is registered and its `welcome` queued.
    EventStream(Box<sse::Stream>),
}

impl Takeover {
    /// Starts the socket on the connection hyper gave back; `early` is what
    /// hyper read past the request's head.
    pub fn start(self, connection: TcpStream, early: &[u8], shared: &Shared) {
        match self {
            Self::WebSocket(session) => WebSocket::start(connection, early, session, shared.clone()),
            Self::EventStream(stream) => stream.start(connection),
        }
    }

    /// Gives back what the socket took: its connection ended before its head
    /// went out.
    pub fn abandon(self, shared: &Shared) {
        match self {
            Self::WebSocket(session) => shared.limits.close_socket(session.user.as_str()),
            Self::EventStream(stream) => stream.abandon(),
        }
    }
}

/// Where a route leaves its connection's [`Takeover`], for the connection's
/// task. One per connection; HTTP/1.1 answers one request at a time, so the
/// route that fills it is the connection's last.
#[derive(Debug, Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Takeover>>>);

impl Slot {
    /// Leaves `takeover` for the connection's task.
    pub fn set(&self, takeover: Takeover) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(takeover);
    }

    /// What the connection's last route left, if anything.
    pub fn take(&self) -> Option<Takeover> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}
