//! Direct calls into PostgreSQL for the producer hot paths (the capture trigger and
//! `herald.emit`), inside one error boundary per step, and the few server functions pgrx
//! does not bind.
//!
//! pgrx wraps every PostgreSQL function it binds in an error boundary of its own (a
//! `sigsetjmp`, a thread check and the save and restore of PostgreSQL's error stacks), so
//! that an `ERROR` raised in C becomes a Rust panic. That costs little once, but building
//! an event's `details` and inserting its row took about thirty such calls per event, on
//! the write path of every captured table. Code here makes a whole step one boundary:
//! [`guarded`] runs a closure under pgrx's boundary, and the closure calls the unguarded
//! functions declared below.
//!
//! Rules for code running inside [`guarded`] (an `ERROR` longjmps straight back to the
//! boundary, over every Rust frame in between):
//! - no value with a destructor may be alive across a call into PostgreSQL (borrow, use
//!   and drop a `RefCell` or cache entry between calls, never across one);
//! - it must not panic, and must not call pgrx-wrapped functions (whose errors panic);
//! - memory comes from `palloc`, in the caller's memory context.
use pgrx::pg_sys;

/// Run `f` inside one PostgreSQL error boundary: an `ERROR` raised by a direct call in `f`
/// ends up as a pgrx error in the caller, exactly as with pgrx's own wrappers.
///
/// # Safety
/// `f` must follow the rules in the module documentation.
#[inline]
pub unsafe fn guarded<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the caller promises that `f` keeps no destructor alive across a call that may
    // longjmp, does not panic and calls no pgrx-wrapped function (the module's rules), which
    // is what `pg_guard_ffi_boundary` requires of its closure.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(f) }
}

