//! RabbitMQ instances and their AMQP URL.
//!
//! An instance is a RabbitMQ when a tag says `rabbitmq`, when its offering is
//! one of the usual RabbitMQ brokers, or when its `uri` is an `amqp://` or
//! `amqps://` URL (a user-provided service). Its URL is the first `amqps://`
//! among these fields, else the first `amqp://`:
//!
//! 1. `protocols["amqp+ssl"].uri` (Tanzu RabbitMQ with TLS),
//! 2. `uri` (every broker; CloudAMQP gives only this),
//! 3. `uris` (Tanzu RabbitMQ: one per node; the first is used),
//! 4. `protocols.amqp.uri` (Tanzu RabbitMQ).
//!
//! An `amqps://` URL is reached over TLS, with the roots of [`crate::tls`]
//! (docs/cloudfoundry.md#tls).

use url::Url;

use crate::vcap::Instance;

/// Offering labels of RabbitMQ brokers: Tanzu RabbitMQ (`p.rabbitmq`
/// on-demand, `p-rabbitmq` pre-provisioned), CloudAMQP, community brokers.
const LABELS: &[&str] = &["p.rabbitmq", "p-rabbitmq", "cloudamqp", "rabbitmq"];
const SCHEMES: &[&str] = &["amqp", "amqps"];

/// Whether `instance` is a RabbitMQ.
pub fn is_rabbitmq(instance: &Instance) -> bool {
    instance.is_a("rabbitmq", LABELS, SCHEMES)
}

/// The AMQP URL of a RabbitMQ instance.
///
/// # Errors
/// A message naming the field that is wrong, or saying none is there.
pub fn url(instance: &Instance) -> Result<Url, String> {
    let credentials = &instance.credentials;
    let candidates = [("protocols[\"amqp+ssl\"].uri", credentials.text(&["protocols", "amqp+ssl", "uri"]))]
        .into_iter()
        .chain([("uri", credentials.text(&["uri"]))])
        .chain(credentials.texts("uris").map(|uri| ("uris", Some(uri))))
        .chain([("protocols.amqp.uri", credentials.text(&["protocols", "amqp", "uri"]))]);
    let mut urls = Vec::new();
    for (field, uri) in candidates {
        let Some(uri) = uri else { continue };
        let url = Url::parse(uri).map_err(|_| format!("credentials.{field} is not a URL"))?;
        if SCHEMES.contains(&url.scheme()) && url.host_str().is_some() {
            urls.push(url);
        }
    }
    let tls = urls.iter().position(|url| url.scheme() == "amqps");
    match tls {
        Some(index) => Ok(urls.swap_remove(index)),
        None => urls.into_iter().next().ok_or_else(|| "credentials hold no amqp:// or amqps:// URI".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcap::parse;

    fn one(credentials: &str) -> Result<Url, String> {
        let document = format!(r#"{{"rabbitmq": [{{"name": "broker", "credentials": {credentials}}}]}}"#);
        url(&parse(&document).expect("valid")[0])
    }

    #[test]
    fn amqps_wins_wherever_it_is() {
        let url = one(r#"{"uri": "amqp://u:p@h/v", "uris": ["amqp://u:p@h/v", "amqps://u:p@h:5671/v"]}"#);
        assert_eq!(url.expect("usable").as_str(), "amqps://u:p@h:5671/v");
    }

    #[test]
    fn other_schemes_are_passed_over() {
        let url = one(r#"{"uri": "http://u:p@h:15672/api", "protocols": {"amqp": {"uri": "amqp://u:p@h/v"}}}"#);
        assert_eq!(url.expect("usable").as_str(), "amqp://u:p@h/v");
    }

    #[test]
    fn no_uri_is_an_error() {
        assert_eq!(one(r#"{"hostname": "h"}"#).expect_err("none"), "credentials hold no amqp:// or amqps:// URI");
        assert_eq!(one(r#"{"uri": "::"}"#).expect_err("bad"), "credentials.uri is not a URL");
    }
}
