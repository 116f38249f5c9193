//! Waiting for work: `herald.await_events` sleeps on the drainer's latch until a producer's
//! commit (or a settings change) sets it; `herald._wake_queue` is how SQL triggers wake it.
use pgrx::prelude::*;

use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors;
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
    loop {
        // SAFETY: resets this backend's own latch.
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        if has_work(queue) {
            return true;
        }
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            return false;
        }
        // SAFETY: waits on this backend's own latch.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                remaining.as_millis().max(1) as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
        }
        pg_sys::check_for_interrupts!();
    }
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
