//! Admission latency over TLS on loopback: an in-process webhook server (the real router,
//! TLS 1.3 with ring, a self-minted certificate) over a synced in-memory index the size of a
//! mid-sized cluster, driven at a fixed rate by a pooled keep-alive HTTPS client. Prints
//! p50/p90/p99/max of the time from sending a review to reading the whole answer.
//!
//! `cargo bench -p switchyard-webhook --bench admission` (defaults: 200 requests/s for 10 s;
//! `-- --rate N --seconds S` to change). Only 127.0.0.1 is contacted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use switchyard_webhook::certs::{self, Subject};
use switchyard_webhook::http::{App, router};
use switchyard_webhook::metrics::Metrics;
use switchyard_webhook::{Index, IndexWriters};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pn(name: &str, pods: &[String], services: &[String], default: bool) -> Value {
    let mut v = json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"podCIDRs": pods, "serviceCIDRs": services, "default": default},
        "status": {"allocatedBlocks": 10, "conditions": [{"type": "Accepted", "status": "True",
            "reason": "Accepted", "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    });
    if !default {
        v["spec"]["namespaceSelector"] = json!({"matchLabels": {"tenant": name}});
    }
    v
}

fn sr(ns: &str, name: &str, vip: &str, host: &str) -> Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                 "virtualIPs": [vip], "hostnames": [host]},
    })
}

/// 50 networks (one default), 200 namespaces, 2,000 routes, 1,000 Services, 500 blocks.
fn fill(writers: &mut IndexWriters) {
    let mut add = |v: Value| writers.add_json(&v).unwrap();
    add(pn(
        "default",
        &["10.0.0.0/16".into()],
        &["10.200.0.0/16".into()],
        true,
    ));
    for n in 1..50 {
        add(pn(
            &format!("tenant-{n}"),
            &[format!("10.{n}.0.0/16")],
            &[format!("10.201.{n}.0/24")],
            false,
        ));
    }
    for ns in 0..200 {
        let labels = if ns % 4 == 0 {
            json!({"tenant": format!("tenant-{}", ns % 50)})
        } else {
            json!({})
        };
        add(json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": format!("ns-{ns}"), "labels": labels}}));
    }
    for r in 0..2000u32 {
        let ns = r % 200;
        add(sr(
            &format!("ns-{ns}"),
            &format!("route-{r}"),
            &format!("10.200.{}.{}", r / 250, r % 250 + 1),
            &format!("route-{r}.example.internal"),
        ));
    }
    for s in 0..1000 {
        add(json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("svc-{s}"), "namespace": format!("ns-{}", s % 200)}}));
    }
    for b in 0..500 {
        add(
            json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "NodeBlock",
                   "metadata": {"name": format!("b-{b}")},
                   "spec": {"network": format!("tenant-{}", b % 50), "node": format!("node-{b}"),
                            "cidr": format!("10.{}.{}.0/24", b % 50, b / 50), "nodeIP": "192.0.2.1"}}),
        );
    }
    writers.mark_synced();
}

fn review(op: &str, obj: &Value, old: Option<&Value>) -> Vec<u8> {
    let kind = obj["kind"].as_str().unwrap();
    let resource = if kind == "PodNetwork" {
        "podnetworks"
    } else {
        "serviceroutes"
    };
    let gvk = json!({"group": "switchyard.dev", "version": "v1alpha1", "kind": kind});
    let mut req = json!({
        "uid": "bench", "kind": gvk, "requestKind": gvk,
        "resource": {"group": "switchyard.dev", "version": "v1alpha1", "resource": resource},
        "name": obj["metadata"]["name"], "operation": op,
        "userInfo": {"username": "bench"}, "object": obj, "oldObject": old, "dryRun": false,
    });
    if let Some(ns) = obj["metadata"]["namespace"].as_str() {
        req["namespace"] = json!(ns);
    }
    serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}),
    )
    .unwrap()
}

