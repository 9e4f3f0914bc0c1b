//! `switchyard-lab`: the local lab a newcomer runs. A real Kubernetes control plane built from
//! Go modules, nodes and pods as network namespaces, Switchyard's operator and agents.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use switchyard_e2e::binaries::build_switchyard;
use switchyard_e2e::check;
use switchyard_e2e::controlplane::{Programs, client_from_kubeconfig, ensure_programs};
use switchyard_e2e::lab::{LAB_ROOT, Lab, LabOptions, LabState, sweep_leftovers};
use switchyard_e2e::{host, netns, podsim, realnode, topology};

#[derive(Parser)]
#[command(version, about = "Switchyard's local lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a lab up and keep it up until Ctrl-C (or return once ready with --detach).
    Up(UpArgs),
    /// Show the labs on this machine.
    Status,
    /// Remove every lab, including leftovers of crashed runs.
    Down,
    /// Run a command inside a pod's network namespace: exec NAMESPACE/POD -- CMD...
    Exec {
        /// NAMESPACE/POD.
        pod: String,
        /// The command (after --).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run the traffic checks against the running lab, one line per path.
    Check,
    /// Measure pod start time (created to Ready) for a burst of pods on the running lab.
    Bench(BenchArgs),
    /// Run upstream Kubernetes conformance tests (e2e.test, built from the pinned modules)
    /// against a lab of its own with real nodes; prints pass/fail per test.
    Conformance(ConformanceArgs),
}

#[derive(Args)]
struct ConformanceArgs {
    /// Which tests: `networking` ([sig-network] Networking Granular Checks: Pods),
    /// `services-dns` ([sig-network] Services and DNS), or a ginkgo focus expression.
    #[arg(long, default_value = "networking")]
    focus: String,
    /// Also write the results as a Markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Bound on the suite's run, in minutes.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
}

#[derive(Args)]
struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Return once everything is ready, leaving the lab running.
    #[arg(long)]
    detach: bool,
    /// Do not apply examples/.
    #[arg(long)]
    no_examples: bool,
    /// Real nodes: a kubelet and containerd per node (built from Go modules), pods started
    /// from OCI images, instead of the pod simulator.
    #[arg(long)]
    real: bool,
    /// GitOps (implies --real): Argo CD, built from its pinned module, installs Switchyard from
    /// a Git repository of the lab and syncs examples/ from it (docs/gitops.md).
    #[arg(long)]
    gitops: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// How many pods.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Instead: programming latency over this many backend changes (Pod Ready or deleted
    /// to the route Programmed on every node).
    #[arg(long)]
    programming: Option<usize>,
    /// Instead: Switchyard side by side with kube-proxy (nftables) and CoreDNS, on a lab
    /// of its own (2 nodes); prints a table of ratios and raw figures.
    #[arg(long)]
    compare: bool,
    /// With --compare: route counts for full sync and one-backend changes.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    sizes: Vec<usize>,
    /// With --compare: backend changes for the programming latency.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// With --compare: connections per connection-rate run.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// With --compare: seconds per dnsperf run.
    #[arg(long, default_value_t = 10)]
    dns_seconds: u64,
    /// With --compare: where the SVG plots and the DNS answer comparison go (default
    /// docs/compare, docs/compare/native with --native).
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --compare: Switchyard serves the same core Services as kube-proxy and CoreDNS
    /// (the agent's --native-services) instead of ServiceRoutes.
    #[arg(long)]
    native: bool,
    /// With --compare: keep the lab's debug builds of the agent and operator instead of
    /// a release build.
    #[arg(long)]
    debug_build: bool,
    /// Instead: the node-local DNS server of the first node, pinned to one core, under
    /// dnsperf for cluster names and search-path misses, and the agent's memory.
    #[arg(long)]
    dns: bool,
    /// With --dns: how many routes to create and serve.
    #[arg(long, default_value_t = 1000)]
    dns_routes: usize,
    /// With --dns: queries per second of the latency run (below the flat-out rate, so the
    /// percentiles measure service time, not queueing).
    #[arg(long, default_value_t = 20_000)]
    dns_rate: u32,
    /// Instead: in steps up to each size, core Services (their slices written by
    /// kube-controller-manager), then as many ServiceRoutes until all are Programmed:
    /// throughput, CPU per process, memory (docs/benchmarks.md, "Operator at scale").
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<usize>>,
    /// With --scale: write the memory chart (SVG) here.
    #[arg(long)]
    scale_plot: Option<PathBuf>,
    /// With --scale: the baseline's cap: core Services only in the steps up to this size,
    /// the routes alone above it (the API server's memory and the time of a run bound how
    /// many objects one lab on this machine can hold).
    #[arg(long)]
    scale_services_up_to: Option<usize>,
    /// With --scale: backend pods every Service and route selects.
    #[arg(long, default_value_t = 10)]
    scale_backends: usize,
    /// With --scale: minutes each phase may take at most.
    #[arg(long, default_value_t = 60)]
    scale_minutes: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-lab: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) if args.detach && std::env::var_os("SWITCHYARD_LAB_CHILD").is_none() => {
            up_detached(&args).await
        }
        Command::Up(args) => up(&args).await,
        Command::Status => Ok(status()),
        Command::Down => down().await,
        Command::Exec { pod, command } => exec(&pod, &command).await,
        Command::Conformance(args) => conformance(&args).await,
        Command::Check => check().await,
        Command::Bench(args) => bench(&args).await,
    }
}

