//! Spans reach an OTLP/HTTP receiver: a tiny collector on loopback decodes what the exporter
//! posts. One test per file: it installs the process-wide subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use switchyard_observe::{TelemetryOptions, init_telemetry, shutdown_tracing};

/// What one export carried: (service.name, span name, span id, parent span id, attributes).
type Received = (String, String, Vec<u8>, Vec<u8>, Vec<(String, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_at_an_otlp_http_receiver() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Received>();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                assert_eq!(
                    headers.get(header::CONTENT_TYPE).unwrap(),
                    "application/x-protobuf"
                );
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            Value::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let attrs = span
                            .attributes
                            .iter()
                            .map(|kv| {
                                let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                    Some(Value::StringValue(s)) => s,
                                    other => format!("{other:?}"),
                                };
                                (kv.key.clone(), v)
                            })
                            .collect();
                        tx.send((
                            service.clone(),
                            span.name,
                            span.span_id,
                            span.parent_span_id,
                            attrs,
                        ))
                        .unwrap();
                    }
                }
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    init_telemetry(TelemetryOptions {
        log_format: "json".into(),
        otlp_traces_endpoint: Some(format!("http://{addr}/v1/traces")),
        service_name: Some("switchyard-observe-test".into()),
    });
    {
        let outer = tracing::info_span!("reconcile", route = "t1/web");
        let _g = outer.enter();
        tracing::info_span!("nft transaction", elements = 3).in_scope(|| {
            tracing::info!("inside the inner span");
        });
    }
    tokio::task::spawn_blocking(shutdown_tracing).await.unwrap();

    let mut got: Vec<Received> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 2 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => got.push(r),
            _ => panic!("only {} spans arrived: {got:?}", got.len()),
        }
    }
    let outer = got.iter().find(|s| s.1 == "reconcile").expect("outer span");
    let inner = got
        .iter()
        .find(|s| s.1 == "nft transaction")
        .expect("inner span");
    assert_eq!(outer.0, "switchyard-observe-test");
    assert!(
        outer
            .4
            .contains(&("route".to_string(), "t1/web".to_string())),
        "{:?}",
        outer.4
    );
    assert_eq!(
        inner.3, outer.2,
        "the inner span's parent is the outer span"
    );
    assert!(outer.3.is_empty(), "the outer span is a root");
}
