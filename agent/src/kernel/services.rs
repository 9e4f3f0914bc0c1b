//! The service data plane in `inet switchyard`: a fixed set of chains and shared maps, plus one
//! chain per backend count N and backend shard k (`svc_n<N>_s<k>`) and one per affinity
//! timeout T (`svc_aff_<T>`), made on demand and shared by every route. No named set, map or
//! chain exists per route.
//!
//! - `svc_prerouting` (nat, prerouting, dstnat) and `svc_output` (nat, output, -100) jump to
//!   `svc_dispatch`: `ct mark set ip daddr . meta l4proto . th dport map @service_count_v4
//!   ct mark vmap @count_dispatch` (and v6). `service_count` is a plain map from a key to a
//!   mark holding its shard k (top byte) and backend count N; the small verdict map
//!   `count_dispatch` (one element per chain) sends that mark to `svc_n<N>_s<k>`. Per-key
//!   entries are data, not verdicts, so adding one does not make nf_tables re-validate the
//!   jumps of every route (it does for each verdict-map element added).
//! - `svc_n<N>_s<k>`: `ct mark set numgen random mod N`; affinity keys jump through
//!   `@affinity_routes_v4` to `svc_aff_<T>`, which overrides the mark from the client's entry in
//!   the dynamic map `@affinity_v4` (`saddr . vip . proto . port : index`) and refreshes it
//!   with timeout T; then `dnat to daddr . l4proto . dport . ct mark map @backends_v4_s<k>`.
//!   The ct mark carries the chosen backend index (nft cannot keep a numgen result otherwise).
//!   Backends are split into [`BACKEND_SHARDS`] maps per family by a hash of the key
//!   ([`Key::shard`]): nf_tables resumes each part of a set dump by walking the set from its
//!   start, so reading one map of a million elements back costs the square of its size
//!   (39 s); 128 maps of about 8,000 cost well under a second (`kernel::dump`).
//! - `svc_reject` from filter prerouting, input, forward and output: keys in
//!   `@no_endpoints_v4/6` get a TCP reset or ICMP port unreachable. Prerouting (kernel 5.9 or
//!   later) is needed because a node without a route to the service range would otherwise
//!   answer "network unreachable" (rate limited, so clients mostly time out) before the
//!   forward hook ever sees the packet; input, forward and output cover the rest.
//! - `access_prerouting` (filter, prerouting, -150: before DNAT): new connections to a guarded
//!   destination (`@access_route_v4/6`: a guarded route's virtual IP . proto . port, or a
//!   backend address . proto . target port → route id) go to `access_v4/6`, which puts the id
//!   in the packet mark and rejects (TCP reset, else ICMP admin prohibited) unless
//!   `id . saddr` is in `@access_allowed_v4/6`; the mark is cleared again either way.
//! - `svc_postrouting` (nat, srcnat): masquerade DNATed flows whose `saddr . daddr` is in
//!   `@hairpin_v4/6` (a pod that reached itself through its route), whose source is local, or
//!   that carry conntrack label 100, which `svc_dispatch` sets on connections to a key in
//!   `@masq_v4/6` (native node ports and Services whose backends are outside the pod pools;
//!   a conntrack label because the packet mark is the access chains' scratch space and the
//!   ct mark holds the backend choice).
//!
//! Every change is one `nft -f` transaction with only the difference; the maps are never
//! flushed, so an agent restart keeps established connections.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::Value;
use tracing::{info, warn};

use super::cmd::run;
use super::dump;
use super::netlink;
use super::nft::TABLE;
use crate::error::{Error, Result};
use crate::service_table::Change;
use crate::services::{
    Diff, Elements, Key, Proto, affinity_resets, count_mark, count_of_mark, diff, stale_udp,
};
use switchyard_api::dataplane::{BACKEND_SHARDS, backend_map, backend_map_name};

const FIXED_CHAINS: [&str; 12] = [
    "svc_prerouting",
    "svc_reject_prerouting",
    "svc_output",
    "svc_postrouting",
    "svc_reject_input",
    "svc_reject_forward",
    "svc_reject_output",
    "svc_dispatch",
    "svc_reject",
    "access_prerouting",
    "access_v4",
    "access_v6",
];

