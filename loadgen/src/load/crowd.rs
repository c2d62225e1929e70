//! The crowd run: N members join one room within a few seconds while P
//! publishers send into it, the way a popular room fills when an event
//! starts. What a join costs everyone else shows here: each arrival is news
//! to every member already in (presence), and each `joined` carries the
//! room's members and is followed by history.
//!
//! The publishers join first (a socket must be in a room to send to it);
//! member `i` opens its socket at `i / N` of `join_within` after the start,
//! as fast as the gateways admit it ([`clients::open_admitted`]), and joins
//! without `since` (so it gets the last 50, then live ones). Publishing
//! starts when the first member's `joined` arrives and lasts `duration`,
//! at `rate` over all publishers, so that it overlaps the joins.
//!
//! A message counts as expected for a member when its ack reached the
//! publisher after the member's `joined` arrived: it was durable after the
//! member was in, so the member must see it (live, or in its history).
//! Earlier messages may come too, in the history, and are not counted.
//! Latency is end to end (the send time travels in the text) for messages
//! sent after the receiver's `joined`, over the whole run from the first
//! publish, also second by second of sending.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::load::clients::{self, Conn, Failures, IdSet, Logins, ServerFrame, Sources, unix_micros};
use crate::load::histogram::Histogram;
use crate::load::procs::{Meter, round3};
use crate::load::target::Target;
use crate::load::{progress, scrape};
use crate::socket::{Incoming, Reader};

/// How long a socket may take to be admitted and welcomed.
const OPEN_LIMIT: Duration = Duration::from_secs(120);
/// How long a `join` may take to be answered.
const JOIN_LIMIT: Duration = Duration::from_secs(60);
/// After publishing ends, the longest wait for the last acks (the gateway
/// gives up on a send after 10 s).
const ACK_LIMIT: Duration = Duration::from_secs(15);
/// The longest publishing run (the latency timeline keeps a histogram per
/// second).
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The gateways' counters worth reporting: history and replays behind the
/// joins, frames by type (presence among them), resumes.
const GATEWAY_COUNTERS: &[&str] = &["history", "replay", "resume", "frames_out", "presence"];

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Members that join the room.
    pub members: usize,
    /// Publishers, in the room before the members.
    pub publishers: usize,
    /// Messages per second, all publishers together.
    pub rate: f64,
    /// How long the publishers send.
    pub duration: Duration,
    /// The window the members' joins are spread over (0: all at once).
    pub join_within: Duration,
    /// After publishing ends, the longest wait for every member to have
    /// what it is owed.
    pub settle: Duration,
    /// Length of each message's text (the stamp, padded).
    pub text_bytes: usize,
    /// Logins at a time, before the run.
    pub concurrency: usize,
    /// Local source addresses 127.0.0.2, ... (0: the kernel's choice).
    pub sources: usize,
}

impl Params {
    fn describe(&self) -> Value {
        json!({
            "members": self.members,
            "publishers": self.publishers,
            "rate": self.rate,
            "duration_s": self.duration.as_secs_f64(),
            "join_within_s": self.join_within.as_secs_f64(),
            "settle_s": self.settle.as_secs_f64(),
            "text_bytes": self.text_bytes,
            "sources": self.sources,
        })
    }
}

// === shared state ===

#[derive(Debug)]
struct Shared {
    room: String,
    /// Each ack: (µs since the epoch when it arrived, id).
    acks: Mutex<Vec<(u64, u64)>>,
    sent: AtomicU64,
    answered: AtomicU64,
    send_errors: Failures,
    /// When the first send left, µs since the epoch (0: not yet).
    first_publish_us: AtomicU64,
    latency: Histogram,
    /// Latency by second of sending since the first publish.
    timeline: Vec<Histogram>,
    welcome_latency: Histogram,
    joined_latency: Histogram,
    handshake_refusals: AtomicU64,
    join_failures: Failures,
    /// When each member's `joined` arrived, µs since the epoch (0: not yet).
    joined_us: Vec<AtomicU64>,
    /// Each member's highest message id.
    last_ids: Vec<AtomicU64>,
    joined: AtomicUsize,
    /// Members joined or given up on.
    settled_joins: AtomicUsize,
    publishers_ready: AtomicUsize,
    publishers_joined: AtomicUsize,
    sockets_ended: Failures,
    presence_frames: AtomicU64,
    first_joined: CancellationToken,
    stop: CancellationToken,
}

