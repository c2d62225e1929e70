//! The gateway's command line; every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ops::telemetry::LogFormat;

/// The secret used when none is configured. Anyone who knows it can forge
/// sessions, so the gateway warns loudly whenever it is in use.
pub const DEV_SESSION_SECRET: &str = "warren-development-secret-do-not-use-in-production";

/// `warren-gateway`: serves the pages, holds the browser sockets, checks
/// sessions in Redis and forwards chat to a bridge.
#[derive(Debug, Clone, Parser)]
#[command(name = "warren-gateway", version, about)]
pub struct Config {
    /// Address for HTTP and WebSocket traffic.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Connections the kernel may queue before the gateway accepts them
    /// (capped by `net.core.somaxconn`): a reconnect wave after a drain
    /// arrives all at once, and a short queue turns it into SYN retries.
    #[arg(long, env = "GATEWAY_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// Address of the admin HTTP server (`/healthz`, `/readyz`).
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9081")]
    pub admin_listen: SocketAddr,

    /// This gateway's name, shown to clients in `welcome` (default: the host name).
    #[arg(long, env = "GATEWAY_INSTANCE")]
    pub instance: Option<String>,

    /// Redis URL for sessions. Neither flag nor variable given: the Redis
    /// service bound in Cloud Foundry's `VCAP_SERVICES`, if any, else this
    /// default (see [`Config::try_parse_with_platform`]).
    #[arg(long, env = "GATEWAY_REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,

    /// The bound service `redis_url` was taken from (logged at start-up:
    /// its name and host, never the URL).
    #[arg(skip)]
    pub redis_service: Option<platform::Service>,

    /// Redis Sentinel nodes (`host:port`, comma-separated) to ask for the
    /// master, instead of one node: a failover then moves the gateway with
    /// it. The Redis URL still gives the scheme (`rediss://`: TLS, to the
    /// sentinels too), the credentials (for the sentinels too) and the
    /// database; its host is not used.
    #[arg(long = "redis-sentinel", env = "GATEWAY_REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// Redis Cluster nodes (`host:port`, comma-separated; a few are enough:
    /// the others are learnt from them) to use a cluster instead of one
    /// node. The Redis URL still gives the scheme (`rediss://`: TLS, to
    /// every node) and the credentials; its host is not used.
    #[arg(
        long = "redis-cluster",
        env = "GATEWAY_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_sentinels"
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// The master's name in the sentinels' configuration.
    #[arg(long, env = "GATEWAY_REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,

    /// A PEM bundle of CA certificates to trust, on top of the system's, when
    /// the Redis URL is `rediss://` (a managed service's private CA, say).
    #[arg(long, env = "GATEWAY_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// A PEM client certificate (chain) for a `rediss://` Redis that asks for
    /// one (mutual TLS); goes with `--tls-client-key`.
    #[arg(long, env = "GATEWAY_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,

    /// The PEM private key of `--tls-client-cert`.
    #[arg(long, env = "GATEWAY_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,

    /// Bridges to attach to, comma-separated; the gateway uses one at a time
    /// and moves to the next when it fails.
    #[arg(long, env = "GATEWAY_BRIDGE_URLS", value_delimiter = ',', default_value = "http://127.0.0.1:50051")]
    pub bridge_urls: Vec<String>,

    /// Secret that signs session cookies (shared with any Node app using the
    /// same sessions). Without it a development secret is used, with a warning.
    #[arg(long, env = "GATEWAY_SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,

    /// Name of the session cookie, which balancers key their affinity on.
    /// Cookie names are case-sensitive: Cloud Foundry's router keys on
    /// `JSESSIONID` (docs/cloudfoundry.md).
    #[arg(long, env = "GATEWAY_SESSION_COOKIE_NAME", default_value = crate::session::DEFAULT_COOKIE_NAME)]
    pub session_cookie_name: String,

    /// How long a session lives without a page load or `/session` call.
    #[arg(long, env = "GATEWAY_SESSION_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub session_max_age: Duration,

    /// How often the gateway checks that the logins of its sockets still
    /// exist; an expired one's sockets are closed (a logout closes them at
    /// once, on every gateway).
    #[arg(long, env = "GATEWAY_SESSION_CHECK_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_check_interval: Duration,

