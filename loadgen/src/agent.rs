//! One virtual user, following the client rules of `docs/protocol.md`:
//!
//! - before every reconnect, `GET /session` (it refreshes the cookie, which
//!   moves the balancer's affinity to a live gateway); only a `401` there
//!   means logging in again;
//! - on a new socket, `join` with `since` = the last id seen, then resend
//!   every unacked send with its `cid`;
//! - `reconnect` frames are obeyed after their `after_ms`; other failures
//!   back off exponentially with full jitter (0.5 s to 20 s), without end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ops::backoff::Backoff;
use rand::Rng;
use serde_json::{Value, json};
use testkit::http::Client;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, Received};
use crate::socket::{Event, Refused, Socket, Transport};

/// How often a user sends an application `ping` (answered by `pong`).
const PING_EVERY: Duration = Duration::from_secs(5);
/// A socket that sent nothing (not even a `pong`) for this long is dead.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// An unacked send is sent again (same cid) after this long.
const RESEND_AFTER: Duration = Duration::from_secs(3);
/// How long to wait for `welcome` and `joined` on a new socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What drives a run's users.
#[derive(Debug, Clone)]
pub struct Run {
    /// The balancer (or a gateway).
    pub front: SocketAddr,
    /// Acked messages of every room.
    pub ledger: Arc<Ledger>,
    /// Cancelled when users should stop sending new messages.
    pub stop_sending: CancellationToken,
    /// Cancelled when users should disconnect and report.
    pub stop: CancellationToken,
    /// What the users are doing now, for runs that wait on them.
    pub live: Arc<Live>,
}

/// Counts kept up to date while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// Users whose socket is open and joined right now.
    pub joined: AtomicUsize,
    /// Reconnects after which the user has received a message again.
    pub receiving_again: AtomicUsize,
    /// Sockets lost (or left on a notice) by users who go on.
    pub lost: AtomicUsize,
}

impl Live {
    /// Users whose socket is open and joined right now.
    pub fn joined(&self) -> usize {
        self.joined.load(Ordering::Relaxed)
    }

    /// Reconnects after which the user has received a message again.
    pub fn receiving_again(&self) -> usize {
        self.receiving_again.load(Ordering::Relaxed)
    }

    /// Sockets lost (or left on a notice) by users who go on: each is a
    /// reconnect to come, then a first message on it.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::Relaxed)
    }
}

/// One reconnect, as it happened.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    /// When the old socket was lost (or left on a notice).
    pub lost_at: Instant,
    /// When the new socket was joined again.
    pub joined_at: Instant,
    /// The first message received on the new socket.
    pub first_message_at: Option<Instant>,
}

/// One user's settings.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Login name.
    pub user: String,
    /// The room it joins and talks in.
    pub room: String,
    /// Mean time between its sends.
    pub send_every: Duration,
    /// A WebSocket, or an event stream.
    pub transport: Transport,
}

/// What one user measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Its room.
    pub room: String,
    /// What it received.
    pub received: Received,
    /// Times `/session` said 401 and it had to log in again.
    pub relogins: u64,
    /// Sockets it had to replace.
    pub reconnects: u64,
    /// For each replacement: from losing the socket to being joined again.
    pub reconnect_times: Vec<Duration>,
    /// Each replacement's moments.
    pub resumes: Vec<Resume>,
    /// Sends still unacked at the end.
    pub unacked: usize,
}

/// How a connection ended.
enum Ended {
    /// The server asked us to reconnect after this delay.
    Notice(Duration),
    /// The socket broke or closed.
    Lost,
    /// The run is over.
    Stop,
}

struct Pending {
    text: String,
    sent_at: Instant,
}

struct Agent {
    run: Run,
    profile: Profile,
    http: Client,
    report: Report,
    unacked: BTreeMap<String, Pending>,
    sent: u64,
    /// When the next new message is due; kept across reconnects, as a
    /// person keeps typing while the page reconnects.
    next_send: Option<Instant>,
    backoff: Backoff,
}

/// Runs one user until `run.stop`, and reports.
pub async fn run(run: Run, profile: Profile) -> Report {
    let report = Report { room: profile.room.clone(), ..Report::default() };
    let mut agent = Agent {
        http: Client::new(run.front),
        run,
        profile,
        report,
        unacked: BTreeMap::new(),
        sent: 0,
        next_send: None,
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(20)),
    };
    agent.live().await;
    agent.report.unacked = agent.unacked.len();
    agent.report
}

