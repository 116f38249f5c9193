//! One lookup of a queue (`herald.drain`): fetch the next events, handle them one at a time
//! in order, and acknowledge them; the handlers' effects and the acknowledgement (the
//! events' deletion) commit together.
//!
//! Exactly-once: a lookup runs in the caller's transaction and holds the queue's state row
//! with `FOR NO KEY UPDATE`, so two lookups of one queue never overlap, and a lookup that
//! dies before commit leaves neither effects nor acknowledgements. Coordinators additionally
//! hold the queue's advisory lock (`herald.claim_queue`) so that one of them drains it.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use std::cell::Cell;

use super::floor::{self, Floor, NextFloor, Seen};
use super::{ensure_state, no_such_queue};
use crate::core::advisory::KeySpace;
use crate::core::catalog;
use crate::core::datum::JsonbDatum;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::handlers::{self, HandlerError};
use crate::listeners::cache;
use crate::model::event::EventValue;

/// One queue's settings, as read (and locked) at the start of a lookup.
struct QueueSettings {
    amount_per_lookup: i32,
    hold_on_error: bool,
    log_level: i16,
    running: bool,
    held: bool,
    floor: Floor,
    /// The queue's id: the key of its drainer lock.
    id: i32,
}

/// One pending event with its listener's handler.
struct Pending {
    ctid: pg_sys::ItemPointerData,
    event: EventValue,
    /// The handler, or why it may not be called (see `Listener::denied`).
    handler: Result<pg_sys::Oid, HandlerError>,
    /// The handler named in the log (None when the listener is gone).
    handler_oid: Option<pg_sys::Oid>,
    owner: pg_sys::Oid,
}

enum Outcome {
    Handled,
    Failed(HandlerError),
}

/// The state of a queue after a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueState {
    Running,
    Stopped,
    Held,
}

impl QueueState {
    fn name(self) -> &'static str {
        match self {
            QueueState::Running => "running",
            QueueState::Stopped => "stopped",
            QueueState::Held => "held",
        }
    }
}

/// What one lookup did.
struct Lookup {
    state: QueueState,
    handled: i32,
    failed: i32,
    /// More events are waiting: the drainer should look again at once.
    more: bool,
}

impl Lookup {
    fn idle(state: QueueState) -> Lookup {
        Lookup {
            state,
            handled: 0,
            failed: 0,
            more: false,
        }
    }
}

/// The lookup being made: which queue, by which node, with which settings.
struct LookupOf<'a> {
    queue: &'a str,
    node: Option<&'a str>,
    settings: QueueSettings,
}

/// What a lookup records about itself in the queue's state.
struct Status<'a> {
    done: &'a [pg_sys::ItemPointerData],
    handled: i32,
    failed: i32,
    last_error: Option<&'a str>,
    /// The event and listener the queue is now held at.
    held: Option<(i64, i64)>,
    floor: NextFloor,
}

fn lock_queue(client: &mut pgrx::spi::SpiClient<'_>, queue: &str) -> Option<QueueSettings> {
    let rows = plans::execute(
        client,
        include_str!("lock_queue.sql"),
        &[pg_sys::TEXTOID],
        &[queue.into_datum()],
    );
    if rows.is_empty() {
        return None;
    }
    let get_i16 = |i| rows.get::<i16>(0, i).unwrap_or_default();
    Some(QueueSettings {
        amount_per_lookup: rows.get::<i32>(0, 1).unwrap_or(10),
        hold_on_error: get_i16(2) == 1,
        log_level: get_i16(3),
        running: get_i16(4) == 1,
        held: rows.get::<bool>(0, 5).unwrap_or(false),
        floor: Floor {
            scan_from: rows.get::<i64>(0, 6).unwrap_or(0),
            mark_id: rows.get::<i64>(0, 7),
            mark_ripe: rows.get::<bool>(0, 8).unwrap_or(false),
        },
        id: rows.get::<i32>(0, 9).unwrap_or_default(),
    })
}

