//! The rooms run: many rooms with few members each, to see what rooms cost
//! the bridge and the broker, and whether every room still works.
//!
//! 1. Idle rooms (`idle_rooms`): each is joined, gets one message and is
//!    left, so it exists on the broker but nobody listens: what a chat
//!    service accumulates over a day.
//! 2. Live rooms (`rooms` × `members`): sockets join them and stay. A socket
//!    holds at most `rooms_per_socket` rooms and a user at most
//!    `sockets_per_user` sockets (the gateway's defaults, 32 and 8), so the
//!    run spreads the memberships: member `m` of room `r` is socket `(m,
//!    r / rooms_per_socket)`, and the two members of a room are always
//!    different users. Opens that the gateway turns away for admission
//!    (429, 503) are tried again later ([`clients::open_admitted`]).
//! 3. One send into every live room, at `send_rate` over all rooms, from a
//!    member of the room (member `r % members`), in an order that visits
//!    every socket before any socket's next room, so that no socket or user
//!    runs into its send limit (a `rate_limited` answer is sent again after
//!    the wait it names).
//! 4. Every member of every acked room must receive the message once:
//!    missing and duplicates are counted per (socket, room).
//!
//! The broker is read before, after the idle rooms and at the end, with the
//! live sockets still joined ([`Broker`]).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::load::broker::{self, Broker};
use crate::load::clients::{self, Conn, Failures, Logins, ServerFrame, Sources, unix_micros};
use crate::load::histogram::Histogram;
use crate::load::procs::{Meter, round3};
use crate::load::progress;
use crate::load::target::Target;
use crate::socket::{Incoming, Reader, Writer};

/// How long a socket waits for the answers to a batch of joins, sends or
/// leaves: longer than the gateway's own send timeout (10 s).
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// How long a socket may take to be admitted and welcomed.
const OPEN_LIMIT: Duration = Duration::from_secs(120);
/// Tries of one send that the gateway answers `rate_limited`.
const SEND_TRIES: u32 = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Live rooms.
    pub rooms: usize,
    /// Members of each live room.
    pub members: usize,
    /// Rooms created by one send and left.
    pub idle_rooms: usize,
    /// Rooms one socket joins at most (the gateway's
    /// `--max-rooms-per-socket`).
    pub rooms_per_socket: usize,
    /// Sockets one user opens at most (the gateway's
    /// `--max-sockets-per-user`).
    pub sockets_per_user: usize,
    /// Sends per second into the live rooms, all together.
    pub send_rate: f64,
    /// Logins and socket opens at a time.
    pub concurrency: usize,
    /// Local source addresses 127.0.0.2, ... (0: the kernel's choice).
    pub sources: usize,
    /// After the last send, the longest wait for its answers and
    /// deliveries.
    pub settle: Duration,
    /// The RabbitMQ node to read, when it is not the stack's private one
    /// nor the machine's.
    pub broker_node: Option<String>,
}

impl Params {
    fn describe(&self) -> Value {
        json!({
            "rooms": self.rooms,
            "members": self.members,
            "idle_rooms": self.idle_rooms,
            "rooms_per_socket": self.rooms_per_socket,
            "sockets_per_user": self.sockets_per_user,
            "send_rate": self.send_rate,
            "concurrency": self.concurrency,
            "sources": self.sources,
            "settle_s": self.settle.as_secs_f64(),
        })
    }
}

// === the layout ===

/// Which socket joins which live rooms, whose it is, and who sends where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    rooms: usize,
    members: usize,
    per_socket: usize,
    per_user: usize,
}

