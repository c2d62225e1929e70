//! Sessions in Redis, in the format of the npm packages `express-session` and
//! `connect-redis`, so that a Node app and Warren can share logins.
//!
//! - Redis key `sess:<sid>`, value JSON `{"cookie":{...},"user":"alice"}`,
//!   TTL = the cookie's max age.
//! - Cookie `jsessionid` (the name is configurable, as express-session's
//!   `name` option) = URL-encoded `s:<sid>.<sig>`, where `sig` is the
//!   unpadded base64 HMAC-SHA256 of `<sid>` keyed by the secret (exactly what
//!   `cookie-signature` computes).
//!
//! Every page load and `/session` call replaces the session id ("regenerate",
//! the seed's fix that moves balancer affinity to a live instance). The old id
//! is not deleted at once but given a short grace TTL, so that a request
//! already in flight with the old cookie is not bounced to the login page.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use rand::Rng;
use redis::AsyncCommands;

use crate::redis_client::SharedConnection;
use serde::{Deserialize, Serialize};

pub use self::signing::{Signer, is_cookie_name};

mod signing;

/// The cookie that carries the session, and that the balancer's affinity
/// keys on, unless configured otherwise (`--session-cookie-name`).
pub const DEFAULT_COOKIE_NAME: &str = "jsessionid";
/// How long a replaced session id keeps working.
pub const REGENERATE_GRACE: Duration = Duration::from_secs(10);
/// The Redis channel on which a logout is announced to every gateway.
pub const LOGOUT_CHANNEL: &str = "warren:logout";
/// Where a user's disconnect (server API) is announced, with the user name.
pub const DISCONNECT_CHANNEL: &str = "warren:disconnect";
/// Prefix of a user's session index: a sorted set of session ids by expiry
/// (ms), so that a user's sessions can be ended together.
const USER_INDEX_PREFIX: &str = "warren:user-sessions:";
const KEY_PREFIX: &str = "sess:";
const LOGIN_PREFIX: &str = "warren:login:";

/// Why a request has no usable session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session cookie.
    #[error("no session cookie")]
    NoCookie,
    /// The cookie is malformed or its signature does not match.
    #[error("invalid session cookie")]
    BadSignature,
    /// The cookie is valid but the session is gone (logged out or expired).
    #[error("session expired or logged out")]
    Unknown,
    /// Redis could not be asked.
    #[error("session store unavailable: {0}")]
    Store(String),
}

impl From<redis::RedisError> for SessionError {
    fn from(error: redis::RedisError) -> Self {
        Self::Store(error.to_string())
    }
}

/// A user name: 1-32 of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserName {
    type Error = &'static str;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if name.is_empty() || name.len() > 32 {
            return Err("the name must be 1 to 32 characters long");
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err("the name may contain only letters, digits, '_', '.' and '-'");
        }
        Ok(Self(name))
    }
}

impl From<UserName> for String {
    fn from(name: UserName) -> Self {
        name.0
    }
}

/// A session id whose cookie signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    fn generate() -> Self {
        // As express-session's uid-safe(24): 24 random bytes, base64url.
        let bytes: [u8; 24] = rand::rng().random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    fn key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.0)
    }
}

/// One login, across every id its session is given by regeneration: what a
/// logout or an expiry ends, on every socket opened under it.
///
/// Shared, not copied: every socket of the login holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginId(Arc<str>);

