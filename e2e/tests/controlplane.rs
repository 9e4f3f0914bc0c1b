//! The lab's control plane comes up from the built binaries, serves kube-rs and kubectl, and
//! its controller manager works.
//!
//! Needs root (a bridge in the root namespace for the apiserver's address) and the binaries
//! from `e2e/controlplane/build.sh` (Go to build them on a cold cache). Without them the test
//! fails with what is missing, or, when `CI` is unset, prints the skip and passes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::bridge::{Bridge, is_root, missing};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use switchyard_e2e::Error;
use switchyard_e2e::controlplane::{Binaries, ControlPlane, ControlPlaneOptions, ensure_binaries};

const BRIDGE_ADDR: &str = "198.18.250.1";

/// iproute2, installed from its Debian package when missing.
fn have_ip() -> Result<(), Error> {
    switchyard_e2e::host::ensure_programs_blocking(&[("ip", "iproute2")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_serves_clients_and_runs_controllers() {
    let Some(binaries) = prerequisites().await else {
        return;
    };
    let pid = std::process::id();
    let bridge = Bridge::create(
        &format!("sycp{}", pid % 10000),
        &format!("{BRIDGE_ADDR}/24"),
    );
    let dir = std::env::temp_dir().join(format!("switchyard-e2e-controlplane-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);

    let mut cp = the_control_plane_starts_on_the_bridge(&dir, &binaries).await;
    let client = cp.client().await.unwrap();
    let ns_name = format!("sycp-test-{pid}");
    kube_rs_creates_and_reads_objects(&client, &ns_name).await;
    the_built_kubectl_lists_and_reports_versions(&cp, &ns_name).await;
    a_minted_identity_authenticates_with_its_groups(&cp, &dir).await;
    the_controller_manager_creates_the_default_service_account(&cp, &client, &ns_name).await;
    stopping_takes_the_api_server_down(&mut cp, &client).await;
    drop(cp);
    drop(bridge);
    let _ = std::fs::remove_dir_all(&dir);
}

const TEST: &str = "control_plane_serves_clients_and_runs_controllers";

/// The control plane binaries, or `None` (after `missing`) when a prerequisite is absent.
async fn prerequisites() -> Option<Binaries> {
    if !is_root() {
        missing(
            TEST,
            "root (the test puts a bridge with the apiserver's address in the root network namespace)",
        );
        return None;
    }
    if let Err(e) = have_ip() {
        missing(TEST, &e.to_string());
        return None;
    }
    match ensure_binaries().await {
        Ok(b) => Some(b),
        Err(e @ Error::Missing { .. }) => {
            missing(TEST, &e.to_string());
            None
        }
        Err(e) => panic!("building the control plane binaries: {e}"),
    }
}

/// The control plane starts from the built binaries and serves on the bridge's address.
async fn the_control_plane_starts_on_the_bridge(dir: &Path, binaries: &Binaries) -> ControlPlane {
    let started = Instant::now();
    let cp = ControlPlane::start(ControlPlaneOptions {
        dir: dir.to_path_buf(),
        bind: BRIDGE_ADDR.parse().unwrap(),
        binaries: binaries.clone(),
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "control plane did not start (logs in {}): {e}",
            dir.join("logs").display()
        )
    });
    eprintln!(
        "control plane up in {:?} (kube-apiserver spawn to /readyz: {:?}) at {}",
        started.elapsed(),
        cp.apiserver_ready_after(),
        cp.server_url()
    );
    assert_eq!(cp.server_url().split(':').nth(1), Some("//198.18.250.1"));
    cp
}

/// kube-rs, through the admin kubeconfig, creates a namespace and a ConfigMap and reads it back.
async fn kube_rs_creates_and_reads_objects(client: &kube::Client, ns_name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns_name.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns_name);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("hello".into()),
            ..Default::default()
        },
        data: Some([("greeting".to_string(), "hi".to_string())].into()),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let read = config_maps.get("hello").await.unwrap();
    assert_eq!(read.data.unwrap()["greeting"], "hi");
}

/// The built kubectl lists the new namespace and reports the pinned client and server version.
async fn the_built_kubectl_lists_and_reports_versions(cp: &ControlPlane, ns_name: &str) {
    let out = cp
        .kubectl()
        .args(["get", "ns", "-o", "name"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl get ns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l == format!("namespace/{ns_name}")),
        "kubectl get ns:\n{stdout}"
    );
    let out = cp
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        version["clientVersion"]["gitVersion"], "v1.37.2",
        "{version}"
    );
    assert_eq!(
        version["serverVersion"]["gitVersion"], "v1.37.2",
        "{version}"
    );
}

/// A client with a minted identity is authenticated as that user, with its groups (no RBAC yet).
async fn a_minted_identity_authenticates_with_its_groups(cp: &ControlPlane, dir: &Path) {
    let viewer = dir.join("viewer.kubeconfig");
    cp.mint_client_kubeconfig(
        "switchyard:viewer",
        &["switchyard:lab", "switchyard:viewers"],
        &viewer,
    )
    .unwrap();
    let out = cp
        .kubectl()
        .args([
            "--kubeconfig",
            viewer.to_str().unwrap(),
            "auth",
            "whoami",
            "-o",
            "json",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl auth whoami: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whoami: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        whoami["status"]["userInfo"]["username"], "switchyard:viewer",
        "{whoami}"
    );
    let groups: Vec<&str> = whoami["status"]["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g.as_str())
        .collect();
    assert!(
        groups.contains(&"switchyard:lab") && groups.contains(&"switchyard:viewers"),
        "{whoami}"
    );
}

/// The controller manager works: its service account controller creates `default`.
async fn the_controller_manager_creates_the_default_service_account(
    cp: &ControlPlane,
    client: &kube::Client,
    ns_name: &str,
) {
    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns_name);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sa_started = Instant::now();
    loop {
        match service_accounts.get_opt("default").await {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => eprintln!("get serviceaccount default: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no ServiceAccount default in {ns_name} after 30 s; kube-controller-manager log: {}",
            cp.log_path("kube-controller-manager").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "ServiceAccount default appeared after {:?}",
        sa_started.elapsed()
    );
}

/// Stopping the control plane leaves no API server answering.
async fn stopping_takes_the_api_server_down(cp: &mut ControlPlane, client: &kube::Client) {
    let stop_started = Instant::now();
    cp.stop().await;
    eprintln!("control plane stopped in {:?}", stop_started.elapsed());
    assert!(
        client.apiserver_version().await.is_err(),
        "apiserver still answers after stop"
    );
}
