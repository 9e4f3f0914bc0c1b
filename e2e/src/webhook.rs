//! The admission webhook in a lab: built into the lab's target folder like Switchyard's other
//! binaries, started in the root namespace on the fabric address (where kube-apiserver can
//! reach it) in self-managed certificate mode, and registered with a `url:` client config,
//! since the lab has no Service routing. The webhook writes its own `caBundle`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Child;

use crate::child::{spawn_logged, wait_http_ok, with_log};
use crate::controlplane::ControlPlane;
use crate::controlplane::process::free_ports;
use crate::error::{Error, Result};

/// Name of the ValidatingWebhookConfiguration the lab registers.
pub const CONFIG_NAME: &str = "switchyard-webhook";

/// A running webhook process. Dropping it kills the process.
pub struct Webhook {
    child: Child,
    /// The binary.
    pub bin: PathBuf,
    /// What the API server calls: `https://<fabric address>:<port>/validate`.
    pub url: String,
    /// `/metrics`, `/livez`, `/readyz`.
    pub http_addr: SocketAddr,
    /// Its log (in the lab's log folder, so a failed test prints its tail).
    pub log: PathBuf,
}

/// A PodNetwork only the webhook refuses (a label key the schema and CEL do not check), and
/// the field it must name.
const KNOWN_BAD: &str = r#"{"apiVersion":"switchyard.dev/v1alpha1","kind":"PodNetwork",
"metadata":{"name":"webhook-probe"},
"spec":{"podCIDRs":["198.19.250.0/24"],"namespaceSelector":{"matchLabels":{"not a key!":"x"}}}}"#;
const KNOWN_BAD_FIELD: &str = "spec.namespaceSelector.matchLabels";

impl Webhook {
    /// Starts the webhook `bin` on `gateway` (an address kube-apiserver reaches), registers
    /// it with `controlplane`, and returns once it refuses a known-bad object (the API server
    /// trusts its certificate and its caches synced). Its log goes to `log_dir/webhook.log`.
    pub async fn start(
        controlplane: &ControlPlane,
        bin: PathBuf,
        gateway: Ipv4Addr,
        log_dir: &Path,
    ) -> Result<Webhook> {
        let ports = free_ports(&[gateway.into(), gateway.into()])?;
        let (https, http) = (
            ports.first().copied().unwrap_or(0),
            ports.get(1).copied().unwrap_or(0),
        );
        let addr = SocketAddr::new(gateway.into(), https);
        let http_addr = SocketAddr::new(gateway.into(), http);
        let log = log_dir.join("webhook.log");
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env("KUBECONFIG", controlplane.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .args(["--log-format", "text", "--webhook-config-name", CONFIG_NAME])
            .args(["--namespace", "switchyard-system", "--cert-validity", "1d"])
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--http-addr")
            .arg(http_addr.to_string())
            .arg("--ip")
            .arg(gateway.to_string());
        let child = spawn_logged(cmd, &log, "switchyard-webhook")?;
        let webhook = Webhook {
            child,
            bin,
            url: format!("https://{addr}/validate"),
            http_addr,
            log,
        };
        wait_http_ok("", http_addr, "/readyz", Duration::from_secs(60))
            .await
            .map_err(|e| with_log(e, &webhook.log))?;
        webhook.register(controlplane).await?;
        webhook
            .wait_enforcing(controlplane, Duration::from_secs(60))
            .await
            .map_err(|e| with_log(e, &webhook.log))?;
        Ok(webhook)
    }

    /// Applies the ValidatingWebhookConfiguration, as `switchyard-webhook render-config`
    /// renders it for this URL (no caBundle: the webhook writes it).
    pub async fn register(&self, controlplane: &ControlPlane) -> Result<()> {
        let out = tokio::process::Command::new(&self.bin)
            .args(["render-config", "--output", "json", "--url", &self.url])
            .args(["--webhook-config-name", CONFIG_NAME])
            .output()
            .await
            .map_err(|source| Error::Spawn {
                what: "switchyard-webhook render-config".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                command: "switchyard-webhook render-config".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let applied = controlplane
            .kubectl_with_input(&["apply", "--server-side", "-f", "-"], &out.stdout)
            .await?;
        if !applied.status.success() {
            return Err(Error::Command {
                command: "kubectl apply (ValidatingWebhookConfiguration)".into(),
                status: applied.status.to_string(),
                stderr: String::from_utf8_lossy(&applied.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Waits until a server-side dry run of a known-bad PodNetwork is refused by the webhook
    /// (the message names a field only it checks). Before that, the API server either does
    /// not call it yet or does not trust its certificate yet.
    pub async fn wait_enforcing(
        &self,
        controlplane: &ControlPlane,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = controlplane
                .kubectl_with_input(
                    &["apply", "--server-side", "--dry-run=server", "-f", "-"],
                    KNOWN_BAD.as_bytes(),
                )
                .await?;
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() && stderr.contains(KNOWN_BAD_FIELD) {
                return Ok(());
            }
            last = if out.status.success() {
                "admitted (the webhook is not called yet)".into()
            } else {
                stderr.trim().to_string()
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(Error::Timeout {
            what: "the webhook to refuse a known-bad PodNetwork".into(),
            after: timeout,
            last: Some(last),
        })
    }

    /// The webhook's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(self.http_addr)
            .await
            .map_err(|source| Error::Io {
                op: "connect to",
                path: PathBuf::from(self.http_addr.to_string()),
                source,
            })?;
        let io = |source| Error::Io {
            op: "GET /metrics from",
            path: PathBuf::from(self.http_addr.to_string()),
            source,
        };
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            .await
            .map_err(io)?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("http://{}/metrics", self.http_addr),
                after: Duration::from_secs(5),
                last: None,
            })?
            .map_err(io)?;
        Ok(text)
    }

    /// Stops the webhook (SIGKILL; nothing of it needs a graceful end in a lab).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
