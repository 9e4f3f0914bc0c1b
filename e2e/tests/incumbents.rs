//! The incumbents in the lab: kube-proxy (nftables mode, built from the pinned Kubernetes
//! module) in each node's namespace carries a pod's connection to a native Service's ClusterIP
//! to a pod on the other node, and CoreDNS (built from its pinned module) answers the Service's
//! name with that ClusterIP. Then `switchyard-lab bench --compare` runs at a tiny size on a lab
//! of its own and prints its table of ratios, once against ServiceRoutes and once (`--native`)
//! with Switchyard serving the same Services as the incumbents.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use switchyard_e2e::compare::incumbents::{COREDNS_ADDR, Incumbents};
use switchyard_e2e::lab::{Lab, LabOptions};
use switchyard_e2e::netns;
use switchyard_e2e::topology::NodeNet;

const NS: &str = "incumbents";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_proxy_and_coredns_work_in_the_lab_and_the_comparison_runs() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            examples: true,
            ..Default::default()
        },
        |lab| Box::pin(incumbents_in_the_lab(lab)),
    )
    .await;
    the_comparison_prints_its_table_and_plots(false).await;
    the_comparison_prints_its_table_and_plots(true).await;
}

/// kube-proxy and CoreDNS, built from their pinned modules, serve a native Service in the lab.
async fn incumbents_in_the_lab(lab: &mut Lab) {
    let n0 = lab.topology.nodes[0].clone();
    let n1 = lab.topology.nodes[1].clone();
    let mut inc = Incumbents::new(lab).await.unwrap();
    kube_proxy_and_coredns_start(&mut inc, &n0, &n1).await;
    let (cluster_ip, backend_ip) = a_native_service_gets_a_cluster_ip(lab, &n0, &n1).await;
    kube_proxy_carries_the_connection(lab, &n0, &cluster_ip, &backend_ip).await;
    coredns_answers_the_service_name(&n0, &cluster_ip).await;
    inc.stop_all().await;
}

/// kube-proxy starts and syncs on both nodes, and CoreDNS starts on the first.
async fn kube_proxy_and_coredns_start(inc: &mut Incumbents, n0: &NodeNet, n1: &NodeNet) {
    step("kube-proxy on both nodes, CoreDNS on the first");
    for n in [n0, n1] {
        inc.start_kube_proxy(&n.name).unwrap();
    }
    for n in [n0, n1] {
        inc.wait_kube_proxy_synced(&n.name, Duration::from_secs(60))
            .await
            .unwrap();
    }
    inc.start_coredns(&n0.name, Duration::from_secs(60))
        .await
        .unwrap();
}

/// A native Service in front of a pod on the second node gets a ClusterIP from the lab's
/// service range; returns the ClusterIP and the backend's address.
async fn a_native_service_gets_a_cluster_ip(
    lab: &Lab,
    n0: &NodeNet,
    n1: &NodeNet,
) -> (String, String) {
    step("a native Service in front of a pod on the second node");
    create_namespace(lab, NS).await;
    apply(lab, &pod_yaml(NS, "backend", &n1.name, false)).await;
    apply(lab, &pod_yaml(NS, "client", &n0.name, false)).await;
    apply(
        lab,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: {NS}\nspec:\n  selector: {{app: backend}}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}\n"
        ),
    )
    .await;
    wait_pods_ready(lab, NS, 2, 60).await;
    let cluster_ip = kubectl(
        lab,
        &[
            "get",
            "svc",
            "echo",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )
    .await;
    assert!(
        cluster_ip.starts_with("198.19.255."),
        "ClusterIP {cluster_ip:?} is not from the lab's service range"
    );
    let backend_ip = pod_ip(lab, NS, "backend").await;
    (cluster_ip, backend_ip)
}

