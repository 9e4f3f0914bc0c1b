//! The same questions to CoreDNS (about a Service) and to Switchyard's DNS (about a
//! ServiceRoute of the same name and shape in another namespace; with native Services, about
//! the very same Service), answers normalised (namespace, addresses, SOA serial and TTL
//! countdown) and compared line by line.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use switchyard_api::ServiceRoute;

use super::incumbents::{COREDNS_ADDR, SWITCHYARD_DNS_ADDR};
use super::{from_json, kube_err, pod_ip, wait_pod_ready, wait_route_vip};
use crate::error::{Error, Result};
use crate::netns;
use crate::podsim::TESTPOD_IMAGE;

const NS_SVC: &str = "cmp-dnsa-svc";
const NS_SR: &str = "cmp-dnsa-sr";

/// One side's objects: namespace, virtual IP (ClusterIP), backend pod address.
#[derive(Clone, Copy)]
struct Side {
    ns: &'static str,
    vip: Ipv4Addr,
    pod: Ipv4Addr,
}

/// A parsed dig answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// `NOERROR`, `NXDOMAIN`, ...; `no answer` when dig timed out.
    pub status: String,
    /// Whether `aa` was set.
    pub aa: bool,
    /// Answer section, normalised.
    pub answer: Vec<String>,
    /// Authority section, normalised.
    pub authority: Vec<String>,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn reverse(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
}

fn normalise(line: &str, side: &Side) -> String {
    let f: Vec<&str> = line.split_whitespace().collect();
    let mut out: Vec<String> = f.iter().map(|s| (*s).to_string()).collect();
    // owner TTL class type rdata...: the TTL counts down in caches, keep it as is only for
    // the first answer; SOA serials differ by construction.
    if out.get(3).map(String::as_str) == Some("SOA") && out.len() >= 11 {
        out[6] = "<serial>".into();
        out[10] = "<ttl>".into();
    }
    // TTLs are configuration (CoreDNS `ttl`, Switchyard `--dns-ttl`) and count down in
    // CoreDNS's cache: compared separately.
    if out.len() > 1 && out[1].parse::<u32>().is_ok() {
        out[1] = "<ttl>".into();
    }
    let mut s = out.join(" ");
    s = s.replace(&reverse(side.vip), "<vip-reverse>");
    s = s.replace(&reverse(side.pod), "<pod-reverse>");
    s = s.replace(&dashed(side.pod), "<pod-dashed>");
    s = s.replace(&side.vip.to_string(), "<vip>");
    s = s.replace(&side.pod.to_string(), "<pod-ip>");
    s = s.replace(side.ns, "<ns>");
    s
}

/// Parses `dig +noall +comments +answer +authority` output.
pub fn parse_dig(text: &str, norm: impl Fn(&str) -> String) -> Answer {
    let mut a = Answer {
        status: "no answer".into(),
        aa: false,
        answer: Vec::new(),
        authority: Vec::new(),
    };
    let mut section = "";
    for l in text.lines() {
        let l = l.trim();
        if let Some(i) = l.find("status: ") {
            a.status = l[i + 8..]
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
        } else if let Some(flags) = l.strip_prefix(";; flags:") {
            a.aa = flags
                .split(';')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .any(|f| f == "aa");
        } else if l.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if l.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if l.starts_with(";;") {
            section = if l.contains("SECTION") {
                "other"
            } else {
                section
            };
        } else if !l.is_empty() && !l.starts_with(';') {
            let n = norm(l);
            match section {
                "answer" => a.answer.push(n),
                "authority" => a.authority.push(n),
                _ => {}
            }
        }
    }
    a.answer.sort();
    a.authority.sort();
    a
}

async fn dig(netns_name: &str, server: Ipv4Addr, name: &str, qtype: &str, side: &Side) -> Answer {
    let out = netns::exec(
        netns_name,
        "dig",
        [
            &format!("@{server}"),
            "+time=2",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
            "+authority",
            name,
            qtype,
        ],
    )
    .await;
    match out {
        Ok(o) => parse_dig(&String::from_utf8_lossy(&o.stdout), |l| normalise(l, side)),
        Err(_) => Answer {
            status: "no answer".into(),
            aa: false,
            answer: Vec::new(),
            authority: Vec::new(),
        },
    }
}

fn show(a: &Answer) -> String {
    let mut parts = vec![format!("{}{}", a.status, if a.aa { " aa" } else { "" })];
    parts.extend(a.answer.iter().map(|r| format!("AN `{r}`")));
    parts.extend(a.authority.iter().map(|r| format!("NS `{r}`")));
    parts.join("<br>")
}

