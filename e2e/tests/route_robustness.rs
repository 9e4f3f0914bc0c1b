//! ServiceRoute under stress of the control and data planes: two operator replicas with the
//! leader stopped in the middle of a burst of route creations never hand one virtual IP to two
//! routes; an established connection through a virtual IP survives both agents on its path
//! being killed and restarted while traffic flows (bounded in count and time); a backend
//! change wakes its own route, not every route.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use kube::api::{Api, PostParams};
use switchyard_api::{ServiceRoute, VirtualIP};
use switchyard_e2e::lab::{Lab, LabOptions};
use switchyard_e2e::netns;

fn route(ns: &str, name: &str) -> ServiceRoute {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_under_failover_and_agent_restarts() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            examples: false,
            operators: 2,
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
    create_namespace(lab, "burst").await;

    step("40 routes created at once while the leading replica is stopped: no address twice");
    let routes: Api<ServiceRoute> = Api::namespaced(lab.client.clone(), "burst");
    let creates = (0..40).map(|i| {
        let routes = routes.clone();
        async move {
            routes
                .create(&PostParams::default(), &route("burst", &format!("r{i}")))
                .await
        }
    });
    let created = futures::future::join_all(creates);
    let (results, _) = tokio::join!(created, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let leader = lease_holder(lab).await;
        assert!(
            lab.stop_operator_named(&leader).await,
            "no replica {leader:?}"
        );
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    wait_until(60, || async {
        routes
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|r| r.status.as_ref().is_some_and(|s| s.virtual_ips.len() == 1))
    })
    .await;
    let all = routes.list(&Default::default()).await.unwrap().items;
    let addresses: Vec<String> = all
        .iter()
        .map(|r| r.status.as_ref().unwrap().virtual_ips[0].clone())
        .collect();
    let unique: BTreeSet<&String> = addresses.iter().collect();
    assert_eq!(
        unique.len(),
        40,
        "an address was handed out twice: {addresses:?}"
    );
    let claims = Api::<VirtualIP>::all(lab.client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert_eq!(claims.len(), 40, "one claim per route");

    step("an established connection through a virtual IP survives its agents' restarts");
    create_namespace(lab, "live").await;
    apply(lab, &pod_yaml("live", "client", "node-1", false)).await;
    apply(
        lab,
        &pod_yaml("live", "server", "node-2", false).replacen(
            "labels: {app: server}",
            "labels: {app: web}",
            1,
        ),
    )
    .await;
    wait_pods_ready(lab, "live", 2, 60).await;
    routes_in(lab, "live").await;
    wait_condition(lab, "serviceroute/web -n live", "Programmed", 60).await;
    let vip = Api::<ServiceRoute>::namespaced(lab.client.clone(), "live")
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap()
        .virtual_ips[0]
        .clone();
    let sandbox = lab.pod_netns("live", "client").await.unwrap();
    // 60 round trips, 200 ms apart, on one connection: 12 s bounded, 2 s per read at most.
    let talker = tokio::task::spawn_blocking(move || {
        netns::in_netns(&sandbox, move || -> Result<usize, String> {
            let addr = format!("{vip}:80").parse().map_err(|e| format!("{e}"))?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
            let deadline = Instant::now() + Duration::from_secs(30);
            for i in 0..60 {
                writeln!(s, "ping{i}").map_err(|e| format!("write {i}: {e}"))?;
                let mut line = String::new();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("read {i}: {e}"))?;
                if line.trim() != format!("server ping{i}") {
                    return Err(format!("round trip {i}: got {line:?}"));
                }
                if Instant::now() > deadline {
                    return Err("ran out of time".into());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(60)
        })
        .unwrap_or_else(|e| Err(e.to_string()))
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.kill_agent("node-1").await;
    lab.kill_agent("node-2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.start_agent("node-1").unwrap();
    lab.start_agent("node-2").unwrap();
    let done = talker.await.unwrap();
    assert_eq!(
        done,
        Ok(60),
        "the connection broke across the agent restarts"
    );
    lab.wait_agents_ready(Duration::from_secs(60))
        .await
        .unwrap();

    step("a backend change wakes its own route, not the 40 others: reports wake what they cross");
    wait_condition(lab, "serviceroute/web -n live", "Programmed", 60).await;
    let leader = lease_holder(lab).await;
    let replica = lab
        .chart_pods("switchyard-operator")
        .await
        .unwrap()
        .iter()
        .position(|(name, _)| *name == leader)
        .unwrap_or_else(|| panic!("no operator pod {leader:?}"));
    let before = lab.operator_metrics(replica).await.unwrap();
    apply(
        lab,
        &pod_yaml("live", "server2", "node-1", false).replacen(
            "labels: {app: server2}",
            "labels: {app: web}",
            1,
        ),
    )
    .await;
    let live: Api<ServiceRoute> = Api::namespaced(lab.client.clone(), "live");
    wait_until(60, || async {
        live.get("web")
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| {
                s.endpoints.is_some_and(|e| e.ready == 2)
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Programmed" && c.status == "True")
            })
    })
    .await;
    let after = lab.operator_metrics(replica).await.unwrap();
    let grew = |name: &str| sample(&after, name) - sample(&before, name);
    let reconciles = grew("switchyard_operator_reconciles_total{controller=\"serviceroute\"}");
    let woken = grew("switchyard_operator_report_wakeups_total");
    let reports = grew("switchyard_operator_agent_reports_total");
    eprintln!(
        "one backend added: {reconciles} route passes, {reports} reports, {woken} woken by them"
    );
    assert!(reports >= 2.0, "both agents reported the change: {reports}");
    assert!(
        reconciles < 20.0,
        "{reconciles} route passes for one backend of one route (41 routes exist)"
    );
    assert!(woken <= 10.0, "{woken} routes woken by {reports} reports");
}

/// The value of the sample `name` (with its labels) in a metrics text; 0 without it.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn routes_in(lab: &Lab, ns: &str) {
    let routes: Api<ServiceRoute> = Api::namespaced(lab.client.clone(), ns);
    routes
        .create(&PostParams::default(), &route(ns, "web"))
        .await
        .unwrap();
}