/// kube-proxy programs the endpoint and carries the client's connection to the ClusterIP.
async fn kube_proxy_carries_the_connection(
    lab: &Lab,
    n0: &NodeNet,
    cluster_ip: &str,
    backend_ip: &str,
) {
    step("kube-proxy programs the endpoint and carries the connection");
    let ns0 = n0.netns.clone();
    // A lone endpoint is a `dnat to <ip>:<port>` in the service's chain.
    let want = format!(" to {backend_ip}:8080");
    wait_until(60, || {
        let (ns0, want) = (ns0.clone(), want.clone());
        async move {
            netns::exec(&ns0, "nft", ["list", "table", "ip", "kube-proxy"])
                .await
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&want))
        }
    })
    .await;
    let reply = send(
        lab,
        NS,
        "client",
        "tcp",
        &format!("{cluster_ip}:80"),
        "hello",
    )
    .await
    .unwrap_or_else(|e| panic!("client to ClusterIP {cluster_ip}:80: {e}"));
    assert_eq!(
        reply, "backend hello",
        "the backend answers through kube-proxy's DNAT"
    );
}

/// CoreDNS answers the Service's name with its ClusterIP and an unknown name with NXDOMAIN.
async fn coredns_answers_the_service_name(n0: &NodeNet, cluster_ip: &str) {
    step("CoreDNS answers the Service's name with its ClusterIP");
    let name = format!("echo.{NS}.svc.cluster.local");
    let out = netns::exec(
        &n0.netns,
        "dig",
        [
            &format!("@{COREDNS_ADDR}"),
            "+short",
            "+time=2",
            "+tries=2",
            &name,
            "A",
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cluster_ip,
        "dig @{COREDNS_ADDR} {name}"
    );
    let out = netns::exec(
        &n0.netns,
        "dig",
        [
            &format!("@{COREDNS_ADDR}"),
            "+time=2",
            "+tries=2",
            &format!("nope.{NS}.svc.cluster.local"),
            "A",
        ],
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("status: NXDOMAIN"),
        "an unknown name is NXDOMAIN: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `switchyard-lab bench --compare` (`--native`: on the same Services for both sides) at a
/// tiny size prints every row of its table and writes every plot.
async fn the_comparison_prints_its_table_and_plots(native: bool) {
    let noun = if native { "Services" } else { "routes" };
    step(&format!(
        "switchyard-lab bench --compare at a tiny size ({noun})"
    ));
    let out_dir =
        std::env::temp_dir().join(format!("switchyard-compare-{}-{noun}", std::process::id()));
    let mut args = vec!["bench", "--compare"];
    if native {
        args.push("--native");
    }
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-lab"))
            .args(args)
            .args([
                "--sizes",
                "50",
                "--changes",
                "6",
                "--connections",
                "500",
                "--dns-seconds",
                "2",
                // The lab's debug builds: a release build is for the real figures.
                "--debug-build",
                "--out",
            ])
            .arg(&out_dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the comparison finishes within 5 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench --compare failed:\n{stdout}\n{stderr}"
    );
    for row in [
        "| measure | Switchyard | incumbent | ratio (Switchyard / incumbent) |".to_string(),
        format!("| full sync, 50 {noun} × 10 backends"),
        format!("| one-backend change at 50 {noun}"),
        "| programming latency p99".into(),
        "| connections/s through the virtual IP, few".into(),
        "| connections/s through the virtual IP, many".into(),
        "| DNS QPS, cluster names |".into(),
        "| DNS QPS, search-path misses |".into(),
        format!("| RSS at 50 {noun}: agent vs kube-proxy |"),
    ] {
        assert!(
            stdout.contains(&row),
            "no row {row:?} in:\n{stdout}\n{stderr}"
        );
    }
    for file in [
        "full-sync.svg",
        "change-latency.svg",
        "programming.svg",
        "connections.svg",
        "dns-qps.svg",
        "memory.svg",
        "dns-answers.md",
    ] {
        let text =
            std::fs::read_to_string(out_dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!text.is_empty(), "{file} is empty");
    }
    // Every DNS question answered alike but for the documented differences (TTL, owner case).
    if native {
        let answers = std::fs::read_to_string(out_dir.join("dns-answers.md")).unwrap();
        assert!(
            answers.contains("both about the same Services"),
            "{answers}"
        );
        assert!(
            !stdout.contains("pending"),
            "every figure measured:\n{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}
