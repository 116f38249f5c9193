//! Building `herald.event` values and calling handlers, each in its own subtransaction.
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::catalog;

/// A `jsonb` datum passed through untouched (no parse into serde values). Reading it from
/// SPI copies the varlena into the caller's memory context.
#[derive(Clone, Copy, Debug)]
pub struct JsonbDatum(pub pg_sys::Datum);

impl FromDatum for JsonbDatum {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            None
        } else {
            Some(JsonbDatum(datum))
        }
    }

    unsafe fn from_datum_in_memory_context(
        mut memory_context: pgrx::PgMemoryContexts,
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        Some(memory_context.switch_to(|_| {
            JsonbDatum(pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(
                datum.cast_mut_ptr(),
            )))
        }))
    }
}

impl IntoDatum for JsonbDatum {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// One event as a handler sees it (the row type `herald.event`).
pub struct EventValue {
    pub id: i64,
    pub queue: Option<String>,
    pub r#type: String,
    pub action: String,
    pub source: Option<String>,
    /// A `jsonb` datum, passed through without conversion.
    pub details: pg_sys::Datum,
    pub created_at: pg_sys::TimestampTz,
    pub listener: i64,
}

/// One event on its way to storage or a handler, borrowing its texts (producers build one
/// per event and reuse it for every listener without copying).
#[derive(Clone, Copy)]
pub struct EventRow<'a> {
    pub id: i64,
    pub queue: Option<&'a str>,
    pub r#type: &'a str,
    pub action: &'a str,
    pub source: Option<&'a str>,
    pub details: pg_sys::Datum,
    pub created_at: pg_sys::TimestampTz,
    pub listener: i64,
}

impl<'a> EventRow<'a> {
    /// The same event as delivered to one listener (through `queue`, or directly if None).
    pub fn for_listener(&self, queue: Option<&'a str>, listener: i64) -> EventRow<'a> {
        EventRow {
            queue,
            listener,
            ..*self
        }
    }

    pub fn to_value(self) -> EventValue {
        EventValue {
            id: self.id,
            queue: self.queue.map(str::to_string),
            r#type: self.r#type.to_string(),
            action: self.action.to_string(),
            source: self.source.map(str::to_string),
            details: self.details,
            created_at: self.created_at,
            listener: self.listener,
        }
    }
}

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

    /// The text recorded in `last_error` and the event log.
    pub fn text(&self) -> String {
        match &self.detail {
            Some(d) => format!("{} ({}) DETAIL: {}", self.message, self.sqlstate, d),
            None => format!("{} ({})", self.message, self.sqlstate),
        }
    }
}

impl From<CaughtError> for HandlerError {
    fn from(e: CaughtError) -> Self {
        match e {
            CaughtError::PostgresError(r)
            | CaughtError::ErrorReport(r)
            | CaughtError::RustPanic { ereport: r, .. } => HandlerError {
                sqlstate: sqlstate_text(r.sql_error_code()),
                message: r.message().to_string(),
                detail: r.detail().map(str::to_string),
            },
        }
    }
}

fn sqlstate_text(code: pgrx::PgSqlErrorCode) -> String {
    // Postgres packs the five SQLSTATE characters six bits each.
    let mut v = code as i32;
    let mut s = String::with_capacity(5);
    for _ in 0..5 {
        s.push((((v & 0x3F) as u8) + b'0') as char);
        v >>= 6;
    }
    s
}

thread_local! {
    /// `herald.event`'s tuple descriptor: (type oid, descriptor in TopMemoryContext).
    static EVENT_TUPDESC: std::cell::Cell<Option<(pg_sys::Oid, pg_sys::TupleDesc)>> =
        const { std::cell::Cell::new(None) };
}

/// Forget the cached descriptor (after DDL on herald.event; called from the relcache callback).
pub fn invalidate_tupdesc() {
    EVENT_TUPDESC.with(|c| c.set(None)); // the old copy is leaked once per DDL, deliberately
}

fn event_tupdesc() -> pg_sys::TupleDesc {
    let type_oid = catalog::oids().event_type;
    if let Some((oid, desc)) = EVENT_TUPDESC.with(|c| c.get()) {
        if oid == type_oid {
            return desc;
        }
    }
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

/// Which event field a column of Herald's event tables (or of the `herald.event` row type)
/// holds, matched by name so the code survives columns added by later versions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    Id,
    Queue,
    Type,
    Action,
    Source,
    Details,
    CreatedAt,
    Listener,
    /// A dropped column, or one this version does not know (left NULL).
    None,
}

impl Field {
    pub fn of(att: &pg_sys::FormData_pg_attribute) -> Field {
        if att.attisdropped {
            return Field::None;
        }
        match unsafe { std::ffi::CStr::from_ptr(att.attname.data.as_ptr()) }.to_bytes() {
            b"id" => Field::Id,
            b"queue" => Field::Queue,
            b"type" => Field::Type,
            b"action" => Field::Action,
            b"source" => Field::Source,
            b"details" => Field::Details,
            b"created_at" => Field::CreatedAt,
            b"listener" => Field::Listener,
            _ => Field::None,
        }
    }
}