impl Shared {
    fn new(room: String, params: &Params) -> Self {
        let seconds = params.duration.as_secs() as usize + 1;
        Self {
            room,
            acks: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            send_errors: Failures::default(),
            first_publish_us: AtomicU64::new(0),
            latency: Histogram::default(),
            timeline: (0..seconds).map(|_| Histogram::default()).collect(),
            welcome_latency: Histogram::default(),
            joined_latency: Histogram::default(),
            handshake_refusals: AtomicU64::new(0),
            join_failures: Failures::default(),
            joined_us: (0..params.members).map(|_| AtomicU64::new(0)).collect(),
            last_ids: (0..params.members).map(|_| AtomicU64::new(0)).collect(),
            joined: AtomicUsize::new(0),
            settled_joins: AtomicUsize::new(0),
            publishers_ready: AtomicUsize::new(0),
            publishers_joined: AtomicUsize::new(0),
            sockets_ended: Failures::default(),
            presence_frames: AtomicU64::new(0),
            first_joined: CancellationToken::new(),
            stop: CancellationToken::new(),
        }
    }

    /// A live message's latency, overall and in its second of sending.
    fn record_latency(&self, sent_us: u64) {
        let micros = unix_micros().saturating_sub(sent_us);
        self.latency.record_micros(micros);
        let first = self.first_publish_us.load(Ordering::Relaxed);
        let second = (sent_us.saturating_sub(first) / 1_000_000) as usize;
        if let Some(histogram) = self.timeline.get(second.min(self.timeline.len().saturating_sub(1))) {
            histogram.record_micros(micros);
        }
    }

    /// Acks sorted by arrival, each with the highest id acked at or after
    /// it: what a member that joined before that ack must reach.
    fn acks_with_highest_after(&self) -> Vec<(u64, u64, u64)> {
        let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        acks.sort_unstable();
        let mut highest = 0;
        let mut out: Vec<(u64, u64, u64)> = acks
            .iter()
            .rev()
            .map(|&(at, id)| {
                highest = highest.max(id);
                (at, id, highest)
            })
            .collect();
        out.reverse();
        out
    }
}

// === members ===

/// The fields of `joined` the run reads: the old one lists every member,
/// the new one may carry `count` and a capped `members`.
#[derive(Debug, Deserialize)]
struct Joined {
    #[serde(default)]
    members: Vec<IgnoredAny>,
    #[serde(default)]
    count: Option<u64>,
}

/// The fields of a batched `presence_diff` the run reads.
#[derive(Debug, Deserialize)]
struct PresenceDiff {
    #[serde(default)]
    joins: Vec<IgnoredAny>,
    #[serde(default)]
    leaves: Vec<IgnoredAny>,
}

/// What one member saw.
#[derive(Debug, Default)]
struct Member {
    index: usize,
    /// µs since the epoch when its `joined` came (0: never).
    joined_us: u64,
    joined_bytes: u64,
    joined_count: Option<u64>,
    joined_members: u64,
    ids: IdSet,
    duplicates: u64,
    /// Messages sent before its `joined` came (history, or in flight).
    earlier: u64,
    presence: u64,
    presence_diff: u64,
    /// Arrivals and departures told: one per `presence`, the entries of
    /// each `presence_diff`.
    presence_changes: u64,
}

