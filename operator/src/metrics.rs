//! The operator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

/// Labels of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `podnetwork` or `serviceroute`.
    pub controller: String,
}

/// Labels of reconcile failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: String,
    /// `Error::metric_label()`.
    pub error: String,
}

/// Labels of per-network metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabels {
    /// PodNetwork name.
    pub network: String,
}

/// Every metric the operator exports, under the `switchyard_operator_` prefix.
pub struct Metrics {
    /// Reconciliations run.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciliations that failed.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub duration: Family<ControllerLabels, Histogram>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Nodes holding a block, per network.
    pub allocated_blocks: Family<NetworkLabels, Gauge>,
    /// Blocks still free, per network.
    pub free_blocks: Family<NetworkLabels, Gauge>,
    /// Routes woken because an agent's report crossed what they wait for.
    pub report_wakeups: Counter,
    /// Agent reports processed.
    pub reports: Counter,
    /// Routes waiting for an agent report.
    pub report_waiters: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            }),
            leader: Gauge::default(),
            allocated_blocks: Family::default(),
            free_blocks: Family::default(),
            report_wakeups: Counter::default(),
            reports: Counter::default(),
            report_waiters: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("switchyard_operator");
        r.register("reconciles", "Reconciliations run", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciliations that failed",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        r.register(
            "allocated_blocks",
            "Nodes holding a block of the network",
            m.allocated_blocks.clone(),
        );
        r.register(
            "free_blocks",
            "Blocks of the network still free",
            m.free_blocks.clone(),
        );
        r.register(
            "agent_reports",
            "Agent reports (Lease changes) processed",
            m.reports.clone(),
        );
        r.register(
            "report_wakeups",
            "Routes woken because an agent's report crossed what they wait for",
            m.report_wakeups.clone(),
        );
        r.register(
            "report_waiters",
            "Routes waiting for an agent report",
            m.report_waiters.clone(),
        );
        m
    }
}