/// Creates the objects on both sides, asks every question of both servers and returns the
/// comparison as markdown. With `switchyard_up` false, only CoreDNS is asked; with `native`,
/// both servers are asked about the same Services.
pub async fn run(
    client: &Client,
    netns_name: &str,
    node: &str,
    switchyard_up: bool,
    native: bool,
) -> Result<String> {
    // One backend pod in each side's namespace.
    create_pods(client, node, native).await?;
    // A ClusterIP and a headless Service (CoreDNS's side, and Switchyard's when native).
    create_services(client).await?;
    // A ClusterIP and a headless ServiceRoute of the same names (Switchyard's side).
    if !native {
        create_routes(client).await?;
    }
    // Each side's namespace, virtual IP and pod address, once assigned.
    let (cd, sy) = sides(client, native).await?;
    // Both servers have the endpoints before the first question.
    wait_for_endpoints(netns_name, &cd, &sy, switchyard_up).await;
    // Every question to both servers, as a markdown table with a summary line.
    let md = ask_all(netns_name, &cd, &sy, switchyard_up).await;
    if md.is_empty() {
        return Err(Error::Invalid {
            what: "DNS comparison".into(),
            message: "no questions".into(),
        });
    }
    Ok(md)
}

async fn create_pods(client: &Client, node: &str, native: bool) -> Result<()> {
    let namespaces: &[&str] = if native { &[NS_SVC] } else { &[NS_SVC, NS_SR] };
    for &ns in namespaces {
        crate::check::fresh_namespace(client, ns).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let pod: Pod = from_json(
            "DNS comparison pod",
            json!({"metadata": {"name": "web-0", "namespace": ns, "labels": {"app": "dnsweb"}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": TESTPOD_IMAGE,
                "command": ["switchyard-testpod", "serve", "--tcp", "8080"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}),
        )?;
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(kube_err(format!("create pod {ns}/web-0")))?;
    }
    Ok(())
}

async fn create_services(client: &Client) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS_SVC);
    for (name, headless) in [("web", false), ("web-hl", true)] {
        let mut spec = json!({"selector": {"app": "dnsweb"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]});
        if headless {
            spec["clusterIP"] = json!("None");
        }
        let svc: Service = from_json(
            "DNS comparison Service",
            json!({"metadata": {"name": name, "namespace": NS_SVC}, "spec": spec}),
        )?;
        services
            .create(&PostParams::default(), &svc)
            .await
            .map_err(kube_err(format!("create Service {NS_SVC}/{name}")))?;
    }
    Ok(())
}

async fn create_routes(client: &Client) -> Result<()> {
    let routes: Api<ServiceRoute> = Api::namespaced(client.clone(), NS_SR);
    for (name, headless) in [("web", false), ("web-hl", true)] {
        let r: ServiceRoute = from_json(
            "DNS comparison ServiceRoute",
            json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": name, "namespace": NS_SR},
            "spec": {"selector": {"matchLabels": {"app": "dnsweb"}}, "headless": headless,
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )?;
        routes
            .create(&PostParams::default(), &r)
            .await
            .map_err(kube_err(format!("create ServiceRoute {NS_SR}/{name}")))?;
    }
    Ok(())
}

/// CoreDNS's side and Switchyard's side, once both pods are Ready and both virtual IPs
/// assigned (`native`: the same side twice).
async fn sides(client: &Client, native: bool) -> Result<(Side, Side)> {
    let ready_pod_ip = |ns: &'static str| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pod_ip(&wait_pod_ready(&pods, "web-0", Duration::from_secs(60)).await?)
    };
    let svc_pod = ready_pod_ip(NS_SVC).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), NS_SVC);
    let svc_ip = super::cluster_ip(&services, "web").await?;
    let cd = Side {
        ns: NS_SVC,
        vip: svc_ip,
        pod: svc_pod,
    };
    if native {
        return Ok((cd, cd));
    }
    let sr_pod = ready_pod_ip(NS_SR).await?;
    let routes: Api<ServiceRoute> = Api::namespaced(client.clone(), NS_SR);
    let sr_vip = wait_route_vip(&routes, "web", Duration::from_secs(60)).await?;
    let sy = Side {
        ns: NS_SR,
        vip: sr_vip,
        pod: sr_pod,
    };
    Ok((cd, sy))
}

