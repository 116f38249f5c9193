//! Draining event queues: one lookup per call, events handled one at a time in order; the
//! handlers' effects and the events' acknowledgement (their deletion) commit together.
//!
//! Exactly-once: a lookup runs in the caller's transaction and holds the queue row with
//! `FOR NO KEY UPDATE`, so two lookups of one queue never overlap, and a lookup that dies
//! before commit leaves neither effects nor acknowledgements. Coordinators additionally
//! hold the queue's advisory lock (`herald.claim_queue`) so that one of them drains it.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::catalog;
use crate::dispatch::{self, EventValue, HandlerError, JsonbDatum};
use crate::errors::{self, raise};
use crate::plans;

/// One queue's settings, as read (and locked) at the start of a lookup.
struct QueueSettings {
    amount_per_lookup: i32,
    hold_on_error: bool,
    log_level: i16,
    running: bool,
    held: bool,
    /// Scan floor: events below it are handled or will never exist.
    scan_from: i64,
    /// The pending mark (see `next_floor`) and whether it is ripe.
    mark_id: Option<i64>,
    mark_ripe: bool,
}

/// One pending event with its listener's handler.
struct Pending {
    ctid: pg_sys::ItemPointerData,
    event: EventValue,
    handler: Option<pg_sys::Oid>,
    owner: Option<pg_sys::Oid>,
}

enum Outcome {
    Handled,
    Failed(HandlerError),
}

fn lock_queue(client: &mut pgrx::spi::SpiClient<'_>, queue: &str) -> Option<QueueSettings> {
    let rows = plans::execute(
        client,
        "SELECT q.event_amount_per_lookup, q.event_hold_on_error, q.event_log_level,
                q.event_run, s.held_event IS NOT NULL, s.scan_from, s.mark_id,
                COALESCE(pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())
                         OPERATOR(pg_catalog.>=) s.mark_xmax, false)
           FROM herald.queue_state s
           JOIN herald.event_queue q ON q.name OPERATOR(pg_catalog.=) s.queue
          WHERE s.queue OPERATOR(pg_catalog.=) $1
            FOR NO KEY UPDATE OF s",
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
        scan_from: rows.get::<i64>(0, 6).unwrap_or(0),
        mark_id: rows.get::<i64>(0, 7),
        mark_ripe: rows.get::<bool>(0, 8).unwrap_or(false),
    })
}

/// Where the next lookups start, after this one: `(scan_from, mark_id, new_mark)`.
///
/// Event ids are allocated after the producer's transaction id (see `events::emit`), so an
/// event that is still invisible but has an id below the highest one handled belongs to a
/// transaction whose xid was assigned before the fetch. A mark records "everything below
/// `mark_id` is handled, except perhaps events of transactions with xid < `mark_xmax`"
/// (`mark_xmax` = the next xid to be assigned, read after the fetch). Once a snapshot's
/// xmin reaches `mark_xmax`, none of those transactions is running: their events are
/// visible, and as soon as a lookup has passed `mark_id` (or found nothing more) every event
/// below it has been handled, so the floor moves up to the mark.
fn next_floor(
    settings: &QueueSettings,
    fetched: usize,
    last_id: Option<i64>,
    held: bool,
) -> (i64, Option<i64>, bool) {
    let mut floor = settings.scan_from;
    let mut mark = settings.mark_id;
    if held {
        return (floor, mark, false);
    }
    let exhausted = fetched < settings.amount_per_lookup as usize;
    if let Some(m) = mark {
        if settings.mark_ripe && (exhausted || last_id.is_some_and(|l| l >= m)) {
            floor = floor.max(m);
            mark = None;
        }
    }
    if mark.is_none() {
        if let Some(l) = last_id {
            if l + 1 > floor {
                return (floor, Some(l + 1), true);
            }
        }
    }
    (floor, mark, false)
}

fn no_such_queue(queue: &str) -> ! {
    raise(
        Code::ERRCODE_UNDEFINED_OBJECT,
        format!("event queue \"{queue}\" does not exist"),
        Some("SELECT name FROM herald.event_queue; lists the queues.".into()),
    )
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
    let row = catalog::as_owner(|| drain_lookup(queue, node));
    TableIterator::once(row)
}

