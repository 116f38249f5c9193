//! Calling a SQL function with one argument through fmgr, with call info kept across calls.
use pgrx::prelude::*;
use std::collections::HashMap;

use super::ffi;

/// Call info per function, kept for a batch of calls so that a function's own caches (a SQL
/// function keeps its plans in `fn_extra`) survive from one call to the next. The infos
/// live in the memory context current when they were made.
#[derive(Default)]
pub struct Functions {
    infos: HashMap<pg_sys::Oid, *mut pg_sys::FmgrInfo>,
}

impl Functions {
    /// The call info of function `oid` (made on first use; raises if it does not exist).
    pub fn info(&mut self, oid: pg_sys::Oid) -> *mut pg_sys::FmgrInfo {
        *self.infos.entry(oid).or_insert_with(|| {
            // SAFETY: palloc0 returns zeroed memory of the requested size (or raises);
            // fmgr_info fills it for an existing function or raises.
            unsafe {
                let info = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>())
                    as *mut pg_sys::FmgrInfo;
                pg_sys::fmgr_info(oid, info);
                info
            }
        })
    }
}

/// A call frame for a one-argument call of `info` with `arg`, palloc'd in the current
/// memory context.
///
/// # Safety
/// Inside an error boundary (`ffi::guarded` or pgrx's): the allocation may raise.
pub unsafe fn frame1(
    info: *mut pg_sys::FmgrInfo,
    arg: pg_sys::Datum,
    collation: pg_sys::Oid,
) -> pg_sys::FunctionCallInfo {
    // SAFETY: the frame is allocated (zeroed) for exactly one argument and filled as fmgr
    // expects.
    unsafe {
        let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
            + std::mem::size_of::<pg_sys::NullableDatum>();
        let fcinfo = ffi::palloc0(size) as pg_sys::FunctionCallInfo;
        (*fcinfo).flinfo = info;
        (*fcinfo).nargs = 1;
        (*fcinfo).fncollation = collation;
        (*fcinfo).args.as_mut_slice(1)[0] = pg_sys::NullableDatum {
            value: arg,
            isnull: false,
        };
        fcinfo
    }
}

/// Call a one-argument function through fmgr; its result (possibly NULL) is ignored.
///
/// # Safety
/// `info` comes from [`Functions::info`] (still alive) for a function taking one argument
/// whose type is that of `arg`.
pub unsafe fn call1(info: *mut pg_sys::FmgrInfo, arg: pg_sys::Datum) {
    // SAFETY: `fn_addr` is set by fmgr_info; the frame and the call run inside one error
    // boundary, and an error raised by the function becomes a pgrx panic that the
    // caller's subtransaction or transaction handles; the frame is freed afterwards.
    unsafe {
        let fcinfo = pg_sys::ffi::pg_guard_ffi_boundary(|| {
            let fcinfo = frame1(info, arg, pg_sys::InvalidOid);
            let fn_addr = (*info).fn_addr.unwrap_unchecked(); // fmgr_info always sets it
            fn_addr(fcinfo);
            fcinfo
        });
        pg_sys::pfree(fcinfo as *mut std::ffi::c_void);
    }
}
