//! Running code in an internal subtransaction, the way PL/pgSQL runs an EXCEPTION block.
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// What the code in a subtransaction raised.
#[derive(Debug, Clone)]
pub struct Raised {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl From<CaughtError> for Raised {
    fn from(e: CaughtError) -> Self {
        match e {
            CaughtError::PostgresError(r)
            | CaughtError::ErrorReport(r)
            | CaughtError::RustPanic { ereport: r, .. } => Raised {
                code: r.sql_error_code(),
                message: r.message().to_string(),
                detail: r.detail().map(str::to_string),
                hint: r.hint().map(str::to_string),
            },
        }
    }
}

/// Run `f` in an internal subtransaction. If it succeeds its effects stay in the current
/// transaction; if it raises, its effects are rolled back and the error is returned (the
/// caller's transaction goes on).
pub fn run<F: FnOnce()>(f: F) -> Result<(), Raised> {
    // SAFETY: the subtransaction is begun here and, on every path, either released or
    // rolled back here, restoring the caller's memory context and resource owner as
    // PL/pgSQL's exception blocks do; `PgTryBuilder` catches the error raised inside `f`
    // (as a pgrx panic) before it leaves this frame.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        let f = std::panic::AssertUnwindSafe(f);
        PgTryBuilder::new(move || -> Result<(), Box<Raised>> {
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
            Err(Box::new(Raised::from(e)))
        })
        .execute()
        .map_err(|e| *e)
    }
}
