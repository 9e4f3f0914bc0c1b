//! The sans-IO core: one admission request in, one verdict out. No clock, no socket, no
//! API call; everything it reads is the request and the [`Index`].
//!
//! Order of judgement: operations other than CREATE and UPDATE are allowed (nothing of ours
//! guards deletion); a request for anything but `switchyard.dev/v1alpha1` PodNetwork or
//! ServiceRoute is refused as a bad request; an index that has not synced refuses with a
//! retryable 503; then the object is decoded (a spec that does not decode names the field),
//! checked by its per-object rules (`switchyard-api`), by the cross-object rules
//! ([`crate::rules`]) and, on UPDATE, by the update rules.
//!
//! Ratcheting on UPDATE: a violation the stored object already had, word for word, does not
//! refuse the update; it comes back as a warning. Without it, an object that became invalid
//! by no change of its own (two networks created at the same instant, a rule added later)
//! could not even have a label or finalizer changed, let alone be fixed one field at a time.
//! The update rules themselves (immutability, widening only) are never ratcheted.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::response::{StatusCause, StatusDetails, StatusSummary};
use switchyard_api::validate::decode;
use switchyard_api::{GROUP, PodNetwork, ServiceRoute, VERSION};

use crate::index::Index;
use crate::rules::{self, Family, Finding, Undecided};

/// The message of a refusal while the index has not synced.
pub const NOT_SYNCED: &str = "the webhook's caches are not synced yet; retry";

/// The kinds this webhook judges (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `PodNetwork`.
    PodNetwork,
    /// `ServiceRoute`.
    ServiceRoute,
    /// Anything else (refused).
    Other,
}

impl Kind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::PodNetwork => "PodNetwork",
            Kind::ServiceRoute => "ServiceRoute",
            Kind::Other => "other",
        }
    }
}

/// What the webhook answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Admit, with warnings for the client (ratcheted violations).
    Allowed {
        /// Shown by kubectl as `Warning: ...`.
        warnings: Vec<String>,
    },
    /// Refuse: the object breaks rules (HTTP status 422, reason Invalid).
    Denied {
        /// Every broken rule, in the order found.
        findings: Vec<Finding>,
    },
    /// Refuse for now: the answer cannot be known yet (HTTP status 503, retry after 1 s).
    Unavailable {
        /// Why, ending in "retry".
        message: String,
    },
    /// Refuse: the request itself is wrong (HTTP status 400).
    BadRequest {
        /// What is wrong.
        message: String,
    },
}

/// The verdict on one request, with what the metrics and logs need to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The object's kind.
    pub kind: Kind,
    /// `name` or `namespace/name`.
    pub object: String,
    /// The answer.
    pub outcome: Outcome,
}

impl Verdict {
    /// Whether the request is admitted.
    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed { .. })
    }

    /// Distinct rule families of a denial (`unavailable` or `bad_request` for the others); empty
    /// when allowed.
    pub fn reasons(&self) -> Vec<&'static str> {
        match &self.outcome {
            Outcome::Allowed { .. } => vec![],
            Outcome::Denied { findings } => {
                let mut fams: Vec<Family> = findings.iter().map(|f| f.family).collect();
                fams.sort();
                fams.dedup();
                fams.into_iter().map(Family::label).collect()
            }
            Outcome::Unavailable { .. } => vec!["unavailable"],
            Outcome::BadRequest { .. } => vec!["bad_request"],
        }
    }

    /// The one-line denial message: `<Kind> "<name>" is invalid: <field>: <message>; ...`.
    pub fn message(&self) -> String {
        match &self.outcome {
            Outcome::Allowed { .. } => String::new(),
            Outcome::Denied { findings } => {
                let list: Vec<String> = findings.iter().map(|f| f.violation.to_string()).collect();
                format!(
                    "{} {:?} is invalid: {}",
                    self.kind.label(),
                    self.object,
                    list.join("; ")
                )
            }
            Outcome::Unavailable { message } | Outcome::BadRequest { message } => message.clone(),
        }
    }
}

