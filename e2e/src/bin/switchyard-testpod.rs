//! The lab's stand-in for a container image: a small server and client that run inside pod
//! network namespaces.
//!
//! - `serve [--tcp PORT]... [--udp PORT]... [--http PORT]... [--name NAME] [--bind ADDR]...`:
//!   TCP echo (each line `L` is answered with `<name> L`), UDP echo (each datagram `P` with
//!   `<name> P`) and a minimal HTTP/1.1 server (`GET /` → `<name>\n`, `GET /ready` → `ok`,
//!   `GET /clientip` → the peer's address). Prints `ready` on stdout once every socket is
//!   bound; runs until SIGTERM or SIGINT.
//! - `probe tcp ADDR:PORT`, `probe http ADDR:PORT/PATH`: exit 0 if it connects / answers 2xx
//!   within 1 s, else 1.
//! - `send tcp|udp ADDR:PORT MESSAGE [--timeout-ms N]`: prints the reply; exit 1 with a
//!   message starting `connection refused` or `timed out` otherwise.
//!
//! Addresses are `1.2.3.4:80` or `[fd00::1]:80`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// How long a connection may sit idle before the server drops it.
const IDLE: Duration = Duration::from_secs(30);
/// The longest line (TCP echo) or request head (HTTP) the server reads.
const MAX_LINE: usize = 64 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Probes give up after this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "switchyard-testpod",
    about = "Switchyard lab test pod: echo servers and their clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve TCP echo, UDP echo and HTTP until SIGTERM/SIGINT.
    Serve {
        /// TCP echo port (repeatable).
        #[arg(long = "tcp", value_name = "PORT")]
        tcp: Vec<u16>,
        /// UDP echo port (repeatable).
        #[arg(long = "udp", value_name = "PORT")]
        udp: Vec<u16>,
        /// HTTP port (repeatable).
        #[arg(long = "http", value_name = "PORT")]
        http: Vec<u16>,
        /// The name in every answer [default: $POD_NAME, else the hostname].
        #[arg(long)]
        name: Option<String>,
        /// Address to bind (repeatable) [default: [::] and 0.0.0.0].
        #[arg(long = "bind", value_name = "ADDR")]
        bind: Vec<IpAddr>,
    },
    /// Exit 0 if the target answers within 1 s.
    Probe {
        /// tcp: connect; http: GET answered with 2xx.
        proto: ProbeProto,
        /// ADDR:PORT for tcp, ADDR:PORT/PATH for http.
        target: String,
    },
    /// Send MESSAGE and print the reply.
    Send {
        /// Protocol.
        proto: SendProto,
        /// ADDR:PORT.
        target: String,
        /// What to send (TCP: one line; UDP: one datagram).
        message: String,
        /// Give up after this long (connect and reply together).
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// A pod sandbox's first process (the lab's pause image on real nodes): holds the pod's
    /// namespaces, reaps orphans, exits 0 on SIGTERM/SIGINT.
    Pause,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProbeProto {
    Tcp,
    Http,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SendProto {
    Tcp,
    Udp,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-testpod: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Serve {
                tcp,
                udp,
                http,
                name,
                bind,
            } => serve(tcp, udp, http, name, bind).await,
            Cmd::Probe { proto, target } => probe(proto, &target).await,
            Cmd::Send {
                proto,
                target,
                message,
                timeout_ms,
            } => send(proto, &target, &message, Duration::from_millis(timeout_ms)).await,
            Cmd::Pause => pause().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("switchyard-testpod: {message}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (unit-tested below).

/// `ADDR:PORT` or `[V6]:PORT`.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT)"))
}

/// `ADDR:PORT`, or `NAME:PORT` looked up through the system resolver (the pod's
/// resolv.conf: the search path and the node-local DNS server); the first address.
async fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = parse_addr(text) {
        return Ok(a);
    }
    let mut found = tokio::net::lookup_host(text)
        .await
        .map_err(|e| format!("{text:?} is not ADDR:PORT and does not resolve: {e}"))?;
    found
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// `ADDR:PORT/PATH` (optionally `http://` first; PATH defaults to `/`).
fn parse_http_target(text: &str) -> Result<(SocketAddr, String), String> {
    let rest = text.strip_prefix("http://").unwrap_or(text);
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((parse_addr(addr)?, path.to_string()))
}

/// The TCP echo answer to one line (without its line ending).
fn tcp_reply(name: &str, line: &str) -> String {
    format!("{name} {line}\n")
}

/// The UDP echo answer to one datagram.
fn udp_reply(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(name.len() + 1 + payload.len());
    reply.extend_from_slice(name.as_bytes());
    reply.push(b' ');
    reply.extend_from_slice(payload);
    reply
}

/// Reads one line of at most `max` bytes; `Ok(None)` at end of stream, the line without its
/// `\n` / `\r\n` otherwise. Longer lines are an error (the server bounds its memory).
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *reader)
        .take(max as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// What the HTTP server answers: status code, reason and body.
fn http_route(
    method: &str,
    target: &str,
    name: &str,
    peer: SocketAddr,
) -> (u16, &'static str, String) {
    let path = target.split(['?', '#']).next().unwrap_or("/");
    match (method, path) {
        ("GET", "/") => (200, "OK", format!("{name}\n")),
        ("GET", "/ready") => (200, "OK", "ok".into()),
        ("GET", "/clientip") => (200, "OK", format!("{}\n", peer.ip().to_canonical())),
        ("GET", _) => (404, "Not Found", "not found\n".into()),
        _ => (405, "Method Not Allowed", "method not allowed\n".into()),
    }
}

/// A complete HTTP/1.1 response that closes the connection.
fn http_response(status: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The request line's method and target: `GET /x HTTP/1.1` → (`GET`, `/x`).
fn parse_request_line(line: &str) -> Result<(&str, &str), String> {
    let mut parts = line.split_ascii_whitespace();
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None) if version.starts_with("HTTP/1.") => {
            Ok((method, target))
        }
        _ => Err(format!("bad request line {line:?}")),
    }
}

/// The status code of a response's status line (`HTTP/1.1 200 OK` → 200).
fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.split_ascii_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code
            .parse()
            .map_err(|_| format!("bad status line {line:?}")),
        _ => Err(format!("bad status line {line:?}")),
    }
}

