//! Redis instances and their URL.
//!
//! An instance is a Redis when a tag says `redis`, when its offering is one
//! of the usual Redis brokers, or when its `uri` is a `redis://`/`rediss://`
//! URL (a user-provided service). Its URL is, in order:
//!
//! 1. `credentials.uri`, as given;
//! 2. `host` (or `hostname`), `password`, `username` when present, and:
//!    - `tls_port` (Redis for Tanzu with TLS, Redis Cloud): `rediss://` on it;
//!    - else `tls_enabled` or `tls` true: `rediss://` on `port`;
//!    - else `redis://` on `port` (6379 when absent).
//!
//! TLS is preferred whenever the broker offers it: a `rediss://` URL is
//! reached over TLS, with the roots of [`crate::tls`] (docs/cloudfoundry.md#tls).

use std::net::Ipv6Addr;

use url::Url;

use crate::vcap::Instance;

/// Offering labels of Redis brokers: Redis for VMware Tanzu (`p.redis`
/// on-demand, `p-redis` shared-VM), community brokers, Redis Cloud.
const LABELS: &[&str] = &["p.redis", "p-redis", "redis", "rediscloud"];
const SCHEMES: &[&str] = &["redis", "rediss"];
const DEFAULT_PORT: u16 = 6379;

/// Whether `instance` is a Redis.
pub fn is_redis(instance: &Instance) -> bool {
    instance.is_a("redis", LABELS, SCHEMES)
}

/// The URL of a Redis instance.
///
/// # Errors
/// A message naming the fields that are missing or wrong.
pub fn url(instance: &Instance) -> Result<Url, String> {
    let credentials = &instance.credentials;
    if let Some(uri) = credentials.text(&["uri"]) {
        let url = Url::parse(uri).map_err(|_| "credentials.uri is not a URL".to_owned())?;
        if !SCHEMES.contains(&url.scheme()) || url.host_str().is_none() {
            return Err(format!("credentials.uri is a {}:// URL, not redis:// or rediss://", url.scheme()));
        }
        return Ok(url);
    }
    let host = credentials
        .text(&["host"])
        .or_else(|| credentials.text(&["hostname"]))
        .ok_or("credentials have neither uri nor host (or hostname)")?;
    let (scheme, port) = match credentials.port("tls_port") {
        Some(tls_port) => ("rediss", tls_port),
        None if credentials.flag("tls_enabled") || credentials.flag("tls") => {
            ("rediss", credentials.port("port").unwrap_or(DEFAULT_PORT))
        }
        None => ("redis", credentials.port("port").unwrap_or(DEFAULT_PORT)),
    };
    // An IPv6 address goes in brackets, as in any URL.
    let host = if host.parse::<Ipv6Addr>().is_ok() { format!("[{host}]") } else { host.to_owned() };
    let mut url = Url::parse(&format!("{scheme}://redis")).map_err(|e| e.to_string())?;
    url.set_host(Some(&host)).map_err(|_| "credentials.host is not a host name or address".to_owned())?;
    let _ = url.set_port(Some(port));
    if let Some(username) = credentials.text(&["username"]) {
        let _ = url.set_username(username);
    }
    if let Some(password) = credentials.text(&["password"]) {
        let _ = url.set_password(Some(password));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcap::parse;

    fn one(credentials: &str) -> Result<Url, String> {
        let document = format!(r#"{{"redis": [{{"name": "cache", "credentials": {credentials}}}]}}"#);
        url(&parse(&document).expect("valid")[0])
    }

    #[test]
    fn passwords_are_percent_encoded() {
        let url = one(r#"{"host": "10.0.0.5", "port": 6380, "password": "p@ss:/w#rd"}"#).expect("usable");
        assert_eq!(url.as_str(), "redis://:p%40ss%3A%2Fw%23rd@10.0.0.5:6380");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let url = one(r#"{"host": "fd00::5", "password": "x"}"#).expect("usable");
        assert_eq!(url.as_str(), "redis://:x@[fd00::5]:6379");
    }

    #[test]
    fn unusable_credentials_say_which_field() {
        assert_eq!(
            one(r#"{"port": 6379}"#).expect_err("no host"),
            "credentials have neither uri nor host (or hostname)"
        );
        assert!(one(r#"{"uri": "http://h"}"#).expect_err("scheme").contains("http://"));
        assert!(one(r#"{"uri": "not a url with s3cret"}"#).expect_err("garbage").ends_with("is not a URL"));
    }
}
