//! The incremental path against a real kernel: the service table's changes, sent over netlink
//! (and through `nft -f` when they carry chains), leave exactly the table's elements in
//! `inet switchyard`, and the netlink read-back (`kernel::dump`) finds exactly what
//! `nft -j list table` shows. Runs in a network namespace of its own (needs root, `nft`, and
//! `conntrack` for the UDP cleanup), installing nftables and conntrack from Debian packages
//! first when they are missing, through the lab's `e2e/host-packages.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use switchyard_agent::kernel::services as ksvc;
use switchyard_agent::kernel::{dump, netlink};
use switchyard_agent::service_table::ServiceTable;
use switchyard_agent::services::{
    Backend, Elements, Key, Proto, RouteAccess, RouteDesired, Service,
};

fn key(i: u8, six: bool, proto: Proto) -> Key {
    Key {
        vip: if six {
            format!("fd00:19::{i}").parse().unwrap()
        } else {
            IpAddr::from([198, 19, 0, i])
        },
        proto,
        port: 80 + u16::from(i),
    }
}

fn route(i: u8, n: u8, affinity: Option<u32>, access: bool) -> RouteDesired {
    let mut services = std::collections::BTreeMap::new();
    for six in [false, true] {
        for proto in [Proto::Tcp, Proto::Udp] {
            let k = key(i, six, proto);
            services.insert(
                k,
                Service {
                    route: format!("ns/r{i}"),
                    backends: (0..n)
                        .map(|b| Backend {
                            ip: if six {
                                format!("fd00:18::{i}:{b}").parse().unwrap()
                            } else {
                                IpAddr::from([198, 18, i, b])
                            },
                            port: 8000 + u16::from(b),
                            node: Some(if b == 0 { "here" } else { "there" }.into()),
                        })
                        .collect(),
                    affinity,
                    local: false,
                    masq: i % 2 == 1,
                },
            );
        }
    }
    let access = access.then(|| RouteAccess {
        targets: services.keys().copied().collect(),
        sources: [
            IpAddr::from([198, 18, 200, i]),
            "fd00:18::c8".parse().unwrap(),
        ]
        .into(),
    });
    RouteDesired { services, access }
}

/// Whether to run: root (else a printed skip, outside CI only) with nft and conntrack
/// installed.
fn preflight(test: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root to create a network namespace; CI is set, so this fails instead of skipping"
        );
        // Straight to the stream: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(std::io::stderr(), "{test}: SKIPPED (not root)");
        return false;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/host-packages.sh");
    let installed = std::process::Command::new("bash")
        .arg(&script)
        .args(["nft:nftables", "conntrack:conntrack"])
        .status()
        .unwrap_or_else(|e| panic!("{test}: cannot run {}: {e}", script.display()));
    assert!(
        installed.success(),
        "{test}: nftables and conntrack are needed and could not be installed (see above)"
    );
    true
}

/// The kernel holds `want`: read back over netlink, and the same through `nft -j`.
async fn assert_holds(nl: &mut netlink::Socket, want: &Elements, when: &str) {
    let back = dump::read(nl).unwrap();
    assert_eq!(&back, want, "netlink read-back {when}");
    assert_eq!(
        ksvc::read_with_nft().await.unwrap(),
        back,
        "nft -j against netlink {when}"
    );
}

async fn affinity_listing() -> String {
    let out = tokio::process::Command::new("nft")
        .args(["list", "map", "inet", "switchyard", "affinity_v4"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `test` on a thread of its own in a network namespace of its own (the agent's netlink
/// sockets and `nft` then see only that namespace), on a current-thread runtime.
fn in_own_netns<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare a network namespace (run as root)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    })
    .join()
    .unwrap();
}

/// Runs `nft args` with `stdin`, returning what it did.
async fn nft(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    child.wait_with_output().await.unwrap()
}

#[test]
fn incremental_changes_leave_exactly_the_tables_elements() {
    if !preflight("incremental_changes_leave_exactly_the_tables_elements") {
        return;
    }
    in_own_netns(|| async {
        // No table yet: nothing read back.
        let mut nl = netlink::Socket::open().unwrap();
        assert_eq!(dump::read(&mut nl).unwrap(), Elements::default());
        let mut table = ServiceTable::new("here");
        for i in 0..6 {
            table.set_route(&format!("ns/r{i}"), Some(route(i, 3, None, i % 2 == 0)));
        }
        table.settle();
        // From an empty table: skeleton and chains by nft, elements over netlink.
        ksvc::apply(&mut nl, None, &table.elements()).await.unwrap();
        assert_holds(&mut nl, &table.elements(), "after the first programming").await;
        // Element-only changes (netlink): fewer backends, affinity, access, no backends,
        // a route gone, back again.
        let steps: Vec<(u8, Option<RouteDesired>)> = vec![
            (1, Some(route(1, 2, None, false))),
            (1, Some(route(1, 3, None, false))),
            (2, Some(route(2, 3, None, false))),
            (3, Some(route(3, 3, None, true))),
            (4, Some(route(4, 0, None, true))),
            (5, None),
            (5, Some(route(5, 3, None, false))),
            (0, Some(route(0, 3, Some(30), true))),
            (0, Some(route(0, 2, Some(30), true))),
            (0, Some(route(0, 2, None, true))),
            (4, Some(route(4, 1, None, true))),
        ];
        let mut remembered = false;
        for (i, want) in steps {
            table.set_route(&format!("ns/r{i}"), want);
            let change = table.take_change();
            ksvc::apply_change(&mut nl, &change).await.unwrap();
            assert_holds(
                &mut nl,
                &table.elements(),
                &format!("after changing route {i}"),
            )
            .await;
            if !remembered
                && table
                    .elements()
                    .affinity
                    .contains_key(&key(0, false, Proto::Tcp))
            {
                remembered = true;
                // Clients remembered by the kernel: one of route 0, one of another key.
                let add = "add element inet switchyard affinity_v4 { \
                               198.18.250.1 . 198.19.0.0 . tcp . 80 timeout 1h : 1, \
                               198.18.250.2 . 198.19.0.77 . tcp . 80 timeout 1h : 0 }";
                let st = tokio::process::Command::new("nft")
                    .arg(add)
                    .status()
                    .await
                    .unwrap();
                assert!(st.success());
            }
        }
        // Route 0 went from 3 to 2 backends with affinity: its remembered client was
        // forgotten (over netlink), the other key's kept.
        let left = affinity_listing().await;
        assert!(!left.contains("198.18.250.1"), "{left}");
        assert!(left.contains("198.18.250.2"), "{left}");
        // Dropping chains nothing uses goes through nft.
        table.release_unused_chains();
        ksvc::apply_change(&mut nl, &table.take_change())
            .await
            .unwrap();
        assert_holds(&mut nl, &table.elements(), "after dropping chains").await;
        // A change the kernel refuses (deleting an element that is not there) applies
        // nothing and names the problem.
        let mut bad = table.clone();
        bad.set_route("ns/r9", Some(route(9, 1, None, false)));
        bad.settle();
        bad.set_route("ns/r9", None);
        let err = ksvc::apply_change(&mut nl, &bad.take_change())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("netlink"), "{err}");
        assert_holds(&mut nl, &table.elements(), "after a refused change").await;
        // The socket stays usable after a refused transaction.
        table.set_route("ns/r1", Some(route(1, 1, None, false)));
        ksvc::apply_change(&mut nl, &table.take_change())
            .await
            .unwrap();
        assert_holds(&mut nl, &table.elements(), "at the end").await;
    });
}

