//! The plugin's only ways out to the world besides its state directory: the node agent's
//! socket, the `ip` command and a look at the filesystem for the network namespace. Behind one
//! trait so that the command logic runs in unit tests against a simulation.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;
use crate::protocol::{AgentRequest, AgentResponse, MAX_MESSAGE_BYTES, TIMEOUT};

/// What the command logic needs from the machine.
pub trait System {
    /// One request, one response, over the agent's unix socket.
    fn ask_agent(&mut self, socket: &Path, request: &AgentRequest) -> Result<AgentResponse, Error>;

    /// Runs `ip ARGS` in the plugin's own network namespace (the node's), or with `netns` inside
    /// that namespace. Returns stdout; a non-zero exit is an [`Error::Command`].
    fn ip(&mut self, netns: Option<&Path>, args: &[String]) -> Result<String, Error>;

    /// Whether the network namespace file exists.
    fn netns_exists(&self, path: &Path) -> bool;
}

/// The real machine.
#[derive(Debug, Clone)]
pub struct RealSystem {
    ip: PathBuf,
    nsenter: PathBuf,
}

impl Default for RealSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl RealSystem {
    /// Finds `ip` and `nsenter` at their usual places first: runtimes start plugins with a
    /// minimal `PATH` (sometimes none), so `PATH` is only the last resort.
    pub fn new() -> Self {
        RealSystem {
            ip: locate(
                "ip",
                &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"],
            ),
            nsenter: locate(
                "nsenter",
                &[
                    "/usr/bin/nsenter",
                    "/bin/nsenter",
                    "/usr/sbin/nsenter",
                    "/sbin/nsenter",
                ],
            ),
        }
    }
}

fn locate(name: &str, candidates: &[&str]) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl System for RealSystem {
    fn ask_agent(&mut self, socket: &Path, request: &AgentRequest) -> Result<AgentResponse, Error> {
        let agent_io = |action: &'static str| {
            move |source: io::Error| Error::AgentIo {
                action,
                socket: socket.to_path_buf(),
                source: if matches!(
                    source.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no progress within {} s", TIMEOUT.as_secs()),
                    )
                } else {
                    source
                },
            }
        };
        let stream = UnixStream::connect(socket).map_err(agent_io("connect to"))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(agent_io("configure"))?;
        stream
            .set_write_timeout(Some(TIMEOUT))
            .map_err(agent_io("configure"))?;
        let mut line = serde_json::to_string(request).map_err(|e| {
            agent_io("encode a request for")(io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        line.push('\n');
        (&stream)
            .write_all(line.as_bytes())
            .map_err(agent_io("write to"))?;
        // One byte more than allowed, to tell "exactly at the limit" from "over it".
        let limit = u64::try_from(MAX_MESSAGE_BYTES)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let mut reader = BufReader::new((&stream).take(limit));
        let mut buf = Vec::new();
        reader
            .read_until(b'\n', &mut buf)
            .map_err(agent_io("read from"))?;
        decode_response(socket, &buf)
    }

    fn ip(&mut self, netns: Option<&Path>, args: &[String]) -> Result<String, Error> {
        let mut cmd = match netns {
            // `ip -n` only takes names under /run/netns; CNI_NETNS is any path (often
            // /proc/PID/ns/net), and nsenter takes any path.
            Some(ns) => {
                let mut c = Command::new(&self.nsenter);
                c.arg(format!("--net={}", ns.display())).arg(&self.ip);
                c
            }
            None => Command::new(&self.ip),
        };
        cmd.args(args);
        let shown = render(&cmd);
        let output = cmd.output().map_err(|e| Error::Command {
            command: shown.clone(),
            problem: format!("cannot start it: {e}"),
        })?;
        if output.status.success() {
            String::from_utf8(output.stdout).map_err(|_| Error::Command {
                command: shown,
                problem: "printed output that is not UTF-8".into(),
            })
        } else {
            Err(Error::Command {
                command: shown,
                problem: format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            })
        }
    }

    fn netns_exists(&self, path: &Path) -> bool {
        path.try_exists().unwrap_or(false)
    }
}

fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes the agent's one line (the newline is optional if the agent closed after writing).
pub fn decode_response(socket: &Path, buf: &[u8]) -> Result<AgentResponse, Error> {
    let bad = |value: String, problem: String| Error::BadAgentAnswer {
        socket: socket.to_path_buf(),
        field: "(response)".into(),
        value,
        problem,
    };
    if buf.is_empty() {
        return Err(bad(
            String::new(),
            "the agent closed the connection without answering".into(),
        ));
    }
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(bad(
            format!("{}...", String::from_utf8_lossy(&buf[..80.min(buf.len())])),
            format!("longer than {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(buf).map_err(|e| {
        let text = String::from_utf8_lossy(buf);
        let shown: String = text.trim_end().chars().take(200).collect();
        bad(shown, format!("not a response: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AgentStatus;
    use std::os::unix::net::UnixListener;

    #[test]
    fn decode_response_errors() {
        let s = Path::new("/run/a.sock");
        assert!(decode_response(s, b"").is_err());
        assert!(decode_response(s, b"{\"nope\":1}\n").is_err());
        assert!(decode_response(s, &vec![b' '; MAX_MESSAGE_BYTES + 1]).is_err());
        assert_eq!(
            decode_response(s, b"{\"status\":{\"ready\":true}}").unwrap(),
            AgentResponse::Status(AgentStatus {
                ready: true,
                message: String::new()
            })
        );
        let e = decode_response(s, b"garbage\n").unwrap_err();
        assert_eq!(e.code(), 101);
        assert!(e.to_string().contains("garbage"), "{e}");
    }

    #[test]
    fn talks_one_line_each_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            (&conn)
                .write_all(b"{\"status\":{\"ready\":false,\"message\":\"syncing\"}}\n")
                .unwrap();
            line
        });
        let got = RealSystem::new()
            .ask_agent(&path, &AgentRequest::Status)
            .unwrap();
        assert_eq!(server.join().unwrap(), "{\"op\":\"status\"}\n");
        assert_eq!(
            got,
            AgentResponse::Status(AgentStatus {
                ready: false,
                message: "syncing".into()
            })
        );
    }

    #[test]
    fn missing_socket_is_an_io_error_naming_it() {
        let e = RealSystem::new()
            .ask_agent(Path::new("/nonexistent/agent.sock"), &AgentRequest::Status)
            .unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("/nonexistent/agent.sock"), "{e}");
    }
}
