//! `kubectl switchyard status`: every route and network, problems first (sans I/O).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use serde::Serialize;
use switchyard_api::{PodNetwork, ServiceRoute};

use crate::cluster::{Cluster, condition, key};

/// Something that needs attention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// `ServiceRoute` or `PodNetwork`.
    pub kind: &'static str,
    /// `namespace/name` or `name`.
    pub object: String,
    /// The condition that is not True, when the problem is one.
    pub condition: Option<String>,
    /// The condition's reason, or `NoStatus`, `StaleStatus`, `NotProgrammedEverywhere`.
    pub reason: String,
    /// The condition's message, or what is wrong.
    pub message: String,
}

/// One route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Allocated virtual IPs.
    #[serde(rename = "virtualIPs")]
    pub virtual_ips: Vec<String>,
    /// `port/protocol` of each port.
    pub ports: Vec<String>,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// Ready backends.
    pub ready_endpoints: i32,
    /// Matching backends that are not ready.
    pub not_ready_endpoints: i32,
    /// Nodes that programmed this generation.
    pub programmed_nodes: i32,
    /// Ready node agents.
    pub total_nodes: i32,
    /// Status of the `Ready` condition (`True`, `False`, `Unknown`).
    pub ready: String,
    /// Whether the route has a problem.
    pub problem: bool,
}

/// One network.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRow {
    /// Name.
    pub name: String,
    /// Pod pools.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// Virtual-IP pools.
    #[serde(rename = "serviceCIDRs")]
    pub service_cidrs: Vec<String>,
    /// The default network.
    pub default: bool,
    /// `Open` or `Isolated`.
    pub isolation: String,
    /// Node blocks allocated.
    pub allocated_blocks: i64,
    /// Node blocks still free.
    pub free_blocks: i64,
    /// Allocated blocks in percent of all blocks, when known.
    pub pool_usage_percent: Option<f64>,
    /// Status of the `Ready` condition.
    pub ready: String,
    /// Whether the network has a problem.
    pub problem: bool,
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Problems, routes' first, in name order.
    pub problems: Vec<Problem>,
    /// Routes, those with problems first.
    pub routes: Vec<RouteRow>,
    /// Networks, those with problems first.
    pub networks: Vec<NetworkRow>,
}

/// The common problems of an object with conditions and `observedGeneration`.
fn condition_problems(
    kind: &'static str,
    object: &str,
    generation: Option<i64>,
    observed: Option<i64>,
    conditions: &[Condition],
) -> Vec<Problem> {
    let mut out = Vec::new();
    if conditions.is_empty() {
        out.push(Problem {
            kind,
            object: object.to_string(),
            condition: None,
            reason: "NoStatus".into(),
            message: "the operator has not reported on this object yet".into(),
        });
        return out;
    }
    if let (Some(g), Some(o)) = (generation, observed)
        && o < g
    {
        out.push(Problem {
            kind,
            object: object.to_string(),
            condition: None,
            reason: "StaleStatus".into(),
            message: format!(
                "status.observedGeneration {o} is behind metadata.generation {g}: the operator has not caught up"
            ),
        });
    }
    for c in conditions.iter().filter(|c| c.status != "True") {
        out.push(Problem {
            kind,
            object: object.to_string(),
            condition: Some(format!("{}={}", c.type_, c.status)),
            reason: c.reason.clone(),
            message: c.message.clone(),
        });
    }
    out
}

fn route_problems(r: &ServiceRoute) -> Vec<Problem> {
    let object = key(r);
    let status = r.status.clone().unwrap_or_default();
    let mut out = condition_problems(
        "ServiceRoute",
        &object,
        r.meta().generation,
        status.observed_generation,
        &status.conditions,
    );
    let programmed_false =
        condition(&status.conditions, "Programmed").is_some_and(|c| c.status != "True");
    if let Some(n) = &status.nodes
        && n.programmed < n.total
        && !programmed_false
    {
        out.push(Problem {
            kind: "ServiceRoute",
            object,
            condition: None,
            reason: "NotProgrammedEverywhere".into(),
            message: format!("programmed on {} of {} nodes", n.programmed, n.total),
        });
    }
    out
}

fn network_problems(n: &PodNetwork) -> Vec<Problem> {
    let status = n.status.clone().unwrap_or_default();
    condition_problems(
        "PodNetwork",
        &key(n),
        n.meta().generation,
        status.observed_generation,
        &status.conditions,
    )
}

fn ready_of(conditions: &[Condition]) -> String {
    condition(conditions, "Ready")
        .map(|c| c.status.clone())
        .unwrap_or_else(|| "Unknown".into())
}