impl LoginId {
    fn generate() -> Self {
        let bytes: [u8; 18] = rand::rng().random();
        Self(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// The id as text (it is also the logout announcement's payload).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The login named by a logout announcement.
    pub fn from_announcement(payload: String) -> Self {
        Self(payload.into())
    }

    fn key(&self) -> String {
        format!("{LOGIN_PREFIX}{}", self.0)
    }
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Who is logged in.
    pub user: UserName,
    /// The login it belongs to.
    pub login: LoginId,
}

/// The stored record, as express-session writes it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    cookie: CookieRecord,
    user: Option<UserName>,
    /// Warren's login id; absent in sessions a Node app created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    login: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CookieRecord {
    original_max_age: Option<u64>,
    expires: Option<String>,
    #[serde(default)]
    secure: bool,
    #[serde(default)]
    http_only: bool,
    #[serde(default = "root_path")]
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    same_site: Option<String>,
}

fn root_path() -> String {
    "/".to_owned()
}

/// The session store: Redis plus the cookie rules.
#[derive(Debug, Clone)]
pub struct SessionStore {
    redis: SharedConnection,
    signer: Signer,
    max_age: Duration,
    secure: bool,
    cookie_name: Arc<str>,
}

impl SessionStore {
    /// A store on `redis`, signing with `signer`, whose cookie is
    /// [`DEFAULT_COOKIE_NAME`].
    pub fn new(redis: SharedConnection, signer: Signer, max_age: Duration, secure: bool) -> Self {
        Self { redis, signer, max_age, secure, cookie_name: DEFAULT_COOKIE_NAME.into() }
    }

    /// The same store with its cookie named `name` (an
    /// [`is_cookie_name`] token, checked by the config). Names are
    /// case-sensitive: a cookie named otherwise is not a session.
    #[must_use]
    pub fn with_cookie_name(mut self, name: &str) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// The signed session id in the request's cookies.
    ///
    /// # Errors
    /// `NoCookie` or `BadSignature`.
    pub fn id_from_headers(&self, headers: &HeaderMap) -> Result<SessionId, SessionError> {
        let mut found = false;
        for header in headers.get_all(http::header::COOKIE) {
            let Ok(header) = header.to_str() else { continue };
            for cookie in cookie::Cookie::split_parse(header).flatten() {
                if cookie.name() == &*self.cookie_name {
                    found = true;
                    if let Ok(id) = self.signer.verify(cookie.value()) {
                        return Ok(id);
                    }
                }
            }
        }
        Err(if found { SessionError::BadSignature } else { SessionError::NoCookie })
    }

    /// The logged-in session of a request.
    ///
    /// # Errors
    /// Any [`SessionError`]: no cookie, bad signature, unknown or expired
    /// session, Redis down.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Session, SessionError> {
        let id = self.id_from_headers(headers)?;
        let raw: Option<String> = timed("get", async {
            let mut redis = self.redis.clone();
            Ok(redis.get(id.key()).await?)
        })
        .await?;
        let record: Record = raw.and_then(|raw| serde_json::from_str(&raw).ok()).ok_or(SessionError::Unknown)?;
        if record.is_expired() {
            return Err(SessionError::Unknown);
        }
        let user = record.user.ok_or(SessionError::Unknown)?;
        let login = match record.login {
            Some(login) => LoginId(login.into()),
            // A session made elsewhere: its id stands for the login, whose
            // key is made now so that expiry checks find it.
            None => {
                let login = LoginId(id.0.as_str().into());
                self.mark_login(&login).await?;
                login
            }
        };
        Ok(Session { id, user, login })
    }

    /// A fresh session for `user` (a new id every time: no fixation).
    ///
    /// # Errors
    /// `Store` when Redis fails.
    pub async fn create(&self, user: UserName) -> Result<Session, SessionError> {
        let session = Session { id: SessionId::generate(), user, login: LoginId::generate() };
        self.save(&session).await?;
        Ok(session)
    }

