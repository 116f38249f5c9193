//! A lane: one connection that drains many queues. It holds the drainer lock of every queue
//! it was given (`herald.claim_queue`, for the life of the connection) and repeats: ask
//! which of its queues have work (`herald.await_queues`, which sleeps in the server until a
//! producer's commit sets this connection's latch), then one lookup (`herald.drain`) of each
//! of them in turn, so that a busy queue does not starve the others of its lane.
//!
//! A lookup is never interrupted: on shutdown the lane finishes it, so handlers' effects and
//! acknowledgements always commit together. Waiting is interrupted at once. When the
//! connection breaks, every claim of the lane goes with it and the queues are claimed again
//! (by this coordinator or another) at the next scan.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::instrument;

use crate::api::{self, ApiError, DrainerCalls, QueueState};
use crate::service;
use crate::shutdown::Shutdown;

/// How long one server-side wait lasts: also how soon a lane takes up a queue it was given
/// while it waited.
const WAIT_MS: i32 = 250;

/// Which lane each queue was given to (the queue's lane id), shared by the scanner and the
/// lanes: a lane removes the queues it gave up or could not claim, and all of its own when
/// it ends.
pub type Assignments = Arc<Mutex<HashMap<String, u64>>>;

/// Forget every queue of lane `id`.
pub fn forget_lane(assignments: &Assignments, id: u64) {
    assignments
        .lock()
        .expect("assignments lock")
        .retain(|_, lane| *lane != id);
}

fn forget(assignments: &Assignments, queue: &str) {
    assignments.lock().expect("assignments lock").remove(queue);
}

/// Run lane `id` on `client` until shutdown or until its connection fails. New queues
/// arrive on `inbox`.
#[instrument(name = "lane", skip_all, fields(lane = id))]
pub async fn run(
    id: u64,
    client: Client,
    node: String,
    mut inbox: mpsc::UnboundedReceiver<String>,
    assignments: Assignments,
    mut shutdown: Shutdown,
) -> Result<(), ApiError> {
    let calls = DrainerCalls::prepare(&client).await?;
    let mut held: Vec<String> = Vec::new();
    loop {
        // Take up the queues given meanwhile.
        while let Ok(queue) = inbox.try_recv() {
            if api::claim_queue(&client, &queue).await? {
                tracing::info!(queue = %queue, "draining");
                held.push(queue);
            } else {
                forget(&assignments, &queue);
            }
        }
        if shutdown.is_stopping() {
            return Ok(());
        }
        if held.is_empty() {
            match service::unless_stopped(inbox.recv(), &mut shutdown).await {
                Some(Some(queue)) => {
                    if api::claim_queue(&client, &queue).await? {
                        tracing::info!(queue = %queue, "draining");
                        held.push(queue);
                    } else {
                        forget(&assignments, &queue);
                    }
                    continue;
                }
                Some(None) | None => return Ok(()),
            }
        }
        let busy = {
            let wait = calls.await_queues(&client, &held, WAIT_MS);
            match service::unless_stopped(wait, &mut shutdown).await {
                Some(busy) => busy?,
                None => return Ok(()),
            }
        };
        for queue in busy {
            if shutdown.is_stopping() {
                return Ok(());
            }
            if lookup(&client, &calls, &queue, &node).await? {
                continue;
            }
            // Stopped (released) or failing: this lane lets go of the queue.
            held.retain(|q| *q != queue);
            forget(&assignments, &queue);
        }
    }
}

/// One lookup of `queue`; false when the lane no longer holds it (the queue was stopped,
/// or its lookup failed and it was released so that the next scan claims it afresh).
async fn lookup(
    client: &Client,
    calls: &DrainerCalls,
    queue: &str,
    node: &str,
) -> Result<bool, ApiError> {
    let lookup = match calls.drain(client, queue, node).await {
        Ok(lookup) => lookup,
        Err(e) if !client.is_closed() => {
            tracing::warn!(queue = %queue, "lookup failed: {e}; releasing the queue");
            api::release_queue(client, queue).await?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let (handled, failed) = (lookup.handled, lookup.failed);
    if handled > 0 || failed > 0 {
        tracing::debug!(queue = %queue, handled, failed, "lookup");
    }
    if failed > 0 {
        tracing::warn!(queue = %queue, failed, "handlers failed; see herald.event_log");
    }
    match lookup.state {
        QueueState::Stopped => {
            api::release_queue(client, queue).await?;
            tracing::info!(queue = %queue, "queue stopped; released");
            return Ok(false);
        }
        QueueState::Held if handled > 0 || failed > 0 => {
            tracing::warn!(
                queue = %queue,
                "queue held at a failing event; resume with herald.resume_queue()"
            );
        }
        QueueState::Held | QueueState::Running => {}
    }
    Ok(true)
}
