//! The PodNetwork controller: acceptance, namespace membership conflicts, node-block IPAM,
//! status and Events. The decisions are pure (`acceptance`, `plan`); this module reads the
//! caches, calls them, and writes the result.

pub mod acceptance;
pub mod plan;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_api::membership::resolve;
use switchyard_api::node_block::{NETWORK_LABEL, NODE_LABEL};
use switchyard_api::{NodeBlock, NodeBlockSpec, PodNetwork, PodNetworkStatus};
use tracing::{info, warn};

use crate::conditions::{self, Verdict};
use crate::context::{Context, FIELD_MANAGER, list};
use crate::error::{Error, Result};
use crate::metrics::NetworkLabels;
use acceptance::Acceptance;
use plan::{ExistingBlock, NodeInfo, Plan, Release};

/// How often a network is looked at even when nothing changed.
const RESYNC: Duration = Duration::from_secs(300);

/// What a Node contributes to the plan.
pub fn node_info(node: &Node) -> NodeInfo {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    NodeInfo {
        name: node.name_any(),
        labels: node.labels().clone(),
        addresses,
    }
}

fn existing_blocks(ctx: &Context, network: &str) -> Vec<ExistingBlock> {
    ctx.stores
        .blocks
        .state()
        .iter()
        .filter(|b| b.spec.network == network && b.metadata.deletion_timestamp.is_none())
        .filter_map(|b| {
            Some(ExistingBlock {
                name: b.name_any(),
                node: b.spec.node.clone(),
                cidr: b.spec.cidr.parse().ok()?,
                node_ip: b.spec.node_ip.clone(),
            })
        })
        .collect()
}

/// Namespaces that several usable networks, this one among them, select.
fn namespace_conflicts(ctx: &Context, name: &str, accepted: &[&PodNetwork]) -> Vec<String> {
    let mut out = Vec::new();
    for ns in ctx.stores.namespaces.state() {
        let r = resolve(ns.labels(), accepted);
        if r.conflicting.iter().any(|n| n == name) {
            let others: Vec<&str> = r
                .conflicting
                .iter()
                .filter(|n| *n != name)
                .map(String::as_str)
                .collect();
            out.push(format!("{} (also {})", ns.name_any(), others.join(", ")));
        }
    }
    out.sort();
    out
}

/// Reconciles one PodNetwork, top-down: its acceptance, the plan of its node blocks, the
/// block writes (claims, releases, new next hops), then what it reports.
#[tracing::instrument(name = "reconcile PodNetwork", skip_all, fields(network = %network.name_any()))]
pub async fn reconcile(network: Arc<PodNetwork>, ctx: Arc<Context>) -> Result<Action> {
    let name = network.name_any();
    let networks = ctx.stores.networks.state();
    let standing = Standing::decide(&name, &networks);
    let plan = plan_blocks(&ctx, &network, standing.verdict.is_accepted());
    let lost_race = claim_blocks(&ctx, &network, &plan).await?;
    release_blocks(&ctx, &network, &plan).await?;
    repoint_blocks(&ctx, &plan).await?;
    let conflicts = namespace_conflicts(&ctx, &name, &standing.accepted);
    let status = status(
        &network,
        &standing.verdict,
        &plan,
        &conflicts,
        ctx.status_nodes_limit,
    );
    record_pool(&ctx, &name, &plan);
    publish_status(&ctx, &network, &standing.verdict, &plan, status).await?;
    Ok(if lost_race {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::requeue(RESYNC)
    })
}

/// Where a network stands among all of them.
struct Standing<'a> {
    /// This network's acceptance.
    verdict: Acceptance,
    /// Every accepted network (namespaces resolve against these only).
    accepted: Vec<&'a PodNetwork>,
}

impl<'a> Standing<'a> {
    /// Acceptance (sans I/O): the verdict on network `name` among `networks` (every
    /// PodNetwork), and which of them are accepted.
    fn decide(name: &str, networks: &'a [Arc<PodNetwork>]) -> Self {
        let refs: Vec<&PodNetwork> = networks.iter().map(|n| n.as_ref()).collect();
        let verdicts = acceptance::decide(&refs);
        let verdict = verdicts
            .get(name)
            .cloned()
            .unwrap_or_else(|| Acceptance::Invalid("not in the cache yet".into()));
        let accepted = refs
            .into_iter()
            .filter(|n| {
                verdicts
                    .get(&n.name_any())
                    .is_some_and(Acceptance::is_accepted)
            })
            .collect();
        Self { verdict, accepted }
    }
}

