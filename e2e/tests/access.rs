//! ServiceRoute access rules on real kernels: a guarded route's backends accept new
//! connections to their target ports only from the pods its `access` peers select, whether the
//! client goes through the virtual IP or straight to the pod IP; anyone else is refused at once
//! (TCP reset). A peer's namespaceSelector lets another namespace in, `from: []` shuts everyone
//! out, and removing `access` opens the route again. `Programmed` is the way to wait.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::api::Api;
use switchyard_api::ServiceRoute;
use switchyard_e2e::lab::{Lab, LabOptions};

const NS: &str = "guarded";
const GUEST: &str = "guest";

/// The route `web` with the given `access` block (YAML flow style; empty: none), applied and
/// waited for until every node agent programmed it.
async fn route(lab: &Lab, access: &str) {
    let access = if access.is_empty() {
        String::new()
    } else {
        format!("  access: {access}\n")
    };
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  ports: [{{name: tcp, port: 80, targetPort: 8080}}]\n{access}")).await;
    // The status of this generation first, then Programmed.
    wait_until(30, || async {
        let r = Api::<ServiceRoute>::namespaced(lab.client.clone(), NS)
            .get("web")
            .await
            .unwrap();
        r.status.and_then(|s| s.observed_generation) == r.metadata.generation
    })
    .await;
    let out = lab
        .kubectl(&[
            "wait",
            "--for=condition=Programmed",
            "--timeout=30s",
            "serviceroute/web",
            "-n",
            NS,
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "web never got Programmed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `from` (in `ns`) reaches `target` over TCP; retried a little (bounded).
async fn reaches(lab: &Lab, ns: &str, from: &str, target: &str) {
    let mut last = String::new();
    for _ in 0..20 {
        match send(lab, ns, from, "tcp", target, "hi").await {
            Ok(_) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{ns}/{from} → {target} never answered: {last}");
}

/// `from` (in `ns`) is refused by `target` at once, several times in a row (bounded).
async fn refused(lab: &Lab, ns: &str, from: &str, target: &str) {
    let mut streak = 0;
    for _ in 0..30 {
        let t = Instant::now();
        match send(lab, ns, from, "tcp", target, "x").await {
            Err(e) if e.contains("refused") || e.contains("reset") => {
                let took = t.elapsed();
                assert!(
                    took < Duration::from_millis(1400),
                    "{from} → {target}: refusal took {took:?}: a timeout, not a reject"
                );
                streak += 1;
                if streak == 3 {
                    return;
                }
            }
            other => {
                eprintln!("{ns}/{from} → {target} not refused yet: {other:?}");
                streak = 0;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    panic!("{ns}/{from} → {target} was never refused three times in a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_rules_end_to_end() {
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

fn with_labels(yaml: String, labels: &str) -> String {
    yaml.replacen("  labels: {", &format!("  labels: {{{labels}, "), 1)
}

async fn steps(lab: &mut Lab) {
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    wait_condition(lab, "podnetwork/default", "Ready", 60).await;
    create_namespace(lab, NS).await;
    create_namespace(lab, GUEST).await;
    kubectl(lab, &["label", "namespace", GUEST, "team=guest"]).await;
    // Backends on both nodes; clients on both nodes, so the pod IP paths cover the same bridge
    // and the way across nodes.
    for (name, node, labels) in [
        ("web-1", "node-1", "role: web"),
        ("web-2", "node-2", "role: web"),
        ("front", "node-2", "role: frontend"),
        ("other", "node-1", "team: none"),
    ] {
        apply(lab, &with_labels(pod_yaml(NS, name, node, false), labels)).await;
    }
    apply(lab, &pod_yaml(GUEST, "guest", "node-1", false)).await;
    wait_pods_ready(lab, NS, 4, 90).await;
    wait_pods_ready(lab, GUEST, 1, 90).await;
    let web1 = format!("{}:8080", pod_ip(lab, NS, "web-1").await);
    let web2 = format!("{}:8080", pod_ip(lab, NS, "web-2").await);

    step("a route with access from frontend pods: they get in, through the VIP and directly");
    route(
        lab,
        "{from: [{podSelector: {matchLabels: {role: frontend}}}]}",
    )
    .await;
    let web = format!("{}:80", route_vip4(lab, NS, "web").await);
    reaches(lab, NS, "front", &web).await;
    reaches(lab, NS, "front", &web1).await;
    reaches(lab, NS, "front", &web2).await;

    step("a pod without the label is refused on both paths, at once");
    refused(lab, NS, "other", &web).await;
    refused(lab, NS, "other", &web1).await;
    refused(lab, NS, "other", &web2).await;
    refused(lab, GUEST, "guest", &web).await;

    step("a peer with a namespaceSelector lets another namespace in");
    route(
        lab,
        "{from: [{podSelector: {matchLabels: {role: frontend}}}, {namespaceSelector: {matchLabels: {team: guest}}}]}",
    )
    .await;
    reaches(lab, GUEST, "guest", &web).await;
    reaches(lab, GUEST, "guest", &web1).await;
    reaches(lab, NS, "front", &web).await;
    refused(lab, NS, "other", &web).await;

    step("from: [] refuses everyone");
    route(lab, "{from: []}").await;
    refused(lab, NS, "front", &web).await;
    refused(lab, NS, "front", &web2).await;
    refused(lab, GUEST, "guest", &web).await;

    step("removing access lets everyone in again");
    route(lab, "").await;
    reaches(lab, NS, "other", &web).await;
    reaches(lab, NS, "other", &web1).await;
    reaches(lab, NS, "front", &web2).await;
    reaches(lab, GUEST, "guest", &web).await;

    step("an Isolated network admits another network's pods only where a route's access allows");
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata: {name: vault}\nspec:\n  podCIDRs: [\"198.19.128.0/20\"]\n  blockPrefixLength: {ipv4: 26}\n  serviceCIDRs: [\"198.19.32.0/24\"]\n  namespaceSelector: {matchLabels: {net: vault}}\n  isolation: Isolated\n").await;
    wait_condition(lab, "podnetwork/vault", "Ready", 60).await;
    create_namespace(lab, "vault").await;
    kubectl(lab, &["label", "namespace", "vault", "net=vault"]).await;
    apply(
        lab,
        &with_labels(pod_yaml("vault", "safe", "node-2", false), "role: safe"),
    )
    .await;
    wait_pods_ready(lab, "vault", 1, 90).await;
    let safe_pod = format!("{}:8080", pod_ip(lab, "vault", "safe").await);
    let safe_route = |access: &str| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: safe, namespace: vault}}\nspec:\n  selector: {{matchLabels: {{role: safe}}}}\n  ports: [{{name: tcp, port: 80, targetPort: 8080}}]\n{access}"
        )
    };
    apply(
        lab,
        &safe_route("  access: {from: [{namespaceSelector: {matchLabels: {team: guest}}}]}\n"),
    )
    .await;
    wait_condition(lab, "serviceroute/safe -n vault", "Programmed", 60).await;
    let safe_vip = {
        let api = Api::<ServiceRoute>::namespaced(lab.client.clone(), "vault");
        let mut found = None;
        for _ in 0..100 {
            found = api
                .get("safe")
                .await
                .unwrap()
                .status
                .and_then(|s| s.virtual_ips.into_iter().next());
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        format!("{}:80", found.expect("route safe got a virtual IP"))
    };
    // guest (default network, namespace team=guest) is allowed: through the VIP and directly.
    reaches(lab, GUEST, "guest", &safe_vip).await;
    reaches(lab, GUEST, "guest", &safe_pod).await;
    // other (default network, not allowed) is refused by the access rule.
    refused(lab, NS, "other", &safe_vip).await;
    refused(lab, NS, "other", &safe_pod).await;

    step("without an access rule, isolation drops the other network's pods again");
    apply(lab, &safe_route("")).await;
    wait_until(30, || async {
        matches!(send(lab, GUEST, "guest", "tcp", &safe_pod, "x").await, Err(e) if e.contains("timed out"))
    })
    .await;
}
