//! Leader election: every replica serves its HTTP endpoints, only the holder of the Lease runs
//! the controllers, so two replicas never both write.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::controller::run_controllers;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use switchyard_observe::Health;

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name in a cluster).
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration_seconds: u64,
}

/// Runs the controllers whenever this replica leads, until `shutdown` resolves; releases the
/// Lease on the way out so a standby takes over at once.
pub async fn run(
    client: Client,
    lease: LeaseConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let err = |source| Error::Lease {
        namespace: lease.namespace.clone(),
        name: lease.name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client.clone(), lease.name.clone())
        .with_namespace(lease.namespace.clone())
        .with_identity(lease.identity.clone())
        .with_duration(lease.duration_seconds)
        .with_grace(lease.duration_seconds.div_ceil(3).max(1))
        .with_field_manager(crate::context::FIELD_MANAGER)
        .build()
        .await
        .map_err(err)?;
    let (mut leading, lease_task) = manager.watch().await;
    let mut shutdown = std::pin::pin!(shutdown);
    // A standby replica is ready: it does what it should, which is waiting.
    health.ready.store(true, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leading.changed() => {
                if changed.is_err() {
                    warn!("lease task ended");
                    break;
                }
            }
        }
        if !*leading.borrow_and_update() {
            continue;
        }
        info!(identity = %lease.identity, "leading: starting controllers");
        metrics.leader.set(1);
        health.ready.store(false, Ordering::Relaxed);
        let controllers = tokio::spawn(run_controllers(
            client.clone(),
            metrics.clone(),
            health.clone(),
            lease.identity.clone(),
        ));
        let mut stop = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => { stop = true; break; }
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() { break; }
                }
            }
        }
        controllers.abort();
        metrics.leader.set(0);
        health.ready.store(true, Ordering::Relaxed);
        info!(identity = %lease.identity, "no longer leading: controllers stopped");
        if stop {
            break;
        }
    }
    drop(leading);
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "cannot release the lease; a standby takes over when it expires");
            }
        }
        Ok(Err(e)) => return Err(err(e)),
        Err(e) => warn!(error = %e, "lease task panicked"),
    }
    Ok(())
}
