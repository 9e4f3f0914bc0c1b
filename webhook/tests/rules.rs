//! The core, `review(index, request)`, rule by rule: each cross-object rule once refusing and
//! once admitting, the update rules, ratcheting, and the answers that are not about the
//! object (other operations, other kinds, an index not synced yet, broken requests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use switchyard_webhook::Index;
use switchyard_webhook::review::{NOT_SYNCED, Outcome, decide};

// ---- PodNetwork: overlaps ----

#[test]
fn overlapping_pod_pools_are_refused_and_disjoint_ones_admitted() {
    let idx = index(&[pn("red", &["198.19.128.0/20"], &["198.19.160.0/24"], false)]);
    let msg = assert_denied(
        &create(
            &idx,
            &pn("green", &["198.19.0.0/16"], &["198.20.0.0/24"], false),
        ),
        "spec.podCIDRs[0]",
        "a pool containing another network's",
    );
    assert!(
        msg.contains("198.19.128.0/20")
            && msg.contains("\"red\"")
            && msg.contains("PodNetwork \"green\""),
        "the message names the value, the other network and the object: {msg}"
    );
    assert_denied(
        &create(&idx, &pn("green", &["198.19.130.0/24"], &[], false)),
        "spec.podCIDRs[0]",
        "a pool inside another network's",
    );
    assert_allowed(
        &create(
            &idx,
            &pn("green", &["198.19.176.0/20"], &["198.19.161.0/24"], false),
        ),
        "disjoint pools",
    );
}

#[test]
fn pod_and_service_pools_are_checked_against_both_pools_of_the_others() {
    let idx = index(&[pn("red", &["198.19.128.0/20"], &["198.19.160.0/24"], false)]);
    // New pod pool over the other's service pool.
    assert_denied(
        &create(
            &idx,
            &pn("g", &["198.19.160.0/22"], &["198.19.170.0/24"], false),
        ),
        "spec.podCIDRs[0]",
        "pod over service",
    );
    // New service pool over the other's pod pool.
    assert_denied(
        &create(
            &idx,
            &pn("g", &["198.19.176.0/20"], &["198.19.129.0/24"], false),
        ),
        "spec.serviceCIDRs[0]",
        "service over pod",
    );
    // New service pool over the other's service pool.
    assert_denied(
        &create(
            &idx,
            &pn("g", &["198.19.176.0/20"], &["198.19.160.0/25"], false),
        ),
        "spec.serviceCIDRs[0]",
        "service over service",
    );
}

#[test]
fn ipv6_entries_overlap_by_family_only() {
    let idx = index(&[pn(
        "red",
        &["198.19.128.0/20", "fd00:19:1::/56"],
        &["198.19.160.0/24", "fd00:19:2::/112"],
        false,
    )]);
    assert_denied(
        &create(
            &idx,
            &pn(
                "g",
                &["198.19.176.0/20", "fd00:19:1:80::/57"],
                &["198.19.161.0/24", "fd00:19:3::/112"],
                false,
            ),
        ),
        "spec.podCIDRs[1]",
        "IPv6 pod pool inside another's",
    );
    assert_allowed(
        &create(
            &idx,
            &pn(
                "g",
                &["198.19.176.0/20", "fd00:19:4::/56"],
                &["198.19.161.0/24", "fd00:19:3::/112"],
                false,
            ),
        ),
        "disjoint dual-stack pools",
    );
}

#[test]
fn an_update_is_not_an_overlap_with_itself() {
    let old = accepted(
        pn("red", &["198.19.128.0/20"], &["198.19.160.0/24"], false),
        0,
    );
    let idx = index(std::slice::from_ref(&old));
    let mut new = old.clone();
    new["spec"]["podCIDRs"] = json!(["198.19.128.0/19"]);
    assert_allowed(&update(&idx, &new, &old), "widening its own pool");
}

// ---- PodNetwork: default ----

