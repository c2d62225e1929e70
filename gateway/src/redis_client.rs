//! The one place the gateway's Redis connections are made. Sessions (through
//! a pool), presence, the logout subscription and the event-stream relay all
//! connect through a [`Redis`]: one address or one Sentinel-named master, one
//! set of TLS settings.
//!
//! A `rediss://` URL is reached over TLS (rustls with ring). redis-rs
//! replaces the system's roots with the ones it is given, so it is given the
//! system's and those of `--tls-ca-file` together ([`platform::tls`]), and
//! the client certificate when one is set. A `redis://` URL ignores the TLS
//! settings, with a warning. (redis-rs still reads the system store at each
//! new connection and refuses to connect when that reports an error: the
//! warnings logged at start-up about the store say why.)
//!
//! **Sentinel.** With `--redis-sentinel` the master is whichever node the
//! sentinels name *now*: every new connection asks them (and checks that the
//! node it is sent to says it is the master), so when Sentinel fails the
//! master over, the connections that break are made again on the new one.
//! Sentinel itself closes every client of a master it demotes, so no
//! connection lingers on a node that turned replica. The pool is deadpool's
//! with a manager of its own ([`Manager`]) rather than deadpool-redis': that
//! crate's managers are each bound to one kind of address (a URL, or
//! Sentinel without a private CA), and the gateway wants one path for both.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use platform::tls::{Files, Tls};
use redis::aio::{MultiplexedConnection, PubSub};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, RedisError, RedisResult, TlsCertificates, TlsMode,
};

use crate::error::RunError;

/// A pool of multiplexed connections to the master.
pub type Pool = managed::Pool<Manager>;
/// A connection from the [`Pool`].
pub type PooledConnection = managed::Object<Manager>;
/// Why the [`Pool`] gave no connection.
pub type PoolError = managed::PoolError<RedisError>;

/// How long asking the sentinels for the master may take.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the gateway's Redis is.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The URL: the node itself, or with sentinels the scheme (`rediss://`
    /// for TLS, to the sentinels too), the credentials (the sentinels' too)
    /// and the database; its host is not used then.
    pub url: String,
    /// Sentinel nodes, `host:port`; none for a plain node.
    pub sentinels: Vec<String>,
    /// The master's name in the sentinels' configuration.
    pub master: String,
}

impl Target {
    /// One Redis node at `url`.
    pub fn node(url: &str) -> Self {
        Self { url: url.to_owned(), ..Self::default() }
    }
}

/// The gateway's way to Redis; cheap to clone.
#[derive(Clone)]
pub struct Redis(Arc<Route>);

enum Route {
    Node(redis::Client),
    Sentinel { client: tokio::sync::Mutex<SentinelClient>, master: String },
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Route::Node(client) => f.debug_tuple("Redis").field(client.get_connection_info().addr()).finish(),
            Route::Sentinel { master, .. } => f.debug_struct("Redis").field("sentinel_master", master).finish(),
        }
    }
}

impl Redis {
    /// The way to `target`, over TLS with `files` when its URL asks for it.
    ///
    /// # Errors
    /// Unusable TLS files ([`platform::tls::TlsError`]), an unusable URL or
    /// sentinel address.
    pub fn open(target: &Target, files: &Files) -> Result<Self, RunError> {
        let tls = platform::tls::for_url(&target.url, files)?;
        match &tls {
            Some(tls) => {
                for problem in tls.problems() {
                    tracing::warn!(%problem, "system certificate store");
                }
                tracing::info!(trust = %tls, "Redis over TLS");
            }
            None if !files.is_empty() => {
                tracing::warn!("--tls-* files given but the Redis URL is not rediss://: they are not used");
            }
            None => {}
        }
        let certificates = tls.as_ref().map(certificates);
        if target.sentinels.is_empty() {
            let client = match certificates {
                Some(certificates) => redis::Client::build_with_tls(target.url.as_str(), certificates)?,
                None => redis::Client::open(target.url.as_str())?,
            };
            return Ok(Self(Arc::new(Route::Node(client))));
        }
        let client = sentinel_client(target, certificates)?;
        tracing::info!(sentinels = target.sentinels.len(), master = %target.master, "Redis through Sentinel");
        Ok(Self(Arc::new(Route::Sentinel { client: tokio::sync::Mutex::new(client), master: target.master.clone() })))
    }

    /// A client for the master as of now.
    ///
    /// # Errors
    /// When no sentinel answers, or none names a node that is master.
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match &*self.0 {
            Route::Node(client) => Ok(client.clone()),
            Route::Sentinel { client, master } => {
                // Boxed: the lookup's future is deep, and every caller's
                // future (a request's, through the pool) would nest it.
                let lookup = Box::pin(async { client.lock().await.async_get_client().await });
                tokio::time::timeout(SENTINEL_TIMEOUT, lookup).await.unwrap_or_else(|_| {
                    Err(RedisError::from((redis::ErrorKind::Io, "no sentinel answered in time", master.clone())))
                })
            }
        }
    }

    /// A new multiplexed connection to the master.
    ///
    /// # Errors
    /// As [`Self::client`], or when the master does not answer.
    pub async fn connect(&self, config: &AsyncConnectionConfig) -> RedisResult<MultiplexedConnection> {
        self.client().await?.get_multiplexed_async_connection_with_config(config).await
    }

    /// A new subscriber connection to the master.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn subscriber(&self) -> RedisResult<PubSub> {
        self.client().await?.get_async_pubsub().await
    }

    /// A connection pool on this way to Redis.
    ///
    /// # Errors
    /// When the pool cannot be built.
    pub fn pool(&self) -> Result<Pool, RunError> {
        let manager = Manager { redis: self.clone(), pings: AtomicU64::new(0) };
        Ok(Pool::builder(manager).runtime(deadpool::Runtime::Tokio1).build()?)
    }
}

