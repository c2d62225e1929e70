//! Dead and idle peers: every socket is pinged at an interval, and one that
//! sent nothing (not even a pong) for the idle timeout is closed.
//!
//! One task does it for the whole gateway, rather than a timer per socket:
//! an idle socket then costs no timer and no wake-up of its own, which is
//! most of what tens of thousands of idle sockets would otherwise cost.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::mailbox::{CloseReason, Outbound};
use crate::sockets::Sockets;

/// Pings every socket each `every`, and closes those silent for `idle`,
/// until `shutdown`.
pub async fn run(sockets: Arc<Sockets>, every: Duration, idle: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (mut pinged, mut closed) = (0usize, 0usize);
        for mailbox in sockets.snapshot() {
            if mailbox.silent_for() >= idle {
                mailbox.close(CloseReason::IDLE);
                closed += 1;
            } else if mailbox.push(Outbound::Ping) {
                pinged += 1;
            }
        }
        tracing::debug!(pinged, closed, "keep-alive round");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Mailbox;
    use crate::session::LoginId;

    #[tokio::test(start_paused = true)]
    async fn pings_the_live_and_closes_the_silent() {
        let sockets = Arc::new(Sockets::default());
        let (live, silent) = (Mailbox::new(8, 1024), Mailbox::new(8, 1024));
        sockets.insert(1, live.clone(), LoginId::from_announcement("a".into()), "a");
        sockets.insert(2, silent.clone(), LoginId::from_announcement("b".into()), "b");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(sockets, Duration::from_secs(1), Duration::from_millis(2500), shutdown.clone()));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            live.heard();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(silent.closed().await, CloseReason::IDLE);
        assert!(!live.is_closing(), "a socket that answers stays open");
        assert!(matches!(live.next().await, Some(Outbound::Ping)), "pinged");
        shutdown.cancel();
        task.await.expect("keep-alive task");
    }
}
