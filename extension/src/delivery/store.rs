//! Inserting event rows into `herald.event` and `herald.session_event` directly: a heap
//! insert plus index entries, without an executor round.
//!
//! This is on every producer's write path (emit and the capture trigger). Both are Herald's
//! own tables: no triggers, rules, policies or constraints beyond their primary key (checked
//! by the unique index insertion) and NOT NULLs (always supplied here). What the executor
//! rebuilds for every statement (which event field goes into which column, matched by name
//! so the code survives columns added by later versions, and the index descriptions) is
//! kept per backend in a [`Layout`].
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::core::catalog;
use crate::core::errors;
use crate::core::ffi;
use crate::core::invalidation::{self, Scope};
use crate::core::relation::OpenTable;
use crate::model::event::{EventRow, Field};

/// Insert one event row into the event table `rel_oid`.
pub fn insert(rel_oid: pg_sys::Oid, row: &EventRow) {
    // Opening the table takes its lock and processes pending invalidations, so the layout
    // looked up next describes the table as it is now.
    let table = OpenTable::open(rel_oid, pg_sys::RowExclusiveLock);
    let layout = Layout::of(&table);
    if layout.plain {
        // SAFETY: `Layout::insert` follows the rules of `ffi::guarded`; `table` stays open
        // across the call and `layout` describes it.
        unsafe { ffi::guarded(|| layout.insert(table.rel(), row)) };
    } else {
        layout.insert_with_statement(table, row);
    }
}

/// How rows of one event table are made.
pub struct Layout {
    fields: Vec<Field>,
    /// Every index is ready and on plain columns (no expressions, predicates or exclusion
    /// constraints): entries can be made from the heap values directly.
    plain: bool,
    indexes: Vec<(pg_sys::Oid, *mut pg_sys::IndexInfo)>,
    /// Where the IndexInfos live; deleted with the layout.
    context: pg_sys::MemoryContext,
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: the context was created for this layout alone, and nothing else points
        // into it once the layout is gone.
        unsafe { pg_sys::MemoryContextDelete(self.context) };
    }
}

thread_local! {
    static LAYOUTS: RefCell<HashMap<pg_sys::Oid, Rc<Layout>>> = RefCell::new(HashMap::new());
}

/// Hook the layout cache into relcache invalidations (from `_PG_init`): a change of the
/// event tables forgets every layout. One still in use is freed when its user is done.
pub fn init() {
    invalidation::register(|scope| {
        if scope == Scope::All {
            let old = LAYOUTS.with(|c| c.try_borrow_mut().map(|mut c| std::mem::take(&mut *c)));
            drop(old);
        }
    });
}

impl Layout {
    /// The layout of an open event table.
    fn of(table: &OpenTable) -> Rc<Layout> {
        let rel = table.rel();
        // SAFETY: an open relation's descriptor is valid while it is open.
        let relid = unsafe { (*rel).rd_id };
        if let Some(layout) = LAYOUTS.with(|c| c.borrow().get(&relid).cloned()) {
            return layout;
        }
        let layout = Rc::new(Layout::build(table));
        LAYOUTS.with(|c| c.borrow_mut().insert(relid, layout.clone()));
        layout
    }

    fn build(table: &OpenTable) -> Layout {
        let rel = table.rel();
        // SAFETY: `rel` is open, so its tuple descriptor and index list are valid; each
        // index is opened and closed here; the IndexInfos are built in a context of their
        // own, which the layout deletes when it goes.
        unsafe {
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
                // (Only btrees: GIN, GiST and BRIN cache state in the IndexInfo that points
                // into the index's relcache entry, which may go while the layout stays.)
                let btree = (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID;
                pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                plain &= btree
                    && (*info).ii_ReadyForInserts
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
    }

    /// The general way, when an index of the table has expressions, a predicate or an
    /// exclusion constraint, or is still being built (someone added it to Herald's table by
    /// hand): an INSERT statement, run as the extension owner.
    fn insert_with_statement(&self, table: OpenTable, row: &EventRow) {
        let rel = table.rel();
        let mut columns = Vec::new();
        let mut args: Vec<pgrx::datum::DatumWithOid> = Vec::new();
        // SAFETY: `rel` is open, its descriptor has `natts` attributes with NUL-terminated
        // names; the values are datums of each field's type (`Field::type_oid`).
        let table_name = unsafe {
            let desc = (*rel).rd_att;
            let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
            for (field, att) in self.fields.iter().zip(attrs) {
                if *field == Field::None {
                    continue;
                }
                let value = row.field(*field, |s| s.into_datum().unwrap_or(pg_sys::Datum::from(0)));
                args.push(pgrx::datum::DatumWithOid::new(value, field.type_oid()));
                columns.push(catalog::quote_ident(std::ffi::CStr::from_ptr(
                    att.attname.data.as_ptr(),
                )));
            }
            catalog::qualified_name(rel)
        };
        // The statement opens the table itself.
        drop(table);
        let placeholders: Vec<String> = (1..=args.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {table_name} ({}) VALUES ({})",
            columns.join(", "),
            placeholders.join(", ")
        );
        catalog::as_owner(|| errors::spi(Spi::run_with_args(&sql, &args)));
    }

    /// Form the row's tuple and insert it with its index entries (unique ones checked).
    ///
    /// # Safety
    /// Inside `ffi::guarded` (see its rules), with `rel` open and described by `self`.
    unsafe fn insert(&self, rel: pg_sys::Relation, row: &EventRow) {
        // SAFETY: the arrays are palloc'd with one slot per attribute; the tuple is formed
        // for `rel`'s own descriptor; each index is opened and closed around its entry, and
        // its key columns are plain attributes (`plain`), so their values are in the arrays;
        // only unguarded functions are called, as `ffi::guarded` requires.
        unsafe {
            let natts = self.fields.len();
            let values =
                ffi::palloc(natts * std::mem::size_of::<pg_sys::Datum>()) as *mut pg_sys::Datum;
            let nulls = ffi::palloc(natts) as *mut bool;
            for (i, field) in self.fields.iter().enumerate() {
                let value = row.field(*field, |s| ffi::text_datum(s));
                *values.add(i) = value.unwrap_or(pg_sys::Datum::from(0));
                *nulls.add(i) = value.is_none();
            }
            let tuple = ffi::heap_form_tuple((*rel).rd_att, values, nulls);
            ffi::simple_heap_insert(rel, tuple);
            for &(oid, info) in &self.indexes {
                let index = ffi::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
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
                ffi::index_insert(
                    index,
                    key_values.as_mut_ptr(),
                    key_nulls.as_mut_ptr(),
                    &mut (*tuple).t_self,
                    rel,
                    check,
                    info,
                );
                ffi::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
            ffi::heap_freetuple(tuple);
        }
    }
}
