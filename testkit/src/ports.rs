//! Free loopback ports for the processes a test starts.
//!
//! A port the kernel hands out for `bind(0)` comes from the ephemeral range,
//! the same range it takes the local ports of outgoing connections from: in
//! the window between our probe and the server's own `bind`, any client
//! connecting anywhere (a gateway to Redis, a test to a gateway) may take
//! it, and the server fails with "address in use". So the ports here come
//! from below that range, where only listeners that chose their port live,
//! and at random, so that test binaries running at once rarely pick the
//! same one.

use std::net::{SocketAddr, TcpListener};
use std::ops::Range;

/// Ports below this one belong to well-known services.
const LOWEST: u16 = 10_000;
/// How many random ports to try before taking whatever the kernel gives.
const ATTEMPTS: usize = 64;

/// A free port on 127.0.0.1, outside the ephemeral range.
///
/// # Errors
/// When no port can be bound at all.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_addr()?.port())
}

/// A free address on 127.0.0.1, as [`free_port`].
///
/// # Errors
/// When no port can be bound at all.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let range = below_ephemeral();
    if !range.is_empty() {
        for _ in 0..ATTEMPTS {
            let port = rand::random_range(range.clone());
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                return Ok(listener.local_addr()?);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The ports between the well-known ones and the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768 by default on Linux).
fn below_ephemeral() -> Range<u16> {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    LOWEST..first_ephemeral.max(LOWEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range() -> anyhow::Result<()> {
        let range = below_ephemeral();
        assert!(!range.is_empty(), "this machine's ephemeral range starts at {}", range.end);
        for _ in 0..20 {
            let port = free_port()?;
            assert!(range.contains(&port), "{port} is not in {range:?}");
        }
        Ok(())
    }
}
