//! The gateway's rooms: which sockets joined what, and the one place where
//! ordering, replay and de-duplication happen.
//!
//! The bridge answers a room's subscription with `Subscribed` (the room's
//! newest id then) and streams every later message in id order. Ids are
//! sparse within a room (rooms share partitions), so each message names the
//! room's previous id (`prev_id`). Every member keeps a cursor, the last id
//! it was sent; a message whose `prev_id` is above the cursor reveals a gap:
//! the member is put into *filling* (live messages wait in a buffer) while the
//! range is read from the room's recent messages or the bridge's `History`.
//! The same rule serves a join with `since`, a join without it (the newest
//! [`JOIN_TAIL`]), and a room that moved to another bridge. Each message is
//! encoded once per gateway and its bytes shared by every socket that gets it.
//!
//! A join is answered only once the room's subscription holds
//! ([`Hub::subscribe`] gives a [`Ticket`]); a room no bridge answers for is
//! an error the client may retry, never a silent room.
//!
//! Identical history reads that overlap (a crowd joining a new room) share
//! one request, and what they bring back seeds the room's recent messages,
//! so that the next joiners are served from memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use ops::backoff::Backoff;
use proto::rules::RecentSends;
use proto::warren::v1::Message;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::link::{Bridge, HistoryResult, Refusal, Rooms};
use crate::mailbox::{Mailbox, SocketId};
use crate::metrics;
use crate::protocol::ServerFrame;

/// Messages a join without `since` replays.
pub const JOIN_TAIL: u32 = 50;
/// Recent messages kept per room, to serve joins without asking the bridge.
const RECENT: usize = 256;
/// Recent (user, cid) pairs a room remembers, to skip repeated sends.
const REMEMBERED_SENDS: usize = 4096;
/// How long a gap fill keeps retrying the bridge before giving up on the range.
const FILL_PATIENCE: Duration = Duration::from_secs(30);
/// How long a join waits for the room's subscription to hold.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// How long a room whose subscription was refused waits to ask again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// No bridge answered for the room in time; retrying may succeed.
    #[error("the room is not available right now; retry")]
    Unavailable,
    /// The bridge refused the room's subscription.
    #[error("{}", .0.message)]
    Refused(Refusal),
}

impl JoinError {
    /// Whether joining again later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Unavailable => true,
            Self::Refused(refusal) => refusal.retryable,
        }
    }
}

#[derive(Debug, Clone)]
struct Delivered {
    id: u64,
    prev_id: u64,
    /// The encoded frame; `None` for a repeated send, which only moves
    /// cursors.
    frame: Option<Bytes>,
}

/// What a member still needs before live messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Ids `(after, up_to]`.
    Range { after: u64, up_to: u64 },
    /// The newest [`JOIN_TAIL`] messages up to this id.
    Tail { up_to: u64 },
}

impl Gap {
    fn up_to(self) -> u64 {
        match self {
            Self::Range { up_to, .. } | Self::Tail { up_to } => up_to,
        }
    }
}

#[derive(Debug)]
struct Member {
    mailbox: Mailbox,
    /// The last id this member was sent (or skipped past).
    cursor: u64,
    /// While a gap is being filled: live messages held back, in order.
    filling: Option<Vec<Delivered>>,
}

#[derive(Debug, Default)]
struct Room {
    /// `Some` until the bridge answered the subscription: joins waiting.
    waiting: Option<Vec<oneshot::Sender<Result<(), Refusal>>>>,
    /// Joins holding a [`Ticket`]: the room stays while there are any.
    tickets: usize,
    /// The newest id known: from `Subscribed` or the last message.
    last_id: u64,
    /// The newest messages, a chain (each one's `prev_id` is the id of the
    /// one before), ending at `last_id` when not empty.
    recent: VecDeque<Delivered>,
    /// The first id seen for each recent (user, cid).
    sends: RecentSends<REMEMBERED_SENDS, { i64::MAX }>,
    members: HashMap<SocketId, Member>,
}

