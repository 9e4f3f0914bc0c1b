#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The built plugin against real network namespaces: a "node" namespace with a bridge holding
//! the gateways, a "pod" namespace, and a fake agent on a unix socket. Needs root and iproute2.
//!
//! Only 198.18.0.0/15 and fd00::/8 addresses are used, no default route is ever added, and
//! everything lives in throwaway namespaces named `sycnitest<pid>...` that a guard deletes even
//! when an assertion fails; the host's own namespace is never touched.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use serde_json::{Value, json};
use switchyard_cni::protocol::{
    AgentRequest, AgentResponse, AgentStatus, Attachment, BlockGateway, host_veth_name,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard-cni");

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Whether to run. Not root: skip, but only outside CI (where a skip would hide the test).
/// Missing tools are installed from Debian packages by the lab's `e2e/host-packages.sh`
/// (saying so), or the test fails naming the package.
fn preflight(test: &str) -> Option<PathBuf> {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root to create network namespaces; CI is set, so this fails instead of skipping"
        );
        // Written to the stream directly: libtest captures `eprintln!` of passing tests, and a
        // skip must be visible.
        let _ = writeln!(
            std::io::stderr(),
            "{test}: SKIPPED (not root; it creates network namespaces)"
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e/host-packages.sh");
    let installed = Command::new("bash")
        .arg(&script)
        .args(["ip:iproute2", "nsenter:util-linux", "ping:iputils-ping"])
        .status()
        .unwrap_or_else(|e| panic!("{test}: cannot run {}: {e}", script.display()));
    assert!(
        installed.success(),
        "{test}: iproute2, util-linux and iputils-ping are needed and could not be installed (see above)"
    );
    Some(find_tool("ip").unwrap_or_else(|| panic!("{test}: `ip` is still missing")))
}

fn sh(argv: &[&str]) -> Output {
    Command::new(argv[0]).args(&argv[1..]).output().unwrap()
}

/// Runs and insists on success.
fn must(argv: &[&str]) -> String {
    let out = sh(argv);
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace that is deleted when dropped.
struct Netns {
    ip: String,
    name: String,
}

impl Netns {
    fn new(ip: &Path, name: String) -> Self {
        let ip = ip.display().to_string();
        let _ = sh(&[&ip, "netns", "del", &name]); // a leftover of a killed run
        must(&[&ip, "netns", "add", &name]);
        must(&[&ip, "-n", &name, "link", "set", "lo", "up"]);
        Netns { ip, name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec![self.ip.as_str(), "-n", &self.name];
        argv.extend_from_slice(args);
        must(&argv)
    }

    fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.ip(&["-j", "addr", "show"])).unwrap()
    }

    fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&[&self.ip, "netns", "del", &self.name]);
    }
}

