//! `switchyard-agent`: see the library docs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use prometheus_client::registry::Registry;
use switchyard_agent::run::{AgentConfig, Metrics, run};
use switchyard_observe::{Health, init_logging, serve};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Switchyard node agent: bridges, routes, nftables and the CNI plugin's counterpart"
)]
struct Args {
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where the container runtime reads CNI configuration.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The socket the CNI plugin asks.
    #[arg(long, default_value = "/run/switchyard/agent.sock")]
    cni_socket: PathBuf,
    /// The CNI plugin's IPAM state.
    #[arg(long, default_value = "/var/lib/switchyard/cni")]
    cni_state_dir: PathBuf,
    /// Destinations pods reach through their gateway, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0/0,::/0")]
    pod_routes: Vec<IpNet>,
    /// Full resync period in seconds.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Address of /metrics, /livez and /readyz.
    #[arg(long, default_value = "0.0.0.0:9090")]
    http_addr: SocketAddr,
    /// Log format: `json` or `text`.
    #[arg(long, default_value = "json")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let health = Arc::new(Health {
        registry,
        ready: AtomicBool::new(false),
    });
    let server = tokio::spawn(serve(args.http_addr, health.clone()));
    let config = AgentConfig {
        node: args.node_name,
        cni_conf_dir: args.cni_conf_dir,
        cni_socket: args.cni_socket,
        cni_state_dir: args.cni_state_dir,
        pod_routes: args.pod_routes,
        resync: Duration::from_secs(args.resync_seconds),
    };
    tokio::select! {
        res = run(client, config, metrics, health) => res.context("agent stopped")?,
        res = server => res.context("HTTP server task failed")?.with_context(|| format!("cannot serve on {}", args.http_addr))?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
