//! `switchyard-lab conformance`: the upstream Kubernetes e2e suite (`e2e.test`, compiled from
//! the pinned modules) against a real-node lab, focused on one set of tests, with the outcome
//! of every test read from ginkgo's JSON report.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::error::{Error, Result};

/// The pod-networking conformance tests (issue 13).
pub const NETWORKING_PODS: &str =
    r"\[sig-network\] Networking Granular Checks: Pods .*\[Conformance\]";
/// The Services and DNS conformance tests (native Services, issue 17).
pub const SERVICES_AND_DNS: &str = r"\[sig-network\] (Services|DNS) .*\[Conformance\]";

/// One test's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The full name: the container texts and the test's own, space-joined, as ginkgo prints it.
    pub name: String,
    /// `passed`, `failed`, `skipped`, `pending`, `panicked`, `timedout`, `interrupted`, ….
    pub state: String,
    /// How long it ran.
    pub run_time: Duration,
    /// The failure message, when it failed.
    pub failure: Option<String>,
}

impl Outcome {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.state == "passed"
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SuiteReport {
    #[serde(default)]
    spec_reports: Option<Vec<SpecReport>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SpecReport {
    #[serde(default)]
    container_hierarchy_texts: Option<Vec<String>>,
    #[serde(default)]
    leaf_node_text: String,
    #[serde(default)]
    leaf_node_type: String,
    #[serde(default)]
    state: String,
    /// Nanoseconds.
    #[serde(default)]
    run_time: u64,
    #[serde(default)]
    failure: Option<Failure>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Failure {
    #[serde(default)]
    message: String,
}

/// The tests (`It` nodes) of a ginkgo `--json-report`; suite setup and teardown nodes are left
/// out unless they failed (a failed BeforeSuite is why every test was skipped).
pub fn parse_report(text: &str) -> Result<Vec<Outcome>> {
    let suites: Vec<SuiteReport> = serde_json::from_str(text).map_err(|e| Error::Invalid {
        what: "ginkgo JSON report".into(),
        message: e.to_string(),
    })?;
    Ok(suites
        .into_iter()
        .flat_map(|s| s.spec_reports.unwrap_or_default())
        // Tests outside the focus come back `skipped`.
        .filter(|r| r.state != "skipped")
        .filter(|r| {
            r.leaf_node_type == "It" || (r.state != "passed" && !r.leaf_node_type.is_empty())
        })
        .map(|r| {
            let mut parts: Vec<&str> = r
                .container_hierarchy_texts
                .iter()
                .flatten()
                .map(String::as_str)
                .filter(|t| !t.is_empty())
                .collect();
            let leaf = if r.leaf_node_text.is_empty() {
                r.leaf_node_type.as_str()
            } else {
                r.leaf_node_text.as_str()
            };
            parts.push(leaf);
            Outcome {
                name: parts.join(" "),
                state: r.state,
                run_time: Duration::from_nanos(r.run_time),
                failure: r.failure.map(|f| f.message).filter(|m| !m.is_empty()),
            }
        })
        .collect())
}

/// What a run needs.
pub struct Run<'a> {
    /// `e2e.test`.
    pub e2e_test: &'a Path,
    /// The lab's admin kubeconfig.
    pub kubeconfig: &'a Path,
    /// kubectl (some tests shell out to it).
    pub kubectl: &'a Path,
    /// The ginkgo focus regular expression.
    pub focus: &'a str,
    /// Where the report and the suite's log go.
    pub dir: PathBuf,
    /// Bound on the whole run.
    pub timeout: Duration,
}

/// Runs the suite (its output to `dir/e2e.log`) and returns every selected test's outcome.
/// A run that exits non-zero because tests failed still returns their outcomes; only a run
/// with no report is an error.
pub async fn run(r: &Run<'_>) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(&r.dir).map_err(|source| Error::Io {
        op: "create",
        path: r.dir.clone(),
        source,
    })?;
    let report = r.dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    let log_path = r.dir.join("e2e.log");
    let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
        op: "create",
        path: log_path.clone(),
        source,
    })?;
    let log_err = log.try_clone().map_err(|source| Error::Io {
        op: "open",
        path: log_path.clone(),
        source,
    })?;
    let mut cmd = Command::new(r.e2e_test);
    cmd.arg(format!("--kubeconfig={}", r.kubeconfig.display()))
        .arg(format!("--kubectl-path={}", r.kubectl.display()))
        .arg("--provider=skeleton")
        .arg(format!("--ginkgo.focus={}", r.focus))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .arg(format!("--report-dir={}", r.dir.display()))
        .arg(format!("--ginkgo.timeout={}s", r.timeout.as_secs()))
        .args([
            "--ginkgo.no-color",
            "--ginkgo.v",
            "--allowed-not-ready-nodes=0",
        ])
        .arg("--dump-logs-on-failure=false")
        .env("KUBECONFIG", r.kubeconfig)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        what: r.e2e_test.display().to_string(),
        source,
    })?;
    let waited = tokio::time::timeout(
        r.timeout + Duration::from_secs(60),
        child.wait_with_output(),
    )
    .await;
    if waited.is_err() {
        return Err(Error::Timeout {
            what: format!("e2e.test --ginkgo.focus={}", r.focus),
            after: r.timeout,
            last: Some(format!("log: {}", log_path.display())),
        });
    }
    let text = std::fs::read_to_string(&report).map_err(|source| Error::Io {
        op: "read (see the suite's log beside it)",
        path: report.clone(),
        source,
    })?;
    parse_report(&text)
}

