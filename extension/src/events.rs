//! `herald.emit`: user events, delivered to their listeners.
//!
//! This is on the application's hot path, so it is a plain C-convention function: the
//! `details` jsonb datum is passed through to storage and handlers untouched (no parse, no
//! re-serialisation), listeners come from the per-backend cache, the insert uses a plan
//! prepared once per backend, and the drainer is woken at commit through its latch.
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use crate::catalog;
use crate::dispatch::{self, EventRow, EventValue};
use crate::errors::{self, raise};
use crate::listeners::{self, Listener, RESERVED_TYPES};
use crate::raw;
use crate::wakeup;

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_herald_emit() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `herald.emit(type text, action text, details jsonb DEFAULT '{}') RETURNS bigint`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn herald_emit(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
    let text_arg = |i: usize, what: &str| -> String {
        let a = args.get(i).copied();
        match a {
            Some(a) if !a.isnull => String::from_datum(a.value, false).unwrap_or_default(),
            _ => errors::not_null(what),
        }
    };
    let r#type = text_arg(0, "event type");
    let action = text_arg(1, "event action");
    let details = match args.get(2) {
        Some(a) if !a.isnull => a.value,
        Some(_) => errors::not_null("event details"),
        None => pgrx::JsonB(serde_json::json!({})).into_datum().unwrap(),
    };
    if r#type.trim().is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "event type must not be empty",
            None,
        );
    }
    if action.trim().is_empty() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "event action must not be empty",
            None,
        );
    }
    if RESERVED_TYPES.contains(&r#type.as_str()) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "event type \"{}\" is reserved for Herald's own events",
                r#type
            ),
            Some("Choose another type name for user events, e.g. 'invoice'.".into()),
        );
    }
    let id = emit(&r#type, &action, details);
    pg_sys::Datum::from(id)
}

