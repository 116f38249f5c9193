//! Waiting for work: `herald.await_events` (one queue) and `herald.await_queues` (every
//! queue one connection drains) sleep on the drainer's latch until a producer's commit (or
//! a settings change) sets it; `herald._wake_queue` is how SQL triggers wake it. A commit
//! wakes whichever backend holds the queue's drainer lock, so one connection holding the
//! claims of many queues is woken by work in any of them.
use pgrx::prelude::*;

use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::core::wakeup;

/// `herald.await_events(queue, timeout_ms)`: block until the queue has work for its drainer
/// (or was stopped, resumed or reconfigured), or the timeout passes. Returns whether there
/// is something to do. Cancellable with `pg_cancel_backend`.
#[pg_extern(volatile, parallel_unsafe)]
fn await_events(queue: Option<&str>, timeout_ms: default!(Option<i32>, "1000")) -> bool {
    let queue = errors::required(queue, "queue");
    let timeout_ms = errors::required(timeout_ms, "timeout_ms").max(0) as i64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64);
    wakeup::wait_until(deadline, || has_work(queue).then_some(true)).unwrap_or(false)
}

/// `herald.await_queues(queues, timeout_ms)`: block until one of `queues` (the queues this
/// connection drains) has work for its drainer, or the timeout passes. Returns the queues
/// with work, in the order given (empty on timeout). A timeout of 0 only looks.
/// Cancellable with `pg_cancel_backend`.
#[pg_extern(volatile, parallel_unsafe)]
fn await_queues(
    queues: Option<Vec<Option<String>>>,
    timeout_ms: default!(Option<i32>, "1000"),
) -> Vec<String> {
    let queues = errors::required(queues, "queues");
    let timeout_ms = errors::required(timeout_ms, "timeout_ms").max(0) as u64;
    if queues.iter().any(Option::is_none) {
        raise(
            pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "queues must not contain NULL",
            None,
        );
    }
    let queues: Vec<String> = queues.into_iter().flatten().collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    wakeup::wait_until(deadline, || {
        let busy = queues_with_work(&queues);
        (!busy.is_empty()).then_some(busy)
    })
    .unwrap_or_default()
}

/// The queues of `queues` with something for their drainer to do (see `has_work_any.sql`).
fn queues_with_work(queues: &[String]) -> Vec<String> {
    if queues.is_empty() {
        return Vec::new();
    }
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(
                client,
                include_str!("has_work_any.sql"),
                &[pg_sys::TEXTARRAYOID],
                &[queues.to_vec().into_datum()],
            );
            rows.get::<Vec<String>>(0, 1).unwrap_or_default()
        })
    })
}

/// Something for the drainer to do (see `has_work.sql`).
fn has_work(queue: &str) -> bool {
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(
                client,
                include_str!("has_work.sql"),
                &[pg_sys::TEXTOID],
                &[queue.into_datum()],
            );
            rows.get::<bool>(0, 1).unwrap_or(true)
        })
    })
}

/// `herald._wake_queue(queue_id)`: used by the event_queue trigger so that a settings change
/// reaches a waiting drainer at once.
#[pg_extern(volatile, parallel_unsafe)]
fn _wake_queue(queue_id: i32) {
    wakeup::wake_holders_at_commit(KeySpace::QueueDrainer, queue_id);
}

/// `herald._wait_for_producers(queue_id)`: before a queue is deleted, wait for the
/// producers that may still commit events into it (see `delivery::enqueue`), without
/// making new producers wait behind the deletion.
#[pg_extern(volatile, parallel_unsafe)]
fn _wait_for_producers(queue_id: i32) {
    KeySpace::QueueProducers.lock_exclusive_between_holders(queue_id);
}
