//! ServiceRoute, operator side, on a real control plane: virtual IPs claimed through the API
//! server (requested or automatic, unique, stable across restarts, released on delete), the
//! backends chosen by labels across consenting namespaces published as EndpointSlices, DNS
//! names and conditions in the status, and Programmed once both node agents report the route
//! applied (without status writes on mere Lease renewals).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use switchyard_api::{ServiceRoute, VirtualIP};
use switchyard_e2e::lab::{Lab, LabOptions};

async fn route(lab: &Lab, ns: &str, name: &str) -> ServiceRoute {
    Api::<ServiceRoute>::namespaced(lab.client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

/// `kubectl wait --for=condition=Programmed`, at `generation`, on both nodes, and Ready.
async fn programmed(lab: &Lab, ns: &str, name: &str, generation: i64) {
    let obj = format!("serviceroute/{name}");
    wait_until(30, || async {
        route(lab, ns, name).await.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.observed_generation >= Some(generation))
        })
    })
    .await;
    let out = lab
        .kubectl(&[
            "wait",
            "--for=condition=Programmed",
            "--timeout=30s",
            &obj,
            "-n",
            ns,
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{obj} never got Programmed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = route(lab, ns, name).await.status.unwrap();
    assert_eq!(
        s.nodes,
        Some(switchyard_api::service_route::NodeCounts {
            programmed: 2,
            total: 2
        }),
        "{s:?}"
    );
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Ready"),
        "{s:?}"
    );
}