/// Deliver one user event to every listener of its type; returns the event id.
pub fn emit(r#type: &str, action: &str, details: pg_sys::Datum) -> i64 {
    let oids = catalog::oids();
    let listeners = listeners::current().matching(r#type);
    if listeners.iter().any(|l| l.queue.is_some()) {
        // The transaction id comes before the event id: drainers rely on it to know when no
        // smaller event id can appear any more (see queues::next_floor).
        unsafe { pg_sys::GetTopTransactionId() };
    }
    let id = unsafe { nextval_internal(oids.event_seq, false) };
    if listeners.is_empty() {
        return id;
    }
    let source = catalog::role_name(catalog::current_user());
    let event = EventRow {
        id,
        queue: None,
        r#type,
        action,
        source: Some(&source),
        details,
        created_at: unsafe { pg_sys::GetCurrentTransactionStartTimestamp() },
        listener: 0,
    };
    // Stored deliveries first, then synchronous handlers (which may emit events themselves).
    for l in listeners.iter().filter(|l| !l.sync) {
        deliver(&event, l);
    }
    for l in listeners.iter().filter(|l| l.sync) {
        deliver_sync(&event, l);
    }
    id
}

/// Deliver one event to one listener, the way the listener asked for.
pub fn deliver(event: &EventRow, l: &Listener) {
    if l.queue.is_some() {
        enqueue(event, l);
    } else if l.sync {
        deliver_sync(event, l);
    } else if let Some(pid) = l.session_pid {
        to_session(event, l, pid);
    }
}

/// A new event id. The caller's transaction must already have its xid (see `emit`).
pub fn next_event_id() -> i64 {
    unsafe { nextval_internal(catalog::oids().event_seq, false) }
}

/// Persist the event into the listener's queue and wake the queue's drainer at commit.
pub fn enqueue(event: &EventRow, l: &Listener) {
    let row = event.for_listener(l.queue.as_deref(), l.id);
    insert_row(catalog::oids().event_rel, &row);
    if let (Some(queue_id), true) = (l.queue_id, l.queue_running) {
        wakeup::wake_at_commit(queue_id);
    }
}

/// Store the event for a session listener and wake its session at commit.
fn to_session(event: &EventRow, l: &Listener, pid: i32) {
    let row = event.for_listener(None, l.id);
    insert_row(catalog::oids().session_event_rel, &row);
    wakeup::wake_backend_at_commit(pid);
}

/// Insert one row into `herald.event` or `herald.session_event` directly: heap insert plus
/// index entries, without an executor round. This is on every producer's write path (emit
/// and the capture trigger), and both are Herald's own tables: no triggers, rules, policies
/// or constraints beyond their primary key (checked by the unique index insertion) and NOT
/// NULLs (always supplied here).
fn insert_row(rel_oid: pg_sys::Oid, row: &EventRow) {
    unsafe {
        // Opening the table takes its lock and processes pending invalidations, so the
        // layout looked up next describes the table as it is now.
        let rel = pg_sys::table_open(rel_oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let layout = layout::of(rel);
        if layout.plain {
            raw::guarded(|| layout.insert(rel, row));
        } else {
            layout.insert_with_statement(rel, row);
        }
    }
}

/// How rows of Herald's event tables are made: which event field goes into which column
/// (matched by name, so the code survives columns added by later versions) and the index
/// descriptions (what the executor rebuilds for every statement), kept per backend.
pub mod layout {
    use pgrx::prelude::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use crate::dispatch::{EventRow, Field, JsonbDatum};
    use crate::raw;

    pub struct Layout {
        fields: Vec<Field>,
        /// Every index is ready and on plain columns (no expressions, predicates or
        /// exclusion constraints): entries can be made from the heap values directly.
        pub plain: bool,
        indexes: Vec<(pg_sys::Oid, *mut pg_sys::IndexInfo)>,
        /// Where the IndexInfos live; deleted with the layout.
        context: pg_sys::MemoryContext,
    }

    impl Drop for Layout {
        fn drop(&mut self) {
            unsafe { pg_sys::MemoryContextDelete(self.context) };
        }
    }

    thread_local! {
        static CACHE: RefCell<HashMap<pg_sys::Oid, Rc<Layout>>> = RefCell::new(HashMap::new());
    }

    /// Forget every layout (relcache callback; never raises). One still in use is freed
    /// when its user is done with it.
    pub fn invalidate() {
        let old = CACHE.with(|c| c.try_borrow_mut().map(|mut c| std::mem::take(&mut *c)));
        drop(old);
    }

    /// The layout of an open event table.
    pub unsafe fn of(rel: pg_sys::Relation) -> Rc<Layout> {
        let relid = (*rel).rd_id;
        if let Some(layout) = CACHE.with(|c| c.borrow().get(&relid).cloned()) {
            return layout;
        }
        let layout = Rc::new(build(rel));
        CACHE.with(|c| c.borrow_mut().insert(relid, layout.clone()));
        layout
    }

    unsafe fn build(rel: pg_sys::Relation) -> Layout {
        let desc = (*rel).rd_att;
        let fields = (*desc)
            .attrs
            .as_slice((*desc).natts as usize)
            .iter()
            .map(Field::of)
            .collect();
        let context = pg_sys::AllocSetContextCreateExtended(
            pg_sys::TopMemoryContext,
            c"herald event table layout".as_ptr(),
            pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
            pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
            pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
        );
        let oids = pg_sys::RelationGetIndexList(rel);
        let n = if oids.is_null() {
            0
        } else {
            (*oids).length as usize
        };
        let mut indexes = Vec::with_capacity(n);
        let mut plain = true;
        for i in 0..n {
            let oid = (*(*oids).elements.add(i)).oid_value;
            let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let old = pg_sys::MemoryContextSwitchTo(context);
            let info = pg_sys::BuildIndexInfo(index);
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            plain &= (*info).ii_ReadyForInserts
                && (*info).ii_Expressions.is_null()
                && (*info).ii_Predicate.is_null()
                && (*info).ii_ExclusionOps.is_null();
            indexes.push((oid, info));
        }
        Layout {
            fields,
            plain,
            indexes,
            context,
        }
    }

    impl Layout {
        /// The general way, when an index of the table has expressions, a predicate or an
        /// exclusion constraint, or is still being built (someone added it to Herald's
        /// table by hand): an INSERT statement, run as the extension owner. Closes `rel`.
        pub unsafe fn insert_with_statement(&self, rel: pg_sys::Relation, row: &EventRow) {
            let desc = (*rel).rd_att;
            let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
            let mut columns = Vec::new();
            let mut args: Vec<pgrx::datum::DatumWithOid> = Vec::new();
            for (field, att) in self.fields.iter().zip(attrs) {
                let arg: pgrx::datum::DatumWithOid = match field {
                    Field::Id => row.id.into(),
                    Field::Queue => row.queue.into(),
                    Field::Type => row.r#type.into(),
                    Field::Action => row.action.into(),
                    Field::Source => row.source.into(),
                    Field::Details => JsonbDatum(row.details).into(),
                    Field::CreatedAt => pgrx::datum::DatumWithOid::new(
                        pg_sys::Datum::from(row.created_at),
                        pg_sys::TIMESTAMPTZOID,
                    ),
                    Field::Listener => row.listener.into(),
                    Field::None => continue,
                };
                columns.push(crate::catalog::quote_ident(std::ffi::CStr::from_ptr(
                    att.attname.data.as_ptr(),
                )));
                args.push(arg);
            }
            let table = crate::catalog::qualified_name(rel);
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            let placeholders: Vec<String> = (1..=args.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                columns.join(", "),
                placeholders.join(", ")
            );
            crate::catalog::as_owner(|| crate::errors::spi(Spi::run_with_args(&sql, &args)));
        }

        /// Form the row's tuple and insert it with its index entries (unique ones checked).
        ///
        /// # Safety
        /// Inside `raw::guarded` (see its rules), with `rel` opened by the caller; closes it.
        pub unsafe fn insert(&self, rel: pg_sys::Relation, row: &EventRow) {
            unsafe {
                let natts = self.fields.len();
                let values =
                    raw::palloc(natts * std::mem::size_of::<pg_sys::Datum>()) as *mut pg_sys::Datum;
                let nulls = raw::palloc(natts) as *mut bool;
                for (i, field) in self.fields.iter().enumerate() {
                    let value = match field {
                        Field::Id => Some(pg_sys::Datum::from(row.id)),
                        Field::Queue => row.queue.map(|q| raw::text_datum(q)),
                        Field::Type => Some(raw::text_datum(row.r#type)),
                        Field::Action => Some(raw::text_datum(row.action)),
                        Field::Source => row.source.map(|s| raw::text_datum(s)),
                        Field::Details => Some(row.details),
                        Field::CreatedAt => Some(pg_sys::Datum::from(row.created_at)),
                        Field::Listener => Some(pg_sys::Datum::from(row.listener)),
                        Field::None => None,
                    };
                    *values.add(i) = value.unwrap_or(pg_sys::Datum::from(0));
                    *nulls.add(i) = value.is_none();
                }
                let tuple = raw::heap_form_tuple((*rel).rd_att, values, nulls);
                raw::simple_heap_insert(rel, tuple);
                for &(oid, info) in &self.indexes {
                    let index = raw::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                    let nkeys = (*info).ii_NumIndexAttrs as usize;
                    let mut key_values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
                    let mut key_nulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
                    for k in 0..nkeys {
                        let attno = (*info).ii_IndexAttrNumbers[k] as usize;
                        key_values[k] = *values.add(attno - 1);
                        key_nulls[k] = *nulls.add(attno - 1);
                    }
                    let check = if (*(*index).rd_index).indisunique {
                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                    } else {
                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                    };
                    raw::index_insert(
                        index,
                        key_values.as_mut_ptr(),
                        key_nulls.as_mut_ptr(),
                        &mut (*tuple).t_self,
                        rel,
                        check,
                        info,
                    );
                    raw::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                }
                raw::heap_freetuple(tuple);
                raw::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
        }
    }
}

/// Run a synchronous listener's handler in the producing transaction, in a subtransaction:
/// a failing handler is reported as a WARNING and logged, and the producer goes on.
pub fn deliver_sync(event: &EventRow, l: &Listener) {
    let value = event.for_listener(None, l.id).to_value();
    let datum = dispatch::event_datum(&value);
    if let Err(e) = dispatch::call_in_subtransaction(l.handler, datum, None) {
        errors::warning(
            format!(
                "herald: handler of listener {} failed on event {}: {}",
                l.id, event.id, e.message
            ),
            e.detail.clone(),
        );
        log_sync_failure(&value, l, &e.text());
    }
}

fn log_sync_failure(event: &EventValue, l: &Listener, error: &str) {
    catalog::as_owner(|| {
        errors::spi(Spi::run_with_args(
            "INSERT INTO herald.event_log (queue, event_id, listener, handler, type, action, outcome, error)
             VALUES (NULL, $1, $2, $3::pg_catalog.oid::pg_catalog.regprocedure::text, $4, $5, 'failed', $6)",
            &[
                event.id.into(),
                l.id.into(),
                l.handler.into(),
                event.r#type.as_str().into(),
                event.action.as_str().into(),
                error.into(),
            ],
        ))
    });
}

unsafe extern "C-unwind" {
    #[link_name = "nextval_internal"]
    fn nextval_internal_raw(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// `nextval()` without the fmgr detour; errors (sequence exhausted) are raised safely.
unsafe fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64 {
    pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal_raw(relid, check_permissions))
}

extension_sql!(
    r#"
CREATE FUNCTION herald.emit(type text, action text, details jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'herald_emit';
COMMENT ON FUNCTION herald.emit(text, text, jsonb) IS
    'Emit a user event to every listener of its type; returns the event id.';
"#,
    name = "emit",
    requires = ["schema"],
);
