//! Warren's gateway: the stateless pod that browsers talk to.
//!
//! It serves the pages, checks sessions in Redis (shared with Node apps in
//! the express-session format), holds the browser WebSockets and forwards
//! chat to a bridge over one gRPC stream. Any gateway serves any request: the
//! balancer's affinity only saves work, correctness never depends on it.
//!
//! - [`config`]: the command line.
//! - [`server`]: the public port: HTTP routes and the WebSocket upgrade.
//! - [`api`]: the server API for backends: post, history, presence, disconnect.
//! - [`pages`]: the embedded login and chat pages.
//! - [`session`]: sessions in Redis and signed cookies.
//! - [`redis_client`]: the one way to Redis (a node, a Sentinel-named master or a cluster; TLS) they all use.
//! - [`subscriptions`]: the one pub/sub connection: logouts, presence changes, stream posts.
//! - [`logins`]: logouts and expiries close their sockets on every gateway.
//! - [`conn`]: one client's frames acted on, whatever carries them.
//! - [`takeover`]: a connection taken from hyper once its HTTP exchange is over.
//! - [`ws`]: the WebSocket transport: a socket's reader.
//! - [`sse`]: the Server-Sent Events transport, and its relay of posted frames.
//! - [`writer`]: a socket's queue into its connection, for either transport.
//! - [`wire`]: a byte-level guard that refuses unmasked client frames.
//! - [`mailbox`]: a socket's outbound queue and close request.
//! - [`sockets`]: the registry of open sockets and streams (what drains,
//!   logouts and disconnects reach), and the drain that lets them go.
//! - [`membership`]: a socket's rooms: join, leave and close in one place.
//! - [`protocol`]: the client protocol's frames and rules, pure.
//! - [`hub`]: rooms, members, replay and gap filling.
//! - [`presence`]: who is in each room, across gateways, in Redis.
//! - [`limits`]: sizes and rates, and the state that enforces them.
//! - [`link`]: the seam between the rooms and the bridge link.
//! - [`upstream`]: the gRPC link to the bridges.
//! - [`error`]: HTTP errors and their statuses.
//! - [`metrics`]: the Prometheus metrics, named in one place.

// The connection future nests the whole request path (hyper, the session
// pool, the hub's rooms); proving it `Send` goes deeper than the default
// limit of 128.
#![recursion_limit = "256"]

pub mod api;
pub mod config;
pub mod conn;
pub mod error;
pub mod hub;
pub mod keepalive;
pub mod limits;
pub mod link;
pub mod logins;
pub mod mailbox;
pub mod membership;
pub mod metrics;
pub mod pages;
pub mod presence;
pub mod protocol;
pub mod redis_client;
pub mod server;
pub mod session;
pub mod sockets;
pub mod sse;
pub mod subscriptions;
pub mod takeover;
pub mod upstream;
pub mod wire;
pub mod writer;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::conn::Shared;
use crate::error::RunError;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::membership::Membership;
use crate::presence::Presence;
use crate::redis_client::{Redis, SharedConnection};
use crate::server::App;
use crate::session::{SessionStore, Signer};
use crate::sockets::Sockets;
use crate::sse::Relay;
use crate::subscriptions::Subscriptions;
use crate::upstream::Upstream;

