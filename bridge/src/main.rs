//! `warren-bridge`: parse the command line, bind, run until a signal.

use bridge::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit status for a bad command line or environment (BSD `EX_USAGE`).
const EX_USAGE: i32 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let vcap_services = std::env::var(platform::VCAP_SERVICES).ok();
    let config = match Config::try_parse_with_platform(std::env::args_os(), vcap_services.as_deref()) {
        Ok(config) => config,
        Err(error) if error.use_stderr() => {
            let _ = error.print();
            std::process::exit(EX_USAGE);
        }
        Err(error) => error.exit(),
    };
    let telemetry = ops::telemetry::init(config.log_format, "warren-bridge");
    if let Some(service) = &config.amqp_service {
        tracing::info!(%service, "RabbitMQ from VCAP_SERVICES");
    }
    let listener = TcpListener::bind(config.listen).await?;
    let admin = TcpListener::bind(config.admin_listen).await?;

    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let signals = TaskTracker::new();
    ops::shutdown::cancel_on_signal(&signals, shutdown.clone(), force.clone());
    tokio::select! {
        result = bridge::run(config, listener, admin, shutdown.clone()) => result?,
        () = force.cancelled() => {}
    }
    force.cancel();
    drop(telemetry);
    Ok(())
}