/// `herald.drain(queue, node)`: one lookup of a queue. Returns the queue's state after the
/// lookup, how many events were handled and failed, and whether more are waiting.
#[pg_extern(volatile, parallel_unsafe)]
fn drain(
    queue: Option<&str>,
    node: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(state, String),
        name!(handled, i32),
        name!(failed, i32),
        name!(more, bool),
    ),
> {
    let queue = errors::required(queue, "queue");
    let _drain = Draining::enter();
    catalog::require_primary("herald.drain()");
    let lookup = catalog::as_owner(|| lookup(queue, node));
    TableIterator::once((
        lookup.state.name().to_string(),
        lookup.handled,
        lookup.failed,
        lookup.more,
    ))
}

thread_local! {
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// Marks a lookup in progress in this backend; a handler that calls `herald.drain` again
/// would hand out the events of the running lookup a second time, so that is refused.
struct Draining;

impl Draining {
    fn enter() -> Draining {
        if DRAINING.with(|d| d.replace(true)) {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "herald.drain() cannot be called while a lookup is running in this session",
                Some("A handler must not drain queues: let the coordinators do it.".into()),
            );
        }
        Draining
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        DRAINING.with(|d| d.set(false));
    }
}

/// One queue has one drainer at a time. A lookup runs in the session that holds the queue's
/// drainer lock (a coordinator's, after `herald.claim_queue`), or takes the lock for its
/// own transaction (a manual drain while no coordinator drains the queue). A session that
/// holds the drainer lock of a queue id that is no longer this queue's (it was deleted and
/// re-created under its name since the session claimed it) is refused, so that its
/// coordinator lets go and claims the queue again.
fn require_drainer_lock(client: &pgrx::spi::SpiClient<'_>, queue: &str, id: i32) {
    let space = KeySpace::QueueDrainer;
    if space.held_by_me(id) {
        return;
    }
    // Rare: a manual drain, or a drainer whose queue changed identity: it holds a drainer
    // lock whose queue no longer exists. pg_locks is the only way to list this session's
    // own advisory locks.
    let stale = plans::execute(
        client,
        "SELECT l.objid::int8 FROM pg_catalog.pg_locks l
          WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
            AND l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
            AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                                                  WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
            AND l.classid::int8 OPERATOR(pg_catalog.=) $1 AND l.objsubid OPERATOR(pg_catalog.=) 2
            AND NOT EXISTS (SELECT 1 FROM herald.event_queue q
                             WHERE q.id::int8 OPERATOR(pg_catalog.=) l.objid::int8)
          LIMIT 1",
        &[pg_sys::INT8OID],
        &[(space.number() as i64).into_datum()],
    );
    if !stale.is_empty() {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "this session holds the drainer lock of a deleted queue (id {}), not of queue \"{queue}\"",
                stale.get::<i64>(0, 1).unwrap_or_default()
            ),
            Some(
                "The queue was deleted and re-created since this session claimed it: \
                 reconnect (or pg_advisory_unlock_all()) and claim it again (herald.claim_queue)."
                    .into(),
            ),
        );
    }
    if !space.try_lock_for_transaction(id) {
        raise(
            Code::ERRCODE_LOCK_NOT_AVAILABLE,
            format!("queue \"{queue}\" is drained by another session"),
            Some(
                "A queue has one drainer at a time; see herald.queue_status for the node that \
                 drains it."
                    .into(),
            ),
        );
    }
}

