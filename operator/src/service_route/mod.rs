//! The ServiceRoute controller: acceptance, virtual-IP claims, backend resolution into
//! EndpointSlices, DNS names, status and Events. The decisions are pure (`vip`, `backends`,
//! `slices`, `programmed`, `status`); this module reads the caches, calls them, and writes the
//! result.

pub mod access;
pub mod backends;
pub mod programmed;
pub mod slices;
pub mod status;
pub mod vip;
pub mod waiters;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_api::dataplane::Rv;
use switchyard_api::service_route::NamespaceFrom;
use switchyard_api::virtual_ip::{RouteRef, virtual_ip_name};
use switchyard_api::{
    PodNetwork, ServiceRoute, VirtualIP, VirtualIPSpec, membership::resolve, validate::parse_cidr,
};
use tracing::{info, warn};

use crate::context::{Context, FIELD_MANAGER, addr_key, slice_key, uid_key};
use crate::error::{Error, Result};
use crate::pod_network::acceptance;
use status::Problem;

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

/// Every address in use, read from the caches' indexes: the routes' claims, then the cluster
/// IPs of core Services (a route never picks or is granted one; one it holds and a Service
/// also has is given up, see [`allocate`]).
struct ClusterHeld<'a>(&'a Context);

impl ClusterHeld<'_> {
    /// The Service whose cluster IP `addr` is.
    fn service(&self, addr: &IpAddr) -> Option<vip::Holder> {
        let s = &self.0.stores;
        s.indexes
            .services
            .get(&addr_key(addr), &s.services)
            .first()
            .map(|svc| vip::Holder::service(&svc.namespace().unwrap_or_default(), &svc.name_any()))
    }
}

impl vip::Held for ClusterHeld<'_> {
    fn holder(&self, addr: &IpAddr) -> Option<vip::Holder> {
        let s = &self.0.stores;
        s.indexes
            .vips
            .get(&addr_key(addr), &s.vips)
            .iter()
            .find(|v| v.spec.address.parse::<IpAddr>().ok() == Some(*addr))
            .map(|v| vip::Holder {
                uid: v.spec.route.uid.clone(),
                route: format!("{}/{}", v.spec.route.namespace, v.spec.route.name),
            })
            .or_else(|| self.service(addr))
    }

    fn held_by(&self, uid: &str) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = route_claims(self.0, uid)
            .iter()
            .filter_map(|v| v.spec.address.parse().ok())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The cached claims of route `uid`.
fn route_claims(ctx: &Context, uid: &str) -> Vec<Arc<VirtualIP>> {
    let s = &ctx.stores;
    s.indexes
        .vips
        .get(&uid_key(uid), &s.vips)
        .into_iter()
        .filter(|v| v.spec.route.uid == uid)
        .collect()
}

/// The cached slices of route `ns/name`.
fn route_slices(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
    let s = &ctx.stores;
    s.indexes.slices.get(&slice_key(ns, name), &s.slices)
}

