//! Cluster DNS benchmark at two sizes in one run (default 1,000 and 100,000 synthetic
//! ServiceRoutes, 1 in 100 headless with a slice of three backends):
//!
//! - the full build: `dns::records::build` (the snapshot alone) and `dns::incremental::Records::new`
//!   (what the agent builds on first sync and resync: the snapshot plus what each route
//!   contributes), time and heap bytes;
//! - one-route changes handed to `Records` (a route added, its virtual IP changed, the route
//!   removed, a headless route's slice changed, in turn): from the change handed over to the
//!   new snapshot installed in the server (`Dns::install`), median and max;
//! - QPS flat out: the agent's own DNS server (`dns::server`) on CPU 0 serving each size's
//!   snapshot, `dnsperf` on CPU 1, the sizes alternating round by round with an echo
//!   responder as the I/O floor, so the large/small ratio is same-run.
//!
//! `cargo bench -p switchyard-agent --bench dns [-- --sizes 1000,100000 --seconds 5 --rounds 2
//! --changes 200 --rate 30000]` (needs `dnsperf` and `taskset`; 2 cores or more).
//!
//! Traffic stays on loopback (127.0.0.1, ports the kernel picks). Every dnsperf run is bounded
//! by `--seconds`; the servers live at most `SERVER_LIMIT`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prometheus_client::registry::Registry;
use switchyard_agent::dns::forward::Forwarder;
use switchyard_agent::dns::incremental::Records;
use switchyard_agent::dns::records::{self, Found, Inputs, Snapshot};
use switchyard_agent::dns::server::{self, Dns, DnsMetrics};
use switchyard_agent::slim::EndpointSlice;
use switchyard_api::ServiceRoute;

#[path = "support/heap.rs"]
mod heap;
use heap::heap;

const NS: &str = "bench";
const SERVER_LIMIT: Duration = Duration::from_secs(30 * 60);

struct Opts {
    sizes: Vec<usize>,
    seconds: u64,
    rounds: usize,
    changes: usize,
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
    if args.iter().any(|a| a == "--help") {
        println!(
            "dns bench: --sizes 1000,100000 --seconds 5 --rounds 2 --changes 200 --rate 30000"
        );
        std::process::exit(0);
    }
    let sizes = match get("--sizes") {
        Some(v) => v
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<Result<Vec<usize>, _>>()?,
        None => vec![1_000, 100_000],
    };
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("--sizes: route counts above 0");
    }
    let num = |k: &str, d: u64| -> Result<u64> {
        Ok(get(k).map(|v| v.parse()).transpose()?.unwrap_or(d))
    };
    Ok(Opts {
        sizes,
        seconds: num("--seconds", 5)?.clamp(1, 60),
        rounds: num("--rounds", 2)?.clamp(1, 10) as usize,
        changes: num("--changes", 200)?.clamp(4, 100_000) as usize,
        rate: u32::try_from(num("--rate", 30_000)?)?,
    })
}

fn vip(i: usize, g: u32) -> Ipv4Addr {
    // 198.18.0.0/15 holds 131,072 addresses: generation 0 from the bottom, 1 from the top.
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let off = (i as u32) & 0x1_ffff;
    Ipv4Addr::from(if g == 0 {
        base + off
    } else {
        base + 0x1_ffff - off
    })
}

/// Route `i`: a virtual IP in 198.18.0.0/15 and two named ports; headless when `i % 100 == 0`.
fn route(i: usize, g: u32) -> Result<ServiceRoute> {
    let headless = i.is_multiple_of(100);
    let vips: Vec<String> = if headless {
        vec![]
    } else {
        vec![vip(i, g).to_string()]
    };
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ServiceRoute",
        "metadata": {"name": format!("route-{i}"), "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": format!("route-{i}")}},
            "headless": headless,
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]
        },
        "status": {
            "virtualIPs": vips,
            "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]
        }
    }))?)
}

/// The slice of headless route `i`: three ready backends in 198.19.0.0/16, shifted by `g`.
fn slice(i: usize, g: u32) -> Result<EndpointSlice> {
    let base = u32::from(Ipv4Addr::new(198, 19, 0, 0)) + ((i as u32 * 4 + g) & 0xffff);
    let eps: Vec<serde_json::Value> = (0..3)
        .map(|k| {
            serde_json::json!({
                "addresses": [Ipv4Addr::from(base + k).to_string()],
                "conditions": {"ready": true}
            })
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("route-{i}-a"), "namespace": NS,
            "labels": {(records::ROUTE_LABEL): format!("route-{i}")}
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))?)
}