/// The request a probe sends.
fn http_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: switchyard-testpod\r\nConnection: close\r\n\r\n"
    )
}

/// Turns an I/O error into a message that says plainly whether the peer refused.
fn describe(what: &str, target: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused by {target} ({what}: {e})")
        }
        std::io::ErrorKind::TimedOut => format!("timed out: {what} {target}: {e}"),
        _ => format!("{what} {target} failed: {e}"),
    }
}

fn default_name() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "testpod".into())
}

// ---------------------------------------------------------------------------------------------
// serve

async fn serve(
    tcp: Vec<u16>,
    udp: Vec<u16>,
    http: Vec<u16>,
    name: Option<String>,
    bind: Vec<IpAddr>,
) -> Result<(), String> {
    if tcp.is_empty() && udp.is_empty() && http.is_empty() {
        return Err("serve needs at least one of --tcp, --udp, --http".into());
    }
    let name: Arc<str> = name.unwrap_or_else(default_name).into();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();

    for port in tcp {
        for listener in bind_tcp(&bind, port).await? {
            tasks.spawn(accept_loop(
                listener,
                name.clone(),
                limit.clone(),
                Service::Echo,
            ));
        }
    }
    for port in http {
        for listener in bind_tcp(&bind, port).await? {
            tasks.spawn(accept_loop(
                listener,
                name.clone(),
                limit.clone(),
                Service::Http,
            ));
        }
    }
    for port in udp {
        for socket in bind_udp(&bind, port).await? {
            tasks.spawn(udp_loop(socket, name.clone()));
        }
    }
    println!("ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = term.recv() => eprintln!("switchyard-testpod {name}: SIGTERM, exiting"),
        _ = tokio::signal::ctrl_c() => eprintln!("switchyard-testpod {name}: SIGINT, exiting"),
        Some(joined) = tasks.join_next() => {
            return Err(format!("a server stopped: {joined:?}"));
        }
    }
    tasks.abort_all();
    Ok(())
}

/// The addresses to bind: the ones given, or `[::]` and `0.0.0.0`. With the usual
/// `net.ipv6.bindv6only=0`, `[::]` is dual-stack and the `0.0.0.0` bind then fails with
/// EADDRINUSE, which is fine; without IPv6, `[::]` fails and `0.0.0.0` serves.
fn default_binds(bind: &[IpAddr]) -> (Vec<IpAddr>, bool) {
    if bind.is_empty() {
        (
            vec![
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ],
            true,
        )
    } else {
        (bind.to_vec(), false)
    }
}

async fn bind_tcp(bind: &[IpAddr], port: u16) -> Result<Vec<TcpListener>, String> {
    let (addrs, lenient) = default_binds(bind);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr).await {
            Ok(l) => {
                eprintln!("listening tcp {addr}");
                out.push(l);
            }
            Err(e) if lenient => errors.push(format!("{addr}: {e}")),
            Err(e) => return Err(format!("cannot listen on tcp {addr}: {e}")),
        }
    }
    if out.is_empty() {
        return Err(format!(
            "cannot listen on tcp port {port}: {}",
            errors.join("; ")
        ));
    }
    Ok(out)
}