impl Agent {
    async fn live(&mut self) {
        if !self.login().await {
            return;
        }
        let mut lost_at: Option<Instant> = None;
        while !self.run.stop.is_cancelled() {
            if lost_at.is_some() && !self.refresh_session().await {
                continue;
            }
            let Some(socket) = self.open().await else { continue };
            if let Some(at) = lost_at.take() {
                self.report.reconnects += 1;
                self.report.reconnect_times.push(at.elapsed());
                self.report.resumes.push(Resume { lost_at: at, joined_at: Instant::now(), first_message_at: None });
            }
            self.backoff.reset();
            self.run.live.joined.fetch_add(1, Ordering::Relaxed);
            let ended = self.converse(socket).await;
            self.run.live.joined.fetch_sub(1, Ordering::Relaxed);
            lost_at = Some(Instant::now());
            if !matches!(ended, Ended::Stop) {
                self.run.live.lost.fetch_add(1, Ordering::Relaxed);
            }
            match ended {
                Ended::Stop => return,
                Ended::Notice(delay) => self.pause(delay).await,
                Ended::Lost => {
                    let delay = self.backoff.next_delay();
                    self.pause(delay).await;
                }
            }
        }
    }

    async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.run.stop.cancelled() => {}
        }
    }

    /// Logs in, retrying with backoff; false when the run ended first.
    async fn login(&mut self) -> bool {
        while !self.run.stop.is_cancelled() {
            match self.http.login(&self.profile.user).await {
                Ok(_) => return true,
                Err(error) => {
                    tracing::debug!(user = %self.profile.user, %error, "login failed");
                    let delay = self.backoff.next_delay();
                    self.pause(delay).await;
                }
            }
        }
        false
    }

    /// `GET /session` before reconnecting: true to go on and open a socket.
    async fn refresh_session(&mut self) -> bool {
        match self.http.get("/session").await {
            Ok(reply) if reply.status == http::StatusCode::OK => true,
            Ok(reply) if reply.status == http::StatusCode::UNAUTHORIZED => {
                self.report.relogins += 1;
                tracing::warn!(user = %self.profile.user, "session lost: logging in again");
                self.login().await
            }
            _ => {
                let delay = self.backoff.next_delay();
                self.pause(delay).await;
                false
            }
        }
    }

    /// Opens a socket, waits for `welcome`, joins with `since` and resends
    /// what is unacked.
    async fn open(&mut self) -> Option<Socket> {
        let cookie = self.http.cookie.clone().unwrap_or_default();
        let mut socket = match Socket::connect_over(self.run.front, &cookie, self.profile.transport).await {
            Ok(socket) => socket,
            Err(refused) => {
                if matches!(refused, Refused::Status(401)) {
                    // Handled by the /session call that precedes the next try.
                    tracing::debug!(user = %self.profile.user, "socket refused: 401");
                }
                let delay = self.backoff.next_delay();
                self.pause(delay).await;
                return None;
            }
        };
        // `since` is the last id seen; on the first join 0, which asks for
        // everything the room holds: every acked message of the run is then
        // expected, including those sent before this user's join took effect.
        let since = self.report.received.last_id().unwrap_or(0);
        let join = json!({ "type": "join", "room": self.profile.room, "since": since });
        let ready = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            wait_for(&mut socket, "welcome").await?;
            socket.send(&join).then_some(())?;
            wait_for(&mut socket, "joined").await
        })
        .await;
        if !matches!(ready, Ok(Some(_))) {
            socket.close();
            let delay = self.backoff.next_delay();
            self.pause(delay).await;
            return None;
        }
        for (cid, pending) in &mut self.unacked {
            pending.sent_at = Instant::now();
            socket.send(&json!({ "type": "send", "room": self.profile.room, "text": pending.text, "cid": cid }));
        }
        Some(socket)
    }

    /// Chats on one socket until it ends.
    async fn converse(&mut self, mut socket: Socket) -> Ended {
        let mut next_send = self.next_send.unwrap_or_else(|| Instant::now() + self.jittered_interval());
        self.next_send = Some(next_send);
        let mut resend = tokio::time::interval(Duration::from_secs(1));
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut last_frame = Instant::now();
        loop {
            let sending = !self.run.stop_sending.is_cancelled();
            tokio::select! {
                event = socket.events.recv() => {
                    last_frame = Instant::now();
                    match event {
                        Some(Event::Json(frame)) => if let Some(ended) = self.on_frame(&socket, &frame) {
                            socket.close();
                            return ended;
                        },
                        Some(Event::Closed(_)) | None => return Ended::Lost,
                    }
                }
                () = tokio::time::sleep_until(next_send.into()), if sending => {
                    self.send_new(&socket);
                    next_send = Instant::now() + self.jittered_interval();
                    self.next_send = Some(next_send);
                }
                _ = ping.tick() => {
                    socket.send(&json!({ "type": "ping" }));
                }
                _ = resend.tick() => {
                    if last_frame.elapsed() > DEAD_AFTER {
                        socket.close();
                        return Ended::Lost;
                    }
                    self.resend_stale(&socket);
                }
                () = self.run.stop_sending.cancelled(), if sending => self.report.received.pause_gaps(),
                () = self.run.stop.cancelled() => {
                    socket.close();
                    return Ended::Stop;
                }
            }
        }
    }

    fn on_frame(&mut self, socket: &Socket, frame: &Value) -> Option<Ended> {
        match frame["type"].as_str() {
            Some("message") => {
                let (Some(id), Some(user), Some(cid)) =
                    (frame["id"].as_u64(), frame["user"].as_str(), frame["cid"].as_str())
                else {
                    return None;
                };
                let sending = !self.run.stop_sending.is_cancelled();
                self.report.received.record(id, user, cid, sending);
                if let Some(resume) = self.report.resumes.last_mut()
                    && resume.first_message_at.is_none()
                {
                    resume.first_message_at = Some(Instant::now());
                    self.run.live.receiving_again.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("ack") => {
                if let (Some(cid), Some(id)) = (frame["cid"].as_str(), frame["id"].as_u64())
                    && self.unacked.remove(cid).is_some()
                {
                    self.run.ledger.record_ack(&self.profile.room, id, cid);
                }
            }
            Some("error") => {
                // Retryable errors leave the send unacked: it goes again later,
                // after `retry_after_ms` when the gateway names a wait (as the
                // page does).
                tracing::debug!(user = %self.profile.user, %frame, "error frame");
                let retryable = matches!(frame["code"].as_str(), Some("unavailable" | "timeout" | "rate_limited"));
                let cid = frame["cid"].as_str()?;
                if !retryable {
                    tracing::warn!(user = %self.profile.user, %frame, "send refused for good");
                    self.unacked.remove(cid);
                } else if let (Some(wait), Some(pending)) =
                    (frame["retry_after_ms"].as_u64(), self.unacked.get_mut(cid))
                {
                    // Due again `wait` from now: resends go RESEND_AFTER after `sent_at`.
                    let due = Instant::now() + Duration::from_millis(wait);
                    pending.sent_at = due.checked_sub(RESEND_AFTER).unwrap_or(pending.sent_at);
                }
            }
            Some("reconnect") => {
                let after = Duration::from_millis(frame["after_ms"].as_u64().unwrap_or_default());
                return Some(Ended::Notice(after));
            }
            _ => {}
        }
        let _ = socket;
        None
    }

    fn send_new(&mut self, socket: &Socket) {
        self.sent += 1;
        let cid = format!("{}-{}", self.profile.user, self.sent);
        let text = format!("{} #{}", self.profile.user, self.sent);
        socket.send(&json!({ "type": "send", "room": self.profile.room, "text": text, "cid": cid }));
        self.unacked.insert(cid, Pending { text, sent_at: Instant::now() });
    }

    fn resend_stale(&mut self, socket: &Socket) {
        for (cid, pending) in &mut self.unacked {
            if pending.sent_at.elapsed() >= RESEND_AFTER {
                pending.sent_at = Instant::now();
                socket.send(&json!({ "type": "send", "room": self.profile.room, "text": pending.text, "cid": cid }));
            }
        }
    }

    fn jittered_interval(&self) -> Duration {
        let mean = self.profile.send_every.as_secs_f64();
        Duration::from_secs_f64(mean * rand::rng().random_range(0.5..1.5))
    }
}

async fn wait_for(socket: &mut Socket, kind: &str) -> Option<()> {
    loop {
        match socket.events.recv().await? {
            Event::Json(frame) if frame["type"] == kind => return Some(()),
            Event::Json(_) => {}
            Event::Closed(_) => return None,
        }
    }
}
