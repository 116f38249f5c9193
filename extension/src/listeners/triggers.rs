//! The capture triggers a table gets with its first data listener and loses with its last.
//!
//! The triggers call `herald._capture()` (the events area): this module only manages their
//! existence, as the extension owner.
use pgrx::prelude::*;

use crate::core::catalog;
use crate::core::errors;

/// Create the capture triggers on `tbl` unless they exist (as the extension owner).
pub fn ensure_capture_trigger(tbl: pg_sys::Oid) {
    catalog::as_owner(|| {
        let exists = errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                             WHERE t.tgrelid OPERATOR(pg_catalog.=) $1
                               AND t.tgname OPERATOR(pg_catalog.=) 'herald_capture')",
            &[tbl.into()],
        ));
        if exists != Some(true) {
            let name = regclass_text(tbl);
            errors::spi(Spi::run(&format!(
                "CREATE TRIGGER herald_capture AFTER INSERT OR UPDATE OR DELETE ON {name}
                     FOR EACH ROW EXECUTE FUNCTION herald._capture();
                 CREATE TRIGGER herald_capture_truncate AFTER TRUNCATE ON {name}
                     FOR EACH STATEMENT EXECUTE FUNCTION herald._capture();"
            )));
        }
    });
}

/// Drop the capture triggers of `tbl` if no data listener is left on it.
pub fn drop_if_unused(tbl: pg_sys::Oid) {
    catalog::as_owner(|| {
        let used = errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM herald.listener l
                             WHERE l.tbl::pg_catalog.oid OPERATOR(pg_catalog.=) $1)
                 OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1)",
            &[tbl.into()],
        ));
        if used != Some(true) {
            let name = regclass_text(tbl);
            errors::spi(Spi::run(&format!(
                "DROP TRIGGER IF EXISTS herald_capture ON {name};
                 DROP TRIGGER IF EXISTS herald_capture_truncate ON {name};"
            )));
        }
    });
}

/// As `drop_if_unused`, but never waits for a lock on the table: a session that is
/// ending must not hang behind a long transaction. A trigger left behind costs one cache
/// lookup per row and goes with the next registration's clean-up or removal.
pub fn drop_if_unused_nowait(tbl: pg_sys::Oid) {
    // SAFETY: a conditional lock request on an oid; it never waits and never raises.
    let locked = unsafe {
        pg_sys::ConditionalLockRelationOid(tbl, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE)
    };
    if locked {
        drop_if_unused(tbl);
    }
}

/// The table's name, schema-qualified and quoted as needed.
fn regclass_text(tbl: pg_sys::Oid) -> String {
    errors::spi(Spi::get_one_with_args::<String>(
        "SELECT $1::pg_catalog.regclass::text",
        &[tbl.into()],
    ))
    .unwrap_or_default()
}