    /// Replaces a session's id, keeping its user; the old id keeps working
    /// for [`REGENERATE_GRACE`].
    ///
    /// # Errors
    /// `Store` when Redis fails.
    pub async fn regenerate(&self, old: &Session) -> Result<Session, SessionError> {
        let session = Session { id: SessionId::generate(), user: old.user.clone(), login: old.login.clone() };
        self.save(&session).await?;
        let grace = i64::try_from(REGENERATE_GRACE.as_secs()).unwrap_or(10);
        // A plain EXPIRE is fine: the grace is far shorter than any session
        // lifetime.
        let until = unix_millis(SystemTime::now()) + REGENERATE_GRACE.as_millis() as u64;
        timed("expire", async {
            let (mut first, mut second) = (self.redis.clone(), self.redis.clone());
            let expire = redis::cmd("EXPIRE").arg(old.id.key()).arg(grace).clone();
            let index = redis::cmd("ZADD").arg(user_index_key(&old.user)).arg("XX").arg(until).arg(&old.id.0).clone();
            tokio::try_join!(expire.exec_async(&mut first), index.exec_async(&mut second))?;
            Ok(())
        })
        .await?;
        Ok(session)
    }

    /// Ends a login: deletes the session and the login, and announces it so
    /// that every gateway closes the sockets opened under it.
    ///
    /// # Errors
    /// `Store` when Redis fails.
    pub async fn log_out(&self, session: &Session) -> Result<(), SessionError> {
        timed("logout", async {
            let mut redis = self.redis.clone();
            // Deleted before it is announced: a gateway that hears it and
            // asks finds the login gone.
            let _: u64 = redis.del(&[session.id.key(), session.login.key()]).await?;
            let _: u64 = redis.publish(LOGOUT_CHANNEL, session.login.as_str()).await?;
            Ok(())
        })
        .await
    }