async fn bind_udp(bind: &[IpAddr], port: u16) -> Result<Vec<UdpSocket>, String> {
    let (addrs, lenient) = default_binds(bind);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        match UdpSocket::bind(addr).await {
            Ok(s) => {
                eprintln!("listening udp {addr}");
                out.push(s);
            }
            Err(e) if lenient => errors.push(format!("{addr}: {e}")),
            Err(e) => return Err(format!("cannot bind udp {addr}: {e}")),
        }
    }
    if out.is_empty() {
        return Err(format!(
            "cannot bind udp port {port}: {}",
            errors.join("; ")
        ));
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Service {
    Echo,
    Http,
}

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    limit: Arc<Semaphore>,
    service: Service,
) -> Result<(), String> {
    loop {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            let result = match service {
                Service::Echo => echo_conn(stream, &name).await,
                Service::Http => http_conn(stream, peer, &name).await,
            };
            if let Err(e) = result {
                eprintln!("{peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn echo_conn(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match timeout(IDLE, read_line_limited(&mut reader, MAX_LINE)).await {
            Ok(line) => line?,
            Err(_) => return Ok(()), // idle: close
        };
        let Some(line) = line else { return Ok(()) };
        timeout(IDLE, write.write_all(tcp_reply(name, &line).as_bytes()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))??;
    }
}

async fn http_conn(stream: TcpStream, peer: SocketAddr, name: &str) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let head = async {
        let Some(request_line) = read_line_limited(&mut reader, MAX_LINE).await? else {
            return Ok(None);
        };
        // Skip the headers, bounded in number and size.
        let mut total = request_line.len();
        loop {
            match read_line_limited(&mut reader, MAX_LINE).await? {
                None => break,
                Some(h) if h.is_empty() => break,
                Some(h) => {
                    total += h.len();
                    if total > MAX_LINE {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "request head too large",
                        ));
                    }
                }
            }
        }
        Ok::<_, std::io::Error>(Some(request_line))
    };
    let request_line = match timeout(IDLE, head).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let Some(request_line) = request_line else {
        return Ok(());
    };
    let (status, reason, body) = match parse_request_line(&request_line) {
        Ok((method, target)) => http_route(method, target, name, peer),
        Err(e) => (400, "Bad Request", format!("{e}\n")),
    };
    timeout(IDLE, async {
        write
            .write_all(http_response(status, reason, &body).as_bytes())
            .await?;
        write.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

async fn udp_loop(socket: UdpSocket, name: Arc<str>) -> Result<(), String> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier replies surface here; keep serving.
                eprintln!("udp recv: {e}");
                continue;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        if let Err(e) = socket.send_to(&udp_reply(&name, data), peer).await {
            eprintln!("udp reply to {peer}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// probe and send

async fn probe(proto: ProbeProto, target: &str) -> Result<(), String> {
    match proto {
        ProbeProto::Tcp => {
            let addr = parse_addr(target)?;
            match timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(describe("connect to", addr, &e)),
                Err(_) => Err(format!(
                    "timed out after {PROBE_TIMEOUT:?} connecting to {addr}"
                )),
            }
        }
        ProbeProto::Http => {
            let (addr, path) = parse_http_target(target)?;
            let status = match timeout(PROBE_TIMEOUT, http_get_status(addr, &path)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(format!(
                        "timed out after {PROBE_TIMEOUT:?} on GET http://{addr}{path}"
                    ));
                }
            };
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("GET http://{addr}{path} answered {status}"))
            }
        }
    }
}

async fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| describe("connect to", addr, &e))?;
    stream
        .write_all(http_request(addr, path).as_bytes())
        .await
        .map_err(|e| describe("send to", addr, &e))?;
    let mut reader = BufReader::new(stream);
    let line = read_line_limited(&mut reader, MAX_LINE)
        .await
        .map_err(|e| describe("read from", addr, &e))?
        .ok_or_else(|| format!("{addr} closed the connection without answering"))?;
    parse_status_line(&line)
}

async fn send(
    proto: SendProto,
    target: &str,
    message: &str,
    limit: Duration,
) -> Result<(), String> {
    let addr = resolve(target).await?;
    let reply = match proto {
        SendProto::Tcp => timeout(limit, send_tcp(addr, message)).await,
        SendProto::Udp => timeout(limit, send_udp(addr, message)).await,
    };
    match reply {
        Ok(Ok(reply)) => {
            println!("{reply}");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "timed out after {} ms waiting for {addr}",
            limit.as_millis()
        )),
    }
}

