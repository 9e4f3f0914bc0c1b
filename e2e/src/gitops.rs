//! Argo CD in the lab: the application controller and the repo server of the pinned release
//! (`e2e/controlplane/argocd/`, built by `build.sh argocd`), Redis from Debian's
//! `redis-server`, and a Git repository served from a folder of the lab (`file://`), so a
//! real-node lab is installed and changed the way a GitOps user does it: commits, and
//! Applications that Argo CD syncs.
//!
//! Argo CD is configured from the files a user copies: the Applications of
//! `examples/argocd/application.yaml` (pointed at the lab's repository, with the lab's chart
//! values) and the health checks of `examples/argocd/argocd-cm.yaml`, merged into `argocd-cm`
//! with the `kubectl patch` docs/gitops.md gives. The controller runs outside the cluster
//! against the lab's API server (`ARGOCD_FAKE_IN_CLUSTER`: the in-cluster destination
//! `https://kubernetes.default.svc` is the kubeconfig's cluster), the repo server and Redis
//! on loopback without TLS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Child;

use crate::child::{spawn_logged, wait_http_ok};
use crate::controlplane::{ControlPlane, ensure_argocd_binaries, process::free_ports};
use crate::error::{Error, Result, io_err};

/// Argo CD's namespace.
pub const NAMESPACE: &str = "argocd";
/// The Application that installs Switchyard from `charts/switchyard`.
pub const PLATFORM_APP: &str = "switchyard";
/// The Application that syncs the repository's `networks/` folder.
pub const NETWORKS_APP: &str = "switchyard-networks";
/// The folder of PodNetworks and ServiceRoutes in the lab's repository.
pub const NETWORKS_DIR: &str = "networks";

/// What Argo CD needs from Debian: Redis (its cache) and git (the repo server clones with it).
pub const PROGRAMS: &[crate::host::Program] = &[("redis-server", "redis-server"), ("git", "git")];

fn repo_root() -> PathBuf {
    crate::binaries::workspace_root()
}

/// A Git repository of the lab: a bare repository Argo CD reads (`file://`) and a work tree
/// the lab (and a test) commits from and pushes.
#[derive(Debug)]
pub struct GitRepo {
    /// The bare repository.
    pub bare: PathBuf,
    /// The work tree.
    pub work: PathBuf,
    home: PathBuf,
}

