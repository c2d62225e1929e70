//! A gateway stops cleanly: readiness turns 503, sockets close with 1012
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

    gateway.process.signal("TERM").await?;
    let close = loop {
        match socket.next_event().await? {
            Event::Close(code, reason) => break (code, reason),
            Event::Json(_) => {}
        }
    };
    assert_eq!(close.0, 1012, "service restart: {close:?}");
    let code = gateway.process.wait(Duration::from_secs(10)).await.context("gateway exits")?;
    assert_eq!(code, Some(0));
    Ok(())
}
