//! Building `details` jsonb without SPI and without going through a record: the trigger
//! pushes each column's value straight into a jsonb builder. Common scalar types are
//! converted here, exactly as `to_jsonb` converts them; every other type goes through
//! `to_jsonb(value)` called with fmgr.
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

use crate::core::ffi;
use crate::core::fmgr;
use crate::model::data::Cols;

/// One object of `details`: `name` with the `cols` of one row.
pub struct Part<'a> {
    pub name: &'static str,
    pub values: &'a [pg_sys::Datum],
    pub nulls: &'a [bool],
    pub cols: Cols,
}

/// Per attribute of a table: its type, and the `to_jsonb` call info when `scalar` does not
/// convert the type itself (see `shapes`).
pub type Converters = [(pg_sys::Oid, *mut pg_sys::FmgrInfo)];
use pg_sys::JsonbIteratorToken::{WJB_BEGIN_OBJECT, WJB_END_OBJECT, WJB_KEY, WJB_VALUE};

thread_local! {
    /// `to_jsonb` call info per value type (kept for the backend's life).
    static TO_JSONB: RefCell<HashMap<pg_sys::Oid, *mut pg_sys::FmgrInfo>> = RefCell::new(HashMap::new());
}

/// Does `scalar` convert values of this type itself (always, or in the common case:
/// numeric NaN and infinities still go through `to_jsonb`)?
pub fn converts(type_oid: pg_sys::Oid) -> bool {
    #[cfg(not(feature = "pg13"))]
    if matches!(
        type_oid,
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID
    ) {
        return true;
    }
    matches!(
        type_oid,
        pg_sys::BOOLOID | pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::JSONBOID
    )
}