/// Brings a lab up in this process, prints what runs where and what to try, and keeps it up
/// until Ctrl-C or SIGTERM.
async fn up(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let lab = Lab::up(LabOptions {
        nodes: args.nodes,
        examples: !args.no_examples,
        operators: 1,
        webhook: true,
        native_services: true,
        real_nodes: args.real || args.gitops,
        conformance: false,
        gitops: args.gitops,
    })
    .await?;
    let example = if args.no_examples {
        None
    } else {
        example_names(&lab).await
    };
    print_lab(&lab, example);
    // The detached parent stops echoing at this line.
    println!("{UP_MARKER}");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("switchyard-lab: taking lab {} down", lab.run);
    lab.down().await;
    Ok(ExitCode::SUCCESS)
}

/// The last line a lab's owner prints once it is up.
const UP_MARKER: &str = "switchyard-lab: up; `switchyard-lab down` removes it";

/// What runs where, how long each phase took, and a few commands to try next (against the
/// examples' pods and routes when `example` names them).
fn print_lab(lab: &Lab, example: Option<(String, String)>) {
    println!("lab {} is up:", lab.run);
    if let Some(w) = &lab.webhook {
        println!(
            "  switchyard-webhook on {} (refuses bad PodNetworks and ServiceRoutes)",
            w.url
        );
    }
    println!(
        "  control plane: etcd, kube-apiserver ({}), kube-controller-manager, kube-scheduler",
        lab.controlplane.server_url()
    );
    for n in &lab.topology.nodes {
        println!(
            "  {}: netns {}, {} / {}, switchyard-agent on http://{}:9090",
            n.name, n.netns, n.ipv4, n.ipv6, n.ipv4
        );
    }
    if let Some(argo) = &lab.argocd {
        println!(
            "  installed by Argo CD (application controller and repo server, Redis) from {}: Applications {} (charts/switchyard) and {} (networks/); commit in {}",
            argo.repo.url(),
            switchyard_e2e::gitops::PLATFORM_APP,
            switchyard_e2e::gitops::NETWORKS_APP,
            argo.repo.work.display()
        );
        println!(
            "  kubectl get applications -n argocd   # Synced / Healthy, as `argocd app list` shows"
        );
    } else if lab.has_real_nodes() {
        println!(
            "  installed by `helm install switchyard charts/switchyard` (values: {}): the agent DaemonSet, the operator and webhook Deployments in switchyard-system, on the nodes' host network (metrics on :9090, :9091, :9092)",
            lab.dir.join("helm-values.yaml").display()
        );
    } else {
        println!("  switchyard-operator on http://{}", lab.operator_addr(0));
    }
    let timings: Vec<String> = lab
        .timings
        .iter()
        .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
        .collect();
    println!("  took: {}", timings.join(", "));
    let kubectl = lab.controlplane.binaries().kubectl.display().to_string();
    // A binary rebuilt while the lab runs reads as "<path> (deleted)"; the path is still right.
    let lab_bin = std::env::current_exe()
        .map(|p| {
            p.display()
                .to_string()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_else(|_| "switchyard-lab".into());
    println!();
    println!("Try this next (in another shell):");
    println!(
        "  export KUBECONFIG={}",
        lab.controlplane.kubeconfig().display()
    );
    println!("  alias kubectl={kubectl} switchyard-lab={lab_bin}");
    println!("  kubectl get pn                        # pod networks: pools, blocks, Ready");
    if let Some((client_pod, web_vip)) = example {
        println!("  kubectl get sr -n shop                # routes: virtual IPs, endpoints, Ready");
        println!("  kubectl get pods -n shop -o wide      # the pods behind them");
        println!("  switchyard-lab check                  # every traffic path, PASS or FAIL");
        println!(
            "  switchyard-lab exec shop/{client_pod} -- dig +short web.shop.svc.cluster.local"
        );
        println!(
            "  switchyard-lab exec shop/{client_pod} -- switchyard-testpod send tcp {web_vip}:80 hello"
        );
    } else {
        println!("  switchyard-lab check                  # every traffic path, PASS or FAIL");
    }
    println!("  switchyard-lab down                   # remove the lab");
}

/// The example client pod's name and route `shop/web`'s virtual IP, for the commands
/// [`print_lab`] suggests.
async fn example_names(lab: &Lab) -> Option<(String, String)> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(lab.client.clone(), "shop");
    let client_pod = pods
        .list(&kube::api::ListParams::default().labels("app=frontend"))
        .await
        .ok()?
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)?;
    let routes: kube::Api<switchyard_api::ServiceRoute> =
        kube::Api::namespaced(lab.client.clone(), "shop");
    let web_vip = routes
        .get("web")
        .await
        .ok()?
        .status?
        .virtual_ips
        .into_iter()
        .next()?;
    Some((client_pod, web_vip))
}