async fn send_tcp(addr: SocketAddr, message: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| describe("connect to", addr, &e))?;
    stream
        .write_all(format!("{message}\n").as_bytes())
        .await
        .map_err(|e| describe("send to", addr, &e))?;
    let mut reader = BufReader::new(stream);
    read_line_limited(&mut reader, MAX_LINE)
        .await
        .map_err(|e| describe("read from", addr, &e))?
        .ok_or_else(|| format!("{addr} closed the connection without answering"))
}

async fn send_udp(addr: SocketAddr, message: &str) -> Result<String, String> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("cannot bind udp {local}: {e}"))?;
    // Connected, so an ICMP port unreachable comes back as ECONNREFUSED on recv.
    socket
        .connect(addr)
        .await
        .map_err(|e| describe("connect to", addr, &e))?;
    socket
        .send(message.as_bytes())
        .await
        .map_err(|e| describe("send to", addr, &e))?;
    let mut buf = vec![0u8; 65536];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| describe("receive from", addr, &e))?;
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

/// Waits for SIGTERM or SIGINT, reaping every child that exits meanwhile (a sandbox's first
/// process inherits the orphans of a shared PID namespace).
async fn pause() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig =
        |k: SignalKind, name: &str| signal(k).map_err(|e| format!("cannot watch {name}: {e}"));
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut child = sig(SignalKind::child(), "SIGCHLD")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = child.recv() => {
                use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("198.18.1.2:80").unwrap(),
            "198.18.1.2:80".parse().unwrap()
        );
        assert_eq!(parse_addr("[fd00::1]:8080").unwrap().port(), 8080);
        assert!(parse_addr("fd00::1:80").is_err());
        assert!(parse_addr("198.18.1.2").is_err());
        let (addr, path) = parse_http_target("http://[fd00::2]:80/ready?x=1").unwrap();
        assert_eq!(addr, "[fd00::2]:80".parse().unwrap());
        assert_eq!(path, "/ready?x=1");
        assert_eq!(parse_http_target("198.18.0.9:81").unwrap().1, "/");
    }

    #[test]
    fn echo_replies() {
        assert_eq!(tcp_reply("pod-a", "hello"), "pod-a hello\n");
        assert_eq!(udp_reply("pod-a", b"hi"), b"pod-a hi".to_vec());
    }

    #[tokio::test]
    async fn lines() {
        let mut input: &[u8] = b"one\r\ntwo\nthree";
        assert_eq!(
            read_line_limited(&mut input, 10).await.unwrap().as_deref(),
            Some("one")
        );
        assert_eq!(
            read_line_limited(&mut input, 10).await.unwrap().as_deref(),
            Some("two")
        );
        assert_eq!(
            read_line_limited(&mut input, 10).await.unwrap().as_deref(),
            Some("three")
        );
        assert_eq!(read_line_limited(&mut input, 10).await.unwrap(), None);
        let mut long: &[u8] = b"0123456789abc\n";
        assert!(read_line_limited(&mut long, 10).await.is_err());
    }

    #[test]
    fn http() {
        let peer: SocketAddr = "[::ffff:198.18.0.7]:5555".parse().unwrap();
        assert_eq!(
            parse_request_line("GET /ready HTTP/1.1").unwrap(),
            ("GET", "/ready")
        );
        assert!(parse_request_line("GET /").is_err());
        assert_eq!(
            http_route("GET", "/", "pod-b", peer),
            (200, "OK", "pod-b\n".into())
        );
        assert_eq!(
            http_route("GET", "/ready?full=1", "pod-b", peer),
            (200, "OK", "ok".into())
        );
        assert_eq!(
            http_route("GET", "/clientip", "pod-b", peer).2,
            "198.18.0.7\n"
        );
        assert_eq!(http_route("GET", "/nope", "pod-b", peer).0, 404);
        assert_eq!(http_route("POST", "/", "pod-b", peer).0, 405);
        let response = http_response(200, "OK", "ok");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(response.contains("Content-Length: 2\r\n"));
        assert!(response.ends_with("\r\n\r\nok"));
        assert_eq!(parse_status_line("HTTP/1.1 204 No Content").unwrap(), 204);
        assert!(parse_status_line("garbage").is_err());
        assert!(
            http_request("[fd00::1]:80".parse().unwrap(), "/")
                .starts_with("GET / HTTP/1.1\r\nHost: [fd00::1]:80\r\n")
        );
    }

    #[test]
    fn refusal_is_named() {
        let addr: SocketAddr = "198.18.0.1:1".parse().unwrap();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(describe("connect to", addr, &refused).starts_with("connection refused"));
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(describe("connect to", addr, &timed_out).starts_with("timed out"));
    }
}
