//! What a route reports (sans I/O): its conditions (Accepted, ResolvedRefs, Programmed,
//! Ready), its counts and its DNS names, decided from what one pass found; and whether the
//! pass warns that the route is not accepted.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use switchyard_api::service_route::{ALLOW_ROUTES_FROM_ANNOTATION, EndpointCounts, NodeCounts};
use switchyard_api::{ServiceRoute, ServiceRouteStatus};

use super::backends::Resolution;
use super::programmed::Programmed;
use crate::conditions::{self, Verdict};
use crate::context::list;

/// Why a route is not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// PascalCase reason; the first problem of a pass is the reason of Accepted.
    pub reason: &'static str,
    /// What is wrong, naming the field and the value where there is one.
    pub message: String,
}

impl Problem {
    /// A problem with `reason`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What one pass publishes about its route.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The status to write; `None` when the stored one already says the same.
    pub status: Option<ServiceRouteStatus>,
    /// The Accepted verdict to publish as a Warning: the route is not accepted, and it was
    /// before or has no conditions yet.
    pub warning: Option<Verdict>,
}

/// The report of a pass over `route`: `problems` that keep it from being accepted, its
/// `backends`, the `addresses` it holds, the ready agents that have programmed it
/// (`on_nodes`), at `now`.
pub fn decide(
    route: &ServiceRoute,
    problems: &[Problem],
    backends: &Resolution,
    addresses: &[IpAddr],
    on_nodes: &Programmed,
    cluster_domain: &str,
    now: Timestamp,
) -> Report {
    let accepted = accepted(problems);
    let programmed = programmed(on_nodes);
    let ready_backends = backends.ready();
    let ready = ready(&accepted, &programmed, ready_backends);
    let resolved = resolved_refs(backends, &route.namespace().unwrap_or_default());
    let old = route.status.clone().unwrap_or_default();
    let status = ServiceRouteStatus {
        observed_generation: route.metadata.generation,
        virtual_ips: addresses.iter().map(|a| a.to_string()).collect(),
        dns_names: dns_names(route, cluster_domain),
        endpoints: Some(EndpointCounts {
            ready: count(ready_backends),
            not_ready: count(backends.backends.len() - ready_backends),
        }),
        nodes: Some(NodeCounts {
            programmed: count(on_nodes.programmed.len()),
            total: count(on_nodes.total()),
        }),
        conditions: conditions::apply(
            &old.conditions,
            &[accepted.clone(), resolved, programmed, ready],
            route.metadata.generation,
            now,
        ),
    };
    let news = conditions::is_true(&old.conditions, "Accepted") || old.conditions.is_empty();
    Report {
        warning: (!accepted.ok && news).then_some(accepted),
        status: (!same_status(&old, &status)).then_some(status),
    }
}

/// The route's DNS names: its own under `svc.<cluster_domain>`, then its extra hostnames.
pub fn dns_names(route: &ServiceRoute, cluster_domain: &str) -> Vec<String> {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let mut names = vec![format!("{name}.{ns}.svc.{cluster_domain}")];
    names.extend(route.spec.hostnames.iter().cloned());
    names
}

