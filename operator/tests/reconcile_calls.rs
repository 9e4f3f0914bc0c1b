//! The exact API calls one PodNetwork reconcile makes, against a mocked API server: a new node
//! gets its block (one create), the operator records one Event, then writes the status once.
//! Nothing else: no list, no delete, no second status write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use switchyard_api::{NodeBlock, PodNetwork};
use switchyard_operator::context::{Context, Indexes, Stores, Wakeups};
use switchyard_operator::metrics::Metrics;
use switchyard_operator::pod_network::reconcile;

use common::{fill, read_request};

fn network() -> PodNetwork {
    let mut pn: PodNetwork = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork",
        "metadata": {"name": "default", "uid": "uid-1", "generation": 1, "creationTimestamp": "2026-11-25T00:00:00Z"},
        "spec": {"podCIDRs": ["198.18.128.0/24"], "blockPrefixLength": {"ipv4": 25}, "default": true}
    }))
    .unwrap();
    pn.status = None;
    pn
}

fn node() -> Node {
    serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"}]}})).unwrap()
}

/// Method, the whole URI (path and query) and the JSON body of a request.
async fn body_json(req: Request<Body>) -> (String, String, Value) {
    let (method, path, query, body) = read_request(req).await;
    (method, format!("{path}?{query}"), body)
}

#[tokio::test]
async fn a_new_node_gets_one_block_one_event_and_one_status_write() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");

    let (networks, mut w1) = reflector::store::<PodNetwork>();
    let (nodes, mut w2) = reflector::store::<Node>();
    let (namespaces, mut w3) = reflector::store::<Namespace>();
    let (blocks, mut w4) = reflector::store::<NodeBlock>();
    let pn = network();
    fill(&mut w1, vec![pn.clone()]);
    fill(&mut w2, vec![node()]);
    fill(&mut w3, vec![]);
    fill(&mut w4, vec![]);
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let (routes, _) = reflector::store();
    let (pods, _) = reflector::store();
    let (services, _) = reflector::store();
    let (vips, _) = reflector::store();
    let (slices, _) = reflector::store();
    let (leases, _) = reflector::store();
    let mut stores = Stores {
        networks,
        nodes,
        namespaces,
        blocks,
        routes,
        pods,
        services,
        vips,
        slices,
        leases,
        indexes: Indexes::default(),
    };
    stores.indexes = Indexes::of(&stores);
    let wakeups = Arc::new(Wakeups::new(
        tokio::sync::mpsc::unbounded_channel().0,
        metrics.clone(),
    ));
    let ctx = Arc::new(Context::new(
        client,
        stores,
        metrics,
        "test".into(),
        wakeups,
    ));

    let server = tokio::spawn(async move {
        // 1. Claim the block, named after it, with the network as owner.
        let (req, send) = handle.next_request().await.expect("create NodeBlock");
        let (method, uri, body) = body_json(req).await;
        assert_eq!(method, "POST");
        assert!(
            uri.starts_with("/apis/switchyard.dev/v1alpha1/nodeblocks?"),
            "{uri}"
        );
        assert_eq!(body["metadata"]["name"], "198-18-128-0-25");
        assert_eq!(
            body["spec"],
            json!({"network": "default", "node": "n1", "cidr": "198.18.128.0/25", "nodeIP": "198.18.0.11"})
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );

        // 2. One Event.
        let (req, send) = handle.next_request().await.expect("event");
        let (method, uri, body) = body_json(req).await;
        assert_eq!(method, "POST");
        assert!(uri.contains("/events"), "{uri}");
        assert_eq!(body["reason"], "BlockAllocated");
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );

        // 3. The status, by server-side apply, naming what was allocated.
        let (req, send) = handle.next_request().await.expect("status");
        let (method, uri, body) = body_json(req).await;
        assert_eq!(method, "PATCH");
        assert!(
            uri.starts_with("/apis/switchyard.dev/v1alpha1/podnetworks/default/status?"),
            "{uri}"
        );
        assert!(
            uri.contains("fieldManager=switchyard-operator") && uri.contains("force=true"),
            "{uri}"
        );
        let status = &body["status"];
        assert_eq!(status["allocatedBlocks"], 1);
        assert_eq!(status["freeBlocks"], 1);
        assert_eq!(status["observedGeneration"], 1);
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        let mut pn = network();
        pn.status = serde_json::from_value(status.clone()).ok();
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&pn).unwrap()))
                .unwrap(),
        );

        // Nothing more.
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
        {
            panic!(
                "an unexpected extra API call: {} {}",
                req.method(),
                req.uri()
            );
        }
    });

    let action = reconcile(Arc::new(pn), ctx).await.expect("reconcile");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(300))
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("all calls made")
        .expect("verifier");
}
