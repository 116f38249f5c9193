//! Running work just before the current transaction commits (or is prepared): after every
//! statement and deferred trigger, before the commit record. Work that takes a lock other
//! transactions may wait for while they hold row locks of their own belongs here, where
//! this transaction takes no row lock after it: waiting at that point can close no cycle
//! with them.
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

thread_local! {
    static PENDING: RefCell<Vec<fn()>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Run `work` once before the current transaction commits (several calls with the same
/// function run it once). Forgotten if the transaction aborts. An error it raises aborts
/// the transaction.
pub fn before_commit(work: fn()) {
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: registers a `#[pg_guard]`ed callback for the life of the backend.
        unsafe { pg_sys::RegisterXactCallback(Some(at_xact_event), std::ptr::null_mut()) };
    }
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if !p.iter().any(|f| std::ptr::fn_addr_eq(*f, work)) {
            p.push(work);
        }
    });
}

#[pg_guard]
extern "C-unwind" fn at_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            // (Work may register more work: run until none is left.)
            loop {
                let work = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
                if work.is_empty() {
                    break;
                }
                // The statements are over: the work's queries get a snapshot of their own,
                // as deferred triggers do at this point (an error aborts the transaction,
                // which pops it).
                // SAFETY: a transaction is in progress (pre-commit); the snapshot pushed
                // here is popped below, after the work.
                unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
                for f in work {
                    f();
                }
                // SAFETY: pops the snapshot pushed above (the work leaves the stack as it
                // found it).
                unsafe { pg_sys::PopActiveSnapshot() };
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            PENDING.with(|p| p.borrow_mut().clear());
        }
        _ => {}
    }
}
