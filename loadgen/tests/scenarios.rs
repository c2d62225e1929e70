//! Each `warren-load` scenario at a tiny size against a stack of its own
//! (debug binaries from `target/debug`, the shared Redis and RabbitMQ; the
//! rooms run a private RabbitMQ node, as `warren-load rooms` does): the
//! summaries must add up. Nothing here is timed: figures come from
//! `scripts/bench`.

use std::time::Duration;

use loadgen::load::target::{Target, TargetSpec};
use loadgen::load::{crowd, drain, fanout, idle, rooms, storm};
use loadgen::socket::Transport;
use serde_json::Value;

fn fanout_params(step: Option<fanout::Step>) -> fanout::Params {
    fanout::Params {
        subscribers: 12,
        publishers: 2,
        rooms: 2,
        rate: 20.0,
        duration: Duration::from_secs(2),
        runs: 1,
        text_bytes: 64,
        settle: Duration::from_secs(5),
        concurrency: 16,
        sources: 2,
        max_in_flight: 1000,
        step,
        slow_readers: 0,
        transport: Transport::Ws,
    }
}

fn u64_at(summary: &Value, pointer: &str) -> u64 {
    summary.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {pointer} in {summary}"))
}

#[tokio::test]
async fn fanout_delivers_every_message_once() -> anyhow::Result<()> {
    fanout_delivers_everything(Transport::Ws).await
}

#[tokio::test]
async fn fanout_to_event_streams_delivers_every_message_once() -> anyhow::Result<()> {
    fanout_delivers_everything(Transport::Sse).await
}

async fn fanout_delivers_everything(transport: Transport) -> anyhow::Result<()> {
    let spec = TargetSpec { gateways: 2, ..TargetSpec::default() };
    let target = Target::start(&spec).await?;
    let summary = fanout::run(&target, &fanout::Params { transport, ..fanout_params(None) }).await?;
    assert_eq!(summary["params"]["transport"], serde_json::to_value(transport)?, "{summary}");
    assert_eq!(u64_at(&summary, "/setup/subscribers_joined"), 12, "{summary}");
    let run = &summary["runs"][0];
    assert!(u64_at(run, "/deliveries") > 0, "{summary}");
    assert_eq!(u64_at(run, "/deliveries"), u64_at(run, "/expected"), "{summary}");
    assert_eq!(u64_at(&summary, "/missing"), 0, "{summary}");
    assert_eq!(u64_at(&summary, "/duplicates"), 0, "{summary}");
    assert!(u64_at(run, "/latency/count") > 0, "{summary}");
    Ok(())
}

#[tokio::test]
async fn one_slow_reader_is_closed_and_500_subscribers_get_every_message() -> anyhow::Result<()> {
    // A small queue per socket, so that the slow reader's fills after a few
    // messages (the kernels hold some 50 KiB more for it).
    let spec = TargetSpec {
        gateway_env: vec![("GATEWAY_MAX_QUEUE_BYTES".to_owned(), "16384".to_owned())],
        ..TargetSpec::default()
    };
    let target = Target::start(&spec).await?;
    // The slow reader joins all 10 rooms, so it is sent every message: sixty
    // of 4 KB, several times what it can hold; each subscriber gets six.
    let params = fanout::Params {
        subscribers: 500,
        rooms: 10,
        text_bytes: 4000,
        duration: Duration::from_secs(3),
        settle: Duration::from_secs(20),
        concurrency: 32,
        slow_readers: 1,
        ..fanout_params(None)
    };
    let summary = fanout::run(&target, &params).await?;
    assert_eq!(u64_at(&summary, "/setup/subscribers_joined"), 500, "{summary}");
    let run = &summary["runs"][0];
    assert!(u64_at(run, "/deliveries") > 0, "{summary}");
    assert_eq!(u64_at(run, "/deliveries"), u64_at(run, "/expected"), "{summary}");
    assert_eq!(u64_at(&summary, "/missing"), 0, "{summary}");
    assert_eq!(u64_at(&summary, "/duplicates"), 0, "{summary}");
    assert_eq!(u64_at(&summary, "/subscribers_lost"), 0, "{summary}");
    // The slow reader found its socket closed by the gateway, and the
    // gateway counted one socket closed as `slow`: that one.
    assert_eq!(u64_at(&summary, "/slow_readers/opened"), 1, "{summary}");
    assert_eq!(u64_at(&summary, "/slow_readers/closed_by_gateway"), 1, "{summary}");
    let other_closes = summary.pointer("/slow_readers/close_other").and_then(Value::as_object);
    assert!(other_closes.is_some_and(serde_json::Map::is_empty), "a close frame, if any, says slow: {summary}");
    assert_eq!(u64_at(&summary, "/slow_readers/gateway_slow_closes"), 1, "{summary}");
    Ok(())
}

