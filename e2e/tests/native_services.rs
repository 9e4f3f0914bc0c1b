//! Native Kubernetes Services served by the node agents (`--native-services`), in a lab with
//! no kube-proxy and no CoreDNS: kube-controller-manager publishes the EndpointSlices, the
//! agents program them into the same shared nftables maps as ServiceRoutes and answer their
//! names. A pod reaches the API server through `kubernetes.default.svc.cluster.local` (TLS
//! verified against the cluster CA); ClusterIP (both families), NodePort (this node's address
//! and another's, `externalTrafficPolicy: Local`), `internalTrafficPolicy: Local`, ClientIP
//! affinity, headless and ExternalName work by name over TCP and UDP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::*;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use switchyard_e2e::lab::{Lab, LabOptions};

const NS: &str = "native";
const DOMAIN: &str = "svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_services_end_to_end() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            examples: false,
            operators: 1,
            webhook: false,
            native_services: true,
            // Real nodes: kubelet and containerd, Switchyard installed by its chart.
            real_nodes: true,
            conformance: false,
            gitops: false,
        },
        |lab| Box::pin(steps(lab)),
    )
    .await;
}

async fn steps(lab: &mut Lab) {
    pods_and_services(lab).await;
    a_pod_reaches_the_api_server_by_name(lab).await;
    cluster_ips_answer_by_name_over_tcp_and_udp(lab).await;
    both_families_of_a_dual_stack_service(lab).await;
    node_ports_on_this_node_and_another(lab).await;
    traffic_policies_local_keep_to_the_node(lab).await;
    client_ip_affinity_keeps_one_backend(lab).await;
    headless_and_external_name_services_by_name(lab).await;
    a_route_named_like_a_service_is_not_accepted(lab).await;
    a_deleted_service_stops_answering(lab).await;
}

/// A ServiceRoute and a Service never share a name: the route reports Conflict, and the name
/// keeps answering with the Service's cluster IP only.
async fn a_route_named_like_a_service_is_not_accepted(lab: &Lab) {
    step(
        "a ServiceRoute named like a Service is not Accepted (Conflict); the name stays the Service's",
    );
    let route = format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    );
    if lab.webhook_registered() {
        // With the webhook (real nodes: the chart's) the route never exists.
        let out = lab
            .controlplane
            .kubectl_with_input(&["apply", "-f", "-"], route.as_bytes())
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "admitted a route named like a Service"
        );
        assert!(
            err.contains("metadata.name") && err.contains("is the name of a Service"),
            "{err}"
        );
    } else {
        apply(lab, &route).await;
        let reason = wait_condition_reason(
            lab,
            &format!("serviceroute/web -n {NS}"),
            "Accepted",
            "False",
            30,
        )
        .await;
        assert_eq!(reason, "Conflict");
    }
    let ip = service(lab, "web")
        .await
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap();
    assert_eq!(
        dig_short(lab, &["A", &format!("web.{NS}.{DOMAIN}")]).await,
        [ip]
    );
    kubectl(
        lab,
        &[
            "delete",
            "serviceroute",
            "web",
            "-n",
            NS,
            "--ignore-not-found",
        ],
    )
    .await;
}

