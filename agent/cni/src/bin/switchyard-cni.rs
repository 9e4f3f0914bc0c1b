//! The `switchyard-cni` executable: environment and stdin in, CNI result or error on stdout.
//! All logic lives in the library (`switchyard_cni::run`).

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = switchyard_cni::Env::from_os(std::env::vars_os());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => switchyard_cni::run(&env, &stdin),
        Err(e) => switchyard_cni::stdin_failure(e),
    };
    let mut out = std::io::stdout().lock();
    // If the runtime closed our stdout there is nobody left to tell; the exit code still says it.
    let _ = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush());
    ExitCode::from(outcome.exit_code)
}
