//! The fan-out run: S subscribers in one or more rooms, spread over the
//! target's addresses, and P publishers sending at a total rate R.
//!
//! Each message's text starts with `t=<send time, µs since the epoch>
//! e=<epoch>`, so a subscriber computes the end-to-end latency when the
//! frame arrives and credits it to the run (or step) that sent it. Every
//! ack's id is kept per room; at the end each subscriber's ids are compared
//! with its room's acked ids (missing) and repeats are counted
//! (duplicates).
//!
//! Plain mode runs R for T seconds, `runs` times. Step mode raises R from a
//! start by a factor until p99 passes the limit or deliveries fall behind,
//! narrows the last two rates down by halving, reports the highest rate that
//! held (the saturation rate), then runs `runs` times at half of it.
//!
//! With slow readers, each run (not each step) also opens that many
//! sockets that join every room and never read ([`slow`]); they are not
//! subscribers (no deliveries expected, not in the latency), and after the
//! run the summary says how they ended.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::load::clients::{self, Failures, IdSet, Sources, unix_micros};
use crate::load::histogram::{Histogram, Latency};
use crate::load::procs::{self, Meter, ProcWindow, round3};
use crate::load::slow::{self, Cast};
use crate::load::target::Target;
use crate::load::{progress, summary};
use crate::socket::{self, Incoming, Reader, Transport, Writer};

/// Epochs (runs and steps) one invocation can hold.
const MAX_EPOCHS: usize = 64;
/// How long a socket may take to say `welcome` or `joined`.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Subscribers.
    pub subscribers: usize,
    /// Publishers.
    pub publishers: usize,
    /// Rooms; subscriber `i` joins room `i % rooms`.
    pub rooms: usize,
    /// Messages per second, all publishers together (plain mode).
    pub rate: f64,
    /// How long each run sends.
    pub duration: Duration,
    /// Runs (at `rate`, or at half the saturation rate in step mode).
    pub runs: usize,
    /// Length of each message's text (the stamp, padded).
    pub text_bytes: usize,
    /// After sending stops, the longest wait for the last deliveries.
    pub settle: Duration,
    /// Logins and socket opens at a time.
    pub concurrency: usize,
    /// Local source addresses (0: one per 10,000 sockets).
    pub sources: usize,
    /// Unacked sends allowed over all publishers; more are skipped and
    /// counted as throttled.
    pub max_in_flight: usize,
    /// Step mode, when set.
    pub step: Option<Step>,
    /// Sockets opened at the start of each run (not step) that join every
    /// room and then never read; 0 for none.
    pub slow_readers: usize,
    /// How subscribers connect (publishers always use WebSockets).
    pub transport: Transport,
}

/// How step mode raises the rate.
#[derive(Debug, Clone)]
pub struct Step {
    /// The first rate.
    pub start: f64,
    /// Each next rate is this many times the last.
    pub factor: f64,
    /// How long each step sends.
    pub duration: Duration,
    /// Never beyond this rate.
    pub max_rate: f64,
    /// A step whose p99 is above this has failed.
    pub p99_limit: Duration,
    /// Halvings between the last good and the first failed rate.
    pub refine: usize,
}

impl Params {
    fn describe(&self) -> Value {
        let mut out = json!({
            "subscribers": self.subscribers,
            "publishers": self.publishers,
            "rooms": self.rooms,
            "rate": self.rate,
            "duration_s": self.duration.as_secs_f64(),
            "runs": self.runs,
            "text_bytes": self.text_bytes,
            "settle_s": self.settle.as_secs_f64(),
            "max_in_flight": self.max_in_flight,
            "slow_readers": self.slow_readers,
            "transport": self.transport,
        });
        if let Some(step) = &self.step {
            out["step"] = json!({
                "start": step.start,
                "factor": step.factor,
                "duration_s": step.duration.as_secs_f64(),
                "max_rate": step.max_rate,
                "p99_limit_ms": step.p99_limit.as_millis() as u64,
                "refine": step.refine,
            });
        }
        out
    }
}

// === shared state ===

/// One run's or step's counts.
#[derive(Debug, Default)]
struct Epoch {
    latency: Histogram,
    delivered: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    throttled: AtomicU64,
    /// Deliveries the acks so far call for (each ack times its room's size).
    expected: AtomicU64,
    /// Subscribers whose socket ended during this epoch.
    lost: AtomicUsize,
}

