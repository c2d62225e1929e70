//! The idle run: C authenticated sockets opened (at most `concurrency` at a
//! time, from several 127.0.0.x source addresses) and held. Reports the
//! setup rate, failures, and what holding them costs: the gateways' RSS
//! after the sockets opened minus before, divided by C.
//!
//! Each run starts from fresh gateway processes when the stack is ours, so
//! that memory freed by an earlier run does not hide the cost of the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::load::clients::{self, Failures, Sources};
use crate::load::procs::{self, Meter, round3};
use crate::load::target::Target;
use crate::load::{progress, summary};
use crate::socket::{self, Incoming, Transport};

/// How long one socket may take to open and say `welcome`.
const OPEN_LIMIT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Sockets.
    pub clients: usize,
    /// Local source addresses (0: one per 10,000 sockets).
    pub sources: usize,
    /// Sockets opening at a time.
    pub concurrency: usize,
    /// How long all of them are held before measuring.
    pub hold: Duration,
    /// Runs.
    pub runs: usize,
    /// WebSockets, or event streams.
    pub transport: Transport,
}

#[derive(Debug, Default)]
struct Counts {
    done: AtomicUsize,
    opened: AtomicUsize,
    closed_early: AtomicUsize,
    /// µs from the start to the last `welcome`.
    last_welcome_us: AtomicU64,
}

/// Runs the idle scenario and returns the summary.
///
/// # Errors
/// When logins fail or a fresh gateway does not start.
pub async fn run(target: &mut Target, params: &Params) -> anyhow::Result<Value> {
    clients::check_fd_budget(params.clients)?;
    let prefix = testkit::unique("idle");
    let users: Vec<String> = (0..params.clients).map(|i| format!("{prefix}-u{i}")).collect();
    let started = Instant::now();
    let cookies = Arc::new(clients::login_all(target, &users, params.concurrency.min(256)).await?);
    let logins_s = started.elapsed().as_secs_f64();
    let sources =
        if params.sources == 0 { Sources::for_sockets(params.clients)? } else { Sources::new(params.sources)? };
    let mut runs = Vec::new();
    for run in 0..params.runs {
        target.fresh_gateways().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress::note(&format!("idle run {}: opening {} sockets", run + 1, params.clients));
        runs.push(one_run(target, params, &sources, cookies.clone()).await);
    }
    Ok(json!({
        "scenario": "idle",
        "params": {
            "clients": params.clients,
            "sources": sources.len(),
            "concurrency": params.concurrency,
            "hold_s": params.hold.as_secs_f64(),
            "runs": params.runs,
            "transport": params.transport,
        },
        "setup": { "logins_s": round3(logins_s), "logins_per_s": (params.clients as f64 / logins_s).round() },
        "median": summary::median(&runs),
        "runs": runs,
    }))
}

async fn one_run(target: &Target, params: &Params, sources: &Sources, cookies: Arc<Vec<String>>) -> Value {
    let stop = CancellationToken::new();
    let counts = Arc::new(Counts::default());
    let failures = Arc::new(Failures::default());
    let permits = Arc::new(Semaphore::new(params.concurrency.max(1)));
    let gateways_before = target.gateways_rss_kib();
    let loadgen_before = procs::rss_kib(std::process::id());
    let meter = Meter::start(&target.watched());
    let ticker = progress::spawn("idle", stop.child_token(), {
        let (counts, failures) = (counts.clone(), failures.clone());
        move || {
            format!(
                "opened {} failed {} closed early {}",
                counts.opened.load(Ordering::Relaxed),
                failures.total(),
                counts.closed_early.load(Ordering::Relaxed)
            )
        }
    });
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..params.clients {
        let (front, local) = (target.front(index), sources.pick(index));
        let (cookies, counts, failures, permits, stop) =
            (cookies.clone(), counts.clone(), failures.clone(), permits.clone(), stop.clone());
        let transport = params.transport;
        tasks.spawn(async move {
            let opened = async {
                let _permit = permits.acquire().await;
                let (mut reader, writer) =
                    socket::open_over(front, local, &cookies[index], transport).await.map_err(|e| e.to_string())?;
                clients::await_type(&mut reader, "welcome", OPEN_LIMIT).await?;
                Ok::<_, String>((reader, writer))
            };
            let result = opened.await;
            counts.done.fetch_add(1, Ordering::Relaxed);
            let (mut reader, writer) = match result {
                Ok(pair) => pair,
                Err(reason) => return failures.add(reason),
            };
            counts.opened.fetch_add(1, Ordering::Relaxed);
            counts.last_welcome_us.fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            loop {
                tokio::select! {
                    incoming = reader.next() => if let Incoming::Closed(_) = incoming {
                        counts.closed_early.fetch_add(1, Ordering::Relaxed);
                        return;
                    },
                    () = stop.cancelled() => break,
                }
            }
            writer.close();
        });
    }
    let limit = t0 + OPEN_LIMIT * 5;
    while counts.done.load(Ordering::Relaxed) < params.clients && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_cpu = meter.stop();
    let opened = counts.opened.load(Ordering::Relaxed);
    let setup_s = counts.last_welcome_us.load(Ordering::Relaxed) as f64 / 1e6;
    progress::note(&format!("{opened} sockets open in {setup_s:.2} s; holding {:?}", params.hold));
    let hold = Meter::start(&target.watched());
    tokio::time::sleep(params.hold).await;
    let gateways_after = target.gateways_rss_kib();
    let loadgen_after = procs::rss_kib(std::process::id());
    let hold_cpu = hold.stop();
    let still_open = opened - counts.closed_early.load(Ordering::Relaxed);
    stop.cancel();
    ticker.abort();
    while tasks.join_next().await.is_some() {}
    let per_socket = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(before), Some(after)) if opened > 0 => json!((after.saturating_sub(before) * 1024) / opened as u64),
        _ => Value::Null,
    };
    let gateway_cpu_s = procs::cpu_of(&setup_cpu, "gw");
    json!({
        "clients": params.clients,
        "opened": opened,
        "failed": failures.total(),
        "failures": failures.snapshot(),
        "still_open": still_open,
        "setup_s": round3(setup_s),
        "setup_per_s": (opened as f64 / setup_s.max(1e-6)).round(),
        "gateway_cpu_s": gateway_cpu_s,
        "opens_per_gateway_cpu_s": (opened as f64 / gateway_cpu_s.max(0.001)).round(),
        "gateway_rss_kib_before": gateways_before,
        "gateway_rss_kib_after": gateways_after,
        "gateway_rss_per_socket_bytes": per_socket(gateways_before, gateways_after),
        "loadgen_rss_per_socket_bytes": per_socket(loadgen_before, loadgen_after),
        "setup_cpu": setup_cpu,
        "hold_cpu": hold_cpu,
    })
}
