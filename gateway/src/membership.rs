//! A socket's rooms: the one path that join, leave and close go through.
//!
//! Joining a room touches three things in a fixed order, and doing it in one
//! place keeps the order right: the room's subscription must hold first (no
//! `joined` for a room that would stay silent), then presence gives the
//! member list for `joined`, then the hub sends history and live messages,
//! which must follow `joined`. Leaving and closing undo the same things.

use std::collections::HashSet;
use std::sync::Arc;

use crate::hub::{Hub, JoinError};
use crate::mailbox::{Mailbox, SocketId};
use crate::metrics;
use crate::presence::Presence;
use crate::protocol::{FrameError, ServerFrame};

/// What every socket's membership goes through.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Rooms, subscriptions and delivery.
    pub hub: Arc<Hub>,
    /// Who is in each room, across gateways.
    pub presence: Arc<Presence>,
    /// Rooms one socket may be in.
    pub max_rooms: usize,
    /// The longest member list a `joined` carries.
    pub joined_members_max: usize,
}

/// One socket as its rooms see it.
#[derive(Debug)]
pub struct Member {
    /// The socket.
    pub id: SocketId,
    /// Its user, from the session.
    pub user: String,
    /// Where its frames go.
    pub mailbox: Mailbox,
    rooms: HashSet<String>,
}

impl Member {
    /// A socket in no room yet.
    pub fn new(id: SocketId, user: String, mailbox: Mailbox) -> Self {
        Self { id, user, mailbox, rooms: HashSet::new() }
    }

    /// Whether the socket is in `room`.
    pub fn is_in(&self, room: &str) -> bool {
        self.rooms.contains(room)
    }
}

impl Membership {
    /// Joins (or re-joins, replaying from `since`) a room: `joined` is
    /// queued once the room's subscription holds, history and live messages
    /// after it.
    ///
    /// # Errors
    /// The `error` frame to answer with: too many rooms, or a room no bridge
    /// would take.
    pub async fn join(&self, member: &mut Member, room: String, since: Option<u64>) -> Result<(), FrameError> {
        if !member.is_in(&room) && member.rooms.len() >= self.max_rooms {
            let limit = self.max_rooms;
            let error = FrameError::new("too_many_rooms", format!("a socket may join at most {limit} rooms"));
            return Err(error.with_room(&room));
        }
        if since.is_some() {
            metrics::resumed();
        }
        let ticket = self.hub.subscribe(&room).await.map_err(|error| join_error(&room, &error))?;
        let members = self.presence.join(&room, &member.user, member.id, &member.mailbox).await;
        let joined = ServerFrame::joined(&room, &members, self.joined_members_max).encode();
        metrics::frame_out("joined");
        member.mailbox.offer(joined);
        self.presence.joined(&room, member.id);
        self.hub.join(ticket, member.id, member.mailbox.clone(), since);
        member.rooms.insert(room);
        Ok(())
    }

    /// Leaves a room; `false` when the socket was not in it.
    pub fn leave(&self, member: &mut Member, room: &str) -> bool {
        if !member.rooms.remove(room) {
            return false;
        }
        self.hub.leave(room, member.id);
        self.presence.leave(room, member.id);
        true
    }

    /// The socket closed: it leaves every room.
    pub fn close(&self, member: &Member) {
        for room in &member.rooms {
            self.hub.leave(room, member.id);
        }
        self.presence.socket_closed(member.id);
    }
}

/// The `error` frame for a join that did not take: retryable ones say when
/// to try again.
fn join_error(room: &str, error: &JoinError) -> FrameError {
    let code = if error.retryable() { "unavailable" } else { "rejected" };
    let frame = FrameError::new(code, format!("cannot join {room:?}: {error}")).with_room(room);
    if error.retryable() { frame.with_retry_after(std::time::Duration::from_secs(1)) } else { frame }
}
