//! The admin port: `/healthz` (the process runs), `/readyz` (it should get
//! traffic) and `/metrics` (Prometheus). Kept off the public port so that probes and scrapes never mix
//! with user traffic and can be firewalled apart.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Exporter;

/// Answers "should this process get traffic now?": `Ok` or the reason why not.
pub trait Readiness: Send + Sync + 'static {
    /// `Err` carries a short reason shown in the `/readyz` body.
    fn check(&self) -> Result<(), String>;
}

impl<F> Readiness for F
where
    F: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    fn check(&self) -> Result<(), String> {
        self()
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled;
/// `/metrics` answers when an exporter is given.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<dyn Readiness>,
    exporter: Option<Exporter>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (readiness, exporter) = (readiness.clone(), exporter.clone());
        let service = service_fn(move |request| {
            let (readiness, exporter) = (readiness.clone(), exporter.clone());
            async move { Ok::<_, Infallible>(route(&request, readiness.as_ref(), exporter.as_ref())) }
        });
        tokio::spawn(async move {
            // Admin connections are short probe requests; an error here only
            // means the prober went away.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(request: &Request<Incoming>, readiness: &dyn Readiness, exporter: Option<&Exporter>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => match exporter {
            Some(exporter) => {
                let mut response = text(StatusCode::OK, exporter.render());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not enabled in this process\n".to_owned()),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