type HistoryKey = (String, u64, u64, u32);

/// All rooms of this gateway.
#[derive(Debug)]
pub struct Hub {
    /// Itself, for the tasks it starts.
    me: Weak<Hub>,
    rooms: Mutex<HashMap<String, Room>>,
    bridge: Arc<dyn Bridge>,
    tracker: TaskTracker,
    /// History reads in flight, shared by identical requests.
    reads: Arc<Mutex<HashMap<HistoryKey, Shared<BoxFuture<'static, HistoryResult>>>>>,
}

/// Proof that a room's subscription holds, for one join; dropping it unused
/// lets the room go if nobody else is in it.
#[derive(Debug)]
#[must_use = "a ticket is for joining"]
pub struct Ticket {
    hub: Arc<Hub>,
    room: String,
    used: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.used {
            self.hub.release(&self.room);
        }
    }
}

// === impl Member ===

impl Member {
    /// Takes the next live message; returns a gap to fill when one opens.
    fn offer(&mut self, message: &Delivered) -> Option<Gap> {
        if let Some(held) = &mut self.filling {
            held.push(message.clone());
            return None;
        }
        if message.id <= self.cursor {
            return None;
        }
        if message.prev_id <= self.cursor {
            self.cursor = message.id;
            if let Some(frame) = &message.frame {
                self.mailbox.offer(frame.clone());
            }
            return None;
        }
        self.filling = Some(vec![message.clone()]);
        Some(Gap::Range { after: self.cursor, up_to: message.prev_id })
    }

    /// Ends a fill: the cursor moves to its end and what was held is offered
    /// again; a gap that opens meanwhile, or a room that is ahead of what
    /// the member got, is the next fill.
    fn finish_fill(&mut self, up_to: u64, room_last: u64) -> Option<Gap> {
        self.cursor = self.cursor.max(up_to);
        let held = self.filling.take().unwrap_or_default();
        let mut next = None;
        for message in held {
            match (&next, &mut self.filling) {
                (None, _) => next = self.offer(&message),
                (Some(_), Some(more)) => more.push(message),
                (Some(_), None) => {}
            }
        }
        if next.is_none() && self.cursor < room_last {
            self.filling = Some(Vec::new());
            next = Some(Gap::Range { after: self.cursor, up_to: room_last });
        }
        next
    }
}

// === impl Room ===

impl Room {
    /// Encodes a message for delivery, or marks it a repeat of an earlier
    /// message under the same (user, cid).
    fn admit(&mut self, message: &Message) -> Delivered {
        let key = (message.user.clone(), message.cid.clone());
        let (id, prev_id) = (message.id, message.prev_id);
        // A first id above this one: the same message seen again (a gap
        // fill), not a repeat.
        if self.sends.remember(key, id, message.ts).is_some_and(|first| first < id) {
            return Delivered { id, prev_id, frame: None };
        }
        Delivered { id, prev_id, frame: Some(ServerFrame::message(message).encode()) }
    }

