#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Helm chart and the Argo CD health checks.
//!
//! - `argocd_health_checks_judge_every_fixture`: each Lua health check
//!   (`charts/switchyard/argocd/*.lua`) run by `lua5.1` on every status fixture of
//!   `tests/fixtures/argocd/`, in a sandbox holding only what Argo CD opens by default (no
//!   `string` library); the argocd-cm example carries the scripts verbatim.
//! - `chart_lints_renders_and_refuses_bad_values`: helm (built from its Go module by
//!   `e2e/controlplane/build.sh`) lints and renders the chart; the rendered objects are
//!   checked (least-privilege RBAC, probes, resources, waves, the CNI installation, flags the
//!   binaries really have, the webhook registration equal to `switchyard-webhook
//!   render-config`); bad values fail naming the field.
//! - `chart_applies_cleanly_to_a_real_api_server` (root): the rendered chart server-side
//!   applied to the lab's kube-apiserver (RBAC authorization) is accepted whole, a second apply
//!   changes nothing, `kubectl diff --server-side` finds nothing, every rendered field reads
//!   back unchanged (no defaulted field shows as drift), and `kubectl auth can-i` as each
//!   ServiceAccount proves what it may and may not do; then the cert-manager variant as an
//!   upgrade, the same way.
//!
//! A missing prerequisite (lua5.1, go, root, ip) fails the test under CI; without CI it is
//! printed and the test passes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bridge::{Bridge, is_root, missing};
use futures::StreamExt as _;
use serde_json::{Value, json};
use switchyard_e2e::Error;
use switchyard_e2e::binaries::{SwitchyardBinaries, build_switchyard};
use switchyard_e2e::chart::{self, NAMESPACE, describe, objects};
use switchyard_e2e::controlplane::{Binaries, ControlPlane, ControlPlaneOptions, ensure_binaries};

const BRIDGE_ADDR: &str = "198.18.251.1";
const FIELD_MANAGER: &str = "switchyard-chart-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

// ---------------------------------------------------------------------------------------------
// Argo CD health checks

/// A Lua 5.1 literal for a JSON value (null fields left out, as Argo CD's conversion does).
fn lua_literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let inner: Vec<String> = items
                .iter()
                .filter(|i| !i.is_null())
                .map(lua_literal)
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b}")),
        }
    }
    out.push('"');
    out
}

/// The harness: `obj` as Argo CD hands it over, the script loaded into an environment with
/// only the base functions, `table` and a safe `os` (Argo CD's defaults), and strings without
/// their methods, so a script that needs the string library fails here as it would there.
fn harness(script: &Path, obj: &Value) -> String {
    format!(
        r#"local obj = {obj}
local env = {{
  obj = obj, assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
  unpack = unpack, table = table,
  os = {{ time = os.time, date = os.date, clock = os.clock, difftime = os.difftime }},
}}
local chunk = assert(loadfile({script}))
setfenv(chunk, env)
debug.getmetatable("").__index = nil
local ok, hs = pcall(chunk)
if not ok then
  io.write("ERROR\n", tostring(hs), "\n")
  os.exit(2)
end
io.write(tostring(hs.status), "\n", tostring(hs.message), "\n")
"#,
        obj = lua_literal(obj),
        script = lua_string(&script.to_string_lossy()),
    )
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter_map(|l| l.strip_prefix(key))
        .filter_map(|l| l.strip_prefix(':'))
        .map(|l| l.trim().to_string())
        .next()
}

/// lua5.1, installed from its Debian package when missing (see `host::ensure_programs`).
fn have_lua() -> Result<(), Error> {
    switchyard_e2e::host::ensure_programs_blocking(&[("lua5.1", "lua5.1")])
}

