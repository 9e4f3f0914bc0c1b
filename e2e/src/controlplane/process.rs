//! Child processes of the lab: spawned with their output in a log file, tied to the test
//! process so they never outlive it, stopped with SIGTERM and then SIGKILL.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::{Error, Result};

/// `setpriv` from util-linux, if installed: it sets the parent-death signal and then execs
/// the real program (same pid), so the child gets SIGKILL even when the test process dies
/// without running destructors (SIGKILL, abort). Setting it ourselves would need `pre_exec`,
/// which is unsafe.
///
/// Caveat: the kernel sends the signal when the *thread* that forked exits. The lab spawns
/// from the task calling [`Managed::spawn`]: a `#[tokio::test]` body (the test thread) or a
/// runtime worker, both of which live until the runtime shuts down. Do not start a control
/// plane from a short-lived thread (e.g. inside `spawn_blocking`).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|d| d.join("setpriv"))
                .find(|p| p.is_file())
        })
        .as_deref()
}

/// One long-running child of the lab.
#[derive(Debug)]
pub struct Managed {
    name: String,
    command_line: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Managed {
    /// Starts `program args...` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, log: &Path) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let command_line = std::iter::once(program.as_os_str())
            .chain(args.iter().map(|a| a.as_os_str()))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
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
        let mut cmd = match setpriv() {
            Some(setpriv) => {
                let mut cmd = Command::new(setpriv);
                cmd.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            what: program.display().to_string(),
            source,
        })?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name: name.to_string(),
            command_line,
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// An error describing an early exit, with the tail of the log.
    pub fn exit_error(&self, status: ExitStatus) -> Error {
        Error::Command {
            command: self.command_line.clone(),
            status: status.to_string(),
            stderr: format!(
                "{} exited early; tail of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 30)
            ),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit. Idempotent.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(_) => tracing::debug!(name = %self.name, "stopped"),
            Err(_) => {
                tracing::warn!(name = %self.name, ?grace, "did not stop on SIGTERM, killing");
                let _ = child.kill().await;
            }
        }
    }

    /// SIGKILL now, without waiting (tokio reaps the process in the background).
    pub fn kill_now(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        // kill_on_drop does the same when the Child drops; this states the intent.
        self.kill_now();
    }
}

/// The last `lines` lines of a log file (best effort).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Ports that were free a moment ago, one per address given (bind port 0 on each, read the
/// ports, release them all at once so no two answers collide).
pub fn free_ports(ips: &[std::net::IpAddr]) -> Result<Vec<u16>> {
    let listeners = ips
        .iter()
        .map(|ip| {
            std::net::TcpListener::bind((*ip, 0)).map_err(|source| Error::Io {
                op: "bind port 0 on",
                path: PathBuf::from(ip.to_string()),
                source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .zip(ips)
        .map(|(l, ip)| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|source| Error::Io {
                    op: "read the port bound on",
                    path: PathBuf::from(ip.to_string()),
                    source,
                })
        })
        .collect()
}
