//! Delivering events to listeners, the way each listener asked for: stored in its queue,
//! stored for its session, or handled at once in the producing transaction.
//!
//! This layer knows events and listeners but no area: user events (`events::emit`),
//! data-change capture and the system events of jobs (and later reports and locks) all
//! come here.
//! - [`publish`]: one event to every listener of its type
//! - [`deliver`]: one event to one listener
//! - [`store`]: event rows inserted directly into Herald's event tables
use pgrx::prelude::*;

use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::errors;
use crate::core::ffi;
use crate::core::wakeup;
use crate::handlers::{self, HandlerError};
use crate::listeners::cache;
use crate::model::event::EventRow;
use crate::model::listener::{Delivery, Denial, Listener, QueueRef};

pub mod store;

/// Hook the event-row layouts into relcache invalidations (from `_PG_init`).
pub fn init() {
    store::init();
}

/// Deliver one user event to every listener of its type; returns the event id. `source` is
/// the role that emitted it.
pub fn publish(r#type: &str, action: &str, source: &str, details: pg_sys::Datum) -> i64 {
    cache::refresh();
    let listeners = cache::current().matching(r#type);
    publish_to(&listeners, r#type, action, source, details)
}

/// Deliver one of Herald's own events (`JOB`, `CALLOUT`, ...) to every system listener of
/// its type; returns the event id. `source` names what it is about (a job type, ...).
pub fn publish_system(r#type: &str, action: &str, source: &str, details: pg_sys::Datum) -> i64 {
    cache::refresh();
    let listeners = cache::current().matching_system(r#type);
    publish_to(&listeners, r#type, action, source, details)
}

/// Does any system listener take events of `type` now? (Callers skip building an event
/// nobody receives.)
pub fn has_system_listeners(r#type: &str) -> bool {
    cache::refresh();
    !cache::current().matching_system(r#type).is_empty()
}

fn publish_to(
    listeners: &[std::rc::Rc<Listener>],
    r#type: &str,
    action: &str,
    source: &str,
    details: pg_sys::Datum,
) -> i64 {
    if listeners.iter().any(|l| l.delivery.queue().is_some()) {
        // The transaction id comes before the event id: drainers rely on it to know when no
        // smaller event id can appear any more (see queues::floor).
        // SAFETY: assigns the top transaction's xid (raises only outside a transaction,
        // which a function call never is).
        unsafe { pg_sys::GetTopTransactionId() };
    }
    let id = next_event_id();
    if listeners.is_empty() {
        return id;
    }
    let event = EventRow {
        id,
        queue: None,
        r#type,
        action,
        source: Some(source),
        details,
        // SAFETY: reads the current transaction's start time.
        created_at: unsafe { pg_sys::GetCurrentTransactionStartTimestamp() },
        listener: 0,
    };
    // Stored deliveries first, then synchronous handlers (which may emit events themselves).
    for l in listeners.iter().filter(|l| !l.delivery.is_sync()) {
        deliver(&event, l);
    }
    for l in listeners.iter().filter(|l| l.delivery.is_sync()) {
        deliver(&event, l);
    }
    id
}

/// Deliver one event to one listener, unless its owner may not have it now (see
/// [`Listener::denied`]): then the event is withheld from it, with a WARNING to the
/// producer and a `failed` line in the event log.
pub fn deliver(event: &EventRow, l: &Listener) {
    if let Some(denial) = &l.denied {
        return withhold(event, l, denial);
    }
    match &l.delivery {
        Delivery::Queue(queue) => enqueue(event, l.id, queue),
        Delivery::Sync => deliver_sync(event, l),
        Delivery::Session(session) => {
            store::insert(
                catalog::oids().session_event_rel,
                &event.for_listener(None, l.id),
            );
            wakeup::wake_backend_at_commit(session.pid);
        }
    }
}

/// A new event id. When the event goes into a queue, the caller's transaction must already
/// have its xid (see `emit`).
pub fn next_event_id() -> i64 {
    ffi::nextval(catalog::oids().event_seq)
}

/// Persist the event into the listener's queue and wake the queue's drainer at commit.
///
/// The first event of a transaction for a queue takes the queue's producer lock (shared):
/// removing the queue or one of its listeners waits for this transaction to end, so its
/// events never outlive their listener. A removal that committed before the lock was
/// granted is seen by taking in its invalidation: then the listener is gone and nothing
/// is stored.
fn enqueue(event: &EventRow, listener: i64, queue: &QueueRef) {
    if KeySpace::QueueProducers.lock_for_transaction(queue.id, pg_sys::ShareLock) {
        cache::refresh();
        let current = cache::current();
        let same = current
            .get(listener)
            .is_some_and(|l| l.delivery.queue().is_some_and(|q| q.id == queue.id));
        if !same {
            return;
        }
    }
    let row = event.for_listener(Some(&queue.name), listener);
    store::insert(catalog::oids().event_rel, &row);
    if queue.running {
        wakeup::wake_holders_at_commit(KeySpace::QueueDrainer, queue.id);
    }
}

/// Run a synchronous listener's handler in the producing transaction, in a subtransaction:
/// a failing handler is reported as a WARNING and logged, and the producer goes on.
fn deliver_sync(event: &EventRow, l: &Listener) {
    let row = event.for_listener(None, l.id);
    let datum = handlers::event_datum_of(&row);
    if let Err(e) = handlers::call_in_subtransaction(l.handler, datum, l.owner) {
        errors::warning(
            format!(
                "herald: handler of listener {} failed on event {}: {}",
                l.id, event.id, e.message
            ),
            e.detail.clone(),
        );
        log_sync_failure(&row, l, &e.text());
    }
}

fn withhold(event: &EventRow, l: &Listener, denial: &Denial) {
    errors::warning(
        format!(
            "herald: event {} withheld from listener {}: {}",
            event.id, l.id, denial.message
        ),
        None,
    );
    let queue = l.delivery.queue().map(|q| q.name.as_str());
    let error = HandlerError::denied(denial).text();
    log(queue, event, l, "withheld", &error);
}

fn log_sync_failure(event: &EventRow, l: &Listener, error: &str) {
    log(None, event, l, "failed", error)
}

fn log(queue: Option<&str>, event: &EventRow, l: &Listener, outcome: &str, error: &str) {
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.event_log (queue, event_id, listener, handler, type, action, outcome, error)
             VALUES ($7, $1, $2, $3::pg_catalog.oid::pg_catalog.regprocedure::text, $4, $5, $8, $6)",
            &[
                event.id.into(),
                l.id.into(),
                l.handler.into(),
                event.r#type.into(),
                event.action.into(),
                error.into(),
                queue.into(),
                outcome.into(),
            ],
        ))
    });
}
