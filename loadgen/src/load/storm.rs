//! The storm run: C clients, already logged in, open their sockets at the
//! same instant. Each handshake includes the gateway's session lookup in
//! Redis. Reports handshakes per second (C over the time to the last
//! `welcome`), the time to `welcome` (p50/p90/p99/max), and handshakes per
//! CPU second of the gateways. A client the gateway turns away for
//! admission (429 or 503) tries again after a growing, jittered pause, as
//! the page does; the refusals are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::load::clients::{self, Conn, Failures, Sources};
use crate::load::histogram::Histogram;
use crate::load::procs::{self, Meter, round3};
use crate::load::target::Target;
use crate::load::{progress, summary};
use crate::socket::Incoming;

/// How long one client may take to get its `welcome`.
const WELCOME_LIMIT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Clients connecting at once.
    pub clients: usize,
    /// Local source addresses (0: one per 10,000 sockets).
    pub sources: usize,
    /// Logins at a time (before the storm).
    pub concurrency: usize,
    /// Runs.
    pub runs: usize,
}

/// Runs the storm scenario and returns the summary.
///
/// # Errors
/// When logins fail.
pub async fn run(target: &Target, params: &Params) -> anyhow::Result<Value> {
    clients::check_fd_budget(params.clients)?;
    let prefix = testkit::unique("storm");
    let users: Vec<String> = (0..params.clients).map(|i| format!("{prefix}-u{i}")).collect();
    let started = Instant::now();
    let cookies = Arc::new(clients::login_all(target, &users, params.concurrency).await?);
    let logins_s = started.elapsed().as_secs_f64();
    let sources =
        if params.sources == 0 { Sources::for_sockets(params.clients)? } else { Sources::new(params.sources)? };
    let mut runs = Vec::new();
    for run in 0..params.runs {
        progress::note(&format!("storm run {}: {} clients at once", run + 1, params.clients));
        runs.push(one_run(target, params, &sources, cookies.clone()).await);
        // Let the gateways see the closes before the next storm.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(json!({
        "scenario": "storm",
        "params": { "clients": params.clients, "sources": sources.len(), "runs": params.runs },
        "setup": { "logins_s": round3(logins_s), "logins_per_s": (params.clients as f64 / logins_s).round() },
        "median": summary::median(&runs),
        "runs": runs,
    }))
}

async fn one_run(target: &Target, params: &Params, sources: &Sources, cookies: Arc<Vec<String>>) -> Value {
    let go = CancellationToken::new();
    let release = CancellationToken::new();
    let welcome = Arc::new(Histogram::default());
    let failures = Arc::new(Failures::default());
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for index in 0..params.clients {
        let (front, local) = (target.front(index), sources.pick(index));
        let conn = Conn { front, local, cookie: cookies[index].clone() };
        let (go, release, welcome, failures, refused) =
            (go.clone(), release.clone(), welcome.clone(), failures.clone(), refused.clone());
        tasks.spawn(async move {
            go.cancelled().await;
            let started = Instant::now();
            let (mut reader, writer) = match clients::open_admitted(&conn, WELCOME_LIMIT).await {
                Ok((reader, writer, turned_away)) => {
                    refused.fetch_add(u64::from(turned_away), Ordering::Relaxed);
                    (reader, writer)
                }
                Err(reason) => {
                    failures.add(reason);
                    return None;
                }
            };
            welcome.record(started.elapsed());
            let at = Instant::now();
            // Hold the socket until every client is through.
            tokio::select! {
                incoming = reader.next() => if let Incoming::Closed(_) = incoming { failures.add("closed early") },
                () = release.cancelled() => {}
            }
            writer.close();
            Some(at)
        });
    }
    // Every task is parked on `go`; let them run into it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ticker = progress::spawn("storm", release.child_token(), {
        let (welcome, failures) = (welcome.clone(), failures.clone());
        move || format!("welcomed {} failed {}", welcome.count(), failures.total())
    });
    let meter = Meter::start(&target.watched());
    let t0 = Instant::now();
    go.cancel();
    let limit = t0 + WELCOME_LIMIT + Duration::from_secs(5);
    while (welcome.count() + failures.total()) < params.clients as u64 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = meter.stop();
    release.cancel();
    ticker.abort();
    let mut last = t0;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(at)) = done {
            last = last.max(at);
        }
    }
    let welcomed = welcome.count();
    let elapsed = (last - t0).as_secs_f64().max(1e-6);
    let gateway_cpu_s = procs::cpu_of(&cpu, "gw");
    json!({
        "clients": params.clients,
        "welcomed": welcomed,
        "failed": failures.total(),
        "failures": failures.snapshot(),
        "refused": refused.load(Ordering::Relaxed),
        "storm_s": round3(elapsed),
        "handshakes_per_s": (welcomed as f64 / elapsed).round(),
        "time_to_welcome": welcome.summary(),
        "gateway_cpu_s": gateway_cpu_s,
        "handshakes_per_gateway_cpu_s": (welcomed as f64 / gateway_cpu_s.max(0.001)).round(),
        "cpu": cpu,
    })
}
