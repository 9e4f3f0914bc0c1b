//! The Grafana dashboard uses only metric names that `docs/observability.md` documents, and
//! every panel query names at least one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `switchyard_...` token of `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_queries_use_documented_metrics() {
    let docs = std::fs::read_to_string(root().join("docs/observability.md")).unwrap();
    let documented: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with("| `switchyard_"))
        .flat_map(metric_names)
        .collect();
    assert!(documented.len() > 20, "{documented:?}");
    let text = std::fs::read_to_string(root().join("charts/switchyard/dashboards/switchyard.json"))
        .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            queries += 1;
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(&n);
                assert!(
                    documented.contains(base),
                    "{} uses {n}, which docs/observability.md does not list",
                    panel["title"]
                );
            }
        }
    }
    assert!(queries >= 20, "{queries}");
}
