//! Switchyard's own binaries as the lab runs them: built into `target/lab` of the workspace
//! (or taken from `SWITCHYARD_BIN_DIR`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Switchyard's own binaries the lab runs.
#[derive(Clone, Debug)]
pub struct SwitchyardBinaries {
    /// switchyard-operator.
    pub operator: PathBuf,
    /// switchyard-agent.
    pub agent: PathBuf,
    /// switchyard-cni.
    pub cni: PathBuf,
    /// switchyard-testpod.
    pub testpod: PathBuf,
    /// switchyard-webhook.
    pub webhook: PathBuf,
    /// kubectl-switchyard, the kubectl plugin.
    pub plugin: PathBuf,
}

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds (or finds up to date) Switchyard's binaries into `target/lab` of the workspace. A
/// separate target folder keeps this build from waiting on the `cargo test` that runs it.
pub async fn build_switchyard() -> Result<SwitchyardBinaries> {
    if let Ok(dir) = std::env::var("SWITCHYARD_BIN_DIR") {
        return binaries_in(Path::new(&dir));
    }
    let root = workspace_root();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("lab");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = tokio::process::Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--bins",
            "-p",
            "switchyard-operator",
            "-p",
            "switchyard-agent",
            "-p",
            "switchyard-cni",
            "-p",
            "switchyard-e2e",
            "-p",
            "switchyard-webhook",
            "-p",
            "kubectl-switchyard",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .await
        .map_err(|source| Error::Spawn {
            what: format!("{cargo} build"),
            source,
        })?;
    if !status.success() {
        return Err(Error::Command {
            command: "cargo build --bins (Switchyard's binaries for the lab)".into(),
            status: status.to_string(),
            stderr: "see the compiler output above".into(),
        });
    }
    binaries_in(&target.join("debug"))
}

fn binaries_in(dir: &Path) -> Result<SwitchyardBinaries> {
    let find = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Missing {
                what: p.display().to_string(),
                hint: "build it with `cargo build --bins`".into(),
            })
        }
    };
    Ok(SwitchyardBinaries {
        operator: find("switchyard-operator")?,
        agent: find("switchyard-agent")?,
        cni: find("switchyard-cni")?,
        testpod: find("switchyard-testpod")?,
        webhook: find("switchyard-webhook")?,
        plugin: find("kubectl-switchyard")?,
    })
}
