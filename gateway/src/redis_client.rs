//! The one place the gateway's Redis connections are made. Sessions (through
//! a pool), presence, the logout subscription and the event-stream relay all
//! connect through a [`Redis`]: one address, one Sentinel-named master or one
//! Redis Cluster ([`Topology`]), one set of TLS settings.
//!
//! A `rediss://` URL is reached over TLS (rustls with ring). redis-rs
//! replaces the system's roots with the ones it is given, so it is given the
//! system's and those of `--tls-ca-file` together ([`platform::tls`]), and
//! the client certificate when one is set. A `redis://` URL ignores the TLS
//! settings, with a warning. (redis-rs still reads the system store at each
//! new connection and refuses to connect when that reports an error: the
//! warnings logged at start-up about the store say why.)
//!
//! **One connection.** Every command (sessions, presence, posts to event
//! streams) goes over one [`SharedConnection`]: a multiplexed connection
//! pipelines concurrent callers' commands by itself, so a pool of them only
//! adds sockets. When it breaks (an I/O error, a timeout), it is dropped and
//! the next command makes a new one. Subscriptions need a connection of
//! their own ([`Redis::subscriber`]): there is one per gateway too.
//!
//! **Sentinel.** With `--redis-sentinel` the master is whichever node the
//! sentinels name *now*: every new connection asks them (and checks that the
//! node it is sent to says it is the master), so when Sentinel fails the
//! master over, the connections that break are made again on the new one.
//! Sentinel itself closes every client of a master it demotes, so no
//! connection lingers on a node that turned replica.
//!
//! **Cluster.** With `--redis-cluster` the nodes given are only where the
//! slot map is first read: redis-rs keeps a connection to every master,
//! sends each command to the one that owns its key's slot and follows the
//! map when slots move or a replica is promoted. The gateway's keys are laid
//! out for it (docs/operations.md#redis-cluster): no command and no pipeline
//! spans two slots except the multi-key reads and deletes redis-rs splits
//! itself (`MGET`, `DEL`); presence's keys share one hash tag, so each of its
//! scripts runs on one node. A cluster connection is multiplexed too, and
//! follows the cluster by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use platform::tls::{Files, Tls};
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, PushInfo, RedisError,
    RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
};
use tokio::sync::mpsc;

use crate::error::RunError;

/// How long asking the sentinels for the master may take.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to a node, or one of its answers, may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the gateway's Redis is.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL: the node itself, or with sentinels or a cluster the scheme
    /// (`rediss://` for TLS, to every node), the credentials and (not for a
    /// cluster) the database; its host is not used then.
    pub url: String,
    /// What kind of deployment the URL is part of.
    pub topology: Topology,
}

/// The shapes of Redis deployment the gateway runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One node: the URL's.
    Node,
    /// A master that `sentinels` (`host:port`) name `master`.
    Sentinel { sentinels: Vec<String>, master: String },
    /// A Redis Cluster, first reached through `nodes` (`host:port`).
    Cluster { nodes: Vec<String> },
}

impl Target {
    /// One Redis node at `url`.
    pub fn node(url: &str) -> Self {
        Self { url: url.to_owned(), topology: Topology::Node }
    }
}

/// The gateway's way to Redis; cheap to clone.
#[derive(Clone)]
pub struct Redis(Arc<Route>);

#[allow(clippy::large_enum_variant, reason = "one per gateway, behind an Arc")]
enum Route {
    Node(redis::Client),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
    },
    Cluster {
        client: ClusterClient,
        /// How `client` was made, to make subscribers alike (but speaking
        /// RESP3: cluster pub/sub arrives as pushes).
        seeds: Seeds,
    },
}

/// Where a cluster is first reached, and how.
struct Seeds {
    url: String,
    nodes: Vec<String>,
    certificates: Option<TlsCertificates>,
}

impl Seeds {
    fn builder(&self) -> Result<ClusterClientBuilder, RunError> {
        cluster_builder(&self.url, &self.nodes, self.certificates.clone())
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Route::Node(client) => f.debug_tuple("Redis").field(client.get_connection_info().addr()).finish(),
            Route::Sentinel { master, .. } => f.debug_struct("Redis").field("sentinel_master", master).finish(),
            Route::Cluster { .. } => f.write_str("Redis(cluster)"),
        }
    }
}

