//! The lab's own child processes (agents, operators, the webhook, pods' containers): spawned
//! with their output in a log file, and waited on until they answer over HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::process::Child;

use crate::controlplane::process::log_tail;
use crate::error::{Error, Result};
use crate::netns;

/// `e`, with the last lines of the process's `log` that explain it.
pub fn with_log(e: Error, log: &Path) -> Error {
    Error::Invalid {
        what: e.to_string(),
        message: format!("last lines of {}:\n{}", log.display(), log_tail(log, 20)),
    }
}

/// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`, killed on drop.
pub fn spawn_logged(mut cmd: tokio::process::Command, log: &Path, what: &str) -> Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| Error::Io {
            op: "open",
            path: log.into(),
            source,
        })?;
    let err = file.try_clone().map_err(|source| Error::Io {
        op: "dup",
        path: log.into(),
        source,
    })?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true);
    cmd.spawn().map_err(|source| Error::Spawn {
        what: what.into(),
        source,
    })
}

/// GETs `http://addr/path` from inside `netns_name` (or the root namespace when empty) until
/// it answers 200.
pub async fn wait_http_ok(
    netns_name: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let (ns, p) = (netns_name.to_string(), path.to_string());
        let res = tokio::task::spawn_blocking(move || {
            let get = move || http_get(addr, &p);
            if ns.is_empty() {
                get()
            } else {
                netns::in_netns(&ns, get).unwrap_or_else(|e| Err(e.to_string()))
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match res {
            Ok(200) => return Ok(()),
            Ok(code) => last = format!("HTTP {code}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Timeout {
        what: format!("http://{addr}{path}"),
        after: timeout,
        last: Some(last),
    })
}

/// `GET path` over HTTP/1.0 (no chunked answer), the body of a 200 answer; for metrics
/// endpoints on the fabric. Bounded by 2 s per read.
pub fn http_get_text(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let err = |e: String| Error::Invalid {
        what: format!("http://{addr}{path}"),
        message: e,
    };
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| err(e.to_string()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n").map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    s.take(64 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(err(head.lines().next().unwrap_or_default().to_string()));
    }
    Ok(body.to_string())
}

fn http_get(addr: SocketAddr, path: &str) -> std::result::Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {head}"))
}