#[derive(Debug)]
struct Shared {
    rooms: Vec<String>,
    /// Subscribers joined to each room.
    room_sizes: Vec<AtomicU64>,
    epochs: Vec<Epoch>,
    /// Acked ids by epoch and room.
    acked: Mutex<Vec<Vec<IdSet>>>,
    in_flight: AtomicI64,
    /// Subscribers whose socket ended before the run did.
    lost: AtomicUsize,
    /// The epoch running (or last run).
    current: AtomicUsize,
    stop: CancellationToken,
}

impl Shared {
    fn record_ack(&self, cid: &str, id: Option<u64>, ok: bool) {
        let Some((room, epoch)) = parse_cid(cid) else { return };
        let (Some(counts), true) = (self.epochs.get(epoch), room < self.rooms.len()) else { return };
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match (ok, id) {
            (true, Some(id)) => {
                counts.acked.fetch_add(1, Ordering::Relaxed);
                counts.expected.fetch_add(self.room_sizes[room].load(Ordering::Relaxed), Ordering::Relaxed);
                self.acked.lock().unwrap_or_else(PoisonError::into_inner)[epoch][room].insert(id);
            }
            _ => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `publisher.room.epoch.seq` -> (room, epoch).
fn parse_cid(cid: &str) -> Option<(usize, usize)> {
    let mut parts = cid.split('.');
    let _publisher = parts.next()?;
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `t=<µs> e=<epoch> ...` -> (µs, epoch).
fn parse_stamp(text: &str) -> Option<(u64, usize)> {
    let mut parts = text.split(' ');
    let sent = parts.next()?.strip_prefix("t=")?.parse().ok()?;
    let epoch = parts.next()?.strip_prefix("e=")?.parse().ok()?;
    Some((sent, epoch))
}

/// What publishers do now.
#[derive(Debug, Clone, Copy)]
struct Phase {
    epoch: usize,
    /// Time between one publisher's sends; `None` to pause.
    period: Option<Duration>,
}

// === subscribers ===

#[derive(Debug, Default)]
struct SubReport {
    room: usize,
    ids: IdSet,
    duplicates: Vec<u64>,
    /// The epoch in which its socket ended, if it did.
    lost_in: Option<usize>,
}

async fn subscribe(mut reader: Reader, writer: Writer, room: usize, shared: Arc<Shared>) -> SubReport {
    let mut report = SubReport { room, ids: IdSet::default(), duplicates: vec![0; MAX_EPOCHS], lost_in: None };
    loop {
        let incoming = tokio::select! {
            incoming = reader.next() => incoming,
            () = shared.stop.cancelled() => break,
        };
        let payload = match incoming {
            Incoming::Text(payload) => payload,
            Incoming::Closed(code) => {
                // From now on its room expects one delivery less per message.
                let epoch = shared.current.load(Ordering::Relaxed);
                progress::note(&format!("a subscriber's socket ended ({code:?}) in epoch {epoch}"));
                shared.room_sizes[room].fetch_sub(1, Ordering::Relaxed);
                shared.epochs[epoch].lost.fetch_add(1, Ordering::Relaxed);
                shared.lost.fetch_add(1, Ordering::Relaxed);
                report.lost_in = Some(epoch);
                return report;
            }
        };
        let Some(frame) = clients::parse(&payload) else { continue };
        if frame.kind != "message" {
            continue;
        }
        let (Some(id), Some((sent, epoch))) = (frame.id, frame.text.as_deref().and_then(parse_stamp)) else {
            continue;
        };
        let Some(counts) = shared.epochs.get(epoch) else { continue };
        if !report.ids.insert(id) {
            report.duplicates[epoch] += 1;
            continue;
        }
        counts.latency.record_micros(unix_micros().saturating_sub(sent));
        counts.delivered.fetch_add(1, Ordering::Relaxed);
    }
    writer.close();
    report
}

// === publishers ===

/// Reads a publisher's acks and errors until the run stops.
async fn read_acks(mut reader: Reader, writer: Writer, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            incoming = reader.next() => incoming,
            () = shared.stop.cancelled() => break,
        };
        let Incoming::Text(payload) = incoming else {
            progress::note("a publisher's socket ended");
            return;
        };
        let Some(frame) = clients::parse(&payload) else { continue };
        match (frame.kind.as_ref(), frame.cid.as_deref()) {
            ("ack", Some(cid)) => shared.record_ack(cid, frame.id, true),
            ("error", Some(cid)) => shared.record_ack(cid, None, false),
            _ => {}
        }
    }
    writer.close();
}

struct Publisher {
    index: usize,
    count: usize,
    rooms: Vec<usize>,
    writer: Writer,
    shared: Arc<Shared>,
    pad: String,
    max_in_flight: i64,
    seq: u64,
}

impl Publisher {
    /// Sends on the schedule `phases` sets until the run stops.
    async fn run(mut self, mut phases: watch::Receiver<Phase>) {
        loop {
            let phase = *phases.borrow_and_update();
            let Some(period) = phase.period else {
                tokio::select! {
                    changed = phases.changed() => if changed.is_err() { return },
                    () = self.shared.stop.cancelled() => return,
                }
                continue;
            };
            // Publishers start spread over one period, then keep the pace
            // (catching up after a late wake-up).
            let offset = period.mul_f64(self.index as f64 / self.count as f64);
            let mut next = tokio::time::Instant::now() + offset;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {
                        // The run may have ended while this publisher slept:
                        // a send after the end would count against a result
                        // already taken.
                        if phases.borrow().period.is_none() {
                            continue;
                        }
                        self.send(phase.epoch);
                        next += period;
                    }
                    changed = phases.changed() => {
                        if changed.is_err() { return }
                        break;
                    }
                    () = self.shared.stop.cancelled() => return,
                }
            }
        }
    }

