//! Which nodes have programmed a route (sans I/O). Each node agent reports on its own Lease the
//! highest EndpointSlice and VirtualIP resourceVersions it has applied; a route's data-plane
//! inputs are its slices and its VirtualIP claims, so the route is programmed on a node once
//! the node's reports reach the newest resourceVersion among them (resource versions of one
//! type are comparable, KEP-5504). Agents whose Lease was not renewed within its duration are
//! not counted.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use switchyard_api::dataplane::{
    AGENT_LEASE_DURATION_SECONDS, APPLIED_SLICES_ANNOTATION, APPLIED_VIPS_ANNOTATION, Rv,
};

/// What one agent reports.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentReport {
    /// The agent's node.
    pub node: String,
    /// When the agent last renewed its Lease.
    pub renewed: Option<Timestamp>,
    /// How long a renewal counts.
    pub duration: SignedDuration,
    /// Highest EndpointSlice resourceVersion applied (`None`: absent or invalid).
    pub applied_slices: Option<Rv>,
    /// Highest VirtualIP resourceVersion applied (`None`: absent or invalid).
    pub applied_vips: Option<Rv>,
}

impl AgentReport {
    /// The report on an agent Lease; `None` without a holder.
    pub fn from_lease(lease: &Lease) -> Option<Self> {
        let spec = lease.spec.as_ref()?;
        let node = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
        let annotations = lease.annotations();
        let rv = |key: &str| annotations.get(key).and_then(|v| Rv::parse(v));
        Some(Self {
            node,
            renewed: spec.renew_time.as_ref().map(|t| t.0),
            duration: SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds
                    .unwrap_or(AGENT_LEASE_DURATION_SECONDS),
            )),
            applied_slices: rv(APPLIED_SLICES_ANNOTATION),
            applied_vips: rv(APPLIED_VIPS_ANNOTATION),
        })
    }

    /// When the report stops counting.
    fn expires(&self) -> Option<Timestamp> {
        self.renewed.and_then(|r| r.checked_add(self.duration).ok())
    }

    /// Whether the agent renewed within its lease duration.
    pub fn is_ready(&self, now: Timestamp) -> bool {
        self.expires().is_some_and(|e| e > now)
    }
}

/// What a route needs a node to have applied, of one resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// The route has no object of this type.
    Nothing,
    /// At least this resourceVersion.
    AtLeast(Rv),
    /// Some object has a resourceVersion that does not compare: no node counts as programmed.
    Unknown,
}

impl Need {
    /// The need for objects with these resourceVersions.
    pub fn of<'a>(rvs: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut need = Need::Nothing;
        for rv in rvs {
            let Some(rv) = rv.and_then(Rv::parse) else {
                return Need::Unknown;
            };
            need = match need {
                Need::AtLeast(cur) if cur >= rv => Need::AtLeast(cur),
                _ => Need::AtLeast(rv),
            };
        }
        need
    }

    fn met_by(&self, applied: Option<&Rv>) -> bool {
        match self {
            Need::Nothing => true,
            Need::AtLeast(rv) => applied.is_some_and(|a| a >= rv),
            Need::Unknown => false,
        }
    }
}

/// Ready agents split into those that programmed the route and those that have not yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Nodes that programmed it, sorted.
    pub programmed: Vec<String>,
    /// Ready nodes that have not yet, sorted.
    pub pending: Vec<String>,
}

impl Programmed {
    /// Ready agents.
    pub fn total(&self) -> usize {
        self.programmed.len() + self.pending.len()
    }

    /// Programmed on every ready agent, and there is at least one.
    pub fn everywhere(&self) -> bool {
        self.pending.is_empty() && !self.programmed.is_empty()
    }
}

/// Which ready agents have applied `slices` and `vips`.
pub fn programmed_nodes(
    reports: &[AgentReport],
    now: Timestamp,
    slices: &Need,
    vips: &Need,
) -> Programmed {
    let mut out = Programmed::default();
    for r in reports.iter().filter(|r| r.is_ready(now)) {
        if slices.met_by(r.applied_slices.as_ref()) && vips.met_by(r.applied_vips.as_ref()) {
            out.programmed.push(r.node.clone());
        } else {
            out.pending.push(r.node.clone());
        }
    }
    out.programmed.sort();
    out.programmed.dedup();
    out.pending.sort();
    out.pending.dedup();
    out
}

