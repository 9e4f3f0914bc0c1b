//! Rules that need more than one manifest: updates against the stored object, the pool check
//! for requested virtual IPs, error wording, and property tests that the two validation
//! layers agree on address syntax.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;
use serde_json::json;
use switchyard_api::{
    PodNetwork, PodNetworkSpec, PodNetworkStatus, ServiceRoute,
    pod_network::BlockPrefixLength,
    validate::{check_virtual_ips_in_pool, decode, parse_cidr, validate_pod_network_update},
};

fn network(cidrs: &[&str], allocated: Option<i64>) -> PodNetwork {
    let mut pn = PodNetwork::new(
        "blue",
        PodNetworkSpec {
            pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            block_prefix_length: BlockPrefixLength::default(),
            service_cidrs: vec![],
            default: true,
            namespace_selector: None,
            node_selector: None,
            isolation: Default::default(),
            mtu: None,
        },
    );
    pn.status = allocated.map(|n| PodNetworkStatus {
        allocated_blocks: Some(n),
        ..Default::default()
    });
    pn
}

fn update_verdicts(old: &PodNetwork, new: &PodNetwork) -> (Vec<String>, Vec<(String, String)>) {
    let v = validate_pod_network_update(new, old)
        .iter()
        .map(|v| v.field.clone())
        .collect();
    let old_json = serde_json::to_value(old).expect("json");
    // The API server keeps the stored status on a spec update.
    let mut new_json = serde_json::to_value(new).expect("json");
    new_json["status"] = old_json["status"].clone();
    (v, cel(&new_json, Some(&old_json)))
}

#[test]
fn block_prefix_length_is_immutable_in_both_layers() {
    let old = network(&["198.18.0.0/16"], None);
    let mut new = old.clone();
    new.spec.block_prefix_length.ipv4 = 26;
    let (v, c) = update_verdicts(&old, &new);
    assert_eq!(v, vec!["spec.blockPrefixLength.ipv4"]);
    assert!(
        c.iter()
            .any(|(p, m)| p == "spec.blockPrefixLength" && m.contains("immutable")),
        "{c:?}"
    );
    let (v, c) = update_verdicts(&old, &old.clone());
    assert!(v.is_empty() && c.is_empty(), "{v:?} {c:?}");
}

#[test]
fn pod_cidrs_may_only_widen_while_blocks_are_allocated() {
    let old = network(&["198.18.128.0/17", "fd00:10::/56"], Some(3));
    for (label, cidrs, ok) in [
        ("same", vec!["198.18.128.0/17", "fd00:10::/56"], true),
        ("widened", vec!["198.18.0.0/16", "fd00:10::/48"], true),
        ("narrowed", vec!["198.18.128.0/18", "fd00:10::/56"], false),
        ("moved", vec!["198.19.128.0/17", "fd00:10::/56"], false),
        ("family removed", vec!["198.18.128.0/17"], false),
    ] {
        let new = network(&cidrs, None);
        let (v, c) = update_verdicts(&old, &new);
        if ok {
            assert!(v.is_empty() && c.is_empty(), "{label}: {v:?} {c:?}");
        } else {
            assert!(
                v.contains(&"spec.podCIDRs".to_string()),
                "{label}: validate {v:?}"
            );
            assert!(
                c.iter().any(|(p, _)| p == "spec.podCIDRs"),
                "{label}: CEL {c:?}"
            );
        }
    }
}

#[test]
fn pod_cidrs_may_change_freely_while_nothing_is_allocated() {
    for allocated in [None, Some(0)] {
        let old = network(&["198.18.128.0/17"], allocated);
        let new = network(&["198.19.0.0/18"], None);
        let (v, c) = update_verdicts(&old, &new);
        assert!(v.is_empty() && c.is_empty(), "{allocated:?}: {v:?} {c:?}");
    }
}

#[test]
fn requested_virtual_ips_must_lie_inside_the_pool() {
    let pools = vec!["198.19.0.0/20".to_string(), "fd00:20::/112".to_string()];
    let check = |ips: &[&str]| {
        let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
        check_virtual_ips_in_pool(&ips, &pools)
    };
    assert!(check(&["198.19.0.50", "fd00:20::50"]).is_empty());
    let v = check(&["198.20.0.1"]);
    assert!(
        v.has_field("spec.virtualIPs[0]") && v.to_string().contains("outside"),
        "{v}"
    );
    let v = check(&["198.19.0.0"]);
    assert!(v.to_string().contains("network address"), "{v}");
    let v = check(&["198.19.15.255"]);
    assert!(v.to_string().contains("broadcast"), "{v}");
    let v = check(&["fd00:20::ffff"]);
    assert!(v.to_string().contains("broadcast"), "{v}");
    let v = check_virtual_ips_in_pool(&["fd00:20::1".to_string()], &["198.19.0.0/20".to_string()]);
    assert!(v.to_string().contains("no IPv6 serviceCIDR"), "{v}");
}