fn lookup(queue: &str, node: Option<&str>) -> Lookup {
    Spi::connect_mut(|client| {
        let settings = match lock_queue(client, queue) {
            Some(settings) => settings,
            None if ensure_state(client, queue) => {
                lock_queue(client, queue).unwrap_or_else(|| no_such_queue(queue))
            }
            None => no_such_queue(queue),
        };
        require_drainer_lock(client, queue, settings.id);
        if !settings.running {
            return Lookup::idle(QueueState::Stopped);
        }
        if settings.held {
            return Lookup::idle(QueueState::Held);
        }
        let this = LookupOf {
            queue,
            node,
            settings,
        };
        let settings = &this.settings;
        let pending = fetch(
            client,
            queue,
            settings.amount_per_lookup,
            settings.floor.scan_from,
        );
        let fetched = pending.len();

        let mut done_ids: Vec<i64> = Vec::with_capacity(fetched);
        let mut done_listeners: Vec<i64> = Vec::with_capacity(fetched);
        let mut done_tids: Vec<pg_sys::ItemPointerData> = Vec::with_capacity(fetched);
        let (mut handled, mut failed) = (0i32, 0i32);
        let mut last_error: Option<String> = None;
        let mut held: Option<(i64, i64)> = None;

        let outcomes = run_handlers(&pending, settings.hold_on_error);
        for (p, outcome) in pending.iter().zip(outcomes) {
            match outcome {
                Outcome::Handled => {
                    handled += 1;
                    done_ids.push(p.event.id);
                    done_tids.push(p.ctid);
                    done_listeners.push(p.event.listener);
                    if settings.log_level >= 2 {
                        log(client, &this, p, "handled", None);
                    }
                }
                Outcome::Failed(e) => {
                    let text = e.text();
                    if settings.hold_on_error {
                        if settings.log_level >= 1 {
                            log(client, &this, p, "held", Some(&text));
                        }
                        held = Some((p.event.id, p.event.listener));
                        last_error = Some(text);
                        break;
                    }
                    failed += 1;
                    done_ids.push(p.event.id);
                    done_tids.push(p.ctid);
                    done_listeners.push(p.event.listener);
                    if settings.log_level >= 1 {
                        log(client, &this, p, "failed", Some(&text));
                    }
                    last_error = Some(text);
                }
            }
        }

        let last_id = if held.is_none() {
            pending.last().map(|p| p.event.id)
        } else {
            None
        };
        let seen = Seen {
            fetched,
            limit: settings.amount_per_lookup as usize,
            last_id,
            held: held.is_some(),
        };
        let status = Status {
            done: &done_tids,
            handled,
            failed,
            last_error: last_error.as_deref(),
            held,
            floor: floor::next(settings.floor, seen),
        };
        let Some(acknowledged) = record_status(client, &this, &status) else {
            // A handler deleted the queue (its state row went with it): nothing is left to
            // acknowledge or record.
            return Lookup::idle(QueueState::Stopped);
        };
        if acknowledged != done_ids.len() as i64 {
            // A row moved since the fetch (someone updated herald.event by hand): fall back
            // to the keys for whatever is left.
            acknowledge(client, queue, &done_ids, &done_listeners);
        }
        Lookup {
            state: if held.is_some() {
                QueueState::Held
            } else {
                QueueState::Running
            },
            handled,
            failed,
            more: held.is_none() && fetched as i32 == settings.amount_per_lookup,
        }
    })
}

/// Handle `pending` in order and return each event's outcome (when holding on error, the
/// list ends at the first failure).
///
/// Events run in batches inside one subtransaction, so a lookup costs one subtransaction,
/// not one per event, and handlers keep their per-call caches from event to event. When a
/// handler fails, the batch is rolled back and replayed one event per subtransaction up to
/// the failing one; that replay decides every outcome, then batching resumes after it.
/// Nothing is visible outside before the lookup commits, so a replay changes no result.
fn run_handlers(pending: &[Pending], hold_on_error: bool) -> Vec<Outcome> {
    let calls: Vec<handlers::Call> = pending
        .iter()
        .map(|p| handlers::Call {
            handler: p.handler.clone(),
            event: handlers::event_datum(&p.event),
            run_as: p.owner,
        })
        .collect();
    let mut handlers = handlers::Handlers::default();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(calls.len());
    let mut start = 0;
    while start < calls.len() {
        match handlers::call_batch(&mut handlers, &calls[start..]) {
            Ok(()) => {
                outcomes.extend((start..calls.len()).map(|_| Outcome::Handled));
                break;
            }
            Err(k) => {
                let failing = start + k;
                for call in &calls[start..=failing] {
                    match handlers::call_one(&mut handlers, call) {
                        Ok(()) => outcomes.push(Outcome::Handled),
                        Err(e) => {
                            outcomes.push(Outcome::Failed(e));
                            if hold_on_error {
                                return outcomes;
                            }
                        }
                    }
                }
                start = failing + 1;
            }
        }
    }
    outcomes
}

