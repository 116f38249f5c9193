//! Running code in an internal subtransaction, the way PL/pgSQL runs an EXCEPTION block.
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::Cell;

/// What the code in a subtransaction raised.
#[derive(Debug, Clone)]
pub struct Raised {
    pub code: PgSqlErrorCode,
    /// The SQLSTATE as PostgreSQL packs it: `code` only knows the standard ones, and a
    /// handler may raise its own (`RAISE ... USING ERRCODE = 'P1234'`).
    pub sqlstate: i32,
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
                sqlstate: r.sql_error_code() as i32,
                message: r.message().to_string(),
                detail: r.detail().map(str::to_string),
                hint: r.hint().map(str::to_string),
            },
        }
    }
}

thread_local! {
    /// The SQLSTATE of the last error reported while a subtransaction of [`run`] ran.
    static LAST_SQLSTATE: Cell<i32> = const { Cell::new(0) };
}

/// An error context callback: PostgreSQL calls it for every error report while it is on
/// the stack, before the error is thrown, so it sees the SQLSTATE as raised.
unsafe extern "C-unwind" fn record_sqlstate(_arg: *mut std::ffi::c_void) {
    // SAFETY: called by errfinish() while an error is being reported: geterrcode() reads
    // that error's data and never raises.
    let code = unsafe { pg_sys::geterrcode() };
    LAST_SQLSTATE.with(|c| c.set(code));
}

/// Run `f` in an internal subtransaction. If it succeeds its effects stay in the current
/// transaction; if it raises, its effects are rolled back and the error is returned (the
/// caller's transaction goes on).
///
/// A cancel (`pg_cancel_backend`, `statement_timeout`: SQLSTATE 57014) is not the code's
/// failure but the caller's: like PL/pgSQL's `WHEN OTHERS`, this does not catch it. The
/// subtransaction is rolled back and the cancel goes on to abort the caller's statement.
pub fn run<F: FnOnce()>(f: F) -> Result<(), Raised> {
    match catch_all(f) {
        Err(r) if r.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED => {
            super::errors::raise(r.code, r.message, r.hint)
        }
        result => result,
    }
}

/// [`run`], catching cancels too (for tests that expect one).
pub fn catch_all<F: FnOnce()>(f: F) -> Result<(), Raised> {
    // SAFETY: the subtransaction is begun here and, on every path, either released or
    // rolled back here, restoring the caller's memory context and resource owner as
    // PL/pgSQL's exception blocks do; `PgTryBuilder` catches the error raised inside `f`
    // (as a pgrx panic) before it leaves this frame.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        let old_callbacks = pg_sys::error_context_stack;
        // The callback lives in this frame, and is popped on both paths below before the
        // frame ends.
        let mut recorder = pg_sys::ErrorContextCallback {
            previous: old_callbacks,
            callback: Some(record_sqlstate),
            arg: std::ptr::null_mut(),
        };
        let recorder_ptr: *mut pg_sys::ErrorContextCallback = &mut recorder;
        LAST_SQLSTATE.with(|c| c.set(0));
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        pg_sys::error_context_stack = recorder_ptr;
        let f = std::panic::AssertUnwindSafe(f);
        PgTryBuilder::new(move || -> Result<(), Box<Raised>> {
            f();
            pg_sys::error_context_stack = old_callbacks;
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Ok(())
        })
        .catch_others(move |e| {
            pg_sys::error_context_stack = old_callbacks;
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            let mut raised = Raised::from(e);
            // pgrx knows only the standard codes (others become XX000): take the raw one
            // when it is what pgrx made of it.
            let raw = LAST_SQLSTATE.with(|c| c.get());
            if raw != 0 && PgSqlErrorCode::from(raw) == raised.code {
                raised.sqlstate = raw;
            }
            Err(Box::new(raised))
        })
        .execute()
        .map_err(|e| *e)
    }
}

/// Run `f` in an internal subtransaction that is rolled back afterwards whatever happens:
/// what `f` wrote is never kept, but while it runs it is there for others to see through a
/// dirty snapshot (a request in a queue, say), and it vanishes at once when this returns,
/// without waiting for the caller's transaction to end. Returns `f`'s result (which must
/// not point into memory of the subtransaction: plain Rust values). An error raised by `f`
/// goes on to the caller, after the rollback.
pub fn rolled_back<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: as in `catch_all`: the subtransaction begun here is rolled back here on both
    // paths, restoring the caller's memory context and resource owner; on error the
    // caught error is thrown again once the rollback is done.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        let f = std::panic::AssertUnwindSafe(f);
        PgTryBuilder::new(move || {
            let result = f();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            result
        })
        .catch_others(move |e| {
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            e.rethrow()
        })
        .execute()
    }
}
