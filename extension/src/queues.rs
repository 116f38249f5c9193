//! Draining event queues: one lookup per call, events handled one at a time in order; the
//! handlers' effects and the events' acknowledgement (their deletion) commit together.
//!
//! Exactly-once: a lookup runs in the caller's transaction and holds the queue row with
//! `FOR NO KEY UPDATE`, so two lookups of one queue never overlap, and a lookup that dies
//! before commit leaves neither effects nor acknowledgements. Coordinators additionally
//! hold the queue's advisory lock (`herald.claim_queue`) so that one of them drains it.
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgSqlErrorCode as Code;
use std::cell::RefCell;

use crate::catalog;
use crate::dispatch::{self, EventValue, HandlerError, JsonbDatum};
use crate::errors::{self, raise};

/// One queue's settings, as read (and locked) at the start of a lookup.
struct QueueSettings {
    amount_per_lookup: i32,
    hold_on_error: bool,
    log_level: i16,
    running: bool,
    held: bool,
}

/// One pending event with its listener's handler.
struct Pending {
    event: EventValue,
    handler: Option<(pg_sys::Oid, String)>,
    owner: Option<pg_sys::Oid>,
}

enum Outcome {
    Handled,
    Failed(HandlerError),
}

fn lock_queue(client: &mut pgrx::spi::SpiClient<'_>, queue: &str) -> Option<QueueSettings> {
    let rows = errors::spi(client.update(
        "SELECT q.event_amount_per_lookup, q.event_hold_on_error, q.event_log_level,
                q.event_run, q.held_event IS NOT NULL
           FROM herald.event_queue q
          WHERE q.name OPERATOR(pg_catalog.=) $1
            FOR NO KEY UPDATE",
        Some(1),
        &[queue.into()],
    ));
    if rows.is_empty() {
        return None;
    }
    let row = rows.first();
    let get_i16 = |i| errors::spi(row.get::<i16>(i)).unwrap_or_default();
    Some(QueueSettings {
        amount_per_lookup: errors::spi(row.get::<i32>(1)).unwrap_or(10),
        hold_on_error: get_i16(2) == 1,
        log_level: get_i16(3),
        running: get_i16(4) == 1,
        held: errors::spi(row.get::<bool>(5)).unwrap_or(false),
    })
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
        let pending = fetch(client, queue, settings.amount_per_lookup);
        let fetched = pending.len();

        let mut done_ids: Vec<i64> = Vec::with_capacity(fetched);
        let mut done_listeners: Vec<i64> = Vec::with_capacity(fetched);
        let (mut handled, mut failed) = (0i32, 0i32);
        let mut last_error: Option<String> = None;
        let mut held: Option<(i64, i64)> = None;

        for p in &pending {
            let outcome = match &p.handler {
                None => Outcome::Failed(HandlerError::new(format!(
                    "listener {} or its handler function no longer exists",
                    p.event.listener
                ))),
                Some((oid, _)) => {
                    let datum = dispatch::event_datum(&p.event);
                    match dispatch::call_in_subtransaction(*oid, datum, p.owner) {
                        Ok(()) => Outcome::Handled,
                        Err(e) => Outcome::Failed(e),
                    }
                }
            };
            match outcome {
                Outcome::Handled => {
                    handled += 1;
                    done_ids.push(p.event.id);
                    done_listeners.push(p.event.listener);
                    if settings.log_level >= 2 {
                        log(
                            client,
                            queue,
                            p,
                            "handled",
                            None,
                            settings.log_level >= 3,
                            node,
                        );
                    }
                }
                Outcome::Failed(e) => {
                    let text = e.text();
                    if settings.hold_on_error {
                        if settings.log_level >= 1 {
                            log(
                                client,
                                queue,
                                p,
                                "held",
                                Some(&text),
                                settings.log_level >= 3,
                                node,
                            );
                        }
                        held = Some((p.event.id, p.event.listener));
                        last_error = Some(text);
                        break;
                    }
                    failed += 1;
                    done_ids.push(p.event.id);
                    done_listeners.push(p.event.listener);
                    if settings.log_level >= 1 {
                        log(
                            client,
                            queue,
                            p,
                            "failed",
                            Some(&text),
                            settings.log_level >= 3,
                            node,
                        );
                    }
                    last_error = Some(text);
                }
            }
        }

        acknowledge(client, queue, &done_ids, &done_listeners);
        record_status(
            client,
            queue,
            handled,
            failed,
            last_error.as_deref(),
            held,
            node,
        );
        let state = if held.is_some() { "held" } else { "running" };
        (
            state.to_string(),
            handled,
            failed,
            held.is_none() && fetched as i32 == settings.amount_per_lookup,
        )
    })
}

