//! How long the partitions keep their history, and how a change of it
//! reaches partitions that exist already.
//!
//! A stream's retention given as queue arguments is frozen: declaring the
//! stream again with other arguments fails with PRECONDITION_FAILED. A
//! policy is not: RabbitMQ applies a changed policy to running streams at
//! once, and where a policy and an argument both set a key, the policy's
//! value is used (measured on 3.10.8: `docs/design/rooms.md#retention`).
//! So:
//!
//! - [`declare_partition`] declares a partition passively first and uses it
//!   as it is, whatever arguments an earlier bridge gave it; only a missing
//!   partition is created, with this bridge's [`Retention`] as arguments:
//!   what it keeps for as long as no policy says otherwise (and what keeps
//!   a forgotten policy from meaning no retention at all);
//! - the retention every partition follows is the `warren-retention` policy
//!   ([`POLICY_NAME`]), which [`Policy::apply`] puts through RabbitMQ's
//!   management HTTP API ([`ManagementApi`], `--management-url`), or else
//!   logs as the `rabbitmqctl` command an operator runs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ErrorKind};
use ops::backoff::Backoff;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The policy that holds the partitions' retention.
pub const POLICY_NAME: &str = "warren-retention";
/// The queues it applies to: every partition stream (`room::queue_name`).
pub const POLICY_PATTERN: &str = r"^warren\.partition\.";
/// How long one request to the management API may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

// === Retention ===

/// A stream's maximum age in RabbitMQ's syntax (`x-max-age`, policy key
/// `max-age`): a positive number and one of `Y` (365 days), `M` (30 days),
/// `D`, `h`, `m`, `s`. Keeps the text RabbitMQ is given and the length the
/// bridge's own index follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxAge {
    text: String,
    duration: Duration,
}

/// A `--stream-max-age` that RabbitMQ would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a positive number followed by Y, M, D, h, m or s (e.g. 7D), not {0:?}")]
pub struct InvalidMaxAge(String);

impl MaxAge {
    /// How long it is (a year is 365 days, a month 30, as RabbitMQ counts).
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// As RabbitMQ takes it, e.g. `7D`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for MaxAge {
    type Err = InvalidMaxAge;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMaxAge(value.to_owned());
        let unit = value.chars().last().ok_or_else(invalid)?;
        let number = &value[..value.len() - unit.len_utf8()];
        let seconds: u64 = match unit {
            'Y' => 365 * 86_400,
            'M' => 30 * 86_400,
            'D' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(invalid()),
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let count: u64 = number.parse().map_err(|_| invalid())?;
        if count == 0 {
            return Err(invalid()); // RabbitMQ refuses a zero age
        }
        Ok(Self { text: value.to_owned(), duration: Duration::from_secs(count.saturating_mul(seconds)) })
    }
}

impl fmt::Display for MaxAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What every partition keeps, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// How long a partition keeps a message (`max-age`); the bridge's index
    /// forgets rooms silent for longer.
    pub max_age: MaxAge,
    /// The most a partition keeps, in bytes, for all its rooms together
    /// (`max-length-bytes`).
    pub max_bytes: u64,
    /// The size of one segment file (`stream-max-segment-size-bytes`):
    /// retention drops whole segments, never the one being written.
    pub segment_bytes: u64,
}