struct Size {
    n: usize,
    build_ms: f64,
    build_bytes: usize,
    names: usize,
    records_ms: f64,
    records_bytes: usize,
    change_us: Vec<f64>,
    records: Records,
}

/// Builds both ways at `n` routes, then times `changes` one-route changes.
fn measure(n: usize, changes: usize) -> Result<Size> {
    let routes: Vec<ServiceRoute> = (0..n).map(|i| route(i, 0)).collect::<Result<_>>()?;
    let refs: Vec<&ServiceRoute> = routes.iter().collect();
    let slices: Vec<EndpointSlice> = (0..n)
        .step_by(100)
        .map(|i| slice(i, 0))
        .collect::<Result<_>>()?;
    let slice_refs: Vec<&EndpointSlice> = slices.iter().collect();
    let input = Inputs {
        cluster_domain: "cluster.local",
        ttl: 5,
        serial: 1,
        routes: &refs,
        slices: &slice_refs,
        namespaces: &[NS, "default"],
        pod_cidrs: &[],
        services: &[],
        service_slices: &[],
    };
    let before = heap();
    let t0 = Instant::now();
    let snap = records::build(&input);
    let build_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let build_bytes = heap().saturating_sub(before);
    if snap.routes != n {
        bail!("snapshot holds {} routes, {n} expected", snap.routes);
    }
    let names = snap.len();
    drop(snap);
    let before = heap();
    let t0 = Instant::now();
    let mut records = Records::new(&input);
    let records_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let records_bytes = heap().saturating_sub(before);
    if records.snapshot(1) != records::build(&input) {
        bail!("Records::new differs from build at {n} routes");
    }

    let dns = Dns::new(
        Forwarder::new(Vec::new(), Duration::from_secs(1), 0),
        DnsMetrics::register(&mut Registry::default()),
    );
    dns.install(records.snapshot(1));
    let mut change_us = Vec::with_capacity(changes);
    let headless: Vec<usize> = (0..n).step_by(100).collect();
    let mut serial = 1u32;
    for c in 0..changes {
        // Changes come in fours on one new route (added, VIP changed, removed) and one
        // headless route's slice; the objects are made before the clock starts.
        let fresh = n + c / 4;
        let id = format!("{NS}/route-{fresh}");
        let (key, expect): (String, Option<Ipv4Addr>) = match c % 4 {
            0 | 1 => {
                let g = (c % 4) as u32;
                let mut r = route(fresh, g)?;
                r.spec.headless = false;
                if let Some(s) = r.status.as_mut() {
                    s.virtual_ips = vec![vip(fresh, g).to_string()];
                }
                serial += 1;
                let t0 = Instant::now();
                records.update_route(&id, Some(&r), &[]);
                dns.install(records.snapshot(serial));
                change_us.push(t0.elapsed().as_secs_f64() * 1e6);
                (
                    format!("route-{fresh}.{NS}.svc.cluster.local."),
                    Some(vip(fresh, g)),
                )
            }
            2 => {
                serial += 1;
                let t0 = Instant::now();
                records.update_route(&id, None, &[]);
                dns.install(records.snapshot(serial));
                change_us.push(t0.elapsed().as_secs_f64() * 1e6);
                (format!("route-{fresh}.{NS}.svc.cluster.local."), None)
            }
            _ => {
                let i = headless[(c / 4) % headless.len()];
                let g = 1 + (c / 4 / headless.len()) as u32;
                let r = route(i, 0)?;
                let s = slice(i, g)?;
                let first = s.endpoints[0].addresses[0].parse::<Ipv4Addr>()?;
                serial += 1;
                let t0 = Instant::now();
                records.update_route(&format!("{NS}/route-{i}"), Some(&r), &[&s]);
                dns.install(records.snapshot(serial));
                change_us.push(t0.elapsed().as_secs_f64() * 1e6);
                let dashed = first.to_string().replace('.', "-");
                (
                    format!("{dashed}.route-{i}.{NS}.svc.cluster.local."),
                    Some(first),
                )
            }
        };
        // The server answers the change.
        let served = dns.current().context("no snapshot served")?;
        let got = match served.find(&key) {
            Found::Node { node, .. } => node.a.first().copied(),
            _ => None,
        };
        if got != expect {
            bail!("change {c}: {key} answers {got:?}, {expect:?} expected");
        }
    }
    Ok(Size {
        n,
        build_ms,
        build_bytes,
        names,
        records_ms,
        records_bytes,
        change_us,
        records,
    })
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

/// Query files of `n` routes: every route's name (at most 100,000, spread over them) and as
/// many search-path misses.
fn write_queries(dir: &Path, n: usize) -> Result<(PathBuf, PathBuf)> {
    let names = dir.join(format!("names-{n}.txt"));
    let misses = dir.join(format!("misses-{n}.txt"));
    let step = (n / 100_000).max(1);
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

fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(((s.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

fn main() -> Result<()> {
    let o = opts()?;
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        bail!("needs 2 cores: the servers on CPU 0, dnsperf on CPU 1");
    }
    let dir = std::env::temp_dir().join(format!("sydnsbench{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    println!(
        "| routes | names | build (snapshot) | heap, bytes/route | Records::new (snapshot + contributions) | heap, bytes/route | one-route change, median / max ({} changes) |",
        o.changes
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut sizes = Vec::new();
    for &n in &o.sizes {
        let s = measure(n, o.changes)?;
        println!(
            "| {} | {} | {:.1} ms | {:.1} MiB, {:.0} | {:.1} ms | {:.1} MiB, {:.0} | {:.0} / {:.0} µs |",
            s.n,
            s.names,
            s.build_ms,
            s.build_bytes as f64 / 1048576.0,
            s.build_bytes as f64 / n as f64,
            s.records_ms,
            s.records_bytes as f64 / 1048576.0,
            s.records_bytes as f64 / n as f64,
            quantile(&s.change_us, 0.5),
            quantile(&s.change_us, 1.0),
        );
        sizes.push(s);
    }

    let echo_addr = free_port()?;
    std::thread::spawn(move || serve_echo(echo_addr));
    let mut servers = Vec::new();
    for s in &sizes {
        let addr = free_port()?;
        let snap = s.records.snapshot(2);
        std::thread::spawn(move || serve_switchyard(snap, addr));
        let (names, misses) = write_queries(&dir, s.n)?;
        servers.push((s.n, addr, names, misses));
    }
    std::thread::sleep(Duration::from_millis(300));

    // (size, kind) → QPS per round.
    let mut qps: std::collections::BTreeMap<(usize, &str), Vec<f64>> = Default::default();
    let mut echo = Vec::new();
    println!();
    println!("| round | server | queries | QPS (flat out) | lost |");
    println!("| --- | --- | --- | --- | --- |");
    for round in 1..=o.rounds {
        let base = dnsperf(echo_addr, &servers[0].2, o.seconds, None)?;
        println!(
            "| {round} | echo baseline | - | {:.0} | {} |",
            base.qps, base.lost
        );
        echo.push(base.qps);
        // Alternate the order of the sizes from round to round.
        let order: Vec<usize> = if round % 2 == 1 {
            (0..servers.len()).collect()
        } else {
            (0..servers.len()).rev().collect()
        };
        for i in order {
            let (n, addr, names, misses) = &servers[i];
            for (kind, file) in [("names", names), ("misses", misses)] {
                let r = dnsperf(*addr, file, o.seconds, None)?;
                println!(
                    "| {round} | {n} routes | {kind} | {:.0} | {} |",
                    r.qps, r.lost
                );
                qps.entry((*n, kind)).or_default().push(r.qps);
            }
        }
    }
    println!();
    println!(
        "| routes | queries | p50 / p99 at {} QPS (ms) | QPS mean, / echo |",
        o.rate
    );
    println!("| --- | --- | --- | --- |");
    let echo_mean = echo.iter().sum::<f64>() / echo.len() as f64;
    for (n, addr, names, misses) in &servers {
        for (kind, file) in [("names", names), ("misses", misses)] {
            let paced = dnsperf(*addr, file, o.seconds, Some(o.rate))?;
            let v = &qps[&(*n, kind)];
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            println!(
                "| {n} | {kind} | {:.3} / {:.3} | {mean:.0}, {:.2} |",
                paced.p50_ms,
                paced.p99_ms,
                mean / echo_mean.max(1.0)
            );
        }
    }
    if let (Some(small), Some(large)) = (o.sizes.first(), o.sizes.last())
        && small != large
    {
        for kind in ["names", "misses"] {
            let (a, b) = (&qps[&(*small, kind)], &qps[&(*large, kind)]);
            let per_round: Vec<String> = a
                .iter()
                .zip(b)
                .map(|(x, y)| format!("{:.3}", y / x.max(1.0)))
                .collect();
            let mean = b.iter().sum::<f64>() / a.iter().sum::<f64>().max(1.0);
            println!(
                "QPS ratio {large} / {small} routes, {kind}: {mean:.3} (rounds: {})",
                per_round.join(", ")
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
