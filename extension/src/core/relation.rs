//! Opened relations that close themselves.
use pgrx::prelude::*;

/// A table opened with `table_open`, closed (keeping its lock until the transaction ends)
/// when dropped.
pub struct OpenTable {
    rel: pg_sys::Relation,
}

impl OpenTable {
    /// Open table `oid`, taking `lockmode`. Raises if it does not exist.
    pub fn open(oid: pg_sys::Oid, lockmode: u32) -> OpenTable {
        // SAFETY: table_open raises (through pgrx's boundary) instead of returning an invalid
        // relation; the reference it returns is ours until `drop` closes it.
        let rel = unsafe { pg_sys::table_open(oid, lockmode as pg_sys::LOCKMODE) };
        OpenTable { rel }
    }

    /// The open relation; valid as long as `self` lives.
    pub fn rel(&self) -> pg_sys::Relation {
        self.rel
    }
}

impl Drop for OpenTable {
    fn drop(&mut self) {
        // While unwinding from an error the transaction is being aborted, and the abort
        // releases the relation reference itself: calling into PostgreSQL then could raise
        // again, so leave it to the abort.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: `rel` was opened by `open` and is closed exactly once, here; NoLock keeps
        // the lock until the end of the transaction, as PostgreSQL does for tables it writes.
        unsafe { pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE) };
    }
}