/// The operation as the API writes it (a metric label).
pub fn operation_label(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

fn object_name(req: &AdmissionRequest<DynamicObject>, kind: Kind) -> String {
    let obj = req.object.as_ref().or(req.old_object.as_ref());
    let name = obj
        .and_then(|o| o.metadata.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| req.name.clone());
    match (kind, req.namespace.as_deref()) {
        (Kind::ServiceRoute, Some(ns)) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name,
    }
}

fn bad(kind: Kind, object: String, message: String) -> Verdict {
    Verdict {
        kind,
        object,
        outcome: Outcome::BadRequest { message },
    }
}

/// Judges one request. Never panics, whatever the request holds.
pub fn decide(index: &Index, req: &AdmissionRequest<DynamicObject>) -> Verdict {
    let gvk = &req.kind;
    let kind = match (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()) {
        (GROUP, VERSION, "PodNetwork") => Kind::PodNetwork,
        (GROUP, VERSION, "ServiceRoute") => Kind::ServiceRoute,
        _ => Kind::Other,
    };
    let object = object_name(req, kind);
    let update = match req.operation {
        Operation::Create => false,
        Operation::Update => true,
        // Deleting or connecting breaks no rule of ours.
        Operation::Delete | Operation::Connect => {
            return Verdict {
                kind,
                object,
                outcome: Outcome::Allowed { warnings: vec![] },
            };
        }
    };
    if kind == Kind::Other {
        let shown = if gvk.group.is_empty() {
            format!("{}/{}", gvk.version, gvk.kind)
        } else {
            format!("{}/{}, Kind={}", gvk.group, gvk.version, gvk.kind)
        };
        return bad(
            kind,
            object,
            format!(
                "this webhook judges {GROUP}/{VERSION} PodNetwork and ServiceRoute only, not {shown}; check the rules of its ValidatingWebhookConfiguration"
            ),
        );
    }
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        // Status is the operator's to write; no rule of the contract judges a subresource.
        return Verdict {
            kind,
            object,
            outcome: Outcome::Allowed { warnings: vec![] },
        };
    }
    if !index.is_synced() {
        return Verdict {
            kind,
            object,
            outcome: Outcome::Unavailable {
                message: NOT_SYNCED.into(),
            },
        };
    }
    let op = operation_label(&req.operation);
    let Some(new) = req.object.as_ref() else {
        return bad(kind, object, format!("the {op} request carries no object"));
    };
    let old = if update {
        match req.old_object.as_ref() {
            Some(o) => Some(o),
            None => {
                return bad(
                    kind,
                    object,
                    "the UPDATE request carries no oldObject".into(),
                );
            }
        }
    } else {
        None
    };
    let namespace = req.namespace.clone();
    let outcome = if kind == Kind::PodNetwork {
        judge_pod_network(index, new, old)
    } else {
        judge_service_route(index, new, old, namespace)
    };
    Verdict {
        kind,
        object,
        outcome,
    }
}

/// Decodes an object of the request into `K`; a decode failure is a finding naming the field.
fn decode_object<K: serde::de::DeserializeOwned>(
    obj: &DynamicObject,
    namespace: Option<&str>,
) -> Result<K, Finding> {
    let mut value = serde_json::to_value(obj).map_err(|e| {
        Finding::new(
            Family::Decode,
            "",
            format!("the object cannot be re-encoded: {e}"),
        )
    })?;
    // The API server sends namespaced objects with their namespace set; fill it from the
    // request should a client-built review leave it out.
    if let (Some(ns), Some(meta)) = (namespace, value.get_mut("metadata"))
        && meta.get("namespace").is_none()
        && let Some(m) = meta.as_object_mut()
    {
        m.insert("namespace".into(), serde_json::Value::String(ns.into()));
    }
    decode::<K>(value).map_err(|violation| Finding {
        family: Family::Decode,
        violation,
    })
}

/// Splits `new` into the findings that refuse and those the stored object already had
/// (returned as warnings).
fn ratchet(new: Vec<Finding>, old: &[Finding]) -> (Vec<Finding>, Vec<String>) {
    let mut refuse = Vec::new();
    let mut warnings = Vec::new();
    for f in new {
        if old.iter().any(|o| o.violation == f.violation) {
            warnings.push(format!(
                "{} (already true of the stored object, so it does not block this update)",
                f.violation
            ));
        } else {
            refuse.push(f);
        }
    }
    (refuse, warnings)
}

fn conclude(refuse: Vec<Finding>, warnings: Vec<String>) -> Outcome {
    if refuse.is_empty() {
        Outcome::Allowed { warnings }
    } else {
        Outcome::Denied { findings: refuse }
    }
}

fn pod_network_findings(index: &Index, pn: &PodNetwork) -> Vec<Finding> {
    let mut out = rules::findings(Family::Invalid, pn.validate());
    out.extend(rules::pod_network_conflicts(index, pn));
    out
}

fn judge_pod_network(index: &Index, new: &DynamicObject, old: Option<&DynamicObject>) -> Outcome {
    let pn: PodNetwork = match decode_object(new, None) {
        Ok(pn) => pn,
        Err(f) => return Outcome::Denied { findings: vec![f] },
    };
    let found = pod_network_findings(index, &pn);
    let Some(old) = old else {
        return conclude(found, vec![]);
    };
    match decode_object::<PodNetwork>(old, None) {
        Ok(old) => {
            let (mut refuse, warnings) = ratchet(found, &pod_network_findings(index, &old));
            refuse.extend(rules::pod_network_update(index, &pn, &old));
            conclude(refuse, warnings)
        }
        // A stored object that no longer decodes cannot be compared; judge the new one alone
        // so that the update that repairs it goes through.
        Err(f) => conclude(
            found,
            vec![format!(
                "the stored object does not decode ({}); update rules were not checked",
                f.violation
            )],
        ),
    }
}