async fn cleanup(route: Arc<ServiceRoute>, ctx: Arc<Context>) -> Result<Action> {
    ctx.wakeups
        .forget_route(&ObjectRef::from_obj(route.as_ref()));
    let uid = route.uid().unwrap_or_default();
    let api: Api<VirtualIP> = Api::all(ctx.client.clone());
    let who = format!(
        "{}/{}",
        route.namespace().unwrap_or_default(),
        route.name_any()
    );
    for addr in vip::Held::held_by(&ClusterHeld(&ctx), &uid) {
        release(&api, &addr).await?;
        info!(route = %who, address = %addr, "released virtual IP");
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

/// One pass over a live route, top-down: where it lives, what keeps it from being accepted,
/// its virtual IPs, its endpoints, which nodes have programmed it, and what it reports. Only
/// `allocate`, `publish_slices` and `publish_status` write.
async fn apply(route: Arc<ServiceRoute>, ctx: Arc<Context>) -> Result<Action> {
    let scope = Scope::resolve(
        &route.namespace().unwrap_or_default(),
        &ctx.stores.networks.state(),
        ctx.stores.namespaces.state(),
    );
    let namesake: Vec<Arc<Service>> = ctx
        .stores
        .services
        .get(&ObjectRef::new(&route.name_any()).within(&route.namespace().unwrap_or_default()))
        .into_iter()
        .collect();
    let mut problems = acceptance_problems(&route, &ctx.cluster_domain, &scope, &namesake);
    let network = scope.network.as_deref().filter(|_| problems.is_empty());
    let vips = allocate(&ctx, &route, network).await?;
    problems.extend(vips.problems.iter().cloned());
    ctx.wakeups.set_starved(
        ObjectRef::from_obj(route.as_ref()),
        !vips.problems.is_empty(),
    );
    let endpoints = endpoints(
        &route,
        &scope,
        &candidate_pods(&ctx, &route),
        problems.is_empty(),
    );
    let slice_writes = publish_slices(&ctx, &route, &endpoints.slices).await?;
    let now = Timestamp::now();
    let on_nodes = programmed_on(&ctx, &route, &vips, &slice_writes, now);
    let oref = ObjectRef::from_obj(route.as_ref());
    let report = status::decide(
        &route,
        &problems,
        &endpoints.resolution,
        &vips.addresses,
        &on_nodes,
        &ctx.cluster_domain,
        status::When {
            now,
            progress_written: ctx.wakeups.progress_written(&oref),
        },
    );
    let recheck = report.recheck;
    let pending = report.status.as_ref().map(|s| {
        !s.conditions
            .iter()
            .any(|c| c.type_ == "Programmed" && c.status == "True")
    });
    publish_status(&ctx, &route, report).await?;
    if let Some(pending) = pending {
        ctx.wakeups
            .set_progress_written(oref, pending.then_some(now));
    }
    // Reports going stale (no event) are noticed by the controller's liveness watch, which
    // triggers every route when the set of ready agents changes.
    Ok(if vips.lost_race {
        Action::requeue(Duration::from_secs(1))
    } else if let Some(after) = recheck {
        Action::requeue(after)
    } else {
        Action::requeue(RESYNC)
    })
}

/// The pods that may back `route` or be its allowed sources: those of its namespace, or every
/// pod when it takes backends from other namespaces or has an access rule.
fn candidate_pods(ctx: &Context, route: &ServiceRoute) -> Vec<Arc<Pod>> {
    let same = route
        .spec
        .namespaces
        .as_ref()
        .is_none_or(|n| n.from == NamespaceFrom::Same);
    if same && route.spec.access.is_none() {
        let s = &ctx.stores;
        s.indexes
            .pods
            .get(&route.namespace().unwrap_or_default(), &s.pods)
    } else {
        ctx.stores.pods.state()
    }
}

/// Where a route lives, as the caches show it at the start of a pass.
struct Scope {
    /// The accepted PodNetworks: namespaces resolve against these only.
    accepted: Vec<Arc<PodNetwork>>,
    /// Every Namespace.
    namespaces: Vec<Arc<Namespace>>,
    /// The accepted network the route's namespace belongs to; without one the route is not
    /// accepted.
    network: Option<Arc<PodNetwork>>,
}

impl Scope {
    /// Resolve (sans I/O): which networks are accepted, and which of them namespace `ns`
    /// belongs to.
    fn resolve(ns: &str, networks: &[Arc<PodNetwork>], namespaces: Vec<Arc<Namespace>>) -> Self {
        let all: Vec<&PodNetwork> = networks.iter().map(|n| n.as_ref()).collect();
        let verdicts = acceptance::decide(&all);
        let accepted: Vec<Arc<PodNetwork>> = networks
            .iter()
            .filter(|n| verdicts.get(&n.name_any()).is_some_and(|v| v.is_accepted()))
            .cloned()
            .collect();
        let usable: Vec<&PodNetwork> = accepted.iter().map(|n| n.as_ref()).collect();
        let network = namespaces
            .iter()
            .find(|n| n.name_any() == ns)
            .and_then(|n| resolve(n.labels(), &usable).network)
            .and_then(|name| accepted.iter().find(|n| n.name_any() == name).cloned());
        Self {
            accepted,
            namespaces,
            network,
        }
    }

    fn accepted(&self) -> Vec<&PodNetwork> {
        self.accepted.iter().map(|n| n.as_ref()).collect()
    }

    fn namespaces(&self) -> Vec<&Namespace> {
        self.namespaces.iter().map(|n| n.as_ref()).collect()
    }
}

/// Acceptance (sans I/O): what keeps the route from being accepted before its addresses are
/// looked at — an invalid spec, no accepted network for its namespace, a native Service of the
/// same name (`services`: every Service). The first problem names the Accepted reason.
fn acceptance_problems(
    route: &ServiceRoute,
    cluster_domain: &str,
    scope: &Scope,
    services: &[Arc<Service>],
) -> Vec<Problem> {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let mut problems = Vec::new();
    let violations = route.validate(cluster_domain);
    if !violations.is_empty() {
        problems.push(Problem::new("Invalid", violations.to_string()));
    }
    if scope.network.is_none() {
        problems.push(Problem::new(
            "NoNetwork",
            format!("namespace {ns} belongs to no accepted PodNetwork"),
        ));
    }
    if services
        .iter()
        .any(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == name)
    {
        problems.push(Problem::new(
            "Conflict",
            format!(
                "a Service named {name} exists in namespace {ns}; its DNS name would be ambiguous"
            ),
        ));
    }
    problems
}

/// The route's virtual IPs after a pass, and the claim writes that made them.
#[derive(Default)]
struct Allocation {
    /// The addresses the route holds, sorted.
    addresses: Vec<IpAddr>,
    /// Claims this pass released.
    released: Vec<IpAddr>,
    /// Claims this pass created, with the resourceVersion each create returned.
    claimed: Vec<(IpAddr, Option<String>)>,
    /// Another route (or replica) claimed an address first: look again shortly.
    lost_race: bool,
    /// Why the route cannot have its addresses.
    problems: Vec<Problem>,
}

/// Allocate: plans the route's virtual IPs on `network` (`vip::plan`) and writes the plan —
/// releases first, then claims — with one `VirtualIPAllocated` Event for the claims won.
/// `network` is `None` when the route is not accepted: it keeps what it holds, and nothing is
/// written.
async fn allocate(
    ctx: &Context,
    route: &ServiceRoute,
    network: Option<&PodNetwork>,
) -> Result<Allocation> {
    let uid = route.uid().unwrap_or_default();
    let held = ClusterHeld(ctx);
    let Some(net) = network else {
        return Ok(Allocation {
            addresses: vip::Held::held_by(&held, &uid),
            ..Allocation::default()
        });
    };
    let mut plan = vip_plan(route, net, &held);
    // An address of ours a Service also has (the Service was given it later): ours goes, and
    // the next pass picks another.
    plan.keep.retain(|a| match held.service(a) {
        Some(svc) => {
            warn!(route = %route.name_any(), address = %a, holder = %svc.describe(), "a route's virtual IP is also a Service's cluster IP; giving it up");
            plan.release.push(*a);
            false
        }
        None => true,
    });
    let api: Api<VirtualIP> = Api::all(ctx.client.clone());
    let mut out = Allocation::default();
    for addr in &plan.release {
        release(&api, addr).await?;
        out.released.push(*addr);
    }
    for addr in &plan.claim {
        match claim(&api, &virtual_ip(route, net, addr)).await? {
            Claim::Won(rv) => out.claimed.push((*addr, rv)),
            Claim::Lost => out.lost_race = true,
        }
    }
    if !out.claimed.is_empty() {
        let won: Vec<String> = out.claimed.iter().map(|(a, _)| a.to_string()).collect();
        let note = format!("allocated {}", won.join(", "));
        let oref = route.object_ref(&());
        ctx.publish(
            &oref,
            EventType::Normal,
            "VirtualIPAllocated",
            "Allocate",
            note,
        )
        .await;
    }
    out.addresses = plan.addresses();
    if out.lost_race {
        let won = |a: &IpAddr| out.claimed.iter().any(|(c, _)| c == a);
        out.addresses.retain(|a| !plan.claim.contains(a) || won(a));
    }
    out.problems = plan
        .problems
        .into_iter()
        .map(|(field, msg)| Problem::new("VirtualIPUnavailable", format!("{field}: {msg}")))
        .collect();
    Ok(out)
}

/// The virtual-IP plan of `route` on `network`, given every claimed address (sans I/O).
fn vip_plan(route: &ServiceRoute, network: &PodNetwork, held: &impl vip::Held) -> vip::VipPlan {
    let pools: Vec<IpNet> = network
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
    let uid = route.uid().unwrap_or_default();
    vip::plan(&uid, route.spec.headless, &requested, &pools, held)
}

/// The claim of `addr` for `route` on `network`, labelled with the route.
fn virtual_ip(route: &ServiceRoute, network: &PodNetwork, addr: &IpAddr) -> VirtualIP {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let mut claim = VirtualIP::new(
        &virtual_ip_name(addr),
        VirtualIPSpec {
            address: addr.to_string(),
            network: network.name_any(),
            route: RouteRef {
                namespace: ns.clone(),
                name: name.clone(),
                uid: route.uid().unwrap_or_default(),
            },
        },
    );
    claim.metadata.labels = Some(
        [
            ("switchyard.dev/route-namespace".to_string(), ns),
            ("switchyard.dev/route".to_string(), name),
        ]
        .into(),
    );
    claim
}

/// How a create of a claim ended.
enum Claim {
    /// Created, with the resourceVersion the API server gave it.
    Won(Option<String>),
    /// Another route (or replica) claimed the address first; our cache will show whom.
    Lost,
}

/// Creates `claim`; the API server refuses a second claim of one address (409).
async fn claim(api: &Api<VirtualIP>, claim: &VirtualIP) -> Result<Claim> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, claim).await {
        Ok(created) => Ok(Claim::Won(created.metadata.resource_version)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Claim::Lost),
        Err(e) => {
            let route = &claim.spec.route;
            Err(Error::kube(
                format!(
                    "create VirtualIP {} for ServiceRoute {}/{}",
                    claim.spec.address, route.namespace, route.name
                ),
                e,
            ))
        }
    }
}