impl GitRepo {
    /// Creates an empty repository (branch `main`) below `dir`.
    pub async fn create(dir: &Path) -> Result<GitRepo> {
        let repo = GitRepo {
            bare: dir.join("repo.git"),
            work: dir.join("work"),
            home: dir.join("home"),
        };
        for d in [&repo.bare, &repo.work, &repo.home] {
            std::fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        repo.git_in(&repo.bare, &["init", "-q", "--bare", "-b", "main"])
            .await?;
        repo.git(&["init", "-q", "-b", "main"]).await?;
        let bare = repo.bare.to_string_lossy().into_owned();
        repo.git(&["remote", "add", "origin", &bare]).await?;
        repo.git(&["config", "user.name", "Switchyard lab"]).await?;
        repo.git(&["config", "user.email", "lab@switchyard.invalid"])
            .await?;
        Ok(repo)
    }

    /// The URL Argo CD clones.
    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    async fn git_in(&self, dir: &Path, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| Error::Spawn {
                what: "git".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("git -C {} {}", dir.display(), args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    async fn git(&self, args: &[&str]) -> Result<String> {
        self.git_in(&self.work, args).await
    }

    /// Writes `text` to `rel` in the work tree (folders created).
    pub fn write(&self, rel: &str, text: &str) -> Result<()> {
        let path = self.work.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        std::fs::write(&path, text).map_err(io_err("write", &path))
    }

    /// Removes `rel` (a file) from the work tree.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let path = self.work.join(rel);
        std::fs::remove_file(&path).map_err(io_err("remove", &path))
    }

    /// Copies the folder `from` to `rel` in the work tree, replacing what was there.
    pub fn copy_dir(&self, from: &Path, rel: &str) -> Result<()> {
        let to = self.work.join(rel);
        if to.exists() {
            std::fs::remove_dir_all(&to).map_err(io_err("remove", &to))?;
        }
        copy_tree(from, &to)
    }

    /// Commits everything in the work tree and pushes it to `main`; returns the commit.
    pub async fn commit(&self, message: &str) -> Result<String> {
        self.git(&["add", "-A"]).await?;
        self.git(&["commit", "-q", "--allow-empty", "-m", message])
            .await?;
        self.git(&["push", "-q", "origin", "main"]).await?;
        self.git(&["rev-parse", "HEAD"]).await
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io_err("create", to))?;
    for entry in std::fs::read_dir(from).map_err(io_err("read", from))? {
        let entry = entry.map_err(io_err("read", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(io_err("stat", &src))?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io_err("copy", &src))?;
        }
    }
    Ok(())
}

/// The YAML documents of a file as values (empty documents left out).
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let v: Value = serde_saphyr::from_str(&current).map_err(|e| Error::Invalid {
                what: "YAML document".into(),
                message: e.to_string(),
            })?;
            if !v.is_null() {
                docs.push(v);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    Ok(docs)
}

/// `base` with `over` merged into it: objects key by key, anything else replaced.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The two Applications of `examples/argocd/application.yaml`, pointed at `repo_url` (branch
/// `main`): the platform one with `values` merged into its `helm.valuesObject`, the networks
/// one at [`NETWORKS_DIR`].
pub fn applications(example: &str, repo_url: &str, values: &Value) -> Result<(Value, Value)> {
    let docs = yaml_documents(example)?;
    let find = |name: &str| {
        docs.iter()
            .find(|d| d["metadata"]["name"] == name)
            .cloned()
            .ok_or_else(|| Error::Invalid {
                what: "examples/argocd/application.yaml".into(),
                message: format!("no Application {name}"),
            })
    };
    let mut platform = find(PLATFORM_APP)?;
    let mut networks = find(NETWORKS_APP)?;
    for app in [&mut platform, &mut networks] {
        let source = &mut app["spec"]["source"];
        source["repoURL"] = json!(repo_url);
        source["targetRevision"] = json!("main");
    }
    merge(
        &mut platform["spec"]["source"]["helm"]["valuesObject"],
        values,
    );
    networks["spec"]["source"]["path"] = json!(NETWORKS_DIR);
    Ok((platform, networks))
}

/// A running Argo CD: Redis, the repo server and the application controller, and the lab's
/// repository.
pub struct ArgoCd {
    /// The repository the Applications follow.
    pub repo: GitRepo,
    /// The controller's metrics and health endpoint (`/metrics`, `/healthz`).
    pub controller_metrics: SocketAddr,
    /// The networks Application (of `examples/argocd/application.yaml`, pointed at
    /// [`ArgoCd::repo`]), for the caller to apply once `networks/` holds something.
    pub networks_app: Value,
    redis: Child,
    repo_server: Child,
    controller: Child,
}

impl ArgoCd {
    /// Installs Argo CD's CRDs and configuration into the lab's API server and starts it;
    /// `helm` is the helm the repo server renders charts with. Logs go to `log_dir`.
    pub async fn start(
        cp: &ControlPlane,
        dir: &Path,
        helm: &Path,
        log_dir: &Path,
    ) -> Result<ArgoCd> {
        crate::host::ensure_programs(PROGRAMS).await?;
        let bins = ensure_argocd_binaries().await?;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).map_err(io_err("create", &bin))?;
        // One binary, named for each role (it dispatches on its name); `argocd` itself is the
        // git credential helper the repo server hands git; helm renders charts.
        for (name, target) in [
            ("argocd", &bins.argocd),
            ("argocd-application-controller", &bins.argocd),
            ("argocd-repo-server", &bins.argocd),
            ("helm", &helm.to_path_buf()),
        ] {
            let link = bin.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link).map_err(io_err("symlink", &link))?;
        }
        configure(cp, &bins.crds).await?;
        let repo = GitRepo::create(&dir.join("git")).await?;

        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ports = free_ports(&[lo, lo, lo, lo])?;
        let (redis_port, repo_port, repo_metrics, controller_port) =
            (ports[0], ports[1], ports[2], ports[3]);
        let redis_addr = format!("127.0.0.1:{redis_port}");
        let redis_dir = dir.join("redis");
        std::fs::create_dir_all(&redis_dir).map_err(io_err("create", &redis_dir))?;
        let mut cmd = tokio::process::Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&redis_dir)
            .kill_on_drop(true);
        let redis = spawn_logged(cmd, &log_dir.join("argocd-redis.log"), "redis-server")?;

        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        let home = dir.join("home");
        let tmp = dir.join("tmp");
        for d in [&home, &tmp] {
            std::fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let mut cmd = tokio::process::Command::new(bin.join("argocd-repo-server"));
        cmd.env("PATH", &path)
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("ARGOCD_GPG_ENABLED", "false")
            .env("ARGOCD_ASK_PASS_SOCK", dir.join("askpass.sock"))
            .env("ARGOCD_TLS_DATA_PATH", dir.join("tls"))
            .env("ARGOCD_SSH_DATA_PATH", dir.join("ssh"))
            .env("ARGOCD_GNUPGHOME", dir.join("gnupg"))
            .args(["--address", "127.0.0.1", "--port", &repo_port.to_string()])
            .args(["--metrics-address", "127.0.0.1"])
            .args(["--metrics-port", &repo_metrics.to_string()])
            .args(["--redis", &redis_addr, "--disable-tls"])
            .args(["--logformat", "text", "--loglevel", "info"])
            .kill_on_drop(true);
        let repo_server = spawn_logged(
            cmd,
            &log_dir.join("argocd-repo-server.log"),
            "argocd-repo-server",
        )?;

        let kubeconfig = cp.kubeconfig().to_path_buf();
        let mut cmd = tokio::process::Command::new(bin.join("argocd-application-controller"));
        cmd.env("PATH", &path)
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("KUBECONFIG", &kubeconfig)
            .env("ARGOCD_FAKE_IN_CLUSTER", "true")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--namespace", NAMESPACE, "--redis", &redis_addr])
            .args(["--repo-server", &format!("127.0.0.1:{repo_port}")])
            .arg("--repo-server-plaintext")
            .args(["--metrics-port", &controller_port.to_string()])
            // Compare every 10 s instead of every 2–3 minutes, so a commit shows promptly
            // and a perpetual diff would show many times within the test's five minutes.
            .args(["--app-resync", "10", "--app-resync-jitter", "0"])
            // Each resource's health in the Application's status, as `argocd app get` shows.
            .arg("--persist-resource-health")
            .args(["--logformat", "text", "--loglevel", "info"])
            .kill_on_drop(true);
        let controller = spawn_logged(
            cmd,
            &log_dir.join("argocd-application-controller.log"),
            "argocd-application-controller",
        )?;
        let argo = ArgoCd {
            repo,
            controller_metrics: SocketAddr::new(lo, controller_port),
            networks_app: Value::Null,
            redis,
            repo_server,
            controller,
        };
        let timeout = Duration::from_secs(60);
        wait_http_ok("", SocketAddr::new(lo, repo_metrics), "/healthz", timeout)
            .await
            .map_err(|e| crate::child::with_log(e, &log_dir.join("argocd-repo-server.log")))?;
        wait_http_ok("", argo.controller_metrics, "/healthz", timeout)
            .await
            .map_err(|e| {
                crate::child::with_log(e, &log_dir.join("argocd-application-controller.log"))
            })?;
        Ok(argo)
    }

    /// Stops the controller, the repo server and Redis.
    pub async fn stop(mut self) {
        let _ = self.controller.kill().await;
        let _ = self.repo_server.kill().await;
        let _ = self.redis.kill().await;
    }
}

/// Argo CD's CRDs, its namespace, `argocd-cm` (a stock one, then docs/gitops.md's patch of the
/// health checks), `argocd-secret` and the `default` AppProject (both of which argocd-server
/// would create; the lab runs no API server of Argo CD's).
async fn configure(cp: &ControlPlane, crds: &[PathBuf]) -> Result<()> {
    for crd in crds {
        let crd = crd.to_string_lossy();
        cp.kubectl_checked(&["apply", "--server-side", "-f", &crd], b"")
            .await?;
    }
    cp.kubectl_checked(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/applications.argoproj.io",
            "crd/appprojects.argoproj.io",
        ],
        b"",
    )
    .await?;
    let part_of = json!({"app.kubernetes.io/part-of": "argocd"});
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "argocd-cm", "namespace": NAMESPACE, "labels": part_of}}),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "argocd-secret", "namespace": NAMESPACE, "labels": part_of},
               "stringData": {"server.secretkey": secret_key()?}}),
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
               "metadata": {"name": "default", "namespace": NAMESPACE},
               "spec": {"sourceRepos": ["*"],
                        "destinations": [{"namespace": "*", "server": "*"}],
                        "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}}),
    ];
    for o in objects {
        cp.kubectl_checked(
            &["apply", "--server-side", "-f", "-"],
            o.to_string().as_bytes(),
        )
        .await?;
    }
    let patch = repo_root().join("examples/argocd/argocd-cm.yaml");
    let patch = patch.to_string_lossy();
    cp.kubectl_checked(
        &[
            "-n",
            NAMESPACE,
            "patch",
            "configmap",
            "argocd-cm",
            "--patch-file",
            &patch,
        ],
        b"",
    )
    .await
    .map(drop)
}

