//! The CNI configuration the agent installs for the container runtime.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};

/// File name of the configuration list in the runtime's CNI configuration folder.
pub const FILE_NAME: &str = "10-switchyard.conflist";

/// The configuration list: one plugin, pointing at the agent's socket and the IPAM state.
pub fn conflist(agent_socket: &Path, state_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "switchyard",
        "plugins": [{
            "type": "switchyard-cni",
            "agentSocket": agent_socket,
            "stateDir": state_dir,
        }]
    })
}

/// Writes the configuration atomically (temp file, then rename), so a runtime never reads half
/// a file; returns its path.
pub async fn install(conf_dir: &Path, agent_socket: &Path, state_dir: &Path) -> Result<PathBuf> {
    tokio::fs::create_dir_all(conf_dir)
        .await
        .map_err(|source| Error::Io {
            op: "create",
            path: conf_dir.into(),
            source,
        })?;
    let path = conf_dir.join(FILE_NAME);
    let tmp = conf_dir.join(format!(".{FILE_NAME}.tmp"));
    let body = serde_json::to_string_pretty(&conflist(agent_socket, state_dir)).unwrap_or_default();
    tokio::fs::write(&tmp, body)
        .await
        .map_err(|source| Error::Io {
            op: "write",
            path: tmp.clone(),
            source,
        })?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|source| Error::Io {
            op: "rename",
            path: path.clone(),
            source,
        })?;
    Ok(path)
}
