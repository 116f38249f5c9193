//! What the trigger keeps per captured table and backend: the `source` name of its events
//! and, per column, the `to_jsonb` call info for types `json::details` does not convert
//! itself. Forgotten with the listener cache (any DDL on a captured table).
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::json;
use crate::core::catalog;
use crate::core::invalidation;
use crate::listeners::cache;

pub struct Shape {
    pub source: String,
    /// Per attribute: its type, and the `to_jsonb` info when the type needs one.
    pub columns: Vec<(pg_sys::Oid, *mut pg_sys::FmgrInfo)>,
}

thread_local! {
    static SHAPES: RefCell<HashMap<pg_sys::Oid, Rc<Shape>>> = RefCell::new(HashMap::new());
}

/// Hook the shapes into relcache invalidations (from `_PG_init`): they are forgotten
/// whenever the listener cache is.
pub fn init() {
    invalidation::register(|scope| {
        if cache::concerns_listeners(scope) {
            SHAPES.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    s.clear();
                }
            });
        }
    });
}

/// The shape of an open captured table.
///
/// # Safety
/// `rel` is an open relation.
pub unsafe fn of(rel: pg_sys::Relation) -> Rc<Shape> {
    // SAFETY: an open relation's id and tuple descriptor are valid while it is open.
    let (relid, attrs) = unsafe {
        let desc = (*rel).rd_att;
        ((*rel).rd_id, (*desc).attrs.as_slice((*desc).natts as usize))
    };
    if let Some(shape) = SHAPES.with(|s| s.borrow().get(&relid).cloned()) {
        let current = shape.columns.len() == attrs.len()
            && shape
                .columns
                .iter()
                .zip(attrs)
                .all(|(c, a)| c.0 == a.atttypid);
        if current {
            return shape;
        }
    }
    let columns = attrs
        .iter()
        .map(|a| {
            let info = if a.attisdropped || json::converts(a.atttypid) {
                std::ptr::null_mut()
            } else {
                json::to_jsonb_info(a.atttypid)
            };
            (a.atttypid, info)
        })
        .collect();
    let shape = Rc::new(Shape {
        // SAFETY: `rel` is open (the caller's promise).
        source: unsafe { catalog::qualified_name(rel) },
        columns,
    });
    SHAPES.with(|s| s.borrow_mut().insert(relid, shape.clone()));
    shape
}
