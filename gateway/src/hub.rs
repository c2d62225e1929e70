//! The gateway's rooms: which sockets joined what, and the one place where
//! ordering, replay and de-duplication happen.
//!
//! The bridge streams each subscribed room once per gateway, in id order. Ids
//! are a room stream's offsets plus one: they only grow and are nearly dense
//! (RabbitMQ skips an offset at some segment boundaries). Every member of a
//! room keeps a cursor, the last id it was sent, and any jump past
//! `cursor + 1` is a possible gap: the member is put into *filling* (live
//! messages wait in a buffer) while the range is read from the room's recent
//! messages and the bridge's `History`; ids with no message are skipped. The same rule serves a join with `since`, a join
//! without it (the last [`JOIN_TAIL`]), and a room whose first message just
//! arrived. Each message is encoded once per gateway and its bytes shared by
//! every socket that gets it.
//!
//! A send repeated through another bridge (its first bridge died before
//! answering) can be stored twice under one (user, cid). The room remembers
//! the (user, cid) of its recent messages and skips the repeat: members'
//! cursors move past its id, nobody is sent it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ops::backoff::Backoff;
use proto::warren::v1::Message;
use tokio_util::task::TaskTracker;

use crate::mailbox::{Mailbox, SocketId};
use crate::metrics;
use crate::protocol::ServerFrame;
use crate::upstream::Upstream;

/// Messages a join without `since` replays.
pub const JOIN_TAIL: u64 = 50;
/// Recent messages kept per room, to serve joins without asking the bridge.
const RECENT: usize = 256;
/// Recent (user, cid) pairs a room remembers, to skip repeated sends.
const REMEMBERED_SENDS: usize = 4096;
/// How long a gap fill keeps retrying the bridge before giving up on the range.
const FILL_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Delivered {
    id: u64,
    /// The encoded frame; `None` for a repeated send, which only moves
    /// cursors.
    frame: Option<Bytes>,
}

#[derive(Debug)]
enum Cursor {
    /// Joined without `since`, before the room's newest id was known.
    Fresh,
    /// The last id this member was sent.
    At(u64),
}

#[derive(Debug)]
struct Member {
    mailbox: Mailbox,
    cursor: Cursor,
    /// While a gap is being filled: live messages held back, in order.
    filling: Option<Vec<Delivered>>,
}

/// A gap to fill for one member: ids `(after, up_to]`.
#[derive(Debug, Clone, Copy)]
struct Gap {
    after: u64,
    up_to: u64,
}

#[derive(Debug, Default)]
struct Room {
    /// The newest id received from the bridge.
    last_id: Option<u64>,
    /// The newest messages, contiguous, ending at `last_id`.
    recent: VecDeque<Delivered>,
    /// The first id seen for each recent (user, cid), oldest first in
    /// `send_order`.
    sends: HashMap<(String, String), u64>,
    send_order: VecDeque<(String, String)>,
    members: HashMap<SocketId, Member>,
}

/// All rooms of this gateway.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    upstream: Arc<Upstream>,
    tracker: TaskTracker,
}

// === impl Member ===

impl Member {
    /// Takes the next live message; returns a gap to fill when one opens.
    fn offer(&mut self, message: &Delivered) -> Option<Gap> {
        if let Some(held) = &mut self.filling {
            held.push(message.clone());
            return None;
        }
        let after = match self.cursor {
            Cursor::Fresh => message.id.saturating_sub(JOIN_TAIL + 1),
            Cursor::At(cursor) if message.id <= cursor => return None,
            Cursor::At(cursor) if message.id == cursor + 1 => {
                self.cursor = Cursor::At(message.id);
                if let Some(frame) = &message.frame {
                    self.mailbox.offer(frame.clone());
                }
                return None;
            }
            Cursor::At(cursor) => cursor,
        };
        self.filling = Some(vec![message.clone()]);
        Some(Gap { after, up_to: message.id - 1 })
    }
}