#[test]
fn an_invalid_object_error_names_the_object_the_field_and_the_value() {
    let route: ServiceRoute = decode(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "ports": [{"port": 80}, {"name": "b", "port": 70000}]}
    }))
    .expect("decodes");
    let err = route.check(CLUSTER_DOMAIN).expect_err("invalid");
    let text = err.to_string();
    assert!(text.starts_with("ServiceRoute shop/web: "), "{text}");
    assert!(
        text.contains("spec.ports[1].port: 70000 is outside 1..65535"),
        "{text}"
    );
    assert!(text.contains("spec.ports[0].name: required"), "{text}");
    assert_eq!(err.metric_label(), "invalid");
}

#[test]
fn a_spec_that_does_not_decode_names_the_field() {
    let v = decode::<PodNetwork>(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork", "metadata": {"name": "x"},
        "spec": {"podCIDRs": ["198.18.0.0/16"], "mtu": "big"}
    }))
    .expect_err("mtu is a number");
    assert_eq!(v.field, "spec.mtu");
    let v = decode::<ServiceRoute>(
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute", "metadata": {}}),
    )
    .expect_err("no spec");
    assert_eq!(v.field, "spec");
}

#[test]
fn namespace_selector_syntax_is_checked() {
    let mut pn = network(&["198.18.0.0/16"], None);
    pn.spec.default = false;
    pn.spec.namespace_selector = Some(LabelSelector {
        match_labels: Some([("tenant".to_string(), "blue".to_string())].into()),
        match_expressions: None,
    });
    assert!(pn.validate().is_empty());
    assert!(pn.check().is_ok());
}

fn arb_v4_cidr() -> impl Strategy<Value = String> {
    (
        prop::array::uniform4(prop_oneof![8 => 0u16..=255, 1 => 256u16..=999]),
        0u8..=34,
        any::<bool>(),
    )
        .prop_map(|(o, len, zero_pad)| {
            let first = if zero_pad {
                format!("0{}", o[0])
            } else {
                o[0].to_string()
            };
            format!("{first}.{}.{}.{}/{len}", o[1], o[2], o[3])
        })
}

fn arb_v6_cidr() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![3 => Just(0u16), 1 => any::<u16>()], 8),
        0u8..=130,
        any::<bool>(),
    )
        .prop_map(|(g, len, compress)| {
            let groups: Vec<String> = g.iter().map(|x| format!("{x:x}")).collect();
            let addr = if compress && g[4..].iter().all(|x| *x == 0) {
                format!("{}::", groups[..4].join(":"))
            } else {
                groups.join(":")
            };
            format!("{addr}/{len}")
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// validate() and the CRD's CEL rules accept exactly the same pod CIDRs.
    #[test]
    fn both_layers_agree_on_cidr_syntax(cidr in prop_oneof![arb_v4_cidr(), arb_v6_cidr()]) {
        let rust_ok = parse_cidr(&cidr).is_ok();
        // Go's netip (the API server) refuses an IPv4 octet with a leading zero; kube-cel's
        // client-side parser accepts it, so such inputs are checked against Go's rule only.
        if cidr.contains('.') && cidr.split(['.', '/']).take(4).any(|o| o.len() > 1 && o.starts_with('0')) {
            prop_assert!(!rust_ok, "cidr {} has a leading zero", cidr);
            return Ok(());
        }
        let mut pn = network(&[&cidr], None);
        // A block size that fits every prefix, so only the CIDR's own rules can fire.
        pn.spec.block_prefix_length = BlockPrefixLength { ipv4: 30, ipv6: 126 };
        let obj = serde_json::to_value(&pn).expect("json");
        let cel_ok = !cel(&obj, None).iter().any(|(p, _)| p == "spec.podCIDRs");
        prop_assert_eq!(rust_ok, cel_ok, "cidr {}", cidr);
    }

    /// validate() never panics, whatever the spec holds.
    #[test]
    fn validate_never_panics(
        cidrs in prop::collection::vec(".{0,20}", 0..4),
        ports in prop::collection::vec((any::<i32>(), prop::option::of("[a-z-]{0,20}")), 0..70),
        hostnames in prop::collection::vec("[a-z.*-]{0,70}", 0..20),
        ips in prop::collection::vec(".{0,16}", 0..4),
    ) {
        let pn = network(&cidrs.iter().map(String::as_str).collect::<Vec<_>>(), Some(1));
        let _ = pn.validate();
        let _ = validate_pod_network_update(&pn, &pn);
        let route = json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "ports": ports.iter().map(|(p, n)| json!({"port": p, "name": n})).collect::<Vec<_>>(),
                "hostnames": hostnames, "virtualIPs": ips,
            }
        });
        if let Ok(sr) = decode::<ServiceRoute>(route) {
            let _ = sr.validate(CLUSTER_DOMAIN);
            let _ = check_virtual_ips_in_pool(&sr.spec.virtual_ips, &cidrs);
        }
    }
}
