//! Real nodes (`LabOptions::real_nodes`): every lab node runs a kubelet built from the pinned
//! Kubernetes modules and its own containerd with runc; kube-scheduler places pods; Switchyard
//! is installed by `helm install` of `charts/switchyard` with the images the lab built. Checked
//! here: the kubelets register Ready Nodes on containerd; helm's release runs an agent pod per
//! node, two operator replicas on different nodes and the webhook, and the agent's init
//! container put a `switchyard-cni` that answers VERSION into each node's `/opt/cni/bin`;
//! a scheduled pod and pinned pods on both nodes become Ready with addresses from their node's
//! blocks; the chart's webhook refuses an overlapping network naming the field; `kubectl exec`
//! (apiserver → kubelet → containerd) carries TCP and UDP between the pods, across nodes,
//! through a ServiceRoute's virtual IP and by its DNS name; `kubectl logs` reads a
//! container's output; a deleted pod's address claim is released; and `switchyard-lab
//! check`'s traffic checks pass against real pods.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use switchyard_e2e::lab::{Lab, LabOptions};

const NS: &str = "real";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_nodes_end_to_end() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            examples: false,
            operators: 2,
            webhook: true,
            native_services: false,
            real_nodes: true,
            conformance: false,
            gitops: false,
        },
        |lab| Box::pin(steps(lab)),
    )
    .await;
}

async fn steps(lab: &mut Lab) {
    kubelets_register_ready_nodes_on_containerd(lab).await;
    switchyard_runs_as_the_chart_installed_it(lab).await;
    pods_get_addresses_from_switchyard_cni(lab).await;
    the_charts_webhook_refuses_a_bad_spec(lab).await;
    kubectl_exec_carries_pod_traffic(lab).await;
    a_route_answers_by_address_and_name(lab).await;
    kubectl_logs_reads_a_container(lab).await;
    a_deleted_pod_releases_its_address(lab).await;
    the_lab_checks_pass_on_real_pods(lab).await;
}

async fn kubelets_register_ready_nodes_on_containerd(lab: &Lab) {
    step("each node's kubelet registers a Ready Node running on containerd");
    let api: Api<Node> = Api::all(lab.client.clone());
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let nodes = api.list(&Default::default()).await.unwrap().items;
        let ready: Vec<&Node> = nodes
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect();
        last = format!("{} of {} Ready", ready.len(), nodes.len());
        if ready.len() == 2 {
            for n in ready {
                let info = n.status.as_ref().and_then(|s| s.node_info.clone()).unwrap();
                assert!(
                    info.container_runtime_version.starts_with("containerd://"),
                    "{info:?}"
                );
                assert!(info.kubelet_version.starts_with("v1."), "{info:?}");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the kubelets' Nodes never became Ready: {last}");
}

async fn switchyard_runs_as_the_chart_installed_it(lab: &Lab) {
    step(
        "helm installed Switchyard: an agent per node, two operator replicas on different nodes, the webhook; the init container put switchyard-cni on each node",
    );
    let ns = "switchyard-system";
    let releases = kubectl(
        lab,
        &["get", "secrets", "-n", ns, "-l", "owner=helm", "-o", "name"],
    )
    .await;
    assert!(
        releases.contains("sh.helm.release.v1.switchyard.v1"),
        "{releases}"
    );
    let ready = |kind: &'static str, name: &'static str, path: &'static str| async move {
        kubectl(
            lab,
            &[
                "get",
                kind,
                "-n",
                ns,
                name,
                "-o",
                &format!("jsonpath={{{path}}}"),
            ],
        )
        .await
    };
    assert_eq!(
        ready("daemonset", "switchyard-agent", ".status.numberReady").await,
        "2"
    );
    assert_eq!(
        ready("deployment", "switchyard-operator", ".status.readyReplicas").await,
        "2"
    );
    assert_eq!(
        ready("deployment", "switchyard-webhook", ".status.readyReplicas").await,
        "1"
    );
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), ns);
    let list = pods.list(&Default::default()).await.unwrap().items;
    let on = |prefix: &str| -> Vec<String> {
        let mut nodes: Vec<String> = list
            .iter()
            .filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with(prefix))
            .map(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default()
            })
            .collect();
        nodes.sort();
        nodes
    };
    assert_eq!(on("switchyard-agent-"), ["node-1", "node-2"]);
    assert_eq!(on("switchyard-operator-"), ["node-1", "node-2"]);
    for p in list.iter().filter(|p| {
        p.metadata
            .name
            .as_deref()
            .unwrap_or("")
            .starts_with("switchyard-agent-")
    }) {
        let init = p
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|c| c.first())
            .unwrap();
        assert_eq!(init.name, "install-cni");
        let done = init
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .unwrap();
        assert_eq!(done.exit_code, 0, "{init:?}");
    }
    // The plugin the init container copied answers VERSION as the runtime would call it.
    for node in ["node-1", "node-2"] {
        let plugin = lab
            .dir
            .join("nodes")
            .join(node)
            .join("cni/bin/switchyard-cni");
        let out = tokio::process::Command::new(&plugin)
            .env("CNI_COMMAND", "VERSION")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", plugin.display()));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1.1.0"),
            "{}: {text}",
            plugin.display()
        );
        let conf = lab
            .dir
            .join("nodes")
            .join(node)
            .join("cni/net.d/10-switchyard.conflist");
        let conf =
            std::fs::read_to_string(&conf).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
        assert!(conf.contains("/run/switchyard/agent.sock"), "{conf}");
    }
}

