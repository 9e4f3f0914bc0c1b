//! For the tests that run a control plane without a lab: a bridge in the root namespace that
//! holds the apiserver's address, and the prerequisites they check themselves.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// A prerequisite is missing: fail under CI, otherwise say so and skip.
pub fn missing(test: &str, what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("prerequisite missing: {what}");
    }
    eprintln!("SKIPPED {test}: {what} (set CI=1 to make this a failure)");
}

/// Whether the tests run as root (they create links in the root namespace).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Runs `ip ARGS...` and insists on success.
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge in the root namespace holding an address, deleted on drop (success or panic).
pub struct Bridge(String);

impl Bridge {
    pub fn create(name: &str, cidr: &str) -> Self {
        let bridge = Bridge(name.to_string());
        // Leftover from a killed run with the same pid: start clean.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", name])
            .output();
        ip(&["link", "add", name, "type", "bridge"]);
        ip(&["addr", "add", cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}