impl Layout {
    /// The layout of `params`, within the run's bounds.
    fn of(params: &Params) -> anyhow::Result<Self> {
        ensure!(params.rooms > 0 && params.members > 0, "nothing to run");
        ensure!(
            params.rooms_per_socket > 0 && params.sockets_per_user > 0,
            "rooms per socket, sockets per user: above 0"
        );
        ensure!(params.rooms + params.idle_rooms <= 100_000 && params.members <= 1_000, "at most 100,000 rooms");
        ensure!(params.rooms * params.members <= 200_000, "at most 200,000 memberships");
        ensure!(params.send_rate > 0.0, "the send rate must be positive");
        Ok(Self {
            rooms: params.rooms,
            members: params.members,
            per_socket: params.rooms_per_socket,
            per_user: params.sockets_per_user,
        })
    }

    /// Sockets per member index: each covers `per_socket` consecutive rooms.
    fn chunks(self) -> usize {
        self.rooms.div_ceil(self.per_socket)
    }

    fn users_per_member(self) -> usize {
        self.chunks().div_ceil(self.per_user)
    }

    fn sockets(self) -> usize {
        self.members * self.chunks()
    }

    fn users(self) -> usize {
        self.members * self.users_per_member()
    }

    /// The rooms socket `socket` joins.
    fn rooms_of(self, socket: usize) -> Range<usize> {
        let chunk = socket % self.chunks();
        chunk * self.per_socket..((chunk + 1) * self.per_socket).min(self.rooms)
    }

    /// The user socket `socket` belongs to.
    fn user_of(self, socket: usize) -> usize {
        let (member, chunk) = (socket / self.chunks(), socket % self.chunks());
        member * self.users_per_member() + chunk / self.per_user
    }

    /// The socket that sends into `room`: its member `room % members`.
    fn sender_of(self, room: usize) -> usize {
        (room % self.members) * self.chunks() + room / self.per_socket
    }

    /// Every room once, each socket's first room before any socket's second.
    fn send_order(self) -> Vec<usize> {
        let chunks = self.chunks();
        (0..self.per_socket)
            .flat_map(|k| (0..chunks).map(move |chunk| chunk * self.per_socket + k))
            .filter(|room| *room < self.rooms)
            .collect()
    }
}

/// The idle rooms of each idle socket: at most one user's worth of sockets,
/// each taking every `n`-th room.
fn idle_shares(idle_rooms: usize, per_socket: usize, per_user: usize) -> Vec<Vec<usize>> {
    let workers = idle_rooms.div_ceil(per_socket).min(per_user);
    (0..workers).map(|w| (w..idle_rooms).step_by(workers).collect()).collect()
}