/// A connection to the gateway's Redis: to one node, or to a cluster (which
/// routes each command to the node that owns its key).
#[derive(Clone)]
pub enum Connection {
    /// A node's (the master's, with Sentinel).
    Node(MultiplexedConnection),
    /// A cluster's.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "Connection::Node",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A subscriber connection: a node's dedicated pub/sub connection, or a
/// cluster connection whose messages (and disconnections) arrive as pushes.
pub enum Subscriber {
    /// A node's.
    Node(PubSub),
    /// A cluster's, with the receiving end of its pushes.
    Cluster(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>),
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "Subscriber::Node",
            Self::Cluster(..) => "Subscriber::Cluster",
        })
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
        let route = match &target.topology {
            Topology::Node => Route::Node(match certificates {
                Some(certificates) => redis::Client::build_with_tls(target.url.as_str(), certificates)?,
                None => redis::Client::open(target.url.as_str())?,
            }),
            Topology::Sentinel { sentinels, master } => {
                let client = sentinel_client(&target.url, sentinels, master, certificates)?;
                tracing::info!(sentinels = sentinels.len(), %master, "Redis through Sentinel");
                Route::Sentinel { client: tokio::sync::Mutex::new(client), master: master.clone() }
            }
            Topology::Cluster { nodes } => {
                let seeds = Seeds { url: target.url.clone(), nodes: nodes.clone(), certificates };
                tracing::info!(seeds = nodes.len(), "Redis Cluster");
                Route::Cluster { client: seeds.builder()?.build()?, seeds }
            }
        };
        Ok(Self(Arc::new(route)))
    }

    /// Whether Redis is a cluster: a channel that must reach exactly the
    /// gateways subscribed to it, and count them, is then a sharded one
    /// (`SPUBLISH`; a plain `PUBLISH` counts only the subscribers of the
    /// node that runs it).
    pub fn is_cluster(&self) -> bool {
        matches!(&*self.0, Route::Cluster { .. })
    }

    /// A client for the master as of now (not for a cluster).
    ///
    /// # Errors
    /// When no sentinel answers, or none names a node that is master.
    async fn client(&self) -> RedisResult<redis::Client> {
        match &*self.0 {
            Route::Node(client) => Ok(client.clone()),
            Route::Cluster { .. } => {
                Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, "a cluster has no single master")))
            }
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

    /// A new multiplexed connection to the master, or a new cluster
    /// connection (with the cluster's own timeouts).
    ///
    /// # Errors
    /// When no sentinel answers or none names a master, or when the master
    /// (no node of the cluster) answers.
    pub async fn connect(&self, config: &AsyncConnectionConfig) -> RedisResult<Connection> {
        match &*self.0 {
            Route::Cluster { client, .. } => Ok(Connection::Cluster(client.get_async_connection().await?)),
            _ => Ok(Connection::Node(self.client().await?.get_multiplexed_async_connection_with_config(config).await?)),
        }
    }

    /// A new subscriber connection.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn subscriber(&self) -> RedisResult<Subscriber> {
        match &*self.0 {
            Route::Cluster { seeds, .. } => {
                let (pushes, received) = mpsc::unbounded_channel();
                let builder = seeds.builder().map_err(|error| {
                    RedisError::from((redis::ErrorKind::InvalidClientConfig, "cluster seeds", error.to_string()))
                })?;
                let client = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(pushes).build()?;
                Ok(Subscriber::Cluster(client.get_async_connection().await?, received))
            }
            _ => Ok(Subscriber::Node(self.client().await?.get_async_pubsub().await?)),
        }
    }
}

/// The gateway's one connection for commands, shared by every caller and
/// made again when it breaks; cheap to clone, and each clone sends on it
/// ([`ConnectionLike`]).
#[derive(Clone, Debug)]
pub struct SharedConnection(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    redis: Redis,
    /// The connection of the moment; `None` until made, and after it broke.
    current: tokio::sync::Mutex<Option<Current>>,
    /// How many connections were made: each one's number is its generation.
    made: AtomicU64,
}

#[derive(Debug)]
struct Current {
    connection: Connection,
    generation: u64,
}

impl SharedConnection {
    /// The shared connection to `redis`; nothing is connected yet.
    pub fn new(redis: Redis) -> Self {
        Self(Arc::new(Shared { redis, current: tokio::sync::Mutex::default(), made: AtomicU64::new(0) }))
    }

    /// The connection, made first when there is none, and its generation
    /// (a caller that prepares a connection, say by loading scripts, knows
    /// by it when a new one replaced it). Callers that arrive while it is
    /// being made wait for it rather than make their own.
    ///
    /// # Errors
    /// When it cannot be made: no master named, no node answering.
    pub async fn current(&self) -> RedisResult<(Connection, u64)> {
        let mut current = self.0.current.lock().await;
        if let Some(current) = current.as_ref() {
            return Ok((current.connection.clone(), current.generation));
        }
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_response_timeout(Some(TIMEOUT));
        let connection = self.0.redis.connect(&config).await?;
        let generation = self.0.made.fetch_add(1, Ordering::Relaxed) + 1;
        *current = Some(Current { connection: connection.clone(), generation });
        Ok((connection, generation))
    }

