//! The gateway's limits, in one place: how many sockets, how fast, how big.
//! A limit that is hit gets a clear answer (a status with a reason at the
//! handshake, an `error` frame or a close code on a socket), never silence.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;

/// Consecutive rate-limited sends after which a socket is closed (1008).
pub const ABUSE_STRIKES: u32 = 50;

/// `members` requests per second one user may make over all its sockets on
/// a gateway (burst: twice this). A page asks once per big room it shows,
/// and each answer costs a Redis read and the room's whole list.
pub const MEMBER_LISTS_PER_SECOND: u32 = 2;

/// One socket's send bucket.
pub type SendLimiter = DefaultDirectRateLimiter;

/// Limits and the state that enforces them across sockets.
#[derive(Debug)]
pub struct Limits {
    /// Largest client message, in bytes.
    pub max_message_bytes: usize,
    /// Sockets on this gateway.
    pub max_sockets: usize,
    /// Bytes queued per socket.
    pub max_queue_bytes: usize,
    /// Whether to trust `X-Forwarded-For` for the source address.
    pub trust_forwarded_for: bool,
    max_sockets_per_user: u32,
    send_quota: Quota,
    user_sends: DefaultKeyedRateLimiter<String>,
    member_lists: DefaultKeyedRateLimiter<String>,
    handshakes: DefaultKeyedRateLimiter<IpAddr>,
    sockets_per_user: Mutex<HashMap<String, u32>>,
    /// The one clock every limiter reads: making a clock is not free (it
    /// calibrates), and a limiter per socket must stay cheap.
    clock: DefaultClock,
}

/// Why a send or a handshake has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

fn per_second(rate: u32) -> Quota {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Quota::per_second(rate).allow_burst(burst)
}

fn keyed<K: Clone + std::hash::Hash + Eq>(rate: u32, clock: &DefaultClock) -> DefaultKeyedRateLimiter<K> {
    RateLimiter::new(per_second(rate), DefaultKeyedStateStore::default(), clock.clone())
}

impl Limits {
    /// Limits from the command line.
    pub fn new(config: &Config) -> Self {
        let clock = DefaultClock::default();
        Self {
            max_message_bytes: config.max_message_bytes,
            max_sockets: config.max_sockets,
            max_queue_bytes: config.max_queue_bytes,
            trust_forwarded_for: config.trust_forwarded_for,
            max_sockets_per_user: config.max_sockets_per_user,
            send_quota: per_second(config.send_rate),
            user_sends: keyed(config.user_send_rate, &clock),
            member_lists: keyed(MEMBER_LISTS_PER_SECOND, &clock),
            handshakes: keyed(config.handshake_rate, &clock),
            sockets_per_user: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// A fresh per-socket send limiter.
    pub fn socket_sends(&self) -> SendLimiter {
        RateLimiter::direct_with_clock(self.send_quota, self.clock.clone())
    }

    /// Takes one send from a socket's bucket.
    ///
    /// # Errors
    /// How long to wait when the socket is over its rate.
    pub fn socket_send(&self, limiter: &SendLimiter) -> Result<(), RetryAfter> {
        limiter.check().map_err(|n| self.retry_after(&n))
    }

    fn retry_after(&self, not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> RetryAfter {
        RetryAfter(not_until.wait_time_from(self.clock.now()))
    }

    /// Takes one send from the user's bucket.
    ///
    /// # Errors
    /// How long to wait when the user is over its rate.
    pub fn user_send(&self, user: &str) -> Result<(), RetryAfter> {
        self.user_sends.check_key(&user.to_owned()).map_err(|n| self.retry_after(&n))
    }

    /// Takes one `members` request from the user's bucket.
    ///
    /// # Errors
    /// How long to wait when the user is over its rate.
    pub fn member_list(&self, user: &str) -> Result<(), RetryAfter> {
        self.member_lists.check_key(&user.to_owned()).map_err(|n| self.retry_after(&n))
    }

    /// Takes one handshake from the source address's bucket.
    ///
    /// # Errors
    /// How long to wait when the address is over its rate.
    pub fn handshake(&self, source: IpAddr) -> Result<(), RetryAfter> {
        self.handshakes.check_key(&source).map_err(|n| self.retry_after(&n))
    }

    /// Counts a socket of `user`; `false` (and nothing counted) when the user
    /// already holds the most it may.
    pub fn open_socket(&self, user: &str) -> bool {
        let mut counts = self.sockets_per_user.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(user.to_owned()).or_default();
        if *count >= self.max_sockets_per_user {
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets a socket of `user`.
    pub fn close_socket(&self, user: &str) {
        let mut counts = self.sockets_per_user.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(user);
            }
        }
    }

    /// Drops rate-limiter state of keys not seen lately, so that memory
    /// stays bounded by recent users and addresses.
    pub fn forget_idle(&self) {
        self.user_sends.retain_recent();
        self.user_sends.shrink_to_fit();
        self.member_lists.retain_recent();
        self.member_lists.shrink_to_fit();
        self.handshakes.retain_recent();
        self.handshakes.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn limits(args: &[&str]) -> Limits {
        let mut all = vec!["warren-gateway"];
        all.extend_from_slice(args);
        Limits::new(&Config::try_parse_from(all).expect("valid flags"))
    }

    #[test]
    fn sends_get_a_burst_of_twice_the_rate_then_a_wait() {
        let limits = limits(&["--send-rate", "5"]);
        let socket = limits.socket_sends();
        for _ in 0..10 {
            assert!(limits.socket_send(&socket).is_ok());
        }
        let RetryAfter(wait) = limits.socket_send(&socket).expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
    }

    #[test]
    fn users_are_limited_across_sockets_and_apart_from_each_other() {
        let limits = limits(&["--user-send-rate", "1"]);
        assert!(limits.user_send("a").is_ok() && limits.user_send("a").is_ok());
        assert!(limits.user_send("a").is_err());
        assert!(limits.user_send("b").is_ok());
    }

    #[test]
    fn member_lists_are_limited_per_user() {
        let limits = limits(&[]);
        for _ in 0..MEMBER_LISTS_PER_SECOND * 2 {
            assert!(limits.member_list("a").is_ok());
        }
        assert!(limits.member_list("a").is_err(), "over the burst");
        assert!(limits.member_list("b").is_ok());
    }

    #[test]
    fn sockets_per_user_are_counted() {
        let limits = limits(&["--max-sockets-per-user", "2"]);
        assert!(limits.open_socket("a") && limits.open_socket("a"));
        assert!(!limits.open_socket("a"));
        limits.close_socket("a");
        assert!(limits.open_socket("a"));
        assert!(limits.open_socket("b"));
    }
}
