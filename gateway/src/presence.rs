//! Presence: who is in each room, on every gateway, kept right when a
//! gateway drains or crashes (`docs/protocol.md`, "Presence").
//!
//! A user is present in a room while at least one of its sockets, on any
//! gateway, has joined it; several tabs are one presence. The state lives in
//! Redis ([`store`]): per room, the users and how many gateways hold each;
//! per gateway, the (room, user) pairs it holds and a heartbeat with a TTL.
//! Lua scripts decide "first socket" and "last socket" atomically and
//! publish each change, numbered, on [`CHANNEL`]; every gateway follows the
//! channel, keeps each room's changes for one batch interval and then sends
//! each of its own members of the room one `presence_diff` with their net
//! effect ([`batch`]): a crowd of `n` arrivals costs each member one frame
//! per interval, not `n`.
//!
//! - A socket's `joined` (or `members` answer) carries the members as of
//!   change `n`; the socket is then told only changes after `n`, so it never
//!   sees a change twice nor misses one that raced with its join: changes
//!   that come while the answer is being made are held, and told with the
//!   next batch once the answer is queued.
//! - A crashed gateway stops beating; within TTL + one heartbeat period a
//!   surviving gateway removes its entries, and announces `leave` only for
//!   users that no live gateway holds: a user who reconnected elsewhere in
//!   the meantime was never absent, so nobody sees a leave and a join.
//! - A draining gateway keeps the entries of its closing sockets (their
//!   users are reconnecting elsewhere) and removes them when it exits.

mod batch;
mod store;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::batch::{Diff, Entry, Reset};
use self::store::{Keys, Link, Op, Snapshot, Writer};
use crate::mailbox::{Mailbox, SocketId};
use crate::metrics;
use crate::redis_client::SharedConnection;
use crate::subscriptions::Listener;

/// The Redis channel on which every presence change is announced.
pub const CHANNEL: &str = "warren:presence";
/// The longest a join waits for Redis before answering with what the
/// gateway knows (its last view of the room).
const JOIN_WAIT: Duration = Duration::from_secs(3);
/// Changes kept for a socket whose join (or `members`) is still being
/// answered.
const MAX_HELD: usize = 4096;

/// A change as published: `<seq>|<join|leave>|<room>|<user>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its number (one counter for every room).
    pub seq: u64,
    /// Whether the user arrived (else left).
    pub join: bool,
    /// The room.
    pub room: String,
    /// The user.
    pub user: String,
}

impl Change {
    /// Parses a published change; `None` for anything else.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(4, '|');
        let seq = parts.next()?.parse().ok()?;
        let join = match parts.next()? {
            "join" => true,
            "leave" => false,
            _ => return None,
        };
        let (room, user) = (parts.next()?.to_owned(), parts.next()?.to_owned());
        Some(Self { seq, join, room, user })
    }

    fn entry(&self) -> Entry {
        Entry { seq: self.seq, join: self.join, user: self.user.as_str().into() }
    }
}

/// One local socket in a room, as presence sees it.
#[derive(Debug)]
struct Watcher {
    user: String,
    mailbox: Mailbox,
    /// Changes up to this number are in what the socket was told.
    after: u64,
    /// False while a `joined` or `members` answer is being made: changes
    /// are held back until it is queued.
    ready: bool,
    /// Changes of batches flushed while the socket was not ready.
    held: Vec<Entry>,
}

/// A room with sockets (or held entries) on this gateway.
#[derive(Debug, Default)]
struct LocalRoom {
    watchers: HashMap<SocketId, Watcher>,
    /// Sockets per user here. During a drain a user whose sockets closed
    /// stays with 0: its entry is kept until the gateway exits.
    users: HashMap<String, usize>,
    /// The members as of change `view_seq`, to tell sockets what changed
    /// when announcements may have been missed.
    view: BTreeSet<String>,
    view_seq: u64,
    /// Changes announced since the last flush, in order.
    pending: Vec<Entry>,
}

