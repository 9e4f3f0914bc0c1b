//! GitOps with a real Argo CD (`LabOptions::gitops`, `switchyard_e2e::gitops`): Argo CD's
//! application controller and repo server, built from the pinned release, sync Switchyard's
//! chart and a folder of networks and routes from a Git repository of the lab onto real nodes,
//! configured from the files users copy (`examples/argocd/application.yaml`,
//! `examples/argocd/argocd-cm.yaml`).
//!
//! - the platform Application (the chart, with its sync waves) is Synced and Healthy, and the
//!   nodes run what it installed;
//! - the networks Application syncs; its route has no ready backend and the shipped Lua calls
//!   it Progressing (`NoReadyBackends`), then a commit scales its pods up and the Lua calls it
//!   Healthy, and traffic and DNS reach it;
//! - a commit adding a PodNetwork that overlaps the default one is refused by the webhook: the
//!   sync fails with the webhook's message naming `spec.podCIDRs[0]`, the PodNetwork does not
//!   exist, and a revert brings the Application back to Synced;
//! - a commit deleting the route prunes it: the route, its virtual IP claim and its DNS name
//!   are gone;
//! - neither Application drifts: for five minutes after each one's last sync, every
//!   comparison (every 10 s) finds it Synced and no self-heal sync ran (caBundle, defaults and
//!   status are not drift).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard_e2e::gitops::{self, AppState, NETWORKS_APP, NETWORKS_DIR, PLATFORM_APP};
use switchyard_e2e::lab::{Lab, LabOptions};

const NS: &str = "gitops";
/// How long an Application must stay Synced after its last sync.
const NO_DRIFT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitops_end_to_end() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            gitops: true,
            ..LabOptions::default()
        },
        |lab| Box::pin(steps(lab)),
    )
    .await;
}

fn argo(lab: &Lab) -> &gitops::ArgoCd {
    lab.argocd.as_ref().expect("a GitOps lab runs Argo CD")
}

