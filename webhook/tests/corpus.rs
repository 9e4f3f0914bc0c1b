//! The manifests every layer is tested against, through the webhook's core:
//! - `crds/tests/corpus/invalid/`: each per-object rule, denied naming its `# expect:` path;
//! - `webhook/tests/corpus/cross/`: each cross-object rule; every document but the last is
//!   admitted in turn (and then exists), the last is denied naming its `# expect:` path;
//! - `examples/`: every Switchyard object admitted, applied in order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use switchyard_webhook::Index;

fn is_switchyard(obj: &serde_json::Value) -> bool {
    obj["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("switchyard.dev/"))
}

#[test]
fn every_invalid_manifest_is_denied_naming_its_field() {
    let dir = repo_root().join("crds/tests/corpus/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 50, "{} files", files.len());
    // A cluster where the corpus's namespace exists and has a network, so that the
    // cross-object rules have what they need and only the per-object rule can refuse.
    let idx = index(&[
        accepted(
            pn("default", &["198.18.128.0/17"], &["198.19.0.0/20"], true),
            0,
        ),
        namespace("shop", json!({"team": "shop"})),
    ]);
    let mut failures = Vec::new();
    for file in files {
        let expect = header(&file, "expect").unwrap();
        let docs = documents(&file);
        assert_eq!(docs.len(), 1, "{}", file.display());
        let resp = create(&idx, &docs[0]);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if resp.allowed || resp.result.code != 422 {
            failures.push(format!(
                "{name}: expected 422 naming {expect}, got {:?} {}",
                resp.allowed, resp.result.message
            ));
            continue;
        }
        let named_in_message = resp.result.message.contains(&format!("{expect}: "));
        let named_in_causes = resp
            .result
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.field == expect));
        if !(named_in_message && named_in_causes) {
            failures.push(format!(
                "{name}: {expect} not named: {}",
                resp.result.message
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_cross_object_case_is_denied_naming_its_field() {
    let dir = repo_root().join("webhook/tests/corpus/cross");
    let files = yaml_files(&dir);
    assert!(files.len() >= 10, "{} files", files.len());
    let mut families = std::collections::BTreeSet::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let expect = header(&file, "expect").unwrap_or_else(|| panic!("{name}: no # expect:"));
        let mut docs = documents(&file);
        let last = docs.pop().unwrap();
        // The setup is admitted one object at a time, each seeing the ones before it.
        for (i, doc) in docs.iter().enumerate() {
            if is_switchyard(doc) {
                let idx = index(&docs[..i]);
                assert_allowed(&create(&idx, doc), &format!("{name}: setup document {i}"));
            }
        }
        let idx = index(&docs);
        let resp = create(&idx, &last);
        assert_denied(&resp, &expect, &name);
        let verdict = switchyard_webhook::review::decide(&idx, &request("CREATE", &last, None));
        families.extend(verdict.reasons());
        // Without the setup, the same object is fine: the refusal is about the others.
        // (Routes get a dual-stack default network whose pools hold every address used.)
        let mut alone: Vec<serde_json::Value> = docs
            .iter()
            .filter(|d| d["kind"] == "Namespace")
            .cloned()
            .collect();
        if last["kind"] == "ServiceRoute" {
            alone.push(pn(
                "elsewhere",
                &["198.18.0.0/20", "fd00:18::/56"],
                &["198.19.160.0/19", "fd00:19:2::/112"],
                true,
            ));
        }
        let resp = create(&index(&alone), &last);
        assert_allowed(
            &resp,
            &format!("{name} without the objects it conflicts with"),
        );
    }
    for family in [
        "overlap",
        "duplicate_default",
        "virtual_ip_pool",
        "virtual_ip_taken",
        "hostname_taken",
        "service_name",
    ] {
        assert!(
            families.contains(family),
            "no cross-object case of {family}: {families:?}"
        );
    }
}

#[test]
fn every_example_is_admitted() {
    let files = yaml_files(&repo_root().join("examples"));
    assert!(files.len() >= 6);
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut objects = 0;
    for file in files {
        for doc in documents(&file) {
            if is_switchyard(&doc) {
                objects += 1;
                let idx = index(&seen);
                assert_allowed(&create(&idx, &doc), &file.display().to_string());
                // Applying it again (an UPDATE to itself) is admitted too.
                assert_allowed(
                    &update(&index(&seen), &doc, &doc),
                    &file.display().to_string(),
                );
            }
            seen.push(doc);
        }
    }
    assert!(objects >= 6);
}

#[test]
fn an_empty_index_that_synced_admits_a_first_network() {
    let idx = Index::from_objects(CLUSTER_DOMAIN, &[]).unwrap();
    assert_allowed(
        &create(
            &idx,
            &pn("default", &["198.18.128.0/17"], &["198.19.0.0/20"], true),
        ),
        "first network",
    );
}
