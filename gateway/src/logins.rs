//! Ending logins on every gateway: a logout is announced on a Redis channel
//! and each gateway closes the sockets opened under that login at once; a
//! periodic sweep catches logins that expired (or whose announcement was
//! missed while Redis was away) and closes theirs too. A disconnect by the
//! server API is announced the same way, by user name.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::mailbox::CloseReason;
use crate::session::{DISCONNECT_CHANNEL, LOGOUT_CHANNEL, LoginId, SessionStore};
use crate::sockets::Sockets;
use crate::subscriptions::Listener;

/// Closes sockets when a logout or a server-API disconnect is announced.
#[derive(Debug)]
pub struct Announcements {
    sockets: Arc<Sockets>,
}

impl Announcements {
    /// The channels the announcements come on.
    pub const CHANNELS: [&str; 2] = [LOGOUT_CHANNEL, DISCONNECT_CHANNEL];

    /// Announcements that close sockets of `sockets`.
    pub fn new(sockets: Arc<Sockets>) -> Arc<Self> {
        Arc::new(Self { sockets })
    }
}

impl Listener for Announcements {
    fn hears(&self, channel: &str) -> bool {
        Self::CHANNELS.contains(&channel)
    }

    fn heard(&self, channel: &str, payload: String) {
        if channel == DISCONNECT_CHANNEL {
            let closed = self.sockets.close_user(&payload, CloseReason::DISCONNECTED);
            tracing::info!(sockets = closed, user = payload, "disconnect: closed the user's sockets");
            return;
        }
        let closed = self.sockets.close_login(&LoginId::from_announcement(payload), CloseReason::SESSION_ENDED);
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
