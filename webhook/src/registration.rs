//! How the API server finds the webhook: the ValidatingWebhookConfiguration, rendered here for
//! the lab and the Helm chart alike, and (self-managed mode only) kept trusting the
//! webhook's CA by server-side apply of `webhooks[].clientConfig.caBundle`, the only write
//! this process ever makes.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::http::PATH;
use crate::metrics::{Metrics, OutcomeLabels};

/// Default name of the ValidatingWebhookConfiguration.
pub const DEFAULT_CONFIG_NAME: &str = "switchyard-webhook";
/// The field manager of the caBundle writes.
pub const FIELD_MANAGER: &str = "switchyard-webhook";
/// The webhook entries: (name, resource, scope). One per resource, so that the API server's
/// "admission webhook ... denied the request" names what was judged.
pub const WEBHOOKS: [(&str, &str, &str); 2] = [
    (
        "podnetworks.webhook.switchyard.dev",
        "podnetworks",
        "Cluster",
    ),
    (
        "serviceroutes.webhook.switchyard.dev",
        "serviceroutes",
        "Namespaced",
    ),
];

/// Where the API server sends reviews.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Service in the cluster (the normal case), port and path `/validate`.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port.
        port: i32,
    },
    /// A URL, `https://host:port/validate` (the lab, which has no Service routing).
    Url(String),
}

/// What happens when the webhook cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the write (the default: an unchecked overlap is worse than a retry).
    Fail,
    /// Admit unchecked.
    Ignore,
}

impl FailurePolicy {
    /// As the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// Everything the configuration is rendered from.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Object name.
    pub name: String,
    /// Where reviews go.
    pub endpoint: Endpoint,
    /// The webhook's own namespace, whose objects are never sent (so that a broken webhook
    /// cannot lock up its own namespace).
    pub namespace: String,
    /// The API server's timeout per call, 1..30 s.
    pub timeout_seconds: i32,
    /// What happens when the call fails.
    pub failure_policy: FailurePolicy,
    /// PEM CA bundle trusted for the webhook's certificate; `None` leaves it to whoever
    /// manages it (the self-managed webhook, or cert-manager's CA injector).
    pub ca_bundle: Option<Vec<u8>>,
}

impl Registration {
    /// A registration with the defaults: timeout 5 s, failure policy Fail, namespace
    /// `switchyard-system`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            name: DEFAULT_CONFIG_NAME.into(),
            endpoint,
            namespace: "switchyard-system".into(),
            timeout_seconds: 5,
            failure_policy: FailurePolicy::Fail,
            ca_bundle: None,
        }
    }
}

/// Renders the ValidatingWebhookConfiguration: one entry per resource, CREATE and UPDATE of
/// `switchyard.dev/v1alpha1` (and equivalent versions), no side effects, AdmissionReview v1.
pub fn render(r: &Registration) -> Result<ValidatingWebhookConfiguration> {
    if !(1..=30).contains(&r.timeout_seconds) {
        return Err(Error::Object {
            what: "--timeout-seconds".into(),
            message: format!(
                "{} is outside 1..30 (the API server's limits)",
                r.timeout_seconds
            ),
        });
    }
    let client_config = match &r.endpoint {
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(PATH.into()),
                port: Some(*port),
            }),
            url: None,
            ca_bundle: r.ca_bundle.clone().map(ByteString),
        },
        Endpoint::Url(url) => {
            if !url.starts_with("https://") {
                return Err(Error::Object {
                    what: format!("--url {url:?}"),
                    message: "the API server calls webhooks over HTTPS only".into(),
                });
            }
            WebhookClientConfig {
                service: None,
                url: Some(url.clone()),
                ca_bundle: r.ca_bundle.clone().map(ByteString),
            }
        }
    };
    let webhooks = WEBHOOKS
        .iter()
        .map(|(name, resource, scope)| ValidatingWebhook {
            name: (*name).into(),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config.clone(),
            failure_policy: Some(r.failure_policy.as_str().into()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "NotIn".into(),
                    values: Some(vec![r.namespace.clone()]),
                }]),
                match_labels: None,
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![switchyard_api::GROUP.into()]),
                api_versions: Some(vec![switchyard_api::VERSION.into()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                resources: Some(vec![(*resource).into()]),
                scope: Some((*scope).into()),
            }]),
            side_effects: "None".into(),
            timeout_seconds: Some(r.timeout_seconds),
            match_conditions: None,
            object_selector: None,
        })
        .collect();
    Ok(ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(r.name.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "switchyard-webhook".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        webhooks: Some(webhooks),
    })
}

