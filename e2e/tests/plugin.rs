//! `kubectl switchyard` against a real lab, and the kubectl experience of the CRDs.
//!
//! `status` lists a healthy route and puts a broken one (a virtual IP held by another route)
//! first, as text and as JSON, through `--kubeconfig`, `KUBECONFIG` and `--context`. `trace`
//! says allow for a pod an access rule admits and deny for one it does not, each checked
//! against real traffic in the same run; it names the backend set of a `Local` route per
//! source node (checked against which backend answers) and the route's DNS name. Then plain
//! kubectl: `get sr,pn` columns, `describe sr` conditions and Events, `explain` of a few
//! fields, `wait --for=condition=Ready|Programmed|Accepted=false`. Finally the metric names the
//! docs list are scraped from the live operator and agent pods, and `helm upgrade --set
//! tracing.otlpEndpoint=…,logFormat=json` makes the operator export its reconcile spans to a
//! receiver on the fabric and log JSON lines. Runs on real nodes (the chart's pods).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard_e2e::lab::{Lab, LabOptions};

const NS: &str = "plug";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_plugin_end_to_end() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            examples: false,
            operators: 1,
            // The broken route below is one the webhook would refuse; the operator's own
            // condition is what `status` must surface.
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

/// Runs the plugin with the lab's kubeconfig.
async fn plugin(lab: &Lab, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(&lab.bins.plugin);
    cmd.arg("--kubeconfig")
        .arg(lab.controlplane.kubeconfig())
        .args(args)
        .env_remove("KUBECONFIG");
    cmd.output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn plugin_ok(lab: &Lab, args: &[&str]) -> String {
    let o = plugin(lab, args).await;
    assert!(
        o.status.success(),
        "kubectl-switchyard {args:?} failed ({}): {}{}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

/// `trace` as JSON, with its exit code (0 allow, 2 anything else).
async fn trace(lab: &Lab, args: &[&str]) -> (Value, Option<i32>) {
    let mut all = vec!["trace"];
    all.extend(args);
    all.extend(["-o", "json"]);
    let o = plugin(lab, &all).await;
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| {
        panic!(
            "trace {args:?}: not JSON ({e}): {}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (v, o.status.code())
}

async fn route(lab: &Lab, name: &str, extra: &str) {
    apply(lab, &format!("apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  ports: [{{name: tcp, port: 80, targetPort: 8080}}]\n{extra}")).await;
}

/// The first answer of `from` → `target` over TCP (bounded retries), or the last error.
async fn answer(lab: &Lab, from: &str, target: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..10 {
        match send(lab, NS, from, "tcp", target, "hi").await {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

/// `from` → `target` is refused at once three times in a row (bounded).
async fn refused(lab: &Lab, from: &str, target: &str) {
    let mut streak = 0;
    for _ in 0..30 {
        match send(lab, NS, from, "tcp", target, "x").await {
            Err(e) if e.contains("refused") || e.contains("reset") => {
                streak += 1;
                if streak == 3 {
                    return;
                }
            }
            other => {
                eprintln!("{from} → {target} not refused yet: {other:?}");
                streak = 0;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    panic!("{from} → {target} was never refused three times in a row");
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

async fn steps(lab: &mut Lab) {
    let (web1_ip, web2_ip) = pods_start_with_their_roles(lab).await;
    let (web_vip, local_vip) = routes_are_programmed_and_ready(lab).await;
    a_route_asking_for_a_taken_virtual_ip_is_not_accepted(lab, &web_vip).await;
    status_lists_the_broken_route_first(lab, &web_vip).await;
    status_json_through_kubeconfig_and_context(lab, &web_vip).await;
    trace_allows_an_admitted_pod_and_traffic_passes(lab, &web_vip, &web1_ip, &web2_ip).await;
    trace_denies_another_pod_and_traffic_is_refused(lab, &web_vip, &web2_ip).await;
    trace_names_a_local_routes_backends_per_node(lab, &local_vip, &web1_ip, &web2_ip).await;
    trace_finds_no_path_for_the_broken_route(lab).await;
    kubectl_get_shows_the_printer_columns(lab, &web_vip).await;
    kubectl_describe_shows_conditions_and_events(lab, &web_vip).await;
    kubectl_explain_documents_the_fields(lab).await;
    kubectl_waits_for_the_documented_conditions(lab).await;
    the_binaries_export_the_documented_metrics(lab).await;
    otlp_receives_the_reconcile_spans_and_logs_are_json(lab).await;
}

/// The default network turns Ready and four pods with their roles start; returns the web IPs.
async fn pods_start_with_their_roles(lab: &Lab) -> (String, String) {
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    wait_condition(lab, "podnetwork/default", "Ready", 60).await;
    create_namespace(lab, NS).await;
    for (name, node, role) in [
        ("web-1", "node-1", "web"),
        ("web-2", "node-2", "web"),
        ("front", "node-2", "frontend"),
        ("other", "node-1", "batch"),
    ] {
        let y = pod_yaml(NS, name, node, false).replacen(
            "  labels: {",
            &format!("  labels: {{role: {role}, "),
            1,
        );
        apply(lab, &y).await;
    }
    wait_pods_ready(lab, NS, 4, 90).await;
    let web1_ip = pod_ip(lab, NS, "web-1").await;
    let web2_ip = pod_ip(lab, NS, "web-2").await;
    (web1_ip, web2_ip)
}

/// Routes web (access from role=frontend) and local (Local) turn Programmed and Ready;
/// returns their IPv4 virtual IPs.
async fn routes_are_programmed_and_ready(lab: &Lab) -> (String, String) {
    step("routes: web (access from role=frontend), local (trafficPolicy Local)");
    route(
        lab,
        "web",
        "  access: {from: [{podSelector: {matchLabels: {role: frontend}}}]}\n",
    )
    .await;
    route(lab, "local", "  trafficPolicy: Local\n").await;
    for r in ["web", "local"] {
        let obj = format!("serviceroute/{r} -n {NS}");
        // kubectl wait on both conditions the docs promise.
        wait_condition(lab, &obj, "Programmed", 60).await;
        wait_condition(lab, &obj, "Ready", 60).await;
    }
    let web_vip = route_vip4(lab, NS, "web").await;
    let local_vip = route_vip4(lab, NS, "local").await;
    (web_vip, local_vip)
}

/// A route asking for web's virtual IP is not Accepted.
async fn a_route_asking_for_a_taken_virtual_ip_is_not_accepted(lab: &Lab, web_vip: &str) {
    step("a broken route: it asks for web's virtual IP");
    route(
        lab,
        "zz-broken",
        &format!("  virtualIPs: [\"{web_vip}\"]\n"),
    )
    .await;
    wait_condition(
        lab,
        &format!("serviceroute/zz-broken -n {NS}"),
        "Accepted=false",
        60,
    )
    .await;
}

/// `status` as text puts the broken route first among problems and routes, and lists the
/// healthy route's details and the network.
async fn status_lists_the_broken_route_first(lab: &Lab, web_vip: &str) {
    step("status: the broken route first, the healthy ones listed (text)");
    let text = plugin_ok(lab, &["status"]).await;
    eprintln!("{text}");
    let problems = text.find("PROBLEMS (").expect("a PROBLEMS section");
    let routes = text.find("SERVICEROUTES").unwrap();
    let networks = text.find("PODNETWORKS").unwrap();
    assert!(problems < routes && routes < networks, "{text}");
    let first_problem = text[problems..routes].lines().nth(1).unwrap();
    assert!(
        first_problem.contains("ServiceRoute plug/zz-broken: Accepted=False VirtualIPUnavailable"),
        "{first_problem}"
    );
    assert!(first_problem.contains(web_vip), "{first_problem}");
    let route_rows: Vec<&str> = text[routes..networks].lines().skip(2).collect();
    assert!(
        route_rows[0].starts_with("plug/zz-broken"),
        "{route_rows:?}"
    );
    let web_row = route_rows
        .iter()
        .find(|l| l.starts_with("plug/web "))
        .unwrap();
    for want in [
        web_vip,
        "80/TCP",
        "2/2",
        "True",
        "web.plug.svc.cluster.local",
    ] {
        assert!(web_row.contains(want), "{want} missing in {web_row:?}");
    }
    assert!(text[networks..].contains("default"), "{text}");
}

/// `status -o json` through `KUBECONFIG` and `--context` holds the same facts; an unknown
/// context is an error naming it.
async fn status_json_through_kubeconfig_and_context(lab: &Lab, web_vip: &str) {
    step("status -o json, through KUBECONFIG and --context");
    let context = kubectl(lab, &["config", "current-context"]).await;
    let mut cmd = tokio::process::Command::new(&lab.bins.plugin);
    cmd.env("KUBECONFIG", lab.controlplane.kubeconfig()).args([
        "--context",
        context.trim(),
        "status",
        "-o",
        "json",
    ]);
    let o = cmd.output().await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["problems"][0]["object"], "plug/zz-broken", "{s:#}");
    assert_eq!(s["problems"][0]["reason"], "VirtualIPUnavailable");
    assert_eq!(s["routes"][0]["name"], "zz-broken");
    let web = s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap();
    assert_eq!(web["ready"], "True");
    assert_eq!(web["problem"], false);
    assert_eq!(web["readyEndpoints"], 2);
    assert_eq!(web["programmedNodes"], 2);
    assert_eq!(web["totalNodes"], 2);
    assert_eq!(strs(&web["virtualIPs"]), [web_vip]);
    let net = &s["networks"][0];
    assert_eq!(net["name"], "default");
    assert_eq!(net["allocatedBlocks"], 2);
    assert!(net["poolUsagePercent"].as_f64().unwrap() > 0.0, "{net}");
    // A context that does not exist is an error that names it.
    let o = plugin(lab, &["--context", "nope", "status"]).await;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("context nope"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `trace` allows front (role=frontend) → web, names both backends and the DNS name, and
/// traffic passes, also when traced by DNS name as text.
async fn trace_allows_an_admitted_pod_and_traffic_passes(
    lab: &Lab,
    web_vip: &str,
    web1_ip: &str,
    web2_ip: &str,
) {
    step("trace: front (role=frontend) → web is allowed, and traffic passes");
    let (t, code) = trace(lab, &["plug/front", "web"]).await;
    assert_eq!(t["verdict"], "allow", "{t:#}");
    assert_eq!(code, Some(0));
    assert_eq!(t["source"]["node"], "node-2");
    assert_eq!(t["source"]["network"], "default");
    assert_eq!(t["destination"]["route"], "plug/web");
    assert!(
        strs(&t["destination"]["dnsNames"]).contains(&"web.plug.svc.cluster.local".to_string()),
        "{t:#}"
    );
    let p = &t["paths"][0];
    assert_eq!(p["destination"], format!("{web_vip}:80/TCP"));
    assert_eq!(p["access"]["allowed"], true);
    assert_eq!(p["access"]["matchedPeer"], 0);
    assert_eq!(strs(&p["backendNodes"]), ["node-1", "node-2"]);
    let mut backends: Vec<String> = p["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}:{}", b["ip"].as_str().unwrap(), b["port"]))
        .collect();
    backends.sort();
    let mut want = vec![format!("{web1_ip}:8080"), format!("{web2_ip}:8080")];
    want.sort();
    assert_eq!(backends, want);
    let target = format!("{web_vip}:80");
    answer(lab, "front", &target)
        .await
        .unwrap_or_else(|e| panic!("trace said allow, traffic failed: {e}"));
    // Human-readable, by DNS name, with -n.
    let o = plugin(
        lab,
        &["trace", "-n", NS, "front", "web.plug.svc.cluster.local"],
    )
    .await;
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("VERDICT allow"), "{text}");
    assert!(
        text.contains("DNS          web.plug.svc.cluster.local"),
        "{text}"
    );
    assert!(text.contains("spec.access.from[0]"), "{text}");
}

/// `trace` denies other (role=batch) → web, by virtual IP and straight to a backend, and the
/// traffic is refused, while front reaches that backend.
async fn trace_denies_another_pod_and_traffic_is_refused(lab: &Lab, web_vip: &str, web2_ip: &str) {
    step("trace: other (role=batch) → web is denied, and traffic is refused");
    let target = format!("{web_vip}:80");
    let (t, code) = trace(lab, &["plug/other", "web"]).await;
    assert_eq!(t["verdict"], "deny", "{t:#}");
    assert_eq!(code, Some(2));
    assert_eq!(t["paths"][0]["access"]["allowed"], false);
    assert!(t["paths"][0]["access"]["matchedPeer"].is_null());
    refused(lab, "other", &target).await;
    // Straight to a backend's pod address: the same rule guards it.
    let direct = format!("{web2_ip}:8080");
    let (t, _) = trace(lab, &["plug/other", &direct]).await;
    assert_eq!(t["destination"]["kind"], "pod");
    assert_eq!(t["destination"]["pod"], "plug/web-2");
    assert_eq!(t["destination"]["route"], "plug/web");
    assert_eq!(t["verdict"], "deny", "{t:#}");
    refused(lab, "other", &direct).await;
    let (t, _) = trace(lab, &["plug/front", &direct]).await;
    assert_eq!(t["verdict"], "allow", "{t:#}");
    answer(lab, "front", &direct).await.unwrap();
}

/// `trace` of a Local route names the source node's backend only, and only it answers.
async fn trace_names_a_local_routes_backends_per_node(
    lab: &Lab,
    local_vip: &str,
    web1_ip: &str,
    web2_ip: &str,
) {
    step("trace: a Local route's backends are the source node's, and they are who answers");
    let local_target = format!("{local_vip}:80");
    for (from, node, ip, pod) in [
        ("front", "node-2", web2_ip, "web-2"),
        ("other", "node-1", web1_ip, "web-1"),
    ] {
        let (t, code) = trace(lab, &[&format!("plug/{from}"), &local_target]).await;
        assert_eq!(code, Some(0), "{t:#}");
        assert_eq!(t["destination"]["kind"], "virtualIP");
        assert_eq!(t["destination"]["route"], "plug/local");
        assert_eq!(t["destination"]["trafficPolicy"], "Local");
        let p = &t["paths"][0];
        assert_eq!(p["local"], true);
        assert_eq!(strs(&p["backendNodes"]), [node]);
        assert_eq!(p["backends"].as_array().unwrap().len(), 1, "{t:#}");
        assert_eq!(p["backends"][0]["ip"], ip);
        assert_eq!(p["backends"][0]["pod"], format!("plug/{pod}"));
        for _ in 0..6 {
            let r = answer(lab, from, &local_target).await.unwrap();
            assert!(
                r.starts_with(&format!("{pod} ")),
                "{from} on {node} got {r:?}, trace said only {pod}"
            );
        }
    }
}

/// `trace` of the broken route finds no data-plane path and says unknown.
async fn trace_finds_no_path_for_the_broken_route(lab: &Lab) {
    step("trace of the broken route: it has no data-plane path");
    let (t, code) = trace(lab, &["plug/front", "zz-broken"]).await;
    assert_eq!(code, Some(2));
    assert_eq!(t["verdict"], "unknown", "{t:#}");
    assert_eq!(t["paths"].as_array().unwrap().len(), 0);
}

/// `kubectl get sr,pn` shows the CRDs' printer columns with web's values.
async fn kubectl_get_shows_the_printer_columns(lab: &Lab, web_vip: &str) {
    step("kubectl get sr,pn: the printer columns");
    let out = kubectl(lab, &["get", "sr,pn", "-n", NS]).await;
    eprintln!("{out}");
    for col in [
        "VIRTUAL IPS",
        "PORTS",
        "ENDPOINTS",
        "PROGRAMMED",
        "READY",
        "AGE",
    ] {
        assert!(out.contains(col), "{col} missing:\n{out}");
    }
    for col in ["POD CIDRS", "SERVICE CIDRS", "BLOCKS"] {
        assert!(out.contains(col), "{col} missing:\n{out}");
    }
    let web_line = out
        .lines()
        .find(|l| l.starts_with("serviceroute.switchyard.dev/web "))
        .unwrap_or_else(|| panic!("no web row:\n{out}"));
    let cells: Vec<&str> = web_line.split_whitespace().collect();
    assert!(cells[1].contains(web_vip), "{web_line}");
    assert_eq!(&cells[2..6], ["80", "2", "2", "True"], "{web_line}");
    let wide = kubectl(lab, &["get", "pn", "-o", "wide"]).await;
    assert!(wide.contains("FREE"), "{wide}");
}

/// `kubectl describe sr` shows the conditions and the Events of a broken and a healthy route.
async fn kubectl_describe_shows_conditions_and_events(lab: &Lab, web_vip: &str) {
    step("kubectl describe sr: conditions and Events");
    let d = kubectl(lab, &["describe", "sr", "zz-broken", "-n", NS]).await;
    eprintln!("{d}");
    for want in [
        "Conditions:",
        "Accepted",
        "VirtualIPUnavailable",
        "Events:",
        "Warning",
    ] {
        assert!(d.contains(want), "{want} missing:\n{d}");
    }
    let d = kubectl(lab, &["describe", "sr", "web", "-n", NS]).await;
    for want in ["Programmed", "Ready", "VirtualIPAllocated", web_vip] {
        assert!(d.contains(want), "{want} missing:\n{d}");
    }
}

/// `kubectl explain` describes the fields users look up.
async fn kubectl_explain_documents_the_fields(lab: &Lab) {
    step("kubectl explain");
    for (field, want) in [
        ("serviceroute.spec.ports", "targetPort"),
        ("serviceroute.spec.ports.targetPort", "container port"),
        ("serviceroute.spec.access.from", "podSelector"),
        ("serviceroute.spec.trafficPolicy", "client's node"),
        ("serviceroute.status.nodes", "programmed"),
        ("podnetwork.spec.isolation", "Isolated"),
        ("podnetwork.spec.blockPrefixLength", "ipv4"),
    ] {
        let e = kubectl(lab, &["explain", field]).await;
        assert!(e.contains("DESCRIPTION"), "{field}:\n{e}");
        assert!(e.contains(want), "{field}: {want} missing:\n{e}");
    }
}

/// `kubectl wait --for=condition=...` works on every condition the docs promise.
async fn kubectl_waits_for_the_documented_conditions(lab: &Lab) {
    step("kubectl wait for the documented conditions");
    for cond in ["Ready", "Programmed", "Accepted", "ResolvedRefs"] {
        kubectl(
            lab,
            &[
                "wait",
                &format!("--for=condition={cond}"),
                "--timeout=10s",
                "sr/web",
                "sr/local",
                "-n",
                NS,
            ],
        )
        .await;
    }
    kubectl(
        lab,
        &[
            "wait",
            "--for=condition=Ready=false",
            "--timeout=10s",
            "sr/zz-broken",
            "-n",
            NS,
        ],
    )
    .await;
    kubectl(
        lab,
        &[
            "wait",
            "--for=condition=Ready",
            "--timeout=10s",
            "pn/default",
        ],
    )
    .await;
}

/// The metric names docs/observability.md lists are what the operator and the agent export.
async fn the_binaries_export_the_documented_metrics(lab: &Lab) {
    step("the metric names docs/observability.md lists are what the binaries export");
    let operator = lab.operator_metrics(0).await.unwrap();
    for name in [
        "switchyard_operator_reconciles_total{controller=\"serviceroute\"}",
        "switchyard_operator_reconciles_total{controller=\"podnetwork\"}",
        "switchyard_operator_reconcile_duration_seconds_bucket{",
        "switchyard_operator_leader 1",
        "switchyard_operator_allocated_blocks{network=\"default\"} 2",
        "switchyard_operator_free_blocks{network=\"default\"}",
    ] {
        assert!(
            operator.contains(name),
            "operator: {name} missing:\n{operator}"
        );
    }
    let addr = lab.agent_addr("node-1").unwrap();
    let out = lab
        .exec(
            NS,
            "other",
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{addr}/metrics"),
            ],
        )
        .await
        .unwrap();
    let agent = String::from_utf8_lossy(&out.stdout);
    for name in [
        "switchyard_agent_programming_passes_total ",
        "switchyard_agent_programming_failures_total ",
        "switchyard_agent_programming_latency_seconds_bucket{le=",
        "switchyard_agent_programming_latency_seconds_count ",
        "switchyard_agent_bridges 1",
        "switchyard_agent_routes 1",
        "switchyard_agent_service_elements{map=\"dispatch\"}",
        "switchyard_agent_nft_transaction_failures_total 0",
    ] {
        assert!(agent.contains(name), "agent: {name} missing:\n{agent}");
    }
}

/// Waits (60 s at most) until the receiver has seen a ServiceRoute and a PodNetwork reconcile
/// span and the operator's service name.
async fn reconcile_spans_arrive(bodies: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = (false, false, false);
    while !(seen.0 && seen.1 && seen.2) {
        let left = deadline.saturating_duration_since(Instant::now());
        let body = tokio::time::timeout(left, bodies.recv())
            .await
            .unwrap_or_else(|_| panic!("no reconcile span arrived at the OTLP receiver ({seen:?})"))
            .unwrap();
        seen.0 |= contains(&body, "reconcile ServiceRoute") && contains(&body, "plug/web");
        seen.1 |= contains(&body, "reconcile PodNetwork");
        seen.2 |= contains(&body, "switchyard-operator");
    }
}

/// Tracing as users turn it on: `helm upgrade` with `tracing.otlpEndpoint` (a receiver on
/// the fabric's gateway address, which the host-network pods reach) and `logFormat=json`;
/// the new operator exports its reconcile spans and logs JSON lines.
async fn otlp_receives_the_reconcile_spans_and_logs_are_json(lab: &mut Lab) {
    step(
        "OTLP: helm upgrade --set tracing.otlpEndpoint=… makes the operator export its reconcile spans",
    );
    let (otlp, mut bodies) =
        otlp_receiver(std::net::SocketAddr::new(lab.topology.gateway.into(), 0)).await;
    let t = Instant::now();
    lab.helm_upgrade(&[
        &format!("tracing.otlpEndpoint=http://{otlp}"),
        "logFormat=json",
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("helm upgrade and its rollouts took {:?}", t.elapsed());
    reconcile_spans_arrive(&mut bodies).await;
    let pods = lab.chart_pods("switchyard-operator").await.unwrap();
    assert!(!pods.is_empty());
    let mut exporting = false;
    for (pod, _) in &pods {
        let logs = lab
            .kubectl_ok(&["logs", "-n", "switchyard-system", pod])
            .await
            .unwrap();
        let first = logs.lines().next().unwrap_or_default();
        let line: Value = serde_json::from_str(first)
            .unwrap_or_else(|e| panic!("{pod}: log line is not JSON ({e}): {first}"));
        assert!(
            line["level"].is_string() && line["fields"].is_object(),
            "{line}"
        );
        exporting |= logs.contains("exporting traces over OTLP/HTTP");
    }
    assert!(exporting, "no operator pod says it exports traces");
}

/// A minimal OTLP/HTTP receiver on `bind` (the fabric's gateway address):
/// answers every POST with 200 and sends each request body (protobuf, whose strings are stored
/// verbatim) to the channel.
async fn otlp_receiver(
    bind: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                // Keep-alive: one request after the other on the connection.
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let _ = tx.send(body);
                    let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if conn.get_mut().write_all(ok.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
