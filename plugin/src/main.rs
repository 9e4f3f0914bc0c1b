//! `kubectl-switchyard`: see the library docs. Run as `kubectl switchyard ...`.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kubectl_switchyard::cluster::Cluster;
use kubectl_switchyard::trace::{Verdict, parse_destination, trace};
use kubectl_switchyard::{Error, Result, status};
use switchyard_api::service_route::Protocol;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl switchyard",
    version,
    about = "Switchyard at a glance: route and network status (problems first), and what a connection from a pod would meet"
)]
struct Args {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace of the pod (and of a route named without one).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every ServiceRoute and PodNetwork; problems (conditions not True, not programmed on
    /// every node, stale status) first.
    Status,
    /// Which rules a new connection from a pod to a route or address meets, and where it lands.
    Trace {
        /// The source pod: NAMESPACE/NAME, or NAME with -n.
        pod: String,
        /// ROUTE or NAMESPACE/ROUTE, a route's DNS name, or ADDRESS:PORT ([IPv6]:PORT).
        destination: String,
        /// Protocol for an ADDRESS:PORT destination.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        protocol: Proto,
    },
}

async fn client(args: &Args) -> Result<(Client, String)> {
    let opts = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let what = args
        .kubeconfig
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "$KUBECONFIG or ~/.kube/config".into());
    let what = match &args.context {
        Some(c) => format!("{what}, context {c}"),
        None => what,
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
                what: what.clone(),
                source: Box::new(e),
            })?;
            Config::from_custom_kubeconfig(kc, &opts).await
        }
        None if args.context.is_some() => Config::from_kubeconfig(&opts).await,
        None => match Config::infer().await {
            Ok(c) => Ok(c),
            Err(e) => {
                return Err(Error::Kubeconfig {
                    what,
                    source: Box::new(e),
                });
            }
        },
    }
    .map_err(|e| Error::Kubeconfig {
        what: what.clone(),
        source: Box::new(e),
    })?;
    let ns = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| Error::Api {
        what: format!("build a client from {what}"),
        source: Box::new(e),
    })?;
    Ok((client, ns))
}

fn split_pod(arg: &str, namespace: &str) -> Result<(String, String)> {
    match arg.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.into(), name.into()))
        }
        Some(_) => Err(Error::Argument {
            argument: "POD",
            value: arg.into(),
            message: "expected NAMESPACE/NAME, or NAME with -n".into(),
        }),
        None => Ok((namespace.into(), arg.into())),
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    let (client, context_ns) = client(&args).await?;
    let namespace = args.namespace.clone().unwrap_or(context_ns);
    match &args.command {
        Command::Status => {
            let c = Cluster::fetch(&client, false).await?;
            let s = status::status(&c);
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Text => print!("{}", status::render(&s)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace {
            pod,
            destination,
            protocol,
        } => {
            let (pod_ns, pod_name) = split_pod(pod, &namespace)?;
            let dest = parse_destination(destination, &pod_ns)?;
            let protocol = match protocol {
                Proto::Tcp => Protocol::Tcp,
                Proto::Udp => Protocol::Udp,
                Proto::Sctp => Protocol::Sctp,
            };
            let c = Cluster::fetch(&client, true).await?;
            let t = trace(&c, &pod_ns, &pod_name, &dest, destination, protocol)?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
                Output::Text => print!("{}", kubectl_switchyard::trace::render(&t)),
            }
            // Like `kubectl auth can-i`: the answer is also the exit status.
            Ok(if t.verdict == Verdict::Allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