async fn the_charts_webhook_refuses_a_bad_spec(lab: &Lab) {
    step(
        "the chart's webhook (host network, self-managed certificate) refuses a bad spec naming the field",
    );
    let mut child = lab
        .controlplane
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            // Overlaps the `real` network's pool: only the webhook sees across objects.
            .write_all(b"apiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata: {name: overlap}\nspec:\n  podCIDRs: [\"198.19.200.0/21\"]\n  serviceCIDRs: [\"198.19.240.0/24\"]\n  namespaceSelector: {matchLabels: {tenant: overlap}}\n")
            .await
            .unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an overlapping network was admitted");
    // Only the webhook knows the other network; its refusal carries the field as a cause.
    assert!(err.contains("of PodNetwork \"real\""), "{err}");
    assert!(err.contains("spec.podCIDRs[0]"), "{err}");
}

async fn pods_get_addresses_from_switchyard_cni(lab: &Lab) {
    step(
        "pods pinned to both nodes and one placed by kube-scheduler become Ready with addresses from their node's block",
    );
    apply(lab, &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, labels: {{tenant: {NS}}}}}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata: {{name: {NS}}}\nspec:\n  podCIDRs: [\"198.19.192.0/19\", \"fd00:30::/56\"]\n  blockPrefixLength: {{ipv4: 26, ipv6: 64}}\n  serviceCIDRs: [\"198.19.224.0/20\", \"fd00:31::/112\"]\n  namespaceSelector: {{matchLabels: {{tenant: {NS}}}}}\n  isolation: Open\n")).await;
    wait_condition(lab, &format!("podnetwork/{NS}"), "Ready", 60).await;
    wait_service_account(lab, NS).await;
    let t0 = Instant::now();
    apply(lab, &pod_yaml(NS, "a", "node-1", true)).await;
    apply(lab, &labelled(pod_yaml(NS, "b", "node-1", false), "web")).await;
    apply(lab, &labelled(pod_yaml(NS, "c", "node-2", false), "web")).await;
    // No nodeName: kube-scheduler binds it.
    apply(
        lab,
        &pod_yaml(NS, "scheduled", "node-1", false).replace("  nodeName: node-1\n", ""),
    )
    .await;
    wait_pods_ready(lab, NS, 4, 120).await;
    eprintln!(
        "four pods (one with two containers) Ready {:.1} s after the first was created",
        t0.elapsed().as_secs_f64()
    );
    let api: Api<Pod> = Api::namespaced(lab.client.clone(), NS);
    let scheduled = api.get("scheduled").await.unwrap();
    let node = scheduled.spec.and_then(|s| s.node_name).unwrap_or_default();
    assert!(node == "node-1" || node == "node-2", "bound to {node:?}");
    let blocks = kubectl(
        lab,
        &[
            "get",
            "nodeblocks",
            "-o",
            "jsonpath={range .items[*]}{.spec.node} {.spec.network} {.spec.cidr}{\"\\n\"}{end}",
        ],
    )
    .await;
    for (pod, node) in [("a", "node-1"), ("b", "node-1"), ("c", "node-2")] {
        let ips = pod_ips(lab, NS, pod).await;
        assert_eq!(ips.len(), 2, "{pod}: one address per family: {ips:?}");
        let v4 = ips.iter().find(|i| !i.contains(':')).unwrap();
        let v4: std::net::Ipv4Addr = v4.parse().unwrap();
        let own_block = blocks.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(node)
                && f.next() == Some(NS)
                && f.any(|c| {
                    c.parse::<ipnet::Ipv4Net>()
                        .is_ok_and(|net| net.contains(&v4))
                })
        });
        assert!(
            own_block,
            "{pod} on {node}: {v4} is in none of its blocks:\n{blocks}"
        );
    }
}