/// Starts `up` in a child process that owns the lab, echoes its progress (the child logs to
/// a file, which outlives this process) and returns once the lab is up.
async fn up_detached(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(LAB_ROOT)?;
    let log_path = PathBuf::from(LAB_ROOT).join("detached.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child_args = vec!["up".to_string(), "--nodes".into(), args.nodes.to_string()];
    if args.real {
        child_args.push("--real".into());
    }
    if args.gitops {
        child_args.push("--gitops".into());
    }
    if args.no_examples {
        child_args.push("--no-examples".into());
    }
    let mut child = std::process::Command::new(exe)
        .args(&child_args)
        .env("SWITCHYARD_LAB_CHILD", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut echo = LogEcho::open(&log_path)?;
    // A cold first run builds Kubernetes and Switchyard: allow for it.
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let text = echo.more()?;
        if text.contains(UP_MARKER) {
            let ready = LabState::all()
                .into_iter()
                .map(|(_, s)| s)
                .find(|s| s.pid == pid && s.ready);
            if let Some(s) = ready {
                eprintln!(
                    "lab {} runs detached (owner pid {pid}; log {})",
                    s.run,
                    log_path.display()
                );
                println!("export KUBECONFIG={}", s.kubeconfig.display());
                return Ok(ExitCode::SUCCESS);
            }
        }
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            echo.more()?;
            anyhow::bail!("the lab did not come up; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Follows a log file: each call to [`LogEcho::more`] copies what was appended since the last
/// one to this process's stderr and returns everything read so far.
struct LogEcho {
    file: std::fs::File,
    seen: String,
}

impl LogEcho {
    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open(path)?,
            seen: String::new(),
        })
    }

    fn more(&mut self) -> std::io::Result<&str> {
        let mut buf = Vec::new();
        // The file position stays at the end of what was read: the next call reads on from there.
        self.file.read_to_end(&mut buf)?;
        if !buf.is_empty() {
            std::io::stderr().write_all(&buf)?;
            self.seen.push_str(&String::from_utf8_lossy(&buf));
        }
        Ok(&self.seen)
    }
}

fn live_lab() -> anyhow::Result<LabState> {
    let mut labs: Vec<LabState> = LabState::all()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.alive() && s.ready)
        .collect();
    // With several labs side by side, `SWITCHYARD_LAB_RUN=<run prefix>` picks one.
    if let Ok(run) = std::env::var("SWITCHYARD_LAB_RUN") {
        labs.retain(|s| s.run == run);
    }
    match labs.len() {
        0 => anyhow::bail!("no lab is running; start one with `switchyard-lab up`"),
        1 => Ok(labs.remove(0)),
        n => anyhow::bail!("{n} labs are running; stop the extra ones with `switchyard-lab down`"),
    }
}