/// A mix of what the API server sends: routes admitted and refused (address held), networks
/// admitted and refused (overlap), and an update narrowing an allocated pool.
fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let old = pn(
        "tenant-7",
        &["10.7.0.0/16".into()],
        &["10.201.7.0/24".into()],
        false,
    );
    let mut narrowed = old.clone();
    narrowed["spec"]["podCIDRs"] = json!(["10.7.0.0/17"]);
    vec![
        (
            "route admitted",
            review(
                "CREATE",
                &sr("ns-1", "new", "10.200.100.1", "new.example.internal"),
                None,
            ),
        ),
        (
            "route refused",
            review(
                "CREATE",
                &sr("ns-1", "new", "10.200.0.1", "route-0.example.internal"),
                None,
            ),
        ),
        (
            "network admitted",
            review(
                "CREATE",
                &pn(
                    "new",
                    &["10.100.0.0/16".into()],
                    &["10.202.0.0/24".into()],
                    false,
                ),
                None,
            ),
        ),
        (
            "network refused",
            review(
                "CREATE",
                &pn(
                    "new",
                    &["10.3.0.0/20".into()],
                    &["10.202.0.0/24".into()],
                    false,
                ),
                None,
            ),
        ),
        ("update refused", review("UPDATE", &narrowed, Some(&old))),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = arg("--rate", 200).max(1);
    let seconds = arg("--seconds", 10).max(1);
    switchyard_webhook::install_crypto_provider();

    let (index, mut writers) = Index::new("cluster.local");
    let t = Instant::now();
    fill(&mut writers);
    eprintln!("index: {index:?} (filled in {:?})", t.elapsed());

    // The core alone, per kind of review: what the server adds to the transport's cost.
    for (what, body) in bodies() {
        let req = switchyard_webhook::http::parse_review(&body).unwrap();
        let n = 2000u32;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(switchyard_webhook::review::decide(&index, &req));
        }
        eprintln!(
            "core decide() {what}: {:.1} µs",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        );
    }

    let minted = certs::mint(
        &Subject {
            dns_names: vec![],
            ips: vec!["127.0.0.1".parse().unwrap()],
        },
        Duration::from_secs(3600),
        SystemTime::now(),
    )
    .unwrap();
    let tls = certs::tls_config(&minted).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let mut registry = Registry::default();
    let app = Arc::new(App::new(index, Arc::new(Metrics::register(&mut registry))));
    let handle = axum_server::Handle::new();
    let server = tokio::spawn(switchyard_webhook::serve_https(
        listener,
        tls,
        router(app),
        handle.clone(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types_certs(&minted.ca_pem) {
        roots.add(cert).unwrap();
    }
    let client_tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https);
    let url = format!("https://{addr}/validate");
    let bodies = Arc::new(bodies());

    let send = {
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        move |i: usize| {
            let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
            async move {
                let (what, body) = &bodies[i % bodies.len()];
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Body::from(body.clone()))
                    .unwrap();
                let started = Instant::now();
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
                    .await
                    .map_err(|e| e.to_string())?;
                let took = started.elapsed();
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                let allowed = v["response"]["allowed"].as_bool().unwrap_or(false);
                let want = what.ends_with("admitted");
                if status != 200 || allowed != want {
                    return Err(format!("{what}: HTTP {status}, allowed {allowed}"));
                }
                Ok::<Duration, String>(took)
            }
        }
    };

    // Warm-up: connections, caches, allocator.
    for i in 0..50 {
        send(i).await.unwrap();
    }

    let total = usize::try_from(rate * seconds).unwrap();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        tasks.push(tokio::spawn(send(i)));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => latencies.push(d),
            Err(e) => errors.push(e),
        }
    }
    let wall = started.elapsed();
    handle.shutdown();
    let _ = server.await;

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "webhook admission over TLS on 127.0.0.1: {} requests at {rate}/s for {seconds} s (achieved {:.1}/s), {} errors",
        latencies.len() + errors.len(),
        (latencies.len() + errors.len()) as f64 / wall.as_secs_f64(),
        errors.len()
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
    );
    if let Some(e) = errors.first() {
        panic!("{} requests failed, first: {e}", errors.len());
    }
}

fn rustls_pki_types_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}