    fn send(&mut self, epoch: usize) {
        let counts = &self.shared.epochs[epoch];
        if self.shared.in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
            counts.throttled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let room = self.rooms[(self.seq as usize) % self.rooms.len()];
        self.seq += 1;
        let frame = format!(
            r#"{{"type":"send","room":"{}","text":"t={} e={epoch}{}","cid":"{}.{room}.{epoch}.{}"}}"#,
            self.shared.rooms[room],
            unix_micros(),
            self.pad,
            self.index,
            self.seq
        );
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        counts.sent.fetch_add(1, Ordering::Relaxed);
        if !self.writer.send_text(frame) {
            self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The rooms publisher `index` of `publishers` sends to, in turn.
fn rooms_of(index: usize, publishers: usize, rooms: usize) -> Vec<usize> {
    if rooms >= publishers { (index..rooms).step_by(publishers).collect() } else { vec![index % rooms] }
}

// === one epoch ===

/// What one run or step measured.
#[derive(Debug, Clone, Serialize)]
pub struct EpochResult {
    /// The rate asked for, messages/s.
    pub rate: f64,
    /// How long it sent, s.
    pub duration_s: f64,
    /// Sends made.
    pub sent: u64,
    /// Sends per second achieved.
    pub send_rate: f64,
    /// Sends acked.
    pub acked: u64,
    /// Sends answered with an error.
    pub refused: u64,
    /// Sends skipped: too many unacked.
    pub throttled: u64,
    /// Messages received by subscribers (first copies).
    pub deliveries: u64,
    /// Deliveries the acks call for.
    pub expected: u64,
    /// Deliveries per second over the sending time plus the wait for the
    /// last ones.
    pub deliveries_per_s: f64,
    /// How long after sending stopped the last deliveries came (or the
    /// settle limit).
    pub settle_ms: u64,
    /// Acked messages some subscriber never received (filled in at the end).
    pub missing: u64,
    /// Messages a subscriber received again (filled in at the end).
    pub duplicates: u64,
    /// Subscribers whose socket ended during it.
    pub subscribers_lost: usize,
    /// End-to-end latency, send to receipt.
    pub latency: Latency,
    /// CPU seconds of the gateways.
    pub gateway_cpu_s: f64,
    /// CPU seconds of the bridges.
    pub bridge_cpu_s: f64,
    /// Deliveries per CPU second of gateways plus bridges.
    pub deliveries_per_cpu_s: f64,
    /// Whether it fell behind: deliveries or acks short after the settle
    /// wait, sends short of the rate, or subscribers lost.
    pub behind: bool,
    /// Each measured process over the epoch.
    pub cpu: Vec<ProcWindow>,
    /// How the run's slow readers ended, when it had some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_readers: Option<slow::Report>,
}

struct Runner<'a> {
    target: &'a Target,
    params: &'a Params,
    shared: Arc<Shared>,
    phases: watch::Sender<Phase>,
    publishers: usize,
    results: Vec<(usize, EpochResult)>,
    /// The slow readers each run opens.
    slow: Cast,
}

impl Runner<'_> {
    /// Sends at `rate` for `duration` and waits for the deliveries; a run
    /// (not a step) opens slow readers first, and reads them after.
    async fn epoch(&mut self, epoch: usize, rate: f64, duration: Duration, run: bool) -> EpochResult {
        let counts = &self.shared.epochs[epoch];
        self.shared.current.store(epoch, Ordering::Relaxed);
        let slow_readers =
            if run && !self.slow.logins.is_empty() { Some(self.slow.open(&self.shared.rooms).await) } else { None };
        let meter = Meter::start(&self.target.watched());
        let period = Duration::from_secs_f64(self.publishers as f64 / rate.max(0.001));
        self.phases.send_replace(Phase { epoch, period: Some(period) });
        tokio::time::sleep(duration).await;
        self.phases.send_replace(Phase { epoch, period: None });
        let stopped = Instant::now();
        // A publisher that woke just before the end may still be sending.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let caught_up = || {
            self.shared.in_flight.load(Ordering::Relaxed) <= 0
                && counts.delivered.load(Ordering::Relaxed) >= counts.expected.load(Ordering::Relaxed)
        };
        let settled = loop {
            if caught_up() {
                break true;
            }
            if stopped.elapsed() >= self.params.settle {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let settle = stopped.elapsed();
        let cpu = meter.stop();
        let (sent, deliveries) = (counts.sent.load(Ordering::Relaxed), counts.delivered.load(Ordering::Relaxed));
        let (gateway_cpu_s, bridge_cpu_s) = (procs::cpu_of(&cpu, "gw"), procs::cpu_of(&cpu, "bridge"));
        let throttled = counts.throttled.load(Ordering::Relaxed);
        let lost = counts.lost.load(Ordering::Relaxed);
        let behind = !settled || throttled > 0 || lost > 0 || (sent as f64) < 0.95 * rate * duration.as_secs_f64();
        let mut result = EpochResult {
            rate,
            duration_s: duration.as_secs_f64(),
            sent,
            send_rate: round3(sent as f64 / duration.as_secs_f64()),
            acked: counts.acked.load(Ordering::Relaxed),
            refused: counts.refused.load(Ordering::Relaxed),
            throttled,
            deliveries,
            expected: counts.expected.load(Ordering::Relaxed),
            deliveries_per_s: (deliveries as f64 / (duration + settle).as_secs_f64()).round(),
            settle_ms: settle.as_millis() as u64,
            missing: 0,
            duplicates: 0,
            subscribers_lost: lost,
            latency: counts.latency.summary(),
            gateway_cpu_s,
            bridge_cpu_s,
            deliveries_per_cpu_s: (deliveries as f64 / (gateway_cpu_s + bridge_cpu_s).max(0.001)).round(),
            behind,
            cpu,
            slow_readers: None,
        };
        progress::note(&format!(
            "epoch {epoch}: rate {rate:.1}/s, {deliveries} deliveries ({}/s), p99 {} ms{}",
            result.deliveries_per_s,
            result.latency.p99_ms,
            if behind { ", BEHIND" } else { "" }
        ));
        if let Some(slow_readers) = slow_readers {
            result.slow_readers = Some(slow_readers.finish().await);
        }
        self.results.push((epoch, result.clone()));
        // Let the next epoch start from a quiet stack.
        let quiet = Instant::now();
        while !caught_up() && quiet.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        result
    }

    fn passed(&self, result: &EpochResult, limit: Duration) -> bool {
        !result.behind && result.latency.p99_ms <= limit.as_secs_f64() * 1000.0
    }
}

// === the run ===

/// Runs fan-out against `target` and returns the summary.
///
/// # Errors
/// When logins fail or no subscriber can be opened.
pub async fn run(target: &Target, params: &Params) -> anyhow::Result<Value> {
    let epochs_needed = params.runs + params.step.as_ref().map_or(0, |_| 40);
    anyhow::ensure!(epochs_needed <= MAX_EPOCHS, "at most {} runs", MAX_EPOCHS - 40);
    anyhow::ensure!(params.subscribers > 0 && params.publishers > 0 && params.rooms > 0, "nothing to run");
    clients::check_fd_budget(params.subscribers + params.publishers + params.slow_readers + params.concurrency)?;
    let prefix = testkit::unique("load");
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        rooms: (0..params.rooms).map(|r| format!("{prefix}-r{r}")).collect(),
        room_sizes: (0..params.rooms).map(|_| AtomicU64::new(0)).collect(),
        epochs: (0..MAX_EPOCHS).map(|_| Epoch::default()).collect(),
        acked: Mutex::new(vec![vec![IdSet::default(); params.rooms]; MAX_EPOCHS]),
        in_flight: AtomicI64::new(0),
        lost: AtomicUsize::new(0),
        current: AtomicUsize::new(0),
        stop: stop.clone(),
    });
    let (crowd, setup) = Crowd::gather(target, params, &shared, &prefix).await?;
    let ticker = progress::spawn("fanout", stop.child_token(), progress_line(shared.clone()));
    let mut runner = Runner {
        target,
        params,
        shared: shared.clone(),
        phases: crowd.phases,
        publishers: params.publishers,
        results: Vec::new(),
        slow: crowd.slow,
    };
    let mut out = json!({ "scenario": "fanout", "params": params.describe(), "setup": setup });
    let mut epoch = 0;
    let rate = match &params.step {
        None => Some(params.rate),
        Some(step) => {
            let saturation = search(&mut runner, step, &mut epoch).await;
            let joined = setup["subscribers_joined"].as_f64().unwrap_or_default();
            out["saturation_rate"] = json!(saturation);
            out["saturation_deliveries_per_s"] =
                json!(saturation.map(|rate| (rate * joined / params.rooms as f64).round()));
            saturation.map(|rate| rate / 2.0)
        }
    };
    let first_run = epoch;
    if let Some(rate) = rate {
        for _ in 0..params.runs {
            runner.epoch(epoch, rate, params.duration, true).await;
            epoch += 1;
        }
    }
    stop.cancel();
    ticker.abort();
    drop(runner.phases);
    let mut publishers = crowd.publishers;
    while publishers.join_next().await.is_some() {}
    let mut subscribers = crowd.subscribers;
    let mut reports = Vec::new();
    while let Some(report) = subscribers.join_next().await {
        if let Some(report) = report.context("a subscriber task panicked")? {
            reports.push(report);
        }
    }
    let (missing, duplicates) = count_losses(&shared, &reports, epoch);
    let (mut steps, mut runs) = (Vec::new(), Vec::new());
    let mut slow_readers: Option<slow::Report> = None;
    for (epoch, mut result) in runner.results {
        result.missing = missing[epoch];
        result.duplicates = duplicates[epoch];
        match (&mut slow_readers, &result.slow_readers) {
            (Some(total), Some(report)) => total.add(report),
            (None, Some(report)) => slow_readers = Some(report.clone()),
            _ => {}
        }
        if epoch < first_run { steps.push(json!(result)) } else { runs.push(json!(result)) }
    }
    if params.step.is_some() {
        out["steps"] = Value::Array(steps);
    }
    out["median"] = summary::median(&runs);
    out["runs"] = Value::Array(runs);
    out["missing"] = json!(missing.iter().sum::<u64>());
    out["duplicates"] = json!(duplicates.iter().sum::<u64>());
    out["subscribers_lost"] = json!(shared.lost.load(Ordering::Relaxed));
    if params.slow_readers > 0 {
        out["slow_readers"] = json!(slow_readers);
    }
    Ok(out)
}

