//! Kubeconfig files with everything embedded (CA, client certificate and key), so one file is
//! all a client (kubectl, kube-rs, a Switchyard binary) needs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use k8s_openapi::ByteString;

use super::certs::Pem;
use crate::error::{Error, Result};

/// Base64 the way kubeconfig `*-data` fields want it (standard alphabet, padded), through
/// k8s-openapi's `ByteString`, which serializes exactly so.
fn base64(data: &str) -> Result<String> {
    match serde_json::to_value(ByteString(data.as_bytes().to_vec())) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        other => Err(Error::Invalid {
            what: "base64 of kubeconfig data".into(),
            message: format!("ByteString serialized as {other:?}"),
        }),
    }
}

/// The kubeconfig text for `user` at `server`, trusting `ca_pem`.
pub fn render(server: &str, ca_pem: &str, user: &str, client: &Pem) -> Result<String> {
    // Every value is either a URL without quotes or backslashes, base64, or a user name we
    // quote through JSON (a YAML double-quoted string accepts JSON string escapes).
    let quoted_user = serde_json::Value::String(user.to_string()).to_string();
    let quoted_server = serde_json::Value::String(server.to_string()).to_string();
    Ok(format!(
        "apiVersion: v1
kind: Config
clusters:
- name: switchyard-lab
  cluster:
    server: {quoted_server}
    certificate-authority-data: \"{ca}\"
users:
- name: {quoted_user}
  user:
    client-certificate-data: \"{cert}\"
    client-key-data: \"{key}\"
contexts:
- name: switchyard-lab
  context:
    cluster: switchyard-lab
    user: {quoted_user}
current-context: switchyard-lab
",
        ca = base64(ca_pem)?,
        cert = base64(&client.cert)?,
        key = base64(&client.key)?,
    ))
}

/// Writes a file only its owner can read (it holds a private key).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let io = |op, source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("create", e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| io("write", e))
}

/// Writes a public file (certificates, logs' neighbours).
pub fn write_public(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_parseable_kubeconfig() {
        let pem = Pem {
            cert: "CERT".into(),
            key: "KEY".into(),
        };
        let text = render(
            "https://198.18.0.1:6443",
            "CA",
            "system:kube-controller-manager",
            &pem,
        )
        .unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("switchyard-lab"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://198.18.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        assert_eq!(kc.auth_infos[0].name, "system:kube-controller-manager");
    }
}
