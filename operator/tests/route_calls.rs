//! The exact API calls one ServiceRoute reconcile makes, against a mocked API server.
//!
//! An accepted route gives up a claim outside its network's pool, claims a new address, records
//! one Event, applies its slice, deletes a stale one, then writes its status once. A route that
//! is not accepted (a Service of the same name) writes no claim and no slice: it only deletes
//! its stale slice, records one Warning and writes its status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use switchyard_api::dataplane::{APPLIED_SLICES_ANNOTATION, APPLIED_VIPS_ANNOTATION};
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute, VirtualIP};
use switchyard_operator::context::{Context, Indexes, Stores, Wakeups};
use switchyard_operator::metrics::Metrics;
use switchyard_operator::service_route::{FINALIZER, reconcile};

use common::{fill, read_request};

fn from<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn network() -> PodNetwork {
    from(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork",
        "metadata": {"name": "default", "uid": "net-uid", "generation": 1, "creationTimestamp": "2026-11-25T00:00:00Z"},
        "spec": {"podCIDRs": ["198.18.128.0/24"], "serviceCIDRs": ["198.19.0.0/24"], "default": true}
    }))
}

fn route() -> ServiceRoute {
    from(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": "web", "namespace": "shop", "uid": "route-uid", "generation": 1,
                     "finalizers": [FINALIZER]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "ports": [{"port": 80}]}
    }))
}

