//! ServiceRoute data-plane benchmark: programs the agent's service maps with the agent's own
//! code (`services::elements`, `kernel::services::apply`) inside throwaway network namespaces
//! and measures full syncs, one-backend changes and the connection rate through a virtual IP.
//!
//! `cargo bench -p switchyard-agent --bench dataplane [-- --sizes 1000,10000,100000]` (root;
//! needs `ip`, `nft`). The read-back is measured over netlink (what a restarted agent does)
//! and, up to [`NFT_READBACK_MAX`] routes, through `nft -j list` as the same-run baseline.
//!
//! Topology (all names start with `sybench<pid>`, all addresses in 198.18.0.0/15, no default
//! routes): the client namespace `…c` (198.18.0.2/30) and the server namespace `…s`
//! (198.18.0.6/30 plus the backends 198.18.128.1–10/32) hang off the router namespace
//! `sybench<pid>` (198.18.0.1/30, 198.18.0.5/30), which holds `inet switchyard` and DNATs the
//! virtual IPs (198.19.0.0/16). The binary re-executes itself through `ip netns exec` for the
//! router, client and echo-server roles; the outer process deletes the namespaces at the end.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use switchyard_agent::kernel::services as ksvc;
use switchyard_agent::kernel::{dump, netlink};
use switchyard_agent::service_table::ServiceTable;
use switchyard_agent::services::{Backend, Elements, Key, Proto, RouteDesired, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/heap.rs"]
mod heap;
use heap::heap;

/// `VmRSS` and `VmHWM` (peak) of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const NODE: &str = "bench-node";
const BACKENDS: usize = 10;
const SIZES: [usize; 3] = [1_000, 5_000, 10_000];
/// Largest size whose read-back (3 s at 10,000) and one-backend change are also measured
/// through `nft`.
const NFT_READBACK_MAX: usize = 10_000;
const CHANGE_ROUNDS: usize = 20;
const CONNECTIONS: usize = 30_000;
const CONN_WARMUP: usize = 100;
const CONN_CONCURRENCY: usize = 4;
const CONN_LIMIT: Duration = Duration::from_secs(30);
/// Bound on the whole router phase (the outer process kills it after this).
const ROUTER_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Bound on the echo server's life.
const ECHO_LIMIT: Duration = Duration::from_secs(30 * 60);
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let role = args
        .iter()
        .position(|a| a == "--role")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let rest: Vec<String> = args
        .iter()
        .skip_while(|a| *a != "--role")
        .skip(2)
        .cloned()
        .collect();
    match role {
        None => outer(),
        Some("router") => runtime()?.block_on(router(&rest)),
        Some("client") => runtime()?.block_on(client(&rest)),
        Some("echo") => runtime()?.block_on(echo()),
        Some(other) => bail!("unknown role {other}"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// Outer process: namespaces, links, roles, cleanup.

fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawning {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn outer() -> Result<()> {
    let base = format!("sybench{}", std::process::id());
    let (r, c, s) = (base.clone(), format!("{base}c"), format!("{base}s"));
    let mut echo_child: Option<Child> = None;
    let res = run_outer(&r, &c, &s, &mut echo_child);
    if let Some(mut ch) = echo_child {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    for ns in [&c, &s, &r] {
        let _ = sh("ip", &["netns", "del", ns]);
    }
    res
}

fn run_outer(r: &str, c: &str, s: &str, echo_child: &mut Option<Child>) -> Result<()> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("executable path is not UTF-8")?;
    for ns in [r, c, s] {
        sh("ip", &["netns", "add", ns])?;
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    }
    // client <-> router, server <-> router.
    sh(
        "ip",
        &[
            "-n", r, "link", "add", "c1", "type", "veth", "peer", "name", "c0", "netns", c,
        ],
    )?;
    sh(
        "ip",
        &[
            "-n", r, "link", "add", "s1", "type", "veth", "peer", "name", "s0", "netns", s,
        ],
    )?;
    sh(
        "ip",
        &["-n", r, "addr", "add", "198.18.0.1/30", "dev", "c1"],
    )?;
    sh(
        "ip",
        &["-n", r, "addr", "add", "198.18.0.5/30", "dev", "s1"],
    )?;
    sh(
        "ip",
        &["-n", c, "addr", "add", "198.18.0.2/30", "dev", "c0"],
    )?;
    sh(
        "ip",
        &["-n", s, "addr", "add", "198.18.0.6/30", "dev", "s0"],
    )?;
    for i in 1..=BACKENDS {
        sh(
            "ip",
            &[
                "-n",
                s,
                "addr",
                "add",
                &format!("198.18.128.{i}/32"),
                "dev",
                "s0",
            ],
        )?;
    }
    for (ns, dev) in [(r, "c1"), (r, "s1"), (c, "c0"), (s, "s0")] {
        sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
    }
    sh(
        "ip",
        &[
            "-n",
            r,
            "route",
            "add",
            "198.18.128.0/17",
            "via",
            "198.18.0.6",
        ],
    )?;
    sh(
        "ip",
        &[
            "-n",
            c,
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            "198.18.0.1",
        ],
    )?;
    sh(
        "ip",
        &[
            "-n",
            s,
            "route",
            "add",
            "198.18.0.0/30",
            "via",
            "198.18.0.5",
        ],
    )?;
    sh(
        "ip",
        &["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
    )?;
    // Many short connections from one address: reuse TIME_WAIT ports, widen the range.
    sh(
        "ip",
        &[
            "netns",
            "exec",
            c,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=10000 65000",
        ],
    )?;
    *echo_child = Some(
        Command::new("ip")
            .args(["netns", "exec", s, exe, "--role", "echo"])
            .stdin(Stdio::null())
            .spawn()?,
    );
    let mut router = Command::new("ip")
        .args([
            "netns",
            "exec",
            r,
            exe,
            "--role",
            "router",
            c,
            &sizes_arg()?,
        ])
        .stdin(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    loop {
        if let Some(st) = router.try_wait()? {
            if !st.success() {
                bail!("router phase failed: {st}");
            }
            return Ok(());
        }
        if start.elapsed() > ROUTER_LIMIT {
            let _ = router.kill();
            let _ = router.wait();
            bail!("router phase exceeded {ROUTER_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Echo server (server namespace).

async fn echo() -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", TARGET_PORT)).await?;
    let deadline = tokio::time::Instant::now() + ECHO_LIMIT;
    loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
        let Ok(Ok((mut sock, _))) = accepted else {
            return Ok(());
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async move {
                let mut buf = [0u8; 64];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Client (client namespace): `--role client <addr> <port> <n>`; prints `<done> <failed> <secs>`.

async fn one_connection(addr: SocketAddr) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        anyhow::Ok(())
    })
    .await?
}

async fn client(args: &[String]) -> Result<()> {
    let (Some(ip), Some(port), Some(n)) = (args.first(), args.get(1), args.get(2)) else {
        bail!("usage: --role client <addr> <port> <n>");
    };
    let addr = SocketAddr::new(ip.parse()?, port.parse()?);
    let n: usize = n.parse()?;
    for _ in 0..CONN_WARMUP {
        one_connection(addr).await.context("warm-up connection")?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONN_CONCURRENCY {
        let (next, failed, done) = (next.clone(), failed.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n && start.elapsed() < CONN_LIMIT {
                match one_connection(addr).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} {} {secs}",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Router (router namespace): the measurements.

fn vip(i: usize) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    IpAddr::V4(Ipv4Addr::from(base + 1 + i as u32))
}

fn backend_ip(i: usize, j: usize) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(198, 18, 128, 0));
    IpAddr::V4(Ipv4Addr::from(
        base + 1 + ((i * BACKENDS + j) % 32_000) as u32,
    ))
}

fn key(i: usize) -> Key {
    Key {
        vip: vip(i),
        proto: Proto::Tcp,
        port: PORT,
    }
}

/// The elements of `routes` routes of `BACKENDS` backends each.
fn target(routes: usize) -> Elements {
    let mut table = ServiceTable::new(NODE);
    for i in 0..routes {
        table.set_route(&format!("bench/route-{i}"), Some(route(i, false)));
    }
    table.elements()
}

async fn nft_delete_table() {
    let _ = tokio::process::Command::new("nft")
        .args(["delete", "table", "inet", "switchyard"])
        .output()
        .await;
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

struct SizeResult {
    routes: usize,
    elements: usize,
    sync_s: f64,
    readback_s: f64,
    nft_readback_s: Option<f64>,
    change_median_ms: f64,
    change_max_ms: f64,
    compute_median_ms: f64,
    netlink_median_ms: f64,
    nft_median_ms: f64,
    /// The read-back's time by group of sets: (group, sets, elements, seconds).
    readback_groups: Vec<(String, usize, usize, f64)>,
    /// Heap bytes the agent's `ServiceTable` holds, per route.
    table_bytes_per_route: f64,
    /// This process's RSS after the full sync and its peak so far, MiB.
    rss_mib: (f64, f64),
}

/// `nft -f -` with `script` (what `kernel::services::apply` runs).
async fn nft_f(script: &str) -> Result<()> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Route `i` as the agent's table holds it; with `short`, its last backend is gone.
fn route(i: usize, short: bool) -> RouteDesired {
    let mut backends: Vec<Backend> = (0..BACKENDS)
        .map(|j| Backend {
            ip: backend_ip(i, j),
            port: TARGET_PORT,
            node: Some(if j == 0 { NODE } else { "remote" }.to_string()),
        })
        .collect();
    if short {
        backends.pop();
    }
    backends.sort();
    backends.dedup();
    RouteDesired {
        services: [(
            key(i),
            Service {
                route: format!("bench/route-{i}"),
                backends,
                ..Default::default()
            },
        )]
        .into(),
        access: None,
    }
}

async fn measure_size(routes: usize) -> Result<SizeResult> {
    nft_delete_table().await;
    // Full sync: every route into the agent's table, then one transaction from empty.
    let live0 = heap();
    let t = Instant::now();
    let mut table = ServiceTable::new(NODE);
    for i in 0..routes {
        table.set_route(&format!("bench/route-{i}"), Some(route(i, false)));
    }
    table.settle();
    let table_bytes = heap().saturating_sub(live0);
    let full = table.elements();
    let mut nl = netlink::Socket::open()?;
    ksvc::apply(&mut nl, None, &full).await?;
    let sync_s = t.elapsed().as_secs_f64();
    let rss = rss_mib();
    // Read-back as a restarted agent does it (over netlink), and through `nft -j list` as the
    // baseline where that is affordable. The first netlink read also waits out the kernel's
    // growing of the sets' hash tables after the sync (see `kernel::dump`), so the figure is
    // the second, on a settled table.
    let mut nl_read = netlink::Socket::open()?;
    let mut readback_s = f64::NAN;
    let mut set_times = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        let (back, times) = dump::read_timed(&mut nl_read)?;
        readback_s = t.elapsed().as_secs_f64();
        set_times = times;
        if back != full {
            bail!(
                "netlink read-back differs at {routes} routes: {} elements in the kernel, {} wanted",
                back.len(),
                full.len()
            );
        }
    }
    let nft_readback_s = if routes <= NFT_READBACK_MAX {
        let t = Instant::now();
        let back = ksvc::read_with_nft().await?;
        let s = t.elapsed().as_secs_f64();
        if back != full {
            bail!("nft -j read-back differs at {routes} routes");
        }
        Some(s)
    } else {
        None
    };
    // One backend of one route (in the middle of the table) removed, then added back, the way
    // the agent does it: recompute that route, take the change, apply it.
    let mid = routes / 2;
    let id = format!("bench/route-{mid}");
    let mut nl = netlink::Socket::open()?;
    let mut times = Vec::with_capacity(2 * CHANGE_ROUNDS);
    for _ in 0..CHANGE_ROUNDS {
        for short in [true, false] {
            let t = Instant::now();
            table.set_route(&id, Some(route(mid, short)));
            ksvc::apply_change(&mut nl, &table.take_change()).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let change_max_ms = max(&times);
    // The same changes split in two: the table update and encoding, then the netlink
    // transaction alone; and, for comparison, the same changes as an `nft -f` script.
    let mut compute = Vec::with_capacity(2 * CHANGE_ROUNDS);
    let mut kernel = Vec::with_capacity(2 * CHANGE_ROUNDS);
    let mut nft = Vec::with_capacity(2 * CHANGE_ROUNDS);
    for _ in 0..CHANGE_ROUNDS {
        for short in [true, false] {
            let t = Instant::now();
            table.set_route(&id, Some(route(mid, short)));
            let change = table.take_change();
            let batch = netlink::batch(&change.diff);
            compute.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            nl.apply(&batch)?;
            kernel.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    // Each `nft` run lists every set of the table first (see `kernel::netlink`), which costs
    // seconds beyond `NFT_READBACK_MAX` routes: not measured there (NaN).
    let nft_rounds = if routes <= NFT_READBACK_MAX {
        CHANGE_ROUNDS
    } else {
        0
    };
    for _ in 0..nft_rounds {
        for short in [true, false] {
            table.set_route(&id, Some(route(mid, short)));
            let script = ksvc::script(&table.take_change().diff, &Elements::default(), false);
            let t = Instant::now();
            nft_f(&script).await?;
            nft.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    if dump::read(&mut nl)? != table.elements() {
        bail!("after the changes the kernel differs from the table at {routes} routes");
    }
    Ok(SizeResult {
        routes,
        elements: full.len(),
        sync_s,
        readback_s,
        nft_readback_s,
        change_median_ms: median(&mut times),
        change_max_ms,
        compute_median_ms: median(&mut compute),
        netlink_median_ms: median(&mut kernel),
        nft_median_ms: median(&mut nft),
        table_bytes_per_route: table_bytes as f64 / routes.max(1) as f64,
        readback_groups: groups(&set_times),
        rss_mib: rss,
    })
}

/// Read-back times summed by set name without its family and shard (`backends_v4_s3` →
/// `backends`).
fn groups(times: &[dump::SetTime]) -> Vec<(String, usize, usize, f64)> {
    let mut by: std::collections::BTreeMap<String, (usize, usize, f64)> = Default::default();
    for t in times {
        let base = t.set.split("_v").next().unwrap_or(t.set).to_string();
        let e = by.entry(base).or_default();
        e.0 += 1;
        e.1 += t.elements;
        e.2 += t.seconds;
    }
    let mut v: Vec<_> = by.into_iter().map(|(k, (n, e, s))| (k, n, e, s)).collect();
    v.sort_by(|a, b| b.3.total_cmp(&a.3));
    v
}

struct RateResult {
    label: &'static str,
    routes: usize,
    done: usize,
    failed: usize,
    secs: f64,
}

impl RateResult {
    fn rate(&self) -> f64 {
        self.done as f64 / self.secs
    }
}

async fn measure_rate(client_ns: &str, label: &'static str, routes: usize) -> Result<RateResult> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("executable path is not UTF-8")?;
    let vip = vip(0).to_string();
    let port = PORT.to_string();
    let n = CONNECTIONS.to_string();
    let out = tokio::time::timeout(
        CONN_LIMIT + Duration::from_secs(30),
        tokio::process::Command::new("ip")
            .args([
                "netns", "exec", client_ns, exe, "--role", "client", &vip, &port, &n,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("client timed out")??;
    if !out.status.success() {
        bail!(
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    let (Some(done), Some(failed), Some(secs)) = (f.first(), f.get(1), f.get(2)) else {
        bail!("client printed {text:?}");
    };
    Ok(RateResult {
        label,
        routes,
        done: done.parse()?,
        failed: failed.parse()?,
        secs: secs.parse()?,
    })
}

/// The sizes to measure, comma-separated: `--sizes` of the command line, else [`SIZES`].
fn sizes_arg() -> Result<String> {
    let args: Vec<String> = std::env::args().collect();
    let given = args
        .iter()
        .position(|a| a == "--sizes")
        .map(|i| {
            args.get(i + 1)
                .context("--sizes needs a list, e.g. 1000,10000")
        })
        .transpose()?;
    let list = match given {
        Some(l) => l.clone(),
        None => SIZES.map(|n| n.to_string()).join(","),
    };
    for n in list.split(',') {
        n.parse::<usize>()
            .with_context(|| format!("--sizes {list}: {n:?} is not a route count"))?;
    }
    Ok(list)
}

async fn router(args: &[String]) -> Result<()> {
    let client_ns = args.first().context("client namespace")?.clone();
    let wanted: Vec<usize> = args
        .get(1)
        .context("sizes")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let mut sizes = Vec::new();
    for routes in wanted {
        eprintln!("dataplane: full sync and one-backend changes at {routes} routes");
        sizes.push(measure_size(routes).await?);
    }

    // Connection rate: 10 routes, 10,000 routes, 10 routes again (each a diff from the last).
    nft_delete_table().await;
    let small = target(10);
    let big = target(10_000);
    let mut nl = netlink::Socket::open()?;
    ksvc::apply(&mut nl, None, &small).await?;
    // A discarded first run: right after the 10,000-route table was deleted above, the
    // kernel is still releasing it, and the first run also warms caches and neighbours.
    eprintln!("dataplane: connection rate, warm-up (discarded)");
    let warmup = measure_rate(&client_ns, "warm-up (discarded)", 10).await?;
    // 10, 10,000, 10, 10,000, 10 routes: each loaded run has a baseline on either side, so
    // drift from the rest of the machine shows up as a difference between baselines.
    let mut rates = Vec::new();
    let mut installed = &small;
    for (label, routes) in [
        ("baseline 1", 10),
        ("loaded 1", 10_000),
        ("baseline 2", 10),
        ("loaded 2", 10_000),
        ("baseline 3", 10),
    ] {
        let want = if routes == 10 { &small } else { &big };
        ksvc::apply(&mut nl, Some(installed), want).await?;
        installed = want;
        eprintln!("dataplane: connection rate, {label}, {routes} routes");
        rates.push(measure_rate(&client_ns, label, routes).await?);
    }
    nft_delete_table().await;

    print_report(&sizes, &warmup, &rates);
    Ok(())
}

fn print_report(sizes: &[SizeResult], warmup: &RateResult, rates: &[RateResult]) {
    println!();
    println!(
        "| routes × backends | elements | full sync from empty | read-back over netlink (`nft -j list` + parse, same run) | one-backend change: `apply_change()`, median of {} (max) | of which table update + encoding | of which netlink transaction (the kernel's share) | the same change through `nft -f` | table heap per route | RSS after sync (peak) |",
        2 * CHANGE_ROUNDS
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for s in sizes {
        println!(
            "| {} × {BACKENDS} | {} | {:.2} s | {:.3} s ({}) | {:.2} ms ({:.1} ms) | {:.3} ms | {:.3} ms | {:.1} ms | {:.0} B | {:.0} MiB ({:.0} MiB) |",
            s.routes,
            s.elements,
            s.sync_s,
            s.readback_s,
            s.nft_readback_s.map_or("not measured".into(), |n| format!(
                "{n:.2} s, ratio {:.3}",
                s.readback_s / n
            )),
            s.change_median_ms,
            s.change_max_ms,
            s.compute_median_ms,
            s.netlink_median_ms,
            s.nft_median_ms,
            s.table_bytes_per_route,
            s.rss_mib.0,
            s.rss_mib.1
        );
    }
    for s in sizes {
        let parts: Vec<String> = s
            .readback_groups
            .iter()
            .take(4)
            .map(|(g, n, e, t)| format!("{g} ({n} sets, {e} elements) {t:.3} s"))
            .collect();
        println!();
        println!(
            "Read-back at {} routes, slowest sets: {}.",
            s.routes,
            parts.join("; ")
        );
    }
    let first = sizes.first();
    let last = sizes.last();
    if let (Some(a), Some(b)) = (first, last) {
        println!();
        println!(
            "One-backend change ratio {}/{} routes: {:.2} (median {:.2} ms / {:.2} ms); \
             table update alone {:.2}, netlink alone {:.2}, `nft -f` alone {:.2}. Targets at {} × {BACKENDS}: full sync under 10 s ({}); \
             change under 5 ms ({}); read-back under 1 s ({}).",
            b.routes,
            a.routes,
            b.change_median_ms / a.change_median_ms,
            b.change_median_ms,
            a.change_median_ms,
            b.compute_median_ms / a.compute_median_ms,
            b.netlink_median_ms / a.netlink_median_ms,
            b.nft_median_ms / a.nft_median_ms,
            b.routes,
            if b.sync_s < 10.0 { "met" } else { "missed" },
            if b.change_median_ms < 5.0 {
                "met"
            } else {
                "missed"
            },
            if b.readback_s < 1.0 { "met" } else { "missed" },
        );
    }
    println!();
    println!(
        "| connection rate run | routes installed | connections | failed | time | connections/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in std::iter::once(warmup).chain(rates) {
        println!(
            "| {} | {} | {} | {} | {:.2} s | {:.0} |",
            r.label,
            r.routes,
            r.done,
            r.failed,
            r.secs,
            r.rate()
        );
    }
    let mean = |routes: usize| {
        let v: Vec<f64> = rates
            .iter()
            .filter(|r| r.routes == routes)
            .map(RateResult::rate)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let bases: Vec<f64> = rates
        .iter()
        .filter(|r| r.routes == 10)
        .map(RateResult::rate)
        .collect();
    let spread = (bases.iter().copied().fold(f64::NAN, f64::max)
        / bases.iter().copied().fold(f64::NAN, f64::min)
        - 1.0)
        * 100.0;
    let ratio = mean(10_000) / mean(10);
    // Each loaded run against the mean of the baselines on either side of it.
    let local: Vec<String> = rates
        .windows(3)
        .filter(|w| w[1].routes == 10_000)
        .map(|w| format!("{:.3}", 2.0 * w[1].rate() / (w[0].rate() + w[2].rate())))
        .collect();
    println!();
    println!(
        "Connection rate ratio 10,000/10 routes: {ratio:.3} (mean of loaded runs over mean of \
         baselines); each loaded run against its neighbouring baselines: {}; baselines spread \
         {spread:.1} %. Target within 10 %: {}.",
        local.join(", "),
        if (ratio - 1.0).abs() <= 0.10 {
            "met"
        } else {
            "missed"
        },
    );
    println!();
    println!(
        "Command: `cargo bench -p switchyard-agent --bench dataplane` ({CONNECTIONS} connections \
         per rate run after {CONN_WARMUP} warm-up, {CONN_CONCURRENCY} at a time, each connect + \
         4-byte echo + close; client and server namespaces routed through the namespace \
         holding `inet switchyard`)."
    );
}