/// A `send` frame whose text carries the send time.
fn send_frame(room: &str, cid: &str) -> String {
    format!(r#"{{"type":"send","room":"{room}","text":"t={} {cid}","cid":"{cid}"}}"#, unix_micros())
}

/// Reads frames until `answer` has taken `want` of them or `limit` has
/// passed; returns how many it took.
async fn answers(
    reader: &mut Reader,
    want: usize,
    limit: Duration,
    mut answer: impl FnMut(&ServerFrame<'_>) -> bool,
) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = 0;
    while got < want {
        let Ok(incoming) = tokio::time::timeout_at(deadline, reader.next()).await else { break };
        let Incoming::Text(payload) = incoming else { break };
        if clients::parse(&payload).is_some_and(|frame| answer(&frame)) {
            got += 1;
        }
    }
    got
}

/// The index in a room name `<prefix><index>`.
fn index_in(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.parse().ok()
}

// === idle rooms ===

/// What the idle rooms' sockets saw.
#[derive(Debug, Default)]
struct Idle {
    names: Vec<String>,
    prefix: String,
    sockets_failed: Failures,
    joined: AtomicU64,
    join_errors: Failures,
    acked: AtomicU64,
    send_errors: Failures,
    left: AtomicU64,
    /// Joins, sends and leaves without an answer in time.
    unanswered: AtomicU64,
    retries: AtomicU64,
}

impl Idle {
    fn new(prefix: &str, rooms: usize) -> Self {
        let prefix = format!("{prefix}-i");
        Self { names: (0..rooms).map(|r| format!("{prefix}{r}")).collect(), prefix, ..Self::default() }
    }

    fn describe(&self, took: Duration) -> Value {
        json!({
            "rooms": self.names.len(),
            "joined": self.joined.load(Ordering::Relaxed),
            "join_errors": self.join_errors.snapshot(),
            "acked": self.acked.load(Ordering::Relaxed),
            "send_errors": self.send_errors.snapshot(),
            "left": self.left.load(Ordering::Relaxed),
            "unanswered": self.unanswered.load(Ordering::Relaxed),
            "rate_limited_retries": self.retries.load(Ordering::Relaxed),
            "sockets_failed": self.sockets_failed.snapshot(),
            "s": round3(took.as_secs_f64()),
        })
    }
}

/// One idle socket: its rooms in batches of `per_socket`, each batch
/// joined, sent to once and left.
async fn idle_socket(rooms: Vec<usize>, per_socket: usize, conn: Conn, idle: Arc<Idle>) {
    let (mut reader, writer) = match clients::open_admitted(&conn, OPEN_LIMIT).await {
        Ok((reader, writer, _)) => (reader, writer),
        Err(reason) => return idle.sockets_failed.add(reason),
    };
    for batch in rooms.chunks(per_socket) {
        idle_batch(&mut reader, &writer, batch, &idle).await;
    }
    writer.close();
}

async fn idle_batch(reader: &mut Reader, writer: &Writer, batch: &[usize], idle: &Arc<Idle>) {
    for room in batch {
        writer.send(&json!({ "type": "join", "room": idle.names[*room] }));
    }
    let mut joined = Vec::new();
    let got = answers(reader, batch.len(), ANSWER_LIMIT, |frame| match (frame.kind.as_ref(), &frame.cid) {
        ("joined", _) => {
            joined.extend(frame.room.as_deref().and_then(|name| index_in(name, &idle.prefix)));
            true
        }
        ("error", None) => {
            idle.join_errors.add(frame.code.as_deref().unwrap_or("?"));
            true
        }
        _ => false,
    })
    .await;
    idle.joined.fetch_add(joined.len() as u64, Ordering::Relaxed);
    idle.unanswered.fetch_add((batch.len() - got) as u64, Ordering::Relaxed);
    for room in &joined {
        writer.send_text(send_frame(&idle.names[*room], &format!("i{room}")));
    }
    let mut tries: HashMap<usize, u32> = HashMap::new();
    let got = answers(reader, joined.len(), ANSWER_LIMIT, |frame| match (frame.kind.as_ref(), frame.cid.as_deref()) {
        ("ack", Some(_)) => {
            idle.acked.fetch_add(1, Ordering::Relaxed);
            true
        }
        ("error", Some(cid)) => {
            let room = cid.strip_prefix('i').and_then(|n| n.parse::<usize>().ok());
            let code = frame.code.as_deref().unwrap_or("?");
            if let Some(room) = room.filter(|_| code == "rate_limited") {
                let tried = tries.entry(room).or_insert(1);
                if *tried < SEND_TRIES {
                    *tried += 1;
                    idle.retries.fetch_add(1, Ordering::Relaxed);
                    let text = send_frame(&idle.names[room], cid);
                    resend_later(writer.clone(), text, frame.retry_after_ms);
                    return false;
                }
            }
            idle.send_errors.add(code);
            true
        }
        _ => false,
    })
    .await;
    idle.unanswered.fetch_add((joined.len() - got) as u64, Ordering::Relaxed);
    for room in &joined {
        writer.send(&json!({ "type": "leave", "room": idle.names[*room] }));
    }
    let left = answers(reader, joined.len(), ANSWER_LIMIT, |frame| frame.kind == "left").await;
    idle.left.fetch_add(left as u64, Ordering::Relaxed);
    idle.unanswered.fetch_add((joined.len() - left) as u64, Ordering::Relaxed);
}

/// Sends `text` again once the gateway's `retry_after_ms` has passed.
fn resend_later(writer: Writer, text: String, retry_after_ms: Option<u64>) {
    let wait = Duration::from_millis(retry_after_ms.unwrap_or(100).clamp(1, 5_000));
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        writer.send_text(text);
    });
}

