//! `switchyard-webhook`: serves admission reviews (the default), or renders the
//! ValidatingWebhookConfiguration that points the API server at it (`render-config`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;
use switchyard_observe as observe;
use switchyard_webhook::certs::{self, CertLoaded, SelfManaged, Subject};
use switchyard_webhook::http::{App, router};
use switchyard_webhook::index::{DEFAULT_CLUSTER_DOMAIN, Index};
use switchyard_webhook::metrics::Metrics;
use switchyard_webhook::registration::{
    self, DEFAULT_CONFIG_NAME, Endpoint, FailurePolicy, Registration,
};
use tokio::sync::watch;
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Switchyard's validating admission webhook for PodNetwork and ServiceRoute",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the ValidatingWebhookConfiguration (YAML or JSON) and exit.
    RenderConfig(RenderArgs),
}

fn duration(v: &str) -> Result<Duration, String> {
    certs::parse_duration(v)
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// HTTPS address of POST /validate.
    #[arg(long, default_value = "0.0.0.0:8443")]
    addr: SocketAddr,
    /// Plain-HTTP address of /metrics, /livez and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Folder holding tls.crt and tls.key (e.g. a cert-manager Secret); they are reloaded
    /// when they change. Without it the webhook mints its own CA and certificate and keeps
    /// the caBundle of its ValidatingWebhookConfiguration current.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// How often the mounted certificate files are read for changes.
    #[arg(long, default_value = "10s", value_parser = duration)]
    cert_reload_interval: Duration,
    /// DNS name of the self-minted certificate (repeatable). Default:
    /// <service-name>.<namespace>.svc and <service-name>.<namespace>.svc.<cluster-domain>.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// IP address of the self-minted certificate (repeatable), for a url: client config.
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Life of each self-minted CA and certificate; both rotate at two thirds of it.
    #[arg(long, default_value = "90d", value_parser = duration)]
    cert_validity: Duration,
    /// Name of the ValidatingWebhookConfiguration whose caBundle is kept (self-managed mode).
    #[arg(long, default_value = DEFAULT_CONFIG_NAME)]
    webhook_config_name: String,
    /// The webhook's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchyard-system")]
    namespace: String,
    /// The webhook's Service, for the default certificate names.
    #[arg(long, default_value = "switchyard-webhook")]
    service_name: String,
    /// The cluster's DNS domain (route names live under svc.<domain>).
    #[arg(long, default_value = DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Log format: `json` (in a cluster) or `text`.
    #[arg(long, default_value = "json")]
    log_format: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

#[derive(Args, Debug)]
struct RenderArgs {
    /// Object name.
    #[arg(long, default_value = DEFAULT_CONFIG_NAME)]
    webhook_config_name: String,
    /// The webhook's namespace (excluded from validation; the Service's namespace).
    #[arg(long, default_value = "switchyard-system")]
    namespace: String,
    /// Call this URL (https://host:port/validate) instead of a Service.
    #[arg(long, conflicts_with_all = ["service_name", "service_port"])]
    url: Option<String>,
    /// The webhook's Service.
    #[arg(long, default_value = "switchyard-webhook")]
    service_name: String,
    /// The Service's port.
    #[arg(long, default_value_t = 443)]
    service_port: i32,
    /// The API server's timeout per call, 1..30 seconds.
    #[arg(long, default_value_t = 5)]
    timeout_seconds: i32,
    /// What the API server does when the webhook cannot be reached.
    #[arg(long, value_enum, default_value = "fail")]
    failure_policy: FailurePolicy,
    /// PEM file whose contents become caBundle (omit when the webhook or cert-manager
    /// writes it).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "yaml")]
    output: Output,
}

fn render_config(args: RenderArgs) -> anyhow::Result<()> {
    let endpoint = match args.url {
        Some(url) => Endpoint::Url(url),
        None => Endpoint::Service {
            namespace: args.namespace.clone(),
            name: args.service_name,
            port: args.service_port,
        },
    };
    let ca_bundle = match &args.ca_file {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("cannot read --ca-file {}", p.display()))?,
        ),
        None => None,
    };
    let cfg = registration::render(&Registration {
        name: args.webhook_config_name,
        endpoint,
        namespace: args.namespace,
        timeout_seconds: args.timeout_seconds,
        failure_policy: args.failure_policy,
        ca_bundle,
    })?;
    let mut value = serde_json::to_value(&cfg).context("cannot encode the configuration")?;
    if let Some(m) = value.as_object_mut() {
        m.insert(
            "apiVersion".into(),
            "admissionregistration.k8s.io/v1".into(),
        );
        m.insert("kind".into(), "ValidatingWebhookConfiguration".into());
    }
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&value).context("cannot encode JSON")?,
        Output::Yaml => serde_saphyr::to_string(&value).context("cannot encode YAML")?,
    };
    println!("{text}");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    observe::init_logging(&args.log_format);
    switchyard_webhook::install_crypto_provider();
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let health = Arc::new(observe::Health {
        registry,
        ready: AtomicBool::new(false),
    });
    let http_addr = args.http_addr;
    let health_server = tokio::spawn(observe::serve(http_addr, health.clone()));

    let (index, writers) = Index::new(&args.cluster_domain);
    tokio::spawn(switchyard_webhook::watch::run(client.clone(), writers));

    // Ready = the index synced and a certificate serves.
    let loaded = Arc::new(CertLoaded::default());
    {
        let (index, loaded, health) = (index.clone(), loaded.clone(), health.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                health
                    .ready
                    .store(index.is_synced() && loaded.get(), Ordering::Relaxed);
            }
        });
    }

    let tls = match &args.cert_dir {
        Some(dir) => {
            info!(dir = %dir.display(), "serving the mounted certificate");
            let (tls, fp) = certs::load_mounted(dir, args.cert_reload_interval).await;
            tokio::spawn(certs::reload_mounted_forever(
                dir.clone(),
                args.cert_reload_interval,
                tls.clone(),
                fp,
                metrics.clone(),
            ));
            tls
        }
        None => {
            let mut dns_names = args.dns_names.clone();
            if dns_names.is_empty() && args.ips.is_empty() {
                let svc = format!("{}.{}.svc", args.service_name, args.namespace);
                dns_names = vec![svc.clone(), format!("{svc}.{}", args.cluster_domain)];
            }
            let subject = Subject {
                dns_names,
                ips: args.ips.clone(),
            };
            let minted = certs::mint(&subject, args.cert_validity, SystemTime::now())?;
            let tls = certs::tls_config(&minted).await?;
            info!(names = ?subject.dns_names, ips = ?subject.ips, not_after = ?minted.not_after, config = %args.webhook_config_name,
                "serving a self-minted certificate; keeping the caBundle current");
            let (bundle_tx, bundle_rx) = watch::channel(certs::ca_bundle(&minted, None));
            let (applied_tx, applied_rx) = watch::channel(String::new());
            tokio::spawn(registration::keep_ca_bundle(
                client.clone(),
                args.webhook_config_name.clone(),
                bundle_rx,
                applied_tx,
                metrics.clone(),
            ));
            tokio::spawn(certs::rotate_forever(
                SelfManaged {
                    subject,
                    validity: args.cert_validity,
                    propagation: Duration::from_secs(10),
                    tls: tls.clone(),
                    bundle: bundle_tx,
                    applied: applied_rx,
                    metrics: metrics.clone(),
                },
                minted,
            ));
            tls
        }
    };
    loaded.set();

    let listener = std::net::TcpListener::bind(args.addr)
        .with_context(|| format!("cannot listen on {} for HTTPS", args.addr))?;
    let app = Arc::new(App::new(index, metrics));
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutting down; finishing requests in flight");
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        });
    }
    info!(addr = %args.addr, http_addr = %http_addr, "serving admission reviews");
    tokio::select! {
        res = switchyard_webhook::serve_https(listener, tls, router(app), handle) => res?,
        res = health_server => {
            res.context("HTTP server task failed")?
                .with_context(|| format!("cannot serve /metrics, /livez and /readyz on {http_addr}"))?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::RenderConfig(args)) => render_config(args),
        None => serve(cli.serve).await,
    }
}
