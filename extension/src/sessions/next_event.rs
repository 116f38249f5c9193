//! `herald.next_event(listener, timeout, handle)`: the oldest unread event of one of this
//! session's listeners, waiting for one until the timeout.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::core::catalog;
use crate::core::datum::JsonbDatum;
use crate::core::errors::{self, raise};
use crate::core::plans;
use crate::handlers;
use crate::listeners::cache;
use crate::model::event::EventValue;
use crate::model::session::Session;

/// A session listener as `next_event` needs it.
struct Owned {
    /// None when the handler function was dropped.
    handler: Option<pg_sys::Oid>,
    owner: pg_sys::Oid,
}

/// Check that `listener` is a session listener of this session.
fn owned_listener(listener: i64) -> Owned {
    let found = catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = plans::execute(
                client,
                "SELECT l.delivery, l.session_pid, l.session_start, l.handler::pg_catalog.oid,
                        l.owner::pg_catalog.oid, l.queue,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                                 WHERE p.oid OPERATOR(pg_catalog.=) l.handler::pg_catalog.oid)
                   FROM herald.listener l WHERE l.id OPERATOR(pg_catalog.=) $1",
                &[pg_sys::INT8OID],
                &[listener.into_datum()],
            );
            if rows.is_empty() {
                return None;
            }
            Some((
                rows.get::<String>(0, 1).unwrap_or_default(),
                rows.get::<i32>(0, 2),
                rows.get::<pg_sys::TimestampTz>(0, 3),
                rows.get::<pg_sys::Oid>(0, 4).unwrap_or(pg_sys::InvalidOid),
                rows.get::<pg_sys::Oid>(0, 5).unwrap_or(pg_sys::InvalidOid),
                rows.get::<String>(0, 6),
                rows.get::<bool>(0, 7).unwrap_or(false),
            ))
        })
    });
    let Some((delivery, pid, start, handler, owner, queue, handler_exists)) = found else {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("listener {listener} does not exist"),
            Some("SELECT * FROM herald.listener; lists the listeners.".into()),
        );
    };
    if delivery != "session" {
        let how = match queue {
            Some(q) => format!("into queue \"{q}\""),
            None => "synchronously".into(),
        };
        raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("listener {listener} is not a session listener: it delivers {how}"),
            Some(
                "herald.next_event() reads session listeners: register one with neither queue \
                 nor sync, e.g. SELECT herald.add_event_listener('my_handler', 'invoice');"
                    .into(),
            ),
        );
    }
    let me = Session::this();
    if pid != Some(me.pid) || start != Some(me.start) {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "listener {listener} belongs to another session (pid {})",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            ),
            Some("Only the session that registered a session listener can read its events.".into()),
        );
    }
    if let Some(denial) = cache::current()
        .get(listener)
        .and_then(|l| l.denied.clone())
    {
        raise(
            denial.code(),
            format!(
                "events of listener {listener} are withheld: {}",
                denial.message
            ),
            Some(
                "The listener's owner needs the privileges its events need (see \
                 docs/privileges.md), or remove the listener."
                    .into(),
            ),
        );
    }
    Owned {
        handler: handler_exists.then_some(handler),
        owner,
    }
}

/// Take the oldest unread event of `listener`, as a `herald.event` datum allocated in `into`.
fn take_next(listener: i64, into: pg_sys::MemoryContext) -> Option<pg_sys::Datum> {
    catalog::as_owner(|| {
        Spi::connect_mut(|client| {
            let rows = plans::execute(
                client,
                "DELETE FROM herald.session_event e
                  WHERE e.listener OPERATOR(pg_catalog.=) $1
                    AND e.id OPERATOR(pg_catalog.=) (
                        SELECT f.id FROM herald.session_event f
                         WHERE f.listener OPERATOR(pg_catalog.=) $1
                         ORDER BY f.id LIMIT 1)
                 RETURNING e.id, e.type, e.action, e.source, e.details, e.created_at",
                &[pg_sys::INT8OID],
                &[listener.into_datum()],
            );
            if rows.is_empty() {
                return None;
            }
            let value = EventValue {
                id: rows.get::<i64>(0, 1).unwrap_or_default(),
                queue: None,
                r#type: rows.get::<String>(0, 2).unwrap_or_default(),
                action: rows.get::<String>(0, 3).unwrap_or_default(),
                source: rows.get::<String>(0, 4),
                details: rows
                    .get::<JsonbDatum>(0, 5)
                    .map(|d| d.0)
                    .unwrap_or_else(|| pgrx::JsonB(serde_json::json!({})).into_datum().unwrap()),
                created_at: rows.get::<pg_sys::TimestampTz>(0, 6).unwrap_or_default(),
                listener,
            };
            // heap_form_tuple copies every value, so the datum outlives the SPI connection.
            // SAFETY: `into` is the caller's context, alive for the whole call; the switch
            // is undone before anything else runs (event_datum raises only on a broken
            // herald.event, and an error resets the context anyway).
            unsafe {
                let old = pg_sys::MemoryContextSwitchTo(into);
                let datum = handlers::event_datum(&value);
                pg_sys::MemoryContextSwitchTo(old);
                Some(datum)
            }
        })
    })
}

