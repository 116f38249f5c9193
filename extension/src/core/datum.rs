//! Datum wrappers pgrx does not have.
use pgrx::prelude::*;

/// A `jsonb` datum passed through untouched (no parse into serde values). Reading it from
/// SPI copies the varlena into the caller's memory context.
#[derive(Clone, Copy, Debug)]
pub struct JsonbDatum(pub pg_sys::Datum);

impl FromDatum for JsonbDatum {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            None
        } else {
            Some(JsonbDatum(datum))
        }
    }

    unsafe fn from_datum_in_memory_context(
        mut memory_context: pgrx::PgMemoryContexts,
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: the caller (pgrx's FromDatum contract) passes a valid jsonb datum and a
        // live memory context; the copy is made in that context.
        Some(unsafe {
            memory_context.switch_to(|_| {
                JsonbDatum(pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(
                    datum.cast_mut_ptr(),
                )))
            })
        })
    }
}

impl IntoDatum for JsonbDatum {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}
