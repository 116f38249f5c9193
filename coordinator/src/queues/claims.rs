//! Claiming queues: for each running queue this coordinator does not drain yet, try
//! `herald.claim_queue` on a spare connection; a connection that wins becomes that queue's
//! drainer connection, with a drainer task of its own. Failover comes for free: when a
//! coordinator dies its connections close, its locks go, and another one claims the queue
//! at its next scan.
use std::collections::HashMap;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config};
use tracing::Instrument;

use super::drainer;
use crate::api::{self, ApiError};
use crate::db;
use crate::shutdown::Shutdown;

/// The queues this coordinator drains, and a spare connection for the next claim.
pub struct Claims {
    database: Config,
    node: String,
    shutdown: Shutdown,
    drainers: HashMap<String, JoinHandle<()>>,
    spare: Option<Client>,
}

impl Claims {
    pub fn new(database: Config, node: String, shutdown: Shutdown) -> Claims {
        Claims {
            database,
            node,
            shutdown,
            drainers: HashMap::new(),
            spare: None,
        }
    }

    /// Forget the spare connection (after the database went away).
    pub fn drop_spare(&mut self) {
        self.spare = None;
    }

    /// Claim every running queue nobody drains and start its drainer. `control` is the
    /// coordinator's control connection, used to list the queues.
    pub async fn claim_running_queues(&mut self, control: &Client) -> Result<(), ApiError> {
        self.drainers.retain(|_, handle| !handle.is_finished());
        for queue in api::running_queues(control).await? {
            if self.drainers.contains_key(&queue) || self.shutdown.is_stopping() {
                continue;
            }
            let spare = match self.spare.take() {
                Some(c) if !c.is_closed() => c,
                _ => db::connect(&self.database, &self.node).await?,
            };
            let claimed = match api::claim_queue(&spare, &queue).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(queue = %queue, "claim failed: {e}");
                    continue;
                }
            };
            if !claimed {
                self.spare = Some(spare);
                continue;
            }
            let (q, node, shutdown) = (queue.clone(), self.node.clone(), self.shutdown.clone());
            // The drainer's span nests in the caller's (the coordinator's, with the node).
            let handle = tokio::spawn(
                async move {
                    if let Err(e) = drainer::run(spare, q.clone(), node, shutdown).await {
                        tracing::warn!(queue = %q, "drainer ended: {e}");
                    }
                }
                .in_current_span(),
            );
            self.drainers.insert(queue, handle);
        }
        Ok(())
    }

    /// Wait for every drainer to finish its current lookup.
    pub async fn stop(&mut self) {
        for (_, handle) in self.drainers.drain() {
            let _ = handle.await;
        }
    }
}