/// What an agent before backend sharding left in the kernel: one verdict map and one backend
/// map per family and a chain `svc_n2` between them, with a route programmed.
const UNSHARDED: &str = "add table inet switchyard
add map inet switchyard service_dispatch_v4 { type ipv4_addr . inet_proto . inet_service : verdict; }
add map inet switchyard service_dispatch_v6 { type ipv6_addr . inet_proto . inet_service : verdict; }
add map inet switchyard backends_v4 { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service; }
add map inet switchyard backends_v6 { type ipv6_addr . inet_proto . inet_service . mark : ipv6_addr . inet_service; }
add map inet switchyard affinity_routes_v4 { type ipv4_addr . inet_proto . inet_service : verdict; }
add chain inet switchyard svc_prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain inet switchyard svc_dispatch
add rule inet switchyard svc_prerouting jump svc_dispatch
add rule inet switchyard svc_dispatch ip daddr . meta l4proto . th dport vmap @service_dispatch_v4
add rule inet switchyard svc_dispatch ip6 daddr . meta l4proto . th dport vmap @service_dispatch_v6
add chain inet switchyard svc_n2
add rule inet switchyard svc_n2 ct mark set numgen random mod 2
add rule inet switchyard svc_n2 ip daddr . meta l4proto . th dport vmap @affinity_routes_v4
add rule inet switchyard svc_n2 meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport . ct mark map @backends_v4
add rule inet switchyard svc_n2 meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport . ct mark map @backends_v6
add element inet switchyard backends_v4 { 198.19.0.200 . tcp . 80 . 0 : 198.18.9.1 . 8080, 198.19.0.200 . tcp . 80 . 1 : 198.18.9.2 . 8080 }
add element inet switchyard service_dispatch_v4 { 198.19.0.200 . tcp . 80 : goto svc_n2 }
";

#[test]
fn a_table_of_the_unsharded_layout_is_migrated_in_one_transaction() {
    if !preflight("a_table_of_the_unsharded_layout_is_migrated_in_one_transaction") {
        return;
    }
    in_own_netns(|| async {
        let out = nft(&["-f", "-"], Some(UNSHARDED)).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut nl = netlink::Socket::open().unwrap();
        // The read-back sees the old chain (and nothing it could mistake for routes).
        let before = dump::read(&mut nl).unwrap();
        assert_eq!(
            before.legacy_chains.keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        let mut table = ServiceTable::new("here");
        for i in 0..4 {
            table.set_route(&format!("ns/r{i}"), Some(route(i, 3, None, i == 0)));
        }
        table.settle();
        ksvc::apply(&mut nl, None, &table.elements()).await.unwrap();
        assert_holds(&mut nl, &table.elements(), "after the migration").await;
        for gone in [
            "service_dispatch_v4",
            "service_dispatch_v6",
            "backends_v4",
            "backends_v6",
        ] {
            let out = nft(&["list", "map", "inet", "switchyard", gone], None).await;
            assert!(!out.status.success(), "{gone} is still there");
        }
        let out = nft(&["list", "chain", "inet", "switchyard", "svc_n2"], None).await;
        assert!(!out.status.success(), "svc_n2 is still there");
        // A second start on the migrated table changes nothing.
        ksvc::apply(&mut nl, None, &table.elements()).await.unwrap();
        assert_holds(&mut nl, &table.elements(), "after a restart").await;
    });
}