/// The server-side apply body that sets `caBundle` of each named entry and nothing else.
pub fn ca_bundle_patch(config: &str, webhooks: &[String], bundle: &[u8]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = webhooks
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "clientConfig": {"caBundle": ByteString(bundle.to_vec())},
            })
        })
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": config},
        "webhooks": entries,
    })
}

/// The names of the entries whose `caBundle` differs from `bundle`.
pub fn stale_entries(config: &ValidatingWebhookConfiguration, bundle: &[u8]) -> Vec<String> {
    config
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|w| w.name.clone())
        .collect()
}

/// Keeps `caBundle` of every entry of configuration `name` equal to the latest `desired`
/// bundle: on start, whenever the configuration appears or changes (a Helm upgrade, someone
/// else's apply), and whenever the bundle rotates. A missing configuration is waited for,
/// never created: its rules and endpoint are the installer's. Reports each bundle written on
/// `applied`.
pub async fn keep_ca_bundle(
    client: Client,
    name: String,
    mut desired: watch::Receiver<String>,
    applied: watch::Sender<String>,
    metrics: std::sync::Arc<Metrics>,
) {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut current: Option<ValidatingWebhookConfiguration> = None;
    let mut relisted: Option<ValidatingWebhookConfiguration> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut said_missing = false;
    loop {
        let due = retry_at;
        let retry = async move {
            match due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Apply(o))) => current = Some(o),
                Some(Ok(Event::Delete(_))) => current = None,
                Some(Ok(Event::Init)) => relisted = None,
                Some(Ok(Event::InitApply(o))) => relisted = Some(o),
                Some(Ok(Event::InitDone)) => current = relisted.take(),
                Some(Err(e)) => warn!(error = %e, config = %name, "watch of the ValidatingWebhookConfiguration failed; retrying"),
                None => return,
            },
            changed = desired.changed() => if changed.is_err() { return },
            () = retry => retry_at = None,
        }
        let want = desired.borrow().clone();
        let Some(cfg) = current.as_ref() else {
            if !said_missing {
                info!(config = %name, "ValidatingWebhookConfiguration not found; waiting for it to be created to write its caBundle");
                said_missing = true;
            }
            continue;
        };
        said_missing = false;
        let stale = stale_entries(cfg, want.as_bytes());
        if stale.is_empty() {
            applied.send_if_modified(|a| {
                let changed = *a != want;
                if changed {
                    a.clone_from(&want);
                }
                changed
            });
            continue;
        }
        if retry_at.is_some() {
            continue;
        }
        let entries: Vec<String> = cfg
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.name.clone())
            .collect();
        let patch = ca_bundle_patch(&name, &entries, want.as_bytes());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(&patch)).await {
            Ok(o) => {
                info!(config = %name, entries = ?stale, resource_version = ?o.resource_version(), "wrote caBundle");
                metrics
                    .ca_bundle_applies
                    .get_or_create(&OutcomeLabels {
                        outcome: "ok".into(),
                    })
                    .inc();
                current = Some(o);
                applied.send_replace(want);
            }
            Err(e) => {
                let e = Error::kube(
                    format!(
                        "server-side apply of caBundle to ValidatingWebhookConfiguration {name}"
                    ),
                    e,
                );
                warn!(error = %e, "retrying in 2 s");
                metrics
                    .ca_bundle_applies
                    .get_or_create(&OutcomeLabels {
                        outcome: "error".into(),
                    })
                    .inc();
                retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_entries_with_the_contract_settings() {
        let mut r = Registration::new(Endpoint::Service {
            namespace: "switchyard-system".into(),
            name: "switchyard-webhook".into(),
            port: 443,
        });
        r.ca_bundle = Some(b"PEM".to_vec());
        let cfg = render(&r).unwrap();
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(v["metadata"]["name"], "switchyard-webhook");
        let hooks = v["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        for (h, (name, resource, _)) in hooks.iter().zip(WEBHOOKS) {
            assert_eq!(h["name"], name);
            assert_eq!(h["sideEffects"], "None");
            assert_eq!(h["admissionReviewVersions"], json!(["v1"]));
            assert_eq!(h["timeoutSeconds"], 5);
            assert_eq!(h["failurePolicy"], "Fail");
            assert_eq!(h["matchPolicy"], "Equivalent");
            assert_eq!(
                h["namespaceSelector"]["matchExpressions"][0],
                json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["switchyard-system"]})
            );
            assert_eq!(h["rules"][0]["apiGroups"], json!(["switchyard.dev"]));
            assert_eq!(h["rules"][0]["resources"], json!([resource]));
            assert_eq!(h["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
            assert_eq!(
                h["clientConfig"]["service"],
                json!({"namespace": "switchyard-system", "name": "switchyard-webhook", "path": "/validate", "port": 443})
            );
            assert_eq!(h["clientConfig"]["caBundle"], "UEVN");
        }
    }

    #[test]
    fn renders_a_url_endpoint_and_refuses_bad_settings() {
        let mut r = Registration::new(Endpoint::Url("https://198.18.3.1:9443/validate".into()));
        r.failure_policy = FailurePolicy::Ignore;
        r.timeout_seconds = 10;
        let v = serde_json::to_value(render(&r).unwrap()).unwrap();
        assert_eq!(
            v["webhooks"][0]["clientConfig"],
            json!({"url": "https://198.18.3.1:9443/validate"})
        );
        assert_eq!(v["webhooks"][1]["failurePolicy"], "Ignore");
        assert_eq!(v["webhooks"][1]["timeoutSeconds"], 10);
        r.timeout_seconds = 31;
        assert!(
            render(&r)
                .unwrap_err()
                .to_string()
                .contains("--timeout-seconds")
        );
        r.timeout_seconds = 5;
        r.endpoint = Endpoint::Url("http://x/validate".into());
        assert!(render(&r).unwrap_err().to_string().contains("HTTPS"));
    }

    #[test]
    fn the_patch_sets_only_ca_bundles_by_entry_name() {
        let p = ca_bundle_patch("cfg", &["a.x.dev".into(), "b.x.dev".into()], b"PEM");
        assert_eq!(
            p,
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "cfg"},
                "webhooks": [
                    {"name": "a.x.dev", "clientConfig": {"caBundle": "UEVN"}},
                    {"name": "b.x.dev", "clientConfig": {"caBundle": "UEVN"}},
                ],
            })
        );
    }

    #[test]
    fn finds_entries_with_a_stale_bundle() {
        let mut r = Registration::new(Endpoint::Url("https://h/validate".into()));
        let cfg = render(&r).unwrap();
        assert_eq!(stale_entries(&cfg, b"PEM").len(), 2);
        r.ca_bundle = Some(b"PEM".to_vec());
        let mut cfg = render(&r).unwrap();
        assert!(stale_entries(&cfg, b"PEM").is_empty());
        if let Some(w) = cfg.webhooks.as_mut().and_then(|w| w.get_mut(1)) {
            w.client_config.ca_bundle = Some(ByteString(b"OLD".to_vec()));
        }
        assert_eq!(
            stale_entries(&cfg, b"PEM"),
            vec!["serviceroutes.webhook.switchyard.dev".to_string()]
        );
    }
}