    /// Extra origins allowed to open sockets, comma-separated
    /// (e.g. `https://chat.example.com`). The page's own origin is always allowed.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Mark cookies `Secure` (set when served over HTTPS).
    #[arg(long, env = "GATEWAY_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,

    /// The largest client message, in bytes; a bigger one closes the socket
    /// with 1009.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Rooms one socket may join at once.
    #[arg(long, env = "GATEWAY_MAX_ROOMS_PER_SOCKET", default_value_t = 32)]
    pub max_rooms_per_socket: usize,

    /// Sockets this gateway holds at most; more are refused with 503.
    #[arg(long, env = "GATEWAY_MAX_SOCKETS", default_value_t = 10_000)]
    pub max_sockets: usize,

    /// Sockets one user may hold on this gateway (tabs, devices); more are
    /// refused with 503.
    #[arg(long, env = "GATEWAY_MAX_SOCKETS_PER_USER", default_value_t = 8)]
    pub max_sockets_per_user: u32,

    /// Sends per second one socket may make (a token bucket; the burst is
    /// twice this). Over it: an `error` with code `rate_limited`.
    #[arg(long, env = "GATEWAY_SEND_RATE", default_value_t = 10)]
    pub send_rate: u32,

    /// Sends per second one user may make over all its sockets on this
    /// gateway (burst: twice this).
    #[arg(long, env = "GATEWAY_USER_SEND_RATE", default_value_t = 20)]
    pub user_send_rate: u32,

    /// POSTs per second to one event stream, through this gateway (burst:
    /// twice this). Each costs a session read and a Redis `PUBLISH`, where a
    /// WebSocket frame costs nothing in Redis. Over it: 429 with
    /// `Retry-After`.
    #[arg(long, env = "GATEWAY_SSE_POST_RATE", default_value_t = 20)]
    pub sse_post_rate: u32,

    /// WebSocket handshakes per second one source address may make (burst:
    /// twice this). Over it: 429 with `Retry-After`. High enough for a
    /// crowd behind one NAT (3,000 sockets within 5 s); the node-wide
    /// admission below bounds the total.
    #[arg(long, env = "GATEWAY_HANDSHAKE_RATE", default_value_t = 500)]
    pub handshake_rate: u32,

    /// WebSocket handshakes this gateway works on at once (session lookup
    /// included). Over it: 503 with `Retry-After: 1`, which clients retry.
    #[arg(long, env = "GATEWAY_MAX_HANDSHAKES_IN_FLIGHT", default_value_t = 1000)]
    pub max_handshakes_in_flight: usize,

    /// Peers trusted to set `X-Forwarded-For`, as CIDRs (comma-separated,
    /// e.g. `127.0.0.0/8,10.0.0.0/8`): for a request from one of them, the
    /// client is the rightmost `X-Forwarded-For` hop that is not itself
    /// trusted. Other peers are the client themselves.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Trust the last `X-Forwarded-For` hop from any peer (older form of
    /// `--trusted-proxies`; prefer that).
    #[arg(long, env = "GATEWAY_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,

    /// Bytes queued for one socket before it counts as too slow and is
    /// closed (1008 `slow`).
    #[arg(long, env = "GATEWAY_MAX_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_queue_bytes: usize,

    /// Over how long a draining gateway spreads its sockets' reconnect
    /// notices (SIGTERM). Kubernetes' terminationGracePeriodSeconds must
    /// exceed preStop + this + the shutdown grace.
    #[arg(long, env = "GATEWAY_DRAIN_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,

    /// How often the gateway pings every socket.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A socket that sent nothing, not even a pong, for this long is closed
    /// (1008 `timeout: no pong`): a dead peer or a half-open connection. It
    /// is noticed at the next ping, so within this plus one ping interval.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "50s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How long shutdown waits, after the drain, for sockets and requests.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How often the gateway refreshes its presence heartbeat in Redis, and
    /// how often it looks for gateways whose heartbeat expired.
    #[arg(long, env = "GATEWAY_PRESENCE_HEARTBEAT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub presence_heartbeat: Duration,

