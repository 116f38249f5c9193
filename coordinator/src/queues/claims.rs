//! Claiming queues: each scan lists the running queues nobody drains and gives each one to
//! a lane of this coordinator, which claims it on its connection (`herald.claim_queue`) and
//! drains it from then on. Lanes are opened as queues need them, up to the coordinator's
//! budget; a queue goes to a new lane while the budget allows, else to the lane with the
//! fewest queues, so that lookups of different queues run concurrently on as many
//! connections as the budget gives. Failover comes for free: when a coordinator dies its
//! connections close, its locks go, and another one claims the queues at its next scan.
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config};
use tracing::Instrument;

use super::lane::{self, Assignments};
use crate::api::{self, ApiError};
use crate::db;
use crate::shutdown::Shutdown;

struct Lane {
    id: u64,
    inbox: mpsc::UnboundedSender<String>,
    task: JoinHandle<()>,
}

/// The lanes of this coordinator and which queue each one drains.
pub struct Claims {
    database: Config,
    node: String,
    shutdown: Shutdown,
    max_lanes: usize,
    lanes: Vec<Lane>,
    next_id: u64,
    assignments: Assignments,
}

impl Claims {
    pub fn new(database: Config, node: String, max_lanes: usize, shutdown: Shutdown) -> Claims {
        Claims {
            database,
            node,
            shutdown,
            max_lanes: max_lanes.max(1),
            lanes: Vec::new(),
            next_id: 0,
            assignments: Arc::new(Mutex::new(Default::default())),
        }
    }

    /// Give every running queue nobody drains to a lane. `control` is the coordinator's
    /// control connection, used to list the queues.
    pub async fn claim_running_queues(&mut self, control: &Client) -> Result<(), ApiError> {
        self.lanes.retain(|l| !l.task.is_finished());
        for queue in api::unclaimed_queues(control).await? {
            if self.shutdown.is_stopping() {
                break;
            }
            if self
                .assignments
                .lock()
                .expect("assignments lock")
                .contains_key(&queue)
            {
                continue;
            }
            let lane = self.lane_for_next_queue().await?;
            let (id, inbox) = (self.lanes[lane].id, self.lanes[lane].inbox.clone());
            self.assignments
                .lock()
                .expect("assignments lock")
                .insert(queue.clone(), id);
            if inbox.send(queue.clone()).is_err() {
                // The lane ended meanwhile; the next scan gives the queue to another.
                self.assignments
                    .lock()
                    .expect("assignments lock")
                    .remove(&queue);
            }
        }
        Ok(())
    }

    /// The lane for one more queue (its index): a new one while the budget allows, else the
    /// one with the fewest queues.
    async fn lane_for_next_queue(&mut self) -> Result<usize, ApiError> {
        if self.lanes.len() < self.max_lanes {
            let client = db::connect(&self.database, &self.node).await?;
            self.open_lane(client);
            return Ok(self.lanes.len() - 1);
        }
        let assignments = self.assignments.lock().expect("assignments lock");
        let load = |id: u64| assignments.values().filter(|l| **l == id).count();
        Ok((0..self.lanes.len())
            .min_by_key(|i| load(self.lanes[*i].id))
            .expect("at least one lane"))
    }

    fn open_lane(&mut self, client: Client) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let (node, assignments, shutdown) = (
            self.node.clone(),
            self.assignments.clone(),
            self.shutdown.clone(),
        );
        // The lane's span nests in the caller's (the coordinator's, with the node).
        let task = tokio::spawn(
            async move {
                if let Err(e) = lane::run(id, client, node, rx, assignments.clone(), shutdown).await
                {
                    tracing::warn!(lane = id, "lane ended: {e}");
                }
                lane::forget_lane(&assignments, id);
            }
            .in_current_span(),
        );
        self.lanes.push(Lane {
            id,
            inbox: tx,
            task,
        });
    }

    /// Wait for every lane to finish its current lookup.
    pub async fn stop(&mut self) {
        for lane in self.lanes.drain(..) {
            drop(lane.inbox);
            let _ = lane.task.await;
        }
    }
}
