//! The ServiceRoute controller: acceptance, virtual-IP claims, backend resolution into
//! EndpointSlices, DNS names, status and Events. The decisions are pure (`vip`, `backends`,
//! `slices`); this module reads the caches, calls them, and writes the result.

pub mod access;
pub mod backends;
pub mod programmed;
pub mod slices;
pub mod vip;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_api::dataplane::Rv;
use switchyard_api::service_route::{EndpointCounts, NodeCounts};
use switchyard_api::virtual_ip::{RouteRef, virtual_ip_name};
use switchyard_api::{
    PodNetwork, ServiceRoute, ServiceRouteStatus, VirtualIP, VirtualIPSpec, membership::resolve,
    validate::parse_cidr,
};
use tracing::info;

use crate::conditions::{self, Verdict};
use crate::context::{Context, FIELD_MANAGER, list};
use crate::error::{Error, Result};
use crate::pod_network::acceptance;

/// Finalizer that releases a route's virtual IPs before the route goes away.
pub const FINALIZER: &str = "switchyard.dev/virtual-ips";

const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one ServiceRoute (behind the finalizer that releases its addresses).
#[tracing::instrument(name = "reconcile ServiceRoute", skip_all, fields(route = %format!("{}/{}", route.namespace().unwrap_or_default(), route.name_any())))]
pub async fn reconcile(route: Arc<ServiceRoute>, ctx: Arc<Context>) -> Result<Action> {
    let ns = route.namespace().unwrap_or_default();
    let api: Api<ServiceRoute> = Api::namespaced(ctx.client.clone(), &ns);
    let done = finalizer(&api, FINALIZER, route, |event| async {
        match event {
            Finalizer::Apply(r) => apply(r, ctx.clone()).await,
            Finalizer::Cleanup(r) => cleanup(r, ctx.clone()).await,
        }
    })
    .await;
    // The finalizer helper tests the cached finalizer list before adding ours; a 422 means the
    // cache was behind the server (usually: our own earlier add, whose watch event is on its
    // way and triggers the route again). Not a failure: look again shortly.
    if let Err(kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(s))) = &done
        && s.code == 422
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    done.map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => Error::kube(
            format!("update the finalizer of a ServiceRoute in namespace {ns}"),
            e,
        ),
        other => Error::Finalizer {
            namespace: ns.clone(),
            message: other.to_string(),
        },
    })
}

fn held_addresses(ctx: &Context) -> BTreeMap<IpAddr, vip::Holder> {
    ctx.stores
        .vips
        .state()
        .iter()
        .filter_map(|v| {
            Some((
                v.spec.address.parse().ok()?,
                vip::Holder {
                    uid: v.spec.route.uid.clone(),
                    route: format!("{}/{}", v.spec.route.namespace, v.spec.route.name),
                },
            ))
        })
        .collect()
}

async fn cleanup(route: Arc<ServiceRoute>, ctx: Arc<Context>) -> Result<Action> {
    let uid = route.uid().unwrap_or_default();
    let api: Api<VirtualIP> = Api::all(ctx.client.clone());
    for (addr, holder) in held_addresses(&ctx) {
        if holder.uid == uid {
            release(&api, &addr).await?;
            info!(route = %holder.route, address = %addr, "released virtual IP");
        }
    }
    Ok(Action::await_change())
}

async fn release(api: &Api<VirtualIP>, addr: &IpAddr) -> Result<()> {
    match api
        .delete(&virtual_ip_name(addr), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("delete VirtualIP {addr}"), e)),
    }
}