/// The next events of the queue, in order, from the scan floor on. A single-table index
/// scan: listener details come from the backend's listener cache.
fn fetch(
    client: &pgrx::spi::SpiClient<'_>,
    queue: &str,
    limit: i32,
    scan_from: i64,
) -> Vec<Pending> {
    use pg_sys::{INT4OID, INT8OID, TEXTOID};
    let rows = plans::execute(
        client,
        "SELECT e.ctid, e.id, e.type, e.action, e.source, e.details, e.created_at, e.listener
           FROM herald.event e
          WHERE e.queue OPERATOR(pg_catalog.=) $1 AND e.id OPERATOR(pg_catalog.>=) $3
          ORDER BY e.id, e.listener
          LIMIT $2",
        &[TEXTOID, INT4OID, INT8OID],
        &[
            queue.into_datum(),
            limit.into_datum(),
            scan_from.into_datum(),
        ],
    );
    let listeners = cache::current();
    (0..rows.len())
        .map(|r| {
            let listener_id = rows.get::<i64>(r, 8).unwrap_or_default();
            let listener = listeners.get(listener_id);
            let handler = match &listener {
                None => Err(HandlerError::new("the listener no longer exists")),
                Some(l) => match &l.denied {
                    Some(denial) => Err(HandlerError::denied(denial)),
                    None => Ok(l.handler),
                },
            };
            let ctid = rows
                .get::<pg_sys::Datum>(r, 1)
                // SAFETY: a `tid` datum points to an ItemPointerData.
                .map(|d| unsafe { *(d.cast_mut_ptr::<pg_sys::ItemPointerData>()) })
                .expect("ctid is never NULL");
            Pending {
                ctid,
                event: EventValue {
                    id: rows.get::<i64>(r, 2).unwrap_or_default(),
                    queue: Some(queue.to_string()),
                    r#type: rows.get::<String>(r, 3).unwrap_or_default(),
                    action: rows.get::<String>(r, 4).unwrap_or_default(),
                    source: rows.get::<String>(r, 5),
                    details: rows
                        .get::<JsonbDatum>(r, 6)
                        .map(|d| d.0)
                        .unwrap_or(pg_sys::Datum::from(0)),
                    created_at: rows
                        .get::<pg_sys::Datum>(r, 7)
                        .map(|d| d.value() as i64)
                        .unwrap_or_default(),
                    listener: listener_id,
                },
                handler,
                handler_oid: listener.as_ref().map(|l| l.handler),
                owner: listener.map_or(pg_sys::InvalidOid, |l| l.owner),
            }
        })
        .collect()
}

/// A `tid[]` datum of `tids`.
fn tid_array(tids: &[pg_sys::ItemPointerData]) -> pg_sys::Datum {
    // SAFETY: each element is copied into palloc'd memory of its exact size, and the array
    // is built from `elems.len()` such datums with tid's storage parameters.
    unsafe {
        let mut elems: Vec<pg_sys::Datum> = tids
            .iter()
            .map(|t| {
                let p = pg_sys::palloc(std::mem::size_of::<pg_sys::ItemPointerData>())
                    as *mut pg_sys::ItemPointerData;
                *p = *t;
                pg_sys::Datum::from(p)
            })
            .collect();
        let array = pg_sys::construct_array(
            elems.as_mut_ptr(),
            elems.len() as i32,
            pg_sys::TIDOID,
            std::mem::size_of::<pg_sys::ItemPointerData>() as i32,
            false,
            pg_sys::TYPALIGN_SHORT as std::ffi::c_char,
        );
        pg_sys::Datum::from(array)
    }
}