/// Makes and checks the [`Pool`]'s connections.
#[derive(Debug)]
pub struct Manager {
    redis: Redis,
    pings: AtomicU64,
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> RedisResult<MultiplexedConnection> {
        self.redis.client().await?.get_multiplexed_async_connection().await
    }

    /// A connection goes back into use only if it still answers: one that
    /// broke with its node is dropped, and the next is made on the master.
    async fn recycle(&self, connection: &mut MultiplexedConnection, _: &Metrics) -> RecycleResult<RedisError> {
        let token = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let echoed: String = redis::cmd("PING").arg(&token).query_async(connection).await?;
        if echoed == token { Ok(()) } else { Err(RecycleError::message("PING answered with another value")) }
    }
}

/// A client that asks the sentinels of `target` for its master.
fn sentinel_client(target: &Target, certificates: Option<TlsCertificates>) -> Result<SentinelClient, RunError> {
    let info = redis::IntoConnectionInfo::into_connection_info(target.url.as_str())?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let sentinels =
        target.sentinels.iter().map(|address| sentinel_addr(address, tls)).collect::<Result<Vec<_>, _>>()?;
    let settings = info.redis_settings();
    let mut builder = SentinelClientBuilder::new(sentinels, &target.master, SentinelServerType::Master)?
        .set_client_to_redis_db(settings.db());
    if let Some(username) = settings.username() {
        builder = builder.set_client_to_redis_username(username).set_client_to_sentinel_username(username);
    }
    if let Some(password) = settings.password() {
        builder = builder.set_client_to_redis_password(password).set_client_to_sentinel_password(password);
    }
    if let Some(certificates) = certificates {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_redis_certificates(certificates.clone())
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_certificates(certificates);
    }
    Ok(builder.build()?)
}

/// `host:port` of a sentinel, reached over TLS when the master is.
fn sentinel_addr(address: &str, tls: bool) -> Result<ConnectionAddr, RunError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| RunError::Config(format!("--redis-sentinel {address:?} is not host:port")))?;
    let host = host.to_owned();
    Ok(if tls {
        ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

fn certificates(tls: &Tls) -> TlsCertificates {
    let client_tls = tls.identity().map(|identity| ClientTlsConfig {
        client_cert: identity.cert_pem().to_vec(),
        client_key: identity.key_pem().to_vec(),
    });
    TlsCertificates { client_tls, root_cert: Some(tls.roots_pem().into_bytes()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr_of(redis: &Redis) -> ConnectionAddr {
        match &*redis.0 {
            Route::Node(client) => client.get_connection_info().addr().clone(),
            Route::Sentinel { .. } => panic!("a node was expected"),
        }
    }

    #[test]
    fn plain_urls_make_plain_clients() {
        let redis = Redis::open(&Target::node("redis://127.0.0.1:6379"), &Files::default()).expect("a plain URL");
        assert!(matches!(addr_of(&redis), ConnectionAddr::Tcp(..)));
        assert!(redis.pool().is_ok());
    }

    #[test]
    fn rediss_urls_keep_their_tls_settings() {
        let redis = Redis::open(&Target::node("rediss://127.0.0.1:6380"), &Files::default()).expect("system roots");
        let addr = addr_of(&redis);
        assert!(matches!(addr, ConnectionAddr::TcpTls { tls_params: Some(_), .. }), "{addr:?}");
    }

    #[test]
    fn a_missing_ca_file_is_an_error() {
        let files = Files { ca_file: Some("/nowhere/ca.pem".into()), ..Files::default() };
        let error = Redis::open(&Target::node("rediss://127.0.0.1:6380"), &files).expect_err("no such file");
        assert!(error.to_string().contains("--tls-ca-file /nowhere/ca.pem"), "{error}");
        assert!(Redis::open(&Target::node("redis://127.0.0.1:6379"), &files).is_ok(), "not read for a plain URL");
    }

    #[test]
    fn sentinels_are_host_and_port_and_follow_the_urls_scheme() {
        assert_eq!(sentinel_addr("10.0.0.1:26379", false).ok(), Some(ConnectionAddr::Tcp("10.0.0.1".into(), 26379)));
        assert_eq!(sentinel_addr("[::1]:26379", false).ok(), Some(ConnectionAddr::Tcp("::1".into(), 26379)));
        assert!(matches!(sentinel_addr("s1:26380", true), Ok(ConnectionAddr::TcpTls { port: 26380, .. })));
        for bad in ["s1", "s1:", ":26379", "s1:port"] {
            let error = sentinel_addr(bad, false).expect_err(bad).to_string();
            assert!(error.contains("is not host:port"), "{bad}: {error}");
        }
        let target = Target {
            url: "redis://:secret@ignored:6379/2".to_owned(),
            sentinels: vec!["127.0.0.1:26379".to_owned(), "127.0.0.1:26380".to_owned()],
            master: "mymaster".to_owned(),
        };
        let redis = Redis::open(&target, &Files::default()).expect("sentinels");
        assert!(format!("{redis:?}").contains("mymaster"));
        assert!(!format!("{redis:?}").contains("secret"), "no password in Debug");
    }
}