#[tokio::test]
async fn fanout_steps_report_a_saturation_rate() -> anyhow::Result<()> {
    let target = Target::start(&TargetSpec::default()).await?;
    let step = fanout::Step {
        start: 10.0,
        factor: 2.0,
        duration: Duration::from_secs(1),
        max_rate: 20.0,
        // Generous: debug builds on a shared machine; the point is the shape.
        p99_limit: Duration::from_secs(5),
        refine: 0,
    };
    let params = fanout::Params { duration: Duration::from_secs(1), ..fanout_params(Some(step)) };
    let summary = fanout::run(&target, &params).await?;
    let steps = summary["steps"].as_array().map_or(0, Vec::len);
    assert!((1..=2).contains(&steps), "{summary}");
    if let Some(rate) = summary["saturation_rate"].as_f64() {
        assert!(rate >= 10.0, "{summary}");
        assert_eq!(summary["runs"].as_array().map(Vec::len), Some(1), "{summary}");
    }
    assert_eq!(u64_at(&summary, "/missing"), 0, "{summary}");
    assert_eq!(u64_at(&summary, "/duplicates"), 0, "{summary}");
    Ok(())
}

#[tokio::test]
async fn idle_opens_and_holds_every_socket_on_fresh_gateways() -> anyhow::Result<()> {
    idle_holds_everything(Transport::Ws).await
}

#[tokio::test]
async fn idle_opens_and_holds_every_event_stream_on_fresh_gateways() -> anyhow::Result<()> {
    idle_holds_everything(Transport::Sse).await
}