/// The objects and fixed rules. Idempotent: `add` of an existing map keeps its elements;
/// only the fixed chains' rules are replaced.
pub fn skeleton() -> String {
    let t = format!("inet {TABLE}");
    let mut s = format!("add table {t}\n");
    for decl in [
        "map service_count_v4 { type ipv4_addr . inet_proto . inet_service : mark; }",
        "map service_count_v6 { type ipv6_addr . inet_proto . inet_service : mark; }",
        "map count_dispatch { type mark : verdict; }",
        "set no_endpoints_v4 { type ipv4_addr . inet_proto . inet_service; }",
        "set no_endpoints_v6 { type ipv6_addr . inet_proto . inet_service; }",
        "set masq_v4 { type ipv4_addr . inet_proto . inet_service; }",
        "set masq_v6 { type ipv6_addr . inet_proto . inet_service; }",
        "set hairpin_v4 { type ipv4_addr . ipv4_addr; }",
        "set hairpin_v6 { type ipv6_addr . ipv6_addr; }",
        "map affinity_v4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service : mark; flags dynamic,timeout; timeout 3h; }",
        "map affinity_routes_v4 { type ipv4_addr . inet_proto . inet_service : verdict; }",
        "map access_route_v4 { type ipv4_addr . inet_proto . inet_service : mark; }",
        "map access_route_v6 { type ipv6_addr . inet_proto . inet_service : mark; }",
        "set access_allowed_v4 { type mark . ipv4_addr; }",
        "set access_allowed_v6 { type mark . ipv6_addr; }",
        "chain svc_prerouting { type nat hook prerouting priority dstnat; policy accept; }",
        "chain svc_output { type nat hook output priority -100; policy accept; }",
        "chain svc_postrouting { type nat hook postrouting priority srcnat; policy accept; }",
        "chain svc_reject_prerouting { type filter hook prerouting priority filter; policy accept; }",
        "chain access_prerouting { type filter hook prerouting priority -150; policy accept; }",
        "chain svc_reject_input { type filter hook input priority filter; policy accept; }",
        "chain svc_reject_forward { type filter hook forward priority filter; policy accept; }",
        "chain svc_reject_output { type filter hook output priority filter; policy accept; }",
        "chain svc_dispatch",
        "chain svc_reject",
        "chain access_v4",
        "chain access_v6",
    ] {
        let (kind, rest) = decl.split_once(' ').unwrap_or((decl, ""));
        let _ = writeln!(s, "add {kind} {t} {rest}");
    }
    for k in (0..BACKEND_SHARDS).filter_map(|k| u8::try_from(k).ok()) {
        for (six, a) in [(false, "ipv4_addr"), (true, "ipv6_addr")] {
            let _ = writeln!(
                s,
                "add map {t} {} {{ type {a} . inet_proto . inet_service . mark : {a} . inet_service; }}",
                backend_map_name(six, k)
            );
        }
    }
    for c in FIXED_CHAINS {
        let _ = writeln!(s, "flush chain {t} {c}");
    }
    for (chain, rule) in [
        ("svc_prerouting", "jump svc_dispatch"),
        ("svc_output", "jump svc_dispatch"),
        (
            "svc_dispatch",
            "ip daddr . meta l4proto . th dport @masq_v4 ct label set 100",
        ),
        (
            "svc_dispatch",
            "ip6 daddr . meta l4proto . th dport @masq_v6 ct label set 100",
        ),
        (
            "svc_dispatch",
            "ct mark set ip daddr . meta l4proto . th dport map @service_count_v4 ct mark vmap @count_dispatch",
        ),
        (
            "svc_dispatch",
            "ct mark set ip6 daddr . meta l4proto . th dport map @service_count_v6 ct mark vmap @count_dispatch",
        ),
        (
            "svc_postrouting",
            "ct status dnat ip saddr . ip daddr @hairpin_v4 masquerade",
        ),
        (
            "svc_postrouting",
            "ct status dnat ip6 saddr . ip6 daddr @hairpin_v6 masquerade",
        ),
        (
            "svc_postrouting",
            "ct status dnat fib saddr type local masquerade",
        ),
        ("svc_postrouting", "ct status dnat ct label 100 masquerade"),
        ("svc_reject_prerouting", "jump svc_reject"),
        ("svc_reject_input", "jump svc_reject"),
        ("svc_reject_forward", "jump svc_reject"),
        (
            "access_prerouting",
            "ct state new ip daddr . meta l4proto . th dport @access_route_v4 jump access_v4",
        ),
        (
            "access_prerouting",
            "ct state new ip6 daddr . meta l4proto . th dport @access_route_v6 jump access_v6",
        ),
        ("svc_reject_output", "jump svc_reject"),
        (
            "svc_reject",
            "ip daddr . meta l4proto . th dport @no_endpoints_v4 meta l4proto tcp reject with tcp reset",
        ),
        (
            "svc_reject",
            "ip daddr . meta l4proto . th dport @no_endpoints_v4 reject",
        ),
        (
            "svc_reject",
            "ip6 daddr . meta l4proto . th dport @no_endpoints_v6 meta l4proto tcp reject with tcp reset",
        ),
        (
            "svc_reject",
            "ip6 daddr . meta l4proto . th dport @no_endpoints_v6 reject",
        ),
    ] {
        let _ = writeln!(s, "add rule {t} {chain} {rule}");
    }
    // The packet mark is scratch space for the route id between the lookup and the check
    // (nft 1.0.6 has no other register a rule can carry a map value in); it is cleared again
    // on every path out. Nothing in Switchyard reads the packet mark, and the ct mark (backend
    // choice in the nat chains) is left alone.
    for (v, ip) in [("v4", "ip"), ("v6", "ip6")] {
        for rule in [
            format!("meta mark set {ip} daddr . meta l4proto . th dport map @access_route_{v}"),
            format!(
                "meta mark . {ip} saddr != @access_allowed_{v} meta mark set 0 meta l4proto tcp reject with tcp reset"
            ),
            format!(
                "meta mark . {ip} saddr != @access_allowed_{v} meta mark set 0 reject with icmpx admin-prohibited"
            ),
            "meta mark set 0".to_string(),
        ] {
            let _ = writeln!(s, "add rule {t} access_{v} {rule}");
        }
    }
    s
}