    /// Which of these logins still exist (not logged out, not expired).
    ///
    /// # Errors
    /// `Store` when Redis fails.
    pub async fn logins_alive(&self, logins: &[LoginId]) -> Result<Vec<bool>, SessionError> {
        if logins.is_empty() {
            return Ok(Vec::new());
        }
        timed("exists", async {
            let mut redis = self.redis.clone();
            // One MGET rather than an EXISTS each: redis-rs splits it by
            // slot on a cluster, where a pipeline must keep to one.
            let keys: Vec<String> = logins.iter().map(LoginId::key).collect();
            let found: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut redis).await?;
            Ok(found.iter().map(Option::is_some).collect())
        })
        .await
    }

    /// Makes sure a login's key exists (for sessions made elsewhere).
    async fn mark_login(&self, login: &LoginId) -> Result<(), SessionError> {
        timed("set", async {
            let mut redis = self.redis.clone();
            let _: () = redis::cmd("SET")
                .arg(login.key())
                .arg(1)
                .arg("EX")
                .arg(self.max_age.as_secs().max(1))
                .arg("NX")
                .query_async(&mut redis)
                .await?;
            Ok(())
        })
        .await
    }

    /// Deletes a session id (a login replaced by a new one).
    ///
    /// # Errors
    /// `Store` when Redis fails.
    pub async fn destroy(&self, id: &SessionId) -> Result<(), SessionError> {
        timed("del", async {
            let mut redis = self.redis.clone();
            let _: u64 = redis.del(id.key()).await?;
            Ok(())
        })
        .await
    }

    async fn save(&self, session: &Session) -> Result<(), SessionError> {
        let record = Record::new(session, self.max_age, self.secure);
        let json = serde_json::to_string(&record).map_err(|error| SessionError::Store(error.to_string()))?;
        let ttl = self.max_age.as_secs().max(1);
        let index = user_index_key(&session.user);
        let now = unix_millis(SystemTime::now());
        timed("set", async {
            // A pipeline per key, sent together: on a cluster each key may
            // live on another node.
            let (mut record, mut login, mut user) = (self.redis.clone(), self.redis.clone(), self.redis.clone());
            let set_record = redis::pipe().set_ex(session.id.key(), json, ttl).clone();
            let set_login = redis::pipe().set_ex(session.login.key(), 1, ttl).clone();
            let index_session = redis::pipe()
                .zadd(&index, &session.id.0, now + ttl * 1000)
                .zrembyscore(&index, "-inf", now)
                .expire(&index, i64::try_from(ttl).unwrap_or(i64::MAX))
                .clone();
            tokio::try_join!(
                set_record.exec_async(&mut record),
                set_login.exec_async(&mut login),
                index_session.exec_async(&mut user)
            )?;
            Ok(())
        })
        .await
    }

    /// Ends every session of `user` that this store made (as a logout does
    /// for one: the sessions and their logins are deleted, and each login's
    /// end is announced, so its sockets close on every gateway). Returns how
    /// many logins ended. Sessions made elsewhere (a Node app sharing the
    /// store) are not in the user's index and are not ended.
    ///
    /// # Errors
    /// `Store` when Redis fails.
    pub async fn end_sessions_of(&self, user: &UserName) -> Result<usize, SessionError> {
        let index = user_index_key(user);
        timed("end_sessions", async {
            let mut redis = self.redis.clone();
            let ids: Vec<String> = redis.zrange(&index, 0, -1).await?;
            let keys: Vec<String> = ids.iter().map(|id| format!("{KEY_PREFIX}{id}")).collect();
            let records: Vec<Option<String>> = if keys.is_empty() {
                Vec::new()
            } else {
                redis::cmd("MGET").arg(&keys).query_async(&mut redis).await?
            };
            let logins: HashSet<LoginId> = records
                .iter()
                .flatten()
                .filter_map(|json| serde_json::from_str::<Record>(json).ok()?.login)
                .map(|login| LoginId(login.into()))
                .collect();
            // One DEL (split by slot on a cluster), then the announcements.
            let mut doomed = keys;
            doomed.push(index.clone());
            doomed.extend(logins.iter().map(LoginId::key));
            let _: u64 = redis.del(&doomed).await?;
            let mut announcements = redis::pipe();
            for login in &logins {
                announcements.publish(LOGOUT_CHANNEL, login.as_str()).ignore();
            }
            if !logins.is_empty() {
                announcements.exec_async(&mut redis).await?;
            }
            Ok(logins.len())
        })
        .await
    }

    /// Announces that every socket of `user` must close, on every gateway
    /// (the server API's disconnect).
    ///
    /// # Errors
    /// `Store` when Redis fails.
    pub async fn announce_disconnect(&self, user: &UserName) -> Result<(), SessionError> {
        timed("publish", async {
            let mut redis = self.redis.clone();
            let _: u64 = redis.publish(DISCONNECT_CHANNEL, user.as_str()).await?;
            Ok(())
        })
        .await
    }

    /// The `Set-Cookie` value that hands `id` to the browser.
    pub fn set_cookie(&self, id: &SessionId) -> String {
        self.cookie(self.signer.cookie_value(id), self.max_age).to_string()
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie(&self) -> String {
        self.cookie(String::new(), Duration::ZERO).to_string()
    }

    /// The session cookie: script-proof (`HttpOnly`), not sent with other
    /// sites' requests (`SameSite=Lax`), `Secure` behind TLS.
    fn cookie(&self, value: String, max_age: Duration) -> cookie::Cookie<'static> {
        let seconds = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        cookie::Cookie::build((self.cookie_name.to_string(), value))
            .path("/")
            .max_age(cookie::time::Duration::seconds(seconds))
            .http_only(true)
            .same_site(cookie::SameSite::Lax)
            .secure(self.secure)
            .build()
    }

    /// Whether Redis answers (readiness).
    pub async fn ping(&self) -> Result<(), SessionError> {
        let mut redis = self.redis.clone();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }
}