#[test]
fn a_second_default_is_refused_naming_the_first() {
    let idx = index(&[pn("first", &["198.19.128.0/20"], &[], true)]);
    let msg = assert_denied(
        &create(&idx, &pn("second", &["198.19.176.0/20"], &[], true)),
        "spec.default",
        "second default",
    );
    assert!(msg.contains("\"first\""), "{msg}");
    assert_allowed(
        &create(&idx, &pn("second", &["198.19.176.0/20"], &[], false)),
        "a non-default second network",
    );
    let empty = index(&[]);
    assert_allowed(
        &create(&empty, &pn("first", &["198.19.128.0/20"], &[], true)),
        "the first default",
    );
}

// ---- PodNetwork: updates ----

#[test]
fn narrowing_or_moving_an_allocated_pool_is_refused() {
    let old = accepted(pn("red", &["198.19.128.0/20"], &[], false), 3);
    let idx = index(std::slice::from_ref(&old));
    for (cidrs, what) in [
        (json!(["198.19.128.0/21"]), "narrowed"),
        (json!(["198.19.144.0/20"]), "moved"),
        (json!(["fd00:19::/56"]), "replaced by another family"),
    ] {
        let mut new = old.clone();
        new["spec"]["podCIDRs"] = cidrs;
        let msg = assert_denied(&update(&idx, &new, &old), "spec.podCIDRs", what);
        assert!(msg.contains("198.19.128.0/20"), "{msg}");
    }
    let mut new = old.clone();
    new["spec"]["podCIDRs"] = json!(["198.19.128.0/19"]);
    assert_allowed(&update(&idx, &new, &old), "widened");
}

#[test]
fn narrowing_is_refused_when_blocks_exist_though_the_status_says_none_yet() {
    // The operator writes NodeBlocks before the status that counts them.
    let old = accepted(pn("red", &["198.19.128.0/20"], &[], false), 0);
    let idx = index(&[old.clone(), block("red", "198.19.128.0/24")]);
    let mut new = old.clone();
    new["spec"]["podCIDRs"] = json!(["198.19.136.0/21"]);
    let msg = assert_denied(
        &update(&idx, &new, &old),
        "spec.podCIDRs",
        "blocks in the index",
    );
    assert!(msg.contains("1 node blocks"), "{msg}");
    // Without blocks anywhere, a pool may change freely.
    let idx = index(std::slice::from_ref(&old));
    assert_allowed(&update(&idx, &new, &old), "nothing allocated");
}

#[test]
fn block_prefix_length_is_immutable() {
    let old = pn("red", &["198.19.128.0/20"], &[], false);
    let idx = index(std::slice::from_ref(&old));
    let mut new = old.clone();
    new["spec"]["blockPrefixLength"] = json!({"ipv4": 26});
    assert_denied(
        &update(&idx, &new, &old),
        "spec.blockPrefixLength.ipv4",
        "block size changed",
    );
}

#[test]
fn violations_the_stored_object_already_had_do_not_block_an_update() {
    // Two networks created at the same instant both passed; the loser must still be editable.
    let a = pn("a", &["198.19.128.0/20"], &[], false);
    let b = pn("b", &["198.19.128.0/20"], &[], false);
    let idx = index(&[a, b.clone()]);
    let mut labelled = b.clone();
    labelled["metadata"]["labels"] = json!({"team": "x"});
    labelled["spec"]["mtu"] = json!(1400);
    let resp = update(&idx, &labelled, &b);
    assert_allowed(&resp, "an unrelated change of an overlapping network");
    let warnings = resp.warnings.unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.podCIDRs[0]") && w.contains("\"a\"")),
        "{warnings:?}"
    );
    // A new violation still refuses.
    let mut worse = b.clone();
    worse["spec"]["mtu"] = json!(100);
    assert_denied(&update(&idx, &worse, &b), "spec.mtu", "a new violation");
}