async fn app(lab: &Lab, name: &str) -> Value {
    gitops::application(&lab.controlplane, name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_app(lab: &Lab, name: &str, secs: u64, done: impl Fn(&AppState) -> bool) -> AppState {
    gitops::wait_app(&lab.controlplane, name, Duration::from_secs(secs), done)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Commits and asks Argo CD to look at once; returns the commit.
async fn commit(lab: &Lab, message: &str) -> String {
    let sha = argo(lab).repo.commit(message).await.unwrap();
    for name in [PLATFORM_APP, NETWORKS_APP] {
        let _ = gitops::refresh(&lab.controlplane, name).await;
    }
    eprintln!("committed {sha}: {message}");
    sha
}

/// The health (status, message) Argo CD recorded for one resource of an Application.
fn resource_health(app: &Value, kind: &str, name: &str) -> Option<(String, String)> {
    app["status"]["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
        .map(|r| {
            (
                r["health"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["health"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
}

/// The number of syncs in an Application's history and when its last operation finished.
fn syncs(app: &Value) -> (usize, String) {
    (
        app["status"]["history"].as_array().map_or(0, Vec::len),
        app["status"]["operationState"]["finishedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn networks_file(name: &str) -> String {
    format!("{NETWORKS_DIR}/{name}")
}

fn web_yaml(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{role: web}}}}\n  template:\n    metadata: {{labels: {{role: web}}}}\n    spec:\n      containers:\n      - name: main\n        image: switchyard-testpod:lab\n        command: [switchyard-testpod, serve, --tcp, \"8080\", --http, \"8082\", --name, web]\n        ports: [{{name: http, containerPort: 8082}}]\n        readinessProbe:\n          httpGet: {{path: /ready, port: http}}\n"
    )
}

fn route_yaml() -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  ports: [{{name: tcp, port: 80, targetPort: 8080}}]\n"
    )
}

async fn steps(lab: &mut Lab) {
    let platform_synced = the_platform_is_synced_and_healthy(lab).await;
    let vip = a_route_is_progressing_until_its_pods_are_ready(lab).await;
    a_refused_commit_fails_the_sync_and_changes_nothing(lab).await;
    deleting_a_route_prunes_it(lab, &vip).await;
    nothing_drifts(lab, platform_synced).await;
}

/// Argo CD installed the chart: Synced, Healthy, each workload Healthy, the webhook
/// registered with its caBundle; returns when the platform's sync finished.
async fn the_platform_is_synced_and_healthy(lab: &Lab) -> Instant {
    step("the platform Application (charts/switchyard with its sync waves) is Synced and Healthy");
    let synced = Instant::now();
    let a = app(lab, PLATFORM_APP).await;
    let state = AppState::of(&a);
    assert!(state.settled(), "{state:?}");
    assert_eq!(state.phase, "Succeeded", "{state:?}");
    for (kind, name) in [
        ("Deployment", "switchyard-operator"),
        ("Deployment", "switchyard-webhook"),
        ("DaemonSet", "switchyard-agent"),
    ] {
        let h = resource_health(&a, kind, name);
        assert_eq!(
            h.as_ref().map(|h| h.0.as_str()),
            Some("Healthy"),
            "{kind}/{name}: {h:?}"
        );
    }
    let bundles = webhook_ca_bundles(lab).await;
    assert_eq!(bundles.len(), 2, "{bundles:?}");
    let ns_labels = kubectl(
        lab,
        &[
            "get",
            "namespace",
            "switchyard-system",
            "-o",
            "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}",
        ],
    )
    .await;
    assert_eq!(ns_labels, "privileged", "managedNamespaceMetadata");
    synced
}

/// The networks Application: a route with no ready backend is Progressing by the shipped Lua
/// (`NoReadyBackends`), then Healthy once a commit scales its pods up; traffic and DNS reach
/// it. Returns the route's virtual IP.
async fn a_route_is_progressing_until_its_pods_are_ready(lab: &Lab) -> String {
    step(
        "the networks Application syncs; the Lua calls a route without ready backends Progressing",
    );
    let repo = &argo(lab).repo;
    let default_net =
        std::fs::read_to_string(repo_root().join("examples/01-podnetwork-default.yaml")).unwrap();
    repo.write(&networks_file("01-podnetwork-default.yaml"), &default_net)
        .unwrap();
    repo.write(
        &networks_file("10-namespace.yaml"),
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"),
    )
    .unwrap();
    repo.write(&networks_file("20-web.yaml"), &web_yaml(0))
        .unwrap();
    repo.write(&networks_file("30-route.yaml"), &route_yaml())
        .unwrap();
    repo.write(
        &networks_file("40-client.yaml"),
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {NS}}}\nspec:\n  containers:\n  - name: main\n    image: switchyard-testpod:lab\n    command: [switchyard-testpod, serve, --tcp, \"8080\", --name, client]\n"
        ),
    )
    .unwrap();
    let first = commit(lab, "a network, a route without pods, a client").await;
    gitops::apply_application(&lab.controlplane, &argo(lab).networks_app)
        .await
        .unwrap();
    wait_app(lab, NETWORKS_APP, 180, |s| {
        s.sync == "Synced" && s.revision == first && s.phase == "Succeeded"
    })
    .await;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let a = app(lab, NETWORKS_APP).await;
        last = resource_health(&a, "ServiceRoute", "web");
        if last
            .as_ref()
            .is_some_and(|(s, m)| s == "Progressing" && m.contains("NoReadyBackends"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, message) = last.clone().unwrap_or_default();
    assert!(
        status == "Progressing" && message.starts_with("NoReadyBackends"),
        "the route's health: {last:?}"
    );
    eprintln!("ServiceRoute web: {status}: {message}");
    let pn = resource_health(&app(lab, NETWORKS_APP).await, "PodNetwork", "default");
    assert_eq!(pn.as_ref().map(|h| h.0.as_str()), Some("Healthy"), "{pn:?}");
    let state = AppState::of(&app(lab, NETWORKS_APP).await);
    assert_eq!(
        state.health, "Progressing",
        "the route holds the Application back"
    );

    step("a commit scaling the pods up makes the route Healthy; traffic and DNS reach it");
    repo.write(&networks_file("20-web.yaml"), &web_yaml(2))
        .unwrap();
    let scaled = commit(lab, "two web pods").await;
    wait_app(lab, NETWORKS_APP, 180, |s| {
        s.settled() && s.revision == scaled
    })
    .await;
    let a = app(lab, NETWORKS_APP).await;
    let h = resource_health(&a, "ServiceRoute", "web");
    assert_eq!(h.as_ref().map(|h| h.0.as_str()), Some("Healthy"), "{h:?}");
    eprintln!("ServiceRoute web: {h:?}");
    let vip = kubectl(
        lab,
        &[
            "get",
            "sr",
            "-n",
            NS,
            "web",
            "-o",
            "jsonpath={.status.virtualIPs[0]}",
        ],
    )
    .await;
    assert!(!vip.is_empty());
    let mut answer = Err(String::new());
    for _ in 0..20 {
        answer = send(lab, NS, "client", "tcp", &format!("{vip}:80"), "hi").await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(answer, Ok("web hi".to_string()), "{vip}:80");
    assert_eq!(dig_short(lab).await, vip, "web.{NS}.svc.cluster.local");
    vip
}

async fn dig(lab: &Lab) -> String {
    let name = format!("web.{NS}.svc.cluster.local");
    let out = lab
        .exec(
            NS,
            "client",
            &["dig", "+time=2", "+tries=1", "@169.254.20.10", &name, "A"],
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn dig_short(lab: &Lab) -> String {
    let text = dig(lab).await;
    text.lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last())
        .collect::<Vec<_>>()
        .join(",")
}

/// A commit the webhook refuses (a PodNetwork overlapping the default one): the sync fails
/// with the webhook's message naming `spec.podCIDRs[0]`, nothing of the commit exists; a revert
/// brings the Application back to Synced.
async fn a_refused_commit_fails_the_sync_and_changes_nothing(lab: &Lab) {
    step(
        "a commit the webhook refuses fails the sync naming the field, and nothing of it is applied",
    );
    let repo = &argo(lab).repo;
    let file = networks_file("50-overlap.yaml");
    repo.write(
        &file,
        "apiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata: {name: overlap}\nspec:\n  podCIDRs: [\"198.18.192.0/18\"]\n  namespaceSelector: {matchLabels: {tenant: overlap}}\n",
    )
    .unwrap();
    let bad = commit(
        lab,
        "a PodNetwork overlapping the default one (the webhook refuses it)",
    )
    .await;
    let state = wait_app(lab, NETWORKS_APP, 180, |s| {
        s.message.contains("spec.podCIDRs[0]")
    })
    .await;
    eprintln!("operation {}: {}", state.phase, state.message);
    assert_eq!(state.sync, "OutOfSync", "{state:?}");
    let a = app(lab, NETWORKS_APP).await;
    assert_eq!(
        a["status"]["operationState"]["operation"]["sync"]["revision"], bad,
        "the failed operation is the bad commit's"
    );
    let resources = a["status"]["operationState"]["syncResult"]["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let refused = resources
        .iter()
        .find(|r| r["kind"] == "PodNetwork" && r["name"] == "overlap")
        .unwrap_or_else(|| panic!("no result for PodNetwork overlap: {resources:?}"));
    assert_eq!(refused["status"], "SyncFailed", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.podCIDRs[0]"),
        "{refused}"
    );
    let live = lab
        .kubectl(&["get", "podnetwork", "overlap"])
        .await
        .unwrap();
    assert!(!live.status.success(), "the refused PodNetwork exists");
    // `argocd app terminate-op`: the retries of the refused revision stop.
    lab.kubectl_ok(&[
        "patch",
        "application",
        "-n",
        gitops::NAMESPACE,
        NETWORKS_APP,
        "--type",
        "merge",
        "-p",
        r#"{"status":{"operationState":{"phase":"Terminating"}}}"#,
    ])
    .await
    .unwrap();

    step("reverting the commit brings the Application back to Synced");
    repo.remove(&file).unwrap();
    let reverted = commit(lab, "revert: no overlapping PodNetwork").await;
    // Nothing to apply: the cluster already is what the revert describes, so the Application
    // turns Synced without a new sync (its operation stays the terminated one).
    wait_app(lab, NETWORKS_APP, 240, |s| {
        s.settled() && s.revision == reverted
    })
    .await;
}

/// A commit deleting the route: Argo CD prunes it, its virtual IP claim goes, and its DNS
/// name stops answering.
async fn deleting_a_route_prunes_it(lab: &Lab, vip: &str) {
    step(
        "a commit deleting the route prunes it: its virtual IP is released and its DNS name is gone",
    );
    let claim = switchyard_api::virtual_ip::virtual_ip_name(&vip.parse().unwrap());
    let claims = kubectl(lab, &["get", "virtualips", "-o", "name"]).await;
    assert!(claims.contains(&claim), "{claim} in {claims}");
    argo(lab)
        .repo
        .remove(&networks_file("30-route.yaml"))
        .unwrap();
    let pruned = commit(lab, "delete the route").await;
    wait_app(lab, NETWORKS_APP, 180, |s| {
        s.settled() && s.revision == pruned
    })
    .await;
    wait_until(60, || async {
        lab.kubectl(&["get", "sr", "-n", NS, "web"])
            .await
            .map(|o| !o.status.success())
            .unwrap_or(false)
    })
    .await;
    wait_until(60, || async {
        !kubectl(lab, &["get", "virtualips", "-o", "name"])
            .await
            .contains(&claim)
    })
    .await;
    wait_until(30, || async { dig(lab).await.contains("status: NXDOMAIN") }).await;
    eprintln!("web.{NS}: NXDOMAIN; {claim} released");
}

/// Both Applications stay Synced, with no sync of their own, for [`NO_DRIFT`] after their
/// last sync, while the controller compares them every 10 s.
async fn nothing_drifts(lab: &Lab, platform_synced: Instant) {
    step("no drift: both Applications stay Synced for five minutes after their last sync");
    let networks_synced = Instant::now();
    let before: Vec<(usize, String)> = futures::future::join_all(
        [PLATFORM_APP, NETWORKS_APP].map(|n| async move { syncs(&app(lab, n).await) }),
    )
    .await;
    let until = (platform_synced + NO_DRIFT).max(networks_synced + NO_DRIFT);
    let mut compared = [String::new(), String::new()];
    let mut comparisons = [0usize; 2];
    while Instant::now() < until {
        for (i, name) in [PLATFORM_APP, NETWORKS_APP].into_iter().enumerate() {
            let a = app(lab, name).await;
            let state = AppState::of(&a);
            assert_eq!(
                state.sync, "Synced",
                "{name} drifted: {}",
                a["status"]["resources"]
            );
            assert_eq!(state.health, "Healthy", "{name}: {state:?}");
            let at = a["status"]["reconciledAt"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if at != compared[i] {
                compared[i] = at;
                comparisons[i] += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    for (i, name) in [PLATFORM_APP, NETWORKS_APP].into_iter().enumerate() {
        let after = syncs(&app(lab, name).await);
        assert_eq!(
            after, before[i],
            "{name} synced again (self-heal found drift)"
        );
        assert!(
            comparisons[i] >= 10,
            "{name}: only {} comparisons",
            comparisons[i]
        );
        eprintln!(
            "{name}: Synced through {} comparisons, no new sync",
            comparisons[i]
        );
    }
}

fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