/// Computes the status report.
pub fn status(c: &Cluster) -> Status {
    let mut problems = Vec::new();
    let mut routes = Vec::new();
    let mut sorted: Vec<&ServiceRoute> = c.routes.iter().collect();
    sorted.sort_by_key(|r| key(*r));
    for r in sorted {
        let p = route_problems(r);
        let s = r.status.clone().unwrap_or_default();
        let endpoints = s.endpoints.clone().unwrap_or_default();
        let nodes = s.nodes.clone().unwrap_or_default();
        routes.push(RouteRow {
            namespace: r.meta().namespace.clone().unwrap_or_default(),
            name: r.meta().name.clone().unwrap_or_default(),
            virtual_ips: s.virtual_ips.clone(),
            ports: r
                .spec
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol.as_str()))
                .collect(),
            dns_names: s.dns_names.clone(),
            ready_endpoints: endpoints.ready,
            not_ready_endpoints: endpoints.not_ready,
            programmed_nodes: nodes.programmed,
            total_nodes: nodes.total,
            ready: ready_of(&s.conditions),
            problem: !p.is_empty(),
        });
        problems.extend(p);
    }
    let mut networks = Vec::new();
    let mut sorted: Vec<&PodNetwork> = c.networks.iter().collect();
    sorted.sort_by_key(|n| key(*n));
    for n in sorted {
        let p = network_problems(n);
        let s = n.status.clone().unwrap_or_default();
        let allocated = s.allocated_blocks.unwrap_or_default();
        let free = s.free_blocks.unwrap_or_default();
        let total = allocated + free;
        networks.push(NetworkRow {
            name: key(n),
            pod_cidrs: n.spec.pod_cidrs.clone(),
            service_cidrs: n.spec.service_cidrs.clone(),
            default: n.spec.default,
            isolation: format!("{:?}", n.spec.isolation),
            allocated_blocks: allocated,
            free_blocks: free,
            pool_usage_percent: (total > 0)
                .then(|| (allocated as f64) * 100.0 / (total as f64))
                .map(|p| (p * 10.0).round() / 10.0),
            ready: ready_of(&s.conditions),
            problem: !p.is_empty(),
        });
        problems.extend(p);
    }
    // Stable sorts: problems first, name order within.
    routes.sort_by_key(|r| !r.problem);
    networks.sort_by_key(|n| !n.problem);
    Status {
        problems,
        routes,
        networks,
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or_default();
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// The human-readable report.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    if s.problems.is_empty() {
        out.push_str("PROBLEMS: none\n\n");
    } else {
        out.push_str(&format!("PROBLEMS ({})\n", s.problems.len()));
        for p in &s.problems {
            let what = match &p.condition {
                Some(c) => format!("{c} {}", p.reason),
                None => p.reason.clone(),
            };
            out.push_str(&format!(
                "  {} {}: {}: {}\n",
                p.kind, p.object, what, p.message
            ));
        }
        out.push('\n');
    }
    out.push_str("SERVICEROUTES\n");
    let rows: Vec<Vec<String>> = s
        .routes
        .iter()
        .map(|r| {
            vec![
                format!("{}/{}", r.namespace, r.name),
                dash(&r.virtual_ips),
                dash(&r.ports),
                format!("{}", r.ready_endpoints),
                format!("{}/{}", r.programmed_nodes, r.total_nodes),
                r.ready.clone(),
                dash(&r.dns_names),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAMESPACE/NAME",
            "VIRTUAL IPS",
            "PORTS",
            "READY ENDPOINTS",
            "PROGRAMMED",
            "READY",
            "DNS",
        ],
        &rows,
    ));
    out.push_str("\nPODNETWORKS\n");
    let rows: Vec<Vec<String>> = s
        .networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                dash(&n.pod_cidrs),
                dash(&n.service_cidrs),
                n.isolation.clone(),
                format!("{}", n.allocated_blocks),
                format!("{}", n.free_blocks),
                n.pool_usage_percent
                    .map(|p| format!("{p}%"))
                    .unwrap_or_else(|| "-".into()),
                n.ready.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAME",
            "POD CIDRS",
            "SERVICE CIDRS",
            "ISOLATION",
            "BLOCKS",
            "FREE",
            "USAGE",
            "READY",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use switchyard_api::service_route::NodeCounts;

    use super::*;
    use crate::trace::tests::cluster;

    #[test]
    fn problems_come_first_with_reason_and_message() {
        let mut c = cluster();
        let mut broken = c.routes[0].clone();
        broken.metadata.name = Some("aaa-broken".into());
        if let Some(s) = broken.status.as_mut() {
            s.conditions[0].status = "False".into();
            s.conditions[0].reason = "VirtualIPUnavailable".into();
            s.conditions[0].message = "spec.virtualIPs[0]: 198.19.0.10 is held by shop/web".into();
        }
        c.routes.push(broken);
        let mut stale = c.routes[1].clone();
        stale.metadata.name = Some("stale".into());
        stale.metadata.generation = Some(3);
        if let Some(s) = stale.status.as_mut() {
            s.nodes = Some(NodeCounts {
                programmed: 1,
                total: 2,
            });
        }
        c.routes.push(stale);
        let s = status(&c);
        assert_eq!(s.problems.len(), 3, "{:#?}", s.problems);
        assert_eq!(s.problems[0].object, "shop/aaa-broken");
        assert_eq!(s.problems[0].condition.as_deref(), Some("Accepted=False"));
        assert_eq!(s.problems[0].reason, "VirtualIPUnavailable");
        assert_eq!(s.problems[1].reason, "StaleStatus");
        assert_eq!(s.problems[2].reason, "NotProgrammedEverywhere");
        assert_eq!(s.problems[2].message, "programmed on 1 of 2 nodes");
        let names: Vec<&str> = s.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["aaa-broken", "stale", "local", "web"]);
        assert_eq!(s.networks[0].pool_usage_percent, Some(0.8));
        let text = render(&s);
        let problems = text.find("PROBLEMS (3)").unwrap();
        let routes = text.find("SERVICEROUTES").unwrap();
        assert!(problems < routes);
        assert!(text.contains(
            "ServiceRoute shop/aaa-broken: Accepted=False VirtualIPUnavailable: spec.virtualIPs[0]"
        ));
    }

    #[test]
    fn a_healthy_cluster_has_no_problems() {
        let s = status(&cluster());
        assert!(s.problems.is_empty(), "{:#?}", s.problems);
        assert!(render(&s).starts_with("PROBLEMS: none"));
    }
}