impl Retention {
    /// The arguments a missing partition is created with: a stream that
    /// keeps this retention for as long as no policy sets another.
    pub fn creation_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
        arguments.insert("x-max-age".into(), AMQPValue::LongString(self.max_age.as_str().into()));
        arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(saturating_i64(self.max_bytes)));
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(saturating_i64(self.segment_bytes)),
        );
        arguments
    }

    /// The definition of the [`POLICY_NAME`] policy.
    pub fn policy_definition(&self) -> serde_json::Value {
        serde_json::json!({
            "max-age": self.max_age.as_str(),
            "max-length-bytes": self.max_bytes,
            "stream-max-segment-size-bytes": self.segment_bytes,
        })
    }

    /// The policy as the management API's `PUT /api/policies/{vhost}/{name}` takes it.
    fn policy(&self) -> serde_json::Value {
        serde_json::json!({
            "pattern": POLICY_PATTERN,
            "definition": self.policy_definition(),
            "apply-to": "queues",
            "priority": 0,
        })
    }

    /// The `rabbitmqctl` command that sets this retention on every
    /// partition of `vhost`, the ones that exist included.
    pub fn rabbitmqctl_command(&self, vhost: &str) -> String {
        format!(
            "rabbitmqctl set_policy -p {} {POLICY_NAME} {} {} --apply-to queues",
            shell_quote(vhost),
            shell_quote(POLICY_PATTERN),
            shell_quote(&self.policy_definition().to_string())
        )
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `value` in single quotes, for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

// === Declaring partitions ===

/// Declares partition `queue`: used as it is when it exists, whatever
/// arguments it was declared with (by an older bridge, or one with other
/// flags), created with `retention` as its arguments when it does not.
///
/// Each step runs on a connection of its own from `connect`, closed after
/// it: a declare the broker refuses (NOT_FOUND from the passive declare of
/// a missing partition, PRECONDITION_FAILED when another bridge created it
/// meanwhile with other arguments) closes its channel, and lapin 4.12 keeps
/// such a channel counted against its connection's channels (measured: on a
/// node with `channel_max = 6`, about a dozen refused declares leave a
/// connection that cannot open any channel). The partition readers' and
/// publisher's connection never sees a refusal.
///
/// # Errors
/// When a connection fails or the broker refuses the queue otherwise.
pub async fn declare_partition<F, Fut>(
    connect: F,
    queue: ShortString,
    retention: &Retention,
) -> Result<(), lapin::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Connection, lapin::Error>>,
{
    let passive = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
    let create = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    match declare_once(connect().await?, queue.clone(), passive, FieldTable::default()).await {
        Err(error) if is_soft_error(&error, &AMQPSoftError::NOTFOUND) => {}
        exists_or_failed => return exists_or_failed,
    }
    match declare_once(connect().await?, queue.clone(), create, retention.creation_arguments()).await {
        Ok(()) => {
            let (max_age, max_bytes) = (retention.max_age.as_str(), retention.max_bytes);
            tracing::info!(%queue, %max_age, max_bytes, "created the partition (the broker had none: NOT_FOUND)");
            Ok(())
        }
        // Another bridge, with other flags, created it meanwhile: use it.
        Err(error) if is_soft_error(&error, &AMQPSoftError::PRECONDITIONFAILED) => {
            declare_once(connect().await?, queue, passive, FieldTable::default()).await
        }
        Err(error) => Err(error),
    }
}

/// One declare on `connection`, which it closes.
async fn declare_once(
    connection: Connection,
    queue: ShortString,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    let declared = async {
        let channel = connection.create_channel().await?;
        channel.queue_declare(queue, options, arguments).await?;
        // Closed before its connection: lapin logs a channel left open then.
        channel.close(200, "declared".into()).await
    }
    .await;
    // A connection that cannot be closed cleanly is dropped, which closes it.
    let _ = connection.close(200, "declared".into()).await;
    declared
}

/// Whether the broker answered with this channel error.
fn is_soft_error(error: &lapin::Error, soft: &AMQPSoftError) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(found) if found == soft))
}

// === The management API ===

/// RabbitMQ's management HTTP API, through which the bridge sets its policy.
/// Its `Debug` shows where it is, never the credentials.
#[derive(Clone)]
pub struct ManagementApi {
    host: String,
    port: u16,
    /// The API's path, ending in `/api`.
    api_path: String,
    /// `Basic ...`.
    authorization: String,
    /// `http://host:port/path`, for messages.
    shown: String,
}

impl fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementApi").field("url", &self.shown).finish_non_exhaustive()
    }
}

