//! `warren-gateway`: parse the command line, bind, run until a signal.

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit status for a bad command line or environment (BSD `EX_USAGE`).
const EX_USAGE: i32 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match gateway::config::Config::try_parse() {
        Ok(config) => config,
        Err(error) if error.use_stderr() => {
            let _ = error.print();
            std::process::exit(EX_USAGE);
        }
        Err(error) => error.exit(),
    };
    if let Err(reason) = config.validate() {
        eprintln!("warren-gateway: {reason}");
        std::process::exit(EX_USAGE);
    }
    let telemetry = ops::telemetry::init(config.log_format, "warren-gateway");
    let listener = TcpListener::bind(config.listen).await?;
    let admin = TcpListener::bind(config.admin_listen).await?;

    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let signals = TaskTracker::new();
    ops::shutdown::cancel_on_signal(&signals, shutdown.clone(), force.clone());
    tokio::select! {
        result = gateway::run(config, listener, admin, shutdown.clone()) => result?,
        () = force.cancelled() => {}
    }
    force.cancel();
    drop(telemetry);
    Ok(())
}