/// The outcomes as a Markdown table (test, result, seconds, first line of the failure).
pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut s = String::from("| test | result | seconds | failure |\n| --- | --- | --- | --- |\n");
    for o in outcomes {
        let failure = o
            .failure
            .as_deref()
            .and_then(|f| f.lines().next())
            .unwrap_or("")
            .replace('|', "\\|");
        s.push_str(&format!(
            "| {} | {} | {:.1} | {} |\n",
            o.name.replace('|', "\\|"),
            o.state,
            o.run_time.as_secs_f64(),
            failure
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_ginkgo_report_gives_one_outcome_per_test() {
        let text = r#"[{"SuitePath":"/x","SpecReports":[
            {"ContainerHierarchyTexts":null,"LeafNodeType":"SynchronizedBeforeSuite","LeafNodeText":"","State":"passed","RunTime":1000},
            {"ContainerHierarchyTexts":["[sig-network] Networking","Granular Checks: Pods"],"LeafNodeType":"It","LeafNodeText":"should function for intra-pod communication: http [NodeConformance] [Conformance]","State":"passed","RunTime":12500000000},
            {"ContainerHierarchyTexts":["[sig-network] Networking","Granular Checks: Pods"],"LeafNodeType":"It","LeafNodeText":"should function for node-pod communication: udp [LinuxOnly] [NodeConformance] [Conformance]","State":"failed","RunTime":3000000000,"Failure":{"Message":"Error dialing UDP from node to pod\nmore"}},
            {"ContainerHierarchyTexts":["[sig-network] Networking"],"LeafNodeType":"It","LeafNodeText":"sctp","State":"skipped","RunTime":0}
        ]}]"#;
        let o = parse_report(text).unwrap();
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!(
            o[0].name,
            "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]"
        );
        assert!(o[0].passed());
        assert_eq!(o[0].run_time, Duration::from_millis(12500));
        assert_eq!(o[1].state, "failed");
        assert_eq!(
            o[1].failure.as_deref(),
            Some("Error dialing UDP from node to pod\nmore")
        );
        let md = markdown(&o);
        assert!(
            md.contains("| failed | 3.0 | Error dialing UDP from node to pod |"),
            "{md}"
        );
    }

    #[test]
    fn a_failed_suite_setup_is_reported() {
        let text = r#"[{"SpecReports":[{"LeafNodeType":"SynchronizedBeforeSuite","State":"failed","Failure":{"Message":"nodes not ready"}}]}]"#;
        let o = parse_report(text).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].name, "SynchronizedBeforeSuite");
        assert!(!o[0].passed());
    }

    #[test]
    fn a_broken_report_is_an_error_naming_it() {
        let e = parse_report("{").unwrap_err().to_string();
        assert!(e.contains("ginkgo JSON report"), "{e}");
    }
}