/// Answers every connection with the attachment (or status), until dropped.
struct FakeAgent {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(socket: PathBuf, attachment: Attachment) -> Self {
        let listener = UnixListener::bind(&socket).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match serde_json::from_str::<AgentRequest>(&line) {
                    Ok(AgentRequest::Attach { .. }) => AgentResponse::Attach(attachment.clone()),
                    _ => AgentResponse::Status(AgentStatus {
                        ready: true,
                        message: "fake".into(),
                    }),
                };
                let mut reply = serde_json::to_string(&answer).unwrap();
                reply.push('\n');
                let _ = (&conn).write_all(reply.as_bytes());
            }
        });
        FakeAgent {
            socket,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One test's world. Field order is drop order: agent, then namespaces, then files.
struct Lab {
    agent: FakeAgent,
    pod: Netns,
    node: Netns,
    ip: PathBuf,
    bridge: String,
    container_id: String,
    state: tempfile::TempDir,
}

const GATEWAY4: &str = "198.18.200.1";
const GATEWAY6: &str = "fd00:5959:c8::1";

impl Lab {
    fn new(ip: PathBuf, tag: &str) -> Self {
        let pid = std::process::id();
        let node = Netns::new(&ip, format!("sycnitest{pid}{tag}n"));
        let pod = Netns::new(&ip, format!("sycnitest{pid}{tag}p"));
        let bridge = format!("syb{pid}{tag}");
        node.ip(&["link", "add", &bridge, "type", "bridge"]);
        node.ip(&["addr", "add", &format!("{GATEWAY4}/24"), "dev", &bridge]);
        node.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY6}/64"),
            "dev",
            &bridge,
            "nodad",
        ]);
        node.ip(&["link", "set", &bridge, "up"]);
        let state = tempfile::tempdir().unwrap();
        let agent = FakeAgent::start(
            state.path().join("agent.sock"),
            Attachment {
                network: "sycnitest-net".into(),
                bridge: bridge.clone(),
                mtu: 1400,
                blocks: vec![
                    BlockGateway {
                        cidr: "198.18.200.0/24".into(),
                        gateway: GATEWAY4.into(),
                    },
                    BlockGateway {
                        cidr: "fd00:5959:c8::/64".into(),
                        gateway: GATEWAY6.into(),
                    },
                ],
                routes: vec!["198.18.0.0/15".into(), "fd00::/8".into()],
            },
        );
        Lab {
            agent,
            pod,
            node,
            ip,
            bridge,
            container_id: format!("sycnitest{pid}{tag}"),
            state,
        }
    }

    fn network_dir(&self) -> PathBuf {
        self.state.path().join("sycnitest-net")
    }

    fn conf(&self, extra: Value) -> String {
        let mut c = json!({
            "cniVersion": "1.1.0",
            "name": "switchyard",
            "type": "switchyard-cni",
            "agentSocket": self.agent.socket,
            "stateDir": self.state.path(),
        });
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        c.to_string()
    }

    /// Runs the plugin inside the node namespace, as a runtime on that node would.
    fn plugin(&self, command: &str, extra: Value) -> (String, i32) {
        let netns = self.pod.path();
        let mut child = Command::new(&self.ip)
            .args(["netns", "exec", &self.node.name, BIN])
            .env_clear()
            .envs([
                ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", self.container_id.as_str()),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
                ),
                ("CNI_PATH", "/opt/cni/bin"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.conf(extra).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8(out.stdout).unwrap(),
            out.status.code().unwrap_or(-1),
        )
    }

    fn ok(&self, command: &str, extra: Value) -> String {
        let (out, exit) = self.plugin(command, extra);
        assert_eq!(exit, 0, "{command} failed: {out}");
        out
    }

    fn ping(&self, target: &str) -> bool {
        sh(&[
            self.ip.to_str().unwrap(),
            "netns",
            "exec",
            &self.pod.name,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            target,
        ])
        .status
        .success()
    }

    fn allocation_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.network_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with("last_reserved_ip"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

#[test]
fn add_check_gc_del_against_real_namespaces() {
    let Some(ip) = preflight("add_check_gc_del_against_real_namespaces") else {
        return;
    };
    let lab = Lab::new(ip, "a");
    let host = host_veth_name(&lab.container_id, "eth0");

    // ADD.
    let out = lab.ok("ADD", json!({}));
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["cniVersion"], "1.1.0");
    let interfaces = result["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2, "{result}");
    assert_eq!(interfaces[0]["name"], host.as_str());
    assert!(interfaces[0].get("sandbox").is_none());
    assert_eq!(interfaces[1]["name"], "eth0");
    assert_eq!(interfaces[1]["sandbox"], lab.pod.path().as_str());
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{result}");
    let v4 = ips[0]["address"].as_str().unwrap().to_owned();
    let v6 = ips[1]["address"].as_str().unwrap().to_owned();
    assert!(v4.starts_with("198.18.200.") && v4.ends_with("/24"), "{v4}");
    assert!(
        !["198.18.200.0/24", "198.18.200.1/24", "198.18.200.255/24"].contains(&v4.as_str()),
        "{v4}"
    );
    assert!(
        v6.starts_with("fd00:5959:c8::") && v6.ends_with("/64"),
        "{v6}"
    );
    assert_eq!(ips[0]["gateway"], GATEWAY4);
    assert_eq!(ips[1]["gateway"], GATEWAY6);
    assert!(ips.iter().all(|i| i["interface"] == 1));
    assert_eq!(
        result["routes"],
        json!([{"dst": "198.18.0.0/15", "gw": GATEWAY4}, {"dst": "fd00::/8", "gw": GATEWAY6}])
    );
    assert_eq!(result["dns"], json!({}));

    // The machine agrees with the result.
    let eth0 = lab.pod.link("eth0").expect("eth0 in the pod namespace");
    assert_eq!(eth0["address"], interfaces[1]["mac"]);
    assert_eq!(eth0["mtu"], 1400);
    let addrs: Vec<String> = eth0["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(addrs.contains(&v4) && addrs.contains(&v6), "{addrs:?}");
    let veth = lab
        .node
        .link(&host)
        .expect("host veth in the node namespace");
    assert_eq!(veth["master"], lab.bridge.as_str());
    assert_eq!(veth["address"], interfaces[0]["mac"]);
    assert!(
        lab.pod.ip(&["route", "show", "default"]).trim().is_empty(),
        "no default route"
    );
    assert!(
        lab.pod
            .ip(&["-6", "route", "show", "default"])
            .trim()
            .is_empty()
    );
    assert!(
        lab.pod
            .ip(&["route", "show", "198.18.0.0/15"])
            .contains(GATEWAY4)
    );
    assert!(
        lab.pod.link("lo").unwrap()["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("UP"))
    );

    // The pod reaches its gateways through the bridge.
    assert!(lab.ping(GATEWAY4), "pod cannot ping {GATEWAY4}");
    assert!(lab.ping(GATEWAY6), "pod cannot ping {GATEWAY6}");

    // CHECK with the ADD result passes; with an address that is not there it fails.
    let (out, exit) = lab.plugin("CHECK", json!({"prevResult": result}));
    assert_eq!((out.as_str(), exit), ("", 0));
    let mut wrong = result.clone();
    wrong["ips"][0]["address"] = json!("198.18.200.250/24");
    let (out, exit) = lab.plugin("CHECK", json!({"prevResult": wrong}));
    assert_eq!(exit, 1);
    let err: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["code"], 103, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("198.18.200.250/24"),
        "{err}"
    );

    // ADD again: same addresses, still connected.
    let again: Value = serde_json::from_str(&lab.ok("ADD", json!({}))).unwrap();
    assert_eq!(again["ips"], result["ips"]);
    assert!(
        lab.ping(GATEWAY4),
        "pod cannot ping {GATEWAY4} after the second ADD"
    );
    assert_eq!(
        lab.allocation_files().len(),
        2,
        "{:?}",
        lab.allocation_files()
    );

    // GC releases an allocation nobody holds any more, and keeps ours.
    std::fs::write(lab.network_dir().join("198.18.200.77"), "deadbeef\neth0\n").unwrap();
    let gc =
        json!({"cni.dev/valid-attachments": [{"containerID": lab.container_id, "ifname": "eth0"}]});
    let (out, exit) = lab.plugin("GC", gc);
    assert_eq!((out.as_str(), exit), ("", 0));
    let files = lab.allocation_files();
    assert!(!files.contains(&"198.18.200.77".to_owned()), "{files:?}");
    assert_eq!(files.len(), 2, "{files:?}");
    let (out, exit) = lab.plugin("CHECK", json!({"prevResult": again}));
    assert_eq!((out.as_str(), exit), ("", 0), "CHECK after GC");

    // STATUS via the fake agent.
    assert_eq!(lab.ok("STATUS", json!({})), "");

    // DEL, twice.
    assert_eq!(lab.ok("DEL", json!({"prevResult": again})), "");
    assert!(lab.node.link(&host).is_none(), "host veth left behind");
    assert!(lab.pod.link("eth0").is_none(), "pod interface left behind");
    assert!(
        lab.allocation_files().is_empty(),
        "{:?}",
        lab.allocation_files()
    );
    assert_eq!(lab.ok("DEL", json!({})), "");
}

#[test]
fn failed_add_undoes_everything() {
    let Some(ip) = preflight("failed_add_undoes_everything") else {
        return;
    };
    let lab = Lab::new(ip, "b");
    // IPv6 off in the pod: the IPv6 address is refused after the veth exists and the IPv4
    // address is configured, so the undo has real work to do.
    must(&[
        lab.ip.to_str().unwrap(),
        "netns",
        "exec",
        &lab.pod.name,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
    ]);
    let (out, exit) = lab.plugin("ADD", json!({}));
    assert_eq!(exit, 1, "{out}");
    let err: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["code"], 102, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("fd00:5959:c8::"),
        "{err}"
    );
    let host = host_veth_name(&lab.container_id, "eth0");
    assert!(lab.node.link(&host).is_none(), "host veth left behind");
    assert!(lab.pod.link("eth0").is_none(), "pod interface left behind");
    assert!(
        lab.allocation_files().is_empty(),
        "{:?}",
        lab.allocation_files()
    );
    // The runtime's DEL after a failed ADD is fine.
    assert_eq!(lab.ok("DEL", json!({})), "");
}
