//! Both binaries expose Prometheus metrics on their admin port, and the
//! counters move with traffic.

use anyhow::Context;
use testkit::http::Client;
use testkit::stack::{Shape, Stack};
use testkit::ws;

/// The value of the first sample of `name` (with any labels).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_move_with_traffic() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let gateway = &stack.gateways[0];
    let mut client = Client::new(gateway.addr);
    client.login("metered").await?;
    let mut socket =
        ws::connect(gateway.addr, client.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    socket.next_json().await?;
    let room = testkit::unique("metrics");
    socket.join(&room, None).await?;
    let id = socket.send_message(&room, "counted", "m-1").await?;
    socket.messages_until(&room, id).await?;
    socket.send_text("{broken").await?;
    socket.next_of_type("error").await?;
    assert!(matches!(ws::connect(gateway.addr, None, None).await, Err(ws::Refused::Status(401))));

    let text = Client::new(gateway.admin).get("/metrics").await?.text();
    for (name, at_least) in [
        ("warren_gateway_sockets_open", 1.0),
        ("warren_gateway_sockets_accepted_total", 1.0),
        ("warren_gateway_messages_delivered_total", 1.0),
        ("warren_gateway_send_ack_seconds_count", 1.0),
        ("warren_gateway_delivery_latency_seconds_count", 1.0),
        ("warren_gateway_bridge_connected", 1.0),
        ("warren_gateway_redis_seconds_count", 1.0),
        ("warren_gateway_bytes_out_total", 10.0),
    ] {
        let value = sample(&text, name).with_context(|| format!("{name} missing from:\n{text}"))?;
        assert!(value >= at_least, "{name} = {value}");
    }
    assert!(text.contains(r#"warren_gateway_frames_in_total{type="invalid"} 1"#), "{text}");
    assert!(text.contains(r#"warren_gateway_handshakes_refused_total{reason="no_session"} 1"#), "{text}");
    assert!(text.contains("# TYPE warren_gateway_send_ack_seconds histogram"));
    assert!(text.contains(r#"le="0.0005""#), "millisecond buckets");

    let bridge = Client::new(stack.bridges[0].admin).get("/metrics").await?.text();
    for name in [
        "warren_bridge_gateway_streams_open",
        "warren_bridge_publishes_total",
        "warren_bridge_confirm_seconds_count",
        "warren_bridge_amqp_connected",
        "warren_bridge_subscriptions",
    ] {
        let value = sample(&bridge, name).with_context(|| format!("{name} missing from:\n{bridge}"))?;
        assert!(value >= 1.0, "{name} = {value}");
    }
    Ok(())
}

/// The counters the chart's dashboards and alerts read (`warren_*_total`).
fn counters_read_by_the_chart() -> anyhow::Result<Vec<String>> {
    let chart = testkit::stack::repo_root().join("charts/warren");
    let mut names = std::collections::BTreeSet::new();
    for dir in ["dashboards", "alerts"] {
        for entry in std::fs::read_dir(chart.join(dir))? {
            let text = std::fs::read_to_string(entry?.path())?;
            let mut rest = text.as_str();
            while let Some(at) = rest.find("warren_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if name.ends_with("_total") {
                    names.insert(name.clone());
                }
                rest = &rest[at + name.len().max(1)..];
            }
        }
    }
    Ok(names.into_iter().collect())
}

/// Every counter a dashboard or an alert reads exists from start-up, before
/// its first event: otherwise `rate()` and `increase()` miss the first
/// failure after a restart, and its alert never fires.
#[tokio::test]
async fn every_counter_the_chart_reads_is_exported_from_start_up() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let gateway = Client::new(stack.gateways[0].admin).get("/metrics").await?.text();
    let bridge = Client::new(stack.bridges[0].admin).get("/metrics").await?.text();
    let names = counters_read_by_the_chart()?;
    assert!(names.len() >= 10, "the chart reads counters: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            let page = if name.starts_with("warren_bridge_") { &bridge } else { &gateway };
            sample(page, name).is_none()
        })
        .collect();
    assert!(missing.is_empty(), "not exported before their first event: {missing:?}");
    Ok(())
}