fn pod() -> Pod {
    from(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "pod-uid", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"podIP": "198.18.128.5", "podIPs": [{"ip": "198.18.128.5"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

/// A claim the route holds outside every pool of its network: an accepted route gives it up.
fn old_claim() -> VirtualIP {
    from(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "VirtualIP",
        "metadata": {"name": "198-20-0-7", "resourceVersion": "50"},
        "spec": {"address": "198.20.0.7", "network": "default",
                 "route": {"namespace": "shop", "name": "web", "uid": "route-uid"}}
    }))
}

/// A slice of the route that no longer fits its backends.
fn stale_slice() -> EndpointSlice {
    from(json!({
        "metadata": {"name": "web-old", "namespace": "shop", "resourceVersion": "60",
                     "labels": {"switchyard.dev/route": "web",
                                "endpointslice.kubernetes.io/managed-by": "switchyard.dev"}},
        "addressType": "IPv4", "endpoints": []
    }))
}

/// The agent of node n1, renewed now, reporting versions beyond every write of the test.
fn lease() -> Lease {
    let mut l: Lease = from(json!({
        "metadata": {"name": "n1", "namespace": "switchyard-system", "annotations": {
            APPLIED_SLICES_ANNOTATION: "900", APPLIED_VIPS_ANNOTATION: "900"}}
    }));
    l.spec = Some(LeaseSpec {
        holder_identity: Some("n1".into()),
        renew_time: Some(MicroTime(Timestamp::now())),
        lease_duration_seconds: Some(40),
        ..Default::default()
    });
    l
}

fn context(client: Client, services: Vec<Service>) -> Arc<Context> {
    let (networks, mut w1) = reflector::store::<PodNetwork>();
    let (namespaces, mut w2) = reflector::store::<Namespace>();
    let (pods, mut w3) = reflector::store::<Pod>();
    let (vips, mut w4) = reflector::store::<VirtualIP>();
    let (slices, mut w5) = reflector::store::<EndpointSlice>();
    let (leases, mut w6) = reflector::store::<Lease>();
    let (service_store, mut w7) = reflector::store::<Service>();
    fill(&mut w1, vec![network()]);
    fill(&mut w2, vec![from(json!({"metadata": {"name": "shop"}}))]);
    fill(&mut w3, vec![pod()]);
    fill(&mut w4, vec![old_claim()]);
    fill(&mut w5, vec![stale_slice()]);
    fill(&mut w6, vec![lease()]);
    fill(&mut w7, services);
    let (nodes, _) = reflector::store();
    let (blocks, _) = reflector::store::<NodeBlock>();
    let (routes, _) = reflector::store();
    let mut stores = Stores {
        networks,
        nodes,
        namespaces,
        blocks,
        routes,
        pods,
        services: service_store,
        vips,
        slices,
        leases,
        indexes: Indexes::default(),
    };
    stores.indexes = Indexes::of(&stores);
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let wakeups = Arc::new(Wakeups::new(
        tokio::sync::mpsc::unbounded_channel().0,
        metrics.clone(),
    ));
    Arc::new(Context::new(
        client,
        stores,
        metrics,
        "test".into(),
        wakeups,
    ))
}

/// One API call: method, path (without the query), query, body.
#[derive(Debug)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

fn status_body() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success"})
}

/// Answers every call as the API server would and records it, until the client is idle.
async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) -> Vec<Call> {
    let mut calls = Vec::new();
    while let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
    {
        let (method, path, query, body) = read_request(req).await;
        let (code, answer) = match (method.as_str(), path.as_str()) {
            ("DELETE", _) => (200, status_body()),
            ("POST", p) if p.ends_with("/virtualips") => {
                let mut b = body.clone();
                b["metadata"]["resourceVersion"] = json!("101");
                (201, b)
            }
            ("PATCH", p) if p.contains("/endpointslices/") => {
                let mut b = body.clone();
                b["metadata"]["resourceVersion"] = json!("105");
                (200, b)
            }
            ("PATCH", p) if p.ends_with("/status") => {
                let mut r = serde_json::to_value(route()).unwrap();
                r["status"] = body["status"].clone();
                (200, r)
            }
            _ => (201, body.clone()),
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        calls.push(Call {
            method,
            path,
            query,
            body,
        });
    }
    calls
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
}

fn summary(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

#[tokio::test]
async fn an_accepted_route_claims_publishes_and_reports() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"), vec![]);
    let server = tokio::spawn(serve(handle));

    let action = reconcile(Arc::new(route()), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let calls = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the client went idle")
        .expect("verifier");

    let [release, claim, event, apply, delete, status] = calls.as_slice() else {
        panic!("unexpected calls: {:#?}", summary(&calls));
    };
    assert_eq!(release.method, "DELETE");
    assert_eq!(
        release.path,
        "/apis/switchyard.dev/v1alpha1/virtualips/198-20-0-7"
    );

    assert_eq!(claim.method, "POST");
    assert_eq!(claim.path, "/apis/switchyard.dev/v1alpha1/virtualips");
    assert!(
        claim.query.contains("fieldManager=switchyard-operator"),
        "{}",
        claim.query
    );
    let address = claim.body["spec"]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("198.19.0."), "{address}");
    assert_eq!(
        claim.body["metadata"]["name"],
        address.replace('.', "-").as_str()
    );
    assert_eq!(
        claim.body["spec"]["route"],
        json!({"namespace": "shop", "name": "web", "uid": "route-uid"})
    );
    assert_eq!(claim.body["spec"]["network"], "default");
    assert_eq!(
        claim.body["metadata"]["labels"],
        json!({"switchyard.dev/route-namespace": "shop", "switchyard.dev/route": "web"})
    );

    assert_eq!(event.method, "POST");
    assert!(
        event.path.ends_with("/namespaces/shop/events"),
        "{}",
        event.path
    );
    assert_eq!(event.body["reason"], "VirtualIPAllocated");
    assert_eq!(event.body["note"], format!("allocated {address}"));

    assert_eq!(apply.method, "PATCH");
    assert!(
        apply
            .path
            .starts_with("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-ipv4-"),
        "{}",
        apply.path
    );
    assert!(
        apply.query.contains("fieldManager=switchyard-operator")
            && apply.query.contains("force=true"),
        "{}",
        apply.query
    );
    assert_eq!(apply.body["kind"], "EndpointSlice");
    assert_eq!(apply.body["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(
        apply.body["endpoints"][0]["addresses"],
        json!(["198.18.128.5"])
    );
    assert_eq!(apply.body["ports"][0]["port"], 80);

    assert_eq!(delete.method, "DELETE");
    assert_eq!(
        delete.path,
        "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-old"
    );

    assert_eq!(status.method, "PATCH");
    assert_eq!(
        status.path,
        "/apis/switchyard.dev/v1alpha1/namespaces/shop/serviceroutes/web/status"
    );
    let s = &status.body["status"];
    assert_eq!(status.body["kind"], "ServiceRoute");
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(s["virtualIPs"], json!([address]));
    assert_eq!(s["dnsNames"], json!(["web.shop.svc.cluster.local"]));
    assert_eq!(s["endpoints"], json!({"ready": 1, "notReady": 0}));
    assert_eq!(s["nodes"], json!({"programmed": 1, "total": 1}));
    for (type_, reason) in [
        ("Accepted", "Accepted"),
        ("ResolvedRefs", "ResolvedRefs"),
        ("Programmed", "Programmed"),
        ("Ready", "Ready"),
    ] {
        let c = condition(s, type_);
        assert_eq!(c["status"], "True", "{c}");
        assert_eq!(c["reason"], reason, "{c}");
    }
    assert_eq!(
        condition(s, "Ready")["message"],
        "1 ready backend(s), programmed on every ready node"
    );
}

#[tokio::test]
async fn a_route_that_is_not_accepted_serves_nothing_and_warns_once() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let conflict: Service = from(json!({"metadata": {"name": "web", "namespace": "shop"}}));
    let ctx = context(Client::new(service, "default"), vec![conflict]);
    let server = tokio::spawn(serve(handle));

    let action = reconcile(Arc::new(route()), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let calls = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the client went idle")
        .expect("verifier");

    let [delete, event, status] = calls.as_slice() else {
        panic!("unexpected calls: {:#?}", summary(&calls));
    };
    assert_eq!(delete.method, "DELETE");
    assert_eq!(
        delete.path,
        "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-old"
    );

    assert_eq!(event.method, "POST");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "Conflict");
    let message = "a Service named web exists in namespace shop; its DNS name would be ambiguous";
    assert_eq!(event.body["note"], message);

    assert_eq!(status.method, "PATCH");
    let s = &status.body["status"];
    // Not accepted: the claim it holds stays (only an accepted pass plans addresses).
    assert_eq!(s["virtualIPs"], json!(["198.20.0.7"]));
    assert_eq!(s["endpoints"], json!({"ready": 1, "notReady": 0}));
    let accepted = condition(s, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "Conflict");
    assert_eq!(accepted["message"], message);
    let ready = condition(s, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "NotAccepted");
}
