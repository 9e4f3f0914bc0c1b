//! The incumbents in the lab: kube-proxy (nftables mode) in each node's network namespace and
//! CoreDNS (kubernetes plugin) on a node-local address, both against the lab's API server.
//!
//! kube-proxy runs with the admin kubeconfig, `--hostname-override=<node>`, `--cluster-cidr`
//! from the default PodNetwork's pools, and its metrics and healthz ports on the node's own
//! address (each node is its own namespace, so the ports never clash). CoreDNS listens on
//! [`COREDNS_ADDR`] (added to the node's loopback), next to Switchyard's DNS on
//! [`SWITCHYARD_DNS_ADDR`]; its Corefile serves `cluster.local` and the reverse zones from the
//! API server and forwards nothing (the lab has no upstream).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::netns;
use crate::topology::NodeNet;

/// Where CoreDNS listens inside each node namespace it runs in.
pub const COREDNS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 11);
/// Where Switchyard's node-local DNS listens inside each node namespace.
pub const SWITCHYARD_DNS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// kube-proxy's metrics port (on the node's address).
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;
/// kube-proxy's healthz port (on the node's address).
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
/// CoreDNS's `ready` plugin port (on the node's address).
pub const COREDNS_READY_PORT: u16 = 8181;

/// kube-proxy and CoreDNS processes of one lab.
pub struct Incumbents {
    kubeconfig: PathBuf,
    dir: PathBuf,
    nodes: Vec<NodeNet>,
    kube_proxy_bin: PathBuf,
    coredns_bin: PathBuf,
    cluster_cidr: String,
    kube_proxy: BTreeMap<String, Child>,
    coredns: BTreeMap<String, Child>,
}

