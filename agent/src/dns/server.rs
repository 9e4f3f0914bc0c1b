//! The DNS server's I/O: several UDP sockets on one address (SO_REUSEPORT), each served by a
//! thread of its own with a single-threaded runtime, and a TCP listener, all answering from
//! the current snapshot; forwarded questions run in their own tasks (bounded), so a slow
//! upstream never holds up cluster names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::answer::{Asked, Decision, encode, error_for_bytes, respond};
use super::forward::Forwarder;
use super::records::Snapshot;
use crate::error::{Error, Result};

/// Forwarded questions in flight at once; beyond that, SERVFAIL at once.
const MAX_FORWARDS: usize = 4096;
/// TCP connections served at once.
const MAX_TCP: usize = 512;
/// A TCP connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

type Labels = [(&'static str, &'static str); 2];

/// The DNS metrics, under `switchyard_agent_dns_`.
#[derive(Clone)]
pub struct DnsMetrics {
    /// Queries answered, by `qtype` and `rcode`.
    pub queries: Family<Labels, Counter>,
    /// From a query received to its answer sent.
    pub latency: Histogram,
    /// Upstream attempts that failed (timeouts, errors, SERVFAIL).
    pub upstream_failures: Counter,
    /// Forwarded questions answered from the cache.
    pub cache_hits: Counter,
    /// From an object change to the snapshot that answers it being served.
    pub programming: Histogram,
    /// Owner names in the snapshot.
    pub names: Gauge,
    /// Routes in the snapshot.
    pub routes: Gauge,
}

impl DnsMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            queries: Family::default(),
            latency: Histogram::new([
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
            ]),
            upstream_failures: Counter::default(),
            cache_hits: Counter::default(),
            programming: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            names: Gauge::default(),
            routes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("switchyard_agent_dns");
        r.register(
            "queries",
            "DNS queries answered, by type and response code",
            m.queries.clone(),
        );
        r.register(
            "query_latency_seconds",
            "From a DNS query received to its answer sent",
            m.latency.clone(),
        );
        r.register(
            "upstream_failures",
            "Upstream resolver attempts that failed",
            m.upstream_failures.clone(),
        );
        r.register(
            "cache_hits",
            "Forwarded questions answered from the cache",
            m.cache_hits.clone(),
        );
        r.register(
            "programming_latency_seconds",
            "From an object change to the DNS answer that reflects it being served",
            m.programming.clone(),
        );
        r.register("names", "Owner names in the DNS snapshot", m.names.clone());
        r.register(
            "routes",
            "ServiceRoutes in the DNS snapshot",
            m.routes.clone(),
        );
        m
    }
}

/// The metric label of a query type.
fn qtype_label(t: Option<RecordType>) -> &'static str {
    match t {
        None => "none",
        Some(RecordType::A) => "A",
        Some(RecordType::AAAA) => "AAAA",
        Some(RecordType::SRV) => "SRV",
        Some(RecordType::PTR) => "PTR",
        Some(RecordType::TXT) => "TXT",
        Some(RecordType::SOA) => "SOA",
        Some(RecordType::NS) => "NS",
        Some(RecordType::CNAME) => "CNAME",
        Some(RecordType::MX) => "MX",
        Some(RecordType::HTTPS) => "HTTPS",
        Some(RecordType::ANY) => "ANY",
        Some(_) => "other",
    }
}

/// The metric label of a response code.
fn rcode_label(c: ResponseCode) -> &'static str {
    match c {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

/// The server's shared state: the snapshot readers load without a lock, the forwarder, the
/// metrics.
pub struct Dns {
    snapshot: ArcSwapOption<Snapshot>,
    forwarder: Forwarder,
    /// Metrics.
    pub metrics: DnsMetrics,
    forwards: Arc<Semaphore>,
}

/// What one datagram needs.
enum Step {
    Done(Option<Vec<u8>>),
    /// Forward the query; with a reply, append the upstream's answers to it (a CNAME chase).
    Forward(Box<Message>, Asked, Option<Box<Message>>),
}

impl Dns {
    /// A server with no snapshot yet (every query SERVFAIL until [`Dns::install`]).
    pub fn new(forwarder: Forwarder, metrics: DnsMetrics) -> Self {
        Self {
            snapshot: ArcSwapOption::empty(),
            forwarder,
            metrics,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        }
    }

    /// Serves `snap` from now on.
    pub fn install(&self, snap: Snapshot) {
        self.metrics
            .names
            .set(i64::try_from(snap.len()).unwrap_or(i64::MAX));
        self.metrics
            .routes
            .set(i64::try_from(snap.routes).unwrap_or(i64::MAX));
        self.snapshot.store(Some(Arc::new(snap)));
    }

    /// The snapshot being served, if any.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    fn count(&self, qtype: Option<RecordType>, rcode: ResponseCode, start: Instant) {
        self.metrics
            .queries
            .get_or_create(&[("qtype", qtype_label(qtype)), ("rcode", rcode_label(rcode))])
            .inc();
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
    }

    /// Answers what it can without waiting; `limit` is the transport's size limit (`None`:
    /// UDP, the request's own).
    fn step(&self, bytes: &[u8], tcp: bool, start: Instant) -> Step {
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "undecodable DNS message; FORMERR");
                let out = error_for_bytes(bytes, ResponseCode::FormErr);
                if out.is_some() {
                    self.count(None, ResponseCode::FormErr, start);
                }
                return Step::Done(out);
            }
        };
        let snap = self.snapshot.load();
        let (decision, asked) = respond(snap.as_deref(), req);
        match decision {
            Decision::Drop => Step::Done(None),
            Decision::Reply(m) => {
                self.count(asked.qtype, m.response_code, start);
                Step::Done(encode(&m, if tcp { 65535 } else { asked.udp_limit }))
            }
            Decision::Forward(req) => Step::Forward(req, asked, None),
            Decision::Chase(reply, req) => Step::Forward(req, asked, Some(reply)),
        }
    }

    async fn forward(
        &self,
        req: Box<Message>,
        asked: Asked,
        chase: Option<Box<Message>>,
        tcp: bool,
        start: Instant,
    ) -> Option<Vec<u8>> {
        let m = match self.forwarder.resolve(&req).await {
            Ok(f) => {
                self.metrics.upstream_failures.inc_by(u64::from(f.failures));
                if f.cached {
                    self.metrics.cache_hits.inc();
                }
                f.response
            }
            Err(e) => {
                self.metrics.upstream_failures.inc();
                warn!(error = %e, "forwarding failed; SERVFAIL");
                servfail(&req)
            }
        };
        let m = match chase {
            Some(mut reply) => {
                // The target's answer under our CNAME: its code, records and authority.
                reply.metadata.response_code = m.response_code;
                reply.metadata.authoritative = false;
                reply.answers.extend(m.answers.iter().cloned());
                reply.authorities = m.authorities.clone();
                *reply
            }
            None => m,
        };
        self.count(asked.qtype, m.response_code, start);
        encode(&m, if tcp { 65535 } else { asked.udp_limit })
    }

    /// One TCP or UDP message in, its answer out (waiting for upstreams when needed).
    pub async fn answer(&self, bytes: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let start = Instant::now();
        match self.step(bytes, tcp, start) {
            Step::Done(out) => out,
            Step::Forward(req, asked, chase) => self.forward(req, asked, chase, tcp, start).await,
        }
    }
}

