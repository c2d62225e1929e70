//! The progress line: once a second on stderr, until the run ends.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Prints `[  Ns] label: <line()>` every second until `stop` is cancelled.
pub fn spawn<F>(label: &'static str, stop: CancellationToken, line: F) -> JoinHandle<()>
where
    F: Fn() -> String + Send + 'static,
{
    tokio::spawn(async move {
        let started = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => eprintln!("[{:>4}s] {label}: {}", started.elapsed().as_secs(), line()),
                () = stop.cancelled() => return,
            }
        }
    })
}

/// Says something about the run on stderr, between progress lines.
pub fn note(what: &str) {
    eprintln!("warren-load: {what}");
}
