//! The bridge's command line; every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use ops::telemetry::LogFormat;

use crate::retention::{self, MaxAge, Retention};

/// `warren-bridge`: publishes chat messages to RabbitMQ streams and streams
/// rooms back to gateways over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "warren-bridge", version, about)]
pub struct Config {
    /// Address of the gRPC server the gateways attach to.
    #[arg(long, env = "BRIDGE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP server (`/healthz`, `/readyz`).
    #[arg(long, env = "BRIDGE_ADMIN_LISTEN", default_value = "127.0.0.1:9181")]
    pub admin_listen: SocketAddr,

    /// This bridge's name in logs.
    #[arg(long, env = "BRIDGE_INSTANCE", default_value = "bridge")]
    pub instance: String,

    /// RabbitMQ URL; for a cluster, the URL of each node, comma-separated
    /// (one connection at a time, to the next node when one fails). Holds
    /// the broker password: pass it by environment in production. Neither flag nor variable given: the RabbitMQ service
    /// bound in Cloud Foundry's `VCAP_SERVICES`, if any, else this default
    /// (see [`Config::try_parse_with_platform`]).
    #[arg(
        long,
        env = "BRIDGE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// The bound service `amqp_url` was taken from (logged at start-up: its
    /// name and host, never the URL).
    #[arg(skip)]
    pub amqp_service: Option<platform::Service>,

    /// A PEM bundle of CA certificates to trust, on top of the system's, when
    /// the RabbitMQ URL is `amqps://` (a managed broker's private CA, say).
    #[arg(long, env = "BRIDGE_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// A PEM client certificate (chain) for an `amqps://` broker that asks
    /// for one (mutual TLS); goes with `--tls-client-key`.
    #[arg(long, env = "BRIDGE_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,

    /// The PEM private key of `--tls-client-cert`.
    #[arg(long, env = "BRIDGE_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,

    /// How long a partition keeps its history, and so every room in it
    /// (RabbitMQ `max-age`, e.g. `7D`, `12h`, `30m`). May change: see
    /// `--management-url`.
    #[arg(long, env = "BRIDGE_STREAM_MAX_AGE", default_value = "7D", value_parser = MaxAge::from_str)]
    pub stream_max_age: MaxAge,

    /// The most history a partition keeps, in bytes (RabbitMQ
    /// `max-length-bytes`), shared by its rooms.
    #[arg(long, env = "BRIDGE_STREAM_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub stream_max_bytes: u64,

    /// Size of one stream segment file; retention drops whole segments, so
    /// smaller segments make retention finer. A change reaches an existing
    /// partition when its stream restarts (a broker restart).
    #[arg(long, env = "BRIDGE_STREAM_SEGMENT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub stream_segment_bytes: u64,

    /// RabbitMQ's management HTTP API, e.g. `http://rabbitmq:15672`. Given,
    /// the bridge sets the retention above as the `warren-retention` policy
    /// at start-up, so that a change reaches every existing partition; as
    /// the URL's user, else the AMQP URL's, which needs the `policymaker` (or
    /// `administrator`) tag. Not given, it logs the `rabbitmqctl` command
    /// that does it (`docs/design/rooms.md#retention`).
    #[arg(long, env = "BRIDGE_MANAGEMENT_URL", value_parser = retention::parse_management_url, hide_env_values = true)]
    pub management_url: Option<url::Url>,

    /// How many partition streams hold the rooms. Every bridge of a
    /// deployment must use the same number: it decides which partition holds
    /// a room (see `docs/design/rooms.md` before changing it).
    #[arg(long, env = "BRIDGE_PARTITIONS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub partitions: u16,