/// Microseconds of an interval, for a timeout (months count as 30 days, as Postgres does).
///
/// # Safety
/// `datum` is a non-NULL `interval` datum.
unsafe fn interval_micros(datum: pg_sys::Datum) -> i64 {
    // SAFETY: an interval datum points to an Interval (pass-by-reference, never TOASTed).
    let iv = unsafe { &*datum.cast_mut_ptr::<pg_sys::Interval>() };
    let days = iv.month as i64 * 30 + iv.day as i64;
    days.saturating_mul(86_400_000_000).saturating_add(iv.time)
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_herald_next_event() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `herald.next_event(listener bigint, timeout interval DEFAULT NULL, handle boolean DEFAULT
/// true) RETURNS herald.event`: the oldest unread event of one of this session's listeners,
/// waiting for one until `timeout` (NULL: no limit) passes. With `handle` the listener's
/// handler runs first, as the listener's owner, in the caller's transaction: if it fails,
/// the error reaches the caller and the event stays unread.
///
/// # Safety
/// Called by the function manager, with a call frame for the SQL signature above.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn herald_next_event(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fmgr passes a valid call frame holding `nargs` arguments.
    let args = unsafe { (*fcinfo).args.as_slice((*fcinfo).nargs as usize) };
    let listener = match args.first() {
        Some(a) if !a.isnull => a.value.value() as i64,
        _ => errors::not_null("listener id"),
    };
    let timeout_us: Option<i64> = match args.get(1) {
        // SAFETY: argument 2 is declared `interval`, and it is not NULL.
        Some(a) if !a.isnull => Some(unsafe { interval_micros(a.value) }),
        _ => None,
    };
    let handle = match args.get(2) {
        Some(a) if !a.isnull => a.value.value() != 0,
        Some(_) => errors::not_null("handle"),
        None => true,
    };
    if let Some(t) = timeout_us {
        if t < 0 {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "timeout must not be negative",
                Some("Pass NULL to wait without a limit, or '0' to only look.".into()),
            );
        }
    }
    catalog::require_primary("herald.next_event()");
    let owned = owned_listener(listener);
    let deadline = timeout_us.map(|t| {
        std::time::Instant::now() + std::time::Duration::from_micros(t.min(i64::MAX / 2) as u64)
    });
    // SAFETY: reads a backend global.
    let result_context = unsafe { pg_sys::CurrentMemoryContext };
    loop {
        // SAFETY: resets this backend's own latch.
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        if let Some(event) = take_next(listener, result_context) {
            if handle {
                let Some(handler) = owned.handler else {
                    raise(
                        Code::ERRCODE_UNDEFINED_FUNCTION,
                        format!("the handler function of listener {listener} no longer exists"),
                        Some(
                            "Read events with handle => false, or remove the listener and \
                             register it again with an existing handler."
                                .into(),
                        ),
                    );
                };
                handlers::call_direct(handler, event, owned.owner);
            }
            return event;
        }
        let wait_ms: std::ffi::c_long = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    // SAFETY: the call frame is valid for the whole call (see above).
                    unsafe { (*fcinfo).isnull = true };
                    return pg_sys::Datum::from(0);
                }
                left.as_millis().clamp(1, i32::MAX as u128) as std::ffi::c_long
            }
            None => -1,
        };
        // SAFETY: reads a backend global.
        if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                "herald.next_event() cannot wait inside a REPEATABLE READ or SERIALIZABLE transaction",
                Some(
                    "Its snapshot would never show new events. Call it in a READ COMMITTED \
                     transaction, or with timeout => '0' to only look."
                        .into(),
                ),
            );
        }
        sleep(wait_ms);
        pg_sys::check_for_interrupts!();
    }
}

/// Sleep until the latch is set, `wait_ms` passes (-1: no limit) or the client goes away. A
/// client that vanished while we wait (killed, or its machine gone) ends the session at once,
/// as the server's own `client_connection_check_interval` would: its listeners must not
/// outlive it until the next event happens to arrive.
fn sleep(wait_ms: std::ffi::c_long) {
    let mut events = pg_sys::WL_LATCH_SET | pg_sys::WL_EXIT_ON_PM_DEATH;
    if wait_ms >= 0 {
        events |= pg_sys::WL_TIMEOUT;
    }
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    // SAFETY: `MyProcPort` is this backend's client connection (null in a background
    // process) and `sock` is the first member of `Port` (libpq/libpq-be.h) in every
    // release; the wait uses this backend's own latch; setting the interrupt flags is what
    // the server's own client-connection check does.
    unsafe {
        if !pg_sys::MyProcPort.is_null() {
            let sock = *(pg_sys::MyProcPort as *const pg_sys::pgsocket);
            let rc = pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                (events | pg_sys::WL_SOCKET_CLOSED) as i32,
                sock,
                wait_ms,
                pg_sys::PG_WAIT_EXTENSION,
            );
            if rc & pg_sys::WL_SOCKET_CLOSED as i32 != 0 {
                // ProcessInterrupts() ends the session with "connection to client lost".
                pg_sys::ClientConnectionLost = 1;
                pg_sys::InterruptPending = 1;
            }
            return;
        }
    }
    // SAFETY: waits on this backend's own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            events as i32,
            wait_ms,
            pg_sys::PG_WAIT_EXTENSION,
        )
    };
}

extension_sql!(
    r#"
CREATE FUNCTION herald.next_event(listener bigint, timeout interval DEFAULT NULL,
                                  handle boolean DEFAULT true)
RETURNS herald.event LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'herald_next_event';
COMMENT ON FUNCTION herald.next_event(bigint, interval, boolean) IS
    'Wait for the next event of one of this session''s listeners (NULL after timeout); '
    'runs its handler when handle is true.';
"#,
    name = "next_event",
    requires = ["events_schema"],
);
