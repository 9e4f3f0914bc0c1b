//! PodNetwork end to end on real nodes (kubelet and containerd, Switchyard installed by its
//! chart): the first three paths of cluster traffic (container to container over localhost,
//! pod to pod on a node, pod to pod across nodes) over TCP and UDP, a second network with its
//! own pool, isolation, overlap and exhaustion reporting, node removal, operator restarts and
//! failover between the Deployment's two replicas, and cnitool driving the plugin the init
//! container installed.
//!
//! One lab serves all steps (starting one costs seconds); each step says what it checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use switchyard_api::NodeBlock;
use switchyard_e2e::lab::{Lab, LabOptions};

/// Every NodeBlock by name: its network and its node.
type Blocks = BTreeMap<String, (String, String)>;

async fn blocks(lab: &Lab) -> Blocks {
    let api: kube::Api<NodeBlock> = kube::Api::all(lab.client.clone());
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|b| {
            (
                b.metadata.name.clone().unwrap(),
                (b.spec.network, b.spec.node),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podnetwork_end_to_end() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 3,
            examples: false,
            // Two replicas from the start: the chart's Deployment spreads them over nodes.
            operators: 2,
            // The overlapping and exhausted networks below are ones the webhook would refuse;
            // the operator's own conditions are what is checked.
            webhook: false,
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
    default_network_gives_every_node_a_block(lab).await;
    let (ip_b, ip_c) = pods_get_addresses_from_their_nodes_blocks(lab).await;
    containers_of_a_pod_reach_each_other_over_localhost(lab).await;
    pods_on_one_node_reach_each_other(lab, &ip_b).await;
    pods_across_nodes_reach_each_other(lab, &ip_b, &ip_c).await;
    let ip_d = a_second_network_allocates_from_its_own_pool(lab).await;
    isolated_keeps_other_networks_out(lab, &ip_c, &ip_d).await;
    an_overlapping_network_allocates_nothing(lab).await;
    an_exhausted_pool_is_reported(lab).await;
    let before = an_operator_restart_changes_no_allocation(lab).await;
    a_standby_replica_takes_over_without_moving_a_block(lab, &before).await;
    cnitool_drives_the_plugin(lab).await;
    deleting_a_node_frees_its_block(lab, &before).await;
}

/// The default network gives each of the three nodes a block and turns Ready.
async fn default_network_gives_every_node_a_block(lab: &Lab) {
    step("the default network gives every node a block and turns Ready");
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    wait_condition(lab, "podnetwork/default", "Ready", 60).await;
    let b = blocks(lab).await;
    assert_eq!(
        b.values().filter(|(n, _)| n == "default").count(),
        3,
        "{b:?}"
    );
}

/// Pods start on their nodes with addresses from the default pool; returns the IPs of b and c.
async fn pods_get_addresses_from_their_nodes_blocks(lab: &Lab) -> (String, String) {
    step("pods start on their nodes with addresses from their node's block");
    create_namespace(lab, "t1").await;
    apply(lab, &pod_yaml("t1", "a", "node-1", true)).await;
    apply(lab, &pod_yaml("t1", "b", "node-1", false)).await;
    apply(lab, &pod_yaml("t1", "c", "node-2", false)).await;
    wait_pods_ready(lab, "t1", 3, 90).await;
    let ip_b = pod_ip(lab, "t1", "b").await;
    let ip_c = pod_ip(lab, "t1", "c").await;
    assert!(
        ip_b.starts_with("198.18.1") || ip_b.starts_with("198.18.2"),
        "{ip_b} is in the default pool"
    );
    (ip_b, ip_c)
}

/// The containers of one pod reach each other over localhost.
async fn containers_of_a_pod_reach_each_other_over_localhost(lab: &Lab) {
    step("container to container in one pod over localhost");
    assert_eq!(
        send(lab, "t1", "a", "tcp", "127.0.0.1:9090", "hi").await,
        Ok("a-sidecar hi".to_string())
    );
    assert_eq!(
        send(lab, "t1", "a", "tcp", "127.0.0.1:8080", "hi").await,
        Ok("a hi".to_string())
    );
}

/// Two pods on one node reach each other over TCP and UDP.
async fn pods_on_one_node_reach_each_other(lab: &Lab, ip_b: &str) {
    step("pod to pod on one node, TCP and UDP");
    assert_eq!(
        send(lab, "t1", "a", "tcp", &format!("{ip_b}:8080"), "x").await,
        Ok("b x".to_string())
    );
    assert_eq!(
        send(lab, "t1", "a", "udp", &format!("{ip_b}:8081"), "y").await,
        Ok("b y".to_string())
    );
}

/// Pods on different nodes reach each other over TCP and UDP.
async fn pods_across_nodes_reach_each_other(lab: &Lab, ip_b: &str, ip_c: &str) {
    step("pod to pod across nodes, TCP and UDP");
    assert_eq!(
        send(lab, "t1", "a", "tcp", &format!("{ip_c}:8080"), "x").await,
        Ok("c x".to_string())
    );
    assert_eq!(
        send(lab, "t1", "c", "udp", &format!("{ip_b}:8081"), "y").await,
        Ok("b y".to_string())
    );
}

/// A second, dual-stack network gives its pods addresses from its own pool, and they talk over
/// IPv4 and IPv6; returns d's IPv4 address.
async fn a_second_network_allocates_from_its_own_pool(lab: &Lab) -> String {
    step("a second network with a namespace selector gives its pods addresses from its own pool");
    apply(lab, &example("02-podnetwork-tenant.yaml")).await;
    wait_condition(lab, "podnetwork/blue", "Ready", 60).await;
    wait_service_account(lab, "blue").await;
    apply(lab, &pod_yaml("blue", "d", "node-2", false)).await;
    apply(lab, &pod_yaml("blue", "e", "node-3", false)).await;
    wait_pods_ready(lab, "blue", 2, 90).await;
    let ip_d = pod_ip(lab, "blue", "d").await;
    let ip_e = pod_ip(lab, "blue", "e").await;
    assert!(
        ip_d.starts_with("198.19."),
        "{ip_d} is in blue's pool 198.19.64.0/18"
    );
    let ips_d = pod_ips(lab, "blue", "d").await;
    assert!(
        ips_d.iter().any(|i| i.starts_with("fd00:10:")),
        "dual-stack: {ips_d:?}"
    );
    // First contact across nodes in a new network: bounded waits (see `send_until`).
    assert_eq!(
        send_until(
            lab,
            ("blue", "e"),
            "tcp",
            &format!("{ip_d}:8080"),
            "z",
            "d z",
            20
        )
        .await,
        Ok("d z".to_string())
    );
    assert_eq!(
        send_until(
            lab,
            ("blue", "d"),
            "udp",
            &format!("{ip_e}:8081"),
            "z",
            "e z",
            20
        )
        .await,
        Ok("e z".to_string())
    );
    let ip6_e = pod_ips(lab, "blue", "e")
        .await
        .into_iter()
        .find(|i| i.contains(':'))
        .expect("e has an IPv6 address");
    assert_eq!(
        send_until(
            lab,
            ("blue", "d"),
            "tcp",
            &format!("[{ip6_e}]:8080"),
            "v6",
            "e v6",
            20
        )
        .await,
        Ok("e v6".to_string()),
        "IPv6 across nodes"
    );
    ip_d
}

/// An Isolated network refuses other networks' pods; an Open one lets them in.
async fn isolated_keeps_other_networks_out(lab: &Lab, ip_c: &str, ip_d: &str) {
    step("Isolated keeps other networks' pods out; Open lets them in");
    let denied = send(lab, "t1", "c", "tcp", &format!("{ip_d}:8080"), "no").await;
    assert!(
        denied.is_err(),
        "default-network pod reached an Isolated pod: {denied:?}"
    );
    assert_eq!(
        send(lab, "blue", "d", "tcp", &format!("{ip_c}:8080"), "ok").await,
        Ok("c ok".to_string())
    );
}

/// A PodNetwork overlapping another reports Overlap and gets no block.
async fn an_overlapping_network_allocates_nothing(lab: &Lab) {
    step("a PodNetwork that overlaps another reports Overlap and allocates nothing");
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata: {name: overlap}\nspec:\n  podCIDRs: [\"198.18.192.0/18\"]\n  namespaceSelector: {matchLabels: {tenant: overlap}}\n").await;
    let reason = wait_condition_reason(lab, "podnetwork/overlap", "Accepted", "False", 30).await;
    assert_eq!(reason, "Overlap");
    assert!(!blocks(lab).await.values().any(|(n, _)| n == "overlap"));
}

/// A pool too small for the nodes reports PoolExhausted with each of its blocks given once.
async fn an_exhausted_pool_is_reported(lab: &Lab) {
    step("a pool the nodes exhaust reports PoolExhausted and allocates no block twice");
    apply(lab, "apiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata: {name: tiny}\nspec:\n  podCIDRs: [\"198.19.200.0/24\"]\n  blockPrefixLength: {ipv4: 25}\n  namespaceSelector: {matchLabels: {tenant: tiny}}\n").await;
    let reason = wait_condition_reason(lab, "podnetwork/tiny", "Ready", "False", 30).await;
    assert_eq!(reason, "PoolExhausted");
    let tiny: Vec<String> = blocks(lab)
        .await
        .into_iter()
        .filter(|(_, (n, _))| n == "tiny")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(tiny.len(), 2, "{tiny:?}");
}

/// Restarting both operator replicas, one after the other (on real nodes: deleting each pod,
/// which the Deployment replaces), leaves every block where it was; returns the blocks.
async fn an_operator_restart_changes_no_allocation(lab: &mut Lab) -> Blocks {
    step("restarting the operator replicas changes no allocation");
    let before = blocks(lab).await;
    for replica in 0..2 {
        lab.stop_operator(replica).await;
        lab.start_operator(replica).unwrap();
    }
    wait_until(60, || async { !lease_holder(lab).await.is_empty() }).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(blocks(lab).await, before);
    before
}

/// The replica that does not lead stands by and, when the leader stops, takes over without
/// moving a block.
async fn a_standby_replica_takes_over_without_moving_a_block(lab: &mut Lab, before: &Blocks) {
    step("a second replica stands by; when the leader stops it takes over without moving a block");
    let holder = lease_holder(lab).await;
    assert!(!holder.is_empty(), "a replica leads");
    assert!(lab.stop_operator_named(&holder).await, "{holder} runs");
    wait_until(30, || async {
        let now = lease_holder(lab).await;
        !now.is_empty() && now != holder
    })
    .await;
    eprintln!("{holder} stopped; {} leads", lease_holder(lab).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(&blocks(lab).await, before);
}

/// cnitool, the reference runtime, drives switchyard-cni through every CNI verb.
async fn cnitool_drives_the_plugin(lab: &Lab) {
    step("cnitool drives switchyard-cni through ADD, CHECK, STATUS, GC and DEL");
    cnitool_roundtrip(lab).await;
}

/// Deleting a node frees the block it held.
async fn deleting_a_node_frees_its_block(lab: &mut Lab, before: &Blocks) {
    step("deleting a node frees its block");
    assert!(
        before
            .values()
            .any(|(n, node)| n == "default" && node == "node-3")
    );
    lab.delete_node("node-3").await.unwrap();
    wait_until(30, || async {
        !blocks(lab).await.values().any(|(_, node)| node == "node-3")
    })
    .await;
    // The other nodes' blocks stay where they were.
    let kept: Blocks = before
        .iter()
        .filter(|(_, (_, node))| node != "node-3")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let now = blocks(lab).await;
    for (name, block) in &kept {
        assert_eq!(now.get(name), Some(block), "{name} moved: {now:?}");
    }
}