impl Incumbents {
    /// Prepares (starts nothing): finds the binaries and the default network's pod pools.
    pub async fn new(lab: &Lab) -> Result<Self> {
        let bins = lab.controlplane.binaries();
        let dir = lab.dir.join("incumbents");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            kubeconfig: lab.controlplane.kubeconfig().to_path_buf(),
            dir,
            nodes: lab.topology.nodes.clone(),
            kube_proxy_bin: bins.kube_proxy().await?,
            coredns_bin: bins.coredns().await?,
            cluster_cidr: cluster_cidr(&lab.client).await?,
            kube_proxy: BTreeMap::new(),
            coredns: BTreeMap::new(),
        })
    }

    fn node(&self, node: &str) -> Result<&NodeNet> {
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| Error::Invalid {
                what: "node".into(),
                message: format!("the lab has no node {node:?}"),
            })
    }

    /// kube-proxy's metrics address on `node`.
    pub fn kube_proxy_metrics(&self, node: &str) -> Result<SocketAddr> {
        Ok(SocketAddr::new(
            self.node(node)?.ipv4.into(),
            KUBE_PROXY_METRICS_PORT,
        ))
    }

    /// The log file of kube-proxy on `node`.
    pub fn kube_proxy_log(&self, node: &str) -> PathBuf {
        self.dir.join(format!("kube-proxy-{node}.log"))
    }

    /// The log file of CoreDNS on `node`.
    pub fn coredns_log(&self, node: &str) -> PathBuf {
        self.dir.join(format!("coredns-{node}.log"))
    }

    /// Starts kube-proxy on `node` (nftables mode) and returns at once.
    pub fn start_kube_proxy(&mut self, node: &str) -> Result<()> {
        let net = self.node(node)?.clone();
        let log = self.kube_proxy_log(node);
        let args = [
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--proxy-mode=nftables".into(),
            format!("--hostname-override={node}"),
            format!("--cluster-cidr={}", self.cluster_cidr),
            format!(
                "--metrics-bind-address={}:{KUBE_PROXY_METRICS_PORT}",
                net.ipv4
            ),
            format!(
                "--healthz-bind-address={}:{KUBE_PROXY_HEALTHZ_PORT}",
                net.ipv4
            ),
            // The conntrack table size is global (not per namespace): leave it alone.
            "--conntrack-max-per-core=0".into(),
            "--v=1".into(),
        ];
        let child = netns::spawn(&net.netns, &self.kube_proxy_bin, &args, Some(&log))?;
        self.kube_proxy.insert(node.to_string(), child);
        Ok(())
    }

    /// Stops kube-proxy on `node` (its nftables table stays, as after a crash).
    pub async fn stop_kube_proxy(&mut self, node: &str) {
        if let Some(mut c) = self.kube_proxy.remove(node) {
            let _ = c.kill().await;
        }
    }

    /// kube-proxy's pid on `node`.
    pub fn kube_proxy_pid(&self, node: &str) -> Option<u32> {
        self.kube_proxy.get(node).and_then(Child::id)
    }

    /// Waits until kube-proxy on `node` finished a sync (its
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds` is set); returns that timestamp
    /// (seconds since the epoch).
    pub async fn wait_kube_proxy_synced(&mut self, node: &str, timeout: Duration) -> Result<f64> {
        let addr = self.kube_proxy_metrics(node)?;
        let end = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(c) = self.kube_proxy.get_mut(node)
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(Error::Invalid {
                    what: format!("kube-proxy on {node}"),
                    message: format!(
                        "exited ({status}); last lines of {}:\n{}",
                        self.kube_proxy_log(node).display(),
                        log_tail(&self.kube_proxy_log(node), 15)
                    ),
                });
            }
            match http_get(addr, "/metrics").await {
                Ok(text) => {
                    if let Some(t) = metric_with(
                        &text,
                        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                        Some("ip_family=\"IPv4\""),
                    ) && t > 0.0
                    {
                        return Ok(t);
                    }
                    last = Some("metrics served, no sync yet".to_string());
                }
                Err(e) => last = Some(e.to_string()),
            }
            if Instant::now() > end {
                return Err(Error::Timeout {
                    what: format!("kube-proxy on {node} to finish its first sync"),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts CoreDNS on `node` at [`COREDNS_ADDR`] and waits until its `ready` plugin says the
    /// kubernetes plugin has synced.
    pub async fn start_coredns(&mut self, node: &str, timeout: Duration) -> Result<()> {
        let net = self.node(node)?.clone();
        let _ = netns::ip_in(
            &net.netns,
            &["addr", "add", &format!("{COREDNS_ADDR}/32"), "dev", "lo"],
        )
        .await;
        let corefile = self.dir.join(format!("Corefile-{node}"));
        let text = format!(
            "cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{\n    bind {COREDNS_ADDR}\n    errors\n    ready {}:{COREDNS_READY_PORT}\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {}\n        pods disabled\n        ttl 30\n    }}\n    cache 30\n}}\n",
            net.ipv4,
            self.kubeconfig.display()
        );
        std::fs::write(&corefile, text).map_err(|source| Error::Io {
            op: "write",
            path: corefile.clone(),
            source,
        })?;
        let log = self.coredns_log(node);
        let child = netns::spawn(
            &net.netns,
            &self.coredns_bin,
            [
                "-conf".to_string(),
                corefile.display().to_string(),
                "-quiet".into(),
            ],
            Some(&log),
        )?;
        self.coredns.insert(node.to_string(), child);
        let addr = SocketAddr::new(net.ipv4.into(), COREDNS_READY_PORT);
        let end = Instant::now() + timeout;
        loop {
            if let Some(c) = self.coredns.get_mut(node)
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(Error::Invalid {
                    what: format!("CoreDNS on {node}"),
                    message: format!(
                        "exited ({status}); last lines of {}:\n{}",
                        log.display(),
                        log_tail(&log, 15)
                    ),
                });
            }
            if http_get(addr, "/ready").await.is_ok() {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(Error::Timeout {
                    what: format!("CoreDNS on {node} to be ready (http://{addr}/ready)"),
                    after: timeout,
                    last: Some(log_tail(&log, 5)),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CoreDNS's pid on `node`.
    pub fn coredns_pid(&self, node: &str) -> Option<u32> {
        self.coredns.get(node).and_then(Child::id)
    }

    /// Stops every process started here.
    pub async fn stop_all(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.kube_proxy) {
            let _ = c.kill().await;
        }
        for (_, mut c) in std::mem::take(&mut self.coredns) {
            let _ = c.kill().await;
        }
    }
}

/// The default PodNetwork's pod pools, comma-separated (kube-proxy's `--cluster-cidr`).
async fn cluster_cidr(client: &Client) -> Result<String> {
    let networks: Api<switchyard_api::PodNetwork> = Api::all(client.clone());
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let list = networks
            .list(&Default::default())
            .await
            .map_err(|e| Error::Kube {
                what: "list PodNetworks".into(),
                source: Box::new(e),
            })?;
        if let Some(n) = list.items.iter().find(|n| n.spec.default) {
            return Ok(n.spec.pod_cidrs.join(","));
        }
        if Instant::now() > end {
            return Err(Error::Missing {
                what: "a default PodNetwork (kube-proxy's --cluster-cidr comes from it)".into(),
                hint: "start the lab with its examples (examples/01-podnetwork-default.yaml)"
                    .into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// `GET http://addr/path` (HTTP/1.0, 2 s bound); the body when the status is 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let what = format!("GET http://{addr}{path}");
    let io = |source: std::io::Error| Error::Io {
        op: "http",
        path: PathBuf::from(format!("http://{addr}{path}")),
        source,
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(io)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(io)?;
        Ok::<_, Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| Error::Timeout {
            what: what.clone(),
            after: Duration::from_secs(2),
            last: None,
        })??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body.to_string())
    } else {
        Err(Error::Invalid {
            what,
            message: format!("answered {status:?}"),
        })
    }
}