/// Plan (reads the Node and NodeBlock caches): the block changes that bring `network` to one
/// block per selected node and family; with `accepted` false nothing new is claimed.
fn plan_blocks(ctx: &Context, network: &PodNetwork, accepted: bool) -> Plan {
    let nodes: Vec<NodeInfo> = ctx
        .stores
        .nodes
        .state()
        .iter()
        .map(|n| node_info(n))
        .collect();
    let existing = existing_blocks(ctx, &network.name_any());
    plan::plan(network, accepted, &nodes, &existing)
}

/// The NodeBlock `block_name` of `spec`, labelled with its network and node, owned by
/// `network` (so that deleting the network deletes its blocks).
fn node_block(network: &PodNetwork, block_name: &str, spec: &NodeBlockSpec) -> NodeBlock {
    let mut nb = NodeBlock::new(block_name, spec.clone());
    nb.metadata.labels = Some(
        [
            (NETWORK_LABEL.to_string(), network.name_any()),
            (NODE_LABEL.to_string(), spec.node.clone()),
        ]
        .into(),
    );
    nb.metadata.owner_references = network.controller_owner_ref(&()).map(|o| vec![o]);
    nb
}

/// Claims the planned blocks (creates), with one `BlockAllocated` Event for those won.
/// Returns whether another writer held one first (the cache is behind: look again shortly).
async fn claim_blocks(ctx: &Context, network: &PodNetwork, plan: &Plan) -> Result<bool> {
    let name = network.name_any();
    let api: Api<NodeBlock> = Api::all(ctx.client.clone());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut lost_race = false;
    let mut claimed: Vec<String> = Vec::new();
    for (block_name, spec) in &plan.create {
        match api
            .create(&params, &node_block(network, block_name, spec))
            .await
        {
            Ok(_) => {
                info!(network = %name, node = %spec.node, block = %spec.cidr, "claimed node block");
                claimed.push(format!("{} to node {}", spec.cidr, spec.node));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Someone else holds the block: our cache is behind. Look again shortly.
                warn!(network = %name, block = %spec.cidr, "node block already claimed; retrying");
                lost_race = true;
            }
            Err(e) => {
                return Err(Error::kube(
                    format!(
                        "create NodeBlock {block_name} ({}) for node {}",
                        spec.cidr, spec.node
                    ),
                    e,
                ));
            }
        }
    }
    // One Event per reconcile: the recorder folds Events of one reason into a series that keeps
    // the first note, so per-block Events would hide all but the first block.
    if !claimed.is_empty() {
        let note = format!("allocated {}", list(&claimed, 10));
        ctx.publish(
            &network.object_ref(&()),
            EventType::Normal,
            "BlockAllocated",
            "Allocate",
            note,
        )
        .await;
    }
    Ok(lost_race)
}

/// Releases the planned blocks (deletes; one already gone counts as released), with one
/// `BlockReleased` Event naming each block and why.
async fn release_blocks(ctx: &Context, network: &PodNetwork, plan: &Plan) -> Result<()> {
    let name = network.name_any();
    let api: Api<NodeBlock> = Api::all(ctx.client.clone());
    let mut released: Vec<String> = Vec::new();
    for (block_name, node, cidr, why) in &plan.release {
        match api.delete(block_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("delete NodeBlock {block_name}"), e)),
        }
        let why = release_reason(*why);
        info!(network = %name, node = %node, block = %cidr, why, "released node block");
        released.push(format!("{cidr} of node {node} ({why})"));
    }
    if !released.is_empty() {
        let note = format!("released {}", list(&released, 10));
        ctx.publish(
            &network.object_ref(&()),
            EventType::Normal,
            "BlockReleased",
            "Release",
            note,
        )
        .await;
    }
    Ok(())
}

/// Why a block goes, in words.
fn release_reason(why: Option<Release>) -> &'static str {
    match why {
        Some(Release::NodeGone) => "the node is gone",
        Some(Release::NodeNotSelected) => "the node no longer matches nodeSelector",
        Some(Release::Duplicate) => "the node holds another block of this family",
        None => "released",
    }
}

/// Points the planned blocks at their node's new address (server-side apply of `nodeIP`).
async fn repoint_blocks(ctx: &Context, plan: &Plan) -> Result<()> {
    let api: Api<NodeBlock> = Api::all(ctx.client.clone());
    for (block_name, ip) in &plan.repoint {
        let patch = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "NodeBlock", "spec": {"nodeIP": ip}});
        api.patch(
            block_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::kube(format!("patch NodeBlock {block_name} nodeIP to {ip}"), e))?;
    }
    Ok(())
}