/// A route's backends and the slices that publish them.
struct Endpoints {
    /// The backends, and the pods left out with why.
    resolution: backends::Resolution,
    /// The slices the route should have: backend slices, then access slices.
    slices: Vec<EndpointSlice>,
}

/// Endpoints (sans I/O): the route's backends (none without a network), the slices that
/// publish the serving ones, and the slices of its access sources (`pods`: every Pod). A route
/// that is not `accepted` serves nothing: it has no slice.
fn endpoints(route: &ServiceRoute, scope: &Scope, pods: &[Arc<Pod>], accepted: bool) -> Endpoints {
    let namespaces = scope.namespaces();
    let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let resolution = if scope.network.is_some() {
        backends::resolve_backends(route, &scope.accepted(), &namespaces, &pods)
    } else {
        Default::default()
    };
    let serving: Vec<backends::Backend> = resolution
        .backends
        .iter()
        .filter(|b| b.ready || route.spec.publish_not_ready_addresses)
        .cloned()
        .collect();
    let mut slices = slices::desired(route, &serving);
    if let Some(sources) = access::allowed_sources(route, &namespaces, &pods) {
        slices.extend(slices::desired_access(route, &sources));
    }
    if !accepted {
        slices.clear();
    }
    Endpoints { resolution, slices }
}

