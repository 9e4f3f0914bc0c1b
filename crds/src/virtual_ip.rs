//! `VirtualIP`: one ServiceRoute's claim on one virtual IP, named after the address, so the
//! API server refuses a second claim of it even when two routes (or two operator replicas)
//! ask at the same instant. Written by the operator only; released when the route goes.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The route holding a virtual IP.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRef {
    /// Route namespace.
    pub namespace: String,
    /// Route name.
    pub name: String,
    /// Route UID: a route re-created under the same name is another holder.
    pub uid: String,
}

/// One ServiceRoute's claim on one virtual IP.
#[allow(clippy::duplicated_attributes)] // printcolumn(...) repeats `type_ = "string"` by design
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "VirtualIP",
    plural = "virtualips",
    shortname = "vip",
    category = "switchyard",
    derive = "PartialEq",
    doc = "One ServiceRoute's claim on one virtual IP, named after the address so that the API server refuses a second claim of it. Written by the Switchyard operator.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Network", type_ = "string", json_path = ".spec.network"),
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.route.namespace"
    ),
    printcolumn(name = "Route", type_ = "string", json_path = ".spec.route.name"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a VirtualIP claim is immutable: release it and claim another").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct VirtualIPSpec {
    /// The address.
    #[schemars(length(max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IP address"))]
    pub address: String,
    /// The PodNetwork whose serviceCIDRs the address comes from.
    #[schemars(length(min = 1, max = 253))]
    pub network: String,
    /// The holder.
    pub route: RouteRef,
}

/// The object name of the claim on `address` (`198.19.0.50` → `198-19-0-50`,
/// `fd00:20::a` → `fd00-20--a`).
pub fn virtual_ip_name(address: &std::net::IpAddr) -> String {
    crate::node_block::address_object_name(&address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains() {
        for (ip, name) in [("198.19.0.50", "198-19-0-50"), ("fd00:20::a", "fd00-20--a")] {
            let n = virtual_ip_name(&ip.parse().unwrap());
            assert_eq!(n, name);
            assert!(crate::validate::is_dns1123_subdomain(&n));
        }
    }
}