/// One paragraph per lab recorded on this machine.
fn status() -> ExitCode {
    let labs = LabState::all();
    if labs.is_empty() {
        println!("no labs");
    }
    for (dir, s) in labs {
        let state = if !s.alive() {
            "crashed (run `switchyard-lab down`)"
        } else if s.ready {
            "ready"
        } else {
            "starting"
        };
        println!(
            "lab {}: {state}, owner pid {}, folder {}",
            s.run,
            s.pid,
            dir.display()
        );
        println!("  api server {}", s.server);
        println!("  export KUBECONFIG={}", s.kubeconfig.display());
        for (node, ns) in &s.nodes {
            println!("  {node}: netns {ns}");
        }
    }
    ExitCode::SUCCESS
}

/// Stops every lab's owner (SIGTERM, which takes its lab down) and removes what is left;
/// `SWITCHYARD_LAB_RUN=<run prefix>` stops that lab only and leaves the others (and their
/// folders) alone.
async fn down() -> anyhow::Result<ExitCode> {
    let only = std::env::var("SWITCHYARD_LAB_RUN").ok();
    for (_, s) in LabState::all() {
        if only.as_ref().is_some_and(|r| *r != s.run) {
            continue;
        }
        if s.alive()
            && let Ok(pid) = i32::try_from(s.pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            for _ in 0..60 {
                if !s.alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        topology::remove_run(&s.run).await;
        if only.is_some() {
            let _ = std::fs::remove_dir_all(Path::new(LAB_ROOT).join(&s.run));
        }
        println!("lab {} removed", s.run);
    }
    if only.is_none() {
        sweep_leftovers().await;
        let _ = std::fs::remove_dir_all(LAB_ROOT);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `command` inside pod `NAMESPACE/NAME`'s network namespace; its exit code is ours.
async fn exec(pod: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let s = live_lab()?;
    let (ns, name) = pod
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("expected NAMESPACE/POD, got {pod:?}"))?;
    let client = client_from_kubeconfig(&s.kubeconfig).await?;
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, ns);
    let p = api
        .get(name)
        .await
        .map_err(|e| anyhow::anyhow!("pod {ns}/{name}: {e}"))?;
    let sandbox = realnode::pod_netns(&s.run, &p, s.real_nodes).await?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command"))?;
    let program = if program == podsim::TESTPOD_COMMAND {
        check::sibling(&std::env::current_exe()?, "switchyard-testpod")
            .unwrap_or_else(|| PathBuf::from(program))
    } else {
        PathBuf::from(program)
    };
    let status = netns::command(&sandbox, &program)?
        .args(args)
        .status()
        .await?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

/// `conformance`: a real-node lab (native Services on, the webhook registered, no examples)
/// with the agnhost image on every node, the suite run against it, the lab taken down.
async fn conformance(args: &ConformanceArgs) -> anyhow::Result<ExitCode> {
    use switchyard_e2e::conformance;
    let focus = match args.focus.as_str() {
        "networking" => conformance::NETWORKING_PODS.to_string(),
        "services-dns" => conformance::SERVICES_AND_DNS.to_string(),
        other => other.to_string(),
    };
    eprintln!(
        "switchyard-lab: building e2e.test and agnhost from the pinned Kubernetes modules (first run only)"
    );
    let bins = switchyard_e2e::controlplane::ensure_conformance_binaries().await?;
    let lab = Lab::up(LabOptions {
        nodes: args.nodes,
        examples: false,
        operators: 1,
        webhook: true,
        native_services: true,
        real_nodes: true,
        conformance: true,
        gitops: false,
    })
    .await?;
    // The suite's namespaces are random: they join the default network, as on a cluster.
    let default_net =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/01-podnetwork-default.yaml");
    let ready = async {
        lab.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            &default_net.to_string_lossy(),
        ])
        .await?;
        lab.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=60s",
            "podnetwork/default",
        ])
        .await
    }
    .await;
    if let Err(e) = ready {
        lab.down().await;
        return Err(e.into());
    }
    eprintln!(
        "switchyard-lab: running e2e.test --ginkgo.focus='{focus}' (log: {}/conformance/e2e.log)",
        lab.dir.display()
    );
    let t0 = Instant::now();
    let result = conformance::run(&conformance::Run {
        e2e_test: &bins.e2e_test,
        kubeconfig: lab.controlplane.kubeconfig(),
        kubectl: &lab.controlplane.binaries().kubectl,
        focus: &focus,
        dir: lab.dir.join("conformance"),
        timeout: Duration::from_secs(args.minutes * 60),
    })
    .await;
    let kept = PathBuf::from(LAB_ROOT).join(format!("conformance-{}", lab.run));
    let _ = std::fs::create_dir_all(&kept);
    for f in ["e2e.log", "report.json"] {
        let _ = std::fs::copy(lab.dir.join("conformance").join(f), kept.join(f));
    }
    lab.down().await;
    let outcomes = result?;
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    for o in &outcomes {
        println!("{} {}", o.state.to_uppercase(), o.name);
        if let Some(f) = &o.failure {
            println!("    {}", f.lines().next().unwrap_or_default());
        }
    }
    println!(
        "{passed} of {} passed in {:.0} s (log and report kept in {})",
        outcomes.len(),
        t0.elapsed().as_secs_f64(),
        kept.display()
    );
    if let Some(out) = &args.out {
        std::fs::write(out, conformance::markdown(&outcomes))?;
    }
    Ok(if passed == outcomes.len() && !outcomes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The traffic checks against the running lab, one line per path; fails if any fails.
async fn check() -> anyhow::Result<ExitCode> {
    let s = live_lab()?;
    let client = client_from_kubeconfig(&s.kubeconfig).await?;
    let testpod = match check::sibling(&std::env::current_exe()?, "switchyard-testpod") {
        Some(p) => p,
        None => build_switchyard().await?.testpod,
    };
    let target = check::Target {
        client,
        run: s.run.clone(),
        testpod,
        nodes: s.nodes.keys().cloned().collect(),
        real: s.real_nodes,
    };
    let results = check::run(&target).await?;
    let mut ok = true;
    for (path, passed, detail) in results {
        ok &= passed;
        println!("{} {path}: {detail}", if passed { "PASS" } else { "FAIL" });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One of the benchmarks, by its flags.
async fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.compare {
        return bench_compare(args).await;
    }
    let s = live_lab()?;
    let client = client_from_kubeconfig(&s.kubeconfig).await?;
    if args.dns {
        return bench_dns(args, &s, &client).await;
    }
    let nodes: Vec<String> = s.nodes.keys().cloned().collect();
    if let Some(sizes) = &args.scale {
        println!(
            "switchyard-lab: core Services{}, then ServiceRoutes, up to {sizes:?} of each, over {} backends in {}",
            args.scale_services_up_to
                .map(|c| format!(" (in the steps up to {c})"))
                .unwrap_or_default(),
            args.scale_backends,
            switchyard_e2e::scale::NS
        );
        let r = switchyard_e2e::scale::scale(
            &client,
            &s.run,
            &nodes,
            sizes,
            args.scale_services_up_to.unwrap_or(usize::MAX),
            args.scale_backends,
            Duration::from_secs(args.scale_minutes * 60),
        )
        .await?;
        println!("{}", r.report());
        if let Some(out) = &args.scale_plot {
            std::fs::write(out, r.memory_svg()?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(changes) = args.programming {
        let r =
            switchyard_e2e::bench::programming(&client, &nodes, changes, Duration::from_secs(30))
                .await?;
        println!(
            "programming latency (backend change to Programmed on all {} nodes), {changes} changes: {}; {:.1} s in all",
            nodes.len(),
            r.percentiles(),
            r.wall.as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let pods = args.pods;
    let lab_dir = PathBuf::from(switchyard_e2e::lab::LAB_ROOT).join(&s.run);
    let before = switchyard_e2e::bench::cni_add(&client, &lab_dir, s.real_nodes).await?;
    let r =
        switchyard_e2e::bench::pod_start(&client, &nodes, pods, Duration::from_secs(300)).await?;
    let cni = switchyard_e2e::bench::cni_add(&client, &lab_dir, s.real_nodes)
        .await?
        .since(&before);
    println!(
        "pod start (created to Ready), {pods} pods over {} nodes: {}; all {pods} Ready after {:.2} s",
        nodes.len(),
        r.percentiles(),
        r.wall.as_secs_f64()
    );
    println!(
        "CNI ADD ({}): {}",
        if s.real_nodes {
            "containerd's containerd_cri_sandbox_create_network_seconds"
        } else {
            "the simulator's call of switchyard-cni"
        },
        cni.summary()
    );
    Ok(ExitCode::SUCCESS)
}

/// `bench --compare`: builds the incumbents (kube-proxy, CoreDNS) and dnsperf's package when
/// missing, runs the comparison on a lab of its own, prints the tables and writes the plots.
async fn bench_compare(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    host::ensure_programs(host::BENCH).await?;
    ensure_programs(&[Programs::Incumbents]).await?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.native {
            "docs/compare/native"
        } else {
            "docs/compare"
        })
    });
    let opts = switchyard_e2e::compare::CompareOptions {
        sizes: args.sizes.clone(),
        changes: args.changes,
        connections: args.connections,
        dns_seconds: args.dns_seconds,
        out_dir: Some(out.clone()),
        release: !args.debug_build,
        native: args.native,
        ..Default::default()
    };
    let command = format!(
        "switchyard-lab bench --compare{} --sizes {} --changes {} --connections {} --dns-seconds {}{}",
        if args.native { " --native" } else { "" },
        args.sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.changes,
        args.connections,
        args.dns_seconds,
        if args.debug_build {
            " --debug-build"
        } else {
            ""
        }
    );
    let report = switchyard_e2e::compare::run(&opts).await?;
    println!("{}", switchyard_e2e::compare::markdown(&report, &command));
    for path in switchyard_e2e::compare::write_plots(&report, &out)? {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --dns`: the first node's DNS server under dnsperf, and the agent's memory.
async fn bench_dns(
    args: &BenchArgs,
    s: &LabState,
    client: &kube::Client,
) -> anyhow::Result<ExitCode> {
    host::ensure_programs(host::BENCH).await?;
    let (node, netns_name) = s
        .nodes
        .iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the lab has no node"))?;
    let (routes, seconds, rate) = (args.dns_routes, args.dns_seconds, args.dns_rate);
    let r =
        switchyard_e2e::bench::dns(client, &s.run, node, netns_name, routes, seconds, rate).await?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "switchyard-lab bench --dns --dns-routes {routes} --dns-seconds {seconds} --dns-rate {rate}"
    );
    println!("| queries | QPS (flat out, 1 core) | lost | p50 at {rate}/s | p99 at {rate}/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (what, run) in [
        ("cluster names (A, NOERROR)", &r.hits),
        ("search-path misses (NXDOMAIN)", &r.misses),
    ] {
        println!(
            "| {what} | {:.0} | {} | {:.0} µs | {:.0} µs |",
            run.qps,
            run.lost,
            us(run.p50),
            us(run.p99)
        );
    }
    println!(
        "agent on {}: RSS {} KiB before, {} KiB with {} routes served ({:.1} KiB per route); all answered {:.1} s after the first was created",
        r.node,
        r.rss_before_kib,
        r.rss_after_kib,
        r.routes,
        r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64 / r.routes.max(1) as f64,
        r.converge.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn log_echo_returns_what_was_appended_since_it_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detached.log");
        std::fs::write(&path, "switchyard-lab: [0s] checking the machine\n").unwrap();
        let mut echo = LogEcho::open(&path).unwrap();
        assert_eq!(
            echo.more().unwrap(),
            "switchyard-lab: [0s] checking the machine\n"
        );
        assert!(!echo.more().unwrap().contains(UP_MARKER));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "{UP_MARKER}").unwrap();
        let seen = echo.more().unwrap();
        assert!(seen.starts_with("switchyard-lab: [0s]"), "{seen}");
        assert!(seen.contains(UP_MARKER), "{seen}");
    }
}