#[derive(Debug, Default)]
struct Local {
    rooms: HashMap<String, LocalRoom>,
    /// The rooms of each socket.
    sockets: HashMap<SocketId, HashSet<String>>,
    /// (room, user) pairs held, for the gauge.
    entries: usize,
    /// Rooms with something to send at the next flush.
    dirty: HashSet<String>,
}

/// Presence on this gateway: its sockets' rooms and the link to Redis.
#[derive(Debug)]
pub struct Presence {
    local: Mutex<Local>,
    ops: mpsc::UnboundedSender<Op>,
    draining: AtomicBool,
}

/// The tasks that keep presence in Redis; see [`Tasks::run`].
#[derive(Debug)]
pub struct Tasks {
    presence: Arc<Presence>,
    ops: mpsc::UnboundedReceiver<Op>,
    redis: SharedConnection,
    keys: Keys,
    heartbeat: Duration,
    ttl: Duration,
    batch: Duration,
}

// === impl Presence ===

impl Presence {
    /// Presence for the gateway `instance` on `redis`, beating
    /// every `heartbeat` with a TTL of `ttl` and sending changes every
    /// `batch`; nothing runs until [`Tasks::run`].
    pub fn new(
        redis: SharedConnection,
        instance: &str,
        heartbeat: Duration,
        ttl: Duration,
        batch: Duration,
    ) -> (Arc<Self>, Tasks) {
        let (tx, rx) = mpsc::unbounded_channel();
        let presence = Arc::new(Self { local: Mutex::default(), ops: tx, draining: AtomicBool::new(false) });
        let suffix: u32 = rand::random();
        let keys = Keys::new(format!("{instance}~{suffix:08x}").into());
        let tasks = Tasks { presence: presence.clone(), ops: rx, redis, keys, heartbeat, ttl, batch };
        (presence, tasks)
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A socket joins a room: records it (in Redis when it is the user's
    /// first socket here) and returns the room's members, sorted, `user`
    /// included. Changes for the socket are held until [`Presence::joined`].
    pub async fn join(&self, room: &str, user: &str, socket: SocketId, mailbox: &Mailbox) -> Vec<String> {
        let answer = {
            let mut local = self.lock();
            let local = &mut *local;
            let here = local.rooms.entry(room.to_owned()).or_default();
            let watcher =
                Watcher { user: user.to_owned(), mailbox: mailbox.clone(), after: 0, ready: false, held: Vec::new() };
            let again = here.watchers.insert(socket, watcher).is_some();
            local.sockets.entry(socket).or_default().insert(room.to_owned());
            let (tx, rx) = oneshot::channel();
            let count = here.users.entry(user.to_owned()).or_insert_with(|| {
                local.entries += 1;
                0
            });
            if !again {
                *count += 1;
            }
            // Sent under the lock: Redis sees changes in the order made here.
            let op = if !again && *count == 1 {
                Op::Add { room: room.to_owned(), user: user.to_owned(), reply: Some(tx) }
            } else {
                Op::Look { room: room.to_owned(), reply: tx }
            };
            let _ = self.ops.send(op);
            metrics::presence_entries(local.entries);
            rx
        };
        let snapshot = tokio::time::timeout(JOIN_WAIT, answer).await.ok().and_then(Result::ok).unwrap_or_default();
        let mut local = self.lock();
        let Some(here) = local.rooms.get_mut(room) else { return vec![user.to_owned()] };
        if let Some(seq) = snapshot.seq
            && (seq >= here.view_seq || here.view.is_empty())
        {
            here.view = snapshot.members.iter().cloned().collect();
            here.view_seq = seq;
        }
        if let Some(watcher) = here.watchers.get_mut(&socket) {
            // Without an answer from Redis every change that comes is news.
            watcher.after = snapshot.seq.unwrap_or(0);
        }
        let mut members: BTreeSet<String> = match snapshot.seq {
            Some(_) => snapshot.members.into_iter().collect(),
            None => here.view.clone(),
        };
        members.insert(user.to_owned());
        members.into_iter().collect()
    }

    /// The socket's `joined` is queued: the changes held meanwhile go with
    /// the room's next batch.
    pub fn joined(&self, room: &str, socket: SocketId) {
        self.release(room, socket);
    }

    /// A socket asks for a room's whole member list: returns the members,
    /// sorted, the socket's user included, as of a change after which the
    /// socket is then told every change, like a join. Changes are held
    /// until [`Presence::listed`], which must follow either way. `None`
    /// when Redis did not answer in time (or the socket is not in the room).
    pub async fn members(&self, room: &str, socket: SocketId) -> Option<Vec<String>> {
        let answer = {
            let mut local = self.lock();
            let watcher = local.rooms.get_mut(room)?.watchers.get_mut(&socket)?;
            watcher.ready = false;
            let (tx, rx) = oneshot::channel();
            let _ = self.ops.send(Op::Look { room: room.to_owned(), reply: tx });
            rx
        };
        let snapshot = tokio::time::timeout(JOIN_WAIT, answer).await.ok().and_then(Result::ok).unwrap_or_default();
        let seq = snapshot.seq?;
        let mut local = self.lock();
        let watcher = local.rooms.get_mut(room)?.watchers.get_mut(&socket)?;
        watcher.after = seq;
        let mut members: BTreeSet<String> = snapshot.members.into_iter().collect();
        members.insert(watcher.user.clone());
        Some(members.into_iter().collect())
    }

    /// A room's members now, as Redis holds them, sorted (the server API);
    /// `None` when Redis did not answer in time.
    pub async fn room_members(&self, room: &str) -> Option<Vec<String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ops.send(Op::Look { room: room.to_owned(), reply: tx });
        let snapshot = tokio::time::timeout(JOIN_WAIT, rx).await.ok()?.ok()?;
        snapshot.seq?;
        let mut members = snapshot.members;
        members.sort_unstable();
        Some(members)
    }

    /// The socket's `members` answer (or its error) is queued: the changes
    /// held meanwhile go with the room's next batch.
    pub fn listed(&self, room: &str, socket: SocketId) {
        self.release(room, socket);
    }

    fn release(&self, room: &str, socket: SocketId) {
        let mut local = self.lock();
        let local = &mut *local;
        let Some(watcher) = local.rooms.get_mut(room).and_then(|here| here.watchers.get_mut(&socket)) else { return };
        watcher.ready = true;
        if !watcher.held.is_empty() {
            local.dirty.insert(room.to_owned());
        }
    }

    /// A socket left a room (a `leave` frame).
    pub fn leave(&self, room: &str, socket: SocketId) {
        let mut local = self.lock();
        if let Some(rooms) = local.sockets.get_mut(&socket) {
            rooms.remove(room);
        }
        self.forget(&mut local, room, socket, false);
    }

    /// A socket closed: it leaves all its rooms. While the gateway drains,
    /// the entries stay (the user is moving to another gateway) until exit.
    pub fn socket_closed(&self, socket: SocketId) {
        let keep = self.draining.load(Ordering::Relaxed);
        let mut local = self.lock();
        for room in local.sockets.remove(&socket).unwrap_or_default() {
            self.forget(&mut local, &room, socket, keep);
        }
    }

    /// The gateway drains: closing sockets keep their entries from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn forget(&self, local: &mut Local, room: &str, socket: SocketId, keep: bool) {
        let Some(here) = local.rooms.get_mut(room) else { return };
        let Some(watcher) = here.watchers.remove(&socket) else { return };
        if let Some(count) = here.users.get_mut(&watcher.user) {
            *count = count.saturating_sub(1);
            if *count == 0 && !keep {
                here.users.remove(&watcher.user);
                local.entries -= 1;
                let _ = self.ops.send(Op::Remove { room: room.to_owned(), user: watcher.user });
            }
        }
        if here.watchers.is_empty() && here.users.is_empty() {
            local.rooms.remove(room);
        }
        metrics::presence_entries(local.entries);
    }