    /// How long a presence heartbeat lives: a gateway that stops beating
    /// (crashed, or cut off from Redis) is taken for dead after this, and
    /// its users leave the rooms they are in nowhere else, within this plus
    /// one heartbeat period.
    #[arg(long, env = "GATEWAY_PRESENCE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

    /// How long presence changes are gathered before each member of a room
    /// is sent one `presence_diff` with their net effect: a crowd arriving
    /// costs each member one frame per interval, not one per arrival.
    #[arg(long, env = "GATEWAY_PRESENCE_BATCH", default_value = "1s", value_parser = humantime::parse_duration)]
    pub presence_batch: Duration,

    /// The most members a `joined` frame lists; a bigger room's `joined`
    /// carries only the count (`truncated`), and the client asks for the
    /// list with a `members` frame if it wants it.
    #[arg(long, env = "GATEWAY_JOINED_MEMBERS_MAX", default_value_t = 100)]
    pub joined_members_max: usize,

    /// The server API's bearer token (`/api/v1`, for backends); the API is
    /// off without a token. Prefer `--api-token-file`, which keeps it out
    /// of the process's environment.
    #[arg(long, env = "GATEWAY_API_TOKEN", hide_env_values = true, conflicts_with = "api_token_file")]
    pub api_token: Option<String>,

