//! The registry of open sockets (event streams included): what a drain, a
//! logout, an expired session or a disconnect by the server API reaches.
//!
//! Draining: how a gateway lets go of its sockets when it is asked to stop.
//!
//! Closing every socket at once would send every client to the other
//! gateways in the same instant (a reconnect storm, with its Redis lookups
//! and replays). Instead, like Phoenix's drainer, sockets are told in
//! batches spread evenly over the drain window: each gets
//! `{"type":"reconnect","after_ms":N}` with a small jitter N, keeps
//! receiving until then, and is closed with 1012 (service restart) if it has
//! not left by itself shortly after. Whatever is still open at the end of
//! the window is closed too. See `docs/drain.md`.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::mailbox::{CloseReason, Mailbox, SocketId};
use crate::protocol::ServerFrame;
use crate::session::LoginId;

/// The most batches a drain window is cut into (one every 100 ms for 10 s).
const MAX_BATCHES: u32 = 100;
/// The most jitter a `reconnect` notice asks for.
const MAX_JITTER: Duration = Duration::from_secs(1);
/// How long after its notice a socket may stay before the gateway closes it.
const NOTICE_GRACE: Duration = Duration::from_secs(2);

/// Every open socket of this gateway, with the login it was opened under
/// and its user, so that a drain, a logout, an expired session or a
/// disconnect by the server API can reach them.
#[derive(Debug, Default)]
pub struct Sockets {
    open: Mutex<HashMap<SocketId, Open>>,
}

/// One open socket, as the registry knows it.
#[derive(Debug)]
struct Open {
    mailbox: Mailbox,
    login: LoginId,
    user: Box<str>,
}

impl Sockets {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketId, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an open socket.
    pub fn insert(&self, id: SocketId, mailbox: Mailbox, login: LoginId, user: &str) {
        self.lock().insert(id, Open { mailbox, login, user: user.into() });
    }

    /// The logins that have sockets here, each once.
    pub fn logins(&self) -> Vec<LoginId> {
        let logins: HashSet<LoginId> = self.lock().values().map(|open| open.login.clone()).collect();
        logins.into_iter().collect()
    }

    /// Closes every socket opened under `login`; returns how many.
    pub fn close_login(&self, login: &LoginId, reason: CloseReason) -> usize {
        self.close_where(|open| open.login == *login, reason)
    }

    /// Closes every socket of `user`; returns how many.
    pub fn close_user(&self, user: &str, reason: CloseReason) -> usize {
        self.close_where(|open| &*open.user == user, reason)
    }

    fn close_where(&self, matches: impl Fn(&Open) -> bool, reason: CloseReason) -> usize {
        let open = self.lock();
        let mut closed = 0;
        for socket in open.values().filter(|socket| matches(socket)) {
            socket.mailbox.close(reason);
            closed += 1;
        }
        closed
    }

    /// Forgets a closed socket.
    pub fn remove(&self, id: SocketId) {
        self.lock().remove(&id);
    }

    /// How many sockets are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no socket is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every open socket's mailbox, at this moment.
    pub fn snapshot(&self) -> Vec<Mailbox> {
        self.lock().values().map(|open| open.mailbox.clone()).collect()
    }

    /// Tells every socket to reconnect, in batches spread over `window`, and
    /// returns once the last batch was told and the window has passed; any
    /// socket still open then is closed.
    pub async fn drain(&self, window: Duration) {
        let sockets = self.snapshot();
        let start = Instant::now();
        tracing::info!(sockets = sockets.len(), ?window, "draining");
        let batches = u32::try_from(sockets.len()).unwrap_or(u32::MAX).clamp(1, MAX_BATCHES);
        let pause = window / batches;
        let jitter_cap = pause.clamp(Duration::from_millis(100), MAX_JITTER);
        let per_batch = sockets.len().div_ceil(batches as usize).max(1);
        for (index, batch) in sockets.chunks(per_batch).enumerate() {
            tokio::time::sleep_until(start + pause * u32::try_from(index).unwrap_or(u32::MAX)).await;
            for mailbox in batch {
                notify(mailbox, jitter_cap);
            }
        }
        tokio::time::sleep_until(start + window).await;
        for mailbox in self.snapshot() {
            mailbox.close(CloseReason::RESTART);
        }
    }
}

/// Sends one socket its notice, and closes it if it is still there after the
/// jitter and a grace period.
fn notify(mailbox: &Mailbox, jitter_cap: Duration) {
    let cap = u64::try_from(jitter_cap.as_millis()).unwrap_or(1000);
    let after_ms = rand::rng().random_range(0..=cap);
    let notice = ServerFrame::Reconnect { after_ms }.encode();
    if !mailbox.offer_or_close(notice, CloseReason::RESTART) {
        return;
    }
    crate::metrics::frame_out("reconnect");
    let mailbox = mailbox.clone();
    let deadline = Duration::from_millis(after_ms) + NOTICE_GRACE;
    tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        mailbox.close(CloseReason::RESTART);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Outbound;

    fn socket(sockets: &Sockets, id: SocketId) -> Mailbox {
        let mailbox = Mailbox::new(8, 1024);
        sockets.insert(id, mailbox.clone(), LoginId::from_announcement(format!("login-{id}")), "user");
        mailbox
    }

    #[tokio::test(start_paused = true)]
    async fn notices_are_spread_over_the_window_then_everyone_is_closed() {
        let sockets = Sockets::default();
        let window = Duration::from_secs(10);
        let start = Instant::now();
        let mut watchers = Vec::new();
        let mut closers = Vec::new();
        for id in 0..10 {
            let mailbox = socket(&sockets, id);
            closers.push(mailbox.clone());
            watchers.push(tokio::spawn(async move {
                let Some(Outbound::Text(frame)) = mailbox.next().await else { panic!("expected a notice") };
                let notice: serde_json::Value = serde_json::from_slice(&frame).expect("json");
                assert_eq!(notice["type"], "reconnect");
                assert!(notice["after_ms"].as_u64().expect("after_ms") <= 1000);
                start.elapsed()
            }));
        }
        sockets.drain(window).await;
        assert!(start.elapsed() >= window, "the drain lasts the window");
        let mut told_at = Vec::new();
        for watcher in watchers {
            told_at.push(watcher.await.expect("notice received"));
        }
        told_at.sort();
        assert!(told_at[0] < Duration::from_secs(1), "the first batch goes at once");
        assert!(told_at[9] >= Duration::from_secs(8), "the last batch near the end: {told_at:?}");
        for closer in &closers {
            assert_eq!(closer.closed().await, CloseReason::RESTART);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_too_full_for_its_notice_is_closed_as_restarting_not_slow() {
        let sockets = Sockets::default();
        let full = socket(&sockets, 1);
        for _ in 0..8 {
            assert!(full.offer(bytes::Bytes::from_static(b"{}")), "room for 8 frames");
        }
        notify(&full, Duration::from_millis(100));
        assert_eq!(full.closed().await, CloseReason::RESTART);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disconnect_closes_only_that_users_sockets() {
        let sockets = Sockets::default();
        let (ann, bob) = (Mailbox::new(8, 1024), Mailbox::new(8, 1024));
        sockets.insert(1, ann.clone(), LoginId::from_announcement("l1".into()), "ann");
        sockets.insert(2, bob.clone(), LoginId::from_announcement("l2".into()), "bob");
        assert_eq!(sockets.close_user("ann", CloseReason::DISCONNECTED), 1);
        assert_eq!(ann.closed().await, CloseReason::DISCONNECTED);
        assert!(!bob.is_closing(), "another user's socket stays");
    }
}
