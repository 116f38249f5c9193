//! Reading one row of a table by the value of its text primary key, straight through the
//! key's index: no statement, no plan, no executor round. For hot paths that would
//! otherwise run a one-row `SELECT ... WHERE key = $1` per call. And reading the rows of a
//! small table as a dirty snapshot sees them ([`each_dirty`]): with the work of
//! transactions still in progress.
//!
//! The row is read with the latest snapshot, as that `SELECT` run through SPI from the
//! calling statement would read it (READ COMMITTED: what has committed by now, and this
//! transaction's own changes). No privileges or row-level security are checked: callers are
//! the extension's own bookkeeping on its own tables, which runs as their owner anyway.
use pgrx::prelude::*;
use std::ffi::CStr;

use super::relation::OpenTable;

/// The row found, readable column by column while the lookup's closure runs.
pub struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    /// Column `name` of the row (None if NULL). Raises if the table has no such column.
    pub fn get<T: FromDatum>(&self, name: &str) -> Option<T> {
        let attnum = self.attnum(name);
        let mut isnull = false;
        // SAFETY: the tuple and its descriptor stay valid while the closure given to
        // `by_text_key` runs (the scan is open and holds the buffer pin); `attnum` is a
        // live column of that descriptor. `from_datum` copies what it keeps (varlena
        // values are detoasted into the current memory context).
        unsafe {
            let datum = pg_sys::heap_getattr(self.tuple, attnum, self.desc, &mut isnull);
            T::from_datum(datum, isnull)
        }
    }

    fn attnum(&self, name: &str) -> i32 {
        // SAFETY: `desc` is the open table's descriptor; its `natts` attributes are valid.
        unsafe {
            let desc = &*self.desc;
            for i in 0..desc.natts as usize {
                let att = &*desc.attrs.as_ptr().add(i);
                if !att.attisdropped
                    && CStr::from_ptr(att.attname.data.as_ptr()).to_bytes() == name.as_bytes()
                {
                    return i as i32 + 1;
                }
            }
        }
        panic!("column \"{name}\" is missing");
    }
}

/// Look up the row of `table` whose text primary key (one column, `key_column`) equals
/// `key`, and hand it to `f`. None if there is none.
pub fn by_text_key<R>(
    table: pg_sys::Oid,
    key_column: &str,
    key: &str,
    f: impl FnOnce(&Row) -> R,
) -> Option<R> {
    let open = OpenTable::open(table, pg_sys::AccessShareLock);
    let rel = open.rel();
    // SAFETY: the table is open (and locked) for the whole scan; RelationGetIndexList fills
    // its primary key index's oid. The scan key compares `key_column` (a table column
    // number, which systable_beginscan maps to the index's) with `texteq` under the
    // column's collation, which the primary key's index has. The snapshot is the latest
    // (what a read-write query in the statement would read, as SPI takes it), registered
    // for the scan and unregistered after it. The tuple returned is valid until the next
    // getnext or the end of the scan, and `f` (which only reads it through `Row`) runs
    // before either.
    unsafe {
        let probe = Row {
            tuple: std::ptr::null_mut(),
            desc: (*rel).rd_att,
        };
        let attnum = probe.attnum(key_column);
        let collation =
            (*(*rel).rd_att).attrs.as_slice(attnum as usize)[attnum as usize - 1].attcollation;
        pg_sys::RelationGetIndexList(rel);
        let index = (*rel).rd_pkindex;
        if index == pg_sys::InvalidOid {
            panic!("table {table:?} has no primary key");
        }
        let text = pg_sys::cstring_to_text_with_len(key.as_ptr().cast(), key.len() as i32);
        let mut scankey: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyEntryInitialize(
            &mut scankey,
            0,
            attnum as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            collation,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            pg_sys::Datum::from(text),
        );
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
        let scan = pg_sys::systable_beginscan(rel, index, true, snapshot, 1, &mut scankey);
        let tuple = pg_sys::systable_getnext(scan);
        let result = if tuple.is_null() {
            None
        } else {
            Some(f(&Row {
                tuple,
                desc: (*rel).rd_att,
            }))
        };
        pg_sys::systable_endscan(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        result
    }
}

/// Hand every row of `table` whose text column `column` equals `key` (every row, with
/// `key` None) to `f`, as a *dirty* snapshot sees them: what has committed, and what
/// transactions in progress (this one and others) have written so far: a row another
/// transaction is inserting is seen, and so is a row it is deleting (until it commits), so
/// a row it updates is seen twice (old and new version). This is how PostgreSQL's own
/// unique checks see work in progress; callers use it to count what other sessions are
/// doing before they commit, and dedupe by key.
pub fn each_dirty(table: pg_sys::Oid, column: &str, key: Option<&str>, mut f: impl FnMut(&Row)) {
    let open = OpenTable::open(table, pg_sys::AccessShareLock);
    let rel = open.rel();
    // SAFETY: the table is open (and locked) for the whole scan. The dirty snapshot is a
    // local SnapshotData as InitDirtySnapshot makes it (all zero but its type): non-MVCC
    // snapshots are not registered, and the scan only reads it. Without an index the scan
    // is a heap scan whose key (if any) compares the table column `column` with `texteq`
    // under the column's collation. Each tuple is valid until the next getnext or the end
    // of the scan, and `f` (which only reads it through `Row`) runs before either.
    unsafe {
        let probe = Row {
            tuple: std::ptr::null_mut(),
            desc: (*rel).rd_att,
        };
        let mut snapshot: pg_sys::SnapshotData = std::mem::zeroed();
        snapshot.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        let mut scankey: pg_sys::ScanKeyData = std::mem::zeroed();
        let nkeys = match key {
            Some(key) => {
                let attnum = probe.attnum(column);
                let collation = (*(*rel).rd_att).attrs.as_slice(attnum as usize)
                    [attnum as usize - 1]
                    .attcollation;
                let text = pg_sys::cstring_to_text_with_len(key.as_ptr().cast(), key.len() as i32);
                pg_sys::ScanKeyEntryInitialize(
                    &mut scankey,
                    0,
                    attnum as pg_sys::AttrNumber,
                    pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                    pg_sys::InvalidOid,
                    collation,
                    pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                    pg_sys::Datum::from(text),
                );
                1
            }
            None => 0,
        };
        // With a key, through the primary key's index when `column` leads it (no walk over
        // the dead rows a busy small table collects between vacuums).
        let mut index = pg_sys::InvalidOid;
        if nkeys == 1 {
            pg_sys::RelationGetIndexList(rel);
            let pk = (*rel).rd_pkindex;
            if pk != pg_sys::InvalidOid && first_index_column(pk) == probe.attnum(column) {
                index = pk;
            }
        }
        let scan = pg_sys::systable_beginscan(
            rel,
            index,
            index != pg_sys::InvalidOid,
            &mut snapshot,
            nkeys,
            &mut scankey,
        );
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            f(&Row {
                tuple,
                desc: (*rel).rd_att,
            });
        }
        pg_sys::systable_endscan(scan);
    }
}

/// The table column number of the first column of index `index`.
fn first_index_column(index: pg_sys::Oid) -> i32 {
    // SAFETY: opens the index (which exists: it is the primary key of a table open and
    // locked by the caller) with a lock as light as a scan's, reads its first key column
    // from the index's pg_index row, and closes it.
    unsafe {
        let rel = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let attnum = *(*(*rel).rd_index).indkey.values.as_slice(1).as_ptr() as i32;
        pg_sys::index_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        attnum
    }
}