async fn vips(lab: &Lab) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Api::<VirtualIP>::all(lab.client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|v| {
            (
                v.spec.address,
                format!("{}/{}", v.spec.route.namespace, v.spec.route.name),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serviceroute_operator_end_to_end() {
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

async fn steps(lab: &mut Lab) {
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    wait_condition(lab, "podnetwork/default", "Ready", 60).await;
    a_route_gets_a_virtual_ip_dns_names_and_backends(lab).await;
    agents_program_the_route_without_status_churn(lab).await;
    a_spec_change_is_programmed_at_its_generation(lab).await;
    a_deleted_backend_leaves_the_endpoints(lab).await;
    a_requested_virtual_ip_is_honoured_once(lab).await;
    an_operator_restart_moves_no_virtual_ip(lab).await;
    a_released_virtual_ip_goes_to_the_route_asking_for_it(lab).await;
    namespaces_without_consent_are_left_out(lab).await;
    a_route_named_like_a_service_reports_conflict(lab).await;
    kubectl_get_shows_the_virtual_ips(lab).await;
}

/// A route gets a virtual IP from its network's pool, its DNS names and its ready backends.
async fn a_route_gets_a_virtual_ip_dns_names_and_backends(lab: &Lab) {
    step("a route gets a virtual IP from its network's pool, DNS names and its ready backends");
    apply(
        lab,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: shop}}\n",
    )
    .await;
    wait_service_account(lab, "shop").await;
    apply(
        lab,
        &labelled(pod_yaml("shop", "web-1", "node-1", false), "web"),
    )
    .await;
    apply(
        lab,
        &labelled(pod_yaml("shop", "web-2", "node-2", false), "web"),
    )
    .await;
    wait_pods_ready(lab, "shop", 2, 90).await;
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {role: web}}\n  ports: [{name: http, port: 80, targetPort: 8082}]\n  hostnames: [web.shop.example.internal]\n").await;
    wait_until(30, || async {
        route(lab, "shop", "web")
            .await
            .status
            .is_some_and(|s| s.endpoints.is_some_and(|e| e.ready == 2))
    })
    .await;
    let r = route(lab, "shop", "web").await.status.unwrap();
    assert_eq!(r.virtual_ips.len(), 1);
    assert!(
        r.virtual_ips[0].starts_with("198.19."),
        "{:?}",
        r.virtual_ips
    );
    assert_eq!(
        r.dns_names,
        vec!["web.shop.svc.cluster.local", "web.shop.example.internal"]
    );
    let mut ips = vec![
        pod_ip(lab, "shop", "web-1").await,
        pod_ip(lab, "shop", "web-2").await,
    ];
    ips.sort();
    assert_eq!(ready_endpoints(lab, "shop", "web").await, ips);
    let reason =
        wait_condition_reason(lab, "serviceroute/web -n shop", "Accepted", "True", 10).await;
    assert_eq!(reason, "Accepted");
}

/// Both node agents program the route, and their Lease renewals write no status.
async fn agents_program_the_route_without_status_churn(lab: &Lab) {
    step("both node agents program the route; the status stays put while they renew");
    programmed(lab, "shop", "web", 1).await;
    let before = route(lab, "shop", "web").await.metadata.resource_version;
    // Longer than a Lease renewal (10 s): renewals wake the controller, but write nothing.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = route(lab, "shop", "web").await.metadata.resource_version;
    assert_eq!(before, after, "lease renewals rewrote the route's status");
}

/// A spec change reaches the EndpointSlices' annotations and is Programmed at its generation.
async fn a_spec_change_is_programmed_at_its_generation(lab: &Lab) {
    step("a spec change reaches the slices' annotations and is Programmed at its generation");
    kubectl(
        lab,
        &[
            "patch",
            "serviceroute",
            "web",
            "-n",
            "shop",
            "--type=merge",
            "-p",
            r#"{"spec":{"sessionAffinity":{"clientIP":{"timeoutSeconds":60}}}}"#,
        ],
    )
    .await;
    let generation = route(lab, "shop", "web").await.metadata.generation.unwrap();
    wait_until(30, || async {
        let lp = ListParams::default().labels("switchyard.dev/route=web");
        let slices = Api::<EndpointSlice>::namespaced(lab.client.clone(), "shop")
            .list(&lp)
            .await
            .unwrap()
            .items;
        !slices.is_empty()
            && slices.iter().all(|s| {
                let a = s.metadata.annotations.clone().unwrap_or_default();
                a.get("switchyard.dev/route-generation") == Some(&generation.to_string())
                    && a.get("switchyard.dev/route-params")
                        .is_some_and(|p| p.contains(r#""affinity":60"#))
            })
    })
    .await;
    programmed(lab, "shop", "web", generation).await;
}

/// A deleted backend pod leaves the route's endpoint set.
async fn a_deleted_backend_leaves_the_endpoints(lab: &Lab) {
    step("a backend that is deleted leaves the endpoint set");
    kubectl(
        lab,
        &["delete", "pod", "-n", "shop", "web-2", "--wait=false"],
    )
    .await;
    let ip1 = pod_ip(lab, "shop", "web-1").await;
    wait_until(30, || async {
        ready_endpoints(lab, "shop", "web").await == vec![ip1.clone()]
    })
    .await;
}

/// A requested virtual IP is given to its route, and a second route asking for it is refused.
async fn a_requested_virtual_ip_is_honoured_once(lab: &Lab) {
    step("a requested virtual IP is honoured; a second route asking for it is refused");
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {name: pay, namespace: shop}\nspec:\n  selector: {matchLabels: {role: pay}}\n  virtualIPs: [\"198.19.0.50\"]\n  ports: [{port: 9090}]\n").await;
    wait_until(30, || async {
        route(lab, "shop", "pay")
            .await
            .status
            .is_some_and(|s| s.virtual_ips == vec!["198.19.0.50"])
    })
    .await;
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {name: pay2, namespace: shop}\nspec:\n  selector: {matchLabels: {role: pay}}\n  virtualIPs: [\"198.19.0.50\"]\n  ports: [{port: 9090}]\n").await;
    let reason =
        wait_condition_reason(lab, "serviceroute/pay2 -n shop", "Accepted", "False", 30).await;
    assert_eq!(reason, "VirtualIPUnavailable");
    assert!(
        vips(lab)
            .await
            .contains(&("198.19.0.50".to_string(), "shop/pay".to_string()))
    );
}

/// Restarting the operator leaves every VirtualIP claim where it was.
async fn an_operator_restart_moves_no_virtual_ip(lab: &mut Lab) {
    step("restarting the operator moves no virtual IP");
    let before = vips(lab).await;
    lab.stop_operator(0).await;
    lab.start_operator(0).unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(vips(lab).await, before);
}

/// Deleting a route releases its address to the route that was refused it.
async fn a_released_virtual_ip_goes_to_the_route_asking_for_it(lab: &Lab) {
    step("deleting a route releases its address, and the route that asked for it gets it");
    Api::<ServiceRoute>::namespaced(lab.client.clone(), "shop")
        .delete("pay", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(30, || async {
        vips(lab)
            .await
            .contains(&("198.19.0.50".to_string(), "shop/pay2".to_string()))
    })
    .await;
    wait_condition_reason(lab, "serviceroute/pay2 -n shop", "Accepted", "True", 30).await;
}

/// Pods of namespaces that do not consent are no backends and are named in ResolvedRefs.
async fn namespaces_without_consent_are_left_out(lab: &Lab) {
    step("pods of namespaces without consent are left out and named in ResolvedRefs");
    apply(lab, "apiVersion: v1\nkind: Namespace\nmetadata: {name: canary, labels: {team: shop}, annotations: {switchyard.dev/allow-routes-from: shop}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: rogue, labels: {team: shop}}\n").await;
    wait_service_account(lab, "canary").await;
    wait_service_account(lab, "rogue").await;
    apply(
        lab,
        &labelled(pod_yaml("canary", "api-c", "node-1", false), "api"),
    )
    .await;
    apply(
        lab,
        &labelled(pod_yaml("rogue", "api-r", "node-2", false), "api"),
    )
    .await;
    wait_pods_ready(lab, "canary", 1, 60).await;
    wait_pods_ready(lab, "rogue", 1, 60).await;
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {name: api, namespace: shop}\nspec:\n  selector: {matchLabels: {role: api}}\n  namespaces: {from: Selector, selector: {matchLabels: {team: shop}}}\n  ports: [{port: 8080}]\n").await;
    let reason =
        wait_condition_reason(lab, "serviceroute/api -n shop", "ResolvedRefs", "False", 30).await;
    assert_eq!(reason, "RefNotPermitted");
    let msg = kubectl(
        lab,
        &[
            "get",
            "sr",
            "api",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"ResolvedRefs\")].message}",
        ],
    )
    .await;
    assert!(msg.contains("rogue") && !msg.contains("canary"), "{msg}");
    let canary_ip = pod_ip(lab, "canary", "api-c").await;
    wait_until(30, || async {
        ready_endpoints(lab, "shop", "api").await == vec![canary_ip.clone()]
    })
    .await;
}

/// A route named like a native Service of its namespace is not Accepted, for Conflict.
async fn a_route_named_like_a_service_reports_conflict(lab: &Lab) {
    step("a route named like a native Service in its namespace reports Conflict");
    apply(lab, "apiVersion: v1\nkind: Service\nmetadata: {name: clash, namespace: shop}\nspec: {ports: [{port: 80}]}\n").await;
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {name: clash, namespace: shop}\nspec:\n  selector: {matchLabels: {role: web}}\n  ports: [{port: 80}]\n").await;
    let reason =
        wait_condition_reason(lab, "serviceroute/clash -n shop", "Accepted", "False", 30).await;
    assert_eq!(reason, "Conflict");
}

/// `kubectl get sr` shows the virtual IPs column with the requested address.
async fn kubectl_get_shows_the_virtual_ips(lab: &Lab) {
    step("kubectl get sr answers the first questions");
    let table = kubectl(lab, &["get", "sr", "-n", "shop"]).await;
    assert!(
        table.contains("VIRTUAL IPS") && table.contains("198.19.0.50"),
        "{table}"
    );
}
