//! Presence: who is in each room, on every gateway, kept right when a
//! gateway drains or crashes (`docs/protocol.md`, "Presence").
//!
//! A user is present in a room while at least one of its sockets, on any
//! gateway, has joined it; several tabs are one presence. The state lives in
//! Redis ([`store`]): per room, the users and how many gateways hold each;
//! per gateway, the (room, user) pairs it holds and a heartbeat with a TTL.
//! Lua scripts decide "first socket" and "last socket" atomically and
//! publish each change, numbered, on [`CHANNEL`]; every gateway follows the
//! channel and forwards `presence` frames to its own members of the room.
//!
//! - A socket's `joined` carries the members as of change `n`; the socket is
//!   then sent only changes after `n`, so it never sees a change twice nor
//!   misses one that raced with its join.
//! - A crashed gateway stops beating; within TTL + one heartbeat period a
//!   surviving gateway removes its entries, and announces `leave` only for
//!   users that no live gateway holds: a user who reconnected elsewhere in
//!   the meantime was never absent, so nobody sees a leave and a join.
//! - A draining gateway keeps the entries of its closing sockets (their
//!   users are reconnecting elsewhere) and removes them when it exits.

mod store;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use ops::backoff::Backoff;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::store::{Keys, Link, Op, Snapshot, Writer};
use crate::mailbox::{Mailbox, SocketId};
use crate::metrics;
use crate::protocol::ServerFrame;

/// The Redis channel on which every presence change is announced.
pub const CHANNEL: &str = "warren:presence";
/// The longest a join waits for Redis before answering with what the
/// gateway knows (its last view of the room).
const JOIN_WAIT: Duration = Duration::from_secs(3);
/// Changes kept for a socket whose join is still being answered.
const MAX_HELD: usize = 1024;

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

    fn frame(&self) -> Bytes {
        let state = if self.join { "join" } else { "leave" };
        ServerFrame::Presence { room: &self.room, user: &self.user, state }.encode()
    }
}

/// One local socket in a room, as presence sees it.
#[derive(Debug)]
struct Watcher {
    user: String,
    mailbox: Mailbox,
    /// Changes up to this number are in what the socket was told.
    after: u64,
    /// False until `joined` is queued: changes are held back until then.
    ready: bool,
    held: Vec<(u64, Bytes)>,
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
}

#[derive(Debug, Default)]
struct Local {
    rooms: HashMap<String, LocalRoom>,
    /// The rooms of each socket.
    sockets: HashMap<SocketId, HashSet<String>>,
    /// (room, user) pairs held, for the gauge.
    entries: usize,
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
    client: redis::Client,
    keys: Keys,
    heartbeat: Duration,
    ttl: Duration,
}

// === impl Presence ===