/// The run's sockets: subscribers reading, publishers waiting for a phase;
/// and the logins of the slow readers each run opens.
struct Crowd {
    subscribers: JoinSet<Option<SubReport>>,
    publishers: JoinSet<()>,
    phases: watch::Sender<Phase>,
    slow: Cast,
}

impl Crowd {
    /// Logs everyone in, opens and joins every socket, and describes how
    /// that went.
    async fn gather(
        target: &Target,
        params: &Params,
        shared: &Arc<Shared>,
        prefix: &str,
    ) -> anyhow::Result<(Self, Value)> {
        let started = Instant::now();
        let users: Vec<String> = (0..params.subscribers)
            .map(|i| format!("{prefix}-s{i}"))
            .chain((0..params.publishers).map(|j| format!("{prefix}-p{j}")))
            .chain((0..params.slow_readers).map(|k| format!("{prefix}-slow{k}")))
            .collect();
        let cookies = clients::login_all(target, &users, params.concurrency).await?;
        let logins_s = started.elapsed().as_secs_f64();
        let sources =
            if params.sources == 0 { Sources::for_sockets(users.len())? } else { Sources::new(params.sources)? };
        let failures = Arc::new(Failures::default());
        let ready = Arc::new(AtomicUsize::new(0));
        let sockets = params.subscribers + params.publishers;
        let slow = Cast {
            logins: (sockets..users.len()).map(|i| (target.front(i), sources.pick(i), cookies[i].clone())).collect(),
            admins: target.admins(),
        };
        let mut crowd = Self {
            subscribers: JoinSet::new(),
            publishers: JoinSet::new(),
            phases: watch::channel(Phase { epoch: 0, period: None }).0,
            slow,
        };
        let permits = Arc::new(Semaphore::new(params.concurrency.max(1)));
        for (index, cookie) in cookies.iter().enumerate().take(sockets) {
            let (front, local, cookie) = (target.front(index), sources.pick(index), cookie.clone());
            let (shared, failures, ready) = (shared.clone(), failures.clone(), ready.clone());
            if index < params.subscribers {
                let (permits, transport) = (permits.clone(), params.transport);
                crowd.subscribers.spawn(async move {
                    let room = index % shared.rooms.len();
                    let opened = async {
                        let _permit = permits.acquire().await;
                        open_joined(front, local, &cookie, &[shared.rooms[room].as_str()], transport).await
                    };
                    let result = opened.await;
                    ready.fetch_add(1, Ordering::Relaxed);
                    let (reader, writer) = result.map_err(|reason| failures.add(reason)).ok()?;
                    shared.room_sizes[room].fetch_add(1, Ordering::Relaxed);
                    Some(subscribe(reader, writer, room, shared).await)
                });
            } else {
                let publisher = index - params.subscribers;
                let rooms = rooms_of(publisher, params.publishers, params.rooms);
                let pad = " ".to_owned() + &"x".repeat(params.text_bytes.saturating_sub(32));
                let max_in_flight = i64::try_from(params.max_in_flight).unwrap_or(i64::MAX);
                let (count, phases) = (params.publishers, crowd.phases.subscribe());
                crowd.publishers.spawn(async move {
                    let names: Vec<&str> = rooms.iter().map(|r| shared.rooms[*r].as_str()).collect();
                    let result = open_joined(front, local, &cookie, &names, Transport::Ws).await;
                    ready.fetch_add(1, Ordering::Relaxed);
                    let (reader, writer) = match result {
                        Ok(pair) => pair,
                        Err(reason) => return failures.add(format!("publisher: {reason}")),
                    };
                    tokio::spawn(read_acks(reader, writer.clone(), shared.clone()));
                    let index = publisher;
                    let seq = 0;
                    Publisher { index, count, rooms, writer, shared, pad, max_in_flight, seq }.run(phases).await;
                });
            }
        }
        let limit = Instant::now() + Duration::from_secs(300);
        while ready.load(Ordering::Relaxed) < sockets && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let joined: u64 = shared.room_sizes.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        progress::note(&format!("{joined} subscribers joined, {} failures", failures.total()));
        anyhow::ensure!(joined > 0, "no subscriber could join: {:?}", failures.snapshot());
        let setup = json!({
            "logins_s": round3(logins_s),
            "setup_s": round3(started.elapsed().as_secs_f64()),
            "subscribers_joined": joined,
            "failures": failures.snapshot(),
            "sources": sources.len(),
        });
        Ok((crowd, setup))
    }
}