fn acknowledge(client: &mut pgrx::spi::SpiClient<'_>, queue: &str, ids: &[i64], listeners: &[i64]) {
    if ids.is_empty() {
        return;
    }
    plans::execute(
        client,
        "DELETE FROM herald.event e
          USING ROWS FROM (pg_catalog.unnest($2::pg_catalog.int8[]), pg_catalog.unnest($3::pg_catalog.int8[])) AS d(id, listener)
          WHERE e.queue OPERATOR(pg_catalog.=) $1
            AND e.id OPERATOR(pg_catalog.=) d.id
            AND e.listener OPERATOR(pg_catalog.=) d.listener",
        &[pg_sys::TEXTOID, pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID],
        &[queue.into_datum(), ids.to_vec().into_datum(), listeners.to_vec().into_datum()],
    );
}

/// Record one event's outcome in the event log.
fn log(
    client: &mut pgrx::spi::SpiClient<'_>,
    lookup: &LookupOf<'_>,
    p: &Pending,
    outcome: &str,
    error: Option<&str>,
) {
    let (queue, node) = (lookup.queue, lookup.node);
    let with_details = lookup.settings.log_level >= 3;
    let details = with_details.then_some(p.event.details);
    use pg_sys::{INT8OID as I8, JSONBOID as JB, OIDOID, TEXTOID as T};
    plans::execute(
        client,
        "INSERT INTO herald.event_log (queue, event_id, listener, handler, type, action, outcome, error, details, node)
         VALUES ($1, $2, $3, $4::pg_catalog.regprocedure::text, $5, $6, $7, $8, $9, $10)",
        &[T, I8, I8, OIDOID, T, T, T, T, JB, T],
        &[
            queue.into_datum(),
            p.event.id.into_datum(),
            p.event.listener.into_datum(),
            p.handler_oid.into_datum(),
            p.event.r#type.as_str().into_datum(),
            p.event.action.as_str().into_datum(),
            outcome.into_datum(),
            error.into_datum(),
            details,
            node.into_datum(),
        ],
    );
}

/// Acknowledge the done events and record the lookup's outcome (one statement); returns how
/// many events were deleted, or None if the queue no longer exists.
fn record_status(
    client: &mut pgrx::spi::SpiClient<'_>,
    lookup: &LookupOf<'_>,
    status: &Status<'_>,
) -> Option<i64> {
    use pg_sys::{BOOLOID as B, INT8OID as I8, TEXTOID as T};
    let rows = plans::execute(
        client,
        include_str!("record_status.sql"),
        &[
            T,
            I8,
            I8,
            T,
            I8,
            I8,
            T,
            I8,
            I8,
            B,
            pg_sys::XID8OID,
            pg_sys::TIDARRAYOID,
        ],
        &[
            lookup.queue.into_datum(),
            (status.handled as i64).into_datum(),
            (status.failed as i64).into_datum(),
            status.last_error.into_datum(),
            status.held.map(|h| h.0).into_datum(),
            status.held.map(|h| h.1).into_datum(),
            lookup.node.into_datum(),
            status.floor.scan_from.into_datum(),
            status.floor.mark_id.into_datum(),
            status.floor.new_mark.into_datum(),
            // The next transaction id to be assigned, read after the fetch: every
            // transaction that held an event id below the mark has a smaller xid. (A
            // snapshot's xmax would not do: it is latestCompletedXid + 1, and a running
            // transaction may hold an xid above it.)
            Some(pg_sys::Datum::from(next_xid())),
            Some(tid_array(status.done)),
        ],
    );
    (!rows.is_empty()).then(|| rows.get::<i64>(0, 1).unwrap_or_default())
}

/// The next transaction id to be assigned.
fn next_xid() -> u64 {
    // SAFETY: reads a shared counter under its lock.
    unsafe { pg_sys::ReadNextFullTransactionId() }.value
}
