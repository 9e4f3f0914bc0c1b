//! What the agent tells the operator: on a Lease of its own
//! (`switchyard-system/switchyard-agent-<node>`), renewed every 10 s, the highest
//! EndpointSlice and VirtualIP resourceVersions among the watch events it has fully programmed.
//! The operator compares them with each route's objects to count the nodes that programmed it.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use switchyard_api::dataplane::{
    AGENT_LEASE_DURATION_SECONDS, AGENT_LEASE_LABEL, AGENT_LEASE_LABEL_VALUE,
    AGENT_LEASE_NAMESPACE, APPLIED_SLICES_ANNOTATION, APPLIED_VIPS_ANNOTATION, Rv,
    agent_lease_name,
};
use tokio::sync::watch;
use tracing::warn;

/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "switchyard-agent";
/// How often the Lease is renewed.
pub const RENEW: Duration = Duration::from_secs(10);
/// Least time between two writes (at most five per second).
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// The highest resourceVersion among the watch events of one type received so far.
#[derive(Debug, Default)]
pub struct Seen(Mutex<Option<Rv>>);

impl Seen {
    /// Records an event's object version (invalid ones are ignored).
    pub fn observe(&self, rv: Option<&str>) {
        let Some(rv) = rv.and_then(Rv::parse) else {
            return;
        };
        if let Ok(mut cur) = self.0.lock()
            && cur.as_ref().is_none_or(|c| *c < rv)
        {
            *cur = Some(rv);
        }
    }

    /// The highest so far.
    pub fn get(&self) -> Option<Rv> {
        self.0.lock().ok().and_then(|c| c.clone())
    }
}

/// What one programming pass covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Highest EndpointSlice event version programmed.
    pub slices: Option<Rv>,
    /// Highest VirtualIP event version programmed.
    pub vips: Option<Rv>,
}

/// The Lease, for server-side apply: holder, duration, renewal and the report.
pub fn lease_body(node: &str, renewed: Timestamp, report: &Report) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    if let Some(rv) = &report.slices {
        annotations.insert(APPLIED_SLICES_ANNOTATION.into(), json!(rv.as_str()));
    }
    if let Some(rv) = &report.vips {
        annotations.insert(APPLIED_VIPS_ANNOTATION.into(), json!(rv.as_str()));
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": agent_lease_name(node),
            "namespace": AGENT_LEASE_NAMESPACE,
            "labels": {AGENT_LEASE_LABEL: AGENT_LEASE_LABEL_VALUE},
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": AGENT_LEASE_DURATION_SECONDS,
            "renewTime": MicroTime(renewed),
        },
    })
}

async fn write(api: &Api<Lease>, node: &str, report: &Report) -> Result<(), kube::Error> {
    let body = lease_body(node, Timestamp::now(), report);
    api.patch(
        &agent_lease_name(node),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

/// Keeps the Lease: nothing until the first full pass reports, then a write on every new
/// report (at most one per [`MIN_INTERVAL`]) and a renewal every [`RENEW`].
pub async fn keep(client: Client, node: String, mut rx: watch::Receiver<Option<Report>>) {
    let api: Api<Lease> = Api::namespaced(client, AGENT_LEASE_NAMESPACE);
    loop {
        if rx.borrow_and_update().is_some() {
            break;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
    loop {
        let report = rx.borrow_and_update().clone().unwrap_or_default();
        let wait = match write(&api, &node, &report).await {
            Ok(()) => RENEW,
            Err(e) => {
                warn!(error = %e, "cannot update the agent Lease; retrying");
                Duration::from_secs(1)
            }
        };
        let written = tokio::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep_until(written + MIN_INTERVAL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_names_the_node_and_the_highest_versions_programmed() {
        let seen = Seen::default();
        for rv in [Some("98"), Some("102"), None, Some("bogus"), Some("99")] {
            seen.observe(rv);
        }
        let report = Report {
            slices: seen.get(),
            vips: Rv::parse("7"),
        };
        let at: Timestamp = "2026-11-25T12:00:00.123456Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let body = lease_body("node-1", at, &report);
        assert_eq!(body["metadata"]["name"], "switchyard-agent-node-1");
        assert_eq!(body["metadata"]["namespace"], "switchyard-system");
        assert_eq!(
            body["metadata"]["labels"]["switchyard.dev/component"],
            "agent"
        );
        assert_eq!(
            body["metadata"]["annotations"]["switchyard.dev/applied-endpointslices"],
            "102"
        );
        assert_eq!(
            body["metadata"]["annotations"]["switchyard.dev/applied-virtualips"],
            "7"
        );
        assert_eq!(body["spec"]["holderIdentity"], "node-1");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(body["spec"]["renewTime"], "2026-11-25T12:00:00.123456Z");
        // It parses as a Lease.
        let lease: Lease = serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
        assert!(lease.spec.is_some_and(|s| s.renew_time.is_some()));
        // Nothing seen yet: no annotation rather than a made-up version.
        let empty = lease_body("node-1", at, &Report::default());
        assert!(
            empty["metadata"]["annotations"]
                .as_object()
                .is_some_and(|a| a.is_empty())
        );
    }
}
