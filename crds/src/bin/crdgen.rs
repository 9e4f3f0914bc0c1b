//! Writes Switchyard's CRDs, generated from the Rust types, as YAML.
//!
//! `crdgen [DIR]` writes into DIR (default: `charts/switchyard/crds` of this repository);
//! `crdgen --check [DIR]` writes nothing and fails when a file there is stale.

use std::{path::PathBuf, process::ExitCode};

use switchyard_api::crd;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir: Option<PathBuf> = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!(
                    "usage: crdgen [--check] [DIR]\n  writes the CRDs into DIR (default {})",
                    default_dir().display()
                );
                return ExitCode::SUCCESS;
            }
            other if other.starts_with('-') => {
                eprintln!("crdgen: unknown option {other:?}; usage: crdgen [--check] [DIR]");
                return ExitCode::from(2);
            }
            other => dir = Some(PathBuf::from(other)),
        }
    }
    let dir = dir.unwrap_or_else(default_dir);
    if check {
        return match crd::stale(&dir) {
            Ok(stale) if stale.is_empty() => ExitCode::SUCCESS,
            Ok(stale) => {
                for path in stale {
                    eprintln!(
                        "crdgen: {} is stale; run `cargo run -p switchyard-api --bin crdgen`",
                        path.display()
                    );
                }
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("crdgen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match crd::write_all(&dir) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The chart's CRD folder, found from this crate's manifest directory at build time.
fn default_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crd::CHART_CRD_DIR)
}