/// What a pass wrote of a route's slices.
#[derive(Default)]
struct SliceWrites {
    /// Applied slices: name → the resourceVersion the API server gave the write.
    written: BTreeMap<String, Option<String>>,
    /// Deleted slices.
    deleted: BTreeSet<String>,
}

/// Publishes `want` as the route's slices: applies each one the cache does not already hold
/// as wanted, then deletes the route's slices that are no longer wanted.
async fn publish_slices(
    ctx: &Context,
    route: &ServiceRoute,
    want: &[EndpointSlice],
) -> Result<SliceWrites> {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let annotations = slices::annotations(route);
    let mut out = SliceWrites::default();
    let cached = route_slices(ctx, &ns, &name);
    for s in want {
        let s_name = s.metadata.name.clone().unwrap_or_default();
        let existing = cached.iter().find(|e| e.name_any() == s_name);
        if existing.is_some_and(|e| holds(e, s, &annotations)) {
            continue;
        }
        let rv = apply_slice(&api, s, &ns, &s_name).await?;
        out.written.insert(s_name, rv);
    }
    let want_names: BTreeSet<String> = want
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    for stale in stale_slices(&cached, &ns, &name, &want_names) {
        delete_slice(&api, &ns, &stale).await?;
        out.deleted.insert(stale);
    }
    Ok(out)
}

/// Whether the cached slice `existing` already is `want`, with the route's current
/// `annotations`.
fn holds(
    existing: &EndpointSlice,
    want: &EndpointSlice,
    annotations: &BTreeMap<String, String>,
) -> bool {
    existing.endpoints == want.endpoints
        && existing.ports == want.ports
        && existing.address_type == want.address_type
        && annotations
            .iter()
            .all(|(k, v)| existing.annotations().get(k) == Some(v))
}

/// The route `name`'s slices in namespace `ns` that are not among `want` (sans I/O).
fn stale_slices(
    cached: &[Arc<EndpointSlice>],
    ns: &str,
    name: &str,
    want: &BTreeSet<String>,
) -> Vec<String> {
    cached
        .iter()
        .filter(|s| {
            s.labels()
                .get(slices::ROUTE_LABEL)
                .is_some_and(|r| r == name)
                && s.namespace().as_deref() == Some(ns)
                && !want.contains(&s.name_any())
        })
        .map(|s| s.name_any())
        .collect()
}

/// Applies `slice` (server-side, forced); returns the resourceVersion of the result.
async fn apply_slice(
    api: &Api<EndpointSlice>,
    slice: &EndpointSlice,
    ns: &str,
    name: &str,
) -> Result<Option<String>> {
    let mut body = serde_json::to_value(slice).map_err(|source| Error::Serialize {
        what: format!("EndpointSlice {ns}/{name}"),
        source,
    })?;
    body["apiVersion"] = json!("discovery.k8s.io/v1");
    body["kind"] = json!("EndpointSlice");
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| Error::kube(format!("apply EndpointSlice {ns}/{name}"), e))?;
    Ok(applied.metadata.resource_version)
}

