//! `switchyard-operator`: see the library docs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use switchyard_observe as http;
use switchyard_operator::{leader, metrics::Metrics};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Switchyard operator: PodNetwork and ServiceRoute reconcilers"
)]
struct Args {
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchyard-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "switchyard-operator")]
    lease_name: String,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// This replica's identity; defaults to the pod name, else host name and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of /metrics, /livez and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log format: `json` (in a cluster) or `text`.
    #[arg(long, default_value = "json")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    http::init_logging(&args.log_format);
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let health = Arc::new(http::Health {
        registry,
        ready: AtomicBool::new(false),
    });
    let server = tokio::spawn(http::serve(args.http_addr, health.clone()));

    let lease = leader::LeaseConfig {
        namespace: args.lease_namespace,
        name: args.lease_name,
        identity,
        duration_seconds: args.lease_duration,
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    tokio::select! {
        res = leader::run(client, lease, metrics, health, shutdown) => res.context("operator stopped")?,
        res = server => {
            res.context("HTTP server task failed")?
                .map_err(|source| switchyard_operator::Error::Http { addr: args.http_addr, source })?;
        }
    }
    Ok(())
}
