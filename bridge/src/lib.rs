//! Warren's bridge: the worker between gateways and RabbitMQ.
//!
//! Gateways attach over gRPC (`proto::warren::v1`); the bridge publishes their
//! messages, with publisher confirms, to a fixed set of RabbitMQ partition
//! streams that hold every room (`docs/design/rooms.md`), reads every
//! partition, and streams each subscribed room back to each gateway. Several
//! bridges run at once and share nothing but the broker, so any may die.
//!
//! - [`config`]: the command line.
//! - [`amqp`]: the broker connection, kept alive across broker restarts.
//! - [`room`]: how rooms map onto partitions, and their messages.
//! - [`retention`]: what partitions keep, declared so that it can change.
//! - [`log`]: one room's index: previous ids, recent messages, repeats.
//! - [`partition`]: the partition readers, their indexes and routes.
//! - [`publisher`]: confirmed publishing, ids and de-duplication by cid.
//! - [`history`]: history reads, from the index or by a shared scan.
//! - [`grpc`]: the service gateways attach to.
//! - [`error`]: the error types and their translation for gateways.
//! - [`metrics`]: the Prometheus metrics, named in one place.

pub mod amqp;
pub mod config;
pub mod error;
pub mod grpc;
pub mod history;
pub mod log;
pub mod metrics;
pub mod partition;
pub mod publisher;
pub mod retention;
pub mod room;

use std::sync::Arc;
use std::time::Duration;

use proto::warren::v1::bridge_server::BridgeServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::{Broker, Endpoint};
use crate::config::Config;
use crate::error::RunError;
use crate::grpc::BridgeService;
use crate::history::History;
use crate::partition::Partitions;
use crate::publisher::Publisher;
use crate::retention::Policy;
use crate::room::Layout;

/// Runs the bridge on bound listeners until `shutdown` is cancelled, then
/// tells the gateways to move, lets publishes in flight finish (at most
/// `shutdown_grace`) and closes the broker connection.
///
/// # Errors
/// When the broker's TLS files are unusable, or the gRPC server fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let retention = config.retention();
    let urls = config.amqp_urls();
    let policy = Policy::new(retention.clone(), &urls[0], config.management_url.as_ref());
    let exporter = ops::metrics::install();
    metrics::describe();
    metrics::amqp_connected(false, false);
    let max_age = retention.max_age.duration();
    let broker = Broker::new(Endpoint::new(urls, &config.tls_files())?, retention);
    // The broker outlives the service so that publishes in flight can finish.
    let broker_token = CancellationToken::new();
    let broker_task = tokio::spawn({
        let (broker, token) = (broker.clone(), broker_token.clone());
        async move { broker.run(token).await }
    });

    let tracker = TaskTracker::new();
    // Partition readers live as long as the broker connection, so that
    // publishes in flight at shutdown still learn their ids.
    let readers = TaskTracker::new();
    let partitions = Partitions::new(Layout::new(config.partitions));
    partitions.run(&broker, max_age, &readers, &broker_token);
    readers.spawn({
        let token = broker_token.clone();
        async move { policy.apply(&token).await }
    });
    let publisher = Arc::new(Publisher::new(broker.clone(), partitions.clone(), config.publish_timeout));
    let history = Arc::new(History::new(broker.clone(), partitions.clone()));
    let service = BridgeService::new(partitions.clone(), publisher, history, tracker.clone(), shutdown.clone());
    let readiness = {
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        move || {
            if shutdown.is_cancelled() {
                return Err("shutting down".to_owned());
            }
            if !broker.is_connected() {
                return Err("no broker connection".to_owned());
            }
            if let Some(reason) = broker.blocked() {
                return Err(format!("the broker blocks publishing: {reason}"));
            }
            if let Some(error) = partitions.trouble() {
                return Err(error.to_string());
            }
            match partitions.caught_up() {
                (done, all) if done < all => Err(format!("reading partitions: {done} of {all} caught up")),
                _ => Ok(()),
            }
        }
    };
    // The admin port outlives the drain: probes must see "not ready" then.
    let admin_token = CancellationToken::new();
    let admin_task = tokio::spawn(ops::admin::serve(admin, Arc::new(readiness), exporter, admin_token.clone()));
    tracing::info!(listen = %config.listen, instance = %config.instance, "bridge serving");

    let served = tonic::transport::Server::builder()
        .add_service(BridgeServer::new(service))
        // No Nagle: small frames must not wait for the peer's delayed ACK.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    let mut served = std::pin::pin!(served);
    let mut deadline = tokio::time::Instant::now() + config.shutdown_grace;
    let result = tokio::select! {
        result = served.as_mut() => result,
        // After the signal the server returns once its streams ended;
        // gateways end them when they see `Draining`, and the grace period
        // bounds the wait.
        () = shutdown.cancelled() => {
            deadline = tokio::time::Instant::now() + config.shutdown_grace;
            tokio::time::timeout_at(deadline, served).await.unwrap_or(Ok(()))
        }
    }
    .map_err(RunError::from);
    // Gateway streams, room forwarders and publishes share one deadline.
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
        tracing::warn!(remaining = tracker.len(), "tasks still running at the shutdown deadline");
    }
    broker_token.cancel();
    readers.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), readers.wait()).await;
    admin_token.cancel();
    let _ = admin_task.await;
    let _ = broker_task.await;
    tracing::info!("bridge stopped");
    result
}
