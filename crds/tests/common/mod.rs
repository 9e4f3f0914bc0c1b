//! Helpers shared by this crate's integration tests: loading manifests and running the CRD's
//! CEL rules client-side, as the API server would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use serde_json::Value;
use switchyard_api::{PodNetwork, ServiceRoute, Violations, validate::decode};

pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every YAML document of a file, as JSON values.
pub fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `*.yaml` files of a folder, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// The CEL rules of the object's CRD, evaluated client-side: `(field path, message)` of each
/// failure. `old` makes transition rules run.
pub fn cel(obj: &Value, old: Option<&Value>) -> Vec<(String, String)> {
    let crd = match obj["kind"].as_str() {
        Some("PodNetwork") => PodNetwork::crd(),
        Some("ServiceRoute") => ServiceRoute::crd(),
        other => panic!("not a Switchyard kind: {other:?}"),
    };
    match kube::core::cel::Validator::new().validate(&schema_of(&crd), obj, old) {
        Ok(()) => vec![],
        Err(errs) => errs
            .into_vec()
            .into_iter()
            .map(|e| {
                // A rule the client-side engine cannot evaluate must not pass for a rejection.
                assert!(
                    matches!(e.kind, kube::core::cel::ErrorKind::ValidationFailure),
                    "CEL rule {:?} at {} did not evaluate: {}",
                    e.rule,
                    e.field_path,
                    e.message
                );
                (
                    e.field_path.trim_start_matches('.').to_string(),
                    e.message.clone(),
                )
            })
            .collect(),
    }
}

/// Decodes the object and runs `validate()`: a decode failure is one violation.
pub fn validate(obj: &Value) -> Violations {
    match obj["kind"].as_str() {
        Some("PodNetwork") => match decode::<PodNetwork>(obj.clone()) {
            Ok(pn) => pn.validate(),
            Err(v) => Violations(vec![v]),
        },
        Some("ServiceRoute") => match decode::<ServiceRoute>(obj.clone()) {
            Ok(sr) => sr.validate(CLUSTER_DOMAIN),
            Err(v) => Violations(vec![v]),
        },
        other => panic!("not a Switchyard kind: {other:?}"),
    }
}

pub fn is_switchyard(obj: &Value) -> bool {
    obj["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("switchyard.dev/"))
}
