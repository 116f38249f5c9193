//! One row change seen by the capture trigger, with both rows deformed once, and the
//! `details` each listener's event gets from it.
use pgrx::prelude::*;

use super::json;
use super::shapes::Shape;
use crate::model::data::{Action, Cols};
use crate::model::listener::DataSource;

/// One row change, valid while the trigger call lasts.
pub struct RowChange {
    rel: pg_sys::Relation,
    old: Option<Row>,
    new: Option<Row>,
    /// All live columns of the table.
    all: Cols,
}

/// A deformed row: one value and null flag per attribute.
pub struct Row {
    pub values: Vec<pg_sys::Datum>,
    pub nulls: Vec<bool>,
}

impl Row {
    /// # Safety
    /// `tuple` is a valid tuple described by `desc`.
    unsafe fn deform(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Row {
        // SAFETY: the arrays have one slot per attribute of `desc`, which describes `tuple`
        // (the caller's promise).
        unsafe {
            let natts = (*desc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            Row { values, nulls }
        }
    }
}

impl RowChange {
    /// # Safety
    /// `rel` is the open relation of a row trigger call, and `old`/`new` are that call's
    /// tuples; all stay valid while the `RowChange` is used.
    pub unsafe fn new(
        rel: pg_sys::Relation,
        old: Option<pg_sys::HeapTuple>,
        new: Option<pg_sys::HeapTuple>,
    ) -> RowChange {
        // SAFETY: the caller's promise; the tuples are described by the relation's
        // descriptor.
        unsafe {
            let desc = (*rel).rd_att;
            let mut all = Cols::default();
            for (i, a) in (*desc)
                .attrs
                .as_slice((*desc).natts as usize)
                .iter()
                .enumerate()
            {
                if !a.attisdropped {
                    all.insert(i);
                }
            }
            RowChange {
                rel,
                old: old.map(|t| Row::deform(t, desc)),
                new: new.map(|t| Row::deform(t, desc)),
                all,
            }
        }
    }

    fn desc(&self) -> pg_sys::TupleDesc {
        // SAFETY: `rel` stays open while the RowChange is used (see `new`).
        unsafe { (*self.rel).rd_att }
    }

    /// The `details` of one listener's event, or None when an UPDATE changed nothing it
    /// would see at level 2. Built straight from the deformed rows (see `json`).
    pub fn details(
        &self,
        action: Action,
        level: u8,
        source: &DataSource,
        shape: &Shape,
    ) -> Option<pg_sys::Datum> {
        let visible = self.all.minus(&source.hidden);
        let parts: Vec<(&'static str, &Row, Cols)> = match (action, level) {
            (Action::Truncate, _) => vec![],
            (_, 1) => {
                let row = self.new.as_ref().or(self.old.as_ref())?;
                vec![("key", row, source.key.clone())]
            }
            (Action::Update, 2) => {
                let changed = visible.minus(&self.unchanged_columns());
                if changed.is_empty() {
                    return None;
                }
                vec![
                    ("old", self.old.as_ref()?, changed.clone()),
                    ("new", self.new.as_ref()?, changed),
                ]
            }
            (Action::Update, _) => vec![
                ("old", self.old.as_ref()?, visible.clone()),
                ("new", self.new.as_ref()?, visible),
            ],
            (Action::Insert, _) => vec![("new", self.new.as_ref()?, visible)],
            (Action::Delete, _) => vec![("old", self.old.as_ref()?, visible)],
        };
        let parts: Vec<json::Part<'_>> = parts
            .into_iter()
            .map(|(name, row, cols)| json::Part {
                name,
                values: &row.values,
                nulls: &row.nulls,
                cols,
            })
            .collect();
        // SAFETY: the rows were deformed with this descriptor, and `shape` was made for
        // this table by `shapes::of`.
        Some(unsafe { json::details(self.desc(), &shape.columns, &parts) })
    }

    /// Columns whose old and new values are identical (see `datums_identical`).
    fn unchanged_columns(&self) -> Cols {
        let (Some(old), Some(new)) = (&self.old, &self.new) else {
            return Cols::default();
        };
        let desc = self.desc();
        let mut out = Cols::default();
        // SAFETY: the descriptor is valid (see `desc`) and both rows were deformed with it.
        let attrs = unsafe { (*desc).attrs.as_slice((*desc).natts as usize) };
        for (i, a) in attrs.iter().enumerate() {
            let same = match (old.nulls[i], new.nulls[i]) {
                (true, true) => true,
                (false, false) => {
                    // SAFETY: both values are non-NULL values of attribute `a`.
                    unsafe { datums_identical(old.values[i], new.values[i], a.attbyval, a.attlen) }
                }
                _ => false,
            };
            if same {
                out.insert(i);
            }
        }
        out
    }
}

/// Identity of two attribute values: binary first (as `datumIsEqual`: an unchanged TOASTed
/// value keeps the same toast pointer, so it compares identical without being fetched),
/// then, for variable-length values stored differently, by their contents.
///
/// # Safety
/// `a` and `b` are non-NULL values of one attribute with `byval` and `len`.
unsafe fn datums_identical(a: pg_sys::Datum, b: pg_sys::Datum, byval: bool, len: i16) -> bool {
    if byval {
        return a == b;
    }
    let (pa, pb) = (a.cast_mut_ptr::<u8>(), b.cast_mut_ptr::<u8>());
    let size = |p: *mut u8| -> usize {
        // SAFETY: by-reference values point to a varlena (len -1), a C string (-2) or
        // `len` bytes (the caller's promise).
        unsafe {
            match len {
                -1 => pgrx::varlena::varsize_any(p as *const pg_sys::varlena),
                -2 => {
                    std::ffi::CStr::from_ptr(p as *const std::ffi::c_char)
                        .to_bytes()
                        .len()
                        + 1
                }
                n => n as usize,
            }
        }
    };
    let (sa, sb) = (size(pa), size(pb));
    // SAFETY: each value is `sa`/`sb` bytes long (measured above).
    let same_bytes = sa == sb
        && unsafe { std::slice::from_raw_parts(pa, sa) == std::slice::from_raw_parts(pb, sb) };
    if same_bytes {
        return true;
    }
    if len != -1 {
        return false;
    }
    // The same value may be stored differently: rewritten to itself (`SET big = big || ''`)
    // it gets a new TOAST pointer, or another compression or header. Compare the values:
    // first their raw sizes (no fetch), then their bytes.
    // SAFETY: both are varlena values (len -1); detoasting copies them into the current
    // memory context (the trigger call's), and the copies are read within their sizes.
    unsafe {
        if pg_sys::toast_raw_datum_size(a) != pg_sys::toast_raw_datum_size(b) {
            return false;
        }
        let va = pg_sys::pg_detoast_datum_packed(pa as *mut pg_sys::varlena);
        let vb = pg_sys::pg_detoast_datum_packed(pb as *mut pg_sys::varlena);
        let (la, lb) = (
            pgrx::varlena::varsize_any_exhdr(va),
            pgrx::varlena::varsize_any_exhdr(vb),
        );
        la == lb
            && std::slice::from_raw_parts(pgrx::varlena::vardata_any(va) as *const u8, la)
                == std::slice::from_raw_parts(pgrx::varlena::vardata_any(vb) as *const u8, lb)
    }
}