/// Checks a `--management-url`: `http://[user:password@]host[:port][/path]`.
///
/// # Errors
/// For anything else: another scheme (this build speaks plain HTTP to the
/// API), no host, a query or a fragment.
pub fn parse_management_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|error| format!("not a URL: {error}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "{}:// is not supported: give the management API's plain http:// address (e.g. http://rabbitmq:15672)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() || url.fragment().is_some() {
        return Err("expected http://[user:password@]host[:port][/path]".to_owned());
    }
    Ok(url)
}

impl ManagementApi {
    /// The API at `url` (as [`parse_management_url`] checked it), as the user
    /// the URL names, or else as the AMQP URL's user (`amqp_user`,
    /// `amqp_password`). `/api` is added to the URL's path unless it ends so.
    pub fn new(url: &url::Url, amqp_user: &str, amqp_password: &str) -> Self {
        let decoded = |part: &str| percent_decode_str(part).decode_utf8_lossy().into_owned();
        let (user, password) = if url.username().is_empty() {
            (amqp_user.to_owned(), amqp_password.to_owned())
        } else {
            (decoded(url.username()), decoded(url.password().unwrap_or_default()))
        };
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().unwrap_or(15672);
        let path = url.path().trim_end_matches('/');
        let api_path = if path.ends_with("/api") { path.to_owned() } else { format!("{path}/api") };
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let shown = format!("http://{}:{port}{api_path}", url.host_str().unwrap_or_default());
        Self { host, port, api_path, authorization: format!("Basic {token}"), shown }
    }

    /// Creates or updates the [`POLICY_NAME`] policy of `vhost` with
    /// `retention`; RabbitMQ applies it to every partition at once.
    ///
    /// # Errors
    /// When the API cannot be reached, breaks off, or answers with an error.
    pub async fn put_policy(&self, vhost: &str, retention: &Retention) -> Result<(), RetentionError> {
        let path = format!("{}/policies/{}/{POLICY_NAME}", self.api_path, utf8_percent_encode(vhost, NON_ALPHANUMERIC));
        let request = Request::put(path)
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(retention.policy().to_string())))
            .map_err(|error| self.failed(ApiFailure::Request(error)))?;
        let (status, body) = tokio::time::timeout(API_TIMEOUT, self.send(request))
            .await
            .map_err(|_| self.failed(ApiFailure::Timeout(API_TIMEOUT)))??;
        if status.is_success() {
            return Ok(());
        }
        let body = String::from_utf8_lossy(&body).chars().take(300).collect();
        Err(self.failed(ApiFailure::Refused { status, body }))
    }

    /// One request on a connection of its own; the status and the body.
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), RetentionError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| self.failed(ApiFailure::Unreachable(error)))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| self.failed(ApiFailure::Http(error)))?;
        let exchange = async move {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        // The connection ends once the exchange has dropped its sender.
        let (answer, closed) = tokio::join!(exchange, connection);
        let answer = answer.map_err(|error| self.failed(ApiFailure::Http(error)))?;
        if let Err(error) = closed {
            tracing::debug!(%error, "management API connection ended with an error after its answer");
        }
        Ok(answer)
    }

    fn failed(&self, failure: ApiFailure) -> RetentionError {
        RetentionError { api: self.shown.clone(), failure }
    }
}

/// Why the management API did not take the policy.
#[derive(Debug, thiserror::Error)]
#[error("management API {api}: {failure}")]
pub struct RetentionError {
    /// Where the API is (no credentials).
    pub api: String,
    /// What went wrong.
    #[source]
    pub failure: ApiFailure,
}

/// What went wrong with one request to the management API.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// No connection (refused, name not resolved).
    #[error("cannot connect: {0}")]
    Unreachable(std::io::Error),
    /// The HTTP exchange broke off.
    #[error("the exchange broke off: {0}")]
    Http(hyper::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be built (a host that is no header value).
    #[error("cannot build the request: {0}")]
    Request(http::Error),
    /// An answer with an error status: bad credentials (401), a user
    /// without the `policymaker` tag (401), a value RabbitMQ refuses (400).
    #[error("answered {status}: {body}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// The start of the body (RabbitMQ says why there).
        body: String,
    },
}