// ---- ServiceRoute: virtual IPs ----

fn route_world() -> Vec<serde_json::Value> {
    vec![
        accepted(
            pn("default", &["198.19.128.0/20"], &["198.19.160.0/24"], true),
            1,
        ),
        accepted(
            pn("blue", &["198.19.176.0/20"], &["198.19.161.0/24"], false),
            1,
        ),
        namespace("shop", json!({})),
        namespace("tenant", json!({"tenant": "blue"})),
    ]
}

#[test]
fn a_virtual_ip_must_lie_in_the_pool_of_the_namespaces_network() {
    let idx = index(&route_world());
    assert_allowed(
        &create(&idx, &sr("shop", "web", &["198.19.160.10"], &[])),
        "in the default pool",
    );
    assert_allowed(
        &create(&idx, &sr("tenant", "web", &["198.19.161.10"], &[])),
        "in blue's pool",
    );
    let msg = assert_denied(
        &create(&idx, &sr("tenant", "web", &["198.19.160.10"], &[])),
        "spec.virtualIPs[0]",
        "the default pool for a blue namespace",
    );
    assert!(
        msg.contains("\"blue\"") && msg.contains("198.19.161.0/24"),
        "{msg}"
    );
    assert_denied(
        &create(&idx, &sr("shop", "web", &["198.19.170.1"], &[])),
        "spec.virtualIPs[0]",
        "outside every pool",
    );
    assert_denied(
        &create(&idx, &sr("shop", "web", &["fd00:19::5"], &[])),
        "spec.virtualIPs[0]",
        "a family the network has no pool for",
    );
    assert_denied(
        &create(&idx, &sr("shop", "web", &["198.19.160.0"], &[])),
        "spec.virtualIPs[0]",
        "the pool's network address",
    );
}

#[test]
fn unaccepted_networks_do_not_decide_membership_unless_none_is_accepted() {
    // blue is not accepted (yet): its namespace falls to the default network.
    let mut world = route_world();
    world[1] = pn("blue", &["198.19.176.0/20"], &["198.19.161.0/24"], false);
    let idx = index(&world);
    assert_allowed(
        &create(&idx, &sr("tenant", "web", &["198.19.160.10"], &[])),
        "default pool while blue is not accepted",
    );
    // Nothing accepted at all (a fresh cluster): every network counts.
    world[0] = pn("default", &["198.19.128.0/20"], &["198.19.160.0/24"], true);
    let idx = index(&world);
    assert_allowed(
        &create(&idx, &sr("tenant", "web", &["198.19.161.10"], &[])),
        "blue's pool",
    );
}

#[test]
fn a_virtual_ip_without_any_network_is_refused() {
    let idx = index(&[namespace("shop", json!({}))]);
    let msg = assert_denied(
        &create(&idx, &sr("shop", "web", &["198.19.160.10"], &[])),
        "spec.virtualIPs[0]",
        "no network",
    );
    assert!(msg.contains("belongs to no PodNetwork"), "{msg}");
    assert_allowed(
        &create(&idx, &sr("shop", "web", &[], &[])),
        "no virtual IP requested",
    );
}

#[test]
fn a_virtual_ip_held_by_another_route_is_refused() {
    let mut world = route_world();
    world.push(sr("shop", "first", &["198.19.160.20"], &[]));
    let mut allocated = sr("shop", "alloc", &[], &[]);
    allocated["status"] = json!({"virtualIPs": ["198.19.160.21"]});
    world.push(allocated);
    let idx = index(&world);
    let msg = assert_denied(
        &create(&idx, &sr("shop", "second", &["198.19.160.20"], &[])),
        "spec.virtualIPs[0]",
        "requested by another",
    );
    assert!(msg.contains("shop/first"), "{msg}");
    assert_denied(
        &create(&idx, &sr("shop", "second", &["198.19.160.21"], &[])),
        "spec.virtualIPs[0]",
        "allocated to another",
    );
    assert_allowed(
        &create(&idx, &sr("shop", "second", &["198.19.160.22"], &[])),
        "a free address",
    );
    // The route itself holds its own address.
    let mine = sr("shop", "first", &["198.19.160.20"], &[]);
    let mut changed = mine.clone();
    changed["spec"]["ports"] = json!([{"name": "http", "port": 8080}]);
    assert_allowed(&update(&idx, &changed, &mine), "keeping its own address");
}