// The signatures are those of PostgreSQL 13 to 17 (checked against pgrx's bindings).
unsafe extern "C-unwind" {
    pub fn palloc(size: usize) -> *mut std::ffi::c_void;
    pub fn palloc0(size: usize) -> *mut std::ffi::c_void;
    pub fn cstring_to_text_with_len(s: *const std::ffi::c_char, len: i32) -> *mut pg_sys::text;
    pub fn index_open(relid: pg_sys::Oid, lockmode: pg_sys::LOCKMODE) -> pg_sys::Relation;
    pub fn index_close(rel: pg_sys::Relation, lockmode: pg_sys::LOCKMODE);
    pub fn heap_form_tuple(
        desc: pg_sys::TupleDesc,
        values: *mut pg_sys::Datum,
        isnull: *mut bool,
    ) -> pg_sys::HeapTuple;
    pub fn heap_freetuple(tuple: pg_sys::HeapTuple);
    pub fn simple_heap_insert(rel: pg_sys::Relation, tuple: pg_sys::HeapTuple);
    #[cfg(feature = "pg13")]
    #[link_name = "index_insert"]
    fn index_insert_13(
        index: pg_sys::Relation,
        values: *mut pg_sys::Datum,
        isnull: *mut bool,
        tid: pg_sys::ItemPointer,
        heap: pg_sys::Relation,
        check: pg_sys::IndexUniqueCheck::Type,
        info: *mut pg_sys::IndexInfo,
    ) -> bool;
    #[cfg(not(feature = "pg13"))]
    #[link_name = "index_insert"]
    fn index_insert_14(
        index: pg_sys::Relation,
        values: *mut pg_sys::Datum,
        isnull: *mut bool,
        tid: pg_sys::ItemPointer,
        heap: pg_sys::Relation,
        check: pg_sys::IndexUniqueCheck::Type,
        unchanged: bool,
        info: *mut pg_sys::IndexInfo,
    ) -> bool;
    pub fn pushJsonbValue(
        state: *mut *mut pg_sys::JsonbParseState,
        token: pg_sys::JsonbIteratorToken::Type,
        value: *mut pg_sys::JsonbValue,
    ) -> *mut pg_sys::JsonbValue;
    pub fn JsonbValueToJsonb(value: *mut pg_sys::JsonbValue) -> *mut pg_sys::Jsonb;
    #[cfg(not(feature = "pg13"))]
    pub fn int64_to_numeric(value: i64) -> pg_sys::Numeric;
    #[cfg(not(feature = "pg13"))]
    pub fn numeric_is_inf(n: pg_sys::Numeric) -> bool;
    pub fn numeric_is_nan(n: pg_sys::Numeric) -> bool;
    pub fn pg_detoast_datum(datum: *mut pg_sys::varlena) -> *mut pg_sys::varlena;
    pub fn pg_detoast_datum_packed(datum: *mut pg_sys::varlena) -> *mut pg_sys::varlena;
    #[link_name = "nextval_internal"]
    fn nextval_internal_unguarded(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

// Not in pgrx's bindings; exported by the server (storage/sinvaladt.h) in PG 13-16.
// It only reads shared memory under a lock and never raises.
#[cfg(not(feature = "pg17"))]
unsafe extern "C" {
    fn BackendIdGetProc(backend_id: std::ffi::c_int) -> *mut pg_sys::PGPROC;
}

/// `nextval()` of a sequence without the fmgr detour (no permission check: the caller
/// decides who may allocate). An error (sequence exhausted) is raised safely.
pub fn nextval(relid: pg_sys::Oid) -> i64 {
    // SAFETY: the closure only calls `nextval_internal`, which takes plain values and holds
    // no Rust value with a destructor across the call.
    unsafe { guarded(|| nextval_internal_unguarded(relid, false)) }
}

/// The PGPROC of the backend a virtual transaction id belongs to, or null if it is gone.
///
/// # Safety
/// Call from a backend attached to shared memory (any normal backend).
pub unsafe fn proc_of(vxid: &pg_sys::VirtualTransactionId) -> *mut pg_sys::PGPROC {
    // SAFETY: both lookups only read the proc array under its lock and never raise.
    #[cfg(not(feature = "pg17"))]
    unsafe {
        BackendIdGetProc(vxid.backendId)
    }
    // SAFETY: as above.
    #[cfg(feature = "pg17")]
    unsafe {
        pg_sys::ProcNumberGetProc(vxid.procNumber)
    }
}

/// `index_insert` (new index entry for a fresh heap tuple; `indexUnchanged` is false).
///
/// # Safety
/// As `index_insert`: open `index` and `heap`, `values` and `isnull` with one entry per
/// index column, `tid` of the tuple just inserted, `info` built for this index; inside
/// [`guarded`].
pub unsafe fn index_insert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    tid: pg_sys::ItemPointer,
    heap: pg_sys::Relation,
    check: pg_sys::IndexUniqueCheck::Type,
    info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: the caller upholds `index_insert`'s contract (see above).
    #[cfg(feature = "pg13")]
    unsafe {
        index_insert_13(index, values, isnull, tid, heap, check, info)
    }
    // SAFETY: as above.
    #[cfg(not(feature = "pg13"))]
    unsafe {
        index_insert_14(index, values, isnull, tid, heap, check, false, info)
    }
}

/// A `text` datum copied from `s` (palloc'd in the current memory context).
///
/// # Safety
/// Inside [`guarded`] (an out-of-memory error longjmps).
#[inline]
pub unsafe fn text_datum(s: &str) -> pg_sys::Datum {
    // SAFETY: `s` is valid for `s.len()` bytes; the function copies them and keeps nothing.
    unsafe {
        pg_sys::Datum::from(cstring_to_text_with_len(
            s.as_ptr() as *const std::ffi::c_char,
            s.len() as i32,
        ))
    }
}

// Not in pgrx's bindings (utils/timeout.h); exported by the server. `STATEMENT_TIMEOUT` is
// the fourth timeout reason in PostgreSQL 13 to 17. None of these raises.
const STATEMENT_TIMEOUT: std::ffi::c_int = 3;
unsafe extern "C" {
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    fn enable_timeout_at(id: std::ffi::c_int, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: std::ffi::c_int, keep_indicator: bool);
    fn get_timeout_active(id: std::ffi::c_int) -> bool;
    fn get_timeout_finish_time(id: std::ffi::c_int) -> pg_sys::TimestampTz;
}

/// The statement timeout that was armed before [`arm_statement_timeout`], to put back.
pub struct ArmedTimeout {
    outer: Option<pg_sys::TimestampTz>,
}

/// Arm the statement timeout to fire in `delay_ms` (or when the one already armed for the
/// running statement fires, if sooner): a query run from here is cancelled then with
/// "canceling statement due to statement timeout", as if the caller had set
/// `statement_timeout`. Put the outer one back with [`restore_statement_timeout`].
pub fn arm_statement_timeout(delay_ms: i32) -> ArmedTimeout {
    // SAFETY: the timeout module's own bookkeeping, in this backend; nothing raises.
    unsafe {
        let outer = get_timeout_active(STATEMENT_TIMEOUT)
            .then(|| get_timeout_finish_time(STATEMENT_TIMEOUT));
        let fires = pg_sys::GetCurrentTimestamp() + delay_ms.max(1) as i64 * 1000;
        match outer {
            Some(at) if at <= fires => {}
            _ => enable_timeout_after(STATEMENT_TIMEOUT, delay_ms.max(1)),
        }
        ArmedTimeout { outer }
    }
}

/// Disarm what [`arm_statement_timeout`] armed and re-arm the outer timeout, if any.
pub fn restore_statement_timeout(armed: ArmedTimeout) {
    // SAFETY: as above.
    unsafe {
        disable_timeout(STATEMENT_TIMEOUT, false);
        if let Some(at) = armed.outer {
            enable_timeout_at(STATEMENT_TIMEOUT, at);
        }
    }
}