fn drain_lookup(queue: &str, node: Option<&str>) -> (String, i32, i32, bool) {
    Spi::connect_mut(|client| {
        let Some(settings) = lock_queue(client, queue) else {
            no_such_queue(queue)
        };
        if !settings.running {
            return ("stopped".to_string(), 0, 0, false);
        }
        if settings.held {
            return ("held".to_string(), 0, 0, false);
        }
        let pending = fetch(
            client,
            queue,
            settings.amount_per_lookup,
            settings.scan_from,
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
                        let details = settings.log_level >= 3;
                        log(client, queue, p, "handled", None, details, node);
                    }
                }
                Outcome::Failed(e) => {
                    let text = e.text();
                    let details = settings.log_level >= 3;
                    if settings.hold_on_error {
                        if settings.log_level >= 1 {
                            log(client, queue, p, "held", Some(&text), details, node);
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
                        log(client, queue, p, "failed", Some(&text), details, node);
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
        let floor = next_floor(&settings, fetched, last_id, held.is_some());
        let error = last_error.as_deref();
        let acknowledged = record_status(
            client, queue, &done_tids, handled, failed, error, held, node, floor,
        );
        if acknowledged != done_ids.len() as i64 {
            // A row moved since the fetch (someone updated herald.event by hand): fall back
            // to the keys for whatever is left.
            acknowledge(client, queue, &done_ids, &done_listeners);
        }
        let state = if held.is_some() { "held" } else { "running" };
        (
            state.to_string(),
            handled,
            failed,
            held.is_none() && fetched as i32 == settings.amount_per_lookup,
        )
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
    let calls: Vec<dispatch::Call> = pending
        .iter()
        .map(|p| dispatch::Call {
            handler: p.handler,
            event: dispatch::event_datum(&p.event),
            run_as: p.owner,
        })
        .collect();
    let mut handlers = dispatch::Handlers::default();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(calls.len());
    let mut start = 0;
    while start < calls.len() {
        match dispatch::call_batch(&mut handlers, &calls[start..]) {
            Ok(()) => {
                outcomes.extend((start..calls.len()).map(|_| Outcome::Handled));
                break;
            }
            Err(k) => {
                let failing = start + k;
                for call in &calls[start..=failing] {
                    match dispatch::call_one(&mut handlers, call) {
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
    let listeners = crate::listeners::current();
    (0..rows.len())
        .map(|r| {
            let listener_id = rows.get::<i64>(r, 8).unwrap_or_default();
            let listener = listeners.get(listener_id);
            // A handler dropped after registration shows up as a failure, not a crash.
            let handler = listener.as_ref().map(|l| l.handler).filter(|oid| unsafe {
                pg_sys::SearchSysCacheExists(
                    pg_sys::SysCacheIdentifier::PROCOID as i32,
                    pg_sys::Datum::from(*oid),
                    pg_sys::Datum::from(0),
                    pg_sys::Datum::from(0),
                    pg_sys::Datum::from(0),
                )
            });
            let ctid = rows
                .get::<pg_sys::Datum>(r, 1)
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
                owner: listener.map(|l| l.owner),
            }
        })
        .collect()
}

/// A `tid[]` datum of `tids`.
fn tid_array(tids: &[pg_sys::ItemPointerData]) -> pg_sys::Datum {
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

#[allow(clippy::too_many_arguments)]
fn log(
    client: &mut pgrx::spi::SpiClient<'_>,
    queue: &str,
    p: &Pending,
    outcome: &str,
    error: Option<&str>,
    with_details: bool,
    node: Option<&str>,
) {
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
            p.handler.into_datum(),
            p.event.r#type.as_str().into_datum(),
            p.event.action.as_str().into_datum(),
            outcome.into_datum(),
            error.into_datum(),
            details,
            node.into_datum(),
        ],
    );
}

#[allow(clippy::too_many_arguments)]
/// Acknowledge (delete) the done events by their ctids and record the lookup's outcome, in
/// one statement; returns how many events were deleted.
fn record_status(
    client: &mut pgrx::spi::SpiClient<'_>,
    queue: &str,
    done: &[pg_sys::ItemPointerData],
    handled: i32,
    failed: i32,
    last_error: Option<&str>,
    held: Option<(i64, i64)>,
    node: Option<&str>,
    (scan_from, mark_id, new_mark): (i64, Option<i64>, bool),
) -> i64 {
    use pg_sys::{BOOLOID as B, INT8OID as I8, TEXTOID as T};
    let rows = plans::execute(
        client,
        "WITH gone AS (
             DELETE FROM herald.event e
              WHERE e.ctid OPERATOR(pg_catalog.=) ANY ($12)
                AND e.queue OPERATOR(pg_catalog.=) $1
             RETURNING 1)
         UPDATE herald.queue_state s
            SET handled_count = s.handled_count OPERATOR(pg_catalog.+) $2,
                failed_count = s.failed_count OPERATOR(pg_catalog.+) $3,
                last_error = COALESCE($4, s.last_error),
                last_error_at = CASE WHEN $4 IS NULL THEN s.last_error_at ELSE pg_catalog.now() END,
                held_event = $5,
                held_listener = $6,
                drained_by = COALESCE($7, s.drained_by),
                last_lookup_at = pg_catalog.now(),
                scan_from = $8,
                mark_id = $9,
                mark_xmax = CASE WHEN $9 IS NULL THEN NULL
                                 WHEN $10 THEN $11
                                 ELSE s.mark_xmax END
          WHERE s.queue OPERATOR(pg_catalog.=) $1
         RETURNING (SELECT pg_catalog.count(*) FROM gone)",
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
            queue.into_datum(),
            (handled as i64).into_datum(),
            (failed as i64).into_datum(),
            last_error.into_datum(),
            held.map(|h| h.0).into_datum(),
            held.map(|h| h.1).into_datum(),
            node.into_datum(),
            scan_from.into_datum(),
            mark_id.into_datum(),
            new_mark.into_datum(),
            // The next transaction id to be assigned, read after the fetch: every
            // transaction that held an event id below the mark has a smaller xid. (A
            // snapshot's xmax would not do: it is latestCompletedXid + 1, and a running
            // transaction may hold an xid above it.)
            Some(pg_sys::Datum::from(
                unsafe { pg_sys::ReadNextFullTransactionId() }.value,
            )),
            Some(tid_array(done)),
        ],
    );
    rows.get::<i64>(0, 1).unwrap_or_default()
}

/// `herald.resume_queue(queue, action)`: release a held queue. `'retry'` hands the held
/// event to the next lookup again; `'skip'` drops it. Both are always recorded in the log.
#[pg_extern(volatile, parallel_unsafe)]
fn resume_queue(queue: Option<&str>, action: default!(Option<&str>, "'retry'")) -> bool {
    let queue = errors::required(queue, "queue");
    let action = errors::required(action, "action")
        .trim()
        .to_ascii_lowercase();
    if action != "retry" && action != "skip" {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown resume action \"{action}\""),
            Some("Use 'retry' to handle the held event again or 'skip' to drop it.".into()),
        );
    }
    catalog::as_owner(|| {
        Spi::connect_mut(|client| {
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
                    format!("event queue \"{queue}\" is not held"),
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
                "WITH gone AS (
                     DELETE FROM herald.event e
                      WHERE $5 AND e.queue OPERATOR(pg_catalog.=) $1
                        AND e.id OPERATOR(pg_catalog.=) $2 AND e.listener OPERATOR(pg_catalog.=) $3
                  RETURNING e.*)
                 INSERT INTO herald.event_log (queue, event_id, listener, handler, type, action, outcome, error, details, node)
                 SELECT $1, $2, $3, l.handler::text, e.type, e.action, $4, q.last_error, e.details,
                        CURRENT_USER
                   FROM herald.queue_state q
                   LEFT JOIN herald.listener l ON l.id OPERATOR(pg_catalog.=) $3
                   LEFT JOIN (SELECT * FROM gone UNION ALL
                              SELECT * FROM herald.event e2
                               WHERE NOT $5 AND e2.queue OPERATOR(pg_catalog.=) $1
                                 AND e2.id OPERATOR(pg_catalog.=) $2
                                 AND e2.listener OPERATOR(pg_catalog.=) $3) e ON true
                  WHERE q.queue OPERATOR(pg_catalog.=) $1",
                None,
                &[
                    queue.into(),
                    event.into(),
                    listener.into(),
                    outcome.into(),
                    (action == "skip").into(),
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
            crate::wakeup::wake_at_commit(queue_id);
            true
        })
    })
}

/// `herald.await_events(queue, timeout_ms)`: block until the queue has work for its drainer
/// (or was stopped, resumed or reconfigured), or the timeout passes. Returns whether there
/// is something to do. Cancellable with `pg_cancel_backend`.
#[pg_extern(volatile, parallel_unsafe)]
fn await_events(queue: Option<&str>, timeout_ms: default!(Option<i32>, "1000")) -> bool {
    let queue = errors::required(queue, "queue");
    let timeout_ms = errors::required(timeout_ms, "timeout_ms").max(0) as i64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64);
    loop {
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        if has_work(queue) {
            return true;
        }
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            return false;
        }
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

/// Something for the drainer to do: events in a running, non-held queue, or a stopped or
/// missing queue (so that the drainer notices and lets go).
fn has_work(queue: &str) -> bool {
    catalog::as_owner(|| {
        Spi::connect(|client| {
            let rows = plans::execute(
                client,
                "SELECT COALESCE((
                     SELECT q.event_run OPERATOR(pg_catalog.=) 0
                         OR (s.held_event IS NULL AND EXISTS (
                                 SELECT 1 FROM herald.event e
                                  WHERE e.queue OPERATOR(pg_catalog.=) q.name
                                    AND e.id OPERATOR(pg_catalog.>=) s.scan_from))
                       FROM herald.event_queue q
                       JOIN herald.queue_state s ON s.queue OPERATOR(pg_catalog.=) q.name
                      WHERE q.name OPERATOR(pg_catalog.=) $1), true)",
                &[pg_sys::TEXTOID],
                &[queue.into_datum()],
            );
            rows.get::<bool>(0, 1).unwrap_or(true)
        })
    })
}
