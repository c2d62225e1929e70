//! The page survives its gateway's drain, in headless Chromium: SIGTERM the
//! gateway the page is on while another client keeps sending, and the page
//! moves to another gateway without the login page, shows what was sent in
//! the gap exactly once, and a message typed in the gap is delivered once.
//! Once over a WebSocket, once behind a balancer that refuses WebSockets:
//! there the page falls back to the event stream by itself, and the same
//! holds (the sender stays on a WebSocket, so the two transports chat).
//!
//! The browser side is `gateway/tests/js/drain.mjs`; this test owns the
//! stack and the sending client, and the two exchange JSON lines (the
//! exchange is described at the top of the script). The sender logs in
//! directly on another gateway, not through HAProxy, so it is never on the
//! one that drains.

#[path = "support/node_script.rs"]
mod node_script;

use std::time::{Duration, Instant};

use anyhow::Context;
use node_script::NodeScript;
use serde_json::{Value, json};
use testkit::http::Client;
use testkit::stack::{Extras, Front, Shape, Stack};
use testkit::ws;

/// The whole test, stack included.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Messages the sender sends while the page is between sockets.
const GAP_MESSAGES: usize = 5;

#[tokio::test]
async fn the_page_moves_to_another_gateway_when_its_own_drains() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, drain_under_the_page("ws")).await.context("the test took over 90 s")?
}

#[tokio::test]
async fn behind_a_proxy_that_breaks_websockets_the_page_streams_and_survives_a_drain() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, drain_under_the_page("sse")).await.context("the test took over 90 s")?
}

async fn drain_under_the_page(transport: &str) -> anyhow::Result<()> {
    let front = Front { refuse_websockets: transport == "sse", ..Front::default() };
    let extras = Extras { front, ..Extras::default() };
    let mut stack = Stack::start_with(Shape { bridges: 1, gateways: 3, haproxy: true }, extras).await?;
    let room = testkit::unique("drain");
    let url = format!("http://{}", stack.front());
    let mut script = NodeScript::spawn("drain.mjs", &["--url", &url, "--room", &room, "--transport", transport])?;

    // The page is logged in, in the room, on some gateway.
    let ready = script.expect("ready").await?;
    let first = ready["instance"].as_str().context("ready without instance")?.to_owned();
    let page_user = ready["user"].as_str().context("ready without user")?.to_owned();
    let dying =
        stack.gateways.iter().position(|g| g.instance == first).with_context(|| format!("no gateway {first}"))?;

    // The sender, directly on another gateway.
    let sender_on = &stack.gateways[(dying + 1) % stack.gateways.len()];
    let mut login = Client::new(sender_on.addr);
    login.login(&testkit::unique("sender")).await?;
    let mut sender = ws::connect(sender_on.addr, login.cookie.as_deref(), None)
        .await
        .map_err(|refused| anyhow::anyhow!("sender socket refused: {refused:?}"))?;
    assert_eq!(sender.next_json().await?["type"], "welcome");
    sender.join(&room, None).await?;
    let before = format!("before the drain {}", testkit::unique("m"));
    sender.send_message(&room, &before, "before").await?;
    script.send(&json!({ "before": before })).await?;
    script.expect("seen_before").await?;

    // SIGTERM the page's gateway; once the page has let go of it, send.
    let terminated = Instant::now();
    stack.gateways[dying].process.signal("TERM").await?;
    let left = script.expect("left").await?;
    let typed = left["typed"].as_str().context("left without typed")?.to_owned();
    let mut sent = Vec::new();
    for n in 0..GAP_MESSAGES {
        let text = format!("sent in the gap {n} {}", testkit::unique("m"));
        sender.send_message(&room, &text, &format!("gap-{n}")).await?;
        sent.push(text);
    }
    script.send(&json!({ "sent": sent })).await?;

    // Back on another gateway, the typed message acked; then a fence after
    // everything, so that both sides can count.
    let back = script.expect("reconnected").await?;
    assert_ne!(back["reconnected"], first.as_str(), "the page came back to the gateway that drains");
    let fence = format!("fence {}", testkit::unique("m"));
    let fence_id = sender.send_message(&room, &fence, "fence").await?;
    script.send(&json!({ "fence": fence })).await?;
    script.finish().await?;

    // Delivered once: the room as the sender saw it, live, up to the fence.
    let seen = sender.messages_until(&room, fence_id).await?;
    let ids: Vec<u64> = seen.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
    let count = |text: &str| seen.iter().filter(|m| m["text"] == text).count();
    let typed_copies: Vec<&Value> = seen.iter().filter(|m| m["text"] == typed.as_str()).collect();
    assert_eq!(typed_copies.len(), 1, "the message typed in the gap, in the room: {typed_copies:?}");
    assert_eq!(typed_copies[0]["user"], page_user.as_str(), "typed by the page's user");
    for text in std::iter::once(&before).chain(&sent) {
        assert_eq!(count(text), 1, "{text:?} in the room");
    }

    // And the drained gateway exits by itself, cleanly (its window is 2 s in
    // the test stack, its grace 3 s).
    let code = stack.gateways[dying].process.wait(Duration::from_secs(15)).await.context("drained gateway exits")?;
    assert_eq!(code, Some(0), "drained gateway's exit status");
    println!("SIGTERM to the end of the test: {:?}", terminated.elapsed());
    Ok(())
}