impl RetentionError {
    /// Whether trying again later may succeed: the API is down, slow or
    /// failing; not when it refuses the request itself.
    pub fn retryable(&self) -> bool {
        match &self.failure {
            ApiFailure::Refused { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
            ApiFailure::Request(_) => false,
            ApiFailure::Unreachable(_) | ApiFailure::Http(_) | ApiFailure::Timeout(_) => true,
        }
    }
}

// === Applying it ===

/// The [`POLICY_NAME`] policy of the bridge's vhost, and how to set it.
#[derive(Debug, Clone)]
pub struct Policy {
    retention: Retention,
    /// The AMQP URL's vhost: the partitions' and so the policy's.
    vhost: String,
    /// Where to set it from, when the bridge was given the API.
    api: Option<ManagementApi>,
}

impl Policy {
    /// `retention` for the vhost of `amqp_url`, set through the management
    /// API at `management_url` (as its user, else as the AMQP URL's) when
    /// there is one.
    pub fn new(retention: Retention, amqp_url: &str, management_url: Option<&url::Url>) -> Self {
        // An unusable URL fails the broker connection, which says why.
        let amqp = amqp_url.parse::<lapin::uri::AMQPUri>().unwrap_or_default();
        let user = &amqp.authority.userinfo;
        let api = management_url.map(|url| ManagementApi::new(url, &user.username, &user.password));
        Self { retention, vhost: amqp.vhost, api }
    }

    /// The `rabbitmqctl` command that sets this policy.
    pub fn rabbitmqctl_command(&self) -> String {
        self.retention.rabbitmqctl_command(&self.vhost)
    }