// === impl Room ===

impl Room {
    /// Encodes a message for delivery, or marks it a repeat of an earlier
    /// message under the same (user, cid).
    fn admit(&mut self, message: &Message) -> Delivered {
        let key = (message.user.clone(), message.cid.clone());
        match self.sends.get(&key) {
            Some(&first) if first < message.id => return Delivered { id: message.id, frame: None },
            Some(_) => {}
            None => {
                self.sends.insert(key.clone(), message.id);
                self.send_order.push_back(key);
                while self.send_order.len() > REMEMBERED_SENDS {
                    if let Some(oldest) = self.send_order.pop_front() {
                        self.sends.remove(&oldest);
                    }
                }
            }
        }
        Delivered { id: message.id, frame: Some(ServerFrame::message(message).encode()) }
    }

    fn remember(&mut self, message: Delivered) {
        self.last_id = Some(message.id);
        self.recent.push_back(message);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// The recent messages in `(after, up_to]`, and the first id they cover
    /// (ids below it must come from the bridge).
    fn recent_range(&self, gap: Gap) -> (u64, Vec<Delivered>) {
        let first = self.recent.front().map_or(gap.up_to + 1, |m| m.id);
        let messages = self.recent.iter().filter(|m| m.id > gap.after && m.id <= gap.up_to).cloned().collect();
        (first, messages)
    }
}

// === impl Hub ===

impl Hub {
    /// A hub whose rooms are fed by `upstream`; fills run on `tracker`.
    pub fn new(upstream: Arc<Upstream>, tracker: TaskTracker) -> Arc<Self> {
        Arc::new(Self { rooms: Mutex::new(HashMap::new()), upstream, tracker })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or re-adds) a socket to a room. The caller has already queued
    /// `joined`; history and live messages follow it.
    pub fn join(self: &Arc<Self>, room_name: &str, socket: SocketId, mailbox: Mailbox, since: Option<u64>) {
        let mut rooms = self.lock();
        let is_new = !rooms.contains_key(room_name);
        let room = rooms.entry(room_name.to_owned()).or_default();
        let mut member = Member { mailbox, cursor: since.map_or(Cursor::Fresh, Cursor::At), filling: None };
        let mut gap = None;
        if let Some(last) = room.last_id {
            // A client may be ahead of this gateway's view of the room (its
            // subscription is new): its cursor still starts at `since`, so
            // nothing it has is sent again.
            let after = since.unwrap_or_else(|| last.saturating_sub(JOIN_TAIL));
            member.cursor = Cursor::At(after);
            if after < last {
                member.filling = Some(Vec::new());
                gap = Some(Gap { after, up_to: last });
            }
        }
        room.members.insert(socket, member);
        metrics::rooms(rooms.len());
        drop(rooms);
        if is_new {
            self.upstream.subscribe(room_name, None);
        }
        if let Some(gap) = gap {
            self.spawn_fill(room_name, socket, gap);
        }
    }

    /// Removes a socket from a room; the last one out unsubscribes it.
    pub fn leave(&self, room_name: &str, socket: SocketId) {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(room_name) else { return };
        room.members.remove(&socket);
        if room.members.is_empty() {
            rooms.remove(room_name);
            metrics::rooms(rooms.len());
            drop(rooms);
            self.upstream.unsubscribe(room_name);
        }
    }

    /// Takes one message from the bridge and hands it to every member.
    pub fn deliver(self: &Arc<Self>, message: &Message) {
        // Traced messages get a delivery span, child of the bridge's.
        let span = (!message.traceparent.is_empty()).then(|| {
            let span = tracing::info_span!("gateway.deliver", id = message.id);
            ops::telemetry::parent_from(&span, &message.traceparent);
            span
        });
        let _entered = span.as_ref().map(tracing::Span::enter);
        let mut gaps = Vec::new();
        {
            let mut rooms = self.lock();
            let Some(room) = rooms.get_mut(&message.room) else { return };
            if room.last_id.is_some_and(|last| message.id <= last) {
                return; // already seen: a resubscription overlaps
            }
            let delivered = room.admit(message);
            for (&socket, member) in &mut room.members {
                if let Some(gap) = member.offer(&delivered) {
                    gaps.push((socket, gap));
                }
            }
            if delivered.frame.is_some() {
                metrics::delivered(room.members.len(), age_of(message.ts));
            }
            room.remember(delivered);
        }
        for (socket, gap) in gaps {
            self.spawn_fill(&message.room, socket, gap);
        }
    }

