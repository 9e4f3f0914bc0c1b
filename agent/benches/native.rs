//! Native Services against ServiceRoutes in the agent's own sans-I/O path, same run: for N
//! objects each with 10 ready endpoints on two ports (TCP, UDP), the time to turn the API
//! objects into the route table's elements (what a full sync computes before the kernel) and
//! to build the DNS snapshot, once from N ServiceRoutes (their slices and claims) and once from
//! N core Services (their kube-controller-manager slices). The kernel side is the same for
//! both (the same `ServiceTable`, maps and netlink batches: `--bench dataplane` measures it),
//! so the ratio says what serving native Services costs on top.
//!
//! `cargo bench -p switchyard-agent --bench native [-- --sizes 1000,10000 --reps 5]`
//! (no I/O, no network).

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service as CoreService;
use serde_json::json;
use switchyard_agent::dns::records::{self, Inputs};
use switchyard_agent::native::{NodeView, native_desired, service_id};
use switchyard_agent::service_table::ServiceTable;
use switchyard_agent::services::route_desired;
use switchyard_agent::slim::EndpointSlice;
use switchyard_api::dataplane::{ROUTE_GENERATION_ANNOTATION, ROUTE_PARAMS_ANNOTATION};
use switchyard_api::{ServiceRoute, VirtualIP};

const NS: &str = "bench";
const NODE: &str = "node-1";
const BACKENDS: usize = 10;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn vip(i: usize) -> String {
    format!("198.19.{}.{}", 16 + i / 250, 1 + i % 250)
}

fn cluster_ip(i: usize) -> String {
    format!("198.18.{}.{}", 16 + i / 250, 1 + i % 250)
}

fn endpoints(i: usize) -> Vec<serde_json::Value> {
    (0..BACKENDS)
        .map(|j| {
            json!({"addresses": [format!("198.19.{}.{}", 128 + (i * BACKENDS + j) / 250 % 64, 1 + (i * BACKENDS + j) % 250)],
                "nodeName": if j == 0 { NODE } else { "node-2" },
                "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect()
}

/// Route `i`: its slice (with the parameters the operator writes), its claim, the route.
fn route_objects(i: usize) -> Result<(EndpointSlice, VirtualIP, ServiceRoute)> {
    let name = format!("r{i}");
    let params = json!({"ports": [{"key": "tcp", "port": 80, "protocol": "TCP"}, {"key": "udp", "port": 53, "protocol": "UDP"}],
        "trafficPolicy": "Cluster", "affinity": null, "publishNotReady": false});
    let slice = serde_json::from_value(json!({"metadata": {"name": format!("{name}-x"), "namespace": NS,
        "labels": {"switchyard.dev/route": name, "endpointslice.kubernetes.io/managed-by": "switchyard.dev"},
        "annotations": {ROUTE_GENERATION_ANNOTATION: "1", ROUTE_PARAMS_ANNOTATION: params.to_string()},
        "ownerReferences": [{"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute", "name": name, "uid": format!("uid-{i}")}]},
        "addressType": "IPv4", "endpoints": endpoints(i),
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}, {"name": "udp", "port": 8081, "protocol": "UDP"}]}))
    .context("route slice")?;
    let claim = serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "VirtualIP",
        "metadata": {"name": vip(i).replace('.', "-")},
        "spec": {"address": vip(i), "network": "default", "route": {"namespace": NS, "name": name, "uid": format!("uid-{i}")}}}))
    .context("claim")?;
    let route = serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{i}")},
        "spec": {"selector": {"matchLabels": {"app": name}}, "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}, {"name": "udp", "port": 53, "targetPort": 8081, "protocol": "UDP"}]},
        "status": {"virtualIPs": [vip(i)], "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    .context("route")?;
    Ok((slice, claim, route))
}

/// Service `i` and its kube-controller-manager slice.
fn service_objects(i: usize) -> Result<(CoreService, EndpointSlice)> {
    let name = format!("s{i}");
    let svc = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(i), "clusterIPs": [cluster_ip(i)],
            "ports": [{"name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP"}, {"name": "udp", "port": 53, "targetPort": 8081, "protocol": "UDP"}]}}))
    .context("service")?;
    let slice = serde_json::from_value(json!({"metadata": {"name": format!("{name}-abcde"), "namespace": NS,
        "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "endpoints": endpoints(i),
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}, {"name": "udp", "port": 8081, "protocol": "UDP"}]}))
    .context("service slice")?;
    Ok((svc, slice))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Median milliseconds of `reps` runs of `f`; the last run's element count.
fn time(reps: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut ms = Vec::new();
    let mut n = 0;
    for _ in 0..reps {
        let t = Instant::now();
        n = f();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(ms), n)
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let reps: usize = arg("--reps").and_then(|r| r.parse().ok()).unwrap_or(5);
    println!(
        "| objects | table: routes (ms) | table: Services (ms) | ratio | DNS build: routes (ms) | DNS build: Services (ms) | ratio | elements (routes / Services) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let view = NodeView {
        node: NODE.into(),
        node_ips: vec![IpAddr::from([198, 18, 1, 11])],
        pod_pools: vec!["198.19.128.0/18".parse().context("pool")?],
    };
    for n in sizes {
        let mut routes = Vec::with_capacity(n);
        let mut services = Vec::with_capacity(n);
        for i in 0..n {
            routes.push(route_objects(i)?);
            services.push(service_objects(i)?);
        }
        let (t_routes, e_routes) = time(reps, || {
            let mut table = ServiceTable::new(NODE);
            for (i, (slice, claim, _)) in routes.iter().enumerate() {
                let id = format!("{NS}/r{i}");
                table.set_route(&id, route_desired(NODE, &id, &[slice], &[claim]));
            }
            table.take_change();
            table.elements().len()
        });
        let (t_svcs, e_svcs) = time(reps, || {
            let mut table = ServiceTable::new(NODE);
            for (i, (svc, slice)) in services.iter().enumerate() {
                let id = service_id(NS, &format!("s{i}"));
                table.set_route(&id, native_desired(&view, &id, svc, &[slice]));
            }
            table.take_change();
            table.elements().len()
        });
        let route_refs: Vec<&ServiceRoute> = routes.iter().map(|(_, _, r)| r).collect();
        let route_slices: Vec<&EndpointSlice> = routes.iter().map(|(s, _, _)| s).collect();
        let svc_refs: Vec<&CoreService> = services.iter().map(|(s, _)| s).collect();
        let svc_slices: Vec<&EndpointSlice> = services.iter().map(|(_, s)| s).collect();
        let (d_routes, _) = time(reps, || {
            records::build(&Inputs {
                cluster_domain: "cluster.local",
                ttl: 5,
                serial: 1,
                routes: &route_refs,
                slices: &route_slices,
                namespaces: &[NS],
                pod_cidrs: &[],
                services: &[],
                service_slices: &[],
            })
            .len()
        });
        let (d_svcs, _) = time(reps, || {
            records::build(&Inputs {
                cluster_domain: "cluster.local",
                ttl: 5,
                serial: 1,
                routes: &[],
                slices: &[],
                namespaces: &[NS],
                pod_cidrs: &[],
                services: &svc_refs,
                service_slices: &svc_slices,
            })
            .len()
        });
        println!(
            "| {n} | {t_routes:.1} | {t_svcs:.1} | {:.2} | {d_routes:.1} | {d_svcs:.1} | {:.2} | {e_routes} / {e_svcs} |",
            t_svcs / t_routes.max(1e-9),
            d_svcs / d_routes.max(1e-9),
        );
    }
    Ok(())
}
