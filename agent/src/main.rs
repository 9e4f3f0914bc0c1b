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
use switchyard_agent::dns::DnsConfig;
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
    /// Address of the node-local DNS server (UDP and TCP); `off` disables it.
    #[arg(long, default_value = switchyard_agent::dns::DEFAULT_LISTEN)]
    dns_listen: String,
    /// Dummy interface the agent creates to hold the DNS address; empty: the address is
    /// already on the node.
    #[arg(long, default_value = "sydns0")]
    dns_interface: String,
    /// The cluster domain DNS is authoritative for.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// TTL in seconds of DNS answers for cluster names (and of negative answers).
    #[arg(long, default_value_t = 5)]
    dns_ttl: u32,
    /// Upstream resolvers for every other name (`IP` or `IP:PORT`), comma separated.
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// Milliseconds to wait for one upstream attempt.
    #[arg(long, default_value_t = 2000)]
    dns_upstream_timeout_ms: u64,
    /// Forwarded answers cached at most.
    #[arg(long, default_value_t = 10000)]
    dns_cache_size: usize,
    /// UDP sockets (one receive loop each) on the DNS address; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    dns_sockets: usize,
    /// Also serve core Services (ClusterIP, NodePort, LoadBalancer node ports, external IPs)
    /// and their DNS names (headless and ExternalName included), so that a cluster runs
    /// without kube-proxy and CoreDNS. Off: Services are not watched at all.
    #[arg(long, default_value_t = false)]
    native_services: bool,
    /// This node's addresses, where node ports are served (comma separated; the chart passes
    /// the pod's `status.hostIP`).
    #[arg(long, env = "NODE_IPS", value_delimiter = ',')]
    node_ip: Vec<std::net::IpAddr>,
}

fn socket_addr(flag: &'static str, s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(
            |e: std::net::AddrParseError| switchyard_agent::Error::Flag {
                flag,
                value: s.to_string(),
                reason: format!("not an IP or IP:PORT: {e}"),
            },
        )?;
    Ok(SocketAddr::new(ip, 53))
}

fn dns_config(args: &Args) -> anyhow::Result<Option<DnsConfig>> {
    if args.dns_listen == "off" {
        return Ok(None);
    }
    let upstreams = args
        .dns_upstream
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| socket_addr("--dns-upstream", s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sockets = if args.dns_sockets == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        args.dns_sockets
    };
    Ok(Some(DnsConfig {
        listen: socket_addr("--dns-listen", &args.dns_listen)?,
        interface: Some(args.dns_interface.clone()).filter(|s| !s.is_empty()),
        cluster_domain: args.cluster_domain.trim_matches('.').to_string(),
        ttl: args.dns_ttl,
        upstreams,
        upstream_timeout: Duration::from_millis(args.dns_upstream_timeout_ms.max(1)),
        cache_size: args.dns_cache_size,
        sockets,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let dns = dns_config(&args)?;
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
        dns,
        native_services: args.native_services,
        node_ips: args.node_ip.clone(),
    };
    tokio::select! {
        res = run(client, config, metrics, health) => res.context("agent stopped")?,
        res = server => res.context("HTTP server task failed")?.with_context(|| format!("cannot serve on {}", args.http_addr))?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