// === live rooms ===

/// What the live rooms' sockets saw, room by room.
#[derive(Debug)]
struct Live {
    names: Vec<String>,
    prefix: String,
    /// Sockets whose `joined` came, per room.
    members_joined: Vec<AtomicU32>,
    /// Members that received the room's message (first copies), per room.
    received: Vec<AtomicU32>,
    /// The acked message's id + 1, per room (0: not acked).
    acked: Vec<AtomicU64>,
    /// When the room's send (or its last try) left, µs since the epoch.
    sent_at: Vec<AtomicU64>,
    tries: Vec<AtomicU32>,
    join_latency: Histogram,
    ack_latency: Histogram,
    latency: Histogram,
    joined: AtomicU64,
    join_errors: Failures,
    joins_unanswered: AtomicU64,
    sockets_failed: Failures,
    sockets_ended: Failures,
    handshake_refusals: AtomicU64,
    /// Sockets done joining (or failed).
    ready: AtomicUsize,
    send_errors: Failures,
    /// Sends acked or finally refused.
    answered: AtomicU64,
    retries: AtomicU64,
    duplicates: AtomicU64,
    writers: Mutex<Vec<Option<Writer>>>,
    stop: CancellationToken,
}

/// One live socket's rooms and what it received in each.
#[derive(Debug, Default)]
struct Held {
    joined: Vec<usize>,
    counts: HashMap<usize, u32>,
}

impl Live {
    fn new(prefix: String, rooms: usize, sockets: usize) -> Self {
        let zeros32 = || (0..rooms).map(|_| AtomicU32::new(0)).collect();
        let zeros64 = || (0..rooms).map(|_| AtomicU64::new(0)).collect();
        Self {
            names: (0..rooms).map(|r| format!("{prefix}{r}")).collect(),
            prefix,
            members_joined: zeros32(),
            received: zeros32(),
            acked: zeros64(),
            sent_at: zeros64(),
            tries: zeros32(),
            join_latency: Histogram::default(),
            ack_latency: Histogram::default(),
            latency: Histogram::default(),
            joined: AtomicU64::new(0),
            join_errors: Failures::default(),
            joins_unanswered: AtomicU64::new(0),
            sockets_failed: Failures::default(),
            sockets_ended: Failures::default(),
            handshake_refusals: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            send_errors: Failures::default(),
            answered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            writers: Mutex::new(vec![None; sockets]),
            stop: CancellationToken::new(),
        }
    }

    fn describe_joins(&self, layout: Layout, took: Duration) -> Value {
        json!({
            "expected": layout.rooms * layout.members,
            "joined": self.joined.load(Ordering::Relaxed),
            "errors": self.join_errors.snapshot(),
            "unanswered": self.joins_unanswered.load(Ordering::Relaxed),
            "sockets": layout.sockets(),
            "sockets_failed": self.sockets_failed.snapshot(),
            "handshake_refusals": self.handshake_refusals.load(Ordering::Relaxed),
            "latency": self.join_latency.summary(),
            "s": round3(took.as_secs_f64()),
        })
    }

    fn describe_sends(&self, sends: u64, took: Duration, settled: Duration) -> Value {
        json!({
            "rooms": sends,
            "acked": self.acked.iter().filter(|a| a.load(Ordering::Relaxed) > 0).count(),
            "errors": self.send_errors.snapshot(),
            "unanswered": sends.saturating_sub(self.answered.load(Ordering::Relaxed)),
            "rate_limited_retries": self.retries.load(Ordering::Relaxed),
            "ack_latency": self.ack_latency.summary(),
            "s": round3(took.as_secs_f64()),
            "settle_s": round3(settled.as_secs_f64()),
        })
    }

