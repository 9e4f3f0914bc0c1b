//! Property tests of what the handler does with a body (parse, judge, encode), on arbitrary
//! bytes, arbitrary JSON and valid reviews with random parts replaced or removed: it never
//! panics, and every review it can read gets a well-formed answer (the request's uid, a
//! denial with a 400, 422 or 503 status and a message). Bounded to run in CI in seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_webhook::Index;
use switchyard_webhook::http::parse_review;

fn world() -> Index {
    index(&[
        accepted(
            pn("default", &["198.18.128.0/17"], &["198.19.0.0/20"], true),
            2,
        ),
        pn(
            "blue",
            &["198.19.64.0/18", "fd00:10::/56"],
            &["198.19.16.0/20", "fd00:20::/112"],
            false,
        ),
        namespace("shop", json!({"team": "shop"})),
        service("shop", "legacy"),
        block("default", "198.18.128.0/24"),
        sr(
            "shop",
            "taken",
            &["198.19.0.9"],
            &["taken.example.internal"],
        ),
    ])
}

/// The whole handler path after the body is read; panics on a malformed answer.
fn handle(index: &Index, body: &[u8]) {
    let Ok(req) = parse_review(body) else { return };
    let uid = req.uid.clone();
    let resp = switchyard_webhook::review(index, req);
    assert_eq!(resp.uid, uid);
    if !resp.allowed {
        assert!(
            [400, 422, 503].contains(&resp.result.code),
            "status {} for {}",
            resp.result.code,
            resp.result.message
        );
        assert!(!resp.result.message.is_empty());
    }
    let encoded = serde_json::to_value(resp.into_review()).unwrap();
    assert_eq!(encoded["kind"], "AdmissionReview");
    assert_eq!(encoded["response"]["uid"], Value::String(uid));
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            "[a-zA-Z0-9./:_-]{0,20}",
            Just("198.19.0.50".to_string()),
            Just("198.18.128.0/16".to_string()),
            Just("fd00:20::1".to_string()),
            Just("PodNetwork".to_string()),
            Just("ServiceRoute".to_string()),
            Just("CREATE".to_string()),
            Just("UPDATE".to_string()),
            Just("DELETE".to_string()),
            Just("switchyard.dev".to_string()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn bases() -> Vec<Value> {
    let net = pn("green", &["198.19.176.0/20"], &["198.19.161.0/24"], false);
    let route = sr("shop", "web", &["198.19.0.50"], &["web.example.internal"]);
    let old_net = accepted(
        pn("default", &["198.18.128.0/17"], &["198.19.0.0/20"], true),
        2,
    );
    let mut new_net = old_net.clone();
    new_net["spec"]["podCIDRs"] = json!(["198.18.128.0/18"]);
    vec![
        review_json("CREATE", &net, None),
        review_json("CREATE", &route, None),
        review_json("UPDATE", &new_net, Some(&old_net)),
        review_json("UPDATE", &route, Some(&route)),
        review_json("DELETE", &Value::Null, Some(&net)),
    ]
}

/// Every JSON pointer inside `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

fn mutate(mut v: Value, edits: &[(prop::sample::Index, bool, Value)]) -> Value {
    for (which, remove, replacement) in edits {
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let p = &all[which.index(all.len())];
        if *remove {
            let (parent, key) = p.rsplit_once('/').unwrap();
            match v.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>()
                        && i < a.len()
                    {
                        a.remove(i);
                    }
                }
                _ => {}
            }
        } else if let Some(slot) = v.pointer_mut(p) {
            *slot = replacement.clone();
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        handle(&world(), &bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        handle(&world(), &serde_json::to_vec(&v).unwrap());
        // The same value as the object of an otherwise valid review.
        let review = review_json("CREATE", &v, None);
        handle(&world(), &serde_json::to_vec(&review).unwrap());
    }

    #[test]
    fn mutated_reviews_get_well_formed_answers(
        base in 0usize..5,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), json_value()), 1..5),
    ) {
        let v = mutate(bases()[base].clone(), &edits);
        handle(&world(), &serde_json::to_vec(&v).unwrap());
    }
}

#[test]
fn the_bases_are_answered_as_expected() {
    let idx = world();
    let answers: Vec<bool> = bases()
        .iter()
        .map(|b| {
            let req = parse_review(&serde_json::to_vec(b).unwrap()).unwrap();
            switchyard_webhook::review(&idx, req).allowed
        })
        .collect();
    // The update narrows an allocated pool; everything else is fine.
    assert_eq!(answers, vec![true, true, false, true, true]);
}
