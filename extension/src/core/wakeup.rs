//! Setting another backend's latch once the current transaction commits, without NOTIFY.
//!
//! A waiter (a coordinator's drainer, a session in `herald.next_event`) sleeps on its process
//! latch. A transaction that has work for it remembers the target and, once its commit is
//! visible and its locks are released, sets the waiter's latch. A target is either "whoever holds advisory lock `key` in
//! key space `space`" (found in the lock manager at commit) or one backend by pid. Cost on
//! the producer: one lock-table probe per target per commit; no NOTIFY (whose commit-time
//! database lock serializes concurrent producers).
//!
//! Race-freedom is the waiter's part: it resets its latch, then checks for work with a fresh
//! snapshot, then sleeps. A producer whose commit the check missed commits after the check
//! started, so it finds the waiter waiting (holding its lock) and sets the latch, which makes
//! the sleep return at once.
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

use super::advisory::KeySpace;
use super::ffi;

/// Whom to wake at commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// Every backend holding advisory lock `key` of a key space.
    Holders(KeySpace, i32),
    /// The backend with this pid.
    Backend(i32),
}

thread_local! {
    static PENDING: RefCell<Vec<Target>> = const { RefCell::new(Vec::new()) };
    /// Targets of a transaction that has committed, woken once it has released its locks.
    static COMMITTED: RefCell<Vec<Target>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Wake whoever holds advisory lock `key` of `space` when (and only if) the current
/// transaction commits.
pub fn wake_holders_at_commit(space: KeySpace, key: i32) {
    wake_at_commit(Target::Holders(space, key));
}

/// Wake the backend with `pid` when (and only if) the current transaction commits.
pub fn wake_backend_at_commit(pid: i32) {
    wake_at_commit(Target::Backend(pid));
}

fn wake_at_commit(target: Target) {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        // One pair of callbacks for the life of the backend; a transaction only pushes
        // targets.
        // SAFETY: both are `#[pg_guard]`ed functions that never raise.
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_xact_end), std::ptr::null_mut());
            pg_sys::RegisterResourceReleaseCallback(Some(after_locks), std::ptr::null_mut());
        }
    }
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        if !pending.contains(&target) {
            pending.push(target);
        }
    });
}

/// Transaction callback: at commit (visible now), hand the targets to [`after_locks`];
/// forget them on abort. (Subtransaction aborts keep them: a spurious wake-up only costs
/// the woken a look.)
#[pg_guard]
extern "C-unwind" fn at_xact_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            let targets = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            COMMITTED.with(|c| c.borrow_mut().extend(targets));
        }
        // A prepared transaction commits later, elsewhere: its work is found by the
        // waiter's periodic look instead.
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            PENDING.with(|p| p.borrow_mut().clear());
        }
        _ => {}
    }
}

/// Resource-release callback: wake the committed transaction's targets once it has released
/// its locks, not before. Whoever is woken (the next posting of a serialized class, say)
/// then finds none of this transaction's locks held: its row locks, and the transaction
/// advisory locks its user code took (a posting run guarding itself with
/// `pg_try_advisory_xact_lock`), are gone by then.
#[pg_guard]
extern "C-unwind" fn after_locks(
    phase: pg_sys::ResourceReleasePhase::Type,
    is_commit: bool,
    is_top_level: bool,
    _arg: *mut std::ffi::c_void,
) {
    if phase != pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS || !is_top_level {
        return;
    }
    let targets = COMMITTED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if !is_commit {
        return;
    }
    for target in targets {
        match target {
            Target::Holders(space, key) => wake_holders(space, key),
            Target::Backend(pid) => wake_backend(pid),
        }
    }
}

/// Set the latch of every backend holding advisory lock `key` of `space` right now.
fn wake_holders(space: KeySpace, key: i32) {
    let tag = space.tag(key);
    let mut count: std::ffi::c_int = 0;
    // SAFETY: `tag` is a valid advisory lock tag; the result is an array of `count` virtual
    // transaction ids (palloc'd), read before anything else is allocated.
    let holders = unsafe {
        pg_sys::GetLockConflicts(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, &mut count)
    };
    for i in 0..count.max(0) as usize {
        // SAFETY: `i < count`, within the array returned above; a PGPROC found for a live
        // backend stays valid (procs live in shared memory for the server's life), and
        // setting its latch is what latches are for.
        unsafe {
            let proc = ffi::proc_of(&*holders.add(i));
            if !proc.is_null() {
                pg_sys::SetLatch(&mut (*proc).procLatch);
            }
        }
    }
}

/// Set the latch of the backend with `pid`, if it still exists.
fn wake_backend(pid: i32) {
    // SAFETY: BackendPidGetProc returns null for an unknown pid; a PGPROC lives in shared
    // memory for the server's life, so setting its latch is safe even if it just exited.
    unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if !proc.is_null() {
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}
