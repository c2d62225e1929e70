//! What every Warren process shares, so that the gateway and the bridge start,
//! report health and stop the same way.
//!
//! - [`shutdown`]: the SIGTERM/SIGINT signal and the drain deadline.
//! - [`admin`]: the admin HTTP port (`/healthz`, `/readyz`, `/metrics`).
//! - [`metrics`]: the Prometheus recorder behind `/metrics`.
//! - [`telemetry`]: logging, as text or JSON.
//! - [`backoff`]: exponential backoff with full jitter for reconnect loops.

pub mod admin;
pub mod backoff;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