/// Opens a socket and joins `rooms`, waiting for `welcome` and each `joined`.
async fn open_joined(
    front: std::net::SocketAddr,
    local: Option<std::net::IpAddr>,
    cookie: &str,
    rooms: &[&str],
    transport: Transport,
) -> Result<(Reader, Writer), String> {
    let (mut reader, writer) = socket::open_over(front, local, cookie, transport).await.map_err(|e| e.to_string())?;
    clients::join_all(&mut reader, &writer, rooms, HANDSHAKE_LIMIT).await?;
    Ok((reader, writer))
}

/// The progress line: the current epoch's sends and everyone's deliveries.
fn progress_line(shared: Arc<Shared>) -> impl Fn() -> String + Send + 'static {
    let last_delivered = Mutex::new(0_u64);
    move || {
        let epoch = shared.current.load(Ordering::Relaxed);
        let counts = &shared.epochs[epoch];
        let delivered: u64 = shared.epochs.iter().map(|e| e.delivered.load(Ordering::Relaxed)).sum();
        let mut previous = last_delivered.lock().unwrap_or_else(PoisonError::into_inner);
        let per_s = delivered - *previous;
        *previous = delivered;
        format!(
            "epoch {epoch}: sent {} acked {} in flight {} | deliveries {delivered} (+{per_s}/s) p99 {} ms",
            counts.sent.load(Ordering::Relaxed),
            counts.acked.load(Ordering::Relaxed),
            shared.in_flight.load(Ordering::Relaxed),
            counts.latency.summary().p99_ms,
        )
    }
}