    /// The rooms to subscribe again on a new bridge stream, each after its
    /// newest id so that the bridge resumes without a gap.
    pub fn subscriptions(&self) -> Vec<(String, Option<u64>)> {
        self.lock().iter().map(|(name, room)| (name.clone(), room.last_id)).collect()
    }

    fn spawn_fill(self: &Arc<Self>, room: &str, socket: SocketId, gap: Gap) {
        let (hub, room) = (self.clone(), room.to_owned());
        self.tracker.spawn(async move { hub.fill(&room, socket, gap).await });
    }

    /// Sends a member the messages of `gap`, then what was held back.
    async fn fill(self: &Arc<Self>, room_name: &str, socket: SocketId, gap: Gap) {
        let (first_recent, recent) = match self.lock().get(room_name) {
            Some(room) => room.recent_range(gap),
            None => return,
        };
        let older = if gap.after + 1 < first_recent {
            self.read_history(room_name, Gap { after: gap.after, up_to: gap.up_to.min(first_recent - 1) }).await
        } else {
            Vec::new()
        };
        let mut next_gap = None;
        {
            let mut rooms = self.lock();
            let Some(room) = rooms.get_mut(room_name) else { return };
            let mut messages: Vec<Delivered> = older.iter().map(|message| room.admit(message)).collect();
            messages.extend(recent);
            let Some(member) = room.members.get_mut(&socket) else { return };
            let mut cursor = gap.after;
            let mut replayed = 0;
            for message in messages {
                if message.id > cursor {
                    cursor = message.id;
                    if let Some(frame) = message.frame {
                        member.mailbox.offer(frame);
                        replayed += 1;
                    }
                }
            }
            metrics::replayed(replayed);
            if cursor < gap.up_to {
                // Stream offsets skip a number now and then (at a segment
                // boundary), and retention drops old messages: either way
                // there is nothing more to send for this range.
                tracing::debug!(room = room_name, after = cursor, up_to = gap.up_to, "ids without messages");
            }
            member.cursor = Cursor::At(gap.up_to);
            for held in member.filling.take().unwrap_or_default() {
                if next_gap.is_none() {
                    next_gap = member.offer(&held);
                } else if let Some(more) = &mut member.filling {
                    more.push(held);
                }
            }
        }
        if let Some(gap) = next_gap {
            Box::pin(self.fill(room_name, socket, gap)).await;
        }
    }

    /// Reads `gap` from the bridge, page by page, retrying while it is away.
    async fn read_history(&self, room: &str, gap: Gap) -> Vec<Message> {
        let mut out = Vec::new();
        let mut after = gap.after;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + FILL_PATIENCE;
        while after < gap.up_to && tokio::time::Instant::now() < deadline {
            match self.upstream.history(room, after, gap.up_to).await {
                Ok(page) if page.is_empty() => break,
                Ok(page) => {
                    backoff.reset();
                    after = page.iter().map(|m| m.id).max().unwrap_or(after).max(after);
                    out.extend(page);
                }
                Err(error) => {
                    tracing::debug!(room, %error, "history read failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        out
    }
}

/// How long ago a server timestamp (ms since the Unix epoch) was.
fn age_of(ts_millis: i64) -> Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let then = Duration::from_millis(u64::try_from(ts_millis).unwrap_or_default());
    now.saturating_sub(then)
}
