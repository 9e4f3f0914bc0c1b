//! The machine the lab runs on: root, and the programs the lab and its tests drive, installed
//! from Debian packages by `e2e/host-packages.sh` when they are missing (the lab runs as root
//! anyway). `SWITCHYARD_NO_INSTALL` forbids installing; then a missing program is an error that
//! names the package.

use std::path::Path;
use std::process::Stdio;

use crate::error::{Error, Result};

/// A program on PATH and the Debian package that carries it.
pub type Program = (&'static str, &'static str);

/// What `switchyard-lab up` drives: links and namespaces, the nftables table, the lab's
/// upstream resolver, and `dig` for the "try this next" queries it prints.
pub const LAB: &[Program] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("nsenter", "util-linux"),
    ("conntrack", "conntrack"),
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
];

/// What the end-to-end tests drive on top of [`LAB`]: ping (the CNI plugin's test), python3
/// (a UDP client with a fixed source port), lua5.1 (the chart's Argo CD health checks),
/// diff (`kubectl diff`), getent and curl (cluster DNS from pods), dnsperf (DNS load).
pub const TESTS: &[Program] = &[
    ("ping", "iputils-ping"),
    ("python3", "python3"),
    ("lua5.1", "lua5.1"),
    ("diff", "diffutils"),
    ("getent", "libc-bin"),
    ("curl", "curl"),
    ("dnsperf", "dnsperf"),
];

/// What real lab nodes need on top of [`LAB`]: runc is built with cgo against libseccomp
/// (its headers found through pkg-config), and the lab's images carry the test server's shared
/// libraries, which `ldd` lists. A path stands for a file a package installs.
pub const REAL_NODES: &[Program] = &[
    ("gcc", "gcc"),
    ("pkg-config", "pkg-config"),
    ("/usr/include/seccomp.h", "libseccomp-dev"),
    ("ldd", "libc-bin"),
    ("tar", "tar"),
    ("strip", "binutils"),
    // The agent's image carries the host's kernel tools, as the Dockerfile's Debian base
    // does (`realnode::build_images`).
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("modprobe", "kmod"),
];

/// What the conformance image carries from the host (busybox: `sh`, `grep`; curl; netcat; dig and
/// getent for the DNS tests).
pub const CONFORMANCE: &[Program] = &[
    ("busybox", "busybox-static"),
    ("curl", "curl"),
    ("nc.openbsd", "netcat-openbsd"),
    ("dig", "bind9-dnsutils"),
    ("getent", "libc-bin"),
    ("dash", "dash"),
];

/// What the benchmarks drive on top of [`LAB`].
pub const BENCH: &[Program] = &[("dnsperf", "dnsperf")];

/// Checks that the lab can run here: root, the programs of `extra` and of [`LAB`] (installed
/// when missing), and the Go toolchain the control plane is built with.
pub async fn preflight(extra: &[Program]) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(Error::Missing {
            what: "root".into(),
            hint: "the lab creates network namespaces, links and nftables tables; run it as root"
                .into(),
        });
    }
    let programs: Vec<Program> = LAB.iter().chain(extra).copied().collect();
    ensure_programs(&programs).await?;
    if !on_path("go") {
        return Err(Error::Missing {
            what: "`go`".into(),
            hint: "the lab builds Kubernetes from Go modules: install Go 1.26 or newer".into(),
        });
    }
    Ok(())
}

/// Installs the Debian packages of the missing `programs` (saying so on stderr), or fails
/// naming them; `SWITCHYARD_NO_INSTALL` (or the older `SWITCHYARD_LAB_NO_INSTALL`) forbids
/// installing.
pub async fn ensure_programs(programs: &[Program]) -> Result<()> {
    let programs = programs.to_vec();
    tokio::task::spawn_blocking(move || ensure_programs_blocking(&programs))
        .await
        .map_err(|e| Error::Invalid {
            what: "installing host packages".into(),
            message: e.to_string(),
        })?
}

/// [`ensure_programs`] for a caller outside an async runtime (a plain `#[test]`).
pub fn ensure_programs_blocking(programs: &[Program]) -> Result<()> {
    let forbidden = std::env::var_os("SWITCHYARD_NO_INSTALL")
        .or_else(|| std::env::var_os("SWITCHYARD_LAB_NO_INSTALL"))
        .is_some_and(|v| !v.is_empty());
    ensure(programs, !forbidden)
}

fn ensure(programs: &[Program], may_install: bool) -> Result<()> {
    if programs.iter().all(|(p, _)| on_path(p)) {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("host-packages.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .args(programs.iter().map(|(p, pkg)| format!("{p}:{pkg}")))
        .env("SWITCHYARD_NO_INSTALL", if may_install { "" } else { "1" })
        .stdin(Stdio::null())
        .status()
        .map_err(|source| Error::Spawn {
            what: format!("bash {}", script.display()),
            source,
        })?;
    let missing: Vec<Program> = programs
        .iter()
        .filter(|(p, _)| !on_path(p))
        .copied()
        .collect();
    if status.success() && missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    Err(Error::Missing {
        what: missing
            .iter()
            .map(|(p, _)| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", "),
        hint: format!(
            "install the Debian packages {} (apt-get install {})",
            packages.join(" "),
            packages.join(" ")
        ),
    })
}

/// Whether `program` is on PATH (or in an sbin folder, where root's tools live).
pub fn on_path(program: &str) -> bool {
    let sbin = ["/usr/sbin", "/sbin"].map(std::path::PathBuf::from);
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .chain(sbin.iter())
        .any(|d| d.join(program).is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn present_programs_need_nothing() {
        ensure(&[("bash", "bash"), ("sh", "dash")], false).unwrap();
    }

    #[test]
    fn a_missing_program_names_its_package_when_installing_is_forbidden() {
        let err = ensure(
            &[
                ("bash", "bash"),
                ("switchyard-no-such-program", "switchyard-no-such-package"),
            ],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`switchyard-no-such-program`"), "{err}");
        assert!(
            err.contains("apt-get install switchyard-no-such-package"),
            "{err}"
        );
        assert!(!err.contains("`bash`"), "{err}");
    }
}