/// Raises the rate until a step fails, then halves the interval between
/// the last good and the failed rate `refine` times; returns the highest
/// rate that held, if any (the steps are in `runner.results`).
async fn search(runner: &mut Runner<'_>, step: &Step, epoch: &mut usize) -> Option<f64> {
    let (mut good, mut bad) = (None, None);
    let mut rate = step.start;
    while *epoch < MAX_EPOCHS - runner.params.runs - step.refine - 1 {
        let result = runner.epoch(*epoch, rate, step.duration, false).await;
        *epoch += 1;
        if !runner.passed(&result, step.p99_limit) {
            bad = Some(rate);
            break;
        }
        good = Some(rate);
        if rate >= step.max_rate {
            break;
        }
        rate = (rate * step.factor).min(step.max_rate);
    }
    for _ in 0..step.refine {
        let (Some(low), Some(high)) = (good, bad) else { break };
        if runner.shared.lost.load(Ordering::Relaxed) > 0 {
            break;
        }
        let mid = ((low + high) / 2.0 * 10.0).round() / 10.0;
        let result = runner.epoch(*epoch, mid, step.duration, false).await;
        *epoch += 1;
        if runner.passed(&result, step.p99_limit) { good = Some(mid) } else { bad = Some(mid) }
    }
    good
}

