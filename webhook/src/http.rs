//! The HTTP shell around the core: `POST /validate` reads at most [`MAX_BODY_BYTES`],
//! decodes an AdmissionReview, asks [`crate::review`] and encodes the answer. A body that is
//! not an AdmissionReview gets HTTP 400 with a message that says why; everything else is an
//! HTTP 200 carrying the verdict, as the API server expects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use tracing::{debug, info, warn};

use crate::index::Index;
use crate::metrics::{LatencyLabels, Metrics, ReasonLabels, RequestLabels};
use crate::review::{self, Outcome, Verdict};

/// The largest AdmissionReview read: the API server's own request limit is 3 MiB, and a
/// review of our small objects is a few KiB, so anything larger is not a real review.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The path the API server posts to.
pub const PATH: &str = "/validate";

/// What the handler shares.
pub struct App {
    /// The watched state.
    pub index: Index,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How long a request whose answer is not known yet (caches not synced, a namespace
    /// created a moment ago) waits for the caches before it is refused with "retry". Well
    /// under the API server's timeout (`timeoutSeconds`, default 5 s).
    pub settle: Duration,
}

impl App {
    /// An app over `index` with a one-second settle time.
    pub fn new(index: Index, metrics: Arc<Metrics>) -> Self {
        Self {
            index,
            metrics,
            settle: Duration::from_secs(1),
        }
    }
}

/// The router: `POST /validate`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(PATH, post(validate))
        // The handler enforces its own limit, to answer 400 rather than axum's 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

fn bad_request(app: &App, message: String) -> Response {
    app.metrics.malformed.inc();
    warn!(%message, "refused a request that is not an AdmissionReview");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// Reads and parses the body; the error is the message of the 400 answer.
pub async fn read_review(body: Body) -> Result<AdmissionRequest<DynamicObject>, String> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
        format!(
            "cannot read the AdmissionReview body (at most {MAX_BODY_BYTES} bytes are accepted): {e}"
        )
    })?;
    parse_review(&bytes)
}

/// Parses an AdmissionReview v1 and takes its request out.
pub fn parse_review(bytes: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(bytes)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    if review.types.kind != "AdmissionReview"
        || !review.types.api_version.starts_with("admission.k8s.io/")
    {
        return Err(format!(
            "the body is not an AdmissionReview: apiVersion {:?}, kind {:?} (expected admission.k8s.io/v1, AdmissionReview)",
            review.types.api_version, review.types.kind
        ));
    }
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_string())
}

/// Decides, waiting up to `settle` while the answer is "not known yet".
pub async fn decide_settled(app: &App, request: &AdmissionRequest<DynamicObject>) -> Verdict {
    let deadline = Instant::now() + app.settle;
    loop {
        let verdict = review::decide(&app.index, request);
        if !matches!(verdict.outcome, Outcome::Unavailable { .. }) || Instant::now() >= deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn validate(State(app): State<Arc<App>>, body: Body) -> Response {
    let request = match read_review(body).await {
        Ok(r) => r,
        Err(message) => return bad_request(&app, message),
    };
    let started = Instant::now();
    let verdict = decide_settled(&app, &request).await;
    let op = review::operation_label(&request.operation);
    let response = review::respond(&request, &verdict);
    let encoded = serde_json::to_vec(&response.into_review());
    record(&app.metrics, &verdict, op, started.elapsed());
    log(&verdict, op, &request);
    match encoded {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        // Serialising plain strings and numbers does not fail; answer anyway.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the AdmissionReview answer: {e}"),
        )
            .into_response(),
    }
}

fn record(metrics: &Metrics, verdict: &Verdict, op: &str, took: Duration) {
    let kind = verdict.kind.label().to_string();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            kind: kind.clone(),
            operation: op.into(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&LatencyLabels {
            kind,
            operation: op.into(),
            allowed: verdict.allowed().to_string(),
        })
        .observe(took.as_secs_f64());
    for reason in verdict.reasons() {
        metrics
            .denials
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }
}

fn log(verdict: &Verdict, op: &str, request: &AdmissionRequest<DynamicObject>) {
    let kind = verdict.kind.label();
    let user = request.user_info.username.as_deref().unwrap_or("");
    match &verdict.outcome {
        Outcome::Allowed { warnings } => {
            debug!(kind, object = %verdict.object, operation = op, user, warnings = warnings.len(), "allowed")
        }
        _ => info!(
            kind,
            object = %verdict.object,
            operation = op,
            user,
            reasons = %verdict.reasons().join(","),
            message = %verdict.message(),
            "denied"
        ),
    }
}
