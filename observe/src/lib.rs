//! What every Switchyard binary exposes the same way: `/metrics`, `/livez` and `/readyz` over
//! plain HTTP, and one logging setup (JSON in a cluster, text at a terminal) that also exports
//! spans over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// What the endpoints read.
pub struct Health {
    /// Metrics to export.
    pub registry: Registry,
    /// Set once the process can do its job (caches synced, or standing by as a non-leader).
    pub ready: AtomicBool,
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &h.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

/// The router serving the three endpoints.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Serves the endpoints on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(health)).await
}

/// Where OTLP traces go, from the standard environment: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// as it is, else `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended (OTLP over HTTP
/// with protobuf, the only protocol these binaries speak). Unset or empty: no traces.
pub fn otlp_traces_endpoint(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(e) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Some(e);
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
}

/// How a process logs and traces.
#[derive(Clone, Debug, Default)]
pub struct TelemetryOptions {
    /// `json` (in a cluster) or `text`.
    pub log_format: String,
    /// The full URL OTLP/HTTP traces are posted to (`http://collector:4318/v1/traces`);
    /// `None`: no traces.
    pub otlp_traces_endpoint: Option<String>,
    /// `service.name` of the spans; `None`: `OTEL_SERVICE_NAME`, else the program's name.
    pub service_name: Option<String>,
}

/// The trace pipeline of the process, kept so that [`shutdown_tracing`] can flush it.
static PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> =
    std::sync::OnceLock::new();

fn program_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "switchyard".into())
}

fn tracer_provider(
    endpoint: &str,
    service_name: Option<String>,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .with_headers(Default::default())
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let from_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty());
    match service_name {
        Some(name) => resource = resource.with_service_name(name),
        None if !from_env => resource = resource.with_service_name(program_name()),
        None => {}
    }
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs the global tracing subscriber: logs as `json` or `text`, filtered by `RUST_LOG`
/// (default `info`), and, with an endpoint, every span exported over OTLP/HTTP as well. A
/// second call does nothing. An exporter that cannot be built is logged and traces are off;
/// logging works either way.
pub fn init_telemetry(opts: TelemetryOptions) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let json = opts.log_format == "json";
    let (otel, otel_error) = match opts.otlp_traces_endpoint.as_deref() {
        None => (None, None),
        Some(endpoint) => match tracer_provider(endpoint, opts.service_name.clone()) {
            Ok(provider) => {
                let tracer = provider.tracer("switchyard");
                let _ = PROVIDER.set(provider);
                (
                    Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                    None,
                )
            }
            Err(e) => (None, Some(format!("{endpoint}: {e}"))),
        },
    };
    let done = tracing_subscriber::registry()
        .with(filter)
        .with(json.then(|| tracing_subscriber::fmt::layer().json()))
        .with((!json).then(tracing_subscriber::fmt::layer))
        .with(otel)
        .try_init();
    if done.is_ok() {
        match (&opts.otlp_traces_endpoint, otel_error) {
            (_, Some(e)) => {
                tracing::warn!(error = %e, "OTLP trace exporter not started; traces are off")
            }
            (Some(endpoint), None) => tracing::info!(%endpoint, "exporting traces over OTLP/HTTP"),
            (None, None) => {}
        }
    }
}

/// Installs the global tracing subscriber: `json` or `text` logs, filtered by `RUST_LOG`
/// (default `info`); traces over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. `SWITCHYARD_LOG_FORMAT` (`json` or `text`)
/// overrides `format`.
pub fn init_logging(format: &str) {
    let log_format = log_format(format, std::env::var("SWITCHYARD_LOG_FORMAT").ok());
    init_telemetry(TelemetryOptions {
        log_format,
        otlp_traces_endpoint: otlp_traces_endpoint(|k| std::env::var(k).ok()),
        service_name: None,
    });
}

/// The log format: `env` (`SWITCHYARD_LOG_FORMAT`) when it is `json` or `text`, else `flag`.
pub fn log_format(flag: &str, env: Option<String>) -> String {
    env.filter(|f| f == "json" || f == "text")
        .unwrap_or_else(|| flag.to_string())
}

/// Exports the spans still buffered and stops the trace pipeline; call before the process
/// exits. Without traces configured it does nothing.
pub fn shutdown_tracing() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
        let _ = p.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_the_log_format_flag_with_a_known_value() {
        assert_eq!(log_format("json", None), "json");
        assert_eq!(log_format("json", Some("text".into())), "text");
        assert_eq!(log_format("text", Some("json".into())), "json");
        assert_eq!(log_format("text", Some("yaml".into())), "text");
    }

    #[test]
    fn the_standard_variables_pick_the_endpoint() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(otlp_traces_endpoint(env(&[])), None);
        assert_eq!(
            otlp_traces_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        assert_eq!(
            otlp_traces_endpoint(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318/"
            )]))
            .as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            otlp_traces_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other:4318/x")
            ]))
            .as_deref(),
            Some("http://other:4318/x")
        );
    }
}
