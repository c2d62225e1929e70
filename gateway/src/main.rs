//! `warren-gateway`: parse the command line, bind, run until a signal.

use std::net::SocketAddr;

use gateway::config::Config;
use tokio::net::{TcpListener, TcpSocket};
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
    if let Err(reason) = config.validate() {
        eprintln!("warren-gateway: {reason}");
        std::process::exit(EX_USAGE);
    }
    let telemetry = ops::telemetry::init(config.log_format, "warren-gateway");
    if let Some(service) = &config.redis_service {
        tracing::info!(%service, "Redis from VCAP_SERVICES");
    }
    let listener = listen(config.listen, config.listen_backlog)?;
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

/// Binds the public port with room for `backlog` connections not accepted yet.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
