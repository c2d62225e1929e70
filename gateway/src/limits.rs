//! The gateway's limits, in one place: how many sockets, how fast, how big.
//! A limit that is hit gets a clear answer (a status with a reason at the
//! handshake, an `error` frame or a close code on a socket), never silence.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Who may say who the client is (`X-Forwarded-For`).
    pub proxies: TrustedProxies,
    /// Handshakes being worked on now (node-wide admission).
    handshakes_in_flight: Arc<Semaphore>,
    max_sockets_per_user: u32,
    send_quota: Quota,
    user_sends: DefaultKeyedRateLimiter<String>,
    member_lists: DefaultKeyedRateLimiter<String>,
    stream_posts: DefaultKeyedRateLimiter<String>,
    handshakes: DefaultKeyedRateLimiter<IpAddr>,
    sockets_per_user: Mutex<HashMap<String, u32>>,
    /// The one clock every limiter reads: making a clock is not free (it
    /// calibrates), and a limiter per socket must stay cheap.
    clock: DefaultClock,
}

/// The peers trusted to name the client in `X-Forwarded-For`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    /// Their networks.
    pub nets: Vec<ipnet::IpNet>,
    /// Trust the last hop from any peer (`--trust-forwarded-for`).
    pub any: bool,
}

impl TrustedProxies {
    fn trusts(&self, address: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&address))
    }

    /// The client's address: the peer itself unless it is a trusted proxy;
    /// behind trusted proxies, the rightmost `X-Forwarded-For` hop that is
    /// not one (hops further left could be made up by the client).
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let hops =
            || forwarded_for.into_iter().flat_map(|value| value.rsplit(',')).map(|hop| hop.trim().parse::<IpAddr>());
        if self.any {
            return hops().next().and_then(Result::ok).unwrap_or(peer);
        }
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in hops() {
            let Ok(hop) = hop else { break };
            client = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        client
    }
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
            proxies: TrustedProxies { nets: config.trusted_proxies.clone(), any: config.trust_forwarded_for },
            handshakes_in_flight: Arc::new(Semaphore::new(config.max_handshakes_in_flight)),
            max_sockets_per_user: config.max_sockets_per_user,
            send_quota: per_second(config.send_rate),
            user_sends: keyed(config.user_send_rate, &clock),
            member_lists: keyed(MEMBER_LISTS_PER_SECOND, &clock),
            stream_posts: keyed(config.sse_post_rate, &clock),
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

    /// Takes one POST from an event stream's bucket (by its token).
    ///
    /// # Errors
    /// How long to wait when the stream is over its rate.
    pub fn stream_post(&self, token: &str) -> Result<(), RetryAfter> {
        self.stream_posts.check_key(&token.to_owned()).map_err(|n| self.retry_after(&n))
    }

    /// A place among the handshakes in flight, held until the handshake is
    /// answered; `None` when the gateway is working on as many as it may.
    pub fn admit_handshake(&self) -> Option<OwnedSemaphorePermit> {
        self.handshakes_in_flight.clone().try_acquire_owned().ok()
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
        self.stream_posts.retain_recent();
        self.stream_posts.shrink_to_fit();
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
    fn handshakes_in_flight_are_admitted_up_to_the_limit() {
        let limits = limits(&["--max-handshakes-in-flight", "2"]);
        let (first, second) = (limits.admit_handshake(), limits.admit_handshake());
        assert!(first.is_some() && second.is_some());
        assert!(limits.admit_handshake().is_none(), "a third waits");
        drop(first);
        assert!(limits.admit_handshake().is_some(), "a finished handshake frees its place");
    }

    #[test]
    fn trusted_proxies_come_from_the_command_line() {
        let limits = limits(&["--trusted-proxies", "127.0.0.0/8,fc00::/7"]);
        assert_eq!(limits.proxies.nets.len(), 2);
        let mut all = vec!["warren-gateway", "--trusted-proxies", "not-a-cidr"];
        assert!(Config::try_parse_from(all.drain(..)).is_err(), "a bad range is refused");
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

    #[test]
    fn the_client_is_the_rightmost_hop_behind_trusted_proxies() {
        let net = |cidr: &str| cidr.parse::<ipnet::IpNet>().expect("cidr");
        let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
        let proxies = TrustedProxies { nets: vec![net("127.0.0.0/8"), net("10.0.0.0/8")], any: false };
        // A client straight in: itself, whatever it claims.
        assert_eq!(proxies.client(ip("203.0.113.9"), Some("1.2.3.4")), ip("203.0.113.9"));
        // Behind the balancer: the hop it added.
        assert_eq!(proxies.client(ip("127.0.0.1"), Some("198.51.100.7")), ip("198.51.100.7"));
        // Behind two trusted hops; the leftmost entry is the client's own claim.
        assert_eq!(proxies.client(ip("127.0.0.1"), Some("6.6.6.6, 198.51.100.7, 10.1.2.3")), ip("198.51.100.7"));
        // A trusted peer without the header, or with garbage, is the client.
        assert_eq!(proxies.client(ip("127.0.0.1"), None), ip("127.0.0.1"));
        assert_eq!(proxies.client(ip("127.0.0.1"), Some("not-an-ip")), ip("127.0.0.1"));
        let any = TrustedProxies { nets: Vec::new(), any: true };
        assert_eq!(any.client(ip("203.0.113.9"), Some("6.6.6.6, 198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(TrustedProxies::default().client(ip("127.0.0.1"), Some("1.2.3.4")), ip("127.0.0.1"));
    }
}
