//! The admission webhook end to end on real nodes, as the chart installs it (one host-network
//! replica in self-managed certificate mode): it has written its own caBundle into both
//! entries of its registration, and from then on `kubectl apply` of every
//! invalid manifest (per-object and cross-object) fails naming the field, every example
//! applies, two overlapping networks created at the same instant never both become usable,
//! and narrowing an allocated pool is refused.
//!
//! One lab serves all steps; each says what it checks. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::Value;
use switchyard_api::NodeBlock;
use switchyard_e2e::lab::{Lab, LabOptions};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
        .map(str::to_string)
}

/// The YAML documents of a file, as text (kubectl reads them) and as values.
fn split_documents(text: &str) -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            if let Ok(v) = serde_saphyr::from_str::<Value>(&current)
                && !v.is_null()
            {
                docs.push((std::mem::take(&mut current), v));
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

async fn apply_text(lab: &Lab, yaml: &str) -> Output {
    lab.controlplane
        .kubectl_with_input(&["apply", "--server-side", "-f", "-"], yaml.as_bytes())
        .await
        .unwrap()
}

/// Plain (client-side) `kubectl apply`, as a user types it. Server-side apply would refuse
/// some invalid manifests before validation even runs (a duplicate key of a map list fails
/// to merge, naming only the list).
async fn apply_plain(lab: &Lab, yaml: &str) -> Output {
    lab.controlplane
        .kubectl_with_input(&["apply", "-f", "-"], yaml.as_bytes())
        .await
        .unwrap()
}

/// Whether an error message names `expect`, or the field the API server's own layers name
/// for the same rule: the `# cel:` path, or the list entry holding `expect` (the schema
/// reports a duplicate map-list key at the entry, `spec.ports[1]`, not at its field).
fn names_field(err: &str, expect: &str, cel: Option<&str>) -> bool {
    let entry = expect
        .rsplit_once('.')
        .map(|(parent, _)| parent)
        .filter(|p| p.ends_with(']'));
    err.contains(expect)
        || cel.is_some_and(|c| c != "<root>" && err.contains(c))
        || entry.is_some_and(|e| err.contains(&format!("{e}:")))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// Deletes the objects of `docs`, last first; namespaces without waiting (their contents go
/// with them), everything else waiting until gone so a later case can reuse its name.
async fn delete_all(lab: &Lab, docs: &[(String, Value)]) {
    for (_, v) in docs.iter().rev() {
        let kind = v["kind"].as_str().unwrap().to_lowercase();
        let name = v["metadata"]["name"].as_str().unwrap();
        let mut args = vec![
            "delete",
            kind.as_str(),
            name,
            "--ignore-not-found",
            "--timeout=60s",
        ];
        if let Some(ns) = v["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        if kind == "namespace" {
            args.push("--wait=false");
        }
        kubectl(lab, &args).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_end_to_end() {
    if !prerequisites() {
        return;
    }
    run_lab(
        LabOptions {
            nodes: 2,
            examples: false,
            operators: 1,
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
    step("the webhook runs self-managed and has written its caBundle");
    assert!(lab.webhook_registered());
    let bundles = webhook_ca_bundles(lab).await;
    assert_eq!(
        bundles.len(),
        2,
        "both entries carry the bundle: {bundles:?}"
    );

    step("every invalid manifest of the corpus is refused with exit code 1 naming its field");
    create_namespace(lab, "shop").await;
    let files = yaml_files(&repo_root().join("crds/tests/corpus/invalid"));
    assert!(files.len() >= 50);
    let results: Vec<(PathBuf, String, Option<String>, Output)> =
        futures::stream::iter(files.into_iter().map(|file| {
            let lab = &*lab;
            async move {
                let text = std::fs::read_to_string(&file).unwrap();
                let expect = header(&text, "expect").unwrap();
                // The API server's schema and CEL rules run before the webhook and name the
                // list rather than the entry; either layer's path counts.
                let cel = header(&text, "cel");
                let out = apply_plain(lab, &text).await;
                (file, expect, cel, out)
            }
        }))
        .buffer_unordered(4)
        .collect()
        .await;
    let mut failures = Vec::new();
    for (file, expect, cel, out) in &results {
        let err = stderr(out);
        let named = names_field(&err, expect, cel.as_deref());
        if out.status.code() != Some(1) || !named {
            failures.push(format!(
                "{}: exit {:?}, expected {expect}: {err}",
                file.display(),
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    step("every cross-object case is refused naming its field once its setup exists");
    for file in yaml_files(&repo_root().join("webhook/tests/corpus/cross")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = header(&text, "expect").unwrap();
        let mut docs = split_documents(&text);
        let (last_text, _) = docs.pop().unwrap();
        for (doc, _) in &docs {
            let out = apply_text(lab, doc).await;
            assert!(
                out.status.success(),
                "{}: setup refused: {}",
                file.display(),
                stderr(&out)
            );
        }
        for (_, v) in &docs {
            if v["kind"] == "PodNetwork" {
                let obj = format!("podnetwork/{}", v["metadata"]["name"].as_str().unwrap());
                wait_condition(lab, &obj, "Accepted", 60).await;
            }
        }
        // The webhook's caches follow the API server by a watch event; give them a moment.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let out = apply_plain(lab, &last_text).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", file.display());
        assert!(
            err.contains(&expect),
            "{}: {expect} not named: {err}",
            file.display()
        );
        eprintln!("{}: {err}", file.file_name().unwrap().to_string_lossy());
        delete_all(lab, &docs).await;
    }

    step("every example applies");
    for file in yaml_files(&repo_root().join("examples")) {
        let out = apply_text(lab, &std::fs::read_to_string(&file).unwrap()).await;
        assert!(out.status.success(), "{}: {}", file.display(), stderr(&out));
    }

    step("two overlapping networks created at the same instant never both become usable");
    for round in 0..4u8 {
        race(lab, round, round % 2 == 0).await;
    }

    step("an UPDATE narrowing an allocated podCIDR is refused");
    wait_condition(lab, "podnetwork/default", "Ready", 90).await;
    let narrowed = std::fs::read_to_string(repo_root().join("examples/01-podnetwork-default.yaml"))
        .unwrap()
        .replace("198.18.128.0/17", "198.18.128.0/18");
    let out = apply_text(lab, &narrowed).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("spec.podCIDRs"), "{err}");
    let pods = kubectl(
        lab,
        &[
            "get",
            "podnetwork",
            "default",
            "-o",
            "jsonpath={.spec.podCIDRs}",
        ],
    )
    .await;
    assert!(pods.contains("198.18.128.0/17"), "unchanged: {pods}");

    step("the webhook's metrics count what it judged and the caBundle it wrote");
    let metrics = lab.webhook_metrics().await.unwrap();
    for needle in [
        "switchyard_webhook_denials_total{reason=\"invalid\"}",
        "switchyard_webhook_denials_total{reason=\"overlap\"}",
        "switchyard_webhook_denials_total{reason=\"service_name\"}",
        "switchyard_webhook_ca_bundle_applies_total{outcome=\"ok\"}",
        "switchyard_webhook_admission_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

fn race_yaml(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: PodNetwork\nmetadata:\n  name: {name}\nspec:\n  podCIDRs: [\"{cidr}\"]\n  namespaceSelector:\n    matchLabels: {{tenant: {name}}}\n"
    )
}

async fn blocks_of(lab: &Lab, network: &str) -> usize {
    let api: kube::Api<NodeBlock> = kube::Api::all(lab.client.clone());
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|b| b.spec.network == network)
        .count()
}

async fn accepted(lab: &Lab, name: &str) -> Option<(String, String)> {
    let jp = "jsonpath={.status.conditions[?(@.type==\"Accepted\")].status} {.status.conditions[?(@.type==\"Accepted\")].reason}";
    let out = lab
        .kubectl(&["get", "podnetwork", name, "-o", jp])
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.split_once(' ')
        .map(|(s, r)| (s.to_string(), r.to_string()))
}

/// Creates two overlapping networks at once, through kubectl (two processes) or through the
/// API (two requests on one connection, microseconds apart: both usually pass the webhook,
/// whose caches have not seen either yet).
async fn race(lab: &Lab, round: u8, via_api: bool) {
    let (a, b) = (format!("race-{round}-a"), format!("race-{round}-b"));
    let third = 192 + 8 * round;
    let (ya, yb) = (
        race_yaml(&a, &format!("198.19.{third}.0/21")),
        race_yaml(&b, &format!("198.19.{third}.0/22")),
    );
    let (oa, ob): (Result<(), String>, Result<(), String>) = if via_api {
        let api: kube::Api<switchyard_api::PodNetwork> = kube::Api::all(lab.client.clone());
        let pa: switchyard_api::PodNetwork = serde_saphyr::from_str(&ya).unwrap();
        let pb: switchyard_api::PodNetwork = serde_saphyr::from_str(&yb).unwrap();
        let pp = kube::api::PostParams::default();
        let (ra, rb) = tokio::join!(api.create(&pp, &pa), api.create(&pp, &pb));
        (
            ra.map(|_| ()).map_err(|e| e.to_string()),
            rb.map(|_| ()).map_err(|e| e.to_string()),
        )
    } else {
        let (oa, ob) = tokio::join!(
            lab.controlplane
                .kubectl_with_input(&["create", "-f", "-"], ya.as_bytes()),
            lab.controlplane
                .kubectl_with_input(&["create", "-f", "-"], yb.as_bytes()),
        );
        let res = |o: Output| {
            if o.status.success() {
                Ok(())
            } else {
                Err(stderr(&o))
            }
        };
        (res(oa.unwrap()), res(ob.unwrap()))
    };
    let created: Vec<&String> = [(&a, &oa), (&b, &ob)]
        .into_iter()
        .filter(|(_, o)| o.is_ok())
        .map(|(n, _)| n)
        .collect();
    for (name, out) in [(&a, &oa), (&b, &ob)] {
        if let Err(err) = out {
            assert!(
                err.contains("spec.podCIDRs[0]"),
                "{name} refused without naming the field: {err}"
            );
            eprintln!("round {round}: {name} refused at admission");
        }
    }
    assert!(!created.is_empty(), "round {round}: both refused");
    // Every created network gets a verdict; at most one is accepted, and any other reports
    // Overlap and holds no block.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut verdicts = Vec::new();
    while Instant::now() < deadline {
        verdicts.clear();
        for name in &created {
            if let Some(v) = accepted(lab, name).await {
                verdicts.push(((*name).clone(), v));
            }
        }
        if verdicts.len() == created.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        verdicts.len(),
        created.len(),
        "round {round}: verdicts {verdicts:?}"
    );
    let winners: Vec<&String> = verdicts
        .iter()
        .filter(|(_, (s, _))| s == "True")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "round {round}: exactly one usable: {verdicts:?}"
    );
    for (name, (status, reason)) in &verdicts {
        if status != "True" {
            assert_eq!(reason, "Overlap", "round {round}: {name}");
            eprintln!("round {round}: both created; {name} reports Accepted=False Overlap");
        }
    }
    // Let the winner allocate, then check the loser never did.
    wait_condition(lab, &format!("podnetwork/{}", winners[0]), "Ready", 60).await;
    for (name, (status, _)) in &verdicts {
        if status != "True" {
            assert_eq!(
                blocks_of(lab, name).await,
                0,
                "round {round}: {name} holds blocks"
            );
        }
    }
    for name in &created {
        kubectl(lab, &["delete", "podnetwork", name, "--timeout=60s"]).await;
    }
}
