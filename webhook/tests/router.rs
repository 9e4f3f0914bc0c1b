//! The HTTP layer through `tower::ServiceExt::oneshot`, without a socket: a real review gets
//! HTTP 200 carrying the verdict; anything that is not a review gets HTTP 400 saying why.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use common::*;
use http::{Request, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use switchyard_webhook::Index;
use switchyard_webhook::http::{App, MAX_BODY_BYTES, router};
use switchyard_webhook::metrics::Metrics;
use tower::ServiceExt;

fn app(index: Index) -> (Arc<App>, Registry) {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    (Arc::new(App::new(index, metrics)), registry)
}

async fn post(app: &Arc<App>, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let req = Request::post("/validate")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let resp = router(app.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

async fn post_json(app: &Arc<App>, v: &Value) -> (StatusCode, Value) {
    let (status, bytes) = post(app, serde_json::to_vec(v).unwrap()).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_review_is_answered_with_a_review() {
    let (app, registry) = app(index(&[pn("red", &["198.19.128.0/20"], &[], true)]));
    let good = review_json(
        "CREATE",
        &pn("green", &["198.19.176.0/20"], &[], false),
        None,
    );
    let (status, body) = post_json(&app, &good).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(
        body["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(body["response"]["allowed"], true);

    let bad = review_json(
        "CREATE",
        &pn("green", &["198.19.128.0/21"], &[], true),
        None,
    );
    let (status, body) = post_json(&app, &bad).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(body["response"]["status"]["code"], 422);
    assert_eq!(body["response"]["status"]["reason"], "Invalid");
    let msg = body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.podCIDRs[0]: ") && msg.contains("spec.default: "),
        "{msg}"
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "switchyard_webhook_requests_total{kind=\"PodNetwork\",operation=\"CREATE\"} 2",
        "switchyard_webhook_denials_total{reason=\"overlap\"} 1",
        "switchyard_webhook_denials_total{reason=\"duplicate_default\"} 1",
        "switchyard_webhook_admission_duration_seconds_count{kind=\"PodNetwork\",operation=\"CREATE\",allowed=\"true\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_reason() {
    let (app, registry) = app(index(&[]));
    for (body, needle) in [
        (b"".to_vec(), "not an AdmissionReview"),
        (b"{not json".to_vec(), "not an AdmissionReview"),
        (b"[1,2,3]".to_vec(), "not an AdmissionReview"),
        (br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(), "expected admission.k8s.io/v1"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "has no request",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#
                .to_vec(),
            "not an AdmissionReview",
        ),
        (vec![0xff, 0xfe, 0x00], "not an AdmissionReview"),
    ] {
        let (status, bytes) = post(&app, body.clone()).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}: {text}", String::from_utf8_lossy(&body));
        assert!(text.contains(needle), "{text}");
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("switchyard_webhook_malformed_requests_total 7"),
        "{text}"
    );
}

#[tokio::test]
async fn an_oversized_body_gets_400() {
    let (app, _registry) = app(index(&[]));
    // A real review padded past the limit with a long annotation.
    let mut obj = pn("big", &["198.19.128.0/20"], &[], true);
    obj["metadata"]["annotations"] = json!({"pad": "x".repeat(MAX_BODY_BYTES)});
    let body = serde_json::to_vec(&review_json("CREATE", &obj, None)).unwrap();
    assert!(body.len() > MAX_BODY_BYTES);
    let (status, bytes) = post(&app, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&bytes).contains("at most 3145728 bytes"));
    // Just under the limit is read and judged.
    obj["metadata"]["annotations"] = json!({"pad": "x".repeat(MAX_BODY_BYTES - 2048)});
    let body = serde_json::to_vec(&review_json("CREATE", &obj, None)).unwrap();
    assert!(body.len() <= MAX_BODY_BYTES);
    let (status, _) = post(&app, body).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn only_post_validate_is_served() {
    let (app, _registry) = app(index(&[]));
    let resp = router(app.clone())
        .oneshot(Request::get("/validate").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = router(app)
        .oneshot(Request::post("/mutate").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_unsynced_index_refuses_and_a_sync_within_the_settle_time_admits() {
    let (idx, writers) = Index::new(CLUSTER_DOMAIN);
    let (app, _registry) = app(idx);
    let review = review_json("CREATE", &pn("a", &["198.19.128.0/20"], &[], true), None);
    let mut quick = Arc::try_unwrap(app).ok().unwrap();
    quick.settle = Duration::from_millis(100);
    let app = Arc::new(quick);
    let (status, body) = post_json(&app, &review).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(body["response"]["status"]["code"], 503);
    assert_eq!(
        body["response"]["status"]["message"],
        "the webhook's caches are not synced yet; retry"
    );
    assert_eq!(
        body["response"]["status"]["details"]["retryAfterSeconds"],
        1
    );

    let mut patient = App::new(app.index.clone(), app.metrics.clone());
    patient.settle = Duration::from_secs(5);
    let patient = Arc::new(patient);
    let syncer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        writers.mark_synced();
    });
    let (_, body) = post_json(&patient, &review).await;
    syncer.await.unwrap();
    assert_eq!(body["response"]["allowed"], true, "{body}");
}
