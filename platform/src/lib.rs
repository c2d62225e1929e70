//! Credentials from the platform Warren runs on. On Cloud Foundry a bound
//! service instance reaches the app as an entry of the `VCAP_SERVICES`
//! environment variable; this crate finds the Redis (gateway) and the
//! RabbitMQ (bridge) among them and turns their credentials into the URL the
//! binaries would otherwise be given by flag. The one place both read them.
//!
//! - [`vcap`]: the `VCAP_SERVICES` document and the choice of one instance.
//! - [`redis`]: which instances are Redis, and their URL (`redis://`, `rediss://`).
//! - [`rabbitmq`]: which instances are RabbitMQ, and their URL (`amqp://`, `amqps://`).
//! - [`error`]: what can be wrong with the document or an instance.
//! - [`tls`]: TLS to those services: the roots trusted (the system's and an
//!   extra CA file) and the client certificate shown, for both binaries.
//!
//! Passwords stay inside [`Binding::url`]: the binding's `Debug` hides them,
//! errors never quote a credential, and [`Service`] (what a binary logs) holds
//! the instance's name and host only. The precedence (flag, then environment
//! variable, then `VCAP_SERVICES`, then the default) is the binaries' own.

pub mod error;
pub mod rabbitmq;
pub mod redis;
pub mod tls;
pub mod vcap;

use std::fmt;

use url::Url;

pub use crate::error::Error;

/// The environment variable Cloud Foundry puts the bound services in.
pub const VCAP_SERVICES: &str = "VCAP_SERVICES";

/// The kind of service looked for, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Redis (the gateway's sessions and presence).
    Redis,
    /// A RabbitMQ (the bridge's streams).
    RabbitMq,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis => "Redis",
            Self::RabbitMq => "RabbitMQ",
        })
    }
}

/// The bound service instance a URL was taken from: what may be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The instance's name (`cf create-service ... NAME`).
    pub name: String,
    /// The offering's label (`p.redis`, `cloudamqp`, `user-provided`, ...).
    pub label: String,
    /// The host the URL points at.
    pub host: String,
    /// Whether the URL asks for TLS (`rediss://`, `amqps://`).
    pub tls: bool,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({}) at {}{}", self.name, self.label, self.host, if self.tls { " over TLS" } else { "" })
    }
}

/// A URL found in `VCAP_SERVICES`, with the instance it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    url: Url,
    service: Service,
}

impl Binding {
    fn new(url: Url, name: &str, label: &str) -> Self {
        let tls = tls::is_tls_url(url.as_str());
        let service = Service {
            name: name.to_owned(),
            label: label.to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            tls,
        };
        Self { url, service }
    }

    /// The URL, password included: give it to the client library, never to a log.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The instance it came from.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("REDACTED"));
        }
        f.debug_struct("Binding").field("url", &shown.as_str()).field("service", &self.service).finish()
    }
}

/// The Redis bound to the app, when exactly one is.
///
/// # Errors
/// A malformed document, several Redis instances, or one whose credentials
/// hold no usable address.
pub fn redis(vcap_services: &str) -> Result<Option<Binding>, Error> {
    find(vcap_services, Kind::Redis, redis::is_redis, redis::url)
}

/// The RabbitMQ bound to the app, when exactly one is.
///
/// # Errors
/// A malformed document, several RabbitMQ instances, or one whose
/// credentials hold no AMQP URI.
pub fn rabbitmq(vcap_services: &str) -> Result<Option<Binding>, Error> {
    find(vcap_services, Kind::RabbitMq, rabbitmq::is_rabbitmq, rabbitmq::url)
}

/// Parses a binary's command line and environment like
/// [`clap::Parser::try_parse_from`]; then, when the URL argument `url_arg`
/// (its field name) was left at its default, looks for the service `find`
/// picks in `vcap_services` (Cloud Foundry's `VCAP_SERVICES`): a flag or a
/// variable always wins over a binding.
///
/// # Errors
/// clap's error for a bad command line, or for a `VCAP_SERVICES` whose
/// service cannot be used (several bound, no usable address).
pub fn parse_with_binding<C, I, T>(
    args: I,
    vcap_services: Option<&str>,
    url_arg: &str,
    find: fn(&str) -> Result<Option<Binding>, Error>,
) -> Result<(C, Option<Binding>), clap::Error>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = C::command().try_get_matches_from(args)?;
    let config = C::from_arg_matches(&matches)?;
    let defaulted = matches.value_source(url_arg) == Some(clap::parser::ValueSource::DefaultValue);
    let binding = match vcap_services.filter(|document| defaulted && !document.trim().is_empty()) {
        Some(document) => find(document)
            .map_err(|error| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{error}\n")))?,
        None => None,
    };
    Ok((config, binding))
}

fn find(
    document: &str,
    kind: Kind,
    matches: fn(&vcap::Instance) -> bool,
    url: fn(&vcap::Instance) -> Result<Url, String>,
) -> Result<Option<Binding>, Error> {
    let instances = vcap::parse(document)?;
    let Some(instance) = vcap::the_one(&instances, kind, matches)? else {
        return Ok(None);
    };
    let url = url(instance).map_err(|problem| Error::Credentials { kind, name: instance.name.clone(), problem })?;
    Ok(Some(Binding::new(url, &instance.name, &instance.label)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let url = Url::parse("redis://:s3cret@cache.internal:6379").expect("valid");
        let binding = Binding::new(url, "sessions", "p.redis");
        let shown = format!("{binding:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("REDACTED") && shown.contains("cache.internal"), "{shown}");
        assert_eq!(binding.url(), "redis://:s3cret@cache.internal:6379");
        assert_eq!(binding.service().to_string(), "\"sessions\" (p.redis) at cache.internal");
    }

    #[test]
    fn nothing_bound_is_no_binding() {
        assert_eq!(redis("{}").expect("valid"), None);
        assert_eq!(rabbitmq("{}").expect("valid"), None);
    }
}
