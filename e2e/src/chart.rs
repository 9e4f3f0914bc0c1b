//! The Helm chart (`charts/switchyard/`) as the chart tests drive it: helm, built from the Go
//! module pinned in `e2e/controlplane/helm/` by `e2e/controlplane/build.sh` into the control
//! plane's cache folder, rendering the chart into objects.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::controlplane::{Binaries, Programs, ensure_programs};
use crate::error::{Error, Result};

/// The release namespace the chart insists on.
pub const NAMESPACE: &str = "switchyard-system";

/// The chart's folder in this checkout.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("charts")
        .join("switchyard")
}

/// The helm version pinned in `e2e/controlplane/helm/go.mod`.
pub fn helm_version() -> Result<String> {
    let go_mod = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/helm/go.mod");
    let text = std::fs::read_to_string(&go_mod).map_err(|source| Error::Io {
        op: "read",
        path: go_mod.clone(),
        source,
    })?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("helm.sh/helm/v3 v"))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .next()
        .ok_or_else(|| Error::Invalid {
            what: go_mod.display().to_string(),
            message: "no helm.sh/helm/v3 requirement".into(),
        })
}

/// helm as `build.sh` puts it beside the control plane, `<cache>/helm-v<version>/helm`; built
/// first when it is not there yet.
pub async fn helm(binaries: &Binaries) -> Result<PathBuf> {
    let path = binaries
        .dir
        .join(format!("helm-v{}", helm_version()?))
        .join("helm");
    if !path.is_file() {
        ensure_programs(&[Programs::Helm]).await?;
    }
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing {
            what: path.display().to_string(),
            hint:
                "run `e2e/controlplane/build.sh helm` (it builds helm from e2e/controlplane/helm)"
                    .into(),
        })
    }
}

/// What a helm command printed, and whether it succeeded.
#[derive(Debug)]
pub struct HelmOutput {
    /// Exit status was zero.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `helm ARGS` with a private home (no repositories, no plugins, no cache of the user's).
pub async fn run_helm(helm: &Path, home: &Path, args: &[&str]) -> Result<HelmOutput> {
    let out = tokio::process::Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            what: format!("{} {}", helm.display(), args.join(" ")),
            source,
        })?;
    Ok(HelmOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `helm template switchyard <chart> -n switchyard-system --include-crds EXTRA...`, as YAML.
pub async fn template(helm: &Path, home: &Path, extra: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec![
        "template",
        "switchyard",
        chart.as_ref(),
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let out = run_helm(helm, home, &args).await?;
    if !out.success {
        return Err(Error::Command {
            command: format!("helm {}", args.join(" ")),
            status: "failed".into(),
            stderr: out.stderr,
        });
    }
    Ok(out.stdout)
}

/// The objects of a multi-document YAML stream (empty documents left out).
pub fn objects(yaml: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| Error::Invalid {
        what: "rendered chart".into(),
        message: e.to_string(),
    })?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}

/// `Kind namespace/name` (or `Kind name`) of an object, for messages.
pub fn describe(o: &Value) -> String {
    let kind = o["kind"].as_str().unwrap_or("?");
    let name = o["metadata"]["name"].as_str().unwrap_or("?");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}
