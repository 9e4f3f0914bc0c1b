//! Cluster DNS benchmark: the agent's own DNS server (`dns::server`) on one core, answering
//! from a snapshot of N synthetic ServiceRoutes built by the agent's own `dns::records::build`,
//! under `dnsperf` on the other core; and the snapshot's memory at N routes.
//!
//! `cargo bench -p switchyard-agent --bench dns [-- --routes 10000 --seconds 5 --rate 30000]`
//! (needs `dnsperf` and `taskset`; 2 cores or more).
//!
//! Traffic stays on loopback (127.0.0.1, a port the kernel picks). Every dnsperf run is bounded
//! by `--seconds`; the server lives at most `SERVER_LIMIT`.
//!
//! Same-run baseline: an echo responder on the same core, same socket set-up and runtime, that
//! answers each datagram with a fixed 12-byte header (no parsing, no lookup). Its rate is the
//! I/O floor of this machine; the report gives Switchyard's rate as a ratio of it, so that the
//! figure carries across machines and noisy neighbours.

use std::alloc::System;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use prometheus_client::registry::Registry;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use switchyard_agent::dns::forward::Forwarder;
use switchyard_agent::dns::records::{self, Inputs, Snapshot};
use switchyard_agent::dns::server::{self, Dns, DnsMetrics};
use switchyard_api::ServiceRoute;

/// Counts heap allocations (for the snapshot's memory).
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes in use now.
fn heap() -> usize {
    let s = ALLOC.stats();
    let net = s.bytes_allocated as i128 + s.bytes_reallocated as i128 - s.bytes_deallocated as i128;
    usize::try_from(net).unwrap_or(0)
}

const NS: &str = "bench";
const SERVER_LIMIT: Duration = Duration::from_secs(30 * 60);

struct Opts {
    routes: usize,
    seconds: u64,
    rate: u32,
}

fn opts() -> Result<Opts> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    Ok(Opts {
        routes: get("--routes")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(10_000),
        seconds: get("--seconds")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(5),
        rate: get("--rate")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(30_000),
    })
}

/// Route `i`: a virtual IP in 198.19.0.0/16 and two named ports.
fn route(i: usize) -> Result<ServiceRoute> {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i as u32);
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ServiceRoute",
        "metadata": {"name": format!("route-{i}"), "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": format!("route-{i}")}},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]
        },
        "status": {
            "virtualIPs": [vip.to_string()],
            "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]
        }
    }))?)
}

/// The snapshot of `n` routes, its build time and its heap bytes.
fn build(n: usize) -> Result<(Snapshot, Duration, usize)> {
    let routes: Vec<ServiceRoute> = (0..n).map(route).collect::<Result<_>>()?;
    let refs: Vec<&ServiceRoute> = routes.iter().collect();
    let slices: Vec<&EndpointSlice> = Vec::new();
    let before = heap();
    let t0 = Instant::now();
    let snap = records::build(&Inputs {
        cluster_domain: "cluster.local",
        ttl: 5,
        serial: 1,
        routes: &refs,
        slices: &slices,
        namespaces: &[NS, "default"],
        pod_cidrs: &[],
        services: &[],
        service_slices: &[],
    });
    let took = t0.elapsed();
    let bytes = heap().saturating_sub(before);
    if snap.routes != n {
        bail!("snapshot holds {} routes, {n} expected", snap.routes);
    }
    Ok((snap, took, bytes))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn pin(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// Serves `snap` on `addr` the way the agent does (`server::spawn`: one thread with its own
/// single-threaded runtime per UDP socket; one socket here), on CPU 0.
fn serve_switchyard(snap: Snapshot, addr: SocketAddr) -> Result<()> {
    pin(0)?;
    let mut reg = Registry::default();
    let metrics = DnsMetrics::register(&mut reg);
    let dns = Arc::new(Dns::new(
        Forwarder::new(Vec::new(), Duration::from_secs(1), 0),
        metrics,
    ));
    dns.install(snap);
    let serving = server::spawn(dns, server::bind(addr, 1)?)?;
    runtime()?.block_on(async move {
        tokio::time::timeout(SERVER_LIMIT, serving).await.ok();
    });
    Ok(())
}

/// The baseline: a fixed 12-byte answer per datagram, same runtime and socket options.
fn serve_echo(addr: SocketAddr) -> Result<()> {
    pin(0)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let sock = tokio::net::UdpSocket::bind(addr).await?;
        let mut buf = vec![0u8; 65535];
        let until = Instant::now() + SERVER_LIMIT;
        while Instant::now() < until {
            let (n, peer) = sock.recv_from(&mut buf).await?;
            if n < 12 {
                continue;
            }
            let mut out = [0u8; 12];
            out[..2].copy_from_slice(&buf[..2]);
            out[2] = 0x84 | (buf[2] & 0x01);
            out[3] = 0x83;
            let _ = sock.send_to(&out, peer).await;
        }
        Ok(())
    })
}

