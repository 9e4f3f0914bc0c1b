//! The agent's side of the CNI plugin's socket: answers "which network does this pod join and
//! how is it wired" from the watched API objects. The decision itself is [`crate::attachment`].

use std::path::Path;
use std::sync::Arc;

use switchyard_cni::protocol::{AgentError, AgentRequest, AgentResponse, AgentStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::attachment::TRY_AGAIN;
use crate::error::{Error, Result};
use crate::state::View;

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
