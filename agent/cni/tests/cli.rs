#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The built binary as a runtime sees it, for everything that needs no root: environment and
//! stdin in, JSON on stdout, exit code.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use switchyard_cni::protocol::{AgentError, AgentRequest, AgentResponse, AgentStatus};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard-cni");

/// Runs the plugin with exactly `env` (nothing inherited, as a runtime would) and `stdin`.
fn plugin(env: &[(&str, &str)], stdin: &str) -> (String, i32) {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        out.status.code().unwrap(),
    )
}

/// An error result: its code and msg, after checking the envelope.
fn error(stdout: &str, exit: i32) -> (u64, String) {
    assert_eq!(exit, 1, "stdout: {stdout}");
    let v: Value = serde_json::from_str(stdout).unwrap();
    assert!(v["cniVersion"].is_string(), "{v}");
    (
        v["code"].as_u64().unwrap(),
        v["msg"].as_str().unwrap().to_owned(),
    )
}

fn conf(socket: &Path, state: &Path) -> String {
    json!({
        "cniVersion": "1.1.0",
        "name": "switchyard",
        "type": "switchyard-cni",
        "agentSocket": socket,
        "stateDir": state,
    })
    .to_string()
}

/// Answers `count` connections with `answer`, returning what was asked.
fn agent(
    socket: &Path,
    answer: AgentResponse,
    count: usize,
) -> std::thread::JoinHandle<Vec<AgentRequest>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        (0..count)
            .map(|_| {
                let (conn, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                let mut reply = serde_json::to_string(&answer).unwrap();
                reply.push('\n');
                (&conn).write_all(reply.as_bytes()).unwrap();
                serde_json::from_str(&line).unwrap()
            })
            .collect()
    })
}

#[test]
fn version() {
    let (out, exit) = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(exit, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    );
    let (out, exit) = plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(exit, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["cniVersion"],
        "1.1.0"
    );
}

#[test]
fn malformed_stdin_is_code_6_and_says_where() {
    let (out, exit) = plugin(
        &[("CNI_COMMAND", "ADD")],
        "{\"cniVersion\": \"1.1.0\",\n \"name\": \"x\",,}",
    );
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 6);
    assert!(msg.contains("line 2 column"), "{msg}");
}

#[test]
fn bad_command_is_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let stdin = conf(&dir.path().join("a.sock"), dir.path());
    let (out, exit) = plugin(&[], &stdin);
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 4);
    assert!(msg.contains("CNI_COMMAND"), "{msg}");
    let (out, exit) = plugin(&[("CNI_COMMAND", "ATTACH")], &stdin);
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 4);
    assert!(msg.contains("ATTACH"), "{msg}");
}

#[test]
fn missing_attachment_variables_are_code_4_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let stdin = conf(&dir.path().join("a.sock"), dir.path());
    let (out, exit) = plugin(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ],
        &stdin,
    );
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 4);
    assert!(msg.contains("CNI_NETNS"), "{msg}");
}

#[test]
fn unsupported_version_is_code_1() {
    let (out, exit) = plugin(
        &[("CNI_COMMAND", "ADD")],
        r#"{"cniVersion":"0.4.0","name":"switchyard","type":"switchyard-cni"}"#,
    );
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 1);
    assert!(msg.contains("0.4.0"), "{msg}");
}

#[test]
fn invalid_config_is_code_7_naming_the_field() {
    let (out, exit) = plugin(
        &[("CNI_COMMAND", "STATUS")],
        r#"{"cniVersion":"1.0.0","name":"switchyard","type":"switchyard-cni","stateDir":"relative"}"#,
    );
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 7);
    assert!(
        msg.contains("stateDir") && msg.contains("relative"),
        "{msg}"
    );
    // Errors speak the configuration's version.
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["cniVersion"],
        "1.0.0"
    );
}

#[test]
fn status_without_agent_is_code_50() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-listens.sock");
    let (out, exit) = plugin(&[("CNI_COMMAND", "STATUS")], &conf(&socket, dir.path()));
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 50);
    assert!(msg.contains("nobody-listens.sock"), "{msg}");
}

#[test]
fn status_follows_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let ready = agent(
        &socket,
        AgentResponse::Status(AgentStatus {
            ready: true,
            message: "ok".into(),
        }),
        1,
    );
    let (out, exit) = plugin(&[("CNI_COMMAND", "STATUS")], &conf(&socket, dir.path()));
    assert_eq!((out.as_str(), exit), ("", 0));
    assert_eq!(ready.join().unwrap(), vec![AgentRequest::Status]);

    std::fs::remove_file(&socket).unwrap();
    let not_ready = agent(
        &socket,
        AgentResponse::Status(AgentStatus {
            ready: false,
            message: "informers not synced".into(),
        }),
        1,
    );
    let (out, exit) = plugin(&[("CNI_COMMAND", "STATUS")], &conf(&socket, dir.path()));
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 50);
    assert!(msg.contains("informers not synced"), "{msg}");
    not_ready.join().unwrap();
}

#[test]
fn agent_refusal_passes_through() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // Any existing file will do: the agent refuses before the namespace is touched.
    let netns = dir.path().join("netns");
    std::fs::write(&netns, "").unwrap();
    let refusing = agent(
        &socket,
        AgentResponse::Error(AgentError {
            code: 11,
            msg: "pod default/web-0 is not known yet".into(),
            details: "try again once the informer has synced".into(),
        }),
        1,
    );
    let (out, exit) = plugin(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", netns.to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
        ],
        &conf(&socket, dir.path()),
    );
    let (code, msg) = error(&out, exit);
    assert_eq!(code, 11);
    assert!(msg.contains("not known yet"), "{msg}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["details"], "try again once the informer has synced");
    assert_eq!(
        refusing.join().unwrap(),
        vec![AgentRequest::Attach {
            namespace: "default".into(),
            pod: "web-0".into(),
            container_id: "c1".into()
        }]
    );
}

#[test]
fn add_into_a_missing_namespace_is_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let (out, exit) = plugin(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/switchyard-no-such-namespace"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
        ],
        &conf(&dir.path().join("a.sock"), dir.path()),
    );
    assert_eq!(error(&out, exit).0, 3);
}

#[test]
fn gc_with_nothing_to_do_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut c: Value = serde_json::from_str(&conf(&dir.path().join("a.sock"), dir.path())).unwrap();
    c["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (out, exit) = plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &c.to_string(),
    );
    assert_eq!((out.as_str(), exit), ("", 0));
}