/// Runs a gateway on bound listeners until `shutdown` is cancelled; then
/// stops accepting, reports not-ready, tells its sockets to reconnect in
/// batches over `drain_window` (see [`sockets`]), closes what is left with 1012
/// and waits for them, at most `shutdown_grace` more.
///
/// # Errors
/// When the Redis URL or its TLS files are unusable.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let exporter = ops::metrics::install();
    metrics::describe();
    metrics::max_sockets(config.max_sockets);
    metrics::draining(false);
    metrics::bridge_attached(false, false);
    if config.session_secret.is_none() {
        tracing::warn!(
            "NO SESSION SECRET CONFIGURED: using the public development secret; anyone can forge sessions. \
             Set --session-secret / GATEWAY_SESSION_SECRET."
        );
    }
    let redis = Redis::open(&config.redis_target(), &config.tls_files())?;
    // One connection for every command, one for the subscriptions.
    let commands = SharedConnection::new(redis.clone());
    let subscriptions = Subscriptions::new(redis);
    let relay = Arc::new(Relay::new(subscriptions.clone(), commands.clone()));
    subscriptions.add(relay.clone(), &[]);
    let sessions =
        SessionStore::new(commands.clone(), Signer::new(config.secret()), config.session_max_age, config.cookie_secure)
            .with_cookie_name(&config.session_cookie_name);

    let tracker = TaskTracker::new();
    let upstream = Upstream::new(config.bridge_urls.clone());
    let hub = Hub::new(upstream.clone(), tracker.clone());
    let upstream_token = CancellationToken::new();
    let rooms: std::sync::Weak<dyn link::Rooms> = Arc::downgrade(&hub) as _;
    let upstream_task = tokio::spawn(upstream.clone().run(rooms, upstream_token.clone()));

    let instance: Arc<str> = config.instance_name().into();
    let (presence, presence_tasks) =
        Presence::new(commands, &instance, config.presence_heartbeat, config.presence_ttl, config.presence_batch);
    // Like the admin port, presence outlives the drain: its entries stay
    // while the sockets move, and are removed when the gateway exits.
    let presence_token = CancellationToken::new();
    subscriptions.add(presence_tasks.changes(), &[presence::CHANNEL]);
    let presence_task = tokio::spawn(presence_tasks.run(presence_token.clone()));
    // Not ready until Redis has answered once: see `watch_redis`.
    let redis_up = Arc::new(AtomicBool::new(false));
    tracker.spawn(watch_redis(sessions.clone(), redis_up.clone(), shutdown.clone()));
    let readiness = {
        let (upstream, shutdown, redis_up) = (upstream.clone(), shutdown.clone(), redis_up.clone());
        move || {
            if shutdown.is_cancelled() {
                Err("draining".to_owned())
            } else if !redis_up.load(Ordering::Relaxed) {
                Err("session store (Redis) unavailable".to_owned())
            } else {
                upstream.readiness()
            }
        }
    };
    // The admin port outlives the drain: probes must see "not ready" then.
    let admin_token = CancellationToken::new();
    let readiness: Arc<dyn ops::admin::Readiness> = Arc::new(readiness);
    let admin_task = tokio::spawn(ops::admin::serve(admin, readiness.clone(), exporter, admin_token.clone()));

    let sockets = Arc::new(Sockets::default());
    subscriptions.add(logins::Announcements::new(sockets.clone()), &logins::Announcements::CHANNELS);
    // Event streams take POSTs through the relay until they are closed, and
    // presence follows changes until it ends: the subscription outlives the
    // drain too.
    let subscriptions_token = CancellationToken::new();
    let subscriptions_task = tokio::spawn({
        let (subscriptions, token) = (subscriptions.clone(), subscriptions_token.clone());
        async move { subscriptions.run(token).await }
    });
    let limits = Arc::new(Limits::new(&config));
    let every = config.session_check_interval;
    tracker.spawn(logins::sweep_ended(sessions.clone(), sockets.clone(), every, shutdown.clone()));
    tracker.spawn(forget_idle_limits(limits.clone(), shutdown.clone()));
    let (ping, idle) = (config.ping_interval, config.idle_timeout);
    tracker.spawn(keepalive::run(sockets.clone(), ping, idle, shutdown.clone()));
    let membership = Membership {
        hub,
        presence: presence.clone(),
        max_rooms: config.max_rooms_per_socket,
        joined_members_max: config.joined_members_max,
    };
    let api = api::Api {
        token: config.api_token().map_err(RunError::Config)?,
        upstream: upstream.clone(),
        presence: presence.clone(),
        sessions: sessions.clone(),
        limits: limits.clone(),
    };
    if api.token.is_some() {
        tracing::info!("server API on /api/v1");
    }
    let shared = Shared {
        membership,
        upstream,
        instance: instance.clone(),
        sockets: sockets.clone(),
        limits,
        tracker: tracker.clone(),
    };
    let readiness = server::Readiness(readiness);
    let allowed_origins = config.allowed_origins.clone();
    let app = Arc::new(App { sessions, shared, allowed_origins, api, readiness, relay });
    tracing::info!(listen = %config.listen, %instance, "gateway serving");
    let serving = tokio::spawn(server::serve(listener, app, shutdown.clone(), config.shutdown_grace));

    shutdown.cancelled().await;
    metrics::draining(true);
    presence.drain();
    sockets.drain(config.drain_window).await;
    let _ = serving.await;
    ops::shutdown::wait_tasks(&tracker, config.shutdown_grace).await;
    presence_token.cancel();
    let _ = presence_task.await;
    subscriptions_token.cancel();
    let _ = subscriptions_task.await;
    upstream_token.cancel();
    admin_token.cancel();
    let _ = admin_task.await;
    let _ = upstream_task.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Drops rate-limiter state for keys not seen lately, once a minute.
async fn forget_idle_limits(limits: Arc<Limits>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticks.tick() => limits.forget_idle(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Pings Redis every 2 s; two failures in a row mark it down (readiness
/// says so, and logins and new sockets get 503 until it answers again).
///
/// It starts down: a gateway started while Redis is away must not report
/// ready (it could only answer logins and sockets with 503), so it is ready
/// once the first ping answers, and a first ping that fails is logged at once.
async fn watch_redis(sessions: SessionStore, up: Arc<AtomicBool>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut failures = 0u32;
    metrics::redis_up(false);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let ping = tokio::time::timeout(std::time::Duration::from_secs(1), sessions.ping()).await;
        match ping {
            Ok(Ok(())) => {
                if !up.swap(true, Ordering::Relaxed) {
                    tracing::info!("session store (Redis) available");
                    metrics::redis_up(true);
                }
                failures = 0;
            }
            Ok(Err(error)) => failures = redis_failed(&up, failures, &error.to_string()),
            Err(_) => failures = redis_failed(&up, failures, "no answer within 1 s"),
        }
    }
}

fn redis_failed(up: &AtomicBool, failures: u32, reason: &str) -> u32 {
    let failures = failures + 1;
    if failures == 1 && !up.load(Ordering::Relaxed) {
        // Down since start-up (once up, a success resets the count).
        tracing::warn!(%reason, "session store (Redis) unavailable at start-up: not ready until it answers");
    } else if failures >= 2 && up.swap(false, Ordering::Relaxed) {
        tracing::warn!(%reason, "session store (Redis) unavailable: not ready");
        metrics::redis_up(false);
    }
    failures
}