/// The route's findings. When the cross-object half cannot be decided yet, the per-object
/// ones alone are final if there are any (the route is refused whatever the rest says);
/// only a route clean so far waits for the caches.
fn service_route_findings(index: &Index, sr: &ServiceRoute) -> Result<Vec<Finding>, Undecided> {
    let mut out = rules::findings(Family::Invalid, sr.validate(index.cluster_domain()));
    match rules::service_route_conflicts(index, sr) {
        Ok(more) => out.extend(more),
        Err(u) if out.is_empty() => return Err(u),
        Err(_) => {}
    }
    Ok(out)
}

fn undecided(u: Undecided) -> Outcome {
    match u {
        Undecided::NamespaceUnknown(ns) => Outcome::Unavailable {
            message: format!(
                "namespace {ns:?} is not in the webhook's caches yet, so the network of the route (and the pool of its virtual IPs) is unknown; retry"
            ),
        },
    }
}

fn judge_service_route(
    index: &Index,
    new: &DynamicObject,
    old: Option<&DynamicObject>,
    namespace: Option<String>,
) -> Outcome {
    let ns = namespace.as_deref();
    let sr: ServiceRoute = match decode_object(new, ns) {
        Ok(sr) => sr,
        Err(f) => return Outcome::Denied { findings: vec![f] },
    };
    let found = match service_route_findings(index, &sr) {
        Ok(f) => f,
        Err(u) => return undecided(u),
    };
    let Some(old) = old else {
        return conclude(found, vec![]);
    };
    match decode_object::<ServiceRoute>(old, ns) {
        Ok(old) => match service_route_findings(index, &old) {
            Ok(old_found) => {
                let (refuse, warnings) = ratchet(found, &old_found);
                conclude(refuse, warnings)
            }
            Err(u) => undecided(u),
        },
        Err(f) => conclude(
            found,
            vec![format!(
                "the stored object does not decode ({})",
                f.violation
            )],
        ),
    }
}

/// The AdmissionResponse for a verdict: uid and types copied from the request; denials carry
/// the HTTP status the API server passes on to the client (422 Invalid with one cause per
/// violation, 503 with a retry hint, 400), and a message listing every violation.
pub fn respond(req: &AdmissionRequest<DynamicObject>, verdict: &Verdict) -> AdmissionResponse {
    let mut resp = AdmissionResponse::from(req);
    if resp.types.api_version.is_empty() {
        resp.types.api_version = kube::core::admission::META_API_VERSION_V1.into();
        resp.types.kind = kube::core::admission::META_KIND.into();
    }
    let name = req
        .object
        .as_ref()
        .and_then(|o| o.metadata.name.clone())
        .unwrap_or_else(|| req.name.clone());
    match &verdict.outcome {
        Outcome::Allowed { warnings } => {
            if !warnings.is_empty() {
                resp.warnings = Some(warnings.clone());
            }
            resp
        }
        Outcome::Denied { findings } => {
            let mut resp = resp.deny(verdict.message());
            resp.result.status = Some(StatusSummary::Failure);
            resp.result.code = 422;
            resp.result.reason = "Invalid".into();
            resp.result.details = Some(StatusDetails {
                name,
                group: GROUP.into(),
                kind: verdict.kind.label().into(),
                uid: String::new(),
                causes: findings
                    .iter()
                    .map(|f| StatusCause {
                        reason: "FieldValueInvalid".into(),
                        message: f.violation.message.clone(),
                        field: f.violation.field.clone(),
                    })
                    .collect(),
                retry_after_seconds: 0,
            });
            resp
        }
        Outcome::Unavailable { message } => {
            let mut resp = resp.deny(message);
            resp.result.status = Some(StatusSummary::Failure);
            resp.result.code = 503;
            resp.result.reason = "ServiceUnavailable".into();
            // The API server turns this into a Retry-After header, and client-go (kubectl)
            // retries on its own.
            resp.result.details = Some(StatusDetails {
                name,
                group: GROUP.into(),
                kind: verdict.kind.label().into(),
                uid: String::new(),
                causes: vec![],
                retry_after_seconds: 1,
            });
            resp
        }
        Outcome::BadRequest { message } => {
            let mut resp = resp.deny(message);
            resp.result.status = Some(StatusSummary::Failure);
            resp.result.code = 400;
            resp.result.reason = "BadRequest".into();
            resp
        }
    }
}

/// [`decide`] and [`respond`] in one: the whole core.
#[tracing::instrument(
    name = "admission review",
    skip_all,
    fields(kind = %request.kind.kind, operation = ?request.operation, object = %request.name, allowed = tracing::field::Empty)
)]
pub fn review(index: &Index, request: AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let verdict = decide(index, &request);
    let response = respond(&request, &verdict);
    tracing::Span::current().record("allowed", response.allowed);
    response
}
