//! Helpers shared by the webhook's tests: manifests, AdmissionReviews as the API server sends
//! them, and indexes built from objects.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use serde_json::{Value, json};
use switchyard_webhook::Index;
use switchyard_webhook::http::parse_review;

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

/// The value of a `# key: value` header line.
pub fn header(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
        .map(str::to_string)
}

fn resource_of(kind: &str) -> (&'static str, &'static str, &'static str) {
    match kind {
        "PodNetwork" => ("switchyard.dev", "v1alpha1", "podnetworks"),
        "ServiceRoute" => ("switchyard.dev", "v1alpha1", "serviceroutes"),
        "Service" => ("", "v1", "services"),
        _ => ("example.com", "v1", "others"),
    }
}

/// An AdmissionReview v1 as the API server sends it.
pub fn review_json(operation: &str, obj: &Value, old: Option<&Value>) -> Value {
    let subject = if obj.is_null() {
        old.unwrap_or(obj)
    } else {
        obj
    };
    let kind = subject["kind"].as_str().unwrap_or("Unknown");
    let (group, version, resource) = resource_of(kind);
    let name = subject["metadata"]["name"].as_str().unwrap_or("");
    let namespace = subject["metadata"]["namespace"].as_str();
    let mut request = json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "requestResource": {"group": group, "version": version, "resource": resource},
        "name": name,
        "operation": operation,
        "userInfo": {"username": "admin", "groups": ["system:masters"]},
        "object": obj,
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": false,
    });
    if let Some(ns) = namespace {
        request["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    })
}

pub fn request(
    operation: &str,
    obj: &Value,
    old: Option<&Value>,
) -> AdmissionRequest<DynamicObject> {
    let body = serde_json::to_vec(&review_json(operation, obj, old)).unwrap();
    parse_review(&body).unwrap()
}

pub fn create(index: &Index, obj: &Value) -> AdmissionResponse {
    switchyard_webhook::review(index, request("CREATE", obj, None))
}

pub fn update(index: &Index, obj: &Value, old: &Value) -> AdmissionResponse {
    switchyard_webhook::review(index, request("UPDATE", obj, Some(old)))
}

pub fn index(objects: &[Value]) -> Index {
    Index::from_objects(CLUSTER_DOMAIN, objects).unwrap()
}

/// Fails unless allowed.
pub fn assert_allowed(resp: &AdmissionResponse, what: &str) {
    assert!(
        resp.allowed,
        "{what}: expected allowed, got denied: {} ({})",
        resp.result.message, resp.result.code
    );
    assert_eq!(resp.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
}

/// Fails unless denied as invalid (422) naming `field`; returns the message.
pub fn assert_denied(resp: &AdmissionResponse, field: &str, what: &str) -> String {
    assert!(
        !resp.allowed,
        "{what}: expected a denial naming {field}, got allowed"
    );
    assert_eq!(resp.result.code, 422, "{what}: {}", resp.result.message);
    assert_eq!(resp.result.reason, "Invalid");
    let msg = resp.result.message.clone();
    assert!(
        msg.contains(&format!("{field}: ")),
        "{what}: the message does not name {field}: {msg}"
    );
    let causes = &resp.result.details.as_ref().unwrap().causes;
    assert!(
        causes.iter().any(|c| c.field == field),
        "{what}: no cause at {field}: {causes:?}"
    );
    msg
}

pub fn pn(name: &str, pods: &[&str], services: &[&str], default: bool) -> Value {
    let mut v = json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "PodNetwork",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"podCIDRs": pods, "serviceCIDRs": services, "default": default},
    });
    if !default {
        v["spec"]["namespaceSelector"] = json!({"matchLabels": {"tenant": name}});
    }
    v
}

pub fn accepted(mut pn: Value, allocated: i64) -> Value {
    pn["status"] = json!({
        "allocatedBlocks": allocated,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    pn
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"port": 80}]}})
}

pub fn block(network: &str, cidr: &str) -> Value {
    json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "NodeBlock",
           "metadata": {"name": cidr.replace(['.', '/', ':'], "-")},
           "spec": {"network": network, "node": "node-1", "cidr": cidr, "nodeIP": "198.18.0.11"}})
}

pub fn sr(ns: &str, name: &str, vips: &[&str], hostnames: &[&str]) -> Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ServiceRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "ports": [{"name": "http", "port": 80}],
            "virtualIPs": vips,
            "hostnames": hostnames,
        },
    })
}