    /// The (room, user) pairs this gateway holds.
    fn held(&self) -> Vec<(String, String)> {
        let local = self.lock();
        local.rooms.iter().flat_map(|(room, here)| here.users.keys().map(|user| (room.clone(), user.clone()))).collect()
    }

    fn rooms(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Keeps an announced change for the next batch of its room, if this
    /// gateway has sockets there.
    fn announce(&self, change: &Change) {
        let mut local = self.lock();
        let local = &mut *local;
        let Some(here) = local.rooms.get_mut(&change.room) else { return };
        if change.seq > here.view_seq {
            here.view_seq = change.seq;
            if change.join {
                here.view.insert(change.user.clone());
            } else {
                here.view.remove(&change.user);
            }
        }
        if here.watchers.is_empty() {
            return;
        }
        here.pending.push(change.entry());
        if !local.dirty.contains(&change.room) {
            local.dirty.insert(change.room.clone());
        }
    }

    /// Sends every room with news its batch: one frame per socket at most.
    fn flush(&self) {
        let rooms = std::mem::take(&mut self.lock().dirty);
        let mut sent = 0;
        for room in rooms {
            // One room at a time: joins elsewhere need not wait for them all.
            if let Some(here) = self.lock().rooms.get_mut(&room) {
                sent += here.flush(&room, None);
            }
        }
        metrics::presence_sent(sent);
    }

    /// After announcements may have been missed (the subscription broke):
    /// tells each socket of a room, with what is pending, what changed
    /// since the view, at once, and takes the snapshot as the new view.
    fn catch_up(&self, room: &str, snapshot: Snapshot) {
        let Some(seq) = snapshot.seq else { return };
        let mut local = self.lock();
        let Some(here) = local.rooms.get_mut(room) else { return };
        let now: BTreeSet<String> = snapshot.members.into_iter().collect();
        let gone = here.view.difference(&now).map(|user| (false, user));
        let came = now.difference(&here.view).map(|user| (true, user));
        let missed: Vec<Entry> =
            gone.chain(came).map(|(join, user)| Entry { seq, join, user: user.as_str().into() }).collect();
        // Pending changes go now too: the view already has them, so the
        // snapshot's difference from it does not.
        let sent = here.flush(room, Some(Reset { seq, missed: &missed }));
        here.view = now;
        here.view_seq = seq;
        metrics::presence_sent(sent);
    }
}

// === impl LocalRoom ===

impl LocalRoom {
    /// Sends each ready socket of the room one `presence_diff` of what it
    /// was not told yet among the changes pending and those it held (and,
    /// after a lost subscription, `reset`'s); sockets whose answer is still
    /// being made hold the pending changes instead. Returns how many frames
    /// were queued.
    fn flush(&mut self, room: &str, reset: Option<Reset<'_>>) -> usize {
        let pending = std::mem::take(&mut self.pending);
        // Sockets told the same so far are told the same now: one frame,
        // encoded once, for all of them (nearly every socket of a room).
        let mut shared: HashMap<u64, (Option<Bytes>, u64)> = HashMap::new();
        let mut sent = 0;
        for watcher in self.watchers.values_mut() {
            if !watcher.ready {
                batch::hold(&mut watcher.held, &pending, MAX_HELD);
                continue;
            }
            let frame = if watcher.held.is_empty() {
                let (frame, after) = shared
                    .entry(watcher.after)
                    .or_insert_with_key(|&after| {
                        let mut after = after;
                        (Diff::news(&mut after, &[], &pending, reset).frame(room), after)
                    })
                    .clone();
                watcher.after = after;
                frame
            } else {
                let held = std::mem::take(&mut watcher.held);
                Diff::news(&mut watcher.after, &held, &pending, reset).frame(room)
            };
            if let Some(frame) = frame
                && watcher.mailbox.offer(frame)
            {
                sent += 1;
            }
        }
        sent
    }
}

// === impl Tasks ===

impl Tasks {
    /// What follows [`CHANNEL`] (on the gateway's one subscription): every
    /// gateway's changes, announced to this gateway's sockets.
    pub fn changes(&self) -> Arc<Changes> {
        Arc::new(Changes {
            presence: self.presence.clone(),
            link: tokio::sync::Mutex::new(Link::new(self.redis.clone())),
        })
    }