impl Presence {
    /// Presence for the gateway `instance`, beating every `heartbeat` with a
    /// TTL of `ttl`; nothing runs until [`Tasks::run`].
    ///
    /// # Errors
    /// When the Redis URL is unusable.
    pub fn new(
        redis_url: &str,
        instance: &str,
        heartbeat: Duration,
        ttl: Duration,
    ) -> Result<(Arc<Self>, Tasks), redis::RedisError> {
        let client = redis::Client::open(redis_url)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let presence = Arc::new(Self { local: Mutex::default(), ops: tx, draining: AtomicBool::new(false) });
        let suffix: u32 = rand::random();
        let keys = Keys::new(format!("{instance}~{suffix:08x}").into());
        let tasks = Tasks { presence: presence.clone(), ops: rx, client, keys, heartbeat, ttl };
        Ok((presence, tasks))
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

    /// The socket's `joined` is queued: sends it the changes held meanwhile.
    pub fn joined(&self, room: &str, socket: SocketId) {
        let mut local = self.lock();
        let Some(watcher) = local.rooms.get_mut(room).and_then(|here| here.watchers.get_mut(&socket)) else { return };
        watcher.ready = true;
        let mut sent = 0;
        for (seq, frame) in std::mem::take(&mut watcher.held) {
            if seq > watcher.after {
                watcher.after = seq;
                sent += 1;
                watcher.mailbox.offer(frame);
            }
        }
        metrics::presence_sent(sent);
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

    /// Forwards an announced change to this gateway's sockets in its room.
    fn announce(&self, change: &Change) {
        let mut local = self.lock();
        let Some(here) = local.rooms.get_mut(&change.room) else { return };
        if change.seq > here.view_seq {
            here.view_seq = change.seq;
            if change.join {
                here.view.insert(change.user.clone());
            } else {
                here.view.remove(&change.user);
            }
        }
        let frame = change.frame();
        let mut sent = 0;
        for watcher in here.watchers.values_mut() {
            if !watcher.ready {
                if watcher.held.len() < MAX_HELD {
                    watcher.held.push((change.seq, frame.clone()));
                }
            } else if change.seq > watcher.after {
                watcher.after = change.seq;
                sent += 1;
                watcher.mailbox.offer(frame.clone());
            }
        }
        metrics::presence_sent(sent);
    }

    /// After announcements may have been missed (the subscription broke):
    /// tells each socket of a room what changed since its view, and takes
    /// the snapshot as the new view.
    fn catch_up(&self, room: &str, snapshot: Snapshot) {
        let Some(seq) = snapshot.seq else { return };
        let mut local = self.lock();
        let Some(here) = local.rooms.get_mut(room) else { return };
        let now: BTreeSet<String> = snapshot.members.into_iter().collect();
        let gone = here.view.difference(&now).map(|user| (false, user));
        let came = now.difference(&here.view).map(|user| (true, user));
        let frames: Vec<Bytes> = gone
            .chain(came)
            .map(|(join, user)| Change { seq, join, room: room.to_owned(), user: user.clone() }.frame())
            .collect();
        for watcher in here.watchers.values_mut().filter(|watcher| watcher.ready) {
            for frame in &frames {
                watcher.mailbox.offer(frame.clone());
            }
            metrics::presence_sent(frames.len());
            // Also when the counter went back (Redis lost its data).
            watcher.after = seq;
        }
        here.view = now;
        here.view_seq = seq;
    }
}

// === impl Tasks ===

impl Tasks {
    /// Keeps this gateway's presence in Redis until `token`: writes its
    /// entries and heartbeat, follows [`CHANNEL`], and removes the entries
    /// of gateways whose heartbeat expired. On `token`, removes this
    /// gateway's entries (announcing the leaves of users present nowhere
    /// else) and returns.
    pub async fn run(self, token: CancellationToken) {
        let Self { presence, ops, client, keys, heartbeat, ttl } = self;
        let inner = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(follow(client.clone(), presence.clone(), inner.clone()));
        tasks.spawn(store::sweep(client.clone(), keys.owner.clone(), heartbeat, inner.clone()));
        tasks.close();
        Writer::new(presence, keys, client, ttl).run(ops, heartbeat, token).await;
        inner.cancel();
        tasks.wait().await;
    }
}

/// Follows [`CHANNEL`] until `token`, subscribing again with backoff when
/// the subscription breaks and catching every room up after each
/// (re)subscription.
async fn follow(client: redis::Client, presence: Arc<Presence>, token: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut link = Link::new(client.clone());
    while !token.is_cancelled() {
        match listen(&client, &presence, &mut link, &token, &mut backoff).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, "presence subscription lost; resubscribing"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = token.cancelled() => return,
        }
    }
}

async fn listen(
    client: &redis::Client,
    presence: &Presence,
    link: &mut Link,
    token: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), redis::RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    backoff.reset();
    // Changes made before the subscription took effect were not heard.
    let rooms = presence.rooms();
    for (room, snapshot) in rooms.iter().zip(store::look_all(link, &rooms).await?) {
        presence.catch_up(room, snapshot);
    }
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            () = token.cancelled() => return Ok(()),
        };
        let Some(message) = message else {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription ended")));
        };
        if let Some(change) = message.get_payload::<String>().ok().as_deref().and_then(Change::parse) {
            presence.announce(&change);
        }
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
        let frame: serde_json::Value = serde_json::from_slice(&change.frame()).expect("json");
        assert_eq!(frame, serde_json::json!({"type":"presence","room":"lobby","user":"alice.b-1","state":"leave"}));
    }

    /// A socket's mailbox, and the same mailbox as its writer reads it.
    fn socket() -> (Mailbox, Mailbox) {
        let mailbox = Mailbox::new(16, 1 << 20);
        (mailbox.clone(), mailbox)
    }

    fn texts(rx: &mut Mailbox) -> Vec<String> {
        let mut out = Vec::new();
        rx.take(usize::MAX, |frame| {
            if let Outbound::Text(bytes) = frame {
                out.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        });
        out
    }

    fn change(seq: u64, join: bool, user: &str) -> Change {
        Change { seq, join, room: "r".into(), user: user.into() }
    }

    /// Joins with Redis answering `snapshot`, as the writer would.
    async fn join(
        presence: &Presence,
        ops: &mut mpsc::UnboundedReceiver<Op>,
        id: SocketId,
        user: &str,
        mailbox: &Mailbox,
        snapshot: Snapshot,
    ) -> (Vec<String>, bool) {
        let answer = async {
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
        };
        let (members, added) = tokio::join!(presence.join("r", user, id, mailbox), answer);
        (members, added)
    }

    #[tokio::test]
    async fn a_socket_gets_only_changes_after_its_snapshot_and_tabs_are_one_presence() {
        let (presence, mut tasks) =
            Presence::new("redis://127.0.0.1:1", "gw", Duration::from_secs(1), Duration::from_secs(3)).expect("url");
        let (mailbox, mut rx) = socket();
        let snapshot = Snapshot { seq: Some(7), members: vec!["bob".into(), "ann".into()] };
        let (members, added) = join(&presence, &mut tasks.ops, 1, "ann", &mailbox, snapshot).await;
        assert!(added, "the first socket of ann adds her");
        assert_eq!(members, ["ann", "bob"]);
        // A change that raced with the join (seq 7: in the snapshot) and one after it.
        presence.announce(&change(7, true, "bob"));
        presence.announce(&change(8, true, "cy"));
        assert!(texts(&mut rx).is_empty(), "held until joined is queued");
        presence.joined("r", 1);
        let got = texts(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains(r#""user":"cy""#) && got[0].contains(r#""state":"join""#));

        // A second tab: no add; closing the first keeps ann present.
        let (tab, _tab_rx) = socket();
        let (_, added) =
            join(&presence, &mut tasks.ops, 2, "ann", &tab, Snapshot { seq: Some(8), members: vec![] }).await;
        assert!(!added, "a second tab only looks");
        presence.joined("r", 2);
        presence.socket_closed(1);
        assert!(tasks.ops.try_recv().is_err(), "ann still has a tab");
        presence.leave("r", 2);
        assert!(matches!(tasks.ops.try_recv(), Ok(Op::Remove { user, .. }) if user == "ann"));
    }

    #[tokio::test]
    async fn a_draining_gateway_keeps_the_entries_of_closing_sockets() {
        let (presence, mut tasks) =
            Presence::new("redis://127.0.0.1:1", "gw", Duration::from_secs(1), Duration::from_secs(3)).expect("url");
        let (mailbox, _rx) = socket();
        join(&presence, &mut tasks.ops, 1, "ann", &mailbox, Snapshot::default()).await;
        presence.drain();
        presence.socket_closed(1);
        assert!(tasks.ops.try_recv().is_err(), "no remove while draining");
        assert_eq!(presence.held(), [("r".to_owned(), "ann".to_owned())], "kept until exit");
    }

    #[tokio::test]
    async fn catching_up_sends_what_changed_since_the_view() {
        let (presence, mut tasks) =
            Presence::new("redis://127.0.0.1:1", "gw", Duration::from_secs(1), Duration::from_secs(3)).expect("url");
        let (mailbox, mut rx) = socket();
        let snapshot = Snapshot { seq: Some(5), members: vec!["ann".into(), "bob".into()] };
        join(&presence, &mut tasks.ops, 1, "ann", &mailbox, snapshot).await;
        presence.joined("r", 1);
        presence.catch_up("r", Snapshot { seq: Some(9), members: vec!["ann".into(), "cy".into()] });
        let got = texts(&mut rx);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains(r#""user":"bob","state":"leave""#), "{got:?}");
        assert!(got[1].contains(r#""user":"cy","state":"join""#), "{got:?}");
        presence.announce(&change(9, true, "cy"));
        assert!(texts(&mut rx).is_empty(), "already told");
    }
}
