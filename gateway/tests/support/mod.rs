//! What more than one integration test needs beyond testkit: a stack of one
//! gateway with extra environment, and a WebSocket client written by hand
//! ([`raw`]) for what testkit's well-behaved client will not do.
//!
//! `node_script.rs` beside them is no part of it: the tests that drive a
//! Node script include it themselves, so that the others do not build it.

pub mod raw;

use std::net::SocketAddr;

use testkit::services::RabbitNode;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Socket};

/// One bridge and one gateway, the gateway run with `env` on top of the
/// test defaults.
pub async fn one_gateway(env: &[(&str, &str)]) -> anyhow::Result<Stack> {
    let gateway_env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Stack::start_with(Shape { bridges: 1, gateways: 1, haproxy: false }, Extras { gateway_env, ..Extras::default() })
        .await
}

/// [`one_gateway`] on a RabbitMQ node of its own, for tests that send
/// megabytes: left in the shared broker's partitions, they would be read
/// again, from the start, by the bridges of every later test. The node
/// stops when the pair is dropped (after the stack).
pub async fn one_gateway_own_broker(env: &[(&str, &str)]) -> anyhow::Result<(Stack, RabbitNode)> {
    let rabbit = RabbitNode::start().await?;
    let gateway_env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let extras = Extras { amqp_url: Some(rabbit.url()), gateway_env, ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 1, haproxy: false }, extras).await?;
    Ok((stack, rabbit))
}

/// Opens a socket with testkit's client and reads its `welcome`.
pub async fn open(addr: SocketAddr, cookie: &str) -> anyhow::Result<Socket> {
    let mut socket = ws::connect(addr, Some(cookie), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(socket.next_json().await?["type"], "welcome");
    Ok(socket)
}
