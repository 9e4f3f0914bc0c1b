//! ServiceRoute traffic through the node agents' nftables on real kernels: a route's virtual IP
//! reaches its ready backends over TCP and UDP, spreads connections, rejects at once when there
//! is no backend, keeps a client on one backend with session affinity, keeps a Local route's
//! clients on their node's backends, lets a pod reach itself (hairpin), stops sending to a
//! deleted backend (UDP too, through the conntrack flush), and survives an agent restart
//! without flushing its table. Throughout, `Programmed` (every ready node agent reported
//! applying the route's objects) is the way to wait for the data plane.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use kube::api::Api;
use switchyard_api::service_route::NodeCounts;
use switchyard_api::{ServiceRoute, ServiceRouteStatus};
use switchyard_e2e::lab::{Lab, LabOptions};
use switchyard_e2e::netns;

const NS: &str = "traffic";

async fn status(lab: &Lab, name: &str) -> ServiceRouteStatus {
    Api::<ServiceRoute>::namespaced(lab.client.clone(), NS)
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

fn condition(s: &ServiceRouteStatus, type_: &str) -> (String, String) {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// `kubectl wait --for=condition=Programmed --timeout=30s`, then both agents count.
async fn wait_programmed(lab: &Lab, name: &str) {
    let obj = format!("serviceroute/{name}");
    let started = Instant::now();
    let out = lab
        .kubectl(&[
            "wait",
            "--for=condition=Programmed",
            "--timeout=30s",
            &obj,
            "-n",
            NS,
        ])
        .await
        .unwrap();
    if !out.status.success() {
        let yaml = lab.kubectl(&["get", &obj, "-n", NS, "-o", "yaml"]).await;
        panic!(
            "{obj} never got Programmed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            yaml.map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default()
        );
    }
    eprintln!("{obj} Programmed after {:?}", started.elapsed());
    let s = status(lab, name).await;
    assert_eq!(
        s.nodes,
        Some(NodeCounts {
            programmed: 2,
            total: 2
        }),
        "{name}: {s:?}"
    );
}

/// The backend that answered (`<pod> MSG`).
fn who(reply: &str) -> String {
    reply
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends until one succeeds (the agents program within a moment); bounded.
async fn first_ok(lab: &Lab, from: &str, proto: &str, target: &str) -> String {
    let mut last = String::new();
    for _ in 0..40 {
        match send(lab, NS, from, proto, target, "hi").await {
            Ok(r) => return r,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{from} → {proto} {target} never answered: {last}");
}

/// A UDP exchange from a fixed source port inside `pod`'s namespace (the test client picks a
/// fresh port each time, which would never reuse a conntrack entry).
async fn udp_fixed_port(
    lab: &Lab,
    pod: &str,
    target_ip: &str,
    port: u16,
) -> Result<String, String> {
    let ns = lab.pod_netns(NS, pod).await.unwrap();
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',40404))\ns.settimeout(1.5)\ns.sendto(b'sticky',('{target_ip}',{port}))\ntry:\n    print(s.recv(2048).decode())\nexcept Exception as e:\n    print('timed out', e); sys.exit(1)\n"
    );
    let out = netns::exec(&ns, "python3", ["-c", script.as_str()])
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_traffic_end_to_end() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            examples: false,
            operators: 1,
            webhook: false,
            native_services: false,
            // Real nodes: kubelet and containerd, Switchyard installed by its chart.
            real_nodes: true,
            conformance: false,
            gitops: false,
        },
        |lab| Box::pin(steps(lab)),
    )
    .await;
}

/// The IPv4 virtual IPs of the four routes.
struct Vips {
    web: String,
    local: String,
    sticky: String,
    empty: String,
}

async fn steps(lab: &mut Lab) {
    let v = backends_client_and_routes(lab).await;
    let web_tcp = format!("{}:80", v.web);
    let web_udp = format!("{}:81", v.web);
    every_route_is_programmed_and_ready_with_a_backend(lab).await;
    the_virtual_ip_reaches_a_backend(lab, &web_tcp, &web_udp).await;
    connections_spread_over_every_backend(lab, &web_tcp).await;
    a_route_without_backends_refuses_at_once(lab, &v.empty).await;
    session_affinity_keeps_a_client_on_one_backend(lab, &v.sticky).await;
    a_pod_reaches_itself_through_its_route(lab, &web_tcp).await;
    traffic_policy_local_stays_on_the_node(lab, &v.local).await;
    let gone = a_udp_flow_leaves_a_deleted_backend(lab, &v.web).await;
    no_new_connection_reaches_the_deleted_backend(lab, &web_tcp, &gone).await;
    let before = an_agent_restart_keeps_its_table(lab, &v.web, &web_tcp).await;
    a_route_created_while_an_agent_is_down_waits_for_it(lab, &before, &web_tcp, &gone).await;
}

/// The elements of node-1's IPv4 backend maps (`backends_v4_s<k>`), as nft lists them.
async fn node_1_backends_map(lab: &Lab) -> BTreeSet<String> {
    let node_ns = lab.topology.node("node-1").unwrap().netns.clone();
    let out = netns::exec(&node_ns, "nft", ["list", "table", "inet", "switchyard"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("map backends_v4_s")
        .skip(1)
        .filter_map(|block| {
            let (head, _) = block.split_once("\n\t}")?;
            let (_, list) = head.split_once("elements = {")?;
            Some(list.trim_end().trim_end_matches('}').to_string())
        })
        .flat_map(|list| {
            list.split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Three web backends and a client start, and the four routes select their ready backends.
async fn backends_client_and_routes(lab: &Lab) -> Vips {
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    wait_condition(lab, "podnetwork/default", "Ready", 60).await;
    create_namespace(lab, NS).await;
    for (name, node) in [
        ("web-1", "node-1"),
        ("web-2", "node-2"),
        ("web-3", "node-1"),
    ] {
        apply(lab, &labelled(pod_yaml(NS, name, node, false), "web")).await;
    }
    apply(lab, &pod_yaml(NS, "client", "node-1", false)).await;
    wait_pods_ready(lab, NS, 4, 90).await;
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  ports: [{{name: tcp, port: 80, targetPort: 8080}}, {{name: udp, port: 81, targetPort: 8081, protocol: UDP}}]\n")).await;
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: sticky, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  sessionAffinity: {{clientIP: {{timeoutSeconds: 60}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n")).await;
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: empty, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: nobody}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n")).await;
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: local, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  trafficPolicy: Local\n  ports: [{{port: 80, targetPort: 8080}}]\n")).await;
    let web = route_vip4(lab, NS, "web").await;
    let local = route_vip4(lab, NS, "local").await;
    let sticky = route_vip4(lab, NS, "sticky").await;
    let empty = route_vip4(lab, NS, "empty").await;
    wait_until(60, || async {
        ready_endpoints(lab, NS, "web").await.len() == 3
    })
    .await;
    wait_until(60, || async {
        ready_endpoints(lab, NS, "sticky").await.len() == 3
    })
    .await;
    wait_until(60, || async {
        ready_endpoints(lab, NS, "local").await.len() == 3
    })
    .await;
    Vips {
        web,
        local,
        sticky,
        empty,
    }
}

/// Every route is Programmed on both nodes, and Ready only with a ready backend.
async fn every_route_is_programmed_and_ready_with_a_backend(lab: &Lab) {
    step("every route is Programmed on both nodes; Ready only with a ready backend");
    wait_until(30, || async {
        status(lab, "web")
            .await
            .endpoints
            .is_some_and(|e| e.ready == 3)
    })
    .await;
    for name in ["web", "sticky", "local", "empty"] {
        wait_programmed(lab, name).await;
    }
    let s = status(lab, "web").await;
    assert_eq!(
        condition(&s, "Ready"),
        ("True".into(), "Ready".into()),
        "{s:?}"
    );
    let s = status(lab, "empty").await;
    assert_eq!(
        condition(&s, "Ready"),
        ("False".into(), "NoReadyBackends".into()),
        "{s:?}"
    );
}

/// The virtual IP reaches a backend over TCP and over UDP.
async fn the_virtual_ip_reaches_a_backend(lab: &Lab, web_tcp: &str, web_udp: &str) {
    step("the virtual IP reaches a backend over TCP and UDP");
    assert!(who(&first_ok(lab, "client", "tcp", web_tcp).await).starts_with("web-"));
    assert!(who(&first_ok(lab, "client", "udp", web_udp).await).starts_with("web-"));
}

/// New connections reach every ready backend.
async fn connections_spread_over_every_backend(lab: &Lab, web_tcp: &str) {
    step("new connections spread over every ready backend");
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let r = send(lab, NS, "client", "tcp", web_tcp, "spread").await;
        seen.insert(who(&r.unwrap_or_else(|e| panic!("spread: {e}"))));
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(
        seen,
        ["web-1", "web-2", "web-3"].map(String::from).into(),
        "40 connections did not reach every backend"
    );
}

/// A route without a ready backend rejects a connection at once rather than timing out.
async fn a_route_without_backends_refuses_at_once(lab: &Lab, empty: &str) {
    step("a route without a ready backend refuses at once");
    let target = format!("{empty}:80");
    let mut refused = None;
    for _ in 0..20 {
        let t = Instant::now();
        match send(lab, NS, "client", "tcp", &target, "x").await {
            Err(e) if e.contains("refused") => {
                refused = Some(t.elapsed());
                break;
            }
            other => eprintln!("not yet refused: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = refused.expect("connections to a route without backends were never refused");
    assert!(
        took < Duration::from_millis(1400),
        "refusal took {took:?}: a timeout, not a reject"
    );
}

/// Session affinity sends every connection of one client to the same backend.
async fn session_affinity_keeps_a_client_on_one_backend(lab: &Lab, sticky: &str) {
    step("session affinity keeps one client on one backend");
    let first = who(&first_ok(lab, "client", "tcp", &format!("{sticky}:80")).await);
    for i in 0..20 {
        let r = send(lab, NS, "client", "tcp", &format!("{sticky}:80"), "stick")
            .await
            .unwrap_or_else(|e| panic!("sticky try {i}: {e}"));
        assert_eq!(who(&r), first, "affinity broke at try {i}");
    }
}

/// A backend reaches its own route's virtual IP and can land on itself (hairpin).
async fn a_pod_reaches_itself_through_its_route(lab: &Lab, web_tcp: &str) {
    step("a pod reaches its own route and may land on itself (hairpin)");
    let mut myself = false;
    for i in 0..30 {
        let r = send(lab, NS, "web-1", "tcp", web_tcp, "self")
            .await
            .unwrap_or_else(|e| panic!("hairpin try {i}: {e}"));
        if who(&r) == "web-1" {
            myself = true;
            break;
        }
    }
    assert!(myself, "web-1 never reached itself through the virtual IP");
}

/// A Local route answers a client only from the backends on the client's node.
async fn traffic_policy_local_stays_on_the_node(lab: &Lab, local: &str) {
    step("trafficPolicy Local keeps a client on its own node's backends");
    first_ok(lab, "client", "tcp", &format!("{local}:80")).await;
    for i in 0..20 {
        let r = send(lab, NS, "client", "tcp", &format!("{local}:80"), "local")
            .await
            .unwrap_or_else(|e| panic!("local try {i}: {e}"));
        assert!(
            ["web-1", "web-3"].contains(&who(&r).as_str()),
            "a Local route on node-1 answered from {r}"
        );
    }
}

/// A UDP flow to a backend that is deleted moves to a live one; returns the deleted backend.
async fn a_udp_flow_leaves_a_deleted_backend(lab: &Lab, web: &str) -> String {
    step("a UDP flow to a deleted backend moves to a live one at its next datagram");
    let udp_first = match udp_fixed_port(lab, "client", web, 81).await {
        Ok(r) => Some(who(&r)),
        Err(e) if e.contains("No such file") || e.contains("python3") => {
            eprintln!("python3 unavailable, fixed-port UDP check skipped: {e}");
            None
        }
        Err(e) => panic!("fixed-port UDP: {e}"),
    };
    let gone = udp_first.clone().unwrap_or_else(|| "web-3".to_string());
    let gone_ip = pod_ip(lab, NS, &gone).await;
    kubectl(lab, &["delete", "pod", "-n", NS, &gone, "--wait=false"]).await;
    wait_until(60, || async {
        !ready_endpoints(lab, NS, "web").await.contains(&gone_ip)
    })
    .await;
    // The status written with the new slices, then Programmed again: both agents applied them.
    wait_until(30, || async {
        status(lab, "web")
            .await
            .endpoints
            .is_some_and(|e| e.ready == 2)
    })
    .await;
    wait_programmed(lab, "web").await;
    let s = status(lab, "web").await;
    assert_eq!(
        condition(&s, "Ready"),
        ("True".into(), "Ready".into()),
        "{s:?}"
    );
    if udp_first.is_some() {
        let r = udp_fixed_port(lab, "client", web, 81)
            .await
            .unwrap_or_else(|e| panic!("next datagram after deleting {gone}: {e}"));
        assert_ne!(
            who(&r),
            gone,
            "the UDP flow still went to the deleted backend"
        );
    }
    gone
}

/// No new connection reaches the deleted backend.
async fn no_new_connection_reaches_the_deleted_backend(lab: &Lab, web_tcp: &str, gone: &str) {
    step("no new connection goes to the deleted backend");
    for i in 0..20 {
        let r = send(lab, NS, "client", "tcp", web_tcp, "after")
            .await
            .unwrap_or_else(|e| panic!("after delete try {i}: {e}"));
        assert_ne!(who(&r), gone, "connection {i} reached the deleted backend");
    }
}

/// Killing an agent leaves its nftables map alone and traffic flowing; returns the map.
async fn an_agent_restart_keeps_its_table(
    lab: &mut Lab,
    web: &str,
    web_tcp: &str,
) -> BTreeSet<String> {
    step("an agent restart keeps its table and the traffic");
    let before = node_1_backends_map(lab).await;
    assert!(
        before.iter().any(|e| e.starts_with(&format!("{web} "))),
        "{before:?}"
    );
    lab.kill_agent("node-1").await;
    assert_eq!(
        node_1_backends_map(lab).await,
        before,
        "killing the agent changed the map"
    );
    // Traffic keeps flowing while the agent is down.
    first_ok(lab, "client", "tcp", web_tcp).await;
    before
}

/// A route created while an agent is down stays Pending for that node; the restarted agent
/// keeps the map's elements, adds the new route's and programs both.
async fn a_route_created_while_an_agent_is_down_waits_for_it(
    lab: &mut Lab,
    before: &BTreeSet<String>,
    web_tcp: &str,
    gone: &str,
) {
    step("a route created while an agent is down waits for it (its Lease is still fresh)");
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: probe, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  ports: [{{port: 82, targetPort: 8080}}]\n")).await;
    wait_until(30, || async {
        let s = status(lab, "probe").await;
        let pending = s.conditions.iter().any(|c| {
            c.type_ == "Programmed"
                && c.status == "False"
                && c.reason == "Pending"
                && c.message.contains("node-1")
        });
        pending
            && s.nodes
                == Some(NodeCounts {
                    programmed: 1,
                    total: 2,
                })
    })
    .await;
    let s = status(lab, "probe").await;
    assert_eq!(
        condition(&s, "Ready"),
        ("False".into(), "NotProgrammed".into()),
        "{s:?}"
    );
    lab.start_agent("node-1").unwrap();
    lab.wait_agents_ready(Duration::from_secs(60))
        .await
        .unwrap();
    // The same elements, plus those of the route created meanwhile.
    let probe = route_vip4(lab, NS, "probe").await;
    let elements = |map: &BTreeSet<String>| -> BTreeSet<String> {
        map.iter()
            .filter(|e| !e.starts_with(&format!("{probe} ")))
            .cloned()
            .collect()
    };
    assert_eq!(
        elements(&node_1_backends_map(lab).await),
        elements(before),
        "the restarted agent rewrote the map"
    );
    wait_programmed(lab, "web").await;
    wait_programmed(lab, "probe").await;
    for i in 0..10 {
        let r = send(lab, NS, "client", "tcp", web_tcp, "restart")
            .await
            .unwrap_or_else(|e| panic!("after restart try {i}: {e}"));
        assert_ne!(who(&r), gone);
    }
}
