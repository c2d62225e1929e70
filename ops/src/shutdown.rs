//! The one shutdown path: a signal cancels a token; everything that runs holds
//! a child of it and is tracked, so `main` can wait for it with a deadline.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: drain, then exit (Kubernetes, `kill`).
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
}

/// Waits for SIGTERM or SIGINT and says which came.
///
/// # Panics
/// When the signal handlers cannot be installed, which only happens outside a
/// Tokio runtime or when the OS refuses: there is no way to run safely then.
pub async fn signal_received() -> Stop {
    #[allow(clippy::expect_used)]
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    #[allow(clippy::expect_used)]
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let stop = tokio::select! {
        _ = term.recv() => Stop::Terminate,
        _ = int.recv() => Stop::Interrupt,
    };
    tracing::info!(?stop, "shutdown signal received");
    stop
}

/// SIGTERM cancels `token` (drain, then exit); SIGINT, or a second signal,
/// also cancels `force` (exit now, skipping the drain).
pub fn cancel_on_signal(tracker: &TaskTracker, token: CancellationToken, force: CancellationToken) {
    tracker.spawn(async move {
        tokio::select! {
            stop = signal_received() => {
                token.cancel();
                if stop == Stop::Interrupt {
                    force.cancel();
                    return;
                }
            }
            () = token.cancelled() => {}
        }
        tokio::select! {
            _ = signal_received() => {
                tracing::warn!("second signal: exiting without waiting for the drain");
                force.cancel();
            }
            () = force.cancelled() => {}
        }
    });
}

/// Waits for every tracked task, at most `grace`; says whether all finished.
pub async fn wait_tasks(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
        true
    } else {
        tracing::warn!(?grace, remaining = tracker.len(), "tasks still running at the shutdown deadline");
        false
    }
}