/// `{"name": {"column": value, ...}, ...}` for each `(name, row, columns)` part, built
/// inside one error boundary (see `ffi::guarded`).
///
/// # Safety
/// `desc` describes the rows of `parts` and the table `converters` were made for.
pub unsafe fn details(
    desc: pg_sys::TupleDesc,
    converters: &Converters,
    parts: &[Part<'_>],
) -> pg_sys::Datum {
    // SAFETY: `desc` is valid (the caller's promise) with `natts` attributes; `build`
    // follows the rules of `ffi::guarded`.
    unsafe {
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        ffi::guarded(|| build(attrs, converters, parts))
    }
}

/// # Safety
/// Inside `ffi::guarded`; `converters` describe the table of `attrs` (checked by
/// `shapes::of`) and the rows of `parts` have one value per attribute.
unsafe fn build(
    attrs: &[pg_sys::FormData_pg_attribute],
    converters: &Converters,
    parts: &[Part<'_>],
) -> pg_sys::Datum {
    // SAFETY: every pointer handed to pushJsonbValue (keys into `parts` and the attribute
    // names, values into the rows or palloc'd memory) stays valid until JsonbValueToJsonb
    // copies everything at the end; only unguarded functions are called.
    unsafe {
        let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
        ffi::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
        for part in parts {
            let (name, cols) = (part.name, &part.cols);
            let mut key = string(name.as_ptr() as *mut std::ffi::c_char, name.len());
            ffi::pushJsonbValue(&mut state, WJB_KEY, &mut key);
            ffi::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
            for (i, a) in attrs.iter().enumerate() {
                if !cols.contains(i) || a.attisdropped {
                    continue;
                }
                let attname = a.attname.data.as_ptr() as *mut std::ffi::c_char;
                let mut key = string(attname, std::ffi::CStr::from_ptr(attname).to_bytes().len());
                ffi::pushJsonbValue(&mut state, WJB_KEY, &mut key);
                let mut value = scalar(a.atttypid, converters[i].1, part.values[i], part.nulls[i]);
                ffi::pushJsonbValue(&mut state, WJB_VALUE, &mut value);
            }
            ffi::pushJsonbValue(&mut state, WJB_END_OBJECT, std::ptr::null_mut());
        }
        let result = ffi::pushJsonbValue(&mut state, WJB_END_OBJECT, std::ptr::null_mut());
        pg_sys::Datum::from(ffi::JsonbValueToJsonb(result))
    }
}

fn string(ptr: *mut std::ffi::c_char, len: usize) -> pg_sys::JsonbValue {
    // SAFETY: JsonbValue is a plain C struct; all-zero is a valid (null) value.
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = pg_sys::jbvType::jbvString;
    v.val.string.val = ptr;
    v.val.string.len = len as i32;
    v
}

/// One column value as a jsonb value. pushJsonbValue copies nothing until the end, so the
/// pointers in the value must stay valid until `JsonbValueToJsonb`; they point into the row
/// or into memory of the current context.
///
/// # Safety
/// Inside `ffi::guarded`; `datum` (unless `null`) is a value of `type_oid`, and `info` is
/// the type's `to_jsonb` info unless `converts(type_oid)`.
unsafe fn scalar(
    type_oid: pg_sys::Oid,
    info: *mut pg_sys::FmgrInfo,
    datum: pg_sys::Datum,
    null: bool,
) -> pg_sys::JsonbValue {
    // SAFETY: `datum` is a non-NULL value of `type_oid` (checked first), so each branch
    // reads it as its type; detoasting and `to_jsonb` are unguarded calls, allowed inside
    // `ffi::guarded` (the caller's promise).
    unsafe {
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        if null {
            v.type_ = pg_sys::jbvType::jbvNull;
            return v;
        }
        match type_oid {
            pg_sys::BOOLOID => {
                v.type_ = pg_sys::jbvType::jbvBool;
                v.val.boolean = datum.value() != 0;
                return v;
            }
            #[cfg(not(feature = "pg13"))]
            pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => {
                let n = match type_oid {
                    pg_sys::INT2OID => datum.value() as i16 as i64,
                    pg_sys::INT4OID => datum.value() as i32 as i64,
                    _ => datum.value() as i64,
                };
                v.type_ = pg_sys::jbvType::jbvNumeric;
                v.val.numeric = ffi::int64_to_numeric(n);
                return v;
            }
            pg_sys::NUMERICOID => {
                let n = ffi::pg_detoast_datum(datum.cast_mut_ptr()) as pg_sys::Numeric;
                // NaN and infinities are not JSON numbers: to_jsonb makes them strings
                if !ffi::numeric_is_nan(n) && !numeric_is_inf(n) {
                    v.type_ = pg_sys::jbvType::jbvNumeric;
                    v.val.numeric = n;
                    return v;
                }
            }
            pg_sys::TEXTOID | pg_sys::VARCHAROID => {
                let t = ffi::pg_detoast_datum_packed(datum.cast_mut_ptr());
                return string(
                    pgrx::varlena::vardata_any(t) as *mut std::ffi::c_char,
                    pgrx::varlena::varsize_any_exhdr(t),
                );
            }
            pg_sys::JSONBOID => {
                let jb = ffi::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
                return binary(jb);
            }
            _ => {}
        }
        // Everything else: to_jsonb(value), embedded (pushJsonbValue unpacks binary values).
        binary(call(info, datum).cast_mut_ptr::<pg_sys::Jsonb>())
    }
}

/// A binary jsonb value pointing into `jb`.
///
/// # Safety
/// `jb` is a detoasted jsonb that outlives the value.
unsafe fn binary(jb: *mut pg_sys::Jsonb) -> pg_sys::JsonbValue {
    // SAFETY: `jb` is a valid, detoasted jsonb (the caller's promise).
    unsafe {
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        v.type_ = pg_sys::jbvType::jbvBinary;
        v.val.binary.data = &mut (*jb).root;
        v.val.binary.len =
            (pgrx::varlena::varsize(jb as *const pg_sys::varlena) - pg_sys::VARHDRSZ) as i32;
        v
    }
}

/// # Safety
/// `n` is a detoasted numeric; inside `ffi::guarded`.
#[cfg(not(feature = "pg13"))]
unsafe fn numeric_is_inf(n: pg_sys::Numeric) -> bool {
    // SAFETY: the caller's promise.
    unsafe { ffi::numeric_is_inf(n) }
}

/// # Safety
/// None needed; unsafe only to match the other versions.
#[cfg(feature = "pg13")]
unsafe fn numeric_is_inf(_n: pg_sys::Numeric) -> bool {
    false // numeric has no infinities before PostgreSQL 14
}

/// FmgrInfo for a polymorphic builtin, with a fake call expression that tells it the
/// argument types (as the executor would), kept in TopMemoryContext.
fn polymorphic(
    function: u32,
    result: pg_sys::Oid,
    arg_types: &[pg_sys::Oid],
) -> *mut pg_sys::FmgrInfo {
    // SAFETY: everything is allocated in TopMemoryContext (switched back at the end), so
    // the info and its expression live for the backend; `function` is a builtin's oid.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let mut args: *mut pg_sys::List = std::ptr::null_mut();
        for t in arg_types {
            let c = pg_sys::makeNullConst(*t, -1, pg_sys::InvalidOid);
            args = pg_sys::lappend(args, c as *mut std::ffi::c_void);
        }
        let expr = pg_sys::makeFuncExpr(
            pg_sys::Oid::from(function),
            result,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        let info =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info_cxt(pg_sys::Oid::from(function), info, pg_sys::TopMemoryContext);
        (*info).fn_expr = expr as *mut pg_sys::Node;
        pg_sys::MemoryContextSwitchTo(old);
        info
    }
}

/// One-argument call of a builtin.
///
/// # Safety
/// Inside `ffi::guarded`; `info` is set up (by `polymorphic`) for a builtin taking one
/// argument of `arg`'s type.
unsafe fn call(info: *mut pg_sys::FmgrInfo, arg: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: the caller's promise; `fn_addr` is always set by fmgr_info.
    unsafe {
        let fcinfo = fmgr::frame1(info, arg, pg_sys::DEFAULT_COLLATION_OID);
        let f = (*info).fn_addr.unwrap_unchecked();
        f(fcinfo)
    }
}

/// The `to_jsonb` call info for values of a type (looked up once per backend).
pub fn to_jsonb_info(value_type: pg_sys::Oid) -> *mut pg_sys::FmgrInfo {
    if let Some(info) = TO_JSONB.with(|m| m.borrow().get(&value_type).copied()) {
        return info;
    }
    let info = polymorphic(pg_sys::F_TO_JSONB, pg_sys::JSONBOID, &[value_type]);
    TO_JSONB.with(|m| m.borrow_mut().insert(value_type, info));
    info
}