/// The name of the dispatch chain of keys with `n` backends in shard `k`.
pub fn chain_n(n: u32, k: u8) -> String {
    format!("svc_n{n}_s{k}")
}

/// A dispatch chain's (N, k) from its name; `Err(N)` for a chain of the unsharded layout
/// (`svc_n<N>`); `None` for any other chain.
pub fn parse_chain_n(name: &str) -> Option<std::result::Result<(u32, u8), u32>> {
    let rest = name.strip_prefix("svc_n")?;
    match rest.split_once("_s") {
        Some((n, k)) => Some(Ok((n.parse().ok()?, k.parse().ok()?))),
        None => Some(Err(rest.parse().ok()?)),
    }
}

fn chain_n_rules(n: u32, k: u8) -> Vec<String> {
    vec![
        format!("ct mark set numgen random mod {n}"),
        "ip daddr . meta l4proto . th dport vmap @affinity_routes_v4".into(),
        format!(
            "meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport . ct mark map @{}",
            backend_map_name(false, k)
        ),
        format!(
            "meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport . ct mark map @{}",
            backend_map_name(true, k)
        ),
    ]
}

/// Removes what the unsharded layout left (one `service_dispatch` verdict map and one
/// `backends` map per family, chains `svc_n<N>`): the dispatch maps first (their elements
/// hold the chains), then the chains (their rules hold the backend maps), then the backend
/// maps. Each map is declared first, so the script holds whether or not it exists.
fn legacy_cleanup(s: &mut String, chains: &[u32]) {
    let t = format!("inet {TABLE}");
    for (f, a) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
        let _ = writeln!(
            s,
            "add map {t} service_dispatch_{f} {{ type {a} . inet_proto . inet_service : verdict; }}"
        );
        let _ = writeln!(s, "flush map {t} service_dispatch_{f}");
        let _ = writeln!(s, "delete map {t} service_dispatch_{f}");
    }
    for n in chains {
        let _ = writeln!(s, "flush chain {t} svc_n{n}");
        let _ = writeln!(s, "delete chain {t} svc_n{n}");
    }
    for (f, a) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
        let _ = writeln!(
            s,
            "add map {t} backends_{f} {{ type {a} . inet_proto . inet_service . mark : {a} . inet_service; }}"
        );
        let _ = writeln!(s, "delete map {t} backends_{f}");
    }
}

fn chain_aff_rules(t: u32) -> Vec<String> {
    vec![
        "ct mark set ip saddr . ip daddr . meta l4proto . th dport map @affinity_v4".into(),
        format!(
            "update @affinity_v4 {{ ip saddr . ip daddr . meta l4proto . th dport timeout {t}s : ct mark }}"
        ),
    ]
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "v4" } else { "v6" }
}

fn key_str(k: &Key) -> String {
    format!("{} . {} . {}", k.vip, k.proto.as_str(), k.port)
}

/// Groups `items` by address family and writes one `add|delete element` line per set.
fn elements_cmd(
    s: &mut String,
    verb: &str,
    set: &str,
    items: impl IntoIterator<Item = (IpAddr, String)>,
) {
    named_elements_cmd(
        s,
        verb,
        items
            .into_iter()
            .map(|(ip, e)| (format!("{set}_{}", fam(&ip)), e)),
    );
}

/// The backend map of `k` (`backends_v4_s<k>`).
pub fn backends_set(k: &Key) -> String {
    backend_map(k.vip, k.proto.number(), k.port)
}