    /// Keeps this gateway's presence in Redis until `token`: writes its
    /// entries and heartbeat, and removes the entries
    /// of gateways whose heartbeat expired. On `token`, removes this
    /// gateway's entries (announcing the leaves of users present nowhere
    /// else) and returns.
    pub async fn run(self, token: CancellationToken) {
        let Self { presence, ops, redis, keys, heartbeat, ttl, batch } = self;
        let inner = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(flush_every(presence.clone(), batch, inner.clone()));
        tasks.spawn(store::sweep(redis.clone(), keys.owner.clone(), heartbeat, inner.clone()));
        tasks.close();
        Writer::new(presence, keys, redis, ttl).run(ops, heartbeat, token).await;
        inner.cancel();
        tasks.wait().await;
    }
}

/// Every `every` until `token`, sends each room's batch of changes.
async fn flush_every(presence: Arc<Presence>, every: Duration, token: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => presence.flush(),
            () = token.cancelled() => return,
        }
    }
}

/// The presence changes of every gateway, as [`CHANNEL`] carries them.
#[derive(Debug)]
pub struct Changes {
    presence: Arc<Presence>,
    /// For the catch-up after a (re)subscription.
    link: tokio::sync::Mutex<Link>,
}

impl Listener for Changes {
    fn hears(&self, channel: &str) -> bool {
        channel == CHANNEL
    }