    /// A file holding the server API's bearer token (e.g. a mounted
    /// Secret); surrounding whitespace is ignored.
    #[arg(long, env = "GATEWAY_API_TOKEN_FILE")]
    pub api_token_file: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The instance name: the flag, else the host name, else `gateway`.
    pub fn instance_name(&self) -> String {
        self.instance
            .clone()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "gateway".to_owned())
    }

    /// Parses `args` and the environment like [`Parser::try_parse_from`];
    /// then, when neither `--redis-url` nor `GATEWAY_REDIS_URL` was given,
    /// takes the Redis bound in `vcap_services` (Cloud Foundry's
    /// `VCAP_SERVICES`), if there is one.
    ///
    /// # Errors
    /// clap's error for a bad command line, or for a `VCAP_SERVICES` whose
    /// Redis cannot be used (several bound, no address).
    pub fn try_parse_with_platform<I, T>(args: I, vcap_services: Option<&str>) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let (mut config, binding) =
            platform::parse_with_binding::<Self, _, _>(args, vcap_services, "redis_url", platform::redis)?;
        if let Some(binding) = binding {
            config.redis_url = binding.url().to_owned();
            config.redis_service = Some(binding.service().clone());
        }
        Ok(config)
    }

    /// Where Redis is: the URL's node, the master the sentinels name, or a
    /// cluster.
    pub fn redis_target(&self) -> crate::redis_client::Target {
        use crate::redis_client::Topology;
        let topology = if !self.redis_cluster_nodes.is_empty() {
            Topology::Cluster { nodes: self.redis_cluster_nodes.clone() }
        } else if !self.redis_sentinels.is_empty() {
            Topology::Sentinel { sentinels: self.redis_sentinels.clone(), master: self.redis_sentinel_master.clone() }
        } else {
            Topology::Node
        };
        crate::redis_client::Target { url: self.redis_url.clone(), topology }
    }

    /// The TLS files for Redis (used when its URL is `rediss://`).
    pub fn tls_files(&self) -> platform::tls::Files {
        platform::tls::Files {
            ca_file: self.tls_ca_file.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
        }
    }

    /// The configured secret, or the development one.
    pub fn secret(&self) -> &str {
        self.session_secret.as_deref().unwrap_or(DEV_SESSION_SECRET)
    }

    /// The server API's token: from `--api-token-file` or `--api-token`;
    /// `None` when the API is off.
    ///
    /// # Errors
    /// When the file cannot be read, or the token is shorter than
    /// [`crate::api::MIN_TOKEN_CHARS`] (a guessable token would open every
    /// room to anyone).
    pub fn api_token(&self) -> Result<Option<crate::api::ApiToken>, String> {
        let token = match (&self.api_token, &self.api_token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|error| format!("--api-token-file {}: {error}", path.display()))?,
            (None, None) => return Ok(None),
        };
        crate::api::ApiToken::new(token.trim()).map(Some)
    }

    /// Checks what clap cannot.
    ///
    /// # Errors
    /// A message for the operator when a value is unusable.
    pub fn validate(&self) -> Result<(), String> {
        if self.bridge_urls.iter().all(|url| url.trim().is_empty()) {
            return Err("--bridge-urls: at least one bridge is needed".to_owned());
        }
        if self.session_secret.as_deref().is_some_and(str::is_empty) {
            return Err("--session-secret: must not be empty".to_owned());
        }
        if !crate::session::is_cookie_name(&self.session_cookie_name) {
            return Err("--session-cookie-name: letters, digits and !#$%&'*+-.^_`|~ only".to_owned());
        }
        let prefixed = ["__Secure-", "__Host-"].iter().any(|p| self.session_cookie_name.starts_with(p));
        if prefixed && !self.cookie_secure {
            return Err(
                "--session-cookie-name: browsers drop __Secure- and __Host- cookies without --cookie-secure".to_owned()
            );
        }
        if self.session_max_age < Duration::from_secs(60) {
            return Err("--session-max-age: at least 1m".to_owned());
        }
        if self.max_message_bytes < 1024 {
            return Err("--max-message-bytes: at least 1024".to_owned());
        }
        let rates =
            [self.send_rate, self.user_send_rate, self.sse_post_rate, self.handshake_rate, self.max_sockets_per_user];
        if rates.contains(&0)
            || self.max_rooms_per_socket == 0
            || self.max_sockets == 0
            || self.max_handshakes_in_flight == 0
        {
            return Err("limits must be at least 1".to_owned());
        }
        if self.ping_interval < Duration::from_millis(100) || self.idle_timeout <= self.ping_interval {
            return Err("--idle-timeout must exceed --ping-interval (at least 100ms)".to_owned());
        }
        if self.presence_heartbeat < Duration::from_millis(100) {
            return Err("--presence-heartbeat: at least 100ms".to_owned());
        }
        if self.presence_batch < Duration::from_millis(10) || self.presence_batch > Duration::from_secs(60) {
            return Err("--presence-batch: between 10ms and 60s".to_owned());
        }
        self.api_token()?;
        if self.presence_ttl < self.presence_heartbeat * 2 {
            return Err(
                "--presence-ttl: at least twice --presence-heartbeat, so one late beat is not a death".to_owned()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::try_parse_from(["warren-gateway"]).expect("defaults parse");
        assert!(config.validate().is_ok());
        assert_eq!(config.secret(), DEV_SESSION_SECRET);
        assert_eq!(config.session_max_age, Duration::from_secs(86_400));
        assert_eq!(config.presence_batch, Duration::from_secs(1));
        assert_eq!(config.joined_members_max, 100);
    }

    #[test]
    fn lists_split_on_commas() {
        let config = Config::try_parse_from([
            "warren-gateway",
            "--bridge-urls",
            "http://a:1,http://b:2",
            "--allowed-origins",
            "https://x.example,https://y.example",
        ])
        .expect("parses");
        assert_eq!(config.bridge_urls, ["http://a:1", "http://b:2"]);
        assert_eq!(config.allowed_origins.len(), 2);
    }

    #[test]
    fn bad_values_are_refused() {
        let empty_secret = Config::try_parse_from(["warren-gateway", "--session-secret", ""]).expect("parses");
        assert!(empty_secret.validate().is_err());
        let short = Config::try_parse_from(["warren-gateway", "--session-max-age", "5s"]).expect("parses");
        assert!(short.validate().is_err());
        assert!(Config::try_parse_from(["warren-gateway", "--listen", "nowhere"]).is_err());
        let ttl = Config::try_parse_from(["warren-gateway", "--presence-heartbeat", "3s", "--presence-ttl", "5s"])
            .expect("parses");
        assert!(ttl.validate().is_err(), "a TTL under two heartbeats");
        let batch = Config::try_parse_from(["warren-gateway", "--presence-batch", "0s"]).expect("parses");
        assert!(batch.validate().is_err(), "a batch interval of zero would spin");
    }

    #[test]
    fn redis_is_a_node_a_sentinel_master_or_a_cluster() {
        use crate::redis_client::Topology;
        let node = Config::try_parse_from(["warren-gateway"]).expect("parses");
        assert_eq!(node.redis_target().topology, Topology::Node);
        let sentinel = Config::try_parse_from(["warren-gateway", "--redis-sentinel", "s1:26379,s2:26379"])
            .expect("parses")
            .redis_target();
        assert!(matches!(sentinel.topology, Topology::Sentinel { sentinels, master }
            if sentinels.len() == 2 && master == "mymaster"));
        let cluster = Config::try_parse_from(["warren-gateway", "--redis-cluster", "n1:6379,n2:6379,n3:6379"])
            .expect("parses")
            .redis_target();
        assert!(matches!(cluster.topology, Topology::Cluster { nodes } if nodes.len() == 3));
        let both = ["warren-gateway", "--redis-cluster", "n1:6379", "--redis-sentinel", "s1:26379"];
        assert!(Config::try_parse_from(both).is_err(), "a cluster is not behind sentinels");
    }

    const ONE_REDIS: &str = r#"{"p.redis": [{"name": "sessions", "label": "p.redis", "tags": ["redis"],
        "credentials": {"host": "10.0.8.4", "port": 6379, "password": "pw"}}]}"#;

    #[test]
    fn a_bound_redis_is_used_when_no_url_is_given() {
        let config = Config::try_parse_with_platform(["warren-gateway"], Some(ONE_REDIS)).expect("parses");
        assert_eq!(config.redis_url, "redis://:pw@10.0.8.4:6379");
        assert_eq!(config.redis_service.map(|s| s.name).as_deref(), Some("sessions"));

        let given = ["warren-gateway", "--redis-url", "redis://elsewhere:6379"];
        let explicit = Config::try_parse_with_platform(given, Some(ONE_REDIS)).expect("parses");
        assert_eq!(explicit.redis_url, "redis://elsewhere:6379", "a flag wins over VCAP_SERVICES");
        assert!(explicit.redis_service.is_none());

        for nothing in [None, Some(""), Some("{}")] {
            let config = Config::try_parse_with_platform(["warren-gateway"], nothing).expect("parses");
            assert_eq!(config.redis_url, "redis://127.0.0.1:6379");
        }
        let two = r#"{"p.redis": [{"name": "a", "tags": ["redis"]}, {"name": "b", "tags": ["redis"]}]}"#;
        assert!(Config::try_parse_with_platform(["warren-gateway"], Some(two)).is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let pair = ["warren-gateway", "--tls-client-cert", "c.pem", "--tls-client-key", "k.pem"];
        let config = Config::try_parse_from(pair).expect("parses");
        assert_eq!(config.tls_files().client_key.as_deref(), Some(std::path::Path::new("k.pem")));
        assert!(Config::try_parse_from(["warren-gateway", "--tls-client-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["warren-gateway", "--tls-client-key", "k.pem"]).is_err());
        let ca = Config::try_parse_from(["warren-gateway", "--tls-ca-file", "ca.pem"]).expect("parses");
        assert!(ca.validate().is_ok() && ca.tls_files().client_cert.is_none());
    }

    #[test]
    fn session_cookie_names_are_tokens() {
        let config = Config::try_parse_from(["warren-gateway"]).expect("parses");
        assert_eq!(config.session_cookie_name, "jsessionid");
        for good in ["JSESSIONID", "connect.sid"] {
            let config = Config::try_parse_from(["warren-gateway", "--session-cookie-name", good]).expect("parses");
            assert!(config.validate().is_ok(), "{good}");
        }
        let host = ["warren-gateway", "--session-cookie-name", "__Host-sid"];
        assert!(Config::try_parse_from(host).expect("parses").validate().is_err(), "needs Secure");
        let secure = Config::try_parse_from([&host[..], &["--cookie-secure"]].concat()).expect("parses");
        assert!(secure.validate().is_ok());
        for bad in ["", "two words", "a;b", "a=b", "ünï"] {
            let config = Config::try_parse_from(["warren-gateway", "--session-cookie-name", bad]).expect("parses");
            assert!(config.validate().is_err(), "{bad:?}");
        }
    }
}
