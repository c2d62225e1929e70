//! The drain run: C clients (the chaos suite's agents, which follow the
//! client rules) chat on one gateway behind HAProxy; a second gateway is
//! started; the first is sent SIGTERM. Measures how long until every client
//! is joined again on the other gateway, and until every one has received a
//! message there, each client's reconnect time, when the old gateway exited,
//! and whether any acked message was missed or seen twice.
//!
//! On a stack of our own the two gateways take turns: each run drains the
//! one the clients are on and restarts the other first. With `--gateways 2`
//! or more, the clients are spread over them all by HAProxy instead (as
//! users are) and the first gateway is drained each run: its share moves to
//! the others, everyone else stays. Against `--url` (an HAProxy) the gateway
//! to drain is given by its process id, once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Live, Profile, Report, Run};
use crate::chaos;
use crate::ledger::Ledger;
use crate::load::procs::{self, Meter};
use crate::load::target::Target;
use crate::load::{progress, summary};

/// How long the clients may take to be joined before the drain.
const JOIN_LIMIT: Duration = Duration::from_secs(120);
/// HAProxy checks each second and needs 2 good checks: time to let it see
/// a gateway that just became ready.
const BALANCER_RISE: Duration = Duration::from_millis(3000);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Clients.
    pub clients: usize,
    /// Clients per room.
    pub room_size: usize,
    /// Messages per second sent by all clients together.
    pub rate: f64,
    /// The gateways' drain window (for the report; a stack of ours is
    /// started with it).
    pub drain_window: Duration,
    /// After everyone is back: how long clients keep sending, then
    /// listening, before the books are closed.
    pub settle: Duration,
    /// Runs (one against `--url`).
    pub runs: usize,
    /// Against `--url`: the gateway process to send SIGTERM.
    pub drain_pid: Option<u32>,
}

/// Runs the drain scenario and returns the summary.
///
/// # Errors
/// When the target cannot be drained, or clients do not join.
pub async fn run(target: &mut Target, params: &Params) -> anyhow::Result<Value> {
    let own = target.own.is_some();
    ensure!(own || params.drain_pid.is_some(), "against --url, drain needs --drain-pid");
    let mut spread = false;
    if let Some(own) = &target.own {
        ensure!(own.stack.haproxy.is_some(), "drain needs HAProxy in front");
        ensure!(own.stack.gateways.len() + own.stack.spares.len() >= 2, "drain needs two gateways");
        spread = own.stack.gateways.len() >= 2;
    }
    let runs_wanted = if own { params.runs } else { 1 };
    let mut runs = Vec::new();
    let mut victim = 0;
    for run in 0..runs_wanted {
        progress::note(&format!("drain run {}: {} clients", run + 1, params.clients));
        if spread {
            runs.push(one_run(target, params, Plan::Spread).await?);
        } else {
            runs.push(one_run(target, params, Plan::Turns { victim }).await?);
            victim = 1 - victim;
        }
    }
    Ok(json!({
        "scenario": "drain",
        "params": {
            "clients": params.clients,
            "room_size": params.room_size,
            "rate": params.rate,
            "drain_window_ms": params.drain_window.as_millis() as u64,
            "settle_s": params.settle.as_secs_f64(),
            "runs": runs_wanted,
            "spread": spread,
        },
        "median": summary::median(&runs),
        "runs": runs,
    }))
}

/// Which gateway a run drains, and where its clients are.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Every client on `victim`; the other gateway is (re)started to take
    /// them.
    Turns { victim: usize },
    /// Clients spread over every gateway; the first is drained (and started
    /// again before the next run).
    Spread,
}