struct Run {
    qps: f64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
}

fn dnsperf(addr: SocketAddr, file: &Path, seconds: u64, rate: Option<u32>) -> Result<Run> {
    let mut c = Command::new("taskset");
    c.args(["-c", "1", "dnsperf", "-s"])
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .arg("-d")
        .arg(file)
        .args(["-l", &seconds.to_string(), "-t", "2"]);
    match rate {
        Some(r) => c.args(["-Q", &r.to_string(), "-v"]),
        None => c.args(["-q", "200"]),
    };
    let out = c.output().context("run dnsperf (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "dnsperf failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let mut lat: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() - 1) as f64 * p).round() as usize] * 1000.0
    };
    Ok(Run {
        qps: field("Queries per second"),
        lost: field("Queries lost") as u64,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
    })
}

fn free_port() -> Result<SocketAddr> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?)
}

fn write_queries(dir: &Path, n: usize) -> Result<(PathBuf, PathBuf)> {
    let names = dir.join("names.txt");
    let misses = dir.join("misses.txt");
    let step = (n / 1000).max(1);
    let mut a = String::new();
    let mut b = String::new();
    for i in (0..n).step_by(step) {
        a.push_str(&format!("route-{i}.{NS}.svc.cluster.local A\n"));
        b.push_str(&format!(
            "route-{i}.{NS}.svc.cluster.local.{NS}.svc.cluster.local A\n"
        ));
    }
    std::fs::write(&names, a)?;
    std::fs::write(&misses, b)?;
    Ok((names, misses))
}

fn main() -> Result<()> {
    let o = opts()?;
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        bail!("needs 2 cores: the server on CPU 0, dnsperf on CPU 1");
    }
    let dir = std::env::temp_dir().join(format!("sydnsbench{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (names, misses) = write_queries(&dir, o.routes)?;

    let (snap, took, bytes) = build(o.routes)?;
    let per_route = bytes as f64 / o.routes as f64;
    println!(
        "snapshot of {} routes: built in {:.1} ms, {:.1} MiB heap ({per_route:.0} bytes per route), {} names",
        o.routes,
        took.as_secs_f64() * 1000.0,
        bytes as f64 / 1048576.0,
        snap.len()
    );

    let echo_addr = free_port()?;
    std::thread::spawn(move || serve_echo(echo_addr));
    let sy_addr = free_port()?;
    std::thread::spawn(move || serve_switchyard(snap, sy_addr));
    std::thread::sleep(Duration::from_millis(300));

    println!(
        "| queries | server | QPS (flat out) | lost | p50 / p99 at {} QPS (ms) |",
        o.rate
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut ratios = Vec::new();
    for (what, file) in [("cluster names", &names), ("search-path misses", &misses)] {
        let base = dnsperf(echo_addr, file, o.seconds, None)?;
        let flat = dnsperf(sy_addr, file, o.seconds, None)?;
        let paced = dnsperf(sy_addr, file, o.seconds, Some(o.rate))?;
        let base_paced = dnsperf(echo_addr, file, o.seconds, Some(o.rate))?;
        println!(
            "| {what} | echo baseline | {:.0} | {} | {:.3} / {:.3} |",
            base.qps, base.lost, base_paced.p50_ms, base_paced.p99_ms
        );
        println!(
            "| {what} | Switchyard | {:.0} | {} | {:.3} / {:.3} |",
            flat.qps, flat.lost, paced.p50_ms, paced.p99_ms
        );
        ratios.push((what, flat.qps / base.qps.max(1.0)));
    }
    for (what, r) in ratios {
        println!("ratio Switchyard / echo baseline QPS, {what}: {r:.2}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