fn servfail(req: &Message) -> Message {
    let mut m = Message::response(req.id, req.op_code);
    m.metadata.recursion_desired = req.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = ResponseCode::ServFail;
    m.queries = req.queries.clone();
    m
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Bursts of queries (A and AAAA per search suffix) queue here, not in drops.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// The bound sockets of one server (plain std sockets: each serving thread registers its own
/// with its own runtime).
pub struct Sockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
}

/// Binds `sockets` UDP sockets and one TCP listener on `addr`.
pub fn bind(addr: SocketAddr, sockets: usize) -> Result<Sockets> {
    let udp_err = |source| Error::DnsSocket {
        addr,
        transport: "udp",
        source,
    };
    let mut udp = Vec::new();
    for _ in 0..sockets.max(1) {
        udp.push(udp_socket(addr).map_err(udp_err)?);
    }
    let tcp = tcp_listener(addr).map_err(|source| Error::DnsSocket {
        addr,
        transport: "tcp",
        source,
    })?;
    Ok(Sockets { udp, tcp })
}

async fn udp_loop(dns: Arc<Dns>, sock: std::net::UdpSocket) {
    let sock = match UdpSocket::from_std(sock) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "DNS UDP socket not served");
            return;
        }
    };
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let start = Instant::now();
        match dns.step(&buf[..n], false, start) {
            Step::Done(Some(out)) => {
                let _ = sock.send_to(&out, peer).await;
            }
            Step::Done(None) => {}
            Step::Forward(req, asked, chase) => {
                let Ok(permit) = dns.forwards.clone().try_acquire_owned() else {
                    let m = servfail(&req);
                    dns.count(asked.qtype, m.response_code, start);
                    if let Some(out) = encode(&m, asked.udp_limit) {
                        let _ = sock.send_to(&out, peer).await;
                    }
                    continue;
                };
                let (dns, sock) = (dns.clone(), sock.clone());
                tokio::spawn(async move {
                    if let Some(out) = dns.forward(req, asked, chase, false, start).await {
                        let _ = sock.send_to(&out, peer).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

async fn tcp_conn(dns: Arc<Dns>, mut s: TcpStream) {
    loop {
        let mut lb = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut lb)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lb))];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(out) = dns.answer(&buf, true).await else {
            return;
        };
        let Ok(len) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&out);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

async fn tcp_loop(dns: Arc<Dns>, listener: std::net::TcpListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "DNS TCP listener not served");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(s);
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            tcp_conn(dns, s).await;
            drop(permit);
        });
    }
}

/// Serves on threads of their own, one per UDP socket (the first also takes TCP), each with a
/// single-threaded runtime: queries never wait behind the agent's other work, and no task
/// hops between threads. The returned future ends when every serving thread has ended.
pub fn spawn(dns: Arc<Dns>, sockets: Sockets) -> Result<impl Future<Output = ()> + use<>> {
    let mut tcp = Some(sockets.tcp);
    let mut done = Vec::new();
    for (i, udp) in sockets.udp.into_iter().enumerate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::DnsThread { source })?;
        let (dns, tcp) = (dns.clone(), tcp.take());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("dns-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    tasks.spawn(udp_loop(dns.clone(), udp));
                    if let Some(l) = tcp {
                        tasks.spawn(tcp_loop(dns, l));
                    }
                    while tasks.join_next().await.is_some() {}
                });
                let _ = tx.send(());
            })
            .map_err(|source| Error::DnsThread { source })?;
        done.push(rx);
    }
    Ok(async move {
        for rx in done {
            let _ = rx.await;
        }
    })
}
