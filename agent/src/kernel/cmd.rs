//! Running `ip` and `nft`: one place that turns a failure into an error naming the command.

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{Error, Result};

/// Runs `program args...`, feeding `stdin` when given; returns standard output.
pub async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.into(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|source| Error::Spawn {
                program: program.into(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -j args...` and parses its JSON.
pub async fn ip_json<T: serde::de::DeserializeOwned + Default>(args: &[&str]) -> Result<T> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = run("ip", &full, None).await?;
    if out.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(&out).map_err(|source| Error::Parse {
        command: format!("ip {}", full.join(" ")),
        source,
    })
}
