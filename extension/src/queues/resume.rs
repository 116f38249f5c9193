//! `herald.resume_queue`: an operator releases a queue held at a failing event.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{ensure_state, no_such_queue};
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::wakeup;

/// `herald.resume_queue(queue, action)`: release a held queue. `'retry'` hands the held
/// event to the next lookup again; `'skip'` drops it. Both are always recorded in the log.
#[pg_extern(volatile, parallel_unsafe)]
fn resume_queue(queue: Option<&str>, action: default!(Option<&str>, "'retry'")) -> bool {
    let queue = errors::required(queue, "queue");
    catalog::require_primary("herald.resume_queue()");
    let action = errors::required(action, "action")
        .trim()
        .to_ascii_lowercase();
    if action != "retry" && action != "skip" {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown resume action \"{}\"", errors::shown(&action)),
            Some("Use 'retry' to handle the held event again or 'skip' to drop it.".into()),
        );
    }
    let operator = catalog::role_name(catalog::current_user());
    catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            if !ensure_state(client, queue) {
                no_such_queue(queue);
            }
            let held = errors::spi(client.update(
                "SELECT s.held_event, s.held_listener, q.id FROM herald.queue_state s
                   JOIN herald.event_queue q ON q.name OPERATOR(pg_catalog.=) s.queue
                  WHERE s.queue OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE OF s",
                Some(1),
                &[queue.into()],
            ));
            if held.is_empty() {
                no_such_queue(queue);
            }
            let row = held.first();
            let queue_id = errors::spi(row.get::<i32>(3)).unwrap_or_default();
            let (Some(event), listener) = (
                errors::spi(row.get::<i64>(1)),
                errors::spi(row.get::<i64>(2)),
            ) else {
                raise(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("event queue \"{}\" is not held", errors::shown(queue)),
                    Some(
                        "Only a queue in state 'held' can be resumed; see herald.queue_status."
                            .into(),
                    ),
                );
            };
            let outcome = if action == "skip" {
                "skipped"
            } else {
                "retried"
            };
            errors::spi(client.update(
                include_str!("resume_log.sql"),
                None,
                &[
                    queue.into(),
                    event.into(),
                    listener.into(),
                    outcome.into(),
                    (action == "skip").into(),
                    operator.as_str().into(),
                ],
            ));
            errors::spi(client.update(
                "UPDATE herald.queue_state s
                    SET held_event = NULL, held_listener = NULL,
                        skipped_count = s.skipped_count OPERATOR(pg_catalog.+) CASE WHEN $2 THEN 1 ELSE 0 END
                  WHERE s.queue OPERATOR(pg_catalog.=) $1",
                None,
                &[queue.into(), (action == "skip").into()],
            ));
            wakeup::wake_holders_at_commit(KeySpace::QueueDrainer, queue_id);
            true
        })
    })
}
