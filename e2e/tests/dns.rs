//! Cluster DNS from inside pods: `dig` over UDP and TCP against the node-local server
//! (169.254.20.10), and `getent`/`curl` through the system resolver (the pod's resolv.conf,
//! search path and ndots:5). Every record kind: A/AAAA of a route's virtual IPs (IPv4 and
//! dual-stack), hostnames, headless answers with ready backends only and per-backend names,
//! SRV for named ports and none for unnamed ones, PTR for virtual IPs and backends, pod A
//! records, `dns-version` TXT; NXDOMAIN versus NODATA with the SOA; a route change and a
//! backend change answered within a second; and a name of the lab's own upstream resolver.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::api::Api;
use switchyard_api::ServiceRoute;
use switchyard_e2e::lab::{Lab, LabOptions, UPSTREAM_WWW, UPSTREAM_ZONE};

const NS: &str = "dnst";
const SERVER: &str = "169.254.20.10";
const ZONE: &str = "cluster.local";

fn pod(ns: &str, name: &str, node: &str, labels: &str, ready: bool) -> String {
    // A pod that never becomes ready serves HTTP on another port than its probe checks.
    let http = if ready { "8082" } else { "8083" };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: switchyard-testpod:lab\n    command: [switchyard-testpod, serve, --tcp, \"8080\", --http, \"{http}\", --name, {name}]\n    readinessProbe:\n      httpGet: {{path: /ready, port: 8082}}\n"
    )
}

fn route(ns: &str, name: &str, selector: &str, extra: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{{selector}}}}}\n{extra}"
    )
}