    fn heard(&self, _: &str, payload: String) {
        if let Some(change) = Change::parse(&payload) {
            self.presence.announce(&change);
        }
    }

    /// Changes made while the subscription was down were not heard: every
    /// room is caught up from Redis.
    fn resubscribed(&self) -> BoxFuture<'_, Result<(), redis::RedisError>> {
        Box::pin(async move {
            let rooms = self.presence.rooms();
            let snapshots = store::look_all(&mut *self.link.lock().await, &rooms).await?;
            for (room, snapshot) in rooms.iter().zip(snapshots) {
                self.presence.catch_up(room, snapshot);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Outbound;

    #[test]
    fn changes_parse_as_the_scripts_publish_them() {
        let change = Change::parse("42|leave|lobby|alice.b-1").expect("parses");
        assert_eq!(change, Change { seq: 42, join: false, room: "lobby".into(), user: "alice.b-1".into() });
        assert!(Change::parse("x|join|lobby|a").is_none());
        assert!(Change::parse("1|stay|lobby|a").is_none());
        assert!(Change::parse("1|join|lobby").is_none());
    }

    fn presence() -> (Arc<Presence>, Tasks) {
        let second = Duration::from_secs(1);
        let target = crate::redis_client::Target::node("redis://127.0.0.1:1");
        let redis = crate::redis_client::Redis::open(&target, &platform::tls::Files::default()).expect("url");
        Presence::new(SharedConnection::new(redis), "gw", second, second * 3, second)
    }

    /// A socket's mailbox, and the same mailbox as its writer reads it.
    fn socket() -> (Mailbox, Mailbox) {
        let mailbox = Mailbox::new(16, 1 << 20);
        (mailbox.clone(), mailbox)
    }

    fn frames(rx: &mut Mailbox) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        rx.take(usize::MAX, |frame| {
            if let Outbound::Text(bytes) = frame {
                out.push(serde_json::from_slice(&bytes).expect("json"));
            }
        });
        out
    }

    fn diff(joins: &[&str], leaves: &[&str]) -> serde_json::Value {
        serde_json::json!({"type":"presence_diff","room":"r","joins":joins,"leaves":leaves})
    }

    fn change(seq: u64, join: bool, user: &str) -> Change {
        Change { seq, join, room: "r".into(), user: user.into() }
    }

    fn snapshot(seq: u64, members: &[&str]) -> Snapshot {
        Snapshot { seq: Some(seq), members: members.iter().map(|m| (*m).to_owned()).collect() }
    }

    /// Answers the next operation with `snapshot`, as the writer would;
    /// true when it was an add.
    async fn answer(ops: &mut mpsc::UnboundedReceiver<Op>, snapshot: Snapshot) -> bool {
        match ops.recv().await.expect("an op") {
            Op::Add { reply, .. } => {
                reply.expect("reply").send(snapshot).expect("waiting");
                true
            }
            Op::Look { reply, .. } => {
                reply.send(snapshot).expect("waiting");
                false
            }
            Op::Remove { .. } => panic!("unexpected remove"),
        }
    }

    /// Joins with Redis answering `snapshot`.
    async fn join(
        presence: &Presence,
        ops: &mut mpsc::UnboundedReceiver<Op>,
        id: SocketId,
        user: &str,
        mailbox: &Mailbox,
        snapshot: Snapshot,
    ) -> (Vec<String>, bool) {
        tokio::join!(presence.join("r", user, id, mailbox), answer(ops, snapshot))
    }

    #[tokio::test]
    async fn a_socket_gets_only_changes_after_its_snapshot_and_tabs_are_one_presence() {
        let (presence, mut tasks) = presence();
        let (mailbox, mut rx) = socket();
        let (members, added) = join(&presence, &mut tasks.ops, 1, "ann", &mailbox, snapshot(7, &["bob", "ann"])).await;
        assert!(added, "the first socket of ann adds her");
        assert_eq!(members, ["ann", "bob"]);
        // A change that raced with the join (seq 7: in the snapshot) and one after it.
        presence.announce(&change(7, true, "bob"));
        presence.announce(&change(8, true, "cy"));
        presence.flush();
        assert!(frames(&mut rx).is_empty(), "held until joined is queued");
        presence.joined("r", 1);
        assert!(frames(&mut rx).is_empty(), "held changes go with the next batch");
        presence.flush();
        assert_eq!(frames(&mut rx), [diff(&["cy"], &[])]);

        // A second tab: no add; closing the first keeps ann present.
        let (tab, _tab_rx) = socket();
        let (_, added) = join(&presence, &mut tasks.ops, 2, "ann", &tab, snapshot(8, &[])).await;
        assert!(!added, "a second tab only looks");
        presence.joined("r", 2);
        presence.socket_closed(1);
        assert!(tasks.ops.try_recv().is_err(), "ann still has a tab");
        presence.leave("r", 2);
        assert!(matches!(tasks.ops.try_recv(), Ok(Op::Remove { user, .. }) if user == "ann"));
    }

    #[tokio::test]
    async fn a_crowd_costs_each_socket_one_frame_per_batch() {
        let (presence, mut tasks) = presence();
        let mut sockets = Vec::new();
        for id in 1..=50 {
            let (mailbox, rx) = socket();
            let user = format!("u{id:02}");
            join(&presence, &mut tasks.ops, id, &user, &mailbox, snapshot(id, &[])).await;
            presence.joined("r", id);
            sockets.push(rx);
        }
        for id in 1..=50 {
            presence.announce(&change(id, true, &format!("u{id:02}")));
        }
        // dan came and went within the batch; eve was there and left.
        presence.announce(&change(51, true, "dan"));
        presence.announce(&change(52, false, "dan"));
        presence.announce(&change(53, false, "eve"));
        presence.flush();
        for (index, rx) in sockets.iter_mut().enumerate() {
            let got = frames(rx);
            assert_eq!(got.len(), 1, "socket {index}: {got:?}");
            // Each is told the arrivals after its own: never its own.
            let later: Vec<String> = (index + 2..=50).map(|id| format!("u{id:02}")).collect();
            let later: Vec<&str> = later.iter().map(String::as_str).collect();
            assert_eq!(got[0], diff(&later, &["eve"]), "socket {index}");
        }
        presence.announce(&change(54, true, "dan"));
        presence.announce(&change(55, false, "dan"));
        presence.flush();
        assert!(sockets.iter_mut().all(|rx| frames(rx).is_empty()), "a net no-op makes no frame");
    }

    #[tokio::test]
    async fn members_answers_as_of_a_snapshot_and_holds_changes_meanwhile() {
        let (presence, mut tasks) = presence();
        let (mailbox, mut rx) = socket();
        join(&presence, &mut tasks.ops, 1, "ann", &mailbox, snapshot(3, &["ann", "bob"])).await;
        presence.joined("r", 1);
        presence.announce(&change(4, true, "cy"));
        let ask = async {
            let members = presence.members("r", 1).await;
            presence.listed("r", 1);
            members
        };
        let changes = async {
            // Lands while the answer is being made: held, then told if new.
            presence.announce(&change(5, true, "dan"));
            presence.announce(&change(6, true, "eve"));
            presence.flush();
            answer(&mut tasks.ops, snapshot(5, &["ann", "bob", "cy", "dan"])).await
        };
        let (members, added) = tokio::join!(ask, changes);
        assert!(!added);
        assert_eq!(members.expect("answered"), ["ann", "bob", "cy", "dan"]);
        assert!(frames(&mut rx).is_empty(), "nothing was sent while the answer was made");
        presence.flush();
        assert_eq!(frames(&mut rx), [diff(&["eve"], &[])], "cy and dan are in the answer");
    }

    #[tokio::test]
    async fn members_without_redis_answers_none_and_changes_flow_again() {
        tokio::time::pause();
        let (presence, mut tasks) = presence();
        let (mailbox, mut rx) = socket();
        join(&presence, &mut tasks.ops, 1, "ann", &mailbox, snapshot(3, &["ann"])).await;
        presence.joined("r", 1);
        assert_eq!(presence.members("r", 1).await, None, "Redis never answered");
        presence.listed("r", 1);
        presence.announce(&change(4, true, "bob"));
        presence.flush();
        assert_eq!(frames(&mut rx), [diff(&["bob"], &[])]);
        assert_eq!(presence.members("elsewhere", 1).await, None, "not in that room");
    }

    #[tokio::test]
    async fn a_draining_gateway_keeps_the_entries_of_closing_sockets() {
        let (presence, mut tasks) = presence();
        let (mailbox, _rx) = socket();
        join(&presence, &mut tasks.ops, 1, "ann", &mailbox, Snapshot::default()).await;
        presence.drain();
        presence.socket_closed(1);
        assert!(tasks.ops.try_recv().is_err(), "no remove while draining");
        assert_eq!(presence.held(), [("r".to_owned(), "ann".to_owned())], "kept until exit");
    }

    #[tokio::test]
    async fn catching_up_sends_what_changed_since_the_view() {
        let (presence, mut tasks) = presence();
        let (mailbox, mut rx) = socket();
        join(&presence, &mut tasks.ops, 1, "ann", &mailbox, snapshot(5, &["ann", "bob"])).await;
        presence.joined("r", 1);
        presence.announce(&change(6, true, "dan"));
        presence.catch_up("r", snapshot(9, &["ann", "cy", "dan"]));
        assert_eq!(frames(&mut rx), [diff(&["cy", "dan"], &["bob"])], "at once, pending changes included");
        presence.announce(&change(9, true, "cy"));
        presence.flush();
        assert!(frames(&mut rx).is_empty(), "already told");
    }
}
