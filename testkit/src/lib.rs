//! Warren's one test harness. It starts real processes (bridges, gateways,
//! HAProxy) against the real Redis and RabbitMQ named by `WARREN_REDIS_URL`
//! and `WARREN_AMQP_URL`, and talks to them as a client would.
//!
//! - [`stack`]: processes on free loopback ports ([`ports`]), killed on drop.
//! - [`http`]: a small HTTP/1.1 client with a cookie.
//! - [`ws`]: a client speaking the JSON protocol, over a WebSocket or
//!   ([`sse`]) an event stream and its POSTs.
//! - [`services`]: private Redis and RabbitMQ servers on free loopback ports,
//!   to stop, kill and restart (chaos tests); the shared ones stay untouched.
//! - [`rabbit_cluster`]: three clustered private RabbitMQ nodes, to kill
//!   the one leading a stream.
//! - [`sentinel`]: a Redis master, its replica and three sentinels, to fail
//!   over.
//! - [`redis_cluster`]: a Redis Cluster of three masters.
//! - [`pki`] (feature `pki`): a throwaway CA and certificates, for TLS tests.
//!
//! The binaries come from the same `target/` directory as the test (build
//! them first: `cargo build --workspace`), or from `WARREN_BIN_DIR`.

pub mod http;
#[cfg(feature = "pki")]
pub mod pki;
pub mod ports;
pub mod rabbit_cluster;
pub mod redis_cluster;
pub mod sentinel;
pub mod services;
pub mod sse;
pub mod stack;
pub mod ws;

/// A name no other test run uses, for rooms and users: tests share one
/// RabbitMQ and one Redis.
pub fn unique(prefix: &str) -> String {
    let suffix: u32 = rand::random();
    format!("{prefix}-{suffix:08x}")
}