fn run_lua(program: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(program.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn argocd_health_checks_judge_every_fixture() {
    if let Err(e) = have_lua() {
        return missing("argocd_health_checks_judge_every_fixture", &e.to_string());
    }
    let scripts = repo_root().join("charts/switchyard/argocd");
    let cm = std::fs::read_to_string(repo_root().join("examples/argocd/argocd-cm.yaml")).unwrap();
    let cm: Value = serde_saphyr::from_str(&cm).unwrap();
    let mut failures = Vec::new();
    for (kind, script) in [
        ("PodNetwork", "podnetwork-health.lua"),
        ("ServiceRoute", "serviceroute-health.lua"),
    ] {
        let script = scripts.join(script);
        let source = std::fs::read_to_string(&script).unwrap();
        // The argocd-cm example is the script, word for word.
        let key = format!("resource.customizations.health.switchyard.dev_{kind}");
        assert_eq!(
            cm["data"][&key].as_str(),
            Some(source.as_str()),
            "examples/argocd/argocd-cm.yaml {key} differs from {}",
            script.display()
        );
        let dir = fixtures().join("argocd").join(kind.to_lowercase());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 8,
            "{} holds {} fixtures",
            dir.display(),
            files.len()
        );
        let mut seen = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let status = header(&text, "expect-status")
                .unwrap_or_else(|| panic!("{}: no `# expect-status:` line", file.display()));
            let message = header(&text, "expect-message")
                .unwrap_or_else(|| panic!("{}: no `# expect-message:` line", file.display()));
            let obj: Value = serde_saphyr::from_str(&text).unwrap();
            assert_eq!(obj["kind"], kind, "{}", file.display());
            let (ok, out) = run_lua(&harness(&script, &obj));
            let mut lines = out.lines();
            let got = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            if !ok || got != (status.as_str(), message.as_str()) {
                failures.push(format!(
                    "{}:\n  want {status}: {message}\n  got  {out}",
                    file.display()
                ));
            }
            seen.insert(status);
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["Degraded", "Healthy", "Progressing"],
            "{kind}: the fixtures must cover every status"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The sandbox is real: a script using the string library fails in it.
    let probe =
        std::env::temp_dir().join(format!("switchyard-lua-probe-{}.lua", std::process::id()));
    std::fs::write(
        &probe,
        "local hs = {}\nhs.status = string.upper(\"healthy\")\nreturn hs\n",
    )
    .unwrap();
    let (ok, out) = run_lua(&harness(&probe, &json!({})));
    let _ = std::fs::remove_file(&probe);
    assert!(
        !ok && out.starts_with("ERROR"),
        "string library reachable: {out}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rendering

struct Helm {
    bin: PathBuf,
    home: PathBuf,
}

impl Helm {
    async fn new(test: &str) -> Option<(Helm, Binaries)> {
        let binaries = match ensure_binaries().await {
            Ok(b) => b,
            Err(e @ Error::Missing { .. }) => {
                missing(test, &e.to_string());
                return None;
            }
            Err(e) => panic!("building the control plane binaries and helm: {e}"),
        };
        let bin = chart::helm(&binaries).await.unwrap();
        let home =
            std::env::temp_dir().join(format!("switchyard-helm-{test}-{}", std::process::id()));
        Some((Helm { bin, home }, binaries))
    }

    async fn template(&self, extra: &[&str]) -> String {
        chart::template(&self.bin, &self.home, extra)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn run(&self, args: &[&str]) -> chart::HelmOutput {
        chart::run_helm(&self.bin, &self.home, args).await.unwrap()
    }
}

/// Values of the cert-manager variant: mounted certificates, two webhook replicas, monitoring.
const CERT_MANAGER: &[&str] = &[
    "--set",
    "webhook.certs.mode=cert-manager",
    "--set",
    "webhook.replicas=2",
    "--set",
    "serviceMonitor.enabled=true",
];

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn wave(o: &Value) -> i64 {
    o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
        .as_str()
        .map(|w| w.parse().unwrap())
        .unwrap_or(0)
}

/// The pod spec of a Deployment or DaemonSet.
fn pod_spec(o: &Value) -> &Value {
    &o["spec"]["template"]["spec"]
}

/// Checks shared by both variants; returns the problems found.
fn check_rendered(objs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in objs {
        let what = describe(o);
        let kind = o["kind"].as_str().unwrap_or_default();
        // Least privilege: no wildcard anywhere in a rule.
        if kind == "ClusterRole" || kind == "Role" {
            for rule in o["rules"].as_array().into_iter().flatten() {
                for field in [
                    "apiGroups",
                    "resources",
                    "verbs",
                    "resourceNames",
                    "nonResourceURLs",
                ] {
                    if strs(&rule[field]).iter().any(|s| s.contains('*')) {
                        problems.push(format!("{what}: wildcard in {field}: {rule}"));
                    }
                }
                for verb in strs(&rule["verbs"]) {
                    if ["escalate", "bind", "impersonate", "deletecollection"].contains(&verb) {
                        problems.push(format!("{what}: verb {verb}"));
                    }
                }
            }
        }
        // Namespaced objects name their namespace (server-side apply without -n puts them
        // right), and every templated object carries its sync wave.
        if kind != "CustomResourceDefinition" {
            let cluster_scoped = [
                "ClusterRole",
                "ClusterRoleBinding",
                "ValidatingWebhookConfiguration",
            ]
            .contains(&kind);
            if !cluster_scoped && o["metadata"]["namespace"] != NAMESPACE {
                problems.push(format!("{what}: not in namespace {NAMESPACE}"));
            }
            if o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"].is_null() {
                problems.push(format!("{what}: no argocd.argoproj.io/sync-wave"));
            }
        }
        if kind == "Deployment" || kind == "DaemonSet" {
            let spec = pod_spec(o);
            let all = spec["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(spec["containers"].as_array().into_iter().flatten());
            for c in all {
                let name = c["name"].as_str().unwrap_or("?");
                if c["resources"]["requests"]["cpu"].is_null()
                    || c["resources"]["requests"]["memory"].is_null()
                    || c["resources"]["limits"]["memory"].is_null()
                {
                    problems.push(format!(
                        "{what} container {name}: requests and a memory limit"
                    ));
                }
            }
            for c in spec["containers"].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or("?");
                for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
                    if c[probe]["httpGet"]["path"] != path
                        || c[probe]["httpGet"]["port"] != "metrics"
                    {
                        problems.push(format!(
                            "{what} container {name}: {probe} must GET {path} on port metrics"
                        ));
                    }
                }
                // The probed port is the one the binary serves on.
                let http_port = strs(&c["args"])
                    .iter()
                    .find_map(|a| a.strip_prefix("--http-addr=0.0.0.0:"))
                    .and_then(|p| p.parse::<u64>().ok());
                let metrics_port = c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == "metrics")
                    .and_then(|p| p["containerPort"].as_u64());
                if http_port.is_none() || http_port != metrics_port {
                    problems.push(format!(
                        "{what} container {name}: --http-addr port {http_port:?} is not the metrics port {metrics_port:?}"
                    ));
                }
                // On the host network a port must be declared as a host port too (the API
                // server would default it, which reads as drift).
                if spec["hostNetwork"] == true {
                    for p in c["ports"].as_array().into_iter().flatten() {
                        if p["hostPort"] != p["containerPort"] {
                            problems.push(format!("{what} container {name}: hostPort of {p}"));
                        }
                    }
                }
            }
        }
    }
    // Waves: the webhook (and CRDs, wave 0 by default) before its configuration.
    let vwc = find(objs, "ValidatingWebhookConfiguration", "switchyard-webhook");
    let webhook = find(objs, "Deployment", "switchyard-webhook");
    if !(wave(webhook) >= 0 && wave(vwc) > wave(webhook)) {
        problems.push(format!(
            "sync waves: webhook Deployment {} must be >= 0 (the CRDs' wave) and below the configuration's {}",
            wave(webhook),
            wave(vwc)
        ));
    }
    problems
}

/// The flags a binary accepts, from its `--help`.
fn flags_of(bin: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{} --help", bin.display());
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// Every `--flag` the chart passes to `container` of `o` is one `bin` accepts.
fn check_flags(o: &Value, container: &str, bin: &Path) -> Vec<String> {
    let known = flags_of(bin);
    let c = pod_spec(o)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap();
    strs(&c["args"])
        .iter()
        .map(|a| a.split('=').next().unwrap())
        .filter(|f| !known.contains(*f))
        .map(|f| format!("{}: {} has no flag {f}", describe(o), bin.display()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_renders_and_refuses_bad_values() {
    let started = Instant::now();
    let Some((helm, _)) = Helm::new("chart_lints_renders_and_refuses_bad_values").await else {
        return;
    };
    let chart_dir = chart::chart_dir();
    let chart_dir = chart_dir.to_string_lossy();

    both_variants_pass_a_strict_lint(&helm, &chart_dir).await;
    let objs = objects(&helm.template(&[]).await).unwrap();
    the_default_installation_renders_sound_objects(&objs);
    the_crds_are_the_generated_ones(&objs);
    the_operator_is_highly_available_and_locked_down(&objs);
    the_webhook_is_one_self_managed_replica(&objs);
    the_agent_installs_the_plugin_on_every_node(&objs);
    let bins = build_switchyard().await.unwrap();
    let cm_objs = the_flags_passed_are_the_binaries_own(&helm, &objs, &bins).await;
    the_webhook_registration_is_render_configs(&objs, &bins);
    the_cert_manager_variant_mounts_its_certificate(&cm_objs);
    the_dashboard_lands_whole_or_is_refused(&helm, &chart_dir).await;
    tracing_sets_the_otlp_endpoint_of_every_component(&helm, &objs).await;
    bad_values_fail_naming_the_field(&helm, &chart_dir).await;
    let _ = std::fs::remove_dir_all(&helm.home);
    eprintln!(
        "chart lint, render and values checks took {:?}",
        started.elapsed()
    );
}

/// `helm lint --strict` passes with the default values and with the cert-manager variant.
async fn both_variants_pass_a_strict_lint(helm: &Helm, chart_dir: &str) {
    for extra in [&[][..], CERT_MANAGER] {
        let mut args = vec!["lint", "--strict", chart_dir, "--namespace", NAMESPACE];
        args.extend_from_slice(extra);
        let out = helm.run(&args).await;
        assert!(
            out.success,
            "helm {}:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
    }
}

/// The default installation renders the expected kinds, each passing the shared checks.
fn the_default_installation_renders_sound_objects(objs: &[Value]) {
    let kinds: BTreeMap<String, usize> = objs.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
        m
    });
    let want: BTreeMap<String, usize> = [
        ("ClusterRole", 3),
        ("ClusterRoleBinding", 3),
        ("CustomResourceDefinition", 4),
        ("DaemonSet", 1),
        ("Deployment", 2),
        ("PodDisruptionBudget", 1),
        ("Role", 2),
        ("RoleBinding", 2),
        ("Service", 1),
        ("ServiceAccount", 3),
        ("ValidatingWebhookConfiguration", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, want, "kinds rendered with the default values");
    let problems = check_rendered(objs);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The chart's CRDs are the generated ones, unchanged.
fn the_crds_are_the_generated_ones(objs: &[Value]) {
    for o in objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = o["metadata"]["name"].as_str().unwrap();
        let file = chart::chart_dir().join("crds").join(format!("{name}.yaml"));
        let committed: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(o, &committed, "{name} differs from {}", file.display());
    }
}

/// The operator: two locked-down replicas, its leader Lease, one replica per node.
fn the_operator_is_highly_available_and_locked_down(objs: &[Value]) {
    let operator = find(objs, "Deployment", "switchyard-operator");
    assert_eq!(operator["spec"]["replicas"], 2);
    let op = &pod_spec(operator)["containers"][0];
    assert!(
        strs(&op["args"]).contains(&"--lease-name=switchyard-operator"),
        "{op}"
    );
    assert!(
        op["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POD_NAMESPACE"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "the Lease namespace comes from POD_NAMESPACE: {op}"
    );
    assert_eq!(op["securityContext"]["runAsNonRoot"], true);
    assert_eq!(op["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        op["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert!(!pod_spec(operator)["affinity"]["podAntiAffinity"].is_null());
    let pdb = find(objs, "PodDisruptionBudget", "switchyard-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

/// The webhook: one self-managed replica, never two at once, patching only its configuration.
fn the_webhook_is_one_self_managed_replica(objs: &[Value]) {
    let webhook = find(objs, "Deployment", "switchyard-webhook");
    assert_eq!(webhook["spec"]["replicas"], 1);
    assert_eq!(webhook["spec"]["strategy"]["type"], "Recreate");
    let role = find(objs, "ClusterRole", "switchyard-webhook");
    let vwc_rule = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| strs(&r["resources"]) == ["validatingwebhookconfigurations"])
        .expect("the self-managed webhook may patch its configuration");
    assert_eq!(strs(&vwc_rule["resourceNames"]), ["switchyard-webhook"]);
}

/// The agent: every node, the host's network, the plugin and its configuration on the host.
fn the_agent_installs_the_plugin_on_every_node(objs: &[Value]) {
    let agent = find(objs, "DaemonSet", "switchyard-agent");
    let spec = pod_spec(agent);
    assert_eq!(spec["hostNetwork"], true);
    assert!(
        spec["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null()),
        "the agent tolerates every taint: {}",
        spec["tolerations"]
    );
    let host_path = |volume: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume {volume}"))
            .to_string()
    };
    let init = &spec["initContainers"][0];
    let mount = init["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(
        host_path(init["volumeMounts"][0]["name"].as_str().unwrap()),
        "/opt/cni/bin"
    );
    let copy = strs(&init["command"]).join(" ");
    assert!(
        copy.contains("/usr/local/bin/switchyard-cni")
            && copy.contains(&format!("{mount}/switchyard-cni")),
        "the init container installs switchyard-cni into {mount}: {copy}"
    );
    let agent_c = &spec["containers"][0];
    let args = strs(&agent_c["args"]);
    for (flag, volume) in [
        ("--cni-conf-dir=", "cni-conf"),
        ("--cni-state-dir=", "cni-state"),
    ] {
        let dir = args.iter().find_map(|a| a.strip_prefix(flag)).unwrap();
        assert_eq!(
            host_path(volume),
            dir,
            "{flag} is the host's folder at the same path"
        );
    }
    assert_eq!(host_path("cni-conf"), "/etc/cni/net.d");
    let socket = args
        .iter()
        .find_map(|a| a.strip_prefix("--cni-socket="))
        .unwrap();
    assert!(
        socket.starts_with(&format!("{}/", host_path("cni-socket"))),
        "{socket}"
    );
    assert!(
        agent_c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "{agent_c}"
    );
}

/// Every flag the chart passes, in both variants, is one the binary accepts; returns the
/// cert-manager variant's objects.
async fn the_flags_passed_are_the_binaries_own(
    helm: &Helm,
    objs: &[Value],
    bins: &SwitchyardBinaries,
) -> Vec<Value> {
    let operator = find(objs, "Deployment", "switchyard-operator");
    let webhook = find(objs, "Deployment", "switchyard-webhook");
    let agent = find(objs, "DaemonSet", "switchyard-agent");
    let mut flag_problems = check_flags(operator, "operator", &bins.operator);
    flag_problems.extend(check_flags(webhook, "webhook", &bins.webhook));
    flag_problems.extend(check_flags(agent, "agent", &bins.agent));
    let cm_objs = objects(&helm.template(CERT_MANAGER).await).unwrap();
    flag_problems.extend(check_flags(
        find(&cm_objs, "Deployment", "switchyard-webhook"),
        "webhook",
        &bins.webhook,
    ));
    // agent.nativeServices: the flag, the node's address for node ports, and read access to
    // Services (only then).
    let native = objects(&helm.template(&["--set", "agent.nativeServices=true"]).await).unwrap();
    let native_agent = find(&native, "DaemonSet", "switchyard-agent");
    flag_problems.extend(check_flags(native_agent, "agent", &bins.agent));
    let c = &pod_spec(native_agent)["containers"][0];
    assert!(strs(&c["args"]).contains(&"--native-services"));
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_IPS"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"),
        "NODE_IPS from the downward API: {c}"
    );
    let reads_services = |objs: &[Value]| {
        find(objs, "ClusterRole", "switchyard-agent")["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| strs(&r["resources"]).contains(&"services"))
    };
    assert!(
        reads_services(&native),
        "nativeServices: the agent reads Services"
    );
    assert!(
        !reads_services(objs),
        "default: the agent does not read Services"
    );
    assert!(flag_problems.is_empty(), "{}", flag_problems.join("\n"));
    cm_objs
}

/// The webhook registration is the one the webhook itself renders
/// (webhook/src/registration.rs), caBundle aside.
fn the_webhook_registration_is_render_configs(objs: &[Value], bins: &SwitchyardBinaries) {
    let out = std::process::Command::new(&bins.webhook)
        .args([
            "render-config",
            "--namespace",
            NAMESPACE,
            "--service-name",
            "switchyard-webhook",
            "--service-port",
            "443",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ours =
        find(objs, "ValidatingWebhookConfiguration", "switchyard-webhook")["webhooks"].clone();
    for w in ours.as_array_mut().unwrap() {
        // Written out in the chart only so the API server's default is not drift.
        assert_eq!(w["objectSelector"], json!({}));
        w.as_object_mut().unwrap().remove("objectSelector");
    }
    assert_eq!(
        ours, rendered["webhooks"],
        "the chart's webhooks differ from render-config's"
    );
}

/// The cert-manager variant passes the shared checks, mounts its Certificate's Secret in two
/// webhook replicas that write nothing, and adds the monitoring objects.
fn the_cert_manager_variant_mounts_its_certificate(cm_objs: &[Value]) {
    let problems = check_rendered(cm_objs);
    assert!(
        problems.is_empty(),
        "cert-manager variant:\n{}",
        problems.join("\n")
    );
    let vwc = find(
        cm_objs,
        "ValidatingWebhookConfiguration",
        "switchyard-webhook",
    );
    assert_eq!(
        vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/switchyard-webhook")
    );
    let cert = find(cm_objs, "Certificate", "switchyard-webhook");
    let wh = find(cm_objs, "Deployment", "switchyard-webhook");
    assert_eq!(wh["spec"]["replicas"], 2);
    assert!(
        strs(&pod_spec(wh)["containers"][0]["args"])
            .iter()
            .any(|a| a.starts_with("--cert-dir="))
    );
    assert_eq!(
        pod_spec(wh)["volumes"][0]["secret"]["secretName"],
        cert["spec"]["secretName"],
        "the webhook mounts the Certificate's Secret"
    );
    let dns: Vec<&str> = strs(&cert["spec"]["dnsNames"]);
    assert!(
        dns.contains(&"switchyard-webhook.switchyard-system.svc"),
        "{dns:?}"
    );
    let role = find(cm_objs, "ClusterRole", "switchyard-webhook");
    assert!(
        !role.to_string().contains("validatingwebhookconfigurations"),
        "with cert-manager the webhook writes nothing: {role}"
    );
    find(cm_objs, "PodDisruptionBudget", "switchyard-webhook");
    assert_eq!(
        cm_objs
            .iter()
            .filter(|o| o["kind"] == "ServiceMonitor")
            .count(),
        3
    );
    find(cm_objs, "Issuer", "switchyard-webhook-ca");
}

/// The Grafana dashboard, when the chart carries one, lands whole in its ConfigMap; without
/// the file, asking for it fails saying so.
async fn the_dashboard_lands_whole_or_is_refused(helm: &Helm, chart_dir: &str) {
    let dashboard = chart::chart_dir().join("dashboards/switchyard.json");
    let out = helm
        .run(&[
            "template",
            "switchyard",
            chart_dir,
            "--namespace",
            NAMESPACE,
            "--set",
            "dashboards.enabled=true",
        ])
        .await;
    if dashboard.is_file() {
        assert!(out.success, "dashboards.enabled=true: {}", out.stderr);
        let objs = objects(&out.stdout).unwrap();
        let cm = find(&objs, "ConfigMap", "switchyard-dashboards");
        let want = std::fs::read_to_string(&dashboard).unwrap();
        let got = cm["data"]["switchyard.json"].as_str().unwrap();
        assert_eq!(got.trim_end(), want.trim_end(), "the dashboard ConfigMap");
        serde_json::from_str::<Value>(got).expect("the dashboard is JSON");
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    } else {
        assert!(
            !out.success && out.stderr.contains("dashboards/switchyard.json"),
            "dashboards.enabled=true without the file: {}",
            out.stderr
        );
    }
}

/// `tracing.otlpEndpoint` gives every component `OTEL_EXPORTER_OTLP_ENDPOINT`; by default none
/// has it (no traces leave the cluster unasked).
async fn tracing_sets_the_otlp_endpoint_of_every_component(helm: &Helm, defaults: &[Value]) {
    let endpoint = "http://otel-collector.observability:4318";
    let set = format!("tracing.otlpEndpoint={endpoint}");
    let objs = objects(&helm.template(&["--set", &set]).await).unwrap();
    let otlp = |objs: &[Value], kind: &str, name: &str| -> Option<String> {
        pod_spec(find(objs, kind, name))["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .and_then(|e| e["value"].as_str().map(String::from))
    };
    for (kind, name) in [
        ("Deployment", "switchyard-operator"),
        ("Deployment", "switchyard-webhook"),
        ("DaemonSet", "switchyard-agent"),
    ] {
        assert_eq!(otlp(&objs, kind, name).as_deref(), Some(endpoint), "{name}");
        assert_eq!(otlp(defaults, kind, name), None, "{name} by default");
    }
}

/// Bad values, and a namespace other than switchyard-system, fail naming the field.
async fn bad_values_fail_naming_the_field(helm: &Helm, chart_dir: &str) {
    let bad: &[(&[&str], &str)] = &[
        (&["--set", "operator.replicas=-1"], "/operator/replicas"),
        (
            &["--set", "webhook.certs.mode=bogus"],
            "/webhook/certs/mode",
        ),
        (
            &["--set", "webhook.timeoutSeconds=31"],
            "/webhook/timeoutSeconds",
        ),
        (
            &["--set", "webhook.failurePolicy=Maybe"],
            "/webhook/failurePolicy",
        ),
        (
            &["--set", "agent.cni.binDir=opt/cni/bin"],
            "/agent/cni/binDir",
        ),
        (&["--set", "operator.replicaz=3"], "replicaz"),
        (&["--set", "logFormat=xml"], "/logFormat"),
        (
            &["--set", "tracing.otlpEndpoint=collector:4318"],
            "/tracing/otlpEndpoint",
        ),
        (
            &["--set", "webhook.replicas=2"],
            "webhook.replicas: self-managed certificates need exactly one replica",
        ),
    ];
    for (args, field) in bad {
        let mut all = vec![
            "template",
            "switchyard",
            chart_dir,
            "--namespace",
            NAMESPACE,
        ];
        all.extend_from_slice(args);
        let out = helm.run(&all).await;
        assert!(
            !out.success,
            "helm template {} was accepted",
            args.join(" ")
        );
        assert!(
            out.stderr.contains(field),
            "helm template {}: the error does not name {field}:\n{}",
            args.join(" "),
            out.stderr
        );
    }
    let out = helm
        .run(&[
            "template",
            "switchyard",
            chart_dir,
            "--namespace",
            "default",
        ])
        .await;
    assert!(
        !out.success
            && out
                .stderr
                .contains("must be installed into the namespace switchyard-system"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Against the real API server

/// iproute2 and diffutils (`kubectl diff`), installed from Debian packages when missing.
fn have_tools() -> Result<(), Error> {
    switchyard_e2e::host::ensure_programs_blocking(&[("ip", "iproute2"), ("diff", "diffutils")])
}

struct Kubectl<'a> {
    cp: &'a ControlPlane,
}

impl Kubectl<'_> {
    async fn run(&self, args: &[&str]) -> std::process::Output {
        self.cp.kubectl().args(args).output().await.unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn apply(&self, file: &Path) -> String {
        self.ok(&[
            "apply",
            "--server-side",
            "--field-manager",
            FIELD_MANAGER,
            "-f",
            &file.to_string_lossy(),
        ])
        .await
    }

    /// Every object of `file` as the API server holds it, by `Kind namespace/name`.
    async fn live(&self, file: &Path) -> BTreeMap<String, Value> {
        let out = self
            .ok(&["get", "-f", &file.to_string_lossy(), "-o", "json"])
            .await;
        let list: Value = serde_json::from_str(&out).unwrap();
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![list.clone()])
            .into_iter()
            .map(|o| (describe(&o), o))
            .collect()
    }

    /// `kubectl auth can-i VERB RESOURCE [-n NS] --as <service account>`.
    async fn can(&self, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
        let who = format!("--as=system:serviceaccount:{NAMESPACE}:{sa}");
        // `RESOURCE[/NAME]#SUBRESOURCE`: kubectl reads `x/status` as the object named status.
        let (resource, sub) = match resource.split_once('#') {
            Some((r, sub)) => (r, Some(format!("--subresource={sub}"))),
            None => (resource, None),
        };
        let mut args = vec!["auth", "can-i", verb, resource, who.as_str()];
        if let Some(sub) = &sub {
            args.push(sub);
        }
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = self.run(&args).await;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.code(), said.as_str()) {
            (Some(0), "yes") => true,
            (Some(1), "no") => false,
            _ => panic!(
                "kubectl {}: {:?} {said} {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

/// What an apply must not change: the object without its status, resourceVersion and the
/// status writers' managed fields (controllers keep writing status; a no-op apply writes
/// nothing, not even its own managedFields time).
fn settled(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = o["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        if let Some(Value::Array(fields)) = meta.get_mut("managedFields") {
            fields.retain(|f| f["subresource"] != "status");
        }
    }
    o
}

/// Where `desired` is not contained in `live` (the fields the chart sets, read back
/// unchanged): what a diff of desired against live would show as drift.
fn drift(path: &str, desired: &Value, live: &Value, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, dv) in d {
                match l.get(k) {
                    Some(lv) => drift(&format!("{path}.{k}"), dv, lv, out),
                    None if dv.is_null() => {}
                    None => out.push(format!("{path}.{k}: rendered {dv}, absent in the cluster")),
                }
            }
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            for (i, (dv, lv)) in d.iter().zip(l).enumerate() {
                drift(&format!("{path}[{i}]"), dv, lv, out);
            }
        }
        (Value::Number(d), Value::Number(l)) if d.as_f64() == l.as_f64() => {}
        (d, l) if d == l => {}
        (d, l) => out.push(format!("{path}: rendered {d}, the cluster holds {l}")),
    }
}

/// The objects of `file` once the controllers are done with them: Deployments, DaemonSets and
/// PodDisruptionBudgets observed at their generation (Deployments with their revision), CRDs
/// established, and two reads a second apart the same but for status.
async fn wait_settled(k: &Kubectl<'_>, file: &Path, label: &str) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = k.live(file).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = k.live(file).await;
        let unsettled: Vec<&String> = now
            .iter()
            .filter(|(_, o)| {
                let kind = o["kind"].as_str().unwrap_or_default();
                let observed = o["status"]["observedGeneration"] == o["metadata"]["generation"];
                match kind {
                    "Deployment" => {
                        !observed
                            || o["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                                .is_null()
                    }
                    "DaemonSet" | "PodDisruptionBudget" => !observed,
                    "CustomResourceDefinition" => !o["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Established" && c["status"] == "True"),
                    _ => false,
                }
            })
            .map(|(n, _)| n)
            .collect();
        let quiet = now.len() == last.len()
            && now
                .iter()
                .all(|(n, o)| last.get(n).map(settled) == Some(settled(o)));
        if unsettled.is_empty() && quiet {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the controllers did not settle: {unsettled:?}"
        );
        last = now;
    }
}

async fn apply_twice_and_compare(k: &Kubectl<'_>, file: &Path, objs: &[Value], label: &str) {
    let t = Instant::now();
    let out = k.apply(file).await;
    eprintln!("{label}: first server-side apply in {:?}", t.elapsed());
    for o in objs {
        let kind = o["kind"].as_str().unwrap().to_lowercase();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            out.lines().any(|l| l
                .split_once('/')
                .is_some_and(|(k, rest)| k.split('.').next() == Some(kind.as_str())
                    && rest.split_whitespace().next() == Some(name))),
            "{label}: kubectl apply did not report {}:\n{out}",
            describe(o)
        );
    }
    // Let the controllers react first (revision annotations, observed generations, CRD
    // status): their writes are theirs, not the apply's.
    let before = wait_settled(k, file, label).await;
    assert_eq!(before.len(), objs.len(), "{label}: objects read back");
    k.apply(file).await;
    let after = k.live(file).await;
    for (name, b) in &before {
        let a = &after[name];
        assert_eq!(
            settled(b),
            settled(a),
            "{label}: the second apply changed {name}"
        );
        assert_eq!(
            b["metadata"]["generation"], a["metadata"]["generation"],
            "{label}: the second apply bumped the generation of {name}"
        );
    }
    // A server-side diff (what Argo CD's ServerSideDiff does) finds nothing. A controller's
    // write between kubectl's read and its dry run shows as a difference once; drift stays.
    let mut out = None;
    for _ in 0..3 {
        let o = k
            .run(&[
                "diff",
                "--server-side",
                "--field-manager",
                FIELD_MANAGER,
                "-f",
                &file.to_string_lossy(),
            ])
            .await;
        let clean = o.status.code() == Some(0);
        out = Some(o);
        if clean {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let out = out.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{label}: kubectl diff --server-side found differences:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every rendered field reads back as rendered: no defaulted or normalised field drifts.
    let mut problems = Vec::new();
    for o in objs {
        let live = &after[&describe(o)];
        drift(&describe(o), o, live, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "{label}: drift:\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_applies_cleanly_to_a_real_api_server() {
    const TEST: &str = "chart_applies_cleanly_to_a_real_api_server";
    if !is_root() {
        return missing(
            TEST,
            "root (the test puts a bridge with the apiserver's address in the root network namespace)",
        );
    }
    if let Err(e) = have_tools() {
        return missing(TEST, &e.to_string());
    }
    let started = Instant::now();
    let Some((helm, binaries)) = Helm::new(TEST).await else {
        return;
    };
    let pid = std::process::id();
    let _bridge = Bridge::create(
        &format!("sych{}", pid % 10000),
        &format!("{BRIDGE_ADDR}/24"),
    );
    let dir = std::env::temp_dir().join(format!("switchyard-e2e-chart-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cp = start_control_plane(&dir, binaries).await;
    let k = Kubectl { cp: &cp };

    the_outside_prerequisites_are_in_place(&k).await;
    the_default_installation_applies_cleanly(&k, &helm, &dir).await;
    each_service_account_may_do_exactly_its_job(&k).await;
    the_cert_manager_upgrade_applies_cleanly(&k, &helm, &dir).await;

    cp.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&helm.home);
    eprintln!("chart against the API server took {:?}", started.elapsed());
}

/// The control plane, its apiserver on the bridge's address, with its files in `dir`.
async fn start_control_plane(dir: &Path, binaries: Binaries) -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions {
        dir: dir.to_path_buf(),
        bind: BRIDGE_ADDR.parse().unwrap(),
        binaries,
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "control plane did not start (logs in {}): {e}",
            dir.join("logs").display()
        )
    })
}

/// What the installation needs from outside the chart is accepted: the namespaces, and (for
/// the optional objects) the CRDs of the Prometheus Operator and cert-manager, Established.
async fn the_outside_prerequisites_are_in_place(k: &Kubectl<'_>) {
    k.ok(&["create", "namespace", NAMESPACE]).await;
    k.ok(&["create", "namespace", "shop"]).await;
    let integrations = fixtures().join("chart/integration-crds.yaml");
    k.apply(&integrations).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        &integrations.to_string_lossy(),
    ])
    .await;
}

/// The default installation, with the ServiceMonitors, applies cleanly twice without drift.
async fn the_default_installation_applies_cleanly(k: &Kubectl<'_>, helm: &Helm, dir: &Path) {
    let yaml = helm
        .template(&["--set", "serviceMonitor.enabled=true"])
        .await;
    let objs = objects(&yaml).unwrap();
    let file = dir.join("switchyard.yaml");
    std::fs::write(&file, &yaml).unwrap();
    apply_twice_and_compare(k, &file, &objs, "default values").await;
}

/// A `kubectl auth can-i` expectation: service account, verb, resource (`RESOURCE[/NAME]` or
/// `RESOURCE#SUBRESOURCE`), namespace, and whether it is allowed.
type Check = (
    &'static str,
    &'static str,
    String,
    Option<&'static str>,
    bool,
);

/// The expectations, in the order they are listed.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn expect(
        &mut self,
        sa: &'static str,
        verb: &'static str,
        res: &str,
        ns: Option<&'static str>,
        allowed: bool,
    ) {
        self.0.push((sa, verb, res.to_string(), ns, allowed));
    }
}

const SR: &str = "serviceroutes.switchyard.dev";
const PN: &str = "podnetworks.switchyard.dev";
const NB: &str = "nodeblocks.switchyard.dev";
const VIP: &str = "virtualips.switchyard.dev";
const EPS: &str = "endpointslices.discovery.k8s.io";
const LEASE: &str = "leases.coordination.k8s.io";
const VWC: &str = "validatingwebhookconfigurations.admissionregistration.k8s.io";
const SYS: Option<&str> = Some(NAMESPACE);
const SHOP: Option<&str> = Some("shop");

/// RBAC as the API server decides it: each ServiceAccount may do what its binary does and
/// nothing else.
async fn each_service_account_may_do_exactly_its_job(k: &Kubectl<'_>) {
    let mut checks = Checks::default();
    agent_checks(&mut checks);
    webhook_checks(&mut checks);
    operator_checks(&mut checks);
    let checks = checks.0;
    let t = Instant::now();
    let n = checks.len();
    let wrong: Vec<String> = futures::stream::iter(checks)
        .map(|(sa, verb, res, ns, allowed)| async move {
            (k.can(sa, verb, &res, ns).await != allowed).then(|| {
                format!(
                    "{sa} {} {verb} {res}{}",
                    if allowed { "cannot" } else { "can" },
                    ns.map(|n| format!(" in {n}")).unwrap_or_default()
                )
            })
        })
        .buffer_unordered(8)
        .filter_map(|w| async move { w })
        .collect()
        .await;
    eprintln!("{n} kubectl auth can-i checks in {:?}", t.elapsed());
    assert!(wrong.is_empty(), "RBAC:\n{}", wrong.join("\n"));
}

/// The agent reads what it programs and writes its report Lease only.
fn agent_checks(c: &mut Checks) {
    for res in [PN, NB, VIP, SR, "namespaces", "pods", EPS] {
        for verb in ["get", "list", "watch"] {
            c.expect("switchyard-agent", verb, res, SHOP, true);
        }
    }
    for verb in ["get", "create", "update", "patch"] {
        c.expect(
            "switchyard-agent",
            verb,
            &format!("{LEASE}/switchyard-agent-node-1"),
            SYS,
            true,
        );
    }
    for verb in ["create", "update", "patch", "delete"] {
        c.expect("switchyard-agent", verb, SR, SHOP, false);
        c.expect("switchyard-agent", verb, PN, None, false);
        c.expect("switchyard-agent", verb, NB, None, false);
        c.expect("switchyard-agent", verb, VIP, None, false);
        c.expect("switchyard-agent", verb, EPS, SHOP, false);
        c.expect("switchyard-agent", verb, "pods", SHOP, false);
        c.expect("switchyard-agent", verb, LEASE, Some("default"), false);
    }
    c.expect(
        "switchyard-agent",
        "patch",
        &format!("{SR}#status"),
        SHOP,
        false,
    );
    c.expect(
        "switchyard-agent",
        "patch",
        &format!("{PN}#status"),
        None,
        false,
    );
    c.expect(
        "switchyard-agent",
        "update",
        &format!("{SR}#status"),
        SHOP,
        false,
    );
    c.expect("switchyard-agent", "delete", LEASE, SYS, false);
    c.expect("switchyard-agent", "get", "secrets", SYS, false);
    c.expect("switchyard-agent", "list", "secrets", None, false);
    c.expect("switchyard-agent", "patch", "nodes", None, false);
}

/// The webhook reads; its one write is the caBundle of its own configuration.
fn webhook_checks(c: &mut Checks) {
    for res in [PN, SR, NB, "services", "namespaces"] {
        for verb in ["get", "list", "watch"] {
            c.expect("switchyard-webhook", verb, res, SHOP, true);
        }
    }
    for verb in ["get", "list", "watch", "patch"] {
        c.expect(
            "switchyard-webhook",
            verb,
            &format!("{VWC}/switchyard-webhook"),
            None,
            true,
        );
    }
    for res in [
        PN,
        SR,
        NB,
        VIP,
        "services",
        "namespaces",
        "pods",
        "secrets",
        "configmaps",
        LEASE,
        EPS,
        "events.events.k8s.io",
        "events",
        "nodes",
    ] {
        for verb in ["create", "update", "patch", "delete"] {
            c.expect("switchyard-webhook", verb, res, SHOP, false);
            c.expect("switchyard-webhook", verb, res, SYS, false);
        }
    }
    for (verb, res) in [
        ("create", VWC.to_string()),
        ("delete", format!("{VWC}/switchyard-webhook")),
        ("update", format!("{VWC}/switchyard-webhook")),
        ("patch", format!("{VWC}/someone-else")),
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/switchyard-webhook"
                .to_string(),
        ),
    ] {
        c.expect("switchyard-webhook", verb, &res, None, false);
    }
    c.expect("switchyard-webhook", "get", "secrets", SYS, false);
    c.expect(
        "switchyard-webhook",
        "patch",
        &format!("{SR}#status"),
        SHOP,
        false,
    );
    c.expect(
        "switchyard-webhook",
        "patch",
        &format!("{PN}#status"),
        None,
        false,
    );
}

/// The operator: exactly the calls in operator/src.
fn operator_checks(c: &mut Checks) {
    for res in [
        "nodes",
        "namespaces",
        "pods",
        "services",
        PN,
        SR,
        NB,
        VIP,
        EPS,
    ] {
        for verb in ["get", "list", "watch"] {
            c.expect("switchyard-operator", verb, res, SHOP, true);
        }
    }
    for (verb, res, ns) in [
        ("create", NB, None),
        ("patch", NB, None),
        ("delete", NB, None),
        ("create", VIP, None),
        ("delete", VIP, None),
        ("patch", SR, SHOP),
        ("create", EPS, SHOP),
        ("patch", EPS, SHOP),
        ("delete", EPS, SHOP),
        ("create", "events.events.k8s.io", SHOP),
        ("create", "events.events.k8s.io", Some("default")),
        ("patch", "events.events.k8s.io", SHOP),
        ("list", LEASE, SYS),
        ("watch", LEASE, SYS),
        ("create", LEASE, SYS),
    ] {
        c.expect("switchyard-operator", verb, res, ns, true);
    }
    for (verb, res, ns) in [
        ("patch", format!("{SR}#status"), SHOP),
        ("patch", format!("{PN}#status"), None),
        ("update", format!("{PN}#finalizers"), None),
        ("update", format!("{SR}#finalizers"), SHOP),
    ] {
        c.expect("switchyard-operator", verb, &res, ns, true);
    }
    c.expect(
        "switchyard-agent",
        "update",
        &format!("{SR}#finalizers"),
        SHOP,
        false,
    );
    for verb in ["get", "update", "patch"] {
        c.expect(
            "switchyard-operator",
            verb,
            &format!("{LEASE}/switchyard-operator"),
            SYS,
            true,
        );
    }
    for (verb, res, ns) in [
        ("patch", format!("{LEASE}/switchyard-agent-node-1"), SYS),
        ("create", LEASE.to_string(), Some("default")),
        ("get", "secrets".to_string(), SYS),
        ("list", "secrets".to_string(), None),
        ("patch", PN.to_string(), None),
        ("delete", PN.to_string(), None),
        ("create", SR.to_string(), SHOP),
        ("delete", SR.to_string(), SHOP),
        ("update", VIP.to_string(), None),
        ("patch", "nodes".to_string(), None),
        ("create", "pods".to_string(), SHOP),
        ("patch", "services".to_string(), SHOP),
        ("patch", VWC.to_string(), None),
    ] {
        c.expect("switchyard-operator", verb, &res, ns, false);
    }
}

/// The cert-manager variant, as an upgrade of the same installation, applies cleanly twice
/// without drift, and its webhook may not touch its configuration.
async fn the_cert_manager_upgrade_applies_cleanly(k: &Kubectl<'_>, helm: &Helm, dir: &Path) {
    let yaml = helm.template(CERT_MANAGER).await;
    let objs = objects(&yaml).unwrap();
    let file = dir.join("switchyard-cert-manager.yaml");
    std::fs::write(&file, &yaml).unwrap();
    apply_twice_and_compare(k, &file, &objs, "cert-manager").await;
    for verb in ["patch", "update", "create", "delete"] {
        assert!(
            !k.can(
                "switchyard-webhook",
                verb,
                &format!("{VWC}/switchyard-webhook"),
                None
            )
            .await,
            "with cert-manager the webhook must not {verb} its configuration"
        );
    }
}