    /// After a command on connection `generation` failed with `error`: a
    /// broken connection (I/O error, timeout, dropped) is let go, and the
    /// next command makes a new one (on the master of the moment); a
    /// command error (a wrong type, say) leaves it as it is.
    pub async fn failed(&self, generation: u64, error: &RedisError) {
        let broken = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error();
        if !broken {
            return;
        }
        let mut current = self.0.current.lock().await;
        if current.as_ref().is_some_and(|current| current.generation == generation) {
            *current = None;
        }
    }
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut connection, generation) = self.current().await?;
            let result = connection.req_packed_command(cmd).await;
            if let Err(error) = &result {
                self.failed(generation, error).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut connection, generation) = self.current().await?;
            let result = connection.req_packed_commands(pipeline, offset, count).await;
            if let Err(error) = &result {
                self.failed(generation, error).await;
            }
            result
        })
    }

    /// Not known before the first connection, and not used by Warren: every
    /// command goes to the URL's database (a cluster's 0).
    fn get_db(&self) -> i64 {
        0
    }
}

/// A client that asks `sentinels` for the master named `master`, with the
/// scheme and credentials of `url`.
fn sentinel_client(
    url: &str,
    sentinels: &[String],
    master: &str,
    certificates: Option<TlsCertificates>,
) -> Result<SentinelClient, RunError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let sentinels = sentinels.iter().map(|address| node_addr(address, tls)).collect::<Result<Vec<_>, _>>()?;
    let settings = info.redis_settings();
    let mut builder = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
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

/// A cluster client first reaching `nodes`, with the scheme and
/// credentials of `url` (a cluster has only database 0).
fn cluster_builder(
    url: &str,
    nodes: &[String],
    certificates: Option<TlsCertificates>,
) -> Result<ClusterClientBuilder, RunError> {
    let info: ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(url)?;
    if info.redis_settings().db() != 0 {
        return Err(RunError::Config("a Redis Cluster has only database 0: drop it from the Redis URL".to_owned()));
    }
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let seeds = nodes
        .iter()
        .map(|address| Ok(info.clone().set_addr(node_addr(address, tls)?)))
        .collect::<Result<Vec<_>, RunError>>()?;
    let mut builder = ClusterClientBuilder::new(seeds).connection_timeout(TIMEOUT).response_timeout(TIMEOUT);
    if let Some(certificates) = certificates {
        builder = builder.certs(certificates);
    }
    Ok(builder)
}

/// `host:port` of a sentinel or cluster node, reached over TLS when the URL
/// says so.
fn node_addr(address: &str, tls: bool) -> Result<ConnectionAddr, RunError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| RunError::Config(format!("Redis node {address:?} is not host:port")))?;
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
            _ => panic!("a node was expected"),
        }
    }

    #[test]
    fn plain_urls_make_plain_clients() {
        let redis = Redis::open(&Target::node("redis://127.0.0.1:6379"), &Files::default()).expect("a plain URL");
        assert!(matches!(addr_of(&redis), ConnectionAddr::Tcp(..)));
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
    fn nodes_are_host_and_port_and_follow_the_urls_scheme() {
        assert_eq!(node_addr("10.0.0.1:26379", false).ok(), Some(ConnectionAddr::Tcp("10.0.0.1".into(), 26379)));
        assert_eq!(node_addr("[::1]:26379", false).ok(), Some(ConnectionAddr::Tcp("::1".into(), 26379)));
        assert!(matches!(node_addr("s1:26380", true), Ok(ConnectionAddr::TcpTls { port: 26380, .. })));
        for bad in ["s1", "s1:", ":26379", "s1:port"] {
            let error = node_addr(bad, false).expect_err(bad).to_string();
            assert!(error.contains("is not host:port"), "{bad}: {error}");
        }
        let target = Target {
            url: "redis://:secret@ignored:6379/2".to_owned(),
            topology: Topology::Sentinel {
                sentinels: vec!["127.0.0.1:26379".to_owned(), "127.0.0.1:26380".to_owned()],
                master: "mymaster".to_owned(),
            },
        };
        let redis = Redis::open(&target, &Files::default()).expect("sentinels");
        assert!(format!("{redis:?}").contains("mymaster"));
        assert!(!format!("{redis:?}").contains("secret"), "no password in Debug");
    }

    #[test]
    fn a_cluster_takes_its_scheme_from_the_url_and_has_no_database() {
        let nodes = vec!["127.0.0.1:7000".to_owned(), "127.0.0.1:7001".to_owned()];
        let cluster = |url: &str| Target { url: url.to_owned(), topology: Topology::Cluster { nodes: nodes.clone() } };
        let redis = Redis::open(&cluster("redis://:secret@ignored:6379"), &Files::default()).expect("a cluster");
        assert!(redis.is_cluster());
        assert!(!format!("{redis:?}").contains("secret"), "no password in Debug");
        assert!(Redis::open(&cluster("rediss://ignored:6380"), &Files::default()).is_ok());
        let error = Redis::open(&cluster("redis://ignored:6379/3"), &Files::default()).expect_err("database 3");
        assert!(error.to_string().contains("only database 0"), "{error}");
        let node = Redis::open(&Target::node("redis://127.0.0.1:6379"), &Files::default()).expect("a node");
        assert!(!node.is_cluster());
    }
}