async fn apply(route: Arc<ServiceRoute>, ctx: Arc<Context>) -> Result<Action> {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let uid = route.uid().unwrap_or_default();
    let oref = route.object_ref(&());

    let networks = ctx.stores.networks.state();
    let net_refs: Vec<&PodNetwork> = networks.iter().map(|n| n.as_ref()).collect();
    let verdicts = acceptance::decide(&net_refs);
    let accepted: Vec<&PodNetwork> = net_refs
        .iter()
        .copied()
        .filter(|n| verdicts.get(&n.name_any()).is_some_and(|v| v.is_accepted()))
        .collect();
    let namespaces = ctx.stores.namespaces.state();
    let ns_refs: Vec<&k8s_openapi::api::core::v1::Namespace> =
        namespaces.iter().map(|n| n.as_ref()).collect();
    let network = ns_refs
        .iter()
        .find(|n| n.name_any() == ns)
        .and_then(|n| resolve(n.labels(), &accepted).network)
        .and_then(|name| accepted.iter().find(|n| n.name_any() == name).copied());

    // Acceptance: the spec, the network, the name, the addresses.
    let mut problems: Vec<(String, &'static str, String)> = Vec::new();
    let violations = route.validate(&ctx.cluster_domain);
    if !violations.is_empty() {
        problems.push(("Accepted".into(), "Invalid", violations.to_string()));
    }
    if network.is_none() {
        problems.push((
            "Accepted".into(),
            "NoNetwork",
            format!("namespace {ns} belongs to no accepted PodNetwork"),
        ));
    }
    if ctx
        .stores
        .services
        .state()
        .iter()
        .any(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == name)
    {
        problems.push((
            "Accepted".into(),
            "Conflict",
            format!(
                "a Service named {name} exists in namespace {ns}; its DNS name would be ambiguous"
            ),
        ));
    }

    let vips_api: Api<VirtualIP> = Api::all(ctx.client.clone());
    let held = held_addresses(&ctx);
    let mut addresses: Vec<IpAddr> = held
        .iter()
        .filter(|(_, h)| h.uid == uid)
        .map(|(a, _)| *a)
        .collect();
    let mut lost_race = false;
    // VirtualIP writes of this pass: released addresses, and the versions of new claims.
    let mut released: Vec<IpAddr> = Vec::new();
    let mut claim_rvs: Vec<(IpAddr, Option<String>)> = Vec::new();
    if problems.is_empty()
        && let Some(net) = network
    {
        let pools: Vec<IpNet> = net
            .spec
            .service_cidrs
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect();
        let requested: Vec<IpAddr> = route
            .spec
            .virtual_ips
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let plan = vip::plan(&uid, route.spec.headless, &requested, &pools, &held);
        for addr in &plan.release {
            release(&vips_api, addr).await?;
            released.push(*addr);
        }
        let mut claimed = Vec::new();
        for addr in &plan.claim {
            let mut claim = VirtualIP::new(
                &virtual_ip_name(addr),
                VirtualIPSpec {
                    address: addr.to_string(),
                    network: net.name_any(),
                    route: RouteRef {
                        namespace: ns.clone(),
                        name: name.clone(),
                        uid: uid.clone(),
                    },
                },
            );
            claim.metadata.labels = Some(
                [
                    ("switchyard.dev/route-namespace".to_string(), ns.clone()),
                    ("switchyard.dev/route".to_string(), name.clone()),
                ]
                .into(),
            );
            match vips_api
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &claim,
                )
                .await
            {
                Ok(created) => {
                    claimed.push(addr.to_string());
                    claim_rvs.push((*addr, created.metadata.resource_version));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Another route (or replica) claimed it first; our cache will show whom.
                    lost_race = true;
                }
                Err(e) => {
                    return Err(Error::kube(
                        format!("create VirtualIP {addr} for ServiceRoute {ns}/{name}"),
                        e,
                    ));
                }
            }
        }
        if !claimed.is_empty() {
            ctx.publish(
                &oref,
                EventType::Normal,
                "VirtualIPAllocated",
                "Allocate",
                format!("allocated {}", claimed.join(", ")),
            )
            .await;
        }
        addresses = plan.addresses();
        if lost_race {
            addresses.retain(|a| !plan.claim.contains(a) || claimed.contains(&a.to_string()));
        }
        for (field, msg) in plan.problems {
            problems.push((
                "Accepted".into(),
                "VirtualIPUnavailable",
                format!("{field}: {msg}"),
            ));
        }
    }

    // Backends.
    let pods = ctx.stores.pods.state();
    let pod_refs: Vec<&k8s_openapi::api::core::v1::Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let resolution = if network.is_some() {
        backends::resolve_backends(&route, &accepted, &ns_refs, &pod_refs)
    } else {
        Default::default()
    };
    let serving: Vec<backends::Backend> = resolution
        .backends
        .iter()
        .filter(|b| b.ready || route.spec.publish_not_ready_addresses)
        .cloned()
        .collect();
    let mut want = slices::desired(&route, &serving);
    if let Some(sources) = access::allowed_sources(&route, &ns_refs, &pod_refs) {
        want.extend(slices::desired_access(&route, &sources));
    }
    if !problems.is_empty() {
        // A route that is not accepted serves nothing.
        want.clear();
    }
    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let want_names: BTreeSet<String> = want
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    // Slice writes of this pass: name → resourceVersion the API server gave the write.
    let mut written: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    for s in &want {
        let s_name = s.metadata.name.clone().unwrap_or_default();
        let existing = ctx
            .stores
            .slices
            .state()
            .into_iter()
            .find(|e| e.namespace().as_deref() == Some(ns.as_str()) && e.name_any() == s_name);
        if existing.as_deref().is_some_and(|e| {
            e.endpoints == s.endpoints
                && e.ports == s.ports
                && e.address_type == s.address_type
                && slices::annotations(&route)
                    .iter()
                    .all(|(k, v)| e.annotations().get(k) == Some(v))
        }) {
            continue;
        }
        let mut body = serde_json::to_value(s).map_err(|source| Error::Serialize {
            what: format!("EndpointSlice {ns}/{s_name}"),
            source,
        })?;
        body["apiVersion"] = json!("discovery.k8s.io/v1");
        body["kind"] = json!("EndpointSlice");
        let applied = slices_api
            .patch(
                &s_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| Error::kube(format!("apply EndpointSlice {ns}/{s_name}"), e))?;
        written.insert(s_name, applied.metadata.resource_version);
    }
    for stale in ctx.stores.slices.state() {
        let owned = stale
            .labels()
            .get(slices::ROUTE_LABEL)
            .is_some_and(|r| *r == name)
            && stale.namespace().as_deref() == Some(ns.as_str());
        if owned && !want_names.contains(&stale.name_any()) {
            match slices_api
                .delete(&stale.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    deleted.insert(stale.name_any());
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    deleted.insert(stale.name_any());
                }
                Err(e) => {
                    return Err(Error::kube(
                        format!("delete EndpointSlice {ns}/{}", stale.name_any()),
                        e,
                    ));
                }
            }
        }
    }

    // Status.
    let accepted_v = match problems.first() {
        None => Verdict::new(
            "Accepted",
            true,
            "Accepted",
            "the route is valid, its network is accepted and its addresses are allocated",
        ),
        Some((_, reason, _)) => Verdict::new(
            "Accepted",
            false,
            reason,
            problems
                .iter()
                .map(|(_, _, m)| m.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let mut refused: Vec<String> = resolution.without_consent.iter().cloned().collect();
    refused.sort();
    let resolved = if refused.is_empty() && resolution.other_network.is_empty() {
        Verdict::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            format!("{} backend(s) selected", resolution.backends.len()),
        )
    } else if !refused.is_empty() {
        Verdict::new(
            "ResolvedRefs",
            false,
            "RefNotPermitted",
            format!(
                "pods in namespaces without consent were left out: {} (a namespace consents with the annotation {}: {ns})",
                list(&refused, 10),
                switchyard_api::service_route::ALLOW_ROUTES_FROM_ANNOTATION
            ),
        )
    } else {
        let others: Vec<String> = resolution.other_network.iter().cloned().collect();
        Verdict::new(
            "ResolvedRefs",
            false,
            "OtherNetwork",
            format!(
                "pods on another PodNetwork were left out: {}",
                list(&others, 10)
            ),
        )
    };
    let ready_backends = resolution.ready();
    // Programmed: every ready agent has applied the route's current slices and claims, as the
    // slice and claim caches hold them (or newer, as this pass's writes returned them).
    let mut slice_rvs: BTreeMap<String, Option<String>> = ctx
        .stores
        .slices
        .state()
        .iter()
        .filter(|e| {
            e.namespace().as_deref() == Some(ns.as_str())
                && e.labels().get(slices::ROUTE_LABEL) == Some(&name)
                && !deleted.contains(&e.name_any())
        })
        .map(|e| (e.name_any(), e.resource_version()))
        .collect();
    for (n, rv) in written {
        let cached = slice_rvs.get(&n).cloned().flatten();
        let newer = match (
            cached.as_deref().and_then(Rv::parse),
            rv.as_deref().and_then(Rv::parse),
        ) {
            (Some(cached), Some(w)) => w >= cached,
            _ => true,
        };
        if newer {
            slice_rvs.insert(n, rv);
        }
    }
    let mut vip_rvs: BTreeMap<IpAddr, Option<String>> = ctx
        .stores
        .vips
        .state()
        .iter()
        .filter(|v| v.spec.route.uid == uid)
        .filter_map(|v| Some((v.spec.address.parse().ok()?, v.resource_version())))
        .filter(|(a, _)| !released.contains(a))
        .collect();
    vip_rvs.extend(claim_rvs);
    let reports: Vec<programmed::AgentReport> = ctx
        .stores
        .leases
        .state()
        .iter()
        .filter_map(|l| programmed::AgentReport::from_lease(l))
        .collect();
    let now = Timestamp::now();
    let on_nodes = programmed::programmed_nodes(
        &reports,
        now,
        &programmed::Need::of(slice_rvs.values().map(|v| v.as_deref())),
        &programmed::Need::of(vip_rvs.values().map(|v| v.as_deref())),
    );
    let programmed = if on_nodes.everywhere() {
        Verdict::new(
            "Programmed",
            true,
            "Programmed",
            format!(
                "programmed on every ready node ({})",
                on_nodes.programmed.len()
            ),
        )
    } else if on_nodes.total() == 0 {
        Verdict::new("Programmed", false, "Pending", "no node agent is ready")
    } else {
        Verdict::new(
            "Programmed",
            false,
            "Pending",
            format!(
                "{} of {} ready node(s) programmed; waiting for {}",
                on_nodes.programmed.len(),
                on_nodes.total(),
                list(&on_nodes.pending, 5)
            ),
        )
    };
    let ready = if !accepted_v.ok {
        Verdict::new("Ready", false, "NotAccepted", accepted_v.message.clone())
    } else if !programmed.ok {
        Verdict::new(
            "Ready",
            false,
            "NotProgrammed",
            format!(
                "{ready_backends} ready backend(s); waiting for the node agents to program the route"
            ),
        )
    } else if ready_backends == 0 {
        Verdict::new("Ready", false, "NoReadyBackends", "no ready backend")
    } else {
        Verdict::new(
            "Ready",
            true,
            "Ready",
            format!("{ready_backends} ready backend(s), programmed on every ready node"),
        )
    };
    let mut dns_names = vec![format!("{name}.{ns}.svc.{}", ctx.cluster_domain)];
    dns_names.extend(route.spec.hostnames.iter().cloned());
    let old = route.status.clone().unwrap_or_default();
    let status = ServiceRouteStatus {
        observed_generation: route.metadata.generation,
        virtual_ips: addresses.iter().map(|a| a.to_string()).collect(),
        dns_names,
        endpoints: Some(EndpointCounts {
            ready: i32::try_from(ready_backends).unwrap_or(i32::MAX),
            not_ready: i32::try_from(resolution.backends.len() - ready_backends)
                .unwrap_or(i32::MAX),
        }),
        nodes: Some(NodeCounts {
            programmed: i32::try_from(on_nodes.programmed.len()).unwrap_or(i32::MAX),
            total: i32::try_from(on_nodes.total()).unwrap_or(i32::MAX),
        }),
        conditions: conditions::apply(
            &old.conditions,
            &[accepted_v.clone(), resolved, programmed, ready],
            route.metadata.generation,
            now,
        ),
    };
    if !accepted_v.ok
        && (conditions::is_true(&old.conditions, "Accepted") || old.conditions.is_empty())
    {
        ctx.publish(
            &oref,
            EventType::Warning,
            accepted_v.reason,
            "Accept",
            accepted_v.message.clone(),
        )
        .await;
    }
    if !same_status(&old, &status) {
        let api: Api<ServiceRoute> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute", "status": status});
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::kube(format!("patch ServiceRoute {ns}/{name} status"), e))?;
    }
    // Reports going stale (no event) are noticed by the controller's liveness watch, which
    // triggers every route when the set of ready agents changes.
    Ok(if lost_race {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::requeue(RESYNC)
    })
}

fn same_status(a: &ServiceRouteStatus, b: &ServiceRouteStatus) -> bool {
    let strip = |s: &ServiceRouteStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}
