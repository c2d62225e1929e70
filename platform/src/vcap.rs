//! The `VCAP_SERVICES` document: a JSON object whose keys are offering labels
//! and whose values list the bound instances of that offering, each with its
//! `name`, `label`, `tags` and broker-specific `credentials`.
//!
//! ```json
//! {"p.redis": [{"name": "sessions", "label": "p.redis", "tags": ["redis"],
//!               "credentials": {"host": "10.0.8.4", "port": 6379, "password": "..."}}]}
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Error, Kind};

/// One bound service instance.
#[derive(Debug, Deserialize)]
pub struct Instance {
    /// The instance's name.
    #[serde(default)]
    pub name: String,
    /// The offering's label (the document's key when the entry has none).
    #[serde(default)]
    pub label: String,
    /// Tags given by the offering or by `cf create-user-provided-service -t`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The broker's credentials, whatever their shape.
    #[serde(default)]
    pub credentials: Credentials,
}

impl Instance {
    /// Whether one of its tags is `tag`, ignoring case.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }

    /// Whether its label is one of `labels`.
    pub fn has_label(&self, labels: &[&str]) -> bool {
        labels.contains(&self.label.as_str())
    }

    /// Whether it is a service of one kind: tagged `tag`, offered under one
    /// of `labels`, or with a `credentials.uri` in one of `schemes`.
    pub fn is_a(&self, tag: &str, labels: &[&str], schemes: &[&str]) -> bool {
        self.has_tag(tag)
            || self.has_label(labels)
            || self.credentials.text(&["uri"]).and_then(scheme_of).is_some_and(|s| schemes.contains(&s.as_str()))
    }
}

/// A broker's credentials object. Its `Debug` shows the field names only.
#[derive(Default, Deserialize)]
#[serde(transparent)]
pub struct Credentials(Map<String, Value>);

impl Credentials {
    /// A non-empty string at `path` (`["protocols", "amqp", "uri"]`).
    pub fn text(&self, path: &[&str]) -> Option<&str> {
        self.get(path)?.as_str().filter(|s| !s.is_empty())
    }

    /// A port at `key`: a number, or a string of digits (Redis Cloud).
    pub fn port(&self, key: &str) -> Option<u16> {
        match self.get(&[key])? {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Whether `key` is `true` or `"true"`.
    pub fn flag(&self, key: &str) -> bool {
        match self.get(&[key]) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    /// The strings of the array at `key` (`uris`).
    pub fn texts(&self, key: &str) -> impl Iterator<Item = &str> {
        self.get(&[key]).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
    }

    fn get(&self, path: &[&str]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        rest.iter().try_fold(self.0.get(*first)?, |value, key| value.get(key))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Every instance in the document, offering by offering.
///
/// # Errors
/// [`Error::Document`] when it is not an object of instance lists.
pub fn parse(document: &str) -> Result<Vec<Instance>, Error> {
    let offerings: BTreeMap<String, Vec<Instance>> = serde_json::from_str(document)?;
    Ok(offerings
        .into_iter()
        .flat_map(|(label, instances)| {
            instances.into_iter().map(move |mut instance| {
                if instance.label.is_empty() {
                    instance.label.clone_from(&label);
                }
                instance
            })
        })
        .collect())
}

/// The one instance that `matches`, if any.
///
/// # Errors
/// [`Error::Ambiguous`] when several do.
pub fn the_one(instances: &[Instance], kind: Kind, matches: fn(&Instance) -> bool) -> Result<Option<&Instance>, Error> {
    let found: Vec<&Instance> = instances.iter().filter(|i| matches(i)).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(Error::Ambiguous {
            kind,
            count: many.len(),
            names: many.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// The scheme of a URI, lower-cased, if it looks like one.
pub fn scheme_of(uri: &str) -> Option<String> {
    uri.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_key_when_missing() {
        let instances =
            parse(r#"{"user-provided": [{"name": "cache", "credentials": {"uri": "redis://h"}}]}"#).expect("valid");
        assert_eq!(instances[0].label, "user-provided");
        assert_eq!(instances[0].credentials.text(&["uri"]), Some("redis://h"));
    }

    #[test]
    fn credentials_read_ports_and_flags_of_either_type() {
        let instances = parse(
            r#"{"x": [{"name": "a", "credentials": {"port": "18888", "tls_port": 16379,
                 "tls_enabled": "TRUE", "ssl": false, "protocols": {"amqp": {"uri": "amqp://h"}}}}]}"#,
        )
        .expect("valid");
        let credentials = &instances[0].credentials;
        assert_eq!(credentials.port("port"), Some(18888));
        assert_eq!(credentials.port("tls_port"), Some(16379));
        assert!(credentials.flag("tls_enabled") && !credentials.flag("ssl") && !credentials.flag("missing"));
        assert_eq!(credentials.text(&["protocols", "amqp", "uri"]), Some("amqp://h"));
        assert_eq!(format!("{credentials:?}"), r#"{"port", "protocols", "ssl", "tls_enabled", "tls_port"}"#);
    }

    #[test]
    fn malformed_documents_report_a_position_only() {
        let error = parse(r#"{"p.redis": [{"name": "a", "tags": "hunter2"}]}"#).expect_err("tags must be a list");
        let message = error.to_string();
        assert!(message.contains("line 1") && !message.contains("hunter2"), "{message}");
        assert!(parse("not json").is_err());
        assert!(parse(r#"["p.redis"]"#).is_err());
    }

    #[test]
    fn two_matches_are_ambiguous() {
        let instances = parse(r#"{"p.redis": [{"name": "a"}, {"name": "b"}]}"#).expect("valid");
        let error = the_one(&instances, Kind::Redis, |i| i.has_label(&["p.redis"])).expect_err("two");
        assert_eq!(
            error.to_string(),
            "2 Redis services are bound (a, b): bind only one, or give the URL by flag or environment"
        );
    }
}
