//! The agent's side of the CNI plugin's socket: answers "which network does this pod join and
//! how is it wired" from the watched API objects. The decision (`attachment`) is pure.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use switchyard_api::membership::resolve;
use switchyard_api::{NodeBlock, PodNetwork};
use switchyard_cni::protocol::{
    AgentError, AgentRequest, AgentResponse, AgentStatus, Attachment, BlockGateway, bridge_name,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::desired::{DEFAULT_MTU, gateway};
use crate::error::{Error, Result};
use crate::state::View;

/// CNI error code: try again later.
const TRY_AGAIN: u32 = 11;
/// Plugin-specific: the namespace belongs to no network.
const NO_NETWORK: u32 = 101;

/// The answer to an attach request, from what the agent sees.
pub fn attachment(
    node: &str,
    namespace: &str,
    ns_labels: Option<&BTreeMap<String, String>>,
    accepted: &[&PodNetwork],
    blocks: &[&NodeBlock],
    routes: &[IpNet],
) -> AgentResponse {
    let err = |code, msg: String| {
        AgentResponse::Error(AgentError {
            code,
            msg,
            details: String::new(),
        })
    };
    let Some(labels) = ns_labels else {
        return err(
            TRY_AGAIN,
            format!("namespace {namespace} is not known to the agent on node {node} yet"),
        );
    };
    let Some(network) = resolve(labels, accepted).network else {
        return err(
            NO_NETWORK,
            format!(
                "namespace {namespace} belongs to no PodNetwork: no namespaceSelector matches it and no network is the default"
            ),
        );
    };
    let mut mine: Vec<IpNet> = blocks
        .iter()
        .filter(|b| b.spec.node == node && b.spec.network == network)
        .filter_map(|b| b.spec.cidr.parse().ok())
        .collect();
    mine.sort();
    if mine.is_empty() {
        return err(
            TRY_AGAIN,
            format!("node {node} holds no block of PodNetwork {network} yet"),
        );
    }
    let mtu = accepted
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(network.as_str()))
        .and_then(|n| n.spec.mtu)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(DEFAULT_MTU);
    AgentResponse::Attach(Attachment {
        bridge: bridge_name(&network),
        network,
        mtu,
        blocks: mine
            .iter()
            .filter_map(|b| {
                Some(BlockGateway {
                    cidr: b.to_string(),
                    gateway: gateway(b)?.addr().to_string(),
                })
            })
            .collect(),
        routes: routes.iter().map(|r| r.to_string()).collect(),
    })
}

/// Serves the socket at `path` until the task is dropped.
pub async fn serve(path: &Path, view: Arc<View>) -> Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| Error::Io {
                op: "create",
                path: dir.into(),
                source,
            })?;
    }
    // A socket file left by a previous run would make bind fail.
    let _ = tokio::fs::remove_file(path).await;
    let listener = UnixListener::bind(path).map_err(|source| Error::Io {
        op: "bind",
        path: path.into(),
        source,
    })?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept on the CNI socket failed");
                continue;
            }
        };
        let view = view.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            // One request per connection, at most 64 KiB.
            let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 64 * 1024));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<AgentRequest>(&line) {
                Ok(req) => answer(&view, req),
                Err(e) => AgentResponse::Error(AgentError {
                    code: 6,
                    msg: format!("cannot decode the request: {e}"),
                    details: String::new(),
                }),
            };
            debug!(?response, "CNI request answered");
            let mut out = serde_json::to_string(&response).unwrap_or_default();
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}

fn answer(view: &View, req: AgentRequest) -> AgentResponse {
    match req {
        AgentRequest::Status => {
            let ready = view.is_ready();
            AgentResponse::Status(AgentStatus {
                ready,
                message: if ready {
                    "ready".into()
                } else {
                    "the agent has not synced with the API server yet".into()
                },
            })
        }
        AgentRequest::Attach { namespace, .. } => {
            if !view.is_ready() {
                return AgentResponse::Error(AgentError {
                    code: TRY_AGAIN,
                    msg: "the agent has not synced with the API server yet".into(),
                    details: String::new(),
                });
            }
            view.attach(&namespace)
        }
    }
}

#[cfg(test)]
mod tests {
    use switchyard_api::{NodeBlockSpec, PodNetworkSpec};

    use super::*;

    fn net() -> PodNetwork {
        PodNetwork::new(
            "default",
            PodNetworkSpec {
                pod_cidrs: vec!["198.18.128.0/17".into()],
                block_prefix_length: Default::default(),
                service_cidrs: vec![],
                default: true,
                namespace_selector: None,
                node_selector: None,
                isolation: Default::default(),
                mtu: None,
            },
        )
    }

    #[test]
    fn answers_with_the_nodes_block_and_its_gateway() {
        let n = net();
        let b = NodeBlock::new(
            "x",
            NodeBlockSpec {
                network: "default".into(),
                node: "n1".into(),
                cidr: "198.18.130.0/24".into(),
                node_ip: "198.18.0.11".into(),
            },
        );
        let labels = BTreeMap::new();
        let r = attachment(
            "n1",
            "shop",
            Some(&labels),
            &[&n],
            &[&b],
            &["198.18.0.0/15".parse().unwrap()],
        );
        let AgentResponse::Attach(a) = r else {
            panic!("{r:?}")
        };
        assert_eq!(a.blocks[0].gateway, "198.18.130.1");
        assert_eq!(a.mtu, 1500);
        assert_eq!(a.routes, vec!["198.18.0.0/15"]);
        let r = attachment("n2", "shop", Some(&labels), &[&n], &[&b], &[]);
        assert!(matches!(
            r,
            AgentResponse::Error(AgentError { code: 11, .. })
        ));
        let r = attachment("n1", "shop", None, &[&n], &[&b], &[]);
        assert!(matches!(
            r,
            AgentResponse::Error(AgentError { code: 11, .. })
        ));
        let r = attachment("n1", "shop", Some(&labels), &[], &[&b], &[]);
        assert!(matches!(
            r,
            AgentResponse::Error(AgentError { code: 101, .. })
        ));
    }
}