thread_local! {
    static FETCH_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

fn fetch(client: &pgrx::spi::SpiClient<'_>, queue: &str, limit: i32) -> Vec<Pending> {
    FETCH_PLAN.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let plan = errors::spi(client.prepare_mut(
                "SELECT e.id, e.type, e.action, e.source, e.details, e.created_at, e.listener,
                        p.oid, p.oid::pg_catalog.regprocedure::text, l.owner::pg_catalog.oid
                   FROM herald.event e
                   LEFT JOIN herald.listener l ON l.id OPERATOR(pg_catalog.=) e.listener
                   LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) l.handler::pg_catalog.oid
                  WHERE e.queue OPERATOR(pg_catalog.=) $1
                  ORDER BY e.id, e.listener
                  LIMIT $2",
                &[pg_sys::TEXTOID.into(), pg_sys::INT4OID.into()],
            ));
            *cell = Some(plan.keep());
        }
        let plan = cell.as_ref().unwrap();
        let rows = errors::spi(client.select(plan, None, &[queue.into(), limit.into()]));
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let handler = match (get(row.get::<pg_sys::Oid>(8)), get(row.get::<String>(9))) {
                (Some(oid), Some(name)) => Some((oid, name)),
                _ => None,
            };
            out.push(Pending {
                event: EventValue {
                    id: get(row.get::<i64>(1)).unwrap_or_default(),
                    queue: Some(queue.to_string()),
                    r#type: get(row.get::<String>(2)).unwrap_or_default(),
                    action: get(row.get::<String>(3)).unwrap_or_default(),
                    source: get(row.get::<String>(4)),
                    details: get(row.get::<JsonbDatum>(5))
                        .map(|d| d.0)
                        .unwrap_or(pg_sys::Datum::from(0)),
                    created_at: get(row.get::<pgrx::datum::TimestampWithTimeZone>(6))
                        .map(|t| t.into_inner())
                        .unwrap_or_default(),
                    listener: get(row.get::<i64>(7)).unwrap_or_default(),
                },
                handler,
                owner: get(row.get::<pg_sys::Oid>(10)),
            });
        }
        out
    })
}

fn get<T>(r: pgrx::spi::SpiResult<Option<T>>) -> Option<T> {
    errors::spi(r)
}

fn acknowledge(client: &mut pgrx::spi::SpiClient<'_>, queue: &str, ids: &[i64], listeners: &[i64]) {
    if ids.is_empty() {
        return;
    }
    errors::spi(client.update(
        "DELETE FROM herald.event e
          USING ROWS FROM (pg_catalog.unnest($2::pg_catalog.int8[]), pg_catalog.unnest($3::pg_catalog.int8[])) AS d(id, listener)
          WHERE e.queue OPERATOR(pg_catalog.=) $1
            AND e.id OPERATOR(pg_catalog.=) d.id
            AND e.listener OPERATOR(pg_catalog.=) d.listener",
        None,
        &[queue.into(), ids.to_vec().into(), listeners.to_vec().into()],
    ));
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
    let details = if with_details {
        unsafe { pgrx::datum::DatumWithOid::new(JsonbDatum(p.event.details), pg_sys::JSONBOID) }
    } else {
        pgrx::datum::DatumWithOid::null_oid(pg_sys::JSONBOID)
    };
    errors::spi(client.update(
        "INSERT INTO herald.event_log (queue, event_id, listener, handler, type, action, outcome, error, details, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        None,
        &[
            queue.into(),
            p.event.id.into(),
            p.event.listener.into(),
            p.handler.as_ref().map(|h| h.1.as_str()).into(),
            p.event.r#type.as_str().into(),
            p.event.action.as_str().into(),
            outcome.into(),
            error.into(),
            details,
            node.into(),
        ],
    ));
}