async fn idle_holds_everything(transport: Transport) -> anyhow::Result<()> {
    let mut target = Target::start(&TargetSpec::default()).await?;
    let hold = Duration::from_millis(500);
    let params = idle::Params { clients: 60, sources: 2, concurrency: 16, hold, runs: 2, transport };
    let summary = idle::run(&mut target, &params).await?;
    for run in summary["runs"].as_array().into_iter().flatten() {
        assert_eq!(u64_at(run, "/opened"), 60, "{summary}");
        assert_eq!(u64_at(run, "/still_open"), 60, "{summary}");
        assert_eq!(u64_at(run, "/failed"), 0, "{summary}");
        assert!(run["gateway_rss_per_socket_bytes"].is_u64(), "{summary}");
    }
    assert_eq!(summary["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(summary["params"]["transport"], serde_json::to_value(transport)?);
    Ok(())
}

#[tokio::test]
async fn storm_welcomes_everyone() -> anyhow::Result<()> {
    let target = Target::start(&TargetSpec::default()).await?;
    let params = storm::Params { clients: 60, sources: 1, concurrency: 16, runs: 1 };
    let summary = storm::run(&target, &params).await?;
    let run = &summary["runs"][0];
    assert_eq!(u64_at(run, "/welcomed"), 60, "{summary}");
    assert_eq!(u64_at(run, "/failed"), 0, "{summary}");
    assert_eq!(u64_at(run, "/time_to_welcome/count"), 60, "{summary}");
    Ok(())
}

#[tokio::test]
async fn drain_brings_everyone_back_without_missing_a_message() -> anyhow::Result<()> {
    let spec = TargetSpec {
        gateways: 1,
        spare_gateways: 1,
        haproxy: true,
        drain_window: Duration::from_secs(1),
        ..TargetSpec::default()
    };
    let mut target = Target::start(&spec).await?;
    let params = drain::Params {
        clients: 20,
        room_size: 5,
        rate: 20.0,
        drain_window: spec.drain_window,
        settle: Duration::from_secs(2),
        runs: 2,
        drain_pid: None,
    };
    let summary = drain::run(&mut target, &params).await?;
    for run in summary["runs"].as_array().into_iter().flatten() {
        assert_eq!(u64_at(run, "/back"), 20, "{summary}");
        assert_eq!(u64_at(run, "/missed"), 0, "{summary}");
        assert_eq!(u64_at(run, "/duplicates"), 0, "{summary}");
        assert_eq!(u64_at(run, "/relogins"), 0, "{summary}");
        assert!(run["all_back_ms"].is_u64() && run["gateway_exit_ms"].is_u64(), "{summary}");
    }
    assert_eq!(summary["runs"].as_array().map(Vec::len), Some(2));
    Ok(())
}

/// The shape `warren-load rooms` and `crowd` start: 3 gateways behind
/// HAProxy, 1 bridge.
fn behind_haproxy(private_services: bool) -> TargetSpec {
    TargetSpec { gateways: 3, haproxy: true, private_services, ..TargetSpec::default() }
}

#[tokio::test]
async fn rooms_deliver_one_message_to_every_member_and_read_the_broker() -> anyhow::Result<()> {
    let target = Target::start(&behind_haproxy(true)).await?;
    let params = rooms::Params {
        rooms: 60,
        members: 2,
        idle_rooms: 20,
        rooms_per_socket: 32,
        sockets_per_user: 8,
        send_rate: 200.0,
        concurrency: 16,
        sources: 2,
        settle: Duration::from_secs(15),
        broker_node: None,
    };
    let summary = rooms::run(&target, &params).await?;
    assert_eq!(u64_at(&summary, "/idle/acked"), 20, "{summary}");
    assert_eq!(u64_at(&summary, "/idle/left"), 20, "{summary}");
    assert_eq!(u64_at(&summary, "/joins/joined"), 120, "{summary}");
    assert!(summary["joins"]["errors"].as_object().is_some_and(serde_json::Map::is_empty), "{summary}");
    assert_eq!(u64_at(&summary, "/sends/acked"), 60, "{summary}");
    assert_eq!(u64_at(&summary, "/deliveries/expected"), 120, "{summary}");
    assert_eq!(u64_at(&summary, "/deliveries/received"), 120, "{summary}");
    assert_eq!(u64_at(&summary, "/missing"), 0, "{summary}");
    assert_eq!(u64_at(&summary, "/duplicates"), 0, "{summary}");
    assert_eq!(u64_at(&summary, "/deliveries/latency/count"), 120, "{summary}");
    assert_eq!(u64_at(&summary, "/deliveries/rooms_heard_by_every_member"), 60, "{summary}");
    // The private node is found and answers: every figure is read.
    for reading in ["before", "after_idle", "after"] {
        for figure in ["fds", "fd_limit", "channels", "queues", "memory_bytes", "rss_kib"] {
            u64_at(&summary, &format!("/broker/{reading}/{figure}"));
        }
    }
    assert!(summary["broker"]["change"]["fds"].is_i64(), "{summary}");
    Ok(())
}

#[tokio::test]
async fn a_crowd_joining_one_room_gets_every_message_once() -> anyhow::Result<()> {
    let target = Target::start(&behind_haproxy(false)).await?;
    let params = crowd::Params {
        members: 60,
        publishers: 3,
        rate: 20.0,
        duration: Duration::from_secs(5),
        join_within: Duration::from_secs(2),
        settle: Duration::from_secs(15),
        text_bytes: 64,
        concurrency: 16,
        sources: 2,
    };
    let summary = crowd::run(&target, &params).await?;
    assert_eq!(u64_at(&summary, "/joins/joined"), 60, "{summary}");
    assert_eq!(u64_at(&summary, "/joins/joined_latency/count"), 60, "{summary}");
    let sent = u64_at(&summary, "/publishing/sent");
    assert!(sent >= 90, "{summary}");
    assert_eq!(u64_at(&summary, "/publishing/acked"), sent, "{summary}");
    // Publishing began with the first member in, before the last one.
    assert!(u64_at(&summary, "/joins/joined_after_publishing_began") > 0, "{summary}");
    assert!(u64_at(&summary, "/deliveries/expected") > 0, "{summary}");
    assert_eq!(u64_at(&summary, "/missing"), 0, "{summary}");
    assert_eq!(u64_at(&summary, "/duplicates"), 0, "{summary}");
    assert!(u64_at(&summary, "/latency/count") > 0, "{summary}");
    assert!(!summary["latency_by_second"].as_array().is_none_or(Vec::is_empty), "{summary}");
    // Arrivals are told, as `presence` or batched `presence_diff` frames.
    u64_at(&summary, "/presence/presence_frames/max");
    u64_at(&summary, "/presence/presence_diff_frames/max");
    assert!(u64_at(&summary, "/presence/changes_told/total") > 0, "{summary}");
    assert!(u64_at(&summary, "/joined_frames/bytes/max") > 0, "{summary}");
    assert!(summary["gateways"].is_object(), "{summary}");
    Ok(())
}

#[tokio::test]
async fn the_binary_prints_one_json_summary() -> anyhow::Result<()> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren-load"))
        .args(["storm", "--clients", "10", "--concurrency", "4"])
        .env("WARREN_BIN_DIR", testkit::stack::bin_dir())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(summary["scenario"], "storm");
    assert_eq!(u64_at(&summary, "/median/welcomed"), 10, "{summary}");
    assert!(summary["target"]["own_stack"].is_object(), "{summary}");
    Ok(())
}