    /// Makes the retention every partition's: through the management API,
    /// trying again while it is unreachable or failing, until it is set or
    /// `shutdown`; without an API, or when it refuses, logs the `rabbitmqctl`
    /// command that does it. Serving does not wait for it: partitions keep
    /// their current retention meanwhile.
    pub async fn apply(&self, shutdown: &CancellationToken) {
        let command = self.rabbitmqctl_command();
        let (max_age, max_bytes) = (self.retention.max_age.as_str(), self.retention.max_bytes);
        let Some(api) = &self.api else {
            tracing::info!(
                %max_age, max_bytes, %command,
                "retention: partitions this bridge creates start with it; existing partitions follow it once this \
                 policy is set (no --management-url to set it from here: docs/design/rooms.md#retention)"
            );
            return;
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match api.put_policy(&self.vhost, &self.retention).await {
                Ok(()) => {
                    tracing::info!(policy = POLICY_NAME, %max_age, max_bytes, "retention policy set on every partition");
                    return;
                }
                Err(error) if error.retryable() => {
                    tracing::warn!(%error, "cannot set the retention policy yet; trying again");
                }
                Err(error) => {
                    tracing::error!(
                        %error, %command,
                        "the retention policy was refused: partitions keep their retention until it is set"
                    );
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(max_age: &str) -> Retention {
        Retention { max_age: max_age.parse().expect("valid"), max_bytes: 1_000_000, segment_bytes: 4096 }
    }

    #[test]
    fn max_age_reads_rabbitmq_syntax() {
        let days = |text: &str| text.parse::<MaxAge>().map(|age| age.duration().as_secs() / 86_400);
        assert_eq!(days("7D"), Ok(7));
        assert_eq!(days("1Y"), Ok(365));
        assert_eq!(days("2M"), Ok(60));
        assert_eq!("90s".parse::<MaxAge>().map(|age| age.duration()), Ok(Duration::from_secs(90)));
        for bad in ["", "D", "7", "7d", "7days", "0D", "-1D", "1.5h", "7日", " 7D"] {
            assert!(bad.parse::<MaxAge>().is_err(), "{bad:?} is refused");
        }
        assert_eq!("12h".parse::<MaxAge>().map(|age| age.to_string()).as_deref(), Ok("12h"));
    }

    #[test]
    fn the_policy_and_the_command_carry_the_same_values() {
        let retention = retention("12h");
        let definition = retention.policy_definition();
        assert_eq!(
            definition,
            serde_json::json!({"max-age": "12h", "max-length-bytes": 1_000_000, "stream-max-segment-size-bytes": 4096})
        );
        assert_eq!(retention.policy()["pattern"], r"^warren\.partition\.");
        assert_eq!(retention.policy()["apply-to"], "queues");
        assert_eq!(
            retention.rabbitmqctl_command("/"),
            format!(
                r"rabbitmqctl set_policy -p '/' warren-retention '^warren\.partition\.' '{definition}' --apply-to queues"
            )
        );
        assert!(retention.rabbitmqctl_command("it's").contains(r"-p 'it'\''s'"), "quoted for a shell");
        let arguments = retention.creation_arguments();
        let argument = |key: &str| arguments.inner().get(key).cloned();
        assert_eq!(argument("x-queue-type"), Some(AMQPValue::LongString("stream".into())));
        assert_eq!(argument("x-max-age"), Some(AMQPValue::LongString("12h".into())));
        assert_eq!(argument("x-max-length-bytes"), Some(AMQPValue::LongLongInt(1_000_000)));
    }

    #[test]
    fn the_management_url_gives_the_api_and_its_user() {
        let url = |text: &str| parse_management_url(text).expect("valid");
        let api = ManagementApi::new(&url("http://rabbitmq:15672"), "amqp-user", "amqp-pw");
        assert_eq!((api.host.as_str(), api.port, api.api_path.as_str()), ("rabbitmq", 15672, "/api"));
        let basic = |pair: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
        assert_eq!(api.authorization, basic("amqp-user:amqp-pw"), "the AMQP user when the URL names none");
        let own = ManagementApi::new(&url("http://ad%40min:p%3Aw@10.0.0.1/rabbit/api/"), "amqp-user", "amqp-pw");
        assert_eq!((own.port, own.api_path.as_str()), (80, "/rabbit/api"));
        assert_eq!(own.authorization, basic("ad@min:p:w"));
        assert!(!format!("{own:?}").contains("p:w") && !format!("{own:?}").contains("Basic"), "{own:?}");
        for bad in ["https://rabbitmq:15671", "rabbitmq:15672", "http://rabbitmq:15672/?x=1", "amqp://rabbitmq"] {
            assert!(parse_management_url(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn the_policy_goes_to_the_vhost_and_user_of_the_amqp_url() {
        let management = parse_management_url("http://rabbitmq:15672").expect("valid");
        let policy = Policy::new(retention("1h"), "amqp://chat:secret@rabbitmq:5672/chat%2Fprod", Some(&management));
        assert!(policy.rabbitmqctl_command().starts_with("rabbitmqctl set_policy -p 'chat/prod' warren-retention"));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("chat:secret"));
        assert_eq!(policy.api.as_ref().map(|api| api.authorization.as_str()), Some(basic.as_str()));
        let default = Policy::new(retention("1h"), "amqp://rabbitmq:5672/%2f", None);
        assert!(default.rabbitmqctl_command().contains("-p '/'") && default.api.is_none());
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        let error = |failure| RetentionError { api: "http://x:1/api".into(), failure };
        let refused = |status| error(ApiFailure::Refused { status, body: String::new() });
        assert!(refused(StatusCode::SERVICE_UNAVAILABLE).retryable());
        assert!(!refused(StatusCode::UNAUTHORIZED).retryable());
        assert!(!refused(StatusCode::BAD_REQUEST).retryable());
        let unreachable = error(ApiFailure::Unreachable(std::io::ErrorKind::ConnectionRefused.into()));
        assert!(unreachable.retryable());
        assert!(unreachable.to_string().starts_with("management API http://x:1/api: cannot connect"), "{unreachable}");
    }
}