async fn one_run(target: &mut Target, params: &Params, plan: Plan) -> anyhow::Result<Value> {
    if let (Plan::Spread, Some(own)) = (plan, target.own.as_mut())
        && own.stack.gateways[0].process.pid().is_none()
    {
        own.stack.restart_gateway(0).await.context("restart the drained gateway")?;
        tokio::time::sleep(BALANCER_RISE).await;
    }
    let ledger = Arc::new(Ledger::default());
    let live = Arc::new(Live::default());
    let run = Run {
        front: target.front(0),
        ledger: ledger.clone(),
        stop_sending: CancellationToken::new(),
        stop: CancellationToken::new(),
        live: live.clone(),
    };
    let prefix = testkit::unique("drain");
    let send_every = Duration::from_secs_f64(params.clients as f64 / params.rate.max(0.001));
    let mut users = JoinSet::new();
    for n in 0..params.clients {
        let profile = Profile {
            user: format!("{prefix}-u{n}"),
            room: format!("{prefix}-r{}", n / params.room_size.max(1)),
            send_every,
            transport: crate::socket::Transport::Ws,
        };
        users.spawn(agent::run(run.clone(), profile));
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let ticker = progress::spawn("drain", run.stop.child_token(), {
        let (live, ledger) = (live.clone(), ledger.clone());
        move || {
            format!("joined {} back and receiving {} acked {}", live.joined(), live.receiving_again(), ledger.total())
        }
    });
    let deadline = Instant::now() + JOIN_LIMIT;
    while live.joined() < params.clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if live.joined() < params.clients {
        run.stop.cancel();
        bail!("only {} of {} clients joined", live.joined(), params.clients);
    }
    let (pid, victim_admin) = bring_up_and_find_victim(target, params, plan).await?;
    if matches!(plan, Plan::Turns { .. }) {
        tokio::time::sleep(BALANCER_RISE).await;
    }
    let on_victim = match victim_admin {
        Some(admin) => Some(sockets_open(admin).await.context("the drained gateway's sockets")?),
        None => None,
    };

    let meter = Meter::start(&target.watched());
    let t0 = Instant::now();
    kill_term(pid).await?;
    let limit = params.drain_window + Duration::from_secs(30);
    let mut exited_at = None;
    while t0.elapsed() < limit {
        if exited_at.is_none() && !procs::is_running(pid) {
            exited_at = Some(t0.elapsed());
        }
        let everyone_back = match plan {
            Plan::Turns { .. } => live.receiving_again() >= params.clients,
            Plan::Spread => live.joined() >= params.clients && live.receiving_again() >= live.lost(),
        };
        if exited_at.is_some() && everyone_back {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = t0.elapsed();
    let cpu = meter.stop();
    run.stop_sending.cancel();
    tokio::time::sleep(params.settle).await;
    run.stop.cancel();
    ticker.abort();
    let mut reports = Vec::new();
    while let Some(report) = users.join_next().await {
        reports.push(report.context("a client task panicked")?);
    }
    if let Some(own) = target.own.as_mut() {
        let _ = own.stack.gateways[plan.victim()].process.wait(Duration::from_secs(30)).await;
    }
    let verdict = chaos::judge(params.clients, &ledger, &reports);
    let moves = Moves::of(&reports, t0, matches!(plan, Plan::Turns { .. }));
    Ok(json!({
        "clients": params.clients,
        "on_drained_gateway": on_victim,
        "back": moves.back,
        "receiving": moves.receiving,
        "all_back_ms": moves.all_back.map(millis),
        "all_receiving_ms": moves.all_receiving.map(millis),
        "reconnect_p50_ms": verdict.reconnect_p50_ms,
        "reconnect_p99_ms": verdict.reconnect_p99_ms,
        "gateway_exit_ms": exited_at.map(millis),
        "waited_ms": millis(waited),
        "acked": verdict.acked,
        "missed": verdict.lost,
        "duplicates": verdict.duplicates,
        "relogins": verdict.relogins,
        "cpu": cpu,
    }))
}

impl Plan {
    fn victim(self) -> usize {
        match self {
            Self::Turns { victim } => victim,
            Self::Spread => 0,
        }
    }
}

/// Makes sure the gateway that takes the clients runs (our stack, in turns)
/// and returns the victim's process id and admin address.
async fn bring_up_and_find_victim(
    target: &mut Target,
    params: &Params,
    plan: Plan,
) -> anyhow::Result<(u32, Option<SocketAddr>)> {
    let Some(own) = target.own.as_mut() else {
        return Ok((params.drain_pid.context("no gateway to drain")?, None));
    };
    if let Plan::Turns { victim } = plan {
        let other = 1 - victim;
        if own.stack.gateways.len() < 2 {
            own.stack.start_spare(0).await.context("start the second gateway")?;
        } else {
            own.stack.restart_gateway(other).await.context("restart the other gateway")?;
        }
    }
    let gateway = &own.stack.gateways[plan.victim()];
    Ok((gateway.process.pid().context("the gateway to drain is not running")?, Some(gateway.admin)))
}

/// The sockets a gateway holds, from its `/metrics`.
async fn sockets_open(admin: SocketAddr) -> anyhow::Result<u64> {
    let metrics = {
        let mut client = testkit::http::Client::new(admin);
        client.get("/metrics").await?.text()
    };
    let value = metrics
        .lines()
        .find_map(|line| line.strip_prefix("warren_gateway_sockets_open "))
        .context("no warren_gateway_sockets_open")?;
    Ok(value.trim().parse::<f64>()? as u64)
}

async fn kill_term(pid: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Who moved after the drain began, and how long the last one took.
#[derive(Debug, Default, PartialEq)]
struct Moves {
    /// Clients joined again after the drain began.
    back: usize,
    /// Of those, the ones that received a message again.
    receiving: usize,
    /// From the drain to the last client joined again.
    all_back: Option<Duration>,
    /// From the drain to the last client's first message.
    all_receiving: Option<Duration>,
}

impl Moves {
    /// The moves after `t0`; with `everyone`, every client had to move
    /// (else only those that did are timed).
    fn of(reports: &[Report], t0: Instant, everyone: bool) -> Self {
        let mut moves = Self::default();
        let (mut back, mut receiving) = (Duration::ZERO, Duration::ZERO);
        let mut all_received = true;
        for report in reports {
            let Some(resume) = report.resumes.iter().find(|r| r.lost_at >= t0) else {
                all_received &= !everyone;
                continue;
            };
            moves.back += 1;
            back = back.max(resume.joined_at - t0);
            match resume.first_message_at {
                Some(at) => {
                    moves.receiving += 1;
                    receiving = receiving.max(at - t0);
                }
                None => all_received = false,
            }
        }
        let all_back = if everyone { moves.back == reports.len() && !reports.is_empty() } else { moves.back > 0 };
        moves.all_back = all_back.then_some(back);
        moves.all_receiving = (all_back && all_received).then_some(receiving);
        moves
    }
}
