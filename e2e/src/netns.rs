//! Named network namespaces (`ip netns`, `/run/netns/<name>`): the lab's nodes and pods.
//!
//! Two ways in: [`exec`] / [`spawn`] run a program through `ip netns exec`, and [`in_netns`]
//! runs a closure on a thread that has entered the namespace, so sockets it opens live there
//! without spawning a process.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use nix::sched::{CloneFlags, setns};
use tokio::process::{Child, Command};

use crate::error::{Error, Result};

/// Where iproute2 keeps the bind mounts that name network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The bind mount naming `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: format!("network namespace name {name:?}"),
            message: "must be a non-empty file name (no '/')".into(),
        })
    }
}

fn command_line(program: &OsStr, args: &[&OsStr]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args...` to completion in the current network namespace; Error::Command
/// with its stderr if it fails.
pub async fn run(program: &OsStr, args: &[&OsStr]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            what: program.to_string_lossy().into_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            command: command_line(program, args),
            status: output.status.to_string(),
            stderr: match String::from_utf8_lossy(&output.stderr).trim() {
                "" => "(no stderr)".to_string(),
                stderr => stderr.to_string(),
            },
        })
    }
}

/// Runs `ip args...` in the current (root) network namespace.
pub async fn ip(args: &[&str]) -> Result<Output> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run(OsStr::new("ip"), &args).await
}

/// Runs `ip args...` inside `netns` (`ip -n`).
pub async fn ip_in(netns: &str, args: &[&str]) -> Result<Output> {
    check_name(netns)?;
    let mut full = vec![OsStr::new("-n"), OsStr::new(netns)];
    full.extend(args.iter().map(OsStr::new));
    run(OsStr::new("ip"), &full).await
}

fn ip_netns_exec<'a>(netns: &'a str, program: &'a OsStr, args: &'a [&'a OsStr]) -> Vec<&'a OsStr> {
    let mut full: Vec<&OsStr> = vec![
        OsStr::new("netns"),
        OsStr::new("exec"),
        OsStr::new(netns),
        program,
    ];
    full.extend_from_slice(args);
    full
}

/// Runs `ip netns exec <netns> <program> <args>` to completion and returns its output;
/// Error::Command (with stderr) if it exits unsuccessfully.
pub async fn exec<I, S>(netns: &str, program: impl AsRef<OsStr>, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    check_name(netns)?;
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run(
        OsStr::new("ip"),
        &ip_netns_exec(netns, program.as_ref(), &args),
    )
    .await
}

/// A `Command` for `ip netns exec <netns> <program>`: add arguments, stdio and environment,
/// then spawn. Killed when its `Child` is dropped.
pub fn command(netns: &str, program: impl AsRef<OsStr>) -> Result<Command> {
    check_name(netns)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(program)
        .kill_on_drop(true);
    Ok(cmd)
}

/// Starts `ip netns exec <netns> <program> <args>` in the background (stdin closed) and
/// returns the child, killed when dropped. Its stdout and stderr go to `log` (appended) or,
/// with `None`, to ours.
pub fn spawn<I, S>(
    netns: &str,
    program: impl AsRef<OsStr>,
    args: I,
    log: Option<&Path>,
) -> Result<Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(netns, program.as_ref())?;
    cmd.args(args).stdin(Stdio::null());
    if let Some(log) = log {
        let io = |op, source| Error::Io {
            op,
            path: log.to_path_buf(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| io("open", e))?;
        let err = out.try_clone().map_err(|e| io("dup", e))?;
        cmd.stdout(out).stderr(err);
    }
    cmd.spawn().map_err(|source| Error::Spawn {
        what: format!(
            "ip netns exec {netns} {}",
            program.as_ref().to_string_lossy()
        ),
        source,
    })
}

/// Runs `f` inside the network namespace `netns` and returns its result.
///
/// `setns(2)` moves only the calling *thread* into a namespace, and a thread cannot reliably
/// move back (the old namespace may be gone, and a failed move back would leave a runtime
/// worker or the test thread silently in the wrong namespace). So `f` runs on a fresh std
/// thread that enters the namespace and exits afterwards; every socket it opens (std, or a
/// tokio current-thread runtime built inside `f`) lives in `netns`, while the rest of the
/// process stays where it was. (Inside `f`, `/proc/thread-self/net/...` shows the namespace;
/// `/proc/self/net/...` shows the main thread's.) Blocks the caller until `f` returns: from async code, call it
/// inside `tokio::task::spawn_blocking`. A panic in `f` resumes on the caller.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    check_name(netns)?;
    let ns_path = path(netns);
    let file = std::fs::File::open(&ns_path).map_err(|source| Error::Io {
        op: "open network namespace",
        path: ns_path.clone(),
        source,
    })?;
    let name = netns.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| Error::Io {
                op: "setns(CLONE_NEWNET) into",
                path: ns_path,
                source: std::io::Error::from(errno),
            })?;
            drop(file);
            Ok(f())
        })
        .map_err(|source| Error::Spawn {
            what: format!("a thread for netns {name}"),
            source,
        })?;
    match thread.join() {
        Ok(result) => result,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Creates the named network namespace (`ip netns add`) and brings its loopback up.
pub async fn add(name: &str) -> Result<()> {
    check_name(name)?;
    run(
        OsStr::new("ip"),
        &[OsStr::new("netns"), OsStr::new("add"), OsStr::new(name)],
    )
    .await?;
    exec(name, "ip", ["link", "set", "lo", "up"]).await?;
    Ok(())
}

/// Deletes the named network namespace; succeeds if it does not exist.
pub async fn delete(name: &str) -> Result<()> {
    check_name(name)?;
    if !path(name).exists() {
        return Ok(());
    }
    match run(
        OsStr::new("ip"),
        &[OsStr::new("netns"), OsStr::new("delete"), OsStr::new(name)],
    )
    .await
    {
        Ok(_) => Ok(()),
        // Raced with another deleter.
        Err(_) if !path(name).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The named network namespaces whose names start with `prefix`, sorted. Empty if there are
/// none (or `/run/netns` does not exist or cannot be read, which is logged).
pub async fn list_with_prefix(prefix: &str) -> Vec<String> {
    let mut entries = match tokio::fs::read_dir(NETNS_DIR).await {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, dir = NETNS_DIR, "cannot list network namespaces");
            }
            return Vec::new();
        }
    };
    let mut names = Vec::new();
    loop {
        match entries.next_entry().await {
            Ok(Some(entry)) => {
                if let Some(name) = entry.file_name().to_str()
                    && name.starts_with(prefix)
                {
                    names.push(name.to_string());
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, dir = NETNS_DIR, "cannot list network namespaces");
                break;
            }
        }
    }
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("sy-node-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("..").is_err());
        assert_eq!(path("x"), PathBuf::from("/run/netns/x"));
    }
}