/// Asks for the headless name until both servers list the pod, 30 s at most (CoreDNS caches
/// 30 s: ask once it has them).
async fn wait_for_endpoints(netns_name: &str, cd: &Side, sy: &Side, switchyard_up: bool) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = dig(
            netns_name,
            COREDNS_ADDR,
            &format!("web-hl.{NS_SVC}.svc.cluster.local"),
            "A",
            cd,
        )
        .await;
        let b = if switchyard_up {
            dig(
                netns_name,
                SWITCHYARD_DNS_ADDR,
                &format!("web-hl.{NS_SR}.svc.cluster.local"),
                "A",
                sy,
            )
            .await
        } else {
            a.clone()
        };
        if (!a.answer.is_empty() && !b.answer.is_empty()) || std::time::Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The questions: a label, a name template (`{ns}`, `{pod-dashed}` and `{vip-reverse}` filled
/// in per side) and a query type.
const QUESTIONS: [(&str, &str, &str); 14] = [
    ("ClusterIP name", "web.{ns}.svc.cluster.local", "A"),
    (
        "ClusterIP name, AAAA (IPv4-only object)",
        "web.{ns}.svc.cluster.local",
        "AAAA",
    ),
    (
        "ClusterIP name, TXT (NODATA)",
        "web.{ns}.svc.cluster.local",
        "TXT",
    ),
    ("mixed case", "WEB.{ns}.SVC.cluster.local", "A"),
    (
        "named port SRV",
        "_http._tcp.web.{ns}.svc.cluster.local",
        "SRV",
    ),
    ("headless name", "web-hl.{ns}.svc.cluster.local", "A"),
    (
        "headless SRV",
        "_http._tcp.web-hl.{ns}.svc.cluster.local",
        "SRV",
    ),
    (
        "headless endpoint name",
        "{pod-dashed}.web-hl.{ns}.svc.cluster.local",
        "A",
    ),
    ("reverse of the virtual IP", "{vip-reverse}", "PTR"),
    (
        "unknown name in the namespace",
        "nope.{ns}.svc.cluster.local",
        "A",
    ),
    ("namespace alone", "{ns}.svc.cluster.local", "A"),
    (
        "search-path miss",
        "www.example.com.{ns}.svc.cluster.local",
        "A",
    ),
    ("schema version", "dns-version.cluster.local", "TXT"),
    ("zone apex SOA", "cluster.local", "SOA"),
];

/// `template` for one side.
fn question(template: &str, side: &Side) -> String {
    template
        .replace("{ns}", side.ns)
        .replace("{pod-dashed}", &dashed(side.pod))
        .replace("{vip-reverse}", &reverse(side.vip))
}

/// Every question of [`QUESTIONS`] to CoreDNS and (when up) to Switchyard's DNS: the table
/// and a line counting the differences.
async fn ask_all(netns_name: &str, cd: &Side, sy: &Side, switchyard_up: bool) -> String {
    let mut md = String::new();
    let about = if sy.ns == cd.ns {
        format!("both about the same Services in `{NS_SVC}` (native Services)")
    } else {
        format!(
            "CoreDNS about Services in `{NS_SVC}` and Switchyard's DNS about ServiceRoutes in `{NS_SR}`"
        )
    };
    let _ = writeln!(
        md,
        "Same questions, {about} (namespaces, addresses, SOA serials and TTLs normalised to `<ns>`, `<vip>`, `<pod-ip>`, `<serial>`, `<ttl>`; the TTLs themselves are configuration: CoreDNS `ttl 30` as kubeadm sets it, Switchyard's `--dns-ttl` default 5).\n"
    );
    let _ = writeln!(md, "| question | type | CoreDNS | Switchyard | same |");
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    let mut differences = 0;
    for (label, template, qtype) in &QUESTIONS {
        let a = dig(netns_name, COREDNS_ADDR, &question(template, cd), qtype, cd).await;
        let (b, same) = if switchyard_up {
            let b = dig(
                netns_name,
                SWITCHYARD_DNS_ADDR,
                &question(template, sy),
                qtype,
                sy,
            )
            .await;
            let same = a == b;
            (show(&b), if same { "yes" } else { "**no**" })
        } else {
            ("pending".to_string(), "pending")
        };
        if same == "**no**" {
            differences += 1;
        }
        let _ = writeln!(md, "| {label} | {qtype} | {} | {b} | {same} |", show(&a));
    }
    let _ = writeln!(md);
    if switchyard_up {
        let _ = writeln!(
            md,
            "{differences} of {} questions answered differently.",
            QUESTIONS.len()
        );
    } else {
        let _ = writeln!(
            md,
            "Switchyard's DNS did not answer on {SWITCHYARD_DNS_ADDR}:53; its column is pending."
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dig_output_is_parsed_and_normalised() {
        let side = Side {
            ns: "cmp-dnsa-svc",
            vip: Ipv4Addr::new(198, 19, 255, 10),
            pod: Ipv4Addr::new(198, 18, 129, 5),
        };
        let text = ";; Got answer:\n;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; flags: qr aa rd; QUERY: 1, ANSWER: 1\n\n;; ANSWER SECTION:\nweb.cmp-dnsa-svc.svc.cluster.local. 30 IN A 198.19.255.10\n\n;; AUTHORITY SECTION:\ncluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1764 7200 1800 86400 30\n";
        let a = parse_dig(text, |l| normalise(l, &side));
        assert_eq!(a.status, "NOERROR");
        assert!(a.aa);
        assert_eq!(
            a.answer,
            vec!["web.<ns>.svc.cluster.local. <ttl> IN A <vip>"]
        );
        assert_eq!(
            a.authority,
            vec![
                "cluster.local. <ttl> IN SOA ns.dns.cluster.local. hostmaster.cluster.local. <serial> 7200 1800 86400 <ttl>"
            ]
        );
    }
}
