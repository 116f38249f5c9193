//! Event queues: their drainers' side.
//! - [`drain`]: one lookup (`herald.drain`): events handled in order, exactly once
//! - [`floor`]: where lookups start, and why that is safe
//! - [`wait`]: waiting for work on the drainer's latch (`herald.await_events`)
//! - [`resume`]: releasing a held queue (`herald.resume_queue`)
//!
//! A queue's settings and the claim of its drainer live in SQL (`sql/queues/`).
use pgrx::PgSqlErrorCode as Code;

use crate::core::errors::raise;

mod drain;
mod floor;
mod resume;
mod wait;

fn no_such_queue(queue: &str) -> ! {
    raise(
        Code::ERRCODE_UNDEFINED_OBJECT,
        format!("event queue \"{queue}\" does not exist"),
        Some("SELECT name FROM herald.event_queue; lists the queues.".into()),
    )
}