/// Missing and duplicate messages by epoch.
fn count_losses(shared: &Shared, reports: &[SubReport], epochs: usize) -> (Vec<u64>, Vec<u64>) {
    let acked = shared.acked.lock().unwrap_or_else(PoisonError::into_inner);
    let mut missing = vec![0; MAX_EPOCHS];
    let mut duplicates = vec![0; MAX_EPOCHS];
    for report in reports {
        // A subscriber that was closed on is judged on the epochs before.
        let judged = report.lost_in.unwrap_or(MAX_EPOCHS).min(epochs).min(MAX_EPOCHS);
        for epoch in 0..judged {
            missing[epoch] += acked[epoch][report.room].missing_from(&report.ids);
        }
        for (total, repeats) in duplicates.iter_mut().zip(&report.duplicates).take(epochs) {
            *total += repeats;
        }
    }
    (missing, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_cids_and_rooms() {
        assert_eq!(parse_stamp("t=1700000000000000 e=3 xxxx"), Some((1_700_000_000_000_000, 3)));
        assert_eq!(parse_stamp("hello"), None);
        assert_eq!(parse_cid("2.5.7.19"), Some((5, 7)));
        assert_eq!(rooms_of(1, 2, 5), vec![1, 3]);
        assert_eq!(rooms_of(3, 4, 1), vec![0]);
        assert_eq!(rooms_of(3, 4, 2), vec![1]);
    }
}
