//! The committed CRDs match the types, and `crdgen` fails clearly when it cannot write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use switchyard_api::crd;

#[test]
fn committed_crds_match_the_types() {
    let dir = common::repo_root().join(crd::CHART_CRD_DIR);
    let stale = crd::stale(&dir).expect("read the chart's CRDs");
    assert!(
        stale.is_empty(),
        "stale CRDs {stale:?}: run `cargo run -p switchyard-api --bin crdgen` and commit the result"
    );
}

#[test]
fn crdgen_check_passes_on_the_committed_crds() {
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .arg("--check")
        .output()
        .expect("run crdgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crdgen_writes_both_crds_into_a_fresh_folder() {
    let dir = std::env::temp_dir().join(format!("switchyard-crdgen-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .arg(&dir)
        .output()
        .expect("run crdgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "podnetworks.switchyard.dev.yaml",
        "serviceroutes.switchyard.dev.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).expect("written");
        assert!(text.contains("kind: CustomResourceDefinition"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn crdgen_with_an_unwritable_output_path_fails_with_a_clear_message() {
    // A path below a regular file cannot be created, whoever runs the test (root included).
    let file = std::env::temp_dir().join(format!("switchyard-crdgen-file-{}", std::process::id()));
    std::fs::write(&file, "not a folder").expect("temp file");
    let target = file.join("crds");
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .arg(&target)
        .output()
        .expect("run crdgen");
    let _ = std::fs::remove_file(&file);
    assert!(
        !out.status.success(),
        "crdgen succeeded writing below a file"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write") && stderr.contains(&target.display().to_string()),
        "unclear message: {stderr}"
    );
}

#[test]
fn crdgen_refuses_unknown_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .arg("--frobnicate")
        .output()
        .expect("run crdgen");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

#[test]
fn crds_carry_the_kubernetes_conventions() {
    let pn = crd::render(&crd::all()[0]).expect("render");
    let sr = crd::render(&crd::all()[1]).expect("render");
    for (text, short) in [(&pn, "- pn"), (&sr, "- sr")] {
        assert!(text.contains(short), "short name {short}");
        assert!(text.contains("- switchyard"), "category");
        assert!(text.contains("status: {}"), "status subresource");
        assert!(
            text.contains("x-kubernetes-list-map-keys:\n"),
            "list-map markers"
        );
    }
    assert!(sr.contains("scope: Namespaced") && pn.contains("scope: Cluster"));
    for col in [
        "Virtual IPs",
        "Ports",
        "Endpoints",
        "Programmed",
        "Ready",
        "Age",
    ] {
        assert!(
            sr.contains(&format!("name: {col}")),
            "ServiceRoute column {col}"
        );
    }
    for col in ["Pod CIDRs", "Service CIDRs", "Blocks", "Ready", "Age"] {
        assert!(
            pn.contains(&format!("name: {col}")),
            "PodNetwork column {col}"
        );
    }
}

#[test]
fn every_schema_field_has_a_description() {
    // `kubectl explain` shows these; a field without one explains nothing.
    fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                let top = matches!(here.as_str(), ".apiVersion" | ".kind" | ".metadata");
                if !top
                    && sub
                        .get("description")
                        .and_then(|d| d.as_str())
                        .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, sub, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for c in crd::all() {
        let schema = serde_json::to_value(&c.spec.versions[0].schema).expect("json");
        walk(&c.spec.names.kind, &schema["openAPIV3Schema"], &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}