    /// Appends a live message to the recent chain (restarting the chain when
    /// the message does not follow it: the chain then covers ids above its
    /// `prev_id`).
    fn remember(&mut self, message: Delivered) {
        if self.recent.back().is_some_and(|last| last.id != message.prev_id) {
            self.recent.clear();
        }
        self.last_id = message.id;
        self.recent.push_back(message);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// Ids above this are all in `recent` (up to `last_id`).
    fn covered_from(&self) -> u64 {
        self.recent.front().map_or(self.last_id, |first| first.prev_id)
    }

    /// Puts history in front of the recent chain when it ends where the
    /// chain starts: later joins then find it in memory.
    fn absorb(&mut self, history: &[Delivered]) {
        let Some(newest) = history.last() else { return };
        let chained = history.windows(2).all(|pair| pair[1].prev_id == pair[0].id);
        if !chained || newest.id != self.covered_from() || self.recent.len() >= RECENT {
            return;
        }
        for message in history.iter().rev() {
            if self.recent.len() >= RECENT {
                break;
            }
            self.recent.push_front(message.clone());
        }
    }

    /// What memory holds of a gap: the messages, and whether they are all
    /// of it.
    fn in_memory(&self, gap: Gap) -> (Vec<Delivered>, bool) {
        let covered_from = self.covered_from();
        match gap {
            Gap::Range { after, up_to } => {
                let messages = self.recent.iter().filter(|m| m.id > after && m.id <= up_to).cloned().collect();
                (messages, covered_from <= after)
            }
            Gap::Tail { up_to } => {
                let tail = usize::try_from(JOIN_TAIL).unwrap_or(usize::MAX);
                let mut messages: Vec<Delivered> =
                    self.recent.iter().rev().filter(|m| m.id <= up_to).take(tail).cloned().collect();
                messages.reverse();
                let complete = messages.len() >= tail || covered_from == 0;
                (messages, complete)
            }
        }
    }
}

// === impl Hub ===

impl Hub {
    /// A hub whose rooms are fed by `bridge`; fills run on `tracker`.
    pub fn new(bridge: Arc<dyn Bridge>, tracker: TaskTracker) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            rooms: Mutex::new(HashMap::new()),
            bridge,
            tracker,
            reads: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the room's subscription holds (subscribing it first if
    /// it is new here).
    ///
    /// # Errors
    /// [`JoinError::Unavailable`] when no bridge answered in time.
    pub async fn subscribe(&self, room_name: &str) -> Result<Ticket, JoinError> {
        let hub = self.me.upgrade().ok_or(JoinError::Unavailable)?;
        let (ticket, wait) = {
            let mut rooms = self.lock();
            let is_new = !rooms.contains_key(room_name);
            let room = rooms
                .entry(room_name.to_owned())
                .or_insert_with(|| Room { waiting: Some(Vec::new()), ..Room::default() });
            room.tickets += 1;
            let wait = room.waiting.as_mut().map(|waiting| {
                let (tx, rx) = oneshot::channel();
                waiting.push(tx);
                rx
            });
            metrics::rooms(rooms.len());
            if is_new {
                self.bridge.subscribe(room_name);
            }
            (Ticket { hub, room: room_name.to_owned(), used: false }, wait)
        };
        if let Some(wait) = wait {
            match tokio::time::timeout(SUBSCRIBE_WAIT, wait).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(refusal))) => {
                    metrics::join_refused("refused");
                    return Err(JoinError::Refused(refusal));
                }
                _ => {
                    tracing::warn!(room = room_name, "no bridge answered the room's subscription in time");
                    metrics::join_refused("unavailable");
                    return Err(JoinError::Unavailable);
                }
            }
        }
        Ok(ticket)
    }

    /// Adds (or re-adds) a socket to a subscribed room. The caller has
    /// already queued `joined`; history and live messages follow it.
    pub fn join(&self, mut ticket: Ticket, socket: SocketId, mailbox: Mailbox, since: Option<u64>) {
        ticket.used = true;
        let gap = {
            let mut rooms = self.lock();
            let Some(room) = rooms.get_mut(&ticket.room) else { return };
            room.tickets = room.tickets.saturating_sub(1);
            let last = room.last_id;
            let (cursor, gap) = match since {
                // A client may be ahead of this gateway's view: nothing it
                // has is sent again.
                Some(since) if since >= last => (since, None),
                Some(since) => (since, Some(Gap::Range { after: since, up_to: last })),
                None if last == 0 => (0, None),
                // The cursor moves to `last` when the tail is sent.
                None => (0, Some(Gap::Tail { up_to: last })),
            };
            let filling = gap.map(|_| Vec::new());
            room.members.insert(socket, Member { mailbox, cursor, filling });
            gap
        };
        if let Some(gap) = gap {
            self.spawn_fill(&ticket.room, socket, gap);
        }
    }

    /// A ticket went unused: the room goes if nobody is in it.
    fn release(&self, room_name: &str) {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(room_name) else { return };
        room.tickets = room.tickets.saturating_sub(1);
        self.remove_if_empty(&mut rooms, room_name);
    }

    /// Removes a socket from a room; the last one out unsubscribes it.
    pub fn leave(&self, room_name: &str, socket: SocketId) {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(room_name) else { return };
        room.members.remove(&socket);
        self.remove_if_empty(&mut rooms, room_name);
    }

    fn remove_if_empty(&self, rooms: &mut HashMap<String, Room>, room_name: &str) {
        if rooms.get(room_name).is_some_and(|room| room.members.is_empty() && room.tickets == 0) {
            rooms.remove(room_name);
            metrics::rooms(rooms.len());
            self.bridge.unsubscribe(room_name);
        }
    }

    /// The bridge's answer to a subscription: the room's newest id then.
    /// Joins waiting for it go ahead; members behind it (the room moved to
    /// another bridge while messages came) get what they missed.
    pub fn subscribed(&self, room_name: &str, last_id: u64) {
        let mut gaps = Vec::new();
        {
            let mut rooms = self.lock();
            let Some(room) = rooms.get_mut(room_name) else { return };
            if last_id > room.last_id {
                room.last_id = last_id;
                if room.recent.back().is_some_and(|newest| newest.id < last_id) {
                    room.recent.clear();
                }
            }
            for waiter in room.waiting.take().unwrap_or_default() {
                let _ = waiter.send(Ok(()));
            }
            for (&socket, member) in &mut room.members {
                if member.filling.is_none() && member.cursor < room.last_id {
                    member.filling = Some(Vec::new());
                    gaps.push((socket, Gap::Range { after: member.cursor, up_to: room.last_id }));
                }
            }
        }
        for (socket, gap) in gaps {
            self.spawn_fill(room_name, socket, gap);
        }
    }

    /// The bridge refused the room's subscription. Joins waiting for it get
    /// the refusal; a room that has members asks again a little later (it
    /// may be on another bridge by then), so that it does not stay silent.
    pub fn subscribe_failed(&self, room_name: &str, refusal: Refusal) {
        let has_members = {
            let mut rooms = self.lock();
            let Some(room) = rooms.get_mut(room_name) else { return };
            let waiting = room.waiting.as_mut().map(std::mem::take).unwrap_or_default();
            for waiter in waiting {
                let _ = waiter.send(Err(refusal.clone()));
            }
            !room.members.is_empty()
        };
        if has_members && refusal.retryable {
            let (bridge, room) = (self.bridge.clone(), room_name.to_owned());
            self.tracker.spawn(async move {
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                bridge.subscribe(&room);
            });
        }
    }

    /// Takes one message from the bridge and hands it to every member.
    pub fn deliver(&self, message: &Message) {
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
            if message.id <= room.last_id {
                return; // already seen: a resubscription overlaps
            }
            let delivered = room.admit(message);
            for (&socket, member) in &mut room.members {
                if let Some(gap) = member.offer(&delivered) {
                    gaps.push((socket, gap));
                }
            }
            if delivered.frame.is_some() {
                metrics::delivered(room.members.len(), proto::rules::age_of(message.ts));
            }
            room.remember(delivered);
        }
        for (socket, gap) in gaps {
            self.spawn_fill(&message.room, socket, gap);
        }
    }

    /// The rooms to subscribe again on a new bridge stream.
    pub fn rooms(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn spawn_fill(&self, room: &str, socket: SocketId, gap: Gap) {
        let Some(hub) = self.me.upgrade() else { return };
        let room = room.to_owned();
        self.tracker.spawn(async move { hub.fill(&room, socket, gap).await });
    }

    /// Sends a member the messages of `gap`, then what was held back.
    async fn fill(&self, room_name: &str, socket: SocketId, gap: Gap) {
        let mut gap = gap;
        loop {
            let Some((known, complete)) = self.lock().get(room_name).map(|room| room.in_memory(gap)) else {
                return;
            };
            let older = if complete { Vec::new() } else { self.read_history(room_name, gap, &known).await };
            let next = {
                let mut rooms = self.lock();
                let Some(room) = rooms.get_mut(room_name) else { return };
                let older: Vec<Delivered> = older.iter().map(|message| room.admit(message)).collect();
                room.absorb(&older);
                let mut messages = older;
                messages.extend(known);
                messages.sort_by_key(|m| m.id);
                messages.dedup_by_key(|m| m.id);
                if let Gap::Tail { .. } = gap {
                    let tail = usize::try_from(JOIN_TAIL).unwrap_or(usize::MAX);
                    let skip = messages.iter().filter(|m| m.frame.is_some()).count().saturating_sub(tail);
                    let mut skipped = 0;
                    messages.retain(|m| {
                        let keep = skipped >= skip || m.frame.is_none();
                        skipped += usize::from(!keep);
                        keep
                    });
                }
                let room_last = room.last_id;
                let Some(member) = room.members.get_mut(&socket) else { return };
                let mut replayed = 0;
                for message in messages {
                    if message.id > member.cursor && message.id <= gap.up_to() {
                        member.cursor = message.id;
                        if let Some(frame) = message.frame {
                            member.mailbox.offer(frame);
                            replayed += 1;
                        }
                    }
                }
                metrics::replayed(replayed);
                member.finish_fill(gap.up_to(), room_last)
            };
            match next {
                Some(next) => gap = next,
                None => return,
            }
        }
    }

    /// Reads what memory lacks of `gap` from the bridge, page by page,
    /// retrying while it is away.
    async fn read_history(&self, room: &str, gap: Gap, known: &[Delivered]) -> Vec<Message> {
        let (mut after, up_to, newest) = match gap {
            Gap::Range { after, up_to } => (after, known.first().map_or(up_to, |m| m.prev_id.max(after)), 0),
            Gap::Tail { up_to } => (0, known.first().map_or(up_to, |m| m.prev_id), JOIN_TAIL),
        };
        let mut out = Vec::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + FILL_PATIENCE;
        while after < up_to && tokio::time::Instant::now() < deadline {
            match self.shared_history(room, after, up_to, newest).await {
                Ok(page) => {
                    backoff.reset();
                    out.extend(page.messages);
                    if newest > 0 || page.covered_to <= after {
                        break;
                    }
                    after = page.covered_to;
                }
                Err(error) => {
                    tracing::debug!(room, %error, "history read failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        out
    }

    /// One history request, shared with identical ones in flight.
    async fn shared_history(&self, room: &str, after: u64, up_to: u64, newest: u32) -> HistoryResult {
        let key = (room.to_owned(), after, up_to, newest);
        let read = {
            let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
            reads
                .entry(key.clone())
                .or_insert_with(|| {
                    let (request, reads) = (self.bridge.history(room, after, up_to, newest), self.reads.clone());
                    metrics::history_request();
                    async move {
                        let result = request.await;
                        reads.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        read.await
    }
}

impl Rooms for Hub {
    fn subscribed(&self, room: &str, last_id: u64) {
        Hub::subscribed(self, room, last_id);
    }

    fn subscribe_failed(&self, room: &str, refusal: Refusal) {
        Hub::subscribe_failed(self, room, refusal);
    }

    fn deliver(&self, message: &Message) {
        Hub::deliver(self, message);
    }

    fn rooms(&self) -> Vec<String> {
        Hub::rooms(self)
    }
}

#[cfg(test)]
mod tests;