/// The column values of `e` for a tuple of `herald.event` described by `desc`.
pub unsafe fn event_values(
    e: &EventValue,
    desc: pg_sys::TupleDesc,
) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    let natts = (*desc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0); natts];
    let mut nulls = vec![true; natts];
    for (i, att) in (*desc).attrs.as_slice(natts).iter().enumerate() {
        let value: Option<pg_sys::Datum> = match Field::of(att) {
            Field::Id => e.id.into_datum(),
            Field::Queue => e.queue.as_deref().into_datum(),
            Field::Type => e.r#type.as_str().into_datum(),
            Field::Action => e.action.as_str().into_datum(),
            Field::Source => e.source.as_deref().into_datum(),
            Field::Details => Some(e.details),
            Field::CreatedAt => Some(pg_sys::Datum::from(e.created_at)),
            Field::Listener => e.listener.into_datum(),
            Field::None => None,
        };
        if let Some(v) = value {
            values[i] = v;
            nulls[i] = false;
        }
    }
    (values, nulls)
}

/// Build a `herald.event` composite datum in the current memory context.
pub fn event_datum(e: &EventValue) -> pg_sys::Datum {
    unsafe {
        let tupdesc = event_tupdesc();
        let (mut values, mut nulls) = event_values(e, tupdesc);
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc)
    }
}

/// One handler call to make: the function (None if it no longer exists), its argument,
/// and the role to run it as.
pub struct Call {
    pub handler: Option<pg_sys::Oid>,
    pub event: pg_sys::Datum,
    pub run_as: Option<pg_sys::Oid>,
}

/// Function-call info per handler, kept for one batch of calls so that a handler's own
/// caches (a SQL function's plans live in `fn_extra`) survive from one event to the next.
#[derive(Default)]
pub struct Handlers {
    infos: std::collections::HashMap<pg_sys::Oid, *mut pg_sys::FmgrInfo>,
}

impl Handlers {
    fn info(&mut self, handler: pg_sys::Oid) -> *mut pg_sys::FmgrInfo {
        *self.infos.entry(handler).or_insert_with(|| unsafe {
            let info =
                pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
            pg_sys::fmgr_info(handler, info);
            info
        })
    }
}

/// Run `calls` in order inside one subtransaction. If all succeed their effects stay and
/// `Ok` is returned. If call `k` fails, everything the batch did is rolled back and
/// `Err(k)` is returned: the caller replays `..=k` one by one to learn each outcome.
pub fn call_batch(handlers: &mut Handlers, calls: &[Call]) -> Result<(), usize> {
    let mut reached = 0usize;
    let reached_ptr: *mut usize = &mut reached;
    let handlers_ptr: *mut Handlers = handlers;
    let result = in_subtransaction(move || {
        for (k, call) in calls.iter().enumerate() {
            unsafe { *reached_ptr = k };
            let Some(oid) = call.handler else {
                pgrx::error!("handler missing");
            };
            let info = unsafe { (*handlers_ptr).info(oid) };
            match call.run_as {
                Some(user) => catalog::as_user(user, || unsafe { invoke(info, call.event) }),
                None => unsafe { invoke(info, call.event) },
            }
            unsafe { pg_sys::CommandCounterIncrement() };
        }
    });
    result.map_err(|_| reached)
}

/// Call one handler in its own subtransaction. On error its effects are rolled back and
/// the error is returned; the caller's transaction goes on.
pub fn call_one(handlers: &mut Handlers, call: &Call) -> Result<(), HandlerError> {
    let Some(oid) = call.handler else {
        return Err(HandlerError::new(
            "the listener or its handler function no longer exists",
        ));
    };
    let info = handlers.info(oid);
    let (event, run_as) = (call.event, call.run_as);
    let result = in_subtransaction(move || match run_as {
        Some(user) => catalog::as_user(user, || unsafe { invoke(info, event) }),
        None => unsafe { invoke(info, event) },
    });
    unsafe { pg_sys::CommandCounterIncrement() };
    result
}

/// Call `handler(event)` in a subtransaction with fresh call info (synchronous delivery).
pub fn call_in_subtransaction(
    handler: pg_sys::Oid,
    event: pg_sys::Datum,
    run_as: Option<pg_sys::Oid>,
) -> Result<(), HandlerError> {
    call_one(
        &mut Handlers::default(),
        &Call {
            handler: Some(handler),
            event,
            run_as,
        },
    )
}

/// Call `handler(event)` as `run_as` in the caller's (sub)transaction: an error reaches the
/// caller and rolls back whatever the caller's transaction did (session delivery).
pub fn call_direct(handler: pg_sys::Oid, event: pg_sys::Datum, run_as: pg_sys::Oid) {
    let info = Handlers::default().info(handler);
    catalog::as_user(run_as, || unsafe { invoke(info, event) });
}

/// Run `f` in an internal subtransaction (the way PL/pgSQL runs an EXCEPTION block).
fn in_subtransaction<F: FnOnce()>(f: F) -> Result<(), HandlerError> {
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        let f = std::panic::AssertUnwindSafe(f);
        PgTryBuilder::new(move || {
            f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Ok(())
        })
        .catch_others(move |e| {
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Err(HandlerError::from(e))
        })
        .execute()
    }
}

/// Call a one-argument function through fmgr; its result (possibly NULL) is ignored.
unsafe fn invoke(info: *mut pg_sys::FmgrInfo, arg: pg_sys::Datum) {
    let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
        + std::mem::size_of::<pg_sys::NullableDatum>();
    let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
    (*fcinfo).flinfo = info;
    (*fcinfo).nargs = 1;
    (*fcinfo).fncollation = pg_sys::InvalidOid;
    let args = (*fcinfo).args.as_mut_slice(1);
    args[0] = pg_sys::NullableDatum {
        value: arg,
        isnull: false,
    };
    let fn_addr = (*info).fn_addr.expect("fmgr_info set no function address");
    pg_sys::ffi::pg_guard_ffi_boundary(|| {
        fn_addr(fcinfo);
    });
    pg_sys::pfree(fcinfo as *mut std::ffi::c_void);
}