/// Groups `items` (set name, element) by set and writes `add|delete element` lines of at most
/// 1,000 elements.
fn named_elements_cmd(
    s: &mut String,
    verb: &str,
    items: impl IntoIterator<Item = (String, String)>,
) {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (set, e) in items {
        by.entry(set).or_default().push(e);
    }
    for (set, es) in by {
        for chunk in es.chunks(1000) {
            let _ = writeln!(
                s,
                "{verb} element inet {TABLE} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
}

/// The transaction for `d`: element deletions, new chains, element additions, old chains.
/// With `rewrite_chains`, the rules of the on-demand chains of `target` are rewritten too,
/// `count_dispatch` is refilled, and what the unsharded layout left is removed (an agent
/// started on a table an older version wrote).
pub fn script(d: &Diff, target: &Elements, rewrite_chains: bool) -> String {
    let t = format!("inet {TABLE}");
    let mut s = String::new();
    deletions(&mut s, d);
    let new_n: Vec<(u32, u8)> = if rewrite_chains {
        let _ = writeln!(s, "flush map {t} count_dispatch");
        target.chains_n.keys().copied().collect()
    } else {
        d.chains_n.add.iter().map(|(c, _)| *c).collect()
    };
    let mut dispatch = Vec::with_capacity(new_n.len());
    for (n, k) in new_n {
        let c = chain_n(n, k);
        let _ = writeln!(s, "add chain {t} {c}");
        let _ = writeln!(s, "flush chain {t} {c}");
        for r in chain_n_rules(n, k) {
            let _ = writeln!(s, "add rule {t} {c} {r}");
        }
        dispatch.push(format!("{} : goto {c}", count_mark(n, k)));
    }
    named_elements_cmd(
        &mut s,
        "add",
        dispatch
            .into_iter()
            .map(|e| ("count_dispatch".to_string(), e)),
    );
    let new_t: Vec<u32> = if rewrite_chains {
        target.chains_aff.keys().copied().collect()
    } else {
        d.chains_aff.add.iter().map(|(n, _)| *n).collect()
    };
    for n in new_t {
        let _ = writeln!(s, "add chain {t} svc_aff_{n}");
        let _ = writeln!(s, "flush chain {t} svc_aff_{n}");
        for r in chain_aff_rules(n) {
            let _ = writeln!(s, "add rule {t} svc_aff_{n} {r}");
        }
    }
    additions(&mut s, d);
    if !rewrite_chains {
        named_elements_cmd(
            &mut s,
            "delete",
            d.chains_n
                .delete
                .iter()
                .map(|(n, k)| ("count_dispatch".to_string(), count_mark(*n, *k).to_string())),
        );
    }
    for (n, k) in &d.chains_n.delete {
        let _ = writeln!(s, "delete chain {t} {}", chain_n(*n, *k));
    }
    for n in &d.chains_aff.delete {
        let _ = writeln!(s, "delete chain {t} svc_aff_{n}");
    }
    if rewrite_chains {
        legacy_cleanup(&mut s, &d.legacy_chains.delete);
    }
    s
}

/// The element deletions of `d`: dispatch first, so no packet reaches a half-removed key.
fn deletions(s: &mut String, d: &Diff) {
    elements_cmd(
        s,
        "delete",
        "service_count",
        d.dispatch.delete.iter().map(|k| (k.vip, key_str(k))),
    );
    elements_cmd(
        s,
        "delete",
        "affinity_routes",
        d.affinity.delete.iter().map(|k| (k.vip, key_str(k))),
    );
    named_elements_cmd(
        s,
        "delete",
        d.backends
            .delete
            .iter()
            .map(|(k, i)| (backends_set(k), format!("{} . {i}", key_str(k)))),
    );
    elements_cmd(
        s,
        "delete",
        "no_endpoints",
        d.no_endpoints.delete.iter().map(|k| (k.vip, key_str(k))),
    );
    elements_cmd(
        s,
        "delete",
        "masq",
        d.masq.delete.iter().map(|k| (k.vip, key_str(k))),
    );
    elements_cmd(
        s,
        "delete",
        "hairpin",
        d.hairpin
            .delete
            .iter()
            .map(|ip| (*ip, format!("{ip} . {ip}"))),
    );
    elements_cmd(
        s,
        "delete",
        "access_route",
        d.access_route.delete.iter().map(|k| (k.vip, key_str(k))),
    );
    elements_cmd(
        s,
        "delete",
        "access_allowed",
        d.access_allowed
            .delete
            .iter()
            .map(|(id, ip)| (*ip, format!("{id} . {ip}"))),
    );
}

/// The element additions of `d`: dispatch last, once what it leads to is in place.
fn additions(s: &mut String, d: &Diff) {
    elements_cmd(
        s,
        "add",
        "masq",
        d.masq.add.iter().map(|(k, _)| (k.vip, key_str(k))),
    );
    named_elements_cmd(
        s,
        "add",
        d.backends.add.iter().map(|((k, i), (ip, p))| {
            (
                backends_set(k),
                format!("{} . {i} : {ip} . {p}", key_str(k)),
            )
        }),
    );
    elements_cmd(
        s,
        "add",
        "affinity_routes",
        d.affinity
            .add
            .iter()
            .map(|(k, t)| (k.vip, format!("{} : jump svc_aff_{t}", key_str(k)))),
    );
    elements_cmd(
        s,
        "add",
        "service_count",
        d.dispatch.add.iter().map(|(k, n)| {
            (
                k.vip,
                format!("{} : {}", key_str(k), count_mark(*n, k.shard())),
            )
        }),
    );
    elements_cmd(
        s,
        "add",
        "no_endpoints",
        d.no_endpoints.add.iter().map(|(k, _)| (k.vip, key_str(k))),
    );
    elements_cmd(
        s,
        "add",
        "hairpin",
        d.hairpin
            .add
            .iter()
            .map(|(ip, _)| (*ip, format!("{ip} . {ip}"))),
    );
    elements_cmd(
        s,
        "add",
        "access_allowed",
        d.access_allowed
            .add
            .iter()
            .map(|((id, ip), _)| (*ip, format!("{id} . {ip}"))),
    );
    elements_cmd(
        s,
        "add",
        "access_route",
        d.access_route
            .add
            .iter()
            .map(|(k, id)| (k.vip, format!("{} : {id}", key_str(k)))),
    );
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The concatenation parts of an element key or value.
fn parts(v: &Value) -> Vec<String> {
    let v = v.get("elem").and_then(|e| e.get("val")).unwrap_or(v);
    match v.get("concat").and_then(Value::as_array) {
        Some(a) => a.iter().filter_map(scalar).collect(),
        None => scalar(v).into_iter().collect(),
    }
}

fn parse_key(p: &[String]) -> Option<Key> {
    Some(Key {
        vip: p.first()?.parse().ok()?,
        proto: Proto::parse(p.get(1)?)?,
        port: p.get(2)?.parse().ok()?,
    })
}

/// A mark as `nft -j` lists it (a number, or a hex string such as `0x0100000a`).
fn parse_mark(v: &str) -> Option<u32> {
    match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn verdict_target(v: &Value) -> Option<String> {
    ["goto", "jump"]
        .iter()
        .find_map(|k| v.get(k)?.get("target")?.as_str().map(str::to_string))
}

/// Reads our service elements and chains out of `nft -j list table inet switchyard`.
pub fn parse_table(json: &str) -> Result<Elements> {
    let v: Value = serde_json::from_str(json).map_err(|source| Error::Parse {
        command: format!("nft -j list table inet {TABLE}"),
        source,
    })?;
    let mut e = Elements::default();
    for o in v
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = o
            .get("chain")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
        {
            match parse_chain_n(name) {
                Some(Ok(c)) => {
                    e.chains_n.insert(c, ());
                }
                Some(Err(n)) => {
                    e.legacy_chains.insert(n, ());
                }
                None => {}
            }
            if let Some(n) = name.strip_prefix("svc_aff_").and_then(|n| n.parse().ok()) {
                e.chains_aff.insert(n, ());
            }
            continue;
        }
        let Some(set) = o.get("map").or_else(|| o.get("set")) else {
            continue;
        };
        let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
        // `backends_v4_s12` → `backends`, shard 12.
        let (name, shard) = match name.rsplit_once("_s") {
            Some((base, k)) if base.starts_with("backends_") => (base, k.parse::<u8>().ok()),
            _ => (name, None),
        };
        let base = name.trim_end_matches("_v4").trim_end_matches("_v6");
        for el in set
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Map elements are [key, value]; set elements are the key alone.
            let (k, val) = match el.as_array() {
                Some(pair) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
                _ => (el, None),
            };
            let kp = parts(k);
            match base {
                "service_count" => {
                    if let (Some(key), Some(mark)) = (
                        parse_key(&kp),
                        val.and_then(scalar).and_then(|v| parse_mark(&v)),
                    ) {
                        let (n, k) = count_of_mark(mark);
                        if k == key.shard() {
                            e.dispatch.insert(key, n);
                        }
                    }
                }
                "affinity_routes" => {
                    if let (Some(key), Some(n)) = (
                        parse_key(&kp),
                        val.and_then(verdict_target)
                            .and_then(|t| t.strip_prefix("svc_aff_")?.parse().ok()),
                    ) {
                        e.affinity.insert(key, n);
                    }
                }
                "backends" if shard.is_some() => {
                    let vp = val.map(parts).unwrap_or_default();
                    if let (Some(key), Some(Ok(i)), Some(Ok(ip)), Some(Ok(port))) = (
                        parse_key(&kp),
                        kp.get(3).map(|s| s.parse::<u32>()),
                        vp.first().map(|s| s.parse::<IpAddr>()),
                        vp.get(1).map(|s| s.parse::<u16>()),
                    ) && shard == Some(key.shard())
                    {
                        e.backends.insert((key, i), (ip, port));
                    }
                }
                "no_endpoints" => {
                    if let Some(key) = parse_key(&kp) {
                        e.no_endpoints.insert(key, ());
                    }
                }
                "masq" => {
                    if let Some(key) = parse_key(&kp) {
                        e.masq.insert(key, ());
                    }
                }
                "hairpin" => {
                    if let Some(Ok(ip)) = kp.first().map(|s| s.parse::<IpAddr>()) {
                        e.hairpin.insert(ip, ());
                    }
                }
                "access_route" => {
                    if let (Some(key), Some(Ok(id))) = (
                        parse_key(&kp),
                        val.and_then(scalar).map(|v| v.parse::<u32>()),
                    ) {
                        e.access_route.insert(key, id);
                    }
                }
                "access_allowed" => {
                    if let (Some(Ok(id)), Some(Ok(ip))) = (
                        kp.first().map(|s| s.parse::<u32>()),
                        kp.get(1).map(|s| s.parse::<IpAddr>()),
                    ) {
                        e.access_allowed.insert((id, ip), ());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(e)
}

/// Reads what the kernel holds through `nft -j list table` (parsed by [`parse_table`]). The
/// agent reads over netlink ([`dump::read`]); this independent reader is what the tests and
/// the benchmark check the netlink read-back against, and the benchmark's baseline.
pub async fn read_with_nft() -> Result<Elements> {
    match run("nft", &["-j", "list", "table", "inet", TABLE], None).await {
        Ok(out) => parse_table(&out),
        // No table yet: nothing programmed.
        Err(Error::Command { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(Elements::default())
        }
        Err(e) => Err(e),
    }
}

/// What a pass changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Whether a transaction ran.
    pub transaction: bool,
    /// UDP conntrack deletions run.
    pub conntrack: usize,
}

/// Brings the kernel from `current` (what it holds, or `None` when unknown: read it back and
/// rewrite the fixed rules) to `target`.
///
/// When the read-back finds no element at all (the node's first programming, or a table
/// deleted by hand), the skeleton and chains go through `nft -f` and the elements over
/// netlink in transactions of [`NETLINK_MAX`] (access guards first, then backends before the
/// dispatch entries that use them): nft's parser costs over a second for 100,000 elements,
/// netlink tens of milliseconds. Otherwise one `nft -f` transaction, atomic, as always.
pub async fn apply(
    nl: &mut netlink::Socket,
    current: Option<&Elements>,
    target: &Elements,
) -> Result<Applied> {
    let (have, fresh) = match current {
        Some(c) => (c.clone(), false),
        None => (dump::read(nl)?, true),
    };
    let d = diff(&have, target);
    let mut out = Applied::default();
    // A table the unsharded layout wrote is migrated in one atomic transaction (below).
    if fresh && have.is_empty() && have.legacy_chains.is_empty() && !target.is_empty() {
        let mut s = skeleton();
        s.push_str(&script(&Diff::default(), target, true));
        run("nft", &["-f", "-"], Some(&s)).await?;
        for b in netlink::batch(&d).chunks(NETLINK_MAX) {
            nl.apply(&b)?;
        }
        out.transaction = true;
        info!(
            elements = target.len(),
            "service tables programmed from empty"
        );
    } else if fresh || !d.is_empty() {
        let mut s = if fresh { skeleton() } else { String::new() };
        s.push_str(&script(&d, target, fresh));
        run("nft", &["-f", "-"], Some(&s)).await?;
        out.transaction = true;
        if fresh {
            info!(
                elements = target.len(),
                "service tables read back and reconciled"
            );
        }
    }
    for key in affinity_resets(&have, target) {
        forget_affinity(nl, &key);
    }
    for (key, backend) in stale_udp(&have, target) {
        flush_udp(&key, &backend).await?;
        out.conntrack += 1;
    }
    Ok(out)
}

/// Element changes up to this size go over netlink; larger ones through `nft -f`.
const NETLINK_MAX: usize = 2_000;

/// Applies one incremental change (the kernel held the table's elements before it): one
/// transaction with only the difference, then the affinity and conntrack clean-up. Element-only
/// changes (the common case: chains outlive their users) go straight to nf_tables over netlink,
/// whose cost does not grow with the table; changes with chains go through `nft -f`.
pub async fn apply_change(nl: &mut netlink::Socket, change: &Change) -> Result<Applied> {
    let mut out = Applied::default();
    let d = &change.diff;
    if !d.is_empty() {
        let batch = netlink::batch(d);
        if d.chains_n.is_empty() && d.chains_aff.is_empty() && batch.len() <= NETLINK_MAX {
            nl.apply(&batch)?;
        } else {
            let s = script(d, &Elements::default(), false);
            run("nft", &["-f", "-"], Some(&s)).await?;
        }
        out.transaction = true;
    }
    for key in &change.affinity_resets {
        forget_affinity(nl, key);
    }
    for (key, backend) in &change.stale_udp {
        flush_udp(key, backend).await?;
        out.conntrack += 1;
    }
    Ok(out)
}

/// Drops remembered affinity of `key` (its backend indices changed): the entries of
/// `affinity_v4` whose `vip . proto . port` is `key`, found by a netlink dump and deleted in one
/// transaction. Best effort: entries expire on their own and a vanished entry only costs a
/// fresh random pick.
fn forget_affinity(nl: &mut netlink::Socket, key: &Key) {
    if !key.vip.is_ipv4() {
        return;
    }
    let victims = match dump::affinity_entries(nl, key) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "could not read the affinity entries to forget");
            return;
        }
    };
    let el = |key: Vec<u8>| netlink::Element {
        set: dump::AFFINITY.to_string(),
        key,
        data: netlink::Data::None,
    };
    let all = netlink::Batch {
        delete: victims.iter().cloned().map(el).collect(),
        add: Vec::new(),
    };
    if nl.apply(&all).is_ok() {
        return;
    }
    // An entry expired between the dump and the deletion: the transaction failed as a whole,
    // so delete the others one by one.
    for v in victims {
        let one = netlink::Batch {
            delete: vec![el(v)],
            add: Vec::new(),
        };
        if let Err(e) = nl.apply(&one) {
            warn!(error = %e, "could not forget an affinity entry");
        }
    }
}

/// Deletes the UDP conntrack entries of `key` that lead to `backend`, so the client's next
/// datagram is balanced anew to a live backend.
async fn flush_udp(key: &Key, backend: &IpAddr) -> Result<()> {
    let (vip, port, be) = (
        key.vip.to_string(),
        key.port.to_string(),
        backend.to_string(),
    );
    let family = if key.vip.is_ipv4() { "ipv4" } else { "ipv6" };
    let args = [
        "-D",
        "-f",
        family,
        "-p",
        "udp",
        "--orig-dst",
        vip.as_str(),
        "--orig-port-dst",
        port.as_str(),
        "--reply-src",
        be.as_str(),
    ];
    match run("conntrack", &args, None).await {
        Ok(_) => {
            info!(vip = %key.vip, port = key.port, backend = %backend, "flushed UDP conntrack entries of a removed backend");
            Ok(())
        }
        // Exit status 1 with "0 flow entries": there was nothing to delete.
        Err(Error::Command { stderr, .. }) if stderr.contains("0 flow entries") => Ok(()),
        Err(Error::Spawn { source, .. }) => Err(Error::Missing {
            program: "conntrack".into(),
            package: "conntrack".into(),
            source,
        }),
        Err(e) => Err(e),
    }
}

/// Makes bridged traffic pass through nftables in this network namespace: without it, a reply
/// from a backend on the client's own bridge skips the un-DNAT.
pub async fn enable_bridge_netfilter() -> Result<()> {
    for path in [
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    ] {
        if tokio::fs::metadata(path).await.is_err() {
            // br_netfilter may be a module that is not loaded yet.
            let _ = run("modprobe", &["br_netfilter"], None).await;
        }
        tokio::fs::write(path, "1\n")
            .await
            .map_err(|source| Error::Io {
                op: "write (bridge netfilter, needs br_netfilter)",
                path: path.into(),
                source,
            })?;
    }
    Ok(())
}

/// Turns `hairpin on` for every pod port (`syv*`) of our bridges, so a pod that reaches its own
/// route and is picked as the backend gets its packets back out of the port they came in.
pub async fn ensure_hairpin() -> Result<usize> {
    let links: Vec<Value> = super::cmd::ip_json(&["-d", "link", "show"]).await?;
    let mut n = 0;
    for l in &links {
        let Some(name) = l.get("ifname").and_then(Value::as_str) else {
            continue;
        };
        let master_ours = l
            .get("master")
            .and_then(Value::as_str)
            .is_some_and(super::links::is_ours);
        if !name.starts_with("syv") || !master_ours {
            continue;
        }
        let on = l
            .get("linkinfo")
            .and_then(|i| i.get("info_slave_data"))
            .and_then(|d| d.get("hairpin"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !on {
            run(
                "ip",
                &[
                    "link",
                    "set",
                    "dev",
                    name,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ],
                None,
            )
            .await?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &str, port: u16) -> Key {
        Key {
            vip: v.parse().unwrap_or_else(|e| panic!("{e}")),
            proto: Proto::Tcp,
            port,
        }
    }

    fn sample() -> Elements {
        let mut e = Elements::default();
        let key = k("198.19.0.10", 80);
        e.dispatch.insert(key, 2);
        e.chains_n.insert((2, key.shard()), ());
        for i in 0..2u8 {
            e.backends.insert(
                (key, u32::from(i)),
                (IpAddr::from([198, 18, 128, 5 + i]), 8080),
            );
        }
        e.no_endpoints.insert(k("fd00:20::a", 80), ());
        e.hairpin.insert(IpAddr::from([198, 18, 128, 5]), ());
        e.affinity.insert(key, 60);
        e.chains_aff.insert(60, ());
        e.access_route.insert(k("198.18.128.5", 8080), 7);
        e.access_route.insert(k("fd00:10::5", 8080), 7);
        e.access_allowed
            .insert((7, IpAddr::from([198, 18, 130, 9])), ());
        e
    }

    #[test]
    fn access_elements_are_written_per_family_and_checked_before_dnat() {
        let e = sample();
        let s = script(&diff(&Elements::default(), &e), &e, false);
        assert!(
            s.contains(
                "add element inet switchyard access_route_v4 { 198.18.128.5 . tcp . 8080 : 7 }"
            ),
            "{s}"
        );
        assert!(s.contains(
            "add element inet switchyard access_route_v6 { fd00:10::5 . tcp . 8080 : 7 }"
        ));
        assert!(s.contains("add element inet switchyard access_allowed_v4 { 7 . 198.18.130.9 }"));
        // Sources are allowed before their route's ports are guarded.
        assert!(s.find("access_allowed_v4 {") < s.find("access_route_v4 {"));
        let mut less = e.clone();
        less.access_allowed.clear();
        let s = script(&diff(&e, &less), &less, false);
        assert_eq!(
            s,
            "delete element inet switchyard access_allowed_v4 { 7 . 198.18.130.9 }\n"
        );
        let sk = skeleton();
        assert!(sk.contains("add rule inet switchyard access_prerouting ct state new ip daddr . meta l4proto . th dport @access_route_v4 jump access_v4"));
        assert!(sk.contains("add rule inet switchyard access_v6 meta mark . ip6 saddr != @access_allowed_v6 meta mark set 0 meta l4proto tcp reject with tcp reset"));
        assert!(sk.contains("flush chain inet switchyard access_v4"));
    }

    #[test]
    fn the_script_holds_only_the_difference_and_orders_chains_around_elements() {
        let e = sample();
        let s = script(&diff(&Elements::default(), &e), &e, false);
        let key = k("198.19.0.10", 80);
        let (shard, mark) = (key.shard(), count_mark(2, key.shard()));
        assert!(
            s.contains(&format!(
                "add element inet switchyard service_count_v4 {{ 198.19.0.10 . tcp . 80 : {mark} }}"
            )),
            "{s}"
        );
        assert!(s.contains(&format!(
            "add element inet switchyard backends_v4_s{shard} {{ 198.19.0.10 . tcp . 80 . 0 : 198.18.128.5 . 8080, 198.19.0.10 . tcp . 80 . 1 : 198.18.128.6 . 8080 }}"
        )));
        assert!(
            s.contains("add element inet switchyard no_endpoints_v6 { fd00:20::a . tcp . 80 }")
        );
        let chain = format!("svc_n2_s{shard}");
        assert!(s.contains(&format!(
            "add rule inet switchyard {chain} meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport . ct mark map @backends_v4_s{shard}"
        )));
        let dispatch =
            format!("add element inet switchyard count_dispatch {{ {mark} : goto {chain} }}");
        assert!(s.find(&format!("add chain inet switchyard {chain}")) < s.find(&dispatch));
        assert!(s.find(&dispatch) < s.find("service_count_v4 {"));
        // Nothing to do: nothing written.
        assert!(script(&diff(&e, &e), &e, false).is_empty());
        // Going back deletes the chains after the elements that use them.
        let back = script(&diff(&e, &Elements::default()), &Elements::default(), false);
        assert!(
            back.find("delete element inet switchyard service_count_v4")
                < back.find("delete element inet switchyard count_dispatch")
        );
        assert!(
            back.find("delete element inet switchyard count_dispatch")
                < back.find(&format!("delete chain inet switchyard {chain}"))
        );
        assert!(!back.contains("flush"), "maps are never flushed: {back}");
        assert!(!skeleton().contains("flush set") && !skeleton().contains("flush map"));
    }

    #[test]
    fn a_restart_rewrites_the_chains_and_removes_the_unsharded_layout() {
        let e = sample();
        let mut have = e.clone();
        have.legacy_chains.insert(2, ());
        have.legacy_chains.insert(9, ());
        let s = script(&diff(&have, &e), &e, true);
        // count_dispatch is refilled from the chains.
        let flush = s.find("flush map inet switchyard count_dispatch");
        assert!(flush.is_some() && flush < s.find("add element inet switchyard count_dispatch"));
        // The old dispatch map goes before its chains, the chains before the backend map.
        let old_dispatch = s.find("delete map inet switchyard service_dispatch_v4");
        let old_chain = s.find("delete chain inet switchyard svc_n9\n");
        let old_backends = s.find("delete map inet switchyard backends_v4\n");
        assert!(
            old_dispatch.is_some() && old_dispatch < old_chain && old_chain < old_backends,
            "{s}"
        );
        assert!(s.contains("add map inet switchyard backends_v6 {"));
        // Chain names: sharded, legacy, other.
        assert_eq!(parse_chain_n("svc_n3_s12"), Some(Ok((3, 12))));
        assert_eq!(parse_chain_n("svc_n3"), Some(Err(3)));
        assert_eq!(parse_chain_n("svc_dispatch"), None);
    }

    #[test]
    fn reads_back_what_nft_lists() {
        let shard = k("198.19.0.10", 80).shard();
        let mark = count_mark(2, shard);
        let json = r#"{"nftables": [{"metainfo": {}},
          {"chain": {"family": "inet", "table": "switchyard", "name": "svc_n2_sSHARD"}},
          {"chain": {"family": "inet", "table": "switchyard", "name": "svc_n7"}},
          {"chain": {"family": "inet", "table": "switchyard", "name": "svc_aff_60"}},
          {"map": {"name": "service_count_v4", "map": "mark", "elem": [[{"concat": ["198.19.0.10", "tcp", 80]}, "MARK"]]}},
          {"map": {"name": "affinity_routes_v4", "elem": [[{"concat": ["198.19.0.10", "tcp", 80]}, {"jump": {"target": "svc_aff_60"}}]]}},
          {"map": {"name": "backends_v4_sSHARD", "elem": [[{"concat": ["198.19.0.10", "tcp", 80, 0]}, {"concat": ["198.18.128.5", 8080]}],
                                                   [{"concat": ["198.19.0.10", "tcp", 80, 1]}, {"concat": ["198.18.128.6", 8080]}]]}},
          {"set": {"name": "no_endpoints_v6", "elem": [{"concat": ["fd00:20::a", "tcp", 80]}]}},
          {"set": {"name": "hairpin_v4", "elem": [{"concat": ["198.18.128.5", "198.18.128.5"]}]}},
          {"map": {"name": "access_route_v4", "map": "mark", "elem": [[{"concat": ["198.18.128.5", "tcp", 8080]}, 7]]}},
          {"map": {"name": "access_route_v6", "map": "mark", "elem": [[{"concat": ["fd00:10::5", "tcp", 8080]}, 7]]}},
          {"set": {"name": "access_allowed_v4", "type": ["mark", "ipv4_addr"], "elem": [{"concat": [7, "198.18.130.9"]}]}}]}"#;
        let json = json
            .replace("SHARD", &shard.to_string())
            .replace("MARK", &format!("{mark:#010x}"));
        let mut want = sample();
        want.legacy_chains.insert(7, ());
        assert_eq!(parse_table(&json).unwrap_or_else(|e| panic!("{e}")), want);
    }
}