/// 32 random bytes from the kernel, in hex: `argocd-secret`'s `server.secretkey`.
fn secret_key() -> Result<String> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut b = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io_err("read", path))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// An Application's state as `argocd app get` summarises it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppState {
    /// `status.sync.status`: Synced, OutOfSync, Unknown.
    pub sync: String,
    /// `status.sync.revision`.
    pub revision: String,
    /// `status.health.status`.
    pub health: String,
    /// `status.operationState.phase`: Running, Succeeded, Failed, Error.
    pub phase: String,
    /// `status.operationState.message`.
    pub message: String,
}

impl AppState {
    /// The summary of an Application object.
    pub fn of(app: &Value) -> AppState {
        let st = &app["status"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        AppState {
            sync: text(&st["sync"]["status"]),
            revision: text(&st["sync"]["revision"]),
            health: text(&st["health"]["status"]),
            phase: text(&st["operationState"]["phase"]),
            message: text(&st["operationState"]["message"]),
        }
    }

    /// Synced and Healthy.
    pub fn settled(&self) -> bool {
        self.sync == "Synced" && self.health == "Healthy"
    }
}

/// Reads Application `name` as JSON.
pub async fn application(cp: &ControlPlane, name: &str) -> Result<Value> {
    let out = cp
        .kubectl_checked(
            &["get", "application", "-n", NAMESPACE, name, "-o", "json"],
            b"",
        )
        .await?;
    serde_json::from_str(&out).map_err(|e| Error::Invalid {
        what: format!("Application {name}"),
        message: e.to_string(),
    })
}

/// Applies an Application (server-side, as `kubectl apply` of the example does).
pub async fn apply_application(cp: &ControlPlane, app: &Value) -> Result<()> {
    cp.kubectl_checked(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "switchyard-lab",
            "-f",
            "-",
        ],
        app.to_string().as_bytes(),
    )
    .await
    .map(drop)
}

