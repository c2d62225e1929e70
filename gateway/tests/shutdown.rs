//! A gateway stops cleanly: readiness turns 503 at once, every socket is told
//! to reconnect within the drain window, stragglers are closed with 1012
//! (service restart) and the process exits.

use std::time::Duration;

use anyhow::Context;
use testkit::http::Client;
use testkit::stack::{Shape, Stack};
use testkit::ws::{self, Event};

#[tokio::test]
async fn sigterm_closes_sockets_with_1012_and_exits() -> anyhow::Result<()> {
    let mut stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let gateway = &mut stack.gateways[0];
    let mut client = Client::new(gateway.addr);
    client.login("alice").await?;
    let mut socket =
        ws::connect(gateway.addr, client.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(socket.next_json().await?["type"], "welcome");

    let started = std::time::Instant::now();
    gateway.process.signal("TERM").await?;
    // Not ready as soon as the signal is handled (polled: on a loaded
    // machine the handler may run a moment after `kill` returns).
    let mut ready = Client::new(gateway.admin);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while ready.get("/readyz").await?.status != http::StatusCode::SERVICE_UNAVAILABLE {
        anyhow::ensure!(std::time::Instant::now() < deadline, "still ready 2 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // This client ignores the notice, so the gateway closes it itself.
    let notice = socket.next_json().await?;
    assert_eq!(notice["type"], "reconnect", "{notice}");
    assert!(notice["after_ms"].as_u64().is_some_and(|ms| ms <= 1000));
    let close = loop {
        match socket.next_event().await? {
            Event::Close(code, reason) => break (code, reason),
            Event::Json(_) => {}
        }
    };
    assert_eq!(close.0, 1012, "service restart: {close:?}");
    // The test stack drains over 2 s, plus up to 1 s of jitter and 2 s of grace.
    assert!(started.elapsed() < Duration::from_secs(6), "closed within the window: {:?}", started.elapsed());
    let code = gateway.process.wait(Duration::from_secs(10)).await.context("gateway exits")?;
    assert_eq!(code, Some(0));
    Ok(())
}
