//! The capture triggers a table gets with its first data listener and loses with its last.
//!
//! The triggers call `herald._capture()` (the events area): this module only manages their
//! existence, as the extension owner.
use pgrx::prelude::*;

use crate::core::catalog;
use crate::core::errors;

/// Create the capture triggers on `tbl` unless it has its own (as the extension owner).
///
/// A partitioned table's row trigger is cloned by PostgreSQL onto every partition, present
/// and future (and removed from a partition that is detached); the capture function
/// delivers a clone's rows to the listeners of the table the trigger was created on. So
/// that a partition can have capture triggers of its own next to its parents' clones, the
/// triggers of a partitioned table carry its oid in their names (`herald_capture_<oid>`);
/// other tables' are `herald_capture` and `herald_capture_truncate`.
pub fn ensure_capture_trigger(tbl: pg_sys::Oid) {
    catalog::as_owner(|| {
        let partitioned = errors::spi(Spi::get_one_with_args::<bool>(
            "SELECT c.relkind OPERATOR(pg_catalog.=) 'p' FROM pg_catalog.pg_class c
              WHERE c.oid OPERATOR(pg_catalog.=) $1",
            &[tbl.into()],
        ));
        if own_triggers(tbl).is_empty() {
            let name = regclass_text(tbl);
            let suffix = match partitioned {
                Some(true) => format!("_{}", tbl.to_u32()),
                _ => String::new(),
            };
            errors::spi(Spi::run(&format!(
                "CREATE TRIGGER herald_capture{suffix} AFTER INSERT OR UPDATE OR DELETE ON {name}
                     FOR EACH ROW EXECUTE FUNCTION herald._capture();
                 CREATE TRIGGER herald_capture_truncate{suffix} AFTER TRUNCATE ON {name}
                     FOR EACH STATEMENT EXECUTE FUNCTION herald._capture();"
            )));
        }
    });
}

/// The names of the capture triggers created on `tbl` itself (not clones of a parent's).
fn own_triggers(tbl: pg_sys::Oid) -> Vec<String> {
    errors::spi(Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.quote_ident(t.tgname) FROM pg_catalog.pg_trigger t
                  WHERE t.tgrelid OPERATOR(pg_catalog.=) $1
                    AND t.tgparentid OPERATOR(pg_catalog.=) 0
                    AND t.tgfoid OPERATOR(pg_catalog.=) 'herald._capture()'::pg_catalog.regprocedure",
                None,
                &[tbl.into()],
            )?
            .map(|row| row.get::<String>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
    }))
}

/// Drop the capture triggers of `tbl` if no data listener is left on it. Clones of them on
/// its partitions go with them; a partition's own triggers stay.
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
            for trigger in own_triggers(tbl) {
                errors::spi(Spi::run(&format!("DROP TRIGGER {trigger} ON {name}")));
            }
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
