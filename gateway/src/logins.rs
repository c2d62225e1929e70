//! Ending logins on every gateway: a logout is announced on a Redis channel
//! and each gateway closes the sockets opened under that login at once; a
//! periodic sweep catches logins that expired (or whose announcement was
//! missed while Redis was away) and closes theirs too. A disconnect by the
//! server API is announced the same way, by user name.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use ops::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::mailbox::CloseReason;
use crate::redis_client::Redis;
use crate::session::{DISCONNECT_CHANNEL, LOGOUT_CHANNEL, LoginId, SessionStore};
use crate::sockets::Sockets;

/// Listens for logout announcements until `shutdown`, reconnecting to Redis
/// with backoff when the subscription breaks.
pub async fn follow_logouts(redis: Redis, sockets: Arc<Sockets>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        match listen(&redis, &sockets, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, "logout subscription lost; resubscribing"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn listen(
    redis: &Redis,
    sockets: &Sockets,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), redis::RedisError> {
    let mut pubsub = redis.subscriber().await?;
    pubsub.subscribe(&[LOGOUT_CHANNEL, DISCONNECT_CHANNEL]).await?;
    backoff.reset();
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            () = shutdown.cancelled() => return Ok(()),
        };
        let Some(message) = message else {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription ended")));
        };
        let Ok(payload) = message.get_payload::<String>() else { continue };
        if message.get_channel_name() == DISCONNECT_CHANNEL {
            let closed = sockets.close_user(&payload, CloseReason::DISCONNECTED);
            tracing::info!(sockets = closed, user = payload, "disconnect: closed the user's sockets");
            continue;
        }
        let closed = sockets.close_login(&LoginId::from_announcement(payload), CloseReason::SESSION_ENDED);
        if closed > 0 {
            tracing::info!(sockets = closed, "logout: closed the login's sockets");
        }
    }
}

/// Every `every`, closes the sockets of logins that no longer exist.
pub async fn sweep_ended(sessions: SessionStore, sockets: Arc<Sockets>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let logins = sockets.logins();
        // Redis down: keep every socket; the next sweep decides.
        let Ok(alive) = sessions.logins_alive(&logins).await else { continue };
        for (login, alive) in logins.iter().zip(alive) {
            if !alive {
                let closed = sockets.close_login(login, CloseReason::SESSION_ENDED);
                tracing::info!(sockets = closed, "session ended: closed the login's sockets");
            }
        }
    }
}