#[test]
fn ipv6_virtual_ips_compare_as_addresses() {
    let idx = index(&[
        pn("v6", &["fd00:19:1::/56"], &["fd00:19:2::/112"], true),
        namespace("shop", json!({})),
        sr("shop", "first", &["fd00:19:2::a"], &[]),
    ]);
    assert_denied(
        &create(&idx, &sr("shop", "second", &["fd00:19:2:0::a"], &[])),
        "spec.virtualIPs[0]",
        "the same address written differently",
    );
}

#[test]
fn a_route_in_a_namespace_not_yet_cached_is_retried() {
    let idx = index(&route_world());
    let resp = create(&idx, &sr("brand-new", "web", &["198.19.160.10"], &[]));
    assert!(!resp.allowed);
    assert_eq!(resp.result.code, 503);
    assert!(
        resp.result.message.contains("retry"),
        "{}",
        resp.result.message
    );
    assert_eq!(resp.result.details.as_ref().unwrap().retry_after_seconds, 1);
    // Without virtual IPs the namespace's network does not matter.
    assert_allowed(
        &create(&idx, &sr("brand-new", "web", &[], &[])),
        "no pool needed",
    );
}

// ---- ServiceRoute: hostnames and Service names ----

#[test]
fn a_hostname_claimed_by_another_route_is_refused() {
    let mut world = route_world();
    world.push(sr("shop", "api", &[], &["api.shop.example.internal"]));
    let idx = index(&world);
    let msg = assert_denied(
        &create(
            &idx,
            &sr(
                "tenant",
                "api",
                &[],
                &["x.example.internal", "api.shop.example.internal"],
            ),
        ),
        "spec.hostnames[1]",
        "claimed in another namespace",
    );
    assert!(msg.contains("shop/api"), "{msg}");
    assert_allowed(
        &create(
            &idx,
            &sr("tenant", "api", &[], &["api.tenant.example.internal"]),
        ),
        "unclaimed",
    );
    let mine = sr("shop", "api", &[], &["api.shop.example.internal"]);
    let mut changed = mine.clone();
    changed["spec"]["ports"] = json!([{"name": "https", "port": 443}]);
    assert_allowed(&update(&idx, &changed, &mine), "keeping its own hostname");
}

#[test]
fn a_route_named_like_a_service_is_refused() {
    let mut world = route_world();
    world.push(service("shop", "web"));
    let idx = index(&world);
    let msg = assert_denied(
        &create(&idx, &sr("shop", "web", &[], &[])),
        "metadata.name",
        "a Service of that name",
    );
    assert!(msg.contains("web.shop.svc.cluster.local"), "{msg}");
    assert_allowed(
        &create(&idx, &sr("tenant", "web", &[], &[])),
        "same name, other namespace",
    );
    assert_allowed(&create(&idx, &sr("shop", "web2", &[], &[])), "another name");
}

#[test]
fn every_violation_is_listed() {
    let mut world = route_world();
    world.push(service("shop", "web"));
    world.push(sr(
        "shop",
        "other",
        &["198.19.160.20"],
        &["h.example.internal"],
    ));
    let idx = index(&world);
    let mut bad = sr("shop", "web", &["198.19.160.20"], &["h.example.internal"]);
    bad["spec"]["ports"] = json!([{"port": 0}]);
    let resp = create(&idx, &bad);
    for field in [
        "metadata.name",
        "spec.virtualIPs[0]",
        "spec.hostnames[0]",
        "spec.ports[0].port",
    ] {
        assert_denied(&resp, field, "several at once");
    }
    assert_eq!(resp.result.details.unwrap().causes.len(), 4);
}

