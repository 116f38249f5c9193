//! A drainer owns one queue (its connection holds the queue's advisory lock) and repeats:
//! one lookup (`herald.drain`), then, when nothing more is waiting, `herald.await_events`,
//! which sleeps in the server until a producer's commit sets its latch.
//!
//! A lookup is never interrupted: on shutdown the drainer finishes it, so handlers' effects
//! and acknowledgements always commit together. Waiting is interrupted at once.
use tokio_postgres::Client;
use tracing::instrument;

use crate::api::{self, ApiError, DrainerCalls, QueueState};
use crate::service;
use crate::shutdown::Shutdown;

/// How long one server-side wait lasts before the drainer looks around again.
const WAIT_MS: i32 = 1000;

/// Why a drainer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The queue was stopped (`event_run = 0`): the lock was released.
    QueueStopped,
    /// Shutdown was requested.
    Shutdown,
}

#[instrument(name = "drainer", skip_all, fields(queue = %queue))]
pub async fn run(
    client: Client,
    queue: String,
    node: String,
    mut shutdown: Shutdown,
) -> Result<Exit, ApiError> {
    let calls = DrainerCalls::prepare(&client).await?;
    tracing::info!("draining");
    loop {
        if shutdown.is_stopping() {
            return Ok(Exit::Shutdown);
        }
        let lookup = calls.drain(&client, &queue, &node).await?;
        let (handled, failed) = (lookup.handled, lookup.failed);
        if handled > 0 || failed > 0 {
            tracing::debug!(handled, failed, "lookup");
        }
        if failed > 0 {
            tracing::warn!(failed, "handlers failed; see herald.event_log");
        }
        match lookup.state {
            QueueState::Stopped => {
                api::release_queue(&client, &queue).await?;
                tracing::info!("queue stopped; released");
                return Ok(Exit::QueueStopped);
            }
            QueueState::Held if handled > 0 || failed > 0 => {
                tracing::warn!("queue held at a failing event; resume with herald.resume_queue()");
            }
            QueueState::Held | QueueState::Running => {}
        }
        if lookup.more {
            continue;
        }
        let wait = calls.await_events(&client, &queue, WAIT_MS);
        match service::unless_stopped(wait, &mut shutdown).await {
            Some(woken) => {
                woken?;
            }
            None => return Ok(Exit::Shutdown),
        }
    }
}