    /// How long a publish waits for the broker's confirm.
    #[arg(long, env = "BRIDGE_PUBLISH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    /// How long shutdown waits for gateways to move and tasks to end.
    #[arg(long, env = "BRIDGE_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "BRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Parses `args` and the environment like [`Parser::try_parse_from`];
    /// then, when neither `--amqp-url` nor `BRIDGE_AMQP_URL` was given,
    /// takes the RabbitMQ bound in `vcap_services` (Cloud Foundry's
    /// `VCAP_SERVICES`), if there is one.
    ///
    /// # Errors
    /// clap's error for a bad command line, or for a `VCAP_SERVICES` whose
    /// RabbitMQ cannot be used (several bound, no AMQP URI).
    pub fn try_parse_with_platform<I, T>(args: I, vcap_services: Option<&str>) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let (mut config, binding) =
            platform::parse_with_binding::<Self, _, _>(args, vcap_services, "amqp_url", platform::rabbitmq)?;
        if let Some(binding) = binding {
            config.amqp_url = binding.url().to_owned();
            config.amqp_service = Some(binding.service().clone());
        }
        Ok(config)
    }

    /// What every partition keeps.
    pub fn retention(&self) -> Retention {
        Retention {
            max_age: self.stream_max_age.clone(),
            max_bytes: self.stream_max_bytes,
            segment_bytes: self.stream_segment_bytes,
        }
    }

    /// The URL of each broker node, in the order to try them (never empty).
    pub fn amqp_urls(&self) -> Vec<String> {
        let urls: Vec<String> =
            self.amqp_url.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() { vec![self.amqp_url.clone()] } else { urls }
    }

    /// The TLS files for the broker (used when its URL is `amqps://`).
    pub fn tls_files(&self) -> platform::tls::Files {
        platform::tls::Files {
            ca_file: self.tls_ca_file.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let config = Config::try_parse_from(["warren-bridge"]).expect("defaults are valid");
        assert_eq!(config.stream_max_age.as_str(), "7D");
        assert!(config.management_url.is_none());
        assert_eq!(config.publish_timeout, Duration::from_secs(10));
    }

    #[test]
    fn max_age_is_checked() {
        assert!(Config::try_parse_from(["warren-bridge", "--stream-max-age", "12h"]).is_ok());
        assert!(Config::try_parse_from(["warren-bridge", "--stream-max-age", "7days"]).is_err());
        assert!(Config::try_parse_from(["warren-bridge", "--stream-max-age", "D"]).is_err());
    }

    #[test]
    fn a_bound_rabbitmq_is_used_when_no_url_is_given() {
        let vcap = r#"{"cloudamqp": [{"name": "broker", "label": "cloudamqp",
            "credentials": {"uri": "amqp://user:pw@lemur.cloudamqp.com/user"}}]}"#;
        let config = Config::try_parse_with_platform(["warren-bridge"], Some(vcap)).expect("parses");
        assert_eq!(config.amqp_url, "amqp://user:pw@lemur.cloudamqp.com/user");
        assert_eq!(config.amqp_service.map(|s| s.host).as_deref(), Some("lemur.cloudamqp.com"));

        let given = ["warren-bridge", "--amqp-url", "amqp://guest:guest@elsewhere:5672/%2f"];
        let explicit = Config::try_parse_with_platform(given, Some(vcap)).expect("parses");
        assert_eq!(explicit.amqp_url, "amqp://guest:guest@elsewhere:5672/%2f", "a flag wins over VCAP_SERVICES");
        assert!(explicit.amqp_service.is_none());

        let none = Config::try_parse_with_platform(["warren-bridge"], Some("{}")).expect("parses");
        assert_eq!(none.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert!(Config::try_parse_with_platform(["warren-bridge"], Some("[")).is_err(), "a malformed document");
        let tls = r#"{"cloudamqp": [{"name": "broker", "credentials": {"uri": "amqps://u:p@h/v"}}]}"#;
        let config = Config::try_parse_with_platform(["warren-bridge"], Some(tls)).expect("amqps:// is taken");
        assert_eq!(config.amqp_url, "amqps://u:p@h/v");
        assert!(config.amqp_service.is_some_and(|s| s.tls));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let pair = ["warren-bridge", "--tls-client-cert", "c.pem", "--tls-client-key", "k.pem"];
        let config = Config::try_parse_from(pair).expect("parses");
        assert_eq!(config.tls_files().client_cert.as_deref(), Some(std::path::Path::new("c.pem")));
        assert!(Config::try_parse_from(["warren-bridge", "--tls-client-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["warren-bridge", "--tls-client-key", "k.pem"]).is_err());
    }

    #[test]
    fn a_cluster_is_its_nodes_urls_in_order() {
        let parse = |url: &str| Config::try_parse_from(["warren-bridge", "--amqp-url", url]).expect("parses");
        let cluster = parse("amqp://u:p@n1:5672/%2f, amqp://u:p@n2:5672/%2f,amqp://u:p@n3:5672/%2f");
        assert_eq!(cluster.amqp_urls(), ["amqp://u:p@n1:5672/%2f", "amqp://u:p@n2:5672/%2f", "amqp://u:p@n3:5672/%2f"]);
        assert_eq!(parse("amqp://u:p@n1:5672/%2f").amqp_urls(), ["amqp://u:p@n1:5672/%2f"]);
    }
}
