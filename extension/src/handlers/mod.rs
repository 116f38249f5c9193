//! Calling handlers: a SQL function taking one `herald.event`, run as its listener's owner,
//! alone or in batches, each batch in its own subtransaction.
use pgrx::prelude::*;
use std::cell::Cell;

use crate::core::catalog;
use crate::core::fmgr::{self, Functions};
use crate::core::invalidation::{self, Scope};
use crate::core::subxact::{self, Raised};
use crate::model::event::{EventRow, EventValue, Field};
use crate::model::listener::Denial;

/// What a failing handler raised.
#[derive(Debug, Clone)]
pub struct HandlerError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
}

impl HandlerError {
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            sqlstate: "XX000".into(),
            message: message.into(),
            detail: None,
        }
    }

    /// The listener may not be delivered to now (see [`Denial`]).
    pub fn denied(denial: &Denial) -> Self {
        HandlerError {
            sqlstate: denial.sqlstate.to_string(),
            message: denial.message.clone(),
            detail: None,
        }
    }

    /// The text recorded in `last_error` and the event log.
    pub fn text(&self) -> String {
        match &self.detail {
            Some(d) => format!("{} ({}) DETAIL: {}", self.message, self.sqlstate, d),
            None => format!("{} ({})", self.message, self.sqlstate),
        }
    }
}

impl From<Raised> for HandlerError {
    fn from(r: Raised) -> Self {
        HandlerError {
            sqlstate: sqlstate_text(r.sqlstate),
            message: r.message,
            detail: r.detail,
        }
    }
}

fn sqlstate_text(code: i32) -> String {
    // Postgres packs the five SQLSTATE characters six bits each.
    let mut v = code;
    let mut s = String::with_capacity(5);
    for _ in 0..5 {
        s.push((((v & 0x3F) as u8) + b'0') as char);
        v >>= 6;
    }
    s
}

thread_local! {
    /// `herald.event`'s tuple descriptor: (type oid, descriptor in TopMemoryContext).
    static EVENT_TUPDESC: Cell<Option<(pg_sys::Oid, pg_sys::TupleDesc)>> = const { Cell::new(None) };
}

/// Hook the descriptor cache into relcache invalidations (from `_PG_init`).
pub fn init() {
    invalidation::register(|scope| {
        if scope == Scope::All {
            // The old copy is leaked once per change of herald.event, deliberately: a
            // handler call may still be using it.
            EVENT_TUPDESC.with(|c| c.set(None));
        }
    });
}

fn event_tupdesc() -> pg_sys::TupleDesc {
    let type_oid = catalog::oids().event_type;
    if let Some((oid, desc)) = EVENT_TUPDESC.with(|c| c.get()) {
        if oid == type_oid {
            return desc;
        }
    }
    // SAFETY: the copy is made in TopMemoryContext, so it lives as long as the cache entry;
    // the row type exists (its oid was just looked up).
    let desc = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let desc = pg_sys::lookup_rowtype_tupdesc_copy(type_oid, -1);
        pg_sys::BlessTupleDesc(desc);
        pg_sys::MemoryContextSwitchTo(old);
        desc
    };
    EVENT_TUPDESC.with(|c| c.set(Some((type_oid, desc))));
    desc
}

/// Build a `herald.event` composite datum in the current memory context.
pub fn event_datum(e: &EventValue) -> pg_sys::Datum {
    event_datum_of(&e.as_row())
}

/// Build a `herald.event` composite datum of a borrowed row in the current memory context.
pub fn event_datum_of(row: &EventRow) -> pg_sys::Datum {
    let tupdesc = event_tupdesc();
    // SAFETY: `tupdesc` is a valid, blessed descriptor (cached above); `attrs` has `natts`
    // entries; heap_form_tuple copies every value, and the datum is allocated in the
    // current memory context.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        for (i, att) in (*tupdesc).attrs.as_slice(natts).iter().enumerate() {
            if let Some(v) = row.field(Field::of(att), |s| {
                s.into_datum().unwrap_or(pg_sys::Datum::from(0))
            }) {
                values[i] = v;
                nulls[i] = false;
            }
        }
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc)
    }
}

/// One handler call to make: the function (None if it may not be called, with the reason),
/// its argument, and the role to run it as (the listener's owner).
pub struct Call {
    pub handler: Result<pg_sys::Oid, HandlerError>,
    pub event: pg_sys::Datum,
    pub run_as: pg_sys::Oid,
}

/// Call info per handler, kept for one batch of calls (see [`Functions`]).
pub type Handlers = Functions;

/// Call `info` with `event` as `run_as`, in a security-restricted operation (see
/// [`catalog::as_restricted`]): a handler runs with its owner's rights and nobody else's.
fn invoke(info: *mut pg_sys::FmgrInfo, event: pg_sys::Datum, run_as: pg_sys::Oid) {
    // SAFETY: `info` comes from `Functions::info` for a handler, which takes one
    // `herald.event` (checked at registration and by the listener table's trigger), and
    // `event` is a `herald.event` datum.
    catalog::as_restricted(run_as, || unsafe { fmgr::call1(info, event) })
}

/// Run `calls` in order inside one subtransaction. If all succeed their effects stay and
/// `Ok` is returned. If call `k` fails, everything the batch did is rolled back and
/// `Err(k)` is returned: the caller replays `..=k` one by one to learn each outcome.
pub fn call_batch(handlers: &mut Handlers, calls: &[Call]) -> Result<(), usize> {
    let mut reached = 0usize;
    let result = subxact::run(|| {
        for (k, call) in calls.iter().enumerate() {
            reached = k;
            let Ok(oid) = call.handler else {
                pgrx::error!("handler may not be called");
            };
            invoke(handlers.info(oid), call.event, call.run_as);
            // SAFETY: makes the call's effects visible to the next call, as between
            // statements.
            unsafe { pg_sys::CommandCounterIncrement() };
        }
    });
    result.map_err(|_| reached)
}

/// Call one handler in its own subtransaction. On error its effects are rolled back and
/// the error is returned; the caller's transaction goes on.
pub fn call_one(handlers: &mut Handlers, call: &Call) -> Result<(), HandlerError> {
    let oid = call.handler.clone()?;
    let info = handlers.info(oid);
    let result = subxact::run(|| invoke(info, call.event, call.run_as));
    // SAFETY: as in `call_batch`.
    unsafe { pg_sys::CommandCounterIncrement() };
    result.map_err(HandlerError::from)
}

/// Call `handler(event)` as `run_as` in a subtransaction with fresh call info (synchronous
/// delivery).
pub fn call_in_subtransaction(
    handler: pg_sys::Oid,
    event: pg_sys::Datum,
    run_as: pg_sys::Oid,
) -> Result<(), HandlerError> {
    call_one(
        &mut Handlers::default(),
        &Call {
            handler: Ok(handler),
            event,
            run_as,
        },
    )
}

/// Call `handler(event)` as `run_as` in the caller's (sub)transaction: an error reaches the
/// caller and rolls back whatever the caller's transaction did (session delivery).
pub fn call_direct(handler: pg_sys::Oid, event: pg_sys::Datum, run_as: pg_sys::Oid) {
    let info = Handlers::default().info(handler);
    invoke(info, event, run_as);
}