/// The value of the first sample of `name` (with or without labels) in a Prometheus text page;
/// with `labels` (e.g. `map="dispatch"`), the sample whose label set contains it.
pub fn metric_with(text: &str, name: &str, labels: Option<&str>) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labels_part, value) = if let Some(r) = rest.strip_prefix('{') {
            let (inner, v) = r.split_once('}')?;
            (inner, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            return None;
        };
        if let Some(want) = labels
            && !labels_part.split(',').any(|p| p.trim() == want)
        {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// [`metric_with`] without a label filter.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    metric_with(text, name, None)
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The pid of the process listening on UDP `addr:port` inside `netns_name` (`ss -lunp`).
pub async fn udp_listener_pid(netns_name: &str, addr: Ipv4Addr, port: u16) -> Option<u32> {
    let out = netns::exec(netns_name, "ss", ["-Hlunp"]).await.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("{addr}:{port}");
    text.lines()
        .filter(|l| l.split_whitespace().any(|f| f == want))
        .find_map(|l| {
            let i = l.find("pid=")?;
            l[i + 4..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// The pid of a process whose command line holds every one of `args` in order somewhere
/// (e.g. the agent of a node: its binary path, `--node-name`, the node).
pub fn find_pid(args: &[&str]) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.filter_map(|e| e.ok()).find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let parts: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        // The process itself, not `ip netns exec` before it execs (same pid) or a shell.
        let first = parts.first()?;
        if first != args.first()? {
            return None;
        }
        let rest = &args[1..];
        let ok = parts
            .windows(rest.len().max(1))
            .any(|w| rest.is_empty() || w.iter().map(String::as_str).eq(rest.iter().copied()));
        ok.then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_found_by_name_and_label() {
        let page = "# HELP x\nkubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7e9\nswitchyard_agent_service_elements{map=\"backends\"} 12\nswitchyard_agent_service_elements{map=\"dispatch\"} 3\n";
        assert_eq!(
            metric(page, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
            Some(1.7e9)
        );
        assert_eq!(
            metric_with(
                page,
                "switchyard_agent_service_elements",
                Some("map=\"dispatch\"")
            ),
            Some(3.0)
        );
        assert_eq!(metric(page, "kubeproxy_sync_proxy_rules"), None);
    }
}