/// Deletes a slice; one already gone counts as deleted.
async fn delete_slice(api: &Api<EndpointSlice>, ns: &str, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("delete EndpointSlice {ns}/{name}"), e)),
    }
}

/// Programmed (reads the slice, claim and agent Lease caches): which ready agents have
/// applied the route's current slices and claims, as the caches hold them or newer, as this
/// pass's writes returned them.
fn programmed_on(
    ctx: &Context,
    route: &ServiceRoute,
    vips: &Allocation,
    slice_writes: &SliceWrites,
    now: Timestamp,
) -> programmed::Programmed {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let slice_rvs = slice_versions(&route_slices(ctx, &ns, &name), route, slice_writes);
    let vip_rvs = claim_versions(
        &route_claims(ctx, &route.uid().unwrap_or_default()),
        route,
        vips,
    );
    let reports: Vec<programmed::AgentReport> = ctx
        .stores
        .leases
        .state()
        .iter()
        .filter_map(|l| programmed::AgentReport::from_lease(l))
        .collect();
    let slices = programmed::Need::of(slice_rvs.values().map(|v| v.as_deref()));
    let vips = programmed::Need::of(vip_rvs.values().map(|v| v.as_deref()));
    let on_nodes = programmed::programmed_nodes(&reports, now, &slices, &vips);
    ctx.wakeups
        .register(ObjectRef::from_obj(route), &slices, &vips, &on_nodes);
    on_nodes
}

/// The resourceVersions of the route's slices (sans I/O): the cached ones less those this
/// pass deleted, each replaced by this pass's write when that is not older.
fn slice_versions(
    cached: &[Arc<EndpointSlice>],
    route: &ServiceRoute,
    writes: &SliceWrites,
) -> BTreeMap<String, Option<String>> {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let mut rvs: BTreeMap<String, Option<String>> = cached
        .iter()
        .filter(|e| {
            e.namespace().as_deref() == Some(ns.as_str())
                && e.labels().get(slices::ROUTE_LABEL) == Some(&name)
                && !writes.deleted.contains(&e.name_any())
        })
        .map(|e| (e.name_any(), e.resource_version()))
        .collect();
    for (n, rv) in &writes.written {
        let cached = rvs.get(n).cloned().flatten();
        let newer = match (
            cached.as_deref().and_then(Rv::parse),
            rv.as_deref().and_then(Rv::parse),
        ) {
            (Some(cached), Some(w)) => w >= cached,
            _ => true,
        };
        if newer {
            rvs.insert(n.clone(), rv.clone());
        }
    }
    rvs
}

/// The resourceVersions of the route's claims (sans I/O): the cached ones less those this
/// pass released, and those this pass created.
fn claim_versions(
    cached: &[Arc<VirtualIP>],
    route: &ServiceRoute,
    vips: &Allocation,
) -> BTreeMap<IpAddr, Option<String>> {
    let uid = route.uid().unwrap_or_default();
    let mut rvs: BTreeMap<IpAddr, Option<String>> = cached
        .iter()
        .filter(|v| v.spec.route.uid == uid)
        .filter_map(|v| Some((v.spec.address.parse().ok()?, v.resource_version())))
        .filter(|(a, _)| !vips.released.contains(a))
        .collect();
    rvs.extend(vips.claimed.iter().cloned());
    rvs
}

/// Publishes what `report` says: the Warning of a route that is not accepted, then the status
/// when it changed (server-side apply).
async fn publish_status(ctx: &Context, route: &ServiceRoute, report: status::Report) -> Result<()> {
    if let Some(refused) = report.warning {
        let oref = route.object_ref(&());
        ctx.publish(
            &oref,
            EventType::Warning,
            refused.reason,
            "Accept",
            refused.message,
        )
        .await;
    }
    let Some(status) = report.status else {
        return Ok(());
    };
    let oref = ObjectRef::from_obj(route);
    let cached_rv = route.resource_version();
    if ctx
        .wakeups
        .already_written(&oref, cached_rv.as_deref(), &status)
    {
        return Ok(());
    }
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let api: Api<ServiceRoute> = Api::namespaced(ctx.client.clone(), &ns);
    let patch =
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute", "status": status});
    let written = api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::kube(format!("patch ServiceRoute {ns}/{name} status"), e))?;
    ctx.wakeups
        .wrote(oref, written.resource_version().as_deref(), status);
    Ok(())
}
