//! The contract between the operator and the node agents about the data plane: what the
//! operator writes on a route's EndpointSlices so that they carry every input the agents need,
//! what each agent reports on its Lease, and how resource versions compare.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::service_route::{Protocol, TrafficPolicy};

/// Annotation on every EndpointSlice of a route: the route's `metadata.generation`.
pub const ROUTE_GENERATION_ANNOTATION: &str = "switchyard.dev/route-generation";
/// Annotation on every EndpointSlice of a route: its [`RouteParams`] as compact JSON.
pub const ROUTE_PARAMS_ANNOTATION: &str = "switchyard.dev/route-params";
/// Label distinguishing a route's slices: [`SLICE_ROLE_ACCESS`] for the sources its access rule
/// allows; absent or [`SLICE_ROLE_BACKENDS`] for its backends.
pub const SLICE_ROLE_LABEL: &str = "switchyard.dev/slice-role";
/// [`SLICE_ROLE_LABEL`] value of backend slices (the label may also be absent).
pub const SLICE_ROLE_BACKENDS: &str = "backends";
/// [`SLICE_ROLE_LABEL`] value of access slices: endpoints are source pod addresses, no ports.
pub const SLICE_ROLE_ACCESS: &str = "access";
/// Lease annotation: the highest EndpointSlice resourceVersion the agent has programmed.
pub const APPLIED_SLICES_ANNOTATION: &str = "switchyard.dev/applied-endpointslices";
/// Lease annotation: the highest VirtualIP resourceVersion the agent has programmed.
pub const APPLIED_VIPS_ANNOTATION: &str = "switchyard.dev/applied-virtualips";
/// Label on the agents' Leases.
pub const AGENT_LEASE_LABEL: &str = "switchyard.dev/component";
/// Value of [`AGENT_LEASE_LABEL`] on the agents' Leases.
pub const AGENT_LEASE_LABEL_VALUE: &str = "agent";
/// Namespace of the agents' Leases.
pub const AGENT_LEASE_NAMESPACE: &str = "switchyard-system";
/// `leaseDurationSeconds` of the agents' Leases.
pub const AGENT_LEASE_DURATION_SECONDS: i32 = 40;

/// How many maps each address family's service backends are split into on a node
/// (`backends_v4_s<k>`, `backends_v6_s<k>`, k below this).
pub const BACKEND_SHARDS: u16 = 128;

/// The backend map of the service key `vip . protocol . port` (`protocol` its IP protocol
/// number): the 32-bit FNV-1a hash of the address's octets, the protocol number and the port
/// (big-endian), its four bytes folded into one by XOR, modulo [`BACKEND_SHARDS`]. Part of the node's kernel layout: an agent that
/// restarts finds each key's backends where this function put them, so it must never change
/// without a migration.
pub fn backend_shard(vip: std::net::IpAddr, protocol: u8, port: u16) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    match vip {
        std::net::IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
        std::net::IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
    }
    eat(protocol);
    port.to_be_bytes().into_iter().for_each(&mut eat);
    // The hash folded to one byte (all 32 bits count), then its low 7 bits: 128 shards.
    ((h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24)) & 0x7f) as u8
}

/// The name of backend map `shard` of a family (`backends_v4_s<k>`, `backends_v6_s<k>`).
pub fn backend_map_name(ipv6: bool, shard: u8) -> String {
    format!("backends_{}_s{shard}", if ipv6 { "v6" } else { "v4" })
}

/// The name of the backend map holding the key `vip . protocol . port`.
pub fn backend_map(vip: std::net::IpAddr, protocol: u8, port: u16) -> String {
    backend_map_name(vip.is_ipv6(), backend_shard(vip, protocol, port))
}

/// The name of `node`'s agent Lease.
pub fn agent_lease_name(node: &str) -> String {
    format!("switchyard-agent-{node}")
}

/// One route port as the agents need it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ParamPort {
    /// The port's name, or its number when unnamed (the slices' port name).
    pub key: String,
    /// The route port.
    pub port: i32,
    /// The protocol.
    pub protocol: Protocol,
}

/// A route's data-plane parameters, written on each of its slices.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteParams {
    /// The route's ports.
    pub ports: Vec<ParamPort>,
    /// `Cluster` or `Local`.
    pub traffic_policy: TrafficPolicy,
    /// Client-IP affinity timeout in seconds, when affinity is on.
    pub affinity: Option<i32>,
    /// Whether not-ready backends receive traffic.
    pub publish_not_ready: bool,
    /// Whether the route has an access rule: only the sources its access slices list may
    /// connect to its backends' target ports (none when there are no such slices).
    #[serde(default)]
    pub access: bool,
}

impl RouteParams {
    /// Compact JSON.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From the annotation's value.
    pub fn from_annotation(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

/// A valid resourceVersion: a positive decimal integer without leading zeros, compared as a
/// number (KEP-5504: versions of one resource type are comparable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rv(String);

impl Rv {
    /// `None` for anything but a positive integer without leading zeros.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
        ok.then(|| Rv(s.to_string()))
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for Rv {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Rv {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_shards_are_fixed_and_spread() {
        // Fixed values: the kernel layout of running nodes depends on them.
        let v4: std::net::IpAddr = [198, 19, 0, 10].into();
        assert_eq!(backend_shard(v4, 6, 80), 57);
        assert_eq!(backend_shard(v4, 17, 53), 98);
        let v6: std::net::IpAddr = "fd00:40::1".parse().unwrap_or(v4);
        assert_eq!(backend_shard(v6, 6, 80), 100);
        let mut used = std::collections::BTreeSet::new();
        for i in 0..16_384u32 {
            let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0xc613_0000 + i));
            let k = backend_shard(ip, 6, 80);
            assert!(u16::from(k) < BACKEND_SHARDS);
            used.insert(k);
        }
        assert_eq!(used.len(), usize::from(BACKEND_SHARDS));
    }

    #[test]
    fn resource_versions_compare_as_integers_and_reject_junk() {
        let rv = |s: &str| Rv::parse(s).unwrap_or_else(|| panic!("{s}"));
        assert!(rv("10") > rv("9"));
        assert!(rv("123456789012345678901234567890") > rv("99"));
        assert!(rv("20") > rv("19"));
        for bad in ["", "0", "007", "12a", "-1", " 1"] {
            assert!(Rv::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn params_round_trip_compactly() {
        let p = RouteParams {
            ports: vec![ParamPort {
                key: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
            }],
            traffic_policy: TrafficPolicy::Local,
            affinity: None,
            publish_not_ready: false,
            access: true,
        };
        let s = p.to_annotation();
        assert_eq!(
            s,
            r#"{"ports":[{"key":"http","port":80,"protocol":"TCP"}],"trafficPolicy":"Local","affinity":null,"publishNotReady":false,"access":true}"#
        );
        assert_eq!(RouteParams::from_annotation(&s), Some(p));
        // Written by an older operator: no access rule.
        let old =
            r#"{"ports":[],"trafficPolicy":"Cluster","affinity":null,"publishNotReady":false}"#;
        assert!(RouteParams::from_annotation(old).is_some_and(|p| !p.access));
    }
}
