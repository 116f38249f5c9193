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

/// Build a `herald.event` composite datum in the current memory context.
pub fn event_datum(e: &EventValue) -> pg_sys::Datum {
    let type_oid = catalog::oids().event_type;
    unsafe {
        let tupdesc = pg_sys::lookup_rowtype_tupdesc_copy(type_oid, -1);
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let attrs = (*tupdesc).attrs.as_slice(natts);
        for (i, att) in attrs.iter().enumerate() {
            if att.attisdropped {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(att.attname.data.as_ptr()).to_bytes();
            let value: Option<pg_sys::Datum> = match name {
                b"id" => e.id.into_datum(),
                b"queue" => e.queue.as_deref().into_datum(),
                b"type" => e.r#type.as_str().into_datum(),
                b"action" => e.action.as_str().into_datum(),
                b"source" => e.source.as_deref().into_datum(),
                b"details" => Some(e.details),
                b"created_at" => Some(pg_sys::Datum::from(e.created_at)),
                b"listener" => e.listener.into_datum(),
                _ => None,
            };
            if let Some(v) = value {
                values[i] = v;
                nulls[i] = false;
            }
        }
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::Datum::from(pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc))
    }
}

/// Call `handler(event)` in a subtransaction, as `run_as` when given.
///
/// On success the handler's effects stay in the current transaction; on error they are
/// rolled back and the error is returned, and the caller's transaction goes on.
pub fn call_in_subtransaction(
    handler: pg_sys::Oid,
    event: pg_sys::Datum,
    run_as: Option<pg_sys::Oid>,
) -> Result<(), HandlerError> {
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);

        let result = PgTryBuilder::new(move || {
            match run_as {
                Some(user) => catalog::as_user(user, || invoke(handler, event)),
                None => invoke(handler, event),
            }
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
        .execute();
        // Make the handler's effects visible to what follows (the next handler, our bookkeeping).
        pg_sys::CommandCounterIncrement();
        result
    }
}

/// Call a one-argument function through fmgr; its result (possibly NULL) is ignored.
unsafe fn invoke(handler: pg_sys::Oid, arg: pg_sys::Datum) {
    let mut flinfo: pg_sys::FmgrInfo = std::mem::zeroed();
    pg_sys::fmgr_info(handler, &mut flinfo);
    let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
        + std::mem::size_of::<pg_sys::NullableDatum>();
    let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
    (*fcinfo).flinfo = &mut flinfo;
    (*fcinfo).nargs = 1;
    (*fcinfo).fncollation = pg_sys::InvalidOid;
    let args = (*fcinfo).args.as_mut_slice(1);
    args[0] = pg_sys::NullableDatum {
        value: arg,
        isnull: false,
    };
    let fn_addr = flinfo.fn_addr.expect("fmgr_info set no function address");
    pg_sys::ffi::pg_guard_ffi_boundary(|| {
        fn_addr(fcinfo);
    });
    pg_sys::pfree(fcinfo as *mut std::ffi::c_void);
}
