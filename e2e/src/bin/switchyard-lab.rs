//! `switchyard-lab`: the local lab a newcomer runs. A real Kubernetes control plane built from
//! Go modules, nodes and pods as network namespaces, Switchyard's operator and agents.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchyard_e2e::check;
use switchyard_e2e::controlplane::client_from_kubeconfig;
use switchyard_e2e::lab::{Lab, LabOptions, LabState, build_switchyard, sweep_leftovers};
use switchyard_e2e::{netns, podsim, topology};

#[derive(Parser)]
#[command(version, about = "Switchyard's local lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a lab up and keep it up until Ctrl-C (or return once ready with --detach).
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Return once everything is ready, leaving the lab running.
        #[arg(long)]
        detach: bool,
        /// Do not apply examples/.
        #[arg(long)]
        no_examples: bool,
    },
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
    Bench {
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
        /// With --compare: where the SVG plots and the DNS answer comparison go.
        #[arg(long, default_value = "docs/compare")]
        out: PathBuf,
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
    },
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

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up {
            nodes,
            detach,
            no_examples,
        } => {
            if detach && std::env::var_os("SWITCHYARD_LAB_CHILD").is_none() {
                let exe = std::env::current_exe()?;
                std::fs::create_dir_all(switchyard_e2e::lab::LAB_ROOT)?;
                let log_path = PathBuf::from(switchyard_e2e::lab::LAB_ROOT).join("detached.log");
                let log = std::fs::File::create(&log_path)?;
                let mut args = vec!["up".to_string(), "--nodes".into(), nodes.to_string()];
                if no_examples {
                    args.push("--no-examples".into());
                }
                let child = std::process::Command::new(exe)
                    .args(&args)
                    .env("SWITCHYARD_LAB_CHILD", "1")
                    .stdin(std::process::Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?;
                let pid = child.id();
                let deadline = std::time::Instant::now() + Duration::from_secs(1800);
                loop {
                    if let Some(s) = LabState::all()
                        .into_iter()
                        .map(|(_, s)| s)
                        .find(|s| s.pid == pid && s.ready)
                    {
                        println!(
                            "lab {} is up (owner pid {pid}; log {})",
                            s.run,
                            log_path.display()
                        );
                        println!("export KUBECONFIG={}", s.kubeconfig.display());
                        return Ok(ExitCode::SUCCESS);
                    }
                    if !std::path::Path::new(&format!("/proc/{pid}")).exists()
                        || std::time::Instant::now() > deadline
                    {
                        anyhow::bail!("the lab did not come up; see {}", log_path.display());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            eprintln!("switchyard-lab: building what the lab needs and bringing it up ...");
            let lab = Lab::up(LabOptions {
                nodes,
                examples: !no_examples,
                operators: 1,
                webhook: true,
            })
            .await?;
            println!("lab {} is up:", lab.run);
            if let Some(w) = &lab.webhook {
                println!(
                    "  switchyard-webhook on {} (refuses bad PodNetworks and ServiceRoutes)",
                    w.url
                );
            }
            println!(
                "  control plane: etcd, kube-apiserver ({}), kube-controller-manager",
                lab.controlplane.server_url()
            );
            for n in &lab.topology.nodes {
                println!(
                    "  {}: netns {}, {} / {}, switchyard-agent on http://{}:9090",
                    n.name, n.netns, n.ipv4, n.ipv6, n.ipv4
                );
            }
            println!("  switchyard-operator on http://{}", lab.operator_addr(0));
            println!(
                "  kubectl: {}",
                lab.controlplane.binaries().kubectl.display()
            );
            for (what, d) in &lab.timings {
                println!("  {what}: {:.1} s", d.as_secs_f64());
            }
            println!(
                "export KUBECONFIG={}",
                lab.controlplane.kubeconfig().display()
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("switchyard-lab: taking lab {} down", lab.run);
            lab.down().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Down => {
            // `SWITCHYARD_LAB_RUN=<run prefix>` stops that lab only and leaves the others (and
            // their folders) alone.
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
                    let _ = std::fs::remove_dir_all(
                        std::path::Path::new(switchyard_e2e::lab::LAB_ROOT).join(&s.run),
                    );
                }
                println!("lab {} removed", s.run);
            }
            if only.is_none() {
                sweep_leftovers().await;
                let _ = std::fs::remove_dir_all(switchyard_e2e::lab::LAB_ROOT);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { pod, command } => {
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
            let sandbox = podsim::pod_netns(&s.run, p.metadata.uid.as_deref().unwrap_or_default());
            let (program, args) = command
                .split_first()
                .ok_or_else(|| anyhow::anyhow!("no command"))?;
            let program = if program == podsim::TESTPOD_IMAGE {
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
        Command::Bench {
            pods,
            programming,
            compare,
            sizes,
            changes,
            connections,
            dns_seconds,
            out,
            debug_build,
            dns,
            dns_routes,
            dns_rate,
        } => {
            if compare {
                let opts = switchyard_e2e::compare::CompareOptions {
                    sizes: sizes.clone(),
                    changes,
                    connections,
                    dns_seconds,
                    out_dir: Some(out.clone()),
                    release: !debug_build,
                    ..Default::default()
                };
                let command = format!(
                    "switchyard-lab bench --compare --sizes {} --changes {changes} --connections {connections} --dns-seconds {dns_seconds}{}",
                    sizes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    if debug_build { " --debug-build" } else { "" }
                );
                let report = switchyard_e2e::compare::run(&opts).await?;
                println!("{}", switchyard_e2e::compare::markdown(&report, &command));
                for path in switchyard_e2e::compare::write_plots(&report, &out)? {
                    println!("wrote {}", path.display());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let s = live_lab()?;
            let client = client_from_kubeconfig(&s.kubeconfig).await?;
            let nodes: Vec<String> = s.nodes.keys().cloned().collect();
            if dns {
                let (node, netns_name) = s
                    .nodes
                    .iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("the lab has no node"))?;
                let r = switchyard_e2e::bench::dns(
                    &client,
                    &s.run,
                    node,
                    netns_name,
                    dns_routes,
                    dns_seconds,
                    dns_rate,
                )
                .await?;
                let us = |d: Duration| d.as_secs_f64() * 1e6;
                println!(
                    "switchyard-lab bench --dns --dns-routes {dns_routes} --dns-seconds {dns_seconds} --dns-rate {dns_rate}"
                );
                println!(
                    "| queries | QPS (flat out, 1 core) | lost | p50 at {dns_rate}/s | p99 at {dns_rate}/s |"
                );
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
                    r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64
                        / r.routes.max(1) as f64,
                    r.converge.as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(changes) = programming {
                let r = switchyard_e2e::bench::programming(
                    &client,
                    &nodes,
                    changes,
                    Duration::from_secs(30),
                )
                .await?;
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                println!(
                    "programming latency (backend change to Programmed on all {} nodes), {changes} changes: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {:.1} s in all",
                    nodes.len(),
                    ms(r.quantile(0.5)),
                    ms(r.quantile(0.9)),
                    ms(r.quantile(0.99)),
                    ms(r.quantile(1.0)),
                    r.wall.as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let r =
                switchyard_e2e::bench::pod_start(&client, &nodes, pods, Duration::from_secs(300))
                    .await?;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "pod start (created to Ready), {pods} pods over {} nodes: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms; all {pods} Ready after {:.2} s",
                nodes.len(),
                ms(r.quantile(0.5)),
                ms(r.quantile(0.9)),
                ms(r.quantile(0.99)),
                ms(r.quantile(1.0)),
                r.wall.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
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
    }
}