/// `dig` inside pod `ns/client` against the node-local server; the whole output.
async fn dig(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["dig", "+time=2", "+tries=1", "@169.254.20.10"];
    argv.extend_from_slice(args);
    let out = lab.exec(ns, "client", &argv).await.unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answers of `dig +short`, sorted.
async fn short(lab: &Lab, ns: &str, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    let mut v: Vec<String> = dig(lab, ns, &a)
        .await
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    v.sort();
    v
}

/// Asserts the same answers over UDP and over TCP.
async fn both(lab: &Lab, ns: &str, name: &str, qtype: &str) -> Vec<String> {
    let udp = short(lab, ns, &["+notcp", name, qtype]).await;
    let tcp = short(lab, ns, &["+tcp", name, qtype]).await;
    assert_eq!(udp, tcp, "{name} {qtype}: UDP and TCP differ");
    udp
}

fn status_of(out: &str) -> String {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string()
}

/// Asserts a negative answer of `kind` (`NXDOMAIN` or `NODATA`) with the zone's SOA, over UDP
/// and TCP.
async fn negative(lab: &Lab, ns: &str, name: &str, qtype: &str, kind: &str) {
    for t in ["+notcp", "+tcp"] {
        let out = dig(lab, ns, &[t, name, qtype]).await;
        let want = if kind == "NODATA" { "NOERROR" } else { kind };
        assert_eq!(status_of(&out), want, "{name} {qtype} ({t}):\n{out}");
        assert!(out.contains("ANSWER: 0,"), "{name} {qtype} ({t}):\n{out}");
        assert!(
            out.contains("IN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local.")
                || out.contains("IN\tSOA\tns.dns."),
            "{name} {qtype} ({t}) has no SOA:\n{out}"
        );
    }
}

async fn vips(lab: &Lab, ns: &str, name: &str, count: usize) -> Vec<String> {
    let api = Api::<ServiceRoute>::namespaced(lab.client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(s) = api.get(name).await.ok().and_then(|r| r.status)
            && s.virtual_ips.len() >= count
        {
            return s.virtual_ips;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("route {ns}/{name} got no {count} virtual IPs");
}

/// Polls `dig` until `pred` holds; the time it took from `t0`.
async fn answered_within<F>(lab: &Lab, name: &str, qtype: &str, t0: Instant, pred: F) -> Duration
where
    F: Fn(&[String]) -> bool,
{
    let deadline = t0 + Duration::from_secs(10);
    loop {
        let a = short(lab, NS, &["+notcp", name, qtype]).await;
        if pred(&a) {
            return t0.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{name} {qtype} never changed: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_dns_end_to_end() {
    if !prerequisites() {
        return;
    }
    // Real nodes: kubelet and containerd, Switchyard installed by its chart.
    let opts = LabOptions {
        real_nodes: true,
        ..LabOptions::default()
    };
    run_lab(opts, |lab| Box::pin(steps(lab))).await;
}

/// The addresses of the setup's routes and pods that the answers must hold.
struct Addrs {
    web_vip: String,
    plain_vip: String,
    dual_vips: Vec<String>,
    db0: String,
    db1: String,
    client_ip: String,
}

async fn steps(lab: &mut Lab) {
    networks_are_ready(lab).await;
    let a = pods_and_routes(lab).await;
    resolv_conf_points_at_the_nodes_server(lab).await;
    a_route_and_its_hostname_answer_a(lab, &a.web_vip).await;
    a_dual_stack_route_answers_a_and_aaaa(lab, &a.dual_vips).await;
    named_ports_answer_srv(lab, &a.plain_vip).await;
    virtual_ips_and_backends_answer_ptr(lab, &a).await;
    headless_answers_ready_backends_only(lab, &a.db0, &a.db1).await;
    pods_answer_a_and_dns_version_txt(lab, &a.client_ip).await;
    negative_answers_tell_nodata_from_nxdomain(lab).await;
    upstream_names_resolve(lab).await;
    the_system_resolver_uses_the_search_path(lab, &a.web_vip, &a.db0).await;
    a_route_change_is_answered_within_a_second(lab, &a.web_vip).await;
    a_backend_change_is_answered_within_a_second(lab).await;
    dns_metrics_count_queries(lab).await;
}

/// The default and the dual-stack tenant network turn Ready, with the test namespaces.
async fn networks_are_ready(lab: &Lab) {
    apply(lab, &example("01-podnetwork-default.yaml")).await;
    apply(lab, &example("02-podnetwork-tenant.yaml")).await;
    wait_condition(lab, "podnetwork/default", "Ready", 60).await;
    wait_condition(lab, "podnetwork/blue", "Ready", 60).await;
    create_namespace(lab, NS).await;
    wait_service_account(lab, "blue").await;
}

/// The pods and routes the records come from start and are Programmed; returns their addresses.
async fn pods_and_routes(lab: &Lab) -> Addrs {
    step("pods and routes");
    apply(lab, &pod(NS, "client", "node-1", "app: client", true)).await;
    apply(lab, &pod(NS, "web-0", "node-2", "app: web", true)).await;
    apply(lab, &pod(NS, "db-0", "node-2", "role: db", true)).await;
    apply(lab, &pod(NS, "db-1", "node-1", "role: db", false)).await;
    apply(lab, &pod("blue", "client", "node-2", "app: client", true)).await;
    apply(lab, &pod("blue", "bweb", "node-1", "app: bweb", true)).await;
    apply(
        lab,
        &route(
            NS,
            "web",
            "app: web",
            "  ports: [{name: http, port: 80, targetPort: 8082}]\n  hostnames: [web.dnst.example.internal]\n",
        ),
    )
    .await;
    apply(
        lab,
        &route(
            NS,
            "plain",
            "app: web",
            "  ports: [{port: 8080, targetPort: 8080}]\n",
        ),
    )
    .await;
    apply(
        lab,
        &route(
            NS,
            "db",
            "role: db",
            "  headless: true\n  ports: [{name: tcp, port: 8080, targetPort: 8080}]\n",
        ),
    )
    .await;
    apply(
        lab,
        &route(
            "blue",
            "dual",
            "app: bweb",
            "  ports: [{name: http, port: 80, targetPort: 8082}]\n",
        ),
    )
    .await;
    wait_pods_ready(lab, NS, 3, 90).await;
    wait_pods_ready(lab, "blue", 2, 90).await;
    for r in ["web", "plain", "db"] {
        wait_condition(lab, &format!("serviceroute/{r} -n {NS}"), "Programmed", 60).await;
    }
    wait_condition(lab, "serviceroute/dual -n blue", "Programmed", 60).await;
    let web_vip = vips(lab, NS, "web", 1).await[0].clone();
    let plain_vip = vips(lab, NS, "plain", 1).await[0].clone();
    let dual_vips = vips(lab, "blue", "dual", 2).await;
    let db0 = pod_ip(lab, NS, "db-0").await;
    let db1 = pod_ip(lab, NS, "db-1").await;
    let client_ip = pod_ip(lab, NS, "client").await;
    Addrs {
        web_vip,
        plain_vip,
        dual_vips,
        db0,
        db1,
        client_ip,
    }
}

/// A pod's resolv.conf names its node's server, the search path and ndots:5.
async fn resolv_conf_points_at_the_nodes_server(lab: &Lab) {
    step("the pod's resolv.conf points at its node's server");
    let out = lab
        .exec(NS, "client", &["cat", "/etc/resolv.conf"])
        .await
        .unwrap();
    let rc = String::from_utf8_lossy(&out.stdout);
    assert!(rc.contains(&format!("nameserver {SERVER}")), "{rc}");
    assert!(
        rc.contains(&format!("search {NS}.svc.{ZONE} svc.{ZONE} {ZONE}")),
        "{rc}"
    );
    assert!(rc.contains("ndots:5"), "{rc}");
}

/// A route's name, in any case, and its hostname answer A with its virtual IP.
async fn a_route_and_its_hostname_answer_a(lab: &Lab, web_vip: &str) {
    step("A for a route with a virtual IP, its hostname, case-insensitively");
    let fq = format!("web.{NS}.svc.{ZONE}");
    // The snapshot may still be catching up with the route's status.
    wait_until(10, || async {
        short(lab, NS, &["+notcp", &fq, "A"]).await == vec![web_vip.to_string()]
    })
    .await;
    assert_eq!(both(lab, NS, &fq, "A").await, vec![web_vip.to_string()]);
    assert_eq!(
        both(lab, NS, &fq.to_uppercase(), "A").await,
        vec![web_vip.to_string()]
    );
    assert_eq!(
        both(lab, NS, "web.dnst.example.internal", "A").await,
        vec![web_vip.to_string()]
    );
}

/// A dual-stack route answers A and AAAA, from either network.
async fn a_dual_stack_route_answers_a_and_aaaa(lab: &Lab, dual_vips: &[String]) {
    step("dual-stack route: A and AAAA");
    let dual = format!("dual.blue.svc.{ZONE}");
    let mut want_dual = dual_vips.to_vec();
    want_dual.sort();
    let mut got = both(lab, NS, &dual, "A").await;
    got.extend(both(lab, NS, &dual, "AAAA").await);
    got.sort();
    assert_eq!(got, want_dual);
    // From the dual-stack network's own pod too.
    assert_eq!(short(lab, "blue", &["+tcp", &dual, "AAAA"]).await.len(), 1);
}

/// Named ports answer SRV; unnamed ones have none.
async fn named_ports_answer_srv(lab: &Lab, plain_vip: &str) {
    step("SRV for named ports, none for unnamed ones");
    let srv = both(lab, NS, &format!("_http._tcp.web.{NS}.svc.{ZONE}"), "SRV").await;
    assert_eq!(srv, vec![format!("0 100 80 web.{NS}.svc.{ZONE}.")]);
    negative(
        lab,
        NS,
        &format!("_http._tcp.plain.{NS}.svc.{ZONE}"),
        "SRV",
        "NXDOMAIN",
    )
    .await;
    assert_eq!(
        both(lab, NS, &format!("plain.{NS}.svc.{ZONE}"), "A").await,
        vec![plain_vip.to_string()]
    );
}

/// Virtual IPs (IPv4 and IPv6) and headless backends answer PTR with their names.
async fn virtual_ips_and_backends_answer_ptr(lab: &Lab, a: &Addrs) {
    step("PTR for virtual IPs (in-addr.arpa and ip6.arpa) and headless backends");
    for v in &a.dual_vips {
        let out = short(lab, NS, &["+notcp", "-x", v]).await;
        assert_eq!(out, vec![format!("dual.blue.svc.{ZONE}.")], "PTR {v}");
        let out = short(lab, NS, &["+tcp", "-x", v]).await;
        assert_eq!(
            out,
            vec![format!("dual.blue.svc.{ZONE}.")],
            "PTR {v} over TCP"
        );
    }
    assert_eq!(
        short(lab, NS, &["-x", &a.web_vip]).await,
        vec![format!("web.{NS}.svc.{ZONE}.")]
    );
    let db0_name = format!("{}.db.{NS}.svc.{ZONE}", a.db0.replace('.', "-"));
    assert_eq!(
        short(lab, NS, &["-x", &a.db0]).await,
        vec![format!("{db0_name}.")]
    );
}

/// A headless route answers its ready backends only, with per-backend names and SRV.
async fn headless_answers_ready_backends_only(lab: &Lab, db0: &str, db1: &str) {
    step("headless: ready backends only, per-backend names, SRV per backend");
    let db0_name = format!("{}.db.{NS}.svc.{ZONE}", db0.replace('.', "-"));
    let db = format!("db.{NS}.svc.{ZONE}");
    assert_eq!(both(lab, NS, &db, "A").await, vec![db0.to_string()]);
    assert_eq!(both(lab, NS, &db0_name, "A").await, vec![db0.to_string()]);
    negative(
        lab,
        NS,
        &format!("{}.db.{NS}.svc.{ZONE}", db1.replace('.', "-")),
        "A",
        "NXDOMAIN",
    )
    .await;
    assert_eq!(
        both(lab, NS, &format!("_tcp._tcp.db.{NS}.svc.{ZONE}"), "SRV").await,
        vec![format!("0 100 8080 {db0_name}.")]
    );
}

/// Pods answer A by their dashed address, and `dns-version` answers TXT.
async fn pods_answer_a_and_dns_version_txt(lab: &Lab, client_ip: &str) {
    step("pod A records and dns-version");
    let pod_name = format!("{}.{NS}.pod.{ZONE}", client_ip.replace('.', "-"));
    assert_eq!(
        both(lab, NS, &pod_name, "A").await,
        vec![client_ip.to_string()]
    );
    assert_eq!(
        both(lab, NS, &format!("dns-version.{ZONE}"), "TXT").await,
        vec!["\"1.1.0\"".to_string()]
    );
}

/// Another type of a known name is NODATA; an unknown name and search-path misses NXDOMAIN.
async fn negative_answers_tell_nodata_from_nxdomain(lab: &Lab) {
    step("negative answers: NODATA for another type, NXDOMAIN for no name, search-path misses");
    let fq = format!("web.{NS}.svc.{ZONE}");
    negative(lab, NS, &fq, "AAAA", "NODATA").await;
    negative(lab, NS, &fq, "TXT", "NODATA").await;
    negative(lab, NS, &format!("{NS}.svc.{ZONE}"), "A", "NODATA").await;
    negative(lab, NS, &format!("nope.{NS}.svc.{ZONE}"), "A", "NXDOMAIN").await;
    negative(
        lab,
        NS,
        &format!("www.{UPSTREAM_ZONE}.{NS}.svc.{ZONE}"),
        "A",
        "NXDOMAIN",
    )
    .await;
    negative(
        lab,
        NS,
        &format!("{fq}.{NS}.svc.{ZONE}"),
        "AAAA",
        "NXDOMAIN",
    )
    .await;
    negative(
        lab,
        NS,
        &format!("10-1-2-3.{NS}.pod.{ZONE}"),
        "A",
        "NXDOMAIN",
    )
    .await;
}

/// A name of the lab's own upstream resolver answers over UDP and TCP, an unknown one NXDOMAIN.
async fn upstream_names_resolve(lab: &Lab) {
    step("an upstream name (the lab's own resolver), over UDP and TCP");
    assert_eq!(
        both(lab, NS, &format!("www.{UPSTREAM_ZONE}"), "A").await,
        vec![UPSTREAM_WWW.0.to_string()],
        "is dnsmasq installed (Debian package dnsmasq-base)? see the lab's logs/dnsmasq.log"
    );
    assert_eq!(
        both(lab, NS, &format!("www.{UPSTREAM_ZONE}"), "AAAA").await,
        vec![UPSTREAM_WWW.1.to_string()]
    );
    let out = dig(lab, NS, &[&format!("nope.{UPSTREAM_ZONE}"), "A"]).await;
    assert_eq!(status_of(&out), "NXDOMAIN", "{out}");
}

/// getent and curl resolve short names through the pod's search path, and upstream names after it.
async fn the_system_resolver_uses_the_search_path(lab: &Lab, web_vip: &str, db0: &str) {
    step("the system resolver: getent through the search path, curl by short name");
    let out = lab
        .exec(NS, "client", &["getent", "hosts", "web"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(web_vip), "getent hosts web: {text}");
    let out = lab
        .exec(NS, "client", &["getent", "ahostsv4", "db"])
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(db0),
        "getent ahostsv4 db"
    );
    let out = lab
        .exec(
            NS,
            "client",
            &["getent", "ahosts", &format!("www.{UPSTREAM_ZONE}")],
        )
        .await
        .unwrap();
    // Through the whole search path (three NXDOMAINs under the zone), then upstream.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(UPSTREAM_WWW.0) && text.contains(UPSTREAM_WWW.1),
        "getent ahosts www.{UPSTREAM_ZONE}: {text}"
    );
    let out = lab
        .exec(
            NS,
            "client",
            &["curl", "-sS", "--max-time", "5", "http://web/"],
        )
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("web-0"),
        "curl http://web/: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hostname added to a route answers within a second of the change.
async fn a_route_change_is_answered_within_a_second(lab: &Lab, web_vip: &str) {
    step("a route change is answered within a second");
    let t0 = Instant::now();
    apply(
        lab,
        &route(
            NS,
            "web",
            "app: web",
            "  ports: [{name: http, port: 80, targetPort: 8082}]\n  hostnames: [web.dnst.example.internal, www.dnst.example.internal]\n",
        ),
    )
    .await;
    let took = answered_within(lab, "www.dnst.example.internal", "A", t0, |a| {
        a == [web_vip.to_string()]
    })
    .await;
    eprintln!("route change answered after {took:?}");
    assert!(took < Duration::from_secs(1), "route change took {took:?}");
}

/// A new backend answers within a second of reaching its EndpointSlice.
async fn a_backend_change_is_answered_within_a_second(lab: &Lab) {
    step("a backend change is answered within a second of its EndpointSlice");
    let db = format!("db.{NS}.svc.{ZONE}");
    apply(lab, &pod(NS, "db-2", "node-1", "role: db", true)).await;
    wait_pods_ready(lab, NS, 4, 90).await;
    let db2 = pod_ip(lab, NS, "db-2").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready_endpoints(lab, NS, "db").await.contains(&db2) {
        assert!(Instant::now() < deadline, "db-2 never reached the slices");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    let took = answered_within(lab, &db, "A", t0, |a| a.contains(&db2)).await;
    eprintln!("backend change answered after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "backend change took {took:?}"
    );
}

/// The agent's metrics count DNS queries by type and rcode and time the programming.
async fn dns_metrics_count_queries(lab: &Lab) {
    step("the agent's DNS metrics count queries by type and rcode");
    let addr = lab.agent_addr("node-1").unwrap();
    let out = lab
        .exec(
            NS,
            "client",
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{addr}/metrics"),
            ],
        )
        .await
        .unwrap();
    let m = String::from_utf8_lossy(&out.stdout);
    assert!(
        m.contains("switchyard_agent_dns_queries_total{qtype=\"A\",rcode=\"NXDOMAIN\"}"),
        "{m}"
    );
    assert!(m.contains("switchyard_agent_dns_programming_latency_seconds"));
}