async fn exec_send(lab: &Lab, pod: &str, proto: &str, target: &str) -> String {
    let out = lab
        .kubectl_exec(
            NS,
            pod,
            &[
                "switchyard-testpod",
                "send",
                proto,
                target,
                "hi",
                "--timeout-ms",
                "2000",
            ],
        )
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl exec {pod} -- send {proto} {target}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn kubectl_exec_carries_pod_traffic(lab: &Lab) {
    step(
        "kubectl exec in a container: localhost, same node, across nodes (both families), TCP and UDP",
    );
    let b = pod_ip(lab, NS, "b").await;
    let c4 = pod_ip(lab, NS, "c").await;
    let c6 = pod_ips(lab, NS, "c")
        .await
        .into_iter()
        .find(|i| i.contains(':'))
        .unwrap();
    assert_eq!(
        exec_send(lab, "a", "tcp", "127.0.0.1:9090").await,
        "a-sidecar hi"
    );
    assert_eq!(
        exec_send(lab, "a", "tcp", &format!("{b}:8080")).await,
        "b hi"
    );
    assert_eq!(
        exec_send(lab, "a", "udp", &format!("{b}:8081")).await,
        "b hi"
    );
    // The first contact across nodes may wait for the other agent's route to the block.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = send(lab, NS, "a", "tcp", &format!("{c4}:8080"), "hi").await;
        if got.as_deref() == Ok("c hi") || Instant::now() > deadline {
            assert_eq!(got.as_deref(), Ok("c hi"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        exec_send(lab, "a", "tcp", &format!("{c4}:8080")).await,
        "c hi"
    );
    assert_eq!(
        exec_send(lab, "a", "udp", &format!("[{c6}]:8081")).await,
        "c hi"
    );
    assert_eq!(
        exec_send(lab, "c", "udp", &format!("{b}:8081")).await,
        "b hi"
    );
}

async fn a_route_answers_by_address_and_name(lab: &Lab) {
    step(
        "a ServiceRoute in front of b and c answers on its virtual IP and its DNS name, from a container",
    );
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  ports: [{{name: echo, port: 80, targetPort: 8080}}]\n")).await;
    wait_condition(lab, &format!("serviceroute/web -n {NS}"), "Programmed", 60).await;
    let vip = route_vip4(lab, NS, "web").await;
    for target in [
        format!("{vip}:80"),
        format!("web.{NS}.svc.cluster.local:80"),
        "web:80".to_string(),
    ] {
        let got = exec_send(lab, "a", "tcp", &target).await;
        assert!(got == "b hi" || got == "c hi", "{target}: {got:?}");
    }
}

async fn kubectl_logs_reads_a_container(lab: &Lab) {
    step("kubectl logs reads a container's output through the kubelet");
    let logs = kubectl(lab, &["logs", "-n", NS, "b", "-c", "main"]).await;
    assert!(logs.contains("listening tcp"), "{logs}");
}

async fn a_deleted_pod_releases_its_address(lab: &Lab) {
    step("deleting a pod releases its addresses (the CNI DEL containerd sends)");
    let ips = pod_ips(lab, NS, "b").await;
    let dir = lab.cni_state_dir("node-1");
    let claims = || {
        let mut names = Vec::new();
        for net in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                names.push(f.file_name().to_string_lossy().replace('_', ":"));
            }
        }
        names
    };
    for ip in &ips {
        assert!(
            claims().contains(ip),
            "{ip} not claimed under {}: {:?}",
            dir.display(),
            claims()
        );
    }
    kubectl(
        lab,
        &[
            "delete",
            "pod",
            "-n",
            NS,
            "b",
            "--wait=true",
            "--timeout=60s",
        ],
    )
    .await;
    wait_until(30, || async { ips.iter().all(|ip| !claims().contains(ip)) }).await;
}

async fn the_lab_checks_pass_on_real_pods(lab: &Lab) {
    step("switchyard-lab check's traffic checks pass on real pods (in the default network)");
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    wait_condition(lab, "podnetwork/default", "Ready", 60).await;
    let target = switchyard_e2e::check::Target {
        client: lab.client.clone(),
        run: lab.run.clone(),
        testpod: lab.bins.testpod.clone(),
        nodes: vec!["node-1".into(), "node-2".into()],
        real: true,
    };
    let results = switchyard_e2e::check::run(&target).await.unwrap();
    for (path, ok, detail) in &results {
        assert!(*ok, "{path}: {detail}");
    }
    assert_eq!(results.len(), 6, "{results:?}");
}
