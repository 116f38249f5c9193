//! Event queues: their drainers' side.
//! - [`drain`]: one lookup (`herald.drain`): events handled in order, exactly once
//! - [`floor`]: where lookups start, and why that is safe
//! - [`wait`]: waiting for work on the drainer's latch (`herald.await_events`)
//! - [`resume`]: releasing a held queue (`herald.resume_queue`)
//!
//! A queue's settings and the claim of its drainer live in SQL (`sql/queues/`).
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::errors::{self, raise};
use crate::core::plans;

mod drain;
mod floor;
mod resume;
mod wait;

fn no_such_queue(queue: &str) -> ! {
    raise(
        Code::ERRCODE_UNDEFINED_OBJECT,
        format!("event queue \"{}\" does not exist", errors::shown(queue)),
        Some("SELECT name FROM herald.event_queue; lists the queues.".into()),
    )
}

/// Make sure a queue has its runtime state row; false if there is no such queue. The row is
/// made by the queue's insert trigger; a restore that loads `herald.event_queue` with
/// triggers disabled (`pg_restore --data-only --disable-triggers`) leaves it to this.
fn ensure_state(client: &pgrx::spi::SpiClient<'_>, queue: &str) -> bool {
    let rows = plans::execute(
        client,
        "INSERT INTO herald.queue_state (queue)
         SELECT q.name FROM herald.event_queue q WHERE q.name OPERATOR(pg_catalog.=) $1
         ON CONFLICT (queue) DO NOTHING
         RETURNING 1",
        &[pg_sys::TEXTOID],
        &[queue.into_datum()],
    );
    let exists = plans::execute(
        client,
        "SELECT 1 FROM herald.event_queue q WHERE q.name OPERATOR(pg_catalog.=) $1",
        &[pg_sys::TEXTOID],
        &[queue.into_datum()],
    );
    !rows.is_empty() || !exists.is_empty()
}