/// The first answer of `target` from pod `from` (`"<pod> hi"`), retrying failures for up to
/// 20 s: the agents program a new Service when their watches deliver it.
async fn reach(lab: &Lab, from: &str, proto: &str, target: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match send(lab, NS, from, proto, target, "hi").await {
            Ok(r) => return r,
            Err(e) if std::time::Instant::now() >= deadline => {
                panic!("{from} → {proto} {target} never answered: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// The pod that answered.
fn who(reply: &str) -> String {
    reply
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn dig_short(lab: &Lab, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["dig", "+time=2", "+tries=2", "+short", "@169.254.20.10"];
    argv.extend_from_slice(args);
    let out = lab.exec(NS, "client", &argv).await.unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    v.sort();
    v
}

async fn service(lab: &Lab, name: &str) -> Service {
    Api::<Service>::namespaced(lab.client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

/// A dual-stack, Open network for the namespace; web-1 and db-0 on node-1, web-2 on node-2,
/// the client on node-1; the Services.
async fn pods_and_services(lab: &Lab) {
    step("a dual-stack network, three backends and a client; six Services");
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    apply(lab, &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, labels: {{tenant: {NS}}}}}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata: {{name: {NS}}}\nspec:\n  podCIDRs: [\"198.19.192.0/19\", \"fd00:30::/56\"]\n  blockPrefixLength: {{ipv4: 26, ipv6: 64}}\n  serviceCIDRs: [\"198.19.224.0/20\", \"fd00:31::/112\"]\n  namespaceSelector: {{matchLabels: {{tenant: {NS}}}}}\n  isolation: Open\n")).await;
    wait_condition(lab, &format!("podnetwork/{NS}"), "Ready", 60).await;
    wait_service_account(lab, NS).await;
    for (name, node) in [("web-1", "node-1"), ("web-2", "node-2")] {
        apply(lab, &labelled(pod_yaml(NS, name, node, false), "web")).await;
    }
    let db = labelled(pod_yaml(NS, "db-0", "node-1", false), "db")
        .replace("spec:\n", "spec:\n  hostname: db-0\n  subdomain: db\n");
    apply(lab, &db).await;
    apply(lab, &pod_yaml(NS, "client", "node-1", false)).await;
    wait_pods_ready(lab, NS, 4, 90).await;
    let svc = |name: &str, extra: &str, ports: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n{extra}  ports: {ports}\n"
        )
    };
    let web = "[{name: tcp, port: 80, targetPort: 8080}, {name: udp, port: 81, targetPort: 8081, protocol: UDP}]";
    let one = "[{name: tcp, port: 80, targetPort: 8080}]";
    for y in [
        svc(
            "web",
            "  selector: {role: web}\n  ipFamilyPolicy: PreferDualStack\n",
            web,
        ),
        svc(
            "webnp",
            "  type: NodePort\n  selector: {role: web}\n",
            "[{name: tcp, port: 80, targetPort: 8080, nodePort: 30080}]",
        ),
        svc(
            "weblocal",
            "  type: NodePort\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n  selector: {role: web}\n",
            "[{name: tcp, port: 80, targetPort: 8080, nodePort: 30081}]",
        ),
        svc(
            "sticky",
            "  selector: {role: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
            one,
        ),
        svc("db", "  clusterIP: None\n  selector: {role: db}\n", one),
        svc(
            "ext",
            "  type: ExternalName\n  externalName: www.example.test\n",
            one,
        ),
    ] {
        apply(lab, &y).await;
    }
    // kube-controller-manager's EndpointSlices list both web pods.
    wait_until(60, || async {
        let out = kubectl(
            lab,
            &[
                "get",
                "endpointslices",
                "-n",
                NS,
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[0]}",
            ],
        )
        .await;
        out.split_whitespace().count() >= 2
    })
    .await;
}

/// A pod reaches the API server through the `kubernetes` Service's name, and the server's
/// certificate verifies for that name against the cluster CA.
async fn a_pod_reaches_the_api_server_by_name(lab: &Lab) {
    step(
        "a pod reaches the API server at https://kubernetes.default.svc.cluster.local (no kube-proxy, no CoreDNS)",
    );
    let ca = lab.dir.join("cluster-ca.crt");
    std::fs::write(&ca, lab.controlplane.ca_pem()).unwrap();
    let ca = ca.to_string_lossy().into_owned();
    let mut last = String::new();
    for _ in 0..40 {
        let out = lab
            .exec(
                NS,
                "client",
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "5",
                    "--cacert",
                    &ca,
                    "https://kubernetes.default.svc.cluster.local/version",
                ],
            )
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && body.contains("gitVersion") {
            return;
        }
        last = format!("{body}{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("the API server never answered by name: {last}");
}

async fn cluster_ips_answer_by_name_over_tcp_and_udp(lab: &Lab) {
    step("a ClusterIP Service by name over TCP and UDP, spread over both backends");
    let tcp = format!("web.{NS}.{DOMAIN}:80");
    assert!(who(&reach(lab, "client", "tcp", &tcp).await).starts_with("web-"));
    let udp = format!("web.{NS}.{DOMAIN}:81");
    assert!(who(&reach(lab, "client", "udp", &udp).await).starts_with("web-"));
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        if let Ok(r) = send(lab, NS, "client", "tcp", "web:80", "spread").await {
            seen.insert(who(&r));
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "short name through the search path, both backends: {seen:?}"
    );
    let srv = dig_short(lab, &["SRV", &format!("_tcp._tcp.web.{NS}.{DOMAIN}")]).await;
    assert_eq!(srv, [format!("0 100 80 web.{NS}.{DOMAIN}.")]);
}

async fn both_families_of_a_dual_stack_service(lab: &Lab) {
    step("a PreferDualStack Service answers A and AAAA, and its IPv6 cluster IP carries traffic");
    let s = service(lab, "web").await;
    let ips = s.spec.unwrap().cluster_ips.unwrap_or_default();
    let v6 = ips
        .iter()
        .find(|i| i.contains(':'))
        .unwrap_or_else(|| panic!("web has no IPv6 cluster IP: {ips:?}"))
        .clone();
    let aaaa = dig_short(lab, &["AAAA", &format!("web.{NS}.{DOMAIN}")]).await;
    assert_eq!(aaaa, std::slice::from_ref(&v6));
    let ptr = dig_short(lab, &["-x", &v6]).await;
    assert_eq!(ptr, [format!("web.{NS}.{DOMAIN}.")]);
    assert!(who(&reach(lab, "client", "tcp", &format!("[{v6}]:80")).await).starts_with("web-"));
}

async fn node_ports_on_this_node_and_another(lab: &Lab) {
    step("a NodePort on this node's address and on another node's (masqueraded back)");
    for node in ["node-1", "node-2"] {
        let ip = lab.topology.node(node).unwrap().ipv4;
        let r = reach(lab, "client", "tcp", &format!("{ip}:30080")).await;
        assert!(who(&r).starts_with("web-"), "{node}: {r}");
    }
}

async fn traffic_policies_local_keep_to_the_node(lab: &Lab) {
    step("externalTrafficPolicy and internalTrafficPolicy Local keep to the node's own backends");
    let node2 = lab.topology.node("node-2").unwrap().ipv4;
    for _ in 0..8 {
        let r = reach(lab, "client", "tcp", &format!("{node2}:30081")).await;
        assert_eq!(who(&r), "web-2", "node-2's node port with Local: {r}");
    }
    for _ in 0..8 {
        let r = reach(lab, "client", "tcp", &format!("weblocal.{NS}.{DOMAIN}:80")).await;
        assert_eq!(who(&r), "web-1", "the client's node has web-1 only: {r}");
    }
}

async fn client_ip_affinity_keeps_one_backend(lab: &Lab) {
    step("sessionAffinity ClientIP keeps a client on one backend");
    let first = who(&reach(lab, "client", "tcp", &format!("sticky.{NS}.{DOMAIN}:80")).await);
    for _ in 0..10 {
        let r = reach(lab, "client", "tcp", &format!("sticky.{NS}.{DOMAIN}:80")).await;
        assert_eq!(who(&r), first);
    }
}

async fn headless_and_external_name_services_by_name(lab: &Lab) {
    step("headless names its ready pods (hostname and subdomain); ExternalName is a CNAME");
    let db_ip = pod_ip(lab, NS, "db-0").await;
    wait_until(30, || async {
        dig_short(lab, &["A", &format!("db.{NS}.{DOMAIN}")]).await == [db_ip.clone()]
    })
    .await;
    assert_eq!(
        dig_short(lab, &["A", &format!("db-0.db.{NS}.{DOMAIN}")]).await,
        std::slice::from_ref(&db_ip)
    );
    assert_eq!(
        who(&reach(lab, "client", "tcp", &format!("db.{NS}.{DOMAIN}:8080")).await),
        "db-0"
    );
    let ext = dig_short(lab, &["A", &format!("ext.{NS}.{DOMAIN}")]).await;
    assert_eq!(
        ext,
        ["198.18.250.10".to_string(), "www.example.test.".to_string()]
    );
}

async fn a_deleted_service_stops_answering(lab: &Lab) {
    step("a deleted Service: NXDOMAIN, and its cluster IP refuses");
    let ip = service(lab, "sticky")
        .await
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap();
    kubectl(lab, &["delete", "service", "sticky", "-n", NS]).await;
    wait_until(30, || async {
        dig_short(lab, &["A", &format!("sticky.{NS}.{DOMAIN}")])
            .await
            .is_empty()
    })
    .await;
    wait_until(30, || async {
        send(lab, NS, "client", "tcp", &format!("{ip}:80"), "gone")
            .await
            .is_err()
    })
    .await;
}