fn record_status(
    client: &mut pgrx::spi::SpiClient<'_>,
    queue: &str,
    handled: i32,
    failed: i32,
    last_error: Option<&str>,
    held: Option<(i64, i64)>,
    node: Option<&str>,
) {
    errors::spi(client.update(
        "UPDATE herald.event_queue q
            SET handled_count = q.handled_count OPERATOR(pg_catalog.+) $2,
                failed_count = q.failed_count OPERATOR(pg_catalog.+) $3,
                last_error = COALESCE($4, q.last_error),
                last_error_at = CASE WHEN $4 IS NULL THEN q.last_error_at ELSE pg_catalog.now() END,
                held_event = $5,
                held_listener = $6,
                drained_by = COALESCE($7, q.drained_by),
                last_lookup_at = pg_catalog.now()
          WHERE q.name OPERATOR(pg_catalog.=) $1",
        None,
        &[
            queue.into(),
            (handled as i64).into(),
            (failed as i64).into(),
            last_error.into(),
            held.map(|h| h.0).into(),
            held.map(|h| h.1).into(),
            node.into(),
        ],
    ));
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
                "SELECT q.held_event, q.held_listener FROM herald.event_queue q
                  WHERE q.name OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE",
                Some(1),
                &[queue.into()],
            ));
            if held.is_empty() {
                no_such_queue(queue);
            }
            let row = held.first();
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
                   FROM herald.event_queue q
                   LEFT JOIN herald.listener l ON l.id OPERATOR(pg_catalog.=) $3
                   LEFT JOIN (SELECT * FROM gone UNION ALL
                              SELECT * FROM herald.event e2
                               WHERE NOT $5 AND e2.queue OPERATOR(pg_catalog.=) $1
                                 AND e2.id OPERATOR(pg_catalog.=) $2
                                 AND e2.listener OPERATOR(pg_catalog.=) $3) e ON true
                  WHERE q.name OPERATOR(pg_catalog.=) $1",
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
                "UPDATE herald.event_queue q
                    SET held_event = NULL, held_listener = NULL,
                        skipped_count = q.skipped_count OPERATOR(pg_catalog.+) CASE WHEN $2 THEN 1 ELSE 0 END
                  WHERE q.name OPERATOR(pg_catalog.=) $1",
                None,
                &[queue.into(), (action == "skip").into()],
            ));
            true
        })
    })
}

thread_local! {
    static CHECK_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
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
            CHECK_PLAN.with(|cell| {
                let mut cell = cell.borrow_mut();
                if cell.is_none() {
                    // prepare_mut: executed as a non-read-only statement, so each run takes a
                    // fresh snapshot and sees what committed while we slept.
                    let plan = errors::spi(client.prepare_mut(
                        "SELECT COALESCE((
                             SELECT q.event_run OPERATOR(pg_catalog.=) 0
                                 OR (q.held_event IS NULL AND EXISTS (
                                         SELECT 1 FROM herald.event e
                                          WHERE e.queue OPERATOR(pg_catalog.=) q.name))
                               FROM herald.event_queue q
                              WHERE q.name OPERATOR(pg_catalog.=) $1), true)",
                        &[pg_sys::TEXTOID.into()],
                    ));
                    *cell = Some(plan.keep());
                }
                let rows =
                    errors::spi(client.select(cell.as_ref().unwrap(), Some(1), &[queue.into()]));
                errors::spi(rows.first().get::<bool>(1)).unwrap_or(true)
            })
        })
    })
}