impl Member {
    fn on_frame(&mut self, frame: &ServerFrame<'_>, payload: &[u8], shared: &Shared) {
        match frame.kind.as_ref() {
            "message" => self.on_message(frame, shared),
            "presence" => {
                self.presence += 1;
                self.presence_changes += 1;
                shared.presence_frames.fetch_add(1, Ordering::Relaxed);
            }
            "presence_diff" => {
                self.presence_diff += 1;
                if let Ok(diff) = serde_json::from_slice::<PresenceDiff>(payload) {
                    self.presence_changes += (diff.joins.len() + diff.leaves.len()) as u64;
                }
                shared.presence_frames.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn on_message(&mut self, frame: &ServerFrame<'_>, shared: &Shared) {
        let Some(id) = frame.id else { return };
        if !self.ids.insert(id) {
            self.duplicates += 1;
            return;
        }
        shared.last_ids[self.index].fetch_max(id, Ordering::Relaxed);
        match frame.text.as_deref().and_then(clients::stamp_of) {
            Some(sent) if sent >= self.joined_us => shared.record_latency(sent),
            Some(_) => self.earlier += 1,
            None => {}
        }
    }

    fn on_joined(&mut self, payload: &[u8], shared: &Shared) {
        self.joined_us = unix_micros();
        self.joined_bytes = payload.len() as u64;
        if let Ok(joined) = serde_json::from_slice::<Joined>(payload) {
            self.joined_count = joined.count;
            self.joined_members = joined.members.len() as u64;
        }
        shared.joined_us[self.index].store(self.joined_us, Ordering::Relaxed);
        shared.joined.fetch_add(1, Ordering::Relaxed);
        shared.first_joined.cancel();
    }
}

/// One member: waits for its turn, opens, joins, then reads until the run
/// stops.
async fn member(index: usize, turn: tokio::time::Instant, conn: Conn, shared: Arc<Shared>) -> Member {
    let mut member = Member { index, ..Member::default() };
    tokio::time::sleep_until(turn).await;
    let opening = Instant::now();
    let opened = clients::open_admitted(&conn, OPEN_LIMIT).await;
    let (mut reader, writer) = match opened {
        Ok((reader, writer, refused)) => {
            shared.handshake_refusals.fetch_add(u64::from(refused), Ordering::Relaxed);
            shared.welcome_latency.record(opening.elapsed());
            (reader, writer)
        }
        Err(reason) => {
            shared.join_failures.add(reason);
            shared.settled_joins.fetch_add(1, Ordering::Relaxed);
            return member;
        }
    };
    writer.send(&json!({ "type": "join", "room": shared.room }));
    let asked = Instant::now();
    let answer = await_joined(&mut reader, &mut member, &shared).await;
    shared.settled_joins.fetch_add(1, Ordering::Relaxed);
    match answer {
        Ok(payload) => {
            shared.joined_latency.record(asked.elapsed());
            member.on_joined(&payload, &shared);
        }
        Err(reason) => {
            shared.join_failures.add(reason);
            writer.close();
            return member;
        }
    }
    listen(&mut reader, &mut member, &shared).await;
    writer.close();
    member
}

/// Reads until this member's `joined` (returned whole), within
/// [`JOIN_LIMIT`]; frames before it are counted as usual.
async fn await_joined(reader: &mut Reader, member: &mut Member, shared: &Shared) -> Result<Vec<u8>, String> {
    let wait = async {
        loop {
            let payload = match reader.next().await {
                Incoming::Text(payload) => payload,
                Incoming::Closed(code) => return Err(format!("closed ({code:?}) before joined")),
            };
            let Some(frame) = clients::parse(&payload) else { continue };
            match (frame.kind.as_ref(), &frame.cid) {
                ("joined", _) => return Ok(payload.to_vec()),
                ("error", None) => return Err(format!("join refused: {}", frame.code.unwrap_or_default())),
                _ => member.on_frame(&frame, &payload, shared),
            }
        }
    };
    tokio::time::timeout(JOIN_LIMIT, wait).await.unwrap_or_else(|_| Err(format!("no joined within {JOIN_LIMIT:?}")))
}

async fn listen(reader: &mut Reader, member: &mut Member, shared: &Shared) {
    loop {
        // Stop first: the socket ends right after the run does, and that
        // end is not the socket's failure.
        let incoming = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return,
            incoming = reader.next() => incoming,
        };
        match incoming {
            Incoming::Text(payload) => {
                if let Some(frame) = clients::parse(&payload) {
                    member.on_frame(&frame, &payload, shared);
                }
            }
            Incoming::Closed(code) => return shared.sockets_ended.add(format!("member closed ({code:?})")),
        }
    }
}

// === publishers ===

/// One publisher's place in the schedule.
#[derive(Debug, Clone)]
struct Beat {
    index: usize,
    /// Time between its sends.
    period: Duration,
    /// Its first send, after the common start.
    offset: Duration,
    duration: Duration,
    pad: String,
}

/// One publisher: opens and joins, then, from the start it is given, sends
/// on its beat for the run's duration.
async fn publisher(beat: Beat, conn: Conn, shared: Arc<Shared>, mut start: watch::Receiver<Option<Instant>>) {
    let opened = clients::open_admitted(&conn, OPEN_LIMIT).await;
    let joined = match opened {
        Ok((mut reader, writer, _)) => {
            writer.send(&json!({ "type": "join", "room": shared.room }));
            clients::await_type(&mut reader, "joined", JOIN_LIMIT).await.map(|()| (reader, writer))
        }
        Err(reason) => Err(reason),
    };
    shared.publishers_ready.fetch_add(1, Ordering::Relaxed);
    let (reader, writer) = match joined {
        Ok(pair) => pair,
        Err(reason) => return shared.join_failures.add(format!("publisher: {reason}")),
    };
    shared.publishers_joined.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(read_acks(reader, shared.clone()));
    let began = tokio::select! {
        began = start.wait_for(Option::is_some) => began.ok().and_then(|began| *began),
        () = shared.stop.cancelled() => None,
    };
    let Some(began) = began.map(tokio::time::Instant::from_std) else { return };
    let mut next = began + beat.offset;
    let mut seq = 0_u64;
    while next < began + beat.duration && !shared.stop.is_cancelled() {
        tokio::time::sleep_until(next).await;
        seq += 1;
        let cid = format!("p{}.{seq}", beat.index);
        let text = format!("t={} {cid}{}", unix_micros(), beat.pad);
        let frame = json!({ "type": "send", "room": shared.room, "text": text, "cid": cid });
        shared.sent.fetch_add(1, Ordering::Relaxed);
        writer.send(&frame);
        next += beat.period;
    }
    shared.stop.cancelled().await;
    writer.close();
}

/// Records a publisher's acks (with their arrival time) and refusals.
async fn read_acks(mut reader: Reader, shared: Arc<Shared>) {
    loop {
        // Stop first: the socket ends right after the run does, and that
        // end is not the socket's failure.
        let incoming = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return,
            incoming = reader.next() => incoming,
        };
        let payload = match incoming {
            Incoming::Text(payload) => payload,
            Incoming::Closed(code) => return shared.sockets_ended.add(format!("publisher closed ({code:?})")),
        };
        let Some(frame) = clients::parse(&payload) else { continue };
        match (frame.kind.as_ref(), frame.cid.is_some(), frame.id) {
            ("ack", true, Some(id)) => {
                shared.acks.lock().unwrap_or_else(PoisonError::into_inner).push((unix_micros(), id));
                shared.answered.fetch_add(1, Ordering::Relaxed);
            }
            ("error", true, _) => {
                shared.send_errors.add(frame.code.as_deref().unwrap_or("?"));
                shared.answered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

// === the run ===

/// Runs the crowd scenario against `target` and returns the summary.
///
/// # Errors
/// When the sizes are out of bounds, logins fail, no publisher can join, or
/// no member joins.
pub async fn run(target: &Target, params: &Params) -> anyhow::Result<Value> {
    ensure!(params.members > 0 && params.publishers > 0, "nothing to run");
    ensure!(params.rate > 0.0, "the rate must be positive");
    ensure!(params.duration <= MAX_DURATION && params.join_within <= MAX_DURATION, "at most {MAX_DURATION:?}");
    clients::check_fd_budget(params.members + params.publishers + params.concurrency)?;
    let prefix = testkit::unique("crowd");
    let users: Vec<String> = (0..params.members)
        .map(|i| format!("{prefix}-m{i}"))
        .chain((0..params.publishers).map(|j| format!("{prefix}-p{j}")))
        .collect();
    let started = Instant::now();
    let logins = Logins::new(target, &users, params.concurrency, Sources::new(params.sources)?).await?;
    let logins_s = started.elapsed().as_secs_f64();
    let shared = Arc::new(Shared::new(format!("{prefix}-room"), params));
    let gateways_before = scrape::read(&target.admins()).await;
    let (start, mut publishers) = seat_publishers(&shared, params, &logins).await?;

    let ticker = progress::spawn("crowd", shared.stop.child_token(), progress_line(shared.clone()));
    let meter = Meter::start(&target.watched());
    let (mut members, timing) = let_in(&shared, params, &logins, &start).await;
    let sent = shared.sent.load(Ordering::Relaxed);
    wait_until(|| shared.answered.load(Ordering::Relaxed) >= sent, ACK_LIMIT).await;
    let settled = settle(&shared, params.settle).await;
    let cpu = meter.stop();
    let gateways_after = scrape::read(&target.admins()).await;
    shared.stop.cancel();
    ticker.abort();
    while publishers.join_next().await.is_some() {}
    let mut reports = Vec::new();
    while let Some(done) = members.join_next().await {
        reports.push(done.context("a member task panicked")?);
    }
    ensure!(shared.joined.load(Ordering::Relaxed) > 0, "no member joined: {:?}", shared.join_failures.snapshot());
    let deliveries = tally(&shared, &reports);
    Ok(json!({
        "scenario": "crowd",
        "params": params.describe(),
        "setup": {
            "logins_s": round3(logins_s),
            "publishers_joined": shared.publishers_joined.load(Ordering::Relaxed),
            "sources": logins.sources(),
        },
        "joins": joins_summary(&shared, &reports, &timing),
        "publishing": {
            "started_ms": timing.publishing_began_ms,
            "ended_ms": timing.publishing_ended_ms,
            "joins_settled_ms": timing.joins_settled_ms,
            "sent": sent,
            "acked": shared.acks.lock().unwrap_or_else(PoisonError::into_inner).len(),
            "errors": shared.send_errors.snapshot(),
            "unanswered": sent.saturating_sub(shared.answered.load(Ordering::Relaxed)),
            "settle_s": round3(settled.as_secs_f64()),
        },
        "latency": shared.latency.summary(),
        "latency_by_second": timeline(&shared),
        "missing": deliveries["missing"],
        "duplicates": deliveries["duplicates"],
        "deliveries": deliveries,
        "presence": presence_summary(&reports),
        "joined_frames": joined_summary(&reports),
        "sockets_ended": shared.sockets_ended.snapshot(),
        "gateways": match (&gateways_before, &gateways_after) {
            (Some(before), Some(after)) => json!(scrape::grown(before, after, GATEWAY_COUNTERS)),
            _ => Value::Null,
        },
        "wall_s": round3(started.elapsed().as_secs_f64()),
        "cpu": cpu,
    }))
}

/// When the run's steps happened, in ms from the first member's turn.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// The first turn, µs since the epoch.
    t0_us: u64,
    publishing_began_ms: u64,
    publishing_ended_ms: u64,
    /// Every member joined or given up on.
    joins_settled_ms: u64,
}

/// Lets the members in on their turns, starts the publishers at the first
/// `joined`, and returns once publishing is over and every member is in or
/// has given up.
async fn let_in(
    shared: &Arc<Shared>,
    params: &Params,
    logins: &Logins,
    start: &watch::Sender<Option<Instant>>,
) -> (JoinSet<Member>, Timing) {
    let (t0, t0_us) = (Instant::now(), unix_micros());
    let first_turn = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut members = JoinSet::new();
    for i in 0..params.members {
        let turn = first_turn + params.join_within.mul_f64(i as f64 / params.members as f64);
        members.spawn(member(i, turn, logins.conn(i, i), shared.clone()));
    }
    // Without any member in after this long the run has failed; the
    // publishers start anyway so that it ends on its own.
    let _ = tokio::time::timeout(OPEN_LIMIT + JOIN_LIMIT, shared.first_joined.cancelled()).await;
    let publish_at = Instant::now();
    shared.first_publish_us.store(unix_micros(), Ordering::Relaxed);
    let _ = start.send(Some(publish_at));
    tokio::time::sleep(params.duration).await;
    let publishing_ended = t0.elapsed();
    wait_until(|| shared.settled_joins.load(Ordering::Relaxed) >= params.members, OPEN_LIMIT + JOIN_LIMIT).await;
    let ms = |elapsed: Duration| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let timing = Timing {
        t0_us,
        publishing_began_ms: ms(publish_at.duration_since(t0)),
        publishing_ended_ms: ms(publishing_ended),
        joins_settled_ms: ms(t0.elapsed()),
    };
    (members, timing)
}

/// The publishers' start signal and tasks.
type Seated = (watch::Sender<Option<Instant>>, JoinSet<()>);

/// Opens and joins the publishers (users after the members), each on its
/// beat, waiting for the start; returns once all are in or gave up.
///
/// # Errors
/// When none could join.
async fn seat_publishers(shared: &Arc<Shared>, params: &Params, logins: &Logins) -> anyhow::Result<Seated> {
    let (start, start_rx) = watch::channel(None);
    let period = Duration::from_secs_f64(params.publishers as f64 / params.rate);
    let mut publishers = JoinSet::new();
    for j in 0..params.publishers {
        let beat = Beat {
            index: j,
            period,
            offset: period.mul_f64(j as f64 / params.publishers as f64),
            duration: params.duration,
            pad: " ".to_owned() + &"x".repeat(params.text_bytes.saturating_sub(32)),
        };
        let user = params.members + j;
        publishers.spawn(publisher(beat, logins.conn(user, user), shared.clone(), start_rx.clone()));
    }
    let all_tried = || shared.publishers_ready.load(Ordering::Relaxed) >= params.publishers;
    wait_until(all_tried, OPEN_LIMIT + JOIN_LIMIT).await;
    let joined = shared.publishers_joined.load(Ordering::Relaxed);
    ensure!(joined > 0, "no publisher joined: {:?}", shared.join_failures.snapshot());
    Ok((start, publishers))
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
async fn wait_until(done: impl Fn() -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every joined member has reached the highest id it is owed,
/// at most `limit`; returns how long it waited.
async fn settle(shared: &Shared, limit: Duration) -> Duration {
    let acks = shared.acks_with_highest_after();
    let owed: Vec<(usize, u64)> = (0..shared.joined_us.len())
        .filter_map(|member| {
            let joined = shared.joined_us[member].load(Ordering::Relaxed);
            let first = acks.partition_point(|(at, _, _)| *at <= joined);
            (joined > 0 && first < acks.len()).then(|| (member, acks[first].2))
        })
        .collect();
    let started = Instant::now();
    let caught_up = || owed.iter().all(|(member, id)| shared.last_ids[*member].load(Ordering::Relaxed) >= *id);
    wait_until(caught_up, limit).await;
    started.elapsed()
}

/// Expected, received, missing and duplicate messages over every member.
fn tally(shared: &Shared, reports: &[Member]) -> Value {
    let acks = shared.acks_with_highest_after();
    let (mut expected, mut missing, mut worst, mut short_members) = (0_u64, 0_u64, 0_u64, 0_u64);
    for member in reports.iter().filter(|m| m.joined_us > 0) {
        let first = acks.partition_point(|(at, _, _)| *at <= member.joined_us);
        let owed = &acks[first..];
        let lacking = owed.iter().filter(|(_, id, _)| !member.ids.contains(*id)).count() as u64;
        expected += owed.len() as u64;
        missing += lacking;
        worst = worst.max(lacking);
        short_members += u64::from(lacking > 0);
    }
    let duplicates: u64 = reports.iter().map(|m| m.duplicates).sum();
    json!({
        "expected": expected,
        "received": expected - missing,
        "missing": missing,
        "members_missing_some": short_members,
        "max_missing_per_member": worst,
        "duplicates": duplicates,
        "earlier_messages": reports.iter().map(|m| m.earlier).sum::<u64>(),
    })
}

/// Total, largest and mean of one figure over the members that joined.
fn spread(values: impl Iterator<Item = u64>) -> Value {
    let values: Vec<u64> = values.collect();
    let total: u64 = values.iter().sum();
    let mean = if values.is_empty() { 0.0 } else { total as f64 / values.len() as f64 };
    json!({ "total": total, "max": values.iter().max(), "mean": (mean * 10.0).round() / 10.0 })
}

fn presence_summary(reports: &[Member]) -> Value {
    let joined = || reports.iter().filter(|m| m.joined_us > 0);
    json!({
        "presence_frames": spread(joined().map(|m| m.presence)),
        "presence_diff_frames": spread(joined().map(|m| m.presence_diff)),
        "changes_told": spread(joined().map(|m| m.presence_changes)),
    })
}

fn joined_summary(reports: &[Member]) -> Value {
    let joined = || reports.iter().filter(|m| m.joined_us > 0);
    json!({
        "bytes": spread(joined().map(|m| m.joined_bytes)),
        "members_listed": spread(joined().map(|m| m.joined_members)),
        "with_count": joined().filter(|m| m.joined_count.is_some()).count(),
        "count_max": joined().filter_map(|m| m.joined_count).max(),
    })
}

fn joins_summary(shared: &Shared, reports: &[Member], timing: &Timing) -> Value {
    let publish_us = shared.first_publish_us.load(Ordering::Relaxed);
    let times: Vec<u64> = reports.iter().filter(|m| m.joined_us > 0).map(|m| m.joined_us).collect();
    let since_t0 = |us: Option<&u64>| us.map(|us| us.saturating_sub(timing.t0_us) / 1000);
    json!({
        "members": reports.len(),
        "joined": times.len(),
        "failed": shared.join_failures.snapshot(),
        "handshake_refusals": shared.handshake_refusals.load(Ordering::Relaxed),
        "first_joined_ms": since_t0(times.iter().min()),
        "last_joined_ms": since_t0(times.iter().max()),
        "joined_after_publishing_began": times.iter().filter(|us| **us > publish_us).count(),
        "publishing_began_ms": timing.publishing_began_ms,
        "time_to_welcome": shared.welcome_latency.summary(),
        "joined_latency": shared.joined_latency.summary(),
    })
}

/// Latency second by second of sending.
fn timeline(shared: &Shared) -> Value {
    let seconds = shared.timeline.iter().enumerate().filter(|(_, h)| h.count() > 0).map(|(second, histogram)| {
        let mut row = json!(histogram.summary());
        row["second"] = json!(second);
        row
    });
    Value::Array(seconds.collect())
}

/// The progress line: members joined, sends, acks, presence frames.
fn progress_line(shared: Arc<Shared>) -> impl Fn() -> String + Send + 'static {
    move || {
        format!(
            "joined {} (failed {}) | sent {} answered {} | presence frames {} | p99 {} ms",
            shared.joined.load(Ordering::Relaxed),
            shared.join_failures.total(),
            shared.sent.load(Ordering::Relaxed),
            shared.answered.load(Ordering::Relaxed),
            shared.presence_frames.load(Ordering::Relaxed),
            shared.latency.summary().p99_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_ids_are_the_highest_acked_after_a_join() {
        let params = Params {
            members: 2,
            publishers: 1,
            rate: 1.0,
            duration: Duration::from_secs(1),
            join_within: Duration::ZERO,
            settle: Duration::ZERO,
            text_bytes: 64,
            concurrency: 1,
            sources: 0,
        };
        let shared = Shared::new("r".into(), &params);
        shared.acks.lock().unwrap_or_else(PoisonError::into_inner).extend([(30, 7), (10, 5), (20, 9)]);
        let acks = shared.acks_with_highest_after();
        assert_eq!(acks, vec![(10, 5, 9), (20, 9, 9), (30, 7, 7)]);
        let mut member = Member { joined_us: 15, ..Member::default() };
        member.ids.insert(9);
        let counts = tally(&shared, &[member]);
        assert_eq!((counts["expected"].as_u64(), counts["missing"].as_u64()), (Some(2), Some(1)));
    }

    #[test]
    fn joined_and_diffs_old_and_new() {
        let old: Joined = serde_json::from_str(r#"{"type":"joined","room":"r","members":["a","b"]}"#).expect("old");
        assert_eq!((old.members.len(), old.count), (2, None));
        let new: Joined =
            serde_json::from_str(r#"{"type":"joined","room":"r","count":900,"members":["a"]}"#).expect("new");
        assert_eq!((new.members.len(), new.count), (1, Some(900)));
        let diff: PresenceDiff =
            serde_json::from_str(r#"{"type":"presence_diff","room":"r","joins":["a","b"],"leaves":["c"]}"#)
                .expect("diff");
        assert_eq!(diff.joins.len() + diff.leaves.len(), 3);
    }
}