fn user_index_key(user: &UserName) -> String {
    format!("{USER_INDEX_PREFIX}{}", user.as_str())
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs one session store call, recording its latency and failure.
async fn timed<T>(
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    let started = std::time::Instant::now();
    let result = call.await;
    crate::metrics::redis_call(operation, started.elapsed(), result.is_ok());
    result
}

impl Record {
    fn new(session: &Session, max_age: Duration, secure: bool) -> Self {
        let expires = SystemTime::now() + max_age;
        Self {
            cookie: CookieRecord {
                original_max_age: u64::try_from(max_age.as_millis()).ok(),
                expires: Some(humantime::format_rfc3339_millis(expires).to_string()),
                secure,
                http_only: true,
                path: root_path(),
                same_site: Some("lax".to_owned()),
            },
            user: Some(session.user.clone()),
            login: Some(session.login.0.to_string()),
        }
    }

    fn is_expired(&self) -> bool {
        let expires = self.cookie.expires.as_deref().and_then(|at| humantime::parse_rfc3339_weak(at).ok());
        expires.is_some_and(|at| at <= SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_name_is_configurable_and_exact() {
        let target = crate::redis_client::Target::node("redis://127.0.0.1:1");
        let redis = crate::redis_client::Redis::open(&target, &platform::tls::Files::default()).expect("url");
        let signer = Signer::new("secret");
        let store = SessionStore::new(SharedConnection::new(redis), signer.clone(), Duration::from_secs(60), false)
            .with_cookie_name("JSESSIONID");
        let id = SessionId::generate();
        let value = signer.cookie_value(&id);
        let with = |cookie: String| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::COOKIE, cookie.parse().expect("a header value"));
            headers
        };
        assert_eq!(store.id_from_headers(&with(format!("JSESSIONID={value}"))).ok(), Some(id.clone()));
        let lower = store.id_from_headers(&with(format!("jsessionid={value}")));
        assert!(matches!(lower, Err(SessionError::NoCookie)), "names are case-sensitive");
        assert!(store.set_cookie(&id).starts_with(&format!("JSESSIONID={value}; ")));
        assert!(store.clear_cookie().starts_with("JSESSIONID=; "));
        for (set, max_age) in [(store.set_cookie(&id), "Max-Age=60"), (store.clear_cookie(), "Max-Age=0")] {
            let attributes: Vec<&str> = set.split("; ").skip(1).collect();
            for wanted in ["HttpOnly", "SameSite=Lax", "Path=/", max_age] {
                assert!(attributes.contains(&wanted), "{wanted} in {set}");
            }
            assert!(!attributes.contains(&"Secure"), "not Secure without TLS: {set}");
        }
        let secure = SessionStore::new(store.redis.clone(), signer, Duration::from_secs(60), true);
        assert!(
            secure.set_cookie(&id).split("; ").any(|a| a == "Secure") && secure.clear_cookie().contains("; Secure")
        );
        assert!(
            is_cookie_name("JSESSIONID") && !is_cookie_name("a b") && !is_cookie_name("a=b") && !is_cookie_name("")
        );
    }

    #[test]
    fn user_names() {
        assert!(UserName::try_from("alice.b-c_9".to_owned()).is_ok());
        assert!(UserName::try_from(String::new()).is_err());
        assert!(UserName::try_from("x".repeat(33)).is_err());
        assert!(UserName::try_from("bad name".to_owned()).is_err());
        assert!(UserName::try_from("<script>".to_owned()).is_err());
    }

    #[test]
    fn records_round_trip_and_expire() {
        let user = UserName::try_from("alice".to_owned()).expect("valid");
        let session = Session { id: SessionId::generate(), user, login: LoginId::generate() };
        let record = Record::new(&session, Duration::from_secs(60), false);
        let json = serde_json::to_string(&record).expect("serializes");
        assert!(json.contains(r#""user":"alice""#) && json.contains(r#""httpOnly":true"#));
        let back: Record = serde_json::from_str(&json).expect("parses");
        assert!(!back.is_expired());
        let old: Record = serde_json::from_str(
            r#"{"cookie":{"originalMaxAge":1,"expires":"2001-01-01T00:00:00.000Z","httpOnly":true,"path":"/"},"user":"bob"}"#,
        )
        .expect("parses");
        assert!(old.is_expired());
    }
}