// ---- Answers that are not about the object ----

#[test]
fn an_unsynced_index_refuses_with_a_retryable_answer() {
    let (idx, _writers) = Index::new("cluster.local");
    let resp = create(&idx, &pn("a", &["198.19.128.0/20"], &[], true));
    assert!(!resp.allowed, "never allow with half a picture");
    assert_eq!(resp.result.code, 503);
    assert_eq!(resp.result.reason, "ServiceUnavailable");
    assert_eq!(resp.result.message, NOT_SYNCED);
}

#[test]
fn delete_and_connect_are_allowed() {
    let (idx, _writers) = Index::new("cluster.local");
    let obj = pn("a", &["bogus"], &[], true);
    for op in ["DELETE", "CONNECT"] {
        let req = request(op, &serde_json::Value::Null, Some(&obj));
        let resp = switchyard_webhook::review(&idx, req);
        assert_allowed(&resp, op);
    }
}

#[test]
fn an_unknown_kind_is_refused_as_a_bad_request() {
    let idx = index(&[]);
    let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    let resp = create(&idx, &obj);
    assert!(!resp.allowed);
    assert_eq!(resp.result.code, 400);
    assert!(
        resp.result.message.contains("Kind=Widget"),
        "{}",
        resp.result.message
    );
    // A core kind is refused too.
    let resp = create(&idx, &service("shop", "web"));
    assert!(!resp.allowed);
    assert!(
        resp.result.message.contains("v1/Service"),
        "{}",
        resp.result.message
    );
}

#[test]
fn requests_without_objects_are_bad_requests() {
    let idx = index(&[]);
    let obj = pn("a", &["198.19.128.0/20"], &[], true);
    let resp = switchyard_webhook::review(&idx, request("UPDATE", &obj, None));
    assert_eq!(resp.result.code, 400);
    assert!(resp.result.message.contains("oldObject"));
    let mut req = request("CREATE", &obj, None);
    req.object = None;
    let resp = switchyard_webhook::review(&idx, req);
    assert_eq!(resp.result.code, 400);
    assert!(resp.result.message.contains("no object"));
}

#[test]
fn an_undecodable_spec_names_the_field() {
    let idx = index(&[]);
    let mut obj = pn("a", &["198.19.128.0/20"], &[], true);
    obj["spec"]["isolation"] = json!("Sealed");
    assert_denied(&create(&idx, &obj), "spec.isolation", "unknown enum value");
    let mut obj = sr("shop", "web", &[], &[]);
    obj["spec"]["ports"][0]["port"] = json!("eighty");
    assert_denied(&create(&idx, &obj), "spec.ports[0].port", "wrong type");
}

#[test]
fn subresource_requests_are_allowed() {
    let idx = index(&[]);
    let mut req = request(
        "UPDATE",
        &pn("a", &["bogus"], &[], true),
        Some(&pn("a", &["bogus"], &[], true)),
    );
    req.sub_resource = Some("status".into());
    assert_allowed(&switchyard_webhook::review(&idx, req), "status");
}

#[test]
fn decide_reports_rule_families() {
    let idx = index(&[pn("red", &["198.19.128.0/20"], &[], true)]);
    let mut obj = pn("green", &["198.19.128.0/20"], &[], true);
    obj["spec"]["mtu"] = json!(10);
    let verdict = decide(&idx, &request("CREATE", &obj, None));
    assert!(matches!(verdict.outcome, Outcome::Denied { .. }));
    assert_eq!(
        verdict.reasons(),
        vec!["invalid", "overlap", "duplicate_default"]
    );
    assert_eq!(verdict.object, "green");
}
