//! The webhook's Prometheus metrics, under the `switchyard_webhook_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `PodNetwork`, `ServiceRoute` or `other`.
    pub kind: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// `PodNetwork`, `ServiceRoute` or `other`.
    pub kind: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// `true` or `false`.
    pub allowed: String,
}

/// Labels of the denial counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The rule family (`overlap`, `invalid`, `virtual_ip_taken`, ...), or `unavailable`
    /// (caches not synced) and `bad_request`.
    pub reason: String,
}

/// Labels of certificate events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: String,
}

/// Every metric the webhook exports.
pub struct Metrics {
    /// AdmissionReviews answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from the whole body read to the answer encoded.
    pub latency: Family<LatencyLabels, Histogram>,
    /// Denials, once per distinct rule family of each denial.
    pub denials: Family<ReasonLabels, Counter>,
    /// Bodies that were not an AdmissionReview at all (HTTP 400).
    pub malformed: Counter,
    /// Expiry of the serving certificate, seconds since the epoch (self-managed mode).
    pub certificate_expiry: Gauge,
    /// Certificate loads after the first: rotations and file reloads.
    pub certificate_reloads: Family<OutcomeLabels, Counter>,
    /// caBundle writes to the ValidatingWebhookConfiguration (self-managed mode).
    pub ca_bundle_applies: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            // From 100 µs: a review takes tens of microseconds, the budget is a few ms.
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
                ])
            }),
            denials: Family::default(),
            malformed: Counter::default(),
            certificate_expiry: Gauge::default(),
            certificate_reloads: Family::default(),
            ca_bundle_applies: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("switchyard_webhook");
        r.register("requests", "AdmissionReviews answered", m.requests.clone());
        r.register(
            "admission_duration_seconds",
            "Time to judge one AdmissionReview, from the body read to the answer encoded",
            m.latency.clone(),
        );
        r.register(
            "denials",
            "Denied admissions, once per distinct rule family of each denial",
            m.denials.clone(),
        );
        r.register(
            "malformed_requests",
            "Request bodies that were not an AdmissionReview (answered with HTTP 400)",
            m.malformed.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry of the self-managed serving certificate, seconds since the epoch",
            m.certificate_expiry.clone(),
        );
        r.register(
            "certificate_reloads",
            "Serving certificate rotations and reloads from files",
            m.certificate_reloads.clone(),
        );
        r.register(
            "ca_bundle_applies",
            "caBundle writes to the ValidatingWebhookConfiguration",
            m.ca_bundle_applies.clone(),
        );
        m
    }

    /// Counts one certificate event.
    pub fn reload(&self, ok: bool) {
        self.certificate_reloads
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }
}
