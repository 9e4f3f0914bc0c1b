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
    /// A progress-only change held back (see [`PROGRESS_HOLD`]): look again after this long.
    pub recheck: Option<std::time::Duration>,
}

/// How long a route may wait for its agents before its status shows their progress, and how
/// often that progress is rewritten after
/// ("1 of 2 ready node(s) programmed"). Within it, only the write that says Programmed (or
/// anything else changing) is made: a route programmed promptly costs two status writes
/// (Pending, then Programmed) instead of one per node, and one stuck on a node still says so
/// after this long.
pub const PROGRESS_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// When a pass decides: now, and when the route's progress was last written (see
/// [`PROGRESS_HOLD`]).
#[derive(Clone, Copy, Debug)]
pub struct When {
    /// The pass's time.
    pub now: Timestamp,
    /// The last status write while the route waited for agents.
    pub progress_written: Option<Timestamp>,
}

impl When {
    /// At `now`, no progress written yet.
    pub fn at(now: Timestamp) -> Self {
        Self {
            now,
            progress_written: None,
        }
    }
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
    when: When,
) -> Report {
    let When {
        now,
        progress_written,
    } = when;
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
    let recheck = held_progress(&old, &status, now, progress_written);
    Report {
        warning: (!accepted.ok && news).then_some(accepted),
        status: (!same_status(&old, &status) && recheck.is_none()).then_some(status),
        recheck,
    }
}

/// When `new` differs from `old` only in the agents' progress (node counts, the Programmed
/// and Ready messages) while Programmed stays False, and less than [`PROGRESS_HOLD`] has
/// passed since it became False or since the last progress write (`progress_written`): how
/// long until the hold ends. So progress is written at most once per hold, however many
/// nodes report.
fn held_progress(
    old: &ServiceRouteStatus,
    new: &ServiceRouteStatus,
    now: Timestamp,
    progress_written: Option<Timestamp>,
) -> Option<std::time::Duration> {
    let pending = |s: &ServiceRouteStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Programmed")
            .filter(|c| c.status == "False")
            .cloned()
    };
    let (was, is) = (pending(old)?, pending(new)?);
    if was.reason != is.reason || same_status(old, new) {
        return None;
    }
    let strip = |s: &ServiceRouteStatus| {
        let mut s = s.clone();
        s.nodes = None;
        for c in &mut s.conditions {
            if c.type_ == "Programmed" || c.type_ == "Ready" {
                c.message.clear();
            }
        }
        s
    };
    if !same_status(&strip(old), &strip(new)) {
        return None;
    }
    let since = progress_written
        .filter(|w| *w > was.last_transition_time.0)
        .unwrap_or(was.last_transition_time.0);
    let age = std::time::Duration::try_from(now.duration_since(since)).unwrap_or_default();
    PROGRESS_HOLD.checked_sub(age).filter(|d| !d.is_zero())
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
/// Whether two statuses say the same (transition times aside).
pub fn same_status(a: &ServiceRouteStatus, b: &ServiceRouteStatus) -> bool {
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
                When::at(now),
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

    #[test]
    fn agent_progress_waits_for_the_hold_but_programmed_is_written_at_once() {
        let nodes = |done: &[&str], waiting: &[&str]| Programmed {
            programmed: done.iter().map(|s| s.to_string()).collect(),
            pending: waiting.iter().map(|s| s.to_string()).collect(),
        };
        let decide_at = |r: &ServiceRoute, on: &Programmed, now| {
            decide(
                r,
                &[],
                &Resolution::default(),
                &[],
                on,
                "cluster.local",
                When::at(now),
            )
        };
        let mut r = route();
        let first = decide_at(&r, &nodes(&[], &["n1", "n2"]), at(1_000));
        r.status = Some(first.status.unwrap());
        // One of two agents done half a second later: held, look again in 4.5 s.
        let half = Timestamp::from_millisecond(1_000_500).unwrap();
        let held = decide_at(&r, &nodes(&["n1"], &["n2"]), half);
        assert_eq!(held.status, None);
        assert_eq!(held.recheck, Some(std::time::Duration::from_millis(4_500)));
        // Both done: written at once.
        let done = decide_at(&r, &nodes(&["n1", "n2"], &[]), half);
        assert!(done.status.is_some());
        assert_eq!(done.recheck, None);
        // Still one of two after the hold: the progress is written.
        let late = decide_at(&r, &nodes(&["n1"], &["n2"]), at(1_006));
        assert_eq!(
            late.status.and_then(|s| s.nodes).map(|n| n.programmed),
            Some(1)
        );
        assert_eq!(late.recheck, None);
        // Progress was written at 1,006 s: the next progress waits until 1,011 s.
        let when = When {
            now: at(1_008),
            progress_written: Some(at(1_006)),
        };
        let on = nodes(&["n1"], &["n2", "n3"]);
        let r3 = decide(
            &r,
            &[],
            &Resolution::default(),
            &[],
            &on,
            "cluster.local",
            when,
        );
        assert_eq!(r3.status, None);
        assert_eq!(r3.recheck, Some(std::time::Duration::from_secs(3)));
    }
}
