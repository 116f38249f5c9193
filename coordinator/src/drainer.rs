//! A drainer owns one queue (its connection holds the queue's advisory lock) and repeats:
//! one lookup (`herald.drain`), then, when nothing more is waiting, `herald.await_events`,
//! which sleeps in the server until a producer's commit sets its latch.
//!
//! A lookup is never interrupted: on shutdown the drainer finishes it, so handlers' effects
//! and acknowledgements always commit together. Waiting is interrupted at once.
use tokio_postgres::Client;

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

pub async fn run(
    client: Client,
    queue: String,
    node: String,
    mut shutdown: Shutdown,
) -> Result<Exit, tokio_postgres::Error> {
    let drain = client
        .prepare("SELECT state, handled, failed, more FROM herald.drain($1, $2)")
        .await?;
    let wait = client.prepare("SELECT herald.await_events($1, $2)").await?;
    tracing::info!(queue = %queue, "draining");
    loop {
        if shutdown.is_stopping() {
            return Ok(Exit::Shutdown);
        }
        let row = client.query_one(&drain, &[&queue, &node]).await?;
        let state: &str = row.get(0);
        let handled: i32 = row.get(1);
        let failed: i32 = row.get(2);
        let more: bool = row.get(3);
        if handled > 0 || failed > 0 {
            tracing::debug!(queue = %queue, handled, failed, "lookup");
        }
        if failed > 0 {
            tracing::warn!(queue = %queue, failed, "handlers failed; see herald.event_log");
        }
        match state {
            "stopped" => {
                client
                    .execute("SELECT herald.release_queue($1)", &[&queue])
                    .await?;
                tracing::info!(queue = %queue, "queue stopped; released");
                return Ok(Exit::QueueStopped);
            }
            "held" if handled > 0 || failed > 0 => {
                tracing::warn!(queue = %queue, "queue held at a failing event; resume with herald.resume_queue()");
            }
            _ => {}
        }
        if more {
            continue;
        }
        let wait_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&queue, &WAIT_MS];
        tokio::select! {
            r = client.query_one(&wait, &wait_params) => { r?; }
            _ = shutdown.stopped() => return Ok(Exit::Shutdown),
        }
    }
}
