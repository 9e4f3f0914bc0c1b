//! The examples and the invalid-manifest corpus against both validation layers: `validate()`
//! (shared by the webhook and the operator) and the CRD's CEL rules (enforced by the API
//! server, evaluated here client-side).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[test]
fn every_example_is_valid_in_both_layers() {
    let files = yaml_files(&repo_root().join("examples"));
    assert!(files.len() >= 6, "examples/ holds {} files", files.len());
    let mut objects = 0;
    for file in files {
        for obj in documents(&file).iter().filter(|o| is_switchyard(o)) {
            objects += 1;
            let v = validate(obj);
            assert!(v.is_empty(), "{}: validate(): {v}", file.display());
            let c = cel(obj, None);
            assert!(c.is_empty(), "{}: CEL: {c:?}", file.display());
        }
    }
    assert!(objects >= 6);
}

struct Case {
    file: String,
    expect: String,
    cel: Option<String>,
    obj: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let dir = repo_root().join("crds/tests/corpus/invalid");
    yaml_files(&dir)
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read");
            let header = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                    .map(str::to_string)
            };
            let mut docs = documents(&path);
            assert_eq!(
                docs.len(),
                1,
                "{}: one object per corpus file",
                path.display()
            );
            Case {
                file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                expect: header("expect")
                    .unwrap_or_else(|| panic!("{}: no '# expect:' line", path.display())),
                cel: header("cel"),
                obj: docs.remove(0),
            }
        })
        .collect()
}

#[test]
fn corpus_covers_every_rule_family() {
    let cases = cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for needle in [
        "spec.podCIDRs",
        "spec.serviceCIDRs",
        "spec.blockPrefixLength",
        "spec.mtu",
        "spec.isolation",
        "spec.namespaceSelector",
        "spec.selector",
        "spec.ports",
        "spec.namespaces",
        "spec.virtualIPs",
        "spec.sessionAffinity",
        "spec.hostnames",
        "spec.trafficPolicy",
        "spec.access",
        "metadata.name",
    ] {
        assert!(
            cases.iter().any(|c| c.expect.starts_with(needle)),
            "no corpus case for {needle}"
        );
    }
}

#[test]
fn validate_rejects_every_invalid_manifest_naming_the_field() {
    let mut failures = Vec::new();
    for case in cases() {
        let v = validate(&case.obj);
        if !v.has_field(&case.expect) {
            failures.push(format!(
                "{}: expected a violation at {}, got [{v}]",
                case.file, case.expect
            ));
        }
        for violation in v.iter() {
            assert!(
                !violation.message.is_empty(),
                "{}: empty message",
                case.file
            );
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn cel_rejects_what_the_schema_rules_cover_naming_the_field() {
    let mut failures = Vec::new();
    for case in cases() {
        let Some(path) = &case.cel else { continue };
        // Rules on the object's root (its name) report no field path.
        let path = if path == "<root>" { "" } else { path.as_str() };
        let errs = cel(&case.obj, None);
        if !errs.iter().any(|(p, _)| p == path) {
            failures.push(format!(
                "{}: expected CEL to reject at {path}, got {errs:?}",
                case.file
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