    fn send(&self, room: usize, writer: &Writer) {
        self.sent_at[room].store(unix_micros(), Ordering::Relaxed);
        writer.send_text(send_frame(&self.names[room], &format!("l{room}")));
    }

    /// Deliveries the acks so far call for that have not come.
    fn outstanding(&self) -> u64 {
        (0..self.names.len())
            .filter(|room| self.acked[*room].load(Ordering::Relaxed) > 0)
            .map(|room| {
                let want = self.members_joined[room].load(Ordering::Relaxed);
                u64::from(want.saturating_sub(self.received[room].load(Ordering::Relaxed)))
            })
            .sum()
    }

    fn on_message(&self, frame: &ServerFrame<'_>, held: &mut Held) {
        let Some(room) = frame.room.as_deref().and_then(|name| index_in(name, &self.prefix)) else { return };
        let Some(count) = self.received.get(room).map(|_| held.counts.entry(room).or_default()) else { return };
        *count += 1;
        if *count > 1 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received[room].fetch_add(1, Ordering::Relaxed);
        if let Some(sent) = frame.text.as_deref().and_then(clients::stamp_of) {
            self.latency.record_micros(unix_micros().saturating_sub(sent));
        }
    }

    fn on_ack(&self, frame: &ServerFrame<'_>) {
        let Some(room) = frame.cid.as_deref().and_then(|cid| index_in(cid, "l")) else { return };
        let (Some(id), Some(acked)) = (frame.id, self.acked.get(room)) else { return };
        acked.store(id + 1, Ordering::Relaxed);
        let sent = self.sent_at[room].load(Ordering::Relaxed);
        self.ack_latency.record_micros(unix_micros().saturating_sub(sent));
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// An `error` answering a send: tried again after the wait when it is
    /// `rate_limited` (a few times), else counted by its code.
    fn on_send_error(self: &Arc<Self>, frame: &ServerFrame<'_>, writer: &Writer) {
        let Some(room) = frame.cid.as_deref().and_then(|cid| index_in(cid, "l")) else { return };
        let Some(tries) = self.tries.get(room) else { return };
        let code = frame.code.as_deref().unwrap_or("?");
        if code == "rate_limited" && tries.fetch_add(1, Ordering::Relaxed) + 1 < SEND_TRIES {
            self.retries.fetch_add(1, Ordering::Relaxed);
            let (live, writer) = (self.clone(), writer.clone());
            let wait = Duration::from_millis(frame.retry_after_ms.unwrap_or(100).clamp(1, 5_000));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                live.send(room, &writer);
            });
            return;
        }
        self.send_errors.add(code);
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// One live socket: opens, joins its rooms, then reads until the run stops.
async fn live_socket(index: usize, rooms: Range<usize>, conn: Conn, live: Arc<Live>, permits: Arc<Semaphore>) -> Held {
    let mut held = Held::default();
    let opened = {
        let _permit = permits.acquire().await;
        clients::open_admitted(&conn, OPEN_LIMIT).await
    };
    let (mut reader, writer) = match opened {
        Ok((reader, writer, refused)) => {
            live.handshake_refusals.fetch_add(u64::from(refused), Ordering::Relaxed);
            (reader, writer)
        }
        Err(reason) => {
            live.sockets_failed.add(reason);
            live.joins_unanswered.fetch_add(rooms.len() as u64, Ordering::Relaxed);
            live.ready.fetch_add(1, Ordering::Relaxed);
            return held;
        }
    };
    join_rooms(&mut reader, &writer, rooms, &live, &mut held).await;
    live.writers.lock().unwrap_or_else(PoisonError::into_inner)[index] = Some(writer.clone());
    live.ready.fetch_add(1, Ordering::Relaxed);
    loop {
        // Stop first: the socket ends right after the run does, and that
        // end is not the socket's failure.
        let incoming = tokio::select! {
            biased;
            () = live.stop.cancelled() => break,
            incoming = reader.next() => incoming,
        };
        let payload = match incoming {
            Incoming::Text(payload) => payload,
            Incoming::Closed(code) => {
                live.sockets_ended.add(format!("closed ({code:?})"));
                return held;
            }
        };
        let Some(frame) = clients::parse(&payload) else { continue };
        match (frame.kind.as_ref(), frame.cid.is_some()) {
            ("message", _) => live.on_message(&frame, &mut held),
            ("ack", true) => live.on_ack(&frame),
            ("error", true) => live.on_send_error(&frame, &writer),
            _ => {}
        }
    }
    writer.close();
    held
}

/// Sends every join at once and counts the answers: `joined`, or an
/// `error` without a `cid` (a refused join).
async fn join_rooms(reader: &mut Reader, writer: &Writer, rooms: Range<usize>, live: &Live, held: &mut Held) {
    let sent = Instant::now();
    for room in rooms.clone() {
        writer.send(&json!({ "type": "join", "room": live.names[room] }));
    }
    let got = answers(reader, rooms.len(), ANSWER_LIMIT, |frame| match (frame.kind.as_ref(), &frame.cid) {
        ("joined", _) => {
            if let Some(room) = frame.room.as_deref().and_then(|name| index_in(name, &live.prefix))
                && rooms.contains(&room)
            {
                held.joined.push(room);
                live.members_joined[room].fetch_add(1, Ordering::Relaxed);
                live.joined.fetch_add(1, Ordering::Relaxed);
                live.join_latency.record(sent.elapsed());
            }
            true
        }
        ("error", None) => {
            live.join_errors.add(frame.code.as_deref().unwrap_or("?"));
            true
        }
        _ => false,
    })
    .await;
    live.joins_unanswered.fetch_add((rooms.len() - got) as u64, Ordering::Relaxed);
}

/// One send into every live room at `rate`, each from its sender socket;
/// returns how many were made (or counted as impossible).
async fn send_all(live: &Live, layout: Layout, rate: f64) -> u64 {
    let writers = live.writers.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    let order = layout.send_order();
    for room in &order {
        match &writers[layout.sender_of(*room)] {
            Some(writer) => live.send(*room, writer),
            None => {
                live.send_errors.add("no sender socket");
                live.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        next += period;
        tokio::time::sleep_until(next).await;
    }
    order.len() as u64
}

/// Waits until every send is answered and every acked room's members have
/// its message, at most `limit`; returns how long it waited.
async fn settle(live: &Live, sends: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if live.answered.load(Ordering::Relaxed) >= sends && live.outstanding() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Expected, received and missing deliveries, from every socket's books:
/// a message is expected once its send is acked.
fn tally(live: &Live, held: &[Held]) -> Value {
    let (mut expected, mut received, mut missing, mut unacked) = (0_u64, 0_u64, 0_u64, 0_u64);
    let acked = |room: usize| live.acked[room].load(Ordering::Relaxed) > 0;
    for socket in held {
        for room in socket.joined.iter().copied().filter(|room| acked(*room)) {
            expected += 1;
            if socket.counts.contains_key(&room) { received += 1 } else { missing += 1 }
        }
        unacked += socket.counts.keys().filter(|room| !acked(**room)).count() as u64;
    }
    // Per room, acked or not: a room whose send timed out may still have
    // delivered it late, and a room nobody heard from is dead whatever the
    // acks say.
    let heard = |room: usize| live.received[room].load(Ordering::Relaxed);
    let joined = |room: usize| live.members_joined[room].load(Ordering::Relaxed);
    let rooms = 0..live.names.len();
    json!({
        "expected": expected,
        "received": received,
        "missing": missing,
        "duplicates": live.duplicates.load(Ordering::Relaxed),
        "of_unacked_sends": unacked,
        "rooms_heard_by_every_member": rooms.clone().filter(|r| joined(*r) > 0 && heard(*r) >= joined(*r)).count(),
        "rooms_heard_by_nobody": rooms.filter(|r| heard(*r) == 0).count(),
        "latency": live.latency.summary(),
    })
}

// === the run ===

/// Runs the rooms scenario against `target` and returns the summary.
///
/// # Errors
/// When the sizes are out of bounds or the logins fail.
pub async fn run(target: &Target, params: &Params) -> anyhow::Result<Value> {
    let layout = Layout::of(params)?;
    let shares = idle_shares(params.idle_rooms, params.rooms_per_socket, params.sockets_per_user);
    clients::check_fd_budget(layout.sockets() + shares.len() + params.concurrency)?;
    let prefix = testkit::unique("rooms");
    let broker = Broker::locate(target, params.broker_node.as_deref()).await;
    let started = Instant::now();
    let idle_user = (!shares.is_empty()).then(|| format!("{prefix}-idle"));
    let users: Vec<String> = (0..layout.users()).map(|u| format!("{prefix}-u{u}")).chain(idle_user).collect();
    let logins = Logins::new(target, &users, params.concurrency, Sources::new(params.sources)?).await?;
    let logins_s = started.elapsed().as_secs_f64();
    let before = broker.snapshot().await;
    warn_if_broker_short(&before, params);
    let meter = Meter::start(&target.watched());
    let idle = Arc::new(Idle::new(&prefix, params.idle_rooms));
    let live = Arc::new(Live::new(format!("{prefix}-l"), layout.rooms, layout.sockets()));
    let ticker = progress::spawn("rooms", live.stop.child_token(), progress_line(idle.clone(), live.clone()));

    let idle_started = Instant::now();
    let idle_conns = (0..shares.len()).map(|worker| logins.conn(users.len() - 1, layout.sockets() + worker));
    let mut idle_tasks = JoinSet::new();
    for (rooms, conn) in shares.iter().zip(idle_conns) {
        idle_tasks.spawn(idle_socket(rooms.clone(), params.rooms_per_socket, conn, idle.clone()));
    }
    while idle_tasks.join_next().await.is_some() {}
    let idle_took = idle_started.elapsed();
    let after_idle = if shares.is_empty() { Value::Null } else { broker.snapshot().await };

    let joins_started = Instant::now();
    let mut sockets = open_live(&live, layout, &logins, params.concurrency).await;
    let joins_took = joins_started.elapsed();
    let sends_started = Instant::now();
    let sends = send_all(&live, layout, params.send_rate).await;
    let sends_took = sends_started.elapsed();
    let settled = settle(&live, sends, params.settle).await;
    let after = broker.snapshot().await;
    let cpu = meter.stop();
    live.stop.cancel();
    ticker.abort();
    let mut held = Vec::new();
    while let Some(done) = sockets.join_next().await {
        held.push(done?);
    }
    let deliveries = tally(&live, &held);
    Ok(json!({
        "scenario": "rooms",
        "params": params.describe(),
        "setup": {
            "users": users.len(),
            "sockets": layout.sockets() + shares.len(),
            "sources": logins.sources(),
            "logins_s": round3(logins_s),
        },
        "idle": idle.describe(idle_took),
        "joins": live.describe_joins(layout, joins_took),
        "sends": live.describe_sends(sends, sends_took, settled),
        "missing": deliveries["missing"],
        "duplicates": deliveries["duplicates"],
        "deliveries": deliveries,
        "sockets_ended": live.sockets_ended.snapshot(),
        "broker": {
            "which": broker.describe(),
            "before": before,
            "after_idle": after_idle,
            "after": after,
            "change": broker::delta(&before, &after),
        },
        "wall_s": round3(started.elapsed().as_secs_f64()),
        "cpu": cpu,
    }))
}

/// Opens every live socket (`concurrency` at a time) and waits until each
/// has its joins answered or has failed; the sockets keep reading.
async fn open_live(live: &Arc<Live>, layout: Layout, logins: &Logins, concurrency: usize) -> JoinSet<Held> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut sockets = JoinSet::new();
    for socket in 0..layout.sockets() {
        let conn = logins.conn(layout.user_of(socket), socket);
        sockets.spawn(live_socket(socket, layout.rooms_of(socket), conn, live.clone(), permits.clone()));
    }
    while live.ready.load(Ordering::Relaxed) < layout.sockets() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = live.joined.load(Ordering::Relaxed);
    progress::note(&format!("{joined} of {} joins answered `joined`", layout.rooms * layout.members));
    sockets
}

/// Says so when the broker's free descriptors look too few for the rooms:
/// before partitioned streams each room's stream held 2-3 of them, and a
/// broker that runs out stops answering everyone on the machine.
fn warn_if_broker_short(before: &Value, params: &Params) {
    let (Some(fds), Some(limit)) = (before["fds"].as_u64(), before["fd_limit"].as_u64()) else { return };
    let want = 3 * (params.rooms + params.idle_rooms) as u64;
    if fds + want > limit {
        progress::note(&format!(
            "the broker has {} of {limit} descriptors free; a stream per room would need about {want}",
            limit.saturating_sub(fds)
        ));
    }
}

/// The progress line: idle rooms done, sockets joined, sends answered,
/// deliveries.
fn progress_line(idle: Arc<Idle>, live: Arc<Live>) -> impl Fn() -> String + Send + 'static {
    move || {
        let received: u64 = live.received.iter().map(|r| u64::from(r.load(Ordering::Relaxed))).sum();
        format!(
            "idle acked {} left {} | sockets ready {} joined {} | sends answered {} | received {received}",
            idle.acked.load(Ordering::Relaxed),
            idle.left.load(Ordering::Relaxed),
            live.ready.load(Ordering::Relaxed),
            live.joined.load(Ordering::Relaxed),
            live.answered.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_a_room_are_different_users_within_the_limits() {
        let layout = Layout { rooms: 3000, members: 2, per_socket: 32, per_user: 8 };
        assert_eq!(layout.chunks(), 94);
        assert_eq!(layout.sockets(), 188);
        assert_eq!(layout.users(), 24);
        let mut rooms_of_user: HashMap<usize, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); 3000];
        for socket in 0..layout.sockets() {
            let rooms = layout.rooms_of(socket);
            assert!(rooms.len() <= 32 && !rooms.is_empty());
            *rooms_of_user.entry(layout.user_of(socket)).or_default() += 1;
            for room in rooms {
                members[room].push(layout.user_of(socket));
            }
        }
        assert!(rooms_of_user.values().all(|sockets| *sockets <= 8));
        for (room, users) in members.iter().enumerate() {
            assert_eq!(users.len(), 2);
            assert_ne!(users[0], users[1]);
            assert!(layout.rooms_of(layout.sender_of(room)).contains(&room));
        }
        let order = layout.send_order();
        assert_eq!(order.len(), 3000);
        assert_eq!(&order[..3], &[0, 32, 64]);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert!(sorted.iter().copied().eq(0..3000));
    }

    #[test]
    fn idle_rooms_are_shared_by_one_users_sockets() {
        assert!(idle_shares(0, 32, 8).is_empty());
        assert_eq!(idle_shares(20, 32, 8), vec![(0..20).collect::<Vec<_>>()]);
        let shares = idle_shares(1000, 32, 8);
        assert_eq!(shares.len(), 8);
        assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), 1000);
        assert_eq!(&shares[1][..2], &[1, 9]);
    }

    #[test]
    fn names_and_cids_carry_their_index() {
        assert_eq!(index_in("rooms-0a-l17", "rooms-0a-l"), Some(17));
        assert_eq!(index_in("l3", "l"), Some(3));
        assert_eq!(index_in("rooms-0a-i17", "rooms-0a-l"), None);
    }
}
