//! Rows of partitions, captured for the listeners of a partitioned table.
//!
//! A partitioned table's capture trigger is cloned onto each of its partitions, and fires
//! there with the partition as its relation. The listeners are those of the table the
//! trigger was created on (the root of the clone's chain of parents), the event's `source`
//! is that table, and the columns each listener asked for, or may not read, are that
//! table's: they are mapped by name onto the partition's columns, whose order and numbers
//! may differ.
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::core::catalog;
use crate::core::errors;
use crate::core::invalidation::{self, Scope};
use crate::model::data::Cols;
use crate::model::listener::DataSource;

/// A partition as seen from the listened table.
pub struct Leaf {
    /// The listened table's name, schema-qualified: the events' `source`.
    pub source: String,
    /// Per column index of the listened table, the partition's column index.
    map: Vec<Option<usize>>,
    /// Columns of the partition that the listened table does not have (none, in practice).
    unmapped: Cols,
}

impl Leaf {
    /// A listener's data source in the partition's column indexes.
    pub fn translate(&self, source: &DataSource) -> DataSource {
        let cols = |of: &Cols| {
            let mut out = Cols::default();
            for (i, j) in self.map.iter().enumerate() {
                if let Some(j) = j {
                    if of.contains(i) {
                        out.insert(*j);
                    }
                }
            }
            out
        };
        let mut hidden = cols(&source.hidden);
        for j in self.unmapped.iter() {
            hidden.insert(j);
        }
        DataSource {
            table: source.table,
            spec: source.spec,
            key: cols(&source.key),
            hidden,
        }
    }
}

thread_local! {
    /// Trigger oid -> the table its chain of clones starts at.
    static ROOTS: RefCell<HashMap<pg_sys::Oid, pg_sys::Oid>> = RefCell::new(HashMap::new());
    /// (listened table, partition) -> the partition as seen from the table.
    static LEAVES: RefCell<HashMap<(pg_sys::Oid, pg_sys::Oid), Rc<Leaf>>> = RefCell::new(HashMap::new());
}

/// Hook the caches into invalidations (from `_PG_init`): a change of either table (columns,
/// names, attach and detach) forgets what was derived from it.
pub fn init() {
    invalidation::register(|scope| {
        let _ = LEAVES.with(|l| {
            l.try_borrow_mut().map(|mut l| match scope {
                Scope::All | Scope::Privileges => l.clear(),
                Scope::Relation(r) => l.retain(|(a, b), _| *a != r && *b != r),
            })
        });
        if scope == Scope::All {
            let _ = ROOTS.with(|r| r.try_borrow_mut().map(|mut r| r.clear()));
        }
    });
}

/// The table whose listeners a firing of `trigger` on `relid` serves: `relid` itself for
/// its own trigger, the table the chain of parents starts at for a clone.
pub fn listened_table(trigger: &pg_sys::Trigger, relid: pg_sys::Oid) -> pg_sys::Oid {
    if !trigger.tgisclone {
        return relid;
    }
    if let Some(root) = ROOTS.with(|r| r.borrow().get(&trigger.tgoid).copied()) {
        return root;
    }
    let root = catalog::as_owner(|| {
        errors::spi(Spi::get_one_with_args::<pg_sys::Oid>(
            "WITH RECURSIVE up AS (
                 SELECT t.tgrelid, t.tgparentid FROM pg_catalog.pg_trigger t
                  WHERE t.oid OPERATOR(pg_catalog.=) $1
                 UNION ALL
                 SELECT p.tgrelid, p.tgparentid FROM pg_catalog.pg_trigger p
                   JOIN up ON p.oid OPERATOR(pg_catalog.=) up.tgparentid)
             SELECT up.tgrelid FROM up WHERE up.tgparentid OPERATOR(pg_catalog.=) 0",
            &[trigger.tgoid.into()],
        ))
    })
    .unwrap_or(relid);
    ROOTS.with(|r| r.borrow_mut().insert(trigger.tgoid, root));
    root
}

/// Partition `leaf` as seen from `listened`.
pub fn leaf(listened: pg_sys::Oid, leaf: pg_sys::Oid) -> Rc<Leaf> {
    if let Some(found) = LEAVES.with(|l| l.borrow().get(&(listened, leaf)).cloned()) {
        return found;
    }
    let (source, pairs, leaf_columns) = catalog::as_owner(|| {
        errors::spi(Spi::connect(|client| {
            let source = client
                .select(
                    "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'
                            OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname)
                       FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                      WHERE c.oid OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[listened.into()],
                )?
                .first()
                .get::<String>(1)?
                .unwrap_or_default();
            let pairs = client
                .select(
                    "SELECT p.attnum::int4, l.attnum::int4
                       FROM pg_catalog.pg_attribute p
                       JOIN pg_catalog.pg_attribute l ON l.attname OPERATOR(pg_catalog.=) p.attname
                      WHERE p.attrelid OPERATOR(pg_catalog.=) $1 AND l.attrelid OPERATOR(pg_catalog.=) $2
                        AND p.attnum OPERATOR(pg_catalog.>) 0 AND l.attnum OPERATOR(pg_catalog.>) 0
                        AND NOT p.attisdropped AND NOT l.attisdropped",
                    None,
                    &[listened.into(), leaf.into()],
                )?
                .map(|row| Ok::<_, pgrx::spi::SpiError>((row.get::<i32>(1)?, row.get::<i32>(2)?)))
                .collect::<Result<Vec<_>, _>>()?;
            let leaf_columns = client
                .select(
                    "SELECT a.attnum::int4 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0
                        AND NOT a.attisdropped",
                    None,
                    &[leaf.into()],
                )?
                .map(|row| row.get::<i32>(1).map(Option::unwrap_or_default))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, pgrx::spi::SpiError>((source, pairs, leaf_columns))
        }))
    });
    let mut map: Vec<Option<usize>> = Vec::new();
    let mut mapped = Cols::default();
    for (p, l) in pairs {
        if let (Some(p), Some(l)) = (p, l) {
            let (i, j) = ((p - 1) as usize, (l - 1) as usize);
            if map.len() <= i {
                map.resize(i + 1, None);
            }
            map[i] = Some(j);
            mapped.insert(j);
        }
    }
    let all = Cols::of(&leaf_columns);
    let found = Rc::new(Leaf {
        source,
        map,
        unmapped: all.minus(&mapped),
    });
    LEAVES.with(|l| l.borrow_mut().insert((listened, leaf), found.clone()));
    found
}