/// Asks Argo CD to look at Application `name` now (`argocd.argoproj.io/refresh=normal`,
/// what `argocd app get --refresh` sets) instead of at its next resync.
pub async fn refresh(cp: &ControlPlane, name: &str) -> Result<()> {
    cp.kubectl_checked(
        &[
            "annotate",
            "application",
            "-n",
            NAMESPACE,
            name,
            "argocd.argoproj.io/refresh=normal",
            "--overwrite",
        ],
        b"",
    )
    .await
    .map(drop)
}

/// Waits until Application `name` satisfies `done`, printing each new state; returns the last.
pub async fn wait_app(
    cp: &ControlPlane,
    name: &str,
    timeout: Duration,
    done: impl Fn(&AppState) -> bool,
) -> Result<AppState> {
    let deadline = Instant::now() + timeout;
    let mut last = AppState::default();
    loop {
        if let Ok(app) = application(cp, name).await {
            let now = AppState::of(&app);
            if now != last {
                eprintln!(
                    "  Application {name}: sync {} health {} operation {} {}",
                    now.sync, now.health, now.phase, now.message
                );
                last = now;
            }
            if done(&last) {
                return Ok(last);
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("Application {name}"),
                after: timeout,
                last: Some(format!("{last:?}")),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_applications_point_at_the_lab() {
        let example =
            std::fs::read_to_string(repo_root().join("examples/argocd/application.yaml")).unwrap();
        let values = json!({"image": {"registry": "switchyard.lab"}, "operator": {"replicas": 1}});
        let (platform, networks) = applications(&example, "file:///tmp/r.git", &values).unwrap();
        assert_eq!(platform["spec"]["source"]["repoURL"], "file:///tmp/r.git");
        assert_eq!(platform["spec"]["source"]["targetRevision"], "main");
        assert_eq!(platform["spec"]["source"]["path"], "charts/switchyard");
        let v = &platform["spec"]["source"]["helm"]["valuesObject"];
        assert_eq!(v["image"]["registry"], "switchyard.lab");
        assert_eq!(v["operator"]["replicas"], 1, "the lab's value wins");
        assert_eq!(
            v["webhook"]["certs"]["mode"], "self-managed",
            "the example's stays"
        );
        assert_eq!(networks["spec"]["source"]["path"], NETWORKS_DIR);
        assert_eq!(
            networks["spec"]["syncPolicy"]["automated"]["prune"], true,
            "{networks}"
        );
    }

    #[test]
    fn merge_replaces_leaves_and_keeps_siblings() {
        let mut a = json!({"a": {"b": 1, "c": [1]}, "d": "x"});
        merge(&mut a, &json!({"a": {"b": 2, "c": [3, 4]}, "e": true}));
        assert_eq!(a, json!({"a": {"b": 2, "c": [3, 4]}, "d": "x", "e": true}));
    }

    #[test]
    fn app_state_reads_the_status() {
        let app = json!({"status": {
            "sync": {"status": "Synced", "revision": "abc"},
            "health": {"status": "Healthy"},
            "operationState": {"phase": "Failed", "message": "one or more objects failed",
                               "syncResult": {"revision": "abc"}}}});
        let s = AppState::of(&app);
        assert!(s.settled());
        assert_eq!(s.phase, "Failed");
        assert_eq!(s.revision, "abc");
        assert!(!AppState::of(&json!({})).settled());
    }
}
