//! Leader election with a `coordination.k8s.io/v1` Lease (kube-lease-manager,
//! which writes the Lease with server-side apply and detects conflicts).
//!
//! Only the leader reconciles and scales. Losing the lease, or any error while
//! renewing it, ends the process with an error: Kubernetes restarts it as a
//! follower, which is simpler and safer than winding the work down in place.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::info;

use crate::{Error, Result};

/// A lease we try to hold.
pub struct Leader {
    manager: LeaseManager,
}

impl Leader {
    /// Prepares the lease (creating it if missing).
    pub async fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        lease_seconds: u64,
    ) -> Result<Self> {
        let manager = LeaseManagerBuilder::new(client, lease_name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(lease_seconds)
            .with_grace((lease_seconds / 3).max(2))
            .with_field_manager(format!("porchlight-controller-lease-{identity}"))
            .build()
            .await?;
        Ok(Leader { manager })
    }

    /// Keeps trying for the lease and renewing it. Sends `true` once leading.
    /// Returns an error when leadership is lost or the lease can not be renewed.
    pub async fn run(&self, leading: watch::Sender<bool>) -> Result<()> {
        loop {
            let holder = self.manager.changed().await?;
            if holder {
                info!("acquired the leader lease");
                let _ = leading.send(true);
            } else if *leading.borrow() {
                return Err(Error::TaskEnded("leadership (lease lost)"));
            }
        }
    }

    /// Gives the lease up (at shutdown), so a follower takes over at once.
    pub async fn release(&self) -> Result<()> {
        self.manager.release().await?;
        Ok(())
    }
}