/// Accepted: true without problems; else the first problem's reason and every message.
fn accepted(problems: &[Problem]) -> Verdict {
    match problems.first() {
        None => Verdict::new(
            "Accepted",
            true,
            "Accepted",
            "the route is valid, its network is accepted and its addresses are allocated",
        ),
        Some(first) => Verdict::new(
            "Accepted",
            false,
            first.reason,
            problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// ResolvedRefs: false when selected pods were left out, for lack of consent of their
/// namespace (named first) or for being on another network.
fn resolved_refs(backends: &Resolution, route_ns: &str) -> Verdict {
    let mut refused: Vec<String> = backends.without_consent.iter().cloned().collect();
    refused.sort();
    if refused.is_empty() && backends.other_network.is_empty() {
        Verdict::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            format!("{} backend(s) selected", backends.backends.len()),
        )
    } else if !refused.is_empty() {
        Verdict::new(
            "ResolvedRefs",
            false,
            "RefNotPermitted",
            format!(
                "pods in namespaces without consent were left out: {} (a namespace consents with the annotation {}: {route_ns})",
                list(&refused, 10),
                ALLOW_ROUTES_FROM_ANNOTATION
            ),
        )
    } else {
        let others: Vec<String> = backends.other_network.iter().cloned().collect();
        Verdict::new(
            "ResolvedRefs",
            false,
            "OtherNetwork",
            format!(
                "pods on another PodNetwork were left out: {}",
                list(&others, 10)
            ),
        )
    }
}

/// Programmed: true once every ready agent, and at least one, has programmed the route.
fn programmed(on_nodes: &Programmed) -> Verdict {
    if on_nodes.everywhere() {
        Verdict::new(
            "Programmed",
            true,
            "Programmed",
            format!(
                "programmed on every ready node ({})",
                on_nodes.programmed.len()
            ),
        )
    } else if on_nodes.total() == 0 {
        Verdict::new("Programmed", false, "Pending", "no node agent is ready")
    } else {
        Verdict::new(
            "Programmed",
            false,
            "Pending",
            format!(
                "{} of {} ready node(s) programmed; waiting for {}",
                on_nodes.programmed.len(),
                on_nodes.total(),
                list(&on_nodes.pending, 5)
            ),
        )
    }
}

/// Ready: accepted, programmed, and with a ready backend; the first that fails is the reason.
fn ready(accepted: &Verdict, programmed: &Verdict, ready_backends: usize) -> Verdict {
    if !accepted.ok {
        Verdict::new("Ready", false, "NotAccepted", accepted.message.clone())
    } else if !programmed.ok {
        Verdict::new(
            "Ready",
            false,
            "NotProgrammed",
            format!(
                "{ready_backends} ready backend(s); waiting for the node agents to program the route"
            ),
        )
    } else if ready_backends == 0 {
        Verdict::new("Ready", false, "NoReadyBackends", "no ready backend")
    } else {
        Verdict::new(
            "Ready",
            true,
            "Ready",
            format!("{ready_backends} ready backend(s), programmed on every ready node"),
        )
    }
}

/// A count for the status (saturates rather than wraps).
fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Status equality that ignores transition times (they only move when a status flips).
fn same_status(a: &ServiceRouteStatus, b: &ServiceRouteStatus) -> bool {
    let strip = |s: &ServiceRouteStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn route() -> ServiceRoute {
        serde_json::from_value(json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "web", "namespace": "shop", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "ports": [{"port": 80}],
                     "hostnames": ["web.example"]}
        }))
        .unwrap()
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn the_first_problem_names_the_reason_and_every_message_is_kept() {
        let v = accepted(&[
            Problem::new("NoNetwork", "no network"),
            Problem::new("Conflict", "a Service"),
        ]);
        assert!(!v.ok);
        assert_eq!(v.reason, "NoNetwork");
        assert_eq!(v.message, "no network; a Service");
    }

    #[test]
    fn ready_names_the_first_unmet_need() {
        let yes = |t| Verdict::new(t, true, "Ok", "");
        let no = |t| Verdict::new(t, false, "No", "why not");
        let programmed = yes("Programmed");
        assert_eq!(
            ready(&no("Accepted"), &no("Programmed"), 0).reason,
            "NotAccepted"
        );
        assert_eq!(ready(&no("Accepted"), &programmed, 3).message, "why not");
        assert_eq!(
            ready(&yes("Accepted"), &no("Programmed"), 3).reason,
            "NotProgrammed"
        );
        assert_eq!(
            ready(&yes("Accepted"), &programmed, 0).reason,
            "NoReadyBackends"
        );
        assert!(ready(&yes("Accepted"), &programmed, 1).ok);
    }

    #[test]
    fn a_refusal_warns_once_and_an_unchanged_status_is_not_rewritten() {
        let problems = [Problem::new(
            "NoNetwork",
            "namespace shop belongs to no network",
        )];
        let decide_at = |r: &ServiceRoute, now| {
            decide(
                r,
                &problems,
                &Resolution::default(),
                &[],
                &Programmed::default(),
                "cluster.local",
                now,
            )
        };
        let mut r = route();
        let first = decide_at(&r, at(1_000));
        assert_eq!(first.warning.as_ref().map(|w| w.reason), Some("NoNetwork"));
        let status = first.status.unwrap();
        assert_eq!(
            status.dns_names,
            vec!["web.shop.svc.cluster.local", "web.example"]
        );
        assert_eq!(status.observed_generation, Some(2));

        r.status = Some(status);
        let again = decide_at(&r, at(2_000));
        assert_eq!(again.warning, None, "already refused: no second Warning");
        assert_eq!(again.status, None, "same status: no write");
    }
}
