//! Prometheus metrics: one recorder per process, rendered on the admin
//! port's `/metrics`. Names start with `warren_` and carry their unit;
//! labels never hold user or room names, so cardinality stays bounded.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets in seconds, for latencies from half a millisecond to
/// ten seconds.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Renders the metrics in the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
}

impl Exporter {
    /// The current metrics, as text.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Installs the global recorder and starts its upkeep on the current Tokio
/// runtime. Returns `None` if a recorder was installed already (tests that
/// run several servers in one process): their metrics then go to the first.
pub fn install() -> Option<Exporter> {
    let builder =
        PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS);
    let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => handle,
        Err(error) => {
            tracing::debug!(%error, "metrics recorder not installed");
            return None;
        }
    };
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    Some(Exporter { handle })
}
