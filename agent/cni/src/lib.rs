//! Switchyard's CNI plugin (spec 1.0.0 and 1.1.0): puts a pod on its network's node bridge.
//!
//! What it does. On ADD it asks the node agent (one JSON line over a unix socket, see
//! [`protocol`]) which network the pod joins; the agent answers with the bridge, the MTU, the
//! node's address blocks and the routes. The plugin then claims one address per family from
//! those blocks in its own file store ([`ipam`]), creates a veth pair (host end on the bridge,
//! pod end renamed to `CNI_IFNAME` inside `CNI_NETNS`), configures addresses and routes via the
//! blocks' gateways ([`wire`]), and prints the CNI result ([`result`]). DEL removes the veth and
//! releases the addresses, CHECK compares `prevResult` with the machine, STATUS asks the agent
//! whether it is ready, GC releases addresses of attachments the runtime no longer knows,
//! VERSION reports the supported versions.
//!
//! What it may not do. It decides nothing about policy: which network a pod joins, its blocks,
//! routes, MTU, isolation and masquerading are the agent's; the plugin only carries out the
//! answer and never adds routes of its own (in particular no default route unless the agent
//! lists one). It creates no bridges, firewall rules or sysctls; the agent owns the node side
//! beyond the pod's veth. DEL and GC work without the agent, from the state directory alone,
//! so a pod can always be torn down. Each state directory belongs to one CNI network
//! configuration: GC treats every allocation under it as that network's.
//!
//! [`run`] is the whole plugin as a function: environment and stdin in, stdout and exit code
//! out. The binary is a thin wrapper around it.

pub mod commands;
pub mod config;
pub mod error;
pub mod ipam;
pub mod protocol;
pub mod result;
pub mod system;
pub mod version;
pub mod wire;

#[cfg(test)]
mod fake;

pub use config::Env;
pub use error::Error;

use config::Command;
use result::{ErrorResult, VersionResult, to_line};
use system::{RealSystem, System};
use version::LATEST_VERSION;

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: u8,
}

impl Outcome {
    fn success(stdout: String) -> Self {
        Outcome {
            stdout,
            exit_code: 0,
        }
    }

    /// An error result in `cni_version`, exit code 1.
    pub fn failure(cni_version: &str, error: &Error) -> Self {
        Outcome {
            stdout: to_line(&ErrorResult::new(cni_version, error)),
            exit_code: 1,
        }
    }
}

/// Runs one plugin invocation against the real machine.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    run_with(env, stdin, &mut RealSystem::new())
}

/// Runs one plugin invocation against `sys`.
pub fn run_with(env: &Env, stdin: &[u8], sys: &mut dyn System) -> Outcome {
    let command = match config::command(env) {
        Ok(c) => c,
        Err(e) => return Outcome::failure(LATEST_VERSION, &e),
    };
    if command == Command::Version {
        // A probe: answer whatever stdin holds, echoing its cniVersion as the spec asks.
        let echoed = config::decode(stdin)
            .ok()
            .and_then(|m| m.get("cniVersion")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| LATEST_VERSION.to_owned());
        return Outcome::success(to_line(&VersionResult::new(&echoed)));
    }
    let map = match config::decode(stdin) {
        Ok(m) => m,
        Err(e) => return Outcome::failure(LATEST_VERSION, &e),
    };
    // Errors are reported in the configuration's version when we speak it.
    let version = config::spoken_version(&map).unwrap_or(LATEST_VERSION);
    match execute(command, env, &map, sys) {
        Ok(stdout) => Outcome::success(stdout),
        Err(e) => Outcome::failure(version, &e),
    }
}

fn execute(
    command: Command,
    env: &Env,
    map: &serde_json::Map<String, serde_json::Value>,
    sys: &mut dyn System,
) -> Result<String, Error> {
    let conf = config::netconf(map)?;
    match command {
        Command::Add => commands::add(sys, &conf, &config::invocation(env, command)?),
        Command::Del => {
            commands::del(sys, &conf, &config::invocation(env, command)?).map(|()| String::new())
        }
        Command::Check => {
            commands::check(sys, &conf, &config::invocation(env, command)?).map(|()| String::new())
        }
        Command::Status => commands::status(sys, &conf).map(|()| String::new()),
        Command::Gc => commands::gc(sys, &conf).map(|()| String::new()),
        // Answered before the configuration is read.
        Command::Version => Ok(to_line(&VersionResult::new(&conf.cni_version))),
    }
}

/// For `main`: stdin could not be read (I/O failure, code 5).
pub fn stdin_failure(source: std::io::Error) -> Outcome {
    Outcome::failure(
        LATEST_VERSION,
        &Error::Io {
            action: "read",
            path: "stdin".into(),
            source,
        },
    )
}