/// Sets the network's pool gauges: blocks allocated and blocks still free after the plan.
fn record_pool(ctx: &Context, name: &str, plan: &Plan) {
    let labels = NetworkLabels {
        network: name.to_string(),
    };
    ctx.metrics
        .allocated_blocks
        .get_or_create(&labels)
        .set(plan.allocated);
    ctx.metrics
        .free_blocks
        .get_or_create(&labels)
        .set(plan.free);
}

/// Publishes what the pass found: a `PoolExhausted` Warning when the pool has just run out, a
/// Warning when the network is not accepted (and was, or has no conditions yet), then
/// `status` when it changed (server-side apply).
async fn publish_status(
    ctx: &Context,
    network: &PodNetwork,
    verdict: &Acceptance,
    plan: &Plan,
    status: PodNetworkStatus,
) -> Result<()> {
    let oref = network.object_ref(&());
    let old = network.status.clone().unwrap_or_default();
    let exhausted_before = old.conditions.iter().any(|c| c.reason == "PoolExhausted");
    if !plan.exhausted.is_empty() && !exhausted_before {
        ctx.publish(
            &oref,
            EventType::Warning,
            "PoolExhausted",
            "Allocate",
            format!("no free block for nodes {}", list(&plan.exhausted, 10)),
        )
        .await;
    }
    if !verdict.is_accepted()
        && (conditions::is_true(&old.conditions, "Accepted") || old.conditions.is_empty())
    {
        ctx.publish(
            &oref,
            EventType::Warning,
            verdict.reason(),
            "Accept",
            verdict.message(),
        )
        .await;
    }
    if same_status(&old, &status) {
        return Ok(());
    }
    let name = network.name_any();
    let api: Api<PodNetwork> = Api::all(ctx.client.clone());
    let patch =
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork", "status": status});
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::kube(format!("patch PodNetwork {name} status"), e))?;
    Ok(())
}

/// Status equality that ignores transition times (they only move when a status flips).
fn same_status(a: &PodNetworkStatus, b: &PodNetworkStatus) -> bool {
    let strip = |s: &PodNetworkStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

/// The status a plan leads to.
pub fn status(
    network: &PodNetwork,
    verdict: &Acceptance,
    plan: &Plan,
    conflicts: &[String],
    nodes_limit: usize,
) -> PodNetworkStatus {
    let generation = network.metadata.generation;
    let accepted = Verdict::new(
        "Accepted",
        verdict.is_accepted(),
        verdict.reason(),
        verdict.message(),
    );
    let resolved = if conflicts.is_empty() {
        Verdict::new(
            "NamespacesResolved",
            true,
            "NoConflicts",
            "no namespace is selected by another network as well",
        )
    } else {
        Verdict::new(
            "NamespacesResolved",
            false,
            "NamespaceConflict",
            format!(
                "namespaces selected by several networks: {}; new pods there join the oldest network, running pods keep their addresses",
                list(conflicts, 10)
            ),
        )
    };
    let ready = if !verdict.is_accepted() {
        Verdict::new(
            "Ready",
            false,
            "NotAccepted",
            format!("not accepted: {}", verdict.message()),
        )
    } else if !plan.exhausted.is_empty() {
        Verdict::new(
            "Ready",
            false,
            "PoolExhausted",
            format!(
                "the pool has no free block for {} node(s): {}",
                plan.exhausted.len(),
                list(&plan.exhausted, 10)
            ),
        )
    } else if !plan.unaddressed.is_empty() {
        Verdict::new(
            "Ready",
            false,
            "NodeAddressMissing",
            format!(
                "nodes without an InternalIP: {}",
                list(&plan.unaddressed, 10)
            ),
        )
    } else {
        Verdict::new(
            "Ready",
            true,
            "BlocksAllocated",
            format!("{} node(s) hold a block", plan.allocated),
        )
    };
    let old = network
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    PodNetworkStatus {
        observed_generation: generation,
        nodes: if plan.nodes.len() <= nodes_limit {
            plan.nodes.clone()
        } else {
            vec![]
        },
        allocated_blocks: Some(plan.allocated),
        free_blocks: Some(plan.free),
        conditions: conditions::apply(
            &old,
            &[accepted, resolved, ready],
            generation,
            Timestamp::now(),
        ),
    }
}
