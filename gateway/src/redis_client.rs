//! The one place the gateway's Redis client is made. Sessions (through a
//! pool), presence and the logout subscription all connect with it: one URL,
//! one set of TLS settings.
//!
//! A `rediss://` URL is reached over TLS (rustls with ring). redis-rs
//! replaces the system's roots with the ones it is given, so it is given the
//! system's and those of `--tls-ca-file` together ([`platform::tls`]), and
//! the client certificate when one is set. A `redis://` URL ignores the TLS
//! settings, with a warning. (redis-rs still reads the system store at each
//! new connection and refuses to connect when that reports an error: the
//! warnings logged at start-up about the store say why.)

use deadpool_redis::{Manager, Pool, Runtime};
use platform::tls::{Files, Tls};
use redis::{ClientTlsConfig, TlsCertificates};

use crate::error::RunError;

/// The Redis client for `url`, over TLS with `files` when the URL asks for it.
///
/// # Errors
/// Unusable TLS files ([`platform::tls::TlsError`]) or an unusable URL.
pub fn open(url: &str, files: &Files) -> Result<redis::Client, RunError> {
    let Some(tls) = platform::tls::for_url(url, files)? else {
        if !files.is_empty() {
            tracing::warn!("--tls-* files given but the Redis URL is not rediss://: they are not used");
        }
        return Ok(redis::Client::open(url)?);
    };
    for problem in tls.problems() {
        tracing::warn!(%problem, "system certificate store");
    }
    tracing::info!(trust = %tls, "Redis over TLS");
    Ok(redis::Client::build_with_tls(url, certificates(&tls))?)
}

/// A connection pool on `client` (its address and TLS settings).
///
/// # Errors
/// When the pool cannot be built.
pub fn pool(client: &redis::Client) -> Result<Pool, RunError> {
    // Not `deadpool_redis::Config`: its copy of the connection info has no
    // room for TLS parameters; the manager takes redis-rs' own.
    let manager = Manager::new(client.get_connection_info().clone())?;
    Ok(Pool::builder(manager).runtime(Runtime::Tokio1).build()?)
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

    #[test]
    fn plain_urls_make_plain_clients() {
        let client = open("redis://127.0.0.1:6379", &Files::default()).expect("a plain URL");
        assert!(matches!(client.get_connection_info().addr(), redis::ConnectionAddr::Tcp(..)));
        assert!(pool(&client).is_ok());
    }

    #[test]
    fn rediss_urls_keep_their_tls_settings_through_the_pool() {
        let client = open("rediss://127.0.0.1:6380", &Files::default()).expect("system roots");
        let info = client.get_connection_info().clone();
        assert!(matches!(info.addr(), redis::ConnectionAddr::TcpTls { tls_params: Some(_), .. }), "{info:?}");
        // What the pool's manager does with it: `Client::open` keeps it as is.
        let reopened = redis::Client::open(info).expect("reopens");
        let addr = reopened.get_connection_info().addr();
        assert!(matches!(addr, redis::ConnectionAddr::TcpTls { tls_params: Some(_), .. }), "{addr:?}");
    }

    #[test]
    fn a_missing_ca_file_is_an_error() {
        let files = Files { ca_file: Some("/nowhere/ca.pem".into()), ..Files::default() };
        let error = open("rediss://127.0.0.1:6380", &files).expect_err("no such file");
        assert!(error.to_string().contains("--tls-ca-file /nowhere/ca.pem"), "{error}");
        assert!(open("redis://127.0.0.1:6379", &files).is_ok(), "not read for a plain URL");
    }
}
