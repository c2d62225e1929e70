//! One trace per message, across every hop: the sender's gateway, the bridge,
//! RabbitMQ (a `traceparent` header) and each gateway that delivers it. The
//! spans are exported over OTLP to a receiver inside this test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use testkit::http::Client;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws;
use tokio_stream::wrappers::TcpListenerStream;

/// An OTLP trace receiver that keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.spans.lock().map_err(|_| tonic::Status::internal("poisoned"))?.extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_receiver() -> anyhow::Result<(Receiver, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok((receiver, addr))
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|span| span.name == name).collect()
}

#[tokio::test]
async fn one_message_is_one_trace_across_every_hop() -> anyhow::Result<()> {
    let (receiver, otlp) = start_receiver().await?;
    let common_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{otlp}")),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let extras = Extras { common_env, ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: false }, extras).await?;
    let room = testkit::unique("traced");
    let mut sockets = Vec::new();
    for (n, gateway) in stack.gateways.iter().enumerate() {
        let mut client = Client::new(gateway.addr);
        client.login(&format!("tracer{n}")).await?;
        let mut socket =
            ws::connect(gateway.addr, client.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        socket.next_json().await?;
        socket.join(&room, None).await?;
        sockets.push(socket);
    }
    let id = sockets[0].send_message(&room, "follow me", "traced-1").await?;
    sockets[1].messages_until(&room, id).await?;

    // The exporters batch every 100 ms; wait for the whole path.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = receiver.spans.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        let complete = named(&spans, "gateway.deliver").len() >= 2 && !named(&spans, "bridge.forward").is_empty();
        if complete || tokio::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let send = *named(&spans, "ws.send").first().context("a ws.send span")?;
    let trace: Vec<&Span> = spans.iter().filter(|span| span.trace_id == send.trace_id).collect();
    let in_trace = |name: &str| -> Vec<&Span> { trace.iter().copied().filter(|s| s.name == name).collect() };

    let publish = in_trace("bridge.publish");
    assert_eq!(publish.len(), 1, "one publish in the send's trace");
    assert_eq!(publish[0].parent_span_id, send.span_id, "publish is a child of the send");
    let forwards = in_trace("bridge.forward");
    // The bridge reads the message once from its partition and streams it to
    // every subscribed gateway from that one read.
    assert_eq!(forwards.len(), 1, "one forward per bridge");
    assert!(forwards.iter().all(|f| f.parent_span_id == publish[0].span_id), "forwards are children of the publish");
    let delivers = in_trace("gateway.deliver");
    assert_eq!(delivers.len(), 2, "both gateways deliver within the same trace");
    let forward_ids: Vec<&Vec<u8>> = forwards.iter().map(|f| &f.span_id).collect();
    assert!(delivers.iter().all(|d| forward_ids.contains(&&d.parent_span_id)), "deliveries are children of forwards");
    assert!(!named(&spans, "ws.handshake").is_empty(), "handshakes are traced too");
    Ok(())
}