/// How long until the first ready report goes stale (then the counts change without any
/// watch event).
pub fn next_expiry(reports: &[AgentReport], now: Timestamp) -> Option<Duration> {
    reports
        .iter()
        .filter(|r| r.is_ready(now))
        .filter_map(|r| r.expires())
        .min()
        .and_then(|e| Duration::try_from(e.duration_since(now)).ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lease(node: &str, renewed: &str, slices: Option<&str>, vips: Option<&str>) -> Lease {
        let mut annotations = serde_json::Map::new();
        if let Some(s) = slices {
            annotations.insert(APPLIED_SLICES_ANNOTATION.into(), json!(s));
        }
        if let Some(v) = vips {
            annotations.insert(APPLIED_VIPS_ANNOTATION.into(), json!(v));
        }
        serde_json::from_value(
            json!({"metadata": {"name": format!("switchyard-agent-{node}"),
            "namespace": "switchyard-system", "annotations": annotations},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": renewed}}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn now() -> Timestamp {
        "2026-11-25T12:00:30Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn reports(leases: &[Lease]) -> Vec<AgentReport> {
        leases.iter().filter_map(AgentReport::from_lease).collect()
    }

    const FRESH: &str = "2026-11-25T12:00:20.000000Z";
    const STALE: &str = "2026-11-25T11:59:40.000000Z";

    #[test]
    fn a_node_counts_once_it_applied_the_newest_slice_and_claim() {
        let r = reports(&[
            lease("n1", FRESH, Some("1000"), Some("50")),
            lease("n2", FRESH, Some("999"), Some("50")),
            lease("n3", FRESH, Some("1000"), Some("49")),
        ]);
        let slices = Need::of([Some("998"), Some("1000")]);
        let vips = Need::of([Some("50")]);
        let p = programmed_nodes(&r, now(), &slices, &vips);
        assert_eq!(p.programmed, vec!["n1"]);
        assert_eq!(p.pending, vec!["n2", "n3"]);
        assert!(!p.everywhere());
        // Numeric, not textual: 10000 > 9999.
        let r = reports(&[lease("n1", FRESH, Some("10000"), Some("9"))]);
        let p = programmed_nodes(&r, now(), &Need::of([Some("9999")]), &Need::of([Some("9")]));
        assert!(p.everywhere());
    }

    #[test]
    fn invalid_resource_versions_are_not_programmed() {
        // An invalid report.
        let r = reports(&[
            lease("n1", FRESH, Some("0123"), Some("5")),
            lease("n2", FRESH, Some("abc"), Some("5")),
            lease("n3", FRESH, None, Some("5")),
        ]);
        let p = programmed_nodes(&r, now(), &Need::of([Some("1")]), &Need::Nothing);
        assert!(p.programmed.is_empty());
        assert_eq!(p.total(), 3);
        // An invalid object version: nobody counts.
        let r = reports(&[lease("n1", FRESH, Some("100"), Some("100"))]);
        assert_eq!(Need::of([Some("5"), Some("x1")]), Need::Unknown);
        assert_eq!(Need::of([Some("5"), None]), Need::Unknown);
        let p = programmed_nodes(&r, now(), &Need::of([Some("5"), Some("")]), &Need::Nothing);
        assert_eq!(p.pending, vec!["n1"]);
        // Nothing needed (a headless route without backends): every ready agent counts.
        let p = programmed_nodes(
            &reports(&[lease("n1", FRESH, None, None)]),
            now(),
            &Need::Nothing,
            &Need::Nothing,
        );
        assert!(p.everywhere());
    }

    #[test]
    fn stale_leases_are_left_out_and_none_ready_is_not_programmed() {
        let r = reports(&[
            lease("n1", FRESH, Some("10"), Some("10")),
            lease("n2", STALE, Some("1"), Some("1")),
        ]);
        let p = programmed_nodes(&r, now(), &Need::of([Some("10")]), &Need::Nothing);
        assert_eq!(p.programmed, vec!["n1"]);
        assert_eq!(p.total(), 1);
        assert!(p.everywhere());
        assert_eq!(next_expiry(&r, now()), Some(Duration::from_secs(30)));
        let stale = reports(&[lease("n2", STALE, Some("10"), Some("10"))]);
        let p = programmed_nodes(&stale, now(), &Need::Nothing, &Need::Nothing);
        assert_eq!(p.total(), 0);
        assert!(!p.everywhere());
        assert_eq!(next_expiry(&stale, now()), None);
    }
}
